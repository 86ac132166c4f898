//! The `fluxlit` command: wiring only. It parses arguments, loads the configuration and hands
//! `fluxlit run` to the `fluxlit` library ([`fluxlit::App`]), which starts the sidecars, serves
//! the gateway and stops everything in order.

mod build_cmd;
mod config_cmd;
mod doctor_cmd;
mod new_cmd;
mod reload_cmd;
mod revoke_cmd;
mod run;
mod shutdown_cmd;
mod workbench;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use fluxlit_config::{CliOverrides, Environment, LoadOptions};

/// FluxLit: a Streamlit UI and an HTTP API behind one port.
#[derive(Debug, Parser)]
#[command(name = "fluxlit", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the Streamlit app and the API on one port.
    Run(RunArgs),
    /// `run` for development: Streamlit reruns pages on save; with --reload the API restarts
    /// when a Python source changes and the app restarts when fluxlit.toml/.env changes.
    Dev(DevArgs),
    /// Serve behind a platform's reverse proxy (Posit Workbench/Connect): `run --workbench`.
    Workbench(RunArgs),
    /// Check the project's configuration and prerequisites (Python, Streamlit, target).
    Doctor(DoctorArgs),
    /// Print the effective settings, where each came from, and configuration warnings.
    Config(ConfigCmdArgs),
    /// Stop a running `fluxlit run` through its pidfile (SIGTERM) and wait until it and its
    /// sidecars are gone. Exit 0 when stopped or nothing runs, 1 when still running, 2 when
    /// there is no pidfile.
    Shutdown(ShutdownArgs),
    /// Restart the Streamlit workers of a running `fluxlit run` without dropping open tabs
    /// (SIGHUP through its pidfile): new workers start with the re-read configuration and the
    /// script as it is now, new sessions go to them, the old workers keep their sessions until
    /// these end or streamlit_drain_timeout_s passes. Exit 0 when the signal was sent, 1 when
    /// nothing runs, 2 when there is no pidfile.
    Reload(ReloadArgs),
    /// Write a Dockerfile and .dockerignore for the project (refuses to overwrite without
    /// --force): a digest-pinned Python base, the FluxLit wheel, UID 1000, tini, a health check.
    Build(build_cmd::BuildArgs),
    /// Create a project that runs with `fluxlit run` at once: fluxlit.toml, a Streamlit page,
    /// a FastAPI API, pinned requirements.txt.
    New(NewArgs),
    /// End login sessions (auth_mode = oidc, auth_session_store = redis) on every gateway
    /// sharing the store, WebSockets included: one user's, one session, or all. Exit 0 when
    /// done, 1 when the store cannot revoke (cookie, memory) or cannot be reached, 2 for
    /// usage or configuration errors.
    Revoke(RevokeArgs),
}

