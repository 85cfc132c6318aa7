//! Trusted clusters end to end: the walk-throughs of Teleport's trusted-cluster guides (the
//! newest and an older one) with the real binaries.
// Test code: a panic is how it fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use portcullis_e2e::*;

const PASSWORD: &str = "root-user-password";
const ROOT: &str = "root.example.com";
const LEAF: &str = "leaf.example.com";

struct Pair {
    _tmp: tempfile::TempDir,
    root_dir: std::path::PathBuf,
    root: Cluster,
    leaf: Cluster,
}

/// A root (auth, proxy) and a leaf (auth --insecure, proxy, agent, nodes) with no trust yet.
fn pair(root_tokens: &[&str], leaf_nodes: &[(&str, &str)]) -> Pair {
    let tmp = tempfile::tempdir().expect("tmp");
    let root_dir = tmp.path().to_path_buf();
    let mut root = Cluster::start_auth(&root_dir, ROOT, root_tokens);
    root.start_proxy();
    // --insecure: the root proxy's HTTPS certificate is self-signed in tests.
    let mut leaf = Cluster::start_auth_with(&root_dir, LEAF, &[], &["--insecure"]);
    leaf.start_proxy();
    for (name, labels) in leaf_nodes {
        leaf.start_node(name, labels);
    }
    leaf.start_agent();
    Pair { _tmp: tmp, root_dir, root, leaf }
}

fn trusted_cluster_yaml(version: &str, token: &str, root: &Cluster, role_map: &str) -> String {
    format!(
        "kind: trusted_cluster\nversion: {version}\nmetadata:\n  name: {ROOT}\nspec:\n  enabled: true\n  token: {token}\n  tunnel_addr: {}\n  web_proxy_addr: {}\n  role_map:\n{role_map}",
        root.tunnel_addr(),
        root.web_addr()
    )
}

fn invite_token(root: &Cluster) -> String {
    let out = root.tctl(&["tokens", "add", "--type=trusted_cluster", "--ttl=5m"]).ok();
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("The cluster invite token: "))
        .unwrap_or_else(|| panic!("no invite token line in {}", out.stdout));
    line.trim_start_matches("The cluster invite token: ").trim().to_string()
}

/// `tsh clusters` rows as (name, status, type).
fn clusters(tsh: &Tsh) -> Vec<(String, String, String)> {
    let out = tsh.run(&["clusters", "-f", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    v.as_array()
        .expect("array")
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("cluster_name"), s("status"), s("cluster_type"))
        })
        .collect()
}

fn wait_leaf_online(tsh: &Tsh) {
    wait_for("leaf online in tsh clusters", Duration::from_secs(40), || {
        clusters(tsh).iter().any(|(n, s, _)| n == LEAF && s == "online").then_some(())
    });
}

