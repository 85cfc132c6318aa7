//! The cluster's X.509 CA: issues the mutual-TLS identities every process and user presents.

use std::collections::BTreeMap;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SubjectPublicKeyInfo,
};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{PkiError, Secret, random_bytes};

/// The one system-role vocabulary, re-exported for crates that only know certificates.
pub use portcullis_types::SystemRole;

/// Name every auth service certificate carries, so clients can check it whatever address
/// they dialled.
pub const AUTH_SERVER_NAME: &str = "auth.portcullis.local";
/// Name every proxy's tunnel-server certificate carries.
pub const PROXY_SERVER_NAME: &str = "proxy.portcullis.local";
/// The domain of the fixed server names: only the auth service hands out names in it, and
/// only to the role each name stands for, so no joining host may ask for one.
pub const RESERVED_DOMAIN: &str = "portcullis.local";

/// Whether `name` is one of the fixed server names or lies under their domain
/// (case-insensitive; a trailing dot is ignored).
pub fn is_reserved_server_name(name: &str) -> bool {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    n == RESERVED_DOMAIN || n.ends_with(&format!(".{RESERVED_DOMAIN}"))
}

/// Whether certificates for `system_roles` may serve TLS (carry the ServerAuth usage): only
/// the auth service and proxies (tunnel server) do. Nodes, agents, users and admins are
/// clients only, so their certificates can never pose as a server to a WebPKI check.
pub fn serves_tls(system_roles: &[String]) -> bool {
    system_roles.iter().any(|r| *r == SystemRole::Auth || *r == SystemRole::Proxy)
}

/// Private-arc OID for the extension that carries roles, traits and route (JSON).
const IDENTITY_EXT_OID: &[u64] = &[1, 3, 9999, 7, 1];
const IDENTITY_EXT_OID_STR: &str = "1.3.9999.7.1";

/// A fresh ECDSA P-256 key for a TLS identity.
pub fn generate_key() -> Result<KeyPair, PkiError> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

/// The DER SubjectPublicKeyInfo of a key, what a certificate request carries.
pub fn public_key_der(key: &KeyPair) -> Vec<u8> {
    use rcgen::PublicKeyData;
    key.subject_public_key_info()
}

/// What a TLS certificate says about its holder.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TlsIdentity {
    /// User name or host id.
    pub name: String,
    /// Cluster that issued it.
    pub cluster: String,
    /// System roles as the certificate spells them ([`SystemRole::as_str`]: `Admin`, `Node`,
    /// ...); kept as text so a role this version does not know is carried, granting nothing.
    pub system_roles: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub traits: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub route_to_cluster: String,
    /// Expiry, Unix seconds.
    #[serde(default)]
    pub not_after: i64,
    /// Subject alternative names (DNS names, and IP addresses as text): for a host, the
    /// node name and host id it joined with, which its announcements must match.
    #[serde(default)]
    pub dns_names: Vec<String>,
}

impl TlsIdentity {
    pub fn has_system_role(&self, role: SystemRole) -> bool {
        self.system_roles.iter().any(|r| *r == role)
    }
}

#[derive(Serialize, Deserialize)]
struct IdentityExt {
    roles: Vec<String>,
    traits: BTreeMap<String, Vec<String>>,
    route_to_cluster: String,
}

/// What to put into a certificate issued by [`TlsCa::issue`].
#[derive(Debug, Clone, Default)]
pub struct TlsCertRequest {
    /// DER SubjectPublicKeyInfo of the holder's key.
    pub public_key_der: Vec<u8>,
    pub name: String,
    pub system_roles: Vec<String>,
    pub roles: Vec<String>,
    pub traits: BTreeMap<String, Vec<String>>,
    pub route_to_cluster: String,
    /// DNS names (server certificates); IP addresses are recognised and written as IP SANs.
    pub dns_names: Vec<String>,
    pub ttl: Duration,
}

/// The cluster's X.509 certificate authority.
pub struct TlsCa {
    cluster_name: String,
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for TlsCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsCa({})", self.cluster_name)
    }
}

impl TlsCa {
    /// A new self-signed CA for `cluster_name`, valid ten years.
    pub fn generate(cluster_name: &str) -> Result<Self, PkiError> {
        let key = generate_key()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cluster_name);
        dn.push(DnType::OrganizationName, cluster_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::days(3650);
        params.serial_number = Some(random_bytes::<16>()?.to_vec().into());
        let cert = params.self_signed(&key)?;
        Ok(TlsCa { cluster_name: cluster_name.to_string(), cert_pem: cert.pem(), key })
    }

