//! The web API routes (see docs/architecture.md, "Web API"). User listings and login checks
//! are answered from the access cache; login and trust establishment go to auth.

use actix_web::{HttpRequest, HttpResponse, web};
use portcullis_pki::Secret;
use portcullis_proto::auth::{AuthenticateUserRequest, AuthorizeSshRequest, CertAuthorities, ListNodesRequest};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ApiError, PeerCert, clusters};
use crate::host_of;
use crate::route::{ClusterRoute, RouteError};
use crate::state::{ProxyState, auth_call, auth_unreachable};

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

/// `GET /webapi/ping`: cluster name, version and where the proxy's services are reached.
async fn ping(state: State) -> HttpResponse {
    let a = &state.addrs;
    // Unconfigured addresses are the listeners' own (ports actually bound), never the
    // request's Host header: anyone can send any Host, and the answer tells tsh where to
    // send its certificates. An unspecified listen address (0.0.0.0) stays so, and clients
    // use the address they reached the proxy at (tsh does).
    let tunnel = a.tunnel.unwrap_or(a.tunnel_configured);
    let (public_addr, ssh_public_addr, tunnel_public_addr) = match &a.public_addr {
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

/// Body of `POST /webapi/login`. Public (with `tls_public_key`) so the fuzz targets (fuzz/)
/// decode and check login bodies exactly as this route does.
#[derive(Debug, Deserialize)]
pub struct LoginRequest {
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

impl LoginRequest {
    /// Checks the body beyond its JSON shape and decodes the TLS public key.
    pub fn tls_public_key(&self) -> Result<Vec<u8>, ApiError> {
        if self.user.trim().is_empty() {
            return Err(ApiError::bad_request("the user name is empty"));
        }
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(self.tls_pub_key.trim())
            .map_err(|e| ApiError::bad_request(format!("tls_pub_key is not standard base64: {e}")))
    }
}

#[derive(Debug, Serialize)]
struct LoginResponse {
    username: String,
    cluster_name: String,
    ssh_cert: String,
    tls_cert_pem: String,
    /// The proto type doubles as the JSON shape of CAs.
    cas: CertAuthorities,
    /// Each leaf's host CAs apart, so tsh scopes them to their leaf.
    leaf_host_cas: Vec<serde_json::Value>,
}

pub(super) fn peer_addr(req: &HttpRequest) -> String {
    req.peer_addr().map(|a| a.to_string()).unwrap_or_default()
}

/// `POST /webapi/login`: password login; answers with the user's certificates.
async fn login(req: HttpRequest, state: State, body: web::Json<LoginRequest>) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let tls_public_key = body.tls_public_key()?;
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
        leaf_host_cas: certs
            .leaf_host_cas
            .into_iter()
            .map(|l| json!({"cluster_name": l.cluster_name, "ssh_host_ca": l.ssh_host_ca}))
            .collect(),
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
    // Auth first (newest view); the access cache while no auth server answers.
    let asked = auth_call(state.auth().list_nodes(ListNodesRequest { user_tls_cert: cert.clone(), labels: Default::default() })).await;
    let listed = match (asked, state.access_snapshot()) {
        (Ok(resp), _) => resp.nodes,
        (Err(s), Some(snap)) if auth_unreachable(&s) => {
            let user = portcullis_access::verify_user_tls(&snap, &cert).map_err(access_status)?;
            let visible = portcullis_access::nodes_visible_to(&snap, &user).map_err(access_status)?;
            visible.into_iter().map(|n| crate::route::to_proto_node(n, &state.cluster_name)).collect()
        }
        (Err(s), _) => return Err(s.into()),
    };
    let nodes: Vec<_> = listed
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

/// Refuses (403) unless the TLS client certificate `der` is a user certificate of this
/// cluster naming the same user, routed to the same cluster, as the SSH certificate, and
/// the SSH certificate was signed by a user CA this proxy trusts.
fn check_same_holder(state: &ProxyState, der: &[u8], ssh_cert: &str) -> Result<(), ApiError> {
    let forbidden = |m: String| ApiError::new(actix_web::http::StatusCode::FORBIDDEN, m);
    let id = portcullis_pki::x509::parse_identity(der)
        .map_err(|e| ApiError::unauthorized(format!("unreadable client certificate: {e}; run 'tsh login'")))?;
    if !id.has_system_role(portcullis_pki::x509::system_role::USER) || id.cluster != state.cluster_name {
        return Err(forbidden(format!(
            "the client certificate of {:?} is not a user certificate of cluster {:?}",
            id.name, state.cluster_name
        )));
    }
    let cert = portcullis_pki::ssh::parse_certificate(ssh_cert)
        .map_err(|e| ApiError::bad_request(format!("ssh_cert is not an SSH certificate: {e}")))?;
    let info = portcullis_pki::ssh::user_cert_info(&cert)
        .map_err(|e| ApiError::bad_request(format!("ssh_cert: {e}")))?;
    let trusted = state.ssh_user_cas().iter().any(|k| portcullis_pki::ssh::fingerprint(k) == info.ca_fingerprint);
    if !trusted || cert.verify_signature().is_err() {
        return Err(forbidden("the SSH certificate was not issued by a user CA this proxy trusts".into()));
    }
    let route = |r: &str| if r.is_empty() { state.cluster_name.clone() } else { r.to_string() };
    if info.username != id.name || route(&info.route_to_cluster) != route(&id.route_to_cluster) {
        return Err(forbidden(format!(
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
async fn authorize(req: HttpRequest, state: State, body: web::Json<AuthorizeRequest>) -> Result<HttpResponse, ApiError> {
    // Only the holder of the certificates may ask: each call is audited (on a leaf too), so
    // an anonymous caller must not be able to write events with any certificate it saw.
    let der = require_cert(&req)?;
    let body = body.into_inner();
    if body.ssh_cert.trim().is_empty() {
        return Err(ApiError::bad_request("ssh_cert is empty"));
    }
    check_same_holder(&state, &der, &body.ssh_cert)?;
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
    let request = AuthorizeSshRequest {
        ssh_cert: body.ssh_cert,
        login: body.login,
        node: body.node,
        source: "proxy".into(),
        remote_addr: peer_addr(&req),
    };
    let resp = match (auth_call(state.auth().authorize_ssh(request.clone())).await, state.access_snapshot()) {
        (Ok(resp), _) => resp,
        // No auth server answers: the same decision from the access cache (one implementation),
        // for the node the name resolves to. The node audits the refused login itself; this
        // call only explains it.
        (Err(s), Some(snap)) if auth_unreachable(&s) => {
            let node = portcullis_access::resolve_node(&snap.nodes, &snap.cluster_name, &request.node, 0).ok();
            portcullis_access::authorize_ssh(&snap, &request, node.as_ref()).map_err(access_status)?
        }
        (Err(s), _) => return Err(s.into()),
    };
    Ok(HttpResponse::Ok().json(json!({ "allowed": resp.allowed, "reason": resp.reason })))
}

/// An access refusal as the status auth would have answered with (same codes, same text).
pub(super) fn access_status(e: portcullis_access::AccessError) -> tonic::Status {
    use portcullis_access::AccessError as E;
    match e {
        E::BadRequest(m) => tonic::Status::invalid_argument(m),
        E::Unauthenticated(m) => tonic::Status::unauthenticated(m),
        E::Denied(m) => tonic::Status::permission_denied(m),
        E::NotFound(m) => tonic::Status::not_found(m),
    }
}
