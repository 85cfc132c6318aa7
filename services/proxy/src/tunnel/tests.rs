//! Tunnel server tests with fake agents over real mutual TLS: registration, dials through the
//! router to a TCP echo server, node listings, certificate checks, heartbeat timeouts, and
//! trust removal.

use std::sync::Arc;
use std::time::Duration;

use portcullis_pki::x509::TlsCa;
use portcullis_pki::{Identity, Secret};
use portcullis_proto::auth::Node;
use portcullis_proto::auth::auth_client::AuthClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use super::fake_agent::{self, Behaviour, FakeAgent};
use super::tls::LeafAgentVerifier;
use super::{Hub, Timings, server, tls};
use crate::route::{Router, RouterParts};
use crate::site::{LocalSite, Sites};
use crate::testutil::CLUSTER;

pub const LEAF: &str = "leaf.example.com";

/// A TCP server that echoes what it reads, standing in for a leaf node.
pub async fn echo_server() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// The proxy identity a tunnel listener presents: issued by `root_ca` with the proxy name.
pub fn proxy_identity(root_ca: &TlsCa) -> Identity {
    let (cert, key) = fake_agent::issue(root_ca, "host-1", &["Proxy"]);
    Identity::new(
        CLUSTER.into(),
        "host-1".into(),
        "proxy-1".into(),
        "proxy".into(),
        cert,
        key,
        vec![root_ca.cert_pem().to_string()],
        Secret::new(String::new()),
        String::new(),
    )
}

