//! Programmable in-process `grpc.testing.TestService` backends listening on real TCP sockets.
//!
//! Integration tests, examples and benchmarks use these to simulate a fleet on `127.0.0.1`:
//! every backend has its own latency distribution, injected failure rate, health status and
//! call counters, all adjustable while it runs, and can be [killed](Backend::kill) like a
//! crashed process (listener and every open connection closed at once) and
//! [restarted](Backend::restart) on the same address.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use tonic_balancer_testkit::{Backend, Latency};
//!
//! let backend = Backend::builder("b1")
//!     .latency(Latency::Fixed(Duration::from_millis(5)))
//!     .fail(0.1, tonic::Code::Unavailable)
//!     .start()
//!     .await?;
//! let uri = format!("http://{}", backend.addr());
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_core::Stream;
use health::{HealthService, HealthState};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Sleep;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_server::HealthServer;

use conn::{Conns, Incoming};
use pb::test_service_server::{TestService, TestServiceServer};
use pb::{
    EchoStatus, Empty, Payload, SimpleRequest, SimpleResponse, StreamingOutputCallRequest,
    StreamingOutputCallResponse,
};

mod conn;
pub mod dns;
pub mod faults;
mod health;

mod relay;
#[cfg(feature = "xds")]
pub mod xds;

pub use relay::Relay;

pub mod python;

/// Generated `grpc.testing` messages, client and server.
#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#[allow(clippy::all, clippy::pedantic, clippy::nursery)]
pub mod pb {
    tonic::include_proto!("grpc.testing");
}

/// Largest payload a backend agrees to generate; larger requests fail with `INVALID_ARGUMENT`.
const MAX_PAYLOAD: usize = 16 << 20;

/// Simulated service time of one call.
///
/// Sampled per call and slept with `tokio::time::sleep` (timers, not CPU).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub enum Latency {
    /// Respond immediately.
    #[default]
    None,
    /// Always this long.
    Fixed(Duration),
    /// Uniformly distributed in `[min, max]` (bounds are swapped if reversed).
    Uniform {
        /// Shortest latency.
        min: Duration,
        /// Longest latency.
        max: Duration,
    },
    /// Normally distributed, clamped at zero.
    Normal {
        /// Mean latency.
        mean: Duration,
        /// Standard deviation.
        std_dev: Duration,
    },
    /// Log-normally distributed (heavy tail); a non-finite `sigma` is treated as 0.
    LogNormal {
        /// Median latency, `exp(mu)`.
        median: Duration,
        /// Standard deviation of the underlying normal distribution.
        sigma: f64,
    },
}

impl Latency {
    fn sample(&self, rng: &mut SmallRng) -> Duration {
        let secs = |s: f64| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX);
        match *self {
            Latency::None => Duration::ZERO,
            Latency::Fixed(d) => d,
            Latency::Uniform { min, max } => {
                let (lo, hi) = (min.min(max), min.max(max));
                lo.saturating_add(secs((hi - lo).as_secs_f64() * rng.random::<f64>()))
            }
            Latency::Normal { mean, std_dev } => {
                let z: f64 = rng.sample(StandardNormal);
                secs(mean.as_secs_f64() + std_dev.as_secs_f64() * z)
            }
            Latency::LogNormal { median, sigma } => {
                let z: f64 = rng.sample(StandardNormal);
                let sigma = if sigma.is_finite() { sigma } else { 0.0 };
                secs(median.as_secs_f64() * (sigma * z).exp())
            }
        }
    }
}

/// Configures and starts a [`Backend`]; created by [`Backend::builder`].
#[derive(Debug)]
pub struct BackendBuilder {
    server_id: String,
    latency: Latency,
    failure: (f64, Code),
    seed: u64,
    health: bool,
    bind: SocketAddr,
    serving: ServeOptions,
}

impl BackendBuilder {
    /// Sets the simulated service time (default [`Latency::None`]).
    pub fn latency(mut self, latency: Latency) -> Self {
        self.latency = latency;
        self
    }

    /// Fails this fraction of calls (clamped to `[0, 1]`) with `code`, after the latency.
    /// `Code::Ok` disables failures.
    pub fn fail(mut self, fraction: f64, code: Code) -> Self {
        self.failure = (fraction, code);
        self
    }

    /// Seeds the random numbers behind latency and failures (default 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Whether to serve `grpc.health.v1.Health` (default true).
    pub fn health(mut self, enabled: bool) -> Self {
        self.health = enabled;
        self
    }

