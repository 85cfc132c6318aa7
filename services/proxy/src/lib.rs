//! Portcullis proxy: the HTTPS web API, the SSH front door to nodes, and the reverse-tunnel
//! server for leaf clusters.
#![forbid(unsafe_code)]

pub mod auth_rpc;
pub mod drain;
pub mod error;
pub mod heartbeat;
pub mod metrics;
pub mod route;
pub mod site;
pub mod ssh;
pub mod state;
pub mod tunnel;
pub mod web;
#[cfg(test)]
mod access_tests;
#[cfg(test)]
mod run_tests;
#[cfg(test)]
mod testutil;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_config::ProxySettings;
use portcullis_pki::x509::AUTH_SERVER_NAME;
use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_rpc::ClientTls;
use portcullis_rpc::join::join_or_load;
use portcullis_types::HostPort;

pub use error::ProxyError;
pub use state::ProxyState;

/// The sockets the proxy serves, bound by the caller (so tests can use port 0).
pub struct ProxyListeners {
    /// HTTPS web API.
    pub web: std::net::TcpListener,
    /// SSH front door.
    pub ssh: tokio::net::TcpListener,
    /// Reverse-tunnel server for leaf agents; `None` serves no leaf clusters.
    pub tunnel: Option<tokio::net::TcpListener>,
    /// Diagnostic listener (`/metrics`, `/healthz`, `/readyz`); `None` runs none.
    pub diag: Option<tokio::net::TcpListener>,
}

