//! `xds:///` targets against the test kit's control plane and real backends on loopback:
//! a real ADS stream, real resources, real calls.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3 as rds;
use support::{Client, call, fast_backoff, fleet, wait_ready, within};
use tonic_balancer::BalancedChannel;
use tonic_balancer::resolver::Resolve;
use tonic_balancer::xds::{Bootstrap, XdsClient};
use tonic_balancer_testkit::xds::{
    self, ControlPlane, Health, LocalityEndpoints, Routes, XdsResource, type_url,
};
use tonic_balancer_testkit::{Backend, Latency};

/// LDS `orders` → RDS `orders-routes` → CDS `orders-cluster` → EDS `orders-eds`.
fn set_orders(cp: &ControlPlane, eds: &[LocalityEndpoints]) {
    cp.set([xds::listener("orders", Routes::Rds("orders-routes".into()))]);
    cp.set([xds::route(xds::route_config(
        "orders-routes",
        &["orders"],
        "orders-cluster",
    ))]);
    cp.set([xds::cluster("orders-cluster", "orders-eds")]);
    cp.set([xds::endpoints("orders-eds", eds)]);
}

fn healthy(backends: &[&Backend]) -> Vec<LocalityEndpoints> {
    vec![LocalityEndpoints::new(
        backends.iter().map(|b| (b.addr(), Health::Healthy)),
    )]
}

/// A channel over the listener `orders` of this control plane, with its own client.
fn orders_channel(cp: &ControlPlane) -> (BalancedChannel, Client) {
    let client = XdsClient::new(Bootstrap::new(cp.addr().to_string(), "test-node"));
    let channel = orders_on(&client);
    (channel.clone(), Client::new(channel))
}

/// The channel of `xds:///orders`, on this (shared) xDS client.
fn orders_on(client: &XdsClient) -> BalancedChannel {
    BalancedChannel::builder("xds:///orders")
        .xds_client(client)
        .connection_backoff(fast_backoff())
        .build()
        .expect("channel")
}

fn addresses(channel: &BalancedChannel) -> BTreeSet<SocketAddr> {
    channel
        .subchannels()
        .iter()
        .map(|s| s.address.addr)
        .collect()
}

/// Calls until `done` holds, each call required to succeed; at most `limit` calls.
async fn call_until(
    client: &mut Client,
    channel: &BalancedChannel,
    limit: usize,
    mut done: impl FnMut(&BalancedChannel) -> bool,
) -> usize {
    for n in 0..limit {
        if done(channel) {
            return n;
        }
        call(client).await.expect("no call may fail");
        tokio::task::yield_now().await;
    }
    panic!("condition not reached within {limit} calls");
}

/// Four tasks calling without pause until stopped, each at most `limit` calls whatever
/// happens; every call must succeed.
struct Callers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<u32>>,
}

impl Callers {
    fn start(client: &Client, limit: u32) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers = (0..4)
            .map(|_| {
                let (mut client, stop) = (client.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut calls = 0u32;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && calls < limit {
                        call(&mut client).await.expect("no call may fail");
                        calls += 1;
                    }
                    calls
                })
            })
            .collect();
        Self { stop, workers }
    }

    /// Stops them; the calls they made in all.
    async fn stop(self) -> u32 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = 0;
        for worker in self.workers {
            total += worker.await.expect("a worker panicked: a call failed");
        }
        total
    }
}

#[tokio::test]
async fn xds_target_spreads_calls_over_the_eds_endpoints_and_acks_each_version() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let backends = fleet(3, Latency::None).await;
        set_orders(&cp, &healthy(&backends.iter().collect::<Vec<_>>()));
        // The only test of this file that uses the process-wide bootstrap.
        tonic_balancer::xds::set_default_bootstrap(Some(Bootstrap::new(
            cp.addr().to_string(),
            "orders-node",
        )));
        let channel = BalancedChannel::builder("xds:///orders")
            .build()
            .expect("xds:///orders");
        // A second channel of the process shares the first one's ADS stream.
        let second = BalancedChannel::builder("xds:///orders").build().unwrap();
        wait_ready(&channel, 3).await;
        wait_ready(&second, 3).await;
        let mut client = Client::new(channel.clone());
        let mut served = std::collections::BTreeMap::new();
        for _ in 0..30 {
            *served.entry(call(&mut client).await.unwrap()).or_insert(0) += 1;
        }
        // Round robin over the three EDS endpoints: ten calls each.
        assert_eq!(
            served.into_iter().collect::<Vec<_>>(),
            vec![("b0".into(), 10), ("b1".into(), 10), ("b2".into(), 10)]
        );
        // The first request of the stream names the node; each type is ACKed with the
        // version and nonce of the response.
        let first = cp.wait_for(|_| true).await;
        assert_eq!(first.type_url, type_url::LISTENER);
        assert_eq!(first.node_id.as_deref(), Some("orders-node"));
        assert_eq!(first.resource_names, vec!["orders".to_string()]);
        assert_eq!(
            (first.version_info.as_str(), first.response_nonce.as_str()),
            ("", "")
        );
        for ty in [
            type_url::LISTENER,
            type_url::ROUTE,
            type_url::CLUSTER,
            type_url::ENDPOINTS,
        ] {
            let ack = cp
                .wait_for(|e| e.type_url == ty && !e.response_nonce.is_empty())
                .await;
            assert_eq!(ack.version_info, "1", "{ty}");
            assert!(!ack.is_nack(), "{ack:?}");
        }
        let streams: BTreeSet<u64> = cp.events().iter().map(|e| e.stream).collect();
        assert_eq!(streams.len(), 1, "one ADS stream for both channels");
        tonic_balancer::xds::set_default_bootstrap(None);
    })
    .await;
}

#[tokio::test]
async fn endpoints_added_and_removed_are_followed_with_no_failed_call() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(3, Latency::None).await;
        set_orders(&cp, &healthy(&[&b[0], &b[1]]));
        let (channel, mut client) = orders_channel(&cp);
        wait_ready(&channel, 2).await;

        cp.set([xds::endpoints(
            "orders-eds",
            &healthy(&[&b[0], &b[1], &b[2]]),
        )]);
        call_until(&mut client, &channel, 5_000, |_| b[2].calls() > 0).await;

        cp.set([xds::endpoints("orders-eds", &healthy(&[&b[0], &b[2]]))]);
        let want: BTreeSet<_> = [b[0].addr(), b[2].addr()].into();
        call_until(&mut client, &channel, 5_000, |ch| addresses(ch) == want).await;
        let before = b[1].calls();
        for _ in 0..20 {
            assert_ne!(call(&mut client).await.unwrap(), "b1");
        }
        assert_eq!(b[1].calls(), before, "a removed endpoint got a call");
    })
    .await;
}

/// The same, with calls in flight: four workers call without pause while the fleet
/// grows and shrinks; every call succeeds.
#[tokio::test]
async fn endpoint_changes_under_concurrent_calls_fail_no_call() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(3, Latency::Fixed(Duration::from_millis(2))).await;
        set_orders(&cp, &healthy(&[&b[0], &b[1]]));
        let (channel, client) = orders_channel(&cp);
        wait_ready(&channel, 2).await;
        let callers = Callers::start(&client, 20_000);
        cp.set([xds::endpoints(
            "orders-eds",
            &healthy(&[&b[0], &b[1], &b[2]]),
        )]);
        let want: BTreeSet<_> = [b[0].addr(), b[1].addr(), b[2].addr()].into();
        channel
            .wait_for(|subs| {
                subs.iter().map(|s| s.address.addr).collect::<BTreeSet<_>>() == want
                    && subs
                        .iter()
                        .all(|s| s.state == tonic_balancer::ConnectivityState::Ready)
            })
            .await;
        let served_by_new = b[2].calls();
        cp.set([xds::endpoints("orders-eds", &healthy(&[&b[2]]))]);
        let want: BTreeSet<_> = [b[2].addr()].into();
        channel
            .wait_for(|subs| subs.iter().map(|s| s.address.addr).collect::<BTreeSet<_>>() == want)
            .await;
        // Let the workers make calls on the final set too before stopping them.
        while b[2].calls() < served_by_new + 50 {
            tokio::task::yield_now().await;
        }
        let total = callers.stop().await;
        assert!(total > 50, "{total} calls");
    })
    .await;
}

