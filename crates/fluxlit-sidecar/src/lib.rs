//! FluxLit's sidecar supervisor: the only crate that starts or signals processes.
//!
//! A [`Sidecar`] is a handle plus one task that owns the child. The child runs in its own
//! process group (so a terminal's Ctrl-C reaches only the gateway, which then stops it in
//! order). On Linux it also gets `PR_SET_PDEATHSIG` = SIGKILL, so that a gateway killed with
//! SIGKILL (or by any other signal it does not handle) does not leave it running. Other Unixes
//! (macOS, the BSDs) have no such signal: there the child is stopped on every exit path the
//! gateway controls — [`Sidecar::stop`], dropping the handle (which SIGKILLs the group, also
//! while a panic unwinds) — and a gateway killed outright leaves it running. Its stdout and
//! stderr go to the log line by line, tagged with its name.
//! An optional HTTP [`HealthProbe`] decides readiness; the state is published on a
//! `watch` channel ([`SidecarState`]).
//!
//! Stopping ([`Sidecar::stop`]) sends SIGINT to the group, waits the grace period, sends
//! SIGTERM, waits again, then SIGKILL; whatever is left of the group after the leader exits is
//! killed too.
//!
//! When a sidecar exits on its own, [`Backoff`] says how long to wait before starting it again
//! (exponential backoff with jitter) and whether it is crash-looping.
//!
//! ```no_run
//! use std::time::Duration;
//! use fluxlit_sidecar::{HealthProbe, Sidecar, SidecarSpec, free_loopback_port};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let port = free_loopback_port()?;
//! let mut spec = SidecarSpec::new("api", "python3");
//! spec.args = vec!["-m".into(), "http.server".into(), port.to_string().into(), "--bind".into(), "127.0.0.1".into()];
//! spec.health = Some(HealthProbe::any_response(([127, 0, 0, 1], port).into(), "/"));
//! let mut sidecar = Sidecar::spawn(spec)?;
//! sidecar.wait_ready(Duration::from_secs(10)).await?;
//! let exit = sidecar.stop().await;
//! println!("stopped: {exit}");
//! # Ok(()) }
//! ```

mod probe;
mod restart;

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub use probe::{Expect, HealthProbe, ProbeError};
pub use restart::{Backoff, Restart};

/// How many of a sidecar's last output lines are kept for error reports.
const TAIL_LINES: usize = 30;

/// Everything needed to start a sidecar.
#[derive(Debug, Clone)]
pub struct SidecarSpec {
    /// Name used in logs and errors (`streamlit`, `api`).
    pub name: String,
    /// Program to execute (looked up on `PATH` when it has no slash).
    pub program: OsString,
    /// Arguments.
    pub args: Vec<OsString>,
    /// Variables added to (or replacing in) the inherited environment.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory; the gateway's when `None`.
    pub cwd: Option<PathBuf>,
    /// Readiness probe; without one the sidecar is ready as soon as it has started.
    pub health: Option<HealthProbe>,
    /// Grace after SIGINT and again after SIGTERM before escalating. Default: 5 s.
    pub stop_grace: Duration,
}

impl SidecarSpec {
    /// A spec with no arguments, no extra environment, no probe and a 5 s stop grace.
    pub fn new(name: &str, program: impl Into<OsString>) -> Self {
        Self {
            name: name.to_owned(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            health: None,
            stop_grace: Duration::from_secs(5),
        }
    }
}

/// How a sidecar ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code, when it exited normally.
    pub code: Option<i32>,
    /// Terminating signal number, when a signal ended it.
    pub signal: Option<i32>,
    /// Whether FluxLit asked it to stop.
    pub requested: bool,
}

impl ExitInfo {
    fn from_status(status: ExitStatus, requested: bool) -> Self {
        use std::os::unix::process::ExitStatusExt;
        Self {
            code: status.code(),
            signal: status.signal(),
            requested,
        }
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}")?,
            (None, Some(s)) => {
                let name = Signal::try_from(s)
                    .map_or_else(|_| format!("signal {s}"), |sig| sig.as_str().to_owned());
                write!(f, "killed by {name}")?;
            }
            (None, None) => f.write_str("unknown exit status")?,
        }
        if self.requested {
            f.write_str(" (stop requested)")?;
        }
        Ok(())
    }
}

/// A sidecar's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SidecarState {
    /// Started, probe not yet successful.
    Starting {
        /// Why the last probe failed, once one has run.
        last_probe: Option<String>,
    },
    /// Running and the probe (if any) succeeded last time.
    Ready,
    /// Running, but the last probe failed (it was ready before, or is still starting).
    Unhealthy(String),
    /// The process exited.
    Exited(ExitInfo),
}

