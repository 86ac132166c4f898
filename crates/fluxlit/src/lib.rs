//! FluxLit as a library: a Streamlit UI and an HTTP API behind one port, with everything
//! `fluxlit run` does between binding the port and exiting.
//!
//! An [`App`] is configured from loaded settings ([`AppBuilder::config`], what the CLI does),
//! from a [`Settings`] value, or from the project directory like `fluxlit run` would
//! ([`AppBuilder::cwd`] + [`AppBuilder::environment`]); programmatic overrides (script,
//! interpreter, root path, API mount, an in-process API service) apply on top. [`App::run`]
//! then serves on a listener the caller bound until a shutdown future resolves or a sidecar
//! exits, in this order:
//!
//! 1. The gateway serves at once; readiness (`{api}/readyz`) is 503 and UI requests get 503
//!    until Streamlit's `/_stcore/health` answers 200. Housekeeping runs every 5 s.
//! 2. The API sidecar (`api_command`) and then Streamlit start in their own process groups on
//!    free loopback ports (a port taken before the sidecar binds it is retried, up to 3
//!    times); external upstreams (`ui_upstream`, `api_upstream`) are probed every second.
//! 3. Once both are ready the pidfile (if configured) is written and "FluxLit is ready" logged.
//! 4. A sidecar that exits on its own turns readiness 503 at once; with
//!    `sidecar_restart = exit` the app stops and [`App::run`] returns [`Exit::SidecarExited`];
//!    with `restart` it is started again after a [`fluxlit_sidecar::Backoff`] delay (0.5 s
//!    doubling to 30 s, ±20 % jitter; 5 restarts within 60 s are reported as a crash loop).
//! 5. Stopping, in order: readiness 503, stop accepting and drain in-flight HTTP (up to
//!    `graceful_shutdown_timeout_s`; open WebSocket tunnels do not hold this), then at once
//!    stop the sidecars (SIGINT → grace → SIGTERM → grace → SIGKILL; Streamlit closes its
//!    WebSockets with 1012), end the tunnels whose upstream has closed, give the others 1 s
//!    and cut them, remove the pidfile.
//!
//! Dropping the future [`App::run`] returns stops at once instead: the sidecars' process
//! groups are killed (SIGKILL), the gateway's tasks are aborted and the pidfile is removed.
//! The CLI does this on a second SIGTERM/SIGINT.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let app = fluxlit::App::builder()
//!     .target("app.py")
//!     .python(".venv/bin/python")
//!     .api_service(fluxlit::ApiService::new(tower::service_fn(|_req| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hi")))
//!     })))
//!     .pidfile(None)
//!     .build()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! let exit = app.run(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! std::process::exit(exit.code().into());
//! # }
//! ```

mod admin;
mod bridge;
pub mod dev;
mod launch;
mod lifecycle;
mod memory;
mod pidfile;
pub mod project;
pub mod pyapp;
pub mod revoke;
pub mod scaffold;
pub mod stop;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fluxlit_config::{Environment, Loaded, Origin, Settings};
use fluxlit_gateway::{
    ApiTarget, ComponentState, Endpoint, Gateway, ReadinessCheck, UiWorker, Upstream,
};
use tokio::sync::watch;

pub use fluxlit_gateway::{ApiService, MetricsRender};
pub use fluxlit_sidecar::ExitInfo;
pub use launch::{ApiProgram, find_api_program};

use bridge::{External, SidecarInfo};

/// Why [`App::run`] returned after stopping everything in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exit {
    /// The shutdown future resolved (during start-up or while serving).
    Shutdown,
    /// A sidecar exited on its own with `sidecar_restart = exit`.
    SidecarExited {
        /// `streamlit` or `api`.
        sidecar: &'static str,
        /// How it ended.
        exit: ExitInfo,
    },
}

impl Exit {
    /// The process exit status this stands for: 0 for [`Exit::Shutdown`], 1 when a sidecar
    /// exited (so that the platform restarts the pod).
    pub fn code(&self) -> u8 {
        match self {
            Exit::Shutdown => 0,
            Exit::SidecarExited { .. } => 1,
        }
    }
}

impl std::fmt::Display for Exit {
    /// `shut down`, or `the {sidecar} sidecar exited ({exit})`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Shutdown => f.write_str("shut down"),
            Exit::SidecarExited { sidecar, exit } => {
                write!(f, "the {sidecar} sidecar exited ({exit})")
            }
        }
    }
}

