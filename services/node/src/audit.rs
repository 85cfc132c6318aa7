//! Sends audit events to the auth service without holding up the session that caused them.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::backend::AuthBackend;

/// How long one event may take to reach the auth service.
const EMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Emits events (JSON objects with an `event` field) through `EmitAuditEvent`.
#[derive(Clone)]
pub struct Auditor {
    backend: Arc<dyn AuthBackend>,
}

impl Auditor {
    pub fn new(backend: Arc<dyn AuthBackend>) -> Self {
        Auditor { backend }
    }

    /// Sends `event` in the background; a failure is logged, since the audit log lives on
    /// the auth service and the node has nowhere else to keep it.
    pub fn emit(&self, event: Value) {
        let kind = event.get("event").and_then(Value::as_str).unwrap_or("?").to_string();
        let call = self.backend.emit_audit_event(event.to_string());
        tokio::spawn(async move {
            match tokio::time::timeout(EMIT_TIMEOUT, call).await {
                Ok(Ok(())) => tracing::debug!(event = %kind, "audit event sent"),
                Ok(Err(status)) => {
                    tracing::warn!(event = %kind, "cannot send audit event: {}", status.message())
                }
                Err(_) => tracing::warn!(event = %kind, "cannot send audit event: the auth service did not answer"),
            }
        });
    }
}
