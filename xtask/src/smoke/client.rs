//! A small HTTP/1.1 and WebSocket client for the smoke checks, over plain TCP or over TLS.
//!
//! TLS goes through `openssl s_client` (one process per connection, its stdin and stdout
//! used as the byte stream), which verifies the edge's certificate against the certificate
//! the smoke generated (`-CAfile`, `-verify_ip 127.0.0.1`, `-verify_return_error`). That keeps
//! the xtask free of a TLS library; the openssl command is needed anyway to make the
//! certificate.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Longest any single HTTP exchange may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest response body read.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// How to reach an edge: its loopback address, and the CA file when it speaks TLS.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// The edge's listening address.
    pub(crate) addr: SocketAddr,
    /// The certificate to verify the edge against; `None` for plain HTTP.
    pub(crate) tls_ca: Option<PathBuf>,
    /// Where `openssl s_client` writes its diagnostics.
    pub(crate) tls_log: PathBuf,
}

/// A response: status, headers, body.
#[derive(Debug)]
pub(crate) struct Response {
    /// The status code.
    pub(crate) status: u16,
    /// The response headers.
    pub(crate) headers: http::HeaderMap,
    /// The whole body.
    pub(crate) body: Bytes,
}

impl Response {
    /// The body as (lossy) text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON, or `Value::Null` when it is not JSON.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A header's value as text ("" when absent).
    pub(crate) fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    /// `status` plus the start of the body, for reports.
    pub(crate) fn summary(&self) -> String {
        format!("{} {}", self.status, snippet(&self.text(), 160))
    }
}

/// The first `max` characters of `text` on one line.
pub(crate) fn snippet(text: &str, max: usize) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = one_line.trim();
    if trimmed.chars().count() > max {
        format!("{}…", trimmed.chars().take(max).collect::<String>())
    } else {
        trimmed.to_owned()
    }
}

/// A byte stream to an edge: a TCP connection, or the pipes of an `openssl s_client`.
pub(crate) struct Conn {
    io: Box<dyn Io>,
    // Kept so that the s_client process lives as long as the stream (killed on drop).
    _tls_client: Option<tokio::process::Child>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A WebSocket to an edge.
pub(crate) type Ws = WebSocketStream<Conn>;

impl Endpoint {
    /// `http` or `https`.
    pub(crate) fn scheme(&self) -> &'static str {
        if self.tls_ca.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The `Host` a browser sends: `127.0.0.1:PORT`.
    pub(crate) fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// The public origin, e.g. `https://127.0.0.1:PORT`.
    pub(crate) fn origin(&self) -> String {
        format!("{}://{}", self.scheme(), self.authority())
    }

    /// A byte stream to the edge: TCP, or TLS through `openssl s_client`.
    pub(crate) async fn connect(&self) -> Result<Conn, String> {
        let Some(ca) = &self.tls_ca else {
            let tcp = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect(self.addr),
            )
            .await
            .map_err(|_| format!("connect to {} timed out", self.addr))?
            .map_err(|e| format!("connect to {}: {e}", self.addr))?;
            let _ = tcp.set_nodelay(true);
            return Ok(Conn {
                io: Box::new(tcp),
                _tls_client: None,
            });
        };
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.tls_log)
            .map_err(|e| format!("cannot open {}: {e}", self.tls_log.display()))?;
        let mut child = tokio::process::Command::new("openssl")
            .arg("s_client")
            .arg("-connect")
            .arg(self.addr.to_string())
            .args(["-servername", "localhost", "-verify_ip"])
            .arg(self.addr.ip().to_string())
            .arg("-CAfile")
            .arg(ca)
            .args([
                "-verify_return_error",
                "-quiet",
                "-nocommands",
                "-alpn",
                "http/1.1",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run openssl s_client: {e}"))?;
        let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
            return Err("openssl s_client without pipes".to_owned());
        };
        Ok(Conn {
            io: Box::new(tokio::io::join(stdout, stdin)),
            _tls_client: Some(child),
        })
    }

    /// The last lines `openssl s_client` wrote, for error reports about TLS.
    pub(crate) fn tls_diagnostics(&self) -> String {
        if self.tls_ca.is_none() {
            return String::new();
        }
        let text = std::fs::read_to_string(&self.tls_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(3)..].join(" / ");
        if tail.is_empty() {
            String::new()
        } else {
            format!(" [openssl s_client: {tail}]")
        }
    }

    /// One request on a fresh connection (`Connection: close`), with the whole exchange
    /// bounded by a timeout.
    pub(crate) async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Response, String> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, headers, body))
            .await
            .map_err(|_| format!("{method} {path}: no complete answer within {REQUEST_TIMEOUT:?}"))?
            .map_err(|e| format!("{method} {path}: {e}{}", self.tls_diagnostics()))
    }

    /// `GET path`.
    pub(crate) async fn get(&self, path: &str) -> Result<Response, String> {
        self.request("GET", path, &[], Vec::new()).await
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Response, String> {
        let conn = self.connect().await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(conn))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        let driver = tokio::spawn(connection);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.authority())
            .header("connection", "close")
            .header("user-agent", "fluxlit-smoke");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("bad request: {e}"))?;
        let result = async {
            let resp = sender.send_request(req).await.map_err(|e| format!("{e}"))?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("reading the body: {e}"))?
                .to_bytes();
            Ok(Response {
                status,
                headers,
                body,
            })
        }
        .await;
        driver.abort();
        result
    }

    /// Opens a WebSocket to `path` with the given extra handshake headers; returns the socket
    /// and the handshake response.
    pub(crate) async fn websocket(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(Ws, http::Response<Option<Vec<u8>>>), String> {
        let mut req = format!("ws://{}{}", self.authority(), path)
            .into_client_request()
            .map_err(|e| format!("bad WebSocket request: {e}"))?;
        for (name, value) in headers {
            let name = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| format!("bad header name {name}: {e}"))?;
            let value = http::HeaderValue::from_str(value)
                .map_err(|e| format!("bad header value {value}: {e}"))?;
            req.headers_mut().insert(name, value);
        }
        let conn = self.connect().await?;
        tokio::time::timeout(REQUEST_TIMEOUT, tokio_tungstenite::client_async(req, conn))
            .await
            .map_err(|_| {
                format!("WebSocket handshake to {path}: no answer within {REQUEST_TIMEOUT:?}")
            })?
            .map_err(|e| {
                format!(
                    "WebSocket handshake to {path}: {e}{}",
                    self.tls_diagnostics()
                )
            })
    }
}
