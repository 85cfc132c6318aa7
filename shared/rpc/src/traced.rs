//! A gRPC channel that adds the current span's W3C trace context to every request, so the
//! server's span continues the caller's trace.

use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::transport::Channel;

use crate::failover::{CallFuture, Failover};

/// [`Channel`] plus trace-context injection; use it wherever a `Channel` would go. It talks
/// either to one address (tonic's channel) or to any of several auth servers ([`Failover`]).
#[derive(Clone, Debug)]
pub struct TracedChannel(Inner);

#[derive(Clone, Debug)]
enum Inner {
    One(Channel),
    Many(Failover),
}

impl TracedChannel {
    pub fn new(channel: Channel) -> Self {
        TracedChannel(Inner::One(channel))
    }

    /// A channel over several auth servers that fails over between them.
    pub fn failover(f: Failover) -> Self {
        TracedChannel(Inner::Many(f))
    }
}

impl tower::Service<http::Request<Body>> for TracedChannel {
    type Response = http::Response<Body>;
    /// A `tonic::Status` when every auth server failed (tonic hands it to the caller as is).
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = CallFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match &mut self.0 {
            Inner::One(c) => tower::Service::poll_ready(c, cx).map_err(Into::into),
            // Each call picks its server itself.
            Inner::Many(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        portcullis_telemetry::inject_headers(req.headers_mut());
        match &mut self.0 {
            Inner::One(c) => {
                let fut = tower::Service::call(c, req);
                Box::pin(async move { fut.await.map_err(Into::into) })
            }
            Inner::Many(f) => f.call(req),
        }
    }
}
