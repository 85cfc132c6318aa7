//! The errors `tctl` reports; each message is meant to be read by an administrator.

use portcullis_config::ConfigError;
use portcullis_pki::PkiError;
use portcullis_types::TypesError;

/// Anything that makes a `tctl` command fail.
#[derive(Debug, thiserror::Error)]
pub enum TctlError {
    /// Wrong or missing arguments, or a request the command cannot carry out.
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Types(#[from] TypesError),
    #[error("cannot reach the auth service at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    /// No auth server answered; the message lists every address tried and why.
    #[error("{0}")]
    AuthUnreachable(String),
    /// The auth service refused or failed the request; its message is user-facing.
    #[error("{0}")]
    Api(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A resource the auth service sent that cannot be decoded.
    #[error("unexpected answer from the auth service: {0}")]
    Protocol(String),
}

impl TctlError {
    pub(crate) fn usage(msg: impl Into<String>) -> Self {
        TctlError::Usage(msg.into())
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        TctlError::Io { what: what.into(), source }
    }
}
