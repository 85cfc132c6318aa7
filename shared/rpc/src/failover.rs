//! One auth channel over every configured auth address: calls go round-robin over the
//! servers that answer, a call that fails before any response arrives is sent again to
//! another server, and a dead server is skipped while a background probe waits for it.

mod dial;
mod replay;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use portcullis_types::{HostPort, HostPortError};
use rustls_pki_types::ServerName;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};

use crate::{ClientTls, RpcError};
use dial::{Dialer, reason, secs};
use replay::Replay;

/// A server that accepts but completes neither TCP nor TLS in this long counts as dead.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// While a call waits on a connection that has gone quiet this long, HTTP/2 pings it...
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_millis(500);
/// ...and gives the connection up (and the call moves on) when no answer comes in this long.
/// Together they bound failover from a silent server to well under 2 s.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(1);
/// A name is resolved again no more often than this (DNS stays cheap under a storm of failures).
const RESOLVE_EVERY: Duration = Duration::from_secs(1);
/// First resolution of a name may take this long (a slow DNS server is not a dead auth).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Probes of a dead server start this soon after it failed and back off to the maximum.
const PROBE_FIRST: Duration = Duration::from_millis(250);
const PROBE_MAX: Duration = Duration::from_secs(4);

/// How every "auth is unreachable" message begins, so callers can recognise it.
pub const UNREACHABLE: &str = "the auth service is unreachable";

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// What a failover call returns.
pub(crate) type CallFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

/// Turns a host name into addresses; tests inject names with several addresses.
pub trait Resolve: Send + Sync + 'static {
    fn resolve(&self, host: &str, port: u16) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>;
}

/// The system resolver (`getaddrinfo` through tokio).
struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>> {
        let host = host.to_string();
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), port)).await?.collect()) })
    }
}

/// One configured address, e.g. `auth-a:3025`.
struct Target {
    configured: String,
    host: String,
    port: u16,
    /// Set when the host is an IP address: nothing to resolve.
    literal: Option<SocketAddr>,
    /// Serialises resolutions of this name, so concurrent first calls resolve it once.
    resolving: tokio::sync::Mutex<()>,
}

/// What is known about one target now.
#[derive(Default)]
struct TargetState {
    backends: Vec<Arc<Backend>>,
    resolved_at: Option<Instant>,
    resolve_error: Option<String>,
}

/// One address a target resolved to, with its own tonic channel.
struct Backend {
    addr: SocketAddr,
    channel: Channel,
    health: Mutex<Health>,
}

enum Health {
    Up,
    Down { reason: String, probing: bool },
}

impl Backend {
    fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_up(&self) -> bool {
        matches!(*self.health(), Health::Up)
    }
}

struct Shared {
    targets: Vec<Target>,
    states: Mutex<Vec<TargetState>>,
    dialer: Dialer,
    resolver: Arc<dyn Resolve>,
    next: AtomicUsize,
}

/// A channel to whichever auth servers answer. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Failover {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Failover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addrs: Vec<&str> = self.shared.targets.iter().map(|t| t.configured.as_str()).collect();
        f.debug_struct("Failover").field("addrs", &addrs).finish()
    }
}

/// Splits `host:port` (`[v6]:port` too); the port is required.
fn split_addr(addr: &str) -> Result<(String, u16), RpcError> {
    let bad = |why: &str| RpcError::Connect { addr: addr.to_string(), reason: why.to_string() };
    let parsed = addr.parse::<HostPort>().map_err(|e| match e {
        HostPortError::BadPort { .. } => bad("the port is not a number from 1 to 65535"),
        _ => bad("expected host:port"),
    })?;
    match parsed.port() {
        Some(port) if port != 0 => Ok((parsed.host().to_string(), port)),
        Some(_) => Err(bad("the port is not a number from 1 to 65535")),
        None => Err(bad("expected host:port")),
    }
}

