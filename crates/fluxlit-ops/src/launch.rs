//! Starting `fluxlit run` for the chaos tools: in its own process group, with a clean
//! environment, its log kept in memory, and everything it started killed when dropped.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::proc::{self, ProcId};

/// Lines of the gateway's log kept for failure reports.
const LOG_LINES: usize = 600;

/// A temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/fluxlit-ops-<tag>-<pid>-<n>`.
    ///
    /// # Errors
    /// When the directory cannot be created.
    pub fn new(tag: &str) -> Result<Self, String> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "fluxlit-ops-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).map_err(|e| format!("create {}: {e}", p.display()))?;
        Ok(Self(p))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies the app directory `src` into `dst` (recursively, at most 8 levels and 10 000 files;
/// `__pycache__`, `.venv`, `.git`, `node_modules` and pidfiles are skipped).
///
/// # Errors
/// I/O errors, naming the file.
pub fn copy_app(src: &Path, dst: &Path) -> Result<(), String> {
    fn walk(src: &Path, dst: &Path, depth: usize, files: &mut usize) -> Result<(), String> {
        if depth > 8 {
            return Ok(());
        }
        std::fs::create_dir_all(dst).map_err(|e| format!("create {}: {e}", dst.display()))?;
        let entries = std::fs::read_dir(src).map_err(|e| format!("read {}: {e}", src.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("read {}: {e}", src.display()))?;
            let name = entry.file_name();
            let n = name.to_string_lossy();
            if matches!(
                n.as_ref(),
                "__pycache__" | ".venv" | "venv" | ".git" | "node_modules"
            ) || n.ends_with(".pid")
            {
                continue;
            }
            let ty = entry
                .file_type()
                .map_err(|e| format!("stat {}: {e}", entry.path().display()))?;
            if ty.is_dir() {
                walk(&entry.path(), &dst.join(&name), depth + 1, files)?;
            } else if ty.is_file() {
                *files += 1;
                if *files > 10_000 {
                    return Err(format!("{} has more than 10 000 files", src.display()));
                }
                std::fs::copy(entry.path(), dst.join(&name))
                    .map_err(|e| format!("copy {}: {e}", entry.path().display()))?;
            }
        }
        Ok(())
    }
    if !src.is_dir() {
        return Err(format!("app directory {} does not exist", src.display()));
    }
    walk(src, dst, 0, &mut 0)
}

/// The Python interpreter with Streamlit: `explicit` when given, else the first
/// `.venv/bin/python` in `app_dir` or one of its ancestors, then in the working directory or
/// one of its ancestors.
///
/// # Errors
/// When none is found, with what to do.
pub fn find_python(explicit: Option<&Path>, app_dir: &Path) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if p.exists() {
            std::path::absolute(p).map_err(|e| format!("--python {}: {e}", p.display()))
        } else {
            Err(format!("--python {} does not exist", p.display()))
        };
    }
    let mut starts = Vec::new();
    if let Ok(a) = app_dir.canonicalize() {
        starts.push(a);
    }
    if let Ok(c) = std::env::current_dir() {
        starts.push(c);
    }
    for s in &starts {
        for dir in s.ancestors() {
            let p = dir.join(".venv/bin/python");
            if p.exists() {
                return Ok(p);
            }
        }
    }
    Err(format!(
        "no Python with Streamlit found: pass --python PATH or set FLUXLIT_STREAMLIT_PYTHON (`cargo xtask setup` creates <repo>/.venv); looked for .venv/bin/python above {}",
        app_dir.display()
    ))
}

/// How to start `fluxlit run`.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `fluxlit` binary.
    pub bin: PathBuf,
    /// Working directory (the app directory copy).
    pub dir: PathBuf,
    /// Arguments after `run`.
    pub args: Vec<String>,
    /// Extra environment (after the defaults, so these win).
    pub env: Vec<(String, String)>,
    /// `FLUXLIT_STREAMLIT_PYTHON`, when Streamlit is started.
    pub python: Option<PathBuf>,
    /// Echo the gateway's log to stderr as it comes.
    pub verbose: bool,
}

/// A running `fluxlit run`; dropping it kills the gateway's process group and every process
/// group of its descendants that was seen.
#[derive(Debug)]
pub struct Gateway {
    child: Child,
    me: ProcId,
    /// Where it listens.
    pub addr: SocketAddr,
    log: Arc<Mutex<VecDeque<String>>>,
    seen: Vec<ProcId>,
    status: Option<ExitStatus>,
    /// When the process was started.
    pub started: Instant,
}

