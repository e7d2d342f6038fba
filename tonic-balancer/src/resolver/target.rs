//! gRPC target strings (grpc/grpc `doc/naming.md`).

use crate::error::{Error, ErrorKind};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

pub use crate::defaults::{DEFAULT_HTTP_PORT, DEFAULT_PORT};

/// A parsed gRPC target: what to resolve, and how.
///
/// | syntax | meaning |
/// |---|---|
/// | `ipv4:10.0.0.1:50051,10.0.0.2:50051` | fixed IPv4 addresses |
/// | `ipv6:[::1]:50051,[::2]:50051` | fixed IPv6 addresses (brackets when a port is given) |
/// | `static:10.0.0.1:50051,[::1]:50051` | fixed addresses of either family (this crate's addition) |
/// | `dns:///orders.svc:50051`, `dns:orders.svc:50051` | a host name resolved through DNS |
/// | `dns://10.0.0.53:53/orders.svc:50051` | the same, asking the given DNS server |
/// | `dns+srv:///_grpc._tcp.orders.svc` | SRV records: host:port pairs, by priority (this crate's addition) |
/// | `dns+srv://10.0.0.53/_grpc._tcp.orders.svc` | the same, asking the given DNS server |
/// | `orders.svc:50051` | no known scheme: `dns:///orders.svc:50051` |
/// | `http://orders.svc:50051`, `http://10.0.0.1:50051` | what tonic users write: the host resolved as `dns:` (an IP needs no lookup) |
/// | `https://orders.svc:50051` | the same, every connection over TLS (feature `tls`) |
/// | `unix:relative/path`, `unix:/abs/path`, `unix:///abs/path` | a Unix domain socket (grpc naming doc) |
/// | `xds:///orders` | the listener `orders` of an xDS control plane (feature `xds`, module `xds`) |
///
/// A missing port is [`DEFAULT_PORT`] (443), as in gRPC, except in `http://` targets,
/// where it is [`DEFAULT_HTTP_PORT`] (80), as in any `http` URI. The DNS server of `dns://server/`
/// must be an IP address, with an optional port (default 53): `10.0.0.53`, `10.0.0.53:5353`,
/// `[fd00::53]:53`. An SRV target names no port: its records carry them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// A fixed list of addresses.
    Static(Vec<SocketAddr>),
    /// A host name to look up in DNS.
    Dns {
        /// The DNS server to ask (`dns://server/...`), or `None` for the system's.
        server: Option<String>,
        /// The host name (or an IP literal, which needs no lookup).
        host: String,
        /// The port of every resolved address.
        port: u16,
    },
    /// A name whose DNS SRV records list the backends (RFC 2782), as Consul and
    /// Kubernetes publish them: `_service._proto.name`.
    DnsSrv {
        /// The DNS server to ask (`dns+srv://server/...`), or `None` for the system's.
        server: Option<String>,
        /// The SRV record name (`_grpc._tcp.orders.svc`).
        name: String,
    },
    /// `https://host[:port]`: a host resolved as a `dns:` target's is, every connection
    /// over TLS. (`http://host:port` parses as [`Target::Dns`].)
    Https {
        /// The host name (or an IP literal, which needs no lookup); also the name the
        /// server certificates must carry.
        host: String,
        /// The port of every resolved address.
        port: u16,
    },
    /// A Unix domain socket (`unix:path`, `unix:///abs/path`).
    Unix(PathBuf),
    /// `xds:///name`: the listener `name` of the xDS control plane the bootstrap names
    /// (gRFC A27; resolving it needs the `xds` feature).
    Xds {
        /// The listener name, also the authority calls are sent with.
        name: String,
    },
}

