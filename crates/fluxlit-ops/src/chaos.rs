//! Chaos checks that start `fluxlit run` themselves: `chaos-sidecar-kill`,
//! `chaos-slow-upstream` and `chaos-graceful-shutdown`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::launch::{self, Gateway, Launch, TempDir};
use crate::net::{self, Http};
use crate::report::{Report, ms, round3};
use crate::soak::first_line;
use crate::upstream::{SlowTiming, SlowUpstream};
use crate::ws;

/// The text the example app (`examples/hello`) shows once its script called the API.
pub const HELLO_TEXT: &str = "Hello from the FluxLit example API";

/// How to start the gateway under test.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// The `fluxlit` binary.
    pub fluxlit: PathBuf,
    /// The app directory (copied to a temporary directory before each start), e.g.
    /// `examples/hello`.
    pub app_dir: PathBuf,
    /// Python with Streamlit (`FLUXLIT_STREAMLIT_PYTHON`); found next to the app when `None`.
    pub python: Option<PathBuf>,
    /// Bound for `/api/readyz` to answer 200 after a start, in seconds.
    pub ready_timeout_seconds: f64,
    /// Echo the gateway's log to stderr.
    pub verbose: bool,
}

/// Lines of the gateway's log printed to stderr when a chaos check fails.
const TAIL: usize = 40;

struct Prepared {
    _tmp: TempDir,
    dir: PathBuf,
    python: PathBuf,
}

fn prepare(opts: &GatewayOptions, tag: &str) -> Result<Prepared, String> {
    let python = launch::find_python(opts.python.as_deref(), &opts.app_dir)?;
    let tmp = TempDir::new(tag)?;
    let dir = tmp.path().join("app");
    launch::copy_app(&opts.app_dir, &dir)?;
    Ok(Prepared {
        _tmp: tmp,
        dir,
        python,
    })
}

