//! The DNS resolver following a zone that changes while calls run.
//!
//! Run with `cargo run --example dns`. Everything is in-process on 127.0.0.1: three
//! grpc.testing backends, and a DNS server (`testing::dns::DnsServer`, real DNS over
//! UDP) serving SRV records for them: alpha and beta at priority 10, gamma at priority
//! 20 as a standby. Halfway through, the zone drops beta and promotes gamma; the
//! channel notices when the 1 s TTL runs out, drains beta and starts using gamma.
//!
//! SRV records carry ports, so the backends can share 127.0.0.1 on any OS. With A
//! records (`dns:///orders.test:50051`) the port comes from the target instead, so each
//! backend needs its own IP address.

use std::error::Error;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tonic_balancer::resolver::DnsOptions;
use tonic_balancer::{BalancedChannel, ConnectivityState};
use tonic_balancer_testkit::Backend;
use tonic_balancer_testkit::dns::{DnsServer, Srv};
use tonic_balancer_testkit::pb::SimpleRequest;
use tonic_balancer_testkit::pb::test_service_client::TestServiceClient;

const SERVICE: &str = "_grpc._tcp.orders.test";
const TTL: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut backends = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        backends.push(Backend::start(name).await?);
    }
    let [alpha, beta, gamma] = [&backends[0], &backends[1], &backends[2]];
    let srv = |priority, backend: &Backend| {
        let host = format!("{}.orders.test", backend.server_id());
        Srv::new(priority, 1, backend.addr().port(), host)
    };

    let dns = DnsServer::start().await?;
    for backend in &backends {
        let host = format!("{}.orders.test", backend.server_id());
        dns.set_addrs(&host, [IpAddr::V4(Ipv4Addr::LOCALHOST)], TTL);
    }
    dns.set_srv(
        SERVICE,
        [srv(10, alpha), srv(10, beta), srv(20, gamma)],
        TTL,
    );

    // Ask our DNS server; honour its 1 s TTL (the default floor is 5 s).
    let target = format!("dns+srv://{}/{SERVICE}", dns.addr());
    let mut options = DnsOptions::default();
    options.min_refresh = Duration::from_millis(500);
    let channel = BalancedChannel::builder(&target)
        .dns_options(options)
        .build()?;
    channel
        .wait_for(|subs| {
            subs.len() == 2 && subs.iter().all(|s| s.state == ConnectivityState::Ready)
        })
        .await;
    println!("target: {target}");

    // Eight callers calling back to back until told to stop.
    let stop = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut callers = Vec::new();
    for _ in 0..8 {
        let mut client = TestServiceClient::new(channel.clone());
        let (stop, failed) = (stop.clone(), failed.clone());
        callers.push(tokio::spawn(async move {
            while stop.load(Ordering::Relaxed) == 0 {
                let request = SimpleRequest {
                    fill_server_id: true,
                    ..Default::default()
                };
                if client.unary_call(request).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    let counts = || backends.iter().map(Backend::calls).collect::<Vec<_>>();
    let start = counts();
    tokio::time::sleep(WINDOW).await;
    let before = counts();

    println!("changing the zone: beta leaves, gamma is promoted to priority 10");
    let changed = Instant::now();
    dns.set_srv(SERVICE, [srv(10, alpha), srv(10, gamma)], TTL);
    channel
        .wait_for(|subs| {
            subs.len() == 2
                && subs.iter().all(|s| s.address.addr != beta.addr())
                && subs.iter().all(|s| s.state == ConnectivityState::Ready)
        })
        .await;
    println!(
        "the channel moved {} ms after the change (TTL {} s)",
        changed.elapsed().as_millis(),
        TTL.as_secs()
    );
    let moved = counts();
    tokio::time::sleep(WINDOW).await;
    let after = counts();
    stop.store(1, Ordering::Relaxed);
    for caller in callers {
        caller.await?;
    }

    print_shares("before", &start, &before, &backends);
    print_shares("after", &moved, &after, &backends);
    println!("failed calls: {}", failed.load(Ordering::Relaxed));
    Ok(())
}

fn print_shares(label: &str, from: &[u64], to: &[u64], backends: &[Backend]) {
    let calls: Vec<u64> = from.iter().zip(to).map(|(a, b)| b - a).collect();
    let total = calls.iter().sum::<u64>().max(1);
    let shares: Vec<String> = backends
        .iter()
        .zip(&calls)
        .map(|(b, n)| {
            format!(
                "{} {:5.1} %",
                b.server_id(),
                100.0 * *n as f64 / total as f64
            )
        })
        .collect();
    println!("{label:>6}: {} ({total} calls)", shares.join("   "));
}
