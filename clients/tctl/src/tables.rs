//! Text tables for each resource kind (`tctl get --format=text`, `tokens ls`, `users ls`, ...).

use portcullis_types::labels::format_selector;
use portcullis_types::{Kind, Resource, format_expiry, format_labels};
use serde_json::Value;
use time::OffsetDateTime;
use time::macros::format_description;

use crate::error::TctlError;
use crate::output::Table;

/// Decodes the JSON resources the auth service sent.
pub fn decode_all(values: &[Value]) -> Result<Vec<Resource>, TctlError> {
    values
        .iter()
        .map(|v| {
            Resource::from_json_value(v.clone())
                .map_err(|e| TctlError::Protocol(format!("cannot read a resource: {e}")))
        })
        .collect()
}

/// The table for resources of one kind; `now` is used for relative expiry times.
pub fn resource_table(kind: Kind, resources: &[Resource], now: OffsetDateTime) -> String {
    let table = match kind {
        Kind::Role => roles(resources),
        Kind::User => users(resources),
        Kind::Token => tokens(resources, now),
        Kind::Node => nodes(resources),
        Kind::TrustedCluster => trusted_clusters(resources),
        Kind::RemoteCluster => remote_clusters(resources),
        Kind::CertAuthority => cert_authorities(resources),
    };
    table.render()
}

fn roles(resources: &[Resource]) -> Table {
    let mut t = Table::new(&["Role", "Allowed to login as", "Node Labels"]);
    for r in resources {
        if let Resource::Role(role) = r {
            t.push(vec![
                role.metadata.name.clone(),
                role.spec.allow.logins.join(","),
                format_selector(&role.spec.allow.node_labels),
            ]);
        }
    }
    t
}

fn users(resources: &[Resource]) -> Table {
    users_table(resources, &std::collections::BTreeMap::new())
}

/// `tctl users ls`: `User  Roles  Locked Until`, the last column empty unless failed logins
/// locked the user.
pub fn users_table(resources: &[Resource], locks: &std::collections::BTreeMap<String, OffsetDateTime>) -> Table {
    let mut t = Table::new(&["User", "Roles", "Locked Until"]);
    let fmt = format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    for r in resources {
        if let Resource::User(u) = r {
            let locked = locks
                .get(&u.metadata.name)
                .map(|t| t.to_offset(time::UtcOffset::UTC).format(fmt).unwrap_or_else(|_| t.unix_timestamp().to_string()))
                .unwrap_or_default();
            t.push(vec![u.metadata.name.clone(), u.spec.roles.join(","), locked]);
        }
    }
    t
}

/// `tctl tokens ls`: `Token  Type  Labels  Expiry Time (UTC)`.
pub fn tokens(resources: &[Resource], now: OffsetDateTime) -> Table {
    let mut t = Table::new(&["Token", "Type", "Labels", "Expiry Time (UTC)"]);
    for r in resources {
        if let Resource::Token(tok) = r {
            t.push(vec![
                tok.token().to_string(),
                tok.type_names(),
                format_labels(&tok.metadata.labels),
                format_expiry(tok.metadata.expires, now),
            ]);
        }
    }
    t
}

/// `tctl nodes ls`: `Node Name  Address  Labels`.
pub fn nodes(resources: &[Resource]) -> Table {
    let mut t = Table::new(&["Node Name", "Address", "Labels"]);
    for r in resources {
        if let Resource::Node(n) = r {
            let addr = if n.spec.addr.is_empty() && n.spec.use_tunnel {
                "⟵ Tunnel".to_string()
            } else {
                n.spec.addr.clone()
            };
            t.push(vec![n.spec.hostname.clone(), addr, format_labels(&n.metadata.labels)]);
        }
    }
    t
}

fn trusted_clusters(resources: &[Resource]) -> Table {
    let mut t = Table::new(&["Name", "Enabled", "Token", "Proxy Address", "Reverse Tunnel Address", "Role Map"]);
    for r in resources {
        if let Resource::TrustedCluster(tc) = r {
            let role_map = tc
                .spec
                .role_map
                .iter()
                .map(|m| match m.local.as_slice() {
                    [one] => format!("{}->{one}", m.remote),
                    many => format!("{}->[{}]", m.remote, many.join(",")),
                })
                .collect::<Vec<_>>()
                .join(", ");
            t.push(vec![
                tc.metadata.name.clone(),
                tc.spec.enabled.to_string(),
                tc.spec.token.clone(),
                tc.spec.web_proxy_addr.clone(),
                tc.spec.tunnel_addr.clone(),
                role_map,
            ]);
        }
    }
    t
}

