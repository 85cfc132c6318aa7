//! The real processes of the benchmark: the root cluster (auth and one proxy, restartable
//! on the same ports and data), the one real leaf (auth, node, tunnel agent) and `tsh`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::BenchError;
use crate::procs::{Proc, Run, binary, free_port, run_cmd, wait_for, wait_port};

/// Longest a `tctl` or `tsh` command may take.
const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a service may take to open its ports.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Paths of the built binaries.
#[derive(Debug, Clone)]
pub struct Bins {
    pub auth: PathBuf,
    pub proxy: PathBuf,
    pub node: PathBuf,
    pub agent: PathBuf,
    pub tctl: PathBuf,
    pub tsh: PathBuf,
}

impl Bins {
    /// Finds every binary in `dir`, naming the first one missing.
    pub fn find(dir: &Path) -> Result<Bins, BenchError> {
        Ok(Bins {
            auth: binary(dir, "portcullis-auth")?,
            proxy: binary(dir, "portcullis-proxy")?,
            node: binary(dir, "portcullis-node")?,
            agent: binary(dir, "portcullis-tunnel-agent")?,
            tctl: binary(dir, "tctl")?,
            tsh: binary(dir, "tsh")?,
        })
    }
}

/// Environment every child gets: plain (uncoloured) logs, so the proxy log can be read.
fn plain(cmd: &mut Command) -> &mut Command {
    cmd.env("NO_COLOR", "1").env_remove("RUST_LOG")
}

/// An auth service of either cluster.
pub struct Auth {
    pub name: String,
    pub dir: PathBuf,
    pub port: u16,
    pub proc: Proc,
    tctl: PathBuf,
}

impl Auth {
    /// Writes the config and starts `portcullis-auth` for cluster `name` in `dir`; waits
    /// until it listens and the admin identity for `tctl` exists.
    pub fn start(bins: &Bins, dir: &Path, name: &str, offline_after: &str, args: &[&str]) -> Result<Auth, BenchError> {
        std::fs::create_dir_all(dir).map_err(|e| BenchError::io(format!("creating {}", dir.display()), e))?;
        let port = free_port()?;
        let cfg = format!(
            "version: v3\nteleport:\n  nodename: {name}-auth\n  data_dir: {data}\n  log: {{severity: INFO}}\nauth_service:\n  cluster_name: {name}\n  listen_addr: 127.0.0.1:{port}\n  tokens: []\n  tunnel_offline_after: {offline_after}\n",
            data = dir.join("auth").display(),
        );
        let path = dir.join("auth.yaml");
        std::fs::write(&path, cfg).map_err(|e| BenchError::io(format!("writing {}", path.display()), e))?;
        let proc = Proc::spawn(
            &format!("{name} auth"),
            plain(Command::new(&bins.auth).arg("start").arg("-c").arg(&path).args(args)),
            dir.join("auth.log"),
        )?;
        wait_port(port, START_TIMEOUT)?;
        let admin = dir.join("auth/admin-identity.json");
        wait_for("the auth service's admin identity", START_TIMEOUT, || admin.exists().then_some(()))?;
        Ok(Auth { name: name.to_string(), dir: dir.to_path_buf(), port, proc, tctl: bins.tctl.clone() })
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs `tctl -c auth.yaml <args>`; fails unless it exits 0.
    pub fn tctl(&self, args: &[&str]) -> Result<Run, BenchError> {
        self.tctl_in(args, None)
    }

    pub fn tctl_in(&self, args: &[&str], stdin: Option<&str>) -> Result<Run, BenchError> {
        let mut cmd = Command::new(&self.tctl);
        cmd.arg("-c").arg(self.dir.join("auth.yaml")).args(args);
        run_cmd(plain(&mut cmd), stdin, CMD_TIMEOUT)?.ok(&format!("tctl {}", args.join(" ")))
    }

    /// A dynamic token of type `kind`, made with `tctl tokens add --format=json`.
    pub fn token(&self, kind: &str, ttl: &str) -> Result<String, BenchError> {
        let out = self.tctl(&["tokens", "add", &format!("--type={kind}"), &format!("--ttl={ttl}"), "--format=json"])?;
        let v: serde_json::Value =
            serde_json::from_str(out.stdout.trim()).map_err(|e| BenchError::parse("tctl tokens add --format=json", e))?;
        v["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| BenchError::parse("tctl tokens add --format=json", "no \"token\" field"))
    }

    /// Writes `text` to `file` in the cluster's directory and `tctl create`s it.
    pub fn create(&self, file: &str, text: &str) -> Result<Run, BenchError> {
        let path = self.dir.join(file);
        std::fs::write(&path, text).map_err(|e| BenchError::io(format!("writing {}", path.display()), e))?;
        self.tctl(&["create", &path.display().to_string()])
    }

