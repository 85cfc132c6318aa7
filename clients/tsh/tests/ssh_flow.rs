//! Runs the `tsh` binary against an in-process fake proxy and node (russh servers) to check
//! the SSH path: host certificates, user certificate, direct-tcpip, nested session, exit status.
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake;

use std::time::Duration;

use fake::ssh::{Pki, login, start_proxy};
use fake::tsh;

#[tokio::test]
async fn ssh_through_a_proxy_to_a_node() {
    let pki = Pki::new();
    let addr = start_proxy(&pki).await;
    let home = tempfile::tempdir().unwrap();
    login(&pki, home.path(), &addr, Duration::from_secs(600));

    let (code, out, err) = tsh(home.path(), &["ssh", "visitor@node-1", "exit", "3"]).await;
    assert_eq!(code, 3, "stdout: {out}\nstderr: {err}");
    assert_eq!(out, "ran: exit 3\n");
    assert!(err.contains("to stderr"), "{err}");

    let (code, out, err) = tsh(
        home.path(),
        &["ssh", "-l", "visitor", "node-1", "uname", "-a"],
    )
    .await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(out, "ran: uname -a\n");

    // The node refuses a login the certificate does not carry; the reason cannot be asked.
    let (code, _, err) = tsh(home.path(), &["ssh", "root@node-1", "true"]).await;
    assert_eq!(code, 1);
    assert!(
        err.starts_with(
            "ERROR: access denied: the node refused the certificate for login \"root\""
        ),
        "{err}"
    );

    let (code, _, err) = tsh(home.path(), &["ssh", "visitor@node-9", "true"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot connect to node-9 through the proxy: node node-9 not found"),
        "{err}"
    );

    // A leaf cluster is reached through the `proxy:host:port@cluster` subsystem.
    let (code, out, err) = tsh(
        home.path(),
        &["ssh", "--cluster=leaf", "visitor@node-1", "exit", "4"],
    )
    .await;
    assert_eq!(code, 4, "stdout: {out}\nstderr: {err}");
    assert_eq!(out, "ran: exit 4\n");
    let (code, _, err) = tsh(
        home.path(),
        &["ssh", "--cluster=other", "visitor@node-1", "true"],
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot connect to node-1: no route for proxy:node-1:0@other"),
        "{err}"
    );

    let (code, out, _) = tsh(home.path(), &["status"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("Logged in as:       alice"), "{out}");
    let key = tsh::key_paths(home.path(), "127.0.0.1", "alice").private_key;
    assert!(out.contains(&key.display().to_string()), "{out}");
}

#[tokio::test]
async fn foreign_host_ca_and_expired_certificates_are_refused() {
    let pki = Pki::new();
    let addr = start_proxy(&pki).await;

    let other = Pki::new();
    let home = tempfile::tempdir().unwrap();
    login(&other, home.path(), &addr, Duration::from_secs(600));
    let (code, _, err) = tsh(home.path(), &["ssh", "visitor@node-1", "true"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("refusing to connect to the proxy") && err.contains("does not trust"),
        "{err}"
    );

    let home = tempfile::tempdir().unwrap();
    login(&pki, home.path(), &addr, Duration::ZERO);
    let (code, _, err) = tsh(home.path(), &["ssh", "visitor@node-1", "true"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("certificate expired at") && err.contains("tsh login"),
        "{err}"
    );
    let (code, out, _) = tsh(home.path(), &["status"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("[EXPIRED]"), "{out}");

    let (code, _, err) = tsh(
        home.path(),
        &["--proxy=127.0.0.1:1", "login", "--user=alice"],
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        err.starts_with("ERROR: cannot reach the proxy at 127.0.0.1:1: "),
        "{err}"
    );

    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = tsh(empty.path(), &["status"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("Not logged in."), "{err}");
}

/// Under a real terminal (`script`), `-t` asks for a PTY with the terminal's size and the
/// local terminal is put back as it was.
#[tokio::test]
async fn pty_session_under_a_terminal() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no script(1)");
        return;
    }
    let pki = Pki::new();
    let addr = start_proxy(&pki).await;
    let home = tempfile::tempdir().unwrap();
    login(&pki, home.path(), &addr, Duration::from_secs(600));
    let inner = format!(
        "stty cols 100 rows 40; stty -a > {dir}/before; TERM=vt220 {tsh} ssh -t visitor@node-1 exit 7; echo \"code=$?\"; stty -a > {dir}/after",
        dir = home.path().display(),
        tsh = env!("CARGO_BIN_EXE_tsh"),
    );
    let out = tokio::process::Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .env("TSH_HOME", home.path())
        .stdin(std::process::Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("hung")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ran: exit 7 (pty vt220 100x40)"), "{text}");
    assert!(text.contains("code=7"), "{text}");
    let before = std::fs::read_to_string(home.path().join("before")).unwrap();
    let after = std::fs::read_to_string(home.path().join("after")).unwrap();
    assert_eq!(before, after, "terminal mode not restored");
}
