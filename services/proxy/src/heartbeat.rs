//! Announces the proxy to the auth service every few seconds and adopts what it answers: the
//! CAs (new trusted clusters, rotations), the TLS CAs of trusted leaves (which agents may
//! connect) and the live root proxies. Reports the tunnels it holds per leaf on every beat and
//! shortly after a tunnel comes up or goes down, so `tctl get rc` follows promptly.

use std::sync::Arc;
use std::time::Duration;

use portcullis_proto::auth::{HeartbeatRequest, ReportTunnelsRequest};

use crate::drain::Drain;
use crate::state::{ProxyState, auth_call};

/// Time between heartbeats (also the tunnel heartbeat: leaves go offline 3 intervals late).
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Tunnel changes within this window are reported together.
const DEBOUNCE: Duration = Duration::from_millis(250);
/// Extra heartbeats (asked for by unknown agents knocking) come at most this often, so
/// strangers cannot make the proxy hammer auth.
const MIN_REFRESH_GAP: Duration = Duration::from_secs(1);

/// What the proxy announces about itself.
#[derive(Debug, Clone)]
pub struct Announcement {
    pub hostname: String,
    /// The web address users and leaf clusters reach.
    pub addr: String,
    /// The address tunnel agents dial.
    pub tunnel_addr: String,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Sends heartbeats (the first one at once) until `drain` fires.
pub async fn run(state: Arc<ProxyState>, ann: Announcement, drain: Drain) {
    let draining = drain.draining();
    tokio::pin!(draining);
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy = true;
    let mut last_beat = tokio::time::Instant::now();
    loop {
        let beat = tokio::select! {
            _ = &mut draining => return,
            _ = tick.tick() => true,
            _ = state.sites.hub().refresh_wanted() => {
                // Several wake-ups in a row (agents of a brand-new leaf) cost one call.
                let wait = MIN_REFRESH_GAP.saturating_sub(last_beat.elapsed()).max(DEBOUNCE);
                tokio::time::sleep(wait).await;
                true
            }
            _ = state.sites.hub().changed() => {
                tokio::time::sleep(DEBOUNCE).await;
                false
            }
        };
        if beat {
            last_beat = tokio::time::Instant::now();
            healthy = heartbeat(&state, &ann, healthy).await;
            // Readiness follows the auth connection (see `metrics::ProxyMetrics::heartbeat`).
            if healthy {
                state.metrics.heartbeat.succeeded();
            } else {
                state.metrics.heartbeat.failed();
            }
        }
        report_tunnels(&state).await;
    }
}

/// One heartbeat; returns whether it worked.
async fn heartbeat(state: &ProxyState, ann: &Announcement, was_healthy: bool) -> bool {
    let req = HeartbeatRequest {
        kind: "proxy".into(),
        host_id: state.host_id.clone(),
        hostname: ann.hostname.clone(),
        addr: ann.addr.clone(),
        labels: ann.labels.clone().into_iter().collect(),
        version: env!("CARGO_PKG_VERSION").into(),
        tunnel_addr: ann.tunnel_addr.clone(),
    };
    let mut auth = state.auth();
    match auth_call(auth.heartbeat(req)).await {
        Ok(resp) => {
            if !was_healthy {
                tracing::info!("heartbeat to the auth service works again");
            }
            if let Some(cas) = &resp.cas {
                state.update_cas(cas);
            }
            state.sites.hub().apply_heartbeat(&resp.leaf_cas, &resp.proxies);
            true
        }
        Err(s) => {
            // Warn once per outage; the rest is noise while auth is down.
            if was_healthy {
                tracing::warn!(code = ?s.code(), "heartbeat to the auth service failed: {}", s.message());
            } else {
                tracing::debug!(code = ?s.code(), "heartbeat failed again: {}", s.message());
            }
            false
        }
    }
}

/// Tells auth how many tunnels this proxy holds from each trusted leaf (0 included, so a
/// leaf whose tunnels dropped turns offline without waiting for the old report to age).
async fn report_tunnels(state: &ProxyState) {
    let tunnels = state.sites.hub().tunnel_counts();
    state.metrics.set_tunnels(&tunnels);
    if tunnels.is_empty() {
        return;
    }
    let req = ReportTunnelsRequest { proxy_id: state.host_id.clone(), tunnels: tunnels.clone().into_iter().collect() };
    let mut auth = state.auth();
    match auth_call(auth.report_tunnels(req)).await {
        Ok(_) => tracing::trace!(?tunnels, "tunnels reported"),
        Err(s) => tracing::debug!(code = ?s.code(), "reporting tunnels failed: {}", s.message()),
    }
}
