//! The compliance suite every backend must pass. Each check uses its own key prefix, so they
//! can run one after another on one backend; each panics on the first failure.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_storage::{Backend, BackendExt, Event, EventKind, StorageError, Watcher};

pub type B = Arc<dyn Backend>;

/// The next event, failing the test after `secs`.
pub async fn next(w: &mut Watcher, secs: u64) -> Event {
    match tokio::time::timeout(Duration::from_secs(secs), w.next()).await {
        Ok(Some(Ok(ev))) => ev,
        Ok(Some(Err(e))) => panic!("watcher failed: {e}"),
        Ok(None) => panic!("watcher closed"),
        Err(_) => panic!("no event within {secs}s"),
    }
}

/// Every check but `compacted` (which needs a backend with a small history).
pub async fn run(b: B) {
    crud(&b);
    create_if_absent(&b);
    ranges(&b);
    compare_and_swap(&b);
    cas_race(&b);
    compare_and_delete(&b);
    ttl(&b).await;
    watch_ordering(&b).await;
    watch_resumption(&b).await;
    concurrent_writers(&b);
    json(&b);
    b.flush().unwrap();
}

pub fn crud(b: &B) {
    assert_eq!(b.get("a/1").unwrap(), None, "empty backend has no keys");
    let r0 = b.revision().unwrap();
    b.put("a/1", b"one").unwrap();
    assert_eq!(b.get("a/1").unwrap().as_deref(), Some(&b"one"[..]));
    let first = b.get_item("a/1").unwrap().unwrap();
    assert!(first.revision > r0, "a write moves the revision on");
    assert_eq!(first.revision, b.revision().unwrap());
    b.put("a/1", b"uno").unwrap();
    let second = b.get_item("a/1").unwrap().unwrap();
    assert_eq!(second.value, b"uno", "put replaces");
    assert!(second.revision > first.revision);
    b.put("ab/1", b"other prefix").unwrap();
    b.put("b/1", b"b").unwrap();
    b.put("a/2", b"two").unwrap();
    let listed: Vec<String> = b.list("a/").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(listed, vec!["a/1", "a/2"], "list is by prefix, in key order");
    assert_eq!(b.list("zzz/").unwrap().len(), 0);
    assert!(b.delete("a/1").unwrap());
    assert!(!b.delete("a/1").unwrap(), "second delete finds nothing");
    assert_eq!(b.get("a/1").unwrap(), None);
    assert_eq!(b.get_item("a/1").unwrap(), None);
}

pub fn create_if_absent(b: &B) {
    assert!(b.create("c/1", b"first").unwrap());
    assert!(!b.create("c/1", b"second").unwrap(), "create refuses an existing key");
    assert_eq!(b.get("c/1").unwrap().as_deref(), Some(&b"first"[..]));
    let rev = b.revision().unwrap();
    assert!(!b.create("c/1", b"third").unwrap());
    assert_eq!(b.revision().unwrap(), rev, "a refused create writes nothing");
}

pub fn ranges(b: &B) {
    for k in ["r/a", "r/b", "r/c", "r/d", "r/e", "s/x"] {
        b.put(k, k.as_bytes()).unwrap();
    }
    let keys = |items: Vec<portcullis_storage::Item>| items.into_iter().map(|i| i.key).collect::<Vec<_>>();
    assert_eq!(keys(b.range("r/b", "r/e", 0, false).unwrap()), ["r/b", "r/c", "r/d"], "start inclusive, end exclusive");
    assert_eq!(keys(b.range("r/b", "r/e", 0, true).unwrap()), ["r/d", "r/c", "r/b"], "reverse is descending");
    assert_eq!(keys(b.range("r/b", "r/e", 2, false).unwrap()), ["r/b", "r/c"]);
    assert_eq!(keys(b.range("r/b", "r/e", 2, true).unwrap()), ["r/d", "r/c"], "a reverse limit keeps the last keys");
    assert_eq!(keys(b.range("r/", "r0", 0, false).unwrap()).len(), 5);
    assert!(b.range("r/e", "r/b", 0, false).unwrap().is_empty(), "an empty interval");
    let item = &b.range("r/c", "r/d", 0, false).unwrap()[0];
    assert_eq!((item.value.as_slice(), item.revision), (&b"r/c"[..], b.get_item("r/c").unwrap().unwrap().revision));
}

