//! Network faults on loopback: a TCP relay that can freeze, and raw HTTP/2 servers that
//! misbehave in ways a well-behaved gRPC server never does.
//!
//! - [`FreezableRelay`] forwards TCP to a backend and can stop forwarding in both
//!   directions while keeping every socket open: what a partition or a hung middlebox
//!   looks like to a client (TCP alone notices nothing for minutes).
//! - [`RawH2Server`] speaks HTTP/2 with the `h2` crate and answers every stream as its
//!   [`RawBehaviour`] says: refuse streams (RST_STREAM REFUSED_STREAM), or send its
//!   SETTINGS and close the connection at once (a flapping server).

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A TCP relay on 127.0.0.1 in front of one backend; see the module docs.
#[derive(Debug)]
pub struct FreezableRelay {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl FreezableRelay {
    /// Listens on 127.0.0.1 and forwards every connection to `backend`.
    pub async fn start(backend: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (frozen, watch) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let watch = watch.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        copy(client_read, server_write, watch.clone()),
                        copy(server_read, client_write, watch),
                    );
                });
            }
        });
        Ok(Self { addr, frozen, task })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding in both directions; sockets stay open and unread.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Forwards again.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for FreezableRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies one direction, holding still while frozen.
async fn copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // Frozen while waiting for bytes: stop reading until thawed.
            _ = frozen.wait_for(|f| *f) => continue,
        };
        // Bytes read just before a freeze are held, not delivered, until the thaw.
        if frozen.wait_for(|f| !*f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// How a [`RawH2Server`] treats what it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RawBehaviour {
    /// Refuse the first `n` streams (over all connections) with RST_STREAM
    /// REFUSED_STREAM, then answer every stream with OK and one empty message (what
    /// `EmptyCall` returns).
    RefuseStreams(u64),
    /// Send SETTINGS and close every connection at once, answering nothing.
    Flap,
}

/// A raw HTTP/2 server on 127.0.0.1; see the module docs.
#[derive(Debug)]
pub struct RawH2Server {
    addr: SocketAddr,
    counters: Arc<RawCounters>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct RawCounters {
    connections: watch::Sender<u64>,
    streams: AtomicU64,
    accepted_at: std::sync::Mutex<Vec<tokio::time::Instant>>,
}

impl RawH2Server {
    /// Listens on 127.0.0.1.
    pub async fn start(behaviour: RawBehaviour) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(RawCounters {
            connections: watch::Sender::new(0),
            streams: AtomicU64::new(0),
            accepted_at: std::sync::Mutex::default(),
        });
        let shared = counters.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                shared
                    .accepted_at
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(tokio::time::Instant::now());
                shared.connections.send_modify(|n| *n += 1);
                tokio::spawn(serve(socket, behaviour, shared.clone()));
            }
        });
        Ok(Self {
            addr,
            counters,
            task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        *self.counters.connections.borrow()
    }

    /// Waits until at least `n` connections have been accepted.
    pub async fn wait_connections(&self, n: u64) {
        let mut accepted = self.counters.connections.subscribe();
        let _ = accepted.wait_for(|&c| c >= n).await;
    }

    /// When each connection was accepted.
    pub fn accepted_at(&self) -> Vec<tokio::time::Instant> {
        self.counters
            .accepted_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Streams (requests) received so far, refused or answered.
    pub fn streams(&self) -> u64 {
        self.counters.streams.load(Ordering::Relaxed)
    }
}

impl Drop for RawH2Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(socket: TcpStream, behaviour: RawBehaviour, counters: Arc<RawCounters>) {
    let Ok(mut connection) = h2::server::handshake(socket).await else {
        return;
    };
    if behaviour == RawBehaviour::Flap {
        // The handshake queued our SETTINGS; one poll writes them, then the socket
        // closes with the connection.
        let _ =
            tokio::time::timeout(std::time::Duration::from_millis(50), connection.accept()).await;
        return;
    }
    let RawBehaviour::RefuseStreams(refuse) = behaviour else {
        return;
    };
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        let n = counters.streams.fetch_add(1, Ordering::Relaxed);
        if n < refuse {
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            continue;
        }
        tokio::spawn(async move {
            // Read the request to its end, then answer OK with one empty message.
            let mut body = request.into_body();
            while let Some(Ok(data)) = body.data().await {
                let _ = body.flow_control().release_capacity(data.len());
            }
            let response = http::Response::builder()
                .header("content-type", "application/grpc")
                .body(())
                .unwrap_or_default();
            if let Ok(mut stream) = respond.send_response(response, false) {
                // A gRPC message frame: not compressed, length 0.
                let _ = stream.send_data(bytes::Bytes::from_static(&[0; 5]), false);
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let _ = stream.send_trailers(trailers);
            }
        });
    }
}
