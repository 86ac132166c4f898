//! Observability of the request path: metric names (one place), the access log, request ids,
//! and the recent-dispatch ring for the debug snapshot.
//!
//! Metrics go through the `metrics` facade: without an installed recorder every call is a
//! no-op, so the hot path pays almost nothing when metrics are off. Label values are bounded:
//! `dispatch` ∈ {api, streamlit, internal}, `method_kind` ∈ the standard methods, `OTHER` or
//! `WEBSOCKET`, `status_class` ∈ {1xx…5xx}, `kind` ∈ the upstream error kinds, `component` ∈
//! the readiness inputs. Raw paths never become labels.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::AccessLogSink;
use bytes::Bytes;
use fluxlit_config::RequestIdTrust;
use http::{HeaderMap, HeaderValue, Method};
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::{Body, BoxError};

/// Metric names, FluxLit's two stable series first (reference §7.1), then ours.
pub mod names {
    /// Counter `{dispatch, method_kind}`: requests dispatched (metrics and debug scrapes excluded).
    pub const REQUESTS: &str = "fluxlit_gateway_requests_total";
    /// Histogram `{dispatch}`: wall-clock seconds of a request (for WebSockets, the tunnel's life).
    pub const DURATION: &str = "fluxlit_gateway_request_duration_seconds";
    /// Counter `{dispatch, status_class}`: responses by status class.
    pub const RESPONSES: &str = "fluxlit_gateway_responses_total";
    /// Counter `{upstream, kind}`: upstream failures (`connect`, `timeout`, `reset`, `body_too_large`).
    pub const UPSTREAM_ERRORS: &str = "fluxlit_gateway_upstream_errors_total";
    /// Counter `{dispatch}`: request body bytes received from clients.
    pub const BYTES_IN: &str = "fluxlit_gateway_request_bytes_total";
    /// Counter `{dispatch}`: response body bytes sent to clients.
    pub const BYTES_OUT: &str = "fluxlit_gateway_response_bytes_total";
    /// Gauge: open client connections.
    pub const CONNECTIONS: &str = "fluxlit_gateway_active_connections";
    /// Gauge: open WebSocket (upgraded) tunnels.
    pub const TUNNELS: &str = "fluxlit_gateway_active_websocket_tunnels";
    /// Histogram: seconds a WebSocket tunnel stayed open.
    pub const TUNNEL_LIFETIME: &str = "fluxlit_gateway_websocket_tunnel_lifetime_seconds";
    /// Gauge `{component}`: 1 when the readiness input is ready, else 0.
    pub const READY: &str = "fluxlit_gateway_component_ready";
    /// Counter `{dispatch}`: requests refused by rate limiting (429).
    pub const RATE_LIMITED: &str = "fluxlit_gateway_rate_limited_total";
    /// Counter `{reason}`: requests or connections shed with 503 (`upstream_concurrency`, `connections`, `connections_per_ip`).
    pub const SHED: &str = "fluxlit_gateway_shed_total";
    /// Counter `{sidecar}`: sidecar restarts (emitted by the supervisor's owner).
    pub const SIDECAR_RESTARTS: &str = "fluxlit_sidecar_restarts_total";
    /// Gauge `{sidecar}`: 1 while the sidecar process runs, else 0.
    pub const SIDECAR_UP: &str = "fluxlit_sidecar_up";
    /// Gauge `{worker}`: open WebSocket sessions (tunnels) on a Streamlit worker
    /// (`streamlit_workers`, also one; `worker` is its id, from `1`; a rolling restart's new
    /// workers get the next ids).
    pub const WORKER_SESSIONS: &str = "fluxlit_streamlit_worker_sessions";
    /// Counter `{worker}`: clients placed anew on a Streamlit worker (the least-loaded pick,
    /// answered with the affinity cookie), with several workers.
    pub const WORKER_PLACEMENTS: &str = "fluxlit_streamlit_worker_placements_total";
    /// Counter `{worker}`: restarts of a Streamlit worker after it exited (emitted by the
    /// supervisor's owner; `worker` is its id, `1` with one worker).
    pub const WORKER_RESTARTS: &str = "fluxlit_streamlit_worker_restarts_total";
    /// Gauge `{worker}`: a Streamlit worker's resident set size in bytes (`VmRSS` of
    /// `/proc/PID/status`, Linux only; sampled by the supervisor's owner every few seconds).
    pub const WORKER_RSS: &str = "fluxlit_streamlit_worker_rss_bytes";
    /// Counter: Streamlit workers replaced because their resident set size was above
    /// `streamlit_worker_max_rss_bytes` (memory recycling; emitted by the supervisor's owner).
    pub const WORKER_RECYCLES: &str = "fluxlit_streamlit_worker_recycles_total";
    /// Counter: access-log lines dropped because the log buffer was full (the log's output,
    /// stderr or whatever it is redirected to, did not keep up) or the output failed
    /// ([`crate::LogWriter`]).
    pub const ACCESS_LOG_DROPPED: &str = "fluxlit_access_log_dropped_total";
    /// Counter: other log lines dropped for the same reasons ([`crate::LogWriter`]).
    pub const LOG_DROPPED: &str = "fluxlit_log_dropped_total";

