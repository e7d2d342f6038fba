//! The consuming builder for [`BalancedChannel`].

use super::control::{ConnectMode, Control, ControlConfig, Outliers, Shared};
use super::{BalancedChannel, CallConfig, Inner};
use crate::backoff::BackoffParams;
use crate::balance::subset::SubsetFilter;
use crate::balance::{Picker, Policy};
use crate::config::{LoadBalancingConfig, MethodMap, MethodName, ServiceConfig};
use crate::defaults::MAX_ATTEMPTS;
use crate::error::{Error, ErrorKind};
use crate::health::OutlierDetection;
use crate::load::{Accounting, CodeSet};
use crate::resolver::{Address, Resolve, StaticList, Target};
use crate::retry::{Budget, DEFAULT_REPLAY_BUFFER, RetryBudget, Throttle};
use crate::subchannel::{ConnSettings, ConnectSettings, EndpointMaker, Liveness, TcpOptions};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::sync::{oneshot, watch};
use tonic::transport::Endpoint;

pub use crate::defaults::DEFAULT_BACKOFF_BASE_DELAY;
pub use crate::defaults::DEFAULT_BACKOFF_JITTER;
pub use crate::defaults::DEFAULT_BACKOFF_MAX_DELAY;
pub use crate::defaults::DEFAULT_BACKOFF_MULTIPLIER;
pub use crate::defaults::DEFAULT_MIN_CONNECT_TIMEOUT;

/// How subchannels reconnect (grpc/grpc `doc/connection-backoff.md`).
///
/// After a failed connection attempt, the next waits `base_delay`, then each wait grows
/// by `multiplier` up to `max_delay`, each spread by ±`jitter`. A connection that reaches
/// READY resets the sequence. Each attempt may take `min_connect_timeout`, or the current
/// backoff if that has grown longer.
///
/// ```
/// # use std::time::Duration;
/// # use tonic_balancer::ConnectionBackoff;
/// let mut backoff = ConnectionBackoff::default();
/// backoff.base_delay = Duration::from_millis(50);
/// backoff.max_delay = Duration::from_secs(2);
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ConnectionBackoff {
    /// Wait before the first reconnect. Default [`DEFAULT_BACKOFF_BASE_DELAY`].
    pub base_delay: Duration,
    /// Growth of each further wait; at least 1. Default [`DEFAULT_BACKOFF_MULTIPLIER`].
    pub multiplier: f64,
    /// Relative spread of each wait, in [0, 1]. Default [`DEFAULT_BACKOFF_JITTER`].
    pub jitter: f64,
    /// The longest wait. Default [`DEFAULT_BACKOFF_MAX_DELAY`].
    pub max_delay: Duration,
    /// The least time a connection attempt is given. Default [`DEFAULT_MIN_CONNECT_TIMEOUT`].
    pub min_connect_timeout: Duration,
}

impl Default for ConnectionBackoff {
    fn default() -> Self {
        Self {
            base_delay: DEFAULT_BACKOFF_BASE_DELAY,
            multiplier: DEFAULT_BACKOFF_MULTIPLIER,
            jitter: DEFAULT_BACKOFF_JITTER,
            max_delay: DEFAULT_BACKOFF_MAX_DELAY,
            min_connect_timeout: DEFAULT_MIN_CONNECT_TIMEOUT,
        }
    }
}

impl ConnectionBackoff {
    fn validate(&self) -> Result<BackoffParams, Error> {
        let invalid = |field: &str, why: &str| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("connection_backoff.{field}: {why}"),
            )
        };
        if self.base_delay.is_zero() {
            return Err(invalid("base_delay", "must be > 0"));
        }
        if !(self.multiplier >= 1.0 && self.multiplier.is_finite()) {
            return Err(invalid("multiplier", "must be a finite number >= 1"));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(invalid("jitter", "must be in [0, 1]"));
        }
        if self.max_delay < self.base_delay {
            return Err(invalid("max_delay", "must be >= base_delay"));
        }
        if self.min_connect_timeout.is_zero() {
            return Err(invalid("min_connect_timeout", "must be > 0"));
        }
        Ok(BackoffParams {
            initial: self.base_delay,
            multiplier: self.multiplier,
            max: self.max_delay,
            jitter: self.jitter,
        })
    }
}

type PolicyMap = MethodMap<(Policy, Arc<dyn Picker>)>;
type MakeEndpoint = Arc<dyn Fn(&Address) -> Endpoint + Send + Sync>;
type ConfigureEndpoint = Arc<dyn Fn(Endpoint) -> Endpoint + Send + Sync>;

enum Source {
    Target(Target),
    Resolver(Box<dyn Resolve>),
}

/// gRFC A8 keepalive: PING a connection that has read nothing for `time`, and close it
/// if no ACK comes within `timeout`. Off by default; see [`Builder::keepalive`].
///
/// ```
/// # use std::time::Duration;
/// use tonic_balancer::KeepaliveConfig;
/// let keepalive = KeepaliveConfig::new(Duration::from_secs(30))
///     .timeout(Duration::from_secs(10))
///     .without_calls(true);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeepaliveConfig {
    /// Silence before a PING. Values under
    /// [`MIN_KEEPALIVE_TIME`](crate::defaults::MIN_KEEPALIVE_TIME) are raised to it.
    pub time: Duration,
    /// Wait for the ACK; also the connection's `TCP_USER_TIMEOUT` (gRFC A18). Default
    /// [`DEFAULT_KEEPALIVE_TIMEOUT`](crate::defaults::DEFAULT_KEEPALIVE_TIMEOUT).
    pub timeout: Duration,
    /// PING idle connections too (default false). Servers allow a PING without calls
    /// once per 2 hours by default and cut clients that send more.
    pub without_calls: bool,
}

impl KeepaliveConfig {
    /// Keepalive every `time`, with the default timeout, only while calls are out.
    pub fn new(time: Duration) -> Self {
        Self {
            time,
            timeout: crate::defaults::DEFAULT_KEEPALIVE_TIMEOUT,
            without_calls: false,
        }
    }

    /// The wait for a PING's ACK.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether idle connections are pinged too.
    pub fn without_calls(mut self, without_calls: bool) -> Self {
        self.without_calls = without_calls;
        self
    }
}

