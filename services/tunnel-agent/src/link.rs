//! One root cluster's link: keeps a tunnel to every root proxy the proxies announce, finding
//! them through the cluster's `tunnel_addr` (often a load balancer) or their own addresses.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use portcullis_pki::x509::PROXY_SERVER_NAME;
use portcullis_proto::auth::TrustedClusterTarget;
use portcullis_proto::tunnel::ProxyInfo;
use portcullis_rpc::{ClientTls, Trust};
use portcullis_types::HostPort;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::Agent;
use crate::backoff::{Backoff, jitter};
use crate::tunnel::{self, EndReason, Target, TunnelEnd};

/// A tunnel that stayed up this long resets its backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Pause before reconnecting after a proxy asked us to leave (plus jitter of as much).
const DRAIN_DELAY: Duration = Duration::from_secs(1);
/// Attempts to reach one announced proxy before pausing for [`PROXY_COOLDOWN`]: behind a
/// load balancer every attempt may land on a proxy already held. The pause is short so a
/// restarted proxy gets its tunnels back within seconds; jitter spreads many agents out.
const MAX_PROXY_ATTEMPTS: u32 = 8;
const PROXY_COOLDOWN: Duration = Duration::from_secs(2);
/// Longest wait between attempts to reach one particular announced proxy.
const PROXY_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Nothing to do: sleep this long (events wake the link earlier).
const IDLE: Duration = Duration::from_secs(3600);

/// A running link; dropping it stops the link and closes its tunnels.
pub struct LinkHandle {
    target: TrustedClusterTarget,
    task: JoinHandle<()>,
}

impl LinkHandle {
    /// Whether `t` needs no reconnection: same address and same root CA.
    pub fn same_target(&self, t: &TrustedClusterTarget) -> bool {
        self.target.tunnel_addr == t.tunnel_addr && self.target.root_tls_ca_pem == t.root_tls_ca_pem
    }

    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }
}

impl Drop for LinkHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the link to root cluster `target`.
pub fn spawn(agent: Arc<Agent>, target: TrustedClusterTarget) -> LinkHandle {
    // Trust the root's CA only, and (through the proxy server name) only a certificate of
    // role Proxy: another root identity (a node's, an agent's) cannot pose as a root proxy
    // and be sent dials.
    let tls = ClientTls {
        trust: Trust::Cas(target.root_tls_ca_pem.clone()),
        identity: Some((agent.identity.tls_cert_pem.clone(), agent.identity.tls_key_pem.clone())),
        server_name: PROXY_SERVER_NAME.to_string(),
    };
    let shared = Arc::new(Target { name: target.name.clone(), tunnel_addr: target.tunnel_addr.clone(), tls });
    let (events_tx, events) = mpsc::channel(64);
    let link = Link {
        agent,
        target: shared,
        tunnels: JoinSet::new(),
        slots: HashMap::new(),
        next_slot: 0,
        known: BTreeMap::new(),
        any_backoff: Backoff::default(),
        any_at: Instant::now(),
        events_tx,
    };
    LinkHandle { target, task: tokio::spawn(link.run(events)) }
}

/// What a tunnel tells its link.
pub(crate) enum LinkEvent {
    /// The tunnel in `slot` reached proxy `proxy_id`; the link answers whether to keep it
    /// (false: another tunnel already goes to that proxy).
    Welcome { slot: u64, proxy_id: String, reply: oneshot::Sender<bool> },
    /// The root proxies now alive.
    Proxies(Vec<ProxyInfo>),
}

/// Why a tunnel was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    /// Any proxy behind the cluster's tunnel_addr: the first tunnel, and after losing all.
    Any,
    /// One announced proxy not held yet.
    Proxy(String),
}

/// A tunnel being set up or up.
struct Slot {
    want: Want,
    /// Set once the proxy welcomed the tunnel and the link kept it.
    proxy_id: Option<String>,
    task_id: tokio::task::Id,
}

/// A root proxy from the latest `ProxySet`.
struct KnownProxy {
    info: ProxyInfo,
    /// Attempts since the last tunnel to it, counting those that landed elsewhere.
    attempts: u32,
    backoff: Backoff,
    retry_at: Instant,
}

