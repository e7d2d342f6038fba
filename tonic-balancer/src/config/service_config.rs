//! The gRPC service config (gRFC A2, A6, A21) as typed Rust, and its validation rules.
//!
//! [`ServiceConfig::from_json`] checks JSON types and required fields while it walks the
//! document (see `json.rs`); value ranges and cross-field rules live here, in
//! [`ServiceConfig::validate`], so configs built in Rust get the same checks.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tonic::Code;

use super::{MethodMap, MethodName};

/// A gRPC service config: the channel-wide load balancing policy and per-method settings.
///
/// Parse one with [`ServiceConfig::from_json`], or start from [`Default`] (everything
/// unset) and check the result with [`ServiceConfig::validate`].
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// The load balancing policy: `loadBalancingConfig`'s first supported entry, else the
    /// deprecated `loadBalancingPolicy` name. `None`: the channel's own choice
    /// ([`Builder::policy`](crate::Builder::policy); pick_first in gRPC).
    pub load_balancing: Option<LoadBalancingConfig>,
    /// Per-method settings (`methodConfig`). A call uses the config naming its exact
    /// method, else its service, else the default (empty name). Default: none.
    pub method_configs: Vec<MethodConfig>,
    /// Retry throttling (`retryThrottling`), shared by all calls on the channel.
    /// `None`: retries and hedges are not throttled.
    pub retry_throttling: Option<RetryThrottling>,
    /// Client-side health checking (`healthCheckConfig`). `None`: disabled.
    pub health_check: Option<HealthCheckConfig>,
    /// The most calls the channel has in flight at once: a call started beyond it fails
    /// at once with UNAVAILABLE. This is xDS circuit breaking (gRFC A32: the cluster's
    /// `circuit_breakers.thresholds` of DEFAULT priority, `max_requests`, 1024 when
    /// unset), which the xDS resolver sets; it has no name in gRPC's JSON service
    /// config. A call counts from its start until its response stream ends, waiting
    /// for a READY backend included. `None`: no limit.
    pub max_concurrent_requests: Option<u32>,
    /// Shares of calls the channel fails at once, before picking, with UNAVAILABLE:
    /// an xDS control plane's load shedding (EDS `policy.drop_overloads`, which the xDS
    /// resolver sets; no name in gRPC's JSON service config). Each category draws on
    /// its own, in order. Default: none.
    pub drop_overloads: Vec<DropOverload>,
}

/// One category of calls an xDS control plane has the channel drop; see
/// [`ServiceConfig::drop_overloads`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DropOverload {
    /// The control plane's name for it (`lb`, `throttle`, ...), in the error message.
    pub category: String,
    /// Calls dropped, per million (above a million: all).
    pub per_million: u32,
}

impl DropOverload {
    /// Drops `per_million` calls of every million in `category`.
    pub fn new(category: impl Into<String>, per_million: u32) -> Self {
        Self {
            category: category.into(),
            per_million: per_million.min(1_000_000),
        }
    }
}

