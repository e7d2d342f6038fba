//! The control task: one per channel, off the call path.
//!
//! It owns the subchannels. It applies each address set from the resolver (new addresses
//! connect, removed ones drain, unchanged ones are left alone), collects the workers'
//! state changes, and after each batch of changes publishes a new [`Snapshot`] that calls
//! read without a lock.

use super::CallConfig;
use super::builder::Policies;
use crate::balance::ready_set::share_runs;
use crate::balance::subset::SubsetFilter;
use crate::balance::{CHUNK, Chunked, ReadySet, ReadySubchannel};
use crate::config::ServiceConfig;
use crate::connectivity::ConnectivityState;
use crate::error::Error;
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

/// An address as the control task keys it: the IP address, or the Unix socket path.
type Key = (SocketAddr, Option<Arc<Path>>);

/// What calls see of the channel: an immutable picture, replaced whole on every change.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// READY subchannels as the pickers see them, in resolver order. Its chunks are
    /// shared with the snapshots before and after wherever they did not change.
    pub(crate) ready: ReadySet,
    /// Their connections, index for index (chunked the same way).
    pub(crate) conns: Chunked<ReadyConn>,
    /// The channel's aggregate state (gRPC's round_robin rule, with sticky failure).
    pub(crate) state: ConnectivityState,
    /// The newest connection or resolution error, for the message of failed calls.
    pub(crate) error: Option<String>,
    /// Every subchannel, in resolver order. Shared between snapshots and rebuilt only
    /// when the address set changes, not on a subchannel's state change.
    pub(crate) subchannels: Arc<[Arc<Subchannel>]>,
}

impl Snapshot {
    pub(crate) fn initial() -> Self {
        Self {
            ready: ReadySet::default(),
            conns: Chunked::default(),
            state: ConnectivityState::Idle,
            error: None,
            subchannels: Arc::new([]),
        }
    }
}

/// Where the control task publishes, and where calls and observers look.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    /// What calls consult per method; replaced whole by a service config update, from
    /// the application or the resolver.
    pub(crate) config: ArcSwap<CallConfig>,
    /// Hands each service config update to the control task (how to connect, outlier
    /// detection, health checking).
    mode: watch::Sender<ControlConfig>,
    /// The builder's policies, under each service config update.
    policies: Policies,
    /// Calls in flight, counted only while the config limits them (circuit breaking).
    pub(crate) calls_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// Draws for xDS `drop_overloads`; kept across config updates, so that frequent
    /// updates do not replay the same draws.
    pub(crate) drop_rng: crate::balance::rng::AtomicRng,
    /// Bumped after every publish; queued calls and observers wait on it. The channels
    /// of one `xds:///` target share it, so their observers see every cluster's news.
    pub(crate) published: Arc<watch::Sender<()>>,
    /// Set by calls, cleared by the control task's idle check: whether a call started
    /// since the last check. Calls only write it when it is clear, so the cache line
    /// stays shared between cores.
    pub(crate) active: AtomicBool,
    /// Set by a call that found the channel IDLE (gRFC A62), before it pokes `wake`.
    pub(crate) wake_requested: AtomicBool,
    pub(crate) wake: Notify,
}

