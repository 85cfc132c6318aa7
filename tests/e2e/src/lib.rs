//! Harness for end-to-end tests: starts the real binaries on free loopback ports in a
//! temporary directory, runs `tctl` and `tsh` against them, and kills everything on drop.
// Test code: a panic is how it fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

pub mod otlp;

mod diag;
pub use diag::*;
mod postgres;
pub use postgres::*;
mod ha;
pub use ha::*;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Environment added to every process the harness starts (tsh, tctl and services), e.g.
/// `OTEL_EXPORTER_OTLP_ENDPOINT` for tracing tests. Tests of one binary share it.
static CHILD_ENV: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// Adds `key=value` to the environment of every process started from now on.
pub fn set_child_env(key: &str, value: &str) {
    if let Ok(mut env) = CHILD_ENV.lock() {
        env.retain(|(k, _)| k != key);
        env.push((key.to_string(), value.to_string()));
    }
}

fn apply_child_env(cmd: &mut Command) {
    if let Ok(env) = CHILD_ENV.lock() {
        for (k, v) in env.iter() {
            cmd.env(k, v);
        }
    }
}

/// Directory holding the workspace's built binaries (the tests' own target dir).
pub fn bin_dir() -> PathBuf {
    // current_exe is target/<profile>/deps/<test>-<hash>; binaries live one level up.
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

/// Path of a workspace binary; panics with a hint when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(p.exists(), "{} is missing: run `cargo build --workspace --bins` first", p.display());
    p
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Waits until `f` returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for a TCP port to accept connections.
pub fn wait_port(port: u16) {
    wait_for(&format!("port {port}"), Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
}

/// A started process, killed (and reaped) on drop. Its output goes to a log file.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Proc {
        apply_child_env(cmd);
        let f = std::fs::File::create(&log).expect("log file");
        let f2 = f.try_clone().expect("log file clone");
        let child = cmd
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2))
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc { name: name.to_string(), child: Some(child), log }
    }

    /// A Proc with no process (killing it does nothing), replaced before use.
    pub(crate) fn placeholder(name: &str) -> Proc {
        Proc { name: name.to_string(), child: None, log: PathBuf::new() }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM and waits for exit (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit by itself; returns its status code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let c = self.child.as_mut()?;
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(s)) = c.try_wait() {
                self.child = None;
                return Some(s.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The result of running a client command.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Panics with both streams unless the command succeeded.
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "command failed:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        self
    }
}

/// Runs a command with optional stdin and a timeout of 60 s.
pub fn run_cmd(cmd: &mut Command, stdin: Option<&str>) -> Run {
    apply_child_env(cmd);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    if let Some(input) = stdin {
        if let Some(mut s) = child.stdin.take() {
            let _ = s.write_all(input.as_bytes());
        }
    }
    let start = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Run::from(child.wait_with_output().expect("output"))
}

/// The Unix login tests use on nodes: a user created for the tests when running as
/// root, else the current user (a non-root node runs every session as itself).
pub fn test_login() -> String {
    unix_login("pcl-e2e")
}

/// A Unix login named `name` for sessions on nodes: created when running as root, else
/// the current user (a non-root node runs every session as itself).
pub fn unix_login(name: &str) -> String {
    if nix::unistd::geteuid().is_root() {
        if nix::unistd::User::from_name(name).ok().flatten().is_none() {
            let _ = Command::new("useradd").args(["-m", "-s", "/bin/sh", name]).status();
        }
        name.to_string()
    } else {
        std::env::var("USER").unwrap_or_else(|_| "root".into())
    }
}

/// Home directory of a Unix user.
pub fn home_of(login: &str) -> String {
    nix::unistd::User::from_name(login)
        .ok()
        .flatten()
        .map(|u| u.dir.display().to_string())
        .unwrap_or_default()
}

/// Ports of one cluster.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub auth: u16,
    pub web: u16,
    pub ssh: u16,
    pub tunnel: u16,
}

impl Ports {
    pub fn pick() -> Ports {
        Ports { auth: free_port(), web: free_port(), ssh: free_port(), tunnel: free_port() }
    }
}

