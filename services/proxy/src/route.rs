//! Where a connection for (cluster, host, port) goes: a node of this cluster over TCP, or a
//! node of a leaf cluster through the leaf's reverse tunnel (its `LeafActor`). Nodes and leaf
//! access are looked up in the access cache, so routing works while no auth server answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use actix::Addr;
use portcullis_access::{AccessCache, AccessError, AccessSnapshot};
use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_proto::auth::{Node, ResolveNodeRequest};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tonic::Code;
use portcullis_rpc::Channel;
use portcullis_rpc::ssh_ident::{IDENT_TIMEOUT, Prefixed, read_ssh_ident};

use crate::metrics::{ProxyMetrics, cluster_type};
use crate::state::auth_call;
use crate::tunnel::actor::Dial;
use crate::tunnel::{Hub, LeafActor, TunnelError};

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
    #[error("cannot check access to cluster {cluster:?}: {reason}")]
    ClusterCheck { cluster: String, reason: String },
    #[error("cluster {0:?} is offline: no reverse tunnel from it is connected to this proxy")]
    ClusterOffline(String),
    #[error("cannot reach {host:?} in cluster {cluster:?}: {reason}")]
    Leaf { cluster: String, host: String, reason: TunnelError },
    #[error("node {host:?} is not found")]
    NodeNotFound { host: String },
    #[error("cannot resolve node {host:?}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("node {node} is reached through a reverse tunnel, which this proxy does not serve yet")]
    Tunnel { node: String },
    #[error("cannot connect to node {node} at {addr}: {reason}")]
    Connect { node: String, addr: String, reason: String },
    #[error("cannot reach {host:?} in cluster {cluster:?}: {reason}")]
    Reserved { cluster: String, host: String, reason: String },
}

/// Host names starting with this are a cluster's own services (`@auth`), never nodes.
const RESERVED_PREFIX: char = '@';
/// The audit event a refused reserved target writes (from the proxy's identity).
pub const DIAL_EVENT: &str = "tunnel.dial";

/// Why a user session may not reach `host`, a reserved name.
fn reserved_reason(host: &str) -> String {
    if host == "@auth" {
        "it is the cluster's auth service, which user sessions may not reach through the proxy \
         (only the root proxy itself may)"
            .into()
    } else {
        format!("names starting with '{RESERVED_PREFIX}' are reserved for cluster services and are not nodes")
    }
}

/// Which cluster serves a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterRoute {
    /// This proxy's own cluster.
    Local,
    /// A leaf cluster with at least one reverse tunnel to this proxy.
    Leaf(Addr<LeafActor>),
}

/// Picks clusters and dials nodes; counts the sessions it carries.
#[derive(Debug)]
pub struct Router {
    cluster_name: String,
    auth: AuthClient<Channel>,
    /// Nodes, leaves and roles as auth last said; empty means ask auth (today's path).
    access: AccessCache,
    hub: Arc<Hub>,
    active: Arc<AtomicUsize>,
    metrics: Arc<ProxyMetrics>,
    /// Keeps the audit events the proxy writes itself on disk until auth acknowledges them;
    /// none (tests without a data_dir): sent once, failures logged.
    audit: Option<portcullis_rpc::audit_spool::AuditSpool>,
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
    pub fn new(cluster_name: String, auth: AuthClient<Channel>, hub: Arc<Hub>) -> Self {
        Router {
            cluster_name,
            auth,
            access: AccessCache::empty(),
            hub,
            active: Arc::new(AtomicUsize::new(0)),
            metrics: Default::default(),
            audit: None,
        }
    }

    /// Writes this proxy's audit events through `spool` from now on.
    pub(crate) fn set_audit(&mut self, spool: portcullis_rpc::audit_spool::AuditSpool) {
        self.audit = Some(spool);
    }

    /// Answers from `access` from now on (auth is asked only while it holds nothing).
    pub(crate) fn set_access(&mut self, access: AccessCache) {
        self.access = access;
    }

    /// The access cache routing answers from.
    pub fn access(&self) -> &AccessCache {
        &self.access
    }

    /// Records sessions and dial times into `metrics` from now on.
    pub(crate) fn set_metrics(&mut self, metrics: Arc<ProxyMetrics>) {
        self.metrics = metrics;
    }

