//! The russh client handler: checks the proxy's and the node's host certificates against
//! the cluster host CAs saved at login, and keeps the reasons of refusals for the user.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_pki::ssh::{EXT_HOST_ROLE, verify_host_cert};
use russh::client::{self, DisconnectReason, Handle, Session};
use russh::keys::{Algorithm, Certificate, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelId, ChannelOpenFailure};

use crate::error::{TshError, error_chain};

/// How long to wait for a TCP connection and an SSH handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Which host the handler is talking to, and so which certificate it accepts.
#[derive(Debug, Clone)]
pub enum Expect {
    /// The proxy: any valid certificate of the host CA with the `Proxy` role, or one naming
    /// the host it was dialled by.
    Proxy { dial_host: String },
    /// A node of `cluster`: the certificate must name one of these (the HOST the user gave,
    /// its id, ...), and only that cluster's host CA may have signed it.
    Node { names: Vec<String>, cluster: String },
}

impl Expect {
    fn what(&self) -> &'static str {
        match self {
            Expect::Proxy { .. } => "the proxy",
            Expect::Node { .. } => "the node",
        }
    }
}

/// What went wrong on a connection, as the server or our checks told it.
#[derive(Debug, Default)]
pub struct ConnState {
    pub host_key_error: Option<String>,
    pub open_failure: Option<String>,
    pub disconnect: Option<String>,
}

/// Shared view of a connection's [`ConnState`].
pub type SharedState = Arc<Mutex<ConnState>>;

/// The russh client handler of `tsh`.
pub struct HostCheck {
    cas: Arc<Vec<PublicKey>>,
    expect: Expect,
    state: SharedState,
}

impl HostCheck {
    pub fn new(cas: Arc<Vec<PublicKey>>, expect: Expect) -> (Self, SharedState) {
        let state = SharedState::default();
        (
            HostCheck {
                cas,
                expect,
                state: state.clone(),
            },
            state,
        )
    }

    fn set(&self, f: impl FnOnce(&mut ConnState)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
    }
}

/// Accepts `key` when it is a host certificate from one of `cas`, valid `now`, for the
/// expected host.
pub fn check_host_key(
    key: &PublicKeyOrCertificate,
    cas: &[PublicKey],
    expect: &Expect,
    now: u64,
) -> Result<(), String> {
    let Some(cert) = key.certificate() else {
        return Err(format!(
            "{} presented a plain host key ({}), not a certificate from the cluster's host CA",
            expect.what(),
            portcullis_pki::ssh::fingerprint(&key.public_key())
        ));
    };
    if cas.is_empty() {
        return Err(match expect {
            Expect::Node { cluster, .. } => format!(
                "no host CA of cluster {cluster:?} was saved at login; run 'tsh login' again"
            ),
            Expect::Proxy { .. } => "no host CA was saved at login; run 'tsh login' again".into(),
        });
    }
    check_host_cert(cert, cas, expect, now)
}

fn check_host_cert(
    cert: &Certificate,
    cas: &[PublicKey],
    expect: &Expect,
    now: u64,
) -> Result<(), String> {
    let principals = cert.valid_principals();
    // Signature, validity and certificate type are checked once, with a principal the
    // certificate has; which names are acceptable is decided below.
    let any = principals.first().map(String::as_str).unwrap_or_default();
    verify_host_cert(cert, cas, any, now).map_err(|e| match expect {
        // Each cluster's hosts are vouched for by its own host CA only: a leaf's CA can
        // never pass for the root's hosts, nor for another leaf's.
        Expect::Node { cluster, .. } => format!(
            "{} host certificate: {e} (only the host CA of cluster {cluster:?} is accepted for its nodes)",
            expect.what()
        ),
        Expect::Proxy { .. } => format!("{} host certificate: {e}", expect.what()),
    })?;
    let names: &[String] = match expect {
        Expect::Proxy { dial_host } => {
            if cert.extensions().get(EXT_HOST_ROLE).map(String::as_str) == Some("Proxy") {
                return Ok(());
            }
            std::slice::from_ref(dial_host)
        }
        Expect::Node { names, .. } => names,
    };
    if names.iter().any(|n| principals.contains(n)) {
        return Ok(());
    }
    Err(format!(
        "{} host certificate is not valid for {} (principals: {})",
        expect.what(),
        names.join(" or "),
        principals.join(", ")
    ))
}

