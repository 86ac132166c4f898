//! FluxLit settings: schema, sources, precedence, provenance and validation.
//!
//! This crate owns every setting FluxLit reads and the one rule that combines them:
//! **CLI flags → environment (`FLUXLIT_*`) → `./.env` → project file → defaults** (the first
//! that sets a key wins). The `.env` file is read as pydantic-settings read it for FluxLit for
//! Python (only its `FLUXLIT_*` names; it never changes the process environment). The project
//! file is `./fluxlit.toml` (top-level keys), else `[tool.fluxlit]` in `./pyproject.toml`;
//! `--config PATH` or `FLUXLIT_CONFIG` picks another file.
//!
//! Invariants:
//! - Only this crate interprets the environment and config files, and it takes the environment as
//!   data ([`Environment`]), a snapshot taken once in `main`; nothing here calls `std::env::var`.
//! - Loading collects every problem before failing; each [`Problem`] names the key, the value
//!   (redacted if secret), where it came from, what was expected and how to fix it.
//! - Every loaded value keeps its [`Origin`], so `fluxlit config` can say where it came from.
//! - Nothing panics on any input.
//!
//! ```
//! use fluxlit_config::{load, CliOverrides, Environment, LoadOptions};
//!
//! let env = Environment::from_pairs([("FLUXLIT_GATEWAY_PORT", "9000")]);
//! let mut cli = CliOverrides::default();
//! cli.set("root_path", "/myapp", "--root-path");
//! let dir = std::env::temp_dir();
//! let loaded = load(&LoadOptions::new(&dir, env, cli)).expect("valid settings");
//! assert_eq!(loaded.settings.gateway_port, 9000);
//! assert_eq!(loaded.settings.root_path, "/myapp");
//! assert_eq!(loaded.origin("gateway_port").to_string(), "environment variable FLUXLIT_GATEWAY_PORT");
//! ```

mod file;
pub mod findings;
mod paths;
pub mod redact;
pub mod schema;
pub mod value;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::Serialized;
use serde::{Deserialize, Serialize};

pub use paths::{IpNet, PathRejection, normalize_api_mount, normalize_root_path, parse_ip_net};
use schema::{KEYS, KNOWN_NON_SETTING_ENV, KeySpec, find_key};
use value::Raw;

/// A snapshot of the process environment, taken once and passed around as data.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    vars: Vec<(String, String)>,
}

impl Environment {
    /// Builds a snapshot from name/value pairs (tests use this; `main` uses [`Environment::from_process`]).
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// Snapshots the current process environment. Variables whose name or value is not valid
    /// Unicode are skipped (no FluxLit setting can use them).
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }

    /// The value of `name` (exact, case-sensitive match), if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// All variables, in snapshot order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Values given on the command line, as text, each with the flag that gave it.
#[derive(Debug, Clone, Default)]
pub struct CliOverrides {
    values: BTreeMap<&'static str, (Raw, String)>,
}

impl CliOverrides {
    /// Sets `key` from `flag`. Unknown keys are ignored by the loader with a problem report,
    /// so a typo in the CLI wiring shows up in tests.
    pub fn set(&mut self, key: &str, value: impl Into<String>, flag: impl Into<String>) {
        let name = find_key(key).map_or("<unknown>", |k| k.name);
        self.values
            .insert(name, (Raw::Text(value.into()), flag.into()));
    }

    /// Sets a list-valued key from several arguments (for example `-- STREAMLIT_ARGS...`).
    pub fn set_list(&mut self, key: &str, values: &[String], flag: impl Into<String>) {
        let name = find_key(key).map_or("<unknown>", |k| k.name);
        let array = toml::Value::Array(values.iter().cloned().map(toml::Value::String).collect());
        self.values.insert(name, (Raw::Toml(array), flag.into()));
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Origin {
    /// The built-in default.
    Default,
    /// Computed from other settings or the machine (for example the Python interpreter).
    Derived {
        /// How it was derived.
        reason: String,
    },
    /// A project file.
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line of the key, when known.
        line: Option<usize>,
    },
    /// An environment variable.
    Env {
        /// Its name, as set.
        var: String,
    },
    /// A line of the project directory's `.env` file.
    #[serde(rename = "dotenv")]
    DotEnv {
        /// The file.
        path: PathBuf,
        /// The variable's name, as written in the file.
        var: String,
    },
    /// A command-line flag.
    Cli {
        /// The flag.
        flag: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::Derived { reason } => write!(f, "derived ({reason})"),
            Origin::File {
                path,
                line: Some(l),
            } => write!(f, "{}:{l}", path.display()),
            Origin::File { path, line: None } => write!(f, "{}", path.display()),
            Origin::Env { var } => write!(f, "environment variable {var}"),
            Origin::DotEnv { path, var } => write!(f, "{} ({var})", path.display()),
            Origin::Cli { flag } => write!(f, "command-line flag {flag}"),
        }
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key (or `"<file>"` for a file that could not be read or parsed).
    pub key: String,
    /// The offending value as given (`[REDACTED]` for secrets), if there is one.
    pub value: Option<String>,
    /// Where the value came from.
    pub origin: Origin,
    /// What was expected.
    pub expected: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.key)?;
        if let Some(v) = &self.value {
            write!(f, " = {v:?}")?;
        }
        write!(
            f,
            " (from {}): expected {}; fix: {}",
            self.origin, self.expected, self.fix
        )
    }
}

/// Loading failed; every problem found is listed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid configuration ({} problem{}):\n{}", .problems.len(), if .problems.len() == 1 { "" } else { "s" }, render_problems(.problems))]
pub struct ConfigError {
    /// The problems, in the order found (file, environment, flags, then cross-checks).
    pub problems: Vec<Problem>,
}

fn render_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A secret value (`*_secret`): redacted wherever it is printed or serialized.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The value itself, for the code that needs it (never for printing).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is unset.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "[REDACTED]"
        })
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { REDACTED })
    }
}

/// What secrets are replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// What happens when a sidecar exits on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// The gateway stops and exits non-zero (the platform restarts it).
    Exit,
    /// The sidecar is restarted with backoff.
    Restart,
}

/// How many Streamlit workers run (`streamlit_workers`): a fixed number, or one per available
/// CPU core. Written as a number or `"auto"` in files, the environment and `fluxlit config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamlitWorkers {
    /// One per available CPU core ([`std::thread::available_parallelism`], at least 1).
    Auto,
    /// This many (at least 1).
    Count(std::num::NonZeroU64),
}

impl StreamlitWorkers {
    /// The number of workers to start: the count, or for [`StreamlitWorkers::Auto`] the
    /// available parallelism (1 when the platform cannot say).
    pub fn resolve(self) -> u64 {
        match self {
            Self::Count(n) => n.get(),
            Self::Auto => std::thread::available_parallelism()
                .map(|n| n.get() as u64)
                .unwrap_or(1),
        }
    }
}

impl Default for StreamlitWorkers {
    fn default() -> Self {
        Self::Count(std::num::NonZeroU64::MIN)
    }
}

impl Serialize for StreamlitWorkers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Auto => s.serialize_str("auto"),
            Self::Count(n) => s.serialize_u64(n.get()),
        }
    }
}

impl<'de> Deserialize<'de> for StreamlitWorkers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Count(std::num::NonZeroU64),
            Word(String),
        }
        match Form::deserialize(d)? {
            Form::Count(n) => Ok(Self::Count(n)),
            Form::Word(w) if w.eq_ignore_ascii_case("auto") => Ok(Self::Auto),
            Form::Word(w) => Err(serde::de::Error::custom(format!(
                "expected a whole number, 1 or more, or `auto`, found {w:?}"
            ))),
        }
    }
}

/// Whose `X-Request-ID` the gateway keeps (`request_id_trust`). A kept id must be well formed
/// either way (1–128 visible ASCII characters); any other request gets a new UUIDv7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestIdTrust {
    /// Keep a well-formed id from any client (FluxLit for Python's behaviour, the default).
    Any,
    /// Keep it only from trusted proxies (`trust_proxy` on and the peer in
    /// `forwarded_allow_ips`); replace every other client's.
    TrustedProxies,
}

