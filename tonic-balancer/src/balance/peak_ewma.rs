//! `peak_ewma`: power of two choices over a latency-and-load cost (Finagle, linkerd).

use super::Picker;
use super::ReadySet;
use super::least_request::p2c;
use super::rng::AtomicRng;

/// Samples two distinct READY subchannels and picks the one with the lower
/// `rtt_estimate × (in_flight + 1)`.
///
/// The RTT estimate is a peak-sensitive moving average kept per subchannel (see
/// [`Policy::peak_ewma`](super::Policy::peak_ewma)): a slow backend is avoided from its
/// first slow answer, and is trusted again only gradually. Multiplying by the calls in
/// flight adds queueing to the picture, so a fast backend that is already busy is not
/// flooded.
#[derive(Debug)]
pub struct PeakEwma {
    rng: AtomicRng,
}

impl PeakEwma {
    /// A seeded picker.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: AtomicRng::new(seed),
        }
    }
}

impl Picker for PeakEwma {
    fn pick(&self, ready: &ReadySet) -> usize {
        p2c(ready, 2, &self.rng, |r| {
            r.load().rtt_nanos() * (r.in_flight() as f64 + 1.0)
        })
    }
}
