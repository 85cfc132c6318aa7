//! Tests of the verifier blocks, with certificates from a throwaway cluster CA.

use std::sync::Mutex;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

use super::*;
use crate::x509::{self, TlsCa, TlsCertRequest};

fn issue(ca: &TlsCa, role: SystemRole, names: &[&str]) -> (CertificateDer<'static>, String) {
    let key = x509::generate_key().unwrap();
    let pem = ca
        .issue(&TlsCertRequest {
            public_key_der: x509::public_key_der(&key),
            name: format!("{}-host", role.as_str()),
            system_roles: vec![role.as_str().into()],
            dns_names: names.iter().map(|n| n.to_string()).collect(),
            ttl: Duration::from_secs(600),
            ..Default::default()
        })
        .unwrap();
    (der(&pem), format!("{pem}\u{0}{}", key.serialize_pem()))
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from(x509::pem_to_ders(pem).unwrap().remove(0))
}

fn ca_roots(ca: &TlsCa) -> RootCertStore {
    roots_from_pems(&[ca.cert_pem().to_string()]).unwrap()
}

fn name(n: &str) -> ServerName<'static> {
    ServerName::try_from(n.to_string()).unwrap()
}

fn check_server(v: &dyn ServerCertVerifier, cert: &CertificateDer<'_>, chain: &[CertificateDer<'_>], n: &str) -> Result<(), TlsError> {
    v.verify_server_cert(cert, chain, &name(n), &[], UnixTime::now()).map(|_| ())
}

#[test]
fn chain_checks_name_and_ca_chain_only_skips_the_name() {
    let ca = TlsCa::generate("c.example.com").unwrap();
    let other = TlsCa::generate("other.example.com").unwrap();
    let (proxy, _) = issue(&ca, SystemRole::Proxy, &[PROXY_SERVER_NAME]);
    let (stranger, _) = issue(&other, SystemRole::Proxy, &[PROXY_SERVER_NAME]);
    let full = server_chain(ca_roots(&ca)).unwrap();
    check_server(full.as_ref(), &proxy, &[], PROXY_SERVER_NAME).unwrap();
    check_server(full.as_ref(), &proxy, &[], "elsewhere.example.com").unwrap_err();
    check_server(full.as_ref(), &stranger, &[], PROXY_SERVER_NAME).unwrap_err();
    let chain_only = ChainOnlyVerifier::new(ca_roots(&ca)).unwrap();
    check_server(&chain_only, &proxy, &[], "elsewhere.example.com").unwrap();
    check_server(&chain_only, &stranger, &[], PROXY_SERVER_NAME).unwrap_err();
}

#[test]
fn bad_or_missing_roots_are_errors() {
    let e = roots_from_pems(&["not a certificate".into()]);
    assert!(e.is_err() || e.is_ok_and(|r| r.is_empty()));
    let e = roots_from_ders(&[b"junk".to_vec()]).unwrap_err();
    assert!(e.to_string().starts_with("bad CA certificate: "), "{e}");
    assert!(server_chain(RootCertStore::empty()).is_err());
    assert!(client_chain(RootCertStore::empty(), ClientAuth::Required).is_err());
}

#[test]
fn role_is_checked_first_and_found_in_the_error() {
    let ca = TlsCa::generate("c.example.com").unwrap();
    let (node, _) = issue(&ca, SystemRole::Node, &[AUTH_SERVER_NAME]);
    let (auth, _) = issue(&ca, SystemRole::Auth, &[AUTH_SERVER_NAME]);
    let v = with_role(server_chain(ca_roots(&ca)).unwrap(), SystemRole::Auth.as_str());
    check_server(&v, &auth, &[], AUTH_SERVER_NAME).unwrap();
    // Wrong name too: the role is what the user hears about.
    let e = check_server(&v, &node, &[], "wrong.example.com").unwrap_err();
    let w = find_wrong_role(&e).expect("a WrongServerRole");
    assert_eq!((w.presented.as_slice(), w.required.as_str()), (&["Node".to_string()][..], "Auth"));
    assert!(w.describe(Some("10.0.0.1:3025")).starts_with("the server at 10.0.0.1:3025 presented a certificate for role Node, not Auth"));
    let io = std::io::Error::other(e);
    assert!(find_wrong_role(&io).is_some());
    assert_eq!(server_role_for(&AUTH_SERVER_NAME.to_uppercase()), Some("Auth"));
    assert_eq!(server_role_for(PROXY_SERVER_NAME), Some("Proxy"));
    assert_eq!(server_role_for("example.com"), None);
}

