//! gRPC plumbing shared by every process: mutual-TLS clients and servers, the caller's
//! identity, and logging set-up.
#![forbid(unsafe_code)]

pub mod audit_spool;
pub mod client;
pub mod failover;
pub mod join;
pub mod peer;
pub mod rate_limit;
pub mod server;
pub mod ssh_ident;
pub mod telemetry;
mod traced;
pub mod verify;

pub use client::{ClientTls, Trust, connect, connect_auth, connect_auth_lazy, connect_lazy};

/// A TCP stream with a read buffer under TLS. rustls reads the socket 4 KiB at a time; with
/// reads of a whole TLS record (16 KiB and a little framing) underneath, bulk streams
/// (tunnelled sessions) cost a quarter of the `recv` calls. Writes pass straight through.
pub type ReadBuffered = tokio::io::BufReader<tokio::net::TcpStream>;

/// Read buffer under TLS: one full TLS record. Not larger: the buffer is allocated (and
/// zeroed) per connection, and a root proxy holds a connection per leaf tunnel.
const TLS_READ_BUFFER: usize = 17 * 1024;

/// Wraps `tcp` for TLS; see [`ReadBuffered`].
pub fn read_buffered(tcp: tokio::net::TcpStream) -> ReadBuffered {
    tokio::io::BufReader::with_capacity(TLS_READ_BUFFER, tcp)
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

/// The rustls crypto provider used everywhere (ring, per DEPENDENCIES.md).
pub fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide rustls provider; harmless when already done.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
