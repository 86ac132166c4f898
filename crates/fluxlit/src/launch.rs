//! How the sidecars are started: Streamlit's command line and environment, the API command,
//! and the retry when a picked port is taken before the sidecar binds it.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fluxlit_config::Settings;
use fluxlit_sidecar::{HealthProbe, Sidecar, SidecarSpec, StartError};

use crate::AppError;
use crate::pyapp::PyApp;

/// How many times a sidecar is started with a new port when its port was taken between
/// FluxLit picking it and the sidecar binding it.
pub(crate) const PORT_RETRIES: usize = 3;

/// What every start of a sidecar needs besides the settings.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    /// The sidecars' working directory.
    pub(crate) cwd: PathBuf,
    /// What Streamlit runs.
    pub(crate) target: Script,
    /// The Python interpreter that runs Streamlit.
    pub(crate) python: PathBuf,
    /// Variables for both sidecars: FLUXLIT_INTERNAL_API_BASE, FLUXLIT_API_PREFIX,
    /// FLUXLIT_ROOT_PATH, PATH.
    pub(crate) env: Vec<(OsString, OsString)>,
    /// `api_command`'s origin, for its parse error.
    pub(crate) api_command_origin: String,
    /// Variables for Streamlit only: `STREAMLIT_SERVER_COOKIE_SECRET` when several workers
    /// share a generated secret ([`shared_cookie_secret`]).
    pub(crate) streamlit_env: Vec<(OsString, OsString)>,
}

/// Streamlit's variable for `server.cookieSecret` (environment variables override
/// `.streamlit/config.toml`, command-line flags override both: Streamlit's configuration
/// precedence, docs.streamlit.io "Configuration options").
pub(crate) const COOKIE_SECRET_ENV: &str = "STREAMLIT_SERVER_COOKIE_SECRET";

/// The `server.cookieSecret` every Streamlit worker gets when there are several, so that the
/// signed cookies of `st.login` (and the XSRF token) one worker set validate on every other:
/// `None` when the user gave one (`--server.cookieSecret` in `streamlit_run_cli_args`,
/// `STREAMLIT_SERVER_COOKIE_SECRET` in the environment, or `cookieSecret` under `[server]` in
/// `.streamlit/config.toml` of the working directory or of `$HOME`), else 32 random bytes from
/// `/dev/urandom` as 64 hex digits, new at every start of FluxLit (like Streamlit's own
/// default, which is random per process).
pub(crate) fn shared_cookie_secret(
    args: &[String],
    env: &fluxlit_config::Environment,
    cwd: &Path,
) -> std::io::Result<Option<String>> {
    let in_args = args
        .iter()
        .any(|a| a == "--server.cookieSecret" || a.starts_with("--server.cookieSecret="));
    let in_env = env.get(COOKIE_SECRET_ENV).is_some_and(|v| !v.is_empty());
    let in_file = [Some(cwd.to_path_buf()), env.get("HOME").map(PathBuf::from)]
        .into_iter()
        .flatten()
        .any(|dir| config_sets_cookie_secret(&dir.join(".streamlit/config.toml")));
    if in_args || in_env || in_file {
        return Ok(None);
    }
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(Some(bytes.iter().map(|b| format!("{b:02x}")).collect()))
}

/// Whether a Streamlit config file sets `[server] cookieSecret` (an unreadable or malformed
/// file does not: Streamlit would fail on it with its own message).
fn config_sets_cookie_secret(file: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(file) else {
        return false;
    };
    text.parse::<toml::Table>().is_ok_and(|t| {
        t.get("server")
            .and_then(toml::Value::as_table)
            .is_some_and(|server| server.contains_key("cookieSecret"))
    })
}

/// What the Streamlit sidecar runs.
#[derive(Debug, Clone)]
pub(crate) enum Script {
    /// A Streamlit script, as passed to `streamlit run` (relative to `cwd` or absolute).
    File(PathBuf),
    /// A FluxLit-for-Python app: the package's page entry script, with `FLUXLIT_APP`.
    PyApp(Arc<PyApp>),
}

/// What the API sidecar runs.
#[derive(Debug, Clone)]
pub(crate) enum ApiProcess {
    /// `api_command`.
    Command(String),
    /// A FluxLit-for-Python app's FastAPI object, served by uvicorn.
    PyApp(Arc<PyApp>),
}

