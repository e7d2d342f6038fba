//! What a benchmark run produces: `results.json`'s schema, plus the series the HTML
//! report plots.

use serde::Serialize;
use std::collections::BTreeMap;

/// One scenario's results: an entry of `results.json`.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioResult {
    /// The scenario's name (`one-slow`, ...).
    pub scenario: String,
    /// The seed every arm ran with.
    pub seed: u64,
    /// One entry per arm, in the order they ran.
    pub arms: Vec<ArmResult>,
    /// Not in `results.json`: what the report says about the run.
    #[serde(skip)]
    pub notes: Vec<String>,
    /// Not in `results.json`: the backend the scenario singles out (the slow, pinned or
    /// killed one), whose share the table shows.
    #[serde(skip)]
    pub marked_backend: Option<String>,
}

/// One arm's figures.
#[derive(Clone, Debug, Serialize)]
pub struct ArmResult {
    /// The arm's name (`round_robin`, `tonic_balance`, ...).
    pub arm: String,
    /// Calls issued.
    pub calls: u64,
    /// Calls that ended OK.
    pub ok: u64,
    /// Failed calls by status code name (`UNAVAILABLE`, ...); `ok + Σ errors = calls`.
    pub errors: BTreeMap<String, u64>,
    /// Attempts sent, retries and hedges included.
    pub attempts: u64,
    /// Successful calls per second of the arm's wall time.
    pub throughput_rps: f64,
    /// Latency percentiles of all calls, from the scheduled start, in milliseconds.
    pub latency_ms: Percentiles,
    /// Share of OK calls each backend served, by server id; sums to 1 when any call
    /// succeeded.
    pub backend_share: BTreeMap<String, f64>,
    /// Not in `results.json`: the latency CDF, as (latency ms, fraction of calls ≤ it).
    #[serde(skip)]
    pub cdf: Vec<(f64, f64)>,
    /// Not in `results.json`: OK calls per backend in equal slices of the run, by
    /// scheduled start.
    #[serde(skip)]
    pub share_over_time: Vec<BTreeMap<String, u64>>,
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest call.
    pub max: f64,
}
