//! The metrics registry a service fills with its own families, and its text encoding.

use std::sync::{Mutex, MutexGuard, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Metric, Registry, Unit};

/// Content type of `/metrics`: OpenMetrics text, which Prometheus asks for and accepts.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A service's metrics. Registration takes a lock (it happens at start-up); recording goes
/// straight to the metric families, which are atomics behind `Arc`s.
#[derive(Debug, Default)]
pub struct Metrics {
    registry: Mutex<Registry>,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `metric` (a clone of a counter, gauge, histogram or family: they share
    /// their values). Counters get `_total` appended by the encoder, so `name` must not
    /// end with it.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry().register(name, help, metric);
    }

    /// Like [`Metrics::register`]; the unit is appended to the name (`_seconds`).
    pub fn register_with_unit(&self, name: &str, help: &str, unit: Unit, metric: impl Metric) {
        self.registry().register_with_unit(name, help, unit, metric);
    }

    /// A gauge whose value `value` computes at each scrape (ages, sizes of shared state).
    /// `value` runs on a blocking thread and may take short locks.
    pub fn register_gauge_fn(
        &self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        value: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        let collector = GaugeFn { name: name.to_string(), help: format!("{help}."), unit, value: Box::new(value) };
        self.registry().register_collector(Box::new(collector));
    }

    /// Anything else prometheus-client can collect.
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry().register_collector(collector);
    }

    /// The OpenMetrics text of every registered metric, ending with `# EOF`.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry())?;
        Ok(out)
    }
}

/// A gauge computed on scrape.
struct GaugeFn {
    name: String,
    help: String,
    unit: Option<Unit>,
    value: Box<dyn Fn() -> f64 + Send + Sync>,
}

impl std::fmt::Debug for GaugeFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GaugeFn").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Collector for GaugeFn {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new((self.value)());
        let metric = encoder.encode_descriptor(&self.name, &self.help, self.unit.as_ref(), gauge.metric_type())?;
        gauge.encode(metric)
    }
}
