//! Every client checks the server's system role as well as its CA and name: a certificate
//! from the right CA with the right name but another role (a node's, even one issued before
//! nodes lost the ServerAuth usage) is refused, with the role and the address in the error.
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use portcullis_pki::x509::{self, AUTH_SERVER_NAME, PROXY_SERVER_NAME, TlsCa, TlsCertRequest, SystemRole};
use portcullis_pki::verify::{check_server_role, roots_from_ders, server_chain, with_role};
use portcullis_rpc::{ClientTls, Trust};
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::AsyncReadExt;

fn issue(ca: &TlsCa, role: &str, names: &[&str]) -> (String, String) {
    let key = x509::generate_key().unwrap();
    let cert = ca
        .issue(&TlsCertRequest {
            public_key_der: x509::public_key_der(&key),
            name: format!("{role}-host"),
            system_roles: vec![role.into()],
            dns_names: names.iter().map(|n| n.to_string()).collect(),
            ttl: Duration::from_secs(600),
            ..Default::default()
        })
        .unwrap();
    (cert, key.serialize_pem())
}

/// A node certificate as auth issued them before the fix: ServerAuth, and the auth
/// service's name bought with a node token.
fn legacy_node_cert(ca: &TlsCa, cluster: &str) -> (String, String) {
    let ca_key = rcgen::KeyPair::from_pem(ca.key_pem().expose()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca.cert_pem(), ca_key).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![AUTH_SERVER_NAME.to_string()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "evil-node");
    params.distinguished_name.push(rcgen::DnType::OrganizationName, cluster);
    params.distinguished_name.push(rcgen::DnType::OrganizationalUnitName, SystemRole::Node.as_str());
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth, rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::hours(1);
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from(x509::pem_to_ders(pem).unwrap().remove(0))
}

fn verify(ca: &TlsCa, role: &'static str, cert_pem: &str, name: &'static str) -> Result<(), rustls::Error> {
    let v = with_role(server_chain(roots_from_ders(&x509::pem_to_ders(ca.cert_pem()).unwrap()).unwrap()).unwrap(), role);
    v.verify_server_cert(&der(cert_pem), &[], &ServerName::try_from(name).unwrap(), &[], UnixTime::now())
        .map(|_| ())
}

#[test]
fn verifier_refuses_a_node_certificate_with_the_right_ca_and_name() {
    portcullis_rpc::install_crypto_provider();
    let ca = TlsCa::generate("c.example.com").unwrap();
    let (auth, _) = issue(&ca, SystemRole::Auth.as_str(), &[AUTH_SERVER_NAME]);
    let (proxy, _) = issue(&ca, SystemRole::Proxy.as_str(), &[PROXY_SERVER_NAME]);
    let (node, _) = issue(&ca, SystemRole::Node.as_str(), &[AUTH_SERVER_NAME]);
    let (legacy, _) = legacy_node_cert(&ca, "c.example.com");
    let (proxy_as_auth, _) = issue(&ca, SystemRole::Proxy.as_str(), &[AUTH_SERVER_NAME]);

    verify(&ca, SystemRole::Auth.as_str(), &auth, AUTH_SERVER_NAME).unwrap();
    verify(&ca, SystemRole::Proxy.as_str(), &proxy, PROXY_SERVER_NAME).unwrap();
    for (what, pem, role, name, presented) in [
        ("node", &node, SystemRole::Auth.as_str(), AUTH_SERVER_NAME, "Node"),
        ("legacy node with ServerAuth", &legacy, SystemRole::Auth.as_str(), AUTH_SERVER_NAME, "Node"),
        ("proxy posing as auth", &proxy_as_auth, SystemRole::Auth.as_str(), AUTH_SERVER_NAME, "Proxy"),
        ("auth posing as proxy", &auth, SystemRole::Proxy.as_str(), PROXY_SERVER_NAME, "Auth"),
    ] {
        let e = verify(&ca, role, pem, name).unwrap_err().to_string();
        assert!(e.contains(&format!("a certificate for role {presented}, not {role}")), "{what}: {e}");
    }
    // The plain role check says the same.
    let w = check_server_role(der(&legacy).as_ref(), SystemRole::Auth.as_str()).unwrap_err();
    assert_eq!(w.presented, vec!["Node"]);
}

#[test]
fn a_server_name_without_a_role_is_refused() {
    let tls = ClientTls { trust: Trust::Insecure, identity: None, server_name: "example.com".into() };
    let e = tls.rustls_config().unwrap_err().to_string();
    assert!(e.contains("no system role is known for the server name \"example.com\""), "{e}");
}

/// A TLS server presenting `cert`; reports how many application bytes it ever received.
async fn fake_server(cert_pem: String, key_pem: String) -> (String, tokio::task::JoinHandle<usize>) {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(portcullis_rpc::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut got = 0;
        // tonic may retry; every attempt must fail the same way.
        while let Ok(Ok((tcp, _))) = tokio::time::timeout(Duration::from_secs(3), listener.accept()).await {
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                let mut buf = vec![0u8; 4096];
                got += tls.read(&mut buf).await.unwrap_or(0);
            }
        }
        got
    });
    (addr, task)
}

#[tokio::test]
async fn client_refuses_a_node_posing_as_auth_and_sends_nothing() {
    portcullis_rpc::install_crypto_provider();
    let ca = TlsCa::generate("c.example.com").unwrap();
    for (what, (cert, key)) in
        [("legacy", legacy_node_cert(&ca, "c.example.com")), ("current", issue(&ca, SystemRole::Node.as_str(), &[AUTH_SERVER_NAME]))]
    {
        let (addr, server) = fake_server(cert, key).await;
        let tls = ClientTls {
            trust: Trust::Cas(vec![ca.cert_pem().to_string()]),
            identity: None,
            server_name: AUTH_SERVER_NAME.into(),
        };
        let e = portcullis_rpc::connect(&addr, &tls).await.unwrap_err().to_string();
        assert!(
            e.contains(&format!("the server at {addr} presented a certificate for role Node, not Auth")),
            "{what}: {e}"
        );
        assert_eq!(server.await.unwrap(), 0, "{what}: the client sent application data");
    }
}
