//! Bounded statistics: per-method figures and `metrics` label sets stop growing at the
//! channel's method limit ("other" takes the rest), and a removed endpoint leaves no
//! stale gauge value. Its own test binary: it owns the process's metrics recorder.
#![cfg(feature = "metrics")]

mod support;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use std::sync::OnceLock;
use support::*;
use tonic_balancer::BalancedChannel;
use tonic_balancer::resolver::Manual;
use tonic_balancer::stats::OTHER_METHOD;
use tonic_balancer_testkit::Latency;
use tonic_balancer_testkit::pb::{Empty, SimpleRequest, StreamingOutputCallRequest};

fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this binary");
        snapshotter
    })
}

/// One series: name, labels, value (counters as counts; none for histograms).
type Series = (String, Vec<(String, String)>, Option<f64>);

/// Every series.
fn series() -> Vec<Series> {
    snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let labels = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            let value = match value {
                DebugValue::Counter(n) => Some(n as f64),
                DebugValue::Gauge(g) => Some(g.into_inner()),
                DebugValue::Histogram(_) => None,
            };
            (key.key().name().to_owned(), labels, value)
        })
        .collect()
}

#[tokio::test]
async fn methods_beyond_the_limit_fold_into_other() {
    within(async {
        snapshotter();
        let backends = fleet(1, Latency::None).await;
        let channel = BalancedChannel::builder(&target([backends[0].addr()]))
            .stats_method_limit(1)
            .build()
            .unwrap();
        let mut client = Client::new(channel.clone());
        client.empty_call(Empty {}).await.unwrap();
        client.unary_call(SimpleRequest::default()).await.unwrap();
        let mut stream = client
            .streaming_output_call(StreamingOutputCallRequest::default())
            .await
            .unwrap()
            .into_inner();
        while stream.message().await.unwrap().is_some() {}
        client.unary_call(SimpleRequest::default()).await.unwrap();

        let methods = channel.stats().methods;
        let names: Vec<&str> = methods.iter().map(|m| m.method.as_str()).collect();
        assert_eq!(
            names,
            ["/grpc.testing.TestService/EmptyCall", OTHER_METHOD],
            "{methods:?}"
        );
        assert_eq!(methods[1].calls, 3);
        // The exported label sets are bounded the same way.
        let labels: Vec<String> = series()
            .into_iter()
            .filter(|(name, _, _)| name == "grpc_client_calls_total")
            .flat_map(|(_, labels, _)| labels)
            .filter(|(key, _)| key == "method")
            .map(|(_, value)| value)
            .collect();
        assert!(labels.iter().any(|m| m == OTHER_METHOD), "{labels:?}");
        assert!(
            !labels.iter().any(|m| m.ends_with("/UnaryCall")),
            "{labels:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_removed_endpoint_leaves_no_stale_gauge() {
    within(async {
        snapshotter();
        let backends = fleet(2, Latency::None).await;
        let (resolver, handle) = Manual::new();
        handle.update([backends[0].addr(), backends[1].addr()]);
        let channel = BalancedChannel::builder_with_resolver(resolver)
            .build()
            .unwrap();
        wait_ready(&channel, 2).await;
        let gauge = |endpoint: &str| {
            series()
                .into_iter()
                .find(|(name, labels, _)| {
                    name == "grpc_client_endpoint_ready"
                        && labels.iter().any(|(k, v)| k == "endpoint" && v == endpoint)
                })
                .and_then(|(_, _, value)| value)
        };
        let removed = backends[1].addr().to_string();
        // Published READY (the gauge is set before each publish).
        channel.wait_for(|_| gauge(&removed) == Some(1.0)).await;
        handle.update([backends[0].addr()]);
        channel.wait_for(|subs| subs.len() == 1).await;
        assert_eq!(gauge(&removed), Some(0.0));
    })
    .await;
}
