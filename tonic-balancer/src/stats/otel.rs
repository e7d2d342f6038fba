//! OpenTelemetry export (feature `opentelemetry`): gRPC's standard instruments and spans.
//!
//! Dashboards and alerts built for gRPC's OpenTelemetry plugins (grpc-go, grpc-java,
//! C-core and grpcio) read the same instruments from a [`BalancedChannel`]: the
//! per-attempt and per-call instruments of gRFC A66, the subchannel instruments of A94,
//! the retry instruments of A96 (opt-in, as in gRPC), and this crate's own LB
//! instruments under `grpc.lb.<policy>.` (A79's naming). Calls and attempts are CLIENT
//! spans named as gRFC A72 names them, and each attempt's span context travels to the
//! server in its metadata.
//!
//! Only the `opentelemetry` API is used: the SDK, its readers, exporters and views are
//! the application's choice. A channel takes the global meter and tracer providers as
//! they are when [`Builder::build`](crate::Builder::build) runs, unless
//! [`Builder::opentelemetry`](crate::Builder::opentelemetry) gives it others.
//!
//! # Instruments
//!
//! | name | type | unit | attributes |
//! |---|---|---|---|
//! | `grpc.client.attempt.started` | counter | `{attempt}` | `grpc.method`, `grpc.target` |
//! | `grpc.client.attempt.duration` | histogram | `s` | `grpc.method`, `grpc.target`, `grpc.status` |
//! | `grpc.client.attempt.sent_total_compressed_message_size` | histogram | `By` | `grpc.method`, `grpc.target`, `grpc.status` |
//! | `grpc.client.attempt.rcvd_total_compressed_message_size` | histogram | `By` | `grpc.method`, `grpc.target`, `grpc.status` |
//! | `grpc.client.call.duration` | histogram | `s` | `grpc.method`, `grpc.target`, `grpc.status` |
//! | `grpc.client.call.retries` (opt-in) | histogram | `{retry}` | `grpc.method`, `grpc.target` |
//! | `grpc.client.call.transparent_retries` (opt-in) | histogram | `{transparent_retry}` | `grpc.method`, `grpc.target` |
//! | `grpc.client.call.hedges` (opt-in) | histogram | `{hedge}` | `grpc.method`, `grpc.target` |
//! | `grpc.client.call.retry_delay` (opt-in) | histogram | `s` | `grpc.method`, `grpc.target` |
//! | `grpc.subchannel.connection_attempts_succeeded` | counter | `{attempt}` | `grpc.target` |
//! | `grpc.subchannel.connection_attempts_failed` | counter | `{attempt}` | `grpc.target` |
//! | `grpc.subchannel.disconnections` | counter | `{disconnection}` | `grpc.target` |
//! | `grpc.subchannel.open_connections` | up-down counter | `{connection}` | `grpc.target` |
//! | `grpc.lb.outlier_detection.ejections` | counter | `{ejection}` | `grpc.target` |
//! | `grpc.lb.tonic_balancer.picks_failed` | counter | `{pick}` | `grpc.target` |
//! | `grpc.lb.tonic_balancer.queue_wait` | histogram | `s` | `grpc.target` |
//! | `grpc.lb.tonic_balancer.panic_mode` | gauge | `{bool}` | `grpc.target` |
//!
//! - `grpc.target` is the target string as given to
//!   [`BalancedChannel::builder`](crate::BalancedChannel::builder).
//! - `grpc.status` is the status code's name (`OK`, `UNAVAILABLE`, ...).
//! - `grpc.method` is the full method name without its leading slash
//!   (`grpc.testing.TestService/UnaryCall`). gRFC A66 reports `"other"` for methods the
//!   client does not know, so that arbitrary paths cannot explode the number of series;
//!   this crate cannot tell generated methods from others, so it applies its
//!   [`stats_method_limit`](crate::Builder::stats_method_limit) (default 256): the first
//!   methods a channel sees are reported by name, every later one as `"other"`.
//! - Latency histograms use gRPC's boundaries ([`LATENCY_BOUNDARIES`]), size histograms
//!   gRPC's ([`SIZE_BOUNDARIES`]), as hints to the SDK; a view can override them.
//! - Sizes count the gRPC messages' bytes as they went on the wire (compressed when the
//!   message was), without the 5-byte message prefix, as gRPC counts them; a streaming
//!   request's messages are counted as its body is sent.
//! - An attempt ends when its response stream ends; an attempt that got no pick, or a
//!   hedge that lost, ends at once (a lost hedge as `CANCELLED`).
//! - The A94 instruments leave out the optional `grpc.lb.locality` attribute.
//!
//! # Spans
//!
//! Each call is a CLIENT span `Sent.<service>.<method>` and each attempt a CLIENT span
//! `Attempt.<service>.<method>` below it, with OpenTelemetry's RPC attributes:
//! `rpc.system = "grpc"`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`, and on
//! attempts `server.address`, `server.port`, `previous-rpc-attempts` and
//! `transparent-retry`. Attempts record `Outbound message` and `Inbound message` events
//! with `message-size`; calls record `Retry backoff` events with the delay. A call's
//! parent is the current OpenTelemetry [`Context`].
//!
//! Every attempt carries its span context in its request metadata through the global
//! text-map propagator (W3C `traceparent` with the SDK's `TraceContextPropagator`), and
//! as the binary `grpc-trace-bin` header when
//! [`OpenTelemetry::grpc_trace_bin`] asks for it.
//!
//! # Cost
//!
//! Attribute sets are built once per method and status. With the no-op tracer (no
//! tracer provider installed when the channel was built) a call makes no span at all,
//! once the first call has shown the tracer to be a no-op; a caller's span context is
//! still passed on. With a sampler that drops the call, the call asks the tracer once
//! and makes no attempt spans.
//!
//! [`BalancedChannel`]: crate::BalancedChannel