    /// Sets the listen address (default `127.0.0.1:0`, an ephemeral port).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Serves over TLS: the config carries the server's identity and,
    /// for mutual TLS, the CA that client certificates must chain to
    /// (`client_ca_root`). Kept across restarts.
    ///
    /// # Panics
    /// [`Self::start`] panics (inside tonic) if the config has no identity.
    pub fn tls(mut self, config: tonic::transport::ServerTlsConfig) -> Self {
        self.serving.tls = Some(config);
        self
    }

    /// Binds the listener and starts serving; connections can be made as soon as this returns.
    ///
    /// # Errors
    /// The listener could not be bound, or the TLS config was rejected.
    pub async fn start(self) -> io::Result<Backend> {
        let listener = std::net::TcpListener::bind(self.bind)?;
        let addr = listener.local_addr()?;
        let behaviour = Behaviour {
            latency: self.latency,
            failure: (clamp_fraction(self.failure.0), self.failure.1),
            scripted: (0, Code::Ok),
            pushback: None,
            seen: Vec::new(),
            rng: SmallRng::seed_from_u64(self.seed),
        };
        let (in_flight, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            server_id: self.server_id,
            hostname: addr.ip().to_string(),
            behaviour: Mutex::new(behaviour),
            calls: AtomicU64::new(0),
            in_flight,
        });
        let health = self.health.then(HealthState::new);
        let run = serve(listener, &shared, health.as_ref(), &self.serving)?;
        Ok(Backend {
            shared,
            addr,
            health,
            options: self.serving,
            run: Mutex::new(Some(run)),
        })
    }
}

/// A running (or killed) backend.
///
/// Dropping it stops it abruptly, like [`Backend::kill`]: connections are cut at once, while
/// the listener closes shortly after (use `kill().await` before rebinding the same port).
///
/// Not `Clone`; share it through an `Arc` if needed.
pub struct Backend {
    shared: Arc<Shared>,
    addr: SocketAddr,
    health: Option<Arc<HealthState>>,
    options: ServeOptions,
    run: Mutex<Option<Run>>,
}

impl Backend {
    /// Starts configuring a backend that reports `server_id` in its responses.
    pub fn builder(server_id: impl Into<String>) -> BackendBuilder {
        BackendBuilder {
            server_id: server_id.into(),
            latency: Latency::None,
            failure: (0.0, Code::Ok),
            seed: 0,
            health: true,
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            serving: ServeOptions::default(),
        }
    }

    /// Starts a backend with default settings on an ephemeral port of `127.0.0.1`.
    pub async fn start(server_id: impl Into<String>) -> io::Result<Backend> {
        Self::builder(server_id).start().await
    }

    /// The bound address; it stays the same across restarts.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The id reported in `SimpleResponse::server_id`.
    pub fn server_id(&self) -> &str {
        &self.shared.server_id
    }

    /// Changes the latency of subsequent calls.
    pub fn set_latency(&self, latency: Latency) {
        lock(&self.shared.behaviour).latency = latency;
    }

    /// Fails this fraction of subsequent calls (clamped to `[0, 1]`) with `code`;
    /// `Code::Ok` disables failures.
    pub fn set_failure(&self, fraction: f64, code: Code) {
        lock(&self.shared.behaviour).failure = (clamp_fraction(fraction), code);
    }

    /// Fails the next `n` calls with `code`, whatever the random failure rate says.
    pub fn fail_next(&self, n: u32, code: Code) {
        lock(&self.shared.behaviour).scripted = (n, code);
    }

    /// Sends `grpc-retry-pushback-ms: value` (verbatim: it may be negative or garbage)
    /// with every failure; `None` stops.
    pub fn set_pushback(&self, value: Option<&str>) {
        lock(&self.shared.behaviour).pushback = value.map(str::to_owned);
    }

    /// The gRPC metadata of every call received so far, oldest first.
    pub fn seen(&self) -> Vec<SeenRequest> {
        lock(&self.shared.behaviour).seen.clone()
    }

    /// Reports `SERVING` or `NOT_SERVING` for `""` and `grpc.testing.TestService`.
    /// Watch streams get the change at once; kept across restarts.
    pub fn set_serving(&self, serving: bool) {
        if let Some(health) = &self.health {
            health
                .serving
                .send_if_modified(|s| std::mem::replace(s, serving) != serving);
        }
    }

    /// Sends the current status again on every open health Watch stream, as a server
    /// whose health service republishes an unchanged status does (the protocol allows it).
    pub fn repeat_health_status(&self) {
        if let Some(health) = &self.health {
            health.serving.send_modify(|_| {});
        }
    }

