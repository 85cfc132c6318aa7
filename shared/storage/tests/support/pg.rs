//! A throwaway PostgreSQL server for tests: initdb into a temp dir, a free port, password
//! (scram) auth for user `portcullis`, TLS with a fresh CA; stopped and removed on drop.
//!
//! initdb and postgres refuse to run as root, so as root every server command runs through
//! `runuser -u postgres`, and the temp dir (under /tmp, which that user can reach) is
//! handed to `postgres`. Without PostgreSQL binaries the tests are skipped with a notice,
//! except with `CI=true`, where they fail: CI must exercise this backend.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    pub password: String,
    /// (uid, gid) of `postgres` when we run as root.
    owner: Option<(u32, u32)>,
}

/// The newest `/usr/lib/postgresql/N/bin` holding a server.
fn find_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

fn postgres_ids() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:"))?;
    let f: Vec<&str> = line.split(':').collect();
    Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl PgServer {
    /// Starts a server, or returns None (after printing why) when PostgreSQL is not installed
    /// and this is not CI.
    pub fn start() -> Option<PgServer> {
        let Some(bin) = find_bin() else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI=true but no PostgreSQL server under /usr/lib/postgresql/*/bin: run scripts/setup.sh");
            }
            eprintln!("NOTICE: PostgreSQL is not installed (/usr/lib/postgresql/*/bin/postgres): skipping this test");
            return None;
        };
        let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
        let owner = if root {
            Some(postgres_ids().expect("running as root needs a `postgres` user (Debian's postgresql package makes it)"))
        } else {
            None
        };
        let dir = tempfile::Builder::new().prefix("portcullis-pg-").tempdir_in("/tmp").unwrap();
        let password = format!("pw-{}-{}", std::process::id(), free_port());
        let server = PgServer { dir, bin, port: free_port(), password, owner };
        server.init();
        server.start_again();
        Some(server)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn give(&self, p: &Path) {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
        }
    }

    /// Runs a server program as the right user, from a directory it can read.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(program);
        let mut cmd = if self.owner.is_some() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args).current_dir("/tmp").output().unwrap()
    }

    fn init(&self) {
        self.give(self.dir.path());
        let pw = self.path("pw");
        std::fs::write(&pw, &self.password).unwrap();
        self.give(&pw);
        let data = self.path("data");
        let out = self.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "portcullis",
                &format!("--pwfile={}", pw.display()),
                "-A",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
            ],
        );
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::remove_file(&pw).unwrap();
        self.write_tls();
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nshared_buffers = 16MB\n\
             max_connections = 60\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            self.port,
            self.dir.path().display(),
            self.path("server.crt").display(),
            self.path("server.key").display(),
        );
        let mut all = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        all.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), all).unwrap();
    }

    /// A CA (`ca.crt`) and a server certificate for `localhost` signed by it.
    fn write_tls(&self) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
        std::fs::write(self.path("ca.crt"), ca.pem()).unwrap();
        std::fs::write(self.path("server.crt"), cert.pem()).unwrap();
        std::fs::write(self.path("server.key"), key.serialize_pem()).unwrap();
        std::fs::set_permissions(self.path("server.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        for f in ["ca.crt", "server.crt", "server.key"] {
            self.give(&self.path(f));
        }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.path("ca.crt")
    }

    /// (Re)starts the server and waits until it accepts connections.
    pub fn start_again(&self) {
        let data = self.path("data");
        let log = self.path("log");
        let out = self.run(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-w", "-t", "60", "start"],
        );
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(out.status.success(), "pg_ctl start failed: {}\n{log_text}", String::from_utf8_lossy(&out.stderr));
    }

    /// Stops the server: `mode` is pg_ctl's (`fast`, or `immediate` for a crash-like stop).
    pub fn stop(&self, mode: &str) {
        let data = self.path("data");
        let out = self.run("pg_ctl", &["-D", data.to_str().unwrap(), "-m", mode, "-w", "stop"]);
        assert!(out.status.success(), "pg_ctl stop failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The connection string tests use (`sslmode` as given).
    pub fn conn_string(&self, sslmode: &str) -> String {
        format!("postgresql://portcullis:{}@127.0.0.1:{}/postgres?sslmode={sslmode}", self.password, self.port)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.path("data");
        let _ = self.run("pg_ctl", &["-D", data.to_str().unwrap_or_default(), "-m", "immediate", "-w", "stop"]);
    }
}
