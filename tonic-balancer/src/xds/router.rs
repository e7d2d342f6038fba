//! Per-call routing of an `xds:///` channel (gRFC A28): the virtual host's routes in
//! order, each call taking the first that matches its path and metadata, then the
//! cluster that route names (or one of its weighted clusters, at random by weight).
//!
//! Each cluster is a channel of its own, built from the target's settings with a
//! resolver that follows that cluster's CDS and EDS resources: its own subchannels,
//! policy, outlier detection and circuit breaker, as each cluster is a child policy in
//! gRPC. The route's deadline and retry policy go with the call to that channel.

use super::client::XdsClient;
use super::matcher::RouteMatch;
use super::resolver::{ListenerChain, best_virtual_host};
use super::resource::{Route, RouteTarget};
use crate::balance::rng::AtomicRng;
use crate::channel::{BalancedChannel, Blueprint};
use crate::config::MethodConfig;
use crate::connectivity::ConnectivityState;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tonic::Status;

/// The routes of one `xds:///` channel, read by every call.
pub(crate) struct Router {
    table: ArcSwap<Table>,
    /// The target, for error messages.
    target: String,
    /// Bumped when the table changes; the channel's (and its clusters') publish signal.
    published: Arc<watch::Sender<()>>,
    rng: AtomicRng,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// What the router knows.
enum Table {
    /// Waiting for the listener and its route configuration.
    Pending,
    /// They failed before any could be used (missing, invalid, no matching host).
    Failed(String),
    Ready {
        routes: Vec<RouteEntry>,
        /// Each cluster's channel once, in the order the routes name them.
        channels: Vec<BalancedChannel>,
    },
}

struct RouteEntry {
    matcher: RouteMatch,
    action: Action,
    /// The route's deadline and retry policy, as the method config of its calls.
    method: Arc<MethodConfig>,
}

enum Action {
    /// Clusters with their cumulative weights (one cluster: any weight).
    Clusters(Vec<(u64, BalancedChannel)>),
    /// Calls that take the route fail with UNAVAILABLE and this message.
    Fail(String),
}

/// Where one call goes.
pub(crate) enum Routed {
    /// To this cluster's channel, with this route's method config.
    To(BalancedChannel, Arc<MethodConfig>),
    /// Nowhere: the call fails with this status.
    Fail(Status),
    /// Not known yet; with the error that stops resolution, if any.
    Unresolved(Option<String>),
}

/// The method config of a routed call, handed to its cluster's channel as a request
/// extension: it replaces that channel's own lookup.
#[derive(Clone, Debug)]
pub(crate) struct RouteMethod(pub(crate) Arc<MethodConfig>);

impl Router {
    /// Where a call to `path` with these `headers` goes now.
    pub(crate) fn route(&self, path: &str, headers: &http::HeaderMap) -> Routed {
        let table = self.table.load();
        let routes = match &**table {
            Table::Pending => return Routed::Unresolved(None),
            Table::Failed(why) => return Routed::Unresolved(Some(why.clone())),
            Table::Ready { routes, .. } => routes,
        };
        let draw = || self.rng.below(1_000_000) as u32;
        let Some(route) = routes
            .iter()
            .find(|r| r.matcher.matches(path, headers, draw))
        else {
            return Routed::Fail(Status::unavailable(format!(
                "no route of {} matches the call to {path}",
                self.target
            )));
        };
        match &route.action {
            Action::Clusters(clusters) if clusters.len() == 1 => {
                Routed::To(clusters[0].1.clone(), route.method.clone())
            }
            Action::Clusters(clusters) => {
                let total = clusters.last().map_or(0, |(w, _)| *w);
                let point = self.rng.below(usize::try_from(total).unwrap_or(usize::MAX)) as u64;
                let chosen = clusters
                    .iter()
                    .find(|(cumulative, _)| point < *cumulative)
                    .or(clusters.last());
                match chosen {
                    Some((_, channel)) => Routed::To(channel.clone(), route.method.clone()),
                    None => Routed::Fail(Status::unavailable(format!(
                        "the route of {} for {path} names no cluster",
                        self.target
                    ))),
                }
            }
            Action::Fail(why) => Routed::Fail(Status::unavailable(why.clone())),
        }
    }

    /// The channel of each cluster the routes name.
    pub(crate) fn channels(&self) -> Vec<BalancedChannel> {
        match &**self.table.load() {
            Table::Ready { channels, .. } => channels.clone(),
            _ => Vec::new(),
        }
    }

    /// gRFC A28: the aggregate of the clusters' states (READY if any is, else
    /// CONNECTING, else IDLE, else TRANSIENT_FAILURE); CONNECTING while the routes are
    /// awaited, TRANSIENT_FAILURE when they failed.
    pub(crate) fn state(&self) -> ConnectivityState {
        use ConnectivityState::*;
        match &**self.table.load() {
            Table::Pending => Connecting,
            Table::Failed(_) => TransientFailure,
            Table::Ready { channels, .. } => {
                let states: Vec<ConnectivityState> = channels.iter().map(|c| c.state()).collect();
                [Ready, Connecting, Idle]
                    .into_iter()
                    .find(|s| states.contains(s))
                    .unwrap_or(TransientFailure)
            }
        }
    }

