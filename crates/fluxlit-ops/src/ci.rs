//! `ci-short`: a short version of every tool against a freshly started example app.

use std::future::Future;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::chaos::{self, GatewayOptions, GracefulOptions, HELLO_TEXT, SlowOptions};
use crate::launch::{self, Launch, TempDir};
use crate::net::{self, Http};
use crate::report::Report;
use crate::soak::{self, Accept, SoakOptions};
use crate::{body, ws};

/// Options of `ci-short`.
#[derive(Debug, Clone)]
pub struct CiOptions {
    /// The gateway under test and the example app.
    pub gateway: GatewayOptions,
    /// GETs per soak.
    pub soak_count: usize,
    /// Sessions of the WebSocket load.
    pub ws_sessions: usize,
}

/// The body limit the shared gateway is started with, in bytes (both UI and API routes).
pub const BODY_LIMIT: u64 = 4096;

/// Runs `fut` with a time bound; a report named `name` saying so when it runs out.
async fn bounded(name: &str, limit: Duration, fut: impl Future<Output = Report>) -> Report {
    let start = Instant::now();
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => {
            let mut r = Report::new(name);
            r.fail(
                "time bound",
                format!("did not finish within {:.0} s", limit.as_secs_f64()),
            );
            r.elapsed = start.elapsed();
            r
        }
    }
}