impl Target {
    /// Parses a target string.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidTarget`] for malformed input and [`ErrorKind::UnsupportedTarget`]
    /// for schemes this crate does not resolve (`unix-abstract:`, `vsock:`); the message
    /// quotes the target.
    pub fn parse(target: &str) -> Result<Self, Error> {
        let invalid = |why: &str| {
            Error::new(
                ErrorKind::InvalidTarget,
                format!("invalid target {target:?}: {why}"),
            )
        };
        let (scheme, rest) = match target.split_once(':') {
            Some((scheme, rest)) if is_known_scheme(scheme) => (scheme, rest),
            _ => ("dns", target),
        };
        match scheme {
            "ipv4" => parse_list(rest, |part| parse_ipv4(part).map_err(|why| invalid(&why))),
            "ipv6" => parse_list(rest, |part| parse_ipv6(part).map_err(|why| invalid(&why))),
            "static" => parse_list(rest, |part| {
                parse_ipv4(part)
                    .or_else(|_| parse_ipv6(part))
                    .map_err(|_| invalid(&format!("{part:?} is not an ip:port address")))
            }),
            "dns" => parse_dns(rest).map_err(|why| invalid(&why)),
            "dns+srv" => parse_dns_srv(rest).map_err(|why| invalid(&why)),
            "http" | "https" => parse_uri(scheme, rest).map_err(|why| invalid(&why)),
            "unix" => parse_unix(rest).map_err(|why| invalid(&why)),
            "xds" => parse_xds(rest).map_err(|why| invalid(&why)),
            _ => Err(Error::new(
                ErrorKind::UnsupportedTarget,
                format!("target {target:?}: scheme {scheme:?} is not supported"),
            )),
        }
    }

    /// The authority calls are sent with (the `:authority` header, and the name TLS
    /// verifies): `host:port` for DNS targets, the SRV name for SRV targets (their
    /// backends' host names and ports vary; [`Builder::endpoint`](crate::Builder::endpoint)
    /// can set one per address), the first address for fixed lists.
    pub fn authority(&self) -> String {
        match self {
            Target::Static(addrs) => addrs.first().map(|a| a.to_string()).unwrap_or_default(),
            Target::DnsSrv { name, .. } => name.clone(),
            Target::Dns { host, port, .. } | Target::Https { host, port } => {
                match host.parse::<Ipv6Addr>() {
                    Ok(_) => format!("[{host}]:{port}"),
                    Err(_) => format!("{host}:{port}"),
                }
            }
            // What gRPC sends for Unix sockets.
            Target::Unix(_) => "localhost".to_owned(),
            Target::Xds { name } => name.clone(),
        }
    }
}

impl FromStr for Target {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Target::parse(s)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Static(addrs) => {
                f.write_str("static:")?;
                for (i, addr) in addrs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{addr}")?;
                }
                Ok(())
            }
            Target::Dns { server, .. } => {
                write!(
                    f,
                    "dns://{}/{}",
                    server.as_deref().unwrap_or(""),
                    self.authority()
                )
            }
            Target::DnsSrv { server, name } => {
                write!(f, "dns+srv://{}/{name}", server.as_deref().unwrap_or(""))
            }
            Target::Https { .. } => write!(f, "https://{}", self.authority()),
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
            Target::Xds { name } => write!(f, "xds:///{name}"),
        }
    }
}

fn is_known_scheme(scheme: &str) -> bool {
    matches!(
        scheme,
        "ipv4"
            | "ipv6"
            | "static"
            | "dns"
            | "dns+srv"
            | "unix"
            | "unix-abstract"
            | "vsock"
            | "http"
            | "https"
            | "xds"
    )
}

/// `///name` or `name` after `xds:`. An authority (`xds://authority/name`, gRFC A47
/// federation) is not supported.
fn parse_xds(rest: &str) -> Result<Target, String> {
    let name = match rest.strip_prefix("//") {
        Some(after) => match after.split_once('/') {
            Some(("", name)) => name,
            Some((authority, _)) => {
                return Err(format!(
                    "xds://{authority}/...: authorities (xDS federation) are not supported; \
                     write xds:///name"
                ));
            }
            None => return Err("expected xds:///name".into()),
        },
        None => rest,
    };
    if name.is_empty() {
        return Err("empty xDS listener name".into());
    }
    if name.contains(['/', '?', '#', ' ']) {
        return Err(format!("{name:?} is not an xDS listener name"));
    }
    Ok(Target::Xds {
        name: name.to_owned(),
    })
}

