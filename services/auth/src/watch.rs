//! `WatchAccess`: streams access snapshots to proxies, nodes and agents, rebuilt once per
//! change burst (or every 30 s) and shared by every watcher.

use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use portcullis_access::AccessSnapshot;
use portcullis_proto::auth::AccessSnapshotMessage;
use portcullis_storage::Backend;
use tokio::sync::{mpsc, watch};

use crate::access::Scope;
use crate::error::AuthError;
use crate::state::AuthState;

/// Storage prefixes whose changes change a snapshot. Tunnel reports (a leaf's online
/// status) are left out on purpose: they arrive every few seconds and the periodic rebuild
/// picks their effect up.
pub const WATCHED_PREFIXES: [&str; 9] = [
    "roles/",
    "users/",
    crate::locks::LOCKS_PREFIX,
    "trusted_clusters/",
    "trusted_cas/",
    "remote_clusters/",
    "nodes/",
    "nodenames/",
    "cas/",
];
/// Changes closer together than this are one rebuild.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Rebuilds start at least this far apart, so a heartbeat storm costs two builds a second.
const MIN_GAP: Duration = Duration::from_millis(400);
/// A rebuild (and a resend to every watcher) at least this often, even with no change.
pub const REFRESH: Duration = Duration::from_secs(30);
/// Wait before rebuilding again after a failed build, or re-watching a broken feed.
const RETRY: Duration = Duration::from_secs(1);

/// One build, serialised once for every watcher: with nodes (proxies, agents) and without
/// (nodes). Each variant keeps its `Arc` while its content is unchanged, so watchers can
/// tell by pointer whether they already sent it.
#[derive(Debug)]
pub struct Published {
    pub full: Variant,
    pub lean: Variant,
}

/// One serialised snapshot.
#[derive(Debug, Clone)]
pub struct Variant {
    pub json: Arc<Vec<u8>>,
    pub revision: u64,
    /// The snapshot with its revision zeroed, to tell a real change from a newer revision.
    content: Arc<AccessSnapshot>,
}

/// The shared feed of snapshots: started on the first subscription (it needs a runtime).
pub struct AccessHub {
    state: Weak<AuthState>,
    feed: OnceLock<watch::Receiver<Option<Arc<Published>>>>,
    /// Set at shutdown: every stream ends, so the server's graceful stop need not wait for
    /// watchers that never hang up.
    stop: watch::Sender<bool>,
}

impl AccessHub {
    pub fn new(state: &Arc<AuthState>) -> Self {
        AccessHub { state: Arc::downgrade(state), feed: OnceLock::new(), stop: watch::Sender::new(false) }
    }

    /// Ends every stream (and the rebuild loop).
    pub fn close(&self) {
        self.stop.send_replace(true);
    }

    /// The latest published snapshots; must be called inside a tokio runtime.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Published>>> {
        self.feed
            .get_or_init(|| {
                let (tx, rx) = watch::channel(None);
                tokio::spawn(run(self.state.clone(), tx, self.stop.subscribe()));
                rx
            })
            .clone()
    }

    /// The stream one watcher gets: the current snapshot at once, then each change, and
    /// the current one again after `REFRESH` of silence.
    pub fn stream(
        &self,
        with_nodes: bool,
    ) -> impl futures::Stream<Item = Result<AccessSnapshotMessage, tonic::Status>> + Send + 'static {
        let sub = Subscriber { rx: self.subscribe(), stop: self.stop.subscribe(), with_nodes, last: None };
        futures::stream::unfold(sub, |mut sub| async move {
            let msg = sub.next().await?;
            Some((Ok(msg), sub))
        })
    }
}

struct Subscriber {
    rx: watch::Receiver<Option<Arc<Published>>>,
    stop: watch::Receiver<bool>,
    with_nodes: bool,
    last: Option<Variant>,
}

