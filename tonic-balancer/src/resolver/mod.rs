//! Resolvers turn a target into the set of addresses to balance over.
//!
//! A resolver is a stream of address sets: each item replaces the previous set, and the
//! channel diffs it against the subchannels it has (new addresses connect, removed ones
//! drain, unchanged ones keep their connection and load state). When a connection is lost
//! or fails, the channel calls [`Resolve::re_resolve`] so a resolver that looks things up
//! (DNS) can refresh early; a fixed list ignores it.
//!
//! Four resolvers ship here: [`StaticList`] (what `ipv4:`/`ipv6:` targets use),
//! `Dns` (`dns:` and `dns+srv:` targets, on hickory-resolver; the `dns` feature, on by
//! default), [`Manual`] (push address sets from code: tests, or a service registry you
//! already watch) and [`from_stream`] (any `Stream` of address sets). Implement
//! [`Resolve`] for anything else.

#[cfg(feature = "dns")]
pub mod dns;
mod target;

#[cfg(feature = "dns")]
pub use dns::{Dns, DnsBuilder, DnsOptions};
pub use target::{DEFAULT_HTTP_PORT, DEFAULT_PORT, Target};

use futures_core::Stream;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::watch;

/// One address a resolver found: an IP socket address, or a Unix domain socket.
///
/// A Unix socket address (from a `unix:` target, or [`Address::unix`]) has its path in
/// [`unix`](Self::unix) and the unspecified `0.0.0.0:0` in `addr`, which nothing
/// connects to: the field stays a plain `SocketAddr` so code written for IP addresses
/// keeps working, and the path is what identifies the address (equality, hashing,
/// `Display` as `unix:PATH`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Address {
    /// Where to connect, for an IP address; `0.0.0.0:0` for a Unix socket.
    pub addr: SocketAddr,
    /// The path of a Unix domain socket to connect to instead of `addr` (Unix only).
    pub unix: Option<Arc<Path>>,
    /// The address's weight, if its resolver gives one: the weight of the DNS SRV
    /// record it came from (RFC 2782), or its xDS endpoint's `load_balancing_weight`.
    ///
    /// The [`locality_weighted`](crate::balance::LocalityWeighted) policy (which the xDS
    /// resolver chooses) splits a locality's share of the calls by it; the other
    /// policies do not read it. A new address set with the same address and another
    /// weight (or priority, or locality) keeps the subchannel and its connection, and
    /// the pickers take the new attributes; [`BalancedChannel::subchannels`](crate::BalancedChannel::subchannels) still shows
    /// the address as first resolved.
    pub weight: Option<u32>,
    /// The priority of the DNS SRV record this address came from (RFC 2782: lower is
    /// preferred), if any. The channel sends calls to the lowest priority that has a
    /// READY backend, and passes a priority over only once every one of its backends
    /// has failed (see [`resolver::dns`](crate::resolver::dns)). Addresses without one
    /// form a single group.
    pub priority: Option<u16>,
    /// The locality this address is in, as a key the resolver chooses (the xDS resolver
    /// writes `PRIORITY:region/zone/sub_zone`), if any.
    ///
    /// Read by the [`locality_weighted`](crate::config::LoadBalancingConfig::LocalityWeighted)
    /// policy, which gives each locality its weight's share of the calls; every other
    /// policy ignores it. As with the other attributes, a running subchannel keeps the
    /// `Address` it was created with: an address that moves to another locality keeps
    /// its first one until it leaves the address set.
    pub locality: Option<Arc<str>>,
}

impl Address {
    /// An address with no attributes.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            unix: None,
            weight: None,
            priority: None,
            locality: None,
        }
    }

    /// The Unix domain socket at `path`.
    pub fn unix(path: impl AsRef<Path>) -> Self {
        Self {
            addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            unix: Some(Arc::from(path.as_ref())),
            weight: None,
            priority: None,
            locality: None,
        }
    }
}

/// Where a connection or a call goes, as messages, logs and spans name it: an IP
/// address and port, or a Unix socket's path. Cheap to clone for an IP address (a
/// copy), one reference count for a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Peer {
    addr: SocketAddr,
    unix: Option<Arc<Path>>,
}

impl Peer {
    /// The IP address and port, `None` for a Unix socket.
    pub(crate) fn socket(&self) -> Option<SocketAddr> {
        self.unix.is_none().then_some(self.addr)
    }
}

