//! Operability, end to end: the diagnostic listeners of auth, proxy, node and tunnel agent
//! serve Prometheus text whose counters follow the sessions run through them, and the
//! proxy's `/readyz` follows its connection to the auth service.
// Test code: a panic is how it fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use portcullis_e2e::*;

const PASSWORD: &str = "correct-horse-battery";
/// Sessions run through the proxy; the counters must move by exactly this much.
const SESSIONS: usize = 3;

fn diag_flag(port: u16) -> String {
    format!("--diag-addr=127.0.0.1:{port}")
}

fn readyz(port: u16) -> Option<HttpAnswer> {
    diag_get(port, "/readyz")
}

#[test]
fn metrics_follow_sessions_and_readiness_follows_auth() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().to_path_buf();
    let (auth_diag, proxy_diag, node_diag) = (free_port(), free_port(), free_port());
    let mut c = Cluster::start_auth_with(&root, "diag.example.com", &[], &[&diag_flag(auth_diag)]);
    c.start_proxy_with(&[&diag_flag(proxy_diag)]);
    c.start_node_with("devnode", "env=dev", &[&diag_flag(node_diag)]);
    for port in [auth_diag, proxy_diag, node_diag] {
        assert_eq!(diag_get(port, "/healthz").map(|a| a.status), Some(200), "/healthz on {port}");
        // The proxy and node are ready after their first heartbeat to auth.
        wait_ready(port, Duration::from_secs(30));
        assert_eq!(diag_get(port, "/nope").map(|a| a.status), Some(404));
    }

    let login = test_login();
    let role = "kind: role\nversion: v7\nmetadata:\n  name: dev-access\nspec:\n  allow:\n    logins: ['{{internal.logins}}']\n    node_labels:\n      env: dev\n  deny:\n    logins: [forbidden]\n";
    c.create("role.yaml", role, false).ok();
    c.tctl(&["users", "add", "alice", "--roles=dev-access", &format!("--logins={login},forbidden")]).ok();
    c.tctl_in(&["users", "set-password", "alice"], Some(&format!("{PASSWORD}\n"))).ok();
    wait_for("devnode registered", Duration::from_secs(30), || {
        c.tctl(&["nodes", "ls"]).stdout.contains("devnode").then_some(())
    });
    let tsh = Tsh::new(&root, "alice");
    tsh.login(&c.web_addr(), "alice", PASSWORD, &[]).ok();

    // Sessions move the proxy's and the node's counters by exactly their number.
    let (proxy_before, node_before) = (scrape(proxy_diag), scrape(node_diag));
    for i in 0..SESSIONS {
        let out = tsh.run(&["ssh", &format!("{login}@devnode"), "echo", &format!("session-{i}")]).ok();
        assert_eq!(out.stdout, format!("session-{i}\n"));
    }
    let delta = |before: &[Sample], after: &[Sample], name: &str, labels: &[(&str, &str)]| {
        metric(after, name, labels) - metric(before, name, labels)
    };
    let n = SESSIONS as f64;
    let proxy_after = scrape(proxy_diag);
    let local_ok = [("cluster_type", "local"), ("outcome", "ok")];
    assert_eq!(delta(&proxy_before, &proxy_after, "portcullis_proxy_sessions_total", &local_ok), n);
    assert_eq!(delta(&proxy_before, &proxy_after, "portcullis_proxy_sessions_total", &[("outcome", "error")]), 0.0);
    let local = [("cluster_type", "local")];
    assert_eq!(delta(&proxy_before, &proxy_after, "portcullis_proxy_dial_seconds_count", &local), n);
    let node_after = scrape(node_diag);
    assert_eq!(delta(&node_before, &node_after, "portcullis_node_sessions_total", &[("outcome", "ok")]), n);
    assert_eq!(delta(&node_before, &node_after, "portcullis_node_logins_total", &[("outcome", "allowed")]), n);
    // Ages and gauges are there too; sessions that ended are no longer active.
    let age = metric(&proxy_after, "portcullis_proxy_heartbeat_age_seconds", &[]);
    assert!((0.0..10.0).contains(&age), "the proxy's last heartbeat is recent: {age}");
    assert!(metric(&node_after, "portcullis_node_heartbeat_age_seconds", &[]) < 20.0);
    assert!(metric(&scrape(auth_diag), "portcullis_auth_nodes", &[]) >= 1.0);
    wait_for("no active sessions", Duration::from_secs(10), || {
        let idle = metric(&scrape(proxy_diag), "portcullis_proxy_active_sessions", &[]) == 0.0
            && metric(&scrape(node_diag), "portcullis_node_active_sessions", &[]) == 0.0;
        idle.then_some(())
    });

    // A refused login is a denied auth request and a denied node login; a wrong password is
    // an unauthenticated one.
    let refused = tsh.run(&["ssh", "forbidden@devnode", "true"]);
    assert_ne!(refused.code, 0, "{refused:?}");
    let auth = scrape(auth_diag);
    assert!(metric(&auth, "portcullis_auth_requests_total", &[("rpc", "AuthorizeSsh"), ("outcome", "denied")]) >= 1.0);
    assert!(metric(&auth, "portcullis_auth_requests_total", &[("rpc", "Heartbeat"), ("outcome", "ok")]) >= 2.0);
    assert!(metric(&scrape(node_diag), "portcullis_node_logins_total", &[("outcome", "denied")]) >= 1.0);
    assert_ne!(Tsh::new(&root, "mallory").login(&c.web_addr(), "alice", "wrong-password", &[]).code, 0);
    let auth = scrape(auth_diag);
    let bad_password = [("rpc", "AuthenticateUser"), ("outcome", "unauthenticated")];
    assert_eq!(metric(&auth, "portcullis_auth_requests_total", &bad_password), 1.0);

    // With auth down the proxy stays ready past 3 missed heartbeats (15 s): it routes from its
    // access cache, and a load balancer that dropped it would end the sessions the cache keeps
    // going. It says so in its log, stays alive, and sessions still reach the node.
    c.auth.stop();
    std::thread::sleep(Duration::from_secs(20));
    let r = readyz(proxy_diag).expect("/readyz answers");
    assert_eq!(r.status, 200, "still ready with auth down: {}", r.body);
    assert_eq!(diag_get(proxy_diag, "/healthz").map(|a| a.status), Some(200));
    let during = tsh.run(&["ssh", &format!("{login}@devnode"), "echo", "cached"]);
    assert_eq!(during.stdout, "cached\n", "a session with auth down: {during:?}");
    wait_for("the proxy logs that it serves from its cache", Duration::from_secs(10), || {
        c.all_logs().contains("still serving from the access cache").then_some(())
    });
    c.restart_auth();
    wait_ready(proxy_diag, Duration::from_secs(20));

    // A proxy started while auth is down (its identity is kept, no join needed) is alive
    // but not ready before its auth connection is up.
    c.auth.stop();
    c.restart_proxy_with(&[&diag_flag(proxy_diag)]);
    wait_for("the restarted proxy's /healthz", Duration::from_secs(20), || {
        diag_get(proxy_diag, "/healthz").filter(|a| a.status == 200)
    });
    for _ in 0..12 {
        let r = readyz(proxy_diag).expect("/readyz answers");
        assert_eq!(r.status, 503, "not ready without auth: {}", r.body);
        assert_eq!(r.body, "not ready: waiting for the first heartbeat to the auth service\n");
        std::thread::sleep(Duration::from_millis(500));
    }
    c.restart_auth();
    wait_ready(proxy_diag, Duration::from_secs(20));
}

