//! The SSH front door: users authenticate with their cluster-signed certificate and get byte
//! pipes (`direct-tcpip` or the `proxy:` subsystem) to nodes, of this cluster or of a leaf
//! through its reverse tunnel. The proxy never sees the end-to-end session inside those pipes.
//!
//! Before dialling into a leaf, `Router::authorize_cluster` checks the leaf is visible to the
//! user (its `cluster_labels`); the leaf then enforces its own RBAC on the mapped roles.

pub mod subsystem;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_net::{ConnectionLimits, Gate, GatedListener, PreAuth};
use portcullis_pki::Identity;
use russh::keys::Certificate;
use russh::server::{Auth, ChannelOpenHandle, Config, Handler, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet, SshId};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::drain::Drain;
use crate::route::{Conn, RouteError};
use crate::state::ProxyState;
use crate::ProxyError;
use subsystem::parse_proxy_subsystem;

/// What a client that did not authenticate in time is told.
const PRE_AUTH_EXPIRED: &str = "authentication timed out (connection_limits.pre_auth_timeout)";
/// SSH "connect failed" reason code, sent with a readable reason.
const CONNECT_FAILED: u32 = 2;
/// SSH extended data type for stderr.
const STDERR: u32 = 1;
/// Copy buffer per direction of a piped session: one read fills at most one tunnel chunk.
const PIPE_BUFFER: usize = portcullis_tunnel::CHUNK_SIZE;

/// The russh server settings: the identity's host key and certificate, public keys only.
pub fn config(id: &Identity) -> Result<Config, ProxyError> {
    let key = portcullis_pki::ssh::parse_private_key(id.ssh_private_key.expose())
        .map_err(|e| ProxyError::Identity(format!("SSH host key: {e}")))?;
    let cert = portcullis_pki::ssh::parse_certificate(&id.ssh_cert)
        .map_err(|e| ProxyError::Identity(format!("SSH host certificate: {e}")))?;
    Ok(Config {
        server_id: SshId::Standard(format!("SSH-2.0-Portcullis_{}", env!("CARGO_PKG_VERSION")).into()),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        keys: vec![key],
        certificates: vec![cert],
        nodelay: true,
        // OpenSSH probes with "none" first; answering it at once saves a second per login.
        auth_rejection_time_initial: Some(Duration::ZERO),
        // Sessions inside the pipes may idle for hours; dead clients are found by keepalives.
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 3,
        preferred: portcullis_pki::transport::preferred(),
        ..Config::default()
    })
}

/// Serves SSH on `listener` until `stop` fires. Then it stops
/// accepting, lets the sessions it is piping finish for up to `drain`, and disconnects the
/// rest: a rolling restart does not cut users off mid-command.
pub async fn serve(
    state: Arc<ProxyState>,
    listener: TcpListener,
    config: Arc<Config>,
    stop: Drain,
    drain: Duration,
) -> Result<(), ProxyError> {
    serve_limited(state, listener, config, stop, drain, ConnectionLimits::PROXY).await
}

/// [`serve`] with `limits`: connections beyond the per-address or total cap are closed at
/// once; a client must finish the SSH version exchange within the handshake timeout and
/// authenticate within the pre-authentication timeout (both counted from the TCP accept),
/// or it is disconnected.
pub async fn serve_limited(
    state: Arc<ProxyState>,
    listener: TcpListener,
    config: Arc<Config>,
    stop: Drain,
    drain: Duration,
    limits: ConnectionLimits,
) -> Result<(), ProxyError> {
    let listener = GatedListener::new(listener, Gate::new("proxy_ssh", limits));
    let mut conns: JoinSet<()> = JoinSet::new();
    // Live connections' handles, to disconnect whatever is left after draining.
    let handles: Arc<std::sync::Mutex<HashMap<u64, russh::server::Handle>>> = Default::default();
    let mut next_id = 0u64;
    let stopped = stop.draining();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            (tcp, peer, place) = listener.accept() => {
                let deadline = tokio::time::Instant::now() + limits.pre_auth_timeout;
                let pre_auth = PreAuth::default();
                let conn = SshConn {
                    state: state.clone(),
                    peer: Some(peer),
                    user: None,
                    sessions: HashMap::new(),
                    traces: HashMap::new(),
                    pre_auth: pre_auth.clone(),
                };
                let (config, handles) = (config.clone(), handles.clone());
                next_id += 1;
                let id = next_id;
                conns.spawn(async move {
                    let _place = place;
                    let tcp = pre_auth.wrap(tcp);
                    let session = match tokio::time::timeout(limits.handshake_timeout, russh::server::run_stream(config, tcp, conn)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => return tracing::debug!(%peer, "SSH handshake failed: {e}"),
                        Err(_) => return tracing::debug!(%peer, "SSH client sent no version line in time: closed"),
                    };
                    let handle = session.handle();
                    if let Ok(mut h) = handles.lock() {
                        h.insert(id, handle.clone());
                    }
                    let say_why = async move {
                        let _ = handle.disconnect(russh::Disconnect::ByApplication, PRE_AUTH_EXPIRED.into(), String::new()).await;
                    };
                    match pre_auth.drive(session, deadline, say_why).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::debug!(%peer, "SSH connection ended: {e}"),
                        Err(_) => tracing::debug!(%peer, "SSH client did not authenticate within {}s: disconnected", limits.pre_auth_timeout.as_secs()),
                    }
                    if let Ok(mut h) = handles.lock() {
                        h.remove(&id);
                    }
                });
            },
            _ = &mut stopped => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + drain;
    let active = state.router.active_sessions();
    if active > 0 {
        tracing::info!(active, "no longer accepting SSH connections; letting sessions finish for up to {}s", drain.as_secs());
    }
    while state.router.active_sessions() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left: Vec<russh::server::Handle> = handles.lock().map(|h| h.values().cloned().collect()).unwrap_or_default();
    for h in left {
        let _ = h
            .disconnect(russh::Disconnect::ByApplication, "the proxy is shutting down".into(), String::new())
            .await;
    }
    conns.abort_all();
    Ok(())
}


