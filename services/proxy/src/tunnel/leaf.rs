//! `Leaf`: the handle to one trusted leaf's tunnels, shared by the leaf's actor, the tunnel
//! server and the leaf site. Requests (dials, node listings, login checks) are sent from the
//! caller's own future: it picks a tunnel, queues the frame and waits for the answer, with no
//! round trip through the actor. The actor alone adds and drops tunnels (see `actor.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use actix::Addr;
use portcullis_proto::auth::Node;
use portcullis_proto::tunnel::proxy_frame::Msg;
use portcullis_proto::tunnel::{AuthorizeAnswer, AuthorizeQuery, DialRequest, NodesAnswer, NodesQuery, ProxyFrame};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc, oneshot};

use super::actor::{Close, LeafActor, TunnelDown, TunnelUp};
use super::{DialStream, Timings, TunnelError};

/// Ids of tunnels, dials and queries: unique per proxy, never 0.
#[derive(Debug, Default)]
pub struct Ids(AtomicU64);

impl Ids {
    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// A request for a connection to `host:port` in the leaf (port 0: the node's own port).
#[derive(Debug, Clone, Default)]
pub struct DialTarget {
    pub host: String,
    pub port: u16,
    /// The root user on whose behalf, for the leaf's audit log.
    pub user: String,
    /// W3C trace context.
    pub trace: HashMap<String, String>,
    /// The proxy dials for itself, not for a user session.
    pub for_proxy: bool,
}

/// One live tunnel (a control stream) of the leaf.
pub(super) struct Tunnel {
    pub(super) id: u64,
    pub(super) agent_id: String,
    /// Frames for the agent; dropping the last sender closes the tunnel.
    pub(super) tx: mpsc::Sender<ProxyFrame>,
    /// Milliseconds after the leaf's `epoch` of the agent's last heartbeat.
    last_heartbeat: AtomicU64,
}

struct PendingDial {
    tunnel_id: u64,
    agent_id: String,
    reply: oneshot::Sender<Result<DialStream, TunnelError>>,
}

/// Where the answer to a query goes.
enum QueryReply {
    Nodes(oneshot::Sender<Result<Vec<Node>, TunnelError>>),
    Authorize(oneshot::Sender<Result<(bool, String), TunnelError>>),
}

impl QueryReply {
    fn fail(self, e: TunnelError) {
        // A caller that gave up dropped its receiver: nobody is left to tell.
        match self {
            QueryReply::Nodes(tx) => drop(tx.send(Err(e))),
            QueryReply::Authorize(tx) => drop(tx.send(Err(e))),
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            QueryReply::Nodes(tx) => tx.is_closed(),
            QueryReply::Authorize(tx) => tx.is_closed(),
        }
    }
}

struct PendingQuery {
    tunnel_id: u64,
    reply: QueryReply,
}

/// Requests waiting for the agent's answer.
#[derive(Default)]
struct Pending {
    dials: HashMap<u64, PendingDial>,
    queries: HashMap<u64, PendingQuery>,
}

/// What the leaf's handle, its actor and the tunnel server share.
pub(super) struct Shared {
    pub(super) name: String,
    pub(super) timings: Timings,
    ids: Arc<Ids>,
    /// Changed by the actor only; read by every request.
    tunnels: RwLock<Vec<Tunnel>>,
    round_robin: AtomicUsize,
    /// Locked while a request picks its tunnel and registers, and while the actor fails the
    /// requests of a tunnel it drops: no request is left waiting on a tunnel that is gone.
    pending: Mutex<Pending>,
    /// A tunnel came up or went down (the heartbeat reports the counts).
    changed: Arc<Notify>,
    epoch: Instant,
}

/// Whether a request's frame is already queued on its tunnel.
enum Sent {
    Now,
    /// Still to be queued on this (full) tunnel queue by the caller's future.
    Later(mpsc::Sender<ProxyFrame>, ProxyFrame),
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn since_heartbeat(&self, t: &Tunnel) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(t.last_heartbeat.load(Ordering::Relaxed)))
    }

    /// Adds a tunnel (the actor's `TunnelUp`).
    pub(super) fn add(&self, id: u64, agent_id: String, tx: mpsc::Sender<ProxyFrame>) {
        tracing::info!(leaf = %self.name, agent = %agent_id, tunnel = id, "reverse tunnel up");
        let t = Tunnel { id, agent_id, tx, last_heartbeat: AtomicU64::new(self.now_ms()) };
        self.tunnels.write().unwrap_or_else(|p| p.into_inner()).push(t);
        self.changed.notify_one();
    }

    /// Drops the tunnels `which` selects (their senders go: the streams close) and fails what
    /// waited on them (the actor's `TunnelDown`, its checks and `Close`).
    pub(super) fn remove_where(&self, which: impl Fn(&Tunnel) -> bool, why: &str) -> usize {
        let gone: Vec<Tunnel> = {
            let mut tunnels = self.tunnels.write().unwrap_or_else(|p| p.into_inner());
            let (gone, kept) = std::mem::take(&mut *tunnels).into_iter().partition(|t| which(t));
            *tunnels = kept;
            gone
        };
        if gone.is_empty() {
            return 0;
        }
        let mut pending = self.pending();
        for t in &gone {
            tracing::info!(leaf = %self.name, agent = %t.agent_id, tunnel = t.id, "reverse tunnel down: {why}");
            let closed = || TunnelError::Closed(self.name.clone());
            let dials: Vec<u64> = pending.dials.iter().filter(|(_, d)| d.tunnel_id == t.id).map(|(k, _)| *k).collect();
            for id in dials {
                if let Some(d) = pending.dials.remove(&id) {
                    let _ = d.reply.send(Err(closed()));
                }
            }
            let queries: Vec<u64> = pending.queries.iter().filter(|(_, q)| q.tunnel_id == t.id).map(|(k, _)| *k).collect();
            for id in queries {
                if let Some(q) = pending.queries.remove(&id) {
                    q.reply.fail(closed());
                }
            }
        }
        drop(pending);
        if self.tunnels.read().unwrap_or_else(|p| p.into_inner()).is_empty() {
            tracing::info!(leaf = %self.name, "no reverse tunnel left from the leaf cluster");
        }
        self.changed.notify_one();
        gone.len()
    }

    /// Drops tunnels silent for longer than `dead_after` (or closed by their stream) and
    /// requests whose callers gave up.
    pub(super) fn check(&self) {
        let dead_after = self.timings.dead_after;
        let dead = |t: &Tunnel| self.since_heartbeat(t) > dead_after || t.tx.is_closed();
        // Most checks find nothing: a read lock is enough to know.
        if self.tunnels.read().unwrap_or_else(|p| p.into_inner()).iter().any(dead) {
            self.remove_where(dead, &format!("no heartbeat for {}s", dead_after.as_secs()));
        }
        let mut pending = self.pending();
        pending.dials.retain(|_, d| !d.reply.is_closed());
        pending.queries.retain(|_, q| !q.reply.is_closed());
    }

    /// Every live tunnel's agent is asked to reconnect elsewhere.
    pub(super) fn send_to_all(&self, frame: &ProxyFrame) {
        for t in self.tunnels.read().unwrap_or_else(|p| p.into_inner()).iter() {
            // Buffered frames are still delivered after the sender is dropped.
            let _ = t.tx.try_send(frame.clone());
        }
    }

    /// Tunnel ids in the order to try: healthy ones (heard from within two heartbeats)
    /// round-robin, then the rest by most recent heartbeat.
    fn candidates(&self, tunnels: &[Tunnel]) -> Vec<usize> {
        let window = self.timings.heartbeat * 2;
        let mut healthy = Vec::new();
        let mut rest: Vec<(Duration, usize)> = Vec::new();
        for (i, t) in tunnels.iter().enumerate() {
            if t.tx.is_closed() {
                continue;
            }
            let silent = self.since_heartbeat(t);
            if silent <= window {
                healthy.push(i);
            } else {
                rest.push((silent, i));
            }
        }
        if !healthy.is_empty() {
            let k = self.round_robin.fetch_add(1, Ordering::Relaxed).wrapping_add(1) % healthy.len();
            healthy.rotate_left(k);
        }
        rest.sort_by_key(|r| r.0);
        healthy.into_iter().chain(rest.into_iter().map(|(_, i)| i)).collect()
    }

    /// Queues a frame on the first tunnel with room; (tunnel id, agent id, how). When every
    /// live tunnel's queue is full (a burst of sessions starting at once), the frame waits for
    /// room in the healthiest one instead of failing the request: a busy tunnel is not an
    /// offline cluster.
    fn dispatch(&self, frame: ProxyFrame) -> Result<(u64, String, Sent), TunnelError> {
        let tunnels = self.tunnels.read().unwrap_or_else(|p| p.into_inner());
        let mut frame = frame;
        let mut busy = None;
        for i in self.candidates(&tunnels) {
            let t = &tunnels[i];
            match t.tx.try_send(frame) {
                Ok(()) => return Ok((t.id, t.agent_id.clone(), Sent::Now)),
                Err(TrySendError::Full(f)) => {
                    frame = f;
                    busy.get_or_insert(i);
                }
                Err(TrySendError::Closed(f)) => {
                    frame = f;
                    tracing::debug!(leaf = %self.name, tunnel = t.id, "tunnel closed before taking a frame");
                }
            }
        }
        match busy.map(|i| &tunnels[i]) {
            Some(t) => {
                tracing::debug!(leaf = %self.name, tunnel = t.id, "every tunnel's queue is full: the request waits for room");
                Ok((t.id, t.agent_id.clone(), Sent::Later(t.tx.clone(), frame)))
            }
            None => Err(TunnelError::Offline(self.name.clone())),
        }
    }
}

