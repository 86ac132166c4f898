//! The same scenarios run directly against a real upstream and through the gateway; the
//! results must match (after removing what the gateway is supposed to change: the forwarded
//! headers). Plus the gateway's own behaviours: routing, readiness, errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use fluxlit_gateway::{
    ApiService, ApiTarget, ComponentState, Endpoint, Gateway, ReadinessCheck, Upstream,
};
use fluxlit_testkit::raw::{RawClient, RawResponse, Recorded, RecordingUpstream, Reply};
use fluxlit_testkit::upstream::TestUpstream;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

mod support;

use support::{
    ENGINES, WireResponse, body_of as collect, empty, engine, full as bytes_body, launch,
    parse_wire, raw_roundtrip, request as send, start_on, up_at, within,
};

fn ui(up: &TestUpstream) -> Upstream {
    up_at(up.addr, "test-ui")
}

fn req(method: &str, uri: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "example.test")
}

/// Echo JSON with the gateway-owned forwarded headers removed.
fn echo_without_forwarded(body: &Bytes) -> Value {
    let mut v: Value = serde_json::from_slice(body).expect("echo JSON");
    if let Some(h) = v["headers"].as_array_mut() {
        h.retain(|pair| {
            let n = pair[0].as_str().unwrap_or("");
            !n.starts_with("x-forwarded-") && n != "x-request-id"
        });
    }
    v
}

fn header_list(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn http_scenarios_match_direct() {
    http_scenarios_match_direct_on(true).await;
}

/// The same through the general (hyper) path.
#[tokio::test]
async fn http_scenarios_match_direct_general_path() {
    http_scenarios_match_direct_on(false).await;
}

async fn http_scenarios_match_direct_on(fast: bool) {
    let up = TestUpstream::start().await;
    let policy = fluxlit_auth::HeaderPolicy::new(&[], &["x-custom".to_owned()]);
    let gw = start_on(Gateway::builder().ui(ui(&up)).header_policy(policy), fast).await;

    let big = Bytes::from(vec![7u8; 5 * 1024 * 1024 + 3]);
    type Case = (&'static str, &'static str, Option<Bytes>);
    let cases: Vec<Case> = vec![
        ("GET", "/echo?x=1&y=%2F&z=a+b", None),
        ("POST", "/echo", Some(Bytes::from_static(b"{\"a\":1}"))),
        ("PUT", "/echo/put", Some(Bytes::from_static(b"x"))),
        ("PATCH", "/echo", Some(Bytes::from_static(b"patch"))),
        ("DELETE", "/echo", None),
        ("OPTIONS", "/echo", None),
        ("POST", "/echo/large", Some(big.clone())),
        ("GET", "/status/200", None),
        ("GET", "/status/201", None),
        ("GET", "/status/204", None),
        ("GET", "/status/301", None),
        ("GET", "/status/304", None),
        ("GET", "/status/400", None),
        ("GET", "/status/404", None),
        ("GET", "/status/418", None),
        ("GET", "/status/500", None),
        ("GET", "/status/503", None),
        ("GET", "/big?bytes=1048576", None),
        ("HEAD", "/big?bytes=1000", None),
        ("GET", "/chunked?bytes=100000", None),
        ("GET", "/headers", None),
    ];
    let n = cases.len() as u64;
    for (method, uri, body) in cases {
        let mk = || {
            req(method, uri)
                .header(
                    "cookie",
                    "_streamlit_xsrf=2|1f2e|3d4c|1700000000; a=\"quoted value\"",
                )
                .header("x-custom", "one")
                .header("x-custom", "two")
                .body(body.clone().map_or_else(empty, bytes_body))
                .unwrap()
        };
        let (ds, dh, db) = collect(send(up.addr, mk()).await).await;
        let (gs, gh, gb) = collect(send(gw.addr, mk()).await).await;
        assert_eq!(ds, gs, "{method} {uri}: status");
        if uri.starts_with("/echo") {
            assert_eq!(
                echo_without_forwarded(&db),
                echo_without_forwarded(&gb),
                "{method} {uri}: what the upstream saw"
            );
        } else {
            assert_eq!(db, gb, "{method} {uri}: body");
        }
        for name in [
            "content-length",
            "content-type",
            "x-multi",
            "set-cookie",
            "location",
        ] {
            if name == "content-length" && uri.starts_with("/echo") {
                continue; // the echo includes the forwarded headers, so its length differs
            }
            assert_eq!(
                header_list(&dh, name),
                header_list(&gh, name),
                "{method} {uri}: header {name}"
            );
        }
        assert!(
            gh.get("transfer-encoding").is_none()
                || header_list(&gh, "transfer-encoding") == ["chunked"]
        );
    }
    gw.assert_split(fast, n, 0, "one UI request per scenario");
    gw.stop().await;
}

/// Requests with `Transfer-Encoding` are hyper's on both engines (the fast path hands them over)
/// and arrive whole (what streaming means is proved by
/// [`request_bodies_are_streamed_not_buffered`]).
#[tokio::test]
async fn chunked_request_bodies_arrive_whole() {
    for fast in ENGINES {
        chunked_request_bodies_arrive_whole_on(fast).await;
    }
}

/// A request body is forwarded as it arrives: the upstream receives its first part while the
/// client still holds back the rest (a buffering gateway would deliver nothing until the body
/// ended), with `Content-Length` (the fast path when on) and chunked (hyper on both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_streamed_not_buffered() {
    use tokio::io::AsyncWriteExt;
    for fast in ENGINES {
        for chunked in [false, true] {
            let what = format!("{} chunked={chunked}", engine(fast));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let up_addr = listener.local_addr().unwrap();
            let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
            // The upstream: reads until the first part (`AAAA`) is there, says so, then reads
            // the rest (`BBBB`) and answers.
            let upstream = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                let mut first_tx = Some(first_tx);
                loop {
                    let n = s.read(&mut buf).await.unwrap();
                    assert!(n > 0, "upstream: closed before the whole body");
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).into_owned();
                    if text.contains("AAAA")
                        && let Some(tx) = first_tx.take()
                    {
                        let _ = tx.send(());
                    }
                    if text.contains("BBBB") && (!chunked || text.ends_with("0\r\n\r\n")) {
                        break;
                    }
                }
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
                got
            });
            let gw = start_on(Gateway::builder().ui(up_at(up_addr, "ui")), fast).await;
            let mut c = within("connect", tokio::net::TcpStream::connect(gw.addr))
                .await
                .unwrap();
            let (head, rest): (&[u8], &[u8]) = if chunked {
                (
                    b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nAAAA\r\n",
                    b"4\r\nBBBB\r\n0\r\n\r\n",
                )
            } else {
                (
                    b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\nAAAA",
                    b"BBBB",
                )
            };
            c.write_all(head).await.unwrap();
            within(
                &format!("{what}: the first part reaches the upstream"),
                first_rx,
            )
            .await
            .expect("upstream alive");
            c.write_all(rest).await.unwrap();
            let mut answer = Vec::new();
            let mut buf = [0u8; 1024];
            while !answer.ends_with(b"ok") {
                let n = within("the answer", c.read(&mut buf)).await.unwrap();
                assert!(n > 0, "{what}: closed before the answer");
                answer.extend_from_slice(&buf[..n]);
            }
            assert!(answer.starts_with(b"HTTP/1.1 200"), "{what}");
            let got = within("upstream", upstream).await.unwrap();
            let got = String::from_utf8_lossy(&got).into_owned();
            assert!(
                got.contains("AAAA") && got.contains("BBBB"),
                "{what}: {got}"
            );
            if chunked {
                gw.assert_split(fast, 0, 1, &what);
            } else {
                gw.assert_split(fast, 1, 0, &what);
            }
            gw.stop().await;
        }
    }
}

