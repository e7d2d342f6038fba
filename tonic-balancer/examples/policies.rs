//! Choosing a load-balancing policy, for the whole channel and per method, on a fleet
//! where one backend is ten times slower than the others.
//!
//! Run with `cargo run --example policies`.

use std::collections::BTreeMap;
use std::time::Duration;
use tonic_balancer::{BalancedChannel, ConnectivityState, Policy};
use tonic_balancer_testkit::pb::test_service_client::TestServiceClient;
use tonic_balancer_testkit::pb::{Empty, SimpleRequest};
use tonic_balancer_testkit::{Backend, Latency};

const CALLS: usize = 400;
const CONCURRENCY: usize = 16;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Four backends answering in 5 ms, one in 50 ms.
    let mut backends = Vec::new();
    for i in 0..5 {
        let latency = Duration::from_millis(if i == 4 { 50 } else { 5 });
        let name = if i == 4 {
            "slow".to_owned()
        } else {
            format!("fast{i}")
        };
        backends.push(
            Backend::builder(name)
                .latency(Latency::Fixed(latency))
                .start()
                .await?,
        );
    }
    let addrs: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    let target = format!("ipv4:{}", addrs.join(","));

    println!("share of {CALLS} UnaryCalls per backend ({CONCURRENCY} concurrent callers):");
    for policy in [
        Policy::round_robin(),
        Policy::least_request(),
        Policy::peak_ewma(),
    ] {
        let name = policy.name();
        let channel = BalancedChannel::builder(&target).policy(policy).build()?;
        let shares = run(&channel).await?;
        println!("  {name:<14} {}", format_shares(&shares));
    }

    // One channel, two policies: UnaryCall latency-aware, EmptyCall pinned to the first
    // address (say, a method that wants its backend's cache warm).
    let channel = BalancedChannel::builder(&target)
        .policy(Policy::peak_ewma())
        .method_policy("grpc.testing.TestService/EmptyCall", Policy::pick_first())
        .build()?;
    wait_all_ready(&channel).await;
    let before: Vec<u64> = backends.iter().map(|b| b.calls()).collect();
    let mut client = TestServiceClient::new(channel.clone());
    for _ in 0..50 {
        client.empty_call(Empty {}).await?;
    }
    let empty: Vec<u64> = backends
        .iter()
        .zip(&before)
        .map(|(b, n)| b.calls() - n)
        .collect();
    println!("per method on one channel:");
    println!("  EmptyCall (pick_first) calls per backend: {empty:?}");
    println!(
        "  UnaryCall (peak_ewma)  {}",
        format_shares(&run(&channel).await?)
    );
    Ok(())
}

/// Sends `CALLS` UnaryCalls from `CONCURRENCY` tasks; returns calls per backend.
async fn run(channel: &BalancedChannel) -> Result<BTreeMap<String, usize>, tonic::Status> {
    wait_all_ready(channel).await;
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let mut client = TestServiceClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..CALLS / CONCURRENCY {
                let request = SimpleRequest {
                    fill_server_id: true,
                    ..Default::default()
                };
                ids.push(client.unary_call(request).await?.into_inner().server_id);
            }
            Ok::<_, tonic::Status>(ids)
        }));
    }
    let mut shares = BTreeMap::new();
    for task in tasks {
        for id in task.await.expect("caller task")? {
            *shares.entry(id).or_insert(0) += 1;
        }
    }
    Ok(shares)
}

/// Calls made before every backend is READY would go to the ones that are; waiting
/// makes the comparison fair.
async fn wait_all_ready(channel: &BalancedChannel) {
    channel
        .wait_for(|subs| subs.iter().all(|s| s.state == ConnectivityState::Ready))
        .await;
}

fn format_shares(shares: &BTreeMap<String, usize>) -> String {
    let total: usize = shares.values().sum();
    shares
        .iter()
        .map(|(id, n)| format!("{id} {:>5.1}%", 100.0 * *n as f64 / total as f64))
        .collect::<Vec<_>>()
        .join("  ")
}
