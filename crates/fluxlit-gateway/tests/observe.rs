//! Observability on both engines, against real sockets: the same requests leave the same
//! access-log lines (text and JSON), metrics and debug-ring entries whether the HTTP/1.1 fast
//! path or hyper served them, and a log output that does not keep up costs dropped, counted
//! lines, never a stalled gateway.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use fluxlit_gateway::{AccessLogFormat, AccessLogSink, ApiTarget, Gateway, Limits, LogWriter};
use fluxlit_testkit::raw::{RawClient, Recorded, RecordingUpstream, Reply, echo_line};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::Value;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{Layer, fmt};

mod support;

use support::{ENGINES, WAIT, engine, start_on, up_at, within};

use support::Sink;

/// Only the access log.
fn access_only() -> Targets {
    Targets::new().with_target("fluxlit::access", tracing::Level::INFO)
}

/// The upstream: `/missing` is a 404, `/chunked` a chunked body of 11 data bytes, anything
/// else the echo line.
fn respond(r: &Recorded) -> Reply {
    match r.target.as_str() {
        "/missing" => Reply::raw("HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nnot found"),
        "/chunked" => Reply::raw(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        ),
        _ => echo_line(r),
    }
}

/// The JSON access line of `GET /page?token=secret&x=1` (request id `obs-1`, a 26-byte echo),
/// without its time stamp and duration.
fn first_json_line() -> Value {
    serde_json::json!({
        "level": "INFO",
        "target": "fluxlit::access",
        "message": "GET /page 200",
        "request_id": "obs-1",
        "fluxlit_dispatch": "streamlit",
        "http_method_or_type": "GET",
        "path": "/page",
        "query": "token=<redacted>&x=1",
        "status": 200,
        "bytes_in": 0,
        "bytes_out": 26,
        "client_ip": "127.0.0.1",
        "upstream": "ui",
    })
}

/// What one engine wrote for the scenario.
#[derive(Debug)]
struct Observed {
    json: Vec<Value>,
    text: Vec<String>,
    metrics: Vec<String>,
}

