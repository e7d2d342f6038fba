//! Three in-process backends behind one `BalancedChannel`, used through the generated client.
//!
//! Run with `cargo run --example quickstart`.

use std::collections::BTreeMap;
use tonic_balancer::{BalancedChannel, ConnectivityState, Policy};
use tonic_balancer_testkit::Backend;
use tonic_balancer_testkit::pb::SimpleRequest;
use tonic_balancer_testkit::pb::test_service_client::TestServiceClient;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Three grpc.testing backends on 127.0.0.1, each on its own port.
    let mut backends = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        backends.push(Backend::start(name).await?);
    }
    let addrs: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    let target = format!("ipv4:{}", addrs.join(","));

    // The only change from plain tonic: the channel.
    let channel = BalancedChannel::builder(&target)
        .policy(Policy::round_robin())
        .build()?;
    // Connections start in the background; calls made now would simply queue. Waiting
    // for every backend here only makes the printed split exact.
    channel
        .wait_for(|subs| subs.iter().all(|s| s.state == ConnectivityState::Ready))
        .await;
    let mut client = TestServiceClient::new(channel.clone());

    let mut served = BTreeMap::new();
    for _ in 0..30 {
        let request = SimpleRequest {
            fill_server_id: true,
            ..Default::default()
        };
        let response = client.unary_call(request).await?.into_inner();
        *served.entry(response.server_id).or_insert(0) += 1;
    }

    println!("target: {target}");
    for (server, calls) in &served {
        println!("{server:>6} served {calls} calls");
    }
    for sub in channel.subchannels() {
        println!(
            "{} is {} with {} calls in flight",
            sub.address, sub.state, sub.in_flight
        );
    }
    Ok(())
}