/// The environment both sidecars get: how to reach the gateway's API from inside
/// (`internal_api_base`, e.g. `http://127.0.0.1:8000/api`), the API prefix, the public mount and
/// `PATH` with the interpreter's directory first.
pub(crate) fn common_env(
    internal_api_base: &str,
    api_prefix: &str,
    mount: &str,
    path: String,
) -> Vec<(OsString, OsString)> {
    vec![
        ("FLUXLIT_INTERNAL_API_BASE".into(), internal_api_base.into()),
        ("FLUXLIT_API_PREFIX".into(), api_prefix.into()),
        ("FLUXLIT_ROOT_PATH".into(), mount.into()),
        ("PATH".into(), path.into()),
    ]
}

/// `PATH` for the children: the Streamlit interpreter's directory first (so `python` and
/// `uvicorn` in `api_command` are the venv's), then the gateway's own `PATH`.
pub(crate) fn child_path(path: Option<&str>, first: Option<&Path>) -> String {
    let inherited = path.unwrap_or("/usr/local/bin:/usr/bin:/bin");
    match first {
        Some(dir) => format!("{}:{inherited}", dir.display()),
        None => inherited.to_owned(),
    }
}

/// Starts a sidecar on a fresh loopback port and waits until it is ready. When it exits during
/// start-up saying its port was taken (another process grabbed the port between FluxLit picking
/// it and the sidecar binding it), it is started again on another port, up to
/// [`PORT_RETRIES`] times.
async fn start_on_free_port(
    name: &'static str,
    start_timeout: Duration,
    spec_for: impl Fn(u16) -> Result<SidecarSpec, AppError>,
) -> Result<(Sidecar, u16), AppError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let port = fluxlit_sidecar::free_loopback_port()
            .map_err(|source| AppError::Port { name, source })?;
        let mut sidecar = Sidecar::spawn(spec_for(port)?)?;
        match sidecar.wait_ready(start_timeout).await {
            Ok(()) => return Ok((sidecar, port)),
            Err(StartError::Exited { last_lines, .. })
                if attempt < PORT_RETRIES
                    && fluxlit_sidecar::output_says_port_in_use(&last_lines) =>
            {
                tracing::warn!(
                    sidecar = name,
                    port,
                    attempt,
                    "the port was taken before the sidecar could bind it; retrying with another"
                );
            }
            Err(e) => {
                sidecar.stop().await;
                return Err(e.into());
            }
        }
    }
}

/// `python -m streamlit run TARGET --server.headless true --server.port PORT --server.address
/// 127.0.0.1 --browser.gatherUsageStats false [--server.baseUrlPath MOUNT] [user args…]`.
pub(crate) fn streamlit_args(
    target: &Path,
    port: u16,
    mount: &str,
    extra: &[String],
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "-m".into(),
        "streamlit".into(),
        "run".into(),
        target.as_os_str().to_owned(),
    ];
    for a in [
        "--server.headless",
        "true",
        "--server.port",
        &port.to_string(),
        "--server.address",
        "127.0.0.1",
        "--browser.gatherUsageStats",
        "false",
    ] {
        args.push(a.into());
    }
    if !mount.is_empty() {
        args.push("--server.baseUrlPath".into());
        args.push(mount.into());
    }
    args.extend(extra.iter().map(OsString::from));
    args
}

