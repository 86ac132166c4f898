//! The reverse proxy: one pooled HTTP/1.1 client for every upstream, bodies streamed both
//! ways, WebSocket (and any HTTP/1.1) upgrades spliced byte for byte once the upstream says 101.

use std::error::Error as StdError;
use std::time::Duration;

use http::header::{CONNECTION, HOST, HeaderValue, UPGRADE};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Body;
use crate::headers::{ClientHop, set_forwarded, strip_hop_by_hop, upgrade_request};
use crate::response::plain;
use crate::upstream::Upstream;

/// Idle pooled connections are closed after this long: below the keep-alive timeout of common
/// upstream servers (uvicorn's default is 5 s, so stay under it) to avoid reusing a connection
/// the upstream is closing.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

pub(crate) struct Proxy {
    client: Client<HttpConnector, Body>,
    read_timeout: Duration,
    pub(crate) tunnels: TaskTracker,
    pub(crate) cut_tunnels: CancellationToken,
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

impl Proxy {
    pub(crate) fn new(connect_timeout: Duration, read_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Self {
            client,
            read_timeout,
            tunnels: TaskTracker::new(),
            cut_tunnels: CancellationToken::new(),
        }
    }

    /// Forwards `req` to `upstream` at `path` (plus the request's query), setting forwarded
    /// headers (with `X-Forwarded-Prefix: prefix` when given). Never fails: upstream problems
    /// become 502/503/504 responses that name the upstream.
    pub(crate) async fn forward(
        &self,
        upstream: &Upstream,
        mut req: Request<Incoming>,
        path: &str,
        hop: &ClientHop,
        prefix: Option<&str>,
    ) -> Response<Body> {
        let name = upstream.name();
        let Some(ep) = upstream.endpoint.borrow().clone() else {
            let mut r = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "FluxLit: the {name} upstream is not running (starting, restarting or stopped); retry shortly\n"
                ),
            );
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        };

        let upgrade = if req.version() == Version::HTTP_11 {
            upgrade_request(req.headers())
        } else {
            None
        };
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));

        let (mut parts, body) = req.into_parts();
        let mut pq = String::with_capacity(ep.base_path.len() + path.len() + 64);
        pq.push_str(&ep.base_path);
        pq.push_str(path);
        if let Some(q) = parts.uri.query() {
            pq.push('?');
            pq.push_str(q);
        }
        let uri = match Uri::builder()
            .scheme("http")
            .authority(ep.authority.clone())
            .path_and_query(pq)
            .build()
        {
            Ok(u) => u,
            Err(e) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    format!("FluxLit: invalid request target: {e}\n"),
                );
            }
        };
        let host = parts.headers.get(HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        strip_hop_by_hop(&mut parts.headers);
        set_forwarded(&mut parts.headers, host.as_ref(), hop, prefix);
        if let Some(h) = &host {
            parts.headers.insert(HOST, h.clone());
        }
        if let Some(u) = &upgrade {
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(UPGRADE, u.clone());
        }
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        parts.extensions = http::Extensions::new();
        let up_req = Request::from_parts(parts, body.map_err(Into::into).boxed_unsync());

        let mut resp = match tokio::time::timeout(self.read_timeout, self.client.request(up_req))
            .await
        {
            Err(_elapsed) => {
                tracing::warn!(upstream = name, authority = %ep.authority, timeout_s = self.read_timeout.as_secs_f64(), "upstream sent no response headers in time");
                return plain(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "FluxLit: the {name} upstream at {} sent no response within {} s (gateway_upstream_read_timeout_s)\n",
                        ep.authority,
                        self.read_timeout.as_secs_f64()
                    ),
                );
            }
            Ok(Err(e)) => {
                let detail = chain(&e);
                tracing::warn!(upstream = name, authority = %ep.authority, error = %detail, "upstream request failed");
                let what = if e.is_connect() {
                    "could not be reached"
                } else {
                    "failed before sending a response"
                };
                return plain(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "FluxLit: the {name} upstream at {} {what} ({detail})\n",
                        ep.authority
                    ),
                );
            }
            Ok(Ok(r)) => r,
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return plain(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "FluxLit: the {name} upstream switched protocols without being asked\n"
                    ),
                );
            };
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let cut = self.cut_tunnels.clone();
            let upstream_name = name.to_owned();
            self.tunnels.spawn(async move {
                let (client, upstream) = match tokio::join!(client_upgrade, upstream_upgrade) {
                    (Ok(c), Ok(u)) => (c, u),
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::debug!(upstream = %upstream_name, error = %e, "upgrade did not complete");
                        return;
                    }
                };
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                tokio::select! {
                    r = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, 16 * 1024, 16 * 1024) => match r {
                        Ok((up, down)) => tracing::debug!(upstream = %upstream_name, bytes_up = up, bytes_down = down, "tunnel closed"),
                        Err(e) => tracing::debug!(upstream = %upstream_name, error = %e, "tunnel ended with an error"),
                    },
                    () = cut.cancelled() => tracing::debug!(upstream = %upstream_name, "tunnel cut at shutdown"),
                }
            });
            let up = resp.headers().get(UPGRADE).cloned();
            let (mut parts, _) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            if let Some(u) = up {
                parts
                    .headers
                    .insert(CONNECTION, HeaderValue::from_static("upgrade"));
                parts.headers.insert(UPGRADE, u);
            }
            return Response::from_parts(
                parts,
                Empty::new().map_err(|never| match never {}).boxed_unsync(),
            );
        }

        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
    }
}
