//! Opening a subchannel's connection, and the IO wrappers that tell the subchannel when
//! the server has answered with HTTP/2, what frames it sends, and the moment the
//! connection ends.
//!
//! The stack of one connection, from the socket up: `TcpStream` (or `UnixStream` for a
//! Unix socket address), [`TrackedIo`] (end of the connection), TLS when configured,
//! [`ConnIo`] (the server's HTTP/2 preface and a [`Tap`] on its frames), h2.

use crate::load::Load;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

use crate::resolver::Address;

/// The liveness of one HTTP/2 connection, shared by its IO, its subchannel worker and
/// the call path (which skips a subchannel whose link is down before the picker is rebuilt).
///
/// While its liveness check waits for a PING ACK the link is *suspect*: calls go to
/// other subchannels if any is usable, so a frozen peer gets no new calls while the
/// check runs.
#[derive(Debug, Default)]
pub(crate) struct Link {
    /// [`UP`], [`SUSPECT`] or [`DOWN`].
    state: AtomicU8,
    notify: Notify,
}

const UP: u8 = 0;
const SUSPECT: u8 = 1;
const DOWN: u8 = 2;

impl Link {
    pub(crate) fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) != DOWN
    }

    /// Up and not under suspicion.
    pub(crate) fn is_trusted(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }

    /// Marks the link suspect (a PING is out) or trusted again (its ACK came).
    pub(crate) fn suspect(&self, suspect: bool) {
        let (from, to) = if suspect {
            (UP, SUSPECT)
        } else {
            (SUSPECT, UP)
        };
        let _ = self
            .state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire);
    }

    pub(crate) fn close(&self) {
        if self.state.swap(DOWN, Ordering::AcqRel) != DOWN {
            self.notify.notify_waiters();
        }
    }

    /// Resolves once the connection has ended.
    pub(crate) async fn closed(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_up() {
                return;
            }
            notified.await;
        }
    }
}

/// What the server's first bytes said: `Ok` once they opened an HTTP/2 SETTINGS frame,
/// else why the connection is no good. `None` until then.
pub(crate) type PrefaceResult = Option<Result<(), String>>;

/// TCP options of every connection: the ones a tonic `Endpoint` carries that the
/// channel honours (see `Builder::configure_endpoint`), and the keepalive timeout as
/// `TCP_USER_TIMEOUT` (gRFC A18).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct TcpOptions {
    pub(crate) nodelay: bool,
    pub(crate) keepalive: Option<std::time::Duration>,
    pub(crate) keepalive_interval: Option<std::time::Duration>,
    pub(crate) keepalive_retries: Option<u32>,
    pub(crate) user_timeout: Option<std::time::Duration>,
}

impl TcpOptions {
    fn apply(&self, stream: &TcpStream) -> io::Result<()> {
        stream.set_nodelay(self.nodelay)?;
        let socket = socket2::SockRef::from(stream);
        if let Some(idle) = self.keepalive {
            let mut keepalive = socket2::TcpKeepalive::new().with_time(idle);
            if let Some(interval) = self.keepalive_interval {
                keepalive = keepalive.with_interval(interval);
            }
            #[cfg(any(target_os = "linux", target_os = "macos", target_os = "freebsd"))]
            if let Some(retries) = self.keepalive_retries {
                keepalive = keepalive.with_retries(retries);
            }
            socket.set_tcp_keepalive(&keepalive)?;
        }
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
        if let Some(timeout) = self.user_timeout {
            socket.set_tcp_user_timeout(Some(timeout))?;
        }
        Ok(())
    }
}

/// Who hears what a connection's bytes show.
pub(crate) struct Watchers {
    /// Taken down when the connection ends or the server sends GOAWAY.
    pub(crate) link: Arc<Link>,
    /// The verdict on the server's preface.
    pub(crate) preface: watch::Sender<PrefaceResult>,
    /// Counts of what the server sent.
    pub(crate) tap: Arc<Tap>,
    /// The subchannel's load: which calls had started when bytes arrived.
    pub(crate) load: Arc<Load>,
}

