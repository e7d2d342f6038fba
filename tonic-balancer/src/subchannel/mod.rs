//! Subchannels: one HTTP/2 connection per backend address, with its connectivity state.
//!
//! Each subchannel has a worker task that owns the connection's life: connect, report
//! READY, notice the connection end the moment its socket does, reconnect with gRPC's
//! connection backoff (grpc/grpc `doc/connection-backoff.md`). The worker reports every
//! state change to the channel's control task, which rebuilds the picker. Calls never
//! connect anything: they are only routed to subchannels that are READY.

mod conn;
mod connector;
mod health;
#[cfg(test)]
pub(crate) mod scripted;
pub(crate) mod status;

pub(crate) use conn::{
    ConnSettings, H2Body, Keepalive, Liveness, Outgoing, Sent, SentMark, prefetch,
};
pub(crate) use connector::TcpOptions;

use crate::backoff::{Backoff, BackoffParams};
use crate::connectivity::ConnectivityState;
use crate::load::{Accounting, Load};
use crate::resolver::Address;
use conn::Conn;

use rand::{SeedableRng, rngs::SmallRng};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;
use tonic::transport::Endpoint;

/// Makes the endpoint for an address; an error fails that connection attempt with its
/// message.
pub(crate) type EndpointMaker = Arc<dyn Fn(&Address) -> Result<Endpoint, String> + Send + Sync>;

/// Settings for how subchannels connect; see the builder for each field's meaning.
#[derive(Clone)]
pub(crate) struct ConnectSettings {
    pub(crate) backoff: BackoffParams,
    pub(crate) min_connect_timeout: Duration,
    pub(crate) endpoint: EndpointMaker,
    /// How new subchannels account their calls.
    pub(crate) accounting: Accounting,
    /// The `grpc.health.v1` service name to watch (`""`: the whole server), if health
    /// checking is on; a service config update may change it on live connections.
    pub(crate) health_service: watch::Receiver<Option<String>>,
    /// The TLS handshake every connection makes, if any.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::tls::TlsConnect>,
    /// TCP options, liveness and keepalive of every connection.
    pub(crate) conn: ConnSettings,
    /// The keepalive time of new connections, doubled each time a server answers
    /// keepalive PINGs with GOAWAY `too_many_pings` (gRFC A8). Shared by the channel.
    pub(crate) keepalive_time: Arc<AtomicU64>,
    /// Connection attempts of the channel that may run at once; see
    /// [`Builder::max_concurrent_connects`](crate::Builder::max_concurrent_connects).
    pub(crate) connects: Arc<tokio::sync::Semaphore>,
    /// Where connection attempts and disconnections are reported (OpenTelemetry).
    pub(crate) telemetry: Option<Arc<crate::stats::Telemetry>>,
}

/// The state of one subchannel that outlives its connections: its address, its state
/// and its load. Shared by the worker, the control task, the pickers and call guards.
#[derive(Debug)]
pub(crate) struct Subchannel {
    pub(crate) id: u64,
    pub(crate) address: Address,
    state: AtomicU8,
    pub(crate) load: Arc<Load>,
    /// Set by the control task while outlier detection has it ejected.
    pub(crate) ejected: AtomicBool,
    pub(crate) ejections: AtomicU64,
}

impl Subchannel {
    pub(crate) fn state(&self) -> ConnectivityState {
        ConnectivityState::from_u8(self.state.load(Ordering::Acquire))
    }

    fn set_state(&self, state: ConnectivityState) {
        self.state.store(state.as_u8(), Ordering::Release);
    }

    pub(crate) fn shut_down(&self) {
        self.set_state(ConnectivityState::Shutdown);
    }

