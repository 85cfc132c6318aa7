//! Issue 11 (items 5 and 8), end to end with the real binaries: an invite token registers one
//! DNS-named leaf, a leaf's host CA is scoped to that leaf in known_hosts and in tsh's own
//! checks, and a user whose roles grant no logins can log in but not open a session.
// Test code: a panic is how it fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use portcullis_e2e::*;

const ROOT: &str = "root.example.com";
const LEAF: &str = "leaf.example.com";
const PASSWORD: &str = "security-trust-password";

/// `POST /webapi/trustedclusters/validate` over HTTPS (self-signed: not verified) as a
/// token holder would send it by hand; returns (status, body).
fn post_validate(web: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let cfg = rustls::ClientConfig::builder_with_provider(portcullis_rpc::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(portcullis_pki::verify::InsecureAcceptAnyServer::dangerously_new()))
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("server name");
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).expect("TLS client");
    let mut tcp = TcpStream::connect(web).expect("connect to the proxy");
    tcp.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    let payload = body.to_string();
    let req = format!(
        "POST /webapi/trustedclusters/validate HTTP/1.1\r\nHost: {web}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    );
    tls.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    // The server closes after answering (Connection: close); a TLS close without
    // close_notify still leaves the whole answer in `raw`.
    let _ = tls.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let status: u16 = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {text:?}"));
    let (_, rest) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no body in {text:?}"));
    // The body may come chunked; the JSON object is what lies between the outer braces.
    let json = match (rest.find('{'), rest.rfind('}')) {
        (Some(a), Some(b)) => &rest[a..=b],
        _ => panic!("no JSON in {rest:?}"),
    };
    (status, serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}")))
}

