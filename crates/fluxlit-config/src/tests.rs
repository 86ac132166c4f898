use super::*;
use std::fs;

struct Dir(PathBuf);
impl Dir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "fluxlit-config-test-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn write(&self, name: &str, text: &str) {
        fs::write(self.0.join(name), text).unwrap();
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn load_in(dir: &Dir, env: &[(&str, &str)], cli: CliOverrides) -> Result<Loaded, ConfigError> {
    load(&LoadOptions::new(
        &dir.0,
        Environment::from_pairs(env.iter().copied()),
        cli,
    ))
}

#[test]
fn defaults_apply_with_no_sources() {
    let d = Dir::new("defaults");
    let l = load_in(&d, &[], CliOverrides::default()).unwrap();
    assert_eq!(l.settings.gateway_host, "127.0.0.1");
    assert_eq!(l.settings.gateway_port, 8000);
    assert_eq!(l.settings.api_mount_path, "/api");
    assert_eq!(l.settings.root_path, "");
    assert_eq!(l.settings.target, "app.py");
    assert_eq!(l.settings.pidfile, ".fluxlit.pid");
    assert_eq!(l.settings.streamlit_python, "python3");
    assert_eq!(l.origin("gateway_port"), &Origin::Default);
    assert!(l.project_file.is_none());
}

#[test]
fn precedence_cli_over_env_over_file_over_default() {
    let d = Dir::new("precedence");
    d.write(
        "fluxlit.toml",
        "gateway_port = 9000\nroot_path = \"/file\"\ntarget = \"f.py\"\n",
    );
    // file only
    let l = load_in(&d, &[], CliOverrides::default()).unwrap();
    assert_eq!(l.settings.gateway_port, 9000);
    assert_eq!(l.settings.root_path, "/file");
    assert_eq!(
        l.origin("gateway_port"),
        &Origin::File {
            path: d.0.join("fluxlit.toml"),
            line: Some(1)
        }
    );
    // env beats file (FluxLit for Python gets this backwards for host/port)
    let env = [
        ("FLUXLIT_GATEWAY_PORT", "9100"),
        ("fluxlit_root_path", "/env"),
    ];
    let l = load_in(&d, &env, CliOverrides::default()).unwrap();
    assert_eq!(l.settings.gateway_port, 9100);
    assert_eq!(l.settings.root_path, "/env");
    assert_eq!(l.settings.target, "f.py");
    assert_eq!(
        l.origin("gateway_port").to_string(),
        "environment variable FLUXLIT_GATEWAY_PORT"
    );
    // CLI beats env
    let mut cli = CliOverrides::default();
    cli.set("gateway_port", "9200", "--port");
    let l = load_in(&d, &env, cli).unwrap();
    assert_eq!(l.settings.gateway_port, 9200);
    assert_eq!(
        l.origin("gateway_port").to_string(),
        "command-line flag --port"
    );
    assert_eq!(l.settings.root_path, "/env");
}

#[test]
fn pyproject_is_read_and_fluxlit_toml_wins() {
    let d = Dir::new("pyproject");
    d.write(
        "pyproject.toml",
        "[project]\nname = \"x\"\n\n[tool.fluxlit]\ngateway_port = 7000\n",
    );
    let l = load_in(&d, &[], CliOverrides::default()).unwrap();
    assert_eq!(l.settings.gateway_port, 7000);
    assert_eq!(
        l.origin("gateway_port"),
        &Origin::File {
            path: d.0.join("pyproject.toml"),
            line: Some(5)
        }
    );
    d.write("fluxlit.toml", "gateway_port = 7100\n");
    let l = load_in(&d, &[], CliOverrides::default()).unwrap();
    assert_eq!(l.settings.gateway_port, 7100);
    assert!(l.warnings.iter().any(|w| w.code == "project_file_shadowed"));
}

#[test]
fn every_problem_is_collected_with_source_and_fix() {
    let d = Dir::new("problems");
    d.write("fluxlit.toml", "gateway_prot = 1\nroot_path = 5\n");
    let env = [
        ("FLUXLIT_GATEWAY_PORT", "80x"),
        ("FLUXLIT_NO_PIDFILE", "maybe"),
    ];
    let mut cli = CliOverrides::default();
    cli.set("graceful_shutdown_timeout_s", "-3", "--grace");
    let err = load_in(&d, &env, cli).unwrap_err();
    let text = err.to_string();
    assert_eq!(err.problems.len(), 5, "{text}");
    assert!(text.contains("did you mean `gateway_port`"), "{text}");
    assert!(text.contains("fluxlit.toml:1"), "{text}");
    assert!(text.contains("root_path = \"5\" (from"), "{text}");
    assert!(text.contains("fluxlit.toml:2"), "{text}");
    assert!(
        text.contains("gateway_port = \"80x\" (from environment variable FLUXLIT_GATEWAY_PORT)"),
        "{text}"
    );
    assert!(text.contains("no_pidfile = \"maybe\""), "{text}");
    assert!(text.contains("command-line flag --grace"), "{text}");
}

#[test]
fn malformed_toml_reports_position() {
    let d = Dir::new("malformed");
    d.write(
        "fluxlit.toml",
        "gateway_port = 1\nroot_path = \"unterminated\n",
    );
    let err = load_in(&d, &[], CliOverrides::default()).unwrap_err();
    assert_eq!(err.problems.len(), 1);
    assert_eq!(
        err.problems[0].origin,
        Origin::File {
            path: d.0.join("fluxlit.toml"),
            line: Some(2)
        }
    );
}

#[test]
fn unknown_env_is_a_warning_and_other_env_is_ignored() {
    let d = Dir::new("unknownenv");
    let env = [
        ("FLUXLIT_SERVICE_PORT", "tcp://10.0.0.1:8000"),
        ("FLUXLIT_GATEWAY_PORTT", "1"),
        ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
        ("FLUXLIT_INTERNAL_API_BASE", "http://x"),
    ];
    let l = load_in(&d, &env, CliOverrides::default()).unwrap();
    assert_eq!(l.warnings.len(), 2, "{:?}", l.warnings);
    assert!(
        l.warnings
            .iter()
            .any(|w| w.message.contains("did you mean FLUXLIT_GATEWAY_PORT"))
    );
}

#[test]
fn cross_key_checks() {
    let d = Dir::new("cross");
    let env = [
        ("FLUXLIT_API_UPSTREAM", "http://127.0.0.1:9000"),
        ("FLUXLIT_API_COMMAND", "uvicorn api:app --port {port}"),
        (
            "FLUXLIT_STREAMLIT_RUN_CLI_ARGS",
            "--server.port=1,--theme.base=dark",
        ),
        ("FLUXLIT_API_MOUNT_PATH", "/"),
    ];
    let err = load_in(&d, &env, CliOverrides::default()).unwrap_err();
    let text = err.to_string();
    assert_eq!(err.problems.len(), 3, "{text}");
    assert!(text.contains("not both"), "{text}");
    assert!(text.contains("--server.port=1"), "{text}");
    assert!(text.contains("api_mount_path"), "{text}");
}

#[test]
fn lists_durations_and_aliases() {
    let d = Dir::new("types");
    d.write(
        "fluxlit.toml",
        "streamlit_run_cli_args = [\"--theme.base\", \"dark\"]\nsidecar_start_timeout_s = \"2m\"\n",
    );
    let env = [("FLUXLIT_UVICORN_GRACEFUL_SHUTDOWN_TIMEOUT_S", "2.5")];
    let l = load_in(&d, &env, CliOverrides::default()).unwrap();
    assert_eq!(
        l.settings.streamlit_run_cli_args,
        vec!["--theme.base", "dark"]
    );
    assert_eq!(l.settings.sidecar_start_timeout_s, Duration::from_secs(120));
    assert_eq!(
        l.settings.graceful_shutdown_timeout_s,
        Duration::from_millis(2500)
    );
    assert_eq!(
        l.origin("graceful_shutdown_timeout_s").to_string(),
        "environment variable FLUXLIT_UVICORN_GRACEFUL_SHUTDOWN_TIMEOUT_S"
    );
}

#[test]
fn python_defaults_follow_virtual_env_then_dot_venv() {
    let d = Dir::new("python");
    let l = load_in(&d, &[("VIRTUAL_ENV", "/opt/v")], CliOverrides::default()).unwrap();
    assert_eq!(l.settings.streamlit_python, "/opt/v/bin/python");
    fs::create_dir_all(d.0.join(".venv/bin")).unwrap();
    fs::write(d.0.join(".venv/bin/python"), "").unwrap();
    let l = load_in(&d, &[], CliOverrides::default()).unwrap();
    assert_eq!(
        l.settings.streamlit_python,
        d.0.join(".venv/bin/python").display().to_string()
    );
}

