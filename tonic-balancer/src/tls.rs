//! TLS and mutual TLS for every connection of a channel (feature `tls`).
//!
//! [`Builder::tls`](crate::Builder::tls) applies one [`TlsConfig`] to every address the
//! resolver finds. A subchannel then connects over TCP, completes a TLS 1.2/1.3
//! handshake (rustls, negotiating HTTP/2 by ALPN), and becomes READY only once the server
//! has sent its HTTP/2 preface over the encrypted session.
//!
//! # Why the channel does the handshake itself
//! In TLS 1.3 the client finishes its handshake before the server has checked the client
//! certificate. A server that refuses the certificate says so with an alert on the
//! connection's first read. Over tonic's own TLS (`Endpoint::tls_config`), that read
//! happens inside tonic's connection task: the subchannel would report READY, the first
//! calls would fail with "broken pipe", and the subchannel would reconnect at once, over
//! and over. Here the handshake happens in the subchannel's connector, which waits for
//! the server's first HTTP/2 frame, so a refused certificate is a failed connection
//! attempt: TRANSIENT_FAILURE, connection backoff, and calls fail with UNAVAILABLE
//! carrying the reason (`received fatal alert: CertificateRequired`).
//!
//! # Trust roots
//! A config trusts what it is given: CA certificates ([`TlsConfig::ca_certificate`]),
//! the platform's trust store ([`TlsConfig::with_native_roots`], feature
//! `tls-native-roots`), Mozilla's roots compiled in ([`TlsConfig::with_webpki_roots`],
//! feature `tls-webpki-roots`), or anything a rustls `ClientConfig` of your own
//! verifies ([`TlsConfig::from_rustls`]: a custom verifier, pinned keys). An
//! `https://` target with no [`Builder::tls`](crate::Builder::tls) trusts the
//! platform's roots, else webpki's, whichever feature is on.
//!
//! # Rotating the client certificate
//! [`ReloadableIdentity`] holds the client certificate and key every new handshake
//! presents; [`ReloadableIdentity::replace`] swaps them while the channel runs (for
//! short-lived certificates from cert-manager or SPIFFE). Connections already up keep
//! the identity they were made with until they end.
//!
//! # Which name the server certificate must carry
//! - `dns:` targets: the target's host, for every address resolved from it (never the
//!   address connected to).
//! - `ipv4:`/`ipv6:`/`static:` address lists: the address itself (an IP subject
//!   alternative name), unless [`TlsConfig::domain_name`] names the host the certificates
//!   were issued for, the usual case for a fleet listed by address.
//!
//! The name is also sent as SNI when it is a host name. The `:authority` of calls stays
//! what it was (the target's host and port, or the address).
//!
//! ```no_run
//! # fn demo(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<(), tonic_balancer::Error> {
//! use tonic_balancer::BalancedChannel;
//! use tonic_balancer::tls::{Certificate, Identity, TlsConfig};
//!
//! let tls = TlsConfig::new()
//!     .ca_certificate(Certificate::from_pem(ca_pem))     // trust this CA, and only it
//!     .identity(Identity::from_pem(cert_pem, key_pem))   // mTLS: the client certificate
//!     .domain_name("orders.internal");                   // the name on the server certificates
//! let channel = BalancedChannel::builder("ipv4:10.0.0.1:50051,10.0.0.2:50051")
//!     .tls(tls)
//!     .build()?;
//! # Ok(()) }
//! ```

use crate::InvalidSetting;
use arc_swap::ArcSwap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::ResolvesClientCert;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, SignatureScheme};

/// The rustls this crate uses, for [`TlsConfig::from_rustls`]: build the `ClientConfig`
/// with this one so the versions match.
pub use tokio_rustls::rustls;

/// A PEM certificate (tonic's type, so the same value can configure a tonic server).
pub use tonic::transport::Certificate;

/// ALPN's name for HTTP/2 over TLS.
const ALPN_H2: &[u8] = b"h2";

