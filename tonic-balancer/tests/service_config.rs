//! Service configs as grpc-go users write them, and updates of every field while the
//! channel runs, against real servers on loopback.

mod support;

use support::*;
use tonic::Code;
use tonic_balancer::{BalancedChannel, ConnectivityState};
use tonic_balancer_testkit::{Backend, Latency};

fn state_of(channel: &BalancedChannel, backend: &Backend) -> ConnectivityState {
    channel
        .subchannels()
        .into_iter()
        .find(|s| s.address.addr == backend.addr())
        .map_or(ConnectivityState::Shutdown, |s| s.state)
}

fn channel_with(backends: &[Backend], json: &str) -> BalancedChannel {
    BalancedChannel::builder(&target(backends.iter().map(|b| b.addr())))
        .connection_backoff(fast_backoff())
        .service_config_json(json)
        .unwrap()
        .build()
        .unwrap()
}

/// The deprecated `loadBalancingPolicy` picks the policy when `loadBalancingConfig` is
/// absent: pick_first sends every call to the first address.
#[tokio::test]
async fn load_balancing_policy_pick_first_sends_every_call_to_the_first_address() {
    within(async {
        let backends = fleet(3, Latency::None).await;
        let channel = channel_with(&backends, r#"{"loadBalancingPolicy": "pick_first"}"#);
        let counts = shares(&mut Client::new(channel), 30).await;
        assert_eq!(counts.get("b0"), Some(&30), "{counts:?}");
    })
    .await;
}

/// A `"0s"` timeout is valid (grpc-go, C-core): every call fails at once with
/// DEADLINE_EXCEEDED and never reaches a server.
#[tokio::test]
async fn zero_timeout_fails_every_call_with_deadline_exceeded() {
    within(async {
        let backends = fleet(1, Latency::None).await;
        let json = r#"{"methodConfig": [{"name": [{}], "timeout": "0s"}]}"#;
        let channel = channel_with(&backends, json);
        wait_ready(&channel, 1).await;
        let mut client = Client::new(channel);
        for _ in 0..3 {
            let status = call(&mut client).await.unwrap_err();
            assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        }
        assert_eq!(backends[0].calls(), 0);
    })
    .await;
}

/// grpc-go's retry example, keys and durations as it writes them, retries for real.
#[tokio::test]
async fn grpc_go_retry_example_retries() {
    within(async {
        let backends = fleet(1, Latency::None).await;
        let json = r#"{"methodConfig": [{"name": [{"service": "grpc.testing.TestService"}],
            "waitForReady": true,
            "retryPolicy": {"MaxAttempts": 4, "InitialBackoff": ".01s", "MaxBackoff": ".01s",
                            "BackoffMultiplier": 1.0, "RetryableStatusCodes": ["UNAVAILABLE"]}}]}"#;
        let channel = channel_with(&backends, json);
        backends[0].fail_next(3, Code::Unavailable);
        assert_eq!(call(&mut Client::new(channel)).await.unwrap(), "b0");
        assert_eq!(backends[0].calls(), 4);
    })
    .await;
}

