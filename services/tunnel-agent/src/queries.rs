//! Answering the root proxy's questions on a tunnel: which leaf nodes a root user may see
//! (`NodesQuery`) and whether the leaf would let a root user log in (`AuthorizeQuery`). Both
//! answer from the agent's access cache, and ask the leaf auth service only while it holds nothing.

use std::sync::Arc;

use portcullis_proto::auth::ListNodesRequest;
use portcullis_proto::tunnel::agent_frame::Msg as AgentMsg;
use portcullis_proto::tunnel::{AgentFrame, NodesAnswer, NodesQuery};
use portcullis_tunnel::agent_frame;
use tokio::sync::mpsc;

use crate::{Agent, CALL_TIMEOUT};

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
        let _ = control.send(agent_frame(AgentMsg::Nodes(answer))).await;
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
    let _ = control.send(agent_frame(AgentMsg::Nodes(answer))).await;
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
        let _ = control.send(agent_frame(AgentMsg::Authorized(answer))).await;
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
    let _ = control.send(agent_frame(AgentMsg::Authorized(answer))).await;
}
