//! Project files FluxLit writes for its users: the container image's `Dockerfile` and
//! `.dockerignore` (`fluxlit build`, FluxLit for Python 0.13 reference §1.8; `fluxlit new
//! --profile deploy` reuses them).
//!
//! The image ([`dockerfile`]) has two stages on one base, `python:3.12-slim` pinned by digest
//! ([`BASE_IMAGE`], as the reference pins it; the `PYTHON_IMAGE` build argument substitutes
//! another, e.g. one built locally):
//!
//! 1. `build`: a virtual environment `/opt/venv` with the app's `requirements.txt` and the
//!    FluxLit wheel (`fluxlit-rs`, docs/install.md) from the build context's `wheels/`
//!    directory. FluxLit is on neither crates.io nor PyPI, so the wheel is what the image
//!    installs: `cargo xtask wheel` in a FluxLit checkout writes it to
//!    `target/wheel/dist/fluxlit_rs-VERSION-py3-none-manylinux_2_34_x86_64.whl`.
//! 2. the runtime: the same base with Debian's `tini` as PID 1 (it forwards signals to
//!    `fluxlit run` and reaps orphaned processes), the venv copied from `build`, the project in
//!    `/app` owned by root (the app cannot rewrite its own code), user `appuser` with UID/GID
//!    1000, `FLUXLIT_GATEWAY_HOST=0.0.0.0`, `EXPOSE` and a `HEALTHCHECK` on `{api}/readyz` with
//!    the base's Python (no curl), and `CMD ["fluxlit", "run", TARGET]`.
//!
//! ```
//! let spec = fluxlit::scaffold::ImageSpec::new("app.py", 8000, "/api")?;
//! let text = fluxlit::scaffold::dockerfile(&spec);
//! assert!(text.contains(r#"CMD ["fluxlit", "run", "app.py"]"#));
//! # Ok::<(), fluxlit::scaffold::ScaffoldError>(())
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The default base image of both stages: `python:3.12-slim` pinned by the digest FluxLit for
/// Python 0.13 pins (reference §1.8; the multi-platform index, so `linux/amd64` and
/// `linux/arm64` resolve from it). The wheel inside needs glibc ≥ 2.34, which this Debian-based
/// image has.
pub const BASE_IMAGE: &str =
    "python:3.12-slim@sha256:ec948fa5f90f4f8907e89f4800cfd2d2e91e391a4bce4a6afa77ba265bc3a2fe";

/// The build-context directory the generated Dockerfile takes the FluxLit wheel from; the
/// `.dockerignore` leaves it in the context.
pub const WHEEL_DIR: &str = "wheels";

/// The Debian `tini` versions the runtime stage accepts (an apt version glob: 0.19.0 is the
/// version in Debian 11, 12 and 13).
pub const TINI_VERSION: &str = "0.19.*";

/// The UID and GID the container runs as (a numeric `USER`, so Kubernetes' `runAsNonRoot`
/// can verify it).
pub const APP_UID: u32 = 1000;

/// The `.dockerignore` entries: the reference's (§1.8) plus FluxLit's pidfile and Streamlit's
/// secrets file, which must not be baked into an image.
pub const DOCKERIGNORE_ENTRIES: &[&str] = &[
    "__pycache__",
    "*.py[cod]",
    ".git",
    ".venv",
    "venv",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "*.egg-info",
    "dist",
    "build",
    ".env",
    ".fluxlit.pid",
    ".streamlit/secrets.toml",
];

/// What the generated image runs: the target, the port and the API mount the health check
/// asks. Built with [`ImageSpec::new`], which refuses values that cannot be written into a
/// Dockerfile as they are meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    target: String,
    port: u16,
    api_mount_path: String,
}

