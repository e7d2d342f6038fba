//! A subchannel's own HTTP/2 connection, on h2 directly.
//!
//! One task per connection drives h2's `Connection` and its liveness [`Monitor`]; calls
//! run in the caller's task: they clone the connection's send handle, send the request
//! head and (for a unary call) the one message in the same flush, and read the response
//! through [`H2Body`]. No buffer task, no per-call task, no tonic `Channel`: only a
//! request body that is still streaming when the head goes out gets a pump task.
//!
//! Owning the connection is what lets the subchannel see what a tonic `Channel` hides:
//! PING ACKs (a frozen peer is noticed), a GOAWAY and its debug data (`too_many_pings`),
//! and which requests the server never saw (REFUSED_STREAM, streams above a GOAWAY's
//! last stream id), the material of transparent retries.

use super::connector::{self, GoAway, Link, PrefaceResult, Tap, TcpOptions, Watchers};
use crate::load::Load;
use crate::resolver::Peer;
use bytes::Bytes;
use h2::client::SendRequest;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Uri};
use http_body::{Body as _, Frame};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tonic::Status;
use tonic::body::Body;

/// The `user-agent` of calls that set none.
const USER_AGENT: &str = concat!("tonic-balancer/", env!("CARGO_PKG_VERSION"));

/// How a connection is opened and watched; the same for every connection of a channel.
#[derive(Clone, Debug)]
pub(crate) struct ConnSettings {
    pub(crate) tcp: TcpOptions,
    pub(crate) liveness: Option<Liveness>,
    pub(crate) keepalive: Option<Keepalive>,
}

/// The built-in liveness check: a connection with calls outstanding that has heard
/// nothing for a while is PINGed, and declared dead if the ACK does not come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Liveness {
    /// The shortest silence that draws a PING, and the longest wait for its ACK.
    pub(crate) floor: Duration,
    /// The silence and the wait are at least this many smoothed round trips.
    pub(crate) rtt_factor: u32,
}

/// gRFC A8 keepalive, as configured on the builder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Keepalive {
    pub(crate) time: Duration,
    pub(crate) timeout: Duration,
    pub(crate) without_calls: bool,
}

/// The calling side of one HTTP/2 connection. Calls hold it through an `Arc`, so a
/// connection the subchannel has let go of lives on until its last call ends (drain).
pub(crate) struct Conn {
    send: SendRequest<Bytes>,
    scheme: Scheme,
    authority: Authority,
    pub(crate) addr: Peer,
    pub(crate) link: Arc<Link>,
    pub(crate) tap: Arc<Tap>,
    /// When the connection became READY.
    pub(crate) since: Instant,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("addr", &self.addr)
            .field("authority", &self.authority)
            .field("up", &self.link.is_up())
            .finish()
    }
}

/// A request body as the connection sends it.
pub(crate) enum Outgoing {
    /// No body: the head ends the stream.
    Empty,
    /// The whole body, known before the head goes out: sent with it, no task.
    Message(Bytes),
    /// A body still being produced: a pump task sends it as it comes, under flow control.
    Stream(Body),
}

/// Where a request stood when it was handed to h2.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SentMark {
    pub(crate) stream_id: u32,
    written_before: u64,
}

/// A request on its way: the response future, and the pump of a streaming body (which
/// stops, resetting the stream, when this or the response body is dropped).
pub(crate) struct Sent {
    response: h2::client::ResponseFuture,
    /// Bytes the connection had written before this request.
    written_before: u64,
    pump: Option<oneshot::Sender<()>>,
}

impl Sent {
    /// The stream's id, to compare with a GOAWAY's last stream id.
    pub(crate) fn stream_id(&self) -> u32 {
        self.response.stream_id().into()
    }

    /// Where the request stood: the stream id and the bytes written before it.
    pub(crate) fn mark(&self) -> SentMark {
        SentMark {
            stream_id: self.stream_id(),
            written_before: self.written_before,
        }
    }

    /// Waits for the response head. Its body keeps the pump alive.
    pub(crate) async fn response(
        mut self,
        addr: &Peer,
    ) -> Result<http::Response<H2Body>, h2::Error> {
        poll_fn(|cx| self.poll_response(cx, || addr.clone())).await
    }

