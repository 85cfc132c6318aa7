//! Test fakes: SSH proxy and node, the proxy's HTTPS web API, and a `tsh` runner.
#![allow(dead_code)]

pub mod ssh;
pub mod web;

use std::time::Duration;

use tokio::io::AsyncWriteExt;

/// Runs the `tsh` binary with `TSH_HOME=home`; returns exit code, stdout, stderr.
pub async fn tsh(home: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    tsh_with(home, args, None, &[]).await
}

/// [`tsh`] with standard input text and extra environment variables.
pub async fn tsh_with(
    home: &std::path::Path,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tsh"));
    cmd.args(args)
        .env("TSH_HOME", home)
        .env_remove("TELEPORT_PROXY")
        .env_remove("TELEPORT_USER")
        .env_remove("TELEPORT_CLUSTER")
        .env_remove("SSL_CERT_FILE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("tsh hung")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}
