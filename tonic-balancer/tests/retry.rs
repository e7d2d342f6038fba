//! gRFC A6 retries and hedging, and deadlines, against real tonic servers on loopback.

mod support;

use std::time::Duration;
use support::*;
use tonic::Code;
use tonic_balancer::{BalancedChannel, deadline};
use tonic_balancer_testkit::pb::{EchoStatus, Payload, SimpleRequest, StreamingOutputCallRequest};
use tonic_balancer_testkit::{Backend, Latency};

/// A service config retrying UNAVAILABLE on every method of the test service.
fn retry_config(max_attempts: u32, initial_backoff: &str, extra: &str) -> String {
    format!(
        r#"{{"methodConfig": [{{"name": [{{"service": "grpc.testing.TestService"}}],
            "retryPolicy": {{"maxAttempts": {max_attempts}, "initialBackoff": "{initial_backoff}",
              "maxBackoff": "10s", "backoffMultiplier": 2,
              "retryableStatusCodes": ["UNAVAILABLE"]}}}}]{extra}}}"#
    )
}

async fn channel_to(backend: &Backend, config: &str) -> BalancedChannel {
    let channel = BalancedChannel::builder(&target([backend.addr()]))
        .service_config_json(config)
        .unwrap()
        .build()
        .unwrap();
    wait_ready(&channel, 1).await;
    channel
}

fn previous_attempts(backend: &Backend) -> Vec<Option<u32>> {
    backend.seen().iter().map(|s| s.previous_attempts).collect()
}

#[tokio::test]
async fn fails_then_succeeds_within_max_attempts() {
    within(async {
        let backend = Backend::start("b").await.unwrap();
        let mut client = Client::new(channel_to(&backend, &retry_config(3, "0.01s", "")).await);
        backend.fail_next(2, Code::Unavailable);
        assert_eq!(call(&mut client).await.unwrap(), "b");
        // grpc-previous-rpc-attempts: absent on the first, then 1, 2.
        assert_eq!(previous_attempts(&backend), [None, Some(1), Some(2)]);
    })
    .await;
}

#[tokio::test]
async fn attempts_are_capped_at_five() {
    within(async {
        let backend = Backend::start("b").await.unwrap();
        let mut client = Client::new(channel_to(&backend, &retry_config(7, "0.001s", "")).await);
        backend.fail_next(100, Code::Unavailable);
        let status = call(&mut client).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(backend.calls(), 5);
    })
    .await;
}

