//! The subchannel's own HTTP/2 connection against real misbehaving peers: a frozen
//! grpcio process (SIGSTOP), a relay that stops forwarding, a server that flaps, one
//! that refuses streams, and grpcio's ping policing under long calls and under keepalive.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;
use support::*;
use tokio::time::Instant;
use tonic::Code;
use tonic_balancer::stats::code_name;
use tonic_balancer::{BalancedChannel, ConnectionBackoff, ConnectivityState};
use tonic_balancer_testkit::Backend;
use tonic_balancer_testkit::faults::{FreezableRelay, RawBehaviour, RawH2Server};
use tonic_balancer_testkit::pb::SimpleRequest;
use tonic_balancer_testkit::python::PythonPeer;

/// One UnaryCall with a 300 ms deadline, as the frozen-backend scenario makes them.
async fn call_300ms(client: &mut Client) -> Result<String, tonic::Status> {
    let mut request = tonic::Request::new(SimpleRequest {
        fill_server_id: true,
        ..Default::default()
    });
    request.set_timeout(Duration::from_millis(300));
    Ok(client.unary_call(request).await?.into_inner().server_id)
}

/// Calls until `frozen` (the index of a subchannel) leaves READY, then 60 more; returns
/// the failures before and after, and how long noticing took.
async fn run_through_a_freeze(
    channel: &BalancedChannel,
    frozen: usize,
    freeze: impl FnOnce(),
) -> (BTreeMap<&'static str, usize>, usize, Duration) {
    let mut client = Client::new(channel.clone());
    for _ in 0..30 {
        call_300ms(&mut client)
            .await
            .expect("a call before the freeze");
    }
    freeze();
    let frozen_at = Instant::now();
    let mut before = BTreeMap::new();
    // Bounded: the test's own timeout (60 s) stops a check that never fires.
    while channel.subchannels()[frozen].state == ConnectivityState::Ready {
        if let Err(status) = call_300ms(&mut client).await {
            *before.entry(code_name(status.code())).or_default() += 1;
        }
    }
    let noticed = frozen_at.elapsed();
    let mut after = 0;
    for _ in 0..60 {
        if call_300ms(&mut client).await.is_err() {
            after += 1;
        }
    }
    (before, after, noticed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_grpcio_backend_is_noticed_and_avoided() {
    let peers: Vec<PythonPeer> = (0..3)
        .map(|i| PythonPeer::start(&format!("p{i}")))
        .collect();
    within(async {
        let channel = BalancedChannel::builder(&target(peers.iter().map(PythonPeer::addr)))
            .connection_backoff(fast_backoff())
            .build()
            .unwrap();
        wait_ready(&channel, 3).await;
        let (before, after, noticed) =
            run_through_a_freeze(&channel, 1, || peers[1].freeze()).await;
        eprintln!(
            "frozen grpcio backend: noticed after {noticed:?}; failed before: {before:?}; \
             failed after: {after} of 60"
        );
        // Only calls already routed to the frozen backend can fail, and only until the
        // connection is declared dead; after that, none.
        assert_eq!(after, 0);
        assert!(
            before
                .keys()
                .all(|c| matches!(*c, "DEADLINE_EXCEEDED" | "UNAVAILABLE")),
            "{before:?}"
        );
        let endpoint = &channel.stats().endpoints[1];
        assert_eq!(endpoint.dead_connections, 1);
        assert!(endpoint.pings >= 1);
        // Thawed, it is connected again and serves.
        peers[1].thaw();
        wait_ready(&channel, 3).await;
    })
    .await;
}

#[tokio::test]
async fn a_relay_that_stops_forwarding_is_noticed_and_avoided() {
    within(async {
        let backends = fleet(2, tonic_balancer_testkit::Latency::None).await;
        let relay = FreezableRelay::start(backends[0].addr()).await.unwrap();
        let channel = BalancedChannel::builder(&target([relay.addr(), backends[1].addr()]))
            .connection_backoff(fast_backoff())
            .build()
            .unwrap();
        wait_ready(&channel, 2).await;
        let (before, after, noticed) = run_through_a_freeze(&channel, 0, || relay.freeze()).await;
        eprintln!("frozen relay: noticed after {noticed:?}; failed before: {before:?}");
        assert_eq!(after, 0);
        assert_eq!(channel.stats().endpoints[0].dead_connections, 1);
        // The relay still accepts TCP but forwards nothing: the new connection waits
        // for a preface that does not come, so the subchannel is not READY again...
        assert_ne!(
            channel.subchannels()[0].state,
            ConnectivityState::Ready,
            "a connection with no preface must not be READY"
        );
        // ...until it forwards again.
        relay.thaw();
        wait_ready(&channel, 2).await;
    })
    .await;
}

#[tokio::test]
async fn a_flapping_server_is_reconnected_to_with_growing_backoff() {
    within(async {
        let server = RawH2Server::start(RawBehaviour::Flap).await.unwrap();
        let mut backoff = ConnectionBackoff::default();
        backoff.base_delay = Duration::from_millis(100);
        backoff.jitter = 0.2;
        let _channel = BalancedChannel::builder(&target([server.addr()]))
            .connection_backoff(backoff)
            .build()
            .unwrap();
        server.wait_connections(6).await;
        let accepted = server.accepted_at();
        // Each connection closes right after its SETTINGS, so each reconnect waits the
        // backoff: 100 ms × 1.6^k, within ±20 %; never at once.
        for (k, pair) in accepted.windows(2).take(5).enumerate() {
            let gap = pair[1] - pair[0];
            let expected = 100.0 * 1.6f64.powi(k as i32);
            assert!(
                gap.as_secs_f64() * 1000.0 >= 0.8 * expected,
                "gap {k}: {gap:?}, expected at least {:.0} ms",
                0.8 * expected
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_refused_stream_is_retried_transparently_once() {
    within(async {
        // Refuses the first stream only: the call succeeds on its transparent retry.
        let once = RawH2Server::start(RawBehaviour::RefuseStreams(1))
            .await
            .unwrap();
        let channel = BalancedChannel::builder(&target([once.addr()]))
            .build()
            .unwrap();
        wait_ready(&channel, 1).await;
        let mut client = Client::new(channel);
        client
            .empty_call(tonic_balancer_testkit::pb::Empty {})
            .await
            .expect("the transparent retry succeeds");
        assert_eq!(once.streams(), 2);

        // Refuses everything: one transparent retry, then the call fails (no policy).
        let always = RawH2Server::start(RawBehaviour::RefuseStreams(u64::MAX))
            .await
            .unwrap();
        let channel = BalancedChannel::builder(&target([always.addr()]))
            .build()
            .unwrap();
        wait_ready(&channel, 1).await;
        let mut client = Client::new(channel);
        let status = client
            .empty_call(tonic_balancer_testkit::pb::Empty {})
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(always.streams(), 2, "one attempt and one transparent retry");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_calls_and_idle_periods_never_trip_grpcio_ping_policing() {
    let peer = PythonPeer::start("python");
    within(async {
        let channel = BalancedChannel::builder(&target([peer.addr()]))
            .build()
            .unwrap();
        wait_ready(&channel, 1).await;
        // Twice: calls of 3 s, a new one every 300 ms for 2.4 s, then an idle pause.
        // grpcio's default policy (C-core: 5 min between PINGs without data, 2
        // strikes) answers a third PING without data in between with GOAWAY
        // too_many_pings, which would fail the calls in flight and replace the
        // connection.
        for _ in 0..2 {
            let mut calls = Vec::new();
            for _ in 0..8 {
                let mut client = Client::new(channel.clone());
                calls.push(tokio::spawn(async move {
                    let mut request = tonic::Request::new(SimpleRequest::default());
                    request
                        .metadata_mut()
                        .insert("x-delay-ms", "3000".parse().unwrap());
                    client.unary_call(request).await.map(|_| ())
                }));
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            for call in calls {
                call.await.unwrap().expect("a long call failed");
            }
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        let endpoint = &channel.stats().endpoints[0];
        eprintln!(
            "PINGs sent during long calls and idle periods: {}",
            endpoint.pings
        );
        assert_eq!(endpoint.dead_connections, 0);
        // The same connection served everything: a GOAWAY would have replaced it.
        assert_eq!(endpoint.connections, 1);
        let mut client = Client::new(channel.clone());
        call(&mut client).await.expect("a call after the long ones");
        assert_eq!(channel.stats().endpoints[0].connections, 1);
    })
    .await;
}

#[tokio::test]
async fn a_backend_answering_slowly_is_not_declared_dead() {
    within(async {
        let backend = Backend::builder("slow")
            .latency(tonic_balancer_testkit::Latency::Fixed(
                Duration::from_millis(2500),
            ))
            .start()
            .await
            .unwrap();
        let channel = BalancedChannel::builder(&target([backend.addr()]))
            .build()
            .unwrap();
        wait_ready(&channel, 1).await;
        let mut calls = Vec::new();
        for _ in 0..3 {
            let mut client = Client::new(channel.clone());
            calls.push(tokio::spawn(async move { call(&mut client).await }));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap(), "slow");
        }
        let endpoint = &channel.stats().endpoints[0];
        assert!(endpoint.pings >= 1, "silence with new calls draws a PING");
        assert_eq!(endpoint.dead_connections, 0, "a live server ACKs its PINGs");
        assert_eq!(endpoint.connections, 1);
    })
    .await;
}

/// gRFC A8 keepalive against grpcio's default ping policy. C-core allows one PING per
/// 2 hours on a connection without calls and cuts the client at the third PING too
/// soon (GOAWAY ENHANCE_YOUR_CALM "too_many_pings"), so keepalive every 10 s without
/// calls is cut after about 40 s. The channel then doubles its keepalive time for new
/// connections, reconnects, and calls go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_doubles_its_time_when_grpcio_says_too_many_pings() {
    let peer = PythonPeer::start("python");
    let run = async {
        let time = tonic_balancer::defaults::MIN_KEEPALIVE_TIME;
        let channel = BalancedChannel::builder(&target([peer.addr()]))
            .keepalive(tonic_balancer::KeepaliveConfig::new(time).without_calls(true))
            .build()
            .unwrap();
        assert_eq!(channel.stats().keepalive_time, Some(time));
        wait_ready(&channel, 1).await;
        let mut client = Client::new(channel.clone());
        assert_eq!(call(&mut client).await.unwrap(), "python");
        // Idle from here: only keepalive PINGs cross the connection, until the GOAWAY.
        channel
            .wait_for(|_| channel.stats().keepalive_time == Some(2 * time))
            .await;
        let endpoint = &channel.stats().endpoints[0];
        assert!(
            endpoint.pings >= 3,
            "the GOAWAY came after {} PINGs: grpcio allows 2 strikes",
            endpoint.pings
        );
        wait_ready(&channel, 1).await;
        assert_eq!(call(&mut client).await.unwrap(), "python");
        let endpoint = &channel.stats().endpoints[0];
        assert_eq!(
            endpoint.connections, 2,
            "one new connection after the GOAWAY"
        );
        assert_eq!(
            endpoint.dead_connections, 0,
            "cut by the server, not declared dead"
        );
    };
    tokio::time::timeout(Duration::from_secs(150), run)
        .await
        .expect("the GOAWAY comes about 40 s after the last call");
}
