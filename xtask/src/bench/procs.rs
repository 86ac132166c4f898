//! Processes the bench starts (each in its own process group, killed with it) and what
//! `/proc` says about them.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::{Failed, Result, render};

/// A started process in its own process group. Dropping it stops the whole group: SIGTERM,
/// up to 3 s, then SIGKILL. Where util-linux `setpriv` exists the process also gets SIGKILL
/// when the xtask process dies (parent-death signal), so a killed bench leaves nothing behind.
pub(crate) struct Proc {
    pub(crate) name: String,
    pub(crate) child: Child,
    stopped: bool,
}

fn have_setpriv() -> bool {
    static HAVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAVE.get_or_init(|| {
        Command::new("setpriv")
            .arg("--help")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--pdeathsig"))
    })
}

/// `program args…`, wrapped in `setpriv --pdeathsig KILL --` where available.
pub(crate) fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if have_setpriv() {
        let mut c = Command::new("setpriv");
        c.args(["--pdeathsig", "KILL", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Proc {
    /// Starts `cmd` in a new process group with stdout and stderr appended to `log` (unless
    /// the caller already chose where they go) and stdin from /dev/null unless chosen.
    pub(crate) fn spawn(name: &str, mut cmd: Command, log: Option<&Path>) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        if let Some(log) = log {
            // Emptied, then opened for appending: whoever truncates the log meanwhile (the
            // soak keeps the access log bounded) leaves no hole behind the writer's offset.
            File::create(log)
                .map_err(|e| Failed(format!("cannot create {}: {e}", log.display())))?;
            let f = std::fs::OpenOptions::new()
                .append(true)
                .open(log)
                .map_err(|e| Failed(format!("cannot open {}: {e}", log.display())))?;
            let f2 = f
                .try_clone()
                .map_err(|e| Failed(format!("cannot reopen {}: {e}", log.display())))?;
            cmd.stdout(f).stderr(f2).stdin(Stdio::null());
        }
        eprintln!("xtask bench: start {name}: {}", render(&cmd));
        let child = cmd
            .spawn()
            .map_err(|e| Failed(format!("cannot start {name} ({}): {e}", render(&cmd))))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            stopped: false,
        })
    }

    /// The process group id (the leader's pid, see `process_group(0)`).
    pub(crate) fn pgid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(i32::MAX)
    }

    /// `Some(status)` when it has exited.
    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Fails when the process has exited.
    pub(crate) fn check_alive(&mut self) -> Result {
        match self.exited() {
            Some(status) => Err(Failed(format!(
                "{} exited unexpectedly ({status})",
                self.name
            ))),
            None => Ok(()),
        }
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub(crate) fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM to the group, up to 3 s, then SIGKILL to the group; reaps the leader.
    pub(crate) fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let pg = Pid::from_raw(self.pgid());
        if self.exited().is_none() {
            let _ = killpg(pg, Signal::SIGTERM);
            if self.wait_timeout(Duration::from_secs(3)).is_none() {
                eprintln!(
                    "xtask bench: {} ignored SIGTERM; killing its group",
                    self.name
                );
            }
        }
        // Whatever is left in the group (workers, grandchildren) goes too.
        let _ = killpg(pg, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What `/proc` says about a process group at one moment.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(crate) struct Snapshot {
    /// Sum of `VmRSS` over the group's processes, in KiB.
    pub(crate) rss_kib: u64,
    /// Open file descriptors (entries of `/proc/PID/fd`), summed over the group.
    pub(crate) fds: u64,
    /// Those of the descriptors that are sockets.
    pub(crate) sockets: u64,
    /// Threads (`Threads:` of `/proc/PID/status`), summed over the group.
    pub(crate) threads: u64,
    /// Processes in the group.
    pub(crate) procs: u64,
}

impl Snapshot {
    pub(crate) fn rss_mib(&self) -> f64 {
        kib_to_mib(self.rss_kib)
    }
}

#[allow(clippy::cast_precision_loss)]
pub(crate) fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The pids whose process group is `pgid`.
fn group_pids(pgid: i32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp …`; comm may contain spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let pgrp = rest
            .split_whitespace()
            .nth(2)
            .and_then(|s| s.parse::<i32>().ok());
        if pgrp == Some(pgid) {
            pids.push(pid);
        }
    }
    pids
}

fn status_field(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// RSS, descriptors, sockets and threads of every process in group `pgid`.
pub(crate) fn snapshot(pgid: i32) -> Snapshot {
    let mut s = Snapshot::default();
    for pid in group_pids(pgid) {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        s.procs += 1;
        s.rss_kib += status_field(&status, "VmRSS:");
        s.threads += status_field(&status, "Threads:");
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                s.fds += 1;
                if std::fs::read_link(fd.path())
                    .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                {
                    s.sockets += 1;
                }
            }
        }
    }
    s
}

/// Samples the RSS of group `pgid` every 100 ms on a thread until stopped; keeps the peak.
pub(crate) struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<u64>>,
}

impl RssSampler {
    pub(crate) fn start(pgid: i32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            // Bounded: at most one hour of samples even if nobody stops it.
            for _ in 0..36_000 {
                let rss = group_pids(pgid)
                    .into_iter()
                    .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
                    .map(|st| status_field(&st, "VmRSS:"))
                    .sum();
                peak = peak.max(rss);
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops sampling and returns the peak RSS seen, in KiB.
    pub(crate) fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().and_then(|h| h.join().ok()).unwrap_or(0)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Runs `cmd` to completion with a wall-clock bound, in its own process group (killed on
/// timeout). Returns stdout; stderr is passed through to ours.
pub(crate) fn output_bounded(name: &str, mut cmd: Command, timeout: Duration) -> Result<String> {
    use std::io::Read;
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .stdin(Stdio::null());
    let mut p = Proc::spawn(name, cmd, None)?;
    let mut stdout = p
        .child
        .stdout
        .take()
        .ok_or_else(|| Failed(format!("{name}: no stdout")))?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let status = p.wait_timeout(timeout);
    p.stop();
    let out = reader.join().unwrap_or_default();
    match status {
        None => Err(Failed(format!(
            "{name} did not finish within {} s and was killed",
            timeout.as_secs_f64()
        ))),
        Some(s) if !s.success() => Err(Failed(format!("{name} failed ({s}): {}", out.trim()))),
        Some(_) => Ok(out),
    }
}

/// CPU time used on this machine by processes that are not the bench's: everything except
/// this process, its children, the bench's process groups and kernel threads (process group
/// 0). Exited processes are counted through their parents' `cutime`/`cstime`.
#[derive(Debug, Clone)]
pub(crate) struct ForeignCpu {
    ours: Vec<i32>,
    me: u32,
}

/// Linux reports `/proc/PID/stat` times in USER_HZ ticks, which is always 100 per second.
const TICKS_PER_S: f64 = 100.0;

impl ForeignCpu {
    pub(crate) fn new(ours: Vec<i32>) -> Self {
        Self {
            ours,
            me: std::process::id(),
        }
    }

    /// utime + stime + cutime + cstime summed over the foreign processes, in ticks.
    pub(crate) fn ticks(&self) -> u64 {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return 0;
        };
        let mut total = 0;
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == self.me {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            // After the comm: state(0) ppid(1) pgrp(2) … utime(11) stime(12) cutime(13) cstime(14)
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
            let (ppid, pgrp) = (num(1), num(2));
            if pgrp == 0
                || ppid == i64::from(self.me)
                || self.ours.iter().any(|&g| i64::from(g) == pgrp)
            {
                continue;
            }
            let t = num(11) + num(12) + num(13) + num(14);
            total += u64::try_from(t).unwrap_or(0);
        }
        total
    }

    /// Foreign CPU between two `ticks()` readings `elapsed` apart, in percent of the whole
    /// machine (all cores).
    pub(crate) fn percent(before: u64, after: u64, elapsed: Duration) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        #[allow(clippy::cast_precision_loss)]
        let used = after.saturating_sub(before) as f64 / TICKS_PER_S;
        #[allow(clippy::cast_precision_loss)]
        let avail = elapsed.as_secs_f64() * cores as f64;
        100.0 * used / avail.max(1e-9)
    }
}

/// CPU time (utime + stime, children included) of every process in group `pgid`, in
/// microseconds.
pub(crate) fn group_cpu_us(pgid: i32) -> u64 {
    let mut ticks = 0u64;
    for pid in group_pids(pgid) {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        for i in 11..=14 {
            ticks += f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let per_tick_us = (1e6 / TICKS_PER_S) as u64;
    ticks * per_tick_us
}
