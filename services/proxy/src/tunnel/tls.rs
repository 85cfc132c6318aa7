//! Mutual TLS of the tunnel listener. The proxy presents its own identity (SAN
//! `proxy.portcullis.local`); an agent must present a certificate whose O names a trusted
//! leaf and whose OU is `Agent`, and its chain is checked against that leaf's CA only, so a
//! leaf can pose neither as the root nor as another leaf.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use portcullis_pki::Identity;
use portcullis_pki::verify::{ClientAuth, CustomClientVerifier, client_chain, roots_from_pems};
use portcullis_pki::x509::{PROXY_SERVER_NAME, SystemRole, parse_identity};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, ServerConfig};
use tokio::sync::Notify;

use super::LeafCas;
use crate::ProxyError;

/// cluster -> (the PEMs it was built from, the verifier).
type VerifierCache = HashMap<String, (Vec<String>, Arc<dyn ClientCertVerifier>)>;

/// Verifies agents against the CA of the leaf their certificate names: the decision of a
/// [`CustomClientVerifier`] (which checks the handshake signatures as usual).
pub struct LeafAgentVerifier {
    cas: LeafCas,
    cache: Mutex<VerifierCache>,
    /// Poked when an unknown leaf knocks: its trust may be newer than our last heartbeat.
    refresh: Option<Arc<Notify>>,
}

fn refuse(reason: CertificateError) -> rustls::Error {
    rustls::Error::InvalidCertificate(reason)
}

impl LeafAgentVerifier {
    /// The verifier of the tunnel listener, trusting the leaves of `cas` as they change.
    pub fn verifier(cas: LeafCas, refresh: Option<Arc<Notify>>) -> CustomClientVerifier {
        let this = LeafAgentVerifier { cas, cache: Mutex::new(HashMap::new()), refresh };
        CustomClientVerifier::new(Arc::new(move |end_entity, intermediates, now| this.verify(end_entity, intermediates, now)))
    }

    /// The WebPKI verifier trusting exactly `pems`, built once per CA set.
    fn verifier_for(&self, cluster: &str, pems: &[String]) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((built_from, v)) = cache.get(cluster)
            && built_from == pems
        {
            return Ok(v.clone());
        }
        let v = roots_from_pems(pems)
            .and_then(|roots| client_chain(roots, ClientAuth::Required))
            .map_err(|e| rustls::Error::General(format!("leaf {cluster:?} CA: {e}")))?;
        cache.insert(cluster.to_string(), (pems.to_vec(), v.clone()));
        // Leaves that are gone should not keep verifiers alive.
        let known = self.cas.read().unwrap_or_else(|p| p.into_inner());
        cache.retain(|k, _| known.contains_key(k));
        Ok(v)
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let id = parse_identity(end_entity.as_ref()).map_err(|e| {
            tracing::info!("tunnel agent refused: unreadable certificate: {e}");
            refuse(CertificateError::BadEncoding)
        })?;
        if !id.has_system_role(SystemRole::Agent) {
            tracing::info!(name = %id.name, cluster = %id.cluster, roles = ?id.system_roles, "tunnel agent refused: the certificate is not an Agent certificate");
            return Err(refuse(CertificateError::ApplicationVerificationFailure));
        }
        let pems = self.cas.read().unwrap_or_else(|p| p.into_inner()).get(&id.cluster).cloned();
        let Some(pems) = pems else {
            tracing::info!(name = %id.name, cluster = %id.cluster, "tunnel agent refused: {:?} is not a trusted leaf cluster", id.cluster);
            if let Some(r) = &self.refresh {
                r.notify_one();
            }
            return Err(refuse(CertificateError::UnknownIssuer));
        };
        self.verifier_for(&id.cluster, &pems)?
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| {
                tracing::info!(name = %id.name, cluster = %id.cluster, "tunnel agent refused: not signed by the leaf's CA: {e}");
            })
    }
}

/// The tunnel listener's TLS: the proxy identity (certificate + cluster CA chain), ALPN h2,
/// agents verified by `verifier`.
pub fn server_config(id: &Identity, verifier: Arc<dyn ClientCertVerifier>) -> Result<ServerConfig, ProxyError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| ProxyError::Identity(format!("tunnel TLS {what}: {e}"));
    let mut chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(id.tls_cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad("certificate", &e))?;
    let Some(leaf) = chain.first() else {
        return Err(ProxyError::Identity("the proxy identity holds no TLS certificate".into()));
    };
    if !has_dns_name(leaf.as_ref(), PROXY_SERVER_NAME) {
        tracing::warn!(
            "the proxy's TLS certificate lacks the name {PROXY_SERVER_NAME}: tunnel agents will refuse it; re-join the proxy to get a new one"
        );
    }
    for pem in &id.tls_ca_pems {
        for der in portcullis_pki::x509::pem_to_ders(pem).map_err(|e| bad("CA", &e))? {
            chain.push(CertificateDer::from(der));
        }
    }
    let key = PrivateKeyDer::from_pem_slice(id.tls_key_pem.expose().as_bytes()).map_err(|e| bad("key", &e))?;
    let mut cfg = ServerConfig::builder_with_provider(portcullis_rpc::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("protocol versions", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| bad("key pair", &e))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// Whether a DER certificate carries `name` as a DNS subject alternative name.
fn has_dns_name(der: &[u8], name: &str) -> bool {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(|n| matches!(n, GeneralName::DNSName(d) if d.eq_ignore_ascii_case(name)))
}
