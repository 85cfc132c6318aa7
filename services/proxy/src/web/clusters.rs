//! Trusted-cluster routes of the web API: a leaf asking for trust, the clusters a user may
//! see (from auth, or its access cache while auth is away), and the nodes of a leaf (asked
//! through its site, after checking the user may see the leaf at all).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use portcullis_proto::auth::{ListRemoteClustersRequest, Node, ValidateTrustedClusterRequest};
use portcullis_types::webapi::{CertAuthorities, SiteInfo, SitesResponse, ValidateRequest, ValidateResponse};

use super::{ApiError, ConnInfo, Json, ok};
use crate::route::RouteError;
use crate::site::{Site, access_status};
use crate::state::{ProxyState, auth_call, auth_unreachable};

type AppState = State<Arc<ProxyState>>;

/// The leaf cluster's name of a validation body, trimmed; refused when empty. Public so the
/// fuzz targets (fuzz/) run exactly the checks this route runs after decoding the body.
pub fn leaf_name(body: &ValidateRequest) -> Result<String, ApiError> {
    let leaf = body.cluster_name.trim().to_string();
    if leaf.is_empty() {
        return Err(ApiError::bad_request("cluster_name is empty: name the leaf cluster asking for trust"));
    }
    Ok(leaf)
}

/// `POST /webapi/trustedclusters/validate`: a leaf cluster asks to be trusted with an invite
/// token; auth decides. No client certificate: the token is the credential (never logged).
pub async fn validate(State(state): AppState, conn: ConnInfo, Json(body): Json<ValidateRequest>) -> Result<Response, ApiError> {
    let leaf = leaf_name(&body)?;
    let remote_addr = conn.peer_addr();
    let cas = body.cas;
    let request = ValidateTrustedClusterRequest {
        token: body.token.into_inner(),
        leaf_cluster_name: leaf.clone(),
        leaf_cas: Some(portcullis_proto::auth::CertAuthorities {
            tls_ca_pem: cas.tls_ca_pem,
            ssh_user_ca: cas.ssh_user_ca,
            ssh_host_ca: cas.ssh_host_ca,
        }),
        remote_addr: remote_addr.clone(),
    };
    match auth_call(state.auth().validate_trusted_cluster(request)).await {
        Ok(resp) => {
            tracing::info!(%leaf, %remote_addr, "leaf cluster trusted");
            // Its agents will knock within seconds: fetch its CA now rather than at the next beat.
            state.sites.request_refresh();
            let root = resp.root_cas.unwrap_or_default();
            Ok(ok(&ValidateResponse {
                cas: CertAuthorities {
                    tls_ca_pem: root.tls_ca_pem,
                    ssh_user_ca: root.ssh_user_ca,
                    ssh_host_ca: root.ssh_host_ca,
                },
                cluster_name: resp.root_cluster_name,
            }))
        }
        Err(s) => {
            tracing::info!(%leaf, %remote_addr, code = ?s.code(), "trusted cluster request refused: {}", s.message());
            Err(s.into())
        }
    }
}

/// `GET /webapi/sites`: this cluster first, then the leaves the user may see.
pub async fn sites(State(state): AppState, conn: ConnInfo) -> Result<Response, ApiError> {
    let cert = conn.require_cert()?;
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
    let mut sites = vec![SiteInfo {
        name: state.cluster_name.clone(),
        status: "online".into(),
        cluster_type: "root".into(),
        ..Default::default()
    }];
    for rc in leaves {
        // Auth's view covers every proxy; a tunnel held right here is online whatever it says.
        let online = rc.connection == "online" || state.sites.is_online(&rc.name);
        sites.push(SiteInfo {
            labels: rc.labels.into_iter().collect(),
            last_heartbeat: Some(rc.last_heartbeat),
            name: rc.name,
            status: if online { "online" } else { "offline" }.into(),
            cluster_type: "leaf".into(),
        });
    }
    Ok(ok(&SitesResponse { sites }))
}

/// The site of a leaf the user may see. Leaves hidden from the user by `cluster_labels` are
/// "not found", exactly like names that do not exist.
async fn visible_leaf(state: &ProxyState, user_tls_cert: &[u8], cluster: &str) -> Result<Site, ApiError> {
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
    match state.sites.get(cluster) {
        Ok(site) if site.is_leaf() && site.is_online() => Ok(site),
        // Auth knows it but this proxy has no tunnel (or has not heard of its CA yet).
        Ok(_) | Err(RouteError::ClusterNotFound(_)) => Err(RouteError::ClusterOffline(cluster.to_string()).into()),
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

/// The nodes of a leaf the user may see, asked through the leaf's site; the leaf's auth
/// applies the user's mapped roles.
pub async fn leaf_nodes(state: &ProxyState, user_tls_cert: &[u8], cluster: &str) -> Result<Vec<Node>, ApiError> {
    let site = visible_leaf(state, user_tls_cert, cluster).await?;
    site.list_nodes(user_tls_cert, &Default::default()).await.map_err(|e| match e {
        // The tunnel's or the leaf's own words, as before.
        RouteError::Leaf { reason, .. } => ApiError::from(reason),
        e => ApiError::from(e),
    })
}
