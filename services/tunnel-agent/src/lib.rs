//! The leaf-side reverse-tunnel agent: joins its own (leaf) cluster, follows the cluster's
//! trusted_cluster resources and keeps a tunnel up to every root proxy of each enabled one.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod dial;
pub mod error;
pub mod link;
pub mod metrics;
pub mod queries;
pub mod tunnel;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use portcullis_access::AccessCache;
use portcullis_config::AgentSettings;
use portcullis_pki::Identity;
use portcullis_pki::x509::AUTH_SERVER_NAME;
use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_proto::auth::{ListTrustedClustersRequest, TrustedClusterTarget};
use portcullis_rpc::{ClientTls, connect_auth_lazy};
use portcullis_rpc::Channel;

pub use error::AgentError;

/// Version announced in `Hello`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Time between two looks at the trusted clusters; also bounds how long a disabled
/// cluster keeps its tunnels.
pub const POLL_INTERVAL: Duration = Duration::from_secs(3);
/// The access snapshot kept under data_dir.
pub const ACCESS_CACHE_FILE: &str = "access-cache.json";
/// Longest wait for an answer from the leaf auth service.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(8);

/// What every link, tunnel and dial of this agent shares.
pub struct Agent {
    /// The agent's identity in its own (leaf) cluster.
    pub identity: Identity,
    /// The leaf auth service.
    pub auth: AuthClient<Channel>,
    /// The leaf's nodes, roles and trust as its auth last said: dials, listings and login
    /// checks answer from it, so they keep working while the leaf auth is down.
    pub access: AccessCache,
    /// Where the leaf auth service listens: the target of `@auth` dials.
    pub auth_addr: String,
    /// Keeps `tunnel.dial` events on disk until the leaf auth acknowledges them; none when
    /// run without a data_dir ([`run_with_identity`]): events then go straight to auth, once.
    pub audit: Option<portcullis_rpc::audit_spool::AuditSpool>,
    /// Turns true when the agent stops; for work that outlives its tunnel (drained sessions).
    stopped: tokio::sync::watch::Receiver<bool>,
    /// Tunnels, dials and polls for the diagnostic listener.
    pub metrics: Arc<metrics::AgentMetrics>,
}

impl Agent {
    /// The leaf cluster's name.
    pub fn cluster(&self) -> &str {
        &self.identity.cluster_name
    }

