//! The auth service's state: storage, the three certificate authorities, static tokens
//! and the audit log. Loaded once at start; the CAs are created on first start.

use std::sync::Arc;
use std::time::Duration;

use portcullis_config::{AuthSettings, StaticToken};
use portcullis_pki::ssh::SshCa;
use portcullis_pki::x509::{self, TlsCa, TlsCertRequest, system_role};
use portcullis_pki::{Identity, Secret};
use portcullis_storage::{Backend, BackendExt};
use serde::{Deserialize, Serialize};

use crate::audit::AuditLog;
use crate::error::AuthError;

pub(crate) const KEY_CLUSTER_NAME: &str = "cluster/name";
const KEY_USER_CA: &str = "cas/ssh_user";
const KEY_HOST_CA: &str = "cas/ssh_host";
const KEY_TLS_CA: &str = "cas/tls";

/// A CA as stored: private key and public certificate or key.
#[derive(Serialize, Deserialize)]
struct StoredCa {
    private: Secret<String>,
    public: String,
}

/// Everything the RPC handlers work on.
pub struct AuthState {
    pub cluster_name: String,
    pub backend: Arc<dyn Backend>,
    pub user_ca: SshCa,
    pub host_ca: SshCa,
    pub tls_ca: TlsCa,
    pub static_tokens: Vec<StaticToken>,
    pub audit: AuditLog,
    /// A leaf is offline this long after its last live tunnel report.
    pub offline_after: Duration,
    /// `--insecure`: accept any HTTPS certificate from a root proxy when establishing trust.
    pub insecure: bool,
    /// CA that signs root proxies' HTTPS certificates, when not publicly trusted.
    pub trusted_cluster_ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for AuthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthState").field("cluster_name", &self.cluster_name).finish_non_exhaustive()
    }
}

fn load_or_create_ssh_ca(b: &dyn Backend, key: &str) -> Result<SshCa, AuthError> {
    if let Some(stored) = b.get_json::<StoredCa>(key)? {
        return Ok(SshCa::from_openssh(stored.private.expose())?);
    }
    let ca = SshCa::generate()?;
    let stored = StoredCa { private: Secret::new(ca.private_openssh()?), public: ca.public_line()? };
    b.put_json(key, &stored)?;
    Ok(ca)
}

fn load_or_create_tls_ca(b: &dyn Backend, cluster: &str) -> Result<TlsCa, AuthError> {
    if let Some(stored) = b.get_json::<StoredCa>(KEY_TLS_CA)? {
        return Ok(TlsCa::from_pem(cluster, &stored.public, stored.private.expose())?);
    }
    let ca = TlsCa::generate(cluster)?;
    let stored = StoredCa { private: ca.key_pem(), public: ca.cert_pem().to_string() };
    b.put_json(KEY_TLS_CA, &stored)?;
    Ok(ca)
}

impl AuthState {
    /// Opens the state in `backend`, creating the CAs on first start. A data directory that
    /// belongs to another cluster is refused rather than silently re-keyed.
    pub fn open(settings: &AuthSettings, backend: Arc<dyn Backend>) -> Result<Self, AuthError> {
        let cluster = settings.cluster_name.clone();
        match backend.get_json::<String>(KEY_CLUSTER_NAME)? {
            Some(existing) if existing != cluster => {
                return Err(AuthError::bad(format!(
                    "the data directory {} belongs to cluster {existing:?}, but auth_service.cluster_name is {cluster:?}",
                    settings.common.data_dir.display()
                )));
            }
            Some(_) => {}
            None => backend.put_json(KEY_CLUSTER_NAME, &cluster)?,
        }
        let user_ca = load_or_create_ssh_ca(backend.as_ref(), KEY_USER_CA)?;
        let host_ca = load_or_create_ssh_ca(backend.as_ref(), KEY_HOST_CA)?;
        let tls_ca = load_or_create_tls_ca(backend.as_ref(), &cluster)?;
        let audit = AuditLog::open(&settings.common.data_dir, &cluster)?;
        let state = AuthState {
            cluster_name: cluster,
            backend,
            user_ca,
            host_ca,
            tls_ca,
            static_tokens: settings.static_tokens.clone(),
            audit,
            offline_after: settings.tunnel_offline_after,
            insecure: settings.common.insecure,
            trusted_cluster_ca_file: settings.trusted_cluster_ca_file.clone(),
        };
        state.ensure_preset_roles()?;
        state.backend.flush()?;
        Ok(state)
    }

    /// Issues a TLS certificate from the cluster CA.
    pub fn issue_tls(&self, req: TlsCertRequest) -> Result<String, AuthError> {
        Ok(self.tls_ca.issue(&req)?)
    }

    /// The auth service's own server identity (cert, key) for the gRPC listener. Made fresh
    /// at every start; it carries the fixed name clients check.
    pub fn server_identity(&self, extra_names: &[String]) -> Result<(String, Secret<String>), AuthError> {
        let key = x509::generate_key()?;
        let mut names = vec![x509::AUTH_SERVER_NAME.to_string(), "localhost".into(), "127.0.0.1".into()];
        names.extend(extra_names.iter().cloned());
        let cert = self.issue_tls(TlsCertRequest {
            public_key_der: x509::public_key_der(&key),
            name: "auth".into(),
            system_roles: vec![system_role::AUTH.into()],
            dns_names: names,
            ttl: Duration::from_secs(365 * 24 * 3600),
            ..Default::default()
        })?;
        Ok((cert, Secret::new(key.serialize_pem())))
    }

    /// Writes the identity `tctl` uses on the auth host.
    pub fn write_admin_identity(&self, path: &std::path::Path) -> Result<(), AuthError> {
        let key = x509::generate_key()?;
        let cert = self.issue_tls(TlsCertRequest {
            public_key_der: x509::public_key_der(&key),
            name: "admin".into(),
            system_roles: vec![system_role::ADMIN.into()],
            ttl: Duration::from_secs(365 * 24 * 3600),
            ..Default::default()
        })?;
        let id = Identity::new(
            self.cluster_name.clone(),
            "admin".into(),
            String::new(),
            system_role::ADMIN.into(),
            cert,
            Secret::new(key.serialize_pem()),
            vec![self.tls_ca.cert_pem().to_string()],
            Secret::new(String::new()),
            String::new(),
        );
        id.save(path)?;
        Ok(())
    }
}

/// Current time.
pub fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}
