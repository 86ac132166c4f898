//! `cargo xtask bench [--quick]`: FluxLit's gateway against the physical limit (`direct`) and
//! its peers (nginx, HAProxy, FluxLit for Python), on loopback, in one interleaved run; and like
//! for like with logging on (FluxLit production: JSON access log and metrics, against nginx and
//! HAProxy with access logs) and on the API hop (`/api` prefix stripped by each).
//!
//! Steps: install nginx, HAProxy and wrk from Debian when missing (as root); build
//! `fluxlit-cli` and `fluxlit-bench` in release; (full run) `pip install fluxlit` into
//! `target/bench/py-venv`; start the one upstream (`fluxlit-bench-upstream`) and every proxy in
//! front of it; run each scenario for every row, interleaved, for several rounds; sample the
//! proxies' RSS; hold idle WebSocket tunnels through each proxy; stop everything (process
//! groups; also on failure, and a parent-death signal covers a killed xtask); time `fluxlit
//! run`'s stop on SIGTERM with real Streamlit (examples/hello), idle and with Streamlit
//! sessions open (3 runs each, 5 in a full run; `bench/shutdown.rs`); compare reruns per
//! second and p99 of a CPU-bound Streamlit script with one and two Streamlit workers
//! (`bench/workers.rs`); measure the cost of authentication (`auth_mode` off, oidc with a
//! session cookie, jwt with a bearer token; `bench/auth.rs`); write
//! `target/bench/{quick,full}.md` and `.json` and print the markdown.
//!
//! Exit status: 0 when every row that must run (direct, FluxLit, nginx, HAProxy) produced
//! numbers for every scenario, the shutdown was timed in both cases and every authentication row
//! produced numbers without errors (`bench/auth.rs`); 1 when the harness failed (a proxy did not start or died, a
//! tool failed, a scenario has no number). FluxLit for Python is optional: its row says why it
//! was skipped. Whether the numbers meet the targets does not change the exit status.

pub(crate) mod auth;
mod load;
pub(crate) mod peers;
pub(crate) mod procs;
mod report;
pub(crate) mod shutdown;
mod soak;
mod tunnels;
pub(crate) mod workers;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use load::{LOADGEN_THREADS, Scenario, WS_MESSAGE_BYTES};
use peers::{Kind, Row};
use report::{Machine, Memory, Method, Results, RowInfo};

use crate::{Failed, Result, cargo, project_root, run as run_cmd};

/// Debian packages the bench needs (also in `APT_PACKAGES`, so `cargo xtask setup` has them).
const BENCH_APT_PACKAGES: &[&str] = &["nginx", "haproxy", "wrk", "redis-server"];

/// A run during which other processes used more of the machine than this (percent of all
/// cores) is marked in the report.
pub(crate) const FOREIGN_CPU_WARN_PCT: f64 = 10.0;

/// Descriptors kept aside in every proxy for listeners, logs, epoll and friends.
const FD_RESERVE: u64 = 160;

const USAGE: &str = "usage: cargo xtask bench [--quick] [--rounds N] [--duration-s S] [--tunnels N] [--upstream-threads N] [--no-python] [--no-build] [--shutdown-only] [--workers-only] [--auth-only]
  --quick              CI's short run: 1 round of 1 s per cell, 1,000 idle tunnels, FluxLit for
                       Python only if already installed in target/bench/py-venv
  --rounds N           rounds per cell (full: 3)
  --duration-s S       whole seconds per cell and round (full: 5)
  --tunnels N          idle WebSocket tunnels to hold (full: 10000, capped by RLIMIT_NOFILE)
  --upstream-threads N tokio workers of the upstream (default 1)
  --no-python          skip FluxLit for Python
  --no-build           use the release binaries already in the target directory's release/
  --shutdown-only      only time `fluxlit run`'s stop on SIGTERM (idle and with Streamlit
                       sessions open); prints its table, writes no report
  --workers-only       only compare 1 and 2 Streamlit workers (8 sessions rerunning a
                       script of 50 ms CPU; 5 s per count in --quick, else 20 s); prints its
                       table, writes no report
  --auth-only          only the cost of authentication: UI and API GET through FluxLit with
                       auth_mode off, oidc (session cookie; cookie and redis store) and jwt
                       (bearer token); 2 rounds of 2 s per row in --quick, else --rounds and
                       --duration-s; prints its table, writes no report
  --soak [MINUTES]     only the soak (default 10 minutes): FluxLit production (JSON access
                       log to a file, metrics) under 64 HTTP connections and 16 WebSocket
                       sessions, RSS and descriptors sampled every second; fails on any
                       error, RSS growth over 2 MiB after warm-up, or descriptors not back";