impl Failover {
    /// A channel over `addrs` (each `host:port`); connects on first use.
    pub fn new(addrs: &[String], tls: &ClientTls) -> Result<Self, RpcError> {
        Self::with_resolver(addrs, tls, Arc::new(SystemResolver))
    }

    /// [`Failover::new`] with a chosen resolver.
    pub fn with_resolver(addrs: &[String], tls: &ClientTls, resolver: Arc<dyn Resolve>) -> Result<Self, RpcError> {
        if addrs.is_empty() {
            return Err(RpcError::Connect { addr: String::new(), reason: "no auth server address given".into() });
        }
        let mut targets = Vec::new();
        for a in addrs {
            let (host, port) = split_addr(a)?;
            let literal = host.parse::<std::net::IpAddr>().ok().map(|ip| SocketAddr::new(ip, port));
            targets.push(Target { configured: a.trim().to_string(), host, port, literal, resolving: Default::default() });
        }
        let name = ServerName::try_from(tls.server_name.clone()).map_err(|e| RpcError::Tls(e.to_string()))?;
        let dialer = Dialer { cfg: Arc::new(tls.rustls_config()?), name, timeout: CONNECT_TIMEOUT };
        let states = Mutex::new(targets.iter().map(|_| TargetState::default()).collect());
        Ok(Failover {
            shared: Arc::new(Shared { targets, states, dialer, resolver, next: AtomicUsize::new(0) }),
        })
    }

    /// The configured addresses, comma-separated (for messages).
    pub fn addrs(&self) -> String {
        self.shared.targets.iter().map(|t| t.configured.as_str()).collect::<Vec<_>>().join(",")
    }

    /// Connects to one server now (TCP and TLS), trying each in turn, so a one-shot
    /// client reports an unreachable auth before doing anything else.
    pub async fn check(&self) -> Result<(), RpcError> {
        self.shared.ensure_resolved().await;
        for b in self.shared.backends() {
            match self.shared.dialer.dial(b.addr).await {
                Ok(_) => {
                    *b.health() = Health::Up;
                    return Ok(());
                }
                Err(e) => self.shared.mark_down(&b, reason(&e)),
            }
        }
        Err(RpcError::Unreachable(self.shared.unreachable()))
    }

    /// Sends one request to a live server, moving to the next one when a server fails
    /// before answering.
    pub(crate) fn call(&self, req: http::Request<Body>) -> CallFuture {
        let shared = self.shared.clone();
        Box::pin(async move { shared.dispatch(req).await })
    }
}

impl Shared {
    fn states(&self) -> MutexGuard<'_, Vec<TargetState>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every backend, in configured order.
    fn backends(&self) -> Vec<Arc<Backend>> {
        self.states().iter().flat_map(|s| s.backends.iter().cloned()).collect()
    }

    /// Makes sure there is something to call: names never resolved are resolved now (all at
    /// once); names that failed to resolve are retried in the background, or now when no
    /// address at all is known, so one broken name never holds up calls to the others.
    async fn ensure_resolved(self: &Arc<Self>) {
        let (mut never, mut stale) = (Vec::new(), Vec::new());
        for (i, st) in self.states().iter().enumerate() {
            match st.resolved_at {
                None => never.push(i),
                Some(at) if st.backends.is_empty() && at.elapsed() >= RESOLVE_EVERY => stale.push(i),
                Some(_) => {}
            }
        }
        if !stale.is_empty() && self.backends().is_empty() {
            never.append(&mut stale);
        }
        let mut set = tokio::task::JoinSet::new();
        for i in never {
            let me = self.clone();
            set.spawn(async move { me.resolve(i).await });
        }
        for i in stale {
            let me = self.clone();
            tokio::spawn(async move { me.resolve(i).await });
        }
        while set.join_next().await.is_some() {}
    }

