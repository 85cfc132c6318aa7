//! Join tokens (`tctl tokens add`): which system roles a token admits and until when.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;

use crate::error::TypesError;
use crate::resource::{Kind, Metadata, validate_envelope};

pub const VERSIONS: &[&str] = &["v2"];

/// What a process joining with a token becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SystemRole {
    Node,
    Proxy,
    /// A leaf cluster establishing trust (`--type=trusted_cluster`).
    TrustedCluster,
    Agent,
}

impl SystemRole {
    pub const ALL: [SystemRole; 4] = [
        SystemRole::Node,
        SystemRole::Proxy,
        SystemRole::TrustedCluster,
        SystemRole::Agent,
    ];

    /// Canonical spelling, as Teleport stores it: `Node`, `Proxy`, `Trusted_cluster`, `Agent`.
    pub fn as_str(self) -> &'static str {
        match self {
            SystemRole::Node => "Node",
            SystemRole::Proxy => "Proxy",
            SystemRole::TrustedCluster => "Trusted_cluster",
            SystemRole::Agent => "Agent",
        }
    }

    /// Lower-case name for tables and flags (`tctl tokens ls` Type column): `trusted_cluster`.
    pub fn type_name(self) -> &'static str {
        match self {
            SystemRole::Node => "node",
            SystemRole::Proxy => "proxy",
            SystemRole::TrustedCluster => "trusted_cluster",
            SystemRole::Agent => "agent",
        }
    }

    /// Case-insensitive; accepts the legacy `trustedcluster` spelling of `tctl nodes add`.
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

impl<'de> Deserialize<'de> for SystemRole {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SystemRole::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A join token; `metadata.name` is the secret token value, `metadata.expires` its expiry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProvisionToken {
    pub kind: String,
    pub version: String,
    pub metadata: Metadata,
    pub spec: ProvisionTokenSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ProvisionTokenSpec {
    #[serde(deserialize_with = "system_roles")]
    pub roles: Vec<SystemRole>,
    /// Teleport's join method (`token`, `ec2`, ...): accepted and ignored; only tokens exist here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_method: Option<String>,
}

fn system_roles<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SystemRole>, D::Error> {
    crate::serde_util::string_or_vec(d)?
        .iter()
        .map(|s| SystemRole::parse(s).map_err(serde::de::Error::custom))
        .collect()
}

impl ProvisionToken {
    pub fn new(
        token: impl Into<String>,
        roles: Vec<SystemRole>,
        expires: Option<OffsetDateTime>,
    ) -> Self {
        let mut metadata = Metadata::new(token);
        metadata.expires = expires;
        ProvisionToken {
            kind: Kind::Token.as_str().into(),
            version: Kind::Token.default_version().into(),
            metadata,
            spec: ProvisionTokenSpec {
                roles,
                join_method: None,
            },
        }
    }

    /// The token value.
    pub fn token(&self) -> &str {
        &self.metadata.name
    }

    /// Expired at or after `expires`; tokens without expiry (static tokens) never expire.
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.metadata.expires.is_some_and(|e| e <= now)
    }

    pub fn allows(&self, role: SystemRole) -> bool {
        self.spec.roles.contains(&role)
    }

    /// Type column of `tctl tokens ls`: `node,proxy`, `trusted_cluster`.
    pub fn type_names(&self) -> String {
        self.spec
            .roles
            .iter()
            .map(|r| r.type_name())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn validate(&self) -> Result<(), TypesError> {
        validate_envelope(Kind::Token, &self.kind, &self.version, &self.metadata)?;
        if self.spec.roles.is_empty() {
            return Err(TypesError::invalid(
                "token",
                &self.metadata.name,
                "spec.roles must list at least one of node, proxy, trusted_cluster, agent",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

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

    #[test]
    fn expiry_and_roles() {
        let exp = datetime!(2022-04-28 19:19:00 UTC);
        let token = ProvisionToken::new("abc", vec![SystemRole::TrustedCluster], Some(exp));
        assert!(!token.is_expired(exp - time::Duration::seconds(1)));
        assert!(token.is_expired(exp));
        assert!(token.allows(SystemRole::TrustedCluster));
        assert!(!token.allows(SystemRole::Node));
        assert_eq!(token.type_names(), "trusted_cluster");
        let static_token = ProvisionToken::new("s", vec![SystemRole::Node], None);
        assert!(!static_token.is_expired(exp));
        token.validate().unwrap();
        let empty = ProvisionToken::new("e", vec![], None);
        assert_eq!(
            empty.validate().unwrap_err().to_string(),
            "token \"e\": spec.roles must list at least one of node, proxy, trusted_cluster, agent"
        );
    }
}