    /// Polls for the response head, as [`Sent::response`] waits for it; `peer` names
    /// the server in the body's errors, and is called only once the head is there.
    pub(crate) fn poll_response(
        &mut self,
        cx: &mut Context<'_>,
        peer: impl FnOnce() -> Peer,
    ) -> Poll<Result<http::Response<H2Body>, h2::Error>> {
        let response = std::task::ready!(Pin::new(&mut self.response).poll(cx))?;
        let pump = self.pump.take();
        Poll::Ready(Ok(response.map(|recv| H2Body {
            recv,
            data_done: false,
            addr: peer(),
            _pump: pump,
        })))
    }
}

impl Conn {
    /// Sends a request head with `head`'s method, path and metadata, then its body.
    ///
    /// # Errors
    /// The connection took no new stream (it is closing, has received a GOAWAY, or ran
    /// out of stream ids): nothing was sent, and the connection's link is taken down so
    /// no other call is routed here.
    pub(crate) fn send(
        &self,
        head: http::request::Parts,
        body: Outgoing,
    ) -> Result<Sent, h2::Error> {
        let request = self.request(head);
        let written_before = self.tap.written();
        let mut send = self.send.clone();
        let end = matches!(body, Outgoing::Empty);
        let (response, mut stream) = match send.send_request(request, end) {
            Ok(sent) => sent,
            Err(error) => {
                self.link.close();
                return Err(error);
            }
        };
        let pump = match body {
            Outgoing::Empty => None,
            // A failure here means the stream is already reset; the response says why.
            Outgoing::Message(message) => {
                let _ = stream.send_data(message, true);
                None
            }
            Outgoing::Stream(body) => {
                let (cancel, cancelled) = oneshot::channel();
                tokio::spawn(pump(stream, body, cancelled));
                Some(cancel)
            }
        };
        Ok(Sent {
            response,
            written_before,
            pump,
        })
    }

    /// The request as h2 takes it: an absolute URI on this connection's origin, no
    /// connection-specific headers, a `user-agent`.
    fn request(&self, mut head: http::request::Parts) -> Request<()> {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(self.scheme.clone());
        uri.authority = Some(self.authority.clone());
        uri.path_and_query = head.uri.into_parts().path_and_query;
        // Scheme, authority and a path (or none, which h2 refuses with an error): valid.
        head.uri = Uri::from_parts(uri).unwrap_or_default();
        let headers = &mut head.headers;
        for name in [
            http::header::CONNECTION,
            http::header::TRANSFER_ENCODING,
            http::header::UPGRADE,
            http::header::HOST,
        ] {
            headers.remove(name);
        }
        headers.remove("keep-alive");
        headers.remove("proxy-connection");
        if !headers.contains_key(http::header::USER_AGENT) {
            headers.insert(
                http::header::USER_AGENT,
                HeaderValue::from_static(USER_AGENT),
            );
        }
        Request::from_parts(head, ())
    }

    /// A `tower::Service` over this connection alone, for tonic clients of the
    /// subchannel itself (the health Watch).
    pub(crate) fn service(self: &Arc<Self>) -> ConnService {
        ConnService { conn: self.clone() }
    }

    /// Whether a failed request never left the client: the connection was found
    /// closed before anything was written after the request was handed to h2.
    pub(crate) fn never_left(&self, error: &h2::Error, mark: SentMark) -> bool {
        !error.is_remote() && !error.is_reset() && self.tap.closed_before(mark.written_before)
    }

    /// Whether the server refused a stream it never processed: RST_STREAM
    /// REFUSED_STREAM, or a GOAWAY whose last stream id is below the stream's.
    pub(crate) fn refused(&self, error: &h2::Error, stream_id: u32) -> bool {
        if !error.is_remote() {
            return false;
        }
        if error.is_reset() && error.reason() == Some(h2::Reason::REFUSED_STREAM) {
            return true;
        }
        error.is_go_away()
            && self
                .tap
                .goaway()
                .is_some_and(|g: GoAway| stream_id > g.last_stream_id)
    }
}

