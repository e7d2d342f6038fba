//! The channel's response future and the response body that carries a call's load guard.

use super::status;
use crate::stats::CallRecord;
use crate::subchannel::CallGuard;
use bytes::Bytes;
use http_body::Frame;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::Status;
use tonic::body::Body;

type BoxFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Status>> + Send>>;

/// The future a [`BalancedChannel`](crate::BalancedChannel) call returns.
///
/// # Cancel safety
/// Dropping it cancels the call: a call still waiting for a READY subchannel leaves the
/// queue, and a call already sent is reset on its HTTP/2 stream and stops counting as
/// load on its subchannel.
pub struct ResponseFuture {
    inner: BoxFuture,
}

impl ResponseFuture {
    pub(crate) fn new<F>(future: F) -> Self
    where
        F: Future<Output = Result<http::Response<Body>, Status>> + Send + 'static,
    {
        Self {
            inner: Box::pin(future),
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<Body>, Status>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its call's load guard until the stream ends (trailers,
    /// an error, or the caller dropping it).
    pub(crate) struct GuardedBody {
        #[pin]
        inner: Body,
        guard: Option<CallGuard>,
        addr: SocketAddr,
    }
}

impl GuardedBody {
    /// Wraps `inner` so that `guard` is released when the stream ends.
    pub(crate) fn wrap(inner: Body, guard: CallGuard, addr: SocketAddr) -> Body {
        // An already finished body (a Trailers-Only response) releases the guard now:
        // `Body::new` would discard the wrapper as empty anyway.
        Body::new(GuardedBody {
            inner,
            guard: Some(guard),
            addr,
        })
    }
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) if !frame.is_trailers() => {}
            // Trailers, an error or the end: the call is over.
            end => {
                if let Some(mut guard) = this.guard.take() {
                    match end {
                        Some(Ok(trailers)) => {
                            if let Some(code) = trailers.trailers_ref().and_then(super::grpc_status)
                            {
                                guard.finished(code);
                            }
                        }
                        Some(Err(_)) => guard.failed(),
                        None => {}
                    }
                }
            }
        }
        Poll::Ready(frame.map(|r| r.map_err(|e| status::from_body_error(e, *this.addr))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its call's record (golden signals, the call span's
    /// status) when the stream ends.
    pub(crate) struct RecordedBody {
        #[pin]
        inner: Body,
        record: Option<CallRecord>,
    }
}

impl RecordedBody {
    pub(crate) fn wrap(inner: Body, record: CallRecord) -> Body {
        // A body already at its end is discarded by `Body::new`: the record's drop would
        // then count a cancellation, so it must have been finished before (Trailers-Only).
        Body::new(RecordedBody {
            inner,
            record: Some(record),
        })
    }
}

impl http_body::Body for RecordedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        let code = match &frame {
            Some(Ok(frame)) => frame
                .trailers_ref()
                .map(|t| super::grpc_status(t).unwrap_or(tonic::Code::Unknown)),
            Some(Err(status)) => Some(status.code()),
            // Ended without trailers: a protocol error, as tonic will report it.
            None => Some(tonic::Code::Internal),
        };
        if let Some(code) = code
            && let Some(record) = this.record.take()
        {
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
