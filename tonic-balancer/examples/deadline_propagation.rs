//! A deadline that follows a request across services.
//!
//! A client calls a front service with a 500 ms deadline. The front, served with
//! `DeadlineLayer`, calls a back service through a `BalancedChannel` without passing
//! any deadline by hand: the back call carries what is left of the front's.
//!
//! Run with `cargo run --example deadline_propagation`.

use std::time::Duration;
use tonic_balancer::BalancedChannel;
use tonic_balancer_testkit::pb::SimpleRequest;
use tonic_balancer_testkit::pb::test_service_client::TestServiceClient;
use tonic_balancer_testkit::{Backend, Latency, Relay};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let back = Backend::builder("back")
        .latency(Latency::Fixed(Duration::from_millis(100)))
        .start()
        .await?;
    let back_channel = BalancedChannel::builder(&format!("ipv4:{}", back.addr())).build()?;
    let front = Relay::start(back_channel).await?;
    let front_channel = BalancedChannel::builder(&format!("ipv4:{}", front.addr())).build()?;
    let mut client = TestServiceClient::new(front_channel);

    for deadline in [Duration::from_millis(500), Duration::from_millis(50)] {
        let mut request = tonic::Request::new(SimpleRequest::default());
        request.set_timeout(deadline);
        let outcome = client.unary_call(request).await;
        let seen = back.seen().last().and_then(|s| s.timeout);
        println!(
            "client deadline {deadline:?}: {} — the back service saw grpc-timeout {:?}",
            match outcome {
                Ok(_) => "OK".to_owned(),
                Err(status) => format!("{:?}", status.code()),
            },
            seen
        );
    }
    Ok(())
}
