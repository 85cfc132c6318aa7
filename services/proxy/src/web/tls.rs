//! TLS for the web API: the HTTPS certificate (configured key pairs or a self-signed one) and
//! an optional client-certificate check against the cluster's TLS CAs, which the heartbeat
//! can refresh without restarting the listener.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use portcullis_pki::verify;
use rustls::ServerConfig;

use crate::ProxyError;

/// Builds the HTTPS server configuration. `keypairs` are (key file, cert file) pairs from
/// `proxy_service.https_keypairs`; when empty a self-signed certificate for `names` is made.
pub fn server_config(
    keypairs: &[(std::path::PathBuf, std::path::PathBuf)],
    names: &[String],
    client_verifier: Arc<dyn ClientCertVerifier>,
) -> Result<ServerConfig, ProxyError> {
    let certs = if keypairs.is_empty() {
        tracing::warn!(
            names = %names.join(", "),
            "no proxy_service.https_keypairs configured: serving HTTPS with a self-signed certificate; clients need --insecure"
        );
        vec![self_signed(names)?]
    } else {
        keypairs.iter().map(|(key, cert)| load_keypair(key, cert)).collect::<Result<_, _>>()?
    };
    config_with(certs, client_verifier)
}

fn config_with(certs: Vec<NamedCert>, client_verifier: Arc<dyn ClientCertVerifier>) -> Result<ServerConfig, ProxyError> {
    let provider = portcullis_rpc::crypto_provider();
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ProxyError::Tls(e.to_string()))?
        .with_client_cert_verifier(client_verifier)
        .with_cert_resolver(Arc::new(CertResolver { certs }));
    Ok(cfg)
}

/// One certificate the server can present, with the DNS names it is valid for.
#[derive(Debug)]
struct NamedCert {
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

/// Picks the configured certificate whose names match the SNI name, else the first one, so a
/// client dialling by IP address (no SNI) still gets a certificate.
#[derive(Debug)]
struct CertResolver {
    certs: Vec<NamedCert>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let by_name = hello.server_name().and_then(|sni| {
            self.certs.iter().find(|c| c.names.iter().any(|n| name_matches(n, sni)))
        });
        by_name.or_else(|| self.certs.first()).map(|c| c.key.clone())
    }
}

/// DNS name match with a single leading wildcard label, as browsers do.
fn name_matches(pattern: &str, host: &str) -> bool {
    let (p, h) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    match p.strip_prefix("*.") {
        Some(suffix) => h.split_once('.').is_some_and(|(_, rest)| rest == suffix),
        None => p == h,
    }
}

/// A fresh self-signed certificate for `names` (DNS names or IP addresses).
fn self_signed(names: &[String]) -> Result<NamedCert, ProxyError> {
    let tls = |e: &dyn std::fmt::Display| ProxyError::Tls(format!("cannot make a self-signed certificate: {e}"));
    let mut names: Vec<String> = names.iter().filter(|n| !n.is_empty()).cloned().collect();
    names.sort();
    names.dedup();
    let key = rcgen::KeyPair::generate().map_err(|e| tls(&e))?;
    let mut params = rcgen::CertificateParams::new(names.clone()).map_err(|e| tls(&e))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names.first().cloned().unwrap_or_else(|| "localhost".into()));
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "Portcullis proxy (self-signed)");
    let cert = params.self_signed(&key).map_err(|e| tls(&e))?;
    let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| tls(&e))?;
    let certified = CertifiedKey::from_der(vec![cert.der().clone()], key_der, &portcullis_rpc::crypto_provider())
        .map_err(|e| tls(&e))?;
    Ok(NamedCert { names, key: Arc::new(certified) })
}

