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

mod accesslog;
mod affinity;
mod auth;
pub mod cap;
mod deadline;
mod decide;
pub mod forwarded;
mod framing;
mod h1;
pub mod headers;
pub mod limits;
mod logwriter;
pub mod observe;
mod pool;
mod proxy;
mod relay;
mod response;
mod rewrite;
pub mod routing;
mod sessions;
mod upstream;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

pub use accesslog::{AccessLogFormat, AccessLogSink};
pub use auth::{ForwardAuth, OidcAuth, PublicPaths};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tower::{Layer, ServiceExt};
use tower_http::cors::CorsLayer;

pub use fluxlit_config::RequestIdTrust;
pub use forwarded::{ClientView, TrustPolicy};
pub use headers::{ClientHop, HOP_BY_HOP, strip_hop_by_hop};
pub use limits::Limits;
pub use logwriter::{DroppedLines, LineWriter, LogWriter};
pub use observe::{describe_metrics, names as metric_names};
pub use pool::{COOKIE as WORKER_COOKIE, UiWorker, UiWorkers};
pub use routing::Route;
pub use upstream::{ApiService, ApiTarget, ComponentState, Endpoint, ReadinessCheck, Upstream};

use decide::Decision;
use response::{json, plain, plain_rid};

/// A boxed error, as carried by bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response the gateway hands on.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Renders the metrics exposition (Prometheus text) on demand.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// Supplies the embedding program's part of the debug snapshot (settings, sidecars).
pub type DebugInfo = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// The path of the debug snapshot (after the root path).
pub const DEBUG_PATH: &str = "/__fluxlit/debug";

/// The path of the client view (after the root path): `GET` answers 200 with what the gateway
/// resolved for this request from the connection and, from trusted proxies only, the forwarded
/// headers (RFC 7239, `X-Forwarded-*`): the scheme, host and port the app builds its absolute
/// URLs from, the public prefix, the client IP and whether the peer is a trusted proxy. JSON:
/// `{"scheme": "https", "host": "app.example.com", "port": 443, "prefix": "/myapp",
/// "client_ip": "203.0.113.7", "forwarded_trusted": true}` (`host`: `null` when the request
/// had none; `prefix`: `""` at the site root). Always on (it tells a client only what the app
/// would tell it anyway); `fluxlit doctor --live` compares it with the URL it was given.
/// Other methods get 405. `Cache-Control: no-store`.
pub const CLIENT_PATH: &str = "/__fluxlit/client";

/// The JWKS of the identity assertion (`X-Fluxlit-Identity`, [`fluxlit_auth::assertion`]),
/// under the root path, with `auth_mode = oidc`.
pub const JWKS_PATH: &str = "/__fluxlit/jwks.json";

/// Building the gateway failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// The bearer-token check (`auth_mode = jwt`) cannot be set up from the `jwt_*` settings.
    /// (The message includes the cause: callers print only the top error.)
    #[error("cannot check bearer tokens (auth_mode = jwt): {0}")]
    Jwt(#[source] Arc<fluxlit_auth::jwt::JwtConfigError>),
    /// The OIDC login (`auth_mode = oidc`) cannot be set up from the settings.
    #[error("cannot set up the OIDC login (auth_mode = oidc): {0}")]
    Oidc(#[source] Arc<OidcSetupError>),
}

/// Security headers and CORS for API responses (FluxLit's `enable_security_headers`,
/// `cors_*`; reference §4.10). Streamlit's responses are left alone.
#[derive(Debug, Clone, Default)]
pub struct ApiHeaders {
    /// Add `X-Content-Type-Options`, `X-Frame-Options`, `Referrer-Policy` (and HSTS when the
    /// effective scheme is https) where the API did not set them.
    pub security_headers: bool,
    /// CORS for API routes, when origins are configured.
    pub cors: Option<CorsLayer>,
}

impl ApiHeaders {
    /// From loaded settings.
    pub fn from_settings(s: &fluxlit_config::Settings) -> Self {
        use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, ExposeHeaders};
        let cors = (!s.cors_allow_origins.is_empty()).then(|| {
            let any = s.cors_allow_origins.iter().any(|o| o == "*");
            let origin = if any && s.cors_allow_credentials {
                AllowOrigin::mirror_request()
            } else if any {
                AllowOrigin::any()
            } else {
                AllowOrigin::list(
                    s.cors_allow_origins
                        .iter()
                        .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
                )
            };
            let mut layer = CorsLayer::new()
                .allow_origin(origin)
                .allow_methods(AllowMethods::mirror_request())
                .allow_headers(AllowHeaders::mirror_request())
                .allow_credentials(s.cors_allow_credentials);
            if let Some(age) = s
                .cors_middleware_kwargs
                .get("max_age")
                .and_then(serde_json::Value::as_u64)
            {
                layer = layer.max_age(Duration::from_secs(age));
            }
            if let Some(list) = s
                .cors_middleware_kwargs
                .get("expose_headers")
                .and_then(serde_json::Value::as_array)
            {
                let names: Vec<http::HeaderName> = list
                    .iter()
                    .filter_map(|v| v.as_str())
                    .filter_map(|n| n.parse().ok())
                    .collect();
                layer = layer.expose_headers(ExposeHeaders::list(names));
            }
            layer
        });
        Self {
            security_headers: s.enable_security_headers,
            cors,
        }
    }
}

/// Configures a [`Gateway`]. Defaults: no root path, API mount `/api`, no API, no UI upstream,
/// no trusted proxies, connect timeout 30 s, response-header timeout 120 s, drain 30 s, the
/// [`Limits`] defaults, no access log, no metrics endpoint, no debug endpoint.
#[derive(Clone)]
pub struct GatewayBuilder {
    root_path: String,
    api_mount: String,
    ui: Option<Upstream>,
    /// Two or more UI workers ([`GatewayBuilder::ui_workers`]).
    ui_workers: Vec<UiWorker>,
    api: ApiTarget,
    readiness: Vec<ReadinessCheck>,
    connect_timeout: Duration,
    read_timeout: Duration,
    drain_timeout: Duration,
    pool_max_idle: usize,
    limits: Limits,
    trust: TrustPolicy,
    request_id_trust: RequestIdTrust,
    header_policy: fluxlit_auth::HeaderPolicy,
    api_headers: ApiHeaders,
    access_log: bool,
    health_access_log: bool,
    access_log_sink: Option<AccessLogSink>,
    metrics_path: Option<String>,
    metrics_render: Option<MetricsRender>,
    record_metrics: bool,
    debug: Option<DebugInfo>,
    fast_path: bool,
    forward_auth: Option<ForwardAuth>,
    oidc: Option<OidcAuth>,
    /// `auth_mode = oidc` from settings: the backend-for-frontend, or why it cannot be made.
    oidc_setup: Option<Result<OidcAuth, Arc<OidcSetupError>>>,
    /// `auth_mode = jwt`: the verifier, or why the settings could not make one.
    jwt:
        Option<Result<Arc<fluxlit_auth::jwt::JwtVerifier>, Arc<fluxlit_auth::jwt::JwtConfigError>>>,
}

impl std::fmt::Debug for GatewayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayBuilder")
            .field("root_path", &self.root_path)
            .field("api_mount", &self.api_mount)
            .finish_non_exhaustive()
    }
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        Self {
            root_path: String::new(),
            api_mount: "/api".into(),
            ui: None,
            ui_workers: Vec::new(),
            api: ApiTarget::None,
            readiness: Vec::new(),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(120),
            drain_timeout: Duration::from_secs(30),
            pool_max_idle: 0,
            limits: Limits::default(),
            trust: TrustPolicy::none(),
            request_id_trust: RequestIdTrust::Any,
            header_policy: fluxlit_auth::HeaderPolicy::default(),
            api_headers: ApiHeaders::default(),
            access_log: false,
            health_access_log: false,
            access_log_sink: None,
            metrics_path: None,
            metrics_render: None,
            record_metrics: false,
            debug: None,
            fast_path: true,
            forward_auth: None,
            oidc: None,
            oidc_setup: None,
            jwt: None,
        }
    }
}

