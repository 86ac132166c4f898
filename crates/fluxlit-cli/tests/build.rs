//! `fluxlit build` through the real binary in a fresh directory (reference §1.8): the success
//! message, the refusal (stderr, exit 1, nothing changed), `--force`, `-o DIR` created with its
//! parents, and the target, port and API mount taken from the configuration.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use fluxlit_testkit::TempDir;

/// Runs `fluxlit build ARGS` in `dir`; (exit code, stdout, stderr).
fn build(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    support::run_subcommand(dir, "build", args, env)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn writes_both_files_and_says_so() {
    let dir = TempDir::new("build-ok");
    std::fs::write(dir.path().join("app.py"), "import streamlit as st\n").unwrap();
    let (code, out, err) = build(dir.path(), &[], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "Wrote ./Dockerfile and ./.dockerignore\n");
    let dockerfile = read(&dir.path().join("Dockerfile"));
    assert!(
        dockerfile.contains("\nCMD [\"fluxlit\", \"run\", \"app.py\"]\n"),
        "{dockerfile}"
    );
    assert!(dockerfile.contains("\nUSER 1000:1000\n"));
    assert!(
        dockerfile
            .contains("@sha256:ec948fa5f90f4f8907e89f4800cfd2d2e91e391a4bce4a6afa77ba265bc3a2fe")
    );
    let ignore = read(&dir.path().join(".dockerignore"));
    assert!(ignore.lines().any(|l| l == ".venv"), "{ignore}");
}

#[test]
fn refuses_to_overwrite_either_file_without_force() {
    for existing in ["Dockerfile", ".dockerignore"] {
        let dir = TempDir::new("build-refuse");
        std::fs::write(dir.path().join(existing), "mine\n").unwrap();
        let (code, out, err) = build(dir.path(), &["app.py"], &[]);
        assert_eq!(code, 1, "{existing}: {out}{err}");
        assert_eq!(
            err, "Refusing to overwrite Dockerfile / .dockerignore (use --force).\n",
            "{existing}"
        );
        assert_eq!(out, "");
        assert_eq!(read(&dir.path().join(existing)), "mine\n");
        let other = if existing == "Dockerfile" {
            ".dockerignore"
        } else {
            "Dockerfile"
        };
        assert!(!dir.path().join(other).exists(), "nothing written");
    }
    // With -o the refusal names the files under DIR.
    let dir = TempDir::new("build-refuse-o");
    std::fs::create_dir_all(dir.path().join("deploy")).unwrap();
    std::fs::write(dir.path().join("deploy/Dockerfile"), "mine\n").unwrap();
    let (code, _, err) = build(dir.path(), &["-o", "deploy"], &[]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "Refusing to overwrite deploy/Dockerfile / deploy/.dockerignore (use --force).\n"
    );
}

#[test]
fn force_overwrites() {
    for flag in ["--force", "-f"] {
        let dir = TempDir::new("build-force");
        std::fs::write(dir.path().join("Dockerfile"), "mine\n").unwrap();
        std::fs::write(dir.path().join(".dockerignore"), "mine\n").unwrap();
        let (code, out, err) = build(dir.path(), &["ui.py", flag], &[]);
        assert_eq!(code, 0, "{flag}: {out}{err}");
        assert_eq!(out, "Wrote ./Dockerfile and ./.dockerignore\n");
        assert!(
            read(&dir.path().join("Dockerfile")).contains("CMD [\"fluxlit\", \"run\", \"ui.py\"]")
        );
        assert!(read(&dir.path().join(".dockerignore")).contains("__pycache__"));
    }
}

#[test]
fn output_dir_is_created_with_parents() {
    for flag in ["-o", "--output"] {
        let dir = TempDir::new("build-out");
        let (code, out, err) = build(dir.path(), &[flag, "deploy/image/x", "app.py"], &[]);
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(
            out,
            "Wrote deploy/image/x/Dockerfile and deploy/image/x/.dockerignore\n"
        );
        assert!(dir.path().join("deploy/image/x/Dockerfile").is_file());
        assert!(dir.path().join("deploy/image/x/.dockerignore").is_file());
        assert!(!dir.path().join("Dockerfile").exists());
    }
}

#[test]
fn target_port_and_api_mount_come_from_the_configuration() {
    let dir = TempDir::new("build-config");
    std::fs::write(
        dir.path().join("fluxlit.toml"),
        "target = \"dashboard.py\"\ngateway_port = 9000\napi_mount_path = \"/backend\"\n",
    )
    .unwrap();
    let (code, out, err) = build(dir.path(), &[], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let text = read(&dir.path().join("Dockerfile"));
    assert!(
        text.contains("CMD [\"fluxlit\", \"run\", \"dashboard.py\"]"),
        "{text}"
    );
    assert!(text.contains("\nEXPOSE 9000\n"), "{text}");
    assert!(text.contains("FLUXLIT_GATEWAY_PORT=9000"), "{text}");
    assert!(text.contains("\\\"/backend/readyz\\\""), "{text}");
    // TARGET on the command line wins over the file, and FLUXLIT_TARGET over the file too.
    let (code, _, err) = build(dir.path(), &["-f", "other.py"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(read(&dir.path().join("Dockerfile")).contains("\"run\", \"other.py\"]"));
    let (code, _, err) = build(dir.path(), &["-f"], &[("FLUXLIT_TARGET", "env.py")]);
    assert_eq!(code, 0, "{err}");
    assert!(read(&dir.path().join("Dockerfile")).contains("\"run\", \"env.py\"]"));
}

#[test]
fn an_absolute_target_is_refused_with_the_reason() {
    let dir = TempDir::new("build-abs");
    let (code, out, err) = build(dir.path(), &["/srv/app.py"], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.starts_with("fluxlit build: target \"/srv/app.py\" cannot be written into the Dockerfile: expected a path relative to the project directory"),
        "{err}"
    );
    assert!(!dir.path().join("Dockerfile").exists());
}
