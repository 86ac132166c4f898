//! Streamlit-bound throughput with one and with two Streamlit workers (issue 17, "Benchmark";
//! docs/scaling.md): the release `fluxlit run` serves a script that spends about 50 ms of CPU
//! per run ([`CPU_MS`], `time.thread_time()`, so the GIL cannot hide it), and [`SESSIONS`]
//! concurrent sessions each send a rerun over Streamlit's WebSocket, wait for the run's
//! `script_finished` message and send the next. Reported per worker count: reruns per second
//! over the measured window and the p99 of a rerun's time from sending the request to the
//! `script_finished` message. One Python process runs one script at a time (the GIL), so with
//! two workers on two cores the rate should nearly double (target ≥ 1.7×) with p99 no worse.

use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite;

use super::procs::{Proc, command};
use super::shutdown::{Ws, connect_stream, wait_log};
use crate::{Failed, Result};
use fluxlit_testkit::streamlit::{RERUN_SCRIPT, script_finished};

/// CPU milliseconds the script spends per run.
pub(crate) const CPU_MS: u32 = 50;

/// Concurrent sessions (each one a tab that reruns as soon as its previous run finished).
pub(crate) const SESSIONS: usize = 8;

/// The worker counts compared.
pub(crate) const WORKER_COUNTS: [usize; 2] = [1, 2];

/// Target of the issue: reruns per second with two workers over one.
pub(crate) const TARGET_SPEEDUP: f64 = 1.7;

/// One worker count's measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct WorkersRow {
    pub(crate) workers: usize,
    pub(crate) reruns: usize,
    pub(crate) window_s: f64,
    pub(crate) reruns_per_s: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// Open sessions per worker when the window starts (every session open and past its
    /// first run), from the gateway's `ui_worker_sessions` (empty with one worker: there is no
    /// pool).
    pub(crate) sessions_per_worker: Vec<u64>,
}

/// The scenario's result.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct WorkersResult {
    pub(crate) rows: Vec<WorkersRow>,
    pub(crate) sessions: usize,
    pub(crate) cpu_ms: u32,
    pub(crate) error: Option<String>,
}

impl WorkersResult {
    /// Reruns per second with two workers over one, when both were measured.
    pub(crate) fn speedup(&self) -> Option<f64> {
        let rate = |n| {
            self.rows
                .iter()
                .find(|r| r.workers == n)
                .map(|r| r.reruns_per_s)
        };
        Some(rate(2)? / rate(1)?)
    }
}

/// Measures every count of [`WORKER_COUNTS`] for `window` each (after every session's first run).
pub(crate) fn run(bin: &Path, root: &Path, work: &Path, window: Duration) -> WorkersResult {
    let mut r = WorkersResult {
        sessions: SESSIONS,
        cpu_ms: CPU_MS,
        ..WorkersResult::default()
    };
    for n in WORKER_COUNTS {
        match one(bin, root, &work.join(format!("workers-{n}")), n, window) {
            Ok(row) => {
                eprintln!(
                    "xtask bench: {n} Streamlit worker(s), {SESSIONS} sessions: {:.1} reruns/s, p50 {:.0} ms, p99 {:.0} ms",
                    row.reruns_per_s, row.p50_ms, row.p99_ms
                );
                r.rows.push(row);
            }
            Err(Failed(e)) => {
                eprintln!("xtask bench: {n} Streamlit worker(s): failed: {e}");
                r.error = Some(e);
                return r;
            }
        }
    }
    r
}

fn app() -> String {
    format!(
        "import time\n\nimport streamlit as st\n\n\
         end = time.thread_time() + {CPU_MS} / 1000\n\
         while time.thread_time() < end:\n    pass\n\
         st.write(\"rerun done\")\n"
    )
}

