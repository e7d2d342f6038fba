//! The attempt driver: one call, one or more attempts (gRFC A6).
//!
//! Every attempt is a new pick (retries sit above the balancer), carries the time left
//! as `grpc-timeout`, and after the first carries `grpc-previous-rpc-attempts`. A call is
//! *committed*, and never sent again, once response headers arrive that are not a
//! Trailers-Only response, or once its request body outgrows the replay buffer.
//!
//! Transparent retries (gRFC A6), which count against neither `maxAttempts` nor
//! throttling: an attempt that never left the client (its connection took no new
//! stream) is sent again until the deadline; one the server refused unprocessed
//! (REFUSED_STREAM, or a stream above a GOAWAY's last stream id) is sent again once per
//! call, after which only the retry policy applies.
//!
//! A unary request body (the common case) is held whole as `Bytes`: every attempt
//! sends the same message with its head in one flush, and nothing is buffered beyond
//! the message itself. Only a streaming body goes through the [`Replay`] record.

use super::future::Answer;
use super::{Inner, trailers_only_status};
use crate::backoff::{Backoff, BackoffParams};
use crate::balance::Picker;
use crate::config::{HedgingPolicy, RetryPolicy};
use crate::deadline::{self, GRPC_TIMEOUT};
use crate::load::CallGuard;
use crate::resolver::Peer;
use crate::retry::{Pushback, Replay, Throttle, pushback};
use crate::stats::{AttemptKind, AttemptTrace, CallTrace, MethodStats};
use crate::subchannel::{Outgoing, ReadyConn, SentMark, send_error};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::HeaderValue;
use http::request::Parts;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::time::Instant;
use tonic::{Code, Status};
use tracing::Instrument;

pub(super) type CallResult = Result<Answer, Status>;

/// How one attempt ended.
// `Response` is the common case and moves once; boxing it would allocate on every call.
#[allow(clippy::large_enum_variant)]
enum Attempt {
    /// Response headers arrived.
    Response(Answer),
    /// The transport failed; `reached` says how far the request got.
    Failed { status: Status, reached: Reached },
    /// No subchannel could be picked (the channel is failing, or the deadline passed).
    NotPicked(Status),
}

/// How far a failed attempt's request got: what decides a transparent retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reached {
    /// It never left the client: retried transparently until the deadline.
    Nowhere,
    /// The server saw it and refused it unprocessed: retried transparently once.
    Refused,
    /// The server may have processed it: only the retry policy may send it again.
    Server,
}

/// How far the request of an attempt that failed with `error` got. `body_read`: whether
/// the server's side began reading the stream's body (always, for a whole body).
pub(super) fn reached(
    ready: &ReadyConn,
    error: &h2::Error,
    mark: SentMark,
    body_read: bool,
) -> Reached {
    if ready.never_left(error, mark) {
        Reached::Nowhere
    } else if ready.refused(error, mark.stream_id) {
        Reached::Refused
    } else if !body_read && error.is_io() {
        // The connection broke before the stream's body was read: the server's
        // handler never started.
        Reached::Nowhere
    } else {
        Reached::Server
    }
}

/// Whether gRFC A6 lets an attempt that got this far be sent again uncounted:
/// `refused_once` tracks the one transparent retry a call gets for a refused stream.
pub(super) fn transparent_allowed(reached: Reached, refused_once: &mut bool) -> bool {
    match reached {
        Reached::Nowhere => true,
        Reached::Refused if !*refused_once => {
            *refused_once = true;
            true
        }
        _ => false,
    }
}

/// A call's request body, as every attempt sends it.
pub(super) enum RequestBody {
    /// The whole body, known up front (a unary call): attempts share the bytes.
    Whole {
        message: Option<Bytes>,
        /// Whether the retry policy may send it again: within the per-call and
        /// channel-wide replay limits. Transparent retries always may.
        replayable: bool,
        /// The bytes counted against the channel's replay budget, given back when
        /// the call ends (it has committed by then).
        _permit: Option<BufferPermit>,
    },
    /// A body still being produced, recorded for retries and hedges.
    Stream(Replay),
}

impl RequestBody {
    /// This attempt's body, and whether it has been read (a `Stream` only).
    fn outgoing(
        &self,
    ) -> (
        Outgoing,
        Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    ) {
        match self {
            RequestBody::Whole { message: None, .. } => (Outgoing::Empty, None),
            RequestBody::Whole {
                message: Some(message),
                ..
            } => (Outgoing::Message(message.clone()), None),
            RequestBody::Stream(replay) => {
                let (body, polled) = replay.attempt_body();
                (Outgoing::Stream(body), Some(polled))
            }
        }
    }

