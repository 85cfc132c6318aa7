//! `LeafActor`: one per connected leaf cluster, owning every tunnel that leaf holds to this
//! proxy. It picks a tunnel for each dial or node listing, matches the agent's answers to the
//! requests waiting for them, and drops tunnels that stop heartbeating. Handlers do no I/O:
//! frames go out with `try_send` and callers wait on oneshots in their own futures.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Message, MessageResult, ResponseFuture};
use portcullis_proto::auth::Node;
use portcullis_proto::tunnel::proxy_frame::Msg;
use portcullis_proto::tunnel::{DialRequest, Drain, NodesAnswer, NodesQuery, ProxyFrame};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc, oneshot};

use super::stream::DialStream;
use super::{Registry, Timings, TunnelError};

/// What every leaf actor needs from the hub.
#[derive(Debug, Clone)]
pub struct LeafDeps {
    pub registry: Registry,
    pub timings: Timings,
    pub changed: Arc<Notify>,
}

/// A tunnel's control stream came up (the agent said Hello).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct TunnelUp {
    pub tunnel_id: u64,
    pub agent_id: String,
    /// Frames for the agent; dropping it closes the tunnel.
    pub tx: mpsc::Sender<ProxyFrame>,
}

/// The agent of a tunnel sent a heartbeat.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct TunnelHeartbeat {
    pub tunnel_id: u64,
}

/// A tunnel's control stream ended.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct TunnelDown {
    pub tunnel_id: u64,
}

/// Open a connection to `host:port` in the leaf (port 0: the node's own port).
#[derive(Debug, Message)]
#[rtype(result = "Result<DialStream, TunnelError>")]
pub struct Dial {
    pub host: String,
    pub port: u16,
    /// The root user on whose behalf, for the leaf's audit log.
    pub user: String,
    /// W3C trace context.
    pub trace: HashMap<String, String>,
    /// The proxy dials for itself, not for a user session (see `Router::dial_leaf_auth`).
    pub for_proxy: bool,
}

/// The agent opened the `Dial` stream answering `dial_id`.
#[derive(Message)]
#[rtype(result = "Result<(), TunnelError>")]
pub struct DialArrived {
    pub dial_id: u64,
    /// The agent (certificate name) that opened it.
    pub agent_id: String,
    pub stream: DialStream,
}

/// The agent could not make the connection for `dial_id`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct DialFailed {
    pub dial_id: u64,
    pub reason: String,
}

/// The nodes of the leaf the user (root TLS certificate, DER) may see.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<Node>, TunnelError>")]
pub struct ListNodes {
    pub user_tls_cert: Vec<u8>,
    pub labels: BTreeMap<String, String>,
}

/// The agent answered a node listing.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct NodesAnswered(pub NodesAnswer);

/// (live tunnels, requests waiting for an answer).
#[derive(Debug, Message)]
#[rtype(result = "(usize, usize)")]
pub struct Stats;

/// Drain and drop every tunnel, then stop (trust removed, proxy shutting down).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Close {
    pub reason: String,
}

struct Tunnel {
    agent_id: String,
    tx: mpsc::Sender<ProxyFrame>,
    last_heartbeat: Instant,
}

struct PendingDial {
    tunnel_id: u64,
    agent_id: String,
    reply: oneshot::Sender<Result<DialStream, TunnelError>>,
}

struct PendingQuery {
    tunnel_id: u64,
    reply: QueryReply,
}

/// Where the answer to a query goes.
enum QueryReply {
    Nodes(oneshot::Sender<Result<Vec<Node>, TunnelError>>),
    Authorize(oneshot::Sender<Result<(bool, String), TunnelError>>),
}

impl QueryReply {
    fn fail(self, e: TunnelError) {
        match self {
            QueryReply::Nodes(tx) => {
                let _ = tx.send(Err(e));
            }
            QueryReply::Authorize(tx) => {
                let _ = tx.send(Err(e));
            }
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            QueryReply::Nodes(tx) => tx.is_closed(),
            QueryReply::Authorize(tx) => tx.is_closed(),
        }
    }
}

/// Asks the leaf's auth whether (and why not) a root user may log in to a node.
#[derive(Debug, Message)]
#[rtype(result = "Result<(bool, String), TunnelError>")]
pub struct Authorize {
    pub ssh_cert: String,
    pub login: String,
    pub node: String,
    pub remote_addr: String,
}

/// The agent answered an authorization question.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct AuthorizeAnswered(pub portcullis_proto::tunnel::AuthorizeAnswer);

/// The tunnels of one leaf cluster.
pub struct LeafActor {
    cluster: String,
    /// This actor's registry generation, so a stopping actor never removes its successor.
    generation: u64,
    deps: LeafDeps,
    tunnels: BTreeMap<u64, Tunnel>,
    round_robin: usize,
    dials: HashMap<u64, PendingDial>,
    queries: HashMap<u64, PendingQuery>,
}