/// A load balancing policy and its settings, as `loadBalancingConfig` names it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum LoadBalancingConfig {
    /// `{"pick_first": {"shuffleAddressList": false}}`: the first address that connects
    /// takes every call.
    PickFirst {
        /// Whether each address list from the resolver is shuffled before use, so a
        /// fleet of clients spreads over the addresses instead of all connecting to the
        /// first (`shuffleAddressList`, gRFC A62). Seeded from
        /// [`Builder::seed`](crate::Builder::seed). Default: false.
        shuffle_address_list: bool,
    },
    /// `{"round_robin": {}}`: READY backends in turn.
    RoundRobin,
    /// `{"least_request": {"choiceCount": N}}`: the least loaded of N random backends.
    /// `least_request_experimental`, the name grpc-go and grpc-java register, is the same
    /// policy.
    LeastRequest {
        /// How many backends to sample: 2..=10, default 2 (JSON values above 10 are
        /// treated as 10).
        choice_count: usize,
    },
    /// `{"peak_ewma": {"decay": "10s", "defaultRtt": "0.03s"}}`: the backend with the lowest
    /// peak-sensitive moving average of latency times load.
    PeakEwma {
        /// How fast old latency samples fade: must be > 0. `None`: the policy's default.
        decay: Option<Duration>,
        /// The latency assumed for a backend with no samples yet. `None`: the policy's
        /// default.
        default_rtt: Option<Duration>,
    },
    /// `{"outlier_detection_experimental": {..., "childPolicy": [...]}}` (gRFC A50):
    /// outlier detection over the child policy, which picks.
    OutlierDetection(Box<OutlierDetectionConfig>),
    /// `{"random_subsetting_experimental": {"subsetSize": 10, "childPolicy": [...]}}`
    /// (gRFC A68): the channel connects to a random subset of the resolver's addresses,
    /// chosen by rendezvous hashing (see [`subset`](crate::balance::subset)); the child
    /// policy picks among them.
    RandomSubsetting(Box<RandomSubsettingConfig>),
    /// Locality-weighted balancing, meant for the xDS resolver, which builds it from EDS
    /// (gRFC A27's `weighted_target` over localities): each locality gets its weight's
    /// share of the calls, and its endpoints share that part through the child policy.
    /// Addresses name their locality in [`Address::locality`](crate::resolver::Address::locality).
    /// Not a gRPC policy name: a JSON service config cannot ask for it (its
    /// [`name`](Self::name) is `locality_weighted`). See
    /// [`LocalityWeighted`](crate::balance::LocalityWeighted) for how it picks and where
    /// it differs from gRPC.
    LocalityWeighted(Box<LocalityWeightedConfig>),
}

/// `locality_weighted`'s settings: each locality's weight and size.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct LocalityWeightedConfig {
    /// One entry per locality; each name once.
    pub localities: Vec<LocalityWeight>,
    /// How a locality's endpoints share its calls: `round_robin` or `least_request`.
    pub child_policy: LoadBalancingConfig,
}

impl LocalityWeightedConfig {
    /// These localities, `child_policy` (round_robin or least_request) within each.
    pub fn new(localities: Vec<LocalityWeight>, child_policy: LoadBalancingConfig) -> Self {
        Self {
            localities,
            child_policy,
        }
    }

    fn validate(&self, path: &Path) -> Result<(), InvalidConfig> {
        let mut seen = HashMap::new();
        for (i, locality) in self.localities.iter().enumerate() {
            let here = path.key("localities").index(i);
            if let Some(first) = seen.insert(locality.name.as_str(), i) {
                return Err(here.key("name").error(format!(
                    "duplicate locality {:?}, also at localities[{first}]",
                    locality.name
                )));
            }
            if locality.weight == 0 {
                return Err(here.key("weight").error("must be > 0, got 0"));
            }
            if locality.endpoints == 0 {
                return Err(here.key("endpoints").error("must be > 0, got 0"));
            }
            if locality.heaviest_endpoint == 0 || locality.heaviest_endpoint > locality.endpoints {
                return Err(here.key("heaviestEndpoint").error(format!(
                    "must be from 1 to endpoints ({}), got {}",
                    locality.endpoints, locality.heaviest_endpoint
                )));
            }
        }
        let child = &self.child_policy;
        let child_path = path.key("childPolicy").index(0).key(child.name());
        match child {
            LoadBalancingConfig::RoundRobin | LoadBalancingConfig::LeastRequest { .. } => {
                child.validate(&child_path)
            }
            other => Err(child_path.error(format!(
                "{} cannot pick within a locality (round_robin or least_request)",
                other.name()
            ))),
        }
    }
}