#[test]
fn python_default_is_the_venv_fluxlit_is_installed_in_when_it_has_streamlit() {
    let d = Dir::new("installed");
    let venv = d.0.join("venv");
    fs::create_dir_all(venv.join("bin")).unwrap();
    fs::write(venv.join("bin/python"), "").unwrap();
    fs::write(venv.join("bin/fluxlit"), "").unwrap();
    fs::write(venv.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
    let project = d.0.join("project");
    fs::create_dir_all(&project).unwrap();
    let load_with_exe = |env: &[(&str, &str)]| {
        let mut opts = LoadOptions::new(
            &project,
            Environment::from_pairs(env.iter().copied()),
            CliOverrides::default(),
        );
        opts.executable = Some(venv.join("bin/fluxlit"));
        load(&opts).unwrap()
    };
    // A venv without Streamlit (pipx, say) is not the default.
    assert_eq!(load_with_exe(&[]).settings.streamlit_python, "python3");
    fs::create_dir_all(venv.join("lib/python3.11/site-packages/streamlit")).unwrap();
    let l = load_with_exe(&[]);
    assert_eq!(
        l.settings.streamlit_python,
        venv.join("bin/python").display().to_string()
    );
    // VIRTUAL_ENV still wins.
    let l = load_with_exe(&[("VIRTUAL_ENV", "/opt/v")]);
    assert_eq!(l.settings.streamlit_python, "/opt/v/bin/python");
}

#[test]
fn auth_modes_and_forward_settings() {
    let d = Dir::new("auth");
    let l = load_in(
        &d,
        &[
            ("FLUXLIT_AUTH_MODE", "forward"),
            ("FLUXLIT_AUTH_FORWARD_TRUSTED_CIDRS", "10.0.0.5, fd00::/8"),
            ("FLUXLIT_AUTH_FORWARD_USER_HEADER", "X-Pomerium-Claim-Email"),
        ],
        CliOverrides::default(),
    )
    .unwrap();
    assert_eq!(l.settings.auth_mode, AuthMode::Forward);
    assert_eq!(
        l.settings.auth_forward_trusted_cidrs,
        ["10.0.0.5", "fd00::/8"]
    );
    assert_eq!(
        l.settings.auth_forward_user_header,
        "X-Pomerium-Claim-Email"
    );
    assert_eq!(l.settings.auth_forward_headers.len(), 5, "the defaults");
    assert_eq!(
        l.origin("auth_mode").to_string(),
        "environment variable FLUXLIT_AUTH_MODE"
    );

    for (env, key, value) in [
        (
            vec![("FLUXLIT_AUTH_MODE", "jwt"), ("FLUXLIT_JWT_ISSUER", "idp")],
            "jwt_audience",
            "[]",
        ),
        (
            vec![("FLUXLIT_AUTH_MODE", "oidc")],
            "auth_cookie_secrets",
            "[]",
        ),
        (
            vec![("FLUXLIT_AUTH_MODE", "forward")],
            "auth_forward_trusted_cidrs",
            "[]",
        ),
        (
            vec![
                ("FLUXLIT_AUTH_MODE", "forward"),
                ("FLUXLIT_AUTH_FORWARD_TRUSTED_CIDRS", "10.0.0.0/33"),
            ],
            "auth_forward_trusted_cidrs",
            "10.0.0.0/33",
        ),
        (
            vec![("FLUXLIT_AUTH_FORWARD_USER_HEADER", "X User")],
            "auth_forward_user_header",
            "X User",
        ),
    ] {
        let err = load_in(&d, &env, CliOverrides::default()).unwrap_err();
        let p = err
            .problems
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("{env:?}: no problem for {key}: {err}"));
        assert_eq!(p.value.as_deref(), Some(value), "{env:?}");
        let from_env = p.origin.to_string().contains("FLUXLIT_");
        assert_eq!(from_env, value != "[]", "{env:?}: {}", p.origin);
    }
}

#[test]
fn explicit_config_file_must_exist() {
    let d = Dir::new("explicit");
    let err = load_in(
        &d,
        &[("FLUXLIT_CONFIG", "nope.toml")],
        CliOverrides::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("nope.toml"), "{err}");
}

#[test]
fn every_default_parses_as_its_kind() {
    for k in schema::KEYS {
        if !k.kind.optional() {
            assert!(
                value::convert(k.kind, &value::Raw::Text(k.default.to_owned())).is_ok(),
                "default of {} ({:?}) does not parse as {:?}",
                k.name,
                k.default,
                k.kind
            );
        }
    }
}

#[test]
fn public_base_url_falls_back_to_the_platform_variable() {
    let d = Dir::new("pbu");
    let l = load_in(
        &d,
        &[("PUBLIC_BASE_URL", "https://a.example/x")],
        CliOverrides::default(),
    )
    .unwrap();
    assert_eq!(l.settings.public_base_url, "https://a.example/x");
    assert_eq!(
        l.origin("public_base_url").to_string(),
        "environment variable PUBLIC_BASE_URL"
    );
    let env = [
        ("PUBLIC_BASE_URL", "https://a.example/x"),
        ("FLUXLIT_PUBLIC_BASE_URL", "https://b.example/y"),
    ];
    let l = load_in(&d, &env, CliOverrides::default()).unwrap();
    assert_eq!(l.settings.public_base_url, "https://b.example/y");
}

#[test]
fn secrets_are_redacted_in_errors_debug_and_serialization() {
    let d = Dir::new("secrets");
    d.write("fluxlit.toml", "jwt_hs256_secret = 12345\n");
    let err = load_in(&d, &[], CliOverrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("[REDACTED]") && !err.contains("12345"),
        "{err}"
    );
    let env = [
        ("FLUXLIT_OIDC_BFF_SECRET", "s3cr3t-value"),
        ("FLUXLIT_JWT_HS256_SECRET", "another-s3cr3t"),
    ];
    let l = load_in(&Dir::new("secrets2"), &env, CliOverrides::default()).unwrap();
    assert_eq!(l.settings.oidc_bff_secret.expose(), "s3cr3t-value");
    let debug = format!("{:?}", l.settings);
    let json = serde_json::to_string(&l.settings).unwrap();
    for text in [debug, json] {
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains("[REDACTED]"));
    }
    // The warning about the unused keys names them, never their values.
    let found = serde_json::to_string(&auth_keys_unused(&l, &env)).unwrap();
    assert!(
        found.contains("jwt_hs256_secret") && found.contains("oidc_bff_secret"),
        "{found}"
    );
    assert!(!found.contains("s3cr3t"), "{found}");
}

/// The `auth_keys_unused` finding of `l`, if any.
fn auth_keys_unused(l: &Loaded, env: &[(&str, &str)]) -> Option<findings::Finding> {
    let found = findings::findings(l, &Environment::from_pairs(env.iter().copied()));
    let mut it = found.into_iter().filter(|f| f.code == "auth_keys_unused");
    let first = it.next();
    assert!(it.next().is_none(), "one auth_keys_unused finding at most");
    first
}

/// Nothing reads the JWT and OIDC keys yet: setting any of them is a warning (so `--strict`
/// and `strict_startup` refuse it) naming each key and where it came from, never its value.
#[test]
fn jwt_and_oidc_keys_have_no_effect_and_say_so() {
    let d = Dir::new("auth-unused");
    d.write("fluxlit.toml", "oidc_client_secret = \"file-s3cr3t\"\n");
    let env = [
        ("FLUXLIT_JWT_ISSUER", "https://idp.example"),
        ("FLUXLIT_JWT_LEEWAY_SECONDS", "30"),
    ];
    let mut cli = CliOverrides::default();
    cli.set("oidc_issuer", "https://login.example", "--oidc-issuer");
    let l = load_in(&d, &env, cli).unwrap();
    let f = auth_keys_unused(&l, &env).expect("an auth_keys_unused finding");
    assert_eq!(f.level, findings::Level::Warn);
    for part in [
        "jwt_issuer (from environment variable FLUXLIT_JWT_ISSUER)",
        "jwt_leeway_seconds (from environment variable FLUXLIT_JWT_LEEWAY_SECONDS)",
        "oidc_issuer (from command-line flag --oidc-issuer)",
        "oidc_client_secret (from ",
        "fluxlit.toml:1)",
        "are set, but they have no effect with auth_mode = off (from default)",
    ] {
        assert!(
            f.message.contains(part),
            "{part:?} missing from {}",
            f.message
        );
    }
    for absent in [
        "jwt_audience",
        "jwt_hs256_secret",
        "oidc_bff_secret (from",
        "s3cr3t",
        "idp.example",
    ] {
        assert!(!f.message.contains(absent), "{absent:?} in {}", f.message);
    }

    // One key: singular wording.
    let env = [("FLUXLIT_OIDC_BFF_SECRET", "x")];
    let l = load_in(&Dir::new("auth-one"), &env, CliOverrides::default()).unwrap();
    let f = auth_keys_unused(&l, &env).expect("an auth_keys_unused finding");
    assert!(
        f.message.starts_with(
            "oidc_bff_secret (from environment variable FLUXLIT_OIDC_BFF_SECRET) is set, but it has no effect"
        ),
        "{}",
        f.message
    );

    // Unset, or set to the default (an empty template value), is no finding.
    let env = [
        ("FLUXLIT_JWT_ISSUER", ""),
        ("FLUXLIT_JWT_LEEWAY_SECONDS", "0"),
    ];
    let l = load_in(&Dir::new("auth-empty"), &env, CliOverrides::default()).unwrap();
    assert_eq!(auth_keys_unused(&l, &env), None);
    let l = load_in(&Dir::new("auth-none"), &[], CliOverrides::default()).unwrap();
    assert_eq!(auth_keys_unused(&l, &[]), None);
}

/// With auth_mode = jwt the jwt_* keys are read, so they are no `auth_keys_unused` finding;
/// the oidc_* keys still are (read with auth_mode = oidc only), and the message names the
/// mode's source.
#[test]
fn jwt_keys_are_used_in_jwt_mode_only() {
    let env = [
        ("FLUXLIT_AUTH_MODE", "jwt"),
        ("FLUXLIT_JWT_ISSUER", "https://idp.example"),
        ("FLUXLIT_JWT_AUDIENCE", "api"),
        ("FLUXLIT_JWT_JWKS_URL", "https://idp.example/jwks"),
        ("FLUXLIT_JWT_LEEWAY_SECONDS", "5"),
    ];
    let l = load_in(&Dir::new("jwt-used"), &env, CliOverrides::default()).unwrap();
    assert_eq!(
        auth_keys_unused(&l, &env),
        None,
        "jwt mode reads the jwt keys"
    );
    let mut with_oidc = env.to_vec();
    with_oidc.push(("FLUXLIT_OIDC_ISSUER", "https://idp.example"));
    let l = load_in(&Dir::new("jwt-oidc"), &with_oidc, CliOverrides::default()).unwrap();
    let f = auth_keys_unused(&l, &with_oidc).expect("the oidc key is still unused");
    assert!(
        f.message.starts_with(
            "oidc_issuer (from environment variable FLUXLIT_OIDC_ISSUER) is set, but it has no effect with auth_mode = jwt (from environment variable FLUXLIT_AUTH_MODE)"
        ),
        "{}",
        f.message
    );
    assert!(!f.message.contains("jwt_issuer (from"), "{}", f.message);
    // With auth_mode = oidc the jwt keys check API requests without a session when jwt_issuer
    // is set; without it they do nothing.
    let env = oidc_env(&[
        ("FLUXLIT_JWT_ISSUER", "https://idp.example"),
        ("FLUXLIT_JWT_AUDIENCE", "api"),
    ]);
    let l = load_in(&Dir::new("jwt-in-oidc"), &env, CliOverrides::default()).unwrap();
    assert_eq!(
        auth_keys_unused(&l, &env),
        None,
        "oidc with jwt_issuer reads them"
    );
    let env = oidc_env(&[("FLUXLIT_JWT_AUDIENCE", "api")]);
    let l = load_in(&Dir::new("jwt-aud-oidc"), &env, CliOverrides::default()).unwrap();
    let f = auth_keys_unused(&l, &env).expect("jwt_audience alone is unused in oidc mode");
    assert!(f.message.starts_with("jwt_audience (from"), "{}", f.message);
    // The same jwt keys with auth_mode = forward are unused again.
    let env = [
        ("FLUXLIT_AUTH_MODE", "forward"),
        ("FLUXLIT_AUTH_FORWARD_TRUSTED_CIDRS", "10.0.0.5"),
        ("FLUXLIT_JWT_AUDIENCE", "api"),
    ];
    let l = load_in(&Dir::new("jwt-fwd"), &env, CliOverrides::default()).unwrap();
    let f = auth_keys_unused(&l, &env).expect("jwt keys unused in forward mode");
    assert!(
        f.message.contains(
            "no effect with auth_mode = forward (from environment variable FLUXLIT_AUTH_MODE)"
        ),
        "{}",
        f.message
    );
}

