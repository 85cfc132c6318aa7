//! Issues 6 and 12, end to end: the docker-compose two-cluster lab. Builds the images offline
//! (Portcullis and the lab's PostgreSQL), starts the lab under a project name of its own,
//! reaches the root node and both leaf nodes with `tsh ssh` from the client container, shows
//! that no root container can connect to any leaf address, stops a root proxy and shows new
//! sessions still work (and again the other way round once it is back). Then the root control
//! plane's high availability: kill -9 of one root auth replica while sessions run and of one
//! root proxy; every session to root and leaf nodes succeeds, a login and a tctl write go
//! through the other replica, and what was written through one replica is read through the
//! other once they swap. Tears everything down.
//!
//! Runs whenever a Docker engine answers `docker info`; with `CI=true` it is required (it
//! fails instead of skipping when Docker or Compose is missing).
// Test code: a panic is how it fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_e2e::bin_dir;
use portcullis_types::HostPort;

const LEAF: &str = "leaf.lab.portcullis.local";
const PASSWORD: &str = "compose-e2e-password";
const ROOT_SERVICES: [&str; 7] =
    ["postgres", "root-auth-a", "root-auth-b", "root-proxy-1", "root-proxy-2", "root-node-1", "client"];
const LEAF_SERVICES: [&str; 5] = ["leaf-auth", "leaf-proxy", "tunnel-agent", "leaf-node-1", "leaf-node-2"];
/// Every port a Portcullis service listens on in the lab (diag, node, proxy SSH, tunnel,
/// auth, web); the ports the leaf containers really listen on are added to these.
const KNOWN_PORTS: [u16; 6] = [3000, 3022, 3023, 3024, 3025, 3080];

/// The result of a finished command.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(self, what: &str) -> Out {
        assert_eq!(
            self.code, 0,
            "{what} failed (exit {}):\nstdout: {}\nstderr: {}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

/// Runs `cmd` to completion, killing it after `timeout` (exit code -1 then).
fn run(cmd: &mut Command, timeout: Duration) -> Out {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Out { code: -1, stdout: String::new(), stderr: format!("cannot run {cmd:?}: {e}") },
    };
    // Read both pipes on their own threads so a chatty command cannot fill a pipe and stall.
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out_t = child.stdout.take().map(|s| reader(Box::new(s)));
    let err_t = child.stderr.take().map(|s| reader(Box::new(s)));
    let start = Instant::now();
    let code = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.code().unwrap_or(-1),
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break -1;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => break -1,
        }
    };
    let stdout = out_t.and_then(|t| t.join().ok()).unwrap_or_default();
    let mut stderr = err_t.and_then(|t| t.join().ok()).unwrap_or_default();
    if code == -1 && start.elapsed() > timeout {
        stderr.push_str(&format!("\n(killed after {timeout:?})"));
    }
    Out { code, stdout, stderr }
}

fn docker(args: &[&str]) -> Out {
    run(Command::new("docker").args(args), Duration::from_secs(120))
}

/// `docker compose` (v2 plugin) or `docker-compose` (v1), whichever is installed.
fn compose_command() -> Option<Vec<String>> {
    let v2 = run(Command::new("docker").args(["compose", "version"]), Duration::from_secs(30));
    if v2.code == 0 {
        return Some(vec!["docker".into(), "compose".into()]);
    }
    let v1 = run(Command::new("docker-compose").arg("version"), Duration::from_secs(30));
    (v1.code == 0).then(|| vec!["docker-compose".into()])
}

fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.join("../..").canonicalize().expect("workspace root")
}

fn unique_project() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("portcullis-e2e-{:08x}", (nanos as u64 ^ u64::from(std::process::id()).rotate_left(32)) as u32)
}

/// A running compose project; `down -v --remove-orphans` when dropped (also on panic), after
/// printing the services' logs if the test failed.
struct Lab {
    compose: Vec<String>,
    project: String,
    root: PathBuf,
    torn_down: bool,
}

