//! The checks made through each edge. Each one returns `Ok(detail)` (PASS) or `Err(detail)`
//! (FAIL), the detail saying what was seen.

use std::time::Duration;

use bytes::Bytes;
use fluxlit_testkit::streamlit::{RERUN_SCRIPT, field_path, session_id};
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::client::{Endpoint, Response, Ws, snippet};
use super::edges::{Edge, RequestId};
use super::fluxlit::Mode;
use super::raw::{RawConn, RawResponse};

/// The marker `GET /api/smoke` returns and the Streamlit page shows.
const MARKER: &str = "fluxlit_smoke_ok";
/// The page's title.
const TITLE: &str = "FluxLit Smoke";
/// How long the app's content may take to arrive over the WebSocket.
const WS_CONTENT_TIMEOUT: Duration = Duration::from_secs(30);
/// The body size the 413 checks send: above the caps the smoke gives FluxLit.
pub(crate) const OVERSIZED_BODY: usize = 128 * 1024;

/// What a check needs to know about the edge it runs through.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The edge (its name is used in request ids and uploaded content).
    pub(crate) edge: Edge,
    /// The edge's address (and certificate).
    pub(crate) endpoint: Endpoint,
    /// The public path prefix (`""`, `/myapp`, `/apps/my-app`).
    pub(crate) prefix: &'static str,
    /// How the FluxLit behind the edge is configured.
    pub(crate) mode: Mode,
    /// FluxLit's log file, and its length when this edge's checks began (the FluxLit is
    /// shared by the edges of one root path, one edge after the other).
    pub(crate) gateway_log: std::path::PathBuf,
    pub(crate) gateway_log_from: u64,
    /// The `fluxlit` binary (for `fluxlit doctor --live`).
    pub(crate) fluxlit: std::path::PathBuf,
}

impl Target {
    fn path(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }
}

/// One check, as named in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// `GET {prefix}/api/healthz` is 200 `{"status":"ok"}`.
    Healthz,
    /// `GET {prefix}/api/readyz` is 200 with status `ready`.
    Readyz,
    /// `GET {prefix}/api/smoke` reaches the FastAPI app.
    Api,
    /// `GET {prefix}/` is Streamlit's HTML page.
    UiHtml,
    /// A JavaScript or CSS file that page references loads.
    StaticAsset,
    /// `GET {prefix}/_stcore/health` is 200 `ok` and sets the XSRF cookie.
    StcoreHealth,
    /// A WebSocket with subprotocol `streamlit` receives the app's content.
    WebSocket,
    /// A file upload passes Streamlit's XSRF protection and reaches the script.
    Upload,
    /// An oversized body to a UI route gets 413 from FluxLit.
    BodyLimitUi,
    /// An oversized body to an API route gets 413 from FluxLit.
    BodyLimitApi,
    /// A client's well-formed request id reaches the API unchanged; a missing or malformed
    /// one is replaced by the edge's id (or FluxLit's); the id comes back on the response.
    RequestId,
    /// The API sees the public scheme, host, port and prefix.
    Scheme,
    /// Forwarded fields a client sends do not change what the API sees.
    ForwardedSpoof,
    /// A request hidden in a body (`Connection: …, Content-Length`) never reaches the API.
    Smuggling,
    /// Paths with dot segments are not served under a route the edge did not choose.
    DotSegments,
    /// `GET {prefix}` (no trailing slash) redirects to `{prefix}/`.
    Redirect,
    /// `fluxlit doctor --live URL` through the edge: every row PASS.
    DoctorLive,
    /// `fluxlit doctor --live` through a copy of this edge's nginx configuration without the
    /// WebSocket upgrade headers: exactly `live.websocket` FAILs (run for `nginx-strip` in the
    /// default mode only, by the smoke itself, not through [`Check::run`]).
    DoctorLiveNoUpgrade,
    /// FluxLit's log shows the configuration the run claims: the `gateway listening` line's
    /// `fast_path` matches the mode, and the engine that mode puts UI requests on wrote
    /// access-log lines for this edge's requests, UI requests among them.
    GatewayLog,
}

/// Every check, in report order (`Redirect` applies to prefixed edges only; `GatewayLog` reads
/// what the others left in the log, so it comes last).
pub(crate) const ALL: &[Check] = &[
    Check::Healthz,
    Check::Readyz,
    Check::Api,
    Check::UiHtml,
    Check::StaticAsset,
    Check::StcoreHealth,
    Check::WebSocket,
    Check::Upload,
    Check::BodyLimitUi,
    Check::BodyLimitApi,
    Check::RequestId,
    Check::Scheme,
    Check::ForwardedSpoof,
    Check::Smuggling,
    Check::DotSegments,
    Check::Redirect,
    Check::DoctorLive,
    Check::DoctorLiveNoUpgrade,
    Check::GatewayLog,
];

impl Check {
    /// The name in the report.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Healthz => "healthz",
            Self::Readyz => "readyz",
            Self::Api => "api",
            Self::UiHtml => "ui-html",
            Self::StaticAsset => "static-asset",
            Self::StcoreHealth => "stcore-health",
            Self::WebSocket => "websocket",
            Self::Upload => "upload-xsrf",
            Self::BodyLimitUi => "413-ui",
            Self::BodyLimitApi => "413-api",
            Self::RequestId => "request-id",
            Self::Scheme => "scheme",
            Self::ForwardedSpoof => "forwarded-spoof",
            Self::Smuggling => "smuggling",
            Self::DotSegments => "dot-segments",
            Self::Redirect => "prefix-redirect",
            Self::DoctorLive => "doctor-live",
            Self::DoctorLiveNoUpgrade => "doctor-live-no-upgrade",
            Self::GatewayLog => "gateway-log",
        }
    }

    /// Whether the check applies to an edge with this public prefix.
    pub(crate) fn applies(self, prefix: &str) -> bool {
        match self {
            Self::Redirect => !prefix.is_empty(),
            Self::DoctorLiveNoUpgrade => false,
            _ => true,
        }
    }

    /// Runs the check.
    pub(crate) async fn run(self, t: &Target) -> Result<String, String> {
        match self {
            Self::Healthz => healthz(t).await,
            Self::Readyz => readyz(t).await,
            Self::Api => api(t).await,
            Self::UiHtml => ui_html(t).await,
            Self::StaticAsset => static_asset(t).await,
            Self::StcoreHealth => stcore_health(t).await.map(|(detail, _)| detail),
            Self::WebSocket => websocket(t).await,
            Self::Upload => upload(t).await,
            Self::BodyLimitUi => {
                let path = t.path("/_stcore/upload_file/smoke-session/oversized");
                body_limit(t, "PUT", &path).await
            }
            Self::BodyLimitApi => body_limit(t, "POST", &t.path("/api/smoke")).await,
            Self::RequestId => request_id(t).await,
            Self::Scheme => scheme(t).await,
            Self::ForwardedSpoof => forwarded_spoof(t).await,
            Self::Smuggling => smuggling(t).await,
            Self::DotSegments => dot_segments(t).await,
            Self::Redirect => redirect(t).await,
            Self::DoctorLive => doctor_live(t, &[]).await,
            Self::DoctorLiveNoUpgrade => doctor_live(t, &["live.websocket"]).await,
            Self::GatewayLog => gateway_log(t).await,
        }
    }
}