/// Builds a [`BalancedChannel`]. Settings are checked by [`Builder::build`].
pub struct Builder {
    source: Result<Source, Error>,
    name: String,
    endpoint: Option<MakeEndpoint>,
    configure: Option<ConfigureEndpoint>,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsConfig>,
    policy: Policy,
    method_policies: Vec<(String, Policy)>,
    backoff: ConnectionBackoff,
    wait_for_ready: bool,
    seed: Option<u64>,
    service_config: Option<ServiceConfig>,
    budget: Option<RetryBudget>,
    replay_limit: usize,
    health_service: Option<String>,
    outlier_detection: Option<OutlierDetection>,
    panic_threshold: Option<u32>,
    subset_size: Option<usize>,
    #[cfg(feature = "dns")]
    dns_options: crate::resolver::DnsOptions,
    sensitive: Vec<String>,
    liveness: Option<Duration>,
    keepalive: Option<KeepaliveConfig>,
    stats_method_limit: usize,
    credentials_without_tls: bool,
    max_attempts: u32,
    default_timeout: Option<Duration>,
    idle_timeout: Duration,
    max_concurrent_connects: usize,
    #[cfg(feature = "opentelemetry")]
    opentelemetry: crate::stats::otel::OpenTelemetry,
    #[cfg(feature = "xds")]
    xds_client: Option<crate::xds::XdsClient>,
}

impl Builder {
    pub(super) fn from_target(target: &str) -> Self {
        Self::new(Target::parse(target).map(Source::Target), target.to_owned())
    }

    pub(super) fn from_resolver(resolver: Box<dyn Resolve>) -> Self {
        Self::new(Ok(Source::Resolver(resolver)), "custom resolver".to_owned())
    }

    fn new(source: Result<Source, Error>, name: String) -> Self {
        Self {
            source,
            name,
            endpoint: None,
            configure: None,
            #[cfg(feature = "tls")]
            tls: None,
            policy: Policy::default(),
            method_policies: Vec::new(),
            backoff: ConnectionBackoff::default(),
            wait_for_ready: false,
            seed: None,
            service_config: None,
            budget: None,
            replay_limit: DEFAULT_REPLAY_BUFFER,
            health_service: None,
            outlier_detection: None,
            panic_threshold: None,
            subset_size: None,
            #[cfg(feature = "dns")]
            dns_options: crate::resolver::DnsOptions::default(),
            sensitive: Vec::new(),
            liveness: Some(crate::defaults::DEFAULT_LIVENESS_FLOOR),
            keepalive: None,
            stats_method_limit: crate::defaults::DEFAULT_STATS_METHOD_LIMIT,
            credentials_without_tls: false,
            max_attempts: MAX_ATTEMPTS,
            default_timeout: None,
            idle_timeout: crate::defaults::DEFAULT_IDLE_TIMEOUT,
            max_concurrent_connects: crate::defaults::DEFAULT_MAX_CONCURRENT_CONNECTS,
            #[cfg(feature = "opentelemetry")]
            opentelemetry: Default::default(),
            #[cfg(feature = "xds")]
            xds_client: None,
        }
    }

    /// The load-balancing policy. Default: [`Policy::round_robin`].
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// A different policy for one method (`pkg.Service/Method`, with or without a
    /// leading `/`) or a whole service (`pkg.Service`). A call uses the policy of its
    /// exact method, else of its service, else the channel's. Every policy picks among
    /// the same subchannels and reads the same load counters.
    ///
    /// The channel connects to every address unless all its policies are pick_first.
    /// peak_ewma parameters ([`Policy::decay`], [`Policy::default_rtt`]) belong to the
    /// channel's one RTT estimate per backend: the channel's policy sets them if it is
    /// peak_ewma, else the first per-method peak_ewma policy.
    pub fn method_policy(mut self, method: &str, policy: Policy) -> Self {
        self.method_policies.push((method.to_owned(), policy));
        self
    }

    /// Makes the tonic [`Endpoint`] for each address. Each subchannel owns its HTTP/2
    /// connection (it does not go through tonic's transport), so only what an
    /// `Endpoint` lets be read back applies:
    ///
    /// | `Endpoint` setting | here |
    /// |---|---|
    /// | its URI | the `:authority` calls carry (the connection always goes to the address); the scheme unless `Builder::tls` makes it `https` |
    /// | `tcp_nodelay` | applied (tonic's default: on) |
    /// | `tcp_keepalive`, `tcp_keepalive_interval`, `tcp_keepalive_retries` | applied to the socket |
    /// | `connect_timeout` | replaces the minimum connect timeout of [`ConnectionBackoff`] |
    /// | `timeout` | not applied: use a service config `timeout` or [`Builder::default_timeout`] |
    /// | `http2_keep_alive_*`, `keep_alive_*` | not applied: use [`Builder::keepalive`] (and the liveness check, on by default) |
    /// | `tls_config` | not applied: use `Builder::tls` (feature `tls`); a plaintext connection to a TLS server fails, saying so |
    /// | window sizes, `http2_adaptive_window`, `concurrency_limit`, `rate_limit`, `user_agent`, `local_address`, `buffer_size` | not applied (windows are 2 MiB per stream and 5 MiB per connection, as hyper sets them) |
    ///
    /// The default is `http://ADDRESS` for address targets and `http://HOST:PORT` for
    /// DNS targets. With `Builder::tls`, make `http://` endpoints: the channel makes the
    /// TLS handshake itself and calls carry `:scheme https`.
    pub fn endpoint<F>(mut self, make: F) -> Self
    where
        F: Fn(&Address) -> Endpoint + Send + Sync + 'static,
    {
        self.endpoint = Some(Arc::new(make));
        self
    }

    /// Adjusts the default endpoint of every address, for settings that do not depend
    /// on the address: `.configure_endpoint(|e| e.timeout(Duration::from_secs(1)))`.
    /// Applied after [`Builder::endpoint`] if both are set.
    pub fn configure_endpoint<F>(mut self, configure: F) -> Self
    where
        F: Fn(Endpoint) -> Endpoint + Send + Sync + 'static,
    {
        self.configure = Some(Arc::new(configure));
        self
    }

