//! [`BalancedChannel`]: a tonic channel over many backends.
//!
//! Use it wherever a tonic `Channel` goes: generated clients take it as their transport.
//! A call takes the current picker snapshot (no lock), picks a READY subchannel, counts
//! itself as load there until its response stream ends, and sends on that subchannel's
//! connection. With no READY subchannel a call waits while any subchannel is still
//! connecting, fails at once with UNAVAILABLE once all have failed, and with
//! wait-for-ready keeps waiting until one is READY or its deadline passes.

mod attempt;
mod builder;
mod control;
#[cfg(test)]
mod driver_tests;
mod fast;
mod future;

#[cfg(feature = "xds")]
pub(crate) use builder::Blueprint;
pub use builder::{
    Builder, ConnectionBackoff, DEFAULT_BACKOFF_BASE_DELAY, DEFAULT_BACKOFF_JITTER,
    DEFAULT_BACKOFF_MAX_DELAY, DEFAULT_BACKOFF_MULTIPLIER, DEFAULT_MIN_CONNECT_TIMEOUT,
    KeepaliveConfig,
};
pub use future::ResponseFuture;

use crate::balance::Picker;
use crate::config::{MethodConfig, MethodMap, ServiceConfig};
use crate::connectivity::ConnectivityState;
use crate::deadline;
use crate::retry::{Budget, MessageLimit, Replay, Throttle};
use crate::stats::{CallRecord, ChannelStats, InFlightPermit, Stats};
use crate::subchannel::{ReadyConn, SubchannelInfo};
use control::{Shared, Snapshot};
use future::CallBody;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::Status;
use tonic::body::Body;
use tower::Service;

/// What a call looks up for its method. Swapped whole when the service config changes.
#[derive(Debug)]
struct CallConfig {
    pickers: MethodMap<Arc<dyn Picker>>,
    methods: MethodMap<Option<Arc<MethodConfig>>>,
    throttle: Option<Arc<Throttle>>,
    /// The builder's cap on attempts per call (retries and hedges included).
    max_attempts: u32,
    /// The deadline of calls that have none, from the builder.
    default_timeout: Option<std::time::Duration>,
    /// The most calls in flight at once (xDS circuit breaking), if limited.
    max_concurrent: Option<u32>,
    /// Shares of calls failed before picking (xDS `drop_overloads`).
    drops: Vec<crate::config::DropOverload>,
}

impl CallConfig {
    /// The method config of a call to `path`: its xDS route's, if it brings one, else
    /// the channel's for that method.
    fn method<'a>(
        &'a self,
        route: Option<&'a MethodConfig>,
        path: &str,
    ) -> Option<&'a MethodConfig> {
        route.or_else(|| self.methods.get(path).as_deref())
    }
}

/// A per-call wait-for-ready flag, set as a request extension.
///
/// With wait-for-ready, a call made while no backend is READY waits for one (until its
/// deadline) instead of failing with UNAVAILABLE once every backend has failed to
/// connect. The channel-wide default is [`Builder::wait_for_ready`].
///
/// ```
/// # use tonic_balancer::WaitForReady;
/// let mut request = tonic::Request::new(());
/// request.extensions_mut().insert(WaitForReady(true));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitForReady(pub bool);

/// A gRPC channel that balances calls over the backends its resolver finds.
///
/// Cheap to clone: clones share the subchannels and the control task. When the last
/// clone (and the last call made through it) is gone, the control task stops and every
/// connection closes.
///
/// Implements `tower::Service<http::Request<tonic::body::Body>>`, so any tonic-generated
/// client takes it: `TestServiceClient::new(channel)`. `poll_ready` is always ready;
/// calls queue inside the call when no backend is ready.
#[derive(Clone)]
pub struct BalancedChannel {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    target: String,
    wait_for_ready: bool,
    budget: Option<Arc<Budget>>,
    replay_limit: usize,
    /// Request bytes the channel's calls hold for retries, and the most they may.
    replay_held: Arc<std::sync::atomic::AtomicUsize>,
    channel_replay_limit: usize,
    /// Metadata whose values are marked sensitive on every call.
    sensitive: Arc<[http::HeaderName]>,
    seed: u64,
    /// Calls that needed a backoff, to vary their jitter seeds.
    calls: AtomicU64,
    /// Golden signals per method; shared by the cluster channels of an `xds:///` target.
    stats: Arc<Stats>,
    /// Whether bearer credentials may be sent: TLS, or the user's explicit opt-in.
    credentials_allowed: bool,
    /// The keepalive time of new connections (gRFC A8), if keepalive is on.
    keepalive_time: Option<Arc<AtomicU64>>,
    /// An `xds:///` target's routes: each call goes to the channel of the cluster its
    /// route names, and this channel has no subchannels of its own.
    #[cfg(feature = "xds")]
    router: Option<Arc<crate::xds::Router>>,
    /// Whether this is a cluster's channel of an `xds:///` target, whose calls bring
    /// their route's method config.
    #[cfg(feature = "xds")]
    routed_here: bool,
    /// Dropped with the last handle: stops the control task (or the router's).
    _stop: oneshot::Sender<()>,
}

