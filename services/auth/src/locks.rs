//! Admin locks (`tctl users lock`): a locked user's certificates are refused everywhere and
//! no new ones are issued, until an admin unlocks the user or the lock's TTL passes.

use std::time::Duration;

use portcullis_access::UserLock;
use portcullis_storage::BackendExt;
use serde_json::json;

use crate::error::AuthError;
use crate::lockout::format_utc;
use crate::state::AuthState;

/// Where admin locks are kept: `locks/<user>` holds a [`UserLock`] as JSON.
pub const LOCKS_PREFIX: &str = "locks/";
/// Longest reason an admin may give (it is shown to the user on every refusal).
const MAX_MESSAGE_CHARS: usize = 500;

fn lock_key(user: &str) -> String {
    format!("{LOCKS_PREFIX}{user}")
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl AuthState {
    /// Locks `user` (audited as `user.lock`). With `ttl` the lock ends by itself; without, it
    /// lasts until `tctl users unlock`. Locking again replaces the previous lock.
    pub fn lock_user(&self, user: &str, ttl: Option<Duration>, message: &str, by: &str) -> Result<UserLock, AuthError> {
        let user = user.trim();
        if user.is_empty() {
            return Err(AuthError::bad("the user name is empty"));
        }
        if user.contains('/') || user.chars().any(char::is_control) {
            return Err(AuthError::bad(format!("{user:?} is not a valid user name")));
        }
        let message = message.trim();
        if message.chars().count() > MAX_MESSAGE_CHARS {
            return Err(AuthError::bad(format!("the lock message is longer than {MAX_MESSAGE_CHARS} characters")));
        }
        if message.chars().any(char::is_control) {
            return Err(AuthError::bad("the lock message may not contain control characters (newlines, tabs)"));
        }
        let until = match ttl {
            Some(t) if t.is_zero() => return Err(AuthError::bad("the lock TTL must be longer than 0s")),
            Some(t) => {
                let secs = i64::try_from(t.as_secs()).map_err(|_| AuthError::bad("the lock TTL is too long"))?;
                Some(unix_now().checked_add(secs).ok_or_else(|| AuthError::bad("the lock TTL is too long"))?)
            }
            None => None,
        };
        let lock = UserLock { user: user.to_string(), until, message: message.to_string() };
        let value = serde_json::to_vec(&lock).map_err(|e| AuthError::Internal(format!("encoding a lock: {e}")))?;
        match ttl {
            Some(t) => self.backend.put_ttl(&lock_key(user), &value, t)?,
            None => self.backend.put(&lock_key(user), &value)?,
        }
        self.backend.flush()?;
        self.audit.emit(
            "user.lock",
            json!({
                "user": user,
                "by": by,
                "until": until.and_then(|u| time::OffsetDateTime::from_unix_timestamp(u).ok()).map(format_utc),
                "message": message,
            }),
        );
        Ok(lock)
    }

    /// The admin lock holding `user` now, if any.
    pub fn admin_lock(&self, user: &str) -> Result<Option<UserLock>, AuthError> {
        let now = unix_now();
        Ok(self.backend.get_json::<UserLock>(&lock_key(user))?.filter(|l| l.is_active(now)))
    }

    /// Every admin lock in force now.
    pub fn admin_locks(&self) -> Result<Vec<UserLock>, AuthError> {
        let now = unix_now();
        Ok(self.backend.list_json::<UserLock>(LOCKS_PREFIX)?.into_iter().filter(|l| l.is_active(now)).collect())
    }

    /// Refuses to issue certificates to a user under an admin lock.
    pub fn refuse_if_admin_locked(&self, user: &str) -> Result<(), AuthError> {
        match self.admin_lock(user)? {
            None => Ok(()),
            Some(lock) => {
                let until = lock
                    .until
                    .and_then(|u| time::OffsetDateTime::from_unix_timestamp(u).ok())
                    .map(|t| format!(" until {}", format_utc(t)))
                    .unwrap_or_default();
                let why = if lock.message.is_empty() { "locked by an admin" } else { lock.message.as_str() };
                Err(AuthError::denied(format!(
                    "user {user} is locked{until}: {why}; an admin can run 'tctl users unlock {user}'"
                )))
            }
        }
    }

    /// `tctl users unlock`: lifts the admin lock and the failed-login lockout, and forgets
    /// failed logins. Returns whether either lock was in force.
    pub fn unlock_user_fully(&self, user: &str, by: &str) -> Result<bool, AuthError> {
        let admin = self.admin_lock(user)?;
        if self.backend.delete(&lock_key(user))? {
            self.backend.flush()?;
        }
        if let Some(lock) = &admin {
            self.audit.emit(
                "user.unlock",
                json!({"user": user, "by": by, "kind": "admin", "was_locked": true, "message": lock.message}),
            );
        }
        let failed_logins = self.unlock_user(user, by)?;
        Ok(admin.is_some() || failed_logins)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An auth state on a memory backend, its audit log and keys under `dir`.
    pub(crate) fn state(dir: &std::path::Path) -> AuthState {
        let yaml = format!("teleport:\n  data_dir: {}\nauth_service:\n  cluster_name: lockme\n", dir.join("auth").display());
        let file = portcullis_config::FileConfig::from_yaml(&yaml).unwrap();
        let settings = portcullis_config::AuthSettings::from_parts(&file, &Default::default()).unwrap();
        AuthState::open(&settings, std::sync::Arc::new(portcullis_storage::MemoryBackend::new())).unwrap()
    }

    #[test]
    fn a_lock_refuses_new_certificates_until_unlocked() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(dir.path());
        s.lock_user("alice", None, "left the company", "admin").unwrap();
        let e = s.refuse_if_admin_locked("alice").unwrap_err().to_string();
        assert_eq!(e, "user alice is locked: left the company; an admin can run 'tctl users unlock alice'");
        assert!(s.refuse_if_admin_locked("bob").is_ok());
        assert_eq!(s.admin_locks().unwrap().len(), 1);
        assert!(s.unlock_user_fully("alice", "admin").unwrap());
        assert!(s.refuse_if_admin_locked("alice").is_ok());
        assert!(!s.unlock_user_fully("alice", "admin").unwrap());
    }

    #[test]
    fn a_timed_lock_names_its_end_and_bad_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(dir.path());
        let l = s.lock_user("carol", Some(Duration::from_secs(1800)), "", "admin").unwrap();
        assert!(l.until.is_some_and(|u| u > unix_now() + 1700));
        let e = s.refuse_if_admin_locked("carol").unwrap_err().to_string();
        assert!(e.starts_with("user carol is locked until ") && e.contains("locked by an admin"), "{e}");
        assert!(s.lock_user(" ", None, "", "admin").unwrap_err().to_string().contains("empty"));
        assert!(s.lock_user("a/b", None, "", "admin").is_err());
        assert!(s.lock_user("dave", Some(Duration::ZERO), "", "admin").is_err());
        assert!(s.lock_user("dave", None, "line\nbreak", "admin").is_err());
    }
}
