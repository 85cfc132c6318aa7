//! A throwaway PostgreSQL server for end-to-end tests: initdb in a temporary directory, one
//! database and one password-authenticated user, on a free loopback port, stopped on drop.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, run_cmd, Run};

/// The user and database the harness creates for Portcullis.
pub const PG_USER: &str = "portcullis";
pub const PG_DATABASE: &str = "portcullis";

/// A running PostgreSQL server owned by the test.
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    /// Holds `data/` and the server log; removed on drop.
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// The superuser's password (for the harness's own checks).
    super_password: String,
    /// The application user's password (in the connection string only).
    password: String,
    /// uid/gid to run the server as when the tests run as root (PostgreSQL refuses root).
    run_as: Option<(u32, u32)>,
}

/// Where Debian (and most distributions) install the server binaries; `PG_BIN` overrides.
fn find_bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN") {
        let p = PathBuf::from(dir);
        return p.join("postgres").exists().then_some(p);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("postgres").exists() && bin.join("initdb").exists() && bin.join("psql").exists())
                .then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// Hex of 16 random bytes from the kernel, for throwaway passwords.
fn random_hex() -> String {
    let mut buf = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut buf);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl Postgres {
    /// Starts a fresh server, or returns None (with a notice on stderr) when PostgreSQL is not
    /// installed. With `CI=true` a missing PostgreSQL fails the test instead: CI must run it.
    pub fn start() -> Option<Postgres> {
        let Some(bin) = find_bin_dir() else {
            let msg = "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (set PG_BIN, or \
                       install Debian's `postgresql` package)";
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{msg}; CI=true, so this test may not be skipped");
            }
            eprintln!("SKIPPED: {msg}");
            return None;
        };
        let run_as = if nix::unistd::geteuid().is_root() {
            let u = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .expect("running as root needs a `postgres` user to run the server as");
            Some((u.uid.as_raw(), u.gid.as_raw()))
        } else {
            None
        };
        let dir = tempfile::Builder::new().prefix("pcl-pg-").tempdir().expect("postgres tempdir");
        if let Some((uid, gid)) = run_as {
            nix::unistd::chown(
                dir.path(),
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .expect("chown the postgres tempdir");
        }
        let mut pg = Postgres {
            port: free_port(),
            bin,
            dir,
            child: None,
            super_password: random_hex(),
            password: random_hex(),
            run_as,
        };
        pg.initdb();
        pg.spawn();
        pg.wait_ready(Duration::from_secs(60));
        let sql = format!(
            "CREATE ROLE {PG_USER} LOGIN PASSWORD '{}';\nCREATE DATABASE {PG_DATABASE} OWNER {PG_USER};\n",
            pg.password
        );
        pg.psql("postgres", &sql).ok();
        Some(pg)
    }

    fn as_server_user(&self, cmd: &mut Command) {
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir(self.dir.path());
    }

    fn initdb(&self) {
        // The superuser password goes through a file, never argv; removed right after.
        let pwfile = self.dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{}\n", self.super_password)).expect("pwfile");
        if let Some((uid, gid)) = self.run_as {
            let _ = nix::unistd::chown(
                &pwfile,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            );
        }
        let mut cmd = Command::new(self.bin.join("initdb"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-U", "postgres", "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()));
        self.as_server_user(&mut cmd);
        let out = run_cmd(&mut cmd, None);
        let _ = std::fs::remove_file(&pwfile);
        assert_eq!(out.code, 0, "initdb failed:\n{}\n{}", out.stdout, out.stderr);
    }

    fn spawn(&mut self) {
        let log = self.log_path();
        let f = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("postgres log");
        let f2 = f.try_clone().expect("postgres log clone");
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200", "-c", "shared_buffers=32MB"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.path().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2));
        self.as_server_user(&mut cmd);
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("starting postgres: {e}")));
    }

    /// Waits until the server answers queries (it accepts TCP before it can serve them).
    fn wait_ready(&self, timeout: Duration) {
        let start = Instant::now();
        loop {
            let r = self.psql("postgres", "SELECT 1;");
            if r.code == 0 {
                return;
            }
            if start.elapsed() > timeout {
                panic!("postgres did not become ready in {timeout:?}: {}\nlog:\n{}", r.stderr, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `127.0.0.1:port`, what auth may print about the database.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The connection string for `teleport.storage.conn_string` (plain TCP on loopback).
    pub fn conn_string(&self) -> String {
        format!("postgresql://{PG_USER}:{}@127.0.0.1:{}/{PG_DATABASE}?sslmode=disable", self.password, self.port)
    }

    /// The application user's password, so tests can check it never shows up in logs.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Runs SQL (from stdin) as the superuser in `db`; passwords go through the environment.
    pub fn psql(&self, db: &str, sql: &str) -> Run {
        run_cmd(
            Command::new(self.bin.join("psql"))
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"])
                .arg("-p")
                .arg(self.port.to_string())
                .arg("-d")
                .arg(db)
                .env("PGPASSWORD", &self.super_password)
                .env("PGCONNECT_TIMEOUT", "3"),
            Some(sql),
        )
    }

    /// Fast shutdown (SIGINT: clients are disconnected, the server stops cleanly).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a stopped server again on the same port and data, and waits until it answers.
    pub fn start_again(&mut self) {
        self.spawn();
        self.wait_ready(Duration::from_secs(60));
    }

    /// Stops and starts the server (clients see their connections drop).
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