impl BalancedChannel {
    /// Starts building a channel for a gRPC target (`ipv4:127.0.0.1:5001,127.0.0.1:5002`,
    /// `dns:///orders:50051`, `unix:///run/orders.sock`, ...) or the URI a tonic user
    /// would give `Endpoint` (`http://orders:50051`; `https://` means TLS); see
    /// [`Target`](crate::resolver::Target) for the syntax.
    /// A malformed target is reported by [`Builder::build`].
    pub fn builder(target: &str) -> Builder {
        Builder::from_target(target)
    }

    /// Starts building a channel whose addresses come from a custom resolver.
    pub fn builder_with_resolver<R: crate::resolver::Resolve>(resolver: R) -> Builder {
        Builder::from_resolver(Box::new(resolver))
    }

    /// The target this channel was built for, as given.
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// The channel's aggregate connectivity state: READY if any subchannel is READY;
    /// else CONNECTING while any is trying for the first time since it last worked;
    /// else TRANSIENT_FAILURE.
    pub fn state(&self) -> ConnectivityState {
        #[cfg(feature = "xds")]
        if let Some(router) = &self.inner.router {
            return router.state();
        }
        self.inner.shared.snapshot.load().state
    }

    /// The golden signals of every method called so far (traffic, errors, latency
    /// percentiles, saturation) and every endpoint's state and load; see
    /// [`stats`](crate::stats) for what each figure means.
    pub fn stats(&self) -> ChannelStats {
        #[cfg(feature = "xds")]
        let endpoints = match &self.inner.router {
            Some(router) => router
                .channels()
                .iter()
                .flat_map(|c| c.endpoint_stats())
                .collect(),
            None => self.endpoint_stats(),
        };
        #[cfg(not(feature = "xds"))]
        let endpoints = self.endpoint_stats();
        ChannelStats {
            uptime: self.inner.stats.uptime(),
            methods: self.inner.stats.methods(),
            endpoints,
            keepalive_time: self
                .inner
                .keepalive_time
                .as_ref()
                .map(|time| std::time::Duration::from_nanos(time.load(Ordering::Relaxed))),
        }
    }

    fn endpoint_stats(&self) -> Vec<crate::stats::EndpointSnapshot> {
        let snapshot = self.inner.shared.snapshot.load();
        snapshot.subchannels.iter().map(|s| s.snapshot()).collect()
    }

    /// A view of every subchannel: address, state and load. An `xds:///` channel lists
    /// those of each cluster its routes name, cluster by cluster.
    pub fn subchannels(&self) -> Vec<SubchannelInfo> {
        #[cfg(feature = "xds")]
        if let Some(router) = &self.inner.router {
            return router
                .channels()
                .iter()
                .flat_map(|c| c.subchannels())
                .collect();
        }
        let snapshot = self.inner.shared.snapshot.load();
        snapshot.subchannels.iter().map(|s| s.info()).collect()
    }

    /// Replaces the service config (JSON) while the channel runs: calls started after it
    /// returns use the new per-method settings, policies and throttling. An invalid
    /// config changes nothing: the channel keeps the previous good one (gRFC A21).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) naming the bad field.
    pub fn update_service_config_json(&self, json: &str) -> Result<(), crate::Error> {
        let config = ServiceConfig::from_json(json).map_err(builder::invalid_config)?;
        self.update_service_config(&config)
    }

