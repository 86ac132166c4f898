//! Stopping a running `fluxlit run` from outside, through its pidfile: what `fluxlit shutdown`
//! does (FluxLit for Python 0.13 reference §1.5: the same messages and exit codes); and
//! [`reload`], what `fluxlit reload` does (SIGHUP through the same pidfile).
//!
//! Steps: read the pidfile (`"<pid>\n"`, written by `fluxlit run` once the sidecars are ready);
//! note the process groups of the gateway's children (each sidecar leads a group of its own,
//! so uvicorn's and Streamlit's own children are in it); send SIGTERM; poll every 50 ms until
//! the gateway has exited **and** every process of those groups is gone, for at most `wait`;
//! with `force`, SIGKILL the gateway and those groups after that and poll for up to 2 s more.
//! A zombie (exited, not yet reaped) counts as gone.
//!
//! Processes are listed from `/proc` on Linux and with `ps -A -o pid=,ppid=,pgid=,stat=`
//! elsewhere.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// How long to wait and whether to force; `fluxlit shutdown --wait SECONDS [--force]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StopOptions {
    /// How long to wait after SIGTERM for the gateway and its sidecars to be gone (reference
    /// default 5 s).
    pub wait: Duration,
    /// After `wait`, SIGKILL the gateway and its sidecars' process groups.
    pub force: bool,
}

impl Default for StopOptions {
    fn default() -> Self {
        Self {
            wait: Duration::from_secs(5),
            force: false,
        }
    }
}

/// How long `force` polls after SIGKILL (reference §1.5: 2 s).
const FORCE_WAIT: Duration = Duration::from_secs(2);
/// How often the process table is polled (reference §1.5: 50 ms).
const POLL: Duration = Duration::from_millis(50);

/// What happened; [`fmt::Display`] is the reference's message, [`Outcome::exit_code`] its code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No file at the path (exit 2): `No pid file at {path}`.
    NoPidfile(PathBuf),
    /// The file could not be read or did not hold a positive process id; it was removed (exit
    /// 0): `Removed invalid pid file at {path}`.
    InvalidPidfile(PathBuf),
    /// The process is not running (or a zombie); the file was removed (exit 0).
    Stale(i32),
    /// The process exited between the check and SIGTERM (exit 0).
    ExitedBeforeSignal(i32),
    /// SIGTERM was refused (exit 1), e.g. `EPERM` for another user's process.
    CannotSignal(i32, String),
    /// The gateway and its sidecars are gone (exit 0).
    Stopped(i32),
    /// Gone after SIGKILL (`force`; exit 0).
    Killed(i32),
    /// The gateway still runs after `wait` (exit 1).
    StillRunning(i32, Duration),
    /// The gateway exited, but processes of its sidecars' groups still run after `wait` (exit
    /// 1). Their ids.
    SidecarsStillRunning(i32, Duration, Vec<i32>),
}

impl Outcome {
    /// The process exit code `fluxlit shutdown` ends with (reference §1.1 and §1.5).
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::NoPidfile(_) => 2,
            Outcome::InvalidPidfile(_)
            | Outcome::Stale(_)
            | Outcome::ExitedBeforeSignal(_)
            | Outcome::Stopped(_)
            | Outcome::Killed(_) => 0,
            Outcome::CannotSignal(..)
            | Outcome::StillRunning(..)
            | Outcome::SidecarsStillRunning(..) => 1,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::NoPidfile(p) => write!(f, "No pid file at {}", p.display()),
            Outcome::InvalidPidfile(p) => write!(f, "Removed invalid pid file at {}", p.display()),
            Outcome::Stale(pid) => write!(f, "Removed stale pid file (pid {pid} not running)"),
            Outcome::ExitedBeforeSignal(pid) => {
                write!(f, "Process {pid} exited before signal was delivered")
            }
            Outcome::CannotSignal(pid, e) => write!(f, "Cannot signal pid {pid}: {e}"),
            Outcome::Stopped(pid) => write!(f, "Stopped process {pid}"),
            Outcome::Killed(pid) => write!(f, "Killed process {pid}"),
            Outcome::StillRunning(pid, wait) => write!(
                f,
                "Process {pid} still running after {:.1}s (try --force)",
                wait.as_secs_f64()
            ),
            Outcome::SidecarsStillRunning(pid, wait, left) => write!(
                f,
                "Process {pid} exited, but its sidecar processes {left:?} still run after {:.1}s (try --force)",
                wait.as_secs_f64()
            ),
        }
    }
}

