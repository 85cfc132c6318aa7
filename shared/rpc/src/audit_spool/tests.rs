//! Tests of the audit spool against a stand-in auth that can fail, refuse and come back.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tonic::Status;

use super::*;

/// A stand-in auth: stores what it accepts, answers `unavailable` while `down`, and
/// refuses events of type "forbidden" for good.
#[derive(Default)]
struct FakeAuth {
    stored: Mutex<Vec<Value>>,
    down: AtomicBool,
}

impl FakeAuth {
    fn down() -> Arc<FakeAuth> {
        let f = Arc::new(FakeAuth::default());
        f.down.store(true, Ordering::SeqCst);
        f
    }

    fn stored(&self) -> Vec<Value> {
        self.stored.lock().unwrap().clone()
    }

    fn numbers(&self) -> Vec<u64> {
        self.stored().iter().map(|e| e["n"].as_u64().unwrap()).collect()
    }
}

struct Sender(Arc<FakeAuth>);

impl AuditSender for Sender {
    fn send(&self, event_json: String) -> SendFuture {
        let auth = self.0.clone();
        Box::pin(async move {
            if auth.down.load(Ordering::SeqCst) {
                return Err(Status::unavailable("connection refused"));
            }
            let v: Value = serde_json::from_str(&event_json).map_err(|e| Status::invalid_argument(e.to_string()))?;
            if v["event"] == "forbidden" {
                return Err(Status::permission_denied("node-1 may not emit audit events of type \"forbidden\""));
            }
            auth.stored.lock().unwrap().push(v);
            Ok(())
        })
    }
}

fn fast() -> SpoolOptions {
    SpoolOptions {
        sync_interval: Duration::from_millis(10),
        send_timeout: Duration::from_secs(2),
        retry_min: Duration::from_millis(5),
        retry_max: Duration::from_millis(40),
        ..SpoolOptions::default()
    }
}

fn open(dir: &Path, auth: &Arc<FakeAuth>, opts: SpoolOptions) -> AuditSpool {
    AuditSpool::open_with(dir, Sender(auth.clone()), opts).unwrap()
}

fn event(n: u64) -> Value {
    json!({"event": "exec", "n": n, "command": "uptime"})
}

/// The segment files in `dir`, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    v.sort();
    v
}

const DRAIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn events_written_while_auth_is_down_are_all_delivered_in_order_once_it_is_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(SPOOL_DIR);
    let auth = FakeAuth::down();
    let spool = open(&dir, &auth, fast());
    let ids: Vec<String> = (0..50).map(|n| spool.append(event(n)).unwrap()).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(auth.stored().is_empty());
    assert_eq!(spool.queued(), 50, "all kept while auth is down");

    auth.down.store(false, Ordering::SeqCst);
    assert!(spool.drain(DRAIN).await, "still queued: {}", spool.queued());
    assert_eq!(auth.numbers(), (0..50).collect::<Vec<_>>(), "each once, oldest first");
    let got: Vec<String> = auth.stored().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(got, ids, "the ids emit returned are the ones auth received");
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 50, "ids are distinct");
    let t = auth.stored()[0]["time"].as_str().unwrap().to_string();
    assert!(time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).is_ok(), "{t}");
    assert_eq!(spool.dropped(), 0);
}

#[tokio::test]
async fn a_restart_delivers_what_was_on_disk_and_not_what_was_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(SPOOL_DIR);
    // First run: 3 events acknowledged, then auth goes down and 7 more are only on disk.
    let first = Arc::new(FakeAuth::default());
    let spool = open(&dir, &first, fast());
    for n in 0..3 {
        spool.emit(event(n));
    }
    assert!(spool.drain(DRAIN).await);
    first.down.store(true, Ordering::SeqCst);
    let kept: Vec<String> = (3..10).map(|n| spool.append(event(n)).unwrap()).collect();
    drop(spool); // the process dies before delivering them
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(first.numbers(), [0, 1, 2]);

    let second = Arc::new(FakeAuth::default());
    let spool = open(&dir, &second, fast());
    assert!(spool.drain(DRAIN).await, "still queued: {}", spool.queued());
    assert_eq!(second.numbers(), (3..10).collect::<Vec<_>>(), "acknowledged events are not sent again");
    let ids: Vec<String> = second.stored().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, kept, "the same ids after the restart, so auth can deduplicate a resend");
    // Delivered segments are cleaned up: only the new, empty active one stays after a restart.
    drop(spool);
    let spool = open(&dir, &second, fast());
    assert_eq!(spool.queued(), 0);
    assert_eq!(segments(&dir).len(), 1, "{:?}", segments(&dir));
}

