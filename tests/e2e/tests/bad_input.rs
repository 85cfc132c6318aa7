//! Issue 2, bad input: every refusal is clear, nothing panics, nothing is lost.
// Test code: a panic is how it fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use portcullis_e2e::*;
use portcullis_pki::ssh::{SshCa, UserCertRequest};
use portcullis_pki::x509::{self, TlsCa, TlsCertRequest};
use portcullis_pki::{Identity, Secret};
use portcullis_proto::auth::StatusRequest;
use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_rpc::{ClientTls, Trust};

#[test]
fn tctl_refuses_bad_resources_and_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start_auth(tmp.path(), "bad.example.com", &[]);
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(&bad, "kind: role\nversion: v7\nmetadata:\n  name: ok-role\n---\nkind: role\nmetadata: [unclosed\n").unwrap();
    let out = c.tctl(&["create", bad.to_str().unwrap()]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("line"), "position reported: {}", out.stderr);
    let get = c.tctl(&["get", "role/ok-role"]);
    assert_ne!(get.code, 0, "nothing of a bad file is stored: {}", get.stdout);

    let out = c.tctl(&["get", "bogus"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("bogus") && out.stderr.contains("role"), "{}", out.stderr);

    let unknown_field = tmp.path().join("typo.yaml");
    std::fs::write(&unknown_field, "kind: role\nversion: v7\nmetadata:\n  name: typo\nspec:\n  alow:\n    logins: [x]\n").unwrap();
    let out = c.tctl(&["create", unknown_field.to_str().unwrap()]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("alow"), "{}", out.stderr);

    // Existing resources need -f.
    let good = tmp.path().join("good.yaml");
    std::fs::write(&good, "kind: role\nversion: v7\nmetadata:\n  name: twice\nspec: {}\n").unwrap();
    c.tctl(&["create", good.to_str().unwrap()]).ok();
    let again = c.tctl(&["create", good.to_str().unwrap()]);
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    c.tctl(&["create", "-f", good.to_str().unwrap()]).ok();
}

#[test]
fn join_tokens_unknown_and_expired_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start_auth(tmp.path(), "tokens.example.com", &[]);
    let start_node = |token: &str, name: &str| -> Proc {
        Proc::spawn(
            name,
            Command::new(bin("portcullis-node"))
                .args(["start", "--insecure"])
                .arg(format!("--token={token}"))
                .arg(format!("--auth-server=127.0.0.1:{}", c.ports.auth))
                .arg("--data-dir")
                .arg(tmp.path().join(name))
                .arg(format!("--nodename={name}"))
                .arg("-c")
                .arg({
                    let p = tmp.path().join(format!("{name}.yaml"));
                    std::fs::write(&p, format!("ssh_service:\n  listen_addr: 127.0.0.1:{}\n", free_port())).unwrap();
                    p
                }),
            tmp.path().join(format!("{name}.log")),
        )
    };
    let mut p = start_node("no-such-token-value", "n1");
    let code = p.wait_exit(Duration::from_secs(30)).expect("node with a bad token exits");
    assert_ne!(code, 0);
    let log = p.log_text();
    assert!(log.contains("not recognised"), "{log}");
    assert!(!log.contains("no-such-token-value"), "the token is not logged: {log}");

    let out = c.tctl(&["tokens", "add", "--type=node", "--ttl=1s", "--format=json"]).ok();
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_secs(2));
    let mut p = start_node(&token, "n2");
    assert_ne!(p.wait_exit(Duration::from_secs(30)).expect("exits"), 0);
    assert!(p.log_text().contains("expired"), "{}", p.log_text());

    // A proxy token cannot join a node.
    let proxy_token = c.token("proxy");
    let mut p = start_node(&proxy_token, "n3");
    assert_ne!(p.wait_exit(Duration::from_secs(30)).expect("exits"), 0);
    assert!(p.log_text().contains("cannot be used to join as node"), "{}", p.log_text());
    // The auth service is still healthy.
    c.tctl(&["status"]).ok();
}

