//! Roles: allow/deny conditions (logins, node and cluster labels, ...) and session options.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::TypesError;
use crate::labels::{LabelValues, Labels, WILDCARD, validate_selector};
use crate::resource::{Kind, Metadata, check, check_keys, validate_envelope};
use crate::rule::{ANY, Rule, verb};
use crate::traits::validate_template;

pub const VERSIONS: &[&str] = &["v3", "v4", "v5", "v6", "v7"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Role {
    pub kind: String,
    pub version: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: RoleSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    #[serde(default, deserialize_with = "crate::serde_util::null_default")]
    pub options: RoleOptions,
    #[serde(default, deserialize_with = "crate::serde_util::null_default")]
    pub allow: RoleConditions,
    #[serde(default, deserialize_with = "crate::serde_util::null_default")]
    pub deny: RoleConditions,
}

/// Session options. Teleport has dozens more; they are kept in `other` (unused) so roles
/// exported from Teleport load unchanged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RoleOptions {
    #[serde(
        default,
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_session_ttl: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_forwarding: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_agent: Option<bool>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// One side (allow or deny) of a role.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RoleConditions {
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::serde_util::string_or_vec"
    )]
    pub logins: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "crate::serde_util::null_default"
    )]
    pub node_labels: Labels,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "crate::serde_util::null_default"
    )]
    pub cluster_labels: Labels,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::serde_util::string_or_vec"
    )]
    pub kubernetes_groups: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::serde_util::string_or_vec"
    )]
    pub kubernetes_users: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::serde_util::string_or_vec"
    )]
    pub db_users: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::serde_util::string_or_vec"
    )]
    pub db_names: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::serde_util::string_or_vec"
    )]
    pub aws_role_arns: Vec<String>,
    /// Resource rules: the admin calls (`tctl`) a user may make (see [`crate::rule`]).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::serde_util::null_default"
    )]
    pub rules: Vec<Rule>,
    /// Other Teleport condition keys (`app_labels`, `kubernetes_resources`, ...): kept, unused.
    /// Only the names in `TELEPORT_CONDITION_KEYS` are accepted so typos are still reported.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

const CONDITION_KEYS: &[&str] = &[
    "logins",
    "node_labels",
    "cluster_labels",
    "kubernetes_groups",
    "kubernetes_users",
    "db_users",
    "db_names",
    "aws_role_arns",
    "rules",
];

/// Condition keys of real Teleport roles that Portcullis does not implement.
const TELEPORT_CONDITION_KEYS: &[&str] = &[
    "namespaces",
    "node_labels_expression",
    "cluster_labels_expression",
    "app_labels",
    "app_labels_expression",
    "db_labels",
    "db_labels_expression",
    "db_roles",
    "db_service_labels",
    "db_permissions",
    "kubernetes_labels",
    "kubernetes_labels_expression",
    "kubernetes_resources",
    "windows_desktop_logins",
    "windows_desktop_labels",
    "windows_desktop_labels_expression",
    "desktop_groups",
    "host_groups",
    "host_sudoers",
    "azure_identities",
    "gcp_service_accounts",
    "group_labels",
    "group_labels_expression",
    "impersonate",
    "join_sessions",
    "require_session_join",
    "request",
    "review_requests",
    "spiffe",
    "account_assignments",
    "github_permissions",
    "workload_identity_labels",
    "workload_identity_labels_expression",
    "mcp",
];

