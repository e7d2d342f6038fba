//! The server-side layer that turns an inbound `grpc-timeout` into the inherited deadline.

use super::{GRPC_TIMEOUT, decode_timeout, scope_exact};
use std::task::{Context, Poll};
use tokio::task::futures::TaskLocalFuture;
use tokio::time::Instant;

/// A tower layer for tonic servers: while a request's handler runs, the request's
/// `grpc-timeout` is the [inherited deadline](super::current), so calls the handler makes
/// through a [`BalancedChannel`](crate::BalancedChannel) carry the time left.
///
/// ```no_run
/// # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
/// # let addr = "127.0.0.1:0".parse()?;
/// use tonic_balancer::deadline::DeadlineLayer;
/// tonic::transport::Server::builder()
///     .layer(DeadlineLayer::new())
///     // .add_service(MyServiceServer::new(handler))
/// #   .add_service(tonic_health::server::health_reporter().1)
///     .serve(addr)
///     .await?;
/// # Ok(()) }
/// ```
///
/// A request without the header (or with a malformed one, which is logged) runs with no
/// inherited deadline.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeadlineLayer {
    _priv: (),
}

impl DeadlineLayer {
    /// The layer.
    pub fn new() -> Self {
        Self { _priv: () }
    }
}

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService::new(inner)
    }
}

/// The service [`DeadlineLayer`] makes.
#[derive(Clone, Debug)]
pub struct DeadlineService<S> {
    inner: S,
}

impl<S> DeadlineService<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> tower::Service<http::Request<B>> for DeadlineService<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TaskLocalFuture<Option<Instant>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let deadline = request.headers().get(GRPC_TIMEOUT).and_then(|value| {
            match decode_timeout(value.as_bytes()) {
                Ok(timeout) => Some(Instant::now() + timeout),
                Err(error) => {
                    tracing::debug!(%error, "ignoring inbound grpc-timeout");
                    None
                }
            }
        });
        // Each request gets exactly its own deadline, whatever the serving task had.
        scope_exact(deadline, self.inner.call(request))
    }
}
