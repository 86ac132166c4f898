//! The settings catalogue: every key, its type, default, environment name, flag and meaning.
//!
//! One table drives parsing, error messages, provenance and (later) the generated
//! `docs/configuration.md`, so adding a setting means adding one row here and one field to
//! [`crate::Settings`].

/// The type of a setting's value, and therefore which textual forms are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Free text.
    Text,
    /// Free text that may be absent (empty text in the environment means "unset").
    OptText,
    /// `1/0`, `true/false`, `t/f`, `yes/no`, `y/n`, `on/off` (pydantic's words), any case;
    /// TOML booleans (or those words as strings) in files.
    Bool,
    /// A TCP port, `0..=65535` (`0` asks the OS for a free port).
    Port,
    /// A non-negative whole number.
    Count,
    /// A size in bytes: an integer or a number with a unit (`64MiB`, `10 MB`, `512KiB`).
    Bytes,
    /// Like [`Kind::Bytes`], but may be absent.
    OptBytes,
    /// A duration in seconds: a number (`2.5`) or a humantime string (`30s`, `5m`, `250ms`).
    Seconds,
    /// Like [`Kind::Seconds`], but may be absent.
    OptSeconds,
    /// A list of strings: a JSON array (`["a","b"]`), comma-separated text, or a TOML array.
    List,
    /// A JSON object (`{"k": 1}`), or a TOML table in files.
    Object,
    /// One of a fixed set of words (any case).
    Choice(&'static [&'static str]),
    /// A whole number, 1 or more, or the word `auto` (any case): how many processes to run,
    /// `auto` meaning one per available CPU core (`streamlit_workers`).
    CountOrAuto,
}

impl Kind {
    /// What a value of this kind looks like, for error messages.
    pub fn expected(self) -> String {
        match self {
            Kind::Text | Kind::OptText => "a string".into(),
            Kind::Bool => "a boolean: one of 1/0, true/false, t/f, yes/no, y/n, on/off (any case)".into(),
            Kind::Port => "a TCP port number from 0 to 65535".into(),
            Kind::Count => "a whole number, 0 or more".into(),
            Kind::Bytes | Kind::OptBytes => {
                "a size in bytes: a whole number or a number with a unit (B, KB, MB, GB, KiB, MiB, GiB), e.g. 64MiB".into()
            }
            Kind::Seconds | Kind::OptSeconds => {
                "a non-negative duration: seconds as a number (2.5) or a humantime string (30s, 5m, 250ms)".into()
            }
            Kind::List => {
                "a list of strings: a JSON array ([\"a\",\"b\"]), comma-separated text, or a TOML array".into()
            }
            Kind::Object => "a JSON object ({\"key\": value}) or a TOML table".into(),
            Kind::Choice(words) => format!("one of: {}", words.join(", ")),
            Kind::CountOrAuto => {
                "a whole number, 1 or more, or `auto` (one per available CPU core)".into()
            }
        }
    }

    /// Whether an unset value is allowed (its default is "absent").
    pub fn optional(self) -> bool {
        matches!(self, Kind::OptText | Kind::OptBytes | Kind::OptSeconds)
    }

    /// The type's name in `docs/configuration.md`.
    pub fn doc_name(self) -> String {
        match self {
            Kind::Text => "string".into(),
            Kind::OptText => "string (optional)".into(),
            Kind::Bool => "boolean".into(),
            Kind::Port => "port".into(),
            Kind::Count => "integer ≥ 0".into(),
            Kind::Bytes => "bytes".into(),
            Kind::OptBytes => "bytes (optional)".into(),
            Kind::Seconds => "seconds".into(),
            Kind::OptSeconds => "seconds (optional)".into(),
            Kind::List => "list of strings".into(),
            Kind::Object => "JSON object".into(),
            Kind::Choice(words) => words.join(" \\| "),
            Kind::CountOrAuto => "integer ≥ 1 \\| auto".into(),
        }
    }
}

/// One setting in the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    /// The canonical key, as written in `fluxlit.toml` and as the serde field name.
    pub name: &'static str,
    /// Other names accepted for the same key in files and the environment (for example
    /// FluxLit for Python's `uvicorn_graceful_shutdown_timeout_s`).
    pub aliases: &'static [&'static str],
    /// The value's type.
    pub kind: Kind,
    /// The command-line flag of `fluxlit run`, if there is one.
    pub flag: Option<&'static str>,
    /// Whether the value is a secret (redacted wherever it is printed).
    pub secret: bool,
    /// The default, as it would be written in a file (for docs and `fluxlit config`).
    pub default: &'static str,
    /// One sentence: what the setting does, with units.
    pub doc: &'static str,
}

impl KeySpec {
    /// The environment variable name, `FLUXLIT_<KEY>` in upper case.
    pub fn env_name(&self) -> String {
        env_name(self.name)
    }
}

/// `FLUXLIT_<KEY>` in upper case for a key or alias.
pub fn env_name(key: &str) -> String {
    format!("FLUXLIT_{}", key.to_ascii_uppercase())
}

