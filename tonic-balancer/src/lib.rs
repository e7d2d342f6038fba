//! Client-side load balancing and resilience for [tonic] gRPC clients.
//!
//! Replace a tonic `Channel` with a [`BalancedChannel`] and any generated client gets
//! endpoint discovery, one connection per backend with observed connectivity state, and
//! picking among READY backends only:
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use tonic_balancer::{BalancedChannel, Policy};
//!
//! let channel = BalancedChannel::builder("ipv4:10.0.0.1:50051,10.0.0.2:50051")
//!     .policy(Policy::round_robin())
//!     .build()?;
//! // let client = OrdersClient::new(channel);
//! # Ok(()) }
//! ```
//!
//! The path of one call: the channel reads the current picker snapshot (no lock), the
//! policy's [`Picker`](balance::Picker) chooses a READY subchannel, the call counts as load
//! there until its response stream ends, and goes out on that subchannel's HTTP/2
//! connection. Connections, reconnection backoff and address updates live in a
//! background task per channel, never on the call path.

#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![forbid(unsafe_code)]

mod backoff;
pub mod balance;
mod channel;
pub mod config;
mod connectivity;
pub mod credentials;
pub mod deadline;
pub mod defaults;
mod error;
pub mod health;
pub mod load;
pub mod resolver;
pub mod retry;
pub mod stats;
mod subchannel;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "xds")]
pub mod xds;

pub use balance::Policy;
pub use balance::ReadySubchannel;
pub use channel::{
    BalancedChannel, Builder, ConnectionBackoff, DEFAULT_BACKOFF_BASE_DELAY,
    DEFAULT_BACKOFF_JITTER, DEFAULT_BACKOFF_MAX_DELAY, DEFAULT_BACKOFF_MULTIPLIER,
    DEFAULT_MIN_CONNECT_TIMEOUT, KeepaliveConfig, ResponseFuture, WaitForReady,
};
pub use connectivity::ConnectivityState;
pub use error::{Error, ErrorKind, InvalidSetting};
#[cfg(feature = "opentelemetry")]
pub use stats::otel::OpenTelemetry;
pub use subchannel::SubchannelInfo;
