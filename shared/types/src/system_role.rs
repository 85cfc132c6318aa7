//! System roles: what a certificate's holder is (its organizational unit) and what a join
//! token admits. The one vocabulary for both; certificates carry [`SystemRole::as_str`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::TypesError;

/// A system role. `Auth`, `Admin` and `User` exist only in certificates; the others are also
/// what a join token admits (`TrustedCluster` only there: a leaf establishing trust).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SystemRole {
    /// The auth service (serves TLS).
    Auth,
    /// The local administrator identity `tctl` uses on the auth host: every admin call.
    Admin,
    Node,
    /// A proxy (serves TLS: the tunnel server).
    Proxy,
    /// A tunnel agent dialling out of a leaf.
    Agent,
    /// A person, logged in with `tsh login`; admin calls are decided by the rules of its roles.
    User,
    /// A leaf cluster establishing trust (`--type=trusted_cluster`); never in a certificate.
    TrustedCluster,
}

impl SystemRole {
    /// The roles a join token can admit (`tctl tokens add --type=...`).
    pub const JOINABLE: [SystemRole; 4] = [
        SystemRole::Node,
        SystemRole::Proxy,
        SystemRole::TrustedCluster,
        SystemRole::Agent,
    ];

    /// Canonical spelling, as Teleport stores it and as certificates carry it (the
    /// organizational unit): `Auth`, `Admin`, `Node`, `Proxy`, `Agent`, `User`,
    /// `Trusted_cluster`.
    pub const fn as_str(self) -> &'static str {
        match self {
            SystemRole::Auth => "Auth",
            SystemRole::Admin => "Admin",
            SystemRole::Node => "Node",
            SystemRole::Proxy => "Proxy",
            SystemRole::Agent => "Agent",
            SystemRole::User => "User",
            SystemRole::TrustedCluster => "Trusted_cluster",
        }
    }

    /// Lower-case name for tables and flags (`tctl tokens ls` Type column): `trusted_cluster`.
    pub const fn type_name(self) -> &'static str {
        match self {
            SystemRole::Auth => "auth",
            SystemRole::Admin => "admin",
            SystemRole::Node => "node",
            SystemRole::Proxy => "proxy",
            SystemRole::Agent => "agent",
            SystemRole::User => "user",
            SystemRole::TrustedCluster => "trusted_cluster",
        }
    }

    /// The role a certificate's organizational unit names (exact spelling); `None` for
    /// anything else, which grants nothing.
    pub fn from_cert(s: &str) -> Option<SystemRole> {
        [
            SystemRole::Auth,
            SystemRole::Admin,
            SystemRole::Node,
            SystemRole::Proxy,
            SystemRole::Agent,
            SystemRole::User,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }

    /// A role a join token admits, case-insensitive; accepts the legacy `trustedcluster`
    /// spelling of `tctl nodes add`. Certificate-only roles (`auth`, ...) are refused.
    pub fn parse(s: &str) -> Result<SystemRole, TypesError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "node" => Ok(SystemRole::Node),
            "proxy" => Ok(SystemRole::Proxy),
            "trusted_cluster" | "trustedcluster" | "trusted-cluster" => {
                Ok(SystemRole::TrustedCluster)
            }
            "agent" => Ok(SystemRole::Agent),
            _ => Err(TypesError::UnknownSystemRole(s.to_string())),
        }
    }

    /// Parses a comma-separated list as given to `--type=node,proxy`.
    pub fn parse_list(s: &str) -> Result<Vec<SystemRole>, TypesError> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let role = SystemRole::parse(part)?;
            if !out.contains(&role) {
                out.push(role);
            }
        }
        Ok(out)
    }
}

impl fmt::Display for SystemRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The certificate spelling, for the `Vec<String>` of a certificate request.
impl From<SystemRole> for String {
    fn from(r: SystemRole) -> String {
        r.as_str().to_string()
    }
}

impl PartialEq<SystemRole> for &str {
    fn eq(&self, other: &SystemRole) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<SystemRole> for String {
    fn eq(&self, other: &SystemRole) -> bool {
        self == other.as_str()
    }
}

/// Join-token spellings (see [`SystemRole::parse`]).
impl FromStr for SystemRole {
    type Err = TypesError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SystemRole::parse(s)
    }
}

impl Serialize for SystemRole {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Only join-token roles are read back: the serialized form lives in token resources.
impl<'de> Deserialize<'de> for SystemRole {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SystemRole::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_role_spellings() {
        for (input, want) in [
            ("Node", SystemRole::Node),
            ("node", SystemRole::Node),
            ("PROXY", SystemRole::Proxy),
            ("Trusted_cluster", SystemRole::TrustedCluster),
            ("trusted_cluster", SystemRole::TrustedCluster),
            ("trustedcluster", SystemRole::TrustedCluster),
            ("agent", SystemRole::Agent),
        ] {
            assert_eq!(SystemRole::parse(input).unwrap(), want, "{input}");
        }
        assert_eq!(
            SystemRole::parse("auth").unwrap_err().to_string(),
            "unknown system role \"auth\" (expected one of: node, proxy, trusted_cluster, agent)"
        );
        assert_eq!(
            serde_json::to_string(&SystemRole::TrustedCluster).unwrap(),
            "\"Trusted_cluster\""
        );
        assert_eq!(
            SystemRole::parse_list("node, proxy,node").unwrap(),
            [SystemRole::Node, SystemRole::Proxy]
        );
    }

    /// Certificates issued before the enum existed carry these exact strings.
    #[test]
    fn certificate_spellings_are_unchanged() {
        for (role, wire) in [
            (SystemRole::Admin, "Admin"),
            (SystemRole::Auth, "Auth"),
            (SystemRole::Node, "Node"),
            (SystemRole::Proxy, "Proxy"),
            (SystemRole::Agent, "Agent"),
            (SystemRole::User, "User"),
        ] {
            assert_eq!(role.as_str(), wire);
            assert_eq!(SystemRole::from_cert(wire), Some(role));
            assert_eq!(String::from(role), wire);
        }
        assert_eq!(SystemRole::from_cert("node"), None);
        assert_eq!(SystemRole::from_cert("Trusted_cluster"), None);
    }
}
