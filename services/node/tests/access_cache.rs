//! Logins decided from the access cache while auth is unreachable: allowed by the snapshot's
//! roles, refused (and audited by the node) once a snapshot removes the role, and refused with
//! a clear reason when the cache is empty and auth cannot be asked either.
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use portcullis_access::{AccessCache, AccessSnapshot};
use portcullis_node::audit::Auditor;
use portcullis_node::backend::{AuthBackend, CachedAuth};
use portcullis_node::server::NodeContext;
use portcullis_node::users::LoginUser;
use portcullis_pki::ssh::{HostCertRequest, SshCa, UserCertRequest, generate_key, private_key_openssh};
use portcullis_pki::{Identity, Secret};
use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_proto::auth::{AuthorizeSshRequest, AuthorizeSshResponse};
use russh::keys::{Algorithm, PublicKeyOrCertificate};
use russh::{ChannelMsg, client};
use serde_json::Value;
use tonic::Status;

const CLUSTER: &str = "test.example.com";

/// Where the node's audit events land; auth itself is down (see [`dead_auth`]).
#[derive(Clone, Default)]
struct AuditLog(Arc<Mutex<Vec<Value>>>);

impl AuthBackend for AuditLog {
    fn authorize_ssh(&self, _: AuthorizeSshRequest) -> BoxFuture<'static, Result<AuthorizeSshResponse, Status>> {
        Box::pin(async { Err(Status::unavailable("not used")) })
    }

    fn emit_audit_event(&self, event_json: String) -> BoxFuture<'static, Result<(), Status>> {
        let events = self.0.clone();
        Box::pin(async move {
            events.lock().unwrap().push(serde_json::from_str(&event_json).unwrap());
            Ok(())
        })
    }
}

