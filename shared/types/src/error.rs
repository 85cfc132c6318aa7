//! The crate's error type: every message names the offending resource, field or input.

use thiserror::Error;

/// Errors from parsing, decoding and validating resources.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TypesError {
    /// YAML syntax error with a 1-based position so users can find it in their file.
    #[error("malformed YAML at line {line}, column {column}: {message}")]
    Yaml {
        line: usize,
        column: usize,
        message: String,
    },

    /// YAML error the parser could not place (rare: e.g. recursion limit).
    #[error("malformed YAML: {0}")]
    YamlOther(String),

    /// A document that is not a mapping (e.g. a bare string).
    #[error("a resource must be a mapping with kind, version, metadata and spec, got {0}")]
    NotAMapping(String),

    #[error(
        "resource has no \"kind\" field (expected one of: {known})",
        known = crate::resource::KNOWN_KINDS_HELP
    )]
    MissingKind,

    #[error(
        "unknown resource kind \"{0}\" (expected one of: {known})",
        known = crate::resource::KNOWN_KINDS_HELP
    )]
    UnknownKind(String),

    #[error("{kind} \"{name}\" has no \"version\" field (supported: {supported})")]
    MissingVersion {
        kind: String,
        name: String,
        supported: String,
    },

    #[error("{kind} \"{name}\": version \"{version}\" is not supported (supported: {supported})")]
    UnsupportedVersion {
        kind: String,
        name: String,
        version: String,
        supported: String,
    },

    /// The document does not have the shape of its kind: unknown or mistyped fields.
    #[error("invalid {kind} \"{name}\": {message}")]
    Decode {
        kind: String,
        name: String,
        message: String,
    },

    /// The document decoded but breaks a rule (empty name, bad regex, ...).
    #[error("{kind} \"{name}\": {message}")]
    Invalid {
        kind: String,
        name: String,
        message: String,
    },

    #[error("invalid template \"{template}\": {reason}")]
    InvalidTemplate { template: String, reason: String },

    #[error("invalid role_map: {0}")]
    InvalidRoleMap(String),

    #[error("invalid duration \"{input}\": {reason}")]
    InvalidDuration { input: String, reason: String },

    #[error("unknown system role \"{0}\" (expected one of: node, proxy, trusted_cluster, agent)")]
    UnknownSystemRole(String),

    #[error("invalid labels \"{input}\": {reason}")]
    InvalidLabels { input: String, reason: String },

    #[error("invalid resource reference \"{input}\": {reason}")]
    InvalidReference { input: String, reason: String },

    /// A cluster name that is not a DNS name (see `validate_cluster_name`).
    #[error("invalid cluster name {name:?}: {reason}; a cluster name must be a DNS name")]
    InvalidClusterName { name: String, reason: String },

    #[error("cannot serialize resource: {0}")]
    Serialize(String),
}

impl TypesError {
    /// Shorthand for a validation failure of a named resource.
    pub(crate) fn invalid(kind: &str, name: &str, message: impl Into<String>) -> Self {
        TypesError::Invalid {
            kind: kind.to_string(),
            name: name.to_string(),
            message: message.into(),
        }
    }
}

/// Regex syntax errors print a multi-line caret diagram; keep only the reason so messages
/// stay on one line.
pub(crate) fn regex_reason(err: &regex::Error) -> String {
    let text = err.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: ").map(str::to_string))
        .unwrap_or_else(|| text.lines().map(str::trim).collect::<Vec<_>>().join(" "))
}
