//! Join tokens (`tctl tokens add`): which system roles a token admits and until when.

use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;

use crate::error::TypesError;
use crate::resource::{Kind, Metadata, validate_envelope};

pub const VERSIONS: &[&str] = &["v2"];

pub use crate::system_role::SystemRole;

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
