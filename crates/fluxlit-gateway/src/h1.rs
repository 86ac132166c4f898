//! The HTTP/1.1 forwarding fast path: plain HTTP/1.1 requests for the UI upstream, and for the
//! API's HTTP upstream while no `decide::HyperOnly` reason holds (`decide::fast_forward`), are
//! parsed in place (`httparse`), their head is rewritten in one pass straight into the upstream's
//! buffer,
//! and bodies are relayed by their framing (RFC 9112 §6), without building `HeaderMap`s, without
//! hyper's server and client dispatchers and without a body channel between them.
//!
//! WebSocket upgrades to the UI take it too: the upgrade request is forwarded the same way and a
//! 101 turns the client and upstream connections into a tunnel ([`Outcome::Tunnel`]).
//!
//! An API forward is carried out as hyper's path does it (`Gateway::api`, `Proxy::forward`
//! with the API hop): the mount stripped, no UI allow-list, `X-Forwarded-Prefix` the public API
//! prefix (`Inner::api_public_prefix`), the API body cap (`max_api_body`), the API rate limit,
//! `dispatch` `api` and the API upstream's name in the access log and metrics, and the
//! response's `Location` and `Set-Cookie` rewritten under the public prefix by the functions
//! hyper's path calls (`rewrite::location`, `rewrite::set_cookie`). UI and API requests
//! alternate on one client connection: the upstream connection not in use is parked and taken
//! back when the next request goes there.
//!
//! Anything else is handed to hyper with the bytes already read ([`Outcome::Handoff`]), and hyper
//! serves the rest of that connection: HTTP/2 and HTTP/1.0 clients, upgrades with a body or
//! under an Origin allow-list, `Expect`, `Transfer-Encoding` on requests, requests without
//! `Host`, several `Content-Length`s, bodies over the cap (hyper answers 413), heads that do not
//! parse or are too large (400, 431), the gateway's own endpoints, API requests under a
//! `decide::HyperOnly` reason or asking for an upgrade, and an upstream that is not running
//! (503).
//!
//! What a forward needs besides forwarding is done here by the code hyper's path uses: the
//! rate limit of its dispatch (`Inner::rate_gate`) and the upstream concurrency cap
//! (`Proxy::upstream_slot`) with their 429 and 503, the debug ring, and, when the exchange
//! ends, the access-log line and the request metrics ([`observe::Record::report`]), read from
//! the parsed head and the relay's byte counts.
//!
//! What reaches the upstream is what the general path sends (the transparency and edge suites
//! run through this path): identity headers and hop-by-hop headers (RFC 9110 §7.6.1, including
//! every field named in `Connection`) dropped, the UI hop's allow-list applied, forwarded headers
//! and `X-Request-ID` set by the same code ([`ClientView::forwarded_fields`],
//! [`crate::observe::request_id_from`]), `Host` and everything else byte for byte, in the client's
//! order and letter case. Responses keep their framing (a chunked body is relayed verbatim),
//! lose their hop-by-hop headers, and get `X-Request-ID` (and `Date` when missing, as hyper adds
//! it). Upstream failures are the same 502/504 responses as on the general path.

