//! The reverse proxy: one pooled HTTP/1.1 client for every upstream, bodies streamed both
//! ways, WebSocket upgrades spliced byte for byte once the upstream's 101 completes the handshake
//! (no other protocol is ever tunnelled).

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{
    CONNECTION, CONTENT_LENGTH, HOST, HeaderValue, ORIGIN, TRANSFER_ENCODING, UPGRADE,
};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Body;
use crate::affinity::{Affinity, Driver, Parking};
use crate::forwarded::ClientView;
use crate::headers::upgrade_request;
use crate::limits::{ConnPermit, Limits};
use crate::observe::{REQUEST_ID, names};
use crate::response::plain_rid;
use crate::upstream::Upstream;

/// Idle pooled connections are closed after this long: below the keep-alive timeout of common
/// upstream servers (uvicorn's default is 5 s) so the gateway never reuses a connection the
/// upstream is closing.
const POOL_IDLE_TIMEOUT: Duration = crate::affinity::IDLE_TIMEOUT;

/// Parked idle upstream connections (all upstreams together) when `gateway_httpx_max_connections`
/// does not say otherwise.
const MAX_PARKED: usize = 256;

pub(crate) struct Proxy {
    client: Client<HttpConnector, Body>,
    /// Idle upstream connections of ended client connections, both engines' (see
    /// [`crate::affinity::Parking`]).
    pub(crate) parking: Parking,
    connect_timeout: Duration,
    pub(crate) read_timeout: Duration,
    limits: Limits,
    upstream_slots: Option<Arc<Semaphore>>,
    pub(crate) tunnels: TaskTracker,
    /// Cancelled when [`crate::Gateway::drain_tunnels`] starts: from then on a tunnel whose
    /// upstream has closed (and whose every byte has reached the client) ends at once.
    pub(crate) closing_tunnels: CancellationToken,
    pub(crate) cut_tunnels: CancellationToken,
    /// Open WebSocket tunnels per client IP.
    ws_per_client: crate::limits::TunnelsPerClient,
}

/// The upstream hop of one forwarded exchange: what it needs to know about its request (a
/// hop is one connection segment of a request's way: the client hop, `ClientHop`, then this).
pub(crate) struct UpstreamHop<'a> {
    pub(crate) view: &'a ClientView,
    pub(crate) request_id: &'a HeaderValue,
    /// `X-Forwarded-Prefix` for this hop.
    pub(crate) prefix: Option<&'a str>,
    /// Request body cap in bytes (0: none) and the setting that sets it.
    pub(crate) body_cap: (u64, &'static str),
    /// Held by a tunnel for its life, so tunnels count against the connection limits.
    pub(crate) conn: Option<Arc<ConnPermit>>,
    /// The header policy (identity names, the UI allow-list).
    pub(crate) policy: &'a fluxlit_auth::HeaderPolicy,
    /// The UI hop: only the policy's allowed client fields go on.
    pub(crate) ui: bool,
    /// The client connection's own upstream connections, when it is served by
    /// [`crate::Gateway::serve`] (not for [`crate::Gateway::handle`]).
    pub(crate) affinity: Option<&'a Affinity>,
    /// Identity fields the gateway vouches for (`auth_mode = forward`: the front proxy's),
    /// set after the client's fields were filtered.
    pub(crate) identity: &'a [(http::HeaderName, HeaderValue)],
    /// The login session of the request (`auth_mode = oidc`): a WebSocket tunnel ends with it.
    pub(crate) session: Option<crate::sessions::SessionGuard>,
    /// The UI worker the request was placed on, when there are several (`pool.rs`): a
    /// WebSocket to it is counted as its session and its session id learned.
    pub(crate) worker: Option<WorkerHop<'a>>,
}

/// The pool, the worker id a UI request was placed on, and [`crate::pool::Placed::replay`].
pub(crate) type WorkerHop<'a> = (&'a Arc<crate::pool::UiPool>, usize, Option<Arc<[u8]>>);

/// Why an upstream exchange failed before response headers.
enum SendError {
    /// The TCP connection could not be opened (refused, unreachable, timed out).
    Connect(String),
    /// The exchange on a connection of the client connection's own failed.
    Hyper(hyper::Error),
    /// The pooled client failed (connecting or exchanging).
    Pool(hyper_util::client::legacy::Error),
}

impl SendError {
    fn is_connect(&self) -> bool {
        match self {
            Self::Connect(_) => true,
            Self::Hyper(_) => false,
            Self::Pool(e) => e.is_connect(),
        }
    }

    fn error(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Connect(_) => None,
            Self::Hyper(e) => Some(e),
            Self::Pool(e) => Some(e),
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::Connect(s) => s.clone(),
            Self::Hyper(e) => chain(e),
            Self::Pool(e) => chain(e),
        }
    }
}

