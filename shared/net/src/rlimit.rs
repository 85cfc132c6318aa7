//! Raising the soft descriptor limit to the hard one, so connection caps, not the default
//! soft limit (often 1024), decide how many clients a service holds.

use std::sync::OnceLock;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Raises `RLIMIT_NOFILE`'s soft limit to its hard limit, once per process; returns the
/// soft limit in force afterwards (`None` if it cannot be read).
pub fn raise_fd_limit() -> Option<u64> {
    static DONE: OnceLock<Option<u64>> = OnceLock::new();
    *DONE.get_or_init(|| {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
        if soft >= hard {
            return Some(soft);
        }
        // Linux refuses an "infinite" hard limit beyond fs.nr_open: fall back to a million.
        for target in [hard, hard.min(1 << 20)] {
            if setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_ok() {
                tracing::debug!(from = soft, to = target, "raised the open file limit");
                return Some(target);
            }
        }
        tracing::warn!(soft, hard, "cannot raise the open file limit");
        Some(soft)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn limit_is_the_hard_limit_afterwards() {
        let now = super::raise_fd_limit().unwrap();
        let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(soft, now);
        assert!(soft == hard || soft == 1 << 20, "soft {soft} hard {hard}");
    }
}
