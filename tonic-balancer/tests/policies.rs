//! Load-aware policies against real servers on loopback: who gets the calls when one
//! backend is slow, pick_first's fail-over, and per-method policies on one channel.

mod support;

use std::time::Duration;
use support::*;
use tonic_balancer::{BalancedChannel, ConnectivityState, Policy};
use tonic_balancer_testkit::pb::Empty;
use tonic_balancer_testkit::{Backend, Latency};

/// Runs `calls` UnaryCalls from `concurrency` callers over five backends, the last one
/// ten times slower, and returns the share of calls the slow one served.
///
/// Latencies are 10 ms and 100 ms rather than smaller: a peak EWMA remembers the worst
/// sample it saw for about its decay time, and on a busy test machine scheduling alone
/// adds a few milliseconds to some calls. At 2 ms that noise rivals the slow backend.
async fn slow_share(policy: Policy, calls: usize, concurrency: usize) -> f64 {
    let mut backends = fleet(4, Latency::Fixed(Duration::from_millis(10))).await;
    backends.push(
        Backend::builder("slow")
            .latency(Latency::Fixed(Duration::from_millis(100)))
            .start()
            .await
            .unwrap(),
    );
    let channel = BalancedChannel::builder(&target(backends.iter().map(|b| b.addr())))
        .policy(policy)
        .seed(11)
        .build()
        .unwrap();
    wait_ready(&channel, 5).await;
    let mut callers = Vec::new();
    for _ in 0..concurrency {
        let mut client = Client::new(channel.clone());
        callers.push(tokio::spawn(async move {
            for _ in 0..calls / concurrency {
                call(&mut client).await.expect("call failed");
            }
        }));
    }
    for caller in callers {
        caller.await.unwrap();
    }
    let total: u64 = backends.iter().map(|b| b.calls()).sum();
    assert_eq!(total as usize, calls);
    backends[4].calls() as f64 / total as f64
}

#[tokio::test]
async fn latency_aware_policies_avoid_the_slow_backend() {
    within(async {
        let (calls, concurrency) = (800, 16);
        let round_robin = slow_share(Policy::round_robin(), calls, concurrency).await;
        let least_request = slow_share(Policy::least_request(), calls, concurrency).await;
        let peak_ewma = slow_share(Policy::peak_ewma(), calls, concurrency).await;
        eprintln!("slow backend's share: round_robin {round_robin:.3}, least_request {least_request:.3}, peak_ewma {peak_ewma:.3}");
        // Round robin is blind to latency: one call in five.
        assert!((0.19..=0.21).contains(&round_robin), "{round_robin}");
        // Fewer calls in flight elsewhere keep least_request away from the slow one.
        assert!(least_request < 0.75 * round_robin, "{least_request}");
        assert!(peak_ewma <= 0.02, "{peak_ewma}");
    })
    .await;
}

#[tokio::test]
async fn pick_first_uses_one_backend_and_fails_over_in_order() {
    within(async {
        let backends = fleet(3, Latency::None).await;
        let channel = BalancedChannel::builder(&target(backends.iter().map(|b| b.addr())))
            .policy(Policy::pick_first())
            .connection_backoff(fast_backoff())
            .build()
            .unwrap();
        let mut client = Client::new(channel.clone());
        let counts = shares(&mut client, 50).await;
        assert_eq!(counts.get("b0"), Some(&50), "{counts:?}");
        // One connection: the others were never asked to connect.
        let states: Vec<_> = channel.subchannels().iter().map(|s| s.state).collect();
        assert_eq!(
            states,
            [
                ConnectivityState::Ready,
                ConnectivityState::Idle,
                ConnectivityState::Idle
            ]
        );

        backends[0].kill().await;
        channel
            .wait_for(|subs| subs[1].state == ConnectivityState::Ready)
            .await;
        let counts = shares(&mut client, 50).await;
        assert_eq!(counts.get("b1"), Some(&50), "{counts:?}");
        assert_eq!(backends[2].calls(), 0);
    })
    .await;
}

#[tokio::test]
async fn methods_on_one_channel_use_their_own_policies() {
    within(async {
        let backends = fleet(3, Latency::None).await;
        let channel = BalancedChannel::builder(&target(backends.iter().map(|b| b.addr())))
            .policy(Policy::round_robin())
            .method_policy("grpc.testing.TestService/EmptyCall", Policy::pick_first())
            .build()
            .unwrap();
        wait_ready(&channel, 3).await;
        let mut client = Client::new(channel);
        for _ in 0..30 {
            client.empty_call(Empty {}).await.unwrap();
        }
        // EmptyCall: pick_first, all on the first address.
        let empty: Vec<u64> = backends.iter().map(|b| b.calls()).collect();
        assert_eq!(empty, [30, 0, 0]);
        // UnaryCall: the channel's round robin, evenly.
        let counts = shares(&mut client, 30).await;
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), [10, 10, 10]);
    })
    .await;
}

#[tokio::test]
async fn policy_settings_are_checked_by_build() {
    use tonic_balancer::ErrorKind;
    let build = |b: tonic_balancer::Builder| b.build().unwrap_err();
    let base = || BalancedChannel::builder("ipv4:127.0.0.1:1");
    let err = build(base().policy(Policy::least_request().choice_count(1)));
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(err.to_string().contains("choice_count"), "{err}");
    let err = build(base().method_policy("no/such/name", Policy::round_robin()));
    assert!(err.to_string().contains("method_policy"), "{err}");
    let err = build(
        base()
            .method_policy("pkg.Svc", Policy::round_robin())
            .method_policy("pkg.Svc", Policy::pick_first()),
    );
    assert!(err.to_string().contains("twice"), "{err}");
}
