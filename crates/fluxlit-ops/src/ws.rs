//! Streamlit-like WebSocket sessions: `ws-load` (N sessions that get the app's content, are
//! held and closed) and `chaos-dropped-websocket` (sessions dropped without a close frame).

use std::time::{Duration, Instant};

use bytes::Bytes;
use fluxlit_testkit::streamlit::{RERUN_SCRIPT, session_id};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::net::{self, Http};
use crate::report::{Report, ms};

/// A client WebSocket over plain TCP.
pub type Ws = WebSocketStream<TcpStream>;

/// Streamlit's WebSocket path under the base URL.
pub const STREAM_PATH: &str = "/_stcore/stream";

/// `ws://host:port[/prefix]/_stcore/stream` for an `http://` base URL.
///
/// # Errors
/// When the base URL is not `http://`.
pub fn stream_url(base: &str) -> Result<String, String> {
    let base = net::base_url(base)?;
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| format!("{base}: only http:// is supported"))?;
    Ok(format!("ws://{rest}{STREAM_PATH}"))
}

/// Opens a Streamlit WebSocket (subprotocol `streamlit`) at `url` within `timeout`; returns the
/// socket and the time the TCP connect plus the handshake took.
///
/// # Errors
/// Connect or handshake failures, a refused handshake (its status), or the timeout.
pub async fn connect(url: &str, timeout: Duration) -> Result<(Ws, Duration), String> {
    let mut req = url
        .into_client_request()
        .map_err(|e| format!("bad WebSocket URL {url}: {e}"))?;
    req.headers_mut().insert(
        "sec-websocket-protocol",
        http::HeaderValue::from_static("streamlit"),
    );
    let uri = req.uri().clone();
    let host = uri.host().ok_or_else(|| format!("{url} has no host"))?;
    let authority = format!(
        "{}:{}",
        host.trim_start_matches('[').trim_end_matches(']'),
        uri.port_u16().unwrap_or(80)
    );
    let start = Instant::now();
    let work = async {
        let stream = TcpStream::connect(&authority)
            .await
            .map_err(|e| format!("connect {authority}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (ws, resp) =
            tokio_tungstenite::client_async(req, stream)
                .await
                .map_err(|e| match e {
                    tokio_tungstenite::tungstenite::Error::Http(r) => format!(
                        "handshake refused with {}: {}",
                        r.status(),
                        r.body()
                            .as_ref()
                            .map(|b| String::from_utf8_lossy(b)
                                .chars()
                                .take(200)
                                .collect::<String>())
                            .unwrap_or_default()
                    ),
                    e => format!("handshake: {e}"),
                })?;
        if resp
            .headers()
            .get("sec-websocket-protocol")
            .is_none_or(|v| v != "streamlit")
        {
            return Err("the handshake did not select the subprotocol `streamlit`".to_owned());
        }
        Ok(ws)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r.map(|ws| (ws, start.elapsed())),
        Err(_) => Err(format!(
            "no WebSocket handshake within {:.1} s",
            timeout.as_secs_f64()
        )),
    }
}

/// What a session saw before the content it waited for.
#[derive(Debug, Clone, Default)]
pub struct Content {
    /// Binary frames received.
    pub frames: usize,
    /// Streamlit's session id, when the `new_session` frame was among them.
    pub session_id: Option<String>,
}

/// Sends the rerun `BackMsg` (`5a 00`) and reads frames until a binary frame contains
/// `expect` (any binary frame when `None`), by `deadline`.
///
/// # Errors
/// When the socket closes, fails, or the deadline passes first.
pub async fn rerun_and_wait(
    ws: &mut Ws,
    expect: Option<&str>,
    deadline: tokio::time::Instant,
) -> Result<Content, String> {
    ws.send(Message::Binary(Bytes::from_static(&RERUN_SCRIPT)))
        .await
        .map_err(|e| format!("send rerun: {e}"))?;
    let mut seen = Content::default();
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => {
                return Err(format!(
                    "no frame {} before the deadline ({} binary frames)",
                    expect.map_or_else(String::new, |t| format!("containing {t:?}")),
                    seen.frames
                ));
            }
            Ok(None) => return Err(format!("socket ended after {} frames", seen.frames)),
            Ok(Some(Err(e))) => {
                return Err(format!("socket error after {} frames: {e}", seen.frames));
            }
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            Message::Binary(b) => {
                seen.frames += 1;
                if seen.session_id.is_none() {
                    seen.session_id = session_id(&b);
                }
                let hit = expect
                    .is_none_or(|t| !t.is_empty() && b.windows(t.len()).any(|w| w == t.as_bytes()));
                if hit {
                    return Ok(seen);
                }
            }
            Message::Close(f) => {
                return Err(format!(
                    "closed by the server ({}) after {} frames",
                    close_text(f.as_ref()),
                    seen.frames
                ));
            }
            _ => {}
        }
    }
}

