//! What the agent refuses to dial (issue 11): registered "nodes" that are not SSH servers,
//! and the leaf auth service for anything but the root proxy's own dials. Every dial,
//! refused or not, is in the leaf's audit log.
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::auth::{self, AuthState};
use common::proxy::{FakeProxy, ProxyState};
use common::{Pki, ROOT, RunningAgent, eventually};
use portcullis_proto::auth::Node;
use portcullis_proto::tunnel::DialRequest;
use portcullis_proto::tunnel::proxy_frame::Msg as ProxyMsg;
use portcullis_proto::tunnel::ProxyInfo;
use tokio::io::AsyncWriteExt;

const SOON: Duration = Duration::from_secs(10);
const SECRET: &[u8] = b"internal-service-secret";

/// A leaf auth, one root proxy with a tunnel from a running agent.
async fn env() -> (Arc<AuthState>, Arc<ProxyState>, RunningAgent, FakeProxy) {
    let pki = Pki::new();
    let auth = Arc::new(AuthState::default());
    let auth_addr = auth::serve(&pki, auth.clone()).await.to_string();
    let proxy = FakeProxy::start(&pki, ProxyState::new("p1"), "127.0.0.1:0".parse().unwrap());
    proxy.state.proxy_set.lock().unwrap().push(ProxyInfo { id: "p1".into(), tunnel_addr: proxy.addr.to_string() });
    auth.set_targets(vec![pki.target(&proxy.addr.to_string(), true)]);
    let agent = RunningAgent::start(&pki, &auth_addr);
    let p = proxy.state.clone();
    eventually("the tunnel", SOON, || p.open() == 1).await;
    (auth, p, agent, proxy)
}

/// A service that answers at once with `greeting` (an HTTP answer), or stays silent (TLS).
async fn service(greeting: Option<&'static [u8]>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                if let Some(g) = greeting {
                    let _ = s.write_all(g).await;
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    addr
}

fn node(hostname: &str, addr: &str) -> Node {
    Node { id: format!("id-{hostname}"), hostname: hostname.into(), addr: addr.into(), ..Default::default() }
}

fn dial(dial_id: u64, host: &str, for_proxy: bool) -> ProxyMsg {
    let user = if for_proxy { String::new() } else { "alice".into() };
    ProxyMsg::Dial(DialRequest { dial_id, host: host.into(), port: 0, user, for_proxy, ..Default::default() })
}

fn event_for(auth: &AuthState, target: &str) -> Option<serde_json::Value> {
    auth.audit_events().into_iter().find(|e| e["event"] == "tunnel.dial" && e["target"] == target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_that_are_not_ssh_servers_are_never_relayed() {
    let (auth, p, _agent, _proxy) = env().await;
    let web = service(Some(b"HTTP/1.1 200 OK\r\n\r\ninternal-service-secret")).await;
    let tls = service(None).await;
    auth.nodes.lock().unwrap().extend([node("evil-node", &web), node("evil-auth", &tls)]);

    p.send(dial(1, "evil-node", false)).await;
    p.send(dial(2, "evil-auth", false)).await;
    eventually("both refusals", SOON, || p.dial_failed.lock().unwrap().len() == 2).await;
    let mut failed = p.dial_failed.lock().unwrap().clone();
    failed.sort_by_key(|f| f.dial_id);
    assert_eq!(
        failed[0].reason,
        format!(
            "refused to relay to evil-node:0 at {web}: it answered with something other than an SSH-2.0 \
             identification line (not an SSH server)"
        )
    );
    assert_eq!(
        failed[1].reason,
        format!("refused to relay to evil-auth:0 at {tls}: it sent no SSH identification line within 5s (not an SSH server)")
    );
    // Nothing the services said reaches the root user: no dial stream, no bytes in reasons.
    assert!(p.dials.lock().unwrap().is_empty());
    assert!(failed.iter().all(|f| !f.reason.as_bytes().windows(SECRET.len()).any(|w| w == SECRET)));

    eventually("both refusals audited", SOON, || event_for(&auth, "evil-node:0").is_some() && event_for(&auth, "evil-auth:0").is_some()).await;
    let ev = event_for(&auth, "evil-node:0").unwrap();
    assert_eq!(ev["success"], false);
    assert_eq!(ev["user"], "alice");
    assert_eq!(ev["cluster"], ROOT);
    assert_eq!(ev["error"], failed[0].reason.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaf_auth_is_dialled_only_for_the_root_proxy_itself() {
    let (auth, p, _agent, _proxy) = env().await;

    // A user session's dial to "@auth" (a proxy that failed to refuse it) is refused here.
    p.send(dial(3, "@auth", false)).await;
    eventually("the refusal", SOON, || !p.dial_failed.lock().unwrap().is_empty()).await;
    let failed = p.dial_failed.lock().unwrap()[0].clone();
    assert_eq!(failed.dial_id, 3);
    assert_eq!(
        failed.reason,
        "@auth is the auth service of cluster leaf.example.com: user sessions may not reach it through the tunnel \
         (only the root proxy itself may)"
    );
    assert!(p.dials.lock().unwrap().is_empty());
    eventually("the refusal audited", SOON, || event_for(&auth, "@auth:0").is_some()).await;
    let ev = event_for(&auth, "@auth:0").unwrap();
    assert_eq!((ev["success"].as_bool(), ev["user"].as_str(), ev["for_proxy"].as_bool()), (Some(false), Some("alice"), Some(false)));

    // The root proxy's own dial reaches it (a TLS server: no SSH identification expected).
    p.send(dial(4, "@auth", true)).await;
    eventually("the proxy's @auth dial stream", SOON, || p.dials.lock().unwrap().contains_key(&4)).await;
    assert_eq!(p.dial_failed.lock().unwrap().len(), 1);
    eventually("the proxy's dial audited", SOON, || auth.audit_events().iter().any(|e| e["success"] == true)).await;
    let ok = auth.audit_events().into_iter().find(|e| e["success"] == true).unwrap();
    assert_eq!((ok["target"].as_str(), ok["for_proxy"].as_bool()), (Some("@auth:0"), Some(true)));
}
