//! SSH keys and OpenSSH certificates: the user and host certificate authorities.

use std::collections::BTreeMap;
use std::time::Duration;

use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::{Fingerprint, LineEnding};
pub use russh::keys::{Certificate, HashAlg, PrivateKey, PublicKey};
use serde::{Deserialize, Serialize};

use crate::{PkiError, random_bytes, unix_now};

/// Extension carrying the user's roles, as Teleport encodes it.
pub const EXT_ROLES: &str = "teleport-roles";
/// Extension carrying the user's traits as JSON.
pub const EXT_TRAITS: &str = "teleport-traits";
/// Extension naming the cluster the certificate is meant for.
pub const EXT_ROUTE_TO_CLUSTER: &str = "teleport-route-to-cluster";
/// Host certificate extension naming the host's system role.
pub const EXT_HOST_ROLE: &str = "x-teleport-role";
/// Host certificate extension naming the issuing cluster.
pub const EXT_HOST_AUTHORITY: &str = "x-teleport-authority";

/// Prefix of the placeholder principal of a user certificate whose roles grant no logins
/// (Teleport's spelling). An empty principal list would mean "any login" to OpenSSH, so
/// such a certificate names one principal that no Unix account can have (a leading '-').
pub const NO_LOGIN_PREFIX: &str = "-teleport-nologin-";

/// Whether `login` is the no-login placeholder: never a login a server may grant.
pub fn is_no_login(login: &str) -> bool {
    login.starts_with(NO_LOGIN_PREFIX)
}

/// A fresh placeholder principal, random so it matches no configured login either.
fn no_login_principal() -> Result<String, PkiError> {
    Ok(format!("{NO_LOGIN_PREFIX}{}", hex::encode(random_bytes::<16>()?)))
}

/// Certificates are valid from one minute in the past, to tolerate clock skew.
const BACKDATE_SECS: u64 = 60;

/// Makes a new Ed25519 key.
pub fn generate_key() -> Result<PrivateKey, PkiError> {
    let seed = random_bytes::<32>()?;
    Ok(PrivateKey::new(
        KeypairData::Ed25519(Ed25519Keypair::from_seed(&seed)),
        "",
    )?)
}

/// OpenSSH private key text.
pub fn private_key_openssh(key: &PrivateKey) -> Result<String, PkiError> {
    Ok(key.to_openssh(LineEnding::LF)?.to_string())
}

/// Reads an OpenSSH private key.
pub fn parse_private_key(text: &str) -> Result<PrivateKey, PkiError> {
    Ok(PrivateKey::from_openssh(text.trim())?)
}

/// The authorized_keys form (`ssh-ed25519 AAAA...`) of a public key, without comment.
pub fn public_key_line(key: &PublicKey) -> Result<String, PkiError> {
    let mut k = key.clone();
    k.set_comment("");
    Ok(k.to_openssh()?.trim().to_string())
}

/// Parses an authorized_keys line; a leading `@cert-authority *` marker is accepted.
pub fn parse_public_key(line: &str) -> Result<PublicKey, PkiError> {
    let line = line.trim();
    let line = match line.strip_prefix("@cert-authority") {
        Some(rest) => rest.trim_start().split_once(' ').map(|(_, k)| k).unwrap_or(rest),
        None => line,
    };
    Ok(PublicKey::from_openssh(line.trim())?)
}

/// Parses the one-line OpenSSH form of a certificate.
pub fn parse_certificate(text: &str) -> Result<Certificate, PkiError> {
    Ok(Certificate::from_openssh(text.trim())?)
}

/// The SHA256 fingerprint of a key, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// What goes into a user certificate.
#[derive(Debug, Clone)]
pub struct UserCertRequest {
    pub public_key: PublicKey,
    pub username: String,
    pub principals: Vec<String>,
    pub ttl: Duration,
    pub roles: Vec<String>,
    pub traits: BTreeMap<String, Vec<String>>,
    pub route_to_cluster: String,
    pub permit_port_forwarding: bool,
    pub permit_agent_forwarding: bool,
}

/// What goes into a host certificate.
#[derive(Debug, Clone)]
pub struct HostCertRequest {
    pub public_key: PublicKey,
    pub host_id: String,
    pub nodename: String,
    pub cluster_name: String,
    /// System role, e.g. `Node` or `Proxy`.
    pub role: String,
    pub additional_principals: Vec<String>,
    pub ttl: Duration,
}