impl Role {
    /// A new role with the newest version.
    pub fn new(name: impl Into<String>, spec: RoleSpec) -> Self {
        Role {
            kind: Kind::Role.as_str().into(),
            version: Kind::Role.default_version().into(),
            metadata: Metadata::new(name),
            spec,
        }
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// Teleport gives v3 roles without `allow.node_labels` access to all nodes, and without
    /// `allow.logins` the user's own logins; later versions grant nothing by default.
    /// Applied on decode so old role files (like the older trusted-cluster guide's) keep
    /// their meaning.
    pub fn apply_version_defaults(&mut self) {
        if self.version == "v3" && self.spec.allow.logins.is_empty() {
            self.spec.allow.logins = vec!["{{internal.logins}}".to_string()];
        }
        if self.version == "v3" && self.spec.allow.node_labels.is_empty() {
            self.spec
                .allow
                .node_labels
                .insert(WILDCARD.into(), LabelValues::one(WILDCARD));
        }
    }

    pub fn validate(&self) -> Result<(), TypesError> {
        validate_envelope(Kind::Role, &self.kind, &self.version, &self.metadata)?;
        let invalid = |message: String| TypesError::invalid("role", &self.metadata.name, message);
        for (side, cond) in [("allow", &self.spec.allow), ("deny", &self.spec.deny)] {
            let path = format!("spec.{side}");
            check_condition_keys(cond.other.keys().map(String::as_str))
                .map_err(|e| invalid(format!("{path}: {e}")))?;
            validate_selector(&cond.node_labels, &format!("{path}.node_labels"))
                .map_err(invalid)?;
            validate_selector(&cond.cluster_labels, &format!("{path}.cluster_labels"))
                .map_err(invalid)?;
            for (i, rule) in cond.rules.iter().enumerate() {
                rule.check()
                    .map_err(|e| invalid(format!("{path}.rules[{i}] {e}")))?;
            }
            for (field, values) in [
                ("logins", &cond.logins),
                ("kubernetes_groups", &cond.kubernetes_groups),
                ("kubernetes_users", &cond.kubernetes_users),
                ("db_users", &cond.db_users),
                ("db_names", &cond.db_names),
                ("aws_role_arns", &cond.aws_role_arns),
            ] {
                for value in values {
                    if value.trim().is_empty() {
                        return Err(invalid(format!("{path}.{field} has an empty entry")));
                    }
                    validate_template(value)
                        .map_err(|e| invalid(format!("{path}.{field}: {e}")))?;
                }
            }
        }
        if self.spec.options.max_session_ttl == Some(Duration::ZERO) {
            return Err(invalid(
                "spec.options.max_session_ttl must be positive".into(),
            ));
        }
        Ok(())
    }
}

fn check_condition_keys<'a>(mut keys: impl Iterator<Item = &'a str>) -> Result<(), String> {
    match keys.find(|k| !TELEPORT_CONDITION_KEYS.contains(k)) {
        None => Ok(()),
        Some(key) => Err(format!(
            "unknown field `{key}`, expected one of {}",
            CONDITION_KEYS
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Decode diagnostics for a role spec, naming `spec.allow` / `spec.deny` / `spec.options`.
pub(crate) fn check_spec(v: &Value, path: &str) -> Result<(), String> {
    check_keys(v, &["options", "allow", "deny"]).map_err(|e| format!("{path}: {e}"))?;
    for side in ["allow", "deny"] {
        if let Some(cond) = v.get(side).filter(|c| !c.is_null()) {
            let sub = format!("{path}.{side}");
            if let Value::Object(map) = cond {
                let extra = map
                    .keys()
                    .map(String::as_str)
                    .filter(|k| !CONDITION_KEYS.contains(k));
                check_condition_keys(extra).map_err(|e| format!("{sub}: {e}"))?;
            }
            check::<RoleConditions>(cond, &sub)?;
        }
    }
    if let Some(options) = v.get("options").filter(|o| !o.is_null()) {
        check::<RoleOptions>(options, &format!("{path}.options"))?;
    }
    check::<RoleSpec>(v, path)
}

/// The rules of the preset `editor` role: every read-write verb on every kind of resource,
/// so its holders make every admin call (`tctl`), as they always have.
pub fn editor_rules() -> Vec<Rule> {
    vec![Rule::new(&[ANY], &verb::READ_WRITE)]
}

/// The roles every cluster starts with, as in Teleport: `access` (SSH with the user's own
/// logins to every node), `editor` (every admin call, through its rules; no node logins) and
/// `auditor` (no node logins; grants nothing else yet).
pub fn preset_roles() -> Vec<Role> {
    let max_ttl = Some(Duration::from_secs(30 * 3600));
    let everything: Labels = [(WILDCARD.to_string(), LabelValues::one(WILDCARD))].into();
    let mut access = Role::new(
        "access",
        RoleSpec {
            options: RoleOptions {
                max_session_ttl: max_ttl,
                port_forwarding: Some(true),
                forward_agent: Some(true),
                other: BTreeMap::new(),
            },
            allow: RoleConditions {
                logins: vec!["{{internal.logins}}".into()],
                node_labels: everything,
                kubernetes_groups: vec!["{{internal.kubernetes_groups}}".into()],
                kubernetes_users: vec!["{{internal.kubernetes_users}}".into()],
                db_users: vec!["{{internal.db_users}}".into()],
                db_names: vec!["{{internal.db_names}}".into()],
                aws_role_arns: vec!["{{internal.aws_role_arns}}".into()],
                ..Default::default()
            },
            deny: RoleConditions::default(),
        },
    );
    access.metadata.description = "Access cluster resources".into();
    let admin_options = RoleOptions {
        max_session_ttl: max_ttl,
        ..Default::default()
    };
    let mut editor = Role::new(
        "editor",
        RoleSpec {
            options: admin_options.clone(),
            allow: RoleConditions {
                rules: editor_rules(),
                ..Default::default()
            },
            deny: RoleConditions::default(),
        },
    );
    editor.metadata.description = "Edit cluster configuration".into();
    let mut auditor = Role::new(
        "auditor",
        RoleSpec {
            options: admin_options,
            ..Default::default()
        },
    );
    auditor.metadata.description = "Review cluster events and replay sessions".into();
    vec![access, editor, auditor]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        let presets = preset_roles();
        let names: Vec<&str> = presets.iter().map(Role::name).collect();
        assert_eq!(names, ["access", "editor", "auditor"]);
        for role in &presets {
            role.validate().unwrap();
        }
        assert_eq!(presets[0].spec.allow.logins, ["{{internal.logins}}"]);
        assert!(presets[1].spec.allow.logins.is_empty());
        assert_eq!(presets[1].spec.allow.rules, editor_rules());
        assert!(presets[2].spec.allow.rules.is_empty());
    }

    #[test]
    fn rules_without_verbs_are_reported_with_their_place() {
        let mut role = Role::new("x", RoleSpec::default());
        role.spec.deny.rules = vec![Rule::new(&["user"], &["read"]), Rule::new(&["user"], &[])];
        assert_eq!(
            role.validate().unwrap_err().to_string(),
            "role \"x\": spec.deny.rules[1] names no verbs"
        );
    }

    #[test]
    fn invalid_regex_is_reported_with_role_and_field() {
        let mut role = Role::new("x", RoleSpec::default());
        role.spec
            .deny
            .node_labels
            .insert("env".into(), LabelValues::one("^("));
        assert_eq!(
            role.validate().unwrap_err().to_string(),
            "role \"x\": invalid regex \"^(\": a regular expression must start with \"^\" and end with \"$\" (spec.deny.node_labels.env)"
        );
        role.spec
            .deny
            .node_labels
            .insert("env".into(), LabelValues::one("^(a$"));
        assert_eq!(
            role.validate().unwrap_err().to_string(),
            "role \"x\": invalid regex \"^(a$\": unclosed group (spec.deny.node_labels.env)"
        );
    }

    #[test]
    fn bad_template_and_empty_name_rejected() {
        let mut role = Role::new("x", RoleSpec::default());
        role.spec.allow.logins = vec!["{{internal.logins".into()];
        let err = role.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("role \"x\": spec.allow.logins: invalid template"),
            "{err}"
        );
        let role = Role::new("", RoleSpec::default());
        assert_eq!(
            role.validate().unwrap_err().to_string(),
            "role \"\": metadata.name must not be empty"
        );
    }

    #[test]
    fn v3_defaults_to_all_nodes_but_v5_does_not() {
        let mut v3 = Role::new("old", RoleSpec::default());
        v3.version = "v3".into();
        v3.apply_version_defaults();
        assert_eq!(v3.spec.allow.node_labels["*"], LabelValues::one("*"));
        let mut v5 = Role::new("new", RoleSpec::default());
        v5.version = "v5".into();
        v5.apply_version_defaults();
        assert!(v5.spec.allow.node_labels.is_empty());
    }

    #[test]
    fn options_keep_unknown_teleport_keys() {
        let opts: RoleOptions = serde_json::from_str(
            r#"{"max_session_ttl":"8h","forward_agent":true,"cert_format":"standard"}"#,
        )
        .unwrap();
        assert_eq!(opts.max_session_ttl, Some(Duration::from_secs(8 * 3600)));
        assert_eq!(opts.forward_agent, Some(true));
        assert_eq!(opts.port_forwarding, None);
        assert_eq!(opts.other["cert_format"], "standard");
        let back = serde_json::to_value(&opts).unwrap();
        assert_eq!(back["max_session_ttl"], "8h0m0s");
        assert_eq!(back["cert_format"], "standard");
    }
}
