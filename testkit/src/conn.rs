//! Connection bookkeeping that lets [`Backend::kill`](super::Backend::kill) cut every
//! accepted connection at once, although tonic serves each one on a task of its own.

use std::collections::HashMap;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use futures_core::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::lock;

/// Duplicates of the accepted sockets, so `kill` can shut them down under hyper's feet.
pub(super) struct Conns {
    next_id: AtomicU64,
    /// `None` once killed: late connections are then closed instead of registered.
    open: Mutex<Option<HashMap<u64, std::net::TcpStream>>>,
}

impl Default for Conns {
    fn default() -> Self {
        let open = Mutex::new(Some(HashMap::new()));
        Self {
            next_id: AtomicU64::new(0),
            open,
        }
    }
}

impl Conns {
    /// Shuts down every registered connection (both directions) and refuses later ones.
    pub(super) fn close_all(&self) {
        let open = lock(&self.open).take().unwrap_or_default();
        for stream in open.into_values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Accepts connections and registers them in `Conns`.
pub(super) struct Incoming {
    listener: TcpListener,
    conns: Arc<Conns>,
}

impl Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let (stream, _) = ready!(self.listener.poll_accept(cx))?;
        Poll::Ready(Some(self.register(stream)))
    }
}

impl Incoming {
    pub(super) fn new(listener: TcpListener, conns: Arc<Conns>) -> Self {
        Self { listener, conns }
    }

    fn register(&self, stream: TcpStream) -> io::Result<Conn> {
        stream.set_nodelay(true)?;
        let stream = stream.into_std()?;
        let dup = stream.try_clone()?;
        let id = self.conns.next_id.fetch_add(1, Ordering::Relaxed);
        let killed = || io::Error::new(io::ErrorKind::ConnectionAborted, "backend killed");
        lock(&self.conns.open)
            .as_mut()
            .ok_or_else(killed)?
            .insert(id, dup);
        let conns = self.conns.clone();
        Ok(Conn {
            io: TcpStream::from_std(stream)?,
            id,
            conns,
        })
    }
}

/// An accepted connection; unregisters its duplicate when hyper drops it.
pub(super) struct Conn {
    io: TcpStream,
    id: u64,
    conns: Arc<Conns>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(open) = lock(&self.conns.open).as_mut() {
            open.remove(&self.id);
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
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