/// JWT mode loads with an issuer, one audience or a list, and keys from a JWKS URL, a secret
/// or discovery; what is missing or malformed is an error naming key, value and source.
#[test]
fn jwt_settings_are_validated() {
    let env = [
        ("FLUXLIT_AUTH_MODE", "jwt"),
        ("FLUXLIT_JWT_ISSUER", "https://idp.example/realms/main"),
        ("FLUXLIT_JWT_AUDIENCE", "api, ui"),
        (
            "FLUXLIT_JWT_JWKS_URL",
            "https://idp.example/realms/main/certs",
        ),
        ("FLUXLIT_JWT_LEEWAY_SECONDS", "5"),
    ];
    let l = load_in(&Dir::new("jwt-ok"), &env, CliOverrides::default()).unwrap();
    assert_eq!(l.settings.auth_mode, AuthMode::Jwt);
    assert_eq!(l.settings.jwt_audience, ["api", "ui"]);
    assert_eq!(l.settings.jwt_leeway_seconds, 5);
    // Discovery: the issuer alone names the keys; a JSON list for the audience.
    let env = [
        ("FLUXLIT_AUTH_MODE", "jwt"),
        ("FLUXLIT_JWT_ISSUER", "https://idp.example"),
        ("FLUXLIT_JWT_AUDIENCE", "[\"api\"]"),
    ];
    let l = load_in(&Dir::new("jwt-disc"), &env, CliOverrides::default()).unwrap();
    assert_eq!(l.settings.jwt_audience, ["api"]);

    let mut cli = CliOverrides::default();
    cli.set("auth_mode", "jwt", "--auth-mode");
    let err = load_in(&Dir::new("jwt-empty"), &[], cli).unwrap_err();
    let p = problem_about(&err, "jwt_issuer");
    assert!(
        p.expected
            .ends_with("because auth_mode is jwt (from command-line flag --auth-mode)"),
        "{p}"
    );
    let p = problem_about(&err, "jwt_audience");
    assert_eq!(p.value.as_deref(), Some("[]"));
    assert_eq!(err.problems.len(), 2, "{err}");

    let env = [
        ("FLUXLIT_AUTH_MODE", "jwt"),
        ("FLUXLIT_JWT_ISSUER", "idp"),
        ("FLUXLIT_JWT_AUDIENCE", "api"),
        ("FLUXLIT_JWT_HS256_SECRET", "short-s3cr3t"),
    ];
    let err = load_in(&Dir::new("jwt-short"), &env, CliOverrides::default()).unwrap_err();
    let p = problem_about(&err, "jwt_hs256_secret");
    assert_eq!(p.value.as_deref(), Some("[REDACTED]"));
    assert!(p.expected.contains("at least 32 bytes"), "{p}");
    assert_eq!(
        p.origin.to_string(),
        "environment variable FLUXLIT_JWT_HS256_SECRET"
    );
    assert!(!err.to_string().contains("s3cr3t"), "{err}");
    assert_eq!(err.problems.len(), 1, "{err}");

    let env = [
        ("FLUXLIT_AUTH_MODE", "jwt"),
        ("FLUXLIT_JWT_ISSUER", "idp"),
        ("FLUXLIT_JWT_AUDIENCE", "api"),
    ];
    let err = load_in(&Dir::new("jwt-nokeys"), &env, CliOverrides::default()).unwrap_err();
    let p = problem_about(&err, "jwt_issuer");
    assert_eq!(p.value.as_deref(), Some("idp"));
    assert!(p.expected.contains("discovery"), "{p}");

    for url in ["ftp://idp.example/keys", "https://", "https://idp example/"] {
        let env = [("FLUXLIT_JWT_JWKS_URL", url)];
        let err = load_in(&Dir::new("jwt-url"), &env, CliOverrides::default()).unwrap_err();
        let p = problem_about(&err, "jwt_jwks_url");
        assert_eq!(p.value.as_deref(), Some(url));
        assert_eq!(
            p.origin.to_string(),
            "environment variable FLUXLIT_JWT_JWKS_URL"
        );
    }
}

/// The problem about `key` in `err`.
fn problem_about<'a>(err: &'a ConfigError, key: &str) -> &'a Problem {
    err.problems
        .iter()
        .find(|p| p.key == key)
        .unwrap_or_else(|| panic!("no problem about {key}: {err}"))
}

/// A FluxLit-for-Python deployment's environment, in the forms Python accepts (JSON lists and
/// objects, float seconds, `1`/`true` booleans), loads unchanged.
#[test]
fn a_python_deployment_environment_loads_unchanged() {
    let env = [
        ("FLUXLIT_GATEWAY_HOST", "0.0.0.0"),
        ("FLUXLIT_GATEWAY_PORT", "8000"),
        ("FLUXLIT_LOG_LEVEL", "info"),
        ("FLUXLIT_API_MOUNT_PATH", "v1/"),
        ("FLUXLIT_ROOT_PATH", "/myapp"),
        ("FLUXLIT_STREAMLIT_PUBLIC_PATH", ""),
        ("FLUXLIT_TRUST_PROXY", "1"),
        ("FLUXLIT_FORWARDED_ALLOW_IPS", "10.0.0.0/8,127.0.0.1"),
        ("FLUXLIT_ENABLE_GATEWAY_ACCESS_LOG", "true"),
        ("FLUXLIT_DEBUG", "0"),
        ("FLUXLIT_ENABLE_GATEWAY_PROMETHEUS_METRICS", "yes"),
        (
            "FLUXLIT_GATEWAY_PROMETHEUS_METRICS_PATH",
            "__fluxlit/metrics",
        ),
        ("FLUXLIT_GATEWAY_UPSTREAM_CONNECT_TIMEOUT_S", "5.0"),
        ("FLUXLIT_GATEWAY_UPSTREAM_READ_TIMEOUT_S", "60"),
        ("FLUXLIT_GATEWAY_MAX_PROXY_REQUEST_BODY_BYTES", "209715200"),
        ("FLUXLIT_GATEWAY_MAX_CONCURRENT_UPSTREAM_HTTP", "100"),
        ("FLUXLIT_GATEWAY_HTTPX_MAX_CONNECTIONS", "50"),
        ("FLUXLIT_GATEWAY_HTTPX_MAX_KEEPALIVE_CONNECTIONS", "20"),
        ("FLUXLIT_GATEWAY_WS_OPEN_TIMEOUT_S", "10"),
        ("FLUXLIT_GATEWAY_WS_PING_INTERVAL_S", "20"),
        ("FLUXLIT_GATEWAY_WS_MAX_MESSAGE_BYTES", "1048576"),
        (
            "FLUXLIT_GATEWAY_FORWARD_CLIENT_HEADERS_TO_STREAMLIT",
            "[\"x-tenant\"]",
        ),
        ("FLUXLIT_UVICORN_GRACEFUL_SHUTDOWN_TIMEOUT_S", "25"),
        ("FLUXLIT_ENABLE_SECURITY_HEADERS", "true"),
        (
            "FLUXLIT_CORS_ALLOW_ORIGINS",
            "[\"https://a.example\",\"https://b.example\"]",
        ),
        ("FLUXLIT_CORS_ALLOW_CREDENTIALS", "false"),
        ("FLUXLIT_CORS_MIDDLEWARE_KWARGS", "{\"max_age\": 600}"),
        (
            "FLUXLIT_STREAMLIT_RUN_CLI_ARGS",
            "[\"--theme.base\", \"dark\"]",
        ),
        ("FLUXLIT_STREAMLIT_PAGE_CONFIG", "{\"layout\": \"wide\"}"),
        ("FLUXLIT_PUBLIC_BASE_URL", "https://example.com/myapp"),
        ("FLUXLIT_STRICT_PUBLIC_BASE_URL", "false"),
        ("FLUXLIT_STRICT_STARTUP", "false"),
        ("FLUXLIT_JWT_ISSUER", "https://idp.example"),
        ("FLUXLIT_JWT_AUDIENCE", "fluxlit"),
        ("FLUXLIT_JWT_JWKS_URL", "https://idp.example/jwks"),
        ("FLUXLIT_JWT_LEEWAY_SECONDS", "30"),
        ("FLUXLIT_OIDC_BFF_SECRET", "x"),
        ("FLUXLIT_PIDFILE", "/run/fluxlit.pid"),
    ];
    let l = load_in(&Dir::new("python-env"), &env, CliOverrides::default()).unwrap();
    let s = &l.settings;
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert_eq!(s.api_mount_path, "/v1");
    assert_eq!(s.gateway_prometheus_metrics_path, "/__fluxlit/metrics");
    assert_eq!(s.forwarded_allow_ips, vec!["10.0.0.0/8", "127.0.0.1"]);
    assert_eq!(s.gateway_max_proxy_request_body_bytes, 200 << 20);
    assert_eq!(s.gateway_ws_ping_interval_s, Some(Duration::from_secs(20)));
    assert_eq!(s.cors_allow_origins.len(), 2);
    assert_eq!(s.cors_middleware_kwargs["max_age"], 600);
    assert_eq!(s.streamlit_page_config["layout"], "wide");
    assert_eq!(s.graceful_shutdown_timeout_s, Duration::from_secs(25));
    assert_eq!(
        s.gateway_forward_client_headers_to_streamlit,
        vec!["x-tenant"]
    );
    assert!(s.trust_proxy && s.enable_gateway_prometheus_metrics && s.enable_security_headers);
    // Loads unchanged, but the JWT/OIDC keys do nothing yet: a warning says so.
    let f = auth_keys_unused(&l, &env).expect("the unused JWT/OIDC keys are a finding");
    for key in [
        "jwt_issuer",
        "jwt_audience",
        "jwt_jwks_url",
        "jwt_leeway_seconds",
        "oidc_bff_secret (from environment variable FLUXLIT_OIDC_BFF_SECRET)",
    ] {
        assert!(f.message.contains(key), "{key} missing from {}", f.message);
    }
}

