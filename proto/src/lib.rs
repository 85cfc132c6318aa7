//! Generated gRPC types and stubs for the Portcullis services.
#![allow(clippy::all, missing_docs)]

/// The auth service API, version 1.
pub mod auth {
    tonic::include_proto!("portcullis.auth.v1");
}
