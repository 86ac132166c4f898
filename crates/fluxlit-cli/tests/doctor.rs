//! `fluxlit doctor` through the real binary, in a fresh directory: rows, flags, JSON shape,
//! exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;

/// Runs `fluxlit doctor ARGS` in `dir` with `env` on top of the test environment.
fn doctor(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    support::run_subcommand(dir, "doctor", args, env)
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

fn json_of(out: &str) -> Value {
    assert_eq!(out.lines().count(), 1, "one line: {out}");
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn status_of(json: &Value, name: &str) -> String {
    json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .map(|c| c["status"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no {name} row: {json}"))
}

#[test]
fn json_has_the_reference_shape() {
    let dir = project("doctor-json");
    let (code, out, err) = doctor(dir.path(), &["--json", "--port", "0"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let v = json_of(&out);
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["checks", "status", "target", "warnings_only"], "{v}");
    assert_eq!(v["target"], "app.py");
    assert_eq!(v["warnings_only"], false);
    // The only non-PASS row of this project: it has no API.
    assert_eq!(v["status"], "warn", "{v}");
    for c in v["checks"].as_array().unwrap() {
        let mut keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["detail", "doc", "name", "status"], "{c}");
        let doc = c["doc"].as_str().unwrap();
        assert!(doc.starts_with("docs/doctor.md#doctor-"), "{c}");
        let expected = if c["name"] == "api" { "WARN" } else { "PASS" };
        assert_eq!(c["status"], expected, "{c}");
    }
    for name in [
        "config",
        "python_version",
        "streamlit_version",
        "target",
        "api",
        "gateway_bind",
        "FLUXLIT_INTERNAL_API_BASE",
        "config.api_mount_path",
        "config.root_path",
        "config.trust_proxy",
        "config.public_base_url",
        "readiness_route",
        "l7_websocket",
        "gateway_upstream_timeouts",
        "gateway_forward_client_headers",
    ] {
        status_of(&v, name);
    }
    // --verbose adds the snapshot, and only then.
    let (code, out, err) = doctor(dir.path(), &["--json", "--verbose", "--port", "0"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let v = json_of(&out);
    let verbose = &v["verbose"];
    assert!(
        verbose["resolved_target"]
            .as_str()
            .unwrap()
            .ends_with("/app.py"),
        "{verbose}"
    );
    assert_eq!(verbose["effective"]["gateway_bind"], "127.0.0.1:0");
    assert_eq!(verbose["settings_redacted"]["gateway_port"], 0);
    assert_eq!(
        verbose["sources"]["gateway_port"],
        "command-line flag --port"
    );
    assert_eq!(verbose["sources"]["log_level"], "default");
}

#[test]
fn strict_upgrades_warnings_and_warnings_only_keeps_exit_zero() {
    let dir = project("doctor-strict");
    // A subpath without trust_proxy or public_base_url: two of the rows --strict upgrades.
    let env = [("FLUXLIT_ROOT_PATH", "/app")];
    let upgraded = ["oauth_public_base_url", "proxy_headers"];

    let (code, out, err) = doctor(dir.path(), &["--json", "--port", "0"], &env);
    assert_eq!(code, 0, "{out}{err}");
    let v = json_of(&out);
    assert_eq!(v["status"], "warn");
    for name in upgraded {
        assert_eq!(status_of(&v, name), "WARN", "{name}");
    }

    let (code, out, err) = doctor(dir.path(), &["--json", "--strict", "--port", "0"], &env);
    assert_eq!(code, 1, "{out}{err}");
    let v = json_of(&out);
    assert_eq!(v["status"], "fail");
    for name in upgraded {
        assert_eq!(status_of(&v, name), "FAIL", "{name}");
    }
    // Rows outside the reference's list stay WARN.
    assert_eq!(status_of(&v, "api"), "WARN");

    // --warnings-only: the FAIL rows are printed, the exit code is 0 and the status "warn".
    let (code, out, err) = doctor(
        dir.path(),
        &["--json", "--strict", "--warnings-only", "--port", "0"],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    let v = json_of(&out);
    assert_eq!(v["status"], "warn");
    assert_eq!(v["warnings_only"], true);
    assert_eq!(status_of(&v, "proxy_headers"), "FAIL");

    // The human form says why.
    let (code, out, _) = doctor(dir.path(), &["--strict", "--port", "0"], &env);
    assert_eq!(code, 1);
    let lines: Vec<&str> = out.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("FAIL  proxy_headers: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(lines[at].ends_with("(FAIL because of --strict)"), "{out}");
    // Each row that is not PASS points at its section of the docs.
    assert_eq!(
        lines[at + 1],
        "      docs: docs/doctor.md#doctor-proxy_headers"
    );
    let docs =
        std::fs::read_to_string(fluxlit_testkit::repo_root().join("docs/doctor.md")).unwrap();
    assert!(docs.contains("<a id=\"doctor-proxy_headers\"></a>"));
}

#[test]
fn verbose_prints_sources_and_never_a_secret() {
    let dir = project("doctor-verbose");
    std::fs::write(
        dir.path().join("fluxlit.toml"),
        "oidc_client_secret = \"file-secret-1\"\noidc_issuer = \"https://idp:url-pass-2@idp.example/realm\"\n",
    )
    .unwrap();
    let env = [
        ("FLUXLIT_JWT_HS256_SECRET", "env-secret-3"),
        (
            "FLUXLIT_CORS_MIDDLEWARE_KWARGS",
            r#"{"x_api_token": "kwarg-secret-4", "max_age": 600}"#,
        ),
        (
            "FLUXLIT_INTERNAL_API_BASE",
            "http://u:base-pass-5@127.0.0.1:8000/api",
        ),
    ];
    let secrets = [
        "file-secret-1",
        "url-pass-2",
        "env-secret-3",
        "kwarg-secret-4",
        "base-pass-5",
    ];
    let (_, text, err) = doctor(dir.path(), &["--verbose", "--port", "0"], &env);
    let (_, json, _) = doctor(dir.path(), &["--json", "-v", "--port", "0"], &env);
    for out in [&text, &json] {
        for secret in secrets {
            assert!(!out.contains(secret), "{secret} printed:\n{out}{err}");
        }
    }
    assert!(
        text.contains("--- Verbose (effective configuration; secrets redacted) ---"),
        "{text}"
    );
    let line = |key: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} line: {text}"))
            .to_owned()
    };
    let jwt = line("jwt_hs256_secret");
    assert!(
        jwt.contains("\"[REDACTED]\"")
            && jwt.ends_with("# environment variable FLUXLIT_JWT_HS256_SECRET"),
        "{jwt}"
    );
    let oidc = line("oidc_client_secret");
    assert!(
        oidc.contains("\"[REDACTED]\"") && oidc.ends_with("fluxlit.toml:1"),
        "{oidc}"
    );
    assert!(line("oidc_issuer").contains("https://idp:[REDACTED]@idp.example/realm"));
    let v = json_of(&json);
    let settings = &v["verbose"]["settings_redacted"];
    assert_eq!(settings["oidc_client_secret"], "[REDACTED]");
    assert_eq!(
        settings["cors_middleware_kwargs"]["x_api_token"],
        "[REDACTED]"
    );
    assert_eq!(settings["cors_middleware_kwargs"]["max_age"], 600);
    assert_eq!(
        v["verbose"]["effective"]["internal_api_base_env"],
        "http://u:[REDACTED]@127.0.0.1:8000/api"
    );
    assert!(
        v["verbose"]["sources"]["oidc_client_secret"]
            .as_str()
            .unwrap()
            .ends_with("fluxlit.toml:1")
    );
}
