//! The agent's metrics and readiness: live tunnels per root cluster (counted while a tunnel
//! is welcomed), dials by outcome, and the poll of the leaf auth service
//! (`ListTrustedClusters`), which is the agent's heartbeat: it drives readiness and
//! `portcullis_agent_heartbeat_age_seconds` (time since the last successful poll).

use portcullis_diag::{Counter, Family, Gauge, Heartbeat, Metrics, Readiness, Unit};

use crate::POLL_INTERVAL;

/// What `/readyz` says until the first successful `ListTrustedClusters`.
pub const WAITING_FOR_AUTH: &str = "waiting for the first trusted cluster listing from the auth service";

type ClusterLabel = [(&'static str, String); 1];
type OutcomeLabel = [(&'static str, &'static str); 1];

/// The agent's metric families and poll tracker.
#[derive(Debug)]
pub struct AgentMetrics {
    tunnels: Family<ClusterLabel, Gauge>,
    dials: Family<OutcomeLabel, Counter>,
    /// Polls of the leaf auth: ready after the first success, not ready after 3 failed intervals.
    pub heartbeat: Heartbeat,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics::new(Readiness::new(WAITING_FOR_AUTH))
    }
}

/// Counts one live tunnel while alive.
#[derive(Debug)]
pub struct LiveTunnel(Gauge);

impl Drop for LiveTunnel {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl AgentMetrics {
    /// Metrics whose polls flip `ready`.
    pub fn new(ready: Readiness) -> Self {
        AgentMetrics {
            tunnels: Family::default(),
            dials: Family::default(),
            heartbeat: Heartbeat::tolerant(ready, "the auth service", POLL_INTERVAL * 3),
        }
    }

    /// Adds the families to `metrics`.
    pub fn register(&self, metrics: &Metrics) {
        metrics.register("portcullis_agent_tunnels", "Live reverse tunnels per root cluster", self.tunnels.clone());
        metrics.register(
            "portcullis_agent_dials",
            "Dials asked for by root proxies, by outcome (ok: connected, error: refused or failed)",
            self.dials.clone(),
        );
        let heartbeat = self.heartbeat.clone();
        metrics.register_gauge_fn(
            "portcullis_agent_heartbeat_age",
            "Time since the last successful trusted cluster listing from the leaf auth service (since start when none yet)",
            Some(Unit::Seconds),
            move || heartbeat.age().as_secs_f64(),
        );
    }

    /// A tunnel to root cluster `cluster` was welcomed: live until the guard is dropped.
    pub fn tunnel_up(&self, cluster: &str) -> LiveTunnel {
        let gauge = self.tunnels.get_or_create_owned(&[("cluster", cluster.to_string())]);
        gauge.inc();
        LiveTunnel(gauge)
    }

    pub fn dial(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.dials.get_or_create(&[("outcome", outcome)]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnels_and_dials_are_counted() {
        let m = AgentMetrics::default();
        let metrics = Metrics::new();
        m.register(&metrics);
        let a = m.tunnel_up("root-a");
        let b = m.tunnel_up("root-a");
        m.dial(true);
        m.dial(false);
        let text = metrics.encode().unwrap();
        assert!(text.contains("portcullis_agent_tunnels{cluster=\"root-a\"} 2\n"), "{text}");
        assert!(text.contains("portcullis_agent_dials_total{outcome=\"ok\"} 1\n"), "{text}");
        drop((a, b));
        assert!(metrics.encode().unwrap().contains("portcullis_agent_tunnels{cluster=\"root-a\"} 0\n"));
    }
}