    /// The route to `cluster`; empty means this proxy's own cluster. A trusted leaf without a
    /// tunnel to this proxy is offline; any other name is not found.
    pub fn cluster(&self, cluster: &str) -> Result<ClusterRoute, RouteError> {
        if cluster.is_empty() || cluster == self.cluster_name {
            return Ok(ClusterRoute::Local);
        }
        if let Some(addr) = self.hub.leaf(cluster) {
            return Ok(ClusterRoute::Leaf(addr));
        }
        if self.hub.knows_leaf(cluster) {
            return Err(RouteError::ClusterOffline(cluster.to_string()));
        }
        Err(RouteError::ClusterNotFound(cluster.to_string()))
    }

    /// Checks that the holder of `ssh_cert` may see leaf `cluster` (its `cluster_labels`):
    /// a leaf hidden from the user is reported exactly like one that does not exist.
    pub async fn authorize_cluster(&self, cluster: &str, ssh_cert: &str) -> Result<(), RouteError> {
        if cluster.is_empty() || cluster == self.cluster_name {
            return Ok(());
        }
        // Auth answers while it can: its view is the newest (a leaf labelled, a user made or
        // demoted a moment ago), and this check was one call before the cache too. While no
        // auth server answers, the access cache takes the same decision.
        let visible = match self.ask_cluster_visible(cluster, ssh_cert).await {
            Err(AskError::Unreachable(reason)) => match self.access.current() {
                Some(snap) => {
                    tracing::debug!(cluster, "auth is unreachable ({reason}): the access cache decides");
                    cluster_visible(&snap, cluster, ssh_cert)
                }
                None => Err(reason),
            },
            Err(AskError::Refused(reason)) => Err(reason),
            Ok(v) => Ok(v),
        };
        match visible {
            Ok(true) => Ok(()),
            Ok(false) => {
                // Sessions refused before any dial are failed session attempts too.
                self.metrics.session(cluster_type(cluster, &self.cluster_name), Err(()));
                Err(RouteError::ClusterNotFound(cluster.to_string()))
            }
            Err(reason) => {
                self.metrics.session(cluster_type(cluster, &self.cluster_name), Err(()));
                Err(RouteError::ClusterCheck { cluster: cluster.to_string(), reason })
            }
        }
    }

    /// Auth's answer to whether the holder of `ssh_cert` may see leaf `cluster`.
    async fn ask_cluster_visible(&self, cluster: &str, ssh_cert: &str) -> Result<bool, AskError> {
        let req = portcullis_proto::auth::ListRemoteClustersRequest {
            user_ssh_cert: ssh_cert.to_string(),
            name: cluster.to_string(),
            ..Default::default()
        };
        let mut auth = self.auth.clone();
        match auth_call(auth.list_remote_clusters(req)).await {
            Ok(resp) => Ok(resp.clusters.iter().any(|c| c.name == cluster)),
            Err(status) if crate::state::auth_unreachable(&status) => Err(AskError::Unreachable(status.message().to_string())),
            Err(status) => Err(AskError::Refused(status.message().to_string())),
        }
    }

    /// Connects to `host[:port]` in `cluster` on behalf of `user`. Port 0 or 3022 means the
    /// node's own port.
    /// Every call counts as one session in the metrics, timed when it succeeds.
    pub async fn dial(&self, cluster: &str, host: &str, port: u16, user: &str) -> Result<Dialed, RouteError> {
        let started = tokio::time::Instant::now();
        let dialled = match self.cluster(cluster) {
            // Checked before any dial: a user session never asks a leaf for its auth service.
            Ok(_) if host.starts_with(RESERVED_PREFIX) => Err(self.refuse_reserved(cluster, host, user).await),
            Ok(ClusterRoute::Local) => self.dial_local(host, port).await,
            Ok(ClusterRoute::Leaf(addr)) => self.dial_leaf(cluster, addr, host, port, user).await,
            Err(e) => Err(e),
        };
        let timed = dialled.as_ref().map(|_| started.elapsed()).map_err(|_| ());
        self.metrics.session(cluster_type(cluster, &self.cluster_name), timed);
        dialled
    }

