//! One unary call through `BalancedChannel` vs a plain tonic `Channel`, to one loopback
//! backend with no added latency, one call at a time: what the balancer adds per call.
//!
//! `cargo bench --bench call_path`. Target (BENCH.md): ≤ 5 µs added at p50.

use criterion::{Criterion, criterion_group, criterion_main};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic_balancer::{BalancedChannel, ConnectivityState, Policy};
use tonic_balancer_testkit::Backend;
use tonic_balancer_testkit::pb::Empty;
use tonic_balancer_testkit::pb::test_service_client::TestServiceClient;

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (backend, direct, balanced) = runtime.block_on(async {
        let backend = Backend::builder("b0")
            .health(false)
            .start()
            .await
            .expect("backend");
        let uri = format!("http://{}", backend.addr());
        let direct: Channel = Endpoint::from_shared(uri)
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let mut balanced = Vec::new();
        for policy in [Policy::round_robin(), Policy::peak_ewma()] {
            let name = policy.name();
            let channel = BalancedChannel::builder(&format!("ipv4:{}", backend.addr()))
                .policy(policy)
                .build()
                .expect("channel");
            channel
                .wait_for(|subs| subs.iter().all(|s| s.state == ConnectivityState::Ready))
                .await;
            balanced.push((name, channel));
        }
        (backend, direct, balanced)
    });

    let mut group = c.benchmark_group("unary_call");
    group.bench_function("direct", |b| {
        let client = TestServiceClient::new(direct.clone());
        b.to_async(&runtime).iter(|| {
            let mut client = client.clone();
            async move { client.empty_call(Empty {}).await.expect("call") }
        })
    });
    for (name, channel) in &balanced {
        group.bench_function(format!("balanced/{name}"), |b| {
            let client = TestServiceClient::new(channel.clone());
            b.to_async(&runtime).iter(|| {
                let mut client = client.clone();
                async move { client.empty_call(Empty {}).await.expect("call") }
            })
        });
    }
    group.finish();
    drop(backend);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(50);
    targets = bench
}
criterion_main!(benches);
