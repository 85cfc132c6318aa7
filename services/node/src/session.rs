//! Session processes: starting a login's shell or command, with or without a pty, and
//! pumping its input and output until it exits. Nothing here knows about SSH, so it can be
//! tested alone.

use std::future::Future;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::users::LoginUser;

/// PATH given to every session: the client may not choose it (see [`env_allowed`]).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long output is still read after the process exits: a background descendant may
/// hold the pty or pipes open forever, and the session must still end.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// How long a hung-up session gets to exit before it is killed.
const HANGUP_GRACE: Duration = Duration::from_secs(2);

/// Why a session process could not start.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot allocate a pty: {0}")]
    Pty(String),
    #[error("cannot start {shell}: {source}")]
    Spawn { shell: String, source: io::Error },
}

/// The terminal a client asked for.
#[derive(Debug, Clone, Default)]
pub struct PtyParams {
    pub term: String,
    pub cols: u16,
    pub rows: u16,
    pub pix_width: u16,
    pub pix_height: u16,
    pub modes: Vec<(russh::Pty, u32)>,
}

impl PtyParams {
    fn size(&self) -> pty_process::Size {
        pty_process::Size::new_with_pixel(self.rows.max(1), self.cols.max(1), self.pix_width, self.pix_height)
    }
}

/// What to run: `command` through the login's shell (`shell -c command`), or the login
/// shell itself when `command` is `None`.
#[derive(Debug, Clone, Copy)]
pub struct ProcessSpec<'a> {
    pub user: &'a LoginUser,
    pub command: Option<&'a str>,
    /// Client-chosen variables (already filtered by [`env_allowed`]) and session variables.
    pub env: &'a [(String, String)],
    pub pty: Option<&'a PtyParams>,
}

/// Input for a running process, from the SSH channel.
#[derive(Debug)]
pub enum Input {
    Data(Vec<u8>),
    /// The client will send no more input: stdin is closed (ignored with a pty).
    Eof,
    Resize { cols: u16, rows: u16, pix_width: u16, pix_height: u16 },
    /// A signal name as SSH spells it (`INT`, `TERM`...), without `SIG`.
    Signal(String),
}

/// Sends client input to a process. The queue is bounded in bytes, not messages, and
/// generously: russh re-opens the SSH window as soon as data arrives, so the only
/// backpressure is making the connection wait here, and a small queue would deadlock a
/// session whose output is waiting for a window adjustment queued behind that input.
#[derive(Clone)]
pub struct InputSender {
    tx: mpsc::UnboundedSender<(Input, Option<OwnedSemaphorePermit>)>,
    budget: Arc<Semaphore>,
    max: usize,
}

/// The process side of [`InputSender`].
pub struct InputReceiver {
    rx: mpsc::UnboundedReceiver<(Input, Option<OwnedSemaphorePermit>)>,
}

/// A queue holding at most `max_bytes` of unread input data (control messages are free).
pub fn input_queue(max_bytes: usize) -> (InputSender, InputReceiver) {
    let max = max_bytes.clamp(1, Semaphore::MAX_PERMITS);
    let (tx, rx) = mpsc::unbounded_channel();
    (InputSender { tx, budget: Arc::new(Semaphore::new(max)), max }, InputReceiver { rx })
}

impl InputSender {
    /// Queues `input`, waiting while the queue is full. Fails once the process has ended.
    pub async fn send(&self, input: Input) -> Result<(), Input> {
        let permit = match &input {
            Input::Data(d) if !d.is_empty() => {
                let n = u32::try_from(d.len().min(self.max)).unwrap_or(u32::MAX);
                match self.budget.clone().acquire_many_owned(n).await {
                    Ok(p) => Some(p),
                    Err(_) => return Err(input),
                }
            }
            _ => None,
        };
        self.tx.send((input, permit)).map_err(|e| e.0.0)
    }
}

impl InputReceiver {
    /// The next input; its bytes leave the budget as soon as it is taken.
    pub async fn recv(&mut self) -> Option<Input> {
        self.rx.recv().await.map(|(input, _permit)| input)
    }
}

enum Io {
    Pipes { stdin: Option<ChildStdin>, stdout: tokio::process::ChildStdout, stderr: tokio::process::ChildStderr },
    Pty(pty_process::Pty),
}

/// A started session process.
pub struct Process {
    child: Child,
    io: Io,
}

/// Whether a client may set the environment variable `name`. Variables that change what
/// the dynamic linker or the shell load, and the ones describing the account, are refused.
pub fn env_allowed(name: &str) -> bool {
    const DENIED: &[&str] = &[
        "PATH", "IFS", "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND", "HOME",
        "USER", "LOGNAME", "SHELL", "MAIL", "TMPDIR", "PYTHONPATH", "PERL5LIB", "PERL5OPT", "NODE_OPTIONS",
    ];
    let mut chars = name.chars();
    let valid = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    valid
        && !name.starts_with("LD_")
        && !name.starts_with("DYLD_")
        && !name.starts_with("BASH_FUNC_")
        && !DENIED.contains(&name)
}

