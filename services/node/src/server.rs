//! The SSH side of the node: one [`Connection`] handler per client, which checks the user
//! certificate, takes the RBAC decision (from the access cache, else from auth), and runs
//! session channels.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use portcullis_pki::ssh::verify_user_cert;
use portcullis_pki::unix_now;
use portcullis_proto::auth::{AuthorizeSshRequest, AuthorizeSshResponse};
use russh::keys::Certificate;
use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure, ChannelWriteHalf, Pty, Sig};
use serde_json::json;
use tokio::sync::oneshot;

use crate::NodeError;
use crate::audit::Auditor;
use crate::backend::AuthBackend;
use crate::heartbeat::UserCas;
use crate::session::{self, Input, InputSender, ProcessSpec, PtyParams, env_allowed};
use crate::users;

/// How long the node waits for the auth service's decision (asked only while the access cache
/// is empty) before refusing the login.
const AUTHORIZE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refusal of the access cache waits for auth to confirm it.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);
/// Client input queued for a process before the connection waits for it to read.
const INPUT_QUEUE_BYTES: usize = 16 * 1024 * 1024;
/// Client environment variables kept per channel, against memory abuse.
const MAX_ENV_VARS: usize = 128;

/// What every connection of this node shares.
pub struct NodeContext {
    pub nodename: String,
    pub node_id: String,
    pub auth: Arc<dyn AuthBackend>,
    pub audit: Auditor,
    pub user_cas: UserCas,
    /// When the CA set was last fetched on demand, to bound refreshes to one a second.
    pub cas_refreshed: std::sync::Mutex<Option<std::time::Instant>>,
    /// Logins and sessions for the diagnostic listener.
    pub metrics: Arc<crate::metrics::NodeMetrics>,
}

impl NodeContext {
    /// Fetches the trusted user CAs from auth now, unless that was done within the last
    /// second. Returns whether the set was refreshed.
    async fn refresh_user_cas(&self) -> bool {
        {
            let mut last = self.cas_refreshed.lock().unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1)) {
                return false;
            }
            *last = Some(std::time::Instant::now());
        }
        match self.auth.user_cas().await {
            Ok(lines) => {
                let keys = crate::heartbeat::parse_cas(&lines);
                *self.user_cas.write().unwrap_or_else(PoisonError::into_inner) = keys;
                true
            }
            Err(e) => {
                tracing::debug!("cannot refresh the user CAs: {}", e.message());
                false
            }
        }
    }
}

/// The user the auth service let in on this connection.
#[derive(Debug, Clone)]
struct Authorized {
    username: String,
    login: String,
    roles: Vec<String>,
    #[allow(dead_code)] // kept for port forwarding, which the node refuses for now
    port_forwarding: bool,
}

/// A session channel: its settings until a process starts, then the process's handles.
struct ChannelState {
    /// Taken by the process task when the shell or command starts.
    writer: Option<ChannelWriteHalf<Msg>>,
    pty: Option<PtyParams>,
    env: Vec<(String, String)>,
    input: Option<InputSender>,
    /// Dropped with the channel or the connection, which hangs the process up.
    _hangup: Option<oneshot::Sender<()>>,
}

/// The handler of one SSH connection.
pub struct Connection {
    ctx: Arc<NodeContext>,
    remote_addr: String,
    user: Option<Authorized>,
    channels: HashMap<ChannelId, ChannelState>,
    /// Trace context the dialling proxy or agent sent ahead of the SSH bytes.
    trace: Option<String>,
    /// Marked on a successful login; the connection is closed if that does not come in time.
    pre_auth: portcullis_net::PreAuth,
}

impl Connection {
    pub fn new(ctx: Arc<NodeContext>, remote_addr: String) -> Self {
        Connection { ctx, remote_addr, user: None, channels: HashMap::new(), trace: None, pre_auth: Default::default() }
    }

