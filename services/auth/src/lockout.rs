//! Per-user lockout after repeated failed password logins, kept in the backend so a restart
//! does not lift it. Any name gets a record, known or not, so a lock reveals nothing about
//! which users exist. Records change only by compare-and-swap, so guesses spread over
//! several auth replicas are all counted.

use portcullis_storage::BackendExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use time::macros::format_description;

use crate::error::AuthError;
use crate::state::{AuthState, Change, atomic_update, now, to_json};

const PREFIX: &str = "login_attempts/";

fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// Failed logins of one user name, as stored.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Attempts {
    /// Unix times of the failures within the window.
    #[serde(default)]
    failures: Vec<i64>,
    /// Unix time the lock ends, when locked.
    #[serde(default)]
    locked_until: Option<i64>,
}

/// A user who may not log in for now.
#[derive(Debug, Clone, PartialEq)]
pub struct UserLock {
    pub username: String,
    pub locked_until: OffsetDateTime,
    pub failures: u32,
}

/// `2026-12-01 15:20:00 UTC`.
pub fn format_utc(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"))
        .map(|s| format!("{s} UTC"))
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// What a locked user is told.
pub fn locked_message(username: &str, until: OffsetDateTime, failures: u32) -> String {
    format!(
        "user {username} is locked until {} after {failures} failed logins; try again then or ask an \
         admin to run 'tctl users unlock {username}'",
        format_utc(until)
    )
}

fn at(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl AuthState {
    fn attempts(&self, username: &str) -> Result<Option<Attempts>, AuthError> {
        Ok(self.backend.get_json(&key(username))?)
    }

    /// The lock on `username` in force now, if any.
    pub fn user_lock(&self, username: &str) -> Result<Option<UserLock>, AuthError> {
        let now = now().unix_timestamp();
        Ok(self.attempts(username)?.and_then(|a| match a.locked_until {
            Some(until) if until > now => Some(UserLock {
                username: username.to_string(),
                locked_until: at(until),
                failures: a.failures.len() as u32,
            }),
            _ => None,
        }))
    }

    /// Counts a failed login; returns the lock in force after it, whether this failure
    /// started it or a parallel guess did. Failures while locked are not counted (the
    /// message keeps the number that locked), and they are answered like the locked check,
    /// so a guess in flight when the lock fell cannot tell a right password from a wrong one.
    pub fn record_login_failure(&self, username: &str) -> Result<Option<UserLock>, AuthError> {
        let cfg = self.logins.lockout;
        if cfg.max_failures == 0 {
            return Ok(None);
        }
        let now = now().unix_timestamp();
        let lock = |a: &Attempts, until: i64| UserLock {
            username: username.to_string(),
            locked_until: at(until),
            failures: a.failures.len() as u32,
        };
        let (started, in_force) = atomic_update(self.backend.as_ref(), &key(username), |current| {
            // An unreadable record counts as none: it must not make a name unlockable.
            let mut a: Attempts = current.and_then(|c| serde_json::from_slice(c).ok()).unwrap_or_default();
            match a.locked_until {
                Some(until) if until > now => return Ok(Change::Keep((false, Some(lock(&a, until))))),
                // An expired lock starts the count afresh.
                Some(_) => {
                    a.locked_until = None;
                    a.failures.clear();
                }
                None => {}
            }
            let window_start = now - cfg.window.as_secs() as i64;
            a.failures.retain(|t| *t > window_start);
            a.failures.push(now);
            let mut started = None;
            if a.failures.len() as u32 >= cfg.max_failures {
                let until = now + cfg.duration.as_secs() as i64;
                a.locked_until = Some(until);
                started = Some(lock(&a, until));
            }
            Ok(Change::Put(to_json(&a)?, (started.is_some(), started)))
        })?;
        if started {
            // A lock must survive a crash right after it is answered.
            self.backend.flush()?;
        }
        Ok(in_force)
    }

    /// Forgets failures after a successful login (no write when there were none), unless a
    /// lock is in force by then: that lock is returned and kept. One atomic step, so a lock
    /// a parallel guess sets on any replica is never wiped by a login that raced it.
    pub fn clear_login_failures(&self, username: &str) -> Result<Option<UserLock>, AuthError> {
        let now = now().unix_timestamp();
        atomic_update(self.backend.as_ref(), &key(username), |current| {
            let Some(bytes) = current else { return Ok(Change::Keep(None)) };
            let a: Attempts = serde_json::from_slice(bytes).unwrap_or_default();
            match a.locked_until {
                Some(until) if until > now => Ok(Change::Keep(Some(UserLock {
                    username: username.to_string(),
                    locked_until: at(until),
                    failures: a.failures.len() as u32,
                }))),
                _ => Ok(Change::Delete(None)),
            }
        })
    }

    /// Lifts the lock on `username` and forgets its failures; audited. False when it was not
    /// locked.
    pub fn unlock_user(&self, username: &str, by: &str) -> Result<bool, AuthError> {
        let was_locked = self.user_lock(username)?;
        self.backend.delete(&key(username))?;
        self.backend.flush()?;
        self.audit.emit(
            "user.unlock",
            json!({
                "user": username,
                "by": by,
                "was_locked": was_locked.is_some(),
                "locked_until": was_locked.as_ref().map(|l| format_utc(l.locked_until)),
            }),
        );
        Ok(was_locked.is_some())
    }

    /// Users locked now, by name.
    pub fn list_user_locks(&self) -> Result<Vec<UserLock>, AuthError> {
        let now = now().unix_timestamp();
        let mut out = Vec::new();
        for (k, v) in self.backend.list(PREFIX)? {
            let Ok(a) = serde_json::from_slice::<Attempts>(&v) else { continue };
            if let Some(until) = a.locked_until.filter(|u| *u > now) {
                out.push(UserLock {
                    username: k.trim_start_matches(PREFIX).to_string(),
                    locked_until: at(until),
                    failures: a.failures.len() as u32,
                });
            }
        }
        out.sort_by(|a, b| a.username.cmp(&b.username));
        Ok(out)
    }

    /// Removes records with no lock in force and no failure within the window.
    pub fn sweep_login_attempts(&self) -> Result<usize, AuthError> {
        let now = now().unix_timestamp();
        let window_start = now - self.logins.lockout.window.as_secs() as i64;
        let mut removed = 0;
        for (k, v) in self.backend.list(PREFIX)? {
            let stale = match serde_json::from_slice::<Attempts>(&v) {
                Ok(a) => a.locked_until.is_none_or(|u| u <= now) && a.failures.iter().all(|t| *t <= window_start),
                Err(_) => true,
            };
            // Only the stale record read: a failure counted meanwhile keeps it.
            if stale && self.backend.compare_and_delete(&k, &v)? {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_user_time_and_remedy() {
        let t = OffsetDateTime::from_unix_timestamp(1_796_138_400).unwrap();
        let m = locked_message("alice", t, 5);
        assert_eq!(
            m,
            "user alice is locked until 2026-12-01 15:20:00 UTC after 5 failed logins; try again then or ask an admin to run 'tctl users unlock alice'"
        );
    }
}
