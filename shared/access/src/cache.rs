//! The client-side access cache: follows auth's `WatchAccess` stream, keeps the newest snapshot in memory and on disk.
//!
//! Proxies, nodes and tunnel agents decide logins, resolve nodes and list what a user may see
//! from this cache, so sessions keep working while no auth server answers. The snapshot is
//! written to a file (0600, atomically) so a restart with auth still down works too.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_proto::auth::{AccessSnapshotMessage, WatchAccessRequest};
use tokio::sync::watch;
use tonic::codegen::{Body, Bytes, StdError};

use crate::snapshot::AccessSnapshot;

/// First wait before reconnecting after the stream broke.
const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Auth sends a snapshot at least every 30 s: a stream silent for much longer is dead (a
/// half-open connection never reports an error by itself).
const SILENCE_LIMIT: Duration = Duration::from_secs(75);

/// Why the cache file could not be read or written. Snapshots hold public material only, so
/// the path is safe to show.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot read the access cache file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the access cache file {path} is not a readable snapshot: {source}")]
    Parse { path: String, source: serde_json::Error },
    #[error("cannot write the access cache file {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("cannot encode the access snapshot: {0}")]
    Encode(serde_json::Error),
}

/// How current the cache is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// The stream from auth is up: the snapshot follows auth's changes.
    Fresh,
    /// A snapshot is held but no auth server has answered since `since`.
    Stale { since: SystemTime },
    /// No snapshot at all: auth was never reached and no cache file was found.
    Empty,
}

impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheStatus::Fresh => f.write_str("fresh"),
            CacheStatus::Stale { since } => {
                let ago = SystemTime::now().duration_since(*since).unwrap_or_default().as_secs();
                write!(f, "stale for {ago}s (no auth server answered since)")
            }
            CacheStatus::Empty => f.write_str("empty (auth never reached and no cache file)"),
        }
    }
}

/// The newest access snapshot of one cluster, shared by clones; the watch task stops when the
/// last clone is dropped.
#[derive(Clone)]
pub struct AccessCache {
    shared: Arc<Shared>,
    _task: Option<Arc<AbortOnDrop>>,
}

impl fmt::Debug for AccessCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let revision = self.current().map(|s| s.revision);
        f.debug_struct("AccessCache").field("revision", &revision).field("status", &self.status()).finish()
    }
}