#[tokio::test]
async fn unhealthy_and_draining_endpoints_get_no_calls() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(4, Latency::None).await;
        set_orders(
            &cp,
            &[LocalityEndpoints::new([
                (b[0].addr(), Health::Healthy),
                (b[1].addr(), Health::Unhealthy),
                (b[2].addr(), Health::Unknown),
                (b[3].addr(), Health::Draining),
            ])],
        );
        let (channel, mut client) = orders_channel(&cp);
        wait_ready(&channel, 2).await;
        assert_eq!(addresses(&channel), [b[0].addr(), b[2].addr()].into());
        for _ in 0..20 {
            call(&mut client).await.unwrap();
        }
        assert_eq!((b[1].calls(), b[3].calls()), (0, 0));
        assert_eq!(b[0].calls() + b[2].calls(), 20);
    })
    .await;
}

#[tokio::test]
async fn an_invalid_resource_is_nacked_and_the_last_good_one_kept() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(2, Latency::None).await;
        set_orders(&cp, &healthy(&[&b[0], &b[1]]));
        let xds_client = XdsClient::new(Bootstrap::new(cp.addr().to_string(), "test-node"));
        let channel = orders_on(&xds_client);
        let mut client = Client::new(channel.clone());
        wait_ready(&channel, 2).await;
        let acked = cp.wait_for_ack(type_url::ENDPOINTS).await;

        // An endpoint whose address is a host name: gRPC clients take IP addresses only.
        let mut bad = xds::endpoints_proto("orders-eds", &healthy(&[&b[0]]));
        let lb = &mut bad.endpoints[0].lb_endpoints[0];
        if let Some(
            envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(ep),
        ) = &mut lb.host_identifier
            && let Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(
                sa,
            )) = ep.address.as_mut().and_then(|a| a.address.as_mut())
        {
            sa.address = "orders.internal".into();
        }
        cp.set([XdsResource::raw(type_url::ENDPOINTS, "orders-eds", &bad)]);
        let nack = cp.wait_for_nack(type_url::ENDPOINTS).await;
        // The NACK carries the last accepted version, the nonce of the rejected
        // response, and what is wrong.
        assert_eq!(nack.version_info, acked.version_info);
        assert_ne!(nack.response_nonce, acked.response_nonce);
        let error = nack.error.unwrap();
        assert!(error.contains("orders-eds"), "{error}");
        assert!(
            error.contains("\"orders.internal\" is not an IP address"),
            "{error}"
        );

        // A cluster with a policy this client does not support is NACKed as well.
        let mut ring = xds::cluster_proto("orders-cluster", "orders-eds");
        ring.lb_policy = 2; // RING_HASH
        cp.set([XdsResource::raw(type_url::CLUSTER, "orders-cluster", &ring)]);
        let nack = cp.wait_for_nack(type_url::CLUSTER).await;
        assert!(
            nack.error
                .as_deref()
                .unwrap()
                .contains("lb_policy: RING_HASH"),
            "{nack:?}"
        );

        // Calls still spread over the last good endpoints.
        let mut seen = BTreeSet::new();
        for _ in 0..10 {
            seen.insert(call(&mut client).await.unwrap());
        }
        assert_eq!(seen, ["b0".to_string(), "b1".to_string()].into());
        assert_eq!(addresses(&channel), [b[0].addr(), b[1].addr()].into());
        // The client itself kept the last good cluster and endpoints: a channel started
        // now, on the same client, gets them (not the rejected versions).
        let late = orders_on(&xds_client);
        wait_ready(&late, 2).await;
        assert_eq!(addresses(&late), [b[0].addr(), b[1].addr()].into());

        // A valid version after the invalid one is taken and ACKed.
        cp.set([xds::cluster("orders-cluster", "orders-eds")]);
        cp.set([xds::endpoints("orders-eds", &healthy(&[&b[1]]))]);
        cp.wait_for_ack(type_url::ENDPOINTS).await;
        let want: BTreeSet<_> = [b[1].addr()].into();
        call_until(&mut client, &channel, 5_000, |ch| addresses(ch) == want).await;
    })
    .await;
}

#[tokio::test]
async fn calls_go_on_while_the_control_plane_is_away_and_it_resyncs_on_return() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(3, Latency::None).await;
        set_orders(&cp, &healthy(&[&b[0], &b[1]]));
        let (channel, mut client) = orders_channel(&cp);
        wait_ready(&channel, 2).await;
        cp.wait_for_ack(type_url::ENDPOINTS).await;
        let first_stream = cp.events()[0].stream;

        cp.kill().await;
        for _ in 0..20 {
            call(&mut client)
                .await
                .expect("the last good endpoints keep serving");
        }
        assert_eq!(addresses(&channel), [b[0].addr(), b[1].addr()].into());

        // While it is away the fleet changes; the client learns it on a new stream.
        cp.set([xds::endpoints("orders-eds", &healthy(&[&b[0], &b[2]]))]);
        cp.restart().await.unwrap();
        let resubscribed = cp
            .wait_for(|e| e.stream != first_stream && e.type_url == type_url::ENDPOINTS)
            .await;
        // It asks again for what it watched, naming the version it had accepted.
        assert_eq!(resubscribed.resource_names, vec!["orders-eds".to_string()]);
        assert_eq!(resubscribed.version_info, "1");
        cp.wait_for_ack(type_url::ENDPOINTS).await;
        let want: BTreeSet<_> = [b[0].addr(), b[2].addr()].into();
        call_until(&mut client, &channel, 5_000, |ch| addresses(ch) == want).await;
    })
    .await;
}

#[tokio::test]
async fn calls_go_to_the_next_priority_while_the_first_has_no_usable_endpoint() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(2, Latency::None).await;
        let locality = |priority: u32, addr: SocketAddr| {
            let mut locality = LocalityEndpoints::new([(addr, Health::Healthy)]);
            locality.priority = priority;
            locality
        };
        // Priority 0 lists only an address that refuses connections.
        set_orders(
            &cp,
            &[
                locality(0, support::refused_addr()),
                locality(1, b[1].addr()),
            ],
        );
        let (channel, mut client) = orders_channel(&cp);
        wait_ready(&channel, 1).await;
        for _ in 0..10 {
            assert_eq!(call(&mut client).await.unwrap(), "b1");
        }
        // Once priority 0 has a working endpoint, calls go back to it.
        cp.set([xds::endpoints(
            "orders-eds",
            &[locality(0, b[0].addr()), locality(1, b[1].addr())],
        )]);
        call_until(&mut client, &channel, 5_000, |_| b[0].calls() > 0).await;
        for _ in 0..10 {
            assert_eq!(call(&mut client).await.unwrap(), "b0");
        }
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_listener_never_sent_does_not_exist_after_15_seconds() {
    let cp = ControlPlane::start().await.unwrap();
    let client = XdsClient::new(Bootstrap::new(cp.addr().to_string(), "test-node"));
    let mut resolver = client.resolver("missing");
    let started = tokio::time::Instant::now();
    cp.wait_for(|e| e.type_url == type_url::LISTENER).await;
    let resolution = std::future::poll_fn(|cx| resolver.poll_resolve(cx))
        .await
        .expect("a resolution");
    let error = resolution.expect_err("the listener does not exist");
    assert!(
        error.to_string().contains("\"missing\" does not exist"),
        "{error}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(15) && waited < Duration::from_secs(16),
        "{waited:?}"
    );
}

#[tokio::test]
async fn bad_xds_targets_are_errors_at_build() {
    let err = BalancedChannel::builder("xds://authority/orders")
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), tonic_balancer::ErrorKind::InvalidTarget);
    assert!(err.to_string().contains("federation"), "{err}");
    let err = BalancedChannel::builder("xds:///").build().unwrap_err();
    assert_eq!(err.kind(), tonic_balancer::ErrorKind::InvalidTarget);
}