#[derive(Serialize, Deserialize)]
struct RolesExt {
    version: String,
    roles: Vec<String>,
}

/// An SSH certificate authority: a private key that signs user or host certificates.
pub struct SshCa {
    key: PrivateKey,
}

impl std::fmt::Debug for SshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SshCa({})", fingerprint(self.key.public_key()))
    }
}

impl SshCa {
    pub fn generate() -> Result<Self, PkiError> {
        Ok(SshCa { key: generate_key()? })
    }

    pub fn from_openssh(text: &str) -> Result<Self, PkiError> {
        Ok(SshCa { key: parse_private_key(text)? })
    }

    pub fn private_openssh(&self) -> Result<String, PkiError> {
        private_key_openssh(&self.key)
    }

    pub fn public_key(&self) -> &PublicKey {
        self.key.public_key()
    }

    pub fn public_line(&self) -> Result<String, PkiError> {
        public_key_line(self.key.public_key())
    }

    fn builder(&self, key: &PublicKey, ttl: Duration) -> Result<Builder, PkiError> {
        let now = unix_now();
        let nonce = random_bytes::<32>()?;
        let mut b = Builder::new(
            nonce.to_vec(),
            key.key_data().clone(),
            now.saturating_sub(BACKDATE_SECS),
            now + ttl.as_secs(),
        )?;
        b.serial(u64::from_be_bytes(random_bytes::<8>()?))?;
        Ok(b)
    }

    /// Signs a user certificate: key id = username, principals = logins.
    pub fn sign_user_cert(&self, req: &UserCertRequest) -> Result<Certificate, PkiError> {
        let mut b = self.builder(&req.public_key, req.ttl)?;
        b.cert_type(CertType::User)?;
        b.key_id(req.username.clone())?;
        let mut principals: Vec<String> = req.principals.iter().filter(|p| !is_no_login(p)).cloned().collect();
        if principals.is_empty() {
            principals.push(no_login_principal()?);
        }
        for p in principals {
            b.valid_principal(p)?;
        }
        b.extension("permit-pty", "")?;
        if req.permit_port_forwarding {
            b.extension("permit-port-forwarding", "")?;
        }
        if req.permit_agent_forwarding {
            b.extension("permit-agent-forwarding", "")?;
        }
        let roles = RolesExt { version: "v1".into(), roles: req.roles.clone() };
        b.extension(EXT_ROLES, to_json(&roles)?)?;
        b.extension(EXT_TRAITS, to_json(&req.traits)?)?;
        if !req.route_to_cluster.is_empty() {
            b.extension(EXT_ROUTE_TO_CLUSTER, req.route_to_cluster.clone())?;
        }
        Ok(b.sign(&self.key)?)
    }

