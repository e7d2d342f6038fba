//! The attempt driver as a unit: a channel over the scripted transport
//! (`subchannel::scripted`), whose server answers each stream as the test's script says,
//! under paused time. Times are exact here (the clock only moves when every task
//! waits on a timer), so backoffs, pushback, hedging delays and deadlines are checked
//! to the millisecond, and the server's log says what each attempt carried.

use crate::BalancedChannel;
use crate::subchannel::scripted;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::DuplexStream;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tonic::Code;
use tonic::body::Body;
use tower::Service;

/// How the scripted server answers one stream.
#[derive(Clone, Debug)]
enum Reply {
    /// Response headers, one empty message, `grpc-status: 0`.
    Ok,
    /// A Trailers-Only response with this status and extra metadata.
    TrailersOnly(Code, Vec<(&'static str, &'static str)>),
    /// Response headers, then trailers with this status: the call has committed.
    HeadersThen(Code),
    /// RST_STREAM REFUSED_STREAM: refused before any processing.
    Refuse,
    /// No answer at all.
    Hang,
}

/// What the server saw of one stream.
#[derive(Debug)]
struct Seen {
    at: Instant,
    headers: HeaderMap,
}

/// A scripted server at its own address: answers stream `n` (counted from 0 across
/// connections) with `script(n)`, and logs every stream.
struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    arrived: Arc<Notify>,
}

impl Server {
    fn start(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Server {
        // An address of TEST-NET-1, unique in this process: nothing real is dialled.
        static NEXT_PORT: AtomicU16 = AtomicU16::new(1);
        let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let addr = SocketAddr::from(([192, 0, 2, 1], port));
        let conns = scripted::listen(addr);
        let server = Server {
            addr,
            seen: Arc::default(),
            arrived: Arc::default(),
        };
        tokio::spawn(accept(
            conns,
            Arc::new(script),
            server.seen.clone(),
            server.arrived.clone(),
        ));
        server
    }

    fn channel(&self, config: Option<&str>) -> BalancedChannel {
        let mut builder = BalancedChannel::builder(&format!("ipv4:{}", self.addr)).seed(7);
        if let Some(json) = config {
            builder = builder.service_config_json(json).expect("a valid config");
        }
        builder.build().expect("a valid channel")
    }

    /// A channel whose subchannel is READY: its first call takes the fast path when
    /// the method has no policy.
    async fn ready_channel(&self, config: Option<&str>) -> BalancedChannel {
        let channel = self.channel(config);
        channel
            .ready(Duration::from_secs(5))
            .await
            .expect("the scripted server serves");
        channel
    }

    /// When each stream arrived, after `start`.
    fn arrivals(&self, start: Instant) -> Vec<Duration> {
        let seen = self.seen.lock().unwrap();
        seen.iter().map(|s| s.at - start).collect()
    }

    /// Stream `n`'s value of metadata `key`.
    fn header(&self, n: usize, key: &str) -> Option<String> {
        let seen = self.seen.lock().unwrap();
        seen[n]
            .headers
            .get(key)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    fn streams(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits until `n` streams have arrived.
    async fn wait_streams(&self, n: usize) {
        loop {
            let arrived = self.arrived.notified();
            if self.streams() >= n {
                return;
            }
            arrived.await;
        }
    }
}

type Script = Arc<dyn Fn(usize) -> Reply + Send + Sync>;

async fn accept(
    mut conns: mpsc::UnboundedReceiver<DuplexStream>,
    script: Script,
    seen: Arc<Mutex<Vec<Seen>>>,
    arrived: Arc<Notify>,
) {
    while let Some(io) = conns.recv().await {
        tokio::spawn(serve(io, script.clone(), seen.clone(), arrived.clone()));
    }
}

/// Serves one connection: every reply is queued from the accept loop, which also
/// drives the connection's IO.
async fn serve(
    io: DuplexStream,
    script: Script,
    seen: Arc<Mutex<Vec<Seen>>>,
    arrived: Arc<Notify>,
) {
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    let mut hanging = Vec::new();
    while let Some(Ok((request, mut respond))) = conn.accept().await {
        let n = {
            let mut seen = seen.lock().unwrap();
            seen.push(Seen {
                at: Instant::now(),
                headers: request.headers().clone(),
            });
            seen.len() - 1
        };
        arrived.notify_waiters();
        let head = |trailers_only: Option<(Code, &[(&str, &str)])>| {
            let mut response = http::Response::builder()
                .status(200)
                .header("content-type", "application/grpc");
            if let Some((code, extra)) = trailers_only {
                response = response.header("grpc-status", (code as i32).to_string());
                for (key, value) in extra {
                    response = response.header(*key, *value);
                }
            }
            response.body(()).unwrap()
        };
        let status = |code: Code| {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from(code as i32));
            trailers
        };
        match script(n) {
            Reply::Ok => {
                if let Ok(mut stream) = respond.send_response(head(None), false) {
                    let _ = stream.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), false);
                    let _ = stream.send_trailers(status(Code::Ok));
                }
            }
            Reply::TrailersOnly(code, extra) => {
                let _ = respond.send_response(head(Some((code, &extra))), true);
            }
            Reply::HeadersThen(code) => {
                if let Ok(mut stream) = respond.send_response(head(None), false) {
                    let _ = stream.send_trailers(status(code));
                }
            }
            Reply::Refuse => respond.send_reset(h2::Reason::REFUSED_STREAM),
            Reply::Hang => hanging.push(respond),
        }
    }
}