/// Stops the `fluxlit run` named by `pidfile` (see the module documentation). Never panics;
/// every failure is an [`Outcome`].
pub fn stop(pidfile: &Path, opts: StopOptions) -> Outcome {
    let text = match std::fs::read_to_string(pidfile) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Outcome::NoPidfile(pidfile.to_path_buf());
        }
        Err(_) => return invalid(pidfile),
    };
    let pid = match text.trim().parse::<i32>() {
        Ok(p) if p > 0 => p,
        _ => return invalid(pidfile),
    };
    if !alive(pid) {
        remove_if_names(pidfile, pid);
        return Outcome::Stale(pid);
    }
    let groups = sidecar_groups(pid);
    match kill(Pid::from_raw(pid), Signal::SIGTERM) {
        Ok(()) => {}
        Err(Errno::ESRCH) => {
            remove_if_names(pidfile, pid);
            return Outcome::ExitedBeforeSignal(pid);
        }
        Err(e) => return Outcome::CannotSignal(pid, e.desc().to_owned()),
    }
    let left = wait_gone(pid, &groups, opts.wait);
    if left.is_none() {
        remove_if_names(pidfile, pid);
        return Outcome::Stopped(pid);
    }
    if opts.force {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        for &g in &groups {
            let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
        }
        if wait_gone(pid, &groups, FORCE_WAIT).is_none() {
            remove_if_names(pidfile, pid);
            return Outcome::Killed(pid);
        }
        return Outcome::StillRunning(pid, opts.wait + FORCE_WAIT);
    }
    match left {
        Some(Left::Gateway) | None => Outcome::StillRunning(pid, opts.wait),
        Some(Left::Sidecars(pids)) => Outcome::SidecarsStillRunning(pid, opts.wait, pids),
    }
}

/// What `fluxlit reload` did; [`fmt::Display`] is its message, [`Reload::exit_code`] its code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// No file at the path (exit 2).
    NoPidfile(PathBuf),
    /// The file could not be read or did not hold a positive process id (exit 1); it is left
    /// as it is.
    InvalidPidfile(PathBuf),
    /// The process it names does not run (exit 1); the file is left as it is.
    NotRunning(i32, PathBuf),
    /// SIGHUP was refused (exit 1), e.g. `EPERM` for another user's process.
    CannotSignal(i32, String),
    /// SIGHUP was sent (exit 0): the rolling restart runs in the background (its progress is in
    /// `fluxlit run`'s log).
    Sent(i32),
}

impl Reload {
    /// The process exit code `fluxlit reload` ends with: 0 sent, 1 not sent, 2 no pidfile.
    pub fn exit_code(&self) -> u8 {
        match self {
            Reload::Sent(_) => 0,
            Reload::NoPidfile(_) => 2,
            Reload::InvalidPidfile(_) | Reload::NotRunning(..) | Reload::CannotSignal(..) => 1,
        }
    }
}

impl fmt::Display for Reload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reload::NoPidfile(p) => write!(
                f,
                "No pid file at {}: is `fluxlit run` running here? (--pidfile names another)",
                p.display()
            ),
            Reload::InvalidPidfile(p) => write!(
                f,
                "The pid file at {} does not hold a process id; nothing was reloaded",
                p.display()
            ),
            Reload::NotRunning(pid, p) => write!(
                f,
                "Process {pid} (from {}) is not running; nothing was reloaded",
                p.display()
            ),
            Reload::CannotSignal(pid, e) => write!(f, "Cannot signal pid {pid}: {e}"),
            Reload::Sent(pid) => write!(
                f,
                "Sent SIGHUP to process {pid}: new Streamlit workers start, the old ones drain (see its log)"
            ),
        }
    }
}