/// One locality of a [`LocalityWeightedConfig`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct LocalityWeight {
    /// The key its addresses carry in [`Address::locality`](crate::resolver::Address::locality).
    pub name: String,
    /// Its weight (EDS `load_balancing_weight`), > 0.
    pub weight: u32,
    /// The sum of its endpoints' weights in the address set, > 0: each endpoint's
    /// [`Address::weight`](crate::resolver::Address::weight), 1 where unset, so without
    /// endpoint weights it is the number of endpoints. An endpoint of weight `w` stands
    /// for `weight × w / endpoints` of the calls' share.
    pub endpoints: u32,
    /// The largest of its endpoints' weights, from 1 to `endpoints` (default 1).
    pub heaviest_endpoint: u32,
}

impl LocalityWeight {
    /// The locality `name` of `weight` (> 0) with `endpoints` (> 0) endpoints of equal
    /// weight.
    pub fn new(name: impl Into<String>, weight: u32, endpoints: u32) -> Self {
        Self {
            name: name.into(),
            weight,
            endpoints,
            heaviest_endpoint: 1,
        }
    }

    /// The same with endpoint weights: `endpoints` is their sum and `heaviest` the
    /// largest of them.
    pub fn with_heaviest_endpoint(mut self, heaviest: u32) -> Self {
        self.heaviest_endpoint = heaviest;
        self
    }
}

/// `random_subsetting_experimental`'s settings (gRFC A68).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RandomSubsettingConfig {
    /// How many addresses each channel connects to (`subsetSize`, required): > 0. With
    /// fewer addresses than that, all of them.
    pub subset_size: u32,
    /// The policy that picks among the subset (`childPolicy`, required; the first
    /// supported entry of the list).
    pub child_policy: LoadBalancingConfig,
}

impl RandomSubsettingConfig {
    /// Subsets of `subset_size` (> 0) addresses, `child_policy` picking among them.
    pub fn new(subset_size: u32, child_policy: LoadBalancingConfig) -> Self {
        Self {
            subset_size,
            child_policy,
        }
    }

    fn validate(&self, path: &Path) -> Result<(), InvalidConfig> {
        if self.subset_size == 0 {
            return Err(path.key("subsetSize").error("must be > 0, got 0"));
        }
        let child = &self.child_policy;
        child.validate(&path.key("childPolicy").index(0).key(child.name()))
    }
}

/// `outlier_detection_experimental`'s settings, with gRFC A50's field names and defaults.
/// The channel runs them as its [`OutlierDetection`](crate::health::OutlierDetection),
/// without ejection after consecutive failures (A50 has none).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct OutlierDetectionConfig {
    /// How often ejections are decided (`interval`), > 0. Default 10 s.
    pub interval: Duration,
    /// The first ejection's length (`baseEjectionTime`), > 0. Default 30 s.
    pub base_ejection_time: Duration,
    /// The longest ejection (`maxEjectionTime`). Default 300 s.
    pub max_ejection_time: Duration,
    /// Most backends ejected at once, in percent, <= 100 (`maxEjectionPercent`).
    /// Default 10.
    pub max_ejection_percent: u32,
    /// The success-rate algorithm (`successRateEjection`); `None` (absent): off.
    pub success_rate_ejection: Option<SuccessRateEjectionConfig>,
    /// The failure-percentage algorithm (`failurePercentageEjection`); `None`
    /// (absent): off.
    pub failure_percentage_ejection: Option<FailurePercentageEjectionConfig>,
    /// The policy that picks among the backends not ejected (`childPolicy`, required).
    pub child_policy: LoadBalancingConfig,
}

impl OutlierDetectionConfig {
    /// A50's defaults (both algorithms off) over `child_policy`.
    pub fn new(child_policy: LoadBalancingConfig) -> Self {
        Self {
            interval: crate::defaults::DEFAULT_EJECTION_INTERVAL,
            base_ejection_time: crate::defaults::DEFAULT_BASE_EJECTION_TIME,
            max_ejection_time: crate::defaults::DEFAULT_MAX_EJECTION_TIME,
            max_ejection_percent: crate::defaults::DEFAULT_MAX_EJECTION_PERCENT,
            success_rate_ejection: None,
            failure_percentage_ejection: None,
            child_policy,
        }
    }
}

