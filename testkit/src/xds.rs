//! An xDS control plane on loopback that tests drive (feature `xds`).
//!
//! It serves Envoy's `AggregatedDiscoveryService` (state of the world, v3) on
//! `127.0.0.1`. A test [sets](ControlPlane::set) resources; every stream subscribed to
//! their type gets a response with a new version and nonce. Every request a client
//! sends (first subscriptions, ACKs, NACKs) is recorded as an [`Event`] the test
//! [waits for](ControlPlane::wait_for), so a test synchronises on what the client did,
//! never on time. [`ControlPlane::kill`] cuts every stream and stops listening, like a
//! crashed process; [`ControlPlane::restart`] listens again on the same address with the
//! same resources.
//!
//! Helpers build the resources a gRPC client reads: [`listener`] (an API listener with
//! the router filter and an inline route config or RDS), [`route_config`], [`cluster`]
//! (EDS over ADS) and [`endpoints`].

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::cluster::v3 as cds;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as eds;
use envoy_types::pb::envoy::config::listener::v3 as lds;
use envoy_types::pb::envoy::config::route::v3 as rds;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use futures_core::Stream;
use prost::{Message, Name};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status, Streaming};

use super::conn::{Conns, Incoming};
use super::lock;

/// Type URLs of the four resource types.
pub mod type_url {
    /// LDS: `envoy.config.listener.v3.Listener`.
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// RDS: `envoy.config.route.v3.RouteConfiguration`.
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// CDS: `envoy.config.cluster.v3.Cluster`.
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    pub const ENDPOINTS: &str =
        "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
}

/// What a client sent on one ADS stream.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Event {
    /// Which stream (counted from 1 since the control plane started).
    pub stream: u64,
    /// `type_url`.
    pub type_url: String,
    /// `version_info`: the last version the client accepted.
    pub version_info: String,
    /// `response_nonce`: empty on a stream's first request of a type.
    pub response_nonce: String,
    /// `resource_names`.
    pub resource_names: Vec<String>,
    /// `error_detail.message` of a NACK.
    pub error: Option<String>,
    /// `node.id`, when the request carried a node.
    pub node_id: Option<String>,
}

impl Event {
    /// A NACK: a request with an error detail.
    pub fn is_nack(&self) -> bool {
        self.error.is_some()
    }
}

/// One resource, by type and name.
#[derive(Clone, Debug)]
pub struct XdsResource {
    type_url: &'static str,
    name: String,
    any: Any,
}

impl XdsResource {
    /// A resource from any message (including one a test wants invalid) of `type_url`.
    pub fn raw(type_url: &'static str, name: impl Into<String>, message: &impl Message) -> Self {
        Self {
            type_url,
            name: name.into(),
            any: Any {
                type_url: type_url.to_owned(),
                value: message.encode_to_vec(),
            },
        }
    }

    /// The resource's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[derive(Default)]
struct TypeState {
    version: u64,
    resources: BTreeMap<String, Any>,
}

struct StreamState {
    id: u64,
    tx: mpsc::UnboundedSender<Result<DiscoveryResponse, Status>>,
    /// Subscribed names per type, as last requested.
    subscribed: HashMap<String, Vec<String>>,
    /// The LDS/CDS types this stream subscribed to as a whole: its first request for
    /// them named nothing (the legacy wildcard). Names given later end it.
    wildcard: std::collections::HashSet<String>,
}

#[derive(Default)]
struct State {
    types: HashMap<&'static str, TypeState>,
    streams: Vec<StreamState>,
    next_stream: u64,
    next_nonce: u64,
    events: Vec<Event>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    event: Notify,
}

/// A running test control plane; see the [module docs](self).
pub struct ControlPlane {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    run: Mutex<Option<(JoinHandle<()>, Arc<Conns>)>>,
    /// How many events `wait_for` has consumed.
    cursor: Mutex<usize>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Starts a control plane on `127.0.0.1` with no resources.
    ///
    /// # Errors
    /// The listener could not be bound.
    pub async fn start() -> io::Result<Self> {
        Self::start_inner(None).await
    }