/// How the gateway authenticates (`auth_mode`; docs/auth.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Nobody: identity headers from clients are stripped on every hop.
    Off,
    /// A trusted front proxy authenticates (`auth_forward_*`).
    Forward,
    /// Identity headers stripped as with `Off`, and a valid bearer JWT (the `jwt_*` keys)
    /// required on every API request but the health endpoints (reference §8.1).
    Jwt,
    /// OpenID Connect login at the gateway, the backend-for-frontend (the `oidc_*` and
    /// `auth_*` keys; docs/auth.md): needs `public_base_url`, `oidc_issuer`, `oidc_client_id`
    /// and at least one of `auth_cookie_secrets`.
    Oidc,
}

impl AuthMode {
    /// The mode as written in settings (`off`, `forward`, `jwt`, `oidc`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Forward => "forward",
            Self::Jwt => "jwt",
            Self::Oidc => "oidc",
        }
    }
}

/// Where `auth_mode = oidc` keeps login sessions (`auth_session_store`; AUTH.md A.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStore {
    /// A sealed (AEAD) cookie holding the identity only, no provider tokens; stateless and
    /// shared by every replica that has the same `auth_cookie_secrets`.
    Cookie,
    /// This process's memory: one replica only, sessions lost on restart.
    Memory,
    /// Redis at `auth_session_redis_url`: the cookie holds a ticket, the record is kept there.
    Redis,
}

impl SessionStore {
    /// The store as written in settings (`cookie`, `memory`, `redis`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cookie => "cookie",
            Self::Memory => "memory",
            Self::Redis => "redis",
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The effective settings after precedence and validation (see `docs/configuration.md` for
/// every key). Paths are normalised, durations are [`Duration`]s, sizes are bytes, optional
/// values are `None` when unset, secrets are [`Secret`]s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)] // each field is documented in the schema (`schema::KEYS`) and docs/configuration.md
pub struct Settings {
    pub target: String,
    #[serde(deserialize_with = "null_as_empty")]
    pub streamlit_python: String,
    pub streamlit_run_cli_args: Vec<String>,
    pub streamlit_workers: StreamlitWorkers,
    pub streamlit_workers_min_ready: u64,
    pub streamlit_page_config: serde_json::Map<String, serde_json::Value>,
    pub api_command: Option<String>,
    pub api_upstream: Option<String>,
    pub ui_upstream: Option<String>,
    #[serde(with = "secs")]
    pub sidecar_start_timeout_s: Duration,
    #[serde(with = "secs")]
    pub sidecar_stop_timeout_s: Duration,
    #[serde(with = "secs")]
    pub streamlit_drain_timeout_s: Duration,
    pub streamlit_worker_max_rss_bytes: u64,
    pub sidecar_restart: RestartPolicy,
    pub pidfile: String,
    pub no_pidfile: bool,
    pub gateway_host: String,
    pub gateway_port: u16,
    pub root_path: String,
    pub streamlit_public_path: String,
    pub api_mount_path: String,
    pub public_base_url: String,
    pub strict_public_base_url: bool,
    pub trust_proxy: bool,
    pub forwarded_allow_ips: Vec<String>,
    pub trust_forwarded_prefix: bool,
    pub trust_forwarded_port: bool,
    pub request_id_trust: RequestIdTrust,
    pub gateway_forward_client_headers_to_streamlit: Vec<String>,
    #[serde(with = "secs")]
    pub gateway_upstream_connect_timeout_s: Duration,
    #[serde(with = "secs")]
    pub gateway_upstream_read_timeout_s: Duration,
    pub gateway_max_proxy_request_body_bytes: u64,
    pub gateway_max_api_request_body_bytes: u64,
    pub gateway_max_concurrent_upstream_http: u64,
    pub gateway_httpx_max_connections: u64,
    pub gateway_httpx_max_keepalive_connections: u64,
    pub gateway_worker_threads: u64,
    pub gateway_fast_path: bool,
    #[serde(with = "secs")]
    pub gateway_header_read_timeout_s: Duration,
    pub gateway_http2_max_concurrent_streams: u64,
    pub gateway_max_websockets_per_client_ip: u64,
    #[serde(with = "secs")]
    pub gateway_write_timeout_s: Duration,
    pub gateway_max_request_header_bytes: u64,
    pub gateway_max_connections: u64,
    pub gateway_max_connections_per_ip: u64,
    pub gateway_rate_limit_api_per_s: u64,
    pub gateway_rate_limit_api_burst: u64,
    pub gateway_rate_limit_ui_per_s: u64,
    pub gateway_rate_limit_ui_burst: u64,
    #[serde(with = "opt_secs")]
    pub gateway_ws_idle_timeout_s: Option<Duration>,
    #[serde(with = "opt_secs")]
    pub gateway_ws_max_lifetime_s: Option<Duration>,
    pub gateway_ws_allowed_origins: Vec<String>,
    #[serde(with = "secs")]
    pub gateway_ws_open_timeout_s: Duration,
    #[serde(with = "opt_secs")]
    pub gateway_ws_ping_interval_s: Option<Duration>,
    #[serde(with = "opt_secs")]
    pub gateway_ws_ping_timeout_s: Option<Duration>,
    #[serde(with = "opt_secs")]
    pub gateway_ws_close_timeout_s: Option<Duration>,
    pub gateway_ws_max_message_bytes: Option<u64>,
    #[serde(with = "secs")]
    pub graceful_shutdown_timeout_s: Duration,
    pub enable_security_headers: bool,
    pub cors_allow_origins: Vec<String>,
    pub cors_allow_credentials: bool,
    pub cors_middleware_kwargs: serde_json::Map<String, serde_json::Value>,
    pub log_level: String,
    pub log_format: LogFormat,
    pub debug: bool,
    pub enable_gateway_access_log: bool,
    pub enable_health_access_log: bool,
    pub metrics_addr: Option<String>,
    pub enable_gateway_prometheus_metrics: bool,
    pub gateway_prometheus_metrics_path: String,
    pub strict_startup: bool,
    pub auth_mode: AuthMode,
    pub auth_forward_trusted_cidrs: Vec<String>,
    pub auth_forward_user_header: String,
    pub auth_forward_headers: Vec<String>,
    pub auth_forward_require_https: bool,
    pub jwt_issuer: String,
    pub jwt_audience: Vec<String>,
    pub jwt_hs256_secret: Secret,
    pub jwt_jwks_url: String,
    pub jwt_leeway_seconds: u64,
    pub oidc_issuer: String,
    pub oidc_client_id: String,
    pub oidc_client_secret: Secret,
    pub oidc_bff_secret: Secret,
    pub oidc_compat_exchange: bool,
    pub oidc_scopes: Vec<String>,
    pub auth_required: bool,
    pub auth_public_paths: Vec<String>,
    pub auth_session_store: SessionStore,
    pub auth_session_redis_url: String,
    pub auth_session_key_prefix: String,
    pub auth_cookie_secrets: Vec<Secret>,
    pub auth_session_lifetime_s: u64,
    pub auth_session_idle_timeout_s: u64,
    pub auth_session_max_chunks: usize,
    pub auth_allowed_emails: Vec<String>,
    pub auth_allowed_email_domains: Vec<String>,
    pub auth_allowed_groups: Vec<String>,
    pub auth_groups_claim: String,
    pub auth_pass_access_token: bool,
    pub auth_streamlit_trusted_user_headers: bool,
    pub auth_logout_backchannel: bool,
    pub auth_post_logout_redirect_url: String,
    pub auth_allowed_redirect_origins: Vec<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let f = f64::deserialize(d)?;
        Duration::try_from_secs_f64(f).map_err(serde::de::Error::custom)
    }
}

mod opt_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<f64>::deserialize(d)?
            .map(|f| Duration::try_from_secs_f64(f).map_err(serde::de::Error::custom))
            .transpose()
    }
}