/// Opens one connection: TCP (with `tcp`), then TLS when configured, under [`ConnIo`],
/// which reports to `watchers`.
pub(crate) async fn connect(
    address: &Address,
    tcp: TcpOptions,
    watchers: Watchers,
    #[cfg(feature = "tls")] tls: Option<crate::tls::TlsConnect>,
) -> io::Result<ConnIo> {
    let peer: Arc<str> = address.to_string().into();
    let failed = |e: io::Error| io::Error::new(e.kind(), format!("connect to {peer}: {e}"));
    let socket = match (&address.unix, Socket::scripted(address.addr)) {
        (Some(path), _) => Socket::unix(path).await.map_err(failed)?,
        (None, Some(scripted)) => scripted.map_err(failed)?,
        (None, None) => {
            let stream = TcpStream::connect(address.addr).await.map_err(failed)?;
            tcp.apply(&stream)?;
            Socket::Tcp(stream)
        }
    };
    let tracked = TrackedIo {
        io: socket,
        link: watchers.link.clone(),
    };
    #[cfg(feature = "tls")]
    if let Some(tls) = tls {
        let ip = address.unix.is_none().then(|| address.addr.ip());
        let stream = tls.handshake(tracked, ip, &peer).await?;
        let io = Transport::Tls(Box::new(stream));
        return Ok(ConnIo::new(io, peer, watchers));
    }
    Ok(ConnIo::new(Transport::Plain(tracked), peer, watchers))
}

/// The byte stream HTTP/2 runs over.
#[derive(Debug)]
enum Transport {
    Plain(TrackedIo),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TrackedIo>>),
}

impl Transport {
    fn is_tls(&self) -> bool {
        !matches!(self, Transport::Plain(_))
    }
}