/// The result of a forward: the response and, when the upstream concurrency cap is on, the
/// slot to hold until the response body is done.
pub(crate) struct Forwarded {
    pub(crate) response: Response<Body>,
    pub(crate) slot: Option<OwnedSemaphorePermit>,
}

impl From<Response<Body>> for Forwarded {
    fn from(response: Response<Body>) -> Self {
        Self {
            response,
            slot: None,
        }
    }
}

/// Why an upstream exchange failed before its response reached the client: one type for both
/// engines, with its cause as the error source, answered by one mapping
/// ([`UpstreamError::response`]): 502 (connect, exchange, invalid head, unsolicited 101,
/// handshake), 504 (no response head in time), 413 (request body over the cap while streaming).
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// The TCP connection could not be opened (refused, unreachable, connect timeout).
    #[error("could not connect")]
    Connect(#[source] crate::BoxError),
    /// No response head within `after` (the setting that sets it).
    #[error("no response head within {} s ({setting})", after.as_secs_f64())]
    Timeout {
        /// The timeout.
        after: Duration,
        /// The setting that sets it.
        setting: &'static str,
    },
    /// The exchange failed (reset, closed, I/O error) or the response head was invalid or too
    /// large; `closed` when the upstream closed a kept connection before sending any of a
    /// response (an idempotent request may then be sent again on a new connection).
    #[error("the exchange failed")]
    Exchange {
        /// What failed.
        #[source]
        source: crate::BoxError,
        /// Closed before any of a response.
        closed: bool,
    },
    /// The upstream answered 101 to a request that asked for no upgrade.
    #[error("switched protocols without being asked")]
    Unsolicited101,
    /// The upstream's 101 does not complete the WebSocket handshake (`Sec-WebSocket-Accept`).
    #[error("switched protocols without completing the WebSocket handshake")]
    Handshake,
    /// The streamed request body went over `cap` bytes (`setting`); the upstream request was
    /// aborted.
    #[error("request body over {cap} bytes ({setting})")]
    BodyTooLarge {
        /// The cap, bytes.
        cap: u64,
        /// The setting that sets it.
        setting: &'static str,
    },
}

impl UpstreamError {
    /// An [`UpstreamError::Exchange`] from a description.
    pub(crate) fn exchange(detail: impl Into<String>, closed: bool) -> Self {
        Self::Exchange {
            source: detail.into().into(),
            closed,
        }
    }

    /// The answer to the client for this failure of the `name` upstream at `authority`,
    /// logged and counted (`fluxlit_upstream_errors_total{kind}`).
    pub(crate) fn response(
        &self,
        name: &str,
        authority: &Authority,
        rid: &HeaderValue,
    ) -> Response<Body> {
        match self {
            Self::Connect(e) => failed(name, authority, true, &chain(e.as_ref()), rid),
            Self::Exchange { source, .. } => {
                failed(name, authority, false, &chain(source.as_ref()), rid)
            }
            Self::Timeout { after, setting } => timed_out(name, authority, *after, setting, rid),
            Self::Unsolicited101 => plain_rid(
                StatusCode::BAD_GATEWAY,
                format!("FluxLit: the {name} upstream switched protocols without being asked\n"),
                rid,
            ),
            Self::Handshake => bad_handshake(name, rid),
            Self::BodyTooLarge { cap, setting } => {
                tracing::warn!(
                    request_id = rid.to_str().unwrap_or(""),
                    upstream = name,
                    limit = cap,
                    setting,
                    "request body over the limit (streamed); upstream request aborted"
                );
                metrics::counter!(names::UPSTREAM_ERRORS, "upstream" => name.to_owned(), "kind" => "body_too_large").increment(1);
                too_large(*cap, setting, rid)
            }
        }
    }
}

impl SendError {
    /// The shared error type for this failure (`cap`: the body cap and its setting).
    fn into_upstream(self, cap: (u64, &'static str)) -> UpstreamError {
        if self
            .error()
            .is_some_and(caused_by::<crate::cap::BodyTooLarge>)
        {
            return UpstreamError::BodyTooLarge {
                cap: cap.0,
                setting: cap.1,
            };
        }
        match self {
            Self::Connect(detail) => UpstreamError::Connect(detail.into()),
            Self::Pool(e) if e.is_connect() => UpstreamError::Connect(Box::new(e)),
            Self::Pool(e) => UpstreamError::Exchange {
                source: Box::new(e),
                closed: false,
            },
            Self::Hyper(e) => UpstreamError::Exchange {
                source: Box::new(e),
                closed: false,
            },
        }
    }
}

/// Renders an error and its sources as `a: b: c`.
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let t = src.to_string();
        if !s.ends_with(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = src.source();
    }
    s
}

