//! `fluxlit run`: wiring only. Load the configuration, refuse what must be refused, set up
//! logging, the metrics exporter and the runtime, bind the public port, watch SIGTERM/SIGINT,
//! and run [`fluxlit::App`], which does the rest (see docs/ARCHITECTURE.md, "Lifecycle of
//! `fluxlit run`").
//!
//! Exit codes: 0 after a signal and an orderly stop; 1 for a configuration or start-up error,
//! when a sidecar exited on its own (`sidecar_restart = exit`, so the platform restarts the
//! pod), or when a second signal cut the stop short.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use fluxlit_config::{Environment, LoadOptions, Loaded};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

use super::ConfigArgs;

pub(crate) fn main(args: ConfigArgs, env: Environment) -> ExitCode {
    main_with(args, env, None)
}

/// `fluxlit dev [--reload]`: `run`, with Streamlit's `server.runOnSave` on and, with `reload`,
/// the project watched ([`fluxlit::dev`]): a Python source change restarts the API sidecar, a
/// configuration change reloads the configuration and restarts the app on the same socket.
pub(crate) fn main_dev(args: ConfigArgs, env: Environment, reload: bool) -> ExitCode {
    main_with(args, env, Some(Dev { reload }))
}

/// What `fluxlit dev` adds to `run`.
#[derive(Debug, Clone, Copy)]
struct Dev {
    reload: bool,
}

fn main_with(args: ConfigArgs, env: Environment, dev: Option<Dev>) -> ExitCode {
    let opts = match args.load_options(env.clone()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("fluxlit: {e}");
            return ExitCode::from(1);
        }
    };
    let loaded = match fluxlit_config::load(&opts) {
        Ok(l) if dev.is_some() => dev_settings(l),
        Ok(l) => l,
        Err(e) => {
            eprintln!("fluxlit: {e}");
            return ExitCode::from(1);
        }
    };
    let found = fluxlit_config::findings::findings(&loaded, &env);
    let refuse: Vec<&fluxlit_config::findings::Finding> = found
        .iter()
        .filter(|f| {
            f.level == fluxlit_config::findings::Level::Error || loaded.settings.strict_startup
        })
        .collect();
    if !refuse.is_empty() {
        eprintln!(
            "fluxlit: refusing to start{}:",
            if loaded.settings.strict_startup {
                " (strict_startup is on)"
            } else {
                ""
            }
        );
        for f in refuse {
            eprintln!("  - {}: {}", f.code, f.message);
        }
        return ExitCode::from(1);
    }
    // Debug mode raises the default level to debug (an explicit log_level still wins).
    let level = if loaded.settings.debug && loaded.settings.log_level == "info" {
        "debug".to_owned()
    } else {
        loaded.settings.log_level.clone()
    };
    let filter = match EnvFilter::try_new(&level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "fluxlit: invalid configuration: log_level = {:?} (from {}): expected error, warn, info, debug, trace or a tracing directive list ({e})",
                loaded.settings.log_level,
                loaded.origin("log_level")
            );
            return ExitCode::from(1);
        }
    };
    // Lines go through a bounded buffer written by its own thread: a slow or stuck stderr
    // costs dropped, counted lines (`fluxlit_access_log_dropped_total`), never a blocked
    // runtime.
    let log = match fluxlit_gateway::LogWriter::new(
        std::io::stderr(),
        fluxlit_gateway::LogWriter::DEFAULT_CAPACITY,
    ) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fluxlit: cannot start the log writer thread: {e}");
            return ExitCode::from(1);
        }
    };
    // The last lines (the stop, an error) are written before the process exits, whichever way
    // `run` ends, a panic unwinding out of the runtime included (lines wait in the buffer for up
    // to `LogWriter::LINGER`).
    let _flush = FlushOnExit(log.clone());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(log.clone());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // The gateway writes its access-log lines into the same buffer itself, in the same format
    // (`AccessLogSink`: the `tracing` formatter costs more than the rest of a small request);
    // a colour terminal keeps `tracing`'s coloured lines.
    let access_sink = match loaded.settings.log_format {
        fluxlit_config::LogFormat::Json => {
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .init();
            Some(fluxlit_gateway::AccessLogFormat::Json)
        }
        fluxlit_config::LogFormat::Text => {
            builder.with_ansi(ansi).init();
            (!ansi).then_some(fluxlit_gateway::AccessLogFormat::Text)
        }
    }
    .map(|format| fluxlit_gateway::AccessLogSink::new(log.clone(), format));
    for f in &found {
        tracing::warn!(code = f.code, "{}", f.message);
    }
    let workers = gateway_worker_threads(
        loaded.settings.gateway_worker_threads,
        std::thread::available_parallelism().map_or(1, usize::from),
    );
    // One worker: a current-thread runtime, so that accepting, the I/O driver and every
    // connection share one thread with no cross-thread wake-ups (measured in
    // docs/performance.md); nothing on FluxLit's own tasks blocks.
    let mut runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    runtime.enable_all();
    let runtime = match runtime.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fluxlit: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(loaded, opts, env, args.workbench, dev, access_sink)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("fluxlit: {e}");
            ExitCode::from(1)
        }
    }
}

