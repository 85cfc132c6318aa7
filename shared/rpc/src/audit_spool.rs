//! A durable outbox for audit events: written to disk before `emit` returns, delivered to auth oldest first, removed only once acknowledged.
//!
//! The audit log lives on the auth service, so a node, proxy or agent that produces an
//! event while no auth server answers must keep it itself. The spool directory (0700,
//! usually `<data_dir>/audit-spool`) holds:
//! - segment files `NNNNNNNNNNNNNNNNNNNN.jsonl` (0600), one JSON object per line, numbered
//!   in the order they were written; the highest is the one appended to;
//! - `cursor`: `<segment> <offset>`, where delivery resumes after a restart.
//!
//! Every event gets a stable `id` before it is written, so a crash between auth's answer
//! and the cursor update only causes a resend, which auth recognises by that `id`. Disk use
//! is capped: past the cap whole segments of the oldest events are dropped, loudly.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use portcullis_diag::{Counter, Family, Gauge, Metrics};
use portcullis_proto::auth::AuditEventRequest;
use portcullis_proto::auth::auth_client::AuthClient;
use serde_json::Value;
use tokio::sync::{Notify, watch};

mod delivery;
mod disk;
#[cfg(test)]
mod tests;

use disk::Cursor;

/// The spool's directory name under a service's data_dir.
pub const SPOOL_DIR: &str = "audit-spool";
/// Disk the spool may use by default before it drops the oldest events.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Size at which a segment is closed and a new one started; also how much is dropped at
/// once when the cap is reached (at most a quarter of the cap, see [`SpoolOptions`]).
const DEFAULT_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;

/// What the delivery task awaits for one event.
pub type SendFuture = Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>>;

/// Where spooled events go: auth's `EmitAuditEvent`, or a stand-in in tests.
pub trait AuditSender: Send + Sync + 'static {
    /// Sends one event (a JSON object); `Ok` means auth stored it.
    fn send(&self, event_json: String) -> SendFuture;
}

impl AuditSender for AuthClient<crate::Channel> {
    fn send(&self, event_json: String) -> SendFuture {
        let mut client = self.clone();
        Box::pin(async move { client.emit_audit_event(AuditEventRequest { event_json }).await.map(|_| ()) })
    }
}

/// Limits and timings of a spool; [`Default`] suits services, tests shrink them.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// Disk the segments may use; beyond it the oldest events are dropped.
    pub max_bytes: u64,
    /// Segment size before a new one is started (capped at a quarter of `max_bytes`, so
    /// reaching the cap drops at most a quarter of what is kept).
    pub segment_bytes: u64,
    /// How often written events are forced to disk (`fsync`) while events arrive.
    pub sync_interval: Duration,
    /// Longest wait for auth to answer one event.
    pub send_timeout: Duration,
    /// First wait before retrying after auth failed to answer; doubles up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            max_bytes: DEFAULT_MAX_BYTES,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            sync_interval: Duration::from_millis(100),
            send_timeout: Duration::from_secs(10),
            retry_min: Duration::from_millis(250),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// Why the spool cannot open or take an event.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("audit spool: {what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("an audit event must be a JSON object, not {0}")]
    NotAnObject(&'static str),
    #[error("an audit event of {size} bytes does not fit the audit spool's cap of {cap} bytes")]
    TooLarge { size: u64, cap: u64 },
    #[error("the audit spool must be opened inside a tokio runtime (it delivers events in the background)")]
    NoRuntime,
    #[error("the audit spool {0} is in use by another process (does another service share this data_dir?)")]
    Busy(PathBuf),
}

impl SpoolError {
    fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        SpoolError::Io { what, path: path.to_path_buf(), source }
    }
}

/// Labels of `portcullis_audit_spool_dropped_total`.
type ReasonLabel = [(&'static str, &'static str); 1];
/// Events dropped because the spool reached its disk cap.
const OVER_CAP: ReasonLabel = [("reason", "over_cap")];
/// Events auth refused for good (permission denied, invalid argument).
const REFUSED: ReasonLabel = [("reason", "refused")];
/// Lines that could not be read back (torn by a crash, or damaged).
const CORRUPT: ReasonLabel = [("reason", "corrupt")];
/// Events that were not JSON objects or larger than the cap.
const INVALID: ReasonLabel = [("reason", "invalid")];
/// Events that could not be written to disk.
const DISK_ERROR: ReasonLabel = [("reason", "disk_error")];

/// One segment file: its number, size and how many lines it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    seq: u64,
    bytes: u64,
    events: u64,
}

/// What the writer and the delivery task share, under one lock.
struct State {
    /// Oldest first, never empty: the last one is written to.
    segments: VecDeque<Segment>,
    writer: File,
    /// The next line to deliver.
    cursor: Cursor,
    /// Lines of the cursor's segment before the cursor.
    delivered_in_cursor: u64,
    total_bytes: u64,
    queued: u64,
    /// Written since the last fsync.
    dirty: bool,
}

impl State {
    fn active(&self) -> Segment {
        // The list is never empty (see `segments`); a default is only a guard.
        self.segments.back().copied().unwrap_or(Segment { seq: 0, bytes: 0, events: 0 })
    }

