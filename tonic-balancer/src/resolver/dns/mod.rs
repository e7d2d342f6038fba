//! The DNS resolver: `dns:` targets (A and AAAA records) and `dns+srv:` targets (SRV
//! records), looked up with [hickory-resolver](https://docs.rs/hickory-resolver) and kept
//! fresh.
//!
//! A channel built for `dns:///orders.svc:50051` uses it without further ado; build one
//! with [`Dns::builder`] to pass to
//! [`BalancedChannel::builder_with_resolver`](crate::BalancedChannel::builder_with_resolver),
//! or to tune it through [`DnsOptions`] (also
//! [`Builder::dns_options`](crate::Builder::dns_options)).
//!
//! # When it looks up
//!
//! A fleet behind a name changes: instances are replaced, scaled out, moved. A client that
//! resolves once (tonic's `Endpoint`) keeps calling the addresses it found at start-up.
//! This resolver looks up again:
//!
//! - **when the answer expires**: after the shortest TTL of the records it used, clamped
//!   to [`DnsOptions::min_refresh`] (default 5 s) and [`DnsOptions::max_refresh`]
//!   (default 5 min). The floor protects the DNS server from names published with TTL 0
//!   (Consul's default) or 1 s; the ceiling bounds how stale the set can get when a
//!   long TTL outlives a change.
//! - **when a connection is lost or fails** (the channel calls
//!   [`Resolve::re_resolve`]): a backend that went
//!   away may have been replaced under the same name. These lookups are rate limited,
//!   as in gRPC: at most one per [`DnsOptions::min_re_resolve_interval`] (default 30 s)
//!   after the previous lookup started, so a flapping fleet cannot flood the DNS server.
//!   Requests in the meantime are coalesced into one lookup, not dropped.
//!
//! hickory's own cache is turned off (size 0, and cleared before each lookup): the
//! schedule above is the cache, and a forced lookup must ask the server, not get the
//! answer that was just found wanting.
//!
//! # What it reports
//!
//! A and AAAA records (A first) become the address set, every address with the target's
//! port. A new set is reported only when it differs from the last one as a set: a DNS
//! server rotating its records is not a change. The channel then connects new addresses,
//! drains removed ones and leaves the rest alone.
//!
//! # Failures
//!
//! A lookup that fails (timeout, SERVFAIL, NXDOMAIN) or finds no addresses is reported as
//! a [`ResolveError`](crate::resolver::ResolveError) and retried with gRPC's backoff
//! ([`DnsOptions::retry_base_delay`], ×1.6, ±20 %, up to
//! [`DnsOptions::retry_max_delay`]). The channel keeps serving the last good set
//! meanwhile: a DNS outage does not take the backends away. A name that never resolved
//! fails calls with UNAVAILABLE naming the DNS error:
//! `no ready endpoints for dns:///orders.svc:50051: last error: DNS lookup of orders.svc:
//! no such name (NXDOMAIN)`.
//!
//! # SRV
//!
//! `dns+srv:///_grpc._tcp.orders.svc` looks up the SRV records of the name (RFC 2782;
//! Consul and Kubernetes publish ports this way), then the A and AAAA records of each
//! record's target, which gives host:port pairs. Priority is honoured on what the
//! channel can *reach* (RFC 2782): every target that resolves becomes an address carrying
//! its [`Address::priority`](crate::resolver::Address::priority), and the channel
//! connects to all of them but sends calls only to the lowest priority with a READY
//! backend. It passes a priority over once every backend in it has failed (a failed
//! lookup, refused or lost connections, failing health checks, ejection), and comes
//! back as soon as one of them is READY again; the backup priorities' connections are
//! kept warm for that. At most 256 SRV records are used, their targets looked up 8 at a
//! time ([`defaults::MAX_SRV_TARGETS`](crate::defaults::MAX_SRV_TARGETS)). Weight
//! is carried on [`Address::weight`](crate::resolver::Address::weight) but no policy
//! reads it: round_robin shares calls evenly within the group, and least_request and
//! peak_ewma send more calls to the backends that answer faster, which is what weights
//! usually approximate. The refresh uses the shortest TTL of the SRV records and of the
//! address records found. Calls carry the SRV name as `:authority` unless
//! [`Builder::endpoint`](crate::Builder::endpoint) says otherwise.
//!
//! # The DNS server
//!
//! `dns:///name` and `dns+srv:///name` use the system's configuration
//! (`/etc/resolv.conf`: servers, search domains, `ndots`, `timeout`; and `/etc/hosts`).
//! `dns://10.0.0.53:53/name` asks only that server (UDP, and TCP for truncated answers),
//! without search domains or the hosts file.