/// gRPC's own xDS client (grpcio's C-core) reads the test control plane's resources as
/// this crate does: it subscribes, ACKs every type with no NACK, and its calls reach the
/// EDS endpoints. This is what makes the control plane (and its resource helpers) a
/// trustworthy reference for the tests above.
#[tokio::test]
async fn grpcio_xds_client_accepts_the_test_control_plane() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(2, Latency::None).await;
        set_orders(&cp, &healthy(&[&b[0], &b[1]]));
        let bootstrap = cp.bootstrap_json("grpcio-node");
        let served = tokio::task::spawn_blocking(move || {
            tonic_balancer_testkit::python::run_xds_client("xds:///orders", &bootstrap, 20)
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("grpcio's xDS client: {e}"));
        assert_eq!(served.len(), 20);
        let ids: BTreeSet<&str> = served.iter().map(String::as_str).collect();
        assert_eq!(
            ids,
            ["b0", "b1"].into(),
            "grpcio round-robins over the EDS endpoints"
        );
        let events = cp.events();
        assert!(events.iter().all(|e| !e.is_nack()), "{events:#?}");
        assert_eq!(events[0].node_id.as_deref(), Some("grpcio-node"));
        for ty in [
            type_url::LISTENER,
            type_url::ROUTE,
            type_url::CLUSTER,
            type_url::ENDPOINTS,
        ] {
            assert!(
                events.iter().any(|e| e.type_url == ty
                    && e.version_info == "1"
                    && !e.response_nonce.is_empty()),
                "no ACK of {ty}: {events:#?}"
            );
        }
    })
    .await;
}

/// The next resolution of `resolver`.
async fn next_resolution(resolver: &mut impl Resolve) -> tonic_balancer::resolver::Resolution {
    std::future::poll_fn(|cx| resolver.poll_resolve(cx))
        .await
        .expect("the resolver goes on")
}

fn addrs_of(resolution: tonic_balancer::resolver::Resolution) -> BTreeSet<SocketAddr> {
    resolution
        .expect("addresses")
        .into_iter()
        .map(|a| a.addr)
        .collect()
}

#[tokio::test]
async fn an_inline_route_config_works_and_the_listener_can_move_to_rds() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(2, Latency::None).await;
        cp.set([xds::cluster("c0", "e0"), xds::cluster("c1", "e1")]);
        cp.set([
            xds::endpoints("e0", &healthy(&[&b[0]])),
            xds::endpoints("e1", &healthy(&[&b[1]])),
        ]);
        cp.set([xds::listener(
            "orders",
            Routes::Inline(Box::new(xds::route_config("inline", &["orders"], "c0"))),
        )]);
        let client = XdsClient::new(Bootstrap::new(cp.addr().to_string(), "test-node"));
        let mut resolver = client.resolver("orders");
        assert_eq!(
            addrs_of(next_resolution(&mut resolver).await),
            [b[0].addr()].into()
        );
        // No RDS request was needed for the inline route config.
        assert!(cp.events().iter().all(|e| e.type_url != type_url::ROUTE));

        cp.set([xds::route(xds::route_config("by-rds", &["orders"], "c1"))]);
        cp.set([xds::listener("orders", Routes::Rds("by-rds".into()))]);
        assert_eq!(
            addrs_of(next_resolution(&mut resolver).await),
            [b[1].addr()].into()
        );
        // c0 and e0 are no longer watched: the client took them back.
        let unsubscribed = cp
            .wait_for(|e| e.type_url == type_url::CLUSTER && e.resource_names == ["c1"])
            .await;
        assert!(!unsubscribed.is_nack());
    })
    .await;
}

#[tokio::test]
async fn a_cluster_left_out_of_a_cds_response_no_longer_exists() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(1, Latency::None).await;
        set_orders(&cp, &healthy(&[&b[0]]));
        let client = XdsClient::new(Bootstrap::new(cp.addr().to_string(), "test-node"));
        let mut resolver = client.resolver("orders");
        assert_eq!(
            addrs_of(next_resolution(&mut resolver).await),
            [b[0].addr()].into()
        );
        // State of the world: a CDS response without the cluster deletes it.
        cp.remove(type_url::CLUSTER, "orders-cluster");
        let error = next_resolution(&mut resolver).await.unwrap_err();
        assert!(
            error
                .to_string()
                .contains("cluster \"orders-cluster\" does not exist"),
            "{error}"
        );
        // An EDS response without the EDS resource deletes nothing (A27).
        cp.set([xds::cluster("orders-cluster", "orders-eds")]);
        assert_eq!(
            addrs_of(next_resolution(&mut resolver).await),
            [b[0].addr()].into()
        );
    })
    .await;
}

#[tokio::test]
async fn a_resource_that_was_never_valid_is_a_resolution_error_naming_the_field() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(1, Latency::None).await;
        set_orders(&cp, &healthy(&[&b[0]]));
        let mut bad = xds::cluster_proto("orders-cluster", "orders-eds");
        bad.eds_cluster_config = None;
        cp.set([XdsResource::raw(type_url::CLUSTER, "orders-cluster", &bad)]);
        let client = XdsClient::new(Bootstrap::new(cp.addr().to_string(), "test-node"));
        let mut resolver = client.resolver("orders");
        let error = next_resolution(&mut resolver).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "xDS cluster \"orders-cluster\" is invalid: eds_cluster_config: missing"
        );
        let nack = cp.wait_for_nack(type_url::CLUSTER).await;
        // Nothing of this type was ever accepted: the NACK carries an empty version.
        assert_eq!(nack.version_info, "");
        assert_eq!(
            nack.error.as_deref(),
            Some("orders-cluster: eds_cluster_config: missing")
        );
    })
    .await;
}

#[test]
fn xds_targets_parse_and_print() {
    use tonic_balancer::resolver::Target;
    let target = Target::parse("xds:///orders").unwrap();
    assert_eq!(
        target,
        Target::Xds {
            name: "orders".into()
        }
    );
    assert_eq!(target.to_string(), "xds:///orders");
    assert_eq!(target.authority(), "orders");
    assert_eq!(Target::parse("xds:orders").unwrap(), target);
    for bad in ["xds:", "xds:///a/b", "xds://"] {
        let err = Target::parse(bad).unwrap_err();
        assert_eq!(
            err.kind(),
            tonic_balancer::ErrorKind::InvalidTarget,
            "{bad}"
        );
    }
}

/// `"tls"` channel credentials (gRFC A65): the ADS stream runs over mutual TLS with the
/// bootstrap's certificate files (the control plane requires a client certificate), the
/// unsupported `google_default` listed first being skipped.
#[cfg(feature = "tls")]
#[tokio::test]
async fn the_ads_stream_runs_over_mutual_tls_from_the_bootstrap_files() {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    within(async {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "xds test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let issue = |names: Vec<String>, usage| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = vec![usage];
            (params.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = issue(
            vec!["localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = issue(Vec::new(), ExtendedKeyUsagePurpose::ClientAuth);
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(server_cert, server_key))
            .client_ca_root(Certificate::from_pem(&ca_pem));
        let cp = ControlPlane::start_tls(tls).await.unwrap();
        let b = fleet(1, Latency::None).await;
        set_orders(&cp, &healthy(&[&b[0]]));

        let dir = std::env::temp_dir().join(format!("xds-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let (ca, cert, key) = (
            file("ca.pem", &ca_pem),
            file("client.pem", &client_cert),
            file("client.key", &client_key),
        );
        let bootstrap = |config: String| {
            Bootstrap::from_json(&format!(
                r#"{{"xds_servers": [{{"server_uri": "localhost:{}",
                     "channel_creds": [{{"type": "google_default"}}, {{"type": "tls", "config": {config}}}]}}],
                    "node": {{"id": "tls-node"}}}}"#,
                cp.addr().port()
            ))
            .unwrap()
        };

        let mutual = XdsClient::new(bootstrap(format!(
            r#"{{"ca_certificate_file": "{ca}", "certificate_file": "{cert}", "private_key_file": "{key}"}}"#
        )));
        let mut resolver = mutual.resolver("orders");
        assert_eq!(addrs_of(next_resolution(&mut resolver).await), [b[0].addr()].into());
        std::fs::remove_dir_all(&dir).unwrap();
        let streams: BTreeSet<Option<String>> =
            cp.events().into_iter().filter(|e| e.node_id.is_some()).map(|e| e.node_id).collect();
        assert_eq!(streams, [Some("tls-node".to_string())].into());
    })
    .await;
}