impl Settings {
    /// The public mount the gateway strips and Streamlit serves under: `root_path`, else
    /// `streamlit_public_path` (FluxLit's `public_mount_path()`), `""` when neither is set.
    pub fn public_mount(&self) -> &str {
        if self.root_path.is_empty() {
            &self.streamlit_public_path
        } else {
            &self.root_path
        }
    }

    /// The public origin, `scheme://host[:port]` of `public_base_url`: scheme and host in
    /// lower case, the scheme's default port (80, 443) left out, as browsers write an origin
    /// (RFC 6454 §6.1). `None` when `public_base_url` is not an absolute http(s) URL with a host
    /// (never with `auth_mode = oidc`: loading refuses that).
    ///
    /// ```
    /// # let mut s = fluxlit_config::load(&fluxlit_config::LoadOptions::new(&std::env::temp_dir(), Default::default(), Default::default())).unwrap().settings;
    /// s.public_base_url = "https://Apps.Example.com:443/myapp".into();
    /// assert_eq!(s.public_origin().as_deref(), Some("https://apps.example.com"));
    /// ```
    pub fn public_origin(&self) -> Option<String> {
        parse_origin(&self.public_base_url, true)
    }

    /// The path prefix of the login routes: root path (the [public mount](Self::public_mount))
    /// plus `api_mount_path` + `/auth`, e.g. `/api/auth` or `/myapp/api/auth`. The gateway serves
    /// `login`, `callback`, `logout` and `userinfo` below it.
    pub fn auth_route_prefix(&self) -> String {
        format!("{}{}/auth", self.public_mount(), self.api_mount_path)
    }

    /// The OpenID Connect `redirect_uri` to register at the provider: the
    /// [public origin](Self::public_origin) + [`auth_route_prefix`](Self::auth_route_prefix) +
    /// `/callback`, built from settings only, never from a request's `Host` or forwarded
    /// headers. `None` without a public origin.
    pub fn oidc_redirect_uri(&self) -> Option<String> {
        Some(format!(
            "{}{}/callback",
            self.public_origin()?,
            self.auth_route_prefix()
        ))
    }

    /// Where the provider sends the browser after logout (`post_logout_redirect_uri`, OpenID
    /// Connect RP-Initiated Logout 1.0 §3; register it at the provider):
    /// `auth_post_logout_redirect_url` when set, else the [public origin](Self::public_origin)
    /// plus root path + `/`. `None` when neither can be had.
    pub fn post_logout_redirect_uri(&self) -> Option<String> {
        if !self.auth_post_logout_redirect_url.is_empty() {
            return Some(self.auth_post_logout_redirect_url.clone());
        }
        Some(format!("{}{}/", self.public_origin()?, self.public_mount()))
    }

    /// The `auth_public_paths` rules, compiled ([`PublicPath::parse`]).
    ///
    /// # Errors
    /// The first entry that does not parse (never for loaded settings: loading refuses them).
    pub fn public_path_rules(&self) -> Result<Vec<PublicPath>, PublicPathError> {
        self.auth_public_paths
            .iter()
            .map(|e| PublicPath::parse(e))
            .collect()
    }

    /// The pidfile to write, resolved against `cwd`, or `None` when disabled.
    pub fn pidfile_path(&self, cwd: &Path) -> Option<PathBuf> {
        (!self.no_pidfile).then(|| cwd.join(&self.pidfile))
    }
}

/// One `auth_public_paths` entry: `regex` or `METHOD=regex` (METHOD: upper-case letters, e.g.
/// `GET`), matched against the whole request path under the root path (anchored at both ends).
#[derive(Debug, Clone)]
pub struct PublicPath {
    /// The method it is limited to, `None` for any.
    pub method: Option<http::Method>,
    /// The anchored pattern, `^(?:regex)$`.
    pub regex: regex::Regex,
}

/// Why an `auth_public_paths` entry was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{entry:?} is not `regex` or `METHOD=regex`: {reason}")]
pub struct PublicPathError {
    /// The entry as given.
    pub entry: String,
    /// What is wrong with it (the regex parser's message).
    pub reason: String,
}

impl PublicPath {
    /// Parses `regex` or `METHOD=regex`: text before the first `=` that is upper-case ASCII
    /// letters only is the method; everything else is the pattern (Rust `regex` syntax).
    ///
    /// ```
    /// use fluxlit_config::PublicPath;
    /// let p = PublicPath::parse("GET=/api/public/.*").unwrap();
    /// assert_eq!(p.method, Some(http::Method::GET));
    /// assert!(p.matches(&http::Method::GET, "/api/public/x"));
    /// assert!(!p.matches(&http::Method::POST, "/api/public/x"));
    /// assert!(!p.matches(&http::Method::GET, "/x/api/public/x"), "anchored");
    /// assert!(PublicPath::parse("/docs(").is_err());
    /// ```
    ///
    /// # Errors
    /// An empty pattern, or one the `regex` crate refuses.
    pub fn parse(entry: &str) -> Result<Self, PublicPathError> {
        let err = |reason: String| PublicPathError {
            entry: entry.to_owned(),
            reason,
        };
        let (method, pattern) = match entry.split_once('=') {
            Some((m, p)) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => {
                let method = http::Method::from_bytes(m.as_bytes())
                    .map_err(|e| err(format!("method {m:?}: {e}")))?;
                (Some(method), p)
            }
            _ => (None, entry),
        };
        if pattern.is_empty() {
            return Err(err("the pattern is empty".into()));
        }
        let regex =
            regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| err(e.to_string()))?;
        Ok(Self { method, regex })
    }

    /// Whether a request with `method` for `path` (the path under the root path) is public.
    pub fn matches(&self, method: &http::Method, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method) && self.regex.is_match(path)
    }
}

/// `scheme://host[:port]` of an absolute http(s) URL (with `path_ok`, it may have a path; never
/// userinfo, a query or a fragment), lower-cased, without the scheme's default port.
fn parse_origin(url: &str, path_ok: bool) -> Option<String> {
    if !valid_http_url(url) || url.contains(['?', '#']) {
        return None;
    }
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let authority = uri.authority()?;
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return None;
    }
    let path = uri.path_and_query().map_or("", |p| p.as_str());
    if !path_ok && !path.is_empty() && path != "/" {
        return None;
    }
    let host = authority.host().to_ascii_lowercase();
    let port = match (authority.port_u16(), scheme.as_str()) {
        (Some(80), "http") | (Some(443), "https") | (None, _) => String::new(),
        (Some(p), _) => format!(":{p}"),
    };
    Some(format!("{scheme}://{host}{port}"))
}

/// Whether `host` (as in a URL, IPv6 in brackets) is this machine: `localhost`, `*.localhost`,
/// 127.0.0.0/8 or `::1` (RFC 6761 §6.3).
pub fn is_loopback_host(host: &str) -> bool {
    let h = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    h == "localhost"
        || h.ends_with(".localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The host of an absolute URL (`None` when it has none).
fn url_host(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    Some(uri.host()?.to_owned())
}

/// What [`load`] needs: the working directory, the environment snapshot and the CLI values.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Directory the project file is looked up in and relative paths resolve against.
    pub cwd: PathBuf,
    /// Explicit config file (`--config`); overrides `FLUXLIT_CONFIG` and the lookup.
    pub config_file: Option<PathBuf>,
    /// The environment snapshot.
    pub env: Environment,
    /// Command-line values.
    pub cli: CliOverrides,
    /// The running `fluxlit` executable (`std::env::current_exe()`), when the caller knows it.
    /// When it lives in a Python virtual environment that has Streamlit (`pip install
    /// fluxlit-rs`: `VENV/bin/fluxlit` beside `VENV/bin/python`, `VENV/pyvenv.cfg`, and
    /// `VENV/lib/python3.*/site-packages/streamlit/`), that environment's interpreter is the
    /// default `streamlit_python` after `$VIRTUAL_ENV` and `./.venv`, so `VENV/bin/fluxlit run`
    /// works without activating the environment, as `VENV/bin/streamlit run` does. `None` in
    /// [`LoadOptions::new`].
    pub executable: Option<PathBuf>,
}

impl LoadOptions {
    /// Options with no explicit config file and no known executable.
    pub fn new(cwd: &Path, env: Environment, cli: CliOverrides) -> Self {
        Self {
            cwd: cwd.to_path_buf(),
            config_file: None,
            env,
            cli,
            executable: None,
        }
    }
}

/// A non-fatal finding while loading (for example an unknown `FLUXLIT_*` variable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What was found and what to do.
    pub message: String,
}