/// Starting a sidecar failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The program could not be executed.
    #[error("could not start the {name} sidecar ({program}): {source}")]
    Exec {
        /// Sidecar name.
        name: String,
        /// Program as given.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The sidecar did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// It exited during start-up.
    #[error("the {name} sidecar exited during start-up ({exit}){}", render_tail(.last_lines))]
    Exited {
        /// Sidecar name.
        name: String,
        /// How it ended.
        exit: ExitInfo,
        /// Its last output lines.
        last_lines: Vec<String>,
    },
    /// It did not pass its probe in time.
    #[error("the {name} sidecar was not ready after {} s (last probe: {last_probe}){}", .timeout.as_secs_f64(), render_tail(.last_lines))]
    Timeout {
        /// Sidecar name.
        name: String,
        /// The deadline.
        timeout: Duration,
        /// The last probe result.
        last_probe: String,
        /// Its last output lines.
        last_lines: Vec<String>,
    },
}

fn render_tail(lines: &[String]) -> String {
    if lines.is_empty() {
        "; it printed nothing".to_owned()
    } else {
        format!("; its last output lines:\n    {}", lines.join("\n    "))
    }
}

type Tail = Arc<Mutex<VecDeque<String>>>;

/// A running sidecar. Dropping the handle without [`Sidecar::stop`] kills the process (SIGKILL).
#[derive(Debug)]
pub struct Sidecar {
    name: String,
    pid: u32,
    state: watch::Receiver<SidecarState>,
    stop_tx: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<ExitInfo>>,
    tail: Tail,
}

impl Sidecar {
    /// Starts the sidecar and its supervising task (needs a tokio runtime).
    ///
    /// # Errors
    /// [`SpawnError::Exec`] when the program cannot be executed.
    pub fn spawn(spec: SidecarSpec) -> Result<Self, SpawnError> {
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(cwd) = &spec.cwd {
            cmd.current_dir(cwd);
        }
        stop_signals_by_default(&mut cmd);
        #[cfg(target_os = "linux")]
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|source| SpawnError::Exec {
            name: spec.name.clone(),
            program: spec.program.to_string_lossy().into_owned(),
            source,
        })?;
        let pid = child.id().unwrap_or_default();
        let tail: Tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let mut pumps = Vec::with_capacity(2);
        if let Some(out) = child.stdout.take() {
            pumps.push(tokio::spawn(pump(
                spec.name.clone(),
                "stdout",
                out,
                tail.clone(),
            )));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(tokio::spawn(pump(
                spec.name.clone(),
                "stderr",
                err,
                tail.clone(),
            )));
        }
        tracing::info!(sidecar = %spec.name, pid, program = %spec.program.to_string_lossy(), "sidecar started");
        let initial = if spec.health.is_some() {
            SidecarState::Starting { last_probe: None }
        } else {
            SidecarState::Ready
        };
        let (state_tx, state_rx) = watch::channel(initial);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(supervise(
            Supervised {
                name: spec.name.clone(),
                child,
                pid,
                health: spec.health,
                grace: spec.stop_grace,
                pumps,
            },
            state_tx,
            stop_rx,
        ));
        Ok(Self {
            name: spec.name,
            pid,
            state: state_rx,
            stop_tx: Some(stop_tx),
            task: Some(task),
            tail,
        })
    }

    /// The sidecar's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A receiver of the sidecar's state.
    pub fn state(&self) -> watch::Receiver<SidecarState> {
        self.state.clone()
    }

    /// The last lines the sidecar printed (at most 30).
    pub fn last_lines(&self) -> Vec<String> {
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Waits until the sidecar is [`SidecarState::Ready`].
    ///
    /// # Errors
    /// [`StartError::Exited`] if it exits first, [`StartError::Timeout`] after `timeout`; both
    /// carry its last output lines.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), StartError> {
        let mut rx = self.state.clone();
        let waited = tokio::time::timeout(
            timeout,
            rx.wait_for(|s| matches!(s, SidecarState::Ready | SidecarState::Exited(_))),
        )
        .await
        .map(|r| r.map(|state| state.clone()));
        let state = match waited {
            Ok(Ok(s)) => s,
            Ok(Err(_closed)) => self.state.borrow().clone(),
            Err(_elapsed) => {
                let last_probe = match &*self.state.borrow() {
                    SidecarState::Unhealthy(why)
                    | SidecarState::Starting {
                        last_probe: Some(why),
                    } => why.clone(),
                    _ => "no probe has completed yet".to_owned(),
                };
                return Err(StartError::Timeout {
                    name: self.name.clone(),
                    timeout,
                    last_probe,
                    last_lines: self.last_lines(),
                });
            }
        };
        match state {
            SidecarState::Exited(exit) => Err(StartError::Exited {
                name: self.name.clone(),
                exit,
                last_lines: self.last_lines(),
            }),
            _ => Ok(()),
        }
    }

    /// Waits for the sidecar to exit by itself (without asking it to stop).
    pub async fn exited(&self) -> ExitInfo {
        let mut rx = self.state.clone();
        let result = rx
            .wait_for(|s| matches!(s, SidecarState::Exited(_)))
            .await
            .map(|s| s.clone());
        match result {
            Ok(SidecarState::Exited(e)) => e,
            _ => ExitInfo {
                code: None,
                signal: None,
                requested: false,
            },
        }
    }

    /// Stops the sidecar: SIGINT to its group, grace, SIGTERM, grace, SIGKILL; then kills what
    /// is left of the group. Returns how it ended (also when it had already exited).
    pub async fn stop(mut self) -> ExitInfo {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        let unknown = ExitInfo {
            code: None,
            signal: None,
            requested: true,
        };
        // Await through a reference: if this future is dropped mid-way (a second Ctrl-C),
        // the handle still owns the task and Drop kills the group.
        let result = match self.task.as_mut() {
            Some(task) => task.await.ok(),
            None => None,
        };
        self.task = None;
        result.unwrap_or(unknown)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        // Only while the supervising task still runs: once it has finished, the group is gone
        // and its id may already belong to someone else.
        if let Some(task) = &self.task
            && !task.is_finished()
        {
            // The task owns the child with kill_on_drop; aborting it kills the leader, and the
            // group gets SIGKILL here.
            task.abort();
            signal_group(self.pid, Signal::SIGKILL);
        }
    }
}

