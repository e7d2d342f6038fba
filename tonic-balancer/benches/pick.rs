//! Pick + completion per policy at 2..10 000 READY endpoints, alone and with a second
//! thread picking on the same picker and counters.
//!
//! `cargo bench -p tonic-balancer --bench pick`. Target (BENCH.md): P2C ≤ 100 ns at
//! 1000 endpoints, and at most 1.2× that at 10 000.
//!
//! A call reads the clock once on its way out anyway (its deadline is computed from
//! it), and hands that reading to its guard ([`CallGuard::sent_at`]); the balancer's own
//! cost is the pick, the counters and the one clock read that times the response. So
//! the loops here read the "call's" clock once per 64 picks, as a stand-in that does not
//! charge the balancer for it. The `own_clock` group measures peak_ewma with
//! [`CallGuard::new`], where the guard reads the clock itself.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tonic_balancer::Policy;
use tonic_balancer::balance::{Picker, ReadySet, ReadySubchannel};
use tonic_balancer::load::CallGuard;

const SIZES: [usize; 5] = [2, 10, 100, 1000, 10_000];

/// A policy's picker over `n` READY subchannels, with nothing behind them but their load.
#[derive(Debug)]
struct PickerFixture {
    picker: Arc<dyn Picker>,
    ready: ReadySet,
}

impl PickerFixture {
    /// `n` subchannels set up as a channel with this one policy sets them up.
    fn new(policy: &Policy, n: usize, seed: u64) -> Self {
        let ready = (0..n)
            .map(|i| {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1 + i as u16));
                ReadySubchannel::new(addr.into(), Arc::new(policy.new_load()))
            })
            .collect();
        Self {
            picker: policy.picker(seed),
            ready,
        }
    }

    /// What a call does around the network: pick, count the call as load sent at
    /// `sent` (the call's own clock reading), record its response (for peak_ewma, the
    /// round trip since `sent`) and release it.
    fn pick_and_complete(&self, sent: Instant) -> usize {
        let index = self.picker.pick(&self.ready) % self.ready.len();
        let mut guard = CallGuard::sent_at(self.ready[index].load().clone(), sent);
        guard.responded(None);
        drop(guard);
        index
    }

    /// The same with a guard that reads the clock itself when the call is sent.
    fn pick_and_complete_own_clock(&self) -> usize {
        let index = self.picker.pick(&self.ready) % self.ready.len();
        let mut guard = CallGuard::new(self.ready[index].load().clone());
        guard.responded(None);
        drop(guard);
        index
    }

    /// `iters` calls back to back, the "call's" clock read once per 64 of them.
    fn run(&self, iters: u64) {
        let mut sent = Instant::now();
        for i in 0..iters {
            if i % 64 == 0 {
                sent = Instant::now();
            }
            black_box(self.pick_and_complete(black_box(sent)));
        }
    }
}

fn policies() -> [Policy; 4] {
    [
        Policy::round_robin(),
        Policy::pick_first(),
        Policy::least_request(),
        Policy::peak_ewma(),
    ]
}

fn bench(c: &mut Criterion) {
    let mut single = c.benchmark_group("pick_and_complete");
    for n in SIZES {
        for policy in policies() {
            let fixture = PickerFixture::new(&policy, n, 1);
            single.bench_with_input(BenchmarkId::new(policy.name(), n), &n, |b, _| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    fixture.run(iters);
                    start.elapsed()
                })
            });
        }
    }
    single.finish();

    let mut own_clock = c.benchmark_group("pick_and_complete_own_clock");
    for n in SIZES {
        let policy = Policy::peak_ewma();
        let fixture = PickerFixture::new(&policy, n, 1);
        own_clock.bench_with_input(BenchmarkId::new(policy.name(), n), &n, |b, _| {
            b.iter(|| black_box(fixture.pick_and_complete_own_clock()))
        });
    }
    own_clock.finish();

    let mut contended = c.benchmark_group("pick_and_complete_2_threads");
    for n in SIZES {
        for policy in policies() {
            let fixture = Arc::new(PickerFixture::new(&policy, n, 1));
            contended.bench_with_input(BenchmarkId::new(policy.name(), n), &n, |b, _| {
                b.iter_custom(|iters| {
                    // A second thread hammers the same picker and counters meanwhile.
                    let stop = Arc::new(AtomicBool::new(false));
                    let rival = std::thread::spawn({
                        let (fixture, stop) = (fixture.clone(), stop.clone());
                        move || {
                            let mut n = 0u64;
                            while !stop.load(Ordering::Relaxed) && n < 1_000_000_000 {
                                fixture.run(64);
                                n += 64;
                            }
                        }
                    });
                    let start = Instant::now();
                    fixture.run(iters);
                    let took = start.elapsed();
                    stop.store(true, Ordering::Relaxed);
                    rival.join().expect("rival thread");
                    took
                })
            });
        }
    }
    contended.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30);
    targets = bench
}
criterion_main!(benches);
