//! An in-memory backend, for tests and throwaway clusters.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::{Backend, StorageError};

/// Keeps everything in a map; lost on exit.
#[derive(Default)]
pub struct MemoryBackend {
    map: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>>, StorageError> {
        self.map.lock().map_err(|_| StorageError::Backend("memory backend lock poisoned".into()))
    }
}

impl Backend for MemoryBackend {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.lock()?.get(key).cloned())
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.lock()?.insert(key.to_string(), value.to_vec());
        Ok(())
    }
    fn create(&self, key: &str, value: &[u8]) -> Result<bool, StorageError> {
        let mut map = self.lock()?;
        if map.contains_key(key) {
            return Ok(false);
        }
        map.insert(key.to_string(), value.to_vec());
        Ok(true)
    }
    fn delete(&self, key: &str) -> Result<bool, StorageError> {
        Ok(self.lock()?.remove(key).is_some())
    }
    fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        Ok(self
            .lock()?
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conformance() {
        crate::suite::run(&super::MemoryBackend::new());
    }
}
