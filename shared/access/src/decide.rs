//! Access decisions (SSH logins, user TLS certificates, listings) as pure functions of a snapshot.

use std::collections::BTreeMap;

use portcullis_pki::ssh;
use portcullis_pki::x509::{self, TlsIdentity};
use portcullis_proto::auth::{AuthorizeSshRequest, AuthorizeSshResponse};
use portcullis_types::{AccessChecker, Node, RemoteCluster, Role};

use crate::error::AccessError;
use crate::snapshot::{AccessSnapshot, TrustedRoot};

/// Decides whether the certificate in `req` may log in as `req.login` on `node` (the node the
/// caller resolved; `None` when it names no registered node). Refusals carry the reason in
/// `reason`; an unreadable certificate is an error. Auditing is the caller's.
pub fn authorize_ssh(
    snap: &AccessSnapshot,
    req: &AuthorizeSshRequest,
    node: Option<&Node>,
) -> Result<AuthorizeSshResponse, AccessError> {
    authorize_ssh_at(snap, req, node, portcullis_pki::unix_now())
}

/// [`authorize_ssh`] at a given time (unix seconds).
pub fn authorize_ssh_at(
    snap: &AccessSnapshot,
    req: &AuthorizeSshRequest,
    node: Option<&Node>,
    now: u64,
) -> Result<AuthorizeSshResponse, AccessError> {
    let cert = ssh::parse_certificate(&req.ssh_cert)
        .map_err(|e| AccessError::BadRequest(format!("unreadable SSH certificate: {e}")))?;
    let node_name = node.map(|n| n.spec.hostname.clone()).unwrap_or_else(|| req.node.clone());
    let mut out = AuthorizeSshResponse {
        allowed: false,
        node_id: node.map(|n| n.metadata.name.clone()).unwrap_or_default(),
        node_name: node_name.clone(),
        ..Default::default()
    };
    let (username, cert_roles) = match ssh::user_cert_info(&cert) {
        Ok(i) => (i.username, i.roles),
        Err(_) => (String::new(), vec![]),
    };
    out.username = username;
    match decide(snap, &cert, &req.login, node, &node_name, now) {
        Ok((checker, port_forwarding)) => {
            out.allowed = true;
            out.roles = checker.role_names();
            out.port_forwarding = port_forwarding;
        }
        Err(reason) => {
            out.reason = reason;
            out.roles = cert_roles;
        }
    }
    Ok(out)
}

fn decide(
    snap: &AccessSnapshot,
    cert: &ssh::Certificate,
    login: &str,
    node: Option<&Node>,
    node_name: &str,
    now: u64,
) -> Result<(AccessChecker, bool), String> {
    let signer = ssh::fingerprint(&ssh::PublicKey::from(cert.signature_key().clone()));
    let (info, checker) = match trusted_root_for(snap, &signer) {
        // A certificate from a root cluster we trust: its roles are mapped onto ours.
        Some(root) => {
            if !root.active {
                return Err(format!(
                    "trust with cluster {:?} is disabled: its certificates are not accepted here",
                    root.name
                ));
            }
            let keys = parse_keys(&root.ssh_user_cas);
            let info = ssh::verify_user_cert(cert, &keys, now).map_err(|e| e.to_string())?;
            check_lock(snap, &info.username, now).map_err(|e| e.to_string())?;
            let checker = remote_checker(snap, &root.name, &info.roles, info.traits.clone()).map_err(|e| e.to_string())?;
            (info, checker)
        }
        None => {
            let info = ssh::verify_user_cert(cert, &parse_keys(&snap.user_cas), now).map_err(|e| e.to_string())?;
            let checker = own_checker(snap, &info.username, &info.roles, info.traits.clone(), now).map_err(|e| e.to_string())?;
            (info, checker)
        }
    };
    let node = node.ok_or_else(|| format!("node {node_name:?} is not found in cluster {:?}", snap.cluster_name))?;
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

/// OpenSSH public key lines as keys; unreadable lines are skipped (they match nothing).
fn parse_keys(lines: &[String]) -> Vec<ssh::PublicKey> {
    lines.iter().filter_map(|k| ssh::parse_public_key(k).ok()).collect()
}

/// The trusted root whose SSH user CA has this fingerprint, if any.
fn trusted_root_for<'a>(snap: &'a AccessSnapshot, fingerprint: &str) -> Option<&'a TrustedRoot> {
    snap.trusted_roots
        .iter()
        .find(|r| parse_keys(&r.ssh_user_cas).iter().any(|k| ssh::fingerprint(k) == fingerprint))
}

/// Refuses a user under an admin lock, naming the lock and how to lift it.
fn check_lock(snap: &AccessSnapshot, user: &str, now: u64) -> Result<(), AccessError> {
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    match snap.active_lock(user, now) {
        None => Ok(()),
        Some(lock) => {
            let until = match lock.until {
                Some(u) => format!(
                    " until {}",
                    ssh::format_unix(u64::try_from(u).unwrap_or_default())
                ),
                None => String::new(),
            };
            let why = if lock.message.is_empty() { "locked by an admin".to_string() } else { lock.message.clone() };
            Err(AccessError::Denied(format!(
                "user {user} is locked{until}: {why}; an admin can run 'tctl users unlock {user}'"
            )))
        }
    }
}

/// The roles of `snap` with these names; names of roles that do not exist grant nothing.
fn roles_named(snap: &AccessSnapshot, names: &[String]) -> Vec<Role> {
    names.iter().filter_map(|n| snap.role(n).cloned()).collect()
}

