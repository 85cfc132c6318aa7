//! The auth service's diagnostic listener, in process: readiness, and requests counted by
//! method and outcome (a refused SSH login counts as denied).
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use portcullis_config::{AuthSettings, CommonFlags, FileConfig};
use portcullis_pki::x509::AUTH_SERVER_NAME;
use portcullis_pki::{Identity, Secret, ssh};
use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_proto::auth::*;
use portcullis_rpc::{ClientTls, Trust};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Status and body of a plain HTTP GET.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (head.split(' ').nth(1).unwrap().parse().unwrap(), body.to_string())
}

/// The value of the sample `series` (name and labels exactly as encoded), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_by_outcome() {
    portcullis_rpc::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "teleport:\n  data_dir: {}\nauth_service:\n  cluster_name: diag.example.com\n  tokens: [\"node:static-node-token\", \"proxy:static-proxy-token\"]\n  join_rate_limit: {{burst: 3, per_second: 0.01}}\n",
        dir.path().display()
    );
    let settings = AuthSettings::from_parts(&FileConfig::from_yaml(&yaml).unwrap(), &CommonFlags::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let diag = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let diag_addr = diag.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(portcullis_auth::run_with_diag(settings, listener, Some(diag), async move {
        let _ = stopped.await;
    }));
    let admin_path = portcullis_auth::admin_identity_path(dir.path());
    for _ in 0..200 {
        if admin_path.exists() && get(diag_addr, "/readyz").await.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(diag_addr, "/readyz").await, (200, "ready\n".to_string()));
    assert_eq!(get(diag_addr, "/healthz").await.0, 200);

    let admin = Identity::load(&admin_path).unwrap();
    let ch = portcullis_rpc::connect(&addr, &ClientTls::from_identity(&admin, AUTH_SERVER_NAME)).await.unwrap();
    let mut adm = AuthClient::new(ch);
    adm.ping(PingRequest {}).await.unwrap();
    adm.ping(PingRequest {}).await.unwrap();
    // An admin may not heartbeat: denied.
    adm.heartbeat(HeartbeatRequest::default()).await.unwrap_err();
    // No such user: not found.
    let e = adm.generate_user_certs(GenerateUserCertsRequest { username: "nobody".into(), ..Default::default() }).await;
    assert_eq!(e.unwrap_err().code(), tonic::Code::NotFound);

    // A refused SSH login is a successful call that counts as denied.
    let node =
        portcullis_rpc::join::join(&addr, Trust::Insecure, Secret::new("static-node-token".into()), "node", "n1", &[])
            .await
            .unwrap();
    let role = serde_json::json!({"kind": "role", "version": "v7", "metadata": {"name": "dev"},
        "spec": {"allow": {"logins": ["alice"], "node_labels": {"*": "*"}}}});
    adm.upsert_resource(UpsertResourceRequest { resource_json: role.to_string(), create_only: true }).await.unwrap();
    let user =
        serde_json::json!({"kind": "user", "version": "v2", "metadata": {"name": "alice"}, "spec": {"roles": ["dev"]}});
    adm.upsert_resource(UpsertResourceRequest { resource_json: user.to_string(), create_only: true }).await.unwrap();
    let key = ssh::generate_key().unwrap();
    let certs = adm
        .generate_user_certs(GenerateUserCertsRequest {
            username: "alice".into(),
            ssh_public_key: ssh::public_key_line(key.public_key()).unwrap(),
            tls_public_key: portcullis_pki::x509::public_key_der(&portcullis_pki::x509::generate_key().unwrap()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ch = portcullis_rpc::connect(&addr, &ClientTls::from_identity(&node, AUTH_SERVER_NAME)).await.unwrap();
    let mut nc = AuthClient::new(ch);
    let ask = |login: &str| AuthorizeSshRequest {
        ssh_cert: certs.ssh_cert.clone(),
        login: login.into(),
        source: "node".into(),
        ..Default::default()
    };
    assert!(!nc.authorize_ssh(ask("root")).await.unwrap().into_inner().allowed);

    let (status, text) = get(diag_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(text.contains("# TYPE portcullis_auth_requests counter\n"), "{text}");
    let count = |rpc: &str, outcome: &str| {
        sample(&text, &format!("portcullis_auth_requests_total{{rpc=\"{rpc}\",outcome=\"{outcome}\"}}"))
    };
    assert_eq!(count("Ping", "ok"), 2.0, "{text}");
    assert_eq!(count("Heartbeat", "denied"), 1.0, "{text}");
    assert_eq!(count("GenerateUserCerts", "not_found"), 1.0, "{text}");
    assert_eq!(count("GenerateUserCerts", "ok"), 1.0, "{text}");
    assert_eq!(count("Join", "ok"), 1.0, "{text}");
    assert_eq!(count("AuthorizeSsh", "denied"), 1.0, "{text}");
    assert_eq!(count("AuthorizeSsh", "ok"), 0.0, "{text}");
    assert!(text.contains("portcullis_auth_nodes 0"), "{text}");
    assert!(text.contains("portcullis_auth_locked_users 0"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");

    // Attacks show in the metrics: joins beyond the per-address rate limit (burst 3: the
    // node's, the proxy's and one wrong token) count as throttled, and a user locked after
    // five wrong passwords as a locked user.
    let proxy =
        portcullis_rpc::join::join(&addr, Trust::Insecure, Secret::new("static-proxy-token".into()), "proxy", "p1", &[])
            .await
            .unwrap();
    for _ in 0..3 {
        let _ = portcullis_rpc::join::join(&addr, Trust::Insecure, Secret::new("wrong-token".into()), "node", "n2", &[]).await;
    }
    let ch = portcullis_rpc::connect(&addr, &ClientTls::from_identity(&proxy, AUTH_SERVER_NAME)).await.unwrap();
    let mut pc = AuthClient::new(ch);
    for _ in 0..5 {
        let r = pc
            .authenticate_user(AuthenticateUserRequest {
                username: "alice".into(),
                password: "not-her-password".into(),
                ..Default::default()
            })
            .await;
        assert!(r.is_err());
    }
    let (_, text) = get(diag_addr, "/metrics").await;
    let count = |rpc: &str, outcome: &str| {
        sample(&text, &format!("portcullis_auth_requests_total{{rpc=\"{rpc}\",outcome=\"{outcome}\"}}"))
    };
    assert!(count("Join", "throttled") >= 1.0, "{text}");
    assert!(text.contains("portcullis_auth_locked_users 1"), "{text}");
    drop(pc);

    drop((adm, nc));
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
