//! The figures of one run, their Markdown rendering, and the section of
//! `docs/benchmarks.md` between the tunnel-scale markers.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::measure::{CpuSample, Latency, Machine, ProxyLog, Soak};
use crate::{BenchError, Options};

pub const START_MARKER: &str = "<!-- tunnel-scale:start -->";
pub const END_MARKER: &str = "<!-- tunnel-scale:end -->";
/// The soak mode's own section (`--soak`).
pub const SOAK_START_MARKER: &str = "<!-- tunnel-soak:start -->";
pub const SOAK_END_MARKER: &str = "<!-- tunnel-soak:end -->";
/// Aim (issue 13): proxy memory per idle tunnel at most this (KiB).
pub const MEMORY_AIM_KIB: f64 = 64.0;
/// Aim (issue 13): growth of the `tsh ssh` median from 1 to N leaves at most this much of
/// the 1-leaf median.
pub const LATENCY_TOLERANCE: f64 = 0.10;
/// Aim (issue 13): every leaf online again this soon after a proxy restart (seconds).
pub const RESTART_AIM_SECS: f64 = 10.0;

/// The proxy at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub rss_kb: u64,
    /// RSS again after the CPU window: shows whether memory still moves while idle.
    pub rss_after_cpu_kb: u64,
    pub fds: usize,
    pub threads: u64,
    pub cpu: CpuSample,
    /// The root auth's CPU over the same window (it stores the proxy's tunnel reports).
    pub auth_cpu: CpuSample,
    /// This process's CPU over the same window (the simulated agents and their fake auth).
    pub bench_cpu: CpuSample,
    /// 1-minute load average of the machine after the CPU window.
    pub load: f64,
}

/// One proxy restart and the reconnection that followed.
#[derive(Debug, Clone)]
pub struct Restart {
    pub signal: &'static str,
    /// Signal to exit of the old proxy.
    pub stop_time: Duration,
    /// Start of the new proxy to its ports accepting connections.
    pub ports_open: Duration,
    /// Start of the new proxy to its log showing a tunnel from every leaf.
    pub proxy_all_up: Option<Duration>,
    /// Start of the new proxy to `tctl get rc` showing every leaf online with a heartbeat
    /// reported by the new proxy.
    pub all_online: Option<Duration>,
    /// Leaves online (per the above) at the end of the wait.
    pub online_seen: usize,
    pub rss_after_kb: Option<u64>,
    pub peak_rss_kb: Option<u64>,
}

/// Everything one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub opts: Options,
    pub command: String,
    pub machine: Machine,
    pub date: String,
    pub commit: String,
    pub one: Snapshot,
    pub many: Snapshot,
    pub lat_1: Latency,
    pub lat_n: Latency,
    pub keygen: Duration,
    pub trust: Duration,
    pub ramp: Option<Duration>,
    /// The idle proxy's RSS over time with every leaf connected.
    pub soak: Option<Soak>,
    pub restarts: Vec<Restart>,
    pub bench_rss_per_agent_kb: Option<f64>,
    pub agents_ended: usize,
    pub proxy_logs: Vec<(u32, ProxyLog)>,
    /// Why the run stopped before the end, if it did (the figures are then partial).
    pub error: Option<String>,
}

fn git_commit() -> String {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "--short", "HEAD"]) {
        Some(sha) => {
            let dirty = run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            if dirty { format!("{sha} (with uncommitted changes)") } else { sha }
        }
        None => "unknown".into(),
    }
}

impl Report {
    pub fn new(opts: &Options) -> Report {
        let date = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let args: Vec<String> = std::env::args().collect();
        Report {
            opts: opts.clone(),
            command: args.join(" "),
            machine: crate::measure::machine(),
            date,
            commit: git_commit(),
            one: Snapshot::default(),
            many: Snapshot::default(),
            lat_1: Latency::default(),
            lat_n: Latency::default(),
            keygen: Duration::ZERO,
            trust: Duration::ZERO,
            ramp: None,
            soak: None,
            restarts: Vec::new(),
            bench_rss_per_agent_kb: None,
            agents_ended: 0,
            proxy_logs: Vec::new(),
            error: None,
        }
    }

    /// (RSS with N leaves - RSS with 1) / (N - 1), in KiB.
    pub fn per_tunnel_kib(&self) -> f64 {
        (self.many.rss_kb as f64 - self.one.rss_kb as f64) / (self.opts.leaves.saturating_sub(1).max(1)) as f64
    }