impl Lab {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.compose[0]);
        c.args(&self.compose[1..])
            .arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(self.root.join("docker-compose.yml"))
            .args(args)
            .current_dir(&self.root)
            .env("PORTCULLIS_TRACING", "false")
            .env("LAB_PASSWORD", PASSWORD)
            .env_remove("COMPOSE_PROFILES")
            .env_remove("PORTCULLIS_IMAGE");
        c
    }

    fn compose(&self, args: &[&str], timeout: Duration) -> Out {
        run(&mut self.cmd(args), timeout)
    }

    /// The id of the (only) container of `service`, running or not.
    fn container(&self, service: &str) -> String {
        let out = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ])
        .ok("docker ps");
        let ids: Vec<&str> = out.stdout.split_whitespace().collect();
        assert_eq!(ids.len(), 1, "expected one container of {service}, found {ids:?}");
        ids[0].to_string()
    }

    fn inspect(&self, service: &str, format: &str) -> String {
        let id = self.container(service);
        docker(&["inspect", "-f", format, &id]).ok("docker inspect").stdout.trim().to_string()
    }

    /// Runs a shell script in the client container, the way a user would.
    fn client(&self, script: &str) -> Out {
        self.compose(&["exec", "-T", "client", "bash", "-c", script], Duration::from_secs(90))
    }

    /// Tries a TCP connection from `service`'s container to every target at once (3 s each);
    /// returns the targets that accepted.
    fn probe(&self, service: &str, targets: &[String]) -> BTreeSet<String> {
        let list = targets.join(" ");
        let script = format!(
            "n=0; for t in {list}; do n=$((n+1)); (timeout 3 bash -c \"exec 3<>/dev/tcp/${{t%:*}}/${{t##*:}}\" 2>/dev/null && echo \"OPEN $t\") & done; wait; echo \"PROBED $n\""
        );
        let id = self.container(service);
        let out = run(Command::new("docker").args(["exec", &id, "bash", "-c", &script]), Duration::from_secs(60))
            .ok(&format!("probe from {service}"));
        assert!(
            out.stdout.contains(&format!("PROBED {}", targets.len())),
            "the probe in {service} did not run through: {out:?}"
        );
        out.stdout.lines().filter_map(|l| l.strip_prefix("OPEN ")).map(str::to_string).collect()
    }

    fn down(&mut self) -> Out {
        self.torn_down = true;
        self.compose(&["down", "-v", "--remove-orphans", "-t", "5"], Duration::from_secs(180))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        if std::thread::panicking() {
            let logs = self.compose(&["logs", "--no-color", "--tail=60"], Duration::from_secs(60));
            eprintln!("---- compose logs of {} ----\n{}{}", self.project, logs.stdout, logs.stderr);
        }
        let out = self.down();
        if out.code != 0 {
            eprintln!("compose down of {} failed: {out:?}", self.project);
        }
    }
}

/// Prints a phase's duration, for the test's log.
fn phase(name: &str, since: Instant) {
    eprintln!("[compose e2e] {name}: {:.1}s", since.elapsed().as_secs_f64());
}

/// Waits until root proxy `proxy` reports a live tunnel from the leaf (its metrics, read on
/// the loopback diagnostic listener inside its container).
fn wait_tunnel(lab: &Lab, proxy: &str, timeout: Duration) {
    let id = lab.container(proxy);
    portcullis_e2e::wait_for(&format!("a leaf tunnel on {proxy}"), timeout, || {
        std::thread::sleep(Duration::from_millis(400));
        let m = docker(&["exec", &id, "curl", "-fsS", "http://127.0.0.1:3000/metrics"]).stdout;
        m.lines()
            .filter(|l| l.starts_with("portcullis_proxy_tunnels{") && l.contains(LEAF))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .any(|v| v >= 1.0)
            .then_some(())
    });
}

fn ssh_hostname(lab: &Lab, node: &str) -> Out {
    lab.client(&format!("tsh ssh --cluster={LEAF} visitor@{node} hostname"))
}

/// A session to a root cluster node (the client's default cluster).
fn ssh_root_hostname(lab: &Lab, node: &str) -> Out {
    lab.client(&format!("tsh ssh visitor@{node} hostname"))
}

/// `docker-compose kill` (SIGKILL) of `service`; a killed container stays down (the restart
/// policy leaves containers that were stopped by hand alone).
fn kill(lab: &Lab, service: &str) {
    lab.compose(&["kill", service], Duration::from_secs(60)).ok(&format!("compose kill {service}"));
    let state = lab.inspect(service, "{{.State.Status}}");
    assert!(state.starts_with("exited"), "{service} still runs after kill: {state}");
}