    /// Buckets of [`DURATION`] (FluxLit's, unchanged: changing them is a semver-visible change).
    pub const DURATION_BUCKETS: &[f64] = &[
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    /// Buckets of [`TUNNEL_LIFETIME`].
    pub const TUNNEL_BUCKETS: &[f64] = &[1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0];
}

/// Registers descriptions (units, meaning) for every metric; call once after installing a recorder.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(names::REQUESTS, "Requests dispatched by the gateway");
    describe_histogram!(
        names::DURATION,
        Unit::Seconds,
        "Request wall-clock duration (WebSocket: tunnel lifetime)"
    );
    describe_counter!(names::RESPONSES, "Responses by status class");
    describe_counter!(names::UPSTREAM_ERRORS, "Upstream failures by kind");
    describe_counter!(names::BYTES_IN, Unit::Bytes, "Request body bytes received");
    describe_counter!(names::BYTES_OUT, Unit::Bytes, "Response body bytes sent");
    describe_gauge!(names::CONNECTIONS, "Open client connections");
    describe_gauge!(names::TUNNELS, "Open WebSocket tunnels");
    describe_histogram!(
        names::TUNNEL_LIFETIME,
        Unit::Seconds,
        "WebSocket tunnel lifetime"
    );
    describe_gauge!(names::READY, "Readiness per component (1 ready, 0 not)");
    describe_counter!(names::RATE_LIMITED, "Requests refused by rate limiting");
    describe_counter!(names::SHED, "Requests or connections shed with 503");
    describe_counter!(names::SIDECAR_RESTARTS, "Sidecar restarts");
    describe_gauge!(names::SIDECAR_UP, "Sidecar process running (1) or not (0)");
    describe_gauge!(
        names::WORKER_SESSIONS,
        "Open WebSocket sessions per Streamlit worker"
    );
    describe_counter!(
        names::WORKER_PLACEMENTS,
        "Clients placed anew per Streamlit worker (least-loaded pick)"
    );
    describe_counter!(
        names::WORKER_RESTARTS,
        "Restarts per Streamlit worker after it exited"
    );
    describe_counter!(
        names::WORKER_RECYCLES,
        "Streamlit workers replaced for being above streamlit_worker_max_rss_bytes"
    );
    describe_gauge!(
        names::WORKER_RSS,
        Unit::Bytes,
        "Resident set size per Streamlit worker (Linux)"
    );
    describe_counter!(
        names::ACCESS_LOG_DROPPED,
        "Access-log lines dropped: the log buffer was full or the log output failed"
    );
    describe_counter!(
        names::LOG_DROPPED,
        "Other log lines dropped: the log buffer was full or the log output failed"
    );
}

