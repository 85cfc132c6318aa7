//! The fake itself: unconfigured calls, configured answers, the call log, the access stream
//! and a kill that drops open streams.
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use portcullis_fake_auth::{FakeAuth, Rpc, reply};
use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_proto::auth::*;

async fn client(addr: std::net::SocketAddr) -> AuthClient<tonic::transport::Channel> {
    AuthClient::connect(format!("http://{addr}")).await.unwrap()
}

#[tokio::test]
async fn answers_what_is_configured_and_records_every_call() {
    let nodes = ListNodesResponse { nodes: vec![Node { hostname: "web".into(), ..Default::default() }] };
    let running = FakeAuth::new().list_nodes(reply(nodes.clone())).start().await.unwrap();
    let mut c = client(running.addr).await;

    let e = c.ping(PingRequest::default()).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (tonic::Code::Unimplemented, "fake auth: Ping not configured"));
    let got = c.list_nodes(ListNodesRequest { user_tls_cert: b"cert".to_vec(), ..Default::default() }).await.unwrap();
    assert_eq!(got.into_inner(), nodes);

    let calls = running.calls();
    assert_eq!(calls.list(), vec![Rpc::Ping, Rpc::ListNodes]);
    assert_eq!((calls.count(Rpc::Ping), calls.count(Rpc::Heartbeat)), (1, 0));
    assert_eq!(calls.requests::<ListNodesRequest>()[0].user_tls_cert, b"cert");
    running.stop().await;
}

#[tokio::test]
async fn streams_access_snapshots_until_killed() {
    let (access, rx) = tokio::sync::watch::channel(None);
    let running = FakeAuth::new().watch_access(rx).count_only().start().await.unwrap();
    let addr = running.addr;
    let mut stream = client(addr).await.watch_access(WatchAccessRequest::default()).await.unwrap().into_inner();

    access.send_replace(Some(AccessSnapshotMessage { snapshot_json: b"{}".to_vec(), revision: 1 }));
    assert_eq!(stream.message().await.unwrap().unwrap().revision, 1);
    access.send_replace(Some(AccessSnapshotMessage { snapshot_json: b"{}".to_vec(), revision: 2 }));
    assert_eq!(stream.message().await.unwrap().unwrap().revision, 2);
    assert_eq!(running.calls().count(Rpc::WatchAccess), 1);
    assert!(running.calls().list().is_empty(), "count_only keeps no requests");

    // Killed, the open stream ends and the port refuses.
    running.kill();
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap();
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
