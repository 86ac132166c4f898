//! `fluxlit run` with a real Streamlit and a real uvicorn/FastAPI API (examples/hello), as a
//! user runs it: readiness, API calls, the UI over HTTP and WebSocket, uploads with XSRF on,
//! signals, crashes, and a gateway killed with SIGKILL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use fluxlit_testkit::streamlit::{RERUN_SCRIPT, session_id};
use fluxlit_testkit::{eventually, process};
use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::Signal;
use serde_json::Value;
use support::{Fluxlit, get, request};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const API_TEXT: &str = "Hello from the FluxLit example API";

use support::Ws;

/// Opens Streamlit's WebSocket through the gateway, asks for a script run, and returns the
/// socket, the session id and whether the app's API-derived text arrived.
async fn streamlit_session(gw: &Fluxlit, path: &str) -> (Ws, String) {
    let mut req = format!("ws://{}{}", gw.addr, path)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "streamlit".parse().unwrap());
    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("the WebSocket handshake through the gateway within 30 s")
    .expect("websocket handshake through the gateway");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "streamlit");
    ws.send(Message::Binary(Bytes::from_static(&RERUN_SCRIPT)))
        .await
        .unwrap();
    let mut sid = None;
    let mut saw_text = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !(saw_text && sid.is_some()) {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the app's content within 30 s")
            .expect("socket open")
            .unwrap();
        if let Message::Binary(b) = msg {
            if sid.is_none() {
                sid = session_id(&b);
            }
            saw_text |= b.windows(API_TEXT.len()).any(|w| w == API_TEXT.as_bytes());
        }
    }
    (ws, sid.expect("the loop ends only with a session id"))
}

// On a multi-thread runtime, so that the test's own client tasks (each request's connection,
// the WebSocket) run on more than one worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_example_and_stops_cleanly_on_sigterm() {
    let mut gw = Fluxlit::start(&[]).await;
    gw.wait_ready("/api/readyz").await;

    let (s, _, body) = get(&gw.url("/api/healthz")).await.unwrap();
    assert_eq!((s, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (s, _, body) = get(&gw.url("/api/readyz")).await.unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((s, v["status"].as_str()), (200, Some("ready")), "{body}");
    assert_eq!(v["components"]["streamlit"], "ready");
    assert_eq!(v["components"]["api"], "ready");

    let (s, _, body) = get(&gw.url("/api/hello")).await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["message"],
        API_TEXT
    );
    let (_, _, body) = get(&gw.url("/api/request-info")).await.unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["x-forwarded-prefix"], "/api");
    assert_eq!(v["host"], gw.addr.to_string());

    let (s, _, body) = get(&gw.url("/")).await.unwrap();
    assert_eq!(s, 200);
    assert!(
        body.contains("<noscript>") || body.to_lowercase().contains("streamlit"),
        "{body}"
    );
    let (s, _, body) = get(&gw.url("/_stcore/health")).await.unwrap();
    assert_eq!((s, body.as_str()), (200, "ok"));

    // The pidfile holds the gateway's pid once everything is ready.
    let pid_text = std::fs::read_to_string(&gw.pidfile).expect("pidfile written");
    assert_eq!(pid_text.trim(), gw.child.id().to_string());

    // A live WebSocket session that received the app's content...
    let (mut ws, _) = streamlit_session(&gw, "/_stcore/stream").await;
    let children: Vec<u32> = gw.children().into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        children.len(),
        2,
        "streamlit and the API: {:?}",
        gw.children()
    );

    // ...and SIGTERM: exit 0, the session is closed, nothing left behind, pidfile gone.
    gw.signal(Signal::SIGTERM);
    let status = gw.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", gw.log());
    let end = tokio::time::timeout(Duration::from_secs(10), async {
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
    .expect("the WebSocket ends when FluxLit stops");
    // Stopping Streamlit closes its sessions with 1012 (service restart); that close frame
    // must come through the tunnel, not be replaced by a bare disconnect.
    assert_eq!(end, "close Some(1012)", "{}", gw.log());
    for pid in children {
        assert!(
            !process::pid_alive(pid),
            "child {pid} ({}) outlived the gateway",
            process::cmdline(pid)
        );
    }
    assert!(!gw.pidfile.exists(), "pidfile removed");
}

#[tokio::test]
async fn root_path_works_for_both_proxy_shapes() {
    let gw = Fluxlit::start(&["--root-path", "/apps/my-app"]).await;
    gw.wait_ready("/apps/my-app/api/readyz").await;
    for path in ["/apps/my-app/api/hello", "/api/hello"] {
        let (s, _, body) = get(&gw.url(path)).await.unwrap();
        assert_eq!(s, 200, "{path}: {body}");
        assert!(body.contains(API_TEXT));
    }
    let (_, _, body) = get(&gw.url("/apps/my-app/api/request-info")).await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["x-forwarded-prefix"],
        "/apps/my-app/api"
    );
    for path in ["/apps/my-app/_stcore/health", "/_stcore/health"] {
        let (s, _, body) = get(&gw.url(path)).await.unwrap();
        assert_eq!((s, body.as_str()), (200, "ok"), "{path}");
    }
    for path in ["/apps/my-app/", "/"] {
        let (s, _, body) = get(&gw.url(path)).await.unwrap();
        assert_eq!(s, 200, "{path}: {body}");
    }
    // The full-path and the stripped shape both reach Streamlit's WebSocket.
    for path in ["/apps/my-app/_stcore/stream", "/_stcore/stream"] {
        let (mut ws, sid) = streamlit_session(&gw, path).await;
        assert!(!sid.is_empty(), "{path}");
        let _ = ws.close(None).await;
    }
}