    /// Starts a control plane on `127.0.0.1` that serves over TLS with this config
    /// (a server certificate; a client CA too, to require mutual TLS).
    ///
    /// # Errors
    /// The listener could not be bound, or tonic refused the TLS config.
    pub async fn start_tls(tls: tonic::transport::ServerTlsConfig) -> io::Result<Self> {
        Self::start_inner(Some(tls)).await
    }

    async fn start_inner(tls: Option<tonic::transport::ServerTlsConfig>) -> io::Result<Self> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let run = serve(listener, &shared, tls.as_ref())?;
        Ok(Self {
            addr,
            shared,
            tls,
            run: Mutex::new(Some(run)),
            cursor: Mutex::new(0),
        })
    }

    /// Where it listens (the same across restarts).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A bootstrap JSON naming this control plane, with plaintext credentials.
    pub fn bootstrap_json(&self, node_id: &str) -> String {
        format!(
            r#"{{"xds_servers": [{{"server_uri": "{}", "channel_creds": [{{"type": "insecure"}}], "server_features": ["xds_v3"]}}], "node": {{"id": "{node_id}"}}}}"#,
            self.addr
        )
    }

    /// Sets (adds or replaces) resources of one type, bumps that type's version and
    /// sends the new state to every stream subscribed to it.
    ///
    /// # Panics
    /// If the resources are not all of one type.
    pub fn set(&self, resources: impl IntoIterator<Item = XdsResource>) {
        let mut state = lock(&self.shared.state);
        let mut touched = Vec::new();
        for r in resources {
            state
                .types
                .entry(r.type_url)
                .or_default()
                .resources
                .insert(r.name, r.any);
            if !touched.contains(&r.type_url) {
                touched.push(r.type_url);
            }
        }
        for type_url in touched {
            state.types.entry(type_url).or_default().version += 1;
            push(&mut state, type_url);
        }
    }

    /// Removes a resource and sends the new state of its type to subscribed streams.
    pub fn remove(&self, type_url: &'static str, name: &str) {
        let mut state = lock(&self.shared.state);
        let ty = state.types.entry(type_url).or_default();
        ty.resources.remove(name);
        ty.version += 1;
        push(&mut state, type_url);
    }

    /// The current version of a type (0 before the first `set`), as responses carry it.
    pub fn version(&self, type_url: &str) -> String {
        let state = lock(&self.shared.state);
        state
            .types
            .get(type_url)
            .map_or(0, |t| t.version)
            .to_string()
    }

    /// Waits for the next event (after those earlier calls returned) that satisfies
    /// `matches`, and returns it; the events before it are passed over. Wrap it in a
    /// timeout: it waits as long as it takes.
    pub async fn wait_for(&self, mut matches: impl FnMut(&Event) -> bool) -> Event {
        loop {
            let notified = self.shared.event.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = lock(&self.shared.state);
                let mut cursor = lock(&self.cursor);
                while *cursor < state.events.len() {
                    let event = &state.events[*cursor];
                    *cursor += 1;
                    if matches(event) {
                        return event.clone();
                    }
                }
            }
            notified.await;
        }
    }

    /// Waits for the ACK of the current version of `type_url` (a request carrying that
    /// version and no error).
    pub async fn wait_for_ack(&self, type_url: &str) -> Event {
        let version = self.version(type_url);
        self.wait_for(|e| e.type_url == type_url && e.version_info == version && !e.is_nack())
            .await
    }

    /// Waits for a NACK of `type_url`.
    pub async fn wait_for_nack(&self, type_url: &str) -> Event {
        self.wait_for(|e| e.type_url == type_url && e.is_nack())
            .await
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.shared.state).events.clone()
    }

    /// Stops at once: the listener and every stream close. Resources are kept.
    pub async fn kill(&self) {
        let run = lock(&self.run).take();
        if let Some((task, conns)) = run {
            task.abort();
            conns.close_all();
            let _ = task.await;
        }
        lock(&self.shared.state).streams.clear();
    }

    /// Listens again on the same address, with the same resources.
    ///
    /// # Errors
    /// The address could not be bound again.
    pub async fn restart(&self) -> io::Result<()> {
        self.kill().await;
        let listener = std::net::TcpListener::bind(self.addr)?;
        *lock(&self.run) = Some(serve(listener, &self.shared, self.tls.as_ref())?);
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some((task, conns)) = lock(&self.run).take() {
            task.abort();
            conns.close_all();
        }
    }
}

