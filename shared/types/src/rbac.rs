//! Access decisions for a user's role set: logins, node and cluster visibility, session options.

use std::collections::BTreeMap;
use std::time::Duration;

use thiserror::Error;

use crate::labels::{Labels, format_labels, format_selector, match_labels};
use crate::role::{Role, RoleConditions};
use crate::rule::Permission;
use crate::traits::{Traits, expand_template};

/// Why access was refused; the message is meant for the user and the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct AccessDenied {
    pub message: String,
}

impl AccessDenied {
    pub fn new(message: impl Into<String>) -> Self {
        AccessDenied {
            message: message.into(),
        }
    }
}

/// The roles of one user (after role mapping, on a leaf) plus the traits templates read.
/// Deny rules always beat allow rules.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessChecker {
    roles: Vec<Role>,
    traits: Traits,
}

impl AccessChecker {
    pub fn new(roles: Vec<Role>, traits: BTreeMap<String, Vec<String>>) -> Self {
        AccessChecker { roles, traits }
    }

    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    pub fn traits(&self) -> &Traits {
        &self.traits
    }

    pub fn role_names(&self) -> Vec<String> {
        self.roles.iter().map(|r| r.metadata.name.clone()).collect()
    }

    /// Allowed logins after template expansion minus denied ones; sorted and deduplicated.
    /// These become the principals of the SSH certificate.
    pub fn logins(&self) -> Vec<String> {
        self.allowed(|c| &c.logins)
    }

    pub fn kubernetes_groups(&self) -> Vec<String> {
        self.allowed(|c| &c.kubernetes_groups)
    }

    pub fn kubernetes_users(&self) -> Vec<String> {
        self.allowed(|c| &c.kubernetes_users)
    }

    pub fn db_users(&self) -> Vec<String> {
        self.allowed(|c| &c.db_users)
    }

    pub fn db_names(&self) -> Vec<String> {
        self.allowed(|c| &c.db_names)
    }

    pub fn aws_role_arns(&self) -> Vec<String> {
        self.allowed(|c| &c.aws_role_arns)
    }

    /// Decides an SSH login: a deny on the login or on the node's labels refuses outright;
    /// otherwise one role must both allow the login and match the node's labels.
    pub fn check_login_and_node(
        &self,
        login: &str,
        node_name: &str,
        node_labels: &BTreeMap<String, String>,
    ) -> Result<(), AccessDenied> {
        for role in &self.roles {
            if self
                .expand(&role.spec.deny.logins)
                .iter()
                .any(|l| l == login)
            {
                return Err(AccessDenied::new(format!(
                    "login \"{login}\" is denied by role \"{}\"",
                    role.metadata.name
                )));
            }
        }
        for role in &self.roles {
            if self.deny_matches(&role.spec.deny.node_labels, node_labels) {
                return Err(AccessDenied::new(format!(
                    "node \"{node_name}\" is denied by role \"{}\" (deny.node_labels {})",
                    role.metadata.name,
                    format_selector(&role.spec.deny.node_labels)
                )));
            }
        }
        if self.roles.is_empty() {
            return Err(AccessDenied::new(format!(
                "login \"{login}\" is not allowed: the user has no roles"
            )));
        }
        let (mut some_login, mut some_node) = (false, false);
        for role in &self.roles {
            let login_ok = self
                .expand(&role.spec.allow.logins)
                .iter()
                .any(|l| l == login);
            let node_ok = self.allow_matches(&role.spec.allow.node_labels, node_labels);
            if login_ok && node_ok {
                return Ok(());
            }
            some_login |= login_ok;
            some_node |= node_ok;
        }
        let roles = self.role_list();
        let labels = describe_labels(node_labels);
        Err(AccessDenied::new(if !some_login {
            format!("login \"{login}\" is not allowed by roles {roles}")
        } else if !some_node {
            format!("roles {roles} do not allow access to node \"{node_name}\" ({labels})")
        } else {
            // The login and the node are each allowed, but never by the same role.
            format!(
                "roles {roles} do not allow login \"{login}\" on node \"{node_name}\" ({labels})"
            )
        }))
    }

    /// Whether the node is listed for this user (`tsh ls`): allowed labels, no deny match.
    pub fn can_see_node(&self, labels: &BTreeMap<String, String>) -> bool {
        !self
            .roles
            .iter()
            .any(|r| self.deny_matches(&r.spec.deny.node_labels, labels))
            && self
                .roles
                .iter()
                .any(|r| self.allow_matches(&r.spec.allow.node_labels, labels))
    }