    /// Resolves when the agent stops.
    pub(crate) async fn stopped(&self) {
        let mut rx = self.stopped.clone();
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// Runs the agent until `shutdown` completes: joins the leaf cluster (or loads the identity
/// kept from an earlier join), then follows its trusted clusters.
pub async fn run(
    settings: AgentSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    run_with_diag(settings, None, shutdown).await
}

/// [`run`], also serving `/metrics`, `/healthz` and `/readyz` on `diag` when given. Ready
/// after the first successful `ListTrustedClusters` from the leaf auth service.
pub async fn run_with_diag(
    settings: AgentSettings,
    diag: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    // Served from the start, so liveness probes answer while the agent joins.
    let probes = portcullis_diag::Diag::new(metrics::WAITING_FOR_AUTH);
    let _diag_server = diag.map(|l| portcullis_diag::spawn(l, probes.clone()));
    let agent_metrics = Arc::new(metrics::AgentMetrics::new(probes.ready.clone()));
    agent_metrics.register(&probes.metrics);
    let id = portcullis_rpc::join::join_or_load(&settings.common, "agent", &[]).await?;
    // `@auth` dials go to the first address; API calls spread over all and fail over.
    let auth_addr = settings.common.auth_servers.first().ok_or(AgentError::NoAuthServer)?.clone();
    let auth = AuthClient::new(connect_auth_lazy(&settings.common.auth_servers, &ClientTls::from_identity(&id, AUTH_SERVER_NAME))?);
    let access = AccessCache::start_for_cluster(auth.clone(), settings.common.data_dir.join(ACCESS_CACHE_FILE), &id.cluster_name);
    let spool_dir = settings.common.data_dir.join(portcullis_rpc::audit_spool::SPOOL_DIR);
    let audit = portcullis_rpc::audit_spool::AuditSpool::open(&spool_dir, auth.clone()).map_err(portcullis_rpc::RpcError::from)?;
    audit.register_metrics(&probes.metrics);
    run_agent(id, auth, auth_addr, access, Some(audit), agent_metrics, shutdown).await
}

/// The agent proper, for an identity already at hand (tests skip the join this way).
pub async fn run_with_identity(
    identity: Identity,
    auth: AuthClient<Channel>,
    auth_addr: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    // No data_dir here: the cache follows auth in memory only.
    let access = AccessCache::start_in_memory(auth.clone());
    run_agent(identity, auth, auth_addr, access, None, Default::default(), shutdown).await
}

async fn run_agent(
    identity: Identity,
    auth: AuthClient<Channel>,
    auth_addr: String,
    access: AccessCache,
    audit: Option<portcullis_rpc::audit_spool::AuditSpool>,
    metrics: Arc<metrics::AgentMetrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let (stop_tx, stopped) = tokio::sync::watch::channel(false);
    let agent = Arc::new(Agent { identity, auth, access, auth_addr, audit, stopped, metrics });
    tracing::info!(
        agent_id = %agent.identity.name,
        cluster = %agent.cluster(),
        "tunnel agent started; following the trusted clusters of {}",
        agent.cluster()
    );
    let mut links: HashMap<String, link::LinkHandle> = HashMap::new();
    tokio::select! {
        () = shutdown => {}
        () = follow(&agent, &mut links) => {}
    }
    // Dropping a link handle stops the link and with it every tunnel and dialled connection.
    links.clear();
    let _ = stop_tx.send(true);
    tracing::info!("tunnel agent stopped");
    Ok(())
}

/// Asks the auth service for the trusted clusters every [`POLL_INTERVAL`], forever.
async fn follow(agent: &Arc<Agent>, links: &mut HashMap<String, link::LinkHandle>) {
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticker.tick().await;
        let mut client = agent.auth.clone();
        let answer =
            tokio::time::timeout(CALL_TIMEOUT, client.list_trusted_clusters(ListTrustedClustersRequest {})).await;
        // On failure the links keep running: an auth restart must not cut the tunnels.
        let reason = match answer {
            Ok(Ok(resp)) => {
                agent.metrics.heartbeat.succeeded();
                if failing {
                    tracing::info!("the auth service lists trusted clusters again");
                    failing = false;
                }
                reconcile(agent, links, resp.into_inner().clusters);
                continue;
            }
            Ok(Err(status)) => status.message().to_string(),
            Err(_) => format!("no answer in {CALL_TIMEOUT:?}"),
        };
        agent.metrics.heartbeat.failed();
        // Warn once per outage; the poll repeats every few seconds.
        if failing {
            tracing::debug!("listing trusted clusters failed again: {reason}");
        } else {
            tracing::warn!("cannot list trusted clusters from the auth service at {}: {reason}", agent.auth_addr);
            failing = true;
        }
    }
}

/// Starts, restarts and stops links so that exactly the enabled targets have one.
fn reconcile(agent: &Arc<Agent>, links: &mut HashMap<String, link::LinkHandle>, targets: Vec<TrustedClusterTarget>) {
    let mut seen = HashSet::new();
    for t in targets {
        if t.name.is_empty() || !seen.insert(t.name.clone()) {
            continue;
        }
        if !t.enabled {
            if links.remove(&t.name).is_some() {
                tracing::info!("trusted cluster {} is disabled: closing its tunnels", t.name);
            }
            continue;
        }
        match links.get(&t.name) {
            Some(l) if l.same_target(&t) && l.is_running() => continue,
            Some(l) if !l.is_running() => {
                tracing::warn!("the link to root cluster {} stopped unexpectedly: restarting it", t.name)
            }
            Some(_) => tracing::info!("trusted cluster {} changed (tunnel_addr or CA): reconnecting", t.name),
            None => tracing::info!("following trusted cluster {} at {}", t.name, t.tunnel_addr),
        }
        links.insert(t.name.clone(), link::spawn(agent.clone(), t));
    }
    links.retain(|name, _| {
        let keep = seen.contains(name);
        if !keep {
            tracing::info!("trusted cluster {name} was removed: closing its tunnels");
        }
        keep
    });
}
