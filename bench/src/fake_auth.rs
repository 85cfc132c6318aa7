//! One in-process stand-in for the auth services of all simulated leaves: it only answers
//! `ListTrustedClusters` (the root as the one target), which is all an idle agent asks.

use std::net::SocketAddr;

use portcullis_pki::x509::{AUTH_SERVER_NAME, TlsCa, TlsCertRequest, generate_key, public_key_der, system_role};
use portcullis_proto::auth::auth_server::{Auth, AuthServer};
use portcullis_proto::auth::*;
use tonic::{Request, Response, Status};

use crate::BenchError;

/// What the fake auth answers.
struct FakeAuth {
    target: TrustedClusterTarget,
}

type Answer<T> = Result<Response<T>, Status>;

fn unimplemented<T>(what: &str) -> Answer<T> {
    Err(Status::unimplemented(format!("{what} is not simulated by the benchmark's fake leaf auth")))
}

#[tonic::async_trait]
impl Auth for FakeAuth {
    async fn list_trusted_clusters(&self, _r: Request<ListTrustedClustersRequest>) -> Answer<ListTrustedClustersResponse> {
        Ok(Response::new(ListTrustedClustersResponse { clusters: vec![self.target.clone()] }))
    }

    async fn ping(&self, _r: Request<PingRequest>) -> Answer<PingResponse> {
        Ok(Response::new(PingResponse::default()))
    }

    async fn list_nodes(&self, _r: Request<ListNodesRequest>) -> Answer<ListNodesResponse> {
        Ok(Response::new(ListNodesResponse::default()))
    }

    async fn join(&self, _r: Request<JoinRequest>) -> Answer<JoinResponse> {
        unimplemented("Join")
    }
    async fn authenticate_user(&self, _r: Request<AuthenticateUserRequest>) -> Answer<UserCerts> {
        unimplemented("AuthenticateUser")
    }
    async fn generate_user_certs(&self, _r: Request<GenerateUserCertsRequest>) -> Answer<UserCerts> {
        unimplemented("GenerateUserCerts")
    }
    async fn set_password(&self, _r: Request<SetPasswordRequest>) -> Answer<Empty> {
        unimplemented("SetPassword")
    }
    async fn upsert_resource(&self, _r: Request<UpsertResourceRequest>) -> Answer<UpsertResourceResponse> {
        unimplemented("UpsertResource")
    }
    async fn get_resources(&self, _r: Request<GetResourcesRequest>) -> Answer<GetResourcesResponse> {
        unimplemented("GetResources")
    }
    async fn delete_resource(&self, _r: Request<DeleteResourceRequest>) -> Answer<Empty> {
        unimplemented("DeleteResource")
    }
    async fn create_token(&self, _r: Request<CreateTokenRequest>) -> Answer<CreateTokenResponse> {
        unimplemented("CreateToken")
    }
    async fn heartbeat(&self, _r: Request<HeartbeatRequest>) -> Answer<HeartbeatResponse> {
        unimplemented("Heartbeat")
    }
    async fn resolve_node(&self, _r: Request<ResolveNodeRequest>) -> Answer<ResolveNodeResponse> {
        unimplemented("ResolveNode")
    }
    async fn authorize_ssh(&self, _r: Request<AuthorizeSshRequest>) -> Answer<AuthorizeSshResponse> {
        unimplemented("AuthorizeSsh")
    }
    async fn emit_audit_event(&self, _r: Request<AuditEventRequest>) -> Answer<Empty> {
        Ok(Response::new(Empty::default()))
    }
    async fn search_audit_events(&self, _r: Request<SearchAuditEventsRequest>) -> Answer<SearchAuditEventsResponse> {
        unimplemented("SearchAuditEvents")
    }
    async fn status(&self, _r: Request<StatusRequest>) -> Answer<StatusResponse> {
        unimplemented("Status")
    }
    async fn validate_trusted_cluster(
        &self,
        _r: Request<ValidateTrustedClusterRequest>,
    ) -> Answer<ValidateTrustedClusterResponse> {
        unimplemented("ValidateTrustedCluster")
    }
    async fn report_tunnels(&self, _r: Request<ReportTunnelsRequest>) -> Answer<Empty> {
        unimplemented("ReportTunnels")
    }
    async fn list_remote_clusters(&self, _r: Request<ListRemoteClustersRequest>) -> Answer<ListRemoteClustersResponse> {
        unimplemented("ListRemoteClusters")
    }
}

/// A running fake auth: its address and the CA its certificate chains to.
pub struct FakeAuthHandle {
    pub addr: SocketAddr,
    pub ca_pem: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeAuthHandle {
    /// Stops serving and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Starts the fake auth on a free loopback port. Its certificate names
/// [`AUTH_SERVER_NAME`]; clients may present certificates of any of `client_ca_pems` (each
/// simulated leaf's CA) or none.
pub async fn start(target: TrustedClusterTarget, client_ca_pems: &[String]) -> Result<FakeAuthHandle, BenchError> {
    let ca = TlsCa::generate("bench-fake-leaf-auth")?;
    let key = generate_key()?;
    let cert = ca.issue(&TlsCertRequest {
        public_key_der: public_key_der(&key),
        name: "fake-auth".into(),
        system_roles: vec![system_role::AUTH.into()],
        dns_names: vec![AUTH_SERVER_NAME.into()],
        ttl: std::time::Duration::from_secs(7 * 24 * 3600),
        ..Default::default()
    })?;
    let tls = portcullis_rpc::server::server_tls(&cert, &key.serialize_pem(), &[ca.cert_pem().to_string()], client_ca_pems);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| BenchError::io("binding the fake leaf auth", e))?;
    let addr = listener.local_addr().map_err(|e| BenchError::io("fake leaf auth address", e))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let router = tonic::transport::Server::builder()
        .tls_config(tls)
        .map_err(|e| BenchError::Other(format!("fake leaf auth TLS: {e}")))?
        .add_service(AuthServer::new(FakeAuth { target }));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stop_rx.await;
        };
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, shutdown).await {
            tracing::error!("the fake leaf auth stopped: {e}");
        }
    });
    Ok(FakeAuthHandle { addr, ca_pem: ca.cert_pem().to_string(), stop: Some(stop_tx), task })
}