fn caused_by<T: StdError + 'static>(e: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<T>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A pooled connection closed under an already-sent request (hyper's "incomplete message" or a
/// canceled dispatch).
fn closed_under_us(e: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled())
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The 413 response; `Connection: close`, because the rest of the client's body is drained and
/// thrown away rather than read as the next request.
pub(crate) fn too_large(cap: u64, setting: &str, rid: &HeaderValue) -> Response<Body> {
    let mut r = plain_rid(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "FluxLit: the request body is larger than {cap} bytes, the gateway's limit for this route ({setting}); the upstream was not asked\n"
        ),
        rid,
    );
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The 502 for an upstream whose 101 does not complete the WebSocket handshake the gateway
/// forwarded (wrong or missing `Sec-WebSocket-Accept`, or another `Upgrade`): never tunnelled.
fn bad_handshake(name: &str, rid: &HeaderValue) -> Response<Body> {
    metrics::counter!(names::UPSTREAM_ERRORS, "upstream" => name.to_owned(), "kind" => "handshake")
        .increment(1);
    tracing::warn!(
        request_id = rid.to_str().unwrap_or(""),
        upstream = name,
        "upstream 101 without a valid Sec-WebSocket-Accept; not tunnelled"
    );
    plain_rid(
        StatusCode::BAD_GATEWAY,
        format!(
            "FluxLit: the {name} upstream switched protocols without completing the WebSocket handshake (Sec-WebSocket-Accept)\n"
        ),
        rid,
    )
}

/// The 504 for an upstream that sent no response headers within `timeout` (set by `setting`);
/// logged and counted.
fn timed_out(
    name: &str,
    authority: &Authority,
    timeout: Duration,
    setting: &str,
    rid: &HeaderValue,
) -> Response<Body> {
    metrics::counter!(names::UPSTREAM_ERRORS, "upstream" => name.to_owned(), "kind" => "timeout")
        .increment(1);
    tracing::warn!(request_id = rid.to_str().unwrap_or(""), upstream = name, authority = %authority, timeout_s = timeout.as_secs_f64(), setting, "upstream sent no response headers in time");
    plain_rid(
        StatusCode::GATEWAY_TIMEOUT,
        format!(
            "FluxLit: the {name} upstream at {authority} sent no response within {} s ({setting})\n",
            timeout.as_secs_f64()
        ),
        rid,
    )
}

/// The 502 for an upstream that could not be reached (`connect`) or failed before its response
/// headers; `detail` (the error chain) is logged with the request id, not sent; counted.
fn failed(
    name: &str,
    authority: &Authority,
    connect: bool,
    detail: &str,
    rid: &HeaderValue,
) -> Response<Body> {
    let kind = if connect { "connect" } else { "reset" };
    metrics::counter!(names::UPSTREAM_ERRORS, "upstream" => name.to_owned(), "kind" => kind)
        .increment(1);
    tracing::warn!(request_id = rid.to_str().unwrap_or(""), upstream = name, authority = %authority, error = %detail, kind, "upstream request failed");
    let what = if connect {
        "could not be reached"
    } else {
        "failed before sending a response"
    };
    // The cause stays in the log (with the request id): the client gets no parser or socket
    // detail, which would also differ between the engines.
    plain_rid(
        StatusCode::BAD_GATEWAY,
        format!("FluxLit: the {name} upstream at {authority} {what}\n"),
        rid,
    )
}

