//! A scripted transport, for unit tests only: a connection to a registered address is
//! an in-memory pipe whose other end the test serves. The whole call path (control
//! task, worker, HTTP/2 connection, attempt driver) then runs under paused time, with
//! every answer of the server chosen by the test (see `channel::tests`).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;

type Routes = HashMap<SocketAddr, mpsc::UnboundedSender<DuplexStream>>;

static ROUTES: Mutex<Option<Routes>> = Mutex::new(None);

/// Connections to `addr` from now on: each one's server end. Tests in one process
/// share the table, so each uses its own address.
pub(crate) fn listen(addr: SocketAddr) -> mpsc::UnboundedReceiver<DuplexStream> {
    let (tx, rx) = mpsc::unbounded_channel();
    ROUTES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(HashMap::new)
        .insert(addr, tx);
    rx
}

/// The client end of a new connection to `addr`, if a test listens there: refused
/// once the test has stopped listening.
pub(crate) fn connect(addr: SocketAddr) -> Option<io::Result<DuplexStream>> {
    let routes = ROUTES.lock().unwrap_or_else(PoisonError::into_inner);
    let route = routes.as_ref()?.get(&addr)?;
    let (client, server) = tokio::io::duplex(1 << 20);
    Some(match route.send(server) {
        Ok(()) => Ok(client),
        Err(_) => Err(io::ErrorKind::ConnectionRefused.into()),
    })
}
