//! The change feed: one dedicated LISTEN connection per process. A notification says "there
//! are new events"; the feed then reads `portcullis_events` after the last revision it saw
//! and hands them, in order, to this process's watchers. After a lost connection it
//! reconnects with backoff and catches up the same way, so nothing is polled and nothing
//! is missed (or, past the kept history, watchers are told `Compacted`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client};

use super::conn::Target;
use super::sql;
use crate::hub::Hub;
use crate::{Event, EventKind, StorageError};

/// Events read per catch-up query.
const BATCH: i64 = 1000;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A LISTENing connection: its client, and a queue that yields once per notification and
/// closes when the connection ends.
pub(crate) struct Listener {
    client: Client,
    notes: mpsc::UnboundedReceiver<()>,
}

impl Listener {
    /// Connects and subscribes to the channel.
    pub(crate) async fn open(target: &Target) -> Result<Listener, StorageError> {
        let (client, mut connection) =
            target.config.connect(target.tls.clone()).await.map_err(|e| target.map_err(e))?;
        let (tx, notes) = mpsc::unbounded_channel();
        // The connection must be driven by hand to see notifications.
        tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(_))) => {
                        if tx.send(()).is_err() {
                            return;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "storage: change feed connection ended");
                        return;
                    }
                    None => return,
                }
            }
        });
        client.batch_execute(&format!("LISTEN {}", sql::CHANNEL)).await.map_err(|e| target.map_err(e))?;
        Ok(Listener { client, notes })
    }

    /// The newest revision in the database.
    pub(crate) async fn revision(&self, target: &Target) -> Result<u64, StorageError> {
        let row = self.client.query_one(sql::REVISION, &[]).await.map_err(|e| target.map_err(e))?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Events after `after`, oldest first, at most `limit`.
    pub(crate) async fn events_after(&self, target: &Target, after: u64, limit: i64) -> Result<Vec<Event>, StorageError> {
        let rows =
            self.client.query(sql::EVENTS_AFTER, &[&(after as i64), &limit]).await.map_err(|e| target.map_err(e))?;
        rows.iter()
            .map(|r| {
                let revision = r.get::<_, i64>(0) as u64;
                let key: String = r.get(1);
                let kind = match r.get::<_, i16>(2) {
                    1 => EventKind::Put,
                    2 => EventKind::Delete,
                    k => {
                        return Err(StorageError::Corrupt { key, reason: format!("event {revision} has unknown kind {k}") });
                    }
                };
                Ok(Event { kind, key, value: r.get(3), revision })
            })
            .collect()
    }
}

/// Builds the hub at start: the kept history up to `history` events, so a watcher may
/// resume from a revision seen by another process before this one started.
pub(crate) async fn initial_hub(l: &Listener, target: &Target, history: usize) -> Result<Hub, StorageError> {
    let head = l.revision(target).await?;
    let start = head.saturating_sub(history as u64);
    let events = l.events_after(target, start, history as i64).await?;
    // Where the table's history begins (older ones pruned), resumption begins too.
    let floor = events.first().map_or(head, |e| e.revision.saturating_sub(1));
    let mut hub = Hub::new(history, floor);
    for ev in events {
        hub.publish(ev);
    }
    Ok(hub)
}

/// Publishes every event after the hub's head. A gap (events pruned while this feed was
/// away) closes all watchers with `Compacted` and restarts the hub past it.
async fn catch_up(l: &Listener, target: &Target, hub: &Mutex<Hub>) -> Result<(), StorageError> {
    loop {
        let head = hub.lock().map_err(|_| StorageError::Backend("watch hub lock poisoned".into()))?.head();
        let events = l.events_after(target, head, BATCH).await?;
        let n = events.len();
        {
            let mut hub = hub.lock().map_err(|_| StorageError::Backend("watch hub lock poisoned".into()))?;
            if let Some(first) = events.first()
                && first.revision > head + 1
            {
                tracing::warn!(missed_after = head, "storage: change feed fell past the kept history");
                hub.reset(first.revision - 1, || StorageError::Compacted { revision: head });
            }
            for ev in events {
                hub.publish(ev);
            }
        }
        if (n as i64) < BATCH {
            return Ok(());
        }
    }
}

/// Runs the feed until the runtime stops, starting from an open listener.
pub(crate) async fn run(target: Arc<Target>, hub: Arc<Mutex<Hub>>, first: Listener) {
    let mut listener = Some(first);
    let mut backoff = BACKOFF_MIN;
    loop {
        let mut l = match listener.take() {
            Some(l) => l,
            None => match Listener::open(&target).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(error = %e, "storage: change feed reconnect failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
        };
        loop {
            if let Err(e) = catch_up(&l, &target, &hub).await {
                tracing::debug!(error = %e, "storage: change feed lost its connection");
                break;
            }
            backoff = BACKOFF_MIN;
            if l.notes.recv().await.is_none() {
                break;
            }
            // One read serves every notification already queued.
            while l.notes.try_recv().is_ok() {}
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