/// Waits, when dropped, for the log's buffered lines to be written (at most
/// [`LOG_FLUSH_TIMEOUT`]).
struct FlushOnExit(fluxlit_gateway::LogWriter);

impl Drop for FlushOnExit {
    fn drop(&mut self) {
        self.0.flush(LOG_FLUSH_TIMEOUT);
    }
}

/// How long the end of a run waits for buffered log lines to be written, at most.
const LOG_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A start-up failure, said plainly.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(
        "cannot listen on {addr} (gateway_host from {host_origin}, gateway_port from {port_origin}): {source}"
    )]
    Bind {
        addr: String,
        host_origin: String,
        port_origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the metrics recorder: {0}")]
    Metrics(String),
    #[error("cannot install the SIGTERM/SIGINT handlers: {0}")]
    Signal(#[source] std::io::Error),
    #[error(transparent)]
    App(#[from] fluxlit::AppError),
    #[error("cannot watch the project for changes (--reload): {0}")]
    Watch(#[source] notify::Error),
    #[error("cannot duplicate the listening socket for a restart: {0}")]
    Dup(#[source] std::io::Error),
}

async fn serve(
    loaded: Loaded,
    opts: LoadOptions,
    env: Environment,
    workbench: bool,
    dev: Option<Dev>,
    access_sink: Option<fluxlit_gateway::AccessLogSink>,
) -> Result<ExitCode, RunError> {
    let s = &loaded.settings;
    // Workbench/Connect mode prints its banner once the port is bound (crate::workbench).
    let banner_settings = workbench.then(|| s.clone());
    let bind_addr = format!("{}:{}", s.gateway_host, s.gateway_port);
    let host_origin = loaded.origin("gateway_host").to_string();
    let port_origin = loaded.origin("gateway_port").to_string();
    let metrics = if s.enable_gateway_prometheus_metrics {
        Some(install_metrics()?)
    } else {
        None
    };
    let reload_api = Arc::new(tokio::sync::Notify::new());
    // `fluxlit run`: SIGHUP (`fluxlit reload`) re-reads the configuration and restarts the
    // Streamlit workers without dropping tabs (docs/scaling.md). Installed before the pidfile
    // is written, so a reload sent once it exists is never the default action (exit).
    let mut rolling = None;
    let _reloader = match dev {
        None => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            rolling = Some(rx);
            let hup = signal(SignalKind::hangup()).map_err(RunError::Signal)?;
            Some(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
                reload_on_sighup(hup, opts.clone(), tx),
            )))
        }
        Some(_) => None,
    };
    let outputs = Outputs {
        metrics: metrics.as_ref(),
        access_sink: access_sink.as_ref(),
    };
    let app = build_app(loaded, &opts, &env, outputs, dev, &reload_api, rolling)?;
    let listener = tokio::net::TcpListener::bind(&bind_addr)
        .await
        .map_err(|source| RunError::Bind {
            addr: bind_addr.clone(),
            host_origin,
            port_origin,
            source,
        })?;
    if let Some(settings) = &banner_settings
        && let Ok(bound) = listener.local_addr()
    {
        eprint!("{}", super::workbench::banner(settings, bound));
    }

    // Signals are watched from here on, so Ctrl-C during start-up stops cleanly too. The first
    // one stops in order; a second one while stopping cuts the graces short: dropping the run
    // future drops the sidecar handles, which SIGKILL their process groups.
    let mut signals = Signals::new()?;
    let Some(Dev { reload: true }) = dev else {
        let stop = tokio_util::sync::CancellationToken::new();
        let run = Box::pin(app.run(listener, stop.clone().cancelled_owned()));
        return finish(run, stop, &mut signals, None).await;
    };

    // `fluxlit dev --reload`: the public socket stays bound across app restarts (each run gets
    // a duplicate of it), so connections made during a restart wait in its backlog.
    let mut watch =
        fluxlit::dev::watch(&opts.cwd, opts.config_file.as_deref()).map_err(RunError::Watch)?;
    tracing::info!(dir = %opts.cwd.display(), "watching for changes: *.py restarts the API, fluxlit.toml/pyproject.toml/.env the app");
    let mut app = app;
    let mut current = current_settings(&opts);
    loop {
        let stop = tokio_util::sync::CancellationToken::new();
        let mut run = Box::pin(app.run(dup(&listener)?, stop.clone().cancelled_owned()));
        let next = loop {
            tokio::select! {
                r = &mut run => return Ok(exit_code(r?)),
                sig = signals.next() => {
                    tracing::info!(signal = sig, "signal received");
                    stop.cancel();
                    return finish(run, stop, &mut signals, Some(sig)).await;
                }
                batch = watch.next() => {
                    let Some(batch) = batch else { continue };
                    if !batch.config.is_empty() {
                        match fluxlit_config::load(&opts) {
                            Ok(new) if current.as_ref() == Some(&new.settings) => {
                                tracing::info!(files = ?batch.config, "configuration unchanged");
                            }
                            Ok(new) => break dev_settings(new),
                            Err(e) => tracing::error!("the configuration has errors; the running app is kept:\n{e}"),
                        }
                    } else if !batch.python.is_empty() {
                        tracing::info!(files = ?batch.python, "Python sources changed");
                        reload_api.notify_one();
                    }
                }
            }
        };
        if next.settings.gateway_host != next_host(&current)
            || next.settings.gateway_port != next_port(&current)
        {
            tracing::warn!(
                "gateway_host/gateway_port changed: the listening socket stays {}; restart fluxlit dev to move it",
                listener
                    .local_addr()
                    .map_or_else(|_| "as it is".into(), |a| a.to_string())
            );
        }
        tracing::info!("configuration changed; restarting the app");
        stop.cancel();
        if let Err(e) = run.await {
            tracing::error!("stopping for the restart: {e}");
        }
        current = Some(next.settings.clone());
        app = match build_app(next, &opts, &env, outputs, dev, &reload_api, None) {
            Ok(a) => a,
            Err(e) => return Err(e.into()),
        };
    }
}

/// On each SIGHUP, the configuration is loaded again from the sources `fluxlit run` read at
/// start (its flags, the environment snapshot, `.env`, the project file) and handed to the
/// app for a rolling restart; a configuration with errors changes nothing (logged).
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    opts: LoadOptions,
    to: tokio::sync::mpsc::UnboundedSender<fluxlit_config::Settings>,
) {
    while hup.recv().await.is_some() {
        tracing::info!(
            signal = "SIGHUP",
            "reload asked for: reading the configuration again"
        );
        match fluxlit_config::load(&opts) {
            Ok(loaded) => {
                if to.send(loaded.settings).is_err() {
                    return;
                }
            }
            Err(e) => tracing::error!(
                "reload refused: the configuration has errors; the running Streamlit workers keep serving:\n{e}"
            ),
        }
    }
}