fn base_args() -> Vec<String> {
    ["--host", "127.0.0.1", "--port", "0"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

/// Starts the gateway and waits for readiness; records both as checks.
async fn start_ready(
    report: &mut Report,
    launch: &Launch,
    ready_timeout: Duration,
    what: &str,
) -> Option<Gateway> {
    let gw = match launch.start(Duration::from_secs(30)).await {
        Ok(g) => g,
        Err(e) => {
            report.fail(format!("{what}: fluxlit starts"), e);
            return None;
        }
    };
    let http = Http::fresh(Duration::from_secs(5));
    let r = net::wait_status(
        &http,
        &net::join(&gw.base_url(), "/api/readyz"),
        200,
        ready_timeout,
    )
    .await;
    let ok = report.check(
        format!("{what}: /api/readyz 200"),
        r.is_ok(),
        match &r {
            Ok(_) => format!("after {:.1} s", gw.started.elapsed().as_secs_f64()),
            Err(e) => e.clone(),
        },
    );
    if !ok {
        eprintln!("[{}] fluxlit log:\n{}", report.name, gw.log_tail(TAIL));
        return None;
    }
    let mut gw = gw;
    gw.remember_tree();
    Some(gw)
}

/// Checks that no process of the gateway's tree is left (waiting up to 10 s).
async fn check_no_survivors(report: &mut Report, gw: &Gateway, what: &str) {
    let r = gw.wait_no_survivors(Duration::from_secs(10)).await;
    report.check(
        format!("{what}: no process of its tree left"),
        r.is_ok(),
        match r {
            Ok(()) => format!(
                "none of {} processes (gateway and descendants) left",
                gw.seen().len() + 1
            ),
            Err(left) => launch::describe(&left),
        },
    );
}

fn exit_text(st: Option<std::process::ExitStatus>, waited: Duration) -> String {
    match st {
        Some(s) => format!("{s} after {:.1} s", waited.as_secs_f64()),
        None => format!("still running after {:.1} s", waited.as_secs_f64()),
    }
}

/// `chaos-sidecar-kill`: SIGKILL Streamlit under `sidecar_restart = exit` (the gateway must
/// exit non-zero within 30 s, leaving nothing behind), then under `restart` (readiness 503,
/// then 200 with a new Streamlit; SIGTERM then exits 0).
pub async fn sidecar_kill(opts: &GatewayOptions) -> Report {
    let mut report = Report::new("chaos-sidecar-kill");
    let start = Instant::now();
    let ready_timeout = net::secs(opts.ready_timeout_seconds);
    let http = Http::fresh(Duration::from_secs(5));
    let mut exit_after = None;
    let mut back_after = None;

    // 1. sidecar_restart = exit.
    match prepare(opts, "sidecar-kill") {
        Err(e) => report.fail("prepare the app", e),
        Ok(app) => {
            let mut args = base_args();
            args.push("--no-pidfile".into());
            let l = Launch {
                bin: opts.fluxlit.clone(),
                dir: app.dir.clone(),
                args,
                env: vec![("FLUXLIT_SIDECAR_RESTART".into(), "exit".into())],
                python: Some(app.python.clone()),
                verbose: opts.verbose,
            };
            if let Some(mut gw) = start_ready(&mut report, &l, ready_timeout, "exit policy").await {
                match gw.child_matching("streamlit") {
                    None => report.fail(
                        "exit policy: find the Streamlit child",
                        format!("children: {:?}", crate::proc::children(gw.pid())),
                    ),
                    Some(st) => {
                        report.check(
                            "exit policy: find the Streamlit child",
                            true,
                            format!("pid {}", st.pid),
                        );
                        gw.remember_tree();
                        let t = Instant::now();
                        crate::proc::kill(st, Signal::SIGKILL);
                        let status = gw.wait_exit(Duration::from_secs(30)).await;
                        let waited = t.elapsed();
                        exit_after = Some(round3(waited.as_secs_f64()));
                        let ok = report.check(
                            "exit policy: the gateway exits non-zero within 30 s",
                            status.is_some_and(|s| !s.success()),
                            exit_text(status, waited),
                        );
                        check_no_survivors(&mut report, &gw, "exit policy").await;
                        if !ok {
                            eprintln!("[{}] fluxlit log:\n{}", report.name, gw.log_tail(TAIL));
                        }
                    }
                }
            }
        }
    }

    // 2. sidecar_restart = restart.
    match prepare(opts, "sidecar-restart") {
        Err(e) => report.fail("prepare the app", e),
        Ok(app) => {
            let mut args = base_args();
            args.push("--no-pidfile".into());
            let l = Launch {
                bin: opts.fluxlit.clone(),
                dir: app.dir.clone(),
                args,
                env: vec![("FLUXLIT_SIDECAR_RESTART".into(), "restart".into())],
                python: Some(app.python.clone()),
                verbose: opts.verbose,
            };
            if let Some(mut gw) =
                start_ready(&mut report, &l, ready_timeout, "restart policy").await
            {
                let readyz = net::join(&gw.base_url(), "/api/readyz");
                if let Some(old) = gw.child_matching("streamlit") {
                    let t = Instant::now();
                    crate::proc::kill(old, Signal::SIGKILL);
                    let r = net::wait_status(&http, &readyz, 503, Duration::from_secs(10)).await;
                    report.check(
                        "restart policy: /api/readyz 503 after the kill",
                        r.is_ok(),
                        match &r {
                            Ok(d) => format!("after {:.0} ms", ms(*d)),
                            Err(e) => e.clone(),
                        },
                    );
                    let r = net::wait_status(&http, &readyz, 200, ready_timeout).await;
                    back_after = Some(round3(t.elapsed().as_secs_f64()));
                    report.check(
                        "restart policy: /api/readyz 200 again",
                        r.is_ok(),
                        match &r {
                            Ok(_) => format!("{:.1} s after the kill", t.elapsed().as_secs_f64()),
                            Err(e) => e.clone(),
                        },
                    );
                    gw.remember_tree();
                    let new = gw.child_matching("streamlit");
                    report.check(
                        "restart policy: a new Streamlit process",
                        new.is_some_and(|n| n != old),
                        format!("old pid {}, new {:?}", old.pid, new.map(|n| n.pid)),
                    );
                    report.check(
                        "restart policy: the gateway kept running",
                        gw.try_status().is_none(),
                        gw.try_status()
                            .map_or_else(|| "running".to_owned(), |s| format!("exited: {s}")),
                    );
                    let h = http
                        .get(&net::join(&gw.base_url(), "/_stcore/health"))
                        .await;
                    report.check(
                        "restart policy: /_stcore/health 200 through the gateway",
                        h.as_ref().is_ok_and(|a| a.status == 200),
                        match h {
                            Ok(a) => format!("{} {}", a.status, first_line(&a.text())),
                            Err(e) => e,
                        },
                    );
                    let session = async {
                        let url = ws::stream_url(&gw.base_url())?;
                        let (mut s, _) = ws::connect(&url, Duration::from_secs(10)).await?;
                        let c = ws::rerun_and_wait(
                            &mut s,
                            None,
                            tokio::time::Instant::now() + Duration::from_secs(30),
                        )
                        .await?;
                        let _ = tokio::time::timeout(
                            Duration::from_secs(2),
                            futures_util::SinkExt::close(&mut s),
                        )
                        .await;
                        Ok::<_, String>(c)
                    }
                    .await;
                    report.check(
                        "restart policy: a new Streamlit session works through the gateway",
                        session.is_ok(),
                        match &session {
                            Ok(c) => format!("{} frames", c.frames),
                            Err(e) => e.clone(),
                        },
                    );
                    let t = Instant::now();
                    let sent = gw.signal(Signal::SIGTERM);
                    let status = gw.wait_exit(Duration::from_secs(30)).await;
                    report.check(
                        "restart policy: SIGTERM → exit 0",
                        sent.is_ok() && status.is_some_and(|s| s.code() == Some(0)),
                        exit_text(status, t.elapsed()),
                    );
                    check_no_survivors(&mut report, &gw, "restart policy").await;
                    if !report.pass() {
                        eprintln!("[{}] fluxlit log:\n{}", report.name, gw.log_tail(TAIL));
                    }
                } else {
                    report.fail(
                        "restart policy: find the Streamlit child",
                        format!("children: {:?}", crate::proc::children(gw.pid())),
                    );
                }
            }
        }
    }
    report.summary = format!(
        "exit policy: gateway exited {} s after SIGKILL of Streamlit; restart policy: ready again {} s after it",
        exit_after.map_or_else(|| "-".to_owned(), |x| format!("{x:.1}")),
        back_after.map_or_else(|| "-".to_owned(), |x| format!("{x:.1}")),
    );
    if let Some(x) = exit_after {
        report.set("exit_after_kill_s", x);
    }
    if let Some(x) = back_after {
        report.set("ready_again_after_kill_s", x);
    }
    report.elapsed = start.elapsed();
    report
}

/// Options of `chaos-slow-upstream`.
#[derive(Debug, Clone)]
pub struct SlowOptions {
    /// The `fluxlit` binary.
    pub fluxlit: PathBuf,
    /// `gateway_upstream_read_timeout_s` given to the gateway, in seconds.
    pub read_timeout_seconds: f64,
    /// How long the upstream waits before answering `/`, in seconds (must exceed the read
    /// timeout).
    pub delay_seconds: f64,
    /// Lines of the slow stream.
    pub chunks: usize,
    /// Pause between two lines of the stream, in seconds (the whole stream must outlast the
    /// read timeout).
    pub interval_seconds: f64,
    /// Echo the gateway's log to stderr.
    pub verbose: bool,
}

/// `chaos-slow-upstream`: a UI upstream slower than the read timeout gets 504 in about the
/// timeout; a stream whose body is slower than the timeout (headers at once) arrives whole.
pub async fn slow_upstream(opts: &SlowOptions) -> Report {
    let mut report = Report::new("chaos-slow-upstream");
    let start = Instant::now();
    let timing = SlowTiming {
        delay: net::secs(opts.delay_seconds),
        chunks: opts.chunks.clamp(2, 10_000),
        interval: net::secs(opts.interval_seconds),
    };
    let read_timeout = net::secs(opts.read_timeout_seconds);
    let stream_time = timing.interval * u32::try_from(timing.chunks - 1).unwrap_or(u32::MAX);
    if timing.delay <= read_timeout || stream_time <= read_timeout {
        report.fail(
            "options",
            format!(
                "the delay ({:.1} s) and the stream ({:.1} s) must both exceed the read timeout ({:.1} s)",
                timing.delay.as_secs_f64(),
                stream_time.as_secs_f64(),
                read_timeout.as_secs_f64()
            ),
        );
        return report;
    }
    let upstream = match SlowUpstream::start(timing).await {
        Ok(u) => u,
        Err(e) => {
            report.fail("start the slow upstream", e);
            return report;
        }
    };
    let tmp = match TempDir::new("slow-upstream") {
        Ok(t) => t,
        Err(e) => {
            report.fail("temporary directory", e);
            return report;
        }
    };
    let mut args = base_args();
    args.extend([
        "--no-pidfile".to_owned(),
        "--ui-upstream".to_owned(),
        format!("http://{}", upstream.addr),
    ]);
    let l = Launch {
        bin: opts.fluxlit.clone(),
        dir: tmp.path().to_path_buf(),
        args,
        env: vec![
            (
                "FLUXLIT_GATEWAY_UPSTREAM_READ_TIMEOUT_S".into(),
                format!("{}", read_timeout.as_secs_f64()),
            ),
            (
                "FLUXLIT_GATEWAY_WS_OPEN_TIMEOUT_S".into(),
                format!("{}", read_timeout.as_secs_f64()),
            ),
        ],
        python: None,
        verbose: opts.verbose,
    };
    let mut gw = match l.start(Duration::from_secs(30)).await {
        Ok(g) => g,
        Err(e) => {
            report.fail("fluxlit starts with --ui-upstream", e);
            return report;
        }
    };
    let base = gw.base_url();
    let http = Http::fresh(timing.delay + stream_time + Duration::from_secs(10));

    // 1. Slower than the read timeout: 504 after about the timeout, naming the setting.
    let mut gateway_timeout_ms = None;
    match http.get(&net::join(&base, "/")).await {
        Ok(a) => {
            gateway_timeout_ms = Some(ms(a.elapsed));
            let text = a.text();
            report.check(
                "GET / (upstream slower than the read timeout) → 504",
                a.status == 504,
                format!("{} {}", a.status, first_line(&text)),
            );
            report.check(
                "the 504 comes after about the read timeout, before the upstream answers",
                a.elapsed >= read_timeout.mul_f64(0.9) && a.elapsed < timing.delay,
                format!(
                    "after {:.0} ms (read timeout {:.0} ms, upstream delay {:.0} ms)",
                    ms(a.elapsed),
                    ms(read_timeout),
                    ms(timing.delay)
                ),
            );
            report.check(
                "the 504 body names gateway_upstream_read_timeout_s",
                text.contains("gateway_upstream_read_timeout_s"),
                first_line(&text),
            );
        }
        Err(e) => report.fail("GET / (upstream slower than the read timeout) → 504", e),
    }

    // 2. A stream slower than the read timeout, headers at once: never cut.
    let mut stream_ms = None;
    match http.get(&net::join(&base, "/stream")).await {
        Ok(a) => {
            stream_ms = Some(ms(a.elapsed));
            let want = timing.stream_body();
            report.check(
                "a slow stream (headers at once) arrives complete",
                a.status == 200 && a.text() == want,
                format!("{} with {} of {} bytes", a.status, a.body.len(), want.len()),
            );
            report.check(
                "the stream outlasted the read timeout",
                a.elapsed > read_timeout,
                format!(
                    "headers after {:.0} ms, body complete after {:.0} ms",
                    ms(a.headers_after),
                    ms(a.elapsed)
                ),
            );
        }
        Err(e) => report.fail("a slow stream (headers at once) arrives complete", e),
    }

    // 3. A WebSocket upgrade the upstream does not answer in time: 504 (ws open timeout).
    let upgrade = http::Request::get(net::join(&base, "/ws-slow"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(net::empty());
    match upgrade {
        Ok(req) => match http.send(req).await {
            Ok(a) => {
                let text = a.text();
                report.check(
                    "a WebSocket upgrade slower than gateway_ws_open_timeout_s → 504",
                    a.status == 504
                        && text.contains("gateway_ws_open_timeout_s")
                        && a.elapsed < timing.delay,
                    format!(
                        "{} after {:.0} ms: {}",
                        a.status,
                        ms(a.elapsed),
                        first_line(&text)
                    ),
                );
            }
            Err(e) => report.fail(
                "a WebSocket upgrade slower than gateway_ws_open_timeout_s → 504",
                e,
            ),
        },
        Err(e) => report.fail("build the upgrade request", e.to_string()),
    }

    // 4. The gateway is fine afterwards and stops cleanly.
    let r = net::wait_status(
        &Http::fresh(Duration::from_secs(5)),
        &net::join(&base, "/api/healthz"),
        200,
        Duration::from_secs(5),
    )
    .await;
    report.check(
        "/api/healthz 200 afterwards",
        r.is_ok(),
        r.err().unwrap_or_else(|| "200".into()),
    );
    gw.remember_tree();
    let t = Instant::now();
    let sent = gw.signal(Signal::SIGTERM);
    let status = gw.wait_exit(Duration::from_secs(30)).await;
    report.check(
        "SIGTERM → exit 0",
        sent.is_ok() && status.is_some_and(|s| s.code() == Some(0)),
        exit_text(status, t.elapsed()),
    );
    check_no_survivors(&mut report, &gw, "gateway").await;
    if !report.pass() {
        eprintln!("[{}] fluxlit log:\n{}", report.name, gw.log_tail(TAIL));
    }
    report.summary = format!(
        "read timeout {:.0} ms: GET / → 504 after {} ms; {}-line stream over {:.1} s complete after {} ms; slow upgrade → 504",
        ms(read_timeout),
        gateway_timeout_ms.map_or_else(|| "-".into(), |x| format!("{x:.0}")),
        timing.chunks,
        stream_time.as_secs_f64(),
        stream_ms.map_or_else(|| "-".into(), |x| format!("{x:.0}")),
    );
    if let Some(x) = gateway_timeout_ms {
        report.set("gateway_timeout_ms", x);
    }
    if let Some(x) = stream_ms {
        report.set("stream_ms", x);
    }
    report.set("read_timeout_ms", ms(read_timeout));
    report.elapsed = start.elapsed();
    report
}

/// What `chaos-graceful-shutdown` appends to the app's `api.py`: `GET /fluxlit-ops/slow`
/// (answers after `seconds`), `GET /fluxlit-ops/started` (how many slow requests have begun)
/// and `GET /fluxlit-ops/stream` (streams `chunks` lines over `seconds`).
pub const SLOW_ROUTES_PY: &str = r#"

# --- added by fluxlit-ops chaos-graceful-shutdown: requests that take a while ---
import asyncio as _fluxlit_ops_asyncio

from fastapi.responses import StreamingResponse as _FluxlitOpsStreamingResponse


_fluxlit_ops_started = 0


@app.get("/fluxlit-ops/slow", response_model=None)
async def _fluxlit_ops_slow(seconds: float = 1.0):
    """Answers after `seconds` (at most 30)."""
    global _fluxlit_ops_started
    _fluxlit_ops_started += 1
    await _fluxlit_ops_asyncio.sleep(max(0.0, min(seconds, 30.0)))
    return {"slept_s": seconds}


@app.get("/fluxlit-ops/started", response_model=None)
async def _fluxlit_ops_started_count():
    """How many slow requests have started (the harness waits on it instead of sleeping)."""
    return {"started": _fluxlit_ops_started}


@app.get("/fluxlit-ops/stream", response_model=None)
async def _fluxlit_ops_stream(seconds: float = 1.0, chunks: int = 10):
    """Streams `chunks` lines `chunk N` spread over `seconds` (at most 30)."""
    n = max(1, min(chunks, 1000))
    pause = max(0.0, min(seconds, 30.0)) / n

    async def body():
        for i in range(n):
            yield f"chunk {i}\n"
            await _fluxlit_ops_asyncio.sleep(pause)

    return _FluxlitOpsStreamingResponse(body(), media_type="text/plain")
"#;

/// Options of `chaos-graceful-shutdown`.
#[derive(Debug, Clone)]
pub struct GracefulOptions {
    /// The gateway under test.
    pub gateway: GatewayOptions,
    /// `graceful_shutdown_timeout_s` given to the gateway, in seconds.
    pub grace_seconds: f64,
    /// How long the in-flight requests take, in seconds (must be shorter than the grace).
    pub request_seconds: f64,
    /// Text the WebSocket session must receive before the signal.
    pub expect_text: Option<String>,
}

/// `chaos-graceful-shutdown`: SIGTERM while a slow request, a slow stream and a Streamlit
/// session are live. The request and the stream complete; the session stays open until they
/// are done and is then closed by Streamlit (1012) without waiting for the grace deadline
/// (sessions do not hold the stop); exit 0; nothing left; pidfile gone.
pub async fn graceful_shutdown(opts: &GracefulOptions) -> Report {
    let mut report = Report::new("chaos-graceful-shutdown");
    let start = Instant::now();
    let grace = net::secs(opts.grace_seconds);
    let req_time = net::secs(opts.request_seconds);
    if req_time + Duration::from_millis(500) >= grace {
        report.fail(
            "options",
            format!(
                "--request-seconds ({:.1}) must be at least 0.5 s shorter than --grace-seconds ({:.1})",
                req_time.as_secs_f64(),
                grace.as_secs_f64()
            ),
        );
        return report;
    }
    let app = match prepare(&opts.gateway, "graceful") {
        Ok(a) => a,
        Err(e) => {
            report.fail("prepare the app", e);
            return report;
        }
    };
    let api_py = app.dir.join("api.py");
    match std::fs::read_to_string(&api_py) {
        // `app = FastAPI(...)` or a subclass such as `FastAPIOffline(...)` (examples/hello).
        Ok(text) if text.lines().any(|l| l.starts_with("app = FastAPI")) => {
            if let Err(e) = std::fs::write(&api_py, format!("{text}{SLOW_ROUTES_PY}")) {
                report.fail("add the slow routes to api.py", e.to_string());
                return report;
            }
        }
        _ => {
            report.fail(
                "add the slow routes to api.py",
                format!(
                    "{} has no api.py defining a FastAPI `app` (use an app like examples/hello)",
                    opts.gateway.app_dir.display()
                ),
            );
            return report;
        }
    }
    let pidfile = app.dir.join("run/fluxlit.pid");
    let mut args = base_args();
    args.extend(["--pidfile".to_owned(), pidfile.display().to_string()]);
    let l = Launch {
        bin: opts.gateway.fluxlit.clone(),
        dir: app.dir.clone(),
        args,
        env: vec![
            (
                "FLUXLIT_GRACEFUL_SHUTDOWN_TIMEOUT_S".into(),
                format!("{}", grace.as_secs_f64()),
            ),
            ("FLUXLIT_SIDECAR_STOP_TIMEOUT_S".into(), "3".into()),
        ],
        python: Some(app.python.clone()),
        verbose: opts.gateway.verbose,
    };
    let Some(mut gw) = start_ready(
        &mut report,
        &l,
        net::secs(opts.gateway.ready_timeout_seconds),
        "start",
    )
    .await
    else {
        report.elapsed = start.elapsed();
        return report;
    };
    let base = gw.base_url();
    let pid_ok = net::poll(Duration::from_secs(5), Duration::from_millis(50), || {
        let p = pidfile.clone();
        async move {
            std::fs::read_to_string(p)
                .ok()
                .filter(|t| !t.trim().is_empty())
        }
    })
    .await;
    report.check(
        "pidfile written",
        pid_ok
            .as_deref()
            .is_some_and(|t| t.trim() == gw.pid().to_string()),
        pid_ok.as_deref().map_or_else(
            || "no pidfile within 5 s".to_owned(),
            |t| format!("holds {} (gateway {})", t.trim(), gw.pid()),
        ),
    );

    // A Streamlit session with content.
    let url = match ws::stream_url(&base) {
        Ok(u) => u,
        Err(e) => {
            report.fail("WebSocket URL", e);
            return report;
        }
    };
    let session = async {
        let (mut s, _) = ws::connect(&url, Duration::from_secs(10)).await?;
        ws::rerun_and_wait(
            &mut s,
            opts.expect_text.as_deref(),
            tokio::time::Instant::now() + Duration::from_secs(30),
        )
        .await?;
        Ok::<_, String>(s)
    }
    .await;
    let mut socket = match session {
        Ok(s) => {
            report.check("a Streamlit session received content", true, "ok");
            s
        }
        Err(e) => {
            report.fail("a Streamlit session received content", e);
            eprintln!("[{}] fluxlit log:\n{}", report.name, gw.log_tail(TAIL));
            return report;
        }
    };

    // In-flight work: a slow answer and a slow stream, both live when the signal is sent.
    let http = Http::fresh(grace + Duration::from_secs(30));
    let secs = req_time.as_secs_f64();
    let slow = {
        let http = http.clone();
        let url = net::join(&base, &format!("/api/fluxlit-ops/slow?seconds={secs}"));
        tokio::spawn(async move {
            let r = http.get(&url).await;
            (r, Instant::now())
        })
    };
    let chunks = 10;
    let want_stream: String = (0..chunks).map(|i| format!("chunk {i}\n")).collect();
    let (headers_tx, headers_rx) = tokio::sync::oneshot::channel::<()>();
    let stream = {
        let http = http.clone();
        let url = net::join(
            &base,
            &format!("/api/fluxlit-ops/stream?seconds={secs}&chunks={chunks}"),
        );
        tokio::spawn(async move {
            let r = async {
                let req = http::Request::get(&url)
                    .body(net::empty())
                    .map_err(|e| e.to_string())?;
                let (resp, headers_after) = http.open(req).await?;
                let _ = headers_tx.send(());
                let status = resp.status().as_u16();
                let body = http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .map_err(|e| format!("body cut: {}", net::error_chain(&e)))?
                    .to_bytes();
                Ok::<_, String>(net::Answer {
                    status,
                    headers: http::HeaderMap::new(),
                    body,
                    headers_after,
                    elapsed: Duration::ZERO,
                })
            }
            .await;
            (r, Instant::now())
        })
    };
    // The stream's headers prove it is being served; the API's count proves the slow request
    // is in its handler (both waited on, bounded; no fixed sleep).
    let live = tokio::time::timeout(Duration::from_secs(10), headers_rx).await;
    report.check(
        "the stream is live before the signal",
        matches!(live, Ok(Ok(()))),
        "its headers arrived",
    );
    let started_url = net::join(&base, "/api/fluxlit-ops/started");
    let probe = Http::fresh(Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(10);
    let slow_started = loop {
        let started = probe.get(&started_url).await.ok().is_some_and(|a| {
            serde_json::from_slice::<serde_json::Value>(&a.body)
                .ok()
                .and_then(|v| v["started"].as_u64())
                .is_some_and(|n| n >= 1)
        });
        if started || Instant::now() >= deadline {
            break started;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    report.check(
        "the slow request is in flight before the signal",
        slow_started,
        "the API counted it as started (waited up to 10 s)",
    );
    gw.remember_tree();
    let signalled = Instant::now();
    if let Err(e) = gw.signal(Signal::SIGTERM) {
        report.fail("send SIGTERM", e);
        return report;
    }
    let watcher = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(20);
        let end = ws::wait_end(&mut socket, deadline).await;
        drop(socket);
        end
    });
    // New connections after the signal (informational: the listener is closed at once):
    // asked once the gateway's readiness is no longer 200 (bounded), not after a fixed pause.
    let ready_url = net::join(&base, "/api/readyz");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && probe.get(&ready_url).await.is_ok_and(|a| a.status == 200) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let late = Http::fresh(Duration::from_secs(2))
        .get(&net::join(&base, "/api/healthz"))
        .await;
    let late_text = match late {
        Ok(a) => format!("answered {}", a.status),
        Err(e) => format!("refused ({})", e.chars().take(80).collect::<String>()),
    };
    let mut done_at = Vec::new();
    for (name, task, whole) in [
        (
            "the in-flight slow request completes",
            slow,
            Box::new(|t: &str| t.contains("\"slept_s\"")) as Box<dyn Fn(&str) -> bool + Send>,
        ),
        (
            "the in-flight stream completes",
            stream,
            Box::new(move |t: &str| t == want_stream),
        ),
    ] {
        match task.await {
            Ok((Ok(a), at)) => {
                done_at.push(at);
                let text = a.text();
                report.check(
                    name,
                    a.status == 200 && whole(&text) && at > signalled,
                    format!(
                        "{} {} bytes, {:.0} ms after SIGTERM",
                        a.status,
                        a.body.len(),
                        ms(at.saturating_duration_since(signalled))
                    ),
                );
            }
            Ok((Err(e), _)) => report.fail(name, e),
            Err(e) => report.fail(name, format!("task failed: {e}")),
        }
    }
    let last_done = done_at.iter().max().copied();
    let ended = watcher.await.ok().flatten();
    let mut closed_after = None;
    match &ended {
        Some(end) => {
            let after = end.at.saturating_duration_since(signalled);
            closed_after = Some(after);
            report.check(
                "the WebSocket stays open while the requests are in flight",
                last_done.is_none_or(|d| end.at >= d),
                format!(
                    "closed {:.0} ms after SIGTERM (grace {:.0} ms), requests done after {:?} ms",
                    ms(after),
                    ms(grace),
                    last_done.map(|d| ms(d.saturating_duration_since(signalled)))
                ),
            );
            let done_after =
                last_done.map_or(Duration::ZERO, |d| d.saturating_duration_since(signalled));
            report.check(
                "the WebSocket is closed by Streamlit (1012) within 5 s of the requests' end",
                after <= done_after + Duration::from_secs(5) && end.how.contains("1012"),
                format!("{} after {:.0} ms", end.how, ms(after)),
            );
        }
        None => report.fail(
            "the WebSocket is closed by Streamlit (1012) within 5 s of the requests' end",
            format!(
                "still open {:.0} s after SIGTERM",
                (grace + Duration::from_secs(20)).as_secs_f64()
            ),
        ),
    }
    let status = gw
        .wait_exit(grace + Duration::from_secs(3 * 2 + 2 + 10))
        .await;
    let exit_after = signalled.elapsed();
    report.check(
        "exit 0",
        status.is_some_and(|s| s.code() == Some(0)),
        exit_text(status, exit_after),
    );
    check_no_survivors(&mut report, &gw, "gateway").await;
    report.check(
        "pidfile removed",
        !pidfile.exists(),
        pidfile.display().to_string(),
    );
    report.check(
        "the drain ended with the requests, not at its deadline",
        !gw.log_contains("drain deadline reached")
            && gw.log_contains("in-flight requests done; stopping the sidecars"),
        "open WebSocket sessions do not hold the drain",
    );
    if !report.pass() {
        eprintln!("[{}] fluxlit log:\n{}", report.name, gw.log_tail(TAIL));
    }
    report.summary = format!(
        "grace {:.1} s: requests of {:.1} s done after {:?} ms, WebSocket {} after {} ms, exit after {:.1} s; new connection after SIGTERM {late_text}",
        grace.as_secs_f64(),
        req_time.as_secs_f64(),
        done_at
            .iter()
            .map(|d| ms(d.saturating_duration_since(signalled)).round())
            .collect::<Vec<_>>(),
        ended.as_ref().map_or("open", |e| e.how.as_str()),
        closed_after.map_or_else(|| "-".into(), |a| format!("{:.0}", ms(a))),
        exit_after.as_secs_f64(),
    );
    report.set("grace_s", grace.as_secs_f64());
    if let Some(a) = closed_after {
        report.set("websocket_closed_after_ms", ms(a));
    }
    report.set("exit_after_s", round3(exit_after.as_secs_f64()));
    report.set("new_connection_after_sigterm", late_text);
    report.elapsed = start.elapsed();
    report
}
