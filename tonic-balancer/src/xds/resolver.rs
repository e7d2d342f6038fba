//! The resolvers of xDS resources: the chain LDS → RDS of a listener (which the router
//! of an `xds:///` channel follows), the chain CDS → EDS of a cluster (each cluster
//! channel's resolver), and [`XdsResolver`], both chains joined at the default route.

use super::client::{ResourceState, Watch, XdsClient};
use super::matcher::PathMatch;
use super::resource::{
    ClusterUpdate, EndpointsUpdate, Kind, LbPolicy, ListenerRoutes, Resource, RouteConfig,
    RouteTarget,
};
use super::resource::{Route, VirtualHost};
use crate::config::{
    LoadBalancingConfig, LocalityWeight, LocalityWeightedConfig, MethodConfig, MethodPattern,
    ServiceConfig,
};
use crate::resolver::tokio_stream_watch::WatchStream;
use crate::resolver::{Address, Resolution, Resolve, ResolveError};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::watch;

/// A [`Resolve`] fed by an [`XdsClient`]: the endpoints of one cluster.
///
/// Made by [`XdsClient::resolver`] for a listener's default route. (The channel of an
/// `xds:///` target routes each call instead, with one such resolver per cluster.)
/// Dropping it ends its subscriptions.
pub struct XdsResolver {
    /// The latest update: one the channel has not read yet is replaced, not queued
    /// (the channel does not read while it is IDLE).
    rx: WatchStream<Update>,
    /// The service config of the address set `poll_resolve` returned last.
    config: Option<ServiceConfig>,
    task: tokio::task::AbortHandle,
}

/// An address set and the service config that goes with it, or an error.
type Update = Result<(Vec<Address>, ServiceConfig), ResolveError>;

impl fmt::Debug for XdsResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdsResolver").finish_non_exhaustive()
    }
}

impl Drop for XdsResolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Resolve for XdsResolver {
    fn poll_resolve(&mut self, cx: &mut Context<'_>) -> Poll<Option<Resolution>> {
        self.rx.poll_next(cx).map(|update| {
            update.map(|update| {
                update.map(|(addrs, config)| {
                    self.config = Some(config);
                    addrs
                })
            })
        })
    }

    fn take_service_config(&mut self) -> Option<ServiceConfig> {
        self.config.take()
    }
}

impl XdsResolver {
    fn spawn<F>(follow: impl FnOnce(watch::Sender<Option<Update>>) -> F) -> Self
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(follow(tx));
        XdsResolver {
            rx: WatchStream::new(rx),
            config: None,
            task: task.abort_handle(),
        }
    }
}

impl XdsClient {
    /// A resolver for the listener `name` that follows its default route only, for
    /// [`BalancedChannel::builder_with_resolver`](crate::BalancedChannel::builder_with_resolver).
    /// For a channel that routes each call as the route configuration says, build
    /// `xds:///name` with [`Builder::xds_client`](crate::Builder::xds_client) instead.
    ///
    /// It watches the listener, the route configuration it names (or holds), the cluster
    /// of the default route of the virtual host whose domains match `name`, and that
    /// cluster's endpoints; each change yields the endpoints that may get calls
    /// (HEALTHY or UNKNOWN), each with its locality's priority. Routes before the
    /// default one that take a whole service or one method to the same cluster give
    /// those methods their deadlines and retries.
    ///
    /// # Panics
    /// Outside a tokio runtime (as `tokio::spawn`).
    pub fn resolver(&self, name: &str) -> XdsResolver {
        let (client, name) = (self.clone(), name.to_owned());
        XdsResolver::spawn(move |tx| follow_default_route(client, name, tx))
    }

    /// The resolver of one cluster: its endpoints and policy, from CDS and EDS.
    pub(crate) fn cluster_resolver(&self, cluster: &str) -> XdsResolver {
        let (client, cluster) = (self.clone(), cluster.to_owned());
        XdsResolver::spawn(move |tx| follow_cluster(client, cluster, tx))
    }
}

