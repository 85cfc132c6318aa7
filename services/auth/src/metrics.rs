//! The auth service's metrics. Requests are counted in one place: [`Counted`] wraps the
//! tonic service and reads each answer's gRPC status, so handlers need no hooks. The one
//! exception is a refused SSH login, which `AuthorizeSsh` answers successfully with
//! `allowed: false`; the handler marks that answer with [`Refused`] so it counts as denied.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use portcullis_diag::{Counter, Family, Metrics};
use tonic::Code;
use tonic::server::NamedService;

use crate::state::AuthState;

/// Labels of `portcullis_auth_requests_total`: `rpc` (method name), `outcome`.
type RequestLabels = [(&'static str, String); 2];

/// Longest method name counted as such; anything else is `unknown` (label values come from
/// the request path, which callers choose).
const MAX_RPC_NAME: usize = 64;

/// Marks an answer that carries a refusal in its body (`AuthorizeSsh` with
/// `allowed: false`): it counts as `denied` although the call succeeded.
#[derive(Debug, Clone, Copy)]
pub struct Refused;

/// The families the auth service records into; registered with the diagnostic listener by
/// [`AuthMetrics::register`].
#[derive(Debug, Clone, Default)]
pub struct AuthMetrics {
    requests: Family<RequestLabels, Counter>,
}

impl AuthMetrics {
    /// Adds the families, and gauges computed from `state` on scrape, to `metrics`.
    pub fn register(&self, metrics: &Metrics, state: &Arc<AuthState>) {
        metrics.register(
            "portcullis_auth_requests",
            "gRPC requests to the auth service by method and outcome (ok, denied, unauthenticated, invalid, not_found, throttled, error)",
            self.requests.clone(),
        );
        // Weak: the registry must not keep the state (and its sled database) alive.
        let weak: Weak<AuthState> = Arc::downgrade(state);
        metrics.register_gauge_fn("portcullis_auth_nodes", "Nodes with an unexpired heartbeat", None, move || {
            weak.upgrade().and_then(|s| s.list_nodes().ok()).map_or(0.0, |n| n.len() as f64)
        });
        let weak: Weak<AuthState> = Arc::downgrade(state);
        metrics.register_gauge_fn(
            "portcullis_auth_remote_clusters_online",
            "Leaf clusters with a live reverse tunnel to some root proxy",
            None,
            move || {
                let online = |s: Arc<AuthState>| {
                    s.list_remote_clusters().ok().map(|l| l.iter().filter(|rc| rc.is_online()).count())
                };
                weak.upgrade().and_then(online).map_or(0.0, |n| n as f64)
            },
        );
        let weak: Weak<AuthState> = Arc::downgrade(state);
        metrics.register_gauge_fn(
            "portcullis_auth_locked_users",
            "Users locked now after repeated failed logins (auth_service.lockout)",
            None,
            move || weak.upgrade().and_then(|s| s.list_user_locks().ok()).map_or(0.0, |l| l.len() as f64),
        );
    }

    fn record(&self, rpc: String, outcome: &'static str) {
        self.requests.get_or_create(&[("rpc", rpc), ("outcome", outcome.to_string())]).inc();
    }
}

/// `outcome` label of a gRPC status code.
pub fn outcome(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::PermissionDenied => "denied",
        Code::Unauthenticated => "unauthenticated",
        Code::InvalidArgument
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unimplemented => "invalid",
        Code::NotFound => "not_found",
        // Refused by a rate limit or a full password-hashing queue: an attack shows here.
        Code::ResourceExhausted => "throttled",
        _ => "error",
    }
}

/// The method name of a gRPC path (`/portcullis.auth.v1.Auth/Heartbeat` -> `Heartbeat`).
fn rpc_name(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or("");
    let plausible =
        !name.is_empty() && name.len() <= MAX_RPC_NAME && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plausible { name.to_string() } else { "unknown".to_string() }
}

/// The outcome of an answer: [`Refused`], else the `grpc-status` header (tonic puts an
/// error's status in the headers; a success has it in the trailers, so none means ok).
fn answer_outcome<B>(resp: &http::Response<B>) -> (&'static str, Code) {
    if resp.extensions().get::<Refused>().is_some() {
        return ("denied", Code::Ok);
    }
    let code = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32);
    (outcome(code), code)
}

/// The tonic service, counting every answer in `portcullis_auth_requests_total`.
#[derive(Debug, Clone)]
pub struct Counted<S> {
    inner: S,
    metrics: AuthMetrics,
}

impl<S> Counted<S> {
    pub fn new(inner: S, metrics: AuthMetrics) -> Self {
        Counted { inner, metrics }
    }
}

impl<S: NamedService> NamedService for Counted<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, RB> tower::Service<http::Request<B>> for Counted<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        use tracing::Instrument;
        let rpc = rpc_name(req.uri().path());
        // One span per call, continuing the caller's trace (W3C context in the metadata).
        let span = tracing::info_span!(
            "auth.rpc",
            otel.name = %format!("auth.{rpc}"),
            rpc = %rpc,
            outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        let md = tonic::metadata::MetadataMap::from_headers(req.headers().clone());
        portcullis_telemetry::set_parent_from_metadata(&span, &md);
        let answer = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        let metrics = self.metrics.clone();
        let record_span = span.clone();
        Box::pin(
            async move {
                let resp = answer.await?;
                let (outcome, code) = answer_outcome(&resp);
                record_span.record("outcome", outcome);
                if outcome != "ok" {
                    record_span.record("otel.status_code", "error");
                    let msg = resp
                        .headers()
                        .get("grpc-message")
                        .and_then(|v| v.to_str().ok())
                        .map(|m| percent_decode(m))
                        .unwrap_or_else(|| outcome.to_string());
                    record_span.record("otel.status_description", msg.as_str());
                }
                // tonic answers unknown methods itself: one label value for all of them.
                let rpc = if code == Code::Unimplemented { "unknown".to_string() } else { rpc };
                metrics.record(rpc, outcome);
                Ok(resp)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_codes_become_bounded_labels() {
        assert_eq!(rpc_name("/portcullis.auth.v1.Auth/Heartbeat"), "Heartbeat");
        assert_eq!(rpc_name("/portcullis.auth.v1.Auth/"), "unknown");
        assert_eq!(rpc_name(&format!("/x/{}", "a".repeat(65))), "unknown");
        assert_eq!(rpc_name("/x/a-b"), "unknown");
        assert_eq!(outcome(Code::PermissionDenied), "denied");
        assert_eq!(outcome(Code::Unavailable), "error");
        let mut resp = http::Response::new(());
        assert_eq!(answer_outcome(&resp).0, "ok");
        resp.headers_mut().insert("grpc-status", http::HeaderValue::from_static("16"));
        assert_eq!(answer_outcome(&resp).0, "unauthenticated");
        resp.extensions_mut().insert(Refused);
        assert_eq!(answer_outcome(&resp).0, "denied");
    }
}

/// gRPC percent-encodes `grpc-message`; undo it for span messages.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