impl ImageSpec {
    /// `target`: what `fluxlit run` serves (a Streamlit script such as `app.py` or
    /// `module:attr`), relative to the project directory, which is `/app` in the image.
    /// `port`: the gateway's port in the container (1–65535; `EXPOSE`,
    /// `FLUXLIT_GATEWAY_PORT`). `api_mount_path`: where the API is mounted (`/api` by default;
    /// the health check asks `{api_mount_path}/readyz`).
    ///
    /// # Errors
    /// [`ScaffoldError::Target`] for an empty or absolute target or one with control
    /// characters, [`ScaffoldError::Port`] for port 0, [`ScaffoldError::ApiMount`] for a mount
    /// path that does not start with `/` or has control characters.
    pub fn new(
        target: impl Into<String>,
        port: u16,
        api_mount_path: impl Into<String>,
    ) -> Result<Self, ScaffoldError> {
        let target = target.into();
        let api_mount_path = api_mount_path.into();
        if target.trim().is_empty() {
            return Err(ScaffoldError::Target {
                target,
                expected: "a Streamlit script or module:attr, e.g. app.py",
            });
        }
        if target.chars().any(char::is_control) {
            return Err(ScaffoldError::Target {
                target,
                expected: "no control characters (newlines, tabs)",
            });
        }
        if Path::new(&target).is_absolute() {
            return Err(ScaffoldError::Target {
                target,
                expected: "a path relative to the project directory (it is /app in the image)",
            });
        }
        if port == 0 {
            return Err(ScaffoldError::Port);
        }
        if !api_mount_path.starts_with('/') || api_mount_path.chars().any(char::is_control) {
            return Err(ScaffoldError::ApiMount(api_mount_path));
        }
        Ok(Self {
            target,
            port,
            api_mount_path,
        })
    }

    /// The target `CMD` runs.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The gateway's port in the container.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The readiness path the health check asks: `{api_mount_path}/readyz`.
    pub fn readyz_path(&self) -> String {
        format!("{}/readyz", self.api_mount_path.trim_end_matches('/'))
    }
}

/// Why the container files were not written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScaffoldError {
    /// A file exists and overwriting was not asked for (reference §1.8's message).
    #[error("Refusing to overwrite {} / {} (use --force).", .dockerfile.display(), .dockerignore.display())]
    Exists {
        /// Where the Dockerfile would go.
        dockerfile: PathBuf,
        /// Where the `.dockerignore` would go.
        dockerignore: PathBuf,
    },
    /// The target cannot be the image's `CMD`.
    #[error("target {target:?} cannot be written into the Dockerfile: expected {expected}")]
    Target {
        /// The target as given.
        target: String,
        /// What it must be.
        expected: &'static str,
    },
    /// Port 0 (pick a free port) means nothing for a published container port.
    #[error(
        "gateway_port 0 cannot be the container's port: expected a fixed port from 1 to 65535 (e.g. 8000)"
    )]
    Port,
    /// The API mount path is not a path.
    #[error(
        "api_mount_path {0:?} cannot be written into the Dockerfile: expected a path starting with / (e.g. /api)"
    )]
    ApiMount(String),
    /// The output directory could not be created.
    #[error("cannot create the directory {}: {source}", .path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A JSON string literal: what a Dockerfile's exec form (`CMD [...]`) parses, and a valid