async fn chunked_request_bodies_arrive_whole_on(fast: bool) {
    let up = TestUpstream::start().await;
    let gw = start_on(Gateway::builder().ui(ui(&up)), fast).await;
    let mk = || {
        let chunks: Vec<Result<Frame<Bytes>, Infallible>> = (0..64u8)
            .map(|i| Ok(Frame::data(Bytes::from(vec![i; 4096]))))
            .collect();
        req("POST", "/echo")
            .body(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
                chunks,
            ))))
            .unwrap()
    };
    let (_, _, direct) = collect(send(up.addr, mk()).await).await;
    let (_, _, via) = collect(send(gw.addr, mk()).await).await;
    let (d, v) = (
        echo_without_forwarded(&direct),
        echo_without_forwarded(&via),
    );
    assert_eq!(d["body_len"], 64 * 4096);
    assert_eq!(d["body_fnv"], v["body_fnv"], "{}", engine(fast));
    assert_eq!(d["body_len"], v["body_len"], "{}", engine(fast));
    gw.assert_split(fast, 0, 1, "a chunked request");
    gw.stop().await;
}

#[tokio::test]
async fn responses_are_streamed_not_buffered() {
    responses_are_streamed_not_buffered_on(true).await;
}

/// The same through the general (hyper) path.
#[tokio::test]
async fn responses_are_streamed_not_buffered_general_path() {
    responses_are_streamed_not_buffered_on(false).await;
}

async fn responses_are_streamed_not_buffered_on(fast: bool) {
    let up = TestUpstream::start().await;
    let gw = start_on(Gateway::builder().ui(ui(&up)), fast).await;
    let resp = send(gw.addr, req("GET", "/stream").body(empty()).unwrap()).await;
    let mut body = resp.into_body();
    // The upstream holds back the second part until released: a buffering gateway would
    // never deliver the first one.
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first part before the end")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"first\n"));
    up.release();
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(rest, Bytes::from_static(b"second\n"));
    gw.assert_split(fast, 1, 0, "one streamed response");
    gw.stop().await;
}

