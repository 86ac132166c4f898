//! `cargo xtask wheel`: the Python wheel of the `fluxlit` command (PyPI name `fluxlit-rs`,
//! `crates/fluxlit-cli/pyproject.toml`, docs/install.md), built and used as a Python team would:
//!
//! 1. maturin (pinned in `xtask/requirements-build.txt`, in a venv of its own) builds the wheel
//!    into `target/wheel/dist/`;
//! 2. a fresh venv (`target/wheel/venv`) gets the wheel and the example's requirements with
//!    pip; `bin/fluxlit` and `bin/fluxlit-rs` must be there and print the crate's version;
//! 3. `VENV/bin/fluxlit run` serves a copy of `examples/hello` with nothing activated (no
//!    `VIRTUAL_ENV`, the venv not on `PATH`): it must find the venv's Streamlit by itself,
//!    answer 200 on `/api/readyz`, `/` and `/api/hello`, and exit 0 on SIGTERM;
//! 4. FluxLit for Python (`fluxlit` 0.13.2, `--no-deps`) installed into the same venv takes
//!    `bin/fluxlit`, `bin/fluxlit-rs` keeps working, and `pip install --force-reinstall
//!    --no-deps` of the wheel gives `bin/fluxlit` back: what docs/install.md tells users.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::bench::peers::http_status;
use crate::bench::procs::{Proc, command};
use crate::bench::shutdown::{copy_example, wait_log};
use crate::{Failed, Result, pinned_venv, pip_install, project_root, run, target_dir};

/// FluxLit for Python's version the coexistence check installs (as in
/// `crates/fluxlit-cli/tests/python_apps/requirements.txt`).
const FLUXLIT_PYTHON: &str = "fluxlit==0.13.2";

pub(crate) fn run_all() -> Result {
    let root = project_root();
    let work = target_dir(&root).join("wheel");
    let wheel = build(&root, &work)?;
    let venv = work.join("venv");
    let bin = install_fresh(&root, &venv, &wheel)?;
    let version = env!("CARGO_PKG_VERSION");
    for name in ["fluxlit", "fluxlit-rs"] {
        expect_version(&bin.join(name), version)?;
    }
    serve_example(&root, &work.join("hello"), &bin.join("fluxlit"))?;
    coexist(&venv, &bin, &wheel, version)?;
    eprintln!("xtask wheel: {} works from a fresh venv", wheel.display());
    Ok(())
}

