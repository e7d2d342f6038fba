//! `locality_weighted`: calls shared among localities by weight, for the xDS resolver.
//!
//! An EDS resource groups a cluster's endpoints into localities (zones), each with a
//! weight; gRPC gives each locality `weight / Σ weight` of the calls (gRFC A27's
//! `weighted_target`, one child policy per locality) and its endpoints share that part
//! through the child policy. The xDS resolver marks each address with its locality
//! ([`Address::locality`](crate::resolver::Address::locality)) and hands the channel a
//! [`LocalityWeightedConfig`] naming each
//! locality's weight and number of endpoints.
//!
//! # How it picks
//! A picker sees only the READY subchannels of one snapshot, and must pick in time that
//! does not grow with the fleet, so it keeps no per-snapshot index of localities.
//! Instead each endpoint stands for its share of its locality's weight (by endpoint
//! weight, equal without them), and a pick is
//! rejection sampling over those per-endpoint weights: take a candidate, accept it with
//! probability `its weight / the largest weight`, else take another. With
//! [`round_robin`](crate::config::LoadBalancingConfig::RoundRobin) as the child the
//! candidates come in turn (so equal weights give exact round robin), with
//! [`least_request`](crate::config::LoadBalancingConfig::LeastRequest) they are drawn at
//! random, `choice_count` of them accepted from the first one's locality, and the one
//! with the fewest calls in flight wins. A candidate costs a lookup of its locality,
//! O(number of localities); a pick takes at most [`MAX_DRAWS`] candidates (about
//! `largest / mean` weight of them on average), and when all are rejected it takes the
//! heaviest one it saw.
//!
//! # Where it differs from gRPC
//! - A locality's share is split among its endpoints as listed in EDS, not among the
//!   READY ones: while some endpoints of a locality are not READY (connecting, failing,
//!   ejected), the locality gets that fraction less of the calls and the other
//!   localities more. gRPC gives the whole share to the locality's READY endpoints.
//! - Within a locality the endpoints are interleaved with the others', in turn or at
//!   random, rather than each locality running its own round robin.
//! - Endpoint weights (EDS `load_balancing_weight` of an endpoint, carried as
//!   [`Address::weight`](crate::resolver::Address::weight)) split a locality's share
//!   among its endpoints; gRPC's round_robin and least_request children ignore them
//!   (only its ring hash and weighted round robin read them).
//! - An address whose locality the config does not list (none, or one that appeared
//!   after the config) is taken as the heaviest, so a mismatch degrades to plain round
//!   robin rather than starving it.

use super::Picker;
use super::ReadySet;
use super::rng::AtomicRng;
use crate::config::LocalityWeightedConfig;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The most candidates one pick takes before it settles for the heaviest one seen.
///
/// With weights within a factor of 8 of each other the chance of using them all is
/// below (7/8)^32 ≈ 1.4 %, and 32 locality lookups stay far cheaper than the call.
pub const MAX_DRAWS: usize = 32;

/// The locality-weighted picker; see the [module docs](self).
#[derive(Debug)]
pub struct LocalityWeighted {
    table: Arc<LocalityTable>,
    /// `least_request`'s sample size within a locality; `None` for round robin.
    choice_count: Option<usize>,
    next: AtomicUsize,
    rng: AtomicRng,
}

/// Each locality's acceptance probability: its per-endpoint weight over the largest.
#[derive(Debug, PartialEq)]
pub(crate) struct LocalityTable {
    localities: Vec<(Arc<str>, f64)>,
}

impl LocalityTable {
    pub(crate) fn new(config: &LocalityWeightedConfig) -> Self {
        // An endpoint of weight w in locality l stands for weight_l × w / Σw_l.
        let per_weight =
            |l: &crate::config::LocalityWeight| f64::from(l.weight) / f64::from(l.endpoints.max(1));
        let largest = config
            .localities
            .iter()
            .map(|l| per_weight(l) * f64::from(l.heaviest_endpoint.max(1)))
            .fold(0.0, f64::max);
        let localities = config
            .localities
            .iter()
            .map(|l| {
                let factor = if largest > 0.0 {
                    per_weight(l) / largest
                } else {
                    1.0
                };
                (Arc::from(l.name.as_str()), factor)
            })
            .collect();
        Self { localities }
    }

    /// The acceptance probability of `address`: its locality's factor times its own
    /// weight (1 where unset).
    fn acceptance(&self, address: &crate::resolver::Address) -> f64 {
        let Some(locality) = address.locality.as_ref() else {
            return 1.0;
        };
        self.localities
            .iter()
            .find(|(name, _)| Arc::ptr_eq(name, locality) || **name == **locality)
            .map_or(1.0, |(_, factor)| {
                factor * f64::from(address.weight.unwrap_or(1).max(1))
            })
    }
}