fn seen_headers(body: &Bytes) -> Vec<(String, String)> {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_owned(),
                p[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn get_header(seen: &[(String, String)], n: &str) -> Vec<String> {
    seen.iter()
        .filter(|(k, _)| k == n)
        .map(|(_, v)| v.clone())
        .collect()
}

#[tokio::test]
async fn hop_by_hop_identity_and_forwarded_headers() {
    hop_by_hop_identity_and_forwarded_headers_on(true).await;
}

/// The same through the general (hyper) path.
#[tokio::test]
async fn hop_by_hop_identity_and_forwarded_headers_general_path() {
    hop_by_hop_identity_and_forwarded_headers_on(false).await;
}

async fn hop_by_hop_identity_and_forwarded_headers_on(fast: bool) {
    let up = TestUpstream::start().await;
    let gw = start_on(
        Gateway::builder()
            .ui(ui(&up))
            .api(ApiTarget::Upstream(ui(&up)))
            // Allowed for the UI, so that only the hop-by-hop rules can drop them there.
            .header_policy(fluxlit_auth::HeaderPolicy::new(
                &[],
                &[
                    "x-hop".into(),
                    "x-kept".into(),
                    "keep-alive".into(),
                    "te".into(),
                ],
            )),
        fast,
    )
    .await;
    let mk = |path: &str| {
        req("GET", path)
            .header("connection", "keep-alive, x-hop")
            .header("x-kept", "yes")
            .header("x-hop", "secret")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("proxy-authorization", "Basic abc")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-proto", "https")
            .header("forwarded", "for=203.0.113.9")
            .header("x-forwarded-user", "admin")
            .header("x-remote-user", "admin")
            .header("authorization", "Bearer user-token")
            .header("x-not-for-streamlit", "1")
            .body(empty())
            .unwrap()
    };
    for (path, ui_hop) in [("/echo", true), ("/api/echo", false)] {
        let (_, _, body) = collect(send(gw.addr, mk(path)).await).await;
        let seen = seen_headers(&body);
        for gone in [
            "x-hop",
            "keep-alive",
            "te",
            "proxy-authorization",
            "forwarded",
            "connection",
            "x-forwarded-user",
            "x-remote-user",
        ] {
            assert!(
                get_header(&seen, gone).is_empty(),
                "{path}: {gone} must not be forwarded: {seen:?}"
            );
        }
        assert_eq!(
            get_header(&seen, "x-forwarded-for"),
            ["127.0.0.1"],
            "{path}: untrusted inbound chain is dropped"
        );
        assert_eq!(get_header(&seen, "x-forwarded-proto"), ["http"]);
        assert_eq!(get_header(&seen, "x-forwarded-host"), ["example.test"]);
        assert_eq!(
            get_header(&seen, "x-forwarded-port"),
            [gw.addr.port().to_string()]
        );
        assert_eq!(get_header(&seen, "host"), ["example.test"]);
        assert_eq!(get_header(&seen, "x-kept"), ["yes"], "{path}");
        assert_eq!(get_header(&seen, "x-request-id").len(), 1);
        if ui_hop {
            // Streamlit gets the allow-listed client headers only; credentials never.
            assert!(get_header(&seen, "authorization").is_empty(), "{seen:?}");
            assert!(
                get_header(&seen, "x-not-for-streamlit").is_empty(),
                "{seen:?}"
            );
        } else {
            assert_eq!(get_header(&seen, "authorization"), ["Bearer user-token"]);
            assert_eq!(get_header(&seen, "x-not-for-streamlit"), ["1"]);
            assert_eq!(get_header(&seen, "x-forwarded-prefix"), ["/api"]);
        }
    }
    gw.assert_split(fast, 2, 0, "one UI and one API request");
    gw.stop().await;
}

async fn ws_session(addr: SocketAddr, path: &str) -> Vec<String> {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "streamlit, token123".parse().unwrap(),
    );
    let (mut ws, resp) = within("the handshake", tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake");
    let mut log = vec![
        format!("status {}", resp.status()),
        format!(
            "protocol {:?}",
            resp.headers().get("sec-websocket-protocol")
        ),
    ];
    ws.send(Message::Text("hello".into())).await.unwrap();
    ws.send(Message::Binary(Bytes::from_static(&[0, 159, 146, 150])))
        .await
        .unwrap();
    ws.send(Message::Text("close:4001:bye".into()))
        .await
        .unwrap();
    while let Some(m) = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("ws message in time")
    {
        match m.unwrap() {
            Message::Text(t) => log.push(format!("text {}", t.as_str())),
            Message::Binary(b) => log.push(format!("binary {:?}", b.as_ref())),
            Message::Close(Some(f)) => {
                log.push(format!("close {} {}", u16::from(f.code), f.reason.as_str()));
                break;
            }
            other => log.push(format!("other {other:?}")),
        }
    }
    log
}

#[tokio::test]
async fn websocket_sessions_match_direct() {
    websocket_sessions_match_direct_on(true).await;
}

/// The same through the general (hyper) path.
#[tokio::test]
async fn websocket_sessions_match_direct_general_path() {
    websocket_sessions_match_direct_on(false).await;
}

async fn websocket_sessions_match_direct_on(fast: bool) {
    let up = TestUpstream::start().await;
    let gw = start_on(Gateway::builder().ui(ui(&up)), fast).await;
    let direct = ws_session(up.addr, "/ws").await;
    let via = ws_session(gw.addr, "/ws").await;
    assert_eq!(direct, via);
    assert!(via.contains(&"close 4001 bye".to_owned()), "{via:?}");
    assert!(via[1].contains("streamlit"), "{via:?}");
    assert_eq!(
        gw.gateway.drain_tunnels(Duration::from_secs(5)).await,
        0,
        "closed tunnels end by themselves"
    );

    // A refused handshake reaches the client as the upstream's HTTP status.
    for addr in [up.addr, gw.addr] {
        let err = within(
            "the refused handshake",
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws-refuse")),
        )
        .await
        .unwrap_err();
        match err {
            tokio_tungstenite::tungstenite::Error::Http(r) => {
                assert_eq!(r.status(), StatusCode::FORBIDDEN)
            }
            e => panic!("expected an HTTP error, got {e}"),
        }
    }
    gw.assert_split(fast, 2, 0, "two upgrade requests");
    gw.stop().await;
}

#[tokio::test]
async fn open_tunnels_are_cut_by_drain() {
    open_tunnels_are_cut_by_drain_on(true).await;
}

/// The same through the general (hyper) path.
#[tokio::test]
async fn open_tunnels_are_cut_by_drain_general_path() {
    open_tunnels_are_cut_by_drain_on(false).await;
}

async fn open_tunnels_are_cut_by_drain_on(fast: bool) {
    let up = TestUpstream::start().await;
    // Its own drain timeout (not the harness's).
    let gw = launch(
        Gateway::builder()
            .http1_fast_path(fast)
            .ui(ui(&up))
            .drain_timeout(Duration::from_millis(300)),
    )
    .await;
    let (mut ws, _) = within(
        "the handshake",
        tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr)),
    )
    .await
    .unwrap();
    ws.send(Message::Text("ping".into())).await.unwrap();
    let echo = within("the echo", ws.next()).await;
    assert!(matches!(echo, Some(Ok(Message::Text(_)))), "{echo:?}");
    assert_eq!(gw.gateway.active_tunnels(), 1);
    gw.assert_split(fast, 1, 0, "one upgrade request");
    let gateway = gw.gateway.clone();
    gw.stop().await; // the drain does not wait for tunnels
    assert_eq!(gateway.drain_tunnels(Duration::from_millis(100)).await, 1);
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("client sees the cut");
    assert!(
        matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
        "{end:?}"
    );
}

