//! The trusted leaves by name, each with its [`Leaf`] handle (and so its actor). Entries
//! follow the leaf CA map from the auth heartbeat only: added when a trust appears, removed
//! when it goes. Tunnels never add or remove entries.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::leaf::Leaf;

/// Trusted leaves, shared by the hub and the tunnel server.
#[derive(Clone, Default)]
pub struct Registry {
    leaves: Arc<RwLock<HashMap<String, Leaf>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.all().into_iter().map(|l| l.name().to_string()).collect();
        f.debug_struct("Registry").field("leaves", &names).finish()
    }
}

impl Registry {
    /// The leaf `cluster`, if trusted.
    pub fn get(&self, cluster: &str) -> Option<Leaf> {
        self.leaves.read().unwrap_or_else(|p| p.into_inner()).get(cluster).cloned()
    }

    /// Every trusted leaf.
    pub fn all(&self) -> Vec<Leaf> {
        self.leaves.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// The leaves with at least one live tunnel.
    pub fn online(&self) -> Vec<Leaf> {
        self.all().into_iter().filter(Leaf::is_online).collect()
    }

    pub(super) fn insert(&self, leaf: Leaf) {
        self.leaves.write().unwrap_or_else(|p| p.into_inner()).insert(leaf.name().to_string(), leaf);
    }

    pub(super) fn remove(&self, cluster: &str) -> Option<Leaf> {
        self.leaves.write().unwrap_or_else(|p| p.into_inner()).remove(cluster)
    }
}