    /// Connects to every address over TLS (mutual TLS if the config has an identity);
    /// calls carry `:scheme https`. The certificates of a `dns:` target's servers must
    /// carry the target's host name; for address lists, the address, unless
    /// [`TlsConfig::domain_name`](crate::tls::TlsConfig::domain_name) names the host.
    /// See [`tls`](crate::tls) for how handshake failures surface, and
    /// [`Builder::endpoint`] for how the two combine.
    ///
    /// A config that does not check out (PEM that does not parse, a key that does not
    /// match its certificate, no CA) is reported by [`Builder::build`] as
    /// [`ErrorKind::InvalidConfig`].
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: crate::tls::TlsConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// The deadline of calls that have none: neither their own (`grpc-timeout`, tonic's
    /// `Request::set_timeout`), nor an inherited one, nor their method config's
    /// `timeout`. Must be > 0. Default: none, as in gRPC (such calls may wait forever).
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = Some(timeout);
        self
    }

    /// gRFC A62 idleness: after this long with no call started and none in flight, the
    /// channel lets go of every connection, stops resolving, and reports
    /// [`ConnectivityState::Idle`](crate::ConnectivityState::Idle); the next call (or [`BalancedChannel::ready`]) wakes
    /// it, re-resolves, reconnects, and waits for a READY backend within its deadline.
    /// The check runs four times per timeout, so the channel goes IDLE between one and
    /// 1.25 timeouts after its last call. `Duration::ZERO` turns idleness off, as
    /// grpc-go's `WithIdleTimeout(0)`. Default [`DEFAULT_IDLE_TIMEOUT`](crate::defaults::DEFAULT_IDLE_TIMEOUT)
    /// (30 min, gRPC's).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// How many connection attempts (TCP, TLS and the HTTP/2 preface) the channel runs
    /// at once; the others wait their turn, and their connect timeout starts when it
    /// comes. A resolver update that adds thousands of addresses then connects them in
    /// a steady stream rather than all at once, so the calls on the connections already
    /// up are not delayed behind thousands of handshakes. Must be > 0. Default
    /// [`DEFAULT_MAX_CONCURRENT_CONNECTS`](crate::defaults::DEFAULT_MAX_CONCURRENT_CONNECTS).
    pub fn max_concurrent_connects(mut self, connects: usize) -> Self {
        self.max_concurrent_connects = connects;
        self
    }

    /// The most attempts one call makes, the first included, whatever its retry or
    /// hedging policy says (grpc-go's `WithMaxCallAttempts`): 1 turns retries and
    /// hedging off. In 1..=[`MAX_ATTEMPTS`] (5); grpc-go also lets it raise the limit
    /// above 5, this crate does not. Default [`MAX_ATTEMPTS`].
    pub fn max_call_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Builds the channel, then waits until a backend is READY, for at most `timeout`:
    /// the `Endpoint::connect().await` of tonic users. See [`BalancedChannel::ready`].
    ///
    /// # Errors
    /// Those of [`Builder::build`], and [`ErrorKind::NotReady`] when no backend is
    /// READY in time (the message names the target and the last connection error).
    pub async fn connect(self, timeout: Duration) -> Result<BalancedChannel, Error> {
        let channel = self.build()?;
        channel.ready(timeout).await?;
        Ok(channel)
    }

    /// How subchannels reconnect. Default: gRPC's connection backoff.
    pub fn connection_backoff(mut self, backoff: ConnectionBackoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Whether calls wait for a READY backend instead of failing fast when every backend
    /// is failing. Per call, the [`WaitForReady`](super::WaitForReady) extension wins.
    /// Default: false, as in gRPC.
    pub fn wait_for_ready(mut self, wait: bool) -> Self {
        self.wait_for_ready = wait;
        self
    }

    /// Turns on client-side health checking (gRFC A17): each connected backend is READY
    /// only while its `grpc.health.v1.Health/Watch` for `service` says SERVING (`""`: the
    /// whole server). Overrides the service config's `healthCheckConfig`. See
    /// [`health`](crate::health). Default: off.
    pub fn health_check(mut self, service: impl Into<String>) -> Self {
        self.health_service = Some(service.into());
        self
    }

    /// Turns on outlier detection (gRFC A50, plus ejection after consecutive failures).
    /// A service config's `outlier_detection_experimental` replaces it while that config
    /// is in force. Default: off.
    pub fn outlier_detection(mut self, config: OutlierDetection) -> Self {
        self.outlier_detection = Some(config);
        self
    }

    /// Envoy's panic mode: when fewer than `percent` of the backends are usable (healthy
    /// and not ejected), calls spread over every connected backend instead. Default: off,
    /// so calls fail fast with UNAVAILABLE as in gRPC; [`health`](crate::health) explains
    /// the choice.
    pub fn panic_threshold(mut self, percent: u32) -> Self {
        self.panic_threshold = Some(percent);
        self
    }

    /// gRFC A68 random subsetting: the channel connects to only `subset_size` of the
    /// resolver's addresses, and its policy picks among those. Must be > 0; with fewer
    /// addresses than that, it uses all of them.
    ///
    /// The subset is chosen by rendezvous hashing: each address is ranked by XXH64 of its
    /// `ip:port` text (or `unix:PATH`) seeded with the channel's [`seed`](Self::seed)
    /// (random per channel unless set), and the `subset_size` smallest are kept, in the
    /// resolver's order. When one server joins or leaves, the subset changes by at most
    /// one address, so a rolling restart moves few connections. Different channels draw
    /// different seeds, which spreads them over the fleet at random; there is no
    /// guarantee of an even spread (the README's subsetting section has measured
    /// figures). Giving every client of a fleet the same `seed` gives them all the same
    /// subset: leave the seed random in production.
    /// [`subset::random_subset`](crate::balance::subset::random_subset) computes the
    /// subset a given seed keeps.
    ///
    /// A service config's `random_subsetting_experimental` replaces this setting while
    /// that config is in force; a config update that changes the subset size applies at
    /// once to the last addresses resolved. Default: off (every address).
    pub fn random_subsetting(mut self, subset_size: usize) -> Self {
        self.subset_size = Some(subset_size);
        self
    }

    /// The built-in liveness check, on by default: a connection with calls outstanding
    /// that has read nothing for `floor` (and at least
    /// [`LIVENESS_RTT_FACTOR`](crate::defaults::LIVENESS_RTT_FACTOR) smoothed round
    /// trips) while new calls were sent gets one HTTP/2 PING; no ACK within as long
    /// again and the connection is dead: its subchannel leaves READY, its calls fail
    /// with UNAVAILABLE, and it reconnects with backoff. This is what notices a frozen
    /// backend (a hung process, a partition), which TCP alone does not for minutes.
    ///
    /// It never trips a server's ping policing: it pings only while the server is
    /// silent, and at most twice in a row without the server having sent a response
    /// in between (grpc-go and C-core servers cut a client at the third such PING).
    /// Default floor [`DEFAULT_LIVENESS_FLOOR`](crate::defaults::DEFAULT_LIVENESS_FLOOR);
    /// `None` turns the check off.
    pub fn liveness_check(mut self, floor: Option<Duration>) -> Self {
        self.liveness = floor;
        self
    }

    /// gRFC A8 keepalive (off by default): see [`KeepaliveConfig`]. When a server
    /// answers with GOAWAY ENHANCE_YOUR_CALM `too_many_pings`, the channel logs it and
    /// doubles the keepalive time of its new connections.
    pub fn keepalive(mut self, keepalive: KeepaliveConfig) -> Self {
        self.keepalive = Some(keepalive);
        self
    }

    /// Seeds every random choice the channel makes (picker offsets and samples, backoff
    /// jitter, the [random subset](Self::random_subsetting)), for reproducible tests and
    /// benchmarks. Default: a random seed, different for each channel.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The gRPC service config, as JSON: per-method timeouts, wait-for-ready, retry and
    /// hedging policies, retry throttling, and the load-balancing policy (which, when
    /// given, replaces [`Builder::policy`]). Unknown fields are ignored, as gRPC does.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] naming the offending field's path, e.g.
    /// `methodConfig[1].retryPolicy.maxAttempts: must be > 1, got 1`.
    pub fn service_config_json(self, json: &str) -> Result<Self, Error> {
        let config = ServiceConfig::from_json(json).map_err(invalid_config)?;
        Ok(self.service_config(config))
    }

    /// The service config built in code; checked by [`Builder::build`].
    pub fn service_config(mut self, config: ServiceConfig) -> Self {
        self.service_config = Some(config);
        self
    }

    /// Caps retries and hedges at a share of recent calls (see
    /// [`retry`](crate::retry) for when to prefer it to the service config's
    /// `retryThrottling`). Off by default.
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// How much of a call's request body is kept so the call can be sent again (retries,
    /// hedges, transparent retries). A call whose body grows past it is committed.
    /// Default [`DEFAULT_REPLAY_BUFFER`] (256 KiB).
    pub fn retry_buffer_size(mut self, bytes: usize) -> Self {
        self.replay_limit = bytes;
        self
    }

    /// When the DNS resolver of a `dns:` or `dns+srv:` target looks up again: refresh
    /// bounds around the records' TTL, and the rate limit of lookups caused by lost
    /// connections. See [`resolver::dns`](crate::resolver::dns) for the rules and why
    /// the defaults are what they are. Ignored for other targets. Checked by
    /// [`Builder::build`].
    #[cfg(feature = "dns")]
    pub fn dns_options(mut self, options: crate::resolver::DnsOptions) -> Self {
        self.dns_options = options;
        self
    }

    /// Metadata keys whose values are secrets (API keys, session cookies), besides
    /// `authorization`, which always is. The channel marks their values sensitive on
    /// every call before anything else sees them: HTTP/2 sends them never-indexed
    /// (RFC 7541 §7.1.3, so no proxy's header table keeps them) and their `Debug` prints
    /// `Sensitive`, so a layer that logs requests does not log them.
    ///
    /// Keys are checked by [`Builder::build`].
    pub fn sensitive_metadata<I>(mut self, keys: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.sensitive
            .extend(keys.into_iter().map(|k| k.as_ref().to_owned()));
        self
    }

    /// How many methods get figures of their own in [`BalancedChannel::stats`] and in
    /// the exported metrics; calls to further methods are counted under `"other"`
    /// (see [`stats`](crate::stats)). Default
    /// [`DEFAULT_STATS_METHOD_LIMIT`](crate::defaults::DEFAULT_STATS_METHOD_LIMIT) (256).
    pub fn stats_method_limit(mut self, methods: usize) -> Self {
        self.stats_method_limit = methods;
        self
    }

    /// Where the channel reports to OpenTelemetry, and what it reports beyond gRPC's
    /// default instruments (feature `opentelemetry`). Without this call the channel
    /// uses the global meter and tracer providers as they are when [`build`](Self::build)
    /// runs; see [`stats::otel`](crate::stats::otel) for the instruments and spans.
    ///
    /// ```
    /// # use tonic_balancer::{BalancedChannel, OpenTelemetry};
    /// let builder = BalancedChannel::builder("ipv4:127.0.0.1:50051")
    ///     .opentelemetry(OpenTelemetry::default().optional_retry_metrics(true));
    /// # let _ = builder;
    /// ```
    #[cfg(feature = "opentelemetry")]
    pub fn opentelemetry(mut self, options: crate::stats::otel::OpenTelemetry) -> Self {
        self.opentelemetry = options;
        self
    }

    /// Lets per-call credentials ([`BearerLayer`](crate::credentials::BearerLayer)) send
    /// tokens on this channel although it has no `Builder::tls` (feature `tls`): for traffic protected
    /// another way (a mesh sidecar on localhost, a tunnel), or an `https://` endpoint with
    /// tonic's own TLS, which the channel cannot see. Without it, wrapping the channel
    /// in a bearer layer is refused (gRPC's `RequireTransportSecurity`); see
    /// [`credentials`](crate::credentials). Default: false.
    pub fn allow_credentials_without_tls(mut self, allow: bool) -> Self {
        self.credentials_without_tls = allow;
        self
    }

    /// The xDS client an `xds:///name` target uses, in place of the process's shared
    /// client for the default bootstrap (`GRPC_XDS_BOOTSTRAP`, `GRPC_XDS_BOOTSTRAP_CONFIG`
    /// or [`set_default_bootstrap`](crate::xds::set_default_bootstrap)): for a bootstrap
    /// made in code. Ignored for other targets.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), tonic_balancer::Error> {
    /// use tonic_balancer::xds::{Bootstrap, XdsClient};
    /// let client = XdsClient::shared(Bootstrap::new("127.0.0.1:18000", "orders-client-1"));
    /// let channel = tonic_balancer::BalancedChannel::builder("xds:///orders")
    ///     .xds_client(&client)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "xds")]
    pub fn xds_client(mut self, client: &crate::xds::XdsClient) -> Self {
        self.xds_client = Some(client.clone());
        self
    }

    /// Checks the settings, starts the channel's control task and returns the channel.
    /// Connections are made in the background; the first calls queue until a backend is
    /// READY (or all have failed).
    ///
    /// # Errors
    /// - [`ErrorKind::InvalidTarget`] / [`ErrorKind::UnsupportedTarget`]: the target.
    /// - [`ErrorKind::InvalidConfig`]: a setting out of range, naming it.
    /// - [`ErrorKind::NoRuntime`]: called outside a tokio runtime.
    pub fn build(self) -> Result<BalancedChannel, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::new(
                ErrorKind::NoRuntime,
                "BalancedChannel::build must be called within a tokio runtime",
            )
        })?;
        let backoff = self.backoff.validate()?;
        let conn = self.conn_settings()?;
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "max_call_attempts: must be in 1..={MAX_ATTEMPTS}, got {}",
                    self.max_attempts
                ),
            ));
        }
        if self.default_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "default_timeout: must be > 0 (a zero timeout would fail every call)",
            ));
        }
        if self.max_concurrent_connects == 0 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "max_concurrent_connects: must be > 0 (no connection could ever be made)",
            ));
        }
        let seed = self.seed_or_random();
        let sensitive = sensitive_keys(&self.sensitive)?;
        if let Some(config) = &self.outlier_detection {
            config.validate()?;
        }
        if self.subset_size == Some(0) {
            return Err(crate::InvalidSetting::new(
                "random_subsetting",
                "the subset size must be > 0 (to connect to every address, do not call \
                 random_subsetting)",
            )
            .into());
        }
        let policies = Policies {
            policy: self.policy.clone(),
            methods: self.method_policies.clone(),
            seed,
            outliers: self.outlier_detection.clone(),
            subset_size: self.subset_size,
            health_service: self.health_service.clone(),
            max_attempts: self.max_attempts,
            default_timeout: self.default_timeout,
        };
        // Checked here, so that a config error is the build's; each channel made from
        // the blueprint makes its own.
        policies.call_config(self.service_config.as_ref())?;
        let failure_codes = self
            .outlier_detection
            .as_ref()
            .map_or_else(CodeSet::default, |o| CodeSet::of(&o.failure_codes));
        if self.panic_threshold.is_some_and(|p| p > 100) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "panic_threshold: must be a percentage, at most 100",
            ));
        }
        if let Some(budget) = &self.budget {
            budget.validate()?;
        }
        let lookup = |target: &Target| {
            #[cfg(feature = "dns")]
            let resolver = dns_resolver(target, &self.name, &self.dns_options, seed);
            #[cfg(not(feature = "dns"))]
            let resolver = dns_resolver(target, &self.name);
            resolver
        };
        // An https:// target means TLS, with the default roots unless Builder::tls.
        let mut https = false;
        let (resolver, authority): (Plan, Option<String>) = match self.source? {
            Source::Resolver(resolver) => (Plan::Resolver(resolver), None),
            Source::Target(Target::Static(addrs)) => {
                (Plan::Resolver(Box::new(StaticList::new(addrs))), None)
            }
            Source::Target(target @ Target::Unix(_)) => {
                let (resolver, authority) = unix_resolver(&target, &self.name)?;
                (Plan::Resolver(resolver), authority)
            }
            #[cfg(feature = "xds")]
            Source::Target(Target::Xds { name }) => {
                let client = match &self.xds_client {
                    Some(client) => client.clone(),
                    None => crate::xds::target_client(&self.name)?,
                };
                (Plan::Xds(client, name.clone()), Some(name))
            }
            #[cfg(not(feature = "xds"))]
            Source::Target(Target::Xds { name }) => (
                Plan::Resolver(crate::resolver::xds_target(&name, &self.name)?),
                Some(name),
            ),
            Source::Target(Target::Https { host, port }) => {
                https = true;
                let target = Target::Dns {
                    server: None,
                    host,
                    port,
                };
                (Plan::Resolver(lookup(&target)?), Some(target.authority()))
            }
            Source::Target(target) => (Plan::Resolver(lookup(&target)?), Some(target.authority())),
        };
        #[cfg(not(feature = "tls"))]
        if https {
            return Err(Error::new(
                ErrorKind::UnsupportedTarget,
                format!(
                    "target {:?}: https:// means TLS, which needs the `tls` feature of \
                     tonic-balancer (and `tls-native-roots` or `tls-webpki-roots` for the \
                     default roots); or use an http:// target for plaintext",
                    self.name
                ),
            ));
        }
        #[cfg(feature = "tls")]
        let https_default = match (&self.tls, https) {
            (None, true) => Some(crate::tls::TlsConfig::for_https()?),
            _ => None,
        };
        #[cfg(feature = "tls")]
        let tls = match self.tls.as_ref().or(https_default.as_ref()) {
            Some(config) => {
                // A dns: target's host is the name its servers' certificates carry.
                let host = authority
                    .as_deref()
                    .and_then(|a| a.parse::<http::uri::Authority>().ok());
                let connect = config.connector(host.as_ref().map(|a| a.host()))?;
                Some(connect)
            }
            None => None,
        };
        #[cfg(feature = "tls")]
        let credentials_allowed = self.credentials_without_tls || tls.is_some();
        #[cfg(not(feature = "tls"))]
        let credentials_allowed = self.credentials_without_tls;
        let endpoint = make_endpoint(
            self.endpoint,
            self.configure,
            authority,
            #[cfg(feature = "tls")]
            tls.is_some(),
        )?;
        #[cfg(feature = "opentelemetry")]
        let telemetry = Some(self.opentelemetry.build(&self.name));
        #[cfg(not(feature = "opentelemetry"))]
        let telemetry = None;

        // The keepalive time of new connections, which a `too_many_pings` GOAWAY doubles.
        let keepalive_time = conn.keepalive.map(|k| {
            Arc::new(std::sync::atomic::AtomicU64::new(
                u64::try_from(k.time.as_nanos()).unwrap_or(u64::MAX),
            ))
        });
        let blueprint = Blueprint {
            runtime,
            name: self.name,
            policies,
            service_config: self.service_config,
            failure_codes,
            budget: self.budget.map(|b| Arc::new(Budget::new(b))),
            replay_held: Arc::default(),
            backoff,
            min_connect_timeout: self.backoff.min_connect_timeout,
            endpoint,
            #[cfg(feature = "tls")]
            tls,
            conn,
            keepalive_time,
            connects: Arc::new(tokio::sync::Semaphore::new(
                self.max_concurrent_connects
                    .min(tokio::sync::Semaphore::MAX_PERMITS),
            )),
            stats: Arc::new(crate::stats::Stats::new(
                self.stats_method_limit,
                telemetry.clone(),
            )),
            telemetry,
            published: Arc::new(watch::Sender::new(())),
            wait_for_ready: self.wait_for_ready,
            replay_limit: self.replay_limit,
            sensitive,
            seed,
            credentials_allowed,
            panic_threshold: self.panic_threshold,
            idle_timeout: (!self.idle_timeout.is_zero()).then_some(self.idle_timeout),
        };
        match resolver {
            Plan::Resolver(resolver) => {
                blueprint.spawn(resolver, blueprint.name.clone(), blueprint.seed)
            }
            #[cfg(feature = "xds")]
            Plan::Xds(client, name) => crate::xds::routed_channel(client, name, blueprint),
        }
    }
}

