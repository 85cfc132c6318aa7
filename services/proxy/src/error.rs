//! Errors of the proxy library, each naming what went wrong and, where it helps, what to fix.

use portcullis_rpc::RpcError;
use portcullis_rpc::join::JoinError;

/// Why the proxy could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("joining the cluster: {0}")]
    Join(JoinError),
    #[error("connecting to the auth service: {0}")]
    Rpc(RpcError),
    #[error("no auth server configured (set teleport.auth_servers, or --auth-server, which may be repeated)")]
    NoAuthServer,
    #[error("the proxy identity is unusable: {0}")]
    Identity(String),
    #[error("HTTPS certificate: {0}")]
    Tls(String),
    #[error("HTTPS key pair (key {key}, certificate {cert}): {reason}")]
    KeyPair { key: String, cert: String, reason: String },
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    #[error("the {server} server stopped: {reason}")]
    Server { server: &'static str, reason: String },
}

// The messages above already include their causes, so no `source()` is exposed: error
// reporters that walk the chain would otherwise print every cause twice.

impl From<JoinError> for ProxyError {
    fn from(e: JoinError) -> Self {
        ProxyError::Join(e)
    }
}

impl From<RpcError> for ProxyError {
    fn from(e: RpcError) -> Self {
        ProxyError::Rpc(e)
    }
}

impl ProxyError {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>, error: std::io::Error) -> Self {
        ProxyError::Io { what: what.into(), error }
    }
}
