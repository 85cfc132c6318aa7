//! The auth service's state: storage, the three certificate authorities, static tokens
//! and the audit log. Loaded once at start; the CAs are created on first start, their
//! private keys sealed with the key-encryption key kept outside the database. Several auth
//! replicas may open one shared database at once: whatever they create at first start is
//! created only if absent, and every replica then uses what won.

use std::sync::Arc;
use std::time::Duration;

use portcullis_config::{AuthSettings, StaticToken, StorageSettings};
use portcullis_pki::datadir;
use portcullis_pki::kek::{Kek, KekError};
use portcullis_pki::ssh::SshCa;
use portcullis_pki::x509::{self, SystemRole, TlsCa, TlsCertRequest};
use portcullis_pki::{Identity, PkiError, Secret};
use portcullis_storage::{Backend, BackendExt, PostgresBackend, SledBackend, StorageError};
use serde::{Deserialize, Serialize};

use crate::audit::AuditLog;
use crate::error::AuthError;

pub(crate) const KEY_CLUSTER_NAME: &str = "cluster/name";
const KEY_USER_CA: &str = "cas/ssh_user";
const KEY_HOST_CA: &str = "cas/ssh_host";
const KEY_TLS_CA: &str = "cas/tls";
/// Every stored CA, each sealed under its own storage key.
const CA_KEYS: [&str; 3] = [KEY_USER_CA, KEY_HOST_CA, KEY_TLS_CA];
/// A known text sealed with the key-encryption key of the first replica to start: a replica
/// with another key is refused before it writes any CA (see [`claim_kek`]).
const KEY_KEK_CHECK: &str = "kek/check";
const KEK_CHECK_TEXT: &[u8] = b"portcullis key-encryption key check";

/// A read-modify-write gives up after this many lost races (each one means another writer
/// succeeded, so this is only reached under a pathological write storm on one record).
const MAX_UPDATE_ATTEMPTS: usize = 1000;

/// What [`atomic_update`]'s closure decides for the current value.
pub(crate) enum Change<T> {
    /// Write these bytes (only if the record is still what the closure saw).
    Put(Vec<u8>, T),
    /// Delete the record (only if it is still what the closure saw).
    Delete(T),
    /// Leave it as it is.
    Keep(T),
}

/// Read-modify-write of one record, atomic across every process sharing `backend`: `f`
/// sees the current value and decides; when another writer changed the record in between,
/// `f` runs again on the new value. This replaces process-local locks, which several auth
/// replicas on one database would not share.
pub(crate) fn atomic_update<T>(
    backend: &dyn Backend,
    key: &str,
    mut f: impl FnMut(Option<&[u8]>) -> Result<Change<T>, AuthError>,
) -> Result<T, AuthError> {
    for _ in 0..MAX_UPDATE_ATTEMPTS {
        let current = backend.get(key)?;
        match f(current.as_deref())? {
            Change::Keep(t) => return Ok(t),
            Change::Put(new, t) => {
                if backend.compare_and_swap(key, current.as_deref(), &new)? {
                    return Ok(t);
                }
            }
            Change::Delete(t) => match &current {
                None => return Ok(t),
                Some(c) => {
                    if backend.compare_and_delete(key, c)? {
                        return Ok(t);
                    }
                }
            },
        }
    }
    Err(AuthError::Internal(format!(
        "record {key} kept changing during {MAX_UPDATE_ATTEMPTS} attempts to update it; try again"
    )))
}

/// JSON of `value` for storage.
pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, AuthError> {
    serde_json::to_vec(value).map_err(|e| AuthError::Internal(format!("cannot encode a record: {e}")))
}

/// Stores `value` under `key` only if absent; returns whether it did.
pub(crate) fn create_json<T: Serialize>(backend: &dyn Backend, key: &str, value: &T) -> Result<bool, AuthError> {
    Ok(backend.create(key, &to_json(value)?)?)
}

/// A CA as stored: its public half, and its private key sealed with the key-encryption key
/// (AES-256-GCM, the storage key as associated data). Data directories from before sealing
/// hold `private` in clear; [`seal_plaintext_cas`] seals them at start.
#[derive(Serialize, Deserialize)]
struct StoredCa {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    private: Option<Secret<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed_private: Option<String>,
    public: String,
}

