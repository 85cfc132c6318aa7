//! The root side of trusted clusters: the reverse-tunnel server leaf agents dial (`:3024`),
//! one actix actor per trusted leaf (living as long as the trust, tunnels coming and going
//! beneath it), and the [`Hub`] the leaf sites reach them through. Nothing outside `tunnel/`
//! and `site/` sees an actor.
//!
//! See docs/tunnel-protocol.md for the wire protocol.

pub mod actor;
pub mod leaf;
pub mod registry;
pub mod server;
pub mod tls;
#[cfg(test)]
mod fake_agent;
#[cfg(test)]
mod stack_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use portcullis_proto::auth::{ClusterCa, Proxy};
use portcullis_proto::tunnel::ProxyInfo;
use tokio::sync::{Notify, watch};

pub use leaf::{DialTarget, Leaf};
pub use registry::Registry;
pub use portcullis_tunnel::DialStream;

use crate::ProxyError;

/// Leaf cluster name -> the PEM TLS CAs its agents' certificates must chain to. Shared with
/// the TLS verifier of the tunnel listener and refreshed from the auth heartbeat.
pub type LeafCas = Arc<RwLock<HashMap<String, Vec<String>>>>;

/// The clocks of the tunnel protocol. Tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// Between heartbeats, both ways (announced to agents in `Welcome`, whole seconds).
    pub heartbeat: Duration,
    /// A tunnel silent this long is dropped ([`portcullis_tunnel::MISSED_HEARTBEATS`]).
    pub dead_after: Duration,
    /// How long a dial or a node listing may wait for the agent's answer.
    pub answer_timeout: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            heartbeat: portcullis_tunnel::DEFAULT_HEARTBEAT,
            dead_after: portcullis_tunnel::dead_after(portcullis_tunnel::DEFAULT_HEARTBEAT),
            answer_timeout: Duration::from_secs(10),
        }
    }
}

/// Why something sent through a tunnel failed. The messages are shown to users.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TunnelError {
    #[error("cluster {0:?} is offline: no reverse tunnel from it is connected to this proxy")]
    Offline(String),
    #[error("cluster {cluster:?} did not answer within {secs}s")]
    Timeout { cluster: String, secs: u64 },
    #[error("the reverse tunnel from cluster {0:?} closed before it answered")]
    Closed(String),
    /// The leaf refused or failed the dial; the reason is the agent's.
    #[error("{0}")]
    DialFailed(String),
    /// The leaf could not list its nodes; the reason is the agent's.
    #[error("{0}")]
    Leaf(String),
    #[error("no dial with id {0} is waiting for a connection")]
    UnknownDial(u64),
}

/// Everything about leaf tunnels the proxy's parts share: the trusted leaves (each with its
/// actor), the leaf CAs, the set of live root proxies, and wake-ups for the heartbeat loop.
#[derive(Debug)]
pub struct Hub {
    /// This (root) cluster's name.
    pub cluster_name: String,
    /// This proxy's host id.
    pub proxy_id: String,
    pub timings: Timings,
    pub registry: Registry,
    ids: Arc<leaf::Ids>,
    leaf_cas: LeafCas,
    self_info: ProxyInfo,
    proxies: watch::Sender<Vec<ProxyInfo>>,
    /// A tunnel came up or went down: report the counts soon.
    changed: Arc<Notify>,
    /// Something wants fresh leaf CAs from auth now (a new trust, an unknown agent).
    refresh: Arc<Notify>,
    system: actix_rt::System,
    /// One per core; a leaf's actor lives on the one its name hashes to.
    arbiters: Vec<actix_rt::ArbiterHandle>,
}

impl Hub {
    /// Starts the actor system (one arbiter thread per core) for a proxy whose tunnel address
    /// is `tunnel_addr` (may be empty when not known).
    pub fn start(cluster_name: &str, proxy_id: &str, tunnel_addr: &str, timings: Timings) -> Result<Arc<Hub>, ProxyError> {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let (system, arbiters) = start_actor_system(cores)?;
        let self_info = ProxyInfo { id: proxy_id.to_string(), tunnel_addr: tunnel_addr.to_string() };
        let (proxies, _) = watch::channel(vec![self_info.clone()]);
        Ok(Arc::new(Hub {
            cluster_name: cluster_name.to_string(),
            proxy_id: proxy_id.to_string(),
            timings,
            registry: Registry::default(),
            ids: Arc::default(),
            leaf_cas: LeafCas::default(),
            self_info,
            proxies,
            changed: Arc::new(Notify::new()),
            refresh: Arc::new(Notify::new()),
            system,
            arbiters,
        }))
    }

    /// The shared leaf CA map (for the TLS verifier).
    pub fn leaf_cas(&self) -> LeafCas {
        self.leaf_cas.clone()
    }

    /// Whether `cluster` is a leaf this cluster trusts (connected or not).
    pub fn knows_leaf(&self, cluster: &str) -> bool {
        self.registry.get(cluster).is_some()
    }

    /// A trusted leaf (online or not).
    pub fn leaf(&self, cluster: &str) -> Option<Leaf> {
        self.registry.get(cluster)
    }

    /// Whether a trusted leaf has at least one live tunnel.
    pub fn is_online(&self, cluster: &str) -> bool {
        self.registry.get(cluster).is_some_and(|l| l.is_online())
    }

    /// A fresh id for a tunnel (never 0).
    pub(crate) fn next_id(&self) -> u64 {
        self.ids.next()
    }

