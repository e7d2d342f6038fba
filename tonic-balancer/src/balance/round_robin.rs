//! `round_robin`: READY subchannels in turn.

use super::Picker;
use super::ReadySet;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Picks READY subchannels in turn: A, B, C, A, ...
///
/// The first pick starts at a seeded offset, as gRPC starts at a random one, so that
/// many clients started together do not all send their first call to the same backend.
#[derive(Debug)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// A round robin whose first pick is derived from `seed`.
    pub fn with_seed(seed: u64) -> Self {
        // Truncation is fine: any offset will do.
        Self {
            next: AtomicUsize::new(seed as usize),
        }
    }
}

impl Picker for RoundRobin {
    fn pick(&self, ready: &ReadySet) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % ready.len()
    }
}
