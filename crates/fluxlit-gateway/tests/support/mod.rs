//! What the gateway's socket-level test suites share: a gateway served on a loopback port for
//! the length of a test (on either engine, with the requests each engine served), clients
//! (one request per connection, a kept-alive connection, raw bytes) and upstreams at fixed
//! addresses, including scripted raw-socket ones.
//!
//! Every wait here is bounded ([`WAIT`]); a body that cannot be read is a panic, never an
//! empty body.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fluxlit_gateway::{Endpoint, Gateway, GatewayBuilder, Served, Upstream};
use fluxlit_testkit::raw::{Recorded, RecordingUpstream, Reply};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, watch};

/// How long any single wait of a test may take before it fails with a message.
pub const WAIT: Duration = Duration::from_secs(10);

/// Both engines: the HTTP/1.1 fast path (the default) and hyper's alone.
pub const ENGINES: [bool; 2] = [true, false];

/// The engine variant's name, for messages.
pub fn engine(fast: bool) -> &'static str {
    if fast { "fast path" } else { "hyper path" }
}

/// Awaits `fut` for at most [`WAIT`], panicking with `what` when it takes longer.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for: {what}"),
    }
}

/// A gateway serving on `addr` until dropped (then it drains for its drain timeout and cuts
/// tunnels) or stopped ([`Running::stop`]).
pub struct Running {
    pub addr: SocketAddr,
    /// The gateway served (a clone sharing its counters).
    pub gateway: Gateway,
    stop: Option<oneshot::Sender<()>>,
    /// `true`: cut the tunnels left after serving ended (on drop); `false`: leave them.
    cut: Option<oneshot::Sender<bool>>,
    served_end: Option<oneshot::Receiver<()>>,
}

impl Running {
    /// Requests served so far by each engine.
    pub fn served(&self) -> Served {
        self.gateway.served()
    }

    /// Asserts that every request so far was served by the expected engine: `h1` requests by
    /// the fast path when `fast`, all of them by hyper otherwise (`h1` counts forwarded plain
    /// requests; refusals and the API are hyper's on either).
    pub fn assert_engine(&self, fast: bool, forwarded: u64, what: &str) {
        let s = self.served();
        if fast {
            assert_eq!(
                s.h1, forwarded,
                "{what}: requests the fast path forwarded ({s:?})"
            );
        } else {
            assert_eq!(s.h1, 0, "{what}: the fast path is off ({s:?})");
            assert!(s.hyper >= forwarded, "{what}: hyper served them ({s:?})");
        }
    }

    /// Asserts the exact counts: `h1` requests served by the fast path and `hyper` by hyper.
    pub fn assert_served(&self, h1: u64, hyper: u64, what: &str) {
        let s = self.served();
        assert_eq!(
            (s.h1, s.hyper),
            (h1, hyper),
            "{what}: requests served by (fast path, hyper) ({s:?})"
        );
    }

    /// Asserts the exact counts of an engine variant whose requests were `fast_h1` that the
    /// fast path serves when on (plain UI forwards on a connection it still holds) and `hyper`
    /// that are hyper's on either engine (the API, hyper's refusals, own endpoints, and
    /// everything after a hand-over): with the fast path on, `(fast_h1, hyper)`;
    /// off, `(0, fast_h1 + hyper)`.
    pub fn assert_split(&self, fast: bool, fast_h1: u64, hyper: u64, what: &str) {
        let what = format!("{what} ({})", engine(fast));
        if fast {
            self.assert_served(fast_h1, hyper, &what);
        } else {
            self.assert_served(0, fast_h1 + hyper, &what);
        }
    }

    /// Stops serving and waits (bounded) until `serve` has returned (its drain done); open
    /// tunnels are left to the caller (`Gateway::drain_tunnels`). Returns the gateway.
    pub async fn stop(mut self) -> Gateway {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(tx) = self.cut.take() {
            let _ = tx.send(false);
        }
        if let Some(rx) = self.served_end.take() {
            within("the gateway to stop serving", rx)
                .await
                .expect("the serving task ended without a panic");
        }
        self.gateway.clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(tx) = self.cut.take() {
            let _ = tx.send(true);
        }
    }
}

/// Builds `builder` with a 200 ms drain timeout and serves it on `127.0.0.1:0`.
pub async fn start(builder: GatewayBuilder) -> Running {
    launch(builder.drain_timeout(Duration::from_millis(200))).await
}

/// [`start`] with the fast path on (`fast`) or off.
pub async fn start_on(builder: GatewayBuilder, fast: bool) -> Running {
    start(builder.http1_fast_path(fast)).await
}

/// Builds `builder` as it is (its own drain timeout) and serves it on `127.0.0.1:0`.
pub async fn launch(builder: GatewayBuilder) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    launch_on(builder, listener)
}

