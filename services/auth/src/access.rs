//! Access decisions for SSH logins and node listings, with refusals audited. The rules live
//! in `portcullis_access` (shared with the proxies', nodes' and agents' caches); this module
//! builds the snapshot they need from the backend and audits refusals.

use std::collections::BTreeMap;

use portcullis_access::{AccessError, AccessSnapshot, TrustedRoot};
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

impl From<AccessError> for AuthError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::BadRequest(m) => AuthError::BadRequest(m),
            AccessError::Unauthenticated(m) => AuthError::Unauthenticated(m),
            AccessError::Denied(m) => AuthError::AccessDenied(m),
            AccessError::NotFound(m) => AuthError::NotFound(m),
        }
    }
}

/// Which parts of the cluster's state a snapshot should hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Everything a proxy or agent gets (`nodes` included when `nodes` is true).
    All { nodes: bool },
    /// One decision about one user: that user's roles and lock only, no nodes.
    User(&'a str),
    /// [`Scope::User`] plus the live nodes (listing what the user may see).
    UserAndNodes(&'a str),
    /// Only the CAs (own and trusted roots'): enough to verify a certificate.
    Cas,
}

impl AuthState {
    /// The cluster's access state as a snapshot: public material only (CA public halves,
    /// roles, users' role names, locks, trusted roots' public CAs and role maps).
    pub fn access_snapshot(&self, scope: Scope<'_>) -> Result<AccessSnapshot, AuthError> {
        let revision = self.backend.revision()?;
        let cas = self.own_cas()?;
        let mut snap = AccessSnapshot {
            cluster_name: self.cluster_name.clone(),
            revision,
            user_cas: cas.ssh_user_ca,
            host_cas: cas.ssh_host_ca,
            tls_cas: cas.tls_ca_pem,
            ..Default::default()
        };
        if scope != Scope::Cas {
            snap.roles = self.list_roles()?;
        }
        match scope {
            Scope::Cas => {}
            Scope::All { nodes } => {
                snap.users = self.list_users()?.into_iter().map(|u| (u.metadata.name, u.spec.roles)).collect();
                snap.locks = self.admin_locks()?;
                snap.remote_clusters = self.list_remote_clusters()?;
                if nodes {
                    snap.nodes = self.list_nodes()?;
                }
            }
            Scope::User(name) | Scope::UserAndNodes(name) => {
                if let Some(u) = self.get_user(name)? {
                    snap.users.insert(u.metadata.name, u.spec.roles);
                }
                snap.locks = self.admin_lock(name)?.into_iter().collect();
                if matches!(scope, Scope::UserAndNodes(_)) {
                    snap.nodes = self.list_nodes()?;
                }
            }
        }
        snap.trusted_roots = self.trusted_roots()?;
        Ok(snap)
    }

    /// Roots this cluster trusts, with their public CAs and the trusted_cluster's role map.
    fn trusted_roots(&self) -> Result<Vec<TrustedRoot>, AuthError> {
        let mut out = Vec::new();
        for (name, cas) in self.all_trusted_cas()? {
            // CAs without a trusted_cluster resource map no role: such a root's users get nothing.
            let role_map = self.get_trusted_cluster(&name)?.map(|tc| tc.combined_role_map()).unwrap_or_default();
            out.push(TrustedRoot {
                name,
                active: cas.active,
                ssh_user_cas: cas.ssh_user,
                ssh_host_cas: cas.ssh_host,
                tls_cas: cas.tls,
                role_map,
            });
        }
        Ok(out)
    }

    /// Decides whether the certificate may log in as `login` on the node. Refusals carry
    /// the reason and are written to the audit log.
    pub fn authorize_ssh(&self, req: &AuthorizeSshRequest, asker: Asker<'_>) -> Result<AuthorizeSshResponse, AuthError> {
        let cert = ssh::parse_certificate(&req.ssh_cert)
            .map_err(|e| AuthError::bad(format!("unreadable SSH certificate: {e}")))?;
        // The name is only used to fetch that user's roles and lock; the decision verifies it.
        let claimed = ssh::user_cert_info(&cert).map(|i| i.username).unwrap_or_default();
        let node = match asker {
            Asker::Node { host_id } => self.get_node(host_id)?,
            Asker::Proxy => self.resolve_node(&req.node, 0).ok(),
        };
        let snap = self.access_snapshot(Scope::User(&claimed))?;
        let out = portcullis_access::authorize_ssh(&snap, req, node.as_ref())?;
        if !out.allowed {
            self.audit.emit(
                "auth",
                json!({
                    "success": false,
                    "user": out.username,
                    "login": req.login,
                    "node": out.node_name,
                    "node_id": out.node_id,
                    "roles": out.roles,
                    "error": out.reason,
                    "source": req.source,
                    "remote_addr": req.remote_addr,
                }),
            );
        }
        Ok(out)
    }

    /// The access a user of root cluster `root` with `roles` gets here, through the
    /// trusted_cluster's role map. No mapped role means no access, and says why.
    pub fn remote_checker(
        &self,
        root: &str,
        roles: &[String],
        traits: BTreeMap<String, Vec<String>>,
    ) -> Result<AccessChecker, AuthError> {
        let snap = self.access_snapshot(Scope::User(""))?;
        Ok(portcullis_access::remote_checker(&snap, root, roles, traits)?)
    }

    /// Nodes the holder of a verified user TLS identity may see.
    pub fn nodes_visible_to(&self, user: &TlsIdentity) -> Result<Vec<Node>, AuthError> {
        let snap = self.access_snapshot(Scope::UserAndNodes(&user.name))?;
        Ok(portcullis_access::nodes_visible_to(&snap, user)?)
    }

    /// Access of the holder of a verified TLS identity: ours directly (the roles the user
    /// still holds; none when locked or deleted), a trusted root's through the role map.
    pub fn user_checker(&self, user: &TlsIdentity) -> Result<AccessChecker, AuthError> {
        let snap = self.access_snapshot(Scope::User(&user.name))?;
        Ok(portcullis_access::user_checker(&snap, user)?)
    }

    /// Access of the holder of one of our own SSH user certificates (checked here).
    pub fn ssh_user_checker(&self, cert_text: &str) -> Result<AccessChecker, AuthError> {
        let cert = ssh::parse_certificate(cert_text).map_err(|e| AuthError::bad(format!("unreadable SSH certificate: {e}")))?;
        let claimed = ssh::user_cert_info(&cert).map(|i| i.username).unwrap_or_default();
        let snap = self.access_snapshot(Scope::User(&claimed))?;
        Ok(portcullis_access::ssh_user_checker(&snap, cert_text)?)
    }

    /// Verifies a user's TLS certificate (DER) against the CA of the cluster it claims to
    /// come from, so no cluster can vouch for another's users.
    pub fn verify_user_tls(&self, der: &[u8]) -> Result<TlsIdentity, AuthError> {
        let snap = self.access_snapshot(Scope::Cas)?;
        Ok(portcullis_access::verify_user_tls(&snap, der)?)
    }
}
