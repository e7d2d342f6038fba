//! An in-process authoritative DNS server on loopback, for tests and examples.
//!
//! [`DnsServer`] answers A, AAAA and SRV queries from a record table the test changes
//! while it runs, over UDP and TCP on one `127.0.0.1` port, speaking the DNS wire format
//! (RFC 1035) through `hickory-proto`. It can [stop](DnsServer::stop) like a crashed
//! server (its sockets close) and [restart](DnsServer::restart) on the same port.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use tonic_balancer_testkit::dns::{DnsServer, Srv};
//!
//! let dns = DnsServer::start().await?;
//! dns.set_addrs("orders.test", ["127.0.0.1".parse().unwrap()], Duration::from_secs(1));
//! dns.set_srv("_grpc._tcp.orders.test", [Srv::new(10, 1, 50051, "orders.test")], Duration::from_secs(1));
//! let target = format!("dns://{}/orders.test:50051", dns.addr());
//! # Ok(()) }
//! ```
//!
//! Answers: the records of the asked type (`ANY` gets all), with the TTL they were set
//! with; a name with records of other types only gets an empty answer (NODATA); a name
//! with none gets NXDOMAIN. Names match without regard to case or a trailing dot. UDP
//! answers larger than the query allows (512 bytes, or its EDNS size) are truncated, so
//! the client asks again over TCP.

use hickory_proto::op::{
    DEFAULT_MAX_PAYLOAD_LEN, Edns, Message, MessageType, OpCode, ResponseCode,
};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

/// The most a UDP answer may carry when the query does not say (RFC 1035).
const CLASSIC_UDP_SIZE: usize = 512;

/// One SRV record: where a service instance listens (RFC 2782).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Srv {
    /// Lower is preferred.
    pub priority: u16,
    /// Relative share within a priority.
    pub weight: u16,
    /// The port of the instance.
    pub port: u16,
    /// The host name of the instance (its A/AAAA records), or `"."` for "not available".
    pub target: String,
}

impl Srv {
    /// An SRV record.
    pub fn new(priority: u16, weight: u16, port: u16, target: impl Into<String>) -> Self {
        Self {
            priority,
            weight,
            port,
            target: target.into(),
        }
    }
}

/// An authoritative DNS server for a record table the test controls; see the
/// [module docs](self).
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    run: Mutex<Option<Run>>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Records by normalised name (lower case, no trailing dot).
    zone: Mutex<HashMap<String, Vec<(u32, RData)>>>,
    queries: AtomicU64,
}

/// The serving tasks; aborting them closes the sockets.
#[derive(Debug)]
struct Run {
    udp: JoinHandle<()>,
    tcp: JoinHandle<()>,
}

impl Run {
    fn stop(&self) {
        self.udp.abort();
        self.tcp.abort();
    }
}

