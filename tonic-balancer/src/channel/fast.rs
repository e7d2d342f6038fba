//! The fast path: a call whose method has no retry or hedging policy, whose request is
//! whole (a unary call), and which finds a READY subchannel at once. It is sent while
//! the call starts, then waits for its response head in [`FastCall`], a state machine
//! the caller's future holds inline: no boxed future, no task, no replay buffer, one
//! clock read and one deadline timer.
//!
//! The one thing it keeps for later is the request head (without its extensions,
//! which h2 never sends): h2 consumes the head it sends and gives nothing back, and a
//! transparent retry (gRFC A6: the stream never reached the server's application)
//! must send it again. Such a call leaves the fast path and goes on as
//! [`Inner::run`](super::Inner) does, from its transparent retry.

use super::attempt::{self, RequestBody, Start};
use super::future::Answer;
use super::{Inner, Prepared, finish, trailers_only_status};
use crate::deadline::{self, GRPC_TIMEOUT};
use crate::load::CallGuard;
use crate::resolver::Peer;
use crate::retry::MessageLimit;
use crate::stats::{AttemptKind, AttemptTrace};
use crate::subchannel::{H2Body, Outgoing, ReadyConn, Sent, SentMark, send_error};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::{Instant, Sleep};
use tonic::body::Body;
use tonic::{Code, Status};

/// A call sent on the fast path, waiting for its response head.
///
/// Dropped (the caller cancelled), its fields go in order: the stream is reset, the
/// attempt stops counting as load and its record ends, and then the call's.
pub(super) struct FastCall {
    sent: Sent,
    guard: CallGuard,
    /// The attempt's OpenTelemetry record.
    trace: Option<AttemptTrace>,
    /// The call's deadline timer, kept for the response body once the head arrives.
    timer: Option<Pin<Box<Sleep>>>,
    mark: SentMark,
    ready: ReadyConn,
    /// The call itself, its head kept for a transparent retry.
    call: Prepared,
    inner: Arc<Inner>,
}

/// What ended the wait for the response head.
pub(super) enum Head {
    Response(http::Response<H2Body>),
    Failed(h2::Error),
    Expired,
}

/// How a fast call goes on once its wait has ended.
// Made once per call and moved once: boxing the call would be the allocation this path
// exists to avoid.
#[allow(clippy::large_enum_variant)]
pub(super) enum Completion {
    /// The caller's answer.
    Done(Result<http::Response<Body>, Status>),
    /// Sent again, transparently, as a call that may wait.
    Retry(Arc<Inner>, Prepared),
}

impl FastCall {
    /// Sends `call` on `ready` at `now` (the call's own clock read), or hands the call
    /// back if the connection took no new stream: nothing was sent, and the call is
    /// retried transparently.
    // The call moves back whole on that rare path; boxing it would cost every call.
    #[allow(clippy::result_large_err)]
    pub(super) fn send(
        inner: &Arc<Inner>,
        call: Prepared,
        ready: ReadyConn,
        now: Instant,
    ) -> Result<FastCall, Prepared> {
        let body = match &call.body {
            RequestBody::Whole { message: None, .. } => Outgoing::Empty,
            RequestBody::Whole {
                message: Some(message),
                ..
            } => Outgoing::Message(message.clone()),
            RequestBody::Stream(_) => return Err(call),
        };
        call.record.method().attempt(AttemptKind::First);
        let mut head = head_to_send(&call.parts);
        if let Some(deadline) = call.deadline {
            let left = deadline.saturating_duration_since(now);
            head.headers
                .insert(GRPC_TIMEOUT, deadline::encode_timeout(left));
        }
        let mut trace = call
            .record
            .trace()
            .map(|trace| trace.attempt(AttemptKind::First, 0, call.parts.uri.path()));
        if let Some(trace) = trace.as_mut() {
            let whole = match &body {
                Outgoing::Message(message) => &message[..],
                _ => &[][..],
            };
            trace.sent(
                &Peer::from(&ready.subchannel.address),
                &mut head.headers,
                Some(whole),
            );
        }
        let sent = match ready.send(head, body) {
            Ok(sent) => sent,
            Err(error) => {
                let addr = Peer::from(&ready.subchannel.address);
                return Err(transparent_after_send(call, trace, &error, &addr));
            }
        };
        let mark = sent.mark();
        let guard =
            CallGuard::sent_at(ready.subchannel.load.clone(), now).with_deadline(call.deadline);
        let timer = call
            .deadline
            .map(|deadline| Box::pin(tokio::time::sleep_until(deadline)));
        Ok(FastCall {
            inner: inner.clone(),
            call,
            ready,
            sent,
            mark,
            guard,
            timer,
            trace,
        })
    }