/// Builds the wheel with the pinned maturin and returns its path (the only `.whl` in `dist/`).
fn build(root: &Path, work: &Path) -> Result<PathBuf> {
    let python = pinned_venv(
        &work.join("venv-build"),
        &root.join("xtask/requirements-build.txt"),
    )?;
    let dist = work.join("dist");
    if dist.exists() {
        std::fs::remove_dir_all(&dist)
            .map_err(|e| Failed(format!("cannot clear {}: {e}", dist.display())))?;
    }
    run(Command::new(python.with_file_name("maturin"))
        .args(["build", "--release", "--locked", "--manifest-path"])
        .arg(root.join("crates/fluxlit-cli/Cargo.toml"))
        .arg("--out")
        .arg(&dist)
        .current_dir(root))?;
    let wheels: Vec<PathBuf> = std::fs::read_dir(&dist)
        .map_err(|e| Failed(format!("cannot read {}: {e}", dist.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    match wheels.as_slice() {
        [one] => Ok(one.clone()),
        other => Err(Failed(format!(
            "expected one wheel in {}, found {other:?}",
            dist.display()
        ))),
    }
}

/// A new venv at `venv` (any old one removed) with the wheel and the example's requirements.
/// Returns its `bin/` directory.
fn install_fresh(root: &Path, venv: &Path, wheel: &Path) -> Result<PathBuf> {
    if venv.exists() {
        std::fs::remove_dir_all(venv)
            .map_err(|e| Failed(format!("cannot clear {}: {e}", venv.display())))?;
    }
    run(Command::new("python3").args(["-m", "venv"]).arg(venv))?;
    let bin = venv.join("bin");
    run(pip_install(&bin.join("python"))
        .arg(wheel)
        .arg("-r")
        .arg(root.join("examples/hello/requirements.txt")))?;
    Ok(bin)
}

/// `program --version` must print `fluxlit VERSION`.
fn expect_version(program: &Path, version: &str) -> Result {
    let out = Command::new(program)
        .arg("--version")
        .output()
        .map_err(|e| Failed(format!("cannot run {}: {e}", program.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.trim() != format!("fluxlit {version}") {
        return Err(Failed(format!(
            "{} --version printed {:?} ({}), expected \"fluxlit {version}\"",
            program.display(),
            text.trim(),
            out.status
        )));
    }
    Ok(())
}

/// Runs `fluxlit run` from the wheel's venv in a copy of examples/hello, with no venv active,
/// checks the UI and the API answer through it and that SIGTERM stops it with exit 0.
fn serve_example(root: &Path, dir: &Path, fluxlit: &Path) -> Result {
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .map_err(|e| Failed(format!("cannot clear {}: {e}", dir.display())))?;
    }
    copy_example(root, dir)?;
    let log = dir.join("fluxlit.log");
    let pidfile = dir.join("fluxlit.pid");
    let mut cmd = command(fluxlit);
    cmd.args(["run", "--port", "0", "--pidfile"])
        .arg(&pidfile)
        .env_remove("VIRTUAL_ENV")
        .env_remove("FLUXLIT_STREAMLIT_PYTHON")
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .current_dir(dir);
    let mut proc = Proc::spawn("fluxlit (wheel)", cmd, Some(&log))?;
    let port = wait_log(&mut proc, &log, Duration::from_secs(120), |text| {
        let line = text
            .lines()
            .find(|l| l.contains("FluxLit is ready") && l.contains("url=http://"))?;
        let rest = line.split("url=http://").nth(1)?;
        rest.split('/')
            .next()?
            .rsplit(':')
            .next()?
            .parse::<u16>()
            .ok()
    })?;
    for path in ["/api/readyz", "/", "/api/hello"] {
        let status = http_status(port, path);
        if status != Some(200) {
            return Err(Failed(format!(
                "GET {path} through the wheel's fluxlit answered {status:?}, expected 200; log: {}",
                log.display()
            )));
        }
    }
    let pid = Pid::from_raw(i32::try_from(proc.child.id()).unwrap_or(i32::MAX));
    kill(pid, Signal::SIGTERM).map_err(|e| Failed(format!("cannot signal fluxlit: {e}")))?;
    let status = proc.wait_timeout(Duration::from_secs(30)).ok_or_else(|| {
        Failed(format!(
            "the wheel's fluxlit still runs 30 s after SIGTERM; log: {}",
            log.display()
        ))
    })?;
    if status.code() != Some(0) {
        return Err(Failed(format!(
            "the wheel's fluxlit exited with {status} after SIGTERM; log: {}",
            log.display()
        )));
    }
    Ok(())
}

/// FluxLit for Python in the same venv: its `fluxlit` script replaces ours, `fluxlit-rs` stays,
/// and reinstalling the wheel restores `fluxlit`.
fn coexist(venv: &Path, bin: &Path, wheel: &Path, version: &str) -> Result {
    let python = bin.join("python");
    run(pip_install(&python).args(["--no-deps", FLUXLIT_PYTHON]))?;
    let script = std::fs::read(bin.join("fluxlit")).map_err(|e| {
        Failed(format!(
            "cannot read {}: {e}",
            bin.join("fluxlit").display()
        ))
    })?;
    if !script.starts_with(b"#!") {
        return Err(Failed(format!(
            "after `pip install {FLUXLIT_PYTHON}`, {} is not FluxLit for Python's script \
             (docs/install.md says it is)",
            bin.join("fluxlit").display()
        )));
    }
    expect_version(&bin.join("fluxlit-rs"), version)?;
    run(pip_install(&python)
        .args(["--force-reinstall", "--no-deps"])
        .arg(wheel))?;
    expect_version(&bin.join("fluxlit"), version)?;
    eprintln!("xtask wheel: coexistence with {FLUXLIT_PYTHON} checked");
    // About 700 MB of packages: CI machines share their disk.
    std::fs::remove_dir_all(venv)
        .map_err(|e| Failed(format!("cannot remove {}: {e}", venv.display())))
}
