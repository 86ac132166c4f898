//! The processes the smoke starts (FluxLit, the edges): each in its own process group, its
//! output in a log file, stopped with SIGTERM then SIGKILL to the whole group, and killed on
//! drop, so that an early return, an error or Ctrl-C leaves nothing running.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::time::Instant;

/// A running process in its own process group, killed with its group when dropped.
#[derive(Debug)]
pub(crate) struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    reaped: Option<ExitStatus>,
}

/// Whether util-linux's `setpriv --pdeathsig` is available (it is on Debian): children started
/// through it get SIGKILL when the xtask dies, even from SIGKILL.
fn setpriv() -> bool {
    static HAVE: OnceLock<bool> = OnceLock::new();
    *HAVE.get_or_init(|| {
        Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

impl Proc {
    /// Starts `program args` with `cmd_setup` applied (directory, environment), in a new
    /// process group, stdin closed, stdout and stderr appended to `log`.
    pub(crate) fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        cmd_setup: impl FnOnce(&mut Command),
    ) -> Result<Self, String> {
        use std::os::unix::process::CommandExt;
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        let mut cmd = if setpriv() {
            let mut c = Command::new("setpriv");
            c.args(["--pdeathsig", "KILL", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0);
        cmd_setup(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} ({}): {e}", program.display()))?;
        eprintln!(
            "smoke: started {name} (pid {}): {} {}  [log: {}]",
            child.id(),
            program.display(),
            args.join(" "),
            log.display()
        );
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_path_buf(),
            reaped: None,
        })
    }

    /// The exit status, if the process has ended.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            self.reaped = self.child.try_wait().ok().flatten();
        }
        self.reaped
    }

    /// The log file's text (stdout and stderr).
    pub(crate) fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the log, indented, for error reports.
    pub(crate) fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(n);
        let tail: Vec<String> = lines[start..]
            .iter()
            .map(|l| format!("    | {l}"))
            .collect();
        format!(
            "last lines of {} ({}):\n{}",
            self.name,
            self.log.display(),
            tail.join("\n")
        )
    }

    fn signal_group(&self, sig: Signal) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // ESRCH (group gone) is fine: that is what we want.
            let _ = killpg(Pid::from_raw(pid), sig);
        }
    }

    /// SIGTERM to the group, up to `grace` for the process to exit, then SIGKILL to the group.
    pub(crate) async fn stop(&mut self, grace: Duration) {
        if self.exited().is_none() {
            self.signal_group(Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while self.exited().is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // Whatever is left in the group (workers, grandchildren) goes too.
        self.signal_group(Signal::SIGKILL);
        if self.reaped.is_none() {
            self.reaped = self.child.wait().ok();
        }
        eprintln!(
            "smoke: stopped {} ({})",
            self.name,
            self.reaped
                .map_or_else(|| "status unknown".to_owned(), |s| s.to_string())
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            self.signal_group(Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}
