//! Trusted-cluster routes of the web API: a leaf asking for trust, the clusters a user may
//! see (from auth, or its access cache while auth is away), and the nodes of a leaf (asked through its reverse tunnel).

use actix::Addr;
use actix_web::{HttpRequest, HttpResponse, web};
use portcullis_pki::Secret;
use portcullis_proto::auth::{ListRemoteClustersRequest, ValidateTrustedClusterRequest};
use serde::Deserialize;
use serde_json::json;

use super::handlers::{access_status, peer_addr, require_cert};
use super::ApiError;
use crate::route::{ClusterRoute, RouteError};
use crate::state::{ProxyState, auth_call, auth_unreachable};
use crate::tunnel::LeafActor;
use crate::tunnel::actor::ListNodes;

type State = web::Data<ProxyState>;

/// Body of `POST /webapi/trustedclusters/validate` (what a leaf's auth sends).
#[derive(Debug, Deserialize)]
pub struct ValidateBody {
    token: Secret<String>,
    cluster_name: String,
    #[serde(default)]
    cas: portcullis_proto::auth::CertAuthorities,
}

impl ValidateBody {
    /// The leaf cluster's name, trimmed; refused when empty. Public so the fuzz targets
    /// (fuzz/) run exactly the checks this route runs after decoding the JSON body.
    pub fn leaf_name(&self) -> Result<String, ApiError> {
        let leaf = self.cluster_name.trim().to_string();
        if leaf.is_empty() {
            return Err(ApiError::bad_request("cluster_name is empty: name the leaf cluster asking for trust"));
        }
        Ok(leaf)
    }
}

/// `POST /webapi/trustedclusters/validate`: a leaf cluster asks to be trusted with an invite
/// token; auth decides. No client certificate: the token is the credential (never logged).
pub async fn validate(req: HttpRequest, state: State, body: web::Json<ValidateBody>) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let leaf = body.leaf_name()?;
    let remote_addr = peer_addr(&req);
    let request = ValidateTrustedClusterRequest {
        token: body.token.expose().clone(),
        leaf_cluster_name: leaf.clone(),
        leaf_cas: Some(body.cas),
        remote_addr: remote_addr.clone(),
    };
    match auth_call(state.auth().validate_trusted_cluster(request)).await {
        Ok(resp) => {
            tracing::info!(%leaf, %remote_addr, "leaf cluster trusted");
            // Its agents will knock within seconds: fetch its CA now rather than at the next beat.
            state.tunnels.want_refresh();
            Ok(HttpResponse::Ok().json(json!({
                "cluster_name": resp.root_cluster_name,
                "cas": resp.root_cas.unwrap_or_default(),
            })))
        }
        Err(s) => {
            tracing::info!(%leaf, %remote_addr, code = ?s.code(), "trusted cluster request refused: {}", s.message());
            Err(s.into())
        }
    }
}

/// `GET /webapi/sites`: this cluster first, then the leaves the user may see.
pub async fn sites(req: HttpRequest, state: State) -> Result<HttpResponse, ApiError> {
    let cert = require_cert(&req)?;
    // Auth answers while it can (its view is the newest); the access cache, which makes the
    // same decision, answers while no auth server does.
    let req = ListRemoteClustersRequest { user_tls_cert: cert.clone(), ..Default::default() };
    let mut leaves = match (auth_call(state.auth().list_remote_clusters(req)).await, state.access_snapshot()) {
        (Ok(resp), _) => resp.clusters,
        (Err(s), Some(snap)) if auth_unreachable(&s) => {
            let user = portcullis_access::verify_user_tls(&snap, &cert).map_err(access_status)?;
            let visible = portcullis_access::remote_clusters_visible_to(&snap, &user).map_err(access_status)?;
            visible.into_iter().map(to_proto_rc).collect()
        }
        (Err(s), _) => return Err(s.into()),
    };
    leaves.sort_by(|a, b| a.name.cmp(&b.name));
    let mut sites = vec![json!({"name": state.cluster_name, "status": "online", "type": "root", "labels": {}})];
    for rc in leaves {
        // Auth's view covers every proxy; a tunnel held right here is online whatever it says.
        let online = rc.connection == "online" || state.tunnels.leaf(&rc.name).is_some();
        let labels: std::collections::BTreeMap<_, _> = rc.labels.into_iter().collect();
        sites.push(json!({
            "name": rc.name,
            "status": if online { "online" } else { "offline" },
            "type": "leaf",
            "labels": labels,
            "last_heartbeat": rc.last_heartbeat,
        }));
    }
    Ok(HttpResponse::Ok().json(json!({ "sites": sites })))
}

