//! FluxLit's diagnostics: `fluxlit doctor` checks a project's configuration and runtime
//! prerequisites and reports one PASS/WARN/FAIL row per check.
//!
//! Row names are FluxLit for Python's (reference §9.1), so CI pipelines that grep them keep
//! working; rows about Python imports have no counterpart, and the Python-environment rows
//! check what FluxLit runs instead (the interpreter, Streamlit, the API command's program, the
//! target script). In order:
//!
//! - `config` (the settings load), one `config_warning` per `fluxlit config` finding that no
//!   row below reports;
//! - what runs: `python_version`, `streamlit_version`, `target` (a script) or `import_target`
//!   (a FluxLit-for-Python app, `module:attr`), `api`, `gateway_bind` (FAIL when the address
//!   cannot be bound now);
//! - configuration, proxy and URL rows ([`config_rows`]): `FLUXLIT_INTERNAL_API_BASE`,
//!   `config.*`, `public_base_url*`, `oauth_public_base_url`, `proxy_headers`,
//!   `forwarded_allow_ips`, `gateway_max_proxy_body`, `readiness_route`, `l7_websocket`,
//!   `gateway_upstream_timeouts`, `gateway_forward_*`, `streamlit_upstream*`,
//!   `security_headers`;
//! - authentication: `jwt_keys` (auth_mode = jwt), `oidc_discovery` (auth_mode = oidc).
//!
//! With [`Options::strict`] the rows FluxLit for Python upgrades turn from WARN to FAIL
//! ([`STRICT_ROWS`]). The report is FAIL when any row is, unless [`Options::warnings_only`].
//! [`Options::verbose`] adds the effective configuration with each value's source, secrets
//! redacted ([`verbose`]).
//!
//! ```no_run
//! # async fn run() {
//! use fluxlit_config::{CliOverrides, Environment, LoadOptions};
//! let opts = LoadOptions::new(std::path::Path::new("."), Environment::from_process(), CliOverrides::default());
//! let report = fluxlit_doctor::diagnose(&opts).await;
//! print!("{}", report.to_text());
//! # }
//! ```

pub mod config_rows;
pub mod live;
mod runtime_rows;
pub mod verbose;

use fluxlit_config::LoadOptions;
use fluxlit_config::findings::{Finding, Level};
use serde::Serialize;

/// A row's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Fine.
    Pass,
    /// Works, but look at it.
    Warn,
    /// Will not work.
    Fail,
}

impl Status {
    /// `PASS`, `WARN` or `FAIL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable name (reference §9.1 where FluxLit for Python has the row).
    pub name: &'static str,
    /// Verdict.
    pub status: Status,
    /// What was found, and how to fix it when it is not PASS.
    pub detail: String,
    /// Where the row (or, for `config_warning`, its code) is documented with its fix:
    /// [`doc_link`], or [`fluxlit_config::findings::doc_link`] of the code.
    pub doc: String,
}

/// Where row `name` is documented: `docs/doctor.md#doctor-<name in lowercase>` (a unit test
/// checks that every row has that anchor).
pub fn doc_link(name: &str) -> String {
    format!(
        "{}#doctor-{}",
        fluxlit_config::findings::DOC_FILE,
        name.to_ascii_lowercase()
    )
}

/// The rows `--strict` upgrades from WARN to FAIL (reference §9.1). `public_base_url` is
/// upgraded only for a path that differs from the root path.
pub const STRICT_ROWS: &[&str] = &[
    "oauth_public_base_url",
    "proxy_headers",
    "forwarded_allow_ips",
    "gateway_max_proxy_body",
    "public_base_url",
    "gateway_upstream_timeouts",
    "gateway_forward_rejected_names",
    "security_headers",
    "public_base_url_precedence",
];

/// How to run the checks (`fluxlit doctor` flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// `--strict`: the WARN rows of [`STRICT_ROWS`] are FAIL.
    pub strict: bool,
    /// `--warnings-only`: FAIL rows do not make the report fail (exit 0, status `warn`).
    pub warnings_only: bool,
    /// `--verbose`: add the effective configuration, secrets redacted, with each value's
    /// source ([`Report::verbose`]).
    pub verbose: bool,
}

/// All checks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The target as resolved (`target` setting), empty when the configuration did not load.
    pub target: String,
    /// Whether FAIL rows are reported without failing ([`Options::warnings_only`]).
    pub warnings_only: bool,
    /// The rows, in order.
    pub checks: Vec<Check>,
    /// With [`Options::verbose`]: the effective configuration ([`verbose::snapshot`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verbose: Option<serde_json::Value>,
    #[serde(skip)]
    strict: bool,
}

impl Report {
    fn new(options: &Options) -> Self {
        Report {
            warnings_only: options.warnings_only,
            strict: options.strict,
            ..Report::default()
        }
    }

    /// Adds a row. Secrets in URLs (`user:password@`) never reach a detail.
    pub(crate) fn push(&mut self, name: &'static str, status: Status, detail: impl Into<String>) {
        self.checks.push(Check {
            name,
            status,
            detail: fluxlit_config::redact::redact_url_passwords(&detail.into()),
            doc: doc_link(name),
        });
    }

    pub(crate) fn pass(&mut self, name: &'static str, detail: impl Into<String>) {
        self.push(name, Status::Pass, detail);
    }

