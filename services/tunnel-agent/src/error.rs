//! Errors of the tunnel agent, each naming what to fix.

use portcullis_rpc::RpcError;
use portcullis_rpc::join::JoinError;

/// What can stop the tunnel agent. Problems with one root cluster never do: they are
/// logged and retried, since the root may come back.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    // The join error is part of the message rather than a source, so it is said once.
    #[error("cannot join the leaf cluster: {0}")]
    Join(JoinError),
    #[error("no auth server configured (set teleport.auth_servers, or --auth-server, which may be repeated)")]
    NoAuthServer,
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

impl From<JoinError> for AgentError {
    fn from(e: JoinError) -> Self {
        AgentError::Join(e)
    }
}