    /// Shares the connection's authenticated flag with the task enforcing the deadline.
    pub fn with_pre_auth(mut self, pre_auth: portcullis_net::PreAuth) -> Self {
        self.pre_auth = pre_auth;
        self
    }

    /// Makes this connection's spans children of the dialling hop's span.
    pub fn with_trace(mut self, traceparent: Option<String>) -> Self {
        self.trace = traceparent;
        self
    }

    /// A span continuing the dialling hop's trace.
    fn span(&self, span: tracing::Span) -> tracing::Span {
        if let Some(tp) = &self.trace {
            let map = std::collections::HashMap::from([(portcullis_telemetry::TRACEPARENT.to_string(), tp.clone())]);
            portcullis_telemetry::set_parent_from_map(&span, &map);
        }
        span
    }

    fn audit_auth_failure(&self, username: &str, login: &str, reason: &str) {
        self.ctx.audit.emit(json!({
            "event": "auth",
            "success": false,
            "user": username,
            "login": login,
            "node": self.ctx.nodename,
            "node_id": self.ctx.node_id,
            "remote_addr": self.remote_addr,
            "error": reason,
            "source": "node",
        }));
    }

    /// Starts the login's shell (`command` none) or command on `channel`.
    async fn start(&mut self, channel: ChannelId, command: Option<String>, session: &mut Session) -> Result<(), NodeError> {
        let (Some(user), Some(state)) = (self.user.clone(), self.channels.get_mut(&channel)) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        let Some(writer) = state.writer.take() else {
            // One shell or command per channel (RFC 4254 §6.5).
            session.channel_failure(channel)?;
            return Ok(());
        };
        session.channel_success(channel)?;
        let ctx = &self.ctx;
        let login_user = match users::resolve(&user.login, &ctx.nodename) {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(user = %user.username, login = %user.login, "session refused: {e}");
                ctx.metrics.session_failed();
                return fail_channel(session, channel, &e.to_string());
            }
        };
        let session_id = uuid::Uuid::new_v4().to_string();
        let mut env = state.env.clone();
        env.push(("SSH_SESSION_ID".into(), session_id.clone()));
        env.push(("SSH_TELEPORT_USER".into(), user.username.clone()));
        env.push(("SSH_TELEPORT_HOST_UUID".into(), ctx.node_id.clone()));
        let spec = ProcessSpec { user: &login_user, command: command.as_deref(), env: &env, pty: state.pty.as_ref() };
        let process = match session::spawn(&spec) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(login = %user.login, "cannot start the session: {e}");
                ctx.metrics.session_failed();
                return fail_channel(session, channel, &e.to_string());
            }
        };
        let (input_tx, input_rx) = session::input_queue(INPUT_QUEUE_BYTES);
        let (hangup_tx, hangup_rx) = oneshot::channel::<()>();
        state.input = Some(input_tx);
        state._hangup = Some(hangup_tx);

        let mut base = json!({
            "user": user.username,
            "login": user.login,
            "roles": user.roles,
            "node": ctx.nodename,
            "node_id": ctx.node_id,
            "session_id": session_id,
            "remote_addr": self.remote_addr,
        });
        let mut start = base.clone();
        start["event"] = "session.start".into();
        start["interactive"] = process.has_pty().into();
        if let Some(c) = &command {
            start["command"] = c.clone().into();
        }
        ctx.audit.emit(start);
        tracing::info!(user = %user.username, login = %user.login, session_id = %session_id, "session started");

        let audit = ctx.audit.clone();
        let active = ctx.metrics.session_started();
        let span = self.span(tracing::info_span!(
            "node.session",
            node = %ctx.nodename,
            login = %user.login,
            user = %user.username,
            roles = %user.roles.join(","),
            session_id = %session_id,
            interactive = process.has_pty(),
            exit_code = tracing::field::Empty,
        ));
        let span_in_task = span.clone();
        let task = async move {
            let _active = active;
            let out = writer.make_writer();
            let err = writer.make_writer_ext(Some(1));
            let hangup = async {
                let _ = hangup_rx.await;
            };
            let code = match process.run(input_rx, out, err, hangup).await {
                Ok(exit) => exit.code,
                Err(e) => {
                    tracing::warn!("waiting for the session process: {e}");
                    255
                }
            };
            // All output went through `writer` before this point, so it reaches the client
            // ahead of the exit status (same ordered queue).
            let _ = writer.exit_status(code).await;
            let _ = writer.eof().await;
            let _ = writer.close().await;
            span.record("exit_code", code);
            base["exit_code"] = code.into();
            if let Some(c) = command {
                let mut exec = base.clone();
                exec["event"] = "exec".into();
                exec["command"] = c.into();
                audit.emit(exec);
            }
            base["event"] = "session.end".into();
            tracing::info!(session_id = %base["session_id"].as_str().unwrap_or(""), code, "session ended");
            audit.emit(base);
        };
        tokio::spawn(tracing::Instrument::instrument(task, span_in_task));
        Ok(())
    }

    /// Checks a login: the certificate against the trusted CAs, then the RBAC decision.
    async fn check_certificate(&mut self, user: &str, certificate: &Certificate) -> Result<Auth, NodeError> {
        let key_id = certificate.key_id().to_string();
        // The placeholder principal of a certificate without logins names no account.
        if portcullis_pki::ssh::is_no_login(user) {
            let reason = format!("{user:?} is the placeholder principal of a certificate whose roles grant no logins, not a login");
            tracing::info!(user = %key_id, remote = %self.remote_addr, "login refused: {reason}");
            fail_span(&reason);
            self.audit_auth_failure(&key_id, user, &reason);
            return Ok(Auth::reject());
        }
        let check = || {
            let cas = self.ctx.user_cas.read().unwrap_or_else(PoisonError::into_inner).clone();
            verify_user_cert(certificate, &cas, unix_now())
        };
        let mut verdict = check();
        // Trust may have been established (or re-enabled) since the last heartbeat.
        if matches!(verdict, Err(portcullis_pki::PkiError::UntrustedAuthority { .. })) && self.ctx.refresh_user_cas().await {
            verdict = check();
        }
        if let Err(e) = verdict {
            tracing::info!(user = %key_id, login = %user, remote = %self.remote_addr, "certificate refused: {e}");
            fail_span(&e.to_string());
            self.audit_auth_failure(&key_id, user, &e.to_string());
            return Ok(Auth::reject());
        }
        let ssh_cert = match certificate.to_openssh() {
            Ok(c) => c,
            Err(e) => {
                self.audit_auth_failure(&key_id, user, &format!("unreadable certificate: {e}"));
                return Ok(Auth::reject());
            }
        };
        let req = AuthorizeSshRequest {
            ssh_cert,
            login: user.to_string(),
            node: String::new(),
            source: "node".into(),
            remote_addr: self.remote_addr.clone(),
        };
        // The access cache decides when it holds a snapshot, so logins work with auth down.
        let (decision, decided_here) = match self.ctx.auth.decide_locally(&req) {
            Some(Ok(resp)) if resp.allowed => (resp, true),
            // A refusal from the cache is confirmed with auth, whose view is newer (a user or
            // role made a moment ago); auth audits what it decides. With no auth server
            // answering in time, the cache's refusal stands.
            Some(Ok(resp)) => match tokio::time::timeout(CONFIRM_TIMEOUT, self.ctx.auth.authorize_ssh(req.clone())).await {
                Ok(Ok(fresh)) => (fresh, false),
                Ok(Err(status)) => {
                    tracing::debug!(user = %key_id, "auth cannot confirm a refusal of the access cache: {}", status.message());
                    (resp, true)
                }
                Err(_) => (resp, true),
            },
            Some(Err(reason)) => {
                tracing::info!(user = %key_id, login = %user, "login refused: {reason}");
                fail_span(&reason);
                self.audit_auth_failure(&key_id, user, &reason);
                return Ok(Auth::reject());
            }
            None => match self.ask_auth(req, &key_id, user).await {
                Some(resp) => (resp, false),
                None => return Ok(Auth::reject()),
            },
        };
        if !decision.allowed {
            tracing::info!(user = %key_id, login = %user, "login refused: {}", decision.reason);
            fail_span(&decision.reason);
            if decided_here {
                // Auth audits the refusals it decides; this one only the node saw.
                let username = if decision.username.is_empty() { key_id.clone() } else { decision.username.clone() };
                self.audit_refusal(&username, user, &decision.roles, &decision.reason);
            }
            return Ok(Auth::reject());
        }
        let username = if decision.username.is_empty() { key_id } else { decision.username };
        tracing::info!(user = %username, login = %user, roles = ?decision.roles, remote = %self.remote_addr, "login accepted");
        self.user = Some(Authorized {
            username,
            login: user.to_string(),
            roles: decision.roles,
            port_forwarding: decision.port_forwarding,
        });
        self.pre_auth.authenticated();
        Ok(Auth::Accept)
    }

    /// Asks auth for the decision (the cache holds nothing). `None` (audited) when auth did
    /// not answer: no decision means no login.
    async fn ask_auth(&self, req: AuthorizeSshRequest, key_id: &str, user: &str) -> Option<AuthorizeSshResponse> {
        // Said with the failure, so an operator sees why the node could not decide alone.
        let local = self.ctx.auth.local_state().map(|s| format!(" ({s})")).unwrap_or_default();
        let reason = match tokio::time::timeout(AUTHORIZE_TIMEOUT, self.ctx.auth.authorize_ssh(req)).await {
            Ok(Ok(resp)) => return Some(resp),
            Ok(Err(status)) => {
                tracing::warn!(user = %key_id, login = %user, "cannot ask the auth service about the login{local}: {}", status.message());
                format!("authorization failed{local}: {}", status.message())
            }
            Err(_) => {
                tracing::warn!(user = %key_id, login = %user, "the auth service did not answer the authorization request{local}");
                format!("authorization failed{local}: the auth service did not answer")
            }
        };
        fail_span(&reason);
        self.audit_auth_failure(key_id, user, &reason);
        None
    }

    /// Audits a refusal decided from the access cache, with the fields auth's own carry.
    fn audit_refusal(&self, username: &str, login: &str, roles: &[String], reason: &str) {
        self.ctx.audit.emit(json!({
            "event": "auth",
            "success": false,
            "user": username,
            "login": login,
            "node": self.ctx.nodename,
            "node_id": self.ctx.node_id,
            "roles": roles,
            "remote_addr": self.remote_addr,
            "error": reason,
            "source": "node",
        }));
    }

    fn input_sender(&self, channel: ChannelId) -> Option<InputSender> {
        self.channels.get(&channel).and_then(|s| s.input.clone())
    }
}

