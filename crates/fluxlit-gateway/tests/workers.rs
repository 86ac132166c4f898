//! Several UI workers behind the gateway (`GatewayBuilder::ui_workers`, `pool.rs`), on both
//! engines, in front of recording upstreams: new clients are spread and get the affinity
//! cookie; a request with the cookie reaches its worker with the cookie taken out of `Cookie`
//! (every other byte kept); uploads and WebSocket reconnects that name a session reach the
//! worker that holds it, whatever the cookie says; with no worker ready, new clients get 503;
//! with one worker nothing of this happens. Each worker has its series (sessions, placements),
//! and the access log and the debug ring name the worker a request was placed on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use fluxlit_gateway::{ComponentState, Endpoint, Gateway, LogWriter, UiWorker, Upstream};
use fluxlit_testkit::raw::{RawClient, Recorded, RecordingUpstream, Reply};
use metrics_exporter_prometheus::PrometheusBuilder;
use support::{ENGINES, engine, start_on, up_at, within};
use tokio::sync::watch;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{Layer, fmt};

const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
const XSRF: &str = "_streamlit_xsrf=2|8a0b1c2d|%3D%22x%22|1700000000";

/// `ForwardMsg { new_session { initialize { session_id } } }`, serialised.
fn new_session_message(id: &str) -> Vec<u8> {
    let mut init = vec![0x32, id.len() as u8];
    init.extend_from_slice(id.as_bytes());
    let mut ns = vec![0x0a, init.len() as u8];
    ns.extend_from_slice(&init);
    let mut msg = vec![0x22, ns.len() as u8];
    msg.extend_from_slice(&ns);
    let mut frame = vec![0x82, msg.len() as u8];
    frame.extend_from_slice(&msg);
    frame
}

/// A Streamlit-like worker: `/app/_stcore/stream` upgrades and sends a `new_session` message
/// naming session `s{worker}-{connection}`; anything else is echoed.
async fn worker(n: usize) -> RecordingUpstream {
    RecordingUpstream::with(move |r: &Recorded| {
        if r.target == "/app/_stcore/stream" && r.has("upgrade") {
            let mut head = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {WS_ACCEPT}\r\nSec-WebSocket-Protocol: streamlit\r\n\r\n"
            )
            .into_bytes();
            head.extend(new_session_message(&format!("s{n}-{}", r.conn)));
            return Reply::raw(head);
        }
        fluxlit_testkit::raw::echo_line(r)
    })
    .await
}

struct Pool {
    workers: Vec<RecordingUpstream>,
    states: Vec<watch::Sender<ComponentState>>,
}

async fn pool(n: usize) -> (Pool, Vec<UiWorker>) {
    let mut workers = Vec::new();
    let mut states = Vec::new();
    let mut ui = Vec::new();
    for i in 1..=n {
        let w = worker(i).await;
        let (tx, rx) = watch::channel(ComponentState::Ready);
        ui.push(UiWorker {
            upstream: up_at(w.addr, "streamlit"),
            state: rx,
        });
        workers.push(w);
        states.push(tx);
    }
    (Pool { workers, states }, ui)
}

impl Pool {
    /// Which worker (1-based) got requests for `target`, and the requests.
    fn got(&self, target: &str) -> Vec<(usize, Recorded)> {
        self.workers
            .iter()
            .enumerate()
            .flat_map(|(i, w)| {
                w.requests()
                    .into_iter()
                    .filter(|r| r.target == target)
                    .map(move |r| (i + 1, r))
            })
            .collect()
    }
}

fn get(path: &str, cookie: Option<&str>) -> String {
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
    format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n{cookie}\r\n")
}

fn upgrade(cookie: Option<&str>, protocols: &str) -> String {
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
    format!(
        "GET /app/_stcore/stream HTTP/1.1\r\nHost: app.test\r\n{cookie}Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {protocols}\r\n\r\n"
    )
}