    /// Waits for the response head, or the deadline.
    pub(super) fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Head> {
        let address = &self.ready.subchannel.address;
        if let Poll::Ready(result) = self.sent.poll_response(cx, || Peer::from(address)) {
            return Poll::Ready(match result {
                Ok(response) => Head::Response(response),
                Err(error) => Head::Failed(error),
            });
        }
        let expired = self
            .timer
            .as_mut()
            .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
        if expired {
            Poll::Ready(Head::Expired)
        } else {
            Poll::Pending
        }
    }

    /// Ends the call with what ended the wait, as the retry loop ends a call without a
    /// policy; or hands it over for a transparent retry.
    pub(super) fn complete(self, head: Head) -> Completion {
        let FastCall {
            inner,
            mut call,
            ready,
            sent,
            mark,
            mut guard,
            timer,
            mut trace,
        } = self;
        drop(sent);
        let addr = Peer::from(&ready.subchannel.address);
        let status = match head {
            Head::Response(response) => {
                let code = trailers_only_status(response.headers());
                guard.responded(code);
                let guard = match code {
                    // An answer: a success for retry throttling.
                    None | Some(Code::Ok) => {
                        if let Some(throttle) = &call.config.throttle {
                            throttle.on_success();
                        }
                        Some(guard)
                    }
                    // A Trailers-Only failure: the attempt is over.
                    Some(_) => None,
                };
                // The attempt goes on while its response streams.
                let trace = match (code, trace) {
                    (None, trace) => trace,
                    (Some(code), Some(mut trace)) => {
                        trace.finish(code);
                        None
                    }
                    (Some(_), None) => None,
                };
                let answer = Answer {
                    response,
                    guard,
                    addr,
                    timer,
                    trace,
                };
                let limit = call
                    .response_limit
                    .map(|limit| MessageLimit::new(limit, "response"));
                return Completion::Done(finish(Ok(answer), call.record, limit, call.deadline));
            }
            Head::Expired => {
                guard.failed();
                if let Some(trace) = trace.as_mut() {
                    trace.finish(Code::DeadlineExceeded);
                }
                Status::deadline_exceeded(format!("deadline exceeded waiting for {addr} to answer"))
            }
            Head::Failed(error) => {
                guard.failed();
                let status = send_error(&error, &addr);
                if let Some(trace) = trace.as_mut() {
                    trace.finish(status.code());
                }
                let reached = attempt::reached(&ready, &error, mark, true);
                let mut refused_once = false;
                if attempt::transparent_allowed(reached, &mut refused_once)
                    && call
                        .deadline
                        .is_none_or(|deadline| Instant::now() < deadline)
                {
                    tracing::debug!("retrying transparently a call the server never processed");
                    call.start = Start {
                        kind: AttemptKind::Transparent,
                        refused_once,
                    };
                    return Completion::Retry(inner, call);
                }
                status
            }
        };
        Completion::Done(finish(Err(status), call.record, None, call.deadline))
    }
}

/// A call whose connection took no new stream: nothing was sent, so it goes again,
/// transparently (gRFC A6), on the path that may wait.
fn transparent_after_send(
    mut call: Prepared,
    trace: Option<AttemptTrace>,
    error: &h2::Error,
    addr: &Peer,
) -> Prepared {
    if let Some(mut trace) = trace {
        trace.finish(send_error(error, addr).code());
    }
    tracing::debug!("retrying transparently a call the server never processed");
    call.start = Start {
        kind: AttemptKind::Transparent,
        refused_once: false,
    };
    call
}

/// What h2 is given to send: a copy of the call's head without its extensions (h2
/// sends none, and the call keeps them for a retry).
fn head_to_send(parts: &http::request::Parts) -> http::request::Parts {
    let (mut head, ()) = http::Request::new(()).into_parts();
    head.method = parts.method.clone();
    head.uri = parts.uri.clone();
    head.version = parts.version;
    head.headers = parts.headers.clone();
    head
}
