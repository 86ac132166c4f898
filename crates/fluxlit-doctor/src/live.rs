//! `fluxlit doctor --live URL`: checks a running deployment from the outside, as a browser
//! would, through whatever sits in front of it (an ingress, nginx, Traefik, a load balancer).
//!
//! Rows, in order (each with the fix for the usual cause when it is not PASS):
//! - `live.healthz`: `GET {URL}{api_mount}/healthz` answers 200 (the gateway is reachable;
//!   TLS and DNS errors show here).
//! - `live.readyz`: `GET {URL}{api_mount}/readyz` answers 200; a 503 shows the gateway's
//!   detail (which sidecar is not ready).
//! - `live.workers`: the Streamlit workers as that answer lists them (`components`
//!   `streamlit-1` … with `streamlit_workers` > 1, else `streamlit`), each with its state:
//!   PASS when all are ready, WARN when some are not but the quorum
//!   (`streamlit_workers_min_ready`) holds, FAIL when none or too few are.
//! - `live.ui_shell`: `GET {URL}` answers 200 with Streamlit's HTML shell (`<div id="root">`);
//!   anything else is the "blank UI" symptom.
//! - `live.static_asset`: the first `<script src>` of the shell answers 200 (a proxy that
//!   does not forward the root path's subpaths breaks this).
//! - `live.websocket`: a WebSocket upgrade to `{URL}_stcore/stream` with the `streamlit`
//!   subprotocol answers 101 and stays open for `hold` (2 s): a proxy that drops the `Upgrade`
//!   and `Connection` headers answers 400/404 instead, and a short proxy read timeout closes it.
//! - `live.upload_body`: a `POST` of `upload_bytes` (2 MiB: above nginx's default
//!   `client_max_body_size` of 1 MiB) under the API mount is not refused with 413 by anything
//!   in front of the gateway (Streamlit's uploads go through the same proxy).
//! - `live.api_mount`: `GET {URL}{api_mount}/openapi.json` is not answered by Streamlit's
//!   HTML shell (the API mount reaches the API, not the UI).
//! - `live.forwarded`: `GET {URL}__fluxlit/client` (the gateway's client view,
//!   `fluxlit_gateway::CLIENT_PATH`) shows the scheme, host, port and prefix the app sees, and
//!   they are the URL's: otherwise the app builds wrong absolute URLs and redirects (http links
//!   on an https site, the internal host name, a missing prefix) because the proxy does not
//!   send the forwarded headers or FluxLit does not trust it.
//!
//! `https://` URLs are checked over TLS with the system's trust store (`rustls-native-certs`;
//! `SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured). Every step is bounded by `timeout`.
//! Only `GET`, the upgrade and one `POST` to a path under the API mount that no FluxLit or
//! example route uses are sent.

use std::time::Duration;

use futures_util::StreamExt;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::{Check, Report, Status};

/// What to check and how patiently.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// The public URL of the app, as a browser opens it: `http(s)://host[:port][/root_path/]`.
    pub url: String,
    /// The API mount under the URL (`/api` by default).
    pub api_mount: String,
    /// Bound on each step (connect, TLS, request, response), seconds.
    pub timeout: Duration,
    /// How long the WebSocket must stay open (2 s).
    pub hold: Duration,
    /// Size of the body of the upload check, bytes (2 MiB).
    pub upload_bytes: usize,
}

impl LiveOptions {
    /// Defaults for `url`: API mount `/api`, 10 s per step, hold 2 s, upload 2 MiB.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            api_mount: "/api".into(),
            timeout: Duration::from_secs(10),
            hold: Duration::from_secs(2),
            upload_bytes: 2 * 1024 * 1024,
        }
    }
}

/// Largest response body read, bytes.
const MAX_BODY: usize = 8 * 1024 * 1024;

/// Where the app lives.
#[derive(Debug, Clone)]
struct Target {
    tls: bool,
    host: String,
    port: u16,
    /// The root path without a trailing slash (`""` or `/myapp`).
    base: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| {
            format!("{url:?} is not a URL ({e}); expected http(s)://host[:port][/path/]")
        })?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{url:?}: expected an http:// or https:// URL")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("{url:?}: no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self {
            tls,
            host,
            port,
            base: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// A byte stream: plain TCP or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn connect(t: &Target, timeout: Duration) -> Result<Box<dyn Io>, String> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((t.host.as_str(), t.port)))
        .await
        .map_err(|_| format!("connecting to {}:{} timed out", t.host, t.port))?
        .map_err(|e| format!("cannot connect to {}:{}: {e}", t.host, t.port))?;
    let _ = tcp.set_nodelay(true);
    if !t.tls {
        return Ok(Box::new(tcp));
    }
    tls_connect(t, tcp, timeout).await
}

