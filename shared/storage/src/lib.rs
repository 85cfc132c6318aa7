//! Key-value storage for the auth service behind one sync backend trait, with memory, sled
//! and PostgreSQL backends that pass one shared compliance suite (`tests/compliance.rs`).
#![forbid(unsafe_code)]

mod expiry;
mod hub;
mod memory;
mod postgres;
mod sled_backend;

pub use memory::MemoryBackend;
pub use postgres::PostgresBackend;
pub use sled_backend::SledBackend;

/// How many past events a backend keeps for watchers resuming with `after`.
pub const DEFAULT_HISTORY: usize = 10_000;

/// Errors of a storage backend. Messages never contain secrets (no password of a
/// connection string): they reach logs and users.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("storage: {0}")]
    Backend(String),
    #[error("storage: record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    /// The database cannot be reached; `addr` is `host:port`, never the connection string.
    #[error("storage: the database at {addr} is unreachable: {reason}")]
    Unavailable { addr: String, reason: String },
    /// A watch asked to resume after a revision whose successors are no longer kept.
    #[error("storage: the changes after revision {revision} are no longer kept (compacted); list again and watch from the current revision")]
    Compacted { revision: u64 },
    #[error(
        "storage: {dir} is in use by another auth process (sled allows one process per data_dir; use storage type postgresql to run several auth servers)"
    )]
    InUse { dir: String },
    /// A watcher did not keep up with the changes and was dropped.
    #[error("storage: the watcher fell behind the changes; list again and watch from the current revision")]
    Lagged,
}

/// One stored record with the revision of its last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub key: String,
    pub value: Vec<u8>,
    pub revision: u64,
}

/// What a change did to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change, as a watcher sees it. Revisions grow strictly across the whole backend
/// (all keys, all writers/processes); a watcher sees a prefix's events in revision order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub revision: u64,
}

/// The operations the auth service needs from storage. Keys are `/`-separated paths such
/// as `roles/access`. Implementations must be safe to share between threads.
pub trait Backend: Send + Sync + 'static {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError>;
    fn get_item(&self, key: &str) -> Result<Option<Item>, StorageError>;
    /// Inserts or replaces (clears any TTL).
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StorageError>;
    /// Inserts or replaces; the record vanishes (reads miss it, watchers get a Delete) after `ttl`.
    fn put_ttl(&self, key: &str, value: &[u8], ttl: std::time::Duration) -> Result<(), StorageError>;
    /// Inserts only when absent (an expired record counts as absent); returns whether it inserted.
    fn create(&self, key: &str, value: &[u8]) -> Result<bool, StorageError>;
    /// Writes `new` only if the current value equals `expected` (`None`: only if absent).
    /// Returns whether it wrote. Atomic across processes sharing the backend.
    fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<bool, StorageError>;
    /// Deletes only if the current value equals `expected`.
    fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, StorageError>;
    /// Removes; returns whether something live was there.
    fn delete(&self, key: &str) -> Result<bool, StorageError>;
    /// All live entries whose key starts with `prefix`, in key order.
    fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError>;
    /// Live entries with start <= key < end, in key order (reverse: descending), at most `limit` (0 = no limit).
    fn range(&self, start: &str, end: &str, limit: usize, reverse: bool) -> Result<Vec<Item>, StorageError>;
    /// Makes earlier writes durable (a no-op where every write already is).
    fn flush(&self) -> Result<(), StorageError>;
    /// The newest revision written so far.
    fn revision(&self) -> Result<u64, StorageError>;
    /// Changes to keys under `prefix`: those after `after` if given (resumption; an `after`
    /// older than the kept history yields StorageError::Compacted), else from now on.
    /// Must be called inside a tokio runtime.
    fn watch(&self, prefix: &str, after: Option<u64>) -> Result<Watcher, StorageError>;
}

/// A stream of changes. `next().await` gives `None` once the backend is gone; an `Err` means
/// the watcher fell behind or lost its feed and must re-list and watch again.
pub struct Watcher {
    rx: tokio::sync::mpsc::Receiver<Result<Event, StorageError>>,
    /// Why the backend closed this watcher's channel, when it did so on purpose (it lagged,
    /// or its resumption point was compacted away); reported once, after the queued events.
    closed: std::sync::Arc<std::sync::Mutex<Option<StorageError>>>,
}

impl Watcher {
    pub async fn next(&mut self) -> Option<Result<Event, StorageError>> {
        match self.rx.recv().await {
            Some(item) => Some(item),
            None => {
                let reason = self.closed.lock().ok().and_then(|mut r| r.take());
                reason.map(Err)
            }
        }
    }
}

/// The smallest string greater than every string that starts with `prefix` (`None`: no
/// such bound, every string from `prefix` on matches). Byte order equals code point order
/// in UTF-8, so this bounds a prefix scan in every backend.
pub(crate) fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = last as u32 + 1;
        // Skip the surrogate gap, which holds no chars.
        if (0xD800..=0xDFFF).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
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

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_bounds_every_key_with_the_prefix() {
        assert_eq!(prefix_end("a/").as_deref(), Some("a0"));
        assert_eq!(prefix_end("").as_deref(), None);
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{D7FF}").as_deref(), Some("\u{E000}"));
        let end = prefix_end("ab").unwrap();
        assert!("ab\u{10FFFF}zz" < end.as_str() && "ac" >= end.as_str());
    }
}
