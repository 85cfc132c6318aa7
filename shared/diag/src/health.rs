//! Readiness (what `/readyz` answers) and heartbeat tracking, which turns the outcome of a
//! service's periodic call to its auth service into readiness and a heartbeat age.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Whether the service should get traffic; not ready carries a one-line reason. Clones
/// share the flag.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// `None` when ready, else why not.
    state: Arc<Mutex<Option<String>>>,
}

impl Readiness {
    /// Not ready yet, for `reason`.
    pub fn new(reason: impl Into<String>) -> Readiness {
        Readiness { state: Arc::new(Mutex::new(Some(reason.into()))) }
    }

    pub fn set_ready(&self) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(was) = s.take() {
            tracing::info!("service is ready (was not ready: {was})");
        }
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        let reason = reason.into();
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.is_none() {
            tracing::warn!("service is not ready: {reason}");
        }
        *s = Some(reason);
    }

    /// `Ok` when ready, else the reason.
    pub fn check(&self) -> Result<(), String> {
        match &*self.state.lock().unwrap_or_else(PoisonError::into_inner) {
            None => Ok(()),
            Some(r) => Err(r.clone()),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.check().is_ok()
    }
}

/// A periodic call to a dependency (the heartbeat to the auth service): each success makes
/// the service ready; once no call succeeded for `max_silence` (3 intervals), a failure makes
/// it not ready. Clones share the state.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    inner: Arc<HeartbeatInner>,
}

#[derive(Debug)]
struct HeartbeatInner {
    started: Instant,
    /// Milliseconds from `started` to the last success, plus one; 0 = never.
    last_ok: AtomicU64,
    ready: Readiness,
    dependency: String,
    max_silence: Duration,
    /// Stays ready through an outage of the dependency (the service works from a cache);
    /// the outage is logged once instead.
    tolerant: bool,
    warned: std::sync::atomic::AtomicBool,
}

impl Heartbeat {
    /// Tracks calls to `dependency` (e.g. "the auth service"), flipping `ready`.
    pub fn new(ready: Readiness, dependency: impl Into<String>, max_silence: Duration) -> Heartbeat {
        Heartbeat {
            inner: Arc::new(HeartbeatInner {
                started: Instant::now(),
                last_ok: AtomicU64::new(0),
                ready,
                dependency: dependency.into(),
                max_silence,
                tolerant: false,
                warned: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Like [`Heartbeat::new`], for a service that keeps serving from a cache while the
    /// dependency is away: silence is logged, readiness stays. A proxy that turned not ready
    /// whenever auth did would be taken out of its load balancer exactly when its cache is
    /// what keeps sessions going.
    pub fn tolerant(ready: Readiness, dependency: impl Into<String>, max_silence: Duration) -> Heartbeat {
        let mut hb = Heartbeat::new(ready, dependency, max_silence);
        if let Some(inner) = Arc::get_mut(&mut hb.inner) {
            inner.tolerant = true;
        }
        hb
    }

    /// A call succeeded.
    pub fn succeeded(&self) {
        let ms = u64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.inner.last_ok.store(ms + 1, Ordering::Relaxed);
        if self.inner.warned.swap(false, Ordering::Relaxed) {
            tracing::info!("{} answers heartbeats again", self.inner.dependency);
        }
        self.inner.ready.set_ready();
    }

    /// A call failed: not ready once the last success is older than `max_silence`. Before
    /// the first success the readiness keeps its initial reason.
    pub fn failed(&self) {
        if !self.ever_succeeded() {
            return;
        }
        let age = self.age();
        if age > self.inner.max_silence && self.inner.tolerant {
            if !self.inner.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "no successful heartbeat to {} for {}s: still serving from the access cache",
                    self.inner.dependency,
                    age.as_secs()
                );
            }
        } else if age > self.inner.max_silence {
            self.inner.ready.set_not_ready(format!(
                "no successful heartbeat to {} for {}s",
                self.inner.dependency,
                age.as_secs()
            ));
        }
    }

    /// Time since the last success; since this tracker was made when there was none.
    pub fn age(&self) -> Duration {
        let now = self.inner.started.elapsed();
        match self.inner.last_ok.load(Ordering::Relaxed) {
            0 => now,
            ms => now.saturating_sub(Duration::from_millis(ms - 1)),
        }
    }

    pub fn ever_succeeded(&self) -> bool {
        self.inner.last_ok.load(Ordering::Relaxed) != 0
    }

    /// The readiness this heartbeat drives.
    pub fn readiness(&self) -> &Readiness {
        &self.inner.ready
    }
}