fn builder(ui: Vec<UiWorker>) -> fluxlit_gateway::GatewayBuilder {
    Gateway::builder().root_path("/app").ui_workers(ui)
}

async fn one(addr: std::net::SocketAddr, req: &str) -> fluxlit_testkit::raw::RawResponse {
    let mut c = RawClient::connect(addr).await;
    c.send(req.as_bytes()).await;
    within("a response", c.response(false))
        .await
        .expect("a response")
}

#[tokio::test]
async fn new_clients_are_spread_evenly_and_get_the_affinity_cookie() {
    for fast in ENGINES {
        let (p, ui) = pool(3).await;
        let gw = start_on(builder(ui), fast).await;
        let mut per = [0usize; 3];
        for i in 0..30 {
            let r = one(gw.addr, &get(&format!("/app/?c={i}"), Some(XSRF))).await;
            assert_eq!(r.status, 200, "{}", engine(fast));
            let cookie = r.get("set-cookie").expect("the affinity cookie");
            let id: usize = cookie
                .strip_prefix("fluxlit_worker=")
                .and_then(|c| c.split(';').next())
                .and_then(|n| n.parse().ok())
                .expect("a worker id");
            assert_eq!(
                cookie,
                format!("fluxlit_worker={id}; Path=/app/; HttpOnly; SameSite=Lax"),
                "{}",
                engine(fast)
            );
            let got = p.got(&format!("/app/?c={i}"));
            assert_eq!(got.len(), 1);
            assert_eq!(
                got[0].0,
                id,
                "{}: the cookie names the worker",
                engine(fast)
            );
            // Streamlit's cookie arrives as sent.
            assert_eq!(got[0].1.all("cookie"), [XSRF], "{}", engine(fast));
            per[id - 1] += 1;
        }
        assert_eq!(per, [10, 10, 10], "{}", engine(fast));
        gw.assert_engine(fast, 30, "placements");
    }
}

#[tokio::test]
async fn a_session_s_requests_reach_its_worker_whatever_the_cookie_says() {
    for fast in ENGINES {
        let (p, ui) = pool(3).await;
        let gw = start_on(builder(ui), fast).await;

        // The cookie picks the worker; it is cut out of `Cookie`, the rest kept byte for byte.
        let r = one(
            gw.addr,
            &get(
                "/app/static/js/main.js",
                Some(&format!("{XSRF}; fluxlit_worker=2; theme=\"dark\"")),
            ),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.get("set-cookie"), None, "{}", engine(fast));
        let got = p.got("/app/static/js/main.js");
        assert_eq!(got[0].0, 2, "{}", engine(fast));
        assert_eq!(
            got[0].1.all("cookie"),
            [format!("{XSRF}; theme=\"dark\"")],
            "{}",
            engine(fast)
        );
        // Only our cookie: the field goes.
        one(gw.addr, &get("/app/only-ours", Some("fluxlit_worker=2"))).await;
        let got = p.got("/app/only-ours");
        assert_eq!(got[0].0, 2);
        assert!(!got[0].1.has("cookie"), "{}: {:?}", engine(fast), got[0].1);

        // A WebSocket with worker 1's cookie: its first server message names the session.
        let mut ws = RawClient::connect(gw.addr).await;
        ws.send(upgrade(Some(&format!("{XSRF}; fluxlit_worker=1")), "streamlit, tok").as_bytes())
            .await;
        let r = within("101", ws.response(false)).await.expect("101");
        assert_eq!(r.status, 101, "{}", engine(fast));
        assert_eq!(r.get("set-cookie"), None);
        assert!(
            !ws.closed().await,
            "{}: the session's first message",
            engine(fast)
        );
        let session = "s1-0";
        assert_eq!(
            gw.gateway.ui_worker_sessions(),
            [1, 0, 0],
            "{}",
            engine(fast)
        );

        // Its upload, sent with another worker's cookie, reaches worker 1.
        let upload = format!("/app/_stcore/upload_file/{session}/file-1");
        let body = "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\nhi\r\n--b--\r\n";
        let req = format!(
            "PUT {upload} HTTP/1.1\r\nHost: app.test\r\nCookie: {XSRF}; fluxlit_worker=3\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let r = one(gw.addr, &req).await;
        assert_eq!(r.status, 200, "{}", engine(fast));
        assert_eq!(r.get("set-cookie"), None, "{}", engine(fast));
        let got = p.got(&upload);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 1, "{}: the session's worker", engine(fast));
        assert_eq!(got[0].1.body, body.as_bytes());
        assert_eq!(got[0].1.all("cookie"), [XSRF]);

        // A reconnect naming the session (third protocol entry), with no cookie: worker 1,
        // also after the first socket closed.
        drop(ws);
        let g = gw.gateway.clone();
        fluxlit_testkit::eventually(
            support::WAIT,
            "the closed session to be counted down",
            || {
                let open = g.ui_worker_sessions();
                async move { (open == [0, 0, 0]).then_some(()) }
            },
        )
        .await;
        let mut again = RawClient::connect(gw.addr).await;
        again
            .send(upgrade(None, &format!("streamlit, tok, {session}")).as_bytes())
            .await;
        let r = within("101", again.response(false)).await.expect("101");
        assert_eq!(r.status, 101, "{}", engine(fast));
        assert_eq!(r.get("set-cookie"), None, "{}", engine(fast));
        assert_eq!(
            p.got("/app/_stcore/stream")
                .iter()
                .map(|(w, _)| *w)
                .collect::<Vec<_>>(),
            [1, 1],
            "{}",
            engine(fast)
        );
        // Not upgrades: the protocol list means nothing; a placement and its cookie.
        let r = one(
            gw.addr,
            &format!("GET /app/_stcore/stream HTTP/1.1\r\nHost: app.test\r\nSec-WebSocket-Protocol: streamlit, tok, {session}\r\n\r\n"),
        )
        .await;
        assert!(r.get("set-cookie").is_some(), "{}", engine(fast));
    }
}

