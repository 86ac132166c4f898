//! A process's resident memory, for the per-worker RSS gauge
//! ([`fluxlit_gateway::metric_names::WORKER_RSS`]).

/// The resident set size of process `pid`, in bytes: the `VmRSS` line of `/proc/{pid}/status`
/// (Linux, proc(5): "VmRSS: Resident set size", given in kB, which the kernel means as 1024
/// bytes). `None` on other systems, for a process that is gone, or a file without the line.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    vm_rss(&status)
}

/// `VmRSS` in bytes from the text of a `/proc/PID/status` file (`VmRSS:\t  1234 kB`).
fn vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib = line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tpython3\nVmPeak:\t  900 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(vm_rss(status), Some(12_345 * 1024));
        assert_eq!(
            vm_rss("Name:\tkthreadd\n"),
            None,
            "kernel threads have none"
        );
        assert_eq!(vm_rss("VmRSS:\tlots kB\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_a_resident_set() {
        let rss = rss_bytes(std::process::id());
        assert!(rss.is_some_and(|b| b > 1024 * 1024), "{rss:?}");
        assert_eq!(rss_bytes(u32::MAX), None, "no such process");
    }
}