/// Runs `fluxlit doctor --live {scheme}://127.0.0.1:{port}{prefix}/ --json` (trusting the
/// smoke's CA on TLS edges) and passes when exactly the rows in `expect_fail` FAIL and every
/// other row PASSes (`live.upload_body` may WARN: FluxLit's own cap, see below).
pub(crate) async fn doctor_live(t: &Target, expect_fail: &[&str]) -> Result<String, String> {
    let scheme = if t.endpoint.tls_ca.is_some() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{}{}/", t.endpoint.addr, t.prefix);
    let mut cmd = tokio::process::Command::new(&t.fluxlit);
    cmd.args(["doctor", "--live", &url, "--json"])
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    if let Some(dir) = t.gateway_log.parent() {
        cmd.current_dir(dir);
    }
    if let Some(ca) = &t.endpoint.tls_ca {
        cmd.env("SSL_CERT_FILE", ca);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .map_err(|_| format!("fluxlit doctor --live {url} did not finish within 120 s"))?
        .map_err(|e| format!("cannot run {}: {e}", t.fluxlit.display()))?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "fluxlit doctor --live {url} printed no JSON ({e}): {}{}",
            snippet(&String::from_utf8_lossy(&out.stdout), 300),
            snippet(&String::from_utf8_lossy(&out.stderr), 300)
        )
    })?;
    let rows = report["checks"].as_array().cloned().unwrap_or_default();
    let mut wrong = Vec::new();
    for row in &rows {
        let name = row["name"].as_str().unwrap_or_default();
        let want = if expect_fail.contains(&name) {
            "FAIL"
        } else {
            "PASS"
        };
        // The smoke caps FluxLit's API bodies at 64 KiB (the 413 checks), so the 2 MiB upload
        // probe gets FluxLit's own 413, which the doctor reports as a WARN naming the setting.
        let capped_here = name == "live.upload_body" && row["status"] == "WARN";
        if row["status"] != want && !capped_here {
            wrong.push(format!(
                "{name} {} (expected {want}): {}",
                row["status"], row["detail"]
            ));
        }
    }
    for name in expect_fail {
        if !rows.iter().any(|r| r["name"] == *name) {
            wrong.push(format!("no {name} row"));
        }
    }
    let code_ok = out.status.code() == Some(if expect_fail.is_empty() { 0 } else { 1 });
    // fluxlit_doctor::live::ROWS has 9 rows (live.workers lists the Streamlit workers).
    if wrong.is_empty() && rows.len() >= 9 && code_ok {
        Ok(format!(
            "{} rows as expected{} ({})",
            rows.len(),
            if expect_fail.is_empty() {
                String::new()
            } else {
                format!(", {} FAIL", expect_fail.join(", "))
            },
            out.status
        ))
    } else {
        Err(format!(
            "{url}: {} rows, {}; {}",
            rows.len(),
            out.status,
            wrong.join("; ")
        ))
    }
}

fn expect(ok: bool, r: &Response, what: &str) -> Result<String, String> {
    if ok {
        Ok(r.summary())
    } else {
        Err(format!("expected {what}, got {}", r.summary()))
    }
}

async fn healthz(t: &Target) -> Result<String, String> {
    let r = t.endpoint.get(&t.path("/api/healthz")).await?;
    expect(
        r.status == 200 && r.json()["status"] == "ok",
        &r,
        r#"200 {"status":"ok"}"#,
    )
}

async fn readyz(t: &Target) -> Result<String, String> {
    let r = t.endpoint.get(&t.path("/api/readyz")).await?;
    expect(
        r.status == 200 && r.json()["status"] == "ready",
        &r,
        r#"200 with "status":"ready""#,
    )
}

async fn api(t: &Target) -> Result<String, String> {
    let r = t.endpoint.get(&t.path("/api/smoke")).await?;
    expect(
        r.status == 200 && r.json()["marker"] == MARKER,
        &r,
        &format!(r#"200 with "marker":"{MARKER}""#),
    )
}

async fn ui_page(t: &Target) -> Result<Response, String> {
    let r = t.endpoint.get(&t.path("/")).await?;
    let html = r.text();
    let looks_right = r.header("content-type").starts_with("text/html")
        && (html.contains("<noscript") || html.to_lowercase().contains("streamlit"));
    if r.status == 200 && looks_right {
        Ok(r)
    } else {
        Err(format!(
            "expected 200 text/html with Streamlit's page, got {} ({})",
            r.summary(),
            r.header("content-type")
        ))
    }
}

async fn ui_html(t: &Target) -> Result<String, String> {
    let r = ui_page(t).await?;
    Ok(format!(
        "200 {} ({} bytes)",
        r.header("content-type"),
        r.body.len()
    ))
}

/// The first `src="…static/…"` or `href="…static/…"` reference in the page.
fn asset_reference(html: &str) -> Option<String> {
    for attr in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(i) = rest.find(attr) {
            rest = &rest[i + attr.len()..];
            let value = rest.split('"').next().unwrap_or_default();
            if value.contains("static/") && (value.ends_with(".js") || value.ends_with(".css")) {
                return Some(value.to_owned());
            }
        }
    }
    None
}

async fn static_asset(t: &Target) -> Result<String, String> {
    let page = ui_page(t).await?;
    let reference = asset_reference(&page.text())
        .ok_or_else(|| format!("no static/*.js or *.css reference in {}", page.summary()))?;
    // Streamlit's page uses paths relative to the page ("./static/js/…").
    let path = if reference.starts_with('/') {
        reference.clone()
    } else {
        t.path(&format!("/{}", reference.trim_start_matches("./")))
    };
    let r = t.endpoint.get(&path).await?;
    let ctype = r.header("content-type");
    if r.status == 200
        && !r.body.is_empty()
        && (ctype.contains("javascript") || ctype.contains("css"))
    {
        Ok(format!("{path}: 200 {ctype} ({} bytes)", r.body.len()))
    } else {
        Err(format!(
            "{path}: expected 200 JavaScript or CSS, got {} ({ctype})",
            r.status
        ))
    }
}