#[tokio::test]
async fn torn_and_damaged_lines_are_skipped_and_the_queue_moves_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(SPOOL_DIR);
    let auth = FakeAuth::down();
    let spool = open(&dir, &auth, fast());
    for n in 0..3 {
        spool.emit(event(n));
    }
    drop(spool);
    // What a crash can leave: a damaged line, a good one after it, and a torn last write.
    let last = segments(&dir).into_iter().rfind(|p| std::fs::metadata(p).unwrap().len() > 0).unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&last).unwrap();
    f.write_all(b"\x00\x00garbage\n{\"id\":\"x3\",\"event\":\"exec\",\"n\":3}\n{\"id\":\"torn\",\"event\":\"ex").unwrap();
    drop(f);

    auth.down.store(false, Ordering::SeqCst);
    let spool = open(&dir, &auth, fast());
    assert_eq!(spool.queued(), 6, "3 events, the damaged line, 1 event, the torn line");
    assert!(spool.drain(DRAIN).await, "stuck with {} queued", spool.queued());
    assert_eq!(auth.numbers(), [0, 1, 2, 3]);
    assert_eq!(spool.dropped(), 2, "the damaged and the torn line");
    spool.emit(event(4));
    assert!(spool.drain(DRAIN).await);
    assert_eq!(auth.numbers(), [0, 1, 2, 3, 4], "new events still flow");
}

#[tokio::test]
async fn over_the_cap_the_oldest_events_are_dropped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(SPOOL_DIR);
    let auth = FakeAuth::down();
    let opts = SpoolOptions { max_bytes: 8 * 1024, segment_bytes: 1024, ..fast() };
    let spool = open(&dir, &auth, opts);
    let metrics = Metrics::new();
    spool.register_metrics(&metrics);
    for n in 0..400 {
        spool.emit(event(n));
    }
    let on_disk: u64 = segments(&dir).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert!(on_disk <= 8 * 1024, "{on_disk} bytes on disk");
    let dropped = spool.dropped();
    assert!(dropped > 0, "nothing dropped");
    assert_eq!(spool.queued() + dropped, 400);
    let text = metrics.encode().unwrap();
    assert!(text.contains(&format!("portcullis_audit_spool_dropped_total{{reason=\"over_cap\"}} {dropped}\n")), "{text}");
    assert!(text.contains(&format!("portcullis_audit_spool_queued_events {}\n", spool.queued())), "{text}");

    auth.down.store(false, Ordering::SeqCst);
    assert!(spool.drain(DRAIN).await);
    let got = auth.numbers();
    assert_eq!(got.len() as u64 + dropped, 400);
    assert_eq!(got, (dropped..400).collect::<Vec<_>>(), "the newest are kept, in order");
    assert!(metrics.encode().unwrap().contains("portcullis_audit_spool_queued_events 0\n"));
}

#[tokio::test]
async fn events_auth_refuses_for_good_are_dropped_not_retried_forever() {
    let tmp = tempfile::tempdir().unwrap();
    let auth = Arc::new(FakeAuth::default());
    let spool = open(tmp.path(), &auth, fast());
    spool.emit(json!({"event": "forbidden", "n": 0}));
    spool.emit(event(1));
    assert!(spool.drain(DRAIN).await, "a refused event must not hold up the queue");
    assert_eq!(auth.numbers(), [1]);
    assert_eq!(spool.dropped(), 1);
}

#[tokio::test]
async fn ids_and_times_given_are_kept_and_non_objects_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let auth = Arc::new(FakeAuth::default());
    let spool = open(tmp.path(), &auth, fast());
    let id = spool.append(json!({"event": "exec", "n": 0, "id": "abc", "time": "2026-01-02T03:04:05Z"})).unwrap();
    assert_eq!(id, "abc");
    let err = spool.append(json!([1, 2])).unwrap_err();
    assert_eq!(err.to_string(), "an audit event must be a JSON object, not an array");
    assert!(spool.drain(DRAIN).await);
    let got = auth.stored();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["id"], "abc");
    assert_eq!(got[0]["time"], "2026-01-02T03:04:05Z");
}

#[tokio::test]
async fn the_spool_is_private_to_the_service() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(SPOOL_DIR);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let auth = FakeAuth::down();
    let spool = open(&dir, &auth, fast());
    spool.emit(event(0));
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    for seg in segments(&dir) {
        assert_eq!(std::fs::metadata(&seg).unwrap().permissions().mode() & 0o777, 0o600, "{}", seg.display());
    }
}

#[tokio::test]
async fn a_second_process_on_the_same_spool_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let auth = Arc::new(FakeAuth::default());
    let first = open(tmp.path(), &auth, fast());
    let err = AuditSpool::open_with(tmp.path(), Sender(auth.clone()), fast()).unwrap_err();
    assert!(err.to_string().contains("is in use by another process"), "{err}");
    drop(first);
    open(tmp.path(), &auth, fast());
}

#[test]
fn opening_outside_a_runtime_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let err = AuditSpool::open(tmp.path(), Sender(Arc::new(FakeAuth::default()))).unwrap_err();
    assert!(err.to_string().contains("inside a tokio runtime"), "{err}");
}