#[test]
fn newest_guide_six_steps() {
    let mut p = pair(&[], &[("leafnode", "env=leaf")]);
    let visitor = unix_login("visitor");

    // Step 1: the visitor role on the leaf.
    let role = format!(
        "kind: role\nversion: v5\nmetadata:\n  name: visitor\nspec:\n  allow:\n    logins:\n      - {visitor}\n    node_labels:\n      '*': '*'\n"
    );
    let out = p.leaf.create("visitor.yaml", &role, false).ok();
    assert!(out.stdout.contains("role \"visitor\" has been created"), "{}", out.stdout);

    // Step 2: the root user with the visitor login.
    p.root.tctl(&["users", "add", "myuser", "--roles=access", &format!("--logins={visitor},ubuntu")]).ok();
    p.root.tctl_in(&["users", "set-password", "myuser"], Some(&format!("{PASSWORD}\n"))).ok();

    // Step 3: a dynamic invite token, listed by tokens ls.
    let token = invite_token(&p.root);
    let ls = p.root.tctl(&["tokens", "ls"]).ok();
    assert!(ls.stdout.contains(&token) && ls.stdout.contains("trusted_cluster"), "{}", ls.stdout);

    // Step 4: the trusted_cluster resource on the leaf.
    let tc = trusted_cluster_yaml("v2", &token, &p.root, "    - remote: \"access\"\n      local: [\"visitor\"]\n");
    let out = p.leaf.create("trusted_cluster.yaml", &tc, false).ok();
    assert!(out.stdout.contains(&format!("trusted_cluster \"{ROOT}\" has been created")), "{}", out.stdout);
    let got = p.leaf.tctl(&["get", "tc"]).ok();
    assert!(!got.stdout.contains(&token), "the token is not kept after use: {}", got.stdout);

    let tsh = Tsh::new(&p.root_dir, "myuser");
    tsh.login(&p.root.web_addr(), "myuser", PASSWORD, &[]).ok();
    wait_leaf_online(&tsh);
    let text = tsh.run(&["clusters"]).ok().stdout;
    assert!(text.contains("Cluster Name") && text.contains("Cluster Type") && text.contains("Selected"), "{text}");
    let rows = clusters(&tsh);
    assert!(rows.contains(&(ROOT.into(), "online".into(), "root".into())), "{rows:?}");
    assert!(rows.contains(&(LEAF.into(), "online".into(), "leaf".into())), "{rows:?}");

    // Step 5: the remote cluster, online with a recent heartbeat; labels hide it.
    // The proxy reports its tunnels to auth a moment after they come up.
    let leaf_rc = wait_for("tctl get rc shows the leaf online", Duration::from_secs(15), || {
        let rc = p.root.tctl(&["get", "rc", "--format=json"]).ok();
        let v: serde_json::Value = serde_json::from_str(&rc.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|r| r["metadata"]["name"] == LEAF && r["status"]["connection"] == "online")
            .cloned()
    });
    let hb = leaf_rc["status"]["last_heartbeat"].as_str().expect("last_heartbeat");
    let hb = time::OffsetDateTime::parse(hb, &time::format_description::well_known::Rfc3339).unwrap();
    assert!(time::OffsetDateTime::now_utc() - hb < time::Duration::seconds(60), "heartbeat {hb} is recent");
    let yaml = p.root.tctl(&["get", "rc"]).ok().stdout;
    assert!(yaml.contains("kind: remote_cluster") && yaml.contains("connection: online"), "{yaml}");

    p.root.tctl(&["update", &format!("rc/{LEAF}"), "--set-labels=env=demo"]).ok();
    let rows = clusters(&tsh);
    assert!(!rows.iter().any(|(n, _, _)| n == LEAF), "a labelled leaf is hidden: {rows:?}");
    let ls = tsh.run(&["ls", &format!("--cluster={LEAF}")]);
    assert_ne!(ls.code, 0, "hidden leaf cannot be listed: {ls:?}");
    let ssh = tsh.run(&["ssh", &format!("--cluster={LEAF}"), &format!("{visitor}@leafnode"), "true"]);
    assert_ne!(ssh.code, 0, "hidden leaf cannot be reached: {ssh:?}");
    assert!(ssh.stderr.contains("not found"), "{}", ssh.stderr);
    let role = "kind: role\nmetadata:\n  name: demo-cluster-access\nspec:\n  allow:\n    cluster_labels:\n      'env': 'demo'\nversion: v5\n";
    p.root.create("demo.yaml", role, false).ok();
    let status = tsh.run(&["status", "-f", "json"]).ok();
    let st: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let roles: Vec<String> = st["active"]["roles"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
    p.root
        .tctl(&["users", "update", "myuser", "--set-roles", &format!("{},demo-cluster-access", roles.join(","))])
        .ok();
    tsh.run(&["logout"]).ok();
    tsh.login(&p.root.web_addr(), "myuser", PASSWORD, &[]).ok();
    let rows = clusters(&tsh);
    assert!(rows.iter().any(|(n, _, _)| n == LEAF), "visible with demo-cluster-access: {rows:?}");
    let yaml = p.root.tctl(&["get", "rc"]).ok().stdout;
    assert!(yaml.contains("env: demo"), "{yaml}");

    // Step 6: the leaf node through the tunnel, as visitor.
    let ls = tsh.run(&["ls", &format!("--cluster={LEAF}")]).ok();
    assert!(ls.stdout.contains("leafnode") && ls.stdout.contains("⟵ Tunnel"), "{}", ls.stdout);
    let pwd = tsh.run(&["ssh", &format!("--cluster={LEAF}"), &format!("{visitor}@leafnode"), "pwd"]).ok();
    assert_eq!(pwd.stdout.trim(), home_of(&visitor));

    // `tsh login <leaf>` selects the leaf: no --cluster needed afterwards.
    let out = tsh.login(&p.root.web_addr(), "myuser", PASSWORD, &[LEAF]).ok();
    assert!(out.stdout.contains(LEAF), "{}", out.stdout);
    let st: serde_json::Value = serde_json::from_str(&tsh.run(&["status", "-f", "json"]).ok().stdout).unwrap();
    assert_eq!(st["active"]["cluster"], LEAF);
    let pwd = tsh.run(&["ssh", &format!("{visitor}@leafnode"), "pwd"]).ok();
    assert_eq!(pwd.stdout.trim(), home_of(&visitor));

    // The leaf's audit log records the mapped role on the session.
    let ev = wait_for("session.start on the leaf", Duration::from_secs(10), || {
        p.leaf.audit_events().into_iter().find(|e| e["event"] == "session.start" && e["user"] == "myuser")
    });
    assert!(ev["roles"].as_array().unwrap().iter().any(|r| r == "visitor"), "{ev}");

    // No token or private key in any log.
    for log in [p.root.all_logs(), p.leaf.all_logs()] {
        assert!(!log.contains(&token), "the invite token leaked into a log");
        assert!(!log.contains("PRIVATE KEY"), "a private key leaked into a log");
    }
    let _ = &mut p;
}

#[test]
fn older_guide_static_token_v1_and_deny_labels() {
    let static_token = "join-token-for-the-east";
    let mut p = pair(&[&format!("trusted_cluster:{static_token}")], &[("db-prod", "environment=production"), ("db-dev", "environment=dev")]);
    let mainuser = unix_login("mainuser");
    // The leaf's role for the root's admins: everything but production (v3, as in the guide).
    let role = format!(
        "- kind: role\n  version: v3\n  metadata:\n    name: mainuser\n  spec:\n    allow:\n      logins: [{mainuser}]\n      node_labels:\n        '*': '*'\n    deny:\n      node_labels:\n        \"environment\": \"production\"\n"
    );
    p.leaf.create("main-user-role.yaml", &role, false).ok();
    p.root.create(
        "admin.yaml",
        "kind: role\nversion: v7\nmetadata:\n  name: admin\nspec:\n  allow:\n    logins: ['{{internal.logins}}']\n    node_labels: {'*': '*'}\n",
        false,
    )
    .ok();
    p.root.tctl(&["users", "add", "boss", "--roles=admin", &format!("--logins={mainuser}")]).ok();
    p.root.tctl(&["users", "add", "pleb", "--roles=access", &format!("--logins={mainuser}")]).ok();
    for u in ["boss", "pleb"] {
        p.root.tctl_in(&["users", "set-password", u], Some(&format!("{PASSWORD}\n"))).ok();
    }

    // Invalid role maps are refused at create, nothing is stored.
    for bad in [
        "    - remote: admin\n      local: [\"*\"]\n",
        "    - remote: \"\"\n      local: [mainuser]\n",
        "    - remote: admin\n      local: [mainuser]\n    - remote: admin\n      local: [other]\n",
        "    - remote: \"^admin-($\"\n      local: [mainuser]\n",
    ] {
        let tc = trusted_cluster_yaml("v1", static_token, &p.root, bad);
        let out = p.leaf.create("bad-tc.yaml", &tc, false);
        assert_ne!(out.code, 0, "invalid role map accepted: {bad}");
        assert!(out.stderr.to_lowercase().contains("role") || out.stderr.contains("remote"), "{}", out.stderr);
    }
    assert_ne!(p.leaf.tctl(&["get", &format!("tc/{ROOT}")]).code, 0, "nothing stored");

    let tc = trusted_cluster_yaml("v1", static_token, &p.root, "    - remote: \"admin\"\n      local: [mainuser]\n");
    p.leaf.create("tc.yaml", &tc, false).ok();

    let boss = Tsh::new(&p.root_dir, "boss");
    boss.login(&p.root.web_addr(), "boss", PASSWORD, &[]).ok();
    wait_leaf_online(&boss);
    let ok = boss.run(&["ssh", &format!("--cluster={LEAF}"), &format!("{mainuser}@db-dev"), "echo", "dev-ok"]).ok();
    assert_eq!(ok.stdout, "dev-ok\n");
    let denied = boss.run(&["ssh", &format!("--cluster={LEAF}"), &format!("{mainuser}@db-prod"), "echo", "no"]);
    assert_ne!(denied.code, 0, "production is denied: {denied:?}");
    assert!(!denied.stdout.contains("no"));
    assert!(denied.stderr.contains("production"), "the leaf's reason reaches the user: {}", denied.stderr);

    // A user whose roles map to nothing is refused, and the leaf audits why.
    let pleb = Tsh::new(&p.root_dir, "pleb");
    pleb.login(&p.root.web_addr(), "pleb", PASSWORD, &[]).ok();
    let denied = pleb.run(&["ssh", &format!("--cluster={LEAF}"), &format!("{mainuser}@db-dev"), "true"]);
    assert_ne!(denied.code, 0);
    assert!(denied.stderr.contains("map to no role"), "{}", denied.stderr);
    let ev = wait_for("mapping refusal in the leaf audit log", Duration::from_secs(10), || {
        p.leaf.audit_events().into_iter().find(|e| e["event"] == "auth" && e["user"] == "pleb")
    });
    assert!(ev["error"].as_str().unwrap_or("").contains("map to no role"), "{ev}");
    let prod = p.leaf.audit_events().into_iter().find(|e| e["event"] == "auth" && e["node"] == "db-prod");
    assert!(prod.is_some_and(|e| e["error"].as_str().unwrap_or("").contains("production")), "deny reason audited");
    let _ = &mut p;
}

#[test]
fn disable_enable_remove_and_rejoin() {
    let mut p = pair(&[], &[("leafnode", "env=leaf")]);
    let visitor = unix_login("visitor");
    p.leaf
        .create("visitor.yaml", &format!("kind: role\nversion: v7\nmetadata:\n  name: visitor\nspec:\n  allow:\n    logins: [{visitor}]\n    node_labels: {{'*': '*'}}\n"), false)
        .ok();
    p.root.tctl(&["users", "add", "myuser", "--roles=access", &format!("--logins={visitor}")]).ok();
    p.root.tctl_in(&["users", "set-password", "myuser"], Some(&format!("{PASSWORD}\n"))).ok();
    let map = "    - remote: \"acc*\"\n      local: [\"visitor\"]\n";
    let tc = trusted_cluster_yaml("v2", &invite_token(&p.root), &p.root, map);
    p.leaf.create("tc.yaml", &tc, false).ok();
    let tsh = Tsh::new(&p.root_dir, "myuser");
    tsh.login(&p.root.web_addr(), "myuser", PASSWORD, &[]).ok();
    wait_leaf_online(&tsh);
    let ssh = |t: &Tsh| t.run(&["ssh", &format!("--cluster={LEAF}"), &format!("{visitor}@leafnode"), "echo", "in"]);
    assert_eq!(ssh(&tsh).ok().stdout, "in\n");

    // Disable: tunnels close, root certificates stop working on leaf nodes.
    p.leaf.create("tc.yaml", &tc.replace("enabled: true", "enabled: false"), true).ok();
    wait_for("leaf offline after disabling", Duration::from_secs(30), || {
        clusters(&tsh).iter().any(|(n, s, _)| n == LEAF && s == "offline").then_some(())
    });
    assert_ne!(ssh(&tsh).code, 0);

    // Enable again: back within seconds.
    p.leaf.create("tc.yaml", &tc, true).ok();
    let back = wait_for("access restored after enabling", Duration::from_secs(30), || {
        let r = ssh(&tsh);
        (r.code == 0).then_some(r)
    });
    assert_eq!(back.stdout, "in\n");

    // Remove on the root, then re-establish with a new token.
    p.root.tctl(&["rm", &format!("rc/{LEAF}")]).ok();
    assert!(!p.root.tctl(&["get", "rc"]).ok().stdout.contains(LEAF));
    assert!(p.root.audit_events().iter().any(|e| e["event"] == "trusted_cluster.delete"));
    p.leaf.tctl(&["rm", &format!("tc/{ROOT}")]).ok();
    let tc2 = trusted_cluster_yaml("v2", &invite_token(&p.root), &p.root, map);
    p.leaf.create("tc2.yaml", &tc2, false).ok();
    tsh.run(&["logout"]).ok();
    tsh.login(&p.root.web_addr(), "myuser", PASSWORD, &[]).ok();
    wait_leaf_online(&tsh);
    let again = wait_for("access after re-establishing trust", Duration::from_secs(30), || {
        let r = ssh(&tsh);
        (r.code == 0).then_some(r)
    });
    assert_eq!(again.stdout, "in\n");
    let _ = &mut p;
}

#[test]
fn trust_security() {
    let mut p = pair(&[], &[("leafnode", "env=leaf")]);

    // An expired invite token gets the exact rejection text.
    let out = p.root.tctl(&["tokens", "add", "--type=trusted_cluster", "--ttl=1s", "--format=json"]).ok();
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let expired = v["token"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_secs(2));
    let map = "    - remote: \"access\"\n      local: [\"access\"]\n";
    let out = p.leaf.create("tc.yaml", &trusted_cluster_yaml("v2", &expired, &p.root, map), false);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("access denied: the cluster token has been rejected"), "{}", out.stderr);

    // A leaf auth that does not accept self-signed HTTPS gets the exact TLS error.
    let strict = Cluster::start_auth_in(&p.root_dir.join("strict"), "strict.example.com", &[], &[]);
    let token = invite_token(&p.root);
    let out = strict.create("tc.yaml", &trusted_cluster_yaml("v2", &token, &p.root, map), false);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("the trusted cluster uses misconfigured HTTP/TLS certificate"), "{}", out.stderr);

    // A leaf may not register under the root's name, nor under another leaf's.
    p.leaf.create("tc.yaml", &trusted_cluster_yaml("v2", &token, &p.root, map), false).ok();
    let impostor_root = Cluster::start_auth_in(&p.root_dir.join("imp1"), ROOT, &[], &["--insecure"]);
    let out = impostor_root.create("tc.yaml", &trusted_cluster_yaml("v2", &token, &p.root, map), false);
    assert_ne!(out.code, 0, "a cluster named like the root must be refused");
    let impostor_leaf = Cluster::start_auth_in(&p.root_dir.join("imp2"), LEAF, &[], &["--insecure"]);
    let out = impostor_leaf.create("tc.yaml", &trusted_cluster_yaml("v2", &token, &p.root, map), false);
    assert_ne!(out.code, 0, "a second cluster named like the leaf must be refused");
    assert!(out.stderr.contains("already trusted"), "{}", out.stderr);

    // A leaf-signed user certificate is never a root identity: leaf user at the root proxy.
    p.leaf.tctl(&["users", "add", "leafy", "--roles=access", "--logins=root"]).ok();
    p.leaf.tctl_in(&["users", "set-password", "leafy"], Some(&format!("{PASSWORD}\n"))).ok();
    let leafy = Tsh::new(&p.root_dir, "leafy");
    leafy.login(&p.leaf.web_addr(), "leafy", PASSWORD, &[]).ok();
    let (key, cert) = leafy.key_paths("127.0.0.1", "leafy");
    let out = run_cmd(
        std::process::Command::new("ssh")
            .args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
            .arg("-o")
            .arg(format!("CertificateFile={}", cert.display()))
            .arg("-i")
            .arg(&key)
            .arg("-p")
            .arg(p.root.ports.ssh.to_string())
            .arg("root@127.0.0.1")
            .arg("-W")
            .arg("leafnode:3022"),
        None,
    );
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("Permission denied"), "{}", out.stderr);

    // The root cannot make the leaf dial outside its inventory.
    p.root.tctl(&["users", "add", "myuser", "--roles=access", "--logins=root"]).ok();
    p.root.tctl_in(&["users", "set-password", "myuser"], Some(&format!("{PASSWORD}\n"))).ok();
    let tsh = Tsh::new(&p.root_dir, "myuser");
    tsh.login(&p.root.web_addr(), "myuser", PASSWORD, &[]).ok();
    wait_leaf_online(&tsh);
    let leaf_auth = format!("127.0.0.1:{}", p.leaf.ports.auth);
    for target in [format!("root@{leaf_auth}"), "root@10.1.2.3".to_string()] {
        let out = tsh.run(&["ssh", &format!("--cluster={LEAF}"), &target, "true"]);
        assert_ne!(out.code, 0, "{target} must not be dialled");
    }
    let refused = wait_for("refused dial audited on the leaf", Duration::from_secs(10), || {
        p.leaf.audit_events().into_iter().find(|e| e["event"] == "tunnel.dial" && e["success"] == false)
    });
    assert!(refused["target"].as_str().is_some(), "{refused}");

    for log in [p.root.all_logs(), p.leaf.all_logs()] {
        assert!(!log.contains(&token) && !log.contains(&expired), "a token leaked into a log");
        assert!(!log.contains("PRIVATE KEY"), "a private key leaked into a log");
    }
    let _ = &mut p;
}