impl DnsServer {
    /// Binds UDP and TCP on one free port of `127.0.0.1` and starts answering.
    ///
    /// # Errors
    /// The bind errors, if no port was free for both protocols after a few tries.
    pub async fn start() -> io::Result<DnsServer> {
        let mut last_error = None;
        // The UDP port must also be free for TCP; another process may hold it.
        for _ in 0..20 {
            let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
            let addr = udp.local_addr()?;
            match TcpListener::bind(addr).await {
                Ok(tcp) => {
                    let shared = Arc::new(Shared::default());
                    let run = serve(udp, tcp, &shared);
                    return Ok(DnsServer {
                        addr,
                        shared,
                        run: Mutex::new(Some(run)),
                    });
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("no free port")))
    }

    /// Where it listens (UDP and TCP): the server part of `dns://ADDR/name:port`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the A and AAAA records of `name` (its SRV records stay). An empty list
    /// leaves the name with its other records, or none (then NXDOMAIN). The TTL is
    /// served in whole seconds.
    pub fn set_addrs<I>(&self, name: &str, ips: I, ttl: Duration)
    where
        I: IntoIterator<Item = IpAddr>,
    {
        let ttl = ttl_secs(ttl);
        let records = ips.into_iter().map(|ip| {
            let data = match ip {
                IpAddr::V4(ip) => RData::A(A(ip)),
                IpAddr::V6(ip) => RData::AAAA(AAAA(ip)),
            };
            (ttl, data)
        });
        self.replace(name, &[RecordType::A, RecordType::AAAA], records);
    }

    /// Replaces the SRV records of `name` (its A and AAAA records stay).
    ///
    /// # Panics
    /// If a record's target is not a valid DNS name (test input).
    pub fn set_srv<I>(&self, name: &str, records: I, ttl: Duration)
    where
        I: IntoIterator<Item = Srv>,
    {
        let ttl = ttl_secs(ttl);
        let records: Vec<_> = records
            .into_iter()
            .map(|srv| {
                let target = fqdn(&srv.target);
                let data = RData::SRV(SRV::new(srv.priority, srv.weight, srv.port, target));
                (ttl, data)
            })
            .collect();
        self.replace(name, &[RecordType::SRV], records);
    }

    /// Removes every record of `name`: it gets NXDOMAIN from now on.
    pub fn remove(&self, name: &str) {
        lock(&self.shared.zone).remove(&normalise(name));
    }

    /// How many queries it has answered.
    pub fn queries(&self) -> u64 {
        self.shared.queries.load(Ordering::Relaxed)
    }

    /// Closes its sockets, as a crashed server: queries go unanswered (or are refused by
    /// the OS). The record table is kept for [`DnsServer::restart`].
    pub async fn stop(&self) {
        let run = lock(&self.run).take();
        if let Some(run) = run {
            run.stop();
            let _ = run.udp.await;
            let _ = run.tcp.await;
        }
    }

    /// Serves again on the same address with the same records. No-op if running.
    ///
    /// # Errors
    /// If the port was taken in the meantime.
    pub async fn restart(&self) -> io::Result<()> {
        if lock(&self.run).is_some() {
            return Ok(());
        }
        let udp = UdpSocket::bind(self.addr).await?;
        let tcp = TcpListener::bind(self.addr).await?;
        let mut run = lock(&self.run);
        if run.is_none() {
            *run = Some(serve(udp, tcp, &self.shared));
        }
        Ok(())
    }

    fn replace<I>(&self, name: &str, types: &[RecordType], records: I)
    where
        I: IntoIterator<Item = (u32, RData)>,
    {
        let mut zone = lock(&self.shared.zone);
        let key = normalise(name);
        let entry = zone.entry(key.clone()).or_default();
        entry.retain(|(_, data)| !types.contains(&data.record_type()));
        entry.extend(records);
        if entry.is_empty() {
            zone.remove(&key);
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(run) = lock(&self.run).take() {
            run.stop();
        }
    }
}

fn serve(udp: UdpSocket, tcp: TcpListener, shared: &Arc<Shared>) -> Run {
    let udp = tokio::spawn(serve_udp(udp, shared.clone()));
    let tcp = tokio::spawn(serve_tcp(tcp, shared.clone()));
    Run { udp, tcp }
}

async fn serve_udp(socket: UdpSocket, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(answer) = shared.answer(&buf[..len], true) {
            let _ = socket.send_to(&answer, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    // Dropped with this task when the server stops: aborts every connection.
    let mut conns = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        conns.spawn(serve_tcp_conn(stream, shared.clone()));
        while conns.try_join_next().is_some() {}
    }
}

/// DNS over TCP: each message is preceded by its length in two bytes (RFC 1035 4.2.2).
async fn serve_tcp_conn(mut stream: TcpStream, shared: Arc<Shared>) {
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut query).await.is_err() {
            return;
        }
        let Some(answer) = shared.answer(&query, false) else {
            continue;
        };
        let Ok(len) = u16::try_from(answer.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(answer.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&answer);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

// === impl Shared ===

impl Shared {
    /// The encoded answer to an encoded query; `None` for what deserves no answer (not
    /// a query, or not decodable).
    fn answer(&self, query: &[u8], udp: bool) -> Option<Vec<u8>> {
        let request = Message::from_vec(query).ok()?;
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        self.queries.fetch_add(1, Ordering::Relaxed);
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.authoritative = true;
        response.add_queries(request.queries.iter().cloned());
        let max_size = match &request.edns {
            Some(edns) => {
                let mut ours = Edns::new();
                ours.set_max_payload(DEFAULT_MAX_PAYLOAD_LEN);
                response.set_edns(ours);
                usize::from(edns.max_payload()).max(CLASSIC_UDP_SIZE)
            }
            None => CLASSIC_UDP_SIZE,
        };
        match (request.metadata.op_code, request.queries.as_slice()) {
            (OpCode::Query, [question]) => {
                let zone = lock(&self.zone);
                match zone.get(&normalise(&question.name().to_ascii())) {
                    None => response.metadata.response_code = ResponseCode::NXDomain,
                    Some(records) => {
                        let wanted = question.query_type();
                        for (ttl, data) in records {
                            if wanted == RecordType::ANY || data.record_type() == wanted {
                                response.add_answer(Record::from_rdata(
                                    question.name().clone(),
                                    *ttl,
                                    data.clone(),
                                ));
                            }
                        }
                    }
                }
            }
            (OpCode::Query, _) => response.metadata.response_code = ResponseCode::FormErr,
            _ => response.metadata.response_code = ResponseCode::NotImp,
        }
        let bytes = response.to_vec().ok()?;
        if udp && bytes.len() > max_size {
            return response.truncate().to_vec().ok();
        }
        Some(bytes)
    }
}

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn fqdn(name: &str) -> Name {
    let mut name =
        Name::from_ascii(name).unwrap_or_else(|e| panic!("{name:?} is not a valid DNS name: {e}"));
    name.set_fqdn(true);
    name
}

fn ttl_secs(ttl: Duration) -> u32 {
    u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn query(name: &str, rtype: RecordType, edns: bool) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        if edns {
            let mut edns = Edns::new();
            edns.set_max_payload(DEFAULT_MAX_PAYLOAD_LEN);
            message.set_edns(edns);
        }
        message.to_vec().unwrap()
    }

    fn answer(shared: &Shared, name: &str, rtype: RecordType) -> Message {
        Message::from_vec(&shared.answer(&query(name, rtype, false), true).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn answers_from_the_table() {
        let server = DnsServer::start().await.unwrap();
        let shared = &server.shared;
        let sec = Duration::from_secs(1);
        server.set_addrs(
            "Orders.Test.",
            ["127.0.0.2".parse().unwrap(), "::1".parse().unwrap()],
            sec,
        );
        server.set_srv(
            "_grpc._tcp.orders.test",
            [Srv::new(1, 2, 3, "orders.test")],
            sec,
        );

        let a = answer(shared, "orders.test.", RecordType::A);
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a.answers.len(), 1);
        assert_eq!(a.answers[0].data, RData::A(A::new(127, 0, 0, 2)));
        assert_eq!(a.answers[0].ttl, 1);
        let any = answer(shared, "ORDERS.test", RecordType::ANY);
        assert_eq!(any.answers.len(), 2);
        let srv = answer(shared, "_grpc._tcp.orders.test", RecordType::SRV);
        let RData::SRV(record) = &srv.answers[0].data else {
            panic!("{srv:?}")
        };
        assert_eq!((record.priority, record.weight, record.port), (1, 2, 3));
        assert_eq!(record.target.to_ascii(), "orders.test.");

        // A name with other records only: NODATA; an unknown name: NXDOMAIN.
        let nodata = answer(shared, "_grpc._tcp.orders.test", RecordType::A);
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        server.set_addrs("orders.test", [], sec);
        assert_eq!(
            answer(shared, "orders.test", RecordType::A)
                .metadata
                .response_code,
            ResponseCode::NXDomain
        );
        server.remove("_grpc._tcp.orders.test");
        assert_eq!(
            answer(shared, "_grpc._tcp.orders.test", RecordType::SRV)
                .metadata
                .response_code,
            ResponseCode::NXDomain
        );
        assert_eq!(server.queries(), 6);
    }

    #[tokio::test]
    async fn large_udp_answers_are_truncated() {
        let server = DnsServer::start().await.unwrap();
        let ips = (1..=60).map(|i| IpAddr::from([127, 0, 1, i]));
        server.set_addrs("many.test", ips, Duration::from_secs(1));
        let udp = answer(&server.shared, "many.test", RecordType::A);
        assert!(udp.metadata.truncation);
        assert!(udp.answers.is_empty());
        let tcp = server
            .shared
            .answer(&query("many.test", RecordType::A, false), false)
            .unwrap();
        assert_eq!(Message::from_vec(&tcp).unwrap().answers.len(), 60);
        // EDNS lets the client take larger UDP answers.
        let edns = server
            .shared
            .answer(&query("many.test", RecordType::A, true), true)
            .unwrap();
        assert_eq!(Message::from_vec(&edns).unwrap().answers.len(), 60);
    }
}
