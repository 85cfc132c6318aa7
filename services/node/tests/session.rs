//! Session processes without SSH: output, exit codes, input, ptys, hang-ups, users.
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use portcullis_node::session::{self, Input, ProcessSpec, PtyParams, env_allowed};
use portcullis_node::users::{self, LoginUser, UserError};
use tokio::io::AsyncWrite;

/// An `AsyncWrite` whose bytes the test reads afterwards.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Sink {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl AsyncWrite for Sink {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

struct Outcome {
    out: String,
    err: String,
    code: u32,
}

fn me() -> LoginUser {
    let cur = LoginUser::current().unwrap();
    users::resolve(&cur.name, "test-node").unwrap()
}

/// Runs `command` as `user`, feeding `input` then end of input.
async fn run_as(user: &LoginUser, command: Option<&str>, env: &[(String, String)], pty: Option<&PtyParams>, input: &[u8]) -> Outcome {
    let spec = ProcessSpec { user, command, env, pty };
    let process = session::spawn(&spec).unwrap();
    let (tx, rx) = session::input_queue(1 << 20);
    if !input.is_empty() {
        tx.send(Input::Data(input.to_vec())).await.map_err(drop).unwrap();
    }
    tx.send(Input::Eof).await.map_err(drop).unwrap();
    let (out, err) = (Sink::default(), Sink::default());
    let exit = tokio::time::timeout(
        Duration::from_secs(20),
        process.run(rx, out.clone(), err.clone(), std::future::pending()),
    )
    .await
    .expect("the session did not end")
    .unwrap();
    drop(tx);
    Outcome { out: out.text(), err: err.text(), code: exit.code }
}

async fn run(command: &str) -> Outcome {
    run_as(&me(), Some(command), &[], None, b"").await
}

#[tokio::test]
async fn exec_returns_stdout_stderr_and_exit_code() {
    let o = run("echo out; echo err >&2; exit 3").await;
    assert_eq!(o.out, "out\n");
    assert_eq!(o.err, "err\n");
    assert_eq!(o.code, 3);
    assert_eq!(run("true").await.code, 0);
}

#[tokio::test]
async fn exec_runs_as_the_login_with_its_environment() {
    let user = me();
    let env = vec![("LANG".to_string(), "C.UTF-8".to_string())];
    let o = run_as(&user, Some("id -un; echo \"$HOME|$USER|$LOGNAME|$SHELL|$LANG\"; pwd"), &env, None, b"").await;
    let lines: Vec<&str> = o.out.lines().collect();
    assert_eq!(lines[0], user.name, "{o:?}", o = o.out);
    assert_eq!(
        lines[1],
        format!("{}|{}|{}|{}|C.UTF-8", user.home.display(), user.name, user.name, user.shell.display())
    );
    if user.home.is_dir() {
        assert_eq!(std::path::Path::new(lines[2]).canonicalize().unwrap(), user.home.canonicalize().unwrap());
    }
}

#[tokio::test]
async fn root_node_switches_to_the_login_user() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let Ok(mut nobody) = users::resolve("nobody", "n") else { return };
    assert!(nobody.switch_user);
    // Its passwd shell is usually nologin, which must be honoured as sshd does.
    if nobody.shell.ends_with("nologin") {
        let o = run_as(&nobody, Some("id -u"), &[], None, b"").await;
        assert_ne!(o.code, 0);
        assert!(!o.out.contains(&nobody.uid.to_string()), "{}", o.out);
        nobody.shell = "/bin/sh".into();
    }
    let o = run_as(&nobody, Some("id -u; id -g"), &[], None, b"").await;
    assert_eq!(o.out, format!("{}\n{}\n", nobody.uid, nobody.gid), "stderr: {}", o.err);
}

#[tokio::test]
async fn stdin_reaches_the_process_and_eof_closes_it() {
    let o = run_as(&me(), Some("cat; echo done"), &[], None, b"hello\nworld\n").await;
    assert_eq!(o.out, "hello\nworld\ndone\n");
    assert_eq!(o.code, 0);
}

#[tokio::test]
async fn large_output_is_complete() {
    let o = run("head -c 3000000 /dev/zero | tr '\\0' x").await;
    assert_eq!(o.out.len(), 3_000_000);
    assert_eq!(o.code, 0);
}

#[tokio::test]
async fn killed_process_reports_128_plus_signal() {
    assert_eq!(run("kill -TERM $$").await.code, 128 + 15);
}

