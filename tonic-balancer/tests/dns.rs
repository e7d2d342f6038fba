//! The DNS resolver against a real DNS server on loopback (`testing::dns::DnsServer`,
//! speaking the wire protocol over UDP and TCP) and real tonic backends.
//!
//! An A record carries no port, so backends behind one name listen on one port at
//! different loopback addresses: 127.0.0.1, 127.0.0.2, ... (all of 127.0.0.0/8 is
//! loopback on Linux) and ::1. SRV tests keep everything on 127.0.0.1.
#![cfg(feature = "dns")]

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use support::*;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::{Code, Status};
use tonic_balancer::resolver::{Dns, DnsOptions};
use tonic_balancer::{BalancedChannel, ConnectivityState};
use tonic_balancer_testkit::dns::{DnsServer, Srv};
use tonic_balancer_testkit::{Backend, Latency};

const TTL: Duration = Duration::from_secs(1);

/// Refresh bounds that let a 1 s TTL through unchanged, fast retries, short timeouts.
fn quick() -> DnsOptions {
    let mut options = DnsOptions::default();
    options.min_refresh = Duration::from_millis(100);
    options.max_refresh = Duration::from_secs(2);
    options.min_re_resolve_interval = Duration::from_millis(100);
    options.retry_base_delay = Duration::from_millis(50);
    options.retry_max_delay = Duration::from_millis(500);
    options.query_timeout = Some(Duration::from_millis(200));
    options
}

/// `n` backends named b0, b1, ... on 127.0.0.1, 127.0.0.2, ... all on one port.
async fn same_port_fleet(n: usize) -> Vec<Backend> {
    'attempt: for _ in 0..20 {
        let first = Backend::builder("b0")
            .bind("127.0.0.1:0".parse().unwrap())
            .start()
            .await
            .unwrap();
        let port = first.addr().port();
        let mut fleet = vec![first];
        for i in 1..n {
            let addr = SocketAddr::from(([127, 0, 0, i as u8 + 1], port));
            match Backend::builder(format!("b{i}")).bind(addr).start().await {
                Ok(backend) => fleet.push(backend),
                // Someone else holds the port on that address: try another port.
                Err(_) => continue 'attempt,
            }
        }
        return fleet;
    }
    panic!("no port free on 127.0.0.1..{n}");
}

fn ips<'a>(backends: impl IntoIterator<Item = &'a Backend>) -> Vec<IpAddr> {
    backends.into_iter().map(|b| b.addr().ip()).collect()
}

fn dns_target(dns: &DnsServer, name: &str, port: u16) -> String {
    format!("dns://{}/{name}:{port}", dns.addr())
}

/// Polls `done` every few milliseconds (the caller's `within` bounds the wait).
async fn until(mut done: impl FnMut() -> bool) {
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    while !done() {
        tick.tick().await;
    }
}

fn addrs_of(channel: &BalancedChannel) -> Vec<SocketAddr> {
    let mut addrs: Vec<_> = channel
        .subchannels()
        .iter()
        .map(|s| s.address.addr)
        .collect();
    addrs.sort();
    addrs
}

/// Callers calling in a loop (bounded) until told to stop.
struct Load {
    stop: watch::Sender<bool>,
    callers: Vec<JoinHandle<(usize, Vec<Status>)>>,
}