#[test]
fn every_kind_rejects_malformed_values_with_one_error_each() {
    let env = [
        (
            "FLUXLIT_GATEWAY_MAX_PROXY_REQUEST_BODY_BYTES",
            "64 potatoes",
        ),
        ("FLUXLIT_GATEWAY_MAX_CONCURRENT_UPSTREAM_HTTP", "-1"),
        ("FLUXLIT_CORS_MIDDLEWARE_KWARGS", "[1,2]"),
        ("FLUXLIT_SIDECAR_RESTART", "sometimes"),
        ("FLUXLIT_GATEWAY_WS_PING_INTERVAL_S", "soon"),
        ("FLUXLIT_CORS_ALLOW_ORIGINS", "[\"unterminated"),
        ("FLUXLIT_FORWARDED_ALLOW_IPS", "10.0.0.0/99"),
        ("FLUXLIT_GATEWAY_PROMETHEUS_METRICS_PATH", "/api/metrics"),
    ];
    let err = load_in(&Dir::new("malformed-kinds"), &env, CliOverrides::default()).unwrap_err();
    let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys.len(), 8, "{err}");
    for k in [
        "gateway_max_proxy_request_body_bytes",
        "gateway_max_concurrent_upstream_http",
        "cors_middleware_kwargs",
        "sidecar_restart",
        "gateway_ws_ping_interval_s",
        "cors_allow_origins",
        "forwarded_allow_ips",
        "gateway_prometheus_metrics_path",
    ] {
        assert!(keys.contains(&k), "{k} missing from {keys:?}");
    }
    assert!(err.to_string().contains("one of: exit, restart"), "{err}");
}

/// Every pair of sources, for a key of each common kind: the higher source wins and the
/// origin says so.
#[test]
fn precedence_matrix_for_every_source_pair() {
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Src {
        Default,
        File,
        Env,
        Cli,
    }
    let cases = [
        ("gateway_port", ["8000", "9001", "9002", "9003"]),
        ("debug", ["false", "true", "false", "true"]),
        ("root_path", ["", "/f", "/e", "/c"]),
    ];
    let sources = [Src::Default, Src::File, Src::Env, Src::Cli];
    for (key, values) in cases {
        for (i, lo) in sources.iter().enumerate() {
            for hi in &sources[i + 1..] {
                let d = Dir::new("matrix");
                let mut env: Vec<(String, String)> = Vec::new();
                let mut cli = CliOverrides::default();
                for src in [lo, hi] {
                    let v = values[*src as usize];
                    match src {
                        Src::Default => {}
                        Src::File => d.write(
                            "fluxlit.toml",
                            &format!("{key} = {}\n", toml::Value::String(v.to_owned())),
                        ),
                        Src::Env => env.push((schema::env_name(key), v.to_owned())),
                        Src::Cli => cli.set(key, v, "--flag"),
                    }
                }
                let l = load(&LoadOptions::new(&d.0, Environment::from_pairs(env), cli)).unwrap();
                let got = serde_json::to_value(&l.settings).unwrap()[key].clone();
                let want = value::convert(
                    schema::find_key(key).unwrap().kind,
                    &value::Raw::Text(values[*hi as usize].to_owned()),
                )
                .unwrap();
                assert_eq!(got, want, "{key}: {lo:?} vs {hi:?}");
                let origin = l.origin(key);
                let ok = match hi {
                    Src::Default => *origin == Origin::Default,
                    Src::File => matches!(origin, Origin::File { line: Some(1), .. }),
                    Src::Env => matches!(origin, Origin::Env { .. }),
                    Src::Cli => matches!(origin, Origin::Cli { .. }),
                };
                assert!(ok, "{key}: {lo:?} vs {hi:?}: origin {origin}");
            }
        }
    }
}

#[test]
fn python_only_settings_are_warnings_not_errors() {
    let d = Dir::new("na");
    d.write("fluxlit.toml", "title = \"My app\"\n");
    let l = load_in(
        &d,
        &[("FLUXLIT_URL_SESSION_QUERY_PARAM", "sid")],
        CliOverrides::default(),
    )
    .unwrap();
    let codes: Vec<_> = l.warnings.iter().map(|w| w.code).collect();
    assert_eq!(
        codes,
        vec!["not_applicable", "not_applicable"],
        "{:?}",
        l.warnings
    );
}

/// Issue 12 §6: Uvicorn's level names work (`warning` used to reach the log filter as a target
/// name and silence every line); anything that is not a level is an error naming the source.
#[test]
fn log_level_accepts_uvicorn_names() {
    let d = Dir::new("log-level");
    for (given, want) in [
        ("critical", "error"),
        ("error", "error"),
        ("warning", "warn"),
        ("WARNING", "warn"),
        ("info", "info"),
        ("debug", "debug"),
        ("trace", "trace"),
        (
            "warning,fluxlit_gateway=debug",
            "warn,fluxlit_gateway=debug",
        ),
    ] {
        let l = load_in(&d, &[("FLUXLIT_LOG_LEVEL", given)], CliOverrides::default()).unwrap();
        assert_eq!(l.settings.log_level, want, "{given}");
    }
    let e = load_in(
        &d,
        &[("FLUXLIT_LOG_LEVEL", "verbose")],
        CliOverrides::default(),
    )
    .unwrap_err();
    assert_eq!(e.problems.len(), 1, "{e}");
    assert_eq!(e.problems[0].key, "log_level");
    assert_eq!(e.problems[0].value.as_deref(), Some("verbose"));
    assert_eq!(
        e.problems[0].origin.to_string(),
        "environment variable FLUXLIT_LOG_LEVEL"
    );
    assert!(e.problems[0].expected.contains("warning"), "{e}");
}

/// Issue 12 §6: booleans take what pydantic takes, from every source that gives text.
#[test]
fn booleans_accept_pydantic_words_from_every_source() {
    let d = Dir::new("bools");
    for (word, want) in [
        ("t", true),
        ("Y", true),
        ("on", true),
        ("YES", true),
        ("f", false),
        ("n", false),
        ("OFF", false),
        ("No", false),
    ] {
        let env = [("FLUXLIT_DEBUG", word)];
        let l = load_in(&d, &env, CliOverrides::default()).unwrap();
        assert_eq!(l.settings.debug, want, "env {word}");
        d.write(".env", &format!("FLUXLIT_NO_PIDFILE={word}\n"));
        d.write("fluxlit.toml", &format!("trust_proxy = \"{word}\"\n"));
        let mut cli = CliOverrides::default();
        cli.set("enable_security_headers", word, "--flag");
        let l = load_in(&d, &[], cli).unwrap();
        assert_eq!(l.settings.no_pidfile, want, ".env {word}");
        assert_eq!(l.settings.trust_proxy, want, "file {word}");
        assert_eq!(l.settings.enable_security_headers, want, "cli {word}");
    }
    let e = load_in(&d, &[("FLUXLIT_DEBUG", "maybe")], CliOverrides::default()).unwrap_err();
    assert!(
        e.problems[0].expected.contains("t/f") && e.problems[0].expected.contains("y/n"),
        "{e}"
    );
}

/// Issue 12 §6: `.env` in the project directory sits below the environment and above the
/// project file, names its origin, never leaks into the environment snapshot, and is parsed
/// like python-dotenv (quotes, `export`, comments, any-case names).
#[test]
fn dotenv_file_is_a_layer_between_environment_and_project_file() {
    let d = Dir::new("dotenv");
    d.write(
        "fluxlit.toml",
        "gateway_port = 9000\nroot_path = \"/file\"\nlog_level = \"debug\"\n",
    );
    d.write(
        ".env",
        "# deployment settings\nFLUXLIT_GATEWAY_PORT=9100\nexport FLUXLIT_ROOT_PATH=\"/dotenv\"\nfluxlit_log_level='warning' # Uvicorn's name\nOTHER_TOOL=1\nFLUXLIT_GATEWAY_PROT=1\nFLUXLIT_TITLE=Mine\nFLUXLIT_APP=app:app\n",
    );
    let l = load_in(&d, &[], CliOverrides::default()).unwrap();
    assert_eq!(l.settings.gateway_port, 9100, ".env beats the project file");
    assert_eq!(l.settings.root_path, "/dotenv");
    assert_eq!(l.settings.log_level, "warn");
    let dotenv = d.0.join(".env");
    assert_eq!(
        l.origin("gateway_port"),
        &Origin::DotEnv {
            path: dotenv.clone(),
            var: "FLUXLIT_GATEWAY_PORT".into()
        }
    );
    assert_eq!(
        l.origin("log_level").to_string(),
        format!("{} (fluxlit_log_level)", dotenv.display())
    );
    let codes: Vec<&str> = l.warnings.iter().map(|w| w.code).collect();
    assert_eq!(codes, ["unknown_env", "not_applicable"], "{:?}", l.warnings);
    assert!(
        l.warnings[0]
            .message
            .contains(".env (FLUXLIT_GATEWAY_PROT)")
            && l.warnings[0].message.contains("FLUXLIT_GATEWAY_PORT"),
        "{:?}",
        l.warnings
    );
    // The real environment beats .env.
    let l = load_in(
        &d,
        &[("FLUXLIT_GATEWAY_PORT", "9200")],
        CliOverrides::default(),
    )
    .unwrap();
    assert_eq!(l.settings.gateway_port, 9200);
    assert_eq!(l.settings.root_path, "/dotenv");
    // A FLUXLIT_* line that cannot be read is an error naming the file and line.
    d.write(
        ".env",
        "FLUXLIT_DEBUG=1\nFLUXLIT_ROOT_PATH=\"/unterminated\n",
    );
    let e = load_in(&d, &[], CliOverrides::default()).unwrap_err();
    assert_eq!(e.problems.len(), 1, "{e}");
    assert_eq!(
        e.problems[0].origin,
        Origin::File {
            path: dotenv.clone(),
            line: Some(2)
        }
    );
    // As python-dotenv reads it: unquoted values with spaces (less an inline comment), other
    // tools' lines that dotenvy cannot read skipped, multi-line quoted values.
    d.write(
        ".env",
        "APP_TITLE=My App\nJUST_A_NAME\nFLUXLIT_API_COMMAND=python -m uvicorn api:app --port {port}  # the API\nFLUXLIT_STREAMLIT_PAGE_CONFIG='{\n  \"layout\": \"wide\"\n}'\nexport FLUXLIT_ROOT_PATH = /spaced\n",
    );
    let l = load_in(&d, &[], CliOverrides::default()).unwrap();
    assert_eq!(
        l.settings.api_command.as_deref(),
        Some("python -m uvicorn api:app --port {port}")
    );
    assert_eq!(l.settings.streamlit_page_config["layout"], "wide");
    assert_eq!(l.settings.root_path, "/spaced");
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    // A bad value in .env names the .env variable.
    d.write(".env", "FLUXLIT_GATEWAY_PORT=http\n");
    let e = load_in(&d, &[], CliOverrides::default()).unwrap_err();
    assert_eq!(
        e.problems[0].origin.to_string(),
        format!("{} (FLUXLIT_GATEWAY_PORT)", dotenv.display())
    );
    // Without .env, the project file applies again.
    std::fs::remove_file(&dotenv).unwrap();
    let l = load_in(&d, &[], CliOverrides::default()).unwrap();
    assert_eq!(l.settings.gateway_port, 9000);
}

