//! `fluxlit run`: load config → bind → start sidecars → serve → stop in order.
//!
//! Lifecycle (see docs/ARCHITECTURE.md):
//! 1. Configuration errors are reported before anything binds (exit 1).
//! 2. The public port is bound; readiness is 503 and UI requests get 503 until Streamlit's
//!    `/_stcore/health` answers 200.
//! 3. The API sidecar (if `api_command`) and Streamlit start in their own process groups; the
//!    pidfile is written once they are ready.
//! 4. SIGTERM/SIGINT: stop accepting, drain in-flight HTTP (graceful timeout), stop the sidecars
//!    (SIGINT → grace → SIGTERM → grace → SIGKILL; Streamlit closes its WebSockets with 1012,
//!    which reach the browsers through the tunnels), cut what tunnels remain, remove the
//!    pidfile, exit 0.
//! 5. A sidecar that exits on its own: readiness is 503 at once, the gateway stops the same way
//!    and exits 1, so the platform restarts the pod.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use fluxlit_config::{Environment, Loaded, Settings};
use fluxlit_gateway::{ApiTarget, ComponentState, Endpoint, Gateway, ReadinessCheck, Upstream};
use fluxlit_sidecar::{HealthProbe, Sidecar, SidecarSpec, SidecarState, StartError};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::ConfigArgs;
use crate::pidfile::Pidfile;

/// How many times a sidecar is restarted with a new port when its port was taken between
/// FluxLit picking it and the sidecar binding it.
const PORT_RETRIES: usize = 3;

/// Time tunnels get to close after the sidecars stopped (Streamlit sends its close frames
/// as it stops, so this is only for stragglers).
const TUNNEL_GRACE: Duration = Duration::from_secs(2);

pub(crate) fn main(args: ConfigArgs, env: Environment) -> ExitCode {
    let opts = match args.load_options(env.clone()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("fluxlit: {e}");
            return ExitCode::from(1);
        }
    };
    let loaded = match fluxlit_config::load(&opts) {
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match loaded.settings.log_format {
        fluxlit_config::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        fluxlit_config::LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
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
    match runtime.block_on(serve(loaded, opts.cwd, env)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("fluxlit: {e}");
            ExitCode::from(1)
        }
    }
}

