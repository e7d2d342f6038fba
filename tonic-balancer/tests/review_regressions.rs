//! Regressions for failure modes found in review: a GOAWAY that leaves its connection
//! open, a response stream outliving its deadline, pick_first behind an ejection.

mod support;

use futures_util::StreamExt;
use std::time::Duration;
use support::*;
use tonic::Code;
use tonic_balancer::health::OutlierDetection;
use tonic_balancer::{BalancedChannel, ConnectivityState, Policy};
use tonic_balancer_testkit::pb::{ResponseParameters, StreamingOutputCallRequest};
use tonic_balancer_testkit::{Backend, Latency};

/// A stream of `n` messages, one every `every`.
fn slow_stream(n: usize, every: Duration) -> StreamingOutputCallRequest {
    StreamingOutputCallRequest {
        response_parameters: vec![
            ResponseParameters {
                size: 1,
                interval_us: every.as_micros() as i32,
            };
            n
        ],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_goaway_with_a_stream_still_open_takes_the_backend_out_without_failures() {
    within(async {
        let backends = fleet(2, Latency::None).await;
        let channel = BalancedChannel::builder(&target(backends.iter().map(|b| b.addr())))
            .connection_backoff(fast_backoff())
            .seed(0)
            .build()
            .unwrap();
        wait_ready(&channel, 2).await;
        let mut client = Client::new(channel.clone());

        // A long stream on b0 keeps its connection open through a graceful shutdown.
        let mut stream = loop {
            let stream = client
                // Longer than the test's own timeout: only noticing the GOAWAY ends the wait.
                .streaming_output_call(slow_stream(1000, Duration::from_millis(100)))
                .await
                .unwrap()
                .into_inner();
            if backends[0].in_flight() == 1 {
                break stream;
            }
        };
        stream.next().await.unwrap().unwrap();
        let draining = {
            let b0 = &backends[0];
            async move { b0.stop_gracefully(Duration::ZERO).await }
        };
        let calls = async {
            // b0 has sent GOAWAY but its socket stays up for the stream: it must stop
            // being picked, and no call may fail on the way.
            channel
                .wait_for(|subs| subs[0].state != ConnectivityState::Ready)
                .await;
            let mut failures = Vec::new();
            for _ in 0..50 {
                if let Err(status) = call(&mut client).await {
                    failures.push(status);
                }
            }
            drop(stream);
            failures
        };
        // The first call after the GOAWAY is what reveals it: make calls until then.
        let probe = async {
            let mut probe = Client::new(channel.clone());
            for _ in 0..200 {
                if channel.subchannels()[0].state != ConnectivityState::Ready {
                    break;
                }
                assert!(
                    call(&mut probe).await.is_ok(),
                    "a call failed on the GOAWAY"
                );
            }
        };
        let ((), failures, ()) = tokio::join!(draining, calls, probe);
        assert!(failures.is_empty(), "{failures:?}");
    })
    .await;
}

#[tokio::test]
async fn a_response_stream_ends_at_the_call_deadline() {
    within(async {
        let backend = Backend::start("b").await.unwrap();
        let channel = BalancedChannel::builder(&target([backend.addr()]))
            .build()
            .unwrap();
        wait_ready(&channel, 1).await;
        let mut request = tonic::Request::new(slow_stream(100, Duration::from_millis(20)));
        request.set_timeout(Duration::from_millis(200));
        let started = tokio::time::Instant::now();
        let mut stream = Client::new(channel)
            .streaming_output_call(request)
            .await
            .unwrap()
            .into_inner();
        let mut received = 0;
        let status = loop {
            match stream.next().await {
                Some(Ok(_)) => received += 1,
                Some(Err(status)) => break status,
                None => panic!("the stream ended without the deadline"),
            }
        };
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(received > 0 && received < 100, "{received}");
        assert!(started.elapsed() >= Duration::from_millis(200));
        // The stream was reset: the backend stops working on it.
        backend.wait_idle().await;
    })
    .await;
}

#[tokio::test]
async fn pick_first_fails_over_past_an_ejected_backend() {
    within(async {
        let backends = fleet(2, Latency::None).await;
        let mut outliers = OutlierDetection::default();
        outliers.interval = Duration::from_secs(60);
        let channel = BalancedChannel::builder(&target(backends.iter().map(|b| b.addr())))
            .policy(Policy::pick_first())
            .outlier_detection(outliers)
            .build()
            .unwrap();
        let mut client = Client::new(channel.clone());
        assert_eq!(call(&mut client).await.unwrap(), "b0");
        backends[0].set_failure(1.0, Code::Internal);
        for _ in 0..5 {
            assert_eq!(call(&mut client).await.unwrap_err().code(), Code::Internal);
        }
        // Five failures in a row eject b0 (the control task applies it); pick_first then
        // connects to b1 and moves on.
        channel
            .wait_for(|subs| {
                channel.stats().endpoints[0].ejected && subs[1].state == ConnectivityState::Ready
            })
            .await;
        let counts = shares(&mut client, 20).await;
        assert_eq!(counts.get("b1"), Some(&20), "{counts:?}");
    })
    .await;
}