/// Sends a streaming request body as it is produced, under the stream's flow control.
/// Stops at the body's end, its error (the stream is reset), or when the call lets go.
async fn pump(mut stream: h2::SendStream<Bytes>, mut body: Body, cancelled: oneshot::Receiver<()>) {
    let send = async {
        loop {
            let frame = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
            match frame {
                None => {
                    let _ = stream.send_data(Bytes::new(), true);
                    return;
                }
                Some(Err(_)) => {
                    stream.send_reset(h2::Reason::CANCEL);
                    return;
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => {
                        while !data.is_empty() {
                            stream.reserve_capacity(data.len());
                            let granted = match poll_fn(|cx| stream.poll_capacity(cx)).await {
                                Some(Ok(n)) => n,
                                // The stream is gone: the response says why.
                                _ => return,
                            };
                            let chunk = data.split_to(granted.min(data.len()));
                            if stream.send_data(chunk, false).is_err() {
                                return;
                            }
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            let _ = stream.send_trailers(trailers);
                        }
                        return;
                    }
                },
            }
        }
    };
    tokio::select! {
        () = send => {}
        // The call let go (its response or body was dropped): stop reading its body.
        _ = cancelled => stream.send_reset(h2::Reason::CANCEL),
    }
}

/// Takes a request body as far as it goes without waiting: a unary call's body (one
/// message, then its end) comes back whole, anything else as a stream that starts
/// with what was already read.
pub(crate) fn prefetch(mut body: Body) -> Result<Outgoing, Status> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let first = match Pin::new(&mut body).poll_frame(&mut cx) {
        Poll::Ready(None) => return Ok(Outgoing::Empty),
        Poll::Ready(Some(Err(status))) => return Err(status),
        Poll::Ready(Some(Ok(frame))) => frame,
        Poll::Pending => return Ok(Outgoing::Stream(body)),
    };
    let first = match first.into_data() {
        Ok(data) => data,
        Err(frame) => return Ok(Outgoing::Stream(prefixed(vec![frame], body))),
    };
    match Pin::new(&mut body).poll_frame(&mut cx) {
        Poll::Ready(None) => Ok(Outgoing::Message(first)),
        Poll::Ready(Some(Err(status))) => Err(status),
        Poll::Ready(Some(Ok(second))) => Ok(Outgoing::Stream(prefixed(
            vec![Frame::data(first), second],
            body,
        ))),
        Poll::Pending => Ok(Outgoing::Stream(prefixed(vec![Frame::data(first)], body))),
    }
}

/// `frames`, then the rest of `body`.
fn prefixed(frames: Vec<Frame<Bytes>>, rest: Body) -> Body {
    Body::new(Prefixed {
        frames: frames.into_iter(),
        rest,
    })
}

/// Frames already read from a body, then the body.
struct Prefixed {
    frames: std::vec::IntoIter<Frame<Bytes>>,
    rest: Body,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(frame) = self.frames.next() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.frames.len() == 0 && self.rest.is_end_stream()
    }
}

pin_project_lite::pin_project! {
    /// A response body read straight from its HTTP/2 stream: data (flow-control
    /// capacity released as it is read), then trailers. An RST_STREAM NO_ERROR after
    /// the response ends it cleanly (RFC 9113 §8.1).
    pub(crate) struct H2Body {
        recv: h2::RecvStream,
        data_done: bool,
        addr: Peer,
        // Keeps a streaming request's pump going while the response is read.
        _pump: Option<oneshot::Sender<()>>,
    }
}

impl std::fmt::Debug for H2Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Body").field("addr", &self.addr).finish()
    }
}