    /// Replaces the service config with one built in code; see
    /// [`update_service_config_json`](Self::update_service_config_json).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) naming the bad field.
    /// An `xds:///` channel takes its config from the control plane only.
    pub fn update_service_config(&self, config: &ServiceConfig) -> Result<(), crate::Error> {
        #[cfg(feature = "xds")]
        if self.inner.router.is_some() {
            return Err(crate::Error::new(
                crate::ErrorKind::InvalidConfig,
                format!(
                    "the channel to {} takes its routes, policies and method configs from \
                     its xDS control plane; a service config cannot replace them",
                    self.inner.target
                ),
            ));
        }
        self.inner.shared.apply_service_config(config)
    }

    /// Waits until a backend is READY, for at most `timeout`: what tonic users do with
    /// `Endpoint::connect().await` at start-up, and grpc-go users with a blocking dial.
    /// Backends that fail keep being retried with the connection backoff meanwhile; the
    /// channel works the same whether or not this was awaited.
    ///
    /// # Errors
    /// [`ErrorKind::NotReady`](crate::ErrorKind::NotReady) when `timeout` passes first
    /// (naming the target, the channel's state and the last connection error) or the
    /// channel shuts down.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future only stops the waiting.
    pub async fn ready(&self, timeout: std::time::Duration) -> Result<(), crate::Error> {
        let mut published = self.inner.shared.published.subscribe();
        let wait = async {
            loop {
                match self.state() {
                    ConnectivityState::Ready => return true,
                    ConnectivityState::Shutdown => return false,
                    // Waiting for READY is a reason to leave IDLE (gRFC A62).
                    ConnectivityState::Idle => self.request_wake(),
                    _ => {}
                }
                if published.changed().await.is_err() {
                    return false;
                }
            }
        };
        let outcome = tokio::time::timeout(timeout, wait).await;
        let why = match outcome {
            Ok(true) => return Ok(()),
            Ok(false) => "the channel shut down".to_owned(),
            Err(_) => format!("none is READY after {timeout:?}"),
        };
        Err(crate::Error::new(
            crate::ErrorKind::NotReady,
            format!(
                "no backend of {} is ready: {why} (channel {}: {})",
                self.inner.target,
                self.state(),
                self.last_error()
            ),
        ))
    }

    /// Asks an IDLE channel (for `xds:///`, each IDLE cluster) to connect again.
    fn request_wake(&self) {
        #[cfg(feature = "xds")]
        if let Some(router) = &self.inner.router {
            for cluster in router.channels() {
                if cluster.state() == ConnectivityState::Idle {
                    cluster.request_wake();
                }
            }
            return;
        }
        self.inner.shared.request_wake();
    }

    /// The last error the channel (or, for `xds:///`, its routes or any of its
    /// clusters) reported, described.
    fn last_error(&self) -> String {
        #[cfg(feature = "xds")]
        if let Some(router) = &self.inner.router {
            if let Some(why) = router.error() {
                return format!("last error: {why}");
            }
            let errors: Vec<String> = router
                .channels()
                .iter()
                .filter_map(|c| {
                    let error = c.inner.shared.snapshot.load().error.clone()?;
                    Some(format!("{}: {error}", c.inner.target))
                })
                .collect();
            return match errors.is_empty() {
                true => "no error reported yet".to_owned(),
                false => format!("last errors: {}", errors.join("; ")),
            };
        }
        describe_error(&self.inner.shared.snapshot.load())
    }

    /// Waits until `done` holds for the channel's subchannels, re-checking after every
    /// change the control task publishes. Useful for readiness probes and tests:
    /// `channel.wait_for(|subs| subs.iter().all(|s| s.state == Ready)).await`.
    ///
    /// Load counters change without a publish; this waits on state changes only, and a
    /// subchannel's move to CONNECTING alone publishes nothing (it changes no pick).
    pub async fn wait_for<F>(&self, mut done: F)
    where
        F: FnMut(&[SubchannelInfo]) -> bool,
    {
        let mut published = self.inner.shared.published.subscribe();
        loop {
            if done(&self.subchannels()) {
                return;
            }
            if published.changed().await.is_err() {
                return;
            }
        }
    }
}