/// `GET {prefix}/_stcore/health`; returns the detail and the XSRF token from its cookie.
async fn stcore_health(t: &Target) -> Result<(String, String), String> {
    let r = t.endpoint.get(&t.path("/_stcore/health")).await?;
    let token = r
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.split(';').next()?.trim().strip_prefix("_streamlit_xsrf="))
        .map(str::to_owned);
    match token {
        Some(token) if r.status == 200 && r.text() == "ok" => {
            Ok(("200 ok, _streamlit_xsrf cookie set".to_owned(), token))
        }
        _ => Err(format!(
            "expected 200 ok with a _streamlit_xsrf cookie, got {} (set-cookie: {:?})",
            r.summary(),
            r.header("set-cookie")
        )),
    }
}

/// What has been received on a Streamlit WebSocket so far.
#[derive(Debug, Default)]
struct Seen {
    frames: usize,
    session_id: Option<String>,
    uploader_id: Option<String>,
    bytes: Vec<u8>,
}

impl Seen {
    fn contains(&self, needle: &str) -> bool {
        self.bytes
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }
}

/// Opens `{prefix}/_stcore/stream` as a browser does: subprotocols `streamlit` and the XSRF
/// token, the XSRF cookie, and the page's origin.
async fn open_session(t: &Target, token: &str) -> Result<Ws, String> {
    let protocols = format!("streamlit, {token}");
    let cookie = format!("_streamlit_xsrf={token}");
    let origin = t.endpoint.origin();
    let (ws, resp) = t
        .endpoint
        .websocket(
            &t.path("/_stcore/stream"),
            &[
                ("sec-websocket-protocol", &protocols),
                ("cookie", &cookie),
                ("origin", &origin),
            ],
        )
        .await?;
    let selected = resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if resp.status() != 101 || selected != "streamlit" {
        return Err(format!(
            "handshake answered {} with subprotocol {selected:?}, expected 101 streamlit",
            resp.status()
        ));
    }
    Ok(ws)
}

/// Reads frames until `done` holds, the socket ends, or `timeout` passes.
async fn read_until(
    ws: &mut Ws,
    seen: &mut Seen,
    timeout: Duration,
    done: impl Fn(&Seen) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !done(seen) {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| format!("waited {timeout:?}; {}", describe(seen)))?;
        match next {
            Some(Ok(Message::Binary(b))) => {
                seen.frames += 1;
                if seen.session_id.is_none() {
                    seen.session_id = session_id(&b);
                }
                if seen.uploader_id.is_none() {
                    seen.uploader_id = field_path(&b, &[5, 3, 33, 1])
                        .and_then(|id| String::from_utf8(id.to_vec()).ok());
                }
                if seen.bytes.len() < 8 * 1024 * 1024 {
                    seen.bytes.extend_from_slice(&b);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(format!(
                    "the server closed the socket ({frame:?}); {}",
                    describe(seen)
                ));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("WebSocket error: {e}; {}", describe(seen))),
            None => return Err(format!("the socket ended; {}", describe(seen))),
        }
    }
    Ok(())
}

fn describe(seen: &Seen) -> String {
    format!(
        "{} frames received, session id {}, title {}, marker {}",
        seen.frames,
        if seen.session_id.is_some() {
            "seen"
        } else {
            "not seen"
        },
        if seen.contains(TITLE) {
            "seen"
        } else {
            "not seen"
        },
        if seen.contains(MARKER) {
            "seen"
        } else {
            "not seen"
        },
    )
}

/// A session that has run the script once: the socket and what it received.
async fn run_app(t: &Target) -> Result<(Ws, Seen, Duration), String> {
    let (_, token) = stcore_health(t).await?;
    let mut ws = open_session(t, &token).await?;
    let start = Instant::now();
    ws.send(Message::Binary(Bytes::from_static(&RERUN_SCRIPT)))
        .await
        .map_err(|e| format!("sending the rerun BackMsg: {e}"))?;
    let mut seen = Seen::default();
    read_until(&mut ws, &mut seen, WS_CONTENT_TIMEOUT, |s| {
        s.session_id.is_some() && s.uploader_id.is_some() && s.contains(TITLE) && s.contains(MARKER)
    })
    .await?;
    Ok((ws, seen, start.elapsed()))
}

async fn websocket(t: &Target) -> Result<String, String> {
    let (mut ws, seen, took) = run_app(t).await?;
    let _ = ws.close(None).await;
    Ok(format!(
        "101 streamlit; '{TITLE}' and '{MARKER}' in {} frames within {} ms",
        seen.frames,
        took.as_millis()
    ))
}

/// A length-delimited protobuf field.
fn pb_field(field: u64, body: &[u8]) -> Vec<u8> {
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push(u8::try_from(v & 0x7f).unwrap_or(0) | 0x80);
            v >>= 7;
        }
        out.push(u8::try_from(v).unwrap_or(0));
    }
    let mut out = Vec::with_capacity(body.len() + 4);
    varint(field << 3 | 2, &mut out);
    varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

/// `BackMsg.rerun_script(11).widget_states(2).widgets(1){ id(1), file_uploader_state_value(13)
/// .uploaded_file_info(2).file_id(4) }`: the rerun a browser sends after an upload.
fn rerun_with_upload(widget_id: &str, file_id: &str) -> Vec<u8> {
    let info = pb_field(2, &pb_field(4, file_id.as_bytes()));
    let mut widget = pb_field(1, widget_id.as_bytes());
    widget.extend(pb_field(13, &info));
    pb_field(11, &pb_field(2, &pb_field(1, &widget)))
}