fn serve(
    listener: std::net::TcpListener,
    shared: &Arc<Shared>,
    tls: Option<&tonic::transport::ServerTlsConfig>,
) -> io::Result<(JoinHandle<()>, Arc<Conns>)> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let conns = Arc::new(Conns::default());
    let incoming = Incoming::new(listener, conns.clone());
    let service = AggregatedDiscoveryServiceServer::new(Ads(shared.clone()));
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls.clone()).map_err(io::Error::other)?;
    }
    let task = tokio::spawn(async move {
        let _ = server
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    Ok((task, conns))
}

/// Sends the current state of `type_url` to every stream subscribed to it.
fn push(state: &mut State, type_url: &'static str) {
    let State {
        types,
        streams,
        next_nonce,
        ..
    } = state;
    let ty = types.entry(type_url).or_default();
    for stream in streams.iter() {
        if stream.subscribed.contains_key(type_url) {
            *next_nonce += 1;
            let _ = stream
                .tx
                .send(Ok(response(type_url, ty, stream, *next_nonce)));
        }
    }
}

fn response(type_url: &str, ty: &TypeState, stream: &StreamState, nonce: u64) -> DiscoveryResponse {
    let names = stream
        .subscribed
        .get(type_url)
        .map_or(&[][..], Vec::as_slice);
    let wildcard = stream.wildcard.contains(type_url);
    let resources = ty
        .resources
        .iter()
        .filter(|(name, _)| wildcard || names.contains(name))
        .map(|(_, any)| any.clone())
        .collect();
    DiscoveryResponse {
        version_info: ty.version.to_string(),
        resources,
        type_url: type_url.to_owned(),
        nonce: nonce.to_string(),
        ..Default::default()
    }
}

fn static_type(type_url: &str) -> Option<&'static str> {
    [
        type_url::LISTENER,
        type_url::ROUTE,
        type_url::CLUSTER,
        type_url::ENDPOINTS,
    ]
    .into_iter()
    .find(|t| *t == type_url)
}

struct Ads(Arc<Shared>);

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let id = {
            let mut state = lock(&self.0.state);
            state.next_stream += 1;
            let id = state.next_stream;
            state.streams.push(StreamState {
                id,
                tx,
                subscribed: HashMap::new(),
                wildcard: Default::default(),
            });
            id
        };
        let shared = self.0.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = requests.message().await {
                on_request(&shared, id, req);
            }
            lock(&shared.state).streams.retain(|s| s.id != id);
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        Err(Status::unimplemented(
            "the test control plane serves state of the world only",
        ))
    }
}

