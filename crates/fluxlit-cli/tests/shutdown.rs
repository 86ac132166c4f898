//! Stopping `fluxlit run` with Streamlit sessions open (issue 12, item 1): a browser tab holds
//! a WebSocket that never ends by itself, so tunnels must not hold the stop. In-flight HTTP
//! still gets `graceful_shutdown_timeout_s`; once it is done, Streamlit is stopped at once and
//! closes its sessions with 1012 through the tunnels. Both engines: the browser's session goes
//! through the HTTP/1.1 fast path (the default), the scripted one through hyper
//! (`gateway_fast_path = false`).
//!
//! The grace period is 30 s here, so the behaviour before the fix (tunnels held the stop until
//! the grace period ended) fails the bound; the bound itself is generous for a loaded CI
//! machine. The 2 s / 1 s targets are measured by `cargo xtask bench` (docs/performance.md).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use fluxlit_testkit::cdp::Browser;

use fluxlit_testkit::{TempDir, eventually, process};
use futures_util::StreamExt;
use nix::sys::signal::Signal;
use support::{Fluxlit, get};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The grace period for in-flight HTTP: long, so that waiting for it cannot pass for stopping
/// at once.
const GRACE_S: &str = "30";

/// How long the stop may take once nothing but WebSocket sessions is left (regression guard;
/// the target is 2 s).
const STOP_BOUND: Duration = Duration::from_secs(6);

const API_TEXT: &str = "Hello from the FluxLit example API";

use support::Ws;

/// The sidecars' pids (each leads its own process group).
fn sidecars(gw: &Fluxlit) -> Vec<u32> {
    let pids: Vec<u32> = gw.children().into_iter().map(|(p, _)| p).collect();
    assert_eq!(pids.len(), 2, "streamlit and the API: {:?}", gw.children());
    pids
}

/// Nothing of the sidecars' process groups is left, and the pidfile is gone.
fn assert_nothing_left(gw: &Fluxlit, sidecars: &[u32]) {
    for &pid in sidecars {
        let left = process::group_members(pid);
        assert!(
            left.is_empty(),
            "the process group of {pid} outlived the gateway: {left:?}"
        );
    }
    assert!(!gw.pidfile.exists(), "pidfile removed\n{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_browser_session_open_stops_at_once() {
    let mut gw = Fluxlit::start_with_env(
        support::example_copy(),
        &[],
        &[("FLUXLIT_GRACEFUL_SHUTDOWN_TIMEOUT_S", GRACE_S)],
    )
    .await;
    gw.wait_ready("/api/readyz").await;
    let pids = sidecars(&gw);

    // A person's tab: the page rendered the data it fetched from the API, over its session.
    let mut browser = Browser::launch().await;
    let page = browser.open(&gw.url("/")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = browser.text(&page).await;
        if text.contains(API_TEXT) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page never showed the API's text; it shows: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let signalled = Instant::now();
    gw.signal(Signal::SIGTERM);
    let status = gw.wait_exit(STOP_BOUND).await;
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", gw.log());
    assert_nothing_left(&gw, &pids);
    let log = gw.log();
    // The session was open when the signal came, and it ended when Streamlit closed it (the
    // browser answers Streamlit's close frame; its answer may meet a socket Streamlit already
    // closed, which ends the tunnel with an error), not by the gateway's cut at the end.
    let stopping = gw
        .log_line("the drain's log line", &["stopped accepting"])
        .await;
    assert!(
        stopping.contains("websocket_tunnels=1") || stopping.contains("websocket_tunnels=2"),
        "{stopping}"
    );
    assert!(
        log.contains("websocket tunnel closed") || log.contains("websocket tunnel ended"),
        "{log}"
    );
    assert!(!log.contains("cut at shutdown"), "{log}");
    eprintln!("stopped {took:?} after SIGTERM with a browser session open");
}

/// Opens Streamlit's WebSocket through the gateway and waits until the session started.
async fn streamlit_session(gw: &Fluxlit) -> Ws {
    let mut req = format!("ws://{}/_stcore/stream", gw.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "streamlit".parse().unwrap());
    support::streamlit_session(req).await.0
}

/// How the WebSocket ended: `close Some(code)`, `error …` or `eof`.
async fn ws_end(ws: &mut Ws) -> String {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => {
                    return format!("close {:?}", f.map(|f| u16::from(f.code)));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return format!("error {e}"),
                None => return "eof".to_owned(),
            }
        }
    })
    .await
    .expect("the WebSocket ends when FluxLit stops")
}