/// Forwards a method to the variant in use.
macro_rules! each_transport {
    ($self:expr, $io:ident => $call:expr) => {
        match $self.get_mut() {
            Transport::Plain($io) => $call,
            #[cfg(feature = "tls")]
            Transport::Tls($io) => $call,
        }
    };
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each_transport!(self, io => Pin::new(io).poll_read(cx, buf))
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each_transport!(self, io => Pin::new(io).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each_transport!(self, io => Pin::new(io).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(io) => io.is_write_vectored(),
            #[cfg(feature = "tls")]
            Transport::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_transport!(self, io => Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_transport!(self, io => Pin::new(io).poll_shutdown(cx))
    }
}

/// What a connection's frames have shown, for its liveness monitor and its subchannel.
///
/// Written only by the connection's own reads (the task that drives it); read by the
/// monitor and the subchannel worker. h2 has no hook for received frames, so
/// [`ConnIo`] walks the frame headers of every byte it reads.
#[derive(Debug)]
pub(crate) struct Tap {
    /// The origin of [`Tap::last_read`].
    epoch: tokio::time::Instant,
    /// When bytes were last read, in nanoseconds since `epoch`.
    last_read: AtomicU64,
    /// Bytes read from the server so far.
    bytes: AtomicU64,
    /// HEADERS and DATA frames received: the server answering calls, which is also
    /// what resets a gRPC server's count of ping strikes.
    answers: AtomicU64,
    /// Calls started on the subchannel when bytes were last read.
    started_at_read: AtomicU64,
    /// Bytes written to the server so far.
    written: AtomicU64,
    /// `written` when the connection was found closed (`u64::MAX` while open).
    written_at_close: AtomicU64,
    /// The latest GOAWAY: a graceful shutdown sends two, the second with the real
    /// last stream id.
    goaway: std::sync::Mutex<Option<GoAway>>,
    /// Why the connection was declared dead, if it was.
    ended: OnceLock<String>,
}

/// A GOAWAY the server sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GoAway {
    /// The last stream the server may have processed; streams above it were not.
    pub(crate) last_stream_id: u32,
    /// Its error code (0 = NO_ERROR, 11 = ENHANCE_YOUR_CALM, ...).
    pub(crate) code: u32,
    /// Its debug data, as text (lossy; at most [`GOAWAY_DEBUG_LIMIT`] bytes).
    pub(crate) debug: String,
}

impl GoAway {
    /// The server's ping policing cut the connection (gRFC A8).
    pub(crate) fn too_many_pings(&self) -> bool {
        self.code == u32::from(h2::Reason::ENHANCE_YOUR_CALM) && self.debug == "too_many_pings"
    }
}

/// The debug data kept of a GOAWAY.
const GOAWAY_DEBUG_LIMIT: usize = 256;

impl Default for Tap {
    fn default() -> Self {
        Self {
            epoch: tokio::time::Instant::now(),
            last_read: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            answers: AtomicU64::new(0),
            started_at_read: AtomicU64::new(0),
            written: AtomicU64::new(0),
            written_at_close: AtomicU64::new(u64::MAX),
            goaway: std::sync::Mutex::new(None),
            ended: OnceLock::new(),
        }
    }
}

impl Tap {
    /// When bytes were last read (the connection's start if none were).
    pub(crate) fn last_read(&self) -> tokio::time::Instant {
        self.epoch + std::time::Duration::from_nanos(self.last_read.load(Ordering::Relaxed))
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn answers(&self) -> u64 {
        self.answers.load(Ordering::Relaxed)
    }

    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Marks the connection closed: what was written by then is all that ever will be.
    pub(crate) fn mark_closed(&self) {
        self.written_at_close
            .fetch_min(self.written(), Ordering::Relaxed);
    }

    /// Whether the connection closed before anything written after `written` (a count
    /// of [`Tap::written`] taken earlier) went out: a request sent then never left.
    pub(crate) fn closed_before(&self, written: u64) -> bool {
        self.written_at_close.load(Ordering::Relaxed) <= written
    }

    pub(crate) fn started_at_read(&self) -> u64 {
        self.started_at_read.load(Ordering::Relaxed)
    }

    /// The latest GOAWAY the server sent, if any.
    pub(crate) fn goaway(&self) -> Option<GoAway> {
        self.goaway
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_ended(&self, why: String) {
        let _ = self.ended.set(why);
    }

    /// Why the connection was declared dead, if it was.
    pub(crate) fn ended(&self) -> Option<&str> {
        self.ended.get().map(String::as_str)
    }
}

/// Walks the frames of the server's byte stream (RFC 9113 §4.1: a 9-byte header, then
/// `length` bytes of payload), whatever the read boundaries.
#[derive(Debug, Default)]
struct FrameReader {
    head: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    skip: usize,
    /// The payload of a GOAWAY being read (its first bytes only).
    goaway: Option<Vec<u8>>,
    /// Frames whose header has been read.
    frames: u64,
}

/// What the frames showed, in order.
#[derive(Debug, PartialEq)]
enum FrameEvent {
    /// The first frame's verdict on the server's preface.
    Preface(Result<(), String>),
    /// A HEADERS or DATA frame.
    Answer,
    PingAck,
    GoAway(GoAway),
}

impl FrameReader {
    fn feed(&mut self, mut bytes: &[u8], addr: &str, tls: bool, out: &mut Vec<FrameEvent>) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                if let Some(payload) = self.goaway.as_mut() {
                    let room = (8 + GOAWAY_DEBUG_LIMIT).saturating_sub(payload.len());
                    payload.extend_from_slice(&bytes[..n.min(room)]);
                }
                self.skip -= n;
                bytes = &bytes[n..];
                if self.skip == 0 {
                    self.end_goaway(out);
                }
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < 9 {
                continue;
            }
            self.have = 0;
            self.frames += 1;
            let head = self.head;
            if self.frames == 1 {
                out.push(FrameEvent::Preface(check_preface(&head, addr, tls)));
            }
            let length =
                usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            match head[3] {
                0 | 1 => out.push(FrameEvent::Answer),
                6 if head[4] & 1 == 1 => out.push(FrameEvent::PingAck),
                7 => self.goaway = Some(Vec::with_capacity(length.min(8 + GOAWAY_DEBUG_LIMIT))),
                _ => {}
            }
            self.skip = length;
            if length == 0 {
                self.end_goaway(out);
            }
        }
    }

    fn end_goaway(&mut self, out: &mut Vec<FrameEvent>) {
        let Some(payload) = self.goaway.take() else {
            return;
        };
        // Shorter than its two fixed fields: a malformed frame, which h2 reports.
        if payload.len() < 8 {
            return;
        }
        let word = |i: usize| {
            u32::from_be_bytes([payload[i], payload[i + 1], payload[i + 2], payload[i + 3]])
        };
        out.push(FrameEvent::GoAway(GoAway {
            last_stream_id: word(0) & 0x7fff_ffff,
            code: word(4),
            debug: String::from_utf8_lossy(&payload[8..]).into_owned(),
        }));
    }
}

/// The connection as h2 sees it: watches the server's frames. The first must open its
/// HTTP/2 preface (a SETTINGS frame), reported once on `preface`; then every HEADERS,
/// DATA, PING ACK and GOAWAY is counted on the [`Tap`]. A GOAWAY also takes the
/// connection's [`Link`] down at once, so no new call is routed to it.
///
/// The subchannel is READY only after the preface, as in grpc-go: a server that accepts
/// TCP (and, in TLS 1.3, completes the handshake) may still refuse the connection, e.g.
/// a client certificate it does not trust, and says so only in its first bytes.
#[derive(Debug)]
pub(crate) struct ConnIo {
    io: Transport,
    /// The peer, as messages name it.
    addr: Arc<str>,
    /// Until the preface is judged.
    preface: Option<watch::Sender<PrefaceResult>>,
    reader: FrameReader,
    events: Vec<FrameEvent>,
    tap: Arc<Tap>,
    link: Arc<Link>,
    load: Arc<Load>,
}

impl ConnIo {
    fn new(io: Transport, addr: Arc<str>, watchers: Watchers) -> Self {
        Self {
            io,
            addr,
            preface: Some(watchers.preface),
            reader: FrameReader::default(),
            events: Vec::new(),
            tap: watchers.tap,
            link: watchers.link,
            load: watchers.load,
        }
    }

    fn judge(&mut self, verdict: Result<(), String>) {
        if let Some(report) = self.preface.take() {
            report.send_replace(Some(verdict));
        }
    }

    /// Looks at the bytes a read returned (`new`; empty at end of stream) or its error.
    fn observe(&mut self, read: Result<&[u8], &io::Error>) {
        if !matches!(read, Ok([_, ..])) {
            self.tap.mark_closed();
        }
        let session = if self.io.is_tls() {
            "TLS session"
        } else {
            "connection"
        };
        let addr = self.addr.clone();
        let bytes = match read {
            Err(error) => {
                return self.judge(Err(format!(
                    "{session} with {addr} failed before the server's HTTP/2 preface: {error}"
                )));
            }
            Ok([]) => {
                return self.judge(Err(format!(
                    "{addr} closed the {session} before sending its HTTP/2 preface"
                )));
            }
            Ok(bytes) => bytes,
        };
        self.tap
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.tap
            .started_at_read
            .store(self.load.started(), Ordering::Relaxed);
        // One clock read per read call (not per frame), for the liveness check.
        let since = tokio::time::Instant::now().saturating_duration_since(self.tap.epoch);
        self.tap.last_read.store(
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let tls = self.io.is_tls();
        let mut events = std::mem::take(&mut self.events);
        self.reader.feed(bytes, &addr, tls, &mut events);
        for event in events.drain(..) {
            match event {
                FrameEvent::Preface(verdict) => self.judge(verdict),
                FrameEvent::Answer => {
                    self.tap.answers.fetch_add(1, Ordering::Relaxed);
                }
                // h2 hands ACKs to the connection's PingPong.
                FrameEvent::PingAck => {}
                FrameEvent::GoAway(goaway) => {
                    if goaway.too_many_pings() {
                        tracing::warn!(%addr, "the server sent GOAWAY ENHANCE_YOUR_CALM \"too_many_pings\": its keepalive policy is stricter than this channel's pings");
                    } else {
                        tracing::debug!(%addr, code = goaway.code, debug = %goaway.debug, last_stream_id = goaway.last_stream_id, "GOAWAY");
                    }
                    *self
                        .tap
                        .goaway
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(goaway);
                    self.link.close();
                }
            }
        }
        self.events = events;
    }
}

/// Whether a frame header opens a server preface: a SETTINGS frame (type 4) that is not
/// an ACK, on stream 0 (RFC 9113 §3.4). Else, a hint at what the server speaks.
fn check_preface(head: &[u8; 9], addr: &str, tls: bool) -> Result<(), String> {
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    if head[3] == 4 && head[4] & 1 == 0 && stream == 0 {
        return Ok(());
    }
    let speaks = if !tls && matches!(head[0], 0x15 | 0x16) && head[1] == 3 {
        "TLS (configure Builder::tls)"
    } else if head.starts_with(b"HTTP/") {
        "HTTP/1"
    } else {
        "something else"
    };
    Err(format!(
        "{addr} did not answer with an HTTP/2 preface: it speaks {speaks}"
    ))
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        let addr = self.addr.clone();
        self.judge(Err(format!(
            "connection to {addr} closed before the server's HTTP/2 preface"
        )));
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        match &result {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if !new.is_empty() || buf.remaining() > 0 {
                    self.observe(Ok(new));
                }
            }
            Poll::Ready(Err(error)) => self.observe(Err(error)),
            Poll::Pending => {}
        }
        result
    }
}

