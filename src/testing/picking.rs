//! Pickers without a network: a set of READY subchannels for picker benchmarks.

use crate::balance::{Picker, Policy};
use crate::subchannel::{self, CallGuard, ReadySubchannel};
use std::sync::Arc;

/// A policy's picker over `n` READY subchannels that never connect, for measuring
/// pickers.
///
/// [`pick_and_complete`](PickerFixture::pick_and_complete) does what a call does around
/// the network: pick, count the call as load (and, for peak_ewma, start its RTT clock),
/// record its response and release it.
#[derive(Debug)]
pub struct PickerFixture {
    picker: Arc<dyn Picker>,
    ready: Vec<ReadySubchannel>,
}

impl PickerFixture {
    /// `n` subchannels on 127.0.0.1 ports 2, 3, ..., set up as a channel with this one
    /// policy would set them up. Call within a tokio runtime.
    pub fn new(policy: &Policy, n: usize, seed: u64) -> Self {
        let ewma = policy.ewma_params();
        Self {
            picker: policy.picker(seed),
            ready: (0..n as u64)
                .map(|id| subchannel::fixture(id, ewma))
                .collect(),
        }
    }

    /// The READY set the picker sees.
    pub fn ready(&self) -> &[ReadySubchannel] {
        &self.ready
    }

    /// One call's worth of picking: pick, count it as load, record a response, release.
    /// Returns the picked index.
    pub fn pick_and_complete(&self) -> usize {
        let index = self.picker.pick(&self.ready) % self.ready.len();
        let mut guard = CallGuard::new(self.ready[index].subchannel.clone());
        guard.responded(None);
        drop(guard);
        index
    }
}