/// Sends each new update; `false` once nobody listens.
fn send(tx: &watch::Sender<Option<Update>>, last: &mut Option<Update>, update: Update) -> bool {
    if last.as_ref() == Some(&update) {
        return true;
    }
    if tx.is_closed() {
        return false;
    }
    tx.send_replace(Some(update.clone()));
    *last = Some(update);
    true
}

async fn follow_cluster(client: XdsClient, name: String, tx: watch::Sender<Option<Update>>) {
    let mut chain = ClusterChain::default();
    let mut last = None;
    loop {
        if let Some(update) = chain.read(&client, &name).transpose()
            && !send(&tx, &mut last, update)
        {
            return;
        }
        chain.changed().await;
    }
}

async fn follow_default_route(client: XdsClient, name: String, tx: watch::Sender<Option<Update>>) {
    let mut listener = ListenerChain::new(&client, &name);
    let mut cluster = ClusterChain::default();
    let mut last = None;
    loop {
        let update = default_route_update(&mut listener, &mut cluster, &client, &name);
        if let Some(update) = update.transpose()
            && !send(&tx, &mut last, update)
        {
            return;
        }
        tokio::select! {
            open = listener.changed() => if !open { return },
            () = cluster.changed() => {}
        }
    }
}

/// The endpoints and config of the cluster of the default route, `None` while a
/// resource is awaited.
fn default_route_update(
    listener: &mut ListenerChain,
    cluster: &mut ClusterChain,
    client: &XdsClient,
    name: &str,
) -> Result<Option<(Vec<Address>, ServiceConfig)>, ResolveError> {
    let Some(routes) = listener.read(client)? else {
        return Ok(None);
    };
    let (vh, default) = default_route(&routes.config, name)?;
    let cluster_name = route_cluster(&vh.routes[default], name)?;
    let method_configs = method_configs(vh, default, &cluster_name, routes.listener_timeout);
    let Some((addrs, mut config)) = cluster.read(client, &cluster_name)? else {
        return Ok(None);
    };
    config.method_configs = method_configs;
    Ok(Some((addrs, config)))
}