    pub fn memory_aim_met(&self) -> bool {
        self.many.rss_kb > 0 && self.per_tunnel_kib() <= MEMORY_AIM_KIB
    }

    pub fn latency_growth_ms(&self) -> f64 {
        self.lat_n.median() - self.lat_1.median()
    }

    /// Growth of the median within 10 % of the 1-leaf median.
    pub fn latency_aim_met(&self) -> bool {
        let allowed = self.lat_1.median() * LATENCY_TOLERANCE;
        !self.lat_n.samples_ms.is_empty() && self.latency_growth_ms() <= allowed
    }

    /// Whether the restart with `r` brought every leaf back (`online` in `tctl get rc`)
    /// within [`RESTART_AIM_SECS`].
    pub fn restart_aim_met(r: &Restart) -> bool {
        r.all_online.is_some_and(|d| d.as_secs_f64() <= RESTART_AIM_SECS)
    }

    /// The Markdown section, markers included: the soak section in soak mode.
    pub fn markdown(&self) -> String {
        if self.opts.soak.is_some() {
            return self.soak_markdown();
        }
        let n = self.opts.leaves;
        let m = &self.machine;
        let yes = |b: bool| if b { "**yes**" } else { "**no**" };
        let mut s = String::new();
        let _ = writeln!(s, "{START_MARKER}");
        let _ = writeln!(s, "## Reverse tunnels at scale (`tunnel-scale`, {n} leaves)\n");
        let _ = writeln!(
            s,
            "Written by `scripts/bench-tunnels.sh` (binary `tunnel-scale`, crate `bench/`); rerunning it replaces this section.\n"
        );
        if let Some(e) = &self.error {
            let _ = writeln!(s, "**The run stopped early; the figures below are partial.** Error: `{}`\n", e.replace('`', "'").replace('\n', " "));
        }
        let _ = writeln!(s, "- Run: {} at commit {}", self.date, self.commit);
        let _ = writeln!(s, "- Command: `{}` (binaries from `{}`)", self.command, self.opts.bin_dir.display());
        let _ = writeln!(
            s,
            "- Machine: {} CPUs ({}), {} MiB RAM, Linux {}",
            m.cpus, m.cpu_model, m.mem_total_mb, m.kernel
        );
        let _ = writeln!(
            s,
            "- Set-up: one root cluster (auth + one proxy, `tunnel_offline_after: {}`); one real leaf (auth, node, \
             `portcullis-tunnel-agent` binary); {} simulated leaves, each with its own TLS and SSH CAs, trusted through \
             `POST /webapi/trustedclusters/validate` and running the tunnel agent library (`run_with_identity`) with its \
             own Agent certificate, all in the benchmark process on one tokio runtime against one fake leaf auth. \
             Agents started {} at a time, {} ms apart. Everything on loopback.\n",
            self.opts.offline_after,
            n - 1,
            self.opts.batch,
            self.opts.batch_pause_ms
        );
        let _ = writeln!(s, "| figure | 1 leaf | {n} leaves | aim | met |");
        let _ = writeln!(s, "| --- | --- | --- | --- | --- |");
        let _ = writeln!(
            s,
            "| proxy RSS after {} s idle (KiB) | {} | {} | | |",
            self.opts.idle_secs, self.one.rss_kb, self.many.rss_kb
        );
        let _ = writeln!(
            s,
            "| proxy memory per idle tunnel: (RSS_{n} - RSS_1) / {} | | {:.1} KiB | ≤ {MEMORY_AIM_KIB:.0} KiB | {} |",
            n - 1,
            self.per_tunnel_kib(),
            yes(self.memory_aim_met())
        );
        if let Some(soak) = &self.soak {
            let _ = writeln!(
                s,
                "| proxy RSS drift while idle, after the CPU window (least squares over {:.0} s) | | {:+.0} KiB/min ({:+} KiB) | | |",
                soak.span_secs(),
                soak.slope_kib_per_min(),
                soak.change_kib()
            );
        }
        let _ = writeln!(
            s,
            "| proxy idle CPU over {} s (% of one core) | {:.2} | {:.2} | | |",
            self.opts.cpu_secs, self.one.cpu.percent, self.many.cpu.percent
        );
        let _ = writeln!(
            s,
            "| root auth CPU over the same window (%) | {:.2} | {:.2} | | |",
            self.one.auth_cpu.percent, self.many.auth_cpu.percent
        );
        let _ = writeln!(
            s,
            "| benchmark process CPU (simulated agents, fake leaf auth) over the same window (%) | {:.2} | {:.2} | | |",
            self.one.bench_cpu.percent, self.many.bench_cpu.percent
        );
        let _ = writeln!(s, "| machine load average (1 min) at the end of the CPU window | {:.2} | {:.2} | | |", self.one.load, self.many.load);
        let _ = writeln!(s, "| proxy open descriptors / threads | {} / {} | {} / {} | | |", self.one.fds, self.one.threads, self.many.fds, self.many.threads);
        let _ = writeln!(
            s,
            "| `tsh ssh --cluster={} <login>@<node> true`, median of {} (ms) | {:.1} | {:.1} | growth ≤ {:.0} % | {} |",
            crate::run::REAL_LEAF,
            self.opts.latency_runs,
            self.lat_1.median(),
            self.lat_n.median(),
            LATENCY_TOLERANCE * 100.0,
            yes(self.latency_aim_met())
        );
        let growth = self.latency_growth_ms();
        let pct = if self.lat_1.median() > 0.0 { growth / self.lat_1.median() * 100.0 } else { 0.0 };
        let _ = writeln!(s, "| same, growth of the median | | {growth:+.1} ms ({pct:+.0} %) | | |");
        let _ = writeln!(s, "| same, p95 (ms) | {:.1} | {:.1} | | |", self.lat_1.p95(), self.lat_n.p95());
        let _ = writeln!(s, "| machine load average (1 min) after the `tsh ssh` series | {:.2} | {:.2} | | |", self.lat_1.load, self.lat_n.load);
        let _ = writeln!(s, "| same, min / max (ms) | {:.1} / {:.1} | {:.1} / {:.1} | | |", self.lat_1.min(), self.lat_1.max(), self.lat_n.min(), self.lat_n.max());
        s.push('\n');
        if !self.restarts.is_empty() {
            let _ = writeln!(s, "Reconnection after restarting the proxy (same config, ports and data directory); times from the new proxy's start:\n");
            let _ = writeln!(s, "| stopped with | old proxy exit | new proxy ports open | all {n} tunnels up (proxy log) | all {n} `online` in `tctl get rc` | ≤ {RESTART_AIM_SECS:.0} s | proxy RSS {} s later (KiB) | proxy peak RSS (KiB) |", self.opts.idle_secs);
            let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- |");
            for r in &self.restarts {
                let opt = |d: Option<Duration>| d.map_or_else(|| "not within the timeout".to_string(), secs);
                let kb = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
                let online = match r.all_online {
                    Some(d) => secs(d),
                    None => format!("not within {} s ({} of {n} seen)", self.opts.connect_timeout_secs, r.online_seen),
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.signal,
                    secs(r.stop_time),
                    secs(r.ports_open),
                    opt(r.proxy_all_up),
                    online,
                    yes(Report::restart_aim_met(r)),
                    kb(r.rss_after_kb),
                    kb(r.peak_rss_kb)
                );
            }
            s.push('\n');
        }
        self.raw(&mut s);
        let _ = writeln!(
            s,
            "Reading the figures: RSS is the proxy's resident memory (`VmRSS`), CPU is its utime+stime from \
             `/proc/<pid>/stat`; `tsh ssh` times are wall-clock times of the whole `tsh` process (start-up, SSH to the \
             proxy, tunnel dial, SSH to the node, `true`). The simulated agents and their fake auth share the machine \
             (their CPU is the \"benchmark process\" row). The one failed TLS handshake per proxy start is the \
             benchmark's own probe of the tunnel port.\n"
        );
        let _ = writeln!(s, "{END_MARKER}");
        s
    }