impl GatewayBuilder {
    /// Takes paths, timeouts, limits, proxy trust, header rules, security headers/CORS, the
    /// access-log switches and the fast-path switch (`gateway_fast_path`) from loaded settings.
    pub fn settings(mut self, s: &fluxlit_config::Settings) -> Self {
        self.root_path = s.public_mount().to_owned();
        self.api_mount = s.api_mount_path.clone();
        self.connect_timeout = s.gateway_upstream_connect_timeout_s;
        self.read_timeout = s.gateway_upstream_read_timeout_s;
        self.drain_timeout = s.graceful_shutdown_timeout_s;
        self.pool_max_idle = usize::try_from(s.gateway_httpx_max_connections).unwrap_or(usize::MAX);
        self.limits = Limits::from_settings(s);
        self.trust = if s.trust_proxy {
            TrustPolicy::trusting(
                s.forwarded_allow_ips
                    .iter()
                    .flat_map(|e| match e.as_str() {
                        "*" => vec![
                            fluxlit_config::parse_ip_net("0.0.0.0/0"),
                            fluxlit_config::parse_ip_net("::/0"),
                        ],
                        e => vec![fluxlit_config::parse_ip_net(e)],
                    })
                    .filter_map(Result::ok)
                    .collect(),
            )
            .forwarded_prefix(s.trust_forwarded_prefix)
            .forwarded_port(s.trust_forwarded_port)
        } else {
            TrustPolicy::none()
        };
        self.request_id_trust = s.request_id_trust;
        self.header_policy = fluxlit_auth::HeaderPolicy::new(
            &trusted_user_headers(&s.streamlit_run_cli_args),
            &s.gateway_forward_client_headers_to_streamlit,
        );
        self.forward_auth = (s.auth_mode == fluxlit_config::AuthMode::Forward).then(|| {
            ForwardAuth::new(
                s.auth_forward_trusted_cidrs
                    .iter()
                    .filter_map(|c| fluxlit_config::parse_ip_net(c).ok())
                    .collect(),
                HeaderName::from_bytes(s.auth_forward_user_header.trim().as_bytes())
                    .unwrap_or(HeaderName::from_static("x-forwarded-user")),
                s.auth_forward_headers
                    .iter()
                    .filter_map(|h| HeaderName::from_bytes(h.trim().as_bytes()).ok())
                    .collect(),
                s.auth_forward_require_https,
            )
        });
        // `jwt` mode, or `oidc` with the `jwt_*` keys set: bearer tokens for the API (in `oidc`
        // mode for requests without a session).
        let oidc = s.auth_mode == fluxlit_config::AuthMode::Oidc;
        self.jwt = (s.auth_mode == fluxlit_config::AuthMode::Jwt
            || (oidc && !s.jwt_issuer.is_empty()))
        .then(|| jwt_from_settings(s).map(Arc::new).map_err(Arc::new));
        self.oidc_setup = oidc.then(|| oidc_from_settings(s).map_err(Arc::new));
        self.api_headers = ApiHeaders::from_settings(s);
        self.fast_path = s.gateway_fast_path;
        self.access_log = s.enable_gateway_access_log || s.debug;
        self.record_metrics = s.enable_gateway_prometheus_metrics;
        self.health_access_log = s.enable_health_access_log;
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
        self.ui_workers.clear();
        self
    }

    /// Several UI upstreams running the same app (Streamlit workers, `streamlit_workers`;
    /// docs/scaling.md): each new session goes to the ready worker with the fewest open
    /// sessions, and every request of a session to the worker that holds it (the affinity
    /// cookie [`WORKER_COOKIE`], the session id in upload paths and WebSocket reconnects). One
    /// worker is served as [`GatewayBuilder::ui`] would (no cookie, no lookup) until a second
    /// is added through [`Gateway::ui_workers`] (a rolling restart). Readiness is not implied:
    /// add a [`ReadinessCheck`] (e.g. [`ReadinessCheck::quorum`]). Default: none.
    pub fn ui_workers(mut self, workers: Vec<UiWorker>) -> Self {
        self.ui = workers.first().map(|w| w.upstream.clone());
        self.ui_workers = workers;
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

    /// Time in-flight HTTP requests get once shutdown starts (WebSocket tunnels are not
    /// waited for; see [`Gateway::serve`]). Default: 30 s.
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }

    /// Limits (body caps, connections, rate limits, WebSocket policy). Default: [`Limits::default`].
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Whose forwarded headers to believe. Default: nobody's.
    pub fn trust(mut self, trust: TrustPolicy) -> Self {
        self.trust = trust;
        self
    }

    /// Whose `X-Request-ID` to keep (`request_id_trust`): any client's (the default, as FluxLit
    /// for Python) or only trusted proxies' ([`GatewayBuilder::trust`]). Malformed ids are
    /// always replaced ([`observe::request_id_from`]).
    pub fn request_id_trust(mut self, trust: RequestIdTrust) -> Self {
        self.request_id_trust = trust;
        self
    }

    /// Forward authentication (`auth_mode = forward`, [`ForwardAuth`]): only the front proxy
    /// may reach the app, and the identity headers it sets reach the API and the UI. Default:
    /// off (identity headers stripped from everybody).
    pub fn forward_auth(mut self, auth: ForwardAuth) -> Self {
        self.forward_auth = Some(auth);
        self
    }

    /// The OIDC backend-for-frontend (`auth_mode = oidc`, [`OidcAuth`]): login required
    /// (unless [`OidcAuth::required`] is off) for everything but the health endpoints and the
    /// public paths; with [`GatewayBuilder::jwt`] too, an API request without a session may
    /// instead carry a valid bearer token.
    pub fn oidc(mut self, auth: OidcAuth) -> Self {
        self.oidc = Some(auth);
        self
    }

    /// Bearer-token authentication for the API (`auth_mode = jwt`): every API request
    /// (`{root}{api}/…`, the health endpoints `{api}/healthz` and `{api}/readyz` aside) needs an
    /// `Authorization: Bearer` JWT that `verifier` accepts, and is otherwise answered with its
    /// [`fluxlit_auth::jwt::Denial`] (reference §8.1; RFC 6750 §3). CORS preflights are
    /// answered first, as FluxLit for Python's CORS middleware did. The UI stays public.
    /// Default: no check.
    pub fn jwt(mut self, verifier: Arc<fluxlit_auth::jwt::JwtVerifier>) -> Self {
        self.jwt = Some(Ok(verifier));
        self
    }

    /// Identity headers to strip and the UI hop's allow-list. Default: [`fluxlit_auth::HeaderPolicy::default`].
    pub fn header_policy(mut self, policy: fluxlit_auth::HeaderPolicy) -> Self {
        self.header_policy = policy;
        self
    }

    /// Security headers and CORS for API responses. Default: neither.
    pub fn api_headers(mut self, h: ApiHeaders) -> Self {
        self.api_headers = h;
        self
    }

    /// One access-log line per request (`fluxlit::access` target); health probes only when
    /// `health` is set too. Default: off.
    pub fn access_log(mut self, on: bool, health: bool) -> Self {
        self.access_log = on;
        self.health_access_log = health;
        self
    }

    /// Writes the access log's lines straight into `sink` (same format, same filter) instead
    /// of through `tracing`'s formatter, which costs more than the rest of a small request
    /// ([`AccessLogSink`]). Give it the [`LogWriter`] and the format of the process's
    /// `tracing` subscriber (the `fluxlit` command does), or the lines land somewhere else
    /// than the rest of the log. Default: none (the lines go through `tracing`).
    pub fn access_log_sink(mut self, sink: AccessLogSink) -> Self {
        self.access_log_sink = Some(sink);
        self
    }

    /// Serves `render()` as Prometheus text at `path` (after the root path) on this gateway.
    /// The path must not lie under the API mount. Default: no metrics endpoint.
    pub fn metrics_endpoint(mut self, path: &str, render: MetricsRender) -> Self {
        self.metrics_path = Some(path.to_owned());
        self.metrics_render = Some(render);
        self.record_metrics = true;
        self
    }

    /// Records per-request metrics through the `metrics` facade (set by
    /// [`GatewayBuilder::metrics_endpoint`] and by settings with metrics enabled; set it when the
    /// embedding program installs its own recorder). Default: off, so the request path skips
    /// building metric keys.
    pub fn record_metrics(mut self, on: bool) -> Self {
        self.record_metrics = on;
        self
    }

    /// Whether plain HTTP/1.1 requests for the UI upstream may take the forwarding fast path
    /// ([`Engine::H1`]: parsed in place and relayed by their framing, without hyper's
    /// dispatchers; see `docs/ARCHITECTURE.md`). It serves a request when the shared decision
    /// is a UI forward that needs nothing only hyper's path does (`auth_mode = forward`
    /// authenticates there), with the same access-log line, metrics, debug ring, UI rate limit
    /// and upstream concurrency cap as hyper's path; everything else is served by hyper either
    /// way. What the upstream and the client see is the same. Setting: `gateway_fast_path`.
    /// Default: on.
    pub fn http1_fast_path(mut self, on: bool) -> Self {
        self.fast_path = on;
        self
    }

    /// Serves the debug snapshot at [`DEBUG_PATH`], with `info()` merged in. Default: off (404).
    pub fn debug(mut self, info: DebugInfo) -> Self {
        self.debug = Some(info);
        self
    }