#[cfg(not(feature = "tls"))]
async fn tls_connect(_: &Target, _: TcpStream, _: Duration) -> Result<Box<dyn Io>, String> {
    Err(
        "this fluxlit was built without TLS (the `tls` feature): https:// URLs cannot be checked"
            .into(),
    )
}

#[cfg(feature = "tls")]
async fn tls_connect(t: &Target, tcp: TcpStream, timeout: Duration) -> Result<Box<dyn Io>, String> {
    let name = rustls::pki_types::ServerName::try_from(t.host.clone())
        .map_err(|e| format!("{:?} is not a TLS server name: {e}", t.host))?;
    let connector = tokio_rustls::TlsConnector::from(fluxlit_auth::fetch::tls_client_config()?);
    let tls = tokio::time::timeout(timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| "the TLS handshake timed out".to_owned())?
        .map_err(|e| format!("TLS handshake with {} failed: {e}", t.host))?;
    Ok(Box::new(tls))
}

/// A response: status, headers, body (at most [`MAX_BODY`] bytes).
type Response = (StatusCode, HeaderMap, Bytes);

/// One request on a fresh connection (`Connection: close`).
async fn request(
    t: &Target,
    method: Method,
    path: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<Response, String> {
    let io = connect(t, timeout).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, t.authority())
        .header(http::header::USER_AGENT, "fluxlit-doctor-live")
        .header(http::header::CONNECTION, "close")
        .body(Full::new(body))
        .map_err(|e| format!("request {path}: {e}"))?;
    let work = async {
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let (parts, body) = resp.into_parts();
        let bytes = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("{path}: reading the body: {e}"))?
            .to_bytes();
        Ok::<_, String>((parts.status, parts.headers, bytes))
    };
    let out = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("{path}: no complete answer within {} s", timeout.as_secs()))?;
    driver.abort();
    out
}

/// How long the upload check waits for `100 Continue` (or an early final answer) before it
/// sends the body anyway, as curl does (RFC 9110 §10.1.1: a client need not wait indefinitely).
const CONTINUE_WAIT: Duration = Duration::from_secs(1);

/// Largest response head read by [`upload`], bytes.
const MAX_HEAD: usize = 64 * 1024;

