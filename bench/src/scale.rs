//! The `scale` scenario: one channel over N endpoints, then an update that replaces half
//! of them while calls keep going.
//!
//! The fleet runs in child processes (this binary with `--serve-fleet`): a process may
//! hold at most 20 000 open files here, and N client connections plus N server ones would
//! not fit in one. Each child has one test-kit backend on `0.0.0.0:port`, which takes
//! two descriptors per connection (one kept to cut it), so an update that briefly holds
//! 1.5 N connections is spread over one child per 3 000 of them. The channel's N
//! addresses are distinct loopback IPs (127.0.0.1, 127.0.0.2, ...) on the children's
//! ports in turn, so each is a separate subchannel with its own connection, and all
//! traffic stays on loopback.
//!
//! Reported, from one run:
//! - the time until all N are READY, and the client's resident memory per READY
//!   endpoint (RSS after minus before, over N);
//! - for the update of half the set: the time until the channel shows the new set
//!   (applied), and until every new address is READY;
//! - the latency of the calls made during the update (max, p99, p50) next to those made
//!   before it, and failed calls;
//! - the pick cost of each P2C policy over N synthetic READY entries.
//!
//! `SCALE_CONNECTS=n` sets the channel's `max_concurrent_connects` (default 64), to
//! compare how the connection wave meets the calls.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tonic_balancer::balance::{ReadySet, ReadySubchannel};
use tonic_balancer::load::{CallGuard, Load};
use tonic_balancer::resolver::Manual;
use tonic_balancer::{BalancedChannel, ConnectivityState, Policy};
use tonic_balancer_testkit::Backend;
use tonic_balancer_testkit::pb::SimpleRequest;
use tonic_balancer_testkit::pb::test_service_client::TestServiceClient;

/// What one run of the scenario measured.
#[derive(Debug, Serialize)]
pub struct ScaleResult {
    /// Endpoints in the channel.
    pub endpoints: usize,
    /// From building the channel to every endpoint READY, in ms.
    pub all_ready_ms: f64,
    /// Client resident memory per READY endpoint, in KiB (`None` where not measurable).
    pub client_kib_per_endpoint: Option<f64>,
    /// The update that replaces half the set: until the channel lists the new set, ms.
    pub update_applied_ms: f64,
    /// Until every new endpoint is READY, ms.
    pub update_ready_ms: f64,
    /// Calls before the update (steady state).
    pub before: Tail,
    /// Calls that started during the update (until every new endpoint was READY).
    pub during: Tail,
    /// Calls that failed, in all.
    pub failed_calls: u64,
    /// The most a 1 ms timer on the callers' runtime fired late before the update, ms.
    pub runtime_lag_before_ms: f64,
    /// The same during the update.
    pub runtime_lag_during_ms: f64,
    /// Pick plus completion, ns, for each policy over `endpoints` READY entries.
    pub pick_ns: Vec<(String, f64)>,
}

/// A latency tail, in ms.
#[derive(Debug, Serialize)]
pub struct Tail {
    pub calls: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Tail {
    fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            calls: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.5)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// Serves the fleet for `--serve-fleet`: one backend on `0.0.0.0`, its port printed on
/// stdout, until stdin closes.
pub async fn serve_fleet() -> Result<(), Box<dyn std::error::Error>> {
    let backend = Backend::builder("fleet")
        .bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
        .start()
        .await?;
    println!("{}", backend.addr().port());
    std::io::stdout().flush()?;
    // The parent closes our stdin when it is done, or dies: either way, stop.
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    })
    .await?;
    Ok(())
}

/// The fleet's child processes; killed when dropped.
struct Fleet {
    children: Vec<Child>,
    ports: Vec<u16>,
}

impl Fleet {
    /// Enough children for `connections` at once.
    fn start(connections: usize) -> Result<Self, String> {
        let mut fleet = Fleet {
            children: Vec::new(),
            ports: Vec::new(),
        };
        for _ in 0..connections.div_ceil(3_000).max(1) {
            let (child, port) = Self::child()?;
            fleet.children.push(child);
            fleet.ports.push(port);
        }
        Ok(fleet)
    }

    /// The `i`th address of the fleet.
    fn address(&self, i: usize) -> SocketAddr {
        address(i, self.ports[i % self.ports.len()])
    }