impl LeafActor {
    /// An actor born with its first tunnel, so it is never seen empty.
    pub(crate) fn new(cluster: String, generation: u64, deps: LeafDeps, first: TunnelUp) -> Self {
        let mut a = LeafActor {
            cluster,
            generation,
            deps,
            tunnels: BTreeMap::new(),
            round_robin: 0,
            dials: HashMap::new(),
            queries: HashMap::new(),
        };
        a.add(first);
        a
    }

    fn add(&mut self, up: TunnelUp) {
        tracing::info!(leaf = %self.cluster, agent = %up.agent_id, tunnel = up.tunnel_id, "reverse tunnel up");
        self.tunnels
            .insert(up.tunnel_id, Tunnel { agent_id: up.agent_id, tx: up.tx, last_heartbeat: Instant::now() });
        self.deps.changed.notify_one();
    }

    /// Forgets a tunnel (dropping its sender closes the stream) and fails what waited on it.
    fn remove(&mut self, tunnel_id: u64, why: &str) {
        let Some(t) = self.tunnels.remove(&tunnel_id) else {
            return;
        };
        tracing::info!(leaf = %self.cluster, agent = %t.agent_id, tunnel = tunnel_id, "reverse tunnel down: {why}");
        let closed = || TunnelError::Closed(self.cluster.clone());
        let dials: Vec<u64> = self.dials.iter().filter(|(_, d)| d.tunnel_id == tunnel_id).map(|(k, _)| *k).collect();
        for id in dials {
            if let Some(d) = self.dials.remove(&id) {
                let _ = d.reply.send(Err(closed()));
            }
        }
        let queries: Vec<u64> = self.queries.iter().filter(|(_, q)| q.tunnel_id == tunnel_id).map(|(k, _)| *k).collect();
        for id in queries {
            if let Some(q) = self.queries.remove(&id) {
                q.reply.fail(closed());
            }
        }
        self.deps.changed.notify_one();
    }

    /// Tunnels in the order to try: healthy ones (heard from within two heartbeats)
    /// round-robin, then the rest by most recent heartbeat.
    fn candidates(&mut self) -> Vec<u64> {
        let now = Instant::now();
        let window = self.deps.timings.heartbeat * 2;
        let mut healthy = Vec::new();
        let mut rest: Vec<(Instant, u64)> = Vec::new();
        for (id, t) in &self.tunnels {
            if t.tx.is_closed() {
                continue;
            }
            if now.duration_since(t.last_heartbeat) <= window {
                healthy.push(*id);
            } else {
                rest.push((t.last_heartbeat, *id));
            }
        }
        if !healthy.is_empty() {
            self.round_robin = self.round_robin.wrapping_add(1);
            let k = self.round_robin % healthy.len();
            healthy.rotate_left(k);
        }
        rest.sort_by_key(|r| std::cmp::Reverse(r.0));
        healthy.into_iter().chain(rest.into_iter().map(|(_, id)| id)).collect()
    }

    /// Sends a frame on the first tunnel with room in its queue; (tunnel id, agent id, how).
    /// When every live tunnel's queue is full (a burst of sessions starting at once), the
    /// frame waits for room in the healthiest one instead of failing the request: a busy
    /// tunnel is not an offline cluster.
    fn dispatch(&mut self, frame: ProxyFrame) -> Result<(u64, String, Sent), TunnelError> {
        let mut frame = frame;
        let mut busy = None;
        for id in self.candidates() {
            let Some(t) = self.tunnels.get(&id) else { continue };
            match t.tx.try_send(frame) {
                Ok(()) => return Ok((id, t.agent_id.clone(), Sent::Now)),
                Err(TrySendError::Full(f)) => {
                    frame = f;
                    busy.get_or_insert(id);
                }
                Err(TrySendError::Closed(f)) => {
                    frame = f;
                    tracing::debug!(leaf = %self.cluster, tunnel = id, "tunnel closed before taking a frame");
                }
            }
        }
        match busy.and_then(|id| self.tunnels.get(&id).map(|t| (id, t))) {
            Some((id, t)) => {
                tracing::debug!(leaf = %self.cluster, tunnel = id, "every tunnel's queue is full: the request waits for room");
                Ok((id, t.agent_id.clone(), Sent::Later(t.tx.clone(), frame)))
            }
            None => Err(TunnelError::Offline(self.cluster.clone())),
        }
    }

    fn next_id(&self) -> u64 {
        self.deps.registry.next_id()
    }

