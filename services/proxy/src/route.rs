//! Where a connection for (cluster, host, port) goes. Today every cluster is this one and the
//! target is a node reached over TCP; the `cluster` step is where a leaf cluster's reverse
//! tunnel will be chosen later.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_proto::auth::{Node, ResolveNodeRequest};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tonic::Code;
use tonic::transport::Channel;

use crate::state::auth_call;

/// The port nodes listen on by default; asking for it means "wherever the node listens".
const DEFAULT_NODE_PORT: u16 = 3022;
/// What OpenSSH sends for `ssh -J proxy host` without `-p`.
const OPENSSH_DEFAULT_PORT: u16 = 22;
/// How long dialling a node may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A byte stream to a target, whatever carries it.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// A connection to a node, with what auth said about the node.
pub struct Dialed {
    pub node: Node,
    pub stream: Box<dyn Conn>,
}

/// Why a target could not be reached. The messages are shown to users.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("cluster {0:?} is not found")]
    ClusterNotFound(String),
    #[error("node {host:?} is not found")]
    NodeNotFound { host: String },
    #[error("cannot resolve node {host:?}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("node {node} is reached through a reverse tunnel, which this proxy does not serve yet")]
    Tunnel { node: String },
    #[error("cannot connect to node {node} at {addr}: {reason}")]
    Connect { node: String, addr: String, reason: String },
}

/// Which cluster serves a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterRoute {
    /// This proxy's own cluster.
    Local,
}

/// Picks clusters and dials nodes; counts the sessions it carries.
#[derive(Debug)]
pub struct Router {
    cluster_name: String,
    auth: AuthClient<Channel>,
    active: Arc<AtomicUsize>,
}

/// Counts one active session while alive.
#[derive(Debug)]
pub struct SessionGuard(Arc<AtomicUsize>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Router {
    pub fn new(cluster_name: String, auth: AuthClient<Channel>) -> Self {
        Router { cluster_name, auth, active: Arc::new(AtomicUsize::new(0)) }
    }

    /// The route to `cluster`; empty means this proxy's own cluster.
    pub fn cluster(&self, cluster: &str) -> Result<ClusterRoute, RouteError> {
        if cluster.is_empty() || cluster == self.cluster_name {
            Ok(ClusterRoute::Local)
        } else {
            Err(RouteError::ClusterNotFound(cluster.to_string()))
        }
    }

    /// Connects to `host[:port]` in `cluster`. Port 0 or 3022 means the node's own port.
    pub async fn dial(&self, cluster: &str, host: &str, port: u16) -> Result<Dialed, RouteError> {
        match self.cluster(cluster)? {
            ClusterRoute::Local => self.dial_local(host, port).await,
        }
    }

    /// Sessions being piped right now (for metrics).
    pub fn active_sessions(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Marks a session as active until the guard is dropped.
    pub fn track(&self) -> SessionGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        SessionGuard(self.active.clone())
    }

    async fn dial_local(&self, host: &str, port: u16) -> Result<Dialed, RouteError> {
        let node = self.resolve(host, port).await?;
        let name = if node.hostname.is_empty() { node.id.clone() } else { node.hostname.clone() };
        if node.tunnel {
            return Err(RouteError::Tunnel { node: name });
        }
        let connect_err = |reason: String| RouteError::Connect { node: name.clone(), addr: node.addr.clone(), reason };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(node.addr.as_str()))
            .await
            .map_err(|_| connect_err(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs())))?
            .map_err(|e| connect_err(e.to_string()))?;
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("set_nodelay on the node connection failed: {e}");
        }
        tracing::debug!(node = %name, addr = %node.addr, "dialled node");
        Ok(Dialed { node, stream: Box::new(tcp) })
    }

    async fn resolve(&self, host: &str, port: u16) -> Result<Node, RouteError> {
        let wanted = if port == DEFAULT_NODE_PORT { 0 } else { port };
        match self.resolve_once(host, wanted).await {
            // `ssh -J proxy node` asks for port 22 although nodes listen elsewhere: retry
            // as "the node's own port" before giving up.
            Err(RouteError::NodeNotFound { .. }) if wanted == OPENSSH_DEFAULT_PORT => {
                self.resolve_once(host, 0).await
            }
            r => r,
        }
    }

    async fn resolve_once(&self, host: &str, port: u16) -> Result<Node, RouteError> {
        let mut auth = self.auth.clone();
        let req = ResolveNodeRequest { host: host.to_string(), port: u32::from(port) };
        match auth_call(auth.resolve_node(req)).await {
            Ok(resp) => resp.node.ok_or_else(|| RouteError::NodeNotFound { host: host.to_string() }),
            Err(s) if s.code() == Code::NotFound => {
                tracing::debug!(host, port, "auth: {}", s.message());
                Err(RouteError::NodeNotFound { host: host.to_string() })
            }
            Err(s) => Err(RouteError::Resolve { host: host.to_string(), reason: status_text(&s) }),
        }
    }
}

/// A status as a short sentence for users.
fn status_text(s: &tonic::Status) -> String {
    match s.code() {
        Code::Unavailable => format!("auth service unreachable: {}", s.message()),
        _ => s.message().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_own_cluster_is_routed() {
        let channel = Channel::from_static("http://127.0.0.1:1").connect_lazy();
        let r = Router::new("root.example.com".into(), AuthClient::new(channel));
        assert_eq!(r.cluster("").unwrap(), ClusterRoute::Local);
        assert_eq!(r.cluster("root.example.com").unwrap(), ClusterRoute::Local);
        let e = r.cluster("leaf").unwrap_err().to_string();
        assert_eq!(e, "cluster \"leaf\" is not found");
        let g = r.track();
        assert_eq!(r.active_sessions(), 1);
        drop(g);
        assert_eq!(r.active_sessions(), 0);
    }
}
