//! `trusted_cluster` (created on the leaf): the root to trust, the join token and the role map.

use serde::{Deserialize, Serialize};

use crate::addr::HostPort;
use crate::error::TypesError;
use crate::resource::{Kind, Metadata, validate_envelope};
use crate::role_map::{RoleMapping, validate_role_map};
use crate::serde_util::default_true;

pub const VERSIONS: &[&str] = &["v1", "v2"];

/// Default reverse-tunnel port of a root proxy.
pub const DEFAULT_TUNNEL_PORT: u16 = 3024;
/// Default HTTPS port of a root proxy.
pub const DEFAULT_WEB_PORT: u16 = 3080;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrustedCluster {
    pub kind: String,
    pub version: String,
    /// `name` is the root cluster's name.
    pub metadata: Metadata,
    pub spec: TrustedClusterSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrustedClusterSpec {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default)]
    pub token: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tunnel_addr: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub web_proxy_addr: String,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::serde_util::null_default"
    )]
    pub role_map: Vec<RoleMapping>,
    /// v1 legacy: local roles given to every remote user (same as `role_map: [{remote: "*"}]`).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::serde_util::string_or_vec"
    )]
    pub roles: Vec<String>,
}

impl Default for TrustedClusterSpec {
    fn default() -> Self {
        TrustedClusterSpec {
            enabled: true,
            token: String::new(),
            tunnel_addr: String::new(),
            web_proxy_addr: String::new(),
            role_map: Vec::new(),
            roles: Vec::new(),
        }
    }
}

impl TrustedCluster {
    pub fn new(
        root_cluster: impl Into<String>,
        token: impl Into<String>,
        role_map: Vec<RoleMapping>,
    ) -> Self {
        TrustedCluster {
            kind: Kind::TrustedCluster.as_str().into(),
            version: Kind::TrustedCluster.default_version().into(),
            metadata: Metadata::new(root_cluster),
            spec: TrustedClusterSpec {
                token: token.into(),
                role_map,
                ..Default::default()
            },
        }
    }

    /// Effective reverse-tunnel address: the field (port 3024 added when missing), or
    /// `<name>:3024`.
    pub fn tunnel_addr(&self) -> String {
        effective_addr(
            &self.spec.tunnel_addr,
            &self.metadata.name,
            DEFAULT_TUNNEL_PORT,
        )
    }

    /// Effective web proxy address: the field (port 3080 added when missing), or `<name>:3080`.
    pub fn web_proxy_addr(&self) -> String {
        effective_addr(
            &self.spec.web_proxy_addr,
            &self.metadata.name,
            DEFAULT_WEB_PORT,
        )
    }

    /// The mapping to apply: `role_map`, or for legacy v1 `roles` a `*` rule granting them.
    pub fn combined_role_map(&self) -> Vec<RoleMapping> {
        if self.spec.roles.is_empty() {
            self.spec.role_map.clone()
        } else {
            vec![RoleMapping::new("*", self.spec.roles.clone())]
        }
    }

    pub fn validate(&self) -> Result<(), TypesError> {
        validate_envelope(
            Kind::TrustedCluster,
            &self.kind,
            &self.version,
            &self.metadata,
        )?;
        let invalid = |m: String| TypesError::invalid("trusted_cluster", &self.metadata.name, m);
        if !self.spec.roles.is_empty() && !self.spec.role_map.is_empty() {
            return Err(invalid(
                "set either spec.role_map or the legacy spec.roles, not both".into(),
            ));
        }
        if self
            .spec
            .roles
            .iter()
            .any(|r| r.trim().is_empty() || r.contains('*'))
        {
            return Err(invalid(
                "spec.roles entries must be concrete local role names".into(),
            ));
        }
        validate_role_map(&self.spec.role_map).map_err(|e| invalid(e.to_string()))?;
        // The name is the root cluster's: it scopes the root's host CA on this side.
        validate_cluster_name(&self.metadata.name)?;
        for (field, addr) in [
            ("tunnel_addr", &self.spec.tunnel_addr),
            ("web_proxy_addr", &self.spec.web_proxy_addr),
        ] {
            if addr.chars().any(char::is_whitespace) {
                return Err(invalid(format!(
                    "spec.{field} \"{addr}\" contains whitespace"
                )));
            }
        }
        Ok(())
    }
}

/// Longest DNS name, in characters.
const MAX_CLUSTER_NAME: usize = 253;
/// Longest DNS label.
const MAX_LABEL: usize = 63;