/// A `POST` of `len` bytes to `path` with `Expect: 100-continue` (RFC 9110 §10.1.1) on a fresh
/// connection: whatever refuses the size (a proxy's body limit, FluxLit's own cap) answers
/// before the body is sent, so the answer is not lost to a connection reset while the body is
/// still in flight. The body follows `100 Continue`, or [`CONTINUE_WAIT`] without an answer,
/// and the response is read while it is sent (RFC 9112 §9.5: a final answer ends the sending).
/// Returns the final response (1xx skipped; body: at most 64 KiB, raw) or why there was none.
async fn upload(t: &Target, path: &str, len: usize, timeout: Duration) -> Result<Response, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let io = connect(t, timeout).await?;
    let (mut rd, mut wr) = tokio::io::split(io);
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: fluxlit-doctor-live\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        t.authority()
    );
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let writer = async move {
        wr.write_all(head.as_bytes()).await?;
        wr.flush().await?;
        // Either `100 Continue` arrives (or the reader is done), or the wait runs out.
        let _ = tokio::time::timeout(CONTINUE_WAIT, go_rx).await;
        let chunk = vec![b'x'; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            wr.write_all(&chunk[..n]).await?;
            left -= n;
        }
        wr.flush().await?;
        Ok::<_, std::io::Error>(wr)
    };
    let reader = async move {
        let mut go = Some(go_tx);
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 100];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let code = parsed.code.unwrap_or(0);
                    if (100..200).contains(&code) {
                        if code == 100
                            && let Some(tx) = go.take()
                        {
                            let _ = tx.send(());
                        }
                        buf.drain(..n);
                        continue;
                    }
                    let status = StatusCode::from_u16(code)
                        .map_err(|_| format!("{path}: an invalid status code {code}"))?;
                    let mut map = HeaderMap::new();
                    for h in parsed.headers.iter() {
                        if let (Ok(k), Ok(v)) = (
                            http::HeaderName::from_bytes(h.name.as_bytes()),
                            http::HeaderValue::from_bytes(h.value),
                        ) {
                            map.append(k, v);
                        }
                    }
                    let want = map
                        .get(http::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok()?.trim().parse::<usize>().ok())
                        .unwrap_or(MAX_HEAD)
                        .min(MAX_HEAD);
                    let mut body = buf.split_off(n);
                    while body.len() < want {
                        let mut more = [0u8; 8192];
                        match rd.read(&mut more).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => body.extend_from_slice(&more[..k]),
                        }
                    }
                    body.truncate(want);
                    return Ok((status, map, Bytes::from(body)));
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
                Ok(httparse::Status::Partial) => {
                    return Err(format!("{path}: a response head over {MAX_HEAD} bytes"));
                }
                Err(e) => return Err(format!("{path}: not an HTTP/1.1 response ({e})")),
            }
            let mut more = [0u8; 8192];
            match rd.read(&mut more).await {
                Ok(0) => return Err(format!("{path}: the connection closed without an answer")),
                Ok(k) => buf.extend_from_slice(&more[..k]),
                Err(e) => return Err(format!("{path}: reading the answer: {e}")),
            }
        }
    };
    let exchange = async {
        tokio::pin!(writer, reader);
        let mut write_error = None;
        let mut written = false;
        loop {
            tokio::select! {
                answer = &mut reader => {
                    return match (answer, write_error) {
                        (Err(e), Some(w)) => Err(format!("{e}; sending the body failed: {w}")),
                        (answer, _) => answer,
                    };
                }
                sent = &mut writer, if !written => {
                    written = true;
                    if let Err(e) = sent {
                        write_error = Some(e);
                    }
                }
            }
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{path}: no complete answer within {} s", timeout.as_secs()))?
}

/// The rows `--live` reports, in order (each documented in docs/doctor.md, "Live checks").
pub const ROWS: [&str; 9] = [
    "live.healthz",
    "live.readyz",
    "live.workers",
    "live.ui_shell",
    "live.static_asset",
    "live.websocket",
    "live.upload_body",
    "live.api_mount",
    "live.forwarded",
];

fn push(r: &mut Report, name: &'static str, status: Status, detail: impl Into<String>) {
    debug_assert!(ROWS.contains(&name), "{name} is not in live::ROWS");
    r.checks.push(Check {
        name,
        status,
        detail: detail.into(),
        doc: crate::doc_link(name),
    });
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Runs every live check against `opts.url`. Never fails: problems are rows.
pub async fn check_live(opts: &LiveOptions) -> Report {
    let mut r = Report::default();
    let t = match Target::parse(&opts.url) {
        Ok(t) => t,
        Err(e) => {
            push(&mut r, "live.healthz", Status::Fail, e);
            return r;
        }
    };
    let api = format!("{}{}", t.base, opts.api_mount.trim_end_matches('/'));
    let to = opts.timeout;

    match request(&t, Method::GET, &format!("{api}/healthz"), Bytes::new(), to).await {
        Ok((StatusCode::OK, _, _)) => push(
            &mut r,
            "live.healthz",
            Status::Pass,
            format!("{api}/healthz answers 200"),
        ),
        Ok((s, _, b)) => push(
            &mut r,
            "live.healthz",
            Status::Fail,
            format!(
                "{api}/healthz answers {s} ({}): the URL does not reach FluxLit's gateway, or the proxy does not forward {api}; check the URL's root path and the proxy's location for it",
                snippet(&b)
            ),
        ),
        Err(e) => {
            push(
                &mut r,
                "live.healthz",
                Status::Fail,
                format!("{e}: check the URL, DNS, the port and (https) the certificate"),
            );
            return r;
        }
    }

    match request(&t, Method::GET, &format!("{api}/readyz"), Bytes::new(), to).await {
        Ok((s, _, b)) => {
            if s == StatusCode::OK {
                push(
                    &mut r,
                    "live.readyz",
                    Status::Pass,
                    format!("{api}/readyz answers 200"),
                );
            } else {
                push(
                    &mut r,
                    "live.readyz",
                    Status::Fail,
                    format!(
                        "{api}/readyz answers {s}: {}; the gateway runs but a sidecar is not ready: see its log (fluxlit run prints why)",
                        snippet(&b)
                    ),
                );
            }
            let (status, detail) = workers(s == StatusCode::OK, &b);
            push(&mut r, "live.workers", status, detail);
        }
        Err(e) => {
            push(&mut r, "live.readyz", Status::Fail, e.clone());
            push(
                &mut r,
                "live.workers",
                Status::Fail,
                format!("no readiness answer to list the workers from: {e}"),
            );
        }
    }

    let shell_path = format!("{}/", t.base);
    let mut script = None;
    match request(&t, Method::GET, &shell_path, Bytes::new(), to).await {
        Ok((StatusCode::OK, _, b)) if contains(&b, b"<div id=\"root\">") => {
            script = first_script_src(&b);
            push(
                &mut r,
                "live.ui_shell",
                Status::Pass,
                format!("{shell_path} serves Streamlit's page"),
            );
        }
        Ok((s, _, b)) => push(
            &mut r,
            "live.ui_shell",
            Status::Fail,
            format!(
                "{shell_path} answers {s} without Streamlit's page ({}): the blank-UI symptom; the proxy must forward every path under the root path to FluxLit, and FLUXLIT_ROOT_PATH must equal the public prefix",
                snippet(&b)
            ),
        ),
        Err(e) => push(&mut r, "live.ui_shell", Status::Fail, e),
    }

    match script {
        Some(src) => {
            let path = resolve(&shell_path, &src);
            match request(&t, Method::GET, &path, Bytes::new(), to).await {
                Ok((StatusCode::OK, _, b)) if !b.is_empty() => push(
                    &mut r,
                    "live.static_asset",
                    Status::Pass,
                    format!("{path} answers 200 ({} bytes)", b.len()),
                ),
                Ok((s, _, _)) => push(
                    &mut r,
                    "live.static_asset",
                    Status::Fail,
                    format!(
                        "{path} answers {s}: Streamlit's scripts do not load (blank UI); forward the root path's subpaths unchanged and do not rewrite or cache-mangle /static/"
                    ),
                ),
                Err(e) => push(&mut r, "live.static_asset", Status::Fail, e),
            }
        }
        None => push(
            &mut r,
            "live.static_asset",
            Status::Warn,
            "skipped: no Streamlit page with a <script src> to take an asset from",
        ),
    }

    let (status, detail) = websocket(&t, opts).await;
    push(&mut r, "live.websocket", status, detail);

    let probe = format!("{api}/__fluxlit_doctor_upload_probe");
    match upload(&t, &probe, opts.upload_bytes, to).await {
        Ok((StatusCode::PAYLOAD_TOO_LARGE, h, _)) if h.contains_key("x-request-id") => push(
            &mut r,
            "live.upload_body",
            Status::Warn,
            format!(
                "a {} byte POST to {probe} got 413 from FluxLit itself: gateway_max_api_request_body_bytes is set below that (uploads to Streamlit are capped separately, by gateway_max_proxy_request_body_bytes)",
                opts.upload_bytes
            ),
        ),
        Ok((StatusCode::PAYLOAD_TOO_LARGE, _, b)) => push(
            &mut r,
            "live.upload_body",
            Status::Fail,
            format!(
                "a {} byte POST to {probe} got 413 from the proxy in front of FluxLit ({}): uploads of that size fail; raise its body limit (nginx: client_max_body_size, default 1m)",
                opts.upload_bytes,
                snippet(&b)
            ),
        ),
        Ok((s, _, _)) => push(
            &mut r,
            "live.upload_body",
            Status::Pass,
            format!(
                "a {} byte POST under the API mount passed the proxy (the API answered {s})",
                opts.upload_bytes
            ),
        ),
        Err(e) => push(
            &mut r,
            "live.upload_body",
            Status::Fail,
            format!(
                "a {} byte POST to {probe} failed: {e}; a proxy that resets large bodies breaks uploads",
                opts.upload_bytes
            ),
        ),
    }

    let openapi = format!("{api}/openapi.json");
    match request(&t, Method::GET, &openapi, Bytes::new(), to).await {
        Ok((s, _, b)) if contains(&b, b"<div id=\"root\">") => push(
            &mut r,
            "live.api_mount",
            Status::Fail,
            format!(
                "{openapi} answers {s} with Streamlit's page: requests for the API reach the UI; the API mount ({}) and FLUXLIT_ROOT_PATH must match the public paths",
                opts.api_mount
            ),
        ),
        Ok((s, _, _)) => push(
            &mut r,
            "live.api_mount",
            Status::Pass,
            format!("{openapi} reaches the API ({s})"),
        ),
        Err(e) => push(&mut r, "live.api_mount", Status::Fail, e),
    }
    let (status, detail) = forwarded(&t, to).await;
    push(&mut r, "live.forwarded", status, detail);
    r
}

/// `live.forwarded`: the gateway's client view against the URL.
async fn forwarded(t: &Target, to: Duration) -> (Status, String) {
    let path = format!("{}/__fluxlit/client", t.base);
    let body = match request(t, Method::GET, &path, Bytes::new(), to).await {
        Ok((StatusCode::OK, _, b)) => b,
        Ok((s, _, b)) => {
            return (
                Status::Warn,
                format!(
                    "{path} answers {s} ({}): cannot see the scheme and host the app sees (an older FluxLit without the client view, or the proxy does not forward {}/__fluxlit/)",
                    snippet(&b),
                    t.base
                ),
            );
        }
        Err(e) => return (Status::Fail, e),
    };
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return (
                Status::Warn,
                format!(
                    "{path} did not answer FluxLit's JSON ({e}): {}",
                    snippet(&body)
                ),
            );
        }
    };
    let scheme = v["scheme"].as_str().unwrap_or("?");
    let seen_host = v["host"].as_str().unwrap_or("");
    let port = v["port"].as_u64();
    let prefix = v["prefix"].as_str().unwrap_or("");
    let trusted = v["forwarded_trusted"].as_bool().unwrap_or(false);
    // The host without its port (`[v6]:port`, `name:port`).
    let host_only = match seen_host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => seen_host.rsplit_once(':').map_or(seen_host, |(h, _)| h),
    };
    let want_scheme = if t.tls { "https" } else { "http" };
    let sees = format!(
        "{scheme}://{seen_host} port {} prefix {prefix:?}",
        port.map_or("?".into(), |p| p.to_string())
    );
    let trust_fix = if trusted {
        "the proxy is trusted; make it send the right value"
    } else {
        "FluxLit does not trust its peer's forwarded headers: set trust_proxy = true (--proxy-headers) and forwarded_allow_ips to the proxy's address"
    };
    let mut wrong = Vec::new();
    if scheme != want_scheme {
        wrong.push(format!(
            "the scheme is {scheme}, not {want_scheme} (the app builds {scheme}:// links and redirects; {trust_fix}: X-Forwarded-Proto)"
        ));
    }
    if !host_only.eq_ignore_ascii_case(&t.host) {
        wrong.push(format!(
            "the host is {seen_host:?}, not {:?} ({trust_fix}: X-Forwarded-Host, or keep Host: nginx proxy_set_header Host $host)",
            t.host
        ));
    }
    if port != Some(u64::from(t.port)) {
        wrong.push(format!(
            "the port is {}, not {} ({trust_fix}: X-Forwarded-Port, or a Host with the public port)",
            port.map_or("unknown".into(), |p| p.to_string()),
            t.port
        ));
    }
    if prefix != t.base {
        wrong.push(format!(
            "the prefix is {prefix:?}, not {:?} (set FLUXLIT_ROOT_PATH to the public path, or have the trusted proxy send X-Forwarded-Prefix with trust_forwarded_prefix = true)",
            t.base
        ));
    }
    if wrong.is_empty() {
        (
            Status::Pass,
            format!(
                "the app sees {sees}, as the URL says ({})",
                if trusted {
                    "forwarded headers from a trusted proxy"
                } else {
                    "from the connection: no trusted proxy"
                }
            ),
        )
    } else {
        (
            Status::Fail,
            format!("the app sees {sees}: {}", wrong.join("; ")),
        )
    }
}

