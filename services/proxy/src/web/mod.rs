//! The HTTPS web API (actix-web): ping, password login, clusters and node listing,
//! explanations of SSH refusals, and leaf clusters asking for trust. Errors are
//! `{"error": "..."}` with a 4xx/5xx status.

#[cfg(test)]
mod api_tests;
pub mod clusters;
pub mod handlers;
pub mod limit;
pub mod tls;

use std::any::Any;
use std::sync::Arc;

use actix_web::dev::{Extensions, Server};
use actix_web::error::JsonPayloadError;
use actix_web::http::StatusCode;
use actix_web::rt::net::TcpStream;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, ResponseError, web};
use tonic::{Code, Status};

use crate::route::RouteError;
use crate::state::ProxyState;
use crate::tunnel::TunnelError;
use crate::ProxyError;

/// Largest JSON body accepted; requests are small, so anything bigger is a mistake or abuse.
pub const JSON_LIMIT: usize = 64 * 1024;

/// The verified TLS client certificate (DER) of a connection, when the client sent one.
#[derive(Debug, Clone)]
pub struct PeerCert(pub Vec<u8>);

/// An error answer: a status and a message meant for users.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status);
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            // The auth service refuses a login flood for about a second; the web rate
            // limit (limit.rs) replaces this with its own wait.
            resp.insert_header((actix_web::http::header::RETRY_AFTER, "1"));
        }
        resp.json(serde_json::json!({ "error": self.message }))
    }
}

/// The HTTP status for an auth service status code: the one place this mapping lives.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Status> for ApiError {
    fn from(s: Status) -> Self {
        let message = match s.code() {
            Code::Unavailable => format!("auth service unreachable: {}", s.message()),
            // The auth service's messages are written for users (no secrets), so pass them on.
            _ => s.message().to_string(),
        };
        ApiError::new(http_status(s.code()), message)
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        let status = match &e {
            RouteError::ClusterNotFound(_) | RouteError::NodeNotFound { .. } => StatusCode::NOT_FOUND,
            RouteError::ClusterOffline(_) => StatusCode::SERVICE_UNAVAILABLE,
            RouteError::Reserved { .. } => StatusCode::FORBIDDEN,
            RouteError::Leaf { reason, .. } => tunnel_status(reason),
            RouteError::Resolve { .. }
            | RouteError::Connect { .. }
            | RouteError::Tunnel { .. }
            | RouteError::ClusterCheck { .. } => {
                StatusCode::BAD_GATEWAY
            }
        };
        ApiError::new(status, e.to_string())
    }
}

/// The HTTP status for a request a leaf could not answer.
fn tunnel_status(e: &TunnelError) -> StatusCode {
    match e {
        TunnelError::Offline(_) | TunnelError::Closed(_) => StatusCode::SERVICE_UNAVAILABLE,
        TunnelError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        TunnelError::DialFailed(_) | TunnelError::Leaf(_) | TunnelError::UnknownDial(_) => StatusCode::BAD_GATEWAY,
    }
}

impl From<TunnelError> for ApiError {
    fn from(e: TunnelError) -> Self {
        ApiError::new(tunnel_status(&e), e.to_string())
    }
}

/// Turns body errors into `{"error"}` answers that say what is wrong with the body.
fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let e = match &err {
        JsonPayloadError::OverflowKnownLength { length, limit } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body ({length} bytes) is larger than the limit of {limit} bytes"),
        ),
        JsonPayloadError::Overflow { limit } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than the limit of {limit} bytes"),
        ),
        JsonPayloadError::ContentType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the request body must be JSON (Content-Type: application/json)",
        ),
        JsonPayloadError::Deserialize(e) => ApiError::bad_request(format!("invalid JSON request body: {e}")),
        other => ApiError::bad_request(format!("cannot read the request body: {other}")),
    };
    e.into()
}

fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(JSON_LIMIT)
        // curl users forget the header; a body that parses as JSON is good enough.
        .content_type_required(false)
        .error_handler(json_error)
}