#[tokio::test]
async fn uploads_pass_streamlit_xsrf_protection() {
    let gw = Fluxlit::start(&[]).await;
    gw.wait_ready("/api/readyz").await;
    let (_ws, sid) = streamlit_session(&gw, "/_stcore/stream").await;
    assert_eq!(sid.len(), 36, "session id: {sid:?}");
    // Streamlit sets its XSRF cookie on /_stcore/health; it must reach us unchanged.
    let (_, headers, _) = get(&gw.url("/_stcore/health")).await.unwrap();
    let cookie = headers
        .get("set-cookie")
        .expect("XSRF cookie")
        .to_str()
        .unwrap()
        .to_owned();
    let token = cookie
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("_streamlit_xsrf=")
        .expect("cookie name")
        .to_owned();
    let boundary = "fluxlitboundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"hello.txt\"; filename=\"hello.txt\"\r\nContent-Type: text/plain\r\n\r\nhello through the gateway\r\n--{boundary}--\r\n"
    )
    .into_bytes();
    let url = gw.url(&format!("/_stcore/upload_file/{sid}/test-file-1"));
    let ctype = format!("multipart/form-data; boundary={boundary}");
    let cookie_header = format!("_streamlit_xsrf={token}");
    let (s, _, text) = request(
        "PUT",
        &url,
        &[
            ("content-type", &ctype),
            ("cookie", &cookie_header),
            ("x-xsrftoken", &token),
        ],
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(s, 204, "upload with the token: {text}");
    let (s, _, text) = request(
        "PUT",
        &url,
        &[("content-type", &ctype), ("cookie", &cookie_header)],
        body,
    )
    .await
    .unwrap();
    assert_eq!(s, 403, "XSRF protection is on: {text}");
}

#[tokio::test]
async fn a_dead_sidecar_stops_the_gateway_with_an_error() {
    let mut gw = Fluxlit::start(&[]).await;
    gw.wait_ready("/api/readyz").await;
    let streamlit = gw.child_matching("streamlit");
    let api = gw.child_matching("uvicorn");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(streamlit as i32),
        Signal::SIGKILL,
    )
    .unwrap();
    let status = gw.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(1), "exit status {status:?}");
    let log = gw.log();
    assert!(log.contains("streamlit sidecar exited"), "{log}");
    assert!(log.contains("SIGKILL"), "{log}");
    eventually(
        Duration::from_secs(10),
        "the API to be stopped too",
        || async move { (!process::pid_alive(api)).then_some(()) },
    )
    .await;
    assert!(!gw.pidfile.exists());
}

#[tokio::test]
async fn a_killed_gateway_takes_its_sidecars_with_it() {
    let mut gw = Fluxlit::start(&[]).await;
    gw.wait_ready("/api/readyz").await;
    let children: Vec<u32> = gw.children().into_iter().map(|(p, _)| p).collect();
    assert_eq!(children.len(), 2, "{:?}", gw.children());
    gw.signal(Signal::SIGKILL);
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the gateway died of the SIGKILL: {status:?}"
    );
    for pid in children {
        eventually(
            Duration::from_secs(10),
            "sidecars to die with the gateway",
            || async move { (!process::pid_alive(pid)).then_some(()) },
        )
        .await;
    }
}

