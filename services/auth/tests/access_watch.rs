//! `WatchAccess` and admin locks through the gRPC API: who may watch, what a node is sent,
//! and a lock reaching watchers and `ListUserLocks` until `UnlockUser` lifts it.
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use portcullis_access::AccessSnapshot;
use portcullis_pki::x509::AUTH_SERVER_NAME;
use portcullis_pki::{Identity, Secret};
use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_proto::auth::*;
use portcullis_rpc::{Channel, ClientTls, Trust};

mod common;

async fn client_for(addr: &str, id: &Identity) -> AuthClient<Channel> {
    let ch = portcullis_rpc::connect(addr, &ClientTls::from_identity(id, AUTH_SERVER_NAME)).await.unwrap();
    AuthClient::new(ch)
}

async fn next(s: &mut tonic::Streaming<AccessSnapshotMessage>) -> AccessSnapshot {
    let m = tokio::time::timeout(Duration::from_secs(5), s.message()).await.unwrap().unwrap().unwrap();
    AccessSnapshot::from_json(&m.snapshot_json).unwrap()
}

#[tokio::test]
async fn a_node_watches_access_and_sees_an_admin_lock_come_and_go() {
    let dir = tempfile::tempdir().unwrap();
    let r = common::start(dir.path(), "watch.example.com", &["node:static-node-token"]).await;
    let admin_id = Identity::load(&portcullis_auth::admin_identity_path(&r.data_dir)).unwrap();
    let mut adm = client_for(&r.addr, &admin_id).await;
    let node_id = portcullis_rpc::join::join(
        &r.addr,
        Trust::Insecure,
        Secret::new("static-node-token".into()),
        "node",
        "n1",
        &["127.0.0.1".into()],
    )
    .await
    .unwrap();
    let mut node = client_for(&r.addr, &node_id).await;

    // Only nodes, proxies and agents may watch.
    let e = adm.watch_access(WatchAccessRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("may not call WatchAccess"), "{}", e.message());

    let mut stream = node.watch_access(WatchAccessRequest {}).await.unwrap().into_inner();
    let first = next(&mut stream).await;
    assert_eq!(first.cluster_name, "watch.example.com");
    assert!(first.locks.is_empty() && first.nodes.is_empty());

    // A node may not lock anyone; an admin may.
    let lock = LockUserRequest { username: "alice".into(), ttl_seconds: 0, message: "laptop stolen".into() };
    assert_eq!(node.lock_user(lock.clone()).await.unwrap_err().code(), tonic::Code::PermissionDenied);
    adm.lock_user(lock).await.unwrap();
    let locked = next(&mut stream).await;
    assert_eq!(locked.locks.len(), 1);
    assert_eq!((locked.locks[0].user.as_str(), locked.locks[0].message.as_str()), ("alice", "laptop stolen"));
    assert!(locked.revision > first.revision);

    let locks = adm.list_user_locks(ListUserLocksRequest {}).await.unwrap().into_inner().locks;
    assert!(locks.iter().any(|l| l.username == "alice" && l.kind == "admin" && l.message == "laptop stolen"), "{locks:?}");

    let bad = adm.lock_user(LockUserRequest { username: " ".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    assert!(adm.unlock_user(UnlockUserRequest { username: "alice".into() }).await.unwrap().into_inner().was_locked);
    let unlocked = next(&mut stream).await;
    assert!(unlocked.locks.is_empty());
    r.stop().await;
}
