//! Retries from a service config: a flaky backend, and what each call took.
//!
//! Run with `cargo run --example retry`.

use std::time::Duration;
use tokio::time::Instant;
use tonic::Code;
use tonic_balancer::BalancedChannel;
use tonic_balancer_testkit::Backend;
use tonic_balancer_testkit::pb::SimpleRequest;
use tonic_balancer_testkit::pb::test_service_client::TestServiceClient;

const SERVICE_CONFIG: &str = r#"{
  "methodConfig": [{
    "name": [{"service": "grpc.testing.TestService"}],
    "timeout": "2s",
    "retryPolicy": {
      "maxAttempts": 4,
      "initialBackoff": "0.05s",
      "maxBackoff": "1s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }],
  "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}
}"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backend = Backend::builder("flaky").start().await?;
    let channel = BalancedChannel::builder(&format!("ipv4:{}", backend.addr()))
        .service_config_json(SERVICE_CONFIG)?
        .build()?;
    let mut client = TestServiceClient::new(channel);

    println!("retryPolicy: up to 4 attempts on UNAVAILABLE, backoff 50 ms × 2 (±20 %)");
    for (failures, code) in [
        (0, Code::Unavailable),
        (2, Code::Unavailable),
        (5, Code::Unavailable),
        (1, Code::InvalidArgument),
    ] {
        backend.fail_next(failures, code);
        let before = backend.calls();
        let started = Instant::now();
        let outcome = client.unary_call(SimpleRequest::default()).await;
        let attempts = backend.calls() - before;
        let result = match outcome {
            Ok(_) => "OK".to_owned(),
            Err(status) => format!("{:?}", status.code()),
        };
        println!(
            "backend fails next {failures} with {code:?}: {result} after {attempts} attempt(s) in {:?}",
            round(started.elapsed())
        );
        backend.fail_next(0, Code::Ok);
    }
    let previous: Vec<_> = backend.seen().iter().map(|s| s.previous_attempts).collect();
    println!("grpc-previous-rpc-attempts seen by the backend: {previous:?}");
    Ok(())
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}
