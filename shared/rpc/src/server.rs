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
