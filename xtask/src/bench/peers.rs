//! The rows of the benchmark: the upstream itself (`direct`) and the proxies in front of it,
//! with their configurations, start-up and readiness checks.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::procs::{Proc, command};
use crate::{Failed, Result};

/// Which row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Kind {
    /// The load generator straight to the upstream.
    Direct,
    /// `fluxlit run --ui-upstream …` (this repository's release build).
    Fluxlit,
    /// Debian's nginx as a reverse proxy.
    Nginx,
    /// Debian's HAProxy as a reverse proxy.
    Haproxy,
    /// FluxLit for Python's gateway (`pip install fluxlit`).
    Python,
    /// FluxLit as deployed: JSON access log (to a file) and Prometheus metrics on
    /// ([`super::soak::PRODUCTION_ENV`]).
    FluxlitProduction,
    /// nginx with a JSON access log written to a file.
    NginxLog,
    /// HAProxy with `option httplog`, written to a file.
    HaproxyLog,
}

impl Kind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Fluxlit => "FluxLit",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "HAProxy",
            Kind::Python => "FluxLit for Python",
            Kind::FluxlitProduction => "FluxLit production",
            Kind::NginxLog => "nginx + access log",
            Kind::HaproxyLog => "HAProxy + httplog",
        }
    }

    /// The peers FluxLit is measured against ("best peer").
    pub(crate) fn is_peer(self) -> bool {
        matches!(self, Kind::Nginx | Kind::Haproxy)
    }

    /// The rows that log every request (FluxLit production and the peers with access logs):
    /// compared with each other, like for like.
    pub(crate) fn logs_requests(self) -> bool {
        matches!(
            self,
            Kind::FluxlitProduction | Kind::NginxLog | Kind::HaproxyLog
        )
    }

    /// The peers a row's "÷ best peer" compares with: the logging peers for logging rows, the
    /// default peers otherwise.
    pub(crate) fn peer_of(self, other: Kind) -> bool {
        if self.logs_requests() {
            matches!(other, Kind::NginxLog | Kind::HaproxyLog)
        } else {
            other.is_peer()
        }
    }

    /// Whether the row runs `sc`: the logging rows run the HTTP scenarios on the UI path only
    /// (they are about the cost of logging); the API scenario runs through FluxLit, nginx and
    /// HAProxy (each stripping `/api`) and direct (without the prefix).
    pub(crate) fn runs(self, sc: super::load::Scenario) -> bool {
        use super::load::Scenario;
        match sc {
            Scenario::ApiGet1k16 => {
                matches!(
                    self,
                    Kind::Direct | Kind::Fluxlit | Kind::Nginx | Kind::Haproxy
                )
            }
            _ if self.logs_requests() => sc.is_http(),
            _ => true,
        }
    }
}

/// A running row: where the load generator points and the process behind it (none for
/// `direct`, which is the upstream itself).
pub(crate) struct Row {
    pub(crate) kind: Kind,
    pub(crate) port: u16,
    pub(crate) proc: Option<Proc>,
    pub(crate) version: String,
}

impl Row {
    pub(crate) fn pgid(&self) -> Option<i32> {
        self.proc.as_ref().map(Proc::pgid)
    }

    pub(crate) fn check_alive(&mut self) -> Result {
        match &mut self.proc {
            Some(p) => p.check_alive(),
            None => Ok(()),
        }
    }
}

/// A free loopback port (bound and released; the tiny race is acceptable on a bench box).
pub(crate) fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Failed(format!("cannot find a free loopback port: {e}")))
}

/// Status code of `GET path` on 127.0.0.1:port (one fresh connection, 2 s timeouts).
pub(crate) fn http_status(port: u16, path: &str) -> Option<u16> {
    http_status_with(port, path, &[])
}