use super::code_name;
use crate::retry::Framing;
use opentelemetry::global::{BoxedSpan, BoxedTracer};
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, MeterProvider, UpDownCounter};
use opentelemetry::propagation::Injector;
use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanKind, Status as SpanStatus, TraceContextExt,
    Tracer as _, TracerProvider,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tonic::Code;

/// gRPC's latency boundaries in seconds (gRFC A66), for every duration histogram.
pub const LATENCY_BOUNDARIES: [f64; 41] = [
    0.0, 0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002, 0.003, 0.004, 0.005,
    0.006, 0.008, 0.01, 0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13, 0.16,
    0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
];

/// gRPC's message size boundaries in bytes (gRFC A66): 0, then 1 KiB to 4 GiB.
pub const SIZE_BOUNDARIES: [f64; 14] = [
    0.0,
    1024.0,
    2048.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
    4_294_967_296.0,
];

/// Boundaries of the per-call retry and hedge counts (A96 instruments).
const COUNT_BOUNDARIES: [f64; 6] = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];

/// The instrumentation scope of every instrument and tracer the crate makes.
fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("tonic-balancer")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// How a channel reports to OpenTelemetry: which providers, and the optional parts.
///
/// [`OpenTelemetry::default`] takes the global providers when the channel is built.
///
/// ```
/// # use tonic_balancer::OpenTelemetry;
/// let telemetry = OpenTelemetry::default()
///     .optional_retry_metrics(true)
///     .grpc_trace_bin(true);
/// # let _ = telemetry;
/// ```
#[derive(Clone, Default)]
pub struct OpenTelemetry {
    meter: Option<Meter>,
    tracer: Option<Arc<BoxedTracer>>,
    retry_metrics: bool,
    trace_bin: bool,
}

impl fmt::Debug for OpenTelemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenTelemetry")
            .field("meter", &self.meter.as_ref().map_or("global", |_| "given"))
            .field(
                "tracer",
                &self.tracer.as_ref().map_or("global", |_| "given"),
            )
            .field("retry_metrics", &self.retry_metrics)
            .field("grpc_trace_bin", &self.trace_bin)
            .finish()
    }
}