impl StoredCa {
    fn sealed(kek: &Kek, key: &str, private: &Secret<String>, public: String) -> Result<Self, AuthError> {
        let sealed = kek.seal(key, private.expose().as_bytes()).map_err(PkiError::from)?;
        Ok(StoredCa { private: None, sealed_private: Some(sealed), public })
    }

    /// The private key, unsealed.
    fn private(&self, kek: &Kek, key: &str) -> Result<Secret<String>, AuthError> {
        let corrupt = |reason: &str| StorageError::Corrupt { key: key.to_string(), reason: reason.to_string() };
        match (&self.sealed_private, &self.private) {
            (Some(sealed), _) => {
                let bytes = kek.open(key, sealed).map_err(PkiError::from)?;
                let text = String::from_utf8(bytes.into_inner()).map_err(|_| corrupt("the sealed key is not text"))?;
                Ok(Secret::new(text))
            }
            (None, Some(private)) => Ok(private.clone()),
            (None, None) => Err(corrupt("no private key").into()),
        }
    }
}

/// Everything the RPC handlers work on.
///
/// Several replicas may share `backend`. Every field but the backend is either fixed for the
/// cluster's life (its name and CAs: created once, never rotated, the same on every replica)
/// or this replica's own configuration and machinery (static tokens, limits, the hashing
/// workers, the local copy of the audit log); everything another replica can change (users,
/// roles, tokens, nodes, trust, locks) is read from the backend on each call, never cached.
pub struct AuthState {
    pub cluster_name: String,
    pub backend: Arc<dyn Backend>,
    pub user_ca: SshCa,
    pub host_ca: SshCa,
    pub tls_ca: TlsCa,
    /// `auth_service.tokens` of this replica's configuration: give every replica the same.
    pub static_tokens: Vec<StaticToken>,
    pub audit: AuditLog,
    /// A leaf is offline this long after its last live tunnel report.
    pub offline_after: Duration,
    /// `--insecure`: accept any HTTPS certificate from a root proxy when establishing trust.
    pub insecure: bool,
    /// CA that signs root proxies' HTTPS certificates, when not publicly trusted.
    pub trusted_cluster_ca_file: Option<std::path::PathBuf>,
    /// Lockout, hashing and `Join` rate limits (`auth_service.lockout`, ...).
    pub logins: portcullis_config::LoginLimits,
    /// The bounded argon2 workers every password goes through.
    pub passwords: crate::hashing::PasswordPool,
}

impl std::fmt::Debug for AuthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthState").field("cluster_name", &self.cluster_name).finish_non_exhaustive()
    }
}

/// The CA stored under `key`, or a new one made with `generate` and stored only if no other
/// replica stored one first; then the stored one wins, so all replicas sign with one CA.
fn load_or_create_ca<T>(
    b: &dyn Backend,
    key: &str,
    load: impl Fn(&StoredCa) -> Result<T, AuthError>,
    generate: impl FnOnce() -> Result<(T, StoredCa), AuthError>,
) -> Result<T, AuthError> {
    if let Some(stored) = b.get_json::<StoredCa>(key)? {
        return load(&stored);
    }
    let (ca, stored) = generate()?;
    if create_json(b, key, &stored)? {
        return Ok(ca);
    }
    let stored = b.get_json::<StoredCa>(key)?.ok_or_else(|| StorageError::Corrupt {
        key: key.to_string(),
        reason: "the CA another auth server created vanished".into(),
    })?;
    load(&stored)
}

fn load_or_create_ssh_ca(b: &dyn Backend, kek: &Kek, key: &str) -> Result<SshCa, AuthError> {
    load_or_create_ca(
        b,
        key,
        |stored| Ok(SshCa::from_openssh(stored.private(kek, key)?.expose())?),
        || {
            let ca = SshCa::generate()?;
            let stored = StoredCa::sealed(kek, key, &Secret::new(ca.private_openssh()?), ca.public_line()?)?;
            Ok((ca, stored))
        },
    )
}

fn load_or_create_tls_ca(b: &dyn Backend, kek: &Kek, cluster: &str) -> Result<TlsCa, AuthError> {
    load_or_create_ca(
        b,
        KEY_TLS_CA,
        |stored| Ok(TlsCa::from_pem(cluster, &stored.public, stored.private(kek, KEY_TLS_CA)?.expose())?),
        || {
            let ca = TlsCa::generate(cluster)?;
            let stored = StoredCa::sealed(kek, KEY_TLS_CA, &ca.key_pem(), ca.cert_pem().to_string())?;
            Ok((ca, stored))
        },
    )
}