/// The result of a successful [`load`].
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The effective settings.
    pub settings: Settings,
    /// Where each key's value came from.
    pub origins: BTreeMap<&'static str, Origin>,
    /// The project file that was read, if any.
    pub project_file: Option<PathBuf>,
    /// The project directory ([`LoadOptions::cwd`]), where relative paths resolve (and where
    /// Streamlit looks for `.streamlit/`).
    pub project_dir: PathBuf,
    /// Non-fatal findings.
    pub warnings: Vec<Warning>,
}

impl Loaded {
    /// The origin of `key` ([`Origin::Default`] for unknown keys).
    pub fn origin(&self, key: &str) -> &Origin {
        static DEFAULT: Origin = Origin::Default;
        self.origins.get(key).unwrap_or(&DEFAULT)
    }
}

/// Loads, merges and validates the settings.
///
/// # Errors
/// [`ConfigError`] listing every problem: unreadable or malformed project file (with the parser's
/// position), unknown file keys (with a suggestion), values of the wrong type in any source, and
/// invalid combinations (for example both `api_upstream` and `api_command`).
pub fn load(opts: &LoadOptions) -> Result<Loaded, ConfigError> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    // Layer values: key -> (typed value, origin); later layers override earlier ones.
    let mut layers: Vec<Layer> = Vec::new();

    // The project directory's `.env`, read first because it may name the project file.
    let dotenv = read_dotenv(&opts.cwd, &mut problems);
    let dotenv_get = |name: &str| {
        dotenv.as_ref().and_then(|(_, vars)| {
            vars.iter()
                .rev()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        })
    };

    // 1. The project file.
    let explicit = opts.config_file.clone().or_else(|| {
        opts.env
            .get("FLUXLIT_CONFIG")
            .or_else(|| dotenv_get("FLUXLIT_CONFIG"))
            .filter(|s| !s.trim().is_empty())
            .map(PathBuf::from)
    });
    let found = file::read_project_file(&opts.cwd, explicit.as_deref(), &mut problems);
    let project_file = found.as_ref().map(|f| f.path.clone());
    if let Some(f) = &found {
        if let Some(shadowed) = &f.shadowed {
            warnings.push(Warning {
                code: "project_file_shadowed",
                message: format!(
                    "both {} and {} exist; {} wins and [tool.fluxlit] in {} is ignored",
                    f.path.display(),
                    shadowed.display(),
                    f.path.display(),
                    shadowed.display()
                ),
            });
        }
        let mut layer = BTreeMap::new();
        for (name, raw, line) in &f.entries {
            let origin = Origin::File {
                path: f.path.clone(),
                line: *line,
            };
            match find_key(name) {
                Some(spec) => {
                    if let Some(v) = check(spec, raw, &origin, &mut problems) {
                        layer.insert(spec.name, (v, origin));
                    }
                }
                None if schema::NOT_APPLICABLE.contains(&name.to_ascii_lowercase().as_str()) => warnings.push(Warning {
                    code: "not_applicable",
                    message: format!("{origin}: `{name}` is a FluxLit for Python setting with no meaning in FluxLit for Rust and is ignored"),
                }),
                None => problems.push(Problem {
                    key: name.clone(),
                    value: None,
                    origin,
                    expected: "a known FluxLit setting".into(),
                    fix: match schema::suggest(name) {
                        Some(s) => format!("did you mean `{s}`? Otherwise remove the key"),
                        None => "remove the key; `fluxlit config` lists every setting".into(),
                    },
                }),
            }
        }
        layers.push(layer);
    }

    // 2. The `.env` file (below the real environment, as in pydantic-settings).
    if let Some((path, vars)) = &dotenv {
        layers.push(variables_layer(
            vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            |var| Origin::DotEnv {
                path: path.clone(),
                var: var.to_owned(),
            },
            &mut problems,
            &mut warnings,
        ));
    }

    // 3. The environment.
    let mut layer = variables_layer(
        opts.env.iter(),
        |var| Origin::Env {
            var: var.to_owned(),
        },
        &mut problems,
        &mut warnings,
    );
    // PUBLIC_BASE_URL (a platform convention) stands in for FLUXLIT_PUBLIC_BASE_URL when that is
    // unset (in the environment and in `.env`).
    if !layer.contains_key("public_base_url")
        && dotenv_get("FLUXLIT_PUBLIC_BASE_URL").is_none_or(|v| v.trim().is_empty())
        && let Some(v) = opts
            .env
            .get("PUBLIC_BASE_URL")
            .filter(|v| !v.trim().is_empty())
    {
        layer.insert(
            "public_base_url",
            (
                serde_json::Value::String(v.to_owned()),
                Origin::Env {
                    var: "PUBLIC_BASE_URL".into(),
                },
            ),
        );
    }
    layers.push(layer);

    // 4. The command line.
    let mut layer = BTreeMap::new();
    for (name, (raw, flag)) in &opts.cli.values {
        let origin = Origin::Cli { flag: flag.clone() };
        match find_key(name) {
            Some(spec) => {
                if let Some(v) = check(spec, raw, &origin, &mut problems) {
                    layer.insert(spec.name, (v, origin));
                }
            }
            None => problems.push(Problem {
                key: (*name).to_owned(),
                value: None,
                origin,
                expected: "a known setting".into(),
                fix: "this is a bug in FluxLit's flag wiring; please report it".into(),
            }),
        }
    }
    layers.push(layer);

    // Merge with figment, remembering each winner's origin.
    let mut figment = Figment::from(Serialized::defaults(defaults()));
    let mut origins: BTreeMap<&'static str, Origin> =
        KEYS.iter().map(|k| (k.name, Origin::Default)).collect();
    for layer in layers {
        let values: BTreeMap<&str, serde_json::Value> =
            layer.iter().map(|(k, (v, _))| (*k, v.clone())).collect();
        figment = figment.merge(Serialized::defaults(values));
        for (k, (_, origin)) in layer {
            origins.insert(k, origin);
        }
    }

    // Values that failed their type check were left out of the merge (their defaults stand
    // in), so the cross-key checks below still run and every problem is reported at once.
    let raw: Settings = match figment.extract() {
        Ok(r) => r,
        Err(e) => {
            for err in e {
                let key = err.path.join(".");
                problems.push(Problem {
                    origin: origins
                        .get(key.as_str())
                        .cloned()
                        .unwrap_or(Origin::Default),
                    key,
                    value: None,
                    expected: "a value of the setting's type".into(),
                    fix: format!("correct the value ({err})"),
                });
            }
            return Err(ConfigError { problems });
        }
    };

    let settings = resolve(raw, opts, &mut origins, &mut problems);
    match settings {
        Some(settings) if problems.is_empty() => Ok(Loaded {
            settings,
            origins,
            project_file,
            project_dir: opts.cwd.clone(),
            warnings,
        }),
        _ => Err(ConfigError { problems }),
    }
}

/// One source's values: key -> (typed value, origin).
type Layer = BTreeMap<&'static str, (serde_json::Value, Origin)>;

