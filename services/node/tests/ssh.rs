//! The node's SSH server end to end against a stand-in auth service: certificate checks,
//! the auth decision, exec output and exit status, audit events, missing Unix users.
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use portcullis_node::audit::Auditor;
use portcullis_node::backend::AuthBackend;
use portcullis_node::server::NodeContext;
use portcullis_node::users::LoginUser;
use portcullis_pki::ssh::{HostCertRequest, SshCa, UserCertRequest, generate_key, private_key_openssh};
use portcullis_pki::{Identity, Secret};
use portcullis_proto::auth::{AuthorizeSshRequest, AuthorizeSshResponse};
use russh::keys::{Algorithm, PrivateKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, client};
use serde_json::Value;
use tonic::Status;

/// Records what the node asked and answers with a fixed decision.
#[derive(Clone, Default)]
struct FakeAuth {
    deny: Option<String>,
    unreachable: bool,
    requests: Arc<Mutex<Vec<AuthorizeSshRequest>>>,
    events: Arc<Mutex<Vec<Value>>>,
}

impl AuthBackend for FakeAuth {
    fn authorize_ssh(&self, req: AuthorizeSshRequest) -> BoxFuture<'static, Result<AuthorizeSshResponse, Status>> {
        self.requests.lock().unwrap().push(req);
        let (deny, unreachable) = (self.deny.clone(), self.unreachable);
        Box::pin(async move {
            if unreachable {
                return Err(Status::unavailable("connection refused"));
            }
            Ok(AuthorizeSshResponse {
                allowed: deny.is_none(),
                reason: deny.unwrap_or_default(),
                username: "alice".into(),
                roles: vec!["access".into()],
                ..Default::default()
            })
        })
    }

    fn emit_audit_event(&self, event_json: String) -> BoxFuture<'static, Result<(), Status>> {
        let events = self.events.clone();
        Box::pin(async move {
            events.lock().unwrap().push(serde_json::from_str(&event_json).unwrap());
            Ok(())
        })
    }
}

impl FakeAuth {
    async fn wait_event(&self, kind: &str) -> Value {
        for _ in 0..100 {
            if let Some(e) = self.events.lock().unwrap().iter().find(|e| e["event"] == kind) {
                return e.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no {kind} event in {:?}", self.events.lock().unwrap());
    }
}

struct Cluster {
    user_ca: SshCa,
    host_ca: SshCa,
    addr: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
    _spool: tempfile::TempDir,
}

async fn start_node(auth: FakeAuth) -> Cluster {
    let user_ca = SshCa::generate().unwrap();
    let host_ca = SshCa::generate().unwrap();
    let host_key = generate_key().unwrap();
    let host_cert = host_ca
        .sign_host_cert(&HostCertRequest {
            public_key: host_key.public_key().clone(),
            host_id: "host-uuid".into(),
            nodename: "node-1".into(),
            cluster_name: "test.example.com".into(),
            role: "Node".into(),
            additional_principals: vec!["127.0.0.1".into()],
            ttl: Duration::from_secs(3600),
        })
        .unwrap();
    let id = Identity::new(
        "test.example.com".into(),
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
    let backend: Arc<dyn AuthBackend> = Arc::new(auth);
    let spool = tempfile::tempdir().unwrap();
    let ctx = Arc::new(NodeContext {
        nodename: "node-1".into(),
        node_id: "host-uuid".into(),
        auth: backend.clone(),
        audit: Auditor::open(&spool.path().join("audit-spool"), backend).unwrap(),
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
    Cluster { user_ca, host_ca, addr, _stop: stop, _spool: spool }
}

/// Accepts only a host certificate from the expected CA.
struct Client {
    host_ca: russh::keys::PublicKey,
}

impl client::Handler for Client {
    type Error = russh::Error;
    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(match key {
            PublicKeyOrCertificate::Certificate(c) => portcullis_pki::ssh::verify_host_cert(
                c,
                std::slice::from_ref(&self.host_ca),
                "node-1",
                portcullis_pki::unix_now(),
            )
            .is_ok(),
            PublicKeyOrCertificate::PublicKey { .. } => false,
        })
    }
}

fn user_cert(ca: &SshCa, key: &PrivateKey, logins: &[&str]) -> russh::keys::Certificate {
    ca.sign_user_cert(&UserCertRequest {
        public_key: key.public_key().clone(),
        username: "alice".into(),
        principals: logins.iter().map(|s| s.to_string()).collect(),
        ttl: Duration::from_secs(600),
        roles: vec!["access".into()],
        traits: Default::default(),
        route_to_cluster: String::new(),
        permit_port_forwarding: false,
        permit_agent_forwarding: false,
    })
    .unwrap()
}

async fn login(c: &Cluster, signer: &SshCa, login: &str) -> (client::Handle<Client>, bool) {
    let mut cfg = client::Config::default();
    cfg.preferred.host_key_certificates = vec![Algorithm::Ed25519].into();
    let handler = Client { host_ca: c.host_ca.public_key().clone() };
    let mut h = client::connect(Arc::new(cfg), c.addr, handler).await.unwrap();
    let key = generate_key().unwrap();
    let cert = user_cert(signer, &key, &[login]);
    let ok = h.authenticate_openssh_cert(login, Arc::new(key), cert).await.unwrap().success();
    (h, ok)
}

struct Result_ {
    out: String,
    err: String,
    status: Option<u32>,
}

async fn exec(h: &client::Handle<Client>, command: &str) -> Result_ {
    let mut ch = h.channel_open_session().await.unwrap();
    ch.exec(true, command).await.unwrap();
    ch.eof().await.unwrap();
    let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), None);
    let collect = async {
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::Data { data } => out.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, ext: 1 } => err.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), collect).await.expect("the session did not end");
    Result_ { out: String::from_utf8_lossy(&out).into(), err: String::from_utf8_lossy(&err).into(), status }
}

