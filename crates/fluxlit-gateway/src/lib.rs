//! FluxLit's gateway: one public port in front of an API and a UI upstream.
//!
//! What it owns: accepting connections (HTTP/1.1 with upgrades, and HTTP/2), routing on the
//! path after the root path, the gateway's own `{api}/healthz` and `{api}/readyz`, and the
//! reverse proxy (HTTP and WebSocket) to the UI upstream (Streamlit) and to an API upstream, or
//! calling an in-process tower service mounted as the API.
//!
//! Invariants:
//! - Routing (see [`routing::route`]): `{api}/healthz` → 200 `{"status":"ok"}` always;
//!   `{api}/readyz` → 200 only when every [`ReadinessCheck`] is ready, else 503 naming which;
//!   `{api}` and `{api}/…` → the API with the mount stripped and `X-Forwarded-Prefix:
//!   {root}{api}`; everything else → the UI upstream with the root path kept. Both front-proxy
//!   shapes work: prefix stripped (`/api/x`) and full path (`/myapp/api/x`).
//! - Proxying streams bodies both ways, never buffers them whole, removes hop-by-hop headers
//!   (RFC 9110 §7.6.1, including every field named in `Connection`), passes `Host` and cookies
//!   through byte for byte, has no cookie jar, and overwrites `X-Forwarded-For/-Proto/-Host/-Port`.
//! - An upgrade is forwarded as a request; only a 101 from the upstream makes the gateway splice
//!   the two upgraded connections byte for byte (subprotocols, extensions and close codes pass
//!   untouched). Any other answer reaches the client as a normal HTTP response.
//! - Upstream failures are responses, never connection resets: 502 (refused or failed, naming
//!   the upstream), 503 (upstream not running), 504 (no response headers within the read
//!   timeout; streaming bodies and tunnels are never cut by it).
//!
//! ```no_run
//! use fluxlit_gateway::{Endpoint, Gateway, Upstream};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let ui = Upstream::fixed("streamlit", Endpoint { authority: "127.0.0.1:8501".parse()?, base_path: String::new() });
//! let gateway = Gateway::builder().ui(ui).build()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! gateway.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! gateway.drain_tunnels(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

pub mod headers;
mod proxy;
mod response;
pub mod routing;
mod upstream;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

pub use headers::{ClientHop, HOP_BY_HOP, strip_hop_by_hop};
pub use routing::Route;
pub use upstream::{ApiService, ApiTarget, ComponentState, Endpoint, ReadinessCheck, Upstream};

use response::{json, plain};

