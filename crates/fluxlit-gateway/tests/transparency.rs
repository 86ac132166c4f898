//! The same scenarios run directly against a real upstream and through the gateway; the
//! results must match (after removing what the gateway is supposed to change: the forwarded
//! headers). Plus the gateway's own behaviours: routing, readiness, errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use fluxlit_gateway::{
    ApiService, ApiTarget, ComponentState, Endpoint, Gateway, GatewayBuilder, ReadinessCheck,
    Upstream,
};
use fluxlit_testkit::upstream::TestUpstream;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type ReqBody = BoxBody<Bytes, Infallible>;

struct Running {
    addr: SocketAddr,
    gateway: Gateway,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(builder: GatewayBuilder) -> Self {
        let gateway = builder.build().expect("valid gateway");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let gw = gateway.clone();
        let task = tokio::spawn(async move {
            gw.serve(listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            addr,
            gateway,
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.unwrap();
    }
}

fn ui(up: &TestUpstream) -> Upstream {
    Upstream::fixed(
        "test-ui",
        Endpoint {
            authority: up.addr.to_string().parse().unwrap(),
            base_path: String::new(),
        },
    )
}

fn empty() -> ReqBody {
    Full::new(Bytes::new()).boxed()
}

fn bytes_body(b: impl Into<Bytes>) -> ReqBody {
    Full::new(b.into()).boxed()
}

/// Sends one request on a fresh HTTP/1.1 connection.
async fn send(addr: SocketAddr, req: Request<ReqBody>) -> Response<Incoming> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("response in time")
        .expect("response")
}

async fn collect(resp: Response<Incoming>) -> (StatusCode, HeaderMap, Bytes) {
    let (parts, body) = resp.into_parts();
    let bytes = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    (parts.status, parts.headers, bytes)
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
    let gw = Running::start(
        Gateway::builder()
            .http1_fast_path(fast)
            .ui(ui(&up))
            .header_policy(policy),
    )
    .await;

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
    gw.stop().await;
}

#[tokio::test]
async fn chunked_request_bodies_stream_through() {
    let up = TestUpstream::start().await;
    let gw = Running::start(Gateway::builder().ui(ui(&up))).await;
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
    assert_eq!(d["body_fnv"], v["body_fnv"]);
    assert_eq!(d["body_len"], v["body_len"]);
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
    let gw = Running::start(Gateway::builder().http1_fast_path(fast).ui(ui(&up))).await;
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
    let gw = Running::start(
        Gateway::builder()
            .http1_fast_path(fast)
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
    gw.stop().await;
}

async fn ws_session(addr: SocketAddr, path: &str) -> Vec<String> {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "streamlit, token123".parse().unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(request)
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
    let gw = Running::start(Gateway::builder().http1_fast_path(fast).ui(ui(&up))).await;
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
        let err = tokio_tungstenite::connect_async(format!("ws://{addr}/ws-refuse"))
            .await
            .unwrap_err();
        match err {
            tokio_tungstenite::tungstenite::Error::Http(r) => {
                assert_eq!(r.status(), StatusCode::FORBIDDEN)
            }
            e => panic!("expected an HTTP error, got {e}"),
        }
    }
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
    let gw = Running::start(
        Gateway::builder()
            .http1_fast_path(fast)
            .ui(ui(&up))
            .drain_timeout(Duration::from_millis(300)),
    )
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .unwrap();
    ws.send(Message::Text("ping".into())).await.unwrap();
    assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))));
    assert_eq!(gw.gateway.active_tunnels(), 1);
    let gateway = gw.gateway.clone();
    gw.stop().await; // the drain waits for the tunnel only until its deadline
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
    let gw = Running::start(
        Gateway::builder()
            .http1_fast_path(fast)
            .ui(dead_ui)
            .api(ApiTarget::Upstream(ui(&up)))
            .read_timeout(Duration::from_millis(300)),
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
    // The same on the UI hop, and the connection stays usable for the next request.
    let gw3 = Running::start(
        Gateway::builder()
            .http1_fast_path(fast)
            .ui(ui(&up))
            .read_timeout(Duration::from_millis(300)),
    )
    .await;
    let (s, h, b) = collect(send(gw3.addr, req("GET", "/hang").body(empty()).unwrap()).await).await;
    let text = String::from_utf8_lossy(&b);
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT, "{text}");
    assert!(
        text.contains("gateway_upstream_read_timeout_s") && h.contains_key("x-request-id"),
        "{text}"
    );
    gw3.stop().await;
    // An upstream that is not running (no endpoint) gives 503.
    let (_tx, rx) = watch::channel(None);
    let gw2 = Running::start(
        Gateway::builder()
            .http1_fast_path(fast)
            .ui(Upstream::dynamic("streamlit", rx)),
    )
    .await;
    let (s, h, _) = collect(send(gw2.addr, req("GET", "/").body(empty()).unwrap()).await).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h["retry-after"], "1");
    gw.stop().await;
    gw2.stop().await;
}

#[tokio::test]
async fn health_readiness_and_api_routing() {
    let up = TestUpstream::start().await;
    let (ui_tx, ui_rx) = watch::channel(ComponentState::Starting(
        "waiting for /_stcore/health".into(),
    ));
    let (_api_tx, api_rx) = watch::channel(ComponentState::Ready);
    let gw = Running::start(
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
    let gw = Running::start(
        Gateway::builder()
            .http1_fast_path(fast)
            .root_path("/echo")
            .ui(ui(&up)),
    )
    .await;
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
    gw.stop().await;
}

#[tokio::test]
async fn no_api_configured_is_404_json_and_services_can_be_mounted() {
    let up = TestUpstream::start().await;
    let gw = Running::start(Gateway::builder().ui(ui(&up))).await;
    let (s, h, b) =
        collect(send(gw.addr, req("GET", "/api/anything").body(empty()).unwrap()).await).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["detail"],
        "Not Found"
    );
    gw.stop().await;

    let svc = tower::service_fn(|req: Request<fluxlit_gateway::Body>| async move {
        let prefix = req
            .headers()
            .get("x-forwarded-prefix")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = format!("{} {} {:?}", req.method(), req.uri(), prefix);
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
    });
    let gw = Running::start(
        Gateway::builder()
            .root_path("/apps/my-app")
            .ui(ui(&up))
            .api_service(ApiService::new(svc)),
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
    gw.stop().await;
}
