//! Deadline propagation across a hop: front (with DeadlineLayer) → BalancedChannel → back.

mod support;

use std::time::Duration;
use support::*;
use tonic_balancer::BalancedChannel;
use tonic_balancer_testkit::pb::SimpleRequest;
use tonic_balancer_testkit::{Backend, Latency, Relay};

async fn front_and_back() -> (Relay, Backend) {
    let back = Backend::builder("back")
        .latency(Latency::Fixed(Duration::from_millis(50)))
        .start()
        .await
        .unwrap();
    let back_channel = BalancedChannel::builder(&target([back.addr()]))
        .build()
        .unwrap();
    (Relay::start(back_channel).await.unwrap(), back)
}

#[tokio::test]
async fn the_back_call_carries_at_most_the_inbound_time_left() {
    within(async {
        let (front, back) = front_and_back().await;
        let channel = BalancedChannel::builder(&target([front.addr()]))
            .build()
            .unwrap();
        let mut client = Client::new(channel);
        let mut request = tonic::Request::new(SimpleRequest {
            fill_server_id: true,
            ..Default::default()
        });
        request.set_timeout(Duration::from_secs(2));
        let response = client.unary_call(request).await.unwrap().into_inner();
        assert_eq!(response.server_id, "back");
        let seen = back.seen()[0]
            .timeout
            .expect("the back call has a deadline");
        assert!(seen <= Duration::from_secs(2), "{seen:?}");
        // What was left, not something unrelated: the hop took far less than a second.
        assert!(seen > Duration::from_secs(1), "{seen:?}");
    })
    .await;
}

#[tokio::test]
async fn without_an_inbound_deadline_the_back_call_has_none() {
    within(async {
        let (front, back) = front_and_back().await;
        let channel = BalancedChannel::builder(&target([front.addr()]))
            .build()
            .unwrap();
        call(&mut Client::new(channel)).await.unwrap();
        assert_eq!(back.seen()[0].timeout, None);
    })
    .await;
}

#[tokio::test]
async fn an_inbound_deadline_shorter_than_the_back_call_ends_it() {
    within(async {
        let (front, back) = front_and_back().await;
        back.set_latency(Latency::Fixed(Duration::from_secs(10)));
        let channel = BalancedChannel::builder(&target([front.addr()]))
            .build()
            .unwrap();
        let mut request = tonic::Request::new(SimpleRequest::default());
        request.set_timeout(Duration::from_millis(300));
        let status = Client::new(channel).unary_call(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        assert!(back.seen()[0].timeout.unwrap() <= Duration::from_millis(300));
    })
    .await;
}