    /// Resolves the targets that were never resolved (or failed to), or all of them when
    /// `again` (rate-limited by [`RESOLVE_EVERY`]).
    async fn resolve_all(&self, again: bool) {
        for i in 0..self.targets.len() {
            let due = {
                let st = &self.states()[i];
                match st.resolved_at {
                    None => true,
                    Some(at) => (again || st.backends.is_empty()) && at.elapsed() >= RESOLVE_EVERY,
                }
            };
            if due {
                self.resolve(i).await;
            }
        }
    }

    /// Resolves target `i` and brings its backends in line: new addresses join as live,
    /// addresses the name no longer has are dropped.
    async fn resolve(&self, i: usize) {
        let t = &self.targets[i];
        let _one_at_a_time = t.resolving.lock().await;
        if self.states()[i].resolved_at.is_some_and(|at| at.elapsed() < RESOLVE_EVERY) {
            return; // someone else just did it
        }
        let found = match t.literal {
            Some(a) => Ok(vec![a]),
            None => match tokio::time::timeout(RESOLVE_TIMEOUT, self.resolver.resolve(&t.host, t.port)).await {
                Ok(Ok(v)) if v.is_empty() => Err(format!("cannot resolve {}: no addresses", t.host)),
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(format!("cannot resolve {}: {e}", t.host)),
                Err(_) => Err(format!("cannot resolve {}: no answer in {}", t.host, secs(RESOLVE_TIMEOUT))),
            },
        };
        let mut states = self.states();
        let st = &mut states[i];
        st.resolved_at = Some(Instant::now());
        match found {
            Err(e) => {
                // Keep the addresses we had: a DNS hiccup is not a dead server.
                st.resolve_error = Some(e);
            }
            Ok(mut addrs) => {
                addrs.dedup();
                st.resolve_error = None;
                st.backends.retain(|b| addrs.contains(&b.addr));
                for a in addrs {
                    if !st.backends.iter().any(|b| b.addr == a) {
                        st.backends.push(Arc::new(Backend { addr: a, channel: self.channel(a), health: Mutex::new(Health::Up) }));
                    }
                }
            }
        }
    }

    /// A lazy tonic channel that always dials `addr`.
    fn channel(&self, addr: SocketAddr) -> Channel {
        // The URI only names the connection (`:authority`); the connector dials `addr` itself.
        Endpoint::from_static("http://auth")
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        // Tunnel chunks are up to 64 KiB: let each travel as one HTTP/2 frame.
        .max_frame_size(crate::MAX_FRAME_SIZE)
        .connect_with_connector_lazy(self.dialer.connector(addr))
    }

