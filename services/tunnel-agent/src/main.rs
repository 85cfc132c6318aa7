//! `portcullis-tunnel-agent`: parses flags and runs the leaf-side reverse-tunnel agent.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use portcullis_config::{AgentSettings, CommonFlags};

#[derive(Parser)]
#[command(name = "portcullis-tunnel-agent", about = "Portcullis reverse-tunnel agent (leaf side)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join the leaf cluster and keep tunnels to its trusted root clusters.
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Configure => print!("{}", portcullis_config::sample::sample("agent")),
        Command::Version => println!("portcullis-tunnel-agent v{}", env!("CARGO_PKG_VERSION")),
        Command::Start(args) => {
            // Its identity's keys live in data_dir: keep whatever it makes private.
            portcullis_pki::datadir::restrict_umask();
            // The agent only dials out: its one optional listener is the diagnostic one.
            let settings = AgentSettings::load(&args.common)?;
            let attrs = portcullis_rpc::join::resource_attributes(&settings.common, "agent");
            let telemetry = portcullis_telemetry::init_service("portcullis-tunnel-agent", &settings.common, attrs);
            portcullis_rpc::install_crypto_provider();
            let diag = portcullis_diag::bind(settings.common.diag_addr).await?;
            let result =
                portcullis_tunnel_agent::run_with_diag(settings, diag, portcullis_telemetry::shutdown_signal()).await;
            telemetry.shutdown_async().await;
            result?;
        }
    }
    Ok(())
}