/// Turns variables (the environment, or a `.env` file's lines) into a layer: `FLUXLIT_<KEY>`
/// names (any case) are checked against their key; other names, and the `FLUXLIT_*` names that
/// are not settings ([`KNOWN_NON_SETTING_ENV`]), are skipped; unknown `FLUXLIT_*` names are
/// warnings. For repeated names the last one wins.
fn variables_layer<'a>(
    vars: impl Iterator<Item = (&'a str, &'a str)>,
    origin_of: impl Fn(&str) -> Origin,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Warning>,
) -> Layer {
    let mut layer = BTreeMap::new();
    for (var, val) in vars {
        let upper = var.to_ascii_uppercase();
        let Some(name) = upper.strip_prefix("FLUXLIT_") else {
            continue;
        };
        if KNOWN_NON_SETTING_ENV.contains(&upper.as_str()) {
            continue;
        }
        let origin = origin_of(var);
        match find_key(name) {
            Some(spec) => {
                if let Some(v) = check(spec, &Raw::Text(val.to_owned()), &origin, problems) {
                    layer.insert(spec.name, (v, origin));
                }
            }
            None if schema::NOT_APPLICABLE.contains(&name.to_ascii_lowercase().as_str()) => warnings.push(Warning {
                code: "not_applicable",
                message: format!(
                    "{origin} is a FluxLit for Python setting with no meaning in FluxLit for Rust and is ignored (see docs/configuration.md, \"Not applicable\")"
                ),
            }),
            None => warnings.push(Warning {
                code: "unknown_env",
                message: format!(
                    "{origin} is not a FluxLit setting and is ignored{}",
                    schema::suggest(name)
                        .map(|s| format!(" (did you mean {}?)", schema::env_name(s)))
                        .unwrap_or_default()
                ),
            }),
        }
    }
    layer
}

/// Reads `cwd/.env` with `dotenvy` (`KEY=value`, `export KEY=value`, quotes, multi-line quoted
/// values, `#` comments, `${VAR}` references), without touching the process environment.
/// `None` when there is no such file.
///
/// python-dotenv, which FluxLit for Python read `.env` with, is more lenient than `dotenvy` in
/// two ways this keeps: a line it cannot read is skipped, not fatal (only the `FLUXLIT_*` lines
/// matter here; a `FLUXLIT_*` line that stays unreadable is a [`Problem`] naming its line), and
/// an unquoted value may contain spaces (`FLUXLIT_API_COMMAND=uvicorn api:app --port {port}`):
/// the rest of the line, less a ` # comment`, trimmed ([`unquoted_assignment`]).
fn read_dotenv(
    cwd: &Path,
    problems: &mut Vec<Problem>,
) -> Option<(PathBuf, Vec<(String, String)>)> {
    let path = cwd.join(".env");
    if !path.is_file() {
        return None;
    }
    let mut problem = |line: Option<usize>, expected: String, fix: &str| {
        problems.push(Problem {
            key: "<file>".into(),
            value: None,
            origin: Origin::File {
                path: path.clone(),
                line,
            },
            expected,
            fix: fix.into(),
        });
    };
    let src = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) => {
            problem(
                None,
                format!("a readable UTF-8 .env file ({e})"),
                "fix the file's permissions or encoding, or remove it",
            );
            return None;
        }
    };
    let text = src.strip_prefix('\u{feff}').unwrap_or(&src);
    // The physical lines that assign a FLUXLIT_* name, with their 1-based numbers.
    let fluxlit_lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim_start();
            let l = l.strip_prefix("export ").map_or(l, str::trim_start);
            l.get(..8)
                .is_some_and(|p| p.eq_ignore_ascii_case("FLUXLIT_"))
        })
        .map(|(i, l)| (i + 1, l))
        .collect();
    let mut vars = Vec::new();
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        match item {
            Ok(kv) => vars.push(kv),
            // dotenvy names the logical line it could not read, or the rest of it from where
            // it failed; a FLUXLIT_* line ends with that text.
            Err(dotenvy::Error::LineParse(rest, at)) => {
                let rest = rest.trim_end();
                let Some((number, line)) = fluxlit_lines
                    .iter()
                    .find(|(_, l)| !rest.is_empty() && l.trim_end().ends_with(rest))
                else {
                    continue; // not a FluxLit line: skipped, as python-dotenv skips it
                };
                match unquoted_assignment(line) {
                    Some(kv) => vars.push(kv),
                    None => problem(
                        Some(*number),
                        format!(
                            "NAME=value lines (the line {:?} cannot be read at character {at})",
                            line.trim_end()
                        ),
                        "close every quote; quote values that contain quotes; start comments with #",
                    ),
                }
            }
            Err(e) => {
                problem(
                    None,
                    format!("a readable .env file ({e})"),
                    "fix or remove the file",
                );
                return None;
            }
        }
    }
    Some((path, vars))
}

/// `[export ]NAME=value` with an unquoted value, read as python-dotenv reads it: the rest of the
/// line less an inline comment (whitespace then `#`), trimmed. `None` for a quoted value or a
/// line that is no assignment.
fn unquoted_assignment(line: &str) -> Option<(String, String)> {
    let line = line.trim_start();
    let line = line.strip_prefix("export ").unwrap_or(line);
    let (name, value) = line.split_once('=')?;
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    let value = value.trim_start();
    if value.starts_with(['"', '\'']) {
        return None;
    }
    let end = value
        .char_indices()
        .find(|&(i, c)| c == '#' && value[..i].ends_with(char::is_whitespace))
        .map_or(value.len(), |(i, _)| i);
    Some((name.to_owned(), value[..end].trim_end().to_owned()))
}

/// Checks a raw value against its key; records a problem and returns `None` when it does not fit.
fn check(
    spec: &KeySpec,
    raw: &Raw,
    origin: &Origin,
    problems: &mut Vec<Problem>,
) -> Option<serde_json::Value> {
    match value::convert(spec.kind, raw) {
        Ok(v) => Some(v),
        Err(()) => {
            problems.push(Problem {
                key: spec.name.to_owned(),
                value: Some(if spec.secret {
                    "[REDACTED]".into()
                } else {
                    raw.display()
                }),
                origin: origin.clone(),
                expected: spec.kind.expected().to_owned(),
                fix: format!(
                    "set {} to {} (default: {})",
                    spec.name,
                    spec.kind.expected(),
                    spec.default
                ),
            });
            None
        }
    }
}

/// The defaults layer, derived from the schema: optional kinds are absent (`null`), every
/// other default is parsed by its kind (a test checks that each one parses).
fn defaults() -> serde_json::Map<String, serde_json::Value> {
    KEYS.iter()
        .map(|k| {
            let v = if k.kind.optional() {
                serde_json::Value::Null
            } else {
                value::convert(k.kind, &Raw::Text(k.default.to_owned()))
                    .unwrap_or(serde_json::Value::Null)
            };
            (k.name.to_owned(), v)
        })
        .collect()
}

/// Streamlit flags FluxLit sets itself; user arguments may not set them.
const RESERVED_STREAMLIT_FLAGS: &[&str] =
    &["--server.port", "--server.address", "--server.baseUrlPath"];

