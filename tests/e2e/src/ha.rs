//! Clusters with several auth processes on one PostgreSQL database and one KEK file, and
//! proxies, nodes and agents given every auth address (`auth_servers`, see docs/architecture.md).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{bin, free_port, run_cmd, Cluster, Postgres, Proc, Run};

/// One auth process of a cluster beyond replica 0 (`Cluster::auth`).
pub struct AuthReplica {
    /// `auth-1`, `auth-2`, ...: config `<base>.yaml`, data `<base>/`, log `<base>.log`.
    pub base: String,
    pub port: u16,
    pub proc: Proc,
}

impl Cluster {
    /// Starts `replicas` (≥ 1) auth processes of cluster `name` sharing `pg` and one KEK file
    /// (`<dir>/<name>/ca-kek`, created by replica 0 on first start). Replica 0 is `auth`.
    pub fn start_ha(root: &Path, name: &str, pg: &Postgres, replicas: usize, static_tokens: &[&str], args: &[&str]) -> Cluster {
        let dir = root.join(name);
        // The conn_string holds a password: it lives in the config file only, never in argv.
        let teleport = format!("  storage:\n    type: postgresql\n    conn_string: \"{}\"\n", pg.conn_string());
        let auth = format!("  ca_key_encryption_key_file: {}\n", dir.join("ca-kek").display());
        let mut c = Cluster::start_auth_full(&dir, name, static_tokens, args, teleport, auth);
        for _ in 1..replicas {
            c.add_auth_replica();
        }
        c
    }

    /// Starts one more auth process of this cluster on its own port and data dir.
    pub fn add_auth_replica(&mut self) -> usize {
        let i = self.replicas.len() + 1;
        let base = format!("auth-{i}");
        let port = free_port();
        let proc = self.spawn_auth_as(&base, port);
        self.replicas.push(AuthReplica { base, port, proc });
        i
    }

    /// Every auth address of this cluster, replica 0 first.
    pub fn auth_addrs(&self) -> Vec<String> {
        std::iter::once(self.ports.auth).chain(self.replicas.iter().map(|r| r.port)).map(|p| format!("127.0.0.1:{p}")).collect()
    }

    /// The `teleport:` line naming this cluster's auth server(s), as a proxy config has it.
    pub(crate) fn auth_servers_yaml(&self) -> String {
        if self.replicas.is_empty() {
            format!("auth_server: 127.0.0.1:{}", self.ports.auth)
        } else {
            format!("auth_servers: [{}]", self.auth_addrs().join(", "))
        }
    }

    /// `--auth-server=..` for one auth; with several the list goes in a config file instead.
    pub(crate) fn auth_server_flag(&self) -> Vec<String> {
        if self.replicas.is_empty() {
            vec![format!("--auth-server=127.0.0.1:{}", self.ports.auth)]
        } else {
            Vec::new()
        }
    }

    /// `-c agent.yaml` listing every auth address, when there are several.
    pub(crate) fn agent_config(&self) -> Vec<String> {
        if self.replicas.is_empty() {
            return Vec::new();
        }
        let path = self.dir.join("agent.yaml");
        std::fs::write(&path, format!("version: v3\nteleport:\n  {}\n", self.auth_servers_yaml())).expect("agent config");
        vec!["-c".into(), path.display().to_string()]
    }

    /// Config file of replica `i` (0 is `auth.yaml`).
    pub fn replica_config(&self, i: usize) -> PathBuf {
        if i == 0 {
            self.auth_config()
        } else {
            self.dir.join(format!("{}.yaml", self.replicas[i - 1].base))
        }
    }

    /// The process of replica `i`.
    pub fn replica(&mut self, i: usize) -> &mut Proc {
        if i == 0 {
            &mut self.auth
        } else {
            &mut self.replicas[i - 1].proc
        }
    }

    /// `kill -9` of replica `i`.
    pub fn kill_replica(&mut self, i: usize) {
        self.replica(i).kill();
    }

    /// Starts replica `i` again with its configuration and data (after a kill or stop).
    pub fn start_replica(&mut self, i: usize) {
        self.replica(i).stop();
        if i == 0 {
            self.auth = self.spawn_auth_as("auth", self.ports.auth);
        } else {
            let (base, port) = (self.replicas[i - 1].base.clone(), self.replicas[i - 1].port);
            self.replicas[i - 1].proc = self.spawn_auth_as(&base, port);
        }
    }

    /// Runs tctl against replica `i` with the admin identity it wrote.
    pub fn tctl_on(&self, i: usize, args: &[&str]) -> Run {
        self.tctl_on_in(i, args, None)
    }

    pub fn tctl_on_in(&self, i: usize, args: &[&str], stdin: Option<&str>) -> Run {
        run_cmd(Command::new(bin("tctl")).arg("-c").arg(self.replica_config(i)).args(args), stdin)
    }

    /// Every log line of replica `i`.
    pub fn replica_log(&mut self, i: usize) -> String {
        self.replica(i).log_text()
    }
}
