//! TLS and mutual TLS against real tonic TLS servers on loopback, with certificates made
//! at test time: a CA, a server certificate for `backend.test`, client certificates from
//! that CA and from another one.
#![cfg(feature = "tls")]

mod support;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use support::*;
use tonic::Code;
use tonic::transport::ServerTlsConfig;
use tonic_balancer::tls::{Certificate, Identity, TlsConfig};
use tonic_balancer::{BalancedChannel, ConnectivityState, ErrorKind};
use tonic_balancer_testkit::Backend;
use tonic_balancer_testkit::pb::Empty;
use tonic_balancer_testkit::pb::test_service_client::TestServiceClient;

/// A certificate authority made for one test.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
struct Issued {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate for these names (DNS names or IP addresses).
    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Issued {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "tonic-balancer test");
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn server(&self, names: &[&str]) -> Issued {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client(&self) -> Identity {
        let issued = self.issue(&[], ExtendedKeyUsagePurpose::ClientAuth);
        Identity::from_pem(issued.cert, issued.key)
    }

    fn root(&self) -> Certificate {
        Certificate::from_pem(&self.pem)
    }
}

/// A TLS backend with this certificate that requires client certificates from `ca`.
async fn mtls_backend(id: &str, ca: &Ca, server: &Issued) -> Backend {
    let tls = ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            &server.cert,
            &server.key,
        ))
        .client_ca_root(ca.root());
    Backend::builder(id).tls(tls).start().await.unwrap()
}

fn channel(target: &str, tls: TlsConfig) -> BalancedChannel {
    BalancedChannel::builder(target)
        .connection_backoff(fast_backoff())
        .tls(tls)
        .build()
        .unwrap()
}

/// Waits until the channel's only subchannel has failed to connect, then makes a call,
/// which must fail with UNAVAILABLE; returns the message.
async fn refused(channel: &BalancedChannel) -> String {
    channel
        .wait_for(|subs| {
            subs.first()
                .is_some_and(|s| s.state == ConnectivityState::TransientFailure)
        })
        .await;
    let status = call(&mut Client::new(channel.clone())).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(channel.subchannels()[0].calls, 0, "a call was sent");
    status.message().to_owned()
}

#[tokio::test]
async fn mutual_tls_with_a_trusted_client_certificate_serves_every_backend() {
    within(async {
        let ca = Ca::new("test CA");
        let server = ca.server(&["backend.test"]);
        let backends = [
            mtls_backend("b0", &ca, &server).await,
            mtls_backend("b1", &ca, &server).await,
        ];
        let tls = TlsConfig::new()
            .ca_certificate(ca.root())
            .identity(ca.client())
            .domain_name("backend.test");
        let channel = channel(&target(backends.iter().map(|b| b.addr())), tls);
        wait_ready(&channel, 2).await;
        // A channel with TLS takes bearer credentials without an opt-in.
        let source = || async {
            Ok::<_, tower::BoxError>(tonic_balancer::credentials::Token::without_expiry("t"))
        };
        let layer = tonic_balancer::credentials::BearerLayer::new(source);
        let mut authorized = TestServiceClient::new(layer.try_layer(channel.clone()).unwrap());
        authorized.empty_call(Empty {}).await.unwrap();
        let mut client = Client::new(channel);
        let counts = shares(&mut client, 10).await;
        assert_eq!(counts.get("b0"), Some(&5), "{counts:?}");
        assert_eq!(counts.get("b1"), Some(&5), "{counts:?}");
    })
    .await;
}

#[tokio::test]
async fn no_client_certificate_is_unavailable_naming_the_tls_failure() {
    within(async {
        let ca = Ca::new("test CA");
        let backend = mtls_backend("b", &ca, &ca.server(&["backend.test"])).await;
        // TLS 1.3: our handshake completes; the server's refusal comes as an alert.
        let tls = TlsConfig::new()
            .ca_certificate(ca.root())
            .domain_name("backend.test");
        let channel = channel(&target([backend.addr()]), tls);
        let message = refused(&channel).await;
        assert!(message.contains("TLS"), "{message}");
        assert!(message.contains("CertificateRequired"), "{message}");
        assert!(message.contains(&backend.addr().to_string()), "{message}");
        assert_eq!(backend.calls(), 0);
    })
    .await;
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    within(async {
        let ca = Ca::new("test CA");
        let stranger = Ca::new("another CA");
        let backend = mtls_backend("b", &ca, &ca.server(&["backend.test"])).await;
        let tls = TlsConfig::new()
            .ca_certificate(ca.root())
            .identity(stranger.client())
            .domain_name("backend.test");
        let channel = channel(&target([backend.addr()]), tls);
        let message = refused(&channel).await;
        assert!(message.contains("TLS"), "{message}");
        assert!(message.contains("UnknownCA"), "{message}");
        assert_eq!(backend.calls(), 0);
    })
    .await;
}