/// Access of one of this cluster's own users holding a certificate with `cert_roles`: only
/// roles the user still holds count, a deleted or locked user gets none.
fn own_checker(
    snap: &AccessSnapshot,
    user: &str,
    cert_roles: &[String],
    traits: BTreeMap<String, Vec<String>>,
    now: u64,
) -> Result<AccessChecker, AccessError> {
    let held = snap.users.get(user).ok_or_else(|| {
        AccessError::Denied(format!(
            "user {user} no longer exists in cluster {:?}: its certificates are not accepted",
            snap.cluster_name
        ))
    })?;
    check_lock(snap, user, now)?;
    let current: Vec<String> = cert_roles.iter().filter(|r| held.contains(r)).cloned().collect();
    if current.is_empty() && !cert_roles.is_empty() {
        return Err(AccessError::Denied(format!(
            "access denied to {user}: roles [{}] in the certificate were removed from the user; run 'tsh login' again",
            cert_roles.join(", ")
        )));
    }
    Ok(AccessChecker::new(roles_named(snap, &current), traits))
}

/// The access a user of root cluster `root` with `roles` gets here, through the
/// trusted_cluster's role map. No mapped role means no access, and says why.
pub fn remote_checker(
    snap: &AccessSnapshot,
    root: &str,
    roles: &[String],
    traits: BTreeMap<String, Vec<String>>,
) -> Result<AccessChecker, AccessError> {
    let tc = snap
        .trusted_root(root)
        .ok_or_else(|| AccessError::Denied(format!("cluster {root:?} is not trusted here")))?;
    let mapped = portcullis_types::map_roles(&tc.role_map, roles).map_err(|e| AccessError::BadRequest(e.to_string()))?;
    if mapped.is_empty() {
        return Err(AccessError::Denied(format!(
            "access denied: roles [{}] of cluster {root:?} map to no role of cluster {:?} (check the trusted_cluster role_map)",
            roles.join(", "),
            snap.cluster_name
        )));
    }
    Ok(AccessChecker::new(roles_named(snap, &mapped), traits))
}

/// Access of the holder of a verified TLS identity: ours directly (roles it still holds,
/// unless locked or deleted), a trusted root's through the role map.
pub fn user_checker(snap: &AccessSnapshot, user: &TlsIdentity) -> Result<AccessChecker, AccessError> {
    let now = portcullis_pki::unix_now();
    if user.cluster == snap.cluster_name {
        own_checker(snap, &user.name, &user.roles, user.traits.clone(), now)
    } else {
        match snap.trusted_root(&user.cluster) {
            Some(root) if root.active => {
                check_lock(snap, &user.name, now)?;
                remote_checker(snap, &user.cluster, &user.roles, user.traits.clone())
            }
            Some(_) => Err(AccessError::Denied(format!("trust with cluster {:?} is disabled", user.cluster))),
            None => Err(AccessError::Denied(format!("cluster {:?} is not trusted here", user.cluster))),
        }
    }
}

/// Access of the holder of one of our own SSH user certificates (checked here).
pub fn ssh_user_checker(snap: &AccessSnapshot, cert_text: &str) -> Result<AccessChecker, AccessError> {
    let cert = ssh::parse_certificate(cert_text)
        .map_err(|e| AccessError::BadRequest(format!("unreadable SSH certificate: {e}")))?;
    let now = portcullis_pki::unix_now();
    let info = ssh::verify_user_cert(&cert, &parse_keys(&snap.user_cas), now)
        .map_err(|e| AccessError::Unauthenticated(e.to_string()))?;
    own_checker(snap, &info.username, &info.roles, info.traits, now)
}

/// Verifies a user's TLS certificate (DER) against the CA of the cluster it claims to
/// come from, so no cluster can vouch for another's users.
pub fn verify_user_tls(snap: &AccessSnapshot, der: &[u8]) -> Result<TlsIdentity, AccessError> {
    let claimed = x509::parse_identity(der).map_err(|e| AccessError::BadRequest(e.to_string()))?;
    let cas = if claimed.cluster == snap.cluster_name {
        snap.tls_cas.clone()
    } else {
        match snap.trusted_root(&claimed.cluster) {
            Some(root) if root.active => root.tls_cas.clone(),
            Some(_) => return Err(AccessError::Denied(format!("trust with cluster {:?} is disabled", claimed.cluster))),
            None => return Err(AccessError::Unauthenticated(format!("cluster {:?} is not trusted here", claimed.cluster))),
        }
    };
    let id = x509::verify_client_cert(der, &cas)
        .map_err(|e| AccessError::Unauthenticated(format!("user certificate rejected: {e}; run 'tsh login'")))?;
    if !id.has_system_role(x509::SystemRole::User) {
        return Err(AccessError::Denied("not a user certificate".into()));
    }
    Ok(id)
}

/// Nodes the holder of a verified user TLS identity may see.
pub fn nodes_visible_to(snap: &AccessSnapshot, user: &TlsIdentity) -> Result<Vec<Node>, AccessError> {
    let checker = user_checker(snap, user)?;
    Ok(snap.nodes.iter().filter(|n| checker.can_see_node(&n.metadata.labels)).cloned().collect())
}

/// Leaf clusters the holder of a verified user TLS identity may see (its roles'
/// `cluster_labels`), as ListRemoteClusters answers.
pub fn remote_clusters_visible_to(snap: &AccessSnapshot, user: &TlsIdentity) -> Result<Vec<RemoteCluster>, AccessError> {
    let checker = user_checker(snap, user)?;
    Ok(snap
        .remote_clusters
        .iter()
        .filter(|rc| checker.can_see_cluster(&rc.metadata.labels))
        .cloned()
        .collect())
}
