//! The resource envelope: metadata, kinds and aliases, the `Resource` enum and YAML decoding.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use time::OffsetDateTime;

use crate::cert_authority::{self, CertAuthority};
use crate::error::TypesError;
use crate::node::{self, Node};
use crate::remote_cluster::{self, RemoteCluster};
use crate::role::{self, Role};
use crate::token::{self, ProvisionToken};
use crate::trusted_cluster::{self, TrustedCluster};
use crate::user::{self, User};

/// Shown in errors about unknown kinds.
pub(crate) const KNOWN_KINDS_HELP: &str = "role, user, token, node, trusted_cluster (tc), \
     remote_cluster (rc), cert_authority (cas)";

/// Common metadata of every resource.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Metadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "crate::serde_util::string_map"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// Metadata keys Teleport emits that we accept; `id` and `namespace` are dropped on decode.
const METADATA_KEYS: &[&str] = &[
    "name",
    "description",
    "labels",
    "expires",
    "revision",
    "id",
    "namespace",
];

impl Metadata {
    pub fn new(name: impl Into<String>) -> Self {
        Metadata {
            name: name.into(),
            ..Default::default()
        }
    }
}

/// Resource kinds, with the aliases `tctl` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Role,
    User,
    Token,
    Node,
    TrustedCluster,
    RemoteCluster,
    CertAuthority,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Role,
        Kind::User,
        Kind::Token,
        Kind::Node,
        Kind::TrustedCluster,
        Kind::RemoteCluster,
        Kind::CertAuthority,
    ];

    /// Parses a kind or alias (`tc`, `rc`, `cas`, plurals), case-insensitively.
    pub fn parse(s: &str) -> Result<Kind, TypesError> {
        let kind = match s.trim().to_ascii_lowercase().as_str() {
            "role" | "roles" => Kind::Role,
            "user" | "users" => Kind::User,
            "token" | "tokens" => Kind::Token,
            "node" | "nodes" => Kind::Node,
            "trusted_cluster" | "trusted_clusters" | "tc" | "trustedcluster"
            | "trusted-cluster" => Kind::TrustedCluster,
            "remote_cluster" | "remote_clusters" | "rc" | "remotecluster" | "remote-cluster" => {
                Kind::RemoteCluster
            }
            "cert_authority" | "cert_authorities" | "cas" | "ca" | "cert-authority" => {
                Kind::CertAuthority
            }
            _ => return Err(TypesError::UnknownKind(s.to_string())),
        };
        Ok(kind)
    }

    /// The canonical name used in the `kind` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Role => "role",
            Kind::User => "user",
            Kind::Token => "token",
            Kind::Node => "node",
            Kind::TrustedCluster => "trusted_cluster",
            Kind::RemoteCluster => "remote_cluster",
            Kind::CertAuthority => "cert_authority",
        }
    }

    /// Versions accepted in the `version` field.
    pub fn versions(self) -> &'static [&'static str] {
        match self {
            Kind::Role => role::VERSIONS,
            Kind::User => user::VERSIONS,
            Kind::Token => token::VERSIONS,
            Kind::Node => node::VERSIONS,
            Kind::TrustedCluster => trusted_cluster::VERSIONS,
            Kind::RemoteCluster => remote_cluster::VERSIONS,
            Kind::CertAuthority => cert_authority::VERSIONS,
        }
    }

    /// The version written for newly created resources (the newest accepted one).
    pub fn default_version(self) -> &'static str {
        self.versions().last().copied().unwrap_or("v1")
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = TypesError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::parse(s)
    }
}

/// Parses `tctl` references: `KIND` or `KIND/NAME` (e.g. `rc/leaf`, `roles`).
pub fn parse_resource_ref(input: &str) -> Result<(Kind, Option<String>), TypesError> {
    let trimmed = input.trim();
    let (kind, name) = match trimmed.split_once('/') {
        Some((kind, name)) => (kind, Some(name)),
        None => (trimmed, None),
    };
    if kind.is_empty() {
        return Err(TypesError::InvalidReference {
            input: input.to_string(),
            reason: "expected KIND or KIND/NAME".to_string(),
        });
    }
    let kind = Kind::parse(kind)?;
    match name {
        Some("") => Err(TypesError::InvalidReference {
            input: input.to_string(),
            reason: "the name after \"/\" is empty".to_string(),
        }),
        Some(name) => Ok((kind, Some(name.to_string()))),
        None => Ok((kind, None)),
    }
}

