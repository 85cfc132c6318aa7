//! Serving the root proxy's dials on a tunnel: dialling leaf nodes (registered ones that
//! answer as SSH servers, and the leaf auth service for the proxy itself only), relaying their
//! bytes through a `Dial` stream, and auditing every dial on the leaf. Targets come from the
//! agent's access cache (auth only while it holds nothing); questions are in [`crate::queries`].

use std::sync::Arc;
use std::time::Duration;

use portcullis_proto::auth::{AuditEventRequest, ResolveNodeRequest};
use portcullis_proto::tunnel::agent_frame::Msg as AgentMsg;
use portcullis_proto::tunnel::tunnel_client::TunnelClient;
use portcullis_proto::tunnel::{AgentFrame, Chunk, DialFailed, DialRequest};
use portcullis_proto::{Bytes, BytesMut};
use portcullis_rpc::Channel;
use portcullis_rpc::client::error_chain;
use portcullis_rpc::ssh_ident::{IDENT_TIMEOUT, read_ssh_ident};
use portcullis_tunnel::{AUTH_HOST, CHUNK_QUEUE, CHUNK_SIZE, ChunkStream, ChunkReader, ChunkWriter, DIAL_EVENT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{Agent, CALL_TIMEOUT};

/// Longest wait for a TCP connection to a leaf node, and for the proxy to take the stream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// After one direction ended, how long the other may take to follow.
const CLOSE_GRACE: Duration = Duration::from_secs(30);

/// Serves one `DialRequest` from the proxy of root cluster `root`: resolves the target,
/// connects, and pipes bytes through a `Dial` stream on `channel` (the tunnel's own
/// connection). Failures answer `DialFailed` on `control` and go to the leaf's audit log.
pub async fn serve(
    agent: Arc<Agent>,
    root: String,
    channel: Channel,
    control: mpsc::Sender<AgentFrame>,
    req: DialRequest,
) {
    use tracing::Instrument;
    // Continues the root proxy's `tunnel.dial` span; the node's session span follows this.
    let span = tracing::info_span!(
        "agent.dial",
        cluster = %agent.cluster(),
        root = %root,
        node = %req.host,
        user = %req.user,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    let trace: std::collections::HashMap<String, String> = req.trace.clone().into_iter().collect();
    portcullis_telemetry::set_parent_from_map(&span, &trace);
    serve_traced(agent, root, channel, control, req).instrument(span).await
}

async fn serve_traced(
    agent: Arc<Agent>,
    root: String,
    channel: Channel,
    control: mpsc::Sender<AgentFrame>,
    req: DialRequest,
) {
    let target = format!("{}:{}", req.host, req.port);
    tracing::debug!(dial_id = req.dial_id, user = %req.user, "dial from root cluster {root} to {target}");
    if req.host == AUTH_HOST && !req.for_proxy {
        // The root proxy refuses this already; a proxy that asks anyway is refused here too.
        let reason = format!(
            "{AUTH_HOST} is the auth service of cluster {}: user sessions may not reach it through the tunnel \
             (only the root proxy itself may)",
            agent.cluster()
        );
        return refuse(&agent, &root, &control, &req, &target, reason).await;
    }
    let addr = match resolve(&agent, &req, &target).await {
        Ok(a) => a,
        Err(reason) => return refuse(&agent, &root, &control, &req, &target, reason).await,
    };
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return refuse(&agent, &root, &control, &req, &target, format!("cannot connect to {addr}: {e}")).await;
        }
        Err(_) => {
            let reason = format!("cannot connect to {addr}: no answer in {}s", CONNECT_TIMEOUT.as_secs());
            return refuse(&agent, &root, &control, &req, &target, reason).await;
        }
    };
    let _ = tcp.set_nodelay(true);
    let mut tcp = tcp;
    // What the node said before anything was relayed: passed on to the user unchanged.
    let mut first = Bytes::new();
    if req.host != AUTH_HOST {
        // The node's session span joins this trace (see portcullis_telemetry::preamble); the
        // "no trace" form spares the node its wait for one before it identifies itself.
        if let Err(e) = portcullis_telemetry::preamble::write_or_none(&mut tcp).await {
            return refuse(&agent, &root, &control, &req, &target, format!("cannot write to {addr}: {e}")).await;
        }
        // Only an SSH server is relayed to: a node must not turn the agent into a way to
        // any other service of its host.
        match read_ssh_ident(&mut tcp, IDENT_TIMEOUT).await {
            Ok(seen) => first = Bytes::from(seen),
            Err(e) => {
                let reason = format!("refused to relay to {target} at {addr}: {e}");
                return refuse(&agent, &root, &control, &req, &target, reason).await;
            }
        }
    }
    tracing::Span::current().record("outcome", "ok");
    let (out_tx, out_rx) = mpsc::channel::<Chunk>(CHUNK_QUEUE);
    // A first chunk (empty for `@auth`) makes the stream reach the proxy at once.
    let _ = out_tx.send(Chunk { data: first }).await;
    let mut request = tonic::Request::new(ReceiverStream::new(out_rx));
    portcullis_tunnel::set_dial_id(request.metadata_mut(), req.dial_id);
    let inbound = match tokio::time::timeout(CONNECT_TIMEOUT, TunnelClient::new(channel).dial(request)).await {
        Ok(Ok(resp)) => resp.into_inner(),
        Ok(Err(status)) => {
            let reason = format!("the root proxy refused the dial stream: {}", error_chain(&status));
            return refuse(&agent, &root, &control, &req, &target, reason).await;
        }
        Err(_) => {
            let reason = format!("the root proxy did not take the dial stream in {}s", CONNECT_TIMEOUT.as_secs());
            return refuse(&agent, &root, &control, &req, &target, reason).await;
        }
    };
    tracing::debug!(dial_id = req.dial_id, "dial to {target} connected to {addr}");
    agent.metrics.dial(true);
    let event = dial_event(&root, &req, &target, Ok(&addr));
    // Written off the session's path: the audit call must not slow every connection.
    tokio::spawn(emit(agent.clone(), event));
    relay(tcp, ChunkStream::new(inbound, out_tx)).await;
    tracing::debug!(dial_id = req.dial_id, "dial to {target} closed");
}