#[derive(Debug, Clone)]
struct Opts {
    quick: bool,
    rounds: usize,
    duration: Duration,
    warmup: Duration,
    tunnels: usize,
    upstream_threads: usize,
    python: bool,
    build: bool,
    shutdown_only: bool,
    workers_only: bool,
    auth_only: bool,
    /// `--soak [MINUTES]`.
    soak: Option<f64>,
}

fn parse(args: &[String]) -> std::result::Result<Opts, String> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = if quick {
        Opts {
            quick,
            rounds: 1,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            tunnels: 1_000,
            upstream_threads: 1,
            python: true,
            build: true,
            shutdown_only: false,
            workers_only: false,
            auth_only: false,
            soak: None,
        }
    } else {
        Opts {
            quick,
            rounds: 3,
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            tunnels: 10_000,
            upstream_threads: 1,
            python: true,
            build: true,
            shutdown_only: false,
            workers_only: false,
            auth_only: false,
            soak: None,
        }
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value"))
                .cloned()
        };
        match a.as_str() {
            "--quick" => {}
            "--no-python" => o.python = false,
            "--no-build" => o.build = false,
            "--shutdown-only" => o.shutdown_only = true,
            "--workers-only" => o.workers_only = true,
            "--auth-only" => o.auth_only = true,
            "--soak" => {
                let minutes = match it.clone().next().map(|m| m.parse::<f64>()) {
                    Some(Ok(m)) => {
                        it.next();
                        m
                    }
                    Some(Err(_)) | None => 10.0,
                };
                if !(0.1..=120.0).contains(&minutes) {
                    return Err("--soak takes minutes between 0.1 and 120".into());
                }
                o.soak = Some(minutes);
            }
            "--rounds" => {
                o.rounds = value(a)?.parse().map_err(|e| format!("--rounds: {e}"))?;
            }
            "--duration-s" => {
                let s: u64 = value(a)?
                    .parse()
                    .map_err(|e| format!("--duration-s: {e}"))?;
                if !(1..=600).contains(&s) {
                    return Err("--duration-s must be whole seconds between 1 and 600".into());
                }
                o.duration = Duration::from_secs(s);
            }
            "--tunnels" => {
                o.tunnels = value(a)?.parse().map_err(|e| format!("--tunnels: {e}"))?;
            }
            "--upstream-threads" => {
                o.upstream_threads = value(a)?
                    .parse()
                    .map_err(|e| format!("--upstream-threads: {e}"))?;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if !(1..=20).contains(&o.rounds) {
        return Err("--rounds must be between 1 and 20".into());
    }
    if o.tunnels > 100_000 {
        return Err("--tunnels must be at most 100000".into());
    }
    Ok(o)
}

/// Entry point of `cargo xtask bench`.
pub(crate) fn run(args: &[String]) -> Result {
    let opts = match parse(args) {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            eprintln!("{USAGE}");
            return Ok(());
        }
        Err(e) => return Err(Failed(format!("{e}\n{USAGE}"))),
    };
    let started = Instant::now();
    let started_utc = utc_now();
    let root = project_root();
    let out_dir = root.join("target/bench");
    let work = out_dir.join("work");
    if work.exists() {
        std::fs::remove_dir_all(&work)
            .map_err(|e| Failed(format!("cannot clear {}: {e}", work.display())))?;
    }
    std::fs::create_dir_all(&work)
        .map_err(|e| Failed(format!("cannot create {}: {e}", work.display())))?;

    let nofile = raise_nofile();
    if !opts.shutdown_only && !opts.workers_only {
        ensure_apt()?;
    }
    // The authentication section's OpenID provider (npm `oidc-provider`, as the tests use it).
    if opts.auth_only || (opts.soak.is_none() && !opts.shutdown_only && !opts.workers_only) {
        crate::setup_idp()?;
    }
    // The workers comparison needs only `fluxlit`; everything else also the bench's tools.
    let packages: &[&str] = if opts.workers_only {
        &["-p", "fluxlit-cli"]
    } else {
        &["-p", "fluxlit-cli", "-p", "fluxlit-bench"]
    };
    if opts.build {
        run_cmd(
            cargo()
                .args(["build", "--release", "--locked"])
                .args(packages),
        )?;
    }
    let bin = crate::target_dir(&root).join("release");
    let needed: &[&str] = if opts.workers_only {
        &["fluxlit"]
    } else {
        &["fluxlit", "fluxlit-bench-upstream", "fluxlit-bench-ws"]
    };
    for b in needed {
        if !bin.join(b).exists() {
            return Err(Failed(format!(
                "{} is missing; run without --no-build",
                bin.join(b).display()
            )));
        }
    }

    if let Some(minutes) = opts.soak {
        eprintln!("xtask bench: soak, {minutes} min");
        let r = soak::run(&bin, &work, minutes)?;
        let md = soak::markdown(&r);
        let js = serde_json::to_value(&r).unwrap_or_default();
        write_reports(&out_dir, "soak", &md, &js)?;
        println!("{md}");
        return if r.failures.is_empty() {
            Ok(())
        } else {
            Err(Failed(format!(
                "the soak failed: {}",
                r.failures.join("; ")
            )))
        };
    }

    if opts.auth_only {
        let (rounds, duration, warmup) = auth_window(&opts);
        let a = auth::run(&bin, &work, rounds, duration, warmup);
        let mut md = String::new();
        auth::markdown(&mut md, &a);
        println!("{md}");
        let missing = a.missing();
        return if missing.is_empty() {
            Ok(())
        } else {
            Err(Failed(format!(
                "the bench produced no numbers for: {}",
                missing.join(", ")
            )))
        };
    }

    if opts.workers_only {
        let w = workers::run(&bin, &root, &work, workers_window(&opts));
        let mut md = String::new();
        workers::markdown(&mut md, &w);
        println!("{md}");
        return match w.error {
            Some(e) => Err(Failed(format!("the workers measurement failed: {e}"))),
            None => Ok(()),
        };
    }

    if opts.shutdown_only {
        let sd = shutdown::run(&bin, &root, &work, shutdown_runs(&opts));
        let mut md = String::new();
        report::shutdown_markdown(&mut md, &sd);
        println!("{md}");
        return match sd.error {
            Some(e) => Err(Failed(format!("the shutdown measurement failed: {e}"))),
            None => Ok(()),
        };
    }

    let venv = peers::python_venv(&root);
    let python: std::result::Result<String, String> = if !opts.python {
        Err("--no-python".into())
    } else if opts.quick {
        peers::python_fluxlit_version(&venv).ok_or_else(|| {
            format!(
                "not installed in {} (--quick does not install it; a full `cargo xtask bench` does)",
                venv.display()
            )
        })
    } else {
        eprintln!("xtask bench: pip install fluxlit into {}", venv.display());
        peers::install_python(&venv)
    };

    let mut machine = machine(nofile);
    machine.background_cpu_before_pct = if opts.quick {
        foreign_cpu_pct(Duration::from_secs(1))
    } else {
        wait_quiet()
    };

    let mut results = Results::default();
    let outcome = measure(&opts, &bin, &work, &venv, python, nofile, &mut results);
    // Every process is stopped here (the rows and the upstream are dropped inside `measure`).
    if outcome.is_ok() {
        let runs = shutdown_runs(&opts);
        eprintln!(
            "xtask bench: shutdown on SIGTERM, idle and with Streamlit sessions open, {runs} runs each"
        );
        results.shutdown = Some(shutdown::run(&bin, &root, &work, runs));
        eprintln!("xtask bench: Streamlit-bound reruns with 1 and 2 workers");
        results.workers = Some(workers::run(&bin, &root, &work, workers_window(&opts)));
        eprintln!("xtask bench: authentication cost (auth_mode off, oidc, jwt)");
        let (rounds, duration, warmup) = auth_window(&opts);
        results.auth = Some(auth::run(&bin, &work, rounds, duration, warmup));
    }
    machine.background_cpu_after_pct = foreign_cpu_pct(Duration::from_secs(1));

    let method = Method {
        mode: if opts.quick { "quick" } else { "full" },
        command: std::iter::once("cargo xtask bench".to_owned())
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" "),
        rounds: opts.rounds,
        duration_s: opts.duration.as_secs_f64(),
        warmup_s: opts.warmup.as_secs_f64(),
        loadgen_threads: LOADGEN_THREADS,
        upstream_threads: opts.upstream_threads,
        ws_message_bytes: WS_MESSAGE_BYTES,
        tunnels_requested: opts.tunnels,
        started_utc,
        wall_s: started.elapsed().as_secs_f64(),
    };
    let md = report::markdown(&results, &machine, &method);
    let js = report::json(&results, &machine, &method);
    write_reports(&out_dir, method.mode, &md, &js)?;
    println!("{md}");
    outcome?;
    check_complete(&results)
}

