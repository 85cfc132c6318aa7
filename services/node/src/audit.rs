//! The node's audit events: kept in an on-disk spool and delivered to auth in the background, so none is lost to an auth outage or a restart.

use std::path::Path;
use std::sync::Arc;

use portcullis_rpc::audit_spool::{AuditSender, AuditSpool, SendFuture, SpoolError};
use serde_json::Value;

use crate::backend::AuthBackend;

/// Delivers spooled events through the backend's `EmitAuditEvent`.
struct BackendSender(Arc<dyn AuthBackend>);

impl AuditSender for BackendSender {
    fn send(&self, event_json: String) -> SendFuture {
        self.0.emit_audit_event(event_json)
    }
}

/// Emits events (JSON objects with an `event` field) without holding up the session that
/// caused them: each is written to the spool before `emit` returns, then sent to auth.
#[derive(Clone, Debug)]
pub struct Auditor {
    spool: AuditSpool,
}

impl Auditor {
    /// Opens the spool in `dir` (usually `<data_dir>/audit-spool`), delivering through
    /// `backend`; events left there by an earlier run are delivered first.
    pub fn open(dir: &Path, backend: Arc<dyn AuthBackend>) -> Result<Self, SpoolError> {
        Ok(Auditor { spool: AuditSpool::open(dir, BackendSender(backend))? })
    }

    /// An auditor over a spool opened elsewhere (tests pick its limits).
    pub fn with_spool(spool: AuditSpool) -> Self {
        Auditor { spool }
    }

    /// Stamps `event` with an id and time and keeps it until auth acknowledged it. A
    /// failure to write it (disk full) is logged as an error and counted as dropped.
    pub fn emit(&self, event: Value) {
        self.spool.emit(event);
    }

    /// The spool, for its metrics and for waiting on delivery.
    pub fn spool(&self) -> &AuditSpool {
        &self.spool
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use futures::future::BoxFuture;
    use portcullis_proto::auth::{AuthorizeSshRequest, AuthorizeSshResponse};
    use serde_json::json;
    use tonic::Status;

    use super::*;

    /// An auth that stores events, or answers `unavailable` while `down`.
    #[derive(Default)]
    struct Auth {
        events: Mutex<Vec<Value>>,
        down: AtomicBool,
    }

    impl AuthBackend for Arc<Auth> {
        fn authorize_ssh(&self, _: AuthorizeSshRequest) -> BoxFuture<'static, Result<AuthorizeSshResponse, Status>> {
            Box::pin(async { Err(Status::unavailable("not in this test")) })
        }

        fn emit_audit_event(&self, event_json: String) -> BoxFuture<'static, Result<(), Status>> {
            let auth = self.clone();
            Box::pin(async move {
                if auth.down.load(Ordering::SeqCst) {
                    return Err(Status::unavailable("connection refused"));
                }
                let v = serde_json::from_str(&event_json).map_err(|e| Status::invalid_argument(e.to_string()))?;
                auth.events.lock().unwrap().push(v);
                Ok(())
            })
        }
    }

    fn kinds(auth: &Auth) -> Vec<String> {
        auth.events.lock().unwrap().iter().map(|e| e["event"].as_str().unwrap_or("").to_string()).collect()
    }

    #[tokio::test]
    async fn session_events_during_an_auth_outage_reach_auth_after_it_and_after_a_node_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(portcullis_rpc::audit_spool::SPOOL_DIR);
        let auth = Arc::new(Auth::default());
        auth.down.store(true, Ordering::SeqCst);
        let audit = Auditor::open(&dir, Arc::new(auth.clone())).unwrap();
        audit.emit(json!({"event": "session.start", "user": "alice"}));
        audit.emit(json!({"event": "exec", "command": "id"}));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(kinds(&auth).is_empty());
        assert_eq!(audit.spool().queued(), 2);
        // The node restarts while auth is still down; its events wait on disk.
        drop(audit);
        let audit = Auditor::open(&dir, Arc::new(auth.clone())).unwrap();
        audit.emit(json!({"event": "session.end", "user": "alice"}));
        auth.down.store(false, Ordering::SeqCst);
        assert!(audit.spool().drain(Duration::from_secs(20)).await, "still queued: {}", audit.spool().queued());
        assert_eq!(kinds(&auth), ["session.start", "exec", "session.end"]);
        let events = auth.events.lock().unwrap().clone();
        assert!(events.iter().all(|e| e["id"].as_str().is_some_and(|id| !id.is_empty()) && e["time"].is_string()));
    }
}
