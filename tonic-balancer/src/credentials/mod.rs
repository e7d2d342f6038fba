//! Per-call credentials: a tower layer that puts `authorization: Bearer <token>` on every
//! call, from a token source of yours, refreshed in the background before it expires.
//!
//! ```no_run
//! # async fn demo(channel: tonic_balancer::BalancedChannel) {
//! use std::time::Duration;
//! use tonic_balancer::credentials::{BearerLayer, Token};
//! use tower::Layer;
//!
//! let layer = BearerLayer::new(|| async {
//!     // Ask the identity provider; any error type that converts into a BoxError.
//!     let value: String = fetch_from_idp().await?;
//!     Ok::<_, std::io::Error>(Token::expires_in(value, Duration::from_secs(3600)))
//! });
//! let service = layer.layer(channel);
//! // let client = OrdersClient::new(service);
//! # }
//! # async fn fetch_from_idp() -> Result<String, std::io::Error> { Ok(String::new()) }
//! ```
//!
//! # Why above the channel
//! [`Bearer`] wraps a [`BalancedChannel`](crate::BalancedChannel) (or any
//! `tower::Service<http::Request<B>>`), so it runs once per call: the channel's retries
//! and hedges resend the call's headers as they were, and every attempt carries the
//! same token, even if a refresh lands between two attempts.
//!
//! # When tokens are fetched
//! One background task per layer (started by the first call, stopped when the layer
//! and every service made from it are dropped) does all fetching, so any number of
//! concurrent calls share one fetch:
//! - the first call, or a call made while no valid token exists, asks for a fetch and
//!   waits for it, at most [`RefreshPolicy::fetch_timeout`] and never past its own
//!   deadline;
//! - while a token is valid, it is refreshed in the background once
//!   [`RefreshPolicy::lifetime_fraction`] of its lifetime has passed, or
//!   [`RefreshPolicy::before_expiry`] before it expires if that comes first, so calls
//!   never wait for a refresh. A failed refresh is retried every
//!   [`RefreshPolicy::retry_delay`] while the old token lasts.
//!
//! A call that finds no valid token and whose fetch fails ends with `UNAUTHENTICATED`
//! and the source's error; calls in the next [`RefreshPolicy::retry_delay`] fail at
//! once with the same error instead of asking the source again.
//!
//! # Only over TLS
//! A bearer token sent in cleartext can be read and replayed by anyone on the path, so,
//! as grpc-go's `RequireTransportSecurity`, tokens go only over a channel with TLS. Two
//! places enforce it:
//! - where the layer meets the channel, [`BearerLayer::try_layer`] (the one place that
//!   knows both, when the client is built) returns an [`ErrorKind::InvalidConfig`]
//!   error saying the channel has no TLS and how to opt in;
//! - the channel itself refuses every call that carries a token from this module
//!   (each such request is marked) with `UNAUTHENTICATED` and the same words, so the
//!   rule holds however the layers are stacked (`tower::Layer::layer` cannot return an
//!   error, and a middleware may sit between the layer and the channel).
//!
//! A channel whose traffic is protected another way (a service mesh sidecar on
//! localhost, a WireGuard tunnel) opts in with
//! [`Builder::allow_credentials_without_tls`](crate::Builder::allow_credentials_without_tls).
//! `try_layer` takes any service implementing [`TransportSecurity`], as
//! [`BalancedChannel`](crate::BalancedChannel) does.
//!
//! # Secrets
//! The header value is marked sensitive (`HeaderValue::set_sensitive`): HTTP/2 sends it
//! never-indexed and `Debug` prints `Sensitive`. [`Token`], [`BearerLayer`] and
//! [`Bearer`] print no token in their `Debug`, and this crate logs none.

mod cache;
mod future;
mod layer;

pub use future::ResponseFuture;
pub use layer::BearerLayer;
pub(crate) use layer::refusal;

use crate::error::{Error, ErrorKind};
use cache::Cache;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{BoxError, Service};