    /// Validates the paths and builds the gateway.
    ///
    /// # Errors
    /// [`BuildError`] for an invalid root path or API mount.
    pub fn build(mut self) -> Result<Gateway, BuildError> {
        if let Some(setup) = self.oidc_setup.take() {
            self.oidc = Some(setup.map_err(BuildError::Oidc)?);
        }
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
        let under_api = |p: &str| p == api || p.starts_with(&format!("{api}/"));
        let debug = match self.debug {
            Some(d) if under_api(DEBUG_PATH) => {
                tracing::warn!(api_mount = %api, "the API mount shadows {DEBUG_PATH}; the debug snapshot is disabled");
                drop(d);
                None
            }
            d => d,
        };
        let metrics = match (self.metrics_path, self.metrics_render) {
            (Some(p), Some(r)) if !under_api(&p) => Some((p, r)),
            (Some(p), Some(_)) => {
                tracing::warn!(path = %p, api_mount = %api, "the metrics path lies under the API mount; the metrics endpoint is disabled");
                None
            }
            _ => None,
        };
        let jwt = self.jwt.transpose().map_err(BuildError::Jwt)?;
        let rate = limits::RateLimits::new(&self.limits);
        // What keeps a request off the fast path (`decide::fast_forward`): every rule of
        // `Gateway::handle` and `Gateway::api` that only hyper's path carries out.
        let hyper_only = decide::HyperOnly {
            authenticate: self.forward_auth.is_some() || self.oidc.is_some(),
            bearer: jwt.is_some(),
            api_not_upstream: !matches!(self.api, ApiTarget::Upstream(_)),
            cors: self.api_headers.cors.is_some(),
            security_headers: self.api_headers.security_headers,
        };
        let header_policy = match &self.forward_auth {
            Some(fa) => self
                .header_policy
                .with_identity(fa.header_names().map(HeaderName::as_str)),
            None => self.header_policy,
        };
        let header_policy = match &self.oidc {
            Some(_) => header_policy.with_identity(
                fluxlit_auth::bff::IDENTITY_HEADERS
                    .iter()
                    .map(|(n, _)| *n)
                    .chain([fluxlit_auth::assertion::HEADER]),
            ),
            None => header_policy,
        };
        let fast_path = self.fast_path && self.ui.is_some();
        let pool = (!self.ui_workers.is_empty()).then(|| {
            Arc::new(pool::UiPool::new(
                self.ui_workers,
                &root,
                self.record_metrics,
            ))
        });
        Ok(Gateway {
            inner: Arc::new(Inner {
                pool,
                api_prefix: format!("{root}{api}"),
                root,
                api,
                ui: self.ui,
                api_target: self.api,
                readiness: self.readiness,
                proxy: proxy::Proxy::new(
                    self.connect_timeout,
                    self.read_timeout,
                    self.limits.clone(),
                    self.pool_max_idle,
                ),
                conns: limits::ConnLimiter::new(&self.limits),
                rate,
                limits: self.limits,
                drain_timeout: self.drain_timeout,
                stopping: std::sync::atomic::AtomicBool::new(false),
                trust: self.trust,
                request_id_trust: self.request_id_trust,
                header_policy,
                forward_auth: self.forward_auth,
                oidc: self.oidc,
                session_tunnels: Arc::default(),
                jwt,
                api_headers: self.api_headers,
                access_log: self.access_log,
                health_access_log: self.health_access_log,
                access_log_sink: self.access_log_sink,
                metrics,
                record_metrics: self.record_metrics,
                debug,
                recent: observe::Recent::default(),
                fast_path,
                hyper_only,
                request_metrics: Arc::new(observe::RequestMetrics::default()),
                served: ServedCounters::default(),
            }),
        })
    }
}

/// Why the `auth_mode = oidc` settings cannot make the backend-for-frontend (loading the
/// settings checks the same rules first, so these name what an embedding program changed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OidcSetupError {
    /// `public_base_url` is not an absolute http(s) URL.
    #[error("public_base_url {0:?} is not an absolute http(s) URL such as https://app.example.com")]
    PublicBaseUrl(String),
    /// An `auth_public_paths` entry is not a valid rule.
    #[error("auth_public_paths: {0}")]
    PublicPaths(String),
    /// The session store or the cookie secrets are unusable.
    #[error("{0}")]
    Store(String),
    /// The backend-for-frontend refused its configuration.
    #[error("{0}")]
    Bff(#[from] fluxlit_auth::bff::BffError),
}

/// The OIDC backend-for-frontend the `auth_mode = oidc` settings describe (docs/auth.md):
/// every URL from `public_base_url` (`Settings::oidc_redirect_uri`,
/// `Settings::post_logout_redirect_uri`), the session store (`cookie`, `memory`, or `redis` at
/// `auth_session_redis_url`), the cookie secrets, lifetime and chunks, the access rules,
/// `auth_required` and `auth_public_paths`.
///
/// # Errors
/// [`OidcSetupError`] naming the setting that cannot be used.
pub fn oidc_from_settings(s: &fluxlit_config::Settings) -> Result<OidcAuth, OidcSetupError> {
    use fluxlit_auth::bff::{AccessRules, Bff, BffConfig};
    let bad_url = || OidcSetupError::PublicBaseUrl(s.public_base_url.clone());
    let public_origin = s.public_origin().ok_or_else(bad_url)?;
    let redirect_uri = s.oidc_redirect_uri().ok_or_else(bad_url)?;
    let post_logout = s.post_logout_redirect_uri().ok_or_else(bad_url)?;
    // `auth_session_idle_timeout_s` (0: off); the settings refuse it with the cookie store.
    let idle = Duration::from_secs(s.auth_session_idle_timeout_s);
    if !idle.is_zero() && s.auth_session_store == fluxlit_config::SessionStore::Cookie {
        return Err(OidcSetupError::Store(
            "auth_session_idle_timeout_s needs auth_session_store = memory or redis".into(),
        ));
    }
    let store = match s.auth_session_store {
        fluxlit_config::SessionStore::Cookie => None,
        fluxlit_config::SessionStore::Memory => Some(fluxlit_auth::session::Store::Memory(
            Arc::new(fluxlit_auth::session::MemoryStore::default().with_idle_timeout(idle)),
        )),
        fluxlit_config::SessionStore::Redis => Some(fluxlit_auth::session::Store::Redis(Arc::new(
            fluxlit_auth::session::RedisStore::connect(
                &s.auth_session_redis_url,
                &s.auth_session_key_prefix,
            )
            .map_err(|e| OidcSetupError::Store(format!("auth_session_redis_url: {e}")))?
            .with_idle_timeout(idle),
        ))),
    };
    let rules = s
        .public_path_rules()
        .map_err(|e| OidcSetupError::PublicPaths(e.to_string()))?;
    let bff = Bff::new(BffConfig {
        oidc: fluxlit_auth::oidc::OidcConfig {
            issuer: s.oidc_issuer.clone(),
            client_id: s.oidc_client_id.clone(),
            client_secret: (!s.oidc_client_secret.is_empty())
                .then(|| s.oidc_client_secret.expose().to_owned()),
            redirect_uri,
            // `openid` is always requested by the relying party.
            scopes: s
                .oidc_scopes
                .iter()
                .filter(|sc| sc.as_str() != "openid")
                .cloned()
                .collect(),
        },
        route_prefix: s.auth_route_prefix(),
        root_path: s.public_mount().to_owned(),
        secure: public_origin.starts_with("https://"),
        public_origin,
        post_logout_redirect_uri: post_logout,
        cookie_secrets: s
            .auth_cookie_secrets
            .iter()
            .map(|x| x.expose().as_bytes().to_vec())
            .collect(),
        store,
        lifetime: Duration::from_secs(s.auth_session_lifetime_s),
        max_chunks: s.auth_session_max_chunks,
        access: AccessRules {
            emails: s.auth_allowed_emails.clone(),
            email_domains: s.auth_allowed_email_domains.clone(),
            groups: s.auth_allowed_groups.clone(),
            groups_claim: s.auth_groups_claim.clone(),
        },
        pass_access_token: s.auth_pass_access_token,
        backchannel_logout: s.auth_logout_backchannel,
        allowed_redirect_origins: s.auth_allowed_redirect_origins.clone(),
        compat_exchange: s
            .oidc_compat_exchange
            .then(|| fluxlit_auth::bff::CompatExchange {
                secret: s.oidc_bff_secret.expose().as_bytes().to_vec(),
            }),
    })?;
    let mut auth = OidcAuth::new(Arc::new(bff)).required(s.auth_required);
    if !rules.is_empty() {
        auth = auth.public_paths(Arc::new(move |m: &Method, p: &str| {
            rules.iter().any(|r| r.matches(m, p))
        }));
    }
    Ok(auth)
}

/// The bearer-token verifier the `jwt_*` settings describe: a shared secret (HS256 only), a
/// JWKS URL, or, with neither, the issuer's OpenID discovery document. What the gateway builds
/// for `auth_mode = jwt`; `fluxlit doctor` uses it to fetch the keys the same way.
///
/// # Errors
/// [`fluxlit_auth::jwt::JwtConfigError`] when the settings cannot make a verifier (no issuer or
/// audience, an empty secret, a JWKS URL or issuer that is not an http(s) URL).
pub fn jwt_from_settings(
    s: &fluxlit_config::Settings,
) -> Result<fluxlit_auth::jwt::JwtVerifier, fluxlit_auth::jwt::JwtConfigError> {
    use fluxlit_auth::jwt::{JwtConfig, JwtVerifier, KeySource};
    let keys = if !s.jwt_hs256_secret.is_empty() {
        KeySource::Hs256(s.jwt_hs256_secret.expose().as_bytes().to_vec())
    } else if !s.jwt_jwks_url.is_empty() {
        KeySource::jwks_url(&s.jwt_jwks_url)?
    } else {
        KeySource::Discovery
    };
    JwtVerifier::new(JwtConfig {
        issuer: s.jwt_issuer.clone(),
        audiences: s.jwt_audience.clone(),
        leeway_seconds: s.jwt_leeway_seconds,
        keys,
    })
}

/// Header names configured for Streamlit's `server.trustedUserHeaders` in the `streamlit run`
/// arguments (a JSON object `{"Header-Name": "user_key"}`); the gateway strips them from
/// clients like the other identity headers.
pub fn trusted_user_headers(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = if let Some(v) = a.strip_prefix("--server.trustedUserHeaders=") {
            Some(v.to_owned())
        } else if a == "--server.trustedUserHeaders" {
            it.next().cloned()
        } else {
            None
        };
        if let Some(v) = value
            && let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(&v)
        {
            out.extend(m.keys().cloned());
        }
    }
    out
}

