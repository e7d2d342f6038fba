//! The policy benchmark's core: fleets, load generators and measurements behind
//! `cargo run --release --example bench`.
//!
//! Each [`Scenario`] builds a fleet of in-process [`Backend`]s with a latency shape and
//! timed faults, then runs the same load against each [`Arm`] in turn: this crate's
//! policies, tonic's own `Channel::balance_list`, and a plain tonic `Channel` to one
//! backend (`direct`, overhead scenario only). Arms run one after another on the same
//! backends with the same seed; the fleet is restored between arms.
//!
//! Open-loop load issues calls on a fixed schedule whether or not earlier ones returned,
//! and measures each call from its *scheduled* start, so a stalled client cannot hide
//! its own stall (no coordinated omission). Closed-loop load keeps a fixed number of
//! calls outstanding. Latencies go into HDR histograms (µs resolution).
//!
//! Latencies are tokio timers, which have millisecond resolution: sub-millisecond
//! service times round up to the next millisecond tick.

mod report;
mod results;
mod subsetting;

pub mod scale;

pub use report::render_html;
pub use results::{ArmResult, Overhead, Percentiles, ScenarioResult, Spread, SubsettingFigures};

use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_balancer::resolver::Target;
use tonic_balancer::stats::code_name;
use tonic_balancer::{BalancedChannel, ConnectivityState, Policy};
use tonic_balancer_testkit::pb::SimpleRequest;
use tonic_balancer_testkit::pb::test_service_client::TestServiceClient;
use tonic_balancer_testkit::{Backend, Latency};

/// A benchmark scenario (see BENCH.md for what each shows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scenario {
    /// 10 backends, log-normal latency (median 5 ms); open loop.
    Healthy,
    /// As `Healthy`, one backend ten times slower.
    OneSlow,
    /// tower's p2c benchmark (PR #76): uniform latencies up to 1 ms, 10 ms, 100 ms, 1 s;
    /// closed loop, 50 outstanding.
    Tower76,
    /// Linkerd's 2016 benchmark: 11 backends around 167 ms, one pinned at 2 s for the
    /// middle half of the run; 1 s deadline.
    Linkerd2016,
    /// 5 backends; one killed at 1/3 of the run and restarted at 2/3.
    KillOne,
    /// 5 backends all answering UNAVAILABLE for the middle third.
    Outage,
    /// 1 backend, no added latency, closed loop: the cost of the balancer itself.
    Overhead,
    /// gRFC A68 random subsetting's spread of connections and load (1 000 clients ×
    /// 100 servers, subset 10, simulated; then real channels over real backends),
    /// against deterministic subsetting. Ignores `--arms`.
    Subsetting,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 8] = [
        Scenario::Healthy,
        Scenario::OneSlow,
        Scenario::Tower76,
        Scenario::Linkerd2016,
        Scenario::KillOne,
        Scenario::Outage,
        Scenario::Overhead,
        Scenario::Subsetting,
    ];

    /// The default suite: about a minute in all with [`Size::Quick`].
    pub const QUICK_SUITE: [Scenario; 3] =
        [Scenario::OneSlow, Scenario::KillOne, Scenario::Overhead];

    /// The scenario's name on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Healthy => "healthy",
            Scenario::OneSlow => "one-slow",
            Scenario::Tower76 => "tower-76",
            Scenario::Linkerd2016 => "linkerd-2016",
            Scenario::KillOne => "kill-one",
            Scenario::Outage => "outage",
            Scenario::Overhead => "overhead",
            Scenario::Subsetting => subsetting::NAME,
        }
    }

    /// The scenario of this name.
    pub fn parse(name: &str) -> Option<Scenario> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// What carries the calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Arm {
    /// [`BalancedChannel`] with [`Policy::round_robin`].
    RoundRobin,
    /// [`BalancedChannel`] with [`Policy::least_request`].
    LeastRequest,
    /// [`BalancedChannel`] with [`Policy::peak_ewma`].
    PeakEwma,
    /// [`BalancedChannel`] with [`Policy::pick_first`].
    PickFirst,
    /// tonic's `Channel::balance_list` over the same addresses.
    TonicBalance,
    /// One plain tonic `Channel` to the first backend.
    Direct,
    /// round_robin with [`DEFAULT_RETRY_CONFIG`] (kill-one, linkerd-2016, outage only).
    RoundRobinRetry,
    /// peak_ewma with [`DEFAULT_RETRY_CONFIG`] (kill-one, linkerd-2016, outage only).
    PeakEwmaRetry,
    /// peak_ewma with [`DEFAULT_HEDGE_CONFIG`] (linkerd-2016 only).
    PeakEwmaHedge,
}

/// The retry policy the `+retry` arms use, and this crate's suggested starting point:
/// up to 3 attempts on UNAVAILABLE with 10 ms × 2 backoff (capped at 100 ms), and
/// gRPC's throttling so that a fleet-wide outage does not multiply load.
pub const DEFAULT_RETRY_CONFIG: &str = r#"{
  "methodConfig": [{"name": [{}],
    "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.1s",
                    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}],
  "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}
}"#;

/// The hedging policy of the `+hedge` arm: a second attempt 200 ms after the first
/// (above the linkerd-2016 fleet's normal p99.9 of about 185 ms), throttled likewise.
pub const DEFAULT_HEDGE_CONFIG: &str = r#"{
  "methodConfig": [{"name": [{}],
    "hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "0.2s",
                      "nonFatalStatusCodes": ["UNAVAILABLE"]}}],
  "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}
}"#;