impl AuditLog {
    async fn wait_for(&self, what: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..100 {
            if let Some(e) = self.0.lock().unwrap().iter().find(|e| what(e)) {
                return e.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no such audit event in {:?}", self.0.lock().unwrap());
    }
}

/// An auth client whose every call fails at once: port 1 refuses connections.
fn dead_auth() -> AuthClient<portcullis_rpc::Channel> {
    let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
    AuthClient::new(portcullis_rpc::Channel::new(channel))
}

fn role(name: &str, logins: &[String]) -> portcullis_types::Role {
    serde_json::from_value(serde_json::json!({
        "kind": "role",
        "version": "v7",
        "metadata": {"name": name},
        "spec": {"allow": {"logins": logins, "node_labels": {"*": "*"}}},
    }))
    .unwrap()
}

/// A snapshot where alice holds `alice_roles` and role `access` allows the current login.
fn snapshot(user_ca: &SshCa, revision: u64, alice_roles: &[&str]) -> AccessSnapshot {
    AccessSnapshot {
        cluster_name: CLUSTER.into(),
        revision,
        user_cas: vec![user_ca.public_line().unwrap()],
        roles: vec![role("access", &[current_login()])],
        users: [("alice".to_string(), alice_roles.iter().map(|r| r.to_string()).collect())].into_iter().collect(),
        ..Default::default()
    }
}

fn current_login() -> String {
    LoginUser::current().unwrap().name
}

struct Node {
    user_ca: SshCa,
    host_ca: SshCa,
    addr: std::net::SocketAddr,
    audit: AuditLog,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn start_node(user_ca: SshCa, cache: AccessCache) -> Node {
    let host_ca = SshCa::generate().unwrap();
    let host_key = generate_key().unwrap();
    let host_cert = host_ca
        .sign_host_cert(&HostCertRequest {
            public_key: host_key.public_key().clone(),
            host_id: "host-uuid".into(),
            nodename: "node-1".into(),
            cluster_name: CLUSTER.into(),
            role: "Node".into(),
            additional_principals: vec!["127.0.0.1".into()],
            ttl: Duration::from_secs(3600),
        })
        .unwrap();
    let id = Identity::new(
        CLUSTER.into(),
        "host-uuid".into(),
        "node-1".into(),
        "node".into(),
        String::new(),
        Secret::new(String::new()),
        vec![],
        Secret::new(private_key_openssh(&host_key).unwrap()),
        host_cert.to_openssh().unwrap(),
    );
    let config = Arc::new(portcullis_node::ssh_config(&id).unwrap());
    let own = portcullis_types::Node::new("host-uuid", "node-1", "127.0.0.1:0", Default::default());
    let backend: Arc<dyn AuthBackend> = Arc::new(CachedAuth::new(dead_auth(), cache, own));
    let audit = AuditLog::default();
    let dir = tempfile::tempdir().unwrap();
    let ctx = Arc::new(NodeContext {
        nodename: "node-1".into(),
        node_id: "host-uuid".into(),
        auth: backend,
        audit: Auditor::open(&dir.path().join("audit-spool"), Arc::new(audit.clone())).unwrap(),
        user_cas: Arc::new(RwLock::new(vec![user_ca.public_key().clone()])),
        cas_refreshed: Default::default(),
        metrics: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(portcullis_node::serve_ssh(listener, config, ctx, async move {
        let _ = stopped.await;
    }));
    Node { user_ca, host_ca, addr, audit, _stop: stop, _dir: dir }
}

struct Client {
    host_ca: russh::keys::PublicKey,
}

impl client::Handler for Client {
    type Error = russh::Error;
    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(match key {
            PublicKeyOrCertificate::Certificate(c) => {
                let cas = std::slice::from_ref(&self.host_ca);
                portcullis_pki::ssh::verify_host_cert(c, cas, "node-1", portcullis_pki::unix_now()).is_ok()
            }
            PublicKeyOrCertificate::PublicKey { .. } => false,
        })
    }
}

/// Logs in as alice (role `access` in the certificate) with `login`.
async fn login(n: &Node, login: &str) -> (client::Handle<Client>, bool) {
    let mut cfg = client::Config::default();
    cfg.preferred.host_key_certificates = vec![Algorithm::Ed25519].into();
    let mut h = client::connect(Arc::new(cfg), n.addr, Client { host_ca: n.host_ca.public_key().clone() }).await.unwrap();
    let key = generate_key().unwrap();
    let cert = n
        .user_ca
        .sign_user_cert(&UserCertRequest {
            public_key: key.public_key().clone(),
            username: "alice".into(),
            principals: vec![login.to_string()],
            ttl: Duration::from_secs(600),
            roles: vec!["access".into()],
            traits: Default::default(),
            route_to_cluster: String::new(),
            permit_port_forwarding: false,
            permit_agent_forwarding: false,
        })
        .unwrap();
    let ok = h.authenticate_openssh_cert(login, Arc::new(key), cert).await.unwrap().success();
    (h, ok)
}

async fn exec_output(h: &client::Handle<Client>, command: &str) -> String {
    let mut ch = h.channel_open_session().await.unwrap();
    ch.exec(true, command).await.unwrap();
    ch.eof().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::Data { data } => out.extend_from_slice(&data),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
    })
    .await
    .expect("the session did not end");
    String::from_utf8_lossy(&out).into()
}

#[tokio::test]
async fn with_auth_down_the_cache_decides_and_follows_role_removal() {
    let user_ca = SshCa::generate().unwrap();
    let cache = AccessCache::empty();
    assert!(cache.offer(snapshot(&user_ca, 1, &["access"])).await);
    let n = start_node(user_ca, cache.clone()).await;
    let me = current_login();

    let (h, ok) = login(&n, &me).await;
    assert!(ok, "the cache should have let alice in with auth down");
    assert_eq!(exec_output(&h, "echo from-cache").await, "from-cache\n");

    // A login the role does not allow is refused locally, and the node audits it.
    let (_h, ok) = login(&n, "not-a-login-of-the-role").await;
    assert!(!ok);
    let refused = n.audit.wait_for(|e| e["event"] == "auth" && e["login"] == "not-a-login-of-the-role").await;
    assert_eq!(refused["success"], false);
    assert_eq!(refused["user"], "alice");
    assert!(refused["error"].as_str().unwrap().contains("access denied to alice"), "{refused}");

    // The admin removes the role: the next snapshot takes effect before the certificate expires.
    assert!(cache.offer(snapshot(&n.user_ca, 2, &[])).await);
    let (_h, ok) = login(&n, &me).await;
    assert!(!ok, "a removed role must stop working");
    let refused = n.audit.wait_for(|e| e["event"] == "auth" && e["login"] == me.as_str()).await;
    assert!(refused["error"].as_str().unwrap().contains("removed"), "{refused}");

    // An older snapshot (a lagging auth replica) does not bring the role back.
    assert!(!cache.offer(snapshot(&n.user_ca, 1, &["access"])).await);
    let (_h, ok) = login(&n, &me).await;
    assert!(!ok);
}

#[tokio::test]
async fn an_empty_cache_asks_auth_and_says_why_it_could_not_decide() {
    let n = start_node(SshCa::generate().unwrap(), AccessCache::empty()).await;
    let me = current_login();
    let (_h, ok) = login(&n, &me).await;
    assert!(!ok, "no snapshot and no auth: no decision, no login");
    let refused = n.audit.wait_for(|e| e["event"] == "auth" && e["login"] == me.as_str()).await;
    let error = refused["error"].as_str().unwrap();
    assert!(error.contains("authorization failed") && error.contains("access cache is empty"), "{error}");
}