impl ConnIo {
    fn wrote(&self, result: &Poll<io::Result<usize>>) {
        match result {
            Poll::Ready(Ok(n)) => {
                self.tap.written.fetch_add(*n as u64, Ordering::Relaxed);
            }
            Poll::Ready(Err(_)) => self.tap.mark_closed(),
            Poll::Pending => {}
        }
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The socket under a connection: TCP, or a Unix domain socket.
#[derive(Debug)]
enum Socket {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
    /// One end of an in-memory pipe, in unit tests (`subchannel::scripted`).
    #[cfg(test)]
    Scripted(tokio::io::DuplexStream),
}

impl Socket {
    /// A unit test's in-memory connection to `addr`, if it serves one there.
    #[cfg(test)]
    fn scripted(addr: std::net::SocketAddr) -> Option<io::Result<Self>> {
        super::scripted::connect(addr).map(|io| io.map(Socket::Scripted))
    }

    #[cfg(not(test))]
    fn scripted(_: std::net::SocketAddr) -> Option<io::Result<Self>> {
        None
    }

    #[cfg(unix)]
    async fn unix(path: &Path) -> io::Result<Self> {
        tokio::net::UnixStream::connect(path)
            .await
            .map(Socket::Unix)
    }

    #[cfg(not(unix))]
    async fn unix(_: &Path) -> io::Result<Self> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "Unix domain sockets exist only on Unix",
        ))
    }
}