async fn upload(t: &Target) -> Result<String, String> {
    let (_, token) = stcore_health(t).await?;
    let (mut ws, seen, _) = run_app(t).await?;
    let (Some(sid), Some(widget_id)) = (seen.session_id.clone(), seen.uploader_id.clone()) else {
        return Err(describe(&seen));
    };
    let content = format!("uploaded through {} by cargo xtask smoke\n", t.edge.name).repeat(20);
    let boundary = "fluxlitsmokeboundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"smoke.txt\"; filename=\"smoke.txt\"\r\nContent-Type: text/plain\r\n\r\n{content}\r\n--{boundary}--\r\n"
    )
    .into_bytes();
    let ctype = format!("multipart/form-data; boundary={boundary}");
    let cookie = format!("_streamlit_xsrf={token}");
    let origin = t.endpoint.origin();
    let file_id = format!("smoke-{}", t.edge.name);
    let path = t.path(&format!("/_stcore/upload_file/{sid}/{file_id}"));

    // Without the token header: Streamlit's XSRF protection must refuse it.
    let r = t
        .endpoint
        .request(
            "PUT",
            &path,
            &[
                ("content-type", &ctype),
                ("cookie", &cookie),
                ("origin", &origin),
            ],
            body.clone(),
        )
        .await?;
    if r.status != 403 {
        return Err(format!(
            "an upload without X-Xsrftoken got {}, expected 403 (is XSRF protection on?)",
            r.summary()
        ));
    }
    // As the browser does it: cookie and header.
    let r = t
        .endpoint
        .request(
            "PUT",
            &path,
            &[
                ("content-type", &ctype),
                ("cookie", &cookie),
                ("x-xsrftoken", &token),
                ("origin", &origin),
            ],
            body,
        )
        .await?;
    if r.status != 204 {
        return Err(format!(
            "upload with the XSRF token got {}, expected 204",
            r.summary()
        ));
    }
    // The script sees the file after the rerun that carries the widget's state.
    ws.send(Message::Binary(Bytes::from(rerun_with_upload(
        &widget_id, &file_id,
    ))))
    .await
    .map_err(|e| format!("sending the rerun with the upload: {e}"))?;
    let shown = format!("Uploaded smoke.txt: {} bytes", content.len());
    let mut after = Seen::default();
    let result = read_until(&mut ws, &mut after, WS_CONTENT_TIMEOUT, |s| {
        s.contains(&shown)
    })
    .await;
    let _ = ws.close(None).await;
    result.map_err(|e| format!("upload accepted (204) but the app never showed {shown:?}: {e}"))?;
    Ok(format!(
        "403 without X-Xsrftoken, 204 with it; the app shows {shown:?}"
    ))
}

async fn body_limit(t: &Target, method: &str, path: &str) -> Result<String, String> {
    let body = vec![b'x'; OVERSIZED_BODY];
    let r = t
        .endpoint
        .request(
            method,
            path,
            &[("content-type", "application/octet-stream")],
            body,
        )
        .await?;
    let detail = format!(
        "{method} {path} with {OVERSIZED_BODY} bytes: {} ({})",
        r.summary(),
        r.header("content-type")
    );
    // FluxLit's 413 has a plain body; an HTML one would be the edge's own (its body limit
    // below FluxLit's, which the shipped configurations avoid) or an error page.
    if r.status == 413 && !r.header("content-type").contains("html") {
        Ok(detail)
    } else {
        Err(format!(
            "expected 413 with a plain body from FluxLit, got {detail}"
        ))
    }
}

/// Adds a problem for every `(key, expected)` whose value in the API's JSON `v` differs.
fn compare_fields(v: &serde_json::Value, want: &[(&str, String)], problems: &mut Vec<String>) {
    for (key, expected) in want {
        let got = v[*key].as_str().unwrap_or_default();
        if got != expected {
            problems.push(format!(
                "{key}: expected {expected:?}, the API saw {:?}",
                v[*key]
            ));
        }
    }
}

/// Whether `s` is a UUID of version 7 in its text form.
fn is_uuid_v7(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && b.iter()
            .enumerate()
            .all(|(i, c)| [8, 13, 18, 23].contains(&i) || c.is_ascii_hexdigit())
        && b[14] == b'7'
}

/// Whether `id` is a request id FluxLit keeps from a client: 1–128 characters, each visible
/// ASCII (`!` to `~`, 0x21–0x7E), the rule of `observe::request_id` (docs/operations.md,
/// "Request ids").
fn well_formed_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// The request id the API must see behind `edge` when the client's is missing or malformed:
/// its description, and whether `id` is one.
fn expected_id(edge: &Edge, id: &str) -> (String, bool) {
    match edge.request_id {
        RequestId::Edge(format) => (
            format!("the edge's own id ({})", format.describe()),
            format.matches(id),
        ),
        RequestId::Fluxlit => (
            "FluxLit's UUIDv7 (the edge passes X-Request-ID through)".to_owned(),
            is_uuid_v7(id),
        ),
    }
}

/// What the client sent as `X-Request-ID` in one case of the `request-id` check.
#[derive(Debug, Clone, Copy)]
enum SentId<'a> {
    /// Nothing.
    None,
    /// A well-formed id: it must reach the API unchanged.
    WellFormed(&'a str),
    /// A malformed id: it must never reach the API as sent.
    Malformed(&'a str),
}

impl SentId<'_> {
    fn describe(self) -> String {
        match self {
            Self::None => "without X-Request-ID".to_owned(),
            Self::WellFormed(id) if id.len() > 40 => {
                format!("with a well-formed X-Request-ID of {} characters", id.len())
            }
            Self::WellFormed(id) => format!("with the well-formed X-Request-ID {id:?}"),
            Self::Malformed(id) if id.len() > 40 => {
                format!("with a malformed X-Request-ID of {} characters", id.len())
            }
            Self::Malformed(id) => format!("with the malformed X-Request-ID {id:?}"),
        }
    }
}

/// Judges one case of the `request-id` check behind `edge`: the client sent `sent`, the API
/// saw `seen` and the response carried `returned`.
fn judge_request_id(
    edge: &Edge,
    sent: SentId<'_>,
    seen: &str,
    returned: &str,
) -> Result<(), String> {
    let case = sent.describe();
    match sent {
        SentId::WellFormed(id) if seen != id => {
            return Err(format!(
                "{case}: the API saw {seen:?}; the edge must pass a well-formed client id on unchanged"
            ));
        }
        SentId::WellFormed(_) => {}
        SentId::Malformed(id) if seen == id => {
            return Err(format!("{case}: it reached the API as sent"));
        }
        SentId::None | SentId::Malformed(_) => {
            let (want, ok) = expected_id(edge, seen);
            if !ok {
                return Err(format!("{case}: expected {want}, the API saw {seen:?}"));
            }
        }
    }
    if returned != seen {
        return Err(format!(
            "{case}: the API saw {seen:?} but the response carried {returned:?}"
        ));
    }
    Ok(())
}

