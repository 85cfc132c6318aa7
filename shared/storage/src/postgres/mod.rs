//! The shared backend: PostgreSQL through tokio-postgres, so any number of auth processes of
//! one cluster can share one database. Each backend owns a small tokio runtime, so the sync
//! trait can be called from anywhere (plain threads, or inside other runtimes).

mod conn;
mod feed;
mod sql;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::{Runtime, RuntimeFlavor};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use self::conn::{Pool, Target};
use crate::hub::Hub;
use crate::{Backend, Item, StorageError, Watcher};

/// Connections per process for calls (the change feed has its own).
const POOL_SIZE: usize = 4;
/// The longest one call may take, connection included, before it fails as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How often expired records are deleted (so watchers hear of them) and old events pruned.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
const PRUNE_EVERY_SWEEPS: u32 = 40;

/// Stores records in PostgreSQL; see `sql.rs` for the schema.
pub struct PostgresBackend {
    shared: Arc<Shared>,
    runtime: Option<Runtime>,
}

struct Shared {
    target: Arc<Target>,
    pool: Pool,
    hub: Arc<Mutex<Hub>>,
    history: usize,
}

impl PostgresBackend {
    /// Connects, creates the schema if missing, and starts the change feed. Fails with
    /// `StorageError::Unavailable` naming host:port when the database cannot be reached.
    pub fn connect(conn_string: &str) -> Result<PostgresBackend, StorageError> {
        Self::connect_with_history(conn_string, crate::DEFAULT_HISTORY)
    }

    /// As [`PostgresBackend::connect`], keeping `history` events for resuming watchers
    /// (in this process and in the database).
    pub fn connect_with_history(conn_string: &str, history: usize) -> Result<PostgresBackend, StorageError> {
        let target = Arc::new(Target::parse(conn_string)?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("portcullis-storage")
            .enable_all()
            .build()
            .map_err(|e| StorageError::Backend(format!("cannot start the storage runtime: {e}")))?;
        let t = target.clone();
        let (listener, hub) = block_on(&runtime, async move {
            let c = conn::Conn::open(&t).await?;
            create_schema(&t, &c.client).await?;
            let listener = feed::Listener::open(&t).await?;
            let hub = feed::initial_hub(&listener, &t, history).await?;
            Ok((listener, hub))
        })?;
        let hub = Arc::new(Mutex::new(hub));
        let shared = Arc::new(Shared { target: target.clone(), pool: Pool::new(POOL_SIZE), hub: hub.clone(), history });
        runtime.spawn(feed::run(target, hub, listener));
        runtime.spawn(sweep_loop(Arc::downgrade(&shared)));
        Ok(PostgresBackend { shared, runtime: Some(runtime) })
    }

    /// host:port of the database (what errors name).
    pub fn addr(&self) -> &str {
        &self.shared.target.addr
    }

    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(Arc<Shared>) -> std::pin::Pin<Box<dyn Future<Output = Result<T, StorageError>> + Send>>,
    ) -> Result<T, StorageError> {
        let rt = self.runtime.as_ref().ok_or_else(|| StorageError::Backend("storage runtime stopped".into()))?;
        let addr = self.shared.target.addr.clone();
        let fut = f(self.shared.clone());
        block_on(rt, async move {
            tokio::time::timeout(CALL_TIMEOUT, fut).await.unwrap_or_else(|_| {
                Err(StorageError::Unavailable { addr, reason: format!("no answer within {}s", CALL_TIMEOUT.as_secs()) })
            })
        })
    }
}

impl Drop for PostgresBackend {
    fn drop(&mut self) {
        // Safe inside async code too, unlike dropping a runtime the ordinary way.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Runs `fut` on `rt` and waits for it from this (non-runtime) thread; inside a multi-thread
/// runtime the wait is announced with `block_in_place`, and inside a current-thread runtime
/// it just blocks that thread (the work runs on `rt`'s own threads, so it cannot deadlock).
fn block_on<T: Send + 'static>(
    rt: &Runtime,
    fut: impl Future<Output = Result<T, StorageError>> + Send + 'static,
) -> Result<T, StorageError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    let wait = move || rx.recv().unwrap_or_else(|_| Err(StorageError::Backend("the storage runtime stopped".into())));
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(wait),
        _ => wait(),
    }
}