/// Runs the short suite; `emit` gets each report as soon as it is done. Returns all reports.
pub async fn run(opts: &CiOptions, mut emit: impl FnMut(&Report)) -> Vec<Report> {
    let mut out = Vec::new();
    let mut push = |r: Report, out: &mut Vec<Report>| {
        emit(&r);
        out.push(r);
    };
    let g = &opts.gateway;

    // One gateway for the tools that take a base URL: metrics on, small body limits.
    let mut app_report = Report::new("example-app");
    let started = Instant::now();
    let prepared = (|| {
        let python = launch::find_python(g.python.as_deref(), &g.app_dir)?;
        let tmp = TempDir::new("ci-short")?;
        let dir = tmp.path().join("app");
        launch::copy_app(&g.app_dir, &dir)?;
        Ok::<_, String>((tmp, dir, python))
    })();
    let mut shared = None;
    match prepared {
        Err(e) => app_report.fail("prepare the app", e),
        Ok((tmp, dir, python)) => {
            let l = Launch {
                bin: g.fluxlit.clone(),
                dir,
                args: ["--host", "127.0.0.1", "--port", "0", "--no-pidfile"]
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect(),
                env: vec![
                    (
                        "FLUXLIT_ENABLE_GATEWAY_PROMETHEUS_METRICS".into(),
                        "true".into(),
                    ),
                    (
                        "FLUXLIT_GATEWAY_MAX_PROXY_REQUEST_BODY_BYTES".into(),
                        BODY_LIMIT.to_string(),
                    ),
                    (
                        "FLUXLIT_GATEWAY_MAX_API_REQUEST_BODY_BYTES".into(),
                        BODY_LIMIT.to_string(),
                    ),
                ],
                python: Some(python),
                verbose: g.verbose,
            };
            match l.start(Duration::from_secs(30)).await {
                Err(e) => app_report.fail("fluxlit starts", e),
                Ok(mut gw) => {
                    let r = net::wait_status(
                        &Http::fresh(Duration::from_secs(5)),
                        &net::join(&gw.base_url(), "/api/readyz"),
                        200,
                        net::secs(g.ready_timeout_seconds),
                    )
                    .await;
                    if app_report.check(
                        "/api/readyz 200",
                        r.is_ok(),
                        match &r {
                            Ok(_) => format!("after {:.1} s", gw.started.elapsed().as_secs_f64()),
                            Err(e) => e.clone(),
                        },
                    ) {
                        gw.remember_tree();
                        app_report.summary = format!("examples app at {}", gw.base_url());
                        shared = Some((gw, tmp));
                    } else {
                        eprintln!("[example-app] fluxlit log:\n{}", gw.log_tail(40));
                    }
                }
            }
        }
    }

    let base_tools: [&str; 7] = [
        "soak-http",
        "soak-http",
        "soak-readyz",
        "soak-metrics",
        "ws-load",
        "chaos-dropped-websocket",
        "chaos-oversized-body",
    ];
    if let Some((gw, _)) = &shared {
        let base = gw.base_url();
        let count = opts.soak_count;
        let soak_opts = |path: &str, accept| SoakOptions {
            base_url: base.clone(),
            path: path.to_owned(),
            count,
            concurrency: 4,
            max_seconds: 30.0,
            timeout_seconds: 10.0,
            accept,
        };
        let limit = Duration::from_secs(40);
        push(
            bounded(
                "soak-http",
                limit,
                soak::soak("soak-http", &soak_opts("/api/healthz", Accept::Only2xx)),
            )
            .await,
            &mut out,
        );
        push(
            bounded(
                "soak-http",
                limit,
                soak::soak("soak-http", &soak_opts("/api/hello", Accept::Only2xx)),
            )
            .await,
            &mut out,
        );
        push(
            bounded(
                "soak-readyz",
                limit,
                soak::soak("soak-readyz", &soak_opts("/api/readyz", Accept::Only2xx)),
            )
            .await,
            &mut out,
        );
        push(
            bounded(
                "soak-metrics",
                limit,
                soak::metrics(&base, "/__fluxlit/metrics", 3, 10.0),
            )
            .await,
            &mut out,
        );
        push(
            bounded(
                "ws-load",
                Duration::from_secs(60),
                ws::load(&ws::LoadOptions {
                    base_url: base.clone(),
                    sessions: opts.ws_sessions,
                    hold_seconds: 2.0,
                    expect_text: Some(HELLO_TEXT.to_owned()),
                    connect_timeout_seconds: 10.0,
                    content_timeout_seconds: 30.0,
                    connect_concurrency: 16,
                }),
            )
            .await,
            &mut out,
        );
        push(
            bounded(
                "chaos-dropped-websocket",
                Duration::from_secs(90),
                ws::dropped(&ws::DroppedOptions {
                    base_url: base.clone(),
                    sessions: 4,
                    expect_text: Some(HELLO_TEXT.to_owned()),
                    metrics_path: Some("/__fluxlit/metrics".into()),
                    timeout_seconds: 15.0,
                }),
            )
            .await,
            &mut out,
        );
        push(
            bounded(
                "chaos-oversized-body",
                limit,
                body::oversized(&body::OversizedOptions {
                    base_url: base.clone(),
                    limit_bytes: BODY_LIMIT,
                    path: "/_stcore/upload_file/x/y".into(),
                    timeout_seconds: 10.0,
                }),
            )
            .await,
            &mut out,
        );
    } else {
        for name in base_tools {
            let mut r = Report::new(name);
            r.fail("the example app", "did not start (see example-app)");
            push(r, &mut out);
        }
    }
    if let Some((mut gw, _tmp)) = shared.take() {
        let t = Instant::now();
        let sent = gw.signal(Signal::SIGTERM);
        let st = gw.wait_exit(Duration::from_secs(30)).await;
        app_report.check(
            "SIGTERM → exit 0",
            sent.is_ok() && st.is_some_and(|s| s.code() == Some(0)),
            format!("{st:?} after {:.1} s", t.elapsed().as_secs_f64()),
        );
        let left = gw.wait_no_survivors(Duration::from_secs(10)).await;
        app_report.check(
            "no process left",
            left.is_ok(),
            left.err().map(|l| launch::describe(&l)).unwrap_or_default(),
        );
        if !app_report.pass() {
            eprintln!("[example-app] fluxlit log:\n{}", gw.log_tail(40));
        }
    }
    app_report.elapsed = started.elapsed();
    push(app_report, &mut out);

    push(
        bounded(
            "chaos-sidecar-kill",
            Duration::from_secs(180),
            chaos::sidecar_kill(g),
        )
        .await,
        &mut out,
    );
    push(
        bounded(
            "chaos-slow-upstream",
            Duration::from_secs(60),
            chaos::slow_upstream(&SlowOptions {
                fluxlit: g.fluxlit.clone(),
                read_timeout_seconds: 0.5,
                delay_seconds: 2.0,
                chunks: 6,
                interval_seconds: 0.3,
                verbose: g.verbose,
            }),
        )
        .await,
        &mut out,
    );
    push(
        bounded(
            "chaos-graceful-shutdown",
            Duration::from_secs(150),
            chaos::graceful_shutdown(&GracefulOptions {
                gateway: g.clone(),
                grace_seconds: 3.0,
                request_seconds: 1.0,
                expect_text: Some(HELLO_TEXT.to_owned()),
            }),
        )
        .await,
        &mut out,
    );
    out
}

/// `N passed, N failed`.
pub fn tally(reports: &[Report]) -> (usize, usize) {
    let passed = reports.iter().filter(|r| r.pass()).count();
    (passed, reports.len() - passed)
}