impl fmt::Debug for BalancedChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("BalancedChannel");
        debug
            .field("target", &self.inner.target)
            .field("state", &self.state());
        #[cfg(feature = "xds")]
        if let Some(router) = &self.inner.router {
            let clusters: Vec<String> = router
                .channels()
                .iter()
                .map(|c| c.inner.target.clone())
                .collect();
            return debug.field("clusters", &clusters).finish();
        }
        debug
            .field("policy", self.inner.shared.config.load().pickers.get(""))
            .finish()
    }
}

impl Service<http::Request<Body>> for BalancedChannel {
    type Response = http::Response<Body>;
    type Error = Status;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> ResponseFuture {
        let path = request.uri().path();
        let (service, method) = path
            .strip_prefix('/')
            .and_then(|p| p.rsplit_once('/'))
            .unwrap_or(("", path));
        let span = tracing::debug_span!(
            "grpc.call",
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
            policy = tracing::field::Empty,
        );
        ResponseFuture::start(self.inner.clone(), request, span)
    }
}

// === impl Inner ===

impl Inner {
    /// Starts a call: everything that needs no waiting happens here. A call whose
    /// method has no retry or hedging policy, whose request is whole, and which finds a
    /// READY subchannel at once is sent from here and returned as the fast path's
    /// unboxed state machine; every other call runs as [`Inner::run`].
    ///
    /// It runs when the call's future is first polled, not in `Service::call`, so that
    /// the deadline inherited from [`deadline::scope`] is the one around the poll (as
    /// tonic's clients poll it), and so that nothing is sent or timed for a future that
    /// is never polled or outside a runtime.
    pub(super) fn start(
        self: &Arc<Self>,
        mut request: http::Request<Body>,
        span: tracing::Span,
    ) -> ResponseFuture {
        #[cfg(feature = "xds")]
        if let Some(router) = &self.router {
            return self.start_routed(router, request, span);
        }
        let entered = span.enter();
        if !self.credentials_allowed
            && request
                .extensions()
                .get::<crate::credentials::BearerAttached>()
                .is_some()
        {
            let why = builder::no_tls_for_credentials(&self.target);
            return ResponseFuture::ready(Err(Status::unauthenticated(
                crate::credentials::refusal(&why),
            )));
        }
        mark_sensitive(request.headers_mut(), &self.sensitive);
        let config = self.shared.config.load_full();
        // A call an `xds:///` channel routed here brings its route's method config.
        #[cfg(feature = "xds")]
        let route = match self.routed_here {
            true => request
                .extensions_mut()
                .remove::<crate::xds::RouteMethod>()
                .map(|r| r.0),
            false => None,
        };
        #[cfg(not(feature = "xds"))]
        let route: Option<Arc<MethodConfig>> = None;
        let path = request.uri().path();
        let method = config.method(route.as_deref(), path);
        if !span.is_disabled() {
            span.record("policy", tracing::field::debug(config.pickers.get(path)));
        }
        let mut record = CallRecord::start(self.stats.method(path), span.clone(), path);
        // xDS load shedding, before circuit breaking (as gRPC's cluster_impl does).
        if let Some(drop) = config
            .drops
            .iter()
            .find(|d| (self.shared.drop_rng.below(1_000_000) as u32) < d.per_million)
        {
            record.finish(tonic::Code::Unavailable);
            return ResponseFuture::ready(Err(Status::unavailable(format!(
                "dropped by {}'s control plane (drop_overloads category {:?})",
                self.target, drop.category
            ))));
        }
        if let Some(max) = config.max_concurrent {
            match InFlightPermit::take(&self.shared.calls_in_flight, max) {
                Some(permit) => record.hold(permit),
                None => {
                    record.finish(tonic::Code::Unavailable);
                    return ResponseFuture::ready(Err(Status::unavailable(format!(
                        "{max} calls are in flight on the channel to {}, its limit \
                         (circuit breaking: the cluster's max_requests)",
                        self.target
                    ))));
                }
            }
        }

        // The earliest of: inherited, set on the request, configured for the method.
        let requested = match deadline::request_timeout(request.headers()) {
            None => None,
            Some(Ok(timeout)) => Some(timeout),
            // The caller's own code wrote a bad header: say so rather than drop the deadline.
            Some(Err(invalid)) => {
                record.finish(tonic::Code::Internal);
                return ResponseFuture::ready(Err(Status::internal(invalid.to_string())));
            }
        };
        // The call's one clock read: its deadline, and its first attempt's send time.
        let now = Instant::now();
        let deadline = [
            deadline::current(),
            requested.map(|t| now + t),
            method.and_then(|m| m.timeout).map(|t| now + t),
        ]
        .into_iter()
        .flatten()
        .min()
        .or_else(|| config.default_timeout.map(|t| now + t));
        if deadline.is_some_and(|d| d <= now) {
            record.finish(tonic::Code::DeadlineExceeded);
            return ResponseFuture::ready(Err(Status::deadline_exceeded(format!(
                "deadline exceeded before the call to {} was sent",
                self.target
            ))));
        }
        let wait_for_ready = request
            .extensions()
            .get::<WaitForReady>()
            .map(|w| w.0)
            .or_else(|| method.and_then(|m| m.wait_for_ready))
            .unwrap_or(self.wait_for_ready);
        if let Some(budget) = &self.budget {
            budget.deposit();
        }

        let (parts, body) = request.into_parts();
        let has_policy =
            method.is_some_and(|m| m.retry_policy.is_some() || m.hedging_policy.is_some());
        let request_limit = method
            .and_then(|m| m.max_request_message_bytes)
            .map(|limit| MessageLimit::new(limit, "request"));
        let response_limit = method.and_then(|m| m.max_response_message_bytes);
        let body = match self.request_body(body, request_limit, has_policy) {
            Ok(body) => body,
            Err(status) => {
                record.finish(status.code());
                return ResponseFuture::ready(Err(status));
            }
        };
        let mut call = Prepared {
            config,
            route,
            response_limit,
            parts,
            body,
            wait_for_ready,
            deadline,
            record,
            start: attempt::Start::FIRST,
        };
        let whole = matches!(call.body, attempt::RequestBody::Whole { .. });
        if whole && !has_policy && span.is_disabled() {
            let picker = &**call.config.pickers.get(call.parts.uri.path());
            self.shared.mark_active();
            let picked = self.try_pick(picker, &self.shared.snapshot.load());
            if let Some(ready) = picked {
                match fast::FastCall::send(self, call, ready, now) {
                    Ok(fast) => return ResponseFuture::fast(fast),
                    // The connection took no new stream: sent again, transparently.
                    Err(back) => call = back,
                }
            }
        }
        drop(entered);
        ResponseFuture::boxed(tracing::Instrument::instrument(
            self.clone().run(call),
            span,
        ))
    }

