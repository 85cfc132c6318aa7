//! `LocalSite`: this proxy's own cluster. Nodes are resolved from the access cache (auth
//! while it holds nothing) and dialled over TCP; listings and login checks go to auth first
//! and to the access cache while no auth server answers.

pub use portcullis_access::to_proto_node;
use std::collections::BTreeMap;
use std::time::Duration;

use portcullis_access::{AccessCache, AccessError};
use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_proto::auth::{AuthorizeSshRequest, ListNodesRequest, Node, ResolveNodeRequest};
use portcullis_rpc::Channel;
use portcullis_rpc::ssh_ident::{IDENT_TIMEOUT, Prefixed, read_ssh_ident};
use tokio::net::TcpStream;
use tonic::{Code, Status};

use super::{Dialed, RouteError, status_text};
use crate::auth_rpc::{auth_call, auth_unreachable};

/// The port nodes listen on by default; asking for it means "wherever the node listens".
const DEFAULT_NODE_PORT: u16 = 3022;
/// What OpenSSH sends for `ssh -J proxy host` without `-p`.
const OPENSSH_DEFAULT_PORT: u16 = 22;
/// How long dialling a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// This cluster, as routing and the web API see it.
#[derive(Debug, Clone)]
pub struct LocalSite {
    cluster_name: String,
    auth: AuthClient<Channel>,
    /// Nodes and roles as auth last said; empty means ask auth.
    access: AccessCache,
}

impl LocalSite {
    pub fn new(cluster_name: String, auth: AuthClient<Channel>, access: AccessCache) -> Self {
        LocalSite { cluster_name, auth, access }
    }

    pub fn name(&self) -> &str {
        &self.cluster_name
    }

    /// A TCP stream to the node `host[:port]` names, after its SSH version line (checked to be
    /// an SSH server's).
    pub async fn dial(&self, host: &str, port: u16) -> Result<Dialed, RouteError> {
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

    /// The nodes the holder of `user_tls_cert` may see: auth first (newest view), the access
    /// cache while no auth server answers.
    pub async fn list_nodes(&self, user_tls_cert: &[u8], labels: &BTreeMap<String, String>) -> Result<Vec<Node>, RouteError> {
        let req = ListNodesRequest { user_tls_cert: user_tls_cert.to_vec(), labels: labels.clone().into_iter().collect() };
        let asked = auth_call(self.auth.clone().list_nodes(req)).await;
        match (asked, self.access.current()) {
            (Ok(resp), _) => Ok(resp.nodes),
            (Err(s), Some(snap)) if auth_unreachable(&s) => {
                let user = portcullis_access::verify_user_tls(&snap, user_tls_cert).map_err(access_error)?;
                let visible = portcullis_access::nodes_visible_to(&snap, &user).map_err(access_error)?;
                Ok(visible
                    .into_iter()
                    .filter(|n| labels.iter().all(|(k, v)| n.metadata.labels.get(k) == Some(v)))
                    .map(|n| to_proto_node(n, &self.cluster_name))
                    .collect())
            }
            (Err(s), _) => Err(RouteError::Auth(s)),
        }
    }

    /// Whether the holder of `ssh_cert` may log in as `login` on `node`, and why not: auth
    /// first, the access cache (the same decision) while no auth server answers. The node
    /// audits a refused login itself; this only explains it.
    pub async fn authorize(&self, ssh_cert: &str, login: &str, node: &str, remote_addr: &str) -> Result<(bool, String), RouteError> {
        let request = AuthorizeSshRequest {
            ssh_cert: ssh_cert.to_string(),
            login: login.to_string(),
            node: node.to_string(),
            source: "proxy".into(),
            remote_addr: remote_addr.to_string(),
        };
        let resp = match (auth_call(self.auth.clone().authorize_ssh(request.clone())).await, self.access.current()) {
            (Ok(resp), _) => resp,
            (Err(s), Some(snap)) if auth_unreachable(&s) => {
                let node = portcullis_access::resolve_node(&snap.nodes, &snap.cluster_name, &request.node, 0).ok();
                portcullis_access::authorize_ssh(&snap, &request, node.as_ref()).map_err(access_error)?
            }
            (Err(s), _) => return Err(RouteError::Auth(s)),
        };
        Ok((resp.allowed, resp.reason))
    }
}

fn access_error(e: AccessError) -> RouteError {
    RouteError::Auth(access_status(e))
}

/// An access refusal as the status auth would have answered with (same codes, same text).
pub fn access_status(e: AccessError) -> Status {
    match e {
        AccessError::BadRequest(m) => Status::invalid_argument(m),
        AccessError::Unauthenticated(m) => Status::unauthenticated(m),
        AccessError::Denied(m) => Status::permission_denied(m),
        AccessError::NotFound(m) => Status::not_found(m),
    }
}