/// A client certificate chain and its private key, both PEM, for mutual TLS.
///
/// Its `Debug` never shows the key (tonic's `Identity` prints the key's bytes).
#[derive(Clone)]
pub struct Identity {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Identity {
    /// The certificate chain (leaf first) and the private key (PKCS#8, PKCS#1 or SEC1), PEM.
    pub fn from_pem(cert: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> Self {
        Self {
            cert: cert.as_ref().to_vec(),
            key: key.as_ref().to_vec(),
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("cert_pem_bytes", &self.cert.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A client certificate and key that can be replaced while channels use it: every new
/// TLS handshake presents the current one. Cheap to clone; clones share the identity.
///
/// ```no_run
/// # fn demo(cert: &[u8], key: &[u8], renewed_cert: &[u8], renewed_key: &[u8]) -> Result<(), tonic_balancer::InvalidSetting> {
/// use tonic_balancer::tls::{Identity, ReloadableIdentity, TlsConfig};
///
/// let identity = ReloadableIdentity::new(Identity::from_pem(cert, key))?;
/// let tls = TlsConfig::new().with_native_roots().reloadable_identity(identity.clone());
/// // ... later, when the certificate is renewed:
/// identity.replace(Identity::from_pem(renewed_cert, renewed_key))?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ReloadableIdentity {
    current: Arc<ArcSwap<CertifiedKey>>,
}

impl ReloadableIdentity {
    /// Starts with `identity`.
    ///
    /// # Errors
    /// The certificate or key does not parse, or they do not match.
    pub fn new(identity: Identity) -> Result<Self, InvalidSetting> {
        Ok(Self {
            current: Arc::new(ArcSwap::from_pointee(certified_key(&identity)?)),
        })
    }

    /// Makes `identity` the one new handshakes present. On an error the previous one
    /// stays.
    ///
    /// # Errors
    /// The certificate or key does not parse, or they do not match.
    pub fn replace(&self, identity: Identity) -> Result<(), InvalidSetting> {
        self.current.store(Arc::new(certified_key(&identity)?));
        Ok(())
    }
}

impl fmt::Debug for ReloadableIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadableIdentity")
            .field("certificates", &self.current.load().cert.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ResolvesClientCert for ReloadableIdentity {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A parsed identity, checked: its key matches its certificate.
fn certified_key(identity: &Identity) -> Result<CertifiedKey, InvalidSetting> {
    let chain = certificates(&identity.cert)
        .map_err(|e| InvalidSetting::new("tls.identity certificate", e))?;
    let key = PrivateKeyDer::from_pem_slice(&identity.key)
        .map_err(|e| InvalidSetting::caused_by("tls.identity key", e))?;
    let key = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| InvalidSetting::caused_by("tls.identity", e))?;
    key.keys_match()
        .map_err(|e| InvalidSetting::caused_by("tls.identity", e))?;
    Ok(key)
}

/// The TLS settings of a channel's connections: the roots trusted to sign server
/// certificates, an optional client identity for mutual TLS, and the server name to
/// check; or a rustls `ClientConfig` of your own.
///
/// Only the roots given here are trusted (see the [module docs](self)).
/// [`Builder::build`](crate::Builder::build) checks the config (PEM that does not
/// parse, a key that does not match, a name that is not a DNS name or IP address).
#[derive(Clone, Default)]
pub struct TlsConfig {
    roots: Vec<Certificate>,
    native_roots: bool,
    webpki_roots: bool,
    identity: Option<Identity>,
    reloadable: Option<ReloadableIdentity>,
    rustls: Option<Arc<ClientConfig>>,
    domain_name: Option<String>,
}

impl TlsConfig {
    /// A config that trusts no CA yet: add one with [`Self::ca_certificate`] (or the
    /// platform's or webpki's roots).
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the CA certificate(s) in this PEM to sign server certificates. May be
    /// called several times.
    pub fn ca_certificate(mut self, certificate: Certificate) -> Self {
        self.roots.push(certificate);
        self
    }

    /// Trusts the platform's trust store (rustls-native-certs: the system's CA bundle
    /// on Linux, the keychain on macOS, the certificate store on Windows), read when the
    /// channel is built.
    #[cfg(feature = "tls-native-roots")]
    pub fn with_native_roots(mut self) -> Self {
        self.native_roots = true;
        self
    }

    /// Trusts Mozilla's root CAs as compiled into this program (webpki-roots): the same
    /// on every machine, updated by updating the crate.
    #[cfg(feature = "tls-webpki-roots")]
    pub fn with_webpki_roots(mut self) -> Self {
        self.webpki_roots = true;
        self
    }

    /// Uses this rustls config for every handshake: its roots or custom verifier, its
    /// client certificate (or resolver), its protocol versions. The channel only sets
    /// ALPN to `h2` (gRPC needs HTTP/2). Roots and identities given to this `TlsConfig`
    /// are then not used; [`Self::domain_name`] still is.
    pub fn from_rustls(config: ClientConfig) -> Self {
        Self {
            rustls: Some(Arc::new(config)),
            ..Self::default()
        }
    }

    /// Presents this certificate and key to servers that ask for a client certificate
    /// (mutual TLS).
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Presents the current identity of `identity` on every new connection, so it can
    /// be replaced while the channel runs. Wins over [`Self::identity`].
    pub fn reloadable_identity(mut self, identity: ReloadableIdentity) -> Self {
        self.reloadable = Some(identity);
        self
    }

    /// The config an `https://` target gets without [`Builder::tls`](crate::Builder::tls):
    /// the platform's roots (feature `tls-native-roots`), else webpki's
    /// (`tls-webpki-roots`).
    ///
    /// # Errors
    /// Neither feature is on: the message says what to do.
    pub(crate) fn for_https() -> Result<Self, InvalidSetting> {
        #[cfg(feature = "tls-native-roots")]
        return Ok(Self::new().with_native_roots());
        #[cfg(all(feature = "tls-webpki-roots", not(feature = "tls-native-roots")))]
        return Ok(Self::new().with_webpki_roots());
        #[cfg(not(any(feature = "tls-native-roots", feature = "tls-webpki-roots")))]
        Err(InvalidSetting::new(
            "tls",
            "an https:// target needs roots to trust: enable the `tls-native-roots` or \
             `tls-webpki-roots` feature of tonic-balancer, or pass Builder::tls",
        ))
    }

    /// The name every server certificate must carry, for every address: a DNS name or
    /// an IP address. Default: the target's host for `dns:` targets, the address
    /// connected to for address lists (see the [module docs](self)).
    pub fn domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain_name = Some(name.into());
        self
    }

    /// Checks the config and makes the connector's TLS settings. `host` is the target's
    /// host for `dns:` targets: the default server name.
    pub(crate) fn connector(&self, host: Option<&str>) -> Result<TlsConnect, InvalidSetting> {
        let name = match self.domain_name.as_deref().or(host) {
            Some(name) => {
                Some(server_name(name).map_err(|e| InvalidSetting::new("tls.domain_name", e))?)
            }
            None => None,
        };
        let mut config = match &self.rustls {
            Some(config) => ClientConfig::clone(config),
            None => self.client_config()?,
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(TlsConnect {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            name,
        })
    }

    /// The rustls config from the roots and identity given.
    fn client_config(&self) -> Result<ClientConfig, InvalidSetting> {
        if self.roots.is_empty() && !self.native_roots && !self.webpki_roots {
            return Err(InvalidSetting::new(
                "tls.ca_certificate",
                "no CA certificate to check servers against; add one with \
                 TlsConfig::ca_certificate (or trust the platform's or webpki's roots)",
            ));
        }
        let mut roots = RootCertStore::empty();
        #[cfg(feature = "tls-native-roots")]
        if self.native_roots {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_owned(), |e| e.to_string());
                return Err(InvalidSetting::new(
                    "tls.with_native_roots",
                    format!("no usable root certificate in the platform's store: {why}"),
                ));
            }
            // A store may hold certificates rustls cannot use; the others still count.
            let (added, skipped) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, skipped, "platform root certificates loaded");
        }
        #[cfg(feature = "tls-webpki-roots")]
        if self.webpki_roots {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for (i, pem) in self.roots.iter().enumerate() {
            let setting = || format!("tls.ca_certificate #{}", i + 1);
            let certs =
                certificates(pem.get_ref()).map_err(|e| InvalidSetting::new(setting(), e))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| InvalidSetting::caused_by(setting(), e))?;
            }
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| InvalidSetting::caused_by("tls", e))?
            .with_root_certificates(roots);
        Ok(match (&self.reloadable, &self.identity) {
            (Some(reloadable), _) => {
                builder.with_client_cert_resolver(Arc::new(reloadable.clone()))
            }
            (None, Some(identity)) => {
                let chain = certificates(&identity.cert)
                    .map_err(|e| InvalidSetting::new("tls.identity certificate", e))?;
                let key = PrivateKeyDer::from_pem_slice(&identity.key)
                    .map_err(|e| InvalidSetting::caused_by("tls.identity key", e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| InvalidSetting::caused_by("tls.identity", e))?
            }
            (None, None) => builder.with_no_client_auth(),
        })
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_certificates", &self.roots.len())
            .field("native_roots", &self.native_roots)
            .field("webpki_roots", &self.webpki_roots)
            .field("identity", &self.identity)
            .field("reloadable_identity", &self.reloadable)
            .field("rustls", &self.rustls.as_ref().map(|_| "<ClientConfig>"))
            .field("domain_name", &self.domain_name)
            .finish()
    }
}

/// The crypto provider the process installed, else ring.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    match rustls::crypto::CryptoProvider::get_default() {
        Some(provider) => provider.clone(),
        None => Arc::new(rustls::crypto::ring::default_provider()),
    }
}

/// Every certificate in a PEM; at least one.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the PEM".to_owned());
    }
    Ok(certs)
}