#[tokio::test]
async fn upstream_failures_are_responses() {
    upstream_failures_are_responses_on(true).await;
}

/// The same through the general (hyper) path.
#[tokio::test]
async fn upstream_failures_are_responses_general_path() {
    upstream_failures_are_responses_on(false).await;
}

async fn upstream_failures_are_responses_on(fast: bool) {
    // Nothing listens on a port we bound and released.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dead_ui = Upstream::fixed(
        "streamlit",
        Endpoint {
            authority: dead.to_string().parse().unwrap(),
            base_path: String::new(),
        },
    );
    let up = TestUpstream::start().await;
    let gw = start_on(
        Gateway::builder()
            .ui(dead_ui)
            .api(ApiTarget::Upstream(ui(&up)))
            .read_timeout(Duration::from_millis(300)),
        fast,
    )
    .await;
    let (s, h, b) = collect(send(gw.addr, req("GET", "/").body(empty()).unwrap()).await).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert_eq!(h["content-type"], "text/plain; charset=utf-8");
    let text = String::from_utf8_lossy(&b);
    assert!(
        text.contains("streamlit upstream") && text.contains(&dead.to_string()),
        "{text}"
    );
    // A hung upstream gives 504 after the read timeout.
    let (s, _, b) =
        collect(send(gw.addr, req("GET", "/api/hang").body(empty()).unwrap()).await).await;
    assert_eq!(
        s,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        String::from_utf8_lossy(&b)
    );
    gw.assert_split(
        fast,
        2,
        0,
        "a UI request to a dead upstream, an API request",
    );
    // The same on the UI hop, and the connection stays usable for the next request.
    let gw3 = start_on(
        Gateway::builder()
            .ui(ui(&up))
            .read_timeout(Duration::from_millis(300)),
        fast,
    )
    .await;
    let (s, h, b) = collect(send(gw3.addr, req("GET", "/hang").body(empty()).unwrap()).await).await;
    let text = String::from_utf8_lossy(&b);
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT, "{text}");
    assert!(
        text.contains("gateway_upstream_read_timeout_s") && h.contains_key("x-request-id"),
        "{text}"
    );
    gw3.assert_split(fast, 1, 0, "a UI request to a hung upstream");
    gw3.stop().await;
    // An upstream that is not running (no endpoint) gives 503.
    let (_tx, rx) = watch::channel(None);
    let gw2 = start_on(
        Gateway::builder().ui(Upstream::dynamic("streamlit", rx)),
        fast,
    )
    .await;
    let (s, h, _) = collect(send(gw2.addr, req("GET", "/").body(empty()).unwrap()).await).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h["retry-after"], "1");
    gw2.assert_split(fast, 0, 1, "a UI request while the upstream is not running");
    gw.stop().await;
    gw2.stop().await;
}

/// The gateway's own endpoints are hyper's on both engines; the API upstream is the fast path's
/// when it is on.
#[tokio::test]
async fn health_readiness_and_api_routing() {
    for fast in ENGINES {
        health_readiness_and_api_routing_on(fast).await;
    }
}

async fn health_readiness_and_api_routing_on(fast: bool) {
    let up = TestUpstream::start().await;
    let (ui_tx, ui_rx) = watch::channel(ComponentState::Starting(
        "waiting for /_stcore/health".into(),
    ));
    let (_api_tx, api_rx) = watch::channel(ComponentState::Ready);
    let gw = start_on(
        Gateway::builder()
            .root_path("/myapp")
            .ui(ui(&up))
            .api(ApiTarget::Upstream(Upstream::fixed(
                "api",
                Endpoint {
                    authority: up.addr.to_string().parse().unwrap(),
                    base_path: "/echo".into(),
                },
            )))
            .readiness(ReadinessCheck::new("streamlit", ui_rx))
            .readiness(ReadinessCheck::new("api", api_rx)),
        fast,
    )
    .await;
    for path in ["/api/healthz", "/myapp/api/healthz"] {
        let (s, _, b) = collect(send(gw.addr, req("GET", path).body(empty()).unwrap()).await).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            serde_json::from_slice::<Value>(&b).unwrap(),
            serde_json::json!({"status": "ok"})
        );
    }
    let (s, _, b) =
        collect(send(gw.addr, req("GET", "/api/readyz").body(empty()).unwrap()).await).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["status"], "not_ready");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .starts_with("streamlit: starting"),
        "{v}"
    );
    ui_tx.send(ComponentState::Ready).unwrap();
    let (s, _, b) = collect(
        send(
            gw.addr,
            req("GET", "/myapp/api/readyz").body(empty()).unwrap(),
        )
        .await,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let (s, _, _) =
        collect(send(gw.addr, req("POST", "/api/healthz").body(empty()).unwrap()).await).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);

    // Both proxy shapes reach the API with the mount stripped and the prefix announced.
    for path in ["/api/ping?q=1", "/myapp/api/ping?q=1"] {
        let (s, _, b) = collect(send(gw.addr, req("GET", path).body(empty()).unwrap()).await).await;
        assert_eq!(s, StatusCode::OK);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["uri"], "/echo/ping?q=1", "{path}");
        let prefix: Vec<_> = v["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p[0] == "x-forwarded-prefix")
            .map(|p| p[1].clone())
            .collect();
        assert_eq!(prefix, vec![Value::from("/myapp/api")]);
    }
    gw.assert_split(fast, 2, 5, "health and readiness requests, API requests");
    gw.stop().await;
}

