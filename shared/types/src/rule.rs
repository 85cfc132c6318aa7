//! Resource rules (`allow.rules` / `deny.rules` of a role), as in Teleport: which verbs on
//! which kinds of resource a role grants or denies. They decide users' admin calls (`tctl`).
//!
//! `where` conditions and `actions` (Teleport's predicate language) are kept so roles
//! exported from Teleport load and round-trip unchanged, but never evaluated: an allow rule
//! with a `where` grants nothing, a deny rule with one denies unconditionally (failing closed).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Matches every resource kind or every verb.
pub const ANY: &str = "*";

/// The verbs admin calls need (Teleport's names).
pub mod verb {
    pub const LIST: &str = "list";
    pub const READ: &str = "read";
    pub const CREATE: &str = "create";
    pub const UPDATE: &str = "update";
    pub const DELETE: &str = "delete";
    /// Every read-write verb: what the preset `editor` role grants.
    pub const READ_WRITE: [&str; 5] = [LIST, READ, CREATE, UPDATE, DELETE];
}

/// Resource kinds that are not stored resources (`Kind`) but are still checked by rules.
pub mod resource {
    /// The audit log (`SearchAuditEvents`).
    pub const EVENT: &str = "event";
    /// Admin and failed-login user locks (`tctl users lock/unlock/locks`).
    pub const LOCK: &str = "lock";
}

/// One rule. Resources and verbs are lists (a scalar is read as a one-element list).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Rule {
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::serde_util::string_or_vec"
    )]
    pub resources: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::serde_util::string_or_vec"
    )]
    pub verbs: Vec<String>,
    /// `where`, `actions` and any other key: kept, not evaluated (see the module doc).
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// What an admin call needs: `verb` on `resource`. [`ANY`] as the resource is a broad call
/// touching every kind (`tctl status`): only a rule for `*` grants it, and a deny of the
/// verb on any kind refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permission {
    pub resource: &'static str,
    pub verb: &'static str,
}

impl Permission {
    pub const fn new(resource: &'static str, verb: &'static str) -> Self {
        Permission { resource, verb }
    }
}

impl fmt::Display for Permission {
    /// `create trusted_cluster`, `read every resource`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.resource == ANY {
            write!(f, "{} every resource", self.verb)
        } else {
            write!(f, "{} {}", self.verb, self.resource)
        }
    }
}

impl Rule {
    pub fn new(resources: &[&str], verbs: &[&str]) -> Self {
        Rule {
            resources: resources.iter().map(|r| r.to_string()).collect(),
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
            other: BTreeMap::new(),
        }
    }

    /// Whether the rule carries a condition Portcullis cannot evaluate.
    pub fn is_conditional(&self) -> bool {
        match self.other.get("where") {
            None | Some(Value::Null) => false,
            Some(Value::String(s)) => !s.trim().is_empty(),
            Some(_) => true,
        }
    }

    fn has_verb(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == ANY || v == verb)
    }

    /// As an allow rule: grants `p` (a broad permission only through `*`).
    pub fn grants(&self, p: Permission) -> bool {
        !self.is_conditional()
            && self.has_verb(p.verb)
            && self.resources.iter().any(|r| r == ANY || r == p.resource)
    }

    /// As a deny rule: refuses `p` (a broad permission when any kind is denied the verb).
    pub fn denies(&self, p: Permission) -> bool {
        self.has_verb(p.verb)
            && (p.resource == ANY || self.resources.iter().any(|r| r == ANY || r == p.resource))
    }

    /// Teleport refuses rules that name no resource or no verb; so does `tctl create`.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.resources.iter().all(|r| r.trim().is_empty()) {
            return Err("names no resources".into());
        }
        if self.verbs.iter().all(|v| v.trim().is_empty()) {
            return Err("names no verbs".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREATE_TC: Permission = Permission::new("trusted_cluster", verb::CREATE);
    const BROAD_READ: Permission = Permission::new(ANY, verb::READ);

    #[test]
    fn allow_matches_named_and_wildcard_kinds_and_verbs() {
        assert!(Rule::new(&["trusted_cluster"], &["create"]).grants(CREATE_TC));
        assert!(Rule::new(&["*"], &verb::READ_WRITE).grants(CREATE_TC));
        assert!(Rule::new(&["trusted_cluster"], &["*"]).grants(CREATE_TC));
        assert!(!Rule::new(&["remote_cluster"], &["list", "read"]).grants(CREATE_TC));
        assert!(!Rule::new(&["trusted_cluster"], &["read"]).grants(CREATE_TC));
        assert!(!Rule::default().grants(CREATE_TC));
    }

    #[test]
    fn broad_permissions_need_the_wildcard_to_allow_and_any_kind_to_deny() {
        assert!(Rule::new(&["*"], &["read"]).grants(BROAD_READ));
        assert!(!Rule::new(&["user", "role"], &["read"]).grants(BROAD_READ));
        assert!(Rule::new(&["user"], &["read"]).denies(BROAD_READ));
        assert!(!Rule::new(&["user"], &["delete"]).denies(BROAD_READ));
    }

    #[test]
    fn deny_matches_like_allow() {
        assert!(Rule::new(&["trusted_cluster"], &["create"]).denies(CREATE_TC));
        assert!(Rule::new(&["*"], &["*"]).denies(CREATE_TC));
        assert!(!Rule::new(&["token"], &["create"]).denies(CREATE_TC));
    }

    #[test]
    fn where_conditions_are_kept_but_fail_closed() {
        let rule: Rule = serde_json::from_value(serde_json::json!({
            "resources": ["trusted_cluster"],
            "verbs": "create",
            "where": "contains(user.spec.traits[\"groups\"], \"admins\")",
            "actions": ["log(\"info\", \"x\")"],
        }))
        .unwrap();
        assert_eq!(rule.verbs, ["create"]);
        assert!(rule.is_conditional());
        assert!(
            !rule.grants(CREATE_TC),
            "an unevaluated where must not widen an allow"
        );
        assert!(
            rule.denies(CREATE_TC),
            "an unevaluated where must not narrow a deny"
        );
        let back = serde_json::to_value(&rule).unwrap();
        assert_eq!(back["actions"][0], "log(\"info\", \"x\")");
        let empty_where: Rule = serde_json::from_value(
            serde_json::json!({"resources": "*", "verbs": "*", "where": ""}),
        )
        .unwrap();
        assert!(empty_where.grants(CREATE_TC));
    }

    #[test]
    fn rules_without_resources_or_verbs_are_invalid() {
        assert_eq!(
            Rule::new(&[], &["read"]).check().unwrap_err(),
            "names no resources"
        );
        assert_eq!(
            Rule::new(&["user"], &[""]).check().unwrap_err(),
            "names no verbs"
        );
        Rule::new(&["user"], &["read"]).check().unwrap();
    }

    #[test]
    fn permissions_read_as_english() {
        assert_eq!(CREATE_TC.to_string(), "create trusted_cluster");
        assert_eq!(BROAD_READ.to_string(), "read every resource");
    }
}
