//! Test helpers: a fake auth service over plain gRPC and a proxy state that talks to it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use portcullis_proto::auth::auth_server::{Auth, AuthServer};
use portcullis_proto::auth::*;
use tonic::{Request, Response, Status};

use crate::state::{Addrs, ProxyState, TrustedCas};
use crate::web::tls::ReloadableClientVerifier;

pub const CLUSTER: &str = "root.example.com";
pub const PASSWORD: &str = "correct horse";
/// The invite token the fake auth accepts from leaf clusters.
pub const CLUSTER_TOKEN: &str = "invite-token";

/// What the fake auth service knows and what it was asked.
#[derive(Default)]
pub struct FakeAuth {
    pub nodes: Vec<Node>,
    /// (host, port) of every ResolveNode call.
    pub resolved: Mutex<Vec<(String, u32)>>,
    pub logins: Mutex<Vec<AuthenticateUserRequest>>,
    /// Leaves ListRemoteClusters answers with (whatever the user).
    pub remote_clusters: Vec<RemoteCluster>,
    /// What heartbeats answer in `leaf_cas`.
    pub leaf_cas: Mutex<Vec<ClusterCa>>,
    pub reports: Mutex<Vec<ReportTunnelsRequest>>,
    pub validations: Mutex<Vec<ValidateTrustedClusterRequest>>,
    /// What WatchAccess streams: the current message at once, then each one set here.
    pub access: tokio::sync::watch::Sender<Option<AccessSnapshotMessage>>,
}

impl FakeAuth {
    /// Streams `snap` to every WatchAccess subscriber (now and from now on).
    pub fn set_access(&self, snap: &portcullis_access::AccessSnapshot) {
        let msg = AccessSnapshotMessage { snapshot_json: snap.to_json().unwrap(), revision: snap.revision };
        self.access.send_replace(Some(msg));
    }
}

fn cas() -> CertAuthorities {
    CertAuthorities {
        tls_ca_pem: vec!["tls-ca".into()],
        ssh_user_ca: vec!["user-ca".into()],
        ssh_host_ca: vec!["host-ca".into()],
    }
}

fn nope<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in the fake"))
}

/// The fake as a gRPC service (the trait cannot be implemented for `Arc` here).
struct Served(Arc<FakeAuth>);

impl std::ops::Deref for Served {
    type Target = FakeAuth;
    fn deref(&self) -> &FakeAuth {
        &self.0
    }
}

