//! Key-value storage for the auth service behind a small backend trait, with sled and
//! in-memory backends that pass one shared conformance suite.
#![forbid(unsafe_code)]

mod memory;
mod sled_backend;
pub mod suite;

pub use memory::MemoryBackend;
pub use sled_backend::SledBackend;

/// Errors of a storage backend.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage: {0}")]
    Backend(String),
    #[error("storage: record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
}

/// The operations the auth service needs from storage. Keys are `/`-separated paths such
/// as `roles/access`. Implementations must be safe to share between threads.
pub trait Backend: Send + Sync + 'static {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Inserts or replaces.
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StorageError>;
    /// Inserts only when absent; returns whether it inserted.
    fn create(&self, key: &str, value: &[u8]) -> Result<bool, StorageError>;
    /// Removes; returns whether something was there.
    fn delete(&self, key: &str) -> Result<bool, StorageError>;
    /// All entries whose key starts with `prefix`, in key order.
    fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError>;
    /// Makes earlier writes durable.
    fn flush(&self) -> Result<(), StorageError>;
}

/// Typed helpers over any backend, storing values as JSON.
pub trait BackendExt: Backend {
    fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        match self.get(key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StorageError::Corrupt { key: key.to_string(), reason: e.to_string() }),
        }
    }

    fn put_json<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StorageError::Backend(e.to_string()))?;
        self.put(key, &bytes)
    }

    fn list_json<T: serde::de::DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>, StorageError> {
        self.list(prefix)?
            .into_iter()
            .map(|(k, v)| {
                serde_json::from_slice(&v).map_err(|e| StorageError::Corrupt { key: k, reason: e.to_string() })
            })
            .collect()
    }
}

impl<B: Backend + ?Sized> BackendExt for B {}
