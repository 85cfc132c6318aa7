//! Which registered node a host name, address or id names.

use portcullis_types::Node;

use crate::error::AccessError;

/// Finds the node `host` names among `nodes`: its id, its name, or its address. Only
/// registered nodes are ever returned, so a proxy cannot be made to dial anything else.
/// `cluster` names the cluster in the not-found message.
pub fn resolve_node(nodes: &[Node], cluster: &str, host: &str, port: u32) -> Result<Node, AccessError> {
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
        [] => Err(AccessError::NotFound(format!("node {host:?} is not found in cluster {cluster:?} (see tsh ls)"))),
        many => {
            // Several nodes share the name: an exact id or address wins, else ambiguity.
            if let Some(n) = many.iter().find(|n| n.metadata.name == host || n.spec.addr == with_port) {
                return Ok((*n).clone());
            }
            let ids: Vec<&str> = many.iter().map(|n| n.metadata.name.as_str()).collect();
            Err(AccessError::BadRequest(format!("{host:?} matches several nodes ({}); use the node id", ids.join(", "))))
        }
    }
}

/// The host part of `host:port` (brackets of an IPv6 address removed).
fn addr_host(addr: &str) -> &str {
    match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_matches(|c| c == '[' || c == ']'),
        None => addr,
    }
}