impl From<&Address> for Peer {
    fn from(address: &Address) -> Self {
        Self {
            addr: address.addr,
            unix: address.unix.clone(),
        }
    }
}

impl From<SocketAddr> for Peer {
    fn from(addr: SocketAddr) -> Self {
        Self { addr, unix: None }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.unix {
            Some(path) => write!(f, "unix:{}", path.display()),
            None => self.addr.fmt(f),
        }
    }
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Self {
        Self::new(addr)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.unix {
            Some(path) => write!(f, "unix:{}", path.display()),
            None => self.addr.fmt(f),
        }
    }
}

/// A resolver's failure to produce addresses. The channel keeps serving the last good
/// set; if there never was one, calls fail with UNAVAILABLE carrying this message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ResolveError(String);

impl ResolveError {
    /// A resolution error with a message for the user ("lookup of x: NXDOMAIN").
    pub fn new(message: impl fmt::Display) -> Self {
        Self(message.to_string())
    }
}

/// The result of one resolution: a full address set (replacing the previous one) or an error.
pub type Resolution = Result<Vec<Address>, ResolveError>;

/// A source of address sets for a channel.
///
/// The channel's control task polls it; it is never touched on the call path.
/// Returning `Poll::Ready(None)` means the resolver has finished: the channel keeps the
/// last set it got for the rest of its life.
pub trait Resolve: Send + 'static {
    /// Polls for the next address set.
    fn poll_resolve(&mut self, cx: &mut Context<'_>) -> Poll<Option<Resolution>>;

    /// Asks for a fresh resolution soon, because a connection was lost or failed.
    /// Resolvers that look things up should rate-limit these requests. The default
    /// ignores them.
    fn re_resolve(&mut self) {}

    /// The service config that goes with the address set just returned, if this
    /// resolver has one (gRPC resolvers return the two together; the xDS resolver
    /// builds one from its routes and clusters). The channel takes it after every
    /// address set, before using the addresses; `None` keeps the config in force. A
    /// config from the resolver replaces the one given to the builder, as in gRPC; an
    /// invalid one is logged and changes nothing (gRFC A21). The default has none.
    fn take_service_config(&mut self) -> Option<crate::config::ServiceConfig> {
        None
    }
}

impl<R: Resolve + ?Sized> Resolve for Box<R> {
    fn poll_resolve(&mut self, cx: &mut Context<'_>) -> Poll<Option<Resolution>> {
        (**self).poll_resolve(cx)
    }
    fn re_resolve(&mut self) {
        (**self).re_resolve()
    }
    fn take_service_config(&mut self) -> Option<crate::config::ServiceConfig> {
        (**self).take_service_config()
    }
}

/// Without the `xds` feature, an `xds:` target is an error that says how to get one.
#[cfg(not(feature = "xds"))]
pub(crate) fn xds_target(_name: &str, target: &str) -> Result<Box<dyn Resolve>, crate::Error> {
    Err(crate::Error::new(
        crate::ErrorKind::UnsupportedTarget,
        format!("target {target:?}: xds: targets need the `xds` feature of tonic-balancer"),
    ))
}

// === impl StaticList ===

/// A fixed set of addresses, produced once.
#[derive(Clone, Debug)]
pub struct StaticList {
    addrs: Option<Vec<Address>>,
}