    /// The soak mode's section (`--soak`), markers included.
    fn soak_markdown(&self) -> String {
        let n = self.opts.leaves;
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(s, "{SOAK_START_MARKER}");
        let _ = writeln!(s, "## Idle soak: proxy memory over time (`tunnel-scale --soak`, {n} leaves)\n");
        let _ = writeln!(
            s,
            "Written by `scripts/bench-tunnels.sh --soak <duration>` (binary `tunnel-scale`); rerunning it replaces this section.\n"
        );
        if let Some(e) = &self.error {
            let _ = writeln!(s, "**The run stopped early; the figures below are partial.** Error: `{}`\n", e.replace('`', "'").replace('\n', " "));
        }
        let _ = writeln!(s, "- Run: {} at commit {}", self.date, self.commit);
        let _ = writeln!(s, "- Command: `{}` (binaries from `{}`)", self.command, self.opts.bin_dir.display());
        let _ = writeln!(s, "- Machine: {} CPUs ({}), {} MiB RAM, Linux {}", m.cpus, m.cpu_model, m.mem_total_mb, m.kernel);
        let _ = writeln!(
            s,
            "- Set-up as in the tunnel-scale section: one root proxy, one real leaf and {} simulated leaves, all \
             connected; nothing else happens (tunnel and proxy heartbeats only) while the proxy's `VmRSS` is read every {} s.\n",
            n - 1,
            self.opts.soak_interval_secs
        );
        let _ = writeln!(s, "| figure | value |");
        let _ = writeln!(s, "| --- | --- |");
        let _ = writeln!(s, "| proxy RSS with 1 leaf / all {n} online, after {} s idle (KiB) | {} / {} |", self.opts.idle_secs, self.one.rss_kb, self.many.rss_kb);
        if let Some(soak) = &self.soak {
            let first = soak.samples.first().map_or(0, |x| x.1);
            let last = soak.samples.last().map_or(0, |x| x.1);
            let _ = writeln!(s, "| soak length, samples | {:.0} s, {} |", soak.span_secs(), soak.samples.len());
            let _ = writeln!(s, "| proxy RSS at the start / end of the soak (KiB) | {first} / {last} ({:+} KiB) |", soak.change_kib());
            let _ = writeln!(s, "| **RSS slope, least squares over the whole soak** | **{:+.1} KiB/min** |", soak.slope_kib_per_min());
            let _ = writeln!(s, "| RSS slope over the second half only | {:+.1} KiB/min |", soak.late_slope_kib_per_min());
            let _ = writeln!(s, "| `RssAnon` (heap, stacks) slope over the whole soak | {:+.1} KiB/min |", soak.anon_slope_kib_per_min());
            let fds = |v: Option<&usize>| v.map_or_else(|| "?".to_string(), |x| x.to_string());
            let _ = writeln!(s, "| proxy open descriptors at the start / end | {} / {} |", fds(soak.fds.first()), fds(soak.fds.last()));
            s.push('\n');
            let per_min = (60 / self.opts.soak_interval_secs.max(1)).max(1) as usize;
            let v: Vec<String> = soak
                .samples
                .iter()
                .zip(&soak.anon_kb)
                .step_by(per_min)
                .map(|((t, kb), anon)| format!("{:.0} min: {kb} ({anon})", t / 60.0))
                .collect();
            let _ = writeln!(s, "Proxy RSS (RssAnon) each minute, KiB: {}.\n", v.join(", "));
        }
        let _ = writeln!(
            s,
            "Reading the figures: a slope that is large in the first half and near zero in the second is the \
             allocator settling after the ramp (memory freed by the handshakes is reused, not returned); a steady \
             slope in both halves with `RssAnon` rising as fast is something growing per heartbeat or per minute.\n"
        );
        let _ = writeln!(s, "{SOAK_END_MARKER}");
        s
    }

