//! The attempt driver: one call, one or more attempts (gRFC A6).
//!
//! Every attempt is a new pick (retries sit above the balancer), carries the time left
//! as `grpc-timeout`, and after the first carries `grpc-previous-rpc-attempts`. A call is
//! *committed*, and never sent again, once response headers arrive that are not a
//! Trailers-Only response, or once its request body outgrows the replay buffer.

use super::future::Answer;
use super::{Inner, status, trailers_only_status};
use crate::backoff::{Backoff, BackoffParams};
use crate::balance::Picker;
use crate::config::{HedgingPolicy, RetryPolicy};
use crate::deadline::{self, GRPC_TIMEOUT};
use crate::load::CallGuard;
use crate::retry::{Pushback, Replay, Throttle, pushback};
use crate::stats::{AttemptKind, MethodStats};
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
enum Attempt {
    /// Response headers arrived.
    Response(Answer),
    /// The transport failed. `sent` is false if the request never reached the server's
    /// handler (its body was never read, or the stream was refused).
    Failed { status: Status, sent: bool },
    /// No subchannel could be picked (the channel is failing, or the deadline passed).
    NotPicked(Status),
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
        Attempt::NotPicked(status) => Verdict::Done(Err(status)),
    }
}

/// One call's fixed inputs.
pub(super) struct Call<'a> {
    pub(super) inner: &'a Inner,
    pub(super) picker: &'a dyn Picker,
    pub(super) parts: Parts,
    pub(super) replay: Replay,
    pub(super) wait_for_ready: bool,
    pub(super) deadline: Option<Instant>,
    pub(super) throttle: Option<&'a Throttle>,
    /// The builder's cap on attempts (grpc-go's `WithMaxCallAttempts`).
    pub(super) max_attempts: u32,
    pub(super) stats: &'a MethodStats,
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
        let attempt = self
            .send_attempt(previous, kind)
            .instrument(span.clone())
            .await;
        match &attempt {
            Attempt::Failed { status, .. } | Attempt::NotPicked(status) => {
                span.record("rpc.grpc.status_code", status.code() as i32);
            }
            Attempt::Response(answer) => {
                if let Some(code) = trailers_only_status(answer.response.headers()) {
                    span.record("rpc.grpc.status_code", code as i32);
                }
            }
        }
        attempt
    }

    /// One attempt: pick, send, wrap the response body in the load guard.
    async fn send_attempt(&self, previous: u32, kind: AttemptKind) -> Attempt {
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
            let addr = ready.subchannel.address.addr;
            span.record("server.address", tracing::field::display(addr.ip()));
            span.record("server.port", addr.port());
        }
        let mut head = self.parts.clone();
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
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
        let (body, polled) = self.replay.attempt_body();
        let request = http::Request::from_parts(head, body);

        let addr = ready.subchannel.address.addr;
        let mut guard = CallGuard::new(ready.subchannel.load.clone());
        let mut channel = ready.channel;
        let send = async {
            tower::ServiceExt::ready(&mut channel).await?;
            tower::Service::call(&mut channel, request).await
        };
        // The whole send is bounded by the deadline: tonic's own timer starts only once
        // its buffer has taken the request, and a server at its stream limit can hold a
        // request before that.
        let sent = match self.deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, send).await {
                Ok(sent) => sent,
                Err(_) => {
                    guard.failed();
                    return Attempt::Failed {
                        status: Status::deadline_exceeded(format!(
                            "deadline exceeded waiting for {addr} to answer"
                        )),
                        sent: true,
                    };
                }
            },
            None => send.await,
        };
        match sent {
            Ok(response) => {
                guard.responded(trailers_only_status(response.headers()));
                Attempt::Response(Answer {
                    response,
                    guard: Some(guard),
                    addr,
                })
            }
            Err(error) => {
                guard.failed();
                if let Some(rejected) = self.replay.rejection() {
                    return Attempt::Failed {
                        status: rejected,
                        sent: true,
                    };
                }
                let refused = status::never_processed(&error);
                let sent = polled.load(std::sync::atomic::Ordering::Relaxed) && !refused;
                Attempt::Failed {
                    status: status::from_send_error(&error, addr),
                    sent,
                }
            }
        }
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
    pub(super) async fn run(self, policy: Option<&RetryPolicy>) -> CallResult {
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
        let (mut previous, mut transparent) = (0u32, 0u32);
        let mut kind = AttemptKind::First;
        loop {
            let attempt = self.attempt(previous, kind).await;
            if let Attempt::Failed { sent: false, .. } = &attempt
                && transparent < crate::defaults::MAX_TRANSPARENT_RETRIES
                && self.replay.can_replay()
                && self.time_for(Duration::ZERO)
            {
                transparent += 1;
                tracing::debug!(transparent, "retrying a call that never left the client");
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
            if previous + 1 >= max_attempts || !self.replay.can_replay() {
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
        let mut transparent = 0u32;
        let mut next_hedge = Box::pin(tokio::time::sleep(policy.hedging_delay));
        let mut last: Option<CallResult> = None;
        let mut stopped = false; // pushback, throttling or the deadline said no more
        loop {
            let can_hedge = sent < max_attempts && !stopped && self.replay.can_replay();
            // Hedges replay a request body that has ended, so attempts never read the
            // caller's body at the same time and nothing can outgrow the record. With
            // nothing in flight and the body still open, no hedge can ever start.
            if pending.is_empty() && !(can_hedge && self.replay.is_complete()) {
                break;
            }
            tokio::select! {
                Some((n, attempt)) = pending.next() => {
                    let attempt = match attempt {
                        // Never left the client: send it again, uncounted.
                        Attempt::Failed { sent: false, .. }
                            if transparent < crate::defaults::MAX_TRANSPARENT_RETRIES
                                && self.replay.can_replay()
                                && self.time_for(Duration::ZERO) =>
                        {
                            transparent += 1;
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
                    if !self.replay.is_complete() {
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
