//! Every TLS certificate verifier of Portcullis, built from a few blocks: chain checks over a root store, CA pins, role checks, an explicit insecure mode, and a reloadable client-certificate check.
//!
//! Server certificates (what a client checks): [`server_chain`] (chain and name),
//! [`ChainOnlyVerifier`] (chain, any name), [`PinnedCaVerifier`] (a CA pinned by SPKI hash),
//! [`InsecureAcceptAnyServer`] (no check, only by explicit choice), [`RefuseServer`], and
//! [`CheckedServerVerifier`] to add a check (such as [`role_check`]) before or after any of them.
//! Client certificates (what a server checks): [`client_chain`], [`ReloadableClientVerifier`]
//! (CAs swapped at run time, optional extra check) and [`CustomClientVerifier`] (the caller
//! decides, the handshake signatures are checked as usual).
//!
//! Every verifier here checks the handshake signatures, so even the insecure one proves the
//! peer holds the key of the certificate it shows.

use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::x509::{AUTH_SERVER_NAME, PROXY_SERVER_NAME, SystemRole};

/// The rustls crypto provider used everywhere: ring, the one crypto backend of the workspace
/// (every rustls-based dependency is built with its `ring` feature).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A trust anchor or verifier could not be set up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VerifyError {
    /// A CA certificate is unreadable or unusable as a trust anchor.
    #[error("bad CA certificate: {0}")]
    BadCa(String),
    /// rustls refused to build the verifier (for instance: no trust anchors).
    #[error("{0}")]
    Build(String),
}

impl From<VerifyError> for TlsError {
    fn from(e: VerifyError) -> Self {
        TlsError::General(e.to_string())
    }
}

/// A root store of CA certificates in DER.
pub fn roots_from_ders(ders: &[Vec<u8>]) -> Result<RootCertStore, VerifyError> {
    let mut roots = RootCertStore::empty();
    for d in ders {
        roots.add(CertificateDer::from(d.clone())).map_err(|e| VerifyError::BadCa(e.to_string()))?;
    }
    Ok(roots)
}

/// A root store of every certificate in the PEM texts `pems`.
pub fn roots_from_pems(pems: &[String]) -> Result<RootCertStore, VerifyError> {
    let mut ders = Vec::new();
    for pem in pems {
        ders.extend(crate::x509::pem_to_ders(pem).map_err(|e| VerifyError::BadCa(e.to_string()))?);
    }
    roots_from_ders(&ders)
}

// ---------------------------------------------------------------- server certificates

/// The standard WebPKI check of a server: chain to one of `roots`, valid now, for the name dialled.
pub fn server_chain(roots: RootCertStore) -> Result<Arc<WebPkiServerVerifier>, VerifyError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
        .build()
        .map_err(|e| VerifyError::Build(e.to_string()))
}

/// Handshake signatures checked with the provider's algorithms, for verifiers with no inner one.
macro_rules! provider_signatures {
    ($provider:expr) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, TlsError> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &$provider(self).signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, TlsError> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &$provider(self).signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            $provider(self).signature_verification_algorithms.supported_schemes()
        }
    };
}

/// Handshake signatures delegated to the verifier `$inner(self)` returns.
macro_rules! delegated_signatures {
    ($inner:expr) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, TlsError> {
            $inner(self).verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, TlsError> {
            $inner(self).verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            $inner(self).supported_verify_schemes()
        }
    };
}

/// Chain checked, name not (libpq's `sslmode=verify-ca`).
#[derive(Debug)]
pub struct ChainOnlyVerifier(Arc<WebPkiServerVerifier>);

impl ChainOnlyVerifier {
    /// Trusts servers whose chain leads to one of `roots`, whatever name they were dialled by.
    pub fn new(roots: RootCertStore) -> Result<Self, VerifyError> {
        Ok(ChainOnlyVerifier(server_chain(roots)?))
    }
}

impl ServerCertVerifier for ChainOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    delegated_signatures!(|s: &Self| s.0.clone());
}

/// Accepts a server whose chain holds a CA with one of the pinned SPKI hashes
/// ([`crate::x509::ca_pin`]) and whose certificate that CA signed (a first join by CA pin).
#[derive(Debug)]
pub struct PinnedCaVerifier {
    pins: Vec<String>,
    provider: Arc<CryptoProvider>,
}

impl PinnedCaVerifier {
    /// Trusts the CAs with these pins (`sha256:<hex>`).
    pub fn new(pins: Vec<String>) -> Self {
        PinnedCaVerifier { pins, provider: crypto_provider() }
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        for ca in intermediates {
            let pin = crate::x509::ca_pin_der(ca).map_err(|e| TlsError::General(e.to_string()))?;
            if self.pins.contains(&pin) {
                let v = server_chain(roots_from_ders(&[ca.to_vec()])?)?;
                return v.verify_server_cert(end_entity, &[], server_name, ocsp, now);
            }
        }
        Err(TlsError::General("the auth service's CA does not match the configured ca_pin".into()))
    }