/// A control plane that accepts connections and closes them at once is retried with
/// gRPC's connection backoff: about 1 s, then ×1.6 each time (±20 %), on tokio's clock.
#[tokio::test(start_paused = true)]
async fn a_failing_control_plane_is_retried_with_the_grpc_backoff() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let _ = tx.send(tokio::time::Instant::now());
            drop(socket);
        }
    });
    let client = XdsClient::new(Bootstrap::new(addr.to_string(), "backoff-node"));
    let _resolver = client.resolver("orders");
    // One attempt may open two connections at the same instant: tonic's channel
    // reconnects once by itself when the connection it handed over dies under the first
    // call. On the paused clock, connections of one attempt share an instant exactly;
    // attempts are the distinct instants.
    let mut times: Vec<tokio::time::Instant> = Vec::new();
    while times.len() < 5 {
        let at = accepted.recv().await.unwrap();
        if times.last() != Some(&at) {
            times.push(at);
        }
    }
    let gaps: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    let mut base = 1.0;
    for (i, gap) in gaps.iter().enumerate() {
        assert!(
            *gap >= base * 0.8 - 0.01 && *gap <= base * 1.2 + 0.01,
            "gap {i}: {gap:.3} s, expected {base:.3} s ±20 % (all: {gaps:?})"
        );
        base *= 1.6;
    }
}

/// What this client NACKs, gRPC's own client NACKs too: an EDS endpoint given by host
/// name instead of IP address is rejected by grpcio (C-core) as well.
#[tokio::test]
async fn grpcio_also_nacks_an_endpoint_given_by_host_name() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(1, Latency::None).await;
        set_orders(&cp, &healthy(&[&b[0]]));
        let mut bad = xds::endpoints_proto("orders-eds", &healthy(&[&b[0]]));
        if let Some(
            envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(ep),
        ) = &mut bad.endpoints[0].lb_endpoints[0].host_identifier
            && let Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(
                sa,
            )) = ep.address.as_mut().and_then(|a| a.address.as_mut())
        {
            sa.address = "orders.internal".into();
        }
        cp.set([XdsResource::raw(type_url::ENDPOINTS, "orders-eds", &bad)]);
        let grpcio = tonic_balancer_testkit::python::spawn_xds_client(
            "xds:///orders",
            &cp.bootstrap_json("grpcio-node"),
        )
        .unwrap_or_else(|e| panic!("grpcio's xDS client: {e}"));
        let nack = cp.wait_for_nack(type_url::ENDPOINTS).await;
        drop(grpcio);
        assert_eq!(nack.version_info, "", "nothing was accepted before");
        // grpcio says: "... orders-eds: INVALID_ARGUMENT: errors parsing EDS resource:
        // [field:endpoints[0].lb_endpoints[0].endpoint.address.socket_address error:Failed
        // to parse address:orders.internal:PORT]"; this client names the same field.
        let error = nack.error.unwrap();
        assert!(error.contains("orders-eds"), "{error}");
        assert!(
            error.contains("endpoints[0].lb_endpoints[0].endpoint.address"),
            "{error}"
        );
    })
    .await;
}

/// With `ignore_resource_deletion` in `server_features`, a cluster left out of a CDS
/// response is not deleted: the channel's resolution goes on from it.
#[tokio::test]
async fn ignore_resource_deletion_keeps_a_cluster_left_out() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(2, Latency::None).await;
        set_orders(&cp, &healthy(&[&b[0]]));
        let mut bootstrap = Bootstrap::new(cp.addr().to_string(), "test-node");
        bootstrap
            .server
            .server_features
            .push("ignore_resource_deletion".into());
        let client = XdsClient::new(bootstrap);
        let mut resolver = client.resolver("orders");
        assert_eq!(
            addrs_of(next_resolution(&mut resolver).await),
            [b[0].addr()].into()
        );
        cp.remove(type_url::CLUSTER, "orders-cluster");
        cp.wait_for_ack(type_url::CLUSTER).await;
        // The next resolution comes from the endpoints changing, not from a deletion.
        cp.set([xds::endpoints("orders-eds", &healthy(&[&b[1]]))]);
        assert_eq!(
            addrs_of(next_resolution(&mut resolver).await),
            [b[1].addr()].into()
        );
    })
    .await;
}

/// A cluster response whose resource cannot even be decoded (so nothing says which
/// cluster it was) is NACKed, and no cached cluster is taken as deleted for being
/// absent from it: a channel started afterwards still gets the last good one.
#[tokio::test]
async fn an_undecodable_resource_deletes_no_cached_one() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(1, Latency::None).await;
        set_orders(&cp, &healthy(&[&b[0]]));
        let xds_client = XdsClient::new(Bootstrap::new(cp.addr().to_string(), "test-node"));
        let channel = orders_on(&xds_client);
        wait_ready(&channel, 1).await;
        cp.wait_for_ack(type_url::CLUSTER).await;

        // Field 1 (a cluster's name, a string) as a varint: not a Cluster on the wire.
        let garbage = envoy_types::pb::google::protobuf::Duration {
            seconds: 5,
            nanos: 0,
        };
        cp.set([XdsResource::raw(
            type_url::CLUSTER,
            "orders-cluster",
            &garbage,
        )]);
        let nack = cp.wait_for_nack(type_url::CLUSTER).await;
        assert!(nack.error.is_some(), "{nack:?}");

        let late = orders_on(&xds_client);
        wait_ready(&late, 1).await;
        assert_eq!(call(&mut Client::new(late)).await.unwrap(), "b0");
    })
    .await;
}

/// Two localities of priority 0: b0 and b1 in the first, b2 in the second.
fn two_localities(b: &[Backend], w0: u32, w1: u32) -> Vec<LocalityEndpoints> {
    let mut first = LocalityEndpoints::new([
        (b[0].addr(), Health::Healthy),
        (b[1].addr(), Health::Healthy),
    ]);
    first.weight = w0;
    let mut second = LocalityEndpoints::new([(b[2].addr(), Health::Healthy)]);
    second.weight = w1;
    vec![first, second]
}

/// Calls per locality: (b0 + b1, b2).
fn by_locality(served: &std::collections::BTreeMap<String, usize>) -> (usize, usize) {
    let of = |id: &str| served.get(id).copied().unwrap_or(0);
    (of("b0") + of("b1"), of("b2"))
}

#[tokio::test]
async fn calls_are_split_by_locality_weight_and_follow_weight_changes() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(3, Latency::None).await;
        // 3:1, though the first locality has two endpoints and the second one.
        set_orders(&cp, &two_localities(&b, 3, 1));
        let xds_client = XdsClient::new(Bootstrap::new(cp.addr().to_string(), "test-node"));
        let channel = BalancedChannel::builder_with_resolver(xds_client.resolver("orders"))
            .connection_backoff(fast_backoff())
            .seed(17)
            .build()
            .unwrap();
        let mut client = Client::new(channel.clone());
        wait_ready(&channel, 3).await;
        // 4 000 calls: 3 000 and 1 000 expected; the tolerance, ±150, is over 5
        // standard deviations of a binomial count (27).
        let served = support::shares(&mut client, 4_000).await;
        let (first, second) = by_locality(&served);
        assert!((2_850..=3_150).contains(&first), "{served:?}");
        assert!((850..=1_150).contains(&second), "{served:?}");
        // Within the first locality its two endpoints share alike.
        assert!((1_350..=1_650).contains(&served["b0"]), "{served:?}");

        // EDS turns the weights around: 1:3.
        cp.set([xds::endpoints("orders-eds", &two_localities(&b, 1, 3))]);
        cp.wait_for_ack(type_url::ENDPOINTS).await;
        // The channel takes the new weights with the next address set: wait for a batch
        // that shows them (b2 expected 75 of 100; the old weights gave it 25).
        let mut batches = 0;
        loop {
            let (_, second) = by_locality(&support::shares(&mut client, 100).await);
            if second >= 60 {
                break;
            }
            batches += 1;
            assert!(batches < 50, "the new weights were not taken");
        }
        let served = support::shares(&mut client, 4_000).await;
        let (first, second) = by_locality(&served);
        assert!((850..=1_150).contains(&first), "{served:?}");
        assert!((2_850..=3_150).contains(&second), "{served:?}");
    })
    .await;
}