impl http_body::Body for H2Body {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.project();
        if !*this.data_done {
            match this.recv.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(data))) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(error))) => {
                    if error.reason() == Some(h2::Reason::NO_ERROR) && error.is_remote() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(super::body_error(&error, this.addr))));
                }
                Poll::Ready(None) => *this.data_done = true,
            }
        }
        match this.recv.poll_trailers(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(trailers)) => Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t)))),
            Poll::Ready(Err(error)) => {
                if error.reason() == Some(h2::Reason::NO_ERROR) && error.is_remote() {
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(super::body_error(&error, this.addr))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

/// One connection as a `tower::Service` for tonic clients.
#[derive(Clone, Debug)]
pub(crate) struct ConnService {
    conn: Arc<Conn>,
}

type ServiceFuture =
    Pin<Box<dyn std::future::Future<Output = Result<http::Response<Body>, Status>> + Send>>;

impl tower::Service<http::Request<Body>> for ConnService {
    type Response = http::Response<Body>;
    type Error = Status;
    type Future = ServiceFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> ServiceFuture {
        let conn = self.conn.clone();
        Box::pin(async move {
            let (head, body) = request.into_parts();
            let addr = &conn.addr;
            let sent = conn
                .send(head, prefetch(body)?)
                .map_err(|e| super::send_error(&e, addr))?;
            let response = sent
                .response(addr)
                .await
                .map_err(|e| super::send_error(&e, addr))?;
            Ok(response.map(Body::new))
        })
    }
}

// === Opening a connection ===

/// Opens a connection to `addr` and waits for the server's HTTP/2 preface: the
/// connection is READY only then.
pub(crate) async fn open(
    address: &crate::resolver::Address,
    origin: &Uri,
    settings: &ConnSettings,
    load: Arc<Load>,
    #[cfg(feature = "tls")] tls: Option<crate::tls::TlsConnect>,
) -> Result<Arc<Conn>, String> {
    let scheme = origin.scheme().cloned().unwrap_or(Scheme::HTTP);
    // With the channel's own TLS, calls say `https` whatever the endpoint's URI says.
    #[cfg(feature = "tls")]
    let scheme = if tls.is_some() { Scheme::HTTPS } else { scheme };
    let authority = origin
        .authority()
        .cloned()
        .ok_or_else(|| format!("the endpoint {origin} names no authority"))?;
    let link = Arc::new(Link::default());
    let tap = Arc::new(Tap::default());
    let (preface_tx, mut preface) = watch::channel::<PrefaceResult>(None);
    let start = Instant::now();
    let watchers = Watchers {
        link: link.clone(),
        preface: preface_tx,
        tap: tap.clone(),
        load: load.clone(),
    };
    let addr = Peer::from(address);
    let io = connector::connect(
        address,
        settings.tcp,
        watchers,
        #[cfg(feature = "tls")]
        tls,
    )
    .await
    .map_err(|e| crate::error::chain(&e))?;
    // The TCP (and TLS) handshake is the first round-trip sample.
    let connect_rtt = start.elapsed();
    let (send, mut connection) = h2_builder()
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| format!("HTTP/2 handshake with {addr}: {}", crate::error::chain(&e)))?;
    let ping_pong = connection.ping_pong();
    let monitor = Monitor::new(
        settings.liveness,
        settings.keepalive,
        connect_rtt,
        Instant::now(),
    );
    tokio::spawn(drive(
        connection,
        ping_pong,
        monitor,
        Watched {
            tap: tap.clone(),
            load,
            link: link.clone(),
            addr: addr.clone(),
        },
    ));
    // READY only once the server has answered with HTTP/2 (see `ConnIo`).
    match preface.wait_for(Option::is_some).await.as_deref() {
        Ok(Some(Ok(()))) => {}
        Ok(Some(Err(why))) => return Err(why.clone()),
        Ok(None) | Err(_) => {
            return Err(format!(
                "connection to {addr} closed before the server's HTTP/2 preface"
            ));
        }
    }
    Ok(Arc::new(Conn {
        send,
        scheme,
        authority,
        addr,
        link,
        tap,
        since: Instant::now(),
    }))
}

/// h2's client settings, tuned as hyper and tonic tune them for gRPC.
fn h2_builder() -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        // hyper's windows: a 2 MiB stream and 5 MiB connection window keep a fast
        // stream from stalling on WINDOW_UPDATE round trips (h2's default is 64 KiB).
        .initial_window_size(2 * 1024 * 1024)
        .initial_connection_window_size(5 * 1024 * 1024)
        // tonic's limit on response metadata (h2's default is 16 MiB).
        .max_header_list_size(16 * 1024)
        // Until the server's SETTINGS say otherwise (h2's default is unlimited).
        .initial_max_send_streams(100)
        .enable_push(false)
        // Deadline storms reset many streams at once; h2's defaults (50 kept, 1024 for
        // the connection's life) would make h2 close the connection itself.
        .max_concurrent_reset_streams(4096)
        .max_local_error_reset_streams(None);
    builder
}

