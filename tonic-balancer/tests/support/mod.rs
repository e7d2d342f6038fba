//! Shared set-up for the integration tests: loopback fleets, clients, waits.
#![allow(dead_code, unreachable_pub)]

#[cfg(feature = "opentelemetry")]
pub mod otel;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tonic::Status;
use tonic_balancer::{BalancedChannel, ConnectionBackoff, ConnectivityState};
use tonic_balancer_testkit::pb::SimpleRequest;
use tonic_balancer_testkit::pb::test_service_client::TestServiceClient;
use tonic_balancer_testkit::{Backend, Latency};

pub type Client = TestServiceClient<BalancedChannel>;

/// Fails the test instead of hanging it: every test body runs under this.
pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test timed out")
}

/// Backends named b0, b1, ... on 127.0.0.1, each with the given latency.
pub async fn fleet(n: usize, latency: Latency) -> Vec<Backend> {
    let mut backends = Vec::with_capacity(n);
    for i in 0..n {
        let backend = Backend::builder(format!("b{i}"))
            .latency(latency.clone())
            .seed(i as u64)
            .start()
            .await
            .expect("start backend");
        backends.push(backend);
    }
    backends
}

/// `ipv4:a,b,...` for these addresses.
pub fn target(addrs: impl IntoIterator<Item = SocketAddr>) -> String {
    let list: Vec<String> = addrs.into_iter().map(|a| a.to_string()).collect();
    format!("ipv4:{}", list.join(","))
}

/// A loopback address nothing listens on: connecting to it is refused.
pub fn refused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr")
}

/// Reconnection fast enough for tests.
pub fn fast_backoff() -> ConnectionBackoff {
    let mut backoff = ConnectionBackoff::default();
    backoff.base_delay = Duration::from_millis(20);
    backoff.max_delay = Duration::from_millis(200);
    backoff
}

/// Waits until exactly `n` subchannels are READY.
pub async fn wait_ready(channel: &BalancedChannel, n: usize) {
    channel
        .wait_for(|subs| {
            subs.iter()
                .filter(|s| s.state == ConnectivityState::Ready)
                .count()
                == n
        })
        .await;
}

/// One UnaryCall; returns the id of the backend that served it.
pub async fn call(client: &mut Client) -> Result<String, Status> {
    let request = SimpleRequest {
        fill_server_id: true,
        ..Default::default()
    };
    let response = client.unary_call(request).await?;
    Ok(response.into_inner().server_id)
}

/// Calls served per backend id over `n` sequential calls; panics on any failure.
pub async fn shares(client: &mut Client, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..n {
        let id = call(client).await.expect("call failed");
        *counts.entry(id).or_default() += 1;
    }
    counts
}

/// Advances paused time a second at a time, for at most `limit`, until the channel is
/// IDLE; returns how long that took.
pub async fn advance_until_idle(channel: &BalancedChannel, limit: Duration) -> Option<Duration> {
    let start = tokio::time::Instant::now();
    while start.elapsed() < limit {
        if channel.state() == ConnectivityState::Idle {
            return Some(start.elapsed());
        }
        // A sleep, not `advance` and yields: the runtime then polls its timer driver,
        // so the control task's idle check fires at its own instant (timers fire in
        // order), where yields could leave the driver unpolled for several seconds of
        // advanced time and the check would run late.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    (channel.state() == ConnectivityState::Idle).then(|| start.elapsed())
}