/// A boxed error, as carried by bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response the gateway hands on.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Building the gateway failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The root path is not a valid path prefix.
    #[error("invalid root path {value:?}: {reason}")]
    RootPath {
        /// The value given.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The API mount is not a valid path.
    #[error("invalid API mount path {value:?}: {reason}")]
    ApiMount {
        /// The value given.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
}

/// Configures a [`Gateway`]. Defaults: no root path, API mount `/api`, no API, no UI upstream,
/// connect timeout 30 s, response-header timeout 120 s, request-header read timeout 30 s,
/// graceful drain 30 s.
#[derive(Debug, Clone)]
pub struct GatewayBuilder {
    root_path: String,
    api_mount: String,
    ui: Option<Upstream>,
    api: ApiTarget,
    readiness: Vec<ReadinessCheck>,
    connect_timeout: Duration,
    read_timeout: Duration,
    header_read_timeout: Duration,
    drain_timeout: Duration,
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        Self {
            root_path: String::new(),
            api_mount: "/api".into(),
            ui: None,
            api: ApiTarget::None,
            readiness: Vec::new(),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(120),
            header_read_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

impl GatewayBuilder {
    /// Takes root path, API mount and timeouts from loaded settings.
    pub fn settings(mut self, s: &fluxlit_config::Settings) -> Self {
        self.root_path = s.public_mount().to_owned();
        self.api_mount = s.api_mount_path.clone();
        self.connect_timeout = s.gateway_upstream_connect_timeout_s;
        self.read_timeout = s.gateway_upstream_read_timeout_s;
        self.drain_timeout = s.graceful_shutdown_timeout_s;
        self
    }

    /// Public mount (`/myapp`, `/apps/my-app`), normalised like `root_path`. Default: none.
    pub fn root_path(mut self, path: &str) -> Self {
        self.root_path = path.to_owned();
        self
    }

    /// API mount, normalised like `api_mount_path`. Default: `/api`.
    pub fn api_mount(mut self, path: &str) -> Self {
        self.api_mount = path.to_owned();
        self
    }

    /// The UI upstream (Streamlit). Default: none (UI paths answer 404).
    pub fn ui(mut self, upstream: Upstream) -> Self {
        self.ui = Some(upstream);
        self
    }

    /// What serves the API mount. Default: [`ApiTarget::None`].
    pub fn api(mut self, target: ApiTarget) -> Self {
        self.api = target;
        self
    }

    /// Mounts an in-process tower service (for example an axum `Router`) as the API.
    pub fn api_service(self, service: ApiService) -> Self {
        self.api(ApiTarget::Service(service))
    }

    /// Adds a readiness input for `{api}/readyz`.
    pub fn readiness(mut self, check: ReadinessCheck) -> Self {
        self.readiness.push(check);
        self
    }

    /// TCP connect timeout to upstreams (502 after it). Default: 30 s.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Time an upstream has to send response headers (504 after it). Default: 120 s.
    pub fn read_timeout(mut self, d: Duration) -> Self {
        self.read_timeout = d;
        self
    }

    /// Time a client has to send its request headers (slow-loris guard). Default: 30 s.
    pub fn header_read_timeout(mut self, d: Duration) -> Self {
        self.header_read_timeout = d;
        self
    }

    /// Time in-flight HTTP requests get to finish once shutdown starts. Default: 30 s.
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }

    /// Validates the paths and builds the gateway.
    ///
    /// # Errors
    /// [`BuildError`] for an invalid root path or API mount.
    pub fn build(self) -> Result<Gateway, BuildError> {
        let root = fluxlit_config::normalize_root_path(&self.root_path).map_err(|reason| {
            BuildError::RootPath {
                value: self.root_path.clone(),
                reason,
            }
        })?;
        let api = fluxlit_config::normalize_api_mount(&self.api_mount).map_err(|reason| {
            BuildError::ApiMount {
                value: self.api_mount.clone(),
                reason,
            }
        })?;
        Ok(Gateway {
            inner: Arc::new(Inner {
                api_prefix: format!("{root}{api}"),
                root,
                api,
                ui: self.ui,
                api_target: self.api,
                readiness: self.readiness,
                proxy: proxy::Proxy::new(self.connect_timeout, self.read_timeout),
                header_read_timeout: self.header_read_timeout,
                drain_timeout: self.drain_timeout,
            }),
        })
    }
}

struct Inner {
    root: String,
    api: String,
    /// `{root}{api}`, sent as `X-Forwarded-Prefix` to the API.
    api_prefix: String,
    ui: Option<Upstream>,
    api_target: ApiTarget,
    readiness: Vec<ReadinessCheck>,
    proxy: proxy::Proxy,
    header_read_timeout: Duration,
    drain_timeout: Duration,
}

/// The gateway. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("root", &self.inner.root)
            .field("api", &self.inner.api)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A builder with the defaults documented on [`GatewayBuilder`].
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    /// The normalised root path (`""` when none).
    pub fn root_path(&self) -> &str {
        &self.inner.root
    }

    /// The normalised API mount.
    pub fn api_mount(&self) -> &str {
        &self.inner.api
    }

    /// Whether every readiness input is ready, and a detail naming those that are not.
    pub fn readiness(&self) -> (bool, Vec<(String, ComponentState)>) {
        let states: Vec<(String, ComponentState)> = self
            .inner
            .readiness
            .iter()
            .map(|c| (c.name.to_string(), c.state.borrow().clone()))
            .collect();
        (states.iter().all(|(_, s)| s.is_ready()), states)
    }

    /// Handles one request from `hop`. Never fails: every problem is a response.
    pub async fn handle(&self, mut req: Request<Incoming>, hop: &ClientHop) -> Response<Body> {
        fluxlit_auth::mark_sensitive(req.headers_mut());
        let inner = &self.inner;
        let route = match routing::route(req.uri().path(), &inner.root, &inner.api) {
            Ok(r) => r,
            Err(e) => return plain(StatusCode::BAD_REQUEST, format!("FluxLit: {e}\n")),
        };
        match route {
            Route::Healthz => match *req.method() {
                Method::GET | Method::HEAD => {
                    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
                }
                _ => method_not_allowed(),
            },
            Route::Readyz => match *req.method() {
                Method::GET | Method::HEAD => self.readyz(),
                _ => method_not_allowed(),
            },
            Route::Api { path } => match &inner.api_target {
                ApiTarget::None => json(
                    StatusCode::NOT_FOUND,
                    &serde_json::json!({"detail": "Not Found", "reason": "no API is configured (set api_command or api_upstream)"}),
                ),
                ApiTarget::Upstream(u) => {
                    inner
                        .proxy
                        .forward(u, req, &path, hop, Some(&inner.api_prefix))
                        .await
                }
                ApiTarget::Service(svc) => {
                    let host = req.headers().get(http::header::HOST).cloned();
                    let uri = match rewrite_path(req.uri(), &path) {
                        Ok(u) => u,
                        Err(e) => {
                            return plain(
                                StatusCode::BAD_REQUEST,
                                format!("FluxLit: invalid request target: {e}\n"),
                            );
                        }
                    };
                    *req.uri_mut() = uri;
                    headers::set_forwarded(
                        req.headers_mut(),
                        host.as_ref(),
                        hop,
                        Some(&inner.api_prefix),
                    );
                    svc.call(req.map(|b| b.map_err(Into::into).boxed_unsync()))
                        .await
                }
            },
            Route::Ui { path } => match &inner.ui {
                Some(u) => {
                    let prefix = (!inner.root.is_empty()).then_some(inner.root.as_str());
                    inner.proxy.forward(u, req, &path, hop, prefix).await
                }
                None => plain(
                    StatusCode::NOT_FOUND,
                    "FluxLit: no UI upstream is configured\n",
                ),
            },
        }
    }

    fn readyz(&self) -> Response<Body> {
        let (ready, states) = self.readiness();
        let mut components = serde_json::Map::new();
        let mut problems = Vec::new();
        for (name, state) in &states {
            let text = match state {
                ComponentState::Ready => "ready".to_owned(),
                ComponentState::Starting(why) => format!("starting: {why}"),
                ComponentState::NotReady(why) => format!("not ready: {why}"),
            };
            if !state.is_ready() {
                problems.push(format!("{name}: {text}"));
            }
            components.insert(name.clone(), serde_json::Value::String(text));
        }
        if ready {
            json(
                StatusCode::OK,
                &serde_json::json!({"status": "ready", "components": components}),
            )
        } else {
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "not_ready", "detail": problems.join("; "), "components": components}),
            )
        }
    }

    /// Serves connections from `listener` until `shutdown` resolves; then stops accepting, lets
    /// in-flight HTTP requests finish (idle keep-alive connections are closed) for up to the
    /// drain timeout, and returns. Upgraded tunnels (WebSockets) outlive this call: end them with
    /// [`Gateway::drain_tunnels`] after the upstreams have been told to stop, so that their close
    /// frames reach the clients.
    ///
    /// # Errors
    /// Only if the listener's local address cannot be read; accept errors are logged and retried.
    pub async fn serve<F>(&self, listener: TcpListener, shutdown: F) -> std::io::Result<()>
    where
        F: Future<Output = ()>,
    {
        let local = listener.local_addr()?;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.inner.header_read_timeout);
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // EMFILE and friends: back off briefly instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let gw = self.clone();
                    let hop = ClientHop { peer, local };
                    let service = hyper::service::service_fn(move |req| {
                        let gw = gw.clone();
                        let hop = hop.clone();
                        async move { Ok::<_, Infallible>(gw.handle(req, &hop).await) }
                    });
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        tracing::info!(
            drain_timeout_s = self.inner.drain_timeout.as_secs_f64(),
            "gateway stopped accepting; draining in-flight requests"
        );
        tokio::select! {
            () = graceful.shutdown() => tracing::debug!("all HTTP connections drained"),
            () = tokio::time::sleep(self.inner.drain_timeout) => tracing::warn!("drain timeout elapsed with requests still in flight; closing them"),
        }
        Ok(())
    }

    /// Number of open upgraded tunnels (WebSockets).
    pub fn active_tunnels(&self) -> usize {
        self.inner.proxy.tunnels.len()
    }

    /// Waits up to `grace` for upgraded tunnels to end by themselves, then cuts the rest.
    /// Returns how many were cut.
    pub async fn drain_tunnels(&self, grace: Duration) -> usize {
        let tracker = &self.inner.proxy.tunnels;
        tracker.close();
        let mut cut = 0;
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            cut = tracker.len();
            self.inner.proxy.cut_tunnels.cancel();
            tracker.wait().await;
        }
        cut
    }
}

fn method_not_allowed() -> Response<Body> {
    let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "FluxLit: use GET or HEAD\n");
    r.headers_mut().insert(
        http::header::ALLOW,
        http::HeaderValue::from_static("GET, HEAD"),
    );
    r
}

fn rewrite_path(uri: &Uri, path: &str) -> Result<Uri, http::Error> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse()?);
    Ok(Uri::from_parts(parts)?)
}

/// The address the gateway tells children to use to reach it: the bound address with an
/// unspecified host (`0.0.0.0`, `::`) replaced by loopback (`127.0.0.1`, `::1`).
pub fn loopback_base(bound: SocketAddr) -> String {
    let ip = match bound.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        }
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        }
        ip => ip,
    };
    match ip {
        std::net::IpAddr::V6(v6) => format!("http://[{v6}]:{}", bound.port()),
        std::net::IpAddr::V4(v4) => format!("http://{v4}:{}", bound.port()),
    }
}