/// What the connection task watches besides the connection itself.
struct Watched {
    tap: Arc<Tap>,
    load: Arc<Load>,
    link: Arc<Link>,
    addr: Peer,
}

/// Drives one connection until it ends, is declared dead, or is let go of (every send
/// handle dropped: h2 then closes it with GOAWAY once its streams end).
///
/// Not an `async fn`: one moves its arguments into locals and keeps both copies in the
/// task for its whole life, h2's connection (1.4 KB) among them. The `async move`
/// block uses what it captures in place: one copy per connection.
#[allow(clippy::manual_async_fn)]
fn drive(
    mut connection: h2::client::Connection<connector::ConnIo, Bytes>,
    mut ping_pong: Option<h2::PingPong>,
    mut monitor: Monitor,
    watched: Watched,
) -> impl std::future::Future<Output = ()> {
    async move {
        let mut tick = Box::pin(tokio::time::sleep(
            monitor.next_tick(Instant::now(), Observed::default()),
        ));
        loop {
            let awaiting_pong = monitor.awaiting_pong();
            tokio::select! {
                ended = &mut connection => {
                    if let Err(error) = ended {
                        tracing::debug!(addr = %watched.addr, %error, "connection ended");
                    }
                    break;
                }
                pong = poll_fn(|cx| match ping_pong.as_mut() {
                    Some(pp) if awaiting_pong => pp.poll_pong(cx).map(|r| r.is_ok()),
                    _ => Poll::Pending,
                }) => {
                    if pong {
                        monitor.on_pong(Instant::now(), watched.load.started());
                        watched.link.suspect(false);
                    } else {
                        break;
                    }
                }
                () = &mut tick => {
                    let now = Instant::now();
                    let observed = Observed {
                        bytes: watched.tap.bytes(),
                        answers: watched.tap.answers(),
                        started: watched.load.started(),
                        started_at_read: watched.tap.started_at_read(),
                        in_flight: watched.load.in_flight(),
                        last_read: Some(watched.tap.last_read()),
                    };
                    match monitor.tick(now, observed) {
                        Action::Wait => {}
                        Action::Ping => {
                            let sent = ping_pong
                                .as_mut()
                                .is_some_and(|pp| pp.send_ping(h2::Ping::opaque()).is_ok());
                            if sent {
                                watched.load.pings.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                // No new calls here until it answers, if another
                                // subchannel can take them.
                                watched.link.suspect(true);
                            } else {
                                monitor.ping_not_sent();
                            }
                        }
                        Action::Dead(why) => {
                            tracing::debug!(addr = %watched.addr, %why, "connection declared dead");
                            watched
                                .load
                                .dead_connections
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            watched.tap.set_ended(format!("{}: {why}", watched.addr));
                            break;
                        }
                    }
                    tick.as_mut().reset(now + monitor.next_tick(now, observed));
                }
            }
        }
        // Dropping the connection fails its open streams; calls see UNAVAILABLE.
        watched.tap.mark_closed();
        watched.link.close();
    }
}

// === Liveness ===

/// What a connection showed at one tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Observed {
    /// Bytes read from the server so far.
    pub(crate) bytes: u64,
    /// HEADERS and DATA frames received so far.
    pub(crate) answers: u64,
    /// Calls started on the subchannel so far.
    pub(crate) started: u64,
    /// `started` when bytes were last read.
    pub(crate) started_at_read: u64,
    /// When bytes were last read, if the connection knows (else the tick that first
    /// saw `bytes` change stands for it).
    pub(crate) last_read: Option<Instant>,
    pub(crate) in_flight: usize,
}

/// What the monitor asks of its connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Wait,
    Ping,
    Dead(String),
}

/// Why a PING is out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PingKind {
    Liveness,
    Keepalive,
}