/// Reads a PEM key and certificate chain, checking that they belong together.
fn load_keypair(key_path: &Path, cert_path: &Path) -> Result<NamedCert, ProxyError> {
    let err = |reason: String| ProxyError::KeyPair {
        key: key_path.display().to_string(),
        cert: cert_path.display().to_string(),
        reason,
    };
    let cert_pem = std::fs::read(cert_path).map_err(|e| err(format!("cannot read the certificate: {e}")))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("the certificate file is not PEM: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(err("the certificate file holds no certificate".into()));
    };
    let names = dns_names(leaf).map_err(err)?;
    let key_pem = std::fs::read(key_path).map_err(|e| err(format!("cannot read the key: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| err(format!("the key file is not a PEM private key: {e}")))?;
    let certified = CertifiedKey::from_der(chain, key, &portcullis_rpc::crypto_provider())
        .map_err(|e| err(format!("key and certificate do not match or are unsupported: {e}")))?;
    Ok(NamedCert { names, key: Arc::new(certified) })
}

/// The DNS subject alternative names of a certificate (for SNI selection).
fn dns_names(der: &[u8]) -> Result<Vec<String>, String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("unreadable certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    Ok(names)
}

/// Optional client certificates, checked against the cluster TLS CAs of the moment (the
/// heartbeat swaps them without restarting the listener): `portcullis_pki::verify`'s
/// reloadable verifier, with the proxy's error type at the edge.
#[derive(Debug)]
pub struct ReloadableClientVerifier(Arc<verify::ReloadableClientVerifier>);

impl ReloadableClientVerifier {
    /// A verifier trusting the given PEM CA certificates.
    pub fn new(ca_pems: &[String]) -> Result<Self, ProxyError> {
        // Login and ping have no certificate yet; handlers that need one ask for it.
        let v = verify::ReloadableClientVerifier::new(ca_pems, verify::ClientAuth::Optional).map_err(tls_err)?;
        Ok(ReloadableClientVerifier(Arc::new(v)))
    }

    /// Replaces the trusted CAs; the old set stays when the new one is unusable.
    pub fn reload(&self, ca_pems: &[String]) -> Result<(), ProxyError> {
        self.0.reload(ca_pems).map_err(tls_err)
    }

    /// The rustls verifier to put in a `ServerConfig`.
    pub fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.0.clone()
    }
}

fn tls_err(e: verify::VerifyError) -> ProxyError {
    ProxyError::Tls(format!("cluster TLS CA: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a TLS handshake between in-memory connections.
    fn handshake(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection) -> Result<(), rustls::Error> {
        for _ in 0..20 {
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut &buf[..]).unwrap();
            server.process_new_packets()?;
            buf.clear();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut &buf[..]).unwrap();
            client.process_new_packets()?;
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn self_signed_config_serves_and_reads_optional_client_certs() {
        use portcullis_pki::x509::{self, TlsCa, TlsCertRequest};
        let ca = TlsCa::generate("test.example.com").unwrap();
        let verifier = Arc::new(ReloadableClientVerifier::new(&[ca.cert_pem().to_string()]).unwrap());
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "proxy-1".to_string()];
        // The public builder works...
        server_config(&[], &names, verifier.verifier()).unwrap();
        // ...and a config over a known self-signed certificate lets a client check it.
        let cert = self_signed(&names).unwrap();
        assert_eq!(cert.names, vec!["127.0.0.1", "localhost", "proxy-1"]);
        assert_eq!(dns_names(cert.key.cert[0].as_ref()).unwrap(), vec!["localhost", "proxy-1"]);
        let server_der = cert.key.cert[0].clone();
        let server_cfg = Arc::new(config_with(vec![cert], verifier.verifier()).unwrap());

        let mut roots = rustls::RootCertStore::empty();
        roots.add(server_der).unwrap();
        let builder = || {
            rustls::ClientConfig::builder_with_provider(portcullis_rpc::crypto_provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone())
        };
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();

        // Without a client certificate: accepted, no peer certificate.
        let mut client = rustls::ClientConnection::new(Arc::new(builder().with_no_client_auth()), name.clone()).unwrap();
        let mut server = rustls::ServerConnection::new(server_cfg.clone()).unwrap();
        handshake(&mut client, &mut server).unwrap();
        assert!(server.peer_certificates().is_none());

        // With a certificate from the cluster CA: the server sees it.
        let key = x509::generate_key().unwrap();
        let pem = ca
            .issue(&TlsCertRequest {
                public_key_der: x509::public_key_der(&key),
                name: "alice".into(),
                system_roles: vec!["User".into()],
                roles: vec!["access".into()],
                traits: Default::default(),
                route_to_cluster: String::new(),
                dns_names: vec![],
                ttl: std::time::Duration::from_secs(600),
            })
            .unwrap();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().unwrap();
        let key_der = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
        let with_cert = || Arc::new(builder().with_client_auth_cert(chain.clone(), key_der.clone_key()).unwrap());
        let mut client = rustls::ClientConnection::new(with_cert(), name.clone()).unwrap();
        let mut server = rustls::ServerConnection::new(server_cfg.clone()).unwrap();
        handshake(&mut client, &mut server).unwrap();
        let seen = server.peer_certificates().unwrap();
        assert_eq!(seen[0].as_ref(), chain[0].as_ref());
        assert_eq!(x509::parse_identity(seen[0].as_ref()).unwrap().name, "alice");

        // After the CA set changes, the old certificate is refused (a fresh client config,
        // so no session is resumed).
        let other = TlsCa::generate("other.example.com").unwrap();
        verifier.reload(&[other.cert_pem().to_string()]).unwrap();
        let mut client = rustls::ClientConnection::new(with_cert(), name).unwrap();
        let mut server = rustls::ServerConnection::new(server_cfg).unwrap();
        assert!(handshake(&mut client, &mut server).is_err());
    }

    #[test]
    fn keypair_files_load_and_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("proxy-tls-{}", portcullis_pki::random_hex::<6>().unwrap()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["proxy.example.com".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (kp, cp) = (dir.join("key.pem"), dir.join("cert.pem"));
        std::fs::write(&kp, key.serialize_pem()).unwrap();
        std::fs::write(&cp, cert.pem()).unwrap();
        let loaded = load_keypair(&kp, &cp).unwrap();
        assert_eq!(loaded.names, vec!["proxy.example.com"]);
        let missing = dir.join("nope.pem");
        let e = load_keypair(&kp, &missing).unwrap_err().to_string();
        assert!(e.contains("nope.pem") && e.contains("cannot read the certificate"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn wildcard_names_match_one_label() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(name_matches("Proxy.Example.com", "proxy.example.com"));
    }
}