mod lookup;
mod schedule;

use crate::backoff::BackoffParams;
use crate::error::{Error, ErrorKind};
use crate::resolver::target::dns_server_addr;
use crate::resolver::{Resolution, Resolve, Target};
use lookup::{HickoryLookup, Query};
use schedule::{Schedule, Timing};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::task::{Context, Poll};
use std::time::Duration;

pub use crate::defaults::DEFAULT_DNS_MAX_REFRESH as DEFAULT_MAX_REFRESH;
pub use crate::defaults::DEFAULT_DNS_MIN_RE_RESOLVE_INTERVAL as DEFAULT_MIN_RE_RESOLVE_INTERVAL;
pub use crate::defaults::DEFAULT_DNS_MIN_REFRESH as DEFAULT_MIN_REFRESH;
pub use crate::defaults::DEFAULT_DNS_RETRY_BASE_DELAY as DEFAULT_RETRY_BASE_DELAY;
pub use crate::defaults::DEFAULT_DNS_RETRY_MAX_DELAY as DEFAULT_RETRY_MAX_DELAY;

/// Settings of the DNS resolver: when it looks up again.
///
/// ```
/// # use std::time::Duration;
/// # use tonic_balancer::resolver::DnsOptions;
/// let mut options = DnsOptions::default();
/// options.max_refresh = Duration::from_secs(60);
/// options.min_re_resolve_interval = Duration::from_secs(5);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DnsOptions {
    /// The shortest wait before looking up again after a success, whatever the TTL;
    /// must be > 0. Default [`DEFAULT_MIN_REFRESH`].
    pub min_refresh: Duration,
    /// The longest wait before looking up again after a success, whatever the TTL;
    /// at least `min_refresh`. Default [`DEFAULT_MAX_REFRESH`].
    pub max_refresh: Duration,
    /// The least time from the start of one lookup to a lookup asked for because a
    /// connection was lost or failed. Zero turns the rate limit off.
    /// Default [`DEFAULT_MIN_RE_RESOLVE_INTERVAL`].
    pub min_re_resolve_interval: Duration,
    /// The wait before retrying a failed lookup; must be > 0. Each further failure waits
    /// 1.6 times longer (±20 %). Default [`DEFAULT_RETRY_BASE_DELAY`].
    pub retry_base_delay: Duration,
    /// The longest wait between retries of failed lookups; at least `retry_base_delay`.
    /// Default [`DEFAULT_RETRY_MAX_DELAY`].
    pub retry_max_delay: Duration,
    /// How long to wait for a DNS server's answer to one query (hickory tries twice).
    /// `None`: the system's `timeout` option, else 5 s.
    pub query_timeout: Option<Duration>,
}

impl Default for DnsOptions {
    fn default() -> Self {
        Self {
            min_refresh: DEFAULT_MIN_REFRESH,
            max_refresh: DEFAULT_MAX_REFRESH,
            min_re_resolve_interval: DEFAULT_MIN_RE_RESOLVE_INTERVAL,
            retry_base_delay: DEFAULT_RETRY_BASE_DELAY,
            retry_max_delay: DEFAULT_RETRY_MAX_DELAY,
            query_timeout: None,
        }
    }
}

