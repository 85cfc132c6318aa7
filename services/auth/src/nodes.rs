//! Servers announcing themselves: nodes and proxies, kept with an expiry that heartbeats
//! push forward.

use std::collections::BTreeMap;
use std::time::Duration;

use portcullis_proto::auth::HeartbeatRequest;
use portcullis_storage::BackendExt;
use portcullis_types::Node;

use crate::error::AuthError;
use crate::state::{AuthState, now};

/// A node missing heartbeats for this long drops out of listings.
pub const SERVER_TTL: Duration = Duration::from_secs(60);
/// A proxy missing heartbeats (every 5 s) for this long drops out of the proxy set agents
/// are told about, so agents stop looking for a proxy that is gone.
pub const PROXY_TTL: Duration = Duration::from_secs(15);

/// Where a proxy's tunnel address is kept on its record.
const TUNNEL_ADDR_LABEL: &str = "portcullis.dev/tunnel_addr";

fn key(kind: &str, id: &str) -> String {
    format!("{kind}/{id}")
}

impl AuthState {
    /// Records a heartbeat from a node or proxy.
    pub fn heartbeat(&self, req: &HeartbeatRequest) -> Result<(), AuthError> {
        let prefix = match req.kind.as_str() {
            "node" => "nodes",
            "proxy" => "proxies",
            other => return Err(AuthError::bad(format!("unknown server kind {other:?}"))),
        };
        let labels: BTreeMap<String, String> = req.labels.clone().into_iter().collect();
        let mut node = Node::new(req.host_id.clone(), req.hostname.clone(), req.addr.clone(), labels);
        node.spec.version = req.version.clone();
        if req.kind == "proxy" {
            node.metadata.labels.insert(TUNNEL_ADDR_LABEL.into(), req.tunnel_addr.clone());
        }
        let ttl = if req.kind == "proxy" { PROXY_TTL } else { SERVER_TTL };
        node.metadata.expires = Some(now() + time::Duration::try_from(ttl).unwrap_or(time::Duration::MINUTE));
        self.backend.put_json(&key(prefix, &req.host_id), &node)?;
        Ok(())
    }

    /// Nodes whose heartbeats are current.
    pub fn list_nodes(&self) -> Result<Vec<Node>, AuthError> {
        let now = now();
        Ok(self
            .backend
            .list_json::<Node>("nodes/")?
            .into_iter()
            .filter(|n| n.metadata.expires.is_none_or(|e| e > now))
            .collect())
    }

    /// A node record, live or not (a node asking about itself is alive even if its last
    /// heartbeat was missed).
    pub fn get_node(&self, id: &str) -> Result<Option<Node>, AuthError> {
        Ok(self.backend.get_json(&key("nodes", id))?)
    }

    pub fn put_node(&self, node: &Node) -> Result<(), AuthError> {
        Ok(self.backend.put_json(&key("nodes", &node.metadata.name), node)?)
    }

    pub fn delete_node(&self, id: &str) -> Result<bool, AuthError> {
        Ok(self.backend.delete(&key("nodes", id))?)
    }

    /// Finds the node `host` names: its id, its name, or its address. Only registered
    /// nodes are ever returned, so a proxy cannot be made to dial anything else.
    pub fn resolve_node(&self, host: &str, port: u32) -> Result<Node, AuthError> {
        let nodes = self.list_nodes()?;
        let with_port = format!("{host}:{port}");
        let matches: Vec<&Node> = nodes
            .iter()
            .filter(|n| {
                n.metadata.name == host
                    || n.spec.hostname == host
                    || n.spec.addr == with_port
                    || ((port == 0 || port == 3022) && addr_host(&n.spec.addr) == host)
            })
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(AuthError::NotFound(format!(
                "node {host:?} is not found in cluster {:?} (see tsh ls)",
                self.cluster_name
            ))),
            many => {
                // Several nodes share the name: an exact id or address wins, else ambiguity.
                if let Some(n) = many.iter().find(|n| n.metadata.name == host || n.spec.addr == with_port) {
                    return Ok((*n).clone());
                }
                let ids: Vec<&str> = many.iter().map(|n| n.metadata.name.as_str()).collect();
                Err(AuthError::bad(format!(
                    "{host:?} matches several nodes ({}); use the node id",
                    ids.join(", ")
                )))
            }
        }
    }

    /// Proxies whose heartbeats are current, with the tunnel address agents should dial.
    pub fn live_proxies(&self) -> Result<Vec<portcullis_proto::auth::Proxy>, AuthError> {
        let now = now();
        Ok(self
            .backend
            .list_json::<Node>("proxies/")?
            .into_iter()
            .filter(|n| n.metadata.expires.is_none_or(|e| e > now))
            .map(|n| portcullis_proto::auth::Proxy {
                tunnel_addr: n.metadata.labels.get(TUNNEL_ADDR_LABEL).cloned().unwrap_or_default(),
                id: n.metadata.name,
            })
            .collect())
    }

    /// Drops expired nodes, proxies and tokens.
    pub fn sweep_expired(&self) -> Result<usize, AuthError> {
        let now = now();
        let mut removed = 0;
        for prefix in ["nodes/", "proxies/"] {
            for (k, v) in self.backend.list(prefix)? {
                if let Ok(n) = serde_json::from_slice::<Node>(&v) {
                    // Keep a grace period so a briefly partitioned node is not forgotten.
                    if n.metadata.expires.is_some_and(|e| e + time::Duration::minutes(10) < now) {
                        self.backend.delete(&k)?;
                        removed += 1;
                    }
                }
            }
        }
        for t in self.backend.list_json::<portcullis_types::ProvisionToken>("tokens/")? {
            if t.is_expired(now) {
                self.backend.delete(&format!("tokens/{}", t.token()))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn addr_host(addr: &str) -> &str {
    match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_matches(|c| c == '[' || c == ']'),
        None => addr,
    }
}
