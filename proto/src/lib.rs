//! Generated gRPC types and stubs for the Portcullis services.
#![allow(clippy::all, missing_docs)]

/// Generated code, nested as the proto packages are (the tunnel protocol refers to auth types).
pub mod portcullis {
    pub mod auth {
        pub mod v1 {
            tonic::include_proto!("portcullis.auth.v1");
        }
    }
    pub mod tunnel {
        pub mod v1 {
            tonic::include_proto!("portcullis.tunnel.v1");
        }
    }
}

/// The auth service API, version 1.
pub use portcullis::auth::v1 as auth;
/// The reverse-tunnel protocol between tunnel agents and root proxies, version 1.
pub use portcullis::tunnel::v1 as tunnel;
/// The byte buffer type of tunnel chunks (`Chunk.data`).
pub use prost::bytes::{Bytes, BytesMut};
