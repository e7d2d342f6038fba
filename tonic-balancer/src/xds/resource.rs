//! The four xDS resource types this client reads, decoded from Envoy's v3 protos and
//! validated into the few fields a gRPC client uses (gRFC A27, A28).
//!
//! A resource that fails validation is NACKed by the client with the message built
//! here; the message starts with the field at fault (`api_listener`, `virtual_hosts[0]`).

use super::matcher::RouteMatch;
use crate::config::{
    FailurePercentageEjectionConfig, LoadBalancingConfig, OutlierDetectionConfig, RetryPolicy,
    SuccessRateEjectionConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::{self as cds, cluster};
use envoy_types::pb::envoy::config::core::v3::{self as core, config_source};
use envoy_types::pb::envoy::config::endpoint::v3 as eds;
use envoy_types::pb::envoy::config::listener::v3 as lds;
use envoy_types::pb::envoy::config::route::v3::{self as rds, route, route_action};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::envoy::service::discovery::v3::Resource as DiscoveryResource;
use envoy_types::pb::envoy::r#type::v3::fractional_percent;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tonic::Code;

/// The type of the router HTTP filter, which gRPC requires last in the filter chain.
const ROUTER_FILTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

/// One of the four resource types, in the order a channel subscribes to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Listener,
    RouteConfig,
    Cluster,
    Endpoints,
}

impl Kind {
    pub(crate) const ALL: [Kind; 4] = [
        Kind::Listener,
        Kind::RouteConfig,
        Kind::Cluster,
        Kind::Endpoints,
    ];

    pub(crate) fn type_url(self) -> String {
        match self {
            Kind::Listener => lds::Listener::type_url(),
            Kind::RouteConfig => rds::RouteConfiguration::type_url(),
            Kind::Cluster => cds::Cluster::type_url(),
            Kind::Endpoints => eds::ClusterLoadAssignment::type_url(),
        }
    }

