//! The benchmark proper: start the root and the real leaf, measure with one leaf, add the
//! simulated leaves in batches, measure again, then restart the proxy twice and time the
//! reconnection.

use std::path::Path;
use std::time::{Duration, Instant};

use portcullis_proto::auth::TrustedClusterTarget;

use crate::cluster::{Bins, RealLeaf, Root, Tsh};
use crate::measure::{self, Latency};
use crate::procs::{unix_login, wait_for};
use crate::report::{Report, Restart, Snapshot};
use crate::sim::{self, Agents};
use crate::{BenchError, Options};

pub const ROOT_NAME: &str = "root.bench";
/// Simulated leaves per fake leaf auth (see where the fakes start).
const FAKE_AUTH_SHARD: usize = 500;
pub const REAL_LEAF: &str = "real-leaf";
const NODE_NAME: &str = "leafnode";
const SIM_PREFIX: &str = "sim";
const USER: &str = "bench";
const PASSWORD: &str = "bench-user-password";
/// Untimed `tsh ssh` runs before each latency series.
const WARM_UP_RUNS: usize = 3;

fn say(msg: impl AsRef<str>) {
    eprintln!("[tunnel-scale] {}", msg.as_ref());
}

/// Runs the whole benchmark with its files in `work`; every process it starts is gone
/// when it returns (or unwinds).
pub fn run(opts: &Options, work: &Path) -> Result<Report, BenchError> {
    if opts.leaves < 2 {
        return Err(BenchError::Other("--leaves must be at least 2 (the real leaf plus one simulated)".into()));
    }
    let bins = Bins::find(&opts.bin_dir)?;
    let mut report = Report::new(opts);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::io("starting the tokio runtime", e))?;

    watch_signals(&rt, work, opts.keep);

    say(format!("starting the root cluster {ROOT_NAME} (auth, proxy) in {}", work.display()));
    let proxy_env = opts
        .proxy_env
        .iter()
        .map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| BenchError::Other("--proxy-env takes KEY=VALUE".into()))?;
    let mut root = Root::start(&bins, &work.join("root"), ROOT_NAME, &opts.offline_after, proxy_env)?;
    say("starting the real leaf (auth --insecure, node, tunnel agent)");
    let leaf = RealLeaf::start(&bins, &work.join(REAL_LEAF), REAL_LEAF, NODE_NAME)?;
    let login = unix_login("pcl-bench");
    root.auth.tctl(&["users", "add", USER, "--roles=access", &format!("--logins={login}")])?;
    root.auth.tctl_in(&["users", "set-password", USER], Some(&format!("{PASSWORD}\n")))?;
    // The real leaf's invite token; each simulated leaf gets its own (a token registers one name).
    let token = root.auth.token("trusted_cluster", "30m")?;
    leaf.trust_root(&root, &login, &token)?;
    wait_online(&root, 1, None, Duration::from_secs(90), "the real leaf to come online")?;
    say("the real leaf is online");

    let tsh = Tsh::new(&bins, work)?;
    tsh.login(&root.web_addr(), USER, PASSWORD)?;
    let target = format!("{login}@{NODE_NAME}");
    report.lat_1 = latency(&tsh, &target, opts.latency_runs)?;
    say(format!("tsh ssh latency with 1 leaf: median {:.1} ms", report.lat_1.median()));
    std::thread::sleep(opts.idle());
    report.one = snapshot(&root, opts)?;
    say(format!("1 leaf: proxy RSS {} KiB, idle CPU {:.2} %", report.one.rss_kb, report.one.cpu.percent));

    let sims = opts.leaves - 1;
    say(format!("making {sims} simulated leaves (CAs and agent certificates)"));
    let t = Instant::now();
    let leaves = sim::make_leaves(SIM_PREFIX, sims)?;
    report.keygen = t.elapsed();
    // An invite token registers one leaf name (issue 11): one token per simulated leaf,
    // made in one `tctl create` before the timed part.
    let sim_tokens = sim_tokens(&root, sims)?;
    let t = Instant::now();
    let root_cas = rt.block_on(sim::establish_trust(&leaves, &root.web_addr(), &sim_tokens, opts.trust_parallel))?;
    report.trust = t.elapsed();
    say(format!("the root trusts {sims} simulated leaves ({:.1} s)", report.trust.as_secs_f64()));
    if root_cas.cluster_name != ROOT_NAME {
        return Err(BenchError::Other(format!("the root answered as {:?}, not {ROOT_NAME:?}", root_cas.cluster_name)));
    }
    let target_root = TrustedClusterTarget {
        name: root_cas.cluster_name.clone(),
        enabled: true,
        tunnel_addr: root.tunnel_addr(),
        root_tls_ca_pem: root_cas.tls_ca_pems.clone(),
    };
    // One fake leaf auth per FAKE_AUTH_SHARD simulated leaves: a TLS server sends the names
    // of every client CA it trusts in its certificate request, and a few thousand CAs
    // overflow the handshake message limit (64 KiB).
    let mut fakes = Vec::new();
    for shard in leaves.chunks(FAKE_AUTH_SHARD) {
        let cas: Vec<String> = shard.iter().map(|l| l.tls_ca_pem.clone()).collect();
        fakes.push(rt.block_on(crate::fake_auth::start(target_root.clone(), &cas))?);
    }
    let bench_rss_before = measure::rss_kb(std::process::id())?;

    // The agents run on the runtime's worker threads; this thread only orchestrates.
    let mut agents = Agents::default();
    let t = Instant::now();
    for (i, batch) in leaves.chunks(opts.batch.max(1)).enumerate() {
        {
            let _guard = rt.enter();
            for (j, l) in batch.iter().enumerate() {
                let fake = &fakes[(i * opts.batch.max(1) + j) / FAKE_AUTH_SHARD];
                agents.spawn(l, &fake.addr.to_string(), &fake.ca_pem)?;
            }
        }
        say(format!("started {} simulated agents", agents.len()));
        if (i + 1) * opts.batch.max(1) < leaves.len() {
            std::thread::sleep(Duration::from_millis(opts.batch_pause_ms));
        }
    }
    let result = measure_many(opts, &mut root, &tsh, &target, &mut report, t);
    if opts.hold_secs > 0 {
        say(format!(
            "holding for {} s: TSH_HOME={} {} ssh --cluster={REAL_LEAF} {target} true; {} -c {} get rc",
            opts.hold_secs,
            tsh.home.display(),
            bins.tsh.display(),
            bins.tctl.display(),
            root.auth.dir.join("auth.yaml").display()
        ));
        std::thread::sleep(Duration::from_secs(opts.hold_secs));
    }
    report.bench_rss_per_agent_kb =
        measure::rss_kb(std::process::id()).ok().map(|r| r.saturating_sub(bench_rss_before) as f64 / sims as f64);
    report.agents_ended = agents.finished();
    report.proxy_logs = (1..=root.starts()).map(|i| (i, measure::read_proxy_log(&root.proxy_log_n(i)))).collect();

    say("stopping the simulated agents");
    rt.block_on(async {
        agents.stop(Duration::from_secs(5)).await;
        for fake in fakes {
            fake.stop().await;
        }
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    // Stop the proxy before its auth, so it does not log auth errors on the way out.
    if let Some(p) = root.proxy.as_mut() {
        p.terminate(Duration::from_secs(10));
    }
    drop(leaf);
    drop(root);
    // A failure with every leaf connected keeps what was measured until then: the figures
    // (and the error) are worth recording, especially when the proxy misbehaves at scale.
    if let Err(e) = result {
        say(format!("the run stopped early: {e}"));
        report.error = Some(e.to_string());
    }
    Ok(report)
}

/// On SIGINT or SIGTERM: kill every child, remove the working directory (unless kept)
/// and exit; the main thread may be asleep in a measurement window.
fn watch_signals(rt: &tokio::runtime::Runtime, work: &Path, keep: bool) {
    let work = work.to_path_buf();
    rt.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            tracing::warn!("cannot watch SIGINT/SIGTERM: an interrupted run may leave processes behind");
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        crate::procs::kill_all_children();
        if keep {
            say(format!("interrupted: children killed; kept {}", work.display()));
        } else {
            let _ = std::fs::remove_dir_all(&work);
            say("interrupted: children killed, working directory removed");
        }
        std::process::exit(130);
    });
}

