//! Golden signals per method and per endpoint, and the names they are exported under.
//!
//! Every call is counted in its method's figures: **traffic** (calls), **errors** (by
//! status code), **latency** (from the call's start to the end of its response stream;
//! for a streaming call that is the stream's whole life), and **saturation** (calls in
//! flight). Every endpoint keeps its state, load, RTT estimate, calls, errors and
//! ejections. [`BalancedChannel::stats`](crate::BalancedChannel::stats) reads them in
//! process; with the `metrics` feature they are also reported to the
//! [`metrics`](https://docs.rs/metrics) facade under these names:
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `grpc_client_calls_total` | counter | `method`, `code` | calls ended, by final status (`OK`, `UNAVAILABLE`, ...) |
//! | `grpc_client_call_duration_seconds` | histogram | `method` | call latency |
//! | `grpc_client_calls_in_flight` | gauge | `method` | calls started and not ended |
//! | `grpc_client_attempts_total` | counter | `method`, `kind` | attempts sent: `first`, `retry`, `hedge`, `transparent` |
//! | `grpc_client_retries_throttled_total` | counter | `method` | retries or hedges refused by throttling or the budget |
//! | `grpc_client_endpoint_calls_total` | counter | `endpoint` | attempts sent to the endpoint |
//! | `grpc_client_endpoint_errors_total` | counter | `endpoint` | attempts that failed there (the failure codes, transport errors) |
//! | `grpc_client_endpoint_in_flight` | gauge | `endpoint` | attempts in flight there |
//! | `grpc_client_endpoint_rtt_seconds` | gauge | `endpoint` | its peak-EWMA estimate (channels with a peak_ewma policy) |
//! | `grpc_client_endpoint_ejections_total` | counter | `endpoint` | outlier ejections |
//! | `grpc_client_endpoint_ready` | gauge | `endpoint` | 1 while READY and not ejected, else 0 |
//!
//! `method` is the full path (`/pkg.Service/Method`), `endpoint` the address (`ip:port`).
//!
//! **Cardinality:** a channel keeps figures for at most
//! [`Builder::stats_method_limit`](crate::Builder::stats_method_limit) methods (default
//! [`DEFAULT_STATS_METHOD_LIMIT`]); calls to methods beyond it are counted under
//! `method = "other"` ([`OTHER_METHOD`]), as gRPC's OpenTelemetry plugin does for
//! methods it does not know. When an address is removed, its `endpoint` gauges are set
//! to 0 (`ready`, `rtt`; `in_flight` reaches 0 as its calls drain): the `metrics`
//! facade has no way to delete a series, so to drop them from an exporter, give it an
//! idle timeout (`metrics-exporter-prometheus`: `PrometheusBuilder::idle_timeout`).
//!
//! With the `opentelemetry` feature, the channel also reports gRPC's standard
//! OpenTelemetry instruments and spans, and sends trace context per attempt: see the
//! `stats::otel` module.
//!
//! Tracing: each call is a DEBUG span `grpc.call` with OpenTelemetry's RPC field names
//! (`rpc.system = "grpc"`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`) plus
//! `policy`; each attempt a DEBUG span `grpc.attempt` with `attempt` (1, 2, ...),
//! `transparent`, `server.address` and `server.port` of the picked endpoint, and
//! `rpc.grpc.status_code` when the attempt ends without a response. Connectivity changes,
//! ejections and resolver updates are DEBUG events.

#[cfg(not(feature = "opentelemetry"))]
mod disabled;
mod histogram;
#[cfg(feature = "opentelemetry")]
pub mod otel;

#[cfg(not(feature = "opentelemetry"))]
pub(crate) use disabled::{AttemptTrace, CallTrace, Telemetry};
#[cfg(feature = "opentelemetry")]
pub(crate) use otel::{AttemptTrace, CallTrace, Telemetry};

use crate::connectivity::ConnectivityState;
use crate::resolver::Address;
use arc_swap::ArcSwap;
use histogram::Histogram;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tonic::Code;

/// What kind of attempt was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AttemptKind {
    First,
    Retry,
    Hedge,
    Transparent,
}

impl AttemptKind {
    fn label(self) -> &'static str {
        match self {
            Self::First => "first",
            Self::Retry => "retry",
            Self::Hedge => "hedge",
            Self::Transparent => "transparent",
        }
    }
}

/// The figures of one method.
#[derive(Debug)]
pub(crate) struct MethodStats {
    path: Arc<str>,
    calls: AtomicU64,
    in_flight: AtomicU64,
    codes: [AtomicU64; 17],
    latency: Histogram,
    attempts: [AtomicU64; 4],
    throttled: AtomicU64,
    #[cfg(feature = "metrics")]
    exported: exported::Method,
    /// Its OpenTelemetry attribute sets.
    #[cfg(feature = "opentelemetry")]
    otel: Option<Arc<otel::Method>>,
}