    provider_signatures!(|s: &Self| s.provider.clone());
}

/// Accepts any server certificate: for a first join or login the operator chose to make with
/// `--insecure`, and for tests. Only [`InsecureAcceptAnyServer::dangerously_new`] makes one.
#[derive(Debug)]
pub struct InsecureAcceptAnyServer {
    provider: Arc<CryptoProvider>,
}

impl InsecureAcceptAnyServer {
    /// The verifier that checks nothing but the handshake signature. Say why at the call site.
    pub fn dangerously_new() -> Self {
        InsecureAcceptAnyServer { provider: crypto_provider() }
    }
}

impl ServerCertVerifier for InsecureAcceptAnyServer {
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

    provider_signatures!(|s: &Self| s.provider.clone());
}

/// Refuses every server with `reason` (a client that has nothing to trust yet).
#[derive(Debug)]
pub struct RefuseServer {
    reason: String,
    provider: Arc<CryptoProvider>,
}

impl RefuseServer {
    /// Refuses with `TlsError::General(reason)`.
    pub fn new(reason: impl Into<String>) -> Self {
        RefuseServer { reason: reason.into(), provider: crypto_provider() }
    }
}

impl ServerCertVerifier for RefuseServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Err(TlsError::General(self.reason.clone()))
    }

    provider_signatures!(|s: &Self| s.provider.clone());
}

/// A check on a peer's end-entity certificate (DER), added to a verifier.
pub type CertCheck = Arc<dyn Fn(&CertificateDer<'_>) -> Result<(), TlsError> + Send + Sync>;

/// Told of every refusal (a client that wants to explain a failed handshake records it).
pub type OnRefusal = Arc<dyn Fn(&TlsError) + Send + Sync>;

/// A server verifier with extra checks before and after an inner one, and an optional hook
/// told of every refusal.
pub struct CheckedServerVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    before: Option<CertCheck>,
    after: Option<CertCheck>,
    on_refusal: Option<OnRefusal>,
}

impl std::fmt::Debug for CheckedServerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedServerVerifier").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl CheckedServerVerifier {
    /// `inner` alone, until checks are added.
    pub fn new(inner: Arc<dyn ServerCertVerifier>) -> Self {
        CheckedServerVerifier { inner, before: None, after: None, on_refusal: None }
    }

    /// Runs `check` before `inner`: its refusal wins even when `inner` would refuse too.
    #[must_use]
    pub fn check_before(mut self, check: CertCheck) -> Self {
        self.before = Some(check);
        self
    }

    /// Runs `check` once `inner` accepted the certificate.
    #[must_use]
    pub fn check_after(mut self, check: CertCheck) -> Self {
        self.after = Some(check);
        self
    }

    /// Calls `hook` with every refusal, from a check or from `inner`.
    #[must_use]
    pub fn on_refusal(mut self, hook: OnRefusal) -> Self {
        self.on_refusal = Some(hook);
        self
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        if let Some(check) = &self.before {
            check(end_entity)?;
        }
        let verified = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        if let Some(check) = &self.after {
            check(end_entity)?;
        }
        Ok(verified)
    }
}

impl ServerCertVerifier for CheckedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        self.verify(end_entity, intermediates, server_name, ocsp, now).inspect_err(|e| {
            if let Some(hook) = &self.on_refusal {
                hook(e);
            }
        })
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.inner.root_hint_subjects()
    }

    delegated_signatures!(|s: &Self| s.inner.clone());
}

// ---------------------------------------------------------------- system roles

/// The system role a server must hold to answer as `server_name`: the fixed names are
/// issued to one role each, and checking the role too means a certificate the same CA gave
/// a node (or an agent) can never pass for the auth service or a proxy.
pub fn server_role_for(server_name: &str) -> Option<&'static str> {
    if server_name.eq_ignore_ascii_case(AUTH_SERVER_NAME) {
        Some(SystemRole::Auth.as_str())
    } else if server_name.eq_ignore_ascii_case(PROXY_SERVER_NAME) {
        Some(SystemRole::Proxy.as_str())
    } else {
        None
    }
}

/// A server presented a certificate for another system role than the one required.
/// A connector can add the address it dialled with [`WrongServerRole::describe`].
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
        r if r == SystemRole::Auth.as_str() => "auth service",
        r if r == SystemRole::Proxy.as_str() => "proxy",
        _ => "server",
    }
}

