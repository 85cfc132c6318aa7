//! Unix accounts: which local user a session's login runs as.

use std::path::PathBuf;
use std::sync::Once;

use nix::unistd::{User, geteuid};

/// Shell used when the account names none.
const FALLBACK_SHELL: &str = "/bin/sh";

/// Why a login cannot be mapped to a local account.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user {login:?} does not exist on node {node:?}")]
    NoSuchUser { login: String, node: String },
    #[error("cannot look up user {login:?}: {reason}")]
    Lookup { login: String, reason: String },
}

/// The local account a session runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginUser {
    /// The account name (USER, LOGNAME).
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: PathBuf,
    /// Whether the child must switch to `uid`/`gid` (only possible when the node is root).
    pub switch_user: bool,
}

impl LoginUser {
    fn from_passwd(u: User, switch_user: bool) -> Self {
        let shell = if u.shell.as_os_str().is_empty() { PathBuf::from(FALLBACK_SHELL) } else { u.shell };
        LoginUser { name: u.name, uid: u.uid.as_raw(), gid: u.gid.as_raw(), home: u.dir, shell, switch_user }
    }

    /// The account this process runs as, with no user switch.
    pub fn current() -> Result<Self, UserError> {
        let uid = geteuid();
        let lookup = |reason: String| UserError::Lookup { login: format!("uid {uid}"), reason };
        let u = User::from_uid(uid).map_err(|e| lookup(e.to_string()))?.ok_or_else(|| lookup("no passwd entry".into()))?;
        Ok(Self::from_passwd(u, false))
    }
}

static NOT_ROOT_WARNING: Once = Once::new();

/// Maps `login` to the account the session runs as. The login must exist on this host.
/// A root node switches to that account; a node running as another user cannot, and runs
/// every session as itself (warned once, since that is a test or development set-up).
pub fn resolve(login: &str, nodename: &str) -> Result<LoginUser, UserError> {
    let no_such = || UserError::NoSuchUser { login: login.to_string(), node: nodename.to_string() };
    if login.is_empty() || login.contains(['/', '\0', ':']) {
        return Err(no_such());
    }
    let user = User::from_name(login)
        .map_err(|e| UserError::Lookup { login: login.to_string(), reason: e.to_string() })?
        .ok_or_else(no_such)?;
    if geteuid().is_root() {
        return Ok(LoginUser::from_passwd(user, true));
    }
    let current = LoginUser::current()?;
    if current.name != user.name {
        NOT_ROOT_WARNING.call_once(|| {
            tracing::warn!(
                "the node is not running as root: sessions run as {:?} whatever the login",
                current.name
            );
        });
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_user_is_named_with_the_node() {
        let e = resolve("no-such-user-portcullis", "node-7").unwrap_err();
        assert_eq!(e.to_string(), r#"user "no-such-user-portcullis" does not exist on node "node-7""#);
        assert!(matches!(resolve("../etc", "n"), Err(UserError::NoSuchUser { .. })));
    }

    #[test]
    fn current_user_resolves() {
        let me = LoginUser::current().unwrap();
        let u = resolve(&me.name, "n").unwrap();
        assert_eq!(u.uid, me.uid);
        assert!(!u.shell.as_os_str().is_empty());
    }
}