/// Every shipped edge keeps a client's well-formed `X-Request-ID` (end-to-end correlation, as
/// FluxLit does) and replaces a missing or malformed one with its own id, or, behind an edge
/// that cannot make one, lets FluxLit make a UUIDv7; the id the API sees comes back on the
/// response, and the ids the edge or FluxLit make differ per request.
async fn request_id(t: &Target) -> Result<String, String> {
    let path = t.path("/api/request-id");
    let short = format!("smoke-{}-{}_!~\"{{x}}", t.edge.name, std::process::id());
    // The longest id FluxLit keeps, and one past it by far.
    let longest: String = short.chars().cycle().take(128).collect();
    let too_long: String = short.chars().cycle().take(200).collect();
    let spaced = format!("smoke {}", t.edge.name);
    let sent_ids = [short.as_str(), &longest, &too_long, &spaced];
    let cases = sent_ids
        .iter()
        .map(|id| {
            if well_formed_id(id) {
                SentId::WellFormed(id)
            } else {
                SentId::Malformed(id)
            }
        })
        .chain([SentId::None]);
    let mut problems = Vec::new();
    let mut made = Vec::new();
    for sent in cases {
        let headers: Vec<(&str, &str)> = match sent {
            SentId::None => Vec::new(),
            SentId::WellFormed(id) | SentId::Malformed(id) => vec![("x-request-id", id)],
        };
        let r = t
            .endpoint
            .request("GET", &path, &headers, Vec::new())
            .await?;
        if r.status != 200 {
            problems.push(format!("{}: status {}", sent.describe(), r.summary()));
            continue;
        }
        let seen = r.json()["request_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match judge_request_id(&t.edge, sent, &seen, &r.header("x-request-id")) {
            Err(problem) => problems.push(problem),
            Ok(()) if !matches!(sent, SentId::WellFormed(_)) => made.push(seen),
            Ok(()) => {}
        }
    }
    if problems.is_empty() && made.iter().enumerate().any(|(i, a)| made[..i].contains(a)) {
        problems.push(format!("two requests got the same id: {made:?}"));
    }
    let (want, _) = expected_id(&t.edge, "");
    if problems.is_empty() {
        Ok(format!(
            "well-formed client ids (up to 128 characters) reach the API unchanged and come back; none, 200 characters or a space: {want}, e.g. {}",
            made.first().map(String::as_str).unwrap_or_default()
        ))
    } else {
        Err(problems.join("; "))
    }
}

async fn scheme(t: &Target) -> Result<String, String> {
    let r = t.endpoint.get(&t.path("/api/scheme")).await?;
    let v = r.json();
    let want_prefix = t.path("/api");
    let want = [
        ("scheme", t.endpoint.scheme().to_owned()),
        ("host", t.endpoint.authority()),
        ("port", t.endpoint.addr.port().to_string()),
        ("prefix", want_prefix),
    ];
    let mut problems = Vec::new();
    if r.status != 200 {
        problems.push(format!("status {}", r.status));
    }
    compare_fields(&v, &want, &mut problems);
    let saw = snippet(&r.text(), 160);
    if problems.is_empty() {
        Ok(format!("the API saw {saw}"))
    } else {
        Err(format!("{} (body {saw})", problems.join("; ")))
    }
}

