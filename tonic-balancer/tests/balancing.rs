//! The foundation's behaviour against real tonic servers on loopback: round robin over
//! READY subchannels only, failure handling, cancellation, address updates.

mod support;

use futures_util::StreamExt;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use std::net::SocketAddr;
use std::time::Duration;
use support::*;
use tonic::Code;
use tonic_balancer::resolver::Manual;
use tonic_balancer::{BalancedChannel, ConnectivityState, WaitForReady};
use tonic_balancer_testkit::pb::{ResponseParameters, StreamingOutputCallRequest};
use tonic_balancer_testkit::{Backend, Latency};

#[tokio::test]
async fn round_robin_visits_backends_in_turn() {
    within(async {
        let backends = fleet(3, Latency::None).await;
        let channel = BalancedChannel::builder(&target(backends.iter().map(|b| b.addr())))
            .seed(1)
            .build()
            .unwrap();
        wait_ready(&channel, 3).await;
        let mut client = Client::new(channel);
        let mut seen = Vec::new();
        for _ in 0..30 {
            seen.push(call(&mut client).await.unwrap());
        }
        // A, B, C, A, ...: a rotation of the resolver order, repeated.
        let start = seen[0].trim_start_matches('b').parse::<usize>().unwrap();
        for (i, id) in seen.iter().enumerate() {
            assert_eq!(id, &format!("b{}", (start + i) % 3), "sequence {seen:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn refused_address_never_gets_a_call() {
    within(async {
        let backends = fleet(1, Latency::None).await;
        let dead = refused_addr();
        let channel = BalancedChannel::builder(&target([backends[0].addr(), dead]))
            .build()
            .unwrap();
        let mut client = Client::new(channel.clone());
        // No waiting for READY first: the very first calls must not fail either.
        let counts = shares(&mut client, 200).await;
        assert_eq!(counts.get("b0"), Some(&200));
        let dead_sub = channel
            .subchannels()
            .into_iter()
            .find(|s| s.address.addr == dead)
            .unwrap();
        assert_eq!(dead_sub.calls, 0);
        assert_ne!(dead_sub.state, ConnectivityState::Ready);
    })
    .await;
}

#[tokio::test]
async fn killed_backend_is_skipped_then_rejoins_after_restart() {
    within(async {
        let backends = fleet(3, Latency::Fixed(Duration::from_millis(2))).await;
        let victim = backends[1].addr();
        let channel = BalancedChannel::builder(&target(backends.iter().map(|b| b.addr())))
            .connection_backoff(fast_backoff())
            .build()
            .unwrap();
        wait_ready(&channel, 3).await;
        let victim_calls = |channel: &BalancedChannel| {
            channel
                .subchannels()
                .into_iter()
                .find(|s| s.address.addr == victim)
                .unwrap()
        };

        // A steady stream: 8 callers in a loop until told to stop.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut callers = Vec::new();
        for _ in 0..8 {
            let mut client = Client::new(channel.clone());
            let stop = stop_rx.clone();
            callers.push(tokio::spawn(async move {
                let (mut ok, mut failed) = (0usize, Vec::new());
                for _ in 0..100_000 {
                    if *stop.borrow() {
                        break;
                    }
                    match call(&mut client).await {
                        Ok(_) => ok += 1,
                        Err(status) => failed.push(status),
                    }
                }
                (ok, failed)
            }));
        }
        backends[1].wait_in_flight(1).await;
        let before = victim_calls(&channel);
        backends[1].kill().await;
        channel
            .wait_for(|subs| {
                subs.iter()
                    .any(|s| s.address.addr == victim && s.state != ConnectivityState::Ready)
            })
            .await;
        let noticed = victim_calls(&channel).calls;
        // Let the others carry on for a while: the victim gets nothing new.
        let others: u64 = backends[0].calls() + backends[2].calls();
        let mut progress = tokio::time::interval(Duration::from_millis(5));
        while backends[0].calls() + backends[2].calls() < others + 200 {
            progress.tick().await;
        }
        assert_eq!(
            victim_calls(&channel).calls,
            noticed,
            "picked after the drop was noticed"
        );

        backends[1].restart().await.unwrap();
        wait_ready(&channel, 3).await;
        let rejoined = backends[1].calls();
        while backends[1].calls() < rejoined + 20 {
            progress.tick().await;
        }
        stop_tx.send(true).unwrap();
        let mut failed = Vec::new();
        let mut ok = 0;
        for caller in callers {
            let (n, f) = caller.await.unwrap();
            ok += n;
            failed.extend(f);
        }
        // Only calls sent to the victim before the drop was noticed may fail.
        let exposed = (noticed - before.calls) as usize + before.in_flight;
        eprintln!("{} of {exposed} exposed calls failed", failed.len());
        assert!(
            failed.len() <= exposed,
            "{} failures, {exposed} calls exposed",
            failed.len()
        );
        for status in &failed {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        }
        // 200 calls on the others while the victim was down, 20 on it after the restart.
        assert!(ok >= 220, "{ok} successful calls");
    })
    .await;
}

#[tokio::test]
async fn all_down_fails_fast_with_the_connection_error() {
    within(async {
        let (a, b) = (refused_addr(), refused_addr());
        // Default (1 s) connection backoff: failing fast must not wait for a reconnect.
        let channel = BalancedChannel::builder(&target([a, b])).build().unwrap();
        let mut client = Client::new(channel.clone());
        let started = tokio::time::Instant::now();
        let status = call(&mut client).await.unwrap_err();
        let took = started.elapsed();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(took < Duration::from_secs(1), "took {took:?}");
        assert!(
            status.message().contains("no ready endpoints for ipv4:")
                && status.message().contains("refused"),
            "{}",
            status.message()
        );
        assert_eq!(channel.state(), ConnectivityState::TransientFailure);
    })
    .await;
}

#[tokio::test]
async fn wait_for_ready_waits_for_a_backend_to_come_up() {
    within(async {
        let addr = refused_addr();
        let channel = BalancedChannel::builder(&target([addr]))
            .connection_backoff(fast_backoff())
            .build()
            .unwrap();
        let mut client = Client::new(channel.clone());
        channel
            .wait_for(|subs| {
                subs.first()
                    .is_some_and(|s| s.state == ConnectivityState::TransientFailure)
            })
            .await;

        // Waiting, not failing fast: with a short deadline it ends in DEADLINE_EXCEEDED.
        let mut request = tonic::Request::new(Default::default());
        request.extensions_mut().insert(WaitForReady(true));
        request.set_timeout(Duration::from_millis(100));
        let status = client.empty_call(request).await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(status.message().contains("refused"), "{}", status.message());

        let waiting = tokio::spawn({
            let mut client = client.clone();
            async move {
                let mut request = tonic::Request::new(Default::default());
                request.extensions_mut().insert(WaitForReady(true));
                request.set_timeout(Duration::from_secs(30));
                client.empty_call(request).await
            }
        });
        let backend = Backend::builder("late").bind(addr).start().await.unwrap();
        waiting.await.unwrap().expect("wait-for-ready call");
        assert_eq!(backend.calls(), 1);
    })
    .await;
}

#[tokio::test]
async fn in_flight_counts_return_to_zero_after_random_cancellation() {
    within(async {
        let backends = fleet(
            3,
            Latency::Uniform {
                min: Duration::ZERO,
                max: Duration::from_millis(4),
            },
        )
        .await;
        let channel = BalancedChannel::builder(&target(backends.iter().map(|b| b.addr())))
            .build()
            .unwrap();
        wait_ready(&channel, 3).await;
        let mut rng = SmallRng::seed_from_u64(42);
        let mut tasks = Vec::new();
        for i in 0..1000u32 {
            let mut client = Client::new(channel.clone());
            let cancel_after = Duration::from_micros(rng.random_range(0..6000));
            let keep = rng.random_range(0..4usize);
            tasks.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    // A unary call whose future may be dropped part-way.
                    let _ = tokio::time::timeout(cancel_after, call(&mut client)).await;
                } else {
                    // A stream dropped after `keep` messages, or its future dropped.
                    let request = StreamingOutputCallRequest {
                        response_parameters: vec![
                            ResponseParameters {
                                size: 8,
                                interval_us: 500,
                            };
                            4
                        ],
                        ..Default::default()
                    };
                    let _ = tokio::time::timeout(cancel_after, async {
                        let mut stream = client.streaming_output_call(request).await?.into_inner();
                        for _ in 0..keep {
                            if stream.next().await.is_none() {
                                break;
                            }
                        }
                        Ok::<_, tonic::Status>(())
                    })
                    .await;
                }
            }));
            if tasks.len() == 50 {
                for task in tasks.drain(..) {
                    task.await.unwrap();
                }
            }
        }
        for task in tasks {
            task.await.unwrap();
        }
        let subs = channel.subchannels();
        assert_eq!(subs.iter().map(|s| s.calls).sum::<u64>(), 1000);
        for sub in subs {
            assert_eq!(sub.in_flight, 0, "{sub:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn removed_address_drains_its_calls_and_gets_no_new_ones() {
    within(async {
        let slow = Backend::builder("slow")
            .latency(Latency::Fixed(Duration::from_millis(300)))
            .start()
            .await
            .unwrap();
        let fast = Backend::start("fast").await.unwrap();
        let (resolver, handle) = Manual::new();
        let channel = BalancedChannel::builder_with_resolver(resolver)
            .build()
            .unwrap();
        handle.update([slow.addr()]);
        let mut client = Client::new(channel.clone());
        let in_flight = tokio::spawn({
            let mut client = client.clone();
            async move { call(&mut client).await }
        });
        slow.wait_in_flight(1).await;

        handle.update([fast.addr()]);
        channel
            .wait_for(|subs| subs.len() == 1 && subs[0].address.addr == fast.addr())
            .await;
        let counts = shares(&mut client, 20).await;
        assert_eq!(counts.get("fast"), Some(&20), "{counts:?}");
        assert_eq!(in_flight.await.unwrap().unwrap(), "slow");
        assert_eq!(slow.calls(), 1);
    })
    .await;
}

#[tokio::test]
async fn build_reports_bad_input_without_panicking() {
    use tonic_balancer::ErrorKind;
    let err = BalancedChannel::builder("ipv4:1.2.3").build().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidTarget);
    let mut backoff = support::fast_backoff();
    backoff.jitter = 2.0;
    let err = BalancedChannel::builder("ipv4:127.0.0.1:1")
        .connection_backoff(backoff)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(
        err.to_string().contains("connection_backoff.jitter"),
        "{err}"
    );
    let err = BalancedChannel::builder("dns://ns.example/orders.example:1")
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidTarget);
    assert!(err.to_string().contains("must be an IP address"), "{err}");
}

/// Without the `dns` feature, host names and SRV targets are refused with a message
/// that says what to do. (`cargo test --no-default-features --features testing`.)
#[cfg(not(feature = "dns"))]
#[tokio::test]
async fn dns_targets_without_the_dns_feature_say_to_enable_it() {
    use tonic_balancer::ErrorKind;
    for target in [
        "dns:///orders.example:1",
        "dns+srv:///_grpc._tcp.orders.example",
    ] {
        let err = BalancedChannel::builder(target).build().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnsupportedTarget);
        assert!(err.to_string().contains("`dns` feature"), "{err}");
    }
    // IP literals need no lookup.
    BalancedChannel::builder("dns:///127.0.0.1:1")
        .build()
        .unwrap();
}

#[test]
fn build_outside_a_runtime_is_an_error() {
    let err = BalancedChannel::builder("ipv4:127.0.0.1:1")
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), tonic_balancer::ErrorKind::NoRuntime);
}