    /// Refuses a user's dial to a reserved name and records it in this cluster's audit log.
    async fn refuse_reserved(&self, cluster: &str, host: &str, user: &str) -> RouteError {
        let cluster = if cluster.is_empty() { self.cluster_name.as_str() } else { cluster };
        let e = RouteError::Reserved { cluster: cluster.to_string(), host: host.to_string(), reason: reserved_reason(host) };
        tracing::warn!(user, cluster, host, "refused a user session's dial: {e}");
        let event = serde_json::json!({
            "event": DIAL_EVENT,
            "success": false,
            "cluster": cluster,
            "user": user,
            "target": host,
            "error": e.to_string(),
        });
        if let Some(spool) = &self.audit {
            spool.emit(event);
            return e;
        }
        let mut auth = self.auth.clone();
        let req = portcullis_proto::auth::AuditEventRequest { event_json: event.to_string() };
        if let Err(status) = auth_call(auth.emit_audit_event(req)).await {
            tracing::warn!("cannot write the {DIAL_EVENT} audit event: {}", status.message());
        }
        e
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
        let mut tcp = tcp;
        // The node's session span joins this trace; "no trace" spares the node its wait.
        portcullis_telemetry::preamble::write_or_none(&mut tcp).await.map_err(|e| connect_err(e.to_string()))?;
        // Only an SSH server is relayed to, whatever port the node announced.
        let seen = read_ssh_ident(&mut tcp, IDENT_TIMEOUT).await.map_err(|e| connect_err(e.to_string()))?;
        tracing::debug!(node = %name, addr = %node.addr, "dialled node");
        Ok(Dialed { node, stream: Box::new(Prefixed::new(seen, tcp)) })
    }

    /// Asks the leaf's actor to dial through a tunnel; the leaf's agent resolves the host.
    async fn dial_leaf(
        &self,
        cluster: &str,
        addr: Addr<LeafActor>,
        host: &str,
        port: u16,
        user: &str,
    ) -> Result<Dialed, RouteError> {
        // Agents dial registered nodes only, at their own address: 22 (what `ssh -J` sends)
        // and 3022 can only mean "the node's port".
        let port = if port == OPENSSH_DEFAULT_PORT || port == DEFAULT_NODE_PORT { 0 } else { port };
        let leaf_err = |reason: TunnelError| RouteError::Leaf { cluster: cluster.to_string(), host: host.to_string(), reason };
        use tracing::Instrument;
        let span = tracing::info_span!(
            "tunnel.dial",
            cluster = %cluster,
            node = %host,
            user = %user,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        let sent = async {
            // The agent continues the trace from this span.
            let trace = portcullis_telemetry::current_trace_map().into_iter().collect();
            let msg = Dial { host: host.to_string(), port, user: user.to_string(), trace, for_proxy: false };
            addr.send(msg).await
        }
        .instrument(span.clone())
        .await;
        let stream = match sent {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let e = leaf_err(e);
                record_error(&span, &e);
                return Err(e);
            }
            // The actor stopped: its last tunnel went away meanwhile.
            Err(_) => {
                let e = RouteError::ClusterOffline(cluster.to_string());
                record_error(&span, &e);
                return Err(e);
            }
        };
        tracing::debug!(leaf = cluster, host, port, "dialled through a reverse tunnel");
        let node = Node { hostname: host.to_string(), cluster: cluster.to_string(), tunnel: true, ..Default::default() };
        Ok(Dialed { node, stream: Box::new(stream) })
    }