/// The liveness state machine of one connection, driven by ticks and PING ACKs, with
/// no IO of its own (the connection task does the IO; the tests drive it directly).
///
/// - **Liveness** (on by default): when calls were started since the last byte
///   arrived (still out, or given up on by the client), and nothing has arrived for
///   `silence`, send one PING; no ACK within `silence` → dead. `silence` = max(floor, factor × smoothed RTT), the RTT
///   sampled from the connect handshake and then from every ACK. An ACK clears
///   suspicion until new calls are started.
/// - **Ping policing** (gRFC A8; grpc-go and C-core servers): a PING is a strike unless
///   the server sent HEADERS or DATA since the previous PING (or 5 minutes passed);
///   the third strike draws GOAWAY `too_many_pings`. The liveness check sends a PING
///   the server would count as a strike only twice in a row.
/// - **Keepalive** (gRFC A8, opt-in): PING after `time` without reading anything (only
///   with calls outstanding unless `without_calls`); no ACK within `timeout` → dead.
#[derive(Debug)]
pub(crate) struct Monitor {
    liveness: Option<Liveness>,
    keepalive: Option<Keepalive>,
    srtt: Duration,
    last_bytes: u64,
    last_read: Instant,
    /// Calls started when bytes last arrived (as the reads themselves recorded it).
    started_at_read: u64,
    /// `started` at the last ACK: no liveness PING until calls start after it.
    started_at_ack: Option<u64>,
    ping: Option<(Instant, PingKind)>,
    /// `answers` when the last PING went out.
    answers_at_ping: Option<u64>,
    last_ping: Option<Instant>,
    /// PINGs in a row the server would count as strikes.
    strikes: u32,
}

/// How long a server remembers a PING for its strike count (gRFC A8's
/// PERMIT_KEEPALIVE_TIME default).
const PING_POLICE_WINDOW: Duration = Duration::from_secs(300);
/// Strikes a server tolerates (grpc-go's and C-core's MAX_PING_STRIKES).
const PING_STRIKES_ALLOWED: u32 = 2;

impl Monitor {
    pub(crate) fn new(
        liveness: Option<Liveness>,
        keepalive: Option<Keepalive>,
        connect_rtt: Duration,
        now: Instant,
    ) -> Self {
        Self {
            liveness,
            keepalive,
            srtt: connect_rtt,
            last_bytes: 0,
            last_read: now,
            started_at_read: 0,
            started_at_ack: None,
            ping: None,
            answers_at_ping: None,
            last_ping: None,
            strikes: 0,
        }
    }

    /// The silence that draws a liveness PING, and the wait for its ACK.
    pub(crate) fn silence(&self) -> Option<Duration> {
        self.liveness
            .map(|l| l.floor.max(self.srtt.saturating_mul(l.rtt_factor)))
    }

    /// How long until the next tick: a quarter of the silence while calls are out,
    /// unanswered or a PING is, else the whole silence (an idle connection costs one
    /// wake-up per silence); keepalive's own period when it is shorter.
    pub(crate) fn period(&self, seen: Observed) -> Duration {
        let busy =
            seen.in_flight > 0 || seen.started != seen.started_at_read || self.ping.is_some();
        let liveness = self.silence().map(|s| if busy { s / 4 } else { s });
        let keepalive = self
            .keepalive
            .filter(|k| busy || k.without_calls)
            .map(|k| (k.time.min(k.timeout) / 4).max(Duration::from_millis(10)));
        [liveness, keepalive]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(Duration::from_secs(3600))
            .max(Duration::from_millis(1))
    }

    /// How long until the next tick: [`Monitor::period`], or sooner if a PING's wait
    /// for its ACK ends sooner.
    pub(crate) fn next_tick(&self, now: Instant, seen: Observed) -> Duration {
        let period = self.period(seen);
        match self.ping {
            Some((sent, kind)) => {
                let wait = match kind {
                    PingKind::Liveness => self.silence().unwrap_or(Duration::MAX),
                    PingKind::Keepalive => self.keepalive.map_or(Duration::MAX, |k| k.timeout),
                };
                let left = (sent + wait).saturating_duration_since(now);
                period.min(left.max(Duration::from_millis(1)))
            }
            None => period,
        }
    }

    pub(crate) fn awaiting_pong(&self) -> bool {
        self.ping.is_some()
    }

    /// The PING could not be sent (the connection is closing).
    pub(crate) fn ping_not_sent(&mut self) {
        self.ping = None;
    }

