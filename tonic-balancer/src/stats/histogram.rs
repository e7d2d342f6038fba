//! A lock-free latency histogram: log-linear buckets of atomic counters.
//!
//! Every call records into it from any thread with one `fetch_add`; a snapshot reads
//! the buckets. Each power of two is split into [`SUB_BUCKETS`] buckets, so a
//! percentile is known to within 1/8 of its value (≈ 9 %), which is plenty for golden
//! signals and far cheaper than a locked HDR histogram on the call path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets per power of two.
const SUB_BUCKETS: usize = 8;
/// Powers of two covered, from 1 µs: up to 2^36 µs ≈ 19 hours.
const OCTAVES: usize = 36;
const BUCKETS: usize = OCTAVES * SUB_BUCKETS;

#[derive(Debug)]
pub(crate) struct Histogram {
    buckets: Box<[AtomicU64]>,
    max_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_micros: AtomicU64::new(0),
        }
    }
}

/// The bucket of a value in microseconds (≥ 1).
fn index(micros: u64) -> usize {
    let micros = micros.max(1);
    let octave = 63 - micros.leading_zeros() as usize;
    // The next three bits below the leading one pick the sub-bucket.
    let sub = if octave >= 3 {
        ((micros >> (octave - 3)) & 0b111) as usize
    } else {
        ((micros << (3 - octave)) & 0b111) as usize
    };
    (octave * SUB_BUCKETS + sub).min(BUCKETS - 1)
}

/// The upper bound of a bucket, in microseconds.
fn upper_bound(index: usize) -> f64 {
    let octave = index / SUB_BUCKETS;
    let sub = index % SUB_BUCKETS;
    (1u64 << octave) as f64 * (1.0 + (sub + 1) as f64 / SUB_BUCKETS as f64)
}

impl Histogram {
    pub(crate) fn record(&self, value: Duration) {
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.buckets[index(micros)].fetch_add(1, Ordering::Relaxed);
        self.max_micros.fetch_max(micros, Ordering::Relaxed);
    }

    /// The values at these quantiles (each in [0, 1]), as upper bucket bounds capped at
    /// the largest value seen; `None` if nothing was recorded.
    pub(crate) fn quantiles<const N: usize>(&self, quantiles: [f64; N]) -> Option<[Duration; N]> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let max = self.max_micros.load(Ordering::Relaxed) as f64;
        Some(quantiles.map(|q| {
            let rank = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            let bucket = counts
                .iter()
                .position(|&c| {
                    seen += c;
                    seen >= rank
                })
                .unwrap_or(BUCKETS - 1);
            Duration::from_secs_f64(upper_bound(bucket).min(max) / 1e6)
        }))
    }

    pub(crate) fn max(&self) -> Duration {
        Duration::from_micros(self.max_micros.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn percentiles_of_a_known_spread() {
        let h = Histogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let [p50, p95, p99] = h.quantiles([0.5, 0.95, 0.99]).unwrap();
        let within = |d: Duration, want_ms: f64| {
            let got = d.as_secs_f64() * 1000.0;
            got >= want_ms && got <= want_ms * 1.13
        };
        assert!(within(p50, 50.0), "{p50:?}");
        assert!(within(p95, 95.0), "{p95:?}");
        assert!(within(p99, 99.0), "{p99:?}");
        assert_eq!(h.max(), Duration::from_millis(100));
        assert_eq!(Histogram::default().quantiles([0.5]), None);
    }

    proptest! {
        #[test]
        fn a_value_lands_in_a_bucket_that_bounds_it_within_an_eighth(micros in 1u64..(1 << 35)) {
            let i = index(micros);
            let upper = upper_bound(i);
            prop_assert!(upper >= micros as f64, "{micros} > {upper}");
            prop_assert!(upper <= micros as f64 * 1.125 + 1.0, "{micros} ≪ {upper}");
        }
    }
}
