//! Exponential reconnect backoff with random jitter, so that agents of many leaves do not
//! hammer a restarted root proxy in lock-step.

use std::time::Duration;

/// First delay after a failure.
pub const BASE: Duration = Duration::from_millis(250);
/// Longest delay between attempts.
pub const MAX: Duration = Duration::from_secs(10);

/// Delays doubling from `base` up to `max`, each with up to 50 % random jitter added.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    current: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(BASE, MAX)
    }
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max, current: base }
    }

    /// The delay before the next attempt; each call doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        d + jitter(d / 2)
    }

    /// Back to the shortest delay, after a connection that stayed up.
    pub fn reset(&mut self) {
        self.current = self.base;
    }
}

/// A random duration in `[0, max)`; zero if the system has no randomness to give.
pub fn jitter(max: Duration) -> Duration {
    let nanos = max.as_nanos();
    if nanos == 0 {
        return Duration::ZERO;
    }
    let r = portcullis_pki::random_bytes::<8>().map(u64::from_le_bytes).unwrap_or(0);
    // `max` is at most seconds here, so the remainder fits in u64.
    Duration::from_nanos((u128::from(r) % nanos) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(700));
        let expect = [100u64, 200, 400, 700, 700];
        for base in expect {
            let d = b.next_delay();
            let base = Duration::from_millis(base);
            assert!(d >= base && d < base + base / 2 + Duration::from_nanos(1), "{d:?} vs {base:?}");
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(150));
    }

    #[test]
    fn jitter_stays_below_its_bound() {
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
        for _ in 0..100 {
            assert!(jitter(Duration::from_millis(10)) < Duration::from_millis(10));
        }
    }
}