#[tokio::test]
async fn no_ready_worker_means_503_for_new_clients_but_cookies_still_reach_running_workers() {
    for fast in ENGINES {
        let (p, ui) = pool(2).await;
        let gw = start_on(builder(ui), fast).await;
        for s in &p.states {
            s.send_replace(ComponentState::NotReady("probe failed".into()));
        }
        let r = one(gw.addr, &get("/app/", None)).await;
        assert_eq!(r.status, 503, "{}", engine(fast));
        assert!(r.text().contains("no Streamlit worker"), "{}", r.text());
        // A worker that failed a probe still runs and holds its sessions.
        let r = one(gw.addr, &get("/app/held", Some("fluxlit_worker=2"))).await;
        assert_eq!(r.status, 200, "{}", engine(fast));
        assert_eq!(p.got("/app/held")[0].0, 2);
        // Worker 2 ready again: new clients go there, worker 1 is skipped.
        p.states[1].send_replace(ComponentState::Ready);
        for i in 0..3 {
            let r = one(gw.addr, &get(&format!("/app/n{i}"), None)).await;
            assert_eq!(
                r.get("set-cookie")
                    .map(|c| c.starts_with("fluxlit_worker=2;")),
                Some(true),
                "{}",
                engine(fast)
            );
        }
    }
}

#[tokio::test]
async fn one_worker_sets_no_cookie_and_forwards_cookie_fields_verbatim() {
    for fast in ENGINES {
        let (p, ui) = pool(1).await;
        let gw = start_on(builder(ui), fast).await;
        let sent = format!("{XSRF}; fluxlit_worker=2");
        let r = one(gw.addr, &get("/app/", Some(&sent))).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.get("set-cookie"), None, "{}", engine(fast));
        assert_eq!(p.got("/app/")[0].1.all("cookie"), [sent]);
        assert!(gw.gateway.ui_worker_sessions().is_empty());
    }
}

use support::Sink;

