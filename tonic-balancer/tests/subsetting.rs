//! gRFC A68 random subsetting against real backends on 127.0.0.1: a channel connects
//! to its subset only, and membership changes move at most one member.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::task::{Context, Poll};
use support::*;
use tokio::sync::watch;
use tonic_balancer::balance::subset::random_subset;
use tonic_balancer::resolver::{Address, Manual, ManualHandle, Resolution, Resolve};
use tonic_balancer::{BalancedChannel, ConnectivityState, ErrorKind};
use tonic_balancer_testkit::{Backend, Latency};

/// A [`Manual`] resolver that counts the address sets the channel has taken, so a test
/// can wait until an update that changes nothing visible has been applied.
///
/// The tests run on tokio's current-thread runtime: once the channel's control task
/// takes a set, it applies it and publishes before it yields, so by the time the waiting
/// test runs again the set is in force.
struct Counting {
    inner: Manual,
    taken: watch::Sender<usize>,
}

impl Resolve for Counting {
    fn poll_resolve(&mut self, cx: &mut Context<'_>) -> Poll<Option<Resolution>> {
        let next = self.inner.poll_resolve(cx);
        if let Poll::Ready(Some(Ok(_))) = &next {
            self.taken.send_modify(|n| *n += 1);
        }
        next
    }
}

struct Resolver {
    handle: ManualHandle,
    taken: watch::Receiver<usize>,
    sent: usize,
}

impl Resolver {
    fn new() -> (Counting, Resolver) {
        let (inner, handle) = Manual::new();
        let (taken_tx, taken) = watch::channel(0);
        let counting = Counting {
            inner,
            taken: taken_tx,
        };
        (
            counting,
            Resolver {
                handle,
                taken,
                sent: 0,
            },
        )
    }

    /// Sends `addrs` and waits until the channel has applied them.
    async fn update(&mut self, addrs: &[SocketAddr]) {
        self.handle.update(addrs.iter().copied());
        self.sent += 1;
        let sent = self.sent;
        self.taken
            .wait_for(|n| *n >= sent)
            .await
            .expect("resolver dropped");
    }
}

fn addresses(addrs: &[SocketAddr]) -> Vec<Address> {
    addrs.iter().copied().map(Address::new).collect()
}

/// The subset a channel seeded with `seed` keeps, by the crate's documented rule.
fn predicted(addrs: &[SocketAddr], size: usize, seed: u64) -> BTreeSet<SocketAddr> {
    random_subset(&addresses(addrs), size, seed)
        .into_iter()
        .map(|i| addrs[i])
        .collect()
}

/// The channel's subchannels by address, with the calls each has taken since it was
/// created (a subchannel replaced by a new one starts again at 0).
fn subchannels(channel: &BalancedChannel) -> BTreeMap<SocketAddr, u64> {
    channel
        .subchannels()
        .into_iter()
        .map(|s| (s.address.addr, s.calls))
        .collect()
}

/// Waits until the channel has exactly `expected` as subchannels, all READY.
async fn wait_subset(channel: &BalancedChannel, expected: &BTreeSet<SocketAddr>) {
    channel
        .wait_for(|subs| {
            subs.len() == expected.len()
                && subs.iter().all(|s| {
                    s.state == ConnectivityState::Ready && expected.contains(&s.address.addr)
                })
        })
        .await;
}

/// Calls served per backend address over `n` calls.
async fn served(
    client: &mut Client,
    backends: &[Backend],
    n: usize,
) -> BTreeMap<SocketAddr, usize> {
    let counts = shares(client, n).await;
    counts
        .into_iter()
        .map(|(id, calls)| {
            let backend = backends.iter().find(|b| b.server_id() == id).unwrap();
            (backend.addr(), calls)
        })
        .collect()
}

const SEED: u64 = 0x5EED;

