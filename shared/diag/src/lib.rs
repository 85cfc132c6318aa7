//! The diagnostic listener every Portcullis service can run (`diag_service.listen_addr` or
//! `--diag-addr`): Prometheus `GET /metrics`, and `GET /healthz` / `GET /readyz` for
//! Kubernetes probes.
//!
//! A service builds a [`Diag`], registers its own metric families in [`Diag::metrics`],
//! flips [`Diag::ready`] as its dependencies come and go (usually through a [`Heartbeat`]),
//! and serves it with [`serve`] or [`spawn`].
#![forbid(unsafe_code)]

mod health;
mod metrics;
mod server;
#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use health::{Heartbeat, Readiness};
pub use metrics::{CONTENT_TYPE, Metrics};
pub use server::{DiagServer, bind, serve, spawn};

/// Re-exported so services name metric types without depending on the crate themselves.
pub use prometheus_client;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
pub use prometheus_client::registry::Unit;

/// What the diagnostic listener serves: the metrics registry and the readiness flag.
#[derive(Debug, Clone)]
pub struct Diag {
    pub metrics: Arc<Metrics>,
    pub ready: Readiness,
}

impl Diag {
    /// An empty registry and a service that is not ready yet, for `reason` (shown by
    /// `/readyz`, e.g. "waiting for the auth service").
    pub fn new(reason: impl Into<String>) -> Diag {
        let metrics = Metrics::new();
        // Every listener of the process counts into these (see portcullis_net::Gate).
        metrics.register(
            "portcullis_listener_refused_connections",
            "Connections refused by a listener's connection limits, by listener and limit",
            portcullis_net::refused_connections_family().clone(),
        );
        metrics.register(
            "portcullis_listener_open_connections",
            "Connections a listener holds now",
            portcullis_net::open_connections_family().clone(),
        );
        Diag { metrics: Arc::new(metrics), ready: Readiness::new(reason) }
    }
}

/// Buckets for latencies of network round trips, in seconds (1 ms .. ~16 s).
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15)
}
