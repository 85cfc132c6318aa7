//! Runs tctl commands against the fake auth service (portcullis-fake-auth) over real mutual
//! TLS, to check the wiring (connection, requests, output); the real auth is tested end to end.
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use clap::Parser;
use portcullis_fake_auth::{FakeAuth, ServerTls, issue_cert};
use portcullis_pki::x509::{TlsCa, SystemRole};
use portcullis_pki::{Identity, Secret};
use portcullis_proto::auth::*;
use tonic::Status;

/// What the stand-in stores; the tests read and seed it directly.
#[derive(Default)]
struct Mock {
    resources: Mutex<BTreeMap<(String, String), String>>,
    passwords: Mutex<BTreeMap<String, String>>,
}

/// The fake auth answering tctl's calls from `mock`.
fn configured(mock: Arc<Mock>) -> FakeAuth {
    let auth = FakeAuth::new().generate_user_certs(|r| {
        let r = r.into_inner();
        Ok(UserCerts {
            username: r.username,
            ssh_cert: "ssh-cert".into(),
            tls_cert_pem: "tls-cert".into(),
            cas: Some(CertAuthorities { tls_ca_pem: vec!["ca".into()], ..Default::default() }),
            cluster_name: "root".into(),
            ..Default::default()
        })
    });
    let m = mock.clone();
    let auth = auth.set_password(move |r| {
        let r = r.into_inner();
        m.passwords.lock().unwrap().insert(r.username, r.password);
        Ok(Empty {})
    });
    let m = mock.clone();
    let auth = auth.upsert_resource(move |r| {
        let r = r.into_inner();
        let v: serde_json::Value = serde_json::from_str(&r.resource_json).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        let name = v["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let mut res = m.resources.lock().unwrap();
        let key = (kind.clone(), name.clone());
        if r.create_only && res.contains_key(&key) {
            return Err(Status::already_exists(format!("{kind} {name:?} already exists")));
        }
        let created = res.insert(key, r.resource_json).is_none();
        Ok(UpsertResourceResponse { kind, name, created })
    });
    let m = mock.clone();
    let auth = auth.get_resources(move |r| {
        let r = r.into_inner();
        let res = m.resources.lock().unwrap();
        let out: Vec<String> = res
            .iter()
            .filter(|((k, n), _)| *k == r.kind && (r.name.is_empty() || *n == r.name))
            .map(|(_, v)| v.clone())
            .collect();
        if !r.name.is_empty() && out.is_empty() {
            return Err(Status::not_found(format!("{} \"{}\" not found", r.kind, r.name)));
        }
        Ok(GetResourcesResponse { resources_json: out })
    });
    let m = mock.clone();
    let auth = auth.delete_resource(move |r| {
        let r = r.into_inner();
        match m.resources.lock().unwrap().remove(&(r.kind.clone(), r.name.clone())) {
            Some(_) => Ok(Empty {}),
            None => Err(Status::not_found(format!("{} \"{}\" not found", r.kind, r.name))),
        }
    });
    let auth = auth.create_token(move |r| {
        let r = r.into_inner();
        let token = if r.value.is_empty() { "random-token".to_string() } else { r.value };
        let expires = portcullis_pki::unix_now() as i64 + r.ttl_seconds as i64;
        let roles: Vec<String> = r.roles.clone();
        let json = serde_json::json!({
            "kind": "token", "version": "v2",
            "metadata": {"name": token, "expires": time::OffsetDateTime::from_unix_timestamp(expires).unwrap()
                .format(&time::format_description::well_known::Rfc3339).unwrap()},
            "spec": {"roles": roles},
        });
        mock.resources.lock().unwrap().insert(("token".into(), token.clone()), json.to_string());
        Ok(CreateTokenResponse { token, expires_unix: expires })
    });
    auth.status(|r| {
        // Like the real service, only admins may ask.
        if r.peer_certs().is_none() {
            return Err(Status::unauthenticated("no client certificate"));
        }
        Ok(StatusResponse {
            cluster_name: "root".into(),
            version: "0.1.0".into(),
            ca_fingerprints: vec![],
            nodes: 0,
            users: 0,
            ca_pin: "sha256:abcd".into(),
        })
    })
}

/// Starts the mock; returns its address and an admin identity file for it.
async fn start(dir: &Path, mock: Arc<Mock>) -> (String, String) {
    let ca = TlsCa::generate("root").unwrap();
    let ca_pems = vec![ca.cert_pem().to_string()];
    let (admin_cert, admin_key) = issue_cert(&ca, "admin", SystemRole::Admin.as_str(), &[]).unwrap();
    let id = Identity::new(
        "root".into(), "admin".into(), String::new(), SystemRole::Admin.into(), admin_cert,
        Secret::new(admin_key), ca_pems.clone(), Secret::new(String::new()), String::new(),
    );
    let id_path = dir.join("admin.json");
    id.save(&id_path).unwrap();
    let tls = ServerTls::issue(&ca, &ca_pems).unwrap();
    let addr = configured(mock).tls(tls).start().await.unwrap().addr.to_string();
    (addr, id_path.display().to_string())
}

async fn tctl(addr: &str, id: &str, args: &[&str]) -> Result<String, String> {
    let mut v = vec!["tctl", "--auth-server", addr, "-i", id];
    v.extend_from_slice(args);
    let cli = tctl::Cli::try_parse_from(v).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tctl::run_with_output(cli, &mut out).await.map_err(|e| e.to_string())?;
    Ok(String::from_utf8(out).unwrap())
}

const ROLE: &str = "kind: role\nversion: v7\nmetadata:\n  name: visitor\nspec:\n  allow:\n    logins: [visitor]\n    node_labels:\n      '*': '*'\n";

#[tokio::test]
async fn commands_against_a_mock_auth() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Arc::new(Mock::default());
    let (addr, id) = start(dir.path(), mock.clone()).await;
    let file = dir.path().join("role.yaml");
    std::fs::write(&file, ROLE).unwrap();
    let f = file.display().to_string();

    assert_eq!(tctl(&addr, &id, &["create", &f]).await.unwrap(), "role \"visitor\" has been created\n");
    let e = tctl(&addr, &id, &["create", &f]).await.unwrap_err();
    assert_eq!(e, "role \"visitor\" already exists; use -f to overwrite");
    assert_eq!(tctl(&addr, &id, &["create", "-f", &f]).await.unwrap(), "role \"visitor\" has been updated\n");

    let yaml = tctl(&addr, &id, &["get", "roles"]).await.unwrap();
    assert!(yaml.contains("name: visitor") && yaml.contains("kind: role"), "{yaml}");
    let text = tctl(&addr, &id, &["get", "role/visitor", "--format=text"]).await.unwrap();
    assert_eq!(text.lines().nth(2), Some("visitor visitor             *=*"), "{text}");
    let e = tctl(&addr, &id, &["get", "role/nobody"]).await.unwrap_err();
    assert_eq!(e, "role \"nobody\" not found");

    let out = tctl(&addr, &id, &["tokens", "add", "--type=trusted_cluster", "--ttl=5m", "--value=abcd123"]).await.unwrap();
    assert!(out.starts_with("The cluster invite token: abcd123\nThis token will expire in 5 minutes.\n"), "{out}");
    let out = tctl(&addr, &id, &["nodes", "add", "--roles=node"]).await.unwrap();
    assert!(out.contains(&format!("portcullis-node start --token=random-token --auth-server={addr} --ca-pin=sha256:abcd")), "{out}");
    let ls = tctl(&addr, &id, &["tokens", "ls"]).await.unwrap();
    assert!(ls.starts_with("Token        Type            Labels Expiry Time (UTC)\n"), "{ls}");
    assert!(ls.contains("abcd123      trusted_cluster        "), "{ls}");
    assert!(ls.contains(" UTC (4m59s)") || ls.contains(" UTC (5m0s)"), "{ls}");
    assert_eq!(tctl(&addr, &id, &["tokens", "rm", "abcd123"]).await.unwrap(), "Token abcd123 has been deleted\n");

    let out = tctl(&addr, &id, &["users", "add", "alice", "--roles=access", "--logins=root"]).await.unwrap();
    assert!(out.starts_with("User \"alice\" has been created.\n"), "{out}");
    tctl(&addr, &id, &["users", "update", "alice", "--set-roles", "access,visitor"]).await.unwrap();
    let ls = tctl(&addr, &id, &["users", "ls"]).await.unwrap();
    assert!(ls.contains("alice access,visitor"), "{ls}");
    let json = tctl(&addr, &id, &["get", "user/alice", "--format=json"]).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["spec"]["traits"]["logins"][0], "root");

    let rc = serde_json::json!({"kind": "remote_cluster", "version": "v3", "metadata": {"name": "leaf"},
        "status": {"connection": "online", "last_heartbeat": "2022-04-29T19:45:35Z"}});
    mock.resources.lock().unwrap().insert(("remote_cluster".into(), "leaf".into()), rc.to_string());
    let out = tctl(&addr, &id, &["update", "rc/leaf", "--set-labels=env=demo"]).await.unwrap();
    assert_eq!(out, "remote_cluster \"leaf\" has been updated\n");
    let yaml = tctl(&addr, &id, &["get", "rc"]).await.unwrap();
    assert!(yaml.contains("env: demo") && yaml.contains("connection: online"), "{yaml}");
    assert_eq!(tctl(&addr, &id, &["rm", "rc/leaf"]).await.unwrap(), "remote_cluster \"leaf\" has been deleted\n");

    let status = tctl(&addr, &id, &["status"]).await.unwrap();
    assert!(status.starts_with("Cluster  root\nVersion  0.1.0\nCA pin   sha256:abcd\n"), "{status}");

    let out_file = dir.path().join("alice-id.json");
    let o = out_file.display().to_string();
    let out = tctl(&addr, &id, &["auth", "sign", "--user=alice", &format!("--out={o}")]).await.unwrap();
    assert_eq!(out, format!("The credentials have been written to {o}\n"));
    let signed = Identity::load(&out_file).unwrap();
    assert_eq!((signed.name.as_str(), signed.cluster_name.as_str()), ("alice", "root"));
}