fn parse_list<F>(list: &str, mut parse: F) -> Result<Target, Error>
where
    F: FnMut(&str) -> Result<SocketAddr, Error>,
{
    let mut addrs = Vec::new();
    for part in list.split(',') {
        let addr = parse(part)?;
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    Ok(Target::Static(addrs))
}

fn parse_port(port: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(p) if port.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(format!("{port:?} is not a port number")),
    }
}

fn parse_ipv4(part: &str) -> Result<SocketAddr, String> {
    let (ip, port) = match part.split_once(':') {
        Some((ip, port)) => (ip, parse_port(port)?),
        None => (part, DEFAULT_PORT),
    };
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
    Ok(SocketAddr::new(IpAddr::V4(ip), port))
}

fn parse_ipv6(part: &str) -> Result<SocketAddr, String> {
    let (ip, port) = match part.strip_prefix('[') {
        Some(rest) => {
            let (ip, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("{part:?} has no closing ']'"))?;
            let port = match after {
                "" => DEFAULT_PORT,
                _ => parse_port(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| format!("{part:?}: expected ':port' after ']'"))?,
                )?,
            };
            (ip, port)
        }
        None => (part, DEFAULT_PORT),
    };
    let ip: Ipv6Addr = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IPv6 address"))?;
    Ok(SocketAddr::new(IpAddr::V6(ip), port))
}

fn parse_dns(rest: &str) -> Result<Target, String> {
    let (server, name) = split_server(rest, "dns://[server]/host[:port]")?;
    let (host, port) = split_host_port(name)?;
    check_host(host)?;
    Ok(Target::Dns {
        server,
        host: host.to_owned(),
        port,
    })
}

/// `//host[:port][/]` after `http:` or `https:`, as tonic's `Endpoint` takes it.
fn parse_uri(scheme: &str, rest: &str) -> Result<Target, String> {
    let Some(after) = rest.strip_prefix("//") else {
        return Err(format!("expected {scheme}://host:port"));
    };
    let authority = after.strip_suffix('/').unwrap_or(after);
    if authority.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "expected {scheme}://host:port, with no path, query or user info"
        ));
    }
    let has_port = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.contains("]:"),
        None if authority.matches(':').count() > 1 => {
            return Err(format!(
                "an IPv6 host goes in brackets: {scheme}://[{authority}]:port"
            ));
        }
        None => authority.contains(':'),
    };
    let (host, port) = split_host_port(authority)?;
    // `split_host_port` fills in gRPC's 443 when no port is given; http's own is 80.
    let port = match (scheme, has_port) {
        ("http", false) => DEFAULT_HTTP_PORT,
        _ => port,
    };
    check_host(host)?;
    Ok(match scheme {
        "https" => Target::Https {
            host: host.to_owned(),
            port,
        },
        _ => Target::Dns {
            server: None,
            host: host.to_owned(),
            port,
        },
    })
}

/// `unix:path` (relative or absolute) or `unix://` followed by an absolute path.
fn parse_unix(rest: &str) -> Result<Target, String> {
    let path = match rest.strip_prefix("//") {
        Some(absolute) if absolute.starts_with('/') => absolute,
        Some(_) => {
            return Err("expected unix:path or unix:///absolute/path (no authority)".into());
        }
        None => rest,
    };
    if path.is_empty() {
        return Err("empty socket path".into());
    }
    Ok(Target::Unix(PathBuf::from(path)))
}

