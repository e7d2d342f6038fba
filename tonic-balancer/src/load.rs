//! Per-subchannel load: what the pickers read and what each call's guard updates.
//!
//! Everything here is atomics: pickers read them and every call updates them without a
//! lock. Every policy shares the same counters, so per-method policies see one truth.
//!
//! This module is a leaf: the pickers ([`balance`](crate::balance)) read a [`Load`], the
//! subchannels own one each, and a call's [`CallGuard`] updates it; none of them is
//! needed to build, read or test a `Load`. A custom [`Picker`](crate::balance::Picker)
//! can be tested with plain `Load`s and `CallGuard`s, no runtime and no network.

use crate::defaults;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tonic::Code;

pub use defaults::DEFAULT_FAILURE_CODES;

/// A set of status codes as a bit mask (codes are 0..=16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CodeSet(u32);

impl CodeSet {
    pub(crate) fn of(codes: &[Code]) -> Self {
        Self(codes.iter().fold(0, |mask, &c| mask | 1 << (c as u32 & 31)))
    }

    pub(crate) fn contains(self, code: Code) -> bool {
        self.0 & 1 << (code as u32 & 31) != 0
    }
}

impl Default for CodeSet {
    fn default() -> Self {
        Self::of(&DEFAULT_FAILURE_CODES)
    }
}

#[cfg(test)]
fn is_failure(code: Code) -> bool {
    CodeSet::default().contains(code)
}

/// The stamp of an estimate that has had no successful sample yet.
const UNMEASURED: u64 = u64::MAX;

/// Parameters of the per-subchannel RTT estimate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct EwmaParams {
    pub(crate) decay: Duration,
    pub(crate) default_rtt: Duration,
}

impl Default for EwmaParams {
    /// Used when no peak_ewma policy sets them (the estimate is kept anyway, for
    /// per-method policies and metrics).
    fn default() -> Self {
        Self {
            decay: defaults::DEFAULT_EWMA_DECAY,
            default_rtt: defaults::DEFAULT_RTT,
        }
    }
}

/// A peak-sensitive exponentially weighted moving average of round-trip times
/// (Finagle's and linkerd's peak EWMA).
///
/// A sample slower than the estimate replaces it at once; a faster one pulls it down
/// with weight `1 - exp(-Δt / decay)` (see [`sample_weight`]), where Δt is the time
/// since the previous update, so the gap to a steady new level halves every
/// `decay × ln 2` whatever the call rate.
///
/// Updates race benignly: two concurrent samples may each read the old estimate and the
/// last store wins, which an estimator tolerates far better than a lock on every call.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Ewma {
    /// Nanoseconds, as `f64` bits. First: pickers read it (see [`Load`]'s layout).
    estimate: AtomicU64,
    /// When the estimate last changed, in nanoseconds since `epoch`; [`UNMEASURED`] until
    /// the first successful sample, which replaces the default outright.
    stamp: AtomicU64,
    decay_nanos: f64,
    epoch: Instant,
}

impl Ewma {
    pub(crate) fn new(params: EwmaParams) -> Self {
        Self {
            estimate: AtomicU64::new((params.default_rtt.as_nanos() as f64).to_bits()),
            stamp: AtomicU64::new(UNMEASURED),
            epoch: Instant::now(),
            decay_nanos: params.decay.as_nanos().max(1) as f64,
        }
    }

    /// The current estimate in nanoseconds.
    #[inline]
    pub(crate) fn nanos(&self) -> f64 {
        f64::from_bits(self.estimate.load(Ordering::Relaxed))
    }

    /// Records one round trip. With `may_lower` false (a failed or abandoned call) the
    /// sample can only raise the estimate.
    pub(crate) fn observe(&self, now: Instant, rtt: Duration, may_lower: bool) {
        let now_nanos = nanos(now.saturating_duration_since(self.epoch));
        let sample = nanos(rtt) as f64;
        let current = self.nanos();
        let stamp = self.stamp.load(Ordering::Relaxed);
        let next = if sample >= current || (may_lower && stamp == UNMEASURED) {
            sample
        } else if may_lower {
            let elapsed = now_nanos.saturating_sub(stamp) as f64;
            current + (sample - current) * sample_weight(elapsed / self.decay_nanos)
        } else {
            return;
        };
        self.stamp.store(now_nanos, Ordering::Relaxed);
        self.estimate.store(next.to_bits(), Ordering::Relaxed);
    }
}

