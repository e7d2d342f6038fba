//! The connector each subchannel hands to tonic, and the IO wrappers that tell the
//! subchannel when the server has answered with HTTP/2 and the moment its connection ends.
//!
//! The stack of one connection, from the socket up: `TcpStream` (or `UnixStream` for a
//! Unix socket address), [`TrackedIo`] (end of the connection), TLS when configured,
//! [`ConnIo`] (the server's HTTP/2 preface), hyper.

use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

use crate::resolver::Address;

/// The liveness of one HTTP/2 connection, shared by its IO, its subchannel worker and
/// the call path (which skips a subchannel whose link is down before the picker is rebuilt).
#[derive(Debug, Default)]
pub(crate) struct Link {
    down: AtomicBool,
    notify: Notify,
}

impl Link {
    pub(crate) fn is_up(&self) -> bool {
        !self.down.load(Ordering::Acquire)
    }

    pub(crate) fn close(&self) {
        if !self.down.swap(true, Ordering::AcqRel) {
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

/// A call was routed to a subchannel whose connection had already ended, so tonic asked
/// for a new connection. Subchannels reconnect in their own worker, with backoff, never
/// from inside a call: the request never left the client.
#[derive(Debug, thiserror::Error)]
#[error("connection to {0} is closed")]
pub(crate) struct ConnectionClosed(pub(crate) SocketAddr);

/// What the server's first bytes said: `Ok` once they opened an HTTP/2 SETTINGS frame,
/// else why the connection is no good. `None` until then.
pub(crate) type PrefaceResult = Option<Result<(), String>>;

/// Connects one subchannel's single connection: TCP, then TLS when configured.
///
/// tonic's `Channel` reconnects on its own when its connection drops; this connector
/// refuses the second connect so that reconnection stays with the subchannel worker,
/// which applies gRPC's connection backoff and keeps the state the picker sees truthful.
#[derive(Debug)]
pub(crate) struct Connector {
    addr: SocketAddr,
    /// A Unix socket to connect to instead of `addr`.
    unix: Option<Arc<Path>>,
    /// The address as errors name it.
    peer: Arc<str>,
    once: Option<(Arc<Link>, watch::Sender<PrefaceResult>)>,
    /// The connection's link, kept to close it when tonic asks for a second connection:
    /// that only happens once hyper has stopped taking requests on the first, as after
    /// a graceful GOAWAY, while the socket itself stays open until its streams finish.
    link: Arc<Link>,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsConnect>,
}

impl Connector {
    /// A connector whose connection reports its end on `link` and what the server's
    /// first bytes said on `preface`.
    pub(crate) fn new(
        address: &Address,
        link: Arc<Link>,
        preface: watch::Sender<PrefaceResult>,
    ) -> Self {
        Self {
            addr: address.addr,
            unix: address.unix.clone(),
            peer: address.to_string().into(),
            once: Some((link.clone(), preface)),
            link,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Runs a TLS handshake over the TCP connection before handing it to hyper.
    #[cfg(feature = "tls")]
    pub(crate) fn tls(mut self, tls: Option<crate::tls::TlsConnect>) -> Self {
        self.tls = tls;
        self
    }
}

type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<TokioIo<ConnIo>>> + Send>>;

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<ConnIo>;
    type Error = io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> ConnectFuture {
        let addr = self.addr;
        let Some((link, preface)) = self.once.take() else {
            // The connection no longer takes requests (GOAWAY, or it ended): the
            // subchannel must stop being picked and reconnect, with backoff.
            self.link.close();
            return Box::pin(std::future::ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                ConnectionClosed(addr),
            ))));
        };
        #[cfg(feature = "tls")]
        let tls = self.tls.clone();
        let (unix, peer) = (self.unix.clone(), self.peer.clone());
        Box::pin(async move {
            let failed = |e: io::Error| io::Error::new(e.kind(), format!("connect to {peer}: {e}"));
            let socket = match &unix {
                Some(path) => Socket::unix(path).await.map_err(failed)?,
                None => {
                    let stream = TcpStream::connect(addr).await.map_err(failed)?;
                    stream.set_nodelay(true)?;
                    Socket::Tcp(stream)
                }
            };
            let tracked = TrackedIo { io: socket, link };
            #[cfg(feature = "tls")]
            if let Some(tls) = tls {
                let ip = unix.is_none().then(|| addr.ip());
                let stream = tls.handshake(tracked, ip, &peer).await?;
                let io = Transport::Tls(Box::new(stream));
                return Ok(TokioIo::new(ConnIo::new(io, peer, preface)));
            }
            let io = Transport::Plain(tracked);
            Ok(TokioIo::new(ConnIo::new(io, peer, preface)))
        })
    }
}

/// The byte stream hyper speaks HTTP/2 over.
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

/// The connection as hyper sees it: watches the server's first bytes, which must open
/// its HTTP/2 preface (a SETTINGS frame), and reports what they said once.
///
/// The subchannel is READY only after that, as in grpc-go: a server that accepts TCP
/// (and, in TLS 1.3, completes the handshake) may still refuse the connection, e.g. a
/// client certificate it does not trust, and says so only in its first bytes.
#[derive(Debug)]
pub(crate) struct ConnIo {
    io: Transport,
    /// Until the preface is judged.
    preface: Option<PrefaceCheck>,
}

#[derive(Debug)]
struct PrefaceCheck {
    addr: Arc<str>,
    /// The first bytes of a frame header seen so far.
    head: [u8; 9],
    seen: usize,
    report: watch::Sender<PrefaceResult>,
}

impl ConnIo {
    fn new(io: Transport, addr: Arc<str>, report: watch::Sender<PrefaceResult>) -> Self {
        Self {
            io,
            preface: Some(PrefaceCheck {
                addr,
                head: [0; 9],
                seen: 0,
                report,
            }),
        }
    }