/// The route to a leaf the user may see. Leaves hidden from the user by `cluster_labels`
/// are "not found", exactly like names that do not exist.
pub async fn visible_leaf(state: &ProxyState, user_tls_cert: &[u8], cluster: &str) -> Result<Addr<LeafActor>, ApiError> {
    let ask_auth = || async {
        let req = ListRemoteClustersRequest {
            user_tls_cert: user_tls_cert.to_vec(),
            name: cluster.to_string(),
            ..Default::default()
        };
        auth_call(state.auth().list_remote_clusters(req)).await.map(|r| r.clusters.iter().any(|c| c.name == cluster))
    };
    // Auth first (newest view); the access cache while no auth server answers.
    let visible = match (ask_auth().await, state.access_snapshot()) {
        (Ok(visible), _) => visible,
        (Err(s), Some(snap)) if auth_unreachable(&s) => {
            let user = portcullis_access::verify_user_tls(&snap, user_tls_cert).map_err(access_status)?;
            let visible = portcullis_access::remote_clusters_visible_to(&snap, &user).map_err(access_status)?;
            visible.iter().any(|rc| rc.metadata.name == cluster)
        }
        (Err(s), _) => return Err(s.into()),
    };
    if !visible {
        return Err(RouteError::ClusterNotFound(cluster.to_string()).into());
    }
    match state.router.cluster(cluster) {
        Ok(ClusterRoute::Leaf(addr)) => Ok(addr),
        // Auth knows it but this proxy has no tunnel (or has not heard of its CA yet).
        Ok(ClusterRoute::Local) | Err(RouteError::ClusterNotFound(_)) => {
            Err(RouteError::ClusterOffline(cluster.to_string()).into())
        }
        Err(e) => Err(e.into()),
    }
}

/// A leaf of the snapshot as ListRemoteClusters describes it.
fn to_proto_rc(rc: portcullis_types::RemoteCluster) -> portcullis_proto::auth::RemoteCluster {
    portcullis_proto::auth::RemoteCluster {
        name: rc.metadata.name,
        connection: rc.status.connection,
        labels: rc.metadata.labels.into_iter().collect(),
        last_heartbeat: rc
            .status
            .last_heartbeat
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_default(),
    }
}

/// The nodes of a leaf the user may see, asked through the leaf's tunnel; the leaf's auth
/// applies the user's mapped roles.
pub async fn leaf_nodes(state: &ProxyState, user_tls_cert: Vec<u8>, cluster: &str) -> Result<HttpResponse, ApiError> {
    let addr = visible_leaf(state, &user_tls_cert, cluster).await?;
    let nodes = match addr.send(ListNodes { user_tls_cert, labels: Default::default() }).await {
        Ok(r) => r?,
        Err(_) => return Err(RouteError::ClusterOffline(cluster.to_string()).into()),
    };
    let nodes: Vec<_> = nodes
        .into_iter()
        .map(|n| {
            let labels: std::collections::BTreeMap<_, _> = n.labels.into_iter().collect();
            json!({"id": n.id, "hostname": n.hostname, "addr": n.addr, "labels": labels, "tunnel": true})
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "nodes": nodes })))
}
