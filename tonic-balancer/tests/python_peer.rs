//! Smoke tests of the Python gRPC peer itself (testkit/python/interop_server.py), with plain tonic
//! clients and, for the wire format, raw h2: its scripted behaviours are what the balancer
//! tests against it rely on. The test kit provisions its Python environment.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_balancer_testkit::pb::test_service_client::TestServiceClient;
use tonic_balancer_testkit::pb::{
    EchoStatus, Empty, ResponseParameters, SimpleRequest, SimpleResponse,
    StreamingOutputCallRequest,
};
use tonic_balancer_testkit::python::PythonPeer;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Fails the test instead of hanging it.
async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test timed out")
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect to the python peer")
}

async fn client(peer: &PythonPeer) -> TestServiceClient<Channel> {
    TestServiceClient::new(channel(peer.addr()).await)
}

/// A request asking for server_id, with this script metadata.
fn scripted(metadata: &[(&'static str, &str)]) -> Request<SimpleRequest> {
    let mut request = Request::new(SimpleRequest {
        fill_server_id: true,
        ..Default::default()
    });
    for &(key, value) in metadata {
        request
            .metadata_mut()
            .insert(key, value.parse().expect("ascii metadata value"));
    }
    request
}

fn get<'a>(metadata: &'a MetadataMap, key: &str) -> Option<&'a str> {
    metadata.get(key).map(|v| v.to_str().expect("ascii"))
}