impl Proxy {
    pub(crate) fn new(
        connect_timeout: Duration,
        read_timeout: Duration,
        limits: Limits,
        pool_max_idle: usize,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.enforce_http(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        if pool_max_idle > 0 {
            builder.pool_max_idle_per_host(pool_max_idle);
        }
        builder.http1_max_buf_size(crate::framing::RESPONSE_HEAD_BUFFER);
        let client = builder.build(connector);
        let ws_per_client = crate::limits::TunnelsPerClient::new(limits.ws_max_per_client_ip);
        Self {
            client,
            parking: Parking::new(if pool_max_idle > 0 {
                pool_max_idle
            } else {
                MAX_PARKED
            }),
            connect_timeout,
            read_timeout,
            upstream_slots: (limits.max_upstream_concurrency > 0)
                .then(|| Arc::new(Semaphore::new(limits.max_upstream_concurrency))),
            limits,
            tunnels: TaskTracker::new(),
            closing_tunnels: CancellationToken::new(),
            cut_tunnels: CancellationToken::new(),
            ws_per_client,
        }
    }

    /// Hands the idle upstream connections of an ended client connection to the next ones.
    pub(crate) fn park(&self, aff: Affinity) {
        self.parking.park(aff);
    }

    /// Closes parked upstream connections that are too old to be adopted.
    pub(crate) fn expire_parked(&self) -> usize {
        self.parking.expire()
    }

    /// Opens a new upstream connection to `authority` (TCP_NODELAY, the connect timeout) and
    /// hyper's HTTP/1.1 client on it; the driver is polled by whoever adopts it.
    async fn connect(
        &self,
        authority: &Authority,
    ) -> Result<(SendRequest<Body>, Driver), SendError> {
        let stream = self
            .tcp_connect(authority)
            .await
            .map_err(SendError::Connect)?;
        let (send, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(crate::framing::RESPONSE_HEAD_BUFFER)
            .handshake::<_, Body>(TokioIo::new(stream))
            .await
            .map_err(SendError::Hyper)?;
        let driver: Driver = Box::pin(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %chain(&e), "upstream connection ended with an error");
            }
        });
        Ok((send, driver))
    }

    /// Opens a TCP connection to `authority` (port 80 when it names none) within the connect
    /// timeout, with `TCP_NODELAY`. `Err` is the reason, for the 502.
    pub(crate) async fn tcp_connect(&self, authority: &Authority) -> Result<TcpStream, String> {
        let target = if authority.port().is_some() {
            authority.as_str().to_owned()
        } else {
            format!("{}:80", authority.as_str())
        };
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&target)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(format!("tcp connect error: {e}")),
                Err(_) => {
                    return Err(format!(
                        "tcp connect timed out after {} s (gateway_upstream_connect_timeout_s)",
                        self.connect_timeout.as_secs_f64()
                    ));
                }
            };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Sends `req` on a new connection that then belongs to `aff`.
    async fn send_fresh(
        &self,
        aff: &Affinity,
        authority: &Authority,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        let (send, driver) = self.connect(authority).await?;
        let mut kept = aff.adopt(authority.clone(), send, driver);
        let resp = kept
            .send
            .send_request(req)
            .await
            .map_err(SendError::Hyper)?;
        kept.used = Instant::now();
        aff.put(kept, None);
        Ok(resp)
    }

    /// Sends `req` on the client connection's kept connection to `authority`, adopting a parked
    /// one or opening one when it has none. Also says whether the connection was reused (only
    /// then can a failure be the upstream closing an idle connection under the request).
    async fn send_affine(
        &self,
        aff: &Affinity,
        authority: &Authority,
        req: Request<Body>,
    ) -> (Result<Response<Incoming>, SendError>, bool) {
        let kept = match aff.take(authority) {
            Some(k) => Some(k),
            None => self.parking.adopt(aff, authority).await,
        };
        let mut req = req;
        if let Some(mut kept) = kept {
            match kept.send.try_send_request(req).await {
                Ok(resp) => {
                    kept.used = Instant::now();
                    aff.put(kept, None);
                    return (Ok(resp), true);
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the connection was closing. A new one gets it.
                    Some(r) => req = r,
                    None => return (Err(SendError::Hyper(e.into_error())), true),
                },
            }
        }
        (self.send_fresh(aff, authority, req).await, false)
    }

    /// Forwards `req` to `upstream` at `path` (plus the request's query). Never fails:
    /// problems become 413/502/503/504 responses naming the upstream and the request id.
    pub(crate) async fn forward<B>(
        &self,
        upstream: &Upstream,
        mut req: Request<B>,
        path: &str,
        mut hop: UpstreamHop<'_>,
    ) -> Forwarded
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<crate::BoxError>,
    {
        let name = upstream.name();
        let rid = hop.request_id;
        let Some(ep) = upstream.endpoint.borrow().clone() else {
            let mut r = plain_rid(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "FluxLit: the {name} upstream is not running (starting, restarting or stopped); retry shortly\n"
                ),
                rid,
            );
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r.into();
        };

        let upgrade = if req.version() == Version::HTTP_11 {
            upgrade_request(req.headers())
        } else {
            None
        };
        if upgrade.is_some() && !self.limits.ws_allowed_origins.is_empty() {
            let origin = req
                .headers()
                .get(ORIGIN)
                .and_then(|o| o.to_str().ok())
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase());
            if !origin.is_some_and(|o| self.limits.ws_allowed_origins.contains(&o)) {
                tracing::warn!(request_id = rid.to_str().unwrap_or(""), origin = ?req.headers().get(ORIGIN), "WebSocket origin not allowed");
                return plain_rid(StatusCode::FORBIDDEN, "FluxLit: this origin may not open WebSockets here (gateway_ws_allowed_origins)\n", rid).into();
            }
        }

        // Body cap: refuse up front when Content-Length says so; otherwise count as it streams.
        let (cap, setting) = hop.body_cap;
        let declared: Option<u64> = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| crate::framing::content_length(v.as_bytes()));
        if cap > 0 && declared.is_some_and(|n| n > cap) {
            tracing::warn!(
                request_id = rid.to_str().unwrap_or(""),
                upstream = name,
                limit = cap,
                declared,
                setting,
                "request body over the limit (Content-Length)"
            );
            metrics::counter!(names::UPSTREAM_ERRORS, "upstream" => name.to_owned(), "kind" => "body_too_large").increment(1);
            crate::cap::drain(req.into_body());
            return too_large(cap, setting, rid).into();
        }

        let slot = match self.upstream_slot(rid) {
            Ok(slot) => slot,
            Err(r) => return (*r).into(),
        };

        // A WebSocket holds a slot of its client IP from here to the tunnel's end.
        let mut tunnel_slot = match &upgrade {
            Some(_) => match self.tunnel_slot(hop.view.client_ip, rid) {
                Ok(slot) => Some(slot),
                Err(refused) => return (*refused).into(),
            },
            None => None,
        };
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let pq = crate::decide::target_parts(&ep.base_path, path, parts.uri.query()).concat();
        // HTTP/1.x clients' plain requests go on the client connection's own upstream
        // connection (origin-form target); the rest through the pool (absolute form).
        let affinity = hop
            .affinity
            .filter(|_| upgrade.is_none() && parts.version <= Version::HTTP_11);
        let uri = if affinity.is_some() {
            Uri::try_from(pq).map_err(http::Error::from)
        } else {
            Uri::builder()
                .scheme("http")
                .authority(ep.authority.clone())
                .path_and_query(pq)
                .build()
        };
        let uri = match uri {
            Ok(u) => u,
            Err(e) => {
                return plain_rid(
                    StatusCode::BAD_REQUEST,
                    format!("FluxLit: invalid request target: {e}\n"),
                    rid,
                )
                .into();
            }
        };
        let host = parts.headers.get(HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let empty_body = declared == Some(0)
            || (declared.is_none()
                && !parts.headers.contains_key(TRANSFER_ENCODING)
                && body.is_end_stream());
        crate::decide::retain_request_fields(&mut parts.headers, hop.policy, hop.ui);
        for (name, value) in hop.identity {
            parts.headers.insert(name.clone(), value.clone());
        }
        hop.view.apply(&mut parts.headers, hop.prefix);
        parts.headers.insert(REQUEST_ID, rid.clone());
        match &host {
            Some(h) => {
                parts.headers.insert(HOST, h.clone());
            }
            // The pooled client sets Host from the absolute target; here it is ours to set.
            None if affinity.is_some() => {
                if let Ok(h) = HeaderValue::from_str(ep.authority.as_str()) {
                    parts.headers.insert(HOST, h);
                }
            }
            None => {}
        }
        if upgrade.is_some() {
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(UPGRADE, crate::headers::WEBSOCKET);
        }
        parts.uri = uri;
        let head_request = parts.method == Method::HEAD;
        parts.version = Version::HTTP_11;
        parts.extensions = http::Extensions::new();
        // A request that can be sent again unchanged: idempotent, no body, not an upgrade.
        let retryable =
            crate::decide::retryable(parts.method.as_str(), empty_body, upgrade.is_some());
        let replay = retryable.then(|| {
            (
                parts.method.clone(),
                parts.uri.clone(),
                parts.headers.clone(),
            )
        });
        let body: Body = if cap > 0 {
            crate::cap::Capped::new(body, cap).boxed_unsync()
        } else {
            body.map_err(Into::into).boxed_unsync()
        };
        let up_req = Request::from_parts(parts, body);

        let timeout = if upgrade.is_some() {
            self.limits.ws_open_timeout
        } else {
            self.read_timeout
        };
        let result = tokio::time::timeout(timeout, async {
            let (first, reused) = match affinity {
                Some(aff) => self.send_affine(aff, &ep.authority, up_req).await,
                None => (
                    self.client.request(up_req).await.map_err(SendError::Pool),
                    true,
                ),
            };
            let Err(e) = &first else { return first };
            let Some((method, uri, headers)) = replay else { return first };
            if !reused || e.is_connect() || !e.error().is_some_and(closed_under_us) {
                return first;
            }
            tracing::debug!(request_id = rid.to_str().unwrap_or(""), upstream = name, error = %e.detail(), "a kept-alive upstream connection closed under an idempotent request; retrying once on a new one");
            let mut again =
                Request::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
            *again.method_mut() = method;
            *again.uri_mut() = uri;
            *again.headers_mut() = headers;
            match affinity {
                Some(aff) => self.send_fresh(aff, &ep.authority, again).await,
                None => self.client.request(again).await.map_err(SendError::Pool),
            }
        })
        .await;
        let failure = match result {
            Err(_elapsed) => Err(UpstreamError::Timeout {
                after: timeout,
                setting: if upgrade.is_some() {
                    "gateway_ws_open_timeout_s"
                } else {
                    "gateway_upstream_read_timeout_s"
                },
            }),
            Ok(Err(e)) => Err(e.into_upstream((cap, setting))),
            Ok(Ok(r)) => {
                let size = crate::framing::response_fields_size(
                    r.headers()
                        .iter()
                        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
                );
                if size > crate::framing::MAX_RESPONSE_HEAD {
                    Err(UpstreamError::exchange(
                        format!(
                            "response head fields of {size} bytes, over {} bytes",
                            crate::framing::MAX_RESPONSE_HEAD
                        ),
                        false,
                    ))
                } else {
                    Ok(r)
                }
            }
        };
        let mut resp = match failure {
            Ok(r) => r,
            Err(e) => return e.response(name, &ep.authority, rid).into(),
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let (Some(client_upgrade), Some(expected)) = (client_upgrade, upgrade.as_deref())
            else {
                return UpstreamError::Unsolicited101
                    .response(name, &ep.authority, rid)
                    .into();
            };
            let h = resp.headers();
            if !crate::headers::websocket_switched(
                expected,
                h.get(http::header::SEC_WEBSOCKET_ACCEPT)
                    .map(HeaderValue::as_bytes),
                h.get(UPGRADE).map(HeaderValue::as_bytes),
            ) {
                return UpstreamError::Handshake
                    .response(name, &ep.authority, rid)
                    .into();
            }
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let mut spec = self.tunnel_spec(name, rid);
            spec.slot = tunnel_slot.take();
            spec.session = hop.session.clone();
            spec.tap = hop
                .worker
                .take()
                .map(|(pool, w, replay)| pool.tap(w, replay));
            let conn = hop.conn.clone();
            self.tunnels.spawn(async move {
                let _conn = conn;
                let (client, upstream) = match tokio::join!(client_upgrade, upstream_upgrade) {
                    (Ok(c), Ok(u)) => (c, u),
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::debug!(request_id = %spec.request_id, upstream = %spec.upstream, error = %e, "upgrade did not complete");
                        return;
                    }
                };
                tunnel(TokioIo::new(client), TokioIo::new(upstream), spec).await;
            });
            let (mut parts, _) = resp.into_parts();
            crate::decide::retain_response_fields(&mut parts.headers);
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(UPGRADE, crate::headers::WEBSOCKET);
            return Response::from_parts(
                parts,
                Empty::new().map_err(|never| match never {}).boxed_unsync(),
            )
            .into();
        }

        let (mut parts, body) = resp.into_parts();
        // Transfer codings beyond chunked stay with the body they coded (`framing.rs`).
        let bodiless = head_request
            || parts.status == StatusCode::NO_CONTENT
            || parts.status == StatusCode::NOT_MODIFIED;
        let codings = (!bodiless)
            .then(|| crate::framing::response_codings(&parts.headers))
            .flatten();
        crate::decide::retain_response_fields(&mut parts.headers);
        for v in codings.into_iter().flatten() {
            parts.headers.append(TRANSFER_ENCODING, v);
        }
        // The gateway speaks its own version to the client (RFC 9110 §6.2), whatever the
        // upstream's (an HTTP/1.0 status line is not relayed).
        parts.version = Version::HTTP_11;
        Forwarded {
            response: Response::from_parts(parts, body.map_err(Into::into).boxed_unsync()),
            slot,
        }
    }
}