/// Builds `builder` as it is and serves it on `listener` (bound beforehand, when the
/// configuration needs the address, e.g. a callback URL).
pub fn launch_on(builder: GatewayBuilder, listener: tokio::net::TcpListener) -> Running {
    let gateway = builder.build().unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let (cut_tx, cut_rx) = oneshot::channel::<bool>();
    let (end_tx, end_rx) = oneshot::channel::<()>();
    let running = gateway.clone();
    tokio::spawn(async move {
        gateway
            .serve(listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        let _ = end_tx.send(());
        if cut_rx.await.unwrap_or(true) {
            gateway.drain_tunnels(Duration::ZERO).await;
        }
    });
    Running {
        addr,
        gateway: running,
        stop: Some(tx),
        cut: Some(cut_tx),
        served_end: Some(end_rx),
    }
}

/// `Sec-WebSocket-Accept` for the test key `dGhlIHNhbXBsZSBub25jZQ==` (RFC 6455 §1.3).
pub const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A recording upstream that answers WebSocket upgrades with a correct 101 (for the test key)
/// and everything else with the echo line.
pub async fn upgrading_upstream() -> RecordingUpstream {
    RecordingUpstream::with(|r: &Recorded| {
        if r.has("upgrade") {
            Reply::raw(format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {WS_ACCEPT}\r\n\r\n"
            ))
        } else {
            fluxlit_testkit::raw::echo_line(r)
        }
    })
    .await
}