/// The authenticated user of one connection.
#[derive(Debug, Clone)]
struct SshUser {
    name: String,
    roles: Vec<String>,
    /// The cluster the certificate was issued for; where `direct-tcpip` goes.
    route_to_cluster: String,
    /// The certificate itself, for cluster access checks by auth.
    ssh_cert: String,
}

/// One client connection.
pub struct SshConn {
    state: Arc<ProxyState>,
    peer: Option<SocketAddr>,
    user: Option<SshUser>,
    /// Session channels waiting for a subsystem request.
    sessions: HashMap<ChannelId, Channel<Msg>>,
    /// `TRACEPARENT` sent by tsh (an `env` request) on a session channel, by channel.
    traces: HashMap<ChannelId, String>,
    /// Marked when the certificate is accepted; until then the pre-auth deadline runs.
    pre_auth: PreAuth,
}

impl SshConn {
    fn peer(&self) -> String {
        self.peer.map(|p| p.to_string()).unwrap_or_else(|| "unknown".into())
    }

    /// Refuses a request on a session channel with a message on stderr, then closes it.
    fn refuse_session(&mut self, id: ChannelId, message: &str, session: &mut Session) -> Result<(), russh::Error> {
        self.sessions.remove(&id);
        session.channel_failure(id)?;
        session.extended_data(id, STDERR, format!("{message}\r\n"))?;
        session.exit_status_request(id, 1)?;
        session.eof(id)?;
        session.close(id)
    }
}

const NOT_A_SHELL: &str =
    "this is the Portcullis proxy: it only forwards connections to nodes; use 'tsh ssh NODE' or 'ssh -J PROXY NODE'";

impl Handler for SshConn {
    type Error = russh::Error;

    async fn auth_publickey(&mut self, user: &str, _key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        tracing::info!(login = user, peer = %self.peer(), "refused a plain public key: a cluster-signed certificate is required ('tsh login')");
        Ok(Auth::reject())
    }

