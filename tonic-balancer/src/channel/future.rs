//! The channel's response future and the response body that carries a call's load guard.

use super::Inner;
use super::fast::{Completion, FastCall};
use crate::load::CallGuard;
use crate::resolver::Peer;
use crate::retry::MessageLimit;
use crate::stats::{AttemptTrace, CallRecord};
use crate::subchannel::H2Body;
use bytes::Bytes;
use http_body::Frame;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Status;
use tonic::body::Body;

type BoxFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Status>> + Send>>;

/// The future a [`BalancedChannel`](crate::BalancedChannel) call returns.
///
/// A call that can be sent at once and needs nothing kept for retries (no retry or
/// hedging policy, a unary request, a READY backend) is sent before this is returned,
/// and the future holds its state inline; any other call is a boxed future.
///
/// # Cancel safety
/// Dropping it cancels the call: a call still waiting for a READY subchannel leaves the
/// queue, and a call already sent is reset on its HTTP/2 stream and stops counting as
/// load on its subchannel.
pub struct ResponseFuture {
    kind: Kind,
}

// The fast path's state is inline on purpose: it is the box this future used to be.
#[allow(clippy::large_enum_variant)]
enum Kind {
    /// Not polled yet: the call starts on the first poll.
    Start {
        inner: Arc<Inner>,
        request: http::Request<Body>,
        span: tracing::Span,
    },
    /// Ended before anything was sent (a bad request, an expired deadline); `None`
    /// once taken.
    Ready(Option<Result<http::Response<Body>, Status>>),
    /// Sent on the fast path.
    Fast(FastCall),
    /// Everything else.
    Boxed(BoxFuture),
}

impl ResponseFuture {
    pub(super) fn start(
        inner: Arc<Inner>,
        request: http::Request<Body>,
        span: tracing::Span,
    ) -> Self {
        Self {
            kind: Kind::Start {
                inner,
                request,
                span,
            },
        }
    }

    pub(crate) fn ready(result: Result<http::Response<Body>, Status>) -> Self {
        Self {
            kind: Kind::Ready(Some(result)),
        }
    }

    pub(super) fn fast(call: FastCall) -> Self {
        Self {
            kind: Kind::Fast(call),
        }
    }

    pub(crate) fn boxed<F>(future: F) -> Self
    where
        F: Future<Output = Result<http::Response<Body>, Status>> + Send + 'static,
    {
        Self {
            kind: Kind::Boxed(Box::pin(future)),
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<Body>, Status>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match &mut this.kind {
                Kind::Start { .. } => {
                    if let Kind::Start {
                        inner,
                        request,
                        span,
                    } = std::mem::replace(&mut this.kind, Kind::Ready(None))
                    {
                        *this = inner.start(request, span);
                    }
                }
                Kind::Boxed(future) => return future.as_mut().poll(cx),
                Kind::Ready(result) => {
                    return Poll::Ready(result.take().unwrap_or_else(|| {
                        Err(Status::internal("ResponseFuture polled after it completed"))
                    }));
                }
                Kind::Fast(call) => {
                    let head = std::task::ready!(call.poll_head(cx));
                    if let Kind::Fast(call) = std::mem::replace(&mut this.kind, Kind::Ready(None)) {
                        match call.complete(head) {
                            Completion::Done(result) => return Poll::Ready(result),
                            Completion::Retry(inner, call) => {
                                this.kind = Kind::Boxed(Box::pin(inner.run(call)));
                            }
                        }
                    }
                }
            }
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// A finished attempt's response whose body has not been wrapped yet: the load guard
/// travels beside it until the call knows this attempt is the one it returns.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) response: http::Response<H2Body>,
    /// `None` once the attempt has ended (a Trailers-Only failure kept for the caller).
    pub(crate) guard: Option<CallGuard>,
    pub(crate) addr: Peer,
    /// The call's deadline timer, made by the attempt and kept for the response body:
    /// one timer per call.
    pub(crate) timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The attempt's OpenTelemetry record, ended with the response stream.
    pub(crate) trace: Option<AttemptTrace>,
}

pin_project_lite::pin_project! {
    /// The response body a caller reads. When the stream ends (trailers, an error, or
    /// the caller dropping it) it releases the attempt's load guard and ends the call's
    /// record, both with the final status.
    pub(crate) struct CallBody {
        #[pin]
        inner: H2Body,
        guard: Option<CallGuard>,
        // Before `record`: dropped first, so the attempt ends before its call.
        trace: Option<AttemptTrace>,
        record: Option<CallRecord>,
        addr: Peer,
        // The method's `maxResponseMessageBytes`.
        limit: Option<MessageLimit>,
        // The call's deadline: a stream does not outlive it.
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
        done: bool,
    }
}

impl CallBody {
    /// Wraps an answer's body with its guard and the call's record.
    pub(crate) fn wrap(
        answer: Answer,
        record: CallRecord,
        limit: Option<MessageLimit>,
        deadline: Option<tokio::time::Instant>,
    ) -> http::Response<Body> {
        let Answer {
            response,
            guard,
            addr,
            timer,
            trace,
        } = answer;
        response.map(|inner| {
            Body::new(CallBody {
                inner,
                guard,
                record: Some(record),
                trace,
                addr,
                limit,
                deadline: timer.or_else(|| deadline.map(|d| Box::pin(tokio::time::sleep_until(d)))),
                done: false,
            })
        })
    }
}

impl http_body::Body for CallBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        let expired = this
            .deadline
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
        let mut frame = if expired {
            *this.done = true;
            Some(Err(Status::deadline_exceeded(
                "deadline exceeded while the response was streaming",
            )))
        } else {
            std::task::ready!(this.inner.poll_frame(cx))
        };
        if let (Some(Ok(data)), Some(limit)) = (&frame, this.limit.as_mut())
            && let Some(bytes) = data.data_ref()
            && let Err(status) = limit.check(bytes)
        {
            frame = Some(Err(status));
        }
        let code = match &frame {
            Some(Ok(data)) if !data.is_trailers() => {
                if let (Some(trace), Some(bytes)) = (this.trace.as_mut(), data.data_ref()) {
                    trace.received(bytes);
                }
                return Poll::Ready(frame);
            }
            Some(Ok(trailers)) => trailers
                .trailers_ref()
                .and_then(super::grpc_status)
                .unwrap_or(tonic::Code::Unknown),
            Some(Err(status)) => status.code(),
            // Ended without trailers: a protocol error, as tonic will report it.
            None => tonic::Code::Internal,
        };
        if let Some(mut guard) = this.guard.take() {
            match &frame {
                Some(Err(_)) => guard.failed(),
                _ => guard.finished(code),
            }
        }
        if let Some(mut trace) = this.trace.take() {
            trace.finish(code);
        }
        if let Some(record) = this.record.take() {
            record.finish(code);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