impl Subscriber {
    /// The next message to send; `None` once the hub is gone.
    async fn next(&mut self) -> Option<AccessSnapshotMessage> {
        loop {
            if *self.stop.borrow() {
                return None;
            }
            let current = self.rx.borrow_and_update().clone();
            if let Some(p) = current {
                let v = if self.with_nodes { &p.full } else { &p.lean };
                if self.last.as_ref().is_none_or(|l| !Arc::ptr_eq(&l.json, &v.json)) {
                    self.last = Some(v.clone());
                    return Some(message(v));
                }
            }
            let waited = tokio::select! {
                w = tokio::time::timeout(REFRESH, self.rx.changed()) => w,
                _ = self.stop.wait_for(|s| *s) => return None,
            };
            match waited {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return None,
                // Keep-alive: the same snapshot again, so the cache knows auth is there.
                Err(_) => {
                    if let Some(v) = &self.last {
                        return Some(message(v));
                    }
                }
            }
        }
    }
}

fn message(v: &Variant) -> AccessSnapshotMessage {
    AccessSnapshotMessage { snapshot_json: v.json.as_ref().clone(), revision: v.revision }
}

/// Builds the two variants; `prev` keeps its `Arc`s where nothing changed.
fn build(state: &AuthState, prev: Option<&Published>) -> Result<Published, AuthError> {
    let full = state.access_snapshot(Scope::All { nodes: true })?;
    let mut lean = full.clone();
    lean.nodes.clear();
    Ok(Published { full: variant(full, prev.map(|p| &p.full))?, lean: variant(lean, prev.map(|p| &p.lean))? })
}

fn variant(snap: AccessSnapshot, prev: Option<&Variant>) -> Result<Variant, AuthError> {
    let revision = snap.revision;
    let mut content = snap;
    content.revision = 0;
    if let Some(p) = prev
        && *p.content == content
    {
        return Ok(p.clone());
    }
    content.revision = revision;
    let json = content.to_json().map_err(|e| AuthError::Internal(format!("encoding an access snapshot: {e}")))?;
    content.revision = 0;
    Ok(Variant { json: Arc::new(json), revision, content: Arc::new(content) })
}

