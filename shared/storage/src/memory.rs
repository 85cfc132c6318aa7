//! An in-memory backend, for tests and throwaway clusters.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use crate::expiry::{self, Sweeper};
use crate::hub::Hub;
use crate::{Backend, Event, EventKind, Item, StorageError, Watcher};

struct Entry {
    value: Vec<u8>,
    revision: u64,
    /// Unix milliseconds; 0: no TTL.
    deadline: u64,
}

struct State {
    map: BTreeMap<String, Entry>,
    /// (deadline, key) of every record with a TTL, soonest first.
    deadlines: BTreeSet<(u64, String)>,
    revision: u64,
    hub: Hub,
}

/// Keeps everything in a map; lost on exit.
pub struct MemoryBackend {
    // Declared first so it is dropped (its thread joined) before the state.
    sweeper: Mutex<Option<Sweeper>>,
    state: Arc<Mutex<State>>,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::with_history(crate::DEFAULT_HISTORY)
    }
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend keeping the last `history` events for watchers that resume.
    pub fn with_history(history: usize) -> Self {
        let state = State { map: BTreeMap::new(), deadlines: BTreeSet::new(), revision: 0, hub: Hub::new(history, 0) };
        MemoryBackend { sweeper: Mutex::new(None), state: Arc::new(Mutex::new(state)) }
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, StorageError> {
        lock(&self.state)
    }

    /// Starts the TTL sweeper on first use: most memory backends never hold a TTL.
    fn ensure_sweeper(&self) -> Result<(), StorageError> {
        let mut slot = self.sweeper.lock().map_err(|_| poisoned())?;
        if slot.is_none() {
            let weak: Weak<Mutex<State>> = Arc::downgrade(&self.state);
            let sweeper = Sweeper::start("storage-memory-ttl", move || match weak.upgrade() {
                Some(state) => {
                    if let Ok(mut st) = state.lock() {
                        st.sweep(expiry::now_ms());
                    }
                    true
                }
                None => false,
            })
            .map_err(|e| StorageError::Backend(format!("cannot start the TTL sweeper: {e}")))?;
            *slot = Some(sweeper);
        }
        Ok(())
    }
}

fn poisoned() -> StorageError {
    StorageError::Backend("memory backend lock poisoned".into())
}

fn lock(state: &Mutex<State>) -> Result<MutexGuard<'_, State>, StorageError> {
    state.lock().map_err(|_| poisoned())
}

impl State {
    /// Removes `key` if its TTL has passed, telling watchers.
    fn expire(&mut self, key: &str, now: u64) {
        if self.map.get(key).is_some_and(|e| expiry::expired(e.deadline, now)) {
            self.write(key, None, 0);
        }
    }

    fn sweep(&mut self, now: u64) {
        while let Some((deadline, key)) = self.deadlines.first().cloned() {
            if deadline > now {
                break;
            }
            self.deadlines.remove(&(deadline, key.clone()));
            self.expire(&key, now);
        }
    }

    /// The one write path: a new revision, the map, the TTL index and the watchers.
    fn write(&mut self, key: &str, value: Option<&[u8]>, deadline: u64) {
        self.revision += 1;
        let revision = self.revision;
        let old = match value {
            Some(v) => self.map.insert(key.to_string(), Entry { value: v.to_vec(), revision, deadline }),
            None => self.map.remove(key),
        };
        if let Some(old) = old
            && old.deadline != 0
        {
            self.deadlines.remove(&(old.deadline, key.to_string()));
        }
        if value.is_some() && deadline != 0 {
            self.deadlines.insert((deadline, key.to_string()));
        }
        let kind = if value.is_some() { EventKind::Put } else { EventKind::Delete };
        self.hub.publish(Event { kind, key: key.to_string(), value: value.map(<[u8]>::to_vec), revision });
    }

    /// The live value of `key` after expiring it if due.
    fn live(&mut self, key: &str) -> Option<&Entry> {
        self.expire(key, expiry::now_ms());
        self.map.get(key)
    }
}

impl Backend for MemoryBackend {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.lock()?.live(key).map(|e| e.value.clone()))
    }
    fn get_item(&self, key: &str) -> Result<Option<Item>, StorageError> {
        Ok(self.lock()?.live(key).map(|e| Item { key: key.to_string(), value: e.value.clone(), revision: e.revision }))
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.lock()?.write(key, Some(value), 0);
        Ok(())
    }
    fn put_ttl(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StorageError> {
        self.ensure_sweeper()?;
        self.lock()?.write(key, Some(value), expiry::deadline_ms(ttl));
        Ok(())
    }
    fn create(&self, key: &str, value: &[u8]) -> Result<bool, StorageError> {
        self.compare_and_swap(key, None, value)
    }
    fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<bool, StorageError> {
        let mut st = self.lock()?;
        if st.live(key).map(|e| e.value.as_slice()) != expected {
            return Ok(false);
        }
        st.write(key, Some(new), 0);
        Ok(true)
    }
    fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, StorageError> {
        let mut st = self.lock()?;
        if st.live(key).map(|e| e.value.as_slice()) != Some(expected) {
            return Ok(false);
        }
        st.write(key, None, 0);
        Ok(true)
    }
    fn delete(&self, key: &str) -> Result<bool, StorageError> {
        let mut st = self.lock()?;
        if st.live(key).is_none() {
            return Ok(false);
        }
        st.write(key, None, 0);
        Ok(true)
    }
    fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        let end = crate::prefix_end(prefix);
        let upper = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let now = expiry::now_ms();
        Ok(self
            .lock()?
            .map
            .range::<str, _>((Bound::Included(prefix), upper))
            .filter(|(_, e)| !expiry::expired(e.deadline, now))
            .map(|(k, e)| (k.clone(), e.value.clone()))
            .collect())
    }
    fn range(&self, start: &str, end: &str, limit: usize, reverse: bool) -> Result<Vec<Item>, StorageError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let now = expiry::now_ms();
        let st = self.lock()?;
        let iter = st.map.range::<str, _>((Bound::Included(start), Bound::Excluded(end)));
        let live = |(k, e): (&String, &Entry)| {
            (!expiry::expired(e.deadline, now)).then(|| Item { key: k.clone(), value: e.value.clone(), revision: e.revision })
        };
        let limit = if limit == 0 { usize::MAX } else { limit };
        Ok(if reverse {
            iter.rev().filter_map(live).take(limit).collect()
        } else {
            iter.filter_map(live).take(limit).collect()
        })
    }
    fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }
    fn revision(&self) -> Result<u64, StorageError> {
        Ok(self.lock()?.revision)
    }
    fn watch(&self, prefix: &str, after: Option<u64>) -> Result<Watcher, StorageError> {
        self.lock()?.hub.subscribe(prefix, after)
    }
}