#[tokio::test]
async fn a_server_certificate_from_an_untrusted_ca_is_refused() {
    within(async {
        let ca = Ca::new("test CA");
        let stranger = Ca::new("another CA");
        let backend = mtls_backend("b", &ca, &stranger.server(&["backend.test"])).await;
        let tls = TlsConfig::new()
            .ca_certificate(ca.root())
            .identity(ca.client())
            .domain_name("backend.test");
        let message = refused(&channel(&target([backend.addr()]), tls)).await;
        assert!(message.contains("TLS handshake"), "{message}");
        assert!(message.contains("UnknownIssuer"), "{message}");
    })
    .await;
}

#[tokio::test]
async fn an_ip_endpoint_is_checked_against_domain_name_when_set() {
    within(async {
        let ca = Ca::new("test CA");
        let backend = mtls_backend("b", &ca, &ca.server(&["backend.test"])).await;
        let tls = TlsConfig::new()
            .ca_certificate(ca.root())
            .identity(ca.client());

        // Without the override the address is the name, and the certificate lacks it.
        let channel_by_ip = channel(&target([backend.addr()]), tls.clone());
        let message = refused(&channel_by_ip).await;
        assert!(message.contains("TLS handshake"), "{message}");
        assert!(
            message.contains("not valid for name \"127.0.0.1\""),
            "{message}"
        );
        assert!(message.contains("backend.test"), "{message}");

        let by_name = channel(&target([backend.addr()]), tls.domain_name("backend.test"));
        assert_eq!(call(&mut Client::new(by_name)).await.unwrap(), "b");
    })
    .await;
}

#[tokio::test]
async fn without_an_override_the_name_is_the_address_or_the_dns_host() {
    within(async {
        let ca = Ca::new("test CA");
        let backend = mtls_backend("b", &ca, &ca.server(&["127.0.0.1"])).await;
        let tls = TlsConfig::new()
            .ca_certificate(ca.root())
            .identity(ca.client());
        // An address list: the certificate's IP SAN matches the address.
        let listed = channel(&target([backend.addr()]), tls.clone());
        assert_eq!(call(&mut Client::new(listed)).await.unwrap(), "b");
        // A dns: target: the name is the target's host (here an IP literal).
        let dns = channel(&format!("dns:///{}", backend.addr()), tls);
        assert_eq!(call(&mut Client::new(dns)).await.unwrap(), "b");
    })
    .await;
}

#[tokio::test]
async fn plaintext_to_a_tls_backend_fails_at_connect_not_per_call() {
    within(async {
        let ca = Ca::new("test CA");
        let backend = mtls_backend("b", &ca, &ca.server(&["backend.test"])).await;
        let plain = BalancedChannel::builder(&target([backend.addr()]))
            .connection_backoff(fast_backoff())
            .build()
            .unwrap();
        let message = refused(&plain).await;
        assert!(message.contains("HTTP/2 preface"), "{message}");
    })
    .await;
}

#[tokio::test]
async fn an_https_endpoint_from_the_builder_is_refused_with_builder_tls() {
    within(async {
        let ca = Ca::new("test CA");
        let backend = mtls_backend("b", &ca, &ca.server(&["backend.test"])).await;
        let tls = TlsConfig::new()
            .ca_certificate(ca.root())
            .identity(ca.client())
            .domain_name("backend.test");
        let channel = BalancedChannel::builder(&target([backend.addr()]))
            .connection_backoff(fast_backoff())
            .tls(tls)
            .endpoint(|address| {
                tonic::transport::Endpoint::from_shared(format!("https://{}", address.addr))
                    .unwrap()
            })
            .build()
            .unwrap();
        let message = refused(&channel).await;
        assert!(message.contains("must be http://"), "{message}");
    })
    .await;
}