/// What a tunnel needs besides its two ends.
pub(crate) struct TunnelSpec {
    /// Cancelled when [`crate::Gateway::drain_tunnels`] starts.
    closing: CancellationToken,
    /// Cancelled by [`crate::Gateway::drain_tunnels`] to cut open tunnels.
    cut: CancellationToken,
    idle: Option<Duration>,
    lifetime: Option<Duration>,
    upstream: String,
    request_id: String,
    /// The client IP's tunnel slot, held for the tunnel's life.
    pub(crate) slot: Option<crate::limits::TunnelSlot>,
    /// The login session the tunnel was opened with: the tunnel ends when it ends.
    pub(crate) session: Option<crate::sessions::SessionGuard>,
    /// With several UI workers: counts the session on its worker and learns its id
    /// (`pool.rs`).
    pub(crate) tap: Option<crate::pool::SessionTap>,
    /// The client connection's slot (`gateway_max_connections`), held for the tunnel's life.
    pub(crate) conn: Option<Arc<ConnPermit>>,
}

impl Proxy {
    /// A slot of the upstream concurrency cap (`gateway_max_concurrent_upstream_http`; none
    /// when the cap is off), held until the response body is done, as both engines do; or the
    /// 503 (`Retry-After: 1`) that sheds the request, counted
    /// ([`names::SHED`] `upstream_concurrency`).
    pub(crate) fn upstream_slot(
        &self,
        rid: &HeaderValue,
    ) -> Result<Option<OwnedSemaphorePermit>, Box<Response<Body>>> {
        let Some(s) = &self.upstream_slots else {
            return Ok(None);
        };
        match s.clone().try_acquire_owned() {
            Ok(p) => Ok(Some(p)),
            Err(_) => {
                metrics::counter!(names::SHED, "reason" => "upstream_concurrency").increment(1);
                let mut r = plain_rid(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "FluxLit: too many requests in flight to the upstreams (gateway_max_concurrent_upstream_http); retry shortly\n",
                    rid,
                );
                r.headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                Err(Box::new(r))
            }
        }
    }

