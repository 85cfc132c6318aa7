//! One tunnel to one root proxy: connects over mutual TLS, says Hello, keeps the control
//! stream alive with heartbeats and hands the proxy's dials to [`crate::dial`] and its
//! questions to [`crate::queries`].

use std::sync::Arc;
use std::time::Duration;

use portcullis_proto::tunnel::agent_frame::Msg as AgentMsg;
use portcullis_proto::tunnel::proxy_frame::Msg as ProxyMsg;
use portcullis_proto::tunnel::tunnel_client::TunnelClient;
use portcullis_proto::tunnel::{AgentFrame, Hello, ProxyFrame, Welcome};
use portcullis_rpc::Channel;
use portcullis_rpc::client::error_chain;
use portcullis_rpc::{ClientTls, RpcError, connect};
use portcullis_tunnel::{agent_frame, dead_after, heartbeat_interval, heartbeat_now};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::link::LinkEvent;
use crate::{Agent, VERSION, dial, queries};

/// Longest wait for the proxy to accept the control stream and welcome us.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames queued towards the proxy (heartbeats and answers are small and rare).
const OUTBOUND_QUEUE: usize = 64;
/// How long connections dialled through a draining proxy may go on after it left.
const DRAIN_GRACE: Duration = Duration::from_secs(300);

/// The root cluster a link connects to.
pub struct Target {
    pub name: String,
    /// The cluster's tunnel_addr (from the trusted_cluster resource).
    pub tunnel_addr: String,
    /// Root CA trust, the agent's certificate, and the proxies' server name.
    pub tls: ClientTls,
}

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// No connection: address unreachable or TLS failed.
    Unreachable,
    /// Connected, but the proxy refused or never welcomed the tunnel.
    Refused,
    /// The proxy is one the link already holds a tunnel to.
    Duplicate,
    /// The proxy asked us to go elsewhere.
    Drained,
    /// No heartbeat for [`portcullis_tunnel::MISSED_HEARTBEATS`] intervals.
    Dead,
    /// The proxy closed the stream or the connection broke.
    Closed,
}

/// How a tunnel ended, for the link's reconnection decisions.
#[derive(Debug, Clone)]
pub struct TunnelEnd {
    /// The proxy that welcomed the tunnel, if one did.
    pub proxy_id: Option<String>,
    /// How long the tunnel was up after the welcome.
    pub up_for: Duration,
    pub reason: EndReason,
}

fn ended(reason: EndReason) -> TunnelEnd {
    TunnelEnd { proxy_id: None, up_for: Duration::ZERO, reason }
}

/// Runs one tunnel to the proxy reached at `addr` until it ends.
pub(crate) async fn run(
    agent: Arc<Agent>,
    target: Arc<Target>,
    addr: String,
    slot: u64,
    link: mpsc::Sender<LinkEvent>,
) -> TunnelEnd {
    let channel = match connect(&addr, &target.tls).await {
        Ok(c) => c,
        Err(e) => {
            log_unreachable(&target, &addr, &e);
            return ended(EndReason::Unreachable);
        }
    };
    let (tx, rx) = mpsc::channel::<AgentFrame>(OUTBOUND_QUEUE);
    // Queued before the call starts, so Hello is the stream's first frame.
    let hello = Hello { agent_id: agent.identity.name.clone(), version: VERSION.to_string() };
    let _ = tx.send(agent_frame(AgentMsg::Hello(hello))).await;
    let mut client = TunnelClient::new(channel.clone());
    let (mut inbound, welcome) = match handshake(&mut client, rx).await {
        Ok(ok) => ok,
        Err(reason) => {
            tracing::warn!(
                "root cluster {}'s proxy at {addr} refused the tunnel: {reason} (does the root still trust this cluster?)",
                target.name
            );
            return ended(EndReason::Refused);
        }
    };
    let proxy_id =
        if welcome.proxy_id.is_empty() { format!("unnamed proxy at {addr}") } else { welcome.proxy_id.clone() };
    let (reply_tx, reply_rx) = oneshot::channel();
    if link.send(LinkEvent::Welcome { slot, proxy_id: proxy_id.clone(), reply: reply_tx }).await.is_err() {
        return ended(EndReason::Closed);
    }
    if reply_rx.await != Ok(true) {
        tracing::debug!(
            "the connection to {addr} reached root proxy {proxy_id}, which already has a tunnel; closing it"
        );
        return TunnelEnd { proxy_id: Some(proxy_id), up_for: Duration::ZERO, reason: EndReason::Duplicate };
    }
    tracing::info!("connected to root cluster {} proxy {proxy_id} at {addr}", target.name);
    let _live = agent.metrics.tunnel_up(&target.name);
    let up_since = Instant::now();
    let session = Session { agent, target, addr, proxy_id: proxy_id.clone(), channel, tx, link };
    let reason = session.serve(&mut inbound, &welcome).await;
    TunnelEnd { proxy_id: Some(proxy_id), up_for: up_since.elapsed(), reason }
}