/// The `dispatch` of a request to the API (label value, access-log field).
pub(crate) const DISPATCH_API: &str = "api";
/// The `dispatch` of a request to the UI upstream (Streamlit).
pub(crate) const DISPATCH_UI: &str = "streamlit";
/// The `dispatch` of a request the gateway answers itself (health, readiness, own endpoints).
pub(crate) const DISPATCH_INTERNAL: &str = "internal";
/// The `dispatch` label values.
const DISPATCHES: [&str; 3] = [DISPATCH_API, DISPATCH_UI, DISPATCH_INTERNAL];
/// The `method_kind` label values.
const METHOD_KINDS: [&str; 9] = [
    "GET",
    "POST",
    "PUT",
    "PATCH",
    "DELETE",
    "HEAD",
    "OPTIONS",
    "OTHER",
    "WEBSOCKET",
];
/// The `status_class` label values.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn dispatch_index(dispatch: &str) -> usize {
    DISPATCHES
        .iter()
        .position(|d| *d == dispatch)
        .unwrap_or(DISPATCHES.len() - 1)
}

fn method_kind_index(m: &Method, websocket: bool) -> usize {
    if websocket {
        return 8;
    }
    match *m {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::PATCH => 3,
        Method::DELETE => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

fn status_class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// A bounded `method_kind` label.
#[cfg(test)]
pub(crate) fn method_kind(m: &Method, websocket: bool) -> &'static str {
    METHOD_KINDS[method_kind_index(m, websocket)]
}

#[cfg(test)]
pub(crate) fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[status_class_index(status)]
}

/// Query keys whose values never reach a log line.
const SENSITIVE_QUERY_KEYS: &[&str] = &[
    "fluxlit_sid",
    "auth_code",
    "code",
    "state",
    "token",
    "access_token",
    "id_token",
    "refresh_token",
    "password",
    "secret",
    "key",
    "api_key",
    "apikey",
    "session",
];

/// The query string with sensitive values replaced by `<redacted>` (keys compared
/// case-insensitively, empty values kept, everything else byte for byte).
pub fn redact_query(query: &str) -> String {
    RedactedQuery(Some(query)).to_string()
}

/// Displays a query string (none: nothing) as [`redact_query`] returns it, without allocating:
/// what the access log writes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RedactedQuery<'a>(pub(crate) Option<&'a str>);

impl std::fmt::Display for RedactedQuery<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(query) = self.0 else {
            return Ok(());
        };
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                f.write_str("&")?;
            }
            match pair.split_once('=') {
                Some((k, v))
                    if !v.is_empty()
                        && SENSITIVE_QUERY_KEYS
                            .iter()
                            .any(|s| s.eq_ignore_ascii_case(k)) =>
                {
                    f.write_str(k)?;
                    f.write_str("=<redacted>")?;
                }
                _ => f.write_str(pair)?,
            }
        }
        Ok(())
    }
}

/// The request id header (`X-Request-ID`, from the header catalogue).
pub const REQUEST_ID: http::HeaderName = http::HeaderName::from_static(fluxlit_headers::REQUEST_ID);

/// Whether `value` may be kept as a request id: 1–128 visible ASCII characters (`!`..`~`, RFC
/// 5234 VCHAR), so no spaces, controls (no CR/LF to forge log lines) or non-ASCII bytes.
pub fn is_well_formed_request_id(value: &[u8]) -> bool {
    !value.is_empty() && value.len() <= 128 && value.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Whether a client's `X-Request-ID` may be kept under `trust` (`request_id_trust`) from a peer
/// that is (`peer_trusted`) or is not a trusted proxy.
pub fn keeps_client_request_id(trust: RequestIdTrust, peer_trusted: bool) -> bool {
    match trust {
        RequestIdTrust::Any => true,
        RequestIdTrust::TrustedProxies => peer_trusted,
    }
}

/// The request's id, by the one rule both engines apply: the inbound `X-Request-ID` (`last`:
/// of several, the last one, the nearest hop's, as for the other forwarded fields) when `keep`
/// ([`keeps_client_request_id`]) and it is well formed ([`is_well_formed_request_id`]), else a
/// new UUIDv7 (time-sortable).
pub fn request_id_from(last: Option<&[u8]>, keep: bool) -> HeaderValue {
    if keep
        && let Some(v) = last
        && is_well_formed_request_id(v)
        && let Ok(v) = HeaderValue::from_bytes(v)
    {
        return v;
    }
    let id = uuid::Uuid::now_v7();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf))
        .unwrap_or(HeaderValue::from_static("unknown"))
}

