//! Sessions: where a user's connection for (cluster, host, port) goes, through [`Sites`],
//! with what routing adds on top of a site's dial: leaf visibility by `cluster_labels`,
//! reserved names refused and audited, and the session counts and dial times in the metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use portcullis_access::{AccessCache, AccessSnapshot};
use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_rpc::Channel;

use crate::metrics::{ProxyMetrics, cluster_type};
use crate::site::Sites;
use crate::auth_rpc::auth_call;

pub use crate::site::{Conn, Dialed, RouteError, record_error, to_proto_node};

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

/// Counts the sessions being piped; shared with the metrics, which read it on scrape.
#[derive(Debug, Clone, Default)]
pub struct ActiveSessions(Arc<AtomicUsize>);

impl ActiveSessions {
    /// Sessions being piped right now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Routes user sessions to sites; counts the sessions it carries.
#[derive(Debug)]
pub struct Router {
    cluster_name: String,
    sites: Arc<Sites>,
    auth: AuthClient<Channel>,
    /// Leaves and roles as auth last said, for `authorize_cluster` while auth is away.
    access: AccessCache,
    active: ActiveSessions,
    metrics: Arc<ProxyMetrics>,
    /// Keeps the audit events the proxy writes itself on disk until auth acknowledges them;
    /// none (tests without a data_dir): sent once, failures logged.
    audit: Option<portcullis_rpc::audit_spool::AuditSpool>,
}

/// Counts one active session while alive.
#[derive(Debug)]
pub struct SessionGuard(ActiveSessions);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        (self.0).0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a [`Router`] is built from.
#[derive(Debug)]
pub struct RouterParts {
    pub sites: Arc<Sites>,
    pub auth: AuthClient<Channel>,
    pub access: AccessCache,
    pub active: ActiveSessions,
    pub metrics: Arc<ProxyMetrics>,
    pub audit: Option<portcullis_rpc::audit_spool::AuditSpool>,
}

impl Router {
    pub fn new(p: RouterParts) -> Self {
        Router {
            cluster_name: p.sites.local().name().to_string(),
            sites: p.sites,
            auth: p.auth,
            access: p.access,
            active: p.active,
            metrics: p.metrics,
            audit: p.audit,
        }
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
            Err(status) if crate::auth_rpc::auth_unreachable(&status) => Err(AskError::Unreachable(status.message().to_string())),
            Err(status) => Err(AskError::Refused(status.message().to_string())),
        }
    }

    /// Connects to `host[:port]` in `cluster` on behalf of `user`. Port 0 or 3022 means the
    /// node's own port.
    /// Every call counts as one session in the metrics, timed when it succeeds.
    pub async fn dial(&self, cluster: &str, host: &str, port: u16, user: &str) -> Result<Dialed, RouteError> {
        let started = tokio::time::Instant::now();
        let dialled = match self.sites.get(cluster) {
            Ok(site) if !site.is_online() => Err(RouteError::ClusterOffline(site.name().to_string())),
            // Checked before any dial: a user session never asks a leaf for its auth service.
            Ok(_) if host.starts_with(RESERVED_PREFIX) => Err(self.refuse_reserved(cluster, host, user).await),
            Ok(site) => site.dial(host, port, user).await,
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
        self.active.get()
    }

    /// Marks a session as active until the guard is dropped.
    pub fn track(&self) -> SessionGuard {
        self.active.0.fetch_add(1, Ordering::Relaxed);
        SessionGuard(self.active.clone())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::site::LocalSite;
    use crate::tunnel::Hub;

    #[tokio::test]
    async fn own_cluster_is_local_and_unconnected_leaves_are_named() {
        let channel = Channel::new(tonic::transport::Channel::from_static("http://127.0.0.1:1").connect_lazy());
        let hub = Hub::start("root.example.com", "proxy-1", "", Default::default()).unwrap();
        hub.set_leaf_cas([("leaf-b".to_string(), vec!["pem".to_string()])].into_iter().collect());
        let auth = AuthClient::new(channel);
        let local = LocalSite::new("root.example.com".into(), auth.clone(), AccessCache::empty());
        let sites = Arc::new(Sites::new(local, hub));
        let r = Router::new(RouterParts {
            sites: sites.clone(),
            auth,
            access: AccessCache::empty(),
            active: ActiveSessions::default(),
            metrics: Default::default(),
            audit: None,
        });
        assert!(!sites.get("").unwrap().is_leaf());
        assert_eq!(sites.get("root.example.com").unwrap().name(), "root.example.com");
        let e = sites.get("leaf").unwrap_err().to_string();
        assert_eq!(e, "cluster \"leaf\" is not found");
        let leaf = sites.get("leaf-b").unwrap();
        assert!(leaf.is_leaf() && !leaf.is_online() && !sites.is_online("leaf-b"));
        let e = r.dial("leaf-b", "node", 0, "alice").await.err().unwrap().to_string();
        assert_eq!(e, "cluster \"leaf-b\" is offline: no reverse tunnel from it is connected to this proxy");
        let e = leaf.dial("node", 0, "alice").await.err().unwrap().to_string();
        assert!(e.contains("is offline"), "{e}");
        let g = r.track();
        assert_eq!(r.active_sessions(), 1);
        drop(g);
        assert_eq!(r.active_sessions(), 0);
    }
}
