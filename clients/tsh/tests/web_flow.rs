//! Runs the `tsh` binary against a fake proxy (HTTPS web API + SSH): login and its TLS trust
//! rules, status, ls, clusters, ssh with the refusal explained by the proxy, logout.
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake;

use fake::ssh::{Pki, start_proxy};
use fake::tsh_with;
use fake::web::{WebState, start_web};

#[tokio::test]
async fn login_ls_clusters_ssh_logout() {
    let pki = Pki::new();
    let ssh_addr = start_proxy(&pki).await;
    let tls_ca = portcullis_pki::x509::TlsCa::generate("root").unwrap();
    let ca_pem = tls_ca.cert_pem().to_string();
    let web = start_web(WebState {
        cluster: "root".into(),
        ssh_addr: ssh_addr.clone(),
        host_ca_line: pki.host_ca.public_line().unwrap(),
        user_ca: portcullis_pki::ssh::SshCa::from_openssh(
            pki.user_ca.private_openssh().unwrap().as_str(),
        )
        .unwrap(),
        tls_ca,
    })
    .await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let proxy = format!("--proxy={web}");

    // No saved CA, no --insecure: the self-made certificate is refused.
    let (code, _, err) =
        tsh_with(h, &["login", &proxy, "--user=alice"], Some("secret\n"), &[]).await;
    assert_eq!(code, 1);
    assert!(
        err.starts_with("ERROR: the proxy's HTTPS certificate is not trusted: "),
        "{err}"
    );
    assert!(
        err.contains("(use --insecure for a self-signed proxy)"),
        "{err}"
    );

    let (code, _, err) = tsh_with(
        h,
        &["--insecure", "login", &proxy, "--user=alice"],
        Some("wrong\n"),
        &[],
    )
    .await;
    assert_eq!(code, 1);
    assert_eq!(err, "ERROR: invalid username or password\n");

    // Trusted through SSL_CERT_FILE.
    let ca_file = h.join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let ca_env = ca_file.to_str().unwrap();
    let (code, out, err) = tsh_with(
        h,
        &["login", &proxy, "--user=alice", "--ttl=2h"],
        Some("secret\n"),
        &[("SSL_CERT_FILE", ca_env)],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Logged in as:       alice"), "{out}");
    assert!(out.contains("Logins:             visitor"), "{out}");
    assert!(out.contains("[valid for 2h0m0s]"), "{out}");
    let keys = tsh::key_paths(h, "127.0.0.1", "alice");
    for p in [
        &keys.private_key,
        &keys.ssh_cert,
        &keys.tls_cert,
        &keys.tls_key,
        &keys.known_hosts,
    ] {
        assert!(p.exists(), "{}", p.display());
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&keys.private_key)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    openssh_reads(&keys);
    let known = std::fs::read_to_string(&keys.known_hosts).unwrap();
    assert!(
        known.starts_with("@cert-authority * ssh-ed25519 "),
        "{known}"
    );
    // The leaf's host CA is scoped to the leaf's names: it never vouches for `*`.
    let ca_lines: Vec<&str> = known.lines().filter(|l| l.starts_with('@')).collect();
    assert_eq!(ca_lines.len(), 2, "{known}");
    assert!(ca_lines[1].starts_with("@cert-authority *.leaf ssh-ed25519 "), "{known}");

    // From now on the CA saved at login is trusted.
    let (code, out, err) = tsh_with(h, &["status", "-f", "json"], None, &[]).await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["active"]["username"], "alice");
    assert_eq!(v["active"]["cluster"], "root");
    assert_eq!(v["active"]["roles"], serde_json::json!(["access"]));

    let (code, out, err) = tsh_with(h, &["ls"], None, &[]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "Node Name Address        Labels\n--------- -------------- --------\nnode-1    127.0.0.1:3022 env=prod\nnode-2    ⟵ Tunnel       env=dev\n"
    );
    let (code, out, _) = tsh_with(h, &["ls", "-f", "json", "env=prod"], None, &[]).await;
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["metadata"]["name"], "n1");

    let (code, out, err) = tsh_with(h, &["clusters"], None, &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("root         online root                  *"),
        "{out}"
    );
    assert!(
        out.contains("leaf         online leaf         env=demo"),
        "{out}"
    );

    let (code, out, err) = tsh_with(h, &["ssh", "visitor@node-1", "exit", "5"], None, &[]).await;
    assert_eq!(code, 5, "{out} {err}");
    let (code, _, err) = tsh_with(h, &["ssh", "root@node-1", "true"], None, &[]).await;
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "ERROR: access denied: login \"root\" is not allowed by role access\n"
    );

    let (code, out, _) = tsh_with(h, &["logout"], None, &[]).await;
    assert_eq!(code, 0);
    assert_eq!(out, "Logged out alice from 127.0.0.1.\n");
    assert!(!keys.private_key.exists());
    let (code, _, err) = tsh_with(h, &["ls"], None, &[]).await;
    assert_eq!(code, 1);
    assert!(err.contains("Not logged in."), "{err}");

    // --insecure is remembered for the profile it created.
    let (code, _, err) = tsh_with(
        h,
        &["login", &proxy, "--user=alice", "--insecure"],
        Some("secret\n"),
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = tsh_with(h, &["ls"], None, &[]).await;
    assert_eq!(code, 0, "{err}");
}

/// OpenSSH's own tools accept the saved key and certificate (skipped without ssh-keygen).
fn openssh_reads(keys: &tsh::KeyPaths) {
    let run =
        |args: &[&std::ffi::OsStr]| std::process::Command::new("ssh-keygen").args(args).output();
    let Ok(out) = run(&["-L".as_ref(), "-f".as_ref(), keys.ssh_cert.as_os_str()]) else {
        eprintln!("skipped: no ssh-keygen");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("Key ID: \"alice\""),
        "{text}"
    );
    let out = run(&["-y".as_ref(), "-f".as_ref(), keys.private_key.as_os_str()]).unwrap();
    let public = std::fs::read_to_string(&keys.public_key).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1),
        public.split_whitespace().nth(1)
    );
}