    /// Whether the retry policy (or a hedge) may send the whole body again.
    fn can_replay(&self) -> bool {
        match self {
            RequestBody::Whole { replayable, .. } => *replayable,
            RequestBody::Stream(replay) => replay.can_replay(),
        }
    }

    /// Whether a transparent retry can send the whole body again.
    fn can_resend(&self) -> bool {
        match self {
            RequestBody::Whole { .. } => true,
            RequestBody::Stream(replay) => replay.can_replay(),
        }
    }

    /// Whether the body has ended and is all at hand.
    fn is_complete(&self) -> bool {
        match self {
            RequestBody::Whole { .. } => true,
            RequestBody::Stream(replay) => replay.is_complete(),
        }
    }

    fn rejection(&self) -> Option<Status> {
        match self {
            RequestBody::Whole { .. } => None,
            RequestBody::Stream(replay) => replay.rejection(),
        }
    }
}

/// Bytes held for retries, counted against the channel's replay budget until dropped.
pub(super) struct BufferPermit {
    bytes: usize,
    held: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl BufferPermit {
    /// Takes `bytes` from `held` if it stays within `cap`.
    pub(super) fn take(
        held: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
        bytes: usize,
        cap: usize,
    ) -> Option<Self> {
        use std::sync::atomic::Ordering;
        let before = held.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > cap {
            held.fetch_sub(bytes, Ordering::Relaxed);
            return None;
        }
        Some(Self {
            bytes,
            held: held.clone(),
        })
    }
}

impl Drop for BufferPermit {
    fn drop(&mut self) {
        self.held
            .fetch_sub(self.bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The end of a call, as retry decisions see it.
enum Verdict {
    /// OK, or committed: hand it to the caller.
    Done(CallResult),
    /// Failed with this code; may be retried. Carries what the caller gets if not.
    Failed(Code, CallResult, Pushback),
}

fn verdict(attempt: Attempt) -> Verdict {
    match attempt {
        Attempt::Response(answer) => match trailers_only_status(answer.response.headers()) {
            None | Some(Code::Ok) => Verdict::Done(Ok(answer)),
            Some(code) => {
                let push = pushback(answer.response.headers());
                // The attempt is over: stop counting it as load now, not after a backoff.
                let answer = Answer {
                    guard: None,
                    ..answer
                };
                Verdict::Failed(code, Ok(answer), push)
            }
        },
        Attempt::Failed { status, .. } => {
            Verdict::Failed(status.code(), Err(status), Pushback::None)
        }
        // A failed pick (no READY backend, not wait-for-ready) is an attempt that ended
        // UNAVAILABLE, for the retry policy to judge (gRFC A6, as grpc-go does); a pick
        // that ran out of time ends the call.
        Attempt::NotPicked(status) if status.code() == Code::Unavailable => {
            Verdict::Failed(Code::Unavailable, Err(status), Pushback::None)
        }
        Attempt::NotPicked(status) => Verdict::Done(Err(status)),
    }
}

/// Where a call's attempts start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Start {
    /// What the first attempt made here is.
    pub(super) kind: AttemptKind,
    /// Whether the call has had its one transparent retry of a refused stream.
    pub(super) refused_once: bool,
}

impl Start {
    /// A call with no attempt made yet.
    pub(super) const FIRST: Start = Start {
        kind: AttemptKind::First,
        refused_once: false,
    };
}

/// One call's fixed inputs.
pub(super) struct Call<'a> {
    pub(super) inner: &'a Inner,
    pub(super) picker: &'a dyn Picker,
    pub(super) parts: Parts,
    pub(super) body: RequestBody,
    pub(super) wait_for_ready: bool,
    pub(super) deadline: Option<Instant>,
    pub(super) throttle: Option<&'a Throttle>,
    /// The builder's cap on attempts (grpc-go's `WithMaxCallAttempts`).
    pub(super) max_attempts: u32,
    pub(super) stats: &'a MethodStats,
    /// The call's OpenTelemetry span and counts, if the channel reports there.
    pub(super) trace: Option<&'a CallTrace>,
}

impl Call<'_> {
    /// One attempt, in its own span.
    async fn attempt(&self, previous: u32, kind: AttemptKind) -> Attempt {
        let span = tracing::debug_span!(
            "grpc.attempt",
            attempt = previous + 1,
            transparent = kind == AttemptKind::Transparent,
            server.address = tracing::field::Empty,
            server.port = tracing::field::Empty,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let mut trace = self
            .trace
            .map(|trace| trace.attempt(kind, previous, self.parts.uri.path()));
        let mut attempt = self
            .send_attempt(previous, kind, trace.as_mut())
            .instrument(span.clone())
            .await;
        let code = match &mut attempt {
            Attempt::Failed { status, .. } | Attempt::NotPicked(status) => Some(status.code()),
            Attempt::Response(answer) => {
                let code = trailers_only_status(answer.response.headers());
                if code.is_none() {
                    // The attempt goes on while its response streams.
                    answer.trace = trace.take();
                }
                code
            }
        };
        if let Some(code) = code {
            span.record("rpc.grpc.status_code", code as i32);
            if let Some(trace) = trace.as_mut() {
                trace.finish(code);
            }
        }
        attempt
    }

    /// One attempt: pick, send, wrap the response body in the load guard.
    async fn send_attempt(
        &self,
        previous: u32,
        kind: AttemptKind,
        trace: Option<&mut AttemptTrace>,
    ) -> Attempt {
        let ready = match self
            .inner
            .pick(self.picker, self.wait_for_ready, self.deadline)
            .await
        {
            Ok(ready) => ready,
            Err(status) => return Attempt::NotPicked(status),
        };
        self.stats.attempt(kind);
        let span = tracing::Span::current();
        if !span.is_disabled() {
            let peer = Peer::from(&ready.subchannel.address);
            match peer.socket() {
                Some(addr) => {
                    span.record("server.address", tracing::field::display(addr.ip()));
                    span.record("server.port", addr.port());
                }
                // A Unix socket: its path, and no port.
                None => {
                    span.record("server.address", tracing::field::display(&peer));
                }
            }
        }
        let mut head = self.parts.clone();
        // One clock read per attempt, shared by the timeout header and the RTT sample.
        let load = &ready.subchannel.load;
        let now = (self.deadline.is_some() || load.tracks_rtt()).then(Instant::now);
        if let (Some(deadline), Some(now)) = (self.deadline, now) {
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                return Attempt::NotPicked(self.inner.deadline_exceeded(None));
            }
            head.headers
                .insert(GRPC_TIMEOUT, deadline::encode_timeout(left));
        }
        if previous > 0 {
            head.headers
                .insert("grpc-previous-rpc-attempts", HeaderValue::from(previous));
        }
        let (mut body, polled) = self.body.outgoing();
        let addr = Peer::from(&ready.subchannel.address);
        if let Some(trace) = trace {
            let whole = match &body {
                Outgoing::Empty => Some(&[][..]),
                Outgoing::Message(message) => Some(&message[..]),
                Outgoing::Stream(_) => None,
            };
            trace.sent(&addr, &mut head.headers, whole);
            if let Outgoing::Stream(stream) = body {
                body = Outgoing::Stream(trace.count_sent(stream));
            }
        }
        let sent = match ready.send(head, body) {
            Ok(sent) => sent,
            Err(error) => {
                return Attempt::Failed {
                    status: send_error(&error, &addr),
                    reached: Reached::Nowhere,
                };
            }
        };
        let mark = sent.mark();
        let mut guard = match now {
            Some(now) => CallGuard::sent_at(load.clone(), now),
            None => CallGuard::new(load.clone()),
        }
        .with_deadline(self.deadline);
        let response = sent.response(&addr);
        // The call's one timer: it bounds this wait, then the response body.
        let mut timer = self
            .deadline
            .map(|deadline| Box::pin(tokio::time::sleep_until(deadline)));
        let response = match timer.as_mut() {
            Some(timer) => tokio::select! {
                biased;
                response = response => response,
                () = timer.as_mut() => {
                    guard.failed();
                    return Attempt::Failed {
                        status: Status::deadline_exceeded(format!(
                            "deadline exceeded waiting for {addr} to answer"
                        )),
                        reached: Reached::Server,
                    };
                }
            },
            None => response.await,
        };
        match response {
            Ok(response) => {
                guard.responded(trailers_only_status(response.headers()));
                Attempt::Response(Answer {
                    response,
                    guard: Some(guard),
                    addr,
                    timer,
                    trace: None,
                })
            }
            Err(error) => {
                guard.failed();
                if let Some(rejected) = self.body.rejection() {
                    return Attempt::Failed {
                        status: rejected,
                        reached: Reached::Server,
                    };
                }
                let body_read = polled.is_none_or(|p| p.load(std::sync::atomic::Ordering::Relaxed));
                Attempt::Failed {
                    status: send_error(&error, &addr),
                    reached: reached(&ready, &error, mark, body_read),
                }
            }
        }
    }