impl StaticList {
    /// A resolver that yields these addresses once and then stays quiet.
    pub fn new<I, A>(addrs: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<Address>,
    {
        Self {
            addrs: Some(addrs.into_iter().map(Into::into).collect()),
        }
    }
}

impl Resolve for StaticList {
    fn poll_resolve(&mut self, _: &mut Context<'_>) -> Poll<Option<Resolution>> {
        match self.addrs.take() {
            Some(addrs) => Poll::Ready(Some(Ok(addrs))),
            // Pending (not finished): a fixed list has nothing more to say, but the
            // channel must not read that as the end of the resolver.
            None => Poll::Pending,
        }
    }
}

// === impl Manual ===

/// A resolver fed from code through a [`ManualHandle`].
///
/// Only the latest set matters: updates made faster than the channel reads them are
/// coalesced.
#[derive(Debug)]
pub struct Manual {
    rx: tokio_stream_watch::WatchStream<Resolution>,
}

/// Pushes address sets into a [`Manual`] resolver. Cloneable.
#[derive(Clone, Debug)]
pub struct ManualHandle {
    tx: watch::Sender<Option<Resolution>>,
}

impl Manual {
    /// A resolver and the handle that feeds it. The resolver has no addresses until the
    /// first [`ManualHandle::update`].
    pub fn new() -> (Manual, ManualHandle) {
        let (tx, rx) = watch::channel(None);
        (
            Manual {
                rx: tokio_stream_watch::WatchStream::new(rx),
            },
            ManualHandle { tx },
        )
    }
}

impl ManualHandle {
    /// Replaces the address set.
    pub fn update<I, A>(&self, addrs: I)
    where
        I: IntoIterator<Item = A>,
        A: Into<Address>,
    {
        let addrs = addrs.into_iter().map(Into::into).collect();
        self.tx.send_replace(Some(Ok(addrs)));
    }

    /// Reports a resolution failure (the channel keeps its last good set).
    pub fn fail(&self, error: ResolveError) {
        self.tx.send_replace(Some(Err(error)));
    }
}

impl Resolve for Manual {
    fn poll_resolve(&mut self, cx: &mut Context<'_>) -> Poll<Option<Resolution>> {
        self.rx.poll_next(cx)
    }
}

/// A minimal `watch` → poll adapter (latest value wins), so `Manual` and the xDS
/// resolver need no extra dependency.
pub(crate) mod tokio_stream_watch {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::sync::watch;

    type Changed<T> = Pin<Box<dyn Future<Output = (watch::Receiver<Option<T>>, bool)> + Send>>;

    pub(crate) struct WatchStream<T> {
        pending: Changed<T>,
    }

    impl<T: Clone + Send + Sync + 'static> WatchStream<T> {
        pub(crate) fn new(rx: watch::Receiver<Option<T>>) -> Self {
            Self { pending: wait(rx) }
        }

        /// The latest value not seen yet (values sent in between are skipped); `None`
        /// once every sender is gone with nothing new.
        pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
            loop {
                let (mut rx, changed) = std::task::ready!(self.pending.as_mut().poll(cx));
                if !changed {
                    // Every sender is gone and nothing new was sent: finished.
                    return Poll::Ready(None);
                }
                let value = rx.borrow_and_update().clone();
                self.pending = wait(rx);
                // Senders only ever send `Some`; a `None` is the initial value.
                if value.is_some() {
                    return Poll::Ready(value);
                }
            }
        }
    }

    /// Resolves once the receiver has a value it has not seen (true), or once every
    /// sender is gone with nothing new (false).
    fn wait<T: Send + Sync + 'static>(mut rx: watch::Receiver<Option<T>>) -> Changed<T> {
        Box::pin(async move {
            let changed = rx.changed().await.is_ok();
            (rx, changed)
        })
    }

    impl<T> std::fmt::Debug for WatchStream<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("WatchStream").finish_non_exhaustive()
        }
    }
}

// === impl FromStream ===

/// A resolver from any stream of address sets; see [`from_stream`].
pub struct FromStream<S> {
    stream: Pin<Box<S>>,
}

/// Adapts a stream of resolutions into a [`Resolve`]. Re-resolution requests are ignored;
/// implement [`Resolve`] directly to act on them.
pub fn from_stream<S>(stream: S) -> FromStream<S>
where
    S: Stream<Item = Resolution> + Send + 'static,
{
    FromStream {
        stream: Box::pin(stream),
    }
}

impl<S> fmt::Debug for FromStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FromStream").finish_non_exhaustive()
    }
}

impl<S> Resolve for FromStream<S>
where
    S: Stream<Item = Resolution> + Send + 'static,
{
    fn poll_resolve(&mut self, cx: &mut Context<'_>) -> Poll<Option<Resolution>> {
        self.stream.as_mut().poll_next(cx)
    }
}

#[cfg(all(test, not(feature = "xds")))]
mod xds_off_tests {
    #[tokio::test]
    async fn xds_targets_without_the_feature_say_to_enable_it() {
        let err = crate::BalancedChannel::builder("xds:///orders")
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::UnsupportedTarget);
        assert!(err.to_string().contains("the `xds` feature"), "{err}");
    }
}