/// Starts `service` again and waits until its health check passes.
fn start_healthy(lab: &Lab, service: &str, timeout: Duration) {
    lab.compose(&["start", service], Duration::from_secs(60)).ok(&format!("compose start {service}"));
    let id = lab.container(service);
    portcullis_e2e::wait_for(&format!("{service} to be healthy again"), timeout, || {
        std::thread::sleep(Duration::from_millis(400));
        let s = docker(&["inspect", "-f", "{{.State.Health.Status}}", &id]).stdout;
        (s.trim() == "healthy").then_some(())
    });
}

/// One session to each node, root and leaf, `rounds` times; every one must succeed and land
/// on the node it names.
fn sessions_everywhere(lab: &Lab, rounds: usize, when: &str) {
    for round in 0..rounds {
        let out = ssh_root_hostname(lab, "root-node-1");
        assert_eq!(out.code, 0, "round {round}: session to root-node-1 {when}: {out:?}");
        assert_eq!(out.stdout.trim(), "root-node-1");
        for node in ["leaf-node-1", "leaf-node-2"] {
            let out = ssh_hostname(lab, node);
            assert_eq!(out.code, 0, "round {round}: session to {node} {when}: {out:?}");
            assert_eq!(out.stdout.trim(), node);
        }
    }
}

