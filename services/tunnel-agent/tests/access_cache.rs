//! The agent answers the root proxy's dials from its access cache: a node the cache knows is
//! dialled although the leaf auth cannot resolve it (as when the leaf auth is down), and an
//! unknown one is refused as unregistered.
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::auth::{self, AuthState};
use common::proxy::{FakeProxy, ProxyState};
use common::{Pki, RunningAgent, eventually};
use portcullis_proto::auth::AccessSnapshotMessage;
use portcullis_proto::tunnel::proxy_frame::Msg as ProxyMsg;
use portcullis_proto::tunnel::{DialRequest, ProxyInfo};
use tokio::io::AsyncWriteExt;

const SOON: Duration = Duration::from_secs(10);

/// An SSH-looking service: it sends an identification line and waits.
async fn ssh_like() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"SSH-2.0-Fake\r\n").await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    addr
}

fn dial(dial_id: u64, host: &str) -> ProxyMsg {
    ProxyMsg::Dial(DialRequest { dial_id, host: host.into(), port: 0, user: "alice".into(), ..Default::default() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dials_resolve_from_the_access_cache() {
    let pki = Pki::new();
    let auth = Arc::new(AuthState::default());
    let node_addr = ssh_like().await;
    // Only the snapshot knows the node: the fake's ResolveNode answers "not found".
    let snap = serde_json::json!({
        "cluster_name": "leaf.example.com",
        "revision": 3,
        "nodes": [{
            "kind": "node", "version": "v2",
            "metadata": {"name": "id-cached"},
            "spec": {"hostname": "cached-node", "addr": node_addr},
        }],
    });
    let snapshot_json = serde_json::to_vec(&snap).unwrap();
    auth.access.send_replace(Some(AccessSnapshotMessage { snapshot_json, revision: 3 }));
    let auth_addr = auth::serve(&pki, auth.clone()).await.to_string();
    let proxy = FakeProxy::start(&pki, ProxyState::new("p1"), "127.0.0.1:0".parse().unwrap());
    proxy.state.proxy_set.lock().unwrap().push(ProxyInfo { id: "p1".into(), tunnel_addr: proxy.addr.to_string() });
    auth.set_targets(vec![pki.target(&proxy.addr.to_string(), true)]);
    let _agent = RunningAgent::start(&pki, &auth_addr);
    let p = proxy.state.clone();
    eventually("the tunnel", SOON, || p.open() == 1).await;

    // The cache may still be on its way: dial until the stream opens.
    let mut id = 0;
    let opened = async {
        loop {
            id += 1;
            p.send(dial(id, "cached-node")).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            if p.dials.lock().unwrap().contains_key(&id) {
                return id;
            }
        }
    };
    let id = tokio::time::timeout(SOON, opened).await.expect("no dial to the cached node opened");
    assert!(p.dials.lock().unwrap().contains_key(&id));

    // A host neither the cache nor auth knows is refused, naming the cluster.
    p.send(dial(1000, "ghost")).await;
    eventually("the refusal", SOON, || p.dial_failed.lock().unwrap().iter().any(|f| f.dial_id == 1000)).await;
    let failed = p.dial_failed.lock().unwrap().iter().find(|f| f.dial_id == 1000).cloned().unwrap();
    assert_eq!(failed.reason, "ghost:0 is not a registered node of cluster leaf.example.com");
}