/// Starts Streamlit and waits until `{mount}/_stcore/health` answers 200.
pub(crate) async fn start_streamlit(
    s: &Settings,
    launch: &Launch,
) -> Result<(Sidecar, u16), AppError> {
    let mount = s.public_mount();
    start_on_free_port("streamlit", s.sidecar_start_timeout_s, |port| {
        let mut spec = SidecarSpec::new("streamlit", &launch.python);
        spec.env.clone_from(&launch.env);
        let script = match &launch.target {
            Script::File(path) => path,
            Script::PyApp(app) => {
                spec.env.extend(app.env(&s.api_mount_path));
                &app.package.entry
            }
        };
        spec.args = streamlit_args(script, port, mount, &s.streamlit_run_cli_args);
        spec.env.extend(launch.streamlit_env.iter().cloned());
        if !s.streamlit_page_config.is_empty() {
            spec.env.push((
                "FLUXLIT_STREAMLIT_PAGE_CONFIG".into(),
                serde_json::Value::Object(s.streamlit_page_config.clone())
                    .to_string()
                    .into(),
            ));
        }
        spec.cwd = Some(launch.cwd.clone());
        spec.stop_grace = s.sidecar_stop_timeout_s;
        let mut probe = HealthProbe::status_200(
            SocketAddr::from(([127, 0, 0, 1], port)),
            &format!("{mount}/_stcore/health"),
        );
        // Quick probes while starting; once ready, every second, and a hung Streamlit (accepts
        // TCP, never answers) turns readiness 503 at the next probe.
        probe.interval = Duration::from_millis(200);
        probe.ready_interval = Duration::from_secs(1);
        probe.timeout = Duration::from_millis(800);
        spec.health = Some(probe);
        Ok(spec)
    })
    .await
}

/// The name of Streamlit worker `index` (from 0) of `count`, as readiness, logs, metrics and
/// the debug snapshot show it: `streamlit` when there is one, else `streamlit-1` to
/// `streamlit-N` (the id the gateway's affinity cookie carries). Each name is made once per
/// process and kept (a few bytes per worker).
pub(crate) fn worker_name(index: usize, count: usize) -> &'static str {
    static NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    if count == 1 {
        return "streamlit";
    }
    let Ok(mut names) = NAMES.lock() else {
        return "streamlit-worker";
    };
    while names.len() <= index {
        let next = format!("streamlit-{}", names.len() + 1);
        names.push(Box::leak(next.into_boxed_str()));
    }
    names[index]
}