    /// Health Watch messages sent so far, over every stream.
    pub fn health_messages(&self) -> u64 {
        self.health.as_ref().map_or(0, |h| *h.sent.borrow())
    }

    /// Waits until `n` health Watch messages have been sent in all (see
    /// [`Backend::health_messages`]); a stream delivers them in order.
    pub async fn wait_health_messages(&self, n: u64) {
        if let Some(health) = &self.health {
            let _ = health.sent.subscribe().wait_for(|sent| *sent >= n).await;
        }
    }

    /// Ends every open health Watch stream with UNAVAILABLE (the connection stays up),
    /// as a flaky health service would.
    pub fn break_health_streams(&self) {
        if let Some(health) = &self.health {
            health.breaks.send_modify(|n| *n += 1);
        }
    }

    /// Health Watch streams opened so far.
    pub fn health_watches(&self) -> u64 {
        self.health
            .as_ref()
            .map_or(0, |h| h.watches.load(Ordering::Relaxed))
    }

    /// Stops the way a well-behaved server does in a rolling restart, using
    /// [`GracefulShutdown`](tonic_balancer::health::GracefulShutdown): reports NOT_SERVING,
    /// keeps serving for `drain`, then stops accepting and finishes the calls in flight.
    /// Returns once it has stopped; [`restart`](Self::restart) serves again (SERVING).
    pub async fn stop_gracefully(&self, drain: Duration) {
        let run = lock(&self.run).take();
        let Some(mut run) = run else { return };
        if let Some(trigger) = run.graceful.take() {
            let _ = trigger.send(drain);
        }
        let _ = (&mut run.task).await;
        run.conns.close_all();
        self.set_serving(true);
        if let Some(health) = &self.health {
            health.ended.send_replace(false);
        }
    }

    /// Calls received so far (all methods, failed ones included); survives restarts.
    pub fn calls(&self) -> u64 {
        self.shared.calls.load(Ordering::Relaxed)
    }

    /// Calls currently being handled.
    pub fn in_flight(&self) -> usize {
        *self.shared.in_flight.borrow()
    }

    /// Resolves once at least `n` calls are in flight.
    pub async fn wait_in_flight(&self, n: usize) {
        let mut rx = self.shared.in_flight.subscribe();
        // Cannot fail: `self.shared` owns the sender.
        let _ = rx.wait_for(|&k| k >= n).await;
    }

    /// Resolves once no call is in flight (a cancelled call ends when the client resets
    /// its stream).
    pub async fn wait_idle(&self) {
        let mut rx = self.shared.in_flight.subscribe();
        // Cannot fail: `self.shared` owns the sender.
        let _ = rx.wait_for(|&k| k == 0).await;
    }

    /// Whether the backend is accepting connections.
    pub fn is_running(&self) -> bool {
        lock(&self.run)
            .as_ref()
            .is_some_and(|run| !run.task.is_finished())
    }

    /// Crashes the backend: closes the listener and every open connection at once, so
    /// in-flight calls fail and new connections are refused. No-op if not running.
    pub async fn kill(&self) {
        let run = lock(&self.run).take();
        if let Some(run) = run {
            run.stop();
            // The task was aborted: this only waits for the listener to be dropped.
            let _ = run.task.await;
        }
    }