/// `code reason` of a close frame, or `no close frame`.
pub fn close_text(f: Option<&tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> String {
    f.map_or_else(
        || "no close code".to_owned(),
        |f| {
            if f.reason.is_empty() {
                format!("code {}", u16::from(f.code))
            } else {
                format!("code {} {:?}", u16::from(f.code), f.reason.as_str())
            }
        },
    )
}

/// How a socket ended, seen from the client.
#[derive(Debug, Clone)]
pub struct Ended {
    /// When.
    pub at: Instant,
    /// `close code 1012`, `eof`, `error …`.
    pub how: String,
}

/// Reads (and discards) frames until the socket ends or `deadline`; `None` at the deadline.
pub async fn wait_end(ws: &mut Ws, deadline: tokio::time::Instant) -> Option<Ended> {
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(None) => {
                return Some(Ended {
                    at: Instant::now(),
                    how: "eof without a close frame".into(),
                });
            }
            Ok(Some(Err(e))) => {
                return Some(Ended {
                    at: Instant::now(),
                    how: format!("error {e}"),
                });
            }
            Ok(Some(Ok(Message::Close(f)))) => {
                return Some(Ended {
                    at: Instant::now(),
                    how: format!("close frame, {}", close_text(f.as_ref())),
                });
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Options of `ws-load`.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `http://host:port[/prefix]`.
    pub base_url: String,
    /// Sessions to open (at most 10 000).
    pub sessions: usize,
    /// How long all sessions are held open after they got their content, in seconds.
    pub hold_seconds: f64,
    /// Text a binary frame must contain for a session to count (any binary frame if `None`).
    pub expect_text: Option<String>,
    /// Bound for the handshake, in seconds.
    pub connect_timeout_seconds: f64,
    /// Bound, per session, from the handshake to the expected frame, in seconds.
    pub content_timeout_seconds: f64,
    /// Handshakes in progress at once.
    pub connect_concurrency: usize,
}

#[derive(Debug, Default)]
struct SessionResult {
    connect_ms: Option<f64>,
    content_ms: Option<f64>,
    error: Option<String>,
    /// The server ended the session before it was released.
    ended_early: Option<String>,
    closed_cleanly: bool,
    close_error: Option<String>,
}

/// `ws-load`: opens `sessions` Streamlit sessions, waits until each received a frame with
/// the expected text, holds them all `hold_seconds`, then closes them with a close frame.
pub async fn load(opts: &LoadOptions) -> Report {
    let mut report = Report::new("ws-load");
    let start = Instant::now();
    let url = match stream_url(&opts.base_url) {
        Ok(u) => u,
        Err(e) => {
            report.fail("base URL", e);
            return report;
        }
    };
    let n = opts.sessions.clamp(1, 10_000);
    let connect_timeout = net::secs(opts.connect_timeout_seconds);
    let content_timeout = net::secs(opts.content_timeout_seconds);
    let gate = std::sync::Arc::new(Semaphore::new(opts.connect_concurrency.clamp(1, 1024)));
    let (release_tx, release_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(n);
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (url, gate, mut release, ready) = (
            url.clone(),
            gate.clone(),
            release_rx.clone(),
            ready_tx.clone(),
        );
        let expect = opts.expect_text.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = SessionResult::default();
            let opened = {
                let Ok(_permit) = gate.acquire().await else {
                    r.error = Some("internal: semaphore closed".into());
                    let _ = ready.send(()).await;
                    return r;
                };
                connect(&url, connect_timeout).await
            };
            let mut ws = match opened {
                Ok((ws, took)) => {
                    r.connect_ms = Some(took.as_secs_f64() * 1000.0);
                    ws
                }
                Err(e) => {
                    r.error = Some(e);
                    let _ = ready.send(()).await;
                    return r;
                }
            };
            let t = Instant::now();
            let deadline = tokio::time::Instant::now() + content_timeout;
            match rerun_and_wait(&mut ws, expect.as_deref(), deadline).await {
                Ok(_) => r.content_ms = Some(t.elapsed().as_secs_f64() * 1000.0),
                Err(e) => r.error = Some(e),
            }
            let _ = ready.send(()).await;
            if r.error.is_some() {
                return r;
            }
            // Hold: keep reading (pings are answered while reading) until released.
            loop {
                tokio::select! {
                    changed = release.changed() => {
                        if changed.is_err() || *release.borrow() {
                            break;
                        }
                    }
                    msg = ws.next() => match msg {
                        Some(Ok(Message::Close(f))) => {
                            r.ended_early = Some(format!("close frame, {}", close_text(f.as_ref())));
                            return r;
                        }
                        None => {
                            r.ended_early = Some("eof".into());
                            return r;
                        }
                        Some(Err(e)) => {
                            r.ended_early = Some(format!("error {e}"));
                            return r;
                        }
                        Some(Ok(_)) => {}
                    }
                }
            }
            let mut got_close = false;
            let mut after_close = 0usize;
            let close = async {
                ws.close(None).await.map_err(|e| format!("send close: {e}"))?;
                // Until the server's close frame and the end of the stream.
                while let Some(m) = ws.next().await {
                    match m {
                        Ok(Message::Close(_)) => got_close = true,
                        Ok(_) => after_close += 1,
                        Err(e) => return Err(format!("after close: {e}")),
                    }
                }
                Ok(())
            };
            match tokio::time::timeout(Duration::from_secs(5), close).await {
                Ok(Ok(())) => r.closed_cleanly = true,
                Ok(Err(e)) => r.close_error = Some(e),
                Err(_) => {
                    r.close_error = Some(format!(
                        "no end of the stream within 5 s of the close (server close frame: {got_close}, {after_close} frames after ours)"
                    ));
                }
            }
            r
        }));
    }
    drop(ready_tx);
    // Wait until every session got its content or failed (bounded by the per-session bounds).
    let all_ready = connect_timeout + content_timeout + Duration::from_secs(5);
    let mut reported = 0;
    let _ = tokio::time::timeout(all_ready, async {
        while reported < n && ready_rx.recv().await.is_some() {
            reported += 1;
        }
    })
    .await;
    let hold = net::secs(opts.hold_seconds);
    let held_from = Instant::now();
    tokio::time::sleep(hold).await;
    let held = held_from.elapsed();
    let _ = release_tx.send(true);
    let mut results = Vec::with_capacity(n);
    for t in tasks {
        let abort = t.abort_handle();
        match tokio::time::timeout(Duration::from_secs(10), t).await {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(_)) => results.push(SessionResult {
                error: Some("session task failed".into()),
                ..SessionResult::default()
            }),
            Err(_) => {
                abort.abort();
                results.push(SessionResult {
                    error: Some("session did not finish within 10 s of its release".into()),
                    ..SessionResult::default()
                });
            }
        }
    }
    let connected = results.iter().filter(|r| r.connect_ms.is_some()).count();
    let content = results.iter().filter(|r| r.content_ms.is_some()).count();
    let early: Vec<&String> = results
        .iter()
        .filter_map(|r| r.ended_early.as_ref())
        .collect();
    let clean = results.iter().filter(|r| r.closed_cleanly).count();
    let first_error = results.iter().find_map(|r| r.error.clone());
    let what = opts
        .expect_text
        .as_deref()
        .map_or_else(|| "a binary frame".to_owned(), |t| format!("{t:?}"));
    report.check(
        format!("{n} sessions connected"),
        connected == n,
        format!(
            "{connected} connected{}",
            first_error
                .as_deref()
                .filter(|_| connected < n)
                .map(|e| format!(", e.g. {e}"))
                .unwrap_or_default()
        ),
    );
    report.check(
        format!("{n} sessions received {what}"),
        content == n,
        format!(
            "{content} did{}",
            first_error
                .as_deref()
                .filter(|_| content < n)
                .map(|e| format!(", e.g. {e}"))
                .unwrap_or_default()
        ),
    );
    report.check(
        format!(
            "sessions stayed open for the {:.1} s hold",
            hold.as_secs_f64()
        ),
        early.is_empty(),
        if early.is_empty() {
            format!("{content} open at the end")
        } else {
            format!("{} ended early, e.g. {}", early.len(), early[0])
        },
    );
    let close_error = results.iter().find_map(|r| r.close_error.clone());
    report.check(
        "sessions closed with a close handshake",
        clean == content - early.len().min(content),
        format!(
            "{clean} closed cleanly{}",
            close_error
                .map(|e| format!(", e.g. {e}"))
                .unwrap_or_default()
        ),
    );
    let connect_ms: Vec<f64> = results.iter().filter_map(|r| r.connect_ms).collect();
    let content_ms: Vec<f64> = results.iter().filter_map(|r| r.content_ms).collect();
    let cstats = net::latency_stats(&connect_ms);
    let tstats = net::latency_stats(&content_ms);
    report.summary = format!(
        "{content}/{n} sessions got {what}, held {:.1} s; connect {}; content {}",
        held.as_secs_f64(),
        net::latency_text(&cstats),
        net::latency_text(&tstats)
    );
    report.set("url", url);
    report.set("sessions", n);
    report.set("connected", connected);
    report.set("succeeded", content);
    report.set("ended_early", early.len());
    report.set("closed_cleanly", clean);
    report.set("held_s", crate::report::round3(held.as_secs_f64()));
    report.set("connect_ms", cstats);
    report.set("content_ms", tstats);
    report.elapsed = start.elapsed();
    report
}

