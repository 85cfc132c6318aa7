//! The expiry sweep runs on every auth replica: a record it read as expired but that another
//! replica refreshed before the sweep deleted it must survive (issue 12).
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use portcullis_auth::AuthState;
use portcullis_auth::nodes::Observed;
use portcullis_config::{AuthSettings, CommonFlags, FileConfig};
use portcullis_proto::auth::HeartbeatRequest;
use portcullis_storage::{Backend, Item, MemoryBackend, StorageError, Watcher};

type Hook = Box<dyn FnOnce() + Send>;

/// Runs a hook once, right after a `list` of `prefix` returns: another replica's write
/// landing between a sweep's read and its delete.
struct Interleave {
    inner: Arc<dyn Backend>,
    prefix: &'static str,
    hook: Mutex<Option<Hook>>,
}

impl Backend for Interleave {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(key)
    }
    fn get_item(&self, key: &str) -> Result<Option<Item>, StorageError> {
        self.inner.get_item(key)
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.inner.put(key, value)
    }
    fn put_ttl(&self, key: &str, value: &[u8], ttl: std::time::Duration) -> Result<(), StorageError> {
        self.inner.put_ttl(key, value, ttl)
    }
    fn create(&self, key: &str, value: &[u8]) -> Result<bool, StorageError> {
        self.inner.create(key, value)
    }
    fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<bool, StorageError> {
        self.inner.compare_and_swap(key, expected, new)
    }
    fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, StorageError> {
        self.inner.compare_and_delete(key, expected)
    }
    fn delete(&self, key: &str) -> Result<bool, StorageError> {
        self.inner.delete(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        let out = self.inner.list(prefix)?;
        if prefix == self.prefix
            && let Some(hook) = self.hook.lock().unwrap().take()
        {
            hook();
        }
        Ok(out)
    }
    fn range(&self, start: &str, end: &str, limit: usize, reverse: bool) -> Result<Vec<Item>, StorageError> {
        self.inner.range(start, end, limit, reverse)
    }
    fn flush(&self) -> Result<(), StorageError> {
        self.inner.flush()
    }
    fn revision(&self) -> Result<u64, StorageError> {
        self.inner.revision()
    }
    fn watch(&self, prefix: &str, after: Option<u64>) -> Result<Watcher, StorageError> {
        self.inner.watch(prefix, after)
    }
}

fn open(dir: &std::path::Path, name: &str, backend: Arc<dyn Backend>) -> AuthState {
    let yaml = format!(
        "teleport:\n  data_dir: {}\nauth_service:\n  cluster_name: sweep.example.com\n  ca_key_encryption_key_file: {}\n",
        dir.join(name).display(),
        dir.join("kek").display()
    );
    let settings = AuthSettings::from_parts(&FileConfig::from_yaml(&yaml).unwrap(), &CommonFlags::default()).unwrap();
    AuthState::open(&settings, backend).unwrap()
}

fn beat() -> (HeartbeatRequest, Observed) {
    let req = HeartbeatRequest {
        kind: "node".into(),
        host_id: "h1".into(),
        hostname: "db-1".into(),
        addr: "127.0.0.1:3022".into(),
        ..Default::default()
    };
    (req, Observed::new(Some(std::net::Ipv4Addr::LOCALHOST.into()), vec!["db-1".into(), "h1".into()]))
}

#[test]
fn a_node_refreshed_by_another_replica_during_a_sweep_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let inner: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let wrapped = Arc::new(Interleave { inner: inner.clone(), prefix: "nodes/", hook: Mutex::new(None) });
    let sweeper = open(dir.path(), "a", wrapped.clone());
    let other = Arc::new(open(dir.path(), "b", inner));
    // Last heard of 20 minutes ago: past its TTL and the 10-minute grace.
    let (req, seen) = beat();
    let long_ago = time::OffsetDateTime::now_utc() - time::Duration::minutes(20);
    other.heartbeat_at(&req, &seen, long_ago).unwrap();
    // ... and it heartbeats through the other replica just as the sweep has read it.
    let refresher = other.clone();
    *wrapped.hook.lock().unwrap() = Some(Box::new(move || {
        let (req, seen) = beat();
        refresher.heartbeat(&req, &seen).unwrap();
    }));
    sweeper.sweep_expired().unwrap();
    assert!(wrapped.hook.lock().unwrap().is_none(), "the refresh ran during the sweep");
    let node = other.get_node("h1").unwrap().expect("the refreshed node is kept");
    assert!(node.metadata.expires.unwrap() > time::OffsetDateTime::now_utc());
    assert_eq!(sweeper.resolve_node("db-1", 0).unwrap().metadata.name, "h1", "and so is its name");
    // With nothing refreshing it, an expired node does go, and frees its name.
    let (mut req, _) = beat();
    req.host_id = "h2".into();
    req.hostname = "web-2".into();
    let seen = Observed::new(Some(std::net::Ipv4Addr::LOCALHOST.into()), vec!["web-2".into(), "h2".into()]);
    other.heartbeat_at(&req, &seen, long_ago).unwrap();
    sweeper.sweep_expired().unwrap();
    assert!(other.get_node("h2").unwrap().is_none());
    assert!(inner_names(&other).iter().all(|n| n != "web-2"), "{:?}", inner_names(&other));
    assert!(other.get_node("h1").unwrap().is_some());
}

fn inner_names(s: &AuthState) -> Vec<String> {
    s.backend.list("nodenames/").unwrap().into_iter().map(|(k, _)| k.trim_start_matches("nodenames/").to_string()).collect()
}
