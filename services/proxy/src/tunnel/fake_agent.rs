//! A fake leaf tunnel agent for tests: real mutual TLS and the real gRPC protocol, answering
//! dials by connecting to one fixed TCP address and node listings from a fixed list.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_pki::Secret;
use portcullis_pki::x509::{self, PROXY_SERVER_NAME, TlsCa, TlsCertRequest};
use portcullis_proto::auth::Node;
use portcullis_proto::tunnel::agent_frame::Msg as AgentMsg;
use portcullis_proto::tunnel::proxy_frame::Msg as ProxyMsg;
use portcullis_proto::tunnel::tunnel_client::TunnelClient;
use portcullis_proto::tunnel::{
    AgentFrame, Chunk, DialFailed, DialRequest, Heartbeat, Hello, NodesAnswer, ProxySet, Welcome,
};
use portcullis_rpc::{ClientTls, Trust};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use portcullis_rpc::Channel;

use super::server::DIAL_ID_HEADER;

/// A certificate (PEM) and key issued by `ca` to `name` with `roles` as OUs.
pub fn issue(ca: &TlsCa, name: &str, roles: &[&str]) -> (String, Secret<String>) {
    let key = x509::generate_key().unwrap();
    let cert = ca
        .issue(&TlsCertRequest {
            public_key_der: x509::public_key_der(&key),
            name: name.into(),
            system_roles: roles.iter().map(|r| r.to_string()).collect(),
            dns_names: if roles.contains(&"Proxy") { vec![PROXY_SERVER_NAME.into()] } else { vec![] },
            ttl: Duration::from_secs(3600),
            ..Default::default()
        })
        .unwrap();
    (cert, Secret::new(key.serialize_pem()))
}

/// A TLS channel to the tunnel listener presenting `cert`, trusting `root_ca_pem`.
pub async fn channel(addr: &str, root_ca_pem: &str, cert: (String, Secret<String>)) -> Result<Channel, String> {
    let tls = ClientTls {
        trust: Trust::Cas(vec![root_ca_pem.to_string()]),
        identity: Some(cert),
        server_name: PROXY_SERVER_NAME.into(),
    };
    portcullis_rpc::connect(addr, &tls).await.map_err(|e| e.to_string())
}

/// How the fake behaves.
#[derive(Clone)]
pub struct Behaviour {
    pub agent_id: String,
    /// Send heartbeats (every `heartbeat_seconds` of the Welcome).
    pub heartbeat: bool,
    /// Where every accepted dial goes.
    pub target: String,
    /// Hosts refused with `DialFailed`.
    pub refuse_host: String,
    pub nodes: Vec<Node>,
}