/// One cluster: auth and proxy processes, nodes added on demand.
pub struct Cluster {
    pub name: String,
    pub dir: PathBuf,
    pub ports: Ports,
    pub auth: Proc,
    pub proxy: Option<Proc>,
    pub nodes: BTreeMap<String, (Proc, u16)>,
    pub agent: Option<Proc>,
    static_tokens: Vec<String>,
    auth_args: Vec<String>,
    /// Further auth processes of this cluster (replicas 1.., `auth` is replica 0), sharing
    /// `storage`; proxies, nodes and agents started afterwards are given every address.
    pub replicas: Vec<AuthReplica>,
    /// YAML lines added under `teleport:` of every auth config (e.g. `storage:`).
    auth_teleport_extra: String,
    /// YAML lines added under `auth_service:` of every auth config (e.g. the shared KEK file).
    auth_service_extra: String,
}

impl Cluster {
    /// Writes the auth config and starts the auth service; waits until it answers.
    pub fn start_auth(root: &Path, name: &str, static_tokens: &[&str]) -> Cluster {
        Self::start_auth_with(root, name, static_tokens, &[])
    }

    /// Like [`Cluster::start_auth`], with extra `start` flags (e.g. `--insecure`).
    pub fn start_auth_with(root: &Path, name: &str, static_tokens: &[&str], args: &[&str]) -> Cluster {
        Self::start_auth_in(&root.join(name), name, static_tokens, args)
    }

    /// Starts an auth service for cluster `name` with its files in `dir`.
    pub fn start_auth_in(dir: &Path, name: &str, static_tokens: &[&str], args: &[&str]) -> Cluster {
        Self::start_auth_full(dir, name, static_tokens, args, String::new(), String::new())
    }

    /// Starts replica 0 of cluster `name` with extra YAML under `teleport:` and `auth_service:`.
    pub(crate) fn start_auth_full(
        dir: &Path,
        name: &str,
        static_tokens: &[&str],
        args: &[&str],
        auth_teleport_extra: String,
        auth_service_extra: String,
    ) -> Cluster {
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let ports = Ports::pick();
        let mut c = Cluster {
            name: name.to_string(),
            dir,
            ports,
            auth: Proc::placeholder("auth"),
            proxy: None,
            nodes: BTreeMap::new(),
            agent: None,
            static_tokens: static_tokens.iter().map(|s| s.to_string()).collect(),
            auth_args: args.iter().map(|s| s.to_string()).collect(),
            replicas: Vec::new(),
            auth_teleport_extra,
            auth_service_extra,
        };
        c.auth = c.spawn_auth_as("auth", ports.auth);
        c
    }

    /// Writes `<base>.yaml` (data in `<base>/`, log `<base>.log`) for an auth process of this
    /// cluster listening on `port`, starts it, and waits until it answers.
    pub(crate) fn spawn_auth_as(&self, base: &str, port: u16) -> Proc {
        let dir = &self.dir;
        let name = &self.name;
        let tokens: Vec<String> = self.static_tokens.iter().map(|t| format!("\"{t}\"")).collect();
        let cfg = format!(
            "version: v3\nteleport:\n  nodename: {name}-{base}\n  data_dir: {data}\n  log: {{severity: DEBUG}}\n{textra}auth_service:\n  cluster_name: {name}\n  listen_addr: 127.0.0.1:{port}\n  tokens: [{tokens}]\n  tunnel_offline_after: 6s\n{aextra}",
            data = dir.join(base).display(),
            tokens = tokens.join(", "),
            textra = self.auth_teleport_extra,
            aextra = self.auth_service_extra,
        );
        let path = dir.join(format!("{base}.yaml"));
        std::fs::write(&path, cfg).expect("auth config");
        let _ = std::fs::remove_file(dir.join(base).join("admin-identity.json"));
        let mut p = Proc::spawn(
            base,
            Command::new(bin("portcullis-auth")).arg("start").arg("-c").arg(&path).args(&self.auth_args),
            dir.join(format!("{base}.log")),
        );
        let ready = dir.join(base).join("admin-identity.json");
        wait_for(&format!("{base} of {name} on port {port}"), Duration::from_secs(30), || {
            if !p.is_running() {
                panic!("{base} of {name} exited:\n{}", p.log_text());
            }
            (std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && ready.exists()).then_some(())
        });
        p
    }

