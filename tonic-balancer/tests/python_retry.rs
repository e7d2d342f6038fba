//! The retry scenarios against a real non-Rust peer: grpcio's C-core server
//! (testkit/python/interop_server.py), scripted through request metadata.

mod support;

use std::time::Duration;
use support::*;
use tonic::Code;
use tonic_balancer::BalancedChannel;
use tonic_balancer_testkit::pb::{SimpleRequest, StreamingOutputCallRequest};
use tonic_balancer_testkit::python::PythonPeer;

fn config(max_attempts: u32, initial_backoff: &str) -> String {
    format!(
        r#"{{"methodConfig": [{{"name": [{{"service": "grpc.testing.TestService"}}],
            "retryPolicy": {{"maxAttempts": {max_attempts}, "initialBackoff": "{initial_backoff}",
              "maxBackoff": "10s", "backoffMultiplier": 2,
              "retryableStatusCodes": ["UNAVAILABLE"]}}}}]}}"#
    )
}

async fn client(peer: &PythonPeer, config: &str) -> Client {
    let channel = BalancedChannel::builder(&target([peer.addr()]))
        .service_config_json(config)
        .unwrap()
        .build()
        .unwrap();
    wait_ready(&channel, 1).await;
    Client::new(channel)
}

/// A UnaryCall scripted by metadata.
fn scripted(script: &[(&'static str, &str)]) -> tonic::Request<SimpleRequest> {
    let mut request = tonic::Request::new(SimpleRequest {
        fill_server_id: true,
        ..Default::default()
    });
    for (key, value) in script {
        request
            .metadata_mut()
            .insert(*key, value.parse().expect("ascii metadata"));
    }
    request
}

/// The peer's count of calls made with a key, from a later successful call's trailers.
fn attempts_seen(metadata: &tonic::metadata::MetadataMap) -> Option<u32> {
    metadata.get("x-attempts-seen")?.to_str().ok()?.parse().ok()
}

#[tokio::test]
async fn grpcio_failures_are_retried_until_success() {
    within(async {
        let peer = PythonPeer::start("python");
        let mut client = client(&peer, &config(3, "0.01s")).await;
        let response = client
            .unary_call(scripted(&[("x-key", "a"), ("x-fail-times", "2")]))
            .await
            .unwrap();
        // The third attempt succeeded and said it was preceded by two.
        assert_eq!(response.get_ref().username, "2");
        assert_eq!(response.get_ref().server_id, "python");
    })
    .await;
}

#[tokio::test]
async fn grpcio_attempts_are_capped_and_other_codes_not_retried() {
    within(async {
        let peer = PythonPeer::start("python");
        let mut client = client(&peer, &config(9, "0.001s")).await;
        let status = client
            .unary_call(scripted(&[("x-key", "b"), ("x-fail-times", "100")]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(attempts_seen(status.metadata()), Some(5));

        let status = client
            .unary_call(scripted(&[
                ("x-key", "c"),
                ("x-fail-times", "1"),
                ("x-fail-code", "INTERNAL"),
            ]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(attempts_seen(status.metadata()), Some(1));
    })
    .await;
}

#[tokio::test]
async fn grpcio_headers_then_unavailable_is_not_retried() {
    within(async {
        let peer = PythonPeer::start("python");
        let mut client = client(&peer, &config(5, "0.01s")).await;
        let status = client
            .unary_call(scripted(&[("x-key", "d"), ("x-headers-then-fail", "1")]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        // Committed after the first attempt: a follow-up call with the same key is the
        // second the peer has seen.
        let response = client
            .unary_call(scripted(&[("x-key", "d")]))
            .await
            .unwrap();
        assert_eq!(attempts_seen(response.metadata()), Some(2));
    })
    .await;
}

#[tokio::test]
async fn grpcio_pushback_is_honoured_and_negative_pushback_stops() {
    within(async {
        let peer = PythonPeer::start("python");
        // A 10 s backoff: only the 300 ms pushback fits the retry in the 5 s deadline.
        let mut client = client(&peer, &config(3, "10s")).await;
        let mut request = scripted(&[
            ("x-key", "e"),
            ("x-fail-times", "1"),
            ("x-pushback-ms", "300"),
        ]);
        request.set_timeout(Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        client.unary_call(request).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));

        let status = client
            .unary_call(scripted(&[
                ("x-key", "f"),
                ("x-fail-times", "1"),
                ("x-pushback-ms", "-1"),
            ]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(attempts_seen(status.metadata()), Some(1));
    })
    .await;
}

#[tokio::test]
async fn grpcio_one_deadline_covers_every_attempt() {
    within(async {
        let peer = PythonPeer::start("python");
        let mut client = client(&peer, &config(5, "0.1s")).await;
        let mut request = scripted(&[("x-key", "g"), ("x-fail-times", "1000")]);
        request.set_timeout(Duration::from_millis(250));
        let status = client.unary_call(request).await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        let response = client
            .unary_call(scripted(&[("x-key", "g")]))
            .await
            .unwrap();
        // 2 attempts within the deadline (3 if both jitters are near their minimum),
        // then this unscripted call.
        let seen = attempts_seen(response.metadata()).unwrap();
        assert!((3..=4).contains(&seen), "{seen}");
    })
    .await;
}

#[tokio::test]
async fn grpcio_streams_are_not_retried_after_headers() {
    within(async {
        let peer = PythonPeer::start("python");
        let mut client = client(&peer, &config(5, "0.01s")).await;
        let mut request = tonic::Request::new(StreamingOutputCallRequest::default());
        request.metadata_mut().insert("x-key", "h".parse().unwrap());
        request
            .metadata_mut()
            .insert("x-headers-then-fail", "1".parse().unwrap());
        let outcome = match client.streaming_output_call(request).await {
            Ok(response) => response.into_inner().message().await.map(|_| ()),
            Err(status) => Err(status),
        };
        assert_eq!(outcome.unwrap_err().code(), Code::Unavailable);
        let response = client
            .unary_call(scripted(&[("x-key", "h")]))
            .await
            .unwrap();
        assert_eq!(attempts_seen(response.metadata()), Some(2));
    })
    .await;
}

/// gRFC A6: a pick that fails because no backend is READY (the call is not
/// wait-for-ready) is an attempt with status UNAVAILABLE, retried by the policy. A
/// single grpcio backend restarted under a call with retries and an 8 s deadline: the
/// call waits out its backoffs and succeeds once the backend is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pick_is_an_attempt_the_retry_policy_retries() {
    let peer = PythonPeer::start("python");
    let port = peer.addr().port();
    within(async {
        let channel = BalancedChannel::builder(&target([peer.addr()]))
            .service_config_json(&config(5, "0.3s"))
            .unwrap()
            .connection_backoff(fast_backoff())
            .build()
            .unwrap();
        wait_ready(&channel, 1).await;
        peer.kill();
        // Every connection attempt is refused now: the channel fails fast.
        channel
            .wait_for(|subs| subs[0].state == tonic_balancer::ConnectivityState::TransientFailure)
            .await;
        let mut client = Client::new(channel.clone());
        let call = tokio::spawn(async move {
            let mut request = scripted(&[]);
            request.set_timeout(Duration::from_secs(8));
            client.unary_call(request).await
        });
        // The backend comes back on the same port while the call backs off.
        let restarted = tokio::task::spawn_blocking(move || PythonPeer::start_on("python", port))
            .await
            .unwrap();
        let response = call.await.unwrap().expect("the call outlives the restart");
        assert_eq!(response.get_ref().server_id, "python");
        drop(restarted);
    })
    .await;
}