    /// Starts a call of an `xds:///` channel on the channel of the cluster its route
    /// names, or waits for routes if there are none yet.
    #[cfg(feature = "xds")]
    fn start_routed(
        self: &Arc<Self>,
        router: &Arc<crate::xds::Router>,
        mut request: http::Request<Body>,
        span: tracing::Span,
    ) -> ResponseFuture {
        use crate::xds::Routed;
        match router.route(request.uri().path(), request.headers()) {
            Routed::To(cluster, method) => {
                request
                    .extensions_mut()
                    .insert(crate::xds::RouteMethod(method));
                cluster.inner.start(request, span)
            }
            Routed::Fail(status) => {
                self.refuse(request.uri().path(), &span, status.code());
                ResponseFuture::ready(Err(status))
            }
            Routed::Unresolved(_) => ResponseFuture::boxed(tracing::Instrument::instrument(
                self.clone()
                    .wait_for_routes(router.clone(), request, span.clone()),
                span,
            )),
        }
    }

    /// A call made before the channel's routes are known: it waits for them within its
    /// deadline (inherited or set on the request), fails as soon as they fail (unless
    /// wait-for-ready), and is then started on its cluster's channel.
    #[cfg(feature = "xds")]
    async fn wait_for_routes(
        self: Arc<Self>,
        router: Arc<crate::xds::Router>,
        mut request: http::Request<Body>,
        span: tracing::Span,
    ) -> Result<http::Response<Body>, Status> {
        use crate::xds::Routed;
        let path = request.uri().path().to_owned();
        let requested = deadline::request_timeout(request.headers()).and_then(Result::ok);
        let now = Instant::now();
        let deadline = [deadline::current(), requested.map(|t| now + t)]
            .into_iter()
            .flatten()
            .min()
            .or_else(|| self.shared.config.load().default_timeout.map(|t| now + t));
        let wait_for_ready = request
            .extensions()
            .get::<WaitForReady>()
            .map_or(self.wait_for_ready, |w| w.0);
        let mut published = self.shared.published.subscribe();
        loop {
            let why = match router.route(&path, request.headers()) {
                Routed::To(cluster, method) => {
                    // The wait counted: the cluster's channel gets what is left.
                    if let Some(deadline) = deadline {
                        let left = deadline.saturating_duration_since(Instant::now());
                        request
                            .headers_mut()
                            .insert(deadline::GRPC_TIMEOUT, deadline::encode_timeout(left));
                    }
                    request
                        .extensions_mut()
                        .insert(crate::xds::RouteMethod(method));
                    return cluster.inner.start(request, span).await;
                }
                Routed::Fail(status) => {
                    self.refuse(&path, &span, status.code());
                    return Err(status);
                }
                Routed::Unresolved(why) => why,
            };
            if let Some(why) = why.filter(|_| !wait_for_ready) {
                self.refuse(&path, &span, tonic::Code::Unavailable);
                return Err(Status::unavailable(format!(
                    "no routes for {}: {why}",
                    self.target
                )));
            }
            let changed = published.changed();
            let outcome = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, changed).await {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        self.refuse(&path, &span, tonic::Code::DeadlineExceeded);
                        return Err(Status::deadline_exceeded(format!(
                            "deadline exceeded waiting for the routes of {} ({})",
                            self.target,
                            router
                                .error()
                                .unwrap_or_else(|| "none received yet".to_owned())
                        )));
                    }
                },
                None => changed.await,
            };
            if outcome.is_err() {
                return Err(Status::unavailable(format!(
                    "channel to {} is shut down",
                    self.target
                )));
            }
        }
    }

    /// Counts a call that ended before any cluster took it.
    #[cfg(feature = "xds")]
    fn refuse(&self, path: &str, span: &tracing::Span, code: tonic::Code) {
        CallRecord::start(self.stats.method(path), span.clone(), path).finish(code);
    }

    /// Runs a call that may wait: for a READY subchannel, for retries or hedges, for a
    /// streaming request body; or one the fast path hands over for a transparent retry.
    async fn run(self: Arc<Self>, call: Prepared) -> Result<http::Response<Body>, Status> {
        let Prepared {
            config,
            route,
            response_limit,
            parts,
            body,
            wait_for_ready,
            deadline,
            record,
            start,
        } = call;
        let path = parts.uri.path();
        let picker = &**config.pickers.get(path);
        let method = config.method(route.as_deref(), path);
        let retry = method.and_then(|m| m.retry_policy.as_ref());
        let hedging = method.and_then(|m| m.hedging_policy.as_ref());
        // A streaming body's record, kept to be dropped once the call commits: the
        // chosen attempt keeps streaming, but nothing more need be kept for a resend.
        let record_of_body = match &body {
            attempt::RequestBody::Stream(replay) => Some(replay.clone()),
            attempt::RequestBody::Whole { .. } => None,
        };
        let call = attempt::Call {
            inner: &self,
            picker,
            parts,
            body,
            wait_for_ready,
            deadline,
            throttle: config.throttle.as_deref(),
            max_attempts: config.max_attempts,
            stats: record.method(),
            trace: record.trace(),
        };
        let result = match hedging {
            Some(hedging) => call.run_hedged(hedging).await,
            None => call.run(retry, start).await,
        };
        if let Some(replay) = record_of_body {
            replay.commit();
        }
        let limit = response_limit.map(|limit| MessageLimit::new(limit, "response"));
        finish(result, record, limit, deadline)
    }

    /// A call's request body: whole when it is at hand at once (a unary call), else
    /// recorded for replay. A whole body kept for the retry policy counts against the
    /// per-call and channel-wide replay limits; past either, the call is committed.
    fn request_body(
        &self,
        body: Body,
        mut limit: Option<MessageLimit>,
        has_policy: bool,
    ) -> Result<attempt::RequestBody, Status> {
        match crate::subchannel::prefetch(body)? {
            crate::subchannel::Outgoing::Stream(body) => Ok(attempt::RequestBody::Stream(
                Replay::new(body, self.replay_limit, limit)
                    .with_budget(self.replay_held.clone(), self.channel_replay_limit),
            )),
            outgoing => {
                let message = match outgoing {
                    crate::subchannel::Outgoing::Message(message) => Some(message),
                    _ => None,
                };
                if let (Some(limit), Some(message)) = (limit.as_mut(), &message) {
                    limit.check(message)?;
                }
                let size = message.as_ref().map_or(0, bytes::Bytes::len);
                let permit = (has_policy && size <= self.replay_limit)
                    .then(|| {
                        attempt::BufferPermit::take(
                            &self.replay_held,
                            size,
                            self.channel_replay_limit,
                        )
                    })
                    .flatten();
                Ok(attempt::RequestBody::Whole {
                    message,
                    replayable: permit.is_some(),
                    _permit: permit,
                })
            }
        }
    }

    /// A seed for one call's backoff jitter: reproducible from the channel's seed.
    fn next_seed(&self) -> u64 {
        self.seed.wrapping_add(
            self.calls
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15),
        )
    }

    /// Picks a READY subchannel, queueing if none is ready yet.
    async fn pick(
        &self,
        picker: &dyn Picker,
        wait_for_ready: bool,
        deadline: Option<Instant>,
    ) -> Result<ReadyConn, Status> {
        self.shared.mark_active();
        match self.try_pick(picker, &self.shared.snapshot.load()) {
            Some(ready) => Ok(ready),
            None => match self.stats.telemetry() {
                None => self.wait_for_pick(picker, wait_for_ready, deadline).await,
                Some(telemetry) => {
                    let queued = Instant::now();
                    let picked = self.wait_for_pick(picker, wait_for_ready, deadline).await;
                    telemetry.queued(queued.elapsed(), picked.is_ok());
                    picked
                }
            },
        }
    }

    /// One pick from a snapshot, or `None` if it has no live READY subchannel.
    fn try_pick(&self, picker: &dyn Picker, snapshot: &Snapshot) -> Option<ReadyConn> {
        let conns = &snapshot.conns;
        if conns.is_empty() {
            return None;
        }
        let first = picker.pick(&snapshot.ready) % conns.len();
        // A set in one chunk is read as the slice it is.
        let slice = conns.as_slice();
        let at = |i: usize| slice.map_or_else(|| &conns[i], |slice| &slice[i]);
        // A connection that ended a moment ago may still be in this snapshot; take the
        // next live one rather than send a call into a closed connection. One whose
        // liveness check is out (a PING unanswered) is taken only if no other will do.
        let mut fallback = None;
        for k in 0..conns.len() {
            let conn = at((first + k) % conns.len());
            if conn.is_trusted() {
                return Some(conn.clone());
            }
            if fallback.is_none() && conn.is_up() {
                fallback = Some(conn);
            }
        }
        fallback.cloned()
    }

    /// Queues until a pick succeeds, the channel fails (without wait-for-ready), or the
    /// deadline passes.
    async fn wait_for_pick(
        &self,
        picker: &dyn Picker,
        wait_for_ready: bool,
        deadline: Option<Instant>,
    ) -> Result<ReadyConn, Status> {
        let mut published = self.shared.published.subscribe();
        loop {
            let snapshot = self.shared.snapshot.load_full();
            if let Some(ready) = self.try_pick(picker, &snapshot) {
                return Ok(ready);
            }
            match snapshot.state {
                ConnectivityState::TransientFailure if !wait_for_ready => {
                    return Err(Status::unavailable(format!(
                        "no ready endpoints for {}: {}",
                        self.target,
                        describe_error(&snapshot)
                    )));
                }
                ConnectivityState::Shutdown => return Err(self.shut_down(&snapshot)),
                // IDLE (gRFC A62), or not resolved yet: ask the control task to start.
                ConnectivityState::Idle => self.shared.request_wake(),
                _ => {}
            }
            let changed = published.changed();
            let outcome = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, changed).await {
                    Ok(outcome) => outcome,
                    Err(_) => return Err(self.deadline_exceeded(Some(&snapshot))),
                },
                None => changed.await,
            };
            if outcome.is_err() {
                return Err(self.shut_down(&self.shared.snapshot.load()));
            }
        }
    }

    fn deadline_exceeded(&self, snapshot: Option<&Snapshot>) -> Status {
        let snapshot = match snapshot {
            Some(snapshot) => snapshot,
            None => &self.shared.snapshot.load(),
        };
        Status::deadline_exceeded(format!(
            "deadline exceeded waiting for a ready endpoint of {} (channel {}: {})",
            self.target,
            snapshot.state,
            describe_error(snapshot)
        ))
    }

    /// The channel has stopped; the snapshot says why if it did not stop normally.
    fn shut_down(&self, snapshot: &Snapshot) -> Status {
        match &snapshot.error {
            Some(why) => {
                Status::unavailable(format!("channel to {} is shut down: {why}", self.target))
            }
            None => Status::unavailable(format!("channel to {} is shut down", self.target)),
        }
    }
}