const fn key(name: &'static str, kind: Kind, default: &'static str, doc: &'static str) -> KeySpec {
    KeySpec {
        name,
        aliases: &[],
        kind,
        flag: None,
        secret: false,
        default,
        doc,
    }
}

impl KeySpec {
    const fn flag(mut self, flag: &'static str) -> Self {
        self.flag = Some(flag);
        self
    }

    const fn secret(mut self) -> Self {
        self.secret = true;
        self
    }

    const fn aliases(mut self, aliases: &'static [&'static str]) -> Self {
        self.aliases = aliases;
        self
    }
}

/// Every setting FluxLit understands, in documentation order. For optional kinds the default
/// is "absent" and `default` only describes what happens then.
pub const KEYS: &[KeySpec] = &[
    // What to run.
    key("target", Kind::Text, "app.py", "The Streamlit script to run, relative to the working directory; or a FluxLit-for-Python app as `module:attr` or `./app.py:attr` (docs/migrating-from-python.md).").flag("TARGET (positional)"),
    key("streamlit_python", Kind::OptText, "$VIRTUAL_ENV/bin/python, else ./.venv/bin/python, else the venv fluxlit is installed in if it has Streamlit, else python3", "Python interpreter used as `python -m streamlit run`.").flag("--streamlit-python"),
    key("streamlit_run_cli_args", Kind::List, "[]", "Extra arguments for `streamlit run`, after FluxLit's own; they may not set server.port, server.address or server.baseUrlPath.").flag("-- STREAMLIT_ARGS..."),
    key("streamlit_workers", Kind::CountOrAuto, "1", "How many Streamlit processes (workers) run the script, each on its own loopback port; `auto` is one per available CPU core. Every worker runs the same script with the same arguments and environment. With more than one, the gateway places each new browser on the ready worker with the fewest open sessions and sends every request of a session to the worker that holds it (affinity cookie `fluxlit_worker`, session ids of uploads and reconnects), the workers share one server.cookieSecret (generated per start unless you set one), and a worker that dies is restarted with backoff whatever sidecar_restart says (docs/scaling.md)."),
    key("streamlit_workers_min_ready", Kind::Count, "1", "How many Streamlit workers must be ready for `{api}/readyz` to answer 200; from 1 to streamlit_workers (with `auto`, checked at start-up against the number of cores). `{api}/readyz` lists every worker (`streamlit-1` …) besides `streamlit`."),
    key("streamlit_drain_timeout_s", Kind::Seconds, "300", "Seconds the old Streamlit workers keep their open sessions after a rolling restart (`fluxlit reload`, SIGHUP): each old worker stops when its last session ends or when this has passed, whichever is first; its remaining browsers then reconnect to the new workers and start new sessions (docs/scaling.md)."),
    key("streamlit_worker_max_rss_bytes", Kind::Bytes, "0", "Memory recycling: a Streamlit worker whose resident set size (sampled every 5 s, Linux) is above this many bytes is replaced as in a rolling restart, one worker at a time: a new worker starts, new sessions go to it, the old one keeps its sessions until they end or streamlit_drain_timeout_s passes. 0 turns it off. Set it well above a fresh worker's size (typically 150–300 MB), else workers are replaced again and again (docs/scaling.md)."),
    key("streamlit_page_config", Kind::Object, "{}", "Page configuration for the app (page_title, page_icon, layout, initial_sidebar_state, menu_items), handed to the Streamlit process as JSON in FLUXLIT_STREAMLIT_PAGE_CONFIG for the script to pass to st.set_page_config."),
    key("api_command", Kind::OptText, "no supervised API", "Command that starts the API. Placeholders, replaced shell-quoted: {port} a free loopback port (also $PORT), {root_path} the public mount (also $FLUXLIT_ROOT_PATH), {api_prefix} the API's public prefix, root path plus api_mount_path, e.g. /api or /myapp/api (also $FLUXLIT_API_ROOT_PATH); for FastAPI add `--root-path {api_prefix}` to uvicorn so that {api_prefix}/docs works (docs/deployment.md). A plain command is executed directly, shell syntax runs under `sh -c`. FluxLit supervises it.").flag("--api-command"),
    key("api_upstream", Kind::OptText, "no external API", "URL of an API server that runs elsewhere (http://host:port[/base]); requests under the API mount are proxied to it.").flag("--api-upstream"),
    key("ui_upstream", Kind::OptText, "Streamlit sidecar", "URL of a UI server that runs elsewhere (http://host:port[/base]); FluxLit then starts no Streamlit and proxies every non-API path there.").flag("--ui-upstream"),
    key("sidecar_start_timeout_s", Kind::Seconds, "60", "Seconds a sidecar (Streamlit, API command) has to become ready before start-up fails."),
    key("sidecar_stop_timeout_s", Kind::Seconds, "5", "Seconds a sidecar gets after each stop signal (SIGINT, then SIGTERM) before the next; then SIGKILL."),
    key("sidecar_restart", Kind::Choice(&["exit", "restart"]), "exit", "What happens when a sidecar exits on its own: `exit` stops the gateway with a non-zero status so the platform restarts it; `restart` restarts the sidecar with backoff."),
    key("pidfile", Kind::Text, ".fluxlit.pid", "Where the gateway writes its process id once the sidecars are ready; removed on shutdown.").flag("--pidfile"),
    key("no_pidfile", Kind::Bool, "false", "Do not write a pidfile.").flag("--no-pidfile"),
    // Where to listen, and paths.
    key("gateway_host", Kind::Text, "127.0.0.1", "Address the public gateway listens on (use 0.0.0.0 in containers).").flag("--host"),
    key("gateway_port", Kind::Port, "8000", "TCP port of the public gateway; 0 picks a free port.").flag("--port"),
    key("root_path", Kind::Text, "", "Public path prefix the app is served under (for example /myapp); passed to Streamlit as server.baseUrlPath.").flag("--root-path"),
    key("streamlit_public_path", Kind::Text, "", "Public path prefix used only when root_path is empty (FluxLit compatibility)."),
    key("api_mount_path", Kind::Text, "/api", "Path under the root path where the API is mounted; normalised to a leading slash and no trailing slash.").flag("--api-mount-path"),
    key("public_base_url", Kind::Text, "", "Public origin (and path) users reach the app at, e.g. https://example.com/myapp; used for OAuth redirects and links. PUBLIC_BASE_URL is read when FLUXLIT_PUBLIC_BASE_URL is unset."),
    key("strict_public_base_url", Kind::Bool, "false", "Make a conflict between FLUXLIT_PUBLIC_BASE_URL and PUBLIC_BASE_URL an error."),
    // Proxy trust.
    key("trust_proxy", Kind::Bool, "false", "Trust X-Forwarded-* and Forwarded headers from peers in forwarded_allow_ips.").flag("--proxy-headers"),
    key("forwarded_allow_ips", Kind::List, "[]", "IPs and CIDRs (IPv4 and IPv6) whose forwarded headers are trusted when trust_proxy is on; empty means loopback only (127.0.0.0/8, ::1; FluxLit for Python trusted every peer), which `fluxlit config` and the start-up log report as the `forwarded_allow_ips_loopback_only` warning.").flag("--forwarded-allow-ips"),
    key("trust_forwarded_prefix", Kind::Bool, "false", "Also believe X-Forwarded-Prefix from trusted proxies (the last value, written by the nearest one). Off: the public prefix is root_path. Turn on only when your edge sets or clears X-Forwarded-Prefix on every request."),
    key("trust_forwarded_port", Kind::Bool, "false", "Also believe X-Forwarded-Port from trusted proxies (the last value). Off: the port comes from the forwarded host, else the scheme's default. Turn on only when your edge sets or clears X-Forwarded-Port on every request."),
    key("request_id_trust", Kind::Choice(&["any", "trusted_proxies"]), "any", "Whose X-Request-ID is kept, passed to the API and Streamlit and returned to the client: `any` keeps a well-formed id (1–128 visible ASCII characters, no spaces) from every client, as FluxLit for Python did; `trusted_proxies` keeps it only from trusted proxies (trust_proxy and forwarded_allow_ips). Other requests, and malformed ids, get a new UUIDv7 (docs/operations.md, \"Request ids\")."),
    key("gateway_forward_client_headers_to_streamlit", Kind::List, "[]", "Extra client header names passed to Streamlit on every hop even where the gateway would drop them; credential and identity headers are never forwarded because of it."),
    // Limits and timeouts.
    key("gateway_upstream_connect_timeout_s", Kind::Seconds, "30", "Seconds to wait for a TCP connection to an upstream; then 502."),
    key("gateway_upstream_read_timeout_s", Kind::Seconds, "120", "Seconds to wait for an upstream's response headers; then 504. Streaming bodies and WebSockets are never cut by it."),
    key("gateway_max_proxy_request_body_bytes", Kind::Bytes, "0", "Largest request body proxied to the UI (Streamlit), in bytes; 0 means no limit. Larger bodies get 413."),
    key("gateway_max_api_request_body_bytes", Kind::Bytes, "0", "Largest request body passed to the API, in bytes; 0 means no limit. Larger bodies get 413."),
    key("gateway_max_concurrent_upstream_http", Kind::Count, "0", "Most upstream HTTP requests in flight at once; more are shed with a fast 503. 0 means no limit."),
    key("gateway_httpx_max_connections", Kind::Count, "0", "Most idle upstream connections kept: per upstream by the pool (HTTP/2 clients, WebSocket upgrades), and in all by the parking list of ended client connections; 0 means the defaults (pool unbounded, 256 parked)."),
    key("gateway_httpx_max_keepalive_connections", Kind::Count, "0", "Accepted for FluxLit compatibility; pooled idle connections are bounded by gateway_httpx_max_connections."),
    key("gateway_worker_threads", Kind::Count, "0", "Worker threads of the gateway's async runtime; 0 means automatic: one per CPU core minus one (at least 1), leaving a core to Streamlit and the API, which run on the same machine. On 2 cores that is 1 thread, which `cargo xtask bench` measured as faster than 2 (docs/performance.md). With 1 the gateway runs on a single-threaded (current-thread) runtime."),
    key("gateway_fast_path", Kind::Bool, "true", "Serve plain HTTP/1.1 requests for the UI, and for an API upstream (api_command or api_upstream), on the gateway's HTTP/1.1 fast path (parsed in place, same rules, access log and metrics as the general path; docs/ARCHITECTURE.md); with auth_mode = forward or oidc the general engine serves them, as it authenticates, and API requests too with auth_mode = jwt, CORS or enable_security_headers. false: every request is served by the general (hyper) engine, e.g. to rule the fast path out when diagnosing; what clients and upstreams see is the same, only slower."),
    key("gateway_header_read_timeout_s", Kind::Seconds, "30", "Seconds a client has to send its request headers, and the longest a connection may stay idle between requests (HTTP/1.1 keep-alive, HTTP/2 without open streams; slow-loris guard); the connection is closed after it."),
    key("gateway_http2_max_concurrent_streams", Kind::Count, "64", "Most concurrent requests (streams) on one HTTP/2 client connection; each may use its own upstream connection, so this bounds one client's upstream fan-out. At least 1."),
    key("gateway_write_timeout_s", Kind::Seconds, "60", "Seconds a write to a client may stay blocked because the client stopped reading; then the connection (or WebSocket tunnel) is closed. 0 turns it off."),
    key("gateway_max_request_header_bytes", Kind::Bytes, "64KiB", "Largest request head (request line and headers) accepted, in bytes; larger gets 431. At least 8KiB."),
    key("gateway_max_connections", Kind::Count, "10000", "Most client connections (WebSocket tunnels included) open at once; more are answered 503 and closed. 0 means no limit."),
    key("gateway_max_connections_per_ip", Kind::Count, "1024", "Most connections (WebSocket tunnels included) from one TCP peer address at once, so one client cannot hold every slot; trusted proxies (trust_proxy and forwarded_allow_ips) are exempt, since their connections carry many clients. 0 means no limit."),
    key("gateway_rate_limit_api_per_s", Kind::Count, "0", "Requests per second each client IP may make to the API (GCRA); 0 turns API rate limiting off. Over the limit: 429 with Retry-After."),
    key("gateway_rate_limit_api_burst", Kind::Count, "0", "Burst allowance for API rate limiting; 0 means the per-second rate."),
    key("gateway_rate_limit_ui_per_s", Kind::Count, "0", "Requests per second each client IP may make to UI routes; 0 turns UI rate limiting off. Health probes are never limited."),
    key("gateway_rate_limit_ui_burst", Kind::Count, "0", "Burst allowance for UI rate limiting; 0 means the per-second rate."),
    key("gateway_ws_idle_timeout_s", Kind::OptSeconds, "none", "Close a WebSocket tunnel after this many seconds without bytes in either direction; unset: never (Streamlit sessions may idle for hours)."),
    key("gateway_ws_max_lifetime_s", Kind::OptSeconds, "none", "Close a WebSocket tunnel after this many seconds in any case; unset: no limit."),
    key("gateway_ws_allowed_origins", Kind::List, "[]", "Origins (scheme://host[:port]) allowed to open WebSockets; others get 403. Empty: no gateway-side check (Streamlit still compares Origin with Host)."),
    key("gateway_max_websockets_per_client_ip", Kind::Count, "256", "Most WebSocket sessions (Streamlit tabs) one client IP may hold open at once, counting clients behind a trusted proxy apart; more are answered 429. 0 means no limit."),
    key("gateway_ws_open_timeout_s", Kind::Seconds, "30", "Seconds an upstream has to answer a WebSocket upgrade; then 504."),
    key("gateway_ws_ping_interval_s", Kind::OptSeconds, "none", "Accepted for FluxLit compatibility; no effect: the gateway splices WebSocket bytes, so Streamlit's own pings reach the browser."),
    key("gateway_ws_ping_timeout_s", Kind::OptSeconds, "none", "Accepted for FluxLit compatibility; no effect (see gateway_ws_ping_interval_s)."),
    key("gateway_ws_close_timeout_s", Kind::OptSeconds, "none", "Accepted for FluxLit compatibility; no effect: close frames pass through untouched."),
    key("gateway_ws_max_message_bytes", Kind::OptBytes, "no limit", "Accepted for FluxLit compatibility; no effect: the gateway does not reassemble WebSocket messages (Streamlit's server.maxMessageSize applies)."),
    key("graceful_shutdown_timeout_s", Kind::Seconds, "10", "Seconds in-flight HTTP requests get after SIGTERM/SIGINT (open WebSocket sessions do not hold the stop); then the sidecars are stopped at once (Streamlit closes its WebSockets with 1012) and remaining connections are closed. Keep it below the platform's termination grace minus 2 × sidecar_stop_timeout_s.").aliases(&["uvicorn_graceful_shutdown_timeout_s"]),
    // Security headers and CORS.
    key("enable_security_headers", Kind::Bool, "false", "Add X-Content-Type-Options, X-Frame-Options, Referrer-Policy (and HSTS over https) to API responses."),
    key("cors_allow_origins", Kind::List, "[]", "Origins allowed to call the API cross-origin; non-empty turns CORS on for API routes."),
    key("cors_allow_credentials", Kind::Bool, "false", "Allow credentials on cross-origin API requests."),
    key("cors_middleware_kwargs", Kind::Object, "{}", "Extra CORS options (max_age, expose_headers, allow_methods, allow_headers)."),
    // Logging, metrics, debug.
    key("log_level", Kind::Text, "info", "Log level: Uvicorn's names critical, error, warning, info, debug, trace (critical logs errors, as error does), also warn and off; or a tracing directive list such as info,fluxlit_gateway=debug.").flag("--log-level"),
    key("log_format", Kind::Choice(&["text", "json"]), "text", "Log line format.").flag("--log-format"),
    key("debug", Kind::Bool, "false", "Debug mode: debug log level, access log on, GET /__fluxlit/debug snapshot.").flag("--debug"),
    key("enable_gateway_access_log", Kind::Bool, "false", "One access-log line per request (always on in debug mode)."),
    key("enable_health_access_log", Kind::Bool, "false", "Also log the health probes ({api}/healthz, {api}/readyz) in the access log."),
    key("metrics_addr", Kind::OptText, "metrics on the public port", "Serve the metrics on a separate admin listener (host:port) instead of the public port.").flag("--metrics-addr"),
    key("enable_gateway_prometheus_metrics", Kind::Bool, "false", "Serve Prometheus metrics at gateway_prometheus_metrics_path."),
    key("gateway_prometheus_metrics_path", Kind::Text, "/__fluxlit/metrics", "Path of the metrics endpoint; must not be under the API mount."),
    key("strict_startup", Kind::Bool, "false", "Refuse to start when `fluxlit config` reports any warning."),
    // Authentication (docs/auth.md).
    key("auth_mode", Kind::Choice(&["off", "forward", "jwt", "oidc"]), "off", "How the gateway authenticates requests. `off`: nobody; identity headers a client sends are stripped on every hop (WebSocket upgrade included). `forward`: a front proxy (oauth2-proxy, Pomerium, a cloud load balancer) authenticates; only peers in auth_forward_trusted_cidrs may reach the app (others get 403), a request without the auth_forward_user_header gets 401, and the auth_forward_headers it sets reach the API and Streamlit. `jwt`: identity headers are stripped as with `off`, and every API request but the health endpoints needs a valid bearer JWT (jwt_* keys; the reference's 401 answers, docs/auth.md); the UI stays public. `oidc`: the gateway logs users in with OpenID Connect (the backend-for-frontend: oidc_* and auth_* keys; public_base_url, oidc_issuer, oidc_client_id and auth_cookie_secrets required; docs/auth.md)."),
    key("auth_forward_trusted_cidrs", Kind::List, "[]", "auth_mode = forward: IPs and CIDRs (IPv4 and IPv6) of the front proxy as FluxLit's TCP peer; required, non-empty."),
    key("auth_forward_user_header", Kind::Text, "X-Forwarded-User", "auth_mode = forward: the header that must carry the authenticated user (non-blank) on every request that is not a health check (oauth2-proxy: X-Forwarded-User; Pomerium with pass_identity_headers: X-Pomerium-Claim-Email; reference §8.4 used X-Remote-User)."),
    key("auth_forward_headers", Kind::List, "[\"X-Forwarded-User\", \"X-Forwarded-Email\", \"X-Forwarded-Preferred-Username\", \"X-Forwarded-Groups\", \"X-Forwarded-Name\"]", "auth_mode = forward: the identity headers taken from the trusted proxy and passed to the API and Streamlit (the user header is always one of them); from any other peer, and every other identity header, they are stripped."),
    key("auth_forward_require_https", Kind::Bool, "false", "auth_mode = forward: also require that the request reached the front proxy over https (its X-Forwarded-Proto, trusted from auth_forward_trusted_cidrs), else 403."),
    key("jwt_issuer", Kind::Text, "", "auth_mode = jwt (required): the exact `iss` of bearer tokens; without jwt_jwks_url and jwt_hs256_secret, the signing keys are found through its OpenID discovery document ({issuer}/.well-known/openid-configuration), whose `issuer` must equal it. With another auth_mode, setting it is an `auth_keys_unused` warning."),
    key("jwt_audience", Kind::List, "[]", "auth_mode = jwt (required): accepted `aud` values of bearer tokens, one or a list (a,b or [\"a\",\"b\"]); a token's `aud` must name one of them. With another auth_mode, setting it is an `auth_keys_unused` warning."),
    key("jwt_hs256_secret", Kind::Text, "", "auth_mode = jwt: shared secret for HS256 bearer tokens, at least 32 bytes (RFC 7518 §3.2); then HS256 is the only algorithm accepted. Exclusive with jwt_jwks_url. With another auth_mode, setting it is an `auth_keys_unused` warning.").secret(),
    key("jwt_jwks_url", Kind::Text, "", "auth_mode = jwt: http(s) URL of the JWKS whose keys sign bearer tokens (RS256/384/512, PS256/384/512, ES256, ES384, EdDSA, pinned per key); fetched on first use and again on an unknown kid (single-flight, at most every 30 s), 10 s timeout, 1 MiB cap, redirects not followed. With another auth_mode, setting it is an `auth_keys_unused` warning."),
    key("jwt_leeway_seconds", Kind::Count, "0", "auth_mode = jwt: clock skew allowed when checking exp and nbf, in seconds. With another auth_mode, setting it is an `auth_keys_unused` warning."),
    key("oidc_issuer", Kind::Text, "", "auth_mode = oidc (required): the provider's issuer URL, exactly as its discovery document ({issuer}/.well-known/openid-configuration) names itself; https, or http on loopback only. With another auth_mode, setting it is an `auth_keys_unused` warning."),
    key("oidc_client_id", Kind::Text, "", "auth_mode = oidc (required): the client id registered at the provider. With another auth_mode, setting it is an `auth_keys_unused` warning."),
    key("oidc_client_secret", Kind::Text, "", "auth_mode = oidc: the client secret (client_secret_basic); empty for a public client, which PKCE alone protects. With another auth_mode, setting it is an `auth_keys_unused` warning.").secret(),
    key("oidc_bff_secret", Kind::Text, "", "auth_mode = oidc with oidc_compat_exchange (required then): the HS256 key of the first-party tokens of FluxLit for Python's exchange flow, at least 32 bytes (RFC 7518 §3.2). Session cookies do not use it (they are sealed with auth_cookie_secrets). Set without oidc_compat_exchange, or with another auth_mode, it is an `auth_keys_unused` warning.").secret(),
    key("oidc_compat_exchange", Kind::Bool, "false", "auth_mode = oidc: FluxLit for Python's one-time-code flow for apps written against it (docs/auth.md): after a login the browser returns with ?auth_code=…, which POST {api}/auth/exchange trades once (within 120 s) for an HS256 token signed with oidc_bff_secret (iss fluxlit-bff, aud fluxlit-app, 1 hour) that the API accepts as a bearer token. Needs oidc_bff_secret and auth_session_store = memory or redis (codes are single-use; redis lets any replica redeem them)."),
    key("oidc_scopes", Kind::List, "[\"openid\", \"profile\", \"email\"]", "auth_mode = oidc: the scopes of the authorization request; must contain openid."),
    key("auth_required", Kind::Bool, "true", "auth_mode = oidc: true: every path but the public ones needs a login (page navigations are sent to the login, API, fetch and WebSocket requests get 401); false: identity is optional, the identity headers are set when a user is logged in and absent otherwise."),
    key("auth_public_paths", Kind::List, "[]", "auth_mode = oidc: paths that need no login besides the health endpoints (always public): entries `regex` or `METHOD=regex` (e.g. /api/public/.* or GET=/api/items/[0-9]+), matched on the whole path under the root path (anchored at both ends); each is compiled at load, and one that does not compile is an error naming it."),
    key("auth_session_store", Kind::Choice(&["cookie", "memory", "redis"]), "cookie", "auth_mode = oidc: where sessions live. `cookie`: a sealed cookie with the identity only (no provider tokens, no refresh), shared by every replica with the same auth_cookie_secrets; `memory`: this process (one replica only, lost on restart; the `auth_session_memory_single_replica` warning); `redis`: at auth_session_redis_url (the cookie holds a ticket)."),
    key("auth_session_redis_url", Kind::Text, "", "auth_mode = oidc with auth_session_store = redis (required then): redis://, rediss:// (TLS) or unix:// URL of the session store; a password in it is redacted wherever it is shown."),
    key("auth_session_key_prefix", Kind::Text, "fluxlit:", "auth_mode = oidc with auth_session_store = redis: prefix of every Redis key FluxLit writes."),
    key("auth_cookie_secrets", Kind::List, "[]", "auth_mode = oidc (required): secrets of at least 32 bytes each that seal the session and login cookies; the first seals, every one opens (rotation: put the new one first, drop the old one after auth_session_lifetime_s). Every replica needs the same list. In the environment: comma-separated. Redacted wherever shown.").secret(),
    key("auth_session_lifetime_s", Kind::Count, "43200", "auth_mode = oidc: absolute lifetime of a session in whole seconds (12 hours), at least 1; then the user logs in again."),
    key("auth_session_idle_timeout_s", Kind::Count, "0", "auth_mode = oidc with auth_session_store = memory or redis: end a session that no request used for this many whole seconds (its page loads, API calls and WebSocket upgrades count; the bytes of an open WebSocket do not), and close its WebSockets as a logout does; 0: off. Sessions are touched at most every tenth of it, so one may end up to a tenth early. With the cookie store a non-zero value is an error (it keeps no server state)."),
    key("auth_session_max_chunks", Kind::Count, "3", "auth_mode = oidc with the cookie store: most cookies (about 4 KB each) one session may take, 1 to 10; a larger identity fails the login with a visible error."),
    key("auth_allowed_emails", Kind::List, "[]", "auth_mode = oidc: if any of the three auth_allowed_* lists is set, only the users they admit get in: these email addresses."),
    key("auth_allowed_email_domains", Kind::List, "[]", "auth_mode = oidc: admit users whose email is in one of these domains (e.g. example.com)."),
    key("auth_allowed_groups", Kind::List, "[]", "auth_mode = oidc: admit users in one of these groups (the auth_groups_claim of the ID token)."),
    key("auth_groups_claim", Kind::Text, "groups", "auth_mode = oidc: the ID token claim that lists the user's groups (X-Forwarded-Groups, auth_allowed_groups)."),
    key("auth_pass_access_token", Kind::Bool, "false", "auth_mode = oidc: send the provider's access token as Authorization: Bearer on the API hop (never to Streamlit)."),
    key("auth_streamlit_trusted_user_headers", Kind::Bool, "true", "auth_mode = oidc: start Streamlit with server.trustedUserHeaders mapped to the identity headers, so st.user shows the logged-in user (Streamlit 1.49 or later)."),
    key("auth_logout_backchannel", Kind::Bool, "false", "auth_mode = oidc: accept the provider's back-channel logout (OpenID Connect Back-Channel Logout 1.0); needs auth_session_store = memory or redis."),
    key("auth_post_logout_redirect_url", Kind::Text, "", "auth_mode = oidc: where the provider sends the browser after logout (register it there); an absolute http(s) URL. Empty: the origin of public_base_url + the root path + /."),
    key("auth_allowed_redirect_origins", Kind::List, "[]", "auth_mode = oidc: origins (scheme://host[:port], http or https, no path) besides the app's own that a login's return_to may name as an absolute URL; the URL's origin after parsing (scheme, host, port; default ports equal none) must equal one exactly (no prefix or suffix matching; no user or password in the URL), and other absolute return addresses are refused (400)."),
];

