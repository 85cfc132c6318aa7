//! Which registered node a host name, address or id names.

use portcullis_types::{HostPort, Node};

use crate::error::AccessError;

/// Finds the node `host` names among `nodes`: its id, its name, or its address. Only
/// registered nodes are ever returned, so a proxy cannot be made to dial anything else.
/// `cluster` names the cluster in the not-found message.
pub fn resolve_node(nodes: &[Node], cluster: &str, host: &str, port: u32) -> Result<Node, AccessError> {
    // Written the way nodes announce themselves: `[v6]:port` for an IPv6 host.
    let with_port = match u16::try_from(port) {
        Ok(p) => HostPort::new(host, p).to_string(),
        Err(_) => format!("{host}:{port}"),
    };
    let matches: Vec<&Node> = nodes
        .iter()
        .filter(|n| {
            n.metadata.name == host
                || n.spec.hostname == host
                || n.spec.addr == with_port
                || ((port == 0 || port == 3022) && n.spec.addr.parse::<HostPort>().is_ok_and(|a| a.host() == host))
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

/// A node as the auth API describes it (what `ResolveNode` and `ListNodes` answer); auth and
/// the proxy's access-cache answers use this one conversion.
pub fn to_proto_node(n: portcullis_types::Node, cluster: &str) -> portcullis_proto::auth::Node {
    portcullis_proto::auth::Node {
        id: n.metadata.name,
        hostname: n.spec.hostname,
        addr: n.spec.addr,
        labels: n.metadata.labels.into_iter().collect(),
        expires_unix: n.metadata.expires.map(|e| e.unix_timestamp()).unwrap_or(0),
        cluster: cluster.to_string(),
        tunnel: n.spec.use_tunnel,
    }
}
