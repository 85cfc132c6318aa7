//! Users: assigned roles and traits (`logins`, ...). Passwords live in the auth service only.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::TypesError;
use crate::resource::{Kind, Metadata, validate_envelope};
use crate::traits::Traits;

pub const VERSIONS: &[&str] = &["v2"];

/// Conventional trait holding the user's Unix logins (`{{internal.logins}}`).
pub const LOGINS_TRAIT: &str = "logins";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct User {
    pub kind: String,
    pub version: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: UserSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct UserSpec {
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::serde_util::string_or_vec"
    )]
    pub roles: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "crate::serde_util::traits_map"
    )]
    pub traits: BTreeMap<String, Vec<String>>,
    /// Fields Teleport writes (`created_by`, `status`, identities, ...): kept, unused.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Keys of a Teleport user spec accepted in `extra`; anything else is reported as unknown so a
/// typo such as `role:` does not silently produce a user without roles.
const EXTRA_KEYS: &[&str] = &[
    "created_by",
    "status",
    "expires",
    "oidc_identities",
    "saml_identities",
    "github_identities",
    "local_auth",
    "trusted_device_ids",
];

impl User {
    pub fn new(name: impl Into<String>, roles: Vec<String>, traits: Traits) -> Self {
        User {
            kind: Kind::User.as_str().into(),
            version: Kind::User.default_version().into(),
            metadata: Metadata::new(name),
            spec: UserSpec {
                roles,
                traits,
                extra: BTreeMap::new(),
            },
        }
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The `logins` trait, empty when unset.
    pub fn logins(&self) -> &[String] {
        self.spec
            .traits
            .get(LOGINS_TRAIT)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn validate(&self) -> Result<(), TypesError> {
        validate_envelope(Kind::User, &self.kind, &self.version, &self.metadata)?;
        let invalid = |m: String| TypesError::invalid("user", &self.metadata.name, m);
        if let Some(key) = self
            .spec
            .extra
            .keys()
            .find(|k| !EXTRA_KEYS.contains(&k.as_str()))
        {
            return Err(invalid(format!(
                "spec: unknown field `{key}`, expected one of `roles`, `traits`"
            )));
        }
        if self.spec.roles.iter().any(|r| r.trim().is_empty()) {
            return Err(invalid("spec.roles has an empty role name".into()));
        }
        if self.spec.traits.keys().any(|k| k.trim().is_empty()) {
            return Err(invalid("spec.traits has an empty trait name".into()));
        }
        Ok(())
    }
}

/// Decode diagnostics for a user spec: report unknown keys before serde's generic message.
pub(crate) fn check_spec(v: &Value, path: &str) -> Result<(), String> {
    if let Value::Object(map) = v {
        let known = ["roles", "traits"];
        if let Some(key) = map
            .keys()
            .find(|k| !known.contains(&k.as_str()) && !EXTRA_KEYS.contains(&k.as_str()))
        {
            return Err(format!(
                "{path}: unknown field `{key}`, expected one of `roles`, `traits`"
            ));
        }
    }
    crate::resource::check::<UserSpec>(v, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traits_accept_scalars_lists_and_null() {
        let spec: UserSpec = serde_json::from_str(
            r#"{"roles":"access","traits":{"logins":["visitor","ubuntu","root"],"env":"dev","x":null},
               "created_by":{"user":{"name":"admin"}}}"#,
        )
        .unwrap();
        assert_eq!(spec.roles, ["access"]);
        assert_eq!(spec.traits["logins"], ["visitor", "ubuntu", "root"]);
        assert_eq!(spec.traits["env"], ["dev"]);
        assert!(spec.traits["x"].is_empty());
        assert!(spec.extra.contains_key("created_by"));
    }

    #[test]
    fn unknown_spec_field_is_rejected() {
        let mut user = User::new("alice", vec!["access".into()], Traits::new());
        user.spec.extra.insert("role".into(), Value::from("access"));
        assert_eq!(
            user.validate().unwrap_err().to_string(),
            "user \"alice\": spec: unknown field `role`, expected one of `roles`, `traits`"
        );
    }

    #[test]
    fn logins_reads_the_trait() {
        let mut traits = Traits::new();
        traits.insert("logins".into(), vec!["root".into()]);
        let user = User::new("alice", vec![], traits);
        assert_eq!(user.logins(), ["root"]);
        assert!(User::new("bob", vec![], Traits::new()).logins().is_empty());
        user.validate().unwrap();
    }
}