    /// The remote clusters as the root auth sees them (`tctl get rc --format=json`).
    pub fn remote_clusters(&self) -> Result<Vec<RcStatus>, BenchError> {
        let out = self.tctl(&["get", "rc", "--format=json"])?;
        parse_rcs(&out.stdout)
    }
}

/// One remote cluster's status.
#[derive(Debug, Clone)]
pub struct RcStatus {
    pub name: String,
    pub online: bool,
    pub last_heartbeat: Option<time::OffsetDateTime>,
}

/// Reads `tctl get rc --format=json` (an array; empty output when there are none).
pub fn parse_rcs(text: &str) -> Result<Vec<RcStatus>, BenchError> {
    let what = "tctl get rc --format=json";
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: serde_json::Value = serde_json::from_str(text.trim()).map_err(|e| BenchError::parse(what, e))?;
    let list = match v {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Null => Vec::new(),
        other => vec![other],
    };
    Ok(list
        .iter()
        .map(|r| RcStatus {
            name: r["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            online: r["status"]["connection"] == "online",
            last_heartbeat: r["status"]["last_heartbeat"].as_str().and_then(|s| {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
            }),
        })
        .collect())
}

/// Ports of the root proxy, kept across restarts.
#[derive(Debug, Clone, Copy)]
pub struct ProxyPorts {
    pub web: u16,
    pub ssh: u16,
    pub tunnel: u16,
}

/// The root cluster: auth and one proxy that can be restarted with the same config.
pub struct Root {
    pub auth: Auth,
    pub ports: ProxyPorts,
    pub proxy: Option<Proc>,
    proxy_bin: PathBuf,
    /// Extra environment for the proxy only (`--proxy-env`), e.g. a heap profiler's preload.
    proxy_env: Vec<(String, String)>,
    starts: u32,
}

impl Root {
    pub fn start(
        bins: &Bins,
        dir: &Path,
        name: &str,
        offline_after: &str,
        proxy_env: Vec<(String, String)>,
    ) -> Result<Root, BenchError> {
        let auth = Auth::start(bins, dir, name, offline_after, &[])?;
        let ports = ProxyPorts { web: free_port()?, ssh: free_port()?, tunnel: free_port()? };
        let token = auth.token("proxy", "30m")?;
        // Hundreds of simulated leaves ask for trust from 127.0.0.1 within seconds: lift the
        // per-address limit of anonymous web requests, meant for one client each. All their
        // tunnels come from 127.0.0.1 too: lift the per-address connection cap (1024).
        let cfg = format!(
            "version: v3\nteleport:\n  nodename: {name}-proxy\n  data_dir: {data}\n  auth_server: {auth}\n  auth_token: {token}\n  log: {{severity: INFO}}\nproxy_service:\n  web_listen_addr: 127.0.0.1:{web}\n  listen_addr: 127.0.0.1:{ssh}\n  tunnel_listen_addr: 127.0.0.1:{tunnel}\n  rate_limit: {{burst: 0}}\n  connection_limits: {{max_connections_per_address: 100000, max_connections: 100000}}\n",
            data = dir.join("proxy").display(),
            auth = auth.addr(),
            web = ports.web,
            ssh = ports.ssh,
            tunnel = ports.tunnel,
        );
        let path = dir.join("proxy.yaml");
        std::fs::write(&path, cfg).map_err(|e| BenchError::io(format!("writing {}", path.display()), e))?;
        let mut root = Root { auth, ports, proxy: None, proxy_bin: bins.proxy.clone(), proxy_env, starts: 0 };
        root.start_proxy()?;
        Ok(root)
    }

    /// Starts the proxy (again) with the same config, ports and data directory; each start
    /// logs to its own file. Returns once the web, SSH and tunnel ports accept connections.
    pub fn start_proxy(&mut self) -> Result<(), BenchError> {
        self.starts += 1;
        let dir = &self.auth.dir;
        let p = Proc::spawn(
            "root proxy",
            plain(Command::new(&self.proxy_bin).arg("start").arg("-c").arg(dir.join("proxy.yaml")))
                .envs(self.proxy_env.iter().map(|(k, v)| (k, v))),
            self.proxy_log(),
        )?;
        self.proxy = Some(p);
        for port in [self.ports.web, self.ports.ssh, self.ports.tunnel] {
            wait_port(port, START_TIMEOUT)?;
        }
        Ok(())
    }

    /// The log of the proxy's current (latest) start.
    pub fn proxy_log(&self) -> PathBuf {
        self.proxy_log_n(self.starts)
    }

    /// The log of the proxy's `n`-th start (from 1).
    pub fn proxy_log_n(&self, n: u32) -> PathBuf {
        self.auth.dir.join(format!("proxy-{n}.log"))
    }

    /// How often the proxy was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    pub fn proxy_pid(&self) -> Result<u32, BenchError> {
        self.proxy.as_ref().and_then(Proc::pid).ok_or_else(|| BenchError::Other("the root proxy is not running".into()))
    }

    pub fn web_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.web)
    }

    pub fn tunnel_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.tunnel)
    }
}