struct Shared {
    tx: watch::Sender<Option<Arc<AccessSnapshot>>>,
    status: Mutex<CacheStatus>,
    file: Option<PathBuf>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

/// What the cache needs of an auth channel (`portcullis_rpc::Channel` and tonic's `Channel`
/// both qualify): the bounds tonic's generated client puts on a streaming call, plus `Send`
/// so the watch runs as a task.
pub trait AuthTransport:
    tonic::client::GrpcService<tonic::body::Body, Future: Send, Error: Into<StdError>, ResponseBody: Body<Data = Bytes, Error: Into<StdError> + Send> + Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<T> AuthTransport for T where
    T: tonic::client::GrpcService<tonic::body::Body, Future: Send, Error: Into<StdError>, ResponseBody: Body<Data = Bytes, Error: Into<StdError> + Send> + Send + 'static>
        + Clone
        + Send
        + 'static
{
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl AccessCache {
    /// Loads `cache_file` (if any) and follows auth's `WatchAccess` stream from now on,
    /// reconnecting with back-off. Must be called inside a tokio runtime.
    pub fn start<T: AuthTransport>(auth: AuthClient<T>, cache_file: PathBuf) -> AccessCache {
        Self::start_for(auth, cache_file, None)
    }

    /// [`AccessCache::start`], ignoring a cache file written for another cluster than
    /// `cluster_name` (a data_dir reused after joining elsewhere).
    pub fn start_for_cluster<T: AuthTransport>(auth: AuthClient<T>, cache_file: PathBuf, cluster_name: &str) -> AccessCache {
        Self::start_for(auth, cache_file, Some(cluster_name))
    }

    /// Follows auth like [`AccessCache::start`] but keeps nothing on disk (tests, processes
    /// without a data_dir).
    pub fn start_in_memory<T: AuthTransport>(auth: AuthClient<T>) -> AccessCache {
        let (tx, _) = watch::channel(None);
        let shared = Arc::new(Shared { tx, status: Mutex::new(CacheStatus::Empty), file: None });
        let task = tokio::spawn(follow(auth, shared.clone()));
        AccessCache { shared, _task: Some(Arc::new(AbortOnDrop(task))) }
    }

    fn start_for<T: AuthTransport>(auth: AuthClient<T>, cache_file: PathBuf, cluster: Option<&str>) -> AccessCache {
        let (initial, status) = match load_file(&cache_file) {
            Ok(Some((snap, written))) if cluster.is_none_or(|c| c == snap.cluster_name) => {
                tracing::info!(
                    revision = snap.revision,
                    file = %cache_file.display(),
                    "loaded the access snapshot kept from an earlier run"
                );
                (Some(Arc::new(snap)), CacheStatus::Stale { since: written })
            }
            Ok(Some((snap, _))) => {
                tracing::warn!(
                    file = %cache_file.display(),
                    "ignoring the access cache file: it is for cluster {:?}, not {:?}",
                    snap.cluster_name,
                    cluster.unwrap_or_default()
                );
                (None, CacheStatus::Empty)
            }
            Ok(None) => (None, CacheStatus::Empty),
            Err(e) => {
                tracing::warn!("{e}; starting with an empty access cache");
                (None, CacheStatus::Empty)
            }
        };
        let (tx, _) = watch::channel(initial);
        let shared = Arc::new(Shared { tx, status: Mutex::new(status), file: Some(cache_file) });
        let task = tokio::spawn(follow(auth, shared.clone()));
        AccessCache { shared, _task: Some(Arc::new(AbortOnDrop(task))) }
    }

    /// A cache holding `snapshot` forever, with no auth behind it (tests, tools).
    pub fn fixed(snapshot: AccessSnapshot) -> AccessCache {
        let (tx, _) = watch::channel(Some(Arc::new(snapshot)));
        let shared = Arc::new(Shared { tx, status: Mutex::new(CacheStatus::Fresh), file: None });
        AccessCache { shared, _task: None }
    }

    /// A cache that never holds a snapshot (callers fall back to asking auth).
    pub fn empty() -> AccessCache {
        let (tx, _) = watch::channel(None);
        let shared = Arc::new(Shared { tx, status: Mutex::new(CacheStatus::Empty), file: None });
        AccessCache { shared, _task: None }
    }

    /// The newest snapshot, if any was ever received or loaded.
    pub fn current(&self) -> Option<Arc<AccessSnapshot>> {
        self.shared.tx.borrow().clone()
    }

    /// Waits until a snapshot is held (loaded or received); false after `timeout` without one.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.tx.subscribe();
        matches!(tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await, Ok(Ok(_)))
    }

    /// A receiver that sees every new snapshot.
    pub fn changed(&self) -> watch::Receiver<Option<Arc<AccessSnapshot>>> {
        self.shared.tx.subscribe()
    }

    /// Fresh, stale since when, or empty.
    pub fn status(&self) -> CacheStatus {
        *self.shared.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where the snapshot is kept on disk (none for [`AccessCache::fixed`] caches).
    pub fn file(&self) -> Option<&Path> {
        self.shared.file.as_deref()
    }

    /// Offers a snapshot as if auth had sent it: adopted unless it is older than the held
    /// one. Returns whether the held snapshot changed. (Public so tests and tools can feed a
    /// cache; the watch task uses it for every message.)
    pub async fn offer(&self, snapshot: AccessSnapshot) -> bool {
        self.shared.offer(snapshot).await
    }
}

impl Shared {
    fn set_status(&self, status: CacheStatus) {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = status;
    }

    /// Marks the cache stale from now, unless it already is (the outage started earlier) or
    /// holds nothing.
    fn mark_stale(&self) {
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        if *status == CacheStatus::Fresh {
            *status = CacheStatus::Stale { since: SystemTime::now() };
        }
    }

    async fn offer(&self, snapshot: AccessSnapshot) -> bool {
        let changed = {
            let current = self.tx.borrow();
            adopts(current.as_deref(), &snapshot)
        };
        if !changed {
            return false;
        }
        let snapshot = Arc::new(snapshot);
        self.tx.send_replace(Some(snapshot.clone()));
        if let Some(path) = self.file.clone() {
            // Disk I/O off the runtime threads; one writer (the watch task), so writes never race.
            let written = tokio::task::spawn_blocking(move || save_file(&path, &snapshot)).await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("{e}; the in-memory snapshot is still used"),
                Err(e) => tracing::warn!("writing the access cache file failed: {e}"),
            }
        }
        true
    }
}

/// Whether `new` replaces `current`: never an older revision of the same cluster, and not an
/// identical copy (auth's keep-alives resend the same snapshot).
fn adopts(current: Option<&AccessSnapshot>, new: &AccessSnapshot) -> bool {
    match current {
        None => true,
        // Another cluster's numbering says nothing about this one's.
        Some(cur) if cur.cluster_name != new.cluster_name => true,
        Some(cur) if new.revision < cur.revision => {
            tracing::debug!(held = cur.revision, offered = new.revision, "ignoring an older access snapshot");
            false
        }
        Some(cur) => cur != new,
    }
}

/// Decodes one stream message; the message's revision fills a snapshot that carries none.
fn decode(msg: &AccessSnapshotMessage) -> Result<AccessSnapshot, serde_json::Error> {
    let mut snap = AccessSnapshot::from_json(&msg.snapshot_json)?;
    if snap.revision == 0 {
        snap.revision = msg.revision;
    }
    Ok(snap)
}

/// Follows `WatchAccess` forever: each message offered to the cache, reconnecting with
/// exponential back-off (through the channel's failover) whenever the stream breaks.
async fn follow<T: AuthTransport>(auth: AuthClient<T>, shared: Arc<Shared>) {
    let mut delay = MIN_BACKOFF;
    // Said once per outage; the retries go to debug.
    let mut down = false;
    loop {
        let reason = watch_once(auth.clone(), &shared, &mut delay, &mut down).await;
        shared.mark_stale();
        if down {
            tracing::debug!("access snapshot stream still down: {reason}");
        } else {
            let what = if shared.tx.borrow().is_some() { "serving the last snapshot" } else { "no snapshot yet" };
            tracing::warn!("the access snapshot stream from the auth service broke ({reason}); {what}, retrying");
            down = true;
        }
        tokio::time::sleep(jitter(delay)).await;
        delay = (delay * 2).min(MAX_BACKOFF);
    }
}

/// One subscription: returns why it ended.
async fn watch_once<T: AuthTransport>(
    mut client: AuthClient<T>,
    shared: &Shared,
    delay: &mut Duration,
    down: &mut bool,
) -> String {
    let mut stream = match client.watch_access(WatchAccessRequest {}).await {
        Ok(resp) => resp.into_inner(),
        Err(status) => return status_text(&status),
    };
    loop {
        match tokio::time::timeout(SILENCE_LIMIT, stream.message()).await {
            Ok(Ok(Some(msg))) => match decode(&msg) {
                Ok(snap) => {
                    let revision = snap.revision;
                    // Fresh before the snapshot is published: whoever sees it sees it fresh.
                    shared.set_status(CacheStatus::Fresh);
                    if shared.offer(snap).await {
                        tracing::debug!(revision, "access snapshot updated");
                    }
                    *delay = MIN_BACKOFF;
                    if *down {
                        tracing::info!(revision, "the access snapshot stream from the auth service works again");
                        *down = false;
                    }
                }
                Err(e) => tracing::warn!("ignoring an unreadable access snapshot from the auth service: {e}"),
            },
            Ok(Ok(None)) => return "the auth service closed the stream".into(),
            Ok(Err(status)) => return status_text(&status),
            Err(_) => return format!("no snapshot for {}s", SILENCE_LIMIT.as_secs()),
        }
    }
}

fn status_text(s: &tonic::Status) -> String {
    match s.code() {
        tonic::Code::Unimplemented => format!("the auth service does not offer WatchAccess: {}", s.message()),
        _ => s.message().to_string(),
    }
}

/// `d` give or take a quarter, so a fleet of nodes does not reconnect in lockstep after an
/// auth restart. Uses the clock's sub-second noise: good enough for spreading, not for crypto.
fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|t| t.subsec_nanos()).unwrap_or(0);
    let quarter = d / 4;
    let spread = quarter.as_nanos() as u64;
    if spread == 0 {
        return d;
    }
    d - quarter + Duration::from_nanos(u64::from(nanos) % (2 * spread))
}