    /// The error that keeps calls from being routed, if any.
    pub(crate) fn error(&self) -> Option<String> {
        match &**self.table.load() {
            Table::Failed(why) => Some(why.clone()),
            _ => None,
        }
    }

    fn install(&self, table: Table) {
        self.table.store(Arc::new(table));
        self.published.send_replace(());
    }
}

/// The channel of the target `xds:///name`: its routes followed by a task on `client`,
/// its clusters' channels made from `blueprint`.
pub(crate) fn routed_channel(
    client: XdsClient,
    name: String,
    blueprint: Blueprint,
) -> Result<BalancedChannel, crate::Error> {
    let router = Arc::new(Router {
        table: ArcSwap::from_pointee(Table::Pending),
        target: blueprint.name().to_owned(),
        published: blueprint.published.clone(),
        rng: AtomicRng::new(blueprint.seed()),
    });
    let (stop_tx, stop_rx) = oneshot::channel();
    let channel = blueprint.routed(router.clone(), stop_tx)?;
    let runtime = blueprint.runtime().clone();
    runtime.spawn(async move {
        use futures_util::FutureExt;
        let followed =
            std::panic::AssertUnwindSafe(follow(client, name, router.clone(), blueprint, stop_rx))
                .catch_unwind()
                .await;
        // Calls still waiting for routes must not wait for ever.
        let why = match followed {
            Ok(()) => "the xDS routes are no longer followed (the channel is shutting down)",
            Err(_) => "the task following the xDS routes panicked",
        };
        router.install(Table::Failed(why.to_owned()));
    });
    Ok(channel)
}

/// Follows the listener and its route configuration until the channel is dropped,
/// installing a new table on each change.
async fn follow(
    client: XdsClient,
    name: String,
    router: Arc<Router>,
    blueprint: Blueprint,
    mut stop: oneshot::Receiver<()>,
) {
    let mut chain = ListenerChain::new(&client, &name);
    let mut clusters = Clusters::default();
    let mut installed = false;
    let mut last = None;
    loop {
        match chain.read(&client) {
            Ok(None) => {}
            Ok(Some(routes)) if last.as_ref() != Some(&routes) => {
                match best_virtual_host(&routes.config, &name) {
                    Some(vh) => {
                        let table = table(
                            &vh.routes,
                            routes.listener_timeout,
                            &mut clusters,
                            &client,
                            &blueprint,
                        );
                        router.install(table);
                        installed = true;
                        last = Some(routes);
                    }
                    None => {
                        let why = format!("xDS: no virtual host has a domain matching {name:?}");
                        fail(&router, installed, why);
                    }
                }
            }
            Ok(Some(_)) => {}
            Err(e) => fail(&router, installed, e.to_string()),
        }
        let expiry = clusters.next_expiry();
        tokio::select! {
            _ = &mut stop => return,
            open = chain.changed() => if !open { return },
            () = sleep_until(expiry), if expiry.is_some() => clusters.expire(Instant::now()),
        }
    }
}

/// How long the channel of a cluster no route names any more is kept (gRFC A28's
/// cache): a canary whose weight goes to 0 and back reconnects nothing.
pub(crate) const RETAIN_UNUSED_CLUSTER: Duration = Duration::from_secs(15 * 60);

/// The channels of the clusters the routes name, and of those they stopped naming
/// less than [`RETAIN_UNUSED_CLUSTER`] ago.
struct Clusters<C = BalancedChannel> {
    named: HashMap<String, C>,
    retired: HashMap<String, (C, Instant)>,
}

impl<C> Default for Clusters<C> {
    fn default() -> Self {
        Self {
            named: HashMap::new(),
            retired: HashMap::new(),
        }
    }
}

impl<C: Clone> Clusters<C> {
    /// The channel of `cluster`: the one in use, one retired lately, or `spawn`'s.
    fn get_or_spawn(
        &mut self,
        cluster: &str,
        spawn: impl FnOnce() -> Result<C, String>,
    ) -> Result<C, String> {
        if let Some(channel) = self.named.get(cluster) {
            return Ok(channel.clone());
        }
        let channel = match self.retired.remove(cluster) {
            Some((channel, _)) => channel,
            None => spawn()?,
        };
        self.named.insert(cluster.to_owned(), channel.clone());
        Ok(channel)
    }

    /// Retires the channels of clusters not in `named`, as of `now`.
    fn retire_all_but(&mut self, named: &[String], now: Instant) {
        let unused: Vec<String> = self
            .named
            .keys()
            .filter(|name| !named.contains(name))
            .cloned()
            .collect();
        for name in unused {
            if let Some(channel) = self.named.remove(&name) {
                self.retired.insert(name, (channel, now));
            }
        }
    }

    fn next_expiry(&self) -> Option<Instant> {
        self.retired
            .values()
            .map(|(_, since)| *since + RETAIN_UNUSED_CLUSTER)
            .min()
    }