/// A server name from a host: a DNS name or an IP address (brackets allowed).
fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(bare.to_owned())
        .map_err(|_| format!("{host:?} is neither a DNS name nor an IP address"))
}

/// The TLS half of a subchannel's connector.
#[derive(Clone)]
pub(crate) struct TlsConnect {
    connector: tokio_rustls::TlsConnector,
    /// The name to check; `None`: the address connected to.
    name: Option<ServerName<'static>>,
}

impl TlsConnect {
    /// Runs the handshake with `addr` (an IP address; `None` for a Unix socket) over
    /// `io` and checks that HTTP/2 was negotiated; `peer` names it in errors.
    ///
    /// # Errors
    /// The handshake's error, prefixed with `TLS handshake with PEER failed:`.
    pub(crate) async fn handshake<IO>(
        &self,
        io: IO,
        ip: Option<IpAddr>,
        addr: &str,
    ) -> io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let name = match (&self.name, ip) {
            (Some(name), _) => name.clone(),
            (None, Some(ip)) => ServerName::IpAddress(ip.into()),
            (None, None) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("TLS with {addr}: no server name to check; set TlsConfig::domain_name"),
                ));
            }
        };
        let stream = self.connector.connect(name, io).await.map_err(|e| {
            io::Error::new(e.kind(), format!("TLS handshake with {addr} failed: {e}"))
        })?;
        if stream.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("TLS handshake with {addr}: the server did not agree to HTTP/2 (ALPN h2)"),
            ));
        }
        Ok(stream)
    }
}

impl fmt::Debug for TlsConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnect")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n";

    #[test]
    fn debug_never_shows_key_material() {
        let config = TlsConfig::new()
            .identity(Identity::from_pem("cert", KEY))
            .domain_name("backend.test");
        let text = format!("{config:?}");
        assert!(!text.contains("c2VjcmV0"), "{text}");
        assert!(!text.contains("PRIVATE"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
        assert!(text.contains("backend.test"), "{text}");
    }

    #[test]
    fn bad_configs_are_errors_that_say_what_is_wrong() {
        let err = TlsConfig::new().connector(None).unwrap_err();
        assert!(err.to_string().contains("no CA certificate"), "{err}");
        let err = TlsConfig::new()
            .ca_certificate(Certificate::from_pem("not pem"))
            .connector(None)
            .unwrap_err();
        assert_eq!(err.setting, "tls.ca_certificate #1", "{err}");
    }

    #[test]
    fn server_names_accept_hosts_and_addresses() {
        assert!(matches!(
            server_name("backend.test"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(
            server_name("10.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(server_name("not a name").is_err());
    }
}
