//! Every `Duration` a user can set, at its extremes (zero and `Duration::MAX`): refused
//! by `build()` (or the parser) with an error naming it, or working, never a panic in a
//! call or in a background task. A panic in a background task would show here as
//! calls failing with "panicked" (the tasks are supervised, `tests/supervision.rs`).

// Some imports serve only the DNS tests.
#![cfg_attr(not(feature = "dns"), allow(unused_imports))]

mod support;

use std::time::Duration;
use support::*;
use tonic::Code;
use tonic_balancer::config::{
    HedgingPolicy, MethodConfig, MethodPattern, RetryPolicy, ServiceConfig,
};
use tonic_balancer::credentials::{BearerLayer, RefreshPolicy, Token};
use tonic_balancer::health::OutlierDetection;
#[cfg(feature = "dns")]
use tonic_balancer::resolver::DnsOptions;
use tonic_balancer::retry::RetryBudget;
use tonic_balancer::{BalancedChannel, ConnectionBackoff, Policy, WaitForReady};
#[cfg(feature = "dns")]
use tonic_balancer_testkit::dns::DnsServer;
use tonic_balancer_testkit::pb::SimpleRequest;
use tonic_balancer_testkit::pb::test_service_client::TestServiceClient;
use tonic_balancer_testkit::{Backend, Latency};
use tower::{BoxError, Layer};

const MAX: Duration = Duration::MAX;
const ZERO: Duration = Duration::ZERO;

fn refused(builder: tonic_balancer::Builder, setting: &str) {
    let error = builder.build().expect_err(setting).to_string();
    assert!(error.contains(setting), "{setting}: {error}");
}

fn base() -> tonic_balancer::Builder {
    BalancedChannel::builder("ipv4:127.0.0.1:1")
}

fn method(config: MethodConfig) -> ServiceConfig {
    let mut method = config;
    method.names = vec![MethodPattern::default_all()];
    let mut service = ServiceConfig::default();
    service.method_configs = vec![method];
    service
}

#[tokio::test]
async fn durations_out_of_range_are_refused_naming_the_setting() {
    let backoff = |f: fn(&mut ConnectionBackoff)| {
        let mut b = ConnectionBackoff::default();
        f(&mut b);
        base().connection_backoff(b)
    };
    refused(
        backoff(|b| b.base_delay = ZERO),
        "connection_backoff.base_delay",
    );
    refused(
        backoff(|b| b.min_connect_timeout = ZERO),
        "connection_backoff.min_connect_timeout",
    );

    let outliers = |f: fn(&mut OutlierDetection)| {
        let mut o = OutlierDetection::default();
        f(&mut o);
        base().outlier_detection(o)
    };
    refused(
        outliers(|o| o.interval = ZERO),
        "outlier_detection.interval",
    );
    refused(
        outliers(|o| o.base_ejection_time = ZERO),
        "outlier_detection.base_ejection_time",
    );

    #[cfg(feature = "dns")]
    {
        let dns = |f: fn(&mut DnsOptions)| {
            let mut d = DnsOptions::default();
            f(&mut d);
            BalancedChannel::builder("dns://127.0.0.1:1/x.test:1").dns_options(d)
        };
        refused(dns(|d| d.min_refresh = ZERO), "dns_options.min_refresh");
        refused(
            dns(|d| d.retry_base_delay = ZERO),
            "dns_options.retry_base_delay",
        );
        refused(
            dns(|d| d.query_timeout = Some(ZERO)),
            "dns_options.query_timeout",
        );
        refused(
            dns(|d| d.query_timeout = Some(MAX)),
            "dns_options.query_timeout",
        );
    }

    refused(
        base().policy(Policy::peak_ewma().decay(ZERO)),
        "policy.peak_ewma.decay",
    );
    for ttl in [ZERO, MAX] {
        let mut budget = RetryBudget::default();
        budget.ttl = ttl;
        refused(base().retry_budget(budget), "retry_budget.ttl");
    }

    let mut policy = RefreshPolicy::default();
    policy.fetch_timeout = ZERO;
    let source = || async { Ok::<_, BoxError>(Token::without_expiry("t")) };
    let error = BearerLayer::with_policy(source, policy)
        .unwrap_err()
        .to_string();
    assert!(error.contains("refresh_policy.fetch_timeout"), "{error}");

    // A service config built in code can hold any Duration; JSON stops at proto3's
    // 10,000 years, and so does validation.
    let mut timeout = MethodConfig::default();
    timeout.timeout = Some(MAX);
    refused(
        base().service_config(method(timeout)),
        "methodConfig[0].timeout",
    );
    // "0s" is valid, as in grpc-go and C-core: every call fails at once.
    let mut zero = MethodConfig::default();
    zero.timeout = Some(ZERO);
    base()
        .service_config(method(zero))
        .build()
        .expect("a zero timeout is valid");
    let mut retry = MethodConfig::default();
    retry.retry_policy = Some(RetryPolicy::new(3, MAX, MAX, 2.0, vec![Code::Unavailable]));
    refused(
        base().service_config(method(retry)),
        "retryPolicy.initialBackoff",
    );
    let mut hedging = MethodConfig::default();
    let mut policy = HedgingPolicy::new(3);
    policy.hedging_delay = MAX;
    hedging.hedging_policy = Some(policy);
    refused(
        base().service_config(method(hedging)),
        "hedgingPolicy.hedgingDelay",
    );
    let json = r#"{"methodConfig": [{"name": [{}], "timeout": "315576000001s"}]}"#;
    let error = base().service_config_json(json).unwrap_err().to_string();
    assert!(error.contains("methodConfig[0].timeout"), "{error}");
}

