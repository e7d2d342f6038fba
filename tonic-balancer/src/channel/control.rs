//! The control task: one per channel, off the call path.
//!
//! It owns the subchannels. It applies each address set from the resolver (new addresses
//! connect, removed ones drain, unchanged ones are left alone), collects the workers'
//! state changes, and after each batch of changes publishes a new [`Snapshot`] that calls
//! read without a lock.

use crate::balance::ReadySubchannel;
use crate::connectivity::ConnectivityState;
use crate::health::{self, Ejection, Host, OutlierDetection};
use crate::load::EwmaParams;
use crate::resolver::{Address, Resolve};
use crate::subchannel::{
    self, ConnectSettings, Event, ReadyConn, Subchannel, Update, WorkerHandle,
};
use arc_swap::ArcSwap;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

/// An address as the control task keys it: the IP address, or the Unix socket path.
type Key = (SocketAddr, Option<Arc<Path>>);

/// What calls see of the channel: an immutable picture, replaced whole on every change.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// READY subchannels as the pickers see them, in resolver order.
    pub(crate) ready: Vec<ReadySubchannel>,
    /// Their connections, index for index.
    pub(crate) conns: Vec<ReadyConn>,
    /// The channel's aggregate state (gRPC's round_robin rule, with sticky failure).
    pub(crate) state: ConnectivityState,
    /// The newest connection or resolution error, for the message of failed calls.
    pub(crate) error: Option<String>,
    /// Every subchannel, in resolver order.
    pub(crate) subchannels: Vec<Arc<Subchannel>>,
}

impl Snapshot {
    pub(crate) fn initial() -> Self {
        Self {
            ready: Vec::new(),
            conns: Vec::new(),
            state: ConnectivityState::Idle,
            error: None,
            subchannels: Vec::new(),
        }
    }
}

/// Where the control task publishes, and where calls and observers look.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    /// Bumped after every publish; queued calls and observers wait on it.
    pub(crate) published: watch::Sender<()>,
}

struct Entry {
    subchannel: Arc<Subchannel>,
    /// READY by its connection and, with health checking, by its health.
    ready: Option<ReadyConn>,
    /// Connected but failing its health check: not picked, except in panic mode.
    unhealthy: Option<ReadyConn>,
    ejection: Ejection,
    /// Failed to connect since it was last READY. Such a subchannel counts as failing
    /// even while it tries again, so the channel does not flip back to CONNECTING (and
    /// queue calls) on every reconnect attempt: gRPC's "sticky TRANSIENT_FAILURE".
    failing: bool,
    /// Dropping it stops the worker.
    worker: WorkerHandle,
}

/// Which subchannels the control task keeps connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnectMode {
    /// Every address (every policy but pick_first).
    All,
    /// One address at a time, in resolver order (gRPC's pick_first): try the first; when
    /// it fails, also the next; once one is READY, let go of all the others.
    FirstReady,
}

/// What the control task takes from the builder and from each service config update.
#[derive(Clone, Debug)]
pub(crate) struct ControlConfig {
    /// Which subchannels to keep connected.
    pub(crate) mode: ConnectMode,
    /// RTT estimate parameters, when a peak_ewma policy needs the estimate.
    pub(crate) ewma: Option<EwmaParams>,
    /// pick_first's `shuffleAddressList` (gRFC A62): shuffle each address list.
    pub(crate) shuffle: bool,
    /// Outlier detection, when on.
    pub(crate) outliers: Option<OutlierDetection>,
    /// The health service every subchannel watches, when health checking is on.
    pub(crate) health_service: Option<String>,
}

