//! `fluxlit config` through the real binary: provenance, redaction, warnings, exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;

fn config(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    support::run_subcommand(dir, "config", args, env)
}

#[test]
fn json_says_where_every_value_came_from() {
    let dir = fluxlit_testkit::TempDir::new("config-json");
    std::fs::write(
        dir.path().join("fluxlit.toml"),
        "target = \"ui.py\"\n\ngateway_port = 9000\nroot_path = \"/file\"\n",
    )
    .unwrap();
    let env = [
        ("FLUXLIT_ROOT_PATH", "/env"),
        ("FLUXLIT_JWT_HS256_SECRET", "very-secret-value"),
        ("FLUXLIT_PUBLIC_BASE_URL", "https://example.com/cli"),
    ];
    let (code, out, err) = config(
        dir.path(),
        &[
            "--json",
            "--show-origin",
            "--root-path",
            "/cli",
            "--proxy-headers",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let o = &v["origins"];
    assert_eq!(o["target"]["source"], "file");
    assert_eq!(o["target"]["line"], 1);
    assert_eq!(o["gateway_port"]["line"], 3);
    assert_eq!(o["root_path"]["source"], "cli");
    assert_eq!(o["root_path"]["flag"], "--root-path");
    assert_eq!(o["jwt_hs256_secret"]["var"], "FLUXLIT_JWT_HS256_SECRET");
    assert_eq!(o["log_level"]["source"], "default");
    assert_eq!(o["trust_proxy"]["flag"], "--proxy-headers");
    assert_eq!(v["settings"]["root_path"], "/cli");
    assert_eq!(v["settings"]["gateway_port"], 9000);
    assert_eq!(v["settings"]["jwt_hs256_secret"], "[REDACTED]");
    assert!(!out.contains("very-secret-value"));
    assert!(
        v["origins"].as_object().unwrap().len() >= 50,
        "every key has an origin"
    );
    // The secret is accepted but nothing uses it yet: a warning says so, naming the key and
    // its source (never its value).
    let unused: Vec<&Value> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["code"] == "auth_keys_unused")
        .collect();
    assert_eq!(unused.len(), 1, "{out}");
    assert_eq!(unused[0]["level"], "warn");
    assert_eq!(unused[0]["doc"], "docs/doctor.md#warning-auth_keys_unused");
    let message = unused[0]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "jwt_hs256_secret (from environment variable FLUXLIT_JWT_HS256_SECRET) is set, but it has no effect with auth_mode = off (from default)"
        ),
        "{message}"
    );
}

