//! Issue 4, end to end: three root proxies behind one load-balanced tunnel address, a leaf
//! agent holding a tunnel to each, failover, restarts, and the leaf's online status.
// Test code: a panic is how it fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use portcullis_e2e::*;

const PASSWORD: &str = "ha-user-password";
const ROOT: &str = "root.ha.example.com";
const LEAF: &str = "leaf.ha.example.com";

fn random_index(n: usize) -> usize {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as usize;
    (nanos / 7) % n
}

fn leaf_status(root: &Cluster) -> String {
    let out = root.tctl(&["get", &format!("rc/{LEAF}"), "--format=json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    v[0]["status"]["connection"].as_str().unwrap_or_default().to_string()
}

#[test]
fn three_proxies_failover_and_recovery() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let root = Cluster::start_auth(dir, ROOT, &[]);
    // Three proxies; agents are told to dial the balancer, which picks one at random.
    let lb = TcpBalancer::start(vec![]);
    let mut proxies: Vec<ExtraProxy> = (0..3).map(|i| root.add_proxy(&format!("proxy-{i}"), &lb.addr())).collect();
    lb.set_backends(proxies.iter().map(|p| p.ports.tunnel).collect());

    let mut leaf = Cluster::start_auth_with(dir, LEAF, &[], &["--insecure"]);
    leaf.start_node("leafnode", "env=leaf");
    leaf.start_agent();
    let login = unix_login("visitor");
    leaf.create(
        "visitor.yaml",
        &format!("kind: role\nversion: v7\nmetadata:\n  name: visitor\nspec:\n  allow:\n    logins: [{login}]\n    node_labels: {{'*': '*'}}\n"),
        false,
    )
    .ok();
    root.tctl(&["users", "add", "hauser", "--roles=access", &format!("--logins={login}")]).ok();
    root.tctl_in(&["users", "set-password", "hauser"], Some(&format!("{PASSWORD}\n"))).ok();
    let out = root.tctl(&["tokens", "add", "--type=trusted_cluster", "--ttl=5m", "--format=json"]).ok();
    let token: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let tc = format!(
        "kind: trusted_cluster\nversion: v2\nmetadata:\n  name: {ROOT}\nspec:\n  enabled: true\n  token: {}\n  tunnel_addr: {}\n  web_proxy_addr: 127.0.0.1:{}\n  role_map:\n    - remote: access\n      local: [visitor]\n",
        token["token"].as_str().unwrap(),
        lb.addr(),
        proxies[0].ports.web
    );
    leaf.create("tc.yaml", &tc, false).ok();

    // One tsh profile per proxy, so each run can go through a chosen proxy.
    let tshs: Vec<Tsh> = (0..3)
        .map(|i| {
            let t = Tsh::new(dir, &format!("p{i}"));
            t.login(&format!("127.0.0.1:{}", proxies[i].ports.web), "hauser", PASSWORD, &[]).ok();
            t
        })
        .collect();
    let target = format!("{login}@leafnode");
    let run = |i: usize| tshs[i].run(&["ssh", &format!("--cluster={LEAF}"), &target, "echo", "ok"]);

    // Every proxy holds a tunnel from the leaf shortly after start.
    let start = Instant::now();
    for i in 0..3 {
        wait_for(&format!("a tunnel on proxy {i}"), Duration::from_secs(40), || (run(i).code == 0).then_some(()));
    }
    eprintln!("all three proxies reachable after {:?}", start.elapsed());

    // 200 consecutive sessions through random proxies all succeed.
    for n in 0..200 {
        let i = random_index(3);
        let r = run(i);
        assert_eq!(r.code, 0, "run {n} through proxy {i} failed: {r:?}");
        assert_eq!(r.stdout, "ok\n");
    }

    // Kill each proxy in turn, six rounds: the others keep working at once; the restarted
    // one gets its tunnel back within seconds.
    for round in 0..6 {
        let k = round % 3;
        proxies[k].proc.kill();
        for j in (0..3).filter(|j| *j != k) {
            let r = run(j);
            assert_eq!(r.code, 0, "round {round}: proxy {j} failed while proxy {k} was down: {r:?}");
        }
        root.restart_proxy(&mut proxies[k]);
        let back = Instant::now();
        wait_for(&format!("round {round}: proxy {k} back with a tunnel"), Duration::from_secs(30), || {
            (run(k).code == 0).then_some(())
        });
        eprintln!("round {round}: proxy {k} served the leaf again {:?} after restart", back.elapsed());
    }

    // A graceful stop (SIGTERM: the proxy drains its agents) and a restart with the same
    // identity: the agent comes back to it too.
    proxies[1].proc.stop();
    for j in [0, 2] {
        assert_eq!(run(j).code, 0, "proxy {j} failed while proxy 1 was draining");
    }
    root.restart_proxy(&mut proxies[1]);
    let back = Instant::now();
    wait_for("proxy 1 back with a tunnel after SIGTERM", Duration::from_secs(30), || (run(1).code == 0).then_some(()));
    eprintln!("after SIGTERM: proxy 1 served the leaf again {:?} after restart", back.elapsed());

    // Stop the agent: offline within the configured bound (6 s in tests, plus a report
    // interval); start it: online again.
    wait_for("leaf online", Duration::from_secs(20), || (leaf_status(&root) == "online").then_some(()));
    leaf.agent.as_mut().expect("agent").stop();
    let stopped = Instant::now();
    wait_for("leaf offline after the agent stopped", Duration::from_secs(20), || {
        (leaf_status(&root) == "offline").then_some(())
    });
    let took = stopped.elapsed();
    assert!(took <= Duration::from_secs(14), "offline after {took:?}, bound is 6 s + one 5 s report");
    leaf.start_agent();
    wait_for("leaf online again", Duration::from_secs(30), || (leaf_status(&root) == "online").then_some(()));
    drop(lb);
}
