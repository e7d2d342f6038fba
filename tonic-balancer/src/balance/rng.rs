//! A lock-free, seedable random source for pickers.
//!
//! Pickers run on every call from many tasks at once; a `Mutex<SmallRng>` would be the
//! one lock on the call path. SplitMix64 over an atomic counter needs only a
//! `fetch_add`: each draw takes the next point of a Weyl sequence and mixes it. Given a
//! seed, a single-threaded sequence of picks is reproducible.

use std::sync::atomic::{AtomicU64, Ordering};

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

#[derive(Debug)]
pub(crate) struct AtomicRng {
    state: AtomicU64,
}

impl AtomicRng {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            state: AtomicU64::new(seed),
        }
    }

    pub(crate) fn next_u64(&self) -> u64 {
        let mut z = self
            .state
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform index in `0..n` (`n > 0`), by Lemire's multiply-shift; the bias for
    /// n ≪ 2^64 is far below anything a load balancer could notice.
    pub(crate) fn below(&self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Two distinct indices in `0..n` (`n >= 2`), uniformly, from one draw.
    ///
    /// Multiplying the draw by `n` gives the first index in the high 64 bits and, in the
    /// low 64 bits, the fraction the first choice left over. That fraction is uniform
    /// whatever the first index (to within n²/2⁶⁴), so it makes the second draw: one
    /// update of the shared state per pick instead of two, which is one contended cache
    /// line fewer when several threads pick at once.
    pub(crate) fn two_distinct(&self, n: usize) -> (usize, usize) {
        let wide = u128::from(self.next_u64()) * n as u128;
        let a = (wide >> 64) as usize;
        let rest = wide as u64;
        let mut b = ((u128::from(rest) * (n - 1) as u128) >> 64) as usize;
        if b >= a {
            b += 1;
        }
        (a, b)
    }

    /// `k` distinct indices in `0..n` (`2 <= k <= n`, `k <= 10`) into `out`, by rejection:
    /// cheap because k is small next to n, or else n is small.
    pub(crate) fn distinct(&self, n: usize, out: &mut [usize]) {
        let k = out.len();
        let mut filled = 0;
        while filled < k {
            let candidate = self.below(n);
            if !out[..filled].contains(&candidate) {
                out[filled] = candidate;
                filled += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn two_distinct_are_distinct_and_in_range(seed: u64, n in 2usize..2000) {
            let rng = AtomicRng::new(seed);
            for _ in 0..50 {
                let (a, b) = rng.two_distinct(n);
                prop_assert!(a != b && a < n && b < n);
            }
        }

        #[test]
        fn k_distinct_are_distinct_and_in_range(seed: u64, n in 2usize..40, k in 2usize..=10) {
            let k = k.min(n);
            let rng = AtomicRng::new(seed);
            let mut out = [0usize; 10];
            rng.distinct(n, &mut out[..k]);
            let picked = &out[..k];
            prop_assert!(picked.iter().all(|&i| i < n));
            for (i, a) in picked.iter().enumerate() {
                prop_assert!(!picked[i + 1..].contains(a));
            }
        }
    }

    #[test]
    fn draws_are_uniform_enough() {
        let rng = AtomicRng::new(7);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[rng.below(10)] += 1;
        }
        for c in counts {
            assert!((9_500..=10_500).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn two_distinct_pairs_are_uniform_and_take_one_draw() {
        let rng = AtomicRng::new(11);
        let mut counts = [[0u32; 10]; 10];
        for _ in 0..90_000 {
            let (a, b) = rng.two_distinct(10);
            counts[a][b] += 1;
        }
        // 90 ordered pairs, 1 000 expected each (σ ≈ 31): ±15 % is about 5σ.
        for (a, row) in counts.iter().enumerate() {
            for (b, &c) in row.iter().enumerate() {
                if a == b {
                    assert_eq!(c, 0);
                } else {
                    assert!((850..=1_150).contains(&c), "({a}, {b}): {c}");
                }
            }
        }
        // One draw per pair: the state moved 90 000 steps.
        let twin = AtomicRng::new(11);
        for _ in 0..90_000 {
            twin.next_u64();
        }
        assert_eq!(rng.next_u64(), twin.next_u64());
    }

    #[test]
    fn seeded_sequences_repeat() {
        let (a, b) = (AtomicRng::new(3), AtomicRng::new(3));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }
}