impl DnsOptions {
    fn timing(&self) -> Result<Timing, Error> {
        let invalid = |field: &str, why: &str| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("dns_options.{field}: {why}"),
            )
        };
        if self.min_refresh.is_zero() {
            return Err(invalid("min_refresh", "must be > 0"));
        }
        if self.max_refresh < self.min_refresh {
            return Err(invalid("max_refresh", "must be >= min_refresh"));
        }
        if self.retry_base_delay.is_zero() {
            return Err(invalid("retry_base_delay", "must be > 0"));
        }
        if self.retry_max_delay < self.retry_base_delay {
            return Err(invalid("retry_max_delay", "must be >= retry_base_delay"));
        }
        if self.query_timeout.is_some_and(|t| t.is_zero()) {
            return Err(invalid("query_timeout", "must be > 0"));
        }
        if self
            .query_timeout
            .is_some_and(|t| t > crate::defaults::MAX_DNS_QUERY_TIMEOUT)
        {
            let max = crate::defaults::MAX_DNS_QUERY_TIMEOUT;
            return Err(invalid(
                "query_timeout",
                &format!("must be at most {max:?} (hickory adds it to the clock)"),
            ));
        }
        Ok(Timing {
            min_refresh: self.min_refresh,
            max_refresh: self.max_refresh,
            min_re_resolve_interval: self.min_re_resolve_interval,
            retry: BackoffParams {
                initial: self.retry_base_delay,
                multiplier: crate::defaults::DEFAULT_BACKOFF_MULTIPLIER,
                max: self.retry_max_delay,
                jitter: crate::defaults::DEFAULT_BACKOFF_JITTER,
            },
        })
    }
}

// === impl Dns ===

/// A resolver for `dns:` and `dns+srv:` targets; see the [module docs](self).
///
/// ```
/// # use tonic_balancer::BalancedChannel;
/// # use tonic_balancer::resolver::{Dns, DnsOptions};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tonic_balancer::Error> {
/// let resolver = Dns::builder("dns://127.0.0.1:5353/orders.test:50051")
///     .options(DnsOptions::default())
///     .build()?;
/// let channel = BalancedChannel::builder_with_resolver(resolver).build()?;
/// # Ok(()) }
/// ```
pub struct Dns {
    target: String,
    schedule: Schedule,
}

/// Builds a [`Dns`] resolver; see [`Dns::builder`].
#[derive(Clone, Debug)]
pub struct DnsBuilder {
    target: String,
    options: DnsOptions,
    seed: Option<u64>,
}

impl Dns {
    /// Starts building a resolver for a `dns:` or `dns+srv:` target (see
    /// [`Target`] for the syntax).
    pub fn builder(target: &str) -> DnsBuilder {
        DnsBuilder {
            target: target.to_owned(),
            options: DnsOptions::default(),
            seed: None,
        }
    }

    /// A resolver for a parsed DNS target.
    pub(crate) fn new(
        target: &Target,
        name: &str,
        options: &DnsOptions,
        seed: u64,
    ) -> Result<Self, Error> {
        let invalid = |why: String| {
            Error::new(
                ErrorKind::InvalidTarget,
                format!("invalid target {name:?}: {why}"),
            )
        };
        let (server, query) = match target {
            Target::Dns { server, host, port } => (
                server,
                Query::Host {
                    host: host.clone(),
                    port: *port,
                },
            ),
            Target::DnsSrv { server, name } => (server, Query::Srv { name: name.clone() }),
            _ => {
                return Err(Error::new(
                    ErrorKind::UnsupportedTarget,
                    format!("target {name:?} is not a dns: or dns+srv: target"),
                ));
            }
        };
        // A name hickory cannot encode (empty labels, a label over 63 bytes) is the
        // user's mistake: say so now rather than fail every lookup.
        let host = match &query {
            Query::Host { host, .. } | Query::Srv { name: host } => host,
        };
        if host.parse::<std::net::IpAddr>().is_err() {
            hickory_resolver::proto::rr::Name::from_utf8(host)
                .map_err(|e| invalid(format!("{host:?} is not a valid DNS name: {e}")))?;
        }
        let server = server
            .as_deref()
            .map(dns_server_addr)
            .transpose()
            .map_err(invalid)?;
        let timing = options.timing()?;
        let lookup = HickoryLookup::new(query, server, options.query_timeout);
        Ok(Self {
            target: name.to_owned(),
            schedule: Schedule::new(Box::new(lookup), timing, seed),
        })
    }
}

