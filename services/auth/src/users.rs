//! Users, roles, password logins and user certificates.

use std::collections::BTreeMap;
use std::time::Duration;

use portcullis_pki::ssh::{self, UserCertRequest};
use portcullis_pki::x509::{SystemRole, TlsCertRequest};
use portcullis_pki::Secret;
use portcullis_proto::auth::UserCerts;
use portcullis_storage::BackendExt;
use portcullis_types::{AccessChecker, Role, User, editor_rules, preset_roles};
use serde_json::json;

use crate::error::AuthError;
use crate::lockout::{UserLock, format_utc, locked_message};
use crate::state::{AuthState, Change, atomic_update, create_json, to_json};

/// Present once the stored `editor` role carries the preset's rules (see
/// `AuthState::give_editor_its_rules`).
const KEY_EDITOR_RULES_GIVEN: &str = "migrations/editor_rules";

/// Certificates are valid this long unless asked otherwise (Teleport's default).
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(12 * 3600);
/// Without a role's `max_session_ttl`, no certificate outlives this.
pub const MAX_CERT_TTL: Duration = Duration::from_secs(30 * 3600);
/// Passwords shorter than this are refused.
const MIN_PASSWORD_LEN: usize = 6;
/// The one answer to a wrong password, whether or not the user exists.
pub const INVALID_LOGIN: &str = "invalid username or password";

pub(crate) fn role_key(name: &str) -> String {
    format!("roles/{name}")
}
pub(crate) fn user_key(name: &str) -> String {
    format!("users/{name}")
}
fn password_key(name: &str) -> String {
    format!("passwords/{name}")
}

/// What a user is issued certificates for.
pub struct CertParams<'a> {
    pub username: &'a str,
    pub ssh_public_key: &'a str,
    pub tls_public_key: &'a [u8],
    pub ttl: Option<Duration>,
    pub route_to_cluster: &'a str,
}

impl AuthState {
    pub(crate) fn ensure_preset_roles(&self) -> Result<(), AuthError> {
        // Created only if absent: a replica starting never overwrites an edited preset role
        // another replica's admin just saved.
        for role in preset_roles() {
            create_json(self.backend.as_ref(), &role_key(role.name()), &role)?;
        }
        self.give_editor_its_rules()
    }

    /// Admin calls used to be allowed to whoever held a role named `editor`, and clusters
    /// stored that preset without rules; now its rules decide. Once per cluster (a marker
    /// records it) the stored `editor` gets the preset's rules added, so its holders keep
    /// every right they had; later edits, even emptying the rules, are obeyed.
    fn give_editor_its_rules(&self) -> Result<(), AuthError> {
        if self.backend.get(KEY_EDITOR_RULES_GIVEN)?.is_some() {
            return Ok(());
        }
        atomic_update(self.backend.as_ref(), &role_key("editor"), |current| {
            let Some(bytes) = current else { return Ok(Change::Keep(())) };
            let mut role: Role = serde_json::from_slice(bytes)
                .map_err(|e| AuthError::Internal(format!("stored role \"editor\" is unreadable: {e}")))?;
            let missing: Vec<_> = editor_rules().into_iter().filter(|r| !role.spec.allow.rules.contains(r)).collect();
            if missing.is_empty() {
                return Ok(Change::Keep(()));
            }
            tracing::info!("role \"editor\" gets the preset's rules: admin calls are decided by rules now");
            role.spec.allow.rules.extend(missing);
            Ok(Change::Put(to_json(&role)?, ()))
        })?;
        create_json(self.backend.as_ref(), KEY_EDITOR_RULES_GIVEN, &json!({"given": true}))?;
        Ok(())
    }

    pub fn get_role(&self, name: &str) -> Result<Option<Role>, AuthError> {
        Ok(self.backend.get_json(&role_key(name))?)
    }

    pub fn put_role(&self, role: &Role) -> Result<(), AuthError> {
        Ok(self.backend.put_json(&role_key(role.name()), role)?)
    }

    pub fn list_roles(&self) -> Result<Vec<Role>, AuthError> {
        Ok(self.backend.list_json("roles/")?)
    }

    pub fn delete_role(&self, name: &str) -> Result<bool, AuthError> {
        Ok(self.backend.delete(&role_key(name))?)
    }

    /// Role definitions for names; names with no role are skipped (a deleted role grants
    /// nothing) and logged.
    pub fn roles_named(&self, names: &[String]) -> Result<Vec<Role>, AuthError> {
        let mut out = Vec::new();
        for n in names {
            match self.get_role(n)? {
                Some(r) => out.push(r),
                None => tracing::debug!(role = %n, "role does not exist; it grants nothing"),
            }
        }
        Ok(out)
    }