/// Starts `count` Streamlit workers at once (each [`start_streamlit`]: its own port and
/// process group) and waits until all are ready; when one fails, the others are stopped and
/// the first error is returned.
pub(crate) async fn start_streamlit_workers(
    s: &Settings,
    launch: &Launch,
    count: usize,
) -> Result<Vec<(Sidecar, u16)>, AppError> {
    if count == 1 {
        return Ok(vec![start_streamlit(s, launch).await?]);
    }
    let all = futures_util::future::join_all((0..count).map(|_| start_streamlit(s, launch))).await;
    let mut started = Vec::with_capacity(count);
    let mut failed = None;
    for r in all {
        match r {
            Ok(w) => started.push(w),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    match failed {
        None => Ok(started),
        Some(e) => {
            futures_util::future::join_all(started.into_iter().map(|(w, _)| w.stop())).await;
            Err(e)
        }
    }
}

/// Starts `api_command` (placeholders expanded by [`expand_api_command`], `PORT` and
/// `FLUXLIT_API_ROOT_PATH` set) and waits until its port accepts TCP.
pub(crate) async fn start_api(
    s: &Settings,
    launch: &Launch,
    command: &str,
) -> Result<(Sidecar, u16), AppError> {
    let root_path = s.public_mount();
    let api_prefix = format!("{root_path}{}", s.api_mount_path);
    start_on_free_port("api", s.sidecar_start_timeout_s, |port| {
        let line = expand_api_command(
            command,
            &ApiPlaceholders {
                port,
                root_path,
                api_prefix: &api_prefix,
            },
        );
        let (program, args) = split_command(&line).ok_or_else(|| AppError::ApiCommand {
            command: command.to_owned(),
            origin: launch.api_command_origin.clone(),
        })?;
        let mut spec = SidecarSpec::new("api", program);
        spec.args = args;
        spec.env.clone_from(&launch.env);
        spec.env.push(("PORT".into(), port.to_string().into()));
        spec.env
            .push(("FLUXLIT_API_ROOT_PATH".into(), api_prefix.clone().into()));
        spec.cwd = Some(launch.cwd.clone());
        spec.stop_grace = s.sidecar_stop_timeout_s;
        // A TCP probe: uvicorn (and most servers) listen only once the app has started, and an
        // HTTP probe would add a line to the API's access log every interval.
        let mut probe = HealthProbe::connect(SocketAddr::from(([127, 0, 0, 1], port)));
        probe.interval = Duration::from_millis(100);
        probe.ready_interval = Duration::from_secs(1);
        spec.health = Some(probe);
        Ok(spec)
    })
    .await
}

/// The values of `api_command`'s placeholders for one start of the API.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ApiPlaceholders<'a> {
    /// `{port}`: the loopback port the API must listen on.
    pub(crate) port: u16,
    /// `{root_path}`: the public mount (`FLUXLIT_ROOT_PATH`): `""` or `/seg…`.
    pub(crate) root_path: &'a str,
    /// `{api_prefix}`: the API's public prefix, root path plus API mount (`/api`,
    /// `/myapp/api`); the same value as `FLUXLIT_API_ROOT_PATH`. Never empty.
    pub(crate) api_prefix: &'a str,
}

/// Replaces `{port}`, `{root_path}` and `{api_prefix}` in `command` with their values, quoted
/// for where they stand, so that the result means the same to `sh -c` and to FluxLit's own
/// splitting ([`split_command`]) and a value is always exactly one piece of one word:
///
/// - outside quotes, a value made only of `A–Z a–z 0–9 _ @ % + = : , . / -` goes in as it is;
///   anything else, and the empty value, goes in single-quoted (`''` for empty, so that
///   `--root-path {root_path}` keeps its argument when there is no root path);
/// - inside single quotes, a `'` in the value becomes `'\''`;
/// - inside double quotes, `"`, `\`, `$` and `` ` `` are backslash-escaped.
///
/// Other text, including other `{…}`, is left as it is. The configuration already limits root
/// paths and mounts to RFC 3986 unreserved characters and `/`; the quoting holds for any value
/// (an embedding application can set them too), so no value can add shell syntax.
pub(crate) fn expand_api_command(command: &str, values: &ApiPlaceholders<'_>) -> String {
    let port = values.port.to_string();
    let table: [(&str, &str); 3] = [
        ("{port}", &port),
        ("{root_path}", values.root_path),
        ("{api_prefix}", values.api_prefix),
    ];
    let mut out = String::with_capacity(command.len() + 32);
    let mut quote = Quote::None;
    let mut rest = command;
    while let Some(c) = rest.chars().next() {
        if c == '{'
            && let Some((name, value)) = table.iter().find(|(n, _)| rest.starts_with(n))
        {
            push_quoted(&mut out, value, quote);
            rest = &rest[name.len()..];
            continue;
        }
        let mut len = c.len_utf8();
        match (c, quote) {
            // An escaped character is copied with its backslash (outside single quotes).
            ('\\', Quote::None | Quote::Double) => {
                len += rest[len..].chars().next().map_or(0, char::len_utf8);
            }
            ('\'', Quote::None) => quote = Quote::Single,
            ('\'', Quote::Single) => quote = Quote::None,
            ('"', Quote::None) => quote = Quote::Double,
            ('"', Quote::Double) => quote = Quote::None,
            _ => {}
        }
        out.push_str(&rest[..len]);
        rest = &rest[len..];
    }
    out
}

/// Where a placeholder stands in a command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Single,
    Double,
}

/// Appends `value` quoted for `quote` (see [`expand_api_command`]).
fn push_quoted(out: &mut String, value: &str, quote: Quote) {
    match quote {
        Quote::None => {
            let plain = !value.is_empty()
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c));
            if plain {
                out.push_str(value);
            } else {
                out.push('\'');
                out.push_str(&value.replace('\'', "'\\''"));
                out.push('\'');
            }
        }
        Quote::Single => out.push_str(&value.replace('\'', "'\\''")),
        Quote::Double => {
            for c in value.chars() {
                if matches!(c, '"' | '\\' | '$' | '`') {
                    out.push('\\');
                }
                out.push(c);
            }
        }
    }
}

/// Starts the API sidecar `api` describes (see [`start_api`] and [`start_py_api`]).
pub(crate) async fn start_api_process(
    s: &Settings,
    launch: &Launch,
    api: &ApiProcess,
) -> Result<(Sidecar, u16), AppError> {
    match api {
        ApiProcess::Command(command) => start_api(s, launch, command).await,
        ApiProcess::PyApp(app) => start_py_api(s, launch, app).await,
    }
}

