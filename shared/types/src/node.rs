//! Node heartbeats: one SSH server, named by its host UUID, with labels and an address.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::error::TypesError;
use crate::resource::{Kind, Metadata, validate_envelope};

pub const VERSIONS: &[&str] = &["v2"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Node {
    pub kind: String,
    pub version: String,
    /// `name` is the host UUID; `labels` are the node's static labels.
    pub metadata: Metadata,
    pub spec: NodeSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub hostname: String,
    /// `host:port` the proxy dials; empty for tunnel-only nodes.
    #[serde(default)]
    pub addr: String,
    #[serde(default)]
    pub use_tunnel: bool,
    #[serde(default)]
    pub version: String,
}

impl Node {
    pub fn new(
        host_uuid: impl Into<String>,
        hostname: impl Into<String>,
        addr: impl Into<String>,
        labels: BTreeMap<String, String>,
    ) -> Self {
        let mut metadata = Metadata::new(host_uuid);
        metadata.labels = labels;
        Node {
            kind: Kind::Node.as_str().into(),
            version: Kind::Node.default_version().into(),
            metadata,
            spec: NodeSpec {
                hostname: hostname.into(),
                addr: addr.into(),
                use_tunnel: false,
                version: String::new(),
            },
        }
    }

    pub fn validate(&self) -> Result<(), TypesError> {
        validate_envelope(Kind::Node, &self.kind, &self.version, &self.metadata)?;
        if self.spec.hostname.trim().is_empty() {
            return Err(TypesError::invalid(
                "node",
                &self.metadata.name,
                "spec.hostname must not be empty",
            ));
        }
        Ok(())
    }
}
