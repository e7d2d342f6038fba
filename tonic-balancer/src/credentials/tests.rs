//! The layer over a service that echoes the `authorization` header it got, with time
//! paused: the refresh schedule is checked to the millisecond.

use super::*;
use http::HeaderValue;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::watch;
use tonic::{Code, Status};
use tower::{Layer, ServiceExt};

type Echo = tower::util::ServiceFn<
    fn(http::Request<()>) -> std::future::Ready<Result<Option<HeaderValue>, Infallible>>,
>;

/// A service that answers each request with its `authorization` header.
fn echo() -> Echo {
    tower::service_fn(|request: http::Request<()>| {
        std::future::ready(Ok(request
            .headers()
            .get(http::header::AUTHORIZATION)
            .cloned()))
    })
}

/// One call; the header the inner service saw, or the status the call failed with.
async fn call(service: &Bearer<Echo>) -> Result<HeaderValue, Status> {
    call_with(service, http::Request::new(())).await
}

async fn call_with(
    service: &Bearer<Echo>,
    request: http::Request<()>,
) -> Result<HeaderValue, Status> {
    match service.clone().oneshot(request).await {
        Ok(header) => Ok(header.expect("no authorization header")),
        Err(error) => Err(*error.downcast::<Status>().expect("not a Status")),
    }
}

/// A token source whose n-th fetch (from 1) answers `plan(n)`; counts fetches.
fn source<F>(plan: F) -> (impl TokenSource, watch::Receiver<usize>)
where
    F: Fn(usize) -> Result<Token, String> + Send + Sync + 'static,
{
    let (count, fetches) = watch::channel(0);
    let next = AtomicUsize::new(0);
    let source = move || {
        let n = next.fetch_add(1, Ordering::SeqCst) + 1;
        let answer = plan(n);
        count.send_replace(n);
        async move { answer.map_err(BoxError::from) }
    };
    (source, fetches)
}

fn hundred_seconds(n: usize) -> Result<Token, String> {
    Ok(Token::expires_in(
        format!("tok-{n}"),
        Duration::from_secs(100),
    ))
}