    pub(crate) fn from_type_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// Whether a resource of this type left out of a response is deleted (LDS and CDS
    /// responses list every subscribed resource; RDS and EDS ones need not, gRFC A27).
    pub(crate) fn absence_deletes(self) -> bool {
        matches!(self, Kind::Listener | Kind::Cluster)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A validated resource.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Resource {
    Listener(ListenerUpdate),
    RouteConfig(RouteConfig),
    Cluster(ClusterUpdate),
    Endpoints(EndpointsUpdate),
}

/// What a channel needs from an LDS resource.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ListenerUpdate {
    /// Where its routes are.
    pub(crate) routes: ListenerRoutes,
    /// The HttpConnectionManager's `common_http_protocol_options.max_stream_duration`:
    /// the deadline of calls whose route sets none (gRFC A31).
    pub(crate) max_stream_duration: Option<Duration>,
}

/// Where a listener's routes are.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ListenerRoutes {
    /// The route configuration inside the listener.
    Inline(RouteConfig),
    /// The name of an RDS resource.
    Rds(String),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RouteConfig {
    pub(crate) virtual_hosts: Vec<VirtualHost>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct VirtualHost {
    pub(crate) domains: Vec<String>,
    pub(crate) routes: Vec<Route>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Route {
    /// What a call must be for the route to take it (gRFC A28).
    pub(crate) matcher: RouteMatch,
    pub(crate) action: RouteTarget,
    /// The deadline the route gives calls (gRFC A31: `max_stream_duration`'s
    /// `grpc_timeout_header_max`, else its `max_stream_duration`); zero is none, and
    /// `None` (unset) leaves it to the listener's.
    pub(crate) max_stream_duration: Option<Duration>,
    /// The route's retry policy, else its virtual host's (gRFC A44); `None` when neither
    /// has one or it names no status code gRPC retries on.
    pub(crate) retry: Option<RetryPolicy>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum RouteTarget {
    Cluster(String),
    /// Weighted clusters: (name, weight), those of weight 0 left out; the weights add
    /// up to more than 0 and at most `u32::MAX`.
    Weighted(Vec<(String, u32)>),
    /// An action gRPC does not forward on (a redirect, a direct response, a
    /// non-forwarding action): calls that take the route fail with UNAVAILABLE.
    Other,
}

/// What a channel needs from a CDS resource.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ClusterUpdate {
    /// The EDS resource to ask for: `eds_cluster_config.service_name`, or the cluster's
    /// own name when that is empty.
    pub(crate) eds_service_name: String,
    pub(crate) lb_policy: LbPolicy,
    /// Whether calls are split among localities by weight before `lb_policy` picks
    /// within one: `lb_policy` and A52's `wrr_locality` do; a bare round_robin or
    /// least_request in `load_balancing_policy` runs over all the priority's endpoints.
    pub(crate) locality_weighted: bool,
    /// `outlier_detection` as gRFC A50 maps it; its child policy is a placeholder the
    /// resolver replaces. `None` when the cluster has none.
    pub(crate) outlier_detection: Option<OutlierDetectionConfig>,
    /// gRFC A32: `circuit_breakers.thresholds` of DEFAULT priority (the first such),
    /// `max_requests`; [`DEFAULT_MAX_REQUESTS`] when unset.
    pub(crate) max_requests: u32,
}

/// The most calls in flight to a cluster whose circuit breakers set none (gRFC A32).
pub(crate) const DEFAULT_MAX_REQUESTS: u32 = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LbPolicy {
    RoundRobin,
    /// `least_request_lb_config.choice_count`: 2 when unset, above 10 taken as 10
    /// (gRFC A48).
    LeastRequest {
        choice_count: u32,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct EndpointsUpdate {
    pub(crate) localities: Vec<LocalityEndpoints>,
    /// `policy.drop_overloads`: shares of calls to drop, by category.
    pub(crate) drops: Vec<crate::config::DropOverload>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LocalityEndpoints {
    /// `region/zone/sub_zone` (empty parts when the locality is absent).
    pub(crate) name: String,
    pub(crate) weight: u32,
    pub(crate) priority: u32,
    /// The endpoints that may get calls: HEALTHY or UNKNOWN.
    pub(crate) endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    pub(crate) weight: u32,
}

/// A resource that failed: its name when it could be read, and why.
#[derive(Debug)]
pub(crate) struct Invalid {
    pub(crate) name: Option<String>,
    pub(crate) reason: String,
}

/// Decodes and validates one resource of a response.
pub(crate) fn decode(kind: Kind, any: &Any) -> Result<(String, Resource), Invalid> {
    let fail = |name: Option<&str>, reason: String| Invalid {
        name: name.map(str::to_owned),
        reason,
    };
    // A control plane may wrap each resource in a discovery `Resource` (with a TTL or
    // cache control this client does not use): take the resource inside.
    let unwrapped;
    let any = if any.type_url == DiscoveryResource::type_url() {
        let wrapper = DiscoveryResource::decode(any.value.as_slice())
            .map_err(|e| fail(None, format!("cannot decode the Resource wrapper: {e}")))?;
        unwrapped = wrapper
            .resource
            .ok_or_else(|| fail(Some(&wrapper.name), "Resource wrapper: no resource".into()))?;
        &unwrapped
    } else {
        any
    };
    if any.type_url != kind.type_url() {
        return Err(fail(
            None,
            format!(
                "a resource of type {} in a response of type {}",
                any.type_url,
                kind.type_url()
            ),
        ));
    }
    let undecodable = |e: prost::DecodeError| fail(None, format!("cannot decode: {e}"));
    match kind {
        Kind::Listener => {
            let l = lds::Listener::decode(any.value.as_slice()).map_err(undecodable)?;
            let update = listener(&l).map_err(|r| fail(Some(&l.name), r))?;
            Ok((l.name, Resource::Listener(update)))
        }
        Kind::RouteConfig => {
            let r = rds::RouteConfiguration::decode(any.value.as_slice()).map_err(undecodable)?;
            let update = route_config(&r).map_err(|e| fail(Some(&r.name), e))?;
            Ok((r.name, Resource::RouteConfig(update)))
        }
        Kind::Cluster => {
            let c = cds::Cluster::decode(any.value.as_slice()).map_err(undecodable)?;
            let update = cluster(&c).map_err(|e| fail(Some(&c.name), e))?;
            Ok((c.name, Resource::Cluster(update)))
        }
        Kind::Endpoints => {
            let e =
                eds::ClusterLoadAssignment::decode(any.value.as_slice()).map_err(undecodable)?;
            let update = endpoints(&e).map_err(|r| fail(Some(&e.cluster_name), r))?;
            Ok((e.cluster_name, Resource::Endpoints(update)))
        }
    }
}

fn listener(l: &lds::Listener) -> Result<ListenerUpdate, String> {
    let any = l
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref())
        .ok_or("api_listener: missing (a gRPC client needs an API listener)")?;
    if any.type_url != HttpConnectionManager::type_url() {
        return Err(format!(
            "api_listener: {} is not an HttpConnectionManager",
            any.type_url
        ));
    }
    let hcm = HttpConnectionManager::decode(any.value.as_slice())
        .map_err(|e| format!("api_listener: cannot decode the HttpConnectionManager: {e}"))?;
    // gRFC A39: the router filter must be present and last.
    match hcm.http_filters.last() {
        None => {
            return Err("api_listener.http_filters: empty (the router filter is required)".into());
        }
        Some(last) => {
            let router = matches!(
                &last.config_type,
                Some(envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType::TypedConfig(any))
                    if any.type_url == ROUTER_FILTER
            );
            if !router {
                return Err(format!(
                    "api_listener.http_filters: the last filter ({:?}) is not the router",
                    last.name
                ));
            }
        }
    }
    let max_stream_duration = hcm
        .common_http_protocol_options
        .as_ref()
        .and_then(|o| o.max_stream_duration.as_ref())
        .map(|d| {
            duration(d, "max_stream_duration")
                .map_err(|e| format!("api_listener.common_http_protocol_options.{e}"))
        })
        .transpose()?;
    let routes = match hcm.route_specifier {
        Some(RouteSpecifier::RouteConfig(rc)) => route_config(&rc)
            .map(ListenerRoutes::Inline)
            .map_err(|e| format!("api_listener.route_config.{e}")),
        Some(RouteSpecifier::Rds(rds)) => {
            ads_source(rds.config_source.as_ref())
                .map_err(|e| format!("api_listener.rds.config_source: {e}"))?;
            if rds.route_config_name.is_empty() {
                return Err("api_listener.rds.route_config_name: empty".into());
            }
            Ok(ListenerRoutes::Rds(rds.route_config_name))
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            Err("api_listener: scoped_routes is not supported".into())
        }
        None => Err("api_listener: neither route_config nor rds is set".into()),
    }?;
    Ok(ListenerUpdate {
        routes,
        max_stream_duration,
    })
}

/// gRPC clients take resources from the ADS stream only: `ads` or `self`.
fn ads_source(source: Option<&core::ConfigSource>) -> Result<(), String> {
    match source.and_then(|s| s.config_source_specifier.as_ref()) {
        Some(config_source::ConfigSourceSpecifier::Ads(_))
        | Some(config_source::ConfigSourceSpecifier::Self_(_)) => Ok(()),
        _ => Err("must be ads or self".into()),
    }
}

fn route_config(rc: &rds::RouteConfiguration) -> Result<RouteConfig, String> {
    let mut virtual_hosts = Vec::with_capacity(rc.virtual_hosts.len());
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        if vh.domains.is_empty() {
            return Err(format!("virtual_hosts[{i}].domains: empty"));
        }
        let vh_retry = match &vh.retry_policy {
            Some(rp) => {
                retry_policy(rp).map_err(|e| format!("virtual_hosts[{i}].retry_policy.{e}"))?
            }
            None => None,
        };
        let mut routes = Vec::with_capacity(vh.routes.len());
        for (j, r) in vh.routes.iter().enumerate() {
            let at = format!("virtual_hosts[{i}].routes[{j}]");
            let m = r.r#match.as_ref().ok_or(format!("{at}.match: missing"))?;
            // gRFC A28: a route with query parameters never matches a gRPC call, and one
            // that takes its cluster from a header is ignored; so is one whose cluster
            // specifier plugin is optional (gRFC A51: this client runs none). They are
            // left out before anything else of theirs is read, as in gRPC.
            let ignored = match &r.action {
                Some(route::Action::Route(a)) => match &a.cluster_specifier {
                    Some(route_action::ClusterSpecifier::ClusterHeader(_)) => true,
                    Some(route_action::ClusterSpecifier::ClusterSpecifierPlugin(name)) => {
                        let optional = rc
                            .cluster_specifier_plugins
                            .iter()
                            .filter(|p| p.extension.as_ref().is_some_and(|e| &e.name == name))
                            .map(|p| p.is_optional)
                            .next();
                        match optional {
                            Some(true) => true,
                            Some(false) => {
                                return Err(format!(
                                    "{at}.route.cluster_specifier_plugin: {name:?} is not \
                                     supported and not optional"
                                ));
                            }
                            None => {
                                return Err(format!(
                                    "{at}.route.cluster_specifier_plugin: {name:?} is not \
                                     among the route configuration's plugins"
                                ));
                            }
                        }
                    }
                    Some(_) => false,
                    None => return Err(format!("{at}.route.cluster_specifier: missing")),
                },
                _ => false,
            };
            if !m.query_parameters.is_empty() || ignored {
                continue;
            }
            let matcher = super::matcher::route_match(m).map_err(|e| format!("{at}.match.{e}"))?;
            let (max_stream_duration, route_retry) = match &r.action {
                Some(route::Action::Route(a)) => (
                    route_timeout(a.max_stream_duration.as_ref())
                        .map_err(|e| format!("{at}.route.max_stream_duration.{e}"))?,
                    a.retry_policy
                        .as_ref()
                        .map(|rp| {
                            retry_policy(rp).map_err(|e| format!("{at}.route.retry_policy.{e}"))
                        })
                        .transpose()?,
                ),
                _ => (None, None),
            };
            // A44: the route's policy, else the virtual host's.
            let retry = match route_retry {
                Some(policy) => policy,
                None => vh_retry.clone(),
            };
            let action = match &r.action {
                Some(route::Action::Route(a)) => match &a.cluster_specifier {
                    Some(route_action::ClusterSpecifier::Cluster(c)) if !c.is_empty() => {
                        RouteTarget::Cluster(c.clone())
                    }
                    Some(route_action::ClusterSpecifier::Cluster(_)) => {
                        return Err(format!("{at}.route.cluster: empty"));
                    }
                    Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
                        RouteTarget::Weighted(
                            weighted_clusters(w)
                                .map_err(|e| format!("{at}.route.weighted_clusters.{e}"))?,
                        )
                    }
                    _ => continue,
                },
                _ => RouteTarget::Other,
            };
            routes.push(Route {
                matcher,
                action,
                max_stream_duration,
                retry,
            });
        }
        virtual_hosts.push(VirtualHost {
            domains: vh.domains.clone(),
            routes,
        });
    }
    Ok(RouteConfig { virtual_hosts })
}

/// The clusters of a `weighted_clusters` action with their weights, those of weight 0
/// left out (gRFC A28: the weights must add up to more than 0, and at most `u32::MAX`).
fn weighted_clusters(w: &rds::WeightedCluster) -> Result<Vec<(String, u32)>, String> {
    let mut clusters = Vec::with_capacity(w.clusters.len());
    let mut total = 0u64;
    for (i, c) in w.clusters.iter().enumerate() {
        if c.name.is_empty() {
            return Err(format!("clusters[{i}].name: empty"));
        }
        let weight = c.weight.as_ref().map_or(0, |w| w.value);
        total += u64::from(weight);
        if weight > 0 {
            clusters.push((c.name.clone(), weight));
        }
    }
    if total == 0 {
        return Err("clusters: the weights add up to 0".into());
    }
    if total > u64::from(u32::MAX) {
        return Err(format!(
            "clusters: the weights add up to {total}, above 2^32 - 1"
        ));
    }
    Ok(clusters)
}

/// A proto3 Duration as a `Duration`; `field` names it in the error.
fn duration(
    d: &envoy_types::pb::google::protobuf::Duration,
    field: &str,
) -> Result<Duration, String> {
    // proto3's range: 10 000 years, nanos within a second, no sign.
    if d.seconds < 0 || d.seconds > 315_576_000_000 || !(0..1_000_000_000).contains(&d.nanos) {
        return Err(format!(
            "{field}: not a valid duration ({}s {}ns)",
            d.seconds, d.nanos
        ));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// gRFC A31: the deadline of a route's calls is `grpc_timeout_header_max` if set, else
/// `max_stream_duration`; neither is `None`.
fn route_timeout(
    msd: Option<&route_action::MaxStreamDuration>,
) -> Result<Option<Duration>, String> {
    let Some(msd) = msd else {
        return Ok(None);
    };
    let chosen = match (&msd.grpc_timeout_header_max, &msd.max_stream_duration) {
        (Some(d), _) => duration(d, "grpc_timeout_header_max")?,
        (None, Some(d)) => duration(d, "max_stream_duration")?,
        (None, None) => return Ok(None),
    };
    Ok(Some(chosen))
}

/// gRFC A44's default backoff: a base of 25 ms, and a maximum of 10 × the base.
const DEFAULT_RETRY_BASE_INTERVAL: Duration = Duration::from_millis(25);

/// gRFC A44: an Envoy retry policy as an A6 one. `retry_on`'s gRPC conditions become the
/// retryable codes (others are ignored; none left means no retries), `num_retries + 1`
/// the attempts (at most 5, A6's limit), `retry_back_off` the backoff, multiplier 2.
fn retry_policy(rp: &rds::RetryPolicy) -> Result<Option<RetryPolicy>, String> {
    let mut codes = Vec::new();
    for condition in rp.retry_on.split(',') {
        let code = match condition.trim().to_ascii_lowercase().as_str() {
            "cancelled" => Code::Cancelled,
            "deadline-exceeded" => Code::DeadlineExceeded,
            "internal" => Code::Internal,
            "resource-exhausted" => Code::ResourceExhausted,
            "unavailable" => Code::Unavailable,
            _ => continue,
        };
        if !codes.contains(&code) {
            codes.push(code);
        }
    }
    let num_retries = match &rp.num_retries {
        Some(n) if n.value == 0 => return Err("num_retries: must be at least 1, got 0".into()),
        Some(n) => n.value,
        None => 1,
    };
    let (base, max) = match &rp.retry_back_off {
        None => (
            DEFAULT_RETRY_BASE_INTERVAL,
            DEFAULT_RETRY_BASE_INTERVAL * 10,
        ),
        Some(b) => {
            let base = match &b.base_interval {
                Some(d) => duration(d, "retry_back_off.base_interval")?,
                None => return Err("retry_back_off.base_interval: missing".into()),
            };
            if base.is_zero() {
                return Err("retry_back_off.base_interval: must be > 0".into());
            }
            let max = match &b.max_interval {
                Some(d) => duration(d, "retry_back_off.max_interval")?,
                None => base.saturating_mul(10),
            };
            if max < base {
                return Err(format!(
                    "retry_back_off.max_interval: {max:?} is less than base_interval ({base:?})"
                ));
            }
            (base, max)
        }
    };
    if codes.is_empty() {
        return Ok(None);
    }
    let attempts = num_retries
        .saturating_add(1)
        .min(crate::defaults::MAX_ATTEMPTS);
    Ok(Some(RetryPolicy::new(attempts, base, max, 2.0, codes)))
}

fn cluster(c: &cds::Cluster) -> Result<ClusterUpdate, String> {
    match c.cluster_discovery_type {
        Some(cluster::ClusterDiscoveryType::Type(t)) if t == cluster::DiscoveryType::Eds as i32 => {
        }
        Some(cluster::ClusterDiscoveryType::Type(t)) => {
            let name = cluster::DiscoveryType::try_from(t)
                .map(|t| t.as_str_name().to_owned())
                .unwrap_or_else(|_| t.to_string());
            return Err(format!("type: {name} is not supported (EDS only)"));
        }
        Some(cluster::ClusterDiscoveryType::ClusterType(_)) => {
            return Err(
                "cluster_type: custom cluster types (aggregate, ...) are not supported".into(),
            );
        }
        None => return Err("type: missing (EDS is required)".into()),
    }
    let eds = c
        .eds_cluster_config
        .as_ref()
        .ok_or("eds_cluster_config: missing")?;
    ads_source(eds.eds_config.as_ref())
        .map_err(|e| format!("eds_cluster_config.eds_config: {e}"))?;
    // gRFC A52: `load_balancing_policy`, when set, is the policy, and `lb_policy` is
    // not read; `lb_policy` alone weighs localities (as `wrr_locality` would).
    let (lb_policy, locality_weighted) = match &c.load_balancing_policy {
        Some(policy) => {
            load_balancing_policy(policy, 0).map_err(|e| format!("load_balancing_policy.{e}"))?
        }
        None => {
            let policy = match cluster::LbPolicy::try_from(c.lb_policy) {
                Ok(cluster::LbPolicy::RoundRobin) => LbPolicy::RoundRobin,
                Ok(cluster::LbPolicy::LeastRequest) => {
                    let config = match &c.lb_config {
                        Some(cluster::LbConfig::LeastRequestLbConfig(config)) => Some(config),
                        _ => None,
                    };
                    least_request(config.and_then(|l| l.choice_count.as_ref()))
                        .map_err(|e| format!("least_request_lb_config.{e}"))?
                }
                Ok(other) => {
                    return Err(format!(
                        "lb_policy: {} is not supported (ROUND_ROBIN or LEAST_REQUEST)",
                        other.as_str_name()
                    ));
                }
                Err(_) => return Err(format!("lb_policy: unknown value {}", c.lb_policy)),
            };
            (policy, true)
        }
    };
    let eds_service_name = if eds.service_name.is_empty() {
        c.name.clone()
    } else {
        eds.service_name.clone()
    };
    let outlier_detection = c
        .outlier_detection
        .as_ref()
        .map(|od| outlier_detection(od).map_err(|e| format!("outlier_detection.{e}")))
        .transpose()?;
    let max_requests = c
        .circuit_breakers
        .as_ref()
        .and_then(|breakers| {
            breakers
                .thresholds
                .iter()
                .find(|t| t.priority == core::RoutingPriority::Default as i32)
        })
        .and_then(|threshold| threshold.max_requests.as_ref())
        .map_or(DEFAULT_MAX_REQUESTS, |max| max.value);
    Ok(ClusterUpdate {
        eds_service_name,
        lb_policy,
        locality_weighted,
        outlier_detection,
        max_requests,
    })
}

/// gRFC A48: least request with `choice_count` (2 when unset, above 10 taken as 10).
fn least_request(
    choice_count: Option<&envoy_types::pb::google::protobuf::UInt32Value>,
) -> Result<LbPolicy, String> {
    let choice_count = choice_count.map_or(2, |c| c.value);
    if choice_count < 2 {
        return Err(format!(
            "choice_count: must be at least 2, got {choice_count}"
        ));
    }
    Ok(LbPolicy::LeastRequest {
        choice_count: choice_count.min(crate::defaults::MAX_CHOICE_COUNT as u32),
    })
}

/// The type URLs of the `load_balancing_policy` extensions this client runs.
const ROUND_ROBIN_POLICY: &str =
    "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin";
const LEAST_REQUEST_POLICY: &str =
    "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest";
const WRR_LOCALITY_POLICY: &str =
    "type.googleapis.com/envoy.extensions.load_balancing_policies.wrr_locality.v3.WrrLocality";

/// gRFC A52: the first policy of the list this client supports (round_robin,
/// least_request, or wrr_locality over one of them), and whether it weighs localities;
/// an error when none is supported or a supported one is invalid. `depth` bounds the
/// nesting of wrr_locality.
fn load_balancing_policy(
    policy: &cds::LoadBalancingPolicy,
    depth: usize,
) -> Result<(LbPolicy, bool), String> {
    use envoy_types::pb::envoy::extensions::load_balancing_policies::{
        least_request::v3::LeastRequest, wrr_locality::v3::WrrLocality,
    };
    let mut seen = Vec::new();
    for (i, p) in policy.policies.iter().enumerate() {
        let Some(any) = p
            .typed_extension_config
            .as_ref()
            .and_then(|t| t.typed_config.as_ref())
        else {
            return Err(format!("policies[{i}].typed_extension_config: missing"));
        };
        let at = |e: String| format!("policies[{i}].typed_extension_config.typed_config.{e}");
        match any.type_url.as_str() {
            ROUND_ROBIN_POLICY => return Ok((LbPolicy::RoundRobin, false)),
            LEAST_REQUEST_POLICY => {
                let config = LeastRequest::decode(&any.value[..])
                    .map_err(|e| at(format!("value: not a LeastRequest: {e}")))?;
                return Ok((
                    least_request(config.choice_count.as_ref()).map_err(at)?,
                    false,
                ));
            }
            WRR_LOCALITY_POLICY if depth == 0 => {
                let config = WrrLocality::decode(&any.value[..])
                    .map_err(|e| at(format!("value: not a WrrLocality: {e}")))?;
                let child = config
                    .endpoint_picking_policy
                    .as_ref()
                    .ok_or_else(|| at("endpoint_picking_policy: missing".into()))?;
                let (child, _) = load_balancing_policy(child, depth + 1)
                    .map_err(|e| at(format!("endpoint_picking_policy.{e}")))?;
                return Ok((child, true));
            }
            other => seen.push(other.rsplit('.').next().unwrap_or(other).to_owned()),
        }
    }
    Err(format!(
        "policies: none is supported (round_robin, least_request, wrr_locality over one \
         of them); got [{}]",
        seen.join(", ")
    ))
}

/// gRFC A50: a cluster's outlier detection as `outlier_detection_experimental`. Unset
/// fields take A50's defaults; success-rate ejection is on unless
/// `enforcing_success_rate` is 0 (default 100), failure-percentage ejection only when
/// `enforcing_failure_percentage` is above 0 (default 0). The consecutive-failure and
/// local-origin fields are Envoy's only and are ignored.
fn outlier_detection(od: &cds::OutlierDetection) -> Result<OutlierDetectionConfig, String> {
    let u32_or = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>, default: u32| {
        v.as_ref().map_or(default, |v| v.value)
    };
    let percent =
        |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>, default: u32, field: &str| {
            let value = u32_or(v, default);
            if value > 100 {
                Err(format!(
                    "{field}: must be a percentage (at most 100), got {value}"
                ))
            } else {
                Ok(value)
            }
        };
    let duration_or =
        |d: &Option<envoy_types::pb::google::protobuf::Duration>,
         default: Duration,
         field: &str| { d.as_ref().map_or(Ok(default), |d| duration(d, field)) };
    let mut config = OutlierDetectionConfig::new(LoadBalancingConfig::RoundRobin);
    config.interval = duration_or(
        &od.interval,
        crate::defaults::DEFAULT_EJECTION_INTERVAL,
        "interval",
    )?;
    config.base_ejection_time = duration_or(
        &od.base_ejection_time,
        crate::defaults::DEFAULT_BASE_EJECTION_TIME,
        "base_ejection_time",
    )?;
    config.max_ejection_time = duration_or(
        &od.max_ejection_time,
        crate::defaults::DEFAULT_MAX_EJECTION_TIME.max(config.base_ejection_time),
        "max_ejection_time",
    )?;
    // Zero would make the channel's timers spin; A50's JSON forbids it too.
    if config.interval.is_zero() {
        return Err("interval: must be > 0".into());
    }
    if config.base_ejection_time.is_zero() {
        return Err("base_ejection_time: must be > 0".into());
    }
    config.max_ejection_percent = percent(
        &od.max_ejection_percent,
        crate::defaults::DEFAULT_MAX_EJECTION_PERCENT,
        "max_ejection_percent",
    )?;
    let enforcing_success_rate =
        percent(&od.enforcing_success_rate, 100, "enforcing_success_rate")?;
    if enforcing_success_rate > 0 {
        let defaults = SuccessRateEjectionConfig::default();
        let sr = SuccessRateEjectionConfig {
            enforcement_percentage: enforcing_success_rate,
            stdev_factor: u32_or(&od.success_rate_stdev_factor, defaults.stdev_factor),
            minimum_hosts: u32_or(&od.success_rate_minimum_hosts, defaults.minimum_hosts),
            request_volume: u32_or(&od.success_rate_request_volume, defaults.request_volume),
        };
        config.success_rate_ejection = Some(sr);
    }
    let enforcing_failure_percentage = percent(
        &od.enforcing_failure_percentage,
        0,
        "enforcing_failure_percentage",
    )?;
    let defaults = FailurePercentageEjectionConfig::default();
    // Checked even when failure-percentage ejection is off, as gRPC does.
    let threshold = percent(
        &od.failure_percentage_threshold,
        defaults.threshold,
        "failure_percentage_threshold",
    )?;
    if enforcing_failure_percentage > 0 {
        let fp = FailurePercentageEjectionConfig {
            enforcement_percentage: enforcing_failure_percentage,
            threshold,
            minimum_hosts: u32_or(&od.failure_percentage_minimum_hosts, defaults.minimum_hosts),
            request_volume: u32_or(
                &od.failure_percentage_request_volume,
                defaults.request_volume,
            ),
        };
        config.failure_percentage_ejection = Some(fp);
    }
    Ok(config)
}

fn endpoints(cla: &eds::ClusterLoadAssignment) -> Result<EndpointsUpdate, String> {
    let mut localities = Vec::with_capacity(cla.endpoints.len());
    // Where each address was first seen: an address listed twice is NACKed (as gRPC),
    // whatever its health and its locality's weight.
    let mut seen: std::collections::HashMap<SocketAddr, (usize, usize)> =
        std::collections::HashMap::new();
    // The sum of the locality weights of each priority, which must fit in 32 bits.
    let mut weight_sums: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
    for (i, loc) in cla.endpoints.iter().enumerate() {
        let Some(locality) = loc.locality.as_ref() else {
            return Err(format!("endpoints[{i}].locality: missing"));
        };
        let weight = loc.load_balancing_weight.as_ref().map_or(0, |w| w.value);
        // gRFC A27: a locality of weight 0 (or none) gets no traffic; as in gRPC, its
        // endpoints are not even read.
        if weight == 0 {
            continue;
        }
        let sum = weight_sums.entry(loc.priority).or_default();
        *sum += u64::from(weight);
        if *sum > u64::from(u32::MAX) {
            return Err(format!(
                "endpoints[{i}].load_balancing_weight: the localities of priority {} weigh \
                 more than 2^32 - 1 together",
                loc.priority
            ));
        }
        let name = format!(
            "{}/{}/{}",
            locality.region, locality.zone, locality.sub_zone
        );
        // As grpc-go: a locality appears once per priority (its weight would be ambiguous).
        if let Some(k) = cla.endpoints[..i].iter().position(|other| {
            other.priority == loc.priority
                && other.locality == loc.locality
                && other
                    .load_balancing_weight
                    .as_ref()
                    .is_some_and(|w| w.value > 0)
        }) {
            return Err(format!(
                "endpoints[{i}].locality: {name:?} is also endpoints[{k}]'s, at the same priority {}",
                loc.priority
            ));
        }
        let mut endpoints = Vec::with_capacity(loc.lb_endpoints.len());
        let mut endpoint_weights = 0u64;
        for (j, lb) in loc.lb_endpoints.iter().enumerate() {
            let at = format!("endpoints[{i}].lb_endpoints[{j}]");
            let healthy = matches!(
                core::HealthStatus::try_from(lb.health_status),
                Ok(core::HealthStatus::Healthy | core::HealthStatus::Unknown)
            );
            let Some(eds::lb_endpoint::HostIdentifier::Endpoint(ep)) = &lb.host_identifier else {
                return Err(format!("{at}.endpoint: missing"));
            };
            let Some(core::address::Address::SocketAddress(sa)) =
                ep.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                return Err(format!("{at}.endpoint.address: not a socket address"));
            };
            let ip: IpAddr = sa.address.parse().map_err(|_| {
                format!(
                    "{at}.endpoint.address: {:?} is not an IP address",
                    sa.address
                )
            })?;
            let port = match sa.port_specifier {
                Some(core::socket_address::PortSpecifier::PortValue(p)) if p > 0 && p <= 65535 => {
                    p as u16
                }
                _ => {
                    return Err(format!(
                        "{at}.endpoint.address.port_value: not a port (1..=65535)"
                    ));
                }
            };
            let ep_weight = match lb.load_balancing_weight.as_ref().map(|w| w.value) {
                Some(0) => return Err(format!("{at}.load_balancing_weight: must be > 0")),
                Some(w) => w,
                None => 1,
            };
            endpoint_weights += u64::from(ep_weight);
            if endpoint_weights > u64::from(u32::MAX) {
                return Err(format!(
                    "{at}.load_balancing_weight: the endpoints of endpoints[{i}] weigh more \
                     than 2^32 - 1 together"
                ));
            }
            let addr = SocketAddr::new(ip, port);
            if let Some((k, l)) = seen.insert(addr, (i, j)) {
                return Err(format!(
                    "{at}.endpoint.address: {addr} is also endpoints[{k}].lb_endpoints[{l}]'s"
                ));
            }
            if healthy {
                endpoints.push(Endpoint {
                    addr,
                    weight: ep_weight,
                });
            }
        }
        localities.push(LocalityEndpoints {
            name,
            weight,
            priority: loc.priority,
            endpoints,
        });
    }
    // gRFC A27: priorities must run 0..N with no gap.
    let mut priorities: Vec<u32> = localities.iter().map(|l| l.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    if let Some((i, p)) = priorities
        .iter()
        .enumerate()
        .find(|(i, p)| **p as usize != *i)
    {
        return Err(format!(
            "endpoints: priorities must run from 0 with no gap (priority {p} found where {i} was expected)"
        ));
    }
    let mut drops = Vec::new();
    for (i, d) in cla
        .policy
        .iter()
        .flat_map(|p| p.drop_overloads.iter())
        .enumerate()
    {
        let per_million = match &d.drop_percentage {
            None => 0,
            Some(f) => match fractional_percent::DenominatorType::try_from(f.denominator) {
                Ok(fractional_percent::DenominatorType::Hundred) => {
                    f.numerator.saturating_mul(10_000)
                }
                Ok(fractional_percent::DenominatorType::TenThousand) => {
                    f.numerator.saturating_mul(100)
                }
                Ok(fractional_percent::DenominatorType::Million) => f.numerator,
                Err(_) => {
                    return Err(format!(
                        "policy.drop_overloads[{i}].drop_percentage.denominator: unknown value {}",
                        f.denominator
                    ));
                }
            },
        };
        drops.push(crate::config::DropOverload::new(&d.category, per_million));
    }
    Ok(EndpointsUpdate { localities, drops })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::route::v3::route_match;
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use envoy_types::pb::google::protobuf::UInt32Value;

    fn any<M: Message + Name>(m: &M) -> Any {
        Any {
            type_url: M::type_url(),
            value: m.encode_to_vec(),
        }
    }

    fn ads() -> core::ConfigSource {
        core::ConfigSource {
            config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                core::AggregatedConfigSource {},
            )),
            ..Default::default()
        }
    }

    fn listener_with(manager: &hcm::HttpConnectionManager) -> Any {
        any(&lds::Listener {
            name: "l".into(),
            api_listener: Some(lds::ApiListener {
                api_listener: Some(any(manager)),
            }),
            ..Default::default()
        })
    }

    fn router() -> hcm::HttpFilter {
        hcm::HttpFilter {
            name: "router".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
                &Router::default(),
            ))),
            ..Default::default()
        }
    }