#[tokio::test]
async fn ui_paths_keep_the_root_path() {
    ui_paths_keep_the_root_path_on(true).await;
}

/// The same through the general (hyper) path.
#[tokio::test]
async fn ui_paths_keep_the_root_path_general_path() {
    ui_paths_keep_the_root_path_on(false).await;
}

async fn ui_paths_keep_the_root_path_on(fast: bool) {
    let up = TestUpstream::start().await;
    // base_path "" and root /echo: every UI request reaches the upstream under /echo.
    let gw = start_on(Gateway::builder().root_path("/echo").ui(ui(&up)), fast).await;
    for (path, want) in [
        ("/", "/echo/"),
        ("/echo/x?a=1", "/echo/x?a=1"),
        ("/x?a=1", "/echo/x?a=1"),
        ("/echo", "/echo"),
    ] {
        let (s, _, b) = collect(send(gw.addr, req("GET", path).body(empty()).unwrap()).await).await;
        assert_eq!(s, StatusCode::OK, "{path}");
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["uri"], want, "{path}");
    }
    gw.assert_split(fast, 4, 0, "four UI requests");
    gw.stop().await;
}

#[tokio::test]
async fn no_api_configured_is_404_json_and_services_can_be_mounted() {
    for fast in ENGINES {
        no_api_configured_is_404_json_and_services_can_be_mounted_on(fast).await;
    }
}

async fn no_api_configured_is_404_json_and_services_can_be_mounted_on(fast: bool) {
    let up = TestUpstream::start().await;
    let gw = start_on(Gateway::builder().ui(ui(&up)), fast).await;
    let (s, h, b) =
        collect(send(gw.addr, req("GET", "/api/anything").body(empty()).unwrap()).await).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["detail"],
        "Not Found"
    );
    gw.assert_split(fast, 0, 1, "the API mount without an API");
    gw.stop().await;

    let svc = tower::service_fn(|req: Request<fluxlit_gateway::Body>| async move {
        let prefix = req
            .headers()
            .get("x-forwarded-prefix")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = format!("{} {} {:?}", req.method(), req.uri(), prefix);
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
    });
    let gw = start_on(
        Gateway::builder()
            .root_path("/apps/my-app")
            .ui(ui(&up))
            .api_service(ApiService::new(svc)),
        fast,
    )
    .await;
    for path in ["/api/items?x=1", "/apps/my-app/api/items?x=1"] {
        let (s, _, b) =
            collect(send(gw.addr, req("POST", path).body(empty()).unwrap()).await).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            b,
            Bytes::from("POST /items?x=1 Some(\"/apps/my-app/api\")"),
            "{path}"
        );
    }
    gw.assert_split(fast, 0, 2, "two in-process API requests");
    gw.stop().await;
}

/// One request of a sequence on one connection: method, the public path, the path the
/// upstream gets (the API's mount stripped), body.
type Step = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static [u8]>,
);

fn raw_request(method: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nhost: example.test\r\n").into_bytes();
    if let Some(b) = body {
        r.extend_from_slice(format!("content-length: {}\r\n", b.len()).as_bytes());
    }
    r.extend_from_slice(b"\r\n");
    r.extend_from_slice(body.unwrap_or_default());
    r
}

/// Sends `steps` on one kept-alive connection to `addr` (to the upstream itself when `direct`),
/// one after the other or all in one write (`pipelined`), and reads the responses in order.
async fn on_one_connection(
    addr: SocketAddr,
    steps: &[Step],
    direct: bool,
    pipelined: bool,
) -> Vec<RawResponse> {
    let mut c = within("a client connection", RawClient::connect(addr)).await;
    let request = |&(method, public, upstream, body): &Step| {
        raw_request(method, if direct { upstream } else { public }, body)
    };
    if pipelined {
        let all: Vec<u8> = steps.iter().flat_map(request).collect();
        c.send(&all).await;
    }
    let mut out = Vec::new();
    for step in steps {
        if !pipelined {
            c.send(&request(step)).await;
        }
        let (method, public, _, _) = step;
        let r = c.response(*method == "HEAD").await.unwrap_or_else(|| {
            panic!("{method} {public}: a complete response on the kept-alive connection")
        });
        out.push(r);
    }
    out
}