/// Where a channel's addresses come from.
enum Plan {
    Resolver(Box<dyn Resolve>),
    /// An `xds:///name` target: routes from the listener `name`, a channel per cluster.
    #[cfg(feature = "xds")]
    Xds(crate::xds::XdsClient, String),
}

/// A built channel's settings, checked: enough to start it, or (for an `xds:///`
/// target) one channel per cluster its routes name, each with the same settings and
/// its own resolver. Those share the target's golden signals, OpenTelemetry
/// instruments, connection-attempt bound and keepalive time.
#[derive(Clone)]
pub(crate) struct Blueprint {
    runtime: tokio::runtime::Handle,
    name: String,
    policies: Policies,
    service_config: Option<ServiceConfig>,
    failure_codes: CodeSet,
    /// The retry budget and the bytes held for replays: one of each per target, shared
    /// by an `xds:///` target's clusters.
    budget: Option<Arc<Budget>>,
    replay_held: Arc<std::sync::atomic::AtomicUsize>,
    backoff: BackoffParams,
    min_connect_timeout: Duration,
    endpoint: crate::subchannel::EndpointMaker,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsConnect>,
    conn: ConnSettings,
    keepalive_time: Option<Arc<std::sync::atomic::AtomicU64>>,
    connects: Arc<tokio::sync::Semaphore>,
    stats: Arc<crate::stats::Stats>,
    telemetry: Option<Arc<crate::stats::Telemetry>>,
    /// Bumped by every publish of every channel made from this blueprint.
    pub(crate) published: Arc<watch::Sender<()>>,
    wait_for_ready: bool,
    replay_limit: usize,
    sensitive: Arc<[http::HeaderName]>,
    seed: u64,
    credentials_allowed: bool,
    panic_threshold: Option<u32>,
    idle_timeout: Option<Duration>,
}

