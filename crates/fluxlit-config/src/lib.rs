//! FluxLit settings: schema, sources, precedence, provenance and validation.
//!
//! This crate owns every setting FluxLit reads and the one rule that combines them:
//! **CLI flags → environment (`FLUXLIT_*`) → project file → defaults** (the first that sets a key
//! wins). The project file is `./fluxlit.toml` (top-level keys), else `[tool.fluxlit]` in
//! `./pyproject.toml`; `--config PATH` or `FLUXLIT_CONFIG` picks another file.
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
mod paths;
pub mod schema;
pub mod value;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::Serialized;
use serde::{Deserialize, Serialize};

pub use paths::{PathRejection, normalize_api_mount, normalize_root_path};
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

/// The effective settings after precedence and validation. Paths are normalised, durations are
/// [`Duration`]s, optional text is `None` when unset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Streamlit script path (relative to the working directory).
    pub target: String,
    /// Public bind address.
    pub gateway_host: String,
    /// Public bind port (`0` = pick a free one).
    pub gateway_port: u16,
    /// Normalised public mount: `""` or `/seg[/seg…]` without a trailing slash.
    pub root_path: String,
    /// Normalised fallback public mount (used only when `root_path` is empty).
    pub streamlit_public_path: String,
    /// Normalised API mount, `/api` by default; never `/`.
    pub api_mount_path: String,
    /// External API upstream URL (`http://host:port[/base]`).
    pub api_upstream: Option<String>,
    /// Shell command that starts a supervised API; `{port}` is substituted.
    pub api_command: Option<String>,
    /// External UI upstream URL; when set, no Streamlit sidecar is started.
    pub ui_upstream: Option<String>,
    /// Python interpreter for `python -m streamlit`, resolved.
    pub streamlit_python: String,
    /// Extra `streamlit run` arguments.
    pub streamlit_run_cli_args: Vec<String>,
    /// Pidfile path (relative to the working directory), unless `no_pidfile`.
    pub pidfile: String,
    /// Skip writing the pidfile.
    pub no_pidfile: bool,
    /// Log filter.
    pub log_level: String,
    /// Upstream connect timeout.
    #[serde(with = "secs")]
    pub gateway_upstream_connect_timeout_s: Duration,
    /// Upstream response-header timeout.
    #[serde(with = "secs")]
    pub gateway_upstream_read_timeout_s: Duration,
    /// Drain period for in-flight requests on shutdown.
    #[serde(with = "secs")]
    pub graceful_shutdown_timeout_s: Duration,
    /// Sidecar start-up deadline.
    #[serde(with = "secs")]
    pub sidecar_start_timeout_s: Duration,
    /// Grace after each stop signal to a sidecar.
    #[serde(with = "secs")]
    pub sidecar_stop_timeout_s: Duration,
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

    /// The pidfile to write, resolved against `cwd`, or `None` when disabled.
    pub fn pidfile_path(&self, cwd: &Path) -> Option<PathBuf> {
        (!self.no_pidfile).then(|| cwd.join(&self.pidfile))
    }
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
}

