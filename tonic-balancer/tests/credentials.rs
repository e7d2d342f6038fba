//! Per-call bearer tokens over a BalancedChannel, against real tonic servers on loopback.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::*;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Code;
use tonic_balancer::credentials::{Bearer, BearerLayer, RefreshPolicy, Token, TokenSource};
use tonic_balancer::{BalancedChannel, WaitForReady};
use tonic_balancer_testkit::pb::SimpleRequest;
use tonic_balancer_testkit::pb::test_service_client::TestServiceClient;
use tonic_balancer_testkit::{Backend, Latency, fingerprint};
use tower::{BoxError, Layer};

type AuthClient = TestServiceClient<Bearer<BalancedChannel>>;

/// Tokens `tok-1`, `tok-2`, ... living `lifetime` each; counts fetches.
fn numbered(lifetime: Duration) -> (impl TokenSource, watch::Receiver<usize>) {
    let (count, fetches) = watch::channel(0);
    let next = AtomicUsize::new(0);
    let source = move || {
        let n = next.fetch_add(1, Ordering::SeqCst) + 1;
        count.send_replace(n);
        std::future::ready(Ok::<_, BoxError>(Token::expires_in(
            format!("tok-{n}"),
            lifetime,
        )))
    };
    (source, fetches)
}

fn bearer(token: &str) -> Option<u64> {
    Some(fingerprint(format!("Bearer {token}").as_bytes()))
}

fn authorizations(backend: &Backend) -> Vec<Option<u64>> {
    backend.seen().iter().map(|s| s.authorization).collect()
}

async fn auth_call(client: &mut AuthClient) -> Result<String, tonic::Status> {
    let request = SimpleRequest {
        fill_server_id: true,
        ..Default::default()
    };
    Ok(client.unary_call(request).await?.into_inner().server_id)
}

#[tokio::test]
async fn every_call_to_every_backend_carries_the_token() {
    within(async {
        let backends = fleet(2, Latency::None).await;
        let channel = BalancedChannel::builder(&target(backends.iter().map(|b| b.addr())))
            // Plaintext loopback backends: tokens in cleartext are accepted here.
            .allow_credentials_without_tls(true)
            .build()
            .unwrap();
        let (source, fetches) = numbered(Duration::from_secs(3600));
        let mut client = AuthClient::new(BearerLayer::new(source).layer(channel));
        for _ in 0..6 {
            auth_call(&mut client).await.unwrap();
        }
        for backend in &backends {
            assert_eq!(authorizations(backend), vec![bearer("tok-1"); 3]);
        }
        assert_eq!(*fetches.borrow(), 1);
    })
    .await;
}

#[tokio::test]
async fn concurrent_first_calls_share_one_fetch() {
    within(async {
        let backend = Backend::start("b").await.unwrap();
        let channel = BalancedChannel::builder(&target([backend.addr()]))
            // Plaintext loopback backends: tokens in cleartext are accepted here.
            .allow_credentials_without_tls(true)
            .build()
            .unwrap();
        let (source, fetches) = numbered(Duration::from_secs(3600));
        let client = AuthClient::new(BearerLayer::new(source).layer(channel));
        let calls = (0..16).map(|_| {
            let mut client = client.clone();
            async move { auth_call(&mut client).await }
        });
        for result in futures_util::future::join_all(calls).await {
            assert_eq!(result.unwrap(), "b");
        }
        assert_eq!(*fetches.borrow(), 1);
        assert_eq!(authorizations(&backend), vec![bearer("tok-1"); 16]);
    })
    .await;
}

#[tokio::test]
async fn a_short_lived_token_is_replaced_before_it_expires() {
    within(async {
        let backend = Backend::start("b").await.unwrap();
        let channel = BalancedChannel::builder(&target([backend.addr()]))
            // Plaintext loopback backends: tokens in cleartext are accepted here.
            .allow_credentials_without_tls(true)
            .build()
            .unwrap();
        let lifetime = Duration::from_secs(2);
        let (source, mut fetches) = numbered(lifetime);
        let mut policy = RefreshPolicy::default();
        policy.lifetime_fraction = 0.25;
        policy.retry_delay = Duration::from_millis(10);
        let layer = BearerLayer::with_policy(source, policy).unwrap();
        let mut client = AuthClient::new(layer.layer(channel));

        let first = Instant::now();
        auth_call(&mut client).await.unwrap();
        // The background task refreshes with no call asking (at a quarter of 2 s).
        fetches.wait_for(|&n| n >= 2).await.unwrap();
        assert!(first.elapsed() < lifetime, "refreshed after expiry");
        auth_call(&mut client).await.unwrap();
        let seen = authorizations(&backend);
        assert_eq!(seen[0], bearer("tok-1"));
        assert_ne!(seen[1], bearer("tok-1"), "still the first token");
    })
    .await;
}