    /// Its figures for [`ChannelStats`](crate::stats::ChannelStats).
    pub(crate) fn snapshot(&self) -> crate::stats::EndpointSnapshot {
        crate::stats::EndpointSnapshot {
            address: self.address.clone(),
            state: self.state(),
            ejected: self.ejected.load(Ordering::Relaxed),
            in_flight: self.load.in_flight(),
            calls: self.load.started(),
            errors: self.load.errors(),
            ejections: self.ejections.load(Ordering::Relaxed),
            rtt: self.load.tracks_rtt().then(|| self.load.rtt()),
            connections: self.load.connections.load(Ordering::Relaxed),
            pings: self.load.pings.load(Ordering::Relaxed),
            dead_connections: self.load.dead_connections.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn info(&self) -> SubchannelInfo {
        SubchannelInfo {
            address: self.address.clone(),
            state: self.state(),
            in_flight: self.load.in_flight(),
            calls: self.load.started(),
        }
    }
}

/// A point-in-time view of one subchannel, for debugging, tests and readiness checks.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubchannelInfo {
    /// The backend's address.
    pub address: Address,
    /// Its connectivity state.
    pub state: ConnectivityState,
    /// Calls sent to it that have not ended yet (streams count until they close).
    pub in_flight: usize,
    /// Calls sent to it since it was created.
    pub calls: u64,
}

/// A READY subchannel as a call sees it: the picker's view (address and load) and the
/// connection to send on.
#[derive(Clone)]
pub(crate) struct ReadyConn {
    pub(crate) subchannel: Arc<Subchannel>,
    pub(crate) conn: Arc<Conn>,
}

impl ReadyConn {
    /// Whether the connection is still up. A picker may be a moment behind a connection
    /// that just ended; the channel skips such a subchannel.
    pub(crate) fn is_up(&self) -> bool {
        self.conn.link.is_up()
    }

    /// Up, and not waiting for the answer to a liveness PING.
    pub(crate) fn is_trusted(&self) -> bool {
        self.conn.link.is_trusted()
    }

    /// Sends a request on this subchannel's connection.
    pub(crate) fn send(
        &self,
        head: http::request::Parts,
        body: Outgoing,
    ) -> Result<Sent, h2::Error> {
        self.conn.send(head, body)
    }

    /// Whether an error of stream `stream_id` means the server refused it unprocessed.
    pub(crate) fn refused(&self, error: &h2::Error, stream_id: u32) -> bool {
        self.conn.refused(error, stream_id)
    }

    /// Whether a request that failed never left the client.
    pub(crate) fn never_left(&self, error: &h2::Error, mark: SentMark) -> bool {
        self.conn.never_left(error, mark)
    }
}

/// The status a caller sees for an error sending to `addr`.
pub(crate) fn send_error(error: &h2::Error, addr: &crate::resolver::Peer) -> Status {
    status::from_send_error(error, addr)
}

/// The status a caller sees for an error reading a response from `addr`.
pub(crate) fn body_error(error: &h2::Error, addr: &crate::resolver::Peer) -> Status {
    status::from_send_error(error, addr)
}

impl fmt::Debug for ReadyConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadyConn")
            .field("address", &format_args!("{}", self.subchannel.address))
            .field("in_flight", &self.subchannel.load.in_flight())
            .finish()
    }
}

/// What a worker tells the control task.
pub(crate) struct Event {
    pub(crate) id: u64,
    pub(crate) update: Update,
}

pub(crate) enum Update {
    Connecting,
    Ready(ReadyConn),
    /// The connection ended (it had been READY); the worker reconnects at once.
    Lost(String),
    /// A connection attempt failed; the worker retries after a backoff.
    Failed(String),
    /// No longer wanted: the worker let go of its connection and waits.
    Idle,
    /// Connected, but its health check says it must not get calls (gRFC A17).
    Unhealthy(ReadyConn, String),
}

/// The control task's handle on a worker.
#[derive(Debug)]
pub(crate) struct WorkerHandle {
    /// Whether the subchannel should be connected. An unwanted subchannel stays IDLE
    /// (and lets go of its connection): pick_first connects to one address at a time.
    want: watch::Sender<bool>,
    /// Dropping it stops the worker: it lets go of its connection, which closes once the
    /// calls still holding it finish (drain).
    _stop: oneshot::Sender<()>,
}

impl WorkerHandle {
    /// Asks the worker to connect (true) or to let go and stay IDLE (false).
    pub(crate) fn set_wanted(&self, wanted: bool) {
        self.want
            .send_if_modified(|w| std::mem::replace(w, wanted) != wanted);
    }

    pub(crate) fn is_wanted(&self) -> bool {
        *self.want.borrow()
    }
}