#[tokio::test]
async fn a_channel_uses_its_subset_and_one_removal_moves_at_most_one_member() {
    within(async {
        let backends = fleet(8, Latency::None).await;
        let all: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
        let (resolver, mut manual) = Resolver::new();
        let channel = BalancedChannel::builder_with_resolver(resolver)
            .random_subsetting(3)
            .seed(SEED)
            .build()
            .unwrap();
        manual.update(&all).await;
        let subset = predicted(&all, 3, SEED);
        assert_eq!(subset.len(), 3);
        wait_subset(&channel, &subset).await;
        let mut client = Client::new(channel.clone());

        // Round robin over exactly the 3 of the subset; the other 5 never see a call.
        let counts = served(&mut client, &backends, 60).await;
        assert_eq!(counts.keys().copied().collect::<BTreeSet<_>>(), subset);
        assert!(counts.values().all(|&n| n == 20), "{counts:?}");
        for backend in &backends {
            if !subset.contains(&backend.addr()) {
                assert_eq!(
                    backend.calls(),
                    0,
                    "{} is outside the subset",
                    backend.server_id()
                );
            }
        }

        // A backend outside the subset leaves: the subset, and its subchannels (with the
        // calls they counted), stay as they were.
        let before = subchannels(&channel);
        let outsider = *all.iter().find(|a| !subset.contains(a)).unwrap();
        let without_outsider: Vec<SocketAddr> =
            all.iter().copied().filter(|a| *a != outsider).collect();
        manual.update(&without_outsider).await;
        assert_eq!(subchannels(&channel), before);
        let counts = served(&mut client, &backends, 30).await;
        assert_eq!(counts.keys().copied().collect::<BTreeSet<_>>(), subset);

        // A member leaves: exactly one new backend takes its place; the other two keep
        // their subchannels (their call counts carry on, so they were not reconnected).
        let member = *subset.iter().next().unwrap();
        let remaining: Vec<SocketAddr> = without_outsider
            .iter()
            .copied()
            .filter(|a| *a != member)
            .collect();
        manual.update(&remaining).await;
        let next = predicted(&remaining, 3, SEED);
        assert_eq!(next.len(), 3);
        assert_eq!(
            subset.difference(&next).copied().collect::<Vec<_>>(),
            [member]
        );
        let joined: Vec<SocketAddr> = next.difference(&subset).copied().collect();
        assert_eq!(joined.len(), 1, "exactly one new member");
        wait_subset(&channel, &next).await;
        let after = subchannels(&channel);
        for kept in subset.intersection(&next) {
            assert!(
                after[kept] >= before[kept] + 10,
                "{kept} kept its subchannel"
            );
        }
        assert_eq!(after[&joined[0]], 0, "the new member is a new subchannel");
        let counts = served(&mut client, &backends, 30).await;
        assert_eq!(counts.keys().copied().collect::<BTreeSet<_>>(), next);
    })
    .await;
}

#[tokio::test]
async fn a_service_config_turns_subsetting_on_and_off_for_the_addresses_already_resolved() {
    within(async {
        let backends = fleet(8, Latency::None).await;
        let all: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
        let (resolver, mut manual) = Resolver::new();
        let channel = BalancedChannel::builder_with_resolver(resolver)
            .seed(SEED)
            .build()
            .unwrap();
        manual.update(&all).await;
        wait_ready(&channel, 8).await;

        // No new resolution: the config alone narrows the channel to its subset.
        channel
            .update_service_config_json(
                r#"{"loadBalancingConfig": [{"random_subsetting_experimental":
                    {"subsetSize": 3, "childPolicy": [{"round_robin": {}}]}}]}"#,
            )
            .unwrap();
        let subset = predicted(&all, 3, SEED);
        wait_subset(&channel, &subset).await;
        let mut client = Client::new(channel.clone());
        let counts = served(&mut client, &backends, 30).await;
        assert_eq!(counts.keys().copied().collect::<BTreeSet<_>>(), subset);

        // A larger subset keeps the 3 (rendezvous hashing ranks the same way) and adds 2.
        channel
            .update_service_config_json(
                r#"{"loadBalancingConfig": [{"random_subsetting_experimental":
                    {"subsetSize": 5, "childPolicy": [{"round_robin": {}}]}}]}"#,
            )
            .unwrap();
        let larger = predicted(&all, 5, SEED);
        assert!(larger.is_superset(&subset));
        wait_subset(&channel, &larger).await;

        // And a config without it connects to every address again.
        channel
            .update_service_config_json(r#"{"loadBalancingConfig": [{"round_robin": {}}]}"#)
            .unwrap();
        wait_ready(&channel, 8).await;
        assert_eq!(channel.subchannels().len(), 8);
    })
    .await;
}

