//! A rolling restart with no failed calls: three backends restarted one by one while
//! calls run at 500 per second.
//!
//! Each backend stops the way `health::GracefulShutdown` makes a tonic server stop:
//! report NOT_SERVING, keep serving while clients watching health move away, then stop
//! accepting and finish what is in flight. The client watches health, and retries the
//! rare call that races the switch.
//!
//! Run with `cargo run --example rolling_restart`.

use std::time::Duration;
use tokio::time::Instant;
use tonic_balancer::{BalancedChannel, ConnectionBackoff, ConnectivityState};
use tonic_balancer_testkit::Backend;
use tonic_balancer_testkit::pb::SimpleRequest;
use tonic_balancer_testkit::pb::test_service_client::TestServiceClient;

const RETRY_UNAVAILABLE: &str = r#"{"methodConfig": [{"name": [{}],
  "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.1s",
                  "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut backends = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        backends.push(Backend::start(name).await?);
    }
    let addrs: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    let mut reconnect = ConnectionBackoff::default();
    reconnect.base_delay = Duration::from_millis(50);
    let channel = BalancedChannel::builder(&format!("ipv4:{}", addrs.join(",")))
        .health_check("")
        .service_config_json(RETRY_UNAVAILABLE)?
        .connection_backoff(reconnect)
        .build()?;
    let all_ready = |subs: &[tonic_balancer::SubchannelInfo]| {
        subs.len() == 3 && subs.iter().all(|s| s.state == ConnectivityState::Ready)
    };
    channel.wait_for(all_ready).await;

    // 500 calls per second for 8 seconds.
    let client = TestServiceClient::new(channel.clone());
    let load = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        let mut calls = Vec::new();
        for _ in 0..4000 {
            tick.tick().await;
            let mut client = client.clone();
            calls.push(tokio::spawn(async move {
                client.unary_call(SimpleRequest::default()).await.is_ok()
            }));
        }
        let mut failed = 0;
        for call in calls {
            if !call.await.unwrap_or(false) {
                failed += 1;
            }
        }
        failed
    });

    let started = Instant::now();
    for backend in &backends {
        backend.stop_gracefully(Duration::from_millis(500)).await;
        println!(
            "{:>5.1}s  {} stopped gracefully",
            started.elapsed().as_secs_f64(),
            backend.server_id()
        );
        backend.restart().await?;
        channel.wait_for(all_ready).await;
        println!(
            "{:>5.1}s  {} back and READY",
            started.elapsed().as_secs_f64(),
            backend.server_id()
        );
    }
    let failed = load.await?;
    println!("4000 calls during the restarts, {failed} failed");
    for backend in &backends {
        println!("  {} served {} calls", backend.server_id(), backend.calls());
    }
    Ok(())
}