/// Building or running an [`App`] failed. Each variant names what to fix; where a setting is
/// involved, where its value came from.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The working directory could not be read (no [`AppBuilder::cwd`] was given).
    #[error("cannot read the working directory: {0}")]
    Cwd(#[source] std::io::Error),
    /// Loading the settings from the project directory failed.
    #[error(transparent)]
    Config(#[from] fluxlit_config::ConfigError),
    /// The Streamlit script does not exist (and no `ui_upstream` is set).
    #[error(
        "target {path} does not exist (target = {target:?} from {origin}); pass the Streamlit script as `fluxlit run app.py`, a FluxLit-for-Python app as `fluxlit run app:app`, or set target in fluxlit.toml"
    )]
    MissingTarget {
        /// The script, resolved against the working directory.
        path: PathBuf,
        /// The value as configured.
        target: String,
        /// Where it came from.
        origin: String,
    },
    /// The target names a FluxLit-for-Python app (`module:attr`, `./file.py:attr`) that cannot
    /// be run: the target is malformed, the interpreter cannot be run, the Python package
    /// `fluxlit` is not installed for it (the message has the `pip install` command), or the
    /// module cannot be found.
    #[error("target {target:?} (from {origin}) {problem}")]
    PythonApp {
        /// The target as configured.
        target: String,
        /// Where it came from.
        origin: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// No random `server.cookieSecret` could be made for several Streamlit workers.
    #[error(
        "cannot make a server.cookieSecret for the Streamlit workers (reading /dev/urandom failed); set one with --server.cookieSecret or STREAMLIT_SERVER_COOKIE_SECRET"
    )]
    CookieSecret(#[source] std::io::Error),
    /// A root path or API mount given to the builder is not a valid path.
    #[error("invalid {key} {value:?} (from {origin}): {reason}")]
    Setting {
        /// `root_path` or `api_mount_path`.
        key: &'static str,
        /// The value given.
        value: String,
        /// Where it came from.
        origin: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// An in-process API service was given while the settings also name an API process or
    /// upstream.
    #[error(
        "an in-process API service was given, but {key} is set too (from {origin}); use one of them"
    )]
    ApiTwice {
        /// `api_command` or `api_upstream`.
        key: &'static str,
        /// Where it came from.
        origin: String,
    },
    /// The listener given to [`App::run`] has no local address.
    #[error("cannot read the listener's address: {0}")]
    Listener(#[source] std::io::Error),
    /// The admin listener (`metrics_addr`) could not be bound.
    #[error("cannot listen on {addr} (metrics_addr from {origin}): {source}")]
    Bind {
        /// The address, as configured.
        addr: String,
        /// Where it came from.
        origin: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// No free loopback port could be picked for a sidecar.
    #[error("cannot pick a free loopback port for the {name} sidecar: {source}")]
    Port {
        /// `streamlit` or `api`.
        name: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A sidecar's program could not be executed.
    #[error(transparent)]
    Spawn(#[from] fluxlit_sidecar::SpawnError),
    /// A sidecar exited during start-up or was not ready in `sidecar_start_timeout_s`.
    #[error(transparent)]
    Start(#[from] fluxlit_sidecar::StartError),
    /// `api_command` is not a valid command line.
    #[error("api_command {command:?} (from {origin}) could not be parsed as a shell command line")]
    ApiCommand {
        /// The command as configured.
        command: String,
        /// Where it came from.
        origin: String,
    },
    /// The pidfile could not be written.
    #[error("cannot write the pidfile {path}: {source}")]
    Pidfile {
        /// The pidfile.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The gateway rejected its settings (root path, API mount, metrics path).
    #[error("invalid gateway settings: {0}")]
    Gateway(#[from] fluxlit_gateway::BuildError),
}

/// Where the settings come from.
#[derive(Debug, Default)]
enum Source {
    /// Loaded by [`fluxlit_config::load`] in the working directory at [`AppBuilder::build`].
    #[default]
    Load,
    /// Loaded by the caller, with provenance.
    Loaded(Box<Loaded>),
    /// Given as a value, without provenance.
    Settings(Box<Settings>),
}

/// Configures an [`App`]; see [`App::builder`]. Every override is optional; what is not
/// overridden comes from the settings.
#[derive(Default)]
#[must_use]
pub struct AppBuilder {
    source: Source,
    cwd: Option<PathBuf>,
    env: Option<Environment>,
    target: Option<PathBuf>,
    python: Option<PathBuf>,
    root_path: Option<String>,
    api_mount: Option<String>,
    api_service: Option<ApiService>,
    pidfile: Option<Option<PathBuf>>,
    metrics: Option<MetricsRender>,
    access_log_sink: Option<fluxlit_gateway::AccessLogSink>,
    reload_api: Option<Arc<tokio::sync::Notify>>,
    rolling_restarts: Option<tokio::sync::mpsc::UnboundedReceiver<Settings>>,
}

impl std::fmt::Debug for AppBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppBuilder")
            .field("source", &self.source)
            .field("cwd", &self.cwd)
            .field("target", &self.target)
            .field("python", &self.python)
            .field("root_path", &self.root_path)
            .field("api_mount", &self.api_mount)
            .field("api_service", &self.api_service.is_some())
            .field("pidfile", &self.pidfile)
            .field("metrics", &self.metrics.is_some())
            .field("access_log_sink", &self.access_log_sink)
            .field("reload_api", &self.reload_api.is_some())
            .field("rolling_restarts", &self.rolling_restarts.is_some())
            .finish_non_exhaustive()
    }
}

/// With `auth_mode = oidc`, Streamlit's `--server.trustedUserHeaders=JSON` for the session's
/// identity headers; with `auth_mode = forward`, for the forward
/// headers (Streamlit ≥ 1.49 puts them in `st.user` when the WebSocket connects), unless the
/// Streamlit arguments set it already. Known names get OpenID claim names
/// (`X-Forwarded-User` → `sub`, `-Email` → `email`, `-Name` → `name`,
/// `-Preferred-Username` → `preferred_username`, `-Groups` → `groups`); any other header its
/// lower-case name with `x-forwarded-` dropped and `-` as `_`.
pub(crate) fn forward_auth_streamlit_arg(s: &Settings) -> Option<String> {
    if s.streamlit_run_cli_args
        .iter()
        .any(|a| a.contains("trustedUserHeaders"))
    {
        return None;
    }
    let mut map = serde_json::Map::new();
    match s.auth_mode {
        fluxlit_config::AuthMode::Forward => {}
        // `auth_mode = oidc`: the headers the gateway sets from the session
        // (`fluxlit_auth::bff::IDENTITY_HEADERS`), unless `auth_streamlit_trusted_user_headers`
        // is off.
        fluxlit_config::AuthMode::Oidc if s.auth_streamlit_trusted_user_headers => {
            for (header, key) in fluxlit_auth::bff::IDENTITY_HEADERS {
                map.insert(header.to_owned(), serde_json::Value::String(key.to_owned()));
            }
            return Some(format!(
                "--server.trustedUserHeaders={}",
                serde_json::Value::Object(map)
            ));
        }
        _ => return None,
    }
    let names = std::iter::once(&s.auth_forward_user_header).chain(&s.auth_forward_headers);
    for name in names {
        let lower = name.trim().to_ascii_lowercase();
        let key = match lower.as_str() {
            "x-forwarded-user" => "sub".to_owned(),
            "x-forwarded-email" => "email".to_owned(),
            "x-forwarded-name" => "name".to_owned(),
            "x-forwarded-preferred-username" => "preferred_username".to_owned(),
            "x-forwarded-groups" => "groups".to_owned(),
            other => other
                .strip_prefix("x-forwarded-")
                .unwrap_or(other)
                .replace('-', "_"),
        };
        // Streamlit refuses two headers for one key: the first wins.
        if !map.contains_key(&lower) && !map.values().any(|v| v == &key) {
            map.insert(lower, serde_json::Value::String(key));
        }
    }
    Some(format!(
        "--server.trustedUserHeaders={}",
        serde_json::Value::Object(map)
    ))
}

/// Where a value the builder overrode came from, in error messages.
const PROGRAM: &str = "the embedding program";

impl AppBuilder {
    /// Settings loaded with [`fluxlit_config::load`]; their origins are named in errors.
    /// Default: loaded in [`AppBuilder::cwd`] with [`AppBuilder::environment`] at build time,
    /// like `fluxlit run` (project file, `FLUXLIT_*` variables, defaults).
    pub fn config(mut self, loaded: Loaded) -> Self {
        self.source = Source::Loaded(Box::new(loaded));
        self
    }

    /// Settings given as a value (for example adjusted after loading); errors name "the
    /// embedding program" as their origin.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.source = Source::Settings(Box::new(settings));
        self
    }

    /// The directory the settings are loaded in (without [`AppBuilder::config`] or
    /// [`AppBuilder::settings`]) and that relative paths (target, pidfile) resolve against; the
    /// sidecars' working directory. Default: the process's working directory.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// The environment snapshot: `FLUXLIT_*` settings when loading, and the `PATH` the
    /// sidecars inherit (after the interpreter's directory). Default:
    /// [`Environment::from_process`].
    pub fn environment(mut self, env: Environment) -> Self {
        self.env = Some(env);
        self
    }

    /// The Streamlit script, relative to the working directory or absolute, or a
    /// FluxLit-for-Python app as `module:attr` or `./file.py:attr` (see [`pyapp`]) (overrides
    /// `target`).
    pub fn target(mut self, script: impl Into<PathBuf>) -> Self {
        self.target = Some(script.into());
        self
    }

    /// The Python interpreter that runs `python -m streamlit run` (overrides
    /// `streamlit_python`); its directory is put first on the sidecars' `PATH`.
    pub fn python(mut self, interpreter: impl Into<PathBuf>) -> Self {
        self.python = Some(interpreter.into());
        self
    }

    /// The public mount, e.g. `/myapp` (overrides `root_path`; `""` for none). Normalised like
    /// `root_path`; an invalid value fails [`AppBuilder::build`] with [`AppError::Setting`].
    pub fn root_path(mut self, path: impl Into<String>) -> Self {
        self.root_path = Some(path.into());
        self
    }

    /// Where the API is mounted, e.g. `/api` (overrides `api_mount_path`). Normalised like
    /// `api_mount_path`; an invalid value fails [`AppBuilder::build`] with
    /// [`AppError::Setting`].
    pub fn api_mount(mut self, path: impl Into<String>) -> Self {
        self.api_mount = Some(path.into());
        self
    }

    /// Serves the API mount with an in-process tower service, for example an axum `Router`
    /// (`ApiService::new(router)`), instead of `api_command`/`api_upstream`; the build fails
    /// with [`AppError::ApiTwice`] if either is set as well. Its readiness is not checked.
    pub fn api_service(mut self, service: ApiService) -> Self {
        self.api_service = Some(service);
        self
    }

    /// The pidfile to write once the sidecars are ready, relative to the working directory or
    /// absolute; `None` writes none. Default: from the settings (`pidfile`, `no_pidfile`).
    pub fn pidfile(mut self, path: Option<PathBuf>) -> Self {
        self.pidfile = Some(path);
        self
    }

    /// Serves `render()` (Prometheus text) at `gateway_prometheus_metrics_path` on the public
    /// port, or on the admin listener when `metrics_addr` is set. Installing the recorder is
    /// the caller's business (the CLI installs the Prometheus exporter when
    /// `enable_gateway_prometheus_metrics` is on). Default: no metrics endpoint.
    pub fn metrics(mut self, render: MetricsRender) -> Self {
        self.metrics = Some(render);
        self
    }

    /// Writes the access log's lines straight into `sink`, in its format, instead of through
    /// `tracing`'s formatter (same lines, same filter, a fraction of the cost:
    /// [`fluxlit_gateway::AccessLogSink`]). Give it the writer and format of the process's
    /// `tracing` subscriber (the CLI does). Default: none (the lines go through `tracing`).
    pub fn access_log_sink(mut self, sink: fluxlit_gateway::AccessLogSink) -> Self {
        self.access_log_sink = Some(sink);
        self
    }

    /// Restarts the API sidecar (`api_command`, or a FluxLit-for-Python app's API) each time
    /// `notify` is notified, while the gateway keeps serving (`fluxlit dev --reload`, with
    /// [`crate::dev::watch`]): readiness names the API `reloading` meanwhile, the old process
    /// group is stopped as at shutdown (SIGINT, SIGTERM, SIGKILL after
    /// `sidecar_stop_timeout_s` each) and a new one is started on a fresh port. When the new
    /// one fails to start, the error is logged, readiness says why, and the next notification
    /// tries again. Without an API sidecar, notifications are ignored. Default: none.
    pub fn reload_api(mut self, notify: Arc<tokio::sync::Notify>) -> Self {
        self.reload_api = Some(notify);
        self
    }

    /// Restarts the Streamlit workers without dropping open tabs each time settings arrive on
    /// `settings` (`fluxlit reload`, SIGHUP; docs/scaling.md "Rolling restarts"): a new
    /// generation of `streamlit_workers` workers is started with the new settings' Streamlit
    /// part (`streamlit_run_cli_args`, `streamlit_page_config`, `sidecar_start_timeout_s`,
    /// `sidecar_stop_timeout_s`, `streamlit_drain_timeout_s`; the script is read anew by the
    /// new processes) and, once all are ready within `sidecar_start_timeout_s`, new sessions go
    /// to it; each old worker stops when its last open session ends or
    /// `streamlit_drain_timeout_s` has passed. When the new workers do not become ready, they
    /// are stopped, the error is logged and the old ones keep serving. The other settings and
    /// the number of workers stay as they were at start. Ignored when FluxLit starts no
    /// Streamlit (`ui_upstream`). Default: none.
    pub fn rolling_restarts(
        mut self,
        settings: tokio::sync::mpsc::UnboundedReceiver<Settings>,
    ) -> Self {
        self.rolling_restarts = Some(settings);
        self
    }

    /// Resolves the settings and builds the gateway. Nothing is bound or started yet.
    ///
    /// # Errors
    /// [`AppError::Cwd`] and [`AppError::Config`] when loading; [`AppError::MissingTarget`]
    /// when the script does not exist and no `ui_upstream` is set; [`AppError::PythonApp`]
    /// when a FluxLit-for-Python target cannot be run (this asks the interpreter where the
    /// package `fluxlit` is: about 0.1 s, blocking); [`AppError::Setting`] for
    /// an invalid overridden root path or API mount; [`AppError::ApiTwice`];
    /// [`AppError::Gateway`] when the gateway rejects the paths.
    pub fn build(self) -> Result<App, AppError> {
        let cwd = match self.cwd {
            Some(d) => d,
            None => std::env::current_dir().map_err(AppError::Cwd)?,
        };
        let env = self.env.unwrap_or_else(Environment::from_process);
        let (mut settings, origins) = match self.source {
            Source::Load => {
                let opts = fluxlit_config::LoadOptions::new(&cwd, env.clone(), Default::default());
                let loaded = fluxlit_config::load(&opts)?;
                (loaded.settings, Origins::Loaded(loaded.origins))
            }
            Source::Loaded(l) => (l.settings, Origins::Loaded(l.origins)),
            Source::Settings(s) => (*s, Origins::Program),
        };
        let mut origins = Overridden {
            origins,
            keys: Vec::new(),
        };
        if let Some(arg) = forward_auth_streamlit_arg(&settings) {
            settings.streamlit_run_cli_args.push(arg);
        }
        if let Some(raw) = self.root_path {
            settings.root_path =
                fluxlit_config::normalize_root_path(&raw).map_err(|reason| AppError::Setting {
                    key: "root_path",
                    value: raw.clone(),
                    origin: PROGRAM.into(),
                    reason,
                })?;
            settings.streamlit_public_path.clear();
            origins.keys.push("root_path");
        }
        if let Some(raw) = self.api_mount {
            settings.api_mount_path =
                fluxlit_config::normalize_api_mount(&raw).map_err(|reason| AppError::Setting {
                    key: "api_mount_path",
                    value: raw.clone(),
                    origin: PROGRAM.into(),
                    reason,
                })?;
            origins.keys.push("api_mount_path");
        }
        let target = match self.target {
            Some(t) => {
                origins.keys.push("target");
                t
            }
            None => PathBuf::from(&settings.target),
        };
        let python = self
            .python
            .unwrap_or_else(|| PathBuf::from(&settings.streamlit_python));
        let script = cwd.join(&target);
        let python_app = match target.to_str() {
            Some(t) => {
                pyapp::PythonTarget::parse(t, &cwd).map_err(|problem| AppError::PythonApp {
                    target: t.to_owned(),
                    origin: origins.of("target"),
                    problem,
                })?
            }
            None => None,
        };
        // A FluxLit-for-Python app needs the package when FluxLit starts Streamlit or serves
        // the app's API (no api_command, api_upstream or in-process service).
        let py_app = match python_app {
            Some(t)
                if settings.ui_upstream.is_none()
                    || (self.api_service.is_none()
                        && settings.api_command.is_none()
                        && settings.api_upstream.is_none()) =>
            {
                let path = launch::child_path(
                    env.get("PATH"),
                    python.parent().filter(|p| !p.as_os_str().is_empty()),
                );
                let package = pyapp::probe(&python, &cwd, &path, &t).map_err(|problem| {
                    AppError::PythonApp {
                        target: t.as_str().to_owned(),
                        origin: origins.of("target"),
                        problem,
                    }
                })?;
                tracing::info!(target = t.as_str(), fluxlit = %package.version, entry = %package.entry.display(), "running a FluxLit-for-Python app");
                Some(Arc::new(pyapp::PyApp { target: t, package }))
            }
            Some(_) => None,
            None => {
                if settings.ui_upstream.is_none() && !script.is_file() {
                    return Err(AppError::MissingTarget {
                        path: script,
                        target: target.display().to_string(),
                        origin: origins.of("target"),
                    });
                }
                None
            }
        };
        let target = match &py_app {
            Some(app) => launch::Script::PyApp(app.clone()),
            None => launch::Script::File(target),
        };
        if self.api_service.is_some() {
            for (key, set) in [
                ("api_command", settings.api_command.is_some()),
                ("api_upstream", settings.api_upstream.is_some()),
            ] {
                if set {
                    return Err(AppError::ApiTwice {
                        key,
                        origin: origins.of(key),
                    });
                }
            }
        }
        let pidfile = match self.pidfile {
            Some(p) => p.map(|p| cwd.join(p)),
            None => settings.pidfile_path(&cwd),
        };
        App::assemble(Assembly {
            settings,
            origins,
            cwd,
            env,
            target,
            py_app,
            python,
            pidfile,
            api_service: self.api_service,
            metrics: self.metrics,
            access_log_sink: self.access_log_sink,
            reload_api: self.reload_api,
            rolling_restarts: self.rolling_restarts,
        })
    }
}

/// Origins of the settings' values.
#[derive(Debug)]
enum Origins {
    Loaded(BTreeMap<&'static str, Origin>),
    Program,
}

/// Origins, with the keys the builder overrode.
#[derive(Debug)]
struct Overridden {
    origins: Origins,
    keys: Vec<&'static str>,
}

impl Overridden {
    /// Where `key`'s value came from, as error messages say it.
    fn of(&self, key: &str) -> String {
        if self.keys.contains(&key) {
            return PROGRAM.into();
        }
        match &self.origins {
            Origins::Loaded(map) => map.get(key).unwrap_or(&Origin::Default).to_string(),
            Origins::Program => PROGRAM.into(),
        }
    }
}

/// What [`App::assemble`] puts together.
struct Assembly {
    settings: Settings,
    origins: Overridden,
    cwd: PathBuf,
    env: Environment,
    target: launch::Script,
    /// A FluxLit-for-Python app whose API FluxLit serves (when nothing else serves the API).
    py_app: Option<Arc<pyapp::PyApp>>,
    python: PathBuf,
    pidfile: Option<PathBuf>,
    api_service: Option<ApiService>,
    access_log_sink: Option<fluxlit_gateway::AccessLogSink>,
    metrics: Option<MetricsRender>,
    reload_api: Option<Arc<tokio::sync::Notify>>,
    rolling_restarts: Option<tokio::sync::mpsc::UnboundedReceiver<Settings>>,
}

/// How the API mount is served.
#[derive(Debug)]
enum ApiMode {
    /// `api_command` or a FluxLit-for-Python app's API, supervised.
    Command(launch::ApiProcess),
    /// An external upstream, an in-process service, or nothing: no sidecar.
    NoSidecar,
}

/// The sending halves that connect a sidecar to the gateway.
#[derive(Debug)]
struct Channels {
    endpoint: watch::Sender<Option<Endpoint>>,
    state: watch::Sender<ComponentState>,
}

/// FluxLit, configured: the gateway plus what it takes to start, supervise and stop the
/// sidecars. Made by [`App::builder`]; consumed by [`App::run`].
pub struct App {
    settings: Settings,
    origins: Overridden,
    cwd: PathBuf,
    /// The `PATH` the sidecars get.
    child_path: String,
    target: launch::Script,
    python: PathBuf,
    pidfile: Option<PathBuf>,
    gateway: Gateway,
    /// `true` when Streamlit is started (no `ui_upstream`).
    start_streamlit: bool,
    api: ApiMode,
    /// One per Streamlit worker (`streamlit_workers`); one when FluxLit starts no Streamlit.
    ui_links: Vec<Channels>,
    /// `STREAMLIT_SERVER_COOKIE_SECRET` shared by several workers
    /// ([`launch::shared_cookie_secret`]).
    cookie_secret: Option<String>,
    api_link: Channels,
    externals: Vec<External>,
    /// Metrics on the admin listener: (address, renderer).
    admin: Option<(String, MetricsRender)>,
    sidecar_info: SidecarInfo,
    /// See [`AppBuilder::reload_api`].
    reload_api: Option<Arc<tokio::sync::Notify>>,
    /// See [`AppBuilder::rolling_restarts`].
    rolling_restarts: Option<tokio::sync::mpsc::UnboundedReceiver<Settings>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("cwd", &self.cwd)
            .field("target", &self.target)
            .field("python", &self.python)
            .field("pidfile", &self.pidfile)
            .field("api", &self.api)
            .field("start_streamlit", &self.start_streamlit)
            .finish_non_exhaustive()
    }
}

impl App {
    /// A builder with nothing set: settings loaded from the working directory at build time.
    pub fn builder() -> AppBuilder {
        AppBuilder::default()
    }

    /// The gateway (for example to read its readiness or open tunnels); it serves only once
    /// [`App::run`] is called.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// The effective settings, overrides applied.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn assemble(a: Assembly) -> Result<App, AppError> {
        let s = &a.settings;
        let (ui_tx, ui_rx) = watch::channel::<Option<Endpoint>>(None);
        let (ui_state_tx, ui_state_rx) = watch::channel(ComponentState::Starting(
            "Streamlit has not been started yet".into(),
        ));
        let mut ui_links = Vec::new();
        let mut cookie_secret = None;
        let mut externals = Vec::new();
        let mut builder = Gateway::builder().settings(s);
        let mut start_streamlit = true;
        // Validated by the config loader; a value that does not parse starts Streamlit instead.
        match s
            .ui_upstream
            .as_deref()
            .map(fluxlit_config::parse_upstream_url)
        {
            Some(Ok(u)) => {
                start_streamlit = false;
                if let Ok(authority) = u.authority().parse() {
                    builder = builder.ui(Upstream::fixed(
                        "ui",
                        Endpoint {
                            authority,
                            base_path: u.base_path.clone(),
                        },
                    ));
                }
                builder = builder.readiness(ReadinessCheck::new("ui", ui_state_rx));
                externals.push(External {
                    path: format!("{}/", u.base_path),
                    host: u.host,
                    port: u.port,
                    state: ui_state_tx.clone(),
                });
            }
            _ => {
                let workers = usize::try_from(s.streamlit_workers.resolve()).unwrap_or(usize::MAX);
                let min_ready =
                    usize::try_from(s.streamlit_workers_min_ready).unwrap_or(usize::MAX);
                if min_ready > workers {
                    // Only `auto` gets here: the loader checks a number against it.
                    return Err(AppError::Setting {
                        key: "streamlit_workers_min_ready",
                        value: s.streamlit_workers_min_ready.to_string(),
                        origin: a.origins.of("streamlit_workers_min_ready"),
                        reason: "it is more than the workers streamlit_workers = auto starts on this machine (one per available CPU core); lower it or set streamlit_workers to a number",
                    });
                }
                if workers == 1 {
                    // A pool of one: served as a single UI until a rolling restart adds a
                    // worker (`fluxlit_gateway::UiWorkers`).
                    builder = builder
                        .ui_workers(vec![UiWorker {
                            upstream: Upstream::dynamic("streamlit", ui_rx),
                            state: ui_state_rx.clone(),
                        }])
                        .readiness(ReadinessCheck::new("streamlit", ui_state_rx));
                } else {
                    cookie_secret =
                        launch::shared_cookie_secret(&s.streamlit_run_cli_args, &a.env, &a.cwd)
                            .map_err(AppError::CookieSecret)?;
                    let mut pool = Vec::with_capacity(workers);
                    let mut members = Vec::with_capacity(workers);
                    for i in 0..workers {
                        let (tx, rx) = watch::channel::<Option<Endpoint>>(None);
                        let (state_tx, state_rx) = watch::channel(ComponentState::Starting(
                            "Streamlit has not been started yet".into(),
                        ));
                        pool.push(UiWorker {
                            upstream: Upstream::dynamic("streamlit", rx),
                            state: state_rx.clone(),
                        });
                        members.push((launch::worker_name(i, workers).to_owned(), state_rx));
                        ui_links.push(Channels {
                            endpoint: tx,
                            state: state_tx,
                        });
                    }
                    builder = builder.ui_workers(pool).readiness(ReadinessCheck::quorum(
                        "streamlit",
                        members,
                        min_ready,
                    ));
                }
            }
        }
        if ui_links.is_empty() {
            ui_links.push(Channels {
                endpoint: ui_tx,
                state: ui_state_tx,
            });
        }

        let (api_tx, api_rx) = watch::channel::<Option<Endpoint>>(None);
        let (api_state_tx, api_state_rx) = watch::channel(ComponentState::Starting(
            "the API has not been started yet".into(),
        ));
        let mut api = ApiMode::NoSidecar;
        if let Some(service) = a.api_service {
            builder = builder.api(ApiTarget::Service(service));
        } else if let Some(api_process) = s
            .api_command
            .clone()
            .map(launch::ApiProcess::Command)
            .or_else(|| {
                a.py_app
                    .clone()
                    .filter(|_| s.api_upstream.is_none())
                    .map(launch::ApiProcess::PyApp)
            })
        {
            api = ApiMode::Command(api_process);
            builder = builder
                .api(ApiTarget::Upstream(Upstream::dynamic("api", api_rx)))
                .readiness(ReadinessCheck::new("api", api_state_rx));
        } else if let Some(url) = &s.api_upstream {
            // Validated by the config loader.
            if let Ok(u) = fluxlit_config::parse_upstream_url(url) {
                if let Ok(authority) = u.authority().parse() {
                    builder = builder.api(ApiTarget::Upstream(Upstream::fixed(
                        "api",
                        Endpoint {
                            authority,
                            base_path: u.base_path.clone(),
                        },
                    )));
                }
                builder = builder.readiness(ReadinessCheck::new("api", api_state_rx));
                externals.push(External {
                    path: format!("{}/", u.base_path),
                    host: u.host,
                    port: u.port,
                    state: api_state_tx.clone(),
                });
            }
        }

        let mut admin = None;
        if let Some(sink) = a.access_log_sink {
            builder = builder.access_log_sink(sink);
        }
        if let Some(render) = a.metrics {
            match &s.metrics_addr {
                Some(addr) => admin = Some((addr.clone(), render)),
                None => {
                    builder = builder.metrics_endpoint(&s.gateway_prometheus_metrics_path, render);
                }
            }
        }
        let sidecar_info: SidecarInfo = Arc::default();
        if s.debug {
            let settings = fluxlit_config::redact::settings_json(s);
            let info = sidecar_info.clone();
            builder = builder.debug(Arc::new(move || {
                let sidecars = info
                    .lock()
                    .map(|m| serde_json::to_value(&*m).unwrap_or_default())
                    .unwrap_or_default();
                serde_json::json!({"settings": settings, "sidecars": sidecars})
            }));
        }
        let gateway = builder.build()?;

        let python_bin_dir = a
            .python
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf);
        let child_path = launch::child_path(a.env.get("PATH"), python_bin_dir.as_deref());
        Ok(App {
            reload_api: a.reload_api,
            rolling_restarts: a.rolling_restarts,
            child_path,
            gateway,
            start_streamlit,
            api,
            ui_links,
            cookie_secret,
            api_link: Channels {
                endpoint: api_tx,
                state: api_state_tx,
            },
            externals,
            admin,
            sidecar_info,
            settings: a.settings,
            origins: a.origins,
            cwd: a.cwd,
            target: a.target,
            python: a.python,
            pidfile: a.pidfile,
        })
    }
}