/// The key-encryption key named by `auth_service.ca_key_encryption_key_file`. Made on first
/// start; a missing file while the database holds sealed keys is an error, never a new key.
fn load_kek(settings: &AuthSettings, b: &dyn Backend) -> Result<Kek, AuthError> {
    let path = &settings.ca_key_encryption_key_file;
    if let Some(kek) = Kek::load(path).map_err(PkiError::from)? {
        return Ok(kek);
    }
    let mut sealed = b.get(KEY_KEK_CHECK)?.is_some();
    for key in CA_KEYS {
        sealed = sealed || b.get_json::<StoredCa>(key)?.is_some_and(|s| s.sealed_private.is_some());
    }
    if sealed {
        return Err(PkiError::from(KekError::Missing { file: path.display().to_string() }).into());
    }
    match Kek::create(path) {
        Ok(kek) => {
            tracing::info!(file = %path.display(), "created the key-encryption key for the CA private keys");
            Ok(kek)
        }
        // Another replica on this host made it first: use that one, once it is written.
        Err(KekError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
            for _ in 0..50 {
                if let Ok(Some(kek)) = Kek::load(path) {
                    return Ok(kek);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(Kek::load(path).map_err(PkiError::from)?.ok_or_else(|| {
                PkiError::from(KekError::Missing { file: path.display().to_string() })
            })?)
        }
        Err(e) => Err(PkiError::from(e).into()),
    }
}

/// Records which key-encryption key this database uses, or checks `kek` is that one. Two
/// replicas starting at once on an empty database with different key files: one claims it,
/// the other is refused here before it writes a CA, so no CA is ever sealed under two keys.
fn claim_kek(kek: &Kek, b: &dyn Backend) -> Result<(), AuthError> {
    let check = kek.seal(KEY_KEK_CHECK, KEK_CHECK_TEXT).map_err(PkiError::from)?;
    if b.create(KEY_KEK_CHECK, check.as_bytes())? {
        return Ok(());
    }
    let stored = b.get(KEY_KEK_CHECK)?.unwrap_or_default();
    let stored = String::from_utf8_lossy(&stored);
    let opened = kek.open(KEY_KEK_CHECK, &stored).map_err(PkiError::from)?;
    if opened.expose().as_slice() != KEK_CHECK_TEXT {
        return Err(PkiError::from(KekError::WrongKey { file: kek.path().display().to_string() }).into());
    }
    Ok(())
}

/// Checks that `kek` opens every sealed CA, then seals those still stored in clear (older data
/// directories). Returns how many it sealed. Checking first means a wrong key file never
/// leaves the database sealed under two keys.
fn seal_with(kek: &Kek, b: &dyn Backend) -> Result<usize, AuthError> {
    let mut plain = Vec::new();
    for key in CA_KEYS {
        let Some(raw) = b.get(key)? else { continue };
        let stored: StoredCa = serde_json::from_slice(&raw)
            .map_err(|e| StorageError::Corrupt { key: key.to_string(), reason: e.to_string() })?;
        let private = stored.private(kek, key)?;
        if stored.sealed_private.is_none() {
            plain.push((key, raw, StoredCa::sealed(kek, key, &private, stored.public)?));
        }
    }
    let mut sealed = 0;
    for (key, raw, new) in &plain {
        // Another replica migrating at the same moment wrote an equally good sealed copy.
        if b.compare_and_swap(key, Some(raw.as_slice()), &to_json(new)?)? {
            sealed += 1;
        }
    }
    if sealed > 0 {
        b.flush()?;
    }
    Ok(sealed)
}

/// Seals CA private keys stored in clear by older versions, with the configured key; returns
/// how many. The caller should then drop overwritten data from the backend's files.
pub fn seal_plaintext_cas(settings: &AuthSettings, b: &dyn Backend) -> Result<usize, AuthError> {
    seal_with(&load_kek(settings, b)?, b)
}

/// Opens the backend `teleport.storage` names: sled in the data directory (sealing CA keys
/// an older version stored in clear and rewriting the database so no clear copy stays in its
/// files), or the shared PostgreSQL database.
pub fn open_backend(settings: &AuthSettings) -> Result<Arc<dyn Backend>, AuthError> {
    match &settings.storage {
        StorageSettings::Sled { dir } => {
            let mut backend = SledBackend::open(dir)?;
            let sealed = seal_plaintext_cas(settings, &backend)?;
            if sealed > 0 {
                // sled keeps overwritten values in its log: keep only a fresh copy of the live records.
                drop(backend);
                SledBackend::rewrite(dir)?;
                backend = SledBackend::open(dir)?;
                warn_sealed(settings, sealed);
            }
            Ok(Arc::new(backend))
        }
        StorageSettings::Postgres { conn } => {
            tracing::info!(database = %conn.addr(), "connecting to PostgreSQL");
            let backend = PostgresBackend::connect(conn.expose())?;
            let sealed = seal_plaintext_cas(settings, &backend)?;
            if sealed > 0 {
                warn_sealed(settings, sealed);
            }
            Ok(Arc::new(backend))
        }
    }
}

fn warn_sealed(settings: &AuthSettings, count: usize) {
    tracing::warn!(
        count,
        kek = %settings.ca_key_encryption_key_file.display(),
        "sealed CA private keys that were stored in clear; back up the key-encryption key file separately"
    );
}

/// Opens the auth state: makes the data directory private (refusing one others can read
/// that already holds data), then opens the configured backend (see [`open_backend`]).
pub fn open_data_dir(settings: &AuthSettings) -> Result<AuthState, AuthError> {
    let data_dir = &settings.common.data_dir;
    let prepared = datadir::prepare(data_dir).map_err(PkiError::from)?;
    if !prepared.fixed.is_empty() {
        tracing::warn!(data_dir = %data_dir.display(), count = prepared.fixed.len(), "made files in the data directory private (0600/0700)");
    }
    AuthState::open(settings, open_backend(settings)?)
}

/// What holds the state, for messages (never a connection string).
fn storage_name(settings: &AuthSettings) -> String {
    match &settings.storage {
        StorageSettings::Sled { .. } => format!("the data directory {}", settings.common.data_dir.display()),
        other => other.describe(),
    }
}

impl AuthState {
    /// Opens the state in `backend`, creating the CAs on first start. A database that
    /// belongs to another cluster is refused rather than silently re-keyed. Safe to run on
    /// several replicas at once: the first to store the cluster name, the key-encryption key
    /// check and each CA wins, and the others load what it stored.
    pub fn open(settings: &AuthSettings, backend: Arc<dyn Backend>) -> Result<Self, AuthError> {
        let cluster = settings.cluster_name.clone();
        // Leaves are told the root's name and scope its host CA by it: it must be a DNS name.
        portcullis_types::validate_cluster_name(&cluster)
            .map_err(|e| AuthError::bad(format!("auth_service.cluster_name: {e}")))?;
        if !create_json(backend.as_ref(), KEY_CLUSTER_NAME, &cluster)? {
            match backend.get_json::<String>(KEY_CLUSTER_NAME)? {
                Some(existing) if existing != cluster => {
                    return Err(AuthError::bad(format!(
                        "{} belongs to cluster {existing:?}, but auth_service.cluster_name is {cluster:?}",
                        storage_name(settings)
                    )));
                }
                _ => {}
            }
        }
        let kek = load_kek(settings, backend.as_ref())?;
        seal_with(&kek, backend.as_ref())?;
        claim_kek(&kek, backend.as_ref())?;
        let user_ca = load_or_create_ssh_ca(backend.as_ref(), &kek, KEY_USER_CA)?;
        let host_ca = load_or_create_ssh_ca(backend.as_ref(), &kek, KEY_HOST_CA)?;
        let tls_ca = load_or_create_tls_ca(backend.as_ref(), &kek, &cluster)?;
        let audit = AuditLog::open(&settings.common.data_dir, &cluster, backend.clone())?;
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
            logins: settings.logins,
            passwords: crate::hashing::PasswordPool::start(settings.logins.hashing)?,
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
            system_roles: vec![SystemRole::Auth.into()],
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
            system_roles: vec![SystemRole::Admin.into()],
            ttl: Duration::from_secs(365 * 24 * 3600),
            ..Default::default()
        })?;
        let id = Identity::new(
            self.cluster_name.clone(),
            "admin".into(),
            String::new(),
            SystemRole::Admin.into(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_config::{CommonFlags, FileConfig};
    use portcullis_storage::MemoryBackend;
    use std::os::unix::fs::PermissionsExt;

    fn settings(dir: &std::path::Path, extra: &str) -> AuthSettings {
        let yaml = format!("teleport:\n  data_dir: {}\nauth_service:\n  cluster_name: kek.example.com\n{extra}", dir.display());
        AuthSettings::from_parts(&FileConfig::from_yaml(&yaml).unwrap(), &CommonFlags::default()).unwrap()
    }

    /// What a copy of the database would show an attacker: every CA record as stored.
    fn raw_cas(b: &dyn Backend) -> String {
        b.list("cas/").unwrap().into_iter().map(|(k, v)| format!("{k}={}\n", String::from_utf8_lossy(&v))).collect()
    }

    fn assert_no_private_key_material(text: &str) {
        for marker in ["PRIVATE KEY", "BEGIN OPENSSH", "\"private\""] {
            assert!(!text.contains(marker), "found {marker:?} in the stored data:\n{text}");
        }
    }

    /// Stores the CAs as versions before sealing did: private keys in clear.
    fn store_plaintext_cas(b: &dyn Backend) -> (String, String) {
        b.put_json(KEY_CLUSTER_NAME, &"kek.example.com".to_string()).unwrap();
        let mut user_line = String::new();
        for key in [KEY_USER_CA, KEY_HOST_CA] {
            let ca = SshCa::generate().unwrap();
            let public = ca.public_line().unwrap();
            if key == KEY_USER_CA {
                user_line = public.clone();
            }
            let stored = StoredCa { private: Some(Secret::new(ca.private_openssh().unwrap())), sealed_private: None, public };
            b.put_json(key, &stored).unwrap();
        }
        let tls = TlsCa::generate("kek.example.com").unwrap();
        let tls_pem = tls.cert_pem().to_string();
        b.put_json(KEY_TLS_CA, &StoredCa { private: Some(tls.key_pem()), sealed_private: None, public: tls_pem.clone() })
            .unwrap();
        b.flush().unwrap();
        (user_line, tls_pem)
    }

    #[test]
    fn a_cluster_name_that_is_no_dns_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!("teleport:\n  data_dir: {}\nauth_service:\n  cluster_name: Root_Cluster\n", dir.path().display());
        let settings = AuthSettings::from_parts(&FileConfig::from_yaml(&yaml).unwrap(), &CommonFlags::default()).unwrap();
        let e = AuthState::open(&settings, Arc::new(MemoryBackend::new())).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("auth_service.cluster_name") && e.contains("Root_Cluster"), "{e}");
    }

    #[test]
    fn an_unreachable_postgresql_database_is_named_at_start_without_its_password() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "teleport:\n  data_dir: {}\n  storage:\n    type: postgresql\n    conn_string: \"postgresql://portcullis:hunter2-pw@127.0.0.1:1/portcullis?connect_timeout=3\"\nauth_service:\n  cluster_name: pg.example.com\n",
            dir.path().display()
        );
        let settings = AuthSettings::from_parts(&FileConfig::from_yaml(&yaml).unwrap(), &CommonFlags::default()).unwrap();
        let e = open_data_dir(&settings).unwrap_err();
        assert!(matches!(e, AuthError::Storage(StorageError::Unavailable { .. })), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("the database at 127.0.0.1:1 is unreachable"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn a_database_of_another_cluster_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let b = Arc::new(MemoryBackend::new());
        AuthState::open(&settings(dir.path(), ""), b.clone()).unwrap();
        let yaml = format!("teleport:\n  data_dir: {}\nauth_service:\n  cluster_name: other.example.com\n", dir.path().display());
        let other = AuthSettings::from_parts(&FileConfig::from_yaml(&yaml).unwrap(), &CommonFlags::default()).unwrap();
        let e = AuthState::open(&other, b).unwrap_err().to_string();
        assert!(e.contains("belongs to cluster \"kek.example.com\", but auth_service.cluster_name is \"other.example.com\""), "{e}");
    }

    #[test]
    fn a_new_cluster_stores_its_ca_keys_sealed_only() {
        let dir = tempfile::tempdir().unwrap();
        let b = Arc::new(MemoryBackend::new());
        let s = AuthState::open(&settings(dir.path(), ""), b.clone()).unwrap();
        let raw = raw_cas(b.as_ref());
        assert_eq!(raw.matches("sealed_private").count(), 3, "{raw}");
        assert_no_private_key_material(&raw);
        let kek = dir.path().join("ca-kek");
        assert_eq!(std::fs::metadata(&kek).unwrap().permissions().mode() & 0o777, 0o600);
        // Reopening with the same key gives the same CAs.
        let again = AuthState::open(&settings(dir.path(), ""), b).unwrap();
        assert_eq!(again.user_ca.public_line().unwrap(), s.user_ca.public_line().unwrap());
        assert_eq!(again.tls_ca.cert_pem(), s.tls_ca.cert_pem());
    }

    #[test]
    fn plaintext_keys_from_older_versions_are_sealed_and_keep_working() {
        let dir = tempfile::tempdir().unwrap();
        let b = Arc::new(MemoryBackend::new());
        let (user_line, tls_pem) = store_plaintext_cas(b.as_ref());
        assert!(raw_cas(b.as_ref()).contains("PRIVATE KEY"), "the old layout really is in clear");
        let s = AuthState::open(&settings(dir.path(), ""), b.clone()).unwrap();
        assert_no_private_key_material(&raw_cas(b.as_ref()));
        assert_eq!(s.user_ca.public_line().unwrap(), user_line, "the same CA, not a new one");
        assert_eq!(s.tls_ca.cert_pem(), tls_pem);
        assert_eq!(seal_plaintext_cas(&settings(dir.path(), ""), b.as_ref()).unwrap(), 0, "nothing left to seal");
    }

    #[test]
    fn a_different_or_missing_kek_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let b = Arc::new(MemoryBackend::new());
        AuthState::open(&settings(dir.path(), ""), b.clone()).unwrap();
        let before = raw_cas(b.as_ref());
        let other = dir.path().join("other-kek");
        Kek::create(&other).unwrap();
        let cfg = format!("  ca_key_encryption_key_file: {}\n", other.display());
        let e = AuthState::open(&settings(dir.path(), &cfg), b.clone()).unwrap_err().to_string();
        let expected = format!("the CA keys in the database were sealed with a different key-encryption key ({})", other.display());
        assert!(e.contains(&expected), "{e}");
        assert_eq!(raw_cas(b.as_ref()), before, "a wrong key changes nothing");
        let gone = dir.path().join("gone-kek");
        let cfg = format!("  ca_key_encryption_key_file: {}\n", gone.display());
        let e = AuthState::open(&settings(dir.path(), &cfg), b).unwrap_err().to_string();
        assert!(e.contains(&format!("key-encryption key file {} does not exist", gone.display())), "{e}");
        assert!(!gone.exists(), "no new key is made for a database sealed with another");
    }

    #[test]
    fn a_wrong_kek_never_half_migrates_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let b = Arc::new(MemoryBackend::new());
        store_plaintext_cas(b.as_ref());
        // One CA sealed with key A, as if an earlier migration stopped half way.
        let a = Kek::create(&dir.path().join("a")).unwrap();
        let stored: StoredCa = b.get_json(KEY_USER_CA).unwrap().unwrap();
        let private = stored.private.clone().unwrap();
        b.put_json(KEY_USER_CA, &StoredCa::sealed(&a, KEY_USER_CA, &private, stored.public).unwrap()).unwrap();
        let before = raw_cas(b.as_ref());
        Kek::create(&dir.path().join("ca-kek")).unwrap();
        let e = AuthState::open(&settings(dir.path(), ""), b.clone()).unwrap_err().to_string();
        assert!(e.contains("different key-encryption key"), "{e}");
        assert_eq!(raw_cas(b.as_ref()), before);
    }

    #[test]
    fn open_data_dir_migrates_sled_and_no_clear_key_stays_in_its_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let backend_dir = dir.path().join("backend");
        {
            let b = SledBackend::open(&backend_dir).unwrap();
            store_plaintext_cas(&b);
        }
        let scan = || -> bool {
            fn walk(p: &std::path::Path, hit: &mut bool) {
                for e in std::fs::read_dir(p).unwrap().flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        walk(&p, hit);
                    } else {
                        let bytes = std::fs::read(&p).unwrap();
                        *hit |= bytes.windows(11).any(|w| w == b"PRIVATE KEY");
                    }
                }
            }
            let mut hit = false;
            walk(&backend_dir, &mut hit);
            hit
        };
        assert!(scan(), "the old database holds the keys in clear");
        let state = open_data_dir(&settings(dir.path(), "")).unwrap();
        state.backend.flush().unwrap();
        drop(state);
        assert!(!scan(), "after the migration no clear key is left in the database files");
        open_data_dir(&settings(dir.path(), "")).unwrap();
    }
}
