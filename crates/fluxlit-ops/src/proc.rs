//! Processes through `/proc` (Linux): identity that survives pid reuse, descendants, groups.

/// A process identified by pid and start time (clock ticks after boot), so that a reused pid
/// is not mistaken for the original process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcId {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks after boot (`/proc/PID/stat` field 22).
    pub start: u64,
    /// Process group id when first seen.
    pub pgid: u32,
}

/// What `/proc/PID/stat` says of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// State letter (`R`, `S`, `Z`, …).
    pub state: char,
    /// Parent pid.
    pub ppid: u32,
    /// Process group id.
    pub pgid: u32,
    /// Start time in clock ticks after boot.
    pub start: u64,
}

/// `/proc/PID/stat` of `pid`, or `None` when it does not exist.
pub fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime
    //  stime cutime cstime priority nice threads itrealvalue starttime ..." — comm may hold
    // spaces and parentheses, so fields are counted after the last ')'.
    let after = text.get(text.rfind(')')? + 2..)?;
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgid: f.get(2)?.parse().ok()?,
        // starttime is field 22 overall, the 20th after comm (index 19).
        start: f.get(19)?.parse().ok()?,
    })
}

/// The identity of a live process.
pub fn id(pid: u32) -> Option<ProcId> {
    let s = stat(pid)?;
    (s.state != 'Z' && s.state != 'X').then_some(ProcId {
        pid,
        start: s.start,
        pgid: s.pgid,
    })
}

/// Whether the process `p` still runs (same pid and start time, not a zombie).
pub fn alive(p: ProcId) -> bool {
    matches!(stat(p.pid), Some(s) if s.start == p.start && s.state != 'Z' && s.state != 'X')
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Live descendants of `root` (children, grandchildren, …), not `root` itself.
pub fn descendants(root: u32) -> Vec<ProcId> {
    let table: Vec<(u32, Stat)> = all_pids()
        .into_iter()
        .filter_map(|p| Some((p, stat(p)?)))
        .filter(|(_, s)| s.state != 'Z' && s.state != 'X')
        .collect();
    let mut out: Vec<ProcId> = Vec::new();
    let mut frontier = vec![root];
    // Bounded: a process tree cannot be deeper than the process table is long.
    for _ in 0..table.len().max(1) {
        let Some(parent) = frontier.pop() else { break };
        for (pid, s) in &table {
            if s.ppid == parent && !out.iter().any(|o| o.pid == *pid) {
                out.push(ProcId {
                    pid: *pid,
                    start: s.start,
                    pgid: s.pgid,
                });
                frontier.push(*pid);
            }
        }
    }
    out
}

/// Live direct children of `pid` with their command lines.
pub fn children(pid: u32) -> Vec<(ProcId, String)> {
    all_pids()
        .into_iter()
        .filter_map(|p| {
            let s = stat(p)?;
            (s.ppid == pid && s.state != 'Z').then_some((
                ProcId {
                    pid: p,
                    start: s.start,
                    pgid: s.pgid,
                },
                fluxlit_testkit::process::cmdline(p),
            ))
        })
        .collect()
}

/// Live members of process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    fluxlit_testkit::process::group_members(pgid)
}

/// Sends `sig` to the process group `pgid` (ignoring errors: it may be gone).
pub fn kill_group(pgid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(p) = i32::try_from(pgid)
        && p > 1
    {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(p), sig);
    }
}

/// Sends `sig` to `p` if it is still the same process.
pub fn kill(p: ProcId, sig: nix::sys::signal::Signal) {
    if alive(p)
        && let Ok(pid) = i32::try_from(p.pid)
        && pid > 1
    {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_itself_and_its_children() {
        let me = id(std::process::id()).expect("own stat");
        assert!(alive(me));
        assert!(
            !alive(ProcId {
                start: me.start + 1,
                ..me
            }),
            "start time distinguishes"
        );
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawn sleep");
        let d = descendants(me.pid);
        assert!(d.iter().any(|p| p.pid == child.id()), "{d:?}");
        let _ = child.kill();
        let _ = child.wait();
        assert!(!descendants(me.pid).iter().any(|p| p.pid == child.id()));
    }
}
