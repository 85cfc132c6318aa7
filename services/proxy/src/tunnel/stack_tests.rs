//! The root side end to end, in process: the heartbeat brings the leaf's CA, a fake agent
//! connects over mutual TLS, tunnel counts reach auth, and users reach the leaf through the
//! web API (HTTPS with a client certificate) and the SSH front door.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_pki::ssh::{HostCertRequest, SshCa, UserCertRequest, generate_key};
use portcullis_pki::x509::TlsCa;
use portcullis_pki::{Identity, Secret};
use portcullis_proto::auth::{ClusterCa, RemoteCluster};
use russh::client;
use russh::keys::PublicKeyOrCertificate;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::fake_agent::{self, FakeAgent};
use super::tests::{LEAF, behaviour, echo_server, eventually, serve_tunnels};
use crate::heartbeat::{self, Announcement};
use crate::testutil::{self, CLUSTER, FakeAuth};

struct SshClient;

impl client::Handler for SshClient {
    type Error = russh::Error;
    async fn check_server_key(&mut self, _key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

fn ssh_identity() -> Identity {
    let key = generate_key().unwrap();
    let cert = SshCa::generate()
        .unwrap()
        .sign_host_cert(&HostCertRequest {
            public_key: key.public_key().clone(),
            host_id: "host-1".into(),
            nodename: "proxy-1".into(),
            cluster_name: CLUSTER.into(),
            role: "Proxy".into(),
            additional_principals: vec![],
            ttl: Duration::from_secs(3600),
        })
        .unwrap();
    Identity::new(
        CLUSTER.into(),
        "host-1".into(),
        "proxy-1".into(),
        "proxy".into(),
        String::new(),
        Secret::new(String::new()),
        vec![],
        Secret::new(portcullis_pki::ssh::private_key_openssh(&key).unwrap()),
        cert.to_openssh().unwrap(),
    )
}

async fn echo_through(stream: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin), msg: &[u8]) {
    stream.write_all(msg).await.unwrap();
    stream.flush().await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut buf)).await.unwrap().unwrap();
    assert_eq!(buf, msg);
}