/// The value of the series `line` (`name{labels}`) in a Prometheus rendering, if present.
fn series(render: &str, line: &str) -> Option<f64> {
    render
        .lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
}

/// Per-worker series: open sessions (up while a WebSocket is open, down when it closed) and
/// placements (clients placed anew); the access-log line carries `worker` (the id, from 1) for
/// requests placed on a worker and the debug ring names it, on both engines.
#[tokio::test]
async fn each_worker_has_its_series_and_the_access_log_and_debug_ring_name_it() {
    for fast in ENGINES {
        let what = engine(fast);
        let (_p, ui) = pool(2).await;
        let sink = Sink::default();
        let log = LogWriter::new(sink.clone(), LogWriter::DEFAULT_CAPACITY).unwrap();
        let subscriber = tracing_subscriber::registry().with(
            fmt::layer()
                .with_ansi(false)
                .with_writer(log.clone())
                .with_filter(
                    tracing_subscriber::filter::Targets::new()
                        .with_target("fluxlit::access", tracing::Level::INFO),
                ),
        );
        let _log = tracing::subscriber::set_default(subscriber);
        let recorder = PrometheusBuilder::new().build_recorder();
        let prometheus = recorder.handle();
        let _metrics = metrics::set_default_local_recorder(&recorder);
        let gw = start_on(
            builder(ui)
                .access_log(true, false)
                .record_metrics(true)
                .debug(Arc::new(|| serde_json::json!({}))),
            fast,
        )
        .await;

        // Three new clients: placed on 1, 2, 1 (ties taken in turn).
        for i in 0..3 {
            let r = one(gw.addr, &get(&format!("/app/new{i}"), None)).await;
            assert!(r.get("set-cookie").is_some(), "{what}");
        }
        let r = one(gw.addr, &get("/app/held", Some("fluxlit_worker=2"))).await;
        assert_eq!(r.status, 200, "{what}");
        let mut ws = RawClient::connect(gw.addr).await;
        ws.send(upgrade(Some("fluxlit_worker=2"), "streamlit, tok").as_bytes())
            .await;
        let r = within("101", ws.response(false)).await.expect("101");
        assert_eq!(r.status, 101, "{what}");
        assert!(!ws.closed().await, "{what}: the session's first message");

        let render = prometheus.render();
        let value = |l: &str| series(&render, l);
        assert_eq!(
            value("fluxlit_streamlit_worker_placements_total{worker=\"1\"}"),
            Some(2.0),
            "{what}: {render}"
        );
        assert_eq!(
            value("fluxlit_streamlit_worker_placements_total{worker=\"2\"}"),
            Some(1.0),
            "{what}: {render}"
        );
        assert_eq!(
            value("fluxlit_streamlit_worker_sessions{worker=\"2\"}"),
            Some(1.0),
            "{what}: {render}"
        );
        drop(ws);
        fluxlit_testkit::eventually(support::WAIT, "the session gauge to go down", || {
            let v = series(
                &prometheus.render(),
                "fluxlit_streamlit_worker_sessions{worker=\"2\"}",
            );
            async move { (v == Some(0.0)).then_some(()) }
        })
        .await;

        let r = one(gw.addr, &get("/app/__fluxlit/debug", None)).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        let d: serde_json::Value = serde_json::from_str(r.text().as_str()).unwrap();
        let recent = d["recent_dispatches"].as_array().unwrap();
        let held = recent
            .iter()
            .find(|e| e["path"] == "/app/held")
            .unwrap_or_else(|| panic!("{what}: {d}"));
        assert_eq!(held["worker"], 2, "{what}: {d}");
        let new0 = recent.iter().find(|e| e["path"] == "/app/new0").unwrap();
        assert_eq!(new0["worker"], 1, "{what}: {d}");

        // Reported when the response is done (hyper: when its body is dropped).
        let text = fluxlit_testkit::eventually(support::WAIT, "the access-log lines", || {
            let flushed = log.flush(support::WAIT);
            let text = sink.text();
            async move {
                (flushed
                    && text.contains(" GET /app/held 200 ")
                    && text.contains(" GET /app/new1 200 "))
                .then_some(text)
            }
        })
        .await;
        let line = text
            .lines()
            .find(|l| l.contains(" GET /app/held 200 "))
            .unwrap_or_else(|| panic!("{what}: {text}"));
        assert!(
            line.ends_with(" upstream=\"streamlit\" worker=2"),
            "{what}: {line}"
        );
        let line = text
            .lines()
            .find(|l| l.contains(" GET /app/new1 200 "))
            .unwrap_or_else(|| panic!("{what}: {text}"));
        assert!(line.ends_with(" worker=2"), "{what}: {line}");
    }
}

