//! The durable backend: one sled tree under the service's data directory.

use std::path::Path;

use crate::{Backend, StorageError};

/// Stores records in sled.
pub struct SledBackend {
    db: sled::Db,
}

fn err(e: sled::Error) -> StorageError {
    StorageError::Backend(e.to_string())
}

impl SledBackend {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let db = sled::open(dir)
            .map_err(|e| StorageError::Backend(format!("cannot open {}: {e}", dir.display())))?;
        Ok(SledBackend { db })
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
}