/// An upstream named `name` at `addr` with no base path.
pub fn up_at(addr: SocketAddr, name: &str) -> Upstream {
    Upstream::fixed(
        name,
        Endpoint {
            authority: addr.to_string().parse().unwrap(),
            base_path: String::new(),
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// A request body as the test clients send it.
pub type ReqBody = BoxBody<Bytes, Infallible>;

/// No body.
pub fn empty() -> ReqBody {
    Full::new(Bytes::new()).boxed()
}

/// A body of these bytes (with `Content-Length`).
pub fn full(b: impl Into<Bytes>) -> ReqBody {
    Full::new(b.into()).boxed()
}

/// Reads a response's body to its end (bounded); a body that fails is a panic.
pub async fn body_of(resp: Response<Incoming>) -> (StatusCode, HeaderMap, Bytes) {
    let (parts, body) = resp.into_parts();
    let body = within("the response body", body.collect())
        .await
        .expect("the response body reads to its end")
        .to_bytes();
    (parts.status, parts.headers, body)
}

/// Sends `req` on a new HTTP/1.1 connection to `addr`, from the loopback address `local`
/// when given, and reads the whole response.
pub async fn send_from(
    local: Option<&str>,
    addr: SocketAddr,
    req: Request<ReqBody>,
) -> (StatusCode, HeaderMap, Bytes) {
    let resp = request_from(local, addr, req).await;
    body_of(resp).await
}

/// Sends `req` on a new HTTP/1.1 connection to `addr` and returns the response once its head
/// has arrived (bounded).
pub async fn request(addr: SocketAddr, req: Request<ReqBody>) -> Response<Incoming> {
    request_from(None, addr, req).await
}

async fn request_from(
    local: Option<&str>,
    addr: SocketAddr,
    req: Request<ReqBody>,
) -> Response<Incoming> {
    within("the response head", async {
        let stream = match local {
            Some(ip) => {
                let sock = tokio::net::TcpSocket::new_v4().unwrap();
                sock.bind(format!("{ip}:0").parse().unwrap()).unwrap();
                sock.connect(addr).await.unwrap()
            }
            None => tokio::net::TcpStream::connect(addr).await.unwrap(),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender.send_request(req).await.expect("a response")
    })
    .await
}

/// Sends `req` on a new HTTP/1.1 connection to `addr` and reads the whole response.
pub async fn send(addr: SocketAddr, req: Request<ReqBody>) -> (StatusCode, HeaderMap, Bytes) {
    send_from(None, addr, req).await
}

/// One kept-alive client connection (hyper's client): requests are sent one after the other
/// on it.
pub struct KeepAlive(hyper::client::conn::http1::SendRequest<ReqBody>);

impl KeepAlive {
    /// Opens a connection to `addr`.
    pub async fn open(addr: SocketAddr) -> Self {
        within("a client connection", async {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            Self(send)
        })
        .await
    }

    /// Sends `req` on this connection and reads the whole response.
    pub async fn send(&mut self, req: Request<ReqBody>) -> (StatusCode, Bytes) {
        let resp = within("an answer on the kept-alive connection", async {
            self.0
                .ready()
                .await
                .expect("the kept-alive connection is usable");
            self.0.send_request(req).await.expect("a response")
        })
        .await;
        let (status, _, body) = body_of(resp).await;
        (status, body)
    }
}

/// Writes `request` (raw bytes, which should ask to close) on a new connection to `addr` and
/// reads everything until the gateway closes it.
pub async fn raw_roundtrip(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    within("a raw exchange to end with the connection", async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read to the end");
        buf
    })
    .await
}

/// A response as it came off the wire: status line, fields as sent (names in their letter
/// case, in order), how the body was framed, and the body decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireResponse {
    pub status_line: String,
    pub fields: Vec<(String, String)>,
    /// `"length"`, `"chunked"`, `"close"` or `"none"`.
    pub framing: &'static str,
    pub body: Vec<u8>,
}

impl WireResponse {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.status_line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    /// Every value of `name` (compared ignoring case).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The fields minus those whose value is the gateway's to choose (`Date`, `X-Request-ID`)
    /// and its `Connection` field, names lower-cased.
    pub fn semantic_fields(&self) -> Vec<(String, String)> {
        self.fields
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .filter(|(n, _)| !matches!(n.as_str(), "date" | "x-request-id" | "connection"))
            .collect()
    }
}

/// Parses the responses in `bytes` (the whole of a connection's output, read to its end),
/// skipping none: interim (1xx) responses are returned too. `head_request`: the last one
/// answers a HEAD.
pub fn parse_wire(mut bytes: &[u8], head_request: bool) -> Vec<WireResponse> {
    let mut out = Vec::new();
    // Bounded: each pass consumes a head.
    while !bytes.is_empty() {
        let end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("an incomplete head: {}", String::from_utf8_lossy(bytes)));
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        bytes = &bytes[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("").to_owned();
        let fields: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').expect("a field line");
                (n.to_owned(), v.trim().to_owned())
            })
            .collect();
        let mut r = WireResponse {
            status_line,
            fields,
            framing: "none",
            body: Vec::new(),
        };
        let code = r.status();
        if (100..200).contains(&code) {
            out.push(r);
            continue;
        }
        if head_request || code == 204 || code == 304 {
            out.push(r);
            continue;
        }
        if r.all("transfer-encoding")
            .iter()
            .any(|v| v.contains("chunked"))
        {
            r.framing = "chunked";
            // Bounded: each chunk consumes its size line.
            loop {
                let at = bytes
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .expect("a chunk size line");
                let size_text = String::from_utf8_lossy(&bytes[..at]).into_owned();
                let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                    .expect("a chunk size");
                bytes = &bytes[at + 2..];
                if size == 0 {
                    let end = bytes
                        .windows(2)
                        .position(|w| w == b"\r\n")
                        .expect("the end of the chunked body");
                    // No trailers expected from these upstreams.
                    bytes = &bytes[end + 2..];
                    break;
                }
                r.body.extend_from_slice(&bytes[..size]);
                bytes = &bytes[size + 2..];
            }
        } else if let Some(n) = r.all("content-length").first() {
            let n: usize = n.parse().expect("a numeric Content-Length");
            r.framing = "length";
            r.body = bytes[..n].to_vec();
            bytes = &bytes[n..];
        } else {
            r.framing = "close";
            r.body = bytes.to_vec();
            bytes = &[];
        }
        out.push(r);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Upstreams.

/// A raw upstream answering `200 ok` to the first request on each connection and, on the
/// second, reading it and closing the connection without answering: a kept connection dying
/// under a request.
pub async fn closing_upstream() -> RecordingUpstream {
    let per_conn = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    RecordingUpstream::with(move |r: &Recorded| {
        let mut m = per_conn.lock().unwrap();
        let n: &mut usize = m.entry(r.conn).or_default();
        *n += 1;
        if *n == 1 {
            Reply::ok(b"ok")
        } else {
            Reply {
                writes: Vec::new(),
                close: true,
            }
        }
    })
    .await
}

/// A raw upstream that answers one request per connection with `200 ok` (keep-alive) and
/// closes its answered connections, while the gateway holds them idle, when told to
/// ([`IdleClosingUpstream::close_idle`]).
pub struct IdleClosingUpstream {
    pub addr: SocketAddr,
    close: watch::Sender<u64>,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for IdleClosingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl IdleClosingUpstream {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (close, close_rx) = watch::channel(0u64);
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (a, c) = (accepted.clone(), closed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let (c, mut close_rx) = (c.clone(), close_rx.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let mut seen = Vec::new();
                    // One request: its head, then its Content-Length body (bounded reads).
                    let complete = |seen: &[u8]| {
                        let end = seen.windows(4).position(|w| w == b"\r\n\r\n")?;
                        let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        (seen.len() >= end + 4 + len).then_some(())
                    };
                    while complete(&seen).is_none() {
                        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
                            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    // Close requests from now on apply to this connection.
                    let _seen = *close_rx.borrow_and_update();
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    let _ = close_rx.changed().await;
                    drop(s);
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            close,
            accepted,
            closed,
            task,
        }
    }

    /// Closes every answered connection, then waits (bounded) until `total` have been closed.
    pub async fn close_idle(&self, total: usize) {
        self.close.send_modify(|g| *g += 1);
        fluxlit_testkit::eventually(
            WAIT,
            &format!("{total} upstream connection(s) closed"),
            || {
                let n = self.closed.load(Ordering::SeqCst);
                async move { (n >= total).then_some(()) }
            },
        )
        .await;
    }

    /// How many connections it accepted.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// An in-memory log output (a `tracing_subscriber` writer for the access-log tests).
#[derive(Clone, Default)]
pub struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    /// Everything written, as text.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// Everything written, line by line.
    pub fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_owned).collect()
    }
}