struct Inner {
    root: String,
    api: String,
    /// `{root}{api}`, sent as `X-Forwarded-Prefix` to the API.
    api_prefix: String,
    ui: Option<Upstream>,
    /// The UI workers (`pool.rs`), when given as such ([`GatewayBuilder::ui_workers`]); while
    /// it does not route (one worker), `ui` is that worker.
    pool: Option<Arc<pool::UiPool>>,
    api_target: ApiTarget,
    readiness: Vec<ReadinessCheck>,
    proxy: proxy::Proxy,
    conns: limits::ConnLimiter,
    rate: limits::RateLimits,
    limits: Limits,
    drain_timeout: Duration,
    /// Set when [`Gateway::serve`]'s shutdown resolves: readiness is 503 from then on.
    stopping: std::sync::atomic::AtomicBool,
    trust: TrustPolicy,
    request_id_trust: RequestIdTrust,
    header_policy: fluxlit_auth::HeaderPolicy,
    api_headers: ApiHeaders,
    access_log: bool,
    health_access_log: bool,
    /// Where access-log lines are written without `tracing`'s formatter, when set.
    access_log_sink: Option<AccessLogSink>,
    metrics: Option<(String, MetricsRender)>,
    record_metrics: bool,
    debug: Option<DebugInfo>,
    recent: observe::Recent,
    /// Plain HTTP/1.1 UI requests take the fast path (see [`GatewayBuilder::http1_fast_path`]).
    fast_path: bool,
    /// What keeps requests off the fast path (`decide::fast_forward`).
    hyper_only: decide::HyperOnly,
    /// `auth_mode = forward` ([`ForwardAuth`]).
    forward_auth: Option<ForwardAuth>,
    /// `auth_mode = oidc` ([`OidcAuth`]).
    oidc: Option<OidcAuth>,
    /// WebSocket tunnels by login session (`auth_mode = oidc`).
    session_tunnels: Arc<sessions::SessionTunnels>,
    /// `auth_mode = jwt`: the bearer check every API request passes first (`Gateway::api`).
    jwt: Option<Arc<fluxlit_auth::jwt::JwtVerifier>>,
    /// The request metrics' handles (used when `record_metrics`).
    request_metrics: Arc<observe::RequestMetrics>,
    /// Requests served per engine.
    served: ServedCounters,
}

/// 503 when several UI workers are configured and none runs (`pool.rs`); both engines answer
/// it (the fast path hands such a request to hyper's path).
fn no_worker(rid: &HeaderValue) -> Response<Body> {
    let mut r = plain_rid(
        StatusCode::SERVICE_UNAVAILABLE,
        "FluxLit: no Streamlit worker is running; retry shortly\n",
        rid,
    );
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Which engine served a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Engine {
    /// The HTTP/1.1 fast path (`h1.rs`): plain HTTP/1.1 requests for the UI upstream, and for
    /// the API's HTTP upstream when no rule only hyper's path applies holds
    /// (authentication, CORS, security headers).
    H1,
    /// hyper's server: everything else (HTTP/2, the API otherwise, the gateway's own
    /// endpoints, every refusal).
    Hyper,
}

/// How many requests each engine has served since the gateway was built (see
/// [`Gateway::served`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Served {
    /// Requests forwarded by the HTTP/1.1 fast path ([`Engine::H1`]).
    pub h1: u64,
    /// Requests handled by hyper's server ([`Engine::Hyper`]), answered or forwarded.
    pub hyper: u64,
}

/// The per-engine request counters (relaxed atomics: one increment per request).
#[derive(Debug, Default)]
struct ServedCounters {
    h1: AtomicU64,
    hyper: AtomicU64,
}

impl ServedCounters {
    fn count(&self, engine: Engine) {
        let c = match engine {
            Engine::H1 => &self.h1,
            Engine::Hyper => &self.hyper,
        };
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
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

/// Per-connection context handed to [`Gateway::handle`].
#[derive(Debug, Clone)]
struct ConnCtx {
    hop: ClientHop,
    permit: Option<Arc<limits::ConnPermit>>,
    /// The connection's own upstream connections (see `affinity`).
    affinity: Option<Arc<affinity::Affinity>>,
}

impl Inner {
    /// The bearer check of an API request that goes on without a login session: the `jwt_*`
    /// verifier (`auth_mode = jwt`, or `oidc` with `jwt_issuer`) and, with
    /// `oidc_compat_exchange`, the first-party tokens of the exchange flow
    /// (`fluxlit_auth::bff::Bff::compat_bearer`). With both, a first-party token passes and
    /// anything else gets the `jwt_*` verifier's answer; with neither, nothing is checked.
    async fn verify_bearer(&self, field: Option<&[u8]>) -> Result<(), fluxlit_auth::jwt::Denial> {
        let compat = self.oidc.as_ref().and_then(|o| o.bff.compat_bearer());
        match (compat, &self.jwt) {
            (None, None) => Ok(()),
            (Some(c), None) => c.verify(field).await.map(drop),
            (None, Some(j)) => j.verify(field).await.map(drop),
            (Some(c), Some(j)) => match c.verify(field).await {
                Ok(_) => Ok(()),
                Err(_) => j.verify(field).await.map(drop),
            },
        }
    }

    /// The rate limit of `dispatch` (`api`, `streamlit`, `internal`) for `client_ip`, as both
    /// engines apply it: `Err` with the 429 that refuses the request (`Retry-After` in whole
    /// seconds, at least 1), logged and counted ([`observe::names::RATE_LIMITED`]).
    fn rate_gate(
        &self,
        dispatch: &'static str,
        client_ip: std::net::IpAddr,
        rid: &HeaderValue,
    ) -> Result<(), Box<Response<Body>>> {
        let Err(wait) = self
            .rate
            .check(dispatch == observe::DISPATCH_API, client_ip)
        else {
            return Ok(());
        };
        metrics::counter!(observe::names::RATE_LIMITED, "dispatch" => dispatch).increment(1);
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        tracing::info!(request_id = rid.to_str().unwrap_or(""), client_ip = %client_ip, dispatch, retry_after_s = secs, "rate limited");
        let mut r = plain_rid(
            StatusCode::TOO_MANY_REQUESTS,
            format!("FluxLit: too many requests from {client_ip}; retry in {secs} s\n"),
            rid,
        );
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
        Err(Box::new(r))
    }

    /// The public API prefix, `{prefix}{api}`: the prefix a trusted proxy stripped
    /// (`view_prefix`, from `X-Forwarded-Prefix`) or else the root path, then the API mount.
    /// Both engines send it as the API hop's `X-Forwarded-Prefix` and rewrite the API's
    /// `Location` and `Set-Cookie` under it (`rewrite.rs`).
    fn api_public_prefix(&self, view_prefix: Option<&str>) -> String {
        let outer = view_prefix.unwrap_or(&self.root);
        let mut p = String::with_capacity(outer.len() + self.api.len());
        p.push_str(outer);
        p.push_str(&self.api);
        p
    }

    /// The gateway's own endpoints that are on, for [`decide::decide`].
    fn own_endpoints(&self) -> decide::OwnEndpoints<'_> {
        decide::OwnEndpoints {
            metrics: self.metrics.as_ref().map(|(p, _)| p.as_str()),
            debug: self.debug.is_some(),
            jwks: self.oidc.is_some(),
        }
    }
}

impl Gateway {
    /// A builder with the defaults documented on [`GatewayBuilder`].
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    /// How many requests each engine has served so far: tests assert with it which engine
    /// carried a request; operators can read the fast path's share.
    pub fn served(&self) -> Served {
        let c = &self.inner.served;
        let load = |a: &AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        Served {
            h1: load(&c.h1),
            hyper: load(&c.hyper),
        }
    }

    /// The normalised root path (`""` when none).
    pub fn root_path(&self) -> &str {
        &self.inner.root
    }

    /// The normalised API mount.
    pub fn api_mount(&self) -> &str {
        &self.inner.api
    }

    /// Whether every readiness input is ready, and each input's state.
    /// Once [`Gateway::serve`] has been told to shut down, a `gateway` input reads
    /// `NotReady("shutting down")`.
    /// A quorum check's members follow it in the list (named by the members; they do not count
    /// for readiness, their check does).
    pub fn readiness(&self) -> (bool, Vec<(String, ComponentState)>) {
        let mut states: Vec<(String, ComponentState)> = Vec::new();
        let mut ready = true;
        for c in &self.inner.readiness {
            let (state, members) = c.states();
            ready &= state.is_ready();
            states.push((c.name.to_string(), state));
            states.extend(members);
        }
        if self
            .inner
            .stopping
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            states.push((
                "gateway".to_owned(),
                ComponentState::NotReady("shutting down".into()),
            ));
            ready = false;
        }
        (ready, states)
    }

    /// The last 32 dispatches (request id, dispatch, path), oldest first.
    pub fn recent_dispatches(&self) -> Vec<observe::Dispatch> {
        self.inner.recent.snapshot()
    }