/// The leaf's `tunnel.dial` audit event: who (root user, root cluster) reached what.
fn dial_event(root: &str, req: &DialRequest, target: &str, outcome: Result<&str, &str>) -> serde_json::Value {
    let mut event = serde_json::json!({
        "event": DIAL_EVENT,
        "success": outcome.is_ok(),
        "cluster": root,
        "user": req.user,
        "target": target,
        "for_proxy": req.for_proxy,
    });
    match outcome {
        Ok(addr) => event["addr"] = serde_json::json!(addr),
        Err(reason) => event["error"] = serde_json::json!(reason),
    }
    event
}

/// Writes an audit event to the leaf's auth service: through the agent's spool, which keeps
/// it on disk until auth acknowledges it; without one, sent once and failures logged.
async fn emit(agent: Arc<Agent>, event: serde_json::Value) {
    if let Some(spool) = &agent.audit {
        spool.emit(event);
        return;
    }
    let mut auth = agent.auth.clone();
    let call = auth.emit_audit_event(AuditEventRequest { event_json: event.to_string() });
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(_)) => {}
        Ok(Err(status)) => tracing::warn!("cannot write the {DIAL_EVENT} audit event: {}", status.message()),
        Err(_) => tracing::warn!("cannot write the {DIAL_EVENT} audit event: no answer in {CALL_TIMEOUT:?}"),
    }
}

/// The address to dial: the leaf auth for `@auth`, else a node the auth service knows.
async fn resolve(agent: &Agent, req: &DialRequest, target: &str) -> Result<String, String> {
    if req.host == AUTH_HOST {
        return Ok(agent.auth_addr.clone());
    }
    let not_registered = || format!("{target} is not a registered node of cluster {}", agent.cluster());
    if let Some(snap) = agent.access.current() {
        match portcullis_access::resolve_node(&snap.nodes, &snap.cluster_name, &req.host, req.port) {
            Ok(n) if !n.spec.addr.is_empty() => return Ok(n.spec.addr),
            Ok(n) => return Err(format!("node {} ({}) has no address", n.spec.hostname, n.metadata.name)),
            Err(portcullis_access::AccessError::NotFound(_)) => {
                // Perhaps a node newer than the snapshot: auth may know it; with auth down,
                // the cache's answer stands.
                return match ask_auth_resolve(agent, req, target).await {
                    Ok(addr) => Ok(addr),
                    Err(Unresolved::Refused(reason)) => Err(reason),
                    Err(Unresolved::NoAnswer(reason)) => {
                        tracing::debug!("cannot ask auth about {target}, missing from the access cache: {reason}");
                        Err(not_registered())
                    }
                };
            }
            Err(e) => return Err(format!("cannot resolve {target}: {e}")),
        }
    }
    ask_auth_resolve(agent, req, target).await.map_err(|e| match e {
        Unresolved::Refused(r) | Unresolved::NoAnswer(r) => r,
    })
}

