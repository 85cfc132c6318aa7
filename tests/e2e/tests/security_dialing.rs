//! Issue 11 (items 3 and 7), end to end: what a leaf's tunnel agent dials for root users.
//! Nodes are dialled where auth saw them connect from, only SSH servers are relayed to, node
//! names are unique, a user session never reaches the leaf auth, and every dial is audited.
// Test code: a panic is how it fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use portcullis_e2e::*;

const PASSWORD: &str = "root-user-password";
const ROOT: &str = "root.example.com";
const LEAF: &str = "leaf.example.com";
/// What the fake internal service answers; it must never reach a user.
const SECRET: &str = "INTERNAL-SERVICE-SECRET";

/// Starts a leaf node keeping its identity in `<leaf>/<dir>`, named `nodename`, announcing
/// `public_addr` (`{port}` stands for its SSH port) when given.
fn spawn_node(leaf: &Cluster, dir: &str, nodename: &str, public_addr: Option<&str>) -> (Proc, u16) {
    let token = leaf.token("node");
    let port = free_port();
    let cfg = leaf.dir.join(format!("{dir}.yaml"));
    let mut text = format!("version: v3\nssh_service:\n  listen_addr: 127.0.0.1:{port}\n");
    if let Some(public) = public_addr {
        text.push_str(&format!("  public_addr: {}\n", public.replace("{port}", &port.to_string())));
    }
    std::fs::write(&cfg, text).expect("node config");
    let p = Proc::spawn(
        dir,
        Command::new(bin("portcullis-node"))
            .args(["start", "--debug", "--insecure"])
            .arg(format!("--token={token}"))
            .arg(format!("--auth-server=127.0.0.1:{}", leaf.ports.auth))
            .arg("--data-dir")
            .arg(leaf.dir.join(dir))
            .arg(format!("--nodename={nodename}"))
            .arg("--labels=env=leaf")
            .arg("-c")
            .arg(&cfg),
        leaf.dir.join(format!("{dir}-{nodename}.log")),
    );
    (p, port)
}

/// Waits for a line of `p`'s log matching `want`; fails showing the log.
fn wait_log(p: &Proc, want: impl Fn(&str) -> bool) -> String {
    (0..300)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            p.log_text().lines().find(|l| want(l)).map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no such line in the log:\n{}", p.log_text()))
}

/// A plain TCP service on loopback that talks first, as an internal service might.
fn secret_service() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(format!("HTTP/1.0 200 OK\r\n\r\n{SECRET}\n").as_bytes());
        }
    });
    port
}

fn tsh_leaf(tsh: &Tsh, login: &str, node: &str, cmd: &str) -> Run {
    tsh.run(&["ssh", &format!("--cluster={LEAF}"), &format!("{login}@{node}"), cmd])
}

fn leaf_dial_event(leaf: &Cluster, node: &str, success: bool) -> serde_json::Value {
    wait_for(&format!("a tunnel.dial event for {node} (success {success})"), Duration::from_secs(15), || {
        leaf.audit_events().into_iter().find(|e| {
            e["event"] == "tunnel.dial"
                && e["success"] == success
                && e["target"].as_str().is_some_and(|t| t.starts_with(&format!("{node}:")))
        })
    })
}