/// Any resource `tctl create` / `tctl get` handles.
// Variants stay unboxed so callers can match and build them directly; resources are few and
// short-lived, so the size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    Role(Role),
    User(User),
    Token(ProvisionToken),
    Node(Node),
    TrustedCluster(TrustedCluster),
    RemoteCluster(RemoteCluster),
    CertAuthority(CertAuthority),
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Role(_) => Kind::Role,
            Resource::User(_) => Kind::User,
            Resource::Token(_) => Kind::Token,
            Resource::Node(_) => Kind::Node,
            Resource::TrustedCluster(_) => Kind::TrustedCluster,
            Resource::RemoteCluster(_) => Kind::RemoteCluster,
            Resource::CertAuthority(_) => Kind::CertAuthority,
        }
    }

    pub fn metadata(&self) -> &Metadata {
        match self {
            Resource::Role(r) => &r.metadata,
            Resource::User(r) => &r.metadata,
            Resource::Token(r) => &r.metadata,
            Resource::Node(r) => &r.metadata,
            Resource::TrustedCluster(r) => &r.metadata,
            Resource::RemoteCluster(r) => &r.metadata,
            Resource::CertAuthority(r) => &r.metadata,
        }
    }

    pub fn metadata_mut(&mut self) -> &mut Metadata {
        match self {
            Resource::Role(r) => &mut r.metadata,
            Resource::User(r) => &mut r.metadata,
            Resource::Token(r) => &mut r.metadata,
            Resource::Node(r) => &mut r.metadata,
            Resource::TrustedCluster(r) => &mut r.metadata,
            Resource::RemoteCluster(r) => &mut r.metadata,
            Resource::CertAuthority(r) => &mut r.metadata,
        }
    }

    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    pub fn version(&self) -> &str {
        match self {
            Resource::Role(r) => &r.version,
            Resource::User(r) => &r.version,
            Resource::Token(r) => &r.version,
            Resource::Node(r) => &r.version,
            Resource::TrustedCluster(r) => &r.version,
            Resource::RemoteCluster(r) => &r.version,
            Resource::CertAuthority(r) => &r.version,
        }
    }

    pub fn validate(&self) -> Result<(), TypesError> {
        match self {
            Resource::Role(r) => r.validate(),
            Resource::User(r) => r.validate(),
            Resource::Token(r) => r.validate(),
            Resource::Node(r) => r.validate(),
            Resource::TrustedCluster(r) => r.validate(),
            Resource::RemoteCluster(r) => r.validate(),
            Resource::CertAuthority(r) => r.validate(),
        }
    }

    /// Decodes one resource: dispatches on `kind`, checks `version`, rejects unknown fields,
    /// applies version defaults and validates.
    pub fn from_json_value(mut value: Value) -> Result<Resource, TypesError> {
        let Some(obj) = value.as_object_mut() else {
            return Err(TypesError::NotAMapping(describe(&value)));
        };
        let kind = match obj.get("kind") {
            None | Some(Value::Null) => return Err(TypesError::MissingKind),
            Some(Value::String(s)) => Kind::parse(s)?,
            Some(other) => return Err(TypesError::UnknownKind(other.to_string())),
        };
        // Aliases are accepted in files too; store the canonical spelling.
        obj.insert("kind".into(), Value::String(kind.as_str().into()));
        let name = obj
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let supported = kind.versions().join(", ");
        match obj.get("version") {
            None | Some(Value::Null) => {
                return Err(TypesError::MissingVersion {
                    kind: kind.as_str().into(),
                    name,
                    supported,
                });
            }
            Some(Value::String(v)) if kind.versions().contains(&v.as_str()) => {}
            Some(other) => {
                return Err(TypesError::UnsupportedVersion {
                    kind: kind.as_str().into(),
                    name,
                    version: other
                        .as_str()
                        .map_or_else(|| other.to_string(), str::to_string),
                    supported,
                });
            }
        }
        let resource = match kind {
            Kind::Role => {
                let mut role: Role = decode(value, kind, &name, "spec", role::check_spec)?;
                role.apply_version_defaults();
                Resource::Role(role)
            }
            Kind::User => Resource::User(decode(value, kind, &name, "spec", user::check_spec)?),
            Kind::Token => Resource::Token(decode(
                value,
                kind,
                &name,
                "spec",
                check::<token::ProvisionTokenSpec>,
            )?),
            Kind::Node => {
                Resource::Node(decode(value, kind, &name, "spec", check::<node::NodeSpec>)?)
            }
            Kind::TrustedCluster => Resource::TrustedCluster(decode(
                value,
                kind,
                &name,
                "spec",
                check::<trusted_cluster::TrustedClusterSpec>,
            )?),
            Kind::RemoteCluster => Resource::RemoteCluster(decode(
                value,
                kind,
                &name,
                "status",
                check::<remote_cluster::RemoteClusterStatus>,
            )?),
            Kind::CertAuthority => Resource::CertAuthority(decode(
                value,
                kind,
                &name,
                "spec",
                check::<cert_authority::CertAuthoritySpec>,
            )?),
        };
        resource.validate()?;
        Ok(resource)
    }

    pub fn to_json_value(&self) -> Result<Value, TypesError> {
        serde_json::to_value(self).map_err(|e| TypesError::Serialize(e.to_string()))
    }

    /// YAML as `tctl get` prints it (one document, no leading `---`).
    pub fn to_yaml(&self) -> Result<String, TypesError> {
        serde_norway::to_string(self).map_err(|e| TypesError::Serialize(e.to_string()))
    }
}

macro_rules! resource_from {
    ($($variant:ident($ty:ty)),* $(,)?) => {$(
        impl From<$ty> for Resource {
            fn from(r: $ty) -> Self {
                Resource::$variant(r)
            }
        }
    )*};
}
resource_from!(
    Role(Role),
    User(User),
    Token(ProvisionToken),
    Node(Node),
    TrustedCluster(TrustedCluster),
    RemoteCluster(RemoteCluster),
    CertAuthority(CertAuthority),
);

