//! `concurrent-echo`: opens many sessions at once (each a `tsh ssh ... cat` or any command
//! that echoes its input), waits until every one echoes, then times small echoes through all
//! of them at the same time. Prints one JSON object: set-up and round-trip percentiles, errors.
// Benchmark code: a panic is how it fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Barrier;

#[derive(Debug, Parser)]
#[command(
    name = "concurrent-echo",
    about = "Round trips of a small echo through many concurrent sessions",
    after_help = "Example: concurrent-echo --sessions 200 -- tsh ssh --cluster=leaf visitor@node cat"
)]
struct Cli {
    /// Sessions open at the same time.
    #[arg(long, default_value_t = 200)]
    sessions: usize,
    /// Echo rounds per session once all are open (every session sends at once each round).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Longest wait for a session to open or for one echo.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// Seconds to keep every session open after the rounds (the caller reads memory then).
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
    /// The session command; it must copy its standard input to its standard output.
    #[arg(required = true, last = true)]
    command: Vec<String>,
}

/// What one session saw.
#[derive(Debug, Default)]
struct Outcome {
    /// Spawn to first echo.
    setup: Option<Duration>,
    rtts: Vec<Duration>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Summary {
    sessions: usize,
    rounds: usize,
    opened: usize,
    errors: usize,
    setup_p50_ms: f64,
    setup_p99_ms: f64,
    rtt_samples: usize,
    rtt_p50_ms: f64,
    rtt_p99_ms: f64,
    rtt_max_ms: f64,
    /// The most frequent error texts, with their counts.
    error_samples: Vec<(usize, String)>,
}

struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Session {
    fn spawn(command: &[String]) -> anyhow::Result<Session> {
        let (program, args) = command.split_first().context("an empty command")?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {program}"))?;
        let stdin = child.stdin.take().context("no stdin pipe")?;
        let stdout = BufReader::new(child.stdout.take().context("no stdout pipe")?);
        Ok(Session { child, stdin, stdout })
    }

    /// Sends one line and waits for it to come back.
    async fn echo(&mut self, line: &str, limit: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        let round = async {
            self.stdin.write_all(line.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
            self.stdin.flush().await.map_err(|e| format!("write: {e}"))?;
            let mut got = String::new();
            let n = self.stdout.read_line(&mut got).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("the session ended".to_string());
            }
            if got != line {
                return Err(format!("echoed {got:?} for {line:?}"));
            }
            Ok(())
        };
        match tokio::time::timeout(limit, round).await {
            Ok(Ok(())) => Ok(started.elapsed()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no echo within {}s", limit.as_secs())),
        }
    }

    /// The session's standard error, for the error report (it has ended or is killed).
    async fn stderr(mut self) -> String {
        let _ = self.child.start_kill();
        let out = self.child.wait_with_output().await.map(|o| o.stderr).unwrap_or_default();
        String::from_utf8_lossy(&out).lines().last().unwrap_or("").trim().to_string()
    }
}

/// One session: open, wait for everyone, echo `rounds` times in step with the others.
async fn run_one(i: usize, cli: &Cli, opened: &Barrier, step: &Barrier) -> Outcome {
    let limit = Duration::from_secs(cli.timeout_secs);
    let mut out = Outcome::default();
    let spawned = Instant::now();
    let mut session = match Session::spawn(&cli.command) {
        Ok(s) => Some(s),
        Err(e) => {
            out.error = Some(format!("{e:#}"));
            None
        }
    };
    if let Some(s) = session.as_mut() {
        match s.echo(&format!("hello {i}\n"), limit).await {
            Ok(_) => out.setup = Some(spawned.elapsed()),
            Err(e) => out.error = Some(e),
        }
    }
    // Everyone waits here, failed sessions too, so the barrier counts stay right.
    opened.wait().await;
    for k in 0..cli.rounds {
        step.wait().await;
        if out.error.is_some() {
            continue;
        }
        if let Some(s) = session.as_mut() {
            match s.echo(&format!("ping {i} {k}\n"), limit).await {
                Ok(rtt) => out.rtts.push(rtt),
                Err(e) => out.error = Some(e),
            }
        }
    }
    opened.wait().await;
    tokio::time::sleep(Duration::from_secs(cli.hold_secs)).await;
    if let Some(s) = session {
        if let Some(e) = &out.error {
            let said = s.stderr().await;
            out.error = Some(if said.is_empty() { e.clone() } else { format!("{e}: {said}") });
        }
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = std::sync::Arc::new(Cli::parse());
    anyhow::ensure!(cli.sessions > 0, "--sessions must be at least 1");
    let opened = std::sync::Arc::new(Barrier::new(cli.sessions + 1));
    let step = std::sync::Arc::new(Barrier::new(cli.sessions + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..cli.sessions {
        let (cli, opened, step) = (cli.clone(), opened.clone(), step.clone());
        tasks.spawn(async move { run_one(i, &cli, &opened, &step).await });
    }
    opened.wait().await;
    eprintln!("[concurrent-echo] sessions opened; {} echo rounds through all of them at once", cli.rounds);
    for _ in 0..cli.rounds {
        step.wait().await;
    }
    opened.wait().await;
    let mut outcomes = Vec::new();
    while let Some(o) = tasks.join_next().await {
        outcomes.push(o.context("a session task panicked")?);
    }

    let mut setups: Vec<Duration> = outcomes.iter().filter_map(|o| o.setup).collect();
    let mut rtts: Vec<Duration> = outcomes.iter().flat_map(|o| o.rtts.iter().copied()).collect();
    setups.sort();
    rtts.sort();
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for e in outcomes.iter().filter_map(|o| o.error.clone()) {
        *counts.entry(e).or_default() += 1;
    }
    let mut error_samples: Vec<(usize, String)> = counts.into_iter().map(|(e, n)| (n, e)).collect();
    error_samples.sort_by(|a, b| b.0.cmp(&a.0));
    error_samples.truncate(3);
    let summary = Summary {
        sessions: cli.sessions,
        rounds: cli.rounds,
        opened: setups.len(),
        errors: outcomes.iter().filter(|o| o.error.is_some()).count(),
        setup_p50_ms: percentile(&setups, 0.5),
        setup_p99_ms: percentile(&setups, 0.99),
        rtt_samples: rtts.len(),
        rtt_p50_ms: percentile(&rtts, 0.5),
        rtt_p99_ms: percentile(&rtts, 0.99),
        rtt_max_ms: rtts.last().map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0),
        error_samples,
    };
    println!("{}", serde_json::to_string(&summary).context("encoding the summary")?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 0.5), 50.0);
        assert_eq!(percentile(&d, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&d[..1], 0.99), 1.0);
    }
}
