//! Test fixtures: a leaf PKI, a fake leaf auth service and a fake root proxy, both over real
//! mutual TLS, and the agent running in-process against them.
#![allow(dead_code)]

pub mod auth;
pub mod proxy;

use std::time::Duration;

use portcullis_pki::x509::{self, AUTH_SERVER_NAME, PROXY_SERVER_NAME, TlsCa, TlsCertRequest, SystemRole};
use portcullis_pki::{Identity, Secret};
use portcullis_proto::auth::TrustedClusterTarget;
use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_rpc::{ClientTls, connect_lazy};
use tokio::sync::oneshot;

pub const ROOT: &str = "root.example.com";
pub const LEAF: &str = "leaf.example.com";
pub const AGENT_ID: &str = "agent-host-1";

/// The CAs of both clusters and the certificates the fakes and the agent present.
pub struct Pki {
    pub root: TlsCa,
    pub leaf: TlsCa,
    pub identity: Identity,
    /// The root proxy's server certificate and key (PEM).
    pub proxy: (String, String),
    /// The leaf auth service's server certificate and key (PEM).
    pub auth: (String, String),
}

fn server_cert(ca: &TlsCa, name: &str, role: &str) -> (String, String) {
    let key = x509::generate_key().unwrap();
    let cert = ca
        .issue(&TlsCertRequest {
            public_key_der: x509::public_key_der(&key),
            name: name.into(),
            system_roles: vec![role.into()],
            dns_names: vec![name.into()],
            ttl: Duration::from_secs(3600),
            ..Default::default()
        })
        .unwrap();
    (cert, key.serialize_pem())
}

impl Pki {
    pub fn new() -> Self {
        portcullis_rpc::install_crypto_provider();
        let root = TlsCa::generate(ROOT).unwrap();
        let leaf = TlsCa::generate(LEAF).unwrap();
        let key = x509::generate_key().unwrap();
        let cert = leaf
            .issue(&TlsCertRequest {
                public_key_der: x509::public_key_der(&key),
                name: AGENT_ID.into(),
                system_roles: vec![SystemRole::Agent.into()],
                ttl: Duration::from_secs(3600),
                ..Default::default()
            })
            .unwrap();
        let identity = Identity::new(
            LEAF.into(),
            AGENT_ID.into(),
            "agent-host".into(),
            SystemRole::Agent.into(),
            cert,
            Secret::new(key.serialize_pem()),
            vec![leaf.cert_pem().to_string()],
            Secret::new(String::new()),
            String::new(),
        );
        let proxy = server_cert(&root, PROXY_SERVER_NAME, SystemRole::Proxy.as_str());
        let auth = server_cert(&leaf, AUTH_SERVER_NAME, SystemRole::Auth.as_str());
        Pki { root, leaf, identity, proxy, auth }
    }

    /// The trusted_cluster target for the root, its tunnel at `addr`.
    pub fn target(&self, addr: &str, enabled: bool) -> TrustedClusterTarget {
        TrustedClusterTarget {
            name: ROOT.into(),
            enabled,
            tunnel_addr: addr.into(),
            root_tls_ca_pem: vec![self.root.cert_pem().to_string()],
        }
    }
}

/// The agent running in the test's runtime; dropping it stops the agent.
pub struct RunningAgent {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), portcullis_tunnel_agent::AgentError>>,
}

impl RunningAgent {
    pub fn start(pki: &Pki, auth_addr: &str) -> Self {
        let _ =
            tracing_subscriber::fmt().with_env_filter("portcullis_tunnel_agent=debug").with_test_writer().try_init();
        let tls = ClientTls::from_identity(&pki.identity, AUTH_SERVER_NAME);
        let auth = AuthClient::new(connect_lazy(auth_addr, &tls).unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(portcullis_tunnel_agent::run_with_identity(
            pki.identity.clone(),
            auth,
            auth_addr.to_string(),
            async move {
                let _ = stopped.await;
            },
        ));
        RunningAgent { stop: Some(stop), task }
    }

    /// Stops the agent and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let res = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
        assert!(matches!(res, Ok(Ok(Ok(())))), "the agent did not stop cleanly: {res:?}");
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `cond` until it holds, failing the test after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