impl Load {
    fn start(channel: &BalancedChannel, callers: usize) -> Self {
        let (stop, stopped) = watch::channel(false);
        let callers = (0..callers)
            .map(|_| {
                let mut client = Client::new(channel.clone());
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    let (mut ok, mut failed) = (0, Vec::new());
                    for _ in 0..1_000_000 {
                        if *stopped.borrow() {
                            break;
                        }
                        match call(&mut client).await {
                            Ok(_) => ok += 1,
                            Err(status) => failed.push(status),
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        Self { stop, callers }
    }

    async fn finish(self) -> (usize, Vec<Status>) {
        self.stop.send_replace(true);
        let (mut ok, mut failed) = (0, Vec::new());
        for caller in self.callers {
            let (n, f) = caller.await.unwrap();
            ok += n;
            failed.extend(f);
        }
        (ok, failed)
    }
}

#[tokio::test]
async fn a_records_become_the_address_set() {
    within(async {
        let fleet = same_port_fleet(3).await;
        let port = fleet[0].addr().port();
        let dns = DnsServer::start().await.unwrap();
        dns.set_addrs("orders.test", ips(&fleet), TTL);
        let channel = BalancedChannel::builder(&dns_target(&dns, "orders.test", port))
            .dns_options(quick())
            .build()
            .unwrap();
        wait_ready(&channel, 3).await;
        let counts = shares(&mut Client::new(channel.clone()), 30).await;
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), [10, 10, 10]);
        let mut want: Vec<_> = fleet.iter().map(|b| b.addr()).collect();
        want.sort();
        assert_eq!(addrs_of(&channel), want);
    })
    .await;
}

#[tokio::test]
async fn a_and_aaaa_records_both_become_addresses() {
    within(async {
        let v4 = Backend::builder("v4")
            .bind("127.0.0.1:0".parse().unwrap())
            .start()
            .await
            .unwrap();
        let port = v4.addr().port();
        let v6 = Backend::builder("v6")
            .bind(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)))
            .start()
            .await
            .expect("bind [::1] on the same port");
        let dns = DnsServer::start().await.unwrap();
        dns.set_addrs("dual.test", [v4.addr().ip(), v6.addr().ip()], TTL);
        // Built directly, as a user with a resolver of their own would.
        let resolver = Dns::builder(&dns_target(&dns, "dual.test", port))
            .options(quick())
            .seed(1)
            .build()
            .unwrap();
        let channel = BalancedChannel::builder_with_resolver(resolver)
            .build()
            .unwrap();
        wait_ready(&channel, 2).await;
        let counts = shares(&mut Client::new(channel.clone()), 20).await;
        assert_eq!(counts.get("v4"), Some(&10), "{counts:?}");
        assert_eq!(counts.get("v6"), Some(&10), "{counts:?}");
    })
    .await;
}

#[tokio::test]
async fn a_new_backend_gets_calls_within_its_ttl() {
    within(async {
        let fleet = same_port_fleet(3).await;
        let port = fleet[0].addr().port();
        let dns = DnsServer::start().await.unwrap();
        dns.set_addrs("orders.test", ips(&fleet[..2]), TTL);
        let channel = BalancedChannel::builder(&dns_target(&dns, "orders.test", port))
            .dns_options(quick())
            .connection_backoff(fast_backoff())
            .build()
            .unwrap();
        wait_ready(&channel, 2).await;
        let load = Load::start(&channel, 4);
        until(|| fleet[0].calls() > 50 && fleet[1].calls() > 50).await;

        // The change, while calls run: b2 joins.
        let changed = Instant::now();
        dns.set_addrs("orders.test", ips(&fleet), TTL);
        until(|| fleet[2].calls() > 0).await;
        let took = changed.elapsed();
        let joined = fleet[2].calls();
        until(|| fleet[2].calls() > joined + 100).await;
        let (ok, failed) = load.finish().await;

        eprintln!("b2 got its first call {took:?} after the zone changed (TTL {TTL:?})");
        // The channel looked the name up at most one TTL before the change, so the
        // refresh comes at most one TTL after it; then a lookup and a connection.
        assert!(
            took < TTL + Duration::from_millis(1000),
            "took {took:?} (TTL {TTL:?})"
        );
        assert!(
            failed.is_empty(),
            "{} failed: {:?}",
            failed.len(),
            failed[0]
        );
        assert!(ok > 300, "{ok} calls");
    })
    .await;
}

#[tokio::test]
async fn a_removed_backend_drains_and_gets_no_new_calls() {
    within(async {
        let fleet = same_port_fleet(2).await;
        let port = fleet[0].addr().port();
        let (leaving, staying) = (&fleet[0], &fleet[1]);
        let dns = DnsServer::start().await.unwrap();
        dns.set_addrs("orders.test", ips(&fleet), TTL);
        let channel = BalancedChannel::builder(&dns_target(&dns, "orders.test", port))
            .dns_options(quick())
            .build()
            .unwrap();
        wait_ready(&channel, 2).await;

        // Slow calls on the leaving backend, in flight through the change.
        leaving.set_latency(Latency::Fixed(Duration::from_millis(1500)));
        let mut slow_calls = Vec::new();
        for _ in 0..4 {
            let mut client = Client::new(channel.clone());
            slow_calls.push(tokio::spawn(async move { call(&mut client).await }));
        }
        leaving.wait_in_flight(2).await;

        dns.set_addrs("orders.test", ips([staying]), TTL);
        channel
            .wait_for(|subs| subs.len() == 1 && subs[0].address.addr == staying.addr())
            .await;
        let before = leaving.calls();
        let counts = shares(&mut Client::new(channel.clone()), 50).await;
        assert_eq!(counts.get("b1"), Some(&50), "{counts:?}");
        assert_eq!(
            leaving.calls(),
            before,
            "the removed backend got a new call"
        );
        // The calls in flight on it finish, and finish OK.
        let mut drained = 0;
        for slow in slow_calls {
            if slow.await.unwrap().expect("in-flight call") == "b0" {
                drained += 1;
            }
        }
        assert_eq!(drained, 2);
        assert_eq!(leaving.in_flight(), 0);
    })
    .await;
}