/// Starts a FluxLit-for-Python app's FastAPI object under uvicorn with the interpreter
/// (`python -c` [`crate::pyapp::API_BOOTSTRAP`]; `PORT`, `FLUXLIT_API_ROOT_PATH`,
/// `FLUXLIT_APP` and `FLUXLIT_API_MOUNT_PATH` set) and waits until its port accepts TCP.
pub(crate) async fn start_py_api(
    s: &Settings,
    launch: &Launch,
    app: &PyApp,
) -> Result<(Sidecar, u16), AppError> {
    let root_path = crate::pyapp::api_root_path(s.public_mount(), &s.api_mount_path);
    start_on_free_port("api", s.sidecar_start_timeout_s, |port| {
        let mut spec = SidecarSpec::new("api", &launch.python);
        spec.args = crate::pyapp::api_args(
            &app.target,
            port,
            s.public_mount(),
            &s.api_mount_path,
            &s.log_level,
        );
        spec.env.clone_from(&launch.env);
        spec.env.push(("PORT".into(), port.to_string().into()));
        spec.env
            .push(("FLUXLIT_API_ROOT_PATH".into(), root_path.clone().into()));
        spec.env.extend(app.env(&s.api_mount_path));
        spec.cwd = Some(launch.cwd.clone());
        spec.stop_grace = s.sidecar_stop_timeout_s;
        // uvicorn listens once the app has been imported and its lifespan started.
        let mut probe = HealthProbe::connect(SocketAddr::from(([127, 0, 0, 1], port)));
        probe.interval = Duration::from_millis(100);
        probe.ready_interval = Duration::from_secs(1);
        spec.health = Some(probe);
        Ok(spec)
    })
    .await
}

/// Splits a command line. A plain command (words and quotes only) is executed directly, so
/// the process FluxLit supervises *is* the API server (signals and the parent-death signal reach
/// it). Anything using shell syntax (`;`, `&&`, `|`, `$VAR`, redirections, globs) runs under
/// `sh -c`; then a SIGKILLed gateway can only take `sh` with it, not what `sh` started, so a
/// warning says so.
pub(crate) fn split_command(line: &str) -> Option<(OsString, Vec<OsString>)> {
    if uses_shell_syntax(line) {
        tracing::warn!(
            "api_command uses shell syntax, so it runs under `sh -c`; if the gateway is killed with SIGKILL, \
             processes started by that shell may outlive it. Use a plain command (or `exec …`) to avoid this"
        );
        return Some(("sh".into(), vec!["-c".into(), line.into()]));
    }
    let words = shlex::split(line)?;
    let mut it = words.into_iter().map(OsString::from);
    let program = it.next()?;
    Some((program, it.collect()))
}

/// Whether `line` needs a shell: an operator, expansion, redirection, glob or comment outside
/// quotes (inside double quotes, `$` and backquotes still expand).
pub(crate) fn uses_shell_syntax(line: &str) -> bool {
    const OUTSIDE_QUOTES: &[char] = &[
        ';', '&', '|', '<', '>', '(', ')', '$', '`', '*', '?', '[', '\n', '~', '#',
    ];
    let mut chars = line.chars();
    let (mut single, mut double) = (false, false);
    while let Some(c) = chars.next() {
        match c {
            '\\' if !single => {
                chars.next();
            }
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '$' | '`' if double => return true,
            c if !single && !double && OUTSIDE_QUOTES.contains(&c) => return true,
            _ => {}
        }
    }
    false
}

/// The program `fluxlit run` executes for `api_command`, as [`find_api_program`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiProgram {
    /// The program's first word as written (`sh` when the line uses shell syntax).
    pub program: String,
    /// Whether the line runs under `sh -c` because it uses shell syntax (`;`, `&&`, `|`,
    /// `$VAR`, redirections, globs); a SIGKILLed gateway then takes only `sh` with it.
    pub shell: bool,
    /// The executable file the program resolves to.
    pub path: PathBuf,
}