/// A start-up failure, said plainly.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(
        "target {path} does not exist (target = {target:?} from {origin}); pass the Streamlit script as `fluxlit run app.py` or set target in fluxlit.toml"
    )]
    MissingTarget {
        path: PathBuf,
        target: String,
        origin: String,
    },
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
    #[error("cannot pick a free loopback port for the {name} sidecar: {source}")]
    Port {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Spawn(#[from] fluxlit_sidecar::SpawnError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("api_command {command:?} (from {origin}) could not be parsed as a shell command line")]
    ApiCommand { command: String, origin: String },
    #[error("cannot write the pidfile {path}: {source}")]
    Pidfile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the metrics recorder: {0}")]
    Metrics(String),
    #[error("cannot install the SIGTERM/SIGINT handlers: {0}")]
    Signal(#[source] std::io::Error),
    #[error("invalid gateway settings: {0}")]
    Gateway(#[from] fluxlit_gateway::BuildError),
}

/// Why the gateway is stopping.
enum Stop {
    Signal(&'static str),
    SidecarExited(String),
}

async fn serve(loaded: Loaded, cwd: PathBuf, env: Environment) -> Result<ExitCode, RunError> {
    let s = &loaded.settings;
    let target = cwd.join(&s.target);
    if s.ui_upstream.is_none() && !target.is_file() {
        return Err(RunError::MissingTarget {
            path: target,
            target: s.target.clone(),
            origin: loaded.origin("target").to_string(),
        });
    }

    let bind_addr = format!("{}:{}", s.gateway_host, s.gateway_port);
    let listener = tokio::net::TcpListener::bind(&bind_addr)
        .await
        .map_err(|source| RunError::Bind {
            addr: bind_addr.clone(),
            host_origin: loaded.origin("gateway_host").to_string(),
            port_origin: loaded.origin("gateway_port").to_string(),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| RunError::Bind {
        addr: bind_addr.clone(),
        host_origin: loaded.origin("gateway_host").to_string(),
        port_origin: loaded.origin("gateway_port").to_string(),
        source,
    })?;
    let internal_api_base = format!(
        "{}{}",
        fluxlit_gateway::loopback_base(bound),
        s.api_mount_path
    );
    let mount = s.public_mount().to_owned();

    // Signals are watched from here on, so Ctrl-C during start-up stops cleanly too.
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;

    // UI upstream, published once Streamlit is ready.
    let (ui_tx, ui_rx) = watch::channel::<Option<Endpoint>>(None);
    let (ui_state_tx, ui_state_rx) = watch::channel(ComponentState::Starting(
        "Streamlit has not been started yet".into(),
    ));
    let mut probers = Vec::new();
    let mut builder = Gateway::builder().settings(s);
    match s
        .ui_upstream
        .as_deref()
        .map(fluxlit_config::parse_upstream_url)
    {
        // Validated by the config loader.
        Some(Ok(u)) => {
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
            probers.push(tokio::spawn(probe_external(
                u.host,
                u.port,
                format!("{}/", u.base_path),
                ui_state_tx.clone(),
            )));
        }
        _ => {
            builder = builder
                .ui(Upstream::dynamic("streamlit", ui_rx))
                .readiness(ReadinessCheck::new("streamlit", ui_state_rx));
        }
    }

    // API: supervised command, external upstream, or none.
    let (api_tx, api_rx) = watch::channel::<Option<Endpoint>>(None);
    let (api_state_tx, api_state_rx) = watch::channel(ComponentState::Starting(
        "the API has not been started yet".into(),
    ));
    if s.api_command.is_some() {
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
            probers.push(tokio::spawn(probe_external(
                u.host.clone(),
                u.port,
                format!("{}/", u.base_path),
                api_state_tx.clone(),
            )));
        }
    }
    let sidecar_info: SidecarInfo = Arc::default();
    if s.enable_gateway_prometheus_metrics {
        let render = install_metrics()?;
        match &s.metrics_addr {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| RunError::Bind {
                        addr: addr.clone(),
                        host_origin: loaded.origin("metrics_addr").to_string(),
                        port_origin: loaded.origin("metrics_addr").to_string(),
                        source,
                    })?;
                tracing::info!(address = %addr, path = %s.gateway_prometheus_metrics_path, "metrics on the admin listener");
                tokio::spawn(crate::admin::serve(
                    listener,
                    s.gateway_prometheus_metrics_path.clone(),
                    render,
                ));
            }
            None => builder = builder.metrics_endpoint(&s.gateway_prometheus_metrics_path, render),
        }
    }
    if s.debug {
        let settings = serde_json::to_value(s).unwrap_or_default();
        let info = sidecar_info.clone();
        builder = builder.debug(Arc::new(move || {
            let sidecars = info
                .lock()
                .map(|m| serde_json::to_value(&*m).unwrap_or_default())
                .unwrap_or_default();
            serde_json::json!({"settings": settings, "sidecars": sidecars})
        }));
        eprintln!(
            "[fluxlit-debug] internal_api_base={internal_api_base} api_prefix={} public_mount={} trust_proxy={} forwarded_allow_ips={:?} debug_snapshot={}{}",
            s.api_mount_path,
            mount,
            s.trust_proxy,
            s.forwarded_allow_ips,
            mount,
            fluxlit_gateway::DEBUG_PATH
        );
    }
    let gateway = builder.build()?;
    {
        let gw = gateway.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                gw.housekeeping();
            }
        });
    }

    let stop_serving = CancellationToken::new();
    let serve_task = {
        let gw = gateway.clone();
        let token = stop_serving.clone();
        tokio::spawn(async move { gw.serve(listener, token.cancelled_owned()).await })
    };
    tracing::info!(address = %bound, root_path = %mount, api_mount = %s.api_mount_path, "gateway listening");
    if s.trust_proxy {
        if s.forwarded_allow_ips.is_empty() {
            tracing::info!(
                "trust_proxy is on with no forwarded_allow_ips: trusting forwarded headers from loopback peers only (127.0.0.0/8, ::1)"
            );
        } else {
            tracing::info!(forwarded_allow_ips = ?s.forwarded_allow_ips, "trusting forwarded headers from these peers");
        }
    }

    let python_bin_dir = Path::new(&s.streamlit_python)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf);
    let child_path = child_path(env.get("PATH"), python_bin_dir.as_deref());
    let common_env: Vec<(OsString, OsString)> = vec![
        (
            "FLUXLIT_INTERNAL_API_BASE".into(),
            internal_api_base.clone().into(),
        ),
        ("FLUXLIT_API_PREFIX".into(), s.api_mount_path.clone().into()),
        ("FLUXLIT_ROOT_PATH".into(), mount.clone().into()),
        ("PATH".into(), child_path.into()),
    ];

    // Start the sidecars; any failure or a signal stops what was started.
    let startup = async {
        let api = match &s.api_command {
            Some(cmd) => Some(start_api(s, &loaded, cmd, &cwd, &common_env).await?),
            None => None,
        };
        let ui = match s.ui_upstream {
            Some(_) => Ok(None),
            None => start_streamlit(s, &cwd, &common_env).await.map(Some),
        };
        let ui = match ui {
            Ok(ui) => ui,
            Err(e) => {
                if let Some((api, _)) = api {
                    api.stop().await;
                }
                return Err(e);
            }
        };
        Ok::<_, RunError>((ui, api))
    };
    let started = tokio::select! {
        r = startup => Some(r),
        _ = sigterm.recv() => None,
        _ = sigint.recv() => None,
    };
    let (ui, api) = match started {
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            shutdown_gateway(&gateway, stop_serving, serve_task).await;
            return Err(e);
        }
        None => {
            tracing::info!("signal received during start-up; stopping");
            // Dropping the start-up future dropped any half-started sidecar handle, which kills its group.
            shutdown_gateway(&gateway, stop_serving, serve_task).await;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let ui_link = Link {
        name: "streamlit",
        endpoint: ui_tx,
        state: ui_state_tx,
        info: sidecar_info.clone(),
    };
    let api_link = Link {
        name: "api",
        endpoint: api_tx,
        state: api_state_tx.clone(),
        info: sidecar_info.clone(),
    };
    if let Some((ui, port)) = &ui {
        ui_link.publish(ui, *port);
    }
    if let Some((api, port)) = &api {
        api_link.publish(api, *port);
    }

    let pidfile = match s.pidfile_path(&cwd) {
        Some(path) => match Pidfile::write(&path) {
            Ok(p) => Some(p),
            Err(source) => {
                let e = RunError::Pidfile { path, source };
                stop_all(&gateway, stop_serving, serve_task, ui, api).await;
                return Err(e);
            }
        },
        None => None,
    };
    let public = format!("{}{}/", fluxlit_gateway::loopback_base(bound), mount);
    tracing::info!(url = %public, api = %format!("{}{}{}", fluxlit_gateway::loopback_base(bound), mount, s.api_mount_path), "FluxLit is ready");

    let (mut ui, mut api) = (ui, api);
    let mut crashes = [CrashLog::default(), CrashLog::default()];
    let stop = loop {
        let (which, exit) = tokio::select! {
            _ = sigterm.recv() => break Stop::Signal("SIGTERM"),
            _ = sigint.recv() => break Stop::Signal("SIGINT"),
            exit = wait_exit(&ui) => (0usize, exit),
            exit = wait_exit(&api) => (1usize, exit),
        };
        let link = if which == 0 { &ui_link } else { &api_link };
        link.exited(&exit);
        if s.sidecar_restart == fluxlit_config::RestartPolicy::Exit {
            break Stop::SidecarExited(format!("the {} sidecar exited ({exit})", link.name));
        }
        // Restart with exponential backoff and jitter; readiness is 503 meanwhile.
        let restarted = loop {
            let (delay, crash_loop) = crashes[which].record();
            let detail = if crash_loop {
                tracing::error!(
                    sidecar = link.name,
                    restarts_in_window = crashes[which].recent(),
                    window_s = CRASH_WINDOW.as_secs(),
                    "sidecar is crash-looping"
                );
                format!(
                    "crash loop: {} restarts in {} s; last exit: {exit}; restarting in {:.1} s",
                    crashes[which].recent(),
                    CRASH_WINDOW.as_secs(),
                    delay.as_secs_f64()
                )
            } else {
                format!(
                    "exited ({exit}); restarting in {:.1} s",
                    delay.as_secs_f64()
                )
            };
            tracing::warn!(
                sidecar = link.name,
                delay_s = delay.as_secs_f64(),
                "restarting sidecar"
            );
            link.state.send_replace(ComponentState::NotReady(detail));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = sigterm.recv() => break Err(Stop::Signal("SIGTERM")),
                _ = sigint.recv() => break Err(Stop::Signal("SIGINT")),
            }
            let start = async {
                if which == 0 {
                    start_streamlit(s, &cwd, &common_env).await
                } else {
                    match &s.api_command {
                        Some(cmd) => start_api(s, &loaded, cmd, &cwd, &common_env).await,
                        None => std::future::pending().await,
                    }
                }
            };
            let started = tokio::select! {
                r = start => r,
                _ = sigterm.recv() => break Err(Stop::Signal("SIGTERM")),
                _ = sigint.recv() => break Err(Stop::Signal("SIGINT")),
            };
            match started {
                Ok(v) => break Ok(v),
                Err(e) => tracing::error!(sidecar = link.name, error = %e, "restart failed"),
            }
        };
        match restarted {
            Ok((sidecar, port)) => {
                metrics::counter!(fluxlit_gateway::metric_names::SIDECAR_RESTARTS, "sidecar" => link.name).increment(1);
                link.publish(&sidecar, port);
                if which == 0 {
                    ui = Some((sidecar, port));
                } else {
                    api = Some((sidecar, port));
                }
            }
            Err(stop) => break stop,
        }
    };
    let code = match &stop {
        Stop::Signal(sig) => {
            tracing::info!(signal = sig, "stopping");
            ExitCode::SUCCESS
        }
        Stop::SidecarExited(why) => {
            tracing::error!("{why}; stopping the gateway");
            ExitCode::from(1)
        }
    };
    for p in probers {
        p.abort();
    }
    // A second SIGTERM/SIGINT while stopping cuts the graces short: dropping the stop future
    // drops the sidecar handles, which SIGKILL their process groups.
    let mut code = code;
    tokio::select! {
        () = stop_all(&gateway, stop_serving, serve_task, ui, api) => {}
        _ = sigterm.recv() => code = forced("SIGTERM"),
        _ = sigint.recv() => code = forced("SIGINT"),
    }
    if let Some(p) = pidfile {
        p.remove();
    }
    tracing::info!("stopped");
    Ok(code)
}

