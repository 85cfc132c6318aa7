//! Test helpers: the fake auth service (from portcullis-fake-auth) configured as the proxy's
//! tests need it, over plain gRPC, and a proxy state that talks to it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use portcullis_fake_auth::FakeAuth as Fake;
use portcullis_proto::auth::*;
use tonic::Status;

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
        self.access.send_replace(Some(portcullis_fake_auth::access_message(snap).unwrap()));
    }
}

fn cas() -> CertAuthorities {
    CertAuthorities {
        tls_ca_pem: vec!["tls-ca".into()],
        ssh_user_ca: vec!["user-ca".into()],
        ssh_host_ca: vec!["host-ca".into()],
    }
}

/// The shared fake configured with `fake`'s answers, recording into `fake`.
fn configured(fake: Arc<FakeAuth>) -> Fake {
    let f = fake.clone();
    let auth = Fake::new().watch_access(fake.access.subscribe()).authenticate_user(move |r| {
        let r = r.into_inner();
        f.logins.lock().unwrap().push(r.clone());
        if r.password != PASSWORD {
            return Err(Status::unauthenticated("invalid username or password"));
        }
        Ok(UserCerts {
            username: r.username,
            ssh_cert: "ssh-cert".into(),
            tls_cert_pem: "tls-cert".into(),
            cas: Some(cas()),
            cluster_name: CLUSTER.into(),
            ..Default::default()
        })
    });
    let f = fake.clone();
    let auth = auth.heartbeat(move |_| {
        let leaf_cas = f.leaf_cas.lock().unwrap().clone();
        let proxies = vec![Proxy { id: "other-proxy".into(), tunnel_addr: "other:3024".into() }];
        Ok(HeartbeatResponse { cas: Some(cas()), leaf_cas, proxies, ..Default::default() })
    });
    let f = fake.clone();
    let auth = auth.list_nodes(move |r| {
        if r.into_inner().user_tls_cert.is_empty() {
            return Err(Status::unauthenticated("no user certificate"));
        }
        Ok(ListNodesResponse { nodes: f.nodes.clone() })
    });
    let f = fake.clone();
    let auth = auth.resolve_node(move |r| {
        let r = r.into_inner();
        f.resolved.lock().unwrap().push((r.host.clone(), r.port));
        let found = f.nodes.iter().find(|n| {
            (n.hostname == r.host || n.id == r.host) && (r.port == 0 || n.addr.ends_with(&format!(":{}", r.port)))
        });
        match found {
            Some(n) => Ok(ResolveNodeResponse { node: Some(n.clone()) }),
            None => Err(Status::not_found(format!("no node {}", r.host))),
        }
    });
    let auth = auth.authorize_ssh(|r| {
        let r = r.into_inner();
        Ok(AuthorizeSshResponse {
            allowed: false,
            reason: format!("login {:?} is not allowed (source {})", r.login, r.source),
            ..Default::default()
        })
    });
    let f = fake.clone();
    let auth = auth.validate_trusted_cluster(move |r| {
        let r = r.into_inner();
        f.validations.lock().unwrap().push(r.clone());
        if r.token != CLUSTER_TOKEN {
            return Err(Status::permission_denied("access denied: the cluster token has been rejected"));
        }
        Ok(ValidateTrustedClusterResponse { root_cluster_name: CLUSTER.into(), root_cas: Some(cas()) })
    });
    let f = fake.clone();
    let auth = auth.report_tunnels(move |r| {
        f.reports.lock().unwrap().push(r.into_inner());
        Ok(Empty {})
    });
    auth.list_remote_clusters(move |r| {
        let r = r.into_inner();
        if r.user_tls_cert.is_empty() && r.user_ssh_cert.is_empty() {
            return Err(Status::invalid_argument("a proxy must name the user (user_tls_cert)"));
        }
        Ok(ListRemoteClustersResponse { clusters: fake.remote_clusters.clone() })
    })
}

/// Serves `fake` over plain gRPC on a local port.
pub async fn serve_fake(fake: Arc<FakeAuth>) -> SocketAddr {
    configured(fake).start().await.unwrap().addr
}

/// [`serve_fake`], with a task whose abort kills the fake as a dying auth process would: its
/// listener closes and every open connection (streams included) drops.
pub async fn serve_fake_stoppable(fake: Arc<FakeAuth>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let running = configured(fake).start().await.unwrap();
    let addr = running.addr;
    let guard = running.kill_on_drop();
    // Aborting the task drops the guard, which kills the fake.
    let task = tokio::spawn(async move {
        let _guard = guard;
        std::future::pending::<()>().await
    });
    (addr, task)
}

/// An auth client over plain gRPC to `addr`.
pub fn auth_client(addr: SocketAddr) -> portcullis_proto::auth::auth_client::AuthClient<portcullis_rpc::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    portcullis_proto::auth::auth_client::AuthClient::new(portcullis_rpc::Channel::new(channel))
}

/// [`state`] answering from `access` (the proxy's access cache).
pub fn state_with_access(auth: Option<SocketAddr>, access: portcullis_access::AccessCache) -> Arc<ProxyState> {
    state_built(auth, vec![], access).0
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
    state_built(auth, ssh_user_cas, portcullis_access::AccessCache::empty())
}

fn state_built(
    auth: Option<SocketAddr>,
    ssh_user_cas: Vec<russh::keys::PublicKey>,
    access: portcullis_access::AccessCache,
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
    let state = Arc::new(ProxyState::new(crate::state::StateParts {
        cluster_name: CLUSTER.into(),
        host_id: "host-1".into(),
        nodename: "proxy-1".into(),
        auth: portcullis_proto::auth::auth_client::AuthClient::new(portcullis_rpc::Channel::new(channel)),
        cas: TrustedCas { ssh_user: ssh_user_cas, tls_pems: vec![ca.cert_pem().to_string()] },
        client_verifier: verifier,
        addrs,
        hub: crate::tunnel::Hub::start(CLUSTER, "host-1", "127.0.0.1:43024", Default::default()).unwrap(),
        access,
        metrics: Default::default(),
        active: Default::default(),
        audit: None,
    }));
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
