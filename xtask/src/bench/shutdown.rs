//! How long `fluxlit run` takes to stop on SIGTERM (issue 12, item 1): the release binary with
//! real Streamlit and the example API (examples/hello, the project's `.venv`), idle and with
//! Streamlit sessions open, several runs each. A run's time is from the SIGTERM until the
//! gateway has exited and every process of both sidecars' groups is gone; a run counts only
//! if the exit status is 0 and the pidfile is removed.

use std::net::TcpStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fluxlit_testkit::process;
use fluxlit_testkit::streamlit::RERUN_SCRIPT;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio_tungstenite::tungstenite;

use super::procs::{Proc, command};
use crate::{Failed, Result};

/// Streamlit sessions held open in the "open sessions" case (like three browser tabs).
pub(crate) const SESSIONS: usize = 3;

/// What the issue asks: gone within this after SIGTERM, idle and with sessions open.
pub(crate) const TARGET_IDLE_S: f64 = 1.0;
pub(crate) const TARGET_SESSIONS_S: f64 = 2.0;

/// The label of the last element examples/hello's page renders (after the data it fetched
/// from the API): once a session has received it, its script run is done and the tab is a
/// person looking at the page, with no request in flight.
const PAGE_DONE_TEXT: &[u8] = b"Upload a file";

/// The measured stops, in seconds, per case.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct ShutdownResult {
    pub(crate) idle_s: Vec<f64>,
    pub(crate) sessions_s: Vec<f64>,
    /// How each session of the "open sessions" runs ended, as the client saw it (e.g.
    /// `close 1012`), counted.
    pub(crate) session_ends: std::collections::BTreeMap<String, usize>,
    pub(crate) runs_requested: usize,
    pub(crate) error: Option<String>,
}

/// Runs the idle and open-sessions stops `runs` times each, alternating.
pub(crate) fn run(bin: &Path, root: &Path, work: &Path, runs: usize) -> ShutdownResult {
    let mut r = ShutdownResult {
        runs_requested: runs,
        ..ShutdownResult::default()
    };
    for i in 0..runs {
        for sessions in [0, SESSIONS] {
            match one(
                bin,
                root,
                &work.join(format!("shutdown-{i}-{sessions}")),
                sessions,
            ) {
                Ok((secs, ends)) => {
                    eprintln!(
                        "xtask bench: shutdown [{}/{runs}] with {sessions} session(s) open: {secs:.3} s{}",
                        i + 1,
                        if ends.is_empty() {
                            String::new()
                        } else {
                            format!(" (sessions ended: {})", ends.join(", "))
                        }
                    );
                    if sessions == 0 {
                        r.idle_s.push(secs);
                    } else {
                        r.sessions_s.push(secs);
                    }
                    for e in ends {
                        *r.session_ends.entry(e).or_default() += 1;
                    }
                }
                Err(Failed(e)) => {
                    eprintln!("xtask bench: shutdown with {sessions} session(s) open: failed: {e}");
                    r.error = Some(e);
                    return r;
                }
            }
        }
    }
    r
}