/// A unary request (one empty message) to `/test.Svc/Unary`, with a timeout if given.
fn request(timeout: Option<&'static str>) -> http::Request<Body> {
    let mut request = http::Request::builder()
        .method("POST")
        .uri("http://scripted/test.Svc/Unary")
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(timeout) = timeout {
        request = request.header("grpc-timeout", timeout);
    }
    let body = Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]));
    request.body(Body::new(body)).unwrap()
}

/// The call's final status: a Trailers-Only head's, or its trailers'.
async fn call(channel: &BalancedChannel, request: http::Request<Body>) -> Code {
    let mut channel = channel.clone();
    let response = match channel.call(request).await {
        Ok(response) => response,
        Err(status) => return status.code(),
    };
    if let Some(code) = super::trailers_only_status(response.headers()) {
        return code;
    }
    match response.into_body().collect().await {
        Ok(collected) => collected
            .trailers()
            .and_then(super::grpc_status)
            .unwrap_or(Code::Unknown),
        Err(status) => status.code(),
    }
}

const RETRY: &str = r#"{"methodConfig": [{"name": [{"service": "test.Svc"}],
    "retryPolicy": {"maxAttempts": 4, "initialBackoff": "1s", "maxBackoff": "10s",
    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#;

#[tokio::test(start_paused = true)]
async fn a_refused_stream_is_sent_again_once_uncounted() {
    let server = Server::start(|n| if n == 0 { Reply::Refuse } else { Reply::Ok });
    let channel = server.ready_channel(None).await;
    assert_eq!(call(&channel, request(None)).await, Code::Ok);
    assert_eq!(server.streams(), 2);
    assert_eq!(
        server.header(1, "grpc-previous-rpc-attempts"),
        None,
        "uncounted"
    );
    let attempts = &channel.stats().methods[0].attempts;
    assert_eq!((attempts.first, attempts.transparent), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_second_refusal_ends_a_call_without_a_policy() {
    let server = Server::start(|_| Reply::Refuse);
    let channel = server.ready_channel(None).await;
    assert_eq!(call(&channel, request(None)).await, Code::Unavailable);
    assert_eq!(server.streams(), 2, "one transparent retry per call");
}

#[tokio::test(start_paused = true)]
async fn retries_follow_the_backoff_and_count_what_came_before() {
    let server = Server::start(|n| match n {
        0..=2 => Reply::TrailersOnly(Code::Unavailable, vec![]),
        _ => Reply::Ok,
    });
    let channel = server.ready_channel(Some(RETRY)).await;
    let start = Instant::now();
    assert_eq!(call(&channel, request(None)).await, Code::Ok);
    let at = server.arrivals(start);
    assert_eq!(at.len(), 4);
    assert_eq!(at[0], Duration::ZERO, "the first attempt goes at once");
    // Backoffs of 1 s, 2 s, 4 s, each spread by ±20 % (gRFC A6).
    for (k, base_ms) in [(1, 1000.0), (2, 2000.0), (3, 4000.0)] {
        let gap = (at[k] - at[k - 1]).as_secs_f64() * 1000.0;
        assert!(
            (0.8 * base_ms..=1.2 * base_ms + 1.0).contains(&gap),
            "retry {k} came {gap} ms after the previous attempt, not {base_ms} ms ± 20 %"
        );
    }
    let previous: Vec<_> = (0..4)
        .map(|n| server.header(n, "grpc-previous-rpc-attempts"))
        .collect();
    assert_eq!(
        previous,
        [None, Some("1".into()), Some("2".into()), Some("3".into())]
    );
}

#[tokio::test(start_paused = true)]
async fn pushback_sets_when_the_next_attempt_goes() {
    let server = Server::start(|n| match n {
        0 => Reply::TrailersOnly(Code::Unavailable, vec![("grpc-retry-pushback-ms", "2500")]),
        _ => Reply::Ok,
    });
    let channel = server.ready_channel(Some(RETRY)).await;
    let start = Instant::now();
    assert_eq!(call(&channel, request(None)).await, Code::Ok);
    let at = server.arrivals(start);
    let gap = at[1] - at[0];
    assert!(
        (Duration::from_millis(2500)..=Duration::from_millis(2501)).contains(&gap),
        "{gap:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_negative_pushback_stops_the_retries() {
    let server = Server::start(|_| {
        Reply::TrailersOnly(Code::Unavailable, vec![("grpc-retry-pushback-ms", "-1")])
    });
    let channel = server.ready_channel(Some(RETRY)).await;
    assert_eq!(call(&channel, request(None)).await, Code::Unavailable);
    assert_eq!(server.streams(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_response_with_headers_has_committed_and_is_not_retried() {
    let server = Server::start(|_| Reply::HeadersThen(Code::Unavailable));
    let channel = server.ready_channel(Some(RETRY)).await;
    assert_eq!(call(&channel, request(None)).await, Code::Unavailable);
    assert_eq!(server.streams(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_ends_a_call_the_server_never_answers() {
    let server = Server::start(|_| Reply::Hang);
    let channel = server.ready_channel(None).await;
    let start = Instant::now();
    assert_eq!(
        call(&channel, request(Some("1500m"))).await,
        Code::DeadlineExceeded
    );
    let took = start.elapsed();
    assert!(
        (Duration::from_millis(1500)..=Duration::from_millis(1501)).contains(&took),
        "{took:?}"
    );
    // What the server was told: the time left when the attempt went out.
    assert_eq!(
        server.header(0, "grpc-timeout").as_deref(),
        Some("1500000u")
    );
    let in_flight = channel.stats().endpoints[0].in_flight;
    assert_eq!(in_flight, 0, "the expired attempt no longer counts as load");
}

#[tokio::test(start_paused = true)]
async fn a_retry_carries_the_time_left_and_none_starts_after_the_deadline() {
    let server = Server::start(|_| Reply::TrailersOnly(Code::Unavailable, vec![]));
    let channel = server.ready_channel(Some(RETRY)).await;
    let start = Instant::now();
    assert_eq!(
        call(&channel, request(Some("2S"))).await,
        Code::DeadlineExceeded
    );
    // Backoffs of 1 s ± 20 % then 2 s ± 20 %: the second retry would start after the
    // deadline, so the call ends at the deadline with two attempts made.
    assert_eq!(server.streams(), 2);
    let took = start.elapsed();
    assert!(
        (Duration::from_secs(2)..=Duration::from_millis(2001)).contains(&took),
        "{took:?}"
    );
    let left = server.header(1, "grpc-timeout").unwrap();
    let left_us: u64 = left.trim_end_matches('u').parse().unwrap();
    let at = server.arrivals(start);
    assert_eq!(
        Duration::from_micros(left_us),
        Duration::from_secs(2) - at[1],
        "the retry says how long is left"
    );
}

#[tokio::test(start_paused = true)]
async fn hedges_go_out_on_time_and_the_first_answer_wins() {
    let server = Server::start(|n| if n == 0 { Reply::Hang } else { Reply::Ok });
    let channel = server
        .ready_channel(Some(
            r#"{"methodConfig": [{"name": [{"service": "test.Svc"}],
            "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.5s"}}]}"#,
        ))
        .await;
    let start = Instant::now();
    assert_eq!(call(&channel, request(None)).await, Code::Ok);
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    assert_eq!(
        server.arrivals(start),
        [Duration::ZERO, Duration::from_millis(500)]
    );
    assert_eq!(
        server.header(1, "grpc-previous-rpc-attempts").as_deref(),
        Some("1")
    );
    let attempts = &channel.stats().methods[0].attempts;
    assert_eq!((attempts.first, attempts.hedges), (1, 1));
    assert_eq!(
        channel.stats().endpoints[0].in_flight,
        0,
        "the loser was cancelled"
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_waits_for_the_first_ready_backend_within_its_deadline() {
    // The server's handshake starts 3 s late: until then the channel is CONNECTING.
    let server = Server::start(|_| Reply::Ok);
    let mut conns = scripted::listen(server.addr);
    let channel = server.channel(None);
    let (seen, arrived) = (server.seen.clone(), server.arrived.clone());
    tokio::spawn(async move {
        let io = conns.recv().await.expect("the channel connects");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let script: Script = Arc::new(|_| Reply::Ok);
        serve(io, script, seen, arrived).await;
    });
    let start = Instant::now();
    assert_eq!(call(&channel, request(Some("5S"))).await, Code::Ok);
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    server.wait_streams(1).await;
}

/// The fast path's state lives inline in the caller's future (tonic's client future
/// holds it), so it must stay small enough not to want a box of its own: 552 bytes with
/// the default features, 784 with OpenTelemetry's records (2026-12-03). The boxed
/// call future it replaced was 2.8 KB.
#[test]
fn the_response_future_is_small() {
    let size = std::mem::size_of::<super::ResponseFuture>();
    assert!(size <= 1024, "ResponseFuture grew to {size} bytes");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_fast_call_releases_its_load_and_counts_as_cancelled() {
    let server = Server::start(|_| Reply::Hang);
    let channel = server.ready_channel(None).await;
    let mut service = channel.clone();
    let pending = tokio::time::timeout(Duration::from_secs(1), service.call(request(None)));
    assert!(pending.await.is_err(), "the server never answers");
    let stats = channel.stats();
    assert_eq!(stats.endpoints[0].in_flight, 0);
    assert_eq!(stats.methods[0].in_flight, 0);
    assert_eq!(stats.methods[0].errors.get("CANCELLED"), Some(&1));
    assert_eq!(server.streams(), 1);
}

/// A request body that is not ready when the call starts: a streaming call.
struct Later {
    polled: bool,
    sent: bool,
}

impl http_body::Body for Later {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        if !std::mem::replace(&mut self.polled, true) {
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        if std::mem::replace(&mut self.sent, true) {
            return std::task::Poll::Ready(None);
        }
        let message = http_body::Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]));
        std::task::Poll::Ready(Some(Ok(message)))
    }
}

/// Streaming calls without a policy take the boxed path and are picked once each:
/// round robin over two backends gives each half of them.
#[tokio::test(start_paused = true)]
async fn streaming_calls_are_picked_once_each() {
    let servers = [Server::start(|_| Reply::Ok), Server::start(|_| Reply::Ok)];
    let target = format!("ipv4:{},{}", servers[0].addr, servers[1].addr);
    let channel = BalancedChannel::builder(&target)
        .policy(crate::Policy::round_robin())
        .build()
        .unwrap();
    channel
        .wait_for(|subs| {
            subs.iter()
                .all(|s| s.state == crate::ConnectivityState::Ready)
        })
        .await;
    for _ in 0..4 {
        let mut request = request(None);
        *request.body_mut() = Body::new(Later {
            polled: false,
            sent: false,
        });
        assert_eq!(call(&channel, request).await, Code::Ok);
    }
    assert_eq!([servers[0].streams(), servers[1].streams()], [2, 2]);
}

/// The deadline a call inherits is the one around its first poll: a tower user who
/// wraps `call()`'s future in a scope gets it, as tonic's clients do.
#[tokio::test(start_paused = true)]
async fn the_inherited_deadline_is_read_when_the_call_is_polled() {
    let server = Server::start(|_| Reply::Hang);
    let channel = server.ready_channel(None).await;
    let mut service = channel.clone();
    let start = Instant::now();
    let future = service.call(request(None));
    let result = crate::deadline::scope(start + Duration::from_secs(2), future).await;
    assert_eq!(result.unwrap_err().code(), Code::DeadlineExceeded);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(
        server.header(0, "grpc-timeout").as_deref(),
        Some("2000000u")
    );
}

/// A call's future may be made outside the runtime (here with a deadline, whose timer
/// needs one): it starts when polled.
#[test]
fn a_call_made_outside_the_runtime_starts_when_polled() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(async { Server::start(|_| Reply::Ok) });
    let channel = runtime.block_on(server.ready_channel(None));
    let mut service = channel.clone();
    // Outside the runtime, with a deadline: no timer is made here.
    let future = service.call(request(Some("1S")));
    assert_eq!(
        runtime.block_on(async { call_future(future).await }),
        Code::Ok
    );
    assert_eq!(server.streams(), 1);
}

async fn call_future(future: super::ResponseFuture) -> Code {
    match future.await {
        Ok(response) => match super::trailers_only_status(response.headers()) {
            Some(code) => code,
            None => response
                .into_body()
                .collect()
                .await
                .ok()
                .and_then(|c| c.trailers().and_then(super::grpc_status))
                .unwrap_or(Code::Unknown),
        },
        Err(status) => status.code(),
    }
}