async fn create_schema(target: &Target, client: &tokio_postgres::Client) -> Result<(), StorageError> {
    let lock = format!("BEGIN; SELECT pg_advisory_xact_lock({}); {} COMMIT;", sql::SCHEMA_LOCK, sql::SCHEMA);
    client.batch_execute(&lock).await.map_err(|e| target.map_err(e))
}

impl Shared {
    /// Runs one statement on a pooled connection. A failure to prepare (nothing executed) is
    /// retried once on a fresh connection; a failure while executing is retried only when
    /// `idempotent` (reads), since a write may have committed before the connection died.
    async fn query(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
        idempotent: bool,
    ) -> Result<Vec<Row>, StorageError> {
        let mut retried = false;
        loop {
            let mut pooled = self.pool.get(&self.target).await?;
            let conn = pooled.conn()?;
            let (res, executed) = match conn.prepare(sql).await {
                Err(e) => (Err(e), false),
                Ok(stmt) => (conn.client.query(&stmt, params).await, true),
            };
            match res {
                Ok(rows) => return Ok(rows),
                Err(e) => {
                    let err = self.target.map_err(e);
                    let unavailable = matches!(err, StorageError::Unavailable { .. });
                    if unavailable {
                        pooled.discard();
                    }
                    if unavailable && !retried && (idempotent || !executed) {
                        retried = true;
                        continue;
                    }
                    return Err(err);
                }
            }
        }
    }

    /// One `portcullis_write` call; returns the revision written, or 0 when its condition failed.
    async fn write(
        &self,
        op: i32,
        key: &str,
        value: Option<&[u8]>,
        expected: Option<&[u8]>,
        ttl_ms: Option<i64>,
    ) -> Result<u64, StorageError> {
        let rows = self.query(sql::WRITE, &[&op, &key, &value, &expected, &ttl_ms], false).await?;
        let rev: i64 = rows.first().map(|r| r.get(0)).unwrap_or(0);
        Ok(rev as u64)
    }

    async fn items(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Item>, StorageError> {
        Ok(self
            .query(sql, params, true)
            .await?
            .iter()
            .map(|r| Item { key: r.get(0), value: r.get(1), revision: r.get::<_, i64>(2) as u64 })
            .collect())
    }

    async fn revision(&self) -> Result<u64, StorageError> {
        let rows = self.query(sql::REVISION, &[], true).await?;
        Ok(rows.first().map(|r| r.get::<_, i64>(0) as u64).unwrap_or(0))
    }

    /// Deletes expired records through the write path (so every process's watchers get the
    /// Delete once: the condition makes all but one sweeper's call a no-op).
    async fn sweep(&self) -> Result<(), StorageError> {
        let rows = self.query(sql::EXPIRED, &[], true).await?;
        for r in rows {
            let key: String = r.get(0);
            self.write(sql::op::EXPIRE, &key, None, None, None).await?;
        }
        Ok(())
    }

    async fn prune(&self) -> Result<(), StorageError> {
        self.query(sql::PRUNE, &[&(self.history as i64)], true).await.map(|_| ())
    }
}

async fn sweep_loop(shared: std::sync::Weak<Shared>) {
    let mut n: u32 = 0;
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(shared) = shared.upgrade() else { return };
        if let Err(e) = shared.sweep().await {
            tracing::debug!(error = %e, "storage: TTL sweep failed");
        }
        n = n.wrapping_add(1);
        if n.is_multiple_of(PRUNE_EVERY_SWEEPS)
            && let Err(e) = shared.prune().await
        {
            tracing::debug!(error = %e, "storage: event pruning failed");
        }
    }
}