    /// Loads a CA kept as PEM certificate and PEM PKCS#8 key.
    pub fn from_pem(cluster_name: &str, cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        // Parse once now so a corrupt CA is reported at start-up, not at first use.
        Issuer::from_ca_cert_pem(cert_pem, &key)?;
        Ok(TlsCa { cluster_name: cluster_name.to_string(), cert_pem: cert_pem.to_string(), key })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> Secret<String> {
        Secret::new(self.key.serialize_pem())
    }

    /// Issues a certificate for the holder of `req.public_key_der`.
    pub fn issue(&self, req: &TlsCertRequest) -> Result<String, PkiError> {
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let spki = SubjectPublicKeyInfo::from_der(&req.public_key_der)
            .map_err(|e| PkiError::X509(format!("bad public key: {e}")))?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, req.name.as_str());
        dn.push(DnType::OrganizationName, self.cluster_name.as_str());
        for r in &req.system_roles {
            dn.push(DnType::OrganizationalUnitName, r.as_str());
        }
        params.distinguished_name = dn;
        for name in &req.dns_names {
            let san = match name.parse::<std::net::IpAddr>() {
                Ok(ip) => rcgen::SanType::IpAddress(ip),
                Err(_) => rcgen::SanType::DnsName(
                    name.clone().try_into().map_err(|e: rcgen::Error| PkiError::X509(e.to_string()))?,
                ),
            };
            params.subject_alt_names.push(san);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if serves_tls(&req.system_roles) {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::try_from(req.ttl).unwrap_or(time::Duration::hours(12));
        params.serial_number = Some(random_bytes::<16>()?.to_vec().into());
        params.use_authority_key_identifier_extension = true;
        let ext = IdentityExt {
            roles: req.roles.clone(),
            traits: req.traits.clone(),
            route_to_cluster: req.route_to_cluster.clone(),
        };
        let content = serde_json::to_vec(&ext).map_err(|e| PkiError::X509(e.to_string()))?;
        params.custom_extensions.push(CustomExtension::from_oid_content(
            IDENTITY_EXT_OID,
            der_octet_string(&content),
        ));
        let cert = params.signed_by(&spki, &issuer)?;
        Ok(cert.pem())
    }
}

/// Wraps bytes in a DER OCTET STRING, the conventional payload of a private extension.
fn der_octet_string(content: &[u8]) -> Vec<u8> {
    let mut out = vec![0x04];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// Whether `der` is a certificate a cluster CA issued (it carries the Portcullis identity
/// extension): a service's or user's identity, never a public web certificate.
pub fn is_cluster_issued(der: &[u8]) -> bool {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert.extensions().iter().any(|e| e.oid.to_id_string() == IDENTITY_EXT_OID_STR))
        .unwrap_or(false)
}

/// Reads the identity a certificate (DER) carries. The chain must already be verified.
pub fn parse_identity(der: &[u8]) -> Result<TlsIdentity, PkiError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::X509(format!("unreadable certificate: {e}")))?;
    let subject = cert.subject();
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
        it.next().and_then(|a| a.as_str().ok()).unwrap_or_default().to_string()
    };
    let name = first(&mut subject.iter_common_name());
    let cluster = first(&mut subject.iter_organization());
    let system_roles = subject
        .iter_organizational_unit()
        .filter_map(|a| a.as_str().ok().map(str::to_string))
        .collect();
    let mut id = TlsIdentity {
        name,
        cluster,
        system_roles,
        not_after: cert.validity().not_after.timestamp(),
        ..Default::default()
    };
    for ext in cert.extensions() {
        if ext.oid.to_id_string() == IDENTITY_EXT_OID_STR {
            let raw = ext.value;
            let body = x509_parser::der_parser::parse_der(raw)
                .ok()
                .and_then(|(_, obj)| obj.as_slice().ok().map(<[u8]>::to_vec))
                .unwrap_or_else(|| raw.to_vec());
            let e: IdentityExt = serde_json::from_slice(&body)
                .map_err(|e| PkiError::X509(format!("bad identity extension: {e}")))?;
            id.roles = e.roles;
            id.traits = e.traits;
            id.route_to_cluster = e.route_to_cluster;
        }
    }
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        use x509_parser::extensions::GeneralName;
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => id.dns_names.push((*d).to_string()),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    id.dns_names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    Ok(id)
}

/// Whether a certificate (DER) allows the TLS server usage: no EKU extension at all, or one
/// listing ServerAuth (or anyExtendedKeyUsage), as a WebPKI check would decide.
pub fn allows_server_auth(der: &[u8]) -> Result<bool, PkiError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::X509(format!("unreadable certificate: {e}")))?;
    match cert.extended_key_usage() {
        Ok(Some(eku)) => Ok(eku.value.server_auth || eku.value.any),
        Ok(None) => Ok(true),
        Err(e) => Err(PkiError::X509(format!("bad extended key usage: {e}"))),
    }
}

/// DER bytes of every certificate in a PEM bundle.
pub fn pem_to_ders(pem: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| PkiError::X509(format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(PkiError::X509("no certificate in PEM text".into()));
    }
    Ok(certs.into_iter().map(|c| c.to_vec()).collect())
}

