//! The sled backend's own behaviour: files, modes, rewrite, reopen, one process per dir.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::*;

#[test]
fn a_second_open_of_one_dir_is_refused_with_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let first = SledBackend::open(dir.path()).unwrap();
    let e = SledBackend::open(dir.path()).err().expect("second open must fail");
    assert!(matches!(e, StorageError::InUse { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&dir.path().display().to_string()) && msg.contains("postgresql"), "{msg}");
    drop(first);
    // Closing releases the lock.
    SledBackend::open(dir.path()).unwrap();
}

/// Not a test of its own: the child process of the test below, holding a dir open.
#[test]
fn child_holding_a_data_dir() {
    let Ok(dir) = std::env::var("PORTCULLIS_SLED_HOLD") else { return };
    let _b = SledBackend::open(Path::new(&dir)).unwrap();
    println!("HOLDING");
    // Hold until the parent closes our stdin.
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

#[test]
fn another_process_on_the_same_dir_is_refused_with_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "sled_backend::tests::child_holding_a_data_dir", "--nocapture", "--test-threads=1"])
        .env("PORTCULLIS_SLED_HOLD", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("HOLDING") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child exited before opening the dir");
    }
    let e = SledBackend::open(dir.path()).err().expect("open while another process holds it must fail");
    assert!(matches!(e, StorageError::InUse { .. }), "{e:?}");
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    SledBackend::open(dir.path()).expect("free once the other process exited");
}

#[test]
fn data_written_by_older_versions_still_reads_and_revisions_persist() {
    let dir = tempfile::tempdir().unwrap();
    {
        // The old layout: plain values in sled's default tree, nothing else.
        let db = sled::open(dir.path()).unwrap();
        db.insert("roles/old", &b"legacy"[..]).unwrap();
        db.flush().unwrap();
    }
    let rev_after;
    {
        let b = SledBackend::open(dir.path()).unwrap();
        let old = b.get_item("roles/old").unwrap().unwrap();
        assert_eq!((old.value.as_slice(), old.revision), (&b"legacy"[..], 0));
        assert_eq!(b.list("roles/").unwrap(), vec![("roles/old".to_string(), b"legacy".to_vec())]);
        assert!(b.compare_and_swap("roles/old", Some(b"legacy"), b"new").unwrap());
        b.put("roles/b", b"2").unwrap();
        rev_after = b.revision().unwrap();
        assert_eq!(rev_after, 2);
        b.flush().unwrap();
    }
    let b = SledBackend::open(dir.path()).unwrap();
    assert_eq!(b.revision().unwrap(), rev_after, "the counter survives a restart");
    assert_eq!(b.get_item("roles/old").unwrap().unwrap().revision, 1);
    b.put("roles/c", b"3").unwrap();
    assert_eq!(b.get_item("roles/c").unwrap().unwrap().revision, 3, "revisions keep growing after a restart");
}

#[test]
fn a_ttl_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = SledBackend::open(dir.path()).unwrap();
        b.put_ttl("t/a", b"1", Duration::from_millis(300)).unwrap();
        b.flush().unwrap();
    }
    let b = SledBackend::open(dir.path()).unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(b.get("t/a").unwrap(), None);
    assert!(b.list("t/").unwrap().is_empty());
}

#[test]
fn survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = SledBackend::open(dir.path()).unwrap();
        b.put("roles/a", b"1").unwrap();
        b.flush().unwrap();
    }
    let b = SledBackend::open(dir.path()).unwrap();
    assert_eq!(b.get("roles/a").unwrap().as_deref(), Some(&b"1"[..]));
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every file sled wrote, with its bytes.
fn raw_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(raw_files(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn database_files_are_private_whatever_the_umask() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("backend");
    {
        let b = SledBackend::open(&dir).unwrap();
        b.put("cas/tls", b"x").unwrap();
        b.flush().unwrap();
    }
    // An older data directory: modes as sled made them under umask 022.
    for (p, _) in raw_files(&dir) {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _b = SledBackend::open(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700);
    let files = raw_files(&dir);
    assert!(!files.is_empty());
    for (p, _) in files {
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
}

#[test]
fn rewrite_drops_overwritten_values_and_keeps_live_ones() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("backend");
    let secret = b"-----BEGIN PRIVATE KEY----- overwritten secret";
    {
        let b = SledBackend::open(&dir).unwrap();
        b.put("cas/tls", secret).unwrap();
        b.put("roles/a", b"1").unwrap();
        b.flush().unwrap();
        b.put("cas/tls", b"sealed").unwrap();
        b.flush().unwrap();
    }
    let before = raw_files(&dir).into_iter().any(|(_, bytes)| contains(&bytes, secret));
    assert!(before, "sled keeps overwritten values on disk: this test would prove nothing");
    SledBackend::rewrite(&dir).unwrap();
    assert!(!raw_files(&dir).into_iter().any(|(_, bytes)| contains(&bytes, secret)));
    assert!(!sibling(&dir, "old").exists() && !sibling(&dir, "rewrite").exists());
    let b = SledBackend::open(&dir).unwrap();
    assert_eq!(b.get("cas/tls").unwrap().as_deref(), Some(&b"sealed"[..]));
    assert_eq!(b.get("roles/a").unwrap().as_deref(), Some(&b"1"[..]));
}

#[test]
fn open_recovers_from_an_interrupted_rewrite() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("backend");
    {
        let b = SledBackend::open(&dir).unwrap();
        b.put("roles/a", b"1").unwrap();
        b.flush().unwrap();
    }
    // Crashed after moving the database aside, before moving the copy in.
    std::fs::rename(&dir, sibling(&dir, "old")).unwrap();
    let b = SledBackend::open(&dir).unwrap();
    assert_eq!(b.get("roles/a").unwrap().as_deref(), Some(&b"1"[..]));
}