#[test]
fn leaf_tunnels_and_sessions_are_counted_on_both_sides() {
    const ROOT: &str = "root.example.com";
    const LEAF: &str = "leaf.example.com";
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().to_path_buf();
    let (proxy_diag, agent_diag) = (free_port(), free_port());
    let mut root = Cluster::start_auth(&dir, ROOT, &[]);
    root.start_proxy_with(&[&diag_flag(proxy_diag)]);
    // --insecure: the root proxy's HTTPS certificate is self-signed in tests.
    let mut leaf = Cluster::start_auth_with(&dir, LEAF, &[], &["--insecure"]);
    leaf.start_node("leafnode", "env=leaf");
    leaf.start_agent_with(&[&diag_flag(agent_diag)]);
    // Ready once it could list the (still empty) trusted clusters.
    wait_ready(agent_diag, Duration::from_secs(30));

    let visitor = unix_login("visitor");
    let role = format!(
        "kind: role\nversion: v5\nmetadata:\n  name: visitor\nspec:\n  allow:\n    logins: [{visitor}]\n    node_labels:\n      '*': '*'\n"
    );
    leaf.create("visitor.yaml", &role, false).ok();
    root.tctl(&["users", "add", "myuser", "--roles=access", &format!("--logins={visitor}")]).ok();
    root.tctl_in(&["users", "set-password", "myuser"], Some(&format!("{PASSWORD}\n"))).ok();
    let out = root.tctl(&["tokens", "add", "--type=trusted_cluster", "--ttl=5m"]).ok();
    let token = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("The cluster invite token: "))
        .unwrap_or_else(|| panic!("no invite token in {}", out.stdout))
        .trim()
        .to_string();
    let tc = format!(
        "kind: trusted_cluster\nversion: v2\nmetadata:\n  name: {ROOT}\nspec:\n  enabled: true\n  token: {token}\n  tunnel_addr: {}\n  web_proxy_addr: {}\n  role_map:\n    - remote: access\n      local: [visitor]\n",
        root.tunnel_addr(),
        root.web_addr()
    );
    leaf.create("trusted_cluster.yaml", &tc, false).ok();

    // Both ends count the tunnel: the agent at once, the proxy with its next tunnel report.
    wait_for("the agent's tunnel gauge", Duration::from_secs(40), || {
        (metric(&scrape(agent_diag), "portcullis_agent_tunnels", &[("cluster", ROOT)]) >= 1.0).then_some(())
    });
    wait_for("the proxy's tunnel gauge", Duration::from_secs(20), || {
        (metric(&scrape(proxy_diag), "portcullis_proxy_tunnels", &[("leaf", LEAF)]) >= 1.0).then_some(())
    });

    let tsh = Tsh::new(&dir, "myuser");
    tsh.login(&root.web_addr(), "myuser", PASSWORD, &[]).ok();
    let (proxy_before, agent_before) = (scrape(proxy_diag), scrape(agent_diag));
    let out =
        tsh.run(&["ssh", &format!("--cluster={LEAF}"), &format!("{visitor}@leafnode"), "echo", "via-tunnel"]).ok();
    assert_eq!(out.stdout, "via-tunnel\n");
    let (proxy_after, agent_after) = (scrape(proxy_diag), scrape(agent_diag));
    let delta = |before: &[Sample], after: &[Sample], name: &str, labels: &[(&str, &str)]| {
        metric(after, name, labels) - metric(before, name, labels)
    };
    let leaf_ok = [("cluster_type", "leaf"), ("outcome", "ok")];
    assert_eq!(delta(&proxy_before, &proxy_after, "portcullis_proxy_sessions_total", &leaf_ok), 1.0);
    let leaf_type = [("cluster_type", "leaf")];
    assert_eq!(delta(&proxy_before, &proxy_after, "portcullis_proxy_dial_seconds_count", &leaf_type), 1.0);
    assert_eq!(delta(&agent_before, &agent_after, "portcullis_agent_dials_total", &[("outcome", "ok")]), 1.0);
    assert!(metric(&agent_after, "portcullis_agent_heartbeat_age_seconds", &[]) < 10.0);
}