/// The CA pin `sha256:<hex>` of a CA certificate: a hash of its SubjectPublicKeyInfo.
pub fn ca_pin(cert_pem: &str) -> Result<String, PkiError> {
    let ders = pem_to_ders(cert_pem)?;
    ca_pin_der(&ders[0])
}

/// [`ca_pin`] for a DER certificate.
pub fn ca_pin_der(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::X509(format!("unreadable certificate: {e}")))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw);
    Ok(format!("sha256:{}", hex::encode(digest.as_ref())))
}

/// Checks a client certificate chain against the given CA certificates (PEM), as a TLS
/// server would, and returns the identity it carries.
pub fn verify_client_cert(der: &[u8], ca_pems: &[String]) -> Result<TlsIdentity, PkiError> {
    use rustls::server::WebPkiClientVerifier;
    use rustls_pki_types::{CertificateDer, UnixTime};
    let mut roots = rustls::RootCertStore::empty();
    for pem in ca_pems {
        for ca in pem_to_ders(pem)? {
            roots
                .add(CertificateDer::from(ca))
                .map_err(|e| PkiError::X509(format!("bad CA certificate: {e}")))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(std::sync::Arc::new(roots), provider)
        .build()
        .map_err(|e| PkiError::X509(e.to_string()))?;
    verifier
        .verify_client_cert(&CertificateDer::from(der.to_vec()), &[], UnixTime::now())
        .map_err(|e| PkiError::X509(format!("certificate rejected: {e}")))?;
    parse_identity(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_identity_round_trips_and_verifies() {
        let ca = TlsCa::generate("c.example.com").unwrap();
        let key = generate_key().unwrap();
        let pem = ca
            .issue(&TlsCertRequest {
                public_key_der: public_key_der(&key),
                name: "alice".into(),
                system_roles: vec![SystemRole::User.into()],
                roles: vec!["access".into()],
                traits: BTreeMap::from([("logins".into(), vec!["alice".into()])]),
                route_to_cluster: "leaf".into(),
                dns_names: vec!["localhost".into(), "127.0.0.1".into()],
                ttl: Duration::from_secs(600),
            })
            .unwrap();
        let der = pem_to_ders(&pem).unwrap().remove(0);
        let id = verify_client_cert(&der, &[ca.cert_pem().to_string()]).unwrap();
        assert_eq!(id.name, "alice");
        assert_eq!(id.cluster, "c.example.com");
        assert_eq!(id.system_roles, vec!["User"]);
        assert_eq!(id.roles, vec!["access"]);
        assert_eq!(id.route_to_cluster, "leaf");
        assert_eq!(id.dns_names, vec!["localhost", "127.0.0.1"]);

        let other = TlsCa::generate("evil").unwrap();
        assert!(verify_client_cert(&der, &[other.cert_pem().to_string()]).is_err());
    }

    #[test]
    fn only_auth_and_proxy_certificates_may_serve_tls() {
        let ca = TlsCa::generate("c").unwrap();
        let key = generate_key().unwrap();
        for (role, serves) in [
            (SystemRole::Auth, true),
            (SystemRole::Proxy, true),
            (SystemRole::Node, false),
            (SystemRole::Agent, false),
            (SystemRole::User, false),
            (SystemRole::Admin, false),
        ] {
            let pem = ca
                .issue(&TlsCertRequest {
                    public_key_der: public_key_der(&key),
                    name: "h".into(),
                    system_roles: vec![role.into()],
                    dns_names: vec!["h.example.com".into()],
                    ttl: Duration::from_secs(60),
                    ..Default::default()
                })
                .unwrap();
            let der = pem_to_ders(&pem).unwrap().remove(0);
            assert_eq!(allows_server_auth(&der).unwrap(), serves, "{role}");
            // Every identity still works as a client.
            assert!(verify_client_cert(&der, &[ca.cert_pem().to_string()]).is_ok(), "{role}");
        }
    }

    #[test]
    fn fixed_server_names_and_their_domain_are_reserved() {
        for n in [AUTH_SERVER_NAME, PROXY_SERVER_NAME, "portcullis.local", "x.Portcullis.Local", "AUTH.portcullis.local."] {
            assert!(is_reserved_server_name(n), "{n}");
        }
        for n in ["node-1", "portcullis.localhost", "evilportcullis.local", "auth.example.com"] {
            assert!(!is_reserved_server_name(n), "{n}");
        }
    }

    #[test]
    fn ca_reloads_from_pem_and_pin_is_stable() {
        let ca = TlsCa::generate("c").unwrap();
        let again = TlsCa::from_pem("c", ca.cert_pem(), ca.key_pem().expose()).unwrap();
        let pin = ca_pin(ca.cert_pem()).unwrap();
        assert!(pin.starts_with("sha256:") && pin.len() == 7 + 64);
        assert_eq!(pin, ca_pin(again.cert_pem()).unwrap());
    }
}
