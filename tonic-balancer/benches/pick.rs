//! Pick + completion per policy at 2..10 000 READY endpoints, alone and with a second
//! thread picking on the same picker and counters.
//!
//! `cargo bench --bench pick`. Target (BENCH.md): P2C ≤ 100 ns at 1000 endpoints, and
//! at most 1.2× that at 10 000.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tonic_balancer::Policy;
use tonic_balancer::balance::{Picker, ReadySubchannel};
use tonic_balancer::load::CallGuard;

const SIZES: [usize; 5] = [2, 10, 100, 1000, 10_000];

/// A policy's picker over `n` READY subchannels, with nothing behind them but their load.
#[derive(Debug)]
struct PickerFixture {
    picker: Arc<dyn Picker>,
    ready: Vec<ReadySubchannel>,
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

    /// What a call does around the network: pick, count the call as load (for
    /// peak_ewma, start its RTT clock), record its response and release it.
    fn pick_and_complete(&self) -> usize {
        let index = self.picker.pick(&self.ready) % self.ready.len();
        let mut guard = CallGuard::new(self.ready[index].load().clone());
        guard.responded(None);
        drop(guard);
        index
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
                b.iter(|| black_box(fixture.pick_and_complete()))
            });
        }
    }
    single.finish();

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
                                black_box(fixture.pick_and_complete());
                                n += 1;
                            }
                        }
                    });
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(fixture.pick_and_complete());
                    }
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