/// A fleet of 2 148 addresses spans three of the pickers' chunks (`CHUNK`, 1 024, each):
/// a change of some subchannels republishes their chunks and shares the others, and the
/// calls see exactly the set a full rebuild would give. (Debug builds, which the tests
/// are, also check every publish against a pass over every subchannel.)
#[tokio::test]
async fn changes_in_a_fleet_of_many_chunks_reach_the_calls() {
    use tonic_balancer::balance::CHUNK;
    /// Calls windows of `window` until one is split exactly as `want`: a subchannel's
    /// READY reaches the picks at the next (paced) publish, a moment after its state.
    async fn settles(client: &mut Client, window: usize, want: &[(&str, usize)]) {
        let want: std::collections::BTreeMap<String, usize> =
            want.iter().map(|(id, n)| (id.to_string(), *n)).collect();
        while shares(client, window).await != want {}
    }
    within(async {
        // Two servers on every loopback address, each reached under many addresses
        // (127.7.0.1, 127.7.0.2, ...): "a" under the first CHUNK + 100, "b" under the
        // next CHUNK.
        let start = |id: &'static str| {
            Backend::builder(id)
                .bind(SocketAddr::from(([0, 0, 0, 0], 0)))
                .start()
        };
        let (a, b) = (start("a").await.unwrap(), start("b").await.unwrap());
        let address = |backend: &Backend, i: usize| {
            let ip = std::net::Ipv4Addr::from(u32::from_be_bytes([127, 7, 0, 1]) + i as u32);
            SocketAddr::from((ip, backend.addr().port()))
        };
        let (n_a, n_b) = (CHUNK + 100, CHUNK);
        let fleet: Vec<SocketAddr> = (0..n_a)
            .map(|i| address(&a, i))
            .chain((n_a..n_a + n_b).map(|i| address(&b, i)))
            .collect();
        let (resolver, handle) = Manual::new();
        let channel = BalancedChannel::builder_with_resolver(resolver)
            .health_check("")
            .build()
            .unwrap();
        handle.update(fleet.iter().copied());
        wait_ready(&channel, n_a + n_b).await;
        let mut client = Client::new(channel.clone());
        // Round robin over all of them: each address once per round.
        settles(&mut client, n_a + n_b, &[("a", n_a), ("b", n_b)]).await;

        // "b" stops serving: its subchannels (in chunks 1 and 2) leave the picks.
        b.set_serving(false);
        wait_ready(&channel, n_a).await;
        settles(&mut client, 100, &[("a", 100)]).await;

        // Back: every one of them is picked again, in turn.
        b.set_serving(true);
        wait_ready(&channel, n_a + n_b).await;
        settles(&mut client, n_a + n_b, &[("a", n_a), ("b", n_b)]).await;

        // An update drops the first 200 of "a" (part of chunk 0) and everything moves
        // up a place: n_a - 200 of "a" left.
        handle.update(fleet[200..].iter().copied());
        let left = n_a + n_b - 200;
        channel.wait_for(|subs| subs.len() == left).await;
        wait_ready(&channel, left).await;
        settles(&mut client, left, &[("a", n_a - 200), ("b", n_b)]).await;
    })
    .await;
}