/// The upgrade to `{base}/_stcore/stream`, held open for `hold`.
async fn websocket(t: &Target, opts: &LiveOptions) -> (Status, String) {
    let path = format!("{}/_stcore/stream", t.base);
    let url = format!(
        "{}://{}{path}",
        if t.tls { "wss" } else { "ws" },
        t.authority()
    );
    let io = match connect(t, opts.timeout).await {
        Ok(io) => io,
        Err(e) => return (Status::Fail, e),
    };
    let mut req =
        match tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            url.as_str(),
        ) {
            Ok(r) => r,
            Err(e) => return (Status::Fail, format!("{url}: {e}")),
        };
    req.headers_mut().insert(
        "sec-websocket-protocol",
        http::HeaderValue::from_static("streamlit"),
    );
    let handshake =
        tokio::time::timeout(opts.timeout, tokio_tungstenite::client_async(req, io)).await;
    let mut ws = match handshake {
        Err(_) => {
            return (
                Status::Fail,
                format!(
                    "{path}: no upgrade answer within {} s",
                    opts.timeout.as_secs()
                ),
            );
        }
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            return (
                Status::Fail,
                format!(
                    "{path} answered {} instead of 101 Switching Protocols: the proxy does not pass WebSocket upgrades (nginx: proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\"; Traefik and ingress-nginx pass them by default)",
                    resp.status()
                ),
            );
        }
        Ok(Err(e)) => {
            return (
                Status::Fail,
                format!("{path}: WebSocket handshake failed: {e}"),
            );
        }
        Ok(Ok((ws, _))) => ws,
    };
    let held = tokio::time::timeout(opts.hold, async {
        loop {
            match ws.next().await {
                Some(Ok(m)) if !m.is_close() => {}
                other => return other.map(|m| m.map(|m| m.to_string())),
            }
        }
    })
    .await;
    let _ = ws.close(None).await;
    match held {
        Err(_) => (
            Status::Pass,
            format!(
                "{path} upgraded (101, subprotocol streamlit) and stayed open for {:.0} s",
                opts.hold.as_secs_f64()
            ),
        ),
        Ok(end) => (
            Status::Fail,
            format!(
                "{path} upgraded but closed within {:.0} s ({end:?}): a proxy read/idle timeout or a load balancer cuts the session; raise it (nginx: proxy_read_timeout 3600s) and keep sessions on one replica",
                opts.hold.as_secs_f64()
            ),
        ),
    }
}

