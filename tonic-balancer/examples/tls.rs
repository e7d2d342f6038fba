//! Mutual TLS and a bearer token on every call, to two in-process TLS backends, with
//! certificates made on the spot. Then a client certificate the servers do not trust.
//!
//! Run with `cargo run --example tls --features tls`.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::time::Duration;
use tonic::transport::ServerTlsConfig;
use tonic_balancer::BalancedChannel;
use tonic_balancer::credentials::{BearerLayer, Token};
use tonic_balancer::tls::{Certificate, Identity, TlsConfig};
use tonic_balancer_testkit::Backend;
use tonic_balancer_testkit::pb::SimpleRequest;
use tonic_balancer_testkit::pb::test_service_client::TestServiceClient;

type Error = Box<dyn std::error::Error>;

/// A self-signed CA: its PEM and what signs with it.
fn new_ca(name: &str) -> Result<(String, Issuer<'static, KeyPair>), Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let pem = params.self_signed(&key)?.pem();
    Ok((pem, Issuer::new(params, key)))
}

/// A certificate for `names` signed by `ca`, and its key, PEM.
fn issue(
    ca: &Issuer<'_, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> Result<(String, String), Error> {
    let key = KeyPair::generate()?;
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    params.extended_key_usages = vec![usage];
    Ok((params.signed_by(&key, ca)?.pem(), key.serialize_pem()))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (ca_pem, ca) = new_ca("example CA")?;
    // Both servers present a certificate for orders.internal and require client
    // certificates signed by the same CA.
    let (cert, key) = issue(
        &ca,
        &["orders.internal"],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let server_tls = ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(&cert, &key))
        .client_ca_root(Certificate::from_pem(&ca_pem));
    let mut addrs = Vec::new();
    let mut backends = Vec::new();
    for name in ["alpha", "beta"] {
        let backend = Backend::builder(name)
            .tls(server_tls.clone())
            .start()
            .await?;
        addrs.push(backend.addr().to_string());
        backends.push(backend);
    }
    let target = format!("ipv4:{}", addrs.join(","));

    let (cert, key) = issue(&ca, &[], ExtendedKeyUsagePurpose::ClientAuth)?;
    let tls = TlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca_pem))
        .identity(Identity::from_pem(cert, key))
        // The target lists addresses; the certificates name the service.
        .domain_name("orders.internal");
    let channel = BalancedChannel::builder(&target).tls(tls).build()?;
    // Tokens would come from an identity provider; this one makes them up.
    let bearer = BearerLayer::new(|| async {
        Ok::<_, std::io::Error>(Token::expires_in("demo-token", Duration::from_secs(300)))
    });
    // try_layer refuses a channel without TLS (tokens would travel in cleartext).
    let mut client = TestServiceClient::new(bearer.try_layer(channel)?);
    for _ in 0..4 {
        let request = SimpleRequest {
            fill_server_id: true,
            ..Default::default()
        };
        let reply = client.unary_call(request).await?.into_inner();
        println!("served over mTLS by {}", reply.server_id);
    }

    // A client certificate from a CA the servers do not know.
    let (_, stranger) = new_ca("some other CA")?;
    let (cert, key) = issue(&stranger, &[], ExtendedKeyUsagePurpose::ClientAuth)?;
    let tls = TlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca_pem))
        .identity(Identity::from_pem(cert, key))
        .domain_name("orders.internal");
    let channel = BalancedChannel::builder(&target).tls(tls).build()?;
    let status = TestServiceClient::new(channel)
        .unary_call(SimpleRequest::default())
        .await
        .unwrap_err();
    println!(
        "untrusted client certificate: {:?}: {}",
        status.code(),
        status.message()
    );
    Ok(())
}