/// Restarts within this window count towards a crash loop.
const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// This many restarts within [`CRASH_WINDOW`] is reported as a crash loop.
const CRASH_LOOP_RESTARTS: usize = 5;

/// Restart times of one sidecar, for backoff and crash-loop detection.
#[derive(Debug, Default)]
struct CrashLog {
    times: std::collections::VecDeque<std::time::Instant>,
}

impl CrashLog {
    /// Records a restart; returns the delay before it (0.5 s doubling per recent restart, at
    /// most 30 s, ±20 % jitter) and whether this is a crash loop.
    fn record(&mut self) -> (Duration, bool) {
        let now = std::time::Instant::now();
        while self
            .times
            .front()
            .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
        {
            self.times.pop_front();
        }
        self.times.push_back(now);
        let n = self.times.len();
        let base = Duration::from_millis(500)
            .saturating_mul(1u32 << (n - 1).min(6))
            .min(Duration::from_secs(30));
        // Jitter from the clock's sub-second noise: no RNG dependency needed for this.
        let noise = f64::from(now.elapsed().subsec_nanos() ^ std::process::id()) % 1000.0 / 1000.0;
        let delay = base.mul_f64(0.8 + 0.4 * noise);
        (delay, n >= CRASH_LOOP_RESTARTS)
    }