/// `fluxlit revoke` options: exactly one of `--user`, `--session`, `--all`.
#[derive(Debug, Args)]
struct RevokeArgs {
    /// Every session of the user with this subject (the `sub` claim, `X-Forwarded-User`).
    #[arg(long, value_name = "SUB")]
    user: Option<String>,
    /// One session, by its id (`sid` in `X-Fluxlit-Identity`).
    #[arg(long, value_name = "SID")]
    session: Option<String>,
    /// Every session (for example after a key compromise).
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

/// `fluxlit new` options (FluxLit for Python reference §1.9).
#[derive(Debug, Args)]
struct NewArgs {
    /// Directory to create (with parents); it must not exist.
    name: std::path::PathBuf,
    /// What to include beyond the page and the API: auth-ready adds the authentication
    /// settings (commented out), deploy the production settings.
    #[arg(long, value_name = "PROFILE", default_value = "minimal", value_parser = ["minimal", "auth-ready", "deploy"])]
    profile: String,
}

/// `fluxlit shutdown` options (FluxLit for Python reference §1.5).
#[derive(Debug, Args)]
struct ShutdownArgs {
    /// Pidfile to read [env: FLUXLIT_PIDFILE; file: pidfile; default: .fluxlit.pid].
    #[arg(long, value_name = "PATH")]
    pidfile: Option<std::path::PathBuf>,
    /// Seconds to wait after SIGTERM for the gateway and its sidecars to be gone.
    #[arg(long, value_name = "SECONDS", default_value = "5")]
    wait: String,
    /// After --wait, SIGKILL the gateway and its sidecars' process groups.
    #[arg(short, long)]
    force: bool,
    /// Config file to read the pidfile setting from instead of ./fluxlit.toml or ./pyproject.toml [env: FLUXLIT_CONFIG].
    #[arg(long, value_name = "PATH")]
    config: Option<std::path::PathBuf>,
}

/// `fluxlit reload` options.
#[derive(Debug, Args)]
struct ReloadArgs {
    /// Pidfile to read [env: FLUXLIT_PIDFILE; file: pidfile; default: .fluxlit.pid].
    #[arg(long, value_name = "PATH")]
    pidfile: Option<std::path::PathBuf>,
    /// Config file to read the pidfile setting from instead of ./fluxlit.toml or ./pyproject.toml [env: FLUXLIT_CONFIG].
    #[arg(long, value_name = "PATH")]
    config: Option<std::path::PathBuf>,
}

/// Options shared by every command that reads the configuration.
#[derive(Debug, Args)]
struct ConfigArgs {
    /// The Streamlit script, or a FluxLit-for-Python app as module:attr or ./app.py:attr [env: FLUXLIT_TARGET; file: target; default: app.py].
    target: Option<String>,
    /// Config file to read instead of ./fluxlit.toml or ./pyproject.toml [env: FLUXLIT_CONFIG].
    #[arg(long, value_name = "PATH")]
    config: Option<std::path::PathBuf>,
    /// Address to listen on [env: FLUXLIT_GATEWAY_HOST; default: 127.0.0.1].
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// Port to listen on; 0 picks a free one [env: FLUXLIT_GATEWAY_PORT; default: 8000].
    #[arg(long, value_name = "PORT")]
    port: Option<String>,
    /// Public path prefix, e.g. /myapp [env: FLUXLIT_ROOT_PATH].
    #[arg(long, value_name = "PATH")]
    root_path: Option<String>,
    /// Where the API is mounted [env: FLUXLIT_API_MOUNT_PATH; default: /api].
    #[arg(long, value_name = "PATH")]
    api_mount_path: Option<String>,
    /// URL of an API running elsewhere, e.g. http://127.0.0.1:9000 [env: FLUXLIT_API_UPSTREAM].
    #[arg(long, value_name = "URL", conflicts_with = "api_command")]
    api_upstream: Option<String>,
    /// Command that starts the API; {port}, {root_path} and {api_prefix} (root path + API mount) are replaced [env: FLUXLIT_API_COMMAND].
    #[arg(long, value_name = "CMD")]
    api_command: Option<String>,
    /// URL of a UI server running elsewhere; no Streamlit is started [env: FLUXLIT_UI_UPSTREAM].
    #[arg(long, value_name = "URL")]
    ui_upstream: Option<String>,
    /// Python interpreter for Streamlit [env: FLUXLIT_STREAMLIT_PYTHON].
    #[arg(long, value_name = "PATH")]
    streamlit_python: Option<String>,
    /// Pidfile path [env: FLUXLIT_PIDFILE; default: .fluxlit.pid].
    #[arg(long, value_name = "PATH", conflicts_with = "no_pidfile")]
    pidfile: Option<String>,
    /// Do not write a pidfile [env: FLUXLIT_NO_PIDFILE].
    #[arg(long)]
    no_pidfile: bool,
    /// Trust X-Forwarded-* / Forwarded from forwarded_allow_ips [env: FLUXLIT_TRUST_PROXY].
    #[arg(long)]
    proxy_headers: bool,
    /// Proxies whose forwarded headers are trusted: IPs/CIDRs, comma-separated [env: FLUXLIT_FORWARDED_ALLOW_IPS].
    #[arg(long, value_name = "LIST")]
    forwarded_allow_ips: Option<String>,
    /// Serve metrics on this admin address instead of the public port [env: FLUXLIT_METRICS_ADDR].
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    /// Debug mode [env: FLUXLIT_DEBUG].
    #[arg(long)]
    debug: bool,
    /// Workbench/Connect mode: trust proxy headers (as --proxy-headers) and print a banner with
    /// the loopback URLs at start-up; `fluxlit workbench` is `fluxlit run --workbench`.
    #[arg(long)]
    workbench: bool,
    /// Log format: text or json [env: FLUXLIT_LOG_FORMAT; default: text].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Log level: critical, error, warning, info, debug, trace, or a tracing directive list [env: FLUXLIT_LOG_LEVEL; default: info].
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Extra arguments for `streamlit run` (after `--`) [env: FLUXLIT_STREAMLIT_RUN_CLI_ARGS].
    #[arg(last = true, value_name = "STREAMLIT_ARGS")]
    streamlit_args: Vec<String>,
}

impl ConfigArgs {
    fn overrides(&self) -> CliOverrides {
        let mut cli = CliOverrides::default();
        let mut set = |key: &str, value: &Option<String>, flag: &str| {
            if let Some(v) = value {
                cli.set(key, v.clone(), flag);
            }
        };
        set("target", &self.target, "TARGET");
        set("gateway_host", &self.host, "--host");
        set("gateway_port", &self.port, "--port");
        set("root_path", &self.root_path, "--root-path");
        set("api_mount_path", &self.api_mount_path, "--api-mount-path");
        set("api_upstream", &self.api_upstream, "--api-upstream");
        set("api_command", &self.api_command, "--api-command");
        set(
            "streamlit_python",
            &self.streamlit_python,
            "--streamlit-python",
        );
        set("ui_upstream", &self.ui_upstream, "--ui-upstream");
        set("pidfile", &self.pidfile, "--pidfile");
        set("log_level", &self.log_level, "--log-level");
        set(
            "forwarded_allow_ips",
            &self.forwarded_allow_ips,
            "--forwarded-allow-ips",
        );
        set("log_format", &self.log_format, "--log-format");
        set("metrics_addr", &self.metrics_addr, "--metrics-addr");
        if self.proxy_headers {
            cli.set("trust_proxy", "true", "--proxy-headers");
        }
        if self.workbench {
            cli.set("trust_proxy", "true", "--workbench");
        }
        if self.debug {
            cli.set("debug", "true", "--debug");
        }
        if self.no_pidfile {
            cli.set("no_pidfile", "true", "--no-pidfile");
        }
        if !self.streamlit_args.is_empty() {
            cli.set_list(
                "streamlit_run_cli_args",
                &self.streamlit_args,
                "-- STREAMLIT_ARGS",
            );
        }
        cli
    }