#[test]
fn dotenv_may_name_the_project_file_and_public_base_url() {
    let d = Dir::new("dotenv-config");
    d.write("other.toml", "gateway_port = 9300\n");
    d.write(
        ".env",
        "FLUXLIT_CONFIG=other.toml\nFLUXLIT_PUBLIC_BASE_URL=https://dotenv.example\n",
    );
    let l = load_in(
        &d,
        &[("PUBLIC_BASE_URL", "https://platform.example")],
        CliOverrides::default(),
    )
    .unwrap();
    assert_eq!(l.settings.gateway_port, 9300);
    assert_eq!(l.project_file, Some(d.0.join("other.toml")));
    assert_eq!(
        l.settings.public_base_url, "https://dotenv.example",
        "FLUXLIT_PUBLIC_BASE_URL in .env beats the platform's PUBLIC_BASE_URL fallback"
    );
}

fn finding<'a>(f: &'a [findings::Finding], code: &str) -> Option<&'a findings::Finding> {
    f.iter().find(|x| x.code == code)
}

/// Issue 12 §6: trust_proxy with an empty allow-list trusts loopback only; a warning says so
/// with the fix, and goes away once the list is set.
#[test]
fn trust_proxy_with_empty_allow_list_is_a_warning_with_the_fix() {
    let d = Dir::new("loopback-only");
    let env = [("FLUXLIT_TRUST_PROXY", "true")];
    let l = load_in(&d, &env, CliOverrides::default()).unwrap();
    let env_snapshot = Environment::from_pairs(env);
    let found = findings::findings(&l, &env_snapshot);
    let f = finding(&found, "forwarded_allow_ips_loopback_only").expect("a warning");
    assert_eq!(f.level, findings::Level::Warn);
    for part in [
        "loopback peers only",
        "environment variable FLUXLIT_TRUST_PROXY",
        "FLUXLIT_FORWARDED_ALLOW_IPS",
    ] {
        assert!(f.message.contains(part), "{part:?} missing: {}", f.message);
    }
    let env = [
        ("FLUXLIT_TRUST_PROXY", "true"),
        ("FLUXLIT_FORWARDED_ALLOW_IPS", "10.0.0.5"),
    ];
    let l = load_in(&d, &env, CliOverrides::default()).unwrap();
    let found = findings::findings(&l, &Environment::from_pairs(env));
    assert!(finding(&found, "forwarded_allow_ips_loopback_only").is_none());
    let l = load_in(&d, &[], CliOverrides::default()).unwrap();
    let found = findings::findings(&l, &Environment::default());
    assert!(finding(&found, "forwarded_allow_ips_loopback_only").is_none());
}

/// Issue 12 §2: client request ids are kept from any peer unless restricted.
#[test]
fn request_id_trust_defaults_to_any() {
    let d = Dir::new("rid-trust");
    let l = load_in(&d, &[], CliOverrides::default()).unwrap();
    assert_eq!(l.settings.request_id_trust, RequestIdTrust::Any);
    let env = [("FLUXLIT_REQUEST_ID_TRUST", "Trusted_Proxies")];
    let l = load_in(&d, &env, CliOverrides::default()).unwrap();
    assert_eq!(l.settings.request_id_trust, RequestIdTrust::TrustedProxies);
    let env = [("FLUXLIT_REQUEST_ID_TRUST", "never")];
    let e = load_in(&d, &env, CliOverrides::default()).unwrap_err();
    assert_eq!(e.problems[0].key, "request_id_trust");
}

/// The access log is logged at info: a log level that hides it while it is on is a warning
/// naming both settings and the directive that keeps it.
#[test]
fn access_log_hidden_by_the_log_level_is_a_warning() {
    use crate::findings::access_log_enabled_by;
    for (level, shown) in [
        ("info", true),
        ("debug", true),
        ("warn", false),
        ("WARNING", false),
        ("critical", false),
        ("off", false),
        ("warn,fluxlit::access=info", true),
        ("info,fluxlit::access=warn", false),
        ("warn,fluxlit=debug", true),
        ("info,fluxlit=error,fluxlit::access=trace", true),
        ("fluxlit_gateway=debug", false),
        ("warn,fluxlit::access", true),
        ("warn,fluxlit[span]=info", true),
    ] {
        assert_eq!(access_log_enabled_by(level), shown, "{level}");
    }
    let d = Dir::new("access-log-level");
    let env = [
        ("FLUXLIT_ENABLE_GATEWAY_ACCESS_LOG", "true"),
        ("FLUXLIT_LOG_LEVEL", "warn"),
    ];
    let l = load_in(&d, &env, CliOverrides::default()).unwrap();
    let found = findings::findings(&l, &Environment::from_pairs(env.iter().copied()));
    let f = found
        .iter()
        .find(|f| f.code == "access_log_hidden_by_log_level")
        .expect("the warning");
    assert!(
        f.message.contains("FLUXLIT_LOG_LEVEL")
            && f.message.contains("\"warn,fluxlit::access=info\""),
        "{}",
        f.message
    );
    let env = [
        ("FLUXLIT_ENABLE_GATEWAY_ACCESS_LOG", "true"),
        ("FLUXLIT_LOG_LEVEL", "warn,fluxlit::access=info"),
    ];
    let l = load_in(&d, &env, CliOverrides::default()).unwrap();
    let found = findings::findings(&l, &Environment::from_pairs(env.iter().copied()));
    assert!(
        !found
            .iter()
            .any(|f| f.code == "access_log_hidden_by_log_level")
    );
}

#[test]
fn streamlit_workers_count_auto_and_min_ready() {
    let d = Dir::new("workers");
    let l = load_in(&d, &[], CliOverrides::default()).unwrap();
    assert_eq!(
        l.settings.streamlit_workers,
        StreamlitWorkers::Count(std::num::NonZeroU64::MIN)
    );
    assert_eq!(l.settings.streamlit_workers.resolve(), 1);
    assert_eq!(l.settings.streamlit_workers_min_ready, 1);

    let env = [("FLUXLIT_STREAMLIT_WORKERS", "Auto")];
    let l = load_in(&d, &env, CliOverrides::default()).unwrap();
    assert_eq!(l.settings.streamlit_workers, StreamlitWorkers::Auto);
    assert!(l.settings.streamlit_workers.resolve() >= 1);

    d.write(
        "fluxlit.toml",
        "streamlit_workers = 3\nstreamlit_workers_min_ready = 2\n",
    );
    let l = load_in(&d, &[], CliOverrides::default()).unwrap();
    assert_eq!(l.settings.streamlit_workers.resolve(), 3);
    assert_eq!(l.settings.streamlit_workers_min_ready, 2);
    // Round trip through the printed form (`fluxlit config --json`).
    let json = serde_json::to_value(&l.settings).unwrap();
    assert_eq!(json["streamlit_workers"], 3);
    let back: Settings = serde_json::from_value(json).unwrap();
    assert_eq!(back.streamlit_workers, l.settings.streamlit_workers);

    for (value, source) in [
        ("0", "FLUXLIT_STREAMLIT_WORKERS"),
        ("many", "FLUXLIT_STREAMLIT_WORKERS"),
    ] {
        let env = [("FLUXLIT_STREAMLIT_WORKERS", value)];
        let err = load_in(&d, &env, CliOverrides::default()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "streamlit_workers = \"{value}\" (from environment variable {source})"
            )),
            "{text}"
        );
        assert!(text.contains("1 or more, or `auto`"), "{text}");
    }

    d.write(
        "fluxlit.toml",
        "streamlit_workers = 2\nstreamlit_workers_min_ready = 3\n",
    );
    let text = load_in(&d, &[], CliOverrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("streamlit_workers_min_ready = \"3\""),
        "{text}"
    );
    assert!(text.contains("from 1 to streamlit_workers (2)"), "{text}");
    let env = [("FLUXLIT_STREAMLIT_WORKERS_MIN_READY", "0")];
    d.write("fluxlit.toml", "");
    let text = load_in(&d, &env, CliOverrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("streamlit_workers_min_ready = \"0\""),
        "{text}"
    );
}

const SECRET_A: &str = "cookie-secret-a-0123456789abcdefghij";
const SECRET_B: &str = "cookie-secret-b-0123456789abcdefghijklmn";

/// A complete auth_mode = oidc environment plus `extra`.
fn oidc_env<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("FLUXLIT_AUTH_MODE", "oidc"),
        ("FLUXLIT_PUBLIC_BASE_URL", "https://apps.example.com"),
        (
            "FLUXLIT_OIDC_ISSUER",
            "https://login.example.com/realms/main",
        ),
        ("FLUXLIT_OIDC_CLIENT_ID", "fluxlit"),
        (
            "FLUXLIT_AUTH_COOKIE_SECRETS",
            "cookie-secret-a-0123456789abcdefghij, cookie-secret-b-0123456789abcdefghijklmn",
        ),
    ];
    env.extend_from_slice(extra);
    env
}