use std::io::ErrorKind;
use std::time::{Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderValue;
use http::header::HeaderMap;
use http::uri::{Authority, PathAndQuery};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::affinity::IDLE_TIMEOUT;
use crate::decide;
use crate::forwarded::{ClientView, REPLACED_ON_HOP};
use crate::framing::{
    BodyFraming, MAX_RESPONSE_HEAD, RESPONSE_HEAD_BUFFER, RequestFraming, content_length,
    response_fields_size,
};
use crate::headers::{ClientHop, ConnectionOptions};
use crate::proxy::{TunnelSpec, UpstreamError};
use crate::upstream::{Endpoint, Upstream};
use crate::{ApiTarget, Body, Engine, Inner, observe, rewrite};

/// Header fields per message, as hyper's default limit.
const MAX_HEADERS: usize = 100;
/// Initial client read buffer, bytes (grows up to the header limit for a large head).
const CLIENT_BUFFER: usize = 4 * 1024;
/// Largest read of a request body from the client, bytes.
const MAX_BODY_READ: usize = 64 * 1024;
/// Upstream read buffer, bytes: one read carries a typical response head and body.
const UPSTREAM_BUFFER: usize = 16 * 1024;
/// Largest upstream read, bytes: reads that fill the buffer double the next one up to this
/// (large bodies then move in fewer, larger system calls, as hyper's adaptive buffer does).
const MAX_UPSTREAM_READ: usize = 128 * 1024;

/// How the fast path left a client connection.
pub(crate) enum Outcome {
    /// The connection is finished (closed by either side, timed out, or shut down).
    Closed,
    /// hyper serves the rest of the connection, starting with these bytes already read.
    Handoff(TcpStream, Bytes),
    /// The upstream switched protocols (WebSocket): splice the two connections with
    /// [`crate::proxy::tunnel`]; the 101 and any bytes either side sent early have been passed on.
    Tunnel(TcpStream, TcpStream, Box<TunnelSpec>),
}

/// An upstream connection of the fast path, with its read buffer.
pub(crate) struct UpConn {
    stream: TcpStream,
    authority: Authority,
    /// When it last finished an exchange.
    used: Instant,
    buf: BytesMut,
    /// Spare room to have before the next read (grows with large bodies).
    read_size: usize,
    /// The last response had no body (HEAD, 204, 304): check for stray bytes with a peek.
    bodiless: bool,
}

impl UpConn {
    /// Can carry a request now: idle for less than [`IDLE_TIMEOUT`], not closed by the upstream,
    /// and with nothing unread: bytes an upstream sent after its complete response (a body
    /// after HEAD/204/304, a second response nobody asked for) would otherwise be read as the
    /// next request's response.
    ///
    /// The I/O driver marks an idle connection readable when bytes (or a close) arrive; it is
    /// then read without waiting to tell which. That mark is only as fresh as the driver's last
    /// look, which is every time the connection's task waited for its client. When it did not
    /// (`fresh` false: the next request was pipelined behind the last one), or after a
    /// response without a body (where a broken upstream's stray body would follow), a
    /// non-blocking peek on the socket itself decides (one system call).
    pub(crate) fn usable(&self, fresh: bool) -> bool {
        if self.used.elapsed() >= IDLE_TIMEOUT {
            return false;
        }
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let clean = match self.stream.poll_read_ready(&mut cx) {
            std::task::Poll::Pending => true,
            std::task::Poll::Ready(Err(_)) => false,
            std::task::Poll::Ready(Ok(())) => {
                let mut b = [0u8; 1];
                matches!(self.stream.try_read(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock)
            }
        };
        if !clean {
            return false;
        }
        if fresh && !self.bodiless {
            return true;
        }
        // A peek on the non-blocking socket, past the driver's cached readiness.
        let mut b = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        matches!(
            socket2::SockRef::from(&self.stream).peek(&mut b),
            Err(e) if e.kind() == ErrorKind::WouldBlock
        )
    }
}

impl UpConn {
    /// The upstream it is connected to.
    pub(crate) fn authority(&self) -> &Authority {
        &self.authority
    }

    /// When it last finished an exchange.
    pub(crate) fn used(&self) -> Instant {
        self.used
    }

    /// Ready to be parked: holds no read buffer (it may have grown to `MAX_UPSTREAM_READ`).
    pub(crate) fn for_parking(mut self) -> Self {
        self.buf = BytesMut::new();
        self.read_size = UPSTREAM_BUFFER;
        self
    }
}

/// Serves `client` on the fast path until it ends or needs hyper. `closing` is cancelled when
/// the gateway shuts down: an idle connection then closes at once, a busy one after its
/// exchange.
pub(crate) async fn serve(
    inner: &Inner,
    ui: &Upstream,
    mut client: TcpStream,
    hop: &ClientHop,
    closing: &CancellationToken,
) -> Outcome {
    let mut buf = BytesMut::with_capacity(CLIENT_BUFFER);
    let mut up: Option<UpConn> = None;
    // Read up to twice the limit; the exact measure (`framing::request_head_size`) decides.
    let max_head = inner.limits.max_header_bytes.max(8192) * 2;
    let handoff: Option<Bytes> = 'conn: loop {
        // A complete request head, within the header read timeout (idle time included).
        let deadline = tokio::time::Instant::now() + inner.limits.header_read_timeout;
        // Bytes already parsed as an incomplete head: parsed again only once a new line has
        // arrived, so a head trickling in costs one parse per line, not one per read.
        let mut parsed = 0;
        // Whether this request's head had to be waited for (else it was pipelined behind the
        // last one, and the I/O driver has not looked at the upstream connection since).
        let mut waited = false;
        let plan = loop {
            if buf.len() > parsed && buf[parsed..].contains(&b'\n') {
                match plan(inner, ui, hop, &buf) {
                    Parsed::Plan(p, seen) => break Some((p, seen)),
                    Parsed::Partial => parsed = buf.len(),
                    Parsed::Handoff => break None,
                }
            }
            if buf.len() >= max_head {
                break None;
            }
            let idle = buf.is_empty();
            if idle && closing.is_cancelled() {
                break 'conn None;
            }
            if buf.capacity() - buf.len() < 512 {
                buf.reserve(CLIENT_BUFFER);
            }
            // An idle client holds its upstream connection only while that could be reused:
            // one timer wakes for whichever comes first, that or the header deadline.
            let stale = up
                .as_ref()
                .filter(|_| idle)
                .map(|c| tokio::time::Instant::from_std(c.used + IDLE_TIMEOUT))
                .filter(|at| *at < deadline);
            // Counts polls: more than one means the task waited, and the I/O driver looked at
            // every socket (the upstream connection's too) before waking it.
            let mut polls = 0u32;
            let read = {
                let mut reading = std::pin::pin!(client.read_buf(&mut buf));
                let counted = std::future::poll_fn(|cx| {
                    polls += 1;
                    reading.as_mut().poll(cx)
                });
                tokio::select! {
                    r = tokio::time::timeout_at(stale.unwrap_or(deadline), counted) => r,
                    () = closing.cancelled(), if idle => break 'conn None,
                }
            };
            match read {
                Ok(Ok(n)) if n > 0 => {}
                Err(_elapsed) if stale.is_some() => {
                    up = None;
                    continue;
                }
                // End of stream, a read error, or the header read timeout.
                _ => break 'conn None,
            }
            waited |= polls > 1;
        };
        let Some((plan, seen)) = plan else {
            break Some(buf.freeze());
        };
        buf.advance(plan.head_len);
        let plan = Plan {
            fresh: waited,
            ..plan
        };
        inner.served.count(Engine::H1);
        let observing = inner.access_log || inner.record_metrics;
        let start = observing.then(Instant::now);
        let (dispatch, upstream) = (plan.dispatch, plan.upstream);
        if inner.debug.is_some() {
            inner.recent.push(observe::Dispatch {
                request_id: seen.rid.to_str().unwrap_or("").to_owned(),
                dispatch,
                path: seen.target.path().to_owned(),
                worker: plan.worker,
            });
        }
        let worker = plan.worker;
        let mut tally = Tally::default();
        let next = exchange(
            inner,
            &mut client,
            &mut buf,
            &mut up,
            plan,
            &seen,
            closing,
            &mut tally,
        )
        .await;
        if let Some(start) = start {
            observe::Record {
                elapsed: start.elapsed(),
                request_id: &seen.rid,
                dispatch,
                method: &seen.method,
                websocket: tally.status == 101,
                path: seen.target.path(),
                query: seen.target.query(),
                client_ip: seen.client_ip,
                upstream: Some(upstream.name()),
                worker,
                status: tally.status,
                bytes_in: tally.bytes_in,
                bytes_out: tally.bytes_out,
            }
            .report(
                inner
                    .access_log
                    .then(|| observe::log_to(inner.access_log_sink.as_ref())),
                inner.record_metrics.then_some(&*inner.request_metrics),
            );
        }
        match next {
            Next::KeepAlive => {}
            Next::Close => break None,
            Next::Tunnel(upstream, spec) => {
                if let Some(c) = up.take() {
                    inner.proxy.parking.park_h1(c);
                }
                return Outcome::Tunnel(client, upstream, spec);
            }
        }
    };
    if let Some(c) = up {
        inner.proxy.parking.park_h1(c);
    }
    match handoff {
        Some(pre) => Outcome::Handoff(client, pre),
        None => {
            let _ = client.shutdown().await;
            Outcome::Closed
        }
    }
}

/// After an answer written while `remaining` body bytes (some of them in `buf`) were unread:
/// ends the answer (FIN), then reads and drops the rest of the body within the drain bounds
/// ([`crate::cap::DRAIN_MAX_BYTES`], [`crate::cap::DRAIN_MAX_TIME`]) before the connection is
/// closed.
async fn linger(client: &mut TcpStream, buf: &mut BytesMut, remaining: u64) {
    let _ = client.shutdown().await;
    let mut left = remaining
        .min(crate::cap::DRAIN_MAX_BYTES)
        .saturating_sub(buf.len() as u64);
    buf.clear();
    let mut sink = [0u8; 16 * 1024];
    let _ = tokio::time::timeout(crate::cap::DRAIN_MAX_TIME, async {
        while left > 0 {
            match client.read(&mut sink).await {
                Ok(n) if n > 0 => left = left.saturating_sub(n as u64),
                _ => return,
            }
        }
    })
    .await;
}

/// What the access log and the metrics read of an exchange, counted as it goes.
#[derive(Debug, Default)]
struct Tally {
    /// The status sent to the client (the upstream's, or the gateway's own answer's).
    status: u16,
    /// Request body bytes relayed from the client.
    bytes_in: u64,
    /// Response body bytes sent to the client (a chunked body's data, as hyper counts it).
    bytes_out: u64,
}

/// What the access log, the metrics and the debug ring read of a request the fast path serves
/// (kept past the exchange; the head itself is gone by then).
struct Seen {
    method: http::Method,
    /// The request target as received.
    target: PathAndQuery,
    rid: HeaderValue,
    /// The client's IP (as trusted forwarded headers resolve it).
    client_ip: std::net::IpAddr,
}

/// What follows an exchange on the client connection.
enum Next {
    KeepAlive,
    Close,
    /// The upstream switched protocols on this upstream connection.
    Tunnel(TcpStream, Box<TunnelSpec>),
}

/// A request head the fast path takes, turned into what to send upstream.
struct Plan<'a> {
    /// The upstream it goes to: the UI's (or the UI worker's, `endpoint`) or the API's.
    upstream: &'a Upstream,
    /// The request's `dispatch` (`decide::FastForward::dispatch`).
    dispatch: &'static str,
    /// An API forward: where its response's `Location` and `Set-Cookie` are rewritten to.
    api: Option<ApiPublic>,
    /// Length of the client's request head in the buffer.
    head_len: usize,
    /// The upstream request head (request line, fields, empty line).
    upstream_head: Vec<u8>,
    /// Request body length (`Content-Length`, 0 when absent), bytes.
    body_len: u64,
    /// A `HEAD` request (its response has no body whatever its fields say).
    head_request: bool,
    /// Idempotent and body-less: may be sent again on a new connection (RFC 9110 §9.2.2).
    retryable: bool,
    /// The client asked to close after this exchange.
    client_close: bool,
    /// A WebSocket upgrade: the `Sec-WebSocket-Accept` the upstream's 101 must carry
    /// (`Connection: upgrade` and `Upgrade: websocket` are sent on).
    ws_accept: Option<String>,
    endpoint: Endpoint,
    /// The connection's task waited for this request's head, so the I/O driver's readiness of
    /// the upstream connection is fresh (see `UpConn::usable`).
    fresh: bool,
    /// The UI worker (id, from 1) the request was placed on, when there are several
    /// (`pool.rs`).
    worker: Option<usize>,
    /// A reconnect of a session whose worker is gone: the page to start (`pool.rs`).
    replay: Option<std::sync::Arc<[u8]>>,
    /// The affinity cookie for the response, when the request was placed anew (`pool.rs`).
    set_cookie: Option<HeaderValue>,
}

