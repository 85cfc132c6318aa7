//! gRPC plumbing shared by every process: mutual-TLS clients and servers, the caller's
//! identity.
#![forbid(unsafe_code)]

pub mod audit_spool;
pub mod client;
pub mod failover;
pub mod join;
pub mod peer;
pub mod rate_limit;
mod read_buffer;
pub mod server;
pub mod ssh_ident;
mod traced;

pub use client::{ClientTls, Trust, connect, connect_auth, connect_auth_lazy, connect_lazy};

pub use read_buffer::ReadBuffered;

/// Wraps `tcp` for TLS; see [`ReadBuffered`].
pub fn read_buffered(tcp: tokio::net::TcpStream) -> ReadBuffered {
    ReadBuffered::new(tcp)
}

/// Largest HTTP/2 frame a Portcullis gRPC endpoint accepts: one 64 KiB tunnel chunk plus its
/// framing fits in one frame.
pub const MAX_FRAME_SIZE: u32 = 128 * 1024;
pub use peer::peer_identity;
/// The gRPC channel every client uses: tonic's, plus trace-context propagation.
pub use traced::TracedChannel as Channel;

/// Errors setting up RPC connections.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("cannot reach {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// Every auth server failed; the message lists each address tried and why.
    #[error("{0}")]
    Unreachable(String),
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error(transparent)]
    Pki(#[from] portcullis_pki::PkiError),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    AuditSpool(#[from] audit_spool::SpoolError),
}

/// The rustls crypto provider used everywhere (ring); it lives with the verifiers.
pub use portcullis_pki::verify::crypto_provider;

/// Installs ring as the process-wide rustls provider; harmless when already done.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
