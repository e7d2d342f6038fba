//! Health checking, outlier ejection and rolling restarts against real servers.

mod support;

use std::time::Duration;
use support::*;
use tonic::Code;
use tonic_balancer::health::OutlierDetection;
use tonic_balancer::{BalancedChannel, ConnectivityState};
use tonic_balancer_testkit::pb::SimpleRequest;
use tonic_balancer_testkit::{Backend, Latency};

fn state_of(channel: &BalancedChannel, backend: &Backend) -> ConnectivityState {
    channel
        .subchannels()
        .into_iter()
        .find(|s| s.address.addr == backend.addr())
        .map_or(ConnectivityState::Shutdown, |s| s.state)
}

async fn health_checked(backends: &[Backend]) -> BalancedChannel {
    let channel = BalancedChannel::builder(&target(backends.iter().map(|b| b.addr())))
        .health_check("")
        .connection_backoff(fast_backoff())
        .build()
        .unwrap();
    wait_ready(&channel, backends.len()).await;
    channel
}

#[tokio::test]
async fn not_serving_stops_picks_at_once_and_serving_brings_it_back() {
    within(async {
        let backends = fleet(2, Latency::None).await;
        let channel = health_checked(&backends).await;
        let mut client = Client::new(channel.clone());

        let flipped = tokio::time::Instant::now();
        backends[0].set_serving(false);
        channel
            .wait_for(|_| state_of(&channel, &backends[0]) == ConnectivityState::TransientFailure)
            .await;
        let took = flipped.elapsed();
        // The Watch stream pushes the change: no polling interval to wait out.
        assert!(took < Duration::from_millis(100), "noticed after {took:?}");
        let counts = shares(&mut client, 40).await;
        assert_eq!(counts.get("b1"), Some(&40), "{counts:?}");

        backends[0].set_serving(true);
        wait_ready(&channel, 2).await;
        let counts = shares(&mut client, 40).await;
        assert_eq!(counts.get("b0"), Some(&20), "{counts:?}");
    })
    .await;
}

#[tokio::test]
async fn a_server_without_the_health_service_still_gets_calls() {
    within(async {
        let plain = Backend::builder("plain")
            .health(false)
            .start()
            .await
            .unwrap();
        let channel = health_checked(std::slice::from_ref(&plain)).await;
        assert_eq!(call(&mut Client::new(channel)).await.unwrap(), "plain");
    })
    .await;
}

#[tokio::test]
async fn a_broken_health_stream_is_reopened() {
    within(async {
        let backends = fleet(1, Latency::None).await;
        let channel = health_checked(&backends).await;
        assert_eq!(backends[0].health_watches(), 1);
        backends[0].break_health_streams();
        channel
            .wait_for(|subs| {
                backends[0].health_watches() >= 2 && subs[0].state == ConnectivityState::Ready
            })
            .await;
        assert_eq!(call(&mut Client::new(channel)).await.unwrap(), "b0");
    })
    .await;
}

#[tokio::test]
async fn all_unhealthy_fails_fast_unless_panic_mode_is_on() {
    within(async {
        let backends = fleet(2, Latency::None).await;
        let channel = health_checked(&backends).await;
        let panicky = BalancedChannel::builder(&target(backends.iter().map(|b| b.addr())))
            .health_check("")
            .panic_threshold(50)
            .build()
            .unwrap();
        wait_ready(&panicky, 2).await;
        for backend in &backends {
            backend.set_serving(false);
        }
        let all_down = |subs: &[tonic_balancer::SubchannelInfo]| {
            subs.iter()
                .all(|s| s.state == ConnectivityState::TransientFailure)
        };
        channel.wait_for(all_down).await;
        panicky.wait_for(all_down).await;

        let status = call(&mut Client::new(channel)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status.message().contains("NOT_SERVING"),
            "{}",
            status.message()
        );
        // Panic mode: below 50 % healthy, every connected backend takes calls.
        let counts = shares(&mut Client::new(panicky), 20).await;
        assert_eq!(counts.values().sum::<usize>(), 20, "{counts:?}");
    })
    .await;
}

