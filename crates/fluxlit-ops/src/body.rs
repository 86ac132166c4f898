//! `chaos-oversized-body`: bodies over the gateway's limit get 413 naming the setting, with
//! `Content-Length` (refused up front) and chunked (refused while streaming).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;

use crate::net::{self, Body, Http};
use crate::report::{Report, ms};
use crate::soak::first_line;

/// Options of `chaos-oversized-body`.
#[derive(Debug, Clone)]
pub struct OversizedOptions {
    /// `http://host:port[/prefix]`.
    pub base_url: String,
    /// The gateway's limit for the route, in bytes (`gateway_max_proxy_request_body_bytes`
    /// for UI paths, `gateway_max_api_request_body_bytes` under the API mount).
    pub limit_bytes: u64,
    /// Path the bodies are POSTed to.
    pub path: String,
    /// Bound of each request, in seconds.
    pub timeout_seconds: f64,
}

/// Largest limit the tool will exceed (it sends `limit + 16` bytes).
pub const MAX_LIMIT_BYTES: u64 = 1 << 30;

fn pattern(len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>())
}

/// A chunked body (no `Content-Length`): `total` bytes in chunks of at most 64 KiB.
fn chunked(total: usize) -> Body {
    let chunk = 64 * 1024;
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = (0..total.div_ceil(chunk))
        .map(|i| Ok(Frame::data(pattern(chunk.min(total - i * chunk)))))
        .collect();
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

/// A chunked body (no `Content-Length`) in two parts with a pause between them, so that the
/// second part arrives while the upstream is already reading.
fn chunked_in_two(first: Bytes, second: Bytes, pause: Duration) -> Body {
    let s = futures_util::stream::unfold(0u8, move |i| {
        let (first, second) = (first.clone(), second.clone());
        async move {
            let data = match i {
                0 => first,
                1 => {
                    tokio::time::sleep(pause).await;
                    second
                }
                _ => return None,
            };
            Some((Ok::<_, Infallible>(Frame::data(data)), i + 1))
        }
    });
    StreamBody::new(s).boxed()
}

/// Streamlit's upload path prefix: uploads are where the UI body limit matters.
const UPLOAD_PREFIX: &str = "/_stcore/upload_file/";

/// A real Streamlit upload (`PUT {base}/_stcore/upload_file/{session}/{file}` with the XSRF
/// cookie and header, multipart, chunked) of `over` bytes; Streamlit reads the body as it
/// arrives, so the gateway sees it pass the limit while streaming.
async fn streamlit_upload(
    base: &str,
    http: &Http,
    over: usize,
) -> Result<crate::net::Answer, String> {
    let url = crate::ws::stream_url(base)?;
    let (mut ws, _) = crate::ws::connect(&url, Duration::from_secs(10)).await?;
    let content = crate::ws::rerun_and_wait(
        &mut ws,
        None,
        tokio::time::Instant::now() + Duration::from_secs(30),
    )
    .await?;
    let sid = content
        .session_id
        .ok_or("the first frame was not Streamlit's new_session")?;
    let health = http.get(&net::join(base, "/_stcore/health")).await?;
    let token = health
        .headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| {
            c.split(';')
                .next()?
                .strip_prefix("_streamlit_xsrf=")
                .map(str::to_owned)
        });
    let boundary = "fluxlitopsboundary";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"big.bin\"; filename=\"big.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let payload = over.saturating_sub(head.len() + tail.len()).max(1);
    let half = payload / 2;
    let mut first = head.into_bytes();
    first.extend_from_slice(&pattern(half));
    let mut second = pattern(payload - half).to_vec();
    second.extend_from_slice(tail.as_bytes());
    let mut b = Request::put(net::join(
        base,
        &format!("{UPLOAD_PREFIX}{sid}/fluxlit-ops-oversized"),
    ))
    .header(
        "content-type",
        format!("multipart/form-data; boundary={boundary}"),
    );
    if let Some(t) = &token {
        b = b
            .header("cookie", format!("_streamlit_xsrf={t}"))
            .header("x-xsrftoken", t.as_str());
    }
    let req = b
        .body(chunked_in_two(
            Bytes::from(first),
            Bytes::from(second),
            Duration::from_millis(200),
        ))
        .map_err(|e| format!("bad request: {e}"))?;
    let answer = http.send(req).await;
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        futures_util::SinkExt::close(&mut ws),
    )
    .await;
    answer
}