/// The access snapshot kept under data_dir.
pub const ACCESS_CACHE_FILE: &str = "access-cache.json";
/// How long stopping may wait for open connections.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Joins (or loads the identity), then serves the web API, SSH and the tunnel listener until
/// `shutdown` resolves or a server fails.
pub async fn run(
    settings: ProxySettings,
    listeners: ProxyListeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ProxyError> {
    // Served from the start (liveness while joining); ready after the first auth heartbeat.
    let probes = portcullis_diag::Diag::new(metrics::WAITING_FOR_AUTH);
    let _diag_server = listeners.diag.map(|l| portcullis_diag::spawn(l, probes.clone()));
    let local = |what: &str, r: std::io::Result<SocketAddr>| {
        r.map_err(|e| ProxyError::io(format!("reading the {what} listener address"), e))
    };
    let web_addr = local("web", listeners.web.local_addr())?;
    let ssh_addr = local("SSH", listeners.ssh.local_addr())?;
    let tunnel_addr = match &listeners.tunnel {
        Some(l) => Some(local("tunnel", l.local_addr())?),
        None => None,
    };

    let id = join_or_load(&settings.common, "proxy", &host_principals(&settings, ssh_addr)).await?;
    if settings.common.auth_servers.is_empty() {
        return Err(ProxyError::NoAuthServer);
    }
    // Every configured auth server: calls spread over the live ones and fail over.
    let channel = portcullis_rpc::connect_auth_lazy(&settings.common.auth_servers, &ClientTls::from_identity(&id, AUTH_SERVER_NAME))?;
    let verifier = Arc::new(web::tls::ReloadableClientVerifier::new(&id.tls_ca_pems)?);
    let cas = state::TrustedCas {
        ssh_user: state::parse_ssh_cas(&id.ssh_user_cas),
        tls_pems: id.tls_ca_pems.clone(),
    };
    let addrs = state::Addrs {
        web: web_addr,
        ssh: ssh_addr,
        tunnel: tunnel_addr,
        tunnel_configured: settings.tunnel_listen_addr,
        public_addr: settings.public_addr.clone(),
        ssh_public_addr: settings.ssh_public_addr.clone(),
        tunnel_public_addr: settings.tunnel_public_addr.clone(),
    };
    let announcement = heartbeat::Announcement {
        hostname: settings.common.nodename.clone(),
        addr: settings.public_addr.clone().unwrap_or_else(|| web_addr.to_string()),
        tunnel_addr: settings
            .tunnel_public_addr
            .clone()
            .or_else(|| tunnel_addr.map(|a| a.to_string()))
            .unwrap_or_default(),
        labels: settings.common.labels.clone(),
    };
    let hub = tunnel::Hub::start(&id.cluster_name, &id.name, &announcement.tunnel_addr, Default::default())?;
    // The parts in dependency order: each is complete when the next one takes it.
    let auth = AuthClient::new(channel);
    // Routing, listings and login checks answer from this cache, so sessions keep working
    // while no auth server answers (and after a restart, from the file).
    let access = portcullis_access::AccessCache::start_for_cluster(
        auth.clone(),
        settings.common.data_dir.join(ACCESS_CACHE_FILE),
        &id.cluster_name,
    );
    // Audit events the proxy writes itself wait on disk while auth is unreachable.
    let spool_dir = settings.common.data_dir.join(portcullis_rpc::audit_spool::SPOOL_DIR);
    let audit = portcullis_rpc::audit_spool::AuditSpool::open(&spool_dir, auth.clone()).map_err(portcullis_rpc::RpcError::from)?;
    audit.register_metrics(&probes.metrics);
    let proxy_metrics = Arc::new(metrics::ProxyMetrics::new(probes.ready.clone(), heartbeat::INTERVAL * 3));
    let active = route::ActiveSessions::default();
    let counted = active.clone();
    proxy_metrics.register(&probes.metrics, move || counted.get());
    let state = Arc::new(ProxyState::new(state::StateParts {
        cluster_name: id.cluster_name.clone(),
        host_id: id.name.clone(),
        nodename: settings.common.nodename.clone(),
        auth,
        cas,
        client_verifier: verifier.clone(),
        addrs,
        hub: hub.clone(),
        access,
        metrics: proxy_metrics,
        active,
        audit: Some(audit),
    }));

    let tls = web::tls::server_config(&settings.https_keypairs, &web_names(&settings, web_addr), verifier.verifier())?;
    let limits = settings.limits;
    portcullis_net::raise_fd_limit();
    // The one stop signal of every server (and the heartbeat).
    let drain = drain::Drain::new();
    let mut web_task =
        tokio::spawn(web::start_limited(state.clone(), listeners.web, tls, limits, settings.rate_limit, drain.clone())?);

    let mut ssh_config = ssh::config(&id)?;
    ssh_config.keepalive_interval = Some(limits.keepalive_interval);
    let ssh_config = Arc::new(ssh_config);
    let drain_timeout = settings.drain_timeout;
    let mut ssh_task =
        tokio::spawn(ssh::serve_limited(state.clone(), listeners.ssh, ssh_config, drain.clone(), drain_timeout, limits));

    let mut tunnel_task = match listeners.tunnel {
        Some(listener) => {
            let agents = tunnel::tls::LeafAgentVerifier::verifier(hub.leaf_cas(), Some(hub.refresh_handle()));
            let tls = Arc::new(tunnel::tls::server_config(&id, Arc::new(agents))?);
            tokio::spawn(tunnel::server::serve_limited(hub.clone(), listener, tls, limits, drain.clone()))
        }
        // Never finishes: no tunnel listener means no leaf clusters, not a failure.
        None => tokio::spawn(std::future::pending::<Result<(), ProxyError>>()),
    };

    let heartbeat = tokio::spawn(heartbeat::run(state.clone(), announcement, drain.clone()));

    tracing::info!(
        cluster = %state.cluster_name, host_id = %state.host_id, web = %web_addr, ssh = %ssh_addr,
        tunnel = %tunnel_addr.map(|a| a.to_string()).unwrap_or_else(|| "none".into()),
        "proxy started"
    );

    let result = tokio::select! {
        _ = shutdown => {
            tracing::info!("proxy shutting down");
            Ok(())
        }
        r = &mut web_task => Err(ProxyError::Server {
            server: "HTTPS",
            reason: match r {
                Ok(Ok(())) => "stopped unexpectedly".into(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            },
        }),
        r = &mut ssh_task => Err(match r {
            Ok(Ok(())) => ProxyError::Server { server: "SSH", reason: "stopped unexpectedly".into() },
            Ok(Err(e)) => e,
            Err(e) => ProxyError::Server { server: "SSH", reason: e.to_string() },
        }),
        r = &mut tunnel_task => Err(match r {
            Ok(Ok(())) => ProxyError::Server { server: "tunnel", reason: "stopped unexpectedly".into() },
            Ok(Err(e)) => e,
            Err(e) => ProxyError::Server { server: "tunnel", reason: e.to_string() },
        }),
    };

    // Agents are told to reconnect elsewhere (by the tunnel server), listeners close, open
    // sessions get `drain_timeout` to finish.
    drain.start();
    // The web server answers the requests in progress (for up to 5 s), then ends.
    if !web_task.is_finished() {
        let _ = tokio::time::timeout(STOP_GRACE, &mut web_task).await;
    }
    if !ssh_task.is_finished() {
        // The SSH server lets open sessions finish for up to `drain_timeout` itself.
        let _ = tokio::time::timeout(drain_timeout + STOP_GRACE, &mut ssh_task).await;
    }
    if !tunnel_task.is_finished() && tunnel_addr.is_some() {
        // Sessions to leaves ride on Dial streams: give them the same time to finish.
        let _ = tokio::time::timeout(drain_timeout + STOP_GRACE, &mut tunnel_task).await;
    }
    tunnel_task.abort();
    let _ = tokio::time::timeout(STOP_GRACE, heartbeat).await;
    result
}

/// `host` of `host:port`, `[v6]` of `[v6]:port` (ready for a new `:port`); the input itself
/// when it is no address.
pub(crate) fn host_of(addr: &str) -> String {
    addr.parse::<HostPort>().map(|a| a.host_bracketed()).unwrap_or_else(|_| addr.to_string())
}

/// A host usable as a certificate name (IPv6 without brackets).
fn bare_host(addr: &str) -> String {
    addr.parse::<HostPort>().map(|a| a.host().to_string()).unwrap_or_else(|_| addr.to_string())
}

/// Extra principals of the proxy's SSH host certificate: the names users dial it by.
fn host_principals(settings: &ProxySettings, ssh_addr: SocketAddr) -> Vec<String> {
    let configured = [&settings.public_addr, &settings.ssh_public_addr, &settings.tunnel_public_addr];
    let mut out: Vec<String> = configured.into_iter().flatten().map(|a| bare_host(a)).collect();
    out.extend(["localhost", "127.0.0.1", "::1"].map(String::from));
    if !ssh_addr.ip().is_unspecified() {
        out.push(ssh_addr.ip().to_string());
    }
    dedup(out)
}

/// Names of the self-signed HTTPS certificate.
fn web_names(settings: &ProxySettings, web_addr: SocketAddr) -> Vec<String> {
    let mut out = vec!["localhost".to_string(), "127.0.0.1".to_string(), settings.common.nodename.clone()];
    if let Some(p) = &settings.public_addr {
        out.push(bare_host(p));
    }
    if !web_addr.ip().is_unspecified() {
        out.push(web_addr.ip().to_string());
    }
    dedup(out)
}

fn dedup(v: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    v.into_iter().filter(|s| !s.is_empty() && seen.insert(s.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_ports() {
        assert_eq!(host_of("example.com:3080"), "example.com");
        assert_eq!(host_of("example.com"), "example.com");
        assert_eq!(host_of("[::1]:3080"), "[::1]");
        assert_eq!(host_of("127.0.0.1:1"), "127.0.0.1");
        assert_eq!(host_of("::1"), "[::1]");
        assert_eq!(bare_host("[::1]:3080"), "::1");
        assert_eq!(bare_host("proxy.example.com"), "proxy.example.com");
    }

    #[test]
    fn principals_cover_public_names_and_loopback() {
        let flags = portcullis_config::CommonFlags { nodename: Some("proxy-1".into()), ..Default::default() };
        let file = portcullis_config::FileConfig::from_yaml(
            "proxy_service:\n  public_addr: proxy.example.com:3080\n  ssh_public_addr: ssh.example.com\n",
        )
        .unwrap();
        let s = ProxySettings::from_parts(&file, &flags).unwrap();
        let p = host_principals(&s, "0.0.0.0:3023".parse().unwrap());
        assert_eq!(p, vec!["proxy.example.com", "ssh.example.com", "localhost", "127.0.0.1", "::1"]);
        let n = web_names(&s, "10.0.0.9:3080".parse().unwrap());
        assert_eq!(n, vec!["localhost", "127.0.0.1", "proxy-1", "proxy.example.com", "10.0.0.9"]);
    }
}