pub(crate) struct Control {
    pub(crate) shared: Arc<Shared>,
    pub(crate) resolver: Box<dyn Resolve>,
    pub(crate) settings: ConnectSettings,
    pub(crate) seed: u64,
    pub(crate) target: String,
    pub(crate) mode: ConnectMode,
    /// pick_first's `shuffleAddressList`.
    pub(crate) shuffle: bool,
    /// Service config updates: how to connect, what to measure, outlier detection and
    /// health checking.
    pub(crate) updates: watch::Receiver<ControlConfig>,
    /// Outlier detection, when on.
    pub(crate) outliers: Option<Outliers>,
    /// Woken by a call guard when a subchannel reaches the consecutive-failure limit.
    pub(crate) outlier_signal: Arc<Notify>,
    /// The health service every subchannel's worker watches (read by the workers).
    pub(crate) health: watch::Sender<Option<String>>,
    /// Envoy's panic mode: below this percentage of usable backends, use every connected
    /// one. `None`: fail fast, as gRPC.
    pub(crate) panic_threshold: Option<u32>,
}

/// Outlier detection's settings.
pub(crate) struct Outliers {
    pub(crate) config: OutlierDetection,
}

struct State {
    order: Vec<Key>,
    entries: HashMap<Key, Entry>,
    ids: HashMap<u64, Key>,
    next_id: u64,
    /// Whether the resolver has produced an address set yet.
    resolved: bool,
    resolver_error: Option<String>,
    last_error: Option<String>,
    published_state: ConnectivityState,
}

impl Control {
    /// Runs the control task, and if it panics (a bug here, or in a custom resolver)
    /// publishes a SHUTDOWN snapshot that names the panic: calls fail with it at once
    /// rather than queue for a publish that will never come.
    pub(crate) async fn supervise(self, stop: oneshot::Receiver<()>) {
        let shared = self.shared.clone();
        let target = self.target.clone();
        if let Err(why) = crate::error::catch_panic(self.run(stop)).await {
            let why = format!("the channel's control task {why}");
            tracing::error!(%target, error = %why, "channel stopped");
            shared.snapshot.store(Arc::new(Snapshot {
                state: ConnectivityState::Shutdown,
                error: Some(why),
                ..Snapshot::initial()
            }));
            shared.published.send_replace(());
        }
    }