#[test]
fn a_pinned_ca_must_be_in_the_chain_and_sign_the_server() {
    let ca = TlsCa::generate("c.example.com").unwrap();
    let other = TlsCa::generate("other.example.com").unwrap();
    let (auth, _) = issue(&ca, SystemRole::Auth, &[AUTH_SERVER_NAME]);
    let pin = x509::ca_pin(ca.cert_pem()).unwrap();
    let v = PinnedCaVerifier::new(vec![pin.clone()]);
    check_server(&v, &auth, &[der(ca.cert_pem())], AUTH_SERVER_NAME).unwrap();
    let e = check_server(&v, &auth, &[], AUTH_SERVER_NAME).unwrap_err().to_string();
    assert!(e.contains("does not match the configured ca_pin"), "{e}");
    let e = check_server(&v, &auth, &[der(other.cert_pem())], AUTH_SERVER_NAME).unwrap_err().to_string();
    assert!(e.contains("ca_pin"), "{e}");
    // The pinned CA in the chain does not help a certificate another CA signed.
    let (stranger, _) = issue(&other, SystemRole::Auth, &[AUTH_SERVER_NAME]);
    check_server(&v, &stranger, &[der(ca.cert_pem())], AUTH_SERVER_NAME).unwrap_err();
}

#[test]
fn insecure_accepts_anything_refuse_accepts_nothing() {
    let ca = TlsCa::generate("c.example.com").unwrap();
    let (node, _) = issue(&ca, SystemRole::Node, &["n"]);
    check_server(&InsecureAcceptAnyServer::dangerously_new(), &node, &[], "anything.example").unwrap();
    let e = check_server(&RefuseServer::new("nothing to trust"), &node, &[], "n").unwrap_err();
    assert_eq!(e, TlsError::General("nothing to trust".into()));
}

#[test]
fn checks_after_and_refusal_hook() {
    let ca = TlsCa::generate("c.example.com").unwrap();
    let (proxy, _) = issue(&ca, SystemRole::Proxy, &[PROXY_SERVER_NAME]);
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = seen.clone();
    let v = CheckedServerVerifier::new(server_chain(ca_roots(&ca)).unwrap())
        .check_after(Arc::new(|_| Err(TlsError::General("after".into()))))
        .on_refusal(Arc::new(move |e| record.lock().unwrap().push(e.to_string())));
    check_server(&v, &proxy, &[], PROXY_SERVER_NAME).unwrap_err();
    check_server(&v, &proxy, &[], "wrong.example.com").unwrap_err();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].contains("after"), "{seen:?}");
    assert!(!seen[1].contains("after"), "the chain fails first: {seen:?}");
}

