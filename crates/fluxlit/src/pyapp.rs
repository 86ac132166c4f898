//! FluxLit-for-Python apps, run unchanged: a `target` of the form `module:attr` or
//! `./file.py:attr` names a `FluxLit` object of the Python package `fluxlit` (0.13), as
//! `fluxlit run app:app` did under FluxLit for Python (its reference, §6.11).
//!
//! For such a target FluxLit starts two sidecars with the configured interpreter, both in the
//! project directory and both with `FLUXLIT_APP` set to the target:
//!
//! - the API: `python -c` [`API_BOOTSTRAP`], which loads the object with the package's own
//!   `fluxlit.runtime.load_fluxlit` and serves its FastAPI application (`app.api`) with
//!   uvicorn on a loopback port. The gateway strips `{root_path}{api_mount_path}` before
//!   forwarding; uvicorn's `root_path` puts it back into the ASGI scope, so routes match as
//!   before and FastAPI's `/docs` and `url_for` produce public URLs.
//! - Streamlit: `python -m streamlit run <site-packages>/fluxlit/streamlit/main.py`, the
//!   package's own page entry script, with `FLUXLIT_INTERNAL_API_BASE` pointing at the
//!   gateway's loopback API mount, so pages, `ApiClient` calls, `st.navigation` and `?page=`
//!   deep links behave as under FluxLit for Python.
//!
//! Before anything starts, [`probe`] asks the interpreter where the package is (without
//! importing it, about 0.1 s), so a missing package is an error naming the `pip` command that
//! installs it.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The requirement FluxLit runs apps of: FluxLit for Python 0.13.
pub const PACKAGE_REQUIREMENT: &str = "fluxlit>=0.13,<0.14";

/// How long [`probe`] waits for the interpreter.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// A `target` naming a FluxLit-for-Python app object (reference §6.11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonTarget {
    target: String,
    module: String,
    attr: String,
    file: Option<PathBuf>,
}

impl PythonTarget {
    /// Reads `target` as an app target, relative to the project directory `cwd`.
    ///
    /// `Ok(None)`: a Streamlit script (no `:`, or an existing file whose name contains one).
    /// `Ok(Some)`: `module:attr` (a dotted module name, found in `cwd` or on the
    /// interpreter's `sys.path`) or a file form `./app.py:app`, `sub/app.py:app`,
    /// `/abs/app.py:app` (the module part ends with `.py` or contains `/`).
    ///
    /// # Errors
    /// Why the target is neither: an empty module or attribute, an attribute or module name
    /// that is not a Python identifier, or a file form naming a file that does not exist.
    pub fn parse(target: &str, cwd: &Path) -> Result<Option<Self>, String> {
        let Some((module, attr)) = target.split_once(':') else {
            return Ok(None);
        };
        if cwd.join(target).is_file() {
            return Ok(None);
        }
        if module.is_empty() || attr.is_empty() {
            return Err(
                "must look like 'module:attr' (e.g. app:app or ./app.py:app) or name a Streamlit script"
                    .into(),
            );
        }
        if !is_identifier(attr) {
            return Err(format!(
                "names the attribute {attr:?}, which is not a Python identifier; expected 'module:attr' such as app:app"
            ));
        }
        let file_form = module.ends_with(".py") || module.contains('/');
        let file = if file_form {
            let path = cwd.join(module);
            if !path.is_file() {
                return Err(format!(
                    "names the file {}, which does not exist",
                    path.display()
                ));
            }
            Some(path)
        } else {
            if !module.split('.').all(is_identifier) {
                return Err(format!(
                    "names the module {module:?}, which is not a Python module name; use a file form such as ./{module}.py:{attr}"
                ));
            }
            None
        };
        Ok(Some(Self {
            target: target.to_owned(),
            module: module.to_owned(),
            attr: attr.to_owned(),
            file,
        }))
    }

    /// The target as configured (what `FLUXLIT_APP` is set to).
    pub fn as_str(&self) -> &str {
        &self.target
    }

    /// The module part: a dotted module name or a file path.
    pub fn module(&self) -> &str {
        &self.module
    }

    /// The attribute holding the `FluxLit` object.
    pub fn attr(&self) -> &str {
        &self.attr
    }