    /// Events of `seg` not delivered yet.
    fn undelivered_in(&self, seg: &Segment) -> u64 {
        match seg.seq.cmp(&self.cursor.seq) {
            std::cmp::Ordering::Less => 0,
            std::cmp::Ordering::Equal => seg.events.saturating_sub(self.delivered_in_cursor),
            std::cmp::Ordering::Greater => seg.events,
        }
    }
}

struct Shared {
    dir: PathBuf,
    opts: SpoolOptions,
    state: Mutex<State>,
    /// Wakes the delivery task when an event was written.
    wake: Notify,
    dropped: Family<ReasonLabel, Counter>,
    queued: Gauge,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves consistent counters at worst off
        // by one event; refusing every later event would lose far more.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_queued(&self, st: &State) {
        self.queued.set(i64::try_from(st.queued).unwrap_or(i64::MAX));
    }

    /// Appends one whole line (ending in `\n`) to the active segment.
    fn append_line(&self, line: &[u8]) -> Result<(), SpoolError> {
        let len = line.len() as u64;
        if len > self.opts.max_bytes {
            return Err(SpoolError::TooLarge { size: len, cap: self.opts.max_bytes });
        }
        let mut st = self.lock();
        let active = st.active();
        if active.bytes > 0 && active.bytes + len > self.opts.segment_bytes {
            self.roll(&mut st)?;
        }
        let before = st.active().bytes;
        if let Err(e) = st.writer.write_all(line) {
            // Cut off whatever part went out, so the next line starts a line of its own.
            let _ = st.writer.set_len(before);
            let path = disk::segment_path(&self.dir, st.active().seq);
            return Err(SpoolError::io("writing", &path, e));
        }
        if let Some(seg) = st.segments.back_mut() {
            seg.bytes += len;
            seg.events += 1;
        }
        st.total_bytes += len;
        st.queued += 1;
        st.dirty = true;
        self.enforce_cap(&mut st);
        self.set_queued(&st);
        Ok(())
    }

    /// Closes the active segment (forced to disk) and starts the next one.
    fn roll(&self, st: &mut State) -> Result<(), SpoolError> {
        let old = st.active();
        let old_path = disk::segment_path(&self.dir, old.seq);
        st.writer.sync_data().map_err(|e| SpoolError::io("syncing", &old_path, e))?;
        let seq = old.seq + 1;
        st.writer = disk::create_segment(&self.dir, seq)?;
        st.segments.push_back(Segment { seq, bytes: 0, events: 0 });
        st.dirty = false;
        disk::sync_dir(&self.dir);
        Ok(())
    }

    /// Drops the oldest segments while the spool is over its cap, counting and logging the
    /// undelivered events they held.
    fn enforce_cap(&self, st: &mut State) {
        let mut dropped = 0;
        while st.total_bytes > self.opts.max_bytes && st.segments.len() > 1 {
            let Some(seg) = st.segments.pop_front() else { break };
            dropped += st.undelivered_in(&seg);
            self.remove_segment(st, seg);
        }
        if dropped > 0 {
            tracing::error!(
                dropped,
                cap_bytes = self.opts.max_bytes,
                "audit spool full: dropped the {dropped} oldest undelivered audit events (auth has been unreachable too long)"
            );
            self.dropped.get_or_create(&OVER_CAP).inc_by(dropped);
        }
    }

    /// Deletes `seg` (already taken off the list) and moves the cursor past it.
    fn remove_segment(&self, st: &mut State, seg: Segment) {
        let path = disk::segment_path(&self.dir, seg.seq);
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!("audit spool: cannot remove {}: {e}", path.display());
        }
        st.total_bytes = st.total_bytes.saturating_sub(seg.bytes);
        st.queued = st.queued.saturating_sub(st.undelivered_in(&seg));
        if st.cursor.seq <= seg.seq {
            let next = st.segments.front().map_or(seg.seq + 1, |s| s.seq);
            st.cursor = Cursor { seq: next, offset: 0 };
            st.delivered_in_cursor = 0;
            self.save_cursor(st);
        }
    }

    fn save_cursor(&self, st: &State) {
        if let Err(e) = disk::write_cursor(&self.dir, st.cursor) {
            // Only costs a resend after a restart (auth deduplicates by id).
            tracing::warn!("audit spool: cannot record the delivery position: {e}");
        }
    }

    /// Forces what was written to disk, off the async threads.
    async fn sync_if_dirty(&self) {
        let file = {
            let mut st = self.lock();
            if !st.dirty {
                return;
            }
            st.dirty = false;
            st.writer.try_clone()
        };
        let done = match file {
            Ok(f) => tokio::task::spawn_blocking(move || f.sync_data()).await.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            tracing::warn!("audit spool: cannot sync {}: {e}", self.dir.display());
            self.lock().dirty = true;
        }
    }
}

/// The spool. Clones share it; when the last clone is dropped the background tasks stop
/// and what was written is forced to disk, to be delivered after the next start.
#[derive(Clone)]
pub struct AuditSpool {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    /// Holds the spool's lock file until the last clone is dropped.
    _lock: File,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        let st = self.shared.lock();
        if st.dirty
            && let Err(e) = st.writer.sync_data()
        {
            tracing::warn!("audit spool: cannot sync {} on close: {e}", self.shared.dir.display());
        }
    }
}

