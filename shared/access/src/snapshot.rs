//! The access snapshot: what a proxy, node or agent needs to decide access without auth.

use std::collections::BTreeMap;

use portcullis_types::{Node, RemoteCluster, Role, RoleMapping};
use serde::{Deserialize, Serialize};

/// What a proxy, node or agent needs to decide access without asking auth. Public material only:
/// never a private key, password hash or token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccessSnapshot {
    pub cluster_name: String,
    /// Backend revision this snapshot reflects (grows; a cache never replaces a newer one).
    pub revision: u64,
    /// Own SSH user CA public keys (OpenSSH lines), host CA keys, TLS CA certs (PEM).
    pub user_cas: Vec<String>,
    pub host_cas: Vec<String>,
    pub tls_cas: Vec<String>,
    pub roles: Vec<Role>,
    /// This cluster's users and the roles each holds NOW (a removed role or deleted user stops
    /// working before the certificate expires).
    pub users: BTreeMap<String, Vec<String>>,
    /// Admin locks (`tctl users lock`): a locked user's certificates are refused everywhere.
    pub locks: Vec<UserLock>,
    /// Root clusters this cluster trusts (set on a leaf): their public CAs, active flag, role map.
    pub trusted_roots: Vec<TrustedRoot>,
    /// Leaf clusters (set on a root), as `tctl get rc` shows them.
    pub remote_clusters: Vec<RemoteCluster>,
    /// Nodes (proxies and agents only; empty for nodes).
    pub nodes: Vec<Node>,
}

/// An admin lock on a user (`tctl users lock`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UserLock {
    pub user: String,
    /// Unix seconds the lock ends; `None` locks until an admin removes it.
    pub until: Option<i64>,
    pub message: String,
}

impl UserLock {
    /// Whether the lock holds at `now` (unix seconds).
    pub fn is_active(&self, now: i64) -> bool {
        self.until.is_none_or(|u| u > now)
    }
}

/// A root cluster this (leaf) cluster trusts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrustedRoot {
    pub name: String,
    /// False once `enabled: false` is set on the trusted_cluster: its certificates are refused.
    pub active: bool,
    pub ssh_user_cas: Vec<String>,
    pub ssh_host_cas: Vec<String>,
    pub tls_cas: Vec<String>,
    pub role_map: Vec<RoleMapping>,
}

impl AccessSnapshot {
    /// A role by name.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.iter().find(|r| r.metadata.name == name)
    }

    /// A trusted root by name.
    pub fn trusted_root(&self, name: &str) -> Option<&TrustedRoot> {
        self.trusted_roots.iter().find(|r| r.name == name)
    }

    /// The admin lock holding `user` at `now`, if any.
    pub fn active_lock(&self, user: &str, now: i64) -> Option<&UserLock> {
        self.locks.iter().find(|l| l.user == user && l.is_active(now))
    }

    /// The snapshot as JSON (what `WatchAccess` sends and caches store).
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Reads a snapshot from JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