/// A50's `successRateEjection`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SuccessRateEjectionConfig {
    /// Standard deviations × 1000 (`stdevFactor`). Default 1900.
    pub stdev_factor: u32,
    /// Chance that an outlier is ejected, in percent, <= 100 (`enforcementPercentage`).
    /// Default 100.
    pub enforcement_percentage: u32,
    /// Backends with enough calls needed to run at all (`minimumHosts`). Default 5.
    pub minimum_hosts: u32,
    /// Calls in an interval for a backend to count (`requestVolume`). Default 100.
    pub request_volume: u32,
}

impl Default for SuccessRateEjectionConfig {
    fn default() -> Self {
        Self {
            stdev_factor: 1900,
            enforcement_percentage: 100,
            minimum_hosts: 5,
            request_volume: 100,
        }
    }
}

/// A50's `failurePercentageEjection`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FailurePercentageEjectionConfig {
    /// Failure percentage above which a backend is ejected, <= 100 (`threshold`).
    /// Default 85.
    pub threshold: u32,
    /// Chance that an outlier is ejected, in percent, <= 100 (`enforcementPercentage`).
    /// Default 100.
    pub enforcement_percentage: u32,
    /// Backends with enough calls needed to run at all (`minimumHosts`). Default 5.
    pub minimum_hosts: u32,
    /// Calls in an interval for a backend to count (`requestVolume`). Default 50.
    pub request_volume: u32,
}

impl Default for FailurePercentageEjectionConfig {
    fn default() -> Self {
        Self {
            threshold: 85,
            enforcement_percentage: 100,
            minimum_hosts: 5,
            request_volume: 50,
        }
    }
}

/// Settings for the calls matching one of [`names`](Self::names).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct MethodConfig {
    /// The methods this config applies to (`name`). Each name may appear once in a
    /// whole service config. Default: none (the config applies to no call).
    pub names: Vec<MethodPattern>,
    /// Whether calls wait for a READY backend instead of failing fast
    /// (`waitForReady`). `None`: the channel's default.
    pub wait_for_ready: Option<bool>,
    /// The deadline for a call (`timeout`); a shorter deadline set by the application
    /// wins. `0s` is valid, as in grpc-go and C-core: every call fails at once with
    /// DEADLINE_EXCEEDED. `None`: no limit from the config.
    pub timeout: Option<Duration>,
    /// The largest request message, in bytes (`maxRequestMessageBytes`). `None`: the
    /// channel's default.
    pub max_request_message_bytes: Option<u64>,
    /// The largest response message, in bytes (`maxResponseMessageBytes`). `None`: the
    /// channel's default.
    pub max_response_message_bytes: Option<u64>,
    /// How failed calls are retried (`retryPolicy`). With a hedging policy too, the retry
    /// policy is used, as in grpc-go.
    pub retry_policy: Option<RetryPolicy>,
    /// How calls are hedged (`hedgingPolicy`); ignored when there is a retry policy.
    pub hedging_policy: Option<HedgingPolicy>,
}

/// One entry of a method config's `name` list: a method, a whole service, or the default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct MethodPattern {
    /// The full service name, e.g. `pkg.Svc` (`service`). `None` (or empty): the default
    /// pattern, which must then have no method.
    pub service: Option<String>,
    /// The method name within the service, e.g. `Get` (`method`). `None` (or empty): every
    /// method of the service.
    pub method: Option<String>,
}