    /// Handles one request from `hop`, with any body (hyper's `Incoming`, an axum or tower
    /// body, `Full` in a test): so the gateway can be mounted in a tower/axum server or driven
    /// with `oneshot`. Never fails: every problem is a response. Upstream connections come from
    /// the pool (no client connection of the gateway's own to keep them on).
    pub async fn handle<B>(&self, req: Request<B>, hop: &ClientHop) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let req = req.map(|b| cap::Inbound::Boxed(b.map_err(Into::into).boxed_unsync()));
        self.handle_conn(
            req,
            &ConnCtx {
                hop: hop.clone(),
                permit: None,
                affinity: None,
            },
        )
        .await
    }

    async fn handle_conn(&self, req: Request<cap::Inbound>, ctx: &ConnCtx) -> Response<Body> {
        let start = Instant::now();
        self.inner.served.count(Engine::Hyper);
        // A body left unread by whatever answers is drained, not reset (`cap::Lingering`).
        let expect = req.headers().contains_key(http::header::EXPECT);
        let mut req = req.map(|b| cap::Lingering::new(b, expect));
        let inner = &*self.inner;
        fluxlit_auth::mark_sensitive(req.headers_mut());
        // Forward auth takes the front proxy's identity fields before they are stripped.
        let mut captured = inner
            .forward_auth
            .as_ref()
            .map(|fa| fa.capture(ctx.hop.peer.ip(), req.headers()));
        inner.header_policy.strip_identity(req.headers_mut());
        let view = ClientView::resolve(
            &inner.trust,
            ctx.hop.peer,
            ctx.hop.local.port(),
            req.headers(),
        );
        let rid = observe::request_id(
            req.headers(),
            observe::keeps_client_request_id(inner.request_id_trust, view.peer_trusted),
        );
        req.headers_mut().insert(observe::REQUEST_ID, rid.clone());
        // RFC 9112 §3.2: one valid Host, agreeing with an absolute-form target.
        if let Err(e) = headers::check_host(req.version(), req.headers(), req.uri().authority()) {
            let mut r = plain_rid(StatusCode::BAD_REQUEST, format!("FluxLit: {e}\n"), &rid);
            r.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            return with_rid(r, &rid);
        }
        // One measure of the head on both engines (`framing::request_head_size`).
        let head_size = framing::request_head_size(
            req.method().as_str(),
            req.uri().path_and_query().map_or("/", |pq| pq.as_str()),
            req.headers()
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
        );
        if head_size > inner.limits.max_header_bytes.max(8192) {
            let mut r = plain_rid(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!(
                    "FluxLit: the request head is larger than {} bytes (gateway_max_request_header_bytes)\n",
                    inner.limits.max_header_bytes.max(8192)
                ),
                &rid,
            );
            r.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            return with_rid(r, &rid);
        }
        // CONNECT asks for a tunnel to another host (RFC 9110 §9.3.6): a gateway in front of
        // its own upstreams does not offer that (the fast path hands it here).
        if req.method() == Method::CONNECT {
            let mut r = plain_rid(
                StatusCode::NOT_IMPLEMENTED,
                "FluxLit: CONNECT is not supported by this gateway\n",
                &rid,
            );
            r.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            return with_rid(r, &rid);
        }
        // RFC 9112 §6.3: one unambiguous body length, by the rules the fast path uses too
        // (`framing.rs`); the gateway then sends the length it read, as one decimal field.
        match framing::request_framing(
            req.headers()
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
        ) {
            Ok(framing::BodyFraming::Length(n)) => {
                req.headers_mut()
                    .insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            Ok(_) => {}
            Err(e) => {
                let mut r = plain_rid(e.status(), format!("FluxLit: {e}\n"), &rid);
                r.headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                return with_rid(r, &rid);
            }
        }
        // A clone of the target shares its bytes (no copy); the path borrows from it.
        let target = req.uri().clone();
        let raw_path = target.path();
        // Access log and metrics read the exchange when the response body is done; with both
        // off (the default) nothing is recorded, counted or wrapped.
        let observing = inner.access_log || inner.record_metrics;
        let websocket = headers::upgrade_request(req.headers()).is_some();
        let method = req.method().clone();

        // The one decision both engines carry out (`decide.rs`).
        let route = match decide::decide(raw_path, &inner.root, &inner.api, inner.own_endpoints()) {
            Decision::Refuse(e) => {
                return with_rid(
                    plain_rid(StatusCode::BAD_REQUEST, format!("FluxLit: {e}\n"), &rid),
                    &rid,
                );
            }
            // The gateway's own endpoints: answered here, never forwarded.
            Decision::Metrics | Decision::Debug | Decision::Client | Decision::Jwks
                if method != Method::GET && method != Method::HEAD =>
            {
                return with_rid(method_not_allowed(), &rid);
            }
            Decision::Metrics => {
                let render = inner.metrics.as_ref().map(|(_, r)| r());
                let mut r = Response::new(response::full(render.unwrap_or_default()));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                return with_rid(r, &rid);
            }
            Decision::Debug => return with_rid(self.debug_snapshot(), &rid),
            Decision::Client => return with_rid(self.client_view(&view), &rid),
            Decision::Jwks => {
                let jwks = inner
                    .oidc
                    .as_ref()
                    .map(|o| o.bff.jwks())
                    .unwrap_or_default();
                return with_rid(json(StatusCode::OK, &jwks), &rid);
            }
            Decision::NotFound => {
                return with_rid(plain(StatusCode::NOT_FOUND, "Not Found\n"), &rid);
            }
            Decision::Healthz => Route::Healthz,
            Decision::Readyz => Route::Readyz,
            Decision::Api { path } => Route::Api { path },
            Decision::Ui { path } => Route::Ui { path },
        };

        let dispatch: &'static str = match &route {
            Route::Healthz | Route::Readyz | Route::Gateway { .. } => observe::DISPATCH_INTERNAL,
            Route::Api { .. } => observe::DISPATCH_API,
            Route::Ui { .. } => observe::DISPATCH_UI,
        };
        let is_health = matches!(route, Route::Healthz | Route::Readyz);
        let bytes_in = observing.then(|| Arc::new(AtomicU64::new(0)));
        let mut upstream_name: Option<Arc<str>> = None;
        // The UI worker's id (from 1) the request was placed on, with several (`pool.rs`).
        let mut worker_id: Option<usize> = None;

        let (mut resp, slot) = 'resp: {
            if !is_health && let Err(r) = inner.rate_gate(dispatch, view.client_ip, &rid) {
                break 'resp (*r, None);
            }
            // `auth_mode = oidc` (`auth.rs`, `fluxlit_auth::bff`): its routes, then the session.
            let mut oidc_identity = Vec::new();
            let mut who = None;
            let mut session_guard = None;
            let mut check_bearer = inner.oidc.is_none();
            if let Some(oa) = &inner.oidc {
                if let Route::Api { path } = &route
                    && let Some(sub) = fluxlit_auth::bff::Bff::route_of(path)
                {
                    let (parts, body) = req.into_parts();
                    // Only the back-channel logout reads a body (a form, bounded); any other
                    // body is drained when dropped (`cap::Lingering`).
                    let body = if oa.bff.route_reads_body(sub, &method) {
                        let limited =
                            http_body_util::Limited::new(body, fluxlit_auth::bff::MAX_ROUTE_BODY);
                        match http_body_util::BodyExt::collect(limited).await {
                            Ok(b) => b.to_bytes(),
                            Err(_) => {
                                break 'resp (
                                    plain_rid(
                                        StatusCode::PAYLOAD_TOO_LARGE,
                                        "FluxLit: the request body is too large for this route\n",
                                        &rid,
                                    ),
                                    None,
                                );
                            }
                        }
                    } else {
                        drop(body);
                        bytes::Bytes::new()
                    };
                    let answer = oa
                        .bff
                        .handle_route(sub, &method, &target, &parts.headers, &body)
                        .await;
                    if let Some(what) = &answer.ended {
                        inner.session_tunnels.end(what);
                    }
                    break 'resp (answer.response.map(response::full), None);
                }
                let under_root = raw_path
                    .strip_prefix(inner.root.as_str())
                    .unwrap_or(raw_path);
                let public = is_health
                    || matches!(&route, Route::Ui { path } if auth::is_public_ui_path(path, &inner.root))
                    || oa.is_public(&method, under_root);
                if websocket
                    && let Some(origin) = req.headers().get(http::header::ORIGIN)
                    && origin.as_bytes() != oa.bff.public_origin().as_bytes()
                {
                    tracing::info!(request_id = rid.to_str().unwrap_or(""), origin = ?origin, "WebSocket refused: its Origin is not the public origin (auth_mode = oidc)");
                    break 'resp (
                        json(
                            StatusCode::FORBIDDEN,
                            &serde_json::json!({"detail": "Cross-origin WebSocket refused"}),
                        ),
                        None,
                    );
                }
                match oa.bff.authenticate(req.headers()).await {
                    Ok(Some(a)) => {
                        oidc_identity = oa.bff.identity_headers(&a.session);
                        who = Some(a.session.identity.clone());
                        if matches!(route, Route::Api { .. })
                            && !req.headers().contains_key(http::header::AUTHORIZATION)
                            && let Some(v) = oa.bff.api_authorization(&a.session)
                        {
                            oidc_identity.push((http::header::AUTHORIZATION, v));
                        }
                        if websocket {
                            session_guard = Some(inner.session_tunnels.guard(
                                &a.session.sid,
                                &a.session.identity.sub,
                                a.ticket.as_deref(),
                            ));
                            if let Some(store) = oa.bff.store() {
                                let revocations = store.clone();
                                inner
                                    .session_tunnels
                                    .listen(move || revocations.revocations());
                                let (bff, store) = (oa.bff.clone(), store.clone());
                                inner.session_tunnels.refresh_in_background(move |ticket| {
                                    let (bff, store) = (bff.clone(), store.clone());
                                    async move {
                                        if let Err(e) = bff.refresh_if_due(&store, &ticket).await {
                                            tracing::warn!(error = %e, "background token refresh: the session store is unavailable");
                                        }
                                    }
                                });
                            }
                        }
                    }
                    Ok(None) if public || !oa.required => {}
                    Ok(None) => {
                        let api = matches!(route, Route::Api { .. });
                        if api
                            && (inner.jwt.is_some() || oa.bff.compat_bearer().is_some())
                            && req.headers().contains_key(http::header::AUTHORIZATION)
                        {
                            check_bearer = true;
                        } else {
                            let class = if api {
                                fluxlit_auth::bff::RequestClass::Api
                            } else {
                                fluxlit_auth::bff::RequestClass::of_ui(
                                    &method,
                                    req.headers(),
                                    websocket,
                                )
                            };
                            tracing::info!(request_id = rid.to_str().unwrap_or(""), client_ip = %view.client_ip, class = ?class, "request without a login session");
                            break 'resp (
                                oa.bff.unauthenticated(class, &target).map(response::full),
                                None,
                            );
                        }
                    }
                    Err(_) if public => {}
                    Err(e) => {
                        break 'resp (
                            fluxlit_auth::bff::store_unavailable(&e).map(response::full),
                            None,
                        );
                    }
                }
                oa.bff.strip_own_cookies(req.headers_mut());
            }
            // `auth_mode = forward` (`auth.rs`): everything but the health checks.
            let identity = match (&inner.forward_auth, &route) {
                (Some(fa), Route::Api { .. } | Route::Ui { .. }) if !matches!(&route, Route::Ui { path } if auth::is_public_ui_path(path, &inner.root)) =>
                {
                    let https = view.proto.eq_ignore_ascii_case("https");
                    match fa.verdict(
                        ctx.hop.peer.ip(),
                        https,
                        captured.take().unwrap_or_default(),
                    ) {
                        auth::Verdict::Deny(status, detail) => {
                            tracing::info!(request_id = rid.to_str().unwrap_or(""), peer = %ctx.hop.peer.ip(), status = status.as_u16(), reason = detail, "forward-auth refused the request");
                            break 'resp (
                                json(status, &serde_json::json!({"detail": detail})),
                                None,
                            );
                        }
                        auth::Verdict::Identity(fields) => fields,
                    }
                }
                _ => oidc_identity,
            };
            match route {
                Route::Healthz => match method {
                    Method::GET | Method::HEAD => (
                        json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
                        None,
                    ),
                    _ => (method_not_allowed(), None),
                },
                Route::Readyz => match method {
                    Method::GET | Method::HEAD => (self.readyz(), None),
                    _ => (method_not_allowed(), None),
                },
                // Answered above; kept for completeness.
                Route::Gateway { .. } => (plain(StatusCode::NOT_FOUND, "Not Found\n"), None),
                Route::Api { path } => {
                    let public_prefix = inner.api_public_prefix(view.prefix.as_deref());
                    let req = req.map(|b| observe::Counted::new(b, bytes_in.clone()));
                    let (r, slot) = self
                        .api(
                            req,
                            &path,
                            &view,
                            &rid,
                            &public_prefix,
                            ctx,
                            ApiAuth {
                                identity: &identity,
                                session: session_guard,
                                check_bearer,
                                who: who.as_ref(),
                            },
                            &mut upstream_name,
                        )
                        .await;
                    (r, slot)
                }
                Route::Ui { path } => match &inner.ui {
                    Some(u) => {
                        upstream_name = Some(u.name.clone());
                        let prefix = view
                            .prefix
                            .clone()
                            .or_else(|| (!inner.root.is_empty()).then(|| inner.root.clone()));
                        let (mut parts, body) = req.into_parts();
                        // Several workers: the one rule picks the worker (`pool.rs`).
                        let placed = match inner.pool.as_ref().filter(|p| p.routing()) {
                            None => None,
                            Some(pool) => {
                                match pool.place(&path, &pool::ask_of(&parts.headers, websocket)) {
                                    Some(p) => Some((pool, p)),
                                    None => break 'resp (no_worker(&rid), None),
                                }
                            }
                        };
                        if let Some((_, p)) = &placed {
                            worker_id = Some(p.worker);
                            pool::strip_cookie_fields(&mut parts.headers);
                        }
                        let u = placed.as_ref().map_or(u, |(_, p)| &p.upstream);
                        let req = Request::from_parts(
                            parts,
                            observe::Counted::new(body, bytes_in.clone()),
                        );
                        let hop = proxy::UpstreamHop {
                            view: &view,
                            request_id: &rid,
                            prefix: prefix.as_deref(),
                            body_cap: (
                                inner.limits.max_ui_body,
                                "gateway_max_proxy_request_body_bytes",
                            ),
                            conn: ctx.permit.clone(),
                            policy: &inner.header_policy,
                            ui: true,
                            affinity: ctx.affinity.as_deref(),
                            identity: &identity,
                            session: session_guard,
                            worker: match &placed {
                                Some((pool, p)) => Some((*pool, p.worker, p.replay.clone())),
                                // One worker: its WebSockets are tapped all the same (`pool.rs`).
                                None => inner
                                    .pool
                                    .as_ref()
                                    .filter(|_| websocket)
                                    .map(|p| (p, 1, None)),
                            },
                        };
                        let f = inner.proxy.forward(u, req, &path, hop).await;
                        let mut resp = f.response;
                        if let Some(cookie) = placed.and_then(|(_, p)| p.set_cookie) {
                            resp.headers_mut().append(http::header::SET_COOKIE, cookie);
                        }
                        (resp, f.slot)
                    }
                    None => (
                        plain_rid(
                            StatusCode::NOT_FOUND,
                            "FluxLit: no UI upstream is configured\n",
                            &rid,
                        ),
                        None,
                    ),
                },
            }
        };
        // Written once the worker is known (after the placement, so after the upstream's
        // response head).
        if inner.debug.is_some() {
            inner.recent.push(observe::Dispatch {
                request_id: rid.to_str().unwrap_or("").to_owned(),
                dispatch,
                path: raw_path.to_owned(),
                worker: worker_id,
            });
        }
        resp.headers_mut().insert(observe::REQUEST_ID, rid.clone());
        let status = resp.status().as_u16();
        let exchange = match bytes_in {
            Some(bytes_in) if observing => Some(observe::Exchange {
                start,
                request_id: rid,
                dispatch,
                method,
                websocket: websocket && status == 101,
                target,
                client_ip: view.client_ip,
                upstream: upstream_name,
                worker: worker_id,
                status,
                bytes_in,
                log: (inner.access_log && (!is_health || inner.health_access_log)).then(|| {
                    inner
                        .access_log_sink
                        .clone()
                        .map_or(observe::LogTo::Tracing, observe::LogTo::Sink)
                }),
                metrics: inner.record_metrics.then(|| inner.request_metrics.clone()),
            }),
            _ => None,
        };
        if exchange.is_none() && slot.is_none() {
            return resp;
        }
        resp.map(|b| observe::Observed::new(b, exchange, slot).boxed_unsync())
    }

    #[allow(clippy::too_many_arguments)]
    async fn api(
        &self,
        req: Request<observe::Counted<cap::Lingering>>,
        path: &str,
        view: &ClientView,
        rid: &HeaderValue,
        public_prefix: &str,
        ctx: &ConnCtx,
        auth: ApiAuth<'_>,
        upstream_name: &mut Option<Arc<str>>,
    ) -> (Response<Body>, Option<tokio::sync::OwnedSemaphorePermit>) {
        let inner = &*self.inner;
        let ApiAuth {
            identity,
            session,
            check_bearer,
            who,
        } = auth;
        let session = session.as_ref();
        let cors = inner.api_headers.cors.clone();
        let handler = |req: Request<observe::Counted<cap::Lingering>>| async move {
            // `auth_mode = jwt`: no API request goes on without a valid bearer token. Every API
            // request reaches the API here, on whichever engine it arrived: the bearer check is
            // a `decide::HyperOnly` reason, so the fast path hands every API request to hyper
            // while it applies.
            // With `auth_mode = oidc`, only a request without a login session is checked here.
            if check_bearer {
                let field = req.headers().get(http::header::AUTHORIZATION);
                if let Err(denial) = inner.verify_bearer(field.map(HeaderValue::as_bytes)).await {
                    tracing::info!(
                        request_id = rid.to_str().unwrap_or(""),
                        client_ip = %view.client_ip,
                        status = denial.status().as_u16(),
                        reason = denial.reason(),
                        "API request denied by the bearer-token check"
                    );
                    return (response::denied(&denial), None);
                }
            }
            let r: (Response<Body>, Option<tokio::sync::OwnedSemaphorePermit>) = match &inner
                .api_target
            {
                ApiTarget::None => (
                    json(
                        StatusCode::NOT_FOUND,
                        &serde_json::json!({"detail": "Not Found", "reason": "no API is configured (set api_command or api_upstream)"}),
                    ),
                    None,
                ),
                ApiTarget::Upstream(u) => {
                    let hop = proxy::UpstreamHop {
                        view,
                        request_id: rid,
                        prefix: Some(public_prefix),
                        body_cap: (
                            inner.limits.max_api_body,
                            "gateway_max_api_request_body_bytes",
                        ),
                        conn: ctx.permit.clone(),
                        policy: &inner.header_policy,
                        ui: false,
                        affinity: ctx.affinity.as_deref(),
                        identity,
                        session: session.cloned(),
                        worker: None,
                    };
                    let f = inner.proxy.forward(u, req, path, hop).await;
                    let mut resp = f.response;
                    if let Some(ep) = u.endpoint.borrow().clone() {
                        let host = view.host.as_ref().and_then(|h| h.to_str().ok());
                        let origin = host.map(|h| format!("{}://{h}", view.proto));
                        rewrite::api_response(
                            resp.headers_mut(),
                            &rewrite::Public {
                                prefix: public_prefix,
                                host,
                                upstream: ep.authority.as_str(),
                                origin: origin.as_deref(),
                            },
                        );
                    }
                    (resp, f.slot)
                }
                ApiTarget::Service(svc) => {
                    let (mut parts, body) = req.into_parts();
                    match rewrite_path(&parts.uri, path) {
                        Ok(u) => parts.uri = u,
                        Err(e) => {
                            return (
                                plain_rid(
                                    StatusCode::BAD_REQUEST,
                                    format!("FluxLit: invalid request target: {e}\n"),
                                    rid,
                                ),
                                None,
                            );
                        }
                    }
                    // The same hop rules as a forward: hop-by-hop fields go (a WebSocket
                    // upgrade keeps exactly `Connection: upgrade` and `Upgrade: websocket`, so an
                    // axum WebSocket route still sees it).
                    let websocket = headers::upgrade_request(&parts.headers).is_some();
                    decide::retain_request_fields(&mut parts.headers, &inner.header_policy, false);
                    for (name, value) in identity {
                        parts.headers.insert(name.clone(), value.clone());
                    }
                    // `auth_mode = oidc`: the session's identity as a request extension, so an
                    // axum handler takes `Extension<fluxlit_auth::session::SessionIdentity>`.
                    if let Some(who) = who {
                        parts.extensions.insert(who.clone());
                    }
                    if websocket {
                        parts.headers.insert(
                            http::header::CONNECTION,
                            HeaderValue::from_static("upgrade"),
                        );
                        parts
                            .headers
                            .insert(http::header::UPGRADE, headers::WEBSOCKET);
                    }
                    view.apply(&mut parts.headers, Some(public_prefix));
                    // The gateway's id, whatever `Connection` named.
                    parts.headers.insert(observe::REQUEST_ID, rid.clone());
                    let cap = inner.limits.max_api_body;
                    let declared: Option<u64> = parts
                        .headers
                        .get(http::header::CONTENT_LENGTH)
                        .and_then(|v| framing::content_length(v.as_bytes()));
                    if cap > 0 && declared.is_some_and(|n| n > cap) {
                        cap::drain(body);
                        return (
                            proxy::too_large(cap, "gateway_max_api_request_body_bytes", rid),
                            None,
                        );
                    }
                    let body: Body = if cap > 0 {
                        cap::Capped::new(body, cap).boxed_unsync()
                    } else {
                        body.map_err(Into::into).boxed_unsync()
                    };
                    let mut resp = svc.call(Request::from_parts(parts, body)).await;
                    let host = view.host.as_ref().and_then(|h| h.to_str().ok());
                    let origin = host.map(|h| format!("{}://{h}", view.proto));
                    rewrite::api_response(
                        resp.headers_mut(),
                        &rewrite::Public {
                            prefix: public_prefix,
                            host,
                            upstream: "",
                            origin: origin.as_deref(),
                        },
                    );
                    (resp, None)
                }
            };
            r
        };
        if let ApiTarget::Upstream(u) = &inner.api_target {
            *upstream_name = Some(u.name.clone());
        }
        let (mut resp, slot) = match cors {
            Some(layer) => {
                let slot_cell: std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>> =
                    std::sync::Mutex::new(None);
                let svc = layer.layer(tower::service_fn(
                    |req: Request<observe::Counted<cap::Lingering>>| {
                        let slot_cell = &slot_cell;
                        let fut = handler(req);
                        async move {
                            let (r, s) = fut.await;
                            if let Ok(mut c) = slot_cell.lock() {
                                *c = s;
                            }
                            Ok::<_, Infallible>(r)
                        }
                    },
                ));
                let r = match svc.oneshot(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                let s = slot_cell.lock().ok().and_then(|mut c| c.take());
                (r, s)
            }
            None => handler(req).await,
        };
        if inner.api_headers.security_headers {
            let h = resp.headers_mut();
            for (name, value) in [
                ("x-content-type-options", "nosniff"),
                ("x-frame-options", "SAMEORIGIN"),
                ("referrer-policy", "strict-origin-when-cross-origin"),
            ] {
                h.entry(name).or_insert(HeaderValue::from_static(value));
            }
            if view.proto == "https" {
                h.entry("strict-transport-security")
                    .or_insert(HeaderValue::from_static(
                        "max-age=63072000; includeSubDomains",
                    ));
            }
        }
        (resp, slot)
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
            metrics::gauge!(observe::names::READY, "component" => name.clone())
                .set(if state.is_ready() { 1.0 } else { 0.0 });
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

    /// The answer at [`CLIENT_PATH`].
    fn client_view(&self, view: &ClientView) -> Response<Body> {
        let host = view.host.as_ref().and_then(|h| h.to_str().ok());
        let prefix = view.prefix.as_deref().unwrap_or(&self.inner.root);
        let mut r = json(
            StatusCode::OK,
            &serde_json::json!({
                "scheme": view.proto,
                "host": host,
                "port": view.port,
                "prefix": prefix,
                "client_ip": view.client_ip.to_string(),
                "forwarded_trusted": view.peer_trusted,
            }),
        );
        r.headers_mut().insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        r
    }

    /// Open WebSocket sessions on each UI worker, worker 1 first (every worker ever added);
    /// empty with a single UI upstream and with one worker before a second was added (see
    /// [`GatewayBuilder::ui_workers`]). Also in the debug snapshot as
    /// `gateway.ui_worker_sessions`.
    pub fn ui_worker_sessions(&self) -> Vec<usize> {
        self.inner
            .pool
            .as_ref()
            .filter(|p| p.routing())
            .map(|p| p.open_sessions())
            .unwrap_or_default()
    }

    /// A handle to add and drain UI workers while the gateway runs (rolling restarts,
    /// docs/scaling.md); `None` unless it was built with [`GatewayBuilder::ui_workers`].
    pub fn ui_workers(&self) -> Option<UiWorkers> {
        self.inner.pool.clone().map(UiWorkers::new)
    }

    fn debug_snapshot(&self) -> Response<Body> {
        let inner = &*self.inner;
        let Some(info) = &inner.debug else {
            return plain(StatusCode::NOT_FOUND, "Not Found\n");
        };
        let (ready, states) = self.readiness();
        let readiness: serde_json::Map<String, serde_json::Value> = states
            .iter()
            .map(|(n, s)| (n.clone(), serde_json::Value::String(format!("{s:?}"))))
            .collect();
        let mut v = serde_json::json!({
            "fluxlit_debug": true,
            "gateway": {
                "root_path": inner.root,
                "api_prefix": inner.api_prefix,
                "trust_proxy": inner.trust.enabled(),
                "active_tunnels": self.active_tunnels(),
                "ui_worker_sessions": self.ui_worker_sessions(),
                "ready": ready,
                "readiness": readiness,
            },
            "recent_dispatches": inner.recent.snapshot(),
        });
        if let (Some(obj), serde_json::Value::Object(extra)) = (v.as_object_mut(), info()) {
            obj.extend(extra);
        }
        json(StatusCode::OK, &v)
    }

    /// Serves connections from `listener` until `shutdown` resolves; then readiness turns 503
    /// (`gateway: not ready: shutting down`), accepting stops, and it waits, up to the drain
    /// timeout, for in-flight HTTP requests to finish (idle keep-alive connections are closed at
    /// once). WebSocket tunnels do not hold this wait (a Streamlit session never ends by
    /// itself): they keep running, on both engines, until the caller stops the upstreams
    /// (Streamlit then closes its WebSockets with code 1012, through the tunnels) and calls
    /// [`Gateway::drain_tunnels`] to close what remains.
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
            .header_read_timeout(self.inner.limits.header_read_timeout)
            .max_buf_size(self.inner.limits.max_header_bytes.max(8192) * 2);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.inner.limits.http2_max_streams.max(1))
            .max_header_list_size(
                u32::try_from(self.inner.limits.max_header_bytes).unwrap_or(u32::MAX),
            );
        let builder = Arc::new(builder);
        // Every client connection's task, for the drain; tunnels are tracked apart.
        let conns = tokio_util::task::TaskTracker::new();
        // Tells every connection to close once idle (hyper's gracefully: GOAWAY on HTTP/2).
        let closing = tokio_util::sync::CancellationToken::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (mut stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // EMFILE and friends: back off briefly instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let peer_ip = peer.ip().to_canonical();
                    let permit = match self.inner.conns.admit(peer_ip, self.inner.trust.trusts(peer_ip)) {
                        Ok(p) => Arc::new(p),
                        Err(why) => {
                            let (reason, setting) = match why {
                                limits::Refused::Total => ("connections", "gateway_max_connections"),
                                limits::Refused::PerIp => ("connections_per_ip", "gateway_max_connections_per_ip"),
                            };
                            metrics::counter!(observe::names::SHED, "reason" => reason).increment(1);
                            tracing::warn!(peer = %peer, setting, "connection refused: limit reached");
                            tokio::spawn(async move {
                                let body = format!("FluxLit: too many connections ({setting}); retry shortly\n");
                                let msg = format!("HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(msg.as_bytes())).await;
                                let _ = stream.shutdown().await;
                            });
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let gw = self.clone();
                    let builder = builder.clone();
                    let closing = closing.clone();
                    conns.spawn(async move {
                        let _permit = permit.clone();
                        let hop = ClientHop { peer, local };
                        let inner = &*gw.inner;
                        let write_timeout = inner.limits.write_timeout;
                        // Plain HTTP/1.1 for the UI upstream first; hyper takes over for the
                        // rest of the connection when a request needs it.
                        let (mut stream, pre) = match &inner.ui {
                            Some(ui) if inner.fast_path => {
                                match h1::serve(inner, ui, stream, &hop, &closing).await {
                                    h1::Outcome::Closed => return,
                                    h1::Outcome::Handoff(s, pre) => (s, pre),
                                    h1::Outcome::Tunnel(client, upstream, spec) => {
                                        // A tunnel is not a request in flight: like the general
                                        // path's, it is drained through `drain_tunnels`, and it
                                        // holds the connection's permit for its life.
                                        let client = deadline::WriteDeadline::new(client, write_timeout);
                                        let mut spec = *spec;
                                        spec.conn = Some(permit);
                                        // The tunnel's future is the task: no wrapper to size.
                                        inner.proxy.tunnels.spawn(proxy::tunnel(client, upstream, spec));
                                        return;
                                    }
                                }
                            }
                            _ => (stream, Bytes::new()),
                        };
                        // A new connection's first bytes (enough to tell HTTP/1 from HTTP/2)
                        // within the header read timeout: one that sends nothing is closed.
                        let pre = if pre.is_empty() {
                            let by = tokio::time::Instant::now() + inner.limits.header_read_timeout;
                            let first = tokio::select! {
                                b = deadline::first_bytes(&mut stream, by) => b,
                                () = closing.cancelled() => None,
                            };
                            match first {
                                Some(b) => b.freeze(),
                                None => return,
                            }
                        } else {
                            pre
                        };
                        let aff = Arc::new(affinity::Affinity::default());
                        let activity = Arc::new(deadline::Activity::default());
                        let ctx = Arc::new(ConnCtx { hop, permit: Some(permit), affinity: Some(aff.clone()) });
                        let service = {
                            let gw = gw.clone();
                            let activity = activity.clone();
                            hyper::service::service_fn(move |req: Request<Incoming>| {
                                let gw = gw.clone();
                                let ctx = ctx.clone();
                                let busy = activity.begin();
                                async move {
                                    let req = req.map(cap::Inbound::Incoming);
                                    let r = gw.handle_conn(req, &ctx).await;
                                    // Busy until the response body is done (a long download or
                                    // a stream is not idleness).
                                    let r = r.map(|b| deadline::WhileBusy::new(b, busy).boxed_unsync());
                                    Ok::<_, Infallible>(r)
                                }
                            })
                        };
                        let io = deadline::WriteDeadline::new(h1::Prefixed::new(stream, pre), write_timeout);
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
                        let mut conn = Box::pin(conn);
                        // Shutdown, or idle (no request in progress) for the header read
                        // timeout: a graceful close (HTTP/2 GOAWAY; HTTP/1 after the response).
                        let idle = inner.limits.header_read_timeout;
                        let mut idle_check = std::pin::pin!(tokio::time::sleep(idle));
                        // Kept upstream connections idle past their reuse window are let go
                        // (an idle client holds no upstream socket for long).
                        let stale = affinity::IDLE_TIMEOUT;
                        let mut stale_check = std::pin::pin!(tokio::time::sleep(stale));
                        let mut stop = std::pin::pin!(closing.cancelled());
                        let mut closed = false;
                        // The client connection and its upstream connections, in this one task:
                        // upstream bytes read here are written to the client in the same poll.
                        let result = std::future::poll_fn(|cx| {
                            // A graceful close that does not finish (an HTTP/2 client that never
                            // acknowledges the GOAWAY's PING) ends one idle period later, as long
                            // as no request is in progress.
                            if closed && idle_check.as_mut().poll(cx).is_ready() {
                                match activity.idle_deadline(idle) {
                                    Some(at) if at <= tokio::time::Instant::now() => {
                                        return std::task::Poll::Ready(Ok(()));
                                    }
                                    Some(at) => idle_check.as_mut().reset(at),
                                    None => idle_check.as_mut().reset(tokio::time::Instant::now() + idle),
                                }
                                // Registers the timer's waker.
                                let _ = idle_check.as_mut().poll(cx);
                            }
                            if !closed {
                                let stopping = stop.as_mut().poll(cx).is_ready();
                                let mut idle_now = false;
                                while idle_check.as_mut().poll(cx).is_ready() {
                                    match activity.idle_deadline(idle) {
                                        Some(at) if at > tokio::time::Instant::now() => {
                                            idle_check.as_mut().reset(at);
                                        }
                                        Some(_) => {
                                            idle_now = true;
                                            break;
                                        }
                                        None => idle_check.as_mut().reset(tokio::time::Instant::now() + idle),
                                    }
                                }
                                if stale_check.as_mut().poll(cx).is_ready() {
                                    aff.release_stale();
                                    stale_check.as_mut().reset(tokio::time::Instant::now() + stale);
                                }
                                if stopping || idle_now {
                                    conn.as_mut().graceful_shutdown();
                                    closed = true;
                                    idle_check.as_mut().reset(tokio::time::Instant::now() + idle);
                                    let _ = idle_check.as_mut().poll(cx);
                                }
                            }
                            aff.poll_drivers(cx);
                            let r = conn.as_mut().poll(cx);
                            if r.is_pending() {
                                aff.poll_drivers(cx);
                            }
                            r
                        })
                        .await;
                        if let Err(e) = result {
                            tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                        }
                        drop(conn); // and with it the service, whose context holds `aff` too
                        if let Some(aff) = Arc::into_inner(aff) {
                            gw.inner.proxy.park(aff);
                        }
                    });
                }
                () = &mut shutdown => break,
            }
        }
        self.inner
            .stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        drop(listener);
        closing.cancel();
        let deadline = tokio::time::Instant::now() + self.inner.drain_timeout;
        // The engine counters ([`Gateway::served`]) let an operator (and `cargo xtask bench`'s
        // authentication section) read the fast path's share of what this process served.
        let served = self.served();
        tracing::info!(
            drain_timeout_s = self.inner.drain_timeout.as_secs_f64(),
            websocket_tunnels = self.active_tunnels(),
            requests_fast_path = served.h1,
            requests_hyper = served.hyper,
            "stopped accepting; waiting for in-flight requests to finish (WebSocket sessions do not hold the stop; a second signal stops now)"
        );
        // Only client connections are waited for: a connection whose request became a tunnel
        // (either engine) has left this tracker for the tunnels' one.
        conns.close();
        if tokio::time::timeout_at(deadline, conns.wait())
            .await
            .is_err()
        {
            tracing::info!(
                connections = conns.len(),
                "drain deadline reached with requests still in flight"
            );
        }
        Ok(())
    }

    /// Number of open upgraded tunnels (WebSockets).
    pub fn active_tunnels(&self) -> usize {
        self.inner.proxy.tunnels.len()
    }

    /// Waits up to `grace` for upgraded tunnels to end by themselves, then cuts the rest.
    /// From the call on, a tunnel whose upstream has closed and whose bytes have all reached
    /// the client ends at once, without waiting for the client to close its end (after
    /// Streamlit stopped, its 1012 close frames have gone through). Returns how many were cut.
    pub async fn drain_tunnels(&self, grace: Duration) -> usize {
        let tracker = &self.inner.proxy.tunnels;
        tracker.close();
        self.inner.proxy.closing_tunnels.cancel();
        let mut cut = 0;
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            cut = tracker.len();
            self.inner.proxy.cut_tunnels.cancel();
            tracker.wait().await;
        }
        cut
    }

    /// Forgets rate-limit state of idle clients (bounds memory) and closes parked idle upstream
    /// connections too old to be reused (more than 4 s idle); the embedding program calls it
    /// periodically (the `fluxlit` library: every 5 s).
    pub fn housekeeping(&self) {
        self.inner.rate.retain_recent();
        self.inner.proxy.expire_parked();
    }
}

/// What authentication decided for an API request.
struct ApiAuth<'a> {
    /// Identity fields to set on the hop.
    identity: &'a [(HeaderName, HeaderValue)],
    /// The login session (`auth_mode = oidc`): a WebSocket tunnel ends with it.
    session: Option<sessions::SessionGuard>,
    /// Whether the bearer-token check (`jwt`) applies.
    check_bearer: bool,
    /// The login session's identity (`auth_mode = oidc`), for an in-process API.
    who: Option<&'a fluxlit_auth::session::SessionIdentity>,
}

fn with_rid(mut r: Response<Body>, rid: &HeaderValue) -> Response<Body> {
    r.headers_mut().insert(observe::REQUEST_ID, rid.clone());
    r
}

fn method_not_allowed() -> Response<Body> {
    let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "FluxLit: use GET or HEAD\n");
    r.headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
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
/// unspecified host (`0.0.0.0`, `::`) replaced by loopback (`127.0.0.1`).
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