#[tonic::async_trait]
impl Auth for Served {
    async fn join(&self, _: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        nope()
    }
    async fn ping(&self, _: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        nope()
    }
    async fn authenticate_user(&self, r: Request<AuthenticateUserRequest>) -> Result<Response<UserCerts>, Status> {
        let r = r.into_inner();
        self.logins.lock().unwrap().push(r.clone());
        if r.password != PASSWORD {
            return Err(Status::unauthenticated("invalid username or password"));
        }
        Ok(Response::new(UserCerts {
            username: r.username,
            ssh_cert: "ssh-cert".into(),
            tls_cert_pem: "tls-cert".into(),
            cas: Some(cas()),
            cluster_name: CLUSTER.into(),
            ..Default::default()
        }))
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
        let leaf_cas = self.leaf_cas.lock().unwrap().clone();
        let proxies = vec![Proxy { id: "other-proxy".into(), tunnel_addr: "other:3024".into() }];
        Ok(Response::new(HeartbeatResponse { cas: Some(cas()), leaf_cas, proxies, ..Default::default() }))
    }
    async fn list_nodes(&self, r: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        if r.into_inner().user_tls_cert.is_empty() {
            return Err(Status::unauthenticated("no user certificate"));
        }
        Ok(Response::new(ListNodesResponse { nodes: self.nodes.clone() }))
    }
    async fn resolve_node(&self, r: Request<ResolveNodeRequest>) -> Result<Response<ResolveNodeResponse>, Status> {
        let r = r.into_inner();
        self.resolved.lock().unwrap().push((r.host.clone(), r.port));
        let found = self.nodes.iter().find(|n| {
            (n.hostname == r.host || n.id == r.host) && (r.port == 0 || n.addr.ends_with(&format!(":{}", r.port)))
        });
        match found {
            Some(n) => Ok(Response::new(ResolveNodeResponse { node: Some(n.clone()) })),
            None => Err(Status::not_found(format!("no node {}", r.host))),
        }
    }
    async fn authorize_ssh(&self, r: Request<AuthorizeSshRequest>) -> Result<Response<AuthorizeSshResponse>, Status> {
        let r = r.into_inner();
        Ok(Response::new(AuthorizeSshResponse {
            allowed: false,
            reason: format!("login {:?} is not allowed (source {})", r.login, r.source),
            ..Default::default()
        }))
    }
    async fn emit_audit_event(&self, _: Request<AuditEventRequest>) -> Result<Response<Empty>, Status> {
        nope()
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
        r: Request<ValidateTrustedClusterRequest>,
    ) -> Result<Response<ValidateTrustedClusterResponse>, Status> {
        let r = r.into_inner();
        self.validations.lock().unwrap().push(r.clone());
        if r.token != CLUSTER_TOKEN {
            return Err(Status::permission_denied("access denied: the cluster token has been rejected"));
        }
        Ok(Response::new(ValidateTrustedClusterResponse { root_cluster_name: CLUSTER.into(), root_cas: Some(cas()) }))
    }
    async fn report_tunnels(&self, r: Request<ReportTunnelsRequest>) -> Result<Response<Empty>, Status> {
        self.reports.lock().unwrap().push(r.into_inner());
        Ok(Response::new(Empty {}))
    }
    async fn list_remote_clusters(
        &self,
        r: Request<ListRemoteClustersRequest>,
    ) -> Result<Response<ListRemoteClustersResponse>, Status> {
        let r = r.into_inner();
        if r.user_tls_cert.is_empty() && r.user_ssh_cert.is_empty() {
            return Err(Status::invalid_argument("a proxy must name the user (user_tls_cert)"));
        }
        Ok(Response::new(ListRemoteClustersResponse { clusters: self.remote_clusters.clone() }))
    }
    async fn watch_access(
        &self,
        _: Request<WatchAccessRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<AccessSnapshotMessage>>, Status> {
        let mut updates = self.access.subscribe();
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
        _: Request<ListTrustedClustersRequest>,
    ) -> Result<Response<ListTrustedClustersResponse>, Status> {
        nope()
    }
}

/// Serves `fake` over plain gRPC on a local port.
pub async fn serve_fake(fake: Arc<FakeAuth>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuthServer::new(Served(fake)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

/// [`serve_fake`], with a task whose abort kills the fake as a dying auth process would: its
/// listener closes and every open connection (streams included) drops. (Aborting tonic's
/// server task alone leaves the connections it spawned running.)
pub async fn serve_fake_stoppable(fake: Arc<FakeAuth>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let backend = serve_fake(fake).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let relay = tokio::spawn(async move {
        // Dropped with this task when it is aborted, which aborts every relayed connection.
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut client, _)) = listener.accept().await {
            conns.spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (addr, relay)
}

/// An auth client over plain gRPC to `addr`.
pub fn auth_client(addr: SocketAddr) -> portcullis_proto::auth::auth_client::AuthClient<portcullis_rpc::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    portcullis_proto::auth::auth_client::AuthClient::new(portcullis_rpc::Channel::new(channel))
}

/// [`state`] answering from `access` (the proxy's access cache).
pub fn state_with_access(auth: Option<SocketAddr>, access: portcullis_access::AccessCache) -> Arc<ProxyState> {
    let state = state(auth, vec![]);
    let state = Arc::try_unwrap(state).unwrap_or_else(|_| unreachable!("a fresh state has one owner"));
    Arc::new(state.with_access(access))
}

/// A proxy state whose auth client talks to `auth` (plain gRPC; an unused port when none).
pub fn state(auth: Option<SocketAddr>, ssh_user_cas: Vec<russh::keys::PublicKey>) -> Arc<ProxyState> {
    state_with_ca(auth, ssh_user_cas).0
}

/// [`state`], also returning the TLS CA whose client certificates the proxy trusts.
pub fn state_with_ca(
    auth: Option<SocketAddr>,
    ssh_user_cas: Vec<russh::keys::PublicKey>,
) -> (Arc<ProxyState>, portcullis_pki::x509::TlsCa) {
    let ca = portcullis_pki::x509::TlsCa::generate(CLUSTER).unwrap();
    let verifier = Arc::new(ReloadableClientVerifier::new(&[ca.cert_pem().to_string()]).unwrap());
    // Port 1 refuses connections: calls fail at once with Unavailable.
    let addr = auth.map(|a| a.to_string()).unwrap_or_else(|| "127.0.0.1:1".into());
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let addrs = Addrs {
        web: "0.0.0.0:43080".parse().unwrap(),
        ssh: "0.0.0.0:43023".parse().unwrap(),
        tunnel: Some("0.0.0.0:43024".parse().unwrap()),
        tunnel_configured: "0.0.0.0:3024".parse().unwrap(),
        public_addr: None,
        ssh_public_addr: None,
        tunnel_public_addr: None,
    };
    let state = Arc::new(ProxyState::new(
        CLUSTER.into(),
        "host-1".into(),
        "proxy-1".into(),
        portcullis_proto::auth::auth_client::AuthClient::new(portcullis_rpc::Channel::new(channel)),
        TrustedCas { ssh_user: ssh_user_cas, tls_pems: vec![ca.cert_pem().to_string()] },
        verifier,
        addrs,
        crate::tunnel::Hub::start(CLUSTER, "host-1", "127.0.0.1:43024", Default::default()).unwrap(),
    ));
    (state, ca)
}

/// A node record.
pub fn node(id: &str, hostname: &str, addr: &str) -> Node {
    Node {
        id: id.into(),
        hostname: hostname.into(),
        addr: addr.into(),
        labels: [("env".to_string(), "test".to_string())].into_iter().collect(),
        cluster: CLUSTER.into(),
        ..Default::default()
    }
}