impl Arm {
    /// Every arm.
    pub const ALL: [Arm; 9] = [
        Arm::RoundRobin,
        Arm::LeastRequest,
        Arm::PeakEwma,
        Arm::PickFirst,
        Arm::TonicBalance,
        Arm::Direct,
        Arm::RoundRobinRetry,
        Arm::PeakEwmaRetry,
        Arm::PeakEwmaHedge,
    ];

    /// Whether the arm runs in a scenario: `direct` needs the single backend of
    /// `overhead`; the retry and hedge arms answer the targets that are about retries.
    pub fn applies_to(self, scenario: Scenario) -> bool {
        match self {
            Arm::Direct => scenario == Scenario::Overhead,
            Arm::RoundRobinRetry | Arm::PeakEwmaRetry => matches!(
                scenario,
                Scenario::KillOne | Scenario::Linkerd2016 | Scenario::Outage
            ),
            Arm::PeakEwmaHedge => scenario == Scenario::Linkerd2016,
            _ => true,
        }
    }

    fn service_config(self) -> Option<&'static str> {
        match self {
            Arm::RoundRobinRetry | Arm::PeakEwmaRetry => Some(DEFAULT_RETRY_CONFIG),
            Arm::PeakEwmaHedge => Some(DEFAULT_HEDGE_CONFIG),
            _ => None,
        }
    }

    /// The arm's name on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Arm::RoundRobin => "round_robin",
            Arm::LeastRequest => "least_request",
            Arm::PeakEwma => "peak_ewma",
            Arm::PickFirst => "pick_first",
            Arm::TonicBalance => "tonic_balance",
            Arm::Direct => "direct",
            Arm::RoundRobinRetry => "round_robin+retry",
            Arm::PeakEwmaRetry => "peak_ewma+retry",
            Arm::PeakEwmaHedge => "peak_ewma+hedge",
        }
    }

    /// The arm of this name.
    pub fn parse(name: &str) -> Option<Arm> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    fn policy(self) -> Option<Policy> {
        match self {
            Arm::RoundRobin | Arm::RoundRobinRetry => Some(Policy::round_robin()),
            Arm::LeastRequest => Some(Policy::least_request()),
            Arm::PeakEwma | Arm::PeakEwmaRetry | Arm::PeakEwmaHedge => Some(Policy::peak_ewma()),
            Arm::PickFirst => Some(Policy::pick_first()),
            Arm::TonicBalance | Arm::Direct => None,
        }
    }
}

/// How big a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// The default suite in about a minute: for CI and the README's first command.
    Quick,
    /// The sizes BENCH.md gives (minutes).
    Full,
}

/// Run-wide settings; `None` fields take the scenario's own value.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Options {
    /// Seeds the fleet's latencies and failures and every channel's picks.
    pub seed: u64,
    /// Quick or full sizes.
    pub size: Size,
    /// Open-loop rate, calls per second.
    pub rps: Option<f64>,
    /// Closed-loop outstanding calls.
    pub concurrency: Option<usize>,
    /// Open-loop duration per arm (closed loops stop at their call count or this).
    pub duration: Option<Duration>,
    /// Closed-loop calls per arm (in `overhead`, per arm and round).
    pub calls: Option<u64>,
    /// `overhead`: how many rounds the arms take turns over.
    pub rounds: Option<usize>,
    /// `overhead`: calls per arm and round at concurrency 1, for the added p50 (0 skips
    /// that run).
    pub single_calls: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            seed: 1,
            size: Size::Quick,
            rps: None,
            concurrency: None,
            duration: None,
            calls: None,
            rounds: None,
            single_calls: None,
        }
    }
}

/// Told about progress as a run goes (for a progress bar).
pub trait Progress: Send + Sync {
    /// An arm starts and will issue about this many calls.
    fn arm_started(&self, scenario: &str, arm: &str, expected_calls: u64);
    /// One call ended.
    fn call_done(&self);
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn arm_started(&self, _: &str, _: &str, _: u64) {}
    fn call_done(&self) {}
}

// === scenario plans ===

#[derive(Clone, Copy, Debug)]
enum Load {
    Open {
        rps: f64,
        duration: Duration,
    },
    Closed {
        concurrency: usize,
        calls: u64,
        cap: Duration,
    },
}

impl Load {
    fn expected_calls(&self) -> u64 {
        match *self {
            Load::Open { rps, duration } => (rps * duration.as_secs_f64()).round() as u64,
            Load::Closed { calls, .. } => calls,
        }
    }
}

#[derive(Clone, Debug)]
enum Fault {
    Kill(usize),
    Restart(usize),
    Latency(usize, Latency),
    FailAll(bool),
}

struct Plan {
    backends: Vec<(String, Latency)>,
    load: Load,
    deadline: Duration,
    /// Faults at fractions of the run.
    faults: Vec<(f64, Fault)>,
    marked: Option<usize>,
    notes: Vec<String>,
}

const MS: Duration = Duration::from_millis(1);
const SLICES: usize = 20;

fn log_normal(median_ms: u64, sigma: f64) -> Latency {
    Latency::LogNormal {
        median: Duration::from_millis(median_ms),
        sigma,
    }
}

fn uniform_to(max: Duration) -> Latency {
    Latency::Uniform {
        min: Duration::ZERO,
        max,
    }
}

