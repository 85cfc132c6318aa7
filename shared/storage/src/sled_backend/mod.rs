//! The embedded durable backend: sled under the service's data directory, one process per
//! directory. Values stay plain in sled's default tree (so data directories written by older
//! versions open unchanged); each key's revision and TTL live in a second tree, and the
//! revision counter in a third, all written in one sled transaction.

mod files;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

use sled::Transactional;

use self::files::{io_err, remove_dir_if_present, restrict_modes, sibling};
use crate::expiry::{self, Sweeper};
use crate::hub::Hub;
use crate::{Backend, Event, EventKind, Item, StorageError, Watcher};

/// Per-key metadata: revision and TTL deadline (Unix ms, 0: none).
const META_TREE: &str = "portcullis.meta";
/// The revision counter, under `REVISION_KEY`.
const STATE_TREE: &str = "portcullis.state";
const REVISION_KEY: &[u8] = b"revision";

/// Stores records in sled.
pub struct SledBackend {
    // Declared first so its thread is joined before the database closes.
    sweeper: Mutex<Option<Sweeper>>,
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    values: sled::Tree,
    meta: sled::Tree,
    state: sled::Tree,
    /// Writers take it exclusively (so revisions and events are ordered); readers shared
    /// (so a value and its metadata are read from the same write).
    lock: RwLock<WriteState>,
}

struct WriteState {
    revision: u64,
    hub: Hub,
    /// (deadline, key) of every record with a TTL, soonest first.
    deadlines: BTreeSet<(u64, String)>,
}

/// One record as stored: value plus metadata.
struct Record {
    value: Vec<u8>,
    revision: u64,
    deadline: u64,
}

fn err(e: sled::Error) -> StorageError {
    StorageError::Backend(e.to_string())
}

fn poisoned() -> StorageError {
    StorageError::Backend("sled backend lock poisoned".into())
}

fn encode_meta(revision: u64, deadline: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&revision.to_be_bytes());
    out[8..].copy_from_slice(&deadline.to_be_bytes());
    out
}

/// (revision, deadline); a record written before revisions existed has neither.
fn decode_meta(key: &str, raw: Option<&[u8]>) -> Result<(u64, u64), StorageError> {
    let Some(raw) = raw else { return Ok((0, 0)) };
    let corrupt = || StorageError::Corrupt { key: key.to_string(), reason: "bad revision metadata".into() };
    let rev: [u8; 8] = raw.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(corrupt)?;
    let deadline: [u8; 8] = raw.get(8..16).and_then(|b| b.try_into().ok()).ok_or_else(corrupt)?;
    Ok((u64::from_be_bytes(rev), u64::from_be_bytes(deadline)))
}

fn utf8_key(k: &[u8]) -> Result<String, StorageError> {
    String::from_utf8(k.to_vec())
        .map_err(|_| StorageError::Corrupt { key: format!("{k:?}"), reason: "key is not UTF-8".into() })
}