/// Finds the program `api_command` starts, the way `fluxlit run` starts it, without running
/// it: the placeholders are expanded (`{port}` with a stand-in port), the line is split as
/// `fluxlit run` splits it (shell syntax means `sh -c`), and a program without `/` is looked up
/// on the sidecars' `PATH`: the Python interpreter's directory first, then `path` (the
/// gateway's `PATH`, `/usr/local/bin:/usr/bin:/bin` when unset). Relative names and `PATH`
/// entries resolve against `cwd`, the sidecars' working directory.
///
/// # Errors
/// A sentence naming the command and what is wrong: it cannot be split (an unclosed quote),
/// it is empty, its program is on no `PATH` directory (they are listed), or the file is not
/// executable.
pub fn find_api_program(
    settings: &Settings,
    command: &str,
    python: &Path,
    path: Option<&str>,
    cwd: &Path,
) -> Result<ApiProgram, String> {
    let mount = settings.public_mount();
    let api_prefix = format!("{mount}{}", settings.api_mount_path);
    let line = expand_api_command(
        command,
        &ApiPlaceholders {
            port: 8001,
            root_path: mount,
            api_prefix: &api_prefix,
        },
    );
    let shell = uses_shell_syntax(&line);
    let program = if shell {
        "sh".to_owned()
    } else {
        let words = shlex::split(&line).ok_or_else(|| {
            format!("`{command}` cannot be split into words (an unclosed quote?)")
        })?;
        words
            .into_iter()
            .next()
            .ok_or_else(|| "the command is empty".to_owned())?
    };
    let search = child_path(path, python.parent().filter(|p| !p.as_os_str().is_empty()));
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![cwd.join(&program)]
    } else {
        search
            .split(':')
            .map(|dir| {
                cwd.join(if dir.is_empty() { "." } else { dir })
                    .join(&program)
            })
            .collect()
    };
    let mut not_executable = None;
    for candidate in candidates {
        if candidate.is_file() {
            if is_executable(&candidate) {
                return Ok(ApiProgram {
                    program,
                    shell,
                    path: candidate,
                });
            }
            not_executable.get_or_insert(candidate);
        }
    }
    Err(match not_executable {
        Some(file) => format!(
            "`{program}` is {}, which is not executable (chmod +x it)",
            file.display()
        ),
        None if program.contains('/') => format!("`{program}` does not exist in {}", cwd.display()),
        None => format!(
            "`{program}` is not on the sidecars' PATH ({search}); install it in the interpreter's environment or name it with its path"
        ),
    })
}

