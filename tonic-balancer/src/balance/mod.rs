//! Pickers choose a READY subchannel for each call; policies say which picker to use.
//!
//! The channel's control task keeps the list of READY subchannels and publishes it as an
//! immutable snapshot whenever it changes; a call reads the current snapshot without a
//! lock and asks its method's [`Picker`] for one entry. Every policy reads the same live
//! load counters of each subchannel (atomics), so several policies can share a channel
//! (one per method) and load-aware policies need no coordination.
//!
//! | policy | picks | use it when |
//! |---|---|---|
//! | [`round_robin`](Policy::round_robin) | the next READY subchannel in turn | backends are alike and calls cost about the same (the default) |
//! | [`pick_first`](Policy::pick_first) | the first READY address in resolver order | one backend at a time, others as fail-over (gRPC's default) |
//! | [`least_request`](Policy::least_request) | the fewest calls in flight among `choice_count` random ones | call costs vary; backends alike |
//! | [`peak_ewma`](Policy::peak_ewma) | the lower `rtt × (in_flight + 1)` of two random ones | backends differ or degrade: latency-aware |
//! | [`locality_weighted`](LocalityWeighted) | by locality weight, then round robin or least request | `xds:///` targets (the xDS resolver configures it from EDS) |

mod least_request;
pub mod locality_weighted;
mod peak_ewma;
mod pick_first;
pub(crate) mod ready_set;
pub(crate) mod rng;
mod round_robin;
pub mod subset;

pub use least_request::LeastRequest;
pub use locality_weighted::LocalityWeighted;
pub use peak_ewma::PeakEwma;
pub use pick_first::PickFirst;
pub use ready_set::{CHUNK, Chunked, ReadySet};
pub use round_robin::RoundRobin;

use crate::config::LoadBalancingConfig;
use crate::error::InvalidSetting;
use crate::load::{EwmaParams, Load};
use crate::resolver::Address;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use crate::defaults::{
    DEFAULT_CHOICE_COUNT, DEFAULT_EWMA_DECAY, DEFAULT_RTT, MAX_CHOICE_COUNT,
};

/// A READY subchannel as a [`Picker`] sees it: its address and its live [`Load`].
/// Cheap to clone (the load is shared with the subchannel and its calls).
///
/// ```
/// # use std::sync::Arc;
/// use tonic_balancer::balance::{Picker, ReadySet, ReadySubchannel};
/// use tonic_balancer::load::{CallGuard, Load};
/// use tonic_balancer::Policy;
///
/// let ready: ReadySet = (1..=3)
///     .map(|port| {
///         let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
///         ReadySubchannel::new(addr.into(), Arc::new(Load::new()))
///     })
///     .collect();
/// // Two calls on the first subchannel: least_request avoids it.
/// let _busy = [CallGuard::new(ready[0].load().clone()), CallGuard::new(ready[0].load().clone())];
/// let picker = Policy::least_request().choice_count(3).picker(1);
/// assert_ne!(picker.pick(&ready), 0);
/// ```
#[derive(Clone)]
pub struct ReadySubchannel {
    load: Arc<Load>,
    /// Behind a pointer to keep an entry at two pointers: a P2C pick reads two entries
    /// at random, and at 10 000 endpoints a snapshot of 16-byte entries (160 KB) stays
    /// in a core's L2 cache where 48-byte ones (480 KB, with the address inline) do not.
    /// Shared, so that publishing a snapshot copies pointers and allocates nothing. The
    /// address is read for logs, never by a pick.
    address: Arc<Address>,
}

impl ReadySubchannel {
    /// A READY subchannel at `address` whose calls are counted in `load`.
    pub fn new(address: Address, load: Arc<Load>) -> Self {
        Self {
            load,
            address: Arc::new(address),
        }
    }

    /// The same with an address already shared (a publish copies the pointer).
    pub(crate) fn shared(address: Arc<Address>, load: Arc<Load>) -> Self {
        Self { load, address }
    }

    /// The backend's address.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Its live load.
    pub fn load(&self) -> &Arc<Load> {
        &self.load
    }

    /// Whether the two share their load and their address (the same view of a
    /// subchannel, not a copy made after it was readdressed).
    pub(crate) fn same_as(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.load, &other.load) && Arc::ptr_eq(&self.address, &other.address)
    }

    /// Calls in flight on this subchannel right now.
    pub fn in_flight(&self) -> usize {
        self.load.in_flight()
    }

    /// The peak-EWMA round-trip estimate (see [`Load::rtt`]).
    pub fn rtt(&self) -> Duration {
        self.load.rtt()
    }
}

