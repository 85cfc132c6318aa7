//! The HTTPS web API (axum on the proxy's tokio runtime): ping, password login, clusters and
//! node listing, explanations of SSH refusals, and leaf clusters asking for trust. Bodies are
//! `portcullis_types::webapi`; errors are `{"error": "..."}` with a 4xx/5xx status.

#[cfg(test)]
mod api_tests;
pub mod body;
pub mod clusters;
pub mod handlers;
pub mod limit;
pub mod server;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use portcullis_types::webapi;
use tonic::{Code, Status};

use crate::route::RouteError;
use crate::state::ProxyState;
use crate::tunnel::TunnelError;

pub use body::{JSON_LIMIT, Json};
pub use server::{WebServer, start, start_limited};

/// What the connection tells about its client: its address and the verified TLS client
/// certificate, when it sent one. The server puts it in every request's extensions; a
/// request without it (an in-process test) has neither.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    pub peer: Option<SocketAddr>,
    pub cert: Option<PeerCert>,
}

impl ConnInfo {
    /// The client's address as the auth service records it ("" when unknown).
    pub fn peer_addr(&self) -> String {
        self.peer.map(|a| a.to_string()).unwrap_or_default()
    }

    /// The client certificate (DER), required by user routes.
    pub fn require_cert(&self) -> Result<Vec<u8>, ApiError> {
        self.cert
            .as_ref()
            .map(|c| c.0.clone())
            .ok_or_else(|| ApiError::unauthorized("a client certificate is required: run 'tsh login'"))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ConnInfo {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<ConnInfo>().cloned().unwrap_or_default())
    }
}

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
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = reply(self.status, &webapi::ErrorBody { error: self.message });
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            // The auth service refuses a login flood for about a second; the web rate
            // limit (limit.rs) replaces this with its own wait.
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// A JSON answer with `status`.
pub fn reply<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes).into_response(),
        // The bodies are plain structs of strings: this does not happen, but must not panic.
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the answer: {e}")).into_response(),
    }
}

/// A JSON answer with 200 OK.
pub fn ok<T: serde::Serialize>(body: &T) -> Response {
    reply(StatusCode::OK, body)
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
            // Auth's own answer keeps its status and wording.
            RouteError::Auth(s) => return ApiError::from(s.clone()),
            RouteError::Resolve { .. }
            | RouteError::Connect { .. }
            | RouteError::Tunnel { .. }
            | RouteError::ClusterCheck { .. } => StatusCode::BAD_GATEWAY,
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

/// The routes over `state`, with the JSON 404 for unknown paths and methods. The server adds
/// the rate limit ([`limit`]) and the connection's [`ConnInfo`].
pub fn router(state: Arc<ProxyState>) -> Router {
    Router::new()
        .route(webapi::PING_PATH, get(handlers::ping))
        .route(webapi::LOGIN_PATH, post(handlers::login))
        .route(webapi::VALIDATE_PATH, post(clusters::validate))
        .route(webapi::SITES_PATH, get(clusters::sites))
        .route(webapi::NODES_PATH, get(handlers::nodes))
        .route(webapi::AUTHORIZE_PATH, post(handlers::authorize))
        .fallback(handlers::not_found)
        // A known path with another method is "no such endpoint" too, as it always was.
        .method_not_allowed_fallback(handlers::not_found)
        .with_state(state)
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
        let e = ApiError::from(RouteError::Auth(Status::permission_denied("no")));
        assert_eq!((e.status, e.message.as_str()), (StatusCode::FORBIDDEN, "no"));
    }

    #[tokio::test]
    async fn error_bodies_are_json() {
        let resp = ApiError::bad_request("nope").into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        assert_eq!(&body[..], br#"{"error":"nope"}"#);
        let resp = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "slow down").into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
    }
}
