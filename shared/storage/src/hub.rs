//! Fans a backend's ordered change stream out to its watchers and keeps a bounded history
//! so a watcher can resume after a revision it already saw.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::{Event, StorageError, Watcher};

/// Room in each watcher's queue beyond a full history replay, so a watcher that reads
/// steadily never lags; one that stops reading is dropped with `Lagged` instead of making
/// the backend buffer without bound.
const QUEUE_SLACK: usize = 4096;

struct Sub {
    prefix: String,
    /// Deliver only events after this revision (the resumption point).
    after: u64,
    tx: mpsc::Sender<Result<Event, StorageError>>,
    closed: Arc<Mutex<Option<StorageError>>>,
}

/// The history and the watchers. Callers must publish in strictly increasing revision order
/// (each backend does so under the lock that orders its writes).
pub(crate) struct Hub {
    history: VecDeque<Event>,
    cap: usize,
    /// Every event after `floor` is in `history` (or not yet written).
    floor: u64,
    /// The newest revision published (or known at start).
    head: u64,
    subs: Vec<Sub>,
}

impl Hub {
    /// A hub whose history starts empty at revision `head`.
    pub(crate) fn new(cap: usize, head: u64) -> Self {
        Hub { history: VecDeque::new(), cap: cap.max(1), floor: head, head, subs: Vec::new() }
    }

    pub(crate) fn head(&self) -> u64 {
        self.head
    }

    /// Records `ev` and hands it to the watchers of its key.
    pub(crate) fn publish(&mut self, ev: Event) {
        if ev.revision <= self.head {
            // Already seen (a feed catching up over events it has).
            return;
        }
        self.head = ev.revision;
        self.subs.retain(|s| deliver(s, &ev));
        self.history.push_back(ev);
        while self.history.len() > self.cap {
            if let Some(old) = self.history.pop_front() {
                self.floor = old.revision;
            }
        }
    }

    /// A watcher of `prefix` from `after` (`None`: from the current head).
    pub(crate) fn subscribe(&mut self, prefix: &str, after: Option<u64>) -> Result<Watcher, StorageError> {
        let after = after.unwrap_or(self.head);
        if after < self.floor {
            return Err(StorageError::Compacted { revision: after });
        }
        let (tx, rx) = mpsc::channel(self.cap + QUEUE_SLACK);
        let closed = Arc::new(Mutex::new(None));
        let sub = Sub { prefix: prefix.to_string(), after, tx, closed: closed.clone() };
        // The history holds at most `cap` events, so the replay always fits the queue.
        let replayed = self.history.iter().filter(|ev| ev.revision > after).all(|ev| deliver(&sub, ev));
        if replayed {
            self.subs.push(sub);
        }
        Ok(Watcher { rx, closed })
    }

    /// Forgets the history and closes every watcher with `reason` (the feed lost events it
    /// cannot recover); the hub restarts at `head`.
    pub(crate) fn reset(&mut self, head: u64, reason: impl Fn() -> StorageError) {
        for s in self.subs.drain(..) {
            if let Ok(mut c) = s.closed.lock() {
                *c = Some(reason());
            }
        }
        self.history.clear();
        self.floor = head;
        self.head = head;
    }
}

/// Sends `ev` to `s` if it matches; returns whether `s` stays subscribed.
fn deliver(s: &Sub, ev: &Event) -> bool {
    if ev.revision <= s.after || !ev.key.starts_with(&s.prefix) {
        return !s.tx.is_closed();
    }
    match s.tx.try_send(Ok(ev.clone())) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Closed(_)) => false,
        Err(mpsc::error::TrySendError::Full(_)) => {
            if let Ok(mut c) = s.closed.lock() {
                *c = Some(StorageError::Lagged);
            }
            false
        }
    }
}