    /// Drops silent tunnels and abandoned requests; stops when no tunnel is left.
    fn check(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let dead_after = self.deps.timings.dead_after;
        let dead: Vec<u64> = self
            .tunnels
            .iter()
            .filter(|(_, t)| now.duration_since(t.last_heartbeat) > dead_after || t.tx.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.remove(id, &format!("no heartbeat for {}s", dead_after.as_secs()));
        }
        // Callers that gave up (timeout) dropped their receivers.
        self.dials.retain(|_, d| !d.reply.is_closed());
        self.queries.retain(|_, q| !q.reply.is_closed());
        self.stop_if_empty(ctx);
    }

    fn stop_if_empty(&mut self, ctx: &mut Context<Self>) {
        if self.tunnels.is_empty() {
            ctx.stop();
        }
    }
}

impl Actor for LeafActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let every = self.deps.timings.heartbeat.min(Duration::from_secs(1));
        ctx.run_interval(every, |act, ctx| act.check(ctx));
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.deps.registry.remove_if(&self.cluster, self.generation);
        for (_, d) in self.dials.drain() {
            let _ = d.reply.send(Err(TunnelError::Offline(self.cluster.clone())));
        }
        for (_, q) in self.queries.drain() {
            q.reply.fail(TunnelError::Offline(self.cluster.clone()));
        }
        self.tunnels.clear();
        self.deps.changed.notify_one();
        tracing::info!(leaf = %self.cluster, "no reverse tunnel left from the leaf cluster");
    }
}

impl Handler<TunnelUp> for LeafActor {
    type Result = ();
    fn handle(&mut self, msg: TunnelUp, _ctx: &mut Context<Self>) {
        self.add(msg);
    }
}

impl Handler<TunnelHeartbeat> for LeafActor {
    type Result = ();
    fn handle(&mut self, msg: TunnelHeartbeat, _ctx: &mut Context<Self>) {
        if let Some(t) = self.tunnels.get_mut(&msg.tunnel_id) {
            t.last_heartbeat = Instant::now();
        }
    }
}

impl Handler<TunnelDown> for LeafActor {
    type Result = ();
    fn handle(&mut self, msg: TunnelDown, ctx: &mut Context<Self>) {
        self.remove(msg.tunnel_id, "the agent's stream ended");
        self.stop_if_empty(ctx);
    }
}

/// Whether a request's frame is already queued on its tunnel.
enum Sent {
    Now,
    /// Still to be queued on this (full) tunnel queue by the caller's future.
    Later(mpsc::Sender<ProxyFrame>, ProxyFrame),
}