/// [`http_status`] with `headers` (name, value) added to the request.
pub(crate) fn http_status_with(port: u16, path: &str, headers: &[(String, String)]) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    std::str::from_utf8(&buf[..n])
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Waits (polling every 50 ms, at most `timeout`) for `GET path` to answer 200 while `proc`
/// stays alive.
pub(crate) fn wait_ready(proc: &mut Proc, port: u16, path: &str, timeout: Duration) -> Result {
    let start = Instant::now();
    loop {
        if let Some(status) = proc.exited() {
            return Err(Failed(format!(
                "{} exited during start-up ({status}); see its log under target/bench/work",
                proc.name
            )));
        }
        if http_status(port, path) == Some(200) {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(Failed(format!(
                "{} did not answer 200 on http://127.0.0.1:{port}{path} within {} s",
                proc.name,
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn fresh_dir(dir: &Path) -> Result {
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .map_err(|e| Failed(format!("cannot clear {}: {e}", dir.display())))?;
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Failed(format!("cannot create {}: {e}", dir.display())))
}

fn write(path: &Path, text: &str) -> Result {
    std::fs::write(path, text).map_err(|e| Failed(format!("cannot write {}: {e}", path.display())))
}

/// First line of a command's stdout + stderr (`nginx -v` prints on stderr).
pub(crate) fn version_of(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|e| format!("unavailable ({e})"))
}

/// Starts the upstream (`fluxlit-bench-upstream`) on a free port.
pub(crate) fn start_upstream(bin: &Path, work: &Path, threads: usize) -> Result<(Proc, u16)> {
    let port = free_port()?;
    let mut cmd = command(bin.join("fluxlit-bench-upstream"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--threads", &threads.to_string()]);
    let mut p = Proc::spawn("upstream", cmd, Some(&work.join("upstream.log")))?;
    wait_ready(&mut p, port, "/readyz", Duration::from_secs(10))?;
    Ok((p, port))
}

/// FluxLit: `fluxlit run --ui-upstream http://127.0.0.1:UP --api-upstream
/// http://127.0.0.1:UP` in an empty directory.
pub(crate) fn start_fluxlit(bin: &Path, work: &Path, upstream: u16) -> Result<Row> {
    start_fluxlit_with(bin, work, upstream, "fluxlit", &[])
}

/// [`start_fluxlit`] in `work/NAME` with `env` added (e.g. the access log on); its stderr (the
/// log and the access log) goes to `work/NAME/fluxlit.log`.
pub(crate) fn start_fluxlit_with(
    bin: &Path,
    work: &Path,
    upstream: u16,
    name: &str,
    env: &[(&str, &str)],
) -> Result<Row> {
    start_fluxlit_on(bin, work, upstream, name, env, free_port()?)
}

/// [`start_fluxlit_with`] on `port` (the authentication section needs the port before the
/// gateway starts: its public URL is registered at the OpenID provider).
pub(crate) fn start_fluxlit_on(
    bin: &Path,
    work: &Path,
    upstream: u16,
    name: &str,
    env: &[(&str, &str)],
    port: u16,
) -> Result<Row> {
    let dir = work.join(name);
    fresh_dir(&dir)?;
    let mut cmd = command(bin.join("fluxlit"));
    // The API is the same upstream under `/api` (the API scenario: prefix stripped).
    cmd.args([
        "run",
        "--ui-upstream",
        &format!("http://127.0.0.1:{upstream}"),
        "--api-upstream",
        &format!("http://127.0.0.1:{upstream}"),
    ])
    .args(["--port", &port.to_string(), "--no-pidfile"])
    // `warn` unless `env` chooses (the production row logs at `info`, its access log's level).
    .args(
        env.iter()
            .all(|(k, _)| *k != "FLUXLIT_LOG_LEVEL")
            .then_some(["--log-level", "warn"])
            .into_iter()
            .flatten(),
    )
    // Every load comes from 127.0.0.1, like an edge proxy's: the per-client limits (which
    // nginx and HAProxy here do not have) would cap the idle-tunnel row at 256.
    .env("FLUXLIT_GATEWAY_MAX_WEBSOCKETS_PER_CLIENT_IP", "0")
    .env("FLUXLIT_GATEWAY_MAX_CONNECTIONS_PER_IP", "0")
    .envs(env.iter().copied())
    .current_dir(&dir);
    let mut p = Proc::spawn(name, cmd, Some(&dir.join("fluxlit.log")))?;
    wait_ready(&mut p, port, "/api/readyz", Duration::from_secs(20))?;
    Ok(Row {
        kind: Kind::Fluxlit,
        port,
        proc: Some(p),
        version: format!(
            "{} (this checkout, release)",
            version_of(&bin.join("fluxlit").to_string_lossy(), &["--version"])
        ),
    })
}

/// The nginx configuration: one process (`master_process off` = the single worker does
/// everything), HTTP/1.1 keep-alive to the upstream (`keepalive 128`, no request limit),
/// WebSocket upgrade, streaming both ways (no request or response buffering, like FluxLit),
/// X-Forwarded-For/-Proto set; `/api/` proxied with the prefix stripped (the API scenario);
/// no access log, or (`log`) a JSON access log to `DIR/access.log` with the fields FluxLit's
/// JSON access log has.
pub(crate) fn nginx_conf(dir: &Path, port: u16, upstream: u16, max_fds: u64, log: bool) -> String {
    let d = dir.display();
    let access_log = if log {
        format!(
            r#"log_format bench_json escape=json '{{"ts":"$time_iso8601","method":"$request_method","path":"$request_uri","status":$status,"bytes_in":$request_length,"bytes_out":$bytes_sent,"duration_ms":$request_time,"client_ip":"$remote_addr","request_id":"$request_id","upstream":"$upstream_addr"}}';
    access_log {d}/access.log bench_json;"#
        )
    } else {
        "access_log off;".to_owned()
    };
    let location = |prefix: &str, target: &str| {
        format!(
            r"location {prefix} {{
            proxy_pass http://bench_upstream{target};
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}"
        )
    };
    let ui = location("/", "");
    let api = location("/api/", "/");
    // nginx's own connection accounting (listeners, cached upstream connections, connections
    // being closed) runs out before the descriptors do ("worker_connections are not enough,
    // reusing connections" at 9,369 tunnels with 19,984), so allow 10 % more connections than
    // descriptors. Not more: nginx preallocates its connection structures (2 × RLIMIT_NOFILE
    // raised its idle RSS from 14.9 to 23.8 MiB).
    let worker_connections = max_fds.saturating_add(max_fds / 10);
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile {max_fds};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections {worker_connections};
}}
http {{
    {access_log}
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_max_body_size 0;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' '';
    }}
    upstream bench_upstream {{
        server 127.0.0.1:{upstream};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        {ui}
        {api}
    }}
}}
"#
    )
}