/// Names under `FLUXLIT_` that are not settings but are known to FluxLit (set for or by the
/// children, or read by other tools); they never produce an "unknown variable" warning.
pub const KNOWN_NON_SETTING_ENV: &[&str] = &[
    "FLUXLIT_CONFIG",
    "FLUXLIT_APP",
    "FLUXLIT_API_PREFIX",
    "FLUXLIT_INTERNAL_API_BASE",
    "FLUXLIT_STREAMLIT_UPSTREAM",
    "FLUXLIT_STREAMLIT_UPSTREAM_FILE",
    "FLUXLIT_TESTS",
];

/// FluxLit for Python settings that have no meaning here (its Python runtime, page dependency
/// injection, URL sessions). Setting one is a `not_applicable` warning, never an error.
pub const NOT_APPLICABLE: &[&str] = &[
    "title",
    "streamlit_host",
    "streamlit_port",
    "enable_request_logging",
    "url_session_query_param",
    "strict_page_signatures",
    "experimental_yield_pages",
    "async_page_depends",
    "allow_unified_uvicorn_multiworker",
    "force_url_session_in_tests",
    "disable_url_session",
    "test_page_overrides",
];

/// Looks a key (or alias) up by its file name, case-insensitively.
pub fn find_key(name: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| {
        k.name.eq_ignore_ascii_case(name) || k.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    })
}