fn ttl_ms(ttl: Duration) -> i64 {
    ttl.as_millis().min(i64::MAX as u128) as i64
}

impl Backend for PostgresBackend {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.get_item(key)?.map(|i| i.value))
    }
    fn get_item(&self, key: &str) -> Result<Option<Item>, StorageError> {
        let key = key.to_string();
        self.run(move |s| {
            Box::pin(async move {
                let rows = s.query(sql::GET, &[&key], true).await?;
                Ok(rows.first().map(|r| Item { key: key.clone(), value: r.get(0), revision: r.get::<_, i64>(1) as u64 }))
            })
        })
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        let (key, value) = (key.to_string(), value.to_vec());
        self.run(move |s| Box::pin(async move { s.write(sql::op::PUT, &key, Some(&value), None, None).await.map(|_| ()) }))
    }
    fn put_ttl(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StorageError> {
        let (key, value, ttl) = (key.to_string(), value.to_vec(), ttl_ms(ttl));
        self.run(move |s| {
            Box::pin(async move { s.write(sql::op::PUT, &key, Some(&value), None, Some(ttl)).await.map(|_| ()) })
        })
    }
    fn create(&self, key: &str, value: &[u8]) -> Result<bool, StorageError> {
        self.compare_and_swap(key, None, value)
    }
    fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<bool, StorageError> {
        let (key, expected, new) = (key.to_string(), expected.map(<[u8]>::to_vec), new.to_vec());
        self.run(move |s| {
            Box::pin(async move {
                let op = if expected.is_some() { sql::op::CAS } else { sql::op::CREATE };
                Ok(s.write(op, &key, Some(&new), expected.as_deref(), None).await? != 0)
            })
        })
    }
    fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, StorageError> {
        let (key, expected) = (key.to_string(), expected.to_vec());
        self.run(move |s| {
            Box::pin(async move { Ok(s.write(sql::op::CAD, &key, None, Some(&expected), None).await? != 0) })
        })
    }
    fn delete(&self, key: &str) -> Result<bool, StorageError> {
        let key = key.to_string();
        self.run(move |s| Box::pin(async move { Ok(s.write(sql::op::DELETE, &key, None, None, None).await? != 0) }))
    }
    fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        let (start, end) = (prefix.to_string(), crate::prefix_end(prefix));
        self.run(move |s| {
            Box::pin(async move {
                let items = s.items(sql::LIST, &[&start, &end]).await?;
                Ok(items.into_iter().map(|i| (i.key, i.value)).collect())
            })
        })
    }
    fn range(&self, start: &str, end: &str, limit: usize, reverse: bool) -> Result<Vec<Item>, StorageError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let (start, end) = (start.to_string(), end.to_string());
        let limit: Option<i64> = (limit != 0).then(|| limit.min(i64::MAX as usize) as i64);
        let sql = if reverse { sql::RANGE_DESC } else { sql::RANGE_ASC };
        self.run(move |s| Box::pin(async move { s.items(sql, &[&start, &end, &limit]).await }))
    }
    fn flush(&self) -> Result<(), StorageError> {
        // Every acknowledged write is a committed transaction: already durable.
        Ok(())
    }
    fn revision(&self) -> Result<u64, StorageError> {
        self.run(|s| Box::pin(async move { s.revision().await }))
    }
    fn watch(&self, prefix: &str, after: Option<u64>) -> Result<Watcher, StorageError> {
        // "From now on" means after the database's newest revision, which this process's
        // feed may not have read yet; while the database is down, after the feed's.
        let newest = if after.is_none() { self.revision().ok() } else { None };
        let mut hub = self.shared.hub.lock().map_err(|_| StorageError::Backend("watch hub lock poisoned".into()))?;
        let after = after.unwrap_or_else(|| newest.unwrap_or(0).max(hub.head()));
        hub.subscribe(prefix, Some(after))
    }
}
