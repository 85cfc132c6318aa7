//! Everything `tsh` can fail with; `Display` is the text the user sees after `ERROR: `.

use portcullis_pki::PkiError;

/// A `tsh` failure. Each variant names the problem the way the user should read it.
#[derive(Debug, thiserror::Error)]
pub enum TshError {
    #[error("Not logged in.")]
    NotLoggedIn,
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the proxy at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error(
        "the proxy's HTTPS certificate is not trusted: {reason} (use --insecure for a self-signed proxy)"
    )]
    UntrustedTls { reason: String },
    /// An error message the proxy sent back (`{"error": "..."}`), shown as is.
    #[error("{0}")]
    Server(String),
    #[error("unexpected answer from the proxy ({what}): {reason}")]
    BadResponse { what: String, reason: String },
    #[error("access denied: {0}")]
    AccessDenied(String),
    #[error("profile {path}: {reason}")]
    Profile { path: String, reason: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: String, reason: String },
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("{0}")]
    Ssh(String),
    #[error("the session ended without an exit status")]
    NoExitStatus,
    #[error("cannot read the password: {0}")]
    Password(String),
    #[error("terminal: {0}")]
    Terminal(String),
    #[error(transparent)]
    Pki(#[from] PkiError),
}

impl TshError {
    pub(crate) fn profile(path: &std::path::Path, reason: impl std::fmt::Display) -> Self {
        TshError::Profile {
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn write(path: &std::path::Path, reason: impl std::fmt::Display) -> Self {
        TshError::Write {
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }
}

/// The messages of an error and its sources, joined with `: `, without repeats
/// (reqwest and hyper nest the same text several times).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}
