//! `cargo xtask bench --soak [MINUTES]` (default 10; `cargo xtask ci` runs 1): FluxLit as
//! people deploy it ("production": JSON access log on, written to a file, and Prometheus
//! metrics on) under a steady mixed load for MINUTES, with its memory and descriptors watched.
//!
//! Load, all at once through the one FluxLit in front of `fluxlit-bench-upstream`, 64 HTTP/1.1
//! connections and 16 WebSocket sessions:
//! - wrk, 32 connections, `GET /1k` (1 KiB bodies);
//! - wrk, 16 connections, `GET /100k` (100 KiB bodies);
//! - wrk, 16 connections, `POST /upload` (64 KiB bodies);
//! - `fluxlit-bench-ws echo`, 16 sessions, one 64 B message in flight on each.
//!
//! Every second the gateway's RSS (`VmRSS`) and open descriptors (`/proc/PID/fd`) are sampled.
//! Pass, all three:
//! - 0 errors in every load (non-2xx, connect/read/write errors, timeouts, short bodies);
//! - RSS flat after warm-up: the largest sample after the warm-up (the first fifth, at least
//!   10 s) is at most [`RSS_GROWTH_LIMIT`] (2 MiB) above the sample at its end;
//! - descriptors back to where they were before the load within [`FD_SETTLE`] after it ends
//!   (kept upstream connections close after 4 s idle).
//!
//! Every loop is bounded: the loads by their duration (plus a hard kill), the sampling by the
//! loads' end, the settle wait by [`FD_SETTLE`].

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::load::{self, Sample};
use super::peers::{self, Row};
use crate::{Failed, Result};

/// Largest allowed RSS growth after warm-up, bytes.
pub(crate) const RSS_GROWTH_LIMIT: u64 = 2 * 1024 * 1024;
/// How long descriptors may take to return to their count before the load.
const FD_SETTLE: Duration = Duration::from_secs(20);

/// One sample of the gateway process.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Point {
    /// Seconds since the load started.
    pub(crate) t_s: f64,
    /// Resident set size, bytes.
    pub(crate) rss: u64,
    /// Open descriptors.
    pub(crate) fds: u64,
}

/// One load's result.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct LoadResult {
    pub(crate) name: &'static str,
    pub(crate) sample: Option<Sample>,
    pub(crate) error: Option<String>,
}

/// The soak's result.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct SoakResult {
    pub(crate) minutes: f64,
    pub(crate) loads: Vec<LoadResult>,
    pub(crate) points: Vec<Point>,
    pub(crate) warmup_s: f64,
    pub(crate) rss_at_warmup: u64,
    pub(crate) rss_max_after_warmup: u64,
    pub(crate) fds_before: u64,
    pub(crate) fds_after: u64,
    pub(crate) failures: Vec<String>,
    /// Bytes of access log FluxLit wrote (to `fluxlit.log`, kept under [`LOG_CAP`]).
    pub(crate) log_bytes: u64,
    /// How often the log was emptied on reaching [`LOG_CAP`].
    pub(crate) log_truncations: u32,
}

