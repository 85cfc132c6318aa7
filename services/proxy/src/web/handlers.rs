//! The web API routes (see docs/architecture.md, "Web API").

use actix_web::{HttpRequest, HttpResponse, web};
use portcullis_pki::Secret;
use portcullis_proto::auth::{AuthenticateUserRequest, AuthorizeSshRequest, CertAuthorities, ListNodesRequest};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ApiError, PeerCert, clusters};
use crate::host_of;
use crate::route::{ClusterRoute, RouteError};
use crate::state::{ProxyState, auth_call};

type State = web::Data<ProxyState>;

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/webapi/ping", web::get().to(ping))
        .route("/webapi/login", web::post().to(login))
        .route("/webapi/trustedclusters/validate", web::post().to(clusters::validate))
        .route("/webapi/sites", web::get().to(clusters::sites))
        .route("/webapi/sites/{cluster}/nodes", web::get().to(nodes))
        .route("/webapi/ssh/authorize", web::post().to(authorize));
}

/// Unknown paths and methods.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        actix_web::http::StatusCode::NOT_FOUND,
        format!("no such endpoint: {} {}", req.method(), req.path()),
    ))
}

/// The host part of the address the client used, brackets kept for IPv6.
fn request_host(req: &HttpRequest) -> String {
    let info = req.connection_info();
    host_of(info.host()).to_string()
}

/// `GET /webapi/ping`: cluster name, version and where the proxy's services are reached.
async fn ping(req: HttpRequest, state: State) -> HttpResponse {
    let a = &state.addrs;
    // Unconfigured addresses follow the one the client used, with the ports actually bound,
    // so a proxy on ephemeral ports still answers with dialable addresses.
    let host = match &a.public_addr {
        Some(p) => host_of(p).to_string(),
        None => request_host(&req),
    };
    let public_addr = a.public_addr.clone().unwrap_or_else(|| format!("{host}:{}", a.web.port()));
    let ssh_public_addr = a.ssh_public_addr.clone().unwrap_or_else(|| format!("{host}:{}", a.ssh.port()));
    let tunnel_port = a.tunnel.unwrap_or(a.tunnel_configured).port();
    let tunnel_public_addr = a.tunnel_public_addr.clone().unwrap_or_else(|| format!("{host}:{tunnel_port}"));
    HttpResponse::Ok().json(json!({
        "cluster_name": state.cluster_name,
        "server_version": env!("CARGO_PKG_VERSION"),
        "proxy": {
            "ssh": {
                "public_addr": public_addr,
                "ssh_public_addr": ssh_public_addr,
                "ssh_tunnel_public_addr": tunnel_public_addr,
            },
            "tls_routing_enabled": false,
        },
    }))
}

#[derive(Debug, Deserialize)]
struct LoginRequest {
    user: String,
    password: Secret<String>,
    #[serde(default)]
    ssh_pub_key: String,
    /// Base64 (standard) DER SubjectPublicKeyInfo.
    #[serde(default)]
    tls_pub_key: String,
    #[serde(default)]
    ttl_seconds: u64,
    #[serde(default)]
    cluster: String,
}

#[derive(Debug, Serialize)]
struct LoginResponse {
    username: String,
    cluster_name: String,
    ssh_cert: String,
    tls_cert_pem: String,
    /// The proto type doubles as the JSON shape of CAs.
    cas: CertAuthorities,
}

pub(super) fn peer_addr(req: &HttpRequest) -> String {
    req.peer_addr().map(|a| a.to_string()).unwrap_or_default()
}