/// The closest known key to a misspelt one, if any is close enough to suggest.
pub fn suggest(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    KEYS.iter()
        .flat_map(|k| std::iter::once(k.name).chain(k.aliases.iter().copied()))
        .map(|candidate| (strsim::jaro_winkler(&lower, candidate), candidate))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_lowercase() {
        let mut seen = std::collections::BTreeSet::new();
        for k in KEYS {
            assert_eq!(k.name, k.name.to_ascii_lowercase());
            assert!(seen.insert(k.name), "duplicate key {}", k.name);
            for a in k.aliases {
                assert!(seen.insert(a), "duplicate alias {a}");
            }
        }
    }

    #[test]
    fn suggests_near_misses_only() {
        assert_eq!(suggest("gateway_prot"), Some("gateway_port"));
        assert_eq!(suggest("root_pth"), Some("root_path"));
        assert_eq!(suggest("completely_different"), None);
    }

    #[test]
    fn alias_resolves_to_its_key() {
        let spec = find_key("UVICORN_GRACEFUL_SHUTDOWN_TIMEOUT_S").expect("alias is known");
        assert_eq!(spec.name, "graceful_shutdown_timeout_s");
    }
}

/// Renders `docs/configuration.md` from [`KEYS`]; `cargo xtask docs` writes it and a test
/// fails when the committed file is stale.
pub fn render_markdown() -> String {
    let mut s = String::from(
        "# Configuration\n\n\
         <!-- Generated from crates/fluxlit-config/src/schema.rs by `cargo xtask docs`; do not edit. -->\n\n\
         Every setting can be given in every source. Precedence, highest first:\n\n\
         1. command-line flags of `fluxlit run`;\n\
         2. environment variables `FLUXLIT_<KEY>` (names are case-insensitive; unknown `FLUXLIT_*` names are warnings, other variables are ignored);\n\
         3. a `.env` file in the project directory (the working directory), as FluxLit for Python (pydantic-settings) read it: `FLUXLIT_<KEY>=value` lines, names case-insensitive, `#` comments, `export ` prefixes, single or double quotes (also over several lines), `${VAR}` references, and unquoted values with spaces (the rest of the line less a ` # comment`) allowed; other names are ignored, and so are other tools' lines FluxLit cannot read, unknown `FLUXLIT_*` names are warnings, a `FLUXLIT_*` line that cannot be read (an unclosed quote) is an error naming its line; the file only supplies settings and never changes the environment the sidecars get; `fluxlit config --show-origin` names it as `PATH/.env (FLUXLIT_KEY)`;\n\
         4. the project file: `--config PATH` / `FLUXLIT_CONFIG`, else `./fluxlit.toml` (top-level keys), else `[tool.fluxlit]` in `./pyproject.toml` (unknown keys are errors);\n\
         5. defaults.\n\n\
         Types: booleans accept `1/0`, `true/false`, `t/f`, `yes/no`, `y/n`, `on/off` (any case, as pydantic does; TOML booleans too); `log_level` accepts Uvicorn's names (`critical`, `error`, `warning`, `info`, `debug`, `trace`: `critical` logs what `error` does, `warning` is `warn`) or a tracing directive list (`info,fluxlit_gateway=debug`); durations accept seconds (`2.5`) or humantime strings (`30s`, `5m`, `250ms`); lists accept a JSON array, comma-separated text, or a TOML array.\n\n\
         | key | environment | flag | type | default | meaning |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for k in KEYS {
        let env = std::iter::once(k.env_name())
            .chain(k.aliases.iter().map(|a| env_name(a)))
            .map(|e| format!("`{e}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let ty = k.kind.doc_name();
        s.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} |\n",
            k.name,
            env,
            k.flag.map_or_else(|| "—".to_owned(), |f| format!("`{f}`")),
            ty,
            if k.default.is_empty() {
                "*(empty)*".to_owned()
            } else {
                format!("`{}`", k.default)
            },
            k.doc.replace('|', "\\|")
        ));
    }
    s.push_str(
        "\n## Compatibility notes\n\n\
         - `trust_proxy` with an empty `forwarded_allow_ips` trusts forwarded headers from loopback peers only \
         (127.0.0.0/8, ::1); FluxLit for Python trusted every peer. The safer default stays; `fluxlit config` \
         and the start-up log report it as the `forwarded_allow_ips_loopback_only` warning with the fix: list \
         your proxy's addresses in `forwarded_allow_ips`, or `127.0.0.1` when it runs on the same host.\n\
         - `log_level = \"warning\"` (and the other Uvicorn names) used to reach the log filter as a module \
         name, which silenced every line; level names are now translated, and a word that is no level is a \
         configuration error.\n\
         - Workbench/Connect mode, `fluxlit workbench [TARGET]` or `fluxlit run --workbench` (flag only, no \
         setting), means what it means in FluxLit for Python: `trust_proxy` is turned on (its origin is \
         `--workbench`) and a banner on stderr names the mode, the app, whose forwarded headers are honoured, \
         the loopback URLs of the app and of `{api}/healthz` (and `{api}/docs` when an API is configured), a \
         hint about `FLUXLIT_ROOT_PATH` when there is none, and `public_base_url` when set. One difference: \
         FluxLit for Python trusted every peer's forwarded headers in this mode (`forwarded_allow_ips=*`); \
         FluxLit keeps loopback only unless `forwarded_allow_ips` says otherwise, which fits a platform proxy \
         on the same host and lets no other client spoof its address, scheme or host. There is no dev-server \
         behaviour in it (FluxLit for Python has none either: `workbench` is `run`).\n");
    s.push_str(
        "\n## Not applicable\n\n\
         FluxLit for Python settings that only make sense for its Python runtime are not carried over: \
         `title` (FastAPI title), `streamlit_host` and `streamlit_port` (unused there too), `enable_request_logging` \
         (FastAPI middleware), `url_session_query_param`, `strict_page_signatures`, `experimental_yield_pages`, \
         `async_page_depends` (page dependency injection), and the variables `FLUXLIT_APP`, `FLUXLIT_TESTS`, \
         `FLUXLIT_FORCE_URL_SESSION_IN_TESTS`, `FLUXLIT_DISABLE_URL_SESSION`, `FLUXLIT_TEST_PAGE_OVERRIDES`. \
         More of FluxLit's settings (proxy trust, limits, metrics, auth) arrive with their features.\n",
    );
    s
}

#[cfg(test)]
mod docs_tests {
    #[test]
    fn configuration_docs_are_current() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == super::render_markdown(),
            "{} is stale: run `cargo xtask docs` and commit the result",
            path.display()
        );
    }
}
