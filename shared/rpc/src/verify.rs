//! Server-certificate verifiers for the three ways a client may trust an auth service:
//! by CA, by CA pin (first join), or not at all (first join with --insecure); and the role
//! check every client adds on top: the server must hold the system role its name stands for.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::{DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use portcullis_pki::x509::{AUTH_SERVER_NAME, PROXY_SERVER_NAME, system_role};

use crate::crypto_provider;

/// The system role a server must hold to answer as `server_name`: the fixed names are
/// issued to one role each, and checking the role too means a certificate the same CA gave
/// a node (or an agent) can never pass for the auth service or a proxy.
pub fn server_role_for(server_name: &str) -> Option<&'static str> {
    if server_name.eq_ignore_ascii_case(AUTH_SERVER_NAME) {
        Some(system_role::AUTH)
    } else if server_name.eq_ignore_ascii_case(PROXY_SERVER_NAME) {
        Some(system_role::PROXY)
    } else {
        None
    }
}

/// A server presented a certificate for another system role than the one required.
/// The connector adds the address it dialled (see `client.rs`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.describe(None))]
pub struct WrongServerRole {
    /// The roles the certificate carries (empty: none, or unreadable).
    pub presented: Vec<String>,
    /// The role the client requires.
    pub required: String,
}

impl WrongServerRole {
    /// The user-facing text, naming the server's address when known.
    pub fn describe(&self, addr: Option<&str>) -> String {
        let who = match addr {
            Some(a) => format!("the server at {a}"),
            None => "the server".to_string(),
        };
        let what = if self.presented.is_empty() {
            "a certificate with no Portcullis system role".to_string()
        } else {
            format!("a certificate for role {}", self.presented.join(","))
        };
        format!(
            "{who} presented {what}, not {}: it is not the {} it claims to be, so nothing was sent to it",
            self.required,
            service_of(&self.required)
        )
    }
}

fn service_of(role: &str) -> &'static str {
    match role {
        r if r == system_role::AUTH => "auth service",
        r if r == system_role::PROXY => "proxy",
        _ => "server",
    }
}

/// Checks the server certificate (DER) carries `required` among its system roles.
pub fn check_server_role(end_entity: &[u8], required: &str) -> Result<(), WrongServerRole> {
    let presented = portcullis_pki::x509::parse_identity(end_entity).map(|id| id.system_roles).unwrap_or_default();
    if presented.iter().any(|r| r == required) {
        Ok(())
    } else {
        Err(WrongServerRole { presented, required: required.to_string() })
    }
}

/// Wraps a verifier with the role check. The role is checked first: a certificate of the
/// wrong role is refused with that reason even when it also fails the name or usage check,
/// which is the clearest thing to tell the user.
#[derive(Debug)]
pub struct RoleVerifier {
    pub inner: Arc<dyn ServerCertVerifier>,
    pub role: &'static str,
}

impl ServerCertVerifier for RoleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        check_server_role(end_entity.as_ref(), self.role)
            .map_err(|e| TlsError::Other(rustls::OtherError(Arc::new(e))))?;
        self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// Finds a [`WrongServerRole`] in an error chain (rustls wraps it in its own error, and the
/// TLS stream in an I/O error).
pub fn find_wrong_role<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a WrongServerRole> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(w) = err.downcast_ref::<WrongServerRole>() {
            return Some(w);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(w) = find_wrong_role(inner)
        {
            return Some(w);
        }
        if let Some(TlsError::Other(o)) = err.downcast_ref::<TlsError>()
            && let Some(w) = o.0.downcast_ref::<WrongServerRole>()
        {
            return Some(w);
        }
        cur = err.source();
    }
    None
}

fn roots(ders: &[Vec<u8>]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for d in ders {
        roots
            .add(CertificateDer::from(d.clone()))
            .map_err(|e| TlsError::General(format!("bad CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// Builds the standard WebPKI verifier over the given CA certificates (DER).
pub fn ca_verifier(ders: &[Vec<u8>]) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ders)?), crypto_provider())
        .build()
        .map_err(|e| TlsError::General(e.to_string()))
}

/// Accepts a server whose chain contains a CA with one of the pinned SPKI hashes and
/// whose certificate that CA signed.
#[derive(Debug)]
pub struct PinVerifier {
    pub pins: Vec<String>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        for ca in intermediates {
            let pin = portcullis_pki::x509::ca_pin_der(ca).map_err(|e| TlsError::General(e.to_string()))?;
            if self.pins.contains(&pin) {
                let v = ca_verifier(&[ca.to_vec()])?;
                return v.verify_server_cert(end_entity, &[], server_name, ocsp, now);
            }
        }
        Err(TlsError::General(
            "the auth service's CA does not match the configured ca_pin".into(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &crypto_provider().signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &crypto_provider().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crypto_provider().signature_verification_algorithms.supported_schemes()
    }
}

/// Accepts any server certificate. Only for a first join the operator chose to make
/// with `--insecure`; the handshake signature is still checked so the session is sound.
#[derive(Debug)]
pub struct InsecureVerifier;

impl ServerCertVerifier for InsecureVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &crypto_provider().signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &crypto_provider().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crypto_provider().signature_verification_algorithms.supported_schemes()
    }
}