/// `orders` with this route configuration for `orders-routes`.
fn set_orders_routed(
    cp: &ControlPlane,
    eds: &[LocalityEndpoints],
    routes: rds::RouteConfiguration,
) {
    set_orders(cp, eds);
    cp.set([xds::route(routes)]);
}

/// The route action of route `i` of `orders-routes`' one virtual host.
fn action(rc: &mut rds::RouteConfiguration, i: usize) -> &mut rds::RouteAction {
    match &mut rc.virtual_hosts[0].routes[i].action {
        Some(rds::route::Action::Route(action)) => action,
        other => panic!("not a route action: {other:?}"),
    }
}

fn millis(n: i64) -> envoy_types::pb::google::protobuf::Duration {
    envoy_types::pb::google::protobuf::Duration {
        seconds: n / 1000,
        nanos: (n % 1000) as i32 * 1_000_000,
    }
}

#[tokio::test]
async fn route_timeouts_become_call_deadlines_per_method() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(1, Latency::Fixed(Duration::from_millis(500))).await;
        // UnaryCall has its own route, with a 100 ms deadline (grpc_timeout_header_max
        // over max_stream_duration, gRFC A31); the default route has none.
        let mut rc = xds::route_config("orders-routes", &["orders"], "orders-cluster");
        let mut unary = rc.virtual_hosts[0].routes[0].clone();
        unary.r#match = Some(rds::RouteMatch {
            path_specifier: Some(rds::route_match::PathSpecifier::Path(
                "/grpc.testing.TestService/UnaryCall".into(),
            )),
            ..Default::default()
        });
        rc.virtual_hosts[0].routes.insert(0, unary);
        action(&mut rc, 0).max_stream_duration = Some(rds::route_action::MaxStreamDuration {
            max_stream_duration: Some(millis(60_000)),
            grpc_timeout_header_max: Some(millis(100)),
            ..Default::default()
        });
        set_orders_routed(&cp, &healthy(&[&b[0]]), rc);
        let (channel, mut client) = orders_channel(&cp);
        wait_ready(&channel, 1).await;
        let status = call(&mut client).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        // EmptyCall takes the default route: no deadline, so it waits out the 500 ms.
        client
            .empty_call(tonic_balancer_testkit::pb::Empty {})
            .await
            .expect("EmptyCall has no deadline");
    })
    .await;
}

#[tokio::test]
async fn a_route_retry_policy_retries_failed_calls() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(1, Latency::None).await;
        let mut rc = xds::route_config("orders-routes", &["orders"], "orders-cluster");
        action(&mut rc, 0).retry_policy = Some(rds::RetryPolicy {
            retry_on: "unavailable,5xx".into(),
            num_retries: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 2 }),
            retry_back_off: Some(rds::retry_policy::RetryBackOff {
                base_interval: Some(millis(10)),
                max_interval: Some(millis(20)),
            }),
            ..Default::default()
        });
        set_orders_routed(&cp, &healthy(&[&b[0]]), rc);
        let (channel, mut client) = orders_channel(&cp);
        wait_ready(&channel, 1).await;
        // Two failures, then success: num_retries 2 is three attempts.
        b[0].fail_next(2, tonic::Code::Unavailable);
        assert_eq!(call(&mut client).await.expect("retried to success"), "b0");
        assert_eq!(b[0].calls(), 3);
        // Three failures exhaust the attempts; the last status is the call's.
        b[0].fail_next(3, tonic::Code::Unavailable);
        let status = call(&mut client).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(b[0].calls(), 6);
        // INTERNAL is not in retry_on: no retry.
        b[0].fail_next(1, tonic::Code::Internal);
        assert_eq!(
            call(&mut client).await.unwrap_err().code(),
            tonic::Code::Internal
        );
        assert_eq!(b[0].calls(), 7);
    })
    .await;
}

/// `orders-cluster` replaced by this Cluster message.
fn set_cluster(cp: &ControlPlane, cluster: envoy_types::pb::envoy::config::cluster::v3::Cluster) {
    cp.set([XdsResource::raw(
        type_url::CLUSTER,
        "orders-cluster",
        &cluster,
    )]);
}

#[tokio::test]
async fn a_least_request_cluster_sends_calls_away_from_busy_endpoints() {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let slow = Backend::builder("slow")
            .latency(Latency::Fixed(Duration::from_secs(30)))
            .start()
            .await
            .unwrap();
        let fast = Backend::start("fast").await.unwrap();
        set_orders(&cp, &healthy(&[&slow, &fast]));
        let mut cluster = xds::cluster_proto("orders-cluster", "orders-eds");
        cluster.lb_policy = LbPolicy::LeastRequest as i32;
        set_cluster(&cp, cluster);
        let (channel, client) = orders_channel(&cp);
        wait_ready(&channel, 2).await;
        // Twenty calls one after the other; a call the slow endpoint takes stays there.
        let mut stuck = Vec::new();
        for _ in 0..20 {
            let mut client = client.clone();
            let mut handle = tokio::spawn(async move { call(&mut client).await });
            let held = slow.in_flight();
            tokio::select! {
                served = &mut handle => assert_eq!(served.unwrap().unwrap(), "fast"),
                () = slow.wait_in_flight(held + 1) => stuck.push(handle),
            }
        }
        // Least request sees the slow endpoint's call in flight and goes to the idle
        // one: at most the first call (a tie) is stuck. Round robin would strand ten.
        assert!(
            stuck.len() <= 1,
            "{} calls went to the busy endpoint",
            stuck.len()
        );
        assert_eq!(fast.calls() as usize, 20 - stuck.len());
        for handle in stuck {
            handle.abort();
        }
    })
    .await;
}

#[tokio::test]
async fn a_clusters_outlier_detection_ejects_a_failing_endpoint() {
    use envoy_types::pb::envoy::config::cluster::v3::OutlierDetection;
    use envoy_types::pb::google::protobuf::UInt32Value;
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(3, Latency::None).await;
        set_orders(&cp, &healthy(&[&b[0], &b[1], &b[2]]));
        let value = |value| Some(UInt32Value { value });
        let mut cluster = xds::cluster_proto("orders-cluster", "orders-eds");
        // Failure percentage only (A50: on when enforcing_failure_percentage > 0;
        // success rate off when enforcing_success_rate is 0).
        cluster.outlier_detection = Some(OutlierDetection {
            interval: Some(millis(50)),
            base_ejection_time: Some(millis(300_000)),
            max_ejection_percent: value(50),
            enforcing_success_rate: value(0),
            enforcing_failure_percentage: value(100),
            failure_percentage_threshold: value(50),
            failure_percentage_minimum_hosts: value(3),
            failure_percentage_request_volume: value(5),
            ..Default::default()
        });
        set_cluster(&cp, cluster);
        let (channel, mut client) = orders_channel(&cp);
        wait_ready(&channel, 3).await;
        b[0].set_failure(1.0, tonic::Code::Unavailable);
        let ejected = |channel: &BalancedChannel| {
            channel
                .stats()
                .endpoints
                .iter()
                .any(|e| e.address.addr == b[0].addr() && e.ejected)
        };
        // Calls drive the counts; each 50 ms interval decides.
        let mut calls = 0;
        while !ejected(&channel) {
            let _ = call(&mut client).await;
            calls += 1;
            assert!(calls < 20_000, "b0 was never ejected");
        }
        let before = b[0].calls();
        let served = support::shares(&mut client, 30).await;
        assert_eq!(served.get("b0"), None, "{served:?}");
        assert_eq!(b[0].calls(), before);
    })
    .await;
}

