//! The targets tonic users write (`http://host:port`) and Unix sockets, and start-up
//! habits: waiting for the first READY backend, a default timeout, an attempts cap.

mod support;

use std::time::Duration;
use support::*;
use tonic::Code;
use tonic_balancer::{BalancedChannel, ErrorKind};
use tonic_balancer_testkit::{Backend, Latency};

#[tokio::test]
async fn an_http_target_with_an_ip_reaches_the_backend() {
    within(async {
        let backend = Backend::start("b").await.unwrap();
        let channel = BalancedChannel::builder(&format!("http://{}", backend.addr()))
            .build()
            .unwrap();
        assert_eq!(call(&mut Client::new(channel)).await.unwrap(), "b");
    })
    .await;
}

/// A host name in an `http://` target is looked up as tonic users expect (hosts file
/// included): `localhost` reaches the backend on 127.0.0.1.
#[cfg(feature = "dns")]
#[tokio::test]
async fn an_http_target_with_a_host_name_is_resolved() {
    within(async {
        let backend = Backend::start("b").await.unwrap();
        let port = backend.addr().port();
        let channel = BalancedChannel::builder(&format!("http://localhost:{port}/"))
            .connection_backoff(fast_backoff())
            .build()
            .unwrap();
        channel.ready(Duration::from_secs(30)).await.unwrap();
        assert_eq!(call(&mut Client::new(channel)).await.unwrap(), "b");
    })
    .await;
}

/// Serves a backend on a Unix socket at `path`: each Unix connection is relayed to the
/// backend's TCP port, byte for byte.
#[cfg(unix)]
fn unix_front(path: &std::path::Path, backend: &Backend) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let addr = backend.addr();
    tokio::spawn(async move {
        while let Ok((mut unix, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut unix, &mut tcp).await;
            });
        }
    })
}