    fn judge(&mut self, verdict: Result<(), String>) {
        if let Some(check) = self.preface.take() {
            check.report.send_replace(Some(verdict));
        }
    }

    /// Looks at the bytes a read returned (`new`; empty at end of stream) or its error.
    fn observe(&mut self, read: Result<&[u8], &io::Error>) {
        let tls = self.io.is_tls();
        let Some(check) = self.preface.as_mut() else {
            return;
        };
        let addr = check.addr.clone();
        let session = if tls { "TLS session" } else { "connection" };
        let verdict = match read {
            Err(error) => Err(format!(
                "{session} with {addr} failed before the server's HTTP/2 preface: {error}"
            )),
            Ok([]) => Err(format!(
                "{addr} closed the {session} before sending its HTTP/2 preface"
            )),
            Ok(bytes) => {
                let take = bytes.len().min(check.head.len() - check.seen);
                check.head[check.seen..check.seen + take].copy_from_slice(&bytes[..take]);
                check.seen += take;
                if check.seen < check.head.len() {
                    return;
                }
                check_preface(&check.head, &addr, tls)
            }
        };
        self.judge(verdict);
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
        if let Some(check) = &self.preface {
            let addr = check.addr.clone();
            self.judge(Err(format!(
                "connection to {addr} closed before the server's HTTP/2 preface"
            )));
        }
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
        if self.preface.is_some() {
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
        }
        result
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
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
}

impl Socket {
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
/// hyper drops it (which it does when the HTTP/2 connection ends for any reason:
/// GOAWAY, keepalive timeout, the channel being dropped).
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower::Service;

    const PEER: &str = "127.0.0.1:9";

    fn address(addr: SocketAddr) -> Address {
        Address::new(addr)
    }

    #[tokio::test]
    async fn link_goes_down_when_the_peer_closes_and_connector_is_one_shot() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let link = Arc::new(Link::default());
        let (preface_tx, mut preface) = watch::channel(None);
        let mut connector = Connector::new(&address(addr), link.clone(), preface_tx);
        let io = connector
            .call(http::Uri::from_static("http://x"))
            .await
            .unwrap();
        let (mut server_side, _) = listener.accept().await.unwrap();
        assert!(link.is_up());

        // Read in the background as hyper would; the peer's close ends the read.
        let reader = tokio::spawn(async move {
            let mut io = io.into_inner();
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

        let err = connector
            .call(http::Uri::from_static("http://x"))
            .await
            .unwrap_err();
        let inner = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<ConnectionClosed>());
        assert!(inner.is_some(), "{err}");
    }

    #[tokio::test]
    async fn a_settings_frame_split_over_reads_is_a_preface() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (preface_tx, preface) = watch::channel(None);
        let mut connector = Connector::new(&address(addr), Arc::new(Link::default()), preface_tx);
        let mut io = connector
            .call(http::Uri::from_static("http://x"))
            .await
            .unwrap()
            .into_inner();
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