/// Asserts that the gateway's response `g` to `step` reads like the upstream's own `d`.
fn assert_reads_like_direct(step: &Step, d: &RawResponse, g: &RawResponse, what: &str) {
    let (method, public, upstream, _) = step;
    let ctx = format!("{what}: {method} {public}");
    assert_eq!(d.status, g.status, "{ctx}: status ({})", g.text());
    let echo = upstream.starts_with("/echo");
    if echo {
        assert_eq!(
            echo_without_forwarded(&Bytes::from(d.body.clone())),
            echo_without_forwarded(&Bytes::from(g.body.clone())),
            "{ctx}: what the upstream saw"
        );
    } else {
        assert_eq!(d.body, g.body, "{ctx}: body");
    }
    for name in [
        "content-length",
        "content-type",
        "x-multi",
        "set-cookie",
        "location",
    ] {
        if name == "content-length" && echo {
            continue; // the echo includes the forwarded headers, so its length differs
        }
        assert_eq!(d.all(name), g.all(name), "{ctx}: header {name}");
    }
    assert_eq!(g.all("x-request-id").len(), 1, "{ctx}: one X-Request-ID");
}

/// A gateway with `up` as the UI and the API upstream.
async fn ui_and_api(up: &TestUpstream, fast: bool) -> support::Running {
    ui_and_api_at(up.addr, fast).await
}

/// A gateway with the upstream at `addr` as the UI and the API upstream.
async fn ui_and_api_at(addr: SocketAddr, fast: bool) -> support::Running {
    start_on(
        Gateway::builder()
            .ui(up_at(addr, "ui"))
            .api(ApiTarget::Upstream(up_at(addr, "api"))),
        fast,
    )
    .await
}

/// The transparency checks over ONE kept-alive connection mixing UI and API requests: every
/// response reads like the upstream's own on one kept-alive connection. With the fast path on,
/// it serves them all (UI and API alike); with it off, hyper serves them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_kept_alive_connection_mixing_ui_and_api_reads_like_direct() {
    let steps: [Step; 11] = [
        ("GET", "/echo/1?x=1", "/echo/1?x=1", None),
        ("POST", "/echo/2", "/echo/2", Some(b"{\"a\":1}")),
        ("GET", "/big?bytes=100000", "/big?bytes=100000", None),
        ("HEAD", "/big?bytes=1000", "/big?bytes=1000", None),
        ("GET", "/chunked?bytes=5000", "/chunked?bytes=5000", None),
        // The first API request: the fast path serves it too.
        ("GET", "/api/echo/3?y=2", "/echo/3?y=2", None),
        ("GET", "/status/404", "/status/404", None),
        ("POST", "/api/echo/4", "/echo/4", Some(b"api body")),
        ("GET", "/headers", "/headers", None),
        ("GET", "/status/204", "/status/204", None),
        ("PUT", "/echo/5", "/echo/5", Some(b"x")),
    ];
    let up = TestUpstream::start().await;
    let direct = on_one_connection(up.addr, &steps, true, false).await;
    for fast in ENGINES {
        let gw = ui_and_api(&up, fast).await;
        let via = on_one_connection(gw.addr, &steps, false, false).await;
        for ((step, d), g) in steps.iter().zip(&direct).zip(&via) {
            assert_reads_like_direct(step, d, g, engine(fast));
        }
        gw.assert_split(fast, 11, 0, "nine UI and two API requests");
    }
}

/// Several requests written in one write are answered in order, each like the upstream's own
/// answer to the same pipelined requests: UI requests only, and UI and API requests mixed (the
/// fast path keeps the connection for both when on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_like_direct() {
    let ui_only: [Step; 5] = [
        ("GET", "/echo/q1", "/echo/q1", None),
        ("GET", "/status/201", "/status/201", None),
        ("HEAD", "/big?bytes=10", "/big?bytes=10", None),
        ("POST", "/echo/q2", "/echo/q2", Some(b"pipelined body")),
        ("GET", "/chunked?bytes=3000", "/chunked?bytes=3000", None),
    ];
    let mixed: [Step; 7] = [
        ("GET", "/echo/p1", "/echo/p1", None),
        ("POST", "/echo/p2", "/echo/p2", Some(b"first body")),
        ("GET", "/big?bytes=70000", "/big?bytes=70000", None),
        ("GET", "/api/echo/p3", "/echo/p3", None),
        ("GET", "/echo/p4", "/echo/p4", None),
        ("HEAD", "/big?bytes=10", "/big?bytes=10", None),
        ("GET", "/headers", "/headers", None),
    ];
    let up = TestUpstream::start().await;
    let direct_ui = on_one_connection(up.addr, &ui_only, true, true).await;
    let direct_mixed = on_one_connection(up.addr, &mixed, true, true).await;
    for fast in ENGINES {
        let gw = ui_and_api(&up, fast).await;
        let via = on_one_connection(gw.addr, &ui_only, false, true).await;
        for ((step, d), g) in ui_only.iter().zip(&direct_ui).zip(&via) {
            assert_reads_like_direct(step, d, g, &format!("{} UI only", engine(fast)));
        }
        gw.assert_split(fast, 5, 0, "five pipelined UI requests");
        let via = on_one_connection(gw.addr, &mixed, false, true).await;
        for ((step, d), g) in mixed.iter().zip(&direct_mixed).zip(&via) {
            assert_reads_like_direct(step, d, g, &format!("{} mixed", engine(fast)));
        }
        gw.assert_split(fast, 5 + 7, 0, "then six UI requests and an API request");
    }
}

