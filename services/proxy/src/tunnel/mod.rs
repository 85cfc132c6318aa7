//! The root side of trusted clusters: the reverse-tunnel server leaf agents dial (`:3024`), one
//! actix actor per connected leaf, and the [`Hub`] the rest of the proxy uses to reach them.
//!
//! See docs/tunnel-protocol.md for the wire protocol.

pub mod actor;
pub mod registry;
pub mod server;
pub mod stream;
pub mod tls;
#[cfg(test)]
mod fake_agent;
#[cfg(test)]
mod stack_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::Addr;
use portcullis_proto::auth::{ClusterCa, Proxy};
use portcullis_proto::tunnel::ProxyInfo;
use tokio::sync::{Notify, watch};

pub use actor::LeafActor;
pub use registry::Registry;
pub use stream::DialStream;

use crate::ProxyError;

/// Leaf cluster name -> the PEM TLS CAs its agents' certificates must chain to. Shared with
/// the TLS verifier of the tunnel listener and refreshed from the auth heartbeat.
pub type LeafCas = Arc<RwLock<HashMap<String, Vec<String>>>>;

/// The clocks of the tunnel protocol. Tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// Between heartbeats, both ways (announced to agents in `Welcome`, whole seconds).
    pub heartbeat: Duration,
    /// A tunnel silent this long is dropped (3 heartbeats).
    pub dead_after: Duration,
    /// How long a dial or a node listing may wait for the agent's answer.
    pub answer_timeout: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            heartbeat: Duration::from_secs(5),
            dead_after: Duration::from_secs(15),
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

/// Everything about leaf tunnels the proxy's parts share: the actor registry, the leaf CAs,
/// the set of live root proxies, and wake-ups for the heartbeat loop.
#[derive(Debug)]
pub struct Hub {
    /// This (root) cluster's name.
    pub cluster_name: String,
    /// This proxy's host id.
    pub proxy_id: String,
    pub timings: Timings,
    pub registry: Registry,
    leaf_cas: LeafCas,
    self_info: ProxyInfo,
    proxies: watch::Sender<Vec<ProxyInfo>>,
    /// A tunnel came up or went down: report the counts soon.
    changed: Arc<Notify>,
    /// Something wants fresh leaf CAs from auth now (a new trust, an unknown agent).
    refresh: Arc<Notify>,
    system: actix_rt::System,
    arbiter: actix_rt::ArbiterHandle,
}

impl Hub {
    /// Starts the actor system (on its own thread) for a proxy whose tunnel address is
    /// `tunnel_addr` (may be empty when not known).
    pub fn start(cluster_name: &str, proxy_id: &str, tunnel_addr: &str, timings: Timings) -> Result<Arc<Hub>, ProxyError> {
        let (system, arbiter) = start_actor_system()?;
        let self_info = ProxyInfo { id: proxy_id.to_string(), tunnel_addr: tunnel_addr.to_string() };
        let (proxies, _) = watch::channel(vec![self_info.clone()]);
        Ok(Arc::new(Hub {
            cluster_name: cluster_name.to_string(),
            proxy_id: proxy_id.to_string(),
            timings,
            registry: Registry::default(),
            leaf_cas: LeafCas::default(),
            self_info,
            proxies,
            changed: Arc::new(Notify::new()),
            refresh: Arc::new(Notify::new()),
            system,
            arbiter,
        }))
    }

    /// The shared leaf CA map (for the TLS verifier).
    pub fn leaf_cas(&self) -> LeafCas {
        self.leaf_cas.clone()
    }

    /// Whether `cluster` is a leaf this cluster trusts (connected or not).
    pub fn knows_leaf(&self, cluster: &str) -> bool {
        self.leaf_cas.read().unwrap_or_else(|p| p.into_inner()).contains_key(cluster)
    }