impl fmt::Debug for ReadySubchannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadySubchannel")
            .field("address", &format_args!("{}", self.address))
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// Chooses one READY subchannel for a call.
///
/// Called on the hot path of every call, from many tasks at once: implementations must
/// not block, and should keep any state of their own in atomics.
pub trait Picker: Send + Sync + fmt::Debug + 'static {
    /// Returns the index in `ready` of the subchannel to use. `ready` is never empty
    /// and lists subchannels in resolver order. An index past the end wraps around.
    fn pick(&self, ready: &ReadySet) -> usize;
}

/// A load-balancing policy: which [`Picker`] a channel (or a method) uses.
///
/// ```
/// # use std::time::Duration;
/// # use tonic_balancer::Policy;
/// let p2c = Policy::least_request().choice_count(3);
/// let ewma = Policy::peak_ewma().decay(Duration::from_secs(5));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    kind: Kind,
    /// A parameter set that does not belong to this policy, reported by `build()`.
    misuse: Option<&'static str>,
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    RoundRobin,
    PickFirst,
    LeastRequest {
        choice_count: usize,
    },
    PeakEwma(EwmaParams),
    LocalityWeighted {
        table: Arc<locality_weighted::LocalityTable>,
        /// least_request's within a locality; `None`: round robin.
        choice_count: Option<usize>,
    },
}

impl Policy {
    fn of(kind: Kind) -> Self {
        Self { kind, misuse: None }
    }

    /// `round_robin`: each call goes to the next READY subchannel in turn. The default:
    /// it needs no load information and spreads calls evenly over equal backends.
    pub fn round_robin() -> Self {
        Self::of(Kind::RoundRobin)
    }

    /// `pick_first`: every call goes to the first READY address in resolver order; the
    /// others are fail-over. As the channel's only policy it also keeps one connection
    /// at a time, connecting to the addresses in order until one works (gRPC's default
    /// policy and gRFC A62).
    pub fn pick_first() -> Self {
        Self::of(Kind::PickFirst)
    }

    /// `least_request` (gRFC A48): sample [`choice_count`](Policy::choice_count) distinct
    /// READY subchannels at random (default [`DEFAULT_CHOICE_COUNT`]) and take the one
    /// with the fewest calls in flight. With two READY subchannels both are compared.
    pub fn least_request() -> Self {
        Self::of(Kind::LeastRequest {
            choice_count: DEFAULT_CHOICE_COUNT,
        })
    }

    /// `peak_ewma`: power of two choices over `rtt × (in_flight + 1)`, where `rtt` is a
    /// peak-sensitive moving average of each backend's round-trip time (Finagle's and
    /// linkerd's balancer).
    ///
    /// **What is measured:** the time from sending a call to receiving its response
    /// headers. For a unary call that is the whole server-side handling (tonic sends
    /// headers with the response); for a stream it is the time to the stream's start, so
    /// a long-lived stream does not make its backend look slow.
    ///
    /// **How it moves:** a sample slower than the estimate replaces it at once (peak);
    /// faster samples pull it down exponentially, halving the gap every
    /// [`decay`](Policy::decay) × ln 2. A backend not yet measured starts at
    /// [`default_rtt`](Policy::default_rtt).
    ///
    /// **Failures:** a call answered with UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL,
    /// UNKNOWN or RESOURCE_EXHAUSTED, one that fails at the transport, and one abandoned
    /// before its headers can only *raise* the estimate, so a backend that fails fast
    /// never looks fast.
    pub fn peak_ewma() -> Self {
        Self::of(Kind::PeakEwma(EwmaParams {
            decay: DEFAULT_EWMA_DECAY,
            default_rtt: DEFAULT_RTT,
        }))
    }

    /// `least_request`'s sample size: 2..=10; above 10 is clamped to 10 (as gRPC does),
    /// below 2 is rejected by `build()`.
    pub fn choice_count(mut self, count: usize) -> Self {
        match &mut self.kind {
            Kind::LeastRequest { choice_count } => *choice_count = count,
            _ => self.misuse = Some("choice_count applies to least_request only"),
        }
        self
    }

    /// `peak_ewma`'s decay time (default [`DEFAULT_EWMA_DECAY`]); must be > 0.
    pub fn decay(mut self, decay: Duration) -> Self {
        match &mut self.kind {
            Kind::PeakEwma(params) => params.decay = decay,
            _ => self.misuse = Some("decay applies to peak_ewma only"),
        }
        self
    }