/// Serves tunnels for `hub` on a local port; sending on (or dropping) the sender drains the
/// server.
pub async fn serve_tunnels(hub: Arc<Hub>, root_ca: &TlsCa) -> (String, oneshot::Sender<()>) {
    let id = proxy_identity(root_ca);
    let verifier = Arc::new(LeafAgentVerifier::verifier(hub.leaf_cas(), None));
    let tls = Arc::new(tls::server_config(&id, verifier).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = oneshot::channel::<()>();
    let drain = crate::drain::Drain::new();
    tokio::spawn(server::serve(hub, listener, tls, drain.clone()));
    tokio::spawn(async move {
        let _ = rx.await;
        drain.start();
    });
    (addr, tx)
}

pub fn behaviour(agent_id: &str, target: &str) -> Behaviour {
    Behaviour {
        agent_id: agent_id.into(),
        heartbeat: true,
        target: target.into(),
        refuse_host: "ghost".into(),
        nodes: vec![Node { id: "id-1".into(), hostname: "node-1".into(), addr: "10.0.0.1:3022".into(), ..Default::default() }],
    }
}

/// Polls `f` for up to 10 s.
pub async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

struct Env {
    hub: Arc<Hub>,
    root_ca: TlsCa,
    leaf_ca: TlsCa,
    addr: String,
    _stop: oneshot::Sender<()>,
}

async fn env(timings: Timings) -> Env {
    portcullis_rpc::install_crypto_provider();
    let root_ca = TlsCa::generate(CLUSTER).unwrap();
    let leaf_ca = TlsCa::generate(LEAF).unwrap();
    let hub = Hub::start(CLUSTER, "host-1", "127.0.0.1:3024", timings).unwrap();
    hub.set_leaf_cas([(LEAF.to_string(), vec![leaf_ca.cert_pem().to_string()])].into_iter().collect());
    let (addr, stop) = serve_tunnels(hub.clone(), &root_ca).await;
    Env { hub, root_ca, leaf_ca, addr, _stop: stop }
}

impl Env {
    async fn agent(&self, ca: &TlsCa, name: &str, b: Behaviour) -> Result<FakeAgent, String> {
        let cert = fake_agent::issue(ca, name, &["Agent"]);
        self.agent_with(cert, b).await
    }

    async fn agent_with(&self, cert: (String, Secret<String>), b: Behaviour) -> Result<FakeAgent, String> {
        let ch = fake_agent::channel(&self.addr, self.root_ca.cert_pem(), cert).await?;
        tokio::time::timeout(Duration::from_secs(10), FakeAgent::start(ch, b))
            .await
            .map_err(|_| "no answer".to_string())?
    }

    /// Runs a bare TLS handshake with `cert` and reads: an accepted client gets the server's
    /// HTTP/2 SETTINGS, a refused one the TLS alert, returned as text.
    async fn tls_refusal(&self, cert: (String, Secret<String>)) -> String {
        self.tls_read(Some(cert)).await
    }

    async fn tls_refusal_without_cert(&self) -> String {
        self.tls_read(None).await
    }

    async fn tls_read(&self, identity: Option<(String, Secret<String>)>) -> String {
        use portcullis_rpc::{ClientTls, Trust};
        let tls = ClientTls {
            trust: Trust::Cas(vec![self.root_ca.cert_pem().to_string()]),
            identity,
            server_name: portcullis_pki::x509::PROXY_SERVER_NAME.into(),
        };
        let cfg = Arc::new(tls.rustls_config().unwrap());
        let tcp = tokio::net::TcpStream::connect(&self.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(portcullis_pki::x509::PROXY_SERVER_NAME).unwrap();
        let mut s = match tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await {
            Ok(s) => s,
            Err(e) => return e.to_string(),
        };
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) => panic!("the proxy accepted the certificate and sent {n} bytes"),
            Ok(Err(e)) => e.to_string(),
            Err(_) => panic!("no answer from the proxy"),
        }
    }

    fn sites(&self) -> Arc<Sites> {
        let channel = tonic::transport::Channel::from_static("http://127.0.0.1:1").connect_lazy();
        let auth = AuthClient::new(portcullis_rpc::Channel::new(channel));
        let local = LocalSite::new(CLUSTER.into(), auth, portcullis_access::AccessCache::empty());
        Arc::new(Sites::new(local, self.hub.clone()))
    }

    fn router(&self) -> Router {
        let channel = tonic::transport::Channel::from_static("http://127.0.0.1:1").connect_lazy();
        Router::new(RouterParts {
            sites: self.sites(),
            auth: AuthClient::new(portcullis_rpc::Channel::new(channel)),
            access: portcullis_access::AccessCache::empty(),
            active: Default::default(),
            metrics: Default::default(),
            audit: None,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_carries_dials_and_node_listings() {
    let echo = echo_server().await;
    let env = env(Timings::default()).await;
    let router = env.router();
    assert_eq!(
        router.dial(LEAF, "node-1", 0, "alice").await.err().unwrap().to_string(),
        format!("cluster \"{LEAF}\" is offline: no reverse tunnel from it is connected to this proxy")
    );
    assert_eq!(env.hub.leaf(LEAF).unwrap().stats(), (0, 0), "the leaf's actor lives with the trust");

    let agent = env.agent(&env.leaf_ca, "agent-1", behaviour("agent-1", &echo)).await.unwrap();
    assert_eq!(agent.welcome.proxy_id, "host-1");
    assert_eq!(agent.welcome.root_cluster, CLUSTER);
    assert_eq!(agent.welcome.heartbeat_seconds, 5);
    assert_eq!(agent.proxies.proxies[0].id, "host-1");
    assert_eq!(agent.proxies.proxies[0].tunnel_addr, "127.0.0.1:3024");
    eventually("the leaf's tunnel", || env.hub.is_online(LEAF)).await;
    let leaf = env.hub.leaf(LEAF).unwrap();
    assert_eq!(leaf.stats(), (1, 0));
    assert_eq!(env.hub.tunnel_counts().get(LEAF), Some(&1));

    // A dial through the router reaches the echo server behind the agent; ssh -J's port 22
    // means the node's own port.
    let conn = router.dial(LEAF, "node-1", 22, "alice").await.unwrap();
    assert!(conn.node.tunnel);
    assert_eq!(conn.node.cluster, LEAF);
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = tokio::io::split(conn.stream);
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        // EOF travels to the node; the echo server closes, and that EOF comes back.
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut got)).await.unwrap().unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), payload.len());
    assert!(got == payload);
    {
        let dials = agent.dials.lock().unwrap();
        assert_eq!((dials[0].host.as_str(), dials[0].port, dials[0].user.as_str()), ("node-1", 0, "alice"));
    }

    // A refused dial carries the leaf's reason.
    let e = router.dial(LEAF, "ghost", 0, "alice").await.err().unwrap().to_string();
    assert_eq!(e, format!("cannot reach \"ghost\" in cluster \"{LEAF}\": node \"ghost\" is not found"));

    // Node listing round trip.
    let nodes = leaf.list_nodes(vec![1, 2, 3], Default::default()).await.unwrap();
    assert_eq!(nodes[0].hostname, "node-1");

    // A Dial stream nobody asked for is refused.
    let mut client = agent.client.clone();
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut().insert(server::DIAL_ID_HEADER, "987654".parse().unwrap());
    let status = client.dial(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.message(), "no dial with id 987654 is waiting for a connection");
    assert_eq!(leaf.stats(), (1, 0));

    // The agent goes away: the leaf is offline again (its actor stays, with the trust).
    drop(agent);
    eventually("the leaf to go offline", || !env.hub.is_online(LEAF)).await;
    assert!(matches!(router.dial(LEAF, "node-1", 0, "alice").await, Err(crate::route::RouteError::ClusterOffline(_))));
    assert_eq!(env.hub.tunnel_counts().get(LEAF), Some(&0));
    assert_eq!(leaf.stats(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_verified_against_their_own_leaf_ca() {
    let env = env(Timings::default()).await;
    let other_ca = TlsCa::generate("other.example.com").unwrap();
    let mut cas = std::collections::HashMap::new();
    cas.insert(LEAF.to_string(), vec![env.leaf_ca.cert_pem().to_string()]);
    cas.insert("other.example.com".to_string(), vec![other_ca.cert_pem().to_string()]);
    env.hub.set_leaf_cas(cas);
    let b = behaviour("agent-x", "127.0.0.1:1");

    // Signed by another trusted leaf's CA but naming this leaf.
    let posing = TlsCa::from_pem(LEAF, other_ca.cert_pem(), other_ca.key_pem().expose()).unwrap();
    let e = env.tls_refusal(fake_agent::issue(&posing, "agent-x", &["Agent"])).await;
    assert!(e.contains("UnknownCA") || e.contains("BadCertificate"), "{e}");
    assert!(env.agent(&posing, "agent-x", b.clone()).await.is_err());

    // Signed by the root's own CA, claiming to be a leaf.
    let root_as_leaf = TlsCa::from_pem(LEAF, env.root_ca.cert_pem(), env.root_ca.key_pem().expose()).unwrap();
    let e = env.tls_refusal(fake_agent::issue(&root_as_leaf, "agent-x", &["Agent"])).await;
    assert!(e.contains("alert"), "{e}");
    assert!(env.agent(&root_as_leaf, "agent-x", b.clone()).await.is_err());

    // The root's own name is no leaf.
    let e = env.tls_refusal(fake_agent::issue(&env.root_ca, "agent-x", &["Agent"])).await;
    assert!(e.contains("alert"), "{e}");

    // A leaf certificate that is not an Agent one.
    let e = env.tls_refusal(fake_agent::issue(&env.leaf_ca, "node-9", &["Node"])).await;
    assert!(e.contains("alert"), "{e}");

    // A leaf nobody trusts.
    let stranger = TlsCa::generate("stranger.example.com").unwrap();
    let e = env.tls_refusal(fake_agent::issue(&stranger, "agent-x", &["Agent"])).await;
    assert!(e.contains("alert"), "{e}");
    // No client certificate at all.
    let e = env.tls_refusal_without_cert().await;
    assert!(e.contains("alert"), "{e}");
    assert!(env.hub.registry.online().is_empty());

    // The real thing, for both leaves.
    let _leaf = env.agent(&env.leaf_ca, "agent-x", b.clone()).await.unwrap();
    let _other = env.agent(&other_ca, "agent-y", b).await.unwrap();
    eventually("both leaves", || env.hub.registry.online().len() == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tunnels_are_dropped_and_live_ones_kept() {
    let timings = Timings {
        heartbeat: Duration::from_secs(1),
        dead_after: Duration::from_secs(3),
        answer_timeout: Duration::from_secs(2),
    };
    let env = env(timings).await;
    let mut live = env.agent(&env.leaf_ca, "agent-live", behaviour("agent-live", "127.0.0.1:1")).await.unwrap();
    assert_eq!(live.welcome.heartbeat_seconds, 1);
    let mut quiet = behaviour("agent-quiet", "127.0.0.1:1");
    quiet.heartbeat = false;
    let mut silent = env.agent(&env.leaf_ca, "agent-quiet", quiet).await.unwrap();
    eventually("two tunnels", || env.hub.is_online(LEAF)).await;
    let leaf = env.hub.leaf(LEAF).unwrap();
    for _ in 0..100 {
        if leaf.stats().0 == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(leaf.stats().0, 2);

    assert!(silent.wait_ended(Duration::from_secs(8)).await, "the silent tunnel was not closed");
    assert_eq!(leaf.stats().0, 1);
    assert!(!live.wait_ended(Duration::from_secs(2)).await, "the live tunnel was closed");
    assert!(env.hub.is_online(LEAF));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_trust_drains_the_leafs_tunnels() {
    let env = env(Timings::default()).await;
    let mut agent = env.agent(&env.leaf_ca, "agent-1", behaviour("agent-1", "127.0.0.1:1")).await.unwrap();
    eventually("the leaf's tunnel", || env.hub.is_online(LEAF)).await;
    // The heartbeat answer no longer lists the leaf (`tctl rm rc/leaf`).
    env.hub.apply_heartbeat(&[], &[]);
    assert!(agent.wait_ended(Duration::from_secs(5)).await, "the tunnel stayed up");
    assert_eq!(agent.drains.lock().unwrap().as_slice(), ["the trust relationship with this cluster was removed"]);
    eventually("the leaf to go", || env.hub.leaf(LEAF).is_none()).await;
    assert_eq!(env.sites().get(LEAF).unwrap_err().to_string(), format!("cluster \"{LEAF}\" is not found"));
    // And it cannot come back without trust.
    assert!(env.agent(&env.leaf_ca, "agent-1", behaviour("agent-1", "127.0.0.1:1")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_dials_larger_than_the_tunnel_queue_all_get_through() {
    // More sessions start at once than a tunnel's frame queue holds: they wait for room
    // instead of being told the cluster is offline.
    const BURST: usize = 300;
    let echo = echo_server().await;
    let env = env(Timings::default()).await;
    let _agent = env.agent(&env.leaf_ca, "agent-1", behaviour("agent-1", &echo)).await.unwrap();
    eventually("the leaf's tunnel", || env.hub.is_online(LEAF)).await;
    let router = Arc::new(env.router());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..BURST {
        let router = router.clone();
        tasks.spawn(async move {
            let conn = router.dial(LEAF, "node-1", 0, "alice").await.map_err(|e| e.to_string())?;
            let mut s = conn.stream;
            let msg = format!("ping {i}");
            s.write_all(msg.as_bytes()).await.map_err(|e| e.to_string())?;
            let mut got = vec![0u8; msg.len()];
            s.read_exact(&mut got).await.map_err(|e| e.to_string())?;
            if got != msg.as_bytes() {
                return Err(format!("echo mismatch for {msg}"));
            }
            Ok::<(), String>(())
        });
    }
    let mut errors = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r.unwrap() {
            errors.push(e);
        }
    }
    assert!(errors.is_empty(), "{} of {BURST} dials failed, first: {:?}", errors.len(), errors.first());
}
