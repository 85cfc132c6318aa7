//! Abuse limits for logins and unauthenticated calls: per-user lockout, bounded password
//! hashing and per-address rate limits (`auth_service.lockout`, `auth_service.password_hashing`,
//! `auth_service.join_rate_limit`, `proxy_service.rate_limit`).

use std::time::Duration;

use serde::Deserialize;

use crate::ConfigError;

/// `lockout: {max_failures: 5, window: 30m, duration: 20m}` as written in the file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockoutSection {
    pub max_failures: Option<u32>,
    pub window: Option<String>,
    pub duration: Option<String>,
}

/// `password_hashing: {max_concurrent: 2, max_queued: 64}` as written in the file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordHashingSection {
    pub max_concurrent: Option<usize>,
    pub max_queued: Option<usize>,
}

/// `rate_limit: {burst: 20, per_second: 5}` as written in the file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    pub burst: Option<u32>,
    pub per_second: Option<f64>,
}

/// Per-user lockout after repeated failed password logins (Teleport's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LockoutSettings {
    /// Failed logins within `window` that lock the user; 0 turns the lockout off.
    pub max_failures: u32,
    pub window: Duration,
    /// How long the lock lasts.
    pub duration: Duration,
}

impl Default for LockoutSettings {
    fn default() -> Self {
        LockoutSettings {
            max_failures: 5,
            window: Duration::from_secs(30 * 60),
            duration: Duration::from_secs(20 * 60),
        }
    }
}

/// How many argon2 hashes run at once, and how many more may wait; beyond that a login is
/// refused at once, so memory stays flat under any flood (each hash needs ~19 MiB).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PasswordHashingSettings {
    pub max_concurrent: usize,
    pub max_queued: usize,
}

impl Default for PasswordHashingSettings {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        PasswordHashingSettings { max_concurrent: cores.clamp(1, 4), max_queued: 64 }
    }
}

/// A token bucket per client address: `burst` requests at once, refilled at `per_second`.
/// `burst: 0` turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitSettings {
    pub burst: u32,
    pub per_second: f64,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings { burst: 20, per_second: 5.0 }
    }
}

/// The auth service's login limits together.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LoginLimits {
    pub lockout: LockoutSettings,
    pub hashing: PasswordHashingSettings,
    /// Per peer address, for the unauthenticated `Join` call.
    pub join_rate_limit: RateLimitSettings,
}

fn duration(key: &str, v: &Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(text) => {
            let d = humantime::parse_duration(text).map_err(|e| ConfigError::invalid(key, format!("{text:?}: {e}")))?;
            if d.is_zero() {
                return Err(ConfigError::invalid(key, "must be longer than zero"));
            }
            Ok(d)
        }
    }
}

impl LockoutSettings {
    /// Validates `section` (named `key` in errors), filling in defaults.
    pub fn parse(key: &str, section: Option<&LockoutSection>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let Some(s) = section else { return Ok(d) };
        Ok(LockoutSettings {
            max_failures: s.max_failures.unwrap_or(d.max_failures),
            window: duration(&format!("{key}.window"), &s.window, d.window)?,
            duration: duration(&format!("{key}.duration"), &s.duration, d.duration)?,
        })
    }
}

impl PasswordHashingSettings {
    pub fn parse(key: &str, section: Option<&PasswordHashingSection>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let Some(s) = section else { return Ok(d) };
        let max_concurrent = s.max_concurrent.unwrap_or(d.max_concurrent);
        if max_concurrent == 0 || max_concurrent > 64 {
            return Err(ConfigError::invalid(&format!("{key}.max_concurrent"), "must be between 1 and 64"));
        }
        Ok(PasswordHashingSettings { max_concurrent, max_queued: s.max_queued.unwrap_or(d.max_queued) })
    }
}

impl RateLimitSettings {
    pub fn parse(key: &str, section: Option<&RateLimitSection>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let Some(s) = section else { return Ok(d) };
        let per_second = s.per_second.unwrap_or(d.per_second);
        if !per_second.is_finite() || per_second <= 0.0 {
            return Err(ConfigError::invalid(&format!("{key}.per_second"), "must be a number above zero"));
        }
        Ok(RateLimitSettings { burst: s.burst.unwrap_or(d.burst), per_second })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuthSettings, CommonFlags, FileConfig, ProxySettings};

    #[test]
    fn defaults_are_teleports() {
        let a = AuthSettings::from_parts(&FileConfig::default(), &CommonFlags::default()).unwrap();
        assert_eq!(a.logins.lockout, LockoutSettings::default());
        assert_eq!(a.logins.lockout.max_failures, 5);
        assert_eq!(a.logins.lockout.window, Duration::from_secs(1800));
        assert_eq!(a.logins.lockout.duration, Duration::from_secs(1200));
        assert_eq!(a.logins.join_rate_limit, RateLimitSettings { burst: 20, per_second: 5.0 });
        let p = ProxySettings::from_parts(&FileConfig::default(), &CommonFlags::default()).unwrap();
        assert_eq!(p.rate_limit, RateLimitSettings { burst: 20, per_second: 5.0 });
    }

    #[test]
    fn keys_are_read_and_bad_values_named() {
        let yaml = "auth_service:\n  lockout: {max_failures: 3, window: 1m, duration: 2s}\n  password_hashing: {max_concurrent: 1, max_queued: 4}\n  join_rate_limit: {burst: 2, per_second: 0.5}\nproxy_service:\n  rate_limit: {burst: 7, per_second: 1}\n";
        let f = FileConfig::from_yaml(yaml).unwrap();
        let a = AuthSettings::from_parts(&f, &CommonFlags::default()).unwrap();
        assert_eq!(a.logins.lockout, LockoutSettings { max_failures: 3, window: Duration::from_secs(60), duration: Duration::from_secs(2) });
        assert_eq!(a.logins.hashing, PasswordHashingSettings { max_concurrent: 1, max_queued: 4 });
        assert_eq!(a.logins.join_rate_limit, RateLimitSettings { burst: 2, per_second: 0.5 });
        let p = ProxySettings::from_parts(&f, &CommonFlags::default()).unwrap();
        assert_eq!(p.rate_limit, RateLimitSettings { burst: 7, per_second: 1.0 });

        let f = FileConfig::from_yaml("auth_service:\n  lockout: {duration: soon}\n").unwrap();
        let e = AuthSettings::from_parts(&f, &CommonFlags::default()).unwrap_err().to_string();
        assert!(e.contains("auth_service.lockout.duration"), "{e}");
        let f = FileConfig::from_yaml("proxy_service:\n  rate_limit: {per_second: 0}\n").unwrap();
        let e = ProxySettings::from_parts(&f, &CommonFlags::default()).unwrap_err().to_string();
        assert!(e.contains("proxy_service.rate_limit.per_second"), "{e}");
        let e = FileConfig::from_yaml("auth_service:\n  lockout: {max_failure: 3}\n").unwrap_err().to_string();
        assert!(e.contains("max_failure"), "{e}");
    }
}
