//! `fluxlit-ops`: chaos and soak tools for FluxLit (see `docs/chaos-and-soak.md`).
//!
//! Each command prints one summary line (`name: PASS …` / `name: FAIL …`), or one JSON object
//! with `--json`, and exits 0 when it passed, 1 when it failed (2 for usage errors). Diagnostics
//! (the gateway's log tail on failures, `--verbose` output) go to stderr.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use fluxlit_ops::chaos::{self, GatewayOptions, GracefulOptions, SlowOptions};
use fluxlit_ops::report::Report;
use fluxlit_ops::soak::{self, Accept, SoakOptions};
use fluxlit_ops::{body, ci, net, ws};
use tokio::signal::unix::{SignalKind, signal};

/// Chaos and soak tools for FluxLit: bounded in count and time, one summary line (or JSON) each.
#[derive(Debug, Parser)]
#[command(name = "fluxlit-ops", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Options shared by every command.
#[derive(Debug, Args)]
struct Common {
    /// Print one JSON object instead of the summary line.
    #[arg(long)]
    json: bool,
    /// Time bound of the whole command, in seconds (it fails when it runs out).
    #[arg(long, value_name = "SECONDS")]
    max_seconds: Option<f64>,
}

/// The gateway under test, for the commands that start `fluxlit run` themselves.
#[derive(Debug, Args)]
struct GatewayArgs {
    /// The `fluxlit` binary (e.g. target/debug/fluxlit).
    #[arg(long, value_name = "BIN")]
    fluxlit: PathBuf,
    /// The app directory, copied to a temporary directory before each start (e.g.
    /// examples/hello).
    #[arg(long, value_name = "DIR")]
    app_dir: PathBuf,
    /// Python with Streamlit; default: the first .venv/bin/python above the app directory or
    /// the working directory.
    #[arg(long, env = "FLUXLIT_STREAMLIT_PYTHON", value_name = "PATH")]
    python: Option<PathBuf>,
    /// Bound for /api/readyz to answer 200 after a start, in seconds.
    #[arg(long, default_value_t = 90.0, value_name = "SECONDS")]
    ready_timeout_seconds: f64,
    /// Echo the gateway's log to stderr.
    #[arg(long)]
    verbose: bool,
}

