//! [`App::run`]: serve, start the sidecars, supervise them, stop in order.

use std::future::Future;
use std::time::Duration;

use fluxlit_config::RestartPolicy;
use fluxlit_gateway::{ComponentState, Gateway};
use fluxlit_sidecar::{Backoff, ExitInfo, Sidecar};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::bridge::{Link, probe_external};
use crate::launch::{self, Launch};
use crate::memory;
use crate::pidfile::Pidfile;
use crate::{ApiMode, App, AppError, Exit};

/// Time tunnels get to end after the sidecars stopped. Streamlit sends its close frames (1012)
/// as it stops and its end of every tunnel is closed once it has exited, so this only waits for
/// clients that have not closed their end yet.
const TUNNEL_GRACE: Duration = Duration::from_secs(1);

/// How often [`Gateway::housekeeping`] runs: often enough that upstream connections parked idle
/// (unusable after 4 s, and closed by uvicorn after 5 s) give their descriptors back within
/// seconds of a burst instead of a minute (`cargo xtask bench --soak` checks that descriptors
/// return to their count before the load).
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(5);

/// How often each Streamlit worker's resident set size is sampled for
/// [`fluxlit_gateway::metric_names::WORKER_RSS`] (with metrics on).
const RSS_EVERY: Duration = Duration::from_secs(5);

/// A running sidecar and its loopback port.
type Running = Option<(Sidecar, u16)>;