    /// Serves again on the same address, with the same settings and health status.
    /// No-op if already running.
    pub async fn restart(&self) -> io::Result<()> {
        let mut run = lock(&self.run);
        if let Some(old) = run.take() {
            if !old.task.is_finished() {
                *run = Some(old);
                return Ok(());
            }
            old.stop();
        }
        let listener = std::net::TcpListener::bind(self.addr)?;
        *run = Some(serve(
            listener,
            &self.shared,
            self.health.as_ref(),
            &self.options,
        )?);
        Ok(())
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(run) = self
            .run
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            run.stop();
        }
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("server_id", &self.server_id())
            .field("addr", &self.addr)
            .field("running", &self.is_running())
            .field("calls", &self.calls())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

fn clamp_fraction(fraction: f64) -> f64 {
    if fraction.is_nan() {
        0.0
    } else {
        fraction.clamp(0.0, 1.0)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared by the handle and the service; outlives restarts.
struct Shared {
    server_id: String,
    hostname: String,
    behaviour: Mutex<Behaviour>,
    calls: AtomicU64,
    in_flight: watch::Sender<usize>,
}

struct Behaviour {
    latency: Latency,
    failure: (f64, Code),
    /// Calls still to fail, with their code, before the random failures apply.
    scripted: (u32, Code),
    /// `grpc-retry-pushback-ms` sent with every failure, verbatim.
    pushback: Option<String>,
    seen: Vec<SeenRequest>,
    rng: SmallRng,
}

/// What a backend saw of one request's gRPC metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SeenRequest {
    /// The `grpc-previous-rpc-attempts` header, if the call was a retry or hedge.
    pub previous_attempts: Option<u32>,
    /// The `grpc-timeout` header, decoded.
    pub timeout: Option<Duration>,
    /// A [`fingerprint`] of the `authorization` header, if the call carried one: enough
    /// to tell which credential a call used without keeping the secret.
    pub authorization: Option<u64>,
    /// When the backend received it.
    pub received: tokio::time::Instant,
}

/// A fingerprint of a header value, as [`SeenRequest::authorization`] records it:
/// `fingerprint(b"Bearer abc")` equals the fingerprint of a call that carried that
/// value. Stable within one process, not across builds.
pub fn fingerprint(value: &[u8]) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(value)
}

/// Counts a call, records its metadata and samples its fate.
fn begin(
    shared: &Arc<Shared>,
    metadata: &tonic::metadata::MetadataMap,
) -> (InFlight, Duration, Result<(), Status>) {
    shared.calls.fetch_add(1, Ordering::Relaxed);
    shared.in_flight.send_modify(|n| *n += 1);
    let header = |name| metadata.get(name).map(|v| v.as_bytes().to_vec());
    let seen = SeenRequest {
        previous_attempts: header("grpc-previous-rpc-attempts")
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.parse().ok()),
        timeout: header("grpc-timeout")
            .and_then(|v| tonic_balancer::deadline::decode_timeout(&v).ok()),
        authorization: header("authorization").map(|v| fingerprint(&v)),
        received: tokio::time::Instant::now(),
    };
    let mut guard = lock(&shared.behaviour);
    let b = &mut *guard;
    b.seen.push(seen);
    let delay = b.latency.sample(&mut b.rng);
    let code = if b.scripted.0 > 0 {
        b.scripted.0 -= 1;
        Some(b.scripted.1)
    } else {
        let (fraction, code) = b.failure;
        (b.rng.random::<f64>() < fraction && code != Code::Ok).then_some(code)
    };
    let outcome = match code {
        Some(code) => {
            let mut status = Status::new(code, format!("{}: injected failure", shared.server_id));
            if let Some(value) = b.pushback.as_deref().and_then(|v| v.parse().ok()) {
                status
                    .metadata_mut()
                    .insert("grpc-retry-pushback-ms", value);
            }
            Err(status)
        }
        None => Ok(()),
    };
    (InFlight(shared.clone()), delay, outcome)
}

/// Keeps a call counted in `in_flight` until dropped (also when the call is cancelled).
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n = n.saturating_sub(1));
    }
}

