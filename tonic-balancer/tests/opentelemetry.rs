//! OpenTelemetry export: the instruments gRPC's plugins export (names, units, types,
//! attributes, boundaries), read back through the SDK's in-memory exporter; spans and
//! trace context across a real hop to a tonic server that extracts it.

mod support;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use support::otel::{Metrics, Point};
use support::*;
use tonic::{Code, Request, Response, Status};
use tonic_balancer::stats::otel::{LATENCY_BOUNDARIES, SIZE_BOUNDARIES};
use tonic_balancer::{BalancedChannel, OpenTelemetry};
use tonic_balancer_testkit::Backend;
use tonic_balancer_testkit::pb::test_service_server::{TestService, TestServiceServer};
use tonic_balancer_testkit::pb::{
    EchoStatus, Empty, SimpleRequest, SimpleResponse, StreamingOutputCallRequest,
    StreamingOutputCallResponse,
};

const EMPTY_CALL: &str = "grpc.testing.TestService/EmptyCall";
const UNARY_CALL: &str = "grpc.testing.TestService/UnaryCall";

fn unavailable_request() -> SimpleRequest {
    SimpleRequest {
        response_status: Some(EchoStatus {
            code: Code::Unavailable as i32,
            message: "asked to fail".to_owned(),
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn attempt_and_call_instruments_carry_grpc_names_units_and_attributes() {
    within(async {
        let metrics = Metrics::new();
        let backend = Backend::start("b").await.unwrap();
        let target = target([backend.addr()]);
        let channel = BalancedChannel::builder(&target)
            .opentelemetry(OpenTelemetry::default().meter_provider(&metrics.provider))
            .build()
            .unwrap();
        wait_ready(&channel, 1).await;
        let mut client = Client::new(channel.clone());
        client.empty_call(Empty {}).await.unwrap();
        let status = client.unary_call(unavailable_request()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);

        let all = metrics.collect();
        let keys = |name: &str| -> BTreeSet<BTreeSet<String>> {
            all[name]
                .points
                .iter()
                .map(|p| p.attributes.keys().cloned().collect())
                .collect()
        };
        let set = |keys: &[&str]| -> BTreeSet<BTreeSet<String>> {
            BTreeSet::from([keys.iter().map(|k| k.to_string()).collect()])
        };
        let with_status = set(&["grpc.method", "grpc.status", "grpc.target"]);
        for (name, unit, kind) in [
            ("grpc.client.attempt.started", "{attempt}", "counter"),
            ("grpc.client.attempt.duration", "s", "histogram"),
            (
                "grpc.client.attempt.sent_total_compressed_message_size",
                "By",
                "histogram",
            ),
            (
                "grpc.client.attempt.rcvd_total_compressed_message_size",
                "By",
                "histogram",
            ),
            ("grpc.client.call.duration", "s", "histogram"),
        ] {
            let instrument = all.get(name).unwrap_or_else(|| panic!("{name} in {all:?}"));
            assert_eq!(
                (instrument.unit.as_str(), instrument.kind),
                (unit, kind),
                "{name}"
            );
            let expected = if name == "grpc.client.attempt.started" {
                set(&["grpc.method", "grpc.target"])
            } else {
                with_status.clone()
            };
            assert_eq!(keys(name), expected, "{name}");
        }
        let point = |name: &str, method: &str, status: Option<&str>| -> Point {
            all[name]
                .points
                .iter()
                .find(|p| {
                    p.attributes["grpc.method"] == method
                        && p.attributes.get("grpc.status").map(String::as_str) == status
                })
                .unwrap_or_else(|| panic!("{name} {method} {status:?} in {:?}", all[name]))
                .clone()
        };
        let started = point("grpc.client.attempt.started", EMPTY_CALL, None);
        assert_eq!(started.value, 1.0);
        assert_eq!(started.attributes["grpc.target"], target);
        assert_eq!(
            point("grpc.client.call.duration", UNARY_CALL, Some("UNAVAILABLE")).value,
            1.0
        );
        let ok = point("grpc.client.attempt.duration", EMPTY_CALL, Some("OK"));
        assert_eq!(ok.value, 1.0);
        assert_eq!(ok.bounds, LATENCY_BOUNDARIES);
        // Empty messages: one of 0 bytes each way.
        let sent = point(
            "grpc.client.attempt.sent_total_compressed_message_size",
            EMPTY_CALL,
            Some("OK"),
        );
        assert_eq!((sent.value, sent.sum), (1.0, 0.0));
        assert_eq!(sent.bounds, SIZE_BOUNDARIES);
        // The failing request's message is the encoded SimpleRequest.
        let request_size = prost::Message::encoded_len(&unavailable_request()) as f64;
        let failed_sent = point(
            "grpc.client.attempt.sent_total_compressed_message_size",
            UNARY_CALL,
            Some("UNAVAILABLE"),
        );
        assert_eq!((failed_sent.value, failed_sent.sum), (1.0, request_size));

        // A94: one connection made and open; none failed or lost.
        let target_only = BTreeMap::from([("grpc.target".to_owned(), target.clone())]);
        let succeeded = &all["grpc.subchannel.connection_attempts_succeeded"];
        assert_eq!(
            (succeeded.unit.as_str(), succeeded.kind),
            ("{attempt}", "counter")
        );
        assert_eq!(succeeded.points[0].attributes, target_only);
        assert_eq!(succeeded.points[0].value, 1.0);
        let open = &all["grpc.subchannel.open_connections"];
        assert_eq!(
            (open.unit.as_str(), open.kind, open.points[0].value),
            ("{connection}", "up_down_counter", 1.0)
        );
        // A96 instruments are opt-in.
        assert!(!all.contains_key("grpc.client.call.retries"), "{all:?}");
    })
    .await;
}

#[tokio::test]
async fn retry_instruments_are_opt_in_and_count_each_call_retries() {
    within(async {
        let metrics = Metrics::new();
        let backend = Backend::start("b").await.unwrap();
        let config = r#"{"methodConfig": [{"name": [{"service": "grpc.testing.TestService"}],
            "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.01s",
              "backoffMultiplier": 1, "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#;
        let channel = BalancedChannel::builder(&target([backend.addr()]))
            .service_config_json(config)
            .unwrap()
            .opentelemetry(
                OpenTelemetry::default()
                    .meter_provider(&metrics.provider)
                    .optional_retry_metrics(true),
            )
            .build()
            .unwrap();
        wait_ready(&channel, 1).await;
        let mut client = Client::new(channel.clone());
        backend.fail_next(2, Code::Unavailable);
        client.empty_call(Empty {}).await.unwrap();
        client.empty_call(Empty {}).await.unwrap();

        let all = metrics.collect();
        let retries = &all["grpc.client.call.retries"];
        assert_eq!(
            (retries.unit.as_str(), retries.kind),
            ("{retry}", "histogram")
        );
        // One call retried twice; the call without a retry records nothing (A96).
        assert_eq!(retries.points.len(), 1, "{retries:?}");
        assert_eq!((retries.points[0].value, retries.points[0].sum), (1.0, 2.0));
        assert_eq!(
            retries.points[0].attributes.keys().collect::<Vec<_>>(),
            ["grpc.method", "grpc.target"]
        );
        let delay = &all["grpc.client.call.retry_delay"];
        assert_eq!((delay.unit.as_str(), delay.points[0].value), ("s", 1.0));
        assert!(delay.points[0].sum >= 0.02 * 0.8, "{delay:?}");
        // Three attempts of the first call, one of the second: two failed, two OK.
        let attempts = &all["grpc.client.attempt.duration"];
        let count = |status: &str| -> f64 {
            attempts
                .points
                .iter()
                .filter(|p| p.attributes["grpc.status"] == status)
                .map(|p| p.value)
                .sum()
        };
        assert_eq!((count("UNAVAILABLE"), count("OK")), (2.0, 2.0));
        assert!(
            !all.contains_key("grpc.client.call.hedges"),
            "no hedging: {all:?}"
        );
    })
    .await;
}

/// The panic-mode gauge follows the channel: 0 while enough backends are healthy, 1
/// once too few are and calls spread over every connected one, 0 again after.
#[tokio::test]
async fn the_panic_mode_gauge_follows_the_share_of_healthy_backends() {
    within(async {
        use tonic_balancer::ConnectivityState;
        let metrics = Metrics::new();
        let backends = fleet(2, tonic_balancer_testkit::Latency::None).await;
        let channel = BalancedChannel::builder(&target(backends.iter().map(|b| b.addr())))
            .health_check("")
            .panic_threshold(60)
            .opentelemetry(OpenTelemetry::default().meter_provider(&metrics.provider))
            .build()
            .unwrap();
        wait_ready(&channel, 2).await;
        let gauge = |metrics: &Metrics| {
            let all = metrics.collect();
            let panic = all["grpc.lb.tonic_balancer.panic_mode"].clone();
            assert_eq!((panic.unit.as_str(), panic.kind), ("{bool}", "gauge"));
            panic.points[0].value
        };
        assert_eq!(gauge(&metrics), 0.0);

        // One of two healthy is 50 %, under the 60 % threshold: panic mode.
        backends[0].set_serving(false);
        let unhealthy = backends[0].addr();
        channel
            .wait_for(|subs| {
                subs.iter().any(|s| {
                    s.address.addr == unhealthy && s.state == ConnectivityState::TransientFailure
                })
            })
            .await;
        assert_eq!(gauge(&metrics), 1.0);

        backends[0].set_serving(true);
        wait_ready(&channel, 2).await;
        assert_eq!(gauge(&metrics), 0.0);
    })
    .await;
}

/// A stream the server refuses unprocessed (REFUSED_STREAM) is retried transparently,
/// and A96's `grpc.client.call.transparent_retries` counts it.
#[tokio::test]
async fn a_refused_stream_is_counted_as_a_transparent_retry() {
    within(async {
        let metrics = Metrics::new();
        let server = tonic_balancer_testkit::faults::RawH2Server::start(
            tonic_balancer_testkit::faults::RawBehaviour::RefuseStreams(1),
        )
        .await
        .unwrap();
        let channel = BalancedChannel::builder(&target([server.addr()]))
            .opentelemetry(
                OpenTelemetry::default()
                    .meter_provider(&metrics.provider)
                    .optional_retry_metrics(true),
            )
            .build()
            .unwrap();
        wait_ready(&channel, 1).await;
        let mut client = Client::new(channel.clone());
        client.empty_call(Empty {}).await.unwrap();
        client.empty_call(Empty {}).await.unwrap();
        assert_eq!(server.streams(), 3, "one refused, then two served");

        let all = metrics.collect();
        let transparent = &all["grpc.client.call.transparent_retries"];
        assert_eq!(
            (transparent.unit.as_str(), transparent.kind),
            ("{transparent_retry}", "histogram")
        );
        // The refused call records one; the other none (A96 records only non-zero).
        assert_eq!(transparent.points.len(), 1, "{transparent:?}");
        assert_eq!(
            (transparent.points[0].value, transparent.points[0].sum),
            (1.0, 1.0)
        );
        assert!(
            !all.contains_key("grpc.client.call.retries"),
            "a transparent retry is not a policy retry: {all:?}"
        );
    })
    .await;
}

// === spans and context propagation ===

/// A tonic server that extracts the caller's trace context and records a SERVER span
/// under it, as an instrumented server would.
#[derive(Clone)]
struct Extracting {
    tracer: opentelemetry_sdk::trace::SdkTracer,
    seen: Arc<Mutex<Vec<tonic::metadata::MetadataMap>>>,
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

impl Extracting {
    fn handle(&self, metadata: &tonic::metadata::MetadataMap) {
        let parent = TraceContextPropagator::new().extract(&MetadataExtractor(metadata));
        let mut span = self
            .tracer
            .span_builder("server")
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        span.end();
        self.seen.lock().unwrap().push(metadata.clone());
    }
}

type OutputStream =
    Pin<Box<dyn futures_core::Stream<Item = Result<StreamingOutputCallResponse, Status>> + Send>>;

#[tonic::async_trait]
impl TestService for Extracting {
    async fn empty_call(&self, request: Request<Empty>) -> Result<Response<Empty>, Status> {
        self.handle(request.metadata());
        Ok(Response::new(Empty {}))
    }

    async fn unary_call(
        &self,
        request: Request<SimpleRequest>,
    ) -> Result<Response<SimpleResponse>, Status> {
        self.handle(request.metadata());
        match request.into_inner().response_status {
            Some(status) if status.code != 0 => {
                Err(Status::new(Code::from_i32(status.code), status.message))
            }
            _ => Ok(Response::new(SimpleResponse::default())),
        }
    }

    type StreamingOutputCallStream = OutputStream;

    async fn streaming_output_call(
        &self,
        _: Request<StreamingOutputCallRequest>,
    ) -> Result<Response<OutputStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// Serves `service` on 127.0.0.1; the address, and the task to abort.
async fn serve(service: Extracting) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(TestServiceServer::new(service))
            .serve_with_incoming(incoming)
            .await;
    });
    (addr, task)
}

fn span<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("span {name} in {:?}", names(spans)))
}

fn names(spans: &[SpanData]) -> Vec<String> {
    spans.iter().map(|s| s.name.to_string()).collect()
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[tokio::test]
async fn attempt_spans_are_the_parents_of_the_server_spans_across_a_real_hop() {
    within(async {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let service = Extracting {
            tracer: provider.tracer("server"),
            seen: Arc::default(),
        };
        let (addr, task) = serve(service.clone()).await;
        let channel = BalancedChannel::builder(&target([addr]))
            .opentelemetry(
                OpenTelemetry::default()
                    .tracer_provider(&provider)
                    .grpc_trace_bin(true),
            )
            .build()
            .unwrap();
        wait_ready(&channel, 1).await;

        // The application's own span is the call's parent.
        let app = provider.tracer("app");
        let root = app.start("handle request");
        let cx = Context::current_with_span(root);
        let mut client = Client::new(channel.clone());
        {
            let _attached = cx.clone().attach();
            client.empty_call(Empty {}).await.unwrap();
        }
        let status = client.unary_call(unavailable_request()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        cx.span().end();
        task.abort();

        let spans = exporter.get_finished_spans().unwrap();
        let root = span(&spans, "handle request");
        let calls: Vec<&SpanData> = spans
            .iter()
            .filter(|s| s.name == "Sent.grpc.testing.TestService.EmptyCall")
            .collect();
        assert_eq!(calls.len(), 1, "{:?}", names(&spans));
        let call = calls[0];
        let attempt = span(&spans, "Attempt.grpc.testing.TestService.EmptyCall");
        let servers: Vec<&SpanData> = spans.iter().filter(|s| s.name == "server").collect();
        assert_eq!(servers.len(), 2, "one per call: {:?}", names(&spans));
        let trace = root.span_context.trace_id();
        assert_eq!(call.span_context.trace_id(), trace);
        assert_eq!(call.parent_span_id, root.span_context.span_id());
        assert_eq!(attempt.span_context.trace_id(), trace);
        assert_eq!(attempt.parent_span_id, call.span_context.span_id());
        let server = servers
            .iter()
            .find(|s| s.span_context.trace_id() == trace)
            .expect("the server span in the caller's trace");
        assert_eq!(server.parent_span_id, attempt.span_context.span_id());
        assert!(server.parent_span_is_remote);
        assert_eq!(
            (call.span_kind.clone(), attempt.span_kind.clone()),
            (SpanKind::Client, SpanKind::Client)
        );
        for s in [call, attempt] {
            assert_eq!(attribute(s, "rpc.system").as_deref(), Some("grpc"));
            assert_eq!(
                attribute(s, "rpc.service").as_deref(),
                Some("grpc.testing.TestService")
            );
            assert_eq!(attribute(s, "rpc.method").as_deref(), Some("EmptyCall"));
            assert_eq!(attribute(s, "rpc.grpc.status_code").as_deref(), Some("0"));
        }
        assert_eq!(
            attribute(attempt, "server.address").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            attribute(attempt, "server.port"),
            Some(addr.port().to_string())
        );
        let events: Vec<&str> = attempt.events.iter().map(|e| e.name.as_ref()).collect();
        assert_eq!(events, ["Outbound message", "Inbound message"]);

        // The failed call: a new trace (no parent in context), status on both spans.
        let failed = span(&spans, "Sent.grpc.testing.TestService.UnaryCall");
        let failed_attempt = span(&spans, "Attempt.grpc.testing.TestService.UnaryCall");
        assert_eq!(failed.parent_span_id, opentelemetry::trace::SpanId::INVALID);
        assert_eq!(failed_attempt.parent_span_id, failed.span_context.span_id());
        assert_eq!(
            attribute(failed, "rpc.grpc.status_code").as_deref(),
            Some("14")
        );
        assert!(matches!(
            failed.status,
            opentelemetry::trace::Status::Error { .. }
        ));

        // grpc-trace-bin, asked for, carries the same attempt context.
        let seen = service.seen.lock().unwrap()[0].clone();
        let bin = seen
            .get_bin("grpc-trace-bin")
            .expect("grpc-trace-bin sent")
            .to_bytes()
            .expect("valid base64");
        assert_eq!(bin.len(), 29);
        assert_eq!(&bin[2..18], &trace.to_bytes());
        assert_eq!(&bin[19..27], &attempt.span_context.span_id().to_bytes());
        let traceparent = seen
            .get("traceparent")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            traceparent,
            format!("00-{}-{}-01", trace, attempt.span_context.span_id())
        );
    })
    .await;
}

#[tokio::test]
async fn without_a_span_context_or_a_recording_tracer_no_trace_header_is_sent() {
    within(async {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let service = Extracting {
            tracer: SdkTracerProvider::builder().build().tracer("unused"),
            seen: Arc::default(),
        };
        let (addr, task) = serve(service.clone()).await;
        // The global providers: no-ops, as nothing in this binary installs any.
        let channel = BalancedChannel::builder(&target([addr])).build().unwrap();
        let mut client = Client::new(channel);
        client.empty_call(Empty {}).await.unwrap();

        // A caller's context is passed on even though nothing records here.
        let provider = SdkTracerProvider::builder().build();
        let root = provider.tracer("app").start("outer");
        let outer = root.span_context().clone();
        let cx = Context::current_with_span(root);
        {
            let _attached = cx.clone().attach();
            client.empty_call(Empty {}).await.unwrap();
        }
        task.abort();
        let seen = service.seen.lock().unwrap().clone();
        assert!(seen[0].get("traceparent").is_none(), "{:?}", seen[0]);
        assert!(seen[0].get("grpc-trace-bin").is_none());
        let passed = seen[1].get("traceparent").expect("the caller's context");
        assert_eq!(
            passed.to_str().unwrap(),
            format!("00-{}-{}-01", outer.trace_id(), outer.span_id())
        );
    })
    .await;
}

#[tokio::test]
async fn subchannel_and_lb_instruments_count_failed_connects_disconnections_and_failed_picks() {
    within(async {
        use tonic_balancer::ConnectivityState;
        let metrics = Metrics::new();
        let refused = refused_addr();
        let channel = BalancedChannel::builder(&target([refused]))
            .connection_backoff(fast_backoff())
            .opentelemetry(OpenTelemetry::default().meter_provider(&metrics.provider))
            .build()
            .unwrap();
        channel
            .wait_for(|subs| {
                subs.iter()
                    .all(|s| s.state == ConnectivityState::TransientFailure)
            })
            .await;
        let status = Client::new(channel.clone())
            .empty_call(Empty {})
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        let all = metrics.collect();
        let failed = &all["grpc.subchannel.connection_attempts_failed"];
        assert!(failed.points[0].value >= 1.0, "{failed:?}");
        let picks = &all["grpc.lb.tonic_balancer.picks_failed"];
        assert_eq!(
            (picks.unit.as_str(), picks.points[0].value),
            ("{pick}", 1.0)
        );
        let waited = &all["grpc.lb.tonic_balancer.queue_wait"];
        assert_eq!((waited.unit.as_str(), waited.points[0].value), ("s", 1.0));
        assert!(!all.contains_key("grpc.subchannel.connection_attempts_succeeded"));

        // A READY connection that is lost: one disconnection, nothing left open.
        let metrics = Metrics::new();
        let backend = Backend::start("b").await.unwrap();
        let channel = BalancedChannel::builder(&target([backend.addr()]))
            .connection_backoff(fast_backoff())
            .opentelemetry(OpenTelemetry::default().meter_provider(&metrics.provider))
            .build()
            .unwrap();
        wait_ready(&channel, 1).await;
        backend.kill().await;
        channel
            .wait_for(|subs| subs.iter().all(|s| s.state != ConnectivityState::Ready))
            .await;
        let all = metrics.collect();
        let lost = &all["grpc.subchannel.disconnections"];
        assert_eq!(
            (lost.unit.as_str(), lost.kind, lost.points[0].value),
            ("{disconnection}", "counter", 1.0)
        );
        assert_eq!(all["grpc.subchannel.open_connections"].points[0].value, 0.0);
    })
    .await;
}

#[tokio::test]
async fn an_outlier_ejection_is_counted_under_the_outlier_detection_policy() {
    within(async {
        let metrics = Metrics::new();
        let backends = fleet(3, tonic_balancer_testkit::Latency::None).await;
        let mut outliers = tonic_balancer::health::OutlierDetection::default();
        // Long intervals: only consecutive failures eject within this test.
        outliers.interval = std::time::Duration::from_secs(60);
        let channel = BalancedChannel::builder(&target(backends.iter().map(|b| b.addr())))
            .outlier_detection(outliers)
            .opentelemetry(OpenTelemetry::default().meter_provider(&metrics.provider))
            .build()
            .unwrap();
        wait_ready(&channel, 3).await;
        backends[1].set_failure(1.0, Code::Unavailable);
        let mut client = Client::new(channel.clone());
        // Five failures in a row eject it; round robin reaches it every third call.
        for _ in 0..15 {
            let _ = call(&mut client).await;
        }
        // The control task ejects it and then publishes: wait for publishes (a bounded
        // number) until the ejection shows.
        for _ in 0..100 {
            if channel.stats().endpoints.iter().any(|e| e.ejections > 0) {
                break;
            }
            let mut first = true;
            channel
                .wait_for(|_| !std::mem::replace(&mut first, false))
                .await;
        }
        let all = metrics.collect();
        let ejections = &all["grpc.lb.outlier_detection.ejections"];
        assert_eq!(
            (
                ejections.unit.as_str(),
                ejections.kind,
                ejections.points[0].value
            ),
            ("{ejection}", "counter", 1.0)
        );
    })
    .await;
}

#[tokio::test]
async fn a_hedge_is_counted_and_the_attempt_that_lost_ends_cancelled() {
    within(async {
        let metrics = Metrics::new();
        // The backend takes 50 ms; the hedge goes out after 5 ms, so two attempts run.
        let backends = fleet(
            1,
            tonic_balancer_testkit::Latency::Fixed(std::time::Duration::from_millis(50)),
        )
        .await;
        let config = r#"{"methodConfig": [{"name": [{"service": "grpc.testing.TestService"}],
            "hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "0.005s"}}]}"#;
        let channel = BalancedChannel::builder(&target([backends[0].addr()]))
            .service_config_json(config)
            .unwrap()
            .opentelemetry(
                OpenTelemetry::default()
                    .meter_provider(&metrics.provider)
                    .optional_retry_metrics(true),
            )
            .build()
            .unwrap();
        wait_ready(&channel, 1).await;
        call(&mut Client::new(channel.clone())).await.unwrap();

        let all = metrics.collect();
        let hedges = &all["grpc.client.call.hedges"];
        assert_eq!(hedges.unit, "{hedge}");
        assert_eq!((hedges.points[0].value, hedges.points[0].sum), (1.0, 1.0));
        let started = &all["grpc.client.attempt.started"];
        assert_eq!(started.points[0].value, 2.0);
        let by_status: BTreeMap<String, f64> = all["grpc.client.attempt.duration"]
            .points
            .iter()
            .map(|p| (p.attributes["grpc.status"].clone(), p.value))
            .collect();
        assert_eq!(
            by_status,
            BTreeMap::from([("CANCELLED".to_owned(), 1.0), ("OK".to_owned(), 1.0)])
        );
        assert!(!all.contains_key("grpc.client.call.retries"), "{all:?}");
    })
    .await;
}

#[tokio::test]
async fn a_streamed_request_body_is_counted_as_it_is_sent() {
    within(async {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let metrics = Metrics::new();
        let backend = Backend::start("b").await.unwrap();
        let channel = BalancedChannel::builder(&target([backend.addr()]))
            .opentelemetry(OpenTelemetry::default().meter_provider(&metrics.provider))
            .build()
            .unwrap();
        wait_ready(&channel, 1).await;
        // A body that is not ready at once: the channel streams it rather than take it
        // whole, as it does for client-streaming calls.
        let message = SimpleRequest {
            response_size: 3,
            ..Default::default()
        };
        let encoded = prost::Message::encode_to_vec(&message);
        let mut framed = vec![0u8];
        framed.extend((encoded.len() as u32).to_be_bytes());
        framed.extend(&encoded);
        let stream = futures_util::stream::once(async move {
            tokio::task::yield_now().await;
            Ok::<_, Status>(http_body::Frame::data(bytes::Bytes::from(framed)))
        });
        let request = http::Request::builder()
            .method("POST")
            .uri("http://b/grpc.testing.TestService/UnaryCall")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(tonic::body::Body::new(http_body_util::StreamBody::new(
                stream,
            )))
            .unwrap();
        let response = channel.clone().oneshot(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap();
        let trailers = body.trailers().cloned().unwrap_or_default();
        assert_eq!(
            trailers.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"0"[..])
        );

        let all = metrics.collect();
        let sent = all["grpc.client.attempt.sent_total_compressed_message_size"]
            .points
            .iter()
            .find(|p| p.attributes["grpc.method"] == UNARY_CALL)
            .cloned()
            .expect("the streamed request's size");
        assert_eq!((sent.value, sent.sum), (1.0, encoded.len() as f64));
        // The response: a SimpleResponse with a 3-byte payload, counted the same way.
        let rcvd = all["grpc.client.attempt.rcvd_total_compressed_message_size"]
            .points
            .iter()
            .find(|p| p.attributes["grpc.method"] == UNARY_CALL)
            .cloned()
            .unwrap();
        assert_eq!(rcvd.value, 1.0);
        assert!(rcvd.sum >= 3.0, "{rcvd:?}");
    })
    .await;
}

#[tokio::test]
async fn a_retried_call_has_one_attempt_span_per_attempt_and_its_backoffs_as_events() {
    within(async {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let backend = Backend::start("b").await.unwrap();
        let config = r#"{"methodConfig": [{"name": [{"service": "grpc.testing.TestService"}],
            "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.01s",
              "backoffMultiplier": 1, "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#;
        let channel = BalancedChannel::builder(&target([backend.addr()]))
            .service_config_json(config)
            .unwrap()
            .opentelemetry(OpenTelemetry::default().tracer_provider(&provider))
            .build()
            .unwrap();
        wait_ready(&channel, 1).await;
        backend.fail_next(2, Code::Unavailable);
        Client::new(channel).empty_call(Empty {}).await.unwrap();

        let spans = exporter.get_finished_spans().unwrap();
        let call = span(&spans, "Sent.grpc.testing.TestService.EmptyCall");
        let attempts: Vec<&SpanData> = spans
            .iter()
            .filter(|s| s.name == "Attempt.grpc.testing.TestService.EmptyCall")
            .collect();
        assert_eq!(attempts.len(), 3, "{:?}", names(&spans));
        let mut seen: Vec<(String, String)> = attempts
            .iter()
            .map(|a| {
                assert_eq!(a.parent_span_id, call.span_context.span_id());
                (
                    attribute(a, "previous-rpc-attempts").unwrap(),
                    attribute(a, "rpc.grpc.status_code").unwrap(),
                )
            })
            .collect();
        seen.sort();
        let expected =
            [("0", "14"), ("1", "14"), ("2", "0")].map(|(a, b)| (a.to_owned(), b.to_owned()));
        assert_eq!(seen, expected);
        let events: Vec<&str> = call.events.iter().map(|e| e.name.as_ref()).collect();
        assert_eq!(
            events,
            [
                "Retry backoff",
                "Retry attempt",
                "Retry backoff",
                "Retry attempt"
            ]
        );
        assert_eq!(
            attribute(call, "rpc.grpc.status_code").as_deref(),
            Some("0")
        );
    })
    .await;
}

#[tokio::test]
async fn methods_beyond_the_stats_limit_are_reported_as_other() {
    within(async {
        let metrics = Metrics::new();
        let backend = Backend::start("b").await.unwrap();
        let channel = BalancedChannel::builder(&target([backend.addr()]))
            .stats_method_limit(1)
            .opentelemetry(OpenTelemetry::default().meter_provider(&metrics.provider))
            .build()
            .unwrap();
        wait_ready(&channel, 1).await;
        let mut client = Client::new(channel);
        client.empty_call(Empty {}).await.unwrap();
        client.unary_call(SimpleRequest::default()).await.unwrap();
        let methods: BTreeSet<String> = metrics.collect()["grpc.client.call.duration"]
            .points
            .iter()
            .map(|p| p.attributes["grpc.method"].clone())
            .collect();
        assert_eq!(
            methods,
            BTreeSet::from([EMPTY_CALL.to_owned(), "other".to_owned()])
        );
    })
    .await;
}
