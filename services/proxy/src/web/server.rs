//! The HTTPS server of the web API: connections admitted through the listener's gate, TLS
//! handshakes under its timeout (`portcullis_net`), then HTTP/1.1 (hyper) on the proxy's own
//! runtime, each request carrying its connection's [`ConnInfo`]. Stops when the proxy drains.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::{Request, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use portcullis_net::{ConnectionLimits, Gate, GatedListener, Guarded, tls_incoming};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt;
use tower::ServiceExt;

use super::limit::{WebRateLimit, limit_unauthenticated};
use super::{ApiError, ConnInfo, PeerCert};
use crate::ProxyError;
use crate::drain::Drain;
use crate::state::ProxyState;

/// How long a client may take to send a request's headers, and how long a kept-alive
/// connection may sit idle between requests.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a request may take to answer (auth calls and leaf calls have shorter limits
/// of their own; this bounds anything else).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long open connections get to finish their requests once the proxy drains.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The running web server: a future that completes once the proxy drains and open
/// requests are answered (or [`SHUTDOWN_TIMEOUT`] passed). Spawn it.
pub struct WebServer(Pin<Box<dyn Future<Output = Result<(), ProxyError>> + Send>>);

impl Future for WebServer {
    type Output = Result<(), ProxyError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

/// [`start_limited`] with the proxy's default limits.
pub fn start(
    state: Arc<ProxyState>,
    listener: std::net::TcpListener,
    tls: rustls::ServerConfig,
    drain: Drain,
) -> Result<WebServer, ProxyError> {
    start_limited(state, listener, tls, ConnectionLimits::PROXY, Default::default(), drain)
}

/// Serves the web API on `listener` until `drain` fires: at most `limits.max_total`
/// connections and `limits.max_per_address` per client address, TLS handshakes under
/// `limits.handshake_timeout`, requests without a client certificate under `rate_limit`.
/// Must be called on the runtime that will run the server (accepting starts at once).
pub fn start_limited(
    state: Arc<ProxyState>,
    listener: std::net::TcpListener,
    mut tls: rustls::ServerConfig,
    limits: ConnectionLimits,
    rate_limit: portcullis_config::RateLimitSettings,
    drain: Drain,
) -> Result<WebServer, ProxyError> {
    let io = |e| ProxyError::io("serving HTTPS on the web listener", e);
    listener.set_nonblocking(true).map_err(io)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(io)?;
    // HTTP/1.1 only (what tsh and the leaf auth speak).
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let app = super::router(state).layer(from_fn_with_state(WebRateLimit::new(rate_limit), limit_unauthenticated));
    let gated = GatedListener::new(listener, Gate::new("proxy_web", limits));
    let incoming = tls_incoming(gated, TlsAcceptor::from(Arc::new(tls)), |tcp| tcp, |tls, peer, place| {
        let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| PeerCert(c.to_vec()));
        Some((Guarded::new(tls, place), ConnInfo { peer: Some(peer), cert }))
    });
    Ok(WebServer(Box::pin(serve(incoming, app, drain))))
}

type Conn = (Guarded<TlsStream<TcpStream>>, ConnInfo);

async fn serve(
    mut incoming: portcullis_net::Incoming<Conn>,
    app: Router,
    drain: Drain,
) -> Result<(), ProxyError> {
    let mut conns = JoinSet::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let draining = drain.draining();
    tokio::pin!(draining);
    let result = loop {
        tokio::select! {
            () = &mut draining => break Ok(()),
            next = incoming.next() => match next {
                Some(Ok((stream, info))) => {
                    conns.spawn(serve_connection(stream, info, app.clone(), stop_rx.clone()));
                }
                Some(Err(e)) => tracing::debug!("web connection not accepted: {e}"),
                // The accepting task is gone (it only ends by panicking).
                None => break Err(ProxyError::Server { server: "HTTPS", reason: "the listener stopped accepting".into() }),
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    };
    // Stop accepting, then let open connections finish the request they are on.
    drop(incoming);
    let _ = stop_tx.send(true);
    let finished = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_TIMEOUT, finished).await.is_err() {
        tracing::debug!(open = conns.len(), "web connections still open after {}s: closed", SHUTDOWN_TIMEOUT.as_secs());
    }
    conns.abort_all();
    result
}

/// HTTP/1.1 on one TLS connection until the client closes it, a timeout passes, or the
/// server stops (then the request in progress is answered first).
async fn serve_connection(stream: Guarded<TlsStream<TcpStream>>, info: ConnInfo, app: Router, mut stop: watch::Receiver<bool>) {
    let peer = info.peer_addr();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(info.clone());
        let app = app.clone();
        async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, app.oneshot(req)).await {
                Ok(answer) => answer,
                Err(_) => Ok::<Response, std::convert::Infallible>(
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()),
                    )
                    .into_response(),
                ),
            }
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, "web connection ended: {e}");
                }
                return;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
