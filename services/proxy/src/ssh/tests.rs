//! SSH front door tests: a russh client with a user certificate reaches an echo "node" through
//! `direct-tcpip` and the `proxy:` subsystem, against a fake auth service.

use std::sync::Arc;
use std::time::Duration;

use portcullis_pki::ssh::{HostCertRequest, SshCa, UserCertRequest, generate_key};
use portcullis_pki::{Identity, Secret};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::testutil::{self, CLUSTER, FakeAuth};

struct Client;

impl client::Handler for Client {
    type Error = russh::Error;
    async fn check_server_key(&mut self, _key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// The identification line the echo "node" sends, as an SSH server would.
const IDENT: &[u8] = b"SSH-2.0-echo\r\n";

/// A TCP server standing in for a node: takes the proxy's trace preamble, identifies as an
/// SSH server, then echoes what it reads.
async fn echo_server() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = portcullis_telemetry::preamble::read(&mut s, Duration::from_secs(1)).await;
                let _ = s.write_all(IDENT).await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// A TCP server that answers like a web server and never as an SSH server.
async fn http_server() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
        }
    });
    addr
}

fn identity(host_ca: &SshCa) -> Identity {
    let key = generate_key().unwrap();
    let cert = host_ca
        .sign_host_cert(&HostCertRequest {
            public_key: key.public_key().clone(),
            host_id: "host-1".into(),
            nodename: "proxy-1".into(),
            cluster_name: CLUSTER.into(),
            role: "Proxy".into(),
            additional_principals: vec!["localhost".into()],
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

fn user_cert(ca: &SshCa, key: &PrivateKey, route: &str) -> russh::keys::Certificate {
    ca.sign_user_cert(&UserCertRequest {
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
}

async fn connect(addr: std::net::SocketAddr) -> client::Handle<Client> {
    client::connect(Arc::new(client::Config::default()), addr, Client).await.unwrap()
}

async fn echo_through(stream: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin), msg: &[u8]) {
    // The node's identification line comes first, passed on unchanged by the proxy.
    let mut ident = vec![0u8; IDENT.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut ident)).await.unwrap().unwrap();
    assert_eq!(ident, IDENT);
    stream.write_all(msg).await.unwrap();
    stream.flush().await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut buf)).await.unwrap().unwrap();
    assert_eq!(buf, msg);
}

/// Reads a channel until it closes, returning what came on stderr.
async fn stderr_of(mut ch: russh::Channel<client::Msg>) -> String {
    let mut err = Vec::new();
    let read = async {
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::ExtendedData { data, ext: 1 } => err.extend_from_slice(&data),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.unwrap();
    String::from_utf8_lossy(&err).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_users_reach_nodes() {
    let node_addr = echo_server().await;
    let web = http_server().await;
    let nodes = vec![testutil::node("id-1", "node-1", &node_addr), testutil::node("id-2", "web-1", &web)];
    let fake = Arc::new(FakeAuth { nodes, ..Default::default() });
    let user_ca = SshCa::generate().unwrap();
    let state = testutil::state(Some(testutil::serve_fake(fake.clone()).await), vec![user_ca.public_key().clone()]);
    let config = Arc::new(super::config(&identity(&SshCa::generate().unwrap())).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = crate::drain::Drain::new();
    let server = tokio::spawn(super::serve(state.clone(), listener, config, stop.clone(), std::time::Duration::from_secs(1)));

    // A plain key is refused.
    let key = Arc::new(generate_key().unwrap());
    let mut h = connect(addr).await;
    let plain = PrivateKeyWithHashAlg::new(key.clone(), None);
    assert!(!h.authenticate_publickey("alice", plain).await.unwrap().success());
    // So is a certificate from a CA the proxy does not trust.
    let foreign = user_cert(&SshCa::generate().unwrap(), &key, "");
    assert!(!h.authenticate_openssh_cert("alice", key.clone(), foreign).await.unwrap().success());

    // A certificate from the cluster's user CA is accepted.
    let mut h = connect(addr).await;
    let cert = user_cert(&user_ca, &key, CLUSTER);
    assert!(h.authenticate_openssh_cert("alice", key.clone(), cert).await.unwrap().success());

    // direct-tcpip by node name, with the node's own port (0) and with ssh -J's port 22.
    for port in [0, 22, 3022] {
        let ch = h.channel_open_direct_tcpip("node-1", port, "127.0.0.1", 40000).await.unwrap();
        let mut stream = ch.into_stream();
        echo_through(&mut stream, format!("hello via {port}").as_bytes()).await;
        assert!(state.router.active_sessions() >= 1);
    }
    {
        let resolved = fake.resolved.lock().unwrap();
        assert!(resolved.contains(&("node-1".to_string(), 22)) && resolved.contains(&("node-1".to_string(), 0)));
        assert!(!resolved.iter().any(|(_, p)| *p == 3022), "3022 is sent as 0: {resolved:?}");
    }
    assert!(h.channel_open_direct_tcpip("ghost", 0, "127.0.0.1", 40000).await.is_err());

    // The Teleport subsystem form.
    let ch = h.channel_open_session().await.unwrap();
    ch.request_subsystem(true, "proxy:node-1:0@root.example.com").await.unwrap();
    let mut stream = ch.into_stream();
    echo_through(&mut stream, b"subsystem hello").await;

    // Another cluster is refused on stderr.
    let ch = h.channel_open_session().await.unwrap();
    ch.request_subsystem(true, "proxy:node-1:3022@leaf.example.com").await.unwrap();
    assert_eq!(stderr_of(ch).await.trim(), "cluster \"leaf.example.com\" is not found");

    // So is an unknown node.
    let ch = h.channel_open_session().await.unwrap();
    ch.request_subsystem(true, "proxy:ghost").await.unwrap();
    assert_eq!(stderr_of(ch).await.trim(), "node \"ghost\" is not found");

    // A registered "node" that does not answer as an SSH server is never relayed to.
    let ch = h.channel_open_session().await.unwrap();
    ch.request_subsystem(true, "proxy:web-1").await.unwrap();
    let e = stderr_of(ch).await;
    assert!(e.contains(&format!("cannot connect to node web-1 at {web}")) && e.contains("not an SSH server"), "{e}");

    // A cluster's auth service is no target for a user session.
    let ch = h.channel_open_session().await.unwrap();
    ch.request_subsystem(true, "proxy:@auth@root.example.com").await.unwrap();
    assert_eq!(
        stderr_of(ch).await.trim(),
        "cannot reach \"@auth\" in cluster \"root.example.com\": it is the cluster's auth service, which user \
         sessions may not reach through the proxy (only the root proxy itself may)"
    );
    assert!(!fake.resolved.lock().unwrap().iter().any(|(h, _)| h.starts_with('@')), "never resolved");

    // A shell is refused with an explanation.
    let ch = h.channel_open_session().await.unwrap();
    ch.request_shell(true).await.unwrap();
    assert!(stderr_of(ch).await.contains("only forwards connections"));

    // A certificate for another cluster routes direct-tcpip there, which is not served yet.
    let mut h2 = connect(addr).await;
    let leaf_cert = user_cert(&user_ca, &key, "leaf.example.com");
    assert!(h2.authenticate_openssh_cert("alice", key.clone(), leaf_cert).await.unwrap().success());
    assert!(h2.channel_open_direct_tcpip("node-1", 0, "127.0.0.1", 40000).await.is_err());

    stop.start();
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
}
