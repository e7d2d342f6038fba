//! The lookups themselves, on hickory-resolver: A and AAAA for `dns:` targets, SRV then
//! A and AAAA for `dns+srv:` targets.

use super::schedule::{Found, Lookup, LookupFuture};
use crate::resolver::{Address, ResolveError};
use futures_util::future::join_all;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, Record};
use hickory_resolver::{Resolver, TokioResolver};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// What a target asks DNS for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Query {
    /// A and AAAA records of `host`; every address gets `port`.
    Host { host: String, port: u16 },
    /// SRV records of `name`, then A and AAAA records of their targets.
    Srv { name: String },
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Query::Host { host, .. } => f.write_str(host),
            Query::Srv { name } => write!(f, "SRV {name}"),
        }
    }
}

/// Looks a [`Query`] up with hickory, against the given server or the system's.
pub(crate) struct HickoryLookup {
    query: Query,
    server: Option<SocketAddr>,
    query_timeout: Option<Duration>,
    /// Built on the first lookup, and again after a failure to build (a missing
    /// `/etc/resolv.conf` may appear later).
    resolver: Option<TokioResolver>,
}

impl HickoryLookup {
    pub(crate) fn new(
        query: Query,
        server: Option<SocketAddr>,
        query_timeout: Option<Duration>,
    ) -> Self {
        Self {
            query,
            server,
            query_timeout,
            resolver: None,
        }
    }

    fn resolver(&mut self) -> Result<TokioResolver, ResolveError> {
        if let Some(resolver) = &self.resolver {
            return Ok(resolver.clone());
        }
        let provider = TokioRuntimeProvider::default();
        let mut builder = match self.server {
            Some(server) => {
                // UDP, and TCP for answers too large for a datagram.
                let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                    .into_iter()
                    .map(|mut c| {
                        c.port = server.port();
                        c
                    })
                    .collect();
                let config = ResolverConfig::from_name_servers(vec![NameServerConfig::new(
                    server.ip(),
                    true,
                    connections,
                )]);
                let mut builder = Resolver::builder_with_config(config, provider);
                // The target names the server to ask: ask only it.
                builder.options_mut().use_hosts_file = ResolveHosts::Never;
                builder
            }
            None => Resolver::builder(provider).map_err(|e| {
                ResolveError::new(format!(
                    "DNS lookup of {}: reading the system's DNS configuration: {e}",
                    self.query
                ))
            })?,
        };
        let options = builder.options_mut();
        // The schedule decides when to look up again; hickory's cache must never answer
        // a lookup in its place (it would hide a change until its own expiry). Size 0,
        // and cleared before each lookup.
        options.cache_size = 0;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        if let Some(timeout) = self.query_timeout {
            options.timeout = timeout;
        }
        let resolver = builder.build().map_err(|e| {
            ResolveError::new(format!(
                "DNS lookup of {}: building the resolver: {e}",
                self.query
            ))
        })?;
        self.resolver = Some(resolver.clone());
        Ok(resolver)
    }
}

impl Lookup for HickoryLookup {
    fn lookup(&mut self) -> LookupFuture {
        let resolver = match self.resolver() {
            Ok(resolver) => resolver,
            Err(error) => return Box::pin(std::future::ready(Err(error))),
        };
        resolver.clear_cache();
        match self.query.clone() {
            Query::Host { host, port } => Box::pin(async move {
                let (addrs, ttl) = lookup_ip(&resolver, &host, port, None)
                    .await
                    .map_err(|why| ResolveError::new(format!("DNS lookup of {host}: {why}")))?;
                Ok(Found { addrs, ttl })
            }),
            Query::Srv { name } => Box::pin(async move {
                lookup_srv(&resolver, &name)
                    .await
                    .map_err(|why| ResolveError::new(format!("DNS lookup of SRV {name}: {why}")))
            }),
        }
    }
}

impl fmt::Debug for HickoryLookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HickoryLookup")
            .field("query", &self.query)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// The A and AAAA records of `host` (A first) as addresses with `port`, and their
