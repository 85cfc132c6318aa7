//! The compliance suite against memory, sled and PostgreSQL, plus what only PostgreSQL has:
//! several processes on one database, a server restart under load, TLS and bad addresses.
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_storage::{Backend, EventKind, MemoryBackend, PostgresBackend, SledBackend, StorageError};
use support::pg::PgServer;
use support::suite::{self, B, next};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_passes_the_suite() {
    suite::run(Arc::new(MemoryBackend::new())).await;
    suite::compacted(&(Arc::new(MemoryBackend::with_history(20)) as B), 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    suite::run(Arc::new(SledBackend::open(&dir.path().join("a")).unwrap())).await;
    let small: B = Arc::new(SledBackend::open_with_history(&dir.path().join("b"), 20).unwrap());
    suite::compacted(&small, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passes_the_suite() {
    let Some(pg) = PgServer::start() else { return };
    let b: B = Arc::new(PostgresBackend::connect(&pg.conn_string("disable")).unwrap());
    suite::run(b).await;
    let small: B = Arc::new(PostgresBackend::connect_with_history(&pg.conn_string("disable"), 20).unwrap());
    suite::compacted(&small, 20).await;
}

/// Two backends on one database behave as two auth processes: each sees the other's
/// writes and watch events, in one revision order, and CAS holds across them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backends_share_writes_watches_and_cas() {
    let Some(pg) = PgServer::start() else { return };
    let conn = pg.conn_string("disable");
    let a: B = Arc::new(PostgresBackend::connect(&conn).unwrap());
    let b: B = Arc::new(PostgresBackend::connect(&conn).unwrap());
    a.put("users/alice", b"A").unwrap();
    assert_eq!(b.get("users/alice").unwrap().as_deref(), Some(&b"A"[..]), "B reads what A wrote");
    assert!(!b.create("users/alice", b"B").unwrap(), "create is atomic across processes");

    let mut wa = a.watch("mp/", None).unwrap();
    let mut wb = b.watch("mp/", None).unwrap();
    std::thread::scope(|s| {
        for (n, be) in [a.clone(), b.clone()].into_iter().enumerate() {
            s.spawn(move || {
                for i in 0..30 {
                    be.put(&format!("mp/{n}/{i}"), b"v").unwrap();
                }
            });
        }
    });
    let (mut seen_a, mut seen_b) = (Vec::new(), Vec::new());
    for _ in 0..60 {
        let (ea, eb) = (next(&mut wa, 10).await, next(&mut wb, 10).await);
        seen_a.push((ea.revision, ea.key));
        seen_b.push((eb.revision, eb.key));
    }
    assert_eq!(seen_a, seen_b, "both processes see the same events in the same order");
    assert!(seen_a.windows(2).all(|w| w[0].0 < w[1].0));
    suite::cas_race_on(&[a.clone(), b.clone()], "mp/counter", 6, 15);

    // A process started later resumes from revisions written before it existed.
    let r = a.revision().unwrap();
    a.put("mp/late", b"1").unwrap();
    let c = PostgresBackend::connect(&conn).unwrap();
    let mut wc = c.watch("mp/", Some(r)).unwrap();
    assert_eq!(next(&mut wc, 5).await.key, "mp/late");
}

/// A crash-like restart of the server under a steady stream of writes: every write that
/// returned Ok is there afterwards, calls made while it is down fail as Unavailable
/// naming host:port only, and the backend (calls and watchers) recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_loses_no_acknowledged_write_and_recovers() {
    let Some(pg) = PgServer::start() else { return };
    let conn = pg.conn_string("disable");
    let b: B = Arc::new(PostgresBackend::connect(&conn).unwrap());
    let mut w = b.watch("rs/", None).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (b, stop, acked, errors) = (b.clone(), stop.clone(), acked.clone(), errors.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let key = format!("rs/{i:06}");
                match b.put(&key, key.as_bytes()) {
                    Ok(()) => acked.lock().unwrap().push(key),
                    Err(e) => {
                        errors.lock().unwrap().push(e);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                i += 1;
            }
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    pg.stop("immediate");
    std::thread::sleep(Duration::from_secs(1));
    let acked_before_restart = acked.lock().unwrap().len();
    pg.start_again();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < acked_before_restart + 50 {
        assert!(Instant::now() < deadline, "writes did not recover after the restart");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();

    let errors = std::mem::take(&mut *errors.lock().unwrap());
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    eprintln!("restart: {} writes acknowledged, {} refused while the server was down", acked.len(), errors.len());
    assert!(!errors.is_empty(), "the server was down for a second: some call must have failed");
    let addr = format!("127.0.0.1:{}", pg.port);
    for e in errors.iter() {
        assert!(matches!(e, StorageError::Unavailable { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains(&addr) && !text.contains(&pg.password), "{text}");
    }
    // Read through a fresh process: nothing acknowledged is missing.
    let fresh = PostgresBackend::connect(&conn).unwrap();
    let stored: std::collections::HashSet<String> = fresh.list("rs/").unwrap().into_iter().map(|(k, _)| k).collect();
    let lost: Vec<&String> = acked.iter().filter(|k| !stored.contains(*k)).collect();
    assert!(lost.is_empty(), "{} acknowledged writes lost, e.g. {:?}", lost.len(), lost.first());
    // The watcher's feed reconnected and caught up: it reaches the last acknowledged key.
    let last = acked.last().unwrap().clone();
    loop {
        let ev = next(&mut w, 15).await;
        assert_eq!(ev.kind, EventKind::Put);
        if ev.key == last {
            break;
        }
    }
}

#[test]
fn postgres_unreachable_names_the_address_not_the_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let conn = format!("postgresql://portcullis:s3cret-pw@127.0.0.1:{port}/portcullis?sslmode=disable");
    let e = PostgresBackend::connect(&conn).err().expect("nothing listens there");
    assert!(matches!(e, StorageError::Unavailable { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.starts_with(&format!("storage: the database at 127.0.0.1:{port} is unreachable: ")), "{text}");
    assert!(!text.contains("s3cret-pw") && !format!("{e:?}").contains("s3cret-pw"), "{text}");
}

#[test]
fn postgres_wrong_password_is_refused_without_echoing_it() {
    let Some(pg) = PgServer::start() else { return };
    let conn = pg.conn_string("disable").replace(&pg.password, "not-the-password");
    let e = PostgresBackend::connect(&conn).err().expect("wrong password");
    let text = e.to_string();
    assert!(text.contains("password authentication failed") && !text.contains("not-the-password"), "{text}");
}

/// TLS modes, schema creation by several processes at once, and calls from every kind of
/// thread: a plain one, a current-thread runtime, a multi-thread runtime.
#[test]
fn postgres_tls_modes_and_callers() {
    let Some(pg) = PgServer::start() else { return };
    let ca = pg.ca_file();
    let full = format!(
        "postgresql://portcullis:{}@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        pg.password,
        pg.port,
        ca.display()
    );
    // Four processes creating the schema at the same moment.
    let handles: Vec<_> = (0..4).map(|_| {
        let full = full.clone();
        std::thread::spawn(move || PostgresBackend::connect(&full).map(|_| ()))
    }).collect();
    for h in handles {
        h.join().unwrap().expect("concurrent first connects");
    }
    let b = PostgresBackend::connect(&full).unwrap();
    b.put("tls/k", b"v").unwrap();
    let required = PostgresBackend::connect(&pg.conn_string("require")).unwrap();
    assert_eq!(required.get("tls/k").unwrap().as_deref(), Some(&b"v"[..]));
    // verify-full against the public roots: this server's private CA is not among them.
    let untrusted = format!("postgresql://portcullis:{}@localhost:{}/postgres?sslmode=verify-full", pg.password, pg.port);
    let e = PostgresBackend::connect(&untrusted).err().expect("untrusted certificate");
    assert!(matches!(e, StorageError::Unavailable { .. }) && !e.to_string().contains(&pg.password), "{e}");
    // verify-full checks the name: the certificate is for localhost, not 127.0.0.1.
    let wrong_name = format!(
        "postgresql://portcullis:{}@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
        pg.password,
        pg.port,
        ca.display()
    );
    assert!(PostgresBackend::connect(&wrong_name).is_err(), "name mismatch must fail verify-full");
    let ca_only = wrong_name.replace("verify-full", "verify-ca");
    PostgresBackend::connect(&ca_only).expect("verify-ca ignores the name");

    let b = Arc::new(b);
    let current = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let b2 = b.clone();
    current.block_on(async move {
        b2.put("tls/current", b"1").unwrap();
        let mut w = b2.watch("tls/", None).unwrap();
        b2.put("tls/current", b"2").unwrap();
        assert_eq!(next(&mut w, 5).await.value.as_deref(), Some(&b"2"[..]));
    });
    let multi = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let b3 = b.clone();
    multi.block_on(async move {
        tokio::spawn(async move { b3.get("tls/current").unwrap() }).await.unwrap();
    });
    // Dropping the backend inside async code must not panic.
    multi.block_on(async move { drop(b) });
}