    pub fn get_user(&self, name: &str) -> Result<Option<User>, AuthError> {
        Ok(self.backend.get_json(&user_key(name))?)
    }

    pub fn put_user(&self, user: &User) -> Result<(), AuthError> {
        self.check_user_roles(user)?;
        Ok(self.backend.put_json(&user_key(user.name()), user)?)
    }

    /// Every role `user` names must exist.
    pub(crate) fn check_user_roles(&self, user: &User) -> Result<(), AuthError> {
        for r in &user.spec.roles {
            if self.get_role(r)?.is_none() {
                return Err(AuthError::bad(format!("user {:?}: role {r:?} does not exist", user.name())));
            }
        }
        Ok(())
    }

    pub fn list_users(&self) -> Result<Vec<User>, AuthError> {
        Ok(self.backend.list_json("users/")?)
    }

    pub fn delete_user(&self, name: &str) -> Result<bool, AuthError> {
        self.backend.delete(&password_key(name))?;
        Ok(self.backend.delete(&user_key(name))?)
    }

    /// Stores an argon2 hash of the password, made on the bounded hashing workers. Blocks:
    /// call from a blocking task.
    pub fn set_password(&self, username: &str, password: &Secret<String>) -> Result<(), AuthError> {
        if self.get_user(username)?.is_none() {
            return Err(AuthError::NotFound(format!("user {username:?} does not exist")));
        }
        if password.expose().chars().count() < MIN_PASSWORD_LEN {
            return Err(AuthError::bad(format!("password must be at least {MIN_PASSWORD_LEN} characters")));
        }
        let hash = self.passwords.hash(password)?;
        let key = password_key(username);
        let bytes = crate::state::to_json(&hash)?;
        self.backend.put(&key, &bytes)?;
        // The user may have been deleted meanwhile (on this or another replica): a hash
        // left behind would let a later user of that name in with this password.
        if self.get_user(username)?.is_none() {
            self.backend.compare_and_delete(&key, &bytes)?;
            return Err(AuthError::NotFound(format!("user {username:?} does not exist")));
        }
        self.backend.flush()?;
        Ok(())
    }

    /// Checks a password; the error never says whether the user exists, and an unknown user
    /// costs the same argon2 run as a real one (the dummy hash). Blocks on the hashing workers.
    pub fn check_password(&self, username: &str, password: &Secret<String>) -> Result<User, AuthError> {
        let invalid = || AuthError::Unauthenticated(INVALID_LOGIN.into());
        let user = self.get_user(username)?;
        let hash: Option<String> = match &user {
            Some(_) => self.backend.get_json(&password_key(username))?,
            None => None,
        };
        let matches = self.passwords.verify(password, hash)?;
        match user {
            Some(u) if matches => Ok(u),
            _ => Err(invalid()),
        }
    }

    /// Password login: refused while the user is locked (even with the right password),
    /// counted towards the lockout when wrong, audited whether it succeeds or not.
    pub fn login(
        &self,
        username: &str,
        password: &Secret<String>,
        params: CertParams<'_>,
        remote_addr: &str,
    ) -> Result<UserCerts, AuthError> {
        let refuse = |e: AuthError, lock: Option<&UserLock>| {
            let mut event = json!({"user": username, "success": false, "method": "local", "error": e.to_string(), "remote_addr": remote_addr});
            if let Some(l) = lock {
                event["locked_until"] = json!(format_utc(l.locked_until));
            }
            self.audit.emit("user.login", event);
            e
        };
        if let Some(lock) = self.user_lock(username)? {
            // No argon2 run for a locked user: a flood against one name costs nothing.
            let e = AuthError::denied(locked_message(username, lock.locked_until, lock.failures));
            return Err(refuse(e, Some(&lock)));
        }
        let user = match self.check_password(username, password) {
            Ok(u) => u,
            Err(e @ AuthError::Unauthenticated(_)) => {
                return Err(match self.record_login_failure(username)? {
                    Some(lock) => {
                        let e = AuthError::denied(locked_message(username, lock.locked_until, lock.failures));
                        refuse(e, Some(&lock))
                    }
                    None => refuse(e, None),
                });
            }
            Err(e) => return Err(refuse(e, None)),
        };
        // Parallel guesses, through any replica, may have locked the user while this one was
        // being checked: clearing the failures and checking for that lock are one step.
        if let Some(lock) = self.clear_login_failures(username)? {
            let e = AuthError::denied(locked_message(username, lock.locked_until, lock.failures));
            return Err(refuse(e, Some(&lock)));
        }
        let certs = self.user_certs(&user, params)?;
        self.audit.emit(
            "user.login",
            json!({"user": username, "success": true, "method": "local", "remote_addr": remote_addr}),
        );
        Ok(certs)
    }