    /// Whether a failed attempt is sent again at once, uncounted (gRFC A6's transparent
    /// retry): `refused_once` tracks the one retry a call gets for a refused stream.
    fn transparent(&self, attempt: &Attempt, refused_once: &mut bool) -> bool {
        let Attempt::Failed { reached, .. } = attempt else {
            return false;
        };
        transparent_allowed(*reached, refused_once)
            && self.body.can_resend()
            && self.time_for(Duration::ZERO)
    }

    /// Whether there is time for another attempt after `delay`.
    fn time_for(&self, delay: Duration) -> bool {
        self.deadline
            .is_none_or(|deadline| Instant::now() + delay < deadline)
    }

    fn throttle_allows(&self) -> bool {
        let allowed = self.throttle.is_none_or(Throttle::allows_retry)
            && self.inner.budget.as_ref().is_none_or(|b| b.withdraw());
        if !allowed {
            self.stats.throttled();
        }
        allowed
    }

    /// Classifies an attempt as [`verdict`] does, counting a finished success toward
    /// throttling.
    fn settle(&self, attempt: Attempt) -> Verdict {
        let verdict = verdict(attempt);
        if let Verdict::Done(Ok(_)) = verdict {
            self.record(true);
        }
        verdict
    }

    fn record(&self, success: bool) {
        if let Some(throttle) = self.throttle {
            if success {
                throttle.on_success();
            } else {
                throttle.on_failure();
            }
        }
    }