/// Resolves when the watch sees a new state; never when there is no watch.
async fn changed(watch: &mut Option<Watch>) {
    match watch {
        Some(w) => {
            if w.rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Replaces `slot` with a watch on `name` unless it already watches that.
fn ensure<'a>(
    slot: &'a mut Option<Watch>,
    client: &XdsClient,
    kind: Kind,
    name: &str,
) -> &'a mut Watch {
    if slot.as_ref().is_none_or(|w| w.name() != name) {
        *slot = Some(client.watch(kind, name));
    }
    slot.as_mut().expect("set just above")
}

/// The state of one watch as a value, `Ok(None)` while waiting, or an error message.
fn read(watch: &mut Watch, what: &str) -> Result<Option<Arc<Resource>>, ResolveError> {
    let state = watch.rx.borrow_and_update().clone();
    match state {
        ResourceState::Waiting => Ok(None),
        ResourceState::Value(v) => Ok(Some(v)),
        ResourceState::Invalid(why) => Err(ResolveError::new(format!(
            "xDS {what} {:?} is invalid: {why}",
            watch.name()
        ))),
        ResourceState::DoesNotExist => Err(ResolveError::new(format!(
            "xDS {what} {:?} does not exist",
            watch.name()
        ))),
    }
}

/// The watches of a listener and of the route configuration it names.
pub(super) struct ListenerChain {
    listener: Watch,
    route: Option<Watch>,
}

/// A listener's route configuration, and the deadline it gives routes without one.
#[derive(Debug, PartialEq)]
pub(super) struct Routes {
    pub(super) config: RouteConfig,
    pub(super) listener_timeout: Option<Duration>,
}

impl ListenerChain {
    pub(super) fn new(client: &XdsClient, name: &str) -> Self {
        Self {
            listener: client.watch(Kind::Listener, name),
            route: None,
        }
    }

    /// The route configuration now, `None` while a resource is awaited.
    pub(super) fn read(&mut self, client: &XdsClient) -> Result<Option<Routes>, ResolveError> {
        let Some(listener) = read(&mut self.listener, "listener")? else {
            return Ok(None);
        };
        let Resource::Listener(listener) = &*listener else {
            return Ok(None);
        };
        let config = match &listener.routes {
            ListenerRoutes::Inline(rc) => {
                self.route = None;
                rc.clone()
            }
            ListenerRoutes::Rds(rds) => {
                let watch = ensure(&mut self.route, client, Kind::RouteConfig, rds);
                let Some(rc) = read(watch, "route configuration")? else {
                    return Ok(None);
                };
                match &*rc {
                    Resource::RouteConfig(rc) => rc.clone(),
                    _ => return Ok(None),
                }
            }
        };
        Ok(Some(Routes {
            config,
            listener_timeout: listener.max_stream_duration,
        }))
    }

    /// Resolves when either resource changes; `false` once the client is gone.
    pub(super) async fn changed(&mut self) -> bool {
        tokio::select! {
            r = self.listener.rx.changed() => r.is_ok(),
            () = changed(&mut self.route) => true,
        }
    }
}

/// The watches of a cluster and of its endpoints.
#[derive(Default)]
struct ClusterChain {
    cluster: Option<Watch>,
    endpoints: Option<Watch>,
}

impl ClusterChain {
    /// The cluster's endpoints that may get calls and the service config that says
    /// how (its policy, outlier detection and circuit breaker), `None` while a resource
    /// is awaited.
    fn read(
        &mut self,
        client: &XdsClient,
        name: &str,
    ) -> Result<Option<(Vec<Address>, ServiceConfig)>, ResolveError> {
        let watch = ensure(&mut self.cluster, client, Kind::Cluster, name);
        let Some(cluster) = read(watch, "cluster")? else {
            return Ok(None);
        };
        let Resource::Cluster(cluster) = &*cluster else {
            return Ok(None);
        };
        let watch = ensure(
            &mut self.endpoints,
            client,
            Kind::Endpoints,
            &cluster.eds_service_name,
        );
        let Some(endpoints) = read(watch, "endpoints")? else {
            return Ok(None);
        };
        let Resource::Endpoints(endpoints) = &*endpoints else {
            return Ok(None);
        };
        let (addrs, localities) = addresses(endpoints);
        let config = ServiceConfig {
            load_balancing: Some(load_balancing(cluster, localities)),
            max_concurrent_requests: Some(cluster.max_requests),
            drop_overloads: endpoints.drops.clone(),
            ..ServiceConfig::default()
        };
        Ok(Some((addrs, config)))
    }

    async fn changed(&mut self) {
        tokio::select! {
            () = changed(&mut self.cluster) => {}
            () = changed(&mut self.endpoints) => {}
        }
    }
}

/// The endpoints that may get calls, each marked with its locality's priority and key
/// (`PRIORITY:region/zone/sub_zone`), and each locality's weight and size. An address
/// listed twice is kept in its first locality only.
fn addresses(endpoints: &EndpointsUpdate) -> (Vec<Address>, Vec<LocalityWeight>) {
    let mut addrs = Vec::new();
    let mut seen = HashMap::new();
    let mut localities = Vec::new();
    for locality in &endpoints.localities {
        let key: Arc<str> = Arc::from(format!("{}:{}", locality.priority, locality.name));
        let (mut total, mut heaviest) = (0u32, 0u32);
        for endpoint in &locality.endpoints {
            if seen.insert(endpoint.addr, ()).is_some() {
                continue;
            }
            let mut address = Address::new(endpoint.addr);
            address.priority = Some(u16::try_from(locality.priority).unwrap_or(u16::MAX));
            address.locality = Some(key.clone());
            address.weight = Some(endpoint.weight.max(1));
            addrs.push(address);
            total = total.saturating_add(endpoint.weight.max(1));
            heaviest = heaviest.max(endpoint.weight.max(1));
        }
        if total > 0 {
            localities.push(
                LocalityWeight::new(&*key, locality.weight, total).with_heaviest_endpoint(heaviest),
            );
        }
    }
    (addrs, localities)
}

/// The channel's policy: the cluster's outlier detection, if any, over locality weights
/// over the cluster's `lb_policy`.
fn load_balancing(cluster: &ClusterUpdate, localities: Vec<LocalityWeight>) -> LoadBalancingConfig {
    let child = match cluster.lb_policy {
        LbPolicy::RoundRobin => LoadBalancingConfig::RoundRobin,
        LbPolicy::LeastRequest { choice_count } => LoadBalancingConfig::LeastRequest {
            choice_count: choice_count as usize,
        },
    };
    let weighted = if cluster.locality_weighted {
        LoadBalancingConfig::LocalityWeighted(Box::new(LocalityWeightedConfig::new(
            localities, child,
        )))
    } else {
        child
    };
    match &cluster.outlier_detection {
        Some(od) => {
            let mut od = od.clone();
            od.child_policy = weighted;
            LoadBalancingConfig::OutlierDetection(Box::new(od))
        }
        None => weighted,
    }
}

/// The route every call of a channel takes unless a per-method route says otherwise:
/// in the virtual host whose domains best match `name` (gRFC A27), the first route that
/// matches every path with no other condition. Returns the host and the route's index.
fn default_route<'a>(
    rc: &'a RouteConfig,
    name: &str,
) -> Result<(&'a VirtualHost, usize), ResolveError> {
    let vh = best_virtual_host(rc, name).ok_or_else(|| {
        ResolveError::new(format!(
            "xDS: no virtual host has a domain matching {name:?}"
        ))
    })?;
    let index = vh
        .routes
        .iter()
        .position(|r| {
            !r.matcher.conditional()
                && matches!(&r.matcher.path, PathMatch::Prefix(p) if p.is_empty() || p == "/")
        })
        .ok_or_else(|| {
            ResolveError::new(format!(
                "xDS: the virtual host for {name:?} has no default route (prefix \"\" or \"/\" \
                 with no other match); routes that match some methods only are used for \
                 their timeouts and retries, not on their own"
            ))
        })?;
    Ok((vh, index))
}