    /// A slot for one more WebSocket tunnel of `client`, or the 429 that refuses it
    /// (`gateway_max_websockets_per_client_ip`).
    pub(crate) fn tunnel_slot(
        &self,
        client: std::net::IpAddr,
        rid: &HeaderValue,
    ) -> Result<crate::limits::TunnelSlot, Box<Response<Body>>> {
        self.ws_per_client.acquire(client).ok_or_else(|| {
            metrics::counter!(names::SHED, "reason" => "websockets_per_client_ip").increment(1);
            tracing::warn!(request_id = rid.to_str().unwrap_or(""), client_ip = %client, "WebSocket refused: the client IP holds the most tunnels (gateway_max_websockets_per_client_ip)");
            let mut r = plain_rid(
                StatusCode::TOO_MANY_REQUESTS,
                format!("FluxLit: {client} holds the most WebSocket sessions allowed (gateway_max_websockets_per_client_ip); close one and retry\n"),
                rid,
            );
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
            Box::new(r)
        })
    }

    /// The tunnel settings for an upgrade of request `rid` to upstream `name`.
    pub(crate) fn tunnel_spec(&self, name: &str, rid: &HeaderValue) -> TunnelSpec {
        TunnelSpec {
            closing: self.closing_tunnels.clone(),
            cut: self.cut_tunnels.clone(),
            idle: self.limits.ws_idle_timeout,
            lifetime: self.limits.ws_max_lifetime,
            upstream: name.to_owned(),
            request_id: rid.to_str().unwrap_or("").to_owned(),
            slot: None,
            session: None,
            tap: None,
            conn: None,
        }
    }
}

