//! The FluxLit under test: `fluxlit run` on a copy of `examples/smoke`, with real Streamlit
//! and the real FastAPI app, trusting forwarded headers from loopback (the edges), in one of
//! two [`Mode`]s: the default configuration, or with the access log on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use super::client::Endpoint;
use super::procs::Proc;

/// The request body cap (UI and API) the smoke gives FluxLit: above the upload the smoke
/// makes, below [`super::checks::OVERSIZED_BODY`].
pub(crate) const BODY_CAP: usize = 64 * 1024;
/// How long FluxLit has to print its listening address.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long FluxLit has to become ready (Streamlit's first start is slow on 2 cores).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The gateway configuration a smoke run uses. Both write the access log, so that the
/// `gateway-log` check sees every request of an edge in FluxLit's log, whichever engine served
/// it; they differ in the engine plain HTTP/1.1 UI requests meet, so that every edge meets both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The default engines (plain HTTP/1.1 UI requests on the HTTP/1.1 fast path, which writes
    /// their access-log lines), access log on, and the body caps the 413 checks need.
    Default,
    /// `gateway_fast_path = false`: every request on the hyper engine; access log on.
    Hyper,
}

impl Mode {
    /// Both, in run order.
    pub(crate) const ALL: [Mode; 2] = [Mode::Default, Mode::Hyper];

    /// The name in the report and on the command line (`--mode NAME`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Hyper => "hyper",
        }
    }

    /// What the mode means, for the report.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::Default => {
                "default engines: UI requests on the HTTP/1.1 fast path; access log on"
            }
            Self::Hyper => {
                "gateway_fast_path = false: every request on the hyper engine; access log on"
            }
        }
    }

    /// Looks a mode up by its name.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Whether the HTTP/1.1 fast path is on in this mode (`gateway_fast_path`).
    pub(crate) fn fast_path(self) -> bool {
        self == Self::Default
    }
}

/// A running `fluxlit run`.
#[derive(Debug)]
pub(crate) struct Fluxlit {
    /// The process (its own group; Streamlit and the API are its children).
    pub(crate) proc: Proc,
    /// Where the gateway listens.
    pub(crate) addr: SocketAddr,
    /// Its log file (stdout and stderr).
    pub(crate) log: PathBuf,
}

/// Where to run FluxLit from.
#[derive(Debug)]
pub(crate) struct Setup<'a> {
    /// `target/release/fluxlit`.
    pub(crate) binary: &'a Path,
    /// The venv's Python with Streamlit, FastAPI and uvicorn.
    pub(crate) python: &'a Path,
    /// `examples/smoke`.
    pub(crate) app: &'a Path,
    /// A fresh working directory for this run (the app is copied there).
    pub(crate) dir: PathBuf,
    /// `--root-path`, empty for none.
    pub(crate) root_path: &'a str,
    /// The gateway configuration.
    pub(crate) mode: Mode,
}

/// The gateway's listening address in its log, once it is there.
fn listening_address(log: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|l| l.contains("gateway listening"))?;
    let rest = line.split("address=").nth(1)?;
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    addr.parse().ok()
}

