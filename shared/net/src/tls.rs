//! TLS listeners: each handshake runs in its own task under the handshake timeout, and the
//! finished streams (still holding their gate places) are handed to a server such as tonic's
//! `serve_with_incoming`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::accept::GatedListener;
use crate::gate::ConnGuard;

/// Finished handshakes queued for the server; handshakes wait while it is full.
const QUEUE: usize = 64;

/// A stream holding its connection's place in the gate until it is dropped.
#[derive(Debug)]
pub struct Guarded<T> {
    inner: T,
    _guard: ConnGuard,
}

impl<T> Guarded<T> {
    pub fn new(inner: T, guard: ConnGuard) -> Self {
        Guarded { inner, _guard: guard }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

/// The inner stream's connect info: for `TlsStream<TcpStream>` that is tonic's
/// `TlsConnectInfo`, which `Request::peer_certs` reads.
impl<T: Connected> Connected for Guarded<T> {
    type ConnectInfo = T::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The stream of finished TLS connections; dropping it stops accepting.
#[derive(Debug)]
pub struct Incoming<T> {
    rx: ReceiverStream<std::io::Result<T>>,
    accepting: JoinHandle<()>,
}

impl<T> Drop for Incoming<T> {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl<T> Stream for Incoming<T> {
    type Item = std::io::Result<T>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.rx).poll_next(cx)
    }
}

/// Accepts on `listener` and runs each TLS handshake in its own task, so a slow or silent
/// client never holds up the others, closing it when the gate's handshake timeout passes.
/// `prepare` wraps the socket before TLS (e.g. a read buffer); `finish` turns a finished
/// handshake into the server's connection type, or `None` to close it.
pub fn tls_incoming<IO, T, P, F>(listener: GatedListener, acceptor: TlsAcceptor, prepare: P, finish: F) -> Incoming<T>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: Send + 'static,
    P: Fn(TcpStream) -> IO + Send + Sync + 'static,
    F: Fn(TlsStream<IO>, SocketAddr, ConnGuard) -> Option<T> + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::channel(QUEUE);
    let shared = std::sync::Arc::new((prepare, finish));
    let timeout = listener.gate().limits().handshake_timeout;
    let accepting = tokio::spawn(async move {
        loop {
            let (tcp, peer, guard) = listener.accept().await;
            let (acceptor, tx, shared) = (acceptor.clone(), tx.clone(), shared.clone());
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(timeout, acceptor.accept((shared.0)(tcp))).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => return tracing::debug!(%peer, "TLS handshake failed: {e}"),
                    Err(_) => {
                        return tracing::debug!(%peer, "TLS handshake not finished within {}s: closed", timeout.as_secs_f32());
                    }
                };
                if let Some(conn) = (shared.1)(tls, peer, guard) {
                    let _ = tx.send(Ok(conn)).await;
                }
            });
        }
    });
    Incoming { rx: ReceiverStream::new(rx), accepting }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::Gate;
    use portcullis_config::ConnectionLimits;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    fn acceptor() -> TlsAcceptor {
        // Any certificate will do: no client finishes a handshake in this test.
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key = tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
        let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let cfg = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![made.cert.der().clone()], key)
            .unwrap();
        TlsAcceptor::from(std::sync::Arc::new(cfg))
    }

    #[tokio::test]
    async fn silent_clients_are_closed_after_the_handshake_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnectionLimits { handshake_timeout: Duration::from_millis(300), ..ConnectionLimits::AUTH };
        let gate = Gate::new("test_tls", limits);
        let incoming = tls_incoming(GatedListener::new(listener, gate.clone()), acceptor(), |t| t, |_, _, _| Some(()));
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await.expect("closed in time");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        assert!(started.elapsed() >= Duration::from_millis(250), "closed too early: {:?}", started.elapsed());
        // Its place in the gate is free again.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(gate.open(), 0);
        drop(incoming);
    }
}