/// An HTTPS client presenting `alice`'s certificate from the user CA (server not checked).
fn https_client(user_tls_ca: &TlsCa) -> reqwest::Client {
    let (cert, key) = fake_agent::issue(user_tls_ca, "alice", &["User"]);
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.expose().as_bytes()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(portcullis_rpc::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(portcullis_pki::verify::InsecureAcceptAnyServer::dangerously_new()))
        .with_client_auth_cert(chain, key)
        .unwrap();
    reqwest::Client::builder().use_preconfigured_tls(cfg).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_proxy_serves_a_leaf_cluster() {
    portcullis_rpc::install_crypto_provider();
    let echo = echo_server().await;
    let leaf_ca = TlsCa::generate(LEAF).unwrap();
    let leaf_labels = [("env".to_string(), "leafy".to_string())].into_iter().collect();
    let fake = Arc::new(FakeAuth {
        remote_clusters: vec![
            RemoteCluster {
                name: LEAF.into(),
                connection: "offline".into(),
                labels: leaf_labels,
                last_heartbeat: "2025-01-01T00:00:00Z".into(),
            },
            RemoteCluster { name: "zzz.example.com".into(), connection: "offline".into(), ..Default::default() },
        ],
        leaf_cas: Mutex::new(vec![ClusterCa { cluster_name: LEAF.into(), tls_ca_pem: vec![leaf_ca.cert_pem().into()] }]),
        ..Default::default()
    });
    let user_ssh_ca = SshCa::generate().unwrap();
    let auth = testutil::serve_fake(fake.clone()).await;
    let (state, user_tls_ca) = testutil::state_with_ca(Some(auth), vec![user_ssh_ca.public_key().clone()]);

    // The heartbeat brings the leaf's CA: the leaf is known, but offline.
    let ann = Announcement {
        hostname: "proxy-1".into(),
        addr: "127.0.0.1:3080".into(),
        tunnel_addr: "127.0.0.1:43024".into(),
        labels: Default::default(),
    };
    let stop = crate::drain::Drain::new();
    let beats = tokio::spawn(heartbeat::run(state.clone(), ann, stop.clone()));
    eventually("the leaf CA from the heartbeat", || state.sites.hub().knows_leaf(LEAF)).await;
    let e = state.router.dial(LEAF, "node-1", 0, "alice").await.err().unwrap().to_string();
    assert!(e.ends_with("is offline: no reverse tunnel from it is connected to this proxy"), "{e}");

    // An agent connects; its tunnel is reported to auth promptly.
    let root_ca = TlsCa::generate(CLUSTER).unwrap();
    let (tunnel_addr, _stop_tunnels) = serve_tunnels(state.sites.hub().clone(), &root_ca).await;
    let cert = fake_agent::issue(&leaf_ca, "agent-1", &["Agent"]);
    let channel = fake_agent::channel(&tunnel_addr, root_ca.cert_pem(), cert).await.unwrap();
    let agent = FakeAgent::start(channel, behaviour("agent-1", &echo)).await.unwrap();
    let ids: Vec<&str> = agent.proxies.proxies.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["host-1", "other-proxy"]);
    eventually("the leaf's tunnel", || state.sites.is_online(LEAF)).await;
    let reported = |n: u32| {
        let fake = fake.clone();
        // The latest report counts: earlier ones said 0 before the agent came.
        move || fake.reports.lock().unwrap().last().is_some_and(|r| r.proxy_id == "host-1" && r.tunnels.get(LEAF) == Some(&n))
    };
    eventually("a report of one tunnel", reported(1)).await;

    // Web API with the user's client certificate.
    let tls = crate::web::tls::server_config(&[], &["localhost".into()], state.client_verifier.verifier()).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let web_drain = crate::drain::Drain::new();
    tokio::spawn(crate::web::start(state.clone(), listener, tls, web_drain.clone()).unwrap());
    let http = https_client(&user_tls_ca);
    let url = |p: &str| format!("https://127.0.0.1:{port}{p}");

    let v: Value = http.get(url("/webapi/sites")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["sites"][0], json!({"name": CLUSTER, "status": "online", "type": "root", "labels": {}}));
    assert_eq!(
        v["sites"][1],
        json!({"name": LEAF, "status": "online", "type": "leaf", "labels": {"env": "leafy"}, "last_heartbeat": "2025-01-01T00:00:00Z"})
    );
    assert_eq!(v["sites"][2]["status"], "offline");

    let resp = http.get(url(&format!("/webapi/sites/{LEAF}/nodes"))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["nodes"][0]["hostname"], "node-1");
    assert_eq!(v["nodes"][0]["tunnel"], true);

    let resp = http.get(url("/webapi/sites/hidden.example.com/nodes")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "cluster \"hidden.example.com\" is not found");
    let resp = http.get(url("/webapi/sites/zzz.example.com/nodes")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "cluster \"zzz.example.com\" is offline: no reverse tunnel from it is connected to this proxy"
    );

    // The proxy answers only the holder: an SSH certificate for the TLS client's user.
    let alice_cert = user_ssh_ca
        .sign_user_cert(&UserCertRequest {
            public_key: generate_key().unwrap().public_key().clone(),
            username: "alice".into(),
            principals: vec!["alice".into()],
            ttl: Duration::from_secs(600),
            roles: vec!["access".into()],
            traits: Default::default(),
            route_to_cluster: String::new(),
            permit_port_forwarding: false,
            permit_agent_forwarding: false,
        })
        .unwrap()
        .to_openssh()
        .unwrap();
    let body = json!({"ssh_cert": alice_cert, "login": "root", "node": "node-1", "cluster": LEAF});
    let v: Value = http.post(url("/webapi/ssh/authorize")).json(&body).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["allowed"], false);
    assert_eq!(v["reason"], "leaf says no to root on node-1", "the leaf's own reason is passed on");

    // SSH front door: the proxy subsystem naming the leaf, and direct-tcpip by the
    // certificate's route.
    let config = Arc::new(crate::ssh::config(&ssh_identity()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ssh_addr = listener.local_addr().unwrap();
    let ssh = tokio::spawn(crate::ssh::serve(state.clone(), listener, config, stop.clone(), std::time::Duration::from_secs(1)));
    let key = Arc::new(generate_key().unwrap());
    let user_cert = |route: &str| {
        user_ssh_ca
            .sign_user_cert(&UserCertRequest {
                public_key: key.public_key().clone(),
                username: "alice".into(),
                principals: vec!["alice".into()],
                ttl: Duration::from_secs(600),
                roles: vec!["access".into()],
                traits: Default::default(),
                route_to_cluster: route.into(),
                permit_port_forwarding: false,
                permit_agent_forwarding: false,
            })
            .unwrap()
    };
    let mut h = client::connect(Arc::new(client::Config::default()), ssh_addr, SshClient).await.unwrap();
    assert!(h.authenticate_openssh_cert("alice", key.clone(), user_cert("")).await.unwrap().success());
    let ch = h.channel_open_session().await.unwrap();
    ch.request_subsystem(true, &format!("proxy:node-1:0@{LEAF}")).await.unwrap();
    echo_through(&mut ch.into_stream(), b"through the tunnel").await;

    let mut h2 = client::connect(Arc::new(client::Config::default()), ssh_addr, SshClient).await.unwrap();
    assert!(h2.authenticate_openssh_cert("alice", key.clone(), user_cert(LEAF)).await.unwrap().success());
    let ch = h2.channel_open_direct_tcpip("node-1", 22, "127.0.0.1", 40000).await.unwrap();
    echo_through(&mut ch.into_stream(), b"ssh -J style").await;
    assert!(h2.channel_open_direct_tcpip("ghost", 0, "127.0.0.1", 40000).await.is_err());
    {
        let dials = agent.dials.lock().unwrap();
        let seen: Vec<(&str, u32, &str)> = dials.iter().map(|d| (d.host.as_str(), d.port, d.user.as_str())).collect();
        assert_eq!(seen, [("node-1", 0, "alice"), ("node-1", 0, "alice"), ("ghost", 0, "alice")]);
    }

    // The agent goes: auth hears of it at once, and the leaf is offline here.
    drop(agent);
    eventually("a report of no tunnel", reported(0)).await;
    assert!(!state.sites.is_online(LEAF));
    assert!(!state.sites.get(LEAF).unwrap().is_online());

    stop.start();
    let _ = tokio::time::timeout(Duration::from_secs(10), ssh).await;
    web_drain.start();
    let _ = tokio::time::timeout(Duration::from_secs(10), beats).await;
}