    pub(crate) fn on_pong(&mut self, now: Instant, started: u64) {
        if let Some((sent, _)) = self.ping.take() {
            let rtt = now.saturating_duration_since(sent);
            // RFC 6298's smoothing, as TCP does it.
            self.srtt = (self.srtt.saturating_mul(7) + rtt) / 8;
        }
        self.started_at_ack = Some(started);
        self.last_read = now;
    }

    pub(crate) fn tick(&mut self, now: Instant, seen: Observed) -> Action {
        if seen.bytes != self.last_bytes {
            self.last_bytes = seen.bytes;
            self.last_read = seen.last_read.unwrap_or(now).min(now);
            self.started_at_read = seen.started_at_read;
        }
        let quiet = now.saturating_duration_since(self.last_read);
        if let Some((sent, kind)) = self.ping {
            let wait = match kind {
                PingKind::Liveness => self.silence().unwrap_or(Duration::MAX),
                PingKind::Keepalive => self.keepalive.map_or(Duration::MAX, |k| k.timeout),
            };
            let waited = now.saturating_duration_since(sent);
            if waited >= wait {
                return Action::Dead(format!(
                    "no answer to a PING within {wait:?} ({} calls outstanding, nothing read for {quiet:?})",
                    seen.in_flight
                ));
            }
            return Action::Wait;
        }
        if let Some(k) = self.keepalive
            && (seen.in_flight > 0 || k.without_calls)
            && quiet >= k.time
        {
            return self.send_ping(now, seen, PingKind::Keepalive);
        }
        let Some(silence) = self.silence() else {
            return Action::Wait;
        };
        // Calls were sent since the server last said anything (whether they are still
        // out or the client gave up on them), and it has been quiet for a while.
        let suspicious = quiet >= silence
            && seen.started != self.started_at_read
            && self.started_at_ack != Some(seen.started);
        if !suspicious {
            return Action::Wait;
        }
        let free = self.answers_at_ping != Some(seen.answers)
            || self
                .last_ping
                .is_none_or(|last| now.saturating_duration_since(last) >= PING_POLICE_WINDOW);
        if !free && self.strikes >= PING_STRIKES_ALLOWED {
            return Action::Wait;
        }
        self.send_ping(now, seen, PingKind::Liveness)
    }

