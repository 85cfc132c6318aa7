//! Logs alone, without exporting spans: for one-shot tools (tctl) that log to stderr.

use portcullis_config::LogSettings;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` overrides the configured severity.
pub fn init_logging(log: &LogSettings) {
    // Dependencies are loud at debug; keep them at info unless asked otherwise.
    let directive = format!(
        "{sev},h2=info,hyper=info,hyper_util=info,tower=info,sled=info,russh=info,rustls=info,tonic=info,actix=info",
        sev = log.severity
    );
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(directive));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(true);
    let result = match (log.json, log.output.as_str()) {
        (true, "stdout") => builder.json().with_writer(std::io::stdout).try_init(),
        (true, _) => builder.json().with_writer(std::io::stderr).try_init(),
        (false, "stdout") => builder.with_writer(std::io::stdout).try_init(),
        (false, _) => builder.with_writer(std::io::stderr).try_init(),
    };
    // A second init (tests running several services in one process) is not an error.
    let _ = result;
}