async fn delay(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

fn echo(status: Option<EchoStatus>) -> Result<(), Status> {
    match status {
        Some(s) if s.code != 0 => Err(Status::new(Code::from_i32(s.code), s.message)),
        _ => Ok(()),
    }
}

fn payload_len(size: i32) -> Result<usize, Status> {
    match usize::try_from(size).unwrap_or(0) {
        len if len > MAX_PAYLOAD => Err(Status::invalid_argument(format!(
            "payload of {len} bytes exceeds the limit of {MAX_PAYLOAD}"
        ))),
        len => Ok(len),
    }
}

fn payload(len: usize) -> Payload {
    Payload {
        body: vec![0; len],
        ..Default::default()
    }
}

struct Service(Arc<Shared>);

#[tonic::async_trait]
impl TestService for Service {
    async fn empty_call(&self, request: Request<Empty>) -> Result<Response<Empty>, Status> {
        let (_guard, latency, outcome) = begin(&self.0, request.metadata());
        delay(latency).await;
        outcome.map(|()| Response::new(Empty {}))
    }

    async fn unary_call(
        &self,
        request: Request<SimpleRequest>,
    ) -> Result<Response<SimpleResponse>, Status> {
        let (_guard, latency, outcome) = begin(&self.0, request.metadata());
        let req = request.into_inner();
        let len = payload_len(req.response_size)?;
        delay(latency).await;
        echo(req.response_status)?;
        outcome?;
        Ok(Response::new(SimpleResponse {
            payload: (len > 0).then(|| payload(len)),
            server_id: if req.fill_server_id {
                self.0.server_id.clone()
            } else {
                String::new()
            },
            hostname: self.0.hostname.clone(),
            ..Default::default()
        }))
    }

    type StreamingOutputCallStream = OutputStream;

    /// Sleeps the latency and applies the injected failure before the first message.
    async fn streaming_output_call(
        &self,
        request: Request<StreamingOutputCallRequest>,
    ) -> Result<Response<OutputStream>, Status> {
        let (guard, latency, outcome) = begin(&self.0, request.metadata());
        let req = request.into_inner();
        let steps = req.response_parameters.iter().map(|p| {
            let wait = Duration::from_micros(u64::try_from(p.interval_us).unwrap_or(0));
            Ok((payload_len(p.size)?, wait))
        });
        let steps = steps.collect::<Result<Vec<_>, Status>>()?.into_iter();
        delay(latency).await;
        outcome?;
        let end = echo(req.response_status).err();
        Ok(Response::new(OutputStream {
            steps,
            sleep: None,
            end,
            _guard: guard,
        }))
    }
}

/// Server stream of `StreamingOutputCall`; counts as in flight until dropped.
struct OutputStream {
    steps: std::vec::IntoIter<(usize, Duration)>,
    sleep: Option<(usize, Pin<Box<Sleep>>)>,
    end: Option<Status>,
    _guard: InFlight,
}

impl Stream for OutputStream {
    type Item = Result<StreamingOutputCallResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let len = match this.sleep.as_mut() {
            Some((len, sleep)) => {
                ready!(sleep.as_mut().poll(cx));
                let len = *len;
                this.sleep = None;
                len
            }
            None => match this.steps.next() {
                None => return Poll::Ready(this.end.take().map(Err)),
                Some((len, wait)) if wait.is_zero() => len,
                Some((len, wait)) => {
                    this.sleep = Some((len, Box::pin(tokio::time::sleep(wait))));
                    return Pin::new(this).poll_next(cx);
                }
            },
        };
        let msg = StreamingOutputCallResponse {
            payload: Some(payload(len)),
        };
        Poll::Ready(Some(Ok(msg)))
    }
}

/// One serving period, between `start`/`restart` and `kill`.
struct Run {
    task: JoinHandle<()>,
    conns: Arc<Conns>,
    /// Starts a graceful stop, draining for the duration sent.
    graceful: Option<oneshot::Sender<Duration>>,
}

impl Run {
    /// Aborts the accept loop and force-closes every accepted connection.
    fn stop(&self) {
        self.task.abort();
        self.conns.close_all();
    }
}

/// How a backend serves, beyond its behaviour: kept for restarts.
#[derive(Clone, Debug, Default)]
struct ServeOptions {
    tls: Option<tonic::transport::ServerTlsConfig>,
}

impl ServeOptions {
    fn server(&self) -> io::Result<tonic::transport::Server> {
        let server = tonic::transport::Server::builder();
        if let Some(tls) = &self.tls {
            return server.tls_config(tls.clone()).map_err(io::Error::other);
        }
        Ok(server)
    }
}

fn serve(
    listener: std::net::TcpListener,
    shared: &Arc<Shared>,
    health: Option<&Arc<HealthState>>,
    options: &ServeOptions,
) -> io::Result<Run> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let conns = Arc::new(Conns::default());
    let incoming = Incoming::new(listener, conns.clone());
    let health_service = health.map(|h| HealthServer::new(HealthService(h.clone())));
    let router = options
        .server()?
        .add_service(TestServiceServer::new(Service(shared.clone())))
        .add_optional_service(health_service);
    let (graceful, drain) = oneshot::channel::<Duration>();
    let health = health.cloned();
    let signal = async move {
        // Dropped without a send (a kill aborts the task instead): never shut down here.
        let Ok(drain) = drain.await else {
            return std::future::pending().await;
        };
        let marked = health.clone();
        let mark_down = move || async move {
            if let Some(health) = marked {
                health.serving.send_replace(false);
            }
        };
        tonic_balancer::health::GracefulShutdown::with(mark_down)
            .drain(drain)
            .on(async {})
            .await;
        // End open Watch streams, or tonic's graceful shutdown waits for them forever.
        if let Some(health) = health {
            health.ended.send_replace(true);
        }
    };
    let server_id = shared.server_id.clone();
    let task = tokio::spawn(async move {
        if let Err(error) = router.serve_with_incoming_shutdown(incoming, signal).await {
            tracing::warn!(%server_id, %error, "test backend stopped");
        }
    });
    Ok(Run {
        task,
        conns,
        graceful: Some(graceful),
    })
}