/// An API whose `/slow` answers only once the file `slow-release` exists in its working
/// directory (it creates `slow-started` when the request arrives): a request held in flight as
/// long as the test wants, without timing.
const SLOW_API: &str = r#"import http.server, os, pathlib, time

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/slow"):
            pathlib.Path("slow-started").touch()
            while not pathlib.Path("slow-release").exists():
                time.sleep(0.02)
        body = b"done"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_and_then_sessions_do_not_hold_the_stop() {
    let dir = TempDir::new("shutdown");
    std::fs::write(
        dir.path().join("app.py"),
        "import streamlit as st\nst.write('session open')\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("slow_api.py"), SLOW_API).unwrap();
    std::fs::write(
        dir.path().join("fluxlit.toml"),
        "target = \"app.py\"\napi_command = \"python slow_api.py\"\n",
    )
    .unwrap();
    let mut gw = Fluxlit::start_with_env(
        dir,
        &[],
        &[
            ("FLUXLIT_GRACEFUL_SHUTDOWN_TIMEOUT_S", GRACE_S),
            // Every request on the hyper engine, tunnels included.
            ("FLUXLIT_GATEWAY_FAST_PATH", "false"),
        ],
    )
    .await;
    gw.wait_ready("/api/readyz").await;
    let pids = sidecars(&gw);
    let streamlit = gw.child_matching("streamlit");
    let mut ws = streamlit_session(&gw).await;

    // A request in flight when the signal comes...
    let url = gw.url("/api/slow");
    let slow = tokio::spawn(async move { get(&url).await });
    let started = gw.dir.path().join("slow-started");
    eventually(
        Duration::from_secs(20),
        "the slow request to arrive",
        || {
            let started = started.clone();
            async move { started.exists().then_some(()) }
        },
    )
    .await;
    gw.signal(Signal::SIGTERM);
    gw.log_line("the drain to start", &["stopped accepting"])
        .await;

    // ...holds the stop: accepting has stopped, but the gateway and Streamlit still run.
    assert!(
        tokio::net::TcpStream::connect(gw.addr).await.is_err(),
        "the listener is closed once the stop starts"
    );
    assert!(gw.child.try_wait().unwrap().is_none(), "{}", gw.log());
    assert!(
        process::pid_alive(streamlit),
        "Streamlit waits for the drain"
    );
    assert!(!slow.is_finished(), "the slow request is still in flight");

    // Once it completes, the open session does not hold the stop.
    std::fs::write(gw.dir.path().join("slow-release"), b"").unwrap();
    let released = Instant::now();
    let (status, _, body) = slow
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!((status, body.as_str()), (200, "done"));
    let exit = gw.wait_exit(STOP_BOUND).await;
    let took = released.elapsed();
    assert_eq!(exit.code(), Some(0), "{}", gw.log());
    assert_eq!(ws_end(&mut ws).await, "close Some(1012)", "{}", gw.log());
    assert_nothing_left(&gw, &pids);
    let log = gw.log();
    assert!(!log.contains("cut at shutdown"), "{log}");
    eprintln!("stopped {took:?} after the in-flight request completed");
}

/// Runs `fluxlit shutdown ARGS` in `dir` and returns (exit code, stdout).
async fn fluxlit_shutdown(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = support::command(dir, &["shutdown"]);
    cmd.args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run fluxlit shutdown"))
        .await
        .expect("join");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `fluxlit shutdown` (reference §1.5) stops a running gateway through its pidfile and returns
/// only once the gateway and both sidecars' process groups are gone.
#[tokio::test]
async fn fluxlit_shutdown_stops_the_gateway_and_waits_for_its_sidecars() {
    let mut gw = Fluxlit::start(&[]).await;
    gw.wait_ready("/api/readyz").await;
    let pidfile = gw.pidfile.clone();
    eventually(Duration::from_secs(10), "the pidfile", || {
        let written = pidfile.exists().then_some(());
        async move { written }
    })
    .await;
    let sidecars: Vec<u32> = gw.children().into_iter().map(|(p, _)| p).collect();
    assert_eq!(sidecars.len(), 2, "{:?}", gw.children());
    let pid_arg = gw.pidfile.display().to_string();
    let (code, out) =
        fluxlit_shutdown(gw.dir.path(), &["--pidfile", &pid_arg, "--wait", "20"]).await;
    assert_eq!(out, format!("Stopped process {}\n", gw.child.id()));
    assert_eq!(code, Some(0));
    // Gone when the command returned, not merely signalled.
    for s in &sidecars {
        assert!(
            process::group_members(*s).is_empty(),
            "sidecar group {s} still has {:?}",
            process::group_members(*s)
        );
    }
    assert!(!gw.pidfile.exists());
    assert_eq!(gw.wait_exit(Duration::from_secs(5)).await.code(), Some(0));

    // Nothing runs any more: no pidfile.
    let (code, out) = fluxlit_shutdown(gw.dir.path(), &["--pidfile", &pid_arg]).await;
    assert_eq!(out, format!("No pid file at {pid_arg}\n"));
    assert_eq!(code, Some(2));
}

/// A process that ignores SIGTERM: `--wait` ends with exit 1 and the hint; `--force` kills it.
/// The default pidfile comes from the configuration (`FLUXLIT_PIDFILE` here).
#[tokio::test]
async fn fluxlit_shutdown_reports_a_process_that_ignores_sigterm_and_force_kills_it() {
    let dir = TempDir::new("shutdown-force");
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import signal,sys,time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(120)",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read");
    assert_eq!(line.trim(), "ready");
    std::fs::write(dir.path().join("custom.pid"), format!("{}\n", child.id())).unwrap();
    let with_env = |args: &'static [&'static str]| {
        let mut cmd = support::command(dir.path(), &["shutdown"]);
        cmd.args(args).env("FLUXLIT_PIDFILE", "custom.pid");
        async move {
            let out = tokio::task::spawn_blocking(move || cmd.output().expect("run"))
                .await
                .expect("join");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        }
    };
    let (code, out) = with_env(&["--wait", "0.3"]).await;
    assert_eq!(
        out,
        format!(
            "Process {} still running after 0.3s (try --force)\n",
            child.id()
        )
    );
    assert_eq!(code, Some(1));
    assert!(child.try_wait().unwrap().is_none(), "still running");
    let (code, out) = with_env(&["--wait", "0.3", "--force"]).await;
    assert_eq!(out, format!("Killed process {}\n", child.id()));
    assert_eq!(code, Some(0));
    assert!(!dir.path().join("custom.pid").exists());
    assert!(child.wait().unwrap().code().is_none(), "killed by a signal");
}