impl Blueprint {
    /// The name the channel was built for.
    #[cfg(feature = "xds")]
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The runtime the channel was built in.
    #[cfg(feature = "xds")]
    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// The builder's seed, or a random one.
    #[cfg(feature = "xds")]
    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }

    /// Starts a channel over `resolver`'s addresses with these settings and `seed` for
    /// its pickers and jitter; `target` names it in errors.
    pub(crate) fn spawn(
        &self,
        resolver: Box<dyn Resolve>,
        target: String,
        seed: u64,
    ) -> Result<BalancedChannel, Error> {
        let policies = Policies {
            seed,
            ..self.policies.clone()
        };
        let (call_config, control_config) = policies.call_config(self.service_config.as_ref())?;
        let outlier_signal = Arc::new(Notify::new());
        let (stop_tx, stop_rx) = oneshot::channel();
        let ControlConfig {
            mode,
            ewma,
            shuffle,
            outliers,
            health_service,
            subset_size,
        } = control_config.clone();
        let (updates_tx, updates_rx) = watch::channel(control_config);
        let shared = Arc::new(Shared::new(
            call_config,
            updates_tx,
            policies,
            self.published.clone(),
        ));
        let (health_tx, health_rx) = watch::channel(health_service);
        let control = Control {
            shared: shared.clone(),
            resolver,
            settings: Arc::new(ConnectSettings {
                backoff: self.backoff,
                min_connect_timeout: self.min_connect_timeout,
                endpoint: self.endpoint.clone(),
                accounting: Accounting {
                    ewma,
                    failure_codes: self.failure_codes,
                    outliers: outliers
                        .as_ref()
                        .map(|o| (outlier_signal.clone(), u64::from(o.consecutive_failures))),
                },
                health_service: health_rx,
                #[cfg(feature = "tls")]
                tls: self.tls.clone(),
                keepalive_time: self.keepalive_time.clone().unwrap_or_default(),
                conn: self.conn.clone(),
                connects: self.connects.clone(),
                telemetry: self.telemetry.clone(),
            }),
            seed,
            target: target.clone(),
            mode,
            shuffle,
            updates: updates_rx,
            outliers: outliers.map(|config| Outliers { config }),
            outlier_signal,
            health: health_tx,
            panic_threshold: self.panic_threshold,
            idle_timeout: self.idle_timeout,
            subset: SubsetFilter::new(subset_size, seed),
        };
        self.runtime.spawn(control.supervise(stop_rx));
        Ok(self.channel(shared, target, stop_tx, seed))
    }

    /// A channel handle over `shared`, whose control task stops when `stop` is dropped.
    pub(super) fn channel(
        &self,
        shared: Arc<Shared>,
        target: String,
        stop: oneshot::Sender<()>,
        seed: u64,
    ) -> BalancedChannel {
        BalancedChannel {
            inner: Arc::new(Inner {
                shared,
                target,
                wait_for_ready: self.wait_for_ready,
                budget: self.budget.clone(),
                replay_limit: self.replay_limit,
                replay_held: self.replay_held.clone(),
                channel_replay_limit: crate::defaults::DEFAULT_CHANNEL_REPLAY_BUFFER,
                sensitive: self.sensitive.clone(),
                seed,
                calls: Default::default(),
                stats: self.stats.clone(),
                credentials_allowed: self.credentials_allowed,
                keepalive_time: self.keepalive_time.clone(),
                #[cfg(feature = "xds")]
                router: None,
                #[cfg(feature = "xds")]
                routed_here: false,
                _stop: stop,
            }),
        }
    }

    /// A channel for one cluster of an `xds:///` target: as [`spawn`](Self::spawn), and
    /// its calls bring their route's method config.
    #[cfg(feature = "xds")]
    pub(crate) fn spawn_cluster(
        &self,
        resolver: Box<dyn Resolve>,
        target: String,
        seed: u64,
    ) -> Result<BalancedChannel, Error> {
        let mut channel = self.spawn(resolver, target, seed)?;
        if let Some(inner) = Arc::get_mut(&mut channel.inner) {
            inner.routed_here = true;
        }
        Ok(channel)
    }

    /// The channel of an `xds:///` target: no subchannels of its own, every call routed
    /// by `router` to a channel of this blueprint. The router's task stops when `stop`
    /// is dropped, with the last handle.
    ///
    /// # Errors
    /// None in practice: the builder's policies were checked by `build`.
    #[cfg(feature = "xds")]
    pub(crate) fn routed(
        &self,
        router: Arc<crate::xds::Router>,
        stop: oneshot::Sender<()>,
    ) -> Result<BalancedChannel, Error> {
        let (call_config, control_config) = self.policies.call_config(None)?;
        let (updates_tx, _) = watch::channel(control_config);
        let shared = Arc::new(Shared::new(
            call_config,
            updates_tx,
            self.policies.clone(),
            self.published.clone(),
        ));
        let mut channel = self.channel(shared, self.name.clone(), stop, self.seed);
        if let Some(inner) = Arc::get_mut(&mut channel.inner) {
            inner.router = Some(router);
        }
        Ok(channel)
    }
}