/// Body limits, routes and the JSON 404 for unknown paths.
pub fn configure_app(cfg: &mut web::ServiceConfig) {
    cfg.app_data(json_config())
        .configure(handlers::routes)
        .default_service(web::to(handlers::not_found));
}

/// Stores the verified client certificate of a TLS connection for the handlers.
fn capture_peer_cert(conn: &dyn Any, ext: &mut Extensions) {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<TcpStream>;
    let Some(tls) = conn.downcast_ref::<Tls>() else {
        return;
    };
    let (_, session) = tls.get_ref();
    if let Some(first) = session.peer_certificates().and_then(|c| c.first()) {
        ext.insert(PeerCert(first.to_vec()));
    }
}

/// Builds the HTTPS server on `listener`; the caller spawns the returned future and stops it
/// through its handle.
pub fn start(
    state: Arc<ProxyState>,
    listener: std::net::TcpListener,
    tls: rustls::ServerConfig,
) -> Result<Server, ProxyError> {
    start_limited(state, listener, tls, portcullis_net::ConnectionLimits::PROXY, Default::default())
}

/// Worker threads of the HTTPS server.
const WEB_WORKERS: usize = 2;

/// [`start`] with `limits`: TLS handshakes under the handshake timeout, at most
/// `max_connections` in all, and connections beyond the per-address cap shut at once.
pub fn start_limited(
    state: Arc<ProxyState>,
    listener: std::net::TcpListener,
    tls: rustls::ServerConfig,
    limits: portcullis_net::ConnectionLimits,
    rate_limit: portcullis_config::RateLimitSettings,
) -> Result<Server, ProxyError> {
    let data = web::Data::from(state);
    let rate_limit = web::Data::new(limit::WebRateLimit::new(rate_limit));
    let gate = portcullis_net::Gate::new("proxy_web", limits);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(rate_limit.clone())
            .wrap(actix_web::middleware::from_fn(limit::limit_unauthenticated))
            .configure(configure_app)
    })
    .on_connect(move |conn, ext| {
        capture_peer_cert(conn, ext);
        // actix runs the handshake itself, so the per-address cap applies from here; the
        // place is kept in the connection's data, dropped when the connection ends.
        type Tls = actix_tls::accept::rustls_0_23::TlsStream<TcpStream>;
        if let Some(tls) = conn.downcast_ref::<Tls>()
            && let Some(place) = portcullis_net::admit_stream(&gate, tls.get_ref().0)
        {
            ext.insert(place);
        }
    })
    .tls_handshake_timeout(limits.handshake_timeout)
    .max_connections(limits.max_total.div_ceil(WEB_WORKERS))
    // The process owns signal handling; the proxy stops the server itself.
    .disable_signals()
    .shutdown_timeout(5)
    .workers(WEB_WORKERS)
    .listen_rustls_0_23(listener, tls)
    .map_err(|e| ProxyError::io("serving HTTPS on the web listener", e))?
    .run();
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_to_http() {
        assert_eq!(http_status(Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::Unavailable), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(http_status(Code::ResourceExhausted), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(http_status(Code::Internal), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(http_status(Code::AlreadyExists), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn status_messages_are_passed_on() {
        let e = ApiError::from(Status::unauthenticated("invalid username or password"));
        assert_eq!((e.status, e.message.as_str()), (StatusCode::UNAUTHORIZED, "invalid username or password"));
        let e = ApiError::from(Status::unavailable("connection refused"));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.message, "auth service unreachable: connection refused");
        let e = ApiError::from(RouteError::ClusterNotFound("x".into()));
        assert_eq!((e.status, e.message.as_str()), (StatusCode::NOT_FOUND, "cluster \"x\" is not found"));
    }

    #[actix_web::test]
    async fn error_bodies_are_json() {
        let resp = ApiError::bad_request("nope").error_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body = actix_web::body::to_bytes(resp.into_body()).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "nope");
    }
}