/// [`request_id_from`] for a parsed header map (the hyper engine).
pub fn request_id(headers: &HeaderMap, keep: bool) -> HeaderValue {
    request_id_from(
        headers
            .get_all(&REQUEST_ID)
            .iter()
            .next_back()
            .map(HeaderValue::as_bytes),
        keep,
    )
}

/// One recent dispatch, for the debug snapshot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Dispatch {
    /// The request id.
    pub request_id: String,
    /// `api`, `streamlit` or `internal`.
    pub dispatch: &'static str,
    /// The raw incoming path.
    pub path: String,
    /// The Streamlit worker the request was placed on (its id, from 1), with several workers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<usize>,
}

/// The last 32 dispatches.
#[derive(Debug, Default)]
pub(crate) struct Recent(Mutex<VecDeque<Dispatch>>);

impl Recent {
    pub(crate) fn push(&self, d: Dispatch) {
        if let Ok(mut q) = self.0.lock() {
            if q.len() == 32 {
                q.pop_front();
            }
            q.push_back(d);
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<Dispatch> {
        self.0
            .lock()
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// One finished request, as either engine reports it: the access-log line and the request
/// metrics are written from this, by [`Record::report`] alone, so both engines write the same
/// fields in the same format. Everything is borrowed: reporting copies nothing but the line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record<'a> {
    /// From the parsed request head to the end of the response body.
    pub(crate) elapsed: Duration,
    pub(crate) request_id: &'a HeaderValue,
    /// `api`, `streamlit` or `internal`.
    pub(crate) dispatch: &'static str,
    pub(crate) method: &'a Method,
    /// Upgraded to a WebSocket (a 101 to an upgrade request).
    pub(crate) websocket: bool,
    /// The path as received.
    pub(crate) path: &'a str,
    /// The query as received (redacted when written).
    pub(crate) query: Option<&'a str>,
    pub(crate) client_ip: std::net::IpAddr,
    /// The upstream's name, when the request was forwarded.
    pub(crate) upstream: Option<&'a str>,
    /// The UI worker's id (from 1), when there are several and the request was placed on one;
    /// the access log's `worker` field (absent otherwise).
    pub(crate) worker: Option<usize>,
    pub(crate) status: u16,
    /// Request body bytes read from the client.
    pub(crate) bytes_in: u64,
    /// Response body bytes sent to the client (not the head; a chunked body's data only).
    pub(crate) bytes_out: u64,
}

/// Where a request's access-log line goes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LogRef<'a> {
    /// A `tracing` event (target `fluxlit::access`).
    Tracing,
    /// Straight into the gateway's [`AccessLogSink`].
    Sink(&'a AccessLogSink),
}

/// [`LogRef`], owned (the hyper engine's [`Exchange`] outlives the request's borrow).
#[derive(Debug, Clone)]
pub(crate) enum LogTo {
    Tracing,
    Sink(AccessLogSink),
}

impl LogTo {
    fn as_ref(&self) -> LogRef<'_> {
        match self {
            LogTo::Tracing => LogRef::Tracing,
            LogTo::Sink(s) => LogRef::Sink(s),
        }
    }
}

/// The gateway's access-log destination: its sink when it has one, `tracing` otherwise.
pub(crate) fn log_to(sink: Option<&AccessLogSink>) -> LogRef<'_> {
    sink.map_or(LogRef::Tracing, LogRef::Sink)
}

impl Record<'_> {
    /// Writes the access-log line (when `log` says where) and records the request metrics
    /// (when `metrics`, through the gateway's handles).
    pub(crate) fn report(&self, log: Option<LogRef<'_>>, metrics: Option<&RequestMetrics>) {
        if let Some(m) = metrics {
            m.record(self);
        }
        if let Some(LogRef::Sink(sink)) = log {
            sink.write(self);
        } else if log.is_some() {
            let (bytes_in, bytes_out) = (self.bytes_in, self.bytes_out);
            tracing::info!(
                target: "fluxlit::access",
                request_id = self.request_id.to_str().unwrap_or(""),
                fluxlit_dispatch = self.dispatch,
                http_method_or_type = if self.websocket { "websocket" } else { self.method.as_str() },
                path = %self.path,
                query = %RedactedQuery(self.query),
                status = self.status,
                bytes_in,
                bytes_out,
                duration_ms = self.elapsed.as_secs_f64() * 1000.0,
                client_ip = %self.client_ip,
                upstream = self.upstream.unwrap_or("-"),
                worker = self.worker,
                "{} {} {}",
                if self.websocket { "WEBSOCKET" } else { self.method.as_str() },
                self.path,
                self.status
            );
        }
    }
}

