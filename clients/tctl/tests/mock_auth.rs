//! Runs tctl commands against an in-process stand-in for the auth service over real mutual
//! TLS, to check the wiring (connection, requests, output); the real auth is tested end to end.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use portcullis_pki::x509::{AUTH_SERVER_NAME, TlsCa, TlsCertRequest, system_role};
use portcullis_pki::{Identity, Secret};
use portcullis_proto::auth::auth_server::{Auth, AuthServer};
use portcullis_proto::auth::*;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

#[derive(Default)]
struct Mock {
    resources: Mutex<BTreeMap<(String, String), String>>,
    passwords: Mutex<BTreeMap<String, String>>,
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in the mock"))
}

/// The gRPC service; a newtype because the trait and `Arc` are both foreign.
struct Svc(Arc<Mock>);

impl std::ops::Deref for Svc {
    type Target = Mock;
    fn deref(&self) -> &Mock {
        &self.0
    }
}

#[tonic::async_trait]
impl Auth for Svc {
    async fn join(&self, _: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        unimplemented()
    }
    async fn ping(&self, _: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        unimplemented()
    }
    async fn authenticate_user(&self, _: Request<AuthenticateUserRequest>) -> Result<Response<UserCerts>, Status> {
        unimplemented()
    }
    async fn generate_user_certs(&self, r: Request<GenerateUserCertsRequest>) -> Result<Response<UserCerts>, Status> {
        let r = r.into_inner();
        Ok(Response::new(UserCerts {
            username: r.username,
            ssh_cert: "ssh-cert".into(),
            tls_cert_pem: "tls-cert".into(),
            cas: Some(CertAuthorities { tls_ca_pem: vec!["ca".into()], ..Default::default() }),
            cluster_name: "root".into(),
            ..Default::default()
        }))
    }
    async fn set_password(&self, r: Request<SetPasswordRequest>) -> Result<Response<Empty>, Status> {
        let r = r.into_inner();
        self.passwords.lock().unwrap().insert(r.username, r.password);
        Ok(Response::new(Empty {}))
    }
    async fn upsert_resource(&self, r: Request<UpsertResourceRequest>) -> Result<Response<UpsertResourceResponse>, Status> {
        let r = r.into_inner();
        let v: serde_json::Value = serde_json::from_str(&r.resource_json).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        let name = v["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let mut res = self.resources.lock().unwrap();
        let key = (kind.clone(), name.clone());
        if r.create_only && res.contains_key(&key) {
            return Err(Status::already_exists(format!("{kind} {name:?} already exists")));
        }
        let created = res.insert(key, r.resource_json).is_none();
        Ok(Response::new(UpsertResourceResponse { kind, name, created }))
    }
    async fn get_resources(&self, r: Request<GetResourcesRequest>) -> Result<Response<GetResourcesResponse>, Status> {
        let r = r.into_inner();
        let res = self.resources.lock().unwrap();
        let out: Vec<String> = res
            .iter()
            .filter(|((k, n), _)| *k == r.kind && (r.name.is_empty() || *n == r.name))
            .map(|(_, v)| v.clone())
            .collect();
        if !r.name.is_empty() && out.is_empty() {
            return Err(Status::not_found(format!("{} \"{}\" not found", r.kind, r.name)));
        }
        Ok(Response::new(GetResourcesResponse { resources_json: out }))
    }
    async fn delete_resource(&self, r: Request<DeleteResourceRequest>) -> Result<Response<Empty>, Status> {
        let r = r.into_inner();
        match self.resources.lock().unwrap().remove(&(r.kind.clone(), r.name.clone())) {
            Some(_) => Ok(Response::new(Empty {})),
            None => Err(Status::not_found(format!("{} \"{}\" not found", r.kind, r.name))),
        }
    }
    async fn create_token(&self, r: Request<CreateTokenRequest>) -> Result<Response<CreateTokenResponse>, Status> {
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
        self.resources.lock().unwrap().insert(("token".into(), token.clone()), json.to_string());
        Ok(Response::new(CreateTokenResponse { token, expires_unix: expires }))
    }
    async fn heartbeat(&self, _: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        unimplemented()
    }
    async fn list_nodes(&self, _: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        unimplemented()
    }
    async fn resolve_node(&self, _: Request<ResolveNodeRequest>) -> Result<Response<ResolveNodeResponse>, Status> {
        unimplemented()
    }
    async fn authorize_ssh(&self, _: Request<AuthorizeSshRequest>) -> Result<Response<AuthorizeSshResponse>, Status> {
        unimplemented()
    }
    async fn emit_audit_event(&self, _: Request<AuditEventRequest>) -> Result<Response<Empty>, Status> {
        unimplemented()
    }
    async fn search_audit_events(&self, _: Request<SearchAuditEventsRequest>) -> Result<Response<SearchAuditEventsResponse>, Status> {
        unimplemented()
    }
    async fn status(&self, r: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        // Like the real service, only admins may ask.
        if r.peer_certs().is_none() {
            return Err(Status::unauthenticated("no client certificate"));
        }
        Ok(Response::new(StatusResponse {
            cluster_name: "root".into(),
            version: "0.1.0".into(),
            ca_fingerprints: vec![],
            nodes: 0,
            users: 0,
            ca_pin: "sha256:abcd".into(),
        }))
    }
    async fn validate_trusted_cluster(
        &self,
        _: Request<ValidateTrustedClusterRequest>,
    ) -> Result<Response<ValidateTrustedClusterResponse>, Status> {
        Err(Status::unimplemented("not used by tctl"))
    }
    async fn report_tunnels(&self, _: Request<ReportTunnelsRequest>) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("not used by tctl"))
    }
    async fn list_remote_clusters(
        &self,
        _: Request<ListRemoteClustersRequest>,
    ) -> Result<Response<ListRemoteClustersResponse>, Status> {
        Err(Status::unimplemented("not used by tctl"))
    }
    async fn list_trusted_clusters(
        &self,
        _: Request<ListTrustedClustersRequest>,
    ) -> Result<Response<ListTrustedClustersResponse>, Status> {
        Err(Status::unimplemented("not used by tctl"))
    }
}

