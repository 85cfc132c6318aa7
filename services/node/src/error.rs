//! Errors of the node service, each naming what went wrong.

use portcullis_rpc::RpcError;
use portcullis_rpc::join::JoinError;

/// What can stop the node service.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot join the cluster: {0}")]
    Join(#[from] JoinError),
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("no auth server configured (set teleport.auth_servers, or --auth-server, which may be repeated)")]
    NoAuthServer,
    #[error("the node identity is unusable: {0}")]
    Identity(#[from] portcullis_pki::PkiError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("SSH: {0}")]
    Ssh(#[from] russh::Error),
}