/// pick_first's shuffleAddressList: clients of one fleet start on different addresses,
/// and the same seed always makes the same choice.
#[tokio::test]
async fn shuffle_address_list_spreads_clients_and_follows_the_seed() {
    within(async {
        let backends = fleet(3, Latency::None).await;
        let json = r#"{"loadBalancingConfig": [{"pick_first": {"shuffleAddressList": true}}]}"#;
        let first_choice = |seed: u64| {
            let channel = BalancedChannel::builder(&target(backends.iter().map(|b| b.addr())))
                .seed(seed)
                .service_config_json(json)
                .unwrap()
                .build()
                .unwrap();
            async move {
                let counts = shares(&mut Client::new(channel), 5).await;
                assert_eq!(counts.len(), 1, "pick_first used two backends: {counts:?}");
                counts.into_keys().next().unwrap()
            }
        };
        let mut chosen = std::collections::BTreeSet::new();
        for seed in 0..12 {
            let choice = first_choice(seed).await;
            assert_eq!(first_choice(seed).await, choice, "seed {seed}");
            chosen.insert(choice);
        }
        // Twelve clients on one address would mean no shuffle (chance 3 × 3^-12).
        assert!(chosen.len() > 1, "every client chose {chosen:?}");

        // Without the flag, every client takes the first address.
        for seed in 0..4 {
            let channel = BalancedChannel::builder(&target(backends.iter().map(|b| b.addr())))
                .seed(seed)
                .service_config_json(r#"{"loadBalancingConfig": [{"pick_first": {}}]}"#)
                .unwrap()
                .build()
                .unwrap();
            let counts = shares(&mut Client::new(channel), 3).await;
            assert_eq!(counts.get("b0"), Some(&3), "{counts:?}");
        }
    })
    .await;
}

/// `healthCheckConfig` in an update starts the health Watch on connections that are
/// already up, a changed service name restarts it, and an update without it stops it.
#[tokio::test]
async fn health_check_config_updates_start_change_and_stop_the_watch() {
    within(async {
        let backends = fleet(2, Latency::None).await;
        let channel = channel_with(&backends, "{}");
        wait_ready(&channel, 2).await;
        let mut client = Client::new(channel.clone());
        assert_eq!(backends[0].health_watches(), 0);

        backends[0].set_serving(false);
        channel
            .update_service_config_json(r#"{"healthCheckConfig": {"serviceName": ""}}"#)
            .unwrap();
        channel
            .wait_for(|_| state_of(&channel, &backends[0]) == ConnectivityState::TransientFailure)
            .await;
        assert!(backends.iter().all(|b| b.health_watches() == 1));
        let counts = shares(&mut client, 10).await;
        assert_eq!(counts.get("b1"), Some(&10), "{counts:?}");

        // A service neither backend knows: SERVICE_UNKNOWN on both.
        channel
            .update_service_config_json(r#"{"healthCheckConfig": {"serviceName": "nope"}}"#)
            .unwrap();
        channel
            .wait_for(|subs| {
                subs.iter()
                    .all(|s| s.state == ConnectivityState::TransientFailure)
            })
            .await;
        assert!(backends.iter().all(|b| b.health_watches() == 2));
        let status = call(&mut client).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");

        // No health checking: both backends take calls again, on the same connections.
        channel.update_service_config_json("{}").unwrap();
        wait_ready(&channel, 2).await;
        let counts = shares(&mut client, 10).await;
        assert_eq!(counts.get("b0"), Some(&5), "{counts:?}");
        assert!(backends.iter().all(|b| b.health_watches() == 2));
    })
    .await;
}

/// Each field of an updated config applies to the calls that follow.
#[tokio::test]
async fn every_field_of_an_update_takes_effect() {
    within(async {
        let backends = fleet(2, Latency::None).await;
        let channel = channel_with(
            &backends,
            r#"{"loadBalancingConfig": [{"round_robin": {}}]}"#,
        );
        wait_ready(&channel, 2).await;
        let mut client = Client::new(channel.clone());
        let counts = shares(&mut client, 10).await;
        assert_eq!(counts.get("b0"), Some(&5), "{counts:?}");

        // The policy, through the deprecated field.
        channel
            .update_service_config_json(r#"{"loadBalancingPolicy": "pick_first"}"#)
            .unwrap();
        let counts = shares(&mut client, 10).await;
        assert_eq!(counts.len(), 1, "{counts:?}");
        let only = counts.into_keys().next().unwrap();
        let pinned = backends.iter().find(|b| b.server_id() == only).unwrap();

        // A retry policy.
        let retry = r#"{"loadBalancingPolicy": "pick_first", "methodConfig": [{"name": [{}],
            "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.01s",
                            "backoffMultiplier": 1, "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#;
        channel.update_service_config_json(retry).unwrap();
        pinned.fail_next(2, Code::Unavailable);
        assert_eq!(call(&mut client).await.unwrap(), only);

        // A timeout.
        let timeout = r#"{"methodConfig": [{"name": [{}], "timeout": "0s"}]}"#;
        channel.update_service_config_json(timeout).unwrap();
        let status = call(&mut client).await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

        // A message size limit.
        let limit = r#"{"methodConfig": [{"name": [{}], "maxRequestMessageBytes": 1}]}"#;
        channel.update_service_config_json(limit).unwrap();
        let status = call(&mut client).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

        // An invalid update keeps the previous config.
        assert!(
            channel
                .update_service_config_json(r#"{"loadBalancingPolicy": 7}"#)
                .is_err()
        );
        let status = call(&mut client).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    })
    .await;
}

/// `outlier_detection_experimental` from a config update ejects a failing backend; an
/// update without it brings the backend back.
#[tokio::test]
async fn outlier_detection_from_an_update_ejects_and_its_removal_restores() {
    within(async {
        let backends = fleet(3, Latency::None).await;
        let channel = channel_with(&backends, "{}");
        wait_ready(&channel, 3).await;
        let mut client = Client::new(channel.clone());
        let od = r#"{"loadBalancingConfig": [{"outlier_detection_experimental": {
            "interval": "0.05s", "baseEjectionTime": "300s", "maxEjectionPercent": 50,
            "failurePercentageEjection": {"threshold": 50, "minimumHosts": 3, "requestVolume": 5},
            "childPolicy": [{"round_robin": {}}]}}]}"#;
        channel.update_service_config_json(od).unwrap();
        backends[0].set_failure(1.0, Code::Unavailable);
        let ejected = |channel: &BalancedChannel| {
            channel
                .stats()
                .endpoints
                .iter()
                .any(|e| e.address.addr == backends[0].addr() && e.ejected)
        };
        // Calls drive the counts; the interval decides.
        while !ejected(&channel) {
            let _ = call(&mut client).await;
        }
        let counts = shares(&mut client, 20).await;
        assert_eq!(counts.get("b0"), None, "{counts:?}");

        channel.update_service_config_json("{}").unwrap();
        channel.wait_for(|_| !ejected(&channel)).await;
        backends[0].set_failure(0.0, Code::Ok);
        let counts = shares(&mut client, 30).await;
        assert_eq!(counts.get("b0"), Some(&10), "{counts:?}");
    })
    .await;
}

/// A resolver that hands the channel address sets, each with the service config a
/// test gives it (as the xDS resolver does).
struct WithConfig {
    updates:
        tokio::sync::mpsc::UnboundedReceiver<(Vec<std::net::SocketAddr>, Option<&'static str>)>,
    config: Option<tonic_balancer::config::ServiceConfig>,
}

impl tonic_balancer::resolver::Resolve for WithConfig {
    fn poll_resolve(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<tonic_balancer::resolver::Resolution>> {
        self.updates.poll_recv(cx).map(|update| {
            update.map(|(addrs, json)| {
                self.config = json
                    .map(|json| tonic_balancer::config::ServiceConfig::from_json(json).unwrap());
                Ok(addrs.into_iter().map(Into::into).collect())
            })
        })
    }

    fn take_service_config(&mut self) -> Option<tonic_balancer::config::ServiceConfig> {
        self.config.take()
    }
}

/// A service config that comes from the resolver replaces the builder's, with the
/// addresses it comes with; an address set without one keeps the config in force.
/// Each step changes the addresses too, so that the test can wait for it to apply.
#[tokio::test]
async fn a_service_config_from_the_resolver_takes_effect_with_its_addresses() {
    within(async {
        let mut backends = Vec::new();
        for name in ["slow0", "slow1"] {
            let backend = Backend::builder(name)
                .latency(Latency::Fixed(std::time::Duration::from_millis(300)))
                .start()
                .await
                .unwrap();
            backends.push(backend);
        }
        let slow: Vec<_> = backends.iter().map(Backend::addr).collect();
        let (tx, updates) = tokio::sync::mpsc::unbounded_channel();
        let channel = BalancedChannel::builder_with_resolver(WithConfig {
            updates,
            config: None,
        })
        .service_config_json(r#"{"methodConfig": [{"name": [{}], "timeout": "10s"}]}"#)
        .unwrap()
        .build()
        .unwrap();
        let mut client = Client::new(channel.clone());
        let count = |n: usize| {
            let channel = channel.clone();
            async move { channel.wait_for(|subs| subs.len() == n).await }
        };

        let timeout = r#"{"methodConfig": [{"name": [{}], "timeout": "0.05s"}]}"#;
        tx.send((vec![slow[0]], Some(timeout))).unwrap();
        wait_ready(&channel, 1).await;
        let status = call(&mut client).await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

        // Another address, no config: the resolver's timeout stays.
        tx.send((slow.clone(), None)).unwrap();
        count(2).await;
        let status = call(&mut client).await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

        // A config without the timeout replaces it (and the builder's 10 s is gone too).
        tx.send((vec![slow[1]], Some("{}"))).unwrap();
        count(1).await;
        assert_eq!(call(&mut client).await.unwrap(), "slow1");
    })
    .await;
}
