//! Per-client-address rate limit of web requests made without a client certificate (login,
//! ping, trusted-cluster validation, ...): 429 with `Retry-After` beyond the token bucket.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::{HeaderValue, RETRY_AFTER};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use portcullis_config::RateLimitSettings;
use portcullis_rpc::rate_limit::{AddrRateLimiter, retry_after_secs};

use super::{ApiError, ConnInfo};

/// The limiter the middleware consults, shared by all connections.
#[derive(Debug, Clone)]
pub struct WebRateLimit(pub Arc<AddrRateLimiter>);

impl WebRateLimit {
    pub fn new(settings: RateLimitSettings) -> Self {
        WebRateLimit(Arc::new(AddrRateLimiter::new(settings)))
    }
}

/// The 429 answer: the usual `{"error"}` body, and `Retry-After` in whole seconds.
pub fn too_many(ip: std::net::IpAddr, wait: std::time::Duration) -> Response {
    let secs = retry_after_secs(wait);
    let mut resp =
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, format!("too many requests from {ip}; try again in {secs}s")).into_response();
    resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// Middleware (`axum::middleware::from_fn_with_state`): a request with a verified client
/// certificate is a known user or host and passes; any other takes a token of its address.
pub async fn limit_unauthenticated(State(limit): State<WebRateLimit>, req: Request, next: Next) -> Response {
    let conn = req.extensions().get::<ConnInfo>().cloned().unwrap_or_default();
    if let (None, Some(peer)) = (&conn.cert, conn.peer)
        && let Err((wait, log)) = limit.0.check_logged(peer.ip())
    {
        if log {
            tracing::info!(ip = %peer.ip(), path = %req.uri().path(), "web request refused: rate limit (logged once a minute per address)");
        }
        return too_many(peer.ip(), wait);
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::middleware::from_fn_with_state;
    use axum::routing::get;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_burst_from_one_address_gets_429_with_retry_after() {
        let limit = WebRateLimit::new(RateLimitSettings { burst: 3, per_second: 0.5 });
        let app = Router::new()
            .route("/webapi/ping", get(|| async { StatusCode::OK }))
            .layer(from_fn_with_state(limit, limit_unauthenticated));
        let from = |ip: &str| {
            let mut req = Request::get("/webapi/ping").body(Body::empty()).unwrap();
            req.extensions_mut().insert(ConnInfo { peer: Some(format!("{ip}:40000").parse().unwrap()), cert: None });
            app.clone().oneshot(req)
        };
        for _ in 0..3 {
            assert_eq!(from("192.0.2.1").await.unwrap().status(), StatusCode::OK);
        }
        let resp = from("192.0.2.1").await.unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers().get(RETRY_AFTER).unwrap(), "2");
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "too many requests from 192.0.2.1; try again in 2s");
        // Another address is not affected.
        assert_eq!(from("192.0.2.2").await.unwrap().status(), StatusCode::OK);
    }
}