/// auth_mode = oidc loads with the public URL, issuer, client id and cookie secrets (a
/// comma-separated list in the environment, a JSON list too); every other login key has its
/// documented default.
#[test]
fn oidc_loads_with_its_required_keys_and_defaults() {
    let env = oidc_env(&[]);
    let l = load_in(&Dir::new("oidc-ok"), &env, CliOverrides::default()).unwrap();
    let s = &l.settings;
    assert_eq!(s.auth_mode, AuthMode::Oidc);
    let secrets: Vec<&str> = s.auth_cookie_secrets.iter().map(Secret::expose).collect();
    assert_eq!(secrets, [SECRET_A, SECRET_B]);
    assert_eq!(
        l.origin("auth_cookie_secrets").to_string(),
        "environment variable FLUXLIT_AUTH_COOKIE_SECRETS"
    );
    assert!(s.oidc_client_secret.is_empty(), "a public client");
    assert_eq!(s.oidc_scopes, ["openid", "profile", "email"]);
    assert!(s.auth_required);
    assert!(s.auth_public_paths.is_empty());
    assert_eq!(s.auth_session_store, SessionStore::Cookie);
    assert_eq!(s.auth_session_redis_url, "");
    assert_eq!(s.auth_session_key_prefix, "fluxlit:");
    assert_eq!(s.auth_session_lifetime_s, 43200);
    assert_eq!(s.auth_session_idle_timeout_s, 0, "off");
    assert_eq!(s.auth_session_max_chunks, 3);
    assert!(s.auth_allowed_emails.is_empty());
    assert!(s.auth_allowed_email_domains.is_empty());
    assert!(s.auth_allowed_groups.is_empty());
    assert_eq!(s.auth_groups_claim, "groups");
    assert!(!s.auth_pass_access_token);
    assert!(s.auth_streamlit_trusted_user_headers);
    assert!(!s.auth_logout_backchannel);
    assert_eq!(s.auth_post_logout_redirect_url, "");
    assert!(s.auth_allowed_redirect_origins.is_empty());
    assert_eq!(l.origin("auth_session_store"), &Origin::Default);

    // Every key from the environment, and the cookie secrets as a JSON list in a file.
    let d = Dir::new("oidc-all");
    d.write(
        "fluxlit.toml",
        &format!("auth_cookie_secrets = [\"{SECRET_B}\"]\nauth_session_max_chunks = 10\n"),
    );
    let env: Vec<(&str, &str)> = oidc_env(&[
        ("FLUXLIT_OIDC_SCOPES", "openid,email,offline_access"),
        ("FLUXLIT_AUTH_REQUIRED", "false"),
        ("FLUXLIT_AUTH_PUBLIC_PATHS", "/api/public/.*,GET=/about"),
        ("FLUXLIT_AUTH_SESSION_STORE", "Redis"),
        (
            "FLUXLIT_AUTH_SESSION_REDIS_URL",
            "rediss://:pw@redis.example:6380/1",
        ),
        ("FLUXLIT_AUTH_SESSION_KEY_PREFIX", "app1:"),
        ("FLUXLIT_AUTH_SESSION_LIFETIME_S", "3600"),
        ("FLUXLIT_AUTH_SESSION_IDLE_TIMEOUT_S", "900"),
        ("FLUXLIT_AUTH_ALLOWED_EMAILS", "ada@example.com"),
        ("FLUXLIT_AUTH_ALLOWED_EMAIL_DOMAINS", "[\"example.com\"]"),
        ("FLUXLIT_AUTH_ALLOWED_GROUPS", "admins,ops"),
        ("FLUXLIT_AUTH_GROUPS_CLAIM", "roles"),
        ("FLUXLIT_AUTH_PASS_ACCESS_TOKEN", "1"),
        ("FLUXLIT_AUTH_STREAMLIT_TRUSTED_USER_HEADERS", "off"),
        ("FLUXLIT_AUTH_LOGOUT_BACKCHANNEL", "yes"),
        (
            "FLUXLIT_AUTH_POST_LOGOUT_REDIRECT_URL",
            "https://portal.example.com/bye",
        ),
        (
            "FLUXLIT_AUTH_ALLOWED_REDIRECT_ORIGINS",
            "https://portal.example.com,http://127.0.0.1:8080",
        ),
    ])
    .into_iter()
    .filter(|(k, _)| *k != "FLUXLIT_AUTH_COOKIE_SECRETS")
    .collect();
    let l = load_in(&d, &env, CliOverrides::default()).unwrap();
    let s = &l.settings;
    assert_eq!(s.auth_cookie_secrets.len(), 1);
    assert_eq!(s.auth_cookie_secrets[0].expose(), SECRET_B);
    assert_eq!(s.auth_session_max_chunks, 10);
    assert_eq!(s.oidc_scopes, ["openid", "email", "offline_access"]);
    assert!(!s.auth_required);
    assert_eq!(s.auth_public_paths, ["/api/public/.*", "GET=/about"]);
    assert_eq!(s.auth_session_store, SessionStore::Redis);
    assert_eq!(s.auth_session_key_prefix, "app1:");
    assert_eq!(s.auth_session_lifetime_s, 3600);
    assert_eq!(s.auth_session_idle_timeout_s, 900);
    assert_eq!(s.auth_allowed_email_domains, ["example.com"]);
    assert_eq!(s.auth_allowed_groups, ["admins", "ops"]);
    assert_eq!(s.auth_groups_claim, "roles");
    assert!(s.auth_pass_access_token && s.auth_logout_backchannel);
    assert!(!s.auth_streamlit_trusted_user_headers);
    assert_eq!(
        s.post_logout_redirect_uri().as_deref(),
        Some("https://portal.example.com/bye")
    );
    let rules = s.public_path_rules().unwrap();
    assert!(rules[0].matches(&http::Method::POST, "/api/public/x"));
    assert!(rules[1].matches(&http::Method::GET, "/about"));
    assert!(!rules[1].matches(&http::Method::POST, "/about"));
    assert!(
        !rules[1].matches(&http::Method::GET, "/about/x"),
        "anchored"
    );
}

/// auth_mode = oidc alone: each missing key is its own problem naming the key, what is
/// expected and why (the mode and its source); nothing else is reported.
#[test]
fn oidc_names_each_missing_key() {
    let err = load_in(
        &Dir::new("oidc-missing"),
        &[("FLUXLIT_AUTH_MODE", "oidc")],
        CliOverrides::default(),
    )
    .unwrap_err();
    let mut keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "auth_cookie_secrets",
            "oidc_client_id",
            "oidc_issuer",
            "public_base_url"
        ],
        "{err}"
    );
    for p in &err.problems {
        assert_eq!(p.origin, Origin::Default, "{p}");
        assert!(
            p.expected.contains(
                "because auth_mode is oidc (from environment variable FLUXLIT_AUTH_MODE)"
            ),
            "{p}"
        );
    }
    assert!(!err.to_string().contains("not available"), "{err}");
    // The Redis store needs its URL.
    let env = oidc_env(&[("FLUXLIT_AUTH_SESSION_STORE", "redis")]);
    let err = load_in(&Dir::new("oidc-redis"), &env, CliOverrides::default()).unwrap_err();
    let p = problem_about(&err, "auth_session_redis_url");
    assert!(
        p.expected.contains(
            "auth_session_store is redis (from environment variable FLUXLIT_AUTH_SESSION_STORE)"
        ),
        "{p}"
    );
    assert_eq!(err.problems.len(), 1, "{err}");
}