/// Checks that `name` can name a cluster: a DNS name of lowercase letters, digits, '-' and
/// '.', labels of 1 to 63 characters not starting or ending with '-', at most 253 in all.
/// Cluster names end up in known_hosts patterns (`*.<cluster>`), storage keys and file
/// names, so anything else ('/', '..', '*', spaces) could widen a host CA's scope or
/// escape a path. The error names the rule that was broken.
pub fn validate_cluster_name(name: &str) -> Result<(), TypesError> {
    let invalid = |why: &str| TypesError::InvalidClusterName { name: name.to_string(), reason: why.to_string() };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() > MAX_CLUSTER_NAME {
        return Err(invalid("it is longer than 253 characters"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.')) {
        let shown = if c.is_control() || c.is_whitespace() { format!("{:?}", c) } else { format!("'{c}'") };
        return Err(invalid(&format!(
            "{shown} is not allowed (only lowercase letters, digits, '-' and '.')"
        )));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(invalid("it has an empty label (leading, trailing or doubled '.')"));
        }
        if label.len() > MAX_LABEL {
            return Err(invalid("a label is longer than 63 characters"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("a label starts or ends with '-'"));
        }
    }
    Ok(())
}

/// `host:port` from a configured address (scheme stripped, default port added) or the name.
fn effective_addr(configured: &str, name: &str, port: u16) -> String {
    let addr = configured.trim();
    let addr = addr
        .strip_prefix("https://")
        .or_else(|| addr.strip_prefix("http://"))
        .unwrap_or(addr)
        .trim_end_matches('/');
    if addr.is_empty() {
        return format!("{name}:{port}");
    }
    match HostPort::parse_with_default(addr, port) {
        Ok(a) => a.to_string(),
        // Not an address at all: passed on as written, so the dial error shows it.
        Err(_) => addr.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_derive_from_name() {
        let tc = TrustedCluster::new("main", "join-token", vec![]);
        assert_eq!(tc.tunnel_addr(), "main:3024");
        assert_eq!(tc.web_proxy_addr(), "main:3080");
    }

    #[test]
    fn configured_addresses_win() {
        let mut tc = TrustedCluster::new("rootcluster.example.com", "t", vec![]);
        tc.spec.tunnel_addr = "rootcluster.example.com:443".into();
        tc.spec.web_proxy_addr = "https://proxy.example.com/".into();
        assert_eq!(tc.tunnel_addr(), "rootcluster.example.com:443");
        assert_eq!(tc.web_proxy_addr(), "proxy.example.com:3080");
        tc.spec.tunnel_addr = "[::1]:5000".into();
        assert_eq!(tc.tunnel_addr(), "[::1]:5000");
        tc.spec.tunnel_addr = "::1".into();
        assert_eq!(tc.tunnel_addr(), "[::1]:3024");
    }

    #[test]
    fn legacy_roles_become_wildcard_rule() {
        let mut tc = TrustedCluster::new("main", "t", vec![]);
        tc.version = "v1".into();
        tc.spec.roles = vec!["admin".into()];
        tc.validate().unwrap();
        assert_eq!(
            tc.combined_role_map(),
            [RoleMapping::new("*", vec!["admin".into()])]
        );
        tc.spec.role_map = vec![RoleMapping::new("a", vec!["b".into()])];
        assert_eq!(
            tc.validate().unwrap_err().to_string(),
            "trusted_cluster \"main\": set either spec.role_map or the legacy spec.roles, not both"
        );
    }

    #[test]
    fn cluster_names_must_be_dns_names() {
        for good in ["leaf", "leaf.example.com", "a-b.c1", "x", &"a".repeat(63)] {
            validate_cluster_name(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        let long = ["a".repeat(60), "b".repeat(60), "c".repeat(60), "d".repeat(60), "e".repeat(10)].join(".");
        let cases: &[(&str, &str)] = &[
            ("evil/../x", "'/' is not allowed"),
            ("evil..x", "empty label"),
            ("..", "empty label"),
            ("*", "'*' is not allowed"),
            ("*.example.com", "'*' is not allowed"),
            ("has space", "' ' is not allowed"),
            ("Leaf", "'L' is not allowed"),
            ("leaf.", "empty label"),
            ("-leaf", "starts or ends with '-'"),
            ("", "it is empty"),
            (&long, "longer than 253"),
        ];
        for (bad, why) in cases {
            let err = validate_cluster_name(bad).expect_err(bad).to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(err.contains(&format!("cluster name {bad:?}")), "the error names the name: {err}");
        }
        let label64 = "a".repeat(64);
        assert!(validate_cluster_name(&label64).unwrap_err().to_string().contains("label is longer than 63"));
    }

    #[test]
    fn trusted_cluster_name_is_checked() {
        let tc = TrustedCluster::new("root.example.com", "t", vec![RoleMapping::new("a", vec!["b".into()])]);
        tc.validate().unwrap();
        let tc = TrustedCluster::new("Root*", "t", vec![RoleMapping::new("a", vec!["b".into()])]);
        let err = tc.validate().unwrap_err().to_string();
        assert!(err.contains("invalid cluster name \"Root*\""), "{err}");
    }

    #[test]
    fn role_map_errors_name_the_cluster() {
        let tc = TrustedCluster::new("main", "t", vec![RoleMapping::new("admin", vec![])]);
        assert_eq!(
            tc.validate().unwrap_err().to_string(),
            "trusted_cluster \"main\": invalid role_map: rule 1 (remote \"admin\"): local must list at least one role"
        );
    }
}
