//! The audit log: JSON lines under `<data_dir>/log/events.log`.

use std::io::{BufRead, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value, json};

use crate::error::AuthError;

/// Appends events, one JSON object a line, flushed as written so nothing is lost on a crash.
pub struct AuditLog {
    path: PathBuf,
    cluster: String,
    file: Mutex<std::fs::File>,
}

impl AuditLog {
    /// Opens (or creates) the log, private to the service's user: it names users, hosts and
    /// addresses. A log an older version left world-readable is made 0600.
    pub fn open(data_dir: &Path, cluster: &str) -> Result<Self, AuthError> {
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
        Ok(AuditLog { path, cluster: cluster.to_string(), file: Mutex::new(file) })
    }

    /// Records `event` (`user.login`, `session.start`, ...) with its fields.
    pub fn emit(&self, event: &str, fields: Value) {
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
        obj.insert("time".into(), json!(now_rfc3339()));
        self.write(&Value::Object(obj));
    }

    fn write(&self, v: &Value) {
        let line = format!("{v}\n");
        match self.file.lock() {
            Ok(mut f) => {
                if let Err(e) = f.write_all(line.as_bytes()).and_then(|_| f.flush()) {
                    tracing::error!(error = %e, "cannot write the audit log");
                }
            }
            Err(_) => tracing::error!("audit log lock poisoned"),
        }
    }

    /// The newest `limit` events, oldest first, optionally of one type.
    pub fn search(&self, event_type: &str, limit: usize) -> Result<Vec<Value>, AuthError> {
        let f = std::fs::File::open(&self.path)
            .map_err(|e| AuthError::io(format!("reading {}", self.path.display()), e))?;
        let mut out: Vec<Value> = std::io::BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .filter(|v| event_type.is_empty() || v.get("event").and_then(Value::as_str) == Some(event_type))
            .collect();
        let limit = if limit == 0 { 1000 } else { limit };
        if out.len() > limit {
            out.drain(..out.len() - limit);
        }
        Ok(out)
    }
}

/// Current time, RFC 3339.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_is_private_even_when_an_older_one_was_not() {
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let log = AuditLog::open(dir.path(), "c").unwrap();
        log.emit("user.login", json!({"user": "alice"}));
        let path = dir.path().join("log/events.log");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("log")), 0o700);
        drop(log);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let log = AuditLog::open(dir.path(), "c").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(log.search("user.login", 0).unwrap().len(), 1);
    }
}