/// Retries of failed calls (gRFC A6 `retryPolicy`).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included (`maxAttempts`): 2..=5; JSON values above 5
    /// are treated as 5.
    pub max_attempts: u32,
    /// The backoff before the first retry, > 0 (`initialBackoff`); each retry waits a
    /// random time up to the current backoff.
    pub initial_backoff: Duration,
    /// The largest backoff, > 0 (`maxBackoff`).
    pub max_backoff: Duration,
    /// The factor the backoff grows by after each retry, > 0 (`backoffMultiplier`).
    pub backoff_multiplier: f64,
    /// The status codes worth a retry; must not be empty (`retryableStatusCodes`).
    pub retryable_status_codes: Vec<Code>,
}

impl RetryPolicy {
    /// A retry policy from its required settings; see the fields for their ranges.
    pub fn new(
        max_attempts: u32,
        initial_backoff: Duration,
        max_backoff: Duration,
        backoff_multiplier: f64,
        retryable_status_codes: Vec<Code>,
    ) -> Self {
        Self {
            max_attempts,
            initial_backoff,
            max_backoff,
            backoff_multiplier,
            retryable_status_codes,
        }
    }
}

/// Parallel attempts of a call (gRFC A6 `hedgingPolicy`).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct HedgingPolicy {
    /// Attempts in all, the first included (`maxAttempts`): 2..=5; JSON values above 5
    /// are treated as 5.
    pub max_attempts: u32,
    /// The delay before each further attempt (`hedgingDelay`). Default: 0s (all at once).
    pub hedging_delay: Duration,
    /// Status codes that do not stop the other attempts (`nonFatalStatusCodes`). Default:
    /// none (any failure ends the call).
    pub non_fatal_status_codes: Vec<Code>,
}

impl HedgingPolicy {
    /// A hedging policy with `max_attempts` (2..=5), no delay and no non-fatal codes.
    pub fn new(max_attempts: u32) -> Self {
        Self {
            max_attempts,
            hedging_delay: Duration::ZERO,
            non_fatal_status_codes: Vec::new(),
        }
    }
}

/// Retry throttling (gRFC A6 `retryThrottling`): a token bucket per channel; each failure
/// takes a token, each success returns `token_ratio`; retries and hedges stop while the
/// bucket is at most half full.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RetryThrottling {
    /// The bucket size, in (0, 1000] (`maxTokens`).
    pub max_tokens: f64,
    /// Tokens returned per success, > 0 (`tokenRatio`; gRPC keeps 3 decimal places).
    pub token_ratio: f64,
}

impl RetryThrottling {
    /// Throttling with the given bucket size and ratio; see the fields for their ranges.
    pub fn new(max_tokens: f64, token_ratio: f64) -> Self {
        Self {
            max_tokens,
            token_ratio,
        }
    }
}

/// Client-side health checking (`healthCheckConfig`, gRFC A17).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct HealthCheckConfig {
    /// The service name sent in health checks (`serviceName`). Default: empty, the
    /// health of the whole server.
    pub service_name: String,
}

impl HealthCheckConfig {
    /// Health checking of `service_name` (empty: the whole server).
    pub fn new(service_name: impl Into<String>) -> Self {
        Self {
            service_name: service_name.into(),
        }
    }
}

/// Why a service config is not valid: the path of the offending field, as the JSON
/// writes it (`methodConfig[1].retryPolicy.maxAttempts`), and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct InvalidConfig {
    path: String,
    reason: String,
}

impl InvalidConfig {
    /// The path of the offending field, e.g. `methodConfig[1].retryPolicy.maxAttempts`;
    /// empty when the whole document is at fault (such as invalid JSON).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong, e.g. `must be > 1, got 1`.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path.as_str() {
            "" => f.write_str(&self.reason),
            path => write!(f, "{path}: {}", self.reason),
        }
    }
}

/// A field path being built, such as `methodConfig[2].name[0]`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Path(String);

impl Path {
    pub(crate) fn root() -> Self {
        Self::default()
    }

    pub(crate) fn key(&self, key: &str) -> Self {
        match self.0.as_str() {
            "" => Self(key.to_owned()),
            path => Self(format!("{path}.{key}")),
        }
    }