/// The one real leaf cluster: auth (--insecure: the root's HTTPS certificate is
/// self-signed), a node and the real tunnel agent binary.
pub struct RealLeaf {
    pub auth: Auth,
    pub node_name: String,
    _node: Proc,
    _agent: Proc,
}

impl RealLeaf {
    pub fn start(bins: &Bins, dir: &Path, name: &str, node_name: &str) -> Result<RealLeaf, BenchError> {
        let auth = Auth::start(bins, dir, name, "15s", &["--insecure"])?;
        let node_port = free_port()?;
        let node_cfg = dir.join("node.yaml");
        std::fs::write(&node_cfg, format!("version: v3\nssh_service:\n  listen_addr: 127.0.0.1:{node_port}\n"))
            .map_err(|e| BenchError::io(format!("writing {}", node_cfg.display()), e))?;
        let token = auth.token("node", "30m")?;
        let node = Proc::spawn(
            "real-leaf node",
            plain(
                Command::new(&bins.node)
                    .args(["start", "--insecure"])
                    .arg(format!("--token={token}"))
                    .arg(format!("--auth-server={}", auth.addr()))
                    .arg("--data-dir")
                    .arg(dir.join("node"))
                    .arg(format!("--nodename={node_name}"))
                    .arg("--labels=env=bench")
                    .arg("-c")
                    .arg(&node_cfg),
            ),
            dir.join("node.log"),
        )?;
        wait_port(node_port, START_TIMEOUT)?;
        let token = auth.token("proxy", "30m")?;
        let agent = Proc::spawn(
            "real-leaf tunnel agent",
            plain(
                Command::new(&bins.agent)
                    .args(["start", "--insecure"])
                    .arg(format!("--token={token}"))
                    .arg(format!("--auth-server={}", auth.addr()))
                    .arg("--data-dir")
                    .arg(dir.join("agent"))
                    .arg(format!("--nodename={name}-agent")),
            ),
            dir.join("agent.log"),
        )?;
        Ok(RealLeaf { auth, node_name: node_name.to_string(), _node: node, _agent: agent })
    }

    /// The leaf role root users are mapped to, and trust with the root through a
    /// `trusted_cluster` resource (role map: root `access` -> leaf `visitor`).
    pub fn trust_root(&self, root: &Root, login: &str, token: &str) -> Result<(), BenchError> {
        let role = format!(
            "kind: role\nversion: v5\nmetadata:\n  name: visitor\nspec:\n  allow:\n    logins:\n      - {login}\n    node_labels:\n      '*': '*'\n"
        );
        self.auth.create("visitor.yaml", &role)?;
        let tc = format!(
            "kind: trusted_cluster\nversion: v2\nmetadata:\n  name: {root_name}\nspec:\n  enabled: true\n  token: {token}\n  tunnel_addr: {tunnel}\n  web_proxy_addr: {web}\n  role_map:\n    - remote: \"access\"\n      local: [\"visitor\"]\n",
            root_name = root.auth.name,
            tunnel = root.tunnel_addr(),
            web = root.web_addr(),
        );
        self.auth.create("trusted_cluster.yaml", &tc)?;
        Ok(())
    }
}

/// A `tsh` profile directory.
pub struct Tsh {
    pub home: PathBuf,
    bin: PathBuf,
}

impl Tsh {
    pub fn new(bins: &Bins, dir: &Path) -> Result<Tsh, BenchError> {
        let home = dir.join("tsh");
        std::fs::create_dir_all(&home).map_err(|e| BenchError::io(format!("creating {}", home.display()), e))?;
        Ok(Tsh { home, bin: bins.tsh.clone() })
    }

    /// Runs tsh; returns the run whatever its exit code.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<Run, BenchError> {
        let mut cmd = Command::new(&self.bin);
        cmd.env("TSH_HOME", &self.home).args(args);
        run_cmd(plain(&mut cmd), stdin, CMD_TIMEOUT)
    }

    /// `tsh login` with the password on standard input.
    pub fn login(&self, proxy: &str, user: &str, password: &str) -> Result<(), BenchError> {
        let args = ["login", "--insecure", &format!("--proxy={proxy}"), &format!("--user={user}")];
        self.run(&args, Some(&format!("{password}\n")))?.ok("tsh login").map(drop)
    }
}