impl Shared {
    pub(crate) fn new(
        config: CallConfig,
        mode: watch::Sender<ControlConfig>,
        policies: Policies,
        published: Arc<watch::Sender<()>>,
    ) -> Self {
        let drop_rng = crate::balance::rng::AtomicRng::new(policies.seed() ^ 0xD509);
        Self {
            snapshot: ArcSwap::from_pointee(Snapshot::initial()),
            config: ArcSwap::from_pointee(config),
            mode,
            policies,
            calls_in_flight: Arc::default(),
            drop_rng,
            published,
            active: AtomicBool::new(false),
            wake_requested: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// Replaces the service config: calls started from now on use its per-method
    /// settings, policies and throttling, and the control task applies the rest. An
    /// invalid config changes nothing (gRFC A21).
    pub(crate) fn apply_service_config(&self, config: &ServiceConfig) -> Result<(), Error> {
        let (call_config, control) = self.policies.call_config(Some(config))?;
        self.config.store(Arc::new(call_config));
        self.mode.send_replace(control);
        Ok(())
    }

    /// Notes that a call started: the channel is not idle.
    #[inline]
    pub(crate) fn mark_active(&self) {
        if !self.active.load(Ordering::Relaxed) {
            self.active.store(true, Ordering::Relaxed);
        }
    }

    /// Asks an IDLE channel to reconnect: its resolver and subchannels start again.
    pub(crate) fn request_wake(&self) {
        self.active.store(true, Ordering::Relaxed);
        if !self.wake_requested.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }
}

struct Entry {
    subchannel: Arc<Subchannel>,
    /// Its address as the resolver gave it last: the same key as the subchannel's, with
    /// the attributes (weight, priority, locality) of the latest address set, which the
    /// pickers and the priority tiers read.
    address: Arc<Address>,
    /// `address.priority`, kept here where a publish's pass over every entry reads it
    /// without following a pointer per entry.
    priority: Option<u16>,
    /// READY by its connection and, with health checking, by its health, with the
    /// pickers' view of it made once when it became READY: a publish then only copies
    /// pointers.
    ready: Option<(ReadyConn, ReadySubchannel)>,
    /// Connected but failing its health check: not picked, except in panic mode.
    unhealthy: Option<(ReadyConn, ReadySubchannel)>,
    ejection: Ejection,
    /// Failed to connect since it was last READY. Such a subchannel counts as failing
    /// even while it tries again, so the channel does not flip back to CONNECTING (and
    /// queue calls) on every reconnect attempt: gRPC's "sticky TRANSIENT_FAILURE".
    failing: bool,
    /// Dropping it stops the worker. `None` for a moment after the address arrived:
    /// `apply` publishes the new address set first and starts the workers after.
    worker: Option<WorkerHandle>,
}

impl Entry {
    /// Its connection and view if calls may go to it: READY and not ejected in the
    /// priority used, or connected at all in that priority in panic mode.
    fn pickable(
        &self,
        priority: Option<u16>,
        panic: bool,
    ) -> Option<&(ReadyConn, ReadySubchannel)> {
        if self.priority != priority {
            None
        } else if panic {
            self.ready.as_ref().or(self.unhealthy.as_ref())
        } else {
            self.ready.as_ref().filter(|_| !self.ejection.is_ejected())
        }
    }

    /// Takes the attributes of `address` (same key) for the pickers and the tiers.
    fn readdress(&mut self, address: Address) {
        self.priority = address.priority;
        self.address = Arc::new(address);
        for view in [&mut self.ready, &mut self.unhealthy].into_iter().flatten() {
            view.1 = ReadySubchannel::shared(self.address.clone(), view.1.load().clone());
        }
    }
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
    /// gRFC A68 random subsetting's subset size, when on.
    pub(crate) subset_size: Option<usize>,
}

pub(crate) struct Control {
    pub(crate) shared: Arc<Shared>,
    pub(crate) resolver: Box<dyn Resolve>,
    /// Shared by every worker: one copy per channel, not per endpoint.
    pub(crate) settings: Arc<ConnectSettings>,
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
    /// gRFC A62: with no call for this long, let go of every connection and stop
    /// resolving until the next call. `None`: never.
    pub(crate) idle_timeout: Option<Duration>,
    /// gRFC A68 random subsetting: which of the resolver's addresses are used.
    pub(crate) subset: SubsetFilter,
}

/// Outlier detection's settings.
pub(crate) struct Outliers {
    pub(crate) config: OutlierDetection,
}

struct State {
    /// Every subchannel, in resolver order (shuffled for `shuffleAddressList`): a publish
    /// walks this vector and hashes nothing.
    entries: Vec<Entry>,
    /// Where each address is in `entries`.
    by_key: HashMap<Key, usize>,
    /// Where each worker's subchannel is in `entries`.
    by_id: HashMap<u64, usize>,
    next_id: u64,
    /// `entries`' subchannels as the snapshots share them; rebuilt when the address set
    /// changes.
    subchannels: Arc<[Arc<Subchannel>]>,
    /// Whether the resolver has produced an address set yet.
    resolved: bool,
    resolver_error: Option<String>,
    last_error: Option<String>,
    published_state: ConnectivityState,
    /// IDLE (gRFC A62): no subchannels, the resolver not polled, until a call wakes it.
    /// The resolver's last address set (kept by the subset filter) is applied again on
    /// waking.
    idle: bool,
    /// What the last publish put in the snapshot, one run per
    /// [`CHUNK`](crate::balance::CHUNK) entries of `entries`: the next publish shares
    /// every run whose members did not change.
    runs: Vec<PublishedRun>,
    /// Per chunk of `entries`, its entries counted by SRV priority, as of the last
    /// publish (or since, for chunks not stale).
    chunk_tiers: Vec<Vec<(Option<u16>, Tier)>>,
    /// Per chunk of `entries`: an entry in it changed since the last publish.
    stale: Vec<bool>,
    /// `entries` was rebuilt or reordered, or every ejection reset, since the last
    /// publish: every chunk is stale.
    all_stale: bool,
    /// The priority and panic mode the last publish chose its members by.
    picked: Option<(Option<u16>, bool)>,
}

/// The pickable members among one [`CHUNK`](crate::balance::CHUNK) of
/// `State::entries`, as last published.
struct PublishedRun {
    views: Arc<[ReadySubchannel]>,
    conns: Arc<[ReadyConn]>,
}

impl PublishedRun {
    /// Whether it holds exactly these members, in this order, each with the same
    /// connection and the same view (a readdressed subchannel gets a new view).
    fn holds(&self, members: &[&(ReadyConn, ReadySubchannel)]) -> bool {
        self.conns.len() == members.len()
            && members
                .iter()
                .zip(self.conns.iter().zip(self.views.iter()))
                .all(|((conn, view), (old_conn, old_view))| {
                    Arc::ptr_eq(&conn.conn, &old_conn.conn) && view.same_as(old_view)
                })
    }
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
            entries: Vec::new(),
            by_key: HashMap::new(),
            by_id: HashMap::new(),
            next_id: 0,
            subchannels: Arc::new([]),
            resolved: false,
            resolver_error: None,
            last_error: None,
            published_state: ConnectivityState::Idle,
            idle: false,
            runs: Vec::new(),
            chunk_tiers: Vec::new(),
            stale: Vec::new(),
            all_stale: true,
            picked: None,
        };
        let mut idle_check = idle_interval(self.idle_timeout);
        let mut last_active = Instant::now();
        let mut resolver_done = false;
        let mut outlier_tick = outlier_interval(self.outliers.as_ref());
        let outlier_signal = self.outlier_signal.clone();
        let mut rng = SmallRng::seed_from_u64(self.seed);
        let mut pacer = Pacer::default();
        loop {
            let outliers_on = self.outliers.is_some();
            let idle_on = self.idle_timeout.is_some() && !state.idle;
            // What a worker reports may wait for the pacer; the rest publishes at once.
            let mut urgent = true;
            tokio::select! {
                _ = &mut stop => break,
                () = pacer.due(), if pacer.pending => {}
                _ = idle_check.tick(), if idle_on => {
                    let now = Instant::now();
                    if self.shared.active.swap(false, Ordering::Relaxed) || state.in_flight() {
                        last_active = now;
                        continue;
                    } else if self.idle_timeout.is_some_and(|t| now.duration_since(last_active) >= t) {
                        self.enter_idle(&mut state);
                    } else {
                        continue;
                    }
                }
                () = self.shared.wake.notified(), if state.idle => {
                    if self.shared.wake_requested.swap(false, Ordering::AcqRel) {
                        tracing::debug!(target = %self.target, "leaving IDLE: a call is waiting");
                        state.idle = false;
                        last_active = Instant::now();
                        if let Some(addrs) = self.subset.last().cloned() {
                            self.apply(&mut state, addrs, &events_tx, &mut rng).await;
                        }
                        // Fresh addresses: the ones kept may be half an hour old.
                        self.resolver.re_resolve();
                    }
                }
                _ = outlier_tick.tick(), if outliers_on => {
                    self.detect_outliers(&mut state, |config, hosts, now| {
                        health::on_interval(config, hosts, now, &mut rng)
                    });
                }
                () = outlier_signal.notified(), if outliers_on => {
                    self.detect_outliers(&mut state, health::on_consecutive_failures);
                }
                next = std::future::poll_fn(|cx| self.resolver.poll_resolve(cx)), if !resolver_done && !state.idle => {
                    match next {
                        Some(Ok(addrs)) => {
                            // The service config that comes with these addresses, if
                            // the resolver has one (xDS), goes first: it may change how
                            // they are used.
                            if let Some(config) = self.resolver.take_service_config()
                                && let Err(error) = self.shared.apply_service_config(&config)
                            {
                                tracing::warn!(target = %self.target, %error, "the resolver's service config is invalid; keeping the previous one");
                            }
                            self.apply(&mut state, addrs, &events_tx, &mut rng).await
                        }
                        Some(Err(error)) => {
                            tracing::debug!(target = %self.target, %error, "resolution failed");
                            state.resolver_error = Some(error.to_string());
                        }
                        None => resolver_done = true,
                    }
                }
                Ok(()) = self.updates.changed() => {
                    let update = self.updates.borrow_and_update().clone();
                    // A new subset size applies to the addresses resolved last, now.
                    let resubset = self.subset.resize(update.subset_size);
                    self.update(&mut state, update, &mut rng);
                    if let Some(addrs) = resubset {
                        if state.idle {
                            // Kept for the wake-up, which applies it.
                            self.subset.select(addrs);
                        } else {
                            self.apply(&mut state, addrs, &events_tx, &mut rng).await;
                        }
                    }
                    outlier_tick = outlier_interval(self.outliers.as_ref());
                }
                Some(event) = events.recv() => {
                    let mut news = self.handle(&mut state, event);
                    // Take every change already queued, then publish once.
                    while let Ok(event) = events.try_recv() {
                        news = news.max(self.handle(&mut state, event));
                    }
                    match news {
                        // Only "connecting" news: nothing a call or observer sees.
                        News::Nothing => continue,
                        News::Paced => urgent = false,
                        News::Urgent => {}
                    }
                }
            }
            self.reconcile(&mut state);
            if urgent || pacer.may_publish() {
                let started = Instant::now();
                self.publish(&mut state);
                pacer.published(started);
            }
        }
        for entry in &state.entries {
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
            subset_size: _, // Applied by the caller, which can re-apply the addresses.
        } = update;
        self.mode = mode;
        // Workers never read the accounting: those that hold the old settings keep them.
        let settings = Arc::make_mut(&mut self.settings);
        settings.accounting.ewma = ewma;
        let limit = outliers.as_ref().map(|o| u64::from(o.consecutive_failures));
        settings.accounting.outliers = limit.map(|l| (self.outlier_signal.clone(), l));
        if outliers.is_none() {
            // Outlier detection off: nobody stays ejected.
            state.all_stale = true;
            for entry in &mut state.entries {
                entry.ejection = Ejection::default();
                entry
                    .subchannel
                    .ejected
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.outliers = outliers.map(|config| Outliers { config });
        for entry in &state.entries {
            entry.subchannel.load.set_rtt_tracking(ewma.is_some());
            entry.subchannel.load.set_outlier_detection(limit);
            if mode == ConnectMode::All
                && let Some(worker) = &entry.worker
            {
                worker.set_wanted(true);
            }
        }
        self.shuffle = shuffle;
        if shuffle {
            // A new config is a new update for pick_first, which shuffles on each (A62).
            state.entries.shuffle(rng);
            state.reindex();
        }
        // Workers restart their health watch, or stop it, on their live connections.
        self.health.send_if_modified(|current| {
            let changed = *current != health_service;
            *current = health_service;
            changed
        });
    }

    /// Applies an address set from the resolver. Its cost is a hash lookup per address
    /// plus the work of what changed: unchanged subchannels keep their worker and
    /// connection and are only moved, new ones start a worker, removed ones drain.
    ///
    /// It runs in two steps. First the new set is put in place and published: removed
    /// addresses get no new call from then on, new ones show as IDLE. Then the removed
    /// subchannels' workers are stopped and a worker is started for each new address,
    /// yielding to the runtime every [`APPLY_SLICE`]: a start is a task spawn, tens of
    /// microseconds with thread wake-ups, a stop wakes two tasks, and thousands in one
    /// go held this runtime thread, and the calls queued behind it, for hundreds of
    /// milliseconds (measured with the bench's `scale` scenario). Building the new set
    /// yields every [`APPLY_BATCH`] addresses too: at 10 000 addresses, half of them
    /// new, it took 8-25 ms, all of it without a yield before.
    async fn apply(
        &mut self,
        state: &mut State,
        addrs: Vec<Address>,
        events: &mpsc::UnboundedSender<Event>,
        rng: &mut SmallRng,
    ) {
        state.resolved = true;
        state.resolver_error = None;
        // The filter keeps the whole set: a wake-up or a new subset size selects again
        // from all of it.
        let addrs = self.subset.select(addrs);
        let limit = crate::defaults::MAX_ADDRESSES;
        if addrs.len() > limit {
            tracing::warn!(target = %self.target, addresses = addrs.len(), limit, "too many addresses; using the first ones");
        }
        let mut old: Vec<Option<Entry>> = std::mem::take(&mut state.entries)
            .into_iter()
            .map(Some)
            .collect();
        let mut old_index = std::mem::take(&mut state.by_key);
        let mut entries = Vec::with_capacity(addrs.len().min(limit));
        let mut by_key = HashMap::with_capacity(addrs.len().min(limit));
        let (mut added, mut kept) = (0usize, 0usize);
        let mut starting = Vec::new();
        for (n, address) in addrs.into_iter().take(limit).enumerate() {
            if n > 0 && n.is_multiple_of(APPLY_BATCH) {
                tokio::task::yield_now().await;
            }
            let key: Key = (address.addr, address.unix.clone());
            if by_key.contains_key(&key) {
                continue; // A duplicate in this set.
            }
            let entry = match old_index.remove(&key).and_then(|i| old[i].take()) {
                Some(mut entry) => {
                    kept += 1;
                    if *entry.address != address {
                        // Same backend, new attributes: the connection stays, and the
                        // pickers' view of it takes them.
                        entry.readdress(address);
                    }
                    entry
                }
                None => {
                    added += 1;
                    let entry = self.new_entry(state, address);
                    starting.push(entry.subchannel.id);
                    entry
                }
            };
            by_key.insert(key, entries.len());
            entries.push(entry);
        }
        let mut removed = Vec::new();
        for (n, entry) in old.into_iter().flatten().enumerate() {
            if n > 0 && n.is_multiple_of(APPLY_BATCH) {
                tokio::task::yield_now().await;
            }
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
            removed.push(entry);
        }
        tracing::debug!(target = %self.target, added, removed = removed.len(), kept, "address set applied");
        state.entries = entries;
        state.by_key = by_key;
        if self.shuffle {
            // pick_first's shuffleAddressList: each client of a fleet starts on its own
            // address instead of all on the first (gRFC A62).
            state.entries.shuffle(rng);
        }
        state.reindex();
        if starting.is_empty() && removed.len() <= APPLY_SLICE {
            return;
        }
        self.publish(state);
        // Stopping a worker wakes it and then its connection's task, which closes the
        // socket: thousands at once would queue ahead of every call as well.
        let mut removed = removed.into_iter();
        while removed.len() > 0 {
            removed.by_ref().take(APPLY_SLICE).for_each(drop);
            tokio::task::yield_now().await;
        }
        for (k, id) in starting.into_iter().enumerate() {
            if k > 0 && k.is_multiple_of(APPLY_SLICE) {
                tokio::task::yield_now().await;
            }
            let Some(&i) = state.by_id.get(&id) else {
                continue;
            };
            let entry = &mut state.entries[i];
            entry.worker = Some(subchannel::spawn(
                entry.subchannel.clone(),
                self.settings.clone(),
                self.mode == ConnectMode::All,
                self.seed,
                events.clone(),
            ));
        }
    }

    /// A subchannel for a new address; `apply` starts its worker.
    fn new_entry(&self, state: &mut State, address: Address) -> Entry {
        let id = state.next_id;
        state.next_id += 1;
        let shared_address = Arc::new(address.clone());
        let subchannel = subchannel::new_subchannel(id, address, &self.settings.accounting);
        tracing::trace!(target = %self.target, address = %subchannel.address, "address added");
        Entry {
            subchannel,
            priority: shared_address.priority,
            address: shared_address,
            ready: None,
            unhealthy: None,
            ejection: Ejection::default(),
            failing: false,
            worker: None,
        }
    }

    /// pick_first: keeps the first READY subchannel and lets go of the others; with none
    /// READY, wants every subchannel up to and including the first one that has not
    /// failed (the ones that failed keep retrying with their backoff; the first to
    /// connect wins).
    fn reconcile(&self, state: &mut State) {
        if self.mode != ConnectMode::FirstReady {
            return;
        }
        let entries = &mut state.entries;
        // An ejected backend is as good as failing: fail over past it.
        let usable = |e: &Entry| !e.ejection.is_ejected();
        let chosen = entries.iter().position(|e| e.ready.is_some() && usable(e));
        let frontier = entries.iter().position(|e| !e.failing && usable(e));
        for (i, entry) in entries.iter_mut().enumerate() {
            let wanted = match chosen {
                Some(chosen) => i == chosen,
                None => frontier.is_none_or(|f| i <= f),
            };
            let Some(worker) = &entry.worker else {
                continue;
            };
            if !wanted && worker.is_wanted() {
                entry.ready = None;
                entry.unhealthy = None;
                entry.failing = false;
                mark_stale(&mut state.stale, &mut state.all_stale, i);
            }
            worker.set_wanted(wanted);
        }
    }

    /// Takes a worker's news; says how soon the calls must see it.
    fn handle(&mut self, state: &mut State, event: Event) -> News {
        let Some((i, entry)) = state
            .by_id
            .get(&event.id)
            .and_then(|&i| Some((i, state.entries.get_mut(i)?)))
        else {
            return News::Nothing; // A worker of a removed address, winding down.
        };
        // A subchannel leaving the picks, or the first READY one while calls wait or
        // fail fast, is published at once; one more READY among others can wait.
        let news = match &event.update {
            Update::Connecting => return News::Nothing,
            Update::Ready(_) if state.published_state == ConnectivityState::Ready => News::Paced,
            Update::Ready(_) => News::Urgent,
            _ if entry.ready.is_some() || entry.unhealthy.is_some() => News::Urgent,
            _ => News::Paced,
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
                let view =
                    ReadySubchannel::shared(entry.address.clone(), ready.subchannel.load.clone());
                entry.ready = Some((ready, view));
                entry.unhealthy = None;
                entry.failing = false;
            }
            Update::Unhealthy(connected, why) => {
                entry.ready = None;
                let view = ReadySubchannel::shared(
                    entry.address.clone(),
                    connected.subchannel.load.clone(),
                );
                entry.unhealthy = Some((connected, view));
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
        state.touch(i);
        news
    }

    /// Runs an outlier-detection step over every subchannel, in resolver order.
    fn detect_outliers<F>(&self, state: &mut State, step: F)
    where
        F: FnOnce(&OutlierDetection, &mut [Host<'_>], Instant) -> bool,
    {
        let Some(outliers) = &self.outliers else {
            return;
        };
        let mut hosts: Vec<Host<'_>> = state
            .entries
            .iter_mut()
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
        for (i, entry) in state.entries.iter().enumerate() {
            let now = entry.ejection.is_ejected();
            let was = entry
                .subchannel
                .ejected
                .swap(now, std::sync::atomic::Ordering::Relaxed);
            if now != was {
                mark_stale(&mut state.stale, &mut state.all_stale, i);
            }
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

    /// gRFC A62: lets go of every subchannel (their connections close) and stops polling
    /// the resolver; the published state is IDLE until a call asks to wake up.
    fn enter_idle(&self, state: &mut State) {
        tracing::debug!(target = %self.target, timeout = ?self.idle_timeout, "no calls for the idle timeout: IDLE");
        // A wake asked for before now was served; only calls that see IDLE count.
        self.shared.wake_requested.store(false, Ordering::Release);
        for entry in state.entries.drain(..) {
            entry.subchannel.shut_down();
        }
        state.last_error = None;
        state.idle = true;
        state.reindex();
    }

    /// Publishes a new snapshot. Its cost is the work of what changed: the chunks
    /// ([`CHUNK`] subchannels each) in which a subchannel changed since the last publish
    /// are counted and copied again, and every other chunk, and the list of every
    /// subchannel, is shared with the previous snapshot. A change of tier (SRV priority)
    /// or of panic mode, an address update and a config update that resets ejections
    /// look at every chunk.
    fn publish(&self, state: &mut State) {
        // SRV priorities (RFC 2782): calls go to the lowest priority with a usable
        // backend. A priority is passed over only once every backend in it has failed
        // (none READY, none still connecting); while one is still connecting, calls
        // wait for it. Addresses without a priority are one group.
        //
        // The counts are kept per chunk of entries and counted again only for chunks in
        // which something changed, so one subchannel's change costs one chunk's count,
        // not a pass over the fleet.
        let chunks = state.entries.len().div_ceil(CHUNK);
        let all_stale =
            state.all_stale || state.stale.len() != chunks || state.chunk_tiers.len() != chunks;
        if all_stale {
            state.chunk_tiers = state.entries.chunks(CHUNK).map(count_tiers).collect();
        } else {
            for (c, chunk) in state.entries.chunks(CHUNK).enumerate() {
                if state.stale[c] {
                    state.chunk_tiers[c] = count_tiers(chunk);
                }
            }
        }
        let mut tiers: std::collections::BTreeMap<Option<u16>, Tier> =
            std::collections::BTreeMap::new();
        for (priority, counted) in state.chunk_tiers.iter().flatten() {
            tiers.entry(*priority).or_default().add(counted);
        }
        #[cfg(debug_assertions)]
        {
            // A pass over every entry must agree with the counts kept per chunk.
            let fresh: std::collections::BTreeMap<_, _> =
                count_tiers(&state.entries).into_iter().collect();
            debug_assert_eq!(tiers, fresh, "stale per-chunk tier counts");
        }
        let mut chosen = (None, Tier::default());
        for (priority, tier) in tiers {
            chosen = (priority, tier);
            if chosen.1.ready > 0 || chosen.1.connecting {
                break;
            }
        }
        let (priority, tier) = chosen;
        // Panic mode: too few usable backends in the priority used, so use every
        // connected one of it.
        let panic = self.panic_threshold.is_some_and(|threshold| {
            (tier.ready as u64) * 100 < u64::from(threshold) * tier.size as u64
                && tier.connected > tier.ready
        });
        if panic {
            tracing::debug!(target = %self.target, usable = tier.ready, connected = tier.connected, "panic mode");
        }
        if self.panic_threshold.is_some()
            && let Some(telemetry) = &self.settings.telemetry
        {
            telemetry.panic_mode(panic);
        }
        let usable = if panic { tier.connected } else { tier.ready };
        let (aggregate, error) = if state.idle {
            (ConnectivityState::Idle, None)
        } else if usable > 0 {
            (ConnectivityState::Ready, state.last_error.clone())
        } else if !state.resolved {
            match &state.resolver_error {
                Some(e) => (ConnectivityState::TransientFailure, Some(e.clone())),
                None => (ConnectivityState::Connecting, None),
            }
        } else if state.entries.is_empty() {
            (
                ConnectivityState::TransientFailure,
                Some("the resolver returned no addresses".to_owned()),
            )
        } else if tier.connecting {
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
        // One run per CHUNK entries; a run whose members did not change is shared with
        // the last snapshot, so one subchannel's change copies one run, not the fleet.
        let repick = state.picked != Some((priority, panic));
        let stale = std::mem::take(&mut state.stale);
        let shared = share_runs(
            &state.entries,
            std::mem::take(&mut state.runs),
            |c| all_stale || repick || stale[c],
            |entry| entry.pickable(priority, panic),
            PublishedRun::holds,
            |members| PublishedRun {
                views: members.iter().map(|m| m.1.clone()).collect(),
                conns: members.iter().map(|m| m.0.clone()).collect(),
            },
        );
        #[cfg(feature = "metrics")]
        {
            for run in &shared.replaced {
                set_ready_gauges(run.conns.iter(), false);
            }
            for &i in &shared.built {
                set_ready_gauges(shared.runs[i].conns.iter(), true);
            }
        }
        let runs = shared.runs;
        #[cfg(debug_assertions)]
        {
            // Every run must hold what a look at its chunk finds now.
            debug_assert_eq!(runs.len(), chunks);
            for (chunk, run) in state.entries.chunks(CHUNK).zip(&runs) {
                let members: Vec<_> = chunk
                    .iter()
                    .filter_map(|e| e.pickable(priority, panic))
                    .collect();
                debug_assert!(run.holds(&members), "a stale run was shared");
            }
        }
        state.stale = vec![false; chunks];
        state.all_stale = false;
        state.picked = Some((priority, panic));
        let ready = ReadySet::from_runs(runs.iter().map(|run| run.views.clone()));
        let conns = Chunked::from_runs(runs.iter().map(|run| run.conns.clone()));
        state.runs = runs;
        self.shared.snapshot.store(Arc::new(Snapshot {
            ready,
            conns,
            state: aggregate,
            error,
            subchannels: state.subchannels.clone(),
        }));
        self.shared.published.send_replace(());
    }
}

/// Sets the `metrics` facade's READY gauge of these subchannels.
#[cfg(feature = "metrics")]
fn set_ready_gauges<'a>(conns: impl Iterator<Item = &'a ReadyConn>, ready: bool) {
    for conn in conns {
        if let Some(exported) = &conn.subchannel.load.exported {
            exported.ready.set(if ready { 1.0 } else { 0.0 });
        }
    }
}

impl State {
    /// Entry `i` changed in a way the pickers or the tiers see: its chunk is published
    /// again at the next publish.
    fn touch(&mut self, i: usize) {
        mark_stale(&mut self.stale, &mut self.all_stale, i);
    }

    /// Whether any call is in flight on a subchannel (streams count until they end).
    fn in_flight(&self) -> bool {
        self.entries
            .iter()
            .any(|e| e.subchannel.load.in_flight() > 0)
    }

    /// Rebuilds the indexes and the shared subchannel list after `entries` was rebuilt
    /// or reordered.
    fn reindex(&mut self) {
        self.all_stale = true;
        self.by_key.clear();
        self.by_id.clear();
        for (i, entry) in self.entries.iter().enumerate() {
            let address = &entry.subchannel.address;
            self.by_key.insert((address.addr, address.unix.clone()), i);
            self.by_id.insert(entry.subchannel.id, i);
        }
        self.subchannels = self.entries.iter().map(|e| e.subchannel.clone()).collect();
    }
}

/// Marks the chunk of entry `i` stale (all of them if the chunks changed).
fn mark_stale(stale: &mut [bool], all_stale: &mut bool, i: usize) {
    match stale.get_mut(i / CHUNK) {
        Some(chunk) => *chunk = true,
        None => *all_stale = true,
    }
}

/// Counts a chunk's entries by SRV priority, in the order the priorities first appear.
fn count_tiers(chunk: &[Entry]) -> Vec<(Option<u16>, Tier)> {
    let mut tiers: Vec<(Option<u16>, Tier)> = Vec::new();
    for entry in chunk {
        let k = match tiers.iter().position(|(p, _)| *p == entry.priority) {
            Some(k) => k,
            None => {
                tiers.push((entry.priority, Tier::default()));
                tiers.len() - 1
            }
        };
        let tier = &mut tiers[k].1;
        tier.size += 1;
        if entry.ready.is_some() || entry.unhealthy.is_some() {
            tier.connected += 1;
        }
        match &entry.ready {
            Some(_) if !entry.ejection.is_ejected() => tier.ready += 1,
            Some(_) => {}
            None => tier.connecting |= !entry.failing,
        }
    }
    tiers
}

/// The subchannels of one SRV priority, as `publish` counts them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Tier {
    /// READY and not ejected.
    ready: usize,
    /// Some are still trying their first connection (not failing).
    connecting: bool,
    /// Connected, healthy or not (panic mode's pool).
    connected: usize,
    size: usize,
}

impl Tier {
    fn add(&mut self, other: &Tier) {
        self.ready += other.ready;
        self.connecting |= other.connecting;
        self.connected += other.connected;
        self.size += other.size;
    }
}

/// How soon a worker's news must reach the calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum News {
    /// It changes nothing a snapshot shows.
    Nothing,
    /// At the pacer's next publish.
    Paced,
    /// Now.
    Urgent,
}

/// How many workers `apply` starts between two yields to the runtime.
const APPLY_SLICE: usize = 32;

/// How many addresses `apply` goes through between two yields to the runtime.
const APPLY_BATCH: usize = 256;

/// Paces the publishes that workers' news causes, so that their cost stays a small
/// share of the control task's time however large the fleet. A publish copies the
/// chunks in which something changed: during a wave of connections at 10 000
/// endpoints, thousands of READYs, most of them alone, each would copy a chunk of 1 024.
/// After a publish that took `c`, the next one caused by a worker's READY waits until
/// `PUBLISH_SPACING × c` has passed since it, taking every change that came meanwhile
/// (microseconds for tens of endpoints; a median publish took 0.12 ms during such a
/// wave at 10 000, so about 2.5 ms). A subchannel leaving the picks, the first READY
/// one, an address update, a config update, outlier detection and idleness publish at
/// once.
#[derive(Debug)]
struct Pacer {
    last: Instant,
    cost: Duration,
    /// A publish is owed once `last + spacing` passes.
    pending: bool,
}

/// How many publish costs apart paced publishes are: publishing takes at most a
/// twentieth of the control task's time.
const PUBLISH_SPACING: u32 = 20;

impl Default for Pacer {
    fn default() -> Self {
        Self {
            last: Instant::now(),
            cost: Duration::ZERO,
            pending: false,
        }
    }
}

impl Pacer {
    fn next(&self) -> Instant {
        self.last + self.cost * PUBLISH_SPACING
    }

    /// Whether a worker's news may be published now; if not, it is owed.
    fn may_publish(&mut self) -> bool {
        if Instant::now() >= self.next() {
            return true;
        }
        self.pending = true;
        false
    }

    async fn due(&self) {
        tokio::time::sleep_until(self.next()).await;
    }

    fn published(&mut self, started: Instant) {
        self.last = Instant::now();
        self.cost = self.last.duration_since(started);
        self.pending = false;
    }
}

/// The idle check's ticks: four per idle timeout, so a channel goes IDLE between one
/// and one and a quarter timeouts after its last call (a call does not touch a timer).
fn idle_interval(timeout: Option<Duration>) -> tokio::time::Interval {
    let period = timeout
        .map_or(Duration::from_secs(3600), |t| t / 4)
        .clamp(Duration::from_millis(1), crate::deadline::FAR_FUTURE);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    tick
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

#[cfg(test)]
mod tests {
    use super::*;

    /// After a publish that took `c`, paced news waits until `20c` has passed, then
    /// one publish takes all of it.
    #[tokio::test(start_paused = true)]
    async fn paced_publishes_are_twenty_costs_apart() {
        let mut pacer = Pacer::default();
        let started = Instant::now();
        tokio::time::advance(Duration::from_millis(2)).await; // a publish taking 2 ms
        pacer.published(started);
        assert!(!pacer.may_publish(), "right after a publish, news waits");
        assert!(pacer.pending, "and a publish is owed");
        let due = Instant::now();
        pacer.due().await;
        assert_eq!(due.elapsed(), Duration::from_millis(40));
        assert!(pacer.may_publish());
        pacer.published(Instant::now());
        assert!(!pacer.pending);
        // A publish that cost nothing (paused time, small fleets) paces nothing.
        assert!(pacer.may_publish());
    }

    #[test]
    fn urgent_news_wins_over_paced_news_in_a_batch() {
        assert_eq!(News::Paced.max(News::Urgent), News::Urgent);
        assert_eq!(News::Nothing.max(News::Paced), News::Paced);
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_check_runs_four_times_per_timeout() {
        let mut tick = idle_interval(Some(Duration::from_secs(60)));
        let start = Instant::now();
        tick.tick().await;
        assert_eq!(start.elapsed(), Duration::from_secs(15));
        // Off: a far tick that never overflows the clock.
        let mut off = idle_interval(None);
        let start = Instant::now();
        off.tick().await;
        assert_eq!(start.elapsed(), Duration::from_secs(3600));
    }
}