impl DnsBuilder {
    /// When to look up again. Default: [`DnsOptions::default`].
    pub fn options(mut self, options: DnsOptions) -> Self {
        self.options = options;
        self
    }

    /// Seeds the jitter of the retry backoff, for reproducible tests. Default: random.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Checks the target and options. Nothing is looked up until the resolver is first
    /// polled (by the channel's control task).
    ///
    /// # Errors
    /// - [`ErrorKind::InvalidTarget`]: a malformed target, a DNS server that is not an
    ///   IP address, or a name DNS cannot carry.
    /// - [`ErrorKind::UnsupportedTarget`]: not a `dns:` or `dns+srv:` target.
    /// - [`ErrorKind::InvalidConfig`]: an option out of range, naming it.
    pub fn build(self) -> Result<Dns, Error> {
        let target = Target::parse(&self.target)?;
        let seed = self
            .seed
            .unwrap_or_else(|| RandomState::new().hash_one(&self.target));
        Dns::new(&target, &self.target, &self.options, seed)
    }
}

impl Resolve for Dns {
    fn poll_resolve(&mut self, cx: &mut Context<'_>) -> Poll<Option<Resolution>> {
        self.schedule.poll_next(cx).map(Some)
    }

    fn re_resolve(&mut self) {
        self.schedule.re_resolve();
    }
}

impl fmt::Debug for Dns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dns")
            .field("target", &self.target)
            .field("schedule", &self.schedule)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_checks_target_and_options() {
        let kind = |target: &str, options: DnsOptions| {
            Dns::builder(target)
                .options(options)
                .build()
                .map(|_| ())
                .map_err(|e| (e.kind(), e.to_string()))
        };
        let ok = DnsOptions::default();
        assert_eq!(kind("dns:///orders.test:1", ok.clone()), Ok(()));
        assert_eq!(
            kind("dns+srv:///_grpc._tcp.orders.test", ok.clone()),
            Ok(())
        );
        assert_eq!(
            kind("dns://127.0.0.1:5353/orders.test:1", ok.clone()),
            Ok(())
        );

        let (k, msg) = kind("ipv4:127.0.0.1:1", ok.clone()).unwrap_err();
        assert_eq!(k, ErrorKind::UnsupportedTarget, "{msg}");
        let (k, msg) = kind("dns://dns.test/orders.test:1", ok.clone()).unwrap_err();
        assert_eq!(k, ErrorKind::InvalidTarget, "{msg}");
        let long_label = format!("dns:///{}.test:1", "a".repeat(64));
        let (k, msg) = kind(&long_label, ok.clone()).unwrap_err();
        assert_eq!(k, ErrorKind::InvalidTarget, "{msg}");
        assert!(msg.contains("not a valid DNS name"), "{msg}");
        let (k, msg) = kind("dns:///a..b:1", ok.clone()).unwrap_err();
        assert_eq!(k, ErrorKind::InvalidTarget, "{msg}");

        let mut bad = ok.clone();
        bad.max_refresh = Duration::from_millis(1);
        let (k, msg) = kind("dns:///orders.test:1", bad).unwrap_err();
        assert_eq!(k, ErrorKind::InvalidConfig);
        assert_eq!(msg, "dns_options.max_refresh: must be >= min_refresh");
        let mut bad = ok.clone();
        bad.min_refresh = Duration::ZERO;
        let (_, msg) = kind("dns:///orders.test:1", bad).unwrap_err();
        assert!(msg.starts_with("dns_options.min_refresh"), "{msg}");
        let mut bad = ok;
        bad.query_timeout = Some(Duration::ZERO);
        let (_, msg) = kind("dns:///orders.test:1", bad).unwrap_err();
        assert!(msg.starts_with("dns_options.query_timeout"), "{msg}");
    }

    #[test]
    fn defaults_are_documented_values() {
        let options = DnsOptions::default();
        assert_eq!(options.min_refresh, Duration::from_secs(5));
        assert_eq!(options.max_refresh, Duration::from_secs(300));
        assert_eq!(options.min_re_resolve_interval, Duration::from_secs(30));
        assert!(options.timing().is_ok());
    }
}