impl GatewayArgs {
    fn options(&self) -> GatewayOptions {
        GatewayOptions {
            fluxlit: self.fluxlit.clone(),
            app_dir: self.app_dir.clone(),
            python: self.python.clone(),
            ready_timeout_seconds: self.ready_timeout_seconds,
            verbose: self.verbose,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// N GETs of one path: status-code mix and p50/p95/p99 latency; fails on any non-2xx.
    SoakHttp {
        /// http://host:port[/prefix] of the gateway (or an edge in front of it).
        #[arg(long, value_name = "URL")]
        base_url: String,
        /// Path under the base URL.
        #[arg(long, default_value = "/api/healthz")]
        path: String,
        /// Number of GETs.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
        count: u64,
        /// GETs in flight at once.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
        concurrency: u64,
        /// Timeout of one GET, in seconds.
        #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
        timeout_seconds: f64,
        /// Accept any status (transport errors still fail).
        #[arg(long)]
        allow_non_2xx: bool,
        #[command(flatten)]
        common: Common,
    },
    /// N GETs of /api/readyz tallying the codes; 200 and 503 pass unless --require-2xx.
    SoakReadyz {
        /// http://host:port[/prefix] of the gateway.
        #[arg(long, value_name = "URL")]
        base_url: String,
        /// Path under the base URL.
        #[arg(long, default_value = "/api/readyz")]
        path: String,
        /// Number of GETs.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
        count: u64,
        /// GETs in flight at once.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
        concurrency: u64,
        /// Timeout of one GET, in seconds.
        #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
        timeout_seconds: f64,
        /// Fail on anything but 2xx (503 included).
        #[arg(long)]
        require_2xx: bool,
        #[command(flatten)]
        common: Common,
    },
    /// GET the metrics endpoint: 200 with fluxlit_gateway_requests_total.
    SoakMetrics {
        /// http://host:port[/prefix] of the gateway (or of its --metrics-addr listener).
        #[arg(long, value_name = "URL")]
        base_url: String,
        /// Path of the metrics endpoint.
        #[arg(long, default_value = "/__fluxlit/metrics")]
        path: String,
        /// Number of GETs.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        count: u64,
        /// Timeout of one GET, in seconds.
        #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
        timeout_seconds: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Opens N Streamlit-like sessions, waits for content, holds them, closes them.
    WsLoad {
        /// http://host:port[/prefix] of the gateway.
        #[arg(long, value_name = "URL")]
        base_url: String,
        /// Sessions to open.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        sessions: u64,
        /// How long the sessions are held open after they got their content, in seconds.
        #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
        hold_seconds: f64,
        /// A session counts when a binary frame contains this text (default: any binary frame).
        #[arg(long, value_name = "TEXT")]
        expect_text: Option<String>,
        /// Bound for each handshake, in seconds.
        #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
        connect_timeout_seconds: f64,
        /// Bound, per session, from the handshake to the expected frame, in seconds.
        #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
        content_timeout_seconds: f64,
        /// Handshakes in progress at once.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
        connect_concurrency: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Drops WebSockets mid-session without a close frame; the gateway must stay healthy.
    ChaosDroppedWebsocket {
        /// http://host:port[/prefix] of the gateway.
        #[arg(long, value_name = "URL")]
        base_url: String,
        /// Sessions to drop (alternately FIN and RST).
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..=1000))]
        sessions: u64,
        /// Text the fresh session after the drops must receive (default: any binary frame).
        #[arg(long, value_name = "TEXT")]
        expect_text: Option<String>,
        /// The gateway's metrics path: the WebSocket tunnel gauge must come back down.
        #[arg(long, value_name = "PATH")]
        metrics_path: Option<String>,
        /// Bound of each wait, in seconds.
        #[arg(long, default_value_t = 15.0, value_name = "SECONDS")]
        timeout_seconds: f64,
        #[command(flatten)]
        common: Common,
    },
    /// POSTs limit+16 bytes (Content-Length and chunked): 413 naming the setting.
    ChaosOversizedBody {
        /// http://host:port[/prefix] of the gateway.
        #[arg(long, value_name = "URL")]
        base_url: String,
        /// The gateway's body limit for the path, in bytes.
        #[arg(long, value_name = "BYTES")]
        limit_bytes: u64,
        /// Path the bodies are POSTed to (a UI path: gateway_max_proxy_request_body_bytes;
        /// under the API mount: gateway_max_api_request_body_bytes).
        #[arg(long, default_value = "/_stcore/upload_file/x/y")]
        path: String,
        /// Timeout of one request, in seconds.
        #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
        timeout_seconds: f64,
        #[command(flatten)]
        common: Common,
    },
    /// SIGKILL Streamlit: exit policy (gateway exits non-zero) and restart policy.
    ChaosSidecarKill {
        #[command(flatten)]
        gateway: GatewayArgs,
        #[command(flatten)]
        common: Common,
    },
    /// A UI upstream slower than the read timeout (504) and a slow stream (never cut).
    ChaosSlowUpstream {
        /// The `fluxlit` binary.
        #[arg(long, value_name = "BIN")]
        fluxlit: PathBuf,
        /// gateway_upstream_read_timeout_s, in seconds.
        #[arg(long, default_value_t = 0.5, value_name = "SECONDS")]
        read_timeout_seconds: f64,
        /// How long the upstream waits before answering `/`, in seconds.
        #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
        delay_seconds: f64,
        /// Lines of the slow stream.
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(2..=10_000))]
        chunks: u64,
        /// Pause between two lines of the stream, in seconds.
        #[arg(long, default_value_t = 0.3, value_name = "SECONDS")]
        interval_seconds: f64,
        /// Echo the gateway's log to stderr.
        #[arg(long)]
        verbose: bool,
        #[command(flatten)]
        common: Common,
    },
    /// SIGTERM with a live slow request, a live stream and a Streamlit session.
    ChaosGracefulShutdown {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// graceful_shutdown_timeout_s given to the gateway, in seconds.
        #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
        grace_seconds: f64,
        /// How long the in-flight request and stream take, in seconds.
        #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
        request_seconds: f64,
        /// Text the session must receive before the signal (default: any binary frame).
        #[arg(long, value_name = "TEXT")]
        expect_text: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// A short version of every command against a freshly started example app.
    CiShort {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// GETs per soak.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        soak_count: u64,
        /// Sessions of the WebSocket load.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
        ws_sessions: u64,
        #[command(flatten)]
        common: Common,
    },
}

