//! gRFC A68 random subsetting: each channel connects to a subset of the resolver's
//! addresses, chosen by rendezvous hashing.
//!
//! Every channel draws a seed (its [`Builder::seed`](crate::Builder::seed), random by
//! default) and hashes each address with XXH64, seeded with it. The `subset_size`
//! addresses with the smallest hashes are kept. An address's hash depends only on the
//! address and the seed, never on the other addresses, so when one server joins or
//! leaves the list, every channel's subset changes by at most one entry (the new server
//! displaces the largest hash kept, or the one that left is replaced by the next
//! smallest). Channels with different seeds rank the servers independently, which spreads
//! connections over the fleet at random; A68 gives no bound on how evenly (see the
//! README's subsetting section for measured spreads).
//!
//! # What is hashed
//! The canonical bytes of an address ([`address_key`]): for an IP address, its
//! `ip:port` text as Rust's `SocketAddr` displays it (`10.0.0.7:8080`,
//! `[2001:db8::1]:443`); for a Unix socket, `unix:` followed by the path's bytes. SRV
//! weight and priority are not part of it: they do not make another server. The form is
//! this crate's (grpc-go hashes its own text form of an address), which costs nothing:
//! seeds are random per channel, so no two implementations' subsets would line up anyway.
//!
//! # Differences from grpc-go
//! - The subset is returned in the resolver's order, not sorted by hash, so a
//!   pick_first child still tries the addresses in the order the resolver gave them.
//! - Repeated addresses count once (the channel connects to each address once anyway).
//! - The selection is O(n) on average (`select_nth_unstable`), not a full sort.
//!
//! The subset is taken over the whole list, before SRV priorities are looked at: a
//! subset may hold no address of the preferred priority, and then the channel uses the
//! best priority its subset has.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::resolver::Address;

/// The bytes of `address` that are hashed: `ip:port` text for an IP address, or
/// `unix:` followed by the path for a Unix socket (see the [module docs](self)).
pub fn address_key(address: &Address) -> Vec<u8> {
    match &address.unix {
        Some(path) => {
            let mut key = b"unix:".to_vec();
            key.extend_from_slice(path.as_os_str().as_encoded_bytes());
            key
        }
        None => address.addr.to_string().into_bytes(),
    }
}

/// XXH64 of [`address_key`] with `seed`: the address's rank in a channel with that seed
/// (smaller ranks first).
pub fn address_hash(address: &Address, seed: u64) -> u64 {
    xxhash_rust::xxh64::xxh64(&address_key(address), seed)
}

/// The positions in `addrs` of the random subset of (at most) `subset_size` distinct
/// addresses that a channel seeded with `seed` keeps, in ascending order (the
/// resolver's order).
///
/// All of them (each distinct address once) when there are no more than
/// `subset_size`; none for a `subset_size` of 0 (configuration rejects 0 before it
/// gets here). O(n) on average, plus O(k log k) to restore the order of the k kept.
pub fn random_subset(addrs: &[Address], subset_size: usize, seed: u64) -> Vec<usize> {
    let mut seen: HashSet<(SocketAddr, Option<&Arc<Path>>)> = HashSet::with_capacity(addrs.len());
    // (hash, position): the position breaks ties, so the result never depends on how
    // the selection orders equal hashes.
    let mut ranked: Vec<(u64, usize)> = Vec::with_capacity(addrs.len());
    for (i, address) in addrs.iter().enumerate() {
        if seen.insert((address.addr, address.unix.as_ref())) {
            ranked.push((address_hash(address, seed), i));
        }
    }
    if subset_size == 0 {
        return Vec::new();
    }
    if ranked.len() > subset_size {
        ranked.select_nth_unstable(subset_size - 1);
        ranked.truncate(subset_size);
    }
    let mut kept: Vec<usize> = ranked.into_iter().map(|(_, i)| i).collect();
    kept.sort_unstable();
    kept
}

/// The channel's subsetting state: the setting in force, the seed, and the last full
/// address list, so a change of setting can re-select at once.
#[derive(Debug)]
pub(crate) struct SubsetFilter {
    /// The subset size; `None`: subsetting off.
    size: Option<usize>,
    seed: u64,
    /// The resolver's last address list, unfiltered. Kept so a service config that turns
    /// subsetting on or changes its size applies to the current addresses, not only to
    /// the next resolution. O(n) cheap copies per update (the resolver's list is already
    /// O(n)); about 40 bytes an address.
    last: Option<Vec<Address>>,
}