#[test]
fn unused_jwt_and_oidc_keys_are_a_warning_and_fail_strict() {
    let dir = fluxlit_testkit::TempDir::new("config-auth");
    std::fs::write(
        dir.path().join("fluxlit.toml"),
        "oidc_client_id = \"fluxlit\"\n",
    )
    .unwrap();
    let env = [("FLUXLIT_JWT_ISSUER", "https://idp.example")];
    let (code, out, err) = config(dir.path(), &[], &env);
    assert_eq!(code, 0, "a warning, not an error: {out}{err}");
    let line = out
        .lines()
        .find(|l| l.contains("[WARN] auth_keys_unused"))
        .unwrap_or_else(|| panic!("no auth_keys_unused warning in:\n{out}"));
    for part in [
        "jwt_issuer (from environment variable FLUXLIT_JWT_ISSUER)",
        "oidc_client_id (from ",
        "fluxlit.toml:1)",
        "no effect with auth_mode = off (from default)",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line}");
    }
    let (code, out, err) = config(dir.path(), &["--strict"], &env);
    assert_eq!(code, 1, "--strict refuses the unused keys: {out}{err}");
    // Without them the same project is clean, even with --strict.
    std::fs::remove_file(dir.path().join("fluxlit.toml")).unwrap();
    let (code, out, err) = config(dir.path(), &["--strict"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Warnings:\n  (none)"), "{out}");
}

/// With auth_mode = jwt the jwt_* keys are used: `fluxlit config --strict` is clean.
#[test]
fn jwt_mode_uses_the_jwt_keys() {
    let dir = fluxlit_testkit::TempDir::new("config-jwt");
    let env = [
        ("FLUXLIT_AUTH_MODE", "jwt"),
        ("FLUXLIT_JWT_ISSUER", "https://idp.example"),
        ("FLUXLIT_JWT_AUDIENCE", "api,other"),
        ("FLUXLIT_JWT_JWKS_URL", "https://idp.example/jwks"),
    ];
    let (code, out, err) = config(dir.path(), &["--strict"], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("auth_keys_unused"), "{out}");
    assert!(out.contains("Warnings:\n  (none)"), "{out}");
}

/// auth_mode = oidc: what is missing is an error naming each key and the mode's source; a
/// complete configuration is clean with --strict, prints the URIs to register, and shows the
/// cookie secrets (comma-separated in the environment) only as [REDACTED], with their origin.
#[test]
fn oidc_mode_is_checked_and_its_secrets_never_shown() {
    let dir = fluxlit_testkit::TempDir::new("config-oidc");
    let (code, out, err) = config(dir.path(), &[], &[("FLUXLIT_AUTH_MODE", "oidc")]);
    assert_eq!(code, 1, "{out}{err}");
    let text = format!("{out}{err}");
    for part in [
        "public_base_url",
        "oidc_issuer",
        "oidc_client_id",
        "auth_cookie_secrets",
        "because auth_mode is oidc (from environment variable FLUXLIT_AUTH_MODE)",
    ] {
        assert!(text.contains(part), "{part:?} missing from {text}");
    }
    assert!(!text.contains("not available"), "{text}");

    let secrets = "first-cookie-secret-0123456789abcdef,second-cookie-secret-0123456789abcdef";
    let env = [
        ("FLUXLIT_AUTH_MODE", "oidc"),
        ("FLUXLIT_PUBLIC_BASE_URL", "https://apps.example.com/myapp"),
        ("FLUXLIT_ROOT_PATH", "/myapp"),
        ("FLUXLIT_TRUST_PROXY", "1"),
        ("FLUXLIT_FORWARDED_ALLOW_IPS", "10.0.0.5"),
        ("FLUXLIT_OIDC_ISSUER", "https://login.example.com"),
        ("FLUXLIT_OIDC_CLIENT_ID", "fluxlit"),
        ("FLUXLIT_OIDC_CLIENT_SECRET", "client-s3cr3t"),
        ("FLUXLIT_AUTH_COOKIE_SECRETS", secrets),
        ("FLUXLIT_GATEWAY_MAX_PROXY_REQUEST_BODY_BYTES", "200MiB"),
    ];
    let (code, out, err) = config(dir.path(), &["--strict", "--show-origin"], &env);
    assert_eq!(code, 0, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("auth_cookie_secrets "))
        .unwrap_or_else(|| panic!("no auth_cookie_secrets line in {out}"));
    assert!(
        line.contains(r#"["[REDACTED]","[REDACTED]"]"#)
            && line.ends_with("# environment variable FLUXLIT_AUTH_COOKIE_SECRETS"),
        "{line}"
    );
    assert!(
        out.contains("oidc_redirect_uri (register at the provider): https://apps.example.com/myapp/api/auth/callback\n")
            && out.contains("post_logout_redirect_uri (register at the provider): https://apps.example.com/myapp/\n"),
        "{out}"
    );
    let (code, out, err) = config(dir.path(), &["--json"], &env);
    assert_eq!(code, 0, "{out}{err}");
    for secret in ["cookie-secret", "client-s3cr3t"] {
        assert!(!out.contains(secret), "{secret} in {out}");
    }
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["settings"]["auth_cookie_secrets"],
        serde_json::json!(["[REDACTED]", "[REDACTED]"])
    );
    assert_eq!(
        v["computed"]["oidc_redirect_uri"],
        "https://apps.example.com/myapp/api/auth/callback"
    );
}

#[test]
fn human_output_shows_origins_and_warnings() {
    let dir = fluxlit_testkit::TempDir::new("config-text");
    let (code, out, _) = config(dir.path(), &["--show-origin", "--root-path", "/myapp"], &[]);
    assert_eq!(code, 0);
    assert!(
        out.contains("root_path") && out.contains("# command-line flag --root-path"),
        "{out}"
    );
    assert!(out.contains("[WARN] subpath_without_trust_proxy"), "{out}");
    assert!(out.contains("[WARN] oauth_public_base_url"), "{out}");
    // --strict turns warnings into a failure.
    let (code, _, _) = config(dir.path(), &["--strict", "--root-path", "/myapp"], &[]);
    assert_eq!(code, 1);
}

#[test]
fn a_correct_subpath_setup_is_clean_even_with_strict() {
    let dir = fluxlit_testkit::TempDir::new("config-subpath");
    let env = [
        ("FLUXLIT_ROOT_PATH", "/myapp"),
        ("FLUXLIT_PUBLIC_BASE_URL", "https://example.com/myapp"),
        ("FLUXLIT_TRUST_PROXY", "true"),
        ("FLUXLIT_FORWARDED_ALLOW_IPS", "10.0.0.0/8"),
        ("FLUXLIT_GATEWAY_MAX_PROXY_REQUEST_BODY_BYTES", "64MiB"),
    ];
    let (code, out, err) = config(dir.path(), &["--strict"], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Warnings:\n  (none)"), "{out}");
}

#[test]
fn cors_wildcard_with_credentials_is_a_warning_and_fails_strict() {
    let dir = fluxlit_testkit::TempDir::new("config-cors");
    let env = [
        ("FLUXLIT_CORS_ALLOW_ORIGINS", "[\"*\"]"),
        ("FLUXLIT_CORS_ALLOW_CREDENTIALS", "true"),
        ("FLUXLIT_ENABLE_SECURITY_HEADERS", "true"),
    ];
    let (code, out, err) = config(dir.path(), &[], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("[WARN] cors_wildcard_with_credentials"),
        "{out}"
    );
    let (code, _, _) = config(dir.path(), &["--strict"], &env);
    assert_eq!(code, 1);
    // Without credentials a wildcard is fine.
    let (_, out, _) = config(dir.path(), &[], &env[..1]);
    assert!(!out.contains("cors_wildcard_with_credentials"), "{out}");
}

#[test]
fn exit_codes() {
    let dir = fluxlit_testkit::TempDir::new("config-exit");
    // Error-level finding.
    let (code, out, _) = config(
        dir.path(),
        &[],
        &[("FLUXLIT_PUBLIC_BASE_URL", "example.com")],
    );
    assert_eq!(code, 1);
    assert!(out.contains("[ERROR] public_base_url_invalid"), "{out}");
    // Malformed value: one clear error naming key, value and source.
    let (code, out, err) = config(
        dir.path(),
        &["--json"],
        &[("FLUXLIT_GATEWAY_UPSTREAM_READ_TIMEOUT_S", "forever")],
    );
    assert_eq!(code, 1, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["errors"][0]["key"], "gateway_upstream_read_timeout_s");
    assert_eq!(v["errors"][0]["value"], "forever");
    assert_eq!(
        v["errors"][0]["origin"]["var"],
        "FLUXLIT_GATEWAY_UPSTREAM_READ_TIMEOUT_S"
    );
    // Usage error.
    let (code, _, _) = config(dir.path(), &["--no-such-flag"], &[]);
    assert_eq!(code, 2);
}

#[test]
fn kubernetes_service_variables_do_not_break_loading() {
    let dir = fluxlit_testkit::TempDir::new("config-k8s");
    let env = [
        ("FLUXLIT_SERVICE_HOST", "10.96.0.12"),
        ("FLUXLIT_SERVICE_PORT", "8000"),
        ("FLUXLIT_PORT", "tcp://10.96.0.12:8000"),
        ("FLUXLIT_PORT_8000_TCP", "tcp://10.96.0.12:8000"),
        ("FLUXLIT_PORT_8000_TCP_PROTO", "tcp"),
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
    ];
    let (code, out, err) = config(dir.path(), &["--json"], &env);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let codes: Vec<&str> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, vec!["unknown_env"; 5], "{out}");
    assert_eq!(v["settings"]["gateway_port"], 8000);
}

#[test]
fn strict_startup_refuses_to_run_on_warnings() {
    let dir = support::example_copy();
    let out = support::command(dir.path(), &["run", "--port", "0", "--root-path", "/myapp"])
        .env("FLUXLIT_STRICT_STARTUP", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to start (strict_startup is on)")
            && err.contains("subpath_without_trust_proxy"),
        "{err}"
    );
}

/// Issue 12 §6: a `.env` in the project directory is read (below the environment, above the
/// project file) and `--show-origin` names it; pydantic's boolean words and Uvicorn's level
/// names are accepted there.
#[test]
fn dotenv_is_read_and_named_by_show_origin() {
    let dir = fluxlit_testkit::TempDir::new("config-dotenv");
    std::fs::write(
        dir.path().join("fluxlit.toml"),
        "gateway_port = 9000\nroot_path = \"/file\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "FLUXLIT_GATEWAY_PORT=9100\nFLUXLIT_ROOT_PATH=/dotenv\nFLUXLIT_ENABLE_SECURITY_HEADERS=y\nFLUXLIT_LOG_LEVEL=WARNING\n",
    )
    .unwrap();
    let env = [("FLUXLIT_ROOT_PATH", "/env")];
    let (code, out, err) = config(dir.path(), &["--show-origin"], &env);
    assert_eq!(code, 0, "{out}{err}");
    let dotenv = dir.path().join(".env").display().to_string();
    let line = |key: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} in:\n{out}"))
            .to_owned()
    };
    assert!(
        line("gateway_port").contains(&format!("= 9100    # {dotenv} (FLUXLIT_GATEWAY_PORT)")),
        "{out}"
    );
    assert!(
        line("root_path").contains("\"/env\"    # environment variable FLUXLIT_ROOT_PATH"),
        "the environment beats .env:\n{out}"
    );
    assert!(line("enable_security_headers").contains("= true"), "{out}");
    assert!(line("log_level").contains("= \"warn\""), "{out}");
    let (code, out, err) = config(dir.path(), &["--json"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["origins"]["gateway_port"]["source"], "dotenv");
    assert_eq!(v["origins"]["gateway_port"]["var"], "FLUXLIT_GATEWAY_PORT");
    assert_eq!(v["origins"]["gateway_port"]["path"], dotenv.as_str());
}

