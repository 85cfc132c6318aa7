//! State shared by the web API, the SSH front door, the tunnel server and the heartbeat: who
//! this proxy is, the auth client, the access cache, the CAs it currently trusts, the leaf
//! tunnels, and the addresses it serves.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use portcullis_proto::auth::CertAuthorities;
use portcullis_proto::auth::auth_client::AuthClient;
use russh::keys::PublicKey;
use tonic::Status;
use portcullis_rpc::Channel;

use crate::metrics::ProxyMetrics;
use crate::route::Router;
use crate::tunnel::Hub;
use crate::web::tls::ReloadableClientVerifier;

/// How long any call to the auth service may take before the caller gives up.
pub const AUTH_CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Awaits an auth call with [`AUTH_CALL_TIMEOUT`], unwrapping the response.
pub async fn auth_call<T>(
    fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(AUTH_CALL_TIMEOUT, fut).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(Status::unavailable(format!(
            "no answer within {}s",
            AUTH_CALL_TIMEOUT.as_secs()
        ))),
    }
}

/// Whether `status` says no auth server could be reached (or none answered in time), so the
/// access cache's answer stands in for auth's. `Unknown` is what a connection broken mid-call
/// gives; auth itself never answers with it (its errors map to definite codes).
pub fn auth_unreachable(status: &Status) -> bool {
    matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown)
}

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
    pub router: Router,
    /// Leaf clusters' tunnels and CAs.
    pub tunnels: Arc<Hub>,
    cas: RwLock<TrustedCas>,
    pub client_verifier: Arc<ReloadableClientVerifier>,
    pub addrs: Addrs,
    /// Metrics and readiness (served only when a diagnostic listener is configured).
    pub metrics: Arc<ProxyMetrics>,
}

impl ProxyState {
    // One argument per shared part; a builder would only move the list elsewhere.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cluster_name: String,
        host_id: String,
        nodename: String,
        auth: AuthClient<Channel>,
        cas: TrustedCas,
        client_verifier: Arc<ReloadableClientVerifier>,
        addrs: Addrs,
        tunnels: Arc<Hub>,
    ) -> Self {
        let router = Router::new(cluster_name.clone(), auth.clone(), tunnels.clone());
        ProxyState {
            cluster_name,
            host_id,
            nodename,
            auth,
            router,
            tunnels,
            cas: RwLock::new(cas),
            client_verifier,
            addrs,
            metrics: Default::default(),
        }
    }

    /// Records into `metrics` (shared with the diagnostic listener) instead of private ones.
    pub fn with_metrics(mut self, metrics: Arc<ProxyMetrics>) -> Self {
        self.router.set_metrics(metrics.clone());
        self.metrics = metrics;
        self
    }

    /// Answers routing, listings and login checks from `access` (auth is asked only while it
    /// holds nothing).
    pub fn with_access(mut self, access: portcullis_access::AccessCache) -> Self {
        self.router.set_access(access);
        self
    }

    /// The access snapshot, if the cache holds one (else callers ask auth, as before).
    pub fn access_snapshot(&self) -> Option<Arc<portcullis_access::AccessSnapshot>> {
        self.router.access().current()
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
