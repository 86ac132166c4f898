//! FluxLit's diagnostics: `fluxlit doctor` checks a project's configuration and runtime
//! prerequisites and reports one PASS/WARN/FAIL row per check.
//!
//! Rows, in order: `config` (loads without problems), one `config_warning` per loader warning,
//! `target` (the Streamlit script exists; for a FluxLit-for-Python app, `module:attr`, that the
//! interpreter has the package `fluxlit` and finds the module), `python` (the interpreter runs), `streamlit`
//! (`python -m streamlit version` works), `api` (how the API is provided), `gateway_bind` (the
//! public address can be bound now). The report is FAIL when any row is.
//!
//! ```no_run
//! # async fn run() {
//! use fluxlit_config::{CliOverrides, Environment, LoadOptions};
//! let opts = LoadOptions::new(std::path::Path::new("."), Environment::from_process(), CliOverrides::default());
//! let report = fluxlit_doctor::diagnose(&opts).await;
//! print!("{}", report.to_text());
//! # }
//! ```

pub mod live;

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use fluxlit_config::LoadOptions;
use serde::Serialize;

/// A row's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Fine.
    Pass,
    /// Works, but look at it.
    Warn,
    /// Will not work.
    Fail,
}

/// One check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable name.
    pub name: &'static str,
    /// Verdict.
    pub status: Status,
    /// What was found, and how to fix it when it is not PASS.
    pub detail: String,
}

/// All checks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The rows, in order.
    pub checks: Vec<Check>,
}

impl Report {
    fn push(&mut self, name: &'static str, status: Status, detail: impl Into<String>) {
        self.checks.push(Check {
            name,
            status,
            detail: detail.into(),
        });
    }

    /// Whether any row failed.
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    /// `pass`, `warn` or `fail` for the whole report.
    pub fn status(&self) -> &'static str {
        if self.failed() {
            "fail"
        } else if self.checks.iter().any(|c| c.status == Status::Warn) {
            "warn"
        } else {
            "pass"
        }
    }

    /// `{"status": "...", "checks": [{"name", "status", "detail"}]}`.
    pub fn to_json(&self) -> String {
        serde_json::json!({"status": self.status(), "checks": self.checks}).to_string()
    }

    /// `FluxLit doctor`, then one `STATUS  name: detail` line per row.
    pub fn to_text(&self) -> String {
        let mut s = String::from("FluxLit doctor\n\n");
        for c in &self.checks {
            let st = match c.status {
                Status::Pass => "PASS",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
            };
            s.push_str(&format!("{st:4}  {}: {}\n", c.name, c.detail));
        }
        s
    }
}