/// A duration in whole nanoseconds, saturating at `u64::MAX` (584 years).
///
/// `Duration::as_nanos` returns a `u128`, and turning a `u128` into an `f64` is a
/// library call on x86-64; two `u64` operations give the same value for any duration a
/// call can take.
fn nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

/// Below this, [`sample_weight`] uses its polynomial: the Taylor series' first omitted
/// term is under x⁵/120 < 2.6 × 10⁻¹⁰ here, and relative to the weight under 10⁻⁸: far
/// below anything a latency estimate can notice.
const SERIES_LIMIT: f64 = 1.0 / 32.0;

/// The weight a faster sample gets after `x` decay times without one: `1 - exp(-x)`,
/// for `x >= 0`, without calling `exp` in the common case.
///
/// With the default decay of 10 s, an endpoint that gets more than about three calls a
/// second sees gaps below [`SERIES_LIMIT`], where four terms of the series cost four
/// multiplications instead of a call into libm on every response. Longer gaps are rare
/// and take `exp` itself. Computing the weight rather than `exp(-x)` also avoids the
/// cancellation of `1 - exp(-x)` when `x` is tiny.
fn sample_weight(x: f64) -> f64 {
    if x < SERIES_LIMIT {
        // x - x²/2 + x³/6 - x⁴/24, in Horner form, multiplying rather than dividing.
        x * (1.0 - x * 0.5 * (1.0 - x * (1.0 / 3.0) * (1.0 - x * 0.25)))
    } else {
        1.0 - (-x).exp()
    }
}

/// Outcomes of the calls that ended in the current outlier-detection interval.
#[derive(Debug, Default)]
pub(crate) struct Outcomes {
    successes: AtomicU64,
    failures: AtomicU64,
    consecutive_failures: AtomicU64,
}

impl Outcomes {
    /// Takes this interval's counts, starting the next interval at zero.
    pub(crate) fn take(&self) -> (u64, u64) {
        (
            self.successes.swap(0, Ordering::Relaxed),
            self.failures.swap(0, Ordering::Relaxed),
        )
    }

    pub(crate) fn consecutive_failures(&self) -> u64 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    pub(crate) fn reset_consecutive(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// Counts one call; returns the consecutive failures so far.
    pub(crate) fn record(&self, failed: bool) -> u64 {
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
            self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.successes.fetch_add(1, Ordering::Relaxed);
            self.consecutive_failures.store(0, Ordering::Relaxed);
            0
        }
    }
}

/// The live load of one subchannel: calls in flight, calls started and failed, and the
/// peak-EWMA round-trip estimate. Pickers read it; each call's [`CallGuard`] updates it.
///
/// The fields are laid out in order (`repr(C)`), those every call touches first, right
/// after the `Arc`'s two counters that a call's guard also updates: `in_flight` (which
/// a P2C pick reads on two random subchannels), then what the guard writes and reads
/// on every call, then the estimate. Over thousands of endpoints each subchannel a
/// pick touches is a cache miss, and with this order a call's accounting stays on the
/// line the pick brought in for most allocations: with `in_flight` first and the
/// estimate right after it, least_request's pick + completion at 10 000 endpoints took
/// 1.6-1.9× as long (the README's Pick cost).
#[derive(Debug)]
#[repr(C)]
pub struct Load {
    in_flight: AtomicUsize,
    started: AtomicU64,
    /// Whether calls time their round trip. Only peak_ewma reads the estimate, and the
    /// clock read that times a response is a large share of what a call costs here, so
    /// other channels skip it.
    track_rtt: AtomicBool,
    track_outcomes: AtomicBool,
    failure_codes: CodeSet,
    pub(crate) rtt: Ewma,
    /// Attempts that failed here (the failure codes, transport errors).
    errors: AtomicU64,
    /// Call outcomes, counted only when outlier detection is on.
    pub(crate) outcomes: Outcomes,
    /// Woken when consecutive failures reach `consecutive_limit`.
    outlier_signal: Option<Arc<tokio::sync::Notify>>,
    /// Consecutive failures that wake outlier detection (0: never). A service config
    /// update may change it.
    consecutive_limit: AtomicU64,
    /// Connections this subchannel opened.
    pub(crate) connections: AtomicU64,
    /// HTTP/2 PINGs sent on this subchannel's connections.
    pub(crate) pings: AtomicU64,
    /// Connections declared dead for want of a PING ACK.
    pub(crate) dead_connections: AtomicU64,
    /// Handles into the `metrics` facade, when this load belongs to a channel's endpoint.
    #[cfg(feature = "metrics")]
    pub(crate) exported: Option<exported::Endpoint>,
}