/// Starts the worker for one subchannel.
pub(crate) fn spawn(
    subchannel: Arc<Subchannel>,
    settings: Arc<ConnectSettings>,
    wanted: bool,
    seed: u64,
    events: mpsc::UnboundedSender<Event>,
) -> WorkerHandle {
    let (stop_tx, mut stop_rx) = oneshot::channel();
    let (want_tx, want_rx) = watch::channel(wanted);
    tokio::spawn(async move {
        // A worker that panics (a bug, or the application's endpoint function) leaves
        // its subchannel in TRANSIENT_FAILURE naming the panic, so calls fail with it
        // (as for any unreachable backend) instead of queueing behind a state that will
        // never change; then a new worker takes over after the connection backoff.
        let mut restarts = Backoff::new(settings.backoff);
        let mut rng = SmallRng::seed_from_u64(seed ^ subchannel.id);
        loop {
            let worker = Worker {
                rng: SmallRng::seed_from_u64(rand::Rng::random(&mut rng)),
                backoff: Backoff::new(settings.backoff),
                subchannel: subchannel.clone(),
                settings: settings.clone(),
                events: events.clone(),
                want: want_rx.clone(),
            };
            let Err(why) = crate::error::catch_panic(worker.run(&mut stop_rx)).await else {
                return;
            };
            let why = format!("the worker of subchannel {} {why}", subchannel.address);
            let delay = restarts.next_delay(&mut rng);
            tracing::error!(error = %why, restart_in = ?delay, "subchannel worker stopped");
            subchannel.set_state(ConnectivityState::TransientFailure);
            let update = Update::Failed(why);
            let _ = events.send(Event {
                id: subchannel.id,
                update,
            });
            tokio::select! {
                biased;
                _ = &mut stop_rx => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    });
    WorkerHandle {
        want: want_tx,
        _stop: stop_tx,
    }
}

pub(crate) fn new_subchannel(
    id: u64,
    address: Address,
    accounting: &Accounting,
) -> Arc<Subchannel> {
    let load = Load::with(accounting);
    #[cfg(feature = "metrics")]
    let load = load.exported(&address.to_string());
    Arc::new(Subchannel {
        id,
        address,
        state: AtomicU8::new(ConnectivityState::Idle.as_u8()),
        load: Arc::new(load),
        ejected: AtomicBool::new(false),
        ejections: AtomicU64::new(0),
    })
}

struct Worker {
    subchannel: Arc<Subchannel>,
    settings: Arc<ConnectSettings>,
    backoff: Backoff,
    rng: SmallRng,
    events: mpsc::UnboundedSender<Event>,
    want: watch::Receiver<bool>,
}

/// Why a worker stopped waiting.
enum Wake {
    Stop,
    Unwanted,
    Done,
}

impl Worker {
    /// Not an `async fn`, which would keep `self` twice (argument and local) for the
    /// worker's whole life; the `async move` block keeps it once.
    #[allow(clippy::manual_async_fn)]
    fn run(mut self, stop: &mut oneshot::Receiver<()>) -> impl Future<Output = ()> + '_ {
        async move {
            loop {
                if !*self.want.borrow_and_update() {
                    if self.subchannel.state() != ConnectivityState::Idle {
                        self.report(ConnectivityState::Idle, Update::Idle);
                    }
                    tokio::select! {
                        biased;
                        _ = &mut *stop => break,
                        changed = self.want.changed() => if changed.is_err() { break },
                    }
                    continue;
                }
                let mut want = self.want.clone();
                let attempt = tokio::select! {
                    biased;
                    _ = &mut *stop => break,
                    _ = want.wait_for(|w| !*w) => continue,
                    // Boxed: a connection attempt (TCP, TLS, the HTTP/2 preface) is the
                    // largest state of this future, and only lives while connecting. Kept
                    // inline, every worker's task would hold its size for ever: ~10 KiB
                    // per endpoint, measured with massif.
                    attempt = Box::pin(self.connect()) => attempt,
                };
                match attempt {
                    Ok(ready) => {
                        let conn = ready.conn.clone();
                        let link = conn.link.clone();
                        let serve = async {
                            let mut health = self.settings.health_service.clone();
                            loop {
                                let service = health.borrow_and_update().clone();
                                let serving = async {
                                    match service {
                                        Some(service) => {
                                            // Boxed for the same reason: a gRPC stream's
                                            // state, only while health checking is on.
                                            Box::pin(self.watch_health(ready.clone(), service))
                                                .await
                                        }
                                        None => {
                                            self.report(
                                                ConnectivityState::Ready,
                                                Update::Ready(ready.clone()),
                                            );
                                            std::future::pending().await
                                        }
                                    }
                                };
                                // A new health setting restarts the watch on this connection.
                                tokio::select! {
                                    () = serving => break,
                                    Ok(()) = health.changed() => {}
                                }
                            }
                        };
                        let closed = async {
                            tokio::select! {
                                _ = link.closed() => {}
                                () = serve => {}
                            }
                        };
                        let mut want = self.want.clone();
                        let wake = tokio::select! {
                            biased;
                            _ = &mut *stop => Wake::Stop,
                            _ = want.wait_for(|w| !*w) => Wake::Unwanted,
                            () = closed => Wake::Done,
                        };
                        if let Some(telemetry) = &self.settings.telemetry {
                            telemetry.disconnected();
                        }
                        match wake {
                            Wake::Stop => break,
                            // Letting go of our handle; calls in flight keep theirs.
                            Wake::Unwanted => continue,
                            Wake::Done => {}
                        }
                        let why = self.why_lost(&conn);
                        // Only a connection that proved itself resets the backoff: one that
                        // closes right after its preface, or before it answered anything,
                        // counts as a failed attempt, so a flapping server is not hammered.
                        let proven = conn.tap.answers() > 0
                            || conn.since.elapsed() >= crate::defaults::CONNECTION_PROVEN_AFTER;
                        if proven {
                            self.backoff.reset();
                            tracing::debug!(address = %self.subchannel.address, "{why}");
                            self.report(ConnectivityState::Idle, Update::Lost(why));
                            continue;
                        }
                        let why = format!("{why} before it served anything");
                        tracing::debug!(address = %self.subchannel.address, "{why}");
                        self.report(ConnectivityState::TransientFailure, Update::Failed(why));
                        let delay = self.backoff.next_delay(&mut self.rng);
                        if let Wake::Stop = self.wait(stop, tokio::time::sleep(delay)).await {
                            break;
                        }
                    }
                    Err(error) => {
                        tracing::debug!(address = %self.subchannel.address, %error, "connect failed");
                        if let Some(telemetry) = &self.settings.telemetry {
                            telemetry.connected(false);
                        }
                        self.report(ConnectivityState::TransientFailure, Update::Failed(error));
                        let delay = self.backoff.next_delay(&mut self.rng);
                        if let Wake::Stop = self.wait(stop, tokio::time::sleep(delay)).await {
                            break;
                        }
                    }
                }
            }
            self.subchannel.shut_down();
        }
    }

    /// Waits for `done`, the stop signal, or the subchannel becoming unwanted.
    async fn wait(
        &mut self,
        stop: &mut oneshot::Receiver<()>,
        done: impl std::future::Future<Output = ()>,
    ) -> Wake {
        tokio::select! {
            biased;
            _ = stop => Wake::Stop,
            _ = self.want.wait_for(|w| !*w) => Wake::Unwanted,
            _ = done => Wake::Done,
        }
    }

    /// What ended a READY connection, for the log and the channel's last error; and
    /// what the channel learns from it (a `too_many_pings` GOAWAY doubles keepalive).
    fn why_lost(&self, conn: &Conn) -> String {
        let address = &self.subchannel.address;
        if let Some(why) = conn.tap.ended() {
            return format!("connection to {address} declared dead: {why}");
        }
        match conn.tap.goaway() {
            Some(goaway) if goaway.too_many_pings() => {
                if self.settings.conn.keepalive.is_some() {
                    let doubled = double_keepalive(&self.settings.keepalive_time);
                    tracing::warn!(
                        %address,
                        keepalive_time = ?doubled,
                        "GOAWAY too_many_pings: doubling the keepalive time of new connections"
                    );
                }
                format!("{address} sent GOAWAY ENHANCE_YOUR_CALM \"too_many_pings\"")
            }
            Some(goaway) => format!(
                "{address} sent GOAWAY (code {}{}{})",
                goaway.code,
                if goaway.debug.is_empty() { "" } else { ", " },
                goaway.debug
            ),
            None => format!("connection to {address} lost"),
        }
    }

    async fn connect(&self) -> Result<ReadyConn, String> {
        self.report(ConnectivityState::Connecting, Update::Connecting);
        let address = &self.subchannel.address;
        let endpoint = (self.settings.endpoint)(address)?;
        let mut settings = self.settings.conn.clone();
        settings.tcp = TcpOptions {
            nodelay: endpoint.get_tcp_nodelay(),
            keepalive: endpoint.get_tcp_keepalive(),
            keepalive_interval: endpoint.get_tcp_keepalive_interval(),
            keepalive_retries: endpoint.get_tcp_keepalive_retries(),
            user_timeout: settings.tcp.user_timeout,
        };
        if let Some(keepalive) = settings.keepalive.as_mut() {
            keepalive.time =
                Duration::from_nanos(self.settings.keepalive_time.load(Ordering::Relaxed));
        }
        // A wave of new addresses (thousands at once) connects a bounded number at a
        // time: every handshake is a task to run, and thousands of them in the run
        // queue at once would delay the calls on the connections already up by their
        // sum. The permit is held until the connection is up or failed, and the connect
        // timeout starts once it is held.
        let _permit = self.settings.connects.acquire().await;
        let attempt = conn::open(
            address,
            endpoint.uri(),
            &settings,
            self.subchannel.load.clone(),
            #[cfg(feature = "tls")]
            self.settings.tls.clone(),
        );
        // gRPC gives every attempt at least the minimum connect timeout, and longer
        // once the backoff has grown past it; an endpoint's connect_timeout replaces
        // the minimum.
        let timeout = endpoint
            .get_connect_timeout()
            .unwrap_or(self.settings.min_connect_timeout)
            .max(self.backoff.current());
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(conn)) => {
                self.subchannel
                    .load
                    .connections
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(telemetry) = &self.settings.telemetry {
                    telemetry.connected(true);
                }
                Ok(ReadyConn {
                    subchannel: self.subchannel.clone(),
                    conn,
                })
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(format!("connect to {address}: timed out after {timeout:?}")),
        }
    }

    pub(crate) fn report(&self, state: ConnectivityState, update: Update) {
        self.subchannel.set_state(state);
        // The control task is gone only when the channel is; the stop signal follows.
        let _ = self.events.send(Event {
            id: self.subchannel.id,
            update,
        });
    }
}

