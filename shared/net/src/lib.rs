//! The accept path every Portcullis listener shares: per-address and total connection caps
//! ([`Gate`]), TCP keep-alives, TLS handshakes under a timeout ([`tls_incoming`]), the SSH
//! pre-authentication deadline ([`PreAuth`]) and the process's descriptor limit.
#![forbid(unsafe_code)]

mod accept;
mod gate;
mod preauth;
mod rlimit;
mod tls;

pub use accept::{GatedListener, configure_socket};
pub use gate::{ConnGuard, Gate, Refusal, open_connections_family, refused_connections_family};
pub use portcullis_config::ConnectionLimits;
pub use preauth::{Cuttable, Expired, PreAuth};
pub use rlimit::raise_fd_limit;
pub use tls::{Guarded, Incoming, tls_incoming};
