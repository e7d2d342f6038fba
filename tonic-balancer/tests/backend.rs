//! Tests of the programmable `grpc.testing` backend, over real sockets on 127.0.0.1.

use std::future::Future;
use std::time::Duration;

use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_balancer_testkit::pb::test_service_client::TestServiceClient;
use tonic_balancer_testkit::pb::{
    EchoStatus, Empty, ResponseParameters, SimpleRequest, StreamingOutputCallRequest,
};
use tonic_balancer_testkit::{Backend, Latency};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const LONG: Duration = Duration::from_secs(60);

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test timed out")
}

async fn channel(backend: &Backend) -> Channel {
    Endpoint::from_shared(format!("http://{}", backend.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn client(backend: &Backend) -> TestServiceClient<Channel> {
    TestServiceClient::new(channel(backend).await)
}

fn who() -> SimpleRequest {
    SimpleRequest {
        fill_server_id: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn unary_call_reports_server_id_and_payload() {
    within(async {
        let backend = Backend::start("b1").await.unwrap();
        let req = SimpleRequest {
            response_size: 3,
            ..who()
        };
        let resp = client(&backend)
            .await
            .unary_call(req)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.server_id, "b1");
        assert_eq!(resp.payload.unwrap().body, vec![0; 3]);
        assert_eq!(resp.hostname, "127.0.0.1");
        assert_eq!(backend.calls(), 1);
    })
    .await;
}

#[tokio::test]
async fn response_status_is_echoed() {
    within(async {
        let backend = Backend::start("b1").await.unwrap();
        let status = EchoStatus {
            code: Code::ResourceExhausted as i32,
            message: "full".into(),
        };
        let req = SimpleRequest {
            response_status: Some(status),
            ..who()
        };
        let err = client(&backend).await.unary_call(req).await.unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (Code::ResourceExhausted, "full")
        );
    })
    .await;
}

#[tokio::test]
async fn injected_failures_fail_every_call_and_are_counted() {
    within(async {
        let backend = Backend::builder("b1")
            .fail(1.0, Code::Unavailable)
            .start()
            .await
            .unwrap();
        let mut client = client(&backend).await;
        for _ in 0..3 {
            assert_eq!(
                client.unary_call(who()).await.unwrap_err().code(),
                Code::Unavailable
            );
            assert_eq!(
                client.empty_call(Empty {}).await.unwrap_err().code(),
                Code::Unavailable
            );
        }
        backend.set_failure(7.0, Code::Ok); // out of range and Ok: no failures
        client.empty_call(Empty {}).await.unwrap();
        assert_eq!(backend.calls(), 7);
        assert_eq!(backend.in_flight(), 0);
    })
    .await;
}

#[tokio::test]
async fn fixed_latency_holds_the_call_in_flight() {
    within(async {
        let backend = Backend::builder("b1")
            .latency(Latency::Fixed(Duration::from_millis(300)))
            .start()
            .await
            .unwrap();
        let mut client = client(&backend).await;
        let call = tokio::spawn(async move { client.empty_call(Empty {}).await });
        backend.wait_in_flight(1).await;
        assert_eq!(backend.in_flight(), 1);
        call.await.unwrap().unwrap();
        assert_eq!(backend.in_flight(), 0);
    })
    .await;
}

#[tokio::test]
async fn streaming_output_call_sends_each_message_then_the_status() {
    within(async {
        let backend = Backend::start("b1").await.unwrap();
        let step = |size| ResponseParameters {
            size,
            interval_us: 1000,
        };
        let req = StreamingOutputCallRequest {
            response_parameters: vec![step(1), step(0), step(5)],
            response_status: Some(EchoStatus {
                code: Code::Aborted as i32,
                message: "end".into(),
            }),
            ..Default::default()
        };
        let mut stream = client(&backend)
            .await
            .streaming_output_call(req)
            .await
            .unwrap()
            .into_inner();
        let mut sizes = Vec::new();
        let end = loop {
            match stream.message().await {
                Ok(Some(msg)) => sizes.push(msg.payload.unwrap().body.len()),
                Ok(None) => panic!("stream ended without the echoed status"),
                Err(status) => break status,
            }
        };
        assert_eq!(sizes, [1, 0, 5]);
        assert_eq!(end.code(), Code::Aborted);
    })
    .await;
}

#[tokio::test]
async fn kill_drops_connections_and_refuses_new_ones() {
    within(async {
        let backend = Backend::builder("b1")
            .latency(Latency::Fixed(LONG))
            .start()
            .await
            .unwrap();
        let mut client = client(&backend).await;
        let mut probe = client.clone();
        let call = tokio::spawn(async move { client.empty_call(Empty {}).await });
        backend.wait_in_flight(1).await;

        backend.kill().await;
        assert!(!backend.is_running());
        // Fails well before the 60s latency: the connection was cut, not drained.
        assert!(call.await.unwrap().is_err());
        assert!(probe.empty_call(Empty {}).await.is_err());
        let refused = tokio::net::TcpStream::connect(backend.addr())
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        assert_eq!(backend.calls(), 1);
    })
    .await;
}

#[tokio::test]
async fn restart_serves_again_on_the_same_address() {
    within(async {
        let backend = Backend::start("b1").await.unwrap();
        let addr = backend.addr();
        client(&backend).await.unary_call(who()).await.unwrap();
        backend.kill().await;
        backend.kill().await; // idempotent

        backend.restart().await.unwrap();
        backend.restart().await.unwrap(); // no-op while running
        assert!(backend.is_running());
        assert_eq!(backend.addr(), addr);
        let resp = client(&backend)
            .await
            .unary_call(who())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.server_id, "b1");
        assert_eq!(backend.calls(), 2);
    })
    .await;
}

#[tokio::test]
async fn health_watch_follows_set_serving() {
    within(async {
        let backend = Backend::start("b1").await.unwrap();
        let mut health = HealthClient::new(channel(&backend).await);
        let req = || HealthCheckRequest {
            service: String::new(),
        };
        let mut watch = health.watch(req()).await.unwrap().into_inner();
        let status = |msg: Option<tonic_health::pb::HealthCheckResponse>| msg.unwrap().status;
        assert_eq!(
            status(watch.message().await.unwrap()),
            ServingStatus::Serving as i32
        );

        backend.set_serving(false);
        assert_eq!(
            status(watch.message().await.unwrap()),
            ServingStatus::NotServing as i32
        );
        let named = HealthCheckRequest {
            service: "grpc.testing.TestService".into(),
        };
        let resp = health.check(named).await.unwrap().into_inner();
        assert_eq!(resp.status, ServingStatus::NotServing as i32);
    })
    .await;
}

#[tokio::test]
async fn dropping_the_backend_cuts_its_connections() {
    within(async {
        let backend = Backend::builder("b1")
            .latency(Latency::Fixed(LONG))
            .start()
            .await
            .unwrap();
        let mut client = client(&backend).await;
        let call = tokio::spawn(async move { client.empty_call(Empty {}).await });
        backend.wait_in_flight(1).await;
        drop(backend);
        assert!(call.await.unwrap().is_err());
    })
    .await;
}