    fn load_options(&self, env: Environment) -> Result<LoadOptions, String> {
        let cwd = std::env::current_dir()
            .map_err(|e| format!("cannot read the working directory: {e}"))?;
        let mut opts = LoadOptions::new(&cwd, env, self.overrides());
        opts.config_file = self.config.clone();
        opts.executable = std::env::current_exe().ok();
        Ok(opts)
    }
}

/// `fluxlit dev` options: `run`'s, and the reload switches (FluxLit for Python reference §1.2).
#[derive(Debug, Args)]
struct DevArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Watch the project: restart the API when a *.py file changes, restart the app (same
    /// port) when fluxlit.toml, pyproject.toml or .env changes.
    #[arg(long)]
    reload: bool,
    /// Accepted for FluxLit for Python scripts: `gateway` or `full` (both watch everything
    /// described under --reload here). Checked only with --reload.
    #[arg(long, value_name = "SCOPE")]
    reload_scope: Option<String>,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Debug, Args)]
struct ConfigCmdArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Print JSON (always includes each value's origin).
    #[arg(long)]
    json: bool,
    /// Exit 1 on any warning, not only on errors.
    #[arg(long)]
    strict: bool,
    /// Show where each value came from.
    #[arg(long)]
    show_origin: bool,
}

#[derive(Debug, Args)]
struct DoctorArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Print the report as one line of JSON: status, target, warnings_only, checks[{name,
    /// status, detail}] (and verbose).
    #[arg(long)]
    json: bool,
    /// Check a running deployment from the outside, as a browser would: health, readiness,
    /// Streamlit's page and assets, a WebSocket held 2 s, a 2 MiB upload, the API mount. URL
    /// is the public address (e.g. https://app.example.com/myapp/); without it, this
    /// project's gateway on loopback.
    #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = "")]
    live: Option<String>,
    /// Turn the WARN rows FluxLit for Python upgrades into FAIL: oauth_public_base_url,
    /// proxy_headers, forwarded_allow_ips, gateway_max_proxy_body, public_base_url (path
    /// mismatch), gateway_upstream_timeouts, gateway_forward_rejected_names, security_headers,
    /// public_base_url_precedence.
    #[arg(long)]
    strict: bool,
    /// Exit 0 even when a row is FAIL (the rows are still printed; JSON status is "warn").
    #[arg(long)]
    warnings_only: bool,
    /// Add the effective configuration, secrets redacted, with where each value came from.
    #[arg(long, short = 'v')]
    verbose: bool,
}

/// The program of both `fluxlit` and (in the wheel) `fluxlit-rs` (`src/bin/fluxlit-rs.rs`).
pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    // The one place the process environment is read; everything else gets this snapshot.
    let env = Environment::from_process();
    match cli.command {
        Command::Run(args) => run::main(args.config, env),
        Command::Dev(args) => {
            if args.reload
                && let Some(scope) = &args.reload_scope
                && scope != "gateway"
                && scope != "full"
            {
                eprintln!("--reload-scope must be 'gateway' or 'full'.");
                return ExitCode::from(2);
            }
            run::main_dev(args.config, env, args.reload)
        }
        Command::Workbench(mut args) => {
            args.config.workbench = true;
            run::main(args.config, env)
        }
        Command::Doctor(args) => doctor_cmd::main(args, env),
        Command::Config(args) => config_cmd::main(args, env),
        Command::Shutdown(args) => shutdown_cmd::main(args, env),
        Command::Reload(args) => reload_cmd::main(args, env),
        Command::New(args) => new_cmd::main(&args),
        Command::Build(args) => build_cmd::main(args, env),
        Command::Revoke(args) => revoke_cmd::main(args, env),
    }
}
