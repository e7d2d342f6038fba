//! Chaos soak: many concurrent calls (unary and server streaming; plain, with a retry
//! policy, with hedging) while backends are killed and restarted, flip health, freeze
//! (a grpcio peer under SIGSTOP), and a raw h2 server refuses streams and sends GOAWAY.
//!
//! Checks: every call ends with a status (none outlives its deadline by more than a
//! generous margin), nothing panics, in-flight counts return to 0, memory stays bounded.
//! It prints its figures (calls, each status code's count, peak RSS) for the README.
//!
//! Runs `TONIC_BALANCER_CHAOS_SECS` seconds (default 20, what CI runs; set it higher
//! for a longer soak). Every load loop is bounded in time and in count.

mod support;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic_balancer::health::OutlierDetection;
use tonic_balancer::{BalancedChannel, ConnectivityState};
use tonic_balancer_testkit::pb::test_service_client::TestServiceClient;
use tonic_balancer_testkit::pb::{
    Empty, ResponseParameters, SimpleRequest, StreamingOutputCallRequest,
};
use tonic_balancer_testkit::python::PythonPeer;
use tonic_balancer_testkit::{Backend, Latency};

/// Calls per worker at most, whatever the duration.
const MAX_CALLS_PER_WORKER: u64 = 200_000;
const WORKERS: usize = 12;
/// Each call's deadline.
const CALL_DEADLINE: Duration = Duration::from_secs(2);
/// A call still running this long after its deadline counts as hung (generous: a slow
/// machine must not fail the test, a call that never ends must).
const HUNG_AFTER: Duration = Duration::from_secs(30);
/// How long the grpcio peer stays frozen each time.
const FREEZE: Duration = Duration::from_millis(2500);
/// Peak resident memory allowed for the whole test process (client, tonic backends, h2
/// server): far above what it needs, far below what a leak per call would reach.
const MAX_HWM_KIB: u64 = 1024 * 1024;

fn soak_time() -> Duration {
    let secs = std::env::var("TONIC_BALANCER_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    Duration::from_secs(secs)
}

/// A field of /proc/self/status, in KiB.
fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

// === the raw h2 server ===

/// A gRPC server written on h2 directly: answers every call OK with one empty message
/// (any request type decodes an empty message as its default), reports SERVING on
/// health Watch, refuses every 7th stream with REFUSED_STREAM and sends GOAWAY after
/// every 40th stream of a connection.
async fn start_h2_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve_h2(socket));
        }
    });
    addr
}

/// Streams the h2 server refused, and GOAWAYs it sent.
static REFUSED: AtomicU64 = AtomicU64::new(0);
static GOAWAYS: AtomicU64 = AtomicU64::new(0);

async fn serve_h2(socket: tokio::net::TcpStream) {
    let Ok(mut conn) = h2::server::handshake(socket).await else {
        return;
    };
    let mut streams = 0u64;
    while let Some(Ok((request, mut respond))) = conn.accept().await {
        streams += 1;
        if streams.is_multiple_of(7) {
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            REFUSED.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if streams.is_multiple_of(40) {
            conn.graceful_shutdown();
            GOAWAYS.fetch_add(1, Ordering::Relaxed);
        }
        tokio::spawn(async move {
            let watch = request.uri().path() == "/grpc.health.v1.Health/Watch";
            let mut body = request.into_body();
            if !watch {
                while let Some(Ok(chunk)) = body.data().await {
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
            }
            let response = http::Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .body(())
                .unwrap();
            let Ok(mut send) = respond.send_response(response, false) else {
                return;
            };
            if watch {
                // status: SERVING (field 1 = 1), then hold the stream open.
                let _ = send.send_data(Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0x01]), false);
                let _ = std::future::poll_fn(|cx| send.poll_reset(cx)).await;
                return;
            }
            let _ = send.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), false);
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let _ = send.send_trailers(trailers);
        });
    }
}

// === load ===

