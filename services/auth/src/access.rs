//! Access decisions for SSH logins and node listings, with refusals audited.

use portcullis_pki::ssh;
use portcullis_pki::x509::TlsIdentity;
use portcullis_proto::auth::{AuthorizeSshRequest, AuthorizeSshResponse};
use portcullis_types::{AccessChecker, Node};
use serde_json::json;

use crate::error::AuthError;
use crate::state::AuthState;

/// Who is asking for an SSH decision.
pub enum Asker<'a> {
    /// A node deciding about a login to itself.
    Node { host_id: &'a str },
    /// A proxy explaining a refusal to a user.
    Proxy,
}

impl AuthState {
    /// Decides whether the certificate may log in as `login` on the node. Refusals carry
    /// the reason and are written to the audit log.
    pub fn authorize_ssh(&self, req: &AuthorizeSshRequest, asker: Asker<'_>) -> Result<AuthorizeSshResponse, AuthError> {
        let mut out = AuthorizeSshResponse { allowed: false, ..Default::default() };
        let cert = match ssh::parse_certificate(&req.ssh_cert) {
            Ok(c) => c,
            Err(e) => return Err(AuthError::bad(format!("unreadable SSH certificate: {e}"))),
        };
        let node = match asker {
            Asker::Node { host_id } => self.get_node(host_id)?,
            Asker::Proxy => self.resolve_node(&req.node, 0).ok(),
        };
        let node_name = node.as_ref().map(|n| n.spec.hostname.clone()).unwrap_or_else(|| req.node.clone());
        out.node_id = node.as_ref().map(|n| n.metadata.name.clone()).unwrap_or_default();
        out.node_name = node_name.clone();

        let decision = self.decide(&cert, &req.login, node.as_ref(), &node_name);
        let (username, roles) = match ssh::user_cert_info(&cert) {
            Ok(i) => (i.username, i.roles),
            Err(_) => (String::new(), vec![]),
        };
        out.username = username.clone();
        match decision {
            Ok((checker, port_forwarding)) => {
                out.allowed = true;
                out.roles = checker.role_names();
                out.port_forwarding = port_forwarding;
            }
            Err(reason) => {
                out.reason = reason.clone();
                out.roles = roles.clone();
                self.audit.emit(
                    "auth",
                    json!({
                        "success": false,
                        "user": username,
                        "login": req.login,
                        "node": node_name,
                        "node_id": out.node_id,
                        "roles": roles,
                        "error": reason,
                        "source": req.source,
                        "remote_addr": req.remote_addr,
                    }),
                );
            }
        }
        Ok(out)
    }

    fn decide(
        &self,
        cert: &ssh::Certificate,
        login: &str,
        node: Option<&Node>,
        node_name: &str,
    ) -> Result<(AccessChecker, bool), String> {
        let trusted = [self.user_ca.public_key().clone()];
        let info = ssh::verify_user_cert(cert, &trusted, portcullis_pki::unix_now()).map_err(|e| e.to_string())?;
        let node = node.ok_or_else(|| format!("node {node_name:?} is not found in cluster {:?}", self.cluster_name))?;
        let roles = self.roles_named(&info.roles).map_err(|e| e.to_string())?;
        let checker = AccessChecker::new(roles, info.traits.clone());
        checker
            .check_login_and_node(login, &node.spec.hostname, &node.metadata.labels)
            .map_err(|e| format!("access denied to {} connecting to {}: {e}", info.username, node.spec.hostname))?;
        if !info.principals.iter().any(|p| p == login) {
            return Err(format!(
                "access denied to {} connecting to {}: login {login:?} is not in the certificate (it allows {}); run 'tsh login' again",
                info.username,
                node.spec.hostname,
                info.principals.join(", ")
            ));
        }
        let pf = info.permit_port_forwarding && checker.port_forwarding();
        Ok((checker, pf))
    }

    /// Nodes the holder of a verified user TLS identity may see.
    pub fn nodes_visible_to(&self, user: &TlsIdentity) -> Result<Vec<Node>, AuthError> {
        let roles = self.roles_named(&user.roles)?;
        let checker = AccessChecker::new(roles, user.traits.clone());
        Ok(self.list_nodes()?.into_iter().filter(|n| checker.can_see_node(&n.metadata.labels)).collect())
    }
}