/// An ed25519 key made by ssh-keygen; returns the public key line.
fn keygen(path: &Path) -> String {
    run_cmd(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"]).arg(path), None).ok();
    let line = std::fs::read_to_string(path.with_extension("pub")).expect("public key");
    line.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

fn validate_body(token: &str, name: &str, tls_ca: &str, user_ca: &str, host_ca: &str) -> serde_json::Value {
    serde_json::json!({
        "token": token,
        "cluster_name": name,
        "cas": {"tls_ca_pem": [tls_ca], "ssh_user_ca": [user_ca], "ssh_host_ca": [host_ca]},
    })
}

fn invite_token(root: &Cluster) -> String {
    root.token("trusted_cluster")
}

#[test]
fn invite_tokens_leaf_host_cas_and_no_login_users() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let mut root = Cluster::start_auth(dir, ROOT, &[]);
    root.start_proxy();
    root.start_node("rootnode", "env=root");
    let login = unix_login("sectrust");

    // The attacker's CAs, made with ssh-keygen (and a TLS CA, which validation requires).
    let keys = dir.join("attacker");
    std::fs::create_dir_all(&keys).expect("keys dir");
    let leaf_host_ca = keygen(&keys.join("host_ca"));
    let leaf_user_ca = keygen(&keys.join("user_ca"));
    let tls_ca = portcullis_pki::x509::TlsCa::generate(LEAF).expect("TLS CA");
    let body = |token: &str, name: &str| validate_body(token, name, tls_ca.cert_pem(), &leaf_user_ca, &leaf_host_ca);

    // Names that are no DNS names, and the root's own name, are refused with the rule.
    let token = invite_token(&root);
    let web = root.web_addr();
    let (status, v) = post_validate(&web, &body(&token, "evil/../x"));
    assert_eq!(status, 400, "{v}");
    let err = v["error"].as_str().unwrap_or_default();
    assert!(err.contains("invalid cluster name \"evil/../x\"") && err.contains("'/' is not allowed"), "{v}");
    let (status, v) = post_validate(&web, &body(&token, ROOT));
    assert_eq!(status, 403, "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("that is the root cluster's name"), "{v}");

    // The token registers one name; the same leaf may validate again, a second name may not.
    let (status, v) = post_validate(&web, &body(&token, LEAF));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["cluster_name"], ROOT);
    let (status, _) = post_validate(&web, &body(&token, LEAF));
    assert_eq!(status, 200, "re-validation by the same leaf with the same CAs");
    let (status, v) = post_validate(&web, &body(&token, "evil-a"));
    assert_eq!(status, 403, "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains(&format!("already used by leaf cluster \"{LEAF}\"")), "{v}");
    let rc = root.tctl(&["get", "rc", "--format=json"]).ok().stdout;
    assert!(rc.contains(LEAF) && !rc.contains("evil"), "{rc}");
    let refusals = root.audit_events().into_iter().filter(|e| e["event"] == "trusted_cluster.create" && e["success"] == false).count();
    assert!(refusals >= 3, "refusals are audited on the root");

    // After login the leaf's host CA is scoped to *.<leaf>: no `@cert-authority *` line.
    root.tctl(&["users", "add", "alice", "--roles=access", &format!("--logins={login}")]).ok();
    root.tctl_in(&["users", "set-password", "alice"], Some(&format!("{PASSWORD}\n"))).ok();
    let tsh = Tsh::new(dir, "alice");
    tsh.login(&web, "alice", PASSWORD, &[]).ok();
    let known_hosts = tsh.home.join("keys/127.0.0.1/cas/known_hosts");
    let known = std::fs::read_to_string(&known_hosts).expect("known_hosts");
    assert!(!known.contains(&format!("@cert-authority * {leaf_host_ca}")), "{known}");
    assert!(known.contains(&format!("@cert-authority *.{LEAF} {leaf_host_ca}")), "{known}");
    let ok = tsh.run(&["ssh", &format!("{login}@rootnode"), "echo", "real"]).ok();
    assert_eq!(ok.stdout, "real\n");

    let (key, cert) = tsh.key_paths("127.0.0.1", "alice");
    let ssh_cfg = dir.join("ssh_config");
    std::fs::write(
        &ssh_cfg,
        format!(
            "Host *\n  IdentityFile {}\n  CertificateFile {}\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n  BatchMode yes\n  IdentitiesOnly yes\n",
            key.display(),
            cert.display(),
            known_hosts.display()
        ),
    )
    .expect("ssh config");
    let proxy_ssh = root.ports.ssh;
    let openssh = |port: u16| {
        run_cmd(
            Command::new("ssh")
                .arg("-F")
                .arg(&ssh_cfg)
                .arg("-J")
                .arg(format!("alice@127.0.0.1:{proxy_ssh}"))
                .args(["-p", &port.to_string(), &format!("{login}@rootnode"), "echo", "fooled"]),
            None,
        )
    };
    let (_, node_port) = root.nodes["rootnode"];
    let sane = openssh(node_port);
    assert_eq!(sane.code, 0, "OpenSSH with tsh's files reaches the real root node: {sane:?}");

    // A user whose roles grant no logins (the preset auditor) logs in; sessions are refused.
    root.tctl(&["users", "add", "audrey", "--roles=auditor"]).ok();
    root.tctl_in(&["users", "set-password", "audrey"], Some(&format!("{PASSWORD}\n"))).ok();
    let auditor = Tsh::new(dir, "audrey");
    let out = auditor.login(&web, "audrey", PASSWORD, &[]).ok();
    assert!(out.stdout.contains("audrey"), "{}", out.stdout);
    let (_, cert) = auditor.key_paths("127.0.0.1", "audrey");
    let listing = run_cmd(Command::new("ssh-keygen").arg("-L").arg("-f").arg(&cert), None).ok().stdout;
    assert!(listing.contains("-teleport-nologin-"), "one placeholder principal, never none: {listing}");
    let out = auditor.run(&["ssh", &format!("{login}@rootnode"), "true"]);
    assert_ne!(out.code, 0);
    // The reason comes from /webapi/ssh/authorize, which tsh asks with its client certificate.
    assert!(
        out.stderr.starts_with("ERROR: access denied: ")
            && out.stderr.contains(&format!("login \"{login}\" is not allowed by roles [auditor]")),
        "{}",
        out.stderr
    );
    let placeholder = listing
        .split_whitespace()
        .find(|w| w.starts_with("-teleport-nologin-"))
        .expect("placeholder principal")
        .to_string();
    let out = auditor.run(&["ssh", &format!("--login={placeholder}"), "rootnode", "true"]);
    assert_ne!(out.code, 0, "the placeholder is no login: {out:?}");
    assert!(out.stderr.starts_with("ERROR: access denied: ") && out.stderr.contains("is not allowed"), "{}", out.stderr);

    // The root node now presents a host certificate for its own names signed by the leaf's
    // CA (ssh-keygen): neither tsh nor OpenSSH with tsh's known_hosts accepts it.
    let node_dir = root.dir.join("rootnode");
    let id_path = node_dir.join("node-identity.json");
    let (mut node, _) = root.nodes.remove("rootnode").expect("rootnode");
    node.stop();
    let mut id: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&id_path).expect("identity")).expect("identity JSON");
    let host_key = keys.join("rootnode_key");
    write_private(&host_key, id["ssh_private_key"].as_str().expect("ssh_private_key"));
    let pubkey = run_cmd(Command::new("ssh-keygen").arg("-y").arg("-f").arg(&host_key), None).ok().stdout;
    std::fs::write(host_key.with_extension("pub"), &pubkey).expect("host public key");
    let host_id = id["name"].as_str().expect("host id").to_string();
    let principals = format!("rootnode,rootnode.{ROOT},{host_id},{host_id}.{ROOT}");
    run_cmd(
        Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(keys.join("host_ca"))
            .args(["-I", "fake-rootnode", "-h", "-n", &principals, "-V", "-5m:+1h"])
            .arg(host_key.with_extension("pub")),
        None,
    )
    .ok();
    let fake_cert = std::fs::read_to_string(keys.join("rootnode_key-cert.pub")).expect("fake host cert");
    id["ssh_cert"] = serde_json::Value::String(fake_cert.trim().to_string());
    write_private(&id_path, &serde_json::to_string_pretty(&id).expect("JSON"));
    let node_cfg = root.dir.join("rootnode.yaml");
    let _fake_node = Proc::spawn(
        "rootnode-fake",
        Command::new(bin("portcullis-node"))
            .args(["start", "--debug", "--insecure"])
            .arg(format!("--auth-server=127.0.0.1:{}", root.ports.auth))
            .arg("--data-dir")
            .arg(&node_dir)
            .arg("--nodename=rootnode")
            .arg("--labels=env=root")
            .arg("-c")
            .arg(&node_cfg),
        root.dir.join("rootnode-fake.log"),
    );
    wait_port(node_port);
    let out = tsh.run(&["ssh", &format!("{login}@rootnode"), "echo", "fooled"]);
    assert_ne!(out.code, 0, "a leaf-signed certificate passed for a root node: {out:?}");
    assert!(!out.stdout.contains("fooled"));
    assert!(
        out.stderr.contains("refusing to connect to the node")
            && out.stderr.contains(&format!("only the host CA of cluster \"{ROOT}\" is accepted")),
        "{}",
        out.stderr
    );
    let out = openssh(node_port);
    assert_ne!(out.code, 0, "OpenSSH accepted a leaf-signed certificate for a root node: {out:?}");
    assert!(!out.stdout.contains("fooled"));
    assert!(out.stderr.contains("Host key verification failed"), "{}", out.stderr);

}