pub fn compare_and_swap(b: &B) {
    assert!(b.compare_and_swap("cas/k", None, b"v1").unwrap(), "None expects absence");
    assert!(!b.compare_and_swap("cas/k", None, b"v2").unwrap());
    assert!(!b.compare_and_swap("cas/k", Some(b"wrong"), b"v2").unwrap());
    assert_eq!(b.get("cas/k").unwrap().as_deref(), Some(&b"v1"[..]));
    assert!(b.compare_and_swap("cas/k", Some(b"v1"), b"v2").unwrap());
    assert_eq!(b.get("cas/k").unwrap().as_deref(), Some(&b"v2"[..]));
    assert!(!b.compare_and_swap("cas/absent", Some(b"v1"), b"v2").unwrap());
    assert_eq!(b.get("cas/absent").unwrap(), None);
}

/// Increments one counter by CAS from many threads (on one or several backends sharing
/// storage): no increment may be lost.
pub fn cas_race_on(backends: &[B], key: &str, threads: usize, per_thread: usize) {
    backends[0].put(key, b"0").unwrap();
    std::thread::scope(|s| {
        for t in 0..threads {
            let b = backends[t % backends.len()].clone();
            s.spawn(move || {
                for _ in 0..per_thread {
                    loop {
                        let cur = b.get(key).unwrap().unwrap();
                        let n: u64 = std::str::from_utf8(&cur).unwrap().parse().unwrap();
                        if b.compare_and_swap(key, Some(&cur), (n + 1).to_string().as_bytes()).unwrap() {
                            break;
                        }
                    }
                }
            });
        }
    });
    let end = backends[0].get(key).unwrap().unwrap();
    assert_eq!(String::from_utf8(end).unwrap(), (threads * per_thread).to_string(), "an increment was lost");
}

pub fn cas_race(b: &B) {
    cas_race_on(std::slice::from_ref(b), "cas/counter", 8, 20);
}

pub fn compare_and_delete(b: &B) {
    b.put("cad/k", b"v").unwrap();
    assert!(!b.compare_and_delete("cad/k", b"other").unwrap());
    assert_eq!(b.get("cad/k").unwrap().as_deref(), Some(&b"v"[..]));
    assert!(b.compare_and_delete("cad/k", b"v").unwrap());
    assert_eq!(b.get("cad/k").unwrap(), None);
    assert!(!b.compare_and_delete("cad/k", b"v").unwrap(), "nothing left to delete");
}

pub async fn ttl(b: &B) {
    let mut w = b.watch("ttl/", None).unwrap();
    let start = Instant::now();
    b.put_ttl("ttl/a", b"short", Duration::from_millis(300)).unwrap();
    assert_eq!(b.get("ttl/a").unwrap().as_deref(), Some(&b"short"[..]), "live before its TTL");
    b.put_ttl("ttl/kept", b"x", Duration::from_millis(300)).unwrap();
    b.put("ttl/kept", b"now permanent").unwrap();
    b.put_ttl("ttl/long", b"y", Duration::from_secs(3600)).unwrap();
    let mut seen = Vec::new();
    let deleted = loop {
        let ev = next(&mut w, 5).await;
        if ev.kind == EventKind::Delete {
            break ev;
        }
        seen.push(ev.key);
    };
    assert_eq!(seen, ["ttl/a", "ttl/kept", "ttl/kept", "ttl/long"]);
    assert_eq!((deleted.key.as_str(), deleted.value.as_ref()), ("ttl/a", None), "expiry reaches watchers as a Delete");
    assert!(start.elapsed() >= Duration::from_millis(250), "expired too early: {:?}", start.elapsed());
    assert_eq!(b.get("ttl/a").unwrap(), None);
    // Past the TTL ttl/kept had before its plain put, and a few sweeps later.
    std::thread::sleep(Duration::from_millis(500));
    let listed: Vec<String> = b.list("ttl/").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(listed, ["ttl/kept", "ttl/long"], "put clears a TTL; a long TTL stays");
    assert!(b.range("ttl/", "ttl0", 0, false).unwrap().iter().all(|i| i.key != "ttl/a"));
    assert!(b.create("ttl/a", b"again").unwrap(), "an expired record counts as absent");
    // An expired record that was never swept also counts as absent for create.
    b.put_ttl("ttl/b", b"1", Duration::from_millis(1)).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert!(b.create("ttl/b", b"2").unwrap());
    assert_eq!(b.get("ttl/b").unwrap().as_deref(), Some(&b"2"[..]));
}