fn plan(scenario: Scenario, options: &Options) -> Plan {
    let full = options.size == Size::Full;
    let secs = |quick: u64, full_secs: u64| {
        options
            .duration
            .unwrap_or(Duration::from_secs(if full { full_secs } else { quick }))
    };
    let open = |rps: f64, quick, full_secs| Load::Open {
        rps: options.rps.unwrap_or(rps),
        duration: secs(quick, full_secs),
    };
    let closed = |concurrency: usize, quick: u64, full_calls: u64| Load::Closed {
        concurrency: options.concurrency.unwrap_or(concurrency),
        calls: options
            .calls
            .unwrap_or(if full { full_calls } else { quick }),
        cap: options.duration.unwrap_or(Duration::from_secs(600)),
    };
    let named = |prefix: &str, n: usize, latency: Latency| -> Vec<(String, Latency)> {
        (0..n)
            .map(|i| (format!("{prefix}{i}"), latency.clone()))
            .collect()
    };
    let sigma_note = "log-normal latency with sigma 0.5 (p99 ≈ 3.2 × median)".to_owned();
    match scenario {
        Scenario::Healthy => Plan {
            backends: named("b", 10, log_normal(5, 0.5)),
            load: open(1000.0, 5, 30),
            deadline: Duration::from_secs(10),
            faults: vec![],
            marked: None,
            notes: vec![sigma_note],
        },
        Scenario::OneSlow => {
            let mut backends = vec![("slow".to_owned(), log_normal(50, 0.5))];
            backends.extend(named("b", 9, log_normal(5, 0.5)));
            Plan {
                backends,
                load: open(1000.0, 5, 30),
                deadline: Duration::from_secs(10),
                faults: vec![],
                marked: Some(0),
                notes: vec![sigma_note, "one backend's median is 50 ms".to_owned()],
            }
        }
        Scenario::Tower76 => {
            let mut backends = vec![("u1ms".to_owned(), uniform_to(MS))];
            backends.extend(named("u10ms-", 4, uniform_to(10 * MS)));
            backends.extend(named("u100ms-", 4, uniform_to(100 * MS)));
            backends.push(("u1s".to_owned(), uniform_to(Duration::from_secs(1))));
            let marked = backends.len() - 1;
            Plan {
                backends,
                load: closed(50, 5_000, 50_000),
                deadline: Duration::from_secs(10),
                faults: vec![],
                marked: Some(marked),
                notes: vec!["latency uniform in [0, max] per backend".to_owned()],
            }
        }
        Scenario::Linkerd2016 => {
            let normal = Latency::Normal {
                mean: 167 * MS,
                std_dev: 5 * MS,
            };
            let mut backends = vec![("pinned".to_owned(), normal.clone())];
            backends.extend(named("b", 10, normal.clone()));
            Plan {
                backends,
                load: open(1000.0, 8, 40),
                deadline: Duration::from_secs(1),
                faults: vec![
                    (
                        0.25,
                        Fault::Latency(0, Latency::Fixed(Duration::from_secs(2))),
                    ),
                    (0.75, Fault::Latency(0, normal)),
                ],
                marked: Some(0),
                notes: vec![
                    "one backend answers in 2 s for the middle half of the run; 1 s deadline"
                        .to_owned(),
                ],
            }
        }
        Scenario::KillOne => Plan {
            backends: {
                let mut b = vec![("killed".to_owned(), log_normal(5, 0.2))];
                b.extend(named("b", 4, log_normal(5, 0.2)));
                b
            },
            load: open(1000.0, 6, 30),
            deadline: Duration::from_secs(10),
            faults: vec![(1.0 / 3.0, Fault::Kill(0)), (2.0 / 3.0, Fault::Restart(0))],
            marked: Some(0),
            notes: vec![
                "one backend is killed (listener and connections closed at once) at 1/3 \
                 of the run and restarted at 2/3"
                    .to_owned(),
            ],
        },
        Scenario::Outage => Plan {
            backends: named("b", 5, log_normal(5, 0.2)),
            load: open(500.0, 6, 30),
            deadline: Duration::from_secs(10),
            faults: vec![
                (1.0 / 3.0, Fault::FailAll(true)),
                (2.0 / 3.0, Fault::FailAll(false)),
            ],
            marked: None,
            notes: vec!["every backend answers UNAVAILABLE for the middle third".to_owned()],
        },
        // Runs its own fleets (see `subsetting`); this plan is never used.
        Scenario::Subsetting => Plan {
            backends: vec![],
            load: closed(1, 0, 0),
            deadline: Duration::from_secs(10),
            faults: vec![],
            marked: None,
            notes: vec![],
        },
        Scenario::Overhead => Plan {
            backends: named("b", 1, Latency::None),
            // Per arm and round; see `run_overhead` for the rounds.
            load: closed(32, 5_000, 30_000),
            deadline: Duration::from_secs(10),
            faults: vec![],
            marked: None,
            notes: vec![],
        },
    }
}

// === running ===

