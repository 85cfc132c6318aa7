//! `portcullis-node`: parses flags, binds the SSH listener and runs the node library.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use portcullis_config::{CommonFlags, NodeSettings};
use portcullis_types::HostPort;

#[derive(Parser)]
#[command(name = "portcullis-node", about = "Portcullis node: the SSH server of one host")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the node's SSH service.
    Start(Box<StartArgs>),
    /// Print a commented sample configuration.
    Configure,
    /// Print the version.
    Version,
}

#[derive(clap::Args)]
struct StartArgs {
    #[command(flatten)]
    common: CommonFlags,
    /// SSH listen address (ssh_service.listen_addr).
    #[arg(long = "listen-addr")]
    listen_addr: Option<std::net::SocketAddr>,
    /// Address clients and proxies dial, host[:port] (ssh_service.public_addr).
    #[arg(long = "public-addr")]
    public_addr: Option<HostPort>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Configure => print!("{}", portcullis_config::sample::sample("node")),
        Command::Version => println!("portcullis-node v{}", env!("CARGO_PKG_VERSION")),
        Command::Start(args) => start(*args).await?,
    }
    Ok(())
}

async fn start(args: StartArgs) -> anyhow::Result<()> {
    use portcullis_config::ports;
    let mut settings = NodeSettings::load(&args.common)?;
    if let Some(a) = args.listen_addr {
        settings.listen_addr = a;
    }
    if let Some(a) = args.public_addr {
        settings.public_addr = Some(a.with_default_port(ports::NODE_SSH).to_string());
    }
    let attrs = portcullis_rpc::join::resource_attributes(&settings.common, "node");
    let telemetry = portcullis_telemetry::init_service("portcullis-node", &settings.common, attrs);
    portcullis_rpc::install_crypto_provider();
    let listener = tokio::net::TcpListener::bind(settings.listen_addr)
        .await
        .with_context(|| format!("cannot listen for SSH on {}", settings.listen_addr))?;
    let diag = portcullis_diag::bind(settings.common.diag_addr).await?;
    let result = portcullis_node::run_with_diag(settings, listener, diag, portcullis_telemetry::shutdown_signal()).await;
    telemetry.shutdown_async().await;
    result?;
    Ok(())
}