#[tokio::test]
async fn a_listener_max_stream_duration_is_the_deadline_of_routes_without_one() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(1, Latency::Fixed(Duration::from_millis(500))).await;
        set_orders(&cp, &healthy(&[&b[0]]));
        // The listener says 100 ms; the default route says nothing (gRFC A31).
        let mut manager = xds::http_connection_manager(Routes::Rds("orders-routes".into()));
        manager.common_http_protocol_options = Some(
            envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions {
                max_stream_duration: Some(millis(100)),
                ..Default::default()
            },
        );
        cp.set([xds::listener_with("orders", &manager)]);
        let (channel, mut client) = orders_channel(&cp);
        wait_ready(&channel, 1).await;
        let status = call(&mut client).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    })
    .await;
}

/// gRFC A32: a cluster's `max_requests` caps the calls in flight; a call beyond it
/// fails at once with UNAVAILABLE, and once calls end there is room again.
#[tokio::test]
async fn a_clusters_max_requests_fails_calls_beyond_it() {
    use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, circuit_breakers};
    use envoy_types::pb::google::protobuf::UInt32Value;
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let slow = Backend::builder("slow")
            .latency(Latency::Fixed(Duration::from_secs(30)))
            .start()
            .await
            .unwrap();
        set_orders(&cp, &healthy(&[&slow]));
        let mut cluster = xds::cluster_proto("orders-cluster", "orders-eds");
        cluster.circuit_breakers = Some(CircuitBreakers {
            thresholds: vec![circuit_breakers::Thresholds {
                max_requests: Some(UInt32Value { value: 2 }),
                ..Default::default()
            }],
            ..Default::default()
        });
        set_cluster(&cp, cluster);
        let (channel, client) = orders_channel(&cp);
        wait_ready(&channel, 1).await;
        cp.wait_for_ack(type_url::CLUSTER).await;
        let held: Vec<_> = (0..2)
            .map(|_| {
                let mut client = client.clone();
                tokio::spawn(async move { call(&mut client).await })
            })
            .collect();
        slow.wait_in_flight(2).await;

        let status = call(&mut client.clone()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(status.message().contains("max_requests"), "{status:?}");
        assert_eq!(slow.calls(), 2, "the third call never left the client");

        // Both held calls end (cancelled): their places are free again.
        for handle in held {
            handle.abort();
            let _ = handle.await;
        }
        slow.wait_in_flight(0).await;
        let mut request = tonic::Request::new(tonic_balancer_testkit::pb::Empty {});
        request.set_timeout(Duration::from_millis(100));
        let status = client.clone().empty_call(request).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::DeadlineExceeded,
            "admitted, then too slow: {status:?}"
        );
    })
    .await;
}

/// EDS endpoint weights split a locality's share among its endpoints: 3:1 here.
#[tokio::test]
async fn endpoint_weights_split_their_localitys_calls() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(2, Latency::None).await;
        let mut locality = LocalityEndpoints::new([
            (b[0].addr(), Health::Healthy),
            (b[1].addr(), Health::Healthy),
        ]);
        locality.endpoint_weights = vec![(b[0].addr(), 3), (b[1].addr(), 1)];
        set_orders(&cp, &[locality]);
        let (channel, mut client) = orders_channel(&cp);
        wait_ready(&channel, 2).await;
        // 2 000 calls: 1 500 and 500 expected; ±150 is over 7 standard deviations (19).
        let served = support::shares(&mut client, 2_000).await;
        assert!((1_350..=1_650).contains(&served["b0"]), "{served:?}");
        assert!((350..=650).contains(&served["b1"]), "{served:?}");

        // EDS turns the weights around: the same connections, the new shares.
        let mut locality = LocalityEndpoints::new([
            (b[0].addr(), Health::Healthy),
            (b[1].addr(), Health::Healthy),
        ]);
        locality.endpoint_weights = vec![(b[0].addr(), 1), (b[1].addr(), 3)];
        cp.set([xds::endpoints("orders-eds", &[locality])]);
        cp.wait_for_ack(type_url::ENDPOINTS).await;
        let mut batches = 0;
        while support::shares(&mut client, 100).await.get("b1").copied() < Some(60) {
            batches += 1;
            assert!(batches < 50, "the new weights were not taken");
        }
        let served = support::shares(&mut client, 2_000).await;
        assert!((350..=650).contains(&served["b0"]), "{served:?}");
        assert!((1_350..=1_650).contains(&served["b1"]), "{served:?}");
        let connections: Vec<u64> = channel
            .stats()
            .endpoints
            .iter()
            .map(|e| e.connections)
            .collect();
        assert_eq!(connections, [1, 1], "no reconnection for a new weight");
    })
    .await;
}

/// Cluster `name` (EDS `name-eds`) over these backends.
fn set_cluster_of(cp: &ControlPlane, name: &str, backends: &[&Backend]) {
    let eds = format!("{name}-eds");
    cp.set([xds::cluster(name, &eds)]);
    cp.set([xds::endpoints(&eds, &healthy(backends))]);
}

/// A copy of `orders-routes`' default route with this match and cluster specifier.
fn route_of(
    rc: &rds::RouteConfiguration,
    matcher: rds::RouteMatch,
    to: rds::route_action::ClusterSpecifier,
) -> rds::Route {
    let mut route = rc.virtual_hosts[0].routes[0].clone();
    route.r#match = Some(matcher);
    match &mut route.action {
        Some(rds::route::Action::Route(action)) => action.cluster_specifier = Some(to),
        other => panic!("not a route action: {other:?}"),
    }
    route
}

