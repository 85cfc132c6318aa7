//! TTL support for the embedded backends: wall-clock deadlines and a sweeper thread that
//! deletes expired records so watchers get their Delete events.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often the sweeper looks for expired records. Reads already hide them at once; this
/// only bounds how late watchers hear of an expiry.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Milliseconds since the Unix epoch (a deadline that survives restarts, for sled).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The deadline `ttl` from now, never 0 (0 means "no TTL" in stored metadata).
pub(crate) fn deadline_ms(ttl: Duration) -> u64 {
    now_ms().saturating_add(ttl.as_millis().min(u64::MAX as u128) as u64).max(1)
}

/// Whether a record with this deadline (0: none) is expired now.
pub(crate) fn expired(deadline: u64, now: u64) -> bool {
    deadline != 0 && deadline <= now
}

/// A background thread calling `sweep` every [`SWEEP_EVERY`] until dropped; dropping it
/// stops and joins the thread, so the backend's files are closed when the backend is.
pub(crate) struct Sweeper {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

impl Sweeper {
    /// Starts the thread; `sweep` returns false once the backend is gone.
    pub(crate) fn start(name: &str, sweep: impl Fn() -> bool + Send + 'static) -> Result<Sweeper, std::io::Error> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let handle = std::thread::Builder::new().name(name.to_string()).spawn(move || {
            let (lock, cvar) = &*flag;
            loop {
                let Ok(guard) = lock.lock() else { return };
                let Ok((guard, _)) = cvar.wait_timeout_while(guard, SWEEP_EVERY, |stopped| !*stopped) else {
                    return;
                };
                if *guard {
                    return;
                }
                drop(guard);
                if !sweep() {
                    return;
                }
            }
        })?;
        Ok(Sweeper { stop, handle: Some(handle) })
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        let (lock, cvar) = &*self.stop;
        if let Ok(mut stopped) = lock.lock() {
            *stopped = true;
        }
        cvar.notify_all();
        if let Some(h) = self.handle.take()
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
    }
}
