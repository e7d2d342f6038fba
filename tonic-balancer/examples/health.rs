//! Client-side health checking: a backend reports NOT_SERVING, calls move away from it
//! at once, and come back when it reports SERVING again.
//!
//! Run with `cargo run --example health`.

use std::collections::BTreeMap;
use tonic_balancer::{BalancedChannel, ConnectivityState};
use tonic_balancer_testkit::Backend;
use tonic_balancer_testkit::pb::SimpleRequest;
use tonic_balancer_testkit::pb::test_service_client::TestServiceClient;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut backends = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        backends.push(Backend::start(name).await?);
    }
    let addrs: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    let channel = BalancedChannel::builder(&format!("ipv4:{}", addrs.join(",")))
        // Watch grpc.health.v1 for the whole server ("") on every connection.
        .health_check("")
        .build()?;
    let mut client = TestServiceClient::new(channel.clone());
    let ready = |n: usize| {
        move |subs: &[tonic_balancer::SubchannelInfo]| {
            subs.iter()
                .filter(|s| s.state == ConnectivityState::Ready)
                .count()
                == n
        }
    };

    channel.wait_for(ready(3)).await;
    println!("all serving:        {}", shares(&mut client).await?);

    backends[1].set_serving(false);
    channel.wait_for(ready(2)).await;
    println!("beta NOT_SERVING:   {}", shares(&mut client).await?);
    for sub in channel.subchannels() {
        println!("  {} is {}", sub.address, sub.state);
    }

    backends[1].set_serving(true);
    channel.wait_for(ready(3)).await;
    println!("beta SERVING again: {}", shares(&mut client).await?);
    Ok(())
}

async fn shares(client: &mut TestServiceClient<BalancedChannel>) -> Result<String, tonic::Status> {
    let mut served = BTreeMap::new();
    for _ in 0..30 {
        let request = SimpleRequest {
            fill_server_id: true,
            ..Default::default()
        };
        let id = client.unary_call(request).await?.into_inner().server_id;
        *served.entry(id).or_insert(0) += 1;
    }
    Ok(format!("{served:?}"))
}