    fn recent(&self) -> usize {
        self.times.len()
    }
}

/// What the debug snapshot shows of the sidecars: name → {pid, port, state}.
type SidecarInfo =
    Arc<std::sync::Mutex<std::collections::BTreeMap<&'static str, serde_json::Value>>>;

/// Connects a sidecar to the gateway: its address, its readiness, its debug entry, its metrics.
struct Link {
    name: &'static str,
    endpoint: watch::Sender<Option<Endpoint>>,
    state: watch::Sender<ComponentState>,
    info: SidecarInfo,
}

impl Link {
    fn publish(&self, sidecar: &Sidecar, port: u16) {
        self.endpoint.send_replace(Some(Endpoint::loopback(port)));
        tokio::spawn(forward_state(sidecar.state(), self.state.clone()));
        metrics::gauge!(fluxlit_gateway::metric_names::SIDECAR_UP, "sidecar" => self.name).set(1.0);
        if let Ok(mut m) = self.info.lock() {
            m.insert(
                self.name,
                serde_json::json!({"pid": sidecar.pid(), "port": port, "state": "running"}),
            );
        }
    }

    fn exited(&self, exit: &fluxlit_sidecar::ExitInfo) {
        self.endpoint.send_replace(None);
        self.state
            .send_replace(ComponentState::NotReady(format!("exited ({exit})")));
        metrics::gauge!(fluxlit_gateway::metric_names::SIDECAR_UP, "sidecar" => self.name).set(0.0);
        tracing::error!(sidecar = self.name, exit = %exit, "sidecar exited");
        if let Ok(mut m) = self.info.lock() {
            m.insert(
                self.name,
                serde_json::json!({"state": format!("exited ({exit})")}),
            );
        }
    }
}