impl Serialize for Resource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Resource::Role(r) => r.serialize(s),
            Resource::User(r) => r.serialize(s),
            Resource::Token(r) => r.serialize(s),
            Resource::Node(r) => r.serialize(s),
            Resource::TrustedCluster(r) => r.serialize(s),
            Resource::RemoteCluster(r) => r.serialize(s),
            Resource::CertAuthority(r) => r.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        Resource::from_json_value(value).map_err(serde::de::Error::custom)
    }
}

/// Parses one or more YAML documents (separated by `---`) into resources. Empty documents are
/// skipped; a document that is a list holds several resources.
pub fn parse_yaml_documents(text: &str) -> Result<Vec<Resource>, TypesError> {
    let mut out = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        // Going through the YAML value type rejects duplicate keys (with their position)
        // instead of silently keeping the last one.
        let yaml = serde_norway::Value::deserialize(document).map_err(yaml_error)?;
        let value = serde_json::to_value(yaml).map_err(|e| TypesError::YamlOther(e.to_string()))?;
        match value {
            Value::Null => {}
            Value::Array(items) => {
                for item in items.into_iter().filter(|v| !v.is_null()) {
                    out.push(Resource::from_json_value(item)?);
                }
            }
            other => out.push(Resource::from_json_value(other)?),
        }
    }
    Ok(out)
}

fn yaml_error(err: serde_norway::Error) -> TypesError {
    let text = err.to_string();
    match err.location() {
        Some(loc) => {
            // The library appends the position to its message; we report it separately.
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            TypesError::Yaml {
                line: loc.line(),
                column: loc.column(),
                message: text.replacen(&suffix, "", 1),
            }
        }
        None => TypesError::YamlOther(text),
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(_) => "a number".into(),
        Value::String(s) => format!("the string \"{s}\""),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// Section checker used to point decode errors at `spec`, `spec.allow`, ...: gets the section
/// value and its path, returns a message that starts with the path.
pub(crate) type SectionCheck = fn(&Value, &str) -> Result<(), String>;

pub(crate) fn check<T: serde::de::DeserializeOwned>(v: &Value, path: &str) -> Result<(), String> {
    T::deserialize(v)
        .map(|_| ())
        .map_err(|e| format!("{path}: {e}"))
}

/// Rejects keys outside `allowed` with serde's wording so messages look alike.
pub(crate) fn check_keys(v: &Value, allowed: &[&str]) -> Result<(), String> {
    if let Value::Object(map) = v
        && let Some(key) = map.keys().find(|k| !allowed.contains(&k.as_str()))
    {
        let expected = allowed
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(format!("unknown field `{key}`, expected one of {expected}"));
    }
    Ok(())
}

fn decode<T: serde::de::DeserializeOwned>(
    value: Value,
    kind: Kind,
    name: &str,
    section: &str,
    section_check: SectionCheck,
) -> Result<T, TypesError> {
    let fail = |message: String| TypesError::Decode {
        kind: kind.as_str().into(),
        name: name.into(),
        message,
    };
    let mut top: Vec<&str> = vec!["kind", "sub_kind", "version", "metadata", "spec"];
    if matches!(kind, Kind::RemoteCluster | Kind::User) {
        // Teleport prints a top-level status for these; it is state, not configuration.
        top.push("status");
    }
    check_keys(&value, &top).map_err(fail)?;
    let metadata = value
        .get("metadata")
        .ok_or_else(|| fail("missing field `metadata`".into()))?;
    check_keys(metadata, METADATA_KEYS).map_err(|e| fail(format!("metadata: {e}")))?;
    check::<Metadata>(metadata, "metadata").map_err(fail)?;
    if let Some(part) = value.get(section) {
        section_check(part, section).map_err(fail)?;
    }
    serde_json::from_value(value).map_err(|e| fail(e.to_string()))
}

/// Checks what every resource shares: the kind field, an accepted version and a usable name.
pub(crate) fn validate_envelope(
    kind: Kind,
    kind_field: &str,
    version: &str,
    metadata: &Metadata,
) -> Result<(), TypesError> {
    let name = metadata.name.as_str();
    let invalid = |message: String| TypesError::invalid(kind.as_str(), name, message);
    if kind_field != kind.as_str() {
        return Err(invalid(format!(
            "kind is \"{kind_field}\", expected \"{}\"",
            kind.as_str()
        )));
    }
    if !kind.versions().contains(&version) {
        return Err(TypesError::UnsupportedVersion {
            kind: kind.as_str().into(),
            name: name.into(),
            version: version.into(),
            supported: kind.versions().join(", "),
        });
    }
    if name.trim().is_empty() {
        return Err(invalid("metadata.name must not be empty".into()));
    }
    if name != name.trim() || name.contains('/') || name.chars().any(char::is_control) {
        return Err(invalid(
            "metadata.name must not contain \"/\", control characters or surrounding spaces".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[path = "resource_tests.rs"]
mod tests;
