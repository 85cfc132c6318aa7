//! W3C trace context across process boundaries: gRPC metadata, string maps (the tunnel's
//! `DialRequest.trace`, SSH `env` requests, the node connection preamble).

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct MapInjector<'a>(&'a mut HashMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

struct MapExtractor<'a>(&'a HashMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Writes trace context into gRPC metadata.
pub struct MetadataInjector<'a>(pub &'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// Writes trace context into HTTP headers (a gRPC request before tonic encodes it).
pub struct HeaderInjector<'a>(pub &'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value)) {
            self.0.insert(k, v);
        }
    }
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// The current span's context as a map (`traceparent`, maybe `tracestate`); empty when no
/// span is being exported.
pub fn current_trace_map() -> HashMap<String, String> {
    let cx = tracing::Span::current().context();
    let mut map = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut MapInjector(&mut map)));
    map
}

/// The current span's `traceparent`, if any.
pub fn current_traceparent() -> Option<String> {
    current_trace_map().remove(crate::TRACEPARENT)
}

/// Adds the current span's context to outgoing gRPC metadata.
pub fn inject_metadata(md: &mut tonic::metadata::MetadataMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut MetadataInjector(md)));
}

/// Adds the current span's context to outgoing HTTP headers.
pub fn inject_headers(headers: &mut http::HeaderMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(headers)));
}

/// A context from a map.
pub fn context_from_map(map: &HashMap<String, String>) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&MapExtractor(map)))
}

/// A context from incoming gRPC metadata.
pub fn context_from_metadata(md: &tonic::metadata::MetadataMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&MetadataExtractor(md)))
}

/// Makes `span` a child of the remote span described by `map` (no-op when it is empty).
pub fn set_parent_from_map(span: &tracing::Span, map: &HashMap<String, String>) {
    if !map.is_empty() {
        let _ = span.set_parent(context_from_map(map));
    }
}

/// Makes `span` a child of the remote span in gRPC metadata (no-op without one).
pub fn set_parent_from_metadata(span: &tracing::Span, md: &tonic::metadata::MetadataMap) {
    if md.contains_key(crate::TRACEPARENT) {
        let _ = span.set_parent(context_from_metadata(md));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_injector_writes_valid_headers_and_skips_invalid_ones() {
        let mut headers = http::HeaderMap::new();
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        HeaderInjector(&mut headers).set(crate::TRACEPARENT, tp.to_string());
        HeaderInjector(&mut headers).set("bad key", "x".into());
        HeaderInjector(&mut headers).set("tracestate", "bad\nvalue".into());
        assert_eq!(headers.len(), 1);
        assert_eq!(headers.get(crate::TRACEPARENT).and_then(|v| v.to_str().ok()), Some(tp));
    }

    #[test]
    fn nothing_is_injected_outside_an_exported_span() {
        let mut headers = http::HeaderMap::new();
        inject_headers(&mut headers);
        assert!(headers.get(crate::TRACEPARENT).is_none());
    }
}