/// The hub's loop: build, publish, wait for a change burst or the refresh, repeat. Ends
/// when the auth state is dropped.
async fn run(state: Weak<AuthState>, tx: watch::Sender<Option<Arc<Published>>>, mut stop: watch::Receiver<bool>) {
    let Some(backend) = state.upgrade().map(|s| s.backend.clone()) else { return };
    let (dirty_tx, mut dirty) = mpsc::channel::<()>(1);
    let mut feeds = Vec::new();
    for prefix in WATCHED_PREFIXES {
        feeds.push(tokio::spawn(forward(backend.clone(), prefix, dirty_tx.clone())));
    }
    drop(backend);
    loop {
        let started = Instant::now();
        let Some(st) = state.upgrade() else { break };
        let prev = tx.borrow().clone();
        let built = tokio::task::spawn_blocking(move || build(&st, prev.as_deref())).await;
        let ok = match built {
            Ok(Ok(p)) => {
                let changed = tx.borrow().as_ref().is_none_or(|old| {
                    !Arc::ptr_eq(&old.full.json, &p.full.json) || !Arc::ptr_eq(&old.lean.json, &p.lean.json)
                });
                if changed {
                    tx.send_replace(Some(Arc::new(p)));
                }
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot build the access snapshot; watchers keep the last one");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "access snapshot build failed");
                false
            }
        };
        let wait = if ok { REFRESH } else { RETRY };
        tokio::select! {
            got = dirty.recv() => if got.is_none() { break },
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        // Let the burst finish, and keep builds apart.
        tokio::time::sleep(DEBOUNCE.max(MIN_GAP.saturating_sub(started.elapsed()))).await;
        while dirty.try_recv().is_ok() {}
    }
    for f in feeds {
        f.abort();
    }
}

/// Turns the backend's changes under `prefix` into "something changed" signals. A broken
/// feed is watched again (and counts as a change: events may have been missed).
async fn forward(backend: Arc<dyn Backend>, prefix: &'static str, dirty: mpsc::Sender<()>) {
    loop {
        match backend.watch(prefix, None) {
            Ok(mut w) => loop {
                match w.next().await {
                    Some(Ok(_)) => {
                        let _ = dirty.try_send(());
                    }
                    Some(Err(e)) => {
                        tracing::debug!(prefix, error = %e, "access watch fell behind; watching again");
                        let _ = dirty.try_send(());
                        break;
                    }
                    None => return,
                }
            },
            Err(e) => tracing::warn!(prefix, error = %e, "cannot watch storage for access changes"),
        }
        if dirty.is_closed() {
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use portcullis_pki::Secret;
    use portcullis_types::{Role, RoleSpec, SystemRole, User};

    use super::*;

    fn role(name: &str, login: &str) -> Role {
        let mut spec = RoleSpec::default();
        spec.allow.logins = vec![login.into()];
        Role::new(name, spec)
    }

    async fn next(s: &mut (impl futures::Stream<Item = Result<AccessSnapshotMessage, tonic::Status>> + Unpin)) -> AccessSnapshot {
        let m = tokio::time::timeout(Duration::from_secs(5), s.next()).await.unwrap().unwrap().unwrap();
        let snap = AccessSnapshot::from_json(&m.snapshot_json).unwrap();
        assert_eq!(snap.revision, m.revision);
        snap
    }

    #[tokio::test]
    async fn a_watcher_sees_a_role_change_within_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let st = Arc::new(crate::locks::tests::state(dir.path()));
        st.put_role(&role("dev", "dev")).unwrap();
        let hub = AccessHub::new(&st);
        let mut s = Box::pin(hub.stream(false));
        let first = next(&mut s).await;
        assert_eq!(first.cluster_name, "lockme");
        assert_eq!(first.role("dev").unwrap().spec.allow.logins, vec!["dev".to_string()]);
        assert!(!first.user_cas.is_empty() && !first.tls_cas.is_empty());

        let t = Instant::now();
        st.put_role(&role("dev", "ops")).unwrap();
        let second = next(&mut s).await;
        assert!(t.elapsed() < Duration::from_secs(1), "took {:?}", t.elapsed());
        assert_eq!(second.role("dev").unwrap().spec.allow.logins, vec!["ops".to_string()]);
        assert!(second.revision > first.revision);
    }

    #[tokio::test]
    async fn snapshots_hold_no_secret_and_nodes_only_for_proxies() {
        let dir = tempfile::tempdir().unwrap();
        let st = Arc::new(crate::locks::tests::state(dir.path()));
        st.put_role(&role("dev", "dev")).unwrap();
        st.put_user(&User::new("alice", vec!["dev".into()], Default::default())).unwrap();
        st.set_password("alice", &Secret::new("correct horse battery".to_string())).unwrap();
        let token = st
            .create_token(vec![SystemRole::Node], None, Some("sekrit-join-token-1234".into()), Default::default())
            .unwrap();
        st.put_node(&portcullis_types::Node::new("n1".to_string(), "db-1".to_string(), "10.0.0.1:3022".to_string(), Default::default()))
            .unwrap();
        st.lock_user("bob", None, "gone", "admin").unwrap();
        let hub = AccessHub::new(&st);
        let mut proxy = Box::pin(hub.stream(true));
        let mut node = Box::pin(hub.stream(false));
        let full = next(&mut proxy).await;
        let lean = next(&mut node).await;
        assert_eq!(full.users.get("alice"), Some(&vec!["dev".to_string()]));
        assert_eq!(full.locks.len(), 1);
        assert_eq!(full.nodes.len(), 1);
        assert!(lean.nodes.is_empty());
        let text = String::from_utf8(full.to_json().unwrap()).unwrap();
        for secret in ["PRIVATE KEY", "BEGIN OPENSSH", "$argon2", "argon2", token.token(), "correct horse", "\"private\""] {
            assert!(!text.contains(secret), "snapshot contains {secret:?}: {text}");
        }
        assert!(text.contains("ssh-ed25519") || text.contains("ssh-rsa") || text.contains("ecdsa"), "{text}");
    }
}