/// Every rule of the login keys: the problem names the key, the value as given (URL passwords
/// and secrets redacted), its source and what is expected.
#[test]
fn oidc_rules_name_key_value_origin_and_expectation() {
    for (extra, key, value, expected) in [
        (
            ("FLUXLIT_PUBLIC_BASE_URL", "apps.example.com"),
            "public_base_url",
            "apps.example.com",
            "absolute http(s) URL",
        ),
        (
            ("FLUXLIT_PUBLIC_BASE_URL", "https://u:pw@apps.example.com"),
            "public_base_url",
            "https://u:[REDACTED]@apps.example.com",
            "without user",
        ),
        (
            ("FLUXLIT_PUBLIC_BASE_URL", "https://apps.example.com/?x=1"),
            "public_base_url",
            "https://apps.example.com/?x=1",
            "absolute http(s) URL",
        ),
        (
            ("FLUXLIT_OIDC_ISSUER", "http://login.example.com"),
            "oidc_issuer",
            "http://login.example.com",
            "https://",
        ),
        (
            ("FLUXLIT_OIDC_ISSUER", "https://login.example.com/?tenant=1"),
            "oidc_issuer",
            "https://login.example.com/?tenant=1",
            "without query",
        ),
        (
            ("FLUXLIT_OIDC_ISSUER", "login.example.com"),
            "oidc_issuer",
            "login.example.com",
            "https://",
        ),
        (
            ("FLUXLIT_OIDC_CLIENT_ID", " "),
            "oidc_client_id",
            " ",
            "client id",
        ),
        (
            ("FLUXLIT_OIDC_SCOPES", "profile,email"),
            "oidc_scopes",
            "[\"profile\", \"email\"]",
            "contains openid",
        ),
        (
            ("FLUXLIT_AUTH_PUBLIC_PATHS", "/ok,/docs("),
            "auth_public_paths",
            "/docs(",
            "unclosed group",
        ),
        (
            ("FLUXLIT_AUTH_PUBLIC_PATHS", "GET="),
            "auth_public_paths",
            "GET=",
            "pattern is empty",
        ),
        (
            ("FLUXLIT_AUTH_SESSION_REDIS_URL", "http://u:pw@redis:6379"),
            "auth_session_redis_url",
            "http://u:[REDACTED]@redis:6379",
            "redis://",
        ),
        (
            ("FLUXLIT_AUTH_SESSION_REDIS_URL", "redis://"),
            "auth_session_redis_url",
            "redis://",
            "redis://",
        ),
        (
            ("FLUXLIT_AUTH_SESSION_LIFETIME_S", "0"),
            "auth_session_lifetime_s",
            "0",
            "at least 1 second",
        ),
        (
            ("FLUXLIT_AUTH_SESSION_IDLE_TIMEOUT_S", "900"),
            "auth_session_idle_timeout_s",
            "900",
            "auth_session_store = memory or redis",
        ),
        (
            ("FLUXLIT_AUTH_SESSION_MAX_CHUNKS", "0"),
            "auth_session_max_chunks",
            "0",
            "from 1 to 10",
        ),
        (
            ("FLUXLIT_AUTH_SESSION_MAX_CHUNKS", "11"),
            "auth_session_max_chunks",
            "11",
            "from 1 to 10",
        ),
        (
            ("FLUXLIT_AUTH_LOGOUT_BACKCHANNEL", "true"),
            "auth_logout_backchannel",
            "true",
            "memory or redis",
        ),
        (
            ("FLUXLIT_AUTH_POST_LOGOUT_REDIRECT_URL", "/bye"),
            "auth_post_logout_redirect_url",
            "/bye",
            "absolute http",
        ),
        (
            ("FLUXLIT_AUTH_POST_LOGOUT_REDIRECT_URL", "ftp://x.example/"),
            "auth_post_logout_redirect_url",
            "ftp://x.example/",
            "absolute http",
        ),
        (
            (
                "FLUXLIT_AUTH_ALLOWED_REDIRECT_ORIGINS",
                "https://ok.example,https://portal.example.com/path",
            ),
            "auth_allowed_redirect_origins",
            "https://portal.example.com/path",
            "no path",
        ),
        (
            (
                "FLUXLIT_AUTH_ALLOWED_REDIRECT_ORIGINS",
                "portal.example.com",
            ),
            "auth_allowed_redirect_origins",
            "portal.example.com",
            "scheme://host",
        ),
        (
            (
                "FLUXLIT_AUTH_ALLOWED_REDIRECT_ORIGINS",
                "https://portal.example.com/",
            ),
            "auth_allowed_redirect_origins",
            "https://portal.example.com/",
            "no path",
        ),
    ] {
        let env = oidc_env(&[extra]);
        let err = load_in(&Dir::new("oidc-rule"), &env, CliOverrides::default())
            .expect_err(&format!("{extra:?} must be refused"));
        let p = problem_about(&err, key);
        assert_eq!(p.value.as_deref(), Some(value), "{extra:?}: {p}");
        assert_eq!(
            p.origin.to_string(),
            format!("environment variable {}", extra.0),
            "{p}"
        );
        assert!(
            p.expected.contains(expected),
            "{extra:?}: {expected:?} not in {p}"
        );
        assert!(!err.to_string().contains("pw@"), "{err}");
        assert_eq!(err.problems.len(), 1, "{extra:?}: {err}");
    }
    // Accepted forms: an http issuer on loopback, a public base URL with a path, a Redis URL
    // over TLS or a socket, methods and regexes.
    for extra in [
        ("FLUXLIT_OIDC_ISSUER", "http://127.0.0.1:9000"),
        ("FLUXLIT_OIDC_ISSUER", "http://localhost:8080/realms/dev"),
        ("FLUXLIT_OIDC_ISSUER", "http://[::1]:9000"),
        ("FLUXLIT_PUBLIC_BASE_URL", "http://apps.example.com/myapp/"),
        ("FLUXLIT_AUTH_SESSION_REDIS_URL", "unix:///run/redis.sock"),
        (
            "FLUXLIT_AUTH_PUBLIC_PATHS",
            "[\"POST=/api/hooks/[a-z]+\", \"/a=b\"]",
        ),
        ("FLUXLIT_AUTH_ALLOWED_REDIRECT_ORIGINS", "http://[::1]:8501"),
    ] {
        let env = oidc_env(&[extra]);
        load_in(&Dir::new("oidc-fine"), &env, CliOverrides::default())
            .unwrap_or_else(|e| panic!("{extra:?}: {e}"));
    }
    // The forms are checked in every mode; what the login needs only with oidc.
    let err = load_in(
        &Dir::new("oidc-off-form"),
        &[("FLUXLIT_AUTH_SESSION_MAX_CHUNKS", "0")],
        CliOverrides::default(),
    )
    .unwrap_err();
    assert_eq!(
        problem_about(&err, "auth_session_max_chunks")
            .value
            .as_deref(),
        Some("0")
    );
    load_in(
        &Dir::new("oidc-off-store"),
        &[("FLUXLIT_AUTH_SESSION_STORE", "redis")],
        CliOverrides::default(),
    )
    .unwrap();
}

/// A short cookie secret is refused naming its index, never its value; the secrets are
/// redacted in Debug, in serialization and in `settings_json` (what `fluxlit config` prints).
#[test]
fn cookie_secrets_are_checked_by_index_and_never_shown() {
    let env = oidc_env(&[(
        "FLUXLIT_AUTH_COOKIE_SECRETS",
        "cookie-secret-a-0123456789abcdefghij,short-s3cr3t",
    )]);
    let err = load_in(&Dir::new("oidc-short"), &env, CliOverrides::default()).unwrap_err();
    let p = problem_about(&err, "auth_cookie_secrets");
    assert_eq!(p.value.as_deref(), Some(REDACTED));
    assert!(
        p.expected
            .contains("entry 1 (counting from 0) has 12 bytes"),
        "{p}"
    );
    assert_eq!(
        p.origin.to_string(),
        "environment variable FLUXLIT_AUTH_COOKIE_SECRETS"
    );
    assert!(
        !err.to_string().contains("s3cr3t") && !err.to_string().contains("cookie-secret-a"),
        "{err}"
    );
    assert_eq!(err.problems.len(), 1, "{err}");
    // A secret list of the wrong type in a file: redacted too.
    let d = Dir::new("oidc-secret-type");
    d.write("fluxlit.toml", "auth_cookie_secrets = [\"s3cr3t\", 5]\n");
    let err = load_in(&d, &[], CliOverrides::default()).unwrap_err();
    assert!(!err.to_string().contains("s3cr3t"), "{err}");
    assert_eq!(
        problem_about(&err, "auth_cookie_secrets").value.as_deref(),
        Some(REDACTED)
    );

    let l = load_in(
        &Dir::new("oidc-redact"),
        &oidc_env(&[]),
        CliOverrides::default(),
    )
    .unwrap();
    let debug = format!("{:?}", l.settings);
    let json = serde_json::to_string(&l.settings).unwrap();
    let shown = redact::settings_json(&l.settings);
    for text in [debug, json, shown.to_string()] {
        assert!(!text.contains("cookie-secret"), "{text}");
    }
    assert_eq!(
        shown["auth_cookie_secrets"],
        serde_json::json!([REDACTED, REDACTED])
    );
}

/// The URLs the gateway and doctor share: origin, routes, redirect and post-logout URIs, with
/// and without a root path; never from anything but the settings.
#[test]
fn oidc_urls_are_built_once_from_the_settings() {
    let l = load_in(
        &Dir::new("oidc-urls"),
        &oidc_env(&[]),
        CliOverrides::default(),
    )
    .unwrap();
    let s = &l.settings;
    assert_eq!(
        s.public_origin().as_deref(),
        Some("https://apps.example.com")
    );
    assert_eq!(s.auth_route_prefix(), "/api/auth");
    assert_eq!(
        s.oidc_redirect_uri().as_deref(),
        Some("https://apps.example.com/api/auth/callback")
    );
    assert_eq!(
        s.post_logout_redirect_uri().as_deref(),
        Some("https://apps.example.com/")
    );

    let env = oidc_env(&[
        (
            "FLUXLIT_PUBLIC_BASE_URL",
            "https://Apps.Example.com:443/myapp/",
        ),
        ("FLUXLIT_ROOT_PATH", "/myapp/"),
        ("FLUXLIT_API_MOUNT_PATH", "v1"),
    ]);
    let l = load_in(&Dir::new("oidc-urls-root"), &env, CliOverrides::default()).unwrap();
    let s = &l.settings;
    assert_eq!(
        s.public_origin().as_deref(),
        Some("https://apps.example.com")
    );
    assert_eq!(s.auth_route_prefix(), "/myapp/v1/auth");
    assert_eq!(
        s.oidc_redirect_uri().as_deref(),
        Some("https://apps.example.com/myapp/v1/auth/callback")
    );
    assert_eq!(
        s.post_logout_redirect_uri().as_deref(),
        Some("https://apps.example.com/myapp/")
    );

    let env = oidc_env(&[("FLUXLIT_PUBLIC_BASE_URL", "http://127.0.0.1:8000")]);
    let l = load_in(&Dir::new("oidc-urls-port"), &env, CliOverrides::default()).unwrap();
    assert_eq!(
        l.settings.oidc_redirect_uri().as_deref(),
        Some("http://127.0.0.1:8000/api/auth/callback")
    );
    // Without a public base URL (another mode) there is no origin to build from.
    let l = load_in(&Dir::new("oidc-urls-none"), &[], CliOverrides::default()).unwrap();
    assert_eq!(l.settings.public_origin(), None);
    assert_eq!(l.settings.oidc_redirect_uri(), None);
    assert_eq!(l.settings.post_logout_redirect_uri(), None);
    assert_eq!(l.settings.auth_route_prefix(), "/api/auth");
}

/// The findings codes of `l`.
fn codes_of(l: &Loaded) -> Vec<&'static str> {
    findings::findings(l, &Environment::default())
        .into_iter()
        .map(|f| f.code)
        .collect()
}

