//! The proxy's metrics and readiness. The router records sessions and dial latency, the
//! heartbeat loop records heartbeats (which drive readiness) and sets the live tunnels per
//! leaf with each tunnel report; active sessions and the heartbeat age are read on scrape.
//! Depends on no other part of the proxy: what it reads on scrape is handed to it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use portcullis_diag::{Counter, Family, Gauge, Heartbeat, Histogram, Metrics, Readiness, Unit, latency_buckets};


/// What `/readyz` says until the first heartbeat to auth succeeds.
pub const WAITING_FOR_AUTH: &str = "waiting for the first heartbeat to the auth service";

type SessionLabels = [(&'static str, &'static str); 2];
type ClusterTypeLabel = [(&'static str, &'static str); 1];
type LeafLabel = [(&'static str, String); 1];

/// The proxy's metric families and heartbeat tracker. Cheap to record into: atomics behind
/// `Arc`s (plus the families' own read lock).
#[derive(Debug)]
pub struct ProxyMetrics {
    sessions: Family<SessionLabels, Counter>,
    dial: Family<ClusterTypeLabel, Histogram, fn() -> Histogram>,
    tunnels: Family<LeafLabel, Gauge>,
    /// Leaves with a `tunnels` sample, so leaves that went away lose theirs.
    tunnel_leaves: Mutex<BTreeSet<String>>,
    /// Heartbeats to auth: ready after the first success, not ready after 3 silent intervals.
    pub heartbeat: Heartbeat,
}

impl Default for ProxyMetrics {
    /// Private metrics (tests): not ready until a heartbeat, unready after 15 s of silence.
    fn default() -> Self {
        ProxyMetrics::new(Readiness::new(WAITING_FOR_AUTH), Duration::from_secs(15))
    }
}

/// `cluster_type` label of a session for `cluster` at a proxy of `own`.
pub fn cluster_type(cluster: &str, own: &str) -> &'static str {
    if cluster.is_empty() || cluster == own { "local" } else { "leaf" }
}

impl ProxyMetrics {
    /// Metrics whose heartbeats flip `ready`; not ready once no heartbeat succeeded for
    /// `silent_after`.
    pub fn new(ready: Readiness, silent_after: Duration) -> Self {
        ProxyMetrics {
            sessions: Family::default(),
            dial: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            tunnels: Family::default(),
            tunnel_leaves: Mutex::default(),
            heartbeat: Heartbeat::tolerant(ready, "the auth service", silent_after),
        }
    }

    /// Adds the families, and the gauges read on scrape, to `metrics`: `active_sessions`
    /// counts the sessions being piped.
    pub fn register(&self, metrics: &Metrics, active_sessions: impl Fn() -> usize + Send + Sync + 'static) {
        metrics.register(
            "portcullis_proxy_sessions",
            "SSH sessions the proxy routed (or failed to) by cluster_type (local, leaf) and outcome (ok, error)",
            self.sessions.clone(),
        );
        metrics.register_with_unit(
            "portcullis_proxy_dial",
            "Time to get a stream to the node (resolution and connection, or the leaf's tunnel dial), successful dials",
            Unit::Seconds,
            self.dial.clone(),
        );
        metrics.register("portcullis_proxy_tunnels", "Live reverse tunnels per leaf cluster", self.tunnels.clone());
        metrics.register_gauge_fn(
            "portcullis_proxy_active_sessions",
            "SSH sessions being piped now",
            None,
            move || active_sessions() as f64,
        );
        let heartbeat = self.heartbeat.clone();
        metrics.register_gauge_fn(
            "portcullis_proxy_heartbeat_age",
            "Time since the last successful heartbeat to the auth service (since start when none yet)",
            Some(Unit::Seconds),
            move || heartbeat.age().as_secs_f64(),
        );
    }

    /// One session routed to a node of `cluster_type`: `Ok` with the dial time, or failed.
    pub fn session(&self, cluster_type: &'static str, dialled: Result<Duration, ()>) {
        let outcome = if dialled.is_ok() { "ok" } else { "error" };
        self.sessions.get_or_create(&[("cluster_type", cluster_type), ("outcome", outcome)]).inc();
        if let Ok(elapsed) = dialled {
            self.dial.get_or_create(&[("cluster_type", cluster_type)]).observe(elapsed.as_secs_f64());
        }
    }

    /// The live tunnels per leaf, as last counted.
    pub fn set_tunnels(&self, counts: &BTreeMap<String, u32>) {
        let mut leaves = self.tunnel_leaves.lock().unwrap_or_else(PoisonError::into_inner);
        for gone in leaves.iter().filter(|l| !counts.contains_key(*l)) {
            self.tunnels.remove(&[("leaf", gone.clone())]);
        }
        for (leaf, n) in counts {
            self.tunnels.get_or_create(&[("leaf", leaf.clone())]).set(i64::from(*n));
        }
        *leaves = counts.keys().cloned().collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_dials_and_tunnels_are_recorded() {
        let m = ProxyMetrics::default();
        let metrics = Metrics::new();
        metrics.register("s", "s", m.sessions.clone());
        metrics.register("t", "t", m.tunnels.clone());
        metrics.register_with_unit("d", "d", Unit::Seconds, m.dial.clone());
        m.session(cluster_type("", "root"), Ok(Duration::from_millis(3)));
        m.session(cluster_type("leaf-a", "root"), Err(()));
        m.set_tunnels(&[("leaf-a".to_string(), 2), ("leaf-b".to_string(), 0)].into_iter().collect());
        m.set_tunnels(&[("leaf-a".to_string(), 1)].into_iter().collect());
        let text = metrics.encode().unwrap();
        assert!(text.contains("s_total{cluster_type=\"local\",outcome=\"ok\"} 1\n"), "{text}");
        assert!(text.contains("s_total{cluster_type=\"leaf\",outcome=\"error\"} 1\n"), "{text}");
        assert!(text.contains("t{leaf=\"leaf-a\"} 1\n"), "{text}");
        assert!(!text.contains("leaf-b"), "a leaf no longer counted loses its sample: {text}");
        assert!(
            text.contains("d_seconds_count{cluster_type=\"local\"} 1\n"),
            "only successful dials are timed: {text}"
        );
        assert!(!text.contains("d_seconds_count{cluster_type=\"leaf\"}"), "{text}");
    }
}