/// A call's inputs once [`Inner::start`] has checked them.
pub(super) struct Prepared {
    config: Arc<CallConfig>,
    /// The method config of the call's xDS route, in place of the channel's own.
    route: Option<Arc<MethodConfig>>,
    /// The method's `maxResponseMessageBytes`.
    response_limit: Option<u64>,
    parts: http::request::Parts,
    body: attempt::RequestBody,
    wait_for_ready: bool,
    deadline: Option<Instant>,
    record: CallRecord,
    /// Where the attempts start: a fresh call, or a transparent retry of the fast path.
    start: attempt::Start,
}

/// What the caller gets from the attempt that ended the call, with the call's record
/// ended now (Trailers-Only, an error) or when the response stream ends.
fn finish(
    result: attempt::CallResult,
    record: CallRecord,
    limit: Option<MessageLimit>,
    deadline: Option<Instant>,
) -> Result<http::Response<Body>, Status> {
    match result {
        // Trailers-Only: the call is over; the guard already counted the outcome.
        Ok(answer) => match trailers_only_status(answer.response.headers()) {
            Some(code) => {
                record.finish(code);
                Ok(answer.response.map(Body::new))
            }
            None => Ok(CallBody::wrap(answer, record, limit, deadline)),
        },
        Err(status) => {
            record.finish(status.code());
            Err(status)
        }
    }
}