#[tokio::test]
async fn a_failing_token_source_fails_calls_quickly_with_unauthenticated() {
    within(async {
        let backend = Backend::start("b").await.unwrap();
        let channel = BalancedChannel::builder(&target([backend.addr()]))
            // Plaintext loopback backends: tokens in cleartext are accepted here.
            .allow_credentials_without_tls(true)
            .build()
            .unwrap();
        let fetches = Arc::new(AtomicUsize::new(0));
        let counter = fetches.clone();
        let source = move || {
            counter.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Err::<Token, _>(std::io::Error::other(
                "identity provider returned 503",
            )))
        };
        let mut client = AuthClient::new(BearerLayer::new(source).layer(channel));
        let start = Instant::now();
        let status = auth_call(&mut client).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(
            status.message().contains("identity provider returned 503"),
            "{status:?}"
        );
        // Not a wait for the 10 s fetch timeout: the failure itself ends the call.
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        // Calls right after fail the same way without asking the source again.
        let again = auth_call(&mut client).await.unwrap_err();
        assert_eq!(again.code(), Code::Unauthenticated);
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert_eq!(backend.calls(), 0);
    })
    .await;
}

#[tokio::test]
async fn every_attempt_of_a_call_carries_the_same_token_even_across_a_refresh() {
    within(async {
        let backend = Backend::start("b").await.unwrap();
        let config = r#"{"methodConfig": [{"name": [{"service": "grpc.testing.TestService"}],
            "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.1s",
              "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#;
        let channel = BalancedChannel::builder(&target([backend.addr()]))
            // Plaintext loopback backends: tokens in cleartext are accepted here.
            .allow_credentials_without_tls(true)
            .service_config_json(config)
            .unwrap()
            .connection_backoff(fast_backoff())
            .build()
            .unwrap();
        // A new token every 0.2 s or so.
        let (source, mut fetches) = numbered(Duration::from_secs(2));
        let mut policy = RefreshPolicy::default();
        policy.lifetime_fraction = 0.1;
        policy.retry_delay = Duration::from_millis(10);
        let layer = BearerLayer::with_policy(source, policy).unwrap();
        let mut client = AuthClient::new(layer.layer(channel));

        // Attempt 1 reaches the server and hangs there.
        backend.set_latency(Latency::Fixed(Duration::from_secs(30)));
        let call = tokio::spawn(async move {
            let mut request = tonic::Request::new(SimpleRequest::default());
            // Attempt 2 waits out the outage below instead of failing fast.
            request.extensions_mut().insert(WaitForReady(true));
            let result = client.unary_call(request).await;
            (result, client)
        });
        backend.wait_in_flight(1).await;
        // The token is refreshed while attempt 1 is in flight...
        fetches.wait_for(|&n| n >= 2).await.unwrap();
        // ...then attempt 1 fails (UNAVAILABLE) and attempt 2 goes out after a restart.
        backend.set_latency(Latency::None);
        backend.kill().await;
        backend.restart().await.unwrap();
        let (result, mut client) = call.await.unwrap();
        result.unwrap();

        let seen = backend.seen();
        let attempts: Vec<_> = seen.iter().map(|s| s.previous_attempts).collect();
        assert_eq!(attempts, [None, Some(1)]);
        assert_eq!(authorizations(&backend), [bearer("tok-1"), bearer("tok-1")]);
        // The next call has the new token.
        auth_call(&mut client).await.unwrap();
        assert_ne!(authorizations(&backend)[2], bearer("tok-1"));
    })
    .await;
}

#[tokio::test]
async fn bearer_tokens_are_refused_on_a_channel_without_tls() {
    within(async {
        let backend = Backend::start("b").await.unwrap();
        let channel = BalancedChannel::builder(&target([backend.addr()]))
            .build()
            .unwrap();
        let (source, _) = numbered(Duration::from_secs(3600));
        let layer = BearerLayer::new(source);

        // When the client is built: an error that says why and how to opt in.
        let error = layer.try_layer(channel.clone()).unwrap_err();
        assert_eq!(error.kind(), tonic_balancer::ErrorKind::InvalidConfig);
        let message = error.to_string();
        assert!(message.contains("has no TLS"), "{message}");
        assert!(
            message.contains("allow_credentials_without_tls(true)"),
            "{message}"
        );

        // Composed anyway (a Layer cannot fail): the channel refuses every such call,
        // and no token reaches the wire.
        let mut client = AuthClient::new(layer.layer(channel));
        let status = auth_call(&mut client).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains("has no TLS"), "{status:?}");
        assert_eq!(backend.calls(), 0);

        // Opted in: accepted.
        let channel = BalancedChannel::builder(&target([backend.addr()]))
            .allow_credentials_without_tls(true)
            .build()
            .unwrap();
        let mut client = AuthClient::new(layer.try_layer(channel).unwrap());
        auth_call(&mut client).await.unwrap();
        assert_eq!(authorizations(&backend), vec![bearer("tok-1")]);
    })
    .await;
}
