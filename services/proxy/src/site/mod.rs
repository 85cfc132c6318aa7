//! Sites: where the proxy sends a user's request. The local site is this cluster (nodes
//! dialled over TCP, auth asked directly); a leaf site is a trusted leaf cluster, reached
//! only through its reverse tunnels (the `tunnel` module). Routing, the SSH front door and
//! the web handlers talk to [`Sites`] and [`Site`] only, never to the tunnel internals.
//!
//! Leaf visibility by `cluster_labels` is a question about the user, not the site: it stays
//! [`crate::route::Router::authorize_cluster`] (the SSH front door calls it before dialling,
//! and it counts refused sessions in the metrics).

mod leaf;
mod local;

use std::collections::BTreeMap;
use std::sync::Arc;

use portcullis_proto::auth::Node;
use tokio::io::{AsyncRead, AsyncWrite};

pub use leaf::LeafSite;
pub use local::{LocalSite, access_status, to_proto_node};

use crate::tunnel::{Hub, TunnelError};

/// A byte stream to a target, whatever carries it.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// A connection to a node, with what is known about the node.
pub struct Dialed {
    pub node: Node,
    pub stream: Box<dyn Conn>,
}

/// Why a target could not be reached or a site could not answer. The messages are shown to
/// users.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("cluster {0:?} is not found")]
    ClusterNotFound(String),
    #[error("cannot check access to cluster {cluster:?}: {reason}")]
    ClusterCheck { cluster: String, reason: String },
    #[error("cluster {0:?} is offline: no reverse tunnel from it is connected to this proxy")]
    ClusterOffline(String),
    /// A leaf could not do what was asked; `reason` is what the tunnel or the leaf said.
    #[error("cannot reach {host:?} in cluster {cluster:?}: {reason}")]
    Leaf { cluster: String, host: String, reason: TunnelError },
    #[error("node {host:?} is not found")]
    NodeNotFound { host: String },
    #[error("cannot resolve node {host:?}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("node {node} is reached only through a reverse tunnel to its own cluster's proxy, not directly from this one")]
    Tunnel { node: String },
    #[error("cannot connect to node {node} at {addr}: {reason}")]
    Connect { node: String, addr: String, reason: String },
    #[error("cannot reach {host:?} in cluster {cluster:?}: {reason}")]
    Reserved { cluster: String, host: String, reason: String },
    /// Auth's own answer to a listing or a login check (or the access cache's, in auth's
    /// words); the web API passes its code on as the HTTP status.
    #[error("{}", status_text(.0))]
    Auth(tonic::Status),
}

/// Marks `span` failed with the error's text.
pub fn record_error(span: &tracing::Span, e: &dyn std::fmt::Display) {
    span.record("otel.status_code", "error");
    span.record("otel.status_description", e.to_string().as_str());
}

/// A status as a short sentence for users.
pub(crate) fn status_text(s: &tonic::Status) -> String {
    match s.code() {
        tonic::Code::Unavailable => format!("auth service unreachable: {}", s.message()),
        _ => s.message().to_string(),
    }
}

/// This cluster and the leaves it trusts (`state.sites`).
#[derive(Debug)]
pub struct Sites {
    local: LocalSite,
    hub: Arc<Hub>,
}

impl Sites {
    pub fn new(local: LocalSite, hub: Arc<Hub>) -> Self {
        Sites { local, hub }
    }

    /// "" or this cluster's name: the local site; a trusted leaf (online or offline): its
    /// leaf site; anything else: [`RouteError::ClusterNotFound`].
    pub fn get(&self, cluster: &str) -> Result<Site, RouteError> {
        if cluster.is_empty() || cluster == self.local.name() {
            return Ok(self.local());
        }
        match self.hub.leaf(cluster) {
            Some(leaf) => Ok(Site::Leaf(LeafSite::new(leaf))),
            None => Err(RouteError::ClusterNotFound(cluster.to_string())),
        }
    }

    /// This cluster.
    pub fn local(&self) -> Site {
        Site::Local(self.local.clone())
    }

    /// This cluster, with the calls only it answers (node resolution).
    pub fn local_site(&self) -> &LocalSite {
        &self.local
    }

    /// Whether a trusted leaf has at least one live tunnel to this proxy.
    pub fn is_online(&self, cluster: &str) -> bool {
        self.hub.is_online(cluster)
    }

    /// Asks the heartbeat for fresh leaf CAs now (a leaf was just trusted, or an unknown
    /// agent knocked).
    pub fn request_refresh(&self) {
        self.hub.want_refresh();
    }

    /// The tunnel hub beneath the leaf sites (for the tunnel server and the heartbeat).
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }
}

/// One cluster the proxy serves: cheap to clone, safe to hold across awaits.
#[derive(Debug, Clone)]
pub enum Site {
    Local(LocalSite),
    Leaf(LeafSite),
}

impl Site {
    pub fn name(&self) -> &str {
        match self {
            Site::Local(s) => s.name(),
            Site::Leaf(s) => s.name(),
        }
    }

    pub fn is_leaf(&self) -> bool {
        matches!(self, Site::Leaf(_))
    }

    /// Local: always; a leaf: while at least one of its tunnels is up.
    pub fn is_online(&self) -> bool {
        match self {
            Site::Local(_) => true,
            Site::Leaf(s) => s.is_online(),
        }
    }

    /// A byte stream to `host[:port]` (0 = the node's own port) on behalf of `user`.
    pub async fn dial(&self, host: &str, port: u16, user: &str) -> Result<Dialed, RouteError> {
        match self {
            Site::Local(s) => s.dial(host, port).await,
            Site::Leaf(s) => s.dial(host, port, user).await,
        }
    }

    /// Nodes of the site visible to the holder of this (root-cluster) TLS client certificate
    /// (DER), filtered by `labels`. A leaf's own auth applies the user's mapped roles.
    pub async fn list_nodes(
        &self,
        user_tls_cert: &[u8],
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<Node>, RouteError> {
        match self {
            Site::Local(s) => s.list_nodes(user_tls_cert, labels).await,
            Site::Leaf(s) => s.list_nodes(user_tls_cert, labels).await,
        }
    }

    /// Whether (and why not) the holder of `ssh_cert` may log in as `login` to `node`:
    /// `Ok((allowed, reason))`. A leaf decides for its own nodes; its refusal to answer comes
    /// back as [`RouteError::Leaf`] (the leaf's reason in `reason`), an offline leaf as
    /// [`RouteError::ClusterOffline`].
    pub async fn authorize(
        &self,
        ssh_cert: &str,
        login: &str,
        node: &str,
        remote_addr: &str,
    ) -> Result<(bool, String), RouteError> {
        match self {
            Site::Local(s) => s.authorize(ssh_cert, login, node, remote_addr).await,
            Site::Leaf(s) => s.authorize(ssh_cert, login, node, remote_addr).await,
        }
    }
}
