//! Rolling restarts without dropping tabs (issue 17; `fluxlit reload`, SIGHUP;
//! docs/scaling.md), with real Streamlit: two workers hold open sessions, the script changes
//! on disk, `fluxlit reload` starts a new generation. No request fails and readiness stays 200
//! throughout; the old sessions keep working on the old code until `streamlit_drain_timeout_s`,
//! new clients get the new code; then the old workers stop, their sessions reconnect to the
//! new generation and render the new code, and the old processes are gone. `fluxlit reload`
//! without a running instance says so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use fluxlit_testkit::streamlit::RERUN_SCRIPT;
use fluxlit_testkit::{TempDir, eventually, process};
use futures_util::{SinkExt, StreamExt};
use support::{Fluxlit, Watch, request, run_subcommand};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use support::Ws;

/// How long old sessions are kept after the reload (the test's drain deadline).
const DRAIN_S: u64 = 20;

/// A browser: its cookies (`name=value` pairs from `Set-Cookie`), its session's socket and id.
struct Tab {
    cookies: Vec<(String, String)>,
    ws: Ws,
    session: String,
}

fn cookie_header(cookies: &[(String, String)]) -> String {
    cookies
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

async fn get_with(gw: &Fluxlit, path: &str, cookies: &mut Vec<(String, String)>) -> u16 {
    let cookie = cookie_header(cookies);
    let headers: Vec<(&str, &str)> = if cookie.is_empty() {
        Vec::new()
    } else {
        vec![("cookie", cookie.as_str())]
    };
    let (status, h, _) = request("GET", &gw.url(path), &headers, Vec::new())
        .await
        .unwrap();
    for v in h.get_all("set-cookie") {
        let pair = v.to_str().unwrap().split(';').next().unwrap();
        let (name, value) = pair.split_once('=').unwrap();
        cookies.retain(|(n, _)| n != name);
        cookies.push((name.to_owned(), value.to_owned()));
    }
    status
}

fn cookie<'a>(cookies: &'a [(String, String)], name: &str) -> Option<&'a str> {
    cookies
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Opens the session's WebSocket as a browser does (the XSRF token, and on reconnect the
/// session id, as protocols), asks for a run, and returns once the session's id arrived.
async fn open(gw: &Fluxlit, cookies: &[(String, String)], reconnect: Option<&str>) -> (Ws, String) {
    let mut req = format!("ws://{}/_stcore/stream", gw.addr)
        .into_client_request()
        .unwrap();
    let xsrf = cookie(cookies, "_streamlit_xsrf").expect("an XSRF cookie");
    let protocols = match reconnect {
        Some(id) => format!("streamlit, {xsrf}, {id}"),
        None => format!("streamlit, {xsrf}"),
    };
    req.headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().unwrap());
    req.headers_mut()
        .insert("cookie", cookie_header(cookies).parse().unwrap());
    support::streamlit_session(req).await
}

/// Reads the session's messages until one carries `text` (the script's output): `false` when
/// the socket closed or 30 s passed first.
async fn shows(ws: &mut Ws, text: &str) -> bool {
    let wanted = text.as_bytes();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) if b.windows(wanted.len()).any(|w| w == wanted) => {
                    return true;
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return false,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .unwrap_or(false)
}

/// Asks for a rerun and waits for `text` in its output.
async fn rerun_shows(ws: &mut Ws, text: &str) -> bool {
    if ws
        .send(Message::Binary(Bytes::from_static(&RERUN_SCRIPT)))
        .await
        .is_err()
    {
        return false;
    }
    shows(ws, text).await
}

/// A new browser: the page (placed, cookie set), Streamlit's health check (the XSRF cookie),
/// its session.
async fn new_tab(gw: &Fluxlit) -> Tab {
    let mut cookies = Vec::new();
    assert_eq!(get_with(gw, "/", &mut cookies).await, 200);
    assert_eq!(get_with(gw, "/_stcore/health", &mut cookies).await, 200);
    let (ws, session) = open(gw, &cookies, None).await;
    Tab {
        cookies,
        ws,
        session,
    }
}

/// The app prints text from a module of its own: a running Streamlit keeps the module it
/// imported (its file watcher is off, as is usual in production), a new one reads the file.
fn app(dir: &TempDir, generation: &str) {
    std::fs::write(
        dir.path().join("app.py"),
        "import streamlit as st\nimport content\nst.write(content.TEXT)\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("content.py"),
        format!("TEXT = 'code of generation {generation}'\n"),
    )
    .unwrap();
}

fn streamlit_pids(gw: &Fluxlit) -> Vec<u32> {
    let mut pids: Vec<u32> = gw
        .children()
        .into_iter()
        .filter(|(_, c)| c.contains("streamlit"))
        .map(|(p, _)| p)
        .collect();
    pids.sort_unstable();
    pids
}

