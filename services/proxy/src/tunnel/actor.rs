//! `LeafActor`: one per trusted leaf cluster, for as long as the trust exists. It alone adds
//! and drops the leaf's tunnels: a tunnel whose agent said Hello, one whose stream ended, one
//! silent for three heartbeats, all of them when the trust goes or the proxy shuts down.
//! Requests do not pass through it (see `leaf.rs`); its handlers do no I/O.

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Message};
use portcullis_proto::tunnel::proxy_frame::Msg;
use portcullis_proto::tunnel::{Drain, ProxyFrame};
use tokio::sync::mpsc;

use super::leaf::Shared;

/// A tunnel's control stream came up (the agent said Hello).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct TunnelUp {
    pub tunnel_id: u64,
    pub agent_id: String,
    /// Frames for the agent; dropping it closes the tunnel.
    pub tx: mpsc::Sender<ProxyFrame>,
}

/// A tunnel's control stream ended.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct TunnelDown {
    pub tunnel_id: u64,
}

/// Drain and drop every tunnel (CA changed, proxy shutting down); with `stop`, the actor
/// stops too (trust removed).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Close {
    pub reason: String,
    pub stop: bool,
}

/// The tunnels of one trusted leaf.
pub struct LeafActor {
    shared: Arc<Shared>,
}

impl LeafActor {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        LeafActor { shared }
    }
}

impl Actor for LeafActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let every = self.shared.timings.heartbeat.min(Duration::from_secs(1));
        ctx.run_interval(every, |act, _| act.shared.check());
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.shared.remove_where(|_| true, "the leaf's actor stopped");
    }
}

impl Handler<TunnelUp> for LeafActor {
    type Result = ();
    fn handle(&mut self, msg: TunnelUp, _ctx: &mut Context<Self>) {
        self.shared.add(msg.tunnel_id, msg.agent_id, msg.tx);
    }
}

impl Handler<TunnelDown> for LeafActor {
    type Result = ();
    fn handle(&mut self, msg: TunnelDown, _ctx: &mut Context<Self>) {
        self.shared.remove_where(|t| t.id == msg.tunnel_id, "the agent's stream ended");
    }
}

impl Handler<Close> for LeafActor {
    type Result = ();
    fn handle(&mut self, msg: Close, ctx: &mut Context<Self>) {
        let drain = ProxyFrame { msg: Some(Msg::Drain(Drain { reason: msg.reason.clone() })) };
        self.shared.send_to_all(&drain);
        self.shared.remove_where(|_| true, &msg.reason);
        if msg.stop {
            ctx.stop();
        }
    }
}