/// Records the request; answers a new or changed subscription with the current state.
fn on_request(shared: &Shared, id: u64, req: DiscoveryRequest) {
    let mut state = lock(&shared.state);
    state.events.push(Event {
        stream: id,
        type_url: req.type_url.clone(),
        version_info: req.version_info.clone(),
        response_nonce: req.response_nonce.clone(),
        resource_names: req.resource_names.clone(),
        error: req.error_detail.as_ref().map(|s| s.message.clone()),
        node_id: req.node.as_ref().map(|n| n.id.clone()),
    });
    shared.event.notify_waiters();
    let Some(type_url) = static_type(&req.type_url) else {
        return;
    };
    let State {
        types,
        streams,
        next_nonce,
        ..
    } = &mut *state;
    let Some(stream) = streams.iter_mut().find(|s| s.id == id) else {
        return;
    };
    let mut names = req.resource_names;
    names.sort();
    let changed = stream.subscribed.get(type_url) != Some(&names);
    if !changed {
        // An ACK or NACK of what was sent: nothing new to say.
        return;
    }
    // An empty first request for LDS or CDS subscribes to all of the type (the legacy
    // wildcard); for RDS and EDS, or after names were given, it subscribes to nothing.
    let first = !stream.subscribed.contains_key(type_url);
    let wildcard_type = type_url == type_url::LISTENER || type_url == type_url::CLUSTER;
    if names.is_empty() && first && wildcard_type {
        stream.wildcard.insert(type_url.to_owned());
    } else if !names.is_empty() {
        stream.wildcard.remove(type_url);
    }
    stream.subscribed.insert(type_url.to_owned(), names);
    let ty = types.entry(type_url).or_default();
    if ty.version == 0 {
        // Nothing set for this type yet: the first `set` will push it.
        return;
    }
    *next_nonce += 1;
    let _ = stream
        .tx
        .send(Ok(response(type_url, ty, stream, *next_nonce)));
}

// === resource helpers ===

fn any_of<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