/// Queues the frame if it still waits for room, then waits for the answer; `limit` bounds
/// both together. A timeout or a dropped request becomes the matching error.
async fn wait<T>(
    sent: Sent,
    rx: oneshot::Receiver<Result<T, TunnelError>>,
    cluster: &str,
    limit: Duration,
) -> Result<T, TunnelError> {
    let deadline = tokio::time::Instant::now() + limit;
    let timeout = || TunnelError::Timeout { cluster: cluster.to_string(), secs: limit.as_secs() };
    if let Sent::Later(tx, frame) = sent {
        match tokio::time::timeout_at(deadline, tx.send(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(TunnelError::Closed(cluster.to_string())),
            Err(_) => return Err(timeout()),
        }
    }
    match tokio::time::timeout_at(deadline, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(TunnelError::Closed(cluster.to_string())),
        Err(_) => Err(timeout()),
    }
}

/// One trusted leaf: cheap to clone, lives as long as the trust (its actor too).
#[derive(Clone)]
pub struct Leaf {
    shared: Arc<Shared>,
    actor: Addr<LeafActor>,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf").field("name", &self.shared.name).finish_non_exhaustive()
    }
}

impl Leaf {
    /// The leaf `name` with its actor started on `arbiter`.
    pub(super) fn start(
        name: &str,
        timings: Timings,
        ids: Arc<Ids>,
        changed: Arc<Notify>,
        arbiter: &actix_rt::ArbiterHandle,
    ) -> Leaf {
        let shared = Arc::new(Shared {
            name: name.to_string(),
            timings,
            ids,
            tunnels: RwLock::default(),
            round_robin: AtomicUsize::new(0),
            pending: Mutex::default(),
            changed,
            epoch: Instant::now(),
        });
        let for_actor = shared.clone();
        let actor = actix::Actor::start_in_arbiter(arbiter, move |_| LeafActor::new(for_actor));
        Leaf { shared, actor }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Whether at least one tunnel is up.
    pub fn is_online(&self) -> bool {
        !self.shared.tunnels.read().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// (live tunnels, requests waiting for an answer).
    pub fn stats(&self) -> (usize, usize) {
        let tunnels = self.shared.tunnels.read().unwrap_or_else(|p| p.into_inner()).len();
        let pending = self.shared.pending();
        (tunnels, pending.dials.len() + pending.queries.len())
    }

    /// Asks the leaf's agent for a stream to the target; waits in the caller's future.
    pub async fn dial(&self, target: DialTarget) -> Result<DialStream, TunnelError> {
        let s = &self.shared;
        let dial_id = s.ids.next();
        let (host, port, user) = (target.host.clone(), target.port, target.user.clone());
        let frame = ProxyFrame {
            msg: Some(Msg::Dial(DialRequest {
                dial_id,
                host: target.host,
                port: u32::from(target.port),
                user: target.user,
                trace: target.trace,
                for_proxy: target.for_proxy,
            })),
        };
        let (reply, rx) = oneshot::channel();
        let sent = {
            let mut pending = s.pending();
            let (tunnel_id, agent_id, sent) = s.dispatch(frame)?;
            tracing::debug!(leaf = %s.name, dial_id, tunnel = tunnel_id, %host, port, %user, "dial request sent");
            pending.dials.insert(dial_id, PendingDial { tunnel_id, agent_id, reply });
            sent
        };
        wait(sent, rx, &s.name, s.timings.answer_timeout).await
    }

    /// Queues a query frame made for `request_id` and registers where its answer goes.
    fn query(&self, frame: impl FnOnce(u64) -> ProxyFrame, reply: QueryReply) -> Result<Sent, TunnelError> {
        let s = &self.shared;
        let request_id = s.ids.next();
        let mut pending = s.pending();
        let (tunnel_id, _, sent) = s.dispatch(frame(request_id))?;
        pending.queries.insert(request_id, PendingQuery { tunnel_id, reply });
        Ok(sent)
    }

    /// The nodes of the leaf the user (root TLS certificate, DER) may see.
    pub async fn list_nodes(&self, user_tls_cert: Vec<u8>, labels: BTreeMap<String, String>) -> Result<Vec<Node>, TunnelError> {
        let (reply, rx) = oneshot::channel();
        let frame = |request_id| ProxyFrame {
            msg: Some(Msg::ListNodes(NodesQuery { request_id, user_tls_cert, labels: labels.into_iter().collect() })),
        };
        let sent = self.query(frame, QueryReply::Nodes(reply))?;
        wait(sent, rx, &self.shared.name, self.shared.timings.answer_timeout).await
    }

    /// Asks the leaf's auth whether (and why not) a root user may log in to a node.
    pub async fn authorize(&self, q: AuthorizeQuery) -> Result<(bool, String), TunnelError> {
        let (reply, rx) = oneshot::channel();
        let frame = |request_id| ProxyFrame { msg: Some(Msg::Authorize(AuthorizeQuery { request_id, ..q })) };
        let sent = self.query(frame, QueryReply::Authorize(reply))?;
        wait(sent, rx, &self.shared.name, self.shared.timings.answer_timeout).await
    }

    /// Registers a tunnel that just said Hello; `Err` when the leaf's actor is gone (the trust
    /// was removed meanwhile).
    pub(super) async fn tunnel_up(&self, tunnel_id: u64, agent_id: String, tx: mpsc::Sender<ProxyFrame>) -> Result<(), TunnelError> {
        self.actor
            .send(TunnelUp { tunnel_id, agent_id, tx })
            .await
            .map_err(|_| TunnelError::Offline(self.shared.name.clone()))
    }

    /// The tunnel's control stream ended.
    pub(super) fn tunnel_down(&self, tunnel_id: u64) {
        self.actor.do_send(TunnelDown { tunnel_id });
    }

    /// Drains and drops every tunnel; with `stop`, the actor stops too (trust removed).
    pub(super) fn close(&self, reason: &str, stop: bool) {
        self.actor.do_send(Close { reason: reason.to_string(), stop });
    }

    /// The agent of `tunnel_id` is alive.
    pub(super) fn heartbeat(&self, tunnel_id: u64) {
        let s = &self.shared;
        let now = s.now_ms();
        if let Some(t) = s.tunnels.read().unwrap_or_else(|p| p.into_inner()).iter().find(|t| t.id == tunnel_id) {
            t.last_heartbeat.store(now, Ordering::Relaxed);
        }
    }

    /// The agent `agent_id` opened the `Dial` stream answering `dial_id`.
    pub(super) fn dial_arrived(&self, dial_id: u64, agent_id: &str, stream: DialStream) -> Result<(), TunnelError> {
        let s = &self.shared;
        let mut pending = s.pending();
        // Only the agent the request went to may answer it.
        let Some(p) = pending.dials.remove(&dial_id) else {
            return Err(TunnelError::UnknownDial(dial_id));
        };
        if p.agent_id != agent_id {
            tracing::warn!(leaf = %s.name, dial_id, expected = %p.agent_id, got = %agent_id, "a dial was answered by another agent; refused");
            pending.dials.insert(dial_id, p);
            return Err(TunnelError::UnknownDial(dial_id));
        }
        drop(pending);
        // The caller may have given up meanwhile: then the stream is dropped, which ends it.
        p.reply.send(Ok(stream)).map_err(|_| TunnelError::UnknownDial(dial_id))
    }

    /// The agent could not make the connection for `dial_id`.
    pub(super) fn dial_failed(&self, dial_id: u64, reason: String) {
        if let Some(p) = self.shared.pending().dials.remove(&dial_id) {
            let reason = if reason.is_empty() { "the leaf cluster refused the connection".into() } else { reason };
            let _ = p.reply.send(Err(TunnelError::DialFailed(reason)));
        }
    }

    /// The agent answered a node listing.
    pub(super) fn nodes_answered(&self, a: NodesAnswer) {
        let q = self.shared.pending().queries.remove(&a.request_id);
        if let Some(PendingQuery { reply: QueryReply::Nodes(tx), .. }) = q {
            let _ = tx.send(if a.error.is_empty() { Ok(a.nodes) } else { Err(TunnelError::Leaf(a.error)) });
        }
    }

    /// The agent answered an authorization question.
    pub(super) fn authorize_answered(&self, a: AuthorizeAnswer) {
        let q = self.shared.pending().queries.remove(&a.request_id);
        if let Some(PendingQuery { reply: QueryReply::Authorize(tx), .. }) = q {
            let _ = tx.send(if a.error.is_empty() { Ok((a.allowed, a.reason)) } else { Err(TunnelError::Leaf(a.error)) });
        }
    }
}