/// A worker whose address the test controls (`None`: its process stopped).
async fn stoppable(n: usize) -> (RecordingUpstream, watch::Sender<Option<Endpoint>>, UiWorker) {
    let w = worker(n).await;
    let (tx, rx) = watch::channel(Some(Endpoint {
        authority: w.addr.to_string().parse().unwrap(),
        base_path: String::new(),
    }));
    let ui = UiWorker {
        upstream: Upstream::dynamic("streamlit", rx),
        state: watch::channel(ComponentState::Ready).1,
    };
    (w, tx, ui)
}

/// The worker id a `Set-Cookie` value names.
fn cookie_id(r: &fluxlit_testkit::raw::RawResponse) -> Option<usize> {
    r.get("set-cookie")?
        .strip_prefix("fluxlit_worker=")?
        .split(';')
        .next()?
        .parse()
        .ok()
}

/// A rolling restart as `fluxlit reload` does it (`UiWorkers`): a new generation is added and
/// the old one drained. New clients, and page loads or new streams with an old cookie, go to
/// the new generation with a new cookie; the old worker's session keeps reaching it (reconnect,
/// upload, media and Streamlit's own requests with its cookie) until its process stops; then
/// the session's reconnect goes to the new generation. On both engines.
#[tokio::test]
async fn a_rolling_restart_sends_new_sessions_to_the_new_generation_and_keeps_old_ones() {
    for fast in ENGINES {
        let what = engine(fast);
        let (old1, stop1, ui1) = stoppable(1).await;
        let (old2, _stop2, ui2) = stoppable(2).await;
        let gw = start_on(builder(vec![ui1, ui2]), fast).await;
        let workers = gw.gateway.ui_workers().expect("a pool");

        // A session on worker 1.
        let mut ws = RawClient::connect(gw.addr).await;
        ws.send(upgrade(Some("fluxlit_worker=1"), "streamlit, tok").as_bytes())
            .await;
        let r = within("101", ws.response(false)).await.expect("101");
        assert_eq!(r.status, 101, "{what}");
        assert!(!ws.closed().await, "{what}: the session's first message");
        let session = "s1-0";

        // The new generation: ids 3 and 4, never 1 or 2 again.
        let (new3, _stop3, ui3) = stoppable(3).await;
        let (new4, _stop4, ui4) = stoppable(4).await;
        assert_eq!((workers.add(ui3), workers.add(ui4)), (3, 4), "{what}");
        workers.drain(1);
        workers.drain(2);
        assert_eq!(workers.serving(), [3, 4], "{what}");
        assert_eq!(workers.open_sessions(1), Some(1), "{what}");

        for (i, cookie) in [None, Some("fluxlit_worker=1"), Some("fluxlit_worker=2")]
            .into_iter()
            .enumerate()
        {
            let r = one(gw.addr, &get(&format!("/app/?load={i}"), cookie)).await;
            assert_eq!(r.status, 200, "{what}");
            let id = cookie_id(&r).unwrap_or_else(|| panic!("{what}: a new cookie for {cookie:?}"));
            assert!(id == 3 || id == 4, "{what}: page load placed on {id}");
        }
        let mut fresh = RawClient::connect(gw.addr).await;
        fresh
            .send(upgrade(Some("fluxlit_worker=1"), "streamlit, tok").as_bytes())
            .await;
        let r = within("101", fresh.response(false)).await.expect("101");
        assert_eq!(r.status, 101, "{what}");
        let id = cookie_id(&r).expect("a new stream with an old cookie gets a new cookie");
        assert!(id == 3 || id == 4, "{what}: new stream on {id}");

        // The old session's requests still reach worker 1.
        let proto = format!("streamlit, tok, {session}");
        let mut again = RawClient::connect(gw.addr).await;
        again
            .send(upgrade(Some("fluxlit_worker=4"), &proto).as_bytes())
            .await;
        let r = within("101", again.response(false)).await.expect("101");
        assert_eq!((r.status, r.get("set-cookie")), (101, None), "{what}");
        let upload = format!("/app/_stcore/upload_file/{session}/file-1");
        let r = one(
            gw.addr,
            &format!("PUT {upload} HTTP/1.1\r\nHost: app.test\r\nCookie: fluxlit_worker=3\r\nContent-Length: 2\r\n\r\nhi"),
        )
        .await;
        assert_eq!((r.status, r.get("set-cookie")), (200, None), "{what}");
        for path in ["/app/media/a.png", "/app/_stcore/host-config"] {
            let r = one(gw.addr, &get(path, Some("fluxlit_worker=1"))).await;
            assert_eq!(
                (r.status, r.get("set-cookie")),
                (200, None),
                "{what}: {path}"
            );
        }
        let on = |w: &RecordingUpstream, target: &str| {
            w.requests().iter().filter(|r| r.target == target).count()
        };
        assert_eq!(on(&old1, "/app/_stcore/stream"), 2, "{what}");
        assert_eq!(on(&old1, &upload), 1, "{what}");
        assert_eq!(on(&old1, "/app/media/a.png"), 1, "{what}");
        assert_eq!(on(&old1, "/app/_stcore/host-config"), 1, "{what}");
        for w in [&old1, &old2] {
            assert!(
                w.requests()
                    .iter()
                    .all(|r| !r.target.starts_with("/app/?load")),
                "{what}: a page load reached the old generation"
            );
        }

        // Worker 1's process stops: the session's reconnect goes to the new generation.
        drop((ws, again));
        stop1.send_replace(None);
        let before = on(&new3, "/app/_stcore/stream") + on(&new4, "/app/_stcore/stream");
        let mut after_stop = RawClient::connect(gw.addr).await;
        after_stop
            .send(upgrade(Some("fluxlit_worker=1"), &proto).as_bytes())
            .await;
        let r = within("101", after_stop.response(false))
            .await
            .expect("101");
        assert_eq!(r.status, 101, "{what}");
        assert!(matches!(cookie_id(&r), Some(3 | 4)), "{what}");
        assert_eq!(
            on(&new3, "/app/_stcore/stream") + on(&new4, "/app/_stcore/stream"),
            before + 1,
            "{what}"
        );
        assert_eq!(on(&old1, "/app/_stcore/stream"), 2, "{what}");
    }
}