fn ads() -> core::ConfigSource {
    core::ConfigSource {
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

/// Where an API listener's routes are.
#[derive(Clone, Debug)]
pub enum Routes {
    /// A route configuration inside the listener.
    Inline(Box<rds::RouteConfiguration>),
    /// The name of an RDS resource.
    Rds(String),
}

/// An LDS resource: an API listener with an HttpConnectionManager whose only filter
/// is the router.
pub fn listener(name: &str, routes: Routes) -> XdsResource {
    listener_with(name, &http_connection_manager(routes))
}

/// The HttpConnectionManager [`listener`] puts in its API listener (the router filter
/// only), for tests that change fields before [`listener_with`].
pub fn http_connection_manager(routes: Routes) -> hcm::HttpConnectionManager {
    let route_specifier = match routes {
        Routes::Inline(rc) => hcm::http_connection_manager::RouteSpecifier::RouteConfig(*rc),
        Routes::Rds(route_config_name) => {
            hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
                config_source: Some(ads()),
                route_config_name,
            })
        }
    };
    hcm::HttpConnectionManager {
        route_specifier: Some(route_specifier),
        http_filters: vec![hcm::HttpFilter {
            name: "envoy.filters.http.router".to_owned(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any_of(
                &Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// An LDS resource: an API listener holding this HttpConnectionManager.
pub fn listener_with(name: &str, manager: &hcm::HttpConnectionManager) -> XdsResource {
    let listener = lds::Listener {
        name: name.to_owned(),
        api_listener: Some(lds::ApiListener {
            api_listener: Some(any_of(manager)),
        }),
        ..Default::default()
    };
    XdsResource::raw(type_url::LISTENER, name, &listener)
}

/// A route configuration with one virtual host for `domains` whose catch-all route
/// (prefix `""`) goes to `cluster`.
pub fn route_config(name: &str, domains: &[&str], cluster: &str) -> rds::RouteConfiguration {
    rds::RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![rds::VirtualHost {
            name: format!("{name}-vh"),
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            routes: vec![rds::Route {
                r#match: Some(rds::RouteMatch {
                    path_specifier: Some(rds::route_match::PathSpecifier::Prefix(String::new())),
                    ..Default::default()
                }),
                action: Some(rds::route::Action::Route(rds::RouteAction {
                    cluster_specifier: Some(rds::route_action::ClusterSpecifier::Cluster(
                        cluster.to_owned(),
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// An RDS resource from a route configuration.
pub fn route(config: rds::RouteConfiguration) -> XdsResource {
    let name = config.name.clone();
    XdsResource::raw(type_url::ROUTE, name, &config)
}

/// A CDS resource: an EDS cluster over ADS with ROUND_ROBIN, whose EDS resource is
/// `eds_service_name`.
pub fn cluster(name: &str, eds_service_name: &str) -> XdsResource {
    XdsResource::raw(
        type_url::CLUSTER,
        name,
        &cluster_proto(name, eds_service_name),
    )
}

/// The Cluster message [`cluster`] wraps, for tests that change fields.
pub fn cluster_proto(name: &str, eds_service_name: &str) -> cds::Cluster {
    cds::Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cds::cluster::ClusterDiscoveryType::Type(
            cds::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cds::cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: eds_service_name.to_owned(),
        }),
        lb_policy: cds::cluster::LbPolicy::RoundRobin as i32,
        ..Default::default()
    }
}

/// An endpoint's health as EDS reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// UNKNOWN (gets calls).
    Unknown,
    /// HEALTHY (gets calls).
    Healthy,
    /// UNHEALTHY (gets none).
    Unhealthy,
    /// DRAINING (gets none).
    Draining,
}

/// One locality of an EDS resource.
#[derive(Clone, Debug)]
pub struct LocalityEndpoints {
    /// `priority` (0 is preferred).
    pub priority: u32,
    /// `load_balancing_weight` (0 drops the locality).
    pub weight: u32,
    /// The endpoints and their health.
    pub endpoints: Vec<(SocketAddr, Health)>,
    /// Endpoints' `load_balancing_weight`, where set (unset elsewhere).
    pub endpoint_weights: Vec<(SocketAddr, u32)>,
}

impl LocalityEndpoints {
    /// Priority 0, weight 1, these endpoints.
    pub fn new(endpoints: impl IntoIterator<Item = (SocketAddr, Health)>) -> Self {
        Self {
            priority: 0,
            weight: 1,
            endpoints: endpoints.into_iter().collect(),
            endpoint_weights: Vec::new(),
        }
    }
}

/// An EDS resource.
pub fn endpoints(name: &str, localities: &[LocalityEndpoints]) -> XdsResource {
    XdsResource::raw(
        type_url::ENDPOINTS,
        name,
        &endpoints_proto(name, localities),
    )
}

/// The ClusterLoadAssignment message [`endpoints`] wraps.
pub fn endpoints_proto(name: &str, localities: &[LocalityEndpoints]) -> eds::ClusterLoadAssignment {
    let endpoints = localities
        .iter()
        .enumerate()
        .map(|(i, loc)| eds::LocalityLbEndpoints {
            locality: Some(core::Locality {
                region: "test".to_owned(),
                zone: format!("zone-{i}"),
                ..Default::default()
            }),
            load_balancing_weight: Some(UInt32Value { value: loc.weight }),
            priority: loc.priority,
            lb_endpoints: loc
                .endpoints
                .iter()
                .map(|(addr, health)| eds::LbEndpoint {
                    load_balancing_weight: loc
                        .endpoint_weights
                        .iter()
                        .find(|(a, _)| a == addr)
                        .map(|(_, value)| UInt32Value { value: *value }),
                    health_status: match health {
                        Health::Unknown => core::HealthStatus::Unknown,
                        Health::Healthy => core::HealthStatus::Healthy,
                        Health::Unhealthy => core::HealthStatus::Unhealthy,
                        Health::Draining => core::HealthStatus::Draining,
                    } as i32,
                    host_identifier: Some(eds::lb_endpoint::HostIdentifier::Endpoint(
                        eds::Endpoint {
                            address: Some(core::Address {
                                address: Some(core::address::Address::SocketAddress(
                                    core::SocketAddress {
                                        address: addr.ip().to_string(),
                                        port_specifier: Some(
                                            core::socket_address::PortSpecifier::PortValue(
                                                u32::from(addr.port()),
                                            ),
                                        ),
                                        ..Default::default()
                                    },
                                )),
                            }),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    eds::ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints,
        ..Default::default()
    }
}