#[tokio::test]
async fn configuration_errors_are_reported_before_anything_starts() {
    let dir = support::example_copy();
    let out = support::command(dir.path(), &["run", "--port", "80x"])
        .env("FLUXLIT_API_MOUNT_PATH", "/")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gateway_port = \"80x\" (from command-line flag --port)"),
        "{err}"
    );
    assert!(
        err.contains("api_mount_path = \"/\" (from environment variable FLUXLIT_API_MOUNT_PATH)"),
        "{err}"
    );

    let out = support::command(dir.path(), &["run", "missing.py", "--port", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.py does not exist"), "{err}");

    let out = support::command(dir.path(), &["run", "--port", "0", "--", "--server.port=1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--server.port=1"));
}

#[tokio::test]
async fn a_browser_loads_the_app_and_uploads_a_file() {
    let gw = Fluxlit::start(&[]).await;
    gw.wait_ready("/api/readyz").await;
    let mut browser = fluxlit_testkit::cdp::Browser::launch().await;
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
    let file = gw.dir.path().join("hello.txt");
    std::fs::write(&file, b"uploaded by chromium").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while browser
        .eval(&page, "!!document.querySelector('input[type=file]')")
        .await
        != Value::Bool(true)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the file uploader never appeared: {}",
            browser.text(&page).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser
        .set_file_input(&page, "input[type=file]", &file)
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = browser.text(&page).await;
        if text.contains("Uploaded hello.txt: 20 bytes") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upload never showed; the page shows: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_second_signal_cuts_the_stop_short() {
    // An API that ignores SIGINT and SIGTERM: a graceful stop would take 2 × 20 s.
    let stubborn = "python -c \"import http.server, os, signal; signal.signal(signal.SIGINT, signal.SIG_IGN); signal.signal(signal.SIGTERM, signal.SIG_IGN); http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), http.server.SimpleHTTPRequestHandler).serve_forever()\"";
    let mut gw = Fluxlit::start_with_env(
        support::example_copy(),
        &[],
        &[
            ("FLUXLIT_API_COMMAND", stubborn),
            ("FLUXLIT_SIDECAR_STOP_TIMEOUT_S", "20"),
        ],
    )
    .await;
    gw.wait_ready("/api/readyz").await;
    let api = gw.child_matching("http.server");
    gw.signal(Signal::SIGTERM);
    let log = gw.log.clone();
    eventually(Duration::from_secs(20), "the API to be sent SIGINT", || {
        let log = log.clone();
        async move {
            log.lock()
                .ok()?
                .lines()
                .any(|l| l.contains("stopping sidecar") && l.contains("sidecar=api"))
                .then_some(())
        }
    })
    .await;
    gw.signal(Signal::SIGTERM);
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(1), "{}", gw.log());
    assert!(gw.log().contains("second signal"), "{}", gw.log());
    eventually(
        Duration::from_secs(5),
        "the stubborn API to be killed",
        || async move { (!process::pid_alive(api)).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn an_external_ui_upstream_replaces_streamlit() {
    let up = fluxlit_testkit::upstream::TestUpstream::start().await;
    let dir = fluxlit_testkit::TempDir::new("ui-upstream");
    let ui = format!("http://{}", up.addr);
    let gw = Fluxlit::start_with_env(
        dir,
        &["--ui-upstream", &ui],
        &[("FLUXLIT_GATEWAY_WORKER_THREADS", "3")],
    )
    .await;
    gw.wait_ready("/api/readyz").await;
    let (_, _, body) = get(&gw.url("/api/readyz")).await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["components"]["ui"],
        "ready",
        "{body}"
    );
    let (s, _, body) = get(&gw.url("/echo/x?y=1")).await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["uri"],
        "/echo/x?y=1"
    );
    assert!(
        gw.children().is_empty(),
        "no sidecar is started: {:?}",
        gw.children()
    );
    let workers = thread_names(gw.child.id())
        .iter()
        .filter(|n| *n == "tokio-rt-worker")
        .count();
    assert_eq!(workers, 3, "gateway_worker_threads = 3");
}

#[tokio::test]
async fn one_worker_thread_runs_the_gateway_on_the_main_thread() {
    let up = fluxlit_testkit::upstream::TestUpstream::start().await;
    let dir = fluxlit_testkit::TempDir::new("one-worker");
    let ui = format!("http://{}", up.addr);
    let gw = Fluxlit::start_with_env(
        dir,
        &["--ui-upstream", &ui],
        &[("FLUXLIT_GATEWAY_WORKER_THREADS", "1")],
    )
    .await;
    gw.wait_ready("/api/readyz").await;
    let (s, _, body) = get(&gw.url("/echo/one?y=1")).await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["uri"],
        "/echo/one?y=1"
    );
    let names = thread_names(gw.child.id());
    assert!(
        !names.iter().any(|n| n == "tokio-rt-worker"),
        "gateway_worker_threads = 1 is a current-thread runtime: {names:?}"
    );
}

/// The names of a process's threads (`/proc/PID/task/*/comm`).
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .collect()
}