/// Writes `text` to `path` readable by its owner only (node identity, private keys).
fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).expect("private file");
    f.write_all(text.as_bytes()).expect("write");
}

/// A real leaf: `tsh ssh --cluster=<leaf>` checks the leaf node against the leaf's host CA,
/// and OpenSSH with tsh's known_hosts reaches it only under its `<node>.<leaf>` name
/// (HostKeyAlias, as the README shows), never as a bare name vouched for by the leaf CA.
#[test]
fn leaf_nodes_are_checked_against_the_leaf_host_ca() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let mut root = Cluster::start_auth(dir, ROOT, &[]);
    root.start_proxy();
    let mut leaf = Cluster::start_auth_with(dir, LEAF, &[], &["--insecure"]);
    leaf.start_proxy();
    let leaf_port = leaf.start_node("leafnode", "env=leaf");
    leaf.start_agent();
    let login = unix_login("sectrust");
    leaf.create(
        "visitor.yaml",
        &format!("kind: role\nversion: v7\nmetadata:\n  name: visitor\nspec:\n  allow:\n    logins: [{login}]\n    node_labels: {{'*': '*'}}\n"),
        false,
    )
    .ok();
    let tc = format!(
        "kind: trusted_cluster\nversion: v2\nmetadata:\n  name: {ROOT}\nspec:\n  enabled: true\n  token: {}\n  tunnel_addr: {}\n  web_proxy_addr: {}\n  role_map:\n    - remote: access\n      local: [visitor]\n",
        invite_token(&root),
        root.tunnel_addr(),
        root.web_addr()
    );
    leaf.create("tc.yaml", &tc, false).ok();
    root.tctl(&["users", "add", "alice", "--roles=access", &format!("--logins={login}")]).ok();
    root.tctl_in(&["users", "set-password", "alice"], Some(&format!("{PASSWORD}\n"))).ok();

    // `tsh login <leaf>`: certificates routed to the leaf, so OpenSSH's direct-tcpip goes there.
    let tsh = Tsh::new(dir, "alice");
    tsh.login(&root.web_addr(), "alice", PASSWORD, &[LEAF]).ok();
    let ssh = wait_for("tsh ssh --cluster=leaf", Duration::from_secs(40), || {
        let r = tsh.run(&["ssh", &format!("--cluster={LEAF}"), &format!("{login}@leafnode"), "echo", "leaf-ok"]);
        (r.code == 0).then_some(r)
    });
    assert_eq!(ssh.stdout, "leaf-ok\n");

    let known_hosts = tsh.home.join("keys/127.0.0.1/cas/known_hosts");
    let (key, cert) = tsh.key_paths("127.0.0.1", "alice");
    let ssh_cfg = dir.join("ssh_config");
    std::fs::write(
        &ssh_cfg,
        format!(
            "Host *\n  IdentityFile {}\n  CertificateFile {}\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n  BatchMode yes\n  IdentitiesOnly yes\n",
            key.display(),
            cert.display(),
            known_hosts.display()
        ),
    )
    .expect("ssh config");
    let openssh = |alias: Option<&str>| {
        let mut cmd = Command::new("ssh");
        cmd.arg("-F").arg(&ssh_cfg).arg("-J").arg(format!("alice@127.0.0.1:{}", root.ports.ssh));
        if let Some(a) = alias {
            cmd.arg("-o").arg(format!("HostKeyAlias={a}"));
        }
        cmd.args(["-p", &leaf_port.to_string(), &format!("{login}@leafnode"), "echo", "openssh-leaf"]);
        run_cmd(&mut cmd, None)
    };
    let bare = openssh(None);
    assert_ne!(bare.code, 0, "the leaf CA vouched for a bare name: {bare:?}");
    assert!(bare.stderr.contains("Host key verification failed"), "{}", bare.stderr);
    let scoped = openssh(Some(&format!("leafnode.{LEAF}")));
    assert_eq!(scoped.code, 0, "{scoped:?}");
    assert_eq!(scoped.stdout, "openssh-leaf\n");
}