/// nginx ([`nginx_conf`]); `log`: the [`Kind::NginxLog`] row.
pub(crate) fn start_nginx(work: &Path, upstream: u16, max_fds: u64, log: bool) -> Result<Row> {
    let dir = work.join(if log { "nginx-log" } else { "nginx" });
    fresh_dir(&dir)?;
    let port = free_port()?;
    let conf = dir.join("nginx.conf");
    write(&conf, &nginx_conf(&dir, port, upstream, max_fds, log))?;
    let mut cmd = command("nginx");
    cmd.arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.join("error.log"));
    let mut p = Proc::spawn("nginx", cmd, Some(&dir.join("nginx.log")))?;
    wait_ready(&mut p, port, "/1k", Duration::from_secs(10))?;
    Ok(Row {
        kind: if log { Kind::NginxLog } else { Kind::Nginx },
        port,
        proc: Some(p),
        version: version_of("nginx", &["-v"]),
    })
}

/// The HAProxy configuration: one thread, HTTP mode (HTTP/1.1 keep-alive to the upstream,
/// idle server connections reused by any client, WebSocket upgrades handled natively),
/// X-Forwarded-For set; `/api/` with the prefix stripped (the API scenario); no logging, or
/// (`log`) `option httplog` to stdout, which the bench writes to a file (HAProxy logs to
/// syslog or a stream, never to a file itself).
pub(crate) fn haproxy_conf(port: u16, upstream: u16, max_conns: u64, log: bool) -> String {
    let (global_log, defaults_log) = if log {
        (
            "\n    log stdout format raw local0",
            "\n    log global\n    option httplog",
        )
    } else {
        ("", "")
    };
    format!(
        r"global
    nbthread 1
    maxconn {max_conns}{global_log}

defaults
    mode http{defaults_log}
    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 75s
    timeout tunnel 1h

frontend bench
    bind 127.0.0.1:{port}
    acl api path_beg /api/
    http-request set-path %[path,regsub(^/api/,/)] if api
    default_backend bench_upstream

backend bench_upstream
    http-request set-header X-Forwarded-Proto http
    server up 127.0.0.1:{upstream}
"
    )
}

/// HAProxy ([`haproxy_conf`]); `log`: the [`Kind::HaproxyLog`] row (its stdout, the log, goes
/// to `DIR/haproxy.log`).
pub(crate) fn start_haproxy(work: &Path, upstream: u16, max_conns: u64, log: bool) -> Result<Row> {
    let dir = work.join(if log { "haproxy-log" } else { "haproxy" });
    fresh_dir(&dir)?;
    let port = free_port()?;
    let conf = dir.join("haproxy.cfg");
    write(&conf, &haproxy_conf(port, upstream, max_conns, log))?;
    let mut cmd = command("haproxy");
    cmd.arg("-db").arg("-f").arg(&conf);
    let mut p = Proc::spawn("haproxy", cmd, Some(&dir.join("haproxy.log")))?;
    wait_ready(&mut p, port, "/1k", Duration::from_secs(10))?;
    Ok(Row {
        kind: if log { Kind::HaproxyLog } else { Kind::Haproxy },
        port,
        proc: Some(p),
        version: version_of("haproxy", &["-v"]),
    })
}