fn parse_dns_srv(rest: &str) -> Result<Target, String> {
    let (server, name) = split_server(rest, "dns+srv://[server]/name")?;
    if name.parse::<IpAddr>().is_ok() || name.starts_with('[') {
        return Err(format!("{name:?}: an SRV target needs a DNS name"));
    }
    if name.contains(':') {
        return Err(format!(
            "{name:?}: an SRV target names no port (its records carry the ports)"
        ));
    }
    check_host(name)?;
    Ok(Target::DnsSrv {
        server,
        name: name.to_owned(),
    })
}

/// Splits `//server/name`, `///name` or `name`; checks the server is `ip[:port]`.
fn split_server<'a>(rest: &'a str, syntax: &str) -> Result<(Option<String>, &'a str), String> {
    let Some(after) = rest.strip_prefix("//") else {
        return Ok((None, rest));
    };
    let (server, name) = after
        .split_once('/')
        .ok_or_else(|| format!("expected {syntax}"))?;
    if server.is_empty() {
        return Ok((None, name));
    }
    dns_server_addr(server)?;
    Ok((Some(server.to_owned()), name))
}

/// The socket address of a DNS server given as `ip`, `ip:port`, `[ipv6]` or
/// `[ipv6]:port`; the port defaults to 53.
pub(crate) fn dns_server_addr(server: &str) -> Result<SocketAddr, String> {
    const DNS_PORT: u16 = 53;
    let not_ip =
        || format!("DNS server {server:?} must be an IP address with an optional port (ip[:port])");
    if let Ok(ip) = server.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DNS_PORT));
    }
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Some(ip) = server.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        return ip
            .parse::<Ipv6Addr>()
            .map(|ip| SocketAddr::new(IpAddr::V6(ip), DNS_PORT))
            .map_err(|_| not_ip());
    }
    if let Some((_, port)) = server.rsplit_once(':') {
        // An IP with a bad port gets the port's error; anything else is not an IP.
        if server[..server.len() - port.len() - 1]
            .parse::<IpAddr>()
            .is_ok()
        {
            parse_port(port)?;
        }
    }
    Err(not_ip())
}

fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("empty host name".into());
    }
    let valid_name = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !valid_name && host.parse::<IpAddr>().is_err() {
        return Err(format!("{host:?} is not a host name or IP address"));
    }
    Ok(())
}