/// The measured window per worker count: 5 s in a quick run, 20 s in a full one.
fn workers_window(opts: &Opts) -> Duration {
    Duration::from_secs(if opts.quick { 5 } else { 20 })
}

/// Rounds, seconds per row and warm-up of the authentication section: 2 × 2 s without warm-up in
/// a quick run (a single 1-second round, counted in 10 ms CPU ticks on a shared machine, is too
/// noisy for a difference between rows), else the run's own.
fn auth_window(opts: &Opts) -> (usize, Duration, Duration) {
    if opts.quick {
        (2, Duration::from_secs(2), Duration::ZERO)
    } else {
        (opts.rounds, opts.duration, opts.warmup)
    }
}

/// Stops timed per case: 3 in a quick run, 5 in a full one.
fn shutdown_runs(opts: &Opts) -> usize {
    if opts.quick { 3 } else { 5 }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; children inherit it. Returns it.
fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard
                && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            {
                eprintln!("xtask bench: cannot raise RLIMIT_NOFILE to {hard}: {e}");
                return soft;
            }
            hard
        }
        Err(e) => {
            eprintln!("xtask bench: cannot read RLIMIT_NOFILE: {e}");
            1024
        }
    }
}

fn ensure_apt() -> Result {
    crate::install_apt(BENCH_APT_PACKAGES)
}

