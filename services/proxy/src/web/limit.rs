//! Per-client-address rate limit of web requests made without a client certificate (login,
//! ping, trusted-cluster validation, ...): 429 with `Retry-After` beyond the token bucket.

use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::middleware::Next;
use actix_web::{Error, ResponseError, web};
use portcullis_config::RateLimitSettings;
use portcullis_rpc::rate_limit::{AddrRateLimiter, retry_after_secs};

use super::{ApiError, PeerCert};

/// The limiter the middleware consults, shared by all web workers (app data).
#[derive(Debug, Clone)]
pub struct WebRateLimit(pub Arc<AddrRateLimiter>);

impl WebRateLimit {
    pub fn new(settings: RateLimitSettings) -> Self {
        WebRateLimit(Arc::new(AddrRateLimiter::new(settings)))
    }
}

/// The 429 answer: the usual `{"error"}` body, and `Retry-After` in whole seconds.
pub fn too_many(ip: std::net::IpAddr, wait: std::time::Duration) -> actix_web::HttpResponse {
    let secs = retry_after_secs(wait);
    let mut resp = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!("too many requests from {ip}; try again in {secs}s"),
    )
    .error_response();
    resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// Middleware (`actix_web::middleware::from_fn`): a request with a verified client
/// certificate is a known user or host and passes; any other takes a token of its address.
pub async fn limit_unauthenticated<B: MessageBody>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, Error> {
    let limiter = req.app_data::<web::Data<WebRateLimit>>().map(|l| l.0.clone());
    let anonymous = req.conn_data::<PeerCert>().is_none();
    if let (Some(limiter), true, Some(peer)) = (limiter, anonymous, req.peer_addr())
        && let Err((wait, log)) = limiter.check_logged(peer.ip())
    {
        if log {
            tracing::info!(ip = %peer.ip(), path = %req.path(), "web request refused: rate limit (logged once a minute per address)");
        }
        return Ok(req.into_response(too_many(peer.ip(), wait)).map_into_right_body());
    }
    Ok(next.call(req).await?.map_into_left_body())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::middleware::from_fn;
    use actix_web::{App, HttpResponse, test};

    #[actix_web::test]
    async fn a_burst_from_one_address_gets_429_with_retry_after() {
        let limit = web::Data::new(WebRateLimit::new(RateLimitSettings { burst: 3, per_second: 0.5 }));
        let app = test::init_service(
            App::new()
                .app_data(limit)
                .wrap(from_fn(limit_unauthenticated))
                .route("/webapi/ping", web::get().to(|| async { HttpResponse::Ok().finish() })),
        )
        .await;
        let from = |ip: &str| {
            test::TestRequest::get().uri("/webapi/ping").peer_addr(format!("{ip}:40000").parse().unwrap()).to_request()
        };
        for _ in 0..3 {
            assert_eq!(test::call_service(&app, from("192.0.2.1")).await.status(), StatusCode::OK);
        }
        let resp = test::call_service(&app, from("192.0.2.1")).await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers().get(RETRY_AFTER).unwrap(), "2");
        let body: serde_json::Value = test::read_body_json(resp).await;
        assert_eq!(body["error"], "too many requests from 192.0.2.1; try again in 2s");
        // Another address is not affected.
        assert_eq!(test::call_service(&app, from("192.0.2.2")).await.status(), StatusCode::OK);
    }
}
