//! The agent against a fake leaf auth and fake root proxies over real mutual TLS.
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::auth::{self, AuthState};
use common::proxy::{FakeProxy, ProxyState};
use common::{AGENT_ID, Pki, ROOT, RunningAgent, eventually};
use portcullis_proto::auth::Node;
use portcullis_proto::tunnel::proxy_frame::Msg as ProxyMsg;
use portcullis_proto::tunnel::{Chunk, DialRequest, Drain, NodesQuery, ProxyInfo};
use tokio::io::AsyncWriteExt;

const SOON: Duration = Duration::from_secs(10);

struct Env {
    pki: Pki,
    auth: Arc<AuthState>,
    auth_addr: String,
    proxy: FakeProxy,
}

/// A leaf auth trusting one root whose single proxy is `p1`, and the agent not yet started.
async fn env() -> Env {
    let pki = Pki::new();
    let auth = Arc::new(AuthState::default());
    let auth_addr = auth::serve(&pki, auth.clone()).await.to_string();
    let proxy = FakeProxy::start(&pki, ProxyState::new("p1"), "127.0.0.1:0".parse().unwrap());
    proxy.state.proxy_set.lock().unwrap().push(ProxyInfo { id: "p1".into(), tunnel_addr: proxy.addr.to_string() });
    auth.set_targets(vec![pki.target(&proxy.addr.to_string(), true)]);
    Env { pki, auth, auth_addr, proxy }
}

/// What the stand-in node says first, as an SSH server does (the agent relays only those).
const IDENT: &[u8] = b"SSH-2.0-echo\r\n";

/// A TCP echo server standing in for a leaf node: takes the agent's trace preamble,
/// identifies as an SSH server, then echoes.
async fn echo_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = portcullis_telemetry::preamble::read(&mut s, Duration::from_secs(1)).await;
                let _ = s.write_all(IDENT).await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

fn node(hostname: &str, addr: &str) -> Node {
    Node {
        id: format!("id-{hostname}"),
        hostname: hostname.into(),
        addr: addr.into(),
        labels: [("env".to_string(), "prod".to_string())].into_iter().collect(),
        ..Default::default()
    }
}