#[cfg(unix)]
fn is_executable(file: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(file).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(file: &Path) -> bool {
    file.is_file()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn several_workers_share_a_generated_cookie_secret_unless_the_user_set_one() {
        let dir =
            std::env::temp_dir().join(format!("fluxlit-cookie-secret-{}", std::process::id()));
        let home = dir.join("home");
        std::fs::create_dir_all(home.join(".streamlit")).unwrap();
        std::fs::create_dir_all(dir.join(".streamlit")).unwrap();
        let env = |pairs: &[(&str, &str)]| {
            let mut all = vec![("HOME".to_owned(), home.display().to_string())];
            all.extend(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            );
            fluxlit_config::Environment::from_pairs(all)
        };
        let a = shared_cookie_secret(&[], &env(&[]), &dir).unwrap().unwrap();
        let b = shared_cookie_secret(&[], &env(&[]), &dir).unwrap().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b, "new at every start");
        for args in [
            vec!["--server.cookieSecret".to_owned(), "mine".to_owned()],
            vec!["--server.cookieSecret=mine".to_owned()],
        ] {
            assert_eq!(shared_cookie_secret(&args, &env(&[]), &dir).unwrap(), None);
        }
        let set = env(&[(COOKIE_SECRET_ENV, "mine")]);
        assert_eq!(shared_cookie_secret(&[], &set, &dir).unwrap(), None);
        let empty = env(&[(COOKIE_SECRET_ENV, "")]);
        assert!(shared_cookie_secret(&[], &empty, &dir).unwrap().is_some());
        // Another [server] key, or the key elsewhere, is not the secret.
        std::fs::write(
            dir.join(".streamlit/config.toml"),
            "cookieSecret = 'x'\n[server]\nport = 1\n",
        )
        .unwrap();
        assert!(
            shared_cookie_secret(&[], &env(&[]), &dir)
                .unwrap()
                .is_some()
        );
        std::fs::write(
            dir.join(".streamlit/config.toml"),
            "[server]\ncookieSecret = 'x'\n",
        )
        .unwrap();
        assert_eq!(shared_cookie_secret(&[], &env(&[]), &dir).unwrap(), None);
        std::fs::remove_file(dir.join(".streamlit/config.toml")).unwrap();
        std::fs::write(
            home.join(".streamlit/config.toml"),
            "[server]\ncookieSecret = 'x'\n",
        )
        .unwrap();
        assert_eq!(shared_cookie_secret(&[], &env(&[]), &dir).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn worker_names() {
        assert_eq!(worker_name(0, 1), "streamlit");
        assert_eq!(worker_name(2, 3), "streamlit-3");
        assert_eq!(worker_name(0, 3), "streamlit-1");
    }

    #[test]
    fn shell_syntax_is_found_outside_quotes_only() {
        assert!(!uses_shell_syntax("python -c 'print(1); x'"));
        assert!(!uses_shell_syntax("python -m uvicorn api:app --port 9000"));
        assert!(uses_shell_syntax("a && b"));
        assert!(uses_shell_syntax("echo \"$HOME\""));
        assert!(uses_shell_syntax("uvicorn app:app > log"));
        assert!(!uses_shell_syntax("echo \\$HOME"));
    }

    #[test]
    fn plain_commands_are_executed_directly() {
        let (p, a) = split_command("python -m uvicorn api:app --port 9000").unwrap();
        assert_eq!(p, "python");
        assert_eq!(a.len(), 5);
        let (p, a) = split_command("python -c 'print(1)'").unwrap();
        assert_eq!(
            (p.as_os_str(), a[1].as_os_str()),
            ("python".as_ref(), "print(1)".as_ref())
        );
    }

    #[test]
    fn api_programs_are_found_as_run_finds_them() {
        let dir = std::env::temp_dir().join(format!("fluxlit-api-program-{}", std::process::id()));
        let bin = dir.join("venv/bin");
        std::fs::create_dir_all(&bin).unwrap();
        let exe = bin.join("my-api");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        let plain = dir.join("plain.txt");
        std::fs::write(&plain, "").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let s = fluxlit_config::load(&fluxlit_config::LoadOptions::new(
            &dir,
            fluxlit_config::Environment::default(),
            fluxlit_config::CliOverrides::default(),
        ))
        .unwrap()
        .settings;
        let python = Path::new("venv/bin/python");
        let found = find_api_program(
            &s,
            "my-api --port {port}",
            python,
            Some("/nonexistent"),
            &dir,
        )
        .unwrap();
        assert_eq!(found.path, dir.join("venv/bin/my-api"));
        assert!(!found.shell);
        let found =
            find_api_program(&s, "cd x && my-api", python, Some("/usr/bin:/bin"), &dir).unwrap();
        assert!(found.shell);
        assert_eq!(found.program, "sh");
        let e = find_api_program(
            &s,
            "no-such-api --port {port}",
            python,
            Some("/nonexistent"),
            &dir,
        )
        .unwrap_err();
        assert!(
            e.contains("`no-such-api` is not on the sidecars' PATH (venv/bin:/nonexistent)"),
            "{e}"
        );
        let e = find_api_program(&s, "./plain.txt", python, None, &dir).unwrap_err();
        assert!(e.contains("not executable"), "{e}");
        let e = find_api_program(&s, "'open", python, None, &dir).unwrap_err();
        assert!(e.contains("cannot be split"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shell_syntax_goes_through_sh() {
        let (p, a) = split_command("cd api && uvicorn app:app").unwrap();
        assert_eq!(p, "sh");
        assert_eq!(
            a,
            vec![
                OsString::from("-c"),
                OsString::from("cd api && uvicorn app:app")
            ]
        );
        assert!(split_command("").is_none());
        assert!(split_command("unterminated 'quote").is_none());
    }

    fn values<'a>(root_path: &'a str, api_prefix: &'a str) -> ApiPlaceholders<'a> {
        ApiPlaceholders {
            port: 8123,
            root_path,
            api_prefix,
        }
    }

    #[test]
    fn placeholders_expand_to_plain_words() {
        let v = values("/myapp", "/myapp/api");
        let line = expand_api_command(
            "python -m uvicorn api:app --port {port} --root-path {api_prefix} --x={root_path}",
            &v,
        );
        assert_eq!(
            line,
            "python -m uvicorn api:app --port 8123 --root-path /myapp/api --x=/myapp"
        );
        let (_, args) = split_command(&line).unwrap();
        assert_eq!(args[6], "/myapp/api");
        // Unknown braces and an escaped brace stay as they are.
        assert_eq!(
            expand_api_command("x {porty} {} \\{port} {port}", &v),
            "x {porty} {} \\{port} 8123"
        );
    }

    #[test]
    fn an_empty_root_path_stays_one_argument() {
        let line = expand_api_command(
            "serve --root-path {root_path} --port {port}",
            &values("", "/api"),
        );
        assert_eq!(line, "serve --root-path '' --port 8123");
        let (_, args) = split_command(&line).unwrap();
        assert_eq!(args, ["--root-path", "", "--port", "8123"]);
        // Glued to other text the empty value adds nothing.
        let (_, args) = split_command(&expand_api_command(
            "serve --root={root_path}",
            &values("", "/api"),
        ))
        .unwrap();
        assert_eq!(args, ["--root="]);
    }

    #[test]
    fn values_inside_quotes_are_escaped_for_those_quotes() {
        let v = values("/it's \"$HOME\" `id`", "/a b/api");
        let line = expand_api_command("echo '{root_path}' \"{root_path}\" {api_prefix}", &v);
        let (_, args) = split_command(&line).unwrap();
        assert_eq!(args, [v.root_path, v.root_path, v.api_prefix]);
        // The quoting keeps a plain command plain: it is still executed without a shell.
        assert!(!uses_shell_syntax(&line), "{line}");
    }

    /// The expanded line run by a real `sh -c` (as a command with shell syntax is) prints each
    /// value back unchanged: no value can add a command, a variable or a glob.
    #[test]
    fn hostile_values_cannot_inject_into_sh() {
        let dir = std::env::temp_dir().join(format!("fluxlit-expand-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("pwned");
        let hostile = [
            format!("/x'; touch {}; '", marker.display()),
            format!("/x\"; touch {}; \"", marker.display()),
            format!("/$(touch {})", marker.display()),
            format!("/`touch {}`", marker.display()),
            "/$HOME/*/~/?".to_owned(),
            "/a\\b\nc".to_owned(),
            String::new(),
        ];
        for value in &hostile {
            let v = values(value, value);
            for template in [
                "printf '%s|' {root_path} '{root_path}' \"{api_prefix}\" x{api_prefix}x; true",
                "printf '%s|' '{root_path}'\"{api_prefix}\"{root_path} && true",
            ] {
                let line = expand_api_command(template, &v);
                let (program, args) = split_command(&line).unwrap();
                assert_eq!(program, "sh", "{line}");
                let out = std::process::Command::new(program)
                    .args(args)
                    .current_dir(&dir)
                    .output()
                    .unwrap();
                let got = String::from_utf8(out.stdout).unwrap();
                let want = if template.contains("x{api_prefix}x") {
                    format!("{value}|{value}|{value}|x{value}x|")
                } else {
                    format!("{value}{value}{value}|")
                };
                assert_eq!(got, want, "template {template:?} with {value:?}: {line}");
                assert!(!marker.exists(), "{line} ran an injected command");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn child_path_puts_the_venv_first() {
        assert_eq!(
            child_path(Some("/usr/bin"), Some(Path::new("/v/bin"))),
            "/v/bin:/usr/bin"
        );
        assert_eq!(child_path(Some("/usr/bin"), None), "/usr/bin");
        assert_eq!(child_path(None, None), "/usr/local/bin:/usr/bin:/bin");
    }

    #[test]
    fn streamlit_gets_its_port_address_and_mount() {
        let args = streamlit_args(Path::new("app.py"), 8501, "/myapp", &["--x".into()]);
        let args: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
        assert_eq!(
            args,
            [
                "-m",
                "streamlit",
                "run",
                "app.py",
                "--server.headless",
                "true",
                "--server.port",
                "8501",
                "--server.address",
                "127.0.0.1",
                "--browser.gatherUsageStats",
                "false",
                "--server.baseUrlPath",
                "/myapp",
                "--x"
            ]
        );
        let args = streamlit_args(Path::new("app.py"), 1, "", &[]);
        assert!(!args.iter().any(|a| a == "--server.baseUrlPath"));
    }
}