#[tokio::test]
async fn codes_not_listed_are_not_retried() {
    within(async {
        let backend = Backend::start("b").await.unwrap();
        let mut client = Client::new(channel_to(&backend, &retry_config(5, "0.01s", "")).await);
        backend.fail_next(1, Code::Internal);
        assert_eq!(call(&mut client).await.unwrap_err().code(), Code::Internal);
        assert_eq!(backend.calls(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_response_that_sent_headers_is_committed() {
    within(async {
        let backend = Backend::start("b").await.unwrap();
        let mut client = Client::new(channel_to(&backend, &retry_config(5, "0.01s", "")).await);
        // A stream whose headers go out before it ends with UNAVAILABLE.
        let request = StreamingOutputCallRequest {
            response_status: Some(EchoStatus {
                code: Code::Unavailable as i32,
                message: "after headers".into(),
            }),
            ..Default::default()
        };
        let mut stream = client
            .streaming_output_call(request)
            .await
            .unwrap()
            .into_inner();
        let status = stream.message().await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(backend.calls(), 1);
    })
    .await;
}

#[tokio::test]
async fn pushback_is_honoured_and_negative_pushback_stops() {
    within(async {
        let backend = Backend::start("b").await.unwrap();
        // A 10 s backoff: only the server's 200 ms pushback lets the retry fit the deadline.
        let mut client = Client::new(channel_to(&backend, &retry_config(3, "10s", "")).await);
        backend.set_pushback(Some("200"));
        backend.fail_next(1, Code::Unavailable);
        let mut request = tonic::Request::new(SimpleRequest {
            fill_server_id: true,
            ..Default::default()
        });
        request.set_timeout(Duration::from_secs(5));
        client.unary_call(request).await.unwrap();
        let seen = backend.seen();
        let gap = seen[1].received - seen[0].received;
        assert!(gap >= Duration::from_millis(200), "retried after {gap:?}");

        backend.set_pushback(Some("-1"));
        backend.fail_next(1, Code::Unavailable);
        assert_eq!(
            call(&mut client).await.unwrap_err().code(),
            Code::Unavailable
        );
        assert_eq!(backend.calls(), 3);
    })
    .await;
}

#[tokio::test]
async fn one_deadline_covers_every_attempt() {
    within(async {
        let backend = Backend::start("b").await.unwrap();
        let mut client = Client::new(channel_to(&backend, &retry_config(5, "0.1s", "")).await);
        backend.fail_next(1000, Code::Unavailable);
        let mut request = tonic::Request::new(SimpleRequest::default());
        request.set_timeout(Duration::from_millis(250));
        let started = tokio::time::Instant::now();
        let status = client.unary_call(request).await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        // Backoffs of ~100 ms then ~200 ms: the third attempt would start past 250 ms
        // unless both jitters are near their minimum.
        assert!(
            (2..=3).contains(&backend.calls()),
            "{} attempts",
            backend.calls()
        );
        assert!(started.elapsed() >= Duration::from_millis(250));
        // Every attempt carried only the time left.
        for seen in backend.seen() {
            assert!(seen.timeout.unwrap() <= Duration::from_millis(250));
        }
    })
    .await;
}

#[tokio::test]
async fn backoff_gaps_stay_within_twenty_percent() {
    within(async {
        let backend = Backend::start("b").await.unwrap();
        let mut client = Client::new(channel_to(&backend, &retry_config(5, "0.05s", "")).await);
        backend.fail_next(4, Code::Unavailable);
        call(&mut client).await.unwrap();
        let seen = backend.seen();
        assert_eq!(seen.len(), 5);
        for (n, pair) in seen.windows(2).enumerate() {
            let gap = (pair[1].received - pair[0].received).as_secs_f64();
            let base = 0.05 * 2f64.powi(n as i32);
            // The lower bound is exact; the upper allows for scheduling on a busy machine.
            assert!(gap >= base * 0.8 - 0.001, "gap {n}: {gap} < 0.8 × {base}");
            assert!(gap <= base * 1.2 + 0.05, "gap {n}: {gap} > 1.2 × {base}");
        }
    })
    .await;
}

#[tokio::test]
async fn throttling_stops_retries_after_a_streak_of_failures() {
    within(async {
        let backend = Backend::start("b").await.unwrap();
        let throttling = r#", "retryThrottling": {"maxTokens": 4, "tokenRatio": 0.1}"#;
        let mut client =
            Client::new(channel_to(&backend, &retry_config(5, "0.001s", throttling)).await);
        backend.fail_next(100, Code::Unavailable);
        let mut attempts = Vec::new();
        for _ in 0..4 {
            let before = backend.calls();
            assert_eq!(
                call(&mut client).await.unwrap_err().code(),
                Code::Unavailable
            );
            attempts.push(backend.calls() - before);
        }
        // gRFC A6's example: the first call gets 2 attempts, every later one 1.
        assert_eq!(attempts, [2, 1, 1, 1]);
    })
    .await;
}

#[tokio::test]
async fn a_body_past_the_replay_buffer_is_not_retried() {
    within(async {
        let backend = Backend::start("b").await.unwrap();
        let request = || SimpleRequest {
            payload: Some(Payload {
                body: vec![7; 1000],
                ..Default::default()
            }),
            ..Default::default()
        };
        let small = BalancedChannel::builder(&target([backend.addr()]))
            .service_config_json(&retry_config(3, "0.01s", ""))
            .unwrap()
            .retry_buffer_size(100)
            .build()
            .unwrap();
        backend.fail_next(1, Code::Unavailable);
        let status = Client::new(small).unary_call(request()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(backend.calls(), 1);

        // The same call with the default buffer is retried.
        let mut client = Client::new(channel_to(&backend, &retry_config(3, "0.01s", "")).await);
        backend.fail_next(1, Code::Unavailable);
        client.unary_call(request()).await.unwrap();
        assert_eq!(backend.calls(), 3);
    })
    .await;
}

const HEDGING: &str = r#"{"methodConfig": [{"name": [{"service": "grpc.testing.TestService"}],
    "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.05s",
      "nonFatalStatusCodes": ["UNAVAILABLE"]}}]}"#;

/// A slow and a fast backend; with seed 0 round robin sends the first attempt to the slow.
async fn hedged_pair() -> (Backend, Backend, Client) {
    let slow = Backend::builder("slow")
        .latency(Latency::Fixed(Duration::from_secs(5)))
        .start()
        .await
        .unwrap();
    let fast = Backend::start("fast").await.unwrap();
    let channel = BalancedChannel::builder(&target([slow.addr(), fast.addr()]))
        .service_config_json(HEDGING)
        .unwrap()
        .seed(0)
        .build()
        .unwrap();
    wait_ready(&channel, 2).await;
    (slow, fast, Client::new(channel))
}

#[tokio::test]
async fn a_hedge_wins_and_the_slow_attempt_is_cancelled() {
    within(async {
        let (slow, fast, mut client) = hedged_pair().await;
        let started = tokio::time::Instant::now();
        assert_eq!(call(&mut client).await.unwrap(), "fast");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(slow.calls(), 1);
        // The hedge went out after hedgingDelay, and says it is the second attempt.
        let hedge = &fast.seen()[0];
        assert_eq!(hedge.previous_attempts, Some(1));
        // The hedge timer starts with the call: the hedge cannot arrive sooner than
        // hedgingDelay after it (the two attempts' own travel times vary).
        assert!(hedge.received - started >= Duration::from_millis(50));
        // The losing attempt was reset: the slow backend stops working on it.
        slow.wait_idle().await;
        assert_eq!(slow.in_flight(), 0);
    })
    .await;
}

#[tokio::test]
async fn a_fatal_code_ends_a_hedged_call() {
    within(async {
        let (slow, fast, mut client) = hedged_pair().await;
        fast.fail_next(1, Code::Internal);
        assert_eq!(call(&mut client).await.unwrap_err().code(), Code::Internal);
        slow.wait_idle().await;
        // Nothing more was sent after the fatal answer.
        assert_eq!(slow.calls() + fast.calls(), 2);
    })
    .await;
}

#[tokio::test]
async fn a_non_fatal_failure_sends_the_next_hedge_at_once() {
    within(async {
        let backend = Backend::start("b").await.unwrap();
        let channel = channel_to(&backend, &HEDGING.replace("0.05s", "10s")).await;
        backend.fail_next(2, Code::Unavailable);
        // The hedging delay is 10 s, yet the call ends quickly: each UNAVAILABLE
        // triggers the next hedge immediately.
        let mut request = tonic::Request::new(SimpleRequest::default());
        request.set_timeout(Duration::from_secs(5));
        Client::new(channel).unary_call(request).await.unwrap();
        assert_eq!(previous_attempts(&backend), [None, Some(1), Some(2)]);
    })
    .await;
}

#[tokio::test]
async fn an_invalid_config_update_keeps_the_previous_config() {
    within(async {
        let backend = Backend::start("b").await.unwrap();
        let channel = channel_to(&backend, &retry_config(3, "0.01s", "")).await;
        let err = channel
            .update_service_config_json(&retry_config(1, "0.01s", ""))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("methodConfig[0].retryPolicy.maxAttempts"),
            "{err}"
        );
        backend.fail_next(2, Code::Unavailable);
        call(&mut Client::new(channel.clone())).await.unwrap();
        assert_eq!(backend.calls(), 3);

        // A valid update takes effect: no retry policy any more.
        channel.update_service_config_json("{}").unwrap();
        backend.fail_next(1, Code::Unavailable);
        assert_eq!(
            call(&mut Client::new(channel)).await.unwrap_err().code(),
            Code::Unavailable
        );
        assert_eq!(backend.calls(), 4);
    })
    .await;
}

#[tokio::test]
async fn method_timeout_and_inherited_deadline_bound_the_call() {
    within(async {
        let backend = Backend::builder("b")
            .latency(Latency::Fixed(Duration::from_secs(10)))
            .start()
            .await
            .unwrap();
        let config = r#"{"methodConfig": [{"name": [{}], "timeout": "0.2s"}]}"#;
        let channel = channel_to(&backend, config).await;
        let mut client = Client::new(channel);
        // The method's 200 ms beats the request's 5 s.
        let mut request = tonic::Request::new(SimpleRequest::default());
        request.set_timeout(Duration::from_secs(5));
        let status = client.unary_call(request).await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(backend.seen()[0].timeout.unwrap() <= Duration::from_millis(200));

        // An inherited deadline that has passed fails the call without sending it.
        let expired = tokio::time::Instant::now();
        let status = deadline::scope(expired, call(&mut client))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert_eq!(backend.calls(), 1);
    })
    .await;
}

#[tokio::test]
async fn message_size_limits_from_the_service_config_are_enforced() {
    within(async {
        let backend = Backend::start("b").await.unwrap();
        let config = r#"{"methodConfig": [{"name": [{}],
            "maxRequestMessageBytes": 1000, "maxResponseMessageBytes": 1000}]}"#;
        let mut client = Client::new(channel_to(&backend, config).await);
        let with = |request_bytes: usize, response_size: i32| SimpleRequest {
            payload: Some(Payload {
                body: vec![1; request_bytes],
                ..Default::default()
            }),
            response_size,
            ..Default::default()
        };
        client.unary_call(with(500, 500)).await.unwrap();

        let status = client.unary_call(with(2000, 0)).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("request message"),
            "{}",
            status.message()
        );

        let status = client.unary_call(with(10, 2000)).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("response message"),
            "{}",
            status.message()
        );
    })
    .await;
}