/// What a scripted upstream answers, by the path it is asked for.
fn scripted(r: &Recorded) -> Reply {
    let raw = |s: &str| Reply::raw(s.as_bytes().to_vec());
    let closing = |s: &str| Reply {
        writes: vec![s.as_bytes().to_vec()],
        close: true,
    };
    match r.target.as_str() {
        "/interim-100" => raw(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nfinal",
        ),
        "/interim-103" => raw(
            "HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nfinal",
        ),
        "/close-delimited" => {
            closing("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the upstream closes")
        }
        "/bad-length" => raw("HTTP/1.1 200 OK\r\ncontent-length: 2x\r\n\r\nok"),
        "/two-lengths" => {
            raw("HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok")
        }
        "/oversized-head" => raw(&format!(
            "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nok",
            "b".repeat(70 * 1024)
        )),
        "/http10" => {
            closing("HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok")
        }
        "/http10-until-close" => {
            closing("HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil close")
        }
        "/order-and-case" => raw(
            "HTTP/1.1 200 OK\r\nX-Zeta: 1\r\nx-alpha: 2\r\nX-Zeta: 3\r\nSet-Cookie: a=1\r\nContent-Type: text/plain\r\nset-cookie: b=2\r\nX-MiXeD-CaSe: v\r\nContent-Length: 2\r\n\r\nok",
        ),
        other => raw(&format!(
            "HTTP/1.1 404 Not Found\r\ncontent-length: {}\r\n\r\n{other}",
            other.len()
        )),
    }
}