/// A token no other request of this run carries: the process id, the time and a counter.
fn token(kind: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{kind}{:x}{nanos:x}n{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// One request the API recorded (`GET /seen/{token}` of `examples/smoke/api.py`).
#[derive(Debug, Clone, serde::Deserialize)]
struct ApiRecord {
    method: String,
    path: String,
    query: String,
}

/// Every request the API received whose raw path or query string contains `token`.
async fn api_saw(t: &Target, token: &str) -> Result<Vec<ApiRecord>, String> {
    let r = t
        .endpoint
        .get(&t.path(&format!("/api/seen/{token}")))
        .await?;
    if r.status != 200 {
        return Err(format!(
            "GET {}/api/seen/{token}: {}",
            t.prefix,
            r.summary()
        ));
    }
    serde_json::from_value(r.json()["requests"].clone())
        .map_err(|e| format!("GET {}/api/seen/{token}: {e}: {}", t.prefix, r.summary()))
}

/// A client sends every forwarded field FluxLit may read, each with a value that would change
/// what the API sees (the other scheme, `evil.example`, port 1, prefix `/attacker`, RFC 7239
/// `Forwarded`, `X-Forwarded-For: 6.6.6.6`). The edge sets or clears each one, and FluxLit
/// believes the nearest hop, one header family, and prefix/port only when opted in, so the API
/// must see the edge's truth: the edge's scheme, the `Host` the client sent, that host's port,
/// `{prefix}/api`, and no `Forwarded`. `6.6.6.6` may stay in `X-Forwarded-For` only as its
/// leftmost element and only behind an edge that appends to the list ([`Edge::xff_appends`]);
/// the rightmost element is always the edge's address, which FluxLit adds.
async fn forwarded_spoof(t: &Target) -> Result<String, String> {
    let scheme = t.endpoint.scheme();
    let other = if scheme == "https" { "http" } else { "https" };
    let headers = [
        ("x-forwarded-proto", other),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-port", "1"),
        ("x-forwarded-prefix", "/attacker"),
        ("forwarded", "proto=https;host=evil.example"),
        ("x-forwarded-for", "6.6.6.6"),
    ];
    let r = t
        .endpoint
        .request("GET", &t.path("/api/scheme"), &headers, Vec::new())
        .await?;
    let v = r.json();
    let mut problems = Vec::new();
    if r.status != 200 {
        problems.push(format!("status {}", r.status));
    }
    let want = [
        ("scheme", scheme.to_owned()),
        ("host", t.endpoint.authority()),
        ("port", t.endpoint.addr.port().to_string()),
        ("prefix", t.path("/api")),
    ];
    compare_fields(&v, &want, &mut problems);
    if !v["forwarded"].is_null() {
        problems.push(format!(
            "the API saw Forwarded: {} (FluxLit never sends one)",
            v["forwarded"]
        ));
    }
    let xff = v["for"].as_str().unwrap_or_default().to_owned();
    let nodes: Vec<&str> = xff.split(',').map(str::trim).collect();
    let spoofed_at: Vec<usize> = (0..nodes.len())
        .filter(|&i| nodes[i] == "6.6.6.6")
        .collect();
    let edge_addr = t.endpoint.addr.ip().to_string();
    let xff_note = match (t.edge.xff_appends, spoofed_at.as_slice()) {
        (_, _) if nodes.last() != Some(&edge_addr.as_str()) => {
            problems.push(format!(
                "X-Forwarded-For {xff:?} does not end with the edge's address {edge_addr}"
            ));
            ""
        }
        (true, [0]) => "the edge appends to X-Forwarded-For (the client's 6.6.6.6 stays leftmost)",
        (_, []) => "the edge replaces X-Forwarded-For",
        (appends, _) => {
            let how = if appends {
                "appends (the client's value may only be leftmost)"
            } else {
                "replaces the client's X-Forwarded-For"
            };
            problems.push(format!(
                "X-Forwarded-For {xff:?} holds the client's 6.6.6.6, but this edge {how}"
            ));
            ""
        }
    };
    let saw = snippet(&r.text(), 220);
    if problems.is_empty() {
        Ok(format!("{xff_note}; the API saw {saw}"))
    } else {
        Err(format!("{} (body {saw})", problems.join("; ")))
    }
}

/// Request smuggling (review finding F1) through the edge, on one connection (TLS through
/// `openssl s_client` for the TLS edge): `POST {prefix}/api/probe/T/outer` with `Connection:
/// keep-alive, Content-Length` and a body that is itself a request (`GET
/// {prefix}/api/probe/T/SMUGGLED` with `X-Remote-User: admin`), then a plain `GET
/// {prefix}/api/probe/T/second` (on the same connection unless the edge closed it). Each
/// response must answer its own request (the probe route names itself; the outer one with the
/// whole body as a body), nothing may follow the last one, and the API's record of the token
/// (`GET /seen/T`) must not hold the smuggled request. An edge that refuses the outer request
/// itself (a 4xx) passes as long as nothing was smuggled and the second request is answered.
async fn smuggling(t: &Target) -> Result<String, String> {
    let token = token("smuggle");
    let host = t.endpoint.authority();
    let probe = |name: &str| t.path(&format!("/api/probe/{token}/{name}"));
    let hidden = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nX-Remote-User: admin\r\n\r\n",
        probe("SMUGGLED")
    );
    let outer = format!(
        "POST {} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive, Content-Length\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{hidden}",
        probe("outer"),
        hidden.len()
    );
    let second = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        probe("second")
    );
    let mut notes = Vec::new();
    let mut problems = Vec::new();
    let mut conn = RawConn::open(&t.endpoint).await?;
    conn.send(outer.as_bytes()).await?;
    let first = conn.response().await.map_err(|e| {
        format!(
            "reading the response to the outer request: {e}{}",
            t.endpoint.tls_diagnostics()
        )
    })?;
    let answers = |r: &RawResponse, name: &str| r.status == 200 && r.json()["name"] == name;
    match &first {
        None => notes
            .push("the edge closed the connection without answering the outer request".to_owned()),
        Some(r) if answers(r, "outer") => {
            let got = r.json()["body_bytes"].as_u64().unwrap_or_default();
            if usize::try_from(got).ok() == Some(hidden.len()) {
                notes.push(format!("outer: 200 with its {got}-byte body as a body"));
            } else {
                problems.push(format!(
                    "the outer request reached the API with {got} body bytes, not {}",
                    hidden.len()
                ));
            }
        }
        Some(r) if (400..500).contains(&r.status) => {
            notes.push(format!("outer refused: {}", r.summary()));
        }
        Some(r) => problems.push(format!(
            "the response to the outer request is not its own: {}",
            r.summary()
        )),
    }
    // The second request, on the same connection while it is open.
    let mut second_response = None;
    if first.as_ref().is_some_and(|r| !r.closes()) {
        conn.send(second.as_bytes()).await?;
        second_response = conn.response().await.map_err(|e| {
            format!(
                "reading the response to the second request: {e}{}",
                t.endpoint.tls_diagnostics()
            )
        })?;
        if second_response.is_none() {
            notes.push("the edge closed the connection after the outer request".to_owned());
        }
    } else {
        notes.push("the edge closed the connection after the outer request".to_owned());
    }
    if second_response.is_none() {
        conn = RawConn::open(&t.endpoint).await?;
        conn.send(second.as_bytes()).await?;
        second_response = conn.response().await?;
        notes.push("second sent on a new connection".to_owned());
    }
    match &second_response {
        Some(r) if answers(r, "second") => notes.push("second: 200, its own response".to_owned()),
        Some(r) if r.json()["name"] == "SMUGGLED" => problems.push(format!(
            "the second request got the smuggled request's response: {}",
            r.summary()
        )),
        Some(r) => problems.push(format!(
            "the second request got {} instead of its own response",
            r.summary()
        )),
        None => problems.push("the second request got no response".to_owned()),
    }
    let extra = conn.rest(Duration::from_millis(300)).await;
    if !extra.is_empty() {
        problems.push(format!(
            "bytes after the last response (a response too many?): {}",
            snippet(&String::from_utf8_lossy(&extra), 160)
        ));
    }
    // A smuggled request would have been read right after the outer one; give it time to
    // land before asking the API what it saw.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = api_saw(t, &token).await?;
    let paths: Vec<String> = seen
        .iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect();
    if seen.iter().any(|s| s.path.contains("SMUGGLED")) {
        problems.push(format!(
            "the API received the smuggled request (X-Remote-User: admin); it saw {paths:?}"
        ));
    }
    if problems.is_empty() {
        Ok(format!(
            "{}; the API saw {paths:?}, never the smuggled request",
            notes.join("; ")
        ))
    } else {
        Err(format!("{}; ({})", problems.join("; "), notes.join("; ")))
    }
}

/// How long FluxLit has to write the access-log lines of requests already answered.
const ACCESS_LOG_TIMEOUT: Duration = Duration::from_secs(5);

/// The access-log lines of requests (`fluxlit::access` with a `status`) FluxLit wrote since
/// this edge's checks began. WebSocket tunnels' open and end lines share the target but are
/// written whatever the configuration, so they do not count.
fn access_lines(t: &Target) -> Result<Vec<String>, String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(&t.gateway_log)
        .map_err(|e| format!("cannot open {}: {e}", t.gateway_log.display()))?;
    let mut text = Vec::new();
    file.seek(SeekFrom::Start(t.gateway_log_from))
        .and_then(|_| file.read_to_end(&mut text))
        .map_err(|e| format!("cannot read {}: {e}", t.gateway_log.display()))?;
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .filter(|l| l.contains("fluxlit::access") && l.contains(" status="))
        .map(str::to_owned)
        .collect())
}

/// The `fast_path` field of FluxLit's `gateway listening` line (`true` or `false`), the
/// engine setting the run started with.
fn listening_fast_path(t: &Target) -> Result<String, String> {
    let text = std::fs::read_to_string(&t.gateway_log)
        .map_err(|e| format!("cannot read {}: {e}", t.gateway_log.display()))?;
    let line = text
        .lines()
        .find(|l| l.contains("gateway listening"))
        .ok_or_else(|| format!("no 'gateway listening' line in {}", t.gateway_log.display()))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("fast_path="))
        .map(str::to_owned)
        .ok_or_else(|| {
            format!(
                "no fast_path= field in the listening line: {}",
                snippet(line, 160)
            )
        })
}

