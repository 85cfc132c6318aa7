//! What a fake auth was asked: per-call counters and, unless turned off, every request.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::Rpc;

/// The calls a fake auth received, shared between the fake and the test (cheap to clone).
#[derive(Clone)]
pub struct Calls {
    log: Arc<Mutex<Log>>,
}

struct Log {
    /// Off for long runs (benchmarks), where keeping every request would grow memory.
    keep_requests: bool,
    counts: HashMap<Rpc, usize>,
    requests: Vec<(Rpc, Box<dyn Any + Send>)>,
}

impl Default for Calls {
    fn default() -> Self {
        Calls { log: Arc::new(Mutex::new(Log { keep_requests: true, counts: HashMap::new(), requests: Vec::new() })) }
    }
}

impl Calls {
    fn log(&self) -> MutexGuard<'_, Log> {
        // A panicking test thread must not hide what was recorded from the others.
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set_keep_requests(&self, keep: bool) {
        self.log().keep_requests = keep;
    }

    pub(crate) fn record<T: Clone + Send + 'static>(&self, rpc: Rpc, request: &T) {
        let mut log = self.log();
        *log.counts.entry(rpc).or_default() += 1;
        if log.keep_requests {
            log.requests.push((rpc, Box::new(request.clone())));
        }
    }

    /// How many times `rpc` was called (configured or not).
    pub fn count(&self, rpc: Rpc) -> usize {
        self.log().counts.get(&rpc).copied().unwrap_or(0)
    }

    /// Every call in the order received (empty when requests are not kept).
    pub fn list(&self) -> Vec<Rpc> {
        self.log().requests.iter().map(|(rpc, _)| *rpc).collect()
    }

    /// The requests of type `T` received so far, oldest first (e.g. every
    /// `ResolveNodeRequest`; empty when requests are not kept).
    pub fn requests<T: Clone + 'static>(&self) -> Vec<T> {
        self.log().requests.iter().filter_map(|(_, r)| r.downcast_ref::<T>().cloned()).collect()
    }
}