/// With oidc: plain http on a public host, the memory store, and Streamlit's own `[auth]` in
/// secrets.toml are warnings; the login keys are no `auth_keys_unused` finding (but
/// oidc_bff_secret still is), while in another mode they are.
#[test]
fn oidc_findings() {
    let d = Dir::new("oidc-findings");
    let l = load_in(&d, &oidc_env(&[]), CliOverrides::default()).unwrap();
    assert!(
        codes_of(&l).is_empty(),
        "{:?}",
        findings::findings(&l, &Environment::default())
    );

    let env = oidc_env(&[("FLUXLIT_PUBLIC_BASE_URL", "http://apps.example.com")]);
    let l = load_in(&d, &env, CliOverrides::default()).unwrap();
    let f = findings::findings(&l, &Environment::default());
    let f = f
        .iter()
        .find(|f| f.code == "public_base_url_insecure")
        .expect("insecure");
    assert_eq!(f.level, findings::Level::Warn);
    assert!(
        f.message.contains(
            "\"http://apps.example.com\" (from environment variable FLUXLIT_PUBLIC_BASE_URL)"
        ),
        "{}",
        f.message
    );
    for url in [
        "http://127.0.0.1:8000",
        "http://localhost:8000",
        "http://[::1]:8000",
    ] {
        let env = oidc_env(&[("FLUXLIT_PUBLIC_BASE_URL", url)]);
        let l = load_in(&d, &env, CliOverrides::default()).unwrap();
        assert!(!codes_of(&l).contains(&"public_base_url_insecure"), "{url}");
    }

    let env = oidc_env(&[("FLUXLIT_AUTH_SESSION_STORE", "memory")]);
    let l = load_in(&d, &env, CliOverrides::default()).unwrap();
    assert_eq!(codes_of(&l), ["auth_session_memory_single_replica"]);

    fs::create_dir_all(d.0.join(".streamlit")).unwrap();
    d.write(".streamlit/secrets.toml", "[connections]\nx = 1\n");
    let l = load_in(&d, &oidc_env(&[]), CliOverrides::default()).unwrap();
    assert!(codes_of(&l).is_empty(), "no [auth] table");
    d.write(
        ".streamlit/secrets.toml",
        "[auth]\nredirect_uri = \"http://localhost:8501/oauth2callback\"\n",
    );
    let l = load_in(&d, &oidc_env(&[]), CliOverrides::default()).unwrap();
    let f = findings::findings(&l, &Environment::default());
    let f = f
        .iter()
        .find(|f| f.code == "streamlit_secrets_auth")
        .expect("[auth] found");
    assert!(
        f.message
            .contains(&d.0.join(".streamlit/secrets.toml").display().to_string()),
        "{}",
        f.message
    );
    let l = load_in(&d, &[], CliOverrides::default()).unwrap();
    assert!(
        codes_of(&l).is_empty(),
        "st.login alone is fine without oidc"
    );
    // Beside a target script in a subdirectory, too.
    fs::remove_file(d.0.join(".streamlit/secrets.toml")).unwrap();
    fs::create_dir_all(d.0.join("ui/.streamlit")).unwrap();
    d.write("ui/.streamlit/secrets.toml", "[auth]\nclient_id = \"x\"\n");
    let l = load_in(
        &d,
        &oidc_env(&[("FLUXLIT_TARGET", "ui/app.py")]),
        CliOverrides::default(),
    )
    .unwrap();
    assert_eq!(codes_of(&l), ["streamlit_secrets_auth"]);

    // The login keys are unused in another mode, and oidc_bff_secret in every mode.
    let env = [
        ("FLUXLIT_AUTH_SESSION_STORE", "memory"),
        ("FLUXLIT_AUTH_COOKIE_SECRETS", SECRET_A),
        ("FLUXLIT_OIDC_SCOPES", "openid"),
        ("FLUXLIT_AUTH_REQUIRED", "true"),
    ];
    let l = load_in(&Dir::new("oidc-unused"), &env, CliOverrides::default()).unwrap();
    let f = auth_keys_unused(&l, &env).expect("unused login keys");
    for part in [
        "oidc_scopes (from environment variable FLUXLIT_OIDC_SCOPES)",
        "auth_session_store (from environment variable FLUXLIT_AUTH_SESSION_STORE)",
        "auth_cookie_secrets (from environment variable FLUXLIT_AUTH_COOKIE_SECRETS)",
        "no effect with auth_mode = off (from default)",
        "only with auth_mode = \"oidc\"",
    ] {
        assert!(
            f.message.contains(part),
            "{part:?} missing from {}",
            f.message
        );
    }
    assert!(
        !f.message.contains("auth_required"),
        "set to its default: {}",
        f.message
    );
    assert!(!f.message.contains("no OIDC login"), "{}", f.message);
    assert!(!f.message.contains(SECRET_A), "{}", f.message);
    let env = oidc_env(&[
        ("FLUXLIT_OIDC_BFF_SECRET", "x"),
        ("FLUXLIT_OIDC_CLIENT_SECRET", "y"),
    ]);
    let l = load_in(&Dir::new("oidc-used"), &env, CliOverrides::default()).unwrap();
    let f = auth_keys_unused(&l, &env).expect("oidc_bff_secret without oidc_compat_exchange");
    assert!(
        f.message.starts_with("oidc_bff_secret (from environment variable FLUXLIT_OIDC_BFF_SECRET) is set, but it has no effect with auth_mode = oidc"),
        "{}",
        f.message
    );
    assert!(
        f.message.contains(
            "oidc_bff_secret only with auth_mode = \"oidc\" and oidc_compat_exchange = true"
        ),
        "{}",
        f.message
    );
    // With the exchange flow on, the key is read: no finding.
    let env = oidc_env(&[
        ("FLUXLIT_OIDC_BFF_SECRET", SECRET_B),
        ("FLUXLIT_OIDC_COMPAT_EXCHANGE", "true"),
        ("FLUXLIT_AUTH_SESSION_STORE", "redis"),
        ("FLUXLIT_AUTH_SESSION_REDIS_URL", "redis://127.0.0.1:6379"),
    ]);
    let l = load_in(&Dir::new("oidc-compat"), &env, CliOverrides::default()).unwrap();
    assert!(l.settings.oidc_compat_exchange);
    assert!(auth_keys_unused(&l, &env).is_none(), "{:?}", codes_of(&l));
    // The switch itself is a login key: unused in another mode.
    let env = [("FLUXLIT_OIDC_COMPAT_EXCHANGE", "true")];
    let l = load_in(&Dir::new("oidc-compat-off"), &env, CliOverrides::default()).unwrap();
    let f = auth_keys_unused(&l, &env).expect("oidc_compat_exchange without oidc");
    assert!(
        f.message.starts_with(
            "oidc_compat_exchange (from environment variable FLUXLIT_OIDC_COMPAT_EXCHANGE) is set"
        ),
        "{}",
        f.message
    );
}

/// `oidc_compat_exchange` needs `oidc_bff_secret` (32 bytes or more) and a server-side store:
/// load errors naming the key, its source and the fix.
#[test]
fn the_exchange_flow_needs_its_secret_and_a_server_side_store() {
    let on = ("FLUXLIT_OIDC_COMPAT_EXCHANGE", "1");
    let memory = ("FLUXLIT_AUTH_SESSION_STORE", "memory");
    let err = load_in(
        &Dir::new("compat-1"),
        &oidc_env(&[on, memory]),
        CliOverrides::default(),
    )
    .expect_err("no oidc_bff_secret");
    let p = problem_about(&err, "oidc_bff_secret");
    assert!(
        p.expected.contains(
            "oidc_compat_exchange is on (from environment variable FLUXLIT_OIDC_COMPAT_EXCHANGE)"
        ),
        "{p}"
    );
    assert_eq!(err.problems.len(), 1, "{err}");
    let err = load_in(
        &Dir::new("compat-2"),
        &oidc_env(&[on, memory, ("FLUXLIT_OIDC_BFF_SECRET", "short-secret")]),
        CliOverrides::default(),
    )
    .expect_err("a short oidc_bff_secret");
    let p = problem_about(&err, "oidc_bff_secret");
    assert!(
        p.expected.contains("at least 32 bytes") && p.expected.contains("not 12 bytes"),
        "{p}"
    );
    assert!(!err.to_string().contains("short-secret"), "{err}");
    let err = load_in(
        &Dir::new("compat-3"),
        &oidc_env(&[on, ("FLUXLIT_OIDC_BFF_SECRET", SECRET_B)]),
        CliOverrides::default(),
    )
    .expect_err("the cookie store");
    let p = problem_about(&err, "oidc_compat_exchange");
    assert!(
        p.expected.contains("auth_session_store = memory or redis"),
        "{p}"
    );
    assert_eq!(
        p.origin.to_string(),
        "environment variable FLUXLIT_OIDC_COMPAT_EXCHANGE"
    );
    load_in(
        &Dir::new("compat-4"),
        &oidc_env(&[on, memory, ("FLUXLIT_OIDC_BFF_SECRET", SECRET_B)]),
        CliOverrides::default(),
    )
    .expect("secret and store");
}

#[test]
fn streamlit_drain_timeout_defaults_to_five_minutes_and_takes_durations() {
    let d = Dir::new("drain");
    let l = load_in(&d, &[], CliOverrides::default()).unwrap();
    assert_eq!(
        l.settings.streamlit_drain_timeout_s,
        Duration::from_secs(300)
    );
    let env = [("FLUXLIT_STREAMLIT_DRAIN_TIMEOUT_S", "2m")];
    let l = load_in(&d, &env, CliOverrides::default()).unwrap();
    assert_eq!(
        l.settings.streamlit_drain_timeout_s,
        Duration::from_secs(120)
    );
    d.write("fluxlit.toml", "streamlit_drain_timeout_s = 1.5\n");
    let l = load_in(&d, &[], CliOverrides::default()).unwrap();
    assert_eq!(
        l.settings.streamlit_drain_timeout_s,
        Duration::from_millis(1500)
    );
    let env = [("FLUXLIT_STREAMLIT_DRAIN_TIMEOUT_S", "-1")];
    let text = load_in(&d, &env, CliOverrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("streamlit_drain_timeout_s")
            && text.contains("FLUXLIT_STREAMLIT_DRAIN_TIMEOUT_S"),
        "{text}"
    );
}

#[test]
fn streamlit_worker_max_rss_is_off_by_default_and_takes_sizes() {
    let d = Dir::new("max-rss");
    let l = load_in(&d, &[], CliOverrides::default()).unwrap();
    assert_eq!(l.settings.streamlit_worker_max_rss_bytes, 0);
    let env = [("FLUXLIT_STREAMLIT_WORKER_MAX_RSS_BYTES", "512MiB")];
    let l = load_in(&d, &env, CliOverrides::default()).unwrap();
    assert_eq!(l.settings.streamlit_worker_max_rss_bytes, 512 * 1024 * 1024);
    let env = [("FLUXLIT_STREAMLIT_WORKER_MAX_RSS_BYTES", "lots")];
    let text = load_in(&d, &env, CliOverrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("streamlit_worker_max_rss_bytes")
            && text.contains("FLUXLIT_STREAMLIT_WORKER_MAX_RSS_BYTES"),
        "{text}"
    );
}