/// Bearer tokens go only over TLS unless the builder opted in: the rule
/// [`BearerLayer::try_layer`](crate::credentials::BearerLayer::try_layer) checks.
impl crate::credentials::TransportSecurity for BalancedChannel {
    fn check_transport_security(&self) -> Result<(), String> {
        if self.inner.credentials_allowed {
            return Ok(());
        }
        Err(no_tls_for_credentials(&self.inner.target))
    }
}

/// Why a channel without TLS takes no bearer tokens, and how to opt in.
pub(super) fn no_tls_for_credentials(target: &str) -> String {
    format!(
        "the channel to {target} has no TLS (Builder::tls), so tokens would travel in \
         cleartext; if its traffic is protected another way, opt in with \
         Builder::allow_credentials_without_tls(true)"
    )
}

/// `authorization` and the user's keys, checked and without repeats.
fn sensitive_keys(keys: &[String]) -> Result<Arc<[http::HeaderName]>, Error> {
    let mut names = vec![http::header::AUTHORIZATION];
    for key in keys {
        let name = http::HeaderName::from_bytes(key.as_bytes()).map_err(|_| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("sensitive_metadata: {key:?} is not a valid metadata key"),
            )
        })?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names.into())
}

/// Wraps a service config error as the crate's error.
pub(super) fn invalid_config(error: crate::config::InvalidConfig) -> Error {
    Error::caused_by(
        ErrorKind::InvalidConfig,
        format!("service config: {error}"),
        error,
    )
}