/// Runs every check. Never fails: problems are rows.
pub async fn diagnose(opts: &LoadOptions) -> Report {
    let mut r = Report::default();
    let loaded = match fluxlit_config::load(opts) {
        Ok(l) => l,
        Err(e) => {
            r.push("config", Status::Fail, e.to_string());
            return r;
        }
    };
    let s = &loaded.settings;
    r.push(
        "config",
        Status::Pass,
        match &loaded.project_file {
            Some(p) => format!("loaded; project file {}", p.display()),
            None => "loaded; no project file (defaults, environment and flags only)".to_owned(),
        },
    );
    for w in &loaded.warnings {
        r.push(
            "config_warning",
            Status::Warn,
            format!("{}: {}", w.code, w.message),
        );
    }

    let target = opts.cwd.join(&s.target);
    let python_app = fluxlit::pyapp::PythonTarget::parse(&s.target, &opts.cwd);
    if let Ok(Some(t)) = &python_app {
        let path = opts
            .env
            .get("PATH")
            .unwrap_or("/usr/local/bin:/usr/bin:/bin");
        match fluxlit::pyapp::probe(Path::new(&s.streamlit_python), &opts.cwd, path, t) {
            Ok(package) => r.push(
                "target",
                Status::Pass,
                format!(
                    "FluxLit-for-Python app {} (fluxlit {} for {}; its API is served with uvicorn, its pages by {})",
                    t.as_str(),
                    package.version,
                    s.streamlit_python,
                    package.entry.display()
                ),
            ),
            Err(problem) => r.push(
                "target",
                Status::Fail,
                format!("{:?} (target from {}) {problem}", t.as_str(), loaded.origin("target")),
            ),
        }
    } else if let Err(problem) = &python_app {
        r.push(
            "target",
            Status::Fail,
            format!(
                "{:?} (target from {}) {problem}",
                s.target,
                loaded.origin("target")
            ),
        );
    } else if target.is_file() {
        r.push("target", Status::Pass, target.display().to_string());
    } else {
        r.push(
            "target",
            Status::Fail,
            format!(
                "{} does not exist (target from {}); pass the script as `fluxlit run app.py`",
                target.display(),
                loaded.origin("target")
            ),
        );
    }

    let python = OsStr::new(&s.streamlit_python);
    let timeout = Duration::from_secs(30);
    match fluxlit_sidecar::capture(python, &["--version"], timeout).await {
        Ok(c) if c.exit.code == Some(0) => {
            r.push(
                "python",
                Status::Pass,
                format!(
                    "{} ({}; from {})",
                    s.streamlit_python,
                    (c.stdout.trim().to_owned() + c.stderr.trim()),
                    loaded.origin("streamlit_python")
                ),
            );
            match fluxlit_sidecar::capture(python, &["-m", "streamlit", "version"], timeout).await {
                Ok(c) if c.exit.code == Some(0) => r.push("streamlit", Status::Pass, c.stdout.trim().to_owned()),
                Ok(c) => r.push("streamlit", Status::Fail, format!("`{} -m streamlit version` failed ({}): {}; install it with `{} -m pip install streamlit`", s.streamlit_python, c.exit, c.stderr.trim(), s.streamlit_python)),
                Err(e) => r.push("streamlit", Status::Fail, format!("`{} -m streamlit version`: {e}", s.streamlit_python)),
            }
        }
        Ok(c) => r.push(
            "python",
            Status::Fail,
            format!("{} --version failed ({})", s.streamlit_python, c.exit),
        ),
        Err(e) => r.push(
            "python",
            Status::Fail,
            format!(
                "cannot run {} (from {}): {e}; create the venv or set FLUXLIT_STREAMLIT_PYTHON",
                s.streamlit_python,
                loaded.origin("streamlit_python")
            ),
        ),
    }

    match (&s.api_command, &s.api_upstream) {
        (Some(cmd), _) => r.push("api", Status::Pass, format!("FluxLit starts and supervises `{cmd}` (from {})", loaded.origin("api_command"))),
        (None, Some(url)) => r.push("api", Status::Pass, format!("proxied to {url} (from {})", loaded.origin("api_upstream"))),
        (None, None) if matches!(python_app, Ok(Some(_))) => r.push("api", Status::Pass, format!("FluxLit serves the FluxLit-for-Python app's FastAPI object (app.api) with uvicorn under {}", s.api_mount_path)),
        (None, None) => r.push("api", Status::Warn, format!("no API configured: {}/… answers 404 except healthz and readyz; set api_command or api_upstream", s.api_mount_path)),
    }

    let bind = format!("{}:{}", s.gateway_host, s.gateway_port);
    match std::net::TcpListener::bind(&bind) {
        Ok(_) => r.push("gateway_bind", Status::Pass, format!("{bind} is free")),
        Err(e) => r.push(
            "gateway_bind",
            Status::Warn,
            format!("{bind} cannot be bound now ({e}); is FluxLit already running?"),
        ),
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxlit_config::{CliOverrides, Environment};

    #[tokio::test]
    async fn reports_missing_target_and_python() {
        let dir = std::env::temp_dir().join(format!("fluxlit-doctor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let env = Environment::from_pairs([
            ("FLUXLIT_STREAMLIT_PYTHON", "/nonexistent/python"),
            ("FLUXLIT_GATEWAY_PORT", "0"),
        ]);
        let r = diagnose(&LoadOptions::new(&dir, env, CliOverrides::default())).await;
        let by = |n: &str| r.checks.iter().find(|c| c.name == n).unwrap().status;
        assert_eq!(by("config"), Status::Pass);
        assert_eq!(by("target"), Status::Fail);
        assert_eq!(by("python"), Status::Fail);
        assert_eq!(by("api"), Status::Warn);
        assert_eq!(by("gateway_bind"), Status::Pass);
        assert!(r.failed());
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&r.to_json()).unwrap()["status"],
            "fail"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn checks_a_fluxlit_for_python_target() {
        let dir = std::env::temp_dir().join(format!("fluxlit-doctor-py-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let row = |target: &'static str, python: &'static str| {
            let env = Environment::from_pairs([
                ("FLUXLIT_TARGET", target),
                ("FLUXLIT_STREAMLIT_PYTHON", python),
                ("FLUXLIT_GATEWAY_PORT", "0"),
            ]);
            let opts = LoadOptions::new(&dir, env, CliOverrides::default());
            async move {
                let r = diagnose(&opts).await;
                let by = |n: &str| r.checks.iter().find(|c| c.name == n).cloned().unwrap();
                (by("target"), by("api"))
            }
        };
        let (target, api) = row("app:app", "/nonexistent/python").await;
        assert_eq!(target.status, Status::Fail);
        assert!(
            target
                .detail
                .contains("cannot run the Python interpreter /nonexistent/python"),
            "{}",
            target.detail
        );
        assert_eq!(api.status, Status::Pass, "{}", api.detail);
        assert!(api.detail.contains("app.api"), "{}", api.detail);
        let (target, _) = row("app:", "python3").await;
        assert_eq!(target.status, Status::Fail);
        assert!(
            target.detail.contains("must look like 'module:attr'"),
            "{}",
            target.detail
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn config_errors_are_a_failed_row() {
        let env = Environment::from_pairs([("FLUXLIT_GATEWAY_PORT", "eighty")]);
        let r = diagnose(&LoadOptions::new(
            &std::env::temp_dir(),
            env,
            CliOverrides::default(),
        ))
        .await;
        assert_eq!(r.checks.len(), 1);
        assert!(r.checks[0].detail.contains("FLUXLIT_GATEWAY_PORT"));
    }
}
