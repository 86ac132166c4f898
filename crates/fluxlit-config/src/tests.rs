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