impl MethodStats {
    fn new(path: &str, telemetry: Option<&Arc<Telemetry>>) -> Self {
        #[cfg(not(feature = "opentelemetry"))]
        let _ = telemetry;
        Self {
            path: path.into(),
            calls: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            codes: Default::default(),
            latency: Histogram::default(),
            attempts: Default::default(),
            throttled: AtomicU64::new(0),
            #[cfg(feature = "metrics")]
            exported: exported::Method::new(path),
            // gRFC A66 names the method without its leading slash.
            #[cfg(feature = "opentelemetry")]
            otel: telemetry.map(|t| Arc::new(t.method(path.strip_prefix('/').unwrap_or(path)))),
        }
    }

    pub(crate) fn attempt(&self, kind: AttemptKind) {
        self.attempts[kind as usize].fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.exported.attempt(kind.label());
        #[cfg(not(feature = "metrics"))]
        let _ = kind.label();
    }

    pub(crate) fn throttled(&self) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.exported.throttled.increment(1);
    }
}

/// The entry that methods beyond the limit share, in [`ChannelStats::methods`] and as
/// the `method` label of the exported metrics.
pub const OTHER_METHOD: &str = "other";

pub use crate::defaults::DEFAULT_STATS_METHOD_LIMIT;

/// Every method's figures, found without a lock: a new method copies the map once.
///
/// At most `limit` methods get figures of their own; calls to any further method are
/// counted under [`OTHER_METHOD`]. A method path is whatever the caller put in the
/// request, so without the bound a gateway that forwards arbitrary paths would grow
/// this map, and the exported label sets, without end.
#[derive(Debug)]
pub(crate) struct Stats {
    methods: ArcSwap<HashMap<Arc<str>, Arc<MethodStats>>>,
    limit: usize,
    other: std::sync::OnceLock<Arc<MethodStats>>,
    started: Instant,
    /// Where the channel reports to OpenTelemetry.
    telemetry: Option<Arc<Telemetry>>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new(DEFAULT_STATS_METHOD_LIMIT, None)
    }
}

impl Stats {
    pub(crate) fn new(limit: usize, telemetry: Option<Arc<Telemetry>>) -> Self {
        Self {
            methods: ArcSwap::default(),
            limit,
            other: std::sync::OnceLock::new(),
            started: Instant::now(),
            telemetry,
        }
    }

    /// The channel's OpenTelemetry instruments, if it reports there.
    pub(crate) fn telemetry(&self) -> Option<&Telemetry> {
        self.telemetry.as_deref()
    }

    pub(crate) fn method(&self, path: &str) -> Arc<MethodStats> {
        let methods = self.methods.load();
        if let Some(stats) = methods.get(path) {
            return stats.clone();
        }
        if methods.len() >= self.limit {
            return self.other();
        }
        let fresh = Arc::new(MethodStats::new(path, self.telemetry.as_ref()));
        let mut found = None;
        self.methods.rcu(|methods| {
            let mut methods = HashMap::clone(methods);
            found = match methods.get(path) {
                Some(entry) => Some(entry.clone()),
                // Filled up meanwhile by other new methods.
                None if methods.len() >= self.limit => None,
                None => {
                    methods.insert(path.into(), fresh.clone());
                    Some(fresh.clone())
                }
            };
            methods
        });
        found.unwrap_or_else(|| self.other())
    }

    fn other(&self) -> Arc<MethodStats> {
        self.other
            .get_or_init(|| Arc::new(MethodStats::new(OTHER_METHOD, self.telemetry.as_ref())))
            .clone()
    }