fn current_login() -> String {
    LoginUser::current().unwrap().name
}

#[tokio::test]
async fn certificate_login_runs_commands_and_audits_them() {
    let auth = FakeAuth::default();
    let c = start_node(auth.clone()).await;
    let me = current_login();
    let (h, ok) = login(&c, &c.user_ca, &me).await;
    assert!(ok, "login refused");
    {
        let reqs = auth.requests.lock().unwrap();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].login, me);
        assert_eq!(reqs[0].source, "node");
        assert!(reqs[0].node.is_empty());
        assert!(reqs[0].ssh_cert.contains("-cert-v01@openssh.com"));
    }
    let r = exec(&h, "echo hello; echo oops >&2; exit 7").await;
    assert_eq!(r.out, "hello\n");
    assert_eq!(r.err, "oops\n");
    assert_eq!(r.status, Some(7));

    let start = auth.wait_event("session.start").await;
    assert_eq!(start["user"], "alice");
    assert_eq!(start["login"], me.as_str());
    assert_eq!(start["roles"], serde_json::json!(["access"]));
    assert_eq!(start["node"], "node-1");
    assert_eq!(start["node_id"], "host-uuid");
    assert_eq!(start["interactive"], false);
    let exec_ev = auth.wait_event("exec").await;
    assert_eq!(exec_ev["exit_code"], 7);
    assert_eq!(exec_ev["command"], "echo hello; echo oops >&2; exit 7");
    assert_eq!(exec_ev["session_id"], start["session_id"]);
    let end = auth.wait_event("session.end").await;
    assert_eq!(end["exit_code"], 7);

    // A second channel on the same connection works too, and stdin reaches the command.
    let mut ch = h.channel_open_session().await.unwrap();
    ch.exec(true, "cat").await.unwrap();
    ch.data_bytes(b"piped\n".to_vec()).await.unwrap();
    ch.eof().await.unwrap();
    let mut out = Vec::new();
    let mut status = None;
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::Data { data } => out.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(out, b"piped\n");
    assert_eq!(status, Some(0));
}

#[tokio::test]
async fn pty_shell_session_works() {
    let auth = FakeAuth::default();
    let c = start_node(auth.clone()).await;
    let (h, ok) = login(&c, &c.user_ca, &current_login()).await;
    assert!(ok);
    let mut ch = h.channel_open_session().await.unwrap();
    ch.request_pty(true, "xterm", 120, 40, 0, 0, &[]).await.unwrap();
    ch.exec(true, "stty size; exit 3").await.unwrap();
    let mut out = Vec::new();
    let mut status = None;
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::Data { data } => out.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out), "40 120\r\n");
    assert_eq!(status, Some(3));
    assert_eq!(auth.wait_event("session.start").await["interactive"], true);
}

#[tokio::test]
async fn untrusted_certificate_is_refused_and_audited() {
    let auth = FakeAuth::default();
    let c = start_node(auth.clone()).await;
    let stranger = SshCa::generate().unwrap();
    let (_h, ok) = login(&c, &stranger, &current_login()).await;
    assert!(!ok);
    assert!(auth.requests.lock().unwrap().is_empty(), "auth must not be asked about an untrusted cert");
    let ev = auth.wait_event("auth").await;
    assert_eq!(ev["success"], false);
    assert_eq!(ev["user"], "alice");
    assert_eq!(ev["source"], "node");
    assert!(ev["error"].as_str().unwrap().contains("does not trust"), "{ev}");
}

#[tokio::test]
async fn auth_refusal_and_unreachable_auth_fail_closed() {
    let auth = FakeAuth { deny: Some("access denied".into()), ..Default::default() };
    let c = start_node(auth.clone()).await;
    let (_h, ok) = login(&c, &c.user_ca, &current_login()).await;
    assert!(!ok);
    assert_eq!(auth.requests.lock().unwrap().len(), 1);

    let auth = FakeAuth { unreachable: true, ..Default::default() };
    let c = start_node(auth.clone()).await;
    let (_h, ok) = login(&c, &c.user_ca, &current_login()).await;
    assert!(!ok);
    let ev = auth.wait_event("auth").await;
    assert_eq!(ev["success"], false);
}