impl OpenTelemetry {
    /// Reports metrics to this provider instead of the global one.
    pub fn meter_provider<P: MeterProvider + ?Sized>(mut self, provider: &P) -> Self {
        self.meter = Some(provider.meter_with_scope(scope()));
        self
    }

    /// Records spans with this provider instead of the global one.
    pub fn tracer_provider<P>(mut self, provider: &P) -> Self
    where
        P: TracerProvider,
        P::Tracer: Send + Sync + 'static,
        <P::Tracer as opentelemetry::trace::Tracer>::Span: Send + Sync + 'static,
    {
        let tracer = provider.tracer_with_scope(scope());
        self.tracer = Some(Arc::new(BoxedTracer::new(Box::new(tracer))));
        self
    }

    /// Also reports gRFC A96's per-call retry instruments (`grpc.client.call.retries`,
    /// `transparent_retries`, `hedges`, `retry_delay`). Off by default, as in gRPC.
    pub fn optional_retry_metrics(mut self, enabled: bool) -> Self {
        self.retry_metrics = enabled;
        self
    }

    /// Also sends each attempt's span context as the binary `grpc-trace-bin` header
    /// (OpenCensus' format, which some gRPC servers still read), beside what the global
    /// propagator writes. Off by default.
    pub fn grpc_trace_bin(mut self, enabled: bool) -> Self {
        self.trace_bin = enabled;
        self
    }

    /// The channel's instruments, made once.
    pub(crate) fn build(&self, target: &str) -> Arc<Telemetry> {
        let meter = self
            .meter
            .clone()
            .unwrap_or_else(|| opentelemetry::global::meter_provider().meter_with_scope(scope()));
        let tracer = self
            .tracer
            .clone()
            .unwrap_or_else(|| Arc::new(opentelemetry::global::tracer_with_scope(scope())));
        Arc::new(Telemetry::new(&meter, tracer, target, self))
    }
}

/// A channel's instruments and tracer, shared by its calls, subchannels and control
/// task.
pub(crate) struct Telemetry {
    target: KeyValue,
    tracer: Arc<BoxedTracer>,
    /// Set once the tracer showed it is a no-op (a root span without a valid span
    /// context): from then on calls make no span at all.
    tracer_is_noop: std::sync::atomic::AtomicBool,
    trace_bin: bool,
    attempt_started: Counter<u64>,
    attempt_duration: Histogram<f64>,
    attempt_sent: Histogram<u64>,
    attempt_rcvd: Histogram<u64>,
    call_duration: Histogram<f64>,
    retries: Option<RetryInstruments>,
    connects_succeeded: Counter<u64>,
    connects_failed: Counter<u64>,
    disconnections: Counter<u64>,
    open_connections: UpDownCounter<i64>,
    ejections: Counter<u64>,
    picks_failed: Counter<u64>,
    queue_wait: Histogram<f64>,
    panic_mode: Gauge<u64>,
}