/// Reads a cache file: `None` when there is none; the snapshot and when it was written.
pub fn load_file(path: &Path) -> Result<Option<(AccessSnapshot, SystemTime)>, CacheError> {
    let shown = || path.display().to_string();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CacheError::Read { path: shown(), source }),
    };
    let snap = AccessSnapshot::from_json(&bytes).map_err(|source| CacheError::Parse { path: shown(), source })?;
    let written = std::fs::metadata(path).and_then(|m| m.modified()).unwrap_or_else(|_| SystemTime::now());
    Ok(Some((snap, written)))
}

/// Writes `snap` to `path` so that a crash leaves either the old file or the new one: a
/// temporary file (0600) written and synced, renamed over, and the directory synced.
pub fn save_file(path: &Path, snap: &AccessSnapshot) -> Result<(), CacheError> {
    let bytes = snap.to_json().map_err(CacheError::Encode)?;
    let err = |source| CacheError::Write { path: path.display().to_string(), source };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(err)?;
    let mut tmp_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "access-cache.json".into());
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(err)?;
    #[cfg(unix)]
    {
        // A temporary file left by an older run keeps its mode through `open`: set it again.
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    file.write_all(&bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(err)?;
    // The rename itself is durable only once the directory is synced.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(cluster: &str, revision: u64, role: &str) -> AccessSnapshot {
        AccessSnapshot {
            cluster_name: cluster.into(),
            revision,
            users: [("alice".to_string(), vec![role.to_string()])].into_iter().collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn newer_snapshots_replace_older_ones_never_the_reverse() {
        let cache = AccessCache::empty();
        assert_eq!(cache.status(), CacheStatus::Empty);
        assert!(cache.current().is_none());
        let mut rx = cache.changed();
        assert!(cache.offer(snap("c", 5, "access")).await);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        // An older revision (a lagging replica) is ignored.
        assert!(!cache.offer(snap("c", 4, "editor")).await);
        assert_eq!(cache.current().unwrap().users["alice"], vec!["access"]);
        // A keep-alive with the same content changes nothing and wakes nobody.
        assert!(!cache.offer(snap("c", 5, "access")).await);
        assert!(!rx.has_changed().unwrap());
        // A role removed at a later revision is applied.
        assert!(cache.offer(snap("c", 6, "none")).await);
        assert_eq!(cache.current().unwrap().users["alice"], vec!["none"]);
        assert!(cache.wait_ready(Duration::from_millis(10)).await);
    }

    #[tokio::test]
    async fn an_empty_cache_is_not_ready() {
        assert!(!AccessCache::empty().wait_ready(Duration::from_millis(20)).await);
    }

    #[test]
    fn the_file_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("access-cache.json");
        assert!(load_file(&path).unwrap().is_none());
        save_file(&path, &snap("c", 7, "access")).unwrap();
        save_file(&path, &snap("c", 8, "editor")).unwrap();
        let (back, _) = load_file(&path).unwrap().unwrap();
        assert_eq!(back, snap("c", 8, "editor"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("access-cache.json")]);
        std::fs::write(&path, b"{not json").unwrap();
        let e = load_file(&path).unwrap_err().to_string();
        assert!(e.contains("is not a readable snapshot") && e.contains("access-cache.json"), "{e}");
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(4));
            assert!(j >= Duration::from_secs(3) && j <= Duration::from_secs(5), "{j:?}");
        }
    }
}
