//! Access decisions over a snapshot of public cluster state, shared by auth and the caches.
#![forbid(unsafe_code)]

pub mod cache;
pub mod decide;
pub mod error;
pub mod resolve;
pub mod snapshot;

pub use decide::{
    authorize_ssh, authorize_ssh_at, nodes_visible_to, remote_checker, remote_clusters_visible_to, ssh_user_checker, user_checker,
    verify_user_tls,
};
pub use cache::{AccessCache, CacheStatus};
pub use error::AccessError;
pub use resolve::{resolve_node, to_proto_node};
pub use snapshot::{AccessSnapshot, TrustedRoot, UserLock};

#[cfg(test)]
mod tests;
