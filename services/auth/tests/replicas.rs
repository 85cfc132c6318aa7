//! Two auth servers of one cluster on one backend, in process over gRPC (issue 12): each
//! serves every call. A user created through one logs in through the other, both hand out
//! the same CAs, both answer one audit search with the events of both, and two leaves
//! racing for one name through different replicas end with one trusted.
//!
//! On a memory backend always; on a throwaway PostgreSQL server when PostgreSQL is
//! installed, else skipped with a notice unless `CI=true`, where that is a failure.
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use portcullis_pki::x509::{self, AUTH_SERVER_NAME};
use portcullis_pki::{Identity, Secret, ssh};
use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_proto::auth::*;
use portcullis_rpc::{Channel, ClientTls, Trust};
use portcullis_storage::{Backend, MemoryBackend};

mod common;
use common::Running;

const CLUSTER: &str = "ha.example.com";
const TOKEN: &str = "static-join-token";

async fn admin(r: &Running) -> AuthClient<Channel> {
    let id = Identity::load(&portcullis_auth::admin_identity_path(&r.data_dir)).unwrap();
    client_for(r, &id).await
}

async fn client_for(r: &Running, id: &Identity) -> AuthClient<Channel> {
    let ch = portcullis_rpc::connect(&r.addr, &ClientTls::from_identity(id, AUTH_SERVER_NAME)).await.unwrap();
    AuthClient::new(ch)
}

async fn join(r: &Running, role: &str, name: &str) -> Identity {
    portcullis_rpc::join::join(&r.addr, Trust::Insecure, Secret::new(TOKEN.into()), role, name, &["127.0.0.1".into()])
        .await
        .unwrap()
}

/// A throwaway PostgreSQL server (the storage crate's test support), or `None` with a
/// notice when PostgreSQL is not installed (a failure with `CI=true`).
#[path = "../../../shared/storage/tests/support/pg.rs"]
#[allow(dead_code)]
mod pg;