#[tokio::test]
async fn connection_and_outlier_durations_at_max_work() {
    within(async {
        let backends = fleet(2, Latency::None).await;
        backends[0].set_failure(1.0, Code::Unavailable);
        let mut backoff = ConnectionBackoff::default();
        backoff.base_delay = MAX;
        backoff.max_delay = MAX;
        backoff.min_connect_timeout = MAX;
        let mut outliers = OutlierDetection::default();
        outliers.interval = MAX;
        outliers.base_ejection_time = MAX;
        outliers.max_ejection_time = MAX;
        outliers.consecutive_failures = 1;
        outliers.max_ejection_percent = 100;
        let addrs = [backends[0].addr(), backends[1].addr(), refused_addr()];
        let channel = BalancedChannel::builder(&target(addrs))
            .connection_backoff(backoff)
            .outlier_detection(outliers)
            .build()
            .unwrap();
        wait_ready(&channel, 2).await;
        let mut client = Client::new(channel.clone());
        // The failing backend's first failure ejects it for "ever" (saturated).
        let mut failures = 0;
        for _ in 0..20 {
            match call(&mut client).await {
                Ok(id) => assert_eq!(id, "b1"),
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    assert!(!status.message().contains("panicked"), "{status:?}");
                    failures += 1;
                }
            }
        }
        channel
            .wait_for(|_| channel.stats().endpoints.iter().any(|e| e.ejected))
            .await;
        assert!(failures >= 1);
        for _ in 0..10 {
            assert_eq!(call(&mut client).await.unwrap(), "b1");
        }
    })
    .await;
}

#[tokio::test]
async fn peak_ewma_durations_at_the_extremes_work() {
    within(async {
        let backends = fleet(2, Latency::None).await;
        for (decay, rtt) in [(MAX, MAX), (MAX, ZERO), (Duration::from_nanos(1), ZERO)] {
            let channel = BalancedChannel::builder(&target(backends.iter().map(|b| b.addr())))
                .policy(Policy::peak_ewma().decay(decay).default_rtt(rtt))
                .build()
                .unwrap();
            wait_ready(&channel, 2).await;
            let mut client = Client::new(channel.clone());
            for _ in 0..10 {
                call(&mut client).await.expect("call");
            }
            assert!(channel.stats().endpoints.iter().all(|e| e.rtt.is_some()));
        }
    })
    .await;
}