fn resolve(
    mut raw: Settings,
    opts: &LoadOptions,
    origins: &mut BTreeMap<&'static str, Origin>,
    problems: &mut Vec<Problem>,
) -> Option<Settings> {
    let origin_of = |origins: &BTreeMap<&'static str, Origin>, k: &str| {
        origins.get(k).cloned().unwrap_or(Origin::Default)
    };
    let mut bad = |key: &str, value: &str, expected: &str, fix: &str, origin: Origin| {
        problems.push(Problem {
            key: key.to_owned(),
            value: Some(value.to_owned()),
            origin,
            expected: expected.to_owned(),
            fix: fix.to_owned(),
        });
    };

    let root_path = normalize_root_path(&raw.root_path).unwrap_or_else(|why| {
        bad(
            "root_path",
            &raw.root_path,
            &format!("a URL path prefix such as /myapp or /apps/my-app ({why})"),
            "use slash-separated segments of letters, digits and -._~ only",
            origin_of(origins, "root_path"),
        );
        String::new()
    });
    let streamlit_public_path =
        normalize_root_path(&raw.streamlit_public_path).unwrap_or_else(|why| {
            bad(
                "streamlit_public_path",
                &raw.streamlit_public_path,
                &format!("a URL path prefix such as /myapp ({why})"),
                "use slash-separated segments of letters, digits and -._~ only",
                origin_of(origins, "streamlit_public_path"),
            );
            String::new()
        });
    let api_mount_path = normalize_api_mount(&raw.api_mount_path).unwrap_or_else(|why| {
        bad(
            "api_mount_path",
            &raw.api_mount_path,
            &format!("a URL path such as /api ({why})"),
            "choose a mount below the root, for example /api or /v1",
            origin_of(origins, "api_mount_path"),
        );
        "/api".into()
    });

    if raw.api_upstream.is_some() && raw.api_command.is_some() {
        bad(
            "api_upstream",
            raw.api_upstream.as_deref().unwrap_or_default(),
            &format!(
                "either api_upstream or api_command, not both (api_command is set by {})",
                origin_of(origins, "api_command")
            ),
            "remove one of them: api_upstream for an API that runs elsewhere, api_command for one FluxLit starts",
            origin_of(origins, "api_upstream"),
        );
    }
    if let Some(u) = &raw.api_upstream
        && let Err(why) = paths::parse_upstream_url(u)
    {
        bad(
            "api_upstream",
            u,
            &format!("an http:// URL with a host and port, optionally a base path ({why})"),
            "for example http://127.0.0.1:9000 or http://api.internal:8080/v1",
            origin_of(origins, "api_upstream"),
        );
    }
    if let Some(u) = &raw.ui_upstream
        && let Err(why) = paths::parse_upstream_url(u)
    {
        bad(
            "ui_upstream",
            u,
            &format!("an http:// URL with a host and port, optionally a base path ({why})"),
            "for example http://127.0.0.1:8501",
            origin_of(origins, "ui_upstream"),
        );
    }
    for arg in &raw.streamlit_run_cli_args {
        let flag = arg.split('=').next().unwrap_or(arg);
        if RESERVED_STREAMLIT_FLAGS.contains(&flag) {
            bad(
                "streamlit_run_cli_args",
                arg,
                "Streamlit arguments other than --server.port, --server.address and --server.baseUrlPath",
                "FluxLit sets these itself: the port is picked on loopback, the address is 127.0.0.1, and baseUrlPath comes from root_path",
                origin_of(origins, "streamlit_run_cli_args"),
            );
        }
    }
    let min_ready = raw.streamlit_workers_min_ready;
    let workers_cap = match raw.streamlit_workers {
        StreamlitWorkers::Count(n) => Some(n.get()),
        StreamlitWorkers::Auto => None,
    };
    if min_ready == 0 || workers_cap.is_some_and(|n| min_ready > n) {
        bad(
            "streamlit_workers_min_ready",
            &min_ready.to_string(),
            &match workers_cap {
                Some(n) => format!("a whole number from 1 to streamlit_workers ({n})"),
                None => "a whole number, 1 or more".to_owned(),
            },
            "readiness needs at least one ready Streamlit worker, and cannot wait for more workers than run; lower it or raise streamlit_workers",
            origin_of(origins, "streamlit_workers_min_ready"),
        );
    }
    if raw.target.trim().is_empty() {
        bad(
            "target",
            &raw.target,
            "the path of a Streamlit script",
            "pass the script as `fluxlit run app.py` or set target in fluxlit.toml",
            origin_of(origins, "target"),
        );
    }
    if raw.gateway_host.trim().is_empty() {
        bad(
            "gateway_host",
            &raw.gateway_host,
            "an IP address or host name to bind",
            "use 127.0.0.1 for local use or 0.0.0.0 in a container",
            origin_of(origins, "gateway_host"),
        );
    }

    if raw.streamlit_python.is_empty() {
        let (python, reason) = default_python(opts);
        origins.insert("streamlit_python", Origin::Derived { reason });
        raw.streamlit_python = python;
    }
    if raw.pidfile.trim().is_empty() && !raw.no_pidfile {
        bad(
            "pidfile",
            &raw.pidfile,
            "a file path",
            "set a path such as .fluxlit.pid, or set no_pidfile to skip the pidfile",
            origin_of(origins, "pidfile"),
        );
    }
    let metrics_path = if raw.gateway_prometheus_metrics_path.starts_with('/') {
        raw.gateway_prometheus_metrics_path.clone()
    } else {
        format!("/{}", raw.gateway_prometheus_metrics_path)
    };
    if metrics_path == api_mount_path || metrics_path.starts_with(&format!("{api_mount_path}/")) {
        bad(
            "gateway_prometheus_metrics_path",
            &raw.gateway_prometheus_metrics_path,
            &format!("a path outside the API mount {api_mount_path} (the API would shadow it)"),
            "keep the default /__fluxlit/metrics, or choose another path outside the API mount",
            origin_of(origins, "gateway_prometheus_metrics_path"),
        );
    }
    for entry in &raw.forwarded_allow_ips {
        if entry != "*" && paths::parse_ip_net(entry).is_err() {
            bad(
                "forwarded_allow_ips",
                entry,
                "IP addresses or CIDR ranges (IPv4 or IPv6), e.g. 10.0.0.0/8, 192.168.1.10, fd00::/8",
                "list the addresses of your reverse proxies",
                origin_of(origins, "forwarded_allow_ips"),
            );
        }
    }
    oidc_checks(&raw, origins, &mut bad);
    raw.jwt_audience.retain(|a| !a.trim().is_empty());
    if raw.auth_mode == AuthMode::Jwt {
        let mode = format!(
            "auth_mode is jwt (from {})",
            origin_of(origins, "auth_mode")
        );
        if raw.jwt_issuer.trim().is_empty() {
            bad(
                "jwt_issuer",
                &raw.jwt_issuer,
                &format!("the issuer (`iss`) of the bearer tokens, because {mode}"),
                "set jwt_issuer to your provider's issuer, e.g. FLUXLIT_JWT_ISSUER=https://login.example.com/realms/main",
                origin_of(origins, "jwt_issuer"),
            );
        } else if raw.jwt_hs256_secret.is_empty()
            && raw.jwt_jwks_url.is_empty()
            && !valid_http_url(&raw.jwt_issuer)
        {
            bad(
                "jwt_issuer",
                &raw.jwt_issuer,
                &format!(
                    "an http(s) URL whose OpenID discovery document ({{issuer}}/.well-known/openid-configuration) names the keys, because {mode} and neither jwt_jwks_url nor jwt_hs256_secret is set"
                ),
                "set jwt_jwks_url to your provider's JWKS URL, or jwt_hs256_secret for HS256 tokens",
                origin_of(origins, "jwt_issuer"),
            );
        }
        if raw.jwt_audience.is_empty() {
            bad(
                "jwt_audience",
                "[]",
                &format!("one audience (`aud`) or a list, because {mode}"),
                "set jwt_audience to the audience your provider puts in tokens for this API, e.g. FLUXLIT_JWT_AUDIENCE=fluxlit-api (a list: a,b or [\"a\",\"b\"])",
                origin_of(origins, "jwt_audience"),
            );
        }
        let secret = raw.jwt_hs256_secret.expose().len();
        if secret > 0 && secret < 32 {
            bad(
                "jwt_hs256_secret",
                REDACTED,
                &format!(
                    "a shared secret of at least 32 bytes for HS256 (RFC 7518 §3.2), not {secret} bytes"
                ),
                "generate one, e.g. `openssl rand -base64 48`, and give the same value to the token issuer",
                origin_of(origins, "jwt_hs256_secret"),
            );
        }
    }
    if !raw.jwt_jwks_url.is_empty() && !valid_http_url(&raw.jwt_jwks_url) {
        bad(
            "jwt_jwks_url",
            &raw.jwt_jwks_url,
            "an absolute http:// or https:// URL with a host",
            "copy the jwks_uri of your provider's /.well-known/openid-configuration",
            origin_of(origins, "jwt_jwks_url"),
        );
    }
    if raw.auth_mode == AuthMode::Forward && raw.auth_forward_trusted_cidrs.is_empty() {
        bad(
            "auth_forward_trusted_cidrs",
            "[]",
            "at least one IP or CIDR when auth_mode = forward",
            "list the address of the front proxy as FluxLit sees it, e.g. 10.0.0.5 or 10.0.0.0/24",
            origin_of(origins, "auth_forward_trusted_cidrs"),
        );
    }
    for entry in &raw.auth_forward_trusted_cidrs {
        if paths::parse_ip_net(entry).is_err() {
            bad(
                "auth_forward_trusted_cidrs",
                entry,
                "IP addresses or CIDR ranges (IPv4 or IPv6), e.g. 10.0.0.0/8, 192.168.1.10, fd00::/8",
                "list the addresses of the front proxy",
                origin_of(origins, "auth_forward_trusted_cidrs"),
            );
        }
    }
    for (key, name) in std::iter::once(("auth_forward_user_header", &raw.auth_forward_user_header))
        .chain(
            raw.auth_forward_headers
                .iter()
                .map(|h| ("auth_forward_headers", h)),
        )
    {
        if !is_field_name(name) {
            bad(
                key,
                name,
                "an HTTP header name (letters, digits and - only), e.g. X-Forwarded-User",
                "use the header name the front proxy sets",
                origin_of(origins, key),
            );
        }
    }
    if !raw.jwt_hs256_secret.is_empty() && !raw.jwt_jwks_url.is_empty() {
        bad(
            "jwt_hs256_secret",
            REDACTED,
            &format!(
                "either jwt_hs256_secret or jwt_jwks_url, not both (jwt_jwks_url is set by {})",
                origin_of(origins, "jwt_jwks_url")
            ),
            "use the shared secret for HS256 tokens or the JWKS URL for RS256/ES256 tokens",
            origin_of(origins, "jwt_hs256_secret"),
        );
    }

    if raw.gateway_max_request_header_bytes < 8192 {
        bad(
            "gateway_max_request_header_bytes",
            &raw.gateway_max_request_header_bytes.to_string(),
            "at least 8192 bytes (8KiB)",
            "use the default 64KiB unless you need more",
            origin_of(origins, "gateway_max_request_header_bytes"),
        );
    }
    match value::parse_log_level(&raw.log_level) {
        Some(level) => raw.log_level = level,
        None => bad(
            "log_level",
            &raw.log_level,
            "a level: critical, error, warning, info, debug, trace (Uvicorn's names) or warn, off; or comma-separated TARGET=LEVEL directives such as info,fluxlit_gateway=debug",
            "use one of the level names; to log one module more, write info,MODULE=debug",
            origin_of(origins, "log_level"),
        ),
    }
    if let Some(addr) = &raw.metrics_addr
        && addr.parse::<std::net::SocketAddr>().is_err()
    {
        bad(
            "metrics_addr",
            addr,
            "an IP address and port such as 127.0.0.1:9100",
            "give the admin listener's address with a port",
            origin_of(origins, "metrics_addr"),
        );
    }
    raw.root_path = root_path;
    raw.streamlit_public_path = streamlit_public_path;
    raw.api_mount_path = api_mount_path;
    raw.gateway_prometheus_metrics_path = metrics_path;
    Some(raw)
}