    /// Runs the call with up to `policy.max_attempts` attempts (one without a policy),
    /// plus transparent retries of attempts that never left the client.
    pub(super) async fn run(self, policy: Option<&RetryPolicy>, start: Start) -> CallResult {
        let max_attempts = policy.map_or(1, |p| p.max_attempts.clamp(1, self.max_attempts));
        let mut backoff = policy.map(|p| {
            Backoff::new(BackoffParams {
                initial: p.initial_backoff,
                multiplier: p.backoff_multiplier,
                max: p.max_backoff,
                jitter: crate::defaults::RETRY_JITTER,
            })
        });
        // Made on the first backoff only: most calls never need one.
        let mut rng: Option<SmallRng> = None;
        let mut previous = 0u32;
        let Start {
            mut kind,
            mut refused_once,
        } = start;
        loop {
            let attempt = self.attempt(previous, kind).await;
            if self.transparent(&attempt, &mut refused_once) {
                tracing::debug!("retrying transparently a call the server never processed");
                kind = AttemptKind::Transparent;
                continue;
            }
            let (code, result, push) = match self.settle(attempt) {
                Verdict::Done(result) => return result,
                Verdict::Failed(code, result, push) => (code, result, push),
            };
            let Some(policy) = policy else { return result };
            if !policy.retryable_status_codes.contains(&code) {
                return result;
            }
            self.record(false);
            if previous + 1 >= max_attempts || !self.body.can_replay() {
                return result;
            }
            let Some(backoff) = backoff.as_mut() else {
                return result;
            };
            let delay = match push {
                Pushback::Stop => return result,
                Pushback::After(delay) => {
                    backoff.reset();
                    delay
                }
                Pushback::None => {
                    let rng =
                        rng.get_or_insert_with(|| SmallRng::seed_from_u64(self.inner.next_seed()));
                    backoff.next_delay(rng)
                }
            };
            if !self.throttle_allows() {
                return result;
            }
            if let Some(deadline) = self.deadline
                && Instant::now() + delay >= deadline
            {
                // No attempt can start before the deadline: the call ends there, as in
                // gRPC, with DEADLINE_EXCEEDED rather than the last attempt's status.
                tokio::time::sleep_until(deadline).await;
                let last = match &result {
                    Ok(_) => format!("{code:?}"),
                    Err(status) => format!("{:?}: {}", status.code(), status.message()),
                };
                return Err(Status::deadline_exceeded(format!(
                    "deadline exceeded after {} attempts (last: {last})",
                    previous + 1
                )));
            }
            if let Some(trace) = self.trace {
                trace.backoff(delay);
            }
            tokio::time::sleep(delay).await;
            previous += 1;
            kind = AttemptKind::Retry;
        }
    }