/// Marks every value of these headers sensitive: never-indexed in HPACK, `Sensitive` in
/// `Debug`.
fn mark_sensitive(headers: &mut http::HeaderMap, names: &[http::HeaderName]) {
    for name in names {
        if !headers.contains_key(name) {
            continue;
        }
        if let http::header::Entry::Occupied(mut entry) = headers.entry(name) {
            entry.iter_mut().for_each(|value| value.set_sensitive(true));
        }
    }
}

/// The `grpc-status` of a Trailers-Only response (status in the headers), if it is one.
fn trailers_only_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    grpc_status(headers)
}

/// The `grpc-status` in response metadata (trailers, or Trailers-Only headers).
fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?;
    let code = std::str::from_utf8(value.as_bytes())
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(tonic::Code::from_i32(code))
}

fn describe_error(snapshot: &Snapshot) -> String {
    match &snapshot.error {
        Some(error) => format!("last error: {error}"),
        None => "no error reported yet".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_metadata_is_marked_sensitive_in_every_value() {
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", "Bearer t".parse().unwrap());
        headers.append("x-api-key", "k1".parse().unwrap());
        headers.append("x-api-key", "k2".parse().unwrap());
        headers.insert("x-trace", "visible".parse().unwrap());
        let names = [
            http::header::AUTHORIZATION,
            http::HeaderName::from_static("x-api-key"),
            http::HeaderName::from_static("x-absent"),
        ];
        mark_sensitive(&mut headers, &names);
        assert!(headers["authorization"].is_sensitive());
        assert!(
            headers
                .get_all("x-api-key")
                .iter()
                .all(|v| v.is_sensitive())
        );
        assert!(!headers["x-trace"].is_sensitive());
        assert!(!headers.contains_key("x-absent"));
        let text = format!("{headers:?}");
        assert!(!text.contains("k1") && !text.contains("Bearer"), "{text}");
    }
}
