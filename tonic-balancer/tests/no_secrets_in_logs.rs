//! Secrets never reach the logs: every `tracing` event and span, at TRACE, from this
//! crate, tonic, hyper and h2 (client and server: they share this test's thread) is
//! captured while calls carry a bearer token and a configured sensitive key, with a
//! failed fetch, a retry, and a logger of the user's that prints the header.

mod support;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tonic::Code;
use tonic::body::Body;
use tonic_balancer::BalancedChannel;
use tonic_balancer::credentials::{BearerLayer, RefreshPolicy, Token};
use tonic_balancer_testkit::Backend;
use tonic_balancer_testkit::pb::SimpleRequest;
use tonic_balancer_testkit::pb::test_service_client::TestServiceClient;
use tower::BoxError;

const TOKEN: &str = "tok-5f0c2a9e-never-log-me";
const API_KEY: &str = "key-77d1b3c4-never-log-me";

/// Everything the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn no_token_or_sensitive_metadata_in_trace_output() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        // Plain text: the assertions below read field=value pairs.
        .with_ansi(false)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);

    within(async {
        let backend = Backend::start("b").await.unwrap();
        let config = r#"{"methodConfig": [{"name": [{}],
            "retryPolicy": {"maxAttempts": 2, "initialBackoff": "0.01s", "maxBackoff": "0.1s",
              "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#;
        let builder = BalancedChannel::builder(&target([backend.addr()]))
            // Plaintext loopback backends: tokens in cleartext are accepted here.
            .allow_credentials_without_tls(true)
            .service_config_json(config)
            .unwrap()
            .sensitive_metadata(["x-api-key"]);
        tracing::trace!(?builder, "building");
        let channel = builder.build().unwrap();

        // The first fetch fails (and is logged); later ones return the token.
        let fetches = std::sync::atomic::AtomicUsize::new(0);
        let source = move || {
            let n = fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::ready(match n {
                0 => Err::<Token, BoxError>("identity provider flaked".into()),
                _ => Ok(Token::expires_in(TOKEN, Duration::from_secs(3600))),
            })
        };
        let mut policy = RefreshPolicy::default();
        policy.retry_delay = Duration::ZERO;
        let layer = BearerLayer::with_policy(source, policy).unwrap();
        // A user's logger between the credentials and the channel, printing the header.
        let service = tower::ServiceBuilder::new()
            .layer(layer.clone())
            .map_request(|request: http::Request<Body>| {
                let authorization = request.headers().get(http::header::AUTHORIZATION);
                tracing::trace!(?authorization, "outgoing request");
                request
            })
            .service(channel);
        let mut client = TestServiceClient::new(service);

        let request = || {
            let mut request = tonic::Request::new(SimpleRequest::default());
            request
                .metadata_mut()
                .insert("x-api-key", API_KEY.parse().unwrap());
            request
        };
        let failed = client.unary_call(request()).await.unwrap_err();
        assert_eq!(failed.code(), Code::Unauthenticated);
        backend.fail_next(1, Code::Unavailable);
        client.unary_call(request()).await.unwrap();
        client.unary_call(request()).await.unwrap();
        assert_eq!(backend.calls(), 3, "the retry did not happen");

        let token = Token::expires_in(TOKEN, Duration::from_secs(1));
        tracing::trace!(?layer, ?token, ?client, "state after the calls");
    })
    .await;
    drop(guard);

    let logs = captured.text();
    // The capture worked: our events, h2's frames and the user's logger are in it.
    assert!(logs.contains("bearer token fetch failed"), "{logs}");
    assert!(logs.contains("bearer token fetched"), "{logs}");
    assert!(logs.contains("outgoing request"), "{logs}");
    assert!(logs.contains("h2"), "no h2 trace events captured");
    // The header reached the user's logger marked sensitive.
    assert!(logs.contains("authorization=Some(Sensitive)"), "{logs}");
    for secret in [TOKEN, API_KEY] {
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
    }
}