#[derive(Default)]
struct Tally {
    calls: u64,
    codes: BTreeMap<String, u64>,
    hung: u64,
    by_kind: BTreeMap<&'static str, u64>,
    /// Failed calls by channel and code.
    failures: BTreeMap<(&'static str, String), u64>,
}

async fn one_call(client: &mut Client, kind: u32) -> Result<(), tonic::Status> {
    match kind {
        0 => {
            let mut request = tonic::Request::new(SimpleRequest {
                fill_server_id: true,
                ..Default::default()
            });
            request.set_timeout(CALL_DEADLINE);
            client.unary_call(request).await.map(drop)
        }
        1 => {
            let mut request = tonic::Request::new(Empty {});
            request.set_timeout(CALL_DEADLINE);
            client.empty_call(request).await.map(drop)
        }
        _ => {
            let mut request = tonic::Request::new(StreamingOutputCallRequest {
                response_parameters: vec![
                    ResponseParameters {
                        size: 10,
                        interval_us: 1000,
                    };
                    3
                ],
                ..Default::default()
            });
            request.set_timeout(CALL_DEADLINE);
            let mut stream = client.streaming_output_call(request).await?.into_inner();
            while stream.message().await?.is_some() {}
            Ok(())
        }
    }
}

async fn worker(
    channels: Vec<(&'static str, BalancedChannel)>,
    seed: u64,
    until: Instant,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut clients: Vec<(&'static str, Client)> = channels
        .into_iter()
        .map(|(name, channel)| (name, TestServiceClient::new(channel)))
        .collect();
    for _ in 0..MAX_CALLS_PER_WORKER {
        if stop.load(Ordering::Relaxed) || Instant::now() >= until {
            break;
        }
        let which = rng.random_range(0..clients.len());
        let kind = rng.random_range(0..3u32);
        let (name, client) = &mut clients[which];
        let outcome =
            tokio::time::timeout(CALL_DEADLINE + HUNG_AFTER, one_call(client, kind)).await;
        let mut tally = tally.lock().unwrap();
        tally.calls += 1;
        *tally.by_kind.entry(*name).or_default() += 1;
        match outcome {
            Ok(Ok(())) => *tally.codes.entry("OK".into()).or_default() += 1,
            Ok(Err(status)) => {
                let code = format!("{:?}", status.code());
                *tally.failures.entry((*name, code.clone())).or_default() += 1;
                *tally.codes.entry(code).or_default() += 1;
            }
            Err(_) => tally.hung += 1,
        }
    }
}

// === faults ===

/// What the chaos driver can break, and how to put it all back.
struct Faults {
    backends: Vec<Backend>,
    peer: Option<PythonPeer>,
    /// Since when the peer has been frozen, if it is.
    frozen: Option<Instant>,
}

impl Faults {
    fn signal(&mut self, signal: &str) {
        if let Some(peer) = &self.peer {
            let status = std::process::Command::new("kill")
                .args([signal, &peer.pid().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill {signal} failed");
            self.frozen = (signal == "-STOP").then(Instant::now);
        }
    }

    async fn act(&mut self, rng: &mut SmallRng, counts: &mut BTreeMap<&'static str, u64>) {
        // A freeze lasts FREEZE, longer than a call's deadline: calls caught on the
        // frozen peer must end by their deadline, not by the thaw.
        if self.frozen.is_some_and(|since| since.elapsed() >= FREEZE) {
            self.signal("-CONT");
            *counts.entry("thaw").or_default() += 1;
            return;
        }
        let i = rng.random_range(0..self.backends.len());
        let backend = &self.backends[i];
        let action = match rng.random_range(0..6u32) {
            0 | 1 if backend.is_running() && self.running() > 1 => {
                backend.kill().await;
                "kill"
            }
            0 | 1 if !backend.is_running() => {
                backend.restart().await.expect("restart");
                "restart"
            }
            2 | 3 => {
                backend.set_serving(rng.random_bool(0.5));
                "health flip"
            }
            4 if self.peer.is_some() && self.frozen.is_none() => {
                self.signal("-STOP");
                "freeze"
            }
            _ => return,
        };
        *counts.entry(action).or_default() += 1;
    }

    fn running(&self) -> usize {
        self.backends.iter().filter(|b| b.is_running()).count()
    }

    async fn restore(&mut self) {
        for backend in &self.backends {
            if !backend.is_running() {
                backend.restart().await.expect("restart");
            }
            backend.set_serving(true);
        }
        if self.frozen.is_some() {
            self.signal("-CONT");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak() {
    let soak = soak_time();
    let rss_start = proc_status_kib("VmRSS:");
    let mut backends = Vec::new();
    for i in 0..4 {
        let backend = Backend::builder(format!("b{i}"))
            .latency(Latency::Fixed(Duration::from_millis(2)))
            .seed(i)
            .start()
            .await
            .unwrap();
        backends.push(backend);
    }
    let h2_addr = start_h2_server().await;
    let peer = tokio::task::spawn_blocking(|| PythonPeer::start("py"))
        .await
        .expect("python peer");
    let mut addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    addrs.push(h2_addr);
    addrs.push(peer.addr());
    let target = target(addrs.iter().copied());

    let retry = r#"{"methodConfig": [{"name": [{}],
        "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.01s", "maxBackoff": "0.2s",
          "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}],
        "retryThrottling": {"maxTokens": 100, "tokenRatio": 0.5}}"#;
    let hedge = r#"{"methodConfig": [{"name": [{}],
        "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.05s",
          "nonFatalStatusCodes": ["UNAVAILABLE"]}}]}"#;
    let mut outliers = OutlierDetection::default();
    outliers.interval = Duration::from_secs(1);
    outliers.base_ejection_time = Duration::from_millis(500);
    let build = |config: Option<&str>, health: bool| {
        let mut builder = BalancedChannel::builder(&target)
            .connection_backoff(fast_backoff())
            .outlier_detection(outliers.clone());
        if health {
            builder = builder.health_check("");
        }
        if let Some(config) = config {
            builder = builder.service_config_json(config).unwrap();
        }
        builder.build().unwrap()
    };
    let channels = vec![
        ("plain", build(None, false)),
        ("health", build(None, true)),
        ("retry", build(Some(retry), true)),
        ("hedge", build(Some(hedge), false)),
    ];
    for (_, channel) in &channels {
        within(channel.wait_for(|subs| {
            subs.iter()
                .filter(|s| s.state == ConnectivityState::Ready)
                .count()
                == addrs.len()
        }))
        .await;
    }

    let started = Instant::now();
    let until = started + soak;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|i| {
            tokio::spawn(worker(
                channels.clone(),
                i as u64,
                until,
                stop.clone(),
                tally.clone(),
            ))
        })
        .collect();

    // The chaos driver: one fault every 150 ms, paced by the clock (this paces fault
    // injection; nothing waits on it to synchronise).
    let mut faults = Faults {
        backends,
        peer: Some(peer),
        frozen: None,
    };
    let mut rng = SmallRng::seed_from_u64(42);
    let mut actions = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(150));
    while Instant::now() < until {
        tick.tick().await;
        faults.act(&mut rng, &mut actions).await;
    }
    faults.restore().await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("a load worker panicked");
    }
    let elapsed = started.elapsed();