    fn reason(kind: Kind, any: &Any) -> String {
        let invalid = decode(kind, any).expect_err("must be invalid");
        invalid.reason
    }

    #[test]
    fn a_listener_names_its_rds_resource() {
        let manager = hcm::HttpConnectionManager {
            route_specifier: Some(RouteSpecifier::Rds(hcm::Rds {
                config_source: Some(ads()),
                route_config_name: "routes".into(),
            })),
            http_filters: vec![router()],
            ..Default::default()
        };
        let (name, res) = decode(Kind::Listener, &listener_with(&manager)).unwrap();
        assert_eq!(name, "l");
        assert_eq!(
            res,
            Resource::Listener(ListenerUpdate {
                routes: ListenerRoutes::Rds("routes".into()),
                max_stream_duration: None,
            })
        );
    }

    #[test]
    fn listener_errors_name_the_field() {
        let mut manager = hcm::HttpConnectionManager {
            route_specifier: Some(RouteSpecifier::Rds(hcm::Rds {
                config_source: Some(ads()),
                route_config_name: "routes".into(),
            })),
            ..Default::default()
        };
        assert!(
            reason(Kind::Listener, &listener_with(&manager))
                .starts_with("api_listener.http_filters: empty")
        );
        manager.http_filters = vec![hcm::HttpFilter {
            name: "fault".into(),
            ..Default::default()
        }];
        assert!(reason(Kind::Listener, &listener_with(&manager)).contains("is not the router"));
        manager.http_filters = vec![router()];
        manager.route_specifier = Some(RouteSpecifier::Rds(hcm::Rds {
            config_source: None,
            route_config_name: "routes".into(),
        }));
        assert_eq!(
            reason(Kind::Listener, &listener_with(&manager)),
            "api_listener.rds.config_source: must be ads or self"
        );
        manager.route_specifier = None;
        assert!(
            reason(Kind::Listener, &listener_with(&manager))
                .contains("neither route_config nor rds")
        );
        let bare = any(&lds::Listener {
            name: "l".into(),
            ..Default::default()
        });
        let invalid = decode(Kind::Listener, &bare).unwrap_err();
        assert_eq!(invalid.name.as_deref(), Some("l"));
        assert!(invalid.reason.starts_with("api_listener: missing"));
        // A resource of another type in the response, and bytes that do not decode.
        let wrong = any(&cds::Cluster::default());
        assert!(decode(Kind::Listener, &wrong).unwrap_err().name.is_none());
        let garbage = Any {
            type_url: Kind::Listener.type_url(),
            value: vec![0xff, 0xff, 0xff],
        };
        assert!(reason(Kind::Listener, &garbage).starts_with("cannot decode"));
    }