    fn raw(&self, s: &mut String) {
        let n = self.opts.leaves;
        let _ = writeln!(s, "Raw figures:\n");
        let _ = writeln!(
            s,
            "- Simulated leaves: keys and certificates made in {}, trusted by the root in {} ({} requests in parallel), \
             first agent start to all {n} online: {}.",
            secs(self.keygen),
            secs(self.trust),
            self.opts.trust_parallel,
            self.ramp.map_or_else(|| "not reached".into(), secs)
        );
        let cpu = |c: &CpuSample| format!("{} ticks ({} per s) in {:.1} s", c.ticks, c.tck, c.wall.as_secs_f64());
        let _ = writeln!(s, "- Proxy CPU time while idle: 1 leaf {}; {n} leaves {}.", cpu(&self.one.cpu), cpu(&self.many.cpu));
        let _ = writeln!(
            s,
            "- Proxy RSS after the CPU window (KiB): 1 leaf {}; {n} leaves {}.",
            self.one.rss_after_cpu_kb, self.many.rss_after_cpu_kb
        );
        if let Some(soak) = &self.soak {
            let v: Vec<String> = soak.samples.iter().map(|(t, kb)| format!("{t:.0} s: {kb}")).collect();
            let _ = writeln!(s, "- Idle proxy RSS with {n} leaves (KiB): {}.", v.join(", "));
        }
        if let Some(kb) = self.bench_rss_per_agent_kb {
            let _ = writeln!(
                s,
                "- Agent side, for comparison: the benchmark process grew by {kb:.1} KiB per simulated agent \
                 (agent, its tunnel and its connection to the fake auth)."
            );
        }
        let samples = |l: &Latency| {
            let v: Vec<String> = l.samples_ms.iter().map(|x| format!("{x:.1}")).collect();
            let failed = if l.failures > 0 { format!(" ({} runs failed)", l.failures) } else { String::new() };
            format!("{}{failed}", v.join(", "))
        };
        let _ = writeln!(s, "- `tsh ssh` samples with 1 leaf (ms): {}", samples(&self.lat_1));
        let _ = writeln!(s, "- `tsh ssh` samples with {n} leaves (ms): {}", samples(&self.lat_n));
        if self.agents_ended > 0 {
            let _ = writeln!(s, "- **{} simulated agents ended on their own** (they should run until stopped).", self.agents_ended);
        }
        for (i, log) in &self.proxy_logs {
            let _ = writeln!(
                s,
                "- Proxy log of start {i}: {} `reverse tunnel up` ({} distinct leaves), {} `reverse tunnel down`, \
                 {} agents refused, {} failed TLS handshakes, {} WARN, {} ERROR lines.",
                log.tunnels_up, log.leaves_up, log.tunnels_down, log.refused, log.handshake_failed, log.warnings, log.errors
            );
            for (count, msg) in &log.top_problems {
                let _ = writeln!(s, "  - {count} × `{}`", msg.replace('`', "'"));
            }
        }
        s.push('\n');
    }