#[tokio::test]
async fn pick_first_under_subsetting_takes_the_first_member_in_resolver_order() {
    within(async {
        let backends = fleet(8, Latency::None).await;
        let all: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
        let (resolver, mut manual) = Resolver::new();
        let channel = BalancedChannel::builder_with_resolver(resolver)
            .seed(SEED)
            .service_config_json(
                r#"{"loadBalancingConfig": [{"random_subsetting_experimental":
                    {"subsetSize": 3, "childPolicy": [{"pick_first": {}}]}}]}"#,
            )
            .unwrap()
            .build()
            .unwrap();
        manual.update(&all).await;
        let subset = predicted(&all, 3, SEED);
        let first = *all.iter().find(|a| subset.contains(a)).unwrap();
        channel
            .wait_for(|subs| {
                subs.len() == 3
                    && subs
                        .iter()
                        .any(|s| s.address.addr == first && s.state == ConnectivityState::Ready)
            })
            .await;
        let mut client = Client::new(channel.clone());
        let counts = served(&mut client, &backends, 10).await;
        assert_eq!(counts, BTreeMap::from([(first, 10)]));
    })
    .await;
}

#[tokio::test]
async fn a_subset_size_of_zero_is_refused_with_a_clear_error() {
    let error = BalancedChannel::builder("ipv4:127.0.0.1:1")
        .random_subsetting(0)
        .build()
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidConfig);
    assert!(
        error
            .to_string()
            .contains("random_subsetting: the subset size must be > 0"),
        "{error}"
    );
    let error = BalancedChannel::builder("ipv4:127.0.0.1:1")
        .service_config_json(
            r#"{"loadBalancingConfig": [{"random_subsetting_experimental":
                {"subsetSize": 0, "childPolicy": [{"round_robin": {}}]}}]}"#,
        )
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidConfig);
    assert!(
        error.to_string().contains(
            "loadBalancingConfig[0].random_subsetting_experimental.subsetSize: must be > 0"
        ),
        "{error}"
    );
}

/// Waking from IDLE selects again from the resolver's whole set, not from the subset
/// in force before: a larger subset set after the wake-up takes members from all of it.
#[tokio::test]
async fn an_idle_channel_wakes_with_the_whole_address_set_behind_its_subset() {
    let backends = fleet(6, Latency::None).await;
    let all: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    let (resolver, mut manual) = Resolver::new();
    let channel = BalancedChannel::builder_with_resolver(resolver)
        .seed(SEED)
        .random_subsetting(2)
        .idle_timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap();
    within(manual.update(&all)).await;
    let subset = predicted(&all, 2, SEED);
    within(wait_subset(&channel, &subset)).await;

    tokio::time::pause();
    advance_until_idle(&channel, std::time::Duration::from_secs(200))
        .await
        .expect("the channel never went IDLE");
    tokio::time::resume();

    within(channel.ready(std::time::Duration::from_secs(10)))
        .await
        .unwrap();
    within(wait_subset(&channel, &subset)).await;
    channel
        .update_service_config_json(
            r#"{"loadBalancingConfig": [{"random_subsetting_experimental":
                {"subsetSize": 4, "childPolicy": [{"round_robin": {}}]}}]}"#,
        )
        .unwrap();
    let larger = predicted(&all, 4, SEED);
    within(wait_subset(&channel, &larger)).await;
    let mut client = Client::new(channel.clone());
    let counts = within(served(&mut client, &backends, 40)).await;
    assert_eq!(counts.keys().copied().collect::<BTreeSet<_>>(), larger);
}