#[tokio::test]
async fn the_last_good_set_keeps_serving_while_the_dns_server_is_away() {
    within(async {
        let fleet = same_port_fleet(3).await;
        let port = fleet[0].addr().port();
        let dns = DnsServer::start().await.unwrap();
        dns.set_addrs("orders.test", ips(&fleet[..2]), TTL);
        let channel = BalancedChannel::builder(&dns_target(&dns, "orders.test", port))
            .dns_options(quick())
            .build()
            .unwrap();
        wait_ready(&channel, 2).await;
        let load = Load::start(&channel, 4);

        dns.stop().await;
        // A load window, not a wait for an event: long enough for two refreshes (TTL
        // 1 s) to fail against the closed port (each lookup gives up within 2 × 200 ms).
        let away = Instant::now();
        until(|| away.elapsed() > 2 * TTL + Duration::from_millis(800)).await;
        let calls_while_away = fleet[0].calls() + fleet[1].calls();
        assert_eq!(
            addrs_of(&channel).len(),
            2,
            "the last good set is still there"
        );

        // The server comes back with a changed zone: the resolver, still retrying,
        // picks it up.
        dns.set_addrs("orders.test", ips(&fleet), TTL);
        dns.restart().await.unwrap();
        until(|| fleet[2].calls() > 20).await;
        let (ok, failed) = load.finish().await;
        assert!(
            failed.is_empty(),
            "{} failed: {:?}",
            failed.len(),
            failed[0]
        );
        assert!(calls_while_away > 200, "{calls_while_away} calls");
        assert!(ok > 200);
    })
    .await;
}

