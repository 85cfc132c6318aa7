//! Connection admission: at most N concurrent connections per client address and M in all,
//! each held by a guard that gives its place back when dropped.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use portcullis_config::ConnectionLimits;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// Labels of the listener metrics: `listener` and, for refusals, `reason`.
type Labels = Vec<(String, String)>;

/// A refused address is logged at most once per this interval, so a flood cannot flood the log.
const LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Addresses remembered for log throttling; past this, refusals of new addresses go unlogged
/// until old entries age out (they are still counted).
const MAX_LOGGED_ADDRESSES: usize = 4096;

/// `portcullis_listener_refused_connections_total{listener, reason}`: one family for the
/// process, which every diagnostic registry exposes.
pub fn refused_connections_family() -> &'static Family<Labels, Counter> {
    static F: OnceLock<Family<Labels, Counter>> = OnceLock::new();
    F.get_or_init(Family::default)
}

/// `portcullis_listener_open_connections{listener}`.
pub fn open_connections_family() -> &'static Family<Labels, Gauge> {
    static F: OnceLock<Family<Labels, Gauge>> = OnceLock::new();
    F.get_or_init(Family::default)
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    PerAddress { ip: IpAddr, limit: usize },
    Total { limit: usize },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::PerAddress { ip, limit } => write!(
                f,
                "{ip} already holds {limit} connections (connection_limits.max_connections_per_address)"
            ),
            Refusal::Total { limit } => {
                write!(f, "the listener already holds {limit} connections (connection_limits.max_connections)")
            }
        }
    }
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Refusal::PerAddress { .. } => "per_address",
            Refusal::Total { .. } => "total",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    per_ip: HashMap<IpAddr, usize>,
    total: usize,
    /// When each address was last logged as refused.
    logged: HashMap<IpAddr, Instant>,
    total_logged: Option<Instant>,
}

#[derive(Debug)]
struct Inner {
    name: &'static str,
    limits: ConnectionLimits,
    counts: Mutex<Counts>,
    open: Gauge,
}

impl Inner {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The admission state of one listener; clones share it.
#[derive(Debug, Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

/// One admitted connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct ConnGuard {
    gate: Arc<Inner>,
    ip: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut c = self.gate.counts();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
        self.gate.open.dec();
    }
}

impl Gate {
    /// A gate for the listener `name` (a metric label, e.g. `proxy_ssh`).
    pub fn new(name: &'static str, limits: ConnectionLimits) -> Gate {
        let labels = vec![("listener".to_string(), name.to_string())];
        let open = open_connections_family().get_or_create(&labels).clone();
        Gate { inner: Arc::new(Inner { name, limits, counts: Mutex::default(), open }) }
    }

    pub fn limits(&self) -> &ConnectionLimits {
        &self.inner.limits
    }

    /// Connections currently admitted (all addresses).
    pub fn open(&self) -> usize {
        self.inner.counts().total
    }

    /// Admits a connection from `peer`, or says which limit it would break. Refusals are
    /// counted, and logged at most once a minute per address.
    pub fn admit(&self, peer: SocketAddr) -> Result<ConnGuard, Refusal> {
        // An IPv4 client on a dual-stack socket is the same client as over IPv4.
        let ip = peer.ip().to_canonical();
        let limits = &self.inner.limits;
        let mut c = self.inner.counts();
        let refusal = if c.total >= limits.max_total {
            Some(Refusal::Total { limit: limits.max_total })
        } else if c.per_ip.get(&ip).copied().unwrap_or(0) >= limits.max_per_address {
            Some(Refusal::PerAddress { ip, limit: limits.max_per_address })
        } else {
            None
        };
        if let Some(r) = refusal {
            let log = should_log(&mut c, &r, Instant::now());
            drop(c);
            let labels =
                vec![("listener".to_string(), self.inner.name.to_string()), ("reason".to_string(), r.reason().to_string())];
            refused_connections_family().get_or_create(&labels).inc();
            if log {
                tracing::warn!(listener = self.inner.name, %peer, "connection refused: {r} (logged once a minute per address)");
            }
            return Err(r);
        }
        c.total += 1;
        *c.per_ip.entry(ip).or_insert(0) += 1;
        drop(c);
        self.inner.open.inc();
        Ok(ConnGuard { gate: self.inner.clone(), ip })
    }
}

