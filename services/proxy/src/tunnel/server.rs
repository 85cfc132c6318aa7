//! The tunnel listener: TLS handshakes in their own tasks, then tonic serving
//! `portcullis.tunnel.v1.Tunnel`. Each connection carries the verified agent identity to the
//! handlers as tonic connect info.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use portcullis_net::{ConnGuard, ConnectionLimits, Gate, GatedListener};
use portcullis_proto::tunnel::agent_frame::Msg as AgentMsg;
use portcullis_proto::tunnel::proxy_frame::Msg as ProxyMsg;
use portcullis_proto::tunnel::tunnel_server::{Tunnel, TunnelServer};
use portcullis_proto::tunnel::{AgentFrame, Chunk, ProxyFrame, ProxySet, Welcome};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};

use super::{Hub, Leaf};
use crate::ProxyError;
use crate::drain::Drain;

pub use portcullis_tunnel::DIAL_ID_HEADER;
use portcullis_tunnel::{CHUNK_QUEUE, DialStream, heartbeat_now, heartbeat_seconds, proxy_frame};

/// Who is at the other end of a tunnel connection, from its verified certificate.
#[derive(Debug, Clone)]
pub struct AgentPeer {
    /// The leaf cluster (certificate O).
    pub cluster: String,
    /// The agent's host id (certificate CN).
    pub agent_id: String,
    pub remote_addr: SocketAddr,
}

/// A TLS connection from a verified agent.
pub struct AgentConn {
    tls: TlsStream,
    peer: AgentPeer,
    /// The connection's place under the listener's connection caps.
    _place: ConnGuard,
}

type TlsStream = tokio_rustls::server::TlsStream<portcullis_rpc::ReadBuffered>;

impl Connected for AgentConn {
    type ConnectInfo = AgentPeer;
    fn connect_info(&self) -> AgentPeer {
        self.peer.clone()
    }
}

impl AsyncRead for AgentConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for AgentConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}

/// What agents are told when the proxy drains.
pub const SHUTTING_DOWN: &str = "the proxy is shutting down";

/// Serves tunnels on `listener` until `drain` fires: then agents are asked to reconnect
/// elsewhere (their tunnels drop), the listener closes, and open `Dial` streams may finish.
pub async fn serve(hub: Arc<Hub>, listener: TcpListener, tls: Arc<rustls::ServerConfig>, drain: Drain) -> Result<(), ProxyError> {
    serve_limited(hub, listener, tls, ConnectionLimits::PROXY, drain).await
}

/// [`serve`] with `limits`: per-address and total connection caps, the TLS handshake (where
/// the agent authenticates) under the handshake timeout, TCP and HTTP/2 keep-alives.
pub async fn serve_limited(
    hub: Arc<Hub>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: ConnectionLimits,
    drain: Drain,
) -> Result<(), ProxyError> {
    let drained = {
        let hub = hub.clone();
        let draining = drain.draining();
        async move {
            draining.await;
            // Agents learn to reconnect elsewhere before the listener goes.
            hub.drain_all(SHUTTING_DOWN);
        }
    };
    let gated = GatedListener::new(listener, Gate::new("proxy_tunnel", limits));
    let incoming = portcullis_net::tls_incoming(
        gated,
        tokio_rustls::TlsAcceptor::from(tls),
        portcullis_rpc::read_buffered,
        agent_conn,
    );
    let service = TunnelServer::new(TunnelService { hub });
    // Every user session of a leaf shares one HTTP/2 connection: windows larger than the
    // 64 KiB default keep bulk copies (scp through the tunnel) from stalling on round trips.
    tonic::transport::Server::builder()
        .initial_stream_window_size(1024 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024)
        .max_frame_size(portcullis_rpc::MAX_FRAME_SIZE)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_interval))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, drained)
        .await
        .map_err(|e| ProxyError::Server { server: "tunnel", reason: portcullis_rpc::client::error_chain(&e) })
}

/// An agent's connection once its TLS handshake is done, or `None` (closed) when its
/// certificate names no agent.
fn agent_conn(tls: TlsStream, remote_addr: SocketAddr, place: ConnGuard) -> Option<AgentConn> {
    // The verifier has checked the certificate; only its names are read here.
    let id = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| portcullis_pki::x509::parse_identity(c.as_ref()).ok());
    let Some(id) = id else {
        tracing::info!(%remote_addr, "tunnel connection without a readable client certificate");
        return None;
    };
    tracing::debug!(%remote_addr, leaf = %id.cluster, agent = %id.name, "tunnel agent connected");
    let peer = AgentPeer { cluster: id.cluster, agent_id: id.name, remote_addr };
    Some(AgentConn { tls, peer, _place: place })
}

/// The gRPC service; one per listener.
pub struct TunnelService {
    pub hub: Arc<Hub>,
}

fn peer_of<T>(req: &Request<T>) -> Result<AgentPeer, Status> {
    req.extensions()
        .get::<AgentPeer>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("a verified tunnel agent certificate is required"))
}

fn frame(msg: ProxyMsg) -> Result<ProxyFrame, Status> {
    Ok(proxy_frame(msg))
}

#[tonic::async_trait]
impl Tunnel for TunnelService {
    type ControlStream = ReceiverStream<Result<ProxyFrame, Status>>;
    type DialStream = ReceiverStream<Result<Chunk, Status>>;

    async fn control(&self, req: Request<Streaming<AgentFrame>>) -> Result<Response<Self::ControlStream>, Status> {
        let peer = peer_of(&req)?;
        let (out_tx, out_rx) = mpsc::channel(32);
        // Answer at once: an agent may wait for the response headers before sending Hello.
        tokio::spawn(run_control(self.hub.clone(), peer, req.into_inner(), out_tx));
        Ok(Response::new(ReceiverStream::new(out_rx)))
    }