    async fn auth_openssh_certificate(&mut self, login: &str, cert: &Certificate) -> Result<Auth, Self::Error> {
        let cas = self.state.ssh_user_cas();
        match portcullis_pki::ssh::verify_user_cert(cert, &cas, portcullis_pki::unix_now()) {
            Ok(info) => {
                tracing::info!(user = %info.username, login, roles = ?info.roles, peer = %self.peer(), "SSH user authenticated");
                self.user = Some(SshUser {
                    name: info.username,
                    roles: info.roles,
                    route_to_cluster: info.route_to_cluster,
                    ssh_cert: cert.to_openssh().unwrap_or_default(),
                });
                self.pre_auth.authenticated();
                Ok(Auth::Accept)
            }
            Err(e) => {
                tracing::info!(login, key_id = %cert.key_id(), peer = %self.peer(), "SSH certificate refused: {e}");
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.sessions.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(user) = self.user.clone() else {
            reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        };
        let Ok(port) = u16::try_from(port_to_connect) else {
            let reason = format!("port {port_to_connect} is out of range");
            reply.reject(ChannelOpenFailure::Other { code: CONNECT_FAILED, reason }).await;
            return Ok(());
        };
        tracing::debug!(user = %user.name, host = host_to_connect, port, originator = %format!("{originator_address}:{originator_port}"), "direct-tcpip requested");
        let state = self.state.clone();
        let host = host_to_connect.to_string();
        // Resolving and dialling take round trips; doing them in a task keeps this
        // connection's other channels flowing meanwhile.
        let span = route_span(&user.route_to_cluster, &host, &user.name, None);
        tokio::spawn(
            async move {
                let routed = match state.router.authorize_cluster(&user.route_to_cluster, &user.ssh_cert).await {
                    Ok(()) => state.router.dial(&user.route_to_cluster, &host, port, &user.name).await,
                    Err(e) => Err(e),
                };
                match routed {
                    Ok(dialed) => {
                        tracing::Span::current().record("outcome", "ok");
                        tracing::info!(user = %user.name, roles = ?user.roles, node = %dialed.node.hostname, addr = %dialed.node.addr, cluster = %dialed.node.cluster, tunnel = dialed.node.tunnel, "forwarding direct-tcpip to node");
                        reply.accept().await;
                        pipe(&state, channel, dialed.stream).await;
                    }
                    Err(e) => {
                        let span = tracing::Span::current();
                        span.record("outcome", "error");
                        crate::route::record_error(&span, &e);
                        tracing::info!(user = %user.name, host = %host, port, "direct-tcpip refused: {e}");
                        reply.reject(ChannelOpenFailure::Other { code: CONNECT_FAILED, reason: e.to_string() }).await;
                    }
                }
            }
            .instrument(span),
        );
        Ok(())
    }

    async fn subsystem_request(&mut self, id: ChannelId, name: &str, session: &mut Session) -> Result<(), Self::Error> {
        let target = match parse_proxy_subsystem(name) {
            Ok(t) => t,
            Err(msg) => {
                tracing::info!(peer = %self.peer(), "subsystem refused: {msg}");
                return self.refuse_session(id, &msg, session);
            }
        };
        let (Some(user), Some(channel)) = (self.user.clone(), self.sessions.remove(&id)) else {
            return self.refuse_session(id, "no session channel for this request", session);
        };
        session.channel_success(id)?;
        let state = self.state.clone();
        let span = route_span(&target.cluster, &target.host, &user.name, self.traces.remove(&id));
        tokio::spawn(
            async move {
                let routed = match state.router.authorize_cluster(&target.cluster, &user.ssh_cert).await {
                    Ok(()) => state.router.dial(&target.cluster, &target.host, target.port, &user.name).await,
                    Err(e) => Err(e),
                };
                match routed {
                    Ok(dialed) => {
                        tracing::Span::current().record("outcome", "ok");
                        tracing::info!(user = %user.name, roles = ?user.roles, node = %dialed.node.hostname, addr = %dialed.node.addr, cluster = %dialed.node.cluster, tunnel = dialed.node.tunnel, "forwarding proxy subsystem to node");
                        pipe(&state, channel, dialed.stream).await;
                    }
                    Err(e) => {
                        let span = tracing::Span::current();
                        span.record("outcome", "error");
                        crate::route::record_error(&span, &e);
                        tracing::info!(user = %user.name, host = %target.host, port = target.port, cluster = %target.cluster, "proxy subsystem refused: {e}");
                        fail_channel(&channel, &e).await;
                    }
                }
            }
            .instrument(span),
        );
        Ok(())
    }

    /// tsh passes its trace context as `TRACEPARENT`; other variables mean nothing here.
    async fn env_request(
        &mut self,
        id: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if variable_name == "TRACEPARENT" && variable_value.len() <= 128 {
            self.traces.insert(id, variable_value.to_string());
            session.channel_success(id)?;
        } else {
            session.channel_failure(id)?;
        }
        Ok(())
    }

    async fn shell_request(&mut self, id: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        self.refuse_session(id, NOT_A_SHELL, session)
    }

    async fn exec_request(&mut self, id: ChannelId, _data: &[u8], session: &mut Session) -> Result<(), Self::Error> {
        self.refuse_session(id, NOT_A_SHELL, session)
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        id: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // No terminal here; the shell or exec request that follows is refused with a message.
        session.channel_failure(id)
    }

    async fn channel_close(&mut self, id: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        self.sessions.remove(&id);
        Ok(())
    }
}

/// Tells the client why its subsystem failed and closes the channel.
async fn fail_channel(channel: &Channel<Msg>, e: &RouteError) {
    let _ = channel.extended_data_bytes(STDERR, format!("{e}\r\n")).await;
    let _ = channel.exit_status(1).await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

/// Copies bytes both ways until both sides are done, counting the session meanwhile.
async fn pipe(state: &ProxyState, channel: Channel<Msg>, mut node: Box<dyn Conn>) {
    let _active = state.router.track();
    let mut stream = channel.into_stream();
    // Bigger than tokio's 8 KiB default: each read becomes one tunnel chunk, and fewer,
    // larger chunks cost fewer frames, wake-ups and syscalls per byte.
    match tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut node, PIPE_BUFFER, PIPE_BUFFER).await {
        Ok((up, down)) => tracing::debug!(bytes_to_node = up, bytes_to_client = down, "pipe closed"),
        Err(e) => tracing::debug!("pipe ended: {e}"),
    }
    let _ = node.shutdown().await;
    let _ = stream.shutdown().await;
}

/// The span of one routed session, continuing tsh's trace when it sent one.
fn route_span(cluster: &str, host: &str, user: &str, traceparent: Option<String>) -> tracing::Span {
    let span = tracing::info_span!(
        "proxy.route",
        cluster = %cluster,
        node = %host,
        user = %user,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    if let Some(tp) = traceparent {
        let map = std::collections::HashMap::from([(portcullis_telemetry::TRACEPARENT.to_string(), tp)]);
        portcullis_telemetry::set_parent_from_map(&span, &map);
    }
    span
}
