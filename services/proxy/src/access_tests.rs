//! The proxy's access cache against a fake auth: it follows WatchAccess, keeps routing after
//! auth dies (and after a restart, from its file), and applies access changes, never older ones.

use std::sync::Arc;
use std::time::Duration;

use portcullis_access::{AccessCache, AccessSnapshot, CacheStatus};
use portcullis_pki::ssh::{SshCa, UserCertRequest, generate_key};

use crate::route::RouteError;
use crate::testutil::{self, CLUSTER, FakeAuth};

fn node(id: &str, hostname: &str, addr: &str) -> portcullis_types::Node {
    let labels = [("env".to_string(), "test".to_string())].into_iter().collect();
    portcullis_types::Node::new(id, hostname, addr, labels)
}

fn role(name: &str, cluster_labels: serde_json::Value) -> portcullis_types::Role {
    serde_json::from_value(serde_json::json!({
        "kind": "role",
        "version": "v7",
        "metadata": {"name": name},
        "spec": {"allow": {"logins": ["alice"], "node_labels": {"*": "*"}, "cluster_labels": cluster_labels}},
    }))
    .unwrap()
}

fn leaf(name: &str, env: &str) -> portcullis_types::RemoteCluster {
    let mut rc = portcullis_types::RemoteCluster::new(name);
    rc.metadata.labels.insert("env".into(), env.into());
    rc.status.connection = "online".into();
    rc
}

/// A root cluster's snapshot: one node, one leaf `leaf-a` (env=prod), alice holding `roles`.
fn snapshot(user_ca: &SshCa, revision: u64, alice_roles: &[&str]) -> AccessSnapshot {
    AccessSnapshot {
        cluster_name: CLUSTER.into(),
        revision,
        user_cas: vec![user_ca.public_line().unwrap()],
        roles: vec![role("prod-access", serde_json::json!({"env": "prod"}))],
        users: [("alice".to_string(), alice_roles.iter().map(|r| r.to_string()).collect())].into_iter().collect(),
        remote_clusters: vec![leaf("leaf-a", "prod")],
        nodes: vec![node("node-uuid-1", "node-1", "127.0.0.1:40222")],
        ..Default::default()
    }
}

/// Alice's SSH certificate with role `prod-access`.
fn alice_cert(ca: &SshCa) -> String {
    let key = generate_key().unwrap();
    ca.sign_user_cert(&UserCertRequest {
        public_key: key.public_key().clone(),
        username: "alice".into(),
        principals: vec!["alice".into()],
        ttl: Duration::from_secs(600),
        roles: vec!["prod-access".into()],
        traits: Default::default(),
        route_to_cluster: String::new(),
        permit_port_forwarding: false,
        permit_agent_forwarding: false,
    })
    .unwrap()
    .to_openssh()
    .unwrap()
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..100 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn routing_goes_on_from_the_cache_after_auth_dies_and_after_a_restart() {
    let ca = SshCa::generate().unwrap();
    let fake = Arc::new(FakeAuth::default());
    fake.set_access(&snapshot(&ca, 7, &["prod-access"]));
    let (addr, server) = testutil::serve_fake_stoppable(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access-cache.json");
    let cache = AccessCache::start(testutil::auth_client(addr), file.clone());
    assert!(cache.wait_ready(Duration::from_secs(5)).await, "no snapshot from the fake auth");
    assert_eq!(cache.current().unwrap().revision, 7);
    assert_eq!(cache.status(), CacheStatus::Fresh);
    let state = testutil::state_with_access(Some(addr), cache.clone());

    // Auth dies: the stream breaks, the cache goes stale but keeps answering.
    server.abort();
    wait_until("the cache notices auth is gone", || matches!(cache.status(), CacheStatus::Stale { .. })).await;
    let n = state.sites.local_site().resolve("node-1", 0).await.unwrap();
    assert_eq!((n.id.as_str(), n.addr.as_str(), n.cluster.as_str()), ("node-uuid-1", "127.0.0.1:40222", CLUSTER));
    // `ssh -J proxy 127.0.0.1` asks for port 22: the node's own port is found all the same.
    assert_eq!(state.sites.local_site().resolve("127.0.0.1", 22).await.unwrap().id, "node-uuid-1");
    // An unknown host is "not found", not an auth failure.
    let e = state.sites.local_site().resolve("nope", 0).await.unwrap_err();
    assert!(matches!(e, RouteError::NodeNotFound { .. }), "{e}");
    state.router.authorize_cluster("leaf-a", &alice_cert(&ca)).await.unwrap();
    assert!(fake.resolved.lock().unwrap().iter().all(|(h, _)| h == "nope"), "only the unknown host may reach auth");

    // The snapshot was kept on disk, private; a restart with auth still down starts from it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let restarted = AccessCache::start_for_cluster(testutil::auth_client(addr), file.clone(), CLUSTER);
    assert_eq!(restarted.current().map(|s| s.revision), Some(7));
    assert!(matches!(restarted.status(), CacheStatus::Stale { .. }), "{:?}", restarted.status());
    let state = testutil::state_with_access(Some(addr), restarted);
    assert_eq!(state.sites.local_site().resolve("node-1", 0).await.unwrap().addr, "127.0.0.1:40222");
    // A file kept for another cluster is not trusted.
    let other = AccessCache::start_for_cluster(testutil::auth_client(addr), file, "other.example.com");
    assert!(other.current().is_none());
}

#[tokio::test]
async fn a_removed_role_is_applied_and_an_older_revision_is_not() {
    let ca = SshCa::generate().unwrap();
    // While it answers, auth decides (it lists leaf-a for her).
    let fake = Arc::new(FakeAuth {
        remote_clusters: vec![portcullis_proto::auth::RemoteCluster { name: "leaf-a".into(), connection: "online".into(), ..Default::default() }],
        ..FakeAuth::default()
    });
    fake.set_access(&snapshot(&ca, 5, &["prod-access"]));
    let (addr, server) = testutil::serve_fake_stoppable(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = AccessCache::start(testutil::auth_client(addr), dir.path().join("access-cache.json"));
    assert!(cache.wait_ready(Duration::from_secs(5)).await);
    let state = testutil::state_with_access(Some(addr), cache.clone());
    let cert = alice_cert(&ca);
    state.router.authorize_cluster("leaf-a", &cert).await.unwrap();

    // The admin removes alice's role; a lagging replica then sends an older snapshot, which
    // does not bring the role back.
    fake.set_access(&snapshot(&ca, 6, &[]));
    wait_until("revision 6 arrives", || cache.current().unwrap().revision == 6).await;
    fake.set_access(&snapshot(&ca, 4, &["prod-access"]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cache.current().unwrap().revision, 6);

    // With auth gone, the cache decides: the removed role refuses her.
    server.abort();
    let e = state.router.authorize_cluster("leaf-a", &cert).await.unwrap_err().to_string();
    assert!(e.contains("cannot check access to cluster \"leaf-a\"") && e.contains("removed"), "{e}");

    // A leaf hidden by the role's cluster_labels is reported as not found (auth unreachable:
    // the cache decides).
    let mut hidden = snapshot(&ca, 8, &["prod-access"]);
    hidden.remote_clusters = vec![leaf("leaf-a", "dev")];
    let state = testutil::state_with_access(None, AccessCache::fixed(hidden));
    let e = state.router.authorize_cluster("leaf-a", &cert).await.unwrap_err();
    assert!(matches!(e, RouteError::ClusterNotFound(_)), "{e}");
}