/// The access-log line (text and JSON), the request metrics and the debug ring of the same
/// requests are the same on both engines, field for field (only the time stamp and the
/// duration's value differ), and the fast path served the forwards itself, the API request's
/// included (`dispatch` api, `upstream` the API's). UI and API rate limits and the upstream
/// concurrency cap are on (with room) so every duty is exercised.
#[tokio::test]
async fn the_access_log_and_metrics_are_the_same_on_both_engines() {
    let mut seen = Vec::new();
    for fast in ENGINES {
        let what = engine(fast);
        let rec = RecordingUpstream::with(respond).await;
        let (json_sink, text_sink) = (Sink::default(), Sink::default());
        let json_log = LogWriter::new(json_sink.clone(), LogWriter::DEFAULT_CAPACITY).unwrap();
        let text_log = LogWriter::new(text_sink.clone(), LogWriter::DEFAULT_CAPACITY).unwrap();
        let subscriber = tracing_subscriber::registry()
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(json_log.clone())
                    .with_filter(access_only()),
            )
            .with(
                fmt::layer()
                    .with_ansi(false)
                    .with_writer(text_log.clone())
                    .with_filter(access_only()),
            );
        let _log = tracing::subscriber::set_default(subscriber);
        let recorder = PrometheusBuilder::new().build_recorder();
        let prometheus = recorder.handle();
        let _metrics = metrics::set_default_local_recorder(&recorder);

        let gw = start_on(
            Gateway::builder()
                .ui(up_at(rec.addr, "ui"))
                .api(ApiTarget::Upstream(up_at(rec.addr, "api")))
                .access_log(true, false)
                .record_metrics(true)
                .debug(Arc::new(|| serde_json::json!({})))
                .limits(Limits {
                    rate_ui: Some((1000, 1000)),
                    rate_api: Some((1000, 1000)),
                    max_upstream_concurrency: 8,
                    ..Limits::default()
                }),
            fast,
        )
        .await;
        let mut c = RawClient::connect(gw.addr).await;
        let requests: [(&str, u16, &str); 5] = [
            (
                "GET /page?token=secret&x=1 HTTP/1.1\r\nHost: h\r\nX-Request-ID: obs-1\r\n\r\n",
                200,
                "GET /page?token=secret&x=1",
            ),
            (
                "POST /submit HTTP/1.1\r\nHost: h\r\nX-Request-ID: obs-2\r\nContent-Length: 5\r\n\r\nhello",
                200,
                "POST /submit",
            ),
            (
                "GET /missing HTTP/1.1\r\nHost: h\r\nX-Request-ID: obs-3\r\n\r\n",
                404,
                "not found",
            ),
            (
                "GET /chunked HTTP/1.1\r\nHost: h\r\nX-Request-ID: obs-4\r\n\r\n",
                200,
                "hello world",
            ),
            (
                "GET /api/items?token=secret HTTP/1.1\r\nHost: h\r\nX-Request-ID: obs-5\r\n\r\n",
                200,
                "GET /items?token=secret",
            ),
        ];
        for (req, status, body) in requests {
            c.send(req.as_bytes()).await;
            let r = c.response(false).await.expect(req);
            assert_eq!((r.status, r.text().as_str()), (status, body), "{what}");
        }
        // The debug ring, read through hyper (the gateway's own endpoint).
        let mut d = RawClient::connect(gw.addr).await;
        d.send(b"GET /__fluxlit/debug HTTP/1.1\r\nHost: h\r\nX-Request-ID: obs-debug\r\n\r\n")
            .await;
        let snapshot: Value =
            serde_json::from_slice(&d.response(false).await.unwrap().body).unwrap();
        let ring: Vec<(String, String, String)> = snapshot["recent_dispatches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                let s = |k: &str| d[k].as_str().unwrap_or_default().to_owned();
                (s("request_id"), s("dispatch"), s("path"))
            })
            .collect();
        let want: Vec<(String, String, String)> = [
            ("obs-1", "/page"),
            ("obs-2", "/submit"),
            ("obs-3", "/missing"),
            ("obs-4", "/chunked"),
        ]
        .map(|(id, p)| (id.into(), "streamlit".into(), p.into()))
        .into_iter()
        .chain([("obs-5".into(), "api".into(), "/api/items".into())])
        .collect();
        assert_eq!(ring, want, "{what}: the debug ring");
        gw.assert_split(
            fast,
            5,
            1,
            "four UI forwards, an API forward, the debug snapshot",
        );
        drop(gw);

        assert!(
            json_log.flush(WAIT) && text_log.flush(WAIT),
            "{what}: flushed"
        );
        let json: Vec<Value> = json_sink
            .lines()
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| {
                v["request_id"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("obs-"))
            })
            .filter(|v| v["request_id"] != "obs-debug")
            .map(|mut v| {
                let o = v.as_object_mut().unwrap();
                assert!(o.remove("timestamp").is_some(), "{what}: a time stamp");
                let ms = o.remove("duration_ms").and_then(|d| d.as_f64());
                assert!(ms.is_some_and(|ms| ms >= 0.0), "{what}: a duration: {ms:?}");
                v
            })
            .collect();
        assert_eq!(
            json.len(),
            5,
            "{what}: one JSON line per request: {json:#?}"
        );
        assert_eq!(json[0], first_json_line(), "{what}");
        let fields = |i: usize, k: &str| json[i][k].clone();
        assert_eq!(
            (
                fields(1, "bytes_in"),
                fields(1, "bytes_out"),
                fields(1, "message")
            ),
            (5.into(), 12.into(), "POST /submit 200".into()),
            "{what}"
        );
        assert_eq!(fields(2, "status"), 404, "{what}");
        assert_eq!(
            fields(3, "bytes_out"),
            11,
            "{what}: a chunked body's data bytes"
        );
        assert_eq!(
            (
                fields(4, "fluxlit_dispatch"),
                fields(4, "path"),
                fields(4, "query"),
                fields(4, "upstream"),
                fields(4, "bytes_out"),
            ),
            (
                "api".into(),
                "/api/items".into(),
                "token=<redacted>".into(),
                "api".into(),
                23.into()
            ),
            "{what}: the API request's line"
        );
        let text: Vec<String> = text_sink
            .lines()
            .into_iter()
            .filter(|l| l.contains("request_id=\"obs-") && !l.contains("obs-debug"))
            .map(|l| {
                // The time stamp first, the duration's value: the parts that differ.
                let mut words = l.split(' ').filter(|w| !w.is_empty());
                words.next();
                words
                    .map(|w| {
                        if w.starts_with("duration_ms=") {
                            "duration_ms=*"
                        } else {
                            w
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        assert_eq!(
            text.len(),
            5,
            "{what}: one text line per request: {text:#?}"
        );
        assert!(
            text[0].starts_with("INFO fluxlit::access: GET /page 200 request_id=\"obs-1\" fluxlit_dispatch=\"streamlit\" http_method_or_type=\"GET\" path=/page query=token=<redacted>&x=1 status=200 bytes_in=0 bytes_out=26 duration_ms=* client_ip=127.0.0.1 upstream=\"ui\""),
            "{what}: {}",
            text[0]
        );
        let mut metrics: Vec<String> = prometheus
            .render()
            .lines()
            .filter(|l| {
                [
                    "fluxlit_gateway_requests_total",
                    "fluxlit_gateway_responses_total",
                    "fluxlit_gateway_request_bytes_total",
                    "fluxlit_gateway_response_bytes_total",
                    "fluxlit_gateway_request_duration_seconds_count",
                ]
                .iter()
                .any(|m| l.starts_with(m))
            })
            .map(str::to_owned)
            .collect();
        metrics.sort();
        for want in [
            "fluxlit_gateway_requests_total{dispatch=\"streamlit\",method_kind=\"GET\"} 3",
            "fluxlit_gateway_requests_total{dispatch=\"streamlit\",method_kind=\"POST\"} 1",
            "fluxlit_gateway_responses_total{dispatch=\"streamlit\",status_class=\"2xx\"} 3",
            "fluxlit_gateway_responses_total{dispatch=\"streamlit\",status_class=\"4xx\"} 1",
            "fluxlit_gateway_request_bytes_total{dispatch=\"streamlit\"} 5",
            "fluxlit_gateway_response_bytes_total{dispatch=\"streamlit\"} 58",
            "fluxlit_gateway_request_duration_seconds_count{dispatch=\"streamlit\"} 4",
            "fluxlit_gateway_requests_total{dispatch=\"api\",method_kind=\"GET\"} 1",
            "fluxlit_gateway_responses_total{dispatch=\"api\",status_class=\"2xx\"} 1",
            "fluxlit_gateway_response_bytes_total{dispatch=\"api\"} 23",
            "fluxlit_gateway_request_duration_seconds_count{dispatch=\"api\"} 1",
        ] {
            assert!(
                metrics.iter().any(|l| l == want),
                "{what}: {want} in {metrics:#?}"
            );
        }
        seen.push(Observed {
            json,
            text,
            metrics,
        });
    }
    let (fast, hyper) = (&seen[0], &seen[1]);
    assert_eq!(fast.json, hyper.json, "JSON lines, fast path vs hyper");
    assert_eq!(fast.text, hyper.text, "text lines, fast path vs hyper");
    assert_eq!(fast.metrics, hyper.metrics, "metrics, fast path vs hyper");
}

/// With an [`AccessLogSink`] (what `fluxlit run` sets), both engines write the access-log line
/// through the sink, not through `tracing` (whose own writer gets no access line), in the
/// same bytes on both engines and the same bytes `tracing` writes (the first line is
/// checked field for field), JSON and text.
#[tokio::test]
async fn the_access_log_sink_writes_the_same_lines_on_both_engines() {
    let mut seen = Vec::new();
    for format in [AccessLogFormat::Json, AccessLogFormat::Text] {
        for fast in ENGINES {
            let what = format!("{} {format:?}", engine(fast));
            let rec = RecordingUpstream::with(respond).await;
            let (sink_out, traced_out) = (Sink::default(), Sink::default());
            let sink_log = LogWriter::new(sink_out.clone(), LogWriter::DEFAULT_CAPACITY).unwrap();
            let traced_log =
                LogWriter::new(traced_out.clone(), LogWriter::DEFAULT_CAPACITY).unwrap();
            // The subscriber decides what is logged; its writer should see no access line.
            let subscriber = tracing_subscriber::registry().with(
                fmt::layer()
                    .with_ansi(false)
                    .with_writer(traced_log.clone())
                    .with_filter(access_only()),
            );
            let _log = tracing::subscriber::set_default(subscriber);
            let gw = start_on(
                Gateway::builder()
                    .ui(up_at(rec.addr, "ui"))
                    .api(ApiTarget::Upstream(up_at(rec.addr, "api")))
                    .access_log(true, false)
                    .access_log_sink(AccessLogSink::new(sink_log.clone(), format)),
                fast,
            )
            .await;
            let mut c = RawClient::connect(gw.addr).await;
            for (req, status) in [
                (
                    "GET /page?token=secret&x=1 HTTP/1.1\r\nHost: h\r\nX-Request-ID: obs-1\r\n\r\n",
                    200,
                ),
                (
                    "POST /submit HTTP/1.1\r\nHost: h\r\nX-Request-ID: obs-2\r\nContent-Length: 5\r\n\r\nhello",
                    200,
                ),
                (
                    "GET /missing HTTP/1.1\r\nHost: h\r\nX-Request-ID: obs-3\r\n\r\n",
                    404,
                ),
                (
                    "GET /api/items?token=secret HTTP/1.1\r\nHost: h\r\nX-Request-ID: obs-4\r\n\r\n",
                    200,
                ),
            ] {
                c.send(req.as_bytes()).await;
                let r = c.response(false).await.expect(req);
                assert_eq!(r.status, status, "{what}: {req}");
            }
            gw.assert_split(fast, 4, 0, "the forwards");
            drop(gw);
            assert!(
                sink_log.flush(WAIT) && traced_log.flush(WAIT),
                "{what}: flushed"
            );
            assert!(
                !traced_out.text().contains("fluxlit::access"),
                "{what}: no access line through tracing: {}",
                traced_out.text()
            );
            // The time stamp and the duration's value differ between runs.
            let lines: Vec<String> = sink_out
                .lines()
                .iter()
                .map(|l| match format {
                    AccessLogFormat::Json => {
                        let mut v: Value = serde_json::from_str(l).unwrap();
                        let o = v.as_object_mut().unwrap();
                        assert!(o.remove("timestamp").is_some(), "{what}: {l}");
                        assert!(
                            o.remove("duration_ms").is_some_and(|d| d.is_f64()),
                            "{what}: {l}"
                        );
                        v.to_string()
                    }
                    _ => l
                        .split(' ')
                        .skip(1)
                        .map(|w| {
                            if w.starts_with("duration_ms=") {
                                "duration_ms=*"
                            } else {
                                w
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(" "),
                })
                .collect();
            assert_eq!(lines.len(), 4, "{what}: one line per request: {lines:#?}");
            let first = match format {
                AccessLogFormat::Json => first_json_line().to_string(),
                _ => " INFO fluxlit::access: GET /page 200 request_id=\"obs-1\" fluxlit_dispatch=\"streamlit\" http_method_or_type=\"GET\" path=/page query=token=<redacted>&x=1 status=200 bytes_in=0 bytes_out=26 duration_ms=* client_ip=127.0.0.1 upstream=\"ui\"".to_owned(),
            };
            assert_eq!(lines[0], first, "{what}");
            assert!(
                lines[3].contains("/api/items") && lines[3].contains("\"api\""),
                "{what}: {}",
                lines[3]
            );
            seen.push(lines);
        }
    }
    assert_eq!(seen[0], seen[1], "JSON lines, fast path vs hyper");
    assert_eq!(seen[2], seen[3], "text lines, fast path vs hyper");
}

/// A log output nobody reads (a pipe whose reader never reads): the gateway keeps serving on
/// both engines, and the lines that do not fit are dropped and counted, in the log writer and
/// in `fluxlit_access_log_dropped_total`.
#[tokio::test]
async fn a_stuck_access_log_drops_lines_and_the_gateway_keeps_serving() {
    for fast in ENGINES {
        let what = engine(fast);
        let rec = RecordingUpstream::start().await;
        let (reader, writer) = std::io::pipe().unwrap();
        let log = LogWriter::new(writer, 4096).unwrap();
        let subscriber = tracing_subscriber::registry().with(
            fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(log.clone())
                .with_filter(access_only()),
        );
        let _log = tracing::subscriber::set_default(subscriber);
        let recorder = PrometheusBuilder::new().build_recorder();
        let prometheus = recorder.handle();
        let _metrics = metrics::set_default_local_recorder(&recorder);
        let gw = start_on(
            Gateway::builder()
                .ui(up_at(rec.addr, "ui"))
                .access_log(true, false)
                .record_metrics(true),
            fast,
        )
        .await;
        // Far more lines (each about 300 bytes) than the pipe (64 KiB) and the buffer hold.
        let n = 1000;
        let mut c = RawClient::connect(gw.addr).await;
        within("every request answered", async {
            for i in 0..n {
                c.send(format!("GET /n/{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
                    .await;
                let r = c.response(false).await.expect("a response");
                assert_eq!(r.status, 200, "{what}: request {i}");
            }
        })
        .await;
        gw.assert_split(fast, n, 0, "plain UI forwards");
        let dropped = log.dropped().access;
        assert!(dropped > 0, "{what}: lines dropped");
        let exported = prometheus
            .render()
            .lines()
            .find_map(|l| l.strip_prefix("fluxlit_access_log_dropped_total "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        assert_eq!(exported, Some(dropped), "{what}: the drop counter");
        drop(reader);
    }
}