/// Runs one scenario against each arm in turn.
///
/// `direct` runs only in the overhead scenario (it has one backend to talk to); other
/// arms that do not apply are skipped with a note.
///
/// # Errors
/// Starting a backend fails (no loopback port free).
pub async fn run_scenario(
    scenario: Scenario,
    arms: &[Arm],
    options: &Options,
    progress: &dyn Progress,
) -> io::Result<ScenarioResult> {
    if scenario == Scenario::Subsetting {
        return subsetting::run(options, progress).await;
    }
    let mut plan = plan(scenario, options);
    let mut backends = Vec::with_capacity(plan.backends.len());
    for (i, (id, latency)) in plan.backends.iter().enumerate() {
        let backend = Backend::builder(id.clone())
            .latency(latency.clone())
            .seed(options.seed.wrapping_add(i as u64))
            .health(false)
            .start()
            .await?;
        backends.push(backend);
    }
    let backends = Arc::new(backends);
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    if scenario == Scenario::Overhead {
        return Ok(run_overhead(plan, &addrs, arms, options, progress).await);
    }
    let mut results = Vec::new();
    for &arm in arms {
        if !arm.applies_to(scenario) {
            continue;
        }
        let client = match connect(arm, &addrs, options.seed).await {
            Ok(client) => client,
            Err(error) => {
                plan.notes.push(format!("{}: not run: {error}", arm.name()));
                continue;
            }
        };
        progress.arm_started(scenario.name(), arm.name(), plan.load.expected_calls());
        let faults = tokio::spawn(inject(backends.clone(), plan.faults.clone(), plan.load));
        let result = drive(arm, client, plan.load, plan.deadline, progress).await;
        let _ = faults.await;
        restore(&backends, &plan.backends).await?;
        results.push(result);
    }
    if results.iter().any(|r| r.arm.contains('+')) {
        plan.notes.push(
            "+retry arms: DEFAULT_RETRY_CONFIG (3 attempts on UNAVAILABLE, throttled); \
             +hedge: DEFAULT_HEDGE_CONFIG (a hedge after 200 ms)"
                .to_owned(),
        );
    }
    Ok(ScenarioResult {
        scenario: scenario.name().to_owned(),
        seed: options.seed,
        arms: results,
        notes: plan.notes,
        marked_backend: plan.marked.map(|i| plan.backends[i].0.clone()),
    })
}

/// `overhead`: every arm connected once, then rounds in which the arms take turns (see
/// [`Overhead`]). The backend has no faults and no added latency, so nothing needs
/// restoring between runs.
async fn run_overhead(
    mut plan: Plan,
    addrs: &[SocketAddr],
    arms: &[Arm],
    options: &Options,
    progress: &dyn Progress,
) -> ScenarioResult {
    let full = options.size == Size::Full;
    let rounds = options.rounds.unwrap_or(if full { 7 } else { 3 }).max(1);
    let busy = plan.load;
    let (concurrency, calls, cap) = match busy {
        Load::Closed {
            concurrency,
            calls,
            cap,
        } => (concurrency, calls, cap),
        Load::Open { .. } => (1, busy.expected_calls(), Duration::from_secs(600)),
    };
    let single_calls = options.single_calls.unwrap_or(calls / 10);
    let single = Load::Closed {
        concurrency: 1,
        calls: single_calls,
        cap,
    };
    let mut runs = Vec::new();
    for &arm in arms {
        if !arm.applies_to(Scenario::Overhead) {
            continue;
        }
        match connect(arm, addrs, options.seed).await {
            Ok(client) => runs.push(OverheadRun::new(arm, client)),
            Err(error) => plan.notes.push(format!("{}: not run: {error}", arm.name())),
        }
    }
    let n = runs.len();
    for round in 0..rounds {
        for k in 0..n {
            let run = &mut runs[(round + k) % n];
            let label = format!("{} {}/{rounds}", run.arm.name(), round + 1);
            progress.arm_started("overhead", &label, calls);
            run.busy(busy, plan.deadline, progress).await;
        }
        if single_calls == 0 {
            continue;
        }
        for k in 0..n {
            let run = &mut runs[(round + k) % n];
            let label = format!("{} {}/{rounds} c=1", run.arm.name(), round + 1);
            progress.arm_started("overhead", &label, single_calls);
            run.single(single, plan.deadline, progress).await;
        }
    }
    let direct = runs
        .iter()
        .find(|r| r.arm == Arm::Direct)
        .map(|r| (r.round_rps.clone(), r.single_p50_ms()));
    let results: Vec<ArmResult> = runs
        .into_iter()
        .map(|run| run.finish(rounds, direct.as_ref()))
        .collect();
    plan.notes.push(format!(
        "arms take turns over {rounds} rounds: {calls} calls each at concurrency {concurrency}, \
         then {single_calls} at concurrency 1 (order rotated every round)"
    ));
    plan.notes.push(
        "ratio: median over rounds of the arm's calls/s ÷ direct's in the same round; \
         CPU: user + system time of the whole process (getrusage), client and backend"
            .to_owned(),
    );
    ScenarioResult {
        scenario: Scenario::Overhead.name().to_owned(),
        seed: options.seed,
        arms: results,
        notes: plan.notes,
        marked_backend: None,
    }
}

/// One arm of the `overhead` scenario, accumulated over its rounds.
struct OverheadRun {
    arm: Arm,
    client: Client,
    /// Calls at full concurrency, every round.
    busy: Arc<Mutex<Recorder>>,
    /// Calls at concurrency 1, every round.
    single: Arc<Mutex<Recorder>>,
    wall: Duration,
    /// Process CPU time spent during the runs at full concurrency.
    cpu: Option<Duration>,
    attempts: Option<u64>,
    round_rps: Vec<f64>,
}

impl OverheadRun {
    fn new(arm: Arm, client: Client) -> Self {
        Self {
            arm,
            attempts: client.attempts().map(|_| 0),
            client,
            busy: Arc::new(Mutex::new(Recorder::new())),
            single: Arc::new(Mutex::new(Recorder::new())),
            wall: Duration::ZERO,
            cpu: cpu_time().map(|_| Duration::ZERO),
            round_rps: Vec::new(),
        }
    }

