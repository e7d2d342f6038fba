//! Subchannels: one HTTP/2 connection per backend address, with its connectivity state.
//!
//! Each subchannel has a worker task that owns the connection's life: connect, report
//! READY, notice the connection end the moment its socket does, reconnect with gRPC's
//! connection backoff (grpc/grpc `doc/connection-backoff.md`). The worker reports every
//! state change to the channel's control task, which rebuilds the picker. Calls never
//! connect anything: they are only routed to subchannels that are READY.

mod connector;
mod health;

pub(crate) use connector::{ConnectionClosed, Link};

use crate::backoff::{Backoff, BackoffParams};
use crate::balance::ReadySubchannel;
use crate::connectivity::ConnectivityState;
use crate::error::chain;
use crate::load::{Accounting, Load};
use crate::resolver::Address;
use connector::Connector;

use rand::{SeedableRng, rngs::SmallRng};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::transport::{Channel, Endpoint};

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
    pub(crate) channel: Channel,
    pub(crate) link: Arc<Link>,
}

impl ReadyConn {
    /// What the pickers see of it.
    pub(crate) fn entry(&self) -> ReadySubchannel {
        ReadySubchannel::new(
            self.subchannel.address.clone(),
            self.subchannel.load.clone(),
        )
    }

    /// Whether the connection is still up. A picker may be a moment behind a connection
    /// that just ended; the channel skips such a subchannel.
    pub(crate) fn is_up(&self) -> bool {
        self.link.is_up()
    }
}

impl fmt::Debug for ReadyConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadyConn")
            .field("address", &self.subchannel.address.addr)
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
    settings: ConnectSettings,
    wanted: bool,
    seed: u64,
    events: mpsc::UnboundedSender<Event>,
) -> WorkerHandle {
    let (stop_tx, stop_rx) = oneshot::channel();
    let (want_tx, want_rx) = watch::channel(wanted);
    let worker = Worker {
        rng: SmallRng::seed_from_u64(seed ^ subchannel.id),
        backoff: Backoff::new(settings.backoff),
        subchannel,
        settings,
        events,
        want: want_rx,
    };
    tokio::spawn(worker.run(stop_rx));
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
    let load = load.exported(&address.addr.to_string());
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
    settings: ConnectSettings,
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
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        loop {
            if !*self.want.borrow_and_update() {
                if self.subchannel.state() != ConnectivityState::Idle {
                    self.report(ConnectivityState::Idle, Update::Idle);
                }
                tokio::select! {
                    biased;
                    _ = &mut stop => break,
                    changed = self.want.changed() => if changed.is_err() { break },
                }
                continue;
            }
            let mut want = self.want.clone();
            let attempt = tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = want.wait_for(|w| !*w) => continue,
                attempt = self.connect() => attempt,
            };
            match attempt {
                Ok(ready) => {
                    self.backoff.reset();
                    let link = ready.link.clone();
                    let serve = async {
                        let mut health = self.settings.health_service.clone();
                        loop {
                            let service = health.borrow_and_update().clone();
                            let serving = async {
                                match service {
                                    Some(service) => {
                                        self.watch_health(ready.clone(), service).await
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
                        _ = &mut stop => Wake::Stop,
                        _ = want.wait_for(|w| !*w) => Wake::Unwanted,
                        () = closed => Wake::Done,
                    };
                    match wake {
                        Wake::Stop => break,
                        // Letting go of our handle; calls in flight keep theirs.
                        Wake::Unwanted => continue,
                        Wake::Done => {}
                    }
                    let why = format!("connection to {} lost", self.subchannel.address);
                    tracing::debug!(address = %self.subchannel.address, "{why}");
                    self.report(ConnectivityState::Idle, Update::Lost(why));
                }
                Err(error) => {
                    tracing::debug!(address = %self.subchannel.address, %error, "connect failed");
                    self.report(ConnectivityState::TransientFailure, Update::Failed(error));
                    let delay = self.backoff.next_delay(&mut self.rng);
                    if let Wake::Stop = self.wait(&mut stop, tokio::time::sleep(delay)).await {
                        break;
                    }
                }
            }
        }
        self.subchannel.shut_down();
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

    async fn connect(&self) -> Result<ReadyConn, String> {
        self.report(ConnectivityState::Connecting, Update::Connecting);
        let address = &self.subchannel.address;
        let endpoint = (self.settings.endpoint)(address)?;
        let link = Arc::new(Link::default());
        let (preface_tx, mut preface) = watch::channel(None);
        let connector = Connector::new(address, link.clone(), preface_tx);
        #[cfg(feature = "tls")]
        let connector = connector.tls(self.settings.tls.clone());
        let attempt = async {
            let channel = endpoint
                .connect_with_connector(connector)
                .await
                .map_err(|e| chain(&e))?;
            // READY only once the server has answered with HTTP/2 (see `ConnIo`).
            match preface.wait_for(Option::is_some).await.as_deref() {
                Ok(Some(Ok(()))) => Ok(channel),
                Ok(Some(Err(why))) => Err(why.clone()),
                Ok(None) | Err(_) => Err(format!(
                    "connection to {address} closed before the server's HTTP/2 preface"
                )),
            }
        };
        // gRPC gives every attempt at least the minimum connect timeout, and longer
        // once the backoff has grown past it.
        let timeout = self
            .settings
            .min_connect_timeout
            .max(self.backoff.current());
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(channel)) => Ok(ReadyConn {
                subchannel: self.subchannel.clone(),
                channel,
                link,
            }),
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