#[test]
fn grpc_requires_a_certificate_of_this_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start_auth(tmp.path(), "grpc.example.com", &[]);
    let addr = format!("127.0.0.1:{}", c.ports.auth);
    let admin = Identity::load(&tmp.path().join("grpc.example.com/auth/admin-identity.json")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        portcullis_rpc::install_crypto_provider();
        // No client certificate: the connection works, the call is refused.
        let tls = ClientTls {
            trust: Trust::Cas(admin.tls_ca_pems.clone()),
            identity: None,
            server_name: x509::AUTH_SERVER_NAME.into(),
        };
        let ch = portcullis_rpc::connect(&addr, &tls).await.expect("connect without cert");
        let err = AuthClient::new(ch).status(StatusRequest {}).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
        assert!(err.message().contains("client certificate"), "{}", err.message());

        // A certificate from a foreign CA is refused during the handshake or the call.
        let foreign = TlsCa::generate("grpc.example.com").unwrap();
        let key = x509::generate_key().unwrap();
        let cert = foreign
            .issue(&TlsCertRequest {
                public_key_der: x509::public_key_der(&key),
                name: "admin".into(),
                system_roles: vec!["Admin".into()],
                ttl: Duration::from_secs(600),
                ..Default::default()
            })
            .unwrap();
        let tls = ClientTls {
            trust: Trust::Cas(admin.tls_ca_pems.clone()),
            identity: Some((cert, Secret::new(key.serialize_pem()))),
            server_name: x509::AUTH_SERVER_NAME.into(),
        };
        let refused = match portcullis_rpc::connect(&addr, &tls).await {
            Err(_) => true,
            Ok(ch) => AuthClient::new(ch).status(StatusRequest {}).await.is_err(),
        };
        assert!(refused, "a forged admin certificate must not work");

        // The real admin identity works.
        let ch = portcullis_rpc::connect(&addr, &ClientTls::from_identity(&admin, x509::AUTH_SERVER_NAME)).await.unwrap();
        let st = AuthClient::new(ch).status(StatusRequest {}).await.unwrap().into_inner();
        assert_eq!(st.cluster_name, "grpc.example.com");
    });
}

#[test]
fn node_refuses_user_certificates_from_an_untrusted_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::start_auth(tmp.path(), "ca.example.com", &[]);
    let port = c.start_node("lonely", "env=dev");
    let login = test_login();
    // A user certificate made by a CA the cluster never heard of.
    let rogue = SshCa::generate().unwrap();
    let key = portcullis_pki::ssh::generate_key().unwrap();
    let cert = rogue
        .sign_user_cert(&UserCertRequest {
            public_key: key.public_key().clone(),
            username: "mallory".into(),
            principals: vec![login.clone()],
            ttl: Duration::from_secs(600),
            roles: vec!["access".into()],
            traits: Default::default(),
            route_to_cluster: "ca.example.com".into(),
            permit_port_forwarding: false,
            permit_agent_forwarding: false,
        })
        .unwrap();
    let key_path = tmp.path().join("rogue");
    let cert_path = tmp.path().join("rogue-cert.pub");
    portcullis_pki::identity::write_private(&key_path, portcullis_pki::ssh::private_key_openssh(&key).unwrap().as_bytes()).unwrap();
    std::fs::write(&cert_path, cert.to_openssh().unwrap()).unwrap();
    let out = run_cmd(
        Command::new("ssh")
            .args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
            .arg("-o")
            .arg(format!("CertificateFile={}", cert_path.display()))
            .arg("-i")
            .arg(&key_path)
            .arg("-p")
            .arg(port.to_string())
            .arg(format!("{login}@127.0.0.1"))
            .arg("echo should-not-run"),
        None,
    );
    assert_ne!(out.code, 0);
    assert!(!out.stdout.contains("should-not-run"));
    assert!(out.stderr.contains("Permission denied"), "{}", out.stderr);
    let audited = wait_for("untrusted CA refusal in the audit log", Duration::from_secs(10), || {
        c.audit_events().into_iter().find(|e| e["event"] == "auth" && e["user"] == "mallory")
    });
    assert!(audited["error"].as_str().unwrap_or("").contains("does not trust"), "{audited}");
    let _ = &mut c;
}