/// Sends `sig` to the process group `pgid`; a group that is already gone is not an error.
fn signal_group(pgid: u32, sig: Signal) {
    let Ok(raw) = i32::try_from(pgid) else { return };
    if raw <= 1 {
        return;
    }
    let _ = killpg(Pid::from_raw(raw), sig);
}

/// Gives the child the default action for the signals [`Sidecar::stop`] sends (SIGINT,
/// SIGTERM) and SIGQUIT. A disposition of "ignore" survives `exec` (execve(2)), so a gateway
/// started with those signals ignored (a background job of a non-interactive shell ignores
/// SIGINT, and so does everything it starts) would otherwise start Streamlit deaf to SIGINT,
/// and every stop would wait the whole stop grace before SIGTERM. Handlers installed by the
/// gateway itself are reset by `exec` anyway.
#[allow(unsafe_code)]
fn stop_signals_by_default(cmd: &mut Command) {
    use nix::sys::signal::{SigHandler, signal};
    // SAFETY: the closure runs in the forked child before exec and only calls the
    // async-signal-safe `sigaction` (through `signal`), without allocating or locking.
    unsafe {
        cmd.pre_exec(|| {
            for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGQUIT] {
                signal(sig, SigHandler::SigDfl).map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
}

/// Makes the child receive SIGKILL when the gateway dies (Linux `PR_SET_PDEATHSIG`, see
/// prctl(2); Linux only, other Unixes have no equivalent for an unrelated program).
///
/// The signal fires when the *thread* that forked exits, not the process: tokio spawns from
/// its worker threads, which live as long as the runtime, and the runtime lives until the
/// gateway exits. If the parent died between `fork` and `prctl`, the child exits at once.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec and only calls the
    // async-signal-safe `prctl`, `getppid` and `_exit` (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            if nix::unistd::getppid() != parent {
                nix::libc::_exit(1);
            }
            Ok(())
        });
    }
}

async fn pump(name: String, stream: &'static str, io: impl AsyncRead + Unpin, tail: Tail) {
    let mut reader = BufReader::new(io);
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end();
                if line.is_empty() {
                    continue;
                }
                tracing::info!(target: "fluxlit::sidecar", sidecar = %name, stream, "[{name}] {line}");
                if let Ok(mut t) = tail.lock() {
                    if t.len() == TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line.to_owned());
                }
            }
        }
    }
}

/// What the supervising task owns.
struct Supervised {
    name: String,
    child: Child,
    pid: u32,
    health: Option<HealthProbe>,
    grace: Duration,
    pumps: Vec<JoinHandle<()>>,
}