#[cfg(feature = "dns")]
#[tokio::test]
async fn dns_durations_at_max_and_zero_work() {
    within(async {
        let backend = Backend::start("b0").await.unwrap();
        let dns = DnsServer::start().await.unwrap();
        dns.set_addrs("svc.test", [backend.addr().ip()], Duration::from_secs(1));
        let mut options = DnsOptions::default();
        options.min_refresh = MAX;
        options.max_refresh = MAX;
        options.min_re_resolve_interval = ZERO;
        options.retry_base_delay = MAX;
        options.retry_max_delay = MAX;
        let name = format!("dns://{}/svc.test:{}", dns.addr(), backend.addr().port());
        let channel = BalancedChannel::builder(&name)
            .dns_options(options.clone())
            .connection_backoff(fast_backoff())
            .build()
            .unwrap();
        let mut client = Client::new(channel.clone());
        call(&mut client).await.expect("first call");
        // A lost connection asks for a lookup at once (interval 0); the next is due "never".
        let queries = dns.queries();
        backend.kill().await;
        backend.restart().await.unwrap();
        let mut request = tonic::Request::new(SimpleRequest::default());
        request.extensions_mut().insert(WaitForReady(true));
        client
            .unary_call(request)
            .await
            .expect("call after the restart");
        assert!(dns.queries() > queries);

        // The re-resolve rate limit at MAX: the lost connection's lookup is due "never".
        options.min_re_resolve_interval = MAX;
        let channel = BalancedChannel::builder(&name)
            .dns_options(options)
            .connection_backoff(fast_backoff())
            .build()
            .unwrap();
        let mut client = Client::new(channel.clone());
        call(&mut client).await.expect("first call");
        backend.kill().await;
        backend.restart().await.unwrap();
        let mut request = tonic::Request::new(SimpleRequest::default());
        request.extensions_mut().insert(WaitForReady(true));
        client
            .unary_call(request)
            .await
            .expect("call after the restart");
    })
    .await;
}

#[tokio::test]
async fn credential_durations_at_max_and_zero_work() {
    within(async {
        let backends = fleet(1, Latency::None).await;
        for (before_expiry, fetch_timeout, retry_delay) in [
            (MAX, MAX, MAX),
            (ZERO, Duration::from_nanos(1) * 1_000_000_000, ZERO),
        ] {
            let channel = BalancedChannel::builder(&target([backends[0].addr()]))
                // Plaintext loopback backends: tokens in cleartext are accepted here.
                .allow_credentials_without_tls(true)
                .build()
                .unwrap();
            let mut policy = RefreshPolicy::default();
            policy.before_expiry = before_expiry;
            policy.fetch_timeout = fetch_timeout;
            policy.retry_delay = retry_delay;
            let source = || async { Ok::<_, BoxError>(Token::expires_in("t", MAX)) };
            let layer = BearerLayer::with_policy(source, policy).unwrap();
            let mut client = TestServiceClient::new(layer.layer(channel));
            for _ in 0..3 {
                client
                    .unary_call(SimpleRequest::default())
                    .await
                    .expect("call with a token");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_resolver_update_is_cut_at_the_address_limit() {
    within(async {
        let backends = fleet(1, Latency::None).await;
        let limit = tonic_balancer::defaults::MAX_ADDRESSES;
        // The real backend first, then far more addresses than the limit (pick_first:
        // only the first is connected, so the others cost a subchannel each, no socket).
        let addrs = std::iter::once(backends[0].addr()).chain((0..limit as u32 + 500).map(|i| {
            let [a, b, c, d] = (0x7f00_0002 + i).to_be_bytes();
            std::net::SocketAddr::from(([a, b, c, d], 9))
        }));
        let (resolver, handle) = tonic_balancer::resolver::Manual::new();
        handle.update(addrs);
        let channel = BalancedChannel::builder_with_resolver(resolver)
            .policy(Policy::pick_first())
            .build()
            .unwrap();
        let mut client = Client::new(channel.clone());
        call(&mut client).await.expect("call to the first address");
        assert_eq!(channel.subchannels().len(), limit);
    })
    .await;
}