/// Forwards a method to the socket in use.
macro_rules! each_socket {
    ($self:expr, $io:ident => $call:expr) => {
        match $self {
            Socket::Tcp($io) => $call,
            #[cfg(unix)]
            Socket::Unix($io) => $call,
            #[cfg(test)]
            Socket::Scripted($io) => $call,
        }
    };
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each_socket!(self.get_mut(), io => Pin::new(io).poll_read(cx, buf))
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each_socket!(self.get_mut(), io => Pin::new(io).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each_socket!(self.get_mut(), io => Pin::new(io).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        each_socket!(self, io => io.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_socket!(self.get_mut(), io => Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_socket!(self.get_mut(), io => Pin::new(io).poll_shutdown(cx))
    }
}

/// A socket that marks its [`Link`] down on end of stream, on an IO error and when
/// it is dropped (which happens when the HTTP/2 connection ends for any reason: GOAWAY,
/// a failed liveness check, the subchannel letting go).
#[derive(Debug)]
pub(crate) struct TrackedIo {
    io: Socket,
    link: Arc<Link>,
}

impl Drop for TrackedIo {
    fn drop(&mut self) {
        self.link.close();
    }
}

impl TrackedIo {
    fn track<T>(&self, result: &Poll<io::Result<T>>) {
        if let Poll::Ready(Err(_)) = result {
            self.link.close();
        }
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        let end_of_stream = buf.filled().len() == before && buf.remaining() > 0;
        if let Poll::Ready(Ok(())) = result
            && end_of_stream
        {
            // The peer closed the connection.
            self.link.close();
        }
        self.track(&result);
        result
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.track(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.track(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.io).poll_flush(cx);
        self.track(&result);
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PEER: &str = "127.0.0.1:9";

    fn address(addr: SocketAddr) -> Address {
        Address::new(addr)
    }

    async fn open(
        addr: SocketAddr,
        link: Arc<Link>,
    ) -> (ConnIo, watch::Receiver<PrefaceResult>, Arc<Tap>) {
        let (preface_tx, preface) = watch::channel(None);
        let tap = Arc::new(Tap::default());
        let watchers = Watchers {
            link,
            preface: preface_tx,
            tap: tap.clone(),
            load: Arc::new(Load::new()),
        };
        let io = connect(
            &address(addr),
            TcpOptions::default(),
            watchers,
            #[cfg(feature = "tls")]
            None,
        )
        .await
        .unwrap();
        (io, preface, tap)
    }

    #[tokio::test]
    async fn link_goes_down_when_the_peer_closes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let link = Arc::new(Link::default());
        let (mut io, mut preface, _) = open(addr, link.clone()).await;
        let (mut server_side, _) = listener.accept().await.unwrap();
        assert!(link.is_up());

        // Read in the background as h2 would; the peer's close ends the read.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let _ = io.read(&mut buf).await;
            io
        });
        server_side.shutdown().await.unwrap();
        drop(server_side);
        link.closed().await;
        assert!(!link.is_up());
        // It closed without a word of HTTP/2: that is what the subchannel hears.
        let verdict = preface.wait_for(Option::is_some).await.unwrap().clone();
        let why = verdict.unwrap().unwrap_err();
        assert!(why.contains("before sending its HTTP/2 preface"), "{why}");
        drop(reader.await.unwrap());
    }

    #[tokio::test]
    async fn a_settings_frame_split_over_reads_is_a_preface() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mut io, preface, _) = open(addr, Arc::new(Link::default())).await;
        let (mut server_side, _) = listener.accept().await.unwrap();
        // An empty SETTINGS frame: length 0, type 4, no flags, stream 0; sent in two parts.
        let frame = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
        let mut buf = [0u8; 16];
        server_side.write_all(&frame[..4]).await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 4);
        assert!(preface.borrow().is_none(), "judged on 4 bytes");
        server_side.write_all(&frame[4..]).await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 5);
        assert_eq!(*preface.borrow(), Some(Ok(())));
    }

    #[tokio::test]
    async fn a_goaway_takes_the_link_down_and_is_recorded() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let link = Arc::new(Link::default());
        let (mut io, _, tap) = open(addr, link.clone()).await;
        let (mut server_side, _) = listener.accept().await.unwrap();
        let mut bytes = vec![0u8, 0, 0, 4, 0, 0, 0, 0, 0];
        bytes.extend(goaway(3, 11, b"too_many_pings"));
        server_side.write_all(&bytes).await.unwrap();
        let mut buf = [0u8; 64];
        let mut read = 0;
        while read < bytes.len() {
            read += io.read(&mut buf).await.unwrap();
        }
        assert!(!link.is_up());
        let seen = tap.goaway().expect("a GOAWAY");
        assert_eq!(seen.last_stream_id, 3);
        assert!(seen.too_many_pings(), "{seen:?}");
        assert_eq!(tap.bytes(), bytes.len() as u64);
    }

    fn goaway(last: u32, code: u32, debug: &[u8]) -> Vec<u8> {
        let len = 8 + debug.len();
        let mut frame = vec![0, (len >> 8) as u8, len as u8, 7, 0, 0, 0, 0, 0];
        frame.extend(last.to_be_bytes());
        frame.extend(code.to_be_bytes());
        frame.extend(debug);
        frame
    }

    #[test]
    fn frames_are_followed_across_any_read_boundaries() {
        let mut stream = vec![0u8, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        stream.extend([0, 0, 3, 1, 4, 0, 0, 0, 1, 0x88, 0x5f, 0x8b]); // HEADERS
        stream.extend([0, 0, 2, 0, 0, 0, 0, 0, 1, 7, 7]); // DATA
        stream.extend([0, 0, 8, 6, 1, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]); // PING ACK
        stream.extend([0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]); // PING
        stream.extend(goaway(1, 0, b""));
        let expected = vec![
            FrameEvent::Preface(Ok(())),
            FrameEvent::Answer,
            FrameEvent::Answer,
            FrameEvent::PingAck,
            FrameEvent::GoAway(GoAway {
                last_stream_id: 1,
                code: 0,
                debug: String::new(),
            }),
        ];
        for chunk in [1, 2, 5, 9, 10, 64] {
            let mut reader = FrameReader::default();
            let mut events = Vec::new();
            for part in stream.chunks(chunk) {
                reader.feed(part, PEER, false, &mut events);
            }
            assert_eq!(events, expected, "chunks of {chunk}");
        }
    }

    #[test]
    fn only_a_settings_frame_on_stream_zero_opens_a_preface() {
        assert_eq!(
            check_preface(&[0, 0, 6, 4, 0, 0, 0, 0, 0], PEER, false),
            Ok(())
        );
        // A SETTINGS ACK, another frame type, another stream: not a preface.
        for head in [
            [0, 0, 0, 4, 1, 0, 0, 0, 0],
            [0, 0, 8, 6, 0, 0, 0, 0, 0],
            [0, 0, 6, 4, 0, 0, 0, 0, 1],
        ] {
            assert!(check_preface(&head, PEER, false).is_err(), "{head:?}");
        }
        // A TLS alert record to a plaintext client says what to do.
        let tls = check_preface(&[0x15, 3, 3, 0, 2, 2, 40, 0, 0], PEER, false).unwrap_err();
        assert!(tls.contains("Builder::tls"), "{tls}");
        let http1 = check_preface(b"HTTP/1.1 ", PEER, false).unwrap_err();
        assert!(http1.contains("HTTP/1"), "{http1}");
    }
}