#[test]
fn compose_lab_end_to_end() {
    let required = std::env::var("CI").is_ok_and(|v| v == "true");
    let skip = |why: &str| {
        assert!(!required, "CI=true requires the Docker test, but {why}");
        eprintln!("SKIPPED compose_lab_end_to_end: {why}");
    };
    if run(Command::new("docker").arg("info"), Duration::from_secs(30)).code != 0 {
        return skip("no Docker engine is reachable (docker info failed)");
    }
    let Some(compose) = compose_command() else {
        return skip("neither `docker compose` nor `docker-compose` is installed");
    };
    let root = workspace_root();
    let total = Instant::now();

    // The image, from the binaries this test run was built with.
    let t = Instant::now();
    let bins = bin_dir();
    run(
        Command::new("bash").arg(root.join("scripts/docker-build.sh")).arg("--bin-dir").arg(&bins).current_dir(&root),
        // On a fresh machine: debootstrap of the base, then apt for the PostgreSQL image.
        Duration::from_secs(900),
    )
    .ok("scripts/docker-build.sh");
    phase("image built", t);

    let mut lab = Lab { compose, project: unique_project(), root, torn_down: false };
    eprintln!("[compose e2e] project {}", lab.project);
    let t = Instant::now();
    lab.compose(&["up", "-d"], Duration::from_secs(300)).ok("compose up -d");
    let bootstrap = lab.container("bootstrap");
    let state = portcullis_e2e::wait_for("the bootstrap service to finish", Duration::from_secs(240), || {
        std::thread::sleep(Duration::from_millis(400));
        let s = docker(&["inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", &bootstrap]).stdout;
        s.trim().starts_with("exited").then(|| s.trim().to_string())
    });
    let logs = lab.compose(&["logs", "--no-color", "bootstrap"], Duration::from_secs(60)).stdout;
    assert_eq!(state, "exited 0", "bootstrap failed:\n{logs}");
    assert!(
        logs.contains("lab is ready") && logs.contains("exec client tsh"),
        "bootstrap printed no next steps:\n{logs}"
    );
    phase("lab up and trust established", t);

    // A root user reaches both leaf nodes through the reverse tunnel.
    let t = Instant::now();
    lab.client(&format!("echo {PASSWORD} | tsh login --insecure")).ok("tsh login");
    let ls = lab.client(&format!("tsh ls --cluster={LEAF}")).ok("tsh ls");
    assert!(
        ls.stdout.lines().any(|l| l.contains("leaf-node-2") && l.contains("environment=production")),
        "leaf-node-2 is not labelled environment=production:\n{}",
        ls.stdout
    );
    for node in ["leaf-node-1", "leaf-node-2"] {
        let expected = lab.inspect(node, "{{.Config.Hostname}}");
        let out = ssh_hostname(&lab, node).ok(&format!("tsh ssh to {node}"));
        assert_eq!(out.stdout.trim(), expected, "tsh ssh --cluster={LEAF} visitor@{node} hostname");
    }
    let out = ssh_root_hostname(&lab, "root-node-1").ok("tsh ssh to root-node-1");
    assert_eq!(out.stdout.trim(), "root-node-1", "tsh ssh visitor@root-node-1 hostname");
    phase("tsh ssh to the root node and both leaf nodes", t);

    // No root container can open a connection to any address of any leaf container.
    let t = Instant::now();
    let mut ports: BTreeSet<u16> = KNOWN_PORTS.into_iter().collect();
    let mut leaf_ips = BTreeSet::new();
    for s in LEAF_SERVICES {
        let ips = lab.inspect(s, "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}");
        leaf_ips.extend(ips.split_whitespace().map(str::to_string));
        let listening =
            run(Command::new("docker").args(["exec", &lab.container(s), "ss", "-ltnH"]), Duration::from_secs(30))
                .ok(&format!("ss in {s}"));
        // Loopback listeners (diagnostics, Docker's DNS) are out of reach by construction.
        ports.extend(listening.stdout.lines().filter_map(|l| {
            let local = l.split_whitespace().nth(3)?.parse::<HostPort>().ok()?;
            (!local.host().starts_with("127.")).then_some(local.port()).flatten()
        }));
    }
    assert!(leaf_ips.len() >= LEAF_SERVICES.len(), "leaf addresses: {leaf_ips:?}");
    let targets: Vec<String> = leaf_ips.iter().flat_map(|ip| ports.iter().map(move |p| format!("{ip}:{p}"))).collect();
    for s in ROOT_SERVICES {
        let open = lab.probe(s, &targets);
        assert!(open.is_empty(), "{s} (root side) can connect to leaf addresses: {open:?}");
    }
    // The probe does see open ports: root containers reach the root, and the leaf dials out.
    let open =
        lab.probe("client", &["root-proxy:3080".into(), "root-auth-a:3025".into(), "root-auth-b:3025".into()]);
    assert_eq!(open.len(), 3, "the client cannot reach the root proxies and both auth replicas: {open:?}");
    // The database is on the root network alone: the leaf's containers cannot reach it.
    let open = lab.probe("tunnel-agent", &["postgres:5432".into()]);
    assert!(open.is_empty(), "the leaf's tunnel agent reaches the root's database: {open:?}");
    let open = lab.probe("tunnel-agent", &["root-proxy:3024".into()]);
    assert_eq!(open.len(), 1, "the tunnel agent cannot reach the root proxies' tunnel port");
    eprintln!(
        "[compose e2e] {} leaf addresses x {} ports closed from {} root containers",
        leaf_ips.len(),
        ports.len(),
        ROOT_SERVICES.len()
    );
    phase("isolation checked", t);

    // Both root proxies hold a tunnel from the leaf; stop one: new sessions still work.
    let t = Instant::now();
    for p in ["root-proxy-1", "root-proxy-2"] {
        wait_tunnel(&lab, p, Duration::from_secs(60));
    }
    lab.compose(&["stop", "root-proxy-1"], Duration::from_secs(60)).ok("compose stop root-proxy-1");
    assert!(lab.inspect("root-proxy-1", "{{.State.Status}}").starts_with("exited"), "root-proxy-1 still runs");
    for (i, node) in ["leaf-node-1", "leaf-node-2", "leaf-node-1", "leaf-node-2", "leaf-node-1"].iter().enumerate() {
        let out = ssh_hostname(&lab, node);
        assert_eq!(out.code, 0, "session {i} to {node} after root-proxy-1 stopped: {out:?}");
        assert_eq!(out.stdout.trim(), *node);
    }
    // A fresh login goes through the remaining proxy too.
    let fresh = lab
        .client(&format!(
            "export TSH_HOME=/tmp/after-stop; echo {PASSWORD} | tsh login --insecure >/dev/null && tsh ssh --cluster={LEAF} visitor@leaf-node-2 hostname"
        ))
        .ok("login and session after root-proxy-1 stopped");
    assert_eq!(fresh.stdout.trim(), "leaf-node-2");
    phase("sessions with root-proxy-1 stopped", t);

    // Started again, root-proxy-1 gets a tunnel back within seconds and carries sessions alone.
    let t = Instant::now();
    lab.compose(&["start", "root-proxy-1"], Duration::from_secs(60)).ok("compose start root-proxy-1");
    wait_tunnel(&lab, "root-proxy-1", Duration::from_secs(30));
    phase("root-proxy-1 restarted with a tunnel", t);
    lab.compose(&["stop", "root-proxy-2"], Duration::from_secs(60)).ok("compose stop root-proxy-2");
    for node in ["leaf-node-1", "leaf-node-2"] {
        let out = ssh_hostname(&lab, node);
        assert_eq!(out.code, 0, "session to {node} with only the restarted root-proxy-1: {out:?}");
        assert_eq!(out.stdout.trim(), node);
    }
    start_healthy(&lab, "root-proxy-2", Duration::from_secs(90));
    wait_tunnel(&lab, "root-proxy-2", Duration::from_secs(30));

    high_availability(&lab);

    // Everything goes: containers, networks, volumes.
    let t = Instant::now();
    let project = lab.project.clone();
    lab.down().ok("compose down -v --remove-orphans");
    let label = format!("label=com.docker.compose.project={project}");
    let name = format!("name={project}_");
    for (what, args) in [
        ("containers", vec!["ps", "-aq", "--filter", &label]),
        ("networks", vec!["network", "ls", "-q", "--filter", &label]),
        ("networks", vec!["network", "ls", "-q", "--filter", &name]),
        ("volumes", vec!["volume", "ls", "-q", "--filter", &label]),
        ("volumes", vec!["volume", "ls", "-q", "--filter", &name]),
    ] {
        let out = docker(&args).ok(&format!("docker {}", args.join(" ")));
        assert!(out.stdout.trim().is_empty(), "{what} of {project} left behind: {}", out.stdout);
    }
    phase("torn down", t);
    phase("total", total);
}