    pub(crate) fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }

    pub(crate) fn error(&self, reason: impl Into<String>) -> InvalidConfig {
        InvalidConfig {
            path: self.0.clone(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl ServiceConfig {
    /// Checks the rules [`from_json`](Self::from_json) applies, for a config built in
    /// Rust; errors name fields by their JSON paths (the load balancing config counts as
    /// entry 0). Stricter on one point: counts JSON would clamp (`maxAttempts` above 5,
    /// `choiceCount` above 10) are rejected.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let root = Path::root();
        if let Some(lb) = &self.load_balancing {
            lb.validate(&root.key("loadBalancingConfig").index(0).key(lb.name()))?;
        }
        let mut names = HashMap::new();
        for (i, method) in self.method_configs.iter().enumerate() {
            method.validate(&root.key("methodConfig").index(i), &mut names)?;
        }
        if let Some(throttling) = &self.retry_throttling {
            throttling.validate(&root.key("retryThrottling"))?;
        }
        Ok(())
    }

    /// The method configs by method name: the exact method, else its service, else the
    /// default (the config with the empty name, if any). Meant for a validated config; on
    /// an invalid one, invalid names are skipped and a later duplicate wins.
    pub(crate) fn method_map(&self) -> MethodMap<Option<Arc<MethodConfig>>> {
        let mut default = None;
        let mut named = Vec::new();
        for method in &self.method_configs {
            let mut used = method.clone();
            if used.retry_policy.is_some() {
                used.hedging_policy = None;
            }
            let shared = Arc::new(used);
            for pattern in &method.names {
                match pattern.method_name() {
                    Ok(None) => default = Some(Arc::clone(&shared)),
                    Ok(Some(name)) => named.push((name, Arc::clone(&shared))),
                    Err(_) => {}
                }
            }
        }
        let mut map = MethodMap::new(default);
        for (name, method) in named {
            map.insert(&name, Some(method));
        }
        map
    }
}

impl LoadBalancingConfig {
    /// The policy's name in `loadBalancingConfig`, e.g. `round_robin`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::PickFirst { .. } => "pick_first",
            Self::RoundRobin => "round_robin",
            Self::LeastRequest { .. } => "least_request",
            Self::PeakEwma { .. } => "peak_ewma",
            Self::OutlierDetection(_) => "outlier_detection_experimental",
            Self::RandomSubsetting(_) => "random_subsetting_experimental",
            Self::LocalityWeighted(_) => "locality_weighted",
        }
    }

    /// The policy that picks: this one, or the child of outlier detection or of
    /// subsetting (however they nest).
    pub fn picking_policy(&self) -> &LoadBalancingConfig {
        match self {
            Self::OutlierDetection(od) => od.child_policy.picking_policy(),
            Self::RandomSubsetting(rs) => rs.child_policy.picking_policy(),
            other => other,
        }
    }

    /// Outlier detection's settings, if this policy or a child of its (through
    /// subsetting) has it.
    pub fn outlier_detection(&self) -> Option<&OutlierDetectionConfig> {
        match self {
            Self::OutlierDetection(od) => Some(od),
            Self::RandomSubsetting(rs) => rs.child_policy.outlier_detection(),
            _ => None,
        }
    }

    /// Random subsetting's settings, if this policy or a child of its (through outlier
    /// detection) has it.
    pub fn random_subsetting(&self) -> Option<&RandomSubsettingConfig> {
        match self {
            Self::RandomSubsetting(rs) => Some(rs),
            Self::OutlierDetection(od) => od.child_policy.random_subsetting(),
            _ => None,
        }
    }

    /// Range checks; `path` names the policy's config object.
    pub(crate) fn validate(&self, path: &Path) -> Result<(), InvalidConfig> {
        match self {
            Self::PickFirst { .. } | Self::RoundRobin => Ok(()),
            Self::OutlierDetection(od) => od.validate(path),
            Self::RandomSubsetting(rs) => rs.validate(path),
            Self::LocalityWeighted(lw) => lw.validate(path),
            Self::LeastRequest { choice_count } => {
                let count = u64::try_from(*choice_count).unwrap_or(u64::MAX);
                check_count(
                    count,
                    crate::defaults::MAX_CHOICE_COUNT as u32,
                    &path.key("choiceCount"),
                )
            }
            Self::PeakEwma { decay, .. } => match decay {
                Some(decay) => check_positive(*decay, &path.key("decay")),
                None => Ok(()),
            },
        }
    }
}