/// Asks the `fluxlit run` named by `pidfile` for a rolling restart of its Streamlit workers
/// (SIGHUP; docs/scaling.md). Returns once the signal is sent; never panics.
pub fn reload(pidfile: &Path) -> Reload {
    let text = match std::fs::read_to_string(pidfile) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Reload::NoPidfile(pidfile.to_path_buf());
        }
        Err(_) => return Reload::InvalidPidfile(pidfile.to_path_buf()),
    };
    let pid = match text.trim().parse::<i32>() {
        Ok(p) if p > 0 => p,
        _ => return Reload::InvalidPidfile(pidfile.to_path_buf()),
    };
    if !alive(pid) {
        return Reload::NotRunning(pid, pidfile.to_path_buf());
    }
    match kill(Pid::from_raw(pid), Signal::SIGHUP) {
        Ok(()) => Reload::Sent(pid),
        Err(Errno::ESRCH) => Reload::NotRunning(pid, pidfile.to_path_buf()),
        Err(e) => Reload::CannotSignal(pid, e.desc().to_owned()),
    }
}

fn invalid(pidfile: &Path) -> Outcome {
    let _ = std::fs::remove_file(pidfile);
    Outcome::InvalidPidfile(pidfile.to_path_buf())
}

/// Removes the pidfile unless it now names another process (a new `fluxlit run` took it).
fn remove_if_names(pidfile: &Path, pid: i32) {
    let ours = std::fs::read_to_string(pidfile)
        .map(|t| t.trim() == pid.to_string())
        .unwrap_or(false);
    if ours {
        let _ = std::fs::remove_file(pidfile);
    }
}

/// What still runs.
enum Left {
    Gateway,
    Sidecars(Vec<i32>),
}

/// Polls until `pid` and every process in `groups` are gone, for at most `within`.
fn wait_gone(pid: i32, groups: &[i32], within: Duration) -> Option<Left> {
    let deadline = Instant::now() + within;
    loop {
        let table = processes();
        let left = if is_running(&table, pid) {
            Some(Left::Gateway)
        } else {
            let members: Vec<i32> = table
                .iter()
                .filter(|p| !p.zombie && groups.contains(&p.pgid))
                .map(|p| p.pid)
                .collect();
            (!members.is_empty()).then_some(Left::Sidecars(members))
        };
        if left.is_none() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(POLL);
    }
}

/// `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    is_running(&processes(), pid)
}

/// `kill(pid, 0)` says the process exists (`EPERM`: it exists, not ours) and the table does
/// not show it as a zombie. A process missing from the table (a `/proc` mounted with
/// `hidepid`) is taken as running: the kernel's answer wins.
fn is_running(table: &[Process], pid: i32) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => table
            .iter()
            .find(|p| p.pid == pid)
            .is_none_or(|p| !p.zombie),
        Err(_) => false,
    }
}

/// The process groups of `pid`'s live children other than `pid`'s own group: its sidecars'.
fn sidecar_groups(pid: i32) -> Vec<i32> {
    let table = processes();
    let own = table.iter().find(|p| p.pid == pid).map(|p| p.pgid);
    let mut groups: Vec<i32> = table
        .iter()
        .filter(|p| p.ppid == pid && !p.zombie && Some(p.pgid) != own)
        .map(|p| p.pgid)
        .collect();
    groups.sort_unstable();
    groups.dedup();
    groups
}

/// One row of the process table.
#[derive(Debug, Clone, Copy)]
struct Process {
    pid: i32,
    ppid: i32,
    pgid: i32,
    zombie: bool,
}

/// The process table from `/proc/PID/stat` (proc(5): `pid (comm) state ppid pgrp …`; `comm`
/// may hold spaces and parentheses, so fields are read after the last `)`).
#[cfg(target_os = "linux")]
fn processes() -> Vec<Process> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            parse_stat(pid, &stat)
        })
        .collect()
}

#[cfg(target_os = "linux")]
fn parse_stat(pid: i32, stat: &str) -> Option<Process> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgid = f.next()?.parse().ok()?;
    Some(Process {
        pid,
        ppid,
        pgid,
        zombie: state.starts_with('Z'),
    })
}

