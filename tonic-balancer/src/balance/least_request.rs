//! `least_request`: the fewest calls in flight among a few random choices (gRFC A48).

use super::Picker;
use super::rng::AtomicRng;
use super::{ReadySet, ReadySubchannel};

/// Samples `choice_count` distinct READY subchannels at random and picks the one with the
/// fewest calls in flight ("power of two choices" at the default of 2).
///
/// Sampling instead of scanning keeps a pick O(choice_count) at any fleet size, and
/// avoids the herd behaviour of always choosing the global minimum, which every client
/// would pile onto at once (Mitzenmacher, "The Power of Two Choices").
#[derive(Debug)]
pub struct LeastRequest {
    choice_count: usize,
    rng: AtomicRng,
}

impl LeastRequest {
    /// A picker comparing `choice_count` candidates (clamped to 2..=10), seeded.
    pub fn new(choice_count: usize, seed: u64) -> Self {
        Self {
            choice_count: choice_count.clamp(2, crate::defaults::MAX_CHOICE_COUNT),
            rng: AtomicRng::new(seed),
        }
    }
}

impl Picker for LeastRequest {
    fn pick(&self, ready: &ReadySet) -> usize {
        p2c(ready, self.choice_count, &self.rng, |r| {
            r.in_flight() as f64
        })
    }
}

/// Samples `choices` distinct entries and returns the index of the cheapest. With no
/// more entries than choices, compares them all.
pub(super) fn p2c<C, F>(ready: &ReadySet, choices: usize, rng: &AtomicRng, cost: F) -> usize
where
    C: PartialOrd,
    F: Fn(&ReadySubchannel) -> C,
{
    // A set in one chunk (up to CHUNK subchannels) is read as the slice it is.
    match ready.as_slice() {
        Some(slice) => p2c_in(slice.len(), |i| &slice[i], choices, rng, cost),
        None => p2c_in(ready.len(), |i| &ready[i], choices, rng, cost),
    }
}

#[inline(always)]
fn p2c_in<'a, C, G, F>(n: usize, at: G, choices: usize, rng: &AtomicRng, cost: F) -> usize
where
    C: PartialOrd,
    G: Fn(usize) -> &'a ReadySubchannel,
    F: Fn(&ReadySubchannel) -> C,
{
    if choices == 2 && n > 2 {
        // The common case as straight-line code: both candidates' loads are read before
        // either is compared, so that their cache misses overlap.
        let (a, b) = rng.two_distinct(n);
        let (cost_a, cost_b) = (cost(at(a)), cost(at(b)));
        return if cost_b < cost_a { b } else { a };
    }
    let cheaper = |a: usize, b: usize| {
        if cost(at(b)) < cost(at(a)) { b } else { a }
    };
    match n {
        0 | 1 => 0,
        _ if n <= choices => (1..n).fold(0, cheaper),
        _ => {
            let mut picked = [0usize; 10];
            let picked = &mut picked[..choices];
            rng.distinct(n, picked);
            picked[1..]
                .iter()
                .fold(picked[0], |best, &i| cheaper(best, i))
        }
    }
}