    /// Signs a host certificate valid for `host_id.cluster`, `host_id`, `nodename.cluster`,
    /// `nodename` and the additional principals.
    pub fn sign_host_cert(&self, req: &HostCertRequest) -> Result<Certificate, PkiError> {
        let mut b = self.builder(&req.public_key, req.ttl)?;
        b.cert_type(CertType::Host)?;
        b.key_id(format!("{}.{}", req.host_id, req.cluster_name))?;
        let mut principals = vec![
            format!("{}.{}", req.host_id, req.cluster_name),
            req.host_id.clone(),
        ];
        if !req.nodename.is_empty() {
            principals.push(format!("{}.{}", req.nodename, req.cluster_name));
            principals.push(req.nodename.clone());
        }
        principals.extend(req.additional_principals.iter().cloned());
        principals.dedup();
        let mut seen = std::collections::BTreeSet::new();
        for p in principals.into_iter().filter(|p| !p.is_empty()) {
            if seen.insert(p.clone()) {
                b.valid_principal(p)?;
            }
        }
        b.extension(EXT_HOST_ROLE, req.role.clone())?;
        b.extension(EXT_HOST_AUTHORITY, req.cluster_name.clone())?;
        Ok(b.sign(&self.key)?)
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<String, PkiError> {
    serde_json::to_string(v).map_err(|e| PkiError::SshKey(e.to_string()))
}

/// What a user certificate says, read without checking who signed it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserCertInfo {
    pub username: String,
    pub principals: Vec<String>,
    pub roles: Vec<String>,
    pub traits: BTreeMap<String, Vec<String>>,
    pub route_to_cluster: String,
    pub valid_after: u64,
    pub valid_before: u64,
    pub permit_port_forwarding: bool,
    pub permit_agent_forwarding: bool,
    /// SHA256 fingerprint of the CA key that signed it.
    pub ca_fingerprint: String,
}

/// Reads a user certificate's fields (no trust decision is made here).
pub fn user_cert_info(cert: &Certificate) -> Result<UserCertInfo, PkiError> {
    if cert.cert_type() != CertType::User {
        return Err(PkiError::WrongCertType { expected: "user" });
    }
    let ext = cert.extensions();
    let roles = match ext.get(EXT_ROLES) {
        Some(v) => {
            serde_json::from_str::<RolesExt>(v)
                .map_err(|e| PkiError::BadExtension { name: EXT_ROLES, reason: e.to_string() })?
                .roles
        }
        None => Vec::new(),
    };
    let traits = match ext.get(EXT_TRAITS) {
        Some(v) if !v.is_empty() => serde_json::from_str(v)
            .map_err(|e| PkiError::BadExtension { name: EXT_TRAITS, reason: e.to_string() })?,
        _ => BTreeMap::new(),
    };
    let ca_key = PublicKey::from(cert.signature_key().clone());
    Ok(UserCertInfo {
        username: cert.key_id().to_string(),
        principals: cert.valid_principals().to_vec(),
        roles,
        traits,
        route_to_cluster: ext.get(EXT_ROUTE_TO_CLUSTER).cloned().unwrap_or_default(),
        valid_after: cert.valid_after(),
        valid_before: cert.valid_before(),
        permit_port_forwarding: ext.contains_key("permit-port-forwarding"),
        permit_agent_forwarding: ext.contains_key("permit-agent-forwarding"),
        ca_fingerprint: fingerprint(&ca_key),
    })
}

/// Checks that `cert` is a user certificate signed by one of `trusted_cas`, valid at `now`,
/// and returns what it says. Principal and role checks are the caller's.
pub fn verify_user_cert(
    cert: &Certificate,
    trusted_cas: &[PublicKey],
    now: u64,
) -> Result<UserCertInfo, PkiError> {
    let info = user_cert_info(cert)?;
    verify_signed_by(cert, trusted_cas)?;
    check_validity(cert, now)?;
    Ok(info)
}

/// Checks that `cert` is a host certificate signed by one of `trusted_cas`, valid now,
/// naming `principal`.
pub fn verify_host_cert(
    cert: &Certificate,
    trusted_cas: &[PublicKey],
    principal: &str,
    now: u64,
) -> Result<(), PkiError> {
    if cert.cert_type() != CertType::Host {
        return Err(PkiError::WrongCertType { expected: "host" });
    }
    verify_signed_by(cert, trusted_cas)?;
    check_validity(cert, now)?;
    if !cert.valid_principals().iter().any(|p| p == principal) {
        return Err(PkiError::SshKey(format!(
            "host certificate is not valid for {principal:?} (principals: {})",
            cert.valid_principals().join(", ")
        )));
    }
    Ok(())
}

fn verify_signed_by(cert: &Certificate, trusted_cas: &[PublicKey]) -> Result<(), PkiError> {
    let ca_key = PublicKey::from(cert.signature_key().clone());
    let trusted: Vec<Fingerprint> =
        trusted_cas.iter().map(|k| k.fingerprint(HashAlg::Sha256)).collect();
    if !trusted.contains(&ca_key.fingerprint(HashAlg::Sha256)) {
        return Err(PkiError::UntrustedAuthority { fingerprint: fingerprint(&ca_key) });
    }
    cert.verify_signature().map_err(|_| PkiError::BadSignature)
}

fn check_validity(cert: &Certificate, now: u64) -> Result<(), PkiError> {
    if now >= cert.valid_before() {
        return Err(PkiError::Expired { expired_at: format_unix(cert.valid_before()) });
    }
    if now < cert.valid_after() {
        return Err(PkiError::NotYetValid { valid_after: format_unix(cert.valid_after()) });
    }
    Ok(())
}

/// `2026-11-21 10:00:00`-style UTC time for messages.
pub fn format_unix(secs: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(secs.min(i64::MAX as u64) as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    t.format(&fmt).unwrap_or_else(|_| secs.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_logins_get_one_placeholder_principal() {
        let ca = SshCa::generate().unwrap();
        let key = generate_key().unwrap();
        let mut req = user_req(&key, Duration::from_secs(60));
        req.principals = vec![];
        let cert = ca.sign_user_cert(&req).unwrap();
        let p = cert.valid_principals();
        assert_eq!(p.len(), 1, "never an empty list, which OpenSSH reads as any login: {p:?}");
        assert!(is_no_login(&p[0]) && p[0].len() > NO_LOGIN_PREFIX.len(), "{p:?}");
        // A configured login spelled like the placeholder is dropped, not granted.
        req.principals = vec![format!("{NO_LOGIN_PREFIX}x"), "alice".into()];
        let cert = ca.sign_user_cert(&req).unwrap();
        assert_eq!(cert.valid_principals(), ["alice".to_string()]);
    }

    fn user_req(key: &PrivateKey, ttl: Duration) -> UserCertRequest {
        UserCertRequest {
            public_key: key.public_key().clone(),
            username: "alice".into(),
            principals: vec!["alice".into(), "root".into()],
            ttl,
            roles: vec!["access".into()],
            traits: BTreeMap::from([("logins".into(), vec!["alice".into()])]),
            route_to_cluster: "root.example.com".into(),
            permit_port_forwarding: true,
            permit_agent_forwarding: false,
        }
    }

    #[test]
    fn user_cert_round_trips_and_verifies() {
        let ca = SshCa::generate().unwrap();
        let key = generate_key().unwrap();
        let cert = ca.sign_user_cert(&user_req(&key, Duration::from_secs(3600))).unwrap();
        let text = cert.to_openssh().unwrap();
        let parsed = parse_certificate(&text).unwrap();
        let info = verify_user_cert(&parsed, &[ca.public_key().clone()], unix_now()).unwrap();
        assert_eq!(info.username, "alice");
        assert_eq!(info.principals, vec!["alice", "root"]);
        assert_eq!(info.roles, vec!["access"]);
        assert_eq!(info.traits["logins"], vec!["alice"]);
        assert_eq!(info.route_to_cluster, "root.example.com");
        assert!(info.permit_port_forwarding);
        assert!(info.valid_after <= unix_now() - 59);
    }

    #[test]
    fn foreign_ca_and_expiry_are_refused() {
        let ca = SshCa::generate().unwrap();
        let other = SshCa::generate().unwrap();
        let key = generate_key().unwrap();
        let cert = ca.sign_user_cert(&user_req(&key, Duration::from_secs(60))).unwrap();
        let err = verify_user_cert(&cert, &[other.public_key().clone()], unix_now()).unwrap_err();
        assert!(matches!(err, PkiError::UntrustedAuthority { .. }), "{err}");
        let err =
            verify_user_cert(&cert, &[ca.public_key().clone()], unix_now() + 120).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn host_cert_has_principals_and_checks_name() {
        let ca = SshCa::generate().unwrap();
        let key = generate_key().unwrap();
        let cert = ca
            .sign_host_cert(&HostCertRequest {
                public_key: key.public_key().clone(),
                host_id: "abc".into(),
                nodename: "node-1".into(),
                cluster_name: "c.example.com".into(),
                role: "Node".into(),
                additional_principals: vec!["127.0.0.1".into()],
                ttl: Duration::from_secs(3600),
            })
            .unwrap();
        let cas = [ca.public_key().clone()];
        for p in ["abc.c.example.com", "abc", "node-1.c.example.com", "node-1", "127.0.0.1"] {
            verify_host_cert(&cert, &cas, p, unix_now()).unwrap();
        }
        assert!(verify_host_cert(&cert, &cas, "node-2", unix_now()).is_err());
        assert_eq!(cert.extensions().get(EXT_HOST_ROLE).map(String::as_str), Some("Node"));
    }

    #[test]
    fn public_lines_parse_back() {
        let ca = SshCa::generate().unwrap();
        let line = ca.public_line().unwrap();
        assert!(line.starts_with("ssh-ed25519 "));
        let k = parse_public_key(&format!("@cert-authority * {line}")).unwrap();
        assert_eq!(fingerprint(&k), fingerprint(ca.public_key()));
    }
}