/// The builder's settings a service config may override, kept so each service config
/// update can be applied on top of them.
#[derive(Clone, Debug)]
pub(super) struct Policies {
    policy: Policy,
    methods: Vec<(String, Policy)>,
    seed: u64,
    /// Outlier detection set on the builder; a config's `outlier_detection_experimental`
    /// replaces it.
    outliers: Option<OutlierDetection>,
    /// Random subsetting set on the builder; a config's `random_subsetting_experimental`
    /// replaces it.
    subset_size: Option<usize>,
    /// Health checking set on the builder; it wins over a config's `healthCheckConfig`.
    health_service: Option<String>,
    /// Attempts per call at most, retries and hedges included.
    max_attempts: u32,
    /// The deadline of calls that have none.
    default_timeout: Option<Duration>,
}

impl Policies {
    /// The seed of the channel's pickers and draws.
    pub(super) fn seed(&self) -> u64 {
        self.seed
    }

    /// What calls consult, from these settings and a service config; plus what the
    /// control task applies: how to connect, the RTT estimate parameters the policies
    /// need, outlier detection and health checking.
    pub(super) fn call_config(
        &self,
        service_config: Option<&ServiceConfig>,
    ) -> Result<(CallConfig, ControlConfig), Error> {
        if let Some(config) = service_config {
            config.validate().map_err(invalid_config)?;
        }
        // The service config's load balancing policy, when present, is the channel's.
        let lb = service_config.and_then(|c| c.load_balancing.as_ref());
        let default = lb.map_or_else(|| self.policy.clone(), Policy::from);
        let shuffle = matches!(
            lb.map(LoadBalancingConfig::picking_policy),
            Some(LoadBalancingConfig::PickFirst {
                shuffle_address_list: true
            })
        );
        let outliers = match lb.and_then(LoadBalancingConfig::outlier_detection) {
            Some(config) => Some(OutlierDetection::from(config)),
            None => self.outliers.clone(),
        };
        let subset_size = match lb.and_then(LoadBalancingConfig::random_subsetting) {
            Some(config) => Some(usize::try_from(config.subset_size).unwrap_or(usize::MAX)),
            None => self.subset_size,
        };
        let health_service = self.health_service.clone().or_else(|| {
            service_config
                .and_then(|c| c.health_check.as_ref())
                .map(|h| h.service_name.clone())
        });
        let pickers = build_pickers(&default, &self.methods, self.seed)?;
        let ewma = pickers
            .values()
            .find_map(|(policy, _)| policy.ewma_params());
        let mode = if pickers.values().all(|(policy, _)| policy.is_pick_first()) {
            ConnectMode::FirstReady
        } else {
            ConnectMode::All
        };
        let call_config = CallConfig {
            pickers: pickers.map(|(_, picker)| picker),
            methods: service_config
                .map(ServiceConfig::method_map)
                .unwrap_or_else(|| MethodMap::new(None)),
            throttle: service_config
                .and_then(|c| c.retry_throttling.as_ref())
                .map(|t| Arc::new(Throttle::new(t.max_tokens, t.token_ratio))),
            max_attempts: self.max_attempts,
            default_timeout: self.default_timeout,
            max_concurrent: service_config.and_then(|c| c.max_concurrent_requests),
            drops: service_config.map_or_else(Vec::new, |c| c.drop_overloads.clone()),
        };
        let control = ControlConfig {
            mode,
            ewma,
            shuffle,
            outliers,
            health_service,
            subset_size,
        };
        Ok((call_config, control))
    }
}

/// One picker per configured policy, each seeded differently (so two P2C pickers do not
/// sample the same pairs), in a map keyed by method.
fn build_pickers(
    default: &Policy,
    methods: &[(String, Policy)],
    seed: u64,
) -> Result<PolicyMap, Error> {
    let invalid = |what: String| Error::new(ErrorKind::InvalidConfig, what);
    default.validate().map_err(|e| e.within("policy."))?;
    let mut map = MethodMap::new((default.clone(), default.picker(seed)));
    for (i, (name, policy)) in methods.iter().enumerate() {
        let parsed = MethodName::parse(name).map_err(|e| invalid(format!("method_policy: {e}")))?;
        policy
            .validate()
            .map_err(|e| e.within(&format!("method_policy({name:?}).")))?;
        let salt = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        if map
            .insert(&parsed, (policy.clone(), policy.picker(seed ^ salt)))
            .is_some()
        {
            return Err(invalid(format!("method_policy: {name:?} is given twice")));
        }
    }
    Ok(map)
}

impl Builder {
    /// Liveness and keepalive, checked.
    fn conn_settings(&self) -> Result<ConnSettings, Error> {
        use crate::InvalidSetting;
        if self.liveness.is_some_and(|floor| floor.is_zero()) {
            return Err(
                InvalidSetting::new("liveness_check", "must be > 0 (None turns it off)").into(),
            );
        }
        let keepalive = match self.keepalive {
            Some(k) if k.timeout.is_zero() => {
                return Err(InvalidSetting::new("keepalive.timeout", "must be > 0").into());
            }
            Some(k) => Some(crate::subchannel::Keepalive {
                time: k.time.max(crate::defaults::MIN_KEEPALIVE_TIME),
                timeout: k.timeout,
                without_calls: k.without_calls,
            }),
            None => None,
        };
        Ok(ConnSettings {
            tcp: TcpOptions {
                user_timeout: keepalive.map(|k| k.timeout),
                ..TcpOptions::default()
            },
            liveness: self.liveness.map(|floor| Liveness {
                floor,
                rtt_factor: crate::defaults::LIVENESS_RTT_FACTOR,
            }),
            keepalive,
        })
    }
}

