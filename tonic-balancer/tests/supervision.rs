//! Background tasks that end unexpectedly (a panic inside them) make calls fail with a
//! status naming the cause; no call waits for ever on a task that is gone.

mod support;

use std::task::{Context, Poll};
use std::time::Duration;
use support::*;
use tonic::Code;
use tonic_balancer::credentials::{BearerLayer, RefreshPolicy, Token};
use tonic_balancer::resolver::{Resolution, Resolve};
use tonic_balancer::{BalancedChannel, WaitForReady};
use tonic_balancer_testkit::Latency;
use tonic_balancer_testkit::pb::test_service_client::TestServiceClient;
use tonic_balancer_testkit::pb::{Empty, SimpleRequest};
use tower::{BoxError, Layer};

/// A custom resolver with a bug: it panics when first asked for addresses.
struct PanickingResolver;

impl Resolve for PanickingResolver {
    fn poll_resolve(&mut self, _: &mut Context<'_>) -> Poll<Option<Resolution>> {
        panic!("resolver bug")
    }
}

fn wait_for_ready_call() -> tonic::Request<SimpleRequest> {
    let mut request = tonic::Request::new(SimpleRequest::default());
    request.extensions_mut().insert(WaitForReady(true));
    request
}

#[tokio::test]
async fn a_panicking_control_task_fails_queued_and_later_calls_naming_the_panic() {
    within(async {
        let channel = BalancedChannel::builder_with_resolver(PanickingResolver)
            .build()
            .unwrap();
        let mut client = Client::new(channel.clone());
        // Wait-for-ready, no deadline: without supervision it would queue for ever.
        let status = client.unary_call(wait_for_ready_call()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status
                .message()
                .contains("control task panicked: resolver bug"),
            "{status:?}"
        );
        let status = client.empty_call(Empty {}).await.unwrap_err();
        assert!(status.message().contains("resolver bug"), "{status:?}");
    })
    .await;
}

#[tokio::test]
async fn a_panicking_subchannel_worker_fails_calls_naming_the_panic() {
    within(async {
        let backends = fleet(1, Latency::None).await;
        // The endpoint maker runs in the worker, on every connection attempt.
        let channel = BalancedChannel::builder(&target(backends.iter().map(|b| b.addr())))
            .endpoint(|_| panic!("endpoint bug"))
            .build()
            .unwrap();
        let mut client = Client::new(channel.clone());
        // Without supervision the subchannel stays CONNECTING and this call queues.
        let status = client.empty_call(Empty {}).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("panicked: endpoint bug"),
            "{status:?}"
        );
    })
    .await;
}

/// A worker that panicked is replaced after the connection backoff: a panic once (here
/// in the application's endpoint function) does not take its backend away for good.
#[tokio::test]
async fn a_panicked_subchannel_worker_is_restarted_after_the_backoff() {
    within(async {
        let backends = fleet(1, Latency::None).await;
        let first = std::sync::atomic::AtomicBool::new(true);
        let channel = BalancedChannel::builder(&target(backends.iter().map(|b| b.addr())))
            .connection_backoff(fast_backoff())
            .endpoint(move |address| {
                if first.swap(false, std::sync::atomic::Ordering::Relaxed) {
                    panic!("endpoint bug, once");
                }
                tonic::transport::Endpoint::from_shared(format!("http://{}", address.addr))
                    .expect("a valid URI")
            })
            .build()
            .unwrap();
        let mut client = Client::new(channel.clone());
        let status = client.empty_call(Empty {}).await.unwrap_err();
        assert!(
            status.message().contains("endpoint bug, once"),
            "{status:?}"
        );
        // Wait-for-ready: queued until the new worker has connected.
        let request = wait_for_ready_call();
        client
            .unary_call(request)
            .await
            .expect("served once restarted");
        assert_eq!(channel.stats().endpoints[0].connections, 1);
    })
    .await;
}

#[tokio::test]
async fn a_panicking_token_source_fails_the_fetch_and_the_task_lives_on() {
    within(async {
        let backends = fleet(1, Latency::None).await;
        let channel = BalancedChannel::builder(&target(backends.iter().map(|b| b.addr())))
            // Plaintext loopback backends: tokens in cleartext are accepted here.
            .allow_credentials_without_tls(true)
            .build()
            .unwrap();
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let source = move || {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                match n {
                    0 => panic!("token source bug"),
                    // An OAuth server's expires_in, negative: already expired.
                    1 => Ok::<_, BoxError>(Token::expires_in_secs("old", -30)),
                    // Huge: saturates instead of overflowing the clock.
                    2 => Ok(Token::expires_in("forever", Duration::MAX)),
                    _ => Ok(Token::expires_in_secs("again", i64::MAX)),
                }
            }
        };
        let mut policy = RefreshPolicy::default();
        policy.retry_delay = Duration::ZERO;
        let layer = BearerLayer::with_policy(source, policy).unwrap();
        let mut client = TestServiceClient::new(layer.layer(channel));

        let status = client.empty_call(Empty {}).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(
            status.message().contains("panicked: token source bug"),
            "{status:?}"
        );
        let status = client.empty_call(Empty {}).await.unwrap_err();
        assert!(status.message().contains("already expired"), "{status:?}");
        // The task is alive: the next fetch gives a token that lasts.
        client.empty_call(Empty {}).await.expect("a token");
        client.empty_call(Empty {}).await.expect("the same token");
    })
    .await;
}