    fn child() -> Result<(Child, u16), String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg("--serve-fleet")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the fleet process: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout from the fleet")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let port = line
            .trim()
            .parse()
            .map_err(|_| format!("the fleet process printed {line:?}, not a port"))?;
        Ok((child, port))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in &mut self.children {
            drop(child.stdin.take());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `i`th loopback address on the fleet's port: 127.0.0.1, 127.0.0.2, ..., skipping
/// host parts 0 and 255.
fn address(i: usize, port: u16) -> SocketAddr {
    let i = i as u32;
    let ip = Ipv4Addr::new(
        127,
        (i / (254 * 254)) as u8,
        ((i / 254) % 254) as u8,
        (i % 254 + 1) as u8,
    );
    SocketAddr::from((ip, port))
}

/// Resident set size of this process, in bytes (Linux).
fn rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Runs the scenario over `endpoints` addresses with `concurrency` callers.
pub async fn run(endpoints: usize, concurrency: usize, seed: u64) -> Result<ScaleResult, String> {
    let fleet = Fleet::start(endpoints + endpoints / 2)?;
    let before_rss = rss();
    let (resolver, handle) = Manual::new();
    let mut builder = BalancedChannel::builder_with_resolver(resolver).seed(seed);
    if let Some(connects) = std::env::var("SCALE_CONNECTS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        builder = builder.max_concurrent_connects(connects);
    }
    let channel = builder.build().map_err(|e| e.to_string())?;
    let start = Instant::now();
    handle.update((0..endpoints).map(|i| fleet.address(i)));
    let first: Vec<SocketAddr> = (0..endpoints).map(|i| fleet.address(i)).collect();
    wait_until(&channel, Duration::from_secs(120), move |subs| {
        subs.len() == endpoints && subs.iter().all(|s| s.state == ConnectivityState::Ready)
    })
    .await
    .map_err(|n| format!("only {n} of {endpoints} endpoints READY after 120 s"))?;
    let all_ready_ms = ms(start.elapsed());
    let client_kib_per_endpoint = match (before_rss, rss()) {
        (Some(before), Some(after)) => {
            Some(after.saturating_sub(before) as f64 / 1024.0 / endpoints as f64)
        }
        _ => None,
    };

    // Callers: a closed loop, bounded in time, recording into the phase's histogram.
    let phase = Arc::new(AtomicU64::new(0)); // 0 before, 1 during, 2 after
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let mut callers = Vec::new();
    for _ in 0..concurrency {
        let mut client = TestServiceClient::new(channel.clone());
        let (phase, stop, failed) = (phase.clone(), stop.clone(), failed.clone());
        callers.push(tokio::spawn(async move {
            let mut histograms = [hist(), hist(), hist()];
            let cap = Instant::now() + Duration::from_secs(300);
            while !stop.load(Ordering::Relaxed) && Instant::now() < cap {
                let at = phase.load(Ordering::Relaxed) as usize;
                let began = Instant::now();
                let mut request = tonic::Request::new(SimpleRequest::default());
                request.set_timeout(Duration::from_secs(5));
                if client.unary_call(request).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                let us = began.elapsed().as_micros() as u64;
                let _ = histograms[at].record(us.max(1));
            }
            histograms
        }));
    }
    // How late a 1 ms timer fires, per phase: how long the runtime the calls share was
    // kept from running them (the control task, connection set-up, the OS).
    let lag = {
        let (phase, stop) = (phase.clone(), stop.clone());
        tokio::spawn(async move {
            let mut worst = [Duration::ZERO; 3];
            while !stop.load(Ordering::Relaxed) {
                let at = phase.load(Ordering::Relaxed) as usize;
                let began = Instant::now();
                tokio::time::sleep(Duration::from_millis(1)).await;
                let late = began.elapsed().saturating_sub(Duration::from_millis(1));
                worst[at] = worst[at].max(late);
            }
            worst
        })
    };
    // Steady state first: a second of calls.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Keep the first half, replace the second with as many new addresses.
    let kept = endpoints / 2;
    let next: Vec<SocketAddr> = (0..kept)
        .map(|i| fleet.address(i))
        .chain((endpoints..endpoints + (endpoints - kept)).map(|i| fleet.address(i)))
        .collect();
    let removed: std::collections::HashSet<SocketAddr> = first[kept..].iter().copied().collect();
    phase.store(1, Ordering::Relaxed);
    let update_start = Instant::now();
    handle.update(next.iter().copied());
    let want = next.len();
    wait_until(&channel, Duration::from_secs(60), move |subs| {
        subs.len() == want && subs.iter().all(|s| !removed.contains(&s.address.addr))
    })
    .await
    .map_err(|_| "the update was not applied within 60 s".to_owned())?;
    let update_applied_ms = ms(update_start.elapsed());
    wait_until(&channel, Duration::from_secs(120), move |subs| {
        subs.len() == want && subs.iter().all(|s| s.state == ConnectivityState::Ready)
    })
    .await
    .map_err(|n| format!("only {n} of {want} endpoints READY after the update"))?;
    let update_ready_ms = ms(update_start.elapsed());
    phase.store(2, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let lag = lag.await.map_err(|e| e.to_string())?;
    let (mut before, mut during) = (hist(), hist());
    for caller in callers {
        let [b, d, _] = caller.await.map_err(|e| e.to_string())?;
        before.add(&b).map_err(|e| e.to_string())?;
        during.add(&d).map_err(|e| e.to_string())?;
    }
    drop(channel);
    drop(fleet);
    Ok(ScaleResult {
        endpoints,
        all_ready_ms,
        client_kib_per_endpoint,
        update_applied_ms,
        update_ready_ms,
        before: Tail::of(&before),
        during: Tail::of(&during),
        failed_calls: failed.load(Ordering::Relaxed),
        runtime_lag_before_ms: ms(lag[0]),
        runtime_lag_during_ms: ms(lag[1]),
        pick_ns: pick_cost(endpoints),
    })
}

/// Waits until `done` holds for the channel's subchannels, or `limit` passes (then
/// returns how many were READY). It looks every 2 ms from a thread of its own, not on
/// every publish from the runtime: listing 10 000 subchannels costs about a millisecond,
/// and doing that on each of hundreds of publishes would take the runtime's time from
/// the very calls being measured.
async fn wait_until<F>(channel: &BalancedChannel, limit: Duration, mut done: F) -> Result<(), usize>
where
    F: FnMut(&[tonic_balancer::SubchannelInfo]) -> bool + Send + 'static,
{
    let channel = channel.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime");
        let outcome = runtime.block_on(async {
            let deadline = Instant::now() + limit;
            loop {
                let subs = channel.subchannels();
                if done(&subs) {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    if let Some(s) = subs.iter().find(|s| s.state != ConnectivityState::Ready) {
                        eprintln!("not READY: {} ({})", s.address.addr, s.state);
                    }
                    return Err(subs
                        .iter()
                        .filter(|s| s.state == ConnectivityState::Ready)
                        .count());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        let _ = tx.send(outcome);
    });
    rx.await.unwrap_or(Err(0))
}

/// Pick plus completion over `n` synthetic READY entries, ns per pick.
fn pick_cost(n: usize) -> Vec<(String, f64)> {
    let ready: ReadySet = (0..n)
        .map(|i| ReadySubchannel::new(address(i, 1).into(), Arc::new(Load::new())))
        .collect();
    let mut out = Vec::new();
    for (name, policy) in [
        ("round_robin", Policy::round_robin()),
        ("least_request", Policy::least_request()),
        ("peak_ewma", Policy::peak_ewma()),
    ] {
        let picker = policy.picker(1);
        let picks = 1_000_000u32;
        let start = Instant::now();
        for _ in 0..picks {
            let i = picker.pick(&ready) % n;
            drop(std::hint::black_box(CallGuard::new(
                ready[i].load().clone(),
            )));
        }
        out.push((
            name.to_owned(),
            start.elapsed().as_nanos() as f64 / f64::from(picks),
        ));
    }
    out
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The scenario's table.
pub fn render(result: &ScaleResult) -> String {
    let mut out = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(out, "\n== scale: {} endpoints ==", result.endpoints);
    let _ = writeln!(
        out,
        "all READY                 {:>10.0} ms",
        result.all_ready_ms
    );
    if let Some(kib) = result.client_kib_per_endpoint {
        let _ = writeln!(out, "client memory per endpoint {:>9.1} KiB", kib);
    }
    let _ = writeln!(
        out,
        "update of half: applied   {:>10.1} ms",
        result.update_applied_ms
    );
    let _ = writeln!(
        out,
        "update of half: all READY {:>10.0} ms",
        result.update_ready_ms
    );
    for (name, tail) in [("before", &result.before), ("during", &result.during)] {
        let _ = writeln!(
            out,
            "calls {name:6}  {:>7} calls  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
            tail.calls, tail.p50_ms, tail.p99_ms, tail.max_ms
        );
    }
    let _ = writeln!(out, "failed calls              {:>10}", result.failed_calls);
    let _ = writeln!(
        out,
        "runtime lag (1 ms timer)  before {:.1} ms, during {:.1} ms",
        result.runtime_lag_before_ms, result.runtime_lag_during_ms
    );
    for (name, ns) in &result.pick_ns {
        let _ = writeln!(out, "pick+completion {name:14} {ns:>6.0} ns");
    }
    out
}
