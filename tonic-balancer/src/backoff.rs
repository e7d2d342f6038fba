//! Exponential backoff with jitter, the one formula gRPC uses twice.
//!
//! Connection backoff (grpc/grpc `doc/connection-backoff.md`) and retry backoff (gRFC A6,
//! as amended in 2024) are the same sequence with different parameters:
//!
//! ```text
//! delay(n) = min(initial × multiplier^(n−1), max) × U(1 − jitter, 1 + jitter)     n = 1, 2, ...
//! ```
//!
//! Written here rather than taken from the `backoff` crate, which is unmaintained
//! (RUSTSEC-2025-0012) and reads the std clock, which paused-time tests cannot control.
//! This type reads no clock at all: it only computes delays; callers sleep with tokio.

use rand::Rng;
use std::time::Duration;

/// Parameters of one backoff sequence.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct BackoffParams {
    pub(crate) initial: Duration,
    pub(crate) multiplier: f64,
    pub(crate) max: Duration,
    /// Relative jitter: 0.2 spreads each delay uniformly over ±20 %.
    pub(crate) jitter: f64,
}

/// The state of one backoff sequence: how many delays it has handed out.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    params: BackoffParams,
    /// The un-jittered delay the next call to [`Backoff::next_delay`] starts from.
    current: Duration,
}

impl Backoff {
    pub(crate) fn new(params: BackoffParams) -> Self {
        Self {
            current: params.initial.min(params.max),
            params,
        }
    }

    /// The un-jittered delay the next call will be based on.
    pub(crate) fn current(&self) -> Duration {
        self.current
    }

    /// The next delay, jittered, and advances the sequence.
    pub(crate) fn next_delay<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let base = self.current;
        let grown = base.as_secs_f64() * self.params.multiplier;
        // `grown` may be inf or NaN for absurd inputs; `min` against max keeps it finite.
        self.current = if grown.is_finite() && grown < self.params.max.as_secs_f64() {
            Duration::try_from_secs_f64(grown.max(0.0)).unwrap_or(self.params.max)
        } else {
            self.params.max
        };
        jittered(base, self.params.jitter, rng)
    }

    /// Starts the sequence over (after a success, or on server pushback).
    pub(crate) fn reset(&mut self) {
        self.current = self.params.initial.min(self.params.max);
    }
}

/// `base × U(1 − jitter, 1 + jitter)`, never negative.
fn jittered<R: Rng + ?Sized>(base: Duration, jitter: f64, rng: &mut R) -> Duration {
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    if jitter == 0.0 {
        return base;
    }
    let factor = rng.random_range(1.0 - jitter..=1.0 + jitter);
    // Above `Duration::MAX` (a max delay near it, jittered up) saturates.
    Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{SeedableRng, rngs::SmallRng};

    #[test]
    fn delays_near_duration_max_saturate() {
        let mut rng = SmallRng::seed_from_u64(7);
        for (initial, max) in [
            (Duration::MAX, Duration::MAX),
            (Duration::from_secs(1), Duration::MAX),
            (Duration::MAX / 2, Duration::MAX),
        ] {
            let mut b = Backoff::new(BackoffParams {
                initial,
                multiplier: 1.6,
                max,
                jitter: 0.2,
            });
            for _ in 0..200 {
                assert!(b.next_delay(&mut rng) <= Duration::MAX);
            }
        }
    }

    fn params(initial_ms: u64, multiplier: f64, max_ms: u64) -> BackoffParams {
        BackoffParams {
            initial: Duration::from_millis(initial_ms),
            multiplier,
            max: Duration::from_millis(max_ms),
            jitter: 0.2,
        }
    }

    #[test]
    fn grows_by_the_multiplier_up_to_the_cap() {
        // gRPC connection backoff: 1 s, ×1.6, capped at 120 s.
        let mut b = Backoff::new(params(1000, 1.6, 120_000));
        let mut rng = SmallRng::seed_from_u64(7);
        let mut expected = 1.0f64;
        for _ in 0..20 {
            let d = b.next_delay(&mut rng).as_secs_f64();
            assert!(
                d >= expected * 0.8 - 1e-9 && d <= expected * 1.2 + 1e-9,
                "{d} not within ±20% of {expected}"
            );
            expected = (expected * 1.6).min(120.0);
        }
        assert_eq!(b.current(), Duration::from_secs(120));
        b.reset();
        assert_eq!(b.current(), Duration::from_secs(1));
    }

    #[test]
    fn absurd_parameters_stay_finite() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut b = Backoff::new(BackoffParams {
            initial: Duration::from_secs(1),
            multiplier: f64::INFINITY,
            max: Duration::from_secs(5),
            jitter: f64::NAN,
        });
        assert_eq!(b.next_delay(&mut rng), Duration::from_secs(1));
        assert_eq!(b.next_delay(&mut rng), Duration::from_secs(5));
    }

    proptest! {
        #[test]
        fn every_delay_is_within_jitter_of_its_base(
            seed: u64,
            initial_ms in 1u64..10_000,
            multiplier in 1.0f64..5.0,
            max_ms in 1u64..200_000,
        ) {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut b = Backoff::new(params(initial_ms, multiplier, max_ms));
            for _ in 0..30 {
                let base = b.current().as_secs_f64();
                let d = b.next_delay(&mut rng).as_secs_f64();
                prop_assert!(d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9);
                prop_assert!(b.current() <= Duration::from_millis(max_ms));
            }
        }
    }
}
