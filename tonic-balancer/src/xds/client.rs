//! The xDS client: one ADS stream (state of the world, v3) to one control plane, shared
//! by every channel that watches resources through it.
//!
//! Watchers subscribe to a resource by type and name and receive its state on a
//! `watch` channel; the stream task keeps the union of what is watched subscribed,
//! ACKs every response whose resources all validate and NACKs the others, and keeps
//! the last good value of each resource for as long as it is watched, through
//! disconnections of the control plane.

use super::bootstrap::{Bootstrap, ChannelCreds};
use super::resource::{self, Kind, Resource};
use crate::backoff::{Backoff, BackoffParams};
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::service::discovery::v3::{
    DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use envoy_types::pb::google::protobuf as pbuf;
use envoy_types::pb::google::rpc;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

/// How long a subscribed resource may go unanswered before it is taken as not existing
/// (gRFC A27: 15 s). The timer runs only while the stream is up.
pub(crate) const DOES_NOT_EXIST_TIMEOUT: Duration = Duration::from_secs(15);

/// Reconnection backoff to the control plane: gRPC's connection backoff (1 s initial,
/// ×1.6, at most 120 s, ±20 %).
const RECONNECT_BACKOFF: BackoffParams = BackoffParams {
    initial: Duration::from_secs(1),
    multiplier: 1.6,
    max: Duration::from_secs(120),
    jitter: 0.2,
};

/// The state of one watched resource, as its watchers see it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ResourceState {
    /// Subscribed; nothing heard yet.
    Waiting,
    /// The last good value (kept through later invalid versions and disconnections).
    Value(Arc<Resource>),
    /// The resource was never valid: the reason it was NACKed.
    Invalid(String),
    /// The control plane says it does not exist (deleted, or the 15 s timer fired).
    DoesNotExist,
}

// === impl XdsClient ===

/// A client of one xDS control plane, shared by every channel of the process that uses
/// the same bootstrap server and node (see [`XdsClient::shared`]). Cloning is cheap;
/// the ADS stream ends when the last clone and the last watch are dropped.
#[derive(Clone)]
pub struct XdsClient {
    shared: Arc<Shared>,
}

struct Shared {
    bootstrap: Bootstrap,
    cache: Mutex<Cache>,
    /// Wakes the stream task when the set of watched names changed.
    changed: Arc<Notify>,
    /// The stream task, stopped when the last handle goes.
    task: OnceLock<tokio::task::AbortHandle>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

impl fmt::Debug for XdsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdsClient")
            .field("server_uri", &self.shared.bootstrap.server.server_uri)
            .field("node_id", &self.shared.bootstrap.node.id)
            .finish_non_exhaustive()
    }
}

/// A control plane as the pool tells them apart: its URI, credentials and features
/// (`Debug` forms), and the node id.
type PoolKey = (String, String, String);

/// The clients of this process, one per control plane and node id: channels that share
/// a control plane share its stream.
static POOL: Mutex<Option<HashMap<PoolKey, Weak<Shared>>>> = Mutex::new(None);

impl XdsClient {
    /// A new client with its own ADS stream to `bootstrap`'s control plane, started on
    /// the current tokio runtime. Most code wants [`XdsClient::shared`] instead.
    ///
    /// # Panics
    /// Outside a tokio runtime (as `tokio::spawn`).
    pub fn new(bootstrap: Bootstrap) -> Self {
        let changed = Arc::new(Notify::new());
        let shared = Arc::new(Shared {
            bootstrap: bootstrap.clone(),
            cache: Mutex::new(Cache::default()),
            changed: changed.clone(),
            task: OnceLock::new(),
        });
        let task = tokio::spawn(run(Arc::downgrade(&shared), changed, bootstrap));
        let _ = shared.task.set(task.abort_handle());
        Self { shared }
    }