/// One worker: no cookie and no placement until a rolling restart adds a second; its sessions
/// were tapped all the same, so the old worker keeps its session's reconnects and uploads
/// while the new one gets everything new, with the cookie from then on. On both engines.
#[tokio::test]
async fn a_rolling_restart_of_one_worker_keeps_its_sessions_on_it() {
    for fast in ENGINES {
        let what = engine(fast);
        let (old, _stop_old, ui1) = stoppable(1).await;
        let gw = start_on(builder(vec![ui1]), fast).await;
        let workers = gw.gateway.ui_workers().expect("a pool");
        let mut ws = RawClient::connect(gw.addr).await;
        ws.send(upgrade(None, "streamlit, tok").as_bytes()).await;
        let r = within("101", ws.response(false)).await.expect("101");
        assert_eq!((r.status, r.get("set-cookie")), (101, None), "{what}");
        assert!(!ws.closed().await, "{what}: the session's first message");
        let g = workers.clone();
        fluxlit_testkit::eventually(support::WAIT, "the session to be counted", || {
            let n = g.open_sessions(1);
            async move { (n == Some(1)).then_some(()) }
        })
        .await;
        assert!(
            gw.gateway.ui_worker_sessions().is_empty(),
            "{what}: no pool shown yet"
        );

        let (new, _stop_new, ui2) = stoppable(2).await;
        assert_eq!(workers.add(ui2), 2);
        workers.drain(1);
        let r = one(gw.addr, &get("/app/?after", None)).await;
        assert_eq!(cookie_id(&r), Some(2), "{what}");
        let upload = "/app/_stcore/upload_file/s1-0/file-1";
        let r = one(
            gw.addr,
            &format!("PUT {upload} HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2\r\n\r\nhi"),
        )
        .await;
        assert_eq!(r.status, 200, "{what}");
        let mut again = RawClient::connect(gw.addr).await;
        again
            .send(upgrade(None, "streamlit, tok, s1-0").as_bytes())
            .await;
        let r = within("101", again.response(false)).await.expect("101");
        assert_eq!(r.status, 101, "{what}");
        let on = |w: &RecordingUpstream, target: &str| {
            w.requests().iter().filter(|r| r.target == target).count()
        };
        assert_eq!(on(&old, upload), 1, "{what}");
        assert_eq!(on(&old, "/app/_stcore/stream"), 2, "{what}");
        assert_eq!(on(&new, "/app/?after"), 1, "{what}");
        assert_eq!(gw.gateway.ui_worker_sessions(), [2, 0], "{what}");
    }
}

