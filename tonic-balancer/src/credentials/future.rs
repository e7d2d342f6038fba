//! The response future of [`Bearer`](super::Bearer).

use http::HeaderValue;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tonic::Status;
use tower::{BoxError, Service};

type WaitFuture = Pin<Box<dyn Future<Output = Result<HeaderValue, Status>> + Send>>;

pin_project_lite::pin_project! {
    /// The future a [`Bearer`](super::Bearer) call returns: the inner service's future,
    /// after waiting for a token if none was at hand.
    ///
    /// # Cancel safety
    /// Dropping it while it waits for a token leaves the fetch running for other calls;
    /// dropping it later drops the inner service's future.
    pub struct ResponseFuture<S, B>
    where
        S: Service<http::Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<http::Request<B>>,
    {
        Waiting {
            token: WaitFuture,
            call: Option<(S, http::Request<B>)>,
        },
        Calling {
            #[pin]
            future: S::Future,
        },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<http::Request<B>>,
{
    pub(super) fn call(future: S::Future) -> Self {
        Self {
            state: State::Calling { future },
        }
    }

    pub(super) fn wait(
        token: impl Future<Output = Result<HeaderValue, Status>> + Send + 'static,
        inner: S,
        request: http::Request<B>,
    ) -> Self {
        Self {
            state: State::Waiting {
                token: Box::pin(token),
                call: Some((inner, request)),
            },
        }
    }
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting { token, call } => {
                    let header = ready!(token.as_mut().poll(cx));
                    let Some((mut inner, mut request)) = call.take() else {
                        // Only reachable if polled after completing with an error.
                        return Poll::Ready(Err("polled after completion".into()));
                    };
                    let header = match header {
                        Ok(header) => header,
                        Err(status) => return Poll::Ready(Err(Box::new(status))),
                    };
                    request
                        .headers_mut()
                        .insert(http::header::AUTHORIZATION, header);
                    let future = inner.call(request);
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    return future.poll(cx).map_err(Into::into);
                }
            }
        }
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<http::Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Waiting { .. } => "waiting for a token",
            State::Calling { .. } => "calling",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