    /// The process's client for this bootstrap's control plane (URI, credentials,
    /// features) and node: the one already running if a channel still uses it, else a
    /// new one. Its stream runs on the tokio runtime that started it; if that runtime
    /// has shut down, a new client is started on the current one.
    ///
    /// # Panics
    /// Outside a tokio runtime (as `tokio::spawn`), when a new client must be started.
    pub fn shared(bootstrap: Bootstrap) -> Self {
        let server = &bootstrap.server;
        // The whole node (not only its id): a client says who it is once per stream.
        let key = (
            server.server_uri.clone(),
            format!("{:?} {:?}", server.channel_creds, server.server_features),
            format!("{:?}", bootstrap.node),
        );
        let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        let pool = pool.get_or_insert_with(HashMap::new);
        pool.retain(|_, weak| weak.strong_count() > 0);
        // A client whose stream task has ended (its runtime shut down) serves nobody:
        // a new one replaces it.
        let running = |shared: &Arc<Shared>| shared.task.get().is_none_or(|t| !t.is_finished());
        if let Some(shared) = pool.get(&key).and_then(Weak::upgrade).filter(running) {
            return Self { shared };
        }
        let client = Self::new(bootstrap);
        pool.insert(key, Arc::downgrade(&client.shared));
        client
    }

    /// The bootstrap this client was made from.
    pub fn bootstrap(&self) -> &Bootstrap {
        &self.shared.bootstrap
    }

    /// Starts watching a resource; the state changes as responses arrive. The
    /// subscription lasts as long as the returned [`Watch`].
    pub(crate) fn watch(&self, kind: Kind, name: &str) -> Watch {
        let mut cache = self.shared.lock();
        let ty = &mut cache.types[kind.index()];
        let entry = ty.entries.entry(name.to_owned()).or_insert_with(|| {
            ty.dirty = true;
            Entry {
                state: watch::channel(ResourceState::Waiting).0,
                watchers: 0,
                dne_deadline: None,
            }
        });
        entry.watchers += 1;
        let rx = entry.state.subscribe();
        let dirty = ty.dirty;
        drop(cache);
        if dirty {
            self.shared.changed.notify_one();
        }
        Watch {
            client: self.clone(),
            kind,
            name: name.to_owned(),
            rx,
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl Watch ===

/// One subscription to one resource; unsubscribes when dropped.
pub(crate) struct Watch {
    client: XdsClient,
    kind: Kind,
    name: String,
    pub(crate) rx: watch::Receiver<ResourceState>,
}

impl Watch {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let shared = &self.client.shared;
        let mut cache = shared.lock();
        let ty = &mut cache.types[self.kind.index()];
        if let Some(entry) = ty.entries.get_mut(&self.name) {
            entry.watchers -= 1;
            if entry.watchers == 0 {
                // The entry goes when the next request is built, not now: a watch made
                // again before then finds the value the control plane will not resend
                // (its view of the subscription never changed).
                ty.dirty = true;
                drop(cache);
                shared.changed.notify_one();
            }
        }
    }
}

// === the stream ===

#[derive(Default)]
struct Cache {
    types: [TypeState; 4],
}

#[derive(Default)]
struct TypeState {
    entries: HashMap<String, Entry>,
    /// The version of the last accepted response, sent in every request.
    version: String,
    /// The nonce of the last response on this stream.
    nonce: String,
    /// The watched names changed since the last request.
    dirty: bool,
    /// A request for this type went out on this stream.
    requested: bool,
}

struct Entry {
    state: watch::Sender<ResourceState>,
    watchers: usize,
    dne_deadline: Option<Instant>,
}

impl Entry {
    fn set(&self, state: ResourceState) {
        self.state.send_if_modified(|s| {
            if *s == state {
                false
            } else {
                *s = state;
                true
            }
        });
    }

    fn has_heard(&self) -> bool {
        !matches!(*self.state.borrow(), ResourceState::Waiting)
    }
}

/// Keeps an ADS stream to the control plane up for as long as the client lives.
///
/// It holds the client weakly, never across an await, so dropping the last handle ends it.
async fn run(shared: Weak<Shared>, changed: Arc<Notify>, bootstrap: Bootstrap) {
    let mut backoff = Backoff::new(RECONNECT_BACKOFF);
    // Jitter only spreads reconnections out: any seed that differs per process will do.
    let seed = std::hash::BuildHasher::hash_one(
        &std::collections::hash_map::RandomState::new(),
        std::process::id(),
    );
    let mut rng = SmallRng::seed_from_u64(seed);
    loop {
        let heard = match stream_once(&shared, &changed, &bootstrap).await {
            Ok(never) => match never {},
            Err(StreamEnd::ClientGone) => return,
            Err(StreamEnd::Failed { heard, error }) => {
                tracing::debug!(
                    server = %bootstrap.server.server_uri,
                    %error,
                    "xDS stream to the control plane ended"
                );
                heard
            }
        };
        // A stream that got at least one response proved the control plane works:
        // start the backoff over (gRFC A27 leaves this to the connection backoff).
        if heard {
            backoff.reset();
        }
        {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let mut cache = shared.lock();
            for ty in &mut cache.types {
                ty.nonce.clear();
                ty.requested = false;
                for entry in ty.entries.values_mut() {
                    // The does-not-exist timer runs only while connected.
                    entry.dne_deadline = None;
                }
            }
        }
        tokio::time::sleep(backoff.next_delay(&mut rng)).await;
    }
}

enum StreamEnd {
    ClientGone,
    Failed { heard: bool, error: String },
}

fn endpoint_uri(uri: &str, creds: &ChannelCreds) -> Result<String, String> {
    let address = super::bootstrap::control_plane_address(uri)?;
    if address.contains("://") {
        return Ok(address);
    }
    Ok(match creds {
        ChannelCreds::Insecure => format!("http://{address}"),
        ChannelCreds::Tls(_) => format!("https://{address}"),
    })
}

/// The endpoint to the control plane, with TLS set up from the credential files.
fn endpoint(bootstrap: &Bootstrap) -> Result<tonic::transport::Endpoint, String> {
    let server = &bootstrap.server;
    let uri = endpoint_uri(&server.server_uri, &server.channel_creds)?;
    // The ADS stream stays open for the client's life: HTTP/2 PINGs while it is open
    // notice a control plane that went silent (a half-open connection) and reconnect.
    // Every 5 minutes is what servers allow by default.
    let endpoint = tonic::transport::Endpoint::from_shared(uri.clone())
        .map_err(|e| format!("server_uri {uri:?}: {e}"))?
        .connect_timeout(Duration::from_secs(20))
        .http2_keep_alive_interval(Duration::from_secs(300))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(false);
    match &server.channel_creds {
        ChannelCreds::Insecure => Ok(endpoint),
        ChannelCreds::Tls(creds) => tls_endpoint(endpoint, creds),
    }
}

/// TLS from the files of `"tls"` credentials, read at every connection so that rotated
/// files are used from the next reconnection on.
#[cfg(feature = "tls")]
fn tls_endpoint(
    endpoint: tonic::transport::Endpoint,
    creds: &super::bootstrap::TlsCreds,
) -> Result<tonic::transport::Endpoint, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("channel_creds tls: {}: {e}", path.display()))
    };
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&creds.ca_certificate_file)?));
    if let Some((cert, key)) = &creds.identity {
        config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    endpoint
        .tls_config(config)
        .map_err(|e| format!("channel_creds tls: {e}"))
}

