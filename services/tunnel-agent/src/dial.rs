//! Serving the root proxy's requests on a tunnel: dialling leaf nodes (registered ones that
//! answer as SSH servers, and the leaf auth service for the proxy itself only), auditing
//! every dial on the leaf, and listing the leaf's nodes for root users. Targets, listings and
//! login checks come from the agent's access cache (auth only while it holds nothing).

use std::sync::Arc;
use std::time::Duration;

use portcullis_proto::auth::{AuditEventRequest, ListNodesRequest, ResolveNodeRequest};
use portcullis_proto::{Bytes, BytesMut};
use portcullis_proto::tunnel::agent_frame::Msg as AgentMsg;
use portcullis_proto::tunnel::tunnel_client::TunnelClient;
use portcullis_proto::tunnel::{AgentFrame, Chunk, DialFailed, DialRequest, NodesAnswer, NodesQuery};
use portcullis_rpc::client::error_chain;
use portcullis_rpc::ssh_ident::{IDENT_TIMEOUT, read_ssh_ident};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use portcullis_rpc::Channel;

use crate::{Agent, CALL_TIMEOUT};

/// The gRPC metadata naming the dial request a `Dial` stream answers.
pub const DIAL_ID_HEADER: &str = "x-portcullis-dial-id";
/// The host name that stands for the leaf's own auth service; only dials the root proxy
/// makes for itself (`for_proxy`) may use it.
pub const AUTH_HOST: &str = "@auth";
/// The audit event every dial writes on the leaf (from the agent's identity).
pub const DIAL_EVENT: &str = "tunnel.dial";
/// Longest wait for a TCP connection to a leaf node, and for the proxy to take the stream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from the node per chunk.
const READ_SIZE: usize = 64 * 1024;
/// Chunks queued towards the proxy; HTTP/2 flow control does the rest.
const CHUNK_QUEUE: usize = 16;
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
    if let Ok(v) = req.dial_id.to_string().parse() {
        request.metadata_mut().insert(DIAL_ID_HEADER, v);
    }
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
    pipe(tcp, out_tx, inbound).await;
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
    let _ = control.send(AgentFrame { msg: Some(AgentMsg::DialFailed(failed)) }).await;
    emit(Arc::clone(agent), event).await;
}