/// A connected fake agent.
pub struct FakeAgent {
    pub welcome: Welcome,
    pub proxies: ProxySet,
    pub client: TunnelClient<Channel>,
    /// Every dial request received.
    pub dials: Arc<Mutex<Vec<DialRequest>>>,
    /// Drain reasons received.
    pub drains: Arc<Mutex<Vec<String>>>,
    /// Turns true when the proxy ends the control stream.
    pub ended: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeAgent {
    /// Opens the control stream, says Hello and reads Welcome and ProxySet.
    pub async fn start(channel: Channel, b: Behaviour) -> Result<FakeAgent, String> {
        let mut client = TunnelClient::new(channel);
        let (tx, rx) = mpsc::channel(16);
        let hello = AgentFrame { msg: Some(AgentMsg::Hello(Hello { agent_id: b.agent_id.clone(), version: "test".into() })) };
        tx.send(hello).await.map_err(|e| e.to_string())?;
        let mut inbound = client.control(ReceiverStream::new(rx)).await.map_err(|s| s.message().to_string())?.into_inner();
        let welcome = match inbound.message().await.map_err(|s| s.message().to_string())? {
            Some(f) => match f.msg {
                Some(ProxyMsg::Welcome(w)) => w,
                other => return Err(format!("expected Welcome, got {other:?}")),
            },
            None => return Err("the stream ended before Welcome".into()),
        };
        let proxies = match inbound.message().await.map_err(|s| s.message().to_string())?.and_then(|f| f.msg) {
            Some(ProxyMsg::Proxies(p)) => p,
            other => return Err(format!("expected ProxySet, got {other:?}")),
        };
        let dials = Arc::new(Mutex::new(Vec::new()));
        let drains = Arc::new(Mutex::new(Vec::new()));
        let (ended_tx, ended) = watch::channel(false);
        let every = Duration::from_secs(u64::from(welcome.heartbeat_seconds.max(1)));
        let (d2, dr2, c2) = (dials.clone(), drains.clone(), client.clone());
        let task = tokio::spawn(async move {
            let mut beat = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = beat.tick(), if b.heartbeat => {
                        let hb = AgentFrame { msg: Some(AgentMsg::Heartbeat(Heartbeat { unix_millis: 1 })) };
                        let _ = tx.send(hb).await;
                    }
                    f = inbound.message() => match f {
                        Ok(Some(f)) => match f.msg {
                            Some(ProxyMsg::Dial(d)) => {
                                d2.lock().unwrap().push(d.clone());
                                if d.host == b.refuse_host {
                                    let reason = format!("node {:?} is not found", d.host);
                                    let f = AgentFrame { msg: Some(AgentMsg::DialFailed(DialFailed { dial_id: d.dial_id, reason })) };
                                    let _ = tx.send(f).await;
                                } else {
                                    tokio::spawn(bridge(c2.clone(), d.dial_id, b.target.clone()));
                                }
                            }
                            Some(ProxyMsg::ListNodes(q)) => {
                                let answer = NodesAnswer { request_id: q.request_id, nodes: b.nodes.clone(), error: String::new() };
                                let _ = tx.send(AgentFrame { msg: Some(AgentMsg::Nodes(answer)) }).await;
                            }
                            Some(ProxyMsg::Authorize(q)) => {
                                let answer = portcullis_proto::tunnel::AuthorizeAnswer {
                                    request_id: q.request_id,
                                    allowed: false,
                                    reason: format!("leaf says no to {} on {}", q.login, q.node),
                                    error: String::new(),
                                };
                                let _ = tx.send(AgentFrame { msg: Some(AgentMsg::Authorized(answer)) }).await;
                            }
                            Some(ProxyMsg::Drain(d)) => dr2.lock().unwrap().push(d.reason),
                            _ => {}
                        },
                        _ => break,
                    }
                }
            }
            let _ = ended_tx.send(true);
        });
        Ok(FakeAgent { welcome, proxies, client, dials, drains, ended, task })
    }

    /// Waits until the proxy ended the control stream.
    pub async fn wait_ended(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.ended.wait_for(|e| *e)).await.is_ok()
    }
}

/// Answers a dial: opens the `Dial` stream and copies bytes between it and `target`.
pub async fn bridge(mut client: TunnelClient<Channel>, dial_id: u64, target: String) {
    let Ok(tcp) = tokio::net::TcpStream::connect(&target).await else { return };
    let (mut r, mut w) = tcp.into_split();
    let (up_tx, up_rx) = mpsc::channel::<Chunk>(16);
    let mut req = tonic::Request::new(ReceiverStream::new(up_rx));
    req.metadata_mut().insert(DIAL_ID_HEADER, dial_id.to_string().parse().unwrap());
    let Ok(resp) = client.dial(req).await else { return };
    let mut down = resp.into_inner();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if up_tx.send(Chunk { data: portcullis_proto::Bytes::copy_from_slice(&buf[..n]) }).await.is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping up_tx ends the request stream: the proxy reads EOF.
    });
    while let Ok(Some(c)) = down.message().await {
        if w.write_all(&c.data).await.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
}
