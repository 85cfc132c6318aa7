//! The `tctl` binary: parses the command line and runs it; failures print `ERROR: ...`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = tctl::Cli::parse();
    tctl::init_logging(cli.global.debug);
    match tctl::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ERROR: {e}");
            ExitCode::FAILURE
        }
    }
}