/// Issue 12 §6: `trust_proxy` with no allow-list trusts loopback only; `fluxlit config` says so
/// with the fix, as a warning (so `--strict` refuses it).
#[test]
fn trust_proxy_without_allow_list_is_a_warning_with_the_fix() {
    let dir = fluxlit_testkit::TempDir::new("config-loopback");
    // A body cap, so that this is the only warning.
    let env = [("FLUXLIT_GATEWAY_MAX_PROXY_REQUEST_BODY_BYTES", "64MiB")];
    let (code, out, err) = config(dir.path(), &["--proxy-headers"], &env);
    assert_eq!(code, 0, "a warning, not an error: {out}{err}");
    let line = out
        .lines()
        .find(|l| l.contains("[WARN] forwarded_allow_ips_loopback_only"))
        .unwrap_or_else(|| panic!("no warning in:\n{out}"));
    assert!(
        line.contains("loopback peers only") && line.contains("FLUXLIT_FORWARDED_ALLOW_IPS"),
        "{line}"
    );
    let (code, _, _) = config(dir.path(), &["--proxy-headers", "--strict"], &env);
    assert_eq!(code, 1);
    let (code, out, _) = config(
        dir.path(),
        &[
            "--proxy-headers",
            "--forwarded-allow-ips",
            "127.0.0.1",
            "--strict",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}");
}

/// Issue 12 §6: `--workbench` turns trust_proxy on, and says so as its origin.
#[test]
fn workbench_flag_turns_proxy_trust_on() {
    let dir = fluxlit_testkit::TempDir::new("config-workbench");
    let (code, out, err) = config(dir.path(), &["--json", "--workbench"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["settings"]["trust_proxy"], true);
    assert_eq!(v["origins"]["trust_proxy"]["flag"], "--workbench");
}