#[tokio::test]
async fn a_backend_failing_every_call_is_ejected() {
    within(async {
        let backends = fleet(5, Latency::None).await;
        let mut outliers = OutlierDetection::default();
        // Long intervals: only consecutive failures can eject within this test.
        outliers.interval = Duration::from_secs(60);
        let channel = BalancedChannel::builder(&target(backends.iter().map(|b| b.addr())))
            .outlier_detection(outliers)
            .seed(3)
            .build()
            .unwrap();
        wait_ready(&channel, 5).await;
        backends[2].set_failure(1.0, Code::Unavailable);
        let mut client = Client::new(channel);
        let mut failures = 0;
        for _ in 0..200 {
            if call(&mut client).await.is_err() {
                failures += 1;
            }
        }
        // Five failures in a row eject it; round robin then never reaches it again.
        assert_eq!(failures, 5);
        assert_eq!(backends[2].calls(), 5);
    })
    .await;
}

#[tokio::test]
async fn the_clients_own_short_deadlines_eject_no_backend() {
    within(async {
        // Healthy backends that need 200 ms; the client gives each call 5 ms.
        let backends = fleet(3, Latency::Fixed(Duration::from_millis(200))).await;
        let mut outliers = OutlierDetection::default();
        outliers.interval = Duration::from_secs(60);
        outliers.consecutive_failures = 2;
        outliers.max_ejection_percent = 100;
        let channel = BalancedChannel::builder(&target(backends.iter().map(|b| b.addr())))
            .outlier_detection(outliers)
            .build()
            .unwrap();
        wait_ready(&channel, 3).await;
        let mut client = Client::new(channel.clone());
        for _ in 0..12 {
            let mut request = tonic::Request::new(SimpleRequest::default());
            request.set_timeout(Duration::from_millis(5));
            let status = client.unary_call(request).await.unwrap_err();
            assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        }
        // Four deadline failures each: none of them is the backends' fault.
        for endpoint in channel.stats().endpoints {
            assert_eq!(endpoint.errors, 0, "{endpoint:?}");
            assert_eq!(endpoint.ejections, 0, "{endpoint:?}");
        }
        // And every backend still gets calls.
        assert_eq!(shares(&mut client, 3).await.len(), 3);
    })
    .await;
}

#[tokio::test]
async fn a_rolling_restart_under_load_fails_no_call() {
    within(async {
        let backends = fleet(3, Latency::Fixed(Duration::from_millis(2))).await;
        let retry = r#"{"methodConfig": [{"name": [{}],
            "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.1s",
              "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#;
        let channel = BalancedChannel::builder(&target(backends.iter().map(|b| b.addr())))
            .health_check("")
            .service_config_json(retry)
            .unwrap()
            .connection_backoff(fast_backoff())
            .build()
            .unwrap();
        wait_ready(&channel, 3).await;

        // 500 calls/s for 10 s, on schedule.
        let load = tokio::spawn({
            let client = Client::new(channel.clone());
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(2));
                let mut calls = Vec::with_capacity(5000);
                for _ in 0..5000 {
                    tick.tick().await;
                    let mut client = client.clone();
                    calls.push(tokio::spawn(async move { call(&mut client).await }));
                }
                let mut failed = Vec::new();
                for call in calls {
                    if let Err(status) = call.await.unwrap() {
                        failed.push(status);
                    }
                }
                failed
            }
        });
        for backend in &backends {
            backend.stop_gracefully(Duration::from_millis(300)).await;
            backend.restart().await.unwrap();
            wait_ready(&channel, 3).await;
        }
        let failed = load.await.unwrap();
        assert!(
            failed.is_empty(),
            "{} failed, first: {:?}",
            failed.len(),
            failed.first()
        );
        // Every backend served calls again after its restart.
        for backend in &backends {
            assert!(
                backend.calls() > 100,
                "{} served {}",
                backend.server_id(),
                backend.calls()
            );
        }
    })
    .await;
}
