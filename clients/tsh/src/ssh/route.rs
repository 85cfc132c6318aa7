//! The channel through the proxy to a node: `direct-tcpip` for the root cluster, the
//! `proxy:host:port@cluster` subsystem for leaf clusters; either becomes a byte stream for
//! the end-to-end SSH session to the node.

use std::time::Duration;

use russh::ChannelMsg;
use russh::client::{Handle, Handler, Msg};

use crate::error::TshError;
use crate::ssh::client::SharedState;
use crate::ssh::subsystem_stream::SubsystemStream;

/// The byte stream to the node.
pub enum NodeStream {
    Direct(Box<russh::ChannelStream<Msg>>),
    /// A subsystem channel; the proxy's error text (sent on stderr when it cannot dial the
    /// node) is kept for the user.
    Subsystem(SubsystemStream),
}

/// Opens a `direct-tcpip` channel to `host:port` (port 0: the node's own).
pub async fn direct<H: Handler>(
    proxy: &Handle<H>,
    host: &str,
    port: u16,
    node: &str,
    state: &SharedState,
) -> Result<NodeStream, TshError> {
    match proxy
        .channel_open_direct_tcpip(host, u32::from(port), "127.0.0.1", 0)
        .await
    {
        Ok(c) => Ok(NodeStream::Direct(Box::new(c.into_stream()))),
        Err(e) => Err(open_error(node, &e, state).await),
    }
}

/// Explains a refused channel with the proxy's description.
pub async fn open_error(node: &str, e: &russh::Error, state: &SharedState) -> TshError {
    // russh wakes the caller before it hands the server's description to the handler, so
    // give the handler a moment to record it.
    let mut said = None;
    for _ in 0..50 {
        said = state
            .lock()
            .ok()
            .and_then(|s| s.open_failure.clone().or_else(|| s.disconnect.clone()));
        if said.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reason = said.unwrap_or_else(|| e.to_string());
    TshError::Ssh(format!(
        "cannot connect to {node} through the proxy: {reason}"
    ))
}

/// What the proxy said about a subsystem it could not connect, if anything.
pub fn subsystem_failure(node: &str, state: &SharedState) -> Option<TshError> {
    let said = state.lock().ok()?.open_failure.clone()?;
    Some(TshError::Ssh(format!("cannot connect to {node}: {said}")))
}

/// Opens a session channel and requests the `proxy:host:port@cluster` subsystem. With
/// `traceparent`, an `env` request first hands the proxy the trace to continue.
pub async fn subsystem<H: Handler>(
    proxy: &Handle<H>,
    subsystem: &str,
    node: &str,
    state: &SharedState,
    traceparent: Option<&str>,
) -> Result<NodeStream, TshError> {
    let mut channel = match proxy.channel_open_session().await {
        Ok(c) => c,
        Err(e) => return Err(open_error(node, &e, state).await),
    };
    if let Some(tp) = traceparent {
        // Best effort: a proxy that ignores it still routes the session.
        let _ = channel.set_env(false, "TRACEPARENT", tp).await;
    }
    channel
        .request_subsystem(true, subsystem)
        .await
        .map_err(|e| TshError::Ssh(format!("cannot request subsystem {subsystem}: {e}")))?;
    let mut early = Vec::new();
    let mut errors = Vec::new();
    loop {
        match channel.wait().await {
            Some(ChannelMsg::Success) => break,
            Some(ChannelMsg::Data { data }) => early.extend_from_slice(&data),
            Some(ChannelMsg::ExtendedData { data, .. }) => errors.extend_from_slice(&data),
            Some(ChannelMsg::Failure) | Some(ChannelMsg::Close) | Some(ChannelMsg::Eof) | None => {
                let said = String::from_utf8_lossy(&errors).trim().to_string();
                let reason = if said.is_empty() {
                    format!("the proxy refused subsystem {subsystem}")
                } else {
                    said
                };
                return Err(TshError::Ssh(format!("cannot connect to {node}: {reason}")));
            }
            Some(_) => {}
        }
    }

    let (reader, writer) = channel.split();
    let stream = SubsystemStream::new(reader, writer.make_writer(), early, state.clone());
    Ok(NodeStream::Subsystem(stream))
}