fn issue(ca: &TlsCa, name: &str, role: &str, dns: &[&str]) -> (String, String) {
    let key = portcullis_pki::x509::generate_key().unwrap();
    let cert = ca
        .issue(&TlsCertRequest {
            public_key_der: portcullis_pki::x509::public_key_der(&key),
            name: name.into(),
            system_roles: vec![role.into()],
            dns_names: dns.iter().map(|d| d.to_string()).collect(),
            ttl: Duration::from_secs(3600),
            ..Default::default()
        })
        .unwrap();
    (cert, key.serialize_pem())
}

/// Starts the mock; returns its address and an admin identity file for it.
async fn start(dir: &Path, mock: Arc<Mock>) -> (String, String) {
    portcullis_rpc::install_crypto_provider();
    let ca = TlsCa::generate("root").unwrap();
    let ca_pems = vec![ca.cert_pem().to_string()];
    let (server_cert, server_key) = issue(&ca, "auth", system_role::AUTH, &[AUTH_SERVER_NAME]);
    let (admin_cert, admin_key) = issue(&ca, "admin", system_role::ADMIN, &[]);
    let id = Identity::new(
        "root".into(), "admin".into(), String::new(), system_role::ADMIN.into(), admin_cert,
        Secret::new(admin_key), ca_pems.clone(), Secret::new(String::new()), String::new(),
    );
    let id_path = dir.join("admin.json");
    id.save(&id_path).unwrap();
    let tls = portcullis_rpc::server::server_tls(&server_cert, &server_key, &ca_pems, &ca_pems);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(AuthServer::new(Svc(mock)))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
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
