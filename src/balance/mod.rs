//! Pickers choose a READY subchannel for each call; policies say which picker to use.
//!
//! The channel's control task keeps the list of READY subchannels and publishes it as an
//! immutable snapshot whenever it changes; a call reads the current snapshot without a
//! lock and asks the policy's [`Picker`] for one entry. Pickers see the live load counters
//! of each subchannel (atomics), so load-aware policies need no coordination either.

mod round_robin;

pub use round_robin::RoundRobin;

use crate::subchannel::ReadySubchannel;
use std::fmt;
use std::sync::Arc;

/// Chooses one READY subchannel for a call.
///
/// Called on the hot path of every call, from many tasks at once: implementations must
/// not block, and should keep any state of their own in atomics.
pub trait Picker: Send + Sync + fmt::Debug + 'static {
    /// Returns the index in `ready` of the subchannel to use. `ready` is never empty
    /// and lists subchannels in resolver order.
    fn pick(&self, ready: &[ReadySubchannel]) -> usize;
}

/// A load-balancing policy: which [`Picker`] a channel (or a method) uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    kind: PolicyKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PolicyKind {
    RoundRobin,
}

impl Policy {
    /// `round_robin`: each call goes to the next READY subchannel in turn. The default:
    /// it needs no load information and spreads calls evenly over equal backends.
    pub fn round_robin() -> Self {
        Self {
            kind: PolicyKind::RoundRobin,
        }
    }

    /// The policy's name as the gRPC service config spells it.
    pub fn name(&self) -> &'static str {
        match self.kind {
            PolicyKind::RoundRobin => "round_robin",
        }
    }

    pub(crate) fn picker(&self, seed: u64) -> Arc<dyn Picker> {
        match self.kind {
            PolicyKind::RoundRobin => Arc::new(RoundRobin::with_seed(seed)),
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::round_robin()
    }
}