impl std::fmt::Debug for AuditSpool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSpool").field("dir", &self.handle.shared.dir).finish_non_exhaustive()
    }
}

impl AuditSpool {
    /// Opens (creating it, 0700) the spool in `dir` with default limits, and starts
    /// delivering what it holds to `sender`. Must run inside a tokio runtime.
    pub fn open(dir: &Path, sender: impl AuditSender) -> Result<AuditSpool, SpoolError> {
        AuditSpool::open_with(dir, sender, SpoolOptions::default())
    }

    /// [`AuditSpool::open`] with other limits.
    pub fn open_with(dir: &Path, sender: impl AuditSender, mut opts: SpoolOptions) -> Result<AuditSpool, SpoolError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SpoolError::NoRuntime)?;
        opts.segment_bytes = opts.segment_bytes.min(opts.max_bytes / 4).max(1);
        let (state, lock) = disk::load(dir)?;
        let queued = state.queued;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            opts,
            state: Mutex::new(state),
            wake: Notify::new(),
            dropped: Family::default(),
            queued: Gauge::default(),
        });
        {
            let mut st = shared.lock();
            shared.enforce_cap(&mut st);
            shared.set_queued(&st);
        }
        if queued > 0 {
            tracing::info!(queued, "audit spool {} holds {queued} undelivered audit events; delivering them", dir.display());
        }
        let (stop, stopped) = watch::channel(false);
        runtime.spawn(delivery::run(shared.clone(), Arc::new(sender), stopped.clone()));
        runtime.spawn(sync_loop(shared.clone(), stopped));
        Ok(AuditSpool { handle: Arc::new(Handle { shared, stop, _lock: lock }) })
    }

    /// Stamps `event` with an `id` (kept when it has one) and a `time` (RFC 3339, kept
    /// when present), writes it to disk and wakes delivery. Returns the id.
    pub fn append(&self, event: Value) -> Result<String, SpoolError> {
        let mut obj = match event {
            Value::Object(m) => m,
            other => return Err(SpoolError::NotAnObject(json_kind(&other))),
        };
        let id = match obj.get("id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                obj.insert("id".into(), Value::String(id.clone()));
                id
            }
        };
        if !obj.contains_key("time") {
            obj.insert("time".into(), Value::String(now_rfc3339()));
        }
        // Compact JSON has no raw newline (they are escaped inside strings): one line.
        let mut line = Value::Object(obj).to_string();
        line.push('\n');
        let shared = &self.handle.shared;
        shared.append_line(line.as_bytes())?;
        shared.wake.notify_one();
        Ok(id)
    }

    /// [`AuditSpool::append`] for callers that cannot do anything about a failure: it is
    /// logged as an error (with the event type) and counted as dropped.
    pub fn emit(&self, event: Value) {
        let kind = event.get("event").and_then(Value::as_str).unwrap_or("?").to_string();
        if let Err(e) = self.append(event) {
            tracing::error!(event = %kind, "audit event lost: {e}");
            let reason = if matches!(e, SpoolError::Io { .. }) { DISK_ERROR } else { INVALID };
            self.handle.shared.dropped.get_or_create(&reason).inc();
        }
    }

    /// Events on disk not yet acknowledged by auth.
    pub fn queued(&self) -> u64 {
        self.handle.shared.lock().queued
    }

    /// Events dropped so far (over the cap, refused by auth, unreadable), all reasons.
    pub fn dropped(&self) -> u64 {
        let d = &self.handle.shared.dropped;
        [OVER_CAP, REFUSED, CORRUPT, INVALID, DISK_ERROR].iter().map(|r| d.get_or_create(r).get()).sum()
    }

    /// Waits until every event written so far was delivered or dropped, for at most
    /// `timeout`; true when the spool is empty. For orderly shutdowns and tests.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.queued() == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Adds `portcullis_audit_spool_dropped_total` (by reason) and
    /// `portcullis_audit_spool_queued_events` to `metrics`.
    pub fn register_metrics(&self, metrics: &Metrics) {
        let shared = &self.handle.shared;
        metrics.register(
            "portcullis_audit_spool_dropped",
            "Audit events the spool dropped, by reason (over_cap: oldest dropped at the disk cap; \
             refused: auth refused them for good; corrupt: unreadable on disk; invalid: not a JSON object or \
             too large; disk_error: could not be written)",
            shared.dropped.clone(),
        );
        metrics.register(
            "portcullis_audit_spool_queued_events",
            "Audit events kept on disk until auth acknowledges them",
            shared.queued.clone(),
        );
    }
}

/// Forces written events to disk every `sync_interval` while any were written.
async fn sync_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(shared.opts.sync_interval) => shared.sync_if_dirty().await,
            _ = stop.changed() => return,
        }
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    // Formatting a current UTC time as RFC 3339 cannot fail (the year is in range).
    now.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| now.unix_timestamp().to_string())
}