    /// Drops the retired channels whose time is up (their calls in flight finish).
    fn expire(&mut self, now: Instant) {
        self.retired
            .retain(|_, (_, since)| now < *since + RETAIN_UNUSED_CLUSTER);
    }
}

/// Sleeps until `deadline`; never when there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// A resolution error: calls fail with it until routes arrive; once they have, the
/// last good ones stay (as the endpoints of a channel do when its resolver fails).
fn fail(router: &Router, installed: bool, why: String) {
    if installed {
        tracing::warn!(target = %router.target, error = %why, "xDS routes: keeping the last good ones");
    } else {
        router.install(Table::Failed(why));
    }
}

/// The table for a virtual host's routes: a channel per cluster named, kept from the
/// last table (or from the retired ones) when it was already there; the channels of
/// clusters no longer named are retired.
fn table(
    routes: &[Route],
    listener_timeout: Option<Duration>,
    clusters: &mut Clusters,
    client: &XdsClient,
    blueprint: &Blueprint,
) -> Table {
    let mut named: Vec<String> = Vec::new();
    let mut channels = Vec::new();
    let mut channel_of = |cluster: &str| -> Result<BalancedChannel, String> {
        let channel = clusters.get_or_spawn(cluster, || {
            let target = format!("{} (cluster {cluster:?})", blueprint.name());
            let seed = blueprint.seed() ^ xxhash_rust::xxh64::xxh64(cluster.as_bytes(), 0);
            blueprint
                .spawn_cluster(Box::new(client.cluster_resolver(cluster)), target, seed)
                .map_err(|e| format!("the channel of cluster {cluster:?} could not start: {e}"))
        })?;
        if !named.iter().any(|n| n == cluster) {
            named.push(cluster.to_owned());
            channels.push(channel.clone());
        }
        Ok(channel)
    };
    let mut entries = Vec::with_capacity(routes.len());
    for route in routes {
        let action = match &route.action {
            RouteTarget::Cluster(cluster) => match channel_of(cluster) {
                Ok(channel) => Action::Clusters(vec![(1, channel)]),
                Err(why) => Action::Fail(why),
            },
            RouteTarget::Weighted(weighted) => {
                let mut cumulative = 0u64;
                let mut picks = Vec::with_capacity(weighted.len());
                let mut failed = None;
                for (cluster, weight) in weighted {
                    match channel_of(cluster) {
                        Ok(channel) => {
                            cumulative += u64::from(*weight);
                            picks.push((cumulative, channel));
                        }
                        Err(why) => failed = Some(why),
                    }
                }
                match failed {
                    Some(why) => Action::Fail(why),
                    None => Action::Clusters(picks),
                }
            }
            RouteTarget::Other => Action::Fail(
                "the matching xDS route has an action gRPC does not forward on (a redirect, \
                 a direct response or a non-forwarding action)"
                    .to_owned(),
            ),
        };
        entries.push(RouteEntry {
            matcher: route.matcher.clone(),
            action,
            method: Arc::new(route_method(route, listener_timeout)),
        });
    }
    let now = Instant::now();
    clusters.retire_all_but(&named, now);
    clusters.expire(now);
    Table::Ready {
        routes: entries,
        channels,
    }
}

/// A route's calls' method config: its deadline, else the listener's (gRFC A31; zero
/// is none), and its retry policy (gRFC A44).
pub(super) fn route_method(route: &Route, listener_timeout: Option<Duration>) -> MethodConfig {
    MethodConfig {
        timeout: route
            .max_stream_duration
            .or(listener_timeout)
            .filter(|t| !t.is_zero()),
        retry_policy: route.retry.clone(),
        ..MethodConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_no_route_names_is_kept_15_minutes_then_dropped() {
        let t0 = Instant::now();
        let mut clusters: Clusters<u32> = Clusters::default();
        let mut spawned = 0;
        let mut get = |clusters: &mut Clusters<u32>, name: &str| {
            clusters
                .get_or_spawn(name, || {
                    spawned += 1;
                    Ok(spawned)
                })
                .unwrap()
        };
        assert_eq!(get(&mut clusters, "a"), 1);
        assert_eq!(get(&mut clusters, "b"), 2);
        assert_eq!(get(&mut clusters, "a"), 1);
        // "b" leaves the routes: retired, not dropped.
        clusters.retire_all_but(&["a".to_owned()], t0);
        assert_eq!(clusters.next_expiry(), Some(t0 + RETAIN_UNUSED_CLUSTER));
        clusters.expire(t0 + RETAIN_UNUSED_CLUSTER - Duration::from_secs(1));
        // Named again within the 15 minutes: the same channel comes back.
        assert_eq!(get(&mut clusters, "b"), 2);
        assert_eq!(clusters.next_expiry(), None);
        // Retired again, and this time the 15 minutes pass: a new channel.
        let t1 = t0 + Duration::from_secs(60);
        clusters.retire_all_but(&["a".to_owned()], t1);
        clusters.expire(t1 + RETAIN_UNUSED_CLUSTER);
        assert_eq!(clusters.next_expiry(), None);
        assert_eq!(get(&mut clusters, "b"), 3);
        assert_eq!(get(&mut clusters, "a"), 1);
    }
}