    #[test]
    fn a_resource_in_a_discovery_resource_wrapper_is_unwrapped() {
        let manager = hcm::HttpConnectionManager {
            route_specifier: Some(RouteSpecifier::Rds(hcm::Rds {
                config_source: Some(ads()),
                route_config_name: "routes".into(),
            })),
            http_filters: vec![router()],
            ..Default::default()
        };
        let wrapped = any(&DiscoveryResource {
            name: "l".into(),
            resource: Some(listener_with(&manager)),
            ..Default::default()
        });
        let (name, res) = decode(Kind::Listener, &wrapped).unwrap();
        assert_eq!(name, "l");
        assert_eq!(
            res,
            Resource::Listener(ListenerUpdate {
                routes: ListenerRoutes::Rds("routes".into()),
                max_stream_duration: None,
            })
        );
        let empty = any(&DiscoveryResource {
            name: "l".into(),
            ..Default::default()
        });
        let invalid = decode(Kind::Listener, &empty).unwrap_err();
        assert_eq!(invalid.name.as_deref(), Some("l"));
        assert_eq!(invalid.reason, "Resource wrapper: no resource");
    }

    #[test]
    fn clusters_must_be_eds_over_ads_with_a_supported_policy() {
        let mut c = cds::Cluster {
            name: "c".into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(cluster::EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: String::new(),
            }),
            lb_policy: cluster::LbPolicy::LeastRequest as i32,
            ..Default::default()
        };
        let (_, res) = decode(Kind::Cluster, &any(&c)).unwrap();
        // No service_name: the EDS resource has the cluster's name.
        assert_eq!(
            res,
            Resource::Cluster(ClusterUpdate {
                eds_service_name: "c".into(),
                lb_policy: LbPolicy::LeastRequest { choice_count: 2 },
                locality_weighted: true,
                outlier_detection: None,
                max_requests: DEFAULT_MAX_REQUESTS,
            })
        );
        c.lb_policy = cluster::LbPolicy::Maglev as i32;
        assert!(reason(Kind::Cluster, &any(&c)).starts_with("lb_policy: MAGLEV is not supported"));
        c.lb_policy = 0;
        c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::LogicalDns as i32,
        ));
        assert!(reason(Kind::Cluster, &any(&c)).starts_with("type: LOGICAL_DNS is not supported"));
        c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        ));
        c.eds_cluster_config = None;
        assert_eq!(
            reason(Kind::Cluster, &any(&c)),
            "eds_cluster_config: missing"
        );
    }

    fn lb_endpoint(address: &str, port: u32, health: core::HealthStatus) -> eds::LbEndpoint {
        eds::LbEndpoint {
            health_status: health as i32,
            host_identifier: Some(eds::lb_endpoint::HostIdentifier::Endpoint(eds::Endpoint {
                address: Some(core::Address {
                    address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                        address: address.into(),
                        port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn locality(
        priority: u32,
        weight: Option<u32>,
        lb: Vec<eds::LbEndpoint>,
    ) -> eds::LocalityLbEndpoints {
        eds::LocalityLbEndpoints {
            locality: Some(core::Locality {
                region: "r".into(),
                zone: "z".into(),
                ..Default::default()
            }),
            priority,
            load_balancing_weight: weight.map(|value| UInt32Value { value }),
            lb_endpoints: lb,
            ..Default::default()
        }
    }

    #[test]
    fn endpoints_keep_healthy_and_unknown_only_and_drop_weightless_localities() {
        use self::core::HealthStatus as H;
        let cla = eds::ClusterLoadAssignment {
            cluster_name: "e".into(),
            endpoints: vec![
                locality(
                    0,
                    Some(3),
                    vec![
                        lb_endpoint("10.0.0.1", 80, H::Healthy),
                        lb_endpoint("10.0.0.2", 80, H::Unhealthy),
                        lb_endpoint("::1", 81, H::Unknown),
                        lb_endpoint("10.0.0.4", 80, H::Draining),
                        lb_endpoint("10.0.0.5", 80, H::Degraded),
                    ],
                ),
                locality(1, Some(1), vec![lb_endpoint("10.0.1.1", 80, H::Healthy)]),
                locality(0, None, vec![lb_endpoint("10.0.2.1", 80, H::Healthy)]),
            ],
            ..Default::default()
        };
        let (name, res) = decode(Kind::Endpoints, &any(&cla)).unwrap();
        assert_eq!(name, "e");
        let Resource::Endpoints(update) = res else {
            panic!("{res:?}")
        };
        let got: Vec<(u32, u32, Vec<String>)> = update
            .localities
            .iter()
            .map(|l| {
                (
                    l.priority,
                    l.weight,
                    l.endpoints.iter().map(|e| e.addr.to_string()).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    0,
                    3,
                    vec!["10.0.0.1:80".to_string(), "[::1]:81".to_string()]
                ),
                (1, 1, vec!["10.0.1.1:80".to_string()]),
            ]
        );
    }

    #[test]
    fn endpoint_errors_name_the_field() {
        let with = |lb: eds::LbEndpoint, priority: u32| {
            any(&eds::ClusterLoadAssignment {
                cluster_name: "e".into(),
                endpoints: vec![locality(priority, Some(1), vec![lb])],
                ..Default::default()
            })
        };
        let ok = core::HealthStatus::Healthy;
        assert_eq!(
            reason(
                Kind::Endpoints,
                &with(lb_endpoint("db.internal", 80, ok), 0)
            ),
            "endpoints[0].lb_endpoints[0].endpoint.address: \"db.internal\" is not an IP address"
        );
        assert!(
            reason(
                Kind::Endpoints,
                &with(lb_endpoint("10.0.0.1", 70000, ok), 0)
            )
            .contains("port_value")
        );
        assert!(
            reason(Kind::Endpoints, &with(lb_endpoint("10.0.0.1", 0, ok), 0))
                .contains("port_value")
        );
        assert!(
            reason(Kind::Endpoints, &with(lb_endpoint("10.0.0.1", 80, ok), 1))
                .contains("priorities must run from 0")
        );
        // One locality twice at one priority: which weight would it have?
        let twice = any(&eds::ClusterLoadAssignment {
            cluster_name: "e".into(),
            endpoints: vec![
                locality(0, Some(1), vec![lb_endpoint("10.0.0.1", 80, ok)]),
                locality(0, Some(2), vec![lb_endpoint("10.0.0.2", 80, ok)]),
            ],
            ..Default::default()
        });
        assert_eq!(
            reason(Kind::Endpoints, &twice),
            "endpoints[1].locality: \"r/z/\" is also endpoints[0]'s, at the same priority 0"
        );
        let cla = |localities: Vec<eds::LocalityLbEndpoints>| {
            any(&eds::ClusterLoadAssignment {
                cluster_name: "e".into(),
                endpoints: localities,
                ..Default::default()
            })
        };
        // A locality must say where it is.
        let mut nowhere = locality(0, Some(1), vec![lb_endpoint("10.0.0.1", 80, ok)]);
        nowhere.locality = None;
        assert_eq!(
            reason(Kind::Endpoints, &cla(vec![nowhere])),
            "endpoints[0].locality: missing"
        );
        // An address listed twice, even once unhealthy and in another locality.
        let mut other = locality(1, Some(1), vec![lb_endpoint("10.0.0.1", 80, ok)]);
        other.locality.as_mut().unwrap().zone = "y".into();
        let first = locality(
            0,
            Some(1),
            vec![lb_endpoint("10.0.0.1", 80, core::HealthStatus::Unhealthy)],
        );
        assert_eq!(
            reason(Kind::Endpoints, &cla(vec![first, other])),
            "endpoints[1].lb_endpoints[0].endpoint.address: 10.0.0.1:80 is also \
             endpoints[0].lb_endpoints[0]'s"
        );
        // Weights that do not fit in 32 bits together.
        let mut heavy = locality(0, Some(u32::MAX), vec![lb_endpoint("10.0.0.1", 80, ok)]);
        let mut light = locality(0, Some(1), vec![lb_endpoint("10.0.0.2", 80, ok)]);
        light.locality.as_mut().unwrap().zone = "y".into();
        assert!(
            reason(Kind::Endpoints, &cla(vec![heavy.clone(), light]))
                .starts_with("endpoints[1].load_balancing_weight: the localities of priority 0")
        );
        heavy.load_balancing_weight = Some(UInt32Value { value: 1 });
        for lb in &mut heavy.lb_endpoints {
            lb.load_balancing_weight = Some(UInt32Value { value: u32::MAX });
        }
        heavy
            .lb_endpoints
            .push(lb_endpoint("10.0.0.3", 80, core::HealthStatus::Unhealthy));
        assert!(
            reason(Kind::Endpoints, &cla(vec![heavy]))
                .starts_with("endpoints[0].lb_endpoints[1].load_balancing_weight: the endpoints")
        );
    }

    #[test]
    fn drop_overloads_become_shares_per_million() {
        use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
        let drop = |category: &str, numerator, denominator: i32| {
            eds::cluster_load_assignment::policy::DropOverload {
                category: category.into(),
                drop_percentage: Some(FractionalPercent {
                    numerator,
                    denominator,
                }),
            }
        };
        use fractional_percent::DenominatorType as D;
        let mut cla = eds::ClusterLoadAssignment {
            cluster_name: "e".into(),
            endpoints: vec![locality(
                0,
                Some(1),
                vec![lb_endpoint("10.0.0.1", 80, core::HealthStatus::Healthy)],
            )],
            policy: Some(eds::cluster_load_assignment::Policy {
                drop_overloads: vec![
                    drop("lb", 10, D::Hundred as i32),
                    drop("throttle", 25, D::TenThousand as i32),
                    drop("all", 2_000_000, D::Million as i32),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let (_, res) = decode(Kind::Endpoints, &any(&cla)).unwrap();
        let Resource::Endpoints(update) = res else {
            panic!("{res:?}")
        };
        let got: Vec<(&str, u32)> = update
            .drops
            .iter()
            .map(|d| (d.category.as_str(), d.per_million))
            .collect();
        assert_eq!(
            got,
            vec![("lb", 100_000), ("throttle", 2_500), ("all", 1_000_000)]
        );
        if let Some(policy) = cla.policy.as_mut() {
            policy.drop_overloads = vec![drop("lb", 1, 7)];
        }
        assert_eq!(
            reason(Kind::Endpoints, &any(&cla)),
            "policy.drop_overloads[0].drop_percentage.denominator: unknown value 7"
        );
    }

    /// A route configuration `r` with one virtual host for `domains` holding `routes`.
    fn route_configuration(domains: &[&str], routes: Vec<rds::Route>) -> rds::RouteConfiguration {
        rds::RouteConfiguration {
            name: "r".into(),
            virtual_hosts: vec![rds::VirtualHost {
                domains: domains.iter().map(|d| d.to_string()).collect(),
                routes,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// A route taking calls that meet `m` where `action` says.
    fn rds_route(m: rds::RouteMatch, action: rds::RouteAction) -> rds::Route {
        rds::Route {
            r#match: Some(m),
            action: Some(route::Action::Route(action)),
            ..Default::default()
        }
    }

    fn to_cluster(name: &str) -> rds::RouteAction {
        rds::RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(name.into())),
            ..Default::default()
        }
    }

    fn path_prefix(prefix: &str) -> rds::RouteMatch {
        rds::RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.into())),
            ..Default::default()
        }
    }

    /// The decoded routes of `rc`'s first virtual host, or why it is NACKed.
    fn decoded_routes(rc: &rds::RouteConfiguration) -> Result<Vec<Route>, String> {
        match decode(Kind::RouteConfig, &any(rc)) {
            Ok((_, Resource::RouteConfig(mut rc))) => Ok(rc.virtual_hosts.remove(0).routes),
            Ok((_, other)) => panic!("{other:?}"),
            Err(invalid) => Err(invalid.reason),
        }
    }

    #[test]
    fn routes_keep_domains_matches_and_clusters() {
        let exact = rds::RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Path("/pkg.S/M".into())),
            ..Default::default()
        };
        let rc = route_configuration(&["orders"], vec![rds_route(exact, to_cluster("c"))]);
        let (_, res) = decode(Kind::RouteConfig, &any(&rc)).unwrap();
        let Resource::RouteConfig(update) = res else {
            panic!("{res:?}")
        };
        assert_eq!(update.virtual_hosts[0].domains, vec!["orders".to_string()]);
        assert_eq!(
            update.virtual_hosts[0].routes[0].matcher.path,
            super::super::matcher::PathMatch::Exact("/pkg.S/M".into())
        );
        assert_eq!(
            update.virtual_hosts[0].routes[0].action,
            RouteTarget::Cluster("c".into())
        );
        let mut headers = rc.clone();
        if let Some(m) = headers.virtual_hosts[0].routes[0].r#match.as_mut() {
            m.headers.push(rds::HeaderMatcher {
                name: "x-canary".into(),
                header_match_specifier: Some(
                    rds::header_matcher::HeaderMatchSpecifier::PresentMatch(true),
                ),
                ..Default::default()
            });
            m.case_sensitive = Some(envoy_types::pb::google::protobuf::BoolValue { value: false });
        }
        let (_, res) = decode(Kind::RouteConfig, &any(&headers)).unwrap();
        let Resource::RouteConfig(update) = res else {
            panic!("{res:?}")
        };
        assert!(update.virtual_hosts[0].routes[0].matcher.conditional());
        let mut insensitive = rc.clone();
        if let Some(m) = insensitive.virtual_hosts[0].routes[0].r#match.as_mut() {
            m.case_sensitive = Some(envoy_types::pb::google::protobuf::BoolValue { value: false });
        }
        let (_, res) = decode(Kind::RouteConfig, &any(&insensitive)).unwrap();
        let Resource::RouteConfig(update) = res else {
            panic!("{res:?}")
        };
        assert!(!update.virtual_hosts[0].routes[0].matcher.conditional());
        assert!(update.virtual_hosts[0].routes[0].matcher.case_insensitive);
        let mut no_domains = rc.clone();
        no_domains.virtual_hosts[0].domains.clear();
        assert_eq!(
            reason(Kind::RouteConfig, &any(&no_domains)),
            "virtual_hosts[0].domains: empty"
        );
        let mut no_match = rc;
        no_match.virtual_hosts[0].routes[0].r#match = None;
        assert_eq!(
            reason(Kind::RouteConfig, &any(&no_match)),
            "virtual_hosts[0].routes[0].match: missing"
        );
    }

    #[test]
    fn weighted_clusters_drop_weight_zero_and_cluster_header_routes_are_ignored() {
        let weighted = |weights: &[(&str, u32)]| rds::RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::WeightedClusters(
                rds::WeightedCluster {
                    clusters: weights
                        .iter()
                        .map(|(name, w)| rds::weighted_cluster::ClusterWeight {
                            name: (*name).into(),
                            weight: Some(UInt32Value { value: *w }),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        let decoded = |actions: Vec<rds::RouteAction>| {
            let routes = actions
                .into_iter()
                .map(|a| rds_route(path_prefix(""), a))
                .collect();
            decoded_routes(&route_configuration(&["*"], routes))
                .map(|routes| routes.into_iter().map(|r| r.action).collect::<Vec<_>>())
        };
        let by_header = rds::RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::ClusterHeader(
                "x-cluster".into(),
            )),
            ..Default::default()
        };
        assert_eq!(
            decoded(vec![by_header, weighted(&[("a", 3), ("b", 0), ("c", 1)])]),
            Ok(vec![RouteTarget::Weighted(vec![
                ("a".into(), 3),
                ("c".into(), 1)
            ])])
        );
        assert_eq!(
            decoded(vec![weighted(&[("a", 0)])]),
            Err(
                "virtual_hosts[0].routes[0].route.weighted_clusters.clusters: the weights add \
                 up to 0"
                    .into()
            )
        );
        assert_eq!(
            decoded(vec![weighted(&[("a", u32::MAX), ("b", 1)])]),
            Err(
                "virtual_hosts[0].routes[0].route.weighted_clusters.clusters: the weights add \
                 up to 4294967296, above 2^32 - 1"
                    .into()
            )
        );
        assert_eq!(
            decoded(vec![rds::RouteAction::default()]),
            Err("virtual_hosts[0].routes[0].route.cluster_specifier: missing".into())
        );
        let plugin = rds::RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::ClusterSpecifierPlugin(
                "lookup".into(),
            )),
            ..Default::default()
        };
        assert_eq!(
            decoded(vec![plugin]),
            Err(
                "virtual_hosts[0].routes[0].route.cluster_specifier_plugin: \"lookup\" is not \
                 among the route configuration's plugins"
                    .into()
            )
        );
        assert_eq!(
            decoded(vec![weighted(&[("", 1)])]),
            Err(
                "virtual_hosts[0].routes[0].route.weighted_clusters.clusters[0].name: empty".into()
            )
        );
    }

    #[test]
    fn a_route_with_query_parameters_is_left_out_unread() {
        let bad_regex = rds::RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::SafeRegex(
                envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
                    regex: "(".into(),
                    ..Default::default()
                },
            )),
            query_parameters: vec![rds::QueryParameterMatcher::default()],
            ..Default::default()
        };
        let mut rc = route_configuration(&["*"], vec![rds_route(bad_regex, to_cluster("c"))]);
        // Its invalid regex is never read: gRPC would not NACK it either.
        assert_eq!(decoded_routes(&rc), Ok(Vec::new()));
        // Without the query parameters the same route is read, and NACKed.
        if let Some(m) = rc.virtual_hosts[0].routes[0].r#match.as_mut() {
            m.query_parameters.clear();
        }
        let reason = decoded_routes(&rc).unwrap_err();
        assert!(
            reason.starts_with("virtual_hosts[0].routes[0].match.safe_regex.regex"),
            "{reason}"
        );
    }

    fn proto_duration(millis: i64) -> envoy_types::pb::google::protobuf::Duration {
        envoy_types::pb::google::protobuf::Duration {
            seconds: millis / 1000,
            nanos: (millis % 1000) as i32 * 1_000_000,
        }
    }

    /// A route configuration whose one catch-all route has this action, and whose
    /// virtual host has `vh_retry`.
    fn routes_with(
        action: rds::RouteAction,
        vh_retry: Option<rds::RetryPolicy>,
    ) -> Result<Route, String> {
        let action = rds::RouteAction {
            cluster_specifier: to_cluster("c").cluster_specifier,
            ..action
        };
        let mut rc = route_configuration(&["*"], vec![rds_route(path_prefix(""), action)]);
        rc.virtual_hosts[0].retry_policy = vh_retry;
        decoded_routes(&rc).map(|mut routes| routes.remove(0))
    }

    #[test]
    fn a_route_timeout_is_grpc_timeout_header_max_else_max_stream_duration() {
        let with = |max: Option<i64>, header_max: Option<i64>| {
            routes_with(
                rds::RouteAction {
                    max_stream_duration: Some(route_action::MaxStreamDuration {
                        max_stream_duration: max.map(proto_duration),
                        grpc_timeout_header_max: header_max.map(proto_duration),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                None,
            )
            .map(|r| r.max_stream_duration)
        };
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(with(Some(1500), None), Ok(ms(1500)));
        assert_eq!(with(Some(1500), Some(200)), Ok(ms(200)));
        // Zero is kept: it means no deadline, where unset defers to the listener.
        assert_eq!(with(Some(1500), Some(0)), Ok(ms(0)));
        assert_eq!(with(None, None), Ok(None));
        assert_eq!(
            with(Some(-1000), None),
            Err(
                "virtual_hosts[0].routes[0].route.max_stream_duration.max_stream_duration: \
                 not a valid duration (-1s 0ns)"
                    .to_owned()
            )
        );
    }

    #[test]
    fn a_route_retry_policy_maps_onto_grpc_retries() {
        let policy =
            |retry_on: &str, num_retries: Option<u32>, backoff: Option<(i64, Option<i64>)>| {
                rds::RetryPolicy {
                    retry_on: retry_on.into(),
                    num_retries: num_retries.map(|value| UInt32Value { value }),
                    retry_back_off: backoff.map(|(base, max)| rds::retry_policy::RetryBackOff {
                        base_interval: Some(proto_duration(base)),
                        max_interval: max.map(proto_duration),
                    }),
                    ..Default::default()
                }
            };
        let on_route = |p: rds::RetryPolicy| {
            routes_with(
                rds::RouteAction {
                    retry_policy: Some(p),
                    ..Default::default()
                },
                None,
            )
            .map(|r| r.retry)
        };
        // gRPC's conditions only; num_retries 7 is 8 attempts, A6 allows 5; A44's
        // default backoff is 25 ms up to 250 ms, multiplier 2.
        let got = on_route(policy(
            "unavailable, Cancelled,5xx,internal,unavailable",
            Some(7),
            None,
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            got,
            RetryPolicy::new(
                5,
                Duration::from_millis(25),
                Duration::from_millis(250),
                2.0,
                vec![Code::Unavailable, Code::Cancelled, Code::Internal],
            )
        );
        // Unset num_retries is one retry; a base alone gives a maximum of 10 × it.
        let got = on_route(policy("deadline-exceeded", None, Some((10, None))))
            .unwrap()
            .unwrap();
        assert_eq!(
            (got.max_attempts, got.initial_backoff, got.max_backoff),
            (2, Duration::from_millis(10), Duration::from_millis(100))
        );
        // No gRPC condition: no retries.
        assert_eq!(on_route(policy("5xx,reset", Some(3), None)), Ok(None));
        let at = "virtual_hosts[0].routes[0].route.retry_policy";
        assert_eq!(
            on_route(policy("unavailable", Some(0), None)),
            Err(format!("{at}.num_retries: must be at least 1, got 0"))
        );
        assert_eq!(
            on_route(policy("unavailable", None, Some((0, None)))),
            Err(format!("{at}.retry_back_off.base_interval: must be > 0"))
        );
        assert_eq!(
            on_route(policy("unavailable", None, Some((100, Some(50))))),
            Err(format!(
                "{at}.retry_back_off.max_interval: 50ms is less than base_interval (100ms)"
            ))
        );
        // The virtual host's policy serves routes that have none, and only those.
        let vh = policy("resource-exhausted", Some(2), None);
        let inherited = routes_with(rds::RouteAction::default(), Some(vh.clone()))
            .unwrap()
            .retry
            .unwrap();
        assert_eq!(
            inherited.retryable_status_codes,
            vec![Code::ResourceExhausted]
        );
        let own = routes_with(
            rds::RouteAction {
                retry_policy: Some(policy("unavailable", Some(1), None)),
                ..Default::default()
            },
            Some(vh.clone()),
        )
        .unwrap()
        .retry
        .unwrap();
        assert_eq!(own.retryable_status_codes, vec![Code::Unavailable]);
        let mut bad = vh;
        bad.num_retries = Some(UInt32Value { value: 0 });
        assert_eq!(
            routes_with(rds::RouteAction::default(), Some(bad)).map(|r| r.retry),
            Err("virtual_hosts[0].retry_policy.num_retries: must be at least 1, got 0".into())
        );
    }

    fn eds_cluster() -> cds::Cluster {
        cds::Cluster {
            name: "c".into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(cluster::EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: String::new(),
            }),
            ..Default::default()
        }
    }

    fn cluster_update(c: &cds::Cluster) -> Result<ClusterUpdate, String> {
        match decode(Kind::Cluster, &any(c)) {
            Ok((_, Resource::Cluster(update))) => Ok(update),
            Ok((_, other)) => panic!("{other:?}"),
            Err(invalid) => Err(invalid.reason),
        }
    }

    #[test]
    fn least_request_takes_its_choice_count() {
        let mut c = eds_cluster();
        c.lb_policy = cluster::LbPolicy::LeastRequest as i32;
        let with = |c: &mut cds::Cluster, n: u32| {
            c.lb_config = Some(cluster::LbConfig::LeastRequestLbConfig(
                cluster::LeastRequestLbConfig {
                    choice_count: Some(UInt32Value { value: n }),
                    ..Default::default()
                },
            ));
            cluster_update(c).map(|u| u.lb_policy)
        };
        assert_eq!(
            with(&mut c, 3),
            Ok(LbPolicy::LeastRequest { choice_count: 3 })
        );
        // A48: above 10 is 10.
        assert_eq!(
            with(&mut c, 50),
            Ok(LbPolicy::LeastRequest { choice_count: 10 })
        );
        assert_eq!(
            with(&mut c, 1),
            Err("least_request_lb_config.choice_count: must be at least 2, got 1".into())
        );
    }

    #[test]
    fn a_load_balancing_policy_replaces_lb_policy_as_a52_says() {
        use envoy_types::pb::envoy::extensions::load_balancing_policies as lbp;
        let policy = |configs: Vec<Any>| cds::LoadBalancingPolicy {
            policies: configs
                .into_iter()
                .map(|config| cds::load_balancing_policy::Policy {
                    typed_extension_config: Some(core::TypedExtensionConfig {
                        name: "p".into(),
                        typed_config: Some(config),
                    }),
                })
                .collect(),
        };
        let ring_hash = any(&lbp::ring_hash::v3::RingHash::default());
        let least_request = |n: u32| {
            any(&lbp::least_request::v3::LeastRequest {
                choice_count: Some(UInt32Value { value: n }),
                ..Default::default()
            })
        };
        let mut c = eds_cluster();
        c.lb_policy = cluster::LbPolicy::LeastRequest as i32;
        // The first supported policy; lb_policy is not read.
        c.load_balancing_policy = Some(policy(vec![
            ring_hash.clone(),
            any(&lbp::round_robin::v3::RoundRobin::default()),
            least_request(3),
        ]));
        let update = cluster_update(&c).unwrap();
        assert_eq!(
            (update.lb_policy, update.locality_weighted),
            (LbPolicy::RoundRobin, false)
        );
        // wrr_locality weighs localities and picks within one by its child.
        let wrr = any(&lbp::wrr_locality::v3::WrrLocality {
            endpoint_picking_policy: Some(policy(vec![least_request(3)])),
        });
        c.load_balancing_policy = Some(policy(vec![wrr]));
        let update = cluster_update(&c).unwrap();
        assert_eq!(
            (update.lb_policy, update.locality_weighted),
            (LbPolicy::LeastRequest { choice_count: 3 }, true)
        );
        c.load_balancing_policy = Some(policy(vec![ring_hash]));
        assert_eq!(
            cluster_update(&c),
            Err(
                "load_balancing_policy.policies: none is supported (round_robin, \
                 least_request, wrr_locality over one of them); got [RingHash]"
                    .into()
            )
        );
        c.load_balancing_policy = Some(policy(vec![least_request(1)]));
        assert_eq!(
            cluster_update(&c),
            Err(
                "load_balancing_policy.policies[0].typed_extension_config.typed_config.\
                 choice_count: must be at least 2, got 1"
                    .into()
            )
        );
    }

    #[test]
    fn max_requests_comes_from_the_default_priority_threshold_as_a32_says() {
        let mut c = eds_cluster();
        assert_eq!(cluster_update(&c).unwrap().max_requests, 1024, "unset");
        let threshold =
            |priority: core::RoutingPriority, max: Option<u32>| cds::circuit_breakers::Thresholds {
                priority: priority as i32,
                max_requests: max
                    .map(|value| envoy_types::pb::google::protobuf::UInt32Value { value }),
                ..Default::default()
            };
        c.circuit_breakers = Some(cds::CircuitBreakers {
            thresholds: vec![
                threshold(core::RoutingPriority::High, Some(7)),
                threshold(core::RoutingPriority::Default, Some(3)),
                threshold(core::RoutingPriority::Default, Some(9)),
            ],
            ..Default::default()
        });
        assert_eq!(
            cluster_update(&c).unwrap().max_requests,
            3,
            "the first DEFAULT one"
        );
        c.circuit_breakers = Some(cds::CircuitBreakers {
            thresholds: vec![threshold(core::RoutingPriority::Default, None)],
            ..Default::default()
        });
        assert_eq!(
            cluster_update(&c).unwrap().max_requests,
            1024,
            "DEFAULT without it"
        );
    }

    #[test]
    fn outlier_detection_maps_as_a50_says() {
        let mut c = eds_cluster();
        assert_eq!(cluster_update(&c).unwrap().outlier_detection, None);
        // All defaults: success rate on (enforcing 100), failure percentage off.
        c.outlier_detection = Some(cds::OutlierDetection::default());
        let od = cluster_update(&c).unwrap().outlier_detection.unwrap();
        assert_eq!(od.interval, Duration::from_secs(10));
        assert_eq!(od.base_ejection_time, Duration::from_secs(30));
        assert_eq!(od.max_ejection_time, Duration::from_secs(300));
        assert_eq!(od.max_ejection_percent, 10);
        assert_eq!(
            od.success_rate_ejection,
            Some(SuccessRateEjectionConfig::default())
        );
        assert_eq!(od.failure_percentage_ejection, None);
        let value = |value| Some(UInt32Value { value });
        c.outlier_detection = Some(cds::OutlierDetection {
            interval: Some(proto_duration(500)),
            base_ejection_time: Some(proto_duration(400_000)),
            max_ejection_percent: value(50),
            enforcing_success_rate: value(0),
            enforcing_failure_percentage: value(80),
            failure_percentage_threshold: value(60),
            failure_percentage_minimum_hosts: value(3),
            failure_percentage_request_volume: value(7),
            ..Default::default()
        });
        let od = cluster_update(&c).unwrap().outlier_detection.unwrap();
        assert_eq!(od.interval, Duration::from_millis(500));
        // No max_ejection_time: 300 s, or the base when longer.
        assert_eq!(od.max_ejection_time, Duration::from_secs(400));
        assert_eq!(od.max_ejection_percent, 50);
        assert_eq!(od.success_rate_ejection, None);
        let fp = od.failure_percentage_ejection.unwrap();
        assert_eq!(
            (
                fp.enforcement_percentage,
                fp.threshold,
                fp.minimum_hosts,
                fp.request_volume
            ),
            (80, 60, 3, 7)
        );
        c.outlier_detection = Some(cds::OutlierDetection {
            max_ejection_percent: value(101),
            ..Default::default()
        });
        assert_eq!(
            cluster_update(&c),
            Err(
                "outlier_detection.max_ejection_percent: must be a percentage (at most 100), \
                 got 101"
                    .into()
            )
        );
        // Checked though failure-percentage ejection is off (enforcing 0, the default).
        c.outlier_detection = Some(cds::OutlierDetection {
            failure_percentage_threshold: value(101),
            ..Default::default()
        });
        assert_eq!(
            cluster_update(&c),
            Err(
                "outlier_detection.failure_percentage_threshold: must be a percentage (at most \
                 100), got 101"
                    .into()
            )
        );
        c.outlier_detection = Some(cds::OutlierDetection {
            interval: Some(proto_duration(0)),
            ..Default::default()
        });
        assert_eq!(
            cluster_update(&c),
            Err("outlier_detection.interval: must be > 0".into())
        );
    }
}
