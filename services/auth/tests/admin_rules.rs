//! Admin calls of users are decided by the resource rules of their roles (deny wins), read
//! at call time; a role named `editor` grants nothing by its name.
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_pki::x509::{self, AUTH_SERVER_NAME, SystemRole};
use portcullis_pki::{Identity, Secret, ssh};
use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_proto::auth::*;
use portcullis_rpc::{Channel, ClientTls};

mod common;
use common::Running;

async fn connect(r: &Running, id: &Identity) -> AuthClient<Channel> {
    let ch = portcullis_rpc::connect(&r.addr, &ClientTls::from_identity(id, AUTH_SERVER_NAME)).await.unwrap();
    AuthClient::new(ch)
}

async fn admin(r: &Running) -> AuthClient<Channel> {
    connect(r, &Identity::load(&portcullis_auth::admin_identity_path(&r.data_dir)).unwrap()).await
}

async fn upsert(adm: &mut AuthClient<Channel>, resource: serde_json::Value) {
    adm.upsert_resource(UpsertResourceRequest { resource_json: resource.to_string(), create_only: false })
        .await
        .unwrap();
}

/// Creates `name` with `roles` and connects as that user (certificates as `tctl auth sign`).
async fn user(r: &Running, adm: &mut AuthClient<Channel>, name: &str, roles: &[&str]) -> AuthClient<Channel> {
    upsert(
        adm,
        serde_json::json!({"kind": "user", "version": "v2", "metadata": {"name": name}, "spec": {"roles": roles}}),
    )
    .await;
    let ssh_key = ssh::generate_key().unwrap();
    let tls_key = x509::generate_key().unwrap();
    let certs = adm
        .generate_user_certs(GenerateUserCertsRequest {
            username: name.into(),
            ssh_public_key: ssh::public_key_line(ssh_key.public_key()).unwrap(),
            tls_public_key: x509::public_key_der(&tls_key),
            ttl_seconds: 600,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let id = Identity::new(
        certs.cluster_name,
        name.into(),
        String::new(),
        SystemRole::User.into(),
        certs.tls_cert_pem,
        Secret::new(tls_key.serialize_pem()),
        certs.cas.unwrap_or_default().tls_ca_pem,
        Secret::new(ssh::private_key_openssh(&ssh_key).unwrap()),
        certs.ssh_cert,
    );
    connect(r, &id).await
}

fn create_token() -> CreateTokenRequest {
    CreateTokenRequest { roles: vec!["node".into()], ttl_seconds: 60, ..Default::default() }
}

#[tokio::test]
async fn rules_not_role_names_decide_admin_calls() {
    let dir = tempfile::tempdir().unwrap();
    let r = common::start(dir.path(), "rules.example.com", &[]).await;
    let mut adm = admin(&r).await;

    // A custom role with only list and read on remote_cluster.
    upsert(
        &mut adm,
        serde_json::json!({"kind": "role", "version": "v7", "metadata": {"name": "rc-viewer"},
            "spec": {"allow": {"rules": [{"resources": ["remote_cluster"], "verbs": ["list", "read"]}]}}}),
    )
    .await;
    let mut viewer = user(&r, &mut adm, "bob", &["rc-viewer"]).await;
    viewer
        .get_resources(GetResourcesRequest { kind: "remote_cluster".into(), name: String::new() })
        .await
        .unwrap();
    let e = viewer.create_token(create_token()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert_eq!(e.message(), "user \"bob\" (roles rc-viewer) may not create token: no role allows it");
    let e = viewer.get_resources(GetResourcesRequest { kind: "user".into(), name: String::new() }).await.unwrap_err();
    assert_eq!(e.message(), "user \"bob\" (roles rc-viewer) may not list user: no role allows it");

    // The preset editor keeps every admin right.
    let mut editor = user(&r, &mut adm, "carol", &["editor"]).await;
    editor.create_token(create_token()).await.unwrap();
    editor.status(StatusRequest::default()).await.unwrap();
    editor.search_audit_events(SearchAuditEventsRequest::default()).await.unwrap();
    editor.list_user_locks(ListUserLocksRequest::default()).await.unwrap();

    // A deny rule in another role wins over the editor's allow.
    upsert(
        &mut adm,
        serde_json::json!({"kind": "role", "version": "v7", "metadata": {"name": "no-tokens"},
            "spec": {"deny": {"rules": [{"resources": ["token"], "verbs": ["*"]}]}}}),
    )
    .await;
    let mut fenced = user(&r, &mut adm, "dave", &["editor", "no-tokens"]).await;
    let e = fenced.create_token(create_token()).await.unwrap_err();
    assert_eq!(e.message(), "user \"dave\" (roles editor,no-tokens) may not create token: denied by role \"no-tokens\"");
    fenced.get_resources(GetResourcesRequest { kind: "role".into(), name: String::new() }).await.unwrap();

    // The admin empties the editor's rules: its name alone grants nothing, at once.
    upsert(
        &mut adm,
        serde_json::json!({"kind": "role", "version": "v7", "metadata": {"name": "editor"}, "spec": {}}),
    )
    .await;
    let e = editor.create_token(create_token()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert_eq!(e.message(), "user \"carol\" (roles editor) may not create token: no role allows it");
    let e = editor.status(StatusRequest::default()).await.unwrap_err();
    assert_eq!(e.message(), "user \"carol\" (roles editor) may not read every resource: no role allows it");

    // Other certificates are refused as before, naming the call.
    let e = viewer.heartbeat(HeartbeatRequest::default()).await.unwrap_err();
    assert_eq!(e.message(), "bob (User) may not call Heartbeat");
    r.stop().await;
}