#[test]
fn reloadable_client_verifier_swaps_cas_and_runs_its_check() {
    let a = TlsCa::generate("a.example.com").unwrap();
    let b = TlsCa::generate("b.example.com").unwrap();
    let (from_a, _) = issue(&a, SystemRole::Node, &[]);
    let (from_b, _) = issue(&b, SystemRole::Node, &[]);
    let v = ReloadableClientVerifier::new(&[a.cert_pem().to_string()], ClientAuth::Optional).unwrap();
    assert!(!v.client_auth_mandatory() && v.offer_client_auth() && v.root_hint_subjects().is_empty());
    v.verify_client_cert(&from_a, &[], UnixTime::now()).unwrap();
    v.verify_client_cert(&from_b, &[], UnixTime::now()).unwrap_err();
    v.reload(&[b.cert_pem().to_string()]).unwrap();
    v.verify_client_cert(&from_b, &[], UnixTime::now()).unwrap();
    v.verify_client_cert(&from_a, &[], UnixTime::now()).unwrap_err();
    // An unusable set leaves the current one in place.
    assert!(v.reload(&[]).is_err());
    v.verify_client_cert(&from_b, &[], UnixTime::now()).unwrap();

    let strict = ReloadableClientVerifier::new(&[a.cert_pem().to_string()], ClientAuth::Required)
        .unwrap()
        .with_check(Arc::new(|_| Err(TlsError::General("checked".into()))));
    assert!(strict.client_auth_mandatory());
    let e = strict.verify_client_cert(&from_a, &[], UnixTime::now()).unwrap_err();
    assert_eq!(e, TlsError::General("checked".into()));
}

#[test]
fn custom_client_verifier_asks_its_decision() {
    let a = TlsCa::generate("a.example.com").unwrap();
    let (cert, _) = issue(&a, SystemRole::Agent, &[]);
    let chain = client_chain(ca_roots(&a), ClientAuth::Required).unwrap();
    let v = CustomClientVerifier::new(Arc::new(move |ee, im, now| {
        if x509::parse_identity(ee.as_ref()).is_ok_and(|id| id.has_system_role(SystemRole::Agent)) {
            chain.verify_client_cert(ee, im, now)
        } else {
            Err(TlsError::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
        }
    }));
    assert!(v.client_auth_mandatory());
    v.verify_client_cert(&cert, &[], UnixTime::now()).unwrap();
    let (node, _) = issue(&a, SystemRole::Node, &[]);
    v.verify_client_cert(&node, &[], UnixTime::now()).unwrap_err();
}

/// A real handshake: the server requires a client certificate from CA `a` through the
/// reloadable verifier; the client trusts the server through the role-checked chain.
#[test]
fn handshake_with_both_sides_verified() {
    let ca = TlsCa::generate("c.example.com").unwrap();
    let (_, proxy) = issue(&ca, SystemRole::Proxy, &[PROXY_SERVER_NAME]);
    let (_, node) = issue(&ca, SystemRole::Node, &[]);
    let split = |both: &str| {
        let (cert, key) = both.split_once('\u{0}').unwrap();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes()).map(Result::unwrap).collect();
        (chain, PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap())
    };
    let (server_chain_pem, server_key) = split(&proxy);
    let (client_chain_pem, client_key) = split(&node);
    let client_verifier = ReloadableClientVerifier::new(&[ca.cert_pem().to_string()], ClientAuth::Required).unwrap();
    let server_cfg = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(Arc::new(client_verifier))
        .with_single_cert(server_chain_pem, server_key)
        .unwrap();
    let server_verifier = with_role(server_chain(ca_roots(&ca)).unwrap(), SystemRole::Proxy.as_str());
    let client_cfg = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(server_verifier))
        .with_client_auth_cert(client_chain_pem, client_key)
        .unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(client_cfg), name(PROXY_SERVER_NAME)).unwrap();
    let mut server = rustls::ServerConnection::new(Arc::new(server_cfg)).unwrap();
    for _ in 0..20 {
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
        let mut buf = Vec::new();
        client.write_tls(&mut buf).unwrap();
        server.read_tls(&mut &buf[..]).unwrap();
        server.process_new_packets().unwrap();
        buf.clear();
        server.write_tls(&mut buf).unwrap();
        client.read_tls(&mut &buf[..]).unwrap();
        client.process_new_packets().unwrap();
    }
    assert!(!client.is_handshaking() && !server.is_handshaking(), "the handshake did not finish");
    assert!(server.peer_certificates().is_some_and(|c| !c.is_empty()));
}