fn size(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Runs `fut` within `max_seconds`, stopping early (and cleaning up: dropping the future kills
/// what it started) on SIGINT/SIGTERM.
async fn guarded(name: &str, max_seconds: f64, fut: impl Future<Output = Report>) -> Report {
    let start = Instant::now();
    let interrupted = async {
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut i), Ok(mut t)) => {
                tokio::select! {
                    _ = i.recv() => "SIGINT",
                    _ = t.recv() => "SIGTERM",
                }
            }
            _ => std::future::pending().await,
        }
    };
    let limit = net::secs(max_seconds).max(Duration::from_secs(1));
    tokio::select! {
        r = tokio::time::timeout(limit, fut) => match r {
            Ok(r) => r,
            Err(_) => {
                let mut r = Report::new(name);
                r.fail("time bound", format!("did not finish within {max_seconds:.0} s (--max-seconds)"));
                r.elapsed = start.elapsed();
                r
            }
        },
        sig = interrupted => {
            let mut r = Report::new(name);
            r.fail("interrupted", format!("{sig}; everything started was killed"));
            r.elapsed = start.elapsed();
            r
        }
    }
}

fn finish(report: &Report, json: bool) -> ExitCode {
    println!("{}", report.render(json));
    if report.pass() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[allow(clippy::too_many_lines)]
async fn run(cmd: Cmd) -> ExitCode {
    match cmd {
        Cmd::SoakHttp {
            base_url,
            path,
            count,
            concurrency,
            timeout_seconds,
            allow_non_2xx,
            common,
        } => {
            let max = common.max_seconds.unwrap_or(60.0);
            let opts = SoakOptions {
                base_url,
                path,
                count: size(count),
                concurrency: size(concurrency),
                max_seconds: max,
                timeout_seconds,
                accept: if allow_non_2xx {
                    Accept::AnyStatus
                } else {
                    Accept::Only2xx
                },
            };
            let r = guarded("soak-http", max + 5.0, soak::soak("soak-http", &opts)).await;
            finish(&r, common.json)
        }
        Cmd::SoakReadyz {
            base_url,
            path,
            count,
            concurrency,
            timeout_seconds,
            require_2xx,
            common,
        } => {
            let max = common.max_seconds.unwrap_or(60.0);
            let opts = SoakOptions {
                base_url,
                path,
                count: size(count),
                concurrency: size(concurrency),
                max_seconds: max,
                timeout_seconds,
                accept: if require_2xx {
                    Accept::Only2xx
                } else {
                    Accept::Readiness
                },
            };
            let r = guarded("soak-readyz", max + 5.0, soak::soak("soak-readyz", &opts)).await;
            finish(&r, common.json)
        }
        Cmd::SoakMetrics {
            base_url,
            path,
            count,
            timeout_seconds,
            common,
        } => {
            let r = guarded(
                "soak-metrics",
                common.max_seconds.unwrap_or(60.0),
                soak::metrics(&base_url, &path, size(count), timeout_seconds),
            )
            .await;
            finish(&r, common.json)
        }
        Cmd::WsLoad {
            base_url,
            sessions,
            hold_seconds,
            expect_text,
            connect_timeout_seconds,
            content_timeout_seconds,
            connect_concurrency,
            common,
        } => {
            let opts = ws::LoadOptions {
                base_url,
                sessions: size(sessions),
                hold_seconds,
                expect_text,
                connect_timeout_seconds,
                content_timeout_seconds,
                connect_concurrency: size(connect_concurrency),
            };
            let r = guarded(
                "ws-load",
                common.max_seconds.unwrap_or(300.0),
                ws::load(&opts),
            )
            .await;
            finish(&r, common.json)
        }
        Cmd::ChaosDroppedWebsocket {
            base_url,
            sessions,
            expect_text,
            metrics_path,
            timeout_seconds,
            common,
        } => {
            let opts = ws::DroppedOptions {
                base_url,
                sessions: size(sessions),
                expect_text,
                metrics_path,
                timeout_seconds,
            };
            let r = guarded(
                "chaos-dropped-websocket",
                common.max_seconds.unwrap_or(180.0),
                ws::dropped(&opts),
            )
            .await;
            finish(&r, common.json)
        }
        Cmd::ChaosOversizedBody {
            base_url,
            limit_bytes,
            path,
            timeout_seconds,
            common,
        } => {
            let opts = body::OversizedOptions {
                base_url,
                limit_bytes,
                path,
                timeout_seconds,
            };
            let r = guarded(
                "chaos-oversized-body",
                common.max_seconds.unwrap_or(60.0),
                body::oversized(&opts),
            )
            .await;
            finish(&r, common.json)
        }
        Cmd::ChaosSidecarKill { gateway, common } => {
            let opts = gateway.options();
            let r = guarded(
                "chaos-sidecar-kill",
                common.max_seconds.unwrap_or(300.0),
                chaos::sidecar_kill(&opts),
            )
            .await;
            finish(&r, common.json)
        }
        Cmd::ChaosSlowUpstream {
            fluxlit,
            read_timeout_seconds,
            delay_seconds,
            chunks,
            interval_seconds,
            verbose,
            common,
        } => {
            let opts = SlowOptions {
                fluxlit,
                read_timeout_seconds,
                delay_seconds,
                chunks: size(chunks),
                interval_seconds,
                verbose,
            };
            let r = guarded(
                "chaos-slow-upstream",
                common.max_seconds.unwrap_or(120.0),
                chaos::slow_upstream(&opts),
            )
            .await;
            finish(&r, common.json)
        }
        Cmd::ChaosGracefulShutdown {
            gateway,
            grace_seconds,
            request_seconds,
            expect_text,
            common,
        } => {
            let opts = GracefulOptions {
                gateway: gateway.options(),
                grace_seconds,
                request_seconds,
                expect_text,
            };
            let r = guarded(
                "chaos-graceful-shutdown",
                common.max_seconds.unwrap_or(180.0),
                chaos::graceful_shutdown(&opts),
            )
            .await;
            finish(&r, common.json)
        }
        Cmd::CiShort {
            gateway,
            soak_count,
            ws_sessions,
            common,
        } => {
            let opts = ci::CiOptions {
                gateway: gateway.options(),
                soak_count: size(soak_count),
                ws_sessions: size(ws_sessions),
            };
            let json = common.json;
            let max = common.max_seconds.unwrap_or(600.0);
            let start = Instant::now();
            let mut seen: Vec<Report> = Vec::new();
            let all = guarded("ci-short", max, async {
                let reports = ci::run(&opts, |r| {
                    println!("{}", r.render(json));
                    seen.push(r.clone());
                })
                .await;
                let mut r = Report::new("ci-short");
                let (passed, failed) = ci::tally(&reports);
                r.check("every tool passed", failed == 0, format!("{failed} failed"));
                r.set("passed", passed);
                r.set("failed", failed);
                r.summary = format!("{passed} passed, {failed} failed");
                r
            })
            .await;
            // Interrupted or out of time: count what finished, and the rest as failed.
            let (passed, mut failed) = ci::tally(&seen);
            if !all.pass() && failed == 0 {
                failed = 1;
            }
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "name": "ci-short",
                        "result": if failed == 0 { "PASS" } else { "FAIL" },
                        "pass": failed == 0,
                        "passed": passed,
                        "failed": failed,
                        "elapsed_s": fluxlit_ops::report::round3(start.elapsed().as_secs_f64()),
                    })
                );
            } else {
                if all.data.is_empty() {
                    // The run itself did not finish: say why.
                    println!("{}", all.line());
                }
                println!(
                    "{passed} passed, {failed} failed ({:.0} s)",
                    start.elapsed().as_secs_f64()
                );
            }
            if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fluxlit-ops: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(cli.cmd))
}
