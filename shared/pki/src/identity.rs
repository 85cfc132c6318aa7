//! A process's or admin's credentials on disk: TLS key and certificate, SSH key and
//! certificate, and the CAs it trusts, in one JSON file readable by its owner only.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{PkiError, Secret};

const KIND: &str = "portcullis-identity";

/// Credentials issued by a cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub kind: String,
    pub cluster_name: String,
    /// Host id for services, user name for users.
    pub name: String,
    #[serde(default)]
    pub nodename: String,
    pub system_role: String,
    pub tls_cert_pem: String,
    pub tls_key_pem: Secret<String>,
    pub tls_ca_pems: Vec<String>,
    pub ssh_private_key: Secret<String>,
    pub ssh_cert: String,
    #[serde(default)]
    pub ssh_user_cas: Vec<String>,
    #[serde(default)]
    pub ssh_host_cas: Vec<String>,
}

impl Identity {
    /// Builds an identity with the `kind` marker filled in.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cluster_name: String,
        name: String,
        nodename: String,
        system_role: String,
        tls_cert_pem: String,
        tls_key_pem: Secret<String>,
        tls_ca_pems: Vec<String>,
        ssh_private_key: Secret<String>,
        ssh_cert: String,
    ) -> Self {
        Identity {
            kind: KIND.into(),
            cluster_name,
            name,
            nodename,
            system_role,
            tls_cert_pem,
            tls_key_pem,
            tls_ca_pems,
            ssh_private_key,
            ssh_cert,
            ssh_user_cas: Vec::new(),
            ssh_host_cas: Vec::new(),
        }
    }

    /// Reads an identity file, naming the file and the problem on failure.
    pub fn load(path: &Path) -> Result<Self, PkiError> {
        let err = |reason: String| PkiError::IdentityFile { path: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let id: Identity =
            serde_json::from_str(&text).map_err(|e| err(format!("not a Portcullis identity: {e}")))?;
        if id.kind != KIND {
            return Err(err(format!("kind is {:?}, expected {KIND:?}", id.kind)));
        }
        Ok(id)
    }

    /// Writes the file atomically with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), PkiError> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| PkiError::IdentityFile { path: path.display().to_string(), reason: e.to_string() })?;
        write_private(path, text.as_bytes())
    }
}

/// Writes `data` to `path` through a temporary file, readable by the owner only (0600
/// whatever the umask; a missing directory is created 0700).
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::datadir::create_private_dir(dir)?;
    }
    let tmp = path.with_extension("tmp");
    // A leftover temporary file keeps its old mode when reopened: start from a new one.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(crate::datadir::FILE_MODE)
            .open(&tmp)?;
        // `mode` above is filtered by the umask and may be looser than asked on odd setups.
        f.set_permissions(std::fs::Permissions::from_mode(crate::datadir::FILE_MODE))?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip_and_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pki-id-{}", crate::random_hex::<8>().unwrap()));
        let path = dir.join("id.json");
        let id = Identity::new(
            "c".into(), "h".into(), "n".into(), "Node".into(), "cert".into(),
            Secret::new("key".into()), vec!["ca".into()], Secret::new("ssh".into()), "sshcert".into(),
        );
        id.save(&path).unwrap();
        let back = Identity::load(&path).unwrap();
        assert_eq!(back.tls_key_pem.expose(), "key");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&path, "{}").unwrap();
        let e = Identity::load(&path).unwrap_err().to_string();
        assert!(e.contains("id.json") && e.contains("not a Portcullis identity"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn save_is_0600_even_over_open_leftovers() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pki-id-{}", crate::random_hex::<8>().unwrap()));
        let path = dir.join("sub/admin-identity.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // An old identity and a leftover temporary file, both world-readable.
        for p in [path.clone(), path.with_extension("tmp")] {
            std::fs::write(&p, "old").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let id = Identity::new(
            "c".into(), "admin".into(), String::new(), "Admin".into(), "cert".into(),
            Secret::new("key".into()), vec![], Secret::new(String::new()), String::new(),
        );
        id.save(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // A directory it has to make is private too.
        let fresh = dir.join("new-dir/id.json");
        id.save(&fresh).unwrap();
        assert_eq!(std::fs::metadata(dir.join("new-dir")).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