/// Options of `chaos-dropped-websocket`.
#[derive(Debug, Clone)]
pub struct DroppedOptions {
    /// `http://host:port[/prefix]`.
    pub base_url: String,
    /// Sessions dropped in the middle of a script run (alternately with FIN and with RST).
    pub sessions: usize,
    /// Text the fresh session after the drops must receive (any binary frame if `None`).
    pub expect_text: Option<String>,
    /// When set, the gateway's metrics path: `fluxlit_gateway_active_websocket_tunnels` must
    /// come back to its value before the test.
    pub metrics_path: Option<String>,
    /// Bound of each wait (handshake, first frame, readiness), in seconds.
    pub timeout_seconds: f64,
}

const TUNNEL_GAUGE: &str = "fluxlit_gateway_active_websocket_tunnels";

async fn tunnel_gauge(http: &Http, url: &str) -> Result<f64, String> {
    let a = http.get(url).await?;
    if a.status != 200 {
        return Err(format!("metrics answered {}", a.status));
    }
    Ok(a.text()
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(TUNNEL_GAUGE)?;
            rest.starts_with(' ')
                .then(|| rest.trim().parse::<f64>().ok())
                .flatten()
        })
        .unwrap_or(0.0))
}

/// `chaos-dropped-websocket`: drops sessions mid-run without a close frame (FIN and RST), one
/// handshake half-way and one frame half-way; then liveness, readiness and a fresh session must
/// work (and, with a metrics path, the tunnel gauge must come back down).
pub async fn dropped(opts: &DroppedOptions) -> Report {
    let mut report = Report::new("chaos-dropped-websocket");
    let start = Instant::now();
    let (base, url) =
        match net::base_url(&opts.base_url).and_then(|b| Ok((b.clone(), stream_url(&b)?))) {
            Ok(v) => v,
            Err(e) => {
                report.fail("base URL", e);
                return report;
            }
        };
    let timeout = net::secs(opts.timeout_seconds);
    let http = Http::fresh(timeout);
    let metrics_url = opts.metrics_path.as_deref().map(|p| net::join(&base, p));
    let baseline = match &metrics_url {
        Some(m) => match tunnel_gauge(&http, m).await {
            Ok(v) => Some(v),
            Err(e) => {
                report.fail("read the tunnel gauge before", e);
                None
            }
        },
        None => None,
    };

    // 1. Sessions dropped while the script runs: half FIN (plain drop), half RST (linger 0).
    let n = opts.sessions.clamp(1, 1000);
    let mut dropped = 0;
    let mut modes = Vec::new();
    for i in 0..n {
        let deadline = tokio::time::Instant::now() + timeout;
        let result = async {
            let (mut ws, _) = connect(&url, timeout).await?;
            rerun_and_wait(&mut ws, None, deadline).await?;
            Ok::<_, String>(ws)
        }
        .await;
        match result {
            Ok(ws) => {
                let rst = i % 2 == 1;
                if rst {
                    // RST instead of FIN; no close frame either way.
                    let _ = ws.get_ref().set_zero_linger();
                }
                drop(ws);
                dropped += 1;
                modes.push(if rst { "rst" } else { "fin" });
            }
            Err(e) => {
                report.fail(format!("open session {} of {n}", i + 1), e);
            }
        }
    }
    report.check(
        format!("{n} sessions dropped mid-run without a close frame"),
        dropped == n,
        format!("{dropped} dropped ({})", modes.join(",")),
    );

    // 2. A handshake abandoned half-way, and a frame cut half-way.
    let half_handshake = async {
        let authority = url
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .ok_or("no authority")?
            .to_owned();
        let path = url.get(5 + authority.len()..).unwrap_or(STREAM_PATH);
        let mut s = TcpStream::connect(&authority)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: streamlit\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let _ = s.set_zero_linger();
        drop(s);
        Ok::<_, String>(())
    };
    let r = tokio::time::timeout(timeout, half_handshake)
        .await
        .unwrap_or_else(|_| Err("timeout".into()));
    report.check(
        "a handshake abandoned half-way",
        r.is_ok(),
        r.err()
            .unwrap_or_else(|| "sent the upgrade, then RST".into()),
    );
    let half_frame = async {
        let (mut ws, _) = connect(&url, timeout).await?;
        // A masked binary frame announcing 256 bytes, of which only 8 are sent.
        let partial = [
            0x82, 0xFE, 0x01, 0x00, 0x11, 0x22, 0x33, 0x44, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        ws.get_mut()
            .write_all(&partial)
            .await
            .map_err(|e| format!("write: {e}"))?;
        drop(ws);
        Ok::<_, String>(())
    };
    let r = tokio::time::timeout(timeout, half_frame)
        .await
        .unwrap_or_else(|_| Err("timeout".into()));
    report.check(
        "a frame cut half-way",
        r.is_ok(),
        r.err()
            .unwrap_or_else(|| "8 of 256 payload bytes, then FIN".into()),
    );

    // 3. The gateway is alive and ready, and serves a new session.
    for path in ["/api/healthz", "/api/readyz"] {
        let r = net::wait_status(&http, &net::join(&base, path), 200, timeout).await;
        report.check(
            format!("{path} 200 after the drops"),
            r.is_ok(),
            match r {
                Ok(t) => format!("after {:.0} ms", ms(t)),
                Err(last) => format!("last answer {last}"),
            },
        );
    }
    let fresh = async {
        let (mut ws, _) = connect(&url, timeout).await?;
        let c = rerun_and_wait(
            &mut ws,
            opts.expect_text.as_deref(),
            tokio::time::Instant::now() + timeout,
        )
        .await?;
        let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while ws.next().await.is_some() {}
        })
        .await;
        Ok::<_, String>(c)
    }
    .await;
    report.check(
        "a new session gets content after the drops",
        fresh.is_ok(),
        match &fresh {
            Ok(c) => format!("{} frames", c.frames),
            Err(e) => e.clone(),
        },
    );
    if let (Some(m), Some(before)) = (&metrics_url, baseline) {
        let t = Instant::now();
        let deadline = t + Duration::from_secs(15);
        let mut last = String::new();
        let mut back = false;
        while Instant::now() < deadline {
            match tunnel_gauge(&http, m).await {
                Ok(v) if v <= before => {
                    back = true;
                    break;
                }
                Ok(v) => last = v.to_string(),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        report.check(
            format!("{TUNNEL_GAUGE} back to {before}"),
            back,
            if back {
                format!("after {:.0} ms", ms(t.elapsed()))
            } else {
                format!("still {last} after 15 s: tunnels of dropped clients were not released")
            },
        );
    }
    report.summary = format!(
        "{dropped}/{n} sessions dropped mid-run (FIN/RST), half handshake, half frame; gateway healthy and serving new sessions"
    );
    report.set("url", url);
    report.set("dropped", dropped);
    report.set("modes", json!(modes));
    if let Some(b) = baseline {
        report.set("tunnels_before", b);
    }
    report.elapsed = start.elapsed();
    report
}
