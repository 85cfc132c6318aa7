//! A fake leaf auth service: answers what a tunnel agent asks, records audit events.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use portcullis_proto::auth::auth_server::{Auth, AuthServer};
use portcullis_proto::auth::*;
use tonic::{Request, Response, Status};

use super::Pki;

/// What the fake knows and what it was told.
#[derive(Default)]
pub struct AuthState {
    pub targets: Mutex<Vec<TrustedClusterTarget>>,
    pub nodes: Mutex<Vec<Node>>,
    pub audit: Mutex<Vec<serde_json::Value>>,
    /// What WatchAccess streams (JSON of a portcullis_access::AccessSnapshot): the current
    /// message at once, then each one set here.
    pub access: tokio::sync::watch::Sender<Option<AccessSnapshotMessage>>,
}

impl AuthState {
    pub fn set_targets(&self, targets: Vec<TrustedClusterTarget>) {
        *self.targets.lock().unwrap() = targets;
    }

    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        self.audit.lock().unwrap().clone()
    }
}

struct Served(Arc<AuthState>);

fn nope<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in the fake"))
}

#[tonic::async_trait]
impl Auth for Served {
    async fn join(&self, _: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        nope()
    }
    async fn ping(&self, _: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        nope()
    }
    async fn authenticate_user(&self, _: Request<AuthenticateUserRequest>) -> Result<Response<UserCerts>, Status> {
        nope()
    }
    async fn generate_user_certs(&self, _: Request<GenerateUserCertsRequest>) -> Result<Response<UserCerts>, Status> {
        nope()
    }
    async fn set_password(&self, _: Request<SetPasswordRequest>) -> Result<Response<Empty>, Status> {
        nope()
    }
    async fn upsert_resource(
        &self,
        _: Request<UpsertResourceRequest>,
    ) -> Result<Response<UpsertResourceResponse>, Status> {
        nope()
    }
    async fn get_resources(&self, _: Request<GetResourcesRequest>) -> Result<Response<GetResourcesResponse>, Status> {
        nope()
    }
    async fn delete_resource(&self, _: Request<DeleteResourceRequest>) -> Result<Response<Empty>, Status> {
        nope()
    }
    async fn create_token(&self, _: Request<CreateTokenRequest>) -> Result<Response<CreateTokenResponse>, Status> {
        nope()
    }
    async fn heartbeat(&self, _: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        nope()
    }
    async fn list_nodes(&self, r: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        let r = r.into_inner();
        if r.user_tls_cert.is_empty() {
            return Err(Status::unauthenticated("no user certificate"));
        }
        let nodes = self.0.nodes.lock().unwrap().clone();
        let nodes = nodes.into_iter().filter(|n| r.labels.iter().all(|(k, v)| n.labels.get(k) == Some(v))).collect();
        Ok(Response::new(ListNodesResponse { nodes }))
    }
    async fn resolve_node(&self, r: Request<ResolveNodeRequest>) -> Result<Response<ResolveNodeResponse>, Status> {
        let r = r.into_inner();
        let nodes = self.0.nodes.lock().unwrap().clone();
        match nodes.into_iter().find(|n| n.hostname == r.host || n.id == r.host) {
            Some(n) => Ok(Response::new(ResolveNodeResponse { node: Some(n) })),
            None => Err(Status::not_found(format!("node {:?} not found", r.host))),
        }
    }
    async fn authorize_ssh(&self, _: Request<AuthorizeSshRequest>) -> Result<Response<AuthorizeSshResponse>, Status> {
        nope()
    }
    async fn emit_audit_event(&self, r: Request<AuditEventRequest>) -> Result<Response<Empty>, Status> {
        let v: serde_json::Value = serde_json::from_str(&r.into_inner().event_json)
            .map_err(|e| Status::invalid_argument(format!("not JSON: {e}")))?;
        self.0.audit.lock().unwrap().push(v);
        Ok(Response::new(Empty {}))
    }
    async fn search_audit_events(
        &self,
        _: Request<SearchAuditEventsRequest>,
    ) -> Result<Response<SearchAuditEventsResponse>, Status> {
        nope()
    }
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        nope()
    }
    async fn validate_trusted_cluster(
        &self,
        _: Request<ValidateTrustedClusterRequest>,
    ) -> Result<Response<ValidateTrustedClusterResponse>, Status> {
        nope()
    }
    async fn report_tunnels(&self, _: Request<ReportTunnelsRequest>) -> Result<Response<Empty>, Status> {
        nope()
    }
    async fn list_remote_clusters(
        &self,
        _: Request<ListRemoteClustersRequest>,
    ) -> Result<Response<ListRemoteClustersResponse>, Status> {
        nope()
    }
    async fn watch_access(
        &self,
        _: Request<WatchAccessRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<AccessSnapshotMessage>>, Status> {
        let mut updates = self.0.access.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let msg = updates.borrow_and_update().clone();
                if let Some(m) = msg
                    && tx.send(Ok(m)).await.is_err()
                {
                    return;
                }
                if updates.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
    async fn list_trusted_clusters(
        &self,
        r: Request<ListTrustedClustersRequest>,
    ) -> Result<Response<ListTrustedClustersResponse>, Status> {
        // Like the real one: only callers with a client certificate.
        if r.peer_certs().is_none_or(|c| c.is_empty()) {
            return Err(Status::unauthenticated("a client certificate is required"));
        }
        Ok(Response::new(ListTrustedClustersResponse { clusters: self.0.targets.lock().unwrap().clone() }))
    }
}

/// Serves `state` over mutual TLS (leaf CA) on a local port.
pub async fn serve(pki: &Pki, state: Arc<AuthState>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ca = vec![pki.leaf.cert_pem().to_string()];
    let tls = portcullis_rpc::server::server_tls(&pki.auth.0, &pki.auth.1, &ca, &ca);
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(AuthServer::new(Served(state)))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    addr
}
