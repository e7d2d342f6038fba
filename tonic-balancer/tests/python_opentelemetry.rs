//! The instruments this crate exports, against the reference: grpcio's OpenTelemetry
//! plugin (PyPI `grpcio-observability`), run by testkit/python/otel_client.py. Both
//! clients make the same two calls (EmptyCall OK, UnaryCall UNAVAILABLE) to the same
//! Rust backend with the same target string; every instrument grpcio exports must be
//! exported here with the same name, unit, type, attribute keys, status values, counts
//! and message-size sums. (grpcio-observability 1.85.0 exports the four
//! `grpc.client.attempt.*` instruments for these calls; measured.)
//!
//! Measured differences, not compared: grpcio reports `grpc.method = "other"` for
//! methods called without generated stubs (the script sends raw bytes), while this
//! crate names every method within its method limit; grpcio leaves histogram
//! boundaries to the SDK's defaults, while this crate hints gRPC's (A66) boundaries.

mod support;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use support::otel::Metrics;
use support::*;
use tonic::Code;
use tonic_balancer::{BalancedChannel, OpenTelemetry};
use tonic_balancer_testkit::Backend;
use tonic_balancer_testkit::pb::{EchoStatus, Empty, SimpleRequest};

/// What the comparison looks at in one instrument.
#[derive(Debug, PartialEq)]
struct Shape {
    unit: String,
    kind: String,
    /// Per `grpc.status` (or "" without one): attribute keys, and the summed count
    /// (histograms) or value (sums) and sum (histograms).
    series: BTreeMap<String, (BTreeSet<String>, f64, f64)>,
}

fn add(
    series: &mut BTreeMap<String, (BTreeSet<String>, f64, f64)>,
    attributes: BTreeMap<String, String>,
    count: f64,
    sum: f64,
) {
    let status = attributes.get("grpc.status").cloned().unwrap_or_default();
    let keys: BTreeSet<String> = attributes.into_keys().collect();
    let entry = series
        .entry(status)
        .or_insert_with(|| (keys.clone(), 0.0, 0.0));
    assert_eq!(entry.0, keys, "one key set per status");
    entry.1 += count;
    entry.2 += sum;
}

/// grpcio's export, as otel_client.py prints it.
fn python_shapes(json: &str, target: &str) -> BTreeMap<String, Shape> {
    let metrics: Value = serde_json::from_str(json).expect("otel_client.py prints JSON");
    let mut shapes = BTreeMap::new();
    for metric in metrics.as_array().expect("a list") {
        let mut series = BTreeMap::new();
        for point in metric["points"].as_array().unwrap() {
            let attributes: BTreeMap<String, String> = point["attributes"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            assert_eq!(
                attributes["grpc.target"], target,
                "grpcio's target as given"
            );
            let (count, sum) = match point.get("count") {
                Some(count) => (count.as_f64().unwrap(), point["sum"].as_f64().unwrap()),
                None => (point["value"].as_f64().unwrap(), 0.0),
            };
            add(&mut series, attributes, count, sum);
        }
        shapes.insert(
            metric["name"].as_str().unwrap().to_owned(),
            Shape {
                unit: metric["unit"].as_str().unwrap().to_owned(),
                kind: metric["type"].as_str().unwrap().to_owned(),
                series,
            },
        );
    }
    shapes
}

/// This crate's export for the same calls.
async fn rust_shapes(target: &str) -> BTreeMap<String, Shape> {
    let metrics = Metrics::new();
    let channel = BalancedChannel::builder(target)
        .opentelemetry(OpenTelemetry::default().meter_provider(&metrics.provider))
        .build()
        .unwrap();
    wait_ready(&channel, 1).await;
    let mut client = Client::new(channel);
    client.empty_call(Empty {}).await.unwrap();
    let request = SimpleRequest {
        response_status: Some(EchoStatus {
            code: Code::Unavailable as i32,
            message: String::new(),
        }),
        ..Default::default()
    };
    let status = client.unary_call(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    metrics
        .collect()
        .into_iter()
        .map(|(name, instrument)| {
            let mut series = BTreeMap::new();
            for point in instrument.points {
                add(&mut series, point.attributes, point.value, point.sum);
            }
            let shape = Shape {
                unit: instrument.unit,
                kind: instrument.kind.to_owned(),
                series,
            };
            (name, shape)
        })
        .collect()
}

/// Durations differ from run to run: their sums are not compared (counts are).
fn without_durations(mut shapes: BTreeMap<String, Shape>) -> BTreeMap<String, Shape> {
    for shape in shapes.values_mut().filter(|s| s.unit == "s") {
        for series in shape.series.values_mut() {
            series.2 = 0.0;
        }
    }
    shapes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instruments_match_grpcio_observability_for_the_same_calls() {
    let backend = Backend::start("b").await.unwrap();
    let target = target([backend.addr()]);
    let python_target = target.clone();
    let python = tokio::task::spawn_blocking(move || {
        tonic_balancer_testkit::python::run_otel_client(&python_target)
    });
    let python = within(python)
        .await
        .expect("the python client thread")
        .unwrap_or_else(|why| panic!("grpcio-observability reference: {why}"));
    let reference = without_durations(python_shapes(&python, &target));
    let ours = without_durations(within(rust_shapes(&target)).await);
    assert!(
        reference.contains_key("grpc.client.attempt.started"),
        "grpcio exported {reference:?}"
    );
    for (name, expected) in &reference {
        let got = ours
            .get(name)
            .unwrap_or_else(|| panic!("{name} is exported by grpcio, not here: {ours:?}"));
        assert_eq!(got, expected, "{name}");
    }
}