    pub(crate) fn warn(&mut self, name: &'static str, detail: impl Into<String>) {
        self.push(name, Status::Warn, detail);
    }

    pub(crate) fn fail(&mut self, name: &'static str, detail: impl Into<String>) {
        self.push(name, Status::Fail, detail);
    }

    /// A WARN row that `--strict` makes FAIL (one of [`STRICT_ROWS`]).
    pub(crate) fn warn_strict(&mut self, name: &'static str, detail: impl Into<String>) {
        debug_assert!(STRICT_ROWS.contains(&name), "{name} is not a strict row");
        if self.strict {
            let detail = detail.into() + " (FAIL because of --strict)";
            self.push(name, Status::Fail, detail);
        } else {
            self.push(name, Status::Warn, detail);
        }
    }

    /// A row from `fluxlit config` findings: FAIL for an error, WARN (or FAIL with `--strict`
    /// when `strict`) for a warning; the messages joined.
    pub(crate) fn findings_row(&mut self, name: &'static str, found: &[&Finding], strict: bool) {
        let detail = found
            .iter()
            .map(|f| f.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        if found.iter().any(|f| f.level == Level::Error) {
            self.fail(name, detail);
        } else if strict {
            self.warn_strict(name, detail);
        } else {
            self.warn(name, detail);
        }
    }

    /// Whether any row failed (regardless of [`Options::warnings_only`]).
    pub fn any_failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    /// Whether the report fails (`fluxlit doctor` exits 1): a row failed and
    /// [`Options::warnings_only`] is off.
    pub fn failed(&self) -> bool {
        self.any_failed() && !self.warnings_only
    }

    /// `fail` when the report fails; `warn` when a row is WARN, or FAIL under
    /// `--warnings-only`; else `pass` (reference §1.6.2).
    pub fn status(&self) -> &'static str {
        if self.failed() {
            "fail"
        } else if self.checks.iter().any(|c| c.status != Status::Pass) {
            "warn"
        } else {
            "pass"
        }
    }

    /// `{"status", "target", "warnings_only", "checks": [{"name", "status", "detail", "doc"}]}`, and
    /// `verbose` with [`Options::verbose`], on one line (reference §1.6.2).
    pub fn to_json(&self) -> String {
        let mut v = serde_json::json!({
            "status": self.status(),
            "target": self.target,
            "warnings_only": self.warnings_only,
            "checks": self.checks,
        });
        if let (Some(verbose), Some(obj)) = (&self.verbose, v.as_object_mut()) {
            obj.insert("verbose".into(), verbose.clone());
        }
        v.to_string()
    }

    /// `FluxLit doctor`, a blank line, then one `STATUS  name: detail` line per row, each
    /// WARN or FAIL row followed by `      docs: <link>`; then the verbose block, if any.
    pub fn to_text(&self) -> String {
        let mut s = String::from("FluxLit doctor\n\n");
        for c in &self.checks {
            s.push_str(&format!(
                "{:4}  {}: {}\n",
                c.status.as_str(),
                c.name,
                c.detail
            ));
            if c.status != Status::Pass {
                s.push_str(&format!("      docs: {}\n", c.doc));
            }
        }
        if let Some(v) = &self.verbose {
            s.push('\n');
            s.push_str(&verbose::to_text(v));
        }
        s
    }
}

/// Runs every check with default [`Options`]. Never fails: problems are rows.
pub async fn diagnose(opts: &LoadOptions) -> Report {
    diagnose_with(opts, &Options::default()).await
}

/// Runs every check. Never fails: problems are rows. Takes up to a few seconds: it runs the
/// Python interpreter twice (`--version`, `-m streamlit version`, 30 s timeout each) and opens
/// TCP connections to configured upstreams (250 ms timeout each).
pub async fn diagnose_with(opts: &LoadOptions, options: &Options) -> Report {
    let mut r = Report::new(options);
    let loaded = match fluxlit_config::load(opts) {
        Ok(l) => l,
        Err(e) => {
            r.fail("config", e.to_string());
            if options.verbose {
                r.verbose =
                    Some(serde_json::json!({"resolved_target": null, "config_failed": true}));
            }
            return r;
        }
    };
    r.target = loaded.settings.target.clone();
    if options.verbose {
        r.verbose = Some(verbose::snapshot(opts, &loaded));
    }
    r.pass(
        "config",
        match &loaded.project_file {
            Some(p) => format!("loaded; project file {}", p.display()),
            None => "loaded; no project file (defaults, environment and flags only)".to_owned(),
        },
    );
    let found = fluxlit_config::findings::findings(&loaded, &opts.env);
    for f in found
        .iter()
        .filter(|f| config_rows::row_of(f.code).is_none())
    {
        let detail = format!("{}: {}", f.code, f.message);
        match f.level {
            Level::Error => r.fail("config_warning", detail),
            Level::Warn => r.warn("config_warning", detail),
        }
        if let Some(row) = r.checks.last_mut() {
            row.doc.clone_from(&f.doc);
        }
    }
    runtime_rows::check(&mut r, opts, &loaded).await;
    config_rows::check(&mut r, opts, &loaded, &found).await;
    runtime_rows::jwt_keys(&mut r, &loaded).await;
    runtime_rows::oidc_discovery(&mut r, &loaded).await;
    r
}

#[cfg(test)]
mod tests;
