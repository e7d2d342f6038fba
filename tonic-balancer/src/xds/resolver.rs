//! The resolver of an `xds:///name` target: follows LDS → RDS → CDS → EDS for `name`
//! and produces the endpoints of the cluster its default route names.

use super::client::{ResourceState, Watch, XdsClient};
use super::resource::{
    ClusterUpdate, EndpointsUpdate, Kind, LbPolicy, ListenerUpdate, PathMatch, Resource,
    RouteConfig, RouteTarget,
};
use crate::config::{LoadBalancingConfig, LocalityWeight, LocalityWeightedConfig, ServiceConfig};
use crate::resolver::{Address, Resolution, Resolve, ResolveError};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// A [`Resolve`] fed by an [`XdsClient`]: the address set of one `xds:///` target.
///
/// Made by [`XdsClient::resolver`]; the channel of an `xds:///name` target makes one
/// itself. Dropping it ends its subscriptions.
pub struct XdsResolver {
    rx: mpsc::Receiver<Update>,
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
        self.rx.poll_recv(cx).map(|update| {
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

impl XdsClient {
    /// A resolver for the listener `name` (what `xds:///name` names), for
    /// [`BalancedChannel::builder_with_resolver`](crate::BalancedChannel::builder_with_resolver)
    /// when the bootstrap comes from code.
    ///
    /// It watches the listener, the route configuration it names (or holds), the cluster
    /// of the default route of the virtual host whose domains match `name`, and that
    /// cluster's endpoints; each change yields the endpoints that may get calls
    /// (HEALTHY or UNKNOWN), each with its locality's priority.
    ///
    /// # Panics
    /// Outside a tokio runtime (as `tokio::spawn`).
    pub fn resolver(&self, name: &str) -> XdsResolver {
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(follow(self.clone(), name.to_owned(), tx));
        XdsResolver {
            rx,
            config: None,
            task: task.abort_handle(),
        }
    }
}

/// The watches of one target, each started once the resource before it names it.
struct Chain {
    listener: Watch,
    route: Option<Watch>,
    cluster: Option<Watch>,
    endpoints: Option<Watch>,
}

async fn follow(client: XdsClient, name: String, tx: mpsc::Sender<Update>) {
    let mut chain = Chain {
        listener: client.watch(Kind::Listener, &name),
        route: None,
        cluster: None,
        endpoints: None,
    };
    let mut last: Option<Update> = None;
    loop {
        if let Some(resolution) = chain.resolve(&client, &name)
            && last.as_ref() != Some(&resolution)
        {
            if tx.send(resolution.clone()).await.is_err() {
                return;
            }
            last = Some(resolution);
        }
        tokio::select! {
            r = chain.listener.rx.changed() => if r.is_err() { return },
            () = changed(&mut chain.route) => {}
            () = changed(&mut chain.cluster) => {}
            () = changed(&mut chain.endpoints) => {}
        }
    }
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

impl Chain {
    /// The address set and service config the chain yields now, or `None` while a
    /// resource is awaited.
    fn resolve(&mut self, client: &XdsClient, name: &str) -> Option<Update> {
        match self.try_resolve(client, name) {
            Ok(Some(addrs)) => Some(Ok(addrs)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }

    fn try_resolve(
        &mut self,
        client: &XdsClient,
        name: &str,
    ) -> Result<Option<(Vec<Address>, ServiceConfig)>, ResolveError> {
        let Some(listener) = read(&mut self.listener, "listener")? else {
            return Ok(None);
        };
        let Resource::Listener(listener) = &*listener else {
            return Ok(None);
        };
        let route_config: Arc<Resource>;
        let routes = match listener {
            ListenerUpdate::Inline(rc) => {
                self.route = None;
                rc
            }
            ListenerUpdate::Rds(rds) => {
                let watch = ensure(&mut self.route, client, Kind::RouteConfig, rds);
                let Some(rc) = read(watch, "route configuration")? else {
                    return Ok(None);
                };
                route_config = rc;
                match &*route_config {
                    Resource::RouteConfig(rc) => rc,
                    _ => return Ok(None),
                }
            }
        };
        let cluster_name = default_cluster(routes, name)?;
        let watch = ensure(&mut self.cluster, client, Kind::Cluster, &cluster_name);
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
            ..ServiceConfig::default()
        };
        Ok(Some((addrs, config)))
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
        let mut count = 0u32;
        for endpoint in &locality.endpoints {
            if seen.insert(endpoint.addr, ()).is_some() {
                continue;
            }
            let mut address = Address::new(endpoint.addr);
            address.priority = Some(u16::try_from(locality.priority).unwrap_or(u16::MAX));
            address.locality = Some(key.clone());
            addrs.push(address);
            count += 1;
        }
        if count > 0 {
            localities.push(LocalityWeight::new(&*key, locality.weight, count));
        }
    }
    (addrs, localities)
}

/// The channel's policy: locality weights over the cluster's `lb_policy`.
fn load_balancing(cluster: &ClusterUpdate, localities: Vec<LocalityWeight>) -> LoadBalancingConfig {
    let child = match cluster.lb_policy {
        LbPolicy::RoundRobin => LoadBalancingConfig::RoundRobin,
        LbPolicy::LeastRequest { choice_count } => LoadBalancingConfig::LeastRequest {
            choice_count: choice_count as usize,
        },
    };
    LoadBalancingConfig::LocalityWeighted(Box::new(LocalityWeightedConfig::new(localities, child)))
}

/// The cluster of the route every call of a channel takes: in the virtual host whose
/// domains best match `name` (gRFC A27), the first route that matches every path with
/// no other condition.
fn default_cluster(rc: &RouteConfig, name: &str) -> Result<String, ResolveError> {
    let vh = best_virtual_host(rc, name).ok_or_else(|| {
        ResolveError::new(format!(
            "xDS: no virtual host has a domain matching {name:?}"
        ))
    })?;
    let route = vh
        .routes
        .iter()
        .find(|r| {
            !r.conditional && matches!(&r.path, PathMatch::Prefix(p) if p.is_empty() || p == "/")
        })
        .ok_or_else(|| {
            ResolveError::new(format!(
                "xDS: the virtual host for {name:?} has no default route (prefix \"\" or \"/\" \
                 with no other match); per-method routes are not supported yet"
            ))
        })?;
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

/// gRFC A27's domain matching: an exact match beats a suffix wildcard (`*.foo.com`),
/// which beats a prefix wildcard (`foo.*`), which beats `*`; longer patterns first.
fn best_virtual_host<'a>(
    rc: &'a RouteConfig,
    name: &str,
) -> Option<&'a super::resource::VirtualHost> {
    let name = name.to_ascii_lowercase();
    let mut best: Option<((u8, usize), &super::resource::VirtualHost)> = None;
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
    use super::super::resource::{Route, VirtualHost};
    use super::*;

    fn vh(domains: &[&str], cluster: &str) -> VirtualHost {
        VirtualHost {
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes: vec![Route {
                path: PathMatch::Prefix(String::new()),
                conditional: false,
                action: RouteTarget::Cluster(cluster.to_owned()),
            }],
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
            Route {
                path: PathMatch::Prefix("/pkg.Svc/".into()),
                conditional: false,
                action: RouteTarget::Cluster("method".into()),
            },
            Route {
                path: PathMatch::Prefix("/".into()),
                conditional: true,
                action: RouteTarget::Cluster("header".into()),
            },
            Route {
                path: PathMatch::Prefix("/".into()),
                conditional: false,
                action: RouteTarget::Cluster("default".into()),
            },
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
}