/// Why the app is stopping.
enum Stop {
    Shutdown,
    SidecarExited(&'static str, ExitInfo),
}

/// The gateway's serving task and how to end it.
struct Serving {
    stop: CancellationToken,
    task: AbortOnDropHandle<std::io::Result<()>>,
}

impl App {
    /// Serves on `listener` until `shutdown` resolves or a sidecar exits with
    /// `sidecar_restart = exit`, then stops everything in order (see the crate documentation).
    /// `listener` is the public port, bound by the caller; the sidecars reach the gateway at
    /// its address (an unspecified host such as `0.0.0.0` becomes `127.0.0.1`).
    ///
    /// Dropping the returned future stops at once: sidecar process groups are killed, the
    /// gateway's tasks aborted, the pidfile removed.
    ///
    /// # Errors
    /// Start-up failures, after whatever was started has been stopped: [`AppError::Listener`],
    /// [`AppError::Bind`]
    /// (admin listener), [`AppError::Port`], [`AppError::Spawn`], [`AppError::Start`],
    /// [`AppError::ApiCommand`], [`AppError::Pidfile`]. Once FluxLit is ready, `run` returns
    /// only `Ok`.
    pub async fn run<F>(mut self, listener: TcpListener, shutdown: F) -> Result<Exit, AppError>
    where
        F: Future<Output = ()>,
    {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut rolling = self.rolling_restarts.take();
        let s = &self.settings;
        let bound = listener.local_addr().map_err(AppError::Listener)?;
        let base = fluxlit_gateway::loopback_base(bound);
        let internal_api_base = format!("{base}{}", s.api_mount_path);
        let mount = s.public_mount().to_owned();

        let mut background: Vec<AbortOnDropHandle<()>> = Vec::new();
        let mut probers: Vec<AbortOnDropHandle<()>> = self
            .externals
            .iter()
            .cloned()
            .map(|e| AbortOnDropHandle::new(tokio::spawn(probe_external(e))))
            .collect();
        if let Some((addr, render)) = &self.admin {
            let admin = TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::Bind {
                    addr: addr.clone(),
                    origin: self.origins.of("metrics_addr"),
                    source,
                })?;
            tracing::info!(address = %addr, path = %s.gateway_prometheus_metrics_path, "metrics on the admin listener");
            background.push(AbortOnDropHandle::new(tokio::spawn(crate::admin::serve(
                admin,
                s.gateway_prometheus_metrics_path.clone(),
                render.clone(),
            ))));
        }
        if s.debug {
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
        {
            let gw = self.gateway.clone();
            background.push(AbortOnDropHandle::new(tokio::spawn(async move {
                let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
                loop {
                    tick.tick().await;
                    gw.housekeeping();
                }
            })));
        }

        let serving = {
            let gw = self.gateway.clone();
            let stop = CancellationToken::new();
            let token = stop.clone();
            let task = AbortOnDropHandle::new(tokio::spawn(async move {
                gw.serve(listener, token.cancelled_owned()).await
            }));
            Serving { stop, task }
        };
        tracing::info!(address = %bound, root_path = %mount, api_mount = %s.api_mount_path, fast_path = s.gateway_fast_path, "gateway listening");
        // An empty list (loopback only) is said once, as the `forwarded_allow_ips_loopback_only`
        // warning `fluxlit run` logs at start-up (`fluxlit_config::findings`).
        if s.trust_proxy && !s.forwarded_allow_ips.is_empty() {
            tracing::info!(forwarded_allow_ips = ?s.forwarded_allow_ips, "trusting forwarded headers from these peers");
        }

        let launch = Launch {
            cwd: self.cwd.clone(),
            target: self.target.clone(),
            python: self.python.clone(),
            env: launch::common_env(
                &internal_api_base,
                &s.api_mount_path,
                &mount,
                self.child_path.clone(),
            ),
            api_command_origin: self.origins.of("api_command"),
            streamlit_env: self
                .cookie_secret
                .iter()
                .map(|secret| (launch::COOKIE_SECRET_ENV.into(), secret.into()))
                .collect(),
        };
        let workers = self.ui_links.len();

        // Start the sidecars (the API first); a failure or a shutdown stops what was started.
        let startup = async {
            let api = match &self.api {
                ApiMode::Command(cmd) => Some(launch::start_api_process(s, &launch, cmd).await?),
                ApiMode::NoSidecar => None,
            };
            let ui = if self.start_streamlit {
                launch::start_streamlit_workers(s, &launch, workers)
                    .await
                    .map(|all| all.into_iter().map(Some).collect())
            } else {
                Ok(vec![None])
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
            Ok::<_, AppError>((ui, api))
        };
        let started = tokio::select! {
            r = startup => Some(r),
            () = &mut shutdown => None,
        };
        let (ui, api) = match started {
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                shutdown_gateway(&self.gateway, serving).await;
                return Err(e);
            }
            None => {
                tracing::info!("shutdown requested during start-up; stopping");
                // Dropping the start-up future dropped any half-started sidecar handle, which
                // killed its group.
                shutdown_gateway(&self.gateway, serving).await;
                return Ok(Exit::Shutdown);
            }
        };
        // The Streamlit workers (`streamlit_workers`; one, named `streamlit`, by default), then
        // the API: `running[i]` is supervised through `links[i]`.
        let mut links: Vec<Link> = self
            .ui_links
            .iter()
            .enumerate()
            .map(|(i, c)| Link {
                name: launch::worker_name(i, workers),
                endpoint: c.endpoint.clone(),
                state: c.state.clone(),
                info: self.sidecar_info.clone(),
                follow: None,
            })
            .collect();
        links.push(Link {
            name: "api",
            endpoint: self.api_link.endpoint.clone(),
            state: self.api_link.state.clone(),
            info: self.sidecar_info.clone(),
            follow: None,
        });
        let api_at = links.len() - 1;
        let mut running: Vec<Running> = ui;
        running.push(api);
        for (link, r) in links.iter_mut().zip(&running) {
            if let Some((sidecar, port)) = r {
                link.publish(sidecar, *port);
            }
        }

        let pidfile = match &self.pidfile {
            Some(path) => match Pidfile::write(path) {
                Ok(p) => Some(p),
                Err(source) => {
                    let e = AppError::Pidfile {
                        path: path.clone(),
                        source,
                    };
                    stop_all(&self.gateway, serving, running, Vec::new()).await;
                    return Err(e);
                }
            },
            None => None,
        };
        tracing::info!(url = %format!("{base}{mount}/"), api = %format!("{base}{mount}{}", s.api_mount_path), "FluxLit is ready");

        let mut backoffs: Vec<Backoff> = links.iter().map(|_| Backoff::default()).collect();
        // Rolling restarts (`fluxlit reload`): the gateway's workers, each slot's worker id
        // there (ids are never reused), the settings the current workers were started with,
        // and the old workers being drained.
        let ui_pool = self.gateway.ui_workers().filter(|_| self.start_streamlit);
        let mut ids: Vec<usize> = (1..=api_at).collect();
        let mut ui_settings = s.clone();
        let drain_stop = CancellationToken::new();
        let mut draining: Vec<AbortOnDropHandle<()>> = Vec::new();
        // The per-worker RSS gauge (metrics on, Streamlit started by us); the first tick is at
        // once. Samples pause while a sidecar waits to be restarted.
        let mut rss_tick = tokio::time::interval(RSS_EVERY);
        rss_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let max_rss = s.streamlit_worker_max_rss_bytes;
        let sample_rss =
            (s.enable_gateway_prometheus_metrics || max_rss > 0) && self.start_streamlit;
        // The old worker of the last memory recycling while it drains.
        let mut recycled: Option<AbortOnDropHandle<()>> = None;
        let stop = loop {
            let (which, exit) = tokio::select! {
                () = &mut shutdown => break Stop::Shutdown,
                (which, exit) = wait_any_exit(&running) => (which, exit),
                _ = rss_tick.tick(), if sample_rss => {
                    let mut over = None;
                    for (i, r) in running[..api_at].iter().enumerate() {
                        if let Some(rss) = r.as_ref().and_then(|(sc, _)| memory::rss_bytes(sc.pid())) {
                            metrics::gauge!(fluxlit_gateway::metric_names::WORKER_RSS, "worker" => ids[i].to_string()).set(rss as f64);
                            if max_rss > 0 && rss > max_rss && over.is_none() {
                                over = Some((i, rss));
                            }
                        }
                    }
                    // Memory recycling, one worker at a time: not while the last one replaced
                    // still drains.
                    let (Some((i, rss)), Some(pool)) = (over, &ui_pool) else { continue };
                    if recycled.as_ref().is_some_and(|d| !d.is_finished()) {
                        continue;
                    }
                    tracing::warn!(sidecar = links[i].name, worker = ids[i], rss_bytes = rss, streamlit_worker_max_rss_bytes = max_rss, "Streamlit worker above streamlit_worker_max_rss_bytes; replacing it (its sessions stay until they end or streamlit_drain_timeout_s)");
                    let started = tokio::select! {
                        r = launch::start_streamlit(&ui_settings, &launch) => r,
                        () = &mut shutdown => break Stop::Shutdown,
                    };
                    match started {
                        Ok(new) => {
                            metrics::counter!(fluxlit_gateway::metric_names::WORKER_RECYCLES).increment(1);
                            recycled = replace_worker(pool, &mut links[i], &mut ids[i], &mut running[i], new, ui_settings.streamlit_drain_timeout_s, &drain_stop);
                            backoffs[i] = Backoff::default();
                        }
                        Err(e) => tracing::error!(sidecar = links[i].name, error = %e, "memory recycling: the replacement worker did not become ready; the worker keeps serving"),
                    }
                    continue;
                }
                next = next_reload(&mut rolling) => {
                    let Some(pool) = &ui_pool else {
                        tracing::warn!("reload asked for, but FluxLit starts no Streamlit here (ui_upstream); nothing to restart");
                        continue;
                    };
                    draining.retain(|d| !d.is_finished());
                    let next = streamlit_part(&ui_settings, next);
                    if usize::try_from(next.streamlit_workers.resolve()).ok() != Some(workers) {
                        tracing::warn!(running = workers, "streamlit_workers changed: a reload keeps the number of workers; restart FluxLit to change it");
                    }
                    tracing::info!(workers, "reload: starting a new generation of Streamlit workers (streamlit_run_cli_args, streamlit_page_config, sidecar_*_timeout_s and streamlit_drain_timeout_s are applied; other settings need a restart)");
                    let started = tokio::select! {
                        r = launch::start_streamlit_workers(&next, &launch, workers) => r,
                        () = &mut shutdown => break Stop::Shutdown,
                    };
                    let new = match started {
                        Ok(new) => new,
                        Err(e) => {
                            tracing::error!(error = %e, "reload failed: the new Streamlit workers did not become ready; the running workers keep serving");
                            continue;
                        }
                    };
                    for (i, (sidecar, port)) in new.into_iter().enumerate() {
                        let old = replace_worker(pool, &mut links[i], &mut ids[i], &mut running[i], (sidecar, port), next.streamlit_drain_timeout_s, &drain_stop);
                        draining.extend(old);
                        backoffs[i] = Backoff::default();
                    }
                    ui_settings = next;
                    continue;
                }
                () = reload_wanted(self.reload_api.as_deref()) => {
                    let ApiMode::Command(cmd) = &self.api else { continue };
                    let link = &mut links[api_at];
                    tracing::info!(sidecar = link.name, "sources changed; restarting the API");
                    link.reloading("reloading: the sources changed");
                    if let Some((old, _)) = running[api_at].take() {
                        old.stop().await;
                    }
                    let started = tokio::select! {
                        r = launch::start_api_process(s, &launch, cmd) => r,
                        () = &mut shutdown => break Stop::Shutdown,
                    };
                    match started {
                        Ok((sidecar, port)) => {
                            link.publish(&sidecar, port);
                            running[api_at] = Some((sidecar, port));
                            tracing::info!(sidecar = link.name, port, "API reloaded");
                        }
                        Err(e) => {
                            tracing::error!(sidecar = link.name, error = %e, "reload failed; the next change of the sources tries again");
                            link.reloading(&format!("reload failed: {e}"));
                        }
                    }
                    continue;
                }
            };
            let link = &mut links[which];
            link.exited(&exit);
            if sample_rss && which < api_at {
                metrics::gauge!(fluxlit_gateway::metric_names::WORKER_RSS, "worker" => ids[which].to_string()).set(0.0);
            }
            // With several Streamlit workers, a dead one is restarted whatever `sidecar_restart`
            // says: the others keep serving meanwhile, and readiness holds while
            // `streamlit_workers_min_ready` of them are ready.
            let pooled_worker = which < api_at && workers > 1;
            if s.sidecar_restart == RestartPolicy::Exit && !pooled_worker {
                break Stop::SidecarExited(link.name, exit);
            }
            // Restart with exponential backoff and jitter; readiness is 503 meanwhile.
            let restarted = loop {
                let restart = backoffs[which].record_now();
                let delay = restart.delay;
                let detail = if restart.crash_loop {
                    let window = backoffs[which].window.as_secs();
                    tracing::error!(
                        sidecar = link.name,
                        restarts_in_window = restart.recent,
                        window_s = window,
                        "sidecar is crash-looping"
                    );
                    format!(
                        "crash loop: {} restarts in {window} s; last exit: {exit}; restarting in {:.1} s",
                        restart.recent,
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
                    () = &mut shutdown => break None,
                }
                let start = async {
                    match (which, &self.api) {
                        (w, _) if w < api_at => {
                            launch::start_streamlit(&ui_settings, &launch).await
                        }
                        (_, ApiMode::Command(cmd)) => {
                            launch::start_api_process(s, &launch, cmd).await
                        }
                        (_, ApiMode::NoSidecar) => std::future::pending().await,
                    }
                };
                let started = tokio::select! {
                    r = start => r,
                    () = &mut shutdown => break None,
                };
                match started {
                    Ok(v) => break Some(v),
                    Err(e) => tracing::error!(sidecar = link.name, error = %e, "restart failed"),
                }
            };
            match restarted {
                Some((sidecar, port)) => {
                    metrics::counter!(fluxlit_gateway::metric_names::SIDECAR_RESTARTS, "sidecar" => link.name).increment(1);
                    if which < api_at {
                        metrics::counter!(fluxlit_gateway::metric_names::WORKER_RESTARTS, "worker" => ids[which].to_string()).increment(1);
                    }
                    link.publish(&sidecar, port);
                    running[which] = Some((sidecar, port));
                }
                None => break Stop::Shutdown,
            }
        };
        let exit = match stop {
            Stop::Shutdown => {
                tracing::info!("stopping");
                Exit::Shutdown
            }
            Stop::SidecarExited(sidecar, exit) => {
                let exit = Exit::SidecarExited { sidecar, exit };
                tracing::error!("{exit}; stopping the gateway");
                exit
            }
        };
        probers.clear();
        drain_stop.cancel();
        draining.extend(recycled);
        stop_all(&self.gateway, serving, running, draining).await;
        drop(pidfile);
        drop(background);
        tracing::info!("stopped");
        Ok(exit)
    }
}

/// The next settings for a rolling restart of the Streamlit workers
/// ([`crate::AppBuilder::rolling_restarts`]); never without a sender.
async fn next_reload(
    rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<fluxlit_config::Settings>>,
) -> fluxlit_config::Settings {
    match rx {
        Some(rx) => match rx.recv().await {
            Some(s) => s,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// The running settings with `next`'s Streamlit part: what a rolling restart applies (see
/// [`crate::AppBuilder::rolling_restarts`]).
fn streamlit_part(
    current: &fluxlit_config::Settings,
    next: fluxlit_config::Settings,
) -> fluxlit_config::Settings {
    let mut s = current.clone();
    s.streamlit_run_cli_args = next.streamlit_run_cli_args;
    if let Some(arg) = crate::forward_auth_streamlit_arg(&s) {
        s.streamlit_run_cli_args.push(arg);
    }
    s.streamlit_page_config = next.streamlit_page_config;
    s.sidecar_start_timeout_s = next.sidecar_start_timeout_s;
    s.sidecar_stop_timeout_s = next.sidecar_stop_timeout_s;
    s.streamlit_drain_timeout_s = next.streamlit_drain_timeout_s;
    s
}

/// Puts a new Streamlit worker (`new`, ready) in a slot's place: the gateway gets it as a new
/// worker (next id) and new sessions go to it, the slot's readiness and debug entry follow it,
/// and the slot's old worker (if it runs) drains ([`drain_worker`]); its task is returned.
fn replace_worker(
    pool: &fluxlit_gateway::UiWorkers,
    link: &mut Link,
    id: &mut usize,
    running: &mut Running,
    new: (Sidecar, u16),
    drain_timeout: Duration,
    drain_stop: &CancellationToken,
) -> Option<AbortOnDropHandle<()>> {
    let (sidecar, port) = new;
    let (endpoint, rx) =
        tokio::sync::watch::channel(Some(fluxlit_gateway::Endpoint::loopback(port)));
    let new_id = pool.add(fluxlit_gateway::UiWorker {
        upstream: fluxlit_gateway::Upstream::dynamic("streamlit", rx),
        state: link.state.subscribe(),
    });
    let old_id = std::mem::replace(id, new_id);
    let old_endpoint = std::mem::replace(&mut link.endpoint, endpoint);
    link.publish(&sidecar, port);
    pool.drain(old_id);
    tracing::info!(
        sidecar = link.name,
        worker = new_id,
        old_worker = old_id,
        port,
        "new Streamlit worker serving; the old one drains"
    );
    match running.replace((sidecar, port)) {
        Some((old, _)) => Some(AbortOnDropHandle::new(tokio::spawn(drain_worker(
            old,
            old_endpoint,
            old_id,
            pool.clone(),
            drain_timeout,
            drain_stop.clone(),
        )))),
        None => {
            old_endpoint.send_replace(None);
            None
        }
    }
}

/// How long an old worker still runs after its address was withdrawn at the end of its drain,
/// for HTTP requests that were placed on it just before to finish.
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(1);

/// How often a draining worker's open sessions are looked at.
const DRAIN_POLL: Duration = Duration::from_millis(200);

/// Drains an old Streamlit worker after a rolling restart: it keeps its sessions until the
/// last one ends, `timeout` passes or `stop_now` is cancelled (FluxLit stops); then its address
/// is withdrawn (its sessions' reconnects go to the new workers) and it is stopped as at
/// shutdown (Streamlit closes its WebSockets with 1012 and browsers reconnect). Not
/// supervised: a draining worker that exits is not restarted.
async fn drain_worker(
    sidecar: Sidecar,
    endpoint: tokio::sync::watch::Sender<Option<fluxlit_gateway::Endpoint>>,
    id: usize,
    pool: fluxlit_gateway::UiWorkers,
    timeout: Duration,
    stop_now: CancellationToken,
) {
    let sessions_ended = async {
        let mut tick = tokio::time::interval(DRAIN_POLL);
        loop {
            tick.tick().await;
            if pool.open_sessions(id).unwrap_or(0) == 0 {
                return;
            }
        }
    };
    let reason = tokio::select! {
        () = sessions_ended => "its sessions ended",
        () = tokio::time::sleep(timeout) => "streamlit_drain_timeout_s passed",
        () = stop_now.cancelled() => "FluxLit is stopping",
        exit = sidecar.exited() => {
            endpoint.send_replace(None);
            tracing::warn!(worker = id, exit = %exit, "a draining Streamlit worker exited");
            return;
        }
    };
    tracing::info!(
        worker = id,
        open_sessions = pool.open_sessions(id).unwrap_or(0),
        reason,
        "stopping an old Streamlit worker"
    );
    endpoint.send_replace(None);
    // Requests placed on it just before (a page load, a static file) get a moment to finish.
    if !stop_now.is_cancelled() {
        tokio::select! {
            () = tokio::time::sleep(IN_FLIGHT_GRACE) => {}
            () = stop_now.cancelled() => {}
        }
    }
    sidecar.stop().await;
    tracing::info!(worker = id, "old Streamlit worker stopped");
}

/// Resolves when a reload of the API is asked for ([`crate::AppBuilder::reload_api`]); never
/// without a notifier.
async fn reload_wanted(notify: Option<&tokio::sync::Notify>) {
    match notify {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

/// The first of `running` to exit: its index and exit (never when none runs).
async fn wait_any_exit(running: &[Running]) -> (usize, ExitInfo) {
    if running.iter().all(Option::is_none) {
        return std::future::pending().await;
    }
    let waits = running
        .iter()
        .enumerate()
        .map(|(i, r)| Box::pin(async move { (i, wait_exit(r).await) }));
    futures_util::future::select_all(waits).await.0
}

async fn wait_exit(sidecar: &Running) -> ExitInfo {
    match sidecar {
        Some((s, _)) => s.exited().await,
        None => std::future::pending().await,
    }
}

/// Stops a gateway whose sidecars never started: stop accepting, drain, cut the tunnels.
async fn shutdown_gateway(gateway: &Gateway, serving: Serving) {
    serving.stop.cancel();
    let _ = serving.task.await;
    gateway.drain_tunnels(Duration::ZERO).await;
}

/// The ordered stop: HTTP drain, then the sidecars (old Streamlit workers still draining
/// after a reload too: their tasks were told to stop them at once), then the remaining
/// tunnels.
async fn stop_all(
    gateway: &Gateway,
    serving: Serving,
    sidecars: Vec<Running>,
    draining: Vec<AbortOnDropHandle<()>>,
) {
    // 1. Readiness 503, stop accepting; let in-flight HTTP finish (up to
    //    `graceful_shutdown_timeout_s`). Open WebSocket tunnels do not hold this: a Streamlit
    //    session never ends by itself.
    serving.stop.cancel();
    let _ = serving.task.await;
    // 2. Stop the sidecars at once, together (Streamlit closes its WebSockets with 1012
    //    "service restart" as it goes, so browsers reconnect to another replica).
    let tunnels = gateway.active_tunnels();
    if tunnels > 0 {
        tracing::info!(
            websocket_tunnels = tunnels,
            "in-flight requests done; stopping the sidecars (Streamlit closes its sessions with 1012)"
        );
    }
    futures_util::future::join(
        futures_util::future::join_all(sidecars.into_iter().flatten().map(|(s, _)| s.stop())),
        futures_util::future::join_all(draining),
    )
    .await;
    // 3. Cut whatever tunnels are left.
    let cut = gateway.drain_tunnels(TUNNEL_GRACE).await;
    if cut > 0 {
        tracing::info!(tunnels = cut, "closed remaining WebSocket tunnels");
    }
}