async fn two_replicas_serve_every_call(a: Running, b: Running) {
    let (mut adm_a, mut adm_b) = (admin(&a).await, admin(&b).await);

    // One set of CAs, whichever replica is asked.
    let cas_a = adm_a.ping(PingRequest {}).await.unwrap().into_inner().cas.unwrap();
    let cas_b = adm_b.ping(PingRequest {}).await.unwrap().into_inner().cas.unwrap();
    assert_eq!(cas_a, cas_b);

    // A user created through A logs in through B (a proxy that joined through B).
    let user = serde_json::json!({"kind":"user","version":"v2","metadata":{"name":"alice"},"spec":{"roles":["access"],"traits":{"logins":["alice"]}}});
    adm_a.upsert_resource(UpsertResourceRequest { resource_json: user.to_string(), create_only: true }).await.unwrap();
    adm_a.set_password(SetPasswordRequest { username: "alice".into(), password: "alices-password".into() }).await.unwrap();
    let proxy = join(&b, "proxy", "proxy-1").await;
    let node = join(&a, "node", "node-1").await;
    let ukey = ssh::generate_key().unwrap();
    let tkey = x509::generate_key().unwrap();
    let login = AuthenticateUserRequest {
        username: "alice".into(),
        password: "alices-password".into(),
        ssh_public_key: ssh::public_key_line(ukey.public_key()).unwrap(),
        tls_public_key: x509::public_key_der(&tkey),
        ..Default::default()
    };
    let certs = client_for(&b, &proxy).await.authenticate_user(login.clone()).await.unwrap().into_inner();
    assert_eq!(certs.username, "alice");
    // Identities from one replica are good at the other: the proxy of B logs in through A.
    client_for(&a, &proxy).await.authenticate_user(login).await.unwrap();
    // And what the node asks A about that certificate, B answers the same.
    let ask = AuthorizeSshRequest { ssh_cert: certs.ssh_cert.clone(), login: "alice".into(), source: "node".into(), ..Default::default() };
    let mut nc = client_for(&a, &node).await;
    let beat = HeartbeatRequest {
        kind: "node".into(),
        host_id: node.name.clone(),
        hostname: "node-1".into(),
        addr: "127.0.0.1:3022".into(),
        ..Default::default()
    };
    nc.heartbeat(beat).await.unwrap();
    for r in [&a, &b] {
        let answer = client_for(r, &node).await.authorize_ssh(ask.clone()).await.unwrap().into_inner();
        assert!(answer.allowed, "{answer:?}");
    }

    // The join events of both replicas, in one search on either.
    for adm in [&mut adm_a, &mut adm_b] {
        let events = adm
            .search_audit_events(SearchAuditEventsRequest { event_type: "join".into(), limit: 0 })
            .await
            .unwrap()
            .into_inner()
            .events_json;
        assert!(events.iter().any(|e| e.contains("\"nodename\":\"proxy-1\"")), "{events:?}");
        assert!(events.iter().any(|e| e.contains("\"nodename\":\"node-1\"")), "{events:?}");
    }

    // Leaves racing for one name through both replicas: exactly one is trusted.
    let mut calls = Vec::new();
    for i in 0..8 {
        let t = adm_a
            .create_token(CreateTokenRequest { roles: vec!["trusted_cluster".into()], ttl_seconds: 600, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .token;
        let mut c = client_for(if i % 2 == 0 { &a } else { &b }, &proxy).await;
        calls.push(tokio::spawn(async move {
            c.validate_trusted_cluster(ValidateTrustedClusterRequest {
                token: t,
                leaf_cluster_name: "leaf.example.com".into(),
                leaf_cas: Some(CertAuthorities {
                    tls_ca_pem: vec![format!("tls-{i}")],
                    ssh_user_ca: vec![format!("user-{i}")],
                    ssh_host_ca: vec![format!("host-{i}")],
                }),
                remote_addr: String::new(),
            })
            .await
        }));
    }
    let mut won = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => won += 1,
            Err(e) => assert!(e.message().contains("already trusted with other keys"), "{e:?}"),
        }
    }
    assert_eq!(won, 1);
    let rcs = adm_b.get_resources(GetResourcesRequest { kind: "rc".into(), name: String::new() }).await.unwrap();
    assert_eq!(rcs.into_inner().resources_json.len(), 1);

    drop((adm_a, adm_b));
    a.stop().await;
    b.stop().await;
}

fn tokens() -> Vec<String> {
    vec![format!("node,proxy:{TOKEN}")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_memory_backend() {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let kek = dir.path().join("shared-kek");
    let tokens = tokens();
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let a = common::start_replica(&dir.path().join("a"), CLUSTER, &tokens, backend.clone(), &kek).await;
    let b = common::start_replica(&dir.path().join("b"), CLUSTER, &tokens, backend, &kek).await;
    two_replicas_serve_every_call(a, b).await;
}

/// Two auth servers configured with `teleport.storage: postgresql`, each opening its own
/// connections and change feed, as two processes would.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_postgresql_database() {
    let Some(server) = pg::PgServer::start() else { return };
    let conn = server.conn_string("disable");
    let dir = tempfile::tempdir().unwrap();
    let kek = dir.path().join("shared-kek");
    let tokens = tokens();
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let extra = format!("  ca_key_encryption_key_file: {}\n", kek.display());
    let mut replicas = Vec::new();
    for name in ["a", "b"] {
        let mut settings = common::settings(&dir.path().join(name), CLUSTER, &tokens, &extra);
        settings.storage = portcullis_config::StorageSettings::Postgres { conn: portcullis_config::ConnString::new(conn.clone()) };
        replicas.push(common::start_settings(settings).await);
    }
    let b = replicas.pop().unwrap();
    let a = replicas.pop().unwrap();
    two_replicas_serve_every_call(a, b).await;
    drop(server);
}
