//! Connectivity states (gRPC's names), of one subchannel or, aggregated, of a channel.

use std::fmt;

/// The connectivity state of a subchannel or, aggregated, of a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectivityState {
    /// Not connected and not trying to.
    Idle,
    /// A connection attempt is under way.
    Connecting,
    /// Connected: calls may be sent.
    Ready,
    /// The last connection attempt failed; the next one waits for the backoff.
    TransientFailure,
    /// Closed for good (the address was removed or the channel dropped).
    Shutdown,
}

impl ConnectivityState {
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Idle,
            1 => Self::Connecting,
            2 => Self::Ready,
            3 => Self::TransientFailure,
            _ => Self::Shutdown,
        }
    }

    pub(crate) fn as_u8(self) -> u8 {
        match self {
            Self::Idle => 0,
            Self::Connecting => 1,
            Self::Ready => 2,
            Self::TransientFailure => 3,
            Self::Shutdown => 4,
        }
    }
}

impl fmt::Display for ConnectivityState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Idle => "IDLE",
            Self::Connecting => "CONNECTING",
            Self::Ready => "READY",
            Self::TransientFailure => "TRANSIENT_FAILURE",
            Self::Shutdown => "SHUTDOWN",
        })
    }
}
