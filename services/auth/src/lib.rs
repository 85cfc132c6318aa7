//! The Portcullis auth service: the cluster's certificate authorities, users, roles,
//! tokens, nodes and audit log, served over mutual-TLS gRPC.
#![forbid(unsafe_code)]

pub mod access;
pub mod audit;
pub mod audit_policy;
pub mod error;
pub mod grpc;
pub mod hashing;
pub mod lockout;
pub mod locks;
pub mod metrics;
pub mod nodes;
pub mod resources;
pub mod state;
pub mod tokens;
pub mod trust;
pub mod trust_client;
pub mod users;
pub mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use portcullis_config::AuthSettings;
use portcullis_proto::auth::auth_server::AuthServer;
use portcullis_storage::Backend;
use tokio::net::TcpListener;

pub use error::AuthError;
pub use state::AuthState;

/// Largest gRPC message accepted; bigger ones are refused with a clear status.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Where `tctl` finds its identity on the auth host.
pub fn admin_identity_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("admin-identity.json")
}

/// Runs the auth service on `listener` until `shutdown` resolves.
pub async fn run(
    settings: AuthSettings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AuthError> {
    run_with_diag(settings, listener, None, shutdown).await
}

/// [`run`], also serving `/metrics`, `/healthz` and `/readyz` on `diag` when given. Ready
/// once the gRPC server is listening.
pub async fn run_with_diag(
    settings: AuthSettings,
    listener: TcpListener,
    diag: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AuthError> {
    let probes = portcullis_diag::Diag::new("opening the auth service's state");
    // Served from the start, so liveness probes answer while the state opens.
    let _diag_server = diag.map(|l| portcullis_diag::spawn(l, probes.clone()));
    // CA keys and password hashes live there: whatever this process creates stays private.
    portcullis_pki::datadir::restrict_umask();
    // Opening may wait on a database: off the async threads.
    let opening = settings.clone();
    let state = tokio::task::spawn_blocking(move || state::open_data_dir(&opening))
        .await
        .map_err(|e| AuthError::Internal(format!("opening the auth state failed: {e}")))??;
    serve(settings, Arc::new(state), listener, probes, shutdown).await
}

/// [`run`] on a backend the caller opened: several in-process auth replicas sharing one
/// backend (each with its own data directory for its admin identity and local audit copy).
pub async fn run_on_backend(
    settings: AuthSettings,
    backend: Arc<dyn Backend>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AuthError> {
    let probes = portcullis_diag::Diag::new("opening the auth service's state");
    portcullis_pki::datadir::restrict_umask();
    let opening = settings.clone();
    let state = tokio::task::spawn_blocking(move || {
        portcullis_pki::datadir::prepare(&opening.common.data_dir).map_err(portcullis_pki::PkiError::from)?;
        AuthState::open(&opening, backend)
    })
    .await
    .map_err(|e| AuthError::Internal(format!("opening the auth state failed: {e}")))??;
    serve(settings, Arc::new(state), listener, probes, shutdown).await
}

/// Serves `state` on `listener` until `shutdown` resolves.
async fn serve(
    settings: AuthSettings,
    state: Arc<AuthState>,
    listener: TcpListener,
    probes: portcullis_diag::Diag,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AuthError> {
    state.write_admin_identity(&admin_identity_path(&settings.common.data_dir))?;
    let (cert, key) = state.server_identity(&[settings.common.nodename.clone()])?;
    let ca = vec![state.tls_ca.cert_pem().to_string()];
    // The handshakes run here, under the handshake timeout, not in tonic (which has none).
    let tls = portcullis_rpc::server::rustls_server_config(&cert, key.expose(), &ca, &ca)
        .map_err(|e| AuthError::Internal(e.to_string()))?;

    let sweeper = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let s = state.clone();
                match tokio::task::spawn_blocking(move || s.sweep_expired()).await {
                    Ok(Ok(n)) if n > 0 => tracing::debug!(removed = n, "swept expired records"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "sweeping expired records failed"),
                    _ => {}
                }
            }
        })
    };

    let addr = listener.local_addr().map_err(|e| AuthError::io("reading the listen address", e))?;
    tracing::info!(cluster = %state.cluster_name, %addr, "auth service is listening");
    let grpc_service = grpc::AuthService::new(state.clone());
    // WatchAccess streams never end by themselves: end them at shutdown, or the graceful
    // stop would wait for every watcher to hang up.
    let hub = grpc_service.access_hub();
    let shutdown = async move {
        shutdown.await;
        hub.close();
    };
    let service = AuthServer::new(grpc_service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let counters = metrics::AuthMetrics::default();
    counters.register(&probes.metrics, &state);
    let service = metrics::Counted::new(service, counters);
    // The listener is bound already: connections queue until the server accepts them.
    probes.ready.set_ready();
    let limits = settings.limits;
    portcullis_net::raise_fd_limit();
    // Every accepted socket gets TCP_NODELAY there (tonic's own setting does not apply to
    // streams handed in, and small answers would wait for delayed ACKs), TCP keep-alives,
    // and a place in the per-address and total caps until it closes.
    let gated = portcullis_net::GatedListener::new(listener, portcullis_net::Gate::new("auth", limits));
    let incoming = portcullis_net::tls_incoming(
        gated,
        tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
        |tcp| tcp,
        // Tonic reads the client certificates from the stream's connect info (peer_identity).
        |tls, _, guard| Some(portcullis_net::Guarded::new(tls, guard)),
    );
    let result = tonic::transport::Server::builder()
        // Dead peers holding HTTP/2 connections are dropped after an unanswered ping.
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_interval))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    sweeper.abort();
    state.backend.flush()?;
    tracing::info!("auth service stopped");
    Ok(result?)
}