#[allow(
    clippy::large_enum_variant,
    reason = "returned once per request head and taken apart at once: boxing it would cost an allocation per request"
)]
enum Parsed<'a> {
    Plan(Plan<'a>, Seen),
    /// The head is not complete yet.
    Partial,
    /// Not for the fast path: hyper serves it.
    Handoff,
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `content-length: {n}`, the framing the gateway relays (formatted without allocating).
fn push_length(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut v = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    push_field(out, b"content-length", &digits[at..]);
}

/// `HTTP/1.1 {status} {reason}` and its line end.
fn push_status_line(out: &mut Vec<u8>, status: StatusCode, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The fields the gateway adds to a response head it writes: `Date` (when `date`, as hyper's
/// server adds it) and `Connection: close` (when `close`).
fn push_own_fields(out: &mut Vec<u8>, date: bool, close: bool) {
    if date {
        push_field(
            out,
            b"date",
            httpdate::fmt_http_date(SystemTime::now()).as_bytes(),
        );
    }
    if close {
        push_field(out, b"connection", b"close");
    }
}

/// The public side of an API forward, for the response's rewrite (`rewrite.rs`), as hyper's
/// path gives it (`Gateway::api`).
struct ApiPublic {
    /// The public API prefix (`Inner::api_public_prefix`).
    prefix: String,
    /// The host the client used (the client view's).
    host: Option<HeaderValue>,
    /// `http` or `https`, as the client view resolves it.
    proto: &'static str,
}

/// Decides what to do with the request head at the start of `buf`.
fn plan<'a>(inner: &'a Inner, ui: &'a Upstream, hop: &ClientHop, buf: &[u8]) -> Parsed<'a> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Handoff,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Handoff;
    };
    if method == "CONNECT" || !target.starts_with('/') {
        return Parsed::Handoff;
    }
    let (Ok(pq), Ok(method_token)) = (
        PathAndQuery::try_from(target),
        http::Method::from_bytes(method.as_bytes()),
    ) else {
        return Parsed::Handoff;
    };
    // Over the head limit: hyper answers 431 by the same measure.
    let head_size = crate::framing::request_head_size(
        method,
        target,
        req.headers.iter().map(|h| (h.name.as_bytes(), h.value)),
    );
    if head_size > inner.limits.max_header_bytes.max(8192) {
        return Parsed::Handoff;
    }
    let decision = decide::decide(pq.path(), &inner.root, &inner.api, inner.own_endpoints());
    let policy = &inner.header_policy;

    // One pass for the fields that decide the exchange.
    // `Connection` is parsed once into a bounded set (one lookup per field below).
    let mut connection = ConnectionOptions::default();
    let mut host: Option<&[u8]> = None;
    let mut framing = RequestFraming::default();
    let mut te_field = false;
    let mut upgrade: Option<&[u8]> = None;
    let mut ws_key: Option<&[u8]> = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            connection.add(h.value);
        } else if name.eq_ignore_ascii_case("host") {
            // One valid Host or hyper answers 400 (`headers::check_host`).
            if host.is_some() || !crate::headers::valid_host(h.value) {
                return Parsed::Handoff;
            }
            host = Some(h.value);
        } else if name.eq_ignore_ascii_case("content-length") {
            framing.length(h.value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            te_field = true;
            framing.encoding(h.value);
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = upgrade.or(Some(h.value));
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            ws_key = ws_key.or(Some(h.value));
        } else if name.eq_ignore_ascii_case("expect") {
            return Parsed::Handoff;
        }
    }
    // The shared framing rules (`framing.rs`): a chunked body is relayed by the general path,
    // and a refused framing is refused there, with the same answer.
    let length = match framing.finish(te_field) {
        Ok(BodyFraming::None) => None,
        Ok(BodyFraming::Length(n)) => Some(n),
        Ok(BodyFraming::Chunked) | Err(_) => return Parsed::Handoff,
    };
    // Only a WebSocket upgrade is one (`headers::upgrade_request` decides the same); any other
    // `Upgrade` is hop-by-hop and the request goes on as a plain one. Upgrades with a body or
    // under an Origin allow-list are left to the general path.
    let ws_accept = crate::headers::is_websocket_upgrade(connection.upgrade, upgrade, ws_key)
        .then(|| ws_key.map(crate::headers::websocket_accept))
        .flatten();
    let upgrade = ws_accept.is_some();
    // The shared decision (`decide.rs`): only a UI or API forward that needs nothing only
    // hyper's path does (`decide::HyperOnly`: authentication, CORS, …) is ours.
    let Some(forward) = decide::fast_forward(decision, inner.hyper_only, upgrade) else {
        return Parsed::Handoff;
    };
    let dispatch = forward.dispatch();
    let (path, upstream, api) = match forward {
        decide::FastForward::Ui { path } => (path, ui, false),
        decide::FastForward::Api { path } => match &inner.api_target {
            ApiTarget::Upstream(u) => (path, u, true),
            _ => return Parsed::Handoff,
        },
    };
    let client_close = connection.close;
    if upgrade && (length.is_some_and(|n| n > 0) || !inner.limits.ws_allowed_origins.is_empty()) {
        return Parsed::Handoff;
    }
    let Some(host) = host else {
        return Parsed::Handoff;
    };
    let body_len = length.unwrap_or(0);
    // Over its hop's cap, hyper's path answers 413 (`Proxy::forward`'s `body_cap`).
    let cap = if api {
        inner.limits.max_api_body
    } else {
        inner.limits.max_ui_body
    };
    if cap > 0 && body_len > cap {
        return Parsed::Handoff;
    }
    // Several workers: the one rule picks the worker (`pool.rs`); none running is hyper's
    // path's 503. With one worker there is no pool and nothing of this runs; nor for the API.
    let placed = match inner.pool.as_ref().filter(|p| !api && p.routing()) {
        None => None,
        Some(pool) => {
            let mut ask = crate::pool::Ask {
                websocket: upgrade,
                ..crate::pool::Ask::default()
            };
            for h in req.headers.iter() {
                if h.name.eq_ignore_ascii_case("cookie") {
                    ask.cookies.push(h.value);
                } else if upgrade && h.name.eq_ignore_ascii_case("sec-websocket-protocol") {
                    ask.protocols.push(h.value);
                }
            }
            match pool.place(&path, &ask) {
                Some(p) => Some(p),
                None => return Parsed::Handoff,
            }
        }
    };
    let endpoint = match &placed {
        Some(p) => p.endpoint.clone(),
        None => match upstream.endpoint.borrow().clone() {
            Some(e) => e,
            None => return Parsed::Handoff,
        },
    };

    // What the gateway believes about the client, from the same fields the general path reads.
    let Ok(host_value) = HeaderValue::from_bytes(host) else {
        return Parsed::Handoff;
    };
    let mut seen = HeaderMap::with_capacity(2);
    seen.insert(http::header::HOST, host_value.clone());
    if inner.trust.trusts(hop.peer.ip().to_canonical()) {
        for h in req.headers.iter() {
            let forwarded = REPLACED_ON_HOP
                .into_iter()
                .find(|n| n.as_str().eq_ignore_ascii_case(h.name));
            if let Some(n) = forwarded
                && !policy.is_identity(h.name.as_bytes())
                && let Ok(v) = HeaderValue::from_bytes(h.value)
            {
                seen.append(n, v);
            }
        }
    }
    let view = ClientView::resolve(&inner.trust, hop.peer, hop.local.port(), &seen);
    // The client's id, as written (the last one), judged by the same rule as on hyper's path.
    let client_rid = req
        .headers
        .iter()
        .rev()
        .find(|h| h.name.eq_ignore_ascii_case(fluxlit_headers::REQUEST_ID))
        .map(|h| h.value);
    let rid = observe::request_id_from(
        client_rid,
        observe::keeps_client_request_id(inner.request_id_trust, view.peer_trusted),
    );
    // The API hop's `X-Forwarded-Prefix` is the public API prefix; the UI's the stripped
    // prefix or the root path.
    let api = api.then(|| ApiPublic {
        prefix: inner.api_public_prefix(view.prefix.as_deref()),
        host: view.host.clone(),
        proto: view.proto,
    });
    let prefix = match &api {
        Some(a) => Some(a.prefix.as_str()),
        None => view
            .prefix
            .as_deref()
            .or((!inner.root.is_empty()).then_some(&*inner.root)),
    };

    let mut out = Vec::with_capacity(head_len + 256);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    for part in decide::target_parts(&endpoint.base_path, &path, pq.query()) {
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host_sent = false;
    let mut length_sent = false;
    // Several workers: the gateway's cookie is taken out of `Cookie` (`pool.rs`).
    let strip_cookie = placed.is_some();
    for h in req.headers.iter() {
        let name = h.name;
        // The first `Host`, where the client put it; no other.
        if name.eq_ignore_ascii_case("host") {
            if !host_sent {
                push_field(&mut out, name.as_bytes(), host);
                host_sent = true;
            }
            continue;
        }
        // The framing is the gateway's: the length it counted and relays, where the client put
        // its `Content-Length` (never removed by a `Connection` option, never copied).
        if name.eq_ignore_ascii_case("content-length") {
            // Once: repeated fields with one value are one length (hyper keeps the first).
            if !length_sent {
                push_length(&mut out, body_len);
                length_sent = true;
            }
            continue;
        }
        if decide::forwards_request_field(policy, &connection, api.is_none(), name.as_bytes()) {
            // The gateway's own cookie stays here; the rest of the field goes on as sent.
            let rest = if strip_cookie && name.eq_ignore_ascii_case("cookie") {
                crate::pool::without_affinity_cookie(h.value)
            } else {
                None
            };
            match rest {
                None => push_field(&mut out, name.as_bytes(), h.value),
                Some(rest) if rest.is_empty() => {}
                Some(rest) => push_field(&mut out, name.as_bytes(), &rest),
            }
        }
    }
    for (name, value) in view.forwarded_fields(prefix) {
        push_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    push_field(
        &mut out,
        fluxlit_headers::REQUEST_ID.as_bytes(),
        rid.as_bytes(),
    );
    if upgrade {
        push_field(&mut out, b"connection", b"upgrade");
        push_field(&mut out, b"upgrade", crate::headers::WEBSOCKET.as_bytes());
    }
    out.extend_from_slice(b"\r\n");

    Parsed::Plan(
        Plan {
            upstream,
            dispatch,
            api,
            head_len,
            upstream_head: out,
            body_len,
            head_request: method == "HEAD",
            retryable: decide::retryable(method, body_len == 0, upgrade),
            client_close,
            ws_accept,
            endpoint,
            fresh: false,
            worker: placed.as_ref().map(|p| p.worker),
            replay: placed.as_ref().and_then(|p| p.replay.clone()),
            set_cookie: placed.and_then(|p| p.set_cookie),
        },
        Seen {
            method: method_token,
            target: pq,
            rid,
            client_ip: view.client_ip,
        },
    )
}

/// Why an exchange failed before the response head.
enum UpError {
    /// The upstream failed (the error both engines share).
    Up(UpstreamError),
    /// The client went away while its body was being forwarded.
    Client,
}

/// How a response body is delimited (RFC 9112 §6.3).
enum Framing {
    None,
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

/// A response head, rewritten for the client.
struct RespHead {
    /// The upstream's status code.
    status: u16,
    head: Vec<u8>,
    framing: Framing,
    /// The upstream keeps the connection open after this response.
    upstream_keep: bool,
    /// A 101 to an upgrade request: the connection becomes a tunnel.
    switched: bool,
}

/// What the response head rewrite needs to know.
struct HeadCtx<'a> {
    rid: &'a HeaderValue,
    head_request: bool,
    /// The client connection closes after this exchange.
    close: bool,
    /// The request asked for a WebSocket upgrade: a 101 with this `Sec-WebSocket-Accept` is
    /// expected (any other 101 is a 502).
    ws_accept: Option<&'a str>,
    /// `Set-Cookie` for the gateway's affinity cookie (`pool.rs`), added to the response.
    set_cookie: Option<&'a HeaderValue>,
    /// An API forward: its public side and the upstream's authority, for the rewrite of
    /// `Location` and `Set-Cookie` (`rewrite.rs`).
    api: Option<(&'a ApiPublic, &'a str)>,
}

/// Forwards one request and its response (`tally`: what was sent); says what becomes of the
/// client connection.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    inner: &Inner,
    client: &mut TcpStream,
    buf: &mut BytesMut,
    up: &mut Option<UpConn>,
    plan: Plan<'_>,
    seen: &Seen,
    closing: &CancellationToken,
    tally: &mut Tally,
) -> Next {
    let proxy = &inner.proxy;
    let fresh = plan.fresh;
    let wt = inner.limits.write_timeout;
    let authority = plan.endpoint.authority.clone();
    let upstream = plan.upstream;
    let rid = &seen.rid;
    let out = plan.upstream_head;
    let mut remaining = plan.body_len;
    let ctx = HeadCtx {
        rid,
        head_request: plan.head_request,
        close: plan.client_close || closing.is_cancelled(),
        ws_accept: plan.ws_accept.as_deref(),
        set_cookie: plan.set_cookie.as_ref(),
        api: plan
            .api
            .as_ref()
            .map(|a| (a, plan.endpoint.authority.as_str())),
    };
    let (timeout, timeout_setting) = if plan.ws_accept.is_some() {
        (inner.limits.ws_open_timeout, "gateway_ws_open_timeout_s")
    } else {
        (proxy.read_timeout, "gateway_upstream_read_timeout_s")
    };
    // The rate limit of the request's dispatch and the upstream concurrency cap, as on hyper's
    // path (the slot is held until the response is relayed).
    let slot = match inner
        .rate_gate(plan.dispatch, seen.client_ip, rid)
        .and_then(|()| proxy.upstream_slot(rid))
    {
        Ok(slot) => slot,
        Err(refused) => return answer(client, buf, *refused, &ctx, remaining, wt, tally).await,
    };
    // A WebSocket holds a slot of its client IP from here to the tunnel's end.
    let tunnel_slot = match plan.ws_accept {
        Some(_) => match proxy.tunnel_slot(seen.client_ip, rid) {
            Ok(slot) => Some(slot),
            Err(refused) => {
                return answer(client, buf, *refused, &ctx, remaining, wt, tally).await;
            }
        },
        None => None,
    };

    // The connection's upstream connection when it goes to this upstream; one to another
    // upstream (UI and API, or another UI worker) is parked for the next request that goes
    // there, on this client connection or another.
    let kept = match up.take() {
        Some(c) if c.authority == authority => Some(c).filter(|c| c.usable(fresh)),
        Some(other) => {
            proxy.parking.park_h1(other);
            None
        }
        None => None,
    }
    .or_else(|| proxy.parking.adopt_h1(&authority, fresh));
    let attempt = tokio::time::timeout(timeout, async {
        let (mut conn, mut reused) = match kept {
            Some(c) => (c, true),
            None => (connect(proxy, &authority).await?, false),
        };
        loop {
            let sent = send(&mut conn, &out, client, buf, &mut remaining).await;
            let head = match sent {
                Ok(()) => read_head(&mut conn, &ctx).await,
                Err(e) => Err(e),
            };
            match head {
                Ok(h) => return Ok((conn, h)),
                Err(UpError::Up(UpstreamError::Exchange {
                    source,
                    closed: true,
                })) if reused && plan.retryable => {
                    tracing::debug!(request_id = rid.to_str().unwrap_or(""), upstream = upstream.name(), error = %source, "a kept-alive upstream connection closed under an idempotent request; retrying once on a new one");
                    conn = connect(proxy, &authority).await?;
                    reused = false;
                }
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    tally.bytes_in = plan.body_len - remaining;
    let name = upstream.name();
    let (mut conn, head) = match attempt {
        Ok(Ok(x)) => x,
        Ok(Err(UpError::Client)) => {
            // The client went away mid-body: hyper's path reports the failed forward as a 502.
            tally.status = StatusCode::BAD_GATEWAY.as_u16();
            return Next::Close;
        }
        Err(_elapsed) => {
            let e = UpstreamError::Timeout {
                after: timeout,
                setting: timeout_setting,
            };
            let resp = e.response(name, &authority, rid);
            return answer(client, buf, resp, &ctx, remaining, wt, tally).await;
        }
        Ok(Err(UpError::Up(e))) => {
            let resp = e.response(name, &authority, rid);
            return answer(client, buf, resp, &ctx, remaining, wt, tally).await;
        }
    };
    tally.status = head.status;
    let RespHead {
        status: _,
        head,
        framing,
        upstream_keep,
        switched,
    } = head;
    if switched {
        // Count the session on its worker and learn its id from the server's first messages,
        // those read with the head included (`pool.rs`); one worker of a pool is worker 1.
        let mut session = inner
            .pool
            .as_ref()
            .filter(|_| plan.api.is_none())
            .map(|p| p.tap(plan.worker.unwrap_or(1), plan.replay.clone()));
        if let Some(tap) = &mut session {
            tap.observe(&conn.buf);
            tap.client_sent(buf);
        }
        // Bytes either side sent after its head belong to the new protocol: pass them on.
        let mut out = head;
        out.extend_from_slice(&conn.buf);
        conn.buf.clear();
        if write_two(client, &out, &[], wt).await.is_err()
            || (!buf.is_empty() && conn.stream.write_all(buf).await.is_err())
        {
            return Next::Close;
        }
        buf.clear();
        let mut spec = proxy.tunnel_spec(name, rid);
        spec.slot = tunnel_slot;
        spec.tap = session;
        return Next::Tunnel(conn.stream, Box::new(spec));
    }
    let until_close = matches!(framing, Framing::UntilClose);
    let bodiless = matches!(framing, Framing::None);
    let relayed = relay(client, &mut conn, head, framing, wt, &mut tally.bytes_out).await;
    drop(slot);
    match relayed {
        Ok(()) => {
            if upstream_keep && !until_close && conn.buf.is_empty() {
                conn.used = Instant::now();
                conn.bodiless = bodiless;
                *up = Some(conn);
            }
            if ctx.close || until_close {
                Next::Close
            } else {
                Next::KeepAlive
            }
        }
        Err(()) => Next::Close,
    }
}

/// Answers with the gateway's own response `resp` (an upstream failure by the shared mapping,
/// [`UpstreamError::response`], or a refusal: 429, 503). A request body not read to its end
/// cannot be skipped: the connection closes after the answer, once the rest of the body is
/// read and dropped (bounded), so the close is not a reset that destroys the answer for a
/// client still writing.
async fn answer(
    client: &mut TcpStream,
    buf: &mut BytesMut,
    resp: Response<Body>,
    ctx: &HeadCtx<'_>,
    remaining: u64,
    wt: std::time::Duration,
    tally: &mut Tally,
) -> Next {
    let close = ctx.close || remaining > 0;
    let written = write_response(client, resp, ctx, close, wt, tally).await;
    if written && remaining > 0 {
        linger(client, buf, remaining).await;
    }
    if written && !close {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// Opens an upstream connection for the fast path (`TCP_NODELAY`, the connect timeout).
async fn connect(proxy: &crate::proxy::Proxy, authority: &Authority) -> Result<UpConn, UpError> {
    let stream = proxy
        .tcp_connect(authority)
        .await
        .map_err(|e| UpError::Up(UpstreamError::Connect(e.into())))?;
    Ok(UpConn {
        stream,
        authority: authority.clone(),
        used: Instant::now(),
        buf: BytesMut::with_capacity(UPSTREAM_BUFFER),
        read_size: UPSTREAM_BUFFER,
        bodiless: false,
    })
}

/// Writes the request head together with the body bytes already read (one `writev`, no copy),
/// then the rest of the body as it arrives. Only a body-less request is ever sent twice, so the
/// head alone is what a retry repeats.
async fn send(
    conn: &mut UpConn,
    head: &[u8],
    client: &mut TcpStream,
    buf: &mut BytesMut,
    remaining: &mut u64,
) -> Result<(), UpError> {
    let first = usize::try_from(*remaining)
        .unwrap_or(usize::MAX)
        .min(buf.len());
    write_two(
        &mut conn.stream,
        head,
        &buf[..first],
        std::time::Duration::ZERO,
    )
    .await
    .map_err(|e| UpError::Up(UpstreamError::exchange(e.to_string(), true)))?;
    buf.advance(first);
    *remaining -= first as u64;
    while *remaining > 0 {
        if buf.is_empty() {
            // Large bodies move in reads of up to MAX_BODY_READ bytes.
            let want = usize::try_from(*remaining)
                .unwrap_or(usize::MAX)
                .clamp(CLIENT_BUFFER, MAX_BODY_READ);
            buf.reserve(want);
            match client.read_buf(buf).await {
                Ok(n) if n > 0 => {}
                _ => return Err(UpError::Client),
            }
        }
        let n = usize::try_from(*remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        conn.stream
            .write_all(&buf[..n])
            .await
            .map_err(|e| UpError::Up(UpstreamError::exchange(e.to_string(), false)))?;
        buf.advance(n);
        *remaining -= n as u64;
    }
    Ok(())
}

/// Reads the upstream's response head (skipping 1xx interim responses other than 101, as
/// hyper's client does) and rewrites it for the client.
async fn read_head(conn: &mut UpConn, ctx: &HeadCtx<'_>) -> Result<RespHead, UpError> {
    enum Step {
        Interim(usize),
        Head(RespHead, usize),
        More,
    }
    loop {
        if !conn.buf.is_empty() {
            let step = {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(&conn.buf) {
                    Ok(httparse::Status::Complete(n)) => match resp.code {
                        Some(101) if ctx.ws_accept.is_none() => {
                            return Err(UpError::Up(UpstreamError::Unsolicited101));
                        }
                        Some(101) => Step::Head(rewrite_head(&resp, ctx)?, n),
                        Some(100..=199) => Step::Interim(n),
                        _ => Step::Head(rewrite_head(&resp, ctx)?, n),
                    },
                    Ok(httparse::Status::Partial) if conn.buf.len() < RESPONSE_HEAD_BUFFER => {
                        Step::More
                    }
                    Ok(httparse::Status::Partial) => {
                        return Err(UpError::Up(UpstreamError::exchange(
                            format!("response head larger than {RESPONSE_HEAD_BUFFER} bytes"),
                            false,
                        )));
                    }
                    Err(e) => {
                        return Err(UpError::Up(UpstreamError::exchange(
                            format!("invalid response head: {e}"),
                            false,
                        )));
                    }
                }
            };
            match step {
                Step::Interim(n) => {
                    conn.buf.advance(n);
                    continue;
                }
                Step::Head(head, n) => {
                    conn.buf.advance(n);
                    return Ok(head);
                }
                Step::More => {}
            }
        }
        if conn.buf.capacity() - conn.buf.len() < 1024 {
            conn.buf.reserve(UPSTREAM_BUFFER);
        }
        let nothing_yet = conn.buf.is_empty();
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) => {
                return Err(UpError::Up(UpstreamError::exchange(
                    "connection closed before message completed",
                    nothing_yet,
                )));
            }
            Ok(_) => {}
            Err(e) => {
                let closed = nothing_yet
                    && matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset
                            | ErrorKind::ConnectionAborted
                            | ErrorKind::BrokenPipe
                    );
                return Err(UpError::Up(UpstreamError::exchange(e.to_string(), closed)));
            }
        }
    }
}

/// The client's response head: the upstream's status and fields minus hop-by-hop fields (the
/// body's own `Transfer-Encoding` stays, since the body is relayed as it comes) and the
/// upstream's `X-Request-ID`, plus the gateway's `X-Request-ID`, `Date` when missing and
/// `Connection: close` when the client connection ends after it.
fn rewrite_head(resp: &httparse::Response<'_, '_>, ctx: &HeadCtx<'_>) -> Result<RespHead, UpError> {
    let bad = |what: &str| {
        UpError::Up(UpstreamError::exchange(
            format!("invalid response head: {what}"),
            false,
        ))
    };
    let size = response_fields_size(resp.headers.iter().map(|h| (h.name.as_bytes(), h.value)));
    if size > MAX_RESPONSE_HEAD {
        return Err(UpError::Up(UpstreamError::exchange(
            format!("response head fields of {size} bytes, over {MAX_RESPONSE_HEAD} bytes"),
            false,
        )));
    }
    let code = resp.code.unwrap_or(0);
    let mut connection = ConnectionOptions::default();
    let mut length: Option<u64> = None;
    let mut te_chunked: Option<bool> = None;
    let mut date = false;
    let mut upgrade: Option<&[u8]> = None;
    let mut accept: Option<&[u8]> = None;
    let switched = code == 101;
    let mut upstream_keep = resp.version == Some(1) && !switched;
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            connection.add(h.value);
        } else if name.eq_ignore_ascii_case("content-length") {
            match (length, content_length(h.value)) {
                (None, Some(n)) => length = Some(n),
                (Some(a), Some(b)) if a == b => {}
                _ => return Err(bad("Content-Length")),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing; like
            // hyper's client, refused where it would frame a body (not after HEAD, 204, 304).
            let bodiless = ctx.head_request || code == 204 || code == 304;
            if resp.version == Some(0) && !bodiless {
                return Err(bad("Transfer-Encoding in an HTTP/1.0 response"));
            }
            // The final coding decides (RFC 9112 §6.3): chunked, or read until close.
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or(&[]);
            te_chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("date") {
            date = true;
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = upgrade.or(Some(h.value));
        } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
            accept = accept.or(Some(h.value));
        }
    }
    if switched
        && !ctx
            .ws_accept
            .is_some_and(|want| crate::headers::websocket_switched(want, accept, upgrade))
    {
        return Err(UpError::Up(UpstreamError::Handshake));
    }
    upstream_keep &= !connection.close;
    let framing = if switched || ctx.head_request || code == 204 || code == 304 {
        Framing::None
    } else {
        match (te_chunked, length) {
            (Some(true), _) => Framing::Chunked(Chunked::default()),
            (Some(false), _) | (None, None) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    let close = !switched && (ctx.close || matches!(framing, Framing::UntilClose));

    let status = StatusCode::from_u16(code).map_err(|_| bad("status"))?;
    let mut out = Vec::with_capacity(512);
    push_status_line(&mut out, status, resp.reason.unwrap_or(""));
    let mut length_sent = false;
    /// Where the API response's `Location` rewrite is.
    enum Location {
        /// No `Location` yet.
        Unseen,
        /// The first was left as sent: so is every other.
        Kept,
        /// The first was rewritten: the others go.
        Replaced,
    }
    let mut location = Location::Unseen;
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            // The framing is the gateway's: one `Content-Length` with the length it relays (or,
            // for HEAD/204/304, the validated length the upstream declared), where the upstream
            // put it; never removed by a `Connection` option. Transfer-Encoding overrides it
            // (RFC 9112 §6.3): then none goes on.
            // Never on a 1xx or 204 (RFC 9110 §8.6).
            // Nor on a 304 to anything but HEAD, as hyper's server writes it.
            let allowed =
                code != 204 && (code != 304 || ctx.head_request) && !(100..200).contains(&code);
            if let (Some(n), None, false, true) = (length, te_chunked, length_sent, allowed) {
                push_length(&mut out, n);
                length_sent = true;
            }
            continue;
        }
        let keep = if name.eq_ignore_ascii_case("transfer-encoding") {
            !matches!(framing, Framing::None)
        } else {
            decide::forwards_response_field(&connection, name.as_bytes())
        };
        if !keep {
            continue;
        }
        // An API response: `Location` and `Set-Cookie` under the public prefix, by the rule
        // hyper's path applies to its `HeaderMap` (`rewrite::api_response`): the first
        // `Location` decides, and when it is rewritten it replaces every `Location`.
        if let Some((public, upstream)) = ctx.api {
            if name.eq_ignore_ascii_case("location") {
                match location {
                    Location::Replaced => continue,
                    Location::Kept => {}
                    Location::Unseen => {
                        let host = public.host.as_ref().and_then(|h| h.to_str().ok());
                        let origin = host.map(|h| format!("{}://{h}", public.proto));
                        let to = rewrite::Public {
                            prefix: &public.prefix,
                            host,
                            upstream,
                            origin: origin.as_deref(),
                        };
                        if let Some(new) = rewrite::location(h.value, &to) {
                            push_field(&mut out, name.as_bytes(), new.as_bytes());
                            location = Location::Replaced;
                            continue;
                        }
                        location = Location::Kept;
                    }
                }
            } else if name.eq_ignore_ascii_case("set-cookie") {
                let to = rewrite::Public {
                    prefix: &public.prefix,
                    host: None,
                    upstream,
                    origin: None,
                };
                if let Some(new) = rewrite::set_cookie(h.value, &to) {
                    push_field(&mut out, name.as_bytes(), new.as_bytes());
                    continue;
                }
            }
        }
        push_field(&mut out, name.as_bytes(), h.value);
    }
    if let Some(cookie) = ctx.set_cookie {
        push_field(&mut out, b"set-cookie", cookie.as_bytes());
    }
    push_field(
        &mut out,
        fluxlit_headers::REQUEST_ID.as_bytes(),
        ctx.rid.as_bytes(),
    );
    push_own_fields(&mut out, !date, close);
    if switched {
        push_field(&mut out, b"connection", b"upgrade");
        push_field(&mut out, b"upgrade", crate::headers::WEBSOCKET.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    Ok(RespHead {
        status: code,
        head: out,
        framing,
        upstream_keep,
        switched,
    })
}

/// Writes `head` and relays the body by its framing, adding the body bytes written to `sent`
/// (a chunked body's data bytes, without its framing, as hyper's path counts them). `Err` when
/// either side failed or the upstream's body was cut short (the client connection must then
/// close).
async fn relay(
    client: &mut TcpStream,
    conn: &mut UpConn,
    head: Vec<u8>,
    mut framing: Framing,
    wt: std::time::Duration,
    sent: &mut u64,
) -> Result<(), ()> {
    let mut pending = head;
    // A chunked body's data bytes already added to `sent`.
    let mut counted = 0;
    loop {
        let (n, done) = match &mut framing {
            Framing::None => (0, true),
            Framing::Length(rest) => {
                let n = usize::try_from(*rest)
                    .unwrap_or(usize::MAX)
                    .min(conn.buf.len());
                *rest -= n as u64;
                (n, *rest == 0)
            }
            Framing::Chunked(c) => {
                let n = c.scan(&conn.buf).map_err(|_| ())?;
                (n, c.is_done())
            }
            Framing::UntilClose => (conn.buf.len(), false),
        };

        if pending.is_empty() {
            if n > 0 {
                write_two(client, &conn.buf[..n], &[], wt)
                    .await
                    .map_err(|_| ())?;
            }
        } else {
            write_two(client, &pending, &conn.buf[..n], wt)
                .await
                .map_err(|_| ())?;
            pending = Vec::new();
        }
        *sent += match &framing {
            Framing::Chunked(c) => c.data - std::mem::replace(&mut counted, c.data),
            _ => n as u64,
        };
        conn.buf.advance(n);
        if done {
            return Ok(());
        }
        conn.buf.reserve(conn.read_size);
        let room = conn.buf.capacity() - conn.buf.len();
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) if matches!(framing, Framing::UntilClose) => return Ok(()),
            Ok(n) if n > 0 => {
                if n == room {
                    conn.read_size = (conn.read_size * 2).min(MAX_UPSTREAM_READ);
                }
            }
            _ => return Err(()),
        }
    }
}

/// Writes `a` then `b` to `to` with as few system calls as the socket allows (`writev`),
/// without copying them together.
///
/// Each system call that makes no progress for `wt` (the write timeout; zero: none) fails the
/// write with `TimedOut`: a client that reads slowly but steadily is never cut, one that stopped
/// reading is.
async fn write_two(
    to: &mut TcpStream,
    mut a: &[u8],
    mut b: &[u8],
    wt: std::time::Duration,
) -> std::io::Result<()> {
    while !a.is_empty() || !b.is_empty() {
        let slices = [std::io::IoSlice::new(a), std::io::IoSlice::new(b)];
        let n = timed(wt, to.write_vectored(&slices)).await?;
        if n == 0 {
            return Err(ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    Ok(())
}

/// Writes a response the gateway made (a 502, 504, 429 or 503), with `Content-Length`, `Date`
/// and, when `close`, `Connection: close`, and notes it in `tally`. Returns whether it was
/// written.
async fn write_response(
    client: &mut TcpStream,
    resp: Response<Body>,
    ctx: &HeadCtx<'_>,
    close: bool,
    wt: std::time::Duration,
    tally: &mut Tally,
) -> bool {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(256 + body.len());
    push_status_line(
        &mut out,
        parts.status,
        parts.status.canonical_reason().unwrap_or(""),
    );
    for (name, value) in &parts.headers {
        push_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    push_field(
        &mut out,
        b"content-length",
        body.len().to_string().as_bytes(),
    );
    push_own_fields(&mut out, true, close);
    out.extend_from_slice(b"\r\n");
    // The answer to a HEAD has no body (RFC 9110 §9.3.2), whatever its length says.
    tally.status = parts.status.as_u16();
    if !ctx.head_request {
        out.extend_from_slice(&body);
        tally.bytes_out = body.len() as u64;
    }
    write_two(client, &out, &[], wt).await.is_ok()
}

/// `write` bounded by the write timeout `wt` (`gateway_write_timeout_s`; zero: unbounded): a
/// client that stops reading fails the write with `TimedOut` and its connection is closed.
async fn timed<T>(
    wt: std::time::Duration,
    write: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    if wt.is_zero() {
        return write.await;
    }
    tokio::time::timeout(wt, write)
        .await
        .unwrap_or_else(|_| Err(ErrorKind::TimedOut.into()))
}

/// A connection handed to hyper: the bytes the fast path already read, then the socket.
pub(crate) struct Prefixed {
    pre: Bytes,
    io: TcpStream,
}

impl Prefixed {
    pub(crate) fn new(io: TcpStream, pre: Bytes) -> Self {
        Self { pre, io }
    }
}

impl tokio::io::AsyncRead for Prefixed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            if self.pre.is_empty() {
                // Let go of the fast path's read buffer (it would stay with a tunnel otherwise).
                self.pre = Bytes::new();
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Prefixed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Chunk extension bytes allowed in one body, and trailer bytes: hyper's client limits (16 KiB
/// each), so both engines cut the same abusive bodies.
const CHUNK_EXTENSIONS_LIMIT: u64 = 16 * 1024;
const CHUNK_TRAILERS_LIMIT: u64 = 16 * 1024;

/// Where a chunked body (RFC 9112 §7.1) is, as its bytes go by: tells where the body ends
/// without decoding it, and counts extension and trailer bytes against their limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Chunked {
    state: ChunkState,
    /// Data bytes scanned (the body without its chunk framing).
    data: u64,
    extensions: u64,
    trailers: u64,
}

/// The scanner's position in a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    /// In a chunk-size line's hex digits (`digits` read so far).
    #[default]
    Size0,
    Size {
        value: u64,
        digits: u8,
    },
    /// In a chunk extension, until CR.
    Ext {
        value: u64,
    },
    /// After the chunk-size line's CR.
    SizeLf {
        value: u64,
    },
    /// Inside chunk data, this many bytes left.
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    LineStart,
    /// Inside a trailer field line, until CR.
    Line,
    LineLf,
    /// After the final empty line's CR.
    EndLf,
    Done,
}

/// A chunked body that breaks RFC 9112 §7.1.
#[derive(Debug, PartialEq, Eq)]
struct BadChunk;

impl Chunked {
    fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Advances over `bytes`; returns how many belong to the body (all of them, or fewer when
    /// the body ends inside `bytes`).
    fn scan(&mut self, bytes: &[u8]) -> Result<usize, BadChunk> {
        let mut i = 0;
        while i < bytes.len() {
            match self.state {
                // The extension's bytes after `;`, its CR not counted, refused at the limit
                // (as hyper's client counts them).
                ChunkState::Ext { .. } if bytes[i] != b'\r' => {
                    self.extensions += 1;
                    if self.extensions >= CHUNK_EXTENSIONS_LIMIT {
                        return Err(BadChunk);
                    }
                }
                ChunkState::LineStart | ChunkState::Line | ChunkState::LineLf => {
                    self.trailers += 1;
                    if self.trailers > CHUNK_TRAILERS_LIMIT {
                        return Err(BadChunk);
                    }
                }
                _ => {}
            }
            let state = &mut self.state;
            if let ChunkState::Data(left) = *state {
                let n = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len() - i);
                i += n;
                self.data += n as u64;
                *state = if left == n as u64 {
                    ChunkState::DataCr
                } else {
                    ChunkState::Data(left - n as u64)
                };
                continue;
            }
            let b = bytes[i];
            i += 1;
            *state = match (*state, b) {
                (ChunkState::Done, _) => return Ok(i - 1),
                (ChunkState::Size0, _) => match hex(b) {
                    Some(d) => ChunkState::Size {
                        value: u64::from(d),
                        digits: 1,
                    },
                    None => return Err(BadChunk),
                },
                (ChunkState::Size { value, digits }, _) => match hex(b) {
                    Some(_) if digits >= 15 => return Err(BadChunk),
                    Some(d) => ChunkState::Size {
                        value: value << 4 | u64::from(d),
                        digits: digits + 1,
                    },
                    None if b == b'\r' => ChunkState::SizeLf { value },
                    None if b == b';' || b == b' ' || b == b'\t' => ChunkState::Ext { value },
                    None => return Err(BadChunk),
                },
                (ChunkState::Ext { value }, b'\r') => ChunkState::SizeLf { value },
                (ChunkState::Ext { .. }, b'\n') => return Err(BadChunk),
                (ChunkState::Ext { value }, _) => ChunkState::Ext { value },
                (ChunkState::SizeLf { value: 0 }, b'\n') => ChunkState::LineStart,
                (ChunkState::SizeLf { value }, b'\n') => ChunkState::Data(value),
                (ChunkState::DataCr, b'\r') => ChunkState::DataLf,
                (ChunkState::DataLf, b'\n') => ChunkState::Size0,
                (ChunkState::LineStart, b'\r') => ChunkState::EndLf,
                (ChunkState::LineStart | ChunkState::Line, b'\n') => return Err(BadChunk),
                (ChunkState::Line, b'\r') => ChunkState::LineLf,
                (ChunkState::LineStart | ChunkState::Line, _) => ChunkState::Line,
                (ChunkState::LineLf, b'\n') => ChunkState::LineStart,
                (ChunkState::EndLf, b'\n') => ChunkState::Done,
                _ => return Err(BadChunk),
            };
            if *state == ChunkState::Done {
                return Ok(i);
            }
        }
        Ok(i)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(body: &[u8], step: usize) -> Result<(usize, bool), BadChunk> {
        let mut c = Chunked::default();
        let mut used = 0;
        for part in body.chunks(step) {
            let n = c.scan(part)?;
            used += n;
            if c.is_done() {
                return Ok((used, true));
            }
            assert_eq!(n, part.len());
        }
        Ok((used, c.is_done()))
    }

    #[test]
    fn chunk_extensions_and_trailers_are_bounded_like_hyper() {
        let mut body = Vec::new();
        for _ in 0..2000 {
            body.extend_from_slice(b"1;ext=1\r\nz\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        // 2,000 × 5 extension bytes: under 16 KiB.
        assert_eq!(scan_all(&body, 4096), Ok((body.len(), true)));
        let mut over = Vec::new();
        // 4,000 × 5 (the bytes after `;`, not the CR): over 16 KiB.
        for _ in 0..4000 {
            over.extend_from_slice(b"1;ext=1\r\nz\r\n");
        }
        assert_eq!(scan_all(&over, 4096), Err(BadChunk));
        let trailers = format!("0\r\nx-t: {}\r\n\r\n", "t".repeat(17 * 1024));
        assert_eq!(scan_all(trailers.as_bytes(), 4096), Err(BadChunk));
    }

    #[test]
    fn chunked_bodies_end_where_the_last_chunk_and_trailers_end() {
        let body = b"5\r\nhello\r\n1A;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\n";
        for step in [1, 2, 3, 7, body.len()] {
            let mut with_next = body.to_vec();
            with_next.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            assert_eq!(
                scan_all(&with_next, step),
                Ok((body.len(), true)),
                "step {step}"
            );
        }
        assert_eq!(scan_all(b"0\r\n\r\n", 1), Ok((5, true)));
        // Not finished yet.
        assert_eq!(scan_all(b"5\r\nhel", 64), Ok((6, false)));
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"5\nhello\r\n",
            b"0\r\n\n",
            b"10000000000000000\r\n",
            b"3;e\n",
        ] {
            assert_eq!(scan_all(bad, 64), Err(BadChunk), "{bad:?}");
        }
    }

    #[test]
    fn lengths_are_written_in_decimal() {
        for n in [0, 7, 10, 65536, u64::MAX] {
            let mut out = Vec::new();
            push_length(&mut out, n);
            assert_eq!(out, format!("content-length: {n}\r\n").into_bytes());
        }
    }
}