/// Whether the log matches the mode (see [`Check::GatewayLog`]). The checks before this one
/// made dozens of requests through the edge, UI and API alike.
async fn gateway_log(t: &Target) -> Result<String, String> {
    let want = if t.mode.fast_path() { "true" } else { "false" };
    let fast_path = listening_fast_path(t)?;
    if fast_path != want {
        return Err(format!(
            "mode {} expects the gateway to start with fast_path={want}, its listening line says fast_path={fast_path}",
            t.mode.name()
        ));
    }
    // Lines are written when a response ends (by the log writer's thread); give the last ones
    // a moment.
    let deadline = Instant::now() + ACCESS_LOG_TIMEOUT;
    loop {
        let lines = access_lines(t)?;
        let ui = lines
            .iter()
            .filter(|l| l.contains("fluxlit_dispatch=\"streamlit\""))
            .count();
        if !lines.is_empty() && ui > 0 {
            return Ok(format!(
                "fast_path={fast_path}: {} request lines for this edge's requests ({ui} for the UI, {})",
                lines.len(),
                if t.mode.fast_path() {
                    "which plain HTTP/1.1 serves on the fast path"
                } else {
                    "all on the hyper engine"
                }
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "fast_path={fast_path}, access log on, but FluxLit logged {} request lines ({ui} for the UI) for this edge's requests within {ACCESS_LOG_TIMEOUT:?}",
                lines.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where a path goes, as an edge serving `prefix` routes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    /// `{prefix}/api` and below.
    Api,
    /// Anything else under `{prefix}/`.
    Ui,
    /// Not under the prefix: the edge serves no FluxLit route for it.
    Outside,
}

impl Dest {
    fn of(path: &str, prefix: &str) -> Self {
        match path.strip_prefix(prefix) {
            Some(rest) if rest == "/api" || rest.starts_with("/api/") => Self::Api,
            Some(rest) if rest.starts_with('/') => Self::Ui,
            _ => Self::Outside,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Api => "the API",
            Self::Ui => "the UI",
            Self::Outside => "outside the app",
        }
    }
}

/// Who answered a dot-segment probe.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Served {
    /// The API (it recorded the probe's token), under these raw paths.
    Api(Vec<String>),
    /// Something behind the edge other than the API answered 2xx: Streamlit.
    Ui(u16),
    /// Refused with this status; true when it is FluxLit's 400 for a dot segment.
    Refused(u16, bool),
}

impl Served {
    /// Whether this answer is one the edge meant: a refusal always is; the API only when the
    /// edge routed the probe to the API and the API saw no dot segment; the UI only when the
    /// edge routed the probe to the UI.
    fn acceptable(&self, intended: Dest) -> bool {
        match self {
            Self::Api(paths) => intended == Dest::Api && paths.iter().all(|p| !has_dot_segment(p)),
            Self::Ui(_) => intended == Dest::Ui,
            Self::Refused(..) => true,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Api(paths) => format!("served by the API as {paths:?}"),
            Self::Ui(status) => format!("{status} served by the UI"),
            Self::Refused(_, true) => "400 from FluxLit".to_owned(),
            Self::Refused(status, false) => format!("{status} from the edge"),
        }
    }
}

/// `path` with `%2e` decoded and dot segments removed (RFC 3986 §5.2.4), as a normalising edge
/// sees it.
fn remove_dot_segments(path: &str) -> String {
    let decoded = path.replace("%2e", ".").replace("%2E", ".");
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let mut out: Vec<&str> = Vec::new();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *segment {
            "." => {}
            ".." => {
                out.pop();
            }
            s => {
                out.push(s);
                continue;
            }
        }
        if last {
            out.push("");
        }
    }
    format!("/{}", out.join("/"))
}

/// Whether a segment of `path` (no query) is `.` or `..`, plain or with `%2e`.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| {
        let s = s.replace("%2e", ".").replace("%2E", ".");
        s == "." || s == ".."
    })
}

/// The paths `dot-segments` sends, under the public prefix.
const DOT_PROBES: [&str; 3] = [
    "/%2e%2e/api/smoke",
    "/./api/smoke",
    "/api/%2e%2e/_stcore/health",
];

/// Dot segments (review finding F3): `{prefix}/%2e%2e/api/smoke`, `{prefix}/./api/smoke` and
/// `{prefix}/api/%2e%2e/_stcore/health` through the edge, each with a token in its query
/// string. The route the edge intended is that of the path it routes on: with `%2e` decoded
/// and dot segments removed for an edge that normalises ([`Edge::routes_normalised_path`]:
/// nginx, Caddy, Traefik), the path as sent for one that does not (HAProxy). Each probe passes
/// when it was refused (FluxLit's 400 for a dot segment, or the edge's own 4xx), or when it was
/// served where the edge meant it to go: by the API (which recorded the token) only if the edge
/// intended the API and the API saw no dot segment, by the UI (a 2xx the API did not record)
/// only if the edge intended the UI. It fails when the API or Streamlit served a probe under a
/// route the edge did not intend, which is what let a client reach the API past an edge's rules
/// for `{prefix}/api/`.
async fn dot_segments(t: &Target) -> Result<String, String> {
    let token = token("dot");
    let mut results = Vec::new();
    for (i, probe) in DOT_PROBES.iter().enumerate() {
        let path = t.path(probe);
        let r = t.endpoint.get(&format!("{path}?probe={token}p{i}")).await?;
        results.push((path, r));
    }
    let seen = api_saw(t, &token).await?;
    let mut lines = Vec::new();
    let mut failed = false;
    for (i, (path, r)) in results.iter().enumerate() {
        let routed_on = if t.edge.routes_normalised_path {
            remove_dot_segments(path)
        } else {
            path.clone()
        };
        let intended = Dest::of(&routed_on, t.prefix);
        let mark = format!("probe={token}p{i}");
        let api_paths: Vec<String> = seen
            .iter()
            .filter(|s| s.query.split('&').any(|q| q == mark))
            .map(|s| s.path.clone())
            .collect();
        let served = if !api_paths.is_empty() {
            Served::Api(api_paths)
        } else if (200..300).contains(&r.status) {
            Served::Ui(r.status)
        } else {
            Served::Refused(
                r.status,
                r.status == 400 && r.text().starts_with("FluxLit:"),
            )
        };
        let ok = served.acceptable(intended);
        let what = served.describe();
        failed |= !ok;
        lines.push(format!(
            "{}{path}: {what} (the edge routes it{} to {})",
            if ok { "" } else { "NOT OK " },
            if t.edge.routes_normalised_path {
                format!(" as {routed_on}")
            } else {
                String::new()
            },
            intended.name()
        ));
    }
    if failed {
        Err(lines.join("; "))
    } else {
        Ok(lines.join("; "))
    }
}

