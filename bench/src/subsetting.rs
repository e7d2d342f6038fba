//! The `subsetting` scenario: how evenly gRFC A68 random subsetting spreads clients'
//! connections and load over servers, against deterministic subsetting (the SRE book,
//! chapter 20) for comparison.
//!
//! Three arms:
//! - `random_subsetting` (simulated): clients × servers, each client's subset chosen by
//!   the crate's own [`random_subset`] with a seed of its own, as a channel draws one.
//!   Each client sends the same number of calls, round-robin over its subset.
//! - `deterministic_subsetting` (simulated): clients are grouped into rounds of
//!   `servers / subset_size`; each round shuffles the server list with a seed of its
//!   own and cuts it into that many subsets; client `c` takes subset `c mod (servers /
//!   subset_size)` of round `c / (servers / subset_size)`. Equal connection counts when
//!   the client count is a multiple of `servers / subset_size`.
//! - `random_subsetting_real`: real [`BalancedChannel`]s with
//!   [`Builder::random_subsetting`](tonic_balancer::Builder::random_subsetting) over
//!   real in-process backends on 127.0.0.1, each channel with a seed of its own;
//!   connections per backend counted from the channels' READY subchannels, load from
//!   the calls each backend served.
//!
//! Each arm also reports churn: the mean number of subset members each client changes
//! when one server leaves (at most 1 for rendezvous hashing).

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;
use tonic_balancer::balance::subset::random_subset;
use tonic_balancer::resolver::Address;
use tonic_balancer::{BalancedChannel, ConnectivityState};
use tonic_balancer_testkit::Backend;
use tonic_balancer_testkit::pb::SimpleRequest;
use tonic_balancer_testkit::pb::test_service_client::TestServiceClient;

use crate::results::{ArmResult, Percentiles, ScenarioResult, Spread, SubsettingFigures};
use crate::{Options, Progress, Size};

/// The scenario's name.
pub(crate) const NAME: &str = "subsetting";

/// Calls each simulated client makes (a multiple of every subset size used).
const SIMULATED_CALLS_PER_CLIENT: u64 = 1_000;

/// SplitMix64: a client's or a round's seed from the run's seed, and the shuffles'
/// random numbers (the bench has no other RNG, and needs none better).
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Server addresses for the simulation, only ever hashed: loopback, never contacted.
fn simulated_servers(n: usize) -> Vec<Address> {
    (0..n)
        .map(|i| {
            let ip = Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250) as u8 + 1);
            Address::new(SocketAddr::new(ip.into(), 50_051))
        })
        .collect()
}

/// Each client's subset (server indices) under A68 random subsetting.
fn random_subsets(servers: &[Address], clients: usize, size: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut state = seed;
    (0..clients)
        .map(|_| random_subset(servers, size, splitmix(&mut state)))
        .collect()
}

/// Each client's subset (server indices) under deterministic subsetting (SRE book ch.
/// 20): rounds of `servers / size` clients share one shuffle of the servers.
fn deterministic_subsets(
    servers: usize,
    clients: usize,
    size: usize,
    seed: u64,
) -> Vec<Vec<usize>> {
    let count = (servers / size).max(1);
    let mut rounds: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    (0..clients)
        .map(|client| {
            let round = client / count;
            let shuffled = rounds.entry(round).or_insert_with(|| {
                let mut order: Vec<usize> = (0..servers).collect();
                let mut state = seed ^ (round as u64).wrapping_mul(0xA24B_AED4_963E_E407);
                for i in (1..order.len()).rev() {
                    let j = (splitmix(&mut state) % (i as u64 + 1)) as usize;
                    order.swap(i, j);
                }
                order
            });
            let id = client % count;
            let end = ((id + 1) * size).min(servers);
            shuffled[id * size..end].to_vec()
        })
        .collect()
}

fn spread(values: impl IntoIterator<Item = f64>) -> Spread {
    let values: Vec<f64> = values.into_iter().collect();
    let n = values.len().max(1) as f64;
    Spread {
        min: values.iter().copied().fold(f64::INFINITY, f64::min),
        mean: values.iter().sum::<f64>() / n,
        max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    }
}

/// Figures of a simulated arm: every client makes the same number of calls,
/// round-robin over its subset from an offset of its own.
fn simulate(subsets: &[Vec<usize>], servers: usize, seed: u64) -> (SubsettingFigures, Vec<u64>) {
    let mut connections = vec![0u64; servers];
    let mut calls = vec![0u64; servers];
    let mut state = seed;
    for subset in subsets {
        let offset = splitmix(&mut state) as usize;
        for &server in subset {
            connections[server] += 1;
        }
        for call in 0..SIMULATED_CALLS_PER_CLIENT as usize {
            if let Some(&server) = subset.get((offset + call) % subset.len().max(1)) {
                calls[server] += 1;
            }
        }
    }
    let load = spread(calls.iter().map(|&c| c as f64));
    let figures = SubsettingFigures {
        clients: subsets.len(),
        servers,
        subset_size: subsets.iter().map(Vec::len).max().unwrap_or(0),
        connections_per_client: spread(subsets.iter().map(|s| s.len() as f64)),
        connections_per_server: spread(connections.iter().map(|&c| c as f64)),
        calls_per_server: load,
        max_over_mean_load: load.max / load.mean.max(f64::MIN_POSITIVE),
        churn_per_client: None,
    };
    (figures, calls)
}