    /// For the file form, the file resolved against the project directory.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The top-level module to look for before starting (`None` for the file form).
    fn top_module(&self) -> Option<&str> {
        match self.file {
            Some(_) => None,
            None => self.module.split('.').next(),
        }
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*` (ASCII identifiers; enough for module and attribute names).
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The installed Python package, as [`probe`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// `fluxlit`'s version (from its distribution metadata).
    pub version: String,
    /// Its Streamlit page entry script, `<package>/streamlit/main.py`.
    pub entry: PathBuf,
}

/// What the probe runs: where `fluxlit` is and its version, and whether the target's module
/// can be found, without executing either.
const PROBE: &str = r#"
import importlib.metadata, importlib.util, json, os, sys
out = {"python": sys.executable}
spec = importlib.util.find_spec("fluxlit")
if spec is not None and spec.submodule_search_locations:
    out["dir"] = list(spec.submodule_search_locations)[0]
    try:
        out["version"] = importlib.metadata.version("fluxlit")
    except importlib.metadata.PackageNotFoundError:
        out["version"] = "unknown"
if len(sys.argv) > 1:
    out["module"] = os.path.isfile(sys.argv[1] + ".py") or importlib.util.find_spec(sys.argv[1]) is not None
print(json.dumps(out))
"#;

/// Asks `python` (run in `cwd` with `PATH` = `path`) where the Python package `fluxlit` is and
/// whether `target`'s module can be found. Blocks up to [`PROBE_TIMEOUT`] (it takes about
/// 0.1 s: nothing is imported).
///
/// # Errors
/// A sentence saying what is missing and how to fix it: the interpreter cannot be run, the
/// package is not installed (with the `pip install` command), it has no page entry script (not
/// a 0.13 release), or the module cannot be found.
pub fn probe(
    python: &Path,
    cwd: &Path,
    path: &str,
    target: &PythonTarget,
) -> Result<Package, String> {
    let mut cmd = Command::new(python);
    cmd.arg("-c").arg(PROBE);
    if let Some(m) = target.top_module() {
        cmd.arg(m);
    }
    cmd.current_dir(cwd)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let cannot_run = |e: &dyn std::fmt::Display| {
        format!(
            "cannot run the Python interpreter {} in {}: {e}; create the venv or set FLUXLIT_STREAMLIT_PYTHON (or --streamlit-python)",
            python.display(),
            cwd.display()
        )
    };
    let mut child = cmd.spawn().map_err(|e| cannot_run(&e))?;
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(cannot_run(&format_args!(
                    "it did not answer within {} s",
                    PROBE_TIMEOUT.as_secs()
                )));
            }
            Err(e) => return Err(cannot_run(&e)),
        }
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut stdout);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    if !status.success() {
        return Err(cannot_run(&format_args!(
            "it exited with {status}: {}",
            stderr.trim()
        )));
    }
    let found: serde_json::Value = serde_json::from_str(stdout.trim())
        .map_err(|e| cannot_run(&format_args!("unexpected answer {stdout:?} ({e})")))?;
    let shown = python.display();
    let install = format!("{shown} -m pip install '{PACKAGE_REQUIREMENT}'");
    let Some(dir) = found.get("dir").and_then(serde_json::Value::as_str) else {
        return Err(format!(
            "is a FluxLit-for-Python app, but the Python package fluxlit is not installed for {shown}; install it with `{install}`"
        ));
    };
    let version = found
        .get("version")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("unknown")
        .to_owned();
    let entry = Path::new(dir).join("streamlit").join("main.py");
    if !entry.is_file() {
        return Err(format!(
            "is a FluxLit-for-Python app, but fluxlit {version} for {shown} has no page entry script ({} is missing); FluxLit runs apps of FluxLit for Python 0.13: `{install}`",
            entry.display()
        ));
    }
    if found.get("module").and_then(serde_json::Value::as_bool) == Some(false) {
        let m = target.top_module().unwrap_or(target.module());
        return Err(format!(
            "names the module {m:?}, but there is no {m}.py or {m}/ in {} and {shown} cannot import it; run FluxLit in the app's directory, or use a file form such as ./{m}.py:{}",
            cwd.display(),
            target.attr()
        ));
    }
    if !version.starts_with("0.13.") {
        tracing::warn!(
            fluxlit = %version,
            python = %shown,
            "FluxLit runs apps of FluxLit for Python 0.13; another version may expect other environment variables (install '{PACKAGE_REQUIREMENT}')"
        );
    }
    Ok(Package { version, entry })
}

/// What the API sidecar runs (`python -c API_BOOTSTRAP TARGET PORT ROOT_PATH LOG_LEVEL`):
/// loads the app like FluxLit for Python does, then serves `app.api` with uvicorn on
/// `127.0.0.1:PORT`. uvicorn's `root_path` is the public prefix of the API
/// (`{root_path}{api_mount_path}`), which the gateway strips before forwarding; the FastAPI
/// app's own `root_path` (FluxLit for Python sets it to the public mount) is cleared so that it
/// does not replace uvicorn's. uvicorn trusts `X-Forwarded-*` from 127.0.0.1 (the gateway), as
/// by default.
pub const API_BOOTSTRAP: &str = r#"
import sys
try:
    from fluxlit.runtime import load_fluxlit
    import uvicorn
except ImportError as e:
    sys.exit(f"fluxlit: cannot import FluxLit for Python with {sys.executable}: {e}; install it with `{sys.executable} -m pip install 'fluxlit>=0.13,<0.14'`")
target, port, root_path, log_level = sys.argv[1:5]
try:
    app = load_fluxlit(target)
except (ValueError, ImportError, AttributeError, TypeError) as e:
    import traceback
    traceback.print_exc()
    sys.exit(f"fluxlit: cannot load the app {target!r}: {e}")
api = app.api
api.root_path = ""
uvicorn.run(api, host="127.0.0.1", port=int(port), root_path=root_path, log_level=log_level)
"#;

/// The API sidecar's arguments after the interpreter (see [`API_BOOTSTRAP`]).
pub(crate) fn api_args(
    target: &PythonTarget,
    port: u16,
    mount: &str,
    api_mount: &str,
    log_level: &str,
) -> Vec<OsString> {
    vec![
        "-c".into(),
        API_BOOTSTRAP.into(),
        target.as_str().into(),
        port.to_string().into(),
        api_root_path(mount, api_mount).into(),
        uvicorn_log_level(log_level).into(),
    ]
}

/// The API's public prefix: `{mount}{api_mount}` (`/myapp/api`), or the mount alone when the
/// API is mounted at `/`.
pub(crate) fn api_root_path(mount: &str, api_mount: &str) -> String {
    if api_mount == "/" {
        mount.to_owned()
    } else {
        format!("{mount}{api_mount}")
    }
}

/// uvicorn's level for FluxLit's `log_level`: uvicorn's own names pass, `warn` is `warning`,
/// `off` is `critical`, a tracing directive list (`info,fluxlit_gateway=debug`) is `info`.
pub(crate) fn uvicorn_log_level(level: &str) -> &'static str {
    match level.trim().to_ascii_lowercase().as_str() {
        "critical" | "off" => "critical",
        "error" => "error",
        "warning" | "warn" => "warning",
        "debug" => "debug",
        "trace" => "trace",
        _ => "info",
    }
}

/// A FluxLit-for-Python app, ready to start: its target and the installed package.
#[derive(Debug, Clone)]
pub(crate) struct PyApp {
    pub(crate) target: PythonTarget,
    pub(crate) package: Package,
}

impl PyApp {
    /// The variables both sidecars get besides FluxLit's common ones: `FLUXLIT_APP` (the
    /// target) and `FLUXLIT_API_MOUNT_PATH` (so that the app's own settings, e.g. `app.urls`,
    /// agree with the gateway's mount whichever source set it).
    pub(crate) fn env(&self, api_mount: &str) -> [(OsString, OsString); 2] {
        [
            ("FLUXLIT_APP".into(), self.target.as_str().into()),
            ("FLUXLIT_API_MOUNT_PATH".into(), api_mount.into()),
        ]
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn scripts_and_app_targets_are_told_apart() {
        let dir = std::env::temp_dir().join(format!("fluxlit-pyapp-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/main.py"), "").unwrap();
        std::fs::write(dir.join("odd:name.py"), "").unwrap();

        assert_eq!(PythonTarget::parse("app.py", &dir), Ok(None));
        assert_eq!(PythonTarget::parse("odd:name.py", &dir), Ok(None));
        let t = PythonTarget::parse("app:app", &dir).unwrap().unwrap();
        assert_eq!((t.module(), t.attr(), t.file()), ("app", "app", None));
        assert_eq!(t.top_module(), Some("app"));
        let t = PythonTarget::parse("pkg.web:application", &dir)
            .unwrap()
            .unwrap();
        assert_eq!(t.top_module(), Some("pkg"));
        let t = PythonTarget::parse("./sub/main.py:app", &dir)
            .unwrap()
            .unwrap();
        assert_eq!(t.file(), Some(dir.join("./sub/main.py").as_path()));
        assert_eq!(t.top_module(), None);

        for bad in [
            "app:",
            ":app",
            "app:a.b",
            "app:1x",
            "my-app:app",
            "./missing.py:app",
        ] {
            assert!(PythonTarget::parse(bad, &dir).is_err(), "{bad}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_api_learns_its_public_prefix_and_level() {
        assert_eq!(api_root_path("", "/api"), "/api");
        assert_eq!(api_root_path("/myapp", "/api"), "/myapp/api");
        assert_eq!(api_root_path("/myapp", "/"), "/myapp");
        assert_eq!(uvicorn_log_level("WARN"), "warning");
        assert_eq!(uvicorn_log_level("info,fluxlit_gateway=debug"), "info");
        assert_eq!(uvicorn_log_level("off"), "critical");
        let t = PythonTarget::parse("app:app", Path::new("/"))
            .unwrap()
            .unwrap();
        let args = api_args(&t, 9000, "/m", "/api", "debug");
        assert_eq!(args[0], "-c");
        assert_eq!(&args[2..], ["app:app", "9000", "/m/api", "debug"]);
    }
}