#[tokio::test]
async fn bad_tls_configs_are_rejected_by_build() {
    let ca = Ca::new("test CA");
    let build = |tls: TlsConfig| {
        BalancedChannel::builder("ipv4:127.0.0.1:1")
            .tls(tls)
            .build()
            .unwrap_err()
    };
    let no_roots = build(TlsConfig::new());
    assert_eq!(no_roots.kind(), ErrorKind::InvalidConfig);
    assert!(
        no_roots.to_string().contains("no CA certificate"),
        "{no_roots}"
    );

    let issued = ca.issue(&[], ExtendedKeyUsagePurpose::ClientAuth);
    let other_key = KeyPair::generate().unwrap().serialize_pem();
    let mismatched = build(
        TlsConfig::new()
            .ca_certificate(ca.root())
            .identity(Identity::from_pem(&issued.cert, other_key)),
    );
    assert_eq!(mismatched.kind(), ErrorKind::InvalidConfig);
    assert!(
        mismatched.to_string().starts_with("tls.identity"),
        "{mismatched}"
    );

    let bad_name = build(
        TlsConfig::new()
            .ca_certificate(ca.root())
            .domain_name("not a name"),
    );
    assert_eq!(bad_name.kind(), ErrorKind::InvalidConfig);
    // A config's Debug never shows the key.
    let debug = format!(
        "{:?}",
        TlsConfig::new().identity(Identity::from_pem(&issued.cert, &issued.key))
    );
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
}

#[tokio::test]
async fn calls_carry_the_https_scheme_and_the_address_as_authority() {
    within(async {
        let ca = Ca::new("test CA");
        let server = ca.server(&["backend.test"]);
        // A tonic TLS server that records each request's scheme and authority.
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = futures_util::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(stream, _)| stream);
            Some((accepted, listener))
        });
        let (_reporter, health) = tonic_health::server::health_reporter();
        let serve = tonic::transport::Server::builder()
            .tls_config(
                ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
                    &server.cert,
                    &server.key,
                )),
            )
            .unwrap()
            .layer(tower::util::MapRequestLayer::new(
                move |request: http::Request<tonic::body::Body>| {
                    let uri = request.uri();
                    let origin = (
                        uri.scheme_str().map(str::to_owned),
                        uri.authority().cloned(),
                    );
                    record.lock().unwrap().push(origin);
                    request
                },
            ))
            .add_service(health)
            .serve_with_incoming(incoming);
        tokio::spawn(serve);

        let tls = TlsConfig::new()
            .ca_certificate(ca.root())
            .domain_name("backend.test");
        let mut client =
            tonic_health::pb::health_client::HealthClient::new(channel(&target([addr]), tls));
        let request = tonic_health::pb::HealthCheckRequest::default();
        client.check(request).await.unwrap();
        let seen = seen.lock().unwrap().clone();
        let authority = addr.to_string().parse().unwrap();
        assert_eq!(seen, [(Some("https".to_owned()), Some(authority))]);
    })
    .await;
}

/// A replaced client identity is what the next connections present: a server that
/// refused the first certificate accepts the second, and a later reconnection presents
/// the newest.
#[tokio::test]
async fn a_replaced_client_certificate_is_presented_by_new_connections() {
    use tonic_balancer::tls::ReloadableIdentity;
    within(async {
        let trusted = Ca::new("trusted CA");
        let other = Ca::new("other CA");
        let backend = mtls_backend("b", &trusted, &trusted.server(&["backend.test"])).await;
        let identity = ReloadableIdentity::new(other.client()).unwrap();
        let tls = TlsConfig::new()
            .ca_certificate(trusted.root())
            .reloadable_identity(identity.clone())
            .domain_name("backend.test");
        let channel = channel(&target([backend.addr()]), tls);
        // The server refuses a certificate from a CA it does not trust.
        let why = refused(&channel).await;
        assert!(why.contains("UnknownCA"), "{why}");

        identity.replace(trusted.client()).unwrap();
        wait_ready(&channel, 1).await;
        let mut client = Client::new(channel.clone());
        assert_eq!(call(&mut client).await.unwrap(), "b");

        // Back to the untrusted one: the live connection keeps working, and the next
        // one (after a restart of the server) is refused.
        identity.replace(other.client()).unwrap();
        assert_eq!(call(&mut client).await.unwrap(), "b");
        backend.kill().await;
        backend.restart().await.unwrap();
        loop {
            channel
                .wait_for(|subs| subs[0].state == ConnectivityState::TransientFailure)
                .await;
            let status = call(&mut client).await.unwrap_err();
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            if status.message().contains("UnknownCA") {
                break;
            }
            // Refused while the server was down: wait for the next attempt's verdict.
            channel
                .wait_for(|subs| subs[0].state != ConnectivityState::TransientFailure)
                .await;
        }

        // An identity that does not parse leaves the current one in place.
        let bad = identity.replace(Identity::from_pem("not pem", "not pem"));
        assert!(bad.is_err());
    })
    .await;
}

