//! Errors of the proxy library, each naming what went wrong and, where it helps, what to fix.

use portcullis_rpc::RpcError;
use portcullis_rpc::join::JoinError;

/// Why the proxy could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("joining the cluster: {0}")]
    Join(#[from] JoinError),
    #[error("connecting to the auth service: {0}")]
    Rpc(#[from] RpcError),
    #[error("no auth server configured (set teleport.auth_server or --auth-server)")]
    NoAuthServer,
    #[error("the proxy identity is unusable: {0}")]
    Identity(String),
    #[error("HTTPS certificate: {0}")]
    Tls(String),
    #[error("HTTPS key pair (key {key}, certificate {cert}): {reason}")]
    KeyPair { key: String, cert: String, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the {server} server stopped: {reason}")]
    Server { server: &'static str, reason: String },
}

impl ProxyError {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        ProxyError::Io { what: what.into(), source }
    }
}