/// How a subchannel's calls are accounted, beyond counting them in flight.
#[derive(Clone, Debug, Default)]
pub(crate) struct Accounting {
    /// RTT estimate parameters when a peak_ewma policy needs the estimate.
    pub(crate) ewma: Option<EwmaParams>,
    /// The codes that count as failures.
    pub(crate) failure_codes: CodeSet,
    /// Outlier detection's wake-up and consecutive-failure limit, when it is on.
    pub(crate) outliers: Option<(Arc<tokio::sync::Notify>, u64)>,
}

impl Load {
    /// Counters that count calls in flight and do not time round trips (what every
    /// policy but peak_ewma needs).
    pub fn new() -> Self {
        Self::with(&Accounting::default())
    }

    /// Counters that also keep the peak-EWMA round-trip estimate, with this decay and
    /// this estimate for a backend not yet measured (see
    /// [`Policy::peak_ewma`](crate::Policy::peak_ewma)).
    pub fn timing_rtt(decay: Duration, default_rtt: Duration) -> Self {
        Self::with(&Accounting {
            ewma: Some(EwmaParams { decay, default_rtt }),
            ..Accounting::default()
        })
    }

    /// Counters accounting calls as `accounting` says.
    pub(crate) fn with(accounting: &Accounting) -> Self {
        let params = accounting.ewma;
        Self {
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            outcomes: Outcomes::default(),
            track_outcomes: AtomicBool::new(accounting.outliers.is_some()),
            failure_codes: accounting.failure_codes,
            outlier_signal: accounting.outliers.as_ref().map(|(s, _)| s.clone()),
            consecutive_limit: AtomicU64::new(accounting.outliers.as_ref().map_or(0, |(_, l)| *l)),
            track_rtt: AtomicBool::new(params.is_some()),
            rtt: Ewma::new(params.unwrap_or_default()),
            connections: AtomicU64::new(0),
            pings: AtomicU64::new(0),
            dead_connections: AtomicU64::new(0),
            #[cfg(feature = "metrics")]
            exported: None,
        }
    }

    /// The same, reporting to the `metrics` facade under this endpoint label.
    #[cfg(feature = "metrics")]
    pub(crate) fn exported(mut self, endpoint: &str) -> Self {
        self.exported = Some(exported::Endpoint::new(endpoint));
        self
    }

    /// Calls in flight right now (streams count until they close).
    #[inline]
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Calls started since these counters were created.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Calls that failed (a failure code, or at the transport) since these counters were
    /// created.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The peak-EWMA round-trip estimate (see [`Policy::peak_ewma`](crate::Policy::peak_ewma)
    /// for what is measured). Round trips are timed only where a peak_ewma policy needs
    /// them; elsewhere this stays at the default.
    pub fn rtt(&self) -> Duration {
        Duration::from_nanos(self.rtt.nanos() as u64)
    }

    /// The estimate in nanoseconds, as the pickers compare it.
    #[inline]
    pub(crate) fn rtt_nanos(&self) -> f64 {
        self.rtt.nanos()
    }

    /// Whether round trips are being timed (some policy needs the estimate).
    #[inline]
    pub fn tracks_rtt(&self) -> bool {
        self.track_rtt.load(Ordering::Relaxed)
    }

    /// Turns round-trip timing on or off (a config update added or removed peak_ewma).
    pub(crate) fn set_rtt_tracking(&self, on: bool) {
        self.track_rtt.store(on, Ordering::Relaxed);
    }