/// The checks of the OIDC login's keys (`oidc_*`, `auth_*`; docs/auth.md). A value's form is
/// checked whenever it is set (so a mistake shows before the mode is switched on); what the
/// login needs (the public URL, issuer, client id, a cookie secret, Redis's URL) only with
/// `auth_mode = oidc`. Secrets are never shown, nor passwords in URLs.
fn oidc_checks(
    raw: &Settings,
    origins: &BTreeMap<&'static str, Origin>,
    bad: &mut impl FnMut(&str, &str, &str, &str, Origin),
) {
    let origin_of = |k: &str| origins.get(k).cloned().unwrap_or(Origin::Default);
    let shown = |v: &str| redact::redact_url_passwords(v);
    let oidc = raw.auth_mode == AuthMode::Oidc;
    let mode = format!("auth_mode is oidc (from {})", origin_of("auth_mode"));

    if !raw.oidc_issuer.is_empty() {
        let loopback = url_host(&raw.oidc_issuer).is_some_and(|h| is_loopback_host(&h));
        let https = raw.oidc_issuer.starts_with("https://");
        if !valid_http_url(&raw.oidc_issuer)
            || raw.oidc_issuer.contains(['?', '#'])
            || !(https || loopback)
        {
            bad(
                "oidc_issuer",
                &shown(&raw.oidc_issuer),
                "an absolute https:// URL without query or fragment, exactly as the provider names itself in its discovery document (`issuer`; OpenID Connect Discovery 1.0 §2, §4.3); http:// only for a provider on loopback",
                "copy the `issuer` of your provider's /.well-known/openid-configuration, e.g. https://login.example.com/realms/main",
                origin_of("oidc_issuer"),
            );
        }
    } else if oidc {
        bad(
            "oidc_issuer",
            "",
            &format!("the provider's issuer URL, because {mode}"),
            "set oidc_issuer, e.g. FLUXLIT_OIDC_ISSUER=https://login.example.com/realms/main",
            origin_of("oidc_issuer"),
        );
    }
    if oidc && raw.oidc_client_id.trim().is_empty() {
        bad(
            "oidc_client_id",
            &raw.oidc_client_id,
            &format!("the client id registered at the provider, because {mode}"),
            "register FluxLit as a client at the provider and set oidc_client_id (and oidc_client_secret for a confidential client)",
            origin_of("oidc_client_id"),
        );
    }
    if !raw.oidc_scopes.iter().any(|s| s == "openid") {
        bad(
            "oidc_scopes",
            &format!("{:?}", raw.oidc_scopes),
            "a list of scopes that contains openid (OpenID Connect Core 1.0 §3.1.2.1)",
            "add openid, e.g. oidc_scopes = [\"openid\", \"profile\", \"email\"] (the default)",
            origin_of("oidc_scopes"),
        );
    }
    if oidc {
        if parse_origin(&raw.public_base_url, true).is_none() {
            bad(
                "public_base_url",
                &shown(&raw.public_base_url),
                &format!(
                    "the absolute http(s) URL users reach the app at, without user, query or fragment, because {mode}: the redirect and logout URLs are built from it"
                ),
                "set public_base_url (FLUXLIT_PUBLIC_BASE_URL), e.g. https://apps.example.com or https://apps.example.com/myapp",
                origin_of("public_base_url"),
            );
        }
        if raw.auth_cookie_secrets.is_empty() {
            bad(
                "auth_cookie_secrets",
                "[]",
                &format!(
                    "at least one secret of 32 bytes or more for the session cookies, because {mode}"
                ),
                "generate one, e.g. `openssl rand -base64 48`, and give every replica the same list (FLUXLIT_AUTH_COOKIE_SECRETS=new,old: the first seals, all open)",
                origin_of("auth_cookie_secrets"),
            );
        }
        if raw.auth_session_store == SessionStore::Redis && raw.auth_session_redis_url.is_empty() {
            bad(
                "auth_session_redis_url",
                "",
                &format!(
                    "the Redis URL, because auth_session_store is redis (from {}) and {mode}",
                    origin_of("auth_session_store")
                ),
                "set auth_session_redis_url, e.g. redis://redis.internal:6379/0",
                origin_of("auth_session_redis_url"),
            );
        }
    }
    for (i, secret) in raw.auth_cookie_secrets.iter().enumerate() {
        let len = secret.expose().len();
        if len < 32 {
            bad(
                "auth_cookie_secrets",
                REDACTED,
                &format!(
                    "secrets of at least 32 bytes each; entry {i} (counting from 0) has {len} bytes"
                ),
                "generate one, e.g. `openssl rand -base64 48`",
                origin_of("auth_cookie_secrets"),
            );
        }
    }
    for entry in &raw.auth_public_paths {
        if let Err(e) = PublicPath::parse(entry) {
            bad(
                "auth_public_paths",
                entry,
                &format!(
                    "entries `regex` or `METHOD=regex`, matched on the whole path under the root path ({})",
                    e.reason
                ),
                "e.g. /api/public/.* or GET=/api/items/[0-9]+; escape regex characters such as ( and . with \\",
                origin_of("auth_public_paths"),
            );
        }
    }
    let redis = &raw.auth_session_redis_url;
    if !redis.is_empty()
        && !["redis://", "rediss://", "unix://"]
            .iter()
            .any(|p| redis.starts_with(p) && redis.len() > p.len())
    {
        bad(
            "auth_session_redis_url",
            &shown(redis),
            "a redis://, rediss:// (TLS) or unix:// URL",
            "e.g. redis://redis.internal:6379/0, rediss://:password@redis.example:6380 or unix:///run/redis.sock",
            origin_of("auth_session_redis_url"),
        );
    }
    if raw.auth_session_lifetime_s == 0 {
        bad(
            "auth_session_lifetime_s",
            "0",
            "a session lifetime of at least 1 second",
            "keep the default 43200 (12 hours), or set the absolute lifetime you want in seconds",
            origin_of("auth_session_lifetime_s"),
        );
    }
    if oidc && raw.oidc_compat_exchange {
        let secret = raw.oidc_bff_secret.expose().len();
        if secret == 0 {
            bad(
                "oidc_bff_secret",
                "",
                &format!(
                    "the HS256 key of the first-party tokens, because oidc_compat_exchange is on (from {}) and {mode}",
                    origin_of("oidc_compat_exchange")
                ),
                "set oidc_bff_secret (FLUXLIT_OIDC_BFF_SECRET) to the secret your FluxLit for Python app used (at least 32 bytes; e.g. `openssl rand -base64 48`), or turn oidc_compat_exchange off",
                origin_of("oidc_bff_secret"),
            );
        } else if secret < 32 {
            bad(
                "oidc_bff_secret",
                REDACTED,
                &format!(
                    "a shared secret of at least 32 bytes for HS256 (RFC 7518 §3.2), not {secret} bytes"
                ),
                "generate one, e.g. `openssl rand -base64 48`, and give the same value to every replica and to an API that verifies the tokens itself",
                origin_of("oidc_bff_secret"),
            );
        }
        if raw.auth_session_store == SessionStore::Cookie {
            bad(
                "oidc_compat_exchange",
                "true",
                &format!(
                    "auth_session_store = memory or redis (it is cookie, from {}): one-time codes must be single-use, so they are kept by the server-side store, and a code sealed into a stateless value could be redeemed again",
                    origin_of("auth_session_store")
                ),
                "set auth_session_store = \"redis\" (any replica can redeem a code) or \"memory\" (one replica), or turn oidc_compat_exchange off",
                origin_of("oidc_compat_exchange"),
            );
        }
    }
    if raw.auth_session_idle_timeout_s > 0 && raw.auth_session_store == SessionStore::Cookie {
        bad(
            "auth_session_idle_timeout_s",
            &raw.auth_session_idle_timeout_s.to_string(),
            &format!(
                "auth_session_store = memory or redis: an idle timeout needs the server to know when a session was last used, and the cookie store (auth_session_store from {}) keeps no server state, so a copy of the cookie would stay valid however long it lies unused",
                origin_of("auth_session_store")
            ),
            "set auth_session_store = \"redis\" (or \"memory\" for one replica), or set auth_session_idle_timeout_s = 0 (off) and rely on auth_session_lifetime_s",
            origin_of("auth_session_idle_timeout_s"),
        );
    }
    if !(1..=10).contains(&raw.auth_session_max_chunks) {
        bad(
            "auth_session_max_chunks",
            &raw.auth_session_max_chunks.to_string(),
            "from 1 to 10 cookies per session",
            "keep the default 3; a larger identity needs auth_session_store = redis",
            origin_of("auth_session_max_chunks"),
        );
    }
    if raw.auth_logout_backchannel && raw.auth_session_store == SessionStore::Cookie {
        bad(
            "auth_logout_backchannel",
            "true",
            "auth_session_store = memory or redis: a back-channel logout ends a session on the server, and the cookie store keeps none",
            "set auth_session_store = \"redis\" (or \"memory\" for one replica), or turn auth_logout_backchannel off",
            origin_of("auth_logout_backchannel"),
        );
    }
    let post = &raw.auth_post_logout_redirect_url;
    if !post.is_empty() && parse_origin(post, true).is_none() {
        bad(
            "auth_post_logout_redirect_url",
            &shown(post),
            "an absolute http:// or https:// URL without user, query or fragment",
            "e.g. https://apps.example.com/myapp/ (register the same URL at the provider), or leave it empty for the public URL's root path",
            origin_of("auth_post_logout_redirect_url"),
        );
    }
    for entry in &raw.auth_allowed_redirect_origins {
        if parse_origin(entry, false).is_none() || entry.ends_with('/') {
            bad(
                "auth_allowed_redirect_origins",
                &shown(entry),
                "origins scheme://host[:port] (http or https, no path), e.g. https://portal.example.com",
                "list the origins a login or logout may return to, without a path or trailing slash",
                origin_of("auth_allowed_redirect_origins"),
            );
        }
    }
}

