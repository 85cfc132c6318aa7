//! `tunnel-scale`: many simulated leaf clusters on one root proxy; prints the figures and
//! refreshes its section of docs/benchmarks.md.
// Benchmark code: a panic is how it fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "tunnel-scale", about = "Reverse-tunnel scale benchmark: memory, idle CPU, reconnect time, tsh latency")]
struct Cli {
    #[command(flatten)]
    opts: portcullis_bench::Options,
    /// Markdown file whose tunnel-scale section is refreshed.
    #[arg(long, default_value = "docs/benchmarks.md")]
    doc: PathBuf,
    /// Print the figures only; leave the Markdown file alone.
    #[arg(long)]
    no_doc: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    portcullis_rpc::install_crypto_provider();
    raise_fd_limit(cli.opts.fds_needed());
    let tmp = tempfile::Builder::new().prefix("tunnel-scale-").tempdir().context("creating the working directory")?;
    init_logging(&tmp.path().join("bench.log"))?;
    let work = tmp.path().to_path_buf();
    let result = portcullis_bench::run(&cli.opts, &work);
    if cli.opts.keep {
        let kept = tmp.keep();
        eprintln!("[tunnel-scale] kept the working directory {}", kept.display());
    }
    let report = result?;
    let md = report.markdown();
    println!("{md}");
    if !cli.no_doc {
        report.write_doc(&cli.doc)?;
        eprintln!("[tunnel-scale] wrote the figures to {}", cli.doc.display());
    }
    if let Some(e) = &report.error {
        anyhow::bail!("the benchmark stopped early (partial figures above): {e}");
    }
    Ok(())
}

/// Agent and fake-auth logs go to a file in the working directory (INFO unless RUST_LOG
/// says otherwise): hundreds of agents would drown the terminal.
fn init_logging(path: &std::path::Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,h2=info,hyper=info,tonic=info,rustls=info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(std::sync::Mutex::new(file)).init();
    Ok(())
}

/// Thousands of tunnels need more descriptors than a default soft limit of 1024, here and
/// in the proxy (which inherits the limit): the soft limit goes up to the hard one, and the
/// hard one up to `need` where allowed (as root); a limit still short of `need` is said.
fn raise_fd_limit(need: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if hard < need && setrlimit(Resource::RLIMIT_NOFILE, need, need).is_ok() {
        return;
    }
    if soft < hard {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    if hard < need {
        eprintln!(
            "[tunnel-scale] warning: the descriptor limit is {hard}, about {need} are needed for --leaves {}; \
             agents may fail to connect (raise it with `ulimit -Hn`)",
            (need.saturating_sub(4096)) / 4
        );
    }
}
