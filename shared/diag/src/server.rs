//! The HTTP/1.1 server of the diagnostic listener (hyper): `/metrics`, `/healthz`, `/readyz`.
//! Plain HTTP: it is meant for a cluster-internal port scraped by Prometheus and probed by
//! the kubelet, and serves nothing secret.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use portcullis_net::{ConnGuard, ConnectionLimits, Gate, GatedListener};

use crate::Diag;

/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one diagnostic connection may stay open (scrapes take well under a second).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);
const TEXT: &str = "text/plain; charset=utf-8";

/// Binds the diagnostic listener when an address is configured (`diag_service.listen_addr`
/// or `--diag-addr`); the error names the address.
pub async fn bind(addr: Option<SocketAddr>) -> std::io::Result<Option<TcpListener>> {
    let Some(addr) = addr else { return Ok(None) };
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(Some(l)),
        Err(e) => Err(std::io::Error::new(e.kind(), format!("cannot listen for diagnostics on {addr}: {e}"))),
    }
}

/// Serves `diag` on `listener` until `shutdown` resolves; open connections are closed then.
/// Accept errors (out of file descriptors) are logged and retried, never fatal.
pub async fn serve(listener: TcpListener, diag: Diag, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let mut conns = JoinSet::new();
    // A few scrapers and probes: idle or flooding clients cannot use up descriptors.
    let listener = GatedListener::new(listener, Gate::new("diag", ConnectionLimits::DIAG));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            (tcp, peer, guard) = listener.accept() => {
                conns.spawn(serve_connection(tcp, peer, diag.clone(), guard));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
    Ok(())
}

/// A diagnostic listener running in the background; dropping it stops it.
#[derive(Debug)]
pub struct DiagServer {
    pub addr: Option<SocketAddr>,
    task: JoinHandle<()>,
}

impl Drop for DiagServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts serving `diag` on `listener` in a task that lives as long as the returned handle.
pub fn spawn(listener: TcpListener, diag: Diag) -> DiagServer {
    let addr = listener.local_addr().ok();
    if let Some(a) = addr {
        tracing::info!("diagnostic listener on http://{a} (/metrics, /healthz, /readyz)");
    }
    let task = tokio::spawn(async move {
        if let Err(e) = serve(listener, diag, std::future::pending()).await {
            tracing::warn!("the diagnostic listener stopped: {e}");
        }
    });
    DiagServer { addr, task }
}

async fn serve_connection(tcp: TcpStream, peer: SocketAddr, diag: Diag, _place: ConnGuard) {
    let service = service_fn(move |req| {
        let diag = diag.clone();
        async move { Ok::<_, Infallible>(respond(&diag, &req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(tcp), service);
    // The header timeout covers each request; this bounds a connection kept open in between.
    match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
        Ok(Err(e)) => tracing::debug!("diagnostic connection from {peer} ended: {e}"),
        Err(_) => tracing::debug!("diagnostic connection from {peer} open too long: closed"),
        Ok(Ok(())) => {}
    }
}

/// The answer to one request.
async fn respond(diag: &Diag, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz");
    if !known {
        return text(StatusCode::NOT_FOUND, format!("not found: {path} (try /metrics, /healthz, /readyz)\n"));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, format!("{} is not allowed here\n", req.method()));
        r.headers_mut().insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => {
            // Gauges computed on scrape may take short locks: keep them off the async threads.
            let metrics = diag.metrics.clone();
            match tokio::task::spawn_blocking(move || metrics.encode()).await {
                Ok(Ok(body)) => {
                    let mut r = text(StatusCode::OK, body);
                    r.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(crate::CONTENT_TYPE));
                    r
                }
                Ok(Err(_)) | Err(_) => {
                    tracing::warn!("encoding the metrics failed");
                    text(StatusCode::INTERNAL_SERVER_ERROR, "encoding the metrics failed\n".into())
                }
            }
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        _ => match diag.ready.check() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
        },
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(TEXT));
    r.headers_mut().insert(CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-store"));
    r
}