    /// Turns outcome counting for outlier detection on (with this consecutive-failure
    /// limit, 0: none) or off.
    pub(crate) fn set_outlier_detection(&self, consecutive_limit: Option<u64>) {
        self.consecutive_limit
            .store(consecutive_limit.unwrap_or(0), Ordering::Relaxed);
        self.track_outcomes
            .store(consecutive_limit.is_some(), Ordering::Relaxed);
    }
}

impl Default for Load {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts one call as load on a subchannel from the moment it is sent until it ends.
///
/// The guard lives in the response future and then in the response body, so it is
/// released however the call ends: the response stream finishing or failing, the call
/// failing before a response, or the caller dropping the future or the stream
/// (cancellation). A stream counts as load until it closes.
///
/// It also feeds the RTT estimate, measured from sending the request to receiving the
/// response headers (see [`CallGuard::responded`]).
#[derive(Debug)]
pub struct CallGuard {
    load: Arc<Load>,
    /// Set until the call's round trip has been recorded.
    sent: Option<Instant>,
    outcome_recorded: bool,
    /// The call's deadline, if it has one.
    deadline: Option<Instant>,
}

impl CallGuard {
    /// Counts a call as sent now.
    ///
    /// Where round trips are timed this reads the clock; a caller that has just read it
    /// (for the call's deadline, say) saves that read with [`CallGuard::sent_at`].
    pub fn new(load: Arc<Load>) -> Self {
        let sent = load.tracks_rtt().then(Instant::now);
        Self::start(load, sent)
    }

    /// Counts a call as sent at `sent`: the call's own reading of the clock, taken just
    /// before it was handed to the connection.
    ///
    /// Same as [`CallGuard::new`], minus its clock read: a clock read is a large share
    /// of what a pick and its accounting cost, and the call path already makes one to
    /// compute its deadline. `sent` must come from
    /// [`tokio::time::Instant::now`], so that paused-time tests move it too; an instant
    /// far in the past makes the round trip look that slow.
    #[inline]
    pub fn sent_at(load: Arc<Load>, sent: Instant) -> Self {
        let sent = load.tracks_rtt().then_some(sent);
        Self::start(load, sent)
    }

    #[inline]
    fn start(load: Arc<Load>, sent: Option<Instant>) -> Self {
        load.in_flight.fetch_add(1, Ordering::Relaxed);
        load.started.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(exported) = &load.exported {
            exported.calls.increment(1);
            exported.in_flight.increment(1.0);
        }
        Self {
            load,
            sent,
            outcome_recorded: false,
            deadline: None,
        }
    }

