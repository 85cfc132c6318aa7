//! Join tokens: static ones from the config file and dynamic ones with a TTL, and the
//! join call that trades one for an identity.

use std::time::Duration;

use portcullis_pki::ssh::{self, HostCertRequest};
use portcullis_pki::x509::{TlsCertRequest, system_role};
use portcullis_pki::{random_hex, Secret};
use portcullis_proto::auth::{JoinRequest, JoinResponse};
use portcullis_storage::BackendExt;
use portcullis_types::{ProvisionToken, SystemRole};
use serde_json::json;

use crate::error::AuthError;
use crate::state::{AuthState, now};

/// Identities issued to services at join time last this long.
const SERVICE_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Dynamic tokens without an explicit TTL expire after this.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(30 * 60);

fn token_key(value: &str) -> String {
    format!("tokens/{value}")
}

/// Constant-time comparison, so a token cannot be guessed byte by byte from timing.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AuthState {
    /// Static tokens as resources (never expiring), for `tctl tokens ls`.
    pub fn static_token_resources(&self) -> Vec<ProvisionToken> {
        self.static_tokens
            .iter()
            .map(|t| {
                let roles = t.roles.iter().filter_map(|r| SystemRole::parse(r).ok()).collect();
                ProvisionToken::new(t.value.expose().clone(), roles, None)
            })
            .collect()
    }

    /// All tokens, static and dynamic, expired ones left out.
    pub fn list_tokens(&self) -> Result<Vec<ProvisionToken>, AuthError> {
        let now = now();
        let mut out = self.static_token_resources();
        out.extend(self.backend.list_json::<ProvisionToken>("tokens/")?.into_iter().filter(|t| !t.is_expired(now)));
        Ok(out)
    }

    /// Creates a dynamic token; a value is generated when none is given.
    pub fn create_token(
        &self,
        roles: Vec<SystemRole>,
        ttl: Option<Duration>,
        value: Option<String>,
        labels: std::collections::BTreeMap<String, String>,
    ) -> Result<ProvisionToken, AuthError> {
        if roles.is_empty() {
            return Err(AuthError::bad("a token needs at least one type (--type=node|proxy|trusted_cluster)"));
        }
        let value = match value.filter(|v| !v.trim().is_empty()) {
            Some(v) => v,
            None => random_hex::<16>()?,
        };
        let ttl = ttl.filter(|t| !t.is_zero()).unwrap_or(DEFAULT_TOKEN_TTL);
        let expires = now() + time::Duration::try_from(ttl).map_err(|e| AuthError::bad(e.to_string()))?;
        let mut token = ProvisionToken::new(value.clone(), roles, Some(expires));
        token.metadata.labels = labels;
        token.validate()?;
        self.put_token(&token)?;
        self.audit.emit(
            "join_token.create",
            json!({"roles": token.type_names(), "expires": expires.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(), "success": true}),
        );
        Ok(token)
    }

    pub fn put_token(&self, token: &ProvisionToken) -> Result<(), AuthError> {
        self.backend.put_json(&token_key(token.token()), token)?;
        self.backend.flush()?;
        Ok(())
    }

    pub fn delete_token(&self, value: &str) -> Result<bool, AuthError> {
        if self.static_tokens.iter().any(|t| same(t.value.expose(), value)) {
            return Err(AuthError::bad("static tokens come from auth_service.tokens in the config file; remove them there"));
        }
        Ok(self.backend.delete(&token_key(value))?)
    }

    /// Checks `value` allows joining as one of `wanted`; the error says why not, without
    /// echoing the token.
    pub fn check_token(&self, value: &Secret<String>, wanted: &[SystemRole]) -> Result<Vec<SystemRole>, AuthError> {
        let v = value.expose();
        let roles: Vec<SystemRole> = if let Some(t) = self.static_tokens.iter().find(|t| same(t.value.expose(), v)) {
            t.roles.iter().filter_map(|r| SystemRole::parse(r).ok()).collect()
        } else {
            let t: ProvisionToken = self.backend.get_json(&token_key(v))?.ok_or_else(|| {
                AuthError::denied(format!("the join token is not recognised by cluster {:?}", self.cluster_name))
            })?;
            if t.is_expired(now()) {
                return Err(AuthError::denied("the join token has expired"));
            }
            t.spec.roles.clone()
        };
        if !wanted.iter().any(|w| roles.contains(w)) {
            let have: Vec<&str> = roles.iter().map(|r| r.type_name()).collect();
            let want: Vec<&str> = wanted.iter().map(|r| r.type_name()).collect();
            return Err(AuthError::denied(format!(
                "the join token is for {} and cannot be used to join as {}",
                have.join(","),
                want.join(" or ")
            )));
        }
        Ok(roles)
    }

    /// The join call: a token buys a TLS identity and an SSH host certificate.
    pub fn join(&self, req: &JoinRequest, remote_addr: &str) -> Result<JoinResponse, AuthError> {
        let (wanted, cert_role) = match req.role.as_str() {
            "node" => (vec![SystemRole::Node], system_role::NODE),
            "proxy" => (vec![SystemRole::Proxy], system_role::PROXY),
            // The tunnel agent joins its own cluster with a proxy token (SPEC §1).
            "agent" => (vec![SystemRole::Proxy, SystemRole::Agent], system_role::AGENT),
            other => return Err(AuthError::bad(format!("cannot join as {other:?}: expected node, proxy or agent"))),
        };
        let token = Secret::new(req.token.clone());
        if let Err(e) = self.check_token(&token, &wanted) {
            self.audit.emit(
                "join",
                json!({"success": false, "role": req.role, "nodename": req.nodename, "error": e.to_string(), "remote_addr": remote_addr}),
            );
            return Err(e);
        }
        let host_id = if uuid::Uuid::parse_str(&req.host_id).is_ok() {
            req.host_id.clone()
        } else {
            uuid::Uuid::new_v4().to_string()
        };
        let ssh_key = ssh::parse_public_key(&req.ssh_public_key)
            .map_err(|e| AuthError::bad(format!("bad SSH host key: {e}")))?;
        let host_cert = self.host_ca.sign_host_cert(&HostCertRequest {
            public_key: ssh_key,
            host_id: host_id.clone(),
            nodename: req.nodename.clone(),
            cluster_name: self.cluster_name.clone(),
            role: cert_role.to_string(),
            additional_principals: req.additional_principals.clone(),
            ttl: SERVICE_CERT_TTL,
        })?;
        let mut dns_names = vec![req.nodename.clone(), host_id.clone()];
        if cert_role == system_role::PROXY {
            dns_names.push(portcullis_pki::x509::PROXY_SERVER_NAME.into());
        }
        let tls_cert_pem = self.issue_tls(TlsCertRequest {
            public_key_der: req.tls_public_key.clone(),
            name: host_id.clone(),
            system_roles: vec![cert_role.to_string()],
            dns_names: dns_names.into_iter().filter(|n| !n.is_empty() && is_dns_safe(n)).collect(),
            ttl: SERVICE_CERT_TTL,
            ..Default::default()
        })?;
        self.audit.emit(
            "join",
            json!({"success": true, "role": req.role, "host_id": host_id, "nodename": req.nodename, "remote_addr": remote_addr}),
        );
        Ok(JoinResponse {
            cluster_name: self.cluster_name.clone(),
            host_id,
            tls_cert_pem,
            ssh_host_cert: host_cert.to_openssh().map_err(portcullis_pki::PkiError::from)?,
            cas: Some(self.cert_authorities()?),
        })
    }
}

/// Names rcgen accepts as DNS SANs (letters, digits, dots, dashes, underscores).
fn is_dns_safe(n: &str) -> bool {
    n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}