#[tokio::test(start_paused = true)]
async fn every_call_carries_the_token_marked_sensitive() {
    let (source, fetches) = source(hundred_seconds);
    let service = BearerLayer::new(source).layer(echo());
    for _ in 0..3 {
        let header = call(&service).await.unwrap();
        assert_eq!(header, "Bearer tok-1");
        assert!(header.is_sensitive());
    }
    assert_eq!(*fetches.borrow(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_token_is_refreshed_in_the_background_before_it_expires() {
    let (source, mut fetches) = source(hundred_seconds);
    let service = BearerLayer::new(source).layer(echo());
    let start = Instant::now();
    assert_eq!(call(&service).await.unwrap(), "Bearer tok-1");
    // No call asks for it: the task refreshes at 80 % of the lifetime, on its own.
    fetches.wait_for(|&n| n == 2).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(80));
    assert_eq!(call(&service).await.unwrap(), "Bearer tok-2");
    // And again 80 s after that.
    fetches.wait_for(|&n| n == 3).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(160));
}

#[test]
fn refresh_time_follows_the_fraction_the_margin_and_the_floor() {
    let policy = RefreshPolicy::default(); // 0.8, 10 s before expiry, retry 1 s
    let t0 = Instant::now();
    let at = |life: f64| {
        policy
            .refresh_at(t0, t0 + Duration::from_secs_f64(life))
            .duration_since(t0)
            .as_secs_f64()
    };
    assert_eq!(at(3600.0), 2880.0); // 80 %
    assert_eq!(at(30.0), 20.0); // 10 s before expiry comes first
    assert_eq!(at(12.0), 6.0); // but never before half the lifetime
    assert_eq!(at(0.5), 0.5); // and never sooner than retry_delay (capped at expiry)
    let mut early = policy.clone();
    early.lifetime_fraction = 0.25;
    assert_eq!(
        early
            .refresh_at(t0, t0 + Duration::from_secs(100))
            .duration_since(t0),
        Duration::from_secs(25)
    );
}

#[tokio::test(start_paused = true)]
async fn concurrent_calls_share_one_fetch() {
    let (gate_tx, gate) = watch::channel(false);
    let (count, mut fetches) = watch::channel(0usize);
    let source = move || {
        count.send_modify(|n| *n += 1);
        let mut gate = gate.clone();
        async move {
            let _ = gate.wait_for(|open| *open).await;
            Ok::<_, BoxError>(Token::expires_in("shared", Duration::from_secs(100)))
        }
    };
    let service = BearerLayer::new(source).layer(echo());
    let calls = futures_util::future::join_all((0..20).map(|_| call(&service)));
    let release = async {
        // Every call has found no token and waits by the time the task fetches.
        fetches.wait_for(|&n| n == 1).await.unwrap();
        gate_tx.send_replace(true);
    };
    let (results, ()) = tokio::join!(calls, release);
    for result in results {
        assert_eq!(result.unwrap(), "Bearer shared");
    }
    assert_eq!(*fetches.borrow(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_fetch_is_unauthenticated_at_once_and_not_retried_by_every_call() {
    let (source, fetches) = source(|_| Err("identity provider is down".to_owned()));
    let service = BearerLayer::new(source).layer(echo());
    let start = Instant::now();
    let status = call(&service).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("identity provider is down"),
        "{status:?}"
    );
    assert_eq!(start.elapsed(), Duration::ZERO, "waited");
    // Within retry_delay: the same answer, without asking the source again.
    let again = call(&service).await.unwrap_err();
    assert_eq!(again.message(), status.message());
    assert_eq!(*fetches.borrow(), 1);
    // After it, a call asks again.
    tokio::time::advance(DEFAULT_RETRY_DELAY).await;
    assert_eq!(
        call(&service).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(*fetches.borrow(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_source_that_hangs_is_bounded_by_the_fetch_timeout() {
    let hang = || std::future::pending::<Result<Token, BoxError>>();
    let policy = RefreshPolicy {
        fetch_timeout: Duration::from_secs(5),
        ..RefreshPolicy::default()
    };
    let service = BearerLayer::with_policy(hang, policy)
        .unwrap()
        .layer(echo());
    let start = Instant::now();
    let status = call(&service).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("5s"), "{status:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn the_call_deadline_bounds_the_wait_too() {
    let hang = || std::future::pending::<Result<Token, BoxError>>();
    let service = BearerLayer::new(hang).layer(echo());
    let mut request = http::Request::new(());
    request
        .headers_mut()
        .insert("grpc-timeout", HeaderValue::from_static("100m"));
    let start = Instant::now();
    let status = call_with(&service, request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(start.elapsed(), Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_keeps_the_valid_token_and_is_retried() {
    let (source, mut fetches) = source(|n| match n {
        2 => Err("refresh failed".to_owned()),
        n => hundred_seconds(n),
    });
    let service = BearerLayer::new(source).layer(echo());
    let start = Instant::now();
    assert_eq!(call(&service).await.unwrap(), "Bearer tok-1");
    fetches.wait_for(|&n| n == 2).await.unwrap();
    // The refresh failed; tok-1 still has 20 s to live and is used.
    assert_eq!(call(&service).await.unwrap(), "Bearer tok-1");
    fetches.wait_for(|&n| n == 3).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(81));
    assert_eq!(call(&service).await.unwrap(), "Bearer tok-3");
}

#[tokio::test(start_paused = true)]
async fn an_expired_or_malformed_token_is_a_failure_that_does_not_echo_it() {
    let (source, _) = source(|n| match n {
        1 => Ok(Token::new("stale", Instant::now())),
        _ => Ok(Token::without_expiry("secret\nvalue")),
    });
    let service = BearerLayer::new(source).layer(echo());
    let expired = call(&service).await.unwrap_err();
    assert!(expired.message().contains("already expired"), "{expired:?}");
    tokio::time::advance(DEFAULT_RETRY_DELAY).await;
    let malformed = call(&service).await.unwrap_err();
    assert_eq!(malformed.code(), Code::Unauthenticated);
    assert!(malformed.message().contains("not a valid header value"));
    assert!(!malformed.message().contains("secret"), "{malformed:?}");
}

#[tokio::test(start_paused = true)]
async fn a_token_without_expiry_is_fetched_once() {
    let (source, fetches) = source(|n| Ok(Token::without_expiry(format!("forever-{n}"))));
    let service = BearerLayer::new(source).layer(echo());
    assert_eq!(call(&service).await.unwrap(), "Bearer forever-1");
    tokio::time::advance(Duration::from_secs(365 * 24 * 3600)).await;
    assert_eq!(call(&service).await.unwrap(), "Bearer forever-1");
    assert_eq!(*fetches.borrow(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_task_stops_when_the_layer_and_its_services_are_gone() {
    // The source owns a sender; the task owns the source.
    let (alive, mut gone) = tokio::sync::mpsc::channel::<()>(1);
    let source = move || {
        let _owned = &alive;
        std::future::ready(Ok::<_, BoxError>(Token::expires_in(
            "t",
            Duration::from_secs(100),
        )))
    };
    let layer = BearerLayer::new(source);
    let service = layer.layer(echo());
    call(&service).await.unwrap();
    drop(layer);
    drop(service);
    assert!(gone.recv().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn debug_output_never_shows_the_token() {
    let (source, _) = source(|_| Ok(Token::without_expiry("s3cr3t-value")));
    let layer = BearerLayer::new(source);
    let service = layer.layer(echo());
    call(&service).await.unwrap();
    let token = Token::without_expiry("s3cr3t-value");
    let header = call(&service).await.unwrap();
    for text in [
        format!("{token:?}"),
        format!("{layer:?}"),
        format!("{service:?}"),
        format!("{header:?}"),
    ] {
        assert!(!text.contains("s3cr3t"), "{text}");
    }
    assert!(format!("{layer:?}").contains("fetches: 1"));
}

#[test]
fn policies_out_of_range_are_rejected_with_their_field() {
    let source = || std::future::pending::<Result<Token, BoxError>>();
    for (fraction, timeout) in [(0.0, 1), (1.5, 1), (f64::NAN, 1), (0.5, 0)] {
        let policy = RefreshPolicy {
            lifetime_fraction: fraction,
            fetch_timeout: Duration::from_secs(timeout),
            ..RefreshPolicy::default()
        };
        let error = BearerLayer::with_policy(source, policy).unwrap_err();
        assert_eq!(error.kind(), crate::ErrorKind::InvalidConfig);
        assert!(error.to_string().starts_with("refresh_policy."), "{error}");
    }
}

#[tokio::test(start_paused = true)]
async fn refresh_policy_and_token_durations_at_max_saturate() {
    let (source, fetches) = source(|n| match n {
        1 => Err("identity provider down".to_owned()),
        _ => Ok(Token::expires_in("forever", Duration::MAX)),
    });
    let policy = RefreshPolicy {
        before_expiry: Duration::MAX,
        fetch_timeout: Duration::MAX,
        retry_delay: Duration::MAX,
        ..RefreshPolicy::default()
    };
    let service = BearerLayer::with_policy(source, policy)
        .unwrap()
        .layer(echo());
    // The failure holds for retry_delay ("never" ends): later calls fail at once.
    assert!(call(&service).await.is_err());
    tokio::time::advance(Duration::from_secs(86_400 * 365)).await;
    let status = call(&service).await.unwrap_err();
    assert!(
        status.message().contains("identity provider down"),
        "{status:?}"
    );
    assert_eq!(*fetches.borrow(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_token_that_lives_for_ever_is_never_refreshed() {
    let (source, fetches) = source(|n| Ok(Token::expires_in_secs(format!("tok-{n}"), i64::MAX)));
    let service = BearerLayer::new(source).layer(echo());
    assert_eq!(call(&service).await.unwrap(), "Bearer tok-1");
    tokio::time::advance(Duration::from_secs(86_400 * 365 * 10)).await;
    assert_eq!(call(&service).await.unwrap(), "Bearer tok-1");
    assert_eq!(*fetches.borrow(), 1);
}
