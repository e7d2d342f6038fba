//! Subchannels: one HTTP/2 connection per backend address, with its connectivity state.
//!
//! Each subchannel has a worker task that owns the connection's life: connect, report
//! READY, notice the connection end the moment its socket does, reconnect with gRPC's
//! connection backoff (grpc/grpc `doc/connection-backoff.md`). The worker reports every
//! state change to the channel's control task, which rebuilds the picker. Calls never
//! connect anything: they are only routed to subchannels that are READY.

mod connector;
mod load;

pub(crate) use connector::{ConnectionClosed, Link};
pub(crate) use load::CallGuard;

use crate::backoff::{Backoff, BackoffParams};
use crate::error::chain;
use crate::resolver::Address;
use connector::Connector;
use load::Load;
use rand::{SeedableRng, rngs::SmallRng};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};

/// The connectivity state of a subchannel or, aggregated, of a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectivityState {
    /// Not connected and not trying to.
    Idle,
    /// A connection attempt is under way.
    Connecting,
    /// Connected: calls may be sent.
    Ready,
    /// The last connection attempt failed; the next one waits for the backoff.
    TransientFailure,
    /// Closed for good (the address was removed or the channel dropped).
    Shutdown,
}

impl ConnectivityState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Idle,
            1 => Self::Connecting,
            2 => Self::Ready,
            3 => Self::TransientFailure,
            _ => Self::Shutdown,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Self::Idle => 0,
            Self::Connecting => 1,
            Self::Ready => 2,
            Self::TransientFailure => 3,
            Self::Shutdown => 4,
        }
    }
}

impl fmt::Display for ConnectivityState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Idle => "IDLE",
            Self::Connecting => "CONNECTING",
            Self::Ready => "READY",
            Self::TransientFailure => "TRANSIENT_FAILURE",
            Self::Shutdown => "SHUTDOWN",
        })
    }
}

/// Settings for how subchannels connect; see the builder for each field's meaning.
#[derive(Clone)]
pub(crate) struct ConnectSettings {
    pub(crate) backoff: BackoffParams,
    pub(crate) min_connect_timeout: Duration,
    pub(crate) endpoint: Arc<dyn Fn(&Address) -> Endpoint + Send + Sync>,
}

/// The state of one subchannel that outlives its connections: its address, its state
/// and its load. Shared by the worker, the control task, the pickers and call guards.
#[derive(Debug)]
pub(crate) struct Subchannel {
    pub(crate) id: u64,
    pub(crate) address: Address,
    state: AtomicU8,
    pub(crate) load: Load,
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

/// A READY subchannel as a [`Picker`](crate::balance::Picker) sees it: its address and
/// its current load. Cheap to clone.
#[derive(Clone)]
pub struct ReadySubchannel {
    pub(crate) subchannel: Arc<Subchannel>,
    pub(crate) channel: Channel,
    pub(crate) link: Arc<Link>,
}

impl ReadySubchannel {
    /// The backend's address.
    pub fn address(&self) -> &Address {
        &self.subchannel.address
    }

    /// Calls in flight on this subchannel right now.
    pub fn in_flight(&self) -> usize {
        self.subchannel.load.in_flight()
    }

    /// Whether the connection is still up. A picker may be a moment behind a connection
    /// that just ended; the channel skips such a subchannel.
    pub(crate) fn is_up(&self) -> bool {
        self.link.is_up()
    }
}

impl fmt::Debug for ReadySubchannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadySubchannel")
            .field("address", &self.subchannel.address.addr)
            .field("in_flight", &self.in_flight())
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
    Ready(ReadySubchannel),
    /// The connection ended (it had been READY); the worker reconnects at once.
    Lost(String),
    /// A connection attempt failed; the worker retries after a backoff.
    Failed(String),
}

/// Starts the worker for one address. Dropping the returned sender shuts it down: it
/// drops its connection handle, and the connection closes once the calls still holding
/// it finish (drain).
pub(crate) fn spawn(
    subchannel: Arc<Subchannel>,
    settings: ConnectSettings,
    seed: u64,
    events: mpsc::UnboundedSender<Event>,
) -> oneshot::Sender<()> {
    let (stop_tx, stop_rx) = oneshot::channel();
    let worker = Worker {
        rng: SmallRng::seed_from_u64(seed ^ subchannel.id),
        backoff: Backoff::new(settings.backoff),
        subchannel,
        settings,
        events,
    };
    tokio::spawn(worker.run(stop_rx));
    stop_tx
}

pub(crate) fn new_subchannel(id: u64, address: Address) -> Arc<Subchannel> {
    Arc::new(Subchannel {
        id,
        address,
        state: AtomicU8::new(ConnectivityState::Idle.as_u8()),
        load: Load::default(),
    })
}

struct Worker {
    subchannel: Arc<Subchannel>,
    settings: ConnectSettings,
    backoff: Backoff,
    rng: SmallRng,
    events: mpsc::UnboundedSender<Event>,
}

impl Worker {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        loop {
            let attempt = tokio::select! {
                _ = &mut stop => break,
                attempt = self.connect() => attempt,
            };
            match attempt {
                Ok(ready) => {
                    self.backoff.reset();
                    let link = ready.link.clone();
                    self.report(ConnectivityState::Ready, Update::Ready(ready));
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = link.closed() => {}
                    }
                    let why = format!("connection to {} lost", self.subchannel.address);
                    tracing::debug!(address = %self.subchannel.address, "{why}");
                    self.report(ConnectivityState::Idle, Update::Lost(why));
                }
                Err(error) => {
                    tracing::debug!(address = %self.subchannel.address, %error, "connect failed");
                    self.report(ConnectivityState::TransientFailure, Update::Failed(error));
                    let delay = self.backoff.next_delay(&mut self.rng);
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.subchannel.shut_down();
    }

    async fn connect(&mut self) -> Result<ReadySubchannel, String> {
        self.report(ConnectivityState::Connecting, Update::Connecting);
        let address = &self.subchannel.address;
        let endpoint = (self.settings.endpoint)(address);
        let link = Arc::new(Link::default());
        let connector = Connector::new(address.addr, link.clone());
        // gRPC gives every attempt at least the minimum connect timeout, and longer
        // once the backoff has grown past it.
        let timeout = self
            .settings
            .min_connect_timeout
            .max(self.backoff.current());
        match tokio::time::timeout(timeout, endpoint.connect_with_connector(connector)).await {
            Ok(Ok(channel)) => Ok(ReadySubchannel {
                subchannel: self.subchannel.clone(),
                channel,
                link,
            }),
            Ok(Err(error)) => Err(chain(&error)),
            Err(_) => Err(format!("connect to {address}: timed out after {timeout:?}")),
        }
    }

    fn report(&self, state: ConnectivityState, update: Update) {
        self.subchannel.set_state(state);
        // The control task is gone only when the channel is; the stop signal follows.
        let _ = self.events.send(Event {
            id: self.subchannel.id,
            update,
        });
    }
}
