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

/// One arm's figures. In the `overhead` scenario, `calls` to `backend_share` add up the
/// arm's runs at full concurrency over every round (not its concurrency-1 runs).
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
    /// `overhead` scenario only (absent elsewhere): how the arm compares with a direct
    /// tonic channel over interleaved rounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overhead: Option<Overhead>,
    /// `subsetting` scenario only (absent elsewhere): how the arm's subsets spread
    /// connections and load over the servers. There `calls` and `backend_share` count
    /// simulated picks for the simulated arms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subsetting: Option<SubsettingFigures>,
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

/// Least, mean and largest of a set of counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Spread {
    /// The least.
    pub min: f64,
    /// The mean.
    pub mean: f64,
    /// The largest.
    pub max: f64,
}

/// The `subsetting` scenario's figures for one arm.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SubsettingFigures {
    /// Clients (channels).
    pub clients: usize,
    /// Servers (backends).
    pub servers: usize,
    /// Servers in each client's subset.
    pub subset_size: usize,
    /// Connections each client holds.
    pub connections_per_client: Spread,
    /// Connections each server receives.
    pub connections_per_server: Spread,
    /// Calls each server serves when every client sends the same number, round-robin
    /// over its subset.
    pub calls_per_server: Spread,
    /// The busiest server's calls over the mean: 1.0 is a perfect spread.
    pub max_over_mean_load: f64,
    /// Subset members each client changes, on average, when one server leaves.
    /// Absent where not measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn_per_client: Option<f64>,
}

/// The `overhead` scenario's figures for one arm.
///
/// The arms take turns: each round runs every arm once at full concurrency (in an order
/// rotated by one each round, so no arm always follows the same one), then every arm
/// at concurrency 1. Comparing arms within a round cancels the machine's drift, and the
/// median over rounds ignores a round disturbed by something else on the machine.
#[derive(Clone, Debug, Serialize)]
pub struct Overhead {
    /// Rounds run.
    pub rounds: usize,
    /// The arm's throughput in each round at full concurrency, OK calls per second.
    pub round_throughput_rps: Vec<f64>,
    /// The median over rounds of this arm's throughput divided by `direct`'s in the same
    /// round. Absent when `direct` did not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput_ratio_to_direct: Option<f64>,
    /// Process CPU time (user + system, from `getrusage`) per call over the arm's runs at
    /// full concurrency, in microseconds. Client and in-process backend together: the
    /// backend's share is the same for every arm, so differences are the client's.
    /// Absent where `getrusage` is not available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_call: Option<f64>,
    /// Calls made at concurrency 1, over every round.
    pub single_calls: u64,
    /// Median latency at concurrency 1, in milliseconds (0 when none were made).
    pub single_p50_ms: f64,
    /// `single_p50_ms` minus `direct`'s, in microseconds. Absent when `direct` did not
    /// run or no call was made at concurrency 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub added_p50_us: Option<f64>,
}
