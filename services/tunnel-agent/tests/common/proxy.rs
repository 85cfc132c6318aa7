//! A fake root proxy: the tunnel server over mutual TLS (root server certificate, leaf CA
//! for clients), recording what the agent sends and letting tests push frames down.
//! It runs on a runtime of its own so that `kill` drops every connection at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_proto::tunnel::agent_frame::Msg as AgentMsg;
use portcullis_proto::tunnel::proxy_frame::Msg as ProxyMsg;
use portcullis_proto::tunnel::tunnel_server::{Tunnel, TunnelServer};
use portcullis_proto::tunnel::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Pki;

type Tx<T> = mpsc::Sender<Result<T, Status>>;

/// An open `Dial` stream: what the agent sends, and where to answer.
pub struct DialStream {
    pub inbound: Streaming<Chunk>,
    pub tx: Tx<Chunk>,
}

/// What the fake proxy knows and records; survives restarts.
pub struct ProxyState {
    pub proxy_id: String,
    pub heartbeat_seconds: u32,
    /// Announced in every ProxySet.
    pub proxy_set: Mutex<Vec<ProxyInfo>>,
    /// Stop sending heartbeats (a hung proxy).
    pub silent: AtomicBool,
    pub hellos: Mutex<Vec<Hello>>,
    pub heartbeats: AtomicUsize,
    /// Control streams open right now.
    pub open: AtomicUsize,
    pub controls: Mutex<Vec<Tx<ProxyFrame>>>,
    pub dial_failed: Mutex<Vec<DialFailed>>,
    pub answers: Mutex<Vec<NodesAnswer>>,
    pub dials: Mutex<HashMap<u64, DialStream>>,
}

impl ProxyState {
    pub fn new(proxy_id: &str) -> Arc<Self> {
        Arc::new(ProxyState {
            proxy_id: proxy_id.into(),
            heartbeat_seconds: 1,
            proxy_set: Mutex::new(Vec::new()),
            silent: AtomicBool::new(false),
            hellos: Mutex::new(Vec::new()),
            heartbeats: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            controls: Mutex::new(Vec::new()),
            dial_failed: Mutex::new(Vec::new()),
            answers: Mutex::new(Vec::new()),
            dials: Mutex::new(HashMap::new()),
        })
    }

    pub fn hello_count(&self) -> usize {
        self.hellos.lock().unwrap().len()
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Sends `msg` on every open control stream.
    pub async fn send(&self, msg: ProxyMsg) {
        let controls: Vec<_> = self.controls.lock().unwrap().iter().filter(|t| !t.is_closed()).cloned().collect();
        assert!(!controls.is_empty(), "no open control stream on proxy {}", self.proxy_id);
        for c in controls {
            let _ = c.send(Ok(ProxyFrame { msg: Some(msg.clone()) })).await;
        }
    }

    pub fn take_dial(&self, id: u64) -> Option<DialStream> {
        self.dials.lock().unwrap().remove(&id)
    }
}

/// Decrements the open-stream count however the stream's task ends (even when killed).
struct OpenGuard(Arc<ProxyState>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Served(Arc<ProxyState>);

fn frame(msg: ProxyMsg) -> Result<ProxyFrame, Status> {
    Ok(portcullis_tunnel::proxy_frame(msg))
}

#[tonic::async_trait]
impl Tunnel for Served {
    type ControlStream = ReceiverStream<Result<ProxyFrame, Status>>;
    type DialStream = ReceiverStream<Result<Chunk, Status>>;

    async fn control(&self, req: Request<Streaming<AgentFrame>>) -> Result<Response<Self::ControlStream>, Status> {
        if req.peer_certs().is_none_or(|c| c.is_empty()) {
            return Err(Status::unauthenticated("tunnel agents must present a certificate"));
        }
        let state = self.0.clone();
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let hello = match inbound.message().await {
                Ok(Some(AgentFrame { msg: Some(AgentMsg::Hello(h)) })) => h,
                other => {
                    let _ = tx.send(Err(Status::invalid_argument(format!("expected Hello, got {other:?}")))).await;
                    return;
                }
            };
            state.hellos.lock().unwrap().push(hello);
            state.open.fetch_add(1, Ordering::SeqCst);
            let _guard = OpenGuard(state.clone());
            let welcome = Welcome {
                proxy_id: state.proxy_id.clone(),
                root_cluster: super::ROOT.into(),
                heartbeat_seconds: state.heartbeat_seconds,
            };
            let set = ProxySet { proxies: state.proxy_set.lock().unwrap().clone() };
            if tx.send(frame(ProxyMsg::Welcome(welcome))).await.is_err()
                || tx.send(frame(ProxyMsg::Proxies(set))).await.is_err()
            {
                return;
            }
            state.controls.lock().unwrap().push(tx.clone());
            let mut ticker = tokio::time::interval(Duration::from_secs(u64::from(state.heartbeat_seconds)));
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        if !state.silent.load(Ordering::SeqCst)
                            && tx.send(frame(ProxyMsg::Heartbeat(Heartbeat { unix_millis: 1 }))).await.is_err()
                        {
                            break;
                        }
                    }
                    received = inbound.message() => match received {
                        Ok(Some(AgentFrame { msg: Some(m) })) => match m {
                            AgentMsg::Heartbeat(_) => {
                                state.heartbeats.fetch_add(1, Ordering::SeqCst);
                            }
                            AgentMsg::DialFailed(f) => state.dial_failed.lock().unwrap().push(f),
                            AgentMsg::Nodes(a) => state.answers.lock().unwrap().push(a),
                            AgentMsg::Hello(_) | AgentMsg::Authorized(_) => {}
                        },
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    },
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn dial(&self, req: Request<Streaming<Chunk>>) -> Result<Response<Self::DialStream>, Status> {
        let id = portcullis_tunnel::dial_id(req.metadata())?;
        let (tx, rx) = mpsc::channel(portcullis_tunnel::CHUNK_QUEUE);
        self.0.dials.lock().unwrap().insert(id, DialStream { inbound: req.into_inner(), tx });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A running fake proxy; `kill` (or drop) stops it hard, closing every connection.
pub struct FakeProxy {
    pub addr: SocketAddr,
    pub state: Arc<ProxyState>,
    rt: Option<tokio::runtime::Runtime>,
}

impl FakeProxy {
    /// Serves `state` on `addr` (port 0 for any).
    pub fn start(pki: &Pki, state: Arc<ProxyState>, addr: SocketAddr) -> Self {
        let std_listener = std::net::TcpListener::bind(addr).unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let tls = portcullis_rpc::server::server_tls(
            &pki.proxy.0,
            &pki.proxy.1,
            &[pki.root.cert_pem().to_string()],
            &[pki.leaf.cert_pem().to_string()],
        );
        let served = Served(state.clone());
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            tonic::transport::Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(TunnelServer::new(served))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        FakeProxy { addr, state, rt: Some(rt) }
    }

    /// Stops the proxy at once: listener, connections and streams go away.
    pub fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        self.kill();
    }
}