async fn unary(
    client: &mut TestServiceClient<Channel>,
    metadata: &[(&'static str, &str)],
) -> Result<(SimpleResponse, MetadataMap), Status> {
    let response = client.unary_call(scripted(metadata)).await?;
    let metadata = response.metadata().clone(); // headers and trailers, merged by tonic
    Ok((response.into_inner(), metadata))
}

#[tokio::test]
async fn success_fills_server_id_and_trailers() {
    within(async {
        let peer = PythonPeer::start("py-smoke");
        let mut client = client(&peer).await;
        let (response, trailers) = unary(&mut client, &[]).await.expect("call");
        assert_eq!(response.server_id, "py-smoke");
        assert_eq!(response.username, "");
        assert_eq!(get(&trailers, "x-attempts-seen"), Some("1"));
        assert_eq!(get(&trailers, "x-previous-rpc-attempts"), Some("none"));

        // Without x-key nothing is counted across calls; server_id only on request.
        let mut request = scripted(&[]);
        request.get_mut().fill_server_id = false;
        let response = client.unary_call(request).await.expect("call");
        assert_eq!(get(response.metadata(), "x-attempts-seen"), Some("1"));
        assert_eq!(response.into_inner().server_id, "");
    })
    .await
}

#[tokio::test]
async fn fail_times_fails_the_first_calls_of_a_key() {
    within(async {
        let peer = PythonPeer::start("py-fail");
        let mut client = client(&peer).await;
        let script = [("x-key", "k1"), ("x-fail-times", "2")];
        for seen in ["1", "2"] {
            let status = unary(&mut client, &script).await.expect_err("fails");
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            assert_eq!(get(status.metadata(), "x-attempts-seen"), Some(seen));
            assert_eq!(get(status.metadata(), "grpc-retry-pushback-ms"), None);
        }
        let (response, trailers) = unary(&mut client, &script).await.expect("3rd call");
        assert_eq!(response.server_id, "py-fail");
        assert_eq!(get(&trailers, "x-attempts-seen"), Some("3"));

        // Keys are independent; codes by name or number.
        let status = unary(
            &mut client,
            &[
                ("x-key", "k2"),
                ("x-fail-times", "1"),
                ("x-fail-code", "RESOURCE_EXHAUSTED"),
            ],
        )
        .await
        .expect_err("fails");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(get(status.metadata(), "x-attempts-seen"), Some("1"));
        let status = unary(
            &mut client,
            &[("x-key", "k3"), ("x-fail-times", "1"), ("x-fail-code", "8")],
        )
        .await
        .expect_err("fails");
        assert_eq!(status.code(), Code::ResourceExhausted);

        // EmptyCall follows the same script.
        let mut request = Request::new(Empty {});
        request
            .metadata_mut()
            .insert("x-key", "k4".parse().unwrap());
        request
            .metadata_mut()
            .insert("x-fail-times", "1".parse().unwrap());
        let status = client.empty_call(request).await.expect_err("fails");
        assert_eq!(status.code(), Code::Unavailable);

        // A malformed script is refused rather than ignored.
        let status = unary(
            &mut client,
            &[("x-fail-code", "BOGUS"), ("x-fail-times", "1")],
        )
        .await
        .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    })
    .await
}

#[tokio::test]
async fn pushback_trailer_is_sent_on_failure() {
    within(async {
        let peer = PythonPeer::start("py-pushback");
        let mut client = client(&peer).await;
        for (key, pushback) in [("p1", "250"), ("p2", "0"), ("p3", "-1")] {
            let script = [
                ("x-key", key),
                ("x-fail-times", "1"),
                ("x-pushback-ms", pushback),
            ];
            let status = unary(&mut client, &script).await.expect_err("fails");
            assert_eq!(status.code(), Code::Unavailable);
            assert_eq!(
                get(status.metadata(), "grpc-retry-pushback-ms"),
                Some(pushback)
            );
            // Only failures carry it.
            let (_, trailers) = unary(&mut client, &script).await.expect("2nd call");
            assert_eq!(get(&trailers, "grpc-retry-pushback-ms"), None);
        }

        // grpcio's C-core parses this header as an integer even on the server and re-encodes
        // what it cannot parse as i64::MIN: garbage still reaches the client as "do not retry".
        let script = [
            ("x-key", "p4"),
            ("x-fail-times", "1"),
            ("x-pushback-ms", "soon"),
        ];
        let status = unary(&mut client, &script).await.expect_err("fails");
        let sent = get(status.metadata(), "grpc-retry-pushback-ms").expect("pushback");
        assert!(
            sent == "soon" || sent.parse::<i64>().is_ok_and(|ms| ms < 0),
            "garbage pushback arrived as {sent:?}"
        );
    })
    .await
}

#[tokio::test]
async fn headers_then_fail_is_unavailable() {
    within(async {
        let peer = PythonPeer::start("py-headers");
        let mut client = client(&peer).await;
        let status = unary(&mut client, &[("x-headers-then-fail", "1")])
            .await
            .expect_err("fails");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(status.message(), "x-headers-then-fail");
        assert_eq!(get(status.metadata(), "x-attempts-seen"), Some("1"));
    })
    .await
}

#[tokio::test]
async fn previous_rpc_attempts_header_is_echoed() {
    within(async {
        let peer = PythonPeer::start("py-previous");
        let mut client = client(&peer).await;
        let (response, trailers) = unary(&mut client, &[("grpc-previous-rpc-attempts", "2")])
            .await
            .expect("call");
        assert_eq!(get(&trailers, "x-previous-rpc-attempts"), Some("2"));
        assert_eq!(response.username, "2");
        // Echoed on failures too.
        let script = [("grpc-previous-rpc-attempts", "1"), ("x-fail-times", "1")];
        let status = unary(&mut client, &script).await.expect_err("fails");
        assert_eq!(get(status.metadata(), "x-previous-rpc-attempts"), Some("1"));
    })
    .await
}

#[tokio::test]
async fn health_watch_follows_x_set_health() {
    within(async {
        let peer = PythonPeer::start("py-health");
        let channel = channel(peer.addr()).await;
        let mut health = HealthClient::new(channel.clone());
        let mut client = TestServiceClient::new(channel);
        let watch = |service: &str| HealthCheckRequest {
            service: service.to_owned(),
        };
        let mut updates = health
            .watch(watch("grpc.testing.TestService"))
            .await
            .expect("watch")
            .into_inner();
        let first = updates.message().await.expect("update").expect("open");
        assert_eq!(first.status(), ServingStatus::Serving);

        unary(&mut client, &[("x-set-health", "NOT_SERVING")])
            .await
            .expect("call");
        let second = updates.message().await.expect("update").expect("open");
        assert_eq!(second.status(), ServingStatus::NotServing);
        // The overall health ("") follows too.
        let overall = health.check(watch("")).await.expect("check").into_inner();
        assert_eq!(overall.status(), ServingStatus::NotServing);

        unary(&mut client, &[("x-set-health", "SERVING")])
            .await
            .expect("call");
        let third = updates.message().await.expect("update").expect("open");
        assert_eq!(third.status(), ServingStatus::Serving);
    })
    .await
}

#[tokio::test]
async fn delays_deadlines_echoed_status_and_streaming() {
    within(async {
        let peer = PythonPeer::start("py-misc");
        let mut client = client(&peer).await;

        let start = Instant::now();
        unary(&mut client, &[("x-delay-ms", "300")])
            .await
            .expect("call");
        assert!(start.elapsed() >= Duration::from_millis(300));

        // A deadline cuts the delay short. tonic's own timer usually wins the race with the
        // server's DEADLINE_EXCEEDED and reports Cancelled ("Timeout expired"); the raw h2
        // test below checks the server side alone.
        let mut request = scripted(&[("x-delay-ms", "30000")]);
        request.set_timeout(Duration::from_millis(200));
        let status = client.unary_call(request).await.expect_err("times out");
        assert!(
            matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{status:?}"
        );

        let mut request = scripted(&[]);
        request.get_mut().response_status = Some(EchoStatus {
            code: Code::FailedPrecondition as i32,
            message: "echoed".into(),
        });
        let status = client.unary_call(request).await.expect_err("echoed");
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "echoed");
        assert_eq!(get(status.metadata(), "x-attempts-seen"), Some("1"));

        let sizes = [3, 0, 5];
        let request = StreamingOutputCallRequest {
            response_parameters: sizes
                .iter()
                .map(|&size| ResponseParameters {
                    size,
                    interval_us: 1000,
                })
                .collect(),
            ..Default::default()
        };
        let mut stream = client
            .streaming_output_call(request)
            .await
            .expect("stream")
            .into_inner();
        let mut received = Vec::new();
        while let Some(message) = stream.message().await.expect("message") {
            received.push(message.payload.map_or(0, |p| p.body.len() as i32));
        }
        assert_eq!(received, sizes);
    })
    .await
}

/// What grpcio puts on the wire, seen with raw h2: a unary call with an empty request.
struct RawResponse {
    headers: http::HeaderMap,
    /// The response ended with its HEADERS frame.
    headers_ended_stream: bool,
    trailers: Option<http::HeaderMap>,
}

async fn raw_unary(addr: SocketAddr, metadata: &[(&'static str, &str)]) -> RawResponse {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.expect("ready");
    let mut request =
        http::Request::post(format!("http://{addr}/grpc.testing.TestService/UnaryCall"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
    for &(key, value) in metadata {
        request = request.header(key, value);
    }
    let (response, mut send) = client
        .send_request(request.body(()).expect("request"), false)
        .expect("send request");
    // One uncompressed, empty message: SimpleRequest::default().
    send.send_data(bytes::Bytes::from_static(&[0; 5]), true)
        .expect("send message");
    let (parts, mut body) = response.await.expect("response").into_parts();
    assert_eq!(parts.status, http::StatusCode::OK);
    let headers_ended_stream = body.is_end_stream();
    while let Some(data) = body.data().await {
        let data = data.expect("data");
        let _ = body.flow_control().release_capacity(data.len());
    }
    let trailers = body.trailers().await.expect("trailers");
    RawResponse {
        headers: parts.headers,
        headers_ended_stream,
        trailers,
    }
}

fn header<'a>(headers: &'a http::HeaderMap, key: &str) -> Option<&'a str> {
    headers.get(key).map(|v| v.to_str().expect("ascii"))
}

#[tokio::test]
async fn plain_failures_are_trailers_only_headers_then_fail_is_not() {
    within(async {
        let peer = PythonPeer::start("py-wire");
        let script = [("x-fail-times", "1"), ("x-pushback-ms", "50")];
        let failure = raw_unary(peer.addr(), &script).await;
        assert!(failure.headers_ended_stream, "{:?}", failure.headers);
        assert!(failure.trailers.is_none());
        assert_eq!(header(&failure.headers, "grpc-status"), Some("14"));
        assert_eq!(
            header(&failure.headers, "grpc-retry-pushback-ms"),
            Some("50")
        );

        let committed = raw_unary(peer.addr(), &[("x-headers-then-fail", "1")]).await;
        assert!(!committed.headers_ended_stream);
        assert_eq!(header(&committed.headers, "grpc-status"), None);
        assert_eq!(header(&committed.headers, "x-sent"), Some("1"));
        let trailers = committed.trailers.expect("trailers");
        assert_eq!(header(&trailers, "grpc-status"), Some("14"));

        // The server enforces grpc-timeout itself (no client-side timer here).
        let timeout = [("grpc-timeout", "200m"), ("x-delay-ms", "30000")];
        let expired = raw_unary(peer.addr(), &timeout).await;
        assert!(expired.headers_ended_stream, "{:?}", expired.headers);
        assert_eq!(header(&expired.headers, "grpc-status"), Some("4"));

        let success = raw_unary(peer.addr(), &[]).await;
        assert!(!success.headers_ended_stream);
        let trailers = success.trailers.expect("trailers");
        assert_eq!(header(&trailers, "grpc-status"), Some("0"));
        assert_eq!(header(&trailers, "x-attempts-seen"), Some("1"));
    })
    .await
}