impl MethodPattern {
    /// The default pattern (`{}`): every method no other pattern matches.
    pub fn default_all() -> Self {
        Self::default()
    }

    /// Every method of `service` (`{"service": "pkg.Svc"}`).
    pub fn service(service: impl Into<String>) -> Self {
        Self {
            service: Some(service.into()),
            method: None,
        }
    }

    /// One method (`{"service": "pkg.Svc", "method": "Get"}`).
    pub fn method(service: impl Into<String>, method: impl Into<String>) -> Self {
        Self {
            service: Some(service.into()),
            method: Some(method.into()),
        }
    }

    /// `None` for the default pattern, else the method or service it names.
    pub(crate) fn method_name(&self) -> Result<Option<MethodName>, String> {
        fn non_empty(s: &Option<String>) -> Option<&str> {
            s.as_deref().filter(|s| !s.is_empty())
        }
        match (non_empty(&self.service), non_empty(&self.method)) {
            (None, None) => Ok(None),
            (None, Some(method)) => Err(format!(
                "method {method:?} without a service: a name with a method must name its service"
            )),
            (Some(service), method) => MethodName::from_parts(service, method)
                .map(Some)
                .map_err(|e| e.to_string()),
        }
    }
}

impl MethodConfig {
    /// Checks this config; `names` maps each name seen so far to where it was.
    fn validate(
        &self,
        path: &Path,
        names: &mut HashMap<Option<MethodName>, Path>,
    ) -> Result<(), InvalidConfig> {
        for (i, pattern) in self.names.iter().enumerate() {
            let here = path.key("name").index(i);
            let name = pattern.method_name().map_err(|e| here.error(e))?;
            match names.entry(name) {
                Entry::Vacant(entry) => {
                    entry.insert(here);
                }
                Entry::Occupied(entry) => {
                    let shown = entry
                        .key()
                        .as_ref()
                        .map_or("{} (the default)".to_owned(), |n| n.to_string());
                    return Err(
                        here.error(format!("duplicate name {shown}, also at {}", entry.get()))
                    );
                }
            }
        }
        // "0s" is valid, as in grpc-go and C-core: every call fails at once.
        if let Some(timeout) = self.timeout {
            check_bounded(timeout, &path.key("timeout"))?;
        }
        if let Some(hedging) = &self.hedging_policy
            && self.retry_policy.is_none()
        {
            check_bounded(
                hedging.hedging_delay,
                &path.key("hedgingPolicy").key("hedgingDelay"),
            )?;
        }
        if let Some(retry) = &self.retry_policy {
            retry.validate(&path.key("retryPolicy"))?;
        }
        // Ignored beside a retry policy (see `method_map`), so not checked either.
        if let Some(hedging) = self
            .hedging_policy
            .as_ref()
            .filter(|_| self.retry_policy.is_none())
        {
            let count = u64::from(hedging.max_attempts);
            check_count(
                count,
                crate::defaults::MAX_ATTEMPTS,
                &path.key("hedgingPolicy").key("maxAttempts"),
            )?;
        }
        Ok(())
    }
}