/// The request metrics' handles of one gateway, each registered with the recorder on its
/// first use (so only series that happened are exported, as with the macros) and reused
/// after, so recording a request builds no metric key and allocates nothing.
#[derive(Debug, Default)]
pub(crate) struct RequestMetrics {
    requests: [[OnceLock<metrics::Counter>; METHOD_KINDS.len()]; DISPATCHES.len()],
    duration: [OnceLock<metrics::Histogram>; DISPATCHES.len()],
    responses: [[OnceLock<metrics::Counter>; STATUS_CLASSES.len()]; DISPATCHES.len()],
    bytes_in: [OnceLock<metrics::Counter>; DISPATCHES.len()],
    bytes_out: [OnceLock<metrics::Counter>; DISPATCHES.len()],
}

impl RequestMetrics {
    fn record(&self, r: &Record<'_>) {
        let d = dispatch_index(r.dispatch);
        let dispatch = DISPATCHES[d];
        let m = method_kind_index(r.method, r.websocket);
        self.requests[d][m]
            .get_or_init(|| {
                metrics::counter!(names::REQUESTS, "dispatch" => dispatch, "method_kind" => METHOD_KINDS[m])
            })
            .increment(1);
        if !r.websocket {
            self.duration[d]
                .get_or_init(|| metrics::histogram!(names::DURATION, "dispatch" => dispatch))
                .record(r.elapsed.as_secs_f64());
        }
        let s = status_class_index(r.status);
        self.responses[d][s]
            .get_or_init(|| {
                metrics::counter!(names::RESPONSES, "dispatch" => dispatch, "status_class" => STATUS_CLASSES[s])
            })
            .increment(1);
        self.bytes_in[d]
            .get_or_init(|| metrics::counter!(names::BYTES_IN, "dispatch" => dispatch))
            .increment(r.bytes_in);
        self.bytes_out[d]
            .get_or_init(|| metrics::counter!(names::BYTES_OUT, "dispatch" => dispatch))
            .increment(r.bytes_out);
    }
}

/// What the access-log line and the metrics of one request need, filled in as it goes (the
/// hyper engine, whose response body reports it when done).
#[derive(Debug)]
pub(crate) struct Exchange {
    pub(crate) start: Instant,
    pub(crate) request_id: HeaderValue,
    pub(crate) dispatch: &'static str,
    pub(crate) method: Method,
    pub(crate) websocket: bool,
    /// The request target as received (path and query are read from it).
    pub(crate) target: http::Uri,
    pub(crate) client_ip: std::net::IpAddr,
    pub(crate) upstream: Option<Arc<str>>,
    /// The UI worker's id (from 1), with several workers ([`Record::worker`]).
    pub(crate) worker: Option<usize>,
    pub(crate) status: u16,
    pub(crate) bytes_in: Arc<AtomicU64>,
    /// Where the access-log line goes; `None`: no line.
    pub(crate) log: Option<LogTo>,
    /// The gateway's metric handles, when it records metrics.
    pub(crate) metrics: Option<Arc<RequestMetrics>>,
}