/// Opens the control stream and waits for the proxy's Welcome.
async fn handshake(
    client: &mut TunnelClient<Channel>,
    rx: mpsc::Receiver<AgentFrame>,
) -> Result<(Streaming<ProxyFrame>, Welcome), String> {
    let mut inbound = match tokio::time::timeout(HANDSHAKE_TIMEOUT, client.control(ReceiverStream::new(rx))).await {
        Ok(Ok(resp)) => resp.into_inner(),
        Ok(Err(status)) => return Err(error_chain(&status)),
        Err(_) => return Err(format!("no answer in {HANDSHAKE_TIMEOUT:?}")),
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(ProxyFrame { msg: Some(ProxyMsg::Welcome(w)) }))) => Ok((inbound, w)),
        Ok(Ok(Some(_))) => Err("the proxy's first frame was not Welcome".into()),
        Ok(Ok(None)) => Err("the proxy closed the stream without a Welcome".into()),
        Ok(Err(status)) => Err(error_chain(&status)),
        Err(_) => Err(format!("no Welcome in {HANDSHAKE_TIMEOUT:?}")),
    }
}

/// Logs a failed connection so that the usual culprits (firewalls, wrong address, wrong
/// CA) are plain in the agent's log.
fn log_unreachable(target: &Target, addr: &str, e: &RpcError) {
    let reason = match e {
        RpcError::Connect { reason, .. } => reason.clone(),
        other => other.to_string(),
    };
    if reason.contains("TLS") || reason.contains("certificate") {
        tracing::warn!(
            "TLS with root cluster {}'s proxy at {addr} failed: {reason} (is the root CA of the trusted cluster current?)",
            target.name
        );
    } else if addr == target.tunnel_addr {
        tracing::warn!("cannot reach the root cluster's tunnel_addr {addr}: {reason}");
    } else {
        tracing::warn!("cannot reach root cluster {}'s proxy at {addr}: {reason}", target.name);
    }
}

/// A welcomed tunnel.
struct Session {
    agent: Arc<Agent>,
    target: Arc<Target>,
    addr: String,
    proxy_id: String,
    /// The connection the control stream runs on; dial streams share it.
    channel: Channel,
    tx: mpsc::Sender<AgentFrame>,
    link: mpsc::Sender<LinkEvent>,
}

impl Session {
    /// Serves the control stream until the tunnel ends.
    async fn serve(self, inbound: &mut Streaming<ProxyFrame>, welcome: &Welcome) -> EndReason {
        let interval = heartbeat_interval(welcome.heartbeat_seconds);
        let silent_limit = dead_after(interval);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        // Dialled connections and node queries; dropping the set ends them with the tunnel.
        let mut requests = JoinSet::new();
        let (name, id, addr) = (&self.target.name, &self.proxy_id, &self.addr);
        let reason = loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if last_heard.elapsed() > silent_limit {
                        tracing::warn!(
                            "root cluster {name} proxy {id} at {addr} sent nothing for {}s: the tunnel is dead, reconnecting",
                            last_heard.elapsed().as_secs()
                        );
                        break EndReason::Dead;
                    }
                    // A full queue means the proxy stopped reading; the silence check decides.
                    let _ = self.tx.try_send(agent_frame(AgentMsg::Heartbeat(heartbeat_now())));
                }
                received = inbound.message() => match received {
                    Ok(Some(f)) => {
                        last_heard = Instant::now();
                        if let Some(reason) = self.on_frame(f, &mut requests).await {
                            break reason;
                        }
                    }
                    Ok(None) => {
                        tracing::info!("root cluster {name} proxy {id} at {addr} closed the tunnel");
                        break EndReason::Closed;
                    }
                    Err(status) => {
                        tracing::warn!("the tunnel to root cluster {name} proxy {id} at {addr} broke: {}", error_chain(&status));
                        break EndReason::Closed;
                    }
                },
                Some(_) = requests.join_next(), if !requests.is_empty() => {}
            }
        };
        if reason == EndReason::Drained && !requests.is_empty() {
            // The proxy is leaving in good order: let its open sessions finish on their own.
            let agent = self.agent.clone();
            tokio::spawn(async move {
                let finished = async { while requests.join_next().await.is_some() {} };
                tokio::select! {
                    _ = tokio::time::timeout(DRAIN_GRACE, finished) => {}
                    () = agent.stopped() => {}
                }
            });
        }
        reason
    }

    /// Handles one frame from the proxy; `Some` ends the tunnel.
    async fn on_frame(&self, f: ProxyFrame, requests: &mut JoinSet<()>) -> Option<EndReason> {
        match f.msg? {
            ProxyMsg::Heartbeat(_) | ProxyMsg::Welcome(_) => {}
            ProxyMsg::Proxies(set) => {
                let _ = self.link.send(LinkEvent::Proxies(set.proxies)).await;
            }
            ProxyMsg::Dial(req) => {
                requests.spawn(dial::serve(
                    self.agent.clone(),
                    self.target.name.clone(),
                    self.channel.clone(),
                    self.tx.clone(),
                    req,
                ));
            }
            ProxyMsg::ListNodes(q) => {
                requests.spawn(queries::answer_nodes(self.agent.clone(), self.tx.clone(), q));
            }
            ProxyMsg::Authorize(q) => {
                requests.spawn(queries::answer_authorize(self.agent.clone(), self.tx.clone(), q));
            }
            ProxyMsg::Drain(d) => {
                tracing::info!(
                    "root cluster {} proxy {} at {} is draining ({}): reconnecting elsewhere",
                    self.target.name,
                    self.proxy_id,
                    self.addr,
                    if d.reason.is_empty() { "no reason given" } else { d.reason.as_str() }
                );
                return Some(EndReason::Drained);
            }
        }
        None
    }
}