fn dial(dial_id: u64, host: &str, port: u32) -> ProxyMsg {
    ProxyMsg::Dial(DialRequest { dial_id, host: host.into(), port, user: "alice".into(), ..Default::default() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn says_hello_heartbeats_and_answers_node_listings() {
    let env = env().await;
    env.auth.nodes.lock().unwrap().extend([node("web", "10.0.0.1:3022"), node("db", "10.0.0.2:3022")]);
    let agent = RunningAgent::start(&env.pki, &env.auth_addr);
    let p = env.proxy.state.clone();
    eventually("the agent's Hello", SOON, || p.hello_count() == 1).await;
    let hello = p.hellos.lock().unwrap()[0].clone();
    assert_eq!(hello.agent_id, AGENT_ID);
    assert_eq!(hello.version, env!("CARGO_PKG_VERSION"));
    eventually("two heartbeats", SOON, || p.heartbeats.load(Ordering::SeqCst) >= 2).await;

    let labels = [("env".to_string(), "prod".to_string())].into_iter().collect();
    p.send(ProxyMsg::ListNodes(NodesQuery { request_id: 41, user_tls_cert: vec![1, 2, 3], labels })).await;
    p.send(ProxyMsg::ListNodes(NodesQuery { request_id: 42, user_tls_cert: vec![], labels: Default::default() })).await;
    eventually("two node answers", SOON, || p.answers.lock().unwrap().len() == 2).await;
    let mut answers = p.answers.lock().unwrap().clone();
    answers.sort_by_key(|a| a.request_id);
    assert_eq!(answers[0].request_id, 41);
    assert_eq!(answers[0].error, "");
    let mut names: Vec<_> = answers[0].nodes.iter().map(|n| n.hostname.clone()).collect();
    names.sort();
    assert_eq!(names, ["db", "web"]);
    assert!(answers[0].nodes.iter().all(|n| n.tunnel && n.cluster == common::LEAF));
    assert_eq!(answers[1].request_id, 42);
    assert!(answers[1].nodes.is_empty());
    assert_eq!(answers[1].error, "no user certificate");
    // Only one tunnel although the proxy announces itself.
    assert_eq!(p.hello_count(), 1);
    agent.stop().await;
    eventually("the tunnel to close on shutdown", SOON, || p.open() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dials_registered_nodes_and_pipes_bytes_both_ways() {
    let env = env().await;
    let echo = echo_server().await;
    env.auth.nodes.lock().unwrap().push(node("web", &echo.to_string()));
    let _agent = RunningAgent::start(&env.pki, &env.auth_addr);
    let p = env.proxy.state.clone();
    eventually("the tunnel", SOON, || p.open() == 1).await;

    p.send(dial(7, "web", 3022)).await;
    eventually("the dial stream", SOON, || p.dials.lock().unwrap().contains_key(&7)).await;
    let mut stream = p.take_dial(7).unwrap();
    stream.tx.send(Ok(Chunk { data: portcullis_proto::Bytes::from_static(b"hello ") })).await.unwrap();
    stream.tx.send(Ok(Chunk { data: portcullis_proto::Bytes::from_static(b"world") })).await.unwrap();
    let mut got = Vec::new();
    while got.len() < IDENT.len() + 11 {
        let chunk = tokio::time::timeout(SOON, stream.inbound.message()).await.unwrap().unwrap().unwrap();
        got.extend(chunk.data);
    }
    assert_eq!(got, [IDENT, b"hello world"].concat());
    // Ending our side shuts the node's write side; the node closes; the agent ends the stream.
    drop(stream.tx);
    let end = tokio::time::timeout(SOON, async {
        loop {
            match stream.inbound.message().await {
                Ok(Some(c)) => assert!(c.data.is_empty(), "unexpected bytes after EOF"),
                other => break other,
            }
        }
    })
    .await
    .expect("the agent did not end the dial stream after EOF");
    assert!(matches!(end, Ok(None)), "{end:?}");
    assert!(p.dial_failed.lock().unwrap().is_empty());
    // The dial is in the leaf's audit log (see dial_guard.rs for refusals and "@auth").
    eventually("the dial's audit event", SOON, || !env.auth.audit_events().is_empty()).await;
    let ev = env.auth.audit_events()[0].clone();
    assert_eq!((ev["event"].as_str(), ev["success"].as_bool(), ev["target"].as_str()), (Some("tunnel.dial"), Some(true), Some("web:3022")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_and_audits_unregistered_targets() {
    let env = env().await;
    let _agent = RunningAgent::start(&env.pki, &env.auth_addr);
    let p = env.proxy.state.clone();
    eventually("the tunnel", SOON, || p.open() == 1).await;

    p.send(dial(9, "169.254.0.1", 22)).await;
    eventually("DialFailed", SOON, || !p.dial_failed.lock().unwrap().is_empty()).await;
    let failed = p.dial_failed.lock().unwrap()[0].clone();
    assert_eq!(failed.dial_id, 9);
    assert!(failed.reason.contains("not a registered node"), "{}", failed.reason);
    eventually("the audit event", SOON, || !env.auth.audit_events().is_empty()).await;
    let ev = env.auth.audit_events()[0].clone();
    assert_eq!(ev["event"], "tunnel.dial");
    assert_eq!(ev["success"], false);
    assert_eq!(ev["cluster"], ROOT);
    assert_eq!(ev["user"], "alice");
    assert_eq!(ev["target"], "169.254.0.1:22");
    assert_eq!(ev["error"], failed.reason.as_str());
    assert!(p.dials.lock().unwrap().is_empty(), "no dial stream for a refused target");

    // A registered node that does not answer is a failed dial too.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    env.auth.nodes.lock().unwrap().push(node("gone", &dead_addr));
    p.send(dial(10, "gone", 0)).await;
    eventually("the second DialFailed", SOON, || p.dial_failed.lock().unwrap().len() == 2).await;
    let reason = p.dial_failed.lock().unwrap()[1].reason.clone();
    assert!(reason.contains(&dead_addr), "{reason}");
    eventually("the second audit event", SOON, || env.auth.audit_events().len() == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_the_trusted_cluster_closes_the_tunnel() {
    let env = env().await;
    let _agent = RunningAgent::start(&env.pki, &env.auth_addr);
    let p = env.proxy.state.clone();
    eventually("the tunnel", SOON, || p.open() == 1).await;

    env.auth.set_targets(vec![env.pki.target(&env.proxy.addr.to_string(), false)]);
    eventually("the tunnel to close after enabled: false", Duration::from_secs(6), || p.open() == 0).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(p.hello_count(), 1, "no reconnection while disabled");

    env.auth.set_targets(vec![env.pki.target(&env.proxy.addr.to_string(), true)]);
    eventually("a new tunnel after enabled: true", SOON, || p.open() == 1 && p.hello_count() == 2).await;

    env.auth.set_targets(vec![]);
    eventually("the tunnel to close after removal", Duration::from_secs(6), || p.open() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_proxy_restarts() {
    let mut env = env().await;
    let _agent = RunningAgent::start(&env.pki, &env.auth_addr);
    let p = env.proxy.state.clone();
    eventually("the tunnel", SOON, || p.open() == 1).await;

    let addr = env.proxy.addr;
    env.proxy.kill();
    // Down for a while: the agent keeps retrying with backoff.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted = FakeProxy::start(&env.pki, ProxyState::new("p1"), addr);
    let q = restarted.state.clone();
    eventually("a tunnel to the restarted proxy", Duration::from_secs(15), || q.open() == 1).await;
    assert_eq!(q.hellos.lock().unwrap()[0].agent_id, AGENT_ID);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_silence_lead_to_reconnects() {
    let env = env().await;
    let _agent = RunningAgent::start(&env.pki, &env.auth_addr);
    let p = env.proxy.state.clone();
    eventually("the tunnel", SOON, || p.open() == 1).await;

    p.send(ProxyMsg::Drain(Drain { reason: "proxy shutting down".into() })).await;
    eventually("a new tunnel after Drain", SOON, || p.hello_count() == 2 && p.open() == 1).await;

    // A proxy that stops talking is dead after three heartbeat intervals (1 s here).
    p.silent.store(true, Ordering::SeqCst);
    eventually("the silent tunnel to be dropped", SOON, || p.hello_count() >= 3).await;
    p.silent.store(false, Ordering::SeqCst);
    eventually("a live tunnel again", SOON, || p.open() >= 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_a_tunnel_to_every_announced_proxy() {
    let env = env().await;
    let second = FakeProxy::start(&env.pki, ProxyState::new("p2"), "127.0.0.1:0".parse().unwrap());
    let set = vec![
        ProxyInfo { id: "p1".into(), tunnel_addr: env.proxy.addr.to_string() },
        ProxyInfo { id: "p2".into(), tunnel_addr: second.addr.to_string() },
    ];
    *env.proxy.state.proxy_set.lock().unwrap() = set.clone();
    *second.state.proxy_set.lock().unwrap() = set;
    let _agent = RunningAgent::start(&env.pki, &env.auth_addr);
    let (p1, p2) = (env.proxy.state.clone(), second.state.clone());
    eventually("tunnels to both proxies", SOON, || p1.open() == 1 && p2.open() == 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!((p1.hello_count(), p2.hello_count()), (1, 1), "one tunnel per proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_reached_twice_is_not_flooded() {
    let env = env().await;
    // p2 is announced behind the same address, which always leads to p1 (a load balancer
    // that never picks p2): every attempt lands on a proxy already held.
    env.proxy.state.proxy_set.lock().unwrap().push(ProxyInfo { id: "p2".into(), tunnel_addr: String::new() });
    let _agent = RunningAgent::start(&env.pki, &env.auth_addr);
    let p = env.proxy.state.clone();
    eventually("the first tunnel", SOON, || p.open() == 1).await;
    eventually("an attempt to find p2", SOON, || p.hello_count() >= 2).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let hellos = p.hello_count();
    assert!(hellos <= 8, "{hellos} connections in about 5 s: the proxy is being flooded");
    eventually("duplicates to be closed", SOON, || p.open() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_root_ca_keeps_the_tunnel_down_until_corrected() {
    let env = env().await;
    let impostor = portcullis_pki::x509::TlsCa::generate(ROOT).unwrap();
    let mut wrong = env.pki.target(&env.proxy.addr.to_string(), true);
    wrong.root_tls_ca_pem = vec![impostor.cert_pem().to_string()];
    env.auth.set_targets(vec![wrong]);
    let _agent = RunningAgent::start(&env.pki, &env.auth_addr);
    let p = env.proxy.state.clone();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(p.hello_count(), 0, "the proxy's certificate must be checked against the root CA");

    // The CA changes: the link restarts with the right one.
    env.auth.set_targets(vec![env.pki.target(&env.proxy.addr.to_string(), true)]);
    eventually("a tunnel once the CA is right", SOON, || p.open() == 1).await;
}
