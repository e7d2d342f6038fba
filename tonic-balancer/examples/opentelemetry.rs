//! OpenTelemetry: gRPC's standard instruments and spans from a balanced channel.
//!
//! Sets up an SDK meter provider and tracer provider with in-memory exporters (swap in
//! `opentelemetry-otlp` or `opentelemetry-stdout` in an application; see the README),
//! the W3C trace-context propagator, and two in-process backends. Makes three calls
//! under an application span: one OK, one retried twice before it succeeds, one that
//! fails with UNAVAILABLE. Then prints every exported instrument with its attributes,
//! and every span with its parent, so the links call → attempt can be followed; each
//! attempt's span context went to the server in its `traceparent` header.
//!
//! Run with `cargo run --example opentelemetry --features opentelemetry`.

use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tonic::Code;
use tonic_balancer::{BalancedChannel, OpenTelemetry};
use tonic_balancer_testkit::Backend;
use tonic_balancer_testkit::pb::test_service_client::TestServiceClient;
use tonic_balancer_testkit::pb::{EchoStatus, Empty, SimpleRequest};

/// EmptyCall retries UNAVAILABLE up to twice; UnaryCall does not retry.
const SERVICE_CONFIG: &str = r#"{"methodConfig": [{
    "name": [{"service": "grpc.testing.TestService", "method": "EmptyCall"}],
    "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.05s",
      "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let metric_exporter = InMemoryMetricExporter::default();
    let meter_provider = SdkMeterProvider::builder()
        .with_periodic_exporter(metric_exporter.clone())
        .build();
    let span_exporter = InMemorySpanExporter::default();
    let tracer_provider = SdkTracerProvider::builder()
        .with_simple_exporter(span_exporter.clone())
        .build();
    // What each attempt writes into its metadata: W3C `traceparent`.
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // An application would rather install them globally, which the channel then uses:
    // opentelemetry::global::set_meter_provider(meter_provider.clone());

    let backends = [
        Backend::start("alpha").await?,
        Backend::start("beta").await?,
    ];
    let target = format!("ipv4:{},{}", backends[0].addr(), backends[1].addr());
    let channel = BalancedChannel::builder(&target)
        .service_config_json(SERVICE_CONFIG)?
        .opentelemetry(
            OpenTelemetry::default()
                .meter_provider(&meter_provider)
                .tracer_provider(&tracer_provider)
                .optional_retry_metrics(true),
        )
        .build()?;
    channel.ready(std::time::Duration::from_secs(5)).await?;
    let mut client = TestServiceClient::new(channel.clone());

    // The application's span: the calls' parent.
    let app = tracer_provider.tracer("example");
    let cx = Context::current_with_span(app.start("handle order"));
    {
        let _attached = cx.clone().attach();
        client.empty_call(Empty {}).await?;
        backends[0].fail_next(1, Code::Unavailable);
        backends[1].fail_next(1, Code::Unavailable);
        client.empty_call(Empty {}).await?;
        let failing = SimpleRequest {
            response_status: Some(EchoStatus {
                code: Code::Unavailable as i32,
                message: "the example asks for it".to_owned(),
            }),
            ..Default::default()
        };
        let status = client.unary_call(failing).await.unwrap_err();
        println!("UnaryCall failed as asked: {:?}", status.code());
    }
    cx.span().end();

    meter_provider.force_flush()?;
    println!("\n--- instruments ---");
    if let Some(export) = metric_exporter.get_finished_metrics()?.last() {
        for scope in export.scope_metrics() {
            for metric in scope.metrics() {
                println!("{} ({})", metric.name(), metric.unit());
                match metric.data() {
                    AggregatedMetrics::F64(data) => print_points(data),
                    AggregatedMetrics::U64(data) => print_points(data),
                    AggregatedMetrics::I64(data) => print_points(data),
                }
            }
        }
    }

    println!("\n--- spans (parent → child) ---");
    for span in span_exporter.get_finished_spans()? {
        println!(
            "{} [{:?}] trace {} span {} parent {}",
            span.name,
            span.span_kind,
            span.span_context.trace_id(),
            span.span_context.span_id(),
            span.parent_span_id
        );
        println!("    {}", attributes(span.attributes.iter()));
        for event in span.events.iter() {
            println!(
                "    event {}: {}",
                event.name,
                attributes(event.attributes.iter())
            );
        }
    }
    Ok(())
}

fn attributes<'a>(kvs: impl Iterator<Item = &'a KeyValue>) -> String {
    kvs.map(|kv| format!("{}={}", kv.key, kv.value))
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_points<T: std::fmt::Debug + Copy>(data: &MetricData<T>) {
    match data {
        MetricData::Sum(sum) => {
            for p in sum.data_points() {
                println!("    {} value {:?}", attributes(p.attributes()), p.value());
            }
        }
        MetricData::Gauge(gauge) => {
            for p in gauge.data_points() {
                println!("    {} value {:?}", attributes(p.attributes()), p.value());
            }
        }
        MetricData::Histogram(histogram) => {
            for p in histogram.data_points() {
                println!(
                    "    {} count {} sum {:?}",
                    attributes(p.attributes()),
                    p.count(),
                    p.sum()
                );
            }
        }
        MetricData::ExponentialHistogram(_) => println!("    (exponential histogram)"),
    }
}