/// Mean subset members changed per client when server 0 leaves the list.
fn churn(before: &[Vec<usize>], after: &[Vec<usize>]) -> f64 {
    let changed: usize = (before.iter().zip(after))
        .map(|(b, a)| b.iter().filter(|s| !a.contains(s)).count())
        .sum();
    changed as f64 / before.len().max(1) as f64
}

fn arm_result(name: &str, figures: SubsettingFigures, calls: &[u64], ids: &[String]) -> ArmResult {
    let total: u64 = calls.iter().sum();
    ArmResult {
        arm: name.to_owned(),
        calls: total,
        ok: total,
        errors: BTreeMap::new(),
        attempts: total,
        throughput_rps: 0.0,
        latency_ms: Percentiles::default(),
        backend_share: (ids.iter().zip(calls))
            .map(|(id, &c)| (id.clone(), c as f64 / total.max(1) as f64))
            .collect(),
        overhead: None,
        subsetting: Some(figures),
        cdf: Vec::new(),
        share_over_time: Vec::new(),
    }
}

/// Runs the scenario: the two simulated arms, then the real one.
///
/// # Errors
/// Starting a backend fails (no loopback port free).
pub(crate) async fn run(options: &Options, progress: &dyn Progress) -> io::Result<ScenarioResult> {
    let full = options.size == Size::Full;
    let (clients, servers, size) = (1_000, 100, 10);
    let seed = options.seed;
    let addrs = simulated_servers(servers);
    let ids: Vec<String> = (0..servers).map(|i| format!("s{i}")).collect();
    let mut notes = vec![format!(
        "simulated: {clients} clients × {servers} servers, subset {size}, \
         {SIMULATED_CALLS_PER_CLIENT} calls per client round-robin over its subset; \
         churn: members changed per client when one server leaves"
    )];
    let mut arms = Vec::new();

    progress.arm_started(NAME, "random_subsetting", 0);
    let random = random_subsets(&addrs, clients, size, seed);
    let (mut figures, calls) = simulate(&random, servers, seed);
    let random_after = random_subsets(&addrs[1..], clients, size, seed)
        .into_iter()
        .map(|s| s.into_iter().map(|i| i + 1).collect())
        .collect::<Vec<Vec<usize>>>();
    figures.churn_per_client = Some(churn(&random, &random_after));
    arms.push(arm_result("random_subsetting", figures, &calls, &ids));

    progress.arm_started(NAME, "deterministic_subsetting", 0);
    let det = deterministic_subsets(servers, clients, size, seed);
    let (mut figures, calls) = simulate(&det, servers, seed);
    // Server 0 leaves: the survivors are renumbered 0..servers-1 and re-subset.
    let survivors: Vec<usize> = (1..servers).collect();
    let det_after: Vec<Vec<usize>> = deterministic_subsets(servers - 1, clients, size, seed)
        .into_iter()
        .map(|s| s.into_iter().map(|i| survivors[i]).collect())
        .collect();
    figures.churn_per_client = Some(churn(&det, &det_after));
    arms.push(arm_result(
        "deterministic_subsetting",
        figures,
        &calls,
        &ids,
    ));

    // How A68's spread narrows as each client's subset grows.
    for larger in [20, 50] {
        let subsets = random_subsets(&addrs, clients, larger, seed);
        let (f, _) = simulate(&subsets, servers, seed);
        notes.push(format!(
            "random_subsetting with subset {larger}: connections per server {:.0}..{:.0}, \
             max/mean load {:.3}",
            f.connections_per_server.min, f.connections_per_server.max, f.max_over_mean_load
        ));
    }

    let (channels, backends, real_size, calls_per_channel) = if full {
        (100, 40, 8, 200)
    } else {
        (40, 20, 5, 50)
    };
    progress.arm_started(
        NAME,
        "random_subsetting_real",
        (channels * calls_per_channel) as u64,
    );
    let (figures, calls, real_ids) = real_run(
        channels,
        backends,
        real_size,
        calls_per_channel,
        seed,
        progress,
    )
    .await?;
    notes.push(format!(
        "random_subsetting_real: {channels} BalancedChannels × {backends} in-process \
         backends on 127.0.0.1, subset {real_size}, {calls_per_channel} calls per channel"
    ));
    arms.push(arm_result(
        "random_subsetting_real",
        figures,
        &calls,
        &real_ids,
    ));

    Ok(ScenarioResult {
        scenario: NAME.to_owned(),
        seed,
        arms,
        notes,
        marked_backend: None,
    })
}

