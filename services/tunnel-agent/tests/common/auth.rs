//! The fake leaf auth service (portcullis-fake-auth) configured as a tunnel agent's tests
//! need it: answers what the agent asks, records audit events.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use portcullis_fake_auth::{Calls, FakeAuth, ServerTls};
use portcullis_proto::auth::*;
use tonic::Status;

use super::Pki;

/// What the fake knows and what it was told.
#[derive(Default)]
pub struct AuthState {
    pub targets: Mutex<Vec<TrustedClusterTarget>>,
    pub nodes: Mutex<Vec<Node>>,
    /// Every call the fake received.
    pub calls: Calls,
    /// What WatchAccess streams (JSON of a portcullis_access::AccessSnapshot): the current
    /// message at once, then each one set here.
    pub access: tokio::sync::watch::Sender<Option<AccessSnapshotMessage>>,
}

impl AuthState {
    pub fn set_targets(&self, targets: Vec<TrustedClusterTarget>) {
        *self.targets.lock().unwrap() = targets;
    }

    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        let events = self.calls.requests::<AuditEventRequest>();
        events.iter().filter_map(|e| serde_json::from_str(&e.event_json).ok()).collect()
    }
}

/// Serves `state` over mutual TLS (leaf CA) on a local port.
pub async fn serve(pki: &Pki, state: Arc<AuthState>) -> SocketAddr {
    let ca = vec![pki.leaf.cert_pem().to_string()];
    let tls = ServerTls {
        cert_pem: pki.auth.0.clone(),
        key_pem: pki.auth.1.clone(),
        ca_pems: ca.clone(),
        client_ca_pems: ca,
    };
    let s = state.clone();
    let fake =
        FakeAuth::new().tls(tls).calls_into(state.calls.clone()).watch_access(state.access.subscribe()).list_nodes(
            move |r| {
                let r = r.into_inner();
                if r.user_tls_cert.is_empty() {
                    return Err(Status::unauthenticated("no user certificate"));
                }
                let nodes = s.nodes.lock().unwrap().clone();
                let nodes =
                    nodes.into_iter().filter(|n| r.labels.iter().all(|(k, v)| n.labels.get(k) == Some(v))).collect();
                Ok(ListNodesResponse { nodes })
            },
        );
    let s = state.clone();
    let fake = fake.resolve_node(move |r| {
        let r = r.into_inner();
        let nodes = s.nodes.lock().unwrap().clone();
        match nodes.into_iter().find(|n| n.hostname == r.host || n.id == r.host) {
            Some(n) => Ok(ResolveNodeResponse { node: Some(n) }),
            None => Err(Status::not_found(format!("node {:?} not found", r.host))),
        }
    });
    let fake = fake.emit_audit_event(|r| {
        serde_json::from_str::<serde_json::Value>(&r.get_ref().event_json)
            .map_err(|e| Status::invalid_argument(format!("not JSON: {e}")))?;
        Ok(Empty {})
    });
    let fake = fake.list_trusted_clusters(move |r| {
        // Like the real one: only callers with a client certificate.
        if r.peer_certs().is_none_or(|c| c.is_empty()) {
            return Err(Status::unauthenticated("a client certificate is required"));
        }
        Ok(ListTrustedClustersResponse { clusters: state.targets.lock().unwrap().clone() })
    });
    fake.start().await.unwrap().addr
}