/// The root control plane loses one auth replica and one proxy (kill -9) while users work.
fn high_availability(lab: &Lab) {
    let t = Instant::now();
    // Sessions already running when root-auth-a dies finish normally.
    std::thread::scope(|scope| {
        let long = |target: String| {
            scope.spawn(move || lab.client(&format!("tsh ssh {target} 'sleep 6; echo still-here'")))
        };
        let running = [long("visitor@root-node-1".into()), long(format!("--cluster={LEAF} visitor@leaf-node-1"))];
        std::thread::sleep(Duration::from_secs(3));
        kill(lab, "root-auth-a");
        for (i, h) in running.into_iter().enumerate() {
            let out = h.join().expect("session thread");
            assert_eq!(out.code, 0, "session {i}, running while root-auth-a was killed: {out:?}");
            assert!(out.stdout.contains("still-here"), "session {i} was cut: {out:?}");
        }
    });
    // And one root proxy too: new sessions go through the others.
    kill(lab, "root-proxy-1");
    sessions_everywhere(lab, 3, "with root-auth-a and root-proxy-1 killed");
    phase("sessions with root-auth-a and root-proxy-1 killed", t);

    // What needs auth goes to root-auth-b: a fresh login, and a write with tctl (the client's
    // tctl lists both replicas).
    let t = Instant::now();
    let fresh = lab
        .client(&format!(
            "export TSH_HOME=/tmp/after-auth-kill; echo {PASSWORD} | tsh login --insecure >/dev/null && tsh ssh visitor@root-node-1 hostname"
        ))
        .ok("login and session with root-auth-a killed");
    assert_eq!(fresh.stdout.trim(), "root-node-1");
    lab.client("tctl users add ha-probe --roles=access --logins=visitor").ok("tctl users add with root-auth-a killed");
    phase("login and tctl write through root-auth-b", t);

    // root-auth-a comes back; root-auth-b goes: the user written through b is read through a,
    // and sessions keep working on a alone.
    let t = Instant::now();
    start_healthy(lab, "root-auth-a", Duration::from_secs(120));
    start_healthy(lab, "root-proxy-1", Duration::from_secs(90));
    kill(lab, "root-auth-b");
    let user = lab.client("tctl get user/ha-probe").ok("tctl get user/ha-probe through root-auth-a");
    assert!(user.stdout.contains("ha-probe"), "the user written through root-auth-b is missing: {user:?}");
    sessions_everywhere(lab, 2, "with root-auth-b killed");
    let fresh = lab
        .client(&format!(
            "export TSH_HOME=/tmp/after-swap; echo {PASSWORD} | tsh login --insecure >/dev/null && tsh ssh --cluster={LEAF} visitor@leaf-node-2 hostname"
        ))
        .ok("login and session with only root-auth-a");
    assert_eq!(fresh.stdout.trim(), "leaf-node-2");
    start_healthy(lab, "root-auth-b", Duration::from_secs(120));
    phase("replicas swapped: written through one, read through the other", t);
}