/// A Streamlit-like worker that answers every `/app/_stcore/stream` upgrade with 101 and a
/// `new_session` message naming session `{name}-{connection}`, then records every byte the
/// client side sends on each connection.
struct StreamWorker {
    endpoint: watch::Sender<Option<fluxlit_gateway::Endpoint>>,
    got: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl StreamWorker {
    async fn start(name: &'static str) -> (Self, UiWorker) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got: Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Arc::default();
        let g = got.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let conn = {
                    let mut g = g.lock().unwrap();
                    g.push(Vec::new());
                    g.len() - 1
                };
                let g = g.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    g.lock().unwrap()[conn].extend_from_slice(&head[end..]);
                    let mut out = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {WS_ACCEPT}\r\nSec-WebSocket-Protocol: streamlit\r\n\r\n").into_bytes();
                    out.extend(new_session_message(&format!("{name}-{conn}")));
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => g.lock().unwrap()[conn].extend_from_slice(&buf[..n]),
                        }
                    }
                });
            }
        });
        let endpoint = fluxlit_gateway::Endpoint {
            authority: addr.to_string().parse().unwrap(),
            base_path: String::new(),
        };
        let (tx, rx) = watch::channel(Some(endpoint));
        let ui = UiWorker {
            upstream: fluxlit_gateway::Upstream::dynamic("streamlit", rx),
            state: watch::channel(ComponentState::Ready).1,
        };
        (Self { endpoint: tx, got }, ui)
    }

    /// Bytes the client side sent on connection `conn`, once there are at least `n`.
    async fn wait_bytes(&self, conn: usize, n: usize) -> Vec<u8> {
        let got = self.got.clone();
        fluxlit_testkit::eventually(
            support::WAIT,
            "the worker to read the client's bytes",
            || {
                let b = got.lock().unwrap().get(conn).cloned().unwrap_or_default();
                async move { (b.len() >= n).then_some(b) }
            },
        )
        .await
    }
}

/// Appends protobuf field `number` (wire type 2) with `value`.
fn pb(out: &mut Vec<u8>, number: u8, value: &[u8]) {
    out.push(number << 3 | 2);
    out.push(u8::try_from(value.len()).unwrap());
    out.extend_from_slice(value);
}