/// Checks the server certificate (DER) carries `required` among its system roles.
pub fn check_server_role(end_entity: &[u8], required: &str) -> Result<(), WrongServerRole> {
    let presented = crate::x509::parse_identity(end_entity).map(|id| id.system_roles).unwrap_or_default();
    if presented.iter().any(|r| r == required) {
        Ok(())
    } else {
        Err(WrongServerRole { presented, required: required.to_string() })
    }
}

/// [`check_server_role`] as a [`CertCheck`]; the refusal carries the [`WrongServerRole`]
/// (find it again with [`find_wrong_role`]).
pub fn role_check(required: &'static str) -> CertCheck {
    Arc::new(move |cert| {
        check_server_role(cert.as_ref(), required).map_err(|e| TlsError::Other(rustls::OtherError(Arc::new(e))))
    })
}

/// `inner` with the role check first: a certificate of the wrong role is refused with that
/// reason even when it also fails the name or usage check, the clearest thing to tell a user.
pub fn with_role(inner: Arc<dyn ServerCertVerifier>, required: &'static str) -> CheckedServerVerifier {
    CheckedServerVerifier::new(inner).check_before(role_check(required))
}

/// Finds a [`WrongServerRole`] in an error chain (rustls wraps it in its own error, and a
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

// ---------------------------------------------------------------- client certificates

/// Whether a server requires a client certificate or merely reads one when offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// The handshake fails without a valid client certificate.
    Required,
    /// Anonymous clients pass; a certificate that is offered must be valid.
    Optional,
}

/// The standard WebPKI check of client certificates against `roots`.
pub fn client_chain(roots: RootCertStore, auth: ClientAuth) -> Result<Arc<dyn ClientCertVerifier>, VerifyError> {
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto_provider());
    let builder = match auth {
        ClientAuth::Required => builder,
        ClientAuth::Optional => builder.allow_unauthenticated(),
    };
    builder.build().map_err(|e| VerifyError::Build(e.to_string()))
}

/// Client certificates checked against CAs that can be swapped while the listener runs
/// (rustls keeps one verifier per listener), plus an optional check of the certificate made
/// before the chain is. Offers no CA hints: the set can change under the lock, and with an
/// empty list clients send the certificate they hold.
pub struct ReloadableClientVerifier {
    current: RwLock<Arc<dyn ClientCertVerifier>>,
    auth: ClientAuth,
    check: Option<CertCheck>,
}

impl std::fmt::Debug for ReloadableClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadableClientVerifier").field("auth", &self.auth).finish_non_exhaustive()
    }
}

impl ReloadableClientVerifier {
    /// A verifier trusting the CA certificates in the PEM texts `ca_pems`.
    pub fn new(ca_pems: &[String], auth: ClientAuth) -> Result<Self, VerifyError> {
        Ok(ReloadableClientVerifier { current: RwLock::new(client_chain(roots_from_pems(ca_pems)?, auth)?), auth, check: None })
    }

    /// Adds `check`, run on every client certificate before its chain.
    #[must_use]
    pub fn with_check(mut self, check: CertCheck) -> Self {
        self.check = Some(check);
        self
    }

    /// Replaces the trusted CAs; the old set stays when the new one is unusable.
    pub fn reload(&self, ca_pems: &[String]) -> Result<(), VerifyError> {
        let v = client_chain(roots_from_pems(ca_pems)?, self.auth)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = v;
        Ok(())
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ClientCertVerifier for ReloadableClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.auth == ClientAuth::Required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        if let Some(check) = &self.check {
            check(end_entity)?;
        }
        self.current().verify_client_cert(end_entity, intermediates, now)
    }

    delegated_signatures!(|s: &Self| s.current());
}

/// The decision of a [`CustomClientVerifier`]: end entity, intermediates, now.
pub type ClientDecision =
    Arc<dyn Fn(&CertificateDer<'_>, &[CertificateDer<'_>], UnixTime) -> Result<ClientCertVerified, TlsError> + Send + Sync>;

/// A mandatory client-certificate check whose decision the caller makes (for instance: pick
/// the CA by the cluster the certificate names, then run [`client_chain`] over it); the
/// handshake signatures are checked as usual and no CA hints are sent.
pub struct CustomClientVerifier {
    decide: ClientDecision,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for CustomClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomClientVerifier").finish_non_exhaustive()
    }
}

impl CustomClientVerifier {
    /// A verifier that asks `decide` about every client certificate.
    pub fn new(decide: ClientDecision) -> Self {
        CustomClientVerifier { decide, provider: crypto_provider() }
    }
}

impl ClientCertVerifier for CustomClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        (self.decide)(end_entity, intermediates, now)
    }

    provider_signatures!(|s: &Self| s.provider.clone());
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