/// Installs the Prometheus recorder (histogram buckets set, upkeep on a timer) and returns the
/// renderer for the metrics endpoint.
fn install_metrics() -> Result<fluxlit_gateway::MetricsRender, RunError> {
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

fn forced(signal: &str) -> ExitCode {
    tracing::warn!(
        signal,
        "second signal while stopping: killing the sidecars now"
    );
    ExitCode::from(1)
}

async fn wait_exit(sidecar: &Option<(Sidecar, u16)>) -> fluxlit_sidecar::ExitInfo {
    match sidecar {
        Some((a, _)) => a.exited().await,
        None => std::future::pending().await,
    }
}

async fn shutdown_gateway(
    gateway: &Gateway,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
) {
    stop.cancel();
    let _ = task.await;
    gateway.drain_tunnels(Duration::ZERO).await;
}

async fn stop_all(
    gateway: &Gateway,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    ui: Option<(Sidecar, u16)>,
    api: Option<(Sidecar, u16)>,
) {
    // 1. Stop accepting; let in-flight HTTP finish.
    stop.cancel();
    let _ = task.await;
    // 2. Stop the sidecars (Streamlit closes its WebSockets as it goes).
    let ui_stop = async {
        if let Some((u, _)) = ui {
            u.stop().await;
        }
    };
    let api_stop = async {
        if let Some((a, _)) = api {
            a.stop().await;
        }
    };
    let _ = tokio::join!(ui_stop, api_stop);
    // 3. Cut whatever tunnels are left.
    let cut = gateway.drain_tunnels(TUNNEL_GRACE).await;
    if cut > 0 {
        tracing::info!(tunnels = cut, "closed remaining WebSocket tunnels");
    }
}

async fn forward_state(mut from: watch::Receiver<SidecarState>, to: watch::Sender<ComponentState>) {
    loop {
        let next = match &*from.borrow_and_update() {
            SidecarState::Starting { last_probe } => ComponentState::Starting(
                last_probe
                    .clone()
                    .unwrap_or_else(|| "waiting for the first probe".into()),
            ),
            SidecarState::Ready => ComponentState::Ready,
            SidecarState::Unhealthy(why) => ComponentState::NotReady(why.clone()),
            SidecarState::Exited(exit) => ComponentState::NotReady(format!("exited ({exit})")),
        };
        to.send_replace(next);
        if from.changed().await.is_err() {
            return;
        }
    }
}

async fn probe_external(
    host: String,
    port: u16,
    path: String,
    state: watch::Sender<ComponentState>,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let addr = match tokio::net::lookup_host((host.as_str(), port))
            .await
            .map(|mut a| a.next())
        {
            Ok(Some(a)) => a,
            Ok(None) | Err(_) => {
                state.send_replace(ComponentState::NotReady(format!(
                    "cannot resolve {host}:{port}"
                )));
                continue;
            }
        };
        let next = match HealthProbe::any_response(addr, &path).check().await {
            Ok(()) => ComponentState::Ready,
            Err(e) => ComponentState::NotReady(e.to_string()),
        };
        state.send_replace(next);
    }
}

