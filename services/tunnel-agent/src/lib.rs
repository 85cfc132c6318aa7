//! The leaf-side reverse-tunnel agent: joins its own cluster and dials out to the root's
//! proxies. The tunnel itself arrives with the trusted-clusters work.
#![forbid(unsafe_code)]

/// Errors of the tunnel agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the reverse tunnel is not implemented in this version")]
    NotImplemented,
}