fn split_host_port(name: &str) -> Result<(&str, u16), String> {
    if let Some(rest) = name.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{name:?} has no closing ']'"))?;
        return match after {
            "" => Ok((host, DEFAULT_PORT)),
            _ => Ok((
                host,
                parse_port(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| format!("{name:?}: expected ':port' after ']'"))?,
                )?,
            )),
        };
    }
    match name.rsplit_once(':') {
        // A bare IPv6 literal has several colons and no port.
        Some(_) if name.parse::<Ipv6Addr>().is_ok() => Ok((name, DEFAULT_PORT)),
        Some((host, port)) => Ok((host, parse_port(port)?)),
        None => Ok((name, DEFAULT_PORT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_address_lists() {
        assert_eq!(
            Target::parse("ipv4:127.0.0.1:5001,127.0.0.1:5002").unwrap(),
            Target::Static(vec![addr("127.0.0.1:5001"), addr("127.0.0.1:5002")])
        );
        assert_eq!(
            Target::parse("ipv4:10.0.0.1").unwrap(),
            Target::Static(vec![addr("10.0.0.1:443")])
        );
        assert_eq!(
            Target::parse("ipv6:[::1]:5001,::2").unwrap(),
            Target::Static(vec![addr("[::1]:5001"), addr("[::2]:443")])
        );
        assert_eq!(
            Target::parse("static:127.0.0.1:1,[::1]:2,127.0.0.1:1").unwrap(),
            Target::Static(vec![addr("127.0.0.1:1"), addr("[::1]:2")])
        );
    }

    #[test]
    fn parses_dns_forms() {
        let dns = |server: Option<&str>, host: &str, port| Target::Dns {
            server: server.map(str::to_owned),
            host: host.to_owned(),
            port,
        };
        assert_eq!(
            Target::parse("dns:///orders.svc:50051").unwrap(),
            dns(None, "orders.svc", 50051)
        );
        assert_eq!(
            Target::parse("dns:orders.svc").unwrap(),
            dns(None, "orders.svc", 443)
        );
        assert_eq!(
            Target::parse("dns://127.0.0.1:53/orders.svc:1").unwrap(),
            dns(Some("127.0.0.1:53"), "orders.svc", 1)
        );
        assert_eq!(
            Target::parse("localhost:50051").unwrap(),
            dns(None, "localhost", 50051)
        );
        assert_eq!(
            Target::parse("dns:///[::1]:7").unwrap(),
            dns(None, "::1", 7)
        );
        assert_eq!(
            Target::parse("dns:///[::1]:7").unwrap().authority(),
            "[::1]:7"
        );
    }

    #[test]
    fn parses_dns_servers() {
        let server = |target: &str| match Target::parse(target).unwrap() {
            Target::Dns { server, .. } | Target::DnsSrv { server, .. } => server,
            other => panic!("{other:?}"),
        };
        assert_eq!(server("dns://10.0.0.53/a:1").as_deref(), Some("10.0.0.53"));
        assert_eq!(
            server("dns://[::1]:5353/a:1").as_deref(),
            Some("[::1]:5353")
        );
        assert_eq!(server("dns:///a:1"), None);
        let addr = |s: &str| dns_server_addr(s).unwrap();
        assert_eq!(addr("10.0.0.53"), "10.0.0.53:53".parse().unwrap());
        assert_eq!(addr("127.0.0.1:5353"), "127.0.0.1:5353".parse().unwrap());
        assert_eq!(addr("::1"), "[::1]:53".parse().unwrap());
        assert_eq!(addr("[::1]"), "[::1]:53".parse().unwrap());
        assert_eq!(addr("[::1]:54"), "[::1]:54".parse().unwrap());
        assert!(
            dns_server_addr("ns1.example.com")
                .unwrap_err()
                .contains("IP address")
        );
        assert!(dns_server_addr("10.0.0.1:x").unwrap_err().contains("port"));
    }

    #[test]
    fn parses_dns_srv() {
        let srv = |server: Option<&str>, name: &str| Target::DnsSrv {
            server: server.map(str::to_owned),
            name: name.to_owned(),
        };
        assert_eq!(
            Target::parse("dns+srv:///_grpc._tcp.orders.svc").unwrap(),
            srv(None, "_grpc._tcp.orders.svc")
        );
        assert_eq!(
            Target::parse("dns+srv:_grpc._tcp.orders.svc").unwrap(),
            srv(None, "_grpc._tcp.orders.svc")
        );
        let with_server = Target::parse("dns+srv://127.0.0.1:5353/_a._tcp.x").unwrap();
        assert_eq!(with_server, srv(Some("127.0.0.1:5353"), "_a._tcp.x"));
        assert_eq!(
            with_server.to_string(),
            "dns+srv://127.0.0.1:5353/_a._tcp.x"
        );
        assert_eq!(
            Target::parse(&with_server.to_string()).unwrap(),
            with_server
        );
        assert_eq!(with_server.authority(), "_a._tcp.x");
        // Consul also answers SRV queries for plain service names.
        assert_eq!(
            Target::parse("dns+srv:///orders.service.consul").unwrap(),
            srv(None, "orders.service.consul")
        );
    }

    #[test]
    fn rejects_bad_targets_with_kind() {
        for bad in [
            "ipv4:",
            "ipv4:1.2.3",
            "ipv4:1.2.3.4:",
            "ipv4:1.2.3.4:99999",
            "ipv4:1.2.3.4:-1",
            "ipv6:[::1",
            "ipv6:[::1]5",
            "ipv6:1.2.3.4",
            "dns:///",
            "dns://x",
            "dns:///a b:1",
            "dns:///host:port",
            "dns://ns1.example.com/orders:1",
            "dns://10.0.0.1:99999/orders:1",
            "dns://[::1/orders:1",
            "dns+srv:///",
            "dns+srv:///_grpc._tcp.orders:50051",
            "dns+srv:///10.0.0.1",
            "dns+srv:///[::1]",
            "dns+srv://ns1/_grpc._tcp.orders",
            "dns+srv:///a b",
            "",
            "http:10.0.0.1:50051",
            "http://",
            "http://10.0.0.1:50051/pkg.Svc",
            "http://user@10.0.0.1:50051",
            "http://::1:50051",
            "https://host:port",
            "unix:",
            "unix://",
            "unix://host/abs/path",
        ] {
            let err = Target::parse(bad).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::InvalidTarget, "{bad}: {err}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        let err = Target::parse("unix-abstract:sock").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnsupportedTarget);
    }

    #[test]
    fn parses_what_tonic_users_write() {
        let dns = |host: &str, port| Target::Dns {
            server: None,
            host: host.to_owned(),
            port,
        };
        assert_eq!(
            Target::parse("http://10.0.0.1:50051").unwrap(),
            dns("10.0.0.1", 50051)
        );
        assert_eq!(
            Target::parse("http://orders.svc:50051/").unwrap(),
            dns("orders.svc", 50051)
        );
        // http's own default port; https keeps gRPC's 443.
        assert_eq!(
            Target::parse("http://orders.svc").unwrap(),
            dns("orders.svc", 80)
        );
        assert_eq!(Target::parse("http://[::1]").unwrap(), dns("::1", 80));
        assert_eq!(Target::parse("http://[::1]:7").unwrap(), dns("::1", 7));
        let https = Target::parse("https://orders.svc").unwrap();
        assert_eq!(
            https,
            Target::Https {
                host: "orders.svc".into(),
                port: 443
            }
        );
        assert_eq!(https.authority(), "orders.svc:443");
        assert_eq!(https.to_string(), "https://orders.svc:443");
    }

    #[test]
    fn parses_unix_socket_paths() {
        let unix = |path: &str| Target::Unix(PathBuf::from(path));
        assert_eq!(
            Target::parse("unix:relative/sock").unwrap(),
            unix("relative/sock")
        );
        assert_eq!(Target::parse("unix:/tmp/sock").unwrap(), unix("/tmp/sock"));
        assert_eq!(
            Target::parse("unix:///tmp/sock").unwrap(),
            unix("/tmp/sock")
        );
        let target = Target::parse("unix:///tmp/sock").unwrap();
        assert_eq!(target.authority(), "localhost");
        assert_eq!(target.to_string(), "unix:/tmp/sock");
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,40}") {
            let _ = Target::parse(&s);
        }

        /// Arbitrary bytes as a config file or flag would deliver them (lossy UTF-8,
        /// newlines and control characters included).
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Target::parse(&String::from_utf8_lossy(&bytes));
        }

        /// Every scheme followed by the characters its parser splits on, mixed with
        /// multi-byte characters, so slicing at a split point is exercised.
        #[test]
        fn never_panics_past_the_scheme(
            scheme in "(dns|ipv4|ipv6|static|unix|unix-abstract|vsock|http|https|DNS|)",
            rest in "[\\[\\]:,/.%0-9a-f\u{e9}\u{1F600}\u{0} -]{0,30}",
        ) {
            let target = format!("{scheme}:{rest}");
            if let Err(error) = Target::parse(&target) {
                prop_assert!(!error.to_string().is_empty());
            }
        }

        #[test]
        fn display_round_trips(pairs in proptest::collection::vec((any::<IpAddr>(), any::<u16>()), 1..4)) {
            let mut addrs: Vec<SocketAddr> = Vec::new();
            for (ip, port) in pairs {
                let addr = SocketAddr::new(ip, port);
                if !addrs.contains(&addr) {
                    addrs.push(addr);
                }
            }
            let target = Target::Static(addrs);
            prop_assert_eq!(Target::parse(&target.to_string()).unwrap(), target);
        }
    }
}