fn weighted(clusters: &[(&str, u32)]) -> rds::route_action::ClusterSpecifier {
    rds::route_action::ClusterSpecifier::WeightedClusters(rds::WeightedCluster {
        clusters: clusters
            .iter()
            .map(|(name, weight)| rds::weighted_cluster::ClusterWeight {
                name: (*name).into(),
                weight: Some(envoy_types::pb::google::protobuf::UInt32Value { value: *weight }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    })
}

/// One UnaryCall carrying `x-canary: value`; the id of the backend that served it.
async fn canary_call(client: &mut Client, value: &str) -> String {
    let mut request = tonic::Request::new(tonic_balancer_testkit::pb::SimpleRequest {
        fill_server_id: true,
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-canary", value.parse().unwrap());
    let response = client.unary_call(request).await.expect("the call succeeds");
    response.into_inner().server_id
}

fn to_cluster(name: &str) -> rds::route_action::ClusterSpecifier {
    rds::route_action::ClusterSpecifier::Cluster(name.into())
}

fn path_is(path: &str) -> rds::RouteMatch {
    rds::RouteMatch {
        path_specifier: Some(rds::route_match::PathSpecifier::Path(path.into())),
        ..Default::default()
    }
}

#[tokio::test]
async fn weighted_clusters_split_calls_and_a_shift_fails_no_call() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(2, Latency::None).await;
        set_orders(&cp, &healthy(&[&b[0]]));
        set_cluster_of(&cp, "canary", &[&b[1]]);
        // 3:1 between the stable cluster (b0) and the canary (b1).
        let mut rc = xds::route_config("orders-routes", &["orders"], "orders-cluster");
        action(&mut rc, 0).cluster_specifier =
            Some(weighted(&[("orders-cluster", 3), ("canary", 1)]));
        cp.set([xds::route(rc.clone())]);
        let xds_client = XdsClient::new(Bootstrap::new(cp.addr().to_string(), "test-node"));
        let channel = BalancedChannel::builder("xds:///orders")
            .xds_client(&xds_client)
            .connection_backoff(fast_backoff())
            .seed(5)
            .build()
            .unwrap();
        let mut client = Client::new(channel.clone());
        wait_ready(&channel, 2).await;
        // 3 000 and 1 000 expected of 4 000; ±150 is over 5 standard deviations (27).
        let served = support::shares(&mut client, 4_000).await;
        assert!((2_850..=3_150).contains(&served["b0"]), "{served:?}");
        assert!((850..=1_150).contains(&served["b1"]), "{served:?}");

        // The whole of the traffic moves to the canary: the stable cluster's weight
        // becomes 0. Calls keep going meanwhile, and none may fail.
        action(&mut rc, 0).cluster_specifier =
            Some(weighted(&[("orders-cluster", 0), ("canary", 1)]));
        cp.set([xds::route(rc.clone())]);
        let mut batches = 0;
        loop {
            let served = support::shares(&mut client, 50).await;
            if served.get("b1") == Some(&50) {
                break;
            }
            batches += 1;
            assert!(batches < 100, "the shift was not taken: {served:?}");
        }
        // The stable cluster is named by no route: its channel is no longer listed.
        let left: BTreeSet<SocketAddr> = addresses(&channel);
        assert_eq!(left, BTreeSet::from([b[1].addr()]));

        // Back to 3:1 within 15 minutes: the stable cluster's channel was kept (gRFC
        // A28), so b0's endpoint comes back with its count of calls.
        let calls_on = |channel: &BalancedChannel, addr: SocketAddr| {
            channel
                .stats()
                .endpoints
                .iter()
                .find(|e| e.address.addr == addr)
                .map(|e| e.calls)
        };
        action(&mut rc, 0).cluster_specifier =
            Some(weighted(&[("orders-cluster", 3), ("canary", 1)]));
        cp.set([xds::route(rc)]);
        let mut batches = 0;
        while calls_on(&channel, b[0].addr()).is_none() {
            support::shares(&mut client, 10).await;
            batches += 1;
            assert!(batches < 500, "the stable cluster did not come back");
        }
        let calls = calls_on(&channel, b[0].addr()).unwrap();
        assert!(calls >= served["b0"] as u64, "{calls} calls: a new channel");
    })
    .await;
}

#[tokio::test]
async fn header_and_path_routes_send_calls_to_their_clusters_with_their_deadlines() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(2, Latency::None).await;
        let slow = Backend::builder("slow")
            .latency(Latency::Fixed(Duration::from_millis(500)))
            .start()
            .await
            .unwrap();
        set_orders(&cp, &healthy(&[&b[0]]));
        set_cluster_of(&cp, "canary", &[&b[1]]);
        set_cluster_of(&cp, "empties", &[&slow]);
        let mut rc = xds::route_config("orders-routes", &["orders"], "orders-cluster");
        // 1. `x-canary: yes` on any method → canary.
        let mut canary = rds::RouteMatch {
            path_specifier: Some(rds::route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        };
        canary.headers.push(rds::HeaderMatcher {
            name: "x-canary".into(),
            header_match_specifier: Some(rds::header_matcher::HeaderMatchSpecifier::StringMatch(
                envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher {
                    match_pattern: Some(
                        envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::Exact(
                            "yes".into(),
                        ),
                    ),
                    ignore_case: true,
                },
            )),
            ..Default::default()
        });
        // 2. EmptyCall → empties, whose route gives calls 100 ms.
        let mut empties = route_of(
            &rc,
            path_is("/grpc.testing.TestService/EmptyCall"),
            to_cluster("empties"),
        );
        if let Some(rds::route::Action::Route(a)) = &mut empties.action {
            a.max_stream_duration = Some(rds::route_action::MaxStreamDuration {
                grpc_timeout_header_max: Some(millis(100)),
                ..Default::default()
            });
        }
        let canary = route_of(&rc, canary, to_cluster("canary"));
        let routes = &mut rc.virtual_hosts[0].routes;
        routes.insert(0, empties);
        routes.insert(0, canary);
        cp.set([xds::route(rc)]);
        let (channel, mut client) = orders_channel(&cp);
        wait_ready(&channel, 3).await;

        let served = support::shares(&mut client, 20).await;
        assert_eq!(served.get("b0"), Some(&20), "{served:?}");
        for (value, expected) in [("yes", "b1"), ("YES", "b1"), ("no", "b0")] {
            let id = canary_call(&mut client, value).await;
            assert_eq!(id, expected, "x-canary: {value}");
        }
        // EmptyCall goes to the slow backend alone, and its route's 100 ms deadline
        // ends it before the 500 ms the backend takes.
        let before = [b[0].calls(), b[1].calls()];
        let status = client
            .empty_call(tonic_balancer_testkit::pb::Empty {})
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        assert_eq!(slow.calls(), 1);
        assert_eq!([b[0].calls(), b[1].calls()], before);
        // One channel per cluster, each with its endpoint.
        assert_eq!(
            addresses(&channel),
            BTreeSet::from([b[0].addr(), b[1].addr(), slow.addr()])
        );
        // The control plane owns the config: a service config is refused.
        let err = channel.update_service_config_json("{}").unwrap_err();
        assert_eq!(err.kind(), tonic_balancer::ErrorKind::InvalidConfig);
        assert!(err.to_string().contains("xDS control plane"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn a_call_no_route_takes_or_a_non_forwarding_route_takes_fails_unavailable() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(1, Latency::None).await;
        set_orders(&cp, &healthy(&[&b[0]]));
        let mut rc = xds::route_config("orders-routes", &["orders"], "orders-cluster");
        // No default route: UnaryCall goes to the cluster, EmptyCall to a route that
        // does not forward, StreamingOutputCall to nothing.
        let unary = route_of(
            &rc,
            path_is("/grpc.testing.TestService/UnaryCall"),
            to_cluster("orders-cluster"),
        );
        let mut empty = unary.clone();
        empty.r#match = Some(path_is("/grpc.testing.TestService/EmptyCall"));
        empty.action = Some(rds::route::Action::NonForwardingAction(
            rds::NonForwardingAction {},
        ));
        rc.virtual_hosts[0].routes = vec![empty, unary];
        cp.set([xds::route(rc)]);
        let (channel, mut client) = orders_channel(&cp);
        wait_ready(&channel, 1).await;
        call(&mut client).await.expect("UnaryCall has a route");
        let status = client
            .empty_call(tonic_balancer_testkit::pb::Empty {})
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(status.message().contains("does not forward"), "{status:?}");
        let status = client
            .streaming_output_call(
                tonic_balancer_testkit::pb::StreamingOutputCallRequest::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(
            status
                .message()
                .contains("no route of xds:///orders matches"),
            "{status:?}"
        );
        // Both count in the channel's golden signals.
        let stats = channel.stats();
        let errors = |method: &str| {
            stats
                .methods
                .iter()
                .find(|m| m.method.ends_with(method))
                .map_or(0, |m| m.errors.get("UNAVAILABLE").copied().unwrap_or(0))
        };
        assert_eq!(errors("EmptyCall"), 1, "{stats:?}");
        assert_eq!(errors("StreamingOutputCall"), 1, "{stats:?}");
    })
    .await;
}

#[tokio::test]
async fn calls_made_before_the_routes_arrive_wait_for_them_within_their_deadline() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(1, Latency::None).await;
        let (channel, client) = orders_channel(&cp);
        assert_eq!(
            channel.state(),
            tonic_balancer::ConnectivityState::Connecting
        );
        // A call with 10 s to live, made before any route is known.
        let waiting = tokio::spawn({
            let mut client = client.clone();
            async move {
                let mut request = tonic::Request::new(tonic_balancer_testkit::pb::SimpleRequest {
                    fill_server_id: true,
                    ..Default::default()
                });
                request.set_timeout(Duration::from_secs(10));
                let response = client.unary_call(request).await?;
                Ok::<_, tonic::Status>(response.into_inner().server_id)
            }
        });
        // A call whose deadline passes first fails with DEADLINE_EXCEEDED.
        let mut short = tonic::Request::new(tonic_balancer_testkit::pb::Empty {});
        short.set_timeout(Duration::from_millis(50));
        let status = client.clone().empty_call(short).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        assert!(status.message().contains("routes"), "{status:?}");
        assert!(!waiting.is_finished());
        set_orders(&cp, &healthy(&[&b[0]]));
        assert_eq!(
            waiting.await.unwrap().expect("the waiting call succeeds"),
            "b0"
        );
        // The wait counted against its deadline: it had waited 50 ms at least (the
        // short call's whole life) before its cluster's channel sent it.
        let seen = b[0].seen();
        let timeout = seen[0].timeout.expect("a grpc-timeout header");
        assert!(
            timeout <= Duration::from_millis(9_950),
            "sent with {timeout:?} of its 10 s left"
        );
    })
    .await;
}