/// Whether `url` is `http://` or `https://` followed by a host (and optionally more), with no
/// whitespace.
fn valid_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|r| {
        let host = r.split(['/', '?', '#']).next().unwrap_or("");
        !host.is_empty() && !r.contains(char::is_whitespace) && url.parse::<http::Uri>().is_ok()
    })
}

/// An HTTP field name: a non-empty token (RFC 9110 §5.1, §5.6.2).
fn is_field_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `$VIRTUAL_ENV/bin/python`, else `./.venv/bin/python` if it exists, else the interpreter of
/// the virtual environment `fluxlit` is installed in when that has Streamlit
/// ([`LoadOptions::executable`]), else `python3`.
fn default_python(opts: &LoadOptions) -> (String, String) {
    if let Some(venv) = opts.env.get("VIRTUAL_ENV").filter(|v| !v.is_empty()) {
        let p = Path::new(venv).join("bin").join("python");
        return (p.display().to_string(), "from VIRTUAL_ENV".into());
    }
    let local = opts.cwd.join(".venv").join("bin").join("python");
    if local.exists() {
        return (local.display().to_string(), "./.venv exists".into());
    }
    if let Some(python) = opts
        .executable
        .as_deref()
        .and_then(venv_python_with_streamlit)
    {
        return (
            python.display().to_string(),
            "the virtual environment fluxlit is installed in".into(),
        );
    }
    (
        "python3".into(),
        "no VIRTUAL_ENV, no ./.venv, fluxlit not installed in a venv with Streamlit".into(),
    )
}

/// `VENV/bin/python` when `executable` is `VENV/bin/NAME` of a virtual environment
/// (`VENV/pyvenv.cfg`, PEP 405) that has Streamlit installed.
fn venv_python_with_streamlit(executable: &Path) -> Option<PathBuf> {
    let bin = executable.parent()?;
    let venv = bin.parent()?;
    let python = bin.join("python");
    if !venv.join("pyvenv.cfg").is_file() || !python.exists() {
        return None;
    }
    let has_streamlit = std::fs::read_dir(venv.join("lib"))
        .ok()?
        .filter_map(std::result::Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("python"))
        .any(|e| e.path().join("site-packages/streamlit").is_dir());
    has_streamlit.then_some(python)
}

pub use paths::UpstreamUrl;
pub use paths::parse_upstream_url;

#[cfg(test)]
mod tests;