#[tokio::test]
async fn missing_unix_user_gets_a_clear_message() {
    let auth = FakeAuth::default();
    let c = start_node(auth.clone()).await;
    let (h, ok) = login(&c, &c.user_ca, "portcullis-nobody-here").await;
    assert!(ok);
    let r = exec(&h, "true").await;
    assert_eq!(r.err, "portcullis: user \"portcullis-nobody-here\" does not exist on node \"node-1\"\r\n");
    assert_eq!(r.out, "");
    assert_eq!(r.status, Some(1));
}

#[tokio::test]
async fn large_streams_flow_both_ways() {
    let auth = FakeAuth::default();
    let c = start_node(auth.clone()).await;
    let (h, ok) = login(&c, &c.user_ca, &current_login()).await;
    assert!(ok);
    // Output larger than the SSH window: flow control must keep it whole.
    let r = exec(&h, "head -c 5000000 /dev/zero | tr '\\0' y").await;
    assert_eq!(r.out.len(), 5_000_000);
    assert_eq!(r.status, Some(0));

    // Input echoed back while it is still being sent.
    let ch = h.channel_open_session().await.unwrap();
    let (mut rd, wr) = ch.split();
    wr.exec(true, "cat").await.unwrap();
    const TOTAL: usize = 8_000_000;
    let sender = tokio::spawn(async move {
        let chunk = vec![b'z'; 32 * 1024];
        let mut sent = 0;
        while sent < TOTAL {
            wr.data_bytes(chunk.clone()).await.unwrap();
            sent += chunk.len();
        }
        wr.eof().await.unwrap();
        sent
    });
    let mut got = 0usize;
    let mut status = None;
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(msg) = rd.wait().await {
            match msg {
                ChannelMsg::Data { data } => got += data.len(),
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
    })
    .await
    .expect("echoing a large stream stalled");
    let sent = sender.await.unwrap();
    assert_eq!(got, sent);
    assert_eq!(status, Some(0));
}

/// OpenSSH's client (what `ssh -J` users run) logs in with the certificate, trusts the host
/// certificate through `@cert-authority`, and gets output and exit status.
#[tokio::test]
async fn openssh_client_interoperates() {
    if !std::path::Path::new("/usr/bin/ssh").exists() {
        eprintln!("skipped: no /usr/bin/ssh");
        return;
    }
    let auth = FakeAuth::default();
    let c = start_node(auth.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let key = generate_key().unwrap();
    let me = current_login();
    let cert = user_cert(&c.user_ca, &key, &[&me]);
    let key_path = dir.path().join("id");
    portcullis_pki::identity::write_private(&key_path, private_key_openssh(&key).unwrap().as_bytes()).unwrap();
    std::fs::write(dir.path().join("id-cert.pub"), cert.to_openssh().unwrap()).unwrap();
    let known = dir.path().join("known_hosts");
    std::fs::write(&known, format!("@cert-authority * {}\n", c.host_ca.public_line().unwrap())).unwrap();
    let out = tokio::process::Command::new("/usr/bin/ssh")
        .args(["-F", "/dev/null", "-p", &c.addr.port().to_string(), "-i"])
        .arg(&key_path)
        .arg("-o")
        .arg(format!("CertificateFile={}", dir.path().join("id-cert.pub").display()))
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known.display()))
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
        .args(["-o", "ConnectTimeout=10", "-l", &me, "127.0.0.1", "echo via-openssh; echo e >&2; exit 9"])
        .stdin(std::process::Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via-openssh\n", "stderr: {stderr}");
    assert!(stderr.contains('e'), "{stderr}");
    assert_eq!(out.status.code(), Some(9), "stderr: {stderr}");
}

/// A certificate whose roles grant no logins carries one placeholder principal; the node
/// refuses it as a login even if auth were to allow it, and audits why.
#[tokio::test]
async fn the_no_login_placeholder_is_never_a_login() {
    let auth = FakeAuth::default();
    let c = start_node(auth.clone()).await;
    let mut cfg = client::Config::default();
    cfg.preferred.host_key_certificates = vec![Algorithm::Ed25519].into();
    let handler = Client { host_ca: c.host_ca.public_key().clone() };
    let mut h = client::connect(Arc::new(cfg), c.addr, handler).await.unwrap();
    let key = generate_key().unwrap();
    let cert = user_cert(&c.user_ca, &key, &[]);
    let placeholder = cert.valid_principals()[0].clone();
    assert!(portcullis_pki::ssh::is_no_login(&placeholder), "{placeholder}");
    let ok = h.authenticate_openssh_cert(placeholder.clone(), Arc::new(key), cert).await.unwrap().success();
    assert!(!ok, "the placeholder principal was accepted as a login");
    assert!(auth.requests.lock().unwrap().is_empty(), "refused before asking auth");
    let ev = auth.wait_event("auth").await;
    assert_eq!(ev["success"], false);
    assert!(ev["error"].as_str().unwrap().contains("placeholder principal"), "{ev}");
}
