//! Tracing spans after a known call, captured by a recording layer. The only test in
//! this binary, so its global subscriber sees every span.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use support::*;
use tonic_balancer::BalancedChannel;
use tonic_balancer_testkit::Backend;
use tonic_balancer_testkit::pb::Empty;
use tracing::span;
use tracing_subscriber::layer::{Context, SubscriberExt};

/// A span's name and its fields as last recorded.
type SpanRecord = (String, BTreeMap<String, String>);

/// Every span's name and fields, as recorded.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<SpanRecord>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S> tracing_subscriber::Layer<S> for Spans
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        fields.insert("#id".to_owned(), id.into_u64().to_string());
        self.0
            .lock()
            .unwrap()
            .push((attrs.metadata().name().to_owned(), fields));
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, _: Context<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        let id = id.into_u64().to_string();
        if let Some((_, fields)) = spans.iter_mut().rev().find(|(_, f)| f["#id"] == id) {
            values.record(&mut Fields(fields));
        }
    }
}

#[tokio::test]
async fn spans_carry_opentelemetry_rpc_fields() {
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry()
        .with(spans.clone())
        .with(tracing_subscriber::filter::LevelFilter::DEBUG);
    // The only test of this binary: a global subscriber, so no other test's thread can
    // register the crate's callsites before it exists.
    tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
    within(async {
        let backend = Backend::start("b").await.unwrap();
        let channel = BalancedChannel::builder(&target([backend.addr()]))
            .build()
            .unwrap();
        wait_ready(&channel, 1).await;
        Client::new(channel).empty_call(Empty {}).await.unwrap();

        let spans = spans.0.lock().unwrap().clone();
        let calls: Vec<_> = spans.iter().filter(|(n, _)| n == "grpc.call").collect();
        let attempts: Vec<_> = spans.iter().filter(|(n, _)| n == "grpc.attempt").collect();
        assert_eq!(calls.len(), 1, "{spans:?}");
        assert_eq!(attempts.len(), 1, "{spans:?}");
        let call = &calls[0].1;
        assert_eq!(call["rpc.system"], "grpc");
        assert_eq!(call["rpc.service"], "grpc.testing.TestService");
        assert_eq!(call["rpc.method"], "EmptyCall");
        assert_eq!(call["rpc.grpc.status_code"], "0");
        assert!(call["policy"].contains("RoundRobin"), "{call:?}");
        let attempt = &attempts[0].1;
        assert_eq!(attempt["attempt"], "1");
        assert_eq!(attempt["transparent"], "false");
        assert_eq!(attempt["server.address"], "127.0.0.1");
        assert_eq!(attempt["server.port"], backend.addr().port().to_string());
    })
    .await;
}
