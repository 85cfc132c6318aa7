//! `HostPort`: the one `host:port` address type (`[v6]:port` for IPv6), used wherever Portcullis parses one.
//!
//! The rule is the same everywhere: an IPv6 address takes brackets when a port follows
//! (`[::1]:3025`) and may be bare only without one (`::1`); a host name or IPv4 address takes
//! at most one `:port`. Anything else is refused with an error naming the input, rather than
//! guessed at, so `::1:3025` can never silently mean two different things in two places.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A host (name, IPv4 or IPv6 address, without brackets) and an optional port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    host: String,
    port: Option<u16>,
}

/// Why a string is not a `host:port` address; every variant names the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPortError {
    /// Nothing (or only whitespace) was given.
    #[error("an empty address (expected host:port)")]
    Empty,
    /// A port but no host, as in `:3080`.
    #[error("{input:?} has no host (expected host:port)")]
    NoHost { input: String },
    /// The text after the last `:` is not a port number.
    #[error("{input:?}: the port {port:?} is not a number from 0 to 65535")]
    BadPort { input: String, port: String },
    /// The host part is malformed; `reason` says how.
    #[error("{input:?} is not a host:port address: {reason}")]
    BadHost { input: String, reason: &'static str },
}

impl HostPortError {
    /// The text that failed to parse (empty for [`HostPortError::Empty`]).
    pub fn input(&self) -> &str {
        match self {
            HostPortError::Empty => "",
            HostPortError::NoHost { input } | HostPortError::BadPort { input, .. } | HostPortError::BadHost { input, .. } => {
                input
            }
        }
    }
}

impl HostPort {
    /// An address from its parts. `host` is taken as given (brackets around an IPv6 address
    /// are dropped): use this for hosts already known good, such as an IP address or a name
    /// that was checked elsewhere.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        let host = host.into();
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(inner) => inner.to_string(),
            None => host,
        };
        HostPort { host, port: Some(port) }
    }

    /// Parses `s` and adds `port` when it has none: the usual way to read a configured address.
    pub fn parse_with_default(s: &str, port: u16) -> Result<Self, HostPortError> {
        s.parse::<HostPort>().map(|a| a.with_default_port(port))
    }

    /// The host without brackets: what goes in a certificate, SNI or a DNS lookup.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, when the address has one.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// This address with `port` when it has none.
    #[must_use]
    pub fn with_default_port(mut self, port: u16) -> Self {
        self.port = self.port.or(Some(port));
        self
    }

    /// The host as an IP address, when it is one (an IPv6 zone such as `%eth0` is not).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// Whether the host is an IPv6 address (and so is written in brackets before a port).
    pub fn is_ipv6(&self) -> bool {
        self.host.contains(':')
    }

    /// The host as written before a port or in a URL: `[v6]` for IPv6, else the host itself.
    pub fn host_bracketed(&self) -> String {
        if self.is_ipv6() { format!("[{}]", self.host) } else { self.host.clone() }
    }
}

impl fmt::Display for HostPort {
    /// `host:port`, `[v6]:port`, or the bare host without a port (so it parses back equal).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.port, self.is_ipv6()) {
            (Some(p), true) => write!(f, "[{}]:{p}", self.host),
            (Some(p), false) => write!(f, "{}:{p}", self.host),
            (None, _) => f.write_str(&self.host),
        }
    }
}

impl FromStr for HostPort {
    type Err = HostPortError;

    /// Accepts `host`, `host:port`, `v4:port`, `[v6]:port`, `[v6]` and bare `v6` (surrounding
    /// whitespace ignored). The port may be 0 (a listen address asking for any port).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let input = s.trim();
        if input.is_empty() {
            return Err(HostPortError::Empty);
        }
        let bad_host = |reason| HostPortError::BadHost { input: input.to_string(), reason };
        if input.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#' | '@')) {
            return Err(bad_host("it contains whitespace or one of / ? # @"));
        }
        let (host, port) = if let Some(rest) = input.strip_prefix('[') {
            let (host, tail) = rest.split_once(']').ok_or_else(|| bad_host("'[' without a closing ']'"))?;
            if !is_ipv6(host) {
                return Err(bad_host("only an IPv6 address goes in brackets"));
            }
            let port = match tail {
                "" => None,
                _ => Some(tail.strip_prefix(':').ok_or_else(|| bad_host("expected ':port' after ']'"))?),
            };
            (host, port)
        } else if input.contains(']') {
            return Err(bad_host("']' without an opening '['"));
        } else {
            match input.split_once(':') {
                None => (input, None),
                Some((host, port)) if !port.contains(':') => (host, Some(port)),
                // Several colons and no brackets: a bare IPv6 address, which cannot carry a port.
                Some(_) if is_ipv6(input) => (input, None),
                Some(_) => return Err(bad_host("an IPv6 address needs brackets before a port ([v6]:port)")),
            }
        };
        if host.is_empty() {
            return Err(HostPortError::NoHost { input: input.to_string() });
        }
        let port = match port {
            None => None,
            Some(p) => Some(parse_port(p).ok_or_else(|| HostPortError::BadPort { input: input.to_string(), port: p.to_string() })?),
        };
        Ok(HostPort { host: host.to_string(), port })
    }
}