impl RetryPolicy {
    fn validate(&self, path: &Path) -> Result<(), InvalidConfig> {
        let attempts = u64::from(self.max_attempts);
        check_count(
            attempts,
            crate::defaults::MAX_ATTEMPTS,
            &path.key("maxAttempts"),
        )?;
        check_positive(self.initial_backoff, &path.key("initialBackoff"))?;
        check_positive(self.max_backoff, &path.key("maxBackoff"))?;
        check_bounded(self.max_backoff, &path.key("maxBackoff"))?;
        let multiplier = self.backoff_multiplier;
        if !(multiplier.is_finite() && multiplier > 0.0) {
            let path = path.key("backoffMultiplier");
            return Err(path.error(format!("must be > 0, got {multiplier}")));
        }
        if self.retryable_status_codes.is_empty() {
            return Err(path.key("retryableStatusCodes").error("must not be empty"));
        }
        Ok(())
    }
}

impl OutlierDetectionConfig {
    fn validate(&self, path: &Path) -> Result<(), InvalidConfig> {
        check_positive(self.interval, &path.key("interval"))?;
        check_positive(self.base_ejection_time, &path.key("baseEjectionTime"))?;
        check_percent(self.max_ejection_percent, &path.key("maxEjectionPercent"))?;
        if let Some(sr) = &self.success_rate_ejection {
            let path = path.key("successRateEjection");
            check_percent(
                sr.enforcement_percentage,
                &path.key("enforcementPercentage"),
            )?;
        }
        if let Some(fp) = &self.failure_percentage_ejection {
            let path = path.key("failurePercentageEjection");
            check_percent(fp.threshold, &path.key("threshold"))?;
            check_percent(
                fp.enforcement_percentage,
                &path.key("enforcementPercentage"),
            )?;
        }
        // JSON names the chosen child by its place in the list; code has only the one.
        let child = &self.child_policy;
        child.validate(&path.key("childPolicy").index(0).key(child.name()))
    }
}

fn check_percent(value: u32, path: &Path) -> Result<(), InvalidConfig> {
    if value > 100 {
        return Err(path.error(format!("must be a percentage (at most 100), got {value}")));
    }
    Ok(())
}

impl RetryThrottling {
    fn validate(&self, path: &Path) -> Result<(), InvalidConfig> {
        let Self {
            max_tokens,
            token_ratio,
        } = *self;
        if !(max_tokens > 0.0 && max_tokens <= 1000.0) {
            return Err(path
                .key("maxTokens")
                .error(format!("must be in (0, 1000], got {max_tokens}")));
        }
        if !(token_ratio.is_finite() && token_ratio > 0.0) {
            return Err(path
                .key("tokenRatio")
                .error(format!("must be > 0, got {token_ratio}")));
        }
        Ok(())
    }
}

/// A count with gRPC's bounds: > 1, and at most `limit` (JSON clamps larger values).
fn check_count(count: u64, limit: u32, path: &Path) -> Result<(), InvalidConfig> {
    if count < 2 {
        Err(path.error(format!("must be > 1, got {count}")))
    } else if count > u64::from(limit) {
        Err(path.error(format!(
            "must be <= {limit}, got {count} (in JSON, values above {limit} are treated as {limit})"
        )))
    } else {
        Ok(())
    }
}

/// Above 0, and within proto3's range (what JSON can say).
fn check_positive(duration: Duration, path: &Path) -> Result<(), InvalidConfig> {
    if duration.is_zero() {
        return Err(path.error("must be > 0s, got 0s"));
    }
    check_bounded(duration, path)
}

/// Within proto3's range, 10,000 years: a config built in code can hold any `Duration`,
/// and one beyond what the clock can add (`Duration::MAX`) is refused here, naming it.
fn check_bounded(duration: Duration, path: &Path) -> Result<(), InvalidConfig> {
    let max = super::json::MAX_DURATION_SECONDS;
    if duration > Duration::from_secs(max) {
        return Err(path.error(format!(
            "must be at most {max}s (proto3's limit), got {duration:?}"
        )));
    }
    Ok(())
}