impl Launch {
    /// Starts the gateway and waits (at most `listen_timeout`) for its `gateway listening` line.
    ///
    /// # Errors
    /// When it cannot be started, exits first, or does not listen in time (with its log).
    pub async fn start(&self, listen_timeout: Duration) -> Result<Gateway, String> {
        use std::os::unix::process::CommandExt;
        // Relative paths are taken from our working directory, not the gateway's.
        let bin = std::path::absolute(&self.bin)
            .map_err(|e| format!("fluxlit binary {}: {e}", self.bin.display()))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("run")
            .args(&self.args)
            .current_dir(&self.dir)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
            )
            .env("HOME", &self.dir)
            .env("LANG", "C.UTF-8")
            .env("FLUXLIT_LOG_FORMAT", "text")
            .env("FLUXLIT_SIDECAR_STOP_TIMEOUT_S", "3")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(p) = &self.python {
            cmd.env(
                "FLUXLIT_STREAMLIT_PYTHON",
                std::path::absolute(p).unwrap_or_else(|_| p.clone()),
            );
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let log = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_LINES)));
        let readers: [Option<Box<dyn std::io::Read + Send>>; 2] = [
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ];
        for stream in readers.into_iter().flatten() {
            let log = log.clone();
            let verbose = self.verbose;
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if verbose {
                        eprintln!("[fluxlit] {line}");
                    }
                    if let Ok(mut l) = log.lock() {
                        if l.len() == LOG_LINES {
                            l.pop_front();
                        }
                        l.push_back(line);
                    }
                }
            });
        }
        let me = proc::id(child.id()).unwrap_or(ProcId {
            pid: child.id(),
            start: 0,
            pgid: child.id(),
        });
        let mut gw = Gateway {
            child,
            me,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            seen: Vec::new(),
            status: None,
            started,
        };
        let deadline = Instant::now() + listen_timeout;
        loop {
            if let Some(addr) = gw.listening_addr() {
                gw.addr = addr;
                return Ok(gw);
            }
            if let Some(st) = gw.try_status() {
                return Err(format!(
                    "fluxlit exited ({st}) before listening; its log:\n{}",
                    gw.log_tail(30)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "fluxlit did not log `gateway listening` within {:.0} s; its log:\n{}",
                    listen_timeout.as_secs_f64(),
                    gw.log_tail(30)
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Gateway {
    fn listening_addr(&self) -> Option<SocketAddr> {
        let log = self.log.lock().ok()?;
        let line = log.iter().find(|l| l.contains("gateway listening"))?;
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            return v["address"].as_str()?.parse().ok();
        }
        line.split("address=")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// `http://ADDR`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The gateway's pid.
    pub fn pid(&self) -> u32 {
        self.me.pid
    }

    /// The last `n` lines of its log (and of its sidecars', which it relays).
    pub fn log_tail(&self, n: usize) -> String {
        self.log
            .lock()
            .map(|l| {
                let skip = l.len().saturating_sub(n);
                l.iter().skip(skip).cloned().collect::<Vec<_>>().join("\n")
            })
            .unwrap_or_default()
    }

    /// Whether a log line contains `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        self.log
            .lock()
            .map(|l| l.iter().any(|x| x.contains(needle)))
            .unwrap_or(false)
    }

    /// Records the gateway's current descendants, so that they can be checked (and killed)
    /// after the gateway is gone.
    pub fn remember_tree(&mut self) {
        if self.status.is_some() || !proc::alive(self.me) {
            return;
        }
        for p in proc::descendants(self.me.pid) {
            if !self.seen.contains(&p) {
                self.seen.push(p);
            }
        }
    }

    /// Every descendant recorded so far.
    pub fn seen(&self) -> &[ProcId] {
        &self.seen
    }

    /// The gateway's live child whose command line contains `needle`.
    pub fn child_matching(&self, needle: &str) -> Option<ProcId> {
        proc::children(self.me.pid)
            .into_iter()
            .find(|(_, c)| c.contains(needle))
            .map(|(p, _)| p)
    }

    /// Sends `sig` to the gateway process.
    ///
    /// # Errors
    /// When the signal cannot be sent (the process is gone).
    pub fn signal(&mut self, sig: Signal) -> Result<(), String> {
        self.remember_tree();
        let pid = i32::try_from(self.me.pid).map_err(|e| e.to_string())?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
            .map_err(|e| format!("cannot send {sig} to fluxlit ({pid}): {e}"))
    }

    /// Its exit status if it has exited (reaps it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for it to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Processes of its tree still alive: recorded descendants and members of its own and
    /// their process groups (pid and command line).
    pub fn survivors(&self) -> Vec<(u32, String)> {
        let mut out: Vec<(u32, String)> = Vec::new();
        let mut push = |pid: u32| {
            if !out.iter().any(|(p, _)| *p == pid) {
                out.push((pid, fluxlit_testkit::process::cmdline(pid)));
            }
        };
        if self.status.is_none() && proc::alive(self.me) {
            push(self.me.pid);
        }
        for p in &self.seen {
            if proc::alive(*p) {
                push(p.pid);
            }
        }
        let mut groups = vec![self.me.pgid];
        groups.extend(self.seen.iter().map(|p| p.pgid));
        groups.sort_unstable();
        groups.dedup();
        let own_group = proc::id(std::process::id()).map(|p| p.pgid);
        for g in groups {
            if Some(g) == own_group {
                continue;
            }
            for pid in proc::group_members(g) {
                push(pid);
            }
        }
        out
    }

    /// Waits up to `timeout` until no process of its tree is left; the survivors otherwise.
    pub async fn wait_no_survivors(&self, timeout: Duration) -> Result<(), Vec<(u32, String)>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = self.survivors();
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(left);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills everything it started (SIGKILL to its group and to its descendants' groups) and
    /// reaps it. Also done on drop.
    pub fn kill_all(&mut self) {
        self.remember_tree();
        if self.try_status().is_none() {
            proc::kill_group(self.me.pgid, Signal::SIGKILL);
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
        let own_group = proc::id(std::process::id()).map(|p| p.pgid);
        for p in &self.seen {
            if Some(p.pgid) != own_group {
                proc::kill_group(p.pgid, Signal::SIGKILL);
            }
            proc::kill(*p, Signal::SIGKILL);
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// `[(pid, cmdline)]` as `pid (cmdline), …` for failure details.
pub fn describe(procs: &[(u32, String)]) -> String {
    procs
        .iter()
        .map(|(p, c)| format!("{p} ({})", c.chars().take(120).collect::<String>()))
        .collect::<Vec<_>>()
        .join(", ")
}