    /// Stops and starts the auth service with the same configuration and data.
    pub fn restart_auth(&mut self) {
        self.auth.stop();
        self.auth = self.spawn_auth_as("auth", self.ports.auth);
    }

    pub fn auth_config(&self) -> PathBuf {
        self.dir.join("auth.yaml")
    }

    /// Runs tctl against this cluster's auth on its host.
    pub fn tctl(&self, args: &[&str]) -> Run {
        self.tctl_in(args, None)
    }

    pub fn tctl_in(&self, args: &[&str], stdin: Option<&str>) -> Run {
        run_cmd(Command::new(bin("tctl")).arg("-c").arg(self.auth_config()).args(args), stdin)
    }

    /// A dynamic token of the given type, made with tctl.
    pub fn token(&self, kind: &str) -> String {
        let out = self.tctl(&["tokens", "add", &format!("--type={kind}"), "--ttl=10m", "--format=json"]).ok();
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("tokens add --format=json printed {:?}: {e}", out.stdout));
        v["token"].as_str().expect("token field").to_string()
    }

    /// Starts the proxy with a fresh proxy token.
    pub fn start_proxy(&mut self) {
        self.start_proxy_with(&[])
    }

    /// Like [`Cluster::start_proxy`], with extra `start` flags (e.g. `--diag-addr=..`).
    pub fn start_proxy_with(&mut self, args: &[&str]) {
        self.start_proxy_extra(args, "")
    }

    /// Like [`Cluster::start_proxy_with`], with lines added under `proxy_service:` (e.g.
    /// `  rate_limit: {burst: 0}\n` for load from one address).
    pub fn start_proxy_extra(&mut self, args: &[&str], proxy_extra: &str) {
        let token = self.token("proxy");
        let d = &self.dir;
        let cfg = format!(
            "version: v3\nteleport:\n  nodename: {name}-proxy\n  data_dir: {data}\n  {auth}\n  auth_token: {token}\n  log: {{severity: DEBUG}}\nproxy_service:\n  web_listen_addr: 127.0.0.1:{web}\n  listen_addr: 127.0.0.1:{ssh}\n  tunnel_listen_addr: 127.0.0.1:{tunnel}\n{proxy_extra}",
            name = self.name,
            data = d.join("proxy").display(),
            auth = self.auth_servers_yaml(),
            web = self.ports.web,
            ssh = self.ports.ssh,
            tunnel = self.ports.tunnel,
        );
        let path = d.join("proxy.yaml");
        std::fs::write(&path, cfg).expect("proxy config");
        let p = Proc::spawn(
            "proxy",
            Command::new(bin("portcullis-proxy")).arg("start").arg("-c").arg(&path).args(args),
            d.join("proxy.log"),
        );
        wait_port(self.ports.web);
        wait_port(self.ports.ssh);
        self.proxy = Some(p);
    }

    /// Stops the proxy and starts it again with its configuration and identity (no join, so
    /// the auth service may be down), with `args`; it logs to `proxy-restarted.log`.
    pub fn restart_proxy_with(&mut self, args: &[&str]) {
        if let Some(mut p) = self.proxy.take() {
            p.stop();
        }
        let log = self.dir.join("proxy-restarted.log");
        let p = Proc::spawn(
            "proxy",
            Command::new(bin("portcullis-proxy")).arg("start").arg("-c").arg(self.dir.join("proxy.yaml")).args(args),
            log,
        );
        wait_port(self.ports.web);
        wait_port(self.ports.ssh);
        self.proxy = Some(p);
    }

    /// Starts a node named `name` with labels `k=v,..`; returns its SSH port.
    pub fn start_node(&mut self, name: &str, labels: &str) -> u16 {
        self.start_node_with(name, labels, &[])
    }

    /// Like [`Cluster::start_node`], with extra `start` flags (e.g. `--diag-addr=..`).
    pub fn start_node_with(&mut self, name: &str, labels: &str, args: &[&str]) -> u16 {
        let token = self.token("node");
        let port = free_port();
        let p = Proc::spawn(
            name,
            Command::new(bin("portcullis-node"))
                .args(["start", "--debug", "--insecure"])
                .arg(format!("--token={token}"))
                .args(self.auth_server_flag())
                .arg("--data-dir")
                .arg(self.dir.join(name))
                .arg(format!("--nodename={name}"))
                .arg(format!("--labels={labels}"))
                .arg("-c")
                .arg(self.node_config(name, port))
                .args(args),
            self.dir.join(format!("{name}.log")),
        );
        wait_port(port);
        self.nodes.insert(name.to_string(), (p, port));
        port
    }

    fn node_config(&self, name: &str, port: u16) -> PathBuf {
        let path = self.dir.join(format!("{name}.yaml"));
        // With several auth servers the list goes in the file (the flag takes one address).
        let teleport = if self.replicas.is_empty() {
            String::new()
        } else {
            format!("teleport:\n  {}\n", self.auth_servers_yaml())
        };
        let cfg = format!("version: v3\n{teleport}ssh_service:\n  listen_addr: 127.0.0.1:{port}\n");
        std::fs::write(&path, cfg).expect("node config");
        path
    }

    /// Starts this (leaf) cluster's tunnel agent, joined with a proxy token.
    pub fn start_agent(&mut self) {
        self.start_agent_with(&[])
    }

    /// Like [`Cluster::start_agent`], with extra `start` flags (e.g. `--diag-addr=..`).
    pub fn start_agent_with(&mut self, args: &[&str]) {
        let token = self.token("proxy");
        let p = Proc::spawn(
            "agent",
            Command::new(bin("portcullis-tunnel-agent"))
                .args(["start", "--debug", "--insecure"])
                .arg(format!("--token={token}"))
                .args(self.auth_server_flag())
                .args(self.agent_config())
                .arg("--data-dir")
                .arg(self.dir.join("agent"))
                .arg(format!("--nodename={}-agent", self.name))
                .args(args),
            self.dir.join("agent.log"),
        );
        self.agent = Some(p);
    }

    /// Writes `text` to a file in the cluster's directory and `tctl create`s it.
    pub fn create(&self, file: &str, text: &str, force: bool) -> Run {
        let path = self.dir.join(file);
        std::fs::write(&path, text).expect("resource file");
        let p = path.to_str().expect("utf-8 path");
        if force { self.tctl(&["create", "-f", p]) } else { self.tctl(&["create", p]) }
    }

    /// The tunnel address of this cluster's proxy.
    pub fn tunnel_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.tunnel)
    }

    /// Everything this cluster's processes logged, for secret scans.
    pub fn all_logs(&self) -> String {
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }

    pub fn web_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.web)
    }

    /// Audit events of this cluster's auth service (every replica's log, replica 0 first).
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        let mut text = std::fs::read_to_string(self.dir.join("auth/log/events.log")).unwrap_or_default();
        for r in &self.replicas {
            text.push('\n');
            text.push_str(&std::fs::read_to_string(self.dir.join(&r.base).join("log/events.log")).unwrap_or_default());
        }
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