    /// Writes the section into `path`: replaces the old one between the markers, or
    /// appends it (creating the file with a title when missing).
    pub fn write_doc(&self, path: &Path) -> Result<(), BenchError> {
        let section = self.markdown();
        let old = match std::fs::read_to_string(path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(BenchError::io(format!("reading {}", path.display()), e)),
        };
        let (start, end) =
            if self.opts.soak.is_some() { (SOAK_START_MARKER, SOAK_END_MARKER) } else { (START_MARKER, END_MARKER) };
        let text = splice_between(old.as_deref(), &section, start, end);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| BenchError::io(format!("creating {}", dir.display()), e))?;
        }
        std::fs::write(path, text).map_err(|e| BenchError::io(format!("writing {}", path.display()), e))
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// `old` with `section` in place of the text between the tunnel-scale markers (or appended).
pub fn splice(old: Option<&str>, section: &str) -> String {
    splice_between(old, section, START_MARKER, END_MARKER)
}

/// `old` with `section` in place of the text between `start` and `end` (or appended).
pub fn splice_between(old: Option<&str>, section: &str, start: &str, end: &str) -> String {
    let Some(old) = old else {
        return format!(
            "# Benchmarks\n\nFigures from real runs on the machine named in each section. Each section is written by \
             its tool between its markers; edit outside them.\n\n{section}"
        );
    };
    if let (Some(a), Some(b)) = (old.find(start), old.find(end))
        && a < b
    {
        let end = b + end.len();
        let rest = old[end..].strip_prefix('\n').unwrap_or(&old[end..]);
        return format!("{}{section}{rest}", &old[..a]);
    }
    let sep = if old.ends_with("\n\n") || old.is_empty() { "" } else if old.ends_with('\n') { "\n" } else { "\n\n" };
    format!("{old}{sep}{section}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_is_created_replaced_and_appended() {
        let s1 = format!("{START_MARKER}\none\n{END_MARKER}\n");
        let s2 = format!("{START_MARKER}\ntwo\n{END_MARKER}\n");
        let created = splice(None, &s1);
        assert!(created.starts_with("# Benchmarks") && created.ends_with(&s1));
        let with_other = format!("{created}\n## Other\ntext\n");
        let replaced = splice(Some(&with_other), &s2);
        assert!(replaced.contains("two") && !replaced.contains("one\n") && replaced.ends_with("## Other\ntext\n"));
        let appended = splice(Some("# Benchmarks\n\n## Other\n"), &s1);
        assert_eq!(appended, format!("# Benchmarks\n\n## Other\n\n{s1}"));
    }
}