/// Whether this refusal should be logged now; records that it was.
fn should_log(c: &mut Counts, r: &Refusal, now: Instant) -> bool {
    let fresh = |t: &Instant| now.duration_since(*t) < LOG_INTERVAL;
    match r {
        Refusal::Total { .. } => {
            if c.total_logged.as_ref().is_some_and(fresh) {
                return false;
            }
            c.total_logged = Some(now);
            true
        }
        Refusal::PerAddress { ip, .. } => {
            if c.logged.get(ip).is_some_and(fresh) {
                return false;
            }
            if c.logged.len() >= MAX_LOGGED_ADDRESSES {
                c.logged.retain(|_, t| fresh(t));
                if c.logged.len() >= MAX_LOGGED_ADDRESSES {
                    return false;
                }
            }
            c.logged.insert(*ip, now);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per: usize, total: usize) -> ConnectionLimits {
        ConnectionLimits { max_per_address: per, max_total: total, ..ConnectionLimits::AUTH }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_address_limit_and_guards_release_on_drop() {
        let gate = Gate::new("test_per_address", limits(2, 10));
        let a = gate.admit(addr("10.0.0.1:1000")).unwrap();
        let _b = gate.admit(addr("10.0.0.1:1001")).unwrap();
        let e = gate.admit(addr("10.0.0.1:1002")).unwrap_err();
        assert_eq!(e, Refusal::PerAddress { ip: "10.0.0.1".parse().unwrap(), limit: 2 });
        assert!(e.to_string().contains("max_connections_per_address"), "{e}");
        // Another address is not affected.
        let _c = gate.admit(addr("10.0.0.2:1000")).unwrap();
        assert_eq!(gate.open(), 3);
        drop(a);
        assert_eq!(gate.open(), 2);
        let _d = gate.admit(addr("10.0.0.1:1003")).unwrap();
    }

    #[test]
    fn total_limit_and_ipv4_mapped_addresses_count_as_ipv4() {
        let gate = Gate::new("test_total", limits(2, 3));
        let _a = gate.admit(addr("10.0.0.1:1")).unwrap();
        let _b = gate.admit(addr("[::ffff:10.0.0.1]:2")).unwrap();
        assert!(matches!(gate.admit(addr("10.0.0.1:3")), Err(Refusal::PerAddress { .. })));
        let _c = gate.admit(addr("10.0.0.3:1")).unwrap();
        let e = gate.admit(addr("10.0.0.4:1")).unwrap_err();
        assert_eq!(e, Refusal::Total { limit: 3 });
        assert!(e.to_string().contains("connection_limits.max_connections"), "{e}");
    }

    #[test]
    fn refusals_are_counted_and_logged_once_per_interval() {
        let gate = Gate::new("test_counted", limits(1, 10));
        let _a = gate.admit(addr("10.0.0.9:1")).unwrap();
        let labels = vec![("listener".to_string(), "test_counted".to_string()), ("reason".to_string(), "per_address".to_string())];
        for _ in 0..5 {
            assert!(gate.admit(addr("10.0.0.9:2")).is_err());
        }
        assert_eq!(refused_connections_family().get_or_create(&labels).get(), 5);

        let mut c = Counts::default();
        let r = Refusal::PerAddress { ip: "10.0.0.9".parse().unwrap(), limit: 1 };
        let t0 = Instant::now();
        assert!(should_log(&mut c, &r, t0));
        assert!(!should_log(&mut c, &r, t0 + Duration::from_secs(1)));
        assert!(should_log(&mut c, &r, t0 + LOG_INTERVAL + Duration::from_secs(1)));
        let other = Refusal::PerAddress { ip: "10.0.0.8".parse().unwrap(), limit: 1 };
        assert!(should_log(&mut c, &other, t0 + Duration::from_secs(2)));
    }
}
