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
        let now = portcullis_pki::unix_now();
        let signer = ssh::fingerprint(&ssh::PublicKey::from(cert.signature_key().clone()));
        let own = [self.user_ca.public_key().clone()];
        let (info, checker) = match self.trusted_root_for(&signer).map_err(|e| e.to_string())? {
            // A certificate from a root cluster we trust: its roles are mapped onto ours.
            Some((root, cas)) => {
                if !cas.active {
                    return Err(format!(
                        "trust with cluster {root:?} is disabled: its certificates are not accepted here"
                    ));
                }
                let keys: Vec<ssh::PublicKey> = cas.ssh_user.iter().filter_map(|k| ssh::parse_public_key(k).ok()).collect();
                let info = ssh::verify_user_cert(cert, &keys, now).map_err(|e| e.to_string())?;
                let checker = self.remote_checker(&root, &info.roles, info.traits.clone()).map_err(|e| e.to_string())?;
                (info, checker)
            }
            None => {
                let info = ssh::verify_user_cert(cert, &own, now).map_err(|e| e.to_string())?;
                let roles = self.roles_named(&info.roles).map_err(|e| e.to_string())?;
                let checker = AccessChecker::new(roles, info.traits.clone());
                (info, checker)
            }
        };
        let node = node.ok_or_else(|| format!("node {node_name:?} is not found in cluster {:?}", self.cluster_name))?;
        checker
            .check_login_and_node(login, &node.spec.hostname, &node.metadata.labels)
            .map_err(|e| {
                format!(
                    "access denied to {} connecting to {}: {e} (roles [{}])",
                    info.username,
                    node.spec.hostname,
                    checker.role_names().join(", ")
                )
            })?;
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

    /// The trusted root whose user CA has this fingerprint, if any.
    fn trusted_root_for(&self, fingerprint: &str) -> Result<Option<(String, crate::trust::ClusterCas)>, AuthError> {
        for (root, cas) in self.all_trusted_cas()? {
            let hit = cas
                .ssh_user
                .iter()
                .filter_map(|k| ssh::parse_public_key(k).ok())
                .any(|k| ssh::fingerprint(&k) == fingerprint);
            if hit {
                return Ok(Some((root, cas)));
            }
        }
        Ok(None)
    }

    /// The access a user of root cluster `root` with `roles` gets here, through the
    /// trusted_cluster's role map. No mapped role means no access, and says why.
    pub fn remote_checker(
        &self,
        root: &str,
        roles: &[String],
        traits: std::collections::BTreeMap<String, Vec<String>>,
    ) -> Result<AccessChecker, AuthError> {
        let tc = self
            .get_trusted_cluster(root)?
            .ok_or_else(|| AuthError::denied(format!("cluster {root:?} is not trusted here")))?;
        let mapped = portcullis_types::map_roles(&tc.combined_role_map(), roles)?;
        if mapped.is_empty() {
            return Err(AuthError::denied(format!(
                "access denied: roles [{}] of cluster {root:?} map to no role of cluster {:?} (check the trusted_cluster role_map)",
                roles.join(", "),
                self.cluster_name
            )));
        }
        Ok(AccessChecker::new(self.roles_named(&mapped)?, traits))
    }

    /// Nodes the holder of a verified user TLS identity may see.
    pub fn nodes_visible_to(&self, user: &TlsIdentity) -> Result<Vec<Node>, AuthError> {
        let checker = self.user_checker(user)?;
        Ok(self.list_nodes()?.into_iter().filter(|n| checker.can_see_node(&n.metadata.labels)).collect())
    }
}

impl AuthState {
    /// Access of the holder of a verified TLS identity: ours directly, a trusted root's
    /// through the role map.
    pub fn user_checker(&self, user: &TlsIdentity) -> Result<AccessChecker, AuthError> {
        if user.cluster == self.cluster_name {
            Ok(AccessChecker::new(self.roles_named(&user.roles)?, user.traits.clone()))
        } else {
            match self.trusted_cas(&user.cluster)? {
                Some(cas) if cas.active => self.remote_checker(&user.cluster, &user.roles, user.traits.clone()),
                Some(_) => Err(AuthError::denied(format!("trust with cluster {:?} is disabled", user.cluster))),
                None => Err(AuthError::denied(format!("cluster {:?} is not trusted here", user.cluster))),
            }
        }
    }

    /// Access of the holder of one of our own SSH user certificates (checked here).
    pub fn ssh_user_checker(&self, cert_text: &str) -> Result<AccessChecker, AuthError> {
        let cert = ssh::parse_certificate(cert_text).map_err(|e| AuthError::bad(format!("unreadable SSH certificate: {e}")))?;
        let info = ssh::verify_user_cert(&cert, &[self.user_ca.public_key().clone()], portcullis_pki::unix_now())
            .map_err(|e| AuthError::Unauthenticated(e.to_string()))?;
        Ok(AccessChecker::new(self.roles_named(&info.roles)?, info.traits))
    }

    /// Verifies a user's TLS certificate (DER) against the CA of the cluster it claims to
    /// come from, so no cluster can vouch for another's users.
    pub fn verify_user_tls(&self, der: &[u8]) -> Result<TlsIdentity, AuthError> {
        let claimed = portcullis_pki::x509::parse_identity(der)?;
        let cas = if claimed.cluster == self.cluster_name {
            vec![self.tls_ca.cert_pem().to_string()]
        } else {
            match self.trusted_cas(&claimed.cluster)? {
                Some(root) if root.active => root.tls,
                Some(_) => return Err(AuthError::denied(format!("trust with cluster {:?} is disabled", claimed.cluster))),
                None => return Err(AuthError::Unauthenticated(format!("cluster {:?} is not trusted here", claimed.cluster))),
            }
        };
        let id = portcullis_pki::x509::verify_client_cert(der, &cas)
            .map_err(|e| AuthError::Unauthenticated(format!("user certificate rejected: {e}; run 'tsh login'")))?;
        if !id.has_system_role(portcullis_pki::x509::system_role::USER) {
            return Err(AuthError::denied("not a user certificate"));
        }
        Ok(id)
    }
}