    /// One round at full concurrency.
    async fn busy(&mut self, load: Load, deadline: Duration, progress: &dyn Progress) {
        let ok_before = self.ok();
        let attempts_before = self.client.attempts();
        let cpu_before = cpu_time();
        let wall = run_load(&self.client, load, deadline, progress, &self.busy).await;
        let cpu = cpu_time()
            .zip(cpu_before)
            .map(|(after, before)| after.saturating_sub(before));
        let attempts = self
            .client
            .attempts()
            .zip(attempts_before)
            .map(|(after, before)| after - before);
        self.cpu = self.cpu.zip(cpu).map(|(sum, cpu)| sum + cpu);
        self.attempts = self.attempts.zip(attempts).map(|(sum, n)| sum + n);
        self.wall += wall;
        let ok = self.ok() - ok_before;
        self.round_rps
            .push(ok as f64 / wall.as_secs_f64().max(1e-9));
    }

    /// One round at concurrency 1.
    async fn single(&mut self, load: Load, deadline: Duration, progress: &dyn Progress) {
        run_load(&self.client, load, deadline, progress, &self.single).await;
    }

    fn ok(&self) -> u64 {
        self.busy.lock().unwrap_or_else(PoisonError::into_inner).ok
    }

    /// The median latency at concurrency 1 in ms, if any call was made.
    fn single_p50_ms(&self) -> Option<f64> {
        let single = self.single.lock().unwrap_or_else(PoisonError::into_inner);
        (!single.histogram.is_empty())
            .then(|| single.histogram.value_at_quantile(0.5) as f64 / 1000.0)
    }

    /// The arm's result; `direct` holds direct's per-round throughput and p50 at
    /// concurrency 1, when it ran.
    fn finish(self, rounds: usize, direct: Option<&(Vec<f64>, Option<f64>)>) -> ArmResult {
        let single_p50_ms = self.single_p50_ms();
        let single_calls = self
            .single
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .calls;
        let ratios: Vec<f64> = direct
            .map(|(direct_rps, _)| {
                (self.round_rps.iter().zip(direct_rps))
                    .map(|(rps, direct)| rps / direct)
                    .filter(|r| r.is_finite())
                    .collect()
            })
            .unwrap_or_default();
        let added_p50_us = direct
            .and_then(|(_, p50)| *p50)
            .zip(single_p50_ms)
            .map(|(direct, arm)| (arm - direct) * 1000.0);
        let mut result = take(&self.busy).finish(self.arm, self.wall, self.attempts);
        let cpu_us_per_call = self
            .cpu
            .filter(|_| result.calls > 0)
            .map(|cpu| cpu.as_secs_f64() * 1e6 / result.calls as f64);
        result.overhead = Some(Overhead {
            rounds,
            round_throughput_rps: self.round_rps,
            throughput_ratio_to_direct: median(ratios),
            cpu_us_per_call,
            single_calls,
            single_p50_ms: single_p50_ms.unwrap_or(0.0),
            added_p50_us,
        });
        result
    }
}

/// The median of `values`, `None` if there are none.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// User plus system CPU time of the whole process so far: every thread, so the
/// runtime's workers, the client and the in-process backend.
///
/// `getrusage` rather than `/proc/self/stat`: it counts in microseconds where the proc
/// file counts in clock ticks (10 ms), too coarse for runs of a second or less, and it
/// works on every Unix, not only Linux.
#[cfg(unix)]
fn cpu_time() -> Option<Duration> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `getrusage` fills the `rusage` the pointer points at, which lives on this
    // stack frame and is already zeroed (valid for a struct of integers).
    let (rc, usage) = unsafe {
        let rc = libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        (rc, usage.assume_init())
    };
    if rc != 0 {
        return None;
    }
    let time = |t: libc::timeval| -> Option<Duration> {
        Some(
            Duration::from_secs(u64::try_from(t.tv_sec).ok()?)
                + Duration::from_micros(u64::try_from(t.tv_usec).ok()?),
        )
    };
    Some(time(usage.ru_utime)? + time(usage.ru_stime)?)
}

/// No `getrusage` here: CPU time is not reported.
#[cfg(not(unix))]
fn cpu_time() -> Option<Duration> {
    None
}

/// Runs open-loop load against real servers that speak grpc.testing.TestService (with
/// `fill_server_id`), for each arm that can reach them. No faults are injected.
///
/// # Errors
/// The target is malformed.
pub async fn run_external(
    target: &str,
    arms: &[Arm],
    options: &Options,
    progress: &dyn Progress,
) -> Result<ScenarioResult, tonic_balancer::Error> {
    let parsed = Target::parse(target)?;
    let load = Load::Open {
        rps: options.rps.unwrap_or(200.0),
        duration: options.duration.unwrap_or(Duration::from_secs(10)),
    };
    let mut notes = vec![format!(
        "external target {target}: real servers, no fault injection; latencies are theirs"
    )];
    let mut results = Vec::new();
    for &arm in arms {
        let client = match (arm, &parsed) {
            (Arm::TonicBalance | Arm::Direct, Target::Static(addrs)) => {
                connect(arm, addrs, options.seed).await
            }
            (Arm::TonicBalance | Arm::Direct, _) => {
                Err("needs an ipv4:/ipv6: address list".to_owned())
            }
            (_, _) => balanced(arm, target, options.seed).await,
        };
        let client = match client {
            Ok(client) => client,
            Err(error) => {
                notes.push(format!("{}: not run: {error}", arm.name()));
                continue;
            }
        };
        progress.arm_started("external", arm.name(), load.expected_calls());
        results.push(drive(arm, client, load, Duration::from_secs(10), progress).await);
    }
    Ok(ScenarioResult {
        scenario: "external".to_owned(),
        seed: options.seed,
        arms: results,
        notes,
        marked_backend: None,
    })
}