impl Exchange {
    /// Emits the access-log line and the completion metrics ([`Record::report`]).
    pub(crate) fn finish(&self, bytes_out: u64) {
        Record {
            elapsed: self.start.elapsed(),
            request_id: &self.request_id,
            dispatch: self.dispatch,
            method: &self.method,
            websocket: self.websocket,
            path: self.target.path(),
            query: self.target.query(),
            client_ip: self.client_ip,
            upstream: self.upstream.as_deref(),
            worker: self.worker,
            status: self.status,
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out,
        }
        .report(
            self.log.as_ref().map(LogTo::as_ref),
            self.metrics.as_deref(),
        );
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts the bytes it yields and reports the exchange when it is
    /// dropped (completed, or abandoned by a disconnecting client).
    pub(crate) struct Observed {
        #[pin]
        inner: Body,
        bytes: u64,
        exchange: Option<Exchange>,
        // Held until the body is done: the upstream-concurrency slot, if any.
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    }

    impl PinnedDrop for Observed {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(x) = this.exchange.take() {
                x.finish(*this.bytes);
            }
        }
    }
}

impl Observed {
    /// `exchange`: what to report when the body is done (`None`: nothing to report, only the
    /// slot to hold).
    pub(crate) fn new(
        inner: Body,
        exchange: Option<Exchange>,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Self {
        Self {
            inner,
            bytes: 0,
            exchange,
            slot,
        }
    }
}

impl HttpBody for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r
            && let Some(d) = f.data_ref()
        {
            *this.bytes += d.len() as u64;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A request body that counts the bytes it yields into a shared counter (when there is one:
    /// nothing is counted while access log and metrics are off).
    pub(crate) struct Counted<B> {
        #[pin]
        inner: B,
        count: Option<Arc<AtomicU64>>,
    }
}

impl<B> Counted<B> {
    pub(crate) fn new(inner: B, count: Option<Arc<AtomicU64>>) -> Self {
        Self { inner, count }
    }
}

impl<B: HttpBody<Data = Bytes>> HttpBody for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r
            && let Some(d) = f.data_ref()
            && let Some(count) = this.count
        {
            count.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_redacted() {
        assert_eq!(
            redact_query("fluxlit_sid=abc&x=a+b&AUTH_CODE=zz&empty=&code=1"),
            "fluxlit_sid=<redacted>&x=a+b&AUTH_CODE=<redacted>&empty=&code=<redacted>"
        );
        assert_eq!(redact_query("plain"), "plain");
    }

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h, true), "abc-123");
        let minted = request_id(&h, false);
        assert_ne!(minted, "abc-123", "not kept: minted");
        assert_eq!(minted.len(), 36);
        h.insert(REQUEST_ID, HeaderValue::from_str(&"x".repeat(129)).unwrap());
        assert_eq!(request_id(&h, true).len(), 36, "too long: minted");
        h.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        assert_eq!(request_id(&h, true).len(), 36, "not visible ASCII: minted");
        h.insert(REQUEST_ID, HeaderValue::from_str(&"x".repeat(128)).unwrap());
        assert_eq!(request_id(&h, true).len(), 128, "128 characters: kept");
        for bad in [&b"a\x01b"[..], b"a\rb", b"caf\xc3\xa9", b"", b"a\tb"] {
            assert!(!is_well_formed_request_id(bad), "{bad:?}");
            assert_eq!(request_id_from(Some(bad), true).len(), 36, "{bad:?}");
        }
        h.append(REQUEST_ID, HeaderValue::from_static("nearest"));
        assert_eq!(request_id(&h, true), "nearest", "of several, the last");
        assert!(keeps_client_request_id(RequestIdTrust::Any, false));
        assert!(keeps_client_request_id(RequestIdTrust::Any, true));
        assert!(!keeps_client_request_id(
            RequestIdTrust::TrustedProxies,
            false
        ));
        assert!(keeps_client_request_id(
            RequestIdTrust::TrustedProxies,
            true
        ));
        let a = request_id(&HeaderMap::new(), false);
        let b = request_id(&HeaderMap::new(), false);
        assert!(
            a.as_bytes() < b.as_bytes() || a.as_bytes()[..13] == b.as_bytes()[..13],
            "v7 ids sort by time"
        );
    }

    #[test]
    fn labels_are_bounded() {
        assert_eq!(
            method_kind(&Method::from_bytes(b"PROPFIND").unwrap(), false),
            "OTHER"
        );
        assert_eq!(method_kind(&Method::GET, true), "WEBSOCKET");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(101), "1xx");
    }
}