/// Splices an upgraded client connection and upstream connection byte for byte
/// ([`crate::relay::Relay`]: no buffer while idle) until either side closes, the tunnel is idle for
/// `gateway_ws_idle_timeout_s`, reaches `gateway_ws_max_lifetime_s`, or is cut at shutdown; logs
/// the tunnel's open and end (`fluxlit::access`) and records the tunnel metrics.
///
/// At shutdown (once [`crate::Gateway::drain_tunnels`] started), a tunnel whose upstream has
/// closed and whose bytes have all reached the client (the client's write side shut down, so
/// its close frame went through) ends at once instead of waiting for the client to close its
/// end: there is nothing left to carry, in either direction. Both engines' tunnels run here.
///
/// Every idle tunnel is one task of this future, so it is kept small: a plain function (not an
/// `async fn`, whose future would hold its arguments besides `splice`'s copy of them), and the
/// tapped variant, with several UI workers only, is boxed instead of sizing every tunnel for it.
pub(crate) fn tunnel<A, B>(
    client: A,
    upstream: B,
    mut spec: TunnelSpec,
) -> impl Future<Output = ()> + use<A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    use tokio_util::either::Either;
    match spec.tap.take() {
        // Several UI workers: the server's bytes pass the session tap (`pool.rs`), and a
        // reconnect of a session whose worker is gone starts its page on this one first.
        Some(mut tap) => Either::Right(Box::pin(async move {
            let mut upstream = upstream;
            if let Some(frame) = tap.replay_frame() {
                let wrote = tokio::time::timeout(Duration::from_secs(5), async {
                    upstream.write_all(&frame).await?;
                    upstream.flush().await
                })
                .await;
                if !matches!(wrote, Ok(Ok(()))) {
                    tracing::debug!(request_id = %spec.request_id, upstream = %spec.upstream, "the upstream did not take the session's page; tunnel closed");
                    return;
                }
            }
            splice(client, crate::pool::Tapped { io: upstream, tap }, spec).await;
        })),
        None => Either::Left(splice(client, upstream, spec)),
    }
}