    /// The call's deadline. A DEADLINE_EXCEEDED that ends the call once its own deadline
    /// has passed (the client's timer, or the server enforcing the `grpc-timeout` the
    /// client sent) is the client's doing, not the backend's: it is neither an error of
    /// the endpoint nor a failure for outlier detection, so a client whose deadlines are
    /// too short for the work does not eject healthy backends one after another. A
    /// DEADLINE_EXCEEDED before the deadline (the backend's own downstream call timed
    /// out) still counts.
    pub fn with_deadline(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    /// Response headers arrived. `status` is the `grpc-status` they carry if the response
    /// is Trailers-Only (an immediate error or empty OK), `None` for a normal response
    /// (whose status comes with its trailers: [`CallGuard::finished`]).
    #[inline]
    pub fn responded(&mut self, status: Option<Code>) {
        let failures = self.load.failure_codes;
        let ok = status.is_none_or(|code| !failures.contains(code));
        self.record(ok);
        if let Some(code) = status {
            self.finished(code);
        }
    }

    /// The call ended with this status (in its trailers, or from the client's own
    /// deadline timer: `DEADLINE_EXCEEDED`).
    pub fn finished(&mut self, code: Code) {
        if code == Code::DeadlineExceeded && self.past_deadline() {
            return self.no_outcome();
        }
        let failed = self.load.failure_codes.contains(code);
        self.outcome(failed);
    }

    /// The call failed before any response (a transport error), or the client's timer
    /// ended it: once the call's deadline has passed, the timer is what ended it (tonic's
    /// `grpc-timeout`, the channel's own), and that is not the backend's failure.
    pub fn failed(&mut self) {
        self.record(false);
        if self.past_deadline() {
            return self.no_outcome();
        }
        self.outcome(true);
    }

    fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// The call ended by the client's deadline: no outcome at all. A success would hide
    /// a streak of real failures; a failure would blame the backend.
    fn no_outcome(&mut self) {
        self.outcome_recorded = true;
    }

    /// Counts the call's outcome once: its endpoint's errors, and outlier detection.
    fn outcome(&mut self, failed: bool) {
        let load = &self.load;
        if self.outcome_recorded {
            return;
        }
        self.outcome_recorded = true;
        if failed {
            load.errors.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            if let Some(exported) = &load.exported {
                exported.errors.increment(1);
            }
        }
        if !load.track_outcomes.load(Ordering::Relaxed) {
            return;
        }
        let consecutive = load.outcomes.record(failed);
        let limit = load.consecutive_limit.load(Ordering::Relaxed);
        if let Some(signal) = &load.outlier_signal
            && limit > 0
            && consecutive == limit
        {
            signal.notify_one();
        }
    }

    #[inline]
    fn record(&mut self, may_lower: bool) {
        if let Some(sent) = self.sent.take() {
            self.record_rtt(sent, may_lower);
        }
    }

    fn record_rtt(&self, sent: Instant, may_lower: bool) {
        let now = Instant::now();
        let rtt = &self.load.rtt;
        rtt.observe(now, now.saturating_duration_since(sent), may_lower);
        #[cfg(feature = "metrics")]
        if let Some(exported) = &self.load.exported {
            exported.rtt.set(rtt.nanos() / 1e9);
        }
    }
}

impl Drop for CallGuard {
    #[inline]
    fn drop(&mut self) {
        // Abandoned before a response: the wait so far is evidence of slowness only.
        self.record(false);
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(exported) = &self.load.exported {
            exported.in_flight.decrement(1.0);
        }
    }
}

/// Handles into the `metrics` facade for one endpoint, made once so a call only bumps
/// atomics. The names are listed in the [`stats`](crate::stats) module docs.
#[cfg(feature = "metrics")]
pub(crate) mod exported {
    use metrics::{Counter, Gauge};

    #[derive(Debug)]
    pub(crate) struct Endpoint {
        pub(crate) calls: Counter,
        pub(crate) errors: Counter,
        pub(crate) in_flight: Gauge,
        pub(crate) rtt: Gauge,
        pub(crate) ejections: Counter,
        pub(crate) ready: Gauge,
    }