/// `-bash` for `/bin/bash`: a leading dash makes a shell a login shell.
fn login_arg0(shell: &Path) -> String {
    let base = shell.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "sh".into());
    format!("-{base}")
}

fn working_dir(home: &Path) -> PathBuf {
    if home.is_dir() { home.to_path_buf() } else { PathBuf::from("/") }
}

fn command_for(spec: &ProcessSpec<'_>) -> Command {
    let user = spec.user;
    let mut cmd = Command::new(&user.shell);
    match spec.command {
        Some(c) => {
            cmd.arg("-c").arg(c);
        }
        None => {
            cmd.arg0(login_arg0(&user.shell));
        }
    }
    cmd.env_clear().env("PATH", DEFAULT_PATH);
    for (k, v) in spec.env {
        cmd.env(k, v);
    }
    if let Some(p) = spec.pty {
        cmd.env("TERM", if p.term.is_empty() { "xterm" } else { p.term.as_str() });
    }
    cmd.env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env("SHELL", &user.shell)
        .current_dir(working_dir(&user.home))
        // A session task that is dropped (connection lost, node stopping) must not leave
        // the user's processes behind.
        .kill_on_drop(true);
    if user.switch_user {
        // std drops the root's supplementary groups before setuid.
        cmd.uid(user.uid).gid(user.gid);
    }
    cmd
}

/// Starts the process `spec` describes.
pub fn spawn(spec: &ProcessSpec<'_>) -> Result<Process, SessionError> {
    let shell = spec.user.shell.display().to_string();
    let spawn_err = |source: io::Error| SessionError::Spawn { shell: shell.clone(), source };
    let mut cmd = command_for(spec);
    match spec.pty {
        None => {
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = cmd.spawn().map_err(spawn_err)?;
            let stdin = child.stdin.take();
            let stdout = child.stdout.take().ok_or_else(|| spawn_err(io::Error::other("no stdout pipe")))?;
            let stderr = child.stderr.take().ok_or_else(|| spawn_err(io::Error::other("no stderr pipe")))?;
            Ok(Process { child, io: Io::Pipes { stdin, stdout, stderr } })
        }
        Some(params) => {
            let (pty, pts) = pty_process::open().map_err(|e| SessionError::Pty(e.to_string()))?;
            pty.resize(params.size()).map_err(|e| SessionError::Pty(e.to_string()))?;
            if let Err(e) = crate::pty_modes::apply(&pts, &params.modes) {
                tracing::debug!("cannot apply the client's terminal modes: {e}");
            }
            if spec.user.switch_user {
                // The user owns its terminal, as with sshd (mesg, write, tty permissions).
                if let Err(e) = std::os::unix::fs::fchown(&pts, Some(spec.user.uid), Some(spec.user.gid)) {
                    tracing::debug!("cannot give the pty to {}: {e}", spec.user.name);
                }
            }
            let child = pty_process::Command::from(cmd).spawn(pts).map_err(|e| match e {
                pty_process::Error::Io(io) => spawn_err(io),
                other => SessionError::Pty(other.to_string()),
            })?;
            Ok(Process { child, io: Io::Pty(pty) })
        }
    }
}

/// What a session process ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit status, or 128 + signal number for a killed process (as shells report it).
    pub code: u32,
    pub signal: Option<i32>,
}

impl From<ExitStatus> for Exit {
    fn from(s: ExitStatus) -> Self {
        match (s.code(), s.signal()) {
            (Some(c), _) => Exit { code: c as u32, signal: None },
            (None, Some(sig)) => Exit { code: 128 + sig as u32, signal: Some(sig) },
            (None, None) => Exit { code: 255, signal: None },
        }
    }
}

impl Process {
    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn has_pty(&self) -> bool {
        matches!(self.io, Io::Pty(_))
    }