struct RetryInstruments {
    retries: Histogram<u64>,
    transparent: Histogram<u64>,
    hedges: Histogram<u64>,
    delay: Histogram<f64>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("target", &self.target.value)
            .field("retry_metrics", &self.retries.is_some())
            .field("grpc_trace_bin", &self.trace_bin)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    fn new(meter: &Meter, tracer: Arc<BoxedTracer>, target: &str, options: &OpenTelemetry) -> Self {
        let latency = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(LATENCY_BOUNDARIES.to_vec())
                .build()
        };
        let size = |name: &'static str, description: &'static str| {
            meter
                .u64_histogram(name)
                .with_unit("By")
                .with_description(description)
                .with_boundaries(SIZE_BOUNDARIES.to_vec())
                .build()
        };
        let counter = |name: &'static str, unit: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_unit(unit)
                .with_description(description)
                .build()
        };
        let count = |name: &'static str, unit: &'static str, description: &'static str| {
            meter
                .u64_histogram(name)
                .with_unit(unit)
                .with_description(description)
                .with_boundaries(COUNT_BOUNDARIES.to_vec())
                .build()
        };
        let retries = options.retry_metrics.then(|| RetryInstruments {
            retries: count(
                "grpc.client.call.retries",
                "{retry}",
                "Number of retries during the client call, if any",
            ),
            transparent: count(
                "grpc.client.call.transparent_retries",
                "{transparent_retry}",
                "Number of transparent retries during the client call, if any",
            ),
            hedges: count(
                "grpc.client.call.hedges",
                "{hedge}",
                "Number of hedges during the client call, if any",
            ),
            delay: latency(
                "grpc.client.call.retry_delay",
                "Total time of delay while there is no active attempt during the client call",
            ),
        });
        Self {
            target: KeyValue::new("grpc.target", Arc::<str>::from(target)),
            tracer,
            tracer_is_noop: std::sync::atomic::AtomicBool::new(false),
            trace_bin: options.trace_bin,
            attempt_started: counter(
                "grpc.client.attempt.started",
                "{attempt}",
                "Number of client call attempts started",
            ),
            attempt_duration: latency(
                "grpc.client.attempt.duration",
                "End-to-end time taken to complete a client call attempt",
            ),
            attempt_sent: size(
                "grpc.client.attempt.sent_total_compressed_message_size",
                "Compressed message bytes sent per client call attempt",
            ),
            attempt_rcvd: size(
                "grpc.client.attempt.rcvd_total_compressed_message_size",
                "Compressed message bytes received per call attempt",
            ),
            call_duration: latency(
                "grpc.client.call.duration",
                "Time taken by gRPC to complete an RPC from application's perspective",
            ),
            retries,
            connects_succeeded: counter(
                "grpc.subchannel.connection_attempts_succeeded",
                "{attempt}",
                "Number of successful connection attempts",
            ),
            connects_failed: counter(
                "grpc.subchannel.connection_attempts_failed",
                "{attempt}",
                "Number of failed connection attempts",
            ),
            disconnections: counter(
                "grpc.subchannel.disconnections",
                "{disconnection}",
                "Number of times the selected subchannel becomes disconnected",
            ),
            open_connections: meter
                .i64_up_down_counter("grpc.subchannel.open_connections")
                .with_unit("{connection}")
                .with_description("Number of open connections")
                .build(),
            ejections: counter(
                "grpc.lb.outlier_detection.ejections",
                "{ejection}",
                "Number of endpoints ejected as outliers",
            ),
            picks_failed: counter(
                "grpc.lb.tonic_balancer.picks_failed",
                "{pick}",
                "Number of picks that failed: no READY endpoint, or the deadline passed",
            ),
            queue_wait: latency(
                "grpc.lb.tonic_balancer.queue_wait",
                "Time a pick waited for a READY endpoint",
            ),
            panic_mode: meter
                .u64_gauge("grpc.lb.tonic_balancer.panic_mode")
                .with_unit("{bool}")
                .with_description(
                    "1 while too few endpoints are healthy and every connected one is used",
                )
                .build(),
        }
    }

    fn target(&self) -> &[KeyValue] {
        std::slice::from_ref(&self.target)
    }

    /// The attribute sets of one method (its `grpc.method` value is `name`).
    pub(crate) fn method(self: &Arc<Self>, name: &str) -> Method {
        let method = KeyValue::new("grpc.method", Arc::<str>::from(name));
        let status: Box<[[KeyValue; 3]; 17]> = Box::new(std::array::from_fn(|code| {
            [
                method.clone(),
                self.target.clone(),
                KeyValue::new("grpc.status", code_name(Code::from_i32(code as i32))),
            ]
        }));
        Method {
            telemetry: self.clone(),
            base: [method, self.target.clone()],
            status,
        }
    }

    /// A connection attempt of a subchannel ended.
    pub(crate) fn connected(&self, ok: bool) {
        if ok {
            self.connects_succeeded.add(1, self.target());
            self.open_connections.add(1, self.target());
        } else {
            self.connects_failed.add(1, self.target());
        }
    }

    /// A connection that had been READY closed.
    pub(crate) fn disconnected(&self) {
        self.disconnections.add(1, self.target());
        self.open_connections.add(-1, self.target());
    }

    /// Outlier detection ejected an endpoint.
    pub(crate) fn ejected(&self) {
        self.ejections.add(1, self.target());
    }

    /// Whether the channel is in panic mode, after each change of its picker.
    pub(crate) fn panic_mode(&self, on: bool) {
        self.panic_mode.record(u64::from(on), self.target());
    }

    /// A call's pick waited `waited` for a READY endpoint, and got one or not.
    pub(crate) fn queued(&self, waited: Duration, picked: bool) {
        self.queue_wait.record(waited.as_secs_f64(), self.target());
        if !picked {
            self.picks_failed.add(1, self.target());
        }
    }
}

