//! Issue 11, data at rest: data directories are 0700 and their files 0600 whatever the umask,
//! a data directory others can read is refused, and the CA keys in the database are sealed
//! with a key-encryption key kept outside it.
// Test code: a panic is how it fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use portcullis_e2e::*;

/// The loosest umask there is, so every mode below comes from the services, not the umask.
/// Children inherit it; every test in this file wants it.
fn open_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777
}

/// Every file and directory below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// Asserts `dir` is 0700 and everything in it 0700 (directories) or 0600 (files).
fn assert_private_tree(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    for p in walk(dir) {
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&p), want, "{} is {:04o}", p.display(), mode(&p));
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Starts `portcullis-auth` with the cluster's config and waits for it to exit by itself;
/// returns its exit code and output.
fn start_expecting_failure(c: &Cluster, label: &str) -> (i32, String) {
    let mut p = Proc::spawn(
        label,
        Command::new(bin("portcullis-auth")).arg("start").arg("-c").arg(c.auth_config()),
        c.dir.join(format!("{label}.log")),
    );
    let code = p.wait_exit(Duration::from_secs(30));
    let log = p.log_text();
    let code = code.unwrap_or_else(|| panic!("auth kept running instead of refusing to start:\n{log}"));
    (code, log)
}

#[test]
fn auth_keeps_its_data_private_and_its_ca_keys_sealed() {
    open_umask();
    let tmp = tempfile::tempdir().unwrap();
    // A fresh volume is often created 0755 and empty: it is tightened, not refused.
    let cluster_dir = tmp.path().join("rest");
    std::fs::create_dir_all(cluster_dir.join("auth")).unwrap();
    std::fs::set_permissions(cluster_dir.join("auth"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = Cluster::start_auth_in(&cluster_dir, "rest.example.com", &[], &[]);
    // A user: a record beside the CAs in the database.
    c.tctl(&["users", "add", "alice", "--roles=access", "--logins=alice"]).ok();
    c.auth.stop();

    let data = c.dir.join("auth");
    assert_private_tree(&data);
    for f in ["admin-identity.json", "log/events.log", "ca-kek", "backend/db"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }

    // A copy of the database alone holds no private key in any form.
    let files: Vec<PathBuf> = walk(&data.join("backend")).into_iter().filter(|p| p.is_file()).collect();
    assert!(!files.is_empty());
    let mut sealed_seen = false;
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for marker in [&b"PRIVATE KEY"[..], b"OPENSSH PRIVATE", b"openssh-key-v1"] {
            assert!(!contains(&bytes, marker), "{} holds {:?}", f.display(), String::from_utf8_lossy(marker));
        }
        sealed_seen |= contains(&bytes, b"pcseal1:");
    }
    assert!(sealed_seen, "the CA records are stored sealed");

    // It starts again on its own data, with the same CA.
    let pin = |c: &Cluster| c.tctl(&["status"]).ok().stdout.lines().find(|l| l.starts_with("CA pin")).map(str::to_string);
    c.restart_auth();
    let first_pin = pin(&c);
    assert!(first_pin.is_some());
    c.restart_auth();
    assert_eq!(pin(&c), first_pin, "the sealed CA is unsealed, not replaced");
}

#[test]
fn a_data_dir_others_can_read_is_refused_with_the_fix() {
    open_umask();
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::start_auth(tmp.path(), "open.example.com", &[]);
    c.auth.stop();
    let data = c.dir.join("auth");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();

    let (code, log) = start_expecting_failure(&c, "auth-open-dir");
    assert_ne!(code, 0, "{log}");
    let shown = data.display().to_string();
    assert!(log.contains(&format!("data_dir {shown} is mode 0755")), "{log}");
    assert!(log.contains(&format!("chmod 700 {shown}")), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(mode(&data), 0o755, "refusing leaves the directory as it was");

    // The fix it names works.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    c.restart_auth();
    c.tctl(&["status"]).ok();
}

#[test]
fn a_different_key_encryption_key_is_refused_clearly() {
    open_umask();
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::start_auth(tmp.path(), "kek.example.com", &[]);
    c.auth.stop();
    let kek = c.dir.join("auth/ca-kek");
    let original = std::fs::read(&kek).unwrap();
    assert_eq!(original.len(), 32, "32 random bytes");

    std::fs::write(&kek, [7u8; 32]).unwrap();
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, log) = start_expecting_failure(&c, "auth-other-kek");
    assert_ne!(code, 0, "{log}");
    let expected =
        format!("the CA keys in the database were sealed with a different key-encryption key ({})", kek.display());
    assert!(log.contains(&expected), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    // A missing key file is not silently replaced by a new one.
    std::fs::remove_file(&kek).unwrap();
    let (code, log) = start_expecting_failure(&c, "auth-no-kek");
    assert_ne!(code, 0, "{log}");
    assert!(log.contains(&format!("key-encryption key file {} does not exist", kek.display())), "{log}");
    assert!(!kek.exists());

    // The key kept outside the data directory (auth_service.ca_key_encryption_key_file):
    // there nothing else guards it, so a key file others can read is refused.
    let outside = c.dir.join("keys/ca-kek");
    std::fs::create_dir_all(outside.parent().unwrap()).unwrap();
    std::fs::write(&outside, &original).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cfg = std::fs::read_to_string(c.auth_config()).unwrap();
    assert!(cfg.ends_with("tunnel_offline_after: 6s\n"), "auth_service is the config's last section:\n{cfg}");
    cfg.push_str(&format!("  ca_key_encryption_key_file: {}\n", outside.display()));
    std::fs::write(c.auth_config(), cfg).unwrap();
    let (code, log) = start_expecting_failure(&c, "auth-open-kek");
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("is mode 0644") && log.contains(&format!("chmod 600 {}", outside.display())), "{log}");

    // With its own key, private, it starts (the harness would rewrite the config: start it here).
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(c.dir.join("auth/admin-identity.json")).unwrap();
    let _auth = Proc::spawn(
        "auth-kek-outside",
        Command::new(bin("portcullis-auth")).arg("start").arg("-c").arg(c.auth_config()),
        c.dir.join("auth-kek-outside.log"),
    );
    wait_port(c.ports.auth);
    wait_for("admin identity", Duration::from_secs(30), || c.dir.join("auth/admin-identity.json").exists().then_some(()));
    c.tctl(&["status"]).ok();
}

#[test]
fn node_and_proxy_keep_their_identities_private() {
    open_umask();
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::start_auth(tmp.path(), "svc.example.com", &[]);
    c.start_proxy();
    c.start_node("rest-node", "env=test");
    let proxy_dir = c.dir.join("proxy");
    let node_dir = c.dir.join("rest-node");
    wait_for("the node's identity", Duration::from_secs(30), || node_dir.join("node-identity.json").exists().then_some(()));
    assert_private_tree(&proxy_dir);
    assert_private_tree(&node_dir);
    assert_eq!(mode(&proxy_dir.join("proxy-identity.json")), 0o600);
    assert_eq!(mode(&node_dir.join("node-identity.json")), 0o600);

    // A node whose data directory others can read refuses to start, naming the fix.
    if let Some((mut p, _)) = c.nodes.remove("rest-node") {
        p.stop();
    }
    std::fs::set_permissions(&node_dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let mut p = Proc::spawn(
        "rest-node-again",
        Command::new(bin("portcullis-node"))
            .args(["start", "--insecure", "--auth-server"])
            .arg(format!("127.0.0.1:{}", c.ports.auth))
            .arg("--data-dir")
            .arg(&node_dir)
            .arg("-c")
            .arg(c.dir.join("rest-node.yaml")),
        c.dir.join("rest-node-again.log"),
    );
    let code = p.wait_exit(Duration::from_secs(30));
    let log = p.log_text();
    assert!(code.is_some_and(|c| c != 0), "{log}");
    assert!(log.contains(&format!("chmod 700 {}", node_dir.display())), "{log}");
}
