//! Who may write which audit events through `EmitAuditEvent`, and the sender fields auth stamps on them.

use portcullis_pki::x509::{SystemRole, TlsIdentity};
use serde_json::{Map, Value, json};

use crate::error::AuthError;

/// What a node reports of the SSH sessions it serves (services/node/src/server.rs).
pub const NODE_EVENTS: &[&str] = &["auth", "session.start", "exec", "session.end"];
/// What a tunnel agent reports of the dials a root asks for (services/tunnel-agent).
pub const AGENT_EVENTS: &[&str] = &["tunnel.dial"];
/// What a proxy reports itself: user dials it refused (services/proxy/src/route.rs); its
/// other events are written by auth through the calls it makes (login, authorize).
pub const PROXY_EVENTS: &[&str] = &["tunnel.dial"];

/// Fields that say who sent an event: set by auth from the caller's certificate, so a
/// sender can neither forge nor hide them.
pub const SENDER_FIELDS: &[&str] = &["server_id", "sender_role"];

/// The event types `id` may emit: the union over its system roles.
pub fn allowed_events(id: &TlsIdentity) -> Vec<&'static str> {
    let mut out = Vec::new();
    for (role, events) in [(SystemRole::Node, NODE_EVENTS), (SystemRole::Agent, AGENT_EVENTS), (SystemRole::Proxy, PROXY_EVENTS)] {
        if id.has_system_role(role) {
            out.extend_from_slice(events);
        }
    }
    out
}

/// Checks that `id` may emit `event` and stamps the sender on `fields`, replacing any
/// sender fields it put there itself. A foreign or unknown type is refused, naming it.
pub fn check_and_stamp(id: &TlsIdentity, event: &str, fields: &mut Map<String, Value>) -> Result<(), AuthError> {
    let allowed = allowed_events(id);
    if !allowed.contains(&event) {
        let may = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
        return Err(AuthError::denied(format!(
            "{} ({}) may not emit audit events of type {event:?} (it may emit: {may})",
            id.name,
            id.system_roles.join(",")
        )));
    }
    fields.insert("server_id".into(), json!(id.name));
    fields.insert("sender_role".into(), json!(id.system_roles.join(",")));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str, role: SystemRole) -> TlsIdentity {
        TlsIdentity { name: name.into(), system_roles: vec![role.into()], cluster: "c".into(), ..Default::default() }
    }

    #[test]
    fn nodes_emit_only_session_events() {
        let node = id("n1", SystemRole::Node);
        let mut fields = Map::new();
        fields.insert("server_id".into(), json!("someone-else"));
        fields.insert("sender_role".into(), json!("Admin"));
        check_and_stamp(&node, "session.start", &mut fields).unwrap();
        assert_eq!(fields["server_id"], "n1", "auth overwrites the sender's claim");
        assert_eq!(fields["sender_role"], SystemRole::Node.as_str());
        let err = check_and_stamp(&node, "user.login", &mut Map::new()).unwrap_err();
        assert!(matches!(err, AuthError::AccessDenied(_)));
        assert!(err.to_string().contains("may not emit audit events of type \"user.login\""), "{err}");
        assert!(check_and_stamp(&node, "tunnel.dial", &mut Map::new()).is_err());
    }

    #[test]
    fn agents_and_proxies_emit_only_dials() {
        let agent = id("agent-1", SystemRole::Agent);
        check_and_stamp(&agent, "tunnel.dial", &mut Map::new()).unwrap();
        for ev in ["session.start", "user.login", "trusted_cluster.create", ""] {
            assert!(check_and_stamp(&agent, ev, &mut Map::new()).is_err(), "{ev}");
        }
        let proxy = id("p1", SystemRole::Proxy);
        check_and_stamp(&proxy, "tunnel.dial", &mut Map::new()).unwrap();
        let err = check_and_stamp(&proxy, "user.login", &mut Map::new()).unwrap_err().to_string();
        assert!(err.contains("\"user.login\"") && err.contains("it may emit: tunnel.dial"), "{err}");
        let nobody = id("u1", SystemRole::User);
        let err = check_and_stamp(&nobody, "exec", &mut Map::new()).unwrap_err().to_string();
        assert!(err.contains("it may emit: none"), "{err}");
    }
}