/// A tsh profile directory with helpers to run tsh in it.
pub struct Tsh {
    pub home: PathBuf,
}

impl Tsh {
    pub fn new(root: &Path, name: &str) -> Tsh {
        let home = root.join(format!("tsh-{name}"));
        std::fs::create_dir_all(&home).expect("tsh home");
        Tsh { home }
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_in(args, None)
    }

    pub fn run_in(&self, args: &[&str], stdin: Option<&str>) -> Run {
        run_cmd(Command::new(bin("tsh")).env("TSH_HOME", &self.home).args(args), stdin)
    }

    /// `tsh login` with a password on stdin.
    pub fn login(&self, proxy: &str, user: &str, password: &str, extra: &[&str]) -> Run {
        let mut args = vec!["login", "--insecure"];
        let p = format!("--proxy={proxy}");
        let u = format!("--user={user}");
        args.push(&p);
        args.push(&u);
        args.extend_from_slice(extra);
        self.run_in(&args, Some(&format!("{password}\n")))
    }

    /// The private key and certificate paths tsh keeps for `user` at `proxy_host`.
    pub fn key_paths(&self, proxy_host: &str, user: &str) -> (PathBuf, PathBuf) {
        let dir = self.home.join("keys").join(proxy_host);
        (dir.join(user), dir.join(format!("{user}-cert.pub")))
    }
}