pub use crate::defaults::DEFAULT_TOKEN_FETCH_TIMEOUT as DEFAULT_FETCH_TIMEOUT;
pub use crate::defaults::DEFAULT_TOKEN_LIFETIME_FRACTION as DEFAULT_LIFETIME_FRACTION;
pub use crate::defaults::DEFAULT_TOKEN_REFRESH_BEFORE_EXPIRY as DEFAULT_REFRESH_BEFORE_EXPIRY;
pub use crate::defaults::DEFAULT_TOKEN_RETRY_DELAY as DEFAULT_RETRY_DELAY;

/// A bearer token and when it expires (a `tokio` instant, so tests can pause time).
///
/// Its `Debug` shows when it expires, never its value.
#[derive(Clone)]
pub struct Token {
    value: String,
    expires_at: Option<Instant>,
}

impl Token {
    /// A token valid until `expires_at`.
    pub fn new(value: impl Into<String>, expires_at: Instant) -> Self {
        Self {
            value: value.into(),
            expires_at: Some(expires_at),
        }
    }

    /// A token valid for `lifetime` from now (the `expires_in` of an OAuth 2 response).
    /// A lifetime too long for the clock (`Duration::MAX`) saturates to decades.
    pub fn expires_in(value: impl Into<String>, lifetime: Duration) -> Self {
        Self::new(value, crate::deadline::after(lifetime))
    }

    /// A token valid for `seconds` from now, as an OAuth 2 response's `expires_in`
    /// says it (a JSON integer, which a faulty server can send negative or huge). Zero
    /// or negative: already expired, so the fetch counts as failed and is retried after
    /// [`RefreshPolicy::retry_delay`]; huge: saturates.
    pub fn expires_in_secs(value: impl Into<String>, seconds: i64) -> Self {
        let lifetime = Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
        Self::expires_in(value, lifetime)
    }

    /// A token that never expires: fetched once, never refreshed.
    pub fn without_expiry(value: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            expires_at: None,
        }
    }

    /// The token itself.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// When it expires; `None`: never.
    pub fn expires_at(&self) -> Option<Instant> {
        self.expires_at
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let expires_in = self
            .expires_at
            .map(|at| at.saturating_duration_since(Instant::now()));
        f.debug_struct("Token")
            .field("value", &"<redacted>")
            .field("expires_in", &expires_in)
            .finish()
    }
}

/// What a service says about its transport, for credentials that must not travel in
/// cleartext (grpc-go: `PerRPCCredentials.RequireTransportSecurity`).
pub trait TransportSecurity {
    /// `Ok` if bearer tokens may be sent through this service: its connections use TLS,
    /// or its owner opted in to sending them without. `Err` says why not, and how to
    /// opt in.
    fn check_transport_security(&self) -> Result<(), String>;
}

/// Where tokens come from: an identity provider, a metadata server, a file.
///
/// Closures `Fn() -> impl Future<Output = Result<Token, E>>` implement it, for any
/// error `E` that converts into a [`BoxError`]. The error's text becomes part of the
/// `UNAUTHENTICATED` message calls fail with, so it should not contain secrets.
pub trait TokenSource: Send + Sync + 'static {
    /// Fetches a fresh token.
    fn fetch(&self) -> impl Future<Output = Result<Token, BoxError>> + Send;
}

impl<F, Fut, E> TokenSource for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Token, E>> + Send,
    E: Into<BoxError>,
{
    fn fetch(&self) -> impl Future<Output = Result<Token, BoxError>> + Send {
        let fetch = self();
        async move { fetch.await.map_err(Into::into) }
    }
}

/// When a [`BearerLayer`] refreshes its token and how long calls wait for one.
///
/// ```
/// # use std::time::Duration;
/// # use tonic_balancer::credentials::RefreshPolicy;
/// let mut policy = RefreshPolicy::default();
/// policy.before_expiry = Duration::from_secs(60);
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RefreshPolicy {
    /// Refresh once this share of a token's lifetime (from its fetch to its expiry) has
    /// passed; in (0, 1]. Default [`DEFAULT_LIFETIME_FRACTION`].
    pub lifetime_fraction: f64,
    /// Refresh at the latest this long before expiry, if that is sooner than
    /// `lifetime_fraction` says; but never before half the lifetime has passed, so a
    /// token that lives less than twice this long is not fetched again at once.
    /// Default [`DEFAULT_REFRESH_BEFORE_EXPIRY`].
    pub before_expiry: Duration,
    /// How long one fetch may take before it counts as failed; a call waiting for a
    /// token waits at most this long. Must be > 0. Default [`DEFAULT_FETCH_TIMEOUT`].
    pub fetch_timeout: Duration,
    /// After a failed fetch: the wait before a background retry, and the time during
    /// which calls that find no valid token fail at once with that failure. Also the
    /// least time between two fetches. Default [`DEFAULT_RETRY_DELAY`].
    pub retry_delay: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            lifetime_fraction: DEFAULT_LIFETIME_FRACTION,
            before_expiry: DEFAULT_REFRESH_BEFORE_EXPIRY,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            retry_delay: DEFAULT_RETRY_DELAY,
        }
    }
}

