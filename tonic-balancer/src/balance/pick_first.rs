//! `pick_first`: the first READY subchannel in resolver order.

use super::Picker;
use super::ReadySet;

/// Sends every call to the first READY subchannel in resolver order.
///
/// As a channel's only policy, the channel also connects the way gRPC's pick_first does:
/// one address at a time, in order, moving on when one fails, and keeping a single
/// connection once one is READY. As a per-method policy beside others, it picks the first
/// READY of the connections the channel keeps anyway.
#[derive(Debug, Default)]
pub struct PickFirst;

impl Picker for PickFirst {
    fn pick(&self, _ready: &ReadySet) -> usize {
        // The snapshot lists READY subchannels in resolver order.
        0
    }
}
