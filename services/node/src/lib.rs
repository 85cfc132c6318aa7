//! The Portcullis node: an SSH server for one host that trusts the cluster's user CA, decides
//! logins from a watched cache of the cluster's access rules, and announces itself with heartbeats.
#![forbid(unsafe_code)]

pub mod audit;
pub mod backend;
pub mod error;
pub mod heartbeat;
pub mod metrics;
mod pty_modes;
pub mod server;
pub mod session;
pub mod users;

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use portcullis_access::AccessCache;
use portcullis_config::NodeSettings;
use portcullis_pki::Identity;
use portcullis_types::HostPort;
use portcullis_pki::ssh::{parse_certificate, parse_private_key};
use portcullis_pki::x509::AUTH_SERVER_NAME;
use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_rpc::{ClientTls, connect_auth_lazy};
use russh::{MethodKind, MethodSet, SshId};
use portcullis_net::{ConnGuard, ConnectionLimits, Gate, GatedListener, PreAuth};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use error::NodeError;

use crate::audit::Auditor;
use crate::backend::{AuthBackend, CachedAuth};
use crate::heartbeat::Announcement;
use crate::server::{Connection, NodeContext};

/// Version announced in heartbeats and the SSH banner.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What a client that did not authenticate in time is told.
const PRE_AUTH_EXPIRED: &str = "authentication timed out (connection_limits.pre_auth_timeout)";
/// The access snapshot kept under data_dir, so a restart with auth down still decides logins.
pub const ACCESS_CACHE_FILE: &str = "access-cache.json";
/// How long open connections get to close when the node stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The host part of `host:port` (`[v6]:port` too); the whole string when it is no address.
fn host_of(addr: &str) -> String {
    addr.parse::<HostPort>().map_or_else(|_| addr.trim().to_string(), |a| a.host().to_string())
}

/// The address clients and proxies should dial: 127.0.0.1 stands for a wildcard bind.
pub fn advertised_addr(public_addr: Option<&str>, local: SocketAddr) -> String {
    match public_addr {
        Some(a) => a.to_string(),
        None if local.ip().is_unspecified() => format!("127.0.0.1:{}", local.port()),
        None => local.to_string(),
    }
}

/// Extra principals for the host certificate: the addresses the node is reached at.
pub fn host_principals(settings: &NodeSettings, local: SocketAddr) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(a) = &settings.public_addr {
        out.push(host_of(a));
    }
    let ip = local.ip();
    if ip.is_unspecified() || ip.is_loopback() {
        out.push("127.0.0.1".into());
        out.push("localhost".into());
        if ip.is_ipv6() {
            out.push("::1".into());
        }
    } else {
        out.push(ip.to_string());
    }
    out.push(settings.common.nodename.clone());
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|p| !p.is_empty() && seen.insert(p.clone()));
    out
}

/// The SSH server configuration: the node's host key and host certificate, public keys
/// (certificates) as the only login method.
pub fn ssh_config(id: &Identity) -> Result<russh::server::Config, NodeError> {
    let key = parse_private_key(id.ssh_private_key.expose())?;
    let cert = parse_certificate(&id.ssh_cert)?;
    Ok(russh::server::Config {
        server_id: SshId::Standard(Cow::Owned(format!("SSH-2.0-Portcullis_{VERSION}"))),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(200),
        // OpenSSH probes with "none" first; answering it at once costs nothing.
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![key],
        certificates: vec![cert],
        // Idle shells are normal; dead peers are found by keepalives instead.
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 3,
        nodelay: true,
        preferred: portcullis_pki::transport::preferred(),
        ..Default::default()
    })
}

/// Runs the node on `listener` until `shutdown` completes: joins the cluster (or loads the
/// identity kept from an earlier join), heartbeats to the auth service, and serves SSH.
pub async fn run(
    settings: NodeSettings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    run_with_diag(settings, listener, None, shutdown).await
}