/// FluxLit for Python's gateway exactly as `fluxlit run` builds it
/// (`fluxlit.runtime.uvicorn_runner.run_unified`): `build_gateway` with the upstream read from
/// the state file per request, wrapped by `_inject_public_root_path`, served by uvicorn (one
/// process, uvloop + httptools + websockets as installed) — only the Streamlit subprocess is
/// left out and its URL is the bench upstream.
pub(crate) const PYTHON_LAUNCHER: &str = r#"import sys

import uvicorn
from fluxlit import FluxLit
from fluxlit.gateway import build_gateway, normalize_root_mount
from fluxlit.runtime.public_mount import _inject_public_root_path
from fluxlit.runtime.upstream_state import (
    read_streamlit_upstream_url,
    write_streamlit_upstream_state,
)

upstream, port = sys.argv[1], int(sys.argv[2])
fl = FluxLit(title="bench")
write_streamlit_upstream_state(upstream)
mount = normalize_root_mount(fl.settings.public_mount_path())
app = _inject_public_root_path(
    build_gateway(
        fl.api,
        "",
        upstream_resolver=read_streamlit_upstream_url,
        access_log=fl.settings.enable_gateway_access_log,
        api_prefix=fl.settings.api_mount_path,
        root_mount=mount,
        proxy_settings=fl.settings,
    ),
    mount,
)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", root_path="")
"#;

/// The venv FluxLit for Python goes into (not the project's `.venv`).
pub(crate) fn python_venv(root: &Path) -> PathBuf {
    root.join("target/bench/py-venv")
}

/// The installed `fluxlit` version in `venv`, if any.
pub(crate) fn python_fluxlit_version(venv: &Path) -> Option<String> {
    let out = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('fluxlit'))",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Creates the venv and `pip install fluxlit` (bounded to 15 minutes). Returns why not on
/// failure.
pub(crate) fn install_python(venv: &Path) -> std::result::Result<String, String> {
    if let Some(v) = python_fluxlit_version(venv) {
        return Ok(v);
    }
    if !venv.join("bin/python").exists() {
        let st = Command::new("python3")
            .args(["-m", "venv"])
            .arg(venv)
            .status()
            .map_err(|e| format!("python3 -m venv failed to run: {e}"))?;
        if !st.success() {
            return Err(format!("python3 -m venv {} failed ({st})", venv.display()));
        }
    }
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "fluxlit",
    ]);
    super::procs::output_bounded("pip install fluxlit", cmd, Duration::from_secs(900))
        .map_err(|Failed(e)| format!("`pip install fluxlit` failed: {e}"))?;
    python_fluxlit_version(venv).ok_or_else(|| "fluxlit is not importable after pip install".into())
}

pub(crate) fn start_python(venv: &Path, work: &Path, upstream: u16) -> Result<Row> {
    let dir = work.join("python");
    fresh_dir(&dir)?;
    let port = free_port()?;
    let script = dir.join("launch.py");
    write(&script, PYTHON_LAUNCHER)?;
    let mut cmd = command(venv.join("bin/python"));
    cmd.arg(&script)
        .arg(format!("http://127.0.0.1:{upstream}"))
        .arg(port.to_string())
        .current_dir(&dir)
        .env("TMPDIR", &dir)
        .env("FLUXLIT_NO_PIDFILE", "1")
        .env("PYTHONWARNINGS", "ignore");
    let mut p = Proc::spawn("fluxlit-python", cmd, Some(&dir.join("python.log")))?;
    wait_ready(&mut p, port, "/1k", Duration::from_secs(60))?;
    Ok(Row {
        kind: Kind::Python,
        port,
        proc: Some(p),
        version: format!(
            "fluxlit {} (PyPI), uvicorn {}",
            python_fluxlit_version(venv).unwrap_or_else(|| "?".into()),
            pip_version(venv, "uvicorn")
        ),
    })
}

fn pip_version(venv: &Path, package: &str) -> String {
    Command::new(venv.join("bin/python"))
        .args([
            "-c",
            &format!("import importlib.metadata as m; print(m.version('{package}'))"),
        ])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "?".into())
}