// === impl Method ===

/// One method's attribute sets, made once so that recording allocates nothing.
pub(crate) struct Method {
    telemetry: Arc<Telemetry>,
    /// `grpc.method`, `grpc.target`.
    base: [KeyValue; 2],
    /// The same and `grpc.status`, by code.
    status: Box<[[KeyValue; 3]; 17]>,
}

impl fmt::Debug for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Method")
            .field("grpc.method", &self.base[0].value)
            .finish_non_exhaustive()
    }
}

impl Method {
    fn with_status(&self, code: Code) -> &[KeyValue] {
        &self.status[(code as usize).min(16)]
    }
}

/// `/pkg.Service/Method` as (`pkg.Service`, `Method`).
fn split_path(path: &str) -> (&str, &str) {
    path.strip_prefix('/')
        .and_then(|p| p.rsplit_once('/'))
        .unwrap_or(("", path))
}

// === impl CallTrace ===

/// One call's OpenTelemetry state: its span (when recorded or passed on) and the
/// counts of A96.
pub(crate) struct CallTrace {
    method: Arc<Method>,
    /// The call span in a context, when it records or carries the caller's trace.
    cx: Option<Context>,
    recording: bool,
    retries: AtomicU32,
    transparent: AtomicU32,
    hedges: AtomicU32,
    delay_nanos: AtomicU64,
}

impl fmt::Debug for CallTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallTrace")
            .field("recording", &self.recording)
            .finish_non_exhaustive()
    }
}

impl CallTrace {
    /// Starts a call to `path`: its span is a child of the current context.
    pub(crate) fn start(method: Arc<Method>, path: &str) -> Self {
        let telemetry = &method.telemetry;
        if telemetry.tracer_is_noop.load(Ordering::Relaxed) {
            // Nothing records here: only a caller's trace is passed on.
            let cx =
                Context::map_current(|cx| cx.span().span_context().is_valid().then(|| cx.clone()));
            return Self::new(method, cx, false);
        }
        let tracer = &telemetry.tracer;
        let parent = Context::current();
        // A static name first: a tracer that records nothing costs no allocation.
        let span: BoxedSpan = tracer.build_with_context(
            SpanBuilder::from_name(Cow::Borrowed("Sent")).with_kind(SpanKind::Client),
            &parent,
        );
        let recording = span.is_recording();
        let parent_valid = parent.span().span_context().is_valid();
        if !recording
            && !parent_valid
            && !parent.is_telemetry_suppressed()
            && !span.span_context().is_valid()
        {
            // A root span with no ids: the no-op tracer, which the channel keeps for
            // its life (an SDK tracer gives even the spans it drops valid ids; it
            // gives none only while telemetry is suppressed, or once shut down).
            telemetry.tracer_is_noop.store(true, Ordering::Relaxed);
        }
        let cx = if recording {
            let (service, name) = split_path(path);
            let mut span = span;
            span.update_name(Cow::Owned(format!("Sent.{service}.{name}")));
            span.set_attribute(KeyValue::new("rpc.system", "grpc"));
            span.set_attribute(KeyValue::new("rpc.service", service.to_owned()));
            span.set_attribute(KeyValue::new("rpc.method", name.to_owned()));
            Some(parent.with_span(span))
        } else if parent_valid {
            // Nothing records here, but the caller's trace goes on to the server.
            Some(parent)
        } else {
            None
        };
        Self::new(method, cx, recording)
    }

