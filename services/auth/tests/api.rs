//! The auth service's gRPC API, in process on port 0: join, login, heartbeats, listings,
//! SSH decisions, and restarts.
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_pki::x509::{self, AUTH_SERVER_NAME};
use portcullis_pki::{Identity, Secret, ssh};
use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_proto::auth::*;
use portcullis_rpc::{ClientTls, Trust};
use portcullis_rpc::Channel;

mod common;
use common::Running;

async fn start(dir: &std::path::Path) -> Running {
    common::start(dir, "api.example.com", &["node:static-node-token"]).await
}

async fn admin(r: &Running) -> AuthClient<Channel> {
    let id = Identity::load(&portcullis_auth::admin_identity_path(&r.data_dir)).unwrap();
    let ch = portcullis_rpc::connect(&r.addr, &ClientTls::from_identity(&id, AUTH_SERVER_NAME)).await.unwrap();
    AuthClient::new(ch)
}

async fn join(r: &Running, token: &str, role: &str, name: &str) -> Result<Identity, String> {
    portcullis_rpc::join::join(&r.addr, Trust::Insecure, Secret::new(token.into()), role, name, &["127.0.0.1".into()])
        .await
        .map_err(|e| e.to_string())
}

async fn client_for(r: &Running, id: &Identity) -> AuthClient<Channel> {
    let ch = portcullis_rpc::connect(&r.addr, &ClientTls::from_identity(id, AUTH_SERVER_NAME)).await.unwrap();
    AuthClient::new(ch)
}

fn role_json(name: &str, env: &str) -> String {
    serde_json::json!({
        "kind": "role", "version": "v7", "metadata": {"name": name},
        "spec": {"allow": {"logins": ["{{internal.logins}}"], "node_labels": {"env": env}}, "deny": {"logins": ["root"]}}
    })
    .to_string()
}