#[cfg(not(feature = "tls"))]
fn tls_endpoint(
    _endpoint: tonic::transport::Endpoint,
    _creds: &super::bootstrap::TlsCreds,
) -> Result<tonic::transport::Endpoint, String> {
    // The bootstrap parser chooses "tls" only with the feature on.
    Err("channel_creds tls needs the `tls` feature of tonic-balancer".to_owned())
}

/// One ADS stream, from connecting to its end: it only ends by failing or by the client
/// going away.
async fn stream_once(
    shared: &Weak<Shared>,
    changed: &Notify,
    bootstrap: &Bootstrap,
) -> Result<std::convert::Infallible, StreamEnd> {
    let failed = |heard: bool, error: String| StreamEnd::Failed { heard, error };
    let endpoint = endpoint(bootstrap).map_err(|e| failed(false, e))?;
    let uri = endpoint.uri().clone();
    let channel = endpoint.connect().await.map_err(|e| {
        failed(
            false,
            format!("connect to {uri}: {}", crate::error::chain(&e)),
        )
    })?;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::unbounded_channel::<DiscoveryRequest>();
    let mut node = Some(node_proto(bootstrap));
    // Every watched type is asked for again on a new stream.
    {
        let Some(shared) = shared.upgrade() else {
            return Err(StreamEnd::ClientGone);
        };
        let mut cache = shared.lock();
        send_dirty(&mut cache, &tx, &mut node, true);
    }
    let outbound =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|req| (req, rx)) },
        );
    let mut inbound = client
        .stream_aggregated_resources(outbound)
        .await
        .map_err(|s| failed(false, format!("ADS stream: {}", s.message())))?
        .into_inner();
    let mut heard = false;
    let upgrade = || shared.upgrade().ok_or(StreamEnd::ClientGone);
    loop {
        let next_dne = upgrade()?
            .lock()
            .types
            .iter()
            .flat_map(|t| t.entries.values().filter_map(|e| e.dne_deadline))
            .min();
        let timer = async {
            match next_dne {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(response)) => {
                    heard = true;
                    let shared = upgrade()?;
                    let mut cache = shared.lock();
                    handle_response(&mut cache, response, &tx, &bootstrap.server);
                }
                Ok(None) => return Err(failed(heard, "the control plane closed the stream".into())),
                Err(status) => return Err(failed(heard, format!("ADS stream: {status}"))),
            },
            () = changed.notified() => {
                let shared = upgrade()?;
                let mut cache = shared.lock();
                send_dirty(&mut cache, &tx, &mut node, false);
            }
            () = timer => {
                let now = Instant::now();
                let shared = upgrade()?;
                let mut cache = shared.lock();
                for ty in &mut cache.types {
                    for entry in ty.entries.values_mut() {
                        if entry.dne_deadline.is_some_and(|at| at <= now) {
                            entry.dne_deadline = None;
                            entry.set(ResourceState::DoesNotExist);
                        }
                    }
                }
            }
        }
    }
}