/// Largest size of the soak's access log on disk before it is emptied, bytes (64 MiB).
const LOG_CAP: u64 = 64 * 1024 * 1024;

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn fd_count(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// FluxLit "production": access log on in JSON (stderr, which the bench writes to
/// `fluxlit.log`), metrics on, log level `info` (the access log's level: the bench's other
/// FluxLit rows run at `warn`).
pub(crate) const PRODUCTION_ENV: &[(&str, &str)] = &[
    ("FLUXLIT_LOG_LEVEL", "info"),
    ("FLUXLIT_ENABLE_GATEWAY_ACCESS_LOG", "true"),
    ("FLUXLIT_LOG_FORMAT", "json"),
    ("FLUXLIT_ENABLE_GATEWAY_PROMETHEUS_METRICS", "true"),
];

/// Runs the soak for `minutes` with the release binaries in `bin`, in `work`.
pub(crate) fn run(bin: &Path, work: &Path, minutes: f64) -> Result<SoakResult> {
    let duration = Duration::from_secs_f64(minutes * 60.0);
    let (mut upstream, up_port) = peers::start_upstream(bin, work, 1)?;
    let row = peers::start_fluxlit_with(bin, work, up_port, "fluxlit-production", PRODUCTION_ENV);
    let mut row: Row = match row {
        Ok(r) => r,
        Err(e) => {
            upstream.stop();
            return Err(e);
        }
    };
    let pid = row.proc.as_ref().map_or(0, |p| p.child.id());
    let port = row.port;
    let fds_before = fd_count(pid).unwrap_or(0);

    let (tx, rx) = mpsc::channel::<LoadResult>();
    let loads: [(&'static str, &'static str, usize, u64, bool); 3] = [
        ("GET 1 KiB, 32 connections", "/1k", 32, 1024, false),
        (
            "GET 100 KiB, 16 connections",
            "/100k",
            16,
            100 * 1024,
            false,
        ),
        ("POST 64 KiB, 16 connections", "/upload", 16, 0, true),
    ];
    let mut threads = Vec::new();
    for (i, (name, path, conns, min_bytes, post)) in loads.into_iter().enumerate() {
        let tx = tx.clone();
        let dir = work.join(format!("soak-load-{i}"));
        threads.push(std::thread::spawn(move || {
            let r = std::fs::create_dir_all(&dir)
                .map_err(|e| Failed(format!("cannot create {}: {e}", dir.display())))
                .and_then(|()| load::http(port, path, conns, min_bytes, post, duration, &dir, &[]));
            let _ = tx.send(result(name, r));
        }));
    }
    {
        let tx = tx.clone();
        let bin = bin.to_path_buf();
        threads.push(std::thread::spawn(move || {
            let r = load::run(load::Scenario::WsEcho16, port, false, duration, &bin, &bin);
            let _ = tx.send(result("WebSocket echo, 16 sessions", r));
        }));
    }
    drop(tx);

    let log = work.join("fluxlit-production/fluxlit.log");
    let mut log_truncations = 0u32;
    let mut log_bytes = 0u64;
    let started = Instant::now();
    let mut points = Vec::new();
    let mut results = Vec::new();
    while results.len() < threads.len() {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(r) => results.push(r),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        // The access log is written for real, but kept under LOG_CAP on disk (as logrotate's
        // copytruncate would): a minute writes hundreds of MB.
        if let Ok(m) = std::fs::metadata(&log)
            && m.len() > LOG_CAP
            && let Ok(f) = std::fs::OpenOptions::new().write(true).open(&log)
        {
            log_bytes += m.len();
            let _ = f.set_len(0);
            log_truncations += 1;
        }
        if let (Some(rss), Some(fds)) = (rss_bytes(pid), fd_count(pid)) {
            points.push(Point {
                t_s: started.elapsed().as_secs_f64(),
                rss,
                fds,
            });
        }
        if started.elapsed() > duration + Duration::from_secs(120) {
            break;
        }
    }
    for t in threads {
        let _ = t.join();
    }
    let settle = Instant::now();
    let mut fds_after = fd_count(pid).unwrap_or(u64::MAX);
    while fds_after > fds_before && settle.elapsed() < FD_SETTLE {
        std::thread::sleep(Duration::from_millis(200));
        fds_after = fd_count(pid).unwrap_or(u64::MAX);
    }
    log_bytes += std::fs::metadata(&log).map_or(0, |m| m.len());
    let alive = row.check_alive();
    if let Some(p) = row.proc.as_mut() {
        p.stop();
    }
    upstream.stop();

    let warmup_s = (duration.as_secs_f64() / 5.0).max(10.0);
    let rss_at_warmup = points
        .iter()
        .take_while(|p| p.t_s <= warmup_s)
        .last()
        .map_or(0, |p| p.rss);
    let rss_max_after_warmup = points
        .iter()
        .filter(|p| p.t_s > warmup_s)
        .map(|p| p.rss)
        .max()
        .unwrap_or(rss_at_warmup);
    let mut failures = Vec::new();
    if let Err(Failed(e)) = alive {
        failures.push(format!("FluxLit died during the soak: {e}"));
    }
    for l in &results {
        match (&l.sample, &l.error) {
            (_, Some(e)) => failures.push(format!("{}: {e}", l.name)),
            (Some(s), None) if s.errors > 0 => failures.push(format!(
                "{}: {} errors ({})",
                l.name,
                s.errors,
                s.first_error.clone().unwrap_or_default()
            )),
            _ => {}
        }
    }
    // At least one JSON access-log line per 10 HTTP requests (lines are ~300 bytes; WebSocket
    // sessions log at their ends only): the production configuration really logged.
    let operations: u64 = results
        .iter()
        .filter(|l| !l.name.starts_with("WebSocket"))
        .filter_map(|l| l.sample.as_ref().map(|s| s.count))
        .sum();
    if log_bytes < operations.saturating_mul(30) {
        failures.push(format!(
            "FluxLit production wrote {log_bytes} bytes of access log for {operations} operations: the access log is not on"
        ));
    }
    if results.len() < 4 {
        failures.push(format!("only {} of 4 loads reported", results.len()));
    }
    if rss_max_after_warmup > rss_at_warmup + RSS_GROWTH_LIMIT {
        failures.push(format!(
            "RSS grew by {:.2} MiB after warm-up (limit {:.0} MiB)",
            (rss_max_after_warmup - rss_at_warmup) as f64 / 1048576.0,
            RSS_GROWTH_LIMIT as f64 / 1048576.0
        ));
    }
    if fds_after > fds_before {
        failures.push(format!(
            "descriptors: {fds_before} before the load, {fds_after} {} s after it",
            FD_SETTLE.as_secs()
        ));
    }
    Ok(SoakResult {
        minutes,
        loads: results,
        points,
        warmup_s,
        rss_at_warmup,
        rss_max_after_warmup,
        fds_before,
        fds_after,
        failures,
        log_bytes,
        log_truncations,
    })
}

fn result(name: &'static str, r: Result<Sample>) -> LoadResult {
    match r {
        Ok(s) => LoadResult {
            name,
            sample: Some(s),
            error: None,
        },
        Err(Failed(e)) => LoadResult {
            name,
            sample: None,
            error: Some(e),
        },
    }
}

/// The soak as markdown.
pub(crate) fn markdown(r: &SoakResult) -> String {
    let mib = |b: u64| b as f64 / 1048576.0;
    let mut s = format!(
        "## Soak: FluxLit production (JSON access log to a file, metrics), {:.0} min\n\n\
         | load | operations | rate | p99 | errors |\n|---|---:|---:|---:|---:|\n",
        r.minutes
    );
    for l in &r.loads {
        match &l.sample {
            Some(x) => s.push_str(&format!(
                "| {} | {} | {:.0}/s | {:.0} µs | {} |\n",
                l.name, x.count, x.rate, x.p99_us, x.errors
            )),
            None => s.push_str(&format!(
                "| {} | – | – | – | failed: {} |\n",
                l.name,
                l.error.clone().unwrap_or_default()
            )),
        }
    }
    let first = r.points.first().map_or(0, |p| p.rss);
    let last = r.points.last().map_or(0, |p| p.rss);
    s.push_str(&format!(
        "\nRSS: {:.1} MiB at the start of the load, {:.1} MiB after warm-up ({:.0} s), at most {:.1} MiB after it (limit +{:.0} MiB), {:.1} MiB at the end; {} samples.\n\
         Descriptors: {} before the load, {} after it (peak {}).\n\
         Access log: {:.0} MiB of JSON lines written to the file (emptied {} times on reaching {:.0} MiB).\n\n**{}**\n",
        mib(first),
        mib(r.rss_at_warmup),
        r.warmup_s,
        mib(r.rss_max_after_warmup),
        mib(RSS_GROWTH_LIMIT),
        mib(last),
        r.points.len(),
        r.fds_before,
        r.fds_after,
        r.points.iter().map(|p| p.fds).max().unwrap_or(0),
        mib(r.log_bytes),
        r.log_truncations,
        mib(LOG_CAP),
        if r.failures.is_empty() {
            "PASS: 0 errors, RSS flat after warm-up, descriptors back".to_owned()
        } else {
            format!("FAIL: {}", r.failures.join("; "))
        }
    ));
    s
}