    /// SSH and TLS certificates for `user`, principals and TTL from its roles.
    pub fn user_certs(&self, user: &User, params: CertParams<'_>) -> Result<UserCerts, AuthError> {
        self.refuse_if_admin_locked(user.name())?;
        let roles = self.roles_named(&user.spec.roles)?;
        let traits: BTreeMap<String, Vec<String>> = user.spec.traits.clone();
        let checker = AccessChecker::new(roles, traits.clone());
        let mut ttl = params.ttl.filter(|t| !t.is_zero()).unwrap_or(DEFAULT_CERT_TTL);
        ttl = ttl.min(checker.max_session_ttl().unwrap_or(MAX_CERT_TTL));
        let route = if params.route_to_cluster.is_empty() { self.cluster_name.as_str() } else { params.route_to_cluster };
        if route != self.cluster_name {
            // A leaf: it must exist and be visible to the user (cluster_labels).
            let visible = self
                .get_remote_cluster(route)?
                .is_some_and(|rc| checker.can_see_cluster(&rc.metadata.labels));
            if !visible {
                return Err(AuthError::NotFound(format!("cluster {route:?} is not found")));
            }
        }
        let public_key = ssh::parse_public_key(params.ssh_public_key)
            .map_err(|e| AuthError::bad(format!("bad SSH public key: {e}")))?;
        let role_names = checker.role_names();
        let ssh_cert = self.user_ca.sign_user_cert(&UserCertRequest {
            public_key,
            username: user.name().to_string(),
            principals: checker.logins(),
            ttl,
            roles: role_names.clone(),
            traits: traits.clone(),
            route_to_cluster: route.to_string(),
            permit_port_forwarding: checker.port_forwarding(),
            permit_agent_forwarding: checker.forward_agent(),
        })?;
        let tls_cert_pem = self.issue_tls(TlsCertRequest {
            public_key_der: params.tls_public_key.to_vec(),
            name: user.name().to_string(),
            system_roles: vec![SystemRole::User.into()],
            roles: role_names,
            traits,
            route_to_cluster: route.to_string(),
            dns_names: vec![],
            ttl,
        })?;
        Ok(UserCerts {
            username: user.name().to_string(),
            ssh_cert: ssh_cert.to_openssh().map_err(portcullis_pki::PkiError::from)?,
            tls_cert_pem,
            cas: Some(self.cert_authorities()?),
            // Leaf host CAs apart, each scoped to its leaf (see trust.rs).
            cluster_name: self.cluster_name.clone(),
            leaf_host_cas: self.leaf_host_cas()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use portcullis_config::{AuthSettings, CommonFlags, FileConfig};
    use portcullis_storage::MemoryBackend;
    use portcullis_types::RoleSpec;

    use super::*;

    fn open(dir: &std::path::Path, backend: Arc<MemoryBackend>) -> AuthState {
        let yaml = format!("teleport:\n  data_dir: {}\nauth_service:\n  cluster_name: rules.example.com\n", dir.display());
        let settings = AuthSettings::from_parts(&FileConfig::from_yaml(&yaml).unwrap(), &CommonFlags::default()).unwrap();
        AuthState::open(&settings, backend).unwrap()
    }

    #[test]
    fn an_editor_stored_without_rules_gets_the_preset_rules_once() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(MemoryBackend::new());
        // A cluster from before rules decided admin calls: `editor` stored without any.
        let old = Role::new("editor", RoleSpec::default());
        backend.put_json(&role_key("editor"), &old).unwrap();
        let state = open(dir.path(), backend.clone());
        assert_eq!(state.get_role("editor").unwrap().unwrap().spec.allow.rules, editor_rules());
        // The admin empties the rules; a restart must not give them back.
        state.put_role(&old).unwrap();
        drop(state);
        let state = open(dir.path(), backend);
        assert!(state.get_role("editor").unwrap().unwrap().spec.allow.rules.is_empty());
    }

    #[test]
    fn a_new_cluster_stores_the_editor_with_its_rules() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path(), Arc::new(MemoryBackend::new()));
        assert_eq!(state.get_role("editor").unwrap().unwrap().spec.allow.rules, editor_rules());
    }
}
