//! The user routes of the web API (see docs/architecture.md, "Web API"): ping, login, node
//! listings and login explanations. Listings and login checks go to the site they are about
//! (`crate::site`); login goes to auth.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;
use portcullis_proto::auth::AuthenticateUserRequest;
use portcullis_types::webapi::{
    AuthorizeRequest, AuthorizeResponse, CertAuthorities, LeafHostCas, LoginRequest, LoginResponse, NodeInfo,
    NodesResponse, PingProxy, PingResponse, PingSsh,
};

use super::{ApiError, ConnInfo, Json, clusters, ok};
use crate::host_of;
use crate::route::RouteError;
use crate::state::{ProxyState, auth_call};

type AppState = State<Arc<ProxyState>>;

/// Unknown paths and methods.
pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no such endpoint: {method} {}", uri.path()))
}

/// `GET /webapi/ping`: cluster name, version and where the proxy's services are reached.
pub async fn ping(State(state): AppState) -> Response {
    let a = &state.addrs;
    // Unconfigured addresses are the listeners' own (ports actually bound), never the
    // request's Host header: anyone can send any Host, and the answer tells tsh where to
    // send its certificates. An unspecified listen address (0.0.0.0) stays so, and clients
    // use the address they reached the proxy at (tsh does).
    let tunnel = a.tunnel.unwrap_or(a.tunnel_configured);
    let (public_addr, ssh_public_addr, ssh_tunnel_public_addr) = match &a.public_addr {
        Some(p) => {
            let host = host_of(p);
            (
                p.clone(),
                a.ssh_public_addr.clone().unwrap_or_else(|| format!("{host}:{}", a.ssh.port())),
                a.tunnel_public_addr.clone().unwrap_or_else(|| format!("{host}:{}", tunnel.port())),
            )
        }
        None => (
            a.web.to_string(),
            a.ssh_public_addr.clone().unwrap_or_else(|| a.ssh.to_string()),
            a.tunnel_public_addr.clone().unwrap_or_else(|| tunnel.to_string()),
        ),
    };
    ok(&PingResponse {
        cluster_name: state.cluster_name.clone(),
        proxy: PingProxy {
            ssh: PingSsh { public_addr, ssh_public_addr, ssh_tunnel_public_addr },
            tls_routing_enabled: false,
        },
        server_version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

/// Checks a login body beyond its JSON shape and decodes the TLS public key. Public so the
/// fuzz targets (fuzz/) run exactly the checks this route runs.
pub fn login_tls_public_key(body: &LoginRequest) -> Result<Vec<u8>, ApiError> {
    if body.user.trim().is_empty() {
        return Err(ApiError::bad_request("the user name is empty"));
    }
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(body.tls_pub_key.trim())
        .map_err(|e| ApiError::bad_request(format!("tls_pub_key is not standard base64: {e}")))
}

/// `POST /webapi/login`: password login; answers with the user's certificates.
pub async fn login(State(state): AppState, conn: ConnInfo, Json(body): Json<LoginRequest>) -> Result<Response, ApiError> {
    let tls_public_key = login_tls_public_key(&body)?;
    let remote_addr = conn.peer_addr();
    let request = AuthenticateUserRequest {
        username: body.user.clone(),
        password: body.password.into_inner(),
        ssh_public_key: body.ssh_pub_key,
        tls_public_key,
        ttl_seconds: body.ttl_seconds,
        route_to_cluster: body.cluster,
        remote_addr: remote_addr.clone(),
    };
    let certs = match auth_call(state.auth().authenticate_user(request)).await {
        Ok(c) => c,
        Err(s) => {
            tracing::info!(user = %body.user, remote_addr, code = ?s.code(), "login refused: {}", s.message());
            return Err(s.into());
        }
    };
    tracing::info!(user = %certs.username, remote_addr, "login succeeded");
    let cas = certs.cas.unwrap_or_default();
    Ok(ok(&LoginResponse {
        username: certs.username,
        cluster_name: certs.cluster_name,
        ssh_cert: certs.ssh_cert,
        tls_cert_pem: certs.tls_cert_pem,
        cas: CertAuthorities { tls_ca_pem: cas.tls_ca_pem, ssh_user_ca: cas.ssh_user_ca, ssh_host_ca: cas.ssh_host_ca },
        leaf_host_cas: certs
            .leaf_host_cas
            .into_iter()
            .map(|l| LeafHostCas { cluster_name: l.cluster_name, ssh_host_ca: l.ssh_host_ca })
            .collect(),
    }))
}

/// `GET /webapi/sites/{cluster}/nodes`: the nodes the user (named by its TLS certificate)
/// may see, of this cluster or of a leaf.
pub async fn nodes(
    State(state): AppState,
    conn: ConnInfo,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let cert = conn.require_cert()?;
    let Path(cluster) = path.map_err(|e| ApiError::new(StatusCode::NOT_FOUND, format!("unreadable cluster name: {e}")))?;
    let (listed, via_tunnel) = if !cluster.is_empty() && cluster != state.cluster_name {
        (clusters::leaf_nodes(&state, &cert, &cluster).await?, true)
    } else {
        (state.sites.local().list_nodes(&cert, &Default::default()).await?, false)
    };
    let nodes = listed
        .into_iter()
        .map(|n| NodeInfo {
            addr: n.addr,
            hostname: n.hostname,
            id: n.id,
            labels: n.labels.into_iter().collect(),
            // A leaf's nodes are reached through its tunnels, whatever they announce.
            tunnel: via_tunnel || n.tunnel,
        })
        .collect();
    Ok(ok(&NodesResponse { nodes }))
}

/// Refuses (403) unless the TLS client certificate `der` is a user certificate of this
/// cluster naming the same user, routed to the same cluster, as the SSH certificate, and
/// the SSH certificate was signed by a user CA this proxy trusts.
fn check_same_holder(state: &ProxyState, der: &[u8], ssh_cert: &str) -> Result<(), ApiError> {
    let id = portcullis_pki::x509::parse_identity(der)
        .map_err(|e| ApiError::unauthorized(format!("unreadable client certificate: {e}; run 'tsh login'")))?;
    if !id.has_system_role(portcullis_pki::x509::SystemRole::User) || id.cluster != state.cluster_name {
        return Err(ApiError::forbidden(format!(
            "the client certificate of {:?} is not a user certificate of cluster {:?}",
            id.name, state.cluster_name
        )));
    }
    let cert = portcullis_pki::ssh::parse_certificate(ssh_cert)
        .map_err(|e| ApiError::bad_request(format!("ssh_cert is not an SSH certificate: {e}")))?;
    let info = portcullis_pki::ssh::user_cert_info(&cert).map_err(|e| ApiError::bad_request(format!("ssh_cert: {e}")))?;
    let trusted = state.ssh_user_cas().iter().any(|k| portcullis_pki::ssh::fingerprint(k) == info.ca_fingerprint);
    if !trusted || cert.verify_signature().is_err() {
        return Err(ApiError::forbidden("the SSH certificate was not issued by a user CA this proxy trusts"));
    }
    let route = |r: &str| if r.is_empty() { state.cluster_name.clone() } else { r.to_string() };
    if info.username != id.name || route(&info.route_to_cluster) != route(&id.route_to_cluster) {
        return Err(ApiError::forbidden(format!(
            "the SSH certificate (user {:?}, cluster {:?}) does not match the client certificate (user {:?}, cluster {:?}); run 'tsh login'",
            info.username,
            route(&info.route_to_cluster),
            id.name,
            route(&id.route_to_cluster)
        )));
    }
    Ok(())
}

/// `POST /webapi/ssh/authorize`: whether the certificate may log in as `login` on `node`,
/// and why not; tsh shows the reason after a refused login.
pub async fn authorize(
    State(state): AppState,
    conn: ConnInfo,
    Json(body): Json<AuthorizeRequest>,
) -> Result<Response, ApiError> {
    // Only the holder of the certificates may ask: each call is audited (on a leaf too), so
    // an anonymous caller must not be able to write events with any certificate it saw.
    let der = conn.require_cert()?;
    if body.ssh_cert.trim().is_empty() {
        return Err(ApiError::bad_request("ssh_cert is empty"));
    }
    check_same_holder(&state, &der, &body.ssh_cert)?;
    let site = state.sites.get(&body.cluster)?;
    let answer = site.authorize(&body.ssh_cert, &body.login, &body.node, &conn.peer_addr()).await;
    let (allowed, reason) = match answer {
        Ok(answer) => answer,
        // A leaf that cannot be asked is a refusal with its reason, not an error: tsh shows
        // it after the refused login.
        Err(e @ RouteError::ClusterOffline(_)) => (false, e.to_string()),
        Err(RouteError::Leaf { reason, .. }) => {
            (false, format!("the leaf cluster {} refused the login: {reason}", body.cluster))
        }
        Err(e) => return Err(e.into()),
    };
    Ok(ok(&AuthorizeResponse { allowed, reason }))
}