/// Doubles the keepalive time of the channel's new connections (gRFC A8, after a GOAWAY
/// `too_many_pings`) and returns it.
fn double_keepalive(time: &AtomicU64) -> Duration {
    let doubled = time.load(Ordering::Relaxed).saturating_mul(2);
    time.store(doubled, Ordering::Relaxed);
    Duration::from_nanos(doubled)
}

/// Settings for a worker in unit tests: fast backoff, plain TCP, `connects` permits.
#[cfg(test)]
pub(crate) fn test_settings(health: Option<String>, connects: usize) -> ConnectSettings {
    ConnectSettings {
        backoff: BackoffParams {
            initial: Duration::from_millis(10),
            multiplier: 1.6,
            max: Duration::from_millis(100),
            jitter: 0.0,
        },
        min_connect_timeout: Duration::from_secs(20),
        endpoint: Arc::new(|a: &Address| {
            tonic::transport::Endpoint::from_shared(format!("http://{}", a.addr))
                .map_err(|e| e.to_string())
        }),
        accounting: Accounting::default(),
        health_service: watch::channel(health).1,
        #[cfg(feature = "tls")]
        tls: None,
        conn: ConnSettings {
            tcp: TcpOptions::default(),
            liveness: None,
            keepalive: None,
        },
        keepalive_time: Arc::default(),
        connects: Arc::new(tokio::sync::Semaphore::new(connects)),
        telemetry: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A worker holds one of the channel's connect permits for as long as its attempt
    /// runs, and gives it back when the attempt ends: a server that accepts and says
    /// nothing keeps the permit taken until it closes the connection.
    #[tokio::test]
    async fn a_connection_attempt_holds_a_connect_permit_until_it_ends() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let settings = test_settings(None, 1);
        let permits = settings.connects.clone();
        let subchannel = new_subchannel(0, Address::from(addr), &Accounting::default());
        let (tx, mut events) = mpsc::unbounded_channel();
        let _worker = spawn(subchannel, Arc::new(settings), true, 1, tx);
        let run = async {
            // Accepted: the attempt now waits for the server's preface, permit held.
            let (mut socket, _) = listener.accept().await.unwrap();
            assert_eq!(permits.available_permits(), 0);
            socket.shutdown().await.unwrap();
            drop(socket);
            loop {
                let event = events.recv().await.expect("the worker is running");
                if let Update::Failed(_) = event.update {
                    break;
                }
            }
            assert_eq!(permits.available_permits(), 1, "the permit came back");
        };
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("within 30 s");
    }

    fn kind(update: &Update) -> &'static str {
        match update {
            Update::Connecting => "Connecting",
            Update::Ready(_) => "Ready",
            Update::Lost(_) => "Lost",
            Update::Failed(_) => "Failed",
            Update::Idle => "Idle",
            Update::Unhealthy(..) => "Unhealthy",
        }
    }

    /// A server that serves its preface, then answers with GOAWAY ENHANCE_YOUR_CALM
    /// `too_many_pings` once the worker reports READY; the worker's next update.
    async fn goaway_too_many_pings(settings: ConnectSettings) -> Update {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let subchannel = new_subchannel(0, Address::from(addr), &Accounting::default());
        let (tx, mut events) = mpsc::unbounded_channel();
        let _worker = spawn(subchannel, Arc::new(settings), true, 1, tx);
        let (mut socket, _) = listener.accept().await.unwrap();
        socket
            .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
            .await
            .unwrap(); // SETTINGS
        loop {
            match events.recv().await.expect("the worker is running").update {
                Update::Connecting => {}
                Update::Ready(_) => break,
                other => panic!("expected READY, got {}", kind(&other)),
            }
        }
        let debug = b"too_many_pings";
        let mut goaway = vec![0, 0, 8 + debug.len() as u8, 7, 0, 0, 0, 0, 0];
        goaway.extend(0u32.to_be_bytes()); // last stream id
        goaway.extend(u32::from(h2::Reason::ENHANCE_YOUR_CALM).to_be_bytes());
        goaway.extend(debug);
        socket.write_all(&goaway).await.unwrap();
        events.recv().await.expect("the worker is running").update
    }

    /// gRFC A8: a GOAWAY `too_many_pings` doubles the keepalive time of the channel's
    /// new connections, and each one doubles it again; without keepalive nothing changes.
    #[tokio::test]
    async fn too_many_pings_doubles_the_keepalive_time_of_new_connections() {
        let run = async {
            let ten = Duration::from_secs(10);
            let mut settings = test_settings(None, 1);
            settings.conn.keepalive = Some(Keepalive {
                time: ten,
                timeout: Duration::from_secs(20),
                without_calls: false,
            });
            let time = Arc::new(AtomicU64::new(ten.as_nanos() as u64));
            settings.keepalive_time = time.clone();
            for expected in [20, 40] {
                let update = goaway_too_many_pings(settings.clone()).await;
                let (Update::Lost(why) | Update::Failed(why)) = update else {
                    panic!("expected the connection lost, got {}", kind(&update));
                };
                assert!(why.contains("too_many_pings"), "{why}");
                let now = Duration::from_nanos(time.load(Ordering::Relaxed));
                assert_eq!(now, Duration::from_secs(expected));
            }

            let settings = test_settings(None, 1);
            let time = settings.keepalive_time.clone();
            let update = goaway_too_many_pings(settings).await;
            let lost = matches!(update, Update::Lost(_) | Update::Failed(_));
            assert!(lost, "got {}", kind(&update));
            assert_eq!(
                time.load(Ordering::Relaxed),
                0,
                "no keepalive, nothing doubled"
            );
        };
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("within 30 s");
    }

    /// With no permit free, a worker reports CONNECTING and opens no connection.
    #[tokio::test]
    async fn no_free_permit_means_no_connection_attempt() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let settings = test_settings(None, 1);
        let permits = settings.connects.clone();
        let held = permits.clone().try_acquire_owned().unwrap();
        let subchannel = new_subchannel(0, Address::from(addr), &Accounting::default());
        let (tx, mut events) = mpsc::unbounded_channel();
        let _worker = spawn(subchannel, Arc::new(settings), true, 1, tx);
        let run = async {
            let event = events.recv().await.expect("the worker is running");
            assert!(matches!(event.update, Update::Connecting));
            // The worker now waits for the permit; once it has it, it connects.
            drop(held);
            let (_socket, _) = listener.accept().await.unwrap();
            assert_eq!(permits.available_permits(), 0);
        };
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("within 30 s");
    }
}