pub async fn watch_ordering(b: &B) {
    let mut w = b.watch("wo/", None).unwrap();
    b.put("wo-before-prefix", b"x").unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let b = b.clone();
            s.spawn(move || {
                for i in 0..25 {
                    b.put(&format!("wo/{t}/{i:03}"), format!("{t}-{i}").as_bytes()).unwrap();
                    b.put(&format!("wx/{t}/{i:03}"), b"noise").unwrap();
                }
            });
        }
    });
    assert!(b.delete("wo/0/000").unwrap());
    let mut last_rev = 0;
    let mut next_i = [0usize; 4];
    for _ in 0..100 {
        let ev = next(&mut w, 10).await;
        assert!(ev.revision > last_rev, "revisions must grow: {} after {last_rev}", ev.revision);
        last_rev = ev.revision;
        assert_eq!(ev.kind, EventKind::Put);
        let parts: Vec<&str> = ev.key.split('/').collect();
        assert_eq!(parts[0], "wo", "only the watched prefix: {}", ev.key);
        let t: usize = parts[1].parse().unwrap();
        let i: usize = parts[2].parse().unwrap();
        assert_eq!(i, next_i[t], "each writer's events in its order");
        next_i[t] += 1;
        assert_eq!(ev.value.unwrap(), format!("{t}-{i}").into_bytes());
    }
    let del = next(&mut w, 10).await;
    assert_eq!((del.kind, del.key.as_str(), del.value), (EventKind::Delete, "wo/0/000", None));
    assert!(del.revision > last_rev);
}

pub async fn watch_resumption(b: &B) {
    let r0 = b.revision().unwrap();
    b.put("wr/1", b"1").unwrap();
    b.put("wr/2", b"2").unwrap();
    let mid = b.revision().unwrap();
    assert!(b.delete("wr/1").unwrap());
    b.put("other/1", b"not watched").unwrap();
    let mut w = b.watch("wr/", Some(r0)).unwrap();
    let evs = [next(&mut w, 5).await, next(&mut w, 5).await, next(&mut w, 5).await];
    let got: Vec<(EventKind, &str)> = evs.iter().map(|e| (e.kind, e.key.as_str())).collect();
    assert_eq!(got, [(EventKind::Put, "wr/1"), (EventKind::Put, "wr/2"), (EventKind::Delete, "wr/1")]);
    assert!(evs[0].revision > r0 && evs[0].revision < evs[1].revision && evs[1].revision < evs[2].revision);
    // Live events follow the replayed ones.
    b.put("wr/3", b"3").unwrap();
    assert_eq!(next(&mut w, 5).await.key, "wr/3");
    let mut later = b.watch("wr/", Some(mid)).unwrap();
    let first = next(&mut later, 5).await;
    assert_eq!((first.kind, first.key.as_str()), (EventKind::Delete, "wr/1"), "resumes strictly after `after`");
}

/// Needs a backend keeping at most `history` (< 100) events.
pub async fn compacted(b: &B, history: usize) {
    for i in 0..(history * 2 + 10) {
        b.put(&format!("cp/{i}"), b"x").unwrap();
    }
    match b.watch("cp/", Some(1)) {
        Err(StorageError::Compacted { .. }) => {}
        Err(e) => panic!("expected Compacted, got {e}"),
        Ok(_) => panic!("expected Compacted, got a watcher"),
    }
    let rev = b.revision().unwrap();
    let mut w = b.watch("cp/", Some(rev - 5)).unwrap();
    for _ in 0..5 {
        assert!(next(&mut w, 5).await.revision > rev - 5);
    }
}

pub fn concurrent_writers(b: &B) {
    let before = b.revision().unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let b = b.clone();
            s.spawn(move || {
                for i in 0..50 {
                    b.put(&format!("cw/{t}/{i}"), format!("{t}/{i}").as_bytes()).unwrap();
                }
            });
        }
    });
    let all = b.range("cw/", "cw0", 0, false).unwrap();
    assert_eq!(all.len(), 200);
    let revs: HashSet<u64> = all.iter().map(|i| i.revision).collect();
    assert_eq!(revs.len(), 200, "every write has its own revision");
    assert!(revs.iter().all(|r| *r > before));
    assert!(b.revision().unwrap() >= before + 200);
    for i in &all {
        assert_eq!(i.value, i.key.trim_start_matches("cw/").as_bytes());
    }
}

pub fn json(b: &B) {
    b.put_json("j/x", &vec![1, 2, 3]).unwrap();
    assert_eq!(b.get_json::<Vec<i32>>("j/x").unwrap(), Some(vec![1, 2, 3]));
    b.put("j/bad", b"not json").unwrap();
    let e = b.get_json::<Vec<i32>>("j/bad").unwrap_err().to_string();
    assert!(e.contains("j/bad"), "corrupt record error names the key: {e}");
}
