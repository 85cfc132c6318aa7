//! A token bucket per client IP address, with a bounded table, for calls anyone may make
//! before authenticating (web login and ping, `Join`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use portcullis_config::RateLimitSettings;

/// Addresses tracked at most; beyond this, idle addresses and then the least recently seen
/// half are forgotten, so a flood from many addresses cannot grow the table without bound.
pub const DEFAULT_MAX_ADDRESSES: usize = 16 * 1024;

struct Bucket {
    tokens: f64,
    last: Instant,
    /// When a refusal of this address was last reported for logging.
    last_logged: Option<Instant>,
}

/// A refused address is reported for logging at most this often, so a flood cannot turn
/// into a flood of log lines.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// Per-address token buckets: `burst` calls at once, refilled at `per_second`.
pub struct AddrRateLimiter {
    settings: RateLimitSettings,
    max_addresses: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl std::fmt::Debug for AddrRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddrRateLimiter").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl AddrRateLimiter {
    pub fn new(settings: RateLimitSettings) -> Self {
        Self::with_capacity(settings, DEFAULT_MAX_ADDRESSES)
    }

    pub fn with_capacity(settings: RateLimitSettings, max_addresses: usize) -> Self {
        AddrRateLimiter { settings, max_addresses: max_addresses.max(1), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes a token for `ip`; when none is left, how long until one is.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check_at(ip, Instant::now())
    }

    /// [`AddrRateLimiter::check`] at a given time (tests).
    pub fn check_at(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        self.check_logged_at(ip, now).map_err(|(wait, _)| wait)
    }

    /// [`AddrRateLimiter::check`], and with a refusal whether to log it: true for the first
    /// refusal of an address and then at most once per [`LOG_EVERY`].
    pub fn check_logged(&self, ip: IpAddr) -> Result<(), (Duration, bool)> {
        self.check_logged_at(ip, Instant::now())
    }

    fn check_logged_at(&self, ip: IpAddr, now: Instant) -> Result<(), (Duration, bool)> {
        let RateLimitSettings { burst, per_second } = self.settings;
        if burst == 0 {
            return Ok(());
        }
        let burst = f64::from(burst);
        // A poisoned lock only means another caller panicked mid-update; the table is still usable.
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(&ip) && buckets.len() >= self.max_addresses {
            evict(&mut buckets, now, burst / per_second);
        }
        let b = buckets.entry(ip).or_insert(Bucket { tokens: burst, last: now, last_logged: None });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * per_second).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let log = b.last_logged.is_none_or(|t| now.saturating_duration_since(t) >= LOG_EVERY);
        if log {
            b.last_logged = Some(now);
        }
        Err((Duration::from_secs_f64((1.0 - b.tokens) / per_second), log))
    }

    /// Addresses currently tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().map(|b| b.len()).unwrap_or(0)
    }
}

/// Forgets addresses whose bucket has refilled (they lose nothing), then, if that freed
/// nothing, the least recently seen half (amortised: the next inserts are cheap).
fn evict(buckets: &mut HashMap<IpAddr, Bucket>, now: Instant, refill_secs: f64) {
    let before = buckets.len();
    buckets.retain(|_, b| now.saturating_duration_since(b.last).as_secs_f64() < refill_secs);
    if buckets.len() < before {
        return;
    }
    let mut seen: Vec<Instant> = buckets.values().map(|b| b.last).collect();
    seen.sort_unstable();
    let cutoff = seen[seen.len() / 2];
    buckets.retain(|_, b| b.last > cutoff);
}

/// Whole seconds for a `Retry-After` answer: at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn burst_then_refill() {
        let l = AddrRateLimiter::new(RateLimitSettings { burst: 3, per_second: 2.0 });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check_at(ip(1), t0).is_ok());
        }
        let wait = l.check_at(ip(1), t0).unwrap_err();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500), "{wait:?}");
        assert_eq!(retry_after_secs(wait), 1);
        // Another address has its own bucket.
        assert!(l.check_at(ip(2), t0).is_ok());
        // Half a second later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.check_at(ip(1), t1).is_ok());
        assert!(l.check_at(ip(1), t1).is_err());
    }

    #[test]
    fn refusals_are_reported_for_logging_once_a_minute_per_address() {
        let l = AddrRateLimiter::new(RateLimitSettings { burst: 1, per_second: 0.001 });
        let t0 = Instant::now();
        l.check_logged_at(ip(1), t0).unwrap();
        let logged = |at: Instant, n: u32| l.check_logged_at(ip(n), at).err().map(|(_, log)| log);
        assert_eq!(logged(t0, 1), Some(true), "the first refusal is logged");
        for s in 1..50 {
            assert_eq!(logged(t0 + Duration::from_secs(s), 1), Some(false), "then silence");
        }
        assert_eq!(logged(t0 + LOG_EVERY + Duration::from_secs(1), 1), Some(true));
        l.check_logged_at(ip(2), t0).unwrap();
        assert_eq!(logged(t0, 2), Some(true), "each address has its own");
    }

    #[test]
    fn zero_burst_means_no_limit() {
        let l = AddrRateLimiter::new(RateLimitSettings { burst: 0, per_second: 1.0 });
        for _ in 0..1000 {
            assert!(l.check(ip(1)).is_ok());
        }
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn table_stays_bounded_under_many_addresses() {
        let l = AddrRateLimiter::with_capacity(RateLimitSettings { burst: 5, per_second: 1.0 }, 100);
        let t0 = Instant::now();
        for n in 0..10_000 {
            let _ = l.check_at(ip(n), t0 + Duration::from_millis(u64::from(n)));
            assert!(l.tracked() <= 100);
        }
        // A recently limited address is still remembered (it was not the oldest).
        let recent = ip(9_999);
        let now = t0 + Duration::from_millis(10_000);
        for _ in 0..4 {
            assert!(l.check_at(recent, now).is_ok());
        }
        assert!(l.check_at(recent, now).is_err(), "the recent address kept its spent bucket");
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2100)), 3);
    }
}