    /// A snapshot of every method.
    pub(crate) fn methods(&self) -> Vec<MethodSnapshot> {
        let uptime = self.started.elapsed();
        let mut methods: Vec<MethodSnapshot> = self
            .methods
            .load()
            .values()
            .chain(self.other.get())
            .map(|m| m.snapshot(uptime))
            .collect();
        methods.sort_by(|a, b| a.method.cmp(&b.method));
        methods
    }

    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// One call in flight: counted when it starts, and once more when it ends however it
/// ends (a final status, an error, or dropped by the caller: CANCELLED).
#[derive(Debug)]
pub(crate) struct CallRecord {
    method: Arc<MethodStats>,
    started: Instant,
    span: tracing::Span,
    /// The call's OpenTelemetry span and counts.
    trace: Option<CallTrace>,
    done: bool,
    /// The call's place under the channel's limit on calls in flight, if it has one.
    _permit: Option<InFlightPermit>,
}

/// A call counted against the channel's limit on calls in flight; counted out when
/// dropped (with the call's record, when the call ends).
#[derive(Debug)]
pub(crate) struct InFlightPermit(Arc<std::sync::atomic::AtomicUsize>);

impl InFlightPermit {
    /// Counts a call in, unless `max` are in flight already.
    pub(crate) fn take(count: &Arc<std::sync::atomic::AtomicUsize>, max: u32) -> Option<Self> {
        let before = count.fetch_add(1, Ordering::Relaxed);
        if before >= max as usize {
            count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Self(count.clone()))
    }
}

impl Drop for InFlightPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl CallRecord {
    /// Starts the record of a call to `path`.
    pub(crate) fn start(method: Arc<MethodStats>, span: tracing::Span, path: &str) -> Self {
        method.in_flight.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        method.exported.in_flight.increment(1.0);
        #[cfg(feature = "opentelemetry")]
        let trace = method
            .otel
            .as_ref()
            .map(|otel| CallTrace::start(otel.clone(), path));
        #[cfg(not(feature = "opentelemetry"))]
        let trace = {
            let _ = path;
            None
        };
        Self {
            method,
            started: Instant::now(),
            span,
            trace,
            done: false,
            _permit: None,
        }
    }

    /// Holds the call's place under the channel's limit on calls in flight until the
    /// call ends.
    pub(crate) fn hold(&mut self, permit: InFlightPermit) {
        self._permit = Some(permit);
    }

    pub(crate) fn method(&self) -> &MethodStats {
        &self.method
    }

    /// The call's OpenTelemetry state, if the channel reports there.
    pub(crate) fn trace(&self) -> Option<&CallTrace> {
        self.trace.as_ref()
    }

    pub(crate) fn finish(mut self, code: Code) {
        self.end(code);
    }

    fn end(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let m = &self.method;
        let elapsed = self.started.elapsed();
        m.in_flight.fetch_sub(1, Ordering::Relaxed);
        m.calls.fetch_add(1, Ordering::Relaxed);
        m.codes[(code as usize).min(16)].fetch_add(1, Ordering::Relaxed);
        m.latency.record(elapsed);
        self.span.record("rpc.grpc.status_code", code as i32);
        #[cfg(feature = "metrics")]
        m.exported.ended(code, elapsed);
        #[cfg(feature = "opentelemetry")]
        if let Some(trace) = &mut self.trace {
            trace.finish(code, elapsed);
        }
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        // Dropped before it ended: the caller cancelled it.
        self.end(Code::Cancelled);
    }
}

// === snapshots ===

/// What [`BalancedChannel::stats`](crate::BalancedChannel::stats) returns: the golden
/// signals of every method called so far, and the state of every endpoint.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ChannelStats {
    /// Since the channel was built.
    pub uptime: Duration,
    /// Per method, sorted by path.
    pub methods: Vec<MethodSnapshot>,
    /// Per endpoint, in resolver order.
    pub endpoints: Vec<EndpointSnapshot>,
    /// The keepalive time of new connections, if [keepalive] is on: the configured one,
    /// doubled after each GOAWAY `too_many_pings` (gRFC A8).
    ///
    /// [keepalive]: crate::Builder::keepalive
    pub keepalive_time: Option<Duration>,
}

/// One method's golden signals since the channel was built.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct MethodSnapshot {
    /// The full path, `/pkg.Service/Method`.
    pub method: String,
    /// Traffic: calls ended.
    pub calls: u64,
    /// Traffic: calls ended per second of uptime.
    pub calls_per_second: f64,
    /// Errors: calls ended with each non-OK status, by code name (`UNAVAILABLE`).
    pub errors: BTreeMap<String, u64>,
    /// Errors: the share of calls that did not end OK.
    pub error_rate: f64,
    /// Latency percentiles (within about 9 %), or `None` before the first call ends.
    pub latency: Option<LatencySummary>,
    /// Saturation: calls in flight now.
    pub in_flight: u64,
    /// Attempts sent: first ones, retries, hedges and transparent retries.
    pub attempts: AttemptCounts,
    /// Retries or hedges refused by throttling or the retry budget.
    pub throttled: u64,
}

/// Latency percentiles of a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LatencySummary {
    /// Median.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest call.
    pub max: Duration,
}

/// Attempts by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AttemptCounts {
    /// First attempts (one per call that got a pick).
    pub first: u64,
    /// Retries under a retry policy.
    pub retries: u64,
    /// Hedges beyond the first attempt.
    pub hedges: u64,
    /// Attempts resent because the previous one never left the client.
    pub transparent: u64,
}

