//! Mutual-TLS settings for gRPC servers: clients may connect without a certificate (for
//! the join call) and each method decides what identity it needs.

use portcullis_pki::Identity;
use tonic::transport::{Certificate, Identity as TonicIdentity, ServerTlsConfig};

/// TLS for a server holding `cert_pem` (leaf, then CA, so pinning clients see the CA),
/// accepting client certificates from any of `client_ca_pems`.
pub fn server_tls(cert_pem: &str, key_pem: &str, ca_pems: &[String], client_ca_pems: &[String]) -> ServerTlsConfig {
    let chain = format!("{}\n{}", cert_pem.trim(), ca_pems.join("\n"));
    ServerTlsConfig::new()
        .identity(TonicIdentity::from_pem(chain, key_pem))
        .client_ca_root(Certificate::from_pem(client_ca_pems.join("\n")))
        .client_auth_optional(true)
}

/// [`server_tls`] for a process identity.
pub fn server_tls_for(id: &Identity) -> ServerTlsConfig {
    server_tls(&id.tls_cert_pem, id.tls_key_pem.expose(), &id.tls_ca_pems, &id.tls_ca_pems)
}

/// The rustls form of [`server_tls`], for servers that run TLS handshakes themselves (under
/// a timeout, through `portcullis_net::tls_incoming`) and hand tonic the finished streams.
/// Client certificates are optional and checked against `client_ca_pems`; ALPN offers h2.
pub fn rustls_server_config(
    cert_pem: &str,
    key_pem: &str,
    ca_pems: &[String],
    client_ca_pems: &[String],
) -> Result<rustls::ServerConfig, crate::RpcError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls = |what: &str, e: &dyn std::fmt::Display| crate::RpcError::Tls(format!("{what}: {e}"));
    let chain_pem = format!("{}\n{}", cert_pem.trim(), ca_pems.join("\n"));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| tls("server certificate", &e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| tls("server key", &e))?;
    let mut roots = rustls::RootCertStore::empty();
    for pem in client_ca_pems {
        for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(der.map_err(|e| tls("client CA", &e))?).map_err(|e| tls("client CA", &e))?;
        }
    }
    let provider = crate::crypto_provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(std::sync::Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls("client certificate verifier", &e))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls("protocol versions", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls("server certificate", &e))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}