/// Real channels over real backends: connections per backend from the channels' READY
/// subchannels, calls per backend from the backends.
async fn real_run(
    channels: usize,
    backends: usize,
    size: usize,
    calls_per_channel: usize,
    seed: u64,
    progress: &dyn Progress,
) -> io::Result<(SubsettingFigures, Vec<u64>, Vec<String>)> {
    let mut fleet = Vec::with_capacity(backends);
    for i in 0..backends {
        fleet.push(
            Backend::builder(format!("b{i}"))
                .health(false)
                .start()
                .await?,
        );
    }
    let list: Vec<String> = fleet.iter().map(|b| b.addr().to_string()).collect();
    let target = format!("static:{}", list.join(","));
    let mut state = seed ^ 0x5EED_5EED;
    let mut clients = Vec::with_capacity(channels);
    for _ in 0..channels {
        let channel = BalancedChannel::builder(&target)
            .random_subsetting(size)
            .seed(splitmix(&mut state))
            .build()
            .map_err(io::Error::other)?;
        clients.push(channel);
    }
    // Every channel has its whole subset READY before anything is counted (bounded:
    // loopback connects in milliseconds).
    let settle = async {
        for channel in &clients {
            channel
                .wait_for(|subs| {
                    subs.len() == size.min(backends)
                        && subs.iter().all(|s| s.state == ConnectivityState::Ready)
                })
                .await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), settle)
        .await
        .map_err(|_| io::Error::other("channels did not connect within 60 s"))?;
    let mut connections: BTreeMap<SocketAddr, u64> = fleet.iter().map(|b| (b.addr(), 0)).collect();
    let mut per_client = Vec::with_capacity(channels);
    for channel in &clients {
        let ready: Vec<SocketAddr> = (channel.subchannels().into_iter())
            .filter(|s| s.state == ConnectivityState::Ready)
            .map(|s| s.address.addr)
            .collect();
        per_client.push(ready.len() as f64);
        for addr in ready {
            *connections.entry(addr).or_default() += 1;
        }
    }
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for channel in clients {
        calls.spawn(async move {
            let mut client = TestServiceClient::new(channel);
            let mut failed = 0u64;
            for _ in 0..calls_per_channel {
                let request = SimpleRequest {
                    fill_server_id: true,
                    ..Default::default()
                };
                if client.unary_call(request).await.is_err() {
                    failed += 1;
                }
            }
            failed
        });
    }
    let mut failed = 0;
    while let Some(done) = calls.join_next().await {
        failed += done.map_err(io::Error::other)?;
        for _ in 0..calls_per_channel {
            progress.call_done();
        }
    }
    if failed > 0 {
        return Err(io::Error::other(format!("{failed} calls failed")));
    }
    tracing::debug!(elapsed = ?started.elapsed(), "subsetting real run");
    let served: Vec<u64> = fleet.iter().map(Backend::calls).collect();
    let load = spread(served.iter().map(|&c| c as f64));
    let figures = SubsettingFigures {
        clients: channels,
        servers: backends,
        subset_size: size,
        connections_per_client: spread(per_client),
        connections_per_server: spread(connections.values().map(|&c| c as f64)),
        calls_per_server: load,
        max_over_mean_load: load.max / load.mean.max(f64::MIN_POSITIVE),
        churn_per_client: None,
    };
    let ids = fleet.iter().map(|b| b.server_id().to_owned()).collect();
    Ok((figures, served, ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_subsetting_is_exactly_even_when_clients_divide_evenly() {
        let subsets = deterministic_subsets(100, 1_000, 10, 3);
        let (figures, _) = simulate(&subsets, 100, 3);
        assert_eq!(figures.connections_per_server.min, 100.0);
        assert_eq!(figures.connections_per_server.max, 100.0);
        assert!((figures.max_over_mean_load - 1.0).abs() < 1e-9);
        // Each client's subset has distinct servers.
        for s in &subsets {
            let mut d = s.clone();
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), 10);
        }
    }

    #[test]
    fn random_subsetting_churns_at_most_one_member_per_client() {
        let addrs = simulated_servers(100);
        let before = random_subsets(&addrs, 200, 10, 9);
        let after: Vec<Vec<usize>> = random_subsets(&addrs[1..], 200, 10, 9)
            .into_iter()
            .map(|s| s.into_iter().map(|i| i + 1).collect())
            .collect();
        for (b, a) in before.iter().zip(&after) {
            assert!(b.iter().filter(|s| !a.contains(s)).count() <= 1);
        }
        let (figures, _) = simulate(&before, 100, 9);
        assert_eq!(figures.connections_per_client.min, 10.0);
        assert_eq!(figures.connections_per_client.max, 10.0);
        assert!(figures.max_over_mean_load >= 1.0);
    }
}