/// A TCP load balancer for tests: each connection goes to a random backend (as a cloud
/// load balancer in front of several proxies would). Stops when dropped.
pub struct TcpBalancer {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    backends: std::sync::Arc<std::sync::Mutex<Vec<u16>>>,
}

impl TcpBalancer {
    /// Starts with no backends (connections are closed) until [`TcpBalancer::set_backends`].
    pub fn start(backends: Vec<u16>) -> TcpBalancer {
        let backends = std::sync::Arc::new(std::sync::Mutex::new(backends));
        let shared = backends.clone();
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").expect("balancer bind");
        let port = listener.local_addr().expect("balancer addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            let mut n: u64 = 0;
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407 ^ nanos());
                        let list = shared.lock().map(|b| b.clone()).unwrap_or_default();
                        if list.is_empty() {
                            continue;
                        }
                        let backend = list[(n >> 33) as usize % list.len()];
                        std::thread::spawn(move || splice(client, backend));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TcpBalancer { port, stop, backends }
    }

    pub fn set_backends(&self, ports: Vec<u16>) {
        if let Ok(mut b) = self.backends.lock() {
            *b = ports;
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for TcpBalancer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos() as u64).unwrap_or(0)
}

/// Copies bytes both ways between a client and a backend port until either side closes.
fn splice(client: std::net::TcpStream, backend: u16) {
    let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", backend)) else {
        return; // the backend is down: the client sees the connection close
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else { return };
    let up = std::thread::spawn(move || {
        let mut c = client;
        let mut s = server;
        let _ = std::io::copy(&mut c, &mut s);
        let _ = s.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut s2, &mut c2);
    let _ = c2.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

/// An extra proxy of a cluster, started from its own config file.
pub struct ExtraProxy {
    pub proc: Proc,
    pub ports: Ports,
    pub config: PathBuf,
}

impl Cluster {
    /// Starts another proxy of this cluster on its own ports; `tunnel_public` is the tunnel
    /// address it announces to agents (e.g. a load balancer's).
    pub fn add_proxy(&self, name: &str, tunnel_public: &str) -> ExtraProxy {
        let token = self.token("proxy");
        let ports = Ports::pick();
        let cfg = format!(
            "version: v3\nteleport:\n  nodename: {name}\n  data_dir: {data}\n  {auth}\n  auth_token: {token}\n  log: {{severity: DEBUG}}\nproxy_service:\n  web_listen_addr: 127.0.0.1:{web}\n  listen_addr: 127.0.0.1:{ssh}\n  tunnel_listen_addr: 127.0.0.1:{tunnel}\n  tunnel_public_addr: {tunnel_public}\n  shutdown_drain_timeout: 2s\n",
            data = self.dir.join(name).display(),
            auth = self.auth_servers_yaml(),
            web = ports.web,
            ssh = ports.ssh,
            tunnel = ports.tunnel,
        );
        let config = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&config, cfg).expect("proxy config");
        let proc = Self::spawn_proxy_proc(name, &config, &self.dir);
        wait_port(ports.web);
        wait_port(ports.tunnel);
        ExtraProxy { proc, ports, config }
    }

    fn spawn_proxy_proc(name: &str, config: &Path, dir: &Path) -> Proc {
        Proc::spawn(
            name,
            Command::new(bin("portcullis-proxy")).arg("start").arg("-c").arg(config),
            dir.join(format!("{name}.log")),
        )
    }

    /// Starts a stopped extra proxy again with the same configuration and identity.
    pub fn restart_proxy(&self, p: &mut ExtraProxy) {
        p.proc.kill();
        p.proc = Self::spawn_proxy_proc(&p.proc.name.clone(), &p.config, &self.dir);
        wait_port(p.ports.web);
        wait_port(p.ports.tunnel);
    }
}

