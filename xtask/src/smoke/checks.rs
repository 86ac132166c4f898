//! The checks made through each edge. Each one returns `Ok(detail)` (PASS) or `Err(detail)`
//! (FAIL), the detail saying what was seen.

use std::time::Duration;

use bytes::Bytes;
use fluxlit_testkit::streamlit::{RERUN_SCRIPT, field_path, session_id};
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::client::{Endpoint, Response, Ws, snippet};

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
    /// The edge's name, used in request ids and uploaded content.
    pub(crate) edge: &'static str,
    /// The edge's address (and certificate).
    pub(crate) endpoint: Endpoint,
    /// The public path prefix (`""`, `/myapp`, `/apps/my-app`).
    pub(crate) prefix: &'static str,
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
    /// The request id reaches the API and comes back on the response.
    RequestId,
    /// The API sees the public scheme, host and prefix.
    Scheme,
    /// `GET {prefix}` (no trailing slash) redirects to `{prefix}/`.
    Redirect,
}

/// Every check, in report order (`Redirect` applies to prefixed edges only).
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
    Check::Redirect,
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
            Self::Redirect => "prefix-redirect",
        }
    }

    /// Whether the check applies to an edge with this public prefix.
    pub(crate) fn applies(self, prefix: &str) -> bool {
        self != Self::Redirect || !prefix.is_empty()
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
            Self::Redirect => redirect(t).await,
        }
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
    let content = format!("uploaded through {} by cargo xtask smoke\n", t.edge).repeat(20);
    let boundary = "fluxlitsmokeboundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"smoke.txt\"; filename=\"smoke.txt\"\r\nContent-Type: text/plain\r\n\r\n{content}\r\n--{boundary}--\r\n"
    )
    .into_bytes();
    let ctype = format!("multipart/form-data; boundary={boundary}");
    let cookie = format!("_streamlit_xsrf={token}");
    let origin = t.endpoint.origin();
    let file_id = format!("smoke-{}", t.edge);
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

async fn request_id(t: &Target) -> Result<String, String> {
    let path = t.path("/api/request-id");
    let sent = format!("smoke-{}-{}", t.edge, std::process::id());
    let r = t
        .endpoint
        .request("GET", &path, &[("x-request-id", &sent)], Vec::new())
        .await?;
    let seen = r.json()["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let returned = r.header("x-request-id");
    let mut problems = Vec::new();
    if r.status != 200 {
        problems.push(format!("status {}", r.summary()));
    }
    if seen != sent {
        problems.push(format!("sent X-Request-ID {sent:?}, the API saw {seen:?}"));
    }
    if returned != sent {
        problems.push(format!(
            "the response's X-Request-ID is {returned:?}, expected {sent:?}"
        ));
    }
    // Without one, FluxLit makes a UUIDv7 and uses it on both sides.
    let r = t.endpoint.get(&path).await?;
    let generated = r.json()["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let returned_new = r.header("x-request-id");
    if !is_uuid_v7(&generated) {
        problems.push(format!(
            "without one, the API saw {generated:?}, expected a new UUIDv7"
        ));
    } else if returned_new != generated {
        problems.push(format!(
            "without one, the API saw {generated:?} but the response carried {returned_new:?}"
        ));
    }
    if problems.is_empty() {
        Ok(format!(
            "{sent:?} reached the API and came back; without one: {generated}"
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
        ("prefix", want_prefix),
    ];
    let mut problems = Vec::new();
    if r.status != 200 {
        problems.push(format!("status {}", r.status));
    }
    for (key, expected) in &want {
        let got = v[*key].as_str().unwrap_or_default();
        if got != expected {
            problems.push(format!(
                "{key}: expected {expected:?}, the API saw {:?}",
                v[*key]
            ));
        }
    }
    let saw = snippet(&r.text(), 160);
    if problems.is_empty() {
        Ok(format!("the API saw {saw}"))
    } else {
        Err(format!("{} (body {saw})", problems.join("; ")))
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
    fn recognises_uuid_v7() {
        assert!(is_uuid_v7("01890a5d-ac96-774b-bcce-b302099a8057"));
        assert!(!is_uuid_v7("4b3a2b1c-0000-4000-8000-000000000000"));
        assert!(!is_uuid_v7("smoke"));
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