/// Tells the client why its session cannot run (on stderr, as sshd does) and ends it
/// with exit status 1.
fn fail_channel(session: &mut Session, channel: ChannelId, reason: &str) -> Result<(), NodeError> {
    session.extended_data(channel, 1, format!("portcullis: {reason}\r\n").into_bytes())?;
    session.exit_status_request(channel, 1)?;
    session.eof(channel)?;
    session.close(channel)?;
    Ok(())
}

fn clamp16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

fn signal_name(sig: &Sig) -> String {
    match sig {
        Sig::ABRT => "ABRT",
        Sig::ALRM => "ALRM",
        Sig::FPE => "FPE",
        Sig::HUP => "HUP",
        Sig::ILL => "ILL",
        Sig::INT => "INT",
        Sig::KILL => "KILL",
        Sig::PIPE => "PIPE",
        Sig::QUIT => "QUIT",
        Sig::SEGV => "SEGV",
        Sig::TERM => "TERM",
        Sig::USR1 => "USR1",
        Sig::Custom(s) => s.as_str(),
    }
    .to_string()
}

impl russh::server::Handler for Connection {
    type Error = NodeError;

    async fn auth_openssh_certificate(&mut self, user: &str, certificate: &Certificate) -> Result<Auth, Self::Error> {
        use tracing::Instrument;
        let span = self.span(tracing::info_span!(
            "node.auth",
            node = %self.ctx.nodename,
            login = %user,
            user = %certificate.key_id(),
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        ));
        let verdict = self.check_certificate(user, certificate).instrument(span).await;
        if let Ok(auth) = &verdict {
            self.ctx.metrics.login(matches!(auth, Auth::Accept));
        }
        verdict
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.user.is_none() {
            reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        }
        let id = channel.id();
        // Input arrives through the handler callbacks; the read half would only queue copies.
        let (_read, writer) = channel.split();
        self.channels.insert(
            id,
            ChannelState { writer: Some(writer), pty: None, env: Vec::new(), input: None, _hangup: None },
        );
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::debug!("refusing port forwarding to {host_to_connect}:{port_to_connect}: not supported by the node");
        reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
        Ok(())
    }

