//! Scale benchmark of the reverse tunnel: many simulated leaf clusters on one root proxy.
//! See `bench/README.md` and `docs/benchmarks.md` for what is measured and the results.
// Benchmark code: a panic is how it fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

pub mod cluster;
pub mod error;
pub mod fake_auth;
pub mod measure;
pub mod procs;
pub mod report;
pub mod run;
pub mod sim;

use std::path::PathBuf;
use std::time::Duration;

pub use error::BenchError;
pub use report::Report;
pub use run::run;

/// What to run, from the `tunnel-scale` command line.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Leaf clusters connected to the root proxy in total: one real leaf plus N-1 simulated.
    #[arg(long, default_value_t = 500)]
    pub leaves: usize,
    /// Directory holding the built binaries (portcullis-auth, -proxy, -node, -tunnel-agent, tctl, tsh).
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// Simulated agents started together before a pause, so handshakes do not all land at
    /// once (100 every 500 ms: 5,000 leaves are all started within 25 s).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Pause between two batches, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub batch_pause_ms: u64,
    /// `tsh ssh` runs per latency series.
    #[arg(long, default_value_t = 30)]
    pub latency_runs: usize,
    /// Idle time before reading the proxy's memory, in seconds.
    #[arg(long, default_value_t = 10)]
    pub idle_secs: u64,
    /// Window over which the proxy's idle CPU is measured, in seconds.
    #[arg(long, default_value_t = 30)]
    pub cpu_secs: u64,
    /// After the CPU window, keep watching the idle proxy's RSS this long (0: skip), to
    /// see whether memory keeps growing while nothing happens.
    #[arg(long, default_value_t = 120)]
    pub soak_secs: u64,
    /// Time between two RSS samples during the soak, in seconds.
    #[arg(long, default_value_t = 10)]
    pub soak_interval_secs: u64,
    /// Longest wait for all leaves to be online (after the ramp-up and after each restart), in seconds.
    #[arg(long, default_value_t = 300)]
    pub connect_timeout_secs: u64,
    /// Parallel trust requests to the root proxy's web API.
    #[arg(long, default_value_t = 4)]
    pub trust_parallel: usize,
    /// The root auth's `tunnel_offline_after`.
    #[arg(long, default_value = "8s")]
    pub offline_after: String,
    /// Keep everything running this many seconds after the measurements (for poking at it
    /// by hand: the tsh and tctl commands to use are printed).
    #[arg(long, default_value_t = 0)]
    pub hold_secs: u64,
    /// Keep the working directory (configs, data, every log) instead of removing it.
    #[arg(long)]
    pub keep: bool,
    /// Skip the proxy restarts (SIGTERM and SIGKILL) and their reconnect times.
    #[arg(long)]
    pub no_restart: bool,
    /// Soak mode: once every leaf is online, only watch the idle proxy's RSS this long
    /// (`30m`, `1h`...), every `--soak-interval-secs`, and report its least-squares slope in
    /// its own section of the doc (no latency series, no restarts).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub soak: Option<Duration>,
    /// KEY=VALUE set in the root proxy's environment only (repeatable), e.g. to profile its
    /// heap: `--proxy-env LD_PRELOAD=/usr/lib/heaptrack/libheaptrack_preload.so
    /// --proxy-env DUMP_HEAPTRACK_OUTPUT=/tmp/proxy.heaptrack.raw`.
    #[arg(long)]
    pub proxy_env: Vec<String>,
}

impl Options {
    pub fn idle(&self) -> Duration {
        Duration::from_secs(self.idle_secs)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// Descriptors the benchmark process needs: per simulated agent its tunnel, its
    /// connection to the fake auth and the fake auth's end of it, plus room for the rest.
    pub fn fds_needed(&self) -> u64 {
        4 * self.leaves as u64 + 4096
    }
}