    /// The node `host[:port]` names in this cluster: from the access cache, else from auth.
    pub(crate) async fn resolve(&self, host: &str, port: u16) -> Result<Node, RouteError> {
        let wanted = if port == DEFAULT_NODE_PORT { 0 } else { port };
        // `ssh -J proxy node` asks for port 22 although nodes listen elsewhere: "the node's
        // own port" is tried too before giving up.
        let ports: &[u16] = if wanted == OPENSSH_DEFAULT_PORT { &[OPENSSH_DEFAULT_PORT, 0] } else { &[wanted] };
        let Some(snap) = self.access.current() else {
            return self.resolve_remote(host, ports).await;
        };
        for &p in ports {
            match portcullis_access::resolve_node(&snap.nodes, &snap.cluster_name, host, u32::from(p)) {
                Ok(n) => return Ok(to_proto_node(n, &self.cluster_name)),
                Err(AccessError::NotFound(m)) => tracing::debug!(host, port = p, "not in the access cache: {m}"),
                Err(e) => return Err(RouteError::Resolve { host: host.to_string(), reason: e.to_string() }),
            }
        }
        // A node that joined since the last snapshot: auth may know it. With auth down, the
        // cache's answer stands.
        match self.resolve_remote(host, ports).await {
            Err(RouteError::Resolve { reason, .. }) => {
                tracing::debug!(host, "cannot ask auth about a node missing from the access cache: {reason}");
                Err(RouteError::NodeNotFound { host: host.to_string() })
            }
            r => r,
        }
    }

    /// Auth's answer, trying `ports` in turn while the node is not found.
    async fn resolve_remote(&self, host: &str, ports: &[u16]) -> Result<Node, RouteError> {
        let mut last = RouteError::NodeNotFound { host: host.to_string() };
        for &p in ports {
            match self.resolve_once(host, p).await {
                Err(e @ RouteError::NodeNotFound { .. }) => last = e,
                r => return r,
            }
        }
        Err(last)
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

/// Why auth gave no yes-or-no answer.
enum AskError {
    /// No auth server answered: the access cache may decide instead.
    Unreachable(String),
    /// Auth answered with a refusal (an unaccepted certificate, say): it stands.
    Refused(String),
}

/// Whether the holder of `ssh_cert` (one of this cluster's user certificates) may see leaf
/// `cluster` by its roles' `cluster_labels`; `Err` when the certificate is not accepted.
fn cluster_visible(snap: &AccessSnapshot, cluster: &str, ssh_cert: &str) -> Result<bool, String> {
    let checker = portcullis_access::ssh_user_checker(snap, ssh_cert).map_err(|e| e.to_string())?;
    Ok(snap
        .remote_clusters
        .iter()
        .any(|rc| rc.metadata.name == cluster && checker.can_see_cluster(&rc.metadata.labels)))
}

/// A node of the snapshot as the auth API describes it (what `ResolveNode` answers).
pub fn to_proto_node(n: portcullis_types::Node, cluster: &str) -> Node {
    Node {
        id: n.metadata.name,
        hostname: n.spec.hostname,
        addr: n.spec.addr,
        labels: n.metadata.labels.into_iter().collect(),
        expires_unix: n.metadata.expires.map(|e| e.unix_timestamp()).unwrap_or(0),
        cluster: cluster.to_string(),
        tunnel: n.spec.use_tunnel,
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
    async fn own_cluster_is_local_and_unconnected_leaves_are_named() {
        let channel = Channel::new(tonic::transport::Channel::from_static("http://127.0.0.1:1").connect_lazy());
        let hub = Hub::start("root.example.com", "proxy-1", "", Default::default()).unwrap();
        hub.set_leaf_cas([("leaf-b".to_string(), vec!["pem".to_string()])].into_iter().collect());
        let r = Router::new("root.example.com".into(), AuthClient::new(channel), hub);
        assert_eq!(r.cluster("").unwrap(), ClusterRoute::Local);
        assert_eq!(r.cluster("root.example.com").unwrap(), ClusterRoute::Local);
        let e = r.cluster("leaf").unwrap_err().to_string();
        assert_eq!(e, "cluster \"leaf\" is not found");
        let e = r.cluster("leaf-b").unwrap_err().to_string();
        assert_eq!(e, "cluster \"leaf-b\" is offline: no reverse tunnel from it is connected to this proxy");
        let e = r.dial("leaf-b", "node", 0, "alice").await.err().unwrap().to_string();
        assert!(e.contains("is offline"), "{e}");
        let g = r.track();
        assert_eq!(r.active_sessions(), 1);
        drop(g);
        assert_eq!(r.active_sessions(), 0);
    }
}

/// Marks `span` failed with the error's text.
pub fn record_error(span: &tracing::Span, e: &dyn std::fmt::Display) {
    span.record("otel.status_code", "error");
    span.record("otel.status_description", e.to_string().as_str());
}
