//! `xds:///name` targets: endpoints from an xDS control plane (feature `xds`).
//!
//! Istio, Traffic Director and every Envoy control plane describe a fleet through Envoy's
//! xDS APIs; gRPC's own clients read them directly ("proxyless" mesh, gRFC A27) instead
//! of sending every call through a sidecar. This module starts with the bootstrap: which
//! control plane to ask and who this client is.

mod bootstrap;

pub use bootstrap::{
    BOOTSTRAP_CONFIG_ENV, BOOTSTRAP_FILE_ENV, Bootstrap, BootstrapError, ChannelCreds, Locality,
    Node, XdsServer,
};