/// grpcio's own xDS client takes the same routes as `xds:///orders` here: a header
/// route and a regex route it does not match, and weighted clusters it splits its calls
/// over. It ACKs them, so the test control plane's routing resources are ones gRPC
/// accepts.
#[tokio::test]
async fn grpcio_xds_client_takes_the_same_routes_and_weighted_clusters() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(3, Latency::None).await;
        set_orders(&cp, &healthy(&[&b[0]]));
        set_cluster_of(&cp, "canary", &[&b[1]]);
        set_cluster_of(&cp, "by-header", &[&b[2]]);
        let mut rc = xds::route_config("orders-routes", &["orders"], "orders-cluster");
        action(&mut rc, 0).cluster_specifier =
            Some(weighted(&[("orders-cluster", 1), ("canary", 1)]));
        let mut by_header = rds::RouteMatch {
            path_specifier: Some(rds::route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        };
        by_header.headers.push(rds::HeaderMatcher {
            name: "x-canary".into(),
            header_match_specifier: Some(rds::header_matcher::HeaderMatchSpecifier::PresentMatch(
                true,
            )),
            ..Default::default()
        });
        let by_regex = rds::RouteMatch {
            path_specifier: Some(rds::route_match::PathSpecifier::SafeRegex(
                envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
                    regex: "/other\\.Svc/.*".into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        let header_route = route_of(&rc, by_header, to_cluster("by-header"));
        let regex_route = route_of(&rc, by_regex, to_cluster("by-header"));
        rc.virtual_hosts[0].routes.insert(0, regex_route);
        rc.virtual_hosts[0].routes.insert(0, header_route);
        cp.set([xds::route(rc)]);
        let bootstrap = cp.bootstrap_json("grpcio-node");
        let served = tokio::task::spawn_blocking(move || {
            tonic_balancer_testkit::python::run_xds_client("xds:///orders", &bootstrap, 40)
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("grpcio's xDS client: {e}"));
        let ids: BTreeSet<&str> = served.iter().map(String::as_str).collect();
        // 40 calls at 1:1: both clusters get some (all to one has odds 2^-39).
        assert_eq!(ids, ["b0", "b1"].into(), "{served:?}");
        let events = cp.events();
        assert!(events.iter().all(|e| !e.is_nack()), "{events:#?}");

        // This crate's channel on the same resources: the same split, and the header
        // route taken by calls that carry the header.
        let (channel, mut client) = orders_channel(&cp);
        wait_ready(&channel, 3).await;
        let served = support::shares(&mut client, 40).await;
        assert_eq!(
            served.keys().map(String::as_str).collect::<BTreeSet<_>>(),
            ["b0", "b1"].into()
        );
        let id = canary_call(&mut client, "").await;
        assert_eq!(id, "b2");
    })
    .await;
}

#[tokio::test]
async fn an_idle_cluster_is_woken_by_ready_and_by_a_call() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(1, Latency::None).await;
        set_orders(&cp, &healthy(&[&b[0]]));
        let xds_client = XdsClient::new(Bootstrap::new(cp.addr().to_string(), "test-node"));
        let channel = BalancedChannel::builder("xds:///orders")
            .xds_client(&xds_client)
            .connection_backoff(fast_backoff())
            .idle_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let mut client = Client::new(channel.clone());
        call(&mut client).await.unwrap();
        let idle = tonic_balancer::ConnectivityState::Idle;
        // With no call, the cluster's channel goes IDLE, and so does the target's.
        channel.wait_for(|_| channel.state() == idle).await;
        assert!(channel.subchannels().is_empty());
        // Waiting for READY wakes it.
        channel.ready(Duration::from_secs(10)).await.unwrap();
        channel.wait_for(|_| channel.state() == idle).await;
        // So does a call.
        assert_eq!(call(&mut client).await.unwrap(), "b0");
    })
    .await;
}

/// The default route flips between two clusters ten times while four callers keep
/// calling: every call succeeds, and after each flip calls reach the new cluster.
#[tokio::test]
async fn route_flips_between_clusters_under_concurrent_calls_fail_no_call() {
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(2, Latency::Fixed(Duration::from_millis(1))).await;
        set_orders(&cp, &healthy(&[&b[0]]));
        set_cluster_of(&cp, "canary", &[&b[1]]);
        let (channel, client) = orders_channel(&cp);
        wait_ready(&channel, 1).await;
        let callers = Callers::start(&client, 50_000);
        for flip in 0..10 {
            let (to, backend) = match flip % 2 {
                0 => ("canary", &b[1]),
                _ => ("orders-cluster", &b[0]),
            };
            let before = backend.calls();
            cp.set([xds::route(xds::route_config(
                "orders-routes",
                &["orders"],
                to,
            ))]);
            // Calls reach the new cluster (its backend's count moves on by 20).
            while backend.calls() < before + 20 {
                tokio::task::yield_now().await;
            }
        }
        let total = callers.stop().await;
        assert!(total >= 200, "{total} calls");
    })
    .await;
}

/// EDS `policy.drop_overloads`: the share of calls the control plane sheds fails with
/// UNAVAILABLE before any pick, naming the category; without it, no call is dropped.
#[tokio::test]
async fn calls_are_dropped_as_eds_drop_overloads_says() {
    use envoy_types::pb::envoy::config::endpoint::v3 as eds;
    use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
    within(async {
        let cp = ControlPlane::start().await.unwrap();
        let b = fleet(1, Latency::None).await;
        set_orders(&cp, &healthy(&[&b[0]]));
        let (channel, mut client) = orders_channel(&cp);
        wait_ready(&channel, 1).await;
        call(&mut client).await.unwrap();
        let mut cla = xds::endpoints_proto("orders-eds", &healthy(&[&b[0]]));
        cla.policy = Some(eds::cluster_load_assignment::Policy {
            drop_overloads: vec![eds::cluster_load_assignment::policy::DropOverload {
                category: "throttle".into(),
                drop_percentage: Some(FractionalPercent {
                    numerator: 100,
                    denominator: fractional_percent::DenominatorType::Hundred as i32,
                }),
            }],
            ..Default::default()
        });
        cp.set([XdsResource::raw(type_url::ENDPOINTS, "orders-eds", &cla)]);
        cp.wait_for_ack(type_url::ENDPOINTS).await;
        // The channel takes the new config with the endpoints' next update: wait for
        // the first dropped call (all are dropped once it has).
        let before = b[0].calls();
        let mut tries = 0;
        let status = loop {
            match call(&mut client).await {
                Ok(_) => {}
                Err(status) => break status,
            }
            tries += 1;
            assert!(tries < 1_000, "no call was dropped");
        };
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(
            status
                .message()
                .contains("drop_overloads category \"throttle\""),
            "{status:?}"
        );
        let reached = b[0].calls();
        for _ in 0..20 {
            assert!(call(&mut client).await.is_err());
        }
        // Dropped calls never reach the backend.
        assert_eq!(b[0].calls(), reached);
        assert!(reached >= before);
        // The policy removed: calls go through again. A dropped call ends without
        // waiting on anything, so the loop yields for the update to come through.
        cp.set([xds::endpoints("orders-eds", &healthy(&[&b[0]]))]);
        cp.wait_for_ack(type_url::ENDPOINTS).await;
        let mut tries = 0;
        while call(&mut client).await.is_err() {
            tokio::task::yield_now().await;
            tries += 1;
            assert!(tries < 100_000, "calls are still dropped");
        }
    })
    .await;
}