/// Queues the frame if it still waits for room, then waits for the answer; `limit` bounds
/// both together. A timeout or a dropped request becomes the matching error.
async fn wait<T>(
    sent: Sent,
    rx: oneshot::Receiver<Result<T, TunnelError>>,
    cluster: String,
    limit: Duration,
) -> Result<T, TunnelError> {
    let deadline = tokio::time::Instant::now() + limit;
    if let Sent::Later(tx, frame) = sent {
        match tokio::time::timeout_at(deadline, tx.send(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(TunnelError::Closed(cluster)),
            Err(_) => return Err(TunnelError::Timeout { cluster, secs: limit.as_secs() }),
        }
    }
    match tokio::time::timeout_at(deadline, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(TunnelError::Closed(cluster)),
        Err(_) => Err(TunnelError::Timeout { cluster, secs: limit.as_secs() }),
    }
}

impl Handler<Dial> for LeafActor {
    type Result = ResponseFuture<Result<DialStream, TunnelError>>;
    fn handle(&mut self, msg: Dial, _ctx: &mut Context<Self>) -> Self::Result {
        let dial_id = self.next_id();
        let frame = ProxyFrame {
            msg: Some(Msg::Dial(DialRequest {
                dial_id,
                host: msg.host.clone(),
                port: u32::from(msg.port),
                user: msg.user.clone(),
                trace: msg.trace,
                for_proxy: msg.for_proxy,
            })),
        };
        let (tunnel_id, agent_id, sent) = match self.dispatch(frame) {
            Ok(t) => t,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        tracing::debug!(leaf = %self.cluster, dial_id, tunnel = tunnel_id, host = %msg.host, port = msg.port, user = %msg.user, "dial request sent");
        let (reply, rx) = oneshot::channel();
        self.dials.insert(dial_id, PendingDial { tunnel_id, agent_id, reply });
        Box::pin(wait(sent, rx, self.cluster.clone(), self.deps.timings.answer_timeout))
    }
}

impl Handler<DialArrived> for LeafActor {
    type Result = Result<(), TunnelError>;
    fn handle(&mut self, msg: DialArrived, _ctx: &mut Context<Self>) -> Self::Result {
        // Only the agent the request went to may answer it.
        let Some(pending) = self.dials.remove(&msg.dial_id) else {
            return Err(TunnelError::UnknownDial(msg.dial_id));
        };
        if pending.agent_id != msg.agent_id {
            tracing::warn!(leaf = %self.cluster, dial_id = msg.dial_id, expected = %pending.agent_id, got = %msg.agent_id, "a dial was answered by another agent; refused");
            self.dials.insert(msg.dial_id, pending);
            return Err(TunnelError::UnknownDial(msg.dial_id));
        }
        // The caller may have given up meanwhile: then the stream is dropped, which ends it.
        pending.reply.send(Ok(msg.stream)).map_err(|_| TunnelError::UnknownDial(msg.dial_id))
    }
}

impl Handler<DialFailed> for LeafActor {
    type Result = ();
    fn handle(&mut self, msg: DialFailed, _ctx: &mut Context<Self>) {
        if let Some(p) = self.dials.remove(&msg.dial_id) {
            let reason = if msg.reason.is_empty() { "the leaf cluster refused the connection".into() } else { msg.reason };
            let _ = p.reply.send(Err(TunnelError::DialFailed(reason)));
        }
    }
}

impl Handler<ListNodes> for LeafActor {
    type Result = ResponseFuture<Result<Vec<Node>, TunnelError>>;
    fn handle(&mut self, msg: ListNodes, _ctx: &mut Context<Self>) -> Self::Result {
        let request_id = self.next_id();
        let frame = ProxyFrame {
            msg: Some(Msg::ListNodes(NodesQuery {
                request_id,
                user_tls_cert: msg.user_tls_cert,
                labels: msg.labels.into_iter().collect(),
            })),
        };
        let (tunnel_id, sent) = match self.dispatch(frame) {
            Ok((t, _, sent)) => (t, sent),
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let (reply, rx) = oneshot::channel();
        self.queries.insert(request_id, PendingQuery { tunnel_id, reply: QueryReply::Nodes(reply) });
        Box::pin(wait(sent, rx, self.cluster.clone(), self.deps.timings.answer_timeout))
    }
}

impl Handler<Authorize> for LeafActor {
    type Result = ResponseFuture<Result<(bool, String), TunnelError>>;
    fn handle(&mut self, msg: Authorize, _ctx: &mut Context<Self>) -> Self::Result {
        let request_id = self.next_id();
        let frame = ProxyFrame {
            msg: Some(Msg::Authorize(portcullis_proto::tunnel::AuthorizeQuery {
                request_id,
                ssh_cert: msg.ssh_cert,
                login: msg.login,
                node: msg.node,
                remote_addr: msg.remote_addr,
            })),
        };
        let (tunnel_id, sent) = match self.dispatch(frame) {
            Ok((t, _, sent)) => (t, sent),
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let (reply, rx) = oneshot::channel();
        self.queries.insert(request_id, PendingQuery { tunnel_id, reply: QueryReply::Authorize(reply) });
        Box::pin(wait(sent, rx, self.cluster.clone(), self.deps.timings.answer_timeout))
    }
}

impl Handler<AuthorizeAnswered> for LeafActor {
    type Result = ();
    fn handle(&mut self, msg: AuthorizeAnswered, _ctx: &mut Context<Self>) {
        let a = msg.0;
        if let Some(PendingQuery { reply: QueryReply::Authorize(tx), .. }) = self.queries.remove(&a.request_id) {
            let r = if a.error.is_empty() { Ok((a.allowed, a.reason)) } else { Err(TunnelError::Leaf(a.error)) };
            let _ = tx.send(r);
        }
    }
}

impl Handler<NodesAnswered> for LeafActor {
    type Result = ();
    fn handle(&mut self, msg: NodesAnswered, _ctx: &mut Context<Self>) {
        let a = msg.0;
        if let Some(PendingQuery { reply: QueryReply::Nodes(tx), .. }) = self.queries.remove(&a.request_id) {
            let r = if a.error.is_empty() { Ok(a.nodes) } else { Err(TunnelError::Leaf(a.error)) };
            let _ = tx.send(r);
        }
    }
}

impl Handler<Stats> for LeafActor {
    type Result = MessageResult<Stats>;
    fn handle(&mut self, _msg: Stats, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult((self.tunnels.len(), self.dials.len() + self.queries.len()))
    }
}

impl Handler<Close> for LeafActor {
    type Result = ();
    fn handle(&mut self, msg: Close, ctx: &mut Context<Self>) {
        let drain = ProxyFrame { msg: Some(Msg::Drain(Drain { reason: msg.reason.clone() })) };
        for t in self.tunnels.values() {
            // Buffered frames are still delivered after the sender is dropped below.
            let _ = t.tx.try_send(drain.clone());
        }
        let ids: Vec<u64> = self.tunnels.keys().copied().collect();
        for id in ids {
            self.remove(id, &msg.reason);
        }
        ctx.stop();
    }
}