async fn supervise(
    sup: Supervised,
    state: watch::Sender<SidecarState>,
    mut stop_rx: oneshot::Receiver<()>,
) -> ExitInfo {
    let Supervised {
        name,
        mut child,
        pid,
        health,
        grace,
        pumps,
    } = sup;
    let interval = health
        .as_ref()
        .map_or(Duration::from_secs(3600), |h| h.interval);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let exit = loop {
        tokio::select! {
            status = child.wait() => {
                let info = match status {
                    Ok(s) => ExitInfo::from_status(s, false),
                    Err(_) => ExitInfo { code: None, signal: None, requested: false },
                };
                tracing::warn!(sidecar = %name, pid, exit = %info, "sidecar exited unexpectedly");
                break info;
            }
            stop = &mut stop_rx => {
                if stop.is_err() {
                    // The handle was dropped without stop(): Drop kills the group.
                    continue;
                }
                break stop_child(&name, &mut child, pid, grace).await;
            }
            _ = ticker.tick(), if health.is_some() => {
                if let Some(h) = &health {
                    let next = match h.check().await {
                        Ok(()) => SidecarState::Ready,
                        Err(e) => match &*state.borrow() {
                            SidecarState::Starting { .. } => SidecarState::Starting { last_probe: Some(e.to_string()) },
                            _ => SidecarState::Unhealthy(e.to_string()),
                        },
                    };
                    if next == SidecarState::Ready && h.ready_interval != h.interval && ticker.period() != h.ready_interval {
                        ticker = tokio::time::interval_at(tokio::time::Instant::now() + h.ready_interval, h.ready_interval);
                        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    }
                    state.send_if_modified(|cur| {
                        if *cur != next {
                            if next == SidecarState::Ready {
                                tracing::info!(sidecar = %name, "sidecar is ready");
                            } else if let SidecarState::Unhealthy(why) = &next {
                                tracing::warn!(sidecar = %name, reason = %why, "sidecar failed its health probe");
                            }
                            *cur = next;
                            true
                        } else {
                            false
                        }
                    });
                }
            }
        }
    };
    // Whatever else is left in the group (grandchildren) goes too.
    signal_group(pid, Signal::SIGKILL);
    // Let the output pumps reach EOF so the last lines are in the tail before anyone reads
    // the exit; bounded, in case something outside the group still holds the pipes.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        for p in pumps {
            let _ = p.await;
        }
    })
    .await;
    state.send_replace(SidecarState::Exited(exit.clone()));
    exit
}

async fn stop_child(name: &str, child: &mut Child, pid: u32, grace: Duration) -> ExitInfo {
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGKILL] {
        tracing::info!(sidecar = %name, pid, signal = sig.as_str(), "stopping sidecar");
        signal_group(pid, sig);
        let wait = if sig == Signal::SIGKILL {
            Duration::from_secs(30)
        } else {
            grace
        };
        if let Ok(Ok(status)) = tokio::time::timeout(wait, child.wait()).await {
            let info = ExitInfo::from_status(status, true);
            tracing::info!(sidecar = %name, pid, exit = %info, "sidecar stopped");
            return info;
        }
    }
    ExitInfo {
        code: None,
        signal: None,
        requested: true,
    }
}

/// Picks a free TCP port on 127.0.0.1 by binding port 0 and releasing it.
///
/// Another process may take the port before the sidecar binds it; callers that start a
/// sidecar on it should retry with a new port when it exits during start-up saying the port
/// is in use (see [`output_says_port_in_use`]).
///
/// # Errors
/// The OS error from binding.
pub fn free_loopback_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}

/// Whether a sidecar's output says its port was taken (Streamlit: "Port N is already in use";
/// uvicorn: "address already in use").
pub fn output_says_port_in_use(lines: &[String]) -> bool {
    lines.iter().any(|l| {
        let l = l.to_ascii_lowercase();
        l.contains("already in use")
    })
}

/// The result of [`capture`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// How it ended.
    pub exit: ExitInfo,
    /// Its standard output (lossy UTF-8).
    pub stdout: String,
    /// Its standard error (lossy UTF-8).
    pub stderr: String,
}

/// Runs a short command to completion (for diagnostics such as `python -m streamlit version`),
/// killing it after `timeout`.
///
/// # Errors
/// The OS error when it cannot be executed, or `TimedOut` when it ran too long.
pub async fn capture(
    program: &std::ffi::OsStr,
    args: &[&str],
    timeout: Duration,
) -> std::io::Result<Captured> {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => {
            let out = out?;
            Ok(Captured {
                exit: ExitInfo::from_status(out.status, false),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("did not finish within {} s", timeout.as_secs_f64()),
        )),
    }
}
