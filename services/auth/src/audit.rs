//! The audit log: every event stored in the backend, so the events of every auth replica
//! sharing it form one log that any replica searches, and a copy as JSON lines under
//! `<data_dir>/log/events.log` of the replica that received it.

use std::io::{BufRead, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use portcullis_storage::Backend;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::AuthError;

/// Events, keyed `audit/<unix nanos, 20 digits>-<event id>`: key order is time order.
const PREFIX: &str = "audit/";
/// Just past every `audit/` key (`'0'` follows `'/'`).
const PREFIX_END: &str = "audit0";
/// `audit_ids/<id>` holds the key an event with a sender-chosen id was stored under, so a
/// resend (a node delivering its spool again) is stored once.
const ID_PREFIX: &str = "audit_ids/";
/// Longest sender-chosen event id.
const MAX_ID_LEN: usize = 128;
/// A sender's `time` further ahead than this is not believed (it would sort above every
/// real event): the event is filed at its arrival, the claim kept as `sender_time`.
const MAX_CLOCK_AHEAD: time::Duration = time::Duration::minutes(10);
/// Events read per backend range call while searching.
const PAGE: usize = 500;
/// What a search without a limit returns at most.
const DEFAULT_LIMIT: usize = 1000;

/// Stores events in the backend and appends them to the local file, flushed as written.
pub struct AuditLog {
    path: PathBuf,
    cluster: String,
    file: Mutex<std::fs::File>,
    backend: Arc<dyn Backend>,
}

impl AuditLog {
    /// Opens (or creates) the local log, private to the service's user: it names users,
    /// hosts and addresses. A log an older version left world-readable is made 0600. Events
    /// an older version kept only in that file are copied into the backend once.
    pub fn open(data_dir: &Path, cluster: &str, backend: Arc<dyn Backend>) -> Result<Self, AuthError> {
        let dir = data_dir.join("log");
        portcullis_pki::datadir::create_private_dir(&dir)
            .map_err(|e| AuthError::io(format!("creating {}", dir.display()), e))?;
        let path = dir.join("events.log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(portcullis_pki::datadir::FILE_MODE)
            .open(&path)
            .map_err(|e| AuthError::io(format!("opening {}", path.display()), e))?;
        file.set_permissions(std::fs::Permissions::from_mode(portcullis_pki::datadir::FILE_MODE))
            .map_err(|e| AuthError::io(format!("restricting {}", path.display()), e))?;
        let log = AuditLog { path, cluster: cluster.to_string(), file: Mutex::new(file), backend };
        log.import_local_file()?;
        Ok(log)
    }

    /// Records `event` (`user.login`, `session.start`, ...) with its fields; a failure to
    /// store it is logged. Calls that must report it use [`AuditLog::record`].
    pub fn emit(&self, event: &str, fields: Value) {
        if let Err(e) = self.record(event, fields) {
            tracing::error!(error = %e, event, "cannot store the audit event");
        }
    }

    /// Stores `event` and returns once it is in the backend. An `id` field (a sender's own
    /// id, stable across resends) makes it idempotent: the same id is stored once whatever
    /// replica receives it. A `time` field (when it happened) is kept; without one the event
    /// is stamped now.
    pub fn record(&self, event: &str, fields: Value) -> Result<(), AuthError> {
        let mut obj = match fields {
            Value::Object(m) => m,
            other => {
                let mut m = Map::new();
                m.insert("data".into(), other);
                m
            }
        };
        obj.insert("event".into(), json!(event));
        obj.entry("cluster").or_insert_with(|| json!(self.cluster));
        let now = OffsetDateTime::now_utc();
        let time = event_time(&mut obj, now);
        let sender_id = match obj.get("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) => Some(check_id(id)?.to_string()),
            Some(other) => return Err(AuthError::bad(format!("audit event id must be a string, not {other}"))),
        };
        let id = sender_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        obj.insert("id".into(), json!(id));
        let key = event_key(time, &id);
        let value = Value::Object(obj);
        let bytes = serde_json::to_vec(&value).map_err(|e| AuthError::Internal(format!("cannot encode an audit event: {e}")))?;
        let stored = match sender_id {
            Some(id) => {
                let index = format!("{ID_PREFIX}{id}");
                if self.backend.create(&index, key.as_bytes())? {
                    self.backend.create(&key, &bytes)?
                } else {
                    // Seen before: under the key of its first arrival (a crash between the
                    // two writes may have left only the index), else nothing to do.
                    let first = self.backend.get(&index)?.map(|k| String::from_utf8_lossy(&k).into_owned());
                    let first = first.filter(|k| k.starts_with(PREFIX)).unwrap_or(key);
                    self.backend.create(&first, &bytes)?
                }
            }
            None => self.backend.create(&key, &bytes)?,
        };
        if stored {
            self.append_local(&value);
        }
        Ok(())
    }

    fn append_local(&self, v: &Value) {
        let line = format!("{v}\n");
        match self.file.lock() {
            Ok(mut f) => {
                if let Err(e) = f.write_all(line.as_bytes()).and_then(|_| f.flush()) {
                    tracing::error!(error = %e, "cannot write the local audit log");
                }
            }
            Err(_) => tracing::error!("audit log lock poisoned"),
        }
    }

    /// The newest `limit` events (0: 1000), oldest first, optionally of one type, from the
    /// backend: every replica sharing it answers the same.
    pub fn search(&self, event_type: &str, limit: usize) -> Result<Vec<Value>, AuthError> {
        let limit = if limit == 0 { DEFAULT_LIMIT } else { limit };
        let mut out = Vec::new();
        let mut end = PREFIX_END.to_string();
        'pages: loop {
            let page = self.backend.range(PREFIX, &end, PAGE, true)?;
            for item in &page {
                let Ok(v) = serde_json::from_slice::<Value>(&item.value) else {
                    tracing::warn!(key = %item.key, "skipping an unreadable audit record");
                    continue;
                };
                if event_type.is_empty() || v.get("event").and_then(Value::as_str) == Some(event_type) {
                    out.push(v);
                    if out.len() >= limit {
                        break 'pages;
                    }
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE => end = last.key.clone(),
                _ => break,
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Copies the local file into an empty backend (a data directory from before the audit
    /// log moved there), so searches still find older events. Ids derived from each line
    /// make a second copy (another replica, a retried start) store nothing twice.
    fn import_local_file(&self) -> Result<(), AuthError> {
        if !self.backend.range(PREFIX, PREFIX_END, 1, false)?.is_empty() {
            return Ok(());
        }
        let Ok(f) = std::fs::File::open(&self.path) else { return Ok(()) };
        let mut imported = 0usize;
        for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
            let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(&line) else { continue };
            let digest = ring::digest::digest(&ring::digest::SHA256, line.as_bytes());
            let id = format!("import-{}", &hex::encode(digest.as_ref())[..32]);
            let time = obj
                .get("time")
                .and_then(Value::as_str)
                .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
            obj.entry("id").or_insert_with(|| json!(id));
            let key = event_key(time, &id);
            if self.backend.create(&format!("{ID_PREFIX}{id}"), key.as_bytes())? {
                let bytes = serde_json::to_vec(&Value::Object(obj)).unwrap_or_default();
                self.backend.create(&key, &bytes)?;
                imported += 1;
            }
        }
        if imported > 0 {
            tracing::info!(count = imported, file = %self.path.display(), "copied audit events from the local log into the backend");
        }
        Ok(())
    }
}

/// When the event happened: the sender's `time` when it is RFC 3339 and not in the future
/// (beyond clock skew), else now; `time` is rewritten in one format either way.
fn event_time(obj: &mut Map<String, Value>, now: OffsetDateTime) -> OffsetDateTime {
    let claimed = obj.get("time").and_then(Value::as_str).and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
    let time = match claimed {
        Some(t) if t <= now + MAX_CLOCK_AHEAD => t,
        Some(_) | None => {
            if let Some(t) = obj.remove("time").filter(|_| claimed.is_some()) {
                obj.insert("sender_time".into(), t);
            }
            now
        }
    };
    obj.insert("time".into(), json!(rfc3339(time)));
    time
}

/// `audit/<nanos>-<id>`: 20 digits hold any time up to the year 2286 (nanoseconds in a
/// u64 would reach 2554), so keys sort as times do.
fn event_key(time: OffsetDateTime, id: &str) -> String {
    let nanos = time.unix_timestamp_nanos().clamp(0, 99_999_999_999_999_999_999);
    format!("{PREFIX}{nanos:020}-{id}")
}

/// A sender's event id becomes part of a storage key: 1 to 128 letters, digits, `-`, `_`,
/// `.` or `:`.
fn check_id(id: &str) -> Result<&str, AuthError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(id)
    } else {
        Err(AuthError::bad(format!(
            "audit event id must be 1 to {MAX_ID_LEN} letters, digits, '-', '_', '.' or ':' (got {} characters)",
            id.chars().count()
        )))
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Current time, RFC 3339.
pub fn now_rfc3339() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_storage::MemoryBackend;

    fn open(dir: &Path, backend: &Arc<MemoryBackend>) -> AuditLog {
        AuditLog::open(dir, "c", backend.clone()).unwrap()
    }

    #[test]
    fn log_is_private_even_when_an_older_one_was_not() {
        let dir = tempfile::tempdir().unwrap();
        let b = Arc::new(MemoryBackend::new());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let log = open(dir.path(), &b);
        log.emit("user.login", json!({"user": "alice"}));
        let path = dir.path().join("log/events.log");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("log")), 0o700);
        drop(log);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let log = open(dir.path(), &b);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(log.search("user.login", 0).unwrap().len(), 1);
    }

    #[test]
    fn two_replicas_write_one_log_and_a_resend_is_stored_once() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let b = Arc::new(MemoryBackend::new());
        let (a, z) = (open(d1.path(), &b), open(d2.path(), &b));
        let happened = "2026-11-30T10:00:00Z";
        a.record("session.start", json!({"id": "node-1:42", "time": happened, "user": "alice"})).unwrap();
        z.emit("user.login", json!({"user": "bob"}));
        // The node's spool delivers the same event again, through the other replica.
        z.record("session.start", json!({"id": "node-1:42", "time": happened, "user": "alice"})).unwrap();
        a.record("session.start", json!({"id": "node-1:42", "time": "2026-11-30T10:00:05Z", "user": "alice"})).unwrap();
        for log in [&a, &z] {
            let all = log.search("", 0).unwrap();
            assert_eq!(all.len(), 2, "{all:?}");
            assert_eq!(all[0]["event"], "session.start", "oldest first: it happened before the login");
            assert_eq!(all[0]["time"], happened, "the sender's time is kept");
            assert_eq!(all[0]["id"], "node-1:42");
            assert_eq!(all[1]["event"], "user.login");
            assert_eq!(log.search("user.login", 0).unwrap().len(), 1);
        }
        let local = std::fs::read_to_string(d2.path().join("log/events.log")).unwrap();
        assert_eq!(local.lines().count(), 1, "the resend is not appended again: {local}");
    }

    #[test]
    fn search_returns_the_newest_across_pages_and_bad_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let b = Arc::new(MemoryBackend::new());
        let log = open(dir.path(), &b);
        let base = OffsetDateTime::now_utc() - time::Duration::hours(1);
        for i in 0..(PAGE + 20) {
            let t = rfc3339(base + time::Duration::milliseconds(i as i64));
            let kind = if i % 2 == 0 { "exec" } else { "auth" };
            log.record(kind, json!({"id": format!("e{i}"), "time": t, "n": i})).unwrap();
        }
        let last = log.search("exec", 3).unwrap();
        let ns: Vec<u64> = last.iter().map(|v| v["n"].as_u64().unwrap()).collect();
        assert_eq!(ns, [PAGE as u64 + 14, PAGE as u64 + 16, PAGE as u64 + 18]);
        assert_eq!(log.search("exec", 0).unwrap().len(), (PAGE + 20) / 2, "filtering reads past the first page");
        for bad in [json!({"id": ""}), json!({"id": "a/b"}), json!({"id": 7}), json!({"id": "x".repeat(129)})] {
            let e = log.record("exec", bad.clone()).unwrap_err();
            assert!(matches!(e, AuthError::BadRequest(_)) && e.to_string().contains("audit event id"), "{bad}: {e}");
        }
        // A time from the future is not believed: filed now, the claim kept aside.
        log.record("exec", json!({"time": "2999-01-01T00:00:00Z", "n": "future"})).unwrap();
        let newest = log.search("exec", 1).unwrap();
        assert_eq!(newest[0]["n"], "future");
        assert_eq!(newest[0]["sender_time"], "2999-01-01T00:00:00Z");
        assert_ne!(newest[0]["time"], "2999-01-01T00:00:00Z");
    }

    #[test]
    fn events_only_in_an_old_local_file_are_imported_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("log")).unwrap();
        let old = "{\"event\":\"user.login\",\"user\":\"a\",\"time\":\"2025-01-01T00:00:00Z\"}\n\
                   {\"event\":\"user.login\",\"user\":\"b\",\"time\":\"2025-01-02T00:00:00Z\"}\n";
        std::fs::write(dir.path().join("log/events.log"), old).unwrap();
        let b = Arc::new(MemoryBackend::new());
        let log = open(dir.path(), &b);
        let users: Vec<String> = log.search("", 0).unwrap().iter().map(|v| v["user"].as_str().unwrap().to_string()).collect();
        assert_eq!(users, ["a", "b"]);
        drop(log);
        let other = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(other.path().join("log")).unwrap();
        std::fs::write(other.path().join("log/events.log"), old).unwrap();
        assert_eq!(open(other.path(), &b).search("", 0).unwrap().len(), 2, "nothing copied twice");
    }
}
