//! Idle WebSocket tunnels: open N through a proxy, hold them, close them, and watch the
//! proxy's RSS, descriptors, sockets and threads before, during and after.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::peers::Row;
use super::procs::{Proc, Snapshot, command, snapshot};

/// Connections opened at the same time while setting up the tunnels.
const OPEN_CONCURRENCY: usize = 64;

/// What happened to one proxy.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct TunnelResult {
    pub(crate) requested: usize,
    pub(crate) opened: u64,
    /// Tunnels that still echoed a message after the idle hold.
    pub(crate) echoed: u64,
    pub(crate) closed_cleanly: u64,
    /// Time to open them all, in seconds.
    pub(crate) open_s: f64,
    pub(crate) before: Snapshot,
    pub(crate) during: Snapshot,
    pub(crate) after: Snapshot,
    /// Whether descriptors and sockets went back to (at most) their count before.
    pub(crate) released: bool,
    /// Time from the load tool's exit until they did (or until the check gave up), in
    /// seconds.
    pub(crate) release_s: f64,
    pub(crate) error: Option<String>,
}

fn read_event(
    rx: &mpsc::Receiver<String>,
    event: &str,
    timeout: Duration,
) -> Option<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let line = rx.recv_timeout(left).ok()?;
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v.get("event").and_then(|e| e.as_str()) == Some(event)
        {
            return Some(v);
        }
    }
}

fn n(v: &serde_json::Value, key: &str) -> u64 {
    v.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0)
}

/// Opens `conns` tunnels through `row`, holds them idle for `hold`, then closes them.
pub(crate) fn run(
    row: &Row,
    conns: usize,
    open_timeout: Duration,
    hold: Duration,
    bin: &Path,
    work: &Path,
) -> TunnelResult {
    let mut r = TunnelResult {
        requested: conns,
        ..TunnelResult::default()
    };
    let Some(pgid) = row.pgid() else {
        r.error = Some("not a proxy".into());
        return r;
    };
    r.before = snapshot(pgid);
    let mut cmd = command(bin.join("fluxlit-bench-ws"));
    cmd.args(["--url", &format!("ws://127.0.0.1:{}/ws", row.port)])
        .args(["--timeout-s", "30"])
        .arg("hold")
        .args(["--conns", &conns.to_string()])
        .args(["--concurrency", &OPEN_CONCURRENCY.to_string()])
        .args(["--open-timeout-s", &open_timeout.as_secs().to_string()])
        .args(["--max-hold-s", &(hold.as_secs() + 300).to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let log = work.join(format!(
        "tunnels-{}.log",
        row.kind.label().replace(' ', "-")
    ));
    if let Ok(f) = std::fs::File::create(&log) {
        cmd.stderr(f);
    }
    let mut tool = match Proc::spawn("fluxlit-bench-ws hold", cmd, None) {
        Ok(p) => p,
        Err(crate::Failed(e)) => {
            r.error = Some(e);
            return r;
        }
    };
    let (tx, rx) = mpsc::channel();
    if let Some(out) = tool.child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(out)
                .lines()
                .map_while(std::result::Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    let Some(open) = read_event(&rx, "open", open_timeout + Duration::from_secs(30)) else {
        r.error = Some(format!(
            "the load tool reported no opened tunnels within {} s",
            (open_timeout + Duration::from_secs(30)).as_secs()
        ));
        return r;
    };
    r.opened = n(&open, "opened");
    r.open_s = open
        .get("open_s")
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.0);
    // Let the proxy settle, then look at it with every tunnel idle.
    std::thread::sleep(hold);
    r.during = snapshot(pgid);
    if let Some(mut stdin) = tool.child.stdin.take() {
        let _ = stdin.write_all(b"close\n");
    }
    match read_event(&rx, "closed", Duration::from_secs(180)) {
        Some(closed) => {
            r.echoed = n(&closed, "echoed");
            r.closed_cleanly = n(&closed, "closed_cleanly");
        }
        None => r.error = Some("the load tool did not report closing within 180 s".into()),
    }
    let _ = tool.wait_timeout(Duration::from_secs(10));
    tool.stop();
    let start = Instant::now();
    loop {
        let s = snapshot(pgid);
        if s.fds <= r.before.fds && s.sockets <= r.before.sockets {
            r.released = true;
            break;
        }
        if start.elapsed() > Duration::from_secs(15) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    r.release_s = start.elapsed().as_secs_f64();
    // One more second for memory to be returned, then the "after" picture.
    std::thread::sleep(Duration::from_secs(1));
    r.after = snapshot(pgid);
    if r.released && (r.after.fds > r.before.fds || r.after.sockets > r.before.sockets) {
        r.released = false;
    }
    if r.opened < conns as u64 && r.error.is_none() {
        r.error = Some(format!("only {} of {conns} tunnels opened", r.opened));
    }
    r
}
