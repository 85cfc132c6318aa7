//! The durable backend: one sled tree under the service's data directory.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{Backend, StorageError};

/// Stores records in sled.
pub struct SledBackend {
    db: sled::Db,
}

fn err(e: sled::Error) -> StorageError {
    StorageError::Backend(e.to_string())
}

/// `dir` with `suffix` appended to its last component, beside it.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> StorageError {
    StorageError::Backend(format!("{what} {}: {e}", path.display()))
}

fn remove_dir_if_present(path: &Path) -> Result<(), StorageError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("cannot remove", path, e)),
    }
}

/// Lowers the database's directories to 0700 and files to 0600: they hold the CAs and
/// password hashes, and sled creates its files with the process umask.
fn restrict_modes(dir: &Path) -> Result<(), StorageError> {
    let set = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(|e| io_err("cannot restrict", p, e))
    };
    set(dir, 0o700)?;
    for entry in std::fs::read_dir(dir).map_err(|e| io_err("cannot list", dir, e))? {
        let entry = entry.map_err(|e| io_err("cannot list", dir, e))?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(|e| io_err("cannot read", &path, e))?;
        if meta.is_dir() {
            restrict_modes(&path)?;
        } else if meta.is_file() && meta.permissions().mode() & 0o777 != 0o600 {
            set(&path, 0o600)?;
        }
    }
    Ok(())
}

impl SledBackend {
    /// Opens (or creates) the database in `dir`, private to the service's user.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        // A rewrite interrupted between its two renames leaves only the old copy: use it.
        let old = sibling(dir, "old");
        if !dir.exists() && old.is_dir() {
            std::fs::rename(&old, dir).map_err(|e| io_err("cannot restore", &old, e))?;
        }
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io_err("cannot create", dir, e))?;
        }
        let db = sled::open(dir)
            .map_err(|e| StorageError::Backend(format!("cannot open {}: {e}", dir.display())))?;
        restrict_modes(dir)?;
        Ok(SledBackend { db })
    }

    /// Replaces the database in `dir` with a fresh copy of its live records. sled keeps
    /// overwritten values in its log until the space is reused, so after replacing secrets
    /// (sealing plaintext CA keys) this is how the old bytes leave the disk copy.
    pub fn rewrite(dir: &Path) -> Result<(), StorageError> {
        let fresh = sibling(dir, "rewrite");
        let old = sibling(dir, "old");
        remove_dir_if_present(&fresh)?;
        {
            let src = SledBackend::open(dir)?.db;
            let dst = SledBackend::open(&fresh)?.db;
            for name in src.tree_names() {
                let (from, to) = (src.open_tree(&name).map_err(err)?, dst.open_tree(&name).map_err(err)?);
                for r in from.iter() {
                    let (k, v) = r.map_err(err)?;
                    to.insert(k, v).map_err(err)?;
                }
            }
            dst.flush().map_err(err)?;
        }
        remove_dir_if_present(&old)?;
        std::fs::rename(dir, &old).map_err(|e| io_err("cannot move aside", dir, e))?;
        std::fs::rename(&fresh, dir).map_err(|e| io_err("cannot move into place", &fresh, e))?;
        remove_dir_if_present(&old)
    }
}

impl Backend for SledBackend {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get(key).map_err(err)?.map(|v| v.to_vec()))
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.db.insert(key, value).map_err(err)?;
        Ok(())
    }
    fn create(&self, key: &str, value: &[u8]) -> Result<bool, StorageError> {
        let res = self.db.compare_and_swap(key, None as Option<&[u8]>, Some(value)).map_err(err)?;
        Ok(res.is_ok())
    }
    fn delete(&self, key: &str) -> Result<bool, StorageError> {
        Ok(self.db.remove(key).map_err(err)?.is_some())
    }
    fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        self.db
            .scan_prefix(prefix)
            .map(|r| {
                let (k, v) = r.map_err(err)?;
                let k = String::from_utf8(k.to_vec())
                    .map_err(|_| StorageError::Corrupt { key: format!("{k:?}"), reason: "key is not UTF-8".into() })?;
                Ok((k, v.to_vec()))
            })
            .collect()
    }
    fn flush(&self) -> Result<(), StorageError> {
        self.db.flush().map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        crate::suite::run(&SledBackend::open(dir.path()).unwrap());
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let b = SledBackend::open(dir.path()).unwrap();
            b.put("roles/a", b"1").unwrap();
            b.flush().unwrap();
        }
        let b = SledBackend::open(dir.path()).unwrap();
        assert_eq!(b.get("roles/a").unwrap().as_deref(), Some(&b"1"[..]));
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// Every file sled wrote, with its bytes.
    fn raw_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(raw_files(&p));
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
        out
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn database_files_are_private_whatever_the_umask() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("backend");
        {
            let b = SledBackend::open(&dir).unwrap();
            b.put("cas/tls", b"x").unwrap();
            b.flush().unwrap();
        }
        // An older data directory: modes as sled made them under umask 022.
        for (p, _) in raw_files(&dir) {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _b = SledBackend::open(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let files = raw_files(&dir);
        assert!(!files.is_empty());
        for (p, _) in files {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }

    #[test]
    fn rewrite_drops_overwritten_values_and_keeps_live_ones() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("backend");
        let secret = b"-----BEGIN PRIVATE KEY----- overwritten secret";
        {
            let b = SledBackend::open(&dir).unwrap();
            b.put("cas/tls", secret).unwrap();
            b.put("roles/a", b"1").unwrap();
            b.flush().unwrap();
            b.put("cas/tls", b"sealed").unwrap();
            b.flush().unwrap();
        }
        let before = raw_files(&dir).into_iter().any(|(_, bytes)| contains(&bytes, secret));
        assert!(before, "sled keeps overwritten values on disk: this test would prove nothing");
        SledBackend::rewrite(&dir).unwrap();
        assert!(!raw_files(&dir).into_iter().any(|(_, bytes)| contains(&bytes, secret)));
        assert!(!sibling(&dir, "old").exists() && !sibling(&dir, "rewrite").exists());
        let b = SledBackend::open(&dir).unwrap();
        assert_eq!(b.get("cas/tls").unwrap().as_deref(), Some(&b"sealed"[..]));
        assert_eq!(b.get("roles/a").unwrap().as_deref(), Some(&b"1"[..]));
    }

    #[test]
    fn open_recovers_from_an_interrupted_rewrite() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("backend");
        {
            let b = SledBackend::open(&dir).unwrap();
            b.put("roles/a", b"1").unwrap();
            b.flush().unwrap();
        }
        // Crashed after moving the database aside, before moving the copy in.
        std::fs::rename(&dir, sibling(&dir, "old")).unwrap();
        let b = SledBackend::open(&dir).unwrap();
        assert_eq!(b.get("roles/a").unwrap().as_deref(), Some(&b"1"[..]));
    }
}