/// The endpoint maker: the user's, or `http://AUTHORITY` (per address when the target
/// names no host), then the user's adjustments; with TLS, an `https://` origin.
fn make_endpoint(
    custom: Option<MakeEndpoint>,
    configure: Option<ConfigureEndpoint>,
    authority: Option<String>,
    #[cfg(feature = "tls")] tls: bool,
) -> Result<EndpointMaker, Error> {
    let base: MakeEndpoint = match (custom, authority) {
        (Some(custom), _) => custom,
        (None, Some(authority)) => {
            let endpoint = Endpoint::from_shared(format!("http://{authority}")).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidTarget,
                    format!("{authority:?} is not a valid authority: {e}"),
                )
            })?;
            Arc::new(move |_: &Address| endpoint.clone())
        }
        (None, None) => Arc::new(|address: &Address| {
            // A socket address always makes a valid URI authority.
            Endpoint::from_shared(format!("http://{}", address.addr))
                .expect("a socket address is a valid URI authority")
        }),
    };
    let configured: MakeEndpoint = match configure {
        Some(configure) => Arc::new(move |address: &Address| configure(base(address))),
        None => base,
    };
    #[cfg(feature = "tls")]
    if tls {
        return Ok(Arc::new(move |address: &Address| {
            https_origin(configured(address))
        }));
    }
    Ok(Arc::new(move |address: &Address| Ok(configured(address))))
}

/// With the channel's TLS: calls say `https`, and tonic must not add TLS of its own.
#[cfg(feature = "tls")]
fn https_origin(endpoint: Endpoint) -> Result<Endpoint, String> {
    let uri = endpoint.uri();
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "tls: the endpoint {uri} must be http://: with Builder::tls the channel makes \
             the TLS handshake itself, and tonic would add its own on https:// endpoints"
        ));
    }
    let origin = http::Uri::builder()
        .scheme("https")
        .authority(uri.authority().map_or("", |a| a.as_str()))
        .path_and_query("/")
        .build()
        .map_err(|e| format!("tls: no https origin for {uri}: {e}"))?;
    Ok(endpoint.origin(origin))
}

/// The one address of a `unix:` target, and the authority gRPC sends to Unix sockets.
fn unix_resolver(target: &Target, name: &str) -> Result<(Box<dyn Resolve>, Option<String>), Error> {
    let Target::Unix(path) = target else {
        return Err(Error::new(
            ErrorKind::InvalidTarget,
            format!("target {name:?} is not a unix: target"),
        ));
    };
    if cfg!(not(unix)) {
        return Err(Error::new(
            ErrorKind::UnsupportedTarget,
            format!("target {name:?}: Unix domain sockets exist only on Unix"),
        ));
    }
    let resolver = StaticList::new([Address::unix(path)]);
    Ok((Box::new(resolver), Some(target.authority())))
}

/// An IP literal in a `dns:` target needs no lookup (and no `dns` feature).
fn ip_literal(target: &Target) -> Option<Box<dyn Resolve>> {
    match target {
        Target::Dns { host, port, .. } => {
            let ip = host.parse::<std::net::IpAddr>().ok()?;
            Some(Box::new(StaticList::new([std::net::SocketAddr::new(
                ip, *port,
            )])))
        }
        _ => None,
    }
}

/// The resolver of a `dns:` or `dns+srv:` target.
#[cfg(feature = "dns")]
fn dns_resolver(
    target: &Target,
    name: &str,
    options: &crate::resolver::DnsOptions,
    seed: u64,
) -> Result<Box<dyn Resolve>, Error> {
    if let Some(resolver) = ip_literal(target) {
        return Ok(resolver);
    }
    let seed = seed ^ 0xD15E_A5E5_D15E_A5E5;
    Ok(Box::new(crate::resolver::Dns::new(
        target, name, options, seed,
    )?))
}

#[cfg(not(feature = "dns"))]
fn dns_resolver(target: &Target, name: &str) -> Result<Box<dyn Resolve>, Error> {
    if let Some(resolver) = ip_literal(target) {
        return Ok(resolver);
    }
    let what = match target {
        Target::DnsSrv { .. } => "SRV records",
        _ => "host names",
    };
    Err(Error::new(
        ErrorKind::UnsupportedTarget,
        format!(
            "target {name:?}: resolving {what} through DNS needs the `dns` feature of \
             tonic-balancer (on by default): enable it, or use an ipv4:/ipv6: target or \
             builder_with_resolver"
        ),
    ))
}

impl Builder {
    fn seed_or_random(&self) -> u64 {
        self.seed
            .unwrap_or_else(|| RandomState::new().hash_one(std::process::id()))
    }
}

impl Builder {
    #[cfg(feature = "dns")]
    fn dns_options_debug(&self) -> &dyn fmt::Debug {
        &self.dns_options
    }

    #[cfg(not(feature = "dns"))]
    fn dns_options_debug(&self) -> &dyn fmt::Debug {
        &"(dns feature off)"
    }
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("Builder");
        f.field("target", &self.name)
            .field("policy", &self.policy)
            .field("method_policies", &self.method_policies)
            .field("connection_backoff", &self.backoff)
            .field("wait_for_ready", &self.wait_for_ready)
            .field("seed", &self.seed)
            .field("service_config", &self.service_config)
            .field("retry_budget", &self.budget)
            .field("retry_buffer_size", &self.replay_limit)
            .field("health_check", &self.health_service)
            .field("outlier_detection", &self.outlier_detection)
            .field("panic_threshold", &self.panic_threshold)
            .field("random_subsetting", &self.subset_size)
            .field("dns_options", &self.dns_options_debug())
            .field("sensitive_metadata", &self.sensitive)
            .field("stats_method_limit", &self.stats_method_limit)
            .field(
                "allow_credentials_without_tls",
                &self.credentials_without_tls,
            )
            .field("max_call_attempts", &self.max_attempts)
            .field("default_timeout", &self.default_timeout);
        #[cfg(feature = "tls")]
        f.field("tls", &self.tls);
        f.finish_non_exhaustive()
    }
}
