//! Golden signals and traces without OpenTelemetry: Prometheus metrics (through the
//! `metrics` facade) on a loopback port, the crate's `tracing` spans on stdout, and the
//! in-process stats snapshot.
//!
//! Trace context for calls (W3C `traceparent` per attempt, spans with parent links)
//! comes with the `opentelemetry` feature: see `examples/opentelemetry.rs`.
//!
//! Run with `cargo run --example observability --features metrics`.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic_balancer::BalancedChannel;
use tonic_balancer_testkit::Backend;
use tonic_balancer_testkit::pb::SimpleRequest;
use tonic_balancer_testkit::pb::test_service_client::TestServiceClient;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Spans and events as text on stdout; this crate's spans are at DEBUG.
    tracing_subscriber::fmt()
        .with_env_filter("tonic_balancer=debug,observability=info")
        .with_target(false)
        .init();

    // Prometheus exposition on a loopback port picked for us.
    let metrics_addr = free_loopback_port()?;
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(metrics_addr)
        .install()?;

    let backends = [
        Backend::start("alpha").await?,
        Backend::start("beta").await?,
    ];
    backends[1].set_failure(0.3, Code::Unavailable);
    let target = format!("ipv4:{},{}", backends[0].addr(), backends[1].addr());
    let channel = BalancedChannel::builder(&target).build()?;

    let mut client = TestServiceClient::new(channel.clone());
    let mut failed = 0;
    for _ in 0..20 {
        if client.unary_call(SimpleRequest::default()).await.is_err() {
            failed += 1;
        }
    }
    tracing::info!(failed, "20 calls made");

    println!("\n--- BalancedChannel::stats() ---");
    let stats = channel.stats();
    for m in &stats.methods {
        println!(
            "{}: {} calls, error rate {:.0} %, errors {:?}, latency {:?}, in flight {}",
            m.method,
            m.calls,
            m.error_rate * 100.0,
            m.errors,
            m.latency.map(|l| (l.p50, l.p95, l.p99)),
            m.in_flight
        );
    }
    for e in &stats.endpoints {
        println!(
            "{} {}: {} calls, {} errors, {} in flight",
            e.address, e.state, e.calls, e.errors, e.in_flight
        );
    }

    println!("\n--- scrape of http://{metrics_addr}/metrics (grpc_client_* lines) ---");
    let scrape = scrape(metrics_addr).await?;
    for line in scrape
        .lines()
        .filter(|l| l.starts_with("grpc_client_") && !l.contains("_bucket"))
    {
        println!("{line}");
    }
    Ok(())
}

fn free_loopback_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// A plain HTTP/1.0 GET of the exporter's page.
async fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut last_error = None;
    // The exporter's listener starts in the background: try a few times.
    for _ in 0..50 {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(mut stream) => {
                stream
                    .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                    .await?;
                let mut body = String::new();
                stream.read_to_string(&mut body).await?;
                return Ok(body);
            }
            Err(error) => {
                last_error = Some(error);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("exporter did not start")))
}