    // Every call has ended: nothing may still count as in flight, anywhere.
    for (name, channel) in &channels {
        tokio::time::timeout(
            HUNG_AFTER,
            channel.wait_for(|subs| subs.iter().all(|s| s.in_flight == 0)),
        )
        .await
        .unwrap_or_else(|_| panic!("{name}: calls still in flight: {:?}", channel.subchannels()));
        let stats = channel.stats();
        for method in &stats.methods {
            assert_eq!(method.in_flight, 0, "{name}: {method:?}");
        }
        for endpoint in &stats.endpoints {
            assert_eq!(endpoint.in_flight, 0, "{name}: {endpoint:?}");
        }
    }

    let tally = tally.lock().unwrap();
    let hwm = proc_status_kib("VmHWM:");
    let rss_end = proc_status_kib("VmRSS:");
    println!(
        "chaos soak: {:.1} s, {} workers",
        elapsed.as_secs_f64(),
        WORKERS
    );
    println!(
        "calls: {} ({:.0}/s)",
        tally.calls,
        tally.calls as f64 / elapsed.as_secs_f64()
    );
    println!("calls per channel: {:?}", tally.by_kind);
    println!("status codes: {:?}", tally.codes);
    println!("failures by channel: {:?}", tally.failures);
    println!(
        "faults injected: {actions:?}; h2 server: {} streams refused, {} GOAWAYs",
        REFUSED.load(Ordering::Relaxed),
        GOAWAYS.load(Ordering::Relaxed)
    );
    println!(
        "memory: VmRSS {} MiB at start, {} MiB at end; VmHWM {} MiB",
        rss_start / 1024,
        rss_end / 1024,
        hwm / 1024
    );
    assert_eq!(tally.hung, 0, "calls that never ended");
    assert!(tally.calls > 0);
    assert!(
        tally.codes.get("OK").copied().unwrap_or(0) > 0,
        "no call succeeded"
    );
    // The only codes a fault may produce.
    for code in tally.codes.keys() {
        assert!(
            [
                "OK",
                "Unavailable",
                "DeadlineExceeded",
                "Cancelled",
                "Unknown",
                "Internal"
            ]
            .contains(&code.as_str()),
            "unexpected status code {code}: {:?}",
            tally.codes
        );
    }
    assert!(hwm < MAX_HWM_KIB, "peak RSS {hwm} KiB");
    assert!(REFUSED.load(Ordering::Relaxed) > 0 && GOAWAYS.load(Ordering::Relaxed) > 0);
}