/// Python string literal too.
fn json(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// The health check's program for `python -c`: GET `http://127.0.0.1:$FLUXLIT_GATEWAY_PORT
/// {readyz}` (the port the image sets, or one given with `docker run -e`); a non-2xx answer or
/// no answer within 4 s raises, so the exit code is 1.
fn health_program(spec: &ImageSpec) -> String {
    format!(
        "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('FLUXLIT_GATEWAY_PORT', '{port}') + {path}, timeout=4)",
        port = spec.port,
        path = json(&spec.readyz_path()),
    )
}

/// The Dockerfile for `spec` (see the module documentation for its stages). Its header says
/// what the build context must hold and how to build and run the image. It lints clean with
/// hadolint (`cargo xtask dockerfile`).
pub fn dockerfile(spec: &ImageSpec) -> String {
    let version = env!("CARGO_PKG_VERSION");
    let target = &spec.target;
    let port = spec.port;
    let readyz = spec.readyz_path();
    let cmd = format!(
        "[{}, {}, {}]",
        json("fluxlit"),
        json("run"),
        json(&spec.target)
    );
    let health = format!(
        "[{}, {}, {}]",
        json("python"),
        json("-c"),
        json(&health_program(spec))
    );
    let mut out = String::new();
    // `write!` into a String cannot fail.
    let _ = write!(
        out,
        r#"# Container image for this FluxLit project, written by `fluxlit build` (FluxLit {version}).
# It serves the target {target} on port {port}: `fluxlit run` starts Streamlit (and the API
# command, if fluxlit.toml has one) and puts both behind one port.
#
# The build context is this directory. Besides the project it must hold:
#   requirements.txt                 the app's Python packages, pinned (Streamlit, the API's
#                                    packages); installed into /opt/venv.
#   {WHEEL_DIR}/fluxlit_rs-*.whl          exactly one FluxLit wheel for linux/amd64. FluxLit is not on
#                                    PyPI or crates.io: in a FluxLit checkout, `cargo xtask wheel`
#                                    writes target/wheel/dist/fluxlit_rs-VERSION-py3-none-manylinux_2_34_x86_64.whl;
#                                    copy that file into {WHEEL_DIR}/ here.
#
# Build and run:
#   docker build -t my-app .          (podman: podman build --format docker -t my-app .)
#   docker run --rm -p {port}:{port} my-app
# then open http://127.0.0.1:{port}/ ; readiness is http://127.0.0.1:{port}{readyz}.
#
# PID 1 is tini (Debian's package): it forwards SIGTERM to `fluxlit run`, which stops the
# sidecars in order, and reaps orphaned processes; `docker run --init` is not needed.
# The base is python:3.12-slim pinned by digest. Another Debian-based image with python3 (and
# its venv module), apt-get and useradd can stand in for it: --build-arg PYTHON_IMAGE=IMAGE.
# The app runs as UID/GID {APP_UID}; its files in /app belong to root and are read-only to it:
# write to /tmp or a mounted volume. Keep secrets out of the image (.dockerignore lists .env
# and .streamlit/secrets.toml): pass them as environment variables or mounted files.

ARG PYTHON_IMAGE={BASE_IMAGE}

# Stage 1: the virtual environment with the app's packages and the fluxlit command.
FROM ${{PYTHON_IMAGE}} AS build
RUN python3 -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
COPY {WHEEL_DIR}/fluxlit_rs-*.whl /tmp/{WHEEL_DIR}/
RUN /opt/venv/bin/python -m pip install --no-cache-dir --disable-pip-version-check \
        -r /tmp/requirements.txt /tmp/{WHEEL_DIR}/fluxlit_rs-*.whl

# Stage 2: the runtime.
FROM ${{PYTHON_IMAGE}}
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini={TINI_VERSION} \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid {APP_UID} --user-group appuser
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY . .
# The venv's fluxlit and python first on PATH; Streamlit and the API run from the venv
# whatever fluxlit.toml says; the pidfile where the app user may write it.
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    FLUXLIT_STREAMLIT_PYTHON=/opt/venv/bin/python \
    FLUXLIT_GATEWAY_HOST=0.0.0.0 \
    FLUXLIT_GATEWAY_PORT={port} \
    FLUXLIT_PIDFILE=/tmp/fluxlit.pid \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER {APP_UID}:{APP_UID}
EXPOSE {port}
# 200 once Streamlit (and the API) answer; 503 while starting or stopping.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD {health}
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD {cmd}
"#
    );
    out
}

/// The `.dockerignore` text: a comment header and [`DOCKERIGNORE_ENTRIES`], one a line.
pub fn dockerignore() -> String {
    let mut out = String::from(
        "# Written by `fluxlit build`: kept out of the image's build context. The wheels/\n\
         # directory must stay in it (the Dockerfile installs FluxLit from there).\n",
    );
    for entry in DOCKERIGNORE_ENTRIES {
        out.push_str(entry);
        out.push('\n');
    }
    out
}

/// Where [`write_container_files`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// `DIR/Dockerfile`.
    pub dockerfile: PathBuf,
    /// `DIR/.dockerignore`.
    pub dockerignore: PathBuf,
}

