//! Client-side health checking against grpcio's health servicer (a real non-Rust peer).

mod support;

use support::*;
use tonic::Code;
use tonic_balancer::{BalancedChannel, ConnectivityState};
use tonic_balancer_testkit::pb::SimpleRequest;
use tonic_balancer_testkit::pb::test_service_client::TestServiceClient;
use tonic_balancer_testkit::python::PythonPeer;

/// Sets the peer's health through a plain tonic channel (the balanced one may refuse
/// to send to an unhealthy peer).
async fn set_health(peer: &PythonPeer, status: &str) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", peer.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = tonic::Request::new(SimpleRequest::default());
    request
        .metadata_mut()
        .insert("x-set-health", status.parse().unwrap());
    TestServiceClient::new(channel)
        .unary_call(request)
        .await
        .unwrap();
}

async fn checked(peer: &PythonPeer, service: &str) -> BalancedChannel {
    BalancedChannel::builder(&target([peer.addr()]))
        .health_check(service)
        .connection_backoff(fast_backoff())
        .build()
        .unwrap()
}

#[tokio::test]
async fn grpcio_health_flips_take_the_peer_out_and_back() {
    within(async {
        let peer = PythonPeer::start("python");
        for service in ["", "grpc.testing.TestService"] {
            let channel = checked(&peer, service).await;
            wait_ready(&channel, 1).await;
            let mut client = Client::new(channel.clone());
            assert_eq!(call(&mut client).await.unwrap(), "python");

            set_health(&peer, "NOT_SERVING").await;
            channel
                .wait_for(|subs| subs[0].state == ConnectivityState::TransientFailure)
                .await;
            let status = call(&mut client).await.unwrap_err();
            assert_eq!(status.code(), Code::Unavailable);
            assert!(
                status.message().contains("NOT_SERVING"),
                "{}",
                status.message()
            );

            set_health(&peer, "SERVING").await;
            wait_ready(&channel, 1).await;
            assert_eq!(call(&mut client).await.unwrap(), "python");
        }
    })
    .await;
}

#[tokio::test]
async fn grpcio_unknown_health_service_keeps_the_peer_out() {
    within(async {
        let peer = PythonPeer::start("python");
        let channel = checked(&peer, "no.such.Service").await;
        channel
            .wait_for(|subs| {
                subs.first()
                    .is_some_and(|s| s.state == ConnectivityState::TransientFailure)
            })
            .await;
        let status = call(&mut Client::new(channel)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status.message().contains("SERVICE_UNKNOWN"),
            "{}",
            status.message()
        );
    })
    .await;
}