impl RefreshPolicy {
    fn validate(&self) -> Result<(), Error> {
        let invalid = |field: &str, why: String| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("refresh_policy.{field}: {why}"),
            )
        };
        let fraction = self.lifetime_fraction;
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(invalid(
                "lifetime_fraction",
                format!("must be in (0, 1], got {fraction}"),
            ));
        }
        if self.fetch_timeout.is_zero() {
            return Err(invalid("fetch_timeout", "must be > 0".to_owned()));
        }
        Ok(())
    }

    /// When to refresh a token fetched at `fetched` that expires at `expires_at`.
    fn refresh_at(&self, fetched: Instant, expires_at: Instant) -> Instant {
        let life = expires_at.saturating_duration_since(fetched);
        let share = |fraction: f64| {
            Duration::try_from_secs_f64(life.as_secs_f64() * fraction).unwrap_or(life)
        };
        let by_fraction = share(self.lifetime_fraction);
        let by_margin = life.saturating_sub(self.before_expiry);
        let earliest = by_fraction.min(share(0.5)).max(self.retry_delay.min(life));
        fetched + by_fraction.min(by_margin).max(earliest)
    }
}

/// Puts `authorization: Bearer <token>` on every request to `S`; made by [`BearerLayer`].
///
/// Errors from `S` pass through; a call for which no token could be had fails with a
/// [`tonic::Status`]: `UNAUTHENTICATED` (the source failed or took longer than
/// [`RefreshPolicy::fetch_timeout`]) or `DEADLINE_EXCEEDED` (the call's deadline came
/// first). Both arrive boxed, as tower errors do; tonic clients turn them back into the
/// status.
pub struct Bearer<S> {
    inner: S,
    cache: Arc<Cache>,
}

/// Marks a request whose `authorization` header this module set, so a channel without
/// TLS can refuse it (see the [module docs](self)).
#[derive(Clone, Copy, Debug)]
pub(crate) struct BearerAttached;

impl<S> Bearer<S> {
    /// Wraps `inner` with a token source of its own (and its own background task). The
    /// channel refuses its calls if it has no TLS; [`BearerLayer::try_layer`] says so
    /// when the client is built.
    pub fn new<T: TokenSource>(inner: S, source: T) -> Self {
        BearerLayer::new(source).layer_unchecked(inner)
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for Bearer<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            cache: self.cache.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Bearer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bearer")
            .field("inner", &self.inner)
            .field("token", &*self.cache)
            .finish()
    }
}

impl<S, B> Service<http::Request<B>> for Bearer<S>
where
    S: Service<http::Request<B>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        request.extensions_mut().insert(BearerAttached);
        if let Some(header) = self.cache.header(Instant::now()) {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, header);
            return ResponseFuture::call(self.inner.call(request));
        }
        // No valid token: wait for one. The service made ready goes with the call.
        let deadline = call_deadline(request.headers());
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        ResponseFuture::wait(self.cache.wait(deadline), inner, request)
    }
}

/// The call's deadline: the inherited one or its own `grpc-timeout`, whichever is sooner.
fn call_deadline(headers: &http::HeaderMap) -> Option<Instant> {
    let own = crate::deadline::request_timeout(headers)
        .and_then(Result::ok)
        .map(crate::deadline::after);
    [crate::deadline::current(), own]
        .into_iter()
        .flatten()
        .min()
}

#[cfg(test)]
mod tests;
