//! `fluxlit doctor --live URL`: checks a running deployment from the outside, as a browser
//! would, through whatever sits in front of it (an ingress, nginx, Traefik, a load balancer).
//!
//! Rows, in order (each with the fix for the usual cause when it is not PASS):
//! - `live.healthz`: `GET {URL}{api_mount}/healthz` answers 200 (the gateway is reachable;
//!   TLS and DNS errors show here).
//! - `live.readyz`: `GET {URL}{api_mount}/readyz` answers 200; a 503 shows the gateway's
//!   detail (which sidecar is not ready).
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
//!
//! `https://` URLs are checked over TLS with the system's trust store (`rustls-native-certs`;
//! `SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured). Every step is bounded by `timeout`.
//! Only `GET`, the upgrade and one `POST` to a path under the API mount that no FluxLit or
//! example route uses are sent.

#[cfg(feature = "tls")]
use std::sync::Arc;
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
    let connector = tokio_rustls::TlsConnector::from(tls_config()?);
    let tls = tokio::time::timeout(timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| "the TLS handshake timed out".to_owned())?
        .map_err(|e| format!("TLS handshake with {} failed: {e}", t.host))?;
    Ok(Box::new(tls))
}

/// The system's trust store (`SSL_CERT_FILE`/`SSL_CERT_DIR` honoured), ring as the provider.
#[cfg(feature = "tls")]
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(format!(
            "no trusted CA certificates found (set SSL_CERT_FILE): {:?}",
            found.errors
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
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

/// The rows `--live` reports, in order (each documented in docs/doctor.md, "Live checks").
pub const ROWS: [&str; 7] = [
    "live.healthz",
    "live.readyz",
    "live.ui_shell",
    "live.static_asset",
    "live.websocket",
    "live.upload_body",
    "live.api_mount",
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
        Ok((StatusCode::OK, _, _)) => push(
            &mut r,
            "live.readyz",
            Status::Pass,
            format!("{api}/readyz answers 200"),
        ),
        Ok((s, _, b)) => push(
            &mut r,
            "live.readyz",
            Status::Fail,
            format!(
                "{api}/readyz answers {s}: {}; the gateway runs but a sidecar is not ready: see its log (fluxlit run prints why)",
                snippet(&b)
            ),
        ),
        Err(e) => push(&mut r, "live.readyz", Status::Fail, e),
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
    let body = Bytes::from(vec![b'x'; opts.upload_bytes]);
    match request(&t, Method::POST, &probe, body, to).await {
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
    r
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