impl SubsetFilter {
    /// A filter keeping `size` addresses (`None`: all), ranked with `seed`.
    pub(crate) fn new(size: Option<usize>, seed: u64) -> Self {
        Self {
            size,
            seed,
            last: None,
        }
    }

    /// Remembers `addrs` and returns the ones to connect to, in the resolver's order.
    pub(crate) fn select(&mut self, addrs: Vec<Address>) -> Vec<Address> {
        let Some(size) = self.size else {
            // A copy of pointers and small values: the resolver's whole set is kept for
            // a wake from IDLE and for a subset size set later.
            self.last = Some(addrs.clone());
            return addrs;
        };
        let kept = random_subset(&addrs, size, self.seed);
        let subset = kept.iter().map(|&i| addrs[i].clone()).collect();
        self.last = Some(addrs);
        subset
    }

    /// The resolver's last address set, whole.
    pub(crate) fn last(&self) -> Option<&Vec<Address>> {
        self.last.as_ref()
    }

    /// Sets the subset size; when it changed and addresses were resolved before, returns
    /// the last full list, to apply again (through [`select`](Self::select)).
    pub(crate) fn resize(&mut self, size: Option<usize>) -> Option<Vec<Address>> {
        if self.size == size {
            return None;
        }
        self.size = size;
        self.last.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn fleet(n: usize) -> Vec<Address> {
        (0..n)
            .map(|i| {
                let ip = std::net::Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250) as u8 + 1);
                Address::new(SocketAddr::new(ip.into(), 8080))
            })
            .collect()
    }

    fn subset_of(addrs: &[Address], size: usize, seed: u64) -> BTreeSet<SocketAddr> {
        random_subset(addrs, size, seed)
            .into_iter()
            .map(|i| addrs[i].addr)
            .collect()
    }

    #[test]
    fn keeps_subset_size_addresses() {
        let addrs = fleet(100);
        for size in [1, 2, 10, 99, 100] {
            assert_eq!(random_subset(&addrs, size, 7).len(), size);
        }
    }

    #[test]
    fn keeps_all_when_the_list_is_small_and_none_for_zero() {
        let addrs = fleet(5);
        assert_eq!(random_subset(&addrs, 10, 7), vec![0, 1, 2, 3, 4]);
        assert_eq!(random_subset(&addrs, 5, 7), vec![0, 1, 2, 3, 4]);
        assert!(random_subset(&addrs, 0, 7).is_empty());
        assert!(random_subset(&[], 3, 7).is_empty());
    }

    #[test]
    fn keeps_the_smallest_hashes_in_resolver_order() {
        let addrs = fleet(50);
        let kept = random_subset(&addrs, 10, 42);
        assert!(kept.windows(2).all(|w| w[0] < w[1]), "{kept:?}");
        let mut hashes: Vec<u64> = addrs.iter().map(|a| address_hash(a, 42)).collect();
        hashes.sort_unstable();
        let cutoff = hashes[9];
        for (i, address) in addrs.iter().enumerate() {
            assert_eq!(kept.contains(&i), address_hash(address, 42) <= cutoff);
        }
    }

    #[test]
    fn repeated_addresses_count_once() {
        let mut addrs = fleet(3);
        addrs.extend(fleet(3));
        let kept = random_subset(&addrs, 3, 1);
        assert_eq!(kept, vec![0, 1, 2]);
        assert_eq!(random_subset(&addrs, 2, 1).len(), 2);
    }

    #[test]
    fn the_hashed_bytes_are_documented_forms() {
        let v4 = Address::new("10.0.0.7:8080".parse().unwrap());
        assert_eq!(address_key(&v4), b"10.0.0.7:8080");
        let v6 = Address::new("[2001:db8::1]:443".parse().unwrap());
        assert_eq!(address_key(&v6), b"[2001:db8::1]:443");
        let unix = Address::unix("/run/app.sock");
        assert_eq!(address_key(&unix), b"unix:/run/app.sock");
        // XXH64 itself, against the reference value for "abc" with seed 0.
        assert_eq!(xxhash_rust::xxh64::xxh64(b"abc", 0), 0x44bc_2cf5_ad77_0999);
    }

    #[test]
    fn different_seeds_give_different_subsets() {
        let addrs = fleet(100);
        let subsets: BTreeSet<BTreeSet<SocketAddr>> =
            (0..20).map(|seed| subset_of(&addrs, 10, seed)).collect();
        // C(100, 10) subsets: 20 seeds colliding at all would mean a broken hash.
        assert_eq!(subsets.len(), 20);
    }

    #[test]
    fn spread_over_many_seeds_is_uniform_ish() {
        // 2 000 channels × 10 of 100 servers: 200 connections per server on average.
        let addrs = fleet(100);
        let mut per_server = vec![0u32; addrs.len()];
        for seed in 0..2_000u64 {
            for i in random_subset(&addrs, 10, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)) {
                per_server[i] += 1;
            }
        }
        let (min, max) = (
            *per_server.iter().min().unwrap(),
            *per_server.iter().max().unwrap(),
        );
        // Binomial(2000, 0.1): sd ≈ 13.4; ±5 sd over 100 servers.
        assert!(min >= 133 && max <= 267, "min {min}, max {max}");
    }

    #[test]
    fn filter_reselects_the_last_list_when_resized() {
        let addrs = fleet(20);
        let mut filter = SubsetFilter::new(None, 3);
        assert_eq!(filter.resize(Some(4)), None, "nothing resolved yet");
        assert_eq!(filter.select(addrs.clone()).len(), 4);
        assert_eq!(filter.resize(Some(4)), None, "unchanged");
        let last = filter.resize(Some(6)).expect("the last list");
        assert_eq!(last, addrs);
        assert_eq!(filter.select(last).len(), 6);
        let last = filter.resize(None).expect("the last list");
        assert_eq!(filter.select(last), addrs);
    }

    proptest! {
        /// Rendezvous hashing's promise (A68): one server joining or leaving changes at
        /// most one entry of the subset, for any list and any seed.
        #[test]
        fn one_server_more_or_less_changes_at_most_one_entry(
            ids in proptest::collection::btree_set(0u32..100_000, 1..200),
            extra in 100_000u32..200_000,
            size in 1usize..30,
            seed in any::<u64>(),
            pick in any::<prop::sample::Index>(),
        ) {
            let address = |id: u32| {
                let ip = std::net::Ipv4Addr::from(0x0A00_0000 | id);
                Address::new(SocketAddr::new(ip.into(), 443))
            };
            let addrs: Vec<Address> = ids.iter().map(|&id| address(id)).collect();
            let before = subset_of(&addrs, size, seed);
            prop_assert_eq!(before.len(), size.min(addrs.len()));
            // One server leaves: at most one member out, at most one in.
            let mut fewer = addrs.clone();
            let gone = fewer.remove(pick.index(addrs.len()));
            let after = subset_of(&fewer, size, seed);
            prop_assert_eq!(after.len(), size.min(fewer.len()));
            let out: Vec<_> = before.difference(&after).collect();
            prop_assert!(out.len() <= 1);
            prop_assert!(out.iter().all(|a| **a == gone.addr), "only the one that left goes");
            prop_assert!(after.difference(&before).count() <= 1);
            // One server joins (anywhere in the list): at most one member changes.
            let mut more = addrs.clone();
            more.insert(pick.index(addrs.len() + 1), address(extra));
            let grown = subset_of(&more, size, seed);
            prop_assert_eq!(grown.len(), size.min(more.len()));
            let joined: Vec<_> = grown.difference(&before).collect();
            prop_assert!(joined.len() <= 1);
            prop_assert!(joined.iter().all(|a| **a == address(extra).addr), "only the new one joins");
            prop_assert!(before.difference(&grown).count() <= 1);
        }

        /// The subset is in the resolver's order whatever the list's order.
        #[test]
        fn order_is_the_resolvers(
            ids in proptest::collection::vec(0u32..1_000, 1..100),
            size in 1usize..20,
            seed in any::<u64>(),
        ) {
            let addrs: Vec<Address> = ids
                .iter()
                .map(|id| Address::new(SocketAddr::new(std::net::Ipv4Addr::from(*id).into(), 80)))
                .collect();
            let kept = random_subset(&addrs, size, seed);
            prop_assert!(kept.windows(2).all(|w| w[0] < w[1]));
            // The same set whatever the order the resolver lists them in.
            let mut reversed = addrs.clone();
            reversed.reverse();
            let forward: BTreeSet<_> = kept.iter().map(|&i| addrs[i].addr).collect();
            let backward: BTreeSet<_> = random_subset(&reversed, size, seed)
                .into_iter()
                .map(|i| reversed[i].addr)
                .collect();
            prop_assert_eq!(forward, backward);
        }
    }
}