/// The cluster a route forwards to, when it names one.
fn route_cluster(route: &Route, name: &str) -> Result<String, ResolveError> {
    match &route.action {
        RouteTarget::Cluster(cluster) => Ok(cluster.clone()),
        RouteTarget::Weighted(_) => Err(ResolveError::new(format!(
            "xDS: the default route for {name:?} splits over weighted clusters, which is not \
             supported yet"
        ))),
        RouteTarget::Other => Err(ResolveError::new(format!(
            "xDS: the default route for {name:?} does not forward to a cluster"
        ))),
    }
}

#[cfg(test)]
fn default_cluster(rc: &RouteConfig, name: &str) -> Result<String, ResolveError> {
    let (vh, i) = default_route(rc, name)?;
    route_cluster(&vh.routes[i], name)
}

/// The method configs that say what the routes say about timeouts and retries: one per
/// route before the default that matches a whole service (prefix `/pkg.Svc/`) or one
/// method (path `/pkg.Svc/Method`) and forwards to the default route's cluster, then the
/// default route's as the default config (`{}`). A route without a deadline takes the
/// listener's (`listener_timeout`).
///
/// A route before the default that cannot be expressed so (a regex, header or other
/// conditions, a case-insensitive match, any other prefix, another cluster or weighted
/// clusters) is passed over, as before: the calls it would take follow the routes
/// after it. A method route that an earlier route of its service hides is dropped, as
/// the earlier one takes its calls in xDS's first-match order.
fn method_configs(
    vh: &VirtualHost,
    default: usize,
    cluster: &str,
    listener_timeout: Option<Duration>,
) -> Vec<MethodConfig> {
    let mut configs = Vec::new();
    let mut services: Vec<&str> = Vec::new();
    let mut methods: Vec<(&str, &str)> = Vec::new();
    let config = |names: Vec<MethodPattern>, route: &Route| MethodConfig {
        names,
        ..super::router::route_method(route, listener_timeout)
    };
    for route in &vh.routes[..default] {
        if route.matcher.conditional() || route.matcher.case_insensitive {
            continue;
        }
        let pattern = match &route.matcher.path {
            PathMatch::Prefix(p) => match p
                .strip_prefix('/')
                .and_then(|p| p.strip_suffix('/'))
                .filter(|s| !s.is_empty() && !s.contains('/'))
            {
                Some(service) if !services.contains(&service) => {
                    services.push(service);
                    MethodPattern::service(service)
                }
                _ => continue,
            },
            PathMatch::Exact(p) => match p
                .strip_prefix('/')
                .and_then(|p| p.split_once('/'))
                .filter(|(s, m)| !s.is_empty() && !m.is_empty() && !m.contains('/'))
            {
                Some((service, method))
                    if !services.contains(&service) && !methods.contains(&(service, method)) =>
                {
                    methods.push((service, method));
                    MethodPattern::method(service, method)
                }
                _ => continue,
            },
            PathMatch::Regex(_) => continue,
        };
        // A route to another cluster still hides the later routes of its methods.
        if matches!(&route.action, RouteTarget::Cluster(c) if c == cluster) {
            configs.push(config(vec![pattern], route));
        }
    }
    configs.push(config(
        vec![MethodPattern::default_all()],
        &vh.routes[default],
    ));
    configs
}