    fn send_ping(&mut self, now: Instant, seen: Observed, kind: PingKind) -> Action {
        let free = self.answers_at_ping != Some(seen.answers)
            || self
                .last_ping
                .is_none_or(|last| now.saturating_duration_since(last) >= PING_POLICE_WINDOW);
        self.strikes = if free { 0 } else { self.strikes + 1 };
        self.answers_at_ping = Some(seen.answers);
        self.last_ping = Some(now);
        self.ping = Some((now, kind));
        Action::Ping
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    fn liveness() -> Option<Liveness> {
        Some(Liveness {
            floor: SEC,
            rtt_factor: 10,
        })
    }

    /// A call out, `started` calls so far, the last read having seen `read_started`.
    fn busy_since(bytes: u64, answers: u64, started: u64, read_started: u64) -> Observed {
        Observed {
            bytes,
            answers,
            started,
            started_at_read: read_started,
            in_flight: 1,
            last_read: None,
        }
    }

    /// Ticks every 250 ms after `start`, up to `ticks` times or the first `Dead`,
    /// returning the actions with their tick numbers.
    fn run(
        m: &mut Monitor,
        start: Instant,
        ticks: u32,
        seen: impl Fn(u32) -> Observed,
    ) -> Vec<(u32, Action)> {
        let mut actions = Vec::new();
        for i in 1..=ticks {
            let action = m.tick(start + 250 * MS * i, seen(i));
            let dead = matches!(action, Action::Dead(_));
            if action != Action::Wait {
                actions.push((i, action));
            }
            if dead {
                break;
            }
        }
        actions
    }

    #[test]
    fn silence_follows_the_round_trip_time_above_the_floor() {
        let now = Instant::now();
        assert_eq!(Monitor::new(liveness(), None, MS, now).silence(), Some(SEC));
        assert_eq!(
            Monitor::new(liveness(), None, 300 * MS, now).silence(),
            Some(3 * SEC)
        );
        assert_eq!(Monitor::new(None, None, MS, now).silence(), None);
    }

    #[test]
    fn a_frozen_peer_is_pinged_then_declared_dead() {
        let start = Instant::now();
        let mut m = Monitor::new(liveness(), None, MS, start);
        // Answers until tick 4, then nothing while calls keep being started.
        let actions = run(&mut m, start, 20, |i| {
            let read = u64::from(i.min(4));
            busy_since(100 * read, read, u64::from(i), u64::from(i.min(4)))
        });
        // Last byte at tick 4 (1 s); PING after 1 s of silence; dead 1 s later.
        assert_eq!(actions[0], (8, Action::Ping));
        assert!(matches!(actions[1], (12, Action::Dead(_))), "{actions:?}");
        assert_eq!(actions.len(), 2);
    }

    #[test]
    fn a_slow_call_is_pinged_once_and_the_ack_clears_it() {
        let start = Instant::now();
        let mut m = Monitor::new(liveness(), None, MS, start);
        // Bytes seen at tick 1; one call started at tick 3, answered only at tick 40;
        // no other call.
        let mut actions = Vec::new();
        let mut acked = 0;
        for i in 1..=40u32 {
            let now = start + 250 * MS * i;
            let seen = Observed {
                bytes: 100 + 17 * acked,
                answers: 1,
                started: u64::from(i >= 3),
                // The ACK is read after the call started.
                started_at_read: u64::from(acked > 0),
                in_flight: usize::from(i >= 3),
                last_read: None,
            };
            let action = m.tick(now, seen);
            if action == Action::Ping {
                // The ACK (17 bytes) comes back at once.
                m.on_pong(now + MS, seen.started);
                acked += 1;
            }
            if action != Action::Wait {
                actions.push((i, action));
            }
        }
        // Silent for 1 s since tick 1 with a call started after the last read: one PING
        // at tick 5; its ACK clears the connection until new calls start.
        assert_eq!(actions, vec![(5, Action::Ping)]);
    }

    #[test]
    fn a_call_started_before_the_last_read_draws_no_ping() {
        let start = Instant::now();
        let mut m = Monitor::new(liveness(), None, MS, start);
        let actions = run(&mut m, start, 40, |_| busy_since(100, 1, 1, 1));
        assert!(actions.is_empty(), "{actions:?}");
    }

    #[test]
    fn pings_the_server_would_count_as_strikes_stop_at_two() {
        let start = Instant::now();
        let mut m = Monitor::new(liveness(), None, MS, start);
        let mut pings = 0;
        // The server answers PINGs but never sends HEADERS or DATA, while calls keep
        // being started: every PING after the first is a strike.
        let mut bytes = 100;
        for i in 1..=400u32 {
            let now = start + 250 * MS * i;
            let seen = busy_since(bytes, 1, u64::from(i), u64::from(i.saturating_sub(1)));
            if m.tick(now, seen) == Action::Ping {
                pings += 1;
                bytes += 17;
                m.on_pong(now + MS, u64::from(i));
            }
        }
        assert_eq!(pings, 1 + PING_STRIKES_ALLOWED);
    }

    #[test]
    fn an_idle_connection_is_never_pinged_without_keepalive() {
        let start = Instant::now();
        let mut m = Monitor::new(liveness(), None, MS, start);
        let actions = run(&mut m, start, 100, |_| Observed::default());
        assert!(actions.is_empty(), "{actions:?}");
        assert_eq!(m.period(Observed::default()), SEC);
        assert_eq!(m.period(busy_since(0, 0, 3, 3)), 250 * MS);
        assert_eq!(
            m.period(Observed {
                started: 4,
                started_at_read: 3,
                ..Observed::default()
            }),
            250 * MS,
            "a call sent and not answered keeps the check busy"
        );
    }

    #[test]
    fn keepalive_pings_after_its_time_and_dies_after_its_timeout() {
        let start = Instant::now();
        let keepalive = Keepalive {
            time: 10 * SEC,
            timeout: 20 * SEC,
            without_calls: true,
        };
        let mut m = Monitor::new(None, Some(keepalive), MS, start);
        let actions = run(&mut m, start, 200, |_| Observed::default());
        // PING at 10 s of silence, dead 20 s later.
        assert_eq!(actions[0], (40, Action::Ping));
        assert!(matches!(actions[1], (120, Action::Dead(_))), "{actions:?}");
    }
}