    /// `peak_ewma`'s RTT for a backend not yet measured (default [`DEFAULT_RTT`]).
    pub fn default_rtt(mut self, rtt: Duration) -> Self {
        match &mut self.kind {
            Kind::PeakEwma(params) => params.default_rtt = rtt,
            _ => self.misuse = Some("default_rtt applies to peak_ewma only"),
        }
        self
    }

    /// The policy's name as the gRPC service config spells it.
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::RoundRobin => "round_robin",
            Kind::PickFirst => "pick_first",
            Kind::LeastRequest { .. } => "least_request",
            Kind::PeakEwma(_) => "peak_ewma",
            Kind::LocalityWeighted { .. } => "locality_weighted",
        }
    }

    /// Checks the parameters; the error names the offending one.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if let Some(misuse) = self.misuse {
            return Err(InvalidSetting::new(self.name(), misuse));
        }
        match &self.kind {
            Kind::LeastRequest { choice_count } if *choice_count < 2 => Err(InvalidSetting::new(
                "least_request.choice_count",
                format!("must be at least 2, got {choice_count}"),
            )),
            Kind::PeakEwma(params) if params.decay.is_zero() => {
                Err(InvalidSetting::new("peak_ewma.decay", "must be > 0"))
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn is_pick_first(&self) -> bool {
        self.kind == Kind::PickFirst
    }

    pub(crate) fn ewma_params(&self) -> Option<EwmaParams> {
        match self.kind {
            Kind::PeakEwma(params) => Some(params),
            _ => None,
        }
    }

    /// Load counters set up as a channel with this policy sets them up (peak_ewma times
    /// round trips; the others only count calls), for testing or benchmarking pickers.
    pub fn new_load(&self) -> Load {
        match self.kind {
            Kind::PeakEwma(params) => Load::timing_rtt(params.decay, params.default_rtt),
            _ => Load::new(),
        }
    }

    /// This policy's picker, its randomness seeded with `seed`.
    pub fn picker(&self, seed: u64) -> Arc<dyn Picker> {
        match self.kind {
            Kind::RoundRobin => Arc::new(RoundRobin::with_seed(seed)),
            Kind::PickFirst => Arc::new(PickFirst),
            Kind::LeastRequest { choice_count } => Arc::new(LeastRequest::new(choice_count, seed)),
            Kind::PeakEwma(_) => Arc::new(PeakEwma::new(seed)),
            Kind::LocalityWeighted {
                ref table,
                choice_count,
            } => Arc::new(LocalityWeighted::from_table(
                table.clone(),
                choice_count,
                seed,
            )),
        }
    }
}

impl From<&LoadBalancingConfig> for Policy {
    fn from(config: &LoadBalancingConfig) -> Self {
        match config {
            LoadBalancingConfig::PickFirst { .. } => Policy::pick_first(),
            LoadBalancingConfig::RoundRobin => Policy::round_robin(),
            LoadBalancingConfig::LeastRequest { choice_count } => {
                Policy::least_request().choice_count(*choice_count)
            }
            LoadBalancingConfig::PeakEwma { decay, default_rtt } => {
                let mut policy = Policy::peak_ewma();
                if let Some(decay) = decay {
                    policy = policy.decay(*decay);
                }
                if let Some(rtt) = default_rtt {
                    policy = policy.default_rtt(*rtt);
                }
                policy
            }
            // Outlier detection ejects; its child picks.
            LoadBalancingConfig::OutlierDetection(od) => Policy::from(&od.child_policy),
            // Subsetting chooses the addresses; its child picks.
            LoadBalancingConfig::RandomSubsetting(rs) => Policy::from(&rs.child_policy),
            LoadBalancingConfig::LocalityWeighted(lw) => Policy::of(Kind::LocalityWeighted {
                table: Arc::new(locality_weighted::LocalityTable::new(lw)),
                choice_count: match lw.child_policy {
                    LoadBalancingConfig::LeastRequest { choice_count } => Some(choice_count),
                    _ => None,
                },
            }),
            // A policy added to the config format later: the default.
            #[allow(unreachable_patterns)]
            _ => Policy::default(),
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::round_robin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::CallGuard;
    use proptest::prelude::*;

    /// `n` READY subchannels on 127.0.0.1 ports 1, 2, ..., timing round trips.
    fn fleet(n: usize) -> ReadySet {
        let policy = Policy::peak_ewma();
        (1..=n as u16)
            .map(|port| {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                ReadySubchannel::new(Address::new(addr), Arc::new(policy.new_load()))
            })
            .collect()
    }

    fn policies() -> [Policy; 4] {
        [
            Policy::round_robin(),
            Policy::pick_first(),
            Policy::least_request(),
            Policy::peak_ewma(),
        ]
    }

    proptest! {
        #[test]
        fn round_robin_visits_every_ready_subchannel_once_per_cycle(n in 1usize..40, seed: u64) {
            let ready = fleet(n);
            let picker = RoundRobin::with_seed(seed);
            for _ in 0..3 {
                let mut cycle: Vec<usize> = (0..n).map(|_| picker.pick(&ready)).collect();
                cycle.sort_unstable();
                prop_assert_eq!(cycle, (0..n).collect::<Vec<_>>());
            }
        }

        #[test]
        fn in_flight_returns_to_zero_after_any_interleaving(
            n in 1usize..8,
            policy in 0usize..4,
            seed: u64,
            ops in proptest::collection::vec((0u8..3, any::<prop::sample::Index>()), 0..200),
        ) {
            let ready = fleet(n);
            let picker = policies()[policy].picker(seed);
            let mut calls: Vec<CallGuard> = Vec::new();
            for (op, index) in ops {
                match op {
                    // A call is sent.
                    0 => {
                        let i = picker.pick(&ready) % n;
                        calls.push(CallGuard::new(ready[i].load().clone()));
                    }
                    // A call completes (its response arrives, then its stream ends).
                    1 if !calls.is_empty() => {
                        let mut call = calls.swap_remove(index.index(calls.len()));
                        call.responded(None);
                    }
                    // A call is cancelled (its future or stream dropped).
                    _ if !calls.is_empty() => drop(calls.swap_remove(index.index(calls.len()))),
                    _ => {}
                }
                let total: usize = ready.iter().map(|r| r.in_flight()).sum();
                prop_assert_eq!(total, calls.len());
            }
            drop(calls);
            prop_assert!(ready.iter().all(|r| r.in_flight() == 0));
        }
    }

    #[test]
    fn least_request_with_two_ready_compares_both() {
        let ready = fleet(2);
        let _busy: Vec<_> = (0..3)
            .map(|_| CallGuard::new(ready[0].load().clone()))
            .collect();
        for choices in [2, 3, 10] {
            let picker = LeastRequest::new(choices, 9);
            for _ in 0..100 {
                assert_eq!(picker.pick(&ready), 1);
            }
        }
    }

    #[test]
    fn least_request_prefers_idle_subchannels() {
        let ready = fleet(10);
        // Every subchannel but #7 has a call in flight: #7 wins every sample it is in.
        let _busy: Vec<_> = (0..10)
            .filter(|&i| i != 7)
            .map(|i| CallGuard::new(ready[i].load().clone()))
            .collect();
        let picker = LeastRequest::new(2, 1);
        let wins = (0..10_000).filter(|_| picker.pick(&ready) == 7).count();
        // P(#7 among 2 of 10) = 1 - (9/10)(8/9) = 0.2.
        assert!((1_800..=2_200).contains(&wins), "{wins}");
    }

    #[test]
    fn peak_ewma_avoids_the_slow_subchannel() {
        let ready = fleet(5);
        let now = tokio::time::Instant::now();
        for (i, r) in ready.iter().enumerate() {
            let rtt = Duration::from_millis(if i == 3 { 50 } else { 5 });
            r.load().rtt.observe(now, rtt, true);
        }
        let picker = PeakEwma::new(5);
        assert!((0..10_000).all(|_| picker.pick(&ready) != 3));
    }

    #[test]
    fn a_ready_entry_is_two_pointers() {
        assert_eq!(
            std::mem::size_of::<ReadySubchannel>(),
            2 * std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn parameters_are_validated() {
        assert!(Policy::least_request().choice_count(1).validate().is_err());
        assert!(Policy::least_request().choice_count(2).validate().is_ok());
        // Above 10 is clamped, as gRPC does.
        assert!(Policy::least_request().choice_count(50).validate().is_ok());
        assert!(
            Policy::peak_ewma()
                .decay(Duration::ZERO)
                .validate()
                .is_err()
        );
        let misuse = Policy::round_robin()
            .choice_count(3)
            .validate()
            .unwrap_err();
        assert!(misuse.reason.contains("least_request"), "{misuse}");
        let zero = Policy::least_request()
            .choice_count(0)
            .validate()
            .unwrap_err();
        assert_eq!(zero.setting, "least_request.choice_count");
        assert_eq!(Policy::peak_ewma().name(), "peak_ewma");
    }
}