/// shortest TTL.
async fn lookup_ip(
    resolver: &TokioResolver,
    host: &str,
    port: u16,
    weight: Option<u32>,
) -> Result<(Vec<Address>, Duration), String> {
    let lookup = resolver.lookup_ip(host).await.map_err(|e| match &e {
        // hickory reports the A query's NODATA when both queries found nothing.
        NetError::Dns(DnsError::NoRecordsFound(none))
            if none.response_code != ResponseCode::NXDomain =>
        {
            "no A or AAAA records".to_owned()
        }
        _ => describe(&e),
    })?;
    let addrs: Vec<Address> = lookup
        .iter()
        .map(|ip| Address {
            weight,
            ..Address::new(SocketAddr::new(ip, port))
        })
        .collect();
    if addrs.is_empty() {
        return Err("no A or AAAA records".to_owned());
    }
    Ok((addrs, min_ttl(lookup.as_lookup().answers())))
}

/// SRV records grouped by priority, lowest first: the first group in which at least one
/// target resolves gives the addresses (RFC 2782: "a client MUST attempt to contact the
/// target host with the lowest-numbered priority it can reach"). Weights are carried on
/// the addresses; see [`Address::weight`].
async fn lookup_srv(resolver: &TokioResolver, name: &str) -> Result<Found, String> {
    let lookup = resolver.srv_lookup(name).await.map_err(|e| describe(&e))?;
    let srv_ttl = min_ttl(lookup.answers());
    let mut groups: BTreeMap<u16, Vec<(u16, u16, Name)>> = BTreeMap::new();
    let mut records = 0;
    for record in lookup.answers() {
        if let RData::SRV(srv) = &record.data {
            records += 1;
            // A target of "." means the service is decidedly not available there.
            if !srv.target.is_root() {
                groups.entry(srv.priority).or_default().push((
                    srv.weight,
                    srv.port,
                    srv.target.clone(),
                ));
            }
        }
    }
    if records == 0 {
        return Err("no SRV records".to_owned());
    }
    if groups.is_empty() {
        return Err("the service is not available (SRV target \".\")".to_owned());
    }
    let mut failures = Vec::new();
    for (priority, group) in groups {
        let lookups = group.iter().map(|(weight, port, target)| {
            let host = target.to_ascii();
            async move {
                let result = lookup_ip(resolver, &host, *port, Some(u32::from(*weight))).await;
                (host, result)
            }
        });
        let mut addrs = Vec::new();
        let mut ttl = srv_ttl;
        for (host, result) in join_all(lookups).await {
            match result {
                Ok((found, host_ttl)) => {
                    addrs.extend(found);
                    ttl = ttl.min(host_ttl);
                }
                Err(why) => failures.push(format!("{host} (priority {priority}): {why}")),
            }
        }
        if !addrs.is_empty() {
            if !failures.is_empty() {
                tracing::debug!(srv = name, ?failures, "SRV targets that did not resolve");
            }
            return Ok(Found { addrs, ttl });
        }
    }
    Err(format!("no SRV target resolved: {}", failures.join("; ")))
}

fn min_ttl(records: &[Record]) -> Duration {
    let ttl = records.iter().map(|r| r.ttl).min().unwrap_or(0);
    Duration::from_secs(u64::from(ttl))
}

/// A hickory error in words a user can act on.
fn describe(error: &NetError) -> String {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(none)) => match none.response_code {
            ResponseCode::NXDomain => "no such name (NXDOMAIN)".to_owned(),
            _ => format!("no {} records", none.query.query_type()),
        },
        NetError::Dns(DnsError::ResponseCode(code)) => {
            format!(
                "the DNS server answered {} ({code})",
                format!("{code:?}").to_uppercase()
            )
        }
        NetError::Timeout => "no answer from the DNS server (timed out)".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::net::NoRecords;
    use hickory_resolver::proto::op::Query as DnsQuery;
    use hickory_resolver::proto::rr::RecordType;

    #[test]
    fn errors_read_well() {
        let query = DnsQuery::query(Name::from_ascii("x.test.").unwrap(), RecordType::AAAA);
        let nx = NetError::Dns(DnsError::NoRecordsFound(NoRecords::new(
            query.clone(),
            ResponseCode::NXDomain,
        )));
        assert_eq!(describe(&nx), "no such name (NXDOMAIN)");
        let nodata = NetError::Dns(DnsError::NoRecordsFound(NoRecords::new(
            query,
            ResponseCode::NoError,
        )));
        assert_eq!(describe(&nodata), "no AAAA records");
        let servfail = NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail));
        assert_eq!(
            describe(&servfail),
            "the DNS server answered SERVFAIL (Server Failure)"
        );
        assert!(describe(&NetError::Timeout).contains("timed out"));
    }
}
