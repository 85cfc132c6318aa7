//! Announces the proxy to the auth service every few seconds and adopts the CAs it answers
//! with, so new trusted clusters and rotated CAs reach the proxy without a restart.

use std::sync::Arc;
use std::time::Duration;

use portcullis_proto::auth::HeartbeatRequest;

use crate::state::{ProxyState, auth_call};

/// Time between heartbeats.
pub const INTERVAL: Duration = Duration::from_secs(10);

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

/// Sends heartbeats forever (the first one at once); the caller aborts the task to stop.
pub async fn run(state: Arc<ProxyState>, ann: Announcement) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy = true;
    loop {
        tick.tick().await;
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
                if !healthy {
                    tracing::info!("heartbeat to the auth service works again");
                }
                healthy = true;
                if let Some(cas) = resp.cas {
                    state.update_cas(&cas);
                }
            }
            Err(s) => {
                // Warn once per outage; the rest is noise while auth is down.
                if healthy {
                    tracing::warn!(code = ?s.code(), "heartbeat to the auth service failed: {}", s.message());
                } else {
                    tracing::debug!(code = ?s.code(), "heartbeat failed again: {}", s.message());
                }
                healthy = false;
            }
        }
    }
}
