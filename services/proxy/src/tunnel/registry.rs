//! The map from leaf cluster name to its `LeafActor`. A plain mutex in front of the `Addr`s:
//! lookups are synchronous and short, and the actors remove themselves when they stop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix::{Actor, Addr};
use actix_rt::ArbiterHandle;

use super::TunnelError;
use super::actor::{LeafActor, LeafDeps, TunnelUp};

/// Connected leaves, shared by the tunnel server, the router and the actors themselves.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// cluster -> (generation, actor).
    actors: Mutex<HashMap<String, (u64, Addr<LeafActor>)>>,
    /// Tunnel ids, dial ids, query ids and actor generations: unique per proxy.
    ids: AtomicU64,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.all().into_iter().map(|(n, _)| n).collect();
        f.debug_struct("Registry").field("leaves", &names).finish()
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Addr<LeafActor>)>> {
        self.inner.actors.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh id (never 0).
    pub fn next_id(&self) -> u64 {
        self.inner.ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The live actor of `cluster`.
    pub fn get(&self, cluster: &str) -> Option<Addr<LeafActor>> {
        self.lock().get(cluster).filter(|(_, a)| a.connected()).map(|(_, a)| a.clone())
    }

    /// Every live actor.
    pub fn all(&self) -> Vec<(String, Addr<LeafActor>)> {
        self.lock()
            .iter()
            .filter(|(_, (_, a))| a.connected())
            .map(|(k, (_, a))| (k.clone(), a.clone()))
            .collect()
    }

    /// Forgets `cluster` if its entry is still the actor of `generation`.
    pub fn remove_if(&self, cluster: &str, generation: u64) {
        let mut map = self.lock();
        if map.get(cluster).is_some_and(|(g, _)| *g == generation) {
            map.remove(cluster);
        }
    }

    /// Hands a new tunnel to the leaf's actor, starting one (on `arbiter`) when the leaf has
    /// none. An actor that stops while the tunnel is on its way is replaced.
    pub async fn tunnel_up(
        &self,
        arbiter: &ArbiterHandle,
        deps: &LeafDeps,
        cluster: &str,
        up: TunnelUp,
    ) -> Result<Addr<LeafActor>, TunnelError> {
        for _ in 0..5 {
            let existing = self.lock().get(cluster).filter(|(_, a)| a.connected()).cloned();
            if let Some((generation, addr)) = existing {
                if addr.send(up.clone()).await.is_ok() {
                    return Ok(addr);
                }
                // It stopped (its last tunnel went) between lookup and delivery.
                self.remove_if(cluster, generation);
                continue;
            }
            let mut map = self.lock();
            if map.get(cluster).is_some_and(|(_, a)| a.connected()) {
                // Another tunnel of this leaf started one meanwhile: join it.
                continue;
            }
            let generation = self.next_id();
            let (name, deps, first) = (cluster.to_string(), deps.clone(), up.clone());
            let addr = LeafActor::start_in_arbiter(arbiter, move |_| LeafActor::new(name, generation, deps, first));
            map.insert(cluster.to_string(), (generation, addr.clone()));
            return Ok(addr);
        }
        Err(TunnelError::Offline(cluster.to_string()))
    }
}
