//! State shared by the web API, the SSH front door and the heartbeat: who this proxy is, the
//! auth client, the access cache, the CAs it currently trusts, the sites it routes to, and
//! the addresses it serves.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use portcullis_access::AccessCache;
use portcullis_proto::auth::CertAuthorities;
use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_rpc::Channel;
use portcullis_rpc::audit_spool::AuditSpool;
use russh::keys::PublicKey;

pub use crate::auth_rpc::{AUTH_CALL_TIMEOUT, auth_call, auth_unreachable};
use crate::metrics::ProxyMetrics;
use crate::route::{ActiveSessions, Router, RouterParts};
use crate::site::{LocalSite, Sites};
use crate::tunnel::Hub;
use crate::web::tls::ReloadableClientVerifier;

/// Addresses the proxy is bound to and the public ones it was configured with.
#[derive(Debug, Clone)]
pub struct Addrs {
    pub web: SocketAddr,
    pub ssh: SocketAddr,
    pub tunnel: Option<SocketAddr>,
    /// Port of the tunnel listener when none is bound (the configured one).
    pub tunnel_configured: SocketAddr,
    pub public_addr: Option<String>,
    pub ssh_public_addr: Option<String>,
    pub tunnel_public_addr: Option<String>,
}

/// The CAs whose certificates the proxy accepts.
#[derive(Debug, Clone, Default)]
pub struct TrustedCas {
    /// SSH user CAs (this cluster's, then trusted ones).
    pub ssh_user: Vec<PublicKey>,
    /// PEM X.509 CAs for client certificates.
    pub tls_pems: Vec<String>,
}

/// Everything the proxy's parts share.
#[derive(Debug)]
pub struct ProxyState {
    pub cluster_name: String,
    pub host_id: String,
    pub nodename: String,
    auth: AuthClient<Channel>,
    /// Nodes, leaves and roles as auth last said (empty: ask auth).
    access: AccessCache,
    /// This cluster and the trusted leaves: where requests go.
    pub sites: Arc<Sites>,
    /// User sessions through the sites, counted.
    pub router: Router,
    cas: RwLock<TrustedCas>,
    pub client_verifier: Arc<ReloadableClientVerifier>,
    pub addrs: Addrs,
    /// Metrics and readiness (served only when a diagnostic listener is configured).
    pub metrics: Arc<ProxyMetrics>,
}

/// What a [`ProxyState`] is built from, each part made before it (so nothing is set later).
#[derive(Debug)]
pub struct StateParts {
    pub cluster_name: String,
    pub host_id: String,
    pub nodename: String,
    pub auth: AuthClient<Channel>,
    pub cas: TrustedCas,
    pub client_verifier: Arc<ReloadableClientVerifier>,
    pub addrs: Addrs,
    /// The leaves' tunnels.
    pub hub: Arc<Hub>,
    /// Routing, listings and login checks answer from it while no auth server does.
    pub access: AccessCache,
    pub metrics: Arc<ProxyMetrics>,
    /// Counts the piped sessions; the metrics read it too.
    pub active: ActiveSessions,
    /// Where the proxy's own audit events wait for auth (`None`: sent once, as in tests).
    pub audit: Option<AuditSpool>,
}

impl ProxyState {
    pub fn new(p: StateParts) -> Self {
        let local = LocalSite::new(p.cluster_name.clone(), p.auth.clone(), p.access.clone());
        let sites = Arc::new(Sites::new(local, p.hub));
        let router = Router::new(RouterParts {
            sites: sites.clone(),
            auth: p.auth.clone(),
            access: p.access.clone(),
            active: p.active,
            metrics: p.metrics.clone(),
            audit: p.audit,
        });
        ProxyState {
            cluster_name: p.cluster_name,
            host_id: p.host_id,
            nodename: p.nodename,
            auth: p.auth,
            access: p.access,
            sites,
            router,
            cas: RwLock::new(p.cas),
            client_verifier: p.client_verifier,
            addrs: p.addrs,
            metrics: p.metrics,
        }
    }

    /// The access snapshot, if the cache holds one (else callers ask auth, as before).
    pub fn access_snapshot(&self) -> Option<Arc<portcullis_access::AccessSnapshot>> {
        self.access.current()
    }

    /// A client for one call (tonic clients are cheap clones over one channel).
    pub fn auth(&self) -> AuthClient<Channel> {
        self.auth.clone()
    }

    /// The SSH user CAs trusted right now.
    pub fn ssh_user_cas(&self) -> Vec<PublicKey> {
        self.cas.read().unwrap_or_else(|p| p.into_inner()).ssh_user.clone()
    }

    /// Adopts the CAs an auth answer carries. Empty lists are ignored so that a partial
    /// answer never leaves the proxy trusting nothing.
    pub fn update_cas(&self, cas: &CertAuthorities) {
        let ssh_user = parse_ssh_cas(&cas.ssh_user_ca);
        let mut cur = self.cas.write().unwrap_or_else(|p| p.into_inner());
        if !ssh_user.is_empty() && ssh_user != cur.ssh_user {
            tracing::info!(count = ssh_user.len(), "trusted SSH user CAs updated");
            cur.ssh_user = ssh_user;
        }
        if !cas.tls_ca_pem.is_empty() && cas.tls_ca_pem != cur.tls_pems {
            match self.client_verifier.reload(&cas.tls_ca_pem) {
                Ok(()) => {
                    tracing::info!(count = cas.tls_ca_pem.len(), "trusted TLS CAs updated");
                    cur.tls_pems = cas.tls_ca_pem.clone();
                }
                Err(e) => tracing::warn!("keeping the previous TLS CAs: {e}"),
            }
        }
    }
}

/// Parses authorized_keys lines, skipping (and logging) unreadable ones.
pub fn parse_ssh_cas(lines: &[String]) -> Vec<PublicKey> {
    lines
        .iter()
        .filter_map(|l| match portcullis_pki::ssh::parse_public_key(l) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!("ignoring an unreadable SSH CA key: {e}");
                None
            }
        })
        .collect()
}