    fn new(method: Arc<Method>, cx: Option<Context>, recording: bool) -> Self {
        Self {
            method,
            cx,
            recording,
            retries: AtomicU32::new(0),
            transparent: AtomicU32::new(0),
            hedges: AtomicU32::new(0),
            delay_nanos: AtomicU64::new(0),
        }
    }

    /// Starts an attempt; `previous` attempts came before it.
    pub(crate) fn attempt(
        &self,
        kind: super::AttemptKind,
        previous: u32,
        path: &str,
    ) -> AttemptTrace {
        use super::AttemptKind;
        let counter = match kind {
            AttemptKind::First => None,
            AttemptKind::Retry => Some(&self.retries),
            AttemptKind::Hedge => Some(&self.hedges),
            AttemptKind::Transparent => Some(&self.transparent),
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let telemetry = &self.method.telemetry;
        telemetry.attempt_started.add(1, &self.method.base);
        let span = match (&self.cx, self.recording) {
            (Some(cx), true) => {
                let mut span: BoxedSpan = telemetry.tracer.build_with_context(
                    SpanBuilder::from_name(Cow::Borrowed("Attempt")).with_kind(SpanKind::Client),
                    cx,
                );
                if span.is_recording() {
                    let (service, name) = split_path(path);
                    span.update_name(Cow::Owned(format!("Attempt.{service}.{name}")));
                    span.set_attribute(KeyValue::new("rpc.system", "grpc"));
                    span.set_attribute(KeyValue::new("rpc.service", service.to_owned()));
                    span.set_attribute(KeyValue::new("rpc.method", name.to_owned()));
                    span.set_attribute(KeyValue::new("previous-rpc-attempts", i64::from(previous)));
                    span.set_attribute(KeyValue::new(
                        "transparent-retry",
                        kind == AttemptKind::Transparent,
                    ));
                }
                let event = match kind {
                    AttemptKind::First => None,
                    AttemptKind::Retry => Some("Retry attempt"),
                    AttemptKind::Hedge => Some("Hedge attempt"),
                    AttemptKind::Transparent => Some("Transparent retry"),
                };
                if let Some(event) = event {
                    cx.span().add_event(
                        event,
                        vec![KeyValue::new("previous-rpc-attempts", i64::from(previous))],
                    );
                }
                Some(span)
            }
            _ => None,
        };
        AttemptTrace {
            method: self.method.clone(),
            started: Instant::now(),
            span,
            carried: self
                .cx
                .as_ref()
                .filter(|_| !self.recording)
                .map(|cx| cx.span().span_context().clone()),
            sent: None,
            streamed: None,
            rcvd: 0,
            messages: 0,
            framing: Framing::default(),
            done: false,
        }
    }

    /// The call waits `delay` before its next attempt (a retry's backoff or pushback).
    pub(crate) fn backoff(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.delay_nanos.fetch_add(nanos, Ordering::Relaxed);
        if let (Some(cx), true) = (&self.cx, self.recording) {
            cx.span().add_event(
                "Retry backoff",
                vec![KeyValue::new("delay", delay.as_secs_f64())],
            );
        }
    }

    /// The call ends with `code` after `elapsed`.
    pub(crate) fn finish(&mut self, code: Code, elapsed: Duration) {
        let method = &self.method;
        let telemetry = &method.telemetry;
        telemetry
            .call_duration
            .record(elapsed.as_secs_f64(), method.with_status(code));
        if let Some(retries) = &telemetry.retries {
            let record = |histogram: &Histogram<u64>, n: &AtomicU32| {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    histogram.record(u64::from(n), &method.base);
                }
            };
            record(&retries.retries, &self.retries);
            record(&retries.transparent, &self.transparent);
            record(&retries.hedges, &self.hedges);
            let delay = self.delay_nanos.load(Ordering::Relaxed);
            if delay > 0 || self.retries.load(Ordering::Relaxed) > 0 {
                retries
                    .delay
                    .record(Duration::from_nanos(delay).as_secs_f64(), &method.base);
            }
        }
        if let (Some(cx), true) = (self.cx.take(), self.recording) {
            let span = cx.span();
            span.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
            if code != Code::Ok {
                span.set_status(SpanStatus::error(code_name(code)));
            }
            span.end();
        }
    }
}