/// A rustls `ClientConfig` of the user's own is used as given (roots, client
/// certificate), with ALPN set by the channel.
#[tokio::test]
async fn a_rustls_client_config_is_used_as_given() {
    use tonic_balancer::tls::rustls;
    use tonic_balancer::tls::rustls::pki_types::pem::PemObject;
    use tonic_balancer::tls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    within(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = Ca::new("test CA");
        let backend = mtls_backend("b", &ca, &ca.server(&["backend.test"])).await;
        let client = ca.issue(&[], ExtendedKeyUsagePurpose::ClientAuth);
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(client.cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(client.key.as_bytes()).unwrap(),
            )
            .unwrap();
        let tls = TlsConfig::from_rustls(config).domain_name("backend.test");
        let channel = channel(&target([backend.addr()]), tls);
        assert_eq!(call(&mut Client::new(channel)).await.unwrap(), "b");

        // The same config without the client certificate: the server refuses it.
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tls = TlsConfig::from_rustls(config).domain_name("backend.test");
        let why = refused(&channel_for(&backend, tls)).await;
        assert!(why.contains("CertificateRequired"), "{why}");
    })
    .await;
}

fn channel_for(backend: &Backend, tls: TlsConfig) -> BalancedChannel {
    channel(&target([backend.addr()]), tls)
}

/// `https://` targets mean TLS: with `Builder::tls` the given roots and name are used;
/// the server certificate must carry the target's host.
#[tokio::test]
async fn https_targets_make_tls_connections_checked_against_the_host() {
    within(async {
        let ca = Ca::new("test CA");
        let server = ca.server(&["localhost"]);
        let backend = mtls_backend("b", &ca, &server).await;
        let port = backend.addr().port();
        let tls = || {
            TlsConfig::new()
                .ca_certificate(ca.root())
                .identity(ca.client())
        };
        let https = channel(&format!("https://localhost:{port}"), tls());
        assert_eq!(call(&mut Client::new(https)).await.unwrap(), "b");

        // A certificate for another name: the wrong server identity is refused.
        let elsewhere = mtls_backend("e", &ca, &ca.server(&["elsewhere.test"])).await;
        let port = elsewhere.addr().port();
        let wrong = channel(&format!("https://127.0.0.1:{port}"), tls());
        let why = refused(&wrong).await;
        assert!(why.contains("certificate"), "{why}");
    })
    .await;
}

/// Without `Builder::tls`, an `https://` target trusts the platform's roots: a server
/// with a certificate from a private CA is refused, with the reason.
#[cfg(feature = "tls-native-roots")]
#[tokio::test]
async fn an_https_target_without_builder_tls_trusts_only_public_roots() {
    within(async {
        let ca = Ca::new("private CA");
        let backend = mtls_backend("b", &ca, &ca.server(&["127.0.0.1"])).await;
        let port = backend.addr().port();
        let built = BalancedChannel::builder(&format!("https://127.0.0.1:{port}"))
            .connection_backoff(fast_backoff())
            .build();
        let channel = match built {
            Ok(channel) => channel,
            // A machine without a trust store says so at build time.
            Err(error) => {
                assert_eq!(error.kind(), ErrorKind::InvalidConfig, "{error}");
                assert!(error.to_string().contains("platform"), "{error}");
                return;
            }
        };
        let why = refused(&channel).await;
        assert!(why.contains("UnknownIssuer"), "{why}");
    })
    .await;
}
