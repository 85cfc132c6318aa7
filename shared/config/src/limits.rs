//! Listener limits (`connection_limits`): handshake and pre-authentication timeouts,
//! connection caps per address and per listener, keep-alives.

use std::time::Duration;

use serde::Deserialize;

use crate::ConfigError;

/// `connection_limits:` as written in the file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionLimitsSection {
    pub handshake_timeout: Option<String>,
    pub pre_auth_timeout: Option<String>,
    pub max_connections_per_address: Option<usize>,
    pub max_connections: Option<usize>,
    pub keepalive_interval: Option<String>,
}

/// Validated listener limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// TLS handshake / SSH version exchange must finish within this.
    pub handshake_timeout: Duration,
    /// SSH: a connection must authenticate within this or it is closed.
    pub pre_auth_timeout: Duration,
    /// Concurrent connections per client IP address (`max_connections_per_address`).
    pub max_per_address: usize,
    /// Concurrent connections per listener (`max_connections`).
    pub max_total: usize,
    /// TCP, HTTP/2 and SSH keep-alive interval; three missed and the peer is dropped.
    pub keepalive_interval: Duration,
}

impl ConnectionLimits {
    /// Defaults for the auth service's gRPC listener.
    pub const AUTH: ConnectionLimits = ConnectionLimits {
        handshake_timeout: Duration::from_secs(10),
        pre_auth_timeout: Duration::from_secs(30),
        max_per_address: 512,
        max_total: 16384,
        keepalive_interval: Duration::from_secs(30),
    };
    /// Defaults for the proxy's web, SSH and tunnel listeners.
    pub const PROXY: ConnectionLimits = ConnectionLimits {
        handshake_timeout: Duration::from_secs(10),
        pre_auth_timeout: Duration::from_secs(30),
        max_per_address: 1024,
        max_total: 16384,
        keepalive_interval: Duration::from_secs(30),
    };
    /// Defaults for a node's SSH listener.
    pub const NODE: ConnectionLimits = ConnectionLimits {
        handshake_timeout: Duration::from_secs(10),
        pre_auth_timeout: Duration::from_secs(30),
        max_per_address: 1024,
        max_total: 16384,
        keepalive_interval: Duration::from_secs(30),
    };

    /// Defaults for the diagnostic listener (`/metrics`, probes): few clients, small caps.
    pub const DIAG: ConnectionLimits = ConnectionLimits {
        handshake_timeout: Duration::from_secs(10),
        pre_auth_timeout: Duration::from_secs(30),
        max_per_address: 64,
        max_total: 256,
        keepalive_interval: Duration::from_secs(30),
    };

    /// Validates `section` (named `key` in errors), filling in `defaults`.
    pub fn from_section(
        key: &str,
        section: Option<&ConnectionLimitsSection>,
        defaults: ConnectionLimits,
    ) -> Result<Self, ConfigError> {
        let Some(s) = section else { return Ok(defaults) };
        let dur = |name: &str, v: &Option<String>, d: Duration| -> Result<Duration, ConfigError> {
            match v {
                None => Ok(d),
                Some(text) => {
                    let parsed = humantime::parse_duration(text)
                        .map_err(|e| ConfigError::invalid(&format!("{key}.{name}"), format!("{text:?}: {e}")))?;
                    if parsed.is_zero() {
                        return Err(ConfigError::invalid(&format!("{key}.{name}"), "must be longer than zero"));
                    }
                    Ok(parsed)
                }
            }
        };
        let count = |name: &str, v: Option<usize>, d: usize| -> Result<usize, ConfigError> {
            match v {
                Some(0) => Err(ConfigError::invalid(&format!("{key}.{name}"), "must be at least 1")),
                Some(n) => Ok(n),
                None => Ok(d),
            }
        };
        Ok(ConnectionLimits {
            handshake_timeout: dur("handshake_timeout", &s.handshake_timeout, defaults.handshake_timeout)?,
            pre_auth_timeout: dur("pre_auth_timeout", &s.pre_auth_timeout, defaults.pre_auth_timeout)?,
            max_per_address: count(
                "max_connections_per_address",
                s.max_connections_per_address,
                defaults.max_per_address,
            )?,
            max_total: count("max_connections", s.max_connections, defaults.max_total)?,
            keepalive_interval: dur("keepalive_interval", &s.keepalive_interval, defaults.keepalive_interval)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_section_keeps_defaults_and_values_override() {
        let d = ConnectionLimits::from_section("auth_service.connection_limits", None, ConnectionLimits::AUTH);
        assert_eq!(d.ok(), Some(ConnectionLimits::AUTH));
        let s = ConnectionLimitsSection {
            handshake_timeout: Some("2s".into()),
            max_connections_per_address: Some(8),
            ..Default::default()
        };
        let l = ConnectionLimits::from_section("k", Some(&s), ConnectionLimits::PROXY).ok();
        let l = l.as_ref();
        assert_eq!(l.map(|l| l.handshake_timeout), Some(Duration::from_secs(2)));
        assert_eq!(l.map(|l| l.max_per_address), Some(8));
        assert_eq!(l.map(|l| l.max_total), Some(ConnectionLimits::PROXY.max_total));
    }

    #[test]
    fn zero_values_are_refused_with_the_key() {
        let s = ConnectionLimitsSection { max_connections: Some(0), ..Default::default() };
        let e = ConnectionLimits::from_section("proxy_service.connection_limits", Some(&s), ConnectionLimits::PROXY)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("proxy_service.connection_limits.max_connections"), "{e}");
        let s = ConnectionLimitsSection { pre_auth_timeout: Some("0s".into()), ..Default::default() };
        let e = ConnectionLimits::from_section("k", Some(&s), ConnectionLimits::NODE).err().map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("k.pre_auth_timeout"));
    }
}