impl LocalityWeighted {
    /// A picker over these localities: round robin within each (`choice_count` `None`)
    /// or least request among `choice_count` (clamped to 2..=10) random candidates of a
    /// locality; seeded.
    pub fn new(config: &LocalityWeightedConfig, choice_count: Option<usize>, seed: u64) -> Self {
        Self::from_table(Arc::new(LocalityTable::new(config)), choice_count, seed)
    }

    pub(crate) fn from_table(
        table: Arc<LocalityTable>,
        choice_count: Option<usize>,
        seed: u64,
    ) -> Self {
        Self {
            table,
            choice_count: choice_count.map(|c| c.clamp(2, crate::defaults::MAX_CHOICE_COUNT)),
            next: AtomicUsize::new(seed as usize),
            rng: AtomicRng::new(seed),
        }
    }

    /// A uniform number in [0, 1).
    fn unit(&self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// One candidate accepted by weight: `next` gives the candidates.
    fn accepted(&self, ready: &ReadySet, mut next: impl FnMut() -> usize) -> usize {
        let mut heaviest = (0, -1.0);
        for _ in 0..MAX_DRAWS {
            let i = next() % ready.len();
            let acceptance = self.table.acceptance(ready[i].address());
            if acceptance >= 1.0 || self.unit() < acceptance {
                return i;
            }
            if acceptance > heaviest.1 {
                heaviest = (i, acceptance);
            }
        }
        heaviest.0
    }
}

impl Picker for LocalityWeighted {
    fn pick(&self, ready: &ReadySet) -> usize {
        if ready.len() == 1 {
            return 0;
        }
        let Some(choices) = self.choice_count else {
            return self.accepted(ready, || self.next.fetch_add(1, Ordering::Relaxed));
        };
        let random = || self.rng.below(ready.len());
        let first = self.accepted(ready, random);
        let locality = ready[first].address().locality.as_ref();
        let mut best = first;
        let mut taken = 1;
        // More candidates of the first one's locality, at random; a locality with few
        // READY endpoints among many may yield fewer within the bound.
        for _ in 0..MAX_DRAWS {
            if taken == choices {
                break;
            }
            let i = random();
            if i == first || ready[i].address().locality.as_ref() != locality {
                continue;
            }
            taken += 1;
            if ready[i].in_flight() < ready[best].in_flight() {
                best = i;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::ReadySubchannel;
    use crate::config::{LoadBalancingConfig, LocalityWeight};
    use crate::load::{CallGuard, Load};
    use crate::resolver::Address;

    /// `sizes[k]` READY endpoints in locality `l{k}`.
    fn fleet(sizes: &[usize]) -> ReadySet {
        let mut ready = Vec::new();
        let mut port = 1;
        for (k, n) in sizes.iter().enumerate() {
            let name: Arc<str> = Arc::from(format!("l{k}"));
            for _ in 0..*n {
                let mut address = Address::new(([127, 0, 0, 1], port).into());
                address.locality = Some(name.clone());
                port += 1;
                ready.push(ReadySubchannel::new(address, Arc::new(Load::new())));
            }
        }
        ready.into()
    }

    fn config(localities: &[(u32, u32)]) -> LocalityWeightedConfig {
        LocalityWeightedConfig::new(
            localities
                .iter()
                .enumerate()
                .map(|(k, (w, n))| LocalityWeight::new(format!("l{k}"), *w, *n))
                .collect(),
            LoadBalancingConfig::RoundRobin,
        )
    }

    fn shares(picker: &LocalityWeighted, ready: &ReadySet, n: usize) -> Vec<usize> {
        let mut counts = vec![0; ready.len()];
        for _ in 0..n {
            counts[picker.pick(ready) % ready.len()] += 1;
        }
        counts
    }

    #[test]
    fn equal_weights_are_exact_round_robin() {
        let ready = fleet(&[2, 2]);
        let picker = LocalityWeighted::new(&config(&[(5, 2), (5, 2)]), None, 3);
        let picks: Vec<usize> = (0..8).map(|_| picker.pick(&ready)).collect();
        let mut sorted = picks[..4].to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1, 2, 3]);
        assert_eq!(picks[..4], picks[4..]);
    }

    #[test]
    fn localities_get_their_weights_share_whatever_their_size() {
        // 3:1 over localities of 2 and 1 endpoints: 37.5 %, 37.5 %, 25 %.
        let ready = fleet(&[2, 1]);
        for choice_count in [None, Some(2)] {
            let picker = LocalityWeighted::new(&config(&[(3, 2), (1, 1)]), choice_count, 11);
            let counts = shares(&picker, &ready, 40_000);
            let first = counts[0] + counts[1];
            assert!(
                (29_000..=31_000).contains(&first),
                "{choice_count:?}: {counts:?}"
            );
            assert!((14_000..=16_000).contains(&counts[0]), "{counts:?}");
        }
    }

    #[test]
    fn endpoint_weights_split_their_localitys_share() {
        // One locality of weights 3 and 1, another of one endpoint, localities 1:1:
        // 37.5 %, 12.5 %, 50 %.
        let ready = fleet(&[2, 1]);
        let weighted = |ready: &ReadySubchannel, w: u32| {
            let mut address = ready.address().clone();
            address.weight = Some(w);
            ReadySubchannel::new(address, ready.load().clone())
        };
        let ready: ReadySet = vec![
            weighted(&ready[0], 3),
            weighted(&ready[1], 1),
            ready[2].clone(),
        ]
        .into();
        let mut config = config(&[(1, 4), (1, 1)]);
        config.localities[0] = config.localities[0].clone().with_heaviest_endpoint(3);
        let picker = LocalityWeighted::new(&config, None, 7);
        let counts = shares(&picker, &ready, 40_000);
        assert!((14_000..=16_000).contains(&counts[0]), "{counts:?}");
        assert!((4_200..=5_800).contains(&counts[1]), "{counts:?}");
        assert!((19_000..=21_000).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn least_request_compares_within_the_locality_only() {
        // l0 has two endpoints, the first busy; l1 one idle endpoint, weight 1:1.
        let ready = fleet(&[2, 1]);
        let _busy: Vec<_> = (0..3)
            .map(|_| CallGuard::new(ready[0].load().clone()))
            .collect();
        let picker = LocalityWeighted::new(&config(&[(1, 2), (1, 1)]), Some(2), 5);
        let counts = shares(&picker, &ready, 20_000);
        // l0's half goes to its idle endpoint; l1 keeps its half despite being no
        // less loaded than l0's idle one.
        assert!(counts[0] < 1_000, "{counts:?}");
        assert!((9_000..=11_000).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn an_unknown_locality_counts_as_the_heaviest() {
        let mut stray = Address::new(([127, 0, 0, 9], 9).into());
        stray.locality = Some(Arc::from("elsewhere"));
        let stray = ReadySubchannel::new(stray, Arc::new(Load::new()));
        let ready: ReadySet = fleet(&[1, 1]).iter().cloned().chain([stray]).collect();
        let picker = LocalityWeighted::new(&config(&[(4, 1), (1, 1)]), None, 2);
        let counts = shares(&picker, &ready, 30_000);
        // Acceptance 1, 1/4, 1: weights 4:1:4.
        assert!((2_700..=3_900).contains(&counts[1]), "{counts:?}");
        assert!((12_000..=14_700).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn configs_are_validated_naming_the_field() {
        use crate::config::ServiceConfig;
        let check = |lw: LocalityWeightedConfig| {
            let config = ServiceConfig {
                load_balancing: Some(LoadBalancingConfig::LocalityWeighted(Box::new(lw))),
                ..ServiceConfig::default()
            };
            config.validate().map_err(|e| e.to_string())
        };
        assert_eq!(check(config(&[(3, 2), (1, 1)])), Ok(()));
        let root = "loadBalancingConfig[0].locality_weighted";
        assert_eq!(
            check(config(&[(3, 2), (0, 1)])),
            Err(format!("{root}.localities[1].weight: must be > 0, got 0"))
        );
        assert_eq!(
            check(config(&[(3, 0)])),
            Err(format!(
                "{root}.localities[0].endpoints: must be > 0, got 0"
            ))
        );
        let mut twice = config(&[(1, 1), (1, 1)]);
        twice.localities[1].name = "l0".into();
        assert_eq!(
            check(twice),
            Err(format!(
                "{root}.localities[1].name: duplicate locality \"l0\", also at localities[0]"
            ))
        );
        let mut child = config(&[(1, 1)]);
        child.child_policy = LoadBalancingConfig::PickFirst {
            shuffle_address_list: false,
        };
        assert_eq!(
            check(child),
            Err(format!(
                "{root}.childPolicy[0].pick_first: pick_first cannot pick within a locality \
                 (round_robin or least_request)"
            ))
        );
    }
}