#[derive(Clone)]
enum Client {
    Balanced(TestServiceClient<BalancedChannel>, BalancedChannel),
    Tonic(TestServiceClient<Channel>),
}

impl Client {
    /// Attempts sent so far, where the transport counts them (this crate's channel).
    fn attempts(&self) -> Option<u64> {
        let Client::Balanced(_, channel) = self else {
            return None;
        };
        let stats = channel.stats();
        Some(
            stats
                .methods
                .iter()
                .map(|m| {
                    let a = m.attempts;
                    a.first + a.retries + a.hedges + a.transparent
                })
                .sum(),
        )
    }

    async fn call(&mut self, deadline: Duration) -> Result<String, Status> {
        let mut request = tonic::Request::new(SimpleRequest {
            fill_server_id: true,
            ..Default::default()
        });
        request.set_timeout(deadline);
        let response = match self {
            Client::Balanced(client, _) => client.unary_call(request).await?,
            Client::Tonic(client) => client.unary_call(request).await?,
        };
        Ok(response.into_inner().server_id)
    }
}

async fn connect(arm: Arm, addrs: &[SocketAddr], seed: u64) -> Result<Client, String> {
    let endpoint = |addr: &SocketAddr| {
        Endpoint::from_shared(format!("http://{addr}")).map_err(|e| e.to_string())
    };
    let client = match arm {
        Arm::TonicBalance => {
            let endpoints = addrs.iter().map(endpoint).collect::<Result<Vec<_>, _>>()?;
            Client::Tonic(TestServiceClient::new(Channel::balance_list(
                endpoints.into_iter(),
            )))
        }
        Arm::Direct => {
            let first = addrs.first().ok_or("no backend")?;
            let channel = endpoint(first)?
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            Client::Tonic(TestServiceClient::new(channel))
        }
        _ => {
            let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
            return balanced(arm, &format!("static:{}", list.join(",")), seed).await;
        }
    };
    warm_up(client).await
}

async fn balanced(arm: Arm, target: &str, seed: u64) -> Result<Client, String> {
    let policy = arm.policy().ok_or("not a BalancedChannel arm")?;
    let mut builder = BalancedChannel::builder(target).policy(policy).seed(seed);
    if let Some(config) = arm.service_config() {
        builder = builder
            .service_config_json(config)
            .map_err(|e| e.to_string())?;
    }
    let channel = builder.build().map_err(|e| e.to_string())?;
    // Every backend connected (or failed) before the clock starts, so no arm pays for
    // its connection set-up inside the measurement.
    let settled = channel.wait_for(|subs| {
        !subs.is_empty()
            && subs
                .iter()
                .all(|s| s.state != ConnectivityState::Connecting)
    });
    let _ = tokio::time::timeout(Duration::from_secs(5), settled).await;
    warm_up(Client::Balanced(
        TestServiceClient::new(channel.clone()),
        channel,
    ))
    .await
}

/// A few calls before measuring: connections, HTTP/2 windows and code paths warm.
async fn warm_up(mut client: Client) -> Result<Client, String> {
    for _ in 0..20 {
        if let Err(status) = client.call(Duration::from_secs(5)).await {
            return Err(format!("warm-up call failed: {status}"));
        }
    }
    Ok(client)
}

async fn inject(backends: Arc<Vec<Backend>>, faults: Vec<(f64, Fault)>, load: Load) {
    let Load::Open { duration, .. } = load else {
        return;
    };
    let start = Instant::now();
    for (at, fault) in faults {
        tokio::time::sleep_until(start + duration.mul_f64(at)).await;
        match fault {
            Fault::Kill(i) => backends[i].kill().await,
            Fault::Restart(i) => {
                if let Err(error) = backends[i].restart().await {
                    tracing::warn!(%error, "benchmark backend did not restart");
                }
            }
            Fault::Latency(i, latency) => backends[i].set_latency(latency),
            Fault::FailAll(fail) => {
                for backend in backends.iter() {
                    backend.set_failure(if fail { 1.0 } else { 0.0 }, Code::Unavailable);
                }
            }
        }
    }
}

async fn restore(backends: &[Backend], plan: &[(String, Latency)]) -> io::Result<()> {
    for (backend, (_, latency)) in backends.iter().zip(plan) {
        backend.restart().await?;
        backend.set_latency(latency.clone());
        backend.set_failure(0.0, Code::Ok);
    }
    Ok(())
}

/// What the calls of one arm add up to.
struct Recorder {
    histogram: Histogram<u64>,
    calls: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    shares: BTreeMap<String, u64>,
    slices: Vec<BTreeMap<String, u64>>,
}

impl Recorder {
    fn new() -> Self {
        Self {
            // 1 µs to 1 hour at 3 significant figures; auto-resize past that.
            histogram: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .map(|mut h| {
                    h.auto(true);
                    h
                })
                .unwrap_or_else(|_| Histogram::new(3).expect("3 significant figures is valid")),
            calls: 0,
            ok: 0,
            errors: BTreeMap::new(),
            shares: BTreeMap::new(),
            slices: vec![BTreeMap::new(); SLICES],
        }
    }

