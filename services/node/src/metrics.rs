//! The node's metrics and readiness: logins and sessions (recorded by the SSH handler),
//! active sessions, and the heartbeat to auth, which drives readiness.

use portcullis_diag::{Counter, Family, Gauge, Heartbeat, Metrics, Readiness, Unit};

use crate::heartbeat::INTERVAL;

/// What `/readyz` says until the first heartbeat to auth succeeds.
pub const WAITING_FOR_AUTH: &str = "waiting for the first heartbeat to the auth service";

type OutcomeLabel = [(&'static str, &'static str); 1];

/// The node's metric families and heartbeat tracker.
#[derive(Debug)]
pub struct NodeMetrics {
    active: Gauge,
    sessions: Family<OutcomeLabel, Counter>,
    logins: Family<OutcomeLabel, Counter>,
    /// Heartbeats to auth: ready after the first success, not ready after 3 silent intervals.
    pub heartbeat: Heartbeat,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        NodeMetrics::new(Readiness::new(WAITING_FOR_AUTH))
    }
}

/// Counts one active session while alive.
#[derive(Debug)]
pub struct ActiveSession(Gauge);

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl NodeMetrics {
    /// Metrics whose heartbeats flip `ready`.
    pub fn new(ready: Readiness) -> Self {
        NodeMetrics {
            active: Gauge::default(),
            sessions: Family::default(),
            logins: Family::default(),
            heartbeat: Heartbeat::tolerant(ready, "the auth service", INTERVAL * 3),
        }
    }

    /// Adds the families to `metrics`.
    pub fn register(&self, metrics: &Metrics) {
        metrics.register("portcullis_node_active_sessions", "Shells and commands running now", self.active.clone());
        metrics.register(
            "portcullis_node_sessions",
            "Shells and commands asked for, by outcome (ok: started, error: could not start)",
            self.sessions.clone(),
        );
        metrics.register(
            "portcullis_node_logins",
            "SSH certificate logins by outcome (allowed, denied)",
            self.logins.clone(),
        );
        let heartbeat = self.heartbeat.clone();
        metrics.register_gauge_fn(
            "portcullis_node_heartbeat_age",
            "Time since the last successful heartbeat to the auth service (since start when none yet)",
            Some(Unit::Seconds),
            move || heartbeat.age().as_secs_f64(),
        );
    }

    pub fn login(&self, allowed: bool) {
        let outcome = if allowed { "allowed" } else { "denied" };
        self.logins.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// A session started: counted, and active until the guard is dropped.
    pub fn session_started(&self) -> ActiveSession {
        self.sessions.get_or_create(&[("outcome", "ok")]).inc();
        self.active.inc();
        ActiveSession(self.active.clone())
    }

    /// A session could not start.
    pub fn session_failed(&self) {
        self.sessions.get_or_create(&[("outcome", "error")]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_logins_are_counted() {
        let m = NodeMetrics::default();
        let metrics = Metrics::new();
        m.register(&metrics);
        m.login(true);
        m.login(false);
        m.session_failed();
        let guard = m.session_started();
        let text = metrics.encode().unwrap();
        assert!(text.contains("portcullis_node_active_sessions 1\n"), "{text}");
        assert!(text.contains("portcullis_node_sessions_total{outcome=\"ok\"} 1\n"), "{text}");
        assert!(text.contains("portcullis_node_sessions_total{outcome=\"error\"} 1\n"), "{text}");
        assert!(text.contains("portcullis_node_logins_total{outcome=\"denied\"} 1\n"), "{text}");
        drop(guard);
        assert!(metrics.encode().unwrap().contains("portcullis_node_active_sessions 0\n"));
        assert!(!m.heartbeat.readiness().is_ready(), "not ready before a heartbeat");
    }
}
