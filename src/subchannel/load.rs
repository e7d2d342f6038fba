//! Per-subchannel load: what the pickers read and what each call's guard updates.
//!
//! Everything here is atomics: the picker reads them and every call updates them
//! without a lock.

use super::Subchannel;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Load counters of one subchannel.
#[derive(Debug, Default)]
pub(crate) struct Load {
    in_flight: AtomicUsize,
    started: AtomicU64,
}

impl Load {
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Calls started on this subchannel since it was created.
    pub(crate) fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }
}

/// Counts one call as load on a subchannel from the moment it is sent until it ends.
///
/// The guard lives in the response future and then in the response body, so it is
/// released however the call ends: the response stream finishing or failing, the call
/// failing before a response, or the caller dropping the future or the stream
/// (cancellation). A stream counts as load until it closes.
#[derive(Debug)]
pub(crate) struct CallGuard {
    subchannel: Arc<Subchannel>,
}

impl CallGuard {
    pub(crate) fn new(subchannel: Arc<Subchannel>) -> Self {
        let load = &subchannel.load;
        load.in_flight.fetch_add(1, Ordering::Relaxed);
        load.started.fetch_add(1, Ordering::Relaxed);
        Self { subchannel }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.subchannel
            .load
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}