    /// One call, issued in `slice` of the run, that took `latency` from its schedule.
    fn record(&mut self, slice: usize, latency: Duration, outcome: Result<String, Code>) {
        self.calls += 1;
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let _ = self.histogram.record(micros);
        match outcome {
            Ok(server) => {
                self.ok += 1;
                *self.slices[slice.min(SLICES - 1)]
                    .entry(server.clone())
                    .or_default() += 1;
                *self.shares.entry(server).or_default() += 1;
            }
            Err(code) => *self.errors.entry(code_name(code).to_owned()).or_default() += 1,
        }
    }

    fn finish(self, arm: Arm, wall: Duration, attempts: Option<u64>) -> ArmResult {
        let h = &self.histogram;
        let ms = |micros: u64| micros as f64 / 1000.0;
        let (latency_ms, cdf) = if h.is_empty() {
            (Percentiles::default(), Vec::new())
        } else {
            let latency_ms = Percentiles {
                p50: ms(h.value_at_quantile(0.5)),
                p90: ms(h.value_at_quantile(0.9)),
                p99: ms(h.value_at_quantile(0.99)),
                p999: ms(h.value_at_quantile(0.999)),
                max: ms(h.max()),
            };
            let total = h.len() as f64;
            let mut cdf = Vec::new();
            let mut seen = 0u64;
            for value in h.iter_recorded() {
                seen += value.count_since_last_iteration();
                cdf.push((ms(value.value_iterated_to()), seen as f64 / total));
            }
            (latency_ms, cdf)
        };
        let ok = self.ok.max(1) as f64;
        ArmResult {
            arm: arm.name().to_owned(),
            calls: self.calls,
            ok: self.ok,
            errors: self.errors,
            attempts: attempts.unwrap_or(self.calls),
            throughput_rps: self.ok as f64 / wall.as_secs_f64().max(1e-9),
            latency_ms,
            backend_share: self
                .shares
                .into_iter()
                .map(|(id, n)| (id, n as f64 / ok))
                .collect(),
            overhead: None,
            subsetting: None,
            cdf,
            share_over_time: self.slices,
        }
    }
}

async fn drive(
    arm: Arm,
    client: Client,
    load: Load,
    deadline: Duration,
    progress: &dyn Progress,
) -> ArmResult {
    let recorder = Arc::new(Mutex::new(Recorder::new()));
    // The warm-up calls are not part of the run.
    let attempts_before = client.attempts();
    let wall = run_load(&client, load, deadline, progress, &recorder).await;
    let attempts = client
        .attempts()
        .zip(attempts_before)
        .map(|(after, before)| after - before);
    take(&recorder).finish(arm, wall, attempts)
}

/// Takes the figures out from under the lock, once every call has ended.
fn take(recorder: &Mutex<Recorder>) -> Recorder {
    std::mem::replace(
        &mut *recorder.lock().unwrap_or_else(PoisonError::into_inner),
        Recorder::new(),
    )
}

/// Runs `load` on `client`, recording each call into `recorder`; returns the wall time.
async fn run_load(
    client: &Client,
    load: Load,
    deadline: Duration,
    progress: &dyn Progress,
    recorder: &Arc<Mutex<Recorder>>,
) -> Duration {
    let record = {
        let recorder = recorder.clone();
        move |slice: usize, latency: Duration, outcome: Result<String, Code>| {
            recorder
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(slice, latency, outcome);
        }
    };
    let start = Instant::now();
    match load {
        Load::Open { rps, .. } => {
            let total = load.expected_calls();
            let every = Duration::from_secs_f64(1.0 / rps.max(1e-3));
            // Every call ends by its deadline, so this many outstanding means the client
            // itself cannot keep up: shed (and count) rather than grow without bound.
            let cap = ((rps * deadline.as_secs_f64() * 1.5) as usize).max(1000);
            let outstanding = Arc::new(AtomicU64::new(0));
            let mut calls = Vec::with_capacity(total as usize);
            for i in 0..total {
                let scheduled = start + every.mul_f64(i as f64);
                tokio::time::sleep_until(scheduled).await;
                let slice = (i as usize * SLICES) / total.max(1) as usize;
                if outstanding.load(Ordering::Relaxed) as usize >= cap {
                    record(slice, Duration::ZERO, Err(Code::ResourceExhausted));
                    continue;
                }
                outstanding.fetch_add(1, Ordering::Relaxed);
                let (mut client, record, outstanding) =
                    (client.clone(), record.clone(), outstanding.clone());
                calls.push(tokio::spawn(async move {
                    let outcome = client.call(deadline).await.map_err(|s| s.code());
                    record(slice, scheduled.elapsed(), outcome);
                    outstanding.fetch_sub(1, Ordering::Relaxed);
                }));
            }
            for call in calls {
                let _ = call.await;
                progress.call_done();
            }
        }
        Load::Closed {
            concurrency,
            calls,
            cap,
        } => {
            let issued = Arc::new(AtomicU64::new(0));
            let mut workers = Vec::new();
            for _ in 0..concurrency.max(1) {
                let (mut client, record, issued) = (client.clone(), record.clone(), issued.clone());
                workers.push(tokio::spawn(async move {
                    let mut done = 0u64;
                    loop {
                        let i = issued.fetch_add(1, Ordering::Relaxed);
                        if i >= calls || start.elapsed() > cap {
                            return done;
                        }
                        let began = Instant::now();
                        let outcome = client.call(deadline).await.map_err(|s| s.code());
                        let slice = (i as usize * SLICES) / calls.max(1) as usize;
                        record(slice, began.elapsed(), outcome);
                        done += 1;
                    }
                }));
            }
            for worker in workers {
                let done = worker.await.unwrap_or(0);
                for _ in 0..done {
                    progress.call_done();
                }
            }
        }
    }
    start.elapsed()
}