#[test]
fn the_leaf_dials_only_real_ssh_nodes_and_never_its_auth_for_users() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root_dir = tmp.path().to_path_buf();
    let mut root = Cluster::start_auth(&root_dir, ROOT, &[]);
    root.start_proxy();
    let mut leaf = Cluster::start_auth_with(&root_dir, LEAF, &[], &["--insecure"]);
    leaf.start_node("leafnode", "env=leaf");
    leaf.start_agent();

    // Trust, with root `access` mapped to the leaf's `visitor`.
    let visitor = unix_login("visitor");
    let role = format!(
        "kind: role\nversion: v5\nmetadata:\n  name: visitor\nspec:\n  allow:\n    logins: [{visitor}]\n    node_labels:\n      '*': '*'\n"
    );
    leaf.create("visitor.yaml", &role, false).ok();
    root.tctl(&["users", "add", "alice", "--roles=access", &format!("--logins={visitor}")]).ok();
    root.tctl_in(&["users", "set-password", "alice"], Some(&format!("{PASSWORD}\n"))).ok();
    let token = root.token("trusted_cluster");
    let tc = format!(
        "kind: trusted_cluster\nversion: v2\nmetadata:\n  name: {ROOT}\nspec:\n  enabled: true\n  token: {token}\n  tunnel_addr: {}\n  web_proxy_addr: {}\n  role_map:\n    - remote: access\n      local: [visitor]\n",
        root.tunnel_addr(),
        root.web_addr()
    );
    leaf.create("tc.yaml", &tc, false).ok();
    let tsh = Tsh::new(&root_dir, "alice");
    tsh.login(&root.web_addr(), "alice", PASSWORD, &[]).ok();
    let ok = wait_for("a session on the leaf node through the tunnel", Duration::from_secs(40), || {
        let r = tsh_leaf(&tsh, &visitor, "leafnode", "echo via-tunnel");
        (r.code == 0).then_some(r)
    });
    assert_eq!(ok.stdout, "via-tunnel\n");
    // Every dial is audited on the leaf, with who asked from which root cluster.
    let ev = leaf_dial_event(&leaf, "leafnode", true);
    assert_eq!(ev["user"], "alice", "{ev}");
    assert_eq!(ev["cluster"], ROOT, "{ev}");

    // A node announcing an address that is not its own is dialled where it connects from.
    let (liar, liar_port) = spawn_node(&leaf, "liar", "liar", Some("10.255.255.1:{port}"));
    wait_log(&liar, |l| l.contains("public address") && l.contains("10.255.255.1") && l.contains("was ignored"));
    let r = tsh_leaf(&tsh, &visitor, "liar", "echo dialled-at-observed");
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "dialled-at-observed\n");
    let ev = leaf_dial_event(&leaf, "liar", true);
    assert_eq!(ev["addr"], format!("127.0.0.1:{liar_port}"), "{ev}");

    // A node pointing at another service of its host is never relayed to: neither a
    // service that talks first nor the (silent, TLS) leaf auth port.
    let secret_port = secret_service();
    let (_evil, _) = spawn_node(&leaf, "evil-node", "evil-node", Some(&format!("127.0.0.1:{secret_port}")));
    let auth_port = leaf.ports.auth;
    let (_evil_auth, _) = spawn_node(&leaf, "evil-auth", "evil-auth", Some(&format!("127.0.0.1:{auth_port}")));
    for (node, addr) in [("evil-node", secret_port), ("evil-auth", auth_port)] {
        let r = wait_for(&format!("{node} registered and refused"), Duration::from_secs(40), || {
            let r = tsh_leaf(&tsh, &visitor, node, "echo should-not-run");
            r.stderr.contains("not an SSH server").then_some(r)
        });
        assert_ne!(r.code, 0);
        assert!(r.stderr.contains(&format!("refused to relay to {node}")), "{}", r.stderr);
        assert!(r.stderr.contains(&format!("127.0.0.1:{addr}")), "{}", r.stderr);
        assert!(!r.stdout.contains(SECRET) && !r.stderr.contains(SECRET), "the service's answer was relayed: {r:?}");
        let ev = leaf_dial_event(&leaf, node, false);
        assert!(ev["error"].as_str().unwrap_or("").contains("not an SSH server"), "{ev}");
        assert_eq!(ev["user"], "alice", "{ev}");
    }

    // A second host claiming the real node's name is refused (at join), and so is a host
    // that joined under its own name and then announces the real node's name (heartbeat);
    // the real node still works.
    let (mut twin, _) = spawn_node(&leaf, "twin", "leafnode", None);
    let why = wait_log(&twin, |l| l.contains("\"leafnode\"") && l.contains("held by"));
    assert!(why.contains("host id") || why.contains("host "), "{why}");
    twin.stop();
    let (mut renamed, _) = spawn_node(&leaf, "renamed", "renamed", None);
    wait_log(&renamed, |l| l.contains("joined the cluster"));
    renamed.stop();
    let (mut renamed, _) = spawn_node(&leaf, "renamed", "leafnode", None);
    let why = wait_log(&renamed, |l| l.contains("heartbeat to the auth service failed"));
    assert!(
        why.contains("node name \"leafnode\" is not the name host") && why.contains("its certificate says renamed"),
        "{why}"
    );
    renamed.stop();
    for _ in 0..3 {
        let r = tsh_leaf(&tsh, &visitor, "leafnode", "echo still-the-real-one");
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(r.stdout, "still-the-real-one\n");
    }

    // The leaf auth is no target for a user session: the proxy subsystem OpenSSH and tsh use.
    let (key, cert) = tsh.key_paths("127.0.0.1", "alice");
    let known_hosts = tsh.home.join("keys/127.0.0.1/cas/known_hosts");
    let ssh_config = root_dir.join("ssh_config");
    std::fs::write(
        &ssh_config,
        format!(
            "Host *\n  UserKnownHostsFile {}\n  CertificateFile {}\n  IdentityFile {}\n  StrictHostKeyChecking yes\n  BatchMode yes\n",
            known_hosts.display(),
            cert.display(),
            key.display()
        ),
    )
    .expect("ssh config");
    let r = run_cmd(
        Command::new("ssh")
            .arg("-F")
            .arg(&ssh_config)
            .arg("-p")
            .arg(root.ports.ssh.to_string())
            .arg("alice@127.0.0.1")
            .arg("-s")
            .arg(format!("proxy:@auth@{LEAF}")),
        None,
    );
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains(&format!("cannot reach \"@auth\" in cluster \"{LEAF}\": it is the cluster's auth service")),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty(), "nothing of the auth service reaches the user: {:?}", r.stdout);

    // And the ordinary path still works afterwards.
    let ok = tsh_leaf(&tsh, &visitor, "leafnode", "echo still-fine").ok();
    assert_eq!(ok.stdout, "still-fine\n");

    // The refusal is in the root's audit log, written by the root proxy (last: it needs the
    // audit policy to let proxies write `tunnel.dial`).
    let ev = (0..150)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            root.audit_events().into_iter().find(|e| e["event"] == "tunnel.dial" && e["target"] == "@auth")
        })
        .unwrap_or_else(|| {
            let log = std::fs::read_to_string(root.dir.join("proxy.log")).unwrap_or_default();
            let why: Vec<&str> = log.lines().filter(|l| l.contains("tunnel.dial")).collect();
            panic!("the @auth refusal is not in the root's audit log; the proxy said: {why:?}")
        });
    assert_eq!(ev["success"], false, "{ev}");
    assert_eq!(ev["user"], "alice", "{ev}");
    assert_eq!(ev["cluster"], LEAF, "{ev}");

    let _ = (&mut root, &mut leaf);
}