// === impl AttemptTrace ===

/// One attempt's OpenTelemetry state: its start, span and message sizes. Dropped
/// before it finished, it ends as CANCELLED (a hedge that lost).
pub(crate) struct AttemptTrace {
    method: Arc<Method>,
    started: Instant,
    span: Option<BoxedSpan>,
    /// The caller's span context, passed on when nothing records here.
    carried: Option<SpanContext>,
    sent: Option<u64>,
    /// A streaming request's message bytes, counted as its body is sent.
    streamed: Option<Arc<AtomicU64>>,
    rcvd: u64,
    messages: u32,
    framing: Framing,
    done: bool,
}

impl fmt::Debug for AttemptTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptTrace")
            .field("recording", &self.span.is_some())
            .field("sent", &self.sent)
            .field("rcvd", &self.rcvd)
            .finish_non_exhaustive()
    }
}

impl AttemptTrace {
    /// The attempt is about to be sent to `addr` with these request headers and this
    /// whole body (`None` for a streaming body): writes the trace context into the
    /// headers.
    pub(crate) fn sent(
        &mut self,
        addr: &crate::resolver::Peer,
        headers: &mut http::HeaderMap,
        body: Option<&[u8]>,
    ) {
        self.sent = body.map(|body| {
            let mut total = 0;
            Framing::default().feed(body, |size| total += size);
            total
        });
        let context = match &mut self.span {
            Some(span) => {
                match addr.socket() {
                    Some(addr) => {
                        span.set_attribute(KeyValue::new("server.address", addr.ip().to_string()));
                        span.set_attribute(KeyValue::new("server.port", i64::from(addr.port())));
                    }
                    // A Unix socket: its path, and no port (OpenTelemetry's conventions).
                    None => {
                        span.set_attribute(KeyValue::new("server.address", addr.to_string()));
                        span.set_attribute(KeyValue::new("network.transport", "unix"));
                    }
                }
                if let Some(size) = self.sent {
                    span.add_event(
                        "Outbound message",
                        vec![
                            KeyValue::new("sequence-number", 0i64),
                            KeyValue::new("message-size", size as i64),
                        ],
                    );
                }
                Some(span.span_context().clone())
            }
            None => self.carried.clone(),
        };
        let Some(context) = context else { return };
        if !context.is_valid() {
            return;
        }
        let cx = Context::new().with_remote_span_context(context.clone());
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&cx, &mut HeaderInjector(headers));
        });
        if self.method.telemetry.trace_bin
            && let Ok(value) = http::HeaderValue::from_str(&grpc_trace_bin(&context))
        {
            headers.insert("grpc-trace-bin", value);
        }
    }

    /// A streaming request body, wrapped to count its messages' bytes as they go.
    pub(crate) fn count_sent(&mut self, body: tonic::body::Body) -> tonic::body::Body {
        let total = self.streamed.get_or_insert_with(Arc::default).clone();
        tonic::body::Body::new(CountSent {
            inner: body,
            framing: Framing::default(),
            total,
        })
    }

    /// Response bytes arrived (DATA frames, in order).
    pub(crate) fn received(&mut self, bytes: &[u8]) {
        let Self {
            framing,
            rcvd,
            messages,
            span,
            ..
        } = self;
        framing.feed(bytes, |size| {
            *rcvd += size;
            if let Some(span) = span.as_mut() {
                span.add_event(
                    "Inbound message",
                    vec![
                        KeyValue::new("sequence-number", i64::from(*messages)),
                        KeyValue::new("message-size", size as i64),
                    ],
                );
            }
            *messages += 1;
        });
    }

    /// The attempt ended with `code`.
    pub(crate) fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let method = &self.method;
        let telemetry = &method.telemetry;
        let attributes = method.with_status(code);
        telemetry
            .attempt_duration
            .record(self.started.elapsed().as_secs_f64(), attributes);
        let streamed = self.streamed.as_ref().map(|n| n.load(Ordering::Relaxed));
        if let Some(sent) = self.sent.or(streamed) {
            telemetry.attempt_sent.record(sent, attributes);
        }
        telemetry.attempt_rcvd.record(self.rcvd, attributes);
        if let Some(mut span) = self.span.take() {
            span.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
            if code != Code::Ok {
                span.set_status(SpanStatus::error(code_name(code)));
            }
            span.end();
        }
    }
}