/// `POST /webapi/login`: password login; answers with the user's certificates.
async fn login(req: HttpRequest, state: State, body: web::Json<LoginRequest>) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    if body.user.trim().is_empty() {
        return Err(ApiError::bad_request("the user name is empty"));
    }
    use base64::Engine as _;
    let tls_public_key = base64::engine::general_purpose::STANDARD
        .decode(body.tls_pub_key.trim())
        .map_err(|e| ApiError::bad_request(format!("tls_pub_key is not standard base64: {e}")))?;
    let remote_addr = peer_addr(&req);
    let request = AuthenticateUserRequest {
        username: body.user.clone(),
        password: body.password.expose().clone(),
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
    Ok(HttpResponse::Ok().json(LoginResponse {
        username: certs.username,
        cluster_name: certs.cluster_name,
        ssh_cert: certs.ssh_cert,
        tls_cert_pem: certs.tls_cert_pem,
        cas: certs.cas.unwrap_or_default(),
    }))
}

/// The verified client certificate (DER) of the connection, required by user routes.
pub(super) fn require_cert(req: &HttpRequest) -> Result<Vec<u8>, ApiError> {
    req.conn_data::<PeerCert>()
        .map(|c| c.0.clone())
        .ok_or_else(|| ApiError::unauthorized("a client certificate is required: run 'tsh login'"))
}

/// `GET /webapi/sites/{cluster}/nodes`: the nodes the user (named by its TLS certificate)
/// may see, of this cluster or of a leaf.
async fn nodes(req: HttpRequest, state: State, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let cert = require_cert(&req)?;
    let cluster = path.into_inner();
    if !cluster.is_empty() && cluster != state.cluster_name {
        return clusters::leaf_nodes(&state, cert, &cluster).await;
    }
    let resp = auth_call(state.auth().list_nodes(ListNodesRequest {
        user_tls_cert: cert,
        labels: Default::default(),
    }))
    .await?;
    let nodes: Vec<_> = resp
        .nodes
        .into_iter()
        .map(|n| {
            let labels: std::collections::BTreeMap<_, _> = n.labels.into_iter().collect();
            json!({"id": n.id, "hostname": n.hostname, "addr": n.addr, "labels": labels, "tunnel": n.tunnel})
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "nodes": nodes })))
}

#[derive(Debug, Deserialize)]
struct AuthorizeRequest {
    ssh_cert: String,
    login: String,
    #[serde(default)]
    node: String,
    #[serde(default)]
    cluster: String,
}

/// `POST /webapi/ssh/authorize`: whether the certificate may log in as `login` on `node`,
/// and why not; tsh shows the reason after a refused login.
async fn authorize(req: HttpRequest, state: State, body: web::Json<AuthorizeRequest>) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    if body.ssh_cert.trim().is_empty() {
        return Err(ApiError::bad_request("ssh_cert is empty"));
    }
    match state.router.cluster(&body.cluster) {
        Ok(ClusterRoute::Local) => {}
        // The leaf decides for its nodes: ask its auth through the tunnel.
        Ok(ClusterRoute::Leaf(addr)) => {
            let q = crate::tunnel::actor::Authorize {
                ssh_cert: body.ssh_cert,
                login: body.login,
                node: body.node,
                remote_addr: peer_addr(&req),
            };
            let (allowed, reason) = match addr.send(q).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) => (false, format!("the leaf cluster {} refused the login: {e}", body.cluster)),
                Err(_) => (false, format!("cluster {:?} is offline", body.cluster)),
            };
            return Ok(HttpResponse::Ok().json(json!({ "allowed": allowed, "reason": reason })));
        }
        Err(e @ RouteError::ClusterOffline(_)) => {
            return Ok(HttpResponse::Ok().json(json!({ "allowed": false, "reason": e.to_string() })));
        }
        Err(e) => return Err(e.into()),
    }
    let resp = auth_call(state.auth().authorize_ssh(AuthorizeSshRequest {
        ssh_cert: body.ssh_cert,
        login: body.login,
        node: body.node,
        source: "proxy".into(),
        remote_addr: peer_addr(&req),
    }))
    .await?;
    Ok(HttpResponse::Ok().json(json!({ "allowed": resp.allowed, "reason": resp.reason })))
}
