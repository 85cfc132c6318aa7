//! `portcullis-auth`: the cluster's auth service.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use portcullis_config::{AuthSettings, CommonFlags};

#[derive(Parser)]
#[command(name = "portcullis-auth", about = "Portcullis auth service: the cluster CA and state")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the auth service.
    Start(Box<CommonFlags>),
    /// Print a commented sample configuration.
    Configure,
    /// Print the version.
    Version,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Configure => print!("{}", portcullis_config::sample::sample("auth")),
        Command::Version => println!("portcullis-auth v{}", env!("CARGO_PKG_VERSION")),
        Command::Start(flags) => {
            // CA keys and password hashes live in data_dir: keep whatever it makes private.
            portcullis_pki::datadir::restrict_umask();
            let settings = AuthSettings::load(&flags)?;
            let attrs = [("portcullis.cluster".to_string(), settings.cluster_name.clone())].into();
            let telemetry = portcullis_telemetry::init_service("portcullis-auth", &settings.common, attrs);
            portcullis_rpc::install_crypto_provider();
            let listener = tokio::net::TcpListener::bind(settings.listen_addr)
                .await
                .with_context(|| format!("cannot listen on {}", settings.listen_addr))?;
            let diag = portcullis_diag::bind(settings.common.diag_addr).await?;
            let result =
                portcullis_auth::run_with_diag(settings, listener, diag, portcullis_telemetry::shutdown_signal()).await;
            telemetry.shutdown_async().await;
            result?;
        }
    }
    Ok(())
}
