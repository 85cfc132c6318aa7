//! What is measured and how: a process's memory and CPU time from `/proc`, latency
//! statistics, the machine's description, and the root proxy's log.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::BenchError;

fn read(path: &str) -> Result<String, BenchError> {
    std::fs::read_to_string(path).map_err(|e| BenchError::io(format!("reading {path}"), e))
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`...).
pub fn status_kb(pid: u32, field: &str) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/status");
    let text = read(&path)?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| BenchError::parse(&path, format!("no {field} line")))
}

/// Resident memory of `pid`, in KiB.
pub fn rss_kb(pid: u32) -> Result<u64, BenchError> {
    status_kb(pid, "VmRSS")
}

/// Threads of `pid`.
pub fn threads(pid: u32) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/status");
    read(&path)?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:")?.trim().parse().ok())
        .ok_or_else(|| BenchError::parse(&path, "no Threads line"))
}

/// Open file descriptors of `pid`.
pub fn open_fds(pid: u32) -> Result<usize, BenchError> {
    let path = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&path).map_err(|e| BenchError::io(format!("listing {path}"), e))?.count())
}

/// User plus system CPU time of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/stat");
    let text = read(&path)?;
    // The command name (field 2) may hold spaces: count fields after its closing ')'.
    let rest = text.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| BenchError::parse(&path, "no ')'"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')' comes field 3 (state); utime and stime are fields 14 and 15.
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    match (num(11), num(12)) {
        (Some(u), Some(s)) => Ok(u + s),
        _ => Err(BenchError::parse(&path, "no utime/stime")),
    }
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux in practice).
pub fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// CPU use of `pid` over `window`, as a percentage of one core, with the raw ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSample {
    pub percent: f64,
    pub ticks: u64,
    pub tck: u64,
    pub wall: Duration,
}

/// CPU use of each of `pids` over the same `window`.
pub fn cpu_over(pids: &[u32], window: Duration) -> Result<Vec<CpuSample>, BenchError> {
    let tck = clk_tck();
    let t0: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect::<Result<_, _>>()?;
    let start = Instant::now();
    std::thread::sleep(window);
    let t1: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect::<Result<_, _>>()?;
    let wall = start.elapsed();
    Ok(t0
        .iter()
        .zip(t1)
        .map(|(a, b)| {
            let ticks = b.saturating_sub(*a);
            let percent = ticks as f64 / tck as f64 / wall.as_secs_f64() * 100.0;
            CpuSample { percent, ticks, tck, wall }
        })
        .collect())
}

/// RSS samples of an idle process over time.
#[derive(Debug, Clone, Default)]
pub struct Soak {
    /// (seconds since the first sample, RSS in KiB).
    pub samples: Vec<(f64, u64)>,
    /// Anonymous resident memory (`RssAnon`: the heap and thread stacks) at each sample, in
    /// KiB: separates heap growth from mapped files.
    pub anon_kb: Vec<u64>,
    /// Open descriptors at each sample: a growing count means connections pile up.
    pub fds: Vec<usize>,
}

impl Soak {
    /// Samples the RSS of `pid` every `interval` for `duration`; `progress` sees the
    /// samples so far after each one.
    pub fn watch(pid: u32, duration: Duration, interval: Duration, mut progress: impl FnMut(&Soak)) -> Result<Soak, BenchError> {
        let start = Instant::now();
        let mut soak = Soak::default();
        soak.sample(pid, 0.0)?;
        let rounds = duration.as_millis() / interval.as_millis().max(1);
        for i in 1..=rounds {
            // Sleep to the planned instant, so reading /proc does not make the window drift.
            let at = interval * u32::try_from(i).unwrap_or(u32::MAX);
            std::thread::sleep(at.saturating_sub(start.elapsed()));
            soak.sample(pid, start.elapsed().as_secs_f64())?;
            progress(&soak);
        }
        Ok(soak)
    }

    fn sample(&mut self, pid: u32, at: f64) -> Result<(), BenchError> {
        self.samples.push((at, rss_kb(pid)?));
        self.anon_kb.push(status_kb(pid, "RssAnon").unwrap_or(0));
        self.fds.push(open_fds(pid).unwrap_or(0));
        Ok(())
    }

    /// Least-squares slope of `RssAnon` in KiB per minute.
    pub fn anon_slope_kib_per_min(&self) -> f64 {
        let pts: Vec<(f64, u64)> = self.samples.iter().zip(&self.anon_kb).map(|(s, a)| (s.0, *a)).collect();
        slope_per_min(&pts)
    }

    /// Least-squares slope of the RSS in KiB per minute (0 with fewer than two samples).
    pub fn slope_kib_per_min(&self) -> f64 {
        slope_per_min(&self.samples)
    }

    /// The slope over the second half of the samples only: memory that settles (allocator
    /// arenas filling up after the ramp) shows a first-half slope and a flat second half.
    pub fn late_slope_kib_per_min(&self) -> f64 {
        slope_per_min(&self.samples[self.samples.len() / 2..])
    }

    pub fn span_secs(&self) -> f64 {
        self.samples.last().map_or(0.0, |s| s.0)
    }

    /// Last sample minus first, in KiB.
    pub fn change_kib(&self) -> i64 {
        match (self.samples.first(), self.samples.last()) {
            (Some(a), Some(b)) => b.1 as i64 - a.1 as i64,
            _ => 0,
        }
    }
}

/// Least-squares slope of (seconds, KiB) points, in KiB per minute (0 with fewer than two).
fn slope_per_min(pts: &[(f64, u64)]) -> f64 {
    if pts.len() < 2 {
        return 0.0;
    }
    let n = pts.len() as f64;
    let mx = pts.iter().map(|s| s.0).sum::<f64>() / n;
    let my = pts.iter().map(|s| s.1 as f64).sum::<f64>() / n;
    let sxy: f64 = pts.iter().map(|s| (s.0 - mx) * (s.1 as f64 - my)).sum();
    let sxx: f64 = pts.iter().map(|s| (s.0 - mx).powi(2)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx * 60.0 }
}

/// Latency statistics of a series of runs.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    pub samples_ms: Vec<f64>,
    /// Runs that failed (not in the samples).
    pub failures: usize,
    /// 1-minute load average after the series.
    pub load: f64,
}

impl Latency {
    pub fn push(&mut self, d: Duration) {
        self.samples_ms.push(d.as_secs_f64() * 1000.0);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.samples_ms.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    /// The `q` quantile (nearest rank), 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        let v = self.sorted();
        if v.is_empty() {
            return 0.0;
        }
        let rank = (q * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }

    pub fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub fn p95(&self) -> f64 {
        self.quantile(0.95)
    }

    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(0.0)
    }

    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(0.0)
    }
}

/// The 1-minute load average (other work on the machine skews latency and CPU figures).
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The machine the benchmark ran on.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub mem_total_mb: u64,
    pub kernel: String,
}

pub fn machine() -> Machine {
    let cpus = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_string())))
        .unwrap_or_else(|| "unknown".into());
    let mem_total_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse::<u64>().ok()))
        .map(|kb| kb / 1024)
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default();
    Machine { cpus, cpu_model, mem_total_mb, kernel }
}

/// Removes ANSI colour sequences, should a log be coloured after all.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What one proxy log says about tunnels and problems.
#[derive(Debug, Clone, Default)]
pub struct ProxyLog {
    /// `reverse tunnel up` lines (a leaf reconnecting twice counts twice).
    pub tunnels_up: usize,
    /// Distinct leaves that had a tunnel up.
    pub leaves_up: usize,
    pub tunnels_down: usize,
    pub refused: usize,
    pub handshake_failed: usize,
    pub warnings: usize,
    pub errors: usize,
    /// A few distinct WARN/ERROR messages, with how often each came.
    pub top_problems: Vec<(usize, String)>,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!(" {key}=");
    let start = line.find(&pat)? + pat.len();
    line[start..].split_whitespace().next()
}

/// Reads a proxy log (plain tracing-subscriber text format).
pub fn read_proxy_log(path: &Path) -> ProxyLog {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = ProxyLog::default();
    let mut leaves = std::collections::HashSet::new();
    let mut problems: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for raw in text.lines() {
        let line = strip_ansi(raw);
        if line.contains("reverse tunnel up") {
            out.tunnels_up += 1;
            if let Some(l) = field(&line, "leaf") {
                leaves.insert(l.to_string());
            }
        }
        if line.contains("reverse tunnel down") {
            out.tunnels_down += 1;
        }
        if line.contains("tunnel agent refused") {
            out.refused += 1;
        }
        if line.contains("tunnel TLS handshake") {
            out.handshake_failed += 1;
        }
        let level = if line.contains(" WARN ") {
            out.warnings += 1;
            "WARN"
        } else if line.contains(" ERROR ") {
            out.errors += 1;
            "ERROR"
        } else {
            continue;
        };
        // Group by message: drop the timestamp and the variable key=value fields.
        let msg = line.split_once(level).map(|(_, m)| m.trim()).unwrap_or(&line);
        let msg: Vec<&str> = msg.split_whitespace().filter(|w| !w.contains('=')).collect();
        *problems.entry(format!("{level} {}", msg.join(" "))).or_default() += 1;
    }
    out.leaves_up = leaves.len();
    let mut top: Vec<(usize, String)> = problems.into_iter().map(|(m, n)| (n, m)).collect();
    top.sort_by(|a, b| b.0.cmp(&a.0));
    top.truncate(5);
    out.top_problems = top;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        let mut l = Latency::default();
        for ms in 1..=20 {
            l.push(Duration::from_millis(ms));
        }
        assert!((l.median() - 10.5).abs() < 1e-9);
        assert!((l.p95() - 19.0).abs() < 1e-9);
        assert!((l.min() - 1.0).abs() < 1e-9 && (l.max() - 20.0).abs() < 1e-9);
    }

    #[test]
    fn soak_slope_is_per_minute() {
        let soak = Soak { samples: vec![(0.0, 1000), (30.0, 1050), (60.0, 1100)], anon_kb: vec![500, 500, 530], fds: vec![] };
        assert!((soak.slope_kib_per_min() - 100.0).abs() < 1e-9);
        assert!((soak.anon_slope_kib_per_min() - 30.0).abs() < 1e-9);
        assert!((soak.late_slope_kib_per_min() - 100.0).abs() < 1e-9);
        assert_eq!(soak.change_kib(), 100);
        assert_eq!(Soak::default().slope_kib_per_min(), 0.0);
    }

    #[test]
    fn proxy_log_lines_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("proxy.log");
        let text = "2025-01-01T00:00:00.000Z  INFO portcullis_proxy::tunnel::actor: reverse tunnel up leaf=sim-0001 agent=a tunnel=1\n\
                    2025-01-01T00:00:00.000Z  INFO portcullis_proxy::tunnel::actor: reverse tunnel up leaf=sim-0001 agent=a tunnel=2\n\
                    2025-01-01T00:00:00.000Z  \u{1b}[33m WARN\u{1b}[0m portcullis_proxy::heartbeat: heartbeat to the auth service failed: x code=Unavailable\n";
        std::fs::write(&p, text).unwrap();
        let log = read_proxy_log(&p);
        assert_eq!((log.tunnels_up, log.leaves_up, log.warnings), (2, 1, 1));
        assert_eq!(log.top_problems.len(), 1);
    }

    #[test]
    fn own_process_is_measurable() {
        let pid = std::process::id();
        assert!(rss_kb(pid).unwrap() > 0);
        cpu_ticks(pid).unwrap();
        assert!(threads(pid).unwrap() >= 1);
    }
}