#[tokio::test]
async fn background_child_holding_output_does_not_hang_the_session() {
    let started = Instant::now();
    let o = run("sleep 30 & echo started").await;
    assert_eq!(o.out, "started\n");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn pty_session_has_a_terminal_of_the_requested_size() {
    let pty = PtyParams { term: "xterm-256color".into(), cols: 100, rows: 30, ..Default::default() };
    let o = run_as(&me(), Some("tty; stty size; echo $TERM; exit 4"), &[], Some(&pty), b"").await;
    assert!(o.out.contains("/dev/pts/"), "{:?}", o.out);
    assert!(o.out.contains("30 100"), "{:?}", o.out);
    assert!(o.out.contains("xterm-256color"), "{:?}", o.out);
    // A terminal turns \n into \r\n.
    assert!(o.out.contains("\r\n"), "{:?}", o.out);
    assert_eq!(o.err, "");
    assert_eq!(o.code, 4);
}

#[tokio::test]
async fn interactive_shell_reads_commands_from_the_terminal() {
    let pty = PtyParams { term: "dumb".into(), cols: 80, rows: 24, ..Default::default() };
    let o = run_as(&me(), None, &[], Some(&pty), b"echo from-$((40+2))\nexit 5\n").await;
    assert!(o.out.contains("from-42"), "{:?}", o.out);
    assert_eq!(o.code, 5);
}

#[tokio::test]
async fn hangup_ends_a_running_session() {
    let user = me();
    let spec = ProcessSpec { user: &user, command: Some("sleep 60"), env: &[], pty: None };
    let process = session::spawn(&spec).unwrap();
    let (_tx, rx) = session::input_queue(1024);
    let started = Instant::now();
    let exit = process
        .run(rx, Sink::default(), Sink::default(), tokio::time::sleep(Duration::from_millis(200)))
        .await
        .unwrap();
    assert_eq!(exit.code, 128 + 1, "SIGHUP");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn signals_reach_the_process() {
    let user = me();
    let spec = ProcessSpec { user: &user, command: Some("sleep 60"), env: &[], pty: None };
    let process = session::spawn(&spec).unwrap();
    let (tx, rx) = session::input_queue(1024);
    let task = tokio::spawn(process.run(rx, Sink::default(), Sink::default(), std::future::pending()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx.send(Input::Signal("INT".into())).await.map_err(drop).unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap().unwrap();
    assert_eq!(exit.code, 128 + 2);
}

#[test]
fn missing_unix_user_is_a_clear_error() {
    let e = users::resolve("portcullis-no-such-user", "node-1").unwrap_err();
    assert!(matches!(e, UserError::NoSuchUser { .. }));
    assert_eq!(e.to_string(), "user \"portcullis-no-such-user\" does not exist on node \"node-1\"");
}

#[test]
fn dangerous_environment_variables_are_refused() {
    for bad in ["LD_PRELOAD", "LD_LIBRARY_PATH", "PATH", "BASH_ENV", "IFS", "HOME", "BASH_FUNC_x%%", "A=B", "", "1X"] {
        assert!(!env_allowed(bad), "{bad} should be refused");
    }
    for ok in ["LANG", "LC_ALL", "TERM_PROGRAM", "MY_VAR", "_X"] {
        assert!(env_allowed(ok), "{ok} should be allowed");
    }
}

#[tokio::test]
async fn input_queue_is_bounded_in_bytes() {
    let (tx, mut rx) = session::input_queue(10);
    tx.send(Input::Data(vec![1; 8])).await.map_err(drop).unwrap();
    // Control messages never wait.
    tx.send(Input::Eof).await.map_err(drop).unwrap();
    let blocked = tokio::time::timeout(Duration::from_millis(100), tx.send(Input::Data(vec![2; 8]))).await;
    assert!(blocked.is_err(), "a full queue must make the sender wait");
    assert!(matches!(rx.recv().await, Some(Input::Data(d)) if d.len() == 8));
    tokio::time::timeout(Duration::from_secs(1), tx.send(Input::Data(vec![3; 8])))
        .await
        .expect("room was made")
        .map_err(drop)
        .unwrap();
    // Data larger than the whole budget still goes through (alone).
    assert!(matches!(rx.recv().await, Some(Input::Eof)));
    assert!(matches!(rx.recv().await, Some(Input::Data(d)) if d[0] == 3));
    tokio::time::timeout(Duration::from_secs(1), tx.send(Input::Data(vec![4; 100])))
        .await
        .unwrap()
        .map_err(drop)
        .unwrap();
}