#[tokio::test]
async fn join_login_list_and_authorize() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(dir.path()).await;
    let mut adm = admin(&r).await;

    // Tokens: static works, dynamic works, unknown and wrong-role are refused clearly.
    let node = join(&r, "static-node-token", "node", "n1").await.unwrap();
    assert_eq!(node.cluster_name, "api.example.com");
    let err = join(&r, "nope", "node", "n2").await.unwrap_err();
    assert!(err.contains("not recognised"), "{err}");
    let t = adm
        .create_token(CreateTokenRequest { roles: vec!["proxy".into()], ttl_seconds: 60, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.token.len(), 32);
    let err = join(&r, &t.token, "node", "n2").await.unwrap_err();
    assert!(err.contains("cannot be used to join as node"), "{err}");
    let proxy = join(&r, &t.token, "proxy", "p1").await.unwrap();

    // The node's host certificate is valid for `host_id.cluster` and its node name.
    let host_cert = ssh::parse_certificate(&node.ssh_cert).unwrap();
    let p = host_cert.valid_principals();
    assert!(p.contains(&format!("{}.api.example.com", node.name)) && p.contains(&"n1".to_string()), "{p:?}");
    assert!(p.contains(&"127.0.0.1".to_string()));

    // Role and user through the generic resource API.
    adm.upsert_resource(UpsertResourceRequest { resource_json: role_json("dev", "dev"), create_only: true }).await.unwrap();
    let dup = adm.upsert_resource(UpsertResourceRequest { resource_json: role_json("dev", "dev"), create_only: true }).await.unwrap_err();
    assert_eq!(dup.code(), tonic::Code::AlreadyExists);
    let user = serde_json::json!({"kind":"user","version":"v2","metadata":{"name":"alice"},"spec":{"roles":["dev"],"traits":{"logins":["alice","root"]}}});
    adm.upsert_resource(UpsertResourceRequest { resource_json: user.to_string(), create_only: true }).await.unwrap();
    let short = adm.set_password(SetPasswordRequest { username: "alice".into(), password: "x".into() }).await.unwrap_err();
    assert_eq!(short.code(), tonic::Code::InvalidArgument);
    adm.set_password(SetPasswordRequest { username: "alice".into(), password: "s3cret-pass".into() }).await.unwrap();

    // Heartbeat, then the proxy logs alice in.
    let mut nc = client_for(&r, &node).await;
    nc.heartbeat(HeartbeatRequest {
        kind: "node".into(),
        host_id: node.name.clone(),
        hostname: "n1".into(),
        addr: "127.0.0.1:3022".into(),
        labels: [("env".to_string(), "dev".to_string())].into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let spoof = nc
        .heartbeat(HeartbeatRequest { kind: "node".into(), host_id: "someone-else".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(spoof.code(), tonic::Code::PermissionDenied);

    let mut pc = client_for(&r, &proxy).await;
    let ukey = ssh::generate_key().unwrap();
    let tkey = x509::generate_key().unwrap();
    let login = |password: &str| AuthenticateUserRequest {
        username: "alice".into(),
        password: password.into(),
        ssh_public_key: ssh::public_key_line(ukey.public_key()).unwrap(),
        tls_public_key: x509::public_key_der(&tkey),
        ..Default::default()
    };
    let bad = pc.authenticate_user(login("wrong-password")).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::Unauthenticated);
    assert_eq!(bad.message(), "invalid username or password");
    let certs = pc.authenticate_user(login("s3cret-pass")).await.unwrap().into_inner();
    let info = ssh::user_cert_info(&ssh::parse_certificate(&certs.ssh_cert).unwrap()).unwrap();
    assert_eq!(info.username, "alice");
    assert_eq!(info.principals, vec!["alice"], "root is denied so it is not a principal");
    assert_eq!(info.roles, vec!["dev"]);
    let ttl = info.valid_before - info.valid_after;
    assert!((12 * 3600..=12 * 3600 + 61).contains(&ttl), "default TTL 12h (+1m backdate): {ttl}");

    // A node may not log users in.
    let e = nc.authenticate_user(login("s3cret-pass")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);

    // Listing with the user's TLS certificate.
    let der = x509::pem_to_ders(&certs.tls_cert_pem).unwrap().remove(0);
    let nodes = pc.list_nodes(ListNodesRequest { user_tls_cert: der, ..Default::default() }).await.unwrap().into_inner().nodes;
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].hostname, "n1");

    // SSH decisions by the node itself.
    let ask = |login: &str| AuthorizeSshRequest {
        ssh_cert: certs.ssh_cert.clone(),
        login: login.into(),
        source: "node".into(),
        ..Default::default()
    };
    let ok = nc.authorize_ssh(ask("alice")).await.unwrap().into_inner();
    assert!(ok.allowed, "{ok:?}");
    assert_eq!(ok.roles, vec!["dev"]);
    let no = nc.authorize_ssh(ask("root")).await.unwrap().into_inner();
    assert!(!no.allowed);
    assert!(no.reason.contains("root"), "{}", no.reason);
    // The proxy explains for a named node.
    let mut q = ask("alice");
    q.node = "n1".into();
    q.source = "proxy".into();
    assert!(pc.authorize_ssh(q).await.unwrap().into_inner().allowed);

    let events = adm
        .search_audit_events(SearchAuditEventsRequest { event_type: "auth".into(), limit: 10 })
        .await
        .unwrap()
        .into_inner()
        .events_json;
    assert!(events.iter().any(|e| e.contains("\"login\":\"root\"")), "{events:?}");

    // Restart: same CAs, same users; old certificates still verify.
    let cas_before = adm.ping(PingRequest {}).await.unwrap().into_inner().cas;
    drop((adm, nc, pc));
    r.stop().await;
    let r = start(dir.path()).await;
    let mut adm = admin(&r).await;
    assert_eq!(adm.ping(PingRequest {}).await.unwrap().into_inner().cas, cas_before);
    let users = adm.get_resources(GetResourcesRequest { kind: "users".into(), name: String::new() }).await.unwrap();
    assert!(users.into_inner().resources_json[0].contains("alice"));
    let mut nc = client_for(&r, &node).await;
    assert!(nc.authorize_ssh(ask("alice")).await.unwrap().into_inner().allowed);
    r.stop().await;
}

#[tokio::test]
async fn oversized_messages_are_refused_without_harm() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(dir.path()).await;
    let mut adm = admin(&r).await;
    let huge = "x".repeat(portcullis_auth::MAX_MESSAGE_BYTES + 1);
    let e = adm.upsert_resource(UpsertResourceRequest { resource_json: huge, create_only: false }).await.unwrap_err();
    assert!(
        matches!(e.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::Internal | tonic::Code::Unknown),
        "{e:?}"
    );
    // Still serving.
    adm.ping(PingRequest {}).await.unwrap();
    r.stop().await;
}