/// `fluxlit reload` for `gw` once its pidfile is written; its stdout (it must succeed).
async fn reload(gw: &Fluxlit) -> String {
    let pidfile = gw.pidfile.clone();
    eventually(Duration::from_secs(10), "the pidfile", || {
        let p = pidfile.clone();
        async move { p.exists().then_some(()) }
    })
    .await;
    let (code, out, err) = run_subcommand(
        gw.dir.path(),
        "reload",
        &["--pidfile", &gw.pidfile.display().to_string()],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_open_tabs_until_the_drain_deadline_then_moves_them_to_the_new_code() {
    let dir = TempDir::new("reload");
    app(&dir, "one");
    std::fs::write(
        dir.path().join("fluxlit.toml"),
        format!("target = \"app.py\"\nstreamlit_workers = 2\nstreamlit_drain_timeout_s = {DRAIN_S}\nstreamlit_run_cli_args = [\"--server.fileWatcherType\", \"none\"]\n"),
    )
    .unwrap();
    let gw = Fluxlit::start_with_env(dir, &[], &[]).await;
    gw.wait_ready("/api/readyz").await;
    let old = streamlit_pids(&gw);
    assert_eq!(old.len(), 2, "{:?}", gw.children());

    let mut tabs = Vec::new();
    for _ in 0..2 {
        let mut t = new_tab(&gw).await;
        assert!(shows(&mut t.ws, "code of generation one").await);
        tabs.push(t);
    }
    let mut on: Vec<&str> = tabs
        .iter()
        .map(|t| cookie(&t.cookies, "fluxlit_worker").unwrap())
        .collect();
    on.sort_unstable();
    assert_eq!(on, ["1", "2"], "one tab per worker");

    let watch = Watch::start(&gw);
    app(&gw.dir, "two");
    let out = reload(&gw).await;
    assert!(out.contains("Sent SIGHUP"), "{out}");
    let log = eventually(
        Duration::from_secs(90),
        "the new generation to serve",
        || {
            let log = gw.log();
            async move { (log.matches("new Streamlit worker serving").count() == 2).then_some(log) }
        },
    )
    .await;
    assert!(!log.contains("reload failed"), "{log}");

    // Old tabs keep their sessions on the old code; a new browser gets the new code on a new
    // worker (ids 3 and 4).
    for t in &mut tabs {
        assert!(
            rerun_shows(&mut t.ws, "code of generation one").await,
            "an old tab still works before the drain deadline"
        );
    }
    let mut fresh = new_tab(&gw).await;
    assert!(shows(&mut fresh.ws, "code of generation two").await);
    let id: usize = cookie(&fresh.cookies, "fluxlit_worker")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        id == 3 || id == 4,
        "new browsers go to the new generation: {id}"
    );

    // At the deadline the old workers stop (Streamlit closes the sockets) and are gone.
    for p in &old {
        let p = *p;
        eventually(
            Duration::from_secs(DRAIN_S + 60),
            "an old worker's processes to be gone",
            || async move { process::group_members(p).is_empty().then_some(()) },
        )
        .await;
    }
    let log = gw.log();
    assert_eq!(
        log.matches("streamlit_drain_timeout_s passed").count(),
        2,
        "{log}"
    );
    // The old tabs' reconnects name sessions the new workers do not know: they get new
    // sessions there, running the new code.
    for t in &mut tabs {
        let (mut ws, again) = open(&gw, &t.cookies, Some(&t.session)).await;
        assert_ne!(
            again, t.session,
            "the old session's state is lost at the deadline"
        );
        assert!(shows(&mut ws, "code of generation two").await);
        t.ws = ws;
    }
    let now = streamlit_pids(&gw);
    assert_eq!(now.len(), 2, "{:?}", gw.children());
    assert!(now.iter().all(|p| !old.contains(p)), "{now:?} {old:?}");

    let (polls, failed) = watch.finish().await;
    assert!(polls > 10, "the watch ran: {polls}");
    assert!(
        failed.is_empty(),
        "requests failed during the reload: {failed:?}"
    );
}

#[test]
fn reload_without_a_running_instance_says_so() {
    let dir = TempDir::new("reload-none");
    let (code, out, err) = run_subcommand(dir.path(), "reload", &[], &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("No pid file at"), "{err}");
    assert!(err.contains(".fluxlit.pid"), "{err}");
    std::fs::write(dir.path().join("gone.pid"), "999999999\n").unwrap();
    let (code, _, err) = run_subcommand(dir.path(), "reload", &["--pidfile", "gone.pid"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("is not running; nothing was reloaded"),
        "{err}"
    );
}

/// Memory recycling (`streamlit_worker_max_rss_bytes`) with one real worker and a limit every
/// Streamlit is above: the worker is replaced as in a rolling restart (a log line, the
/// recycles counter), its open tab keeps its session until the drain deadline, new tabs work,
/// the old process goes away, and no request fails meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_above_the_memory_limit_is_drained_and_replaced() {
    let dir = TempDir::new("recycle");
    app(&dir, "one");
    std::fs::write(
        dir.path().join("fluxlit.toml"),
        "target = \"app.py\"\nstreamlit_drain_timeout_s = 8\nstreamlit_run_cli_args = [\"--server.fileWatcherType\", \"none\"]\n",
    )
    .unwrap();
    let env = [
        ("FLUXLIT_STREAMLIT_WORKER_MAX_RSS_BYTES", "1MiB"),
        ("FLUXLIT_ENABLE_GATEWAY_PROMETHEUS_METRICS", "true"),
    ];
    let gw = Fluxlit::start_with_env(dir, &[], &env).await;
    gw.wait_ready("/api/readyz").await;
    // The first worker's process (sampling starts at once, so a replacement may be starting).
    let log = gw.log();
    let old: u32 = log
        .lines()
        .find(|l| l.contains("sidecar started") && l.contains("streamlit"))
        .and_then(|l| l.split("pid=").nth(1))
        .and_then(|p| p.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the first worker's pid in the log:\n{log}"));
    let mut tab = new_tab(&gw).await;
    assert!(shows(&mut tab.ws, "code of generation one").await);
    let watch = Watch::start(&gw);

    eventually(Duration::from_secs(90), "the worker to be replaced", || {
        let log = gw.log();
        async move {
            (log.contains("above streamlit_worker_max_rss_bytes")
                && log.contains("new Streamlit worker serving"))
            .then_some(())
        }
    })
    .await;
    // The tab keeps its session while its worker drains.
    assert!(
        rerun_shows(&mut tab.ws, "code of generation one").await,
        "the tab still works after the replacement"
    );
    let mut fresh = new_tab(&gw).await;
    assert!(shows(&mut fresh.ws, "code of generation one").await);
    eventually(
        Duration::from_secs(60),
        "the replaced worker's processes to be gone",
        || async move { process::group_members(old).is_empty().then_some(()) },
    )
    .await;
    let url = gw.url("/__fluxlit/metrics");
    eventually(Duration::from_secs(20), "the recycles counter", || {
        let url = url.clone();
        async move {
            let (_, _, text) = support::get(&url).await.ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix("fluxlit_streamlit_worker_recycles_total "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| *v >= 1.0)
        }
    })
    .await;
    let (polls, failed) = watch.finish().await;
    assert!(polls > 10, "the watch ran: {polls}");
    assert!(
        failed.is_empty(),
        "requests failed during recycling: {failed:?}"
    );
}

/// The pids of the Streamlit processes started so far, from the `sidecar started` log lines.
fn started_streamlits(log: &str) -> Vec<u32> {
    log.lines()
        .filter(|l| l.contains("sidecar started") && l.contains("streamlit"))
        .filter_map(|l| l.split("pid=").nth(1))
        .filter_map(|p| p.split(|c: char| !c.is_ascii_digit()).next())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// SIGTERM while the old worker drains (a tab holds it, the drain timeout is the default
/// 300 s) stops as fast as always: exit 0 within the usual bounds, nothing of the old or the
/// new generation left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_drain_stops_both_generations_at_once() {
    let dir = TempDir::new("reload-term");
    app(&dir, "one");
    std::fs::write(dir.path().join("fluxlit.toml"), "target = \"app.py\"\n").unwrap();
    let mut gw = Fluxlit::start_with_env(dir, &[], &[]).await;
    gw.wait_ready("/api/readyz").await;
    let mut tab = new_tab(&gw).await;
    assert!(shows(&mut tab.ws, "code of generation one").await);
    reload(&gw).await;
    eventually(Duration::from_secs(60), "the new worker to serve", || {
        let log = gw.log();
        async move { log.contains("new Streamlit worker serving").then_some(()) }
    })
    .await;
    let pids = started_streamlits(&gw.log());
    assert_eq!(pids.len(), 2, "{}", gw.log());
    assert!(
        rerun_shows(&mut tab.ws, "code of generation one").await,
        "the old worker drains with the tab's session"
    );
    gw.signal(nix::sys::signal::Signal::SIGTERM);
    let status = gw.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "{}", gw.log());
    for p in pids {
        eventually(
            Duration::from_secs(10),
            "every Streamlit process to be gone",
            || async move { process::group_members(p).is_empty().then_some(()) },
        )
        .await;
    }
}