/// Starts the example, opens `sessions` Streamlit sessions, sends SIGTERM and times the stop.
/// Returns the seconds and how each session ended.
fn one(bin: &Path, root: &Path, dir: &Path, sessions: usize) -> Result<(f64, Vec<String>)> {
    copy_example(root, dir)?;
    let venv_bin = root.join(".venv/bin");
    if !venv_bin.join("python").exists() {
        return Err(Failed(format!(
            "{} is missing: run `cargo xtask setup` (it creates the venv with Streamlit)",
            venv_bin.join("python").display()
        )));
    }
    let pidfile = dir.join("run/fluxlit.pid");
    let log = dir.join("fluxlit.log");
    let mut cmd = command(bin.join("fluxlit"));
    cmd.args(["run", "--port", "0", "--pidfile"])
        .arg(&pidfile)
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
    let mut proc = Proc::spawn("fluxlit (shutdown)", cmd, Some(&log))?;
    let addr = wait_log(&mut proc, &log, Duration::from_secs(60), |text| {
        let line = text
            .lines()
            .find(|l| l.contains("FluxLit is ready") && l.contains("url=http://"))?;
        let rest = line.split("url=http://").nth(1)?;
        Some(rest.split('/').next()?.to_owned())
    })?;
    let sidecars = process::children_of(proc.child.id());
    if sidecars.len() != 2 {
        return Err(Failed(format!(
            "expected the Streamlit and API sidecars as children, found {sidecars:?}"
        )));
    }
    let (ended_tx, ended_rx) = mpsc::channel();
    for _ in 0..sessions {
        let ws = open_session(&addr)?;
        let tx = ended_tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send(read_until_end(ws));
        });
    }
    drop(ended_tx);

    let pid = Pid::from_raw(i32::try_from(proc.child.id()).unwrap_or(i32::MAX));
    let signalled = Instant::now();
    kill(pid, Signal::SIGTERM).map_err(|e| Failed(format!("cannot signal fluxlit: {e}")))?;
    let limit = Duration::from_secs(60);
    let status = loop {
        if let Some(s) = proc.exited() {
            break s;
        }
        if signalled.elapsed() > limit {
            return Err(Failed(format!(
                "fluxlit still running {} s after SIGTERM; log: {}",
                limit.as_secs(),
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    while sidecars
        .iter()
        .any(|&p| !process::group_members(p).is_empty())
    {
        if signalled.elapsed() > limit {
            return Err(Failed(format!(
                "sidecar processes outlived the gateway: {sidecars:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let secs = signalled.elapsed().as_secs_f64();
    if status.code() != Some(0) {
        return Err(Failed(format!(
            "fluxlit exited with {status} after SIGTERM; log: {}",
            log.display()
        )));
    }
    if pidfile.exists() {
        return Err(Failed(format!(
            "the pidfile {} was left behind",
            pidfile.display()
        )));
    }
    Ok((secs, ended_rx.iter().take(sessions).collect()))
}

/// Copies the files of `examples/hello` (not its subdirectories) into `dir`, so a run's
/// state (pidfile, logs) stays out of the repository.
pub(crate) fn copy_example(root: &Path, dir: &Path) -> Result {
    let example = root.join("examples/hello");
    std::fs::create_dir_all(dir)
        .map_err(|e| Failed(format!("cannot create {}: {e}", dir.display())))?;
    let entries = std::fs::read_dir(&example)
        .map_err(|e| Failed(format!("cannot read {}: {e}", example.display())))?;
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            let to = dir.join(entry.file_name());
            std::fs::copy(entry.path(), &to)
                .map_err(|e| Failed(format!("cannot copy {}: {e}", entry.path().display())))?;
        }
    }
    Ok(())
}

/// Polls the log every 20 ms until `find` returns something; fails if the process exits or
/// `timeout` passes.
pub(crate) fn wait_log<T>(
    proc: &mut Proc,
    log: &Path,
    timeout: Duration,
    find: impl Fn(&str) -> Option<T>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(v) = find(&text) {
            return Ok(v);
        }
        proc.check_alive()
            .map_err(|Failed(e)| Failed(format!("{e}; log: {}", log.display())))?;
        if start.elapsed() > timeout {
            return Err(Failed(format!(
                "fluxlit was not ready within {} s; log: {}",
                timeout.as_secs(),
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) type Ws = tungstenite::WebSocket<TcpStream>;

/// Opens `ws://ADDR/_stcore/stream` with the subprotocol `streamlit`, as a browser does (each
/// read then bounded by 30 s).
pub(crate) fn connect_stream(addr: &str) -> Result<Ws> {
    let fail = |what: &str, e: &dyn std::fmt::Display| Failed(format!("session {what}: {e}"));
    let stream = TcpStream::connect(addr).map_err(|e| fail("connect", &e))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| fail("timeout", &e))?;
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{addr}/_stcore/stream"
    ))
    .map_err(|e| fail("request", &e))?;
    req.headers_mut().insert(
        "sec-websocket-protocol",
        http::HeaderValue::from_static("streamlit"),
    );
    let (ws, _) = tungstenite::client(req, stream).map_err(|e| fail("handshake", &e))?;
    Ok(ws)
}

/// Opens `ws://ADDR/_stcore/stream` ([`connect_stream`]), starts a script run and waits until
/// the page has been rendered ([`PAGE_DONE_TEXT`]; each read bounded by 30 s).
fn open_session(addr: &str) -> Result<Ws> {
    let fail = |what: &str, e: &dyn std::fmt::Display| Failed(format!("session {what}: {e}"));
    let mut ws = connect_stream(addr)?;
    ws.send(tungstenite::Message::Binary(bytes::Bytes::from_static(
        &RERUN_SCRIPT,
    )))
    .map_err(|e| fail("send", &e))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Binary(b))
                if b.windows(PAGE_DONE_TEXT.len()).any(|w| w == PAGE_DONE_TEXT) =>
            {
                return Ok(ws);
            }
            Ok(tungstenite::Message::Close(f)) => {
                return Err(Failed(format!(
                    "session closed before the page rendered: {f:?}"
                )));
            }
            Ok(_) if Instant::now() < deadline => {}
            Ok(_) => {
                return Err(Failed(format!(
                    "the page never rendered {:?} within 60 s",
                    String::from_utf8_lossy(PAGE_DONE_TEXT)
                )));
            }
            Err(e) => return Err(fail("reading the page", &e)),
        }
    }
}

/// Reads (answering the close handshake, as a browser does) until the session ends; returns
/// how: `close CODE`, `close (no code)`, `eof` or `error …`.
fn read_until_end(mut ws: Ws) -> String {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(Some(f))) => {
                let _ = ws.flush();
                return format!("close {}", u16::from(f.code));
            }
            Ok(tungstenite::Message::Close(None)) => return "close (no code)".to_owned(),
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return "eof".to_owned();
            }
            Err(e) => return format!("error {e}"),
        }
    }
}