    /// Whether a leaf cluster is visible: unlabelled clusters are visible to everyone (as in
    /// Teleport), labelled ones only through `allow.cluster_labels`. A matching
    /// `deny.cluster_labels` hides either kind (`'*': '*'` matches unlabelled clusters too).
    pub fn can_see_cluster(&self, cluster_labels: &BTreeMap<String, String>) -> bool {
        self.check_cluster_access("", cluster_labels).is_ok()
    }

    /// `can_see_cluster` with the reason, for error messages and audit.
    pub fn check_cluster_access(
        &self,
        cluster_name: &str,
        cluster_labels: &BTreeMap<String, String>,
    ) -> Result<(), AccessDenied> {
        for role in &self.roles {
            if self.deny_matches(&role.spec.deny.cluster_labels, cluster_labels) {
                return Err(AccessDenied::new(format!(
                    "cluster \"{cluster_name}\" is denied by role \"{}\" (deny.cluster_labels {})",
                    role.metadata.name,
                    format_selector(&role.spec.deny.cluster_labels)
                )));
            }
        }
        if cluster_labels.is_empty()
            || self
                .roles
                .iter()
                .any(|r| self.allow_matches(&r.spec.allow.cluster_labels, cluster_labels))
        {
            return Ok(());
        }
        Err(AccessDenied::new(format!(
            "roles {} do not allow access to cluster \"{cluster_name}\" ({})",
            self.role_list(),
            describe_labels(cluster_labels)
        )))
    }

    /// Decides a permission of an admin call by the roles' resource rules: a matching deny
    /// rule refuses outright (deny wins), otherwise some role must allow it. The message
    /// follows the subject: `may not create trusted_cluster: no role allows it`.
    pub fn check_permission(&self, p: Permission) -> Result<(), AccessDenied> {
        let denied_by = self
            .roles
            .iter()
            .find(|r| r.spec.deny.rules.iter().any(|rule| rule.denies(p)));
        if let Some(role) = denied_by {
            return Err(AccessDenied::new(format!(
                "may not {p}: denied by role \"{}\"",
                role.metadata.name
            )));
        }
        if self
            .roles
            .iter()
            .any(|r| r.spec.allow.rules.iter().any(|rule| rule.grants(p)))
        {
            return Ok(());
        }
        Err(AccessDenied::new(format!("may not {p}: no role allows it")))
    }

    /// The strictest `max_session_ttl` of the roles that set one.
    pub fn max_session_ttl(&self) -> Option<Duration> {
        self.roles
            .iter()
            .filter_map(|r| r.spec.options.max_session_ttl)
            .min()
    }

    /// `requested` capped by `max_session_ttl`.
    pub fn adjust_session_ttl(&self, requested: Duration) -> Duration {
        self.max_session_ttl()
            .map_or(requested, |max| requested.min(max))
    }

    /// Port forwarding is on unless a role turns it off.
    pub fn port_forwarding(&self) -> bool {
        !self
            .roles
            .iter()
            .any(|r| r.spec.options.port_forwarding == Some(false))
    }

    /// Agent forwarding is off unless a role turns it on.
    pub fn forward_agent(&self) -> bool {
        self.roles
            .iter()
            .any(|r| r.spec.options.forward_agent == Some(true))
    }

    fn allowed(&self, field: impl Fn(&RoleConditions) -> &Vec<String>) -> Vec<String> {
        let denied: Vec<String> = self
            .roles
            .iter()
            .flat_map(|r| self.expand(field(&r.spec.deny)))
            .collect();
        let mut out: Vec<String> = self
            .roles
            .iter()
            .flat_map(|r| self.expand(field(&r.spec.allow)))
            .filter(|v| !denied.contains(v))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Template errors are skipped: roles are validated on creation, and an unexpandable
    /// value can grant nothing.
    fn expand(&self, values: &[String]) -> Vec<String> {
        values
            .iter()
            .filter_map(|v| expand_template(v, &self.traits).ok())
            .flatten()
            .collect()
    }

    /// A selector that cannot be evaluated grants nothing...
    fn allow_matches(&self, selector: &Labels, labels: &BTreeMap<String, String>) -> bool {
        match_labels(selector, labels, &self.traits).unwrap_or(false)
    }

    /// ...and, on the deny side, denies: failing closed is the only safe reading.
    fn deny_matches(&self, selector: &Labels, labels: &BTreeMap<String, String>) -> bool {
        match_labels(selector, labels, &self.traits).unwrap_or(true)
    }

    fn role_list(&self) -> String {
        format!("[{}]", self.role_names().join(", "))
    }
}

fn describe_labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        "no labels".to_string()
    } else {
        format!("labels {}", format_labels(labels))
    }
}

#[cfg(test)]
#[path = "rbac_tests.rs"]
mod tests;