    async fn dial(&self, req: Request<Streaming<Chunk>>) -> Result<Response<Self::DialStream>, Status> {
        let peer = peer_of(&req)?;
        let dial_id = portcullis_tunnel::dial_id(req.metadata())?;
        let Some(leaf) = self.hub.leaf(&peer.cluster) else {
            return Err(Status::not_found(format!("no dial with id {dial_id} is waiting for a connection")));
        };
        let (out_tx, out_rx) = mpsc::channel(CHUNK_QUEUE);
        let stream = DialStream::new(req.into_inner(), out_tx);
        match leaf.dial_arrived(dial_id, &peer.agent_id, stream) {
            Ok(()) => Ok(Response::new(ReceiverStream::new(out_rx))),
            Err(e) => {
                tracing::info!(leaf = %peer.cluster, agent = %peer.agent_id, dial_id, "dial stream refused: {e}");
                Err(Status::not_found(e.to_string()))
            }
        }
    }
}

/// One control stream: Hello, Welcome and ProxySet, then heartbeats both ways, frames from
/// the leaf's actor down and the agent's answers up, until either side ends it.
async fn run_control(
    hub: Arc<Hub>,
    peer: AgentPeer,
    mut inbound: Streaming<AgentFrame>,
    out: mpsc::Sender<Result<ProxyFrame, Status>>,
) {
    let timings = hub.timings;
    let hello = match tokio::time::timeout(timings.answer_timeout, inbound.message()).await {
        Ok(Ok(Some(AgentFrame { msg: Some(AgentMsg::Hello(h)) }))) => h,
        Ok(Err(s)) => return tracing::debug!(leaf = %peer.cluster, "control stream ended before Hello: {s}"),
        Err(_) => {
            let _ = out.send(Err(Status::deadline_exceeded("no Hello frame in time"))).await;
            return;
        }
        Ok(_) => {
            let _ = out.send(Err(Status::invalid_argument("the first frame of a control stream must be Hello"))).await;
            return;
        }
    };
    if hello.agent_id != peer.agent_id {
        // The certificate is what was verified; the Hello id is only informative.
        tracing::debug!(leaf = %peer.cluster, cert = %peer.agent_id, hello = %hello.agent_id, "Hello names another agent id than the certificate");
    }
    let welcome = ProxyMsg::Welcome(Welcome {
        proxy_id: hub.proxy_id.clone(),
        root_cluster: hub.cluster_name.clone(),
        heartbeat_seconds: heartbeat_seconds(timings.heartbeat),
    });
    let mut proxies = hub.proxy_set();
    let set = ProxyMsg::Proxies(ProxySet { proxies: proxies.borrow_and_update().clone() });
    if out.send(frame(welcome)).await.is_err() || out.send(frame(set)).await.is_err() {
        return;
    }

    let tunnel_id = hub.next_id();
    let (tx, mut frames) = mpsc::channel::<ProxyFrame>(64);
    // The verifier let the agent in, so its leaf is trusted; the trust may have gone since.
    let up = match hub.leaf(&peer.cluster) {
        Some(leaf) => leaf.tunnel_up(tunnel_id, peer.agent_id.clone(), tx).await.map(|()| leaf),
        None => Err(super::TunnelError::Offline(peer.cluster.clone())),
    };
    let leaf = match up {
        Ok(leaf) => leaf,
        Err(e) => {
            let _ = out.send(Err(Status::unavailable(e.to_string()))).await;
            return;
        }
    };
    tracing::info!(leaf = %peer.cluster, agent = %peer.agent_id, version = %hello.version, remote = %peer.remote_addr, tunnel = tunnel_id, "tunnel agent registered");

    let mut beat = tokio::time::interval(timings.heartbeat);
    beat.tick().await;
    let mut watching = true;
    let why = loop {
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(f)) => forward_up(&leaf, tunnel_id, f),
                Ok(None) => break "the agent closed the stream".to_string(),
                Err(s) => break format!("the stream broke: {}", s.message()),
            },
            f = frames.recv() => match f {
                Some(f) => if out.send(Ok(f)).await.is_err() { break "the agent went away".into() },
                // The leaf's actor dropped the tunnel (silent too long, trust removed, shutdown).
                None => break "closed by the proxy".into(),
            },
            _ = beat.tick() => {
                let hb = ProxyMsg::Heartbeat(heartbeat_now());
                if out.send(frame(hb)).await.is_err() { break "the agent went away".into() }
            }
            changed = proxies.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                } else {
                    let set = ProxyMsg::Proxies(ProxySet { proxies: proxies.borrow_and_update().clone() });
                    if out.send(frame(set)).await.is_err() { break "the agent went away".into() }
                }
            }
            _ = out.closed() => break "the agent went away".into(),
        }
    };
    tracing::debug!(leaf = %peer.cluster, agent = %peer.agent_id, tunnel = tunnel_id, "control stream ends: {why}");
    leaf.tunnel_down(tunnel_id);
}

/// Hands one agent frame to the leaf: any frame proves the agent alive; answers go to the
/// requests waiting for them.
fn forward_up(leaf: &Leaf, tunnel_id: u64, f: AgentFrame) {
    let Some(msg) = f.msg else { return };
    leaf.heartbeat(tunnel_id);
    match msg {
        AgentMsg::DialFailed(d) => leaf.dial_failed(d.dial_id, d.reason),
        AgentMsg::Nodes(n) => leaf.nodes_answered(n),
        AgentMsg::Authorized(a) => leaf.authorize_answered(a),
        AgentMsg::Heartbeat(_) | AgentMsg::Hello(_) => {}
    }
}
