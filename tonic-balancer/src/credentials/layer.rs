//! [`BearerLayer`]: wraps services in [`Bearer`].

use super::cache::Cache;
use super::{Bearer, RefreshPolicy, TokenSource, TransportSecurity};
use crate::error::Error;
use std::fmt;
use std::sync::Arc;

/// Wraps services in [`Bearer`], sharing one token and one background task among all of
/// them (see the [module docs](super) for when tokens are fetched).
///
/// Unlike most layers, it holds state, not only config: clones and the services it
/// makes share the token, so a process fetches one token per layer however many
/// channels or clients use it.
#[derive(Clone)]
pub struct BearerLayer {
    cache: Arc<Cache>,
}

impl BearerLayer {
    /// A layer with the default [`RefreshPolicy`].
    pub fn new<T: TokenSource>(source: T) -> Self {
        Self {
            cache: Arc::new(Cache::new(source, RefreshPolicy::default())),
        }
    }

    /// A layer with its own refresh policy.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) naming the field
    /// out of range, e.g. `refresh_policy.lifetime_fraction: must be in (0, 1], got 1.5`.
    pub fn with_policy<T: TokenSource>(source: T, policy: RefreshPolicy) -> Result<Self, Error> {
        policy.validate()?;
        Ok(Self {
            cache: Arc::new(Cache::new(source, policy)),
        })
    }

    /// The refresh policy in force.
    pub fn policy(&self) -> &RefreshPolicy {
        self.cache.policy()
    }

    /// Wraps `inner`, if it may carry bearer tokens: it uses TLS, or its owner opted in
    /// to sending them without (see the [module docs](super) for why).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) saying that the
    /// channel has no TLS and how to opt in.
    pub fn try_layer<S: TransportSecurity>(&self, inner: S) -> Result<Bearer<S>, Error> {
        inner
            .check_transport_security()
            .map_err(|why| Error::new(crate::ErrorKind::InvalidConfig, refusal(&why)))?;
        Ok(self.layer_unchecked(inner))
    }

    pub(super) fn layer_unchecked<S>(&self, inner: S) -> Bearer<S> {
        Bearer {
            inner,
            cache: self.cache.clone(),
        }
    }
}

/// Why bearer credentials are refused, as the error and the calls' status say it.
pub(crate) fn refusal(why: &str) -> String {
    format!("bearer credentials refused: {why}")
}

/// Wraps any service; a [`BalancedChannel`](crate::BalancedChannel) without TLS then
/// refuses the calls (`UNAUTHENTICATED`). [`BearerLayer::try_layer`] reports that when
/// the client is built instead.
impl<S> tower::Layer<S> for BearerLayer {
    type Service = Bearer<S>;

    fn layer(&self, inner: S) -> Bearer<S> {
        self.layer_unchecked(inner)
    }
}

impl fmt::Debug for BearerLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerLayer")
            .field("policy", self.cache.policy())
            .field("token", &*self.cache)
            .finish()
    }
}