impl Setup<'_> {
    /// Starts FluxLit and waits until `{root}/api/readyz` answers 200. On failure the process
    /// is stopped and the error carries the end of its log.
    pub(crate) async fn start(self) -> Result<Fluxlit, String> {
        let dir = &self.dir;
        std::fs::create_dir_all(dir.join("home"))
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        for file in ["app.py", "api.py", "fluxlit.toml"] {
            std::fs::copy(self.app.join(file), dir.join(file))
                .map_err(|e| format!("cannot copy {file} of {}: {e}", self.app.display()))?;
        }
        let mut args: Vec<String> = [
            "run",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-pidfile",
            "--proxy-headers",
        ]
        .map(str::to_owned)
        .to_vec();
        if !self.root_path.is_empty() {
            args.extend(["--root-path".to_owned(), self.root_path.to_owned()]);
        }
        let root = if self.root_path.is_empty() {
            "/"
        } else {
            self.root_path
        };
        let label = format!("fluxlit (root path {root}, {})", self.mode.name());
        let cap = BODY_CAP.to_string();
        let python = self.python;
        let mode = self.mode;
        let log = dir.join("fluxlit.log");
        let mut proc = Proc::spawn(&label, self.binary, &args, &log, |cmd| {
            // The user's own FLUXLIT_* settings must not change what is tested.
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().to_uppercase().starts_with("FLUXLIT_") {
                    cmd.env_remove(key);
                }
            }
            cmd.current_dir(dir)
                .env("FLUXLIT_STREAMLIT_PYTHON", python)
                .env("FLUXLIT_GATEWAY_MAX_PROXY_REQUEST_BODY_BYTES", &cap)
                .env("FLUXLIT_GATEWAY_MAX_API_REQUEST_BODY_BYTES", &cap)
                .env("FLUXLIT_GRACEFUL_SHUTDOWN_TIMEOUT_S", "5")
                .env("FLUXLIT_SIDECAR_STOP_TIMEOUT_S", "3")
                .env("HOME", dir.join("home"))
                .env("NO_COLOR", "1")
                .env("PYTHONDONTWRITEBYTECODE", "1");
            // Both modes log every request (the `gateway-log` check reads the lines).
            cmd.env("FLUXLIT_ENABLE_GATEWAY_ACCESS_LOG", "1").env(
                "FLUXLIT_GATEWAY_FAST_PATH",
                if mode.fast_path() { "true" } else { "false" },
            );
        })?;

        // The listening line, then readiness; both bounded, both watching for an early exit.
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        let addr = loop {
            if let Some(addr) = listening_address(&proc.log_text()) {
                break addr;
            }
            if let Some(status) = proc.exited() {
                return Err(format!(
                    "{label} exited ({status}) before listening\n{}",
                    proc.log_tail(30)
                ));
            }
            if Instant::now() >= deadline {
                let tail = proc.log_tail(30);
                proc.stop(Duration::from_secs(5)).await;
                return Err(format!(
                    "{label} printed no 'gateway listening address=' line within {LISTEN_TIMEOUT:?}\n{tail}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let endpoint = Endpoint {
            addr,
            tls_ca: None,
            tls_log: dir.join("unused.log"),
        };
        let readyz = format!("{}/api/readyz", self.root_path);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let last = match endpoint.get(&readyz).await {
                Ok(r) if r.status == 200 => break,
                Ok(r) => r.summary(),
                Err(e) => e,
            };
            if let Some(status) = proc.exited() {
                return Err(format!(
                    "{label} exited ({status}) before it was ready\n{}",
                    proc.log_tail(30)
                ));
            }
            if Instant::now() >= deadline {
                let tail = proc.log_tail(30);
                proc.stop(Duration::from_secs(10)).await;
                return Err(format!(
                    "{label}: {readyz} was not 200 within {READY_TIMEOUT:?} (last: {last})\n{tail}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        eprintln!("smoke: {label} is ready on {addr}");
        Ok(Fluxlit { proc, addr, log })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_by_name() {
        for mode in Mode::ALL {
            assert_eq!(Mode::parse(mode.name()), Some(mode));
        }
        assert_eq!(Mode::parse("fast"), None);
        assert!(Mode::Default.fast_path() && !Mode::Hyper.fast_path());
    }

    #[test]
    fn reads_the_listening_line() {
        let log =
            "x\n2026-01-01T00:00:00Z  INFO gateway listening address=127.0.0.1:40123 root=/myapp\n";
        assert_eq!(
            listening_address(log),
            Some("127.0.0.1:40123".parse().expect("address"))
        );
        assert_eq!(listening_address("nothing yet"), None);
    }
}