/// Starts everything, runs every scenario and the tunnels, and stops everything (by dropping
/// the rows and the upstream, also on error).
fn measure(
    opts: &Opts,
    bin: &Path,
    work: &Path,
    venv: &Path,
    python: std::result::Result<String, String>,
    nofile: u64,
    results: &mut Results,
) -> Result {
    // Proxies hold two descriptors per tunnel (client side and upstream side).
    let proxy_conn_limit = nofile.saturating_sub(FD_RESERVE) / 2;
    let (mut upstream, up_port) = peers::start_upstream(bin, work, opts.upstream_threads)?;
    let mut rows: Vec<Row> = vec![Row {
        kind: Kind::Direct,
        port: up_port,
        proc: None,
        version: format!(
            "fluxlit-bench-upstream ({} tokio worker(s)) on 127.0.0.1:{up_port}",
            opts.upstream_threads
        ),
    }];
    rows.push(peers::start_fluxlit(bin, work, up_port)?);
    rows.push(peers::start_nginx(work, up_port, nofile, false)?);
    rows.push(peers::start_haproxy(
        work,
        up_port,
        proxy_conn_limit,
        false,
    )?);
    // Like for like with logging on (issue 15): FluxLit as deployed, the peers with their
    // access logs, each written to a file.
    let mut production = peers::start_fluxlit_with(
        bin,
        work,
        up_port,
        "fluxlit-production",
        soak::PRODUCTION_ENV,
    )?;
    production.kind = Kind::FluxlitProduction;
    rows.push(production);
    rows.push(peers::start_nginx(work, up_port, nofile, true)?);
    rows.push(peers::start_haproxy(work, up_port, proxy_conn_limit, true)?);
    let python_skip = match python {
        Ok(_) => match peers::start_python(venv, work, up_port) {
            Ok(row) => {
                rows.push(row);
                None
            }
            Err(Failed(e)) => Some(format!("did not start: {e}")),
        },
        Err(why) => Some(why),
    };
    for row in &rows {
        results.rows.push(RowInfo {
            kind: row.kind,
            label: row.kind.label(),
            version: row.version.clone(),
            skipped: None,
        });
    }
    if let Some(why) = python_skip {
        eprintln!("xtask bench: FluxLit for Python skipped: {why}");
        results.rows.push(RowInfo {
            kind: Kind::Python,
            label: Kind::Python.label(),
            version: String::new(),
            skipped: Some(why),
        });
    }

    let mut ours: Vec<i32> = rows.iter().filter_map(Row::pgid).collect();
    ours.push(upstream.pgid());
    let foreign = procs::ForeignCpu::new(ours);

    // Idle memory, after a moment to settle.
    std::thread::sleep(Duration::from_secs(1));
    for row in &rows {
        if let Some(pg) = row.pgid() {
            results.memory.insert(
                row.kind,
                Memory {
                    idle: procs::snapshot(pg),
                    ..Memory::default()
                },
            );
        }
    }

    // Every scenario, rows interleaved within each round.
    for sc in Scenario::ALL {
        if !opts.warmup.is_zero() {
            for row in rows.iter().filter(|r| r.kind.runs(sc)) {
                let direct = row.kind == Kind::Direct;
                let _ = load::run(sc, row.port, direct, opts.warmup, bin, work);
            }
        }
        for round in 0..opts.rounds {
            let n = rows.len();
            for i in 0..n {
                let row = &mut rows[(i + round) % n];
                if !row.kind.runs(sc) {
                    continue;
                }
                let server_pg = row.pgid().unwrap_or(upstream.pgid());
                // A run disturbed by other processes is repeated (full runs: up to twice, after
                // waiting up to 20 s for quiet); the least disturbed attempt is kept.
                let attempts = if opts.quick { 1 } else { 3 };
                let mut kept: Option<load::Sample> = None;
                let mut failure = None;
                for attempt in 0..attempts {
                    if !opts.quick {
                        wait_quiet_for(&foreign, Duration::from_secs(20));
                    }
                    let sampler = row.pgid().map(procs::RssSampler::start);
                    let t0 = (
                        Instant::now(),
                        foreign.ticks(),
                        procs::group_cpu_us(server_pg),
                    );
                    let direct = row.kind == Kind::Direct;
                    let outcome = load::run(sc, row.port, direct, opts.duration, bin, work);
                    let foreign_pct =
                        procs::ForeignCpu::percent(t0.1, foreign.ticks(), t0.0.elapsed());
                    if let Some(peak) = sampler.map(procs::RssSampler::finish)
                        && let Some(m) = results.memory.get_mut(&row.kind)
                    {
                        m.peak_load_rss_kib = m.peak_load_rss_kib.max(peak);
                    }
                    match outcome {
                        Ok(mut sample) => {
                            sample.foreign_cpu_pct = foreign_pct;
                            if sample.count > 0 {
                                #[allow(clippy::cast_precision_loss)]
                                let per_op = procs::group_cpu_us(server_pg).saturating_sub(t0.2)
                                    as f64
                                    / sample.count as f64;
                                sample.server_cpu_us_per_op = per_op;
                            }
                            print_sample(sc, round, opts.rounds, row.kind, &sample, attempt);
                            if kept
                                .as_ref()
                                .is_none_or(|k| sample.foreign_cpu_pct < k.foreign_cpu_pct)
                            {
                                kept = Some(sample);
                            }
                            failure = None;
                            if foreign_pct <= FOREIGN_CPU_WARN_PCT {
                                break;
                            }
                        }
                        Err(Failed(e)) => {
                            eprintln!("xtask bench: {} {}: failed: {e}", sc.id(), row.kind.label());
                            failure = Some(e);
                            break;
                        }
                    }
                }
                let cell = results.cells.entry((sc, row.kind)).or_default();
                if let Some(k) = kept {
                    cell.samples.push(k);
                }
                if let Some(e) = failure {
                    cell.failures.push(e);
                }
                row.check_alive()?;
                upstream.check_alive()?;
            }
        }
    }

    // Memory after the load, once pooled upstream connections had time to idle out
    // (FluxLit closes them after 4 s).
    std::thread::sleep(Duration::from_secs(5));
    for row in &rows {
        if let (Some(pg), Some(m)) = (row.pgid(), results.memory.get_mut(&row.kind)) {
            m.after_load = procs::snapshot(pg);
        }
    }

    // Idle tunnels, one proxy at a time.
    let tunnels = opts
        .tunnels
        .min(usize::try_from(proxy_conn_limit).unwrap_or(usize::MAX));
    if tunnels < opts.tunnels {
        results.tunnel_note = Some(format!(
            "{} tunnels requested, {tunnels} held: RLIMIT_NOFILE's hard limit here is {nofile} (CAP_SYS_RESOURCE is not available to raise it) and a proxy needs two descriptors per tunnel plus a reserve of {FD_RESERVE}; the RSS target is checked on a linear extrapolation to 10,000 (RSS before + per-tunnel growth × 10,000).",
            opts.tunnels
        ));
    }
    let (open_timeout, hold) = if opts.quick {
        (Duration::from_secs(30), Duration::from_secs(1))
    } else {
        (Duration::from_secs(120), Duration::from_secs(3))
    };
    for row in &mut rows {
        // The logging rows are about HTTP: a tunnel logs one line when it ends.
        if row.kind == Kind::Direct || row.kind.logs_requests() {
            continue;
        }
        eprintln!(
            "xtask bench: holding {tunnels} idle WebSocket tunnels through {}",
            row.kind.label()
        );
        let t = tunnels::run(row, tunnels, open_timeout, hold, bin, work);
        eprintln!(
            "xtask bench: {}: {} opened in {:.1} s, RSS {:.1} → {:.1} → {:.1} MiB, fds {} → {} → {}, released: {}{}",
            row.kind.label(),
            t.opened,
            t.open_s,
            t.before.rss_mib(),
            t.during.rss_mib(),
            t.after.rss_mib(),
            t.before.fds,
            t.during.fds,
            t.after.fds,
            t.released,
            t.error
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
        results.tunnels.insert(row.kind, t);
        row.check_alive()?;
        upstream.check_alive()?;
    }
    drop(rows);
    upstream.stop();
    Ok(())
}

fn print_sample(
    sc: Scenario,
    round: usize,
    rounds: usize,
    kind: Kind,
    sample: &load::Sample,
    attempt: usize,
) {
    let note = if sample.errors > 0 {
        format!(
            "  ({} errors: {})",
            sample.errors,
            sample.first_error.clone().unwrap_or_default()
        )
    } else if sample.foreign_cpu_pct > FOREIGN_CPU_WARN_PCT {
        format!(
            "  (other processes used {:.0} % of the machine)",
            sample.foreign_cpu_pct
        )
    } else {
        String::new()
    };
    let again = if attempt > 0 {
        format!(" again ({})", attempt + 1)
    } else {
        String::new()
    };
    eprintln!(
        "xtask bench: {} [{}/{}]{again} {:<18} {:>10.0} {} p50 {:>8.0} µs p99 {:>8.0} µs, {:.1} CPU µs/op{note}",
        sc.id(),
        round + 1,
        rounds,
        kind.label(),
        sample.rate,
        sc.unit(),
        sample.p50_us,
        sample.p99_us,
        sample.server_cpu_us_per_op,
    );
}

/// Waits (in 0.5 s windows, at most `max`) until other processes use at most
/// `FOREIGN_CPU_WARN_PCT` of the machine.
fn wait_quiet_for(foreign: &procs::ForeignCpu, max: Duration) {
    let start = Instant::now();
    loop {
        let t0 = foreign.ticks();
        std::thread::sleep(Duration::from_millis(500));
        let pct = procs::ForeignCpu::percent(t0, foreign.ticks(), Duration::from_millis(500));
        if pct <= FOREIGN_CPU_WARN_PCT || start.elapsed() >= max {
            return;
        }
    }
}

/// Fails when a required row lacks a number for some scenario or its tunnels failed.
fn check_complete(r: &Results) -> Result {
    let mut missing = Vec::new();
    for row in r.rows.iter().filter(|x| x.kind != Kind::Python) {
        for sc in Scenario::ALL.into_iter().filter(|sc| row.kind.runs(*sc)) {
            if r.summary(sc, row.kind).is_none() {
                missing.push(format!("{} / {}", sc.id(), row.label));
            }
        }
        if row.kind != Kind::Direct
            && !row.kind.logs_requests()
            && r.tunnels.get(&row.kind).is_none_or(|t| t.opened == 0)
        {
            missing.push(format!("idle tunnels / {}", row.label));
        }
    }
    match &r.shutdown {
        Some(sd) if sd.error.is_none() && !sd.idle_s.is_empty() && !sd.sessions_s.is_empty() => {}
        Some(sd) => missing.push(format!(
            "shutdown ({})",
            sd.error.as_deref().unwrap_or("no runs")
        )),
        None => missing.push("shutdown (not measured)".to_owned()),
    }
    match &r.workers {
        Some(w) if w.error.is_none() && w.rows.len() == workers::WORKER_COUNTS.len() => {}
        Some(w) => missing.push(format!(
            "Streamlit workers ({})",
            w.error.as_deref().unwrap_or("incomplete")
        )),
        None => missing.push("Streamlit workers (not measured)".to_owned()),
    }
    match &r.auth {
        Some(a) => missing.extend(a.missing()),
        None => missing.push("authentication cost (not measured)".to_owned()),
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Failed(format!(
            "the bench produced no numbers for: {}",
            missing.join(", ")
        )))
    }
}