/// Digits only (no sign, no spaces), at most 65535.
fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok()
}

/// An IPv6 address, optionally with a `%zone` (link-local addresses need one).
fn is_ipv6(s: &str) -> bool {
    let addr = s.split_once('%').map_or(s, |(a, zone)| if zone.is_empty() { "" } else { a });
    addr.parse::<Ipv6Addr>().is_ok()
}

impl Serialize for HostPort {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(s: &str) -> HostPort {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn err(s: &str) -> HostPortError {
        s.parse::<HostPort>().expect_err(s)
    }

    #[test]
    fn names_and_ipv4() {
        assert_eq!(hp("auth.example.com:3025"), HostPort::new("auth.example.com", 3025));
        assert_eq!(hp("10.0.0.1:22").host(), "10.0.0.1");
        assert_eq!(hp("10.0.0.1:22").port(), Some(22));
        assert_eq!(hp("node-1").port(), None);
        assert_eq!(hp("node-1").host(), "node-1");
        assert_eq!(hp("  h:1 \n"), HostPort::new("h", 1));
        assert_eq!(hp("h:0").port(), Some(0));
        assert_eq!(hp("h:65535").port(), Some(65535));
    }

    #[test]
    fn ipv6_with_and_without_port() {
        let a = hp("[::1]:3025");
        assert_eq!((a.host(), a.port()), ("::1", Some(3025)));
        assert!(a.is_ipv6());
        assert_eq!(hp("[::1]"), hp("::1"));
        assert_eq!(hp("::1").port(), None);
        assert_eq!(hp("fe80::1%eth0").host(), "fe80::1%eth0");
        assert_eq!(hp("[fe80::1%eth0]:22").port(), Some(22));
        // Bare, it is all address: the last group is not a port.
        assert_eq!(hp("2001:db8::1:3025").port(), None);
        assert_eq!(hp("[::ffff:10.0.0.1]:1").host(), "::ffff:10.0.0.1");
    }

    #[test]
    fn display_brackets_ipv6_only_before_a_port() {
        for s in ["h:1", "[::1]:5", "10.0.0.1:3080", "h", "::1", "fe80::1%eth0", "[fe80::1%eth0]:7"] {
            assert_eq!(hp(s).to_string(), s);
            assert_eq!(hp(&hp(s).to_string()), hp(s), "{s} round trip");
        }
        assert_eq!(hp("[::1]").to_string(), "::1");
        assert_eq!(HostPort::new("::1", 3023).to_string(), "[::1]:3023");
        assert_eq!(HostPort::new("[::1]", 3023), HostPort::new("::1", 3023));
        assert_eq!(hp("::1").host_bracketed(), "[::1]");
        assert_eq!(hp("h:1").host_bracketed(), "h");
    }

    #[test]
    fn default_port_fills_only_a_missing_port() {
        assert_eq!(hp("h").with_default_port(3080).to_string(), "h:3080");
        assert_eq!(hp("h:1").with_default_port(3080).to_string(), "h:1");
        assert_eq!(hp("[::1]:5").with_default_port(3080).to_string(), "[::1]:5");
        assert_eq!(hp("::1").with_default_port(3024).to_string(), "[::1]:3024");
        assert_eq!(HostPort::parse_with_default("h", 3025).unwrap().to_string(), "h:3025");
        assert!(HostPort::parse_with_default("h:x", 3025).is_err());
    }

    #[test]
    fn ip_is_known_for_literals_only() {
        assert_eq!(hp("[::1]:1").ip(), Some("::1".parse().unwrap()));
        assert_eq!(hp("127.0.0.1:1").ip(), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(hp("localhost:1").ip(), None);
    }

    #[test]
    fn errors_name_the_input() {
        assert_eq!(err(""), HostPortError::Empty);
        assert_eq!(err("   "), HostPortError::Empty);
        assert!(matches!(err(":3080"), HostPortError::NoHost { .. }));
        assert!(matches!(err("[]:1"), HostPortError::BadHost { .. }));
        for (bad, port) in [("h:x", "x"), ("h:", ""), ("h:65536", "65536"), ("h:+1", "+1"), ("[::1]:x", "x")] {
            assert_eq!(err(bad), HostPortError::BadPort { input: bad.into(), port: port.into() }, "{bad}");
        }
        for bad in ["a:b:c", "[::1", "::1]:2", "[host]:1", "[::1]x", "h h:1", "https://h", "u@h:1", "h/x"] {
            let e = err(bad);
            assert!(matches!(e, HostPortError::BadHost { .. }), "{bad}: {e:?}");
            assert_eq!(e.input(), bad);
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        assert!(err("a:b:c").to_string().contains("[v6]:port"));
    }

    #[test]
    fn serde_is_a_string() {
        let a: HostPort = serde_json::from_str("\"[::1]:3025\"").unwrap();
        assert_eq!(a, HostPort::new("::1", 3025));
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"[::1]:3025\"");
        let e = serde_json::from_str::<HostPort>("\"h:x\"").unwrap_err().to_string();
        assert!(e.contains("h:x"), "{e}");
    }
}