    /// Feeds `input` to the process and copies its output to `out` (and stderr to `err`;
    /// with a pty everything goes to `out`) until it exits and its output is drained.
    /// When `hangup` completes first the process is hung up (SIGHUP, then SIGKILL).
    pub async fn run<O, E, H>(self, input: InputReceiver, out: O, err: E, hangup: H) -> io::Result<Exit>
    where
        O: AsyncWrite + Unpin + Send + 'static,
        E: AsyncWrite + Unpin + Send + 'static,
        H: Future<Output = ()> + Send,
    {
        let Process { mut child, io } = self;
        let pty = matches!(io, Io::Pty(_));
        // Signals go through the feeder, which stops as soon as the process is reaped, so a
        // late signal can never reach a recycled pid.
        let target = child.id().map(|pid| Target { pid, pty });
        let (exited_tx, exited_rx) = watch::channel(false);
        let (copies, feeder): (Vec<JoinHandle<()>>, JoinHandle<()>) = match io {
            Io::Pipes { stdin, stdout, stderr } => (
                vec![
                    tokio::spawn(copy_output(stdout, out, exited_rx.clone())),
                    tokio::spawn(copy_output(stderr, err, exited_rx)),
                ],
                tokio::spawn(feed_pipe(stdin, input, target)),
            ),
            Io::Pty(pty) => {
                let (reader, writer) = pty.into_split();
                drop(err);
                (vec![tokio::spawn(copy_output(reader, out, exited_rx))], tokio::spawn(feed_pty(writer, input, target)))
            }
        };
        let status = tokio::select! {
            status = child.wait() => status,
            () = hangup => terminate(&mut child, pty).await,
        };
        feeder.abort();
        let _ = exited_tx.send(true);
        for c in copies {
            // A copy task only ends by itself; a panic in it must not hide the exit status.
            let _ = c.await;
        }
        Ok(Exit::from(status?))
    }
}

/// Hangs the session up as a closing terminal would, then kills what is left.
async fn terminate(child: &mut Child, pty: bool) -> io::Result<ExitStatus> {
    if let Some(pid) = child.id() {
        let pid = Pid::from_raw(pid as i32);
        // With a pty the shell leads its own session and process group: hang up all of it.
        let sent = if pty { killpg(pid, Signal::SIGHUP) } else { kill(pid, Signal::SIGHUP) };
        if sent.is_ok()
            && let Ok(status) = tokio::time::timeout(HANGUP_GRACE, child.wait()).await
        {
            return status;
        }
    }
    let _ = child.start_kill();
    child.wait().await
}

/// Copies process output until end of file, a write failure, or (once the process has
/// exited) a read that stays idle for [`OUTPUT_GRACE`].
async fn copy_output<R, W>(mut reader: R, mut writer: W, mut exited: watch::Receiver<bool>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 32 * 1024];
    let mut done = *exited.borrow();
    loop {
        let read = if done {
            match tokio::time::timeout(OUTPUT_GRACE, reader.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                r = reader.read(&mut buf) => r,
                changed = exited.changed() => {
                    // Reads are cancel-safe: nothing is lost by restarting this one with a deadline.
                    done = changed.is_err() || *exited.borrow();
                    continue;
                }
            }
        };
        let n = match read {
            Ok(0) => break,
            Ok(n) => n,
            // A pty master reads EIO once every slave is closed: that is its end of file.
            Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!("reading session output: {e}");
                break;
            }
        };
        if writer.write_all(&buf[..n]).await.is_err() || writer.flush().await.is_err() {
            break;
        }
    }
}

/// The process signals are delivered to.
#[derive(Debug, Clone, Copy)]
struct Target {
    pid: u32,
    pty: bool,
}

fn deliver(target: Option<Target>, name: &str) {
    if let Some(t) = target
        && let Err(e) = signal(t.pid, t.pty, name)
    {
        tracing::debug!("cannot deliver SIG{name} to the session: {e}");
    }
}

async fn feed_pipe(mut stdin: Option<ChildStdin>, mut input: InputReceiver, target: Option<Target>) {
    while let Some(msg) = input.recv().await {
        match msg {
            Input::Data(data) => {
                if let Some(s) = stdin.as_mut()
                    && s.write_all(&data).await.is_err()
                {
                    // The process closed its stdin; later input has nowhere to go.
                    stdin = None;
                }
            }
            Input::Eof => stdin = None,
            Input::Resize { .. } => {}
            Input::Signal(name) => deliver(target, &name),
        }
    }
}

async fn feed_pty(mut writer: pty_process::OwnedWritePty, mut input: InputReceiver, target: Option<Target>) {
    while let Some(msg) = input.recv().await {
        match msg {
            Input::Data(data) => {
                if writer.write_all(&data).await.is_err() {
                    break;
                }
            }
            Input::Resize { cols, rows, pix_width, pix_height } => {
                let size = pty_process::Size::new_with_pixel(rows.max(1), cols.max(1), pix_width, pix_height);
                if let Err(e) = writer.resize(size) {
                    tracing::debug!("cannot resize the pty: {e}");
                }
            }
            // A terminal has no end of input of its own: the user types ^D.
            Input::Eof => {}
            Input::Signal(name) => deliver(target, &name),
        }
    }
}

/// Sends `signal` (an SSH signal name without `SIG`) to a session process.
pub fn signal(pid: u32, pty: bool, name: &str) -> Result<(), String> {
    let sig: Signal = format!("SIG{name}").parse().map_err(|_| format!("unknown signal {name:?}"))?;
    let pid = Pid::from_raw(pid as i32);
    let r = if pty { killpg(pid, sig) } else { kill(pid, sig) };
    r.map_err(|e| e.to_string())
}
