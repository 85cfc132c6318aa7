//! A gRPC channel that adds the current span's W3C trace context to every request, so the
//! server's span continues the caller's trace.

use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::transport::Channel;

/// [`Channel`] plus trace-context injection; use it wherever a `Channel` would go.
#[derive(Clone, Debug)]
pub struct TracedChannel(Channel);

impl TracedChannel {
    pub fn new(channel: Channel) -> Self {
        TracedChannel(channel)
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl opentelemetry::propagation::Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value)) {
            self.0.insert(k, v);
        }
    }
}

impl tower::Service<http::Request<Body>> for TracedChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = <Channel as tower::Service<http::Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let cx = tracing::Span::current().context();
        opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(req.headers_mut())));
        tower::Service::call(&mut self.0, req)
    }
}