async fn redirect(t: &Target) -> Result<String, String> {
    let r = t.endpoint.get(t.prefix).await?;
    let location = r.header("location");
    let origin = t.endpoint.origin();
    let path = location.strip_prefix(&origin).unwrap_or(&location);
    let path = path.split('?').next().unwrap_or_default();
    let want = format!("{}/", t.prefix);
    if matches!(r.status, 301 | 302 | 307 | 308) && path == want {
        Ok(format!("{} Location: {location}", r.status))
    } else {
        Err(format!(
            "expected a redirect to {want}, got {} Location: {location:?}",
            r.status
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_asset_reference() {
        let html = r#"<link rel="icon" href="./favicon.png"/><script defer src="./static/js/index.abc.js"></script>"#;
        assert_eq!(
            asset_reference(html).as_deref(),
            Some("./static/js/index.abc.js")
        );
        assert_eq!(asset_reference("<html></html>"), None);
    }

    #[test]
    fn request_id_rule_is_fluxlits() {
        assert!(well_formed_id("a"));
        assert!(well_formed_id("!~\"{x}"));
        assert!(well_formed_id(&"a".repeat(128)));
        assert!(!well_formed_id(&"a".repeat(129)));
        assert!(!well_formed_id(""));
        assert!(!well_formed_id("a b"));
        assert!(!well_formed_id("a\tb"));
        assert!(!well_formed_id("café"));
    }

    /// The judgement per edge: a well-formed client id must arrive unchanged, a missing or
    /// malformed one must be replaced by the edge's id (or FluxLit's behind Traefik).
    #[test]
    fn judges_request_id_cases() {
        let edge = |name: &str| {
            *crate::smoke::edges::EDGES
                .iter()
                .find(|e| e.name == name)
                .expect("a shipped edge")
        };
        let (nginx, caddy, traefik) = (edge("nginx-root"), edge("caddy"), edge("traefik"));
        let hex = "3a435108a43b53a9812573dac08a2c99";
        let v4 = "86543132-0afc-4f9b-8cff-5c401b2ccd67";
        let v7 = "01890a5d-ac96-774b-bcce-b302099a8057";
        let client = "client-1";
        let long = "a".repeat(200);

        // A well-formed client id reaches the API unchanged and comes back, on every edge.
        for e in [nginx, caddy, traefik] {
            assert_eq!(
                judge_request_id(&e, SentId::WellFormed(client), client, client),
                Ok(())
            );
            assert!(judge_request_id(&e, SentId::WellFormed(client), hex, hex).is_err());
            assert!(judge_request_id(&e, SentId::WellFormed(client), v7, v7).is_err());
            assert!(judge_request_id(&e, SentId::WellFormed(client), client, v7).is_err());
        }
        // None or malformed: the edge's own id, or FluxLit's behind Traefik.
        for sent in [
            SentId::None,
            SentId::Malformed(&long),
            SentId::Malformed("a b"),
        ] {
            assert_eq!(judge_request_id(&nginx, sent, hex, hex), Ok(()));
            assert!(judge_request_id(&nginx, sent, v7, v7).is_err());
            assert_eq!(judge_request_id(&caddy, sent, v4, v4), Ok(()));
            assert!(judge_request_id(&caddy, sent, hex, hex).is_err());
            assert_eq!(judge_request_id(&traefik, sent, v7, v7), Ok(()));
            assert!(judge_request_id(&traefik, sent, v4, v4).is_err());
            assert!(judge_request_id(&nginx, sent, hex, "").is_err());
        }
        // A malformed id never reaches the API as sent.
        let err = judge_request_id(&traefik, SentId::Malformed(&long), &long, &long)
            .expect_err("a malformed id reached the API");
        assert!(err.contains("reached the API as sent"), "{err}");
    }

    #[test]
    fn recognises_uuid_v7() {
        assert!(is_uuid_v7("01890a5d-ac96-774b-bcce-b302099a8057"));
        assert!(!is_uuid_v7("4b3a2b1c-0000-4000-8000-000000000000"));
        assert!(!is_uuid_v7("smoke"));
    }

    #[test]
    fn removes_dot_segments_like_a_normalising_edge() {
        assert_eq!(remove_dot_segments("/myapp/%2e%2e/api/smoke"), "/api/smoke");
        assert_eq!(
            remove_dot_segments("/myapp/./api/smoke"),
            "/myapp/api/smoke"
        );
        assert_eq!(
            remove_dot_segments("/myapp/api/%2E%2e/_stcore/health"),
            "/myapp/_stcore/health"
        );
        assert_eq!(remove_dot_segments("/%2e%2e/api/smoke"), "/api/smoke");
        assert_eq!(remove_dot_segments("/a/b/.."), "/a/");
        assert_eq!(remove_dot_segments("/a/."), "/a/");
        assert!(has_dot_segment("/x/%2E%2e/y") && has_dot_segment("/./y"));
        assert!(!has_dot_segment("/x/..y/.z") && !has_dot_segment("/smoke"));
    }

    #[test]
    fn classifies_routes_under_the_prefix() {
        assert_eq!(Dest::of("/myapp/api/smoke", "/myapp"), Dest::Api);
        assert_eq!(Dest::of("/myapp/apix", "/myapp"), Dest::Ui);
        assert_eq!(Dest::of("/myappx/api/smoke", "/myapp"), Dest::Outside);
        assert_eq!(Dest::of("/api/smoke", "/myapp"), Dest::Outside);
        assert_eq!(Dest::of("/api/smoke", ""), Dest::Api);
        assert_eq!(Dest::of("/_stcore/health", ""), Dest::Ui);
    }

    #[test]
    fn judges_dot_segment_answers_by_the_edge_route() {
        let api = |p: &str| Served::Api(vec![p.to_owned()]);
        // Refusals always pass.
        for dest in [Dest::Api, Dest::Ui, Dest::Outside] {
            assert!(Served::Refused(400, true).acceptable(dest));
            assert!(Served::Refused(404, false).acceptable(dest));
        }
        // The API only where the edge routed the probe, and never with a dot segment.
        assert!(api("/smoke").acceptable(Dest::Api));
        assert!(!api("/smoke").acceptable(Dest::Ui));
        assert!(!api("/smoke").acceptable(Dest::Outside));
        assert!(!api("/%2e%2e/_stcore/health").acceptable(Dest::Api));
        // The UI only where the edge routed the probe.
        assert!(Served::Ui(200).acceptable(Dest::Ui));
        assert!(!Served::Ui(200).acceptable(Dest::Api));
        assert!(!Served::Ui(200).acceptable(Dest::Outside));
    }

    #[test]
    fn tokens_differ() {
        assert_ne!(token("x"), token("x"));
    }

    #[test]
    fn builds_the_upload_rerun() {
        let msg = rerun_with_upload("w", "f");
        // rerun_script(11) > widget_states(2) > widgets(1) > file_uploader_state_value(13)
        // > uploaded_file_info(2) > file_id(4)
        assert_eq!(field_path(&msg, &[11, 2, 1, 13, 2, 4]), Some(&b"f"[..]));
        assert_eq!(field_path(&msg, &[11, 2, 1, 1]), Some(&b"w"[..]));
    }
}