/// One endpoint's state and load.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct EndpointSnapshot {
    /// Its address.
    pub address: Address,
    /// Its connectivity state.
    pub state: ConnectivityState,
    /// Whether outlier detection has ejected it.
    pub ejected: bool,
    /// Attempts in flight there.
    pub in_flight: usize,
    /// Attempts sent there.
    pub calls: u64,
    /// Attempts that failed there.
    pub errors: u64,
    /// Times ejected as an outlier.
    pub ejections: u64,
    /// Its peak-EWMA round-trip estimate, on channels with a peak_ewma policy.
    pub rtt: Option<Duration>,
    /// Connections opened to it (each one READY at least once).
    pub connections: u64,
    /// HTTP/2 PINGs sent on its connections (liveness checks and keepalive).
    pub pings: u64,
    /// Its connections declared dead for want of a PING ACK.
    pub dead_connections: u64,
}

impl MethodStats {
    fn snapshot(&self, uptime: Duration) -> MethodSnapshot {
        let calls = self.calls.load(Ordering::Relaxed);
        let errors: BTreeMap<String, u64> = (1..17)
            .filter_map(|i| {
                let n = self.codes[i].load(Ordering::Relaxed);
                (n > 0).then(|| (code_name(Code::from_i32(i as i32)).to_owned(), n))
            })
            .collect();
        let failed: u64 = errors.values().sum();
        let latency = self
            .latency
            .quantiles([0.5, 0.95, 0.99])
            .map(|[p50, p95, p99]| LatencySummary {
                p50,
                p95,
                p99,
                max: self.latency.max(),
            });
        let count = |k: AttemptKind| self.attempts[k as usize].load(Ordering::Relaxed);
        MethodSnapshot {
            method: self.path.to_string(),
            calls,
            calls_per_second: calls as f64 / uptime.as_secs_f64().max(1e-9),
            error_rate: if calls == 0 {
                0.0
            } else {
                failed as f64 / calls as f64
            },
            errors,
            latency,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            attempts: AttemptCounts {
                first: count(AttemptKind::First),
                retries: count(AttemptKind::Retry),
                hedges: count(AttemptKind::Hedge),
                transparent: count(AttemptKind::Transparent),
            },
            throttled: self.throttled.load(Ordering::Relaxed),
        }
    }
}

/// The name gRPC gives a status code: `UNAVAILABLE`, `OK`, ...
pub fn code_name(code: Code) -> &'static str {
    crate::config::code_name(code)
}

/// Handles into the `metrics` facade, made once per method or endpoint so a call only
/// bumps atomics.
#[cfg(feature = "metrics")]
pub(crate) mod exported {
    use super::code_name;
    use metrics::{Counter, Gauge, Histogram};
    use std::sync::OnceLock;
    use std::time::Duration;
    use tonic::Code;

    #[derive(Debug)]
    pub(crate) struct Method {
        path: String,
        calls: [OnceLock<Counter>; 17],
        duration: Histogram,
        pub(crate) in_flight: Gauge,
        attempts: [OnceLock<Counter>; 4],
        pub(crate) throttled: Counter,
    }

    impl Method {
        pub(crate) fn new(path: &str) -> Self {
            let label = || ("method", path.to_owned());
            Self {
                path: path.to_owned(),
                calls: Default::default(),
                duration: metrics::histogram!("grpc_client_call_duration_seconds", &[label()]),
                in_flight: metrics::gauge!("grpc_client_calls_in_flight", &[label()]),
                attempts: Default::default(),
                throttled: metrics::counter!("grpc_client_retries_throttled_total", &[label()]),
            }
        }

        pub(crate) fn ended(&self, code: Code, elapsed: Duration) {
            let counter = self.calls[(code as usize).min(16)].get_or_init(|| {
                metrics::counter!(
                    "grpc_client_calls_total",
                    &[
                        ("method", self.path.clone()),
                        ("code", code_name(code).to_owned())
                    ]
                )
            });
            counter.increment(1);
            self.duration.record(elapsed.as_secs_f64());
            self.in_flight.decrement(1.0);
        }

        pub(crate) fn attempt(&self, kind: &'static str) {
            let slot = match kind {
                "first" => 0,
                "retry" => 1,
                "hedge" => 2,
                _ => 3,
            };
            self.attempts[slot]
                .get_or_init(|| {
                    metrics::counter!(
                        "grpc_client_attempts_total",
                        &[("method", self.path.clone()), ("kind", kind.to_owned())]
                    )
                })
                .increment(1);
        }
    }
}
