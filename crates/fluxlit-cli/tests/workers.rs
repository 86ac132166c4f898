//! Several Streamlit workers behind one gateway (issue 17; `streamlit_workers`,
//! docs/scaling.md), with real Streamlit: sessions from one client IP, each client with its
//! own cookie jar as browsers have, are spread over the workers; each session's upload and
//! reconnect reach the worker that holds it; a worker killed with SIGKILL leaves the other
//! workers' sessions open and readiness at 200, and comes back. Each worker has its series
//! (sessions, placements, restarts, RSS), and the access log and debug ring name the worker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use fluxlit_testkit::streamlit::{RERUN_SCRIPT, session_id};
use fluxlit_testkit::{TempDir, eventually, process};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use support::{Fluxlit, request};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use support::Ws;

const WORKERS: usize = 3;
const SESSIONS: usize = 30;

/// A browser's cookies for the gateway's origin: name → value, from `Set-Cookie`.
#[derive(Debug, Default, Clone)]
struct Jar(Vec<(String, String)>);

impl Jar {
    fn take(&mut self, headers: &http::HeaderMap) {
        for v in headers.get_all("set-cookie") {
            let pair = v.to_str().unwrap().split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            self.0.retain(|(n, _)| n != name);
            self.0.push((name.to_owned(), value.to_owned()));
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn with(&self, name: &str, value: &str) -> Jar {
        let mut j = self.clone();
        j.0.retain(|(n, _)| n != name);
        j.0.push((name.to_owned(), value.to_owned()));
        j
    }
}

/// A client: its jar (the gateway's affinity cookie and Streamlit's XSRF cookie), its
/// session's WebSocket and id.
struct Client {
    jar: Jar,
    ws: Ws,
    session: String,
}

async fn get_with(gw: &Fluxlit, path: &str, jar: &mut Jar) -> (u16, String) {
    let cookie = jar.header();
    let headers: Vec<(&str, &str)> = if cookie.is_empty() {
        Vec::new()
    } else {
        vec![("cookie", cookie.as_str())]
    };
    let (status, h, body) = request("GET", &gw.url(path), &headers, Vec::new())
        .await
        .unwrap();
    jar.take(&h);
    (status, body)
}

/// Opens Streamlit's WebSocket with `jar`'s cookies and the protocols a browser offers
/// (`streamlit`, the XSRF token, and on reconnect the session id); returns it once the
/// session's first message named the session.
async fn open_session(gw: &Fluxlit, jar: &Jar, reconnect: Option<&str>) -> (Ws, String) {
    let mut req = format!("ws://{}/_stcore/stream", gw.addr)
        .into_client_request()
        .unwrap();
    let xsrf = jar
        .get("_streamlit_xsrf")
        .expect("an XSRF cookie")
        .to_owned();
    let protocols = match reconnect {
        Some(id) => format!("streamlit, {xsrf}, {id}"),
        None => format!("streamlit, {xsrf}"),
    };
    req.headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().unwrap());
    let cookie = jar.header();
    if !cookie.is_empty() {
        req.headers_mut().insert("cookie", cookie.parse().unwrap());
    }
    support::streamlit_session(req).await
}

/// A new client: the page (the gateway places it and sets its cookie), Streamlit's health
/// check (which sets the XSRF cookie, on the client's worker), then its session.
async fn new_client(gw: &Fluxlit) -> Client {
    let mut jar = Jar::default();
    let (status, _) = get_with(gw, "/", &mut jar).await;
    assert_eq!(status, 200);
    assert!(jar.get("fluxlit_worker").is_some(), "{jar:?}");
    let (status, body) = get_with(gw, "/_stcore/health", &mut jar).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (ws, session) = open_session(gw, &jar, None).await;
    Client { jar, ws, session }
}

async fn debug(gw: &Fluxlit) -> Value {
    let (status, _, body) = support::get(&gw.url("/__fluxlit/debug")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn metrics(gw: &Fluxlit) -> String {
    let (status, _, body) = support::get(&gw.url("/__fluxlit/metrics")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the series `line` (`name{labels}`) in a Prometheus rendering, if present.
fn series(render: &str, line: &str) -> Option<f64> {
    render
        .lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
}

async fn upload(gw: &Fluxlit, jar: &Jar, session: &str, file: &str) -> (u16, String) {
    let boundary = "fluxlitboundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{file}\"; filename=\"{file}\"\r\nContent-Type: text/plain\r\n\r\nhello {session}\r\n--{boundary}--\r\n"
    )
    .into_bytes();
    let url = gw.url(&format!("/_stcore/upload_file/{session}/{file}"));
    let ctype = format!("multipart/form-data; boundary={boundary}");
    let cookie = jar.header();
    let token = jar.get("_streamlit_xsrf").unwrap();
    let (s, _, text) = request(
        "PUT",
        &url,
        &[
            ("content-type", &ctype),
            ("cookie", &cookie),
            ("x-xsrftoken", token),
        ],
        body,
    )
    .await
    .unwrap();
    (s, text)
}

/// Whether a session's socket is still open and served: a rerun gets its answer (a new
/// `new_session` message; messages of the earlier run may still be queued before it).
async fn alive(ws: &mut Ws) -> bool {
    if ws
        .send(Message::Binary(Bytes::from_static(&RERUN_SCRIPT)))
        .await
        .is_err()
    {
        return false;
    }
    let answered = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) if session_id(&b).is_some() => return true,
                Some(Ok(Message::Close(_)) | Err(_)) | None => return false,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    answered.unwrap_or(false)
}

fn app_dir() -> TempDir {
    let dir = TempDir::new("workers");
    std::fs::write(
        dir.path().join("app.py"),
        "import streamlit as st\nst.write('hello from a worker')\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("fluxlit.toml"),
        format!("target = \"app.py\"\nstreamlit_workers = {WORKERS}\ndebug = true\n"),
    )
    .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_and_each_session_s_requests_reach_its_worker() {
    for fast in [true, false] {
        let env = [(
            "FLUXLIT_GATEWAY_FAST_PATH",
            if fast { "true" } else { "false" },
        )];
        let gw = Fluxlit::start_with_env(app_dir(), &[], &env).await;
        gw.wait_ready("/api/readyz").await;
        let streamlits: Vec<u32> = gw
            .children()
            .into_iter()
            .filter(|(_, c)| c.contains("streamlit"))
            .map(|(p, _)| p)
            .collect();
        assert_eq!(streamlits.len(), WORKERS, "{:?}", gw.children());
        // One server.cookieSecret for all (st.login's signed cookies validate on any worker),
        // generated for this start.
        let secrets: Vec<String> = streamlits
            .iter()
            .map(|p| {
                let environ = std::fs::read(format!("/proc/{p}/environ")).unwrap();
                environ
                    .split(|b| *b == 0)
                    .find_map(|kv| kv.strip_prefix(b"STREAMLIT_SERVER_COOKIE_SECRET="))
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .expect("the shared cookie secret")
            })
            .collect();
        assert_eq!(secrets[0].len(), 64);
        assert!(secrets.iter().all(|s| *s == secrets[0]), "{secrets:?}");
        let (_, _, body) = support::get(&gw.url("/api/readyz")).await.unwrap();
        let ready: Value = serde_json::from_str(&body).unwrap();
        for name in ["streamlit", "streamlit-1", "streamlit-2", "streamlit-3"] {
            assert_eq!(ready["components"][name], "ready", "{body}");
        }

        let mut clients = Vec::new();
        for _ in 0..SESSIONS {
            clients.push(new_client(&gw).await);
        }
        let d = debug(&gw).await;
        let open: Vec<u64> = d["gateway"]["ui_worker_sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(open.iter().sum::<u64>(), SESSIONS as u64, "{open:?}");
        let even = (SESSIONS / WORKERS) as u64;
        for n in &open {
            assert!(
                n.abs_diff(even) * 10 <= even * 3,
                "within ±30 % of {even}: {open:?}"
            );
        }

        // Every session's upload reaches its worker (Streamlit answers 400 "Invalid session_id"
        // anywhere else); half of them carry another worker's affinity cookie, and the session
        // id in the path still decides.
        for (i, c) in clients.iter().enumerate() {
            let mine: usize = c.jar.get("fluxlit_worker").unwrap().parse().unwrap();
            let jar = if i % 2 == 0 {
                c.jar.clone()
            } else {
                c.jar
                    .with("fluxlit_worker", &(mine % WORKERS + 1).to_string())
            };
            let (status, text) = upload(&gw, &jar, &c.session, &format!("f{i}")).await;
            assert_eq!(
                status,
                204,
                "upload {i} ({}): {text}",
                if fast { "fast" } else { "hyper" }
            );
        }

        // A reconnect naming its session, without the affinity cookie, returns to the worker
        // that holds it: Streamlit resumes the same session there.
        let mut c = clients.pop().unwrap();
        let _ = c.ws.close(None).await;
        drop(c.ws);
        let mut jar = c.jar.clone();
        jar.0.retain(|(n, _)| n != "fluxlit_worker");
        let (ws, again) = open_session(&gw, &jar, Some(&c.session)).await;
        assert_eq!(again, c.session, "the session was resumed on its worker");
        c.ws = ws;
        clients.push(c);
        for c in &mut clients {
            let _ = c.ws.close(None).await;
        }
        drop(gw);
        for p in streamlits {
            eventually(
                Duration::from_secs(20),
                "the workers to stop",
                || async move { process::group_members(p).is_empty().then_some(()) },
            )
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_leaves_the_others_sessions_open_and_comes_back() {
    let env = [("FLUXLIT_ENABLE_GATEWAY_PROMETHEUS_METRICS", "true")];
    let gw = Fluxlit::start_with_env(app_dir(), &[], &env).await;
    gw.wait_ready("/api/readyz").await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(new_client(&gw).await);
    }
    // Per-worker series: the open sessions and placements add up to the clients', every
    // worker's RSS is sampled.
    let render = metrics(&gw).await;
    let sum = |name: &str| -> f64 {
        (1..=WORKERS)
            .filter_map(|w| series(&render, &format!("{name}{{worker=\"{w}\"}}")))
            .sum()
    };
    assert_eq!(sum("fluxlit_streamlit_worker_sessions"), 6.0, "{render}");
    assert!(
        sum("fluxlit_streamlit_worker_placements_total") >= 6.0,
        "{render}"
    );
    for w in 1..=WORKERS {
        let url = gw.url("/__fluxlit/metrics");
        let name = format!("fluxlit_streamlit_worker_rss_bytes{{worker=\"{w}\"}}");
        eventually(Duration::from_secs(20), "the RSS gauge", || {
            let (url, name) = (url.clone(), name.clone());
            async move {
                let (_, _, text) = support::get(&url).await.ok()?;
                series(&text, &name).filter(|b| *b > 10.0 * 1024.0 * 1024.0)
            }
        })
        .await;
    }
    // The access log and the debug ring name the worker of each session's WebSocket.
    let d = debug(&gw).await;
    let placed: Vec<&Value> = d["recent_dispatches"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["path"] == "/_stcore/stream")
        .collect();
    assert!(!placed.is_empty(), "{d}");
    for e in placed {
        assert!(
            (1..=WORKERS as u64).contains(&e["worker"].as_u64().unwrap_or(0)),
            "{d}"
        );
    }
    let workers: Vec<String> = clients
        .iter()
        .map(|c| format!(" worker={}", c.jar.get("fluxlit_worker").unwrap()))
        .collect();
    eventually(
        Duration::from_secs(10),
        "access-log lines naming each session's worker",
        || {
            let log = gw.log();
            let all = workers.iter().all(|w| {
                log.lines()
                    .any(|l| l.contains("WEBSOCKET /_stcore/stream 101") && l.ends_with(w.as_str()))
            });
            async move { all.then_some(()) }
        },
    )
    .await;
    let d = debug(&gw).await;
    let victim = d["sidecars"]["streamlit-2"]["pid"].as_u64().unwrap() as u32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Readiness holds (min_ready 1) and names the dead worker.
    let url = gw.url("/api/readyz");
    let body = eventually(
        Duration::from_secs(20),
        "readyz to report streamlit-2",
        || {
            let url = url.clone();
            async move {
                let (status, _, body) = support::get(&url).await.ok()?;
                assert_eq!(status, 200, "readiness holds with two workers: {body}");
                (!body.contains("\"streamlit-2\":\"ready\"")).then_some(body)
            }
        },
    )
    .await;
    assert!(body.contains("\"streamlit-1\":\"ready\""), "{body}");
    // The other workers' sessions are open and served; the dead worker's are gone.
    for c in &mut clients {
        let on_victim = c.jar.get("fluxlit_worker") == Some("2");
        assert_eq!(alive(&mut c.ws).await, !on_victim, "{:?}", c.jar);
    }
    // The worker comes back, on a new process.
    let url = gw.url("/api/readyz");
    eventually(
        Duration::from_secs(60),
        "streamlit-2 to be restarted",
        || {
            let url = url.clone();
            async move {
                let (status, _, body) = support::get(&url).await.ok()?;
                (status == 200 && body.contains("\"streamlit-2\":\"ready\"")).then_some(())
            }
        },
    )
    .await;
    let d = debug(&gw).await;
    let again = d["sidecars"]["streamlit-2"]["pid"].as_u64().unwrap() as u32;
    assert_ne!(again, victim);
    gw.log_line("the restart's log line", &["restarting sidecar"])
        .await;
    let render = metrics(&gw).await;
    assert_eq!(
        series(
            &render,
            "fluxlit_streamlit_worker_restarts_total{worker=\"2\"}"
        ),
        Some(1.0),
        "{render}"
    );
    assert_eq!(
        series(
            &render,
            "fluxlit_streamlit_worker_restarts_total{worker=\"1\"}"
        ),
        None,
        "{render}"
    );
    // Its clients reconnect (their cookie names it) and get a new session there.
    for c in clients
        .iter()
        .filter(|c| c.jar.get("fluxlit_worker") == Some("2"))
    {
        let (_ws, id) = open_session(&gw, &c.jar, Some(&c.session)).await;
        assert_ne!(id, c.session, "the killed worker's sessions are lost");
    }
    // `fluxlit doctor --live` lists the workers from readiness: all ready again.
    let (url, dir) = (gw.url("/"), TempDir::new("workers-doctor"));
    let path = dir.path().to_owned();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        support::run_subcommand(&path, "doctor", &["--live", &url, "--json"], &[])
    })
    .await
    .unwrap();
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    let row = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "live.workers")
        .unwrap_or_else(|| panic!("no live.workers row: {out}"))
        .clone();
    assert_eq!(row["status"], "PASS", "{row}");
    assert_eq!(
        row["detail"],
        "3 Streamlit workers, all ready: streamlit-1 ready, streamlit-2 ready, streamlit-3 ready",
        "{row}; exit {code}"
    );
}
