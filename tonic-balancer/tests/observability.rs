//! Golden signals after a known sequence of calls: the in-process stats and the
//! `metrics` facade (a debugging recorder). Spans are checked in tests/spans.rs.

mod support;

#[cfg(feature = "metrics")]
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use std::collections::BTreeMap;
#[cfg(feature = "metrics")]
use std::sync::OnceLock;

use support::*;
use tonic::Code;
use tonic_balancer::BalancedChannel;
use tonic_balancer_testkit::Backend;
use tonic_balancer_testkit::pb::Empty;

const EMPTY_CALL: &str = "/grpc.testing.TestService/EmptyCall";

/// Three OK calls and two UNAVAILABLE ones on a fresh backend.
async fn known_calls() -> (Backend, BalancedChannel) {
    let backend = Backend::start("b").await.unwrap();
    let channel = BalancedChannel::builder(&target([backend.addr()]))
        .build()
        .unwrap();
    wait_ready(&channel, 1).await;
    let mut client = Client::new(channel.clone());
    for _ in 0..3 {
        client.empty_call(Empty {}).await.unwrap();
    }
    backend.fail_next(2, Code::Unavailable);
    for _ in 0..2 {
        assert_eq!(
            client.empty_call(Empty {}).await.unwrap_err().code(),
            Code::Unavailable
        );
    }
    (backend, channel)
}

#[tokio::test]
async fn stats_count_traffic_errors_latency_and_saturation() {
    within(async {
        let (backend, channel) = known_calls().await;
        let stats = channel.stats();
        let method = stats
            .methods
            .iter()
            .find(|m| m.method == EMPTY_CALL)
            .expect("EmptyCall figures");
        assert_eq!(method.calls, 5);
        assert_eq!(
            method.errors,
            BTreeMap::from([("UNAVAILABLE".to_owned(), 2)])
        );
        assert!((method.error_rate - 0.4).abs() < 1e-9);
        assert_eq!(method.in_flight, 0);
        assert_eq!(method.attempts.first, 5);
        assert_eq!(method.attempts.retries, 0);
        let latency = method.latency.expect("latency after five calls");
        assert!(latency.p50 <= latency.p95 && latency.p95 <= latency.p99);
        assert!(latency.p99 <= latency.max);
        let endpoint = &stats.endpoints[0];
        assert_eq!(endpoint.address.addr, backend.addr());
        assert_eq!(
            (endpoint.calls, endpoint.errors, endpoint.in_flight),
            (5, 2, 0)
        );
        assert!(!endpoint.ejected);
    })
    .await;
}

#[cfg(feature = "metrics")]
fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only metrics recorder of this test binary");
        snapshotter
    })
}

#[cfg(feature = "metrics")]
type Counters = BTreeMap<(String, Vec<(String, String)>), u64>;

/// Every counter by (name, labels). Counters read as the change since the previous
/// snapshot, so take one snapshot per test.
#[cfg(feature = "metrics")]
fn counters() -> Counters {
    snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let labels: Vec<(String, String)> = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            match value {
                DebugValue::Counter(n) => Some(((key.key().name().to_owned(), labels), n)),
                _ => None,
            }
        })
        .collect()
}

#[cfg(feature = "metrics")]
#[tokio::test]
async fn metrics_carry_the_documented_names_and_labels() {
    within(async {
        snapshotter();
        let (backend, _channel) = known_calls().await;
        let method = |code: &str| {
            (
                "grpc_client_calls_total".to_owned(),
                vec![
                    ("method".to_owned(), EMPTY_CALL.to_owned()),
                    ("code".to_owned(), code.to_owned()),
                ],
            )
        };
        // Other tests in this binary call EmptyCall too: compare per-endpoint figures,
        // which are this test's alone, and check the method counters exist.
        let all = counters();
        let endpoint = backend.addr().to_string();
        let label = vec![("endpoint".to_owned(), endpoint.clone())];
        assert_eq!(
            all[&("grpc_client_endpoint_calls_total".to_owned(), label.clone())],
            5
        );
        assert_eq!(
            all[&("grpc_client_endpoint_errors_total".to_owned(), label)],
            2
        );
        assert!(all[&method("OK")] >= 3, "{all:?}");
        assert!(all[&method("UNAVAILABLE")] >= 2, "{all:?}");
        let first = (
            "grpc_client_attempts_total".to_owned(),
            vec![
                ("method".to_owned(), EMPTY_CALL.to_owned()),
                ("kind".to_owned(), "first".to_owned()),
            ],
        );
        assert!(all[&first] >= 5, "{all:?}");
    })
    .await;
}
