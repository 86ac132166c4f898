//! `fluxlit doctor` through the real binary, in a fresh directory: rows, flags, JSON shape,
//! exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

/// Runs `fluxlit doctor ARGS` in `dir` with `env` on top of the test environment.
fn doctor(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut all = vec!["doctor"];
    all.extend_from_slice(args);
    let out = support::command(dir, &all)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A project directory with a Streamlit script, so only the rows a test is about can fail.
fn project(tag: &str) -> fluxlit_testkit::TempDir {
    let dir = fluxlit_testkit::TempDir::new(tag);
    std::fs::write(
        dir.path().join("app.py"),
        "import streamlit as st\nst.write('hi')\n",
    )
    .unwrap();
    dir
}

#[test]
fn gateway_bind_fails_on_a_taken_port() {
    let dir = project("doctor-bind");
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let (code, out, err) = doctor(dir.path(), &["--host", "127.0.0.1", "--port", &port], &[]);
    assert_eq!(code, 1, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.contains("gateway_bind:"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.starts_with(&format!(
            "FAIL  gateway_bind: 127.0.0.1:{port} cannot be bound now"
        )),
        "{line}"
    );
    assert!(line.contains("command-line flag --port"), "{line}");
    // Nothing else fails in this project: the port was the reason.
    let fails: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(fails.len(), 1, "{out}");
    drop(held);
    let (code, out, err) = doctor(dir.path(), &["--host", "127.0.0.1", "--port", &port], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "PASS  gateway_bind: 127.0.0.1:{port} is available"
        )),
        "{out}"
    );
}