    /// The live backends, starting at the next one in round-robin order.
    fn live(&self) -> Vec<Arc<Backend>> {
        let up: Vec<Arc<Backend>> = self.backends().into_iter().filter(|b| b.is_up()).collect();
        if up.is_empty() {
            return up;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % up.len();
        up[start..].iter().chain(up[..start].iter()).cloned().collect()
    }

    /// Records that `b` failed and starts probing it in the background (once).
    fn mark_down(self: &Arc<Self>, b: &Arc<Backend>, why: String) {
        let start_probe = {
            let mut h = b.health();
            let probing = matches!(*h, Health::Down { probing: true, .. });
            tracing::debug!(addr = %b.addr, reason = %why, "auth server failed; skipping it until it answers again");
            *h = Health::Down { reason: why, probing: true };
            !probing
        };
        if start_probe {
            tokio::spawn(probe(Arc::downgrade(self), b.clone()));
        }
    }

    async fn dispatch(self: Arc<Self>, req: http::Request<Body>) -> Result<http::Response<Body>, BoxError> {
        self.ensure_resolved().await;
        let (parts, body) = req.into_parts();
        let replay = Replay::new(body);
        for b in self.live() {
            if !b.is_up() {
                continue; // failed meanwhile, for another call
            }
            let req = http::Request::from_parts(parts.clone(), replay.attempt());
            let mut ch = b.channel.clone();
            let sent = async {
                tower::ServiceExt::ready(&mut ch).await?;
                tower::Service::call(&mut ch, req).await
            }
            .await;
            match sent {
                Ok(resp) => {
                    replay.commit();
                    return Ok(resp);
                }
                Err(e) => {
                    let why = reason(&e);
                    self.mark_down(&b, why.clone());
                    if !replay.can_retry() {
                        // Part of a long streaming request is gone: it cannot be sent again.
                        return Err(Box::new(Status::unavailable(format!(
                            "{UNREACHABLE}: the call to {} failed ({why}) and is too long to send again",
                            self.label(&b)
                        ))));
                    }
                }
            }
        }
        // Nothing answered: names that fail to resolve or resolved long ago may have moved.
        tokio::spawn({
            let me = self.clone();
            async move { me.resolve_all(true).await }
        });
        Err(Box::new(Status::unavailable(self.unreachable())))
    }

    /// How a backend is named in messages: its configured address, plus the resolved one
    /// when the name has several.
    fn label(&self, b: &Backend) -> String {
        let states = self.states();
        for (t, st) in self.targets.iter().zip(states.iter()) {
            if st.backends.iter().any(|x| x.addr == b.addr) {
                return if t.literal.is_some() || st.backends.len() == 1 {
                    t.configured.clone()
                } else {
                    format!("{} at {}", t.configured, b.addr)
                };
            }
        }
        b.addr.to_string()
    }

    /// "the auth service is unreachable: tried a:3025 (connection refused), ...": every
    /// address with the last reason it failed. Only addresses and error kinds: no secrets.
    fn unreachable(&self) -> String {
        let states = self.states();
        let mut parts = Vec::new();
        for (t, st) in self.targets.iter().zip(states.iter()) {
            if st.backends.is_empty() {
                let why = st.resolve_error.clone().unwrap_or_else(|| "not resolved yet".into());
                parts.push(format!("{} ({why})", t.configured));
            }
            for b in &st.backends {
                let why = match &*b.health() {
                    Health::Down { reason, .. } => reason.clone(),
                    Health::Up => "answered earlier; failed for this call".into(),
                };
                let name = if t.literal.is_some() || st.backends.len() == 1 {
                    t.configured.clone()
                } else {
                    format!("{} at {}", t.configured, b.addr)
                };
                parts.push(format!("{name} ({why})"));
            }
        }
        format!("{UNREACHABLE}: tried {}", parts.join(", "))
    }
}

/// Waits for a failed backend to answer again (TCP and TLS), backing off between tries;
/// re-resolves its name each time, and stops when the name no longer has this address
/// or the channel is gone.
async fn probe(shared: Weak<Shared>, b: Arc<Backend>) {
    let mut wait = PROBE_FIRST;
    loop {
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(PROBE_MAX);
        let Some(shared) = shared.upgrade() else { return };
        shared.resolve_all(true).await;
        if !shared.backends().iter().any(|x| Arc::ptr_eq(x, &b)) {
            return;
        }
        let dialer = shared.dialer.clone();
        drop(shared); // no strong reference across the dial
        match dialer.dial(b.addr).await {
            Ok(_) => {
                tracing::debug!(addr = %b.addr, "auth server answers again");
                *b.health() = Health::Up;
                return;
            }
            Err(e) => {
                if let Health::Down { reason: r, .. } = &mut *b.health() {
                    *r = reason(&e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_must_have_ports() {
        assert_eq!(split_addr("auth-a:3025").unwrap(), ("auth-a".to_string(), 3025));
        assert_eq!(split_addr("[::1]:3025").unwrap(), ("::1".to_string(), 3025));
        let e = split_addr("auth-a").unwrap_err().to_string();
        assert!(e.contains("auth-a") && e.contains("host:port"), "{e}");
        let e = split_addr("auth-a:x").unwrap_err().to_string();
        assert!(e.contains("port"), "{e}");
        // A bare IPv6 address has no port; with one it needs brackets.
        let e = split_addr("::1").unwrap_err().to_string();
        assert!(e.contains("host:port"), "{e}");
    }
}
