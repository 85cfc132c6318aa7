//! Portcullis resource types and access-control logic: pure data and decisions, no I/O.
#![forbid(unsafe_code)]

pub mod addr;
pub mod cert_authority;
pub mod duration;
pub mod error;
pub mod labels;
pub mod node;
pub mod rbac;
pub mod remote_cluster;
pub mod resource;
pub mod role;
pub mod role_map;
pub mod secret;
pub mod rule;
pub mod system_role;
pub mod token;
pub mod traits;
pub mod trusted_cluster;
pub mod user;
pub mod webapi;

mod serde_util;

pub use addr::{HostPort, HostPortError};
pub use cert_authority::{CA_TYPES, CertAuthority, CertAuthoritySpec};
pub use duration::{format_duration_go, format_expiry, parse_duration};
pub use error::TypesError;
pub use labels::{LabelValues, Labels, WILDCARD, format_labels, match_labels, parse_labels_arg};
pub use node::{Node, NodeSpec};
pub use rbac::{AccessChecker, AccessDenied};
pub use remote_cluster::{RemoteCluster, RemoteClusterStatus};
pub use resource::{Kind, Metadata, Resource, parse_resource_ref, parse_yaml_documents};
pub use role::{Role, RoleConditions, RoleOptions, RoleSpec, editor_rules, preset_roles};
pub use role_map::{RoleMapping, map_roles, validate_role_map};
pub use rule::{Permission, Rule};
pub use secret::Secret;
pub use system_role::SystemRole;
pub use token::{ProvisionToken, ProvisionTokenSpec};
pub use traits::{Traits, expand_template, expand_values};
pub use trusted_cluster::{TrustedCluster, TrustedClusterSpec, validate_cluster_name};
pub use user::{User, UserSpec};