/// Everything measured with all leaves connected; errors stop the run but keep what was
/// measured so far in `report`.
fn measure_many(
    opts: &Options,
    root: &mut Root,
    tsh: &Tsh,
    target: &str,
    report: &mut Report,
    ramp_start: Instant,
) -> Result<(), BenchError> {
    let n = opts.leaves;
    wait_online(root, n, None, opts.connect_timeout(), &format!("all {n} leaves to come online"))?;
    report.ramp = Some(ramp_start.elapsed());
    say(format!("all {n} leaves online after {:.1} s", ramp_start.elapsed().as_secs_f64()));
    std::thread::sleep(opts.idle());
    report.many = snapshot(root, opts)?;
    say(format!(
        "{n} leaves: proxy RSS {} KiB, idle CPU {:.2} %, {:.1} KiB per tunnel",
        report.many.rss_kb,
        report.many.cpu.percent,
        report.per_tunnel_kib()
    ));
    if let Some(duration) = opts.soak {
        // Soak mode: nothing but the idle proxy's memory, for as long as asked.
        say(format!("soak: watching the idle proxy's RSS for {:.0} min", duration.as_secs_f64() / 60.0));
        let soak = soak_watch(root, duration, opts)?;
        say(format!(
            "soak, {n} leaves: proxy RSS {:+} KiB in {:.0} s, slope {:+.1} KiB/min (second half {:+.1}, RssAnon {:+.1})",
            soak.change_kib(),
            soak.span_secs(),
            soak.slope_kib_per_min(),
            soak.late_slope_kib_per_min(),
            soak.anon_slope_kib_per_min()
        ));
        report.soak = Some(soak);
        return Ok(());
    }
    if opts.soak_secs > 0 {
        let soak = soak_watch(root, Duration::from_secs(opts.soak_secs), opts)?;
        say(format!(
            "{n} leaves, idle: proxy RSS changed by {} KiB in {:.0} s ({:.0} KiB/min)",
            soak.change_kib(),
            soak.span_secs(),
            soak.slope_kib_per_min()
        ));
        report.soak = Some(soak);
    }
    // A fresh login, as a user arriving now would: the profile then holds every leaf's host CA.
    tsh.login(&root.web_addr(), USER, PASSWORD)?;
    report.lat_n = latency(tsh, target, opts.latency_runs)?;
    say(format!("tsh ssh latency with {n} leaves: median {:.1} ms", report.lat_n.median()));
    if opts.no_restart {
        return Ok(());
    }
    for signal in ["SIGTERM", "SIGKILL"] {
        let r = restart(root, opts, signal)?;
        say(format!(
            "after {signal}: all {n} online in {} (proxy log: all up in {})",
            fmt_opt(r.all_online),
            fmt_opt(r.proxy_all_up)
        ));
        report.restarts.push(r);
    }
    Ok(())
}

