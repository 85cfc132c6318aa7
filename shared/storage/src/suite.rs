//! The conformance suite every backend must pass.

use crate::{Backend, BackendExt};

/// Runs every check against `b`, which must start empty. Panics on the first failure.
pub fn run(b: &dyn Backend) {
    assert_eq!(b.get("a/1").unwrap(), None, "empty backend has no keys");
    b.put("a/1", b"one").unwrap();
    assert_eq!(b.get("a/1").unwrap().as_deref(), Some(&b"one"[..]));
    b.put("a/1", b"uno").unwrap();
    assert_eq!(b.get("a/1").unwrap().as_deref(), Some(&b"uno"[..]), "put replaces");

    assert!(!b.create("a/1", b"x").unwrap(), "create refuses an existing key");
    assert_eq!(b.get("a/1").unwrap().as_deref(), Some(&b"uno"[..]));
    assert!(b.create("a/2", b"two").unwrap());
    b.put("ab/1", b"other prefix").unwrap();
    b.put("b/1", b"b").unwrap();

    let listed: Vec<String> = b.list("a/").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(listed, vec!["a/1", "a/2"], "list is by prefix, in key order");
    assert_eq!(b.list("zzz/").unwrap().len(), 0);

    assert!(b.delete("a/1").unwrap());
    assert!(!b.delete("a/1").unwrap(), "second delete finds nothing");
    assert_eq!(b.get("a/1").unwrap(), None);

    b.put_json("j/x", &vec![1, 2, 3]).unwrap();
    assert_eq!(b.get_json::<Vec<i32>>("j/x").unwrap(), Some(vec![1, 2, 3]));
    b.put("j/bad", b"not json").unwrap();
    let e = b.get_json::<Vec<i32>>("j/bad").unwrap_err().to_string();
    assert!(e.contains("j/bad"), "corrupt record error names the key: {e}");
    b.flush().unwrap();
}
