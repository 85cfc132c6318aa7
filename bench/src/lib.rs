//! Scale benchmark of the reverse tunnel: many simulated leaf clusters on one root proxy.
//! See `bench/README.md` and `docs/benchmarks.md` for what is measured and the results.
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
    /// Simulated agents started together before a pause, so handshakes do not all land at once.
    #[arg(long, default_value_t = 50)]
    pub batch: usize,
    /// Pause between two batches, in milliseconds.
    #[arg(long, default_value_t = 1000)]
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
}

impl Options {
    pub fn idle(&self) -> Duration {
        Duration::from_secs(self.idle_secs)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }
}