impl SledBackend {
    /// Opens (or creates) the database in `dir`, private to the service's user. Fails with
    /// `StorageError::InUse` while another process has it open.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        Self::open_with_history(dir, crate::DEFAULT_HISTORY)
    }

    /// As [`SledBackend::open`], keeping the last `history` events for resuming watchers.
    pub fn open_with_history(dir: &Path, history: usize) -> Result<Self, StorageError> {
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
        let db = sled::open(dir).map_err(|e| match e {
            // sled's exclusive file lock: held by another process (or another open here).
            sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                StorageError::InUse { dir: dir.display().to_string() }
            }
            e => StorageError::Backend(format!("cannot open {}: {e}", dir.display())),
        })?;
        restrict_modes(dir)?;
        let values: sled::Tree = (*db).clone();
        let meta = db.open_tree(META_TREE).map_err(err)?;
        let state = db.open_tree(STATE_TREE).map_err(err)?;
        let revision = match state.get(REVISION_KEY).map_err(err)? {
            None => 0,
            Some(raw) => u64::from_be_bytes(raw.as_ref().try_into().map_err(|_| StorageError::Corrupt {
                key: "revision counter".into(),
                reason: "not 8 bytes".into(),
            })?),
        };
        let mut deadlines = BTreeSet::new();
        for r in meta.iter() {
            let (k, v) = r.map_err(err)?;
            let key = utf8_key(&k)?;
            let (_, deadline) = decode_meta(&key, Some(&v))?;
            if deadline != 0 {
                deadlines.insert((deadline, key));
            }
        }
        let has_ttls = !deadlines.is_empty();
        let inner = Arc::new(Inner {
            db,
            values,
            meta,
            state,
            lock: RwLock::new(WriteState { revision, hub: Hub::new(history, revision), deadlines }),
        });
        let backend = SledBackend { sweeper: Mutex::new(None), inner };
        if has_ttls {
            backend.ensure_sweeper()?;
        }
        Ok(backend)
    }

    /// Replaces the database in `dir` with a fresh copy of its live records. sled keeps
    /// overwritten values in its log until the space is reused, so after replacing secrets
    /// (sealing plaintext CA keys) this is how the old bytes leave the disk copy.
    pub fn rewrite(dir: &Path) -> Result<(), StorageError> {
        let fresh = sibling(dir, "rewrite");
        let old = sibling(dir, "old");
        remove_dir_if_present(&fresh)?;
        {
            let src = SledBackend::open(dir)?;
            let dst = SledBackend::open(&fresh)?;
            let (src, dst) = (&src.inner.db, &dst.inner.db);
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

    fn ensure_sweeper(&self) -> Result<(), StorageError> {
        let mut slot = self.sweeper.lock().map_err(|_| poisoned())?;
        if slot.is_none() {
            let weak: Weak<Inner> = Arc::downgrade(&self.inner);
            let sweeper = Sweeper::start("storage-sled-ttl", move || match weak.upgrade() {
                Some(inner) => {
                    if let Err(e) = inner.sweep() {
                        tracing::warn!(error = %e, "storage: TTL sweep failed");
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

    fn read(&self) -> Result<RwLockReadGuard<'_, WriteState>, StorageError> {
        self.inner.lock.read().map_err(|_| poisoned())
    }

    fn write_lock(&self) -> Result<RwLockWriteGuard<'_, WriteState>, StorageError> {
        self.inner.lock.write().map_err(|_| poisoned())
    }

    /// Runs `decide` on the live record under the write lock; when it returns a change,
    /// writes it. Returns what `decide` returned alongside.
    fn update<T>(
        &self,
        key: &str,
        decide: impl FnOnce(Option<&Record>) -> (Option<Change>, T),
    ) -> Result<T, StorageError> {
        let mut st = self.write_lock()?;
        let now = expiry::now_ms();
        let current = self.inner.record(key)?;
        if let Some(r) = &current
            && expiry::expired(r.deadline, now)
        {
            // Expired: tell watchers before anything else happens to the key.
            self.inner.apply(&mut st, key, None, r.deadline)?;
        }
        let live = current.filter(|r| !expiry::expired(r.deadline, now));
        let (change, out) = decide(live.as_ref());
        if let Some(change) = change {
            let old_deadline = live.map_or(0, |r| r.deadline);
            match change {
                Change::Put(value, deadline) => self.inner.apply(&mut st, key, Some((&value, deadline)), old_deadline)?,
                Change::Delete => self.inner.apply(&mut st, key, None, old_deadline)?,
            }
        }
        Ok(out)
    }
}

enum Change {
    Put(Vec<u8>, u64),
    Delete,
}

impl Inner {
    fn record(&self, key: &str) -> Result<Option<Record>, StorageError> {
        let Some(value) = self.values.get(key).map_err(err)? else { return Ok(None) };
        let (revision, deadline) = decode_meta(key, self.meta.get(key).map_err(err)?.as_deref())?;
        Ok(Some(Record { value: value.to_vec(), revision, deadline }))
    }

    /// The one write path: next revision, value, metadata and counter in one transaction,
    /// then the TTL index and the watchers. Caller holds the write lock (`st`).
    fn apply(
        &self,
        st: &mut WriteState,
        key: &str,
        put: Option<(&[u8], u64)>,
        old_deadline: u64,
    ) -> Result<(), StorageError> {
        let revision = st.revision + 1;
        (&self.values, &self.meta, &self.state)
            .transaction(|(v, m, s)| {
                match put {
                    Some((value, deadline)) => {
                        v.insert(key, value)?;
                        m.insert(key, &encode_meta(revision, deadline))?;
                    }
                    None => {
                        v.remove(key)?;
                        m.remove(key)?;
                    }
                }
                s.insert(REVISION_KEY, &revision.to_be_bytes())?;
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| StorageError::Backend(format!("write {key}: {e:?}")))?;
        st.revision = revision;
        if old_deadline != 0 {
            st.deadlines.remove(&(old_deadline, key.to_string()));
        }
        if let Some((_, deadline)) = put
            && deadline != 0
        {
            st.deadlines.insert((deadline, key.to_string()));
        }
        let kind = if put.is_some() { EventKind::Put } else { EventKind::Delete };
        st.hub.publish(Event { kind, key: key.to_string(), value: put.map(|(v, _)| v.to_vec()), revision });
        Ok(())
    }

    /// Deletes every record whose TTL has passed, through the normal write path.
    fn sweep(&self) -> Result<(), StorageError> {
        let now = expiry::now_ms();
        let mut st = self.lock.write().map_err(|_| poisoned())?;
        while let Some((deadline, key)) = st.deadlines.first().cloned() {
            if deadline > now {
                break;
            }
            st.deadlines.remove(&(deadline, key.clone()));
            if let Some(r) = self.record(&key)?
                && r.deadline == deadline
            {
                self.apply(&mut st, &key, None, 0)?;
            }
        }
        Ok(())
    }

    fn live_item(&self, k: &[u8], v: &[u8], now: u64) -> Result<Option<Item>, StorageError> {
        let key = utf8_key(k)?;
        let (revision, deadline) = decode_meta(&key, self.meta.get(k).map_err(err)?.as_deref())?;
        Ok((!expiry::expired(deadline, now)).then(|| Item { key, value: v.to_vec(), revision }))
    }
}

impl Backend for SledBackend {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.get_item(key)?.map(|i| i.value))
    }
    fn get_item(&self, key: &str) -> Result<Option<Item>, StorageError> {
        let _guard = self.read()?;
        let now = expiry::now_ms();
        Ok(self
            .inner
            .record(key)?
            .filter(|r| !expiry::expired(r.deadline, now))
            .map(|r| Item { key: key.to_string(), value: r.value, revision: r.revision }))
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.update(key, |_| (Some(Change::Put(value.to_vec(), 0)), ()))
    }
    fn put_ttl(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StorageError> {
        self.ensure_sweeper()?;
        let deadline = expiry::deadline_ms(ttl);
        self.update(key, |_| (Some(Change::Put(value.to_vec(), deadline)), ()))
    }
    fn create(&self, key: &str, value: &[u8]) -> Result<bool, StorageError> {
        self.compare_and_swap(key, None, value)
    }
    fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<bool, StorageError> {
        self.update(key, |cur| {
            if cur.map(|r| r.value.as_slice()) == expected {
                (Some(Change::Put(new.to_vec(), 0)), true)
            } else {
                (None, false)
            }
        })
    }
    fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, StorageError> {
        self.update(key, |cur| {
            if cur.map(|r| r.value.as_slice()) == Some(expected) { (Some(Change::Delete), true) } else { (None, false) }
        })
    }
    fn delete(&self, key: &str) -> Result<bool, StorageError> {
        self.update(key, |cur| if cur.is_some() { (Some(Change::Delete), true) } else { (None, false) })
    }
    fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        let _guard = self.read()?;
        let now = expiry::now_ms();
        let mut out = Vec::new();
        for r in self.inner.values.scan_prefix(prefix) {
            let (k, v) = r.map_err(err)?;
            if let Some(item) = self.inner.live_item(&k, &v, now)? {
                out.push((item.key, item.value));
            }
        }
        Ok(out)
    }
    fn range(&self, start: &str, end: &str, limit: usize, reverse: bool) -> Result<Vec<Item>, StorageError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let _guard = self.read()?;
        let now = expiry::now_ms();
        let limit = if limit == 0 { usize::MAX } else { limit };
        let iter = self.inner.values.range(start..end);
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            if reverse { Box::new(iter.rev()) } else { Box::new(iter) };
        let mut out = Vec::new();
        for r in iter {
            if out.len() >= limit {
                break;
            }
            let (k, v) = r.map_err(err)?;
            if let Some(item) = self.inner.live_item(&k, &v, now)? {
                out.push(item);
            }
        }
        Ok(out)
    }
    fn flush(&self) -> Result<(), StorageError> {
        self.inner.db.flush().map_err(err)?;
        Ok(())
    }
    fn revision(&self) -> Result<u64, StorageError> {
        Ok(self.read()?.revision)
    }
    fn watch(&self, prefix: &str, after: Option<u64>) -> Result<Watcher, StorageError> {
        self.write_lock()?.hub.subscribe(prefix, after)
    }
}
