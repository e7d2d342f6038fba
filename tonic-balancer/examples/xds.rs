//! An `xds:///orders` channel fed by an xDS control plane that changes the fleet.
//!
//! Run with `cargo run --example xds --features xds`. Everything is in-process on
//! 127.0.0.1: three grpc.testing backends and the test kit's xDS control plane
//! (`tonic_balancer_testkit::xds::ControlPlane`, a real ADS server). The control plane
//! serves the listener `orders` → route configuration → cluster → endpoints alpha and
//! beta; then it marks beta UNHEALTHY and adds gamma, and the channel follows: beta
//! gets no more calls, gamma starts getting them. Last, the route splits calls 90/10
//! between the cluster and a canary cluster (RDS weighted clusters).

use envoy_types::pb::envoy::config::route::v3 as rds;
use std::collections::BTreeMap;
use std::error::Error;
use std::time::Duration;
use tonic_balancer::xds::{self, Bootstrap};
use tonic_balancer::{BalancedChannel, ConnectivityState};
use tonic_balancer_testkit::Backend;
use tonic_balancer_testkit::pb::SimpleRequest;
use tonic_balancer_testkit::pb::test_service_client::TestServiceClient;
use tonic_balancer_testkit::xds::{self as cp, ControlPlane, Health, LocalityEndpoints, Routes};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let alpha = Backend::start("alpha").await?;
    let beta = Backend::start("beta").await?;
    let gamma = Backend::start("gamma").await?;

    let control_plane = ControlPlane::start().await?;
    control_plane.set([cp::listener("orders", Routes::Rds("orders-routes".into()))]);
    control_plane.set([cp::route(cp::route_config(
        "orders-routes",
        &["orders"],
        "orders-cluster",
    ))]);
    control_plane.set([cp::cluster("orders-cluster", "orders-eds")]);
    control_plane.set([cp::endpoints(
        "orders-eds",
        &[LocalityEndpoints::new([
            (alpha.addr(), Health::Healthy),
            (beta.addr(), Health::Healthy),
        ])],
    )]);

    // In production the bootstrap comes from GRPC_XDS_BOOTSTRAP; here, from code.
    println!(
        "bootstrap: {}",
        control_plane.bootstrap_json("example-client")
    );
    xds::set_default_bootstrap(Some(Bootstrap::new(
        control_plane.addr().to_string(),
        "example-client",
    )));
    let channel = BalancedChannel::builder("xds:///orders").build()?;
    channel.ready(Duration::from_secs(10)).await?;
    channel
        .wait_for(|subs| {
            subs.iter()
                .filter(|s| s.state == ConnectivityState::Ready)
                .count()
                == 2
        })
        .await;
    let mut client = TestServiceClient::new(channel.clone());
    println!(
        "alpha and beta from EDS: {:?}",
        spread(&mut client, 20).await?
    );

    control_plane.set([cp::endpoints(
        "orders-eds",
        &[LocalityEndpoints::new([
            (alpha.addr(), Health::Healthy),
            (beta.addr(), Health::Unhealthy),
            (gamma.addr(), Health::Healthy),
        ])],
    )]);
    // Wait until the channel has dropped beta and has gamma READY.
    let (beta_addr, gamma_addr) = (beta.addr(), gamma.addr());
    channel
        .wait_for(|subs| {
            !subs.iter().any(|s| s.address.addr == beta_addr)
                && subs
                    .iter()
                    .any(|s| s.address.addr == gamma_addr && s.state == ConnectivityState::Ready)
        })
        .await;
    println!(
        "beta UNHEALTHY, gamma added: {:?}",
        spread(&mut client, 20).await?
    );

    // A canary: a second cluster takes 10 % of the calls.
    let canary = Backend::start("canary").await?;
    control_plane.set([cp::cluster("orders-canary", "orders-canary-eds")]);
    control_plane.set([cp::endpoints(
        "orders-canary-eds",
        &[LocalityEndpoints::new([(canary.addr(), Health::Healthy)])],
    )]);
    let mut routes = cp::route_config("orders-routes", &["orders"], "orders-cluster");
    if let Some(rds::route::Action::Route(action)) = &mut routes.virtual_hosts[0].routes[0].action {
        let weight = |name: &str, value| rds::weighted_cluster::ClusterWeight {
            name: name.into(),
            weight: Some(envoy_types::pb::google::protobuf::UInt32Value { value }),
            ..Default::default()
        };
        action.cluster_specifier = Some(rds::route_action::ClusterSpecifier::WeightedClusters(
            rds::WeightedCluster {
                clusters: vec![weight("orders-cluster", 90), weight("orders-canary", 10)],
                ..Default::default()
            },
        ));
    }
    control_plane.set([cp::route(routes)]);
    let canary_addr = canary.addr();
    channel
        .wait_for(|subs| {
            subs.iter()
                .any(|s| s.address.addr == canary_addr && s.state == ConnectivityState::Ready)
        })
        .await;
    println!(
        "90/10 with the canary: {:?}",
        spread(&mut client, 100).await?
    );
    Ok(())
}

/// Makes `n` calls and counts them by the backend that served each.
async fn spread(
    client: &mut TestServiceClient<BalancedChannel>,
    n: usize,
) -> Result<BTreeMap<String, usize>, tonic::Status> {
    let mut served = BTreeMap::new();
    for _ in 0..n {
        let request = SimpleRequest {
            fill_server_id: true,
            ..Default::default()
        };
        let id = client.unary_call(request).await?.into_inner().server_id;
        *served.entry(id).or_insert(0) += 1;
    }
    Ok(served)
}
