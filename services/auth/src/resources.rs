//! Generic resource management behind `tctl create/get/rm`.

use portcullis_pki::ssh;
use portcullis_types::{CertAuthority, Kind, Resource};
use serde_json::Value;

use crate::error::AuthError;
use crate::state::{AuthState, create_json};

impl AuthState {
    /// Creates or replaces a resource given as JSON; returns (kind, name, created).
    pub fn upsert_resource(&self, json: &str, create_only: bool) -> Result<(Kind, String, bool), AuthError> {
        let value: Value = serde_json::from_str(json).map_err(|e| AuthError::bad(format!("resource is not valid JSON: {e}")))?;
        let res = Resource::from_json_value(value)?;
        let kind = res.kind();
        let name = res.name().to_string();
        let taken = || AuthError::AlreadyExists(format!("{} {name:?} already exists; use -f to overwrite", kind.as_str()));
        if create_only {
            // Created only if absent, in the backend itself: of two `tctl create` of one name
            // through different auth replicas, exactly one succeeds.
            let b = self.backend.as_ref();
            let created = match &res {
                Resource::Role(r) => create_json(b, &crate::users::role_key(r.name()), r)?,
                Resource::User(u) => {
                    self.check_user_roles(u)?;
                    create_json(b, &crate::users::user_key(u.name()), u)?
                }
                Resource::Token(t) => {
                    if self.static_tokens.iter().any(|s| s.value.expose() == t.token()) {
                        return Err(taken());
                    }
                    create_json(b, &crate::tokens::token_key(t.token()), t)?
                }
                Resource::Node(n) => create_json(b, &format!("nodes/{}", n.metadata.name), n)?,
                // Not created by hand: handled below (an update, or a refusal).
                Resource::CertAuthority(_) | Resource::RemoteCluster(_) | Resource::TrustedCluster(_) => {
                    !self.resource_exists(kind, &name)?
                }
            };
            if !created {
                return Err(taken());
            }
            if matches!(res, Resource::Role(_) | Resource::User(_) | Resource::Token(_) | Resource::Node(_)) {
                self.backend.flush()?;
                return Ok((kind, name, true));
            }
        }
        let exists = self.resource_exists(kind, &name)?;
        match res {
            Resource::Role(r) => self.put_role(&r)?,
            Resource::User(u) => self.put_user(&u)?,
            Resource::Token(t) => self.put_token(&t)?,
            Resource::Node(n) => self.put_node(&n)?,
            Resource::CertAuthority(_) => {
                return Err(AuthError::bad("cert_authority resources are managed by the cluster and cannot be created"));
            }
            Resource::RemoteCluster(rc) => self.update_remote_cluster(&rc)?,
            Resource::TrustedCluster(_) => {
                // Needs the network (validation with the root): see upsert_trusted_cluster.
                return Err(AuthError::Internal("trusted_cluster must go through upsert_trusted_cluster".into()));
            }
        }
        self.backend.flush()?;
        Ok((kind, name, !exists))
    }

    fn resource_exists(&self, kind: Kind, name: &str) -> Result<bool, AuthError> {
        Ok(match kind {
            Kind::Role => self.get_role(name)?.is_some(),
            Kind::User => self.get_user(name)?.is_some(),
            Kind::Token => self.list_tokens()?.iter().any(|t| t.token() == name),
            Kind::Node => self.get_node(name)?.is_some(),
            Kind::RemoteCluster => self.get_remote_cluster(name)?.is_some(),
            Kind::TrustedCluster => self.get_trusted_cluster(name)?.is_some(),
            Kind::CertAuthority => false,
        })
    }

    /// Resources of a kind as JSON values; one when `name` is given (NotFound if absent).
    pub fn get_resources(&self, kind_str: &str, name: &str) -> Result<Vec<Value>, AuthError> {
        let kind = Kind::parse(kind_str)?;
        let all: Vec<Resource> = match kind {
            Kind::Role => self.list_roles()?.into_iter().map(Resource::Role).collect(),
            Kind::User => self.list_users()?.into_iter().map(Resource::User).collect(),
            Kind::Token => self.list_tokens()?.into_iter().map(Resource::Token).collect(),
            Kind::Node => self.list_nodes()?.into_iter().map(Resource::Node).collect(),
            Kind::CertAuthority => self.cert_authority_resources()?.into_iter().map(Resource::CertAuthority).collect(),
            Kind::TrustedCluster => self.list_trusted_clusters()?.into_iter().map(Resource::TrustedCluster).collect(),
            Kind::RemoteCluster => self.list_remote_clusters()?.into_iter().map(Resource::RemoteCluster).collect(),
        };
        let selected: Vec<Resource> = all.into_iter().filter(|r| name.is_empty() || r.name() == name).collect();
        if !name.is_empty() && selected.is_empty() {
            return Err(AuthError::NotFound(format!("{} {name:?} is not found", kind.as_str())));
        }
        selected.iter().map(|r| r.to_json_value().map_err(AuthError::from)).collect()
    }

    /// Deletes a resource; NotFound when there was nothing to delete.
    pub fn delete_resource(&self, kind_str: &str, name: &str) -> Result<Kind, AuthError> {
        let kind = Kind::parse(kind_str)?;
        if name.is_empty() {
            return Err(AuthError::bad(format!("name the {} to delete: tctl rm {}/NAME", kind.as_str(), kind.as_str())));
        }
        let deleted = match kind {
            Kind::Role => {
                let users: Vec<String> = self
                    .list_users()?
                    .into_iter()
                    .filter(|u| u.spec.roles.iter().any(|r| r == name))
                    .map(|u| u.name().to_string())
                    .collect();
                if !users.is_empty() {
                    return Err(AuthError::bad(format!(
                        "role {name:?} is still assigned to users {}; update them first",
                        users.join(", ")
                    )));
                }
                self.delete_role(name)?
            }
            Kind::User => self.delete_user(name)?,
            Kind::Token => self.delete_token(name)?,
            Kind::Node => self.delete_node(name)?,
            Kind::CertAuthority => return Err(AuthError::bad("cert_authority resources cannot be deleted")),
            Kind::TrustedCluster => self.delete_trusted_cluster(name)?,
            Kind::RemoteCluster => self.delete_remote_cluster(name)?,
        };
        if !deleted {
            return Err(AuthError::NotFound(format!("{} {name:?} is not found", kind.as_str())));
        }
        self.backend.flush()?;
        Ok(kind)
    }

    /// The public halves of this cluster's CAs, as resources.
    pub fn cert_authority_resources(&self) -> Result<Vec<CertAuthority>, AuthError> {
        let mk = |typ: &str, keys: Vec<String>| -> Result<CertAuthority, AuthError> {
            Ok(CertAuthority::new(self.cluster_name.clone(), typ, keys))
        };
        let mut out = vec![
            mk("user", vec![ssh::public_key_line(self.user_ca.public_key())?])?,
            mk("host", vec![ssh::public_key_line(self.host_ca.public_key())?])?,
            mk("tls", vec![self.tls_ca.cert_pem().to_string()])?,
        ];
        // Trusted roots' and leaves' CAs, public parts, marked inactive when trust is off.
        for (name, cas) in self.all_trusted_cas()? {
            for (typ, keys) in [("user", cas.ssh_user), ("host", cas.ssh_host), ("tls", cas.tls)] {
                let mut ca = CertAuthority::new(name.clone(), typ, keys);
                ca.spec.active = cas.active;
                out.push(ca);
            }
        }
        Ok(out)
    }
}
