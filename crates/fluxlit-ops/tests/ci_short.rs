//! Runs `fluxlit-ops ci-short` against the real `fluxlit` binary and the real example app
//! (Streamlit + uvicorn from `<repo>/.venv`, created by `cargo xtask setup`).
//!
//! `env!("CARGO_BIN_EXE_fluxlit")` only exists for this package's own binaries, so the test
//! builds the gateway with `$CARGO build -p fluxlit-cli --message-format=json` and takes the
//! binary's path from cargo's `compiler-artifact` message (this honours `CARGO_TARGET_DIR`
//! and the build directory layout). The `fluxlit-ops` binary itself is
//! `env!("CARGO_BIN_EXE_fluxlit-ops")`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn build_fluxlit(root: &Path) -> PathBuf {
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "-p",
            "fluxlit-cli",
            "--bin",
            "fluxlit",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build -p fluxlit-cli");
    assert!(out.status.success(), "cargo build -p fluxlit-cli failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "fluxlit")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported the fluxlit executable")
}

#[test]
fn ci_short_passes_against_the_example_app() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("workspace root")
        .to_path_buf();
    let fluxlit = build_fluxlit(&root);
    let python = fluxlit_testkit::venv_python();
    let out = Command::new(env!("CARGO_BIN_EXE_fluxlit-ops"))
        .arg("ci-short")
        .arg("--fluxlit")
        .arg(&fluxlit)
        .arg("--app-dir")
        .arg(root.join("examples/hello"))
        .arg("--python")
        .arg(&python)
        .args(["--max-seconds", "420"])
        .stderr(Stdio::inherit())
        .output()
        .expect("run fluxlit-ops ci-short");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        out.status.success() && last.contains(" passed, 0 failed"),
        "ci-short failed ({}):\n{stdout}",
        out.status
    );
    for name in [
        "soak-http: PASS",
        "soak-readyz: PASS",
        "soak-metrics: PASS",
        "ws-load: PASS",
        "chaos-dropped-websocket: PASS",
        "chaos-oversized-body: PASS",
        "chaos-sidecar-kill: PASS",
        "chaos-slow-upstream: PASS",
        "chaos-graceful-shutdown: PASS",
    ] {
        assert!(stdout.contains(name), "missing `{name}` in:\n{stdout}");
    }
}