    /// The actor of a connected leaf.
    pub fn leaf(&self, cluster: &str) -> Option<Addr<LeafActor>> {
        self.registry.get(cluster)
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

    /// Replaces the leaf CA map. Leaves no longer trusted (`tctl rm rc/X`) or whose CA
    /// changed lose their tunnels at once; agents of a re-established trust reconnect and are
    /// verified against the new CA.
    pub fn set_leaf_cas(&self, new: HashMap<String, Vec<String>>) {
        let old = {
            let mut cur = self.leaf_cas.write().unwrap_or_else(|p| p.into_inner());
            if *cur == new {
                return;
            }
            std::mem::replace(&mut *cur, new.clone())
        };
        for (cluster, addr) in self.registry.all() {
            let reason = match (old.get(&cluster), new.get(&cluster)) {
                (_, None) => "the trust relationship with this cluster was removed",
                (Some(o), Some(n)) if o != n => "the cluster's certificate authority changed",
                _ => continue,
            };
            tracing::info!(leaf = %cluster, "closing the leaf's tunnels: {reason}");
            addr.do_send(actor::Close { reason: reason.to_string() });
        }
        let added: Vec<_> = new.keys().filter(|k| !old.contains_key(*k)).collect();
        let removed: Vec<_> = old.keys().filter(|k| !new.contains_key(*k)).collect();
        if !added.is_empty() || !removed.is_empty() {
            tracing::info!(?added, ?removed, "trusted leaf clusters changed");
        }
    }

    /// The live root proxies, as agents are told in `ProxySet`.
    pub fn proxy_set(&self) -> watch::Receiver<Vec<ProxyInfo>> {
        self.proxies.subscribe()
    }

    /// Live tunnels per leaf: every trusted leaf (0 when not connected) and every connected one.
    pub async fn tunnel_counts(&self) -> BTreeMap<String, u32> {
        let mut out: BTreeMap<String, u32> = {
            let cas = self.leaf_cas.read().unwrap_or_else(|p| p.into_inner());
            cas.keys().map(|k| (k.clone(), 0)).collect()
        };
        for (cluster, addr) in self.registry.all() {
            let stats = tokio::time::timeout(Duration::from_secs(2), addr.send(actor::Stats)).await;
            let count = match stats {
                Ok(Ok((tunnels, _))) => u32::try_from(tunnels).unwrap_or(u32::MAX),
                // A stopping actor holds no tunnel worth reporting.
                _ => 0,
            };
            out.insert(cluster, count);
        }
        out
    }

    /// Asks every agent to reconnect elsewhere and drops its tunnels (proxy shutdown).
    pub fn drain_all(&self, reason: &str) {
        for (_, addr) in self.registry.all() {
            addr.do_send(actor::Close { reason: reason.to_string() });
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

    pub(crate) fn deps(&self) -> actor::LeafDeps {
        actor::LeafDeps { registry: self.registry.clone(), timings: self.timings, changed: self.changed.clone() }
    }

    pub(crate) fn arbiter(&self) -> &actix_rt::ArbiterHandle {
        &self.arbiter
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        // Stops every leaf actor (their tunnels close) and ends the actor thread.
        self.system.stop();
    }
}

/// Runs an actix `System` on a dedicated thread: actors are `!Send` and live there, while
/// their `Addr`s travel to tonic and russh tasks on the tokio runtime.
fn start_actor_system() -> Result<(actix_rt::System, actix_rt::ArbiterHandle), ProxyError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("leaf-actors".into())
        .spawn(move || {
            let runner = actix_rt::System::new();
            let _ = tx.send((actix_rt::System::current(), actix_rt::Arbiter::current()));
            if let Err(e) = runner.run() {
                tracing::error!("the leaf actor system stopped: {e}");
            }
        })
        .map_err(|e| ProxyError::io("starting the leaf actor thread", e))?;
    rx.recv().map_err(|_| ProxyError::Server { server: "tunnel", reason: "the leaf actor system did not start".into() })
}