async fn splice<A, B>(client: A, upstream: B, spec: TunnelSpec)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let TunnelSpec {
        closing,
        cut,
        idle,
        lifetime,
        upstream: upstream_name,
        request_id: rid_text,
        slot: _slot,
        session,
        tap: _,
        conn: _conn,
    } = spec;
    let session_ended = async {
        match &session {
            Some(g) => g.ended.cancelled().await,
            None => std::future::pending().await,
        }
    };
    let opened = Instant::now();
    metrics::gauge!(names::TUNNELS).increment(1.0);
    tracing::info!(target: "fluxlit::access", request_id = %rid_text, upstream = %upstream_name, "websocket tunnel open");
    let activity = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(tokio::sync::Notify::new());
    let mut client = Tracked::new(client, activity.clone(), opened);
    client.on_shutdown = Some(delivered.clone());
    let mut upstream = Tracked::new(upstream, activity.clone(), opened);
    let upstream_gone = async {
        closing.cancelled().await;
        delivered.notified().await;
    };
    let idle_watch = async {
        let Some(idle) = idle else {
            return std::future::pending::<()>().await;
        };
        let tick = (idle / 4).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(tick).await;
            let last = Duration::from_millis(activity.load(Ordering::Relaxed));
            if opened.elapsed().saturating_sub(last) >= idle {
                return;
            }
        }
    };
    let life = async {
        match lifetime {
            Some(l) => tokio::time::sleep(l).await,
            None => std::future::pending().await,
        }
    };
    let (up, down, how) = tokio::select! {
        r = crate::relay::Relay::new(&mut client, &mut upstream) => match r {
            Ok((up, down)) => (up, down, "closed"),
            Err(_) => (client.read, upstream.read, "ended with an error"),
        },
        () = upstream_gone => (client.read, upstream.read, "closed (upstream gone at shutdown)"),
        () = cut.cancelled() => (client.read, upstream.read, "cut at shutdown"),
        () = idle_watch => (client.read, upstream.read, "closed after gateway_ws_idle_timeout_s"),
        () = life => (client.read, upstream.read, "closed after gateway_ws_max_lifetime_s"),
        () = session_ended => (client.read, upstream.read, "closed: its login session ended"),
    };
    let lifetime_s = opened.elapsed().as_secs_f64();
    metrics::gauge!(names::TUNNELS).decrement(1.0);
    metrics::histogram!(names::TUNNEL_LIFETIME).record(lifetime_s);
    metrics::histogram!(names::DURATION, "dispatch" => "streamlit").record(lifetime_s);
    tracing::info!(target: "fluxlit::access", request_id = %rid_text, upstream = %upstream_name, bytes_in = up, bytes_out = down, lifetime_s, "websocket tunnel {how}");
}

/// An upgraded connection that records when it last moved bytes (milliseconds since `opened`)
/// and how many it read.
struct Tracked<T> {
    io: T,
    activity: Arc<AtomicU64>,
    opened: Instant,
    read: u64,
    /// Notified once a shutdown of the write side completed (stores a permit if nobody waits).
    on_shutdown: Option<Arc<tokio::sync::Notify>>,
}

impl<T> Tracked<T> {
    fn new(io: T, activity: Arc<AtomicU64>, opened: Instant) -> Self {
        Self {
            io,
            activity,
            opened,
            read: 0,
            on_shutdown: None,
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.activity.store(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read += n as u64;
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_shutdown(cx);
        if r.is_ready()
            && let Some(n) = self.on_shutdown.take()
        {
            n.notify_one();
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One mapping: every failure gets its status, names the upstream, and keeps its cause as
    /// the error source.
    #[test]
    fn upstream_errors_map_to_one_status_each() {
        let authority: Authority = "127.0.0.1:9".parse().unwrap();
        let rid = HeaderValue::from_static("rid-1");
        let cases = [
            (UpstreamError::Connect("refused".into()), 502),
            (UpstreamError::exchange("reset", true), 502),
            (
                UpstreamError::Timeout {
                    after: Duration::from_secs(3),
                    setting: "gateway_upstream_read_timeout_s",
                },
                504,
            ),
            (UpstreamError::Unsolicited101, 502),
            (UpstreamError::Handshake, 502),
            (
                UpstreamError::BodyTooLarge {
                    cap: 10,
                    setting: "gateway_max_proxy_request_body_bytes",
                },
                413,
            ),
        ];
        for (e, status) in cases {
            let r = e.response("ui", &authority, &rid);
            assert_eq!(r.status().as_u16(), status, "{e}");
            assert_eq!(r.headers()[crate::observe::REQUEST_ID], "rid-1", "{e}");
        }
        let e = UpstreamError::exchange("connection reset by peer", false);
        let source = StdError::source(&e).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("connection reset by peer"));
    }
}