/// `dir/Dockerfile` and `dir/.dockerignore` with FluxLit for Python's path rendering: the
/// bare file names when `dir` is `.` (or empty).
fn paths_in(dir: &Path) -> (PathBuf, PathBuf) {
    if dir.as_os_str().is_empty() || dir == Path::new(".") {
        (PathBuf::from("Dockerfile"), PathBuf::from(".dockerignore"))
    } else {
        (dir.join("Dockerfile"), dir.join(".dockerignore"))
    }
}

/// Writes [`dockerfile`] and [`dockerignore`] into `dir`, creating it with its parents.
///
/// # Errors
/// [`ScaffoldError::Exists`] when either file exists (a directory or a dangling symlink of that
/// name counts) and `force` is false: nothing is written then. [`ScaffoldError::CreateDir`] and
/// [`ScaffoldError::Write`] for I/O failures.
pub fn write_container_files(
    dir: &Path,
    spec: &ImageSpec,
    force: bool,
) -> Result<Written, ScaffoldError> {
    let (dockerfile_path, dockerignore_path) = paths_in(dir);
    let exists = |p: &Path| p.symlink_metadata().is_ok();
    if !force && (exists(&dockerfile_path) || exists(&dockerignore_path)) {
        return Err(ScaffoldError::Exists {
            dockerfile: dockerfile_path,
            dockerignore: dockerignore_path,
        });
    }
    if !dir.as_os_str().is_empty() {
        std::fs::create_dir_all(dir).map_err(|source| ScaffoldError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    for (path, text) in [
        (&dockerfile_path, dockerfile(spec)),
        (&dockerignore_path, dockerignore()),
    ] {
        std::fs::write(path, text).map_err(|source| ScaffoldError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(Written {
        dockerfile: dockerfile_path,
        dockerignore: dockerignore_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ImageSpec {
        ImageSpec::new("app.py", 8000, "/api").unwrap()
    }

    /// The instruction lines (no comments, continuation lines joined).
    fn instructions(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = String::new();
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with('#') || t.is_empty() {
                continue;
            }
            if let Some(head) = t.strip_suffix('\\') {
                cur.push_str(head);
                continue;
            }
            cur.push_str(t);
            out.push(std::mem::take(&mut cur));
        }
        out
    }

    #[test]
    fn both_stages_start_from_the_digest_pinned_base() {
        let text = dockerfile(&spec());
        let ins = instructions(&text);
        assert_eq!(
            ins[0],
            "ARG PYTHON_IMAGE=python:3.12-slim@sha256:ec948fa5f90f4f8907e89f4800cfd2d2e91e391a4bce4a6afa77ba265bc3a2fe"
        );
        let froms: Vec<&String> = ins.iter().filter(|l| l.starts_with("FROM ")).collect();
        assert_eq!(
            froms,
            ["FROM ${PYTHON_IMAGE} AS build", "FROM ${PYTHON_IMAGE}"]
        );
        assert!(ins.contains(&"COPY --from=build /opt/venv /opt/venv".to_owned()));
    }

    #[test]
    fn runs_as_uid_1000_with_tini_and_the_target() {
        let ins = instructions(&dockerfile(&spec()));
        let last = |prefix: &str| {
            ins.iter()
                .rev()
                .find(|l| l.starts_with(prefix))
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(last("USER "), "USER 1000:1000");
        assert!(
            ins.iter()
                .any(|l| l.contains("useradd --create-home --uid 1000"))
        );
        assert_eq!(last("ENTRYPOINT "), r#"ENTRYPOINT ["/usr/bin/tini", "--"]"#);
        assert!(ins.iter().any(|l| l.contains("tini=0.19.*")));
        assert_eq!(last("CMD "), r#"CMD ["fluxlit", "run", "app.py"]"#);
        assert_eq!(last("EXPOSE "), "EXPOSE 8000");
        let env = last("ENV ");
        for kv in [
            "FLUXLIT_GATEWAY_HOST=0.0.0.0",
            "FLUXLIT_GATEWAY_PORT=8000",
            "PATH=/opt/venv/bin:$PATH",
        ] {
            assert!(env.contains(kv), "{kv} missing from {env}");
        }
        // The wheel from the context, the requirements, no PyPI release of FluxLit.
        assert!(
            ins.iter()
                .any(|l| l == "COPY wheels/fluxlit_rs-*.whl /tmp/wheels/")
        );
        assert!(ins.iter().any(|l| l.contains("-r /tmp/requirements.txt")));
        assert!(!ins.iter().any(|l| l.contains("pip install fluxlit")));
    }

    #[test]
    fn healthcheck_asks_readyz_with_python_not_curl() {
        let s = ImageSpec::new("pages/main app.py", 9001, "/backend").unwrap();
        let ins = instructions(&dockerfile(&s));
        let hc = ins
            .iter()
            .find(|l| l.starts_with("HEALTHCHECK "))
            .cloned()
            .unwrap_or_default();
        assert!(hc.starts_with("HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD [\"python\", \"-c\", "), "{hc}");
        assert!(!hc.contains("curl") && !hc.contains("wget"), "{hc}");
        assert!(
            hc.contains(r#"os.environ.get('FLUXLIT_GATEWAY_PORT', '9001') + \"/backend/readyz\""#),
            "{hc}"
        );
        assert!(ins.contains(&"EXPOSE 9001".to_owned()));
        assert!(ins.contains(&r#"CMD ["fluxlit", "run", "pages/main app.py"]"#.to_owned()));
    }

    #[test]
    fn exec_form_arrays_are_json_even_for_odd_targets() {
        let s = ImageSpec::new(r#"app "x"\y.py"#, 8000, "/api").unwrap();
        let ins = instructions(&dockerfile(&s));
        let cmd = ins.iter().rev().find(|l| l.starts_with("CMD ")).unwrap();
        let parsed: Vec<String> = serde_json::from_str(&cmd["CMD ".len()..]).unwrap();
        assert_eq!(parsed, ["fluxlit", "run", r#"app "x"\y.py"#]);
        let hc = ins.iter().find(|l| l.starts_with("HEALTHCHECK ")).unwrap();
        let array = &hc[hc.find("CMD ").unwrap() + 4..];
        let parsed: Vec<String> = serde_json::from_str(array).unwrap();
        assert_eq!(parsed[..2], ["python", "-c"]);
        assert!(
            parsed[2].contains("urllib.request.urlopen("),
            "{}",
            parsed[2]
        );
    }

    #[test]
    fn refuses_what_cannot_be_written() {
        for (target, port, mount) in [
            ("", 8000, "/api"),
            ("app.py\nRUN rm -rf /", 8000, "/api"),
            ("/home/me/app.py", 8000, "/api"),
            ("app.py", 0, "/api"),
            ("app.py", 8000, "api"),
        ] {
            let e = ImageSpec::new(target, port, mount).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("expected"), "{msg}");
        }
    }

    #[test]
    fn dockerignore_has_the_reference_entries_and_keeps_wheels() {
        let text = dockerignore();
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        for e in [
            "__pycache__",
            "*.py[cod]",
            ".git",
            ".venv",
            "venv",
            ".pytest_cache",
            ".mypy_cache",
            ".ruff_cache",
            "*.egg-info",
            "dist",
            "build",
            ".env",
        ] {
            assert!(lines.contains(&e), "{e} missing");
        }
        assert!(!lines.iter().any(|l| l.contains("wheels")));
    }

    #[test]
    fn refusal_names_both_files_like_the_reference() {
        let dir = std::env::temp_dir().join(format!("fluxlit-scaffold-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let nested = dir.join("a/b");
        let w = write_container_files(&nested, &spec(), false).unwrap();
        assert_eq!(w.dockerfile, nested.join("Dockerfile"));
        let e = write_container_files(&nested, &spec(), false).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "Refusing to overwrite {}/Dockerfile / {}/.dockerignore (use --force).",
                nested.display(),
                nested.display()
            )
        );
        std::fs::write(&w.dockerfile, "old").unwrap();
        write_container_files(&nested, &spec(), true).unwrap();
        assert_eq!(
            std::fs::read_to_string(&w.dockerfile).unwrap(),
            dockerfile(&spec())
        );
        assert_eq!(
            paths_in(Path::new(".")),
            (PathBuf::from("Dockerfile"), PathBuf::from(".dockerignore"))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