/// Why auth gave no address: a definite answer, or none at all.
enum Unresolved {
    Refused(String),
    NoAnswer(String),
}

/// Asks the leaf auth service where `req.host` is.
async fn ask_auth_resolve(agent: &Agent, req: &DialRequest, target: &str) -> Result<String, Unresolved> {
    let mut auth = agent.auth.clone();
    let ask = auth.resolve_node(ResolveNodeRequest { host: req.host.clone(), port: req.port });
    let not_registered = || Unresolved::Refused(format!("{target} is not a registered node of cluster {}", agent.cluster()));
    match tokio::time::timeout(CALL_TIMEOUT, ask).await {
        Ok(Ok(resp)) => match resp.into_inner().node {
            Some(n) if !n.addr.is_empty() => Ok(n.addr),
            Some(n) => Err(Unresolved::Refused(format!("node {} ({}) has no address", n.hostname, n.id))),
            None => Err(not_registered()),
        },
        Ok(Err(status)) if status.code() == tonic::Code::NotFound => Err(not_registered()),
        Ok(Err(status)) if status.code() == tonic::Code::InvalidArgument => {
            Err(Unresolved::Refused(format!("cannot resolve {target}: {}", status.message())))
        }
        Ok(Err(status)) => Err(Unresolved::NoAnswer(format!("cannot resolve {target}: {}", status.message()))),
        Err(_) => Err(Unresolved::NoAnswer(format!(
            "cannot resolve {target}: the auth service did not answer in {CALL_TIMEOUT:?}"
        ))),
    }
}

/// Answers a failed dial and records it in the leaf's audit log.
async fn refuse(
    agent: &Arc<Agent>,
    root: &str,
    control: &mpsc::Sender<AgentFrame>,
    req: &DialRequest,
    target: &str,
    reason: String,
) {
    tracing::info!(dial_id = req.dial_id, user = %req.user, "dial from root cluster {root} to {target} failed: {reason}");
    let span = tracing::Span::current();
    span.record("outcome", "error");
    span.record("otel.status_code", "error");
    span.record("otel.status_description", reason.as_str());
    agent.metrics.dial(false);
    let event = dial_event(root, req, target, Err(&reason));
    let failed = DialFailed { dial_id: req.dial_id, reason };
    let _ = control.send(portcullis_tunnel::agent_frame(AgentMsg::DialFailed(failed))).await;
    emit(Arc::clone(agent), event).await;
}

/// Copies bytes both ways until both directions ended. The end of one direction is passed
/// on (TCP write shutdown, end of the outbound stream) so SSH closes cleanly; a broken
/// stream drops the connection at once.
async fn relay(tcp: TcpStream, stream: ChunkStream<Chunk>) {
    let (rd, wr) = tcp.into_split();
    let (from_proxy, to_proxy) = stream.into_split();
    let up = node_to_proxy(rd, to_proxy);
    let down = proxy_to_node(from_proxy, wr);
    tokio::pin!(up, down);
    tokio::select! {
        clean = &mut down => {
            if clean {
                let _ = tokio::time::timeout(CLOSE_GRACE, up).await;
            }
        }
        () = &mut up => {
            let _ = tokio::time::timeout(CLOSE_GRACE, down).await;
        }
    }
}

/// The node's bytes to the proxy until the node stops sending; then ends the outbound stream.
async fn node_to_proxy(mut rd: tokio::net::tcp::OwnedReadHalf, mut to_proxy: ChunkWriter<Chunk>) {
    // Read into one growing buffer and hand each read out as a frozen slice of it: no copy
    // per chunk here (the buffer is reallocated once the chunks in flight pin it).
    let mut buf = BytesMut::with_capacity(CHUNK_SIZE);
    loop {
        if buf.capacity() < CHUNK_SIZE / 2 {
            buf.reserve(CHUNK_SIZE);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if to_proxy.send(buf.split().freeze()).await.is_err() {
                    break;
                }
            }
        }
    }
    // Dropping `to_proxy` here ends the outbound stream.
}

/// The proxy's bytes to the node; at the stream's end shuts the node's side down. False when
/// the stream broke or the node stopped taking bytes.
async fn proxy_to_node(mut from_proxy: ChunkReader, mut wr: tokio::net::tcp::OwnedWriteHalf) -> bool {
    loop {
        // Each chunk is written as it came, without a copy.
        match from_proxy.recv().await {
            Ok(Some(data)) => {
                if wr.write_all(&data).await.is_err() {
                    return false;
                }
            }
            Ok(None) => {
                let _ = wr.shutdown().await;
                return true;
            }
            Err(_) => return false,
        }
    }
}