impl LoadOptions {
    /// Options with no explicit config file.
    pub fn new(cwd: &Path, env: Environment, cli: CliOverrides) -> Self {
        Self {
            cwd: cwd.to_path_buf(),
            config_file: None,
            env,
            cli,
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
    let mut layers: Vec<BTreeMap<&'static str, (serde_json::Value, Origin)>> = Vec::new();

    // 1. The project file.
    let explicit = opts.config_file.clone().or_else(|| {
        opts.env
            .get("FLUXLIT_CONFIG")
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

    // 2. The environment.
    let mut layer = BTreeMap::new();
    for (var, val) in opts.env.iter() {
        let upper = var.to_ascii_uppercase();
        let Some(name) = upper.strip_prefix("FLUXLIT_") else {
            continue;
        };
        if KNOWN_NON_SETTING_ENV.contains(&upper.as_str()) {
            continue;
        }
        let origin = Origin::Env {
            var: var.to_owned(),
        };
        match find_key(name) {
            Some(spec) => {
                if let Some(v) = check(spec, &Raw::Text(val.to_owned()), &origin, &mut problems) {
                    layer.insert(spec.name, (v, origin));
                }
            }
            None => warnings.push(Warning {
                code: "unknown_env",
                message: format!(
                    "environment variable {var} is not a FluxLit setting and is ignored{}",
                    schema::suggest(name)
                        .map(|s| format!(" (did you mean {}?)", schema::env_name(s)))
                        .unwrap_or_default()
                ),
            }),
        }
    }
    layers.push(layer);

    // 3. The command line.
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
    let raw: RawSettings = match figment.extract() {
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
            warnings,
        }),
        _ => Err(ConfigError { problems }),
    }
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

/// The merge result before normalisation and cross-key checks.
#[derive(Debug, Deserialize)]
struct RawSettings {
    target: String,
    gateway_host: String,
    gateway_port: u16,
    root_path: String,
    streamlit_public_path: String,
    api_mount_path: String,
    api_upstream: Option<String>,
    api_command: Option<String>,
    ui_upstream: Option<String>,
    streamlit_python: Option<String>,
    streamlit_run_cli_args: Vec<String>,
    pidfile: Option<String>,
    no_pidfile: bool,
    log_level: String,
    gateway_upstream_connect_timeout_s: f64,
    gateway_upstream_read_timeout_s: f64,
    graceful_shutdown_timeout_s: f64,
    sidecar_start_timeout_s: f64,
    sidecar_stop_timeout_s: f64,
}

fn defaults() -> serde_json::Value {
    serde_json::json!({
        "target": "app.py",
        "gateway_host": "127.0.0.1",
        "gateway_port": 8000,
        "root_path": "",
        "streamlit_public_path": "",
        "api_mount_path": "/api",
        "api_upstream": null,
        "api_command": null,
        "ui_upstream": null,
        "streamlit_python": null,
        "streamlit_run_cli_args": [],
        "pidfile": null,
        "no_pidfile": false,
        "log_level": "info",
        "gateway_upstream_connect_timeout_s": 30.0,
        "gateway_upstream_read_timeout_s": 120.0,
        "graceful_shutdown_timeout_s": 30.0,
        "sidecar_start_timeout_s": 60.0,
        "sidecar_stop_timeout_s": 5.0,
    })
}

/// Streamlit flags FluxLit sets itself; user arguments may not set them.
const RESERVED_STREAMLIT_FLAGS: &[&str] =
    &["--server.port", "--server.address", "--server.baseUrlPath"];

fn resolve(
    raw: RawSettings,
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

    let streamlit_python = match raw.streamlit_python {
        Some(p) => p,
        None => {
            let (python, reason) = default_python(opts);
            origins.insert("streamlit_python", Origin::Derived { reason });
            python
        }
    };

    let dur = |f: f64| Duration::try_from_secs_f64(f).unwrap_or(Duration::MAX);
    Some(Settings {
        target: raw.target,
        gateway_host: raw.gateway_host,
        gateway_port: raw.gateway_port,
        root_path,
        streamlit_public_path,
        api_mount_path,
        api_upstream: raw.api_upstream,
        api_command: raw.api_command,
        ui_upstream: raw.ui_upstream,
        streamlit_python,
        streamlit_run_cli_args: raw.streamlit_run_cli_args,
        pidfile: raw.pidfile.unwrap_or_else(|| ".fluxlit.pid".into()),
        no_pidfile: raw.no_pidfile,
        log_level: raw.log_level,
        gateway_upstream_connect_timeout_s: dur(raw.gateway_upstream_connect_timeout_s),
        gateway_upstream_read_timeout_s: dur(raw.gateway_upstream_read_timeout_s),
        graceful_shutdown_timeout_s: dur(raw.graceful_shutdown_timeout_s),
        sidecar_start_timeout_s: dur(raw.sidecar_start_timeout_s),
        sidecar_stop_timeout_s: dur(raw.sidecar_stop_timeout_s),
    })
}

/// `$VIRTUAL_ENV/bin/python`, else `./.venv/bin/python` if it exists, else `python3`.
fn default_python(opts: &LoadOptions) -> (String, String) {
    if let Some(venv) = opts.env.get("VIRTUAL_ENV").filter(|v| !v.is_empty()) {
        let p = Path::new(venv).join("bin").join("python");
        return (p.display().to_string(), "from VIRTUAL_ENV".into());
    }
    let local = opts.cwd.join(".venv").join("bin").join("python");
    if local.exists() {
        return (local.display().to_string(), "./.venv exists".into());
    }
    ("python3".into(), "no VIRTUAL_ENV and no ./.venv".into())
}

pub use paths::UpstreamUrl;
pub use paths::parse_upstream_url;

#[cfg(test)]
mod tests;
