//! `remote_cluster` (kept on the root): a connected leaf, its labels and connection status.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::TypesError;
use crate::resource::{Kind, Metadata, validate_envelope};

pub const VERSIONS: &[&str] = &["v3"];

pub const ONLINE: &str = "online";
pub const OFFLINE: &str = "offline";

/// No `spec`: labels live in metadata and the rest is status. A `spec` in input is ignored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RemoteCluster {
    pub kind: String,
    pub version: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub status: RemoteClusterStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RemoteClusterStatus {
    /// `online` or `offline`.
    #[serde(default = "offline")]
    pub connection: String,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_heartbeat: Option<OffsetDateTime>,
}

fn offline() -> String {
    OFFLINE.to_string()
}

impl Default for RemoteClusterStatus {
    fn default() -> Self {
        RemoteClusterStatus {
            connection: offline(),
            last_heartbeat: None,
        }
    }
}

impl RemoteCluster {
    pub fn new(leaf_cluster: impl Into<String>) -> Self {
        RemoteCluster {
            kind: Kind::RemoteCluster.as_str().into(),
            version: Kind::RemoteCluster.default_version().into(),
            metadata: Metadata::new(leaf_cluster),
            status: RemoteClusterStatus::default(),
        }
    }

    pub fn is_online(&self) -> bool {
        self.status.connection == ONLINE
    }

    pub fn validate(&self) -> Result<(), TypesError> {
        validate_envelope(
            Kind::RemoteCluster,
            &self.kind,
            &self.version,
            &self.metadata,
        )?;
        // The name is a leaf's cluster name: the same DNS rule as at registration.
        crate::trusted_cluster::validate_cluster_name(&self.metadata.name)?;
        if self.status.connection != ONLINE && self.status.connection != OFFLINE {
            return Err(TypesError::invalid(
                "remote_cluster",
                &self.metadata.name,
                format!(
                    "status.connection must be \"online\" or \"offline\", got \"{}\"",
                    self.status.connection
                ),
            ));
        }
        Ok(())
    }
}