fn next_host(s: &Option<fluxlit_config::Settings>) -> String {
    s.as_ref()
        .map(|s| s.gateway_host.clone())
        .unwrap_or_default()
}

fn next_port(s: &Option<fluxlit_config::Settings>) -> u16 {
    s.as_ref().map_or(0, |s| s.gateway_port)
}

/// The settings as `dev` uses them, to tell a configuration change from a touch.
fn current_settings(opts: &LoadOptions) -> Option<fluxlit_config::Settings> {
    fluxlit_config::load(opts)
        .ok()
        .map(|l| dev_settings(l).settings)
}

/// `dev`'s changes to the settings: Streamlit reruns a page when its source is saved
/// (`--server.runOnSave true`, before the user's own arguments, which win).
fn dev_settings(mut loaded: Loaded) -> Loaded {
    let args = &mut loaded.settings.streamlit_run_cli_args;
    if !args.iter().any(|a| a.contains("runOnSave")) {
        args.splice(0..0, ["--server.runOnSave".to_owned(), "true".to_owned()]);
    }
    loaded
}

/// What the process set up once, for every app of the run (a reload's included).
#[derive(Clone, Copy)]
struct Outputs<'a> {
    /// The Prometheus recorder's renderer, when metrics are on.
    metrics: Option<&'a fluxlit::MetricsRender>,
    /// Where the gateway writes its access-log lines itself (the log's buffer, in its format).
    access_sink: Option<&'a fluxlit_gateway::AccessLogSink>,
}

