//! Serving a fake on 127.0.0.1:0 (plain or mutual TLS) and ending it: gracefully, or killed
//! as a dying auth process would be.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use portcullis_pki::x509::{AUTH_SERVER_NAME, SystemRole, TlsCa, TlsCertRequest, generate_key, public_key_der};
use portcullis_proto::auth::auth_server::AuthServer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio_stream::StreamExt as _;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::{Calls, FakeAuth, Service};

/// Why a fake could not start.
#[derive(Debug, thiserror::Error)]
pub enum FakeAuthError {
    #[error("fake auth: {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("fake auth TLS: {0}")]
    Tls(#[from] tonic::transport::Error),
    #[error("fake auth key material: {0}")]
    Pki(#[from] portcullis_pki::PkiError),
    #[error("fake auth access snapshot: {0}")]
    Json(#[from] serde_json::Error),
}

/// The server side of mutual TLS: the fake's certificate and key (PEM), the CAs sent after
/// it, and the CAs whose client certificates it accepts (presenting one stays optional,
/// as with the real auth).
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pems: Vec<String>,
    pub client_ca_pems: Vec<String>,
}

impl ServerTls {
    /// An auth server certificate (naming [`AUTH_SERVER_NAME`]) issued by `ca`, which is also
    /// the chain sent; clients of any of `client_ca_pems` are accepted.
    pub fn issue(ca: &TlsCa, client_ca_pems: &[String]) -> Result<Self, FakeAuthError> {
        let (cert_pem, key_pem) = issue_cert(ca, "auth", SystemRole::Auth.as_str(), &[AUTH_SERVER_NAME])?;
        Ok(ServerTls {
            cert_pem,
            key_pem,
            ca_pems: vec![ca.cert_pem().to_string()],
            client_ca_pems: client_ca_pems.to_vec(),
        })
    }
}

/// A certificate of `ca` for `name` with one system `role` and the given DNS names, valid
/// for a week: (certificate, key), PEM.
pub fn issue_cert(ca: &TlsCa, name: &str, role: &str, dns_names: &[&str]) -> Result<(String, String), FakeAuthError> {
    let key = generate_key()?;
    let cert = ca.issue(&TlsCertRequest {
        public_key_der: public_key_der(&key),
        name: name.into(),
        system_roles: vec![role.into()],
        dns_names: dns_names.iter().map(|d| d.to_string()).collect(),
        ttl: Duration::from_secs(7 * 24 * 3600),
        ..Default::default()
    })?;
    Ok((cert, key.serialize_pem()))
}

/// A serving fake. Dropping the handle leaves it serving until the runtime ends; [`stop`]
/// or [`kill`] it to end it sooner.
///
/// [`stop`]: Running::stop
/// [`kill`]: Running::kill
pub struct Running {
    pub addr: SocketAddr,
    calls: Calls,
    stop: Option<oneshot::Sender<()>>,
    kill: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeAuth {
    /// Serves the fake on a free loopback port.
    pub async fn start(self) -> Result<Running, FakeAuthError> {
        portcullis_rpc::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|source| FakeAuthError::Io { what: "binding 127.0.0.1:0", source })?;
        let addr = listener.local_addr().map_err(|source| FakeAuthError::Io { what: "its address", source })?;
        let mut server = tonic::transport::Server::builder();
        if let Some(t) = &self.tls {
            let tls = portcullis_rpc::server::server_tls(&t.cert_pem, &t.key_pem, &t.ca_pems, &t.client_ca_pems);
            server = server.tls_config(tls)?;
        }
        if self.count_only {
            self.calls.set_keep_requests(false);
        }
        let calls = self.calls.clone();
        let router = server.add_service(AuthServer::new(Service {
            handlers: self.handlers,
            access: self.access,
            calls: self.calls,
        }));
        let (kill, killed) = watch::channel(false);
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener)
            .map(move |conn| conn.map(|io| Killable::new(io, killed.clone())));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stopped = async {
                // A dropped handle is no stop: the fake serves on.
                if stopped.await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            if let Err(e) = router.serve_with_incoming_shutdown(incoming, stopped).await {
                tracing::error!("the fake auth stopped: {e}");
            }
        });
        Ok(Running { addr, calls, stop: Some(stop), kill, task })
    }
}

impl Running {
    /// What the fake was asked.
    pub fn calls(&self) -> &Calls {
        &self.calls
    }

    /// Stops accepting, lets open calls finish, and waits for the server to end.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Ends the fake at once, as a dying auth process: the port closes and every open
    /// connection (streams included) drops. Aborting tonic's server task alone would leave
    /// the connections it spawned running; each one watches this signal instead.
    pub fn kill(&self) {
        self.kill.send_replace(true);
        self.task.abort();
    }

    /// A guard that kills the fake when dropped (e.g. with the task that holds it).
    pub fn kill_on_drop(self) -> KillOnDrop {
        KillOnDrop(self)
    }
}

/// Kills its fake when dropped; see [`Running::kill_on_drop`].
pub struct KillOnDrop(Running);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill();
    }
}

/// An accepted connection that fails every read and write once the fake is killed, so that
/// tonic drops it.
struct Killable {
    io: TcpStream,
    killed: Pin<Box<dyn Future<Output = ()> + Send>>,
    dead: bool,
}

impl Killable {
    fn new(io: TcpStream, mut kill: watch::Receiver<bool>) -> Self {
        let killed = Box::pin(async move {
            // A dropped handle is no kill.
            if kill.wait_for(|k| *k).await.is_err() {
                std::future::pending::<()>().await;
            }
        });
        Killable { io, killed, dead: false }
    }

    /// Errs once killed; otherwise registers to be woken by the kill.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.dead && self.killed.as_mut().poll(cx).is_ready() {
            self.dead = true;
        }
        if self.dead {
            Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the fake auth was killed"))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for Killable {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Killable {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl Connected for Killable {
    // The TCP stream's own info, so that `Request::peer_certs` finds the client's certificates.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}