    /// Runs the call hedged: the first attempt now, one more every `hedging_delay` (or at
    /// once after a non-fatal failure) up to `max_attempts`. The first OK or committed
    /// response wins and cancels the rest; a fatal code ends the call with it.
    pub(super) async fn run_hedged(self, policy: &HedgingPolicy) -> CallResult {
        type Pending<'a> = Pin<Box<dyn Future<Output = (u32, Attempt)> + Send + 'a>>;
        let max_attempts = policy.max_attempts.clamp(1, self.max_attempts);
        let this = &self;
        let launch = move |n: u32, kind: AttemptKind| -> Pending<'_> {
            Box::pin(async move { (n, this.attempt(n, kind).await) })
        };
        let mut pending: FuturesUnordered<Pending<'_>> = FuturesUnordered::new();
        pending.push(launch(0, AttemptKind::First));
        let mut sent = 1u32;
        let mut refused_once = false;
        let mut next_hedge = Box::pin(tokio::time::sleep(policy.hedging_delay));
        let mut last: Option<CallResult> = None;
        let mut stopped = false; // pushback, throttling or the deadline said no more
        loop {
            let can_hedge = sent < max_attempts && !stopped && self.body.can_replay();
            // Hedges replay a request body that has ended, so attempts never read the
            // caller's body at the same time and nothing can outgrow the record. With
            // nothing in flight and the body still open, no hedge can ever start.
            if pending.is_empty() && !(can_hedge && self.body.is_complete()) {
                break;
            }
            tokio::select! {
                Some((n, attempt)) = pending.next() => {
                    let attempt = match attempt {
                        // The server never processed it: send it again, uncounted.
                        attempt if self.transparent(&attempt, &mut refused_once) => {
                            pending.push(launch(n, AttemptKind::Transparent));
                            continue;
                        }
                        // No pick for this hedge while others still run: not the end.
                        Attempt::NotPicked(status) if !pending.is_empty() => {
                            last.get_or_insert(Err(status));
                            continue;
                        }
                        attempt => attempt,
                    };
                    let (code, result, push) = match self.settle(attempt) {
                        Verdict::Done(result) => return result,
                        Verdict::Failed(code, result, push) => (code, result, push),
                    };
                    if !policy.non_fatal_status_codes.contains(&code) {
                        return result;
                    }
                    self.record(false);
                    last = Some(result);
                    match push {
                        Pushback::Stop => stopped = true,
                        Pushback::After(delay) => next_hedge.as_mut().reset(Instant::now() + delay),
                        // A non-fatal failure sends the next hedge at once.
                        Pushback::None => next_hedge.as_mut().reset(Instant::now()),
                    }
                }
                _ = &mut next_hedge, if can_hedge => {
                    if !self.body.is_complete() {
                        // The first attempt is still sending its body: look again shortly.
                        next_hedge.as_mut().reset(Instant::now() + Duration::from_millis(1));
                    } else if self.time_for(Duration::ZERO) && self.throttle_allows() {
                        pending.push(launch(sent, AttemptKind::Hedge));
                        sent += 1;
                        next_hedge.as_mut().reset(Instant::now() + policy.hedging_delay);
                    } else {
                        stopped = true;
                    }
                }
                else => break,
            }
        }
        last.unwrap_or_else(|| Err(self.inner.deadline_exceeded(None)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn whole_bodies_share_the_channel_replay_budget_and_give_it_back() {
        let held = Arc::new(AtomicUsize::new(0));
        let first = BufferPermit::take(&held, 8, 10).expect("within the budget");
        assert!(BufferPermit::take(&held, 3, 10).is_none(), "8 + 3 > 10");
        assert_eq!(held.load(Ordering::Relaxed), 8);
        let second = BufferPermit::take(&held, 2, 10).expect("8 + 2 fits");
        drop(first);
        assert_eq!(held.load(Ordering::Relaxed), 2);
        drop(second);
        assert_eq!(held.load(Ordering::Relaxed), 0);
    }
}
