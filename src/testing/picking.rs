//! Pickers without a network: a set of READY subchannels for picker benchmarks.

use crate::balance::{self, Picker};
use crate::subchannel::{self, CallGuard, ReadySubchannel};

/// `n` READY subchannels that never connect, for measuring pickers.
///
/// [`pick_and_complete`](PickerFixture::pick_and_complete) does what a call does around
/// the network: pick, count the call as load (in flight, RTT clock started), record its
/// response and release it.
#[derive(Debug)]
pub struct PickerFixture {
    ready: Vec<ReadySubchannel>,
}

impl PickerFixture {
    /// `n` subchannels on 127.0.0.1 ports 2, 3, ... Call within a tokio runtime.
    pub fn new(n: usize) -> Self {
        let params = balance::default_ewma_params();
        Self {
            ready: (0..n as u64)
                .map(|id| subchannel::fixture(id, params))
                .collect(),
        }
    }

    /// The READY set a picker sees.
    pub fn ready(&self) -> &[ReadySubchannel] {
        &self.ready
    }

    /// One call's worth of picking: pick, count it in flight, record a response, release.
    /// Returns the picked index.
    pub fn pick_and_complete(&self, picker: &dyn Picker) -> usize {
        let index = picker.pick(&self.ready) % self.ready.len();
        let mut guard = CallGuard::new(self.ready[index].subchannel.clone());
        guard.responded(None);
        drop(guard);
        index
    }
}