    async fn channel_close(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        // Dropping the state hangs up a process that is still running.
        self.channels.remove(&channel);
        Ok(())
    }

    async fn channel_eof(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        if let Some(tx) = self.input_sender(channel) {
            let _ = tx.send(Input::Eof).await;
        }
        Ok(())
    }

    async fn data(&mut self, channel: ChannelId, data: &[u8], _session: &mut Session) -> Result<(), Self::Error> {
        if let Some(tx) = self.input_sender(channel) {
            let _ = tx.send(Input::Data(data.to_vec())).await;
        }
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(state) if state.writer.is_some() => {
                state.pty = Some(PtyParams {
                    term: term.to_string(),
                    cols: clamp16(col_width),
                    rows: clamp16(row_height),
                    pix_width: clamp16(pix_width),
                    pix_height: clamp16(pix_height),
                    modes: modes.to_vec(),
                });
                session.channel_success(channel)?;
            }
            _ => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(state) if state.writer.is_some() && env_allowed(name) && state.env.len() < MAX_ENV_VARS => {
                state.env.retain(|(k, _)| k != name);
                state.env.push((name.to_string(), value.to_string()));
                session.channel_success(channel)?;
            }
            _ => {
                tracing::debug!("refusing environment variable {name:?}");
                session.channel_failure(channel)?;
            }
        }
        Ok(())
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        self.start(channel, None, session).await
    }

    async fn exec_request(&mut self, channel: ChannelId, data: &[u8], session: &mut Session) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        self.start(channel, Some(command), session).await
    }

    async fn subsystem_request(&mut self, channel: ChannelId, name: &str, session: &mut Session) -> Result<(), Self::Error> {
        tracing::debug!("refusing subsystem {name:?}: not supported by the node");
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (cols, rows, pw, ph) = (clamp16(col_width), clamp16(row_height), clamp16(pix_width), clamp16(pix_height));
        let Some(state) = self.channels.get_mut(&channel) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        if let Some(p) = state.pty.as_mut() {
            (p.cols, p.rows, p.pix_width, p.pix_height) = (cols, rows, pw, ph);
        }
        let tx = state.input.clone();
        session.channel_success(channel)?;
        if let Some(tx) = tx {
            let _ = tx.send(Input::Resize { cols, rows, pix_width: pw, pix_height: ph }).await;
        }
        Ok(())
    }

    async fn signal(&mut self, channel: ChannelId, signal: Sig, _session: &mut Session) -> Result<(), Self::Error> {
        if let Some(tx) = self.input_sender(channel) {
            let _ = tx.send(Input::Signal(signal_name(&signal))).await;
        }
        Ok(())
    }
}

/// Marks the current span (a login check) failed with `reason`.
fn fail_span(reason: &str) {
    let span = tracing::Span::current();
    span.record("otel.status_code", "error");
    span.record("otel.status_description", reason);
}
