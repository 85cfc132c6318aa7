//! Child processes for the benchmark: started with their output in a log file, killed on
//! drop (also when the benchmark panics), and one-shot commands with a timeout.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::BenchError;

/// Every child still running, so an interrupted benchmark (Ctrl-C, SIGTERM: no unwinding,
/// no Drop) can kill them before exiting.
static CHILDREN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn register(pid: u32) {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
}

fn unregister(pid: u32) {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).retain(|p| *p != pid);
}

/// SIGKILLs every registered child (for the signal handler; Drop does this otherwise).
pub fn kill_all_children() {
    let pids = std::mem::take(&mut *CHILDREN.lock().unwrap_or_else(|p| p.into_inner()));
    for pid in pids {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> Result<u16, BenchError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::io("picking a free port", e))
}

/// Polls `f` every 100 ms until it returns Some, or fails with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T, BenchError> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(BenchError::Timeout { what: what.to_string(), secs: timeout.as_secs() });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for a loopback TCP port to accept connections.
pub fn wait_port(port: u16, timeout: Duration) -> Result<(), BenchError> {
    wait_for(&format!("127.0.0.1:{port} to accept connections"), timeout, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .map(drop)
}

/// Path of a built binary in `dir`.
pub fn binary(dir: &Path, name: &str) -> Result<PathBuf, BenchError> {
    let p = dir.join(name);
    if p.is_file() { Ok(p) } else { Err(BenchError::MissingBinary(p.display().to_string())) }
}

/// A started process, killed (and reaped) on drop. Its output goes to a log file.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Result<Proc, BenchError> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| BenchError::io(format!("opening {}", log.display()), e))?;
        let f2 = f.try_clone().map_err(|e| BenchError::io("cloning a log file handle", e))?;
        let child = cmd
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2))
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| BenchError::io(format!("starting {name} ({cmd:?})"), e))?;
        register(child.id());
        Ok(Proc { name: name.to_string(), child: Some(child), log })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends SIGTERM and waits for the exit (SIGKILL after `grace`); returns when it is gone.
    pub fn terminate(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            unregister(c.id());
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
            }
            let start = Instant::now();
            while start.elapsed() < grace {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            tracing::warn!("{} did not stop within {grace:?} of SIGTERM: killing it", self.name);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            unregister(c.id());
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a one-shot command printed.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `cmd` (with `stdin` fed to it) to completion within `timeout`.
pub fn run_cmd(cmd: &mut Command, stdin: Option<&str>, timeout: Duration) -> Result<Run, BenchError> {
    let shown = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| BenchError::io(format!("running {shown}"), e))?;
    if let Some(input) = stdin
        && let Some(mut s) = child.stdin.take()
    {
        let _ = s.write_all(input.as_bytes());
    }
    let pid = child.id();
    // A watchdog kills a stuck command (which ends the wait below); the wait itself runs
    // here so the measured time is not rounded to a polling interval.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(timeout) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            return true;
        }
        false
    });
    let out = child.wait_with_output();
    let elapsed = start.elapsed();
    let _ = done_tx.send(());
    if watchdog.join().unwrap_or(false) {
        return Err(BenchError::Timeout { what: shown, secs: timeout.as_secs() });
    }
    let out = out.map_err(|e| BenchError::io(format!("waiting for {shown}"), e))?;
    Ok(Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed,
    })
}

impl Run {
    /// The run itself, or an error with both streams unless it exited 0.
    pub fn ok(self, cmd: &str) -> Result<Run, BenchError> {
        if self.code == 0 {
            Ok(self)
        } else {
            Err(BenchError::Command { cmd: cmd.to_string(), code: self.code, stdout: self.stdout, stderr: self.stderr })
        }
    }
}

/// The Unix login sessions run as: a dedicated user (created if needed) when running as
/// root, else the current user (a non-root node runs every session as itself).
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