struct Link {
    agent: Arc<Agent>,
    target: Arc<Target>,
    tunnels: JoinSet<(u64, TunnelEnd)>,
    slots: HashMap<u64, Slot>,
    next_slot: u64,
    known: BTreeMap<String, KnownProxy>,
    any_backoff: Backoff,
    any_at: Instant,
    events_tx: mpsc::Sender<LinkEvent>,
}

impl Link {
    async fn run(mut self, mut events: mpsc::Receiver<LinkEvent>) {
        if self.target.tunnel_addr.is_empty() {
            tracing::warn!("trusted cluster {} has no tunnel_addr: cannot connect to it", self.target.name);
            return std::future::pending().await;
        }
        loop {
            let (due, wake) = self.plan(Instant::now());
            for want in due {
                self.start(want);
            }
            let wake = wake.unwrap_or_else(|| Instant::now() + IDLE);
            tokio::select! {
                Some(event) = events.recv() => self.on_event(event),
                Some(done) = self.tunnels.join_next_with_id(), if !self.tunnels.is_empty() => match done {
                    Ok((_, (slot, end))) => self.on_end(slot, end),
                    Err(e) => {
                        // A panicking tunnel task is a bug; forget its slot so the link heals.
                        tracing::error!("a tunnel task to root cluster {} failed: {e}", self.target.name);
                        let id = e.id();
                        self.slots.retain(|_, s| s.task_id != id);
                    }
                },
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// The tunnels to start now, and when to look again.
    fn plan(&self, now: Instant) -> (Vec<Want>, Option<Instant>) {
        let mut due = Vec::new();
        let mut wake: Option<Instant> = None;
        let mut consider = |at: Instant, want: Want| {
            if at <= now {
                due.push(want);
            } else {
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
        };
        if self.slots.is_empty() {
            consider(self.any_at, Want::Any);
            return (due, wake);
        }
        // Announced proxies are sought only while some tunnel is up (the announcement came
        // through it); otherwise the one attempt in flight finds a proxy first.
        if !self.slots.values().any(|s| s.proxy_id.is_some()) {
            return (due, wake);
        }
        for (id, p) in &self.known {
            let held = self.slots.values().any(|s| s.proxy_id.as_deref() == Some(id.as_str()));
            let trying =
                self.slots.values().any(|s| s.proxy_id.is_none() && matches!(&s.want, Want::Proxy(w) if w == id));
            if !held && !trying {
                consider(p.retry_at, Want::Proxy(id.clone()));
            }
        }
        (due, wake)
    }

    /// Where to look for `want`: the proxy's own address on even attempts when it has a
    /// usable one, the cluster's tunnel_addr otherwise (a load balancer may lead there too).
    fn addr_for(&self, want: &Want) -> String {
        if let Want::Proxy(id) = want
            && let Some(p) = self.known.get(id)
            && usable_addr(&p.info.tunnel_addr)
            && p.attempts % 2 == 0
        {
            return p.info.tunnel_addr.clone();
        }
        self.target.tunnel_addr.clone()
    }

    fn start(&mut self, want: Want) {
        let addr = self.addr_for(&want);
        let slot = self.next_slot;
        self.next_slot += 1;
        tracing::debug!("opening a tunnel to root cluster {} at {addr} ({want:?})", self.target.name);
        let fut = tunnel::run(self.agent.clone(), self.target.clone(), addr, slot, self.events_tx.clone());
        let handle = self.tunnels.spawn(async move { (slot, fut.await) });
        self.slots.insert(slot, Slot { want, proxy_id: None, task_id: handle.id() });
    }

    fn on_event(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Welcome { slot, proxy_id, reply } => {
                let duplicate = self.slots.iter().any(|(s, x)| *s != slot && x.proxy_id.as_deref() == Some(&proxy_id));
                let keep = !duplicate && self.slots.contains_key(&slot);
                if keep {
                    if let Some(s) = self.slots.get_mut(&slot) {
                        s.proxy_id = Some(proxy_id.clone());
                    }
                    if let Some(p) = self.known.get_mut(&proxy_id) {
                        p.attempts = 0;
                    }
                }
                let _ = reply.send(keep);
            }
            LinkEvent::Proxies(list) => {
                let now = Instant::now();
                let mut fresh = BTreeMap::new();
                for info in list.into_iter().filter(|p| !p.id.is_empty()) {
                    let entry = match self.known.remove(&info.id) {
                        Some(mut p) => {
                            p.info = info.clone();
                            p
                        }
                        None => {
                            KnownProxy {
                                info: info.clone(),
                                attempts: 0,
                                backoff: Backoff::new(crate::backoff::BASE, PROXY_BACKOFF_MAX),
                                retry_at: now,
                            }
                        }
                    };
                    fresh.insert(info.id, entry);
                }
                tracing::debug!("root cluster {} has proxies {:?}", self.target.name, fresh.keys().collect::<Vec<_>>());
                self.known = fresh;
            }
        }
    }

    fn on_end(&mut self, slot: u64, end: TunnelEnd) {
        let Some(s) = self.slots.remove(&slot) else { return };
        let now = Instant::now();
        let reached = match end.reason {
            EndReason::Duplicate => None,
            _ => end.proxy_id.clone(),
        };
        // A draining proxy stays known: it may come back with the same id (a restart) before
        // the proxy set changes, and the set is only re-sent when it changes. It is retried
        // after the drain delay and dropped when the next proxy set no longer lists it.
        let stable = reached.is_some() && end.up_for >= STABLE_AFTER;
        let backoff = match &s.want {
            Want::Any => Some(&mut self.any_backoff),
            Want::Proxy(id) => self.known.get_mut(id).map(|p| &mut p.backoff),
        };
        let delay = match backoff {
            Some(b) => {
                if stable {
                    b.reset();
                }
                b.next_delay()
            }
            None => crate::backoff::BASE,
        };
        let delay = if end.reason == EndReason::Drained { DRAIN_DELAY + jitter(DRAIN_DELAY) } else { delay };
        let at = now + delay;
        // Whatever ends, the next blind attempt waits too, so a flapping proxy is not hammered.
        self.any_at = self.any_at.max(at);
        if let Want::Proxy(id) = &s.want
            && let Some(p) = self.known.get_mut(id)
        {
            p.retry_at = p.retry_at.max(at);
            if reached.as_deref() != Some(id.as_str()) {
                p.attempts += 1;
                if p.attempts >= MAX_PROXY_ATTEMPTS {
                    tracing::info!(
                        "could not reach root proxy {id} of cluster {} in {} attempts; trying again in {}s",
                        self.target.name,
                        p.attempts,
                        PROXY_COOLDOWN.as_secs()
                    );
                    p.attempts = 0;
                    p.retry_at = now + PROXY_COOLDOWN + jitter(PROXY_COOLDOWN);
                }
            }
        }
        if let Some(id) = &reached
            && let Some(p) = self.known.get_mut(id)
        {
            p.retry_at = p.retry_at.max(at);
        }
    }
}

/// Whether a proxy's announced tunnel address can be dialled as is (a `host:port` address,
/// not a wildcard bind address).
fn usable_addr(addr: &str) -> bool {
    addr.parse::<HostPort>().is_ok_and(|a| !a.ip().is_some_and(|ip| ip.is_unspecified()))
}

#[cfg(test)]
mod tests {
    use super::usable_addr;

    #[test]
    fn wildcard_and_empty_addresses_are_not_dialled() {
        assert!(usable_addr("10.0.0.1:3024"));
        assert!(usable_addr("proxy.example.com:3024"));
        assert!(usable_addr("[::1]:3024"));
        assert!(!usable_addr(""));
        assert!(!usable_addr("0.0.0.0:3024"));
        assert!(!usable_addr("[::]:3024"));
        // Malformed (an IPv6 address needs brackets before a port): the tunnel_addr is used.
        assert!(!usable_addr("proxy:a:3024"));
    }
}
