//! [`BalancedChannel`]: a tonic channel over many backends.
//!
//! Use it wherever a tonic `Channel` goes: generated clients take it as their transport.
//! A call takes the current picker snapshot (no lock), picks a READY subchannel, counts
//! itself as load there until its response stream ends, and sends on that subchannel's
//! connection. With no READY subchannel a call waits while any subchannel is still
//! connecting, fails at once with UNAVAILABLE once all have failed, and with
//! wait-for-ready keeps waiting until one is READY or its deadline passes.

mod builder;
mod control;
mod future;
mod status;

pub use builder::{
    Builder, ConnectionBackoff, DEFAULT_BACKOFF_BASE_DELAY, DEFAULT_BACKOFF_JITTER,
    DEFAULT_BACKOFF_MAX_DELAY, DEFAULT_BACKOFF_MULTIPLIER, DEFAULT_MIN_CONNECT_TIMEOUT,
};
pub use future::ResponseFuture;

use crate::balance::Picker;
use crate::config::MethodMap;
use crate::deadline;
use crate::subchannel::{CallGuard, ConnectivityState, ReadySubchannel, SubchannelInfo};
use control::{Shared, Snapshot};
use future::GuardedBody;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::Status;
use tonic::body::Body;
use tower::{Service, ServiceExt};

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
    pickers: MethodMap<Arc<dyn Picker>>,
    wait_for_ready: bool,
    /// Dropped with the last handle: stops the control task.
    _stop: oneshot::Sender<()>,
}

impl BalancedChannel {
    /// Starts building a channel for a gRPC target (`ipv4:127.0.0.1:5001,127.0.0.1:5002`,
    /// `ipv6:[::1]:5001`, ...); see [`Target`](crate::resolver::Target) for the syntax.
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
        self.inner.shared.snapshot.load().state
    }

    /// A view of every subchannel: address, state and load.
    pub fn subchannels(&self) -> Vec<SubchannelInfo> {
        let snapshot = self.inner.shared.snapshot.load();
        snapshot.subchannels.iter().map(|s| s.info()).collect()
    }

    /// Waits until `done` holds for the channel's subchannels, re-checking after every
    /// change the control task publishes. Useful for readiness probes and tests:
    /// `channel.wait_for(|subs| subs.iter().all(|s| s.state == Ready)).await`.
    ///
    /// Load counters change without a publish; this waits on state changes only.
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
        f.debug_struct("BalancedChannel")
            .field("target", &self.inner.target)
            .field("state", &self.state())
            .field("policy", self.inner.pickers.get(""))
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
        ResponseFuture::new(self.inner.clone().call(request))
    }
}

// === impl Inner ===

impl Inner {
    async fn call(
        self: Arc<Self>,
        mut request: http::Request<Body>,
    ) -> Result<http::Response<Body>, Status> {
        let deadline = match deadline::request_timeout(request.headers()) {
            None => None,
            Some(Ok(timeout)) => Some(Instant::now() + timeout),
            // The caller's own code wrote a bad header: say so rather than drop the deadline.
            Some(Err(invalid)) => return Err(Status::internal(invalid.to_string())),
        };
        let wait_for_ready = request
            .extensions()
            .get::<WaitForReady>()
            .map_or(self.wait_for_ready, |w| w.0);

        let picker = &**self.pickers.get(request.uri().path());
        let (ready, waited) = match self.try_pick(picker, &self.shared.snapshot.load()) {
            Some(ready) => (ready, false),
            None => (
                self.wait_for_pick(picker, wait_for_ready, deadline).await?,
                true,
            ),
        };
        if let (true, Some(deadline)) = (waited, deadline) {
            // Send the time actually left, not the time the caller first asked for.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.deadline_exceeded(&self.shared.snapshot.load()));
            }
            request
                .headers_mut()
                .insert(deadline::GRPC_TIMEOUT, deadline::encode_timeout(left));
        }

        let addr = ready.address().addr;
        let mut guard = CallGuard::new(ready.subchannel.clone());
        let mut channel = ready.channel;
        let send = async {
            channel.ready().await?;
            channel.call(request).await
        };
        match send.await {
            Ok(response) => {
                guard.responded(trailers_only_status(response.headers()));
                Ok(response.map(|body| GuardedBody::wrap(body, guard, addr)))
            }
            Err(error) => {
                guard.failed();
                Err(status::from_send_error(&error, addr))
            }
        }
    }

    /// One pick from a snapshot, or `None` if it has no live READY subchannel.
    fn try_pick(&self, picker: &dyn Picker, snapshot: &Snapshot) -> Option<ReadySubchannel> {
        let ready = &snapshot.ready;
        if ready.is_empty() {
            return None;
        }
        let first = picker.pick(ready) % ready.len();
        // A connection that ended a moment ago may still be in this snapshot; take the
        // next live one rather than send a call into a closed connection.
        (0..ready.len())
            .map(|k| &ready[(first + k) % ready.len()])
            .find(|r| r.is_up())
            .cloned()
    }

    /// Queues until a pick succeeds, the channel fails (without wait-for-ready), or the
    /// deadline passes.
    async fn wait_for_pick(
        &self,
        picker: &dyn Picker,
        wait_for_ready: bool,
        deadline: Option<Instant>,
    ) -> Result<ReadySubchannel, Status> {
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
                ConnectivityState::Shutdown => return Err(self.shut_down()),
                _ => {}
            }
            let changed = published.changed();
            let outcome = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, changed).await {
                    Ok(outcome) => outcome,
                    Err(_) => return Err(self.deadline_exceeded(&snapshot)),
                },
                None => changed.await,
            };
            if outcome.is_err() {
                return Err(self.shut_down());
            }
        }
    }

    fn deadline_exceeded(&self, snapshot: &Snapshot) -> Status {
        Status::deadline_exceeded(format!(
            "deadline exceeded waiting for a ready endpoint of {} (channel {}: {})",
            self.target,
            snapshot.state,
            describe_error(snapshot)
        ))
    }

    fn shut_down(&self) -> Status {
        Status::unavailable(format!("channel to {} is shut down", self.target))
    }
}

/// The `grpc-status` of a Trailers-Only response (status in the headers), if it is one.
fn trailers_only_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
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