/// What a client sees of `path` through each engine and route: `(fast, api, responses)`.
async fn through_every_engine_and_route(
    up: &RecordingUpstream,
    path: &str,
) -> Vec<(bool, bool, Vec<WireResponse>)> {
    let mut out = Vec::new();
    for fast in ENGINES {
        let gw = ui_and_api_at(up.addr, fast).await;
        for api in [false, true] {
            let public = if api {
                format!("/api{path}")
            } else {
                path.to_owned()
            };
            let bytes = raw_roundtrip(
                gw.addr,
                format!("GET {public} HTTP/1.1\r\nhost: example.test\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
            out.push((fast, api, parse_wire(&bytes, false)));
        }
        gw.assert_split(fast, 2, 0, &format!("{path}: one UI, one API request"));
    }
    out
}

/// Scripted upstream answers (interim 1xx before the final response, a close-delimited body,
/// invalid or conflicting Content-Length, a head over the limit, HTTP/1.0 responses) read the
/// same through both engines, on the UI and the API route.
#[tokio::test]
async fn scripted_upstream_answers_read_the_same_on_both_engines_and_routes() {
    let up = RecordingUpstream::with(scripted).await;
    // (path, final status, body; None for a gateway error)
    let cases: [(&str, u16, Option<&[u8]>); 8] = [
        ("/interim-100", 200, Some(b"final")),
        ("/interim-103", 200, Some(b"final")),
        ("/close-delimited", 200, Some(b"until the upstream closes")),
        ("/bad-length", 502, None),
        ("/two-lengths", 502, None),
        ("/oversized-head", 502, None),
        ("/http10", 200, Some(b"ok")),
        ("/http10-until-close", 200, Some(b"until close")),
    ];
    for (path, status, body) in cases {
        let seen = through_every_engine_and_route(&up, path).await;
        for (fast, api, responses) in &seen {
            let what = format!(
                "{path}, {}, {} route",
                engine(*fast),
                if *api { "API" } else { "UI" }
            );
            let statuses: Vec<u16> = responses.iter().map(WireResponse::status).collect();
            assert_eq!(
                statuses,
                [status],
                "{what}: the client sees the final response only ({responses:?})"
            );
            let r = &responses[0];
            if let Some(b) = body {
                assert_eq!(r.body, b, "{what}: body");
            }
            assert_eq!(r.all("x-request-id").len(), 1, "{what}: {r:?}");
        }
        // Identical client-visible fields and body on every engine and route (framing aside;
        // the gateway's own error text names the route's upstream and the request id).
        let norm = |r: &WireResponse| {
            let fields: Vec<(String, String)> = r
                .semantic_fields()
                .into_iter()
                .filter(|(n, _)| n != "content-length" && n != "transfer-encoding")
                .collect();
            let body = if body.is_some() {
                r.body.clone()
            } else {
                let text = String::from_utf8_lossy(&r.body).into_owned();
                assert!(
                    text.starts_with("FluxLit: the ") && text.contains("request id"),
                    "{path}: the gateway's error text: {text}"
                );
                Vec::new()
            };
            (r.status(), fields, body)
        };
        let first = norm(&seen[0].2[0]);
        for (fast, api, responses) in &seen[1..] {
            assert_eq!(
                norm(&responses[0]),
                first,
                "{path}: {} {} route reads like the fast path's UI route",
                engine(*fast),
                if *api { "API" } else { "UI" }
            );
        }
    }
}

/// Header order and letter case of an upstream response: field values of one name keep their
/// order, and every field arrives, on both engines and routes.
#[tokio::test]
async fn response_fields_keep_their_values_and_order_per_name() {
    let up = RecordingUpstream::with(scripted).await;
    let seen = through_every_engine_and_route(&up, "/order-and-case").await;
    for (fast, api, responses) in &seen {
        let what = format!(
            "{}, {} route",
            engine(*fast),
            if *api { "API" } else { "UI" }
        );
        let r = &responses[0];
        assert_eq!(r.status(), 200, "{what}");
        assert_eq!(r.all("x-zeta"), ["1", "3"], "{what}: {r:?}");
        assert_eq!(r.all("set-cookie"), ["a=1", "b=2"], "{what}: {r:?}");
        assert_eq!(r.all("x-alpha"), ["2"], "{what}: {r:?}");
        assert_eq!(r.all("x-mixed-case"), ["v"], "{what}: {r:?}");
        assert_eq!(r.all("content-type"), ["text/plain"], "{what}: {r:?}");
        assert_eq!(r.body, b"ok", "{what}");
    }
}

/// Response fields mean the same on both engines and routes: the same names (compared without
/// letter case, RFC 9110 §5.1) and, per name, the same values in the upstream's order. The
/// order of fields with different names is not significant (RFC 9110 §5.3) and is not compared:
/// the fast path keeps the upstream's lines as they are, hyper's `HeaderMap` lower-cases names
/// and groups them by name (an accepted difference, docs/ARCHITECTURE.md).
#[tokio::test]
async fn response_fields_keep_their_values_in_order_per_name() {
    let up = RecordingUpstream::with(scripted).await;
    let seen = through_every_engine_and_route(&up, "/order-and-case").await;
    let lines = |r: &WireResponse| -> Vec<(String, String)> {
        r.fields
            .iter()
            .filter(|(n, _)| {
                !matches!(
                    n.to_ascii_lowercase().as_str(),
                    "date" | "x-request-id" | "connection"
                )
            })
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .collect::<Vec<_>>()
    };
    // Per name, in order; names sorted (different names' order is not significant).
    let by_name = |lines: Vec<(String, String)>| -> Vec<(String, Vec<String>)> {
        let mut names: Vec<String> = lines.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|n| {
                let values = lines
                    .iter()
                    .filter(|(m, _)| *m == n)
                    .map(|(_, v)| v.clone())
                    .collect();
                (n, values)
            })
            .collect()
    };
    let want: Vec<(String, String)> = [
        ("X-Zeta", "1"),
        ("x-alpha", "2"),
        ("X-Zeta", "3"),
        ("Set-Cookie", "a=1"),
        ("Content-Type", "text/plain"),
        ("set-cookie", "b=2"),
        ("X-MiXeD-CaSe", "v"),
        ("Content-Length", "2"),
    ]
    .iter()
    .map(|(n, v)| (n.to_ascii_lowercase(), (*v).to_owned()))
    .collect();
    let want = by_name(want);
    let mut report = Vec::new();
    for (fast, api, responses) in &seen {
        let got = by_name(lines(&responses[0]));
        if got != want {
            report.push(format!(
                "{} {} route: {got:?}",
                engine(*fast),
                if *api { "API" } else { "UI" }
            ));
        }
    }
    assert!(
        report.is_empty(),
        "want {want:?}; got:\n{}",
        report.join("\n")
    );
}

/// An HTTP/1.0 upstream's answer reaches the HTTP/1.1 client as an HTTP/1.1 response (RFC 9110
/// §6.2: an intermediary sends its own version), and a kept-alive client connection stays
/// usable after it.
#[tokio::test]
async fn an_http10_upstream_answer_reaches_the_client_as_http11() {
    let up = RecordingUpstream::with(scripted).await;
    let mut report = Vec::new();
    for fast in ENGINES {
        let gw = ui_and_api_at(up.addr, fast).await;
        for api in [false, true] {
            let what = format!("{} {} route", engine(fast), if api { "API" } else { "UI" });
            let prefix = if api { "/api" } else { "" };
            let mut c = within("a client connection", RawClient::connect(gw.addr)).await;
            c.send(&raw_request("GET", &format!("{prefix}/http10"), None))
                .await;
            let mut raw = [0u8; 12];
            within("the status line", c.stream().read_exact(&mut raw))
                .await
                .expect("a status line");
            if &raw[..] != b"HTTP/1.1 200" {
                report.push(format!("{what}: {:?}", String::from_utf8_lossy(&raw)));
            }
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}

/// Scripted upstream answers in a row on ONE kept-alive client connection, UI and API requests
/// mixed (all the fast path's when it is on): each is answered like on a
/// connection of its own, and the connection stays usable after each of them, on both engines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_answers_in_a_row_on_one_kept_alive_connection() {
    let up = RecordingUpstream::with(scripted).await;
    // (path, status, body; None for the gateway's own error answer)
    let steps: [(&str, u16, Option<&[u8]>); 10] = [
        ("/interim-100", 200, Some(b"final")),
        ("/interim-103", 200, Some(b"final")),
        ("/bad-length", 502, None),
        ("/http10", 200, Some(b"ok")),
        // The first API request: the fast path serves it too.
        ("/api/interim-103", 200, Some(b"final")),
        ("/interim-100", 200, Some(b"final")),
        ("/api/http10", 200, Some(b"ok")),
        ("/two-lengths", 502, None),
        ("/http10", 200, Some(b"ok")),
        ("/api/interim-100", 200, Some(b"final")),
    ];
    for fast in ENGINES {
        let gw = ui_and_api_at(up.addr, fast).await;
        let mut c = within("a client connection", RawClient::connect(gw.addr)).await;
        for (path, status, body) in steps {
            let what = format!("{}: GET {path}", engine(fast));
            c.send(&raw_request("GET", path, None)).await;
            let r = c
                .response(false)
                .await
                .unwrap_or_else(|| panic!("{what}: answered on the kept-alive connection"));
            assert_eq!(r.status, status, "{what}: {}", r.text());
            if let Some(body) = body {
                assert_eq!(r.body, body, "{what}");
            }
        }
        gw.assert_split(fast, 10, 0, "seven UI and three API requests");
    }
}