/// Samples the idle proxy's RSS for `duration`, saying where it stands every minute.
fn soak_watch(root: &Root, duration: Duration, opts: &Options) -> Result<measure::Soak, BenchError> {
    let interval = Duration::from_secs(opts.soak_interval_secs.max(1));
    let per_minute = (60 / interval.as_secs().max(1)).max(1) as usize;
    measure::Soak::watch(root.proxy_pid()?, duration, interval, |s| {
        if (s.samples.len() - 1) % per_minute == 0 {
            let (t, kb) = s.samples.last().copied().unwrap_or_default();
            say(format!("soak: {t:.0} s, proxy RSS {kb} KiB, slope so far {:+.1} KiB/min", s.slope_kib_per_min()));
        }
    })
}

fn fmt_opt(d: Option<Duration>) -> String {
    d.map_or_else(|| "never (timed out)".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

/// Memory, descriptors, threads and idle CPU of the proxy now (and, over the same
/// window, the CPU of the root auth and of this process, which runs the simulated agents).
fn snapshot(root: &Root, opts: &Options) -> Result<Snapshot, BenchError> {
    let pid = root.proxy_pid()?;
    let auth_pid = root.auth.proc.pid().ok_or_else(|| BenchError::Other("the root auth is not running".into()))?;
    let rss_kb = measure::rss_kb(pid)?;
    let fds = measure::open_fds(pid)?;
    let threads = measure::threads(pid)?;
    let cpu = measure::cpu_over(&[pid, auth_pid, std::process::id()], Duration::from_secs(opts.cpu_secs))?;
    let rss_after_cpu_kb = measure::rss_kb(pid)?;
    Ok(Snapshot {
        rss_kb,
        rss_after_cpu_kb,
        fds,
        threads,
        cpu: cpu[0],
        auth_cpu: cpu[1],
        bench_cpu: cpu[2],
        load: measure::loadavg(),
    })
}

/// Waits until at least `n` remote clusters are online in `tctl get rc` (with a
/// `last_heartbeat` after `since`, when given); returns the count seen last.
fn wait_online(
    root: &Root,
    n: usize,
    since: Option<time::OffsetDateTime>,
    timeout: Duration,
    what: &str,
) -> Result<(), BenchError> {
    let mut last_err = None;
    let r = wait_for(what, timeout, || match root.auth.remote_clusters() {
        Ok(rcs) => {
            last_err = None;
            (count_online(&rcs, since) >= n).then_some(())
        }
        Err(e) => {
            last_err = Some(e);
            None
        }
    });
    match (r, last_err) {
        (Err(BenchError::Timeout { .. }), Some(e)) => Err(e),
        (r, _) => r,
    }
}

fn count_online(rcs: &[crate::cluster::RcStatus], since: Option<time::OffsetDateTime>) -> usize {
    rcs.iter().filter(|r| r.online && since.is_none_or(|s| r.last_heartbeat.is_some_and(|h| h > s))).count()
}

/// `runs` timed `tsh ssh --cluster=real-leaf <target> true`, after warm-up runs that also
/// wait for the leaf node to trust the root's users.
fn latency(tsh: &Tsh, target: &str, runs: usize) -> Result<Latency, BenchError> {
    let cluster = format!("--cluster={REAL_LEAF}");
    let args = ["ssh", cluster.as_str(), target, "true"];
    let mut last = String::new();
    wait_for("a first successful tsh ssh to the real leaf's node", Duration::from_secs(90), || {
        match tsh.run(&args, None) {
            Ok(r) if r.code == 0 => Some(()),
            Ok(r) => {
                last = r.stderr;
                None
            }
            Err(e) => {
                last = e.to_string();
                None
            }
        }
    })
    .map_err(|e| BenchError::Other(format!("{e}; last tsh error: {}", last.trim())))?;
    // A few more untimed runs: caches (page cache, the proxy's and node's) settle first.
    for _ in 0..WARM_UP_RUNS {
        tsh.run(&args, None)?;
    }
    let mut lat = Latency::default();
    let mut failures = Vec::new();
    for _ in 0..runs {
        let r = tsh.run(&args, None)?;
        if r.code == 0 {
            lat.push(r.elapsed);
        } else {
            failures.push(r.stderr.trim().to_string());
        }
    }
    if failures.len() * 2 > runs {
        return Err(BenchError::Other(format!(
            "{} of {runs} tsh ssh runs failed; first error: {}",
            failures.len(),
            failures.first().cloned().unwrap_or_default()
        )));
    }
    lat.failures = failures.len();
    lat.load = measure::loadavg();
    Ok(lat)
}

/// Stops the proxy with `signal`, starts it again with the same config, and times how
/// long until every leaf is back: in the proxy's log, and as `online` in `tctl get rc`
/// with a heartbeat the new proxy reported.
fn restart(root: &mut Root, opts: &Options, signal: &'static str) -> Result<Restart, BenchError> {
    let n = opts.leaves;
    say(format!("restarting the root proxy with {signal}"));
    let t = Instant::now();
    if let Some(p) = root.proxy.as_mut() {
        if signal == "SIGKILL" { p.kill() } else { p.terminate(Duration::from_secs(60)) }
    }
    let stop_time = t.elapsed();
    let stopped_at = time::OffsetDateTime::now_utc();
    let start = Instant::now();
    root.start_proxy()?;
    let ports_open = start.elapsed();
    let log = root.proxy_log();
    let (mut proxy_all_up, mut all_online) = (None, None);
    let mut online_seen = 0;
    let deadline = start + opts.connect_timeout();
    while Instant::now() < deadline && (proxy_all_up.is_none() || all_online.is_none()) {
        if proxy_all_up.is_none() && measure::read_proxy_log(&log).leaves_up >= n {
            proxy_all_up = Some(start.elapsed());
        }
        if all_online.is_none() {
            match root.auth.remote_clusters() {
                Ok(rcs) => {
                    online_seen = count_online(&rcs, Some(stopped_at));
                    if online_seen >= n {
                        all_online = Some(start.elapsed());
                    }
                }
                Err(e) => tracing::warn!("tctl get rc failed while waiting for the leaves: {e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(opts.idle());
    let pid = root.proxy_pid()?;
    Ok(Restart {
        signal,
        stop_time,
        ports_open,
        proxy_all_up,
        all_online,
        online_seen,
        rss_after_kb: measure::rss_kb(pid).ok(),
        peak_rss_kb: measure::status_kb(pid, "VmHWM").ok(),
    })
}

/// `count` random invite tokens, created on the root with one `tctl create`.
fn sim_tokens(root: &Root, count: usize) -> Result<Vec<String>, BenchError> {
    let mut tokens = Vec::with_capacity(count);
    let mut yaml = String::new();
    for _ in 0..count {
        let token = portcullis_pki::random_hex::<16>().map_err(|e| BenchError::Other(format!("making a token: {e}")))?;
        yaml.push_str(&format!(
            "---\nkind: token\nversion: v2\nmetadata:\n  name: {token}\nspec:\n  roles: [trusted_cluster]\n"
        ));
        tokens.push(token);
    }
    if count > 0 {
        root.auth.create("sim-tokens.yaml", &yaml)?;
    }
    Ok(tokens)
}
