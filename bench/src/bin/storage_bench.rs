//! `storage-bench`: writes per second of each storage backend (memory, sled, PostgreSQL),
//! with one writer and with several at once, as a table (or JSON with `--json`).
// Benchmark code: a panic is how it fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use portcullis_storage::{Backend, MemoryBackend, PostgresBackend, SledBackend};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    name = "storage-bench",
    about = "Writes per second of the memory, sled and PostgreSQL storage backends",
    after_help = "PostgreSQL: --postgres CONN_STRING, or env PORTCULLIS_BENCH_PG, or else a throwaway \
                  server started with scripts/pg.sh (needs Debian's postgresql package)."
)]
struct Cli {
    /// Writes per run (split between the writers).
    #[arg(long, default_value_t = 5000)]
    writes: usize,
    /// Concurrent writers of the second run of each backend.
    #[arg(long, default_value_t = 8)]
    threads: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// A PostgreSQL connection string (its password is never printed).
    #[arg(long, env = "PORTCULLIS_BENCH_PG", hide_env_values = true)]
    postgres: Option<String>,
    /// Skip PostgreSQL.
    #[arg(long)]
    no_postgres: bool,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    backend: String,
    op: &'static str,
    writers: usize,
    writes: usize,
    seconds: f64,
    writes_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `writes` puts (or CAS increments, `cas`) split over `writers` threads, each timed.
fn run(b: &Arc<dyn Backend>, name: &str, op: &'static str, writers: usize, writes: usize, value: &[u8]) -> anyhow::Result<Row> {
    let per = writes.div_ceil(writers);
    let start = Instant::now();
    let mut lat: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|t| {
                let b = b.clone();
                s.spawn(move || -> anyhow::Result<Vec<Duration>> {
                    let mut lat = Vec::with_capacity(per);
                    for i in 0..per {
                        let t0 = Instant::now();
                        match op {
                            "put" => b.put(&format!("bench/{name}/{t}/{i}"), value)?,
                            _ => loop {
                                let cur = b.get("bench/counter")?;
                                let n: u64 = cur.as_deref().and_then(|v| std::str::from_utf8(v).ok()?.parse().ok()).unwrap_or(0);
                                if b.compare_and_swap("bench/counter", cur.as_deref(), (n + 1).to_string().as_bytes())? {
                                    break;
                                }
                            },
                        }
                        lat.push(t0.elapsed());
                    }
                    Ok(lat)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().map_err(|_| anyhow::anyhow!("a writer panicked"))??);
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    let seconds = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).map_or(0.0, |d| d.as_secs_f64() * 1e3);
    Ok(Row {
        backend: name.to_string(),
        op,
        writers,
        writes: lat.len(),
        seconds,
        writes_per_sec: lat.len() as f64 / seconds,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}

/// A throwaway server through scripts/pg.sh; stopped on drop.
struct PgScript {
    dir: tempfile::TempDir,
    script: PathBuf,
}

impl PgScript {
    fn start() -> anyhow::Result<(PgScript, String)> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg.sh");
        let dir = tempfile::Builder::new().prefix("storage-bench-").tempdir_in("/tmp")?;
        // The postgres user must be able to reach the dir when we run as root.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let out = Command::new("bash").arg(&script).arg("start").arg(dir.path().join("pg")).output()?;
        if !out.status.success() {
            bail!("scripts/pg.sh start failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let conn = std::fs::read_to_string(dir.path().join("pg/conn_string")).context("reading conn_string")?;
        Ok((PgScript { dir, script }, conn.trim().to_string()))
    }
}

impl Drop for PgScript {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(&self.script).arg("stop").arg(self.dir.path().join("pg")).output();
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let value = vec![b'v'; cli.value_size];
    let sled_dir = tempfile::tempdir()?;
    let mut backends: Vec<(String, Arc<dyn Backend>)> = vec![
        ("memory".into(), Arc::new(MemoryBackend::new())),
        ("sled".into(), Arc::new(SledBackend::open(&sled_dir.path().join("db"))?)),
    ];
    let mut _server = None;
    if !cli.no_postgres {
        let conn = match &cli.postgres {
            Some(c) => c.clone(),
            None => {
                let (server, conn) = PgScript::start()?;
                _server = Some(server);
                conn
            }
        };
        let pg = PostgresBackend::connect(&conn)?;
        backends.push((format!("postgresql ({})", pg.addr()), Arc::new(pg)));
    }
    let mut rows = Vec::new();
    for (name, b) in &backends {
        let short = name.split(' ').next().unwrap_or(name);
        rows.push(run(b, short, "put", 1, cli.writes, &value)?);
        rows.push(run(b, short, "put", cli.threads, cli.writes, &value)?);
        rows.push(run(b, short, "cas", cli.threads, cli.writes / 5, &value)?);
        b.flush()?;
    }
    if cli.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    println!("{:<12} {:<4} {:>7} {:>7} {:>8} {:>11} {:>8} {:>8}", "backend", "op", "writers", "writes", "seconds", "writes/s", "p50 ms", "p99 ms");
    for r in &rows {
        println!(
            "{:<12} {:<4} {:>7} {:>7} {:>8.2} {:>11.0} {:>8.3} {:>8.3}",
            r.backend, r.op, r.writers, r.writes, r.seconds, r.writes_per_sec, r.p50_ms, r.p99_ms
        );
    }
    println!("(value {} bytes; cas = read + compare-and-swap increments of one contended key, retries included)", cli.value_size);
    Ok(())
}
