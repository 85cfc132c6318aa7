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

/// Writes `data` to `path` through a temporary file, readable by the owner only.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
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
}