/// The stdout table of one scenario: a row per arm.
pub fn render_table(result: &ScenarioResult) -> String {
    let mut out = String::new();
    let marked = result.marked_backend.as_deref();
    let _ = writeln!(out, "\n== {} (seed {}) ==", result.scenario, result.seed);
    for note in &result.notes {
        let _ = writeln!(out, "   {note}");
    }
    if !result.arms.is_empty() && result.arms.iter().all(|a| a.subsetting.is_some()) {
        // Spread figures only: no latencies to show.
        subsetting_table(&mut out, result);
        return out;
    }
    let _ = writeln!(
        out,
        "{:<14} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>9} {:>7}",
        "arm",
        "calls",
        "ok %",
        "p50",
        "p90",
        "p99",
        "p999",
        "max",
        "att/c",
        "rps",
        marked.map_or("slow %", |_| "marked%")
    );
    for arm in &result.arms {
        let l = &arm.latency_ms;
        let share = marked
            .map(|id| {
                format!(
                    "{:.2}",
                    100.0 * arm.backend_share.get(id).copied().unwrap_or(0.0)
                )
            })
            .unwrap_or_else(|| "-".to_owned());
        let _ = writeln!(
            out,
            "{:<14} {:>7} {:>7.3} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>6.2} {:>9.0} {:>7}",
            arm.arm,
            arm.calls,
            100.0 * arm.ok as f64 / arm.calls.max(1) as f64,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            arm.attempts as f64 / arm.calls.max(1) as f64,
            arm.throughput_rps,
            share
        );
    }
    if let Some(marked) = marked {
        let _ = writeln!(
            out,
            "   (latencies in ms; last column: share of OK calls served by {marked})"
        );
    }
    overhead_table(&mut out, result);
    subsetting_table(&mut out, result);
    out
}

/// The `subsetting` figures, under the main table: connections per client and per
/// server, calls per server, max/mean load and churn.
fn subsetting_table(out: &mut String, result: &ScenarioResult) {
    let rows: Vec<(&str, &SubsettingFigures)> = (result.arms.iter())
        .filter_map(|a| Some((a.arm.as_str(), a.subsetting.as_ref()?)))
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "   subsetting (min/mean/max; load = calls per server, each client sending equally):"
    );
    let _ = writeln!(
        out,
        "{:<25} {:>13} {:>7} {:>16} {:>20} {:>8} {:>6}",
        "arm", "clients×srv/k", "conn/cl", "conn/server", "calls/server", "max/mean", "churn"
    );
    let s = |s: &Spread| format!("{:.0}/{:.1}/{:.0}", s.min, s.mean, s.max);
    for (arm, f) in rows {
        let _ = writeln!(
            out,
            "{:<25} {:>13} {:>7} {:>16} {:>20} {:>8.3} {:>6}",
            arm,
            format!("{}×{}/{}", f.clients, f.servers, f.subset_size),
            s(&f.connections_per_client),
            s(&f.connections_per_server),
            s(&f.calls_per_server),
            f.max_over_mean_load,
            f.churn_per_client
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.2}")),
        );
    }
}

/// The `overhead` figures, under the main table: throughput ratio to direct, CPU per
/// call (and its ratio to direct's), p50 at concurrency 1 and what the arm adds to it.
fn overhead_table(out: &mut String, result: &ScenarioResult) {
    let rows: Vec<(&str, &Overhead)> = (result.arms.iter())
        .filter_map(|a| Some((a.arm.as_str(), a.overhead.as_ref()?)))
        .collect();
    let Some((_, first)) = rows.first() else {
        return;
    };
    let direct_cpu = (rows.iter())
        .find(|(arm, _)| *arm == Arm::Direct.name())
        .and_then(|(_, o)| o.cpu_us_per_call);
    let opt = |v: Option<f64>, decimals: usize| match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".to_owned(),
    };
    let _ = writeln!(
        out,
        "   overhead, {} round{} (median ratio to direct; CPU of the whole process per call):",
        first.rounds,
        if first.rounds == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        out,
        "{:<14} {:>10} {:>12} {:>10} {:>11} {:>9}",
        "arm", "rps/direct", "cpu µs/call", "cpu/direct", "p50 c=1 µs", "added µs"
    );
    for (arm, o) in &rows {
        let cpu_ratio = o.cpu_us_per_call.zip(direct_cpu).map(|(a, d)| a / d);
        let single = (o.single_calls > 0).then_some(o.single_p50_ms * 1000.0);
        let _ = writeln!(
            out,
            "{:<14} {:>10} {:>12} {:>10} {:>11} {:>9}",
            arm,
            opt(o.throughput_ratio_to_direct, 3),
            opt(o.cpu_us_per_call, 1),
            opt(cpu_ratio, 3),
            opt(single, 1),
            opt(o.added_p50_us, 1),
        );
    }
}

/// `results.json`: one object per scenario.
pub fn to_json(results: &[ScenarioResult]) -> String {
    serde_json::to_string_pretty(results).unwrap_or_else(|_| "[]".to_owned())
}
