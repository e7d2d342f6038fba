//! The channel's response future and the response body that carries a call's load guard.

use super::status;
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