impl Drop for AttemptTrace {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

pin_project_lite::pin_project! {
    /// A request body that counts its messages' bytes as they are sent.
    struct CountSent {
        #[pin]
        inner: tonic::body::Body,
        framing: Framing,
        total: Arc<AtomicU64>,
    }
}

impl http_body::Body for CountSent {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(Ok(data)) = &frame
            && let Some(bytes) = data.data_ref()
        {
            let total = &*this.total;
            this.framing.feed(bytes, |size| {
                total.fetch_add(size, Ordering::Relaxed);
            });
        }
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Writes a propagator's fields into request headers; invalid names or values are
/// skipped.
struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The W3C names need no parsing; any other propagator's are checked.
        let name = match key {
            "traceparent" => Ok(http::HeaderName::from_static("traceparent")),
            "tracestate" => Ok(http::HeaderName::from_static("tracestate")),
            _ => http::HeaderName::from_bytes(key.as_bytes()),
        };
        if let (Ok(name), Ok(value)) = (name, http::HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

/// A span context in the `grpc-trace-bin` format (OpenCensus' binary format: version
/// 0; field 0 the trace id, field 1 the span id, field 2 the trace options), base64
/// without padding as gRPC sends binary metadata.
fn grpc_trace_bin(context: &SpanContext) -> String {
    let mut bytes = [0u8; 29];
    bytes[1] = 0;
    bytes[2..18].copy_from_slice(&context.trace_id().to_bytes());
    bytes[18] = 1;
    bytes[19..27].copy_from_slice(&context.span_id().to_bytes());
    bytes[27] = 2;
    bytes[28] = context.trace_flags().to_u8();
    base64_no_pad(&bytes)
}

fn base64_no_pad(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_finds_messages_split_across_frames() {
        let mut framing = Framing::default();
        let mut sizes = Vec::new();
        let stream = [
            &[0u8, 0, 0, 0, 3, 1, 2, 3, 0, 0][..],
            &[0, 0, 2, 9],
            &[9, 1, 0, 0, 0, 0],
        ];
        for bytes in stream {
            framing.feed(bytes, |size| sizes.push(size));
        }
        assert_eq!(sizes, [3, 2, 0]);
    }

    #[test]
    fn base64_matches_the_standard_alphabet_without_padding() {
        assert_eq!(base64_no_pad(b""), "");
        assert_eq!(base64_no_pad(b"f"), "Zg");
        assert_eq!(base64_no_pad(b"fo"), "Zm8");
        assert_eq!(base64_no_pad(b"foo"), "Zm9v");
        assert_eq!(base64_no_pad(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_no_pad(&[0xff, 0xfe]), "//4");
    }

    #[test]
    fn grpc_trace_bin_lays_out_the_three_fields() {
        use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
        let context = SpanContext::new(
            TraceId::from_bytes([1; 16]),
            SpanId::from_bytes([2; 8]),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let mut expected = vec![0u8, 0];
        expected.extend([1; 16]);
        expected.push(1);
        expected.extend([2; 8]);
        expected.extend([2, 1]);
        assert_eq!(grpc_trace_bin(&context), base64_no_pad(&expected));
    }
}