#[tokio::test]
async fn unreachable_auth_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_addr, id) = start(dir.path(), Arc::new(Mock::default())).await;
    // A port nothing listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let e = tctl(&free, &id, &["status"]).await.unwrap_err();
    assert_eq!(e, format!("the auth service is unreachable: tried {free} (connection refused)"));
    // Several auth servers: every one is named with why it failed.
    // Bound but not listening: refuses connections, and no other test can take the port.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let free2 = sock.local_addr().unwrap().to_string();
    let e = tctl(&format!("{free},{free2}"), &id, &["status"]).await.unwrap_err();
    assert_eq!(e, format!("the auth service is unreachable: tried {free} (connection refused), {free2} (connection refused)"));
}

#[tokio::test]
async fn a_dead_auth_server_in_the_list_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, id) = start(dir.path(), Arc::new(Mock::default())).await;
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let t = std::time::Instant::now();
    let out = tctl(&format!("{free},{addr}"), &id, &["status"]).await.unwrap();
    assert!(!out.is_empty());
    assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", t.elapsed());
}

/// Runs the binary, as an administrator would, with `EDITOR` set.
async fn tctl_bin(addr: &str, id: &str, editor: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tctl"))
        .args(["--auth-server", addr, "-i", id])
        .args(args)
        .env("EDITOR", editor)
        .env_remove("VISUAL")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn edit_with_editor() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Arc::new(Mock::default());
    let (addr, id) = start(dir.path(), mock.clone()).await;
    let file = dir.path().join("role.yaml");
    std::fs::write(&file, ROLE).unwrap();
    let f = file.display().to_string();
    assert!(tctl_bin(&addr, &id, "true", &["create", &f]).await.0);

    // A broken edit is reported and changes nothing.
    let (ok, _, err) = tctl_bin(&addr, &id, "sed -i s/kind:\\ role/kind:\\ [/", &["edit", "role/visitor"]).await;
    assert!(!ok);
    assert!(err.starts_with("ERROR: malformed YAML at line") && err.contains("was not changed"), "{err}");

    let (ok, out, err) = tctl_bin(&addr, &id, "sed -i s/-\\ visitor/-\\ guest/", &["edit", "role/visitor"]).await;
    assert!(ok, "{err}");
    assert_eq!(out, "role \"visitor\" has been updated\n");
    let stored = mock.resources.lock().unwrap()[&("role".to_string(), "visitor".to_string())].clone();
    assert!(stored.contains("\"guest\"") && !stored.contains("[\"visitor\"]"), "{stored}");

    let (ok, out, _) = tctl_bin(&addr, &id, "true", &["edit", "role/visitor"]).await;
    assert!(ok);
    assert_eq!(out, "role \"visitor\" was not changed\n");

    let (ok, _, err) = tctl_bin(&addr, &id, "true", &["get", "nope"]).await;
    assert!(!ok && err.starts_with("ERROR: unknown resource kind \"nope\""), "{err}");
}