/// [`run`], also serving `/metrics`, `/healthz` and `/readyz` on `diag` when given. Ready
/// after the first successful heartbeat to the auth service.
pub async fn run_with_diag(
    settings: NodeSettings,
    listener: TcpListener,
    diag: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    // Served from the start, so liveness probes answer while the node joins.
    let probes = portcullis_diag::Diag::new(metrics::WAITING_FOR_AUTH);
    let _diag_server = diag.map(|l| portcullis_diag::spawn(l, probes.clone()));
    let node_metrics = Arc::new(metrics::NodeMetrics::new(probes.ready.clone()));
    node_metrics.register(&probes.metrics);
    let local = listener.local_addr()?;
    let principals = host_principals(&settings, local);
    let id = portcullis_rpc::join::join_or_load(&settings.common, "node", &principals).await?;
    if settings.common.auth_servers.is_empty() {
        return Err(NodeError::NoAuthServer);
    }
    // Every configured auth server: calls spread over the live ones and fail over.
    let auth = AuthClient::new(connect_auth_lazy(&settings.common.auth_servers, &ClientTls::from_identity(&id, AUTH_SERVER_NAME))?);
    let mut config = ssh_config(&id)?;
    config.keepalive_interval = Some(settings.limits.keepalive_interval);
    let config = Arc::new(config);
    let nodename =
        if settings.common.nodename.is_empty() { id.nodename.clone() } else { settings.common.nodename.clone() };
    let user_cas = Arc::new(RwLock::new(heartbeat::parse_cas(&id.ssh_user_cas)));
    // Logins are decided from this cache, so they keep working while no auth server answers.
    let access = AccessCache::start_for_cluster(
        auth.clone(),
        settings.common.data_dir.join(ACCESS_CACHE_FILE),
        &id.cluster_name,
    );
    let own_record = portcullis_types::Node::new(
        id.name.clone(),
        nodename.clone(),
        advertised_addr(settings.public_addr.as_deref(), local),
        settings.common.labels.clone(),
    );
    let backend: Arc<dyn AuthBackend> = Arc::new(CachedAuth::new(auth.clone(), access.clone(), own_record));
    // Audit events wait on disk while auth is unreachable, and across restarts.
    let spool_dir = settings.common.data_dir.join(portcullis_rpc::audit_spool::SPOOL_DIR);
    let audit = Auditor::open(&spool_dir, backend.clone()).map_err(portcullis_rpc::RpcError::from)?;
    audit.spool().register_metrics(&probes.metrics);
    let ctx = Arc::new(NodeContext {
        nodename: nodename.clone(),
        node_id: id.name.clone(),
        auth: backend.clone(),
        audit,
        user_cas: user_cas.clone(),
        cas_refreshed: Default::default(),
        metrics: node_metrics.clone(),
    });
    let announcement = Announcement {
        host_id: id.name.clone(),
        hostname: nodename.clone(),
        addr: advertised_addr(settings.public_addr.as_deref(), local),
        labels: settings.common.labels.clone(),
        version: VERSION.to_string(),
    };
    let follow = tokio::spawn(heartbeat::follow_cache(access, user_cas.clone()));
    let beat = tokio::spawn(heartbeat::run(auth, announcement, user_cas, node_metrics.heartbeat.clone()));
    tracing::info!(node = %nodename, host_id = %id.name, cluster = %id.cluster_name, "SSH service listening on {local}");
    serve_ssh_limited(listener, config, ctx, settings.limits, shutdown).await;
    beat.abort();
    follow.abort();
    tracing::info!("SSH service stopped");
    Ok(())
}

/// Accepts SSH connections on `listener` until `shutdown` completes, then disconnects the
/// open ones. [`run`] calls it; tests call it directly with a stand-in [`AuthBackend`].
pub async fn serve_ssh(
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    ctx: Arc<NodeContext>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    serve_ssh_limited(listener, config, ctx, ConnectionLimits::NODE, shutdown).await
}

/// [`serve_ssh`] with `limits`: connections beyond the per-address or total cap are closed
/// at once, and a client that has not logged in within the pre-authentication timeout
/// (counted from the TCP accept) is disconnected.
pub async fn serve_ssh_limited(
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    ctx: Arc<NodeContext>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    portcullis_net::raise_fd_limit();
    let listener = GatedListener::new(listener, Gate::new("node_ssh", limits));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            (socket, peer, place) = listener.accept() => {
                conns.spawn(serve(socket, peer, config.clone(), ctx.clone(), stop_rx.clone(), limits, place));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async { while conns.join_next().await.is_some() {} }).await;
    conns.abort_all();
}

/// How long a new connection may stay silent before the node stops looking for a trace
/// preamble (SSH clients send their version line at once).
const PREAMBLE_WAIT: Duration = Duration::from_millis(150);

/// Serves one SSH connection until it ends or the node stops.
async fn serve(
    socket: TcpStream,
    peer: SocketAddr,
    config: Arc<russh::server::Config>,
    ctx: Arc<NodeContext>,
    mut stop: watch::Receiver<bool>,
    limits: ConnectionLimits,
    _place: ConnGuard,
) {
    let deadline = tokio::time::Instant::now() + limits.pre_auth_timeout;
    let mut socket = socket;
    // A proxy or agent may send its trace context first (see portcullis_telemetry::preamble).
    let trace = portcullis_telemetry::preamble::read(&mut socket, PREAMBLE_WAIT).await;
    let pre_auth = PreAuth::default();
    let handler = Connection::new(ctx, peer.to_string()).with_trace(trace).with_pre_auth(pre_auth.clone());
    let socket = pre_auth.wrap(socket);
    let session = match tokio::time::timeout(limits.handshake_timeout, russh::server::run_stream(config, socket, handler)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!("SSH connection from {peer} failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!("SSH connection from {peer} sent no version line in time");
            return;
        }
    };
    let handle = session.handle();
    let goodbye = handle.clone();
    let say_why = async move {
        let _ = goodbye.disconnect(russh::Disconnect::ByApplication, PRE_AUTH_EXPIRED.into(), "en".into()).await;
    };
    tokio::select! {
        result = pre_auth.drive(session, deadline, say_why) => match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!("SSH connection from {peer} ended: {e}"),
            Err(_) => tracing::debug!(%peer, "SSH client did not log in within {}s: disconnected", limits.pre_auth_timeout.as_secs()),
        },
        () = async { let _ = stop.wait_for(|stopped| *stopped).await; } => {
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, "the node is shutting down".into(), "en".into())
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_advertised_addresses() {
        assert_eq!(host_of("10.0.5.2:3022"), "10.0.5.2");
        assert_eq!(host_of("[::1]:3022"), "::1");
        assert_eq!(host_of("node.example.com"), "node.example.com");
        let wild: SocketAddr = "0.0.0.0:4022".parse().unwrap();
        assert_eq!(advertised_addr(None, wild), "127.0.0.1:4022");
        assert_eq!(advertised_addr(Some("n:3022"), wild), "n:3022");
        let bound: SocketAddr = "10.1.2.3:3022".parse().unwrap();
        assert_eq!(advertised_addr(None, bound), "10.1.2.3:3022");
    }
}