#[tokio::test]
async fn a_name_that_never_resolves_fails_calls_with_the_dns_error() {
    within(async {
        let backend = Backend::start("late").await.unwrap();
        let port = backend.addr().port();
        let dns = DnsServer::start().await.unwrap();
        let channel = BalancedChannel::builder(&dns_target(&dns, "nowhere.test", port))
            .dns_options(quick())
            .build()
            .unwrap();
        let mut client = Client::new(channel.clone());
        let status = call(&mut client).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let message = status.message();
        assert!(
            message.contains("nowhere.test")
                && message.contains("NXDOMAIN")
                && message.contains("DNS lookup"),
            "{message}"
        );
        assert_eq!(channel.state(), ConnectivityState::TransientFailure);

        // Once the name exists, the retries find it.
        dns.set_addrs("nowhere.test", [backend.addr().ip()], TTL);
        wait_ready(&channel, 1).await;
        assert_eq!(call(&mut client).await.unwrap(), "late");

        // A name that exists with no address records (NODATA).
        dns.set_srv("srv-only.test", [Srv::new(1, 1, port, "nowhere.test")], TTL);
        let channel = BalancedChannel::builder(&dns_target(&dns, "srv-only.test", port))
            .dns_options(quick())
            .build()
            .unwrap();
        let status = call(&mut Client::new(channel)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status
                .message()
                .contains("DNS lookup of srv-only.test: no A or AAAA records"),
            "{}",
            status.message()
        );

        // No DNS server at all: the error says the lookup got no answer.
        dns.stop().await;
        let channel = BalancedChannel::builder(&dns_target(&dns, "orders.test", port))
            .dns_options(quick())
            .build()
            .unwrap();
        let status = call(&mut Client::new(channel)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        eprintln!("with the DNS server gone: {}", status.message());
        assert!(
            status.message().contains("DNS lookup of orders.test"),
            "{}",
            status.message()
        );
    })
    .await;
}

#[tokio::test]
async fn srv_records_give_host_port_pairs_by_priority() {
    within(async {
        let primary = fleet(2, Latency::None).await; // b0, b1
        let backup = Backend::start("backup").await.unwrap();
        let dns = DnsServer::start().await.unwrap();
        let localhost = [primary[0].addr().ip()];
        for host in ["a.test", "b.test", "c.test"] {
            dns.set_addrs(host, localhost, TTL);
        }
        dns.set_srv(
            "_grpc._tcp.orders.test",
            [
                Srv::new(10, 60, primary[0].addr().port(), "a.test"),
                Srv::new(10, 40, primary[1].addr().port(), "b.test"),
                Srv::new(20, 1, backup.addr().port(), "c.test"),
            ],
            TTL,
        );
        let target = format!("dns+srv://{}/_grpc._tcp.orders.test", dns.addr());
        let channel = BalancedChannel::builder(&target)
            .dns_options(quick())
            .build()
            .unwrap();
        let mut client = Client::new(channel.clone());
        // Every priority connects (the backup stays warm) ...
        wait_ready(&channel, 3).await;
        // ... but calls go to the lowest priority with a READY backend.
        let counts = shares(&mut client, 40).await;
        assert_eq!(counts.get("b0"), Some(&20), "{counts:?}");
        assert_eq!(counts.get("b1"), Some(&20), "{counts:?}");
        assert_eq!(backup.calls(), 0, "priority 20 is a fallback only");
        let mut attributes: Vec<_> = channel
            .subchannels()
            .iter()
            .map(|s| (s.address.addr, s.address.priority, s.address.weight))
            .collect();
        attributes.sort();
        let mut want = vec![
            (primary[0].addr(), Some(10), Some(60)),
            (primary[1].addr(), Some(10), Some(40)),
            (backup.addr(), Some(20), Some(1)),
        ];
        want.sort();
        assert_eq!(attributes, want);

        // Every target of priority 10 stops resolving: priority 20 takes over.
        dns.remove("a.test");
        dns.remove("b.test");
        channel
            .wait_for(|subs| subs.len() == 1 && subs[0].address.addr == backup.addr())
            .await;
        wait_ready(&channel, 1).await;
        let counts = shares(&mut client, 10).await;
        assert_eq!(counts.get("backup"), Some(&10), "{counts:?}");

        // One target of priority 10 is back: its group wins again.
        dns.set_addrs("a.test", localhost, TTL);
        channel
            .wait_for(|subs| subs.len() == 2 && subs[0].address.addr == primary[0].addr())
            .await;
        wait_ready(&channel, 2).await;
        until_served_by(&mut client, "b0").await;
        let counts = shares(&mut client, 10).await;
        assert_eq!(counts.get("b0"), Some(&10), "{counts:?}");
    })
    .await;
}

/// Calls until one is served by `id` (a subchannel's READY state shows a moment
/// before the channel publishes it to the pickers); at most 1000 calls.
async fn until_served_by(client: &mut Client, id: &str) {
    for _ in 0..1000 {
        if call(client).await.is_ok_and(|served| served == id) {
            return;
        }
    }
    panic!("no call reached {id}");
}

#[tokio::test]
async fn srv_fails_over_when_every_backend_of_a_priority_is_unreachable() {
    within(async {
        let primary = Backend::start("primary").await.unwrap();
        let backup = Backend::start("backup").await.unwrap();
        // Its name resolves, but nothing listens: only connecting can tell.
        primary.kill().await;
        let dns = DnsServer::start().await.unwrap();
        let localhost = [primary.addr().ip()];
        dns.set_addrs("a.test", localhost, TTL);
        dns.set_addrs("c.test", localhost, TTL);
        dns.set_srv(
            "_grpc._tcp.orders.test",
            [
                Srv::new(10, 1, primary.addr().port(), "a.test"),
                Srv::new(20, 1, backup.addr().port(), "c.test"),
            ],
            TTL,
        );
        let target = format!("dns+srv://{}/_grpc._tcp.orders.test", dns.addr());
        let channel = BalancedChannel::builder(&target)
            .dns_options(quick())
            .connection_backoff(fast_backoff())
            .build()
            .unwrap();
        let mut client = Client::new(channel.clone());
        let counts = shares(&mut client, 10).await;
        assert_eq!(counts.get("backup"), Some(&10), "{counts:?}");

        // Priority 10 is reachable again: calls move back to it.
        primary.restart().await.unwrap();
        until_served_by(&mut client, "primary").await;
        let backup_calls = backup.calls();
        let counts = shares(&mut client, 10).await;
        assert_eq!(counts.get("primary"), Some(&10), "{counts:?}");
        assert_eq!(backup.calls(), backup_calls);
    })
    .await;
}

#[tokio::test]
async fn a_lost_connection_re_resolves_long_before_the_ttl() {
    within(async {
        let fleet = same_port_fleet(2).await;
        let port = fleet[0].addr().port();
        let dns = DnsServer::start().await.unwrap();
        // A long TTL: no refresh will come during this test.
        dns.set_addrs("orders.test", ips([&fleet[0]]), Duration::from_secs(300));
        let mut options = quick();
        options.max_refresh = Duration::from_secs(300);
        let channel = BalancedChannel::builder(&dns_target(&dns, "orders.test", port))
            .dns_options(options)
            .connection_backoff(fast_backoff())
            .build()
            .unwrap();
        let mut client = Client::new(channel.clone());
        wait_ready(&channel, 1).await;
        assert_eq!(call(&mut client).await.unwrap(), "b0");
        let queries = dns.queries();

        // The instance moves: the zone says so, the old one dies.
        dns.set_addrs("orders.test", ips([&fleet[1]]), Duration::from_secs(300));
        let moved = Instant::now();
        fleet[0].kill().await;
        channel
            .wait_for(|subs| {
                subs.len() == 1
                    && subs[0].address.addr == fleet[1].addr()
                    && subs[0].state == ConnectivityState::Ready
            })
            .await;
        eprintln!("moved after {:?}", moved.elapsed());
        assert!(dns.queries() > queries, "a lookup was made");
        assert!(moved.elapsed() < Duration::from_secs(10));
        assert_eq!(call(&mut client).await.unwrap(), "b1");
    })
    .await;
}

#[tokio::test]
async fn malformed_dns_targets_and_options_are_builder_errors() {
    use tonic_balancer::ErrorKind;
    for (target, kind) in [
        ("dns://ns.example/orders.test:1", ErrorKind::InvalidTarget),
        (
            "dns://127.0.0.1:70000/orders.test:1",
            ErrorKind::InvalidTarget,
        ),
        ("dns:///orders..test:1", ErrorKind::InvalidTarget),
        ("dns:///orders.test:http", ErrorKind::InvalidTarget),
        (
            "dns+srv:///_grpc._tcp.orders.test:50051",
            ErrorKind::InvalidTarget,
        ),
        ("dns+srv:///", ErrorKind::InvalidTarget),
    ] {
        let err = BalancedChannel::builder(target).build().unwrap_err();
        assert_eq!(err.kind(), kind, "{target}: {err}");
        assert!(err.to_string().contains(target), "{err}");
    }
    let mut options = DnsOptions::default();
    options.retry_max_delay = Duration::from_millis(1);
    let err = BalancedChannel::builder("dns:///orders.test:1")
        .dns_options(options)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(
        err.to_string().contains("dns_options.retry_max_delay"),
        "{err}"
    );
}

#[tokio::test]
async fn an_srv_answer_is_cut_at_the_target_limit() {
    within(async {
        let dns = DnsServer::start().await.unwrap();
        let limit = tonic_balancer::defaults::MAX_SRV_TARGETS;
        dns.set_addrs("t.test", [IpAddr::from([127, 0, 0, 1])], TTL);
        // More records than the limit (the answer goes over TCP), each a distinct port.
        let records = (0..limit as u16 + 44).map(|i| Srv::new(1, 1, 20_000 + i, "t.test"));
        dns.set_srv("_grpc._tcp.many.test", records, TTL);
        let target = format!("dns+srv://{}/_grpc._tcp.many.test", dns.addr());
        let channel = BalancedChannel::builder(&target)
            .dns_options(quick())
            .policy(tonic_balancer::Policy::pick_first())
            .build()
            .unwrap();
        // One update carries the whole set.
        channel.wait_for(|subs| !subs.is_empty()).await;
        assert_eq!(channel.subchannels().len(), limit);
    })
    .await;
}
