//! `portcullis-tunnel-agent`: dials out from a leaf cluster to the root's proxies.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "portcullis-tunnel-agent", about = "Portcullis reverse-tunnel agent (leaf side)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a commented sample configuration.
    Configure,
    /// Print the version.
    Version,
}

fn main() {
    match Cli::parse().command {
        Command::Configure => print!("{}", portcullis_config::sample::sample("agent")),
        Command::Version => println!("portcullis-tunnel-agent v{}", env!("CARGO_PKG_VERSION")),
    }
}