fn names_setting(body: &str) -> bool {
    body.contains("gateway_max_proxy_request_body_bytes")
        || body.contains("gateway_max_api_request_body_bytes")
}

/// Runs the oversized-body checks.
pub async fn oversized(opts: &OversizedOptions) -> Report {
    let mut report = Report::new("chaos-oversized-body");
    let start = Instant::now();
    let base = match net::base_url(&opts.base_url) {
        Ok(b) => b,
        Err(e) => {
            report.fail("base URL", e);
            return report;
        }
    };
    if opts.limit_bytes == 0 || opts.limit_bytes > MAX_LIMIT_BYTES {
        report.fail(
            "--limit-bytes",
            format!(
                "{} is not between 1 and {MAX_LIMIT_BYTES} (0 means no limit: nothing to test)",
                opts.limit_bytes
            ),
        );
        return report;
    }
    let url = net::join(&base, &opts.path);
    let http = Http::fresh(net::secs(opts.timeout_seconds));
    let Ok(over) = usize::try_from(opts.limit_bytes + 16) else {
        report.fail("--limit-bytes", "too large for this platform");
        return report;
    };
    let at = over - 16;
    let post = |body: Body, len: Option<usize>| {
        let mut b = Request::post(&url).header("content-type", "application/octet-stream");
        if let Some(n) = len {
            b = b.header("content-length", n);
        }
        b.body(body).map_err(|e| format!("bad request: {e}"))
    };

    // 1. Declared length over the limit: refused up front.
    let r = match post(Full::new(pattern(over)).boxed(), Some(over)) {
        Ok(req) => http.send(req).await,
        Err(e) => Err(e),
    };
    let mut times = Vec::new();
    match r {
        Ok(a) => {
            times.push(ms(a.elapsed));
            let text = a.text();
            report.check(
                format!("Content-Length {over} → 413"),
                a.status == 413,
                format!("{} {}", a.status, first_line(&text)),
            );
            report.check(
                "the 413 body names the setting",
                a.status != 413 || names_setting(&text),
                first_line(&text),
            );
        }
        Err(e) => report.fail(format!("Content-Length {over} → 413"), e),
    }

    // 2. Chunked (no Content-Length) over the limit: refused while streaming. The upstream
    // must read the body for the gateway to see it pass the limit, so under Streamlit's upload
    // path this is a real upload (session, XSRF cookie and header); elsewhere a plain POST.
    let upload = opts.path.starts_with(UPLOAD_PREFIX);
    let r = if upload {
        streamlit_upload(&base, &http, over).await
    } else {
        match post(chunked(over), None) {
            Ok(req) => http.send(req).await,
            Err(e) => Err(e),
        }
    };
    match r {
        Ok(a) => {
            times.push(ms(a.elapsed));
            let text = a.text();
            report.check(
                format!(
                    "chunked {over} bytes{} → 413",
                    if upload { " (a Streamlit upload)" } else { "" }
                ),
                a.status == 413,
                format!("{} {}", a.status, first_line(&text)),
            );
            report.check(
                "the chunked 413 body names the setting",
                a.status != 413 || names_setting(&text),
                first_line(&text),
            );
        }
        Err(e) => report.fail(
            format!(
                "chunked {over} bytes{} → 413",
                if upload { " (a Streamlit upload)" } else { "" }
            ),
            e,
        ),
    }

    // 3. Exactly at the limit: not refused by the gateway (the upstream answers what it will).
    let r = match post(Full::new(pattern(at)).boxed(), Some(at)) {
        Ok(req) => http.send(req).await,
        Err(e) => Err(e),
    };
    match r {
        Ok(a) => {
            let text = a.text();
            times.push(ms(a.elapsed));
            report.check(
                format!("{at} bytes (the limit) are not 413"),
                !(a.status == 413 && names_setting(&text)),
                format!("{} {}", a.status, first_line(&text)),
            );
        }
        Err(e) => report.fail(format!("{at} bytes (the limit) are not 413"), e),
    }

    // 4. Still alive.
    let r = net::wait_status(
        &http,
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
    report.summary = format!(
        "{over} bytes (limit {}) to {}: Content-Length 413, chunked{} 413; at the limit not 413; times {times:?} ms",
        opts.limit_bytes,
        opts.path,
        if upload { " upload" } else { "" }
    );
    report.set("url", url);
    report.set("limit_bytes", opts.limit_bytes);
    report.set("sent_bytes", over);
    report.elapsed = start.elapsed();
    report
}