fn write_reports(out: &Path, mode: &str, md: &str, js: &serde_json::Value) -> Result {
    let text = serde_json::to_string_pretty(js)
        .map_err(|e| Failed(format!("cannot render the JSON report: {e}")))?;
    for (path, body) in [
        (out.join(format!("{mode}.md")), md.to_owned()),
        (out.join(format!("{mode}.json")), text),
    ] {
        std::fs::write(&path, body)
            .map_err(|e| Failed(format!("cannot write {}: {e}", path.display())))?;
        eprintln!("xtask bench: wrote {}", path.display());
    }
    Ok(())
}

/// CPU used by processes other than the bench's over `window`, in percent of the machine.
fn foreign_cpu_pct(window: Duration) -> f64 {
    let f = procs::ForeignCpu::new(Vec::new());
    let t0 = f.ticks();
    std::thread::sleep(window);
    procs::ForeignCpu::percent(t0, f.ticks(), window)
}

/// Full runs wait (up to 10 minutes) for the machine to be quiet: other processes using less
/// than 10 % of it over 3 s. Returns the last reading.
fn wait_quiet() -> f64 {
    let start = Instant::now();
    loop {
        let pct = foreign_cpu_pct(Duration::from_secs(3));
        if pct < FOREIGN_CPU_WARN_PCT {
            return pct;
        }
        if start.elapsed() > Duration::from_secs(600) {
            eprintln!(
                "xtask bench: warning: other processes still use {pct:.0} % of the machine after 10 minutes; going on, numbers will be noisy"
            );
            return pct;
        }
        eprintln!(
            "xtask bench: other processes use {pct:.0} % of the machine; waiting for it to be quiet"
        );
    }
}