impl client::Handler for HostCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match check_host_key(key, &self.cas, &self.expect, portcullis_pki::unix_now()) {
            Ok(()) => Ok(true),
            Err(reason) => {
                tracing::debug!(%reason, "host key refused");
                self.set(|s| s.host_key_error = Some(reason));
                Ok(false)
            }
        }
    }

    async fn auth_banner(
        &mut self,
        banner: &str,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        eprint!("{banner}");
        Ok(())
    }

    async fn channel_open_failure(
        &mut self,
        _channel: ChannelId,
        reason: ChannelOpenFailure,
        description: &str,
        _language: &str,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let text = if description.is_empty() {
            format!("{reason:?}")
        } else {
            description.to_string()
        };
        self.set(|s| s.open_failure = Some(text));
        Ok(())
    }

    async fn disconnected(
        &mut self,
        reason: DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        match reason {
            DisconnectReason::ReceivedDisconnect(info) => {
                if !info.message.is_empty() {
                    let msg = info.message.clone();
                    self.set(|s| s.disconnect = Some(msg));
                }
                Ok(())
            }
            DisconnectReason::Error(e) => Err(e),
        }
    }
}

/// Client settings: certificate host-key algorithms are advertised so servers prove who
/// they are with their host certificate rather than a bare key.
pub fn config() -> Arc<client::Config> {
    let mut c = client::Config::default();
    c.preferred = portcullis_pki::transport::preferred();
    c.preferred.host_key_certificates = Cow::Borrowed(&[Algorithm::Ed25519]);
    Arc::new(c)
}

/// Explains a failed handshake with what the handler saw.
pub fn handshake_error(what: &str, addr: &str, e: &russh::Error, state: &SharedState) -> TshError {
    let s = state.lock().ok();
    if let Some(reason) = s.as_ref().and_then(|s| s.host_key_error.clone()) {
        return TshError::Ssh(format!("refusing to connect to {what}: {reason}"));
    }
    if let Some(msg) = s.as_ref().and_then(|s| s.disconnect.clone()) {
        return TshError::Ssh(format!("{what} ({addr}) closed the connection: {msg}"));
    }
    TshError::Ssh(format!(
        "SSH handshake with {what} ({addr}) failed: {}",
        error_chain(e)
    ))
}