/// Sends a request for every type whose watched names changed (or every watched type,
/// on a new stream), and starts the does-not-exist timer of names not heard of yet.
fn send_dirty(
    cache: &mut Cache,
    tx: &mpsc::UnboundedSender<DiscoveryRequest>,
    node: &mut Option<core::Node>,
    all: bool,
) {
    let now = Instant::now();
    for kind in Kind::ALL {
        let ty = &mut cache.types[kind.index()];
        let wanted = if all {
            ty.entries.values().any(|e| e.watchers > 0)
        } else {
            ty.dirty
        };
        ty.dirty = false;
        if !wanted {
            continue;
        }
        for entry in ty.entries.values_mut() {
            if !entry.has_heard() && entry.dne_deadline.is_none() {
                entry.dne_deadline = Some(now + DOES_NOT_EXIST_TIMEOUT);
            }
        }
        let resource_names = sorted_names(ty);
        // Nothing watched and nothing asked for on this stream: nothing to take back.
        // (An empty list would be a wildcard for LDS and CDS, gRFC A27.)
        if resource_names.is_empty() && !ty.requested {
            continue;
        }
        let request = DiscoveryRequest {
            version_info: ty.version.clone(),
            node: node.take(),
            resource_names,
            type_url: kind.type_url(),
            response_nonce: ty.nonce.clone(),
            ..Default::default()
        };
        ty.requested = true;
        let _ = tx.send(request);
    }
}

/// The names to request: the watched ones. Entries nobody watches any more are dropped
/// here, as the request that unsubscribes them is built.
fn sorted_names(ty: &mut TypeState) -> Vec<String> {
    ty.entries.retain(|_, e| e.watchers > 0);
    let mut names: Vec<String> = ty.entries.keys().cloned().collect();
    names.sort();
    names
}

/// Applies one response to the cache, then ACKs or NACKs it.
fn handle_response(
    cache: &mut Cache,
    response: DiscoveryResponse,
    tx: &mpsc::UnboundedSender<DiscoveryRequest>,
    server: &super::bootstrap::XdsServer,
) {
    // A type this client does not know, or did not request on this stream, is NACKed
    // whole: ACKing it with no names would subscribe to every resource of the type
    // (the legacy wildcard).
    let nack_type = |why: &str| {
        let _ = tx.send(DiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            error_detail: Some(invalid_argument(format!(
                "type {} {why}",
                response.type_url
            ))),
            ..Default::default()
        });
    };
    let Some(kind) = Kind::from_type_url(&response.type_url) else {
        return nack_type("is not one this client asked for");
    };
    let ty = &mut cache.types[kind.index()];
    if !ty.requested {
        return nack_type("was not requested on this stream");
    }
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    // A resource that could not be decoded far enough to name it might be any of the
    // cached ones: none is taken as deleted by its absence then.
    let mut unnamed = false;
    for any in &response.resources {
        match resource::decode(kind, any) {
            Ok((name, value)) => {
                if let Some(entry) = ty.entries.get_mut(&name) {
                    entry.dne_deadline = None;
                    entry.set(ResourceState::Value(Arc::new(value)));
                }
                seen.insert(name);
            }
            Err(invalid) => {
                match &invalid.name {
                    Some(name) => {
                        errors.push(format!("{name}: {}", invalid.reason));
                        if let Some(entry) = ty.entries.get_mut(name) {
                            entry.dne_deadline = None;
                            // Keep the last good value; report the error only when
                            // there never was one.
                            if !matches!(*entry.state.borrow(), ResourceState::Value(_)) {
                                entry.set(ResourceState::Invalid(invalid.reason.clone()));
                            }
                        }
                        seen.insert(name.clone());
                    }
                    None => {
                        unnamed = true;
                        errors.push(invalid.reason);
                    }
                }
            }
        }
    }
    if kind.absence_deletes() && !unnamed && !server.has_feature("ignore_resource_deletion") {
        for (name, entry) in &ty.entries {
            if !seen.contains(name) && entry.has_heard() {
                entry.set(ResourceState::DoesNotExist);
            }
        }
    }
    let error_detail = if errors.is_empty() {
        ty.version = response.version_info;
        None
    } else {
        Some(invalid_argument(errors.join("; ")))
    };
    ty.nonce = response.nonce;
    let _ = tx.send(DiscoveryRequest {
        version_info: ty.version.clone(),
        resource_names: sorted_names(ty),
        type_url: kind.type_url(),
        response_nonce: ty.nonce.clone(),
        error_detail,
        ..Default::default()
    });
}

