//! The connector each subchannel hands to tonic, and the IO wrapper that tells the
//! subchannel the moment its connection ends.

use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

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

/// Connects one subchannel's single TCP connection.
///
/// tonic's `Channel` reconnects on its own when its connection drops; this connector
/// refuses the second connect so that reconnection stays with the subchannel worker,
/// which applies gRPC's connection backoff and keeps the state the picker sees truthful.
#[derive(Debug)]
pub(crate) struct Connector {
    addr: SocketAddr,
    link: Option<Arc<Link>>,
}

impl Connector {
    pub(crate) fn new(addr: SocketAddr, link: Arc<Link>) -> Self {
        Self {
            addr,
            link: Some(link),
        }
    }
}

type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<TokioIo<TrackedIo>>> + Send>>;

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<TrackedIo>;
    type Error = io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> ConnectFuture {
        let addr = self.addr;
        match self.link.take() {
            Some(link) => Box::pin(async move {
                let stream = TcpStream::connect(addr)
                    .await
                    .map_err(|e| io::Error::new(e.kind(), format!("connect to {addr}: {e}")))?;
                stream.set_nodelay(true)?;
                Ok(TokioIo::new(TrackedIo { io: stream, link }))
            }),
            None => Box::pin(std::future::ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                ConnectionClosed(addr),
            )))),
        }
    }
}

/// A TCP stream that marks its [`Link`] down on end of stream, on an IO error and when
/// hyper drops it (which it does when the HTTP/2 connection ends for any reason:
/// GOAWAY, keepalive timeout, the channel being dropped).
#[derive(Debug)]
pub(crate) struct TrackedIo {
    io: TcpStream,
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
    use tokio::io::AsyncWriteExt;
    use tower::Service;

    #[tokio::test]
    async fn link_goes_down_when_the_peer_closes_and_connector_is_one_shot() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let link = Arc::new(Link::default());
        let mut connector = Connector::new(addr, link.clone());
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
            let _ = tokio::io::AsyncReadExt::read(&mut io, &mut buf).await;
            io
        });
        server_side.shutdown().await.unwrap();
        drop(server_side);
        link.closed().await;
        assert!(!link.is_up());
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
}