/// Opens SSH to the proxy's SSH address (TCP, then handshake with host-certificate check).
pub async fn connect_proxy(
    addr: &str,
    cas: Arc<Vec<PublicKey>>,
) -> Result<(Handle<HostCheck>, SharedState), TshError> {
    let (dial_host, _) = crate::profile::split_host_port(addr);
    let unreachable = |reason: String| TshError::Unreachable {
        addr: addr.to_string(),
        reason,
    };
    let tcp =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => {
                return Err(unreachable(format!(
                    "no answer within {}s",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
        };
    let _ = tcp.set_nodelay(true);
    let (handler, state) = HostCheck::new(cas, Expect::Proxy { dial_host });
    let handle = handshake(tcp, handler, "the proxy", addr, &state).await?;
    Ok((handle, state))
}

/// Runs the SSH handshake on `stream` (a TCP connection or a channel to a node).
pub async fn handshake<S>(
    stream: S,
    handler: HostCheck,
    what: &str,
    addr: &str,
    state: &SharedState,
) -> Result<Handle<HostCheck>, TshError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        client::connect_stream(config(), stream, handler),
    )
    .await
    {
        Ok(Ok(h)) => Ok(h),
        Ok(Err(e)) => Err(handshake_error(what, addr, &e, state)),
        Err(_) => Err(TshError::Ssh(format!(
            "SSH handshake with {what} ({addr}) timed out after {}s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_pki::ssh::{HostCertRequest, SshCa, generate_key};

    fn host_cert(ca: &SshCa, role: &str) -> Certificate {
        let key = generate_key().unwrap();
        ca.sign_host_cert(&HostCertRequest {
            public_key: key.public_key().clone(),
            host_id: "0a1b".into(),
            nodename: "node-1".into(),
            cluster_name: "root".into(),
            role: role.into(),
            additional_principals: vec!["127.0.0.1".into()],
            ttl: Duration::from_secs(600),
        })
        .unwrap()
    }

    #[test]
    fn node_certificates_must_name_the_host() {
        let ca = SshCa::generate().unwrap();
        let cas = vec![ca.public_key().clone()];
        let cert = PublicKeyOrCertificate::Certificate(host_cert(&ca, "Node"));
        let now = portcullis_pki::unix_now();
        for name in ["node-1", "0a1b", "127.0.0.1", "node-1.root"] {
            check_host_key(
                &cert,
                &cas,
                &Expect::Node {
                    names: vec![name.into()],
                    cluster: "root".into(),
                },
                now,
            )
            .unwrap();
        }
        let err = check_host_key(
            &cert,
            &cas,
            &Expect::Node {
                names: vec!["node-2".into()],
                cluster: "root".into(),
            },
            now,
        )
        .unwrap_err();
        assert!(err.contains("not valid for node-2"), "{err}");
        // A node certificate is no proxy certificate unless it names the dialled host.
        let proxy = Expect::Proxy {
            dial_host: "proxy.example.com".into(),
        };
        assert!(check_host_key(&cert, &cas, &proxy, now).is_err());
        let by_name = Expect::Proxy {
            dial_host: "127.0.0.1".into(),
        };
        check_host_key(&cert, &cas, &by_name, now).unwrap();
    }

    #[test]
    fn proxy_role_foreign_ca_expiry_and_plain_keys() {
        let ca = SshCa::generate().unwrap();
        let other = SshCa::generate().unwrap();
        let cas = vec![ca.public_key().clone()];
        let now = portcullis_pki::unix_now();
        let proxy = Expect::Proxy {
            dial_host: "proxy.example.com".into(),
        };
        let cert = PublicKeyOrCertificate::Certificate(host_cert(&ca, "Proxy"));
        check_host_key(&cert, &cas, &proxy, now).unwrap();
        let err = check_host_key(&cert, &cas, &proxy, now + 3600).unwrap_err();
        assert!(err.contains("expired"), "{err}");
        let foreign = PublicKeyOrCertificate::Certificate(host_cert(&other, "Proxy"));
        let err = check_host_key(&foreign, &cas, &proxy, now).unwrap_err();
        assert!(err.contains("does not trust"), "{err}");
        let plain = PublicKeyOrCertificate::from(generate_key().unwrap().public_key().clone());
        let err = check_host_key(&plain, &cas, &proxy, now).unwrap_err();
        assert!(err.contains("plain host key"), "{err}");
    }

    #[test]
    fn a_leaf_ca_never_vouches_for_a_root_node() {
        let root_ca = SshCa::generate().unwrap();
        let leaf_ca = SshCa::generate().unwrap();
        let now = portcullis_pki::unix_now();
        // A leaf CA signs a certificate naming a root node, as a hostile leaf would.
        let fake = PublicKeyOrCertificate::Certificate(host_cert(&leaf_ca, "Node"));
        let root_node = Expect::Node {
            names: vec!["node-1".into()],
            cluster: "root".into(),
        };
        // tsh hands the check the dialled cluster's CAs only (Credentials::host_cas_for).
        let err = check_host_key(&fake, &[root_ca.public_key().clone()], &root_node, now).unwrap_err();
        assert!(err.contains("only the host CA of cluster \"root\""), "{err}");
        let unknown_leaf = Expect::Node {
            names: vec!["node-1".into()],
            cluster: "leaf".into(),
        };
        let err = check_host_key(&fake, &[], &unknown_leaf, now).unwrap_err();
        assert!(err.contains("no host CA of cluster \"leaf\""), "{err}");
        check_host_key(&fake, &[leaf_ca.public_key().clone()], &unknown_leaf, now).unwrap();
    }
}