fn first_line(program: &str, args: &[&str]) -> String {
    peers::version_of(program, args)
}

fn machine(nofile: u64) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown CPU".to_owned(), |(_, v)| v.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(project_root())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let dirty = if git(&["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        ""
    } else {
        " (with uncommitted changes)"
    };
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        cpu_model,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        mem_total: format!("{:.1} GiB", procs::kib_to_mib(mem_kib) / 1024.0),
        rustc: first_line("rustc", &["--version"]),
        wrk: first_line("wrk", &["-v"]),
        git_commit: format!("{}{dirty}", git(&["rev-parse", "--short=12", "HEAD"])),
        nofile_limit: nofile,
        background_cpu_before_pct: 0.0,
        background_cpu_after_pct: 0.0,
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) without a date crate.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn quick_and_full_defaults() {
        let q = parse(&args(&["--quick"])).unwrap();
        assert!(q.quick);
        assert_eq!((q.rounds, q.duration.as_secs(), q.tunnels), (1, 1, 1_000));
        let f = parse(&args(&[])).unwrap();
        assert_eq!((f.rounds, f.duration.as_secs(), f.tunnels), (3, 5, 10_000));
        let o = parse(&args(&[
            "--rounds",
            "2",
            "--duration-s",
            "3",
            "--no-python",
        ]))
        .unwrap();
        assert_eq!((o.rounds, o.duration.as_secs(), o.python), (2, 3, false));
        assert!(parse(&args(&["--rounds", "0"])).is_err());
        assert!(parse(&args(&["--duration-s", "0"])).is_err());
        assert!(parse(&args(&["--bogus"])).is_err());
        let s = parse(&args(&["--quick", "--shutdown-only", "--no-build"])).unwrap();
        assert!(s.shutdown_only && !s.build);
        assert_eq!((shutdown_runs(&s), shutdown_runs(&f)), (3, 5));
        let a = parse(&args(&["--quick", "--auth-only"])).unwrap();
        assert!(a.auth_only && !a.workers_only && !a.shutdown_only);
        assert_eq!(auth_window(&a), (2, Duration::from_secs(2), Duration::ZERO));
        assert_eq!(
            auth_window(&f),
            (3, Duration::from_secs(5), Duration::from_secs(1))
        );
        assert!(!f.auth_only);
        let w = parse(&args(&["--quick", "--workers-only"])).unwrap();
        assert!(w.workers_only && !w.shutdown_only);
        assert_eq!(
            (workers_window(&w), workers_window(&f)),
            (Duration::from_secs(5), Duration::from_secs(20))
        );
        assert_eq!(parse(&args(&["--soak"])).unwrap().soak, Some(10.0));
        assert_eq!(parse(&args(&["--soak", "1"])).unwrap().soak, Some(1.0));
        let s = parse(&args(&["--soak", "--no-build"])).unwrap();
        assert_eq!((s.soak, s.build), (Some(10.0), false));
        assert!(parse(&args(&["--soak", "0"])).is_err());
        assert_eq!(f.soak, None);
    }

    #[test]
    fn utc_is_formatted() {
        let s = utc_now();
        assert_eq!(s.len(), 19, "{s}");
        assert!(s.starts_with("20"), "{s}");
    }

    #[test]
    fn medians() {
        assert!((report::median(&[3.0, 1.0, 2.0]) - 2.0).abs() < 1e-9);
        assert!((report::median(&[4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-9);
        assert!(report::median(&[]).is_nan());
    }

    #[test]
    fn peer_configs_point_at_the_upstream() {
        let n = peers::nginx_conf(Path::new("/tmp/x"), 8001, 9001, 20_000, false);
        assert!(n.contains("listen 127.0.0.1:8001"));
        assert!(n.contains("server 127.0.0.1:9001"));
        assert!(n.contains("worker_connections 22000;"), "{n}");
        assert!(n.contains("access_log off;"), "{n}");
        // The API scenario's prefix strip: `/api/x` reaches the upstream as `/x`.
        assert!(
            n.contains("location /api/ {\n            proxy_pass http://bench_upstream/;"),
            "{n}"
        );
        let logged = peers::nginx_conf(Path::new("/tmp/x"), 8001, 9001, 20_000, true);
        assert!(
            logged.contains("access_log /tmp/x/access.log bench_json;"),
            "{logged}"
        );
        let h = peers::haproxy_conf(8002, 9001, 9_968, false);
        assert!(h.contains("bind 127.0.0.1:8002"));
        assert!(h.contains("server up 127.0.0.1:9001"));
        assert!(h.contains("nbthread 1"));
        assert!(h.contains("http-request set-path %[path,regsub(^/api/,/)] if api"));
        assert!(!h.contains("httplog"));
        let hl = peers::haproxy_conf(8002, 9001, 9_968, true);
        assert!(hl.contains("log stdout format raw local0") && hl.contains("option httplog"));
    }
}
