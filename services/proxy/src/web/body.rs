//! JSON request bodies: at most [`JSON_LIMIT`] bytes, read within a deadline, decoded with
//! errors that say what is wrong with the body.

use std::time::Duration;

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use super::ApiError;

/// Largest JSON body accepted; requests are small, so anything bigger is a mistake or abuse.
pub const JSON_LIMIT: usize = 64 * 1024;
/// How long a client may take to send a body once its headers are in (a body of at most
/// 64 KiB; a slow sender must not hold a connection and a handler open).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A request body decoded from JSON.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let bytes = read_limited(req).await?;
        serde_json::from_slice(&bytes)
            .map(Json)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON request body: {e}")))
    }
}

/// The body's bytes, after the content type and length checks.
async fn read_limited(req: Request) -> Result<axum::body::Bytes, ApiError> {
    if !json_or_unnamed(req.headers()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the request body must be JSON (Content-Type: application/json)",
        ));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(length) = declared.filter(|&l| l > JSON_LIMIT as u64) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body ({length} bytes) is larger than the limit of {JSON_LIMIT} bytes"),
        ));
    }
    let read = Limited::new(req.into_body(), JSON_LIMIT).collect();
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than the limit of {JSON_LIMIT} bytes"),
        )),
        Ok(Err(e)) => Err(ApiError::bad_request(format!("cannot read the request body: {e}"))),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {}s", BODY_TIMEOUT.as_secs()),
        )),
    }
}

/// Whether the body may be read as JSON: a JSON media type (`application/json`,
/// `application/x+json`), or none at all, since curl users forget the header. A header that
/// cannot be read as a media type counts as none.
fn json_or_unnamed(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let Some((kind, sub)) = essence.split_once('/') else {
        return true;
    };
    if kind.is_empty() || sub.is_empty() {
        return true;
    }
    sub == "json" || sub.rsplit_once('+').is_some_and(|(_, suffix)| suffix == "json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn json_content_types() {
        let with = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            json_or_unnamed(&h)
        };
        assert!(json_or_unnamed(&HeaderMap::new()));
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/problem+json"));
        assert!(with("garbage"));
        assert!(!with("text/plain"));
        assert!(!with("application/x-www-form-urlencoded"));
    }
}
