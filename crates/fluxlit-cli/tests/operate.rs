//! Operating `fluxlit run` with real sidecars: metrics, JSON access logs with request ids and no
//! secrets, the debug snapshot, the restart policy, and a hung sidecar.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use fluxlit_testkit::{eventually, process};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use support::{Fluxlit, get, request};

#[tokio::test]
async fn metrics_json_access_log_request_ids_and_debug() {
    let env = [
        ("FLUXLIT_ENABLE_GATEWAY_PROMETHEUS_METRICS", "true"),
        ("FLUXLIT_LOG_FORMAT", "json"),
        ("FLUXLIT_DEBUG", "1"),
        ("FLUXLIT_LOG_LEVEL", "info"),
    ];
    let gw = Fluxlit::start_json(support::example_copy(), &[], &env).await;
    gw.wait_ready("/api/readyz").await;
    let (s, h, _) = request(
        "GET",
        &gw.url("/api/hello?token=hunter2&x=1"),
        &[
            ("authorization", "Bearer s3cr3t-token"),
            ("cookie", "sid=c00kie"),
        ],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(s, 200);
    let rid = h["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(rid.len(), 36, "a minted UUIDv7");
    let _ = get(&gw.url("/_stcore/health")).await.unwrap();

    let (s, _, text) = get(&gw.url("/__fluxlit/metrics")).await.unwrap();
    assert_eq!(s, 200);
    for series in [
        "fluxlit_gateway_requests_total{dispatch=\"api\",method_kind=\"GET\"}",
        "fluxlit_gateway_request_duration_seconds_bucket{dispatch=\"api\",le=\"0.005\"}",
        "fluxlit_gateway_responses_total{dispatch=\"streamlit\",status_class=\"2xx\"}",
        "fluxlit_gateway_active_connections",
        "fluxlit_sidecar_up{sidecar=\"streamlit\"} 1",
        "fluxlit_sidecar_up{sidecar=\"api\"} 1",
    ] {
        assert!(text.contains(series), "missing {series} in:\n{text}");
    }
    assert!(
        !text.contains("/api/hello"),
        "raw paths never become labels"
    );

    let (s, _, body) = get(&gw.url("/__fluxlit/debug")).await.unwrap();
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["recent_dispatches"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["request_id"] == rid.as_str()),
        "{body}"
    );
    assert!(
        v["sidecars"]["streamlit"]["pid"].as_u64().is_some(),
        "{body}"
    );
    assert_eq!(v["settings"]["debug"], true);

    // The access log: one JSON object per line with the fields operators filter on.
    let line = eventually(
        Duration::from_secs(10),
        "the access-log line of /api/hello",
        || {
            let log = gw.log();
            let rid = rid.clone();
            async move {
                log.lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .find(|v| v["request_id"] == rid.as_str() && v["target"] == "fluxlit::access")
            }
        },
    )
    .await;
    for field in [
        "timestamp",
        "level",
        "target",
        "request_id",
        "fluxlit_dispatch",
        "http_method_or_type",
        "path",
        "query",
        "status",
        "bytes_in",
        "bytes_out",
        "duration_ms",
        "client_ip",
        "upstream",
    ] {
        assert!(line.get(field).is_some(), "{field} missing from {line}");
    }
    assert_eq!(line["fluxlit_dispatch"], "api");
    assert_eq!(line["status"], 200);
    assert_eq!(line["query"], "token=<redacted>&x=1");
    let log = gw.log();
    // The gateway's own lines (the sidecars' output is theirs: uvicorn logs its request line).
    let ours: String = log
        .lines()
        .filter(|l| !l.contains("\"target\":\"fluxlit::sidecar\""))
        .collect::<Vec<_>>()
        .join("\n");
    for secret in ["hunter2", "s3cr3t-token", "c00kie"] {
        assert!(
            !ours.contains(secret),
            "{secret} leaked into the gateway's log"
        );
    }
    assert!(
        !log.contains("s3cr3t-token") && !log.contains("c00kie"),
        "credentials appear nowhere"
    );
    assert!(log.contains("[fluxlit-debug]"), "the debug start-up line");
    // Health probes are not access-logged by default.
    assert!(
        !log.lines()
            .any(|l| l.contains("fluxlit::access") && l.contains("/api/readyz"))
    );
}

#[tokio::test]
async fn restart_policy_brings_a_crashed_sidecar_back() {
    let mut gw = Fluxlit::start_with_env(
        support::example_copy(),
        &[],
        &[("FLUXLIT_SIDECAR_RESTART", "restart")],
    )
    .await;
    gw.wait_ready("/api/readyz").await;
    let old = gw.child_matching("streamlit");
    kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
    // Readiness drops at once, then comes back with a new Streamlit; the gateway keeps running.
    let url = gw.url("/api/readyz");
    eventually(
        Duration::from_secs(10),
        "readyz 503 after the crash",
        || {
            let url = url.clone();
            async move { (get(&url).await.ok()?.0 == 503).then_some(()) }
        },
    )
    .await;
    gw.wait_ready("/api/readyz").await;
    let new = gw.child_matching("streamlit");
    assert_ne!(old, new);
    assert!(
        gw.child.try_wait().unwrap().is_none(),
        "the gateway is still running"
    );
    let (s, _, body) = get(&gw.url("/_stcore/health")).await.unwrap();
    assert_eq!((s, body.as_str()), (200, "ok"));
    gw.log_line("the restart's log line", &["restarting sidecar"])
        .await;
    gw.signal(Signal::SIGTERM);
    assert_eq!(gw.wait_exit(Duration::from_secs(30)).await.code(), Some(0));
    assert!(!process::pid_alive(new));
}

#[tokio::test]
async fn a_hung_sidecar_turns_readiness_503_while_liveness_stays_200() {
    let gw = Fluxlit::start(&[]).await;
    gw.wait_ready("/api/readyz").await;
    let streamlit = gw.child_matching("streamlit");
    // SIGSTOP: the socket still accepts (the kernel's backlog), but nothing answers.
    kill(Pid::from_raw(streamlit as i32), Signal::SIGSTOP).unwrap();
    let url = gw.url("/api/readyz");
    let started = std::time::Instant::now();
    let body = eventually(
        Duration::from_secs(10),
        "readyz 503 for a hung Streamlit",
        || {
            let url = url.clone();
            async move {
                let (s, _, b) = get(&url).await.ok()?;
                (s == 503).then_some(b)
            }
        },
    )
    .await;
    let detected = started.elapsed();
    assert!(body.contains("streamlit: not ready"), "{body}");
    let (s, _, _) = get(&gw.url("/api/healthz")).await.unwrap();
    assert_eq!(s, 200, "liveness does not depend on the sidecars");
    kill(Pid::from_raw(streamlit as i32), Signal::SIGCONT).unwrap();
    gw.wait_ready("/api/readyz").await;
    eprintln!("hung sidecar detected after {detected:?}");
}

#[tokio::test]
async fn a_crash_loop_is_reported_in_readiness_and_the_log() {
    // An API that starts (listens) and dies 0.6 s later, every time.
    let flaky = "python -c \"import os, socket, time; s = socket.socket(); s.bind(('127.0.0.1', int(os.environ['PORT']))); s.listen(); time.sleep(0.6)\"";
    let mut gw = Fluxlit::start_with_env(
        support::example_copy(),
        &["--ui-upstream", "http://127.0.0.1:9"],
        &[
            ("FLUXLIT_API_COMMAND", flaky),
            ("FLUXLIT_SIDECAR_RESTART", "restart"),
        ],
    )
    .await;
    let url = gw.url("/api/readyz");
    let body = eventually(
        Duration::from_secs(60),
        "a crash loop in the readiness detail",
        || {
            let url = url.clone();
            async move {
                let (s, _, b) = get(&url).await.ok()?;
                (s == 503 && b.contains("crash loop")).then_some(b)
            }
        },
    )
    .await;
    assert!(body.contains("api: not ready: crash loop: "), "{body}");
    gw.log_line("the crash loop's log line", &["sidecar is crash-looping"])
        .await;
    assert!(
        gw.child.try_wait().unwrap().is_none(),
        "the gateway keeps running and retrying"
    );
}

/// Issue 12 §6: `fluxlit workbench` (= `run --workbench`) trusts a loopback proxy's forwarded
/// headers and prints the Workbench banner with the bound port; `log_level = warning` (Uvicorn's
/// name) shows warnings and nothing below them; the loopback-only trust is said once at
/// start-up, as a warning with the fix.
#[tokio::test]
async fn workbench_banner_loopback_trust_and_warning_log_level() {
    use std::io::{BufRead, BufReader};
    use std::sync::{Arc, Mutex};

    let ui = fluxlit_testkit::upstream::TestUpstream::start().await;
    let dir = fluxlit_testkit::TempDir::new("workbench");
    let ui_url = format!("http://{}", ui.addr);
    let mut child = support::command(
        dir.path(),
        &[
            "workbench",
            "--port",
            "0",
            "--no-pidfile",
            "--ui-upstream",
            &ui_url,
        ],
    )
    .env("FLUXLIT_LOG_LEVEL", "warning")
    // A body cap, so that the loopback-only trust is the one start-up warning.
    .env("FLUXLIT_GATEWAY_MAX_PROXY_REQUEST_BODY_BYTES", "64MiB")
    .spawn()
    .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let reader = {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[fluxlit] {line}");
                log.lock().unwrap().push_str(&format!("{line}\n"));
            }
        })
    };
    let prefix = "[fluxlit] Open in browser (loopback): ";
    let base = eventually(Duration::from_secs(30), "the Workbench banner", || {
        let text = log.lock().unwrap().clone();
        async move {
            let line = text.lines().find(|l| l.starts_with(prefix))?;
            Some(line[prefix.len()..].trim_end_matches('/').to_owned())
        }
    })
    .await;
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let (s, _, body) = get(&format!("{base}/api/healthz")).await.unwrap();
    assert_eq!(s, 200, "{body}");
    // The test client is on loopback, so its forwarded headers are believed, as a Workbench
    // proxy's on the same host are.
    let (s, _, body) = request(
        "GET",
        &format!("{base}/echo"),
        &[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "workbench.example"),
        ],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{body}");
    let echo: Value = serde_json::from_str(&body).unwrap();
    let seen = |name: &str| -> Vec<String> {
        echo["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p[0] == name)
            .map(|p| p[1].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(seen("x-forwarded-proto"), ["https"], "{body}");
    assert_eq!(seen("x-forwarded-host"), ["workbench.example"], "{body}");

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = eventually(Duration::from_secs(30), "fluxlit to exit", || {
        let r = child.try_wait().unwrap();
        async move { r }
    })
    .await;
    assert_eq!(status.code(), Some(0));
    reader.join().unwrap();
    let log = log.lock().unwrap().clone();
    for line in [
        "[fluxlit] Workbench/Connect mode: proxy headers are trusted",
        "[fluxlit] X-Forwarded-* headers will be honored for scheme/host/client IP from loopback peers only",
        "[fluxlit] API liveness: http://127.0.0.1:",
    ] {
        assert!(log.contains(line), "{line:?} missing from:\n{log}");
    }
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("forwarded_allow_ips_loopback_only"))
        .collect();
    assert_eq!(warned.len(), 1, "said once:\n{log}");
    assert!(
        warned[0].contains("WARN")
            && warned[0].contains("command-line flag --workbench")
            && warned[0].contains("FLUXLIT_FORWARDED_ALLOW_IPS"),
        "{}",
        warned[0]
    );
    assert!(
        !log.lines()
            .any(|l| l.contains(" INFO ") || l.contains(" DEBUG ")),
        "log_level = warning shows nothing below warnings:\n{log}"
    );

    // At the default level too, the loopback-only trust is said once, not again at info.
    let mut gw =
        support::Fluxlit::start_in(dir, &["--proxy-headers", "--ui-upstream", &ui_url]).await;
    let (s, _, _) = get(&gw.url("/api/healthz")).await.unwrap();
    assert_eq!(s, 200);
    gw.signal(Signal::SIGTERM);
    assert_eq!(gw.wait_exit(Duration::from_secs(30)).await.code(), Some(0));
    let log = gw.log();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("loopback peers only"))
        .collect();
    assert_eq!(said.len(), 1, "said once:\n{log}");
    assert!(
        said[0].contains("forwarded_allow_ips_loopback_only"),
        "{log}"
    );
}
