//! Command-line flags every service's `start` accepts; they override the file.

use std::path::PathBuf;

/// `start` flags shared by all services.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonFlags {
    /// Path to the YAML configuration file.
    #[arg(short = 'c', long = "config")]
    pub config: Option<PathBuf>,
    /// Log at DEBUG severity.
    #[arg(short = 'd', long)]
    pub debug: bool,
    /// Join token, or a path to a file holding it.
    #[arg(long)]
    pub token: Option<String>,
    /// Address of an auth server, host:port; repeat it or separate several with commas
    /// (any of them answers; clients fail over between them). Replaces the file's list.
    #[arg(long = "auth-server", value_delimiter = ',')]
    pub auth_server: Vec<String>,
    /// Where the service keeps its state.
    #[arg(long = "data-dir")]
    pub data_dir: Option<PathBuf>,
    /// Labels, k=v,k2=v2.
    #[arg(long)]
    pub labels: Option<String>,
    /// Name of this host in the cluster.
    #[arg(long)]
    pub nodename: Option<String>,
    /// Skip verification of the auth service on first join when no CA pin is given.
    #[arg(long)]
    pub insecure: bool,
    /// Pin of the cluster CA for the first join (sha256:...).
    #[arg(long = "ca-pin")]
    pub ca_pin: Option<String>,
    /// Address of the diagnostic listener (/metrics, /healthz, /readyz), host:port
    /// (diag_service.listen_addr); none runs when neither is set.
    #[arg(long = "diag-addr")]
    pub diag_addr: Option<std::net::SocketAddr>,
}