/// `PATH` for the children: the Streamlit interpreter's directory first (so `python` and
/// `uvicorn` in `api_command` are the venv's), then the gateway's own `PATH`.
fn child_path(path: Option<&str>, first: Option<&Path>) -> String {
    let inherited = path.unwrap_or("/usr/local/bin:/usr/bin:/bin");
    match first {
        Some(dir) => format!("{}:{inherited}", dir.display()),
        None => inherited.to_owned(),
    }
}

/// Starts a sidecar on a fresh loopback port and waits until it is ready. When it exits during
/// start-up saying its port was taken (another process grabbed the port between FluxLit picking
/// it and the sidecar binding it), it is started again on another port, up to
/// [`PORT_RETRIES`] times.
async fn start_on_free_port(
    name: &'static str,
    start_timeout: Duration,
    spec_for: impl Fn(u16) -> Result<SidecarSpec, RunError>,
) -> Result<(Sidecar, u16), RunError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let port = fluxlit_sidecar::free_loopback_port()
            .map_err(|source| RunError::Port { name, source })?;
        let mut sidecar = Sidecar::spawn(spec_for(port)?)?;
        match sidecar.wait_ready(start_timeout).await {
            Ok(()) => return Ok((sidecar, port)),
            Err(StartError::Exited { last_lines, .. })
                if attempt < PORT_RETRIES
                    && fluxlit_sidecar::output_says_port_in_use(&last_lines) =>
            {
                tracing::warn!(
                    sidecar = name,
                    port,
                    attempt,
                    "the port was taken before the sidecar could bind it; retrying with another"
                );
            }
            Err(e) => {
                sidecar.stop().await;
                return Err(e.into());
            }
        }
    }
}

async fn start_streamlit(
    s: &Settings,
    cwd: &Path,
    env: &[(OsString, OsString)],
) -> Result<(Sidecar, u16), RunError> {
    let mount = s.public_mount();
    start_on_free_port("streamlit", s.sidecar_start_timeout_s, |port| {
        let mut spec = SidecarSpec::new("streamlit", &s.streamlit_python);
        let mut args: Vec<String> = vec![
            "-m".into(),
            "streamlit".into(),
            "run".into(),
            s.target.clone(),
            "--server.headless".into(),
            "true".into(),
            "--server.port".into(),
            port.to_string(),
            "--server.address".into(),
            "127.0.0.1".into(),
            "--browser.gatherUsageStats".into(),
            "false".into(),
        ];
        if !mount.is_empty() {
            args.push("--server.baseUrlPath".into());
            args.push(mount.to_owned());
        }
        args.extend(s.streamlit_run_cli_args.iter().cloned());
        spec.args = args.into_iter().map(OsString::from).collect();
        spec.env = env.to_vec();
        if !s.streamlit_page_config.is_empty() {
            spec.env.push((
                "FLUXLIT_STREAMLIT_PAGE_CONFIG".into(),
                serde_json::Value::Object(s.streamlit_page_config.clone())
                    .to_string()
                    .into(),
            ));
        }
        spec.cwd = Some(cwd.to_path_buf());
        spec.stop_grace = s.sidecar_stop_timeout_s;
        let mut probe = HealthProbe::status_200(
            SocketAddr::from(([127, 0, 0, 1], port)),
            &format!("{mount}/_stcore/health"),
        );
        // Quick probes while starting; once ready, every second, and a hung Streamlit (accepts
        // TCP, never answers) turns readiness 503 at the next probe.
        probe.interval = Duration::from_millis(200);
        probe.ready_interval = Duration::from_secs(1);
        probe.timeout = Duration::from_millis(800);
        spec.health = Some(probe);
        Ok(spec)
    })
    .await
}

