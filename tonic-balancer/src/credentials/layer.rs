//! [`BearerLayer`]: wraps services in [`Bearer`].

use super::cache::Cache;
use super::{Bearer, RefreshPolicy, TokenSource};
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

    pub(super) fn wrap<S>(&self, inner: S) -> Bearer<S> {
        Bearer {
            inner,
            cache: self.cache.clone(),
        }
    }
}

impl<S> tower::Layer<S> for BearerLayer {
    type Service = Bearer<S>;

    fn layer(&self, inner: S) -> Bearer<S> {
        self.wrap(inner)
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