    /// Runs until `stop` fires or is dropped (the last channel handle is gone).
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let mut state = State {
            order: Vec::new(),
            entries: HashMap::new(),
            ids: HashMap::new(),
            next_id: 0,
            resolved: false,
            resolver_error: None,
            last_error: None,
            published_state: ConnectivityState::Idle,
        };
        let mut resolver_done = false;
        let mut outlier_tick = outlier_interval(self.outliers.as_ref());
        let outlier_signal = self.outlier_signal.clone();
        let mut rng = SmallRng::seed_from_u64(self.seed);
        loop {
            let outliers_on = self.outliers.is_some();
            tokio::select! {
                _ = &mut stop => break,
                _ = outlier_tick.tick(), if outliers_on => {
                    self.detect_outliers(&mut state, |config, hosts, now| {
                        health::on_interval(config, hosts, now, &mut rng)
                    });
                }
                () = outlier_signal.notified(), if outliers_on => {
                    self.detect_outliers(&mut state, health::on_consecutive_failures);
                }
                next = std::future::poll_fn(|cx| self.resolver.poll_resolve(cx)), if !resolver_done => {
                    match next {
                        Some(Ok(addrs)) => self.apply(&mut state, addrs, &events_tx, &mut rng),
                        Some(Err(error)) => {
                            tracing::debug!(target = %self.target, %error, "resolution failed");
                            state.resolver_error = Some(error.to_string());
                        }
                        None => resolver_done = true,
                    }
                }
                Ok(()) = self.updates.changed() => {
                    let update = self.updates.borrow_and_update().clone();
                    self.update(&mut state, update, &mut rng);
                    outlier_tick = outlier_interval(self.outliers.as_ref());
                }
                Some(event) = events.recv() => {
                    self.handle(&mut state, event);
                    // Take every change already queued, then publish once.
                    while let Ok(event) = events.try_recv() {
                        self.handle(&mut state, event);
                    }
                }
            }
            self.reconcile(&mut state);
            self.publish(&mut state);
        }
        for entry in state.entries.values() {
            entry.subchannel.shut_down();
        }
        self.shared.snapshot.store(Arc::new(Snapshot {
            state: ConnectivityState::Shutdown,
            ..Snapshot::initial()
        }));
        self.shared.published.send_replace(());
    }

    /// Applies a service config update to the channel and every subchannel it has.
    fn update(&mut self, state: &mut State, update: ControlConfig, rng: &mut SmallRng) {
        let ControlConfig {
            mode,
            ewma,
            shuffle,
            outliers,
            health_service,
        } = update;
        self.mode = mode;
        self.settings.accounting.ewma = ewma;
        let limit = outliers.as_ref().map(|o| u64::from(o.consecutive_failures));
        self.settings.accounting.outliers = limit.map(|l| (self.outlier_signal.clone(), l));
        if outliers.is_none() {
            // Outlier detection off: nobody stays ejected.
            for entry in state.entries.values_mut() {
                entry.ejection = Ejection::default();
                entry
                    .subchannel
                    .ejected
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.outliers = outliers.map(|config| Outliers { config });
        for entry in state.entries.values() {
            entry.subchannel.load.set_rtt_tracking(ewma.is_some());
            entry.subchannel.load.set_outlier_detection(limit);
            if mode == ConnectMode::All {
                entry.worker.set_wanted(true);
            }
        }
        self.shuffle = shuffle;
        if shuffle {
            // A new config is a new update for pick_first, which shuffles on each (A62).
            state.order.shuffle(rng);
        }
        // Workers restart their health watch, or stop it, on their live connections.
        self.health.send_if_modified(|current| {
            let changed = *current != health_service;
            *current = health_service;
            changed
        });
    }

    fn apply(
        &mut self,
        state: &mut State,
        addrs: Vec<Address>,
        events: &mpsc::UnboundedSender<Event>,
        rng: &mut SmallRng,
    ) {
        state.resolved = true;
        state.resolver_error = None;
        let limit = crate::defaults::MAX_ADDRESSES;
        if addrs.len() > limit {
            tracing::warn!(target = %self.target, addresses = addrs.len(), limit, "too many addresses; using the first ones");
        }
        let mut order = Vec::with_capacity(addrs.len().min(limit));
        for address in addrs.into_iter().take(limit) {
            let addr: Key = (address.addr, address.unix.clone());
            if order.contains(&addr) {
                continue;
            }
            order.push(addr.clone());
            if state.entries.contains_key(&addr) {
                continue;
            }
            let id = state.next_id;
            state.next_id += 1;
            let subchannel = subchannel::new_subchannel(id, address, &self.settings.accounting);
            let worker = subchannel::spawn(
                subchannel.clone(),
                self.settings.clone(),
                self.mode == ConnectMode::All,
                self.seed,
                events.clone(),
            );
            tracing::debug!(target = %self.target, address = %subchannel.address, "address added");
            state.ids.insert(id, addr.clone());
            state.entries.insert(
                addr,
                Entry {
                    subchannel,
                    ready: None,
                    unhealthy: None,
                    ejection: Ejection::default(),
                    failing: false,
                    worker,
                },
            );
        }
        state.entries.retain(|addr, entry| {
            let keep = order.contains(addr);
            if !keep {
                // No new picks from the next snapshot on; calls in flight keep their own
                // handle on the connection and finish (drain).
                tracing::debug!(target = %self.target, address = %entry.subchannel.address, "address removed, draining");
                entry.subchannel.shut_down();
                // The facade cannot delete a series: leave no stale value in it.
                #[cfg(feature = "metrics")]
                if let Some(exported) = &entry.subchannel.load.exported {
                    exported.ready.set(0.0);
                    exported.rtt.set(0.0);
                }
                state.ids.remove(&entry.subchannel.id);
            }
            keep
        });
        if self.shuffle {
            // pick_first's shuffleAddressList: each client of a fleet starts on its own
            // address instead of all on the first (gRFC A62).
            order.shuffle(rng);
        }
        state.order = order;
    }

    /// pick_first: keeps the first READY subchannel and lets go of the others; with none
    /// READY, wants every subchannel up to and including the first one that has not
    /// failed (the ones that failed keep retrying with their backoff; the first to
    /// connect wins).
    fn reconcile(&self, state: &mut State) {
        if self.mode != ConnectMode::FirstReady {
            return;
        }
        let entries: Vec<&mut Entry> = {
            let State { order, entries, .. } = state;
            let mut refs: HashMap<&Key, &mut Entry> = entries.iter_mut().collect();
            order.iter().filter_map(|a| refs.remove(a)).collect()
        };
        // An ejected backend is as good as failing: fail over past it.
        let usable = |e: &&mut Entry| !e.ejection.is_ejected();
        let chosen = entries.iter().position(|e| e.ready.is_some() && usable(e));
        let frontier = entries.iter().position(|e| !e.failing && usable(e));
        for (i, entry) in entries.into_iter().enumerate() {
            let wanted = match chosen {
                Some(chosen) => i == chosen,
                None => frontier.is_none_or(|f| i <= f),
            };
            if !wanted && entry.worker.is_wanted() {
                entry.ready = None;
                entry.unhealthy = None;
                entry.failing = false;
            }
            entry.worker.set_wanted(wanted);
        }
    }

    fn handle(&mut self, state: &mut State, event: Event) {
        let Some(entry) = state
            .ids
            .get(&event.id)
            .and_then(|addr| state.entries.get_mut(addr))
        else {
            return; // A worker of a removed address, winding down.
        };
        match event.update {
            Update::Connecting => {}
            // It let go of its connection (no longer wanted): nothing of it is usable,
            // even if its READY crossed the decision on the way here.
            Update::Idle => {
                entry.ready = None;
                entry.unhealthy = None;
            }
            Update::Ready(ready) => {
                entry.ready = Some(ready);
                entry.unhealthy = None;
                entry.failing = false;
            }
            Update::Unhealthy(connected, why) => {
                entry.ready = None;
                entry.unhealthy = Some(connected);
                entry.failing = true;
                state.last_error = Some(why);
            }
            Update::Lost(error) => {
                entry.ready = None;
                entry.unhealthy = None;
                state.last_error = Some(error);
                self.resolver.re_resolve();
            }
            Update::Failed(error) => {
                entry.ready = None;
                entry.unhealthy = None;
                entry.failing = true;
                state.last_error = Some(error);
                self.resolver.re_resolve();
            }
        }
    }

    /// Runs an outlier-detection step over every subchannel, in resolver order.
    fn detect_outliers<F>(&self, state: &mut State, step: F)
    where
        F: FnOnce(&OutlierDetection, &mut [Host<'_>], Instant) -> bool,
    {
        let Some(outliers) = &self.outliers else {
            return;
        };
        let State { order, entries, .. } = state;
        let mut by_addr: HashMap<&Key, &mut Entry> = entries.iter_mut().collect();
        let mut hosts: Vec<Host<'_>> = order
            .iter()
            .filter_map(|a| by_addr.remove(a))
            .map(|entry| Host {
                outcomes: &entry.subchannel.load.outcomes,
                ejection: &mut entry.ejection,
            })
            .collect();
        if step(&outliers.config, &mut hosts, Instant::now()) {
            let ejected = hosts.iter().filter(|h| h.ejection.is_ejected()).count();
            tracing::debug!(target = %self.target, ejected, "outlier ejections changed");
        }
        drop(hosts);
        for entry in state.entries.values() {
            let now = entry.ejection.is_ejected();
            let was = entry
                .subchannel
                .ejected
                .swap(now, std::sync::atomic::Ordering::Relaxed);
            if now && !was {
                tracing::debug!(target = %self.target, address = %entry.subchannel.address, "ejected as an outlier");
                entry
                    .subchannel
                    .ejections
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                #[cfg(feature = "metrics")]
                if let Some(exported) = &entry.subchannel.load.exported {
                    exported.ejections.increment(1);
                }
                if let Some(telemetry) = &self.settings.telemetry {
                    telemetry.ejected();
                }
            } else if was && !now {
                tracing::debug!(target = %self.target, address = %entry.subchannel.address, "returned from ejection");
            }
        }
    }

    fn publish(&self, state: &mut State) {
        let entries = state.order.iter().filter_map(|a| state.entries.get(a));
        let mut subchannels = Vec::with_capacity(state.order.len());
        // SRV priorities (RFC 2782): calls go to the lowest priority with a usable
        // backend. A priority is passed over only once every backend in it has failed
        // (none READY, none still connecting); while one is still connecting, calls
        // wait for it. Addresses without a priority are one group.
        let mut tiers: std::collections::BTreeMap<Option<u16>, Tier> =
            std::collections::BTreeMap::new();
        for entry in entries {
            subchannels.push(entry.subchannel.clone());
            let tier = tiers.entry(entry.subchannel.address.priority).or_default();
            tier.size += 1;
            if let Some(c) = entry.ready.as_ref().or(entry.unhealthy.as_ref()) {
                tier.connected.push(c.clone());
            }
            match &entry.ready {
                Some(r) if !entry.ejection.is_ejected() => tier.ready.push(r.clone()),
                Some(_) => {}
                None => tier.connecting |= !entry.failing,
            }
        }
        let mut chosen = Tier::default();
        for tier in tiers.into_values() {
            chosen = tier;
            if !chosen.ready.is_empty() || chosen.connecting {
                break;
            }
        }
        let Tier {
            mut ready,
            connecting,
            connected,
            size,
        } = chosen;
        // Panic mode: too few usable backends in the priority used, so use every
        // connected one of it.
        let panic = self.panic_threshold.is_some_and(|threshold| {
            (ready.len() as u64) * 100 < u64::from(threshold) * size as u64
                && connected.len() > ready.len()
        });
        if panic {
            tracing::debug!(target = %self.target, usable = ready.len(), connected = connected.len(), "panic mode");
            ready = connected;
        }
        if self.panic_threshold.is_some()
            && let Some(telemetry) = &self.settings.telemetry
        {
            telemetry.panic_mode(panic);
        }
        let (aggregate, error) = if !ready.is_empty() {
            (ConnectivityState::Ready, state.last_error.clone())
        } else if !state.resolved {
            match &state.resolver_error {
                Some(e) => (ConnectivityState::TransientFailure, Some(e.clone())),
                None => (ConnectivityState::Connecting, None),
            }
        } else if subchannels.is_empty() {
            (
                ConnectivityState::TransientFailure,
                Some("the resolver returned no addresses".to_owned()),
            )
        } else if connecting {
            (ConnectivityState::Connecting, state.last_error.clone())
        } else {
            (
                ConnectivityState::TransientFailure,
                state.last_error.clone(),
            )
        };
        if aggregate != state.published_state {
            tracing::debug!(target = %self.target, from = %state.published_state, to = %aggregate, "channel state");
            state.published_state = aggregate;
        }
        #[cfg(feature = "metrics")]
        for sub in &subchannels {
            let usable = ready.iter().any(|r| Arc::ptr_eq(&r.subchannel, sub));
            if let Some(exported) = &sub.load.exported {
                exported.ready.set(if usable { 1.0 } else { 0.0 });
            }
        }
        self.shared.snapshot.store(Arc::new(Snapshot {
            ready: ready.iter().map(ReadyConn::entry).collect(),
            conns: ready,
            state: aggregate,
            error,
            subchannels,
        }));
        self.shared.published.send_replace(());
    }
}

/// The subchannels of one SRV priority, as `publish` sorts them.
#[derive(Default)]
struct Tier {
    /// READY and not ejected.
    ready: Vec<ReadyConn>,
    /// Some are still trying their first connection (not failing).
    connecting: bool,
    /// Connected, healthy or not (panic mode's pool).
    connected: Vec<ReadyConn>,
    size: usize,
}

/// The ticks of outlier detection's interval (unused while it is off).
fn outlier_interval(outliers: Option<&Outliers>) -> tokio::time::Interval {
    // tokio's interval adds its period to the clock, which overflows for
    // `Duration::MAX`: a period beyond ~30 years is the same as never.
    let period = outliers.map_or(Duration::from_secs(3600), |o| {
        o.config.interval.min(crate::deadline::FAR_FUTURE)
    });
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    tick
}
