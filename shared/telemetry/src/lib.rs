//! Logs and traces for every Portcullis process: structured logging with `tracing`, and
//! OpenTelemetry spans exported over OTLP/gRPC (Jaeger reads them) with W3C trace context
//! carried across processes.
#![forbid(unsafe_code)]

pub mod logging;
pub mod preamble;
pub mod propagate;
pub mod shutdown;

use std::collections::BTreeMap;
use std::io::IsTerminal;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use logging::init_logging;
pub use shutdown::shutdown_signal;
pub use propagate::{
    HeaderInjector, MetadataInjector, context_from_map, context_from_metadata, current_trace_map, current_traceparent,
    inject_headers, inject_metadata, set_parent_from_map, set_parent_from_metadata,
};

/// The W3C header (and map key) carrying trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Where and how much to export.
#[derive(Debug, Clone)]
pub struct Export {
    /// OTLP/gRPC endpoint, e.g. `http://jaeger:4317` (`grpc://` is accepted too).
    pub endpoint: String,
    /// Fraction of new traces to sample (parent decisions are always followed).
    pub ratio: f64,
}

/// What to set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// `service.name`, e.g. `portcullis-proxy`.
    pub service: String,
    /// A tracing filter for logs, e.g. `info` or `debug`; `RUST_LOG` overrides it.
    pub severity: String,
    pub json: bool,
    /// Logs to stdout instead of stderr.
    pub stdout: bool,
    /// None: nothing is exported.
    pub export: Option<Export>,
    /// Extra resource attributes (cluster name, host id, ...).
    pub attributes: BTreeMap<String, String>,
}

/// Errors setting up the exporter.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter for {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
}

/// Keeps the tracer provider alive; [`Telemetry::shutdown`] flushes buffered spans.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// [`Telemetry::shutdown`] from async code, on the blocking pool.
    pub async fn shutdown_async(self) {
        if self.provider.is_some() {
            let _ = tokio::task::spawn_blocking(move || self.shutdown()).await;
        }
    }

    /// [`Telemetry::shutdown_async`], but gives up after `limit`: a short-lived client must not
    /// hang on an unreachable collector (the exporter retries with backoff for most of a
    /// second). Returns false when the spans may not have left.
    pub async fn shutdown_within(self, limit: std::time::Duration) -> bool {
        if self.provider.is_none() {
            return true;
        }
        tokio::time::timeout(limit, tokio::task::spawn_blocking(move || self.shutdown())).await.is_ok()
    }

    /// Flushes and stops the exporter. Blocking: call it last, off the async threads.
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            if let Err(e) = p.force_flush() {
                eprintln!("flushing traces failed: {e}");
            }
            let _ = p.shutdown();
        }
    }
}

/// The export settings the standard `OTEL_*` environment asks for, if any:
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`, unless
/// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
pub fn export_from_env() -> Option<Export> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return None;
    }
    let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))?;
    let ratio = var("OTEL_TRACES_SAMPLER_ARG").and_then(|v| v.parse::<f64>().ok()).unwrap_or(1.0);
    Some(Export { endpoint, ratio })
}

/// Telemetry for a service from its settings: `tracing_service` in the config file, or
/// the standard `OTEL_*` environment when the file does not enable it.
pub fn init_service(service: &str, common: &portcullis_config::Common, mut attributes: BTreeMap<String, String>) -> Telemetry {
    let t = &common.tracing;
    let export = match (&t.exporter_url, t.enabled) {
        (Some(url), true) => {
            Some(Export { endpoint: url.clone(), ratio: f64::from(t.sampling_rate_per_million) / 1_000_000.0 })
        }
        _ => export_from_env(),
    };
    attributes.entry("host.name".into()).or_insert_with(|| common.nodename.clone());
    init(Options {
        service: service.to_string(),
        severity: common.log.severity.clone(),
        json: common.log.json,
        stdout: common.log.output == "stdout",
        export,
        attributes,
    })
}

/// `grpc://host:port` (teleport.yaml's spelling) becomes `http://host:port`.
fn normalize_endpoint(url: &str) -> String {
    match url.strip_prefix("grpc://") {
        Some(rest) => format!("http://{rest}"),
        None if !url.contains("://") => format!("http://{url}"),
        None => url.to_string(),
    }
}

fn provider(opts: &Options, export: &Export) -> Result<SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig;
    let endpoint = normalize_endpoint(&export.endpoint);
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|e| TelemetryError::Exporter { endpoint, reason: e.to_string() })?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| opts.service.clone());
    let attrs: Vec<KeyValue> =
        opts.attributes.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect();
    let resource = Resource::builder().with_service_name(service).with_attributes(attrs).build();
    let ratio = export.ratio.clamp(0.0, 1.0);
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
        .with_resource(resource)
        .build())
}

/// Installs logging and, when `opts.export` is set, span export. Call once, inside the
/// tokio runtime (the OTLP client needs it). Safe to call again (tests): later calls keep
/// the first subscriber.
pub fn init(opts: Options) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    // Dependencies are loud at debug; keep them at info unless RUST_LOG says otherwise.
    let directive = format!(
        "{sev},h2=info,hyper=info,hyper_util=info,tower=info,sled=info,russh=info,rustls=info,tonic=info,actix=info,opentelemetry=warn,opentelemetry_sdk=warn",
        sev = opts.severity
    );
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(directive));
    // Colour only on a terminal (log files and `docker logs` get plain text), and never
    // with NO_COLOR set (https://no-color.org).
    let terminal = if opts.stdout { std::io::stdout().is_terminal() } else { std::io::stderr().is_terminal() };
    let colour = terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let fmt = tracing_subscriber::fmt::layer().with_target(true).with_ansi(colour);
    let fmt: Box<dyn Layer<_> + Send + Sync> = match (opts.json, opts.stdout) {
        (true, true) => fmt.json().with_writer(std::io::stdout).boxed(),
        (true, false) => fmt.json().with_writer(std::io::stderr).boxed(),
        (false, true) => fmt.with_writer(std::io::stdout).boxed(),
        (false, false) => fmt.with_writer(std::io::stderr).boxed(),
    };
    let mut failed = None;
    let provider = match &opts.export {
        Some(export) => match provider(&opts, export) {
            Ok(p) => Some(p),
            Err(e) => {
                failed = Some(e);
                None
            }
        },
        None => None,
    };
    // Spans are exported from our own crates at info and above, whatever the log level.
    let otel = provider.as_ref().map(|p| {
        let tracer = p.tracer("portcullis");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(tracing_subscriber::filter::Targets::new().with_target("portcullis", tracing::Level::INFO).with_target("tsh", tracing::Level::INFO))
    });
    let result = tracing_subscriber::registry().with(otel).with(fmt.with_filter(filter)).try_init();
    if result.is_ok() {
        if let Some(e) = failed {
            tracing::warn!("traces will not be exported: {e}");
        } else if let Some(export) = &opts.export {
            tracing::info!(endpoint = %export.endpoint, ratio = export.ratio, "exporting traces over OTLP");
        }
    }
    Telemetry { provider }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalized() {
        assert_eq!(normalize_endpoint("grpc://jaeger:4317"), "http://jaeger:4317");
        assert_eq!(normalize_endpoint("jaeger:4317"), "http://jaeger:4317");
        assert_eq!(normalize_endpoint("https://x:4317"), "https://x:4317");
    }
}