fn one(
    bin: &Path,
    root: &Path,
    dir: &Path,
    workers: usize,
    window: Duration,
) -> Result<WorkersRow> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Failed(format!("cannot create {}: {e}", dir.display())))?;
    for (name, text) in [
        ("app.py", app()),
        (
            "fluxlit.toml",
            format!("target = \"app.py\"\nstreamlit_workers = {workers}\ndebug = true\n"),
        ),
    ] {
        std::fs::write(dir.join(name), text)
            .map_err(|e| Failed(format!("cannot write {}: {e}", dir.join(name).display())))?;
    }
    let venv_bin = root.join(".venv/bin");
    if !venv_bin.join("python").exists() {
        return Err(Failed(format!(
            "{} is missing: run `cargo xtask setup` (it creates the venv with Streamlit)",
            venv_bin.join("python").display()
        )));
    }
    let log = dir.join("fluxlit.log");
    let mut cmd = command(bin.join("fluxlit"));
    cmd.args(["run", "--port", "0"])
        .env("FLUXLIT_STREAMLIT_PYTHON", venv_bin.join("python"))
        .env(
            "PATH",
            format!(
                "{}:{}",
                venv_bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .current_dir(dir);
    let mut proc = Proc::spawn(&format!("fluxlit ({workers} workers)"), cmd, Some(&log))?;
    let addr = wait_log(&mut proc, &log, Duration::from_secs(60), |text| {
        let line = text
            .lines()
            .find(|l| l.contains("FluxLit is ready") && l.contains("url=http://"))?;
        let rest = line.split("url=http://").nth(1)?;
        Some(rest.split('/').next()?.to_owned())
    })?;
    wait_all_ready(&mut proc, &addr, workers)?;

    // Every session opens and finishes its first run, then all start together.
    let start = Arc::new(Barrier::new(SESSIONS + 1));
    let stop_at = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut handles = Vec::new();
    for _ in 0..SESSIONS {
        let (start, stop_at, addr) = (start.clone(), stop_at.clone(), addr.clone());
        handles.push(std::thread::spawn(move || -> Result<Vec<Duration>> {
            let opened = open_session(&addr);
            start.wait();
            let mut ws = opened?;
            let stop_at = *stop_at.wait();
            let mut times = Vec::new();
            while Instant::now() < stop_at {
                let sent = Instant::now();
                rerun(&mut ws)?;
                // A run that ends after the window does not count (the rate is for the window).
                if Instant::now() <= stop_at {
                    times.push(sent.elapsed());
                }
            }
            let _ = ws.close(None);
            Ok(times)
        }));
    }
    start.wait();
    let began = Instant::now();
    let _ = stop_at.set(began + window);
    // Every session is open now (each waited at the barrier after its first run).
    let spread = sessions_per_worker(&addr);
    let mut times = Vec::new();
    let mut failed = None;
    for h in handles {
        match h.join() {
            Ok(Ok(t)) => times.extend(t),
            Ok(Err(Failed(e))) => failed = Some(e),
            Err(_) => failed = Some("a session thread panicked".to_owned()),
        }
    }
    if let Some(e) = failed {
        return Err(Failed(format!("{e}; log: {}", log.display())));
    }
    proc.stop();
    if times.is_empty() {
        return Err(Failed(format!(
            "no rerun finished within the window; log: {}",
            log.display()
        )));
    }
    let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1;
        ms[i]
    };
    let window_s = window.as_secs_f64();
    Ok(WorkersRow {
        workers,
        reruns: ms.len(),
        window_s,
        reruns_per_s: ms.len() as f64 / window_s,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        sessions_per_worker: spread,
    })
}

/// A `GET` on the gateway over a fresh connection (HTTP/1.0 style: read to the end); the body.
fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// Waits (60 s at most) until `{api}/readyz` reports every worker ready.
fn wait_all_ready(proc: &mut Proc, addr: &str, workers: usize) -> Result {
    let start = Instant::now();
    loop {
        let body = http_get(addr, "/api/readyz").unwrap_or_default();
        let ready = if workers == 1 {
            !body.is_empty()
        } else {
            (1..=workers).all(|i| body.contains(&format!("\"streamlit-{i}\":\"ready\"")))
        };
        if ready {
            return Ok(());
        }
        proc.check_alive()?;
        if start.elapsed() > Duration::from_secs(60) {
            return Err(Failed(format!(
                "not all {workers} workers were ready within 60 s: {body}"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `gateway.ui_worker_sessions` of `/__fluxlit/debug` (empty when absent).
fn sessions_per_worker(addr: &str) -> Vec<u64> {
    http_get(addr, "/__fluxlit/debug")
        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            v["gateway"]["ui_worker_sessions"]
                .as_array()
                .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
        })
        .unwrap_or_default()
}

/// Opens `ws://ADDR/_stcore/stream` ([`connect_stream`]) and completes the first run.
fn open_session(addr: &str) -> Result<Ws> {
    let mut ws = connect_stream(addr)?;
    rerun(&mut ws)?;
    Ok(ws)
}

/// Sends a rerun and reads until its `script_finished` message (each read bounded by 30 s).
fn rerun(ws: &mut Ws) -> Result {
    ws.send(tungstenite::Message::Binary(bytes::Bytes::from_static(
        &RERUN_SCRIPT,
    )))
    .map_err(|e| Failed(format!("sending a rerun: {e}")))?;
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Binary(b)) if script_finished(&b) => return Ok(()),
            Ok(tungstenite::Message::Close(f)) => {
                return Err(Failed(format!("the session was closed: {f:?}")));
            }
            Ok(_) => {}
            Err(e) => return Err(Failed(format!("reading a run's messages: {e}"))),
        }
    }
}

/// The section of the report: one row per worker count, and the speed-up against the target.
pub(crate) fn markdown(s: &mut String, r: &WorkersResult) {
    use std::fmt::Write as _;
    let _ = writeln!(
        s,
        "\n## Streamlit workers\n\n{} concurrent sessions rerunning a script that spends {} ms of CPU per run, through `fluxlit run` (release); rate over the window, latency from the rerun request to `script_finished`.\n\n| workers | reruns | reruns/s | p50 ms | p99 ms | sessions per worker |\n|---:|---:|---:|---:|---:|---|",
        r.sessions, r.cpu_ms
    );
    for row in &r.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.0} | {:.0} | {:?} |",
            row.workers,
            row.reruns,
            row.reruns_per_s,
            row.p50_ms,
            row.p99_ms,
            row.sessions_per_worker
        );
    }
    if let Some(x) = r.speedup() {
        let p99 = |n| {
            r.rows
                .iter()
                .find(|row| row.workers == n)
                .map(|row| row.p99_ms)
        };
        let p99_ok = matches!((p99(1), p99(2)), (Some(a), Some(b)) if b <= a);
        let _ = writeln!(
            s,
            "\nTwo workers: {x:.2}× the reruns/s of one (target ≥ {TARGET_SPEEDUP}×: {}); p99 {} (target: not worse).",
            if x >= TARGET_SPEEDUP { "met" } else { "missed" },
            if p99_ok { "not worse" } else { "worse" }
        );
    }
    if let Some(e) = &r.error {
        let _ = writeln!(s, "\n**The workers measurement failed:** {e}");
    }
}