/// Builds the app of one run.
fn build_app(
    loaded: Loaded,
    opts: &LoadOptions,
    env: &Environment,
    outputs: Outputs<'_>,
    dev: Option<Dev>,
    reload_api: &Arc<tokio::sync::Notify>,
    rolling: Option<tokio::sync::mpsc::UnboundedReceiver<fluxlit_config::Settings>>,
) -> Result<fluxlit::App, fluxlit::AppError> {
    let Outputs {
        metrics,
        access_sink,
    } = outputs;
    let mut app = fluxlit::App::builder()
        .cwd(opts.cwd.clone())
        .environment(env.clone());
    if let Some(sink) = access_sink {
        app = app.access_log_sink(sink.clone());
    }
    if loaded.settings.enable_gateway_prometheus_metrics {
        match metrics {
            Some(render) => app = app.metrics(render.clone()),
            None => tracing::warn!(
                "enable_gateway_prometheus_metrics was turned on while running: restart to install the recorder"
            ),
        }
    }
    if let Some(Dev { reload: true }) = dev {
        app = app.reload_api(reload_api.clone());
    }
    if let Some(rx) = rolling {
        app = app.rolling_restarts(rx);
    }
    app.config(loaded).build()
}

/// A duplicate of the listening socket for one run of the app (the original stays bound).
fn dup(listener: &tokio::net::TcpListener) -> Result<tokio::net::TcpListener, RunError> {
    let fd = std::os::fd::AsFd::as_fd(listener)
        .try_clone_to_owned()
        .map_err(RunError::Dup)?;
    tokio::net::TcpListener::from_std(std::net::TcpListener::from(fd)).map_err(RunError::Dup)
}

/// Waits for `run` after the first signal (`first`, or the next one), and cuts the stop short
/// on a second one.
async fn finish(
    mut run: std::pin::Pin<
        Box<impl std::future::Future<Output = Result<fluxlit::Exit, fluxlit::AppError>>>,
    >,
    stop: tokio_util::sync::CancellationToken,
    signals: &mut Signals,
    first: Option<&'static str>,
) -> Result<ExitCode, RunError> {
    if first.is_none() {
        let first = tokio::select! {
            r = &mut run => return Ok(exit_code(r?)),
            sig = signals.next() => sig,
        };
        tracing::info!(signal = first, "signal received");
        stop.cancel();
    }
    tokio::select! {
        r = &mut run => Ok(exit_code(r?)),
        sig = signals.next() => {
            tracing::warn!(signal = sig, "second signal while stopping: killing the sidecars now");
            drop(run);
            tracing::info!("stopped");
            Ok(ExitCode::from(1))
        }
    }
}

fn exit_code(exit: fluxlit::Exit) -> ExitCode {
    ExitCode::from(exit.code())
}

/// SIGTERM and SIGINT.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, RunError> {
        Ok(Self {
            term: signal(SignalKind::terminate()).map_err(RunError::Signal)?,
            int: signal(SignalKind::interrupt()).map_err(RunError::Signal)?,
        })
    }

    /// The name of the next signal received.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Installs the Prometheus recorder (histogram buckets set, upkeep on a timer) and returns the
/// renderer for the metrics endpoint.
fn install_metrics() -> Result<fluxlit::MetricsRender, RunError> {
    use fluxlit_gateway::metric_names as n;
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(n::DURATION.into()), n::DURATION_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(n::TUNNEL_LIFETIME.into()), n::TUNNEL_BUCKETS)
        })
        .map_err(|e| RunError::Metrics(e.to_string()))?
        .install_recorder()
        .map_err(|e| RunError::Metrics(e.to_string()))?;
    fluxlit_gateway::describe_metrics();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(Arc::new(move || handle.render()))
}

/// Worker threads of the gateway's runtime: `configured` (`gateway_worker_threads`) when it is
/// not 0, else one per core minus one for the sidecars, at least 1 (`cores`: the CPUs this
/// process may use).
fn gateway_worker_threads(configured: u64, cores: usize) -> usize {
    match usize::try_from(configured) {
        Ok(n) if n > 0 => n,
        _ => cores.saturating_sub(1).max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_threads_leave_a_core_to_the_sidecars() {
        assert_eq!(gateway_worker_threads(0, 1), 1);
        assert_eq!(gateway_worker_threads(0, 2), 1);
        assert_eq!(gateway_worker_threads(0, 8), 7);
        assert_eq!(
            gateway_worker_threads(3, 2),
            3,
            "a configured count is kept"
        );
    }
}
