//! `cert_authority`: the public keys of a cluster's user, host or TLS certificate authority.

use serde::{Deserialize, Serialize};

use crate::error::TypesError;
use crate::resource::{Kind, Metadata, validate_envelope};

pub const VERSIONS: &[&str] = &["v2"];

/// Accepted values of `spec.type`.
pub const CA_TYPES: &[&str] = &["user", "host", "tls"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CertAuthority {
    pub kind: String,
    pub version: String,
    pub metadata: Metadata,
    pub spec: CertAuthoritySpec,
}

/// Only public parts: private keys never leave the auth service's storage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertAuthoritySpec {
    pub cluster_name: String,
    /// `user`, `host` or `tls`.
    pub r#type: String,
    /// Inactive CAs (trust disabled) are kept but not trusted.
    #[serde(default = "crate::serde_util::default_true")]
    pub active: bool,
    /// authorized_keys lines (SSH CAs) or PEM certificates (TLS CA).
    #[serde(default, deserialize_with = "crate::serde_util::string_or_vec")]
    pub checking_keys: Vec<String>,
}

impl CertAuthority {
    pub fn new(
        cluster_name: impl Into<String>,
        ca_type: impl Into<String>,
        checking_keys: Vec<String>,
    ) -> Self {
        let cluster_name = cluster_name.into();
        CertAuthority {
            kind: Kind::CertAuthority.as_str().into(),
            version: Kind::CertAuthority.default_version().into(),
            metadata: Metadata::new(cluster_name.clone()),
            spec: CertAuthoritySpec {
                cluster_name,
                r#type: ca_type.into(),
                active: true,
                checking_keys,
            },
        }
    }

    pub fn validate(&self) -> Result<(), TypesError> {
        validate_envelope(
            Kind::CertAuthority,
            &self.kind,
            &self.version,
            &self.metadata,
        )?;
        let invalid = |m: String| TypesError::invalid("cert_authority", &self.metadata.name, m);
        if self.spec.cluster_name.trim().is_empty() {
            return Err(invalid("spec.cluster_name must not be empty".into()));
        }
        if !CA_TYPES.contains(&self.spec.r#type.as_str()) {
            return Err(invalid(format!(
                "spec.type must be one of user, host, tls, got \"{}\"",
                self.spec.r#type
            )));
        }
        Ok(())
    }
}