    impl Endpoint {
        pub(crate) fn new(endpoint: &str) -> Self {
            let label = [("endpoint", endpoint.to_owned())];
            Self {
                calls: metrics::counter!("grpc_client_endpoint_calls_total", &label),
                errors: metrics::counter!("grpc_client_endpoint_errors_total", &label),
                in_flight: metrics::gauge!("grpc_client_endpoint_in_flight", &label),
                rtt: metrics::gauge!("grpc_client_endpoint_rtt_seconds", &label),
                ejections: metrics::counter!("grpc_client_endpoint_ejections_total", &label),
                ready: metrics::gauge!("grpc_client_endpoint_ready", &label),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn ewma(decay_secs: u64) -> Ewma {
        Ewma::new(EwmaParams {
            decay: Duration::from_secs(decay_secs),
            default_rtt: 10 * MS,
        })
    }

    fn ms(nanos: f64) -> f64 {
        nanos / 1e6
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_success_replaces_the_default() {
        let e = ewma(10);
        assert_eq!(ms(e.nanos()), 10.0);
        // A fast failure before any success leaves the default alone.
        e.observe(Instant::now(), MS, false);
        assert_eq!(ms(e.nanos()), 10.0);
        e.observe(Instant::now(), 2 * MS, true);
        assert_eq!(ms(e.nanos()), 2.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_sample_raises_the_estimate_at_once() {
        let e = ewma(10);
        e.observe(Instant::now(), 5 * MS, true);
        e.observe(Instant::now(), 100 * MS, true);
        assert_eq!(ms(e.nanos()), 100.0);
        // Failed or abandoned calls raise too.
        e.observe(Instant::now(), 300 * MS, false);
        assert_eq!(ms(e.nanos()), 300.0);
    }

    #[tokio::test(start_paused = true)]
    async fn decays_to_half_the_gap_in_decay_times_ln2() {
        let e = ewma(10);
        e.observe(Instant::now(), 10 * MS, true);
        e.observe(Instant::now(), 110 * MS, true);
        // Steady 10 ms samples every 10 ms for decay × ln 2 ≈ 6.93 s.
        let half_life = Duration::from_secs_f64(10.0 * std::f64::consts::LN_2);
        let start = Instant::now();
        while Instant::now() - start < half_life {
            tokio::time::advance(10 * MS).await;
            e.observe(Instant::now(), 10 * MS, true);
        }
        let gap = ms(e.nanos()) - 10.0;
        assert!((gap - 50.0).abs() < 0.5, "gap {gap} ms, want ~50 ms");
        // The sample rate does not matter: one sample after the same time does the same.
        let f = ewma(10);
        f.observe(Instant::now(), 10 * MS, true);
        f.observe(Instant::now(), 110 * MS, true);
        tokio::time::advance(half_life).await;
        f.observe(Instant::now(), 10 * MS, true);
        assert!((ms(f.nanos()) - 60.0).abs() < 0.01, "{}", ms(f.nanos()));
    }

    #[tokio::test(start_paused = true)]
    async fn failed_calls_never_make_an_endpoint_look_fast() {
        let e = ewma(1);
        e.observe(Instant::now(), 50 * MS, true);
        tokio::time::advance(Duration::from_secs(5)).await;
        e.observe(Instant::now(), MS, false);
        assert_eq!(ms(e.nanos()), 50.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_guard_sent_at_an_instant_times_from_it() {
        let load = Arc::new(Load::timing_rtt(Duration::from_secs(10), 30 * MS));
        let sent = Instant::now();
        tokio::time::advance(7 * MS).await;
        let mut guard = CallGuard::sent_at(load.clone(), sent);
        assert_eq!(load.in_flight(), 1);
        tokio::time::advance(5 * MS).await;
        guard.responded(None);
        drop(guard);
        // 12 ms from the given send time, not 5 ms from the guard's creation.
        assert_eq!(load.rtt(), 12 * MS);
        assert_eq!((load.in_flight(), load.started()), (0, 1));

        // Where round trips are not timed, the instant is ignored.
        let plain = Arc::new(Load::new());
        let mut guard = CallGuard::sent_at(plain.clone(), sent);
        guard.responded(None);
        drop(guard);
        assert_eq!(plain.rtt(), defaults::DEFAULT_RTT);
        assert_eq!((plain.in_flight(), plain.started()), (0, 1));
    }

    #[test]
    fn nanos_agree_with_as_nanos() {
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::new(1, 999_999_999),
            Duration::from_secs(86_400 * 365),
            Duration::from_nanos(u64::MAX),
        ] {
            assert_eq!(u128::from(nanos(d)), d.as_nanos(), "{d:?}");
        }
        assert_eq!(nanos(Duration::MAX), u64::MAX);
    }

    #[test]
    fn sample_weight_is_continuous_at_the_series_limit() {
        let below = sample_weight(SERIES_LIMIT * (1.0 - f64::EPSILON));
        let above = sample_weight(SERIES_LIMIT);
        assert!((below - above).abs() < 1e-9, "{below} vs {above}");
        assert_eq!(sample_weight(0.0), 0.0);
        assert_eq!(sample_weight(f64::INFINITY), 1.0);
    }

    proptest::proptest! {
        /// The weight matches libm's `1 - exp(-x)` to a relative 10⁻⁸ over the series'
        /// range and beyond, down to gaps of a few nanoseconds.
        #[test]
        fn sample_weight_matches_exp(x in 0.0f64..40.0, scale in 0i32..12) {
            let x = x * 10f64.powi(-scale);
            let want = -(-x).exp_m1();
            let got = sample_weight(x);
            proptest::prop_assert!(
                (got - want).abs() <= 1e-8 * want,
                "x {}: {} vs {}", x, got, want
            );
        }
    }

    #[test]
    fn failure_codes() {
        assert!(is_failure(Code::Unavailable));
        assert!(is_failure(Code::DeadlineExceeded));
        assert!(!is_failure(Code::NotFound));
        assert!(!is_failure(Code::Ok));
        assert!(!is_failure(Code::Cancelled));
    }
}