fn remote_clusters(resources: &[Resource]) -> Table {
    let mut t = Table::new(&["Name", "Status", "Cluster Type", "Labels", "Last Heartbeat"]);
    for r in resources {
        if let Resource::RemoteCluster(rc) = r {
            let heartbeat = rc
                .status
                .last_heartbeat
                .map(|h| {
                    let h = h.to_offset(time::UtcOffset::UTC);
                    h.format(format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC"))
                        .unwrap_or_else(|_| h.to_string())
                })
                .unwrap_or_else(|| "never".into());
            t.push(vec![
                rc.metadata.name.clone(),
                rc.status.connection.clone(),
                // Every remote cluster a root knows is one of its leaves.
                "leaf".into(),
                format_labels(&rc.metadata.labels),
                heartbeat,
            ]);
        }
    }
    t
}

fn cert_authorities(resources: &[Resource]) -> Table {
    let mut t = Table::new(&["Cluster Name", "CA Type", "Active", "Fingerprint"]);
    for r in resources {
        if let Resource::CertAuthority(ca) = r {
            let fingerprints = ca
                .spec
                .checking_keys
                .iter()
                .map(|k| key_fingerprint(&ca.spec.r#type, k))
                .collect::<Vec<_>>()
                .join(",");
            t.push(vec![
                ca.spec.cluster_name.clone(),
                ca.spec.r#type.clone(),
                ca.spec.active.to_string(),
                fingerprints,
            ]);
        }
    }
    t
}

/// SHA256 fingerprint of an SSH CA key, or the CA pin of a TLS CA; `?` when unreadable.
fn key_fingerprint(ca_type: &str, key: &str) -> String {
    let fp = if ca_type == "tls" {
        portcullis_pki::x509::ca_pin(key).ok()
    } else {
        portcullis_pki::ssh::parse_public_key(key).ok().map(|k| portcullis_pki::ssh::fingerprint(&k))
    };
    fp.unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_types::{Node, ProvisionToken, RemoteCluster, SystemRole, User};
    use time::macros::datetime;

    #[test]
    fn tokens_table_matches_teleport() {
        let now = datetime!(2022-04-28 19:14:12 UTC);
        let toks: Vec<Resource> = vec![
            ProvisionToken::new(
                "abcd123-insecure-do-not-use-this",
                vec![SystemRole::TrustedCluster],
                Some(datetime!(2022-04-28 19:19:00 UTC)),
            )
            .into(),
            ProvisionToken::new("static", vec![SystemRole::Node, SystemRole::Proxy], None).into(),
        ];
        let out = resource_table(Kind::Token, &toks, now);
        let want = "\
Token                            Type            Labels Expiry Time (UTC)
-------------------------------- --------------- ------ ---------------------------
abcd123-insecure-do-not-use-this trusted_cluster        28 Apr 22 19:19 UTC (4m48s)
static                           node,proxy             never
";
        assert_eq!(out, want);
    }

    #[test]
    fn users_nodes_and_remote_clusters() {
        let mut traits = std::collections::BTreeMap::new();
        traits.insert("logins".to_string(), vec!["root".to_string()]);
        let users: Vec<Resource> = vec![User::new("alice", vec!["access".into(), "editor".into()], traits).into()];
        let out = resource_table(Kind::User, &users, OffsetDateTime::now_utc());
        assert!(out.lines().nth(2).unwrap().starts_with("alice access,editor"), "{out}");

        let mut labels = std::collections::BTreeMap::new();
        labels.insert("env".to_string(), "prod".to_string());
        let nodes: Vec<Resource> = vec![Node::new("uuid-1", "web-1", "10.0.0.1:3022", labels).into()];
        let out = resource_table(Kind::Node, &nodes, OffsetDateTime::now_utc());
        assert_eq!(out.lines().next().unwrap(), "Node Name Address       Labels");
        assert_eq!(out.lines().nth(2).unwrap(), "web-1     10.0.0.1:3022 env=prod");

        let mut rc = RemoteCluster::new("leaf.example.com");
        rc.status.connection = "online".into();
        rc.status.last_heartbeat = Some(datetime!(2022-04-29 19:45:35 UTC));
        rc.metadata.labels.insert("env".into(), "demo".into());
        let out = resource_table(Kind::RemoteCluster, &[rc.into()], OffsetDateTime::now_utc());
        assert_eq!(out.lines().next().unwrap(), "Name             Status Cluster Type Labels   Last Heartbeat");
        assert_eq!(
            out.lines().nth(2).unwrap(),
            "leaf.example.com online leaf         env=demo 2022-04-29 19:45:35 UTC"
        );
    }

    #[test]
    fn users_table_shows_locks() {
        let users: Vec<Resource> = vec![
            User::new("alice", vec!["access".into()], Default::default()).into(),
            User::new("bob", vec!["editor".into()], Default::default()).into(),
        ];
        let mut locks = std::collections::BTreeMap::new();
        locks.insert("alice".to_string(), datetime!(2026-12-01 15:20:00 UTC));
        // A locked name that is no user is not listed.
        locks.insert("nobody".to_string(), datetime!(2026-12-01 15:20:00 UTC));
        let out = users_table(&users, &locks).render();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0].trim_end(), "User  Roles  Locked Until");
        assert_eq!(lines[2], "alice access 2026-12-01 15:20:00 UTC");
        assert_eq!(lines[3].trim_end(), "bob   editor");
        assert_eq!(lines.len(), 4, "{out}");
    }

    #[test]
    fn decode_reports_bad_resources() {
        let e = decode_all(&[serde_json::json!({"kind": "bogus"})]).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }
}