async fn start_api(
    s: &Settings,
    loaded: &Loaded,
    command: &str,
    cwd: &Path,
    env: &[(OsString, OsString)],
) -> Result<(Sidecar, u16), RunError> {
    start_on_free_port("api", s.sidecar_start_timeout_s, |port| {
        let line = command.replace("{port}", &port.to_string());
        let (program, args) = split_command(&line).ok_or_else(|| RunError::ApiCommand {
            command: command.to_owned(),
            origin: loaded.origin("api_command").to_string(),
        })?;
        let mut spec = SidecarSpec::new("api", program);
        spec.args = args;
        spec.env = env.to_vec();
        spec.env.push(("PORT".into(), port.to_string().into()));
        spec.cwd = Some(cwd.to_path_buf());
        spec.stop_grace = s.sidecar_stop_timeout_s;
        // A TCP probe: uvicorn (and most servers) listen only once the app has started, and an
        // HTTP probe would add a line to the API's access log every interval.
        let mut probe = HealthProbe::connect(SocketAddr::from(([127, 0, 0, 1], port)));
        probe.interval = Duration::from_millis(100);
        probe.ready_interval = Duration::from_secs(1);
        spec.health = Some(probe);
        Ok(spec)
    })
    .await
}

/// Splits a command line. A plain command (words and quotes only) is executed directly, so
/// the process FluxLit supervises *is* the API server (signals and the parent-death signal reach
/// it). Anything using shell syntax (`;`, `&&`, `|`, `$VAR`, redirections, globs) runs under
/// `sh -c`; then a SIGKILLed gateway can only take `sh` with it, not what `sh` started, so a
/// warning says so.
fn split_command(line: &str) -> Option<(OsString, Vec<OsString>)> {
    if uses_shell_syntax(line) {
        tracing::warn!(
            "api_command uses shell syntax, so it runs under `sh -c`; if the gateway is killed with SIGKILL, \
             processes started by that shell may outlive it. Use a plain command (or `exec …`) to avoid this"
        );
        return Some(("sh".into(), vec!["-c".into(), line.into()]));
    }
    let words = shlex::split(line)?;
    let mut it = words.into_iter().map(OsString::from);
    let program = it.next()?;
    Some((program, it.collect()))
}

/// Whether `line` needs a shell: an operator, expansion, redirection, glob or comment outside
/// quotes (inside double quotes, `$` and backquotes still expand).
fn uses_shell_syntax(line: &str) -> bool {
    const OUTSIDE_QUOTES: &[char] = &[
        ';', '&', '|', '<', '>', '(', ')', '$', '`', '*', '?', '[', '\n', '~', '#',
    ];
    let mut chars = line.chars();
    let (mut single, mut double) = (false, false);
    while let Some(c) = chars.next() {
        match c {
            '\\' if !single => {
                chars.next();
            }
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '$' | '`' if double => return true,
            c if !single && !double && OUTSIDE_QUOTES.contains(&c) => return true,
            _ => {}
        }
    }
    false
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
    use super::*;

    #[test]
    fn shell_syntax_is_found_outside_quotes_only() {
        assert!(!uses_shell_syntax("python -c 'print(1); x'"));
        assert!(!uses_shell_syntax("python -m uvicorn api:app --port 9000"));
        assert!(uses_shell_syntax("a && b"));
        assert!(uses_shell_syntax("echo \"$HOME\""));
        assert!(uses_shell_syntax("uvicorn app:app > log"));
        assert!(!uses_shell_syntax("echo \\$HOME"));
    }

    #[test]
    fn plain_commands_are_executed_directly() {
        let (p, a) = split_command("python -m uvicorn api:app --port 9000").unwrap();
        assert_eq!(p, "python");
        assert_eq!(a.len(), 5);
        let (p, a) = split_command("python -c 'print(1)'").unwrap();
        assert_eq!(
            (p.as_os_str(), a[1].as_os_str()),
            ("python".as_ref(), "print(1)".as_ref())
        );
    }

    #[test]
    fn shell_syntax_goes_through_sh() {
        let (p, a) = split_command("cd api && uvicorn app:app").unwrap();
        assert_eq!(p, "sh");
        assert_eq!(
            a,
            vec![
                OsString::from("-c"),
                OsString::from("cd api && uvicorn app:app")
            ]
        );
        assert!(split_command("").is_none());
        assert!(split_command("unterminated 'quote").is_none());
    }

    #[test]
    fn child_path_puts_the_venv_first() {
        assert_eq!(
            child_path(Some("/usr/bin"), Some(Path::new("/v/bin"))),
            "/v/bin:/usr/bin"
        );
        assert_eq!(child_path(Some("/usr/bin"), None), "/usr/bin");
    }
}
