//! `xds:///name` targets: endpoints from an xDS control plane (feature `xds`).
//!
//! Istio, Traffic Director and every Envoy control plane describe a fleet through Envoy's
//! xDS APIs; gRPC's own clients read them directly ("proxyless" mesh, gRFC A27) instead
//! of sending every call through a sidecar. This module does the same for this crate's
//! channels: a channel built for `xds:///orders` asks the control plane for the listener
//! `orders`, follows it to its route configuration (inline or RDS) and takes the virtual
//! host whose domains best match `orders`.
//!
//! # Routing (gRFC A28)
//! Each call takes the first route of that virtual host whose matchers it meets: the
//! path (prefix, exact or a whole-path RE2 regex, in any case when `case_sensitive` is
//! false), every header matcher (on the call's metadata, values joined with `,`, `-bin`
//! keys absent), and the route's `runtime_fraction` (its default value). The route names
//! a cluster, or weighted clusters of which each call picks one at random by weight. A
//! call no route takes, or that takes a route which does not forward (a redirect, a
//! direct response), fails with UNAVAILABLE. A call made before the routes are known
//! waits for them within its deadline.
//!
//! Every cluster the routes name is a channel of its own, built with the builder's
//! settings (kept for 15 minutes once no route names it, in case one does again), over the cluster's endpoints (EDS) that are HEALTHY or UNKNOWN. Each
//! locality's priority becomes its addresses' priority: the cluster uses the lowest
//! priority that has a usable backend (see
//! [`Address::priority`](crate::resolver::Address::priority)). Its policy says what the
//! resources say: the [`locality_weighted`](crate::balance::locality_weighted) policy,
//! which splits calls among the localities of the priority in use by their EDS weights,
//! over the cluster's `lb_policy` (ROUND_ROBIN → round robin, LEAST_REQUEST → least
//! request with its `choice_count`) within each locality (or what its
//! `load_balancing_policy` says, gRFC A52: `wrr_locality` over one of those, or one of
//! them alone over all the endpoints of the priority), under the cluster's
//! `outlier_detection` when it has one (gRFC A50: unset fields take A50's defaults,
//! success-rate ejection is on unless `enforcing_success_rate` is 0, failure-percentage
//! ejection only when `enforcing_failure_percentage` is above 0), with its circuit
//! breaker's `max_requests` (gRFC A32), and the share of calls its EDS
//! `drop_overloads` sheds (failed with UNAVAILABLE before any pick). As in gRPC this replaces the builder's policy
//! and service config: an `xds:///` channel's policies and method configs come from the
//! control plane, not from [`Builder::policy`](crate::Builder::policy) or
//! [`Builder::service_config`](crate::Builder::service_config).
//!
//! A call carries its route's deadline and retries to its cluster. A route's deadline is
//! `max_stream_duration.grpc_timeout_header_max`, else `max_stream_duration.max_stream_duration`,
//! else the listener's `common_http_protocol_options.max_stream_duration` (gRFC A31;
//! zero is none); its retry policy (else its virtual host's) becomes an A6
//! retry policy as gRFC A44 says: `retry_on`'s `cancelled`, `deadline-exceeded`,
//! `internal`, `resource-exhausted` and `unavailable` are the retryable codes (other
//! conditions are ignored, and none left is no retries), `num_retries` + 1 the attempts
//! (default 1 retry; at most 5 attempts), `retry_back_off` the backoff (default 25 ms
//! up to 10 × the base), multiplier 2.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! // With GRPC_XDS_BOOTSTRAP (a file) or GRPC_XDS_BOOTSTRAP_CONFIG (JSON) set:
//! let channel = tonic_balancer::BalancedChannel::builder("xds:///orders").build()?;
//! // Or with a bootstrap from code:
//! use tonic_balancer::xds::{Bootstrap, XdsClient};
//! let client = XdsClient::shared(Bootstrap::new("127.0.0.1:18000", "orders-client-1"));
//! let channel = tonic_balancer::BalancedChannel::builder("xds:///orders")
//!     .xds_client(&client)
//!     .build()?;
//! # Ok(()) }
//! ```
//!
//! # The client
//! One ADS stream (state of the world, v3) per control plane and node id, shared by all
//! channels of the process ([`XdsClient::shared`]). Every response is ACKed with its
//! `version_info` and `nonce` when all its resources validate; otherwise it is NACKed
//! with the previous accepted version and an `error_detail` naming each bad resource and
//! field, the valid resources of the response are taken, and each invalid one keeps its
//! last good value. A subscribed resource not heard of within 15 s of being asked for
//! (while connected) is taken as not existing, as is an LDS or CDS resource a later
//! response leaves out (unless the server lists `ignore_resource_deletion`). When the
//! control plane goes away, the client reconnects with gRPC's connection backoff
//! (1 s, ×1.6, up to 120 s, ±20 %) and the channels keep the last good endpoints.
//!
//! # Not supported yet
//! Ring hash (gRFC A42) and the routes' hash policies, `per_try_timeout` and hedging,
//! Envoy's consecutive-failure ejection, circuit breakers other than `max_requests`,
//! TLS to the control plane without a `ca_certificate_file`, resource TTLs,
//! federation (`xds://authority/name`), and the fallback control planes of gRFC A71. A
//! listener or cluster that stops existing after it was used is a resolution error, so
//! the channel keeps its last routes and endpoints where gRPC would fail its calls.

mod bootstrap;
mod client;
mod matcher;
mod resolver;
mod resource;
mod router;

pub use bootstrap::{
    BOOTSTRAP_CONFIG_ENV, BOOTSTRAP_FILE_ENV, Bootstrap, BootstrapError, ChannelCreds, Locality,
    Node, TlsCreds, XdsServer,
};
pub use client::XdsClient;
pub use resolver::XdsResolver;
pub(crate) use router::{RouteMethod, Routed, Router, routed_channel};

use crate::error::{Error, ErrorKind};
use std::sync::{Mutex, PoisonError};

/// The bootstrap `xds:///` targets use instead of the environment's, if set.
static DEFAULT_BOOTSTRAP: Mutex<Option<Bootstrap>> = Mutex::new(None);

/// Sets the bootstrap every later `xds:///` target of this process uses, in place of
/// `GRPC_XDS_BOOTSTRAP` / `GRPC_XDS_BOOTSTRAP_CONFIG`; `None` goes back to the
/// environment. Channels already built keep the client they have.
pub fn set_default_bootstrap(bootstrap: Option<Bootstrap>) {
    *DEFAULT_BOOTSTRAP
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = bootstrap;
}

/// The process's shared client for the default bootstrap, which `xds:///` targets use
/// unless the builder was given one; `target` names the target in errors.
pub(crate) fn target_client(target: &str) -> Result<XdsClient, Error> {
    let configured = DEFAULT_BOOTSTRAP
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let bootstrap = match configured {
        Some(bootstrap) => bootstrap,
        None => Bootstrap::from_env().map_err(|e| {
            Error::caused_by(
                ErrorKind::InvalidConfig,
                format!("target {target:?}: {e}"),
                e,
            )
        })?,
    };
    Ok(XdsClient::shared(bootstrap))
}