/// The `live.workers` row from the readiness answer (`ready`: it was 200) and its body, the
/// gateway's `{"status", "components": {name: state}}` (docs/operations.md, readiness).
fn workers(ready: bool, body: &[u8]) -> (Status, String) {
    let Some(components) = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("components").and_then(|c| c.as_object().cloned()))
    else {
        return (
            Status::Warn,
            format!(
                "the readiness answer is not FluxLit's JSON ({}): something in front of the gateway answered it, or an older FluxLit; the workers cannot be listed",
                snippet(body)
            ),
        );
    };
    let state = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_owned();
    let mut numbered: Vec<(u64, String, String)> = components
        .iter()
        .filter_map(|(name, v)| {
            let n = name.strip_prefix("streamlit-")?.parse().ok()?;
            Some((n, name.clone(), state(v)))
        })
        .collect();
    numbered.sort();
    if numbered.is_empty() {
        return match components.get("streamlit") {
            Some(v) if state(v) == "ready" => {
                (Status::Pass, "one Streamlit worker, ready".to_owned())
            }
            Some(v) => (
                Status::Fail,
                format!(
                    "the Streamlit worker is {}: see FluxLit's log (sidecar=streamlit)",
                    state(v)
                ),
            ),
            None => (
                Status::Pass,
                "no Streamlit worker: FluxLit serves the API only".to_owned(),
            ),
        };
    }
    let total = numbered.len();
    let up = numbered.iter().filter(|(_, _, s)| s == "ready").count();
    let list = numbered
        .iter()
        .map(|(_, name, s)| format!("{name} {s}"))
        .collect::<Vec<_>>()
        .join(", ");
    if up == total {
        (
            Status::Pass,
            format!("{total} Streamlit workers, all ready: {list}"),
        )
    } else if ready {
        (
            Status::Warn,
            format!(
                "{up} of {total} Streamlit workers ready ({list}); the quorum (streamlit_workers_min_ready) holds and new sessions go to the ready ones; a worker that stays down: see FluxLit's log for its sidecar name"
            ),
        )
    } else {
        (
            Status::Fail,
            format!(
                "{up} of {total} Streamlit workers ready ({list}), fewer than streamlit_workers_min_ready: see FluxLit's log for why they exit or fail their probe"
            ),
        )
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The `src` of the first `<script … src="…">` in `html` (inline scripts skipped).
fn first_script_src(html: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(html);
    text.split("<script").skip(1).find_map(|rest| {
        let tag = &rest[..rest.find('>')?];
        let src = tag.split(" src=").nth(1)?;
        let quote = src.chars().next()?;
        if quote != '"' && quote != '\'' {
            return None;
        }
        Some(src[1..].split(quote).next()?.to_owned())
    })
}

/// `src` relative to the page at `page_path` (absolute paths kept; full URLs reduced to their
/// path).
fn resolve(page_path: &str, src: &str) -> String {
    if let Some(rest) = src
        .strip_prefix("http://")
        .or_else(|| src.strip_prefix("https://"))
    {
        return rest.find('/').map_or("/".into(), |i| rest[i..].to_owned());
    }
    if src.starts_with('/') {
        return src.to_owned();
    }
    let dir = &page_path[..page_path.rfind('/').map_or(0, |i| i + 1)];
    format!("{dir}{}", src.trim_start_matches("./"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A one-connection server: reads the request head, then runs `answer` on the stream.
    async fn one_shot<F, Fut>(answer: F) -> (Target, tokio::task::JoinHandle<(String, usize)>)
    where
        F: FnOnce(TcpStream, String) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = (String, usize)> + Send,
    {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                assert_eq!(s.read(&mut b).await.unwrap(), 1, "EOF inside the head");
                head.push(b[0]);
            }
            answer(s, String::from_utf8(head).unwrap()).await
        });
        (
            Target::parse(&format!("http://127.0.0.1:{port}/")).unwrap(),
            task,
        )
    }

    #[tokio::test]
    async fn upload_refused_before_the_body_is_sent() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A proxy that refuses the size from the head and closes: the answer must be read and
        // no body byte sent (it would race a reset that loses the answer).
        let (t, server) = one_shot(|mut s, head| async move {
            s.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large")
                .await
                .unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
            (head, rest.len())
        })
        .await;
        let (status, _, body) = upload(&t, "/api/probe", 2 << 20, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(
            (status, &body[..]),
            (StatusCode::PAYLOAD_TOO_LARGE, &b"too large"[..])
        );
        let (head, body_bytes) = server.await.unwrap();
        assert!(
            head.to_ascii_lowercase().contains("expect: 100-continue"),
            "{head}"
        );
        assert!(head.contains("Content-Length: 2097152"), "{head}");
        assert_eq!(body_bytes, 0, "body bytes sent before 100 Continue");
    }

    #[tokio::test]
    async fn upload_sent_after_100_continue() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (t, server) = one_shot(|mut s, head| async move {
            s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.unwrap();
            let mut body = vec![0u8; 300_000];
            s.read_exact(&mut body).await.unwrap();
            s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno")
                .await
                .unwrap();
            (head, body.iter().filter(|b| **b == b'x').count())
        })
        .await;
        let (status, _, body) = upload(&t, "/api/probe", 300_000, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!((status, &body[..]), (StatusCode::NOT_FOUND, &b"no"[..]));
        assert_eq!(server.await.unwrap().1, 300_000);
    }

    #[tokio::test]
    async fn upload_without_an_answer_is_an_error() {
        let (t, server) = one_shot(|s, head| async move {
            drop(s);
            (head, 0)
        })
        .await;
        let e = upload(&t, "/api/probe", 1000, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(e.contains("closed without an answer"), "{e}");
        server.await.unwrap();
    }

    /// Serves one client view built from the request's own Host, with `edit` applied.
    async fn view_server(
        edit: fn(&mut serde_json::Value),
    ) -> (Target, tokio::task::JoinHandle<(String, usize)>) {
        use tokio::io::AsyncWriteExt;
        one_shot(move |mut s, head| async move {
            let host = head
                .lines()
                .find_map(|l| {
                    l.split_once(':')
                        .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
                        .map(|(_, v)| v.trim().to_owned())
                })
                .unwrap();
            let port: u16 = host.rsplit_once(':').unwrap().1.parse().unwrap();
            let mut v = serde_json::json!({"scheme": "http", "host": host, "port": port, "prefix": "", "client_ip": "127.0.0.1", "forwarded_trusted": false});
            edit(&mut v);
            let body = v.to_string();
            s.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            (head, 0)
        })
        .await
    }

    #[tokio::test]
    async fn forwarded_row_compares_the_view_with_the_url() {
        let (t, _s) = view_server(|_| {}).await;
        let (status, detail) = forwarded(&t, Duration::from_secs(10)).await;
        assert_eq!(status, Status::Pass, "{detail}");
        assert!(detail.contains("no trusted proxy"), "{detail}");

        let (t, s) = view_server(|v| {
            v["scheme"] = "https".into();
            v["forwarded_trusted"] = true.into();
        })
        .await;
        let (status, detail) = forwarded(&t, Duration::from_secs(10)).await;
        assert_eq!(status, Status::Fail, "{detail}");
        assert!(detail.contains("the scheme is https, not http"), "{detail}");
        assert!(
            s.await
                .unwrap()
                .0
                .starts_with("GET /__fluxlit/client HTTP/1.1")
        );

        let (t, _s) = view_server(|v| {
            v["host"] = "internal:8000".into();
            v["port"] = 8000.into();
            v["prefix"] = "/x".into();
        })
        .await;
        let (status, detail) = forwarded(&t, Duration::from_secs(10)).await;
        assert_eq!(status, Status::Fail, "{detail}");
        for want in [
            "the host is \"internal:8000\"",
            "the port is 8000",
            "the prefix is \"/x\"",
            "trust_proxy = true",
        ] {
            assert!(detail.contains(want), "{want}: {detail}");
        }
    }

    #[test]
    fn workers_row_lists_each_worker_from_readiness() {
        let three = br#"{"status":"ready","components":{"api":"ready","streamlit":"ready","streamlit-1":"ready","streamlit-10":"ready","streamlit-2":"ready"}}"#;
        let (s, d) = workers(true, three);
        assert_eq!(s, Status::Pass, "{d}");
        assert_eq!(
            d,
            "3 Streamlit workers, all ready: streamlit-1 ready, streamlit-2 ready, streamlit-10 ready"
        );
        let one_down = br#"{"status":"ready","components":{"streamlit":"ready","streamlit-1":"ready","streamlit-2":"not ready: exited (signal 9)"}}"#;
        let (s, d) = workers(true, one_down);
        assert_eq!(s, Status::Warn, "{d}");
        assert!(
            d.starts_with("1 of 2 Streamlit workers ready (streamlit-1 ready, streamlit-2 not ready: exited (signal 9))"),
            "{d}"
        );
        let (s, d) = workers(false, one_down);
        assert_eq!(s, Status::Fail, "{d}");
        assert!(d.contains("fewer than streamlit_workers_min_ready"), "{d}");
        let single = br#"{"status":"ready","components":{"streamlit":"ready"}}"#;
        assert_eq!(workers(true, single).0, Status::Pass);
        let single_down =
            br#"{"status":"not_ready","detail":"x","components":{"streamlit":"starting: probe"}}"#;
        let (s, d) = workers(false, single_down);
        assert_eq!(s, Status::Fail);
        assert!(d.contains("starting: probe"), "{d}");
        let (s, d) = workers(true, b"<html>ok</html>");
        assert_eq!(s, Status::Warn);
        assert!(d.contains("not FluxLit's JSON (<html>ok</html>)"), "{d}");
    }

    #[test]
    fn targets_from_urls() {
        let t = Target::parse("https://app.example.com/myapp/").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.base.as_str()),
            (true, "app.example.com", 443, "/myapp")
        );
        assert_eq!(t.authority(), "app.example.com");
        let t = Target::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!(
            (t.port, t.base.as_str(), t.authority().as_str()),
            (8000, "", "127.0.0.1:8000")
        );
        let t = Target::parse("http://[::1]:9/x").unwrap();
        assert_eq!(
            (t.host.as_str(), t.authority().as_str()),
            ("::1", "[::1]:9")
        );
        assert!(Target::parse("ftp://x/").unwrap_err().contains("http://"));
        assert!(Target::parse("not a url").is_err());
    }

    #[test]
    fn script_sources_and_paths() {
        let html = br#"<html><head><script>var inline = 1;</script><script type="module" crossorigin src="./static/js/index.abc.js"></script>"#;
        assert_eq!(
            first_script_src(html).as_deref(),
            Some("./static/js/index.abc.js")
        );
        assert_eq!(
            resolve("/myapp/", "./static/js/a.js"),
            "/myapp/static/js/a.js"
        );
        assert_eq!(resolve("/", "static/a.js"), "/static/a.js");
        assert_eq!(resolve("/m/", "/abs.js"), "/abs.js");
        assert_eq!(resolve("/m/", "https://cdn.example/x/y.js"), "/x/y.js");
        assert_eq!(first_script_src(b"<p>no scripts</p>"), None);
        assert_eq!(first_script_src(b"<script>inline()</script>"), None);
    }
}
