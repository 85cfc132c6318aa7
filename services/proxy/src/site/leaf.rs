//! `LeafSite`: a trusted leaf cluster, reached only through its reverse tunnels. Requests are
//! sent and awaited in the caller's future (see `tunnel::leaf`).

use std::collections::BTreeMap;

use portcullis_proto::auth::Node;
use portcullis_proto::tunnel::AuthorizeQuery;
use tracing::Instrument;

use super::{Dialed, RouteError};
use crate::tunnel::{DialTarget, Leaf, TunnelError};

/// The port nodes listen on by default; asking for it means "wherever the node listens".
const DEFAULT_NODE_PORT: u16 = 3022;
/// What OpenSSH sends for `ssh -J proxy host` without `-p`.
const OPENSSH_DEFAULT_PORT: u16 = 22;

/// One trusted leaf (online or not).
#[derive(Debug, Clone)]
pub struct LeafSite {
    leaf: Leaf,
}

impl LeafSite {
    pub(crate) fn new(leaf: Leaf) -> Self {
        LeafSite { leaf }
    }

    pub fn name(&self) -> &str {
        self.leaf.name()
    }

    /// Whether at least one of the leaf's tunnels is up.
    pub fn is_online(&self) -> bool {
        self.leaf.is_online()
    }

    /// An offline leaf (no tunnel, or the last one went meanwhile) is reported as such;
    /// anything else the tunnel or the leaf says is `Leaf`.
    fn leaf_err(&self, host: &str, reason: TunnelError) -> RouteError {
        match reason {
            TunnelError::Offline(_) => RouteError::ClusterOffline(self.name().to_string()),
            reason => RouteError::Leaf { cluster: self.name().to_string(), host: host.to_string(), reason },
        }
    }

    /// Asks the leaf's agent for a stream to `host[:port]`; the agent resolves the host.
    pub async fn dial(&self, host: &str, port: u16, user: &str) -> Result<Dialed, RouteError> {
        let cluster = self.name();
        // Agents dial registered nodes only, at their own address: 22 (what `ssh -J` sends)
        // and 3022 can only mean "the node's port".
        let port = if port == OPENSSH_DEFAULT_PORT || port == DEFAULT_NODE_PORT { 0 } else { port };
        let span = tracing::info_span!(
            "tunnel.dial",
            cluster = %cluster,
            node = %host,
            user = %user,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        let dialled = async {
            // The agent continues the trace from this span.
            let trace = portcullis_telemetry::current_trace_map().into_iter().collect();
            let target = DialTarget { host: host.to_string(), port, user: user.to_string(), trace, for_proxy: false };
            self.leaf.dial(target).await.map_err(|e| self.leaf_err(host, e))
        }
        .instrument(span.clone())
        .await;
        let stream = dialled.inspect_err(|e| super::record_error(&span, e))?;
        tracing::debug!(leaf = cluster, host, port, "dialled through a reverse tunnel");
        let node = Node { hostname: host.to_string(), cluster: cluster.to_string(), tunnel: true, ..Default::default() };
        Ok(Dialed { node, stream: Box::new(stream) })
    }

    /// The leaf's nodes the user may see, asked through a tunnel; the leaf's auth applies the
    /// user's mapped roles.
    pub async fn list_nodes(&self, user_tls_cert: &[u8], labels: &BTreeMap<String, String>) -> Result<Vec<Node>, RouteError> {
        self.leaf.list_nodes(user_tls_cert.to_vec(), labels.clone()).await.map_err(|e| self.leaf_err("", e))
    }

    /// The leaf's auth decides whether a root user may log in to one of its nodes.
    pub async fn authorize(&self, ssh_cert: &str, login: &str, node: &str, remote_addr: &str) -> Result<(bool, String), RouteError> {
        let q = AuthorizeQuery {
            request_id: 0,
            ssh_cert: ssh_cert.to_string(),
            login: login.to_string(),
            node: node.to_string(),
            remote_addr: remote_addr.to_string(),
        };
        self.leaf.authorize(q).await.map_err(|e| self.leaf_err(node, e))
    }
}