/// gRFC A27's domain matching: an exact match beats a suffix wildcard (`*.foo.com`),
/// which beats a prefix wildcard (`foo.*`), which beats `*`; longer patterns first.
pub(super) fn best_virtual_host<'a>(rc: &'a RouteConfig, name: &str) -> Option<&'a VirtualHost> {
    let name = name.to_ascii_lowercase();
    let mut best: Option<((u8, usize), &VirtualHost)> = None;
    for vh in &rc.virtual_hosts {
        for domain in &vh.domains {
            let domain = domain.to_ascii_lowercase();
            let rank = if domain == "*" {
                Some(0)
            } else if let Some(suffix) = domain.strip_prefix('*') {
                name.ends_with(suffix).then_some(2)
            } else if let Some(prefix) = domain.strip_suffix('*') {
                name.starts_with(prefix).then_some(1)
            } else {
                (domain == name).then_some(3)
            };
            if let Some(rank) = rank {
                let key = (rank, domain.len());
                if best.is_none_or(|(b, _)| key > b) {
                    best = Some((key, vh));
                }
            }
        }
    }
    best.map(|(_, vh)| vh)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: PathMatch, conditional: bool, cluster: &str) -> Route {
        Route {
            matcher: super::super::matcher::RouteMatch {
                path,
                case_insensitive: false,
                headers: Vec::new(),
                per_million: conditional.then_some(500_000),
                query_parameters: false,
            },
            action: RouteTarget::Cluster(cluster.to_owned()),
            max_stream_duration: None,
            retry: None,
        }
    }

    fn vh(domains: &[&str], cluster: &str) -> VirtualHost {
        VirtualHost {
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes: vec![route(PathMatch::Prefix(String::new()), false, cluster)],
        }
    }

    #[test]
    fn the_most_specific_domain_wins() {
        let rc = RouteConfig {
            virtual_hosts: vec![
                vh(&["*"], "any"),
                vh(&["orders.*"], "prefix"),
                vh(&["*.svc"], "suffix"),
                vh(&["orders.svc"], "exact"),
            ],
        };
        assert_eq!(default_cluster(&rc, "orders.svc").unwrap(), "exact");
        assert_eq!(default_cluster(&rc, "billing.svc").unwrap(), "suffix");
        assert_eq!(default_cluster(&rc, "orders.prod").unwrap(), "prefix");
        assert_eq!(default_cluster(&rc, "ORDERS.PROD").unwrap(), "prefix");
        assert_eq!(default_cluster(&rc, "other").unwrap(), "any");
        let none = RouteConfig {
            virtual_hosts: vec![vh(&["a"], "a")],
        };
        let e = default_cluster(&none, "b").unwrap_err();
        assert!(e.to_string().contains("no virtual host"), "{e}");
    }

    #[test]
    fn only_an_unconditional_catch_all_route_is_the_default() {
        let mut host = vh(&["*"], "unused");
        host.routes = vec![
            route(PathMatch::Prefix("/pkg.Svc/".into()), false, "method"),
            route(PathMatch::Prefix("/".into()), true, "header"),
            route(PathMatch::Prefix("/".into()), false, "default"),
        ];
        let rc = RouteConfig {
            virtual_hosts: vec![host],
        };
        assert_eq!(default_cluster(&rc, "x").unwrap(), "default");
        let mut weighted = rc.clone();
        weighted.virtual_hosts[0].routes[2].action =
            RouteTarget::Weighted(vec![("a".into(), 1), ("b".into(), 1)]);
        let e = default_cluster(&weighted, "x").unwrap_err();
        assert!(e.to_string().contains("weighted clusters"), "{e}");
        weighted.virtual_hosts[0].routes.pop();
        let e = default_cluster(&weighted, "x").unwrap_err();
        assert!(e.to_string().contains("no default route"), "{e}");
    }

    #[test]
    fn routes_before_the_default_become_method_configs() {
        let timed = |path: PathMatch, conditional: bool, cluster: &str, secs: u64| {
            let mut r = route(path, conditional, cluster);
            r.max_stream_duration = Some(Duration::from_secs(secs));
            r
        };
        let mut insensitive = timed(PathMatch::Prefix("/f.S/".into()), false, "c", 10);
        insensitive.matcher.case_insensitive = true;
        let host = VirtualHost {
            domains: vec!["*".into()],
            routes: vec![
                timed(PathMatch::Exact("/a.S/Get".into()), false, "c", 1),
                timed(PathMatch::Prefix("/a.S/".into()), false, "c", 2),
                // Hidden by the service route before it.
                timed(PathMatch::Exact("/a.S/Put".into()), false, "c", 3),
                // Another cluster: not expressible, but it hides b.S's later routes.
                timed(PathMatch::Prefix("/b.S/".into()), false, "other", 4),
                timed(PathMatch::Exact("/b.S/Get".into()), false, "c", 5),
                // Not a whole service, a regex, a header condition, any case.
                timed(PathMatch::Prefix("/c.".into()), false, "c", 6),
                timed(
                    PathMatch::Regex(super::super::matcher::Pattern::new(".*").unwrap()),
                    false,
                    "c",
                    7,
                ),
                timed(PathMatch::Prefix("/d.S/".into()), true, "c", 8),
                insensitive,
                timed(PathMatch::Prefix(String::new()), false, "c", 9),
                // After the default: never matched.
                timed(PathMatch::Prefix("/e.S/".into()), false, "c", 11),
            ],
        };
        let rc = RouteConfig {
            virtual_hosts: vec![host],
        };
        let (vh, default) = default_route(&rc, "x").unwrap();
        assert_eq!(default, 9);
        let configs = method_configs(vh, default, "c", None);
        let got: Vec<(Vec<MethodPattern>, Option<u64>)> = configs
            .iter()
            .map(|c| (c.names.clone(), c.timeout.map(|t| t.as_secs())))
            .collect();
        assert_eq!(
            got,
            vec![
                (vec![MethodPattern::method("a.S", "Get")], Some(1)),
                (vec![MethodPattern::service("a.S")], Some(2)),
                (vec![MethodPattern::default_all()], Some(9)),
            ]
        );
        let config = ServiceConfig {
            method_configs: configs,
            ..ServiceConfig::default()
        };
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn a_route_without_a_deadline_takes_the_listeners() {
        let mut with = route(PathMatch::Exact("/a.S/Get".into()), false, "c");
        with.max_stream_duration = Some(Duration::from_secs(1));
        let mut zero = route(PathMatch::Exact("/a.S/Put".into()), false, "c");
        zero.max_stream_duration = Some(Duration::ZERO);
        let host = VirtualHost {
            domains: vec!["*".into()],
            routes: vec![with, zero, route(PathMatch::Prefix("/".into()), false, "c")],
        };
        let timeouts = |listener| -> Vec<Option<u64>> {
            method_configs(&host, 2, "c", listener)
                .iter()
                .map(|c| c.timeout.map(|t| t.as_secs()))
                .collect()
        };
        // Its own, none (an explicit zero), the listener's.
        assert_eq!(
            timeouts(Some(Duration::from_secs(7))),
            vec![Some(1), None, Some(7)]
        );
        assert_eq!(timeouts(None), vec![Some(1), None, None]);
    }

    #[test]
    fn each_address_carries_its_locality_and_each_locality_its_weight_and_size() {
        use super::super::resource::{Endpoint, LocalityEndpoints};
        let ep = |port: u16| Endpoint {
            addr: std::net::SocketAddr::from(([10, 0, 0, 1], port)),
            weight: 1,
        };
        let locality = |name: &str, priority, weight, endpoints| LocalityEndpoints {
            name: name.into(),
            priority,
            weight,
            endpoints,
        };
        let update = EndpointsUpdate {
            localities: vec![
                locality("r/a/", 0, 3, vec![ep(1), ep(2)]),
                // Port 2 again: it stays in its first locality.
                locality("r/b/", 0, 1, vec![ep(2), ep(3)]),
                // The same locality at another priority is another key.
                locality("r/a/", 1, 5, vec![ep(4)]),
                locality("r/c/", 0, 2, vec![]),
            ],
            drops: Vec::new(),
        };
        let (addrs, localities) = addresses(&update);
        let got: Vec<(u16, Option<u16>, Option<&str>)> = addrs
            .iter()
            .map(|a| (a.addr.port(), a.priority, a.locality.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, Some(0), Some("0:r/a/")),
                (2, Some(0), Some("0:r/a/")),
                (3, Some(0), Some("0:r/b/")),
                (4, Some(1), Some("1:r/a/")),
            ]
        );
        // A locality with no endpoint left is not listed.
        assert_eq!(
            localities,
            vec![
                LocalityWeight::new("0:r/a/", 3, 2),
                LocalityWeight::new("0:r/b/", 1, 1),
                LocalityWeight::new("1:r/a/", 5, 1),
            ]
        );
        let cluster = ClusterUpdate {
            eds_service_name: "e".into(),
            lb_policy: LbPolicy::LeastRequest { choice_count: 3 },
            locality_weighted: true,
            outlier_detection: None,
            max_requests: crate::xds::resource::DEFAULT_MAX_REQUESTS,
        };
        let config = ServiceConfig {
            load_balancing: Some(load_balancing(&cluster, localities)),
            ..ServiceConfig::default()
        };
        assert_eq!(config.validate(), Ok(()));
        let Some(LoadBalancingConfig::LocalityWeighted(lw)) = &config.load_balancing else {
            panic!("{config:?}")
        };
        assert_eq!(
            lw.child_policy,
            LoadBalancingConfig::LeastRequest { choice_count: 3 }
        );
        // A bare policy from `load_balancing_policy` (gRFC A52) runs over every endpoint.
        let bare = ClusterUpdate {
            locality_weighted: false,
            ..cluster
        };
        assert_eq!(
            load_balancing(&bare, Vec::new()),
            LoadBalancingConfig::LeastRequest { choice_count: 3 }
        );
    }
}