/// A masked client frame (RFC 6455 §5.3) with a short binary payload.
fn client_frame(payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![0x82, 0x80 | u8::try_from(payload.len()).unwrap()];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// The payload of the masked client frame at the start of `bytes`, and the frame's length.
fn unmask(bytes: &[u8]) -> (Vec<u8>, usize) {
    assert_eq!(bytes[0], 0x82, "a final binary frame: {bytes:?}");
    assert_ne!(bytes[1] & 0x80, 0, "masked");
    let len = usize::from(bytes[1] & 0x7f);
    assert!(len < 126);
    let key = &bytes[2..6];
    let payload = bytes[6..6 + len]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ key[i % 4])
        .collect();
    (payload, 6 + len)
}

#[tokio::test]
async fn a_reconnect_whose_worker_is_gone_starts_the_tab_s_page_on_the_new_worker() {
    for fast in ENGINES {
        let (a, wa) = StreamWorker::start("a").await;
        let (b, wb) = StreamWorker::start("b").await;
        let gw = start_on(builder(vec![wa, wb]), fast).await;

        // A tab on worker 1 asks for a page: `BackMsg.rerun_script` with the query string,
        // a widget value, the page's hash and name.
        let mut state = Vec::new();
        pb(&mut state, 1, b"tab=2");
        pb(&mut state, 2, b"a-button-pressed");
        pb(&mut state, 3, b"hash-of-report");
        pb(&mut state, 4, b"report");
        let mut rerun = Vec::new();
        pb(&mut rerun, 11, &state);
        let sent = client_frame(&rerun);
        let mut ws = RawClient::connect(gw.addr).await;
        ws.send(upgrade(Some("fluxlit_worker=1"), "streamlit, tok").as_bytes())
            .await;
        let r = within("101", ws.response(false)).await.expect("101");
        assert_eq!(r.status, 101, "{}", engine(fast));
        ws.send(&sent).await;
        assert_eq!(a.wait_bytes(0, sent.len()).await, sent, "{}", engine(fast));

        // The tab reconnects to the worker that holds its session: passed on untouched, the
        // client's own bytes come first.
        drop(ws);
        let proto = "streamlit, tok, a-0";
        let mut again = RawClient::connect(gw.addr).await;
        again.send(upgrade(None, proto).as_bytes()).await;
        let r = within("101", again.response(false)).await.expect("101");
        assert_eq!(r.status, 101);
        let mut heartbeat = Vec::new();
        pb(&mut heartbeat, 17, b"");
        let beat = client_frame(&heartbeat);
        again.send(&beat).await;
        assert_eq!(a.wait_bytes(1, beat.len()).await, beat, "{}", engine(fast));
        drop(again);

        // Worker 1 stops: the reconnect goes to worker 2, which gets the page first: the
        // same query string, hash and name, and no widget value.
        a.endpoint.send_replace(None);
        let mut lost = RawClient::connect(gw.addr).await;
        lost.send(upgrade(Some("fluxlit_worker=1"), proto).as_bytes())
            .await;
        let r = within("101", lost.response(false)).await.expect("101");
        assert_eq!(r.status, 101, "{}", engine(fast));
        assert_eq!(
            r.get("set-cookie")
                .map(|c| c.starts_with("fluxlit_worker=2;")),
            Some(true),
            "{}",
            engine(fast)
        );
        let got = b.wait_bytes(0, 6).await;
        let (payload, _) = unmask(&got);
        let mut page = Vec::new();
        pb(&mut page, 3, b"hash-of-report");
        pb(&mut page, 4, b"report");
        pb(&mut page, 1, b"tab=2");
        let mut want = Vec::new();
        pb(&mut want, 11, &page);
        assert_eq!(payload, want, "{}", engine(fast));
        // Then the client's bytes, as sent.
        lost.send(&beat).await;
        let got = b.wait_bytes(0, 6 + want.len() + beat.len()).await;
        assert_eq!(&got[6 + want.len()..], &beat[..], "{}", engine(fast));
    }
}