    /// Adopts what an auth heartbeat answer says about leaves and proxies.
    pub fn apply_heartbeat(&self, leaf_cas: &[ClusterCa], proxies: &[Proxy]) {
        let map = leaf_cas.iter().map(|c| (c.cluster_name.clone(), c.tls_ca_pem.clone())).collect();
        self.set_leaf_cas(map);
        let mut set: Vec<ProxyInfo> =
            proxies.iter().map(|p| ProxyInfo { id: p.id.clone(), tunnel_addr: p.tunnel_addr.clone() }).collect();
        if !set.iter().any(|p| p.id == self.self_info.id) {
            set.insert(0, self.self_info.clone());
        }
        self.proxies.send_if_modified(|cur| {
            let modified = *cur != set;
            if modified {
                *cur = set;
            }
            modified
        });
    }

    /// Replaces the leaf CA map. A newly trusted leaf gets its actor before its CA is
    /// published (so an agent the verifier lets in finds it); a leaf no longer trusted
    /// (`tctl rm rc/X`) loses its tunnels and its actor, and one whose CA changed its tunnels:
    /// agents of a re-established trust reconnect and are verified against the new CA.
    pub fn set_leaf_cas(&self, new: HashMap<String, Vec<String>>) {
        let old = {
            let mut cur = self.leaf_cas.write().unwrap_or_else(|p| p.into_inner());
            if *cur == new {
                return;
            }
            for name in new.keys().filter(|k| !cur.contains_key(*k)) {
                self.registry.insert(self.start_leaf(name));
            }
            std::mem::replace(&mut *cur, new.clone())
        };
        for (cluster, pems) in &old {
            let reason = match new.get(cluster) {
                None => "the trust relationship with this cluster was removed",
                Some(n) if n != pems => "the cluster's certificate authority changed",
                _ => continue,
            };
            let leaf = if new.contains_key(cluster) { self.registry.get(cluster) } else { self.registry.remove(cluster) };
            if let Some(leaf) = leaf {
                if leaf.is_online() {
                    tracing::info!(leaf = %cluster, "closing the leaf's tunnels: {reason}");
                }
                leaf.close(reason, !new.contains_key(cluster));
            }
        }
        let added: Vec<_> = new.keys().filter(|k| !old.contains_key(*k)).collect();
        let removed: Vec<_> = old.keys().filter(|k| !new.contains_key(*k)).collect();
        if !added.is_empty() || !removed.is_empty() {
            tracing::info!(?added, ?removed, "trusted leaf clusters changed");
        }
    }

    /// The leaf `name` with its actor on the arbiter its name hashes to.
    fn start_leaf(&self, name: &str) -> Leaf {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut h);
        let i = usize::try_from(h.finish() % self.arbiters.len().max(1) as u64).unwrap_or(0);
        Leaf::start(name, self.timings, self.ids.clone(), self.changed.clone(), &self.arbiters[i])
    }

    /// The live root proxies, as agents are told in `ProxySet`.
    pub fn proxy_set(&self) -> watch::Receiver<Vec<ProxyInfo>> {
        self.proxies.subscribe()
    }

    /// Live tunnels per trusted leaf (0 when not connected).
    pub fn tunnel_counts(&self) -> BTreeMap<String, u32> {
        self.registry
            .all()
            .into_iter()
            .map(|l| (l.name().to_string(), u32::try_from(l.stats().0).unwrap_or(u32::MAX)))
            .collect()
    }

    /// Asks every agent to reconnect elsewhere and drops its tunnels (proxy shutdown); the
    /// actors stay until the hub goes.
    pub fn drain_all(&self, reason: &str) {
        for leaf in self.registry.online() {
            leaf.close(reason, false);
        }
    }

    /// Wakes the heartbeat loop to report tunnel counts (debounced there).
    pub fn notify_changed(&self) {
        self.changed.notify_one();
    }

    /// Resolves after [`Hub::notify_changed`].
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Wakes the heartbeat loop for an immediate heartbeat (fresh leaf CAs).
    pub fn want_refresh(&self) {
        self.refresh.notify_one();
    }

    /// Resolves after [`Hub::want_refresh`].
    pub async fn refresh_wanted(&self) {
        self.refresh.notified().await
    }

    pub(crate) fn refresh_handle(&self) -> Arc<Notify> {
        self.refresh.clone()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        // Stops every leaf actor (their tunnels close) and ends the actor threads.
        self.system.stop();
    }
}

/// Runs an actix `System` on a dedicated thread with `arbiters` arbiters (threads) beside
/// it: actors are `!Send` and live there, while the leaf handles travel to tonic and russh
/// tasks on the tokio runtime.
fn start_actor_system(arbiters: usize) -> Result<(actix_rt::System, Vec<actix_rt::ArbiterHandle>), ProxyError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("leaf-actors".into())
        .spawn(move || {
            let runner = actix_rt::System::new();
            let handles: std::io::Result<Vec<_>> =
                (0..arbiters.max(1)).map(|_| actix_rt::Arbiter::try_new().map(|a| a.handle())).collect();
            let failed = handles.is_err();
            let _ = tx.send(handles.map(|h| (actix_rt::System::current(), h)));
            if failed {
                return;
            }
            if let Err(e) = runner.run() {
                tracing::error!("the leaf actor system stopped: {e}");
            }
        })
        .map_err(|e| ProxyError::io("starting the leaf actor thread", e))?;
    match rx.recv() {
        Ok(Ok(started)) => Ok(started),
        Ok(Err(e)) => Err(ProxyError::io("starting the leaf actor threads", e)),
        Err(_) => Err(ProxyError::Server { server: "tunnel", reason: "the leaf actor system did not start".into() }),
    }
}