/// The process table from POSIX `ps` (macOS and other Unixes have no `/proc` with `stat`).
#[cfg(not(target_os = "linux"))]
fn processes() -> Vec<Process> {
    let Ok(out) = std::process::Command::new("ps")
        .args(["-A", "-o", "pid=,ppid=,pgid=,stat="])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some(Process {
                pid: f.next()?.parse().ok()?,
                ppid: f.next()?.parse().ok()?,
                pgid: f.next()?.parse().ok()?,
                zombie: f.next()?.starts_with('Z'),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fluxlit-stop-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("app.pid")
    }

    #[test]
    fn messages_and_exit_codes_are_the_reference_ones() {
        let p = PathBuf::from("/x/.fluxlit.pid");
        let w = Duration::from_millis(300);
        let cases = [
            (
                Outcome::NoPidfile(p.clone()),
                "No pid file at /x/.fluxlit.pid",
                2,
            ),
            (
                Outcome::InvalidPidfile(p),
                "Removed invalid pid file at /x/.fluxlit.pid",
                0,
            ),
            (
                Outcome::Stale(7),
                "Removed stale pid file (pid 7 not running)",
                0,
            ),
            (
                Outcome::ExitedBeforeSignal(7),
                "Process 7 exited before signal was delivered",
                0,
            ),
            (
                Outcome::CannotSignal(7, "Operation not permitted".into()),
                "Cannot signal pid 7: Operation not permitted",
                1,
            ),
            (Outcome::Stopped(7), "Stopped process 7", 0),
            (Outcome::Killed(7), "Killed process 7", 0),
            (
                Outcome::StillRunning(7, w),
                "Process 7 still running after 0.3s (try --force)",
                1,
            ),
        ];
        for (o, text, code) in cases {
            assert_eq!(o.to_string(), text);
            assert_eq!(o.exit_code(), code, "{text}");
        }
    }

    #[test]
    fn reload_says_why_nothing_was_signalled_and_signals_a_running_process() {
        let path = scratch("reload");
        let _ = std::fs::remove_file(&path);
        let r = reload(&path);
        assert_eq!(r, Reload::NoPidfile(path.clone()));
        assert_eq!(r.exit_code(), 2);
        assert!(
            r.to_string().contains("is `fluxlit run` running here?"),
            "{r}"
        );
        for junk in ["", "abc\n", "-5\n", "0\n"] {
            std::fs::write(&path, junk).unwrap();
            assert_eq!(
                reload(&path),
                Reload::InvalidPidfile(path.clone()),
                "{junk:?}"
            );
            assert!(path.exists(), "a reload leaves the file as it is");
        }
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let pid = i32::try_from(gone.id()).unwrap();
        gone.wait().unwrap();
        std::fs::write(&path, format!("{pid}\n")).unwrap();
        let r = reload(&path);
        assert_eq!(r, Reload::NotRunning(pid, path.clone()));
        assert_eq!(r.exit_code(), 1);
        // A live process gets SIGHUP (sleep's default action for it: exit by that signal).
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        std::fs::write(&path, format!("{pid}\n")).unwrap();
        assert_eq!(reload(&path), Reload::Sent(pid));
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(1),
            "SIGHUP"
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn missing_invalid_and_stale_pidfiles() {
        let path = scratch("files");
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            stop(&path, StopOptions::default()),
            Outcome::NoPidfile(path.clone())
        );
        for junk in ["", "abc\n", "-5\n", "0\n", "99999999999\n"] {
            std::fs::write(&path, junk).unwrap();
            assert_eq!(
                stop(&path, StopOptions::default()),
                Outcome::InvalidPidfile(path.clone()),
                "{junk:?}"
            );
            assert!(!path.exists());
        }
        // A process that has exited and been reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        child.wait().unwrap();
        std::fs::write(&path, format!("{pid}\n")).unwrap();
        assert_eq!(stop(&path, StopOptions::default()), Outcome::Stale(pid));
        assert!(!path.exists());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn stat_lines_with_odd_command_names() {
        let p = parse_stat(42, "42 (a) b (c) S 1 42 42 0 -1").unwrap();
        assert_eq!((p.ppid, p.pgid, p.zombie), (1, 42, false));
        let z = parse_stat(43, "43 (x) Z 42 42 0").unwrap();
        assert!(z.zombie);
        assert!(parse_stat(44, "garbage").is_none());
    }
}