/// Copies bytes both ways until both directions ended. The end of one direction is passed
/// on (TCP write shutdown, end of the outbound stream) so SSH closes cleanly; a broken
/// stream drops the connection at once.
async fn pipe(tcp: TcpStream, out: mpsc::Sender<Chunk>, mut inbound: Streaming<Chunk>) {
    let (mut rd, mut wr) = tcp.into_split();
    let up = async move {
        // Read into one growing buffer and hand each read out as a frozen slice of it: no
        // copy per chunk here (the buffer is reallocated once the chunks in flight pin it).
        let mut buf = BytesMut::with_capacity(READ_SIZE);
        loop {
            if buf.capacity() < READ_SIZE / 2 {
                buf.reserve(READ_SIZE);
            }
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if out.send(Chunk { data: buf.split().freeze() }).await.is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping `out` here ends the outbound stream.
    };
    let down = async move {
        loop {
            match inbound.message().await {
                Ok(Some(c)) if c.data.is_empty() => {}
                Ok(Some(c)) => {
                    if wr.write_all(&c.data).await.is_err() {
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
    };
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

/// Answers a `NodesQuery`: the leaf nodes the root user (named by its certificate, which the
/// leaf auth verifies and maps) may see.
pub async fn answer_nodes(agent: Arc<Agent>, control: mpsc::Sender<AgentFrame>, q: NodesQuery) {
    if let Some(snap) = agent.access.current() {
        let mut answer = NodesAnswer { request_id: q.request_id, ..Default::default() };
        match cached_nodes(&snap, &q) {
            Ok(nodes) => answer.nodes = nodes,
            Err(e) => answer.error = e.to_string(),
        }
        tracing::debug!(request_id = answer.request_id, nodes = answer.nodes.len(), "answering a node listing from the access cache");
        let _ = control.send(AgentFrame { msg: Some(AgentMsg::Nodes(answer)) }).await;
        return;
    }
    let mut auth = agent.auth.clone();
    let ask = auth.list_nodes(ListNodesRequest { user_tls_cert: q.user_tls_cert, labels: q.labels });
    let mut answer = NodesAnswer { request_id: q.request_id, ..Default::default() };
    match tokio::time::timeout(CALL_TIMEOUT, ask).await {
        Ok(Ok(resp)) => {
            answer.nodes = resp.into_inner().nodes;
            for n in &mut answer.nodes {
                n.tunnel = true;
                if n.cluster.is_empty() {
                    n.cluster = agent.cluster().to_string();
                }
            }
        }
        Ok(Err(status)) => answer.error = status.message().to_string(),
        Err(_) => answer.error = format!("the leaf auth service did not answer in {CALL_TIMEOUT:?}"),
    }
    tracing::debug!(request_id = answer.request_id, nodes = answer.nodes.len(), "answering a node listing");
    let _ = control.send(AgentFrame { msg: Some(AgentMsg::Nodes(answer)) }).await;
}

/// The nodes of the snapshot the root user of `q` may see (its certificate verified against
/// the trusted root's CA, its roles mapped), with `q.labels` as a filter: ListNodes' answer.
fn cached_nodes(
    snap: &portcullis_access::AccessSnapshot,
    q: &NodesQuery,
) -> Result<Vec<portcullis_proto::auth::Node>, portcullis_access::AccessError> {
    let user = portcullis_access::verify_user_tls(snap, &q.user_tls_cert)?;
    let visible = portcullis_access::nodes_visible_to(snap, &user)?;
    Ok(visible
        .into_iter()
        .filter(|n| q.labels.iter().all(|(k, v)| n.metadata.labels.get(k) == Some(v)))
        .map(|n| portcullis_proto::auth::Node {
            id: n.metadata.name,
            hostname: n.spec.hostname,
            addr: n.spec.addr,
            labels: n.metadata.labels.into_iter().collect(),
            expires_unix: n.metadata.expires.map(|e| e.unix_timestamp()).unwrap_or(0),
            cluster: snap.cluster_name.clone(),
            tunnel: true,
        })
        .collect())
}

/// Answers an `AuthorizeQuery`: the leaf auth's decision (and reason) for a root user's
/// login, so tsh can say why the leaf refused it. The leaf audits refusals.
pub async fn answer_authorize(
    agent: Arc<Agent>,
    control: mpsc::Sender<AgentFrame>,
    q: portcullis_proto::tunnel::AuthorizeQuery,
) {
    let request = portcullis_proto::auth::AuthorizeSshRequest {
        ssh_cert: q.ssh_cert,
        login: q.login,
        node: q.node,
        source: "proxy".into(),
        remote_addr: q.remote_addr,
    };
    let mut answer = portcullis_proto::tunnel::AuthorizeAnswer { request_id: q.request_id, ..Default::default() };
    if let Some(snap) = agent.access.current() {
        // The decision auth would take (one implementation); the leaf node audits the refused
        // login itself, this answer only explains it to tsh.
        let node = portcullis_access::resolve_node(&snap.nodes, &snap.cluster_name, &request.node, 0).ok();
        match portcullis_access::authorize_ssh(&snap, &request, node.as_ref()) {
            Ok(r) => {
                answer.allowed = r.allowed;
                answer.reason = r.reason;
            }
            Err(e) => answer.error = e.to_string(),
        }
        let _ = control.send(AgentFrame { msg: Some(AgentMsg::Authorized(answer)) }).await;
        return;
    }
    let mut auth = agent.auth.clone();
    let ask = auth.authorize_ssh(request);
    match tokio::time::timeout(CALL_TIMEOUT, ask).await {
        Ok(Ok(resp)) => {
            let r = resp.into_inner();
            answer.allowed = r.allowed;
            answer.reason = r.reason;
        }
        Ok(Err(status)) => answer.error = status.message().to_string(),
        Err(_) => answer.error = format!("the leaf auth service did not answer in {CALL_TIMEOUT:?}"),
    }
    let _ = control.send(AgentFrame { msg: Some(AgentMsg::Authorized(answer)) }).await;
}
