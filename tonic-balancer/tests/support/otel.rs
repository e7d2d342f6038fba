//! Reading back what the OpenTelemetry SDK's in-memory exporter holds: every
//! instrument by name, with its unit, kind and points.

use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};
use std::collections::BTreeMap;

/// One exported series: its attributes and what was recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub attributes: BTreeMap<String, String>,
    /// A sum's or gauge's value, or a histogram's count.
    pub value: f64,
    /// A histogram's sum.
    pub sum: f64,
    pub bounds: Vec<f64>,
}

/// One exported instrument.
#[derive(Clone, Debug)]
pub struct Instrument {
    pub unit: String,
    /// `counter`, `up_down_counter`, `histogram` or `gauge`.
    pub kind: &'static str,
    pub points: Vec<Point>,
}

fn attributes<'a>(kvs: impl Iterator<Item = &'a KeyValue>) -> BTreeMap<String, String> {
    kvs.map(|kv| (kv.key.to_string(), kv.value.to_string()))
        .collect()
}

fn read<T: Copy>(data: &MetricData<T>, f: impl Fn(T) -> f64) -> (&'static str, Vec<Point>) {
    // A sum's or a gauge's point: one value.
    let scalar = |attributes: BTreeMap<String, String>, value| Point {
        attributes,
        value: f(value),
        sum: 0.0,
        bounds: Vec::new(),
    };
    match data {
        MetricData::Sum(sum) => (
            if sum.is_monotonic() {
                "counter"
            } else {
                "up_down_counter"
            },
            sum.data_points()
                .map(|p| scalar(attributes(p.attributes()), p.value()))
                .collect(),
        ),
        MetricData::Gauge(gauge) => (
            "gauge",
            gauge
                .data_points()
                .map(|p| scalar(attributes(p.attributes()), p.value()))
                .collect(),
        ),
        MetricData::Histogram(histogram) => (
            "histogram",
            histogram
                .data_points()
                .map(|p| Point {
                    attributes: attributes(p.attributes()),
                    value: p.count() as f64,
                    sum: f(p.sum()),
                    bounds: p.bounds().collect(),
                })
                .collect(),
        ),
        MetricData::ExponentialHistogram(_) => ("exponential_histogram", Vec::new()),
    }
}

/// An SDK meter provider whose exports the test reads.
pub struct Metrics {
    pub provider: SdkMeterProvider,
    exporter: InMemoryMetricExporter,
}

impl Metrics {
    pub fn new() -> Self {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_periodic_exporter(exporter.clone())
            .build();
        Self { provider, exporter }
    }

    /// Every instrument by name, as of now.
    pub fn collect(&self) -> BTreeMap<String, Instrument> {
        self.exporter.reset();
        self.provider.force_flush().expect("flush");
        let exported: Vec<ResourceMetrics> = self.exporter.get_finished_metrics().expect("read");
        let mut all = BTreeMap::new();
        for resource in exported.iter().rev().take(1) {
            for scope in resource.scope_metrics() {
                for metric in scope.metrics() {
                    let (kind, points) = match metric.data() {
                        AggregatedMetrics::F64(data) => read(data, |v| v),
                        // The figures here are small: exact in an f64.
                        AggregatedMetrics::U64(data) => read(data, |v| v as f64),
                        AggregatedMetrics::I64(data) => read(data, |v| v as f64),
                    };
                    all.insert(
                        metric.name().to_owned(),
                        Instrument {
                            unit: metric.unit().to_owned(),
                            kind,
                            points,
                        },
                    );
                }
            }
        }
        all
    }
}