#[cfg(unix)]
fn socket_path(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("tb-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// `unix:/abs/path` and `unix:///abs/path` (grpc naming doc) connect to the socket.
#[cfg(unix)]
#[tokio::test]
async fn unix_targets_connect_to_the_socket() {
    within(async {
        let backend = Backend::start("b").await.unwrap();
        for (name, form) in [("one", "unix:"), ("three", "unix://")] {
            let path = socket_path(name);
            let front = unix_front(&path, &backend);
            let target = format!("{form}{}", path.display());
            let channel = BalancedChannel::builder(&target).build().unwrap();
            assert_eq!(call(&mut Client::new(channel.clone())).await.unwrap(), "b");
            let subchannels = channel.subchannels();
            assert_eq!(
                subchannels[0].address.to_string(),
                format!("unix:{}", path.display())
            );
            front.abort();
            let _ = std::fs::remove_file(&path);
        }
        // Nothing listening: a clear UNAVAILABLE naming the socket.
        let path = socket_path("absent");
        let channel = BalancedChannel::builder(&format!("unix:{}", path.display()))
            .build()
            .unwrap();
        let status = call(&mut Client::new(channel)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains(&path.display().to_string()),
            "{status:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn ready_waits_for_the_first_ready_backend() {
    within(async {
        let backend = Backend::start("b").await.unwrap();
        let channel = BalancedChannel::builder(&target([refused_addr(), backend.addr()]))
            .connection_backoff(fast_backoff())
            .connect(Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(channel.state(), tonic_balancer::ConnectivityState::Ready);
        assert_eq!(call(&mut Client::new(channel)).await.unwrap(), "b");
    })
    .await;
}

/// With no backend reachable, `ready` ends at its timeout with an error naming the
/// target and the last connection error. Paused time: the timeout is tokio's.
#[tokio::test(start_paused = true)]
async fn ready_times_out_with_a_clear_error() {
    let addr = refused_addr();
    let target = target([addr]);
    let channel = BalancedChannel::builder(&target)
        .connection_backoff(fast_backoff())
        .build()
        .unwrap();
    let error = channel.ready(Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotReady);
    let message = error.to_string();
    assert!(message.contains(&target), "{message}");
    assert!(message.contains("after 5s"), "{message}");
    assert!(message.contains(&addr.to_string()), "{message}");
}

/// A call with no deadline of its own gets the builder's default timeout; a call with
/// one keeps it.
#[tokio::test]
async fn the_default_timeout_bounds_calls_without_a_deadline() {
    within(async {
        let slow = Backend::builder("slow")
            .latency(Latency::Fixed(Duration::from_secs(3600)))
            .start()
            .await
            .unwrap();
        let channel = BalancedChannel::builder(&target([slow.addr()]))
            .default_timeout(Duration::from_millis(50))
            .build()
            .unwrap();
        let status = call(&mut Client::new(channel.clone())).await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        // The server was told the deadline.
        let seen = slow.seen();
        assert!(
            seen.iter()
                .all(|s| s.timeout.is_some_and(|t| t <= Duration::from_millis(50)))
        );

        // A method config's timeout is the call's deadline: the default does not apply.
        let fast = Backend::start("fast").await.unwrap();
        let json = r#"{"methodConfig": [{"name": [{}], "timeout": "30s"}]}"#;
        let channel = BalancedChannel::builder(&target([fast.addr()]))
            .default_timeout(Duration::from_millis(50))
            .service_config_json(json)
            .unwrap()
            .build()
            .unwrap();
        call(&mut Client::new(channel)).await.unwrap();
        let timeout = fast.seen()[0].timeout.unwrap();
        assert!(timeout > Duration::from_secs(1), "{timeout:?}");

        let zero = BalancedChannel::builder(&target([fast.addr()]))
            .default_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(zero.kind(), ErrorKind::InvalidConfig);
    })
    .await;
}

/// `max_call_attempts` caps the retry policy's attempts (grpc-go's
/// `WithMaxCallAttempts`); 1 turns retries off.
#[tokio::test]
async fn max_call_attempts_caps_retries() {
    within(async {
        let backend = Backend::start("b").await.unwrap();
        let json = r#"{"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 5,
            "initialBackoff": "0.01s", "maxBackoff": "0.01s", "backoffMultiplier": 1,
            "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#;
        for (cap, calls) in [(2, 2), (1, 1), (5, 5)] {
            let channel = BalancedChannel::builder(&target([backend.addr()]))
                .max_call_attempts(cap)
                .service_config_json(json)
                .unwrap()
                .build()
                .unwrap();
            let before = backend.calls();
            backend.fail_next(10, Code::Unavailable);
            let status = call(&mut Client::new(channel)).await.unwrap_err();
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            assert_eq!(backend.calls() - before, calls, "cap {cap}");
            backend.fail_next(0, Code::Ok);
        }
        for bad in [0, 6] {
            let error = BalancedChannel::builder(&target([backend.addr()]))
                .max_call_attempts(bad)
                .build()
                .unwrap_err();
            assert_eq!(error.kind(), ErrorKind::InvalidConfig, "{bad}");
        }
    })
    .await;
}

/// Without the `tls` feature an `https://` target is refused, saying what to enable.
#[cfg(not(feature = "tls"))]
#[tokio::test]
async fn an_https_target_without_the_tls_feature_says_which_feature() {
    let error = BalancedChannel::builder("https://127.0.0.1:443")
        .build()
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::UnsupportedTarget);
    assert!(error.to_string().contains("`tls` feature"), "{error}");
}

/// With `tls` but no roots feature, an `https://` target needs `Builder::tls`.
#[cfg(all(
    feature = "tls",
    not(any(feature = "tls-native-roots", feature = "tls-webpki-roots"))
))]
#[tokio::test]
async fn an_https_target_without_roots_says_which_feature() {
    let error = BalancedChannel::builder("https://127.0.0.1:443")
        .build()
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidConfig);
    assert!(error.to_string().contains("tls-native-roots"), "{error}");
}
