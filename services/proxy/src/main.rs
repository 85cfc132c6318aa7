//! `portcullis-proxy`: parses flags, binds the listeners and runs the proxy library.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use portcullis_config::{CommonFlags, ProxySettings};
use portcullis_proxy::{ProxyListeners, run};
use portcullis_types::HostPort;

#[derive(Parser)]
#[command(name = "portcullis-proxy", about = "Portcullis proxy: web API, SSH front door, reverse tunnels")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the proxy.
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
    /// HTTPS listen address (proxy_service.web_listen_addr).
    #[arg(long = "web-listen-addr")]
    web_listen_addr: Option<std::net::SocketAddr>,
    /// SSH listen address (proxy_service.listen_addr).
    #[arg(long = "listen-addr")]
    listen_addr: Option<std::net::SocketAddr>,
    /// Reverse-tunnel listen address (proxy_service.tunnel_listen_addr).
    #[arg(long = "tunnel-listen-addr")]
    tunnel_listen_addr: Option<std::net::SocketAddr>,
    /// Public web address, host[:port] (proxy_service.public_addr).
    #[arg(long = "public-addr")]
    public_addr: Option<HostPort>,
    /// Public SSH address, host[:port] (proxy_service.ssh_public_addr).
    #[arg(long = "ssh-public-addr")]
    ssh_public_addr: Option<HostPort>,
    /// Public reverse-tunnel address, host[:port] (proxy_service.tunnel_public_addr).
    #[arg(long = "tunnel-public-addr")]
    tunnel_public_addr: Option<HostPort>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Configure => {
            print!("{}", portcullis_config::sample::sample("proxy"));
            Ok(())
        }
        Command::Version => {
            println!("portcullis-proxy v{}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Start(args) => tokio::runtime::Runtime::new()
            .context("starting the async runtime")
            .and_then(|rt| rt.block_on(start(*args))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Each error's message already includes its cause; `{:#}` joins any added context.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn start(args: StartArgs) -> anyhow::Result<()> {
    use portcullis_config::ports;
    // Its identity's keys live in data_dir: keep whatever it makes private.
    portcullis_pki::datadir::restrict_umask();
    let mut settings = ProxySettings::load(&args.common)?;
    if let Some(a) = args.web_listen_addr {
        settings.web_listen_addr = a;
    }
    if let Some(a) = args.listen_addr {
        settings.ssh_listen_addr = a;
    }
    if let Some(a) = args.tunnel_listen_addr {
        settings.tunnel_listen_addr = a;
    }
    if let Some(a) = args.public_addr {
        settings.public_addr = Some(a.with_default_port(ports::PROXY_WEB).to_string());
    }
    if let Some(a) = args.ssh_public_addr {
        settings.ssh_public_addr = Some(a.with_default_port(ports::PROXY_SSH).to_string());
    }
    if let Some(a) = args.tunnel_public_addr {
        settings.tunnel_public_addr = Some(a.with_default_port(ports::PROXY_TUNNEL).to_string());
    }
    let attrs = portcullis_rpc::join::resource_attributes(&settings.common, "proxy");
    let telemetry = portcullis_telemetry::init_service("portcullis-proxy", &settings.common, attrs);
    portcullis_rpc::install_crypto_provider();

    let web = std::net::TcpListener::bind(settings.web_listen_addr)
        .with_context(|| format!("cannot listen for HTTPS on {}", settings.web_listen_addr))?;
    let ssh = tokio::net::TcpListener::bind(settings.ssh_listen_addr)
        .await
        .with_context(|| format!("cannot listen for SSH on {}", settings.ssh_listen_addr))?;
    let tunnel = tokio::net::TcpListener::bind(settings.tunnel_listen_addr)
        .await
        .with_context(|| format!("cannot listen for reverse tunnels on {}", settings.tunnel_listen_addr))?;
    let diag = portcullis_diag::bind(settings.common.diag_addr).await?;
    let listeners = ProxyListeners { web, ssh, tunnel: Some(tunnel), diag };
    let result = run(settings, listeners, portcullis_telemetry::shutdown_signal()).await;
    telemetry.shutdown_async().await;
    result?;
    Ok(())
}