fn invalid_argument(message: String) -> rpc::Status {
    rpc::Status {
        code: tonic::Code::InvalidArgument as i32,
        message,
        details: Vec::new(),
    }
}

fn node_proto(bootstrap: &Bootstrap) -> core::Node {
    let node = &bootstrap.node;
    core::Node {
        id: node.id.clone(),
        cluster: node.cluster.clone(),
        locality: node.locality.as_ref().map(|l| core::Locality {
            region: l.region.clone(),
            zone: l.zone.clone(),
            sub_zone: l.sub_zone.clone(),
        }),
        metadata: if node.metadata.is_empty() {
            None
        } else {
            Some(json_struct(&node.metadata))
        },
        user_agent_name: "tonic-balancer".to_owned(),
        user_agent_version_type: Some(core::node::UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").to_owned(),
        )),
        // As gRPC clients say: EDS overprovisioning factors are ignored.
        client_features: vec!["envoy.lb.does_not_support_overprovisioning".to_owned()],
        ..Default::default()
    }
}

fn json_struct(map: &serde_json::Map<String, serde_json::Value>) -> pbuf::Struct {
    pbuf::Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), json_value(v)))
            .collect(),
    }
}

fn json_value(value: &serde_json::Value) -> pbuf::Value {
    use pbuf::value::Kind as K;
    use serde_json::Value as J;
    let kind = match value {
        J::Null => K::NullValue(0),
        J::Bool(b) => K::BoolValue(*b),
        J::Number(n) => K::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => K::StringValue(s.clone()),
        J::Array(items) => K::ListValue(pbuf::ListValue {
            values: items.iter().map(json_value).collect(),
        }),
        J::Object(map) => K::StructValue(json_struct(map)),
    };
    pbuf::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Channels of one process share a client per control plane and node; another
    /// node (here, another cluster) gets its own.
    #[test]
    fn clients_are_shared_per_control_plane_and_node() {
        let rt = runtime();
        let _in = rt.enter();
        let bootstrap = Bootstrap::new("127.0.0.1:1", "shared-node");
        let first = XdsClient::shared(bootstrap.clone());
        let again = XdsClient::shared(bootstrap.clone());
        assert!(Arc::ptr_eq(&first.shared, &again.shared));
        let mut other = bootstrap;
        other.node.cluster = "another-cluster".into();
        let other = XdsClient::shared(other);
        assert!(!Arc::ptr_eq(&first.shared, &other.shared));
    }

    /// A client whose runtime has shut down (its stream task is gone) is not handed to
    /// a channel on another runtime: a new one is started there.
    #[test]
    fn a_client_whose_runtime_is_gone_is_replaced() {
        let bootstrap = Bootstrap::new("127.0.0.1:1", "runtime-node");
        let old_runtime = runtime();
        let old = {
            let _in = old_runtime.enter();
            XdsClient::shared(bootstrap.clone())
        };
        drop(old_runtime);
        let rt = runtime();
        let _in = rt.enter();
        let new = XdsClient::shared(bootstrap);
        assert!(!Arc::ptr_eq(&old.shared, &new.shared));
        let again = XdsClient::shared(new.bootstrap().clone());
        assert!(
            Arc::ptr_eq(&new.shared, &again.shared),
            "the live one is shared"
        );
    }
}
