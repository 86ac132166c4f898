//! The gateway at the edge, against real sockets: proxy trust (spoofing matrix on the API, UI and
//! WebSocket hops), request ids, body caps, shedding, connection and rate limits, WebSocket
//! policy, API redirect/cookie rewriting, security headers, CORS, metrics and debug endpoints.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fluxlit_gateway::{ApiHeaders, ApiService, ApiTarget, Gateway, Limits, TrustPolicy, Upstream};
use fluxlit_testkit::upstream::TestUpstream;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type ReqBody = BoxBody<Bytes, Infallible>;

mod support;

use support::{start, up_at};

fn up(u: &TestUpstream, name: &str) -> Upstream {
    up_at(u.addr, name)
}

fn empty() -> ReqBody {
    Full::new(Bytes::new()).boxed()
}

async fn send_from(
    local: Option<&str>,
    addr: SocketAddr,
    req: Request<ReqBody>,
) -> (StatusCode, HeaderMap, Bytes) {
    let stream = match local {
        Some(ip) => {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(format!("{ip}:0").parse().unwrap()).unwrap();
            sock.connect(addr).await.unwrap()
        }
        None => tokio::net::TcpStream::connect(addr).await.unwrap(),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp: Response<Incoming> =
        tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
            .await
            .unwrap()
            .unwrap();
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .unwrap()
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (parts.status, parts.headers, body)
}

async fn send(addr: SocketAddr, req: Request<ReqBody>) -> (StatusCode, HeaderMap, Bytes) {
    send_from(None, addr, req).await
}

fn get(path: &str) -> http::request::Builder {
    Request::get(path).header("host", "app.example")
}

fn seen(body: &Bytes, name: &str) -> Vec<String> {
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)));
    v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p[0] == name)
        .map(|p| p[1].as_str().unwrap().to_owned())
        .collect()
}

fn spoofed(path: &str) -> Request<ReqBody> {
    get(path)
        .header("x-forwarded-for", "203.0.113.50, 198.51.100.7")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "public.example")
        .header("x-forwarded-prefix", "/edge")
        .header("x-request-id", "edge-id-1")
        .body(empty())
        .unwrap()
}

/// Trust off; trust on from an allowed peer (with and without `trust_forwarded_prefix`); trust
/// on from a disallowed peer — on the API and UI hops (the WebSocket hop is covered below).
#[tokio::test]
async fn spoofing_matrix_http_hops() {
    let u = TestUpstream::start().await;
    let allowed = fluxlit_config::parse_ip_net("127.0.0.2").unwrap();
    for (trust, peer, believed, prefix) in [
        (TrustPolicy::none(), "127.0.0.1", false, false),
        (
            TrustPolicy::trusting(vec![allowed]),
            "127.0.0.2",
            true,
            false,
        ),
        (
            TrustPolicy::trusting(vec![allowed]).forwarded_prefix(true),
            "127.0.0.2",
            true,
            true,
        ),
        (
            TrustPolicy::trusting(vec![allowed]),
            "127.0.0.3",
            false,
            false,
        ),
    ] {
        let gw = start(
            Gateway::builder()
                .ui(up(&u, "ui"))
                .api(ApiTarget::Upstream(up(&u, "api")))
                .trust(trust),
        )
        .await;
        for (path, api) in [("/echo", false), ("/api/echo", true)] {
            let (status, headers, body) = send_from(Some(peer), gw.addr, spoofed(path)).await;
            assert_eq!(status, StatusCode::OK);
            let ctx = format!("peer {peer} path {path}");
            if believed {
                assert_eq!(
                    seen(&body, "x-forwarded-for"),
                    [format!("203.0.113.50, 198.51.100.7, {peer}")],
                    "{ctx}"
                );
                assert_eq!(seen(&body, "x-forwarded-proto"), ["https"], "{ctx}");
                assert_eq!(seen(&body, "x-forwarded-host"), ["public.example"], "{ctx}");
                assert_eq!(seen(&body, "x-forwarded-port"), ["443"], "{ctx}");
                assert_eq!(seen(&body, "x-request-id"), ["edge-id-1"], "{ctx}");
                assert_eq!(headers["x-request-id"], "edge-id-1", "{ctx}");
                if api {
                    // X-Forwarded-Prefix is believed only when opted in.
                    let want = if prefix { "/edge/api" } else { "/api" };
                    assert_eq!(seen(&body, "x-forwarded-prefix"), [want], "{ctx}");
                }
            } else {
                assert_eq!(seen(&body, "x-forwarded-for"), [peer.to_owned()], "{ctx}");
                assert_eq!(seen(&body, "x-forwarded-proto"), ["http"], "{ctx}");
                assert_eq!(seen(&body, "x-forwarded-host"), ["app.example"], "{ctx}");
                let rid = seen(&body, "x-request-id");
                assert_eq!(rid.len(), 1);
                assert_ne!(
                    rid[0], "edge-id-1",
                    "{ctx}: untrusted peers cannot choose the request id"
                );
                assert_eq!(
                    headers["x-request-id"],
                    rid[0].as_str(),
                    "{ctx}: the same id goes back to the client"
                );
                if api {
                    assert_eq!(seen(&body, "x-forwarded-prefix"), ["/api"], "{ctx}");
                }
            }
        }
    }
}

#[tokio::test]
async fn websocket_hop_gets_the_same_treatment() {
    let u = TestUpstream::start().await;
    // The test upstream's /ws echoes; to see the upgrade's headers, send the upgrade to /echo:
    // the upstream answers 200 with what it saw, which the gateway returns as a normal response.
    let gw = start(Gateway::builder().ui(up(&u, "ui"))).await;
    let req = Request::get("/echo")
        .header("host", "app.example")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", "streamlit")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-user", "admin")
        .header("authorization", "Bearer t")
        .body(empty())
        .unwrap();
    let (status, _, body) = send(gw.addr, req).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a refused upgrade is a normal response"
    );
    assert_eq!(seen(&body, "x-forwarded-for"), ["127.0.0.1"]);
    assert!(seen(&body, "x-forwarded-user").is_empty());
    assert!(seen(&body, "authorization").is_empty());
    assert_eq!(seen(&body, "upgrade"), ["websocket"]);
    assert_eq!(seen(&body, "connection"), ["upgrade"]);
    assert_eq!(seen(&body, "sec-websocket-protocol"), ["streamlit"]);
    assert_eq!(seen(&body, "x-request-id").len(), 1);
}

#[tokio::test]
async fn body_caps_refuse_before_and_while_streaming() {
    let u = TestUpstream::start().await;
    let limits = Limits {
        max_ui_body: 1000,
        max_api_body: 10,
        ..Limits::default()
    };
    let gw = start(
        Gateway::builder()
            .ui(up(&u, "ui"))
            .api(ApiTarget::Upstream(up(&u, "api")))
            .limits(limits),
    )
    .await;
    // Content-Length over the cap: 413 without asking the upstream.
    let (s, _, b) = send(
        gw.addr,
        Request::post("/echo")
            .header("host", "h")
            .body(Full::new(Bytes::from(vec![1u8; 1001])).boxed())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(String::from_utf8_lossy(&b).contains("gateway_max_proxy_request_body_bytes"));
    let (s, _, b) = send(
        gw.addr,
        Request::post("/api/echo")
            .header("host", "h")
            .body(Full::new(Bytes::from(vec![1u8; 11])).boxed())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        String::from_utf8_lossy(&b).contains("gateway_max_api_request_body_bytes"),
        "distinct body per route"
    );
    // At the cap: fine.
    let (s, _, _) = send(
        gw.addr,
        Request::post("/echo")
            .header("host", "h")
            .body(Full::new(Bytes::from(vec![1u8; 1000])).boxed())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // Chunked (no Content-Length): cut mid-stream.
    let chunks: Vec<Result<Frame<Bytes>, Infallible>> = (0..10)
        .map(|_| Ok(Frame::data(Bytes::from(vec![2u8; 400]))))
        .collect();
    let req = Request::post("/echo")
        .header("host", "h")
        .body(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
            chunks,
        ))))
        .unwrap();
    let (s, _, b) = send(gw.addr, req).await;
    assert_eq!(
        s,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        String::from_utf8_lossy(&b)
    );
    // GET without a body is never refused.
    let (s, _, _) = send(gw.addr, get("/api/echo").body(empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn upstream_concurrency_cap_sheds_fast() {
    let u = TestUpstream::start().await;
    let limits = Limits {
        max_upstream_concurrency: 1,
        ..Limits::default()
    };
    let gw = start(
        Gateway::builder()
            .ui(up(&u, "ui"))
            .limits(limits)
            .read_timeout(Duration::from_secs(5)),
    )
    .await;
    let addr = gw.addr;
    // Occupy the only slot with a request the upstream never answers; if a probe raced it for
    // the slot (and so it was shed itself), send it again.
    let hang = std::sync::Mutex::new(tokio::spawn(async move {
        send(addr, get("/hang").body(empty()).unwrap()).await
    }));
    let shed = fluxlit_testkit::eventually(Duration::from_secs(10), "a request to be shed", || {
        let hang = &hang;
        async move {
            if let Ok(mut h) = hang.lock()
                && h.is_finished()
            {
                *h = tokio::spawn(
                    async move { send(addr, get("/hang").body(empty()).unwrap()).await },
                );
                return None; // give it the slot before probing again
            }
            let (s, h, _) = send(addr, get("/echo").body(empty()).unwrap()).await;
            (s == StatusCode::SERVICE_UNAVAILABLE).then_some(h)
        }
    })
    .await;
    assert_eq!(shed["retry-after"], "1");
    hang.lock().unwrap().abort();
}

#[tokio::test]
async fn connection_limits_answer_503_and_close() {
    let u = TestUpstream::start().await;
    let limits = Limits {
        max_connections_per_ip: 1,
        ..Limits::default()
    };
    let gw = start(Gateway::builder().ui(up(&u, "ui")).limits(limits)).await;
    let _held = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let text = fluxlit_testkit::eventually(
        Duration::from_secs(5),
        "a refused second connection",
        || async move {
            let mut s = tokio::net::TcpStream::connect(gw.addr).await.ok()?;
            s.write_all(b"GET /echo HTTP/1.1\r\nhost: h\r\n\r\n")
                .await
                .ok()?;
            let mut buf = Vec::new();
            tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf))
                .await
                .ok()?
                .ok()?;
            let t = String::from_utf8_lossy(&buf).into_owned();
            t.starts_with("HTTP/1.1 503").then_some(t)
        },
    )
    .await;
    assert!(text.contains("gateway_max_connections_per_ip"), "{text}");
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let u = TestUpstream::start().await;
    let gw = start(Gateway::builder().ui(up(&u, "ui")).limits(Limits {
        max_header_bytes: 8192,
        ..Limits::default()
    }))
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let big = "x".repeat(20_000);
    s.write_all(format!("GET /echo HTTP/1.1\r\nhost: h\r\nx-big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}

#[tokio::test]
async fn rate_limits_give_429_with_retry_after_and_spare_health_probes() {
    let u = TestUpstream::start().await;
    let limits = Limits {
        rate_api: Some((1, 2)),
        ..Limits::default()
    };
    let gw = start(
        Gateway::builder()
            .ui(up(&u, "ui"))
            .api(ApiTarget::Upstream(up(&u, "api")))
            .limits(limits),
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (s, h, _) = send(gw.addr, get("/api/echo").body(empty()).unwrap()).await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
        }
        statuses.push(s.as_u16());
    }
    assert_eq!(&statuses[..2], &[200, 200]);
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    for _ in 0..5 {
        let (s, _, _) = send(gw.addr, get("/api/healthz").body(empty()).unwrap()).await;
        assert_eq!(s, StatusCode::OK, "health probes are exempt");
    }
    let (s, _, _) = send(gw.addr, get("/echo").body(empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK, "the UI has its own budget");
}

#[tokio::test]
async fn websocket_origin_allow_list_and_idle_timeout() {
    let u = TestUpstream::start().await;
    let limits = Limits {
        ws_allowed_origins: vec!["https://app.example".into()],
        ws_idle_timeout: Some(Duration::from_millis(300)),
        ..Limits::default()
    };
    let gw = start(Gateway::builder().ui(up(&u, "ui")).limits(limits)).await;
    let mut bad = format!("ws://{}/ws", gw.addr)
        .into_client_request()
        .unwrap();
    bad.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(bad).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), StatusCode::FORBIDDEN)
        }
        other => panic!("expected 403, got {other:?}"),
    }
    let mut good = format!("ws://{}/ws", gw.addr)
        .into_client_request()
        .unwrap();
    good.headers_mut()
        .insert("origin", "https://app.example".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(good).await.unwrap();
    ws.send(Message::Text("hi".into())).await.unwrap();
    assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))));
    // Idle past the timeout: the tunnel is closed by the gateway.
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the idle tunnel is closed");
    assert!(
        matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
        "{end:?}"
    );
}

#[tokio::test]
async fn api_redirects_and_cookies_stay_under_the_public_prefix() {
    let svc = tower::service_fn(|req: Request<fluxlit_gateway::Body>| async move {
        let _ = req;
        let r = Response::builder()
            .status(307)
            .header("location", "/items/")
            .header("set-cookie", "sid=1; Path=/; HttpOnly")
            .body(Full::new(Bytes::new()))
            .unwrap();
        Ok::<_, Infallible>(r)
    });
    let u = TestUpstream::start().await;
    // An in-process API sees the mount-stripped path too, and gets the same rewriting.
    let gw = start(
        Gateway::builder()
            .root_path("/myapp")
            .ui(up(&u, "ui"))
            .api_service(ApiService::new(svc)),
    )
    .await;
    let (s, h, _) = send(gw.addr, get("/myapp/api/items").body(empty()).unwrap()).await;
    assert_eq!(s.as_u16(), 307);
    assert_eq!(h["location"], "/myapp/api/items/");
    assert_eq!(h["set-cookie"], "sid=1; Path=/myapp/api/; HttpOnly");
    drop(gw);

    // Through an upstream API: a uvicorn-style redirect to its own absolute URL.
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_addr = api.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = api.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(307)
                            .header("location", format!("http://{api_addr}/items/"))
                            .header("set-cookie", "sid=1; Path=/; HttpOnly")
                            .body(Full::new(Bytes::new()))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let api_up = up_at(api_addr, "api");
    let gw = start(
        Gateway::builder()
            .root_path("/myapp")
            .ui(up(&u, "ui"))
            .api(ApiTarget::Upstream(api_up)),
    )
    .await;
    for path in ["/myapp/api/items", "/api/items"] {
        let (s, h, _) = send(gw.addr, get(path).body(empty()).unwrap()).await;
        assert_eq!(s.as_u16(), 307);
        assert_eq!(
            h["location"], "http://app.example/myapp/api/items/",
            "{path}"
        );
        assert_eq!(h["set-cookie"], "sid=1; Path=/myapp/api/; HttpOnly");
    }
}

#[tokio::test]
async fn security_headers_and_cors_apply_to_the_api_only() {
    let u = TestUpstream::start().await;
    let settings = {
        let env = fluxlit_config::Environment::from_pairs([
            ("FLUXLIT_ENABLE_SECURITY_HEADERS", "true"),
            ("FLUXLIT_CORS_ALLOW_ORIGINS", "https://a.example"),
            ("FLUXLIT_CORS_MIDDLEWARE_KWARGS", "{\"max_age\": 600}"),
        ]);
        fluxlit_config::load(&fluxlit_config::LoadOptions::new(
            &std::env::temp_dir(),
            env,
            Default::default(),
        ))
        .unwrap()
        .settings
    };
    let gw = start(
        Gateway::builder()
            .ui(up(&u, "ui"))
            .api(ApiTarget::Upstream(up(&u, "api")))
            .api_headers(ApiHeaders::from_settings(&settings)),
    )
    .await;
    let (_, h, _) = send(
        gw.addr,
        get("/api/echo")
            .header("origin", "https://a.example")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "SAMEORIGIN");
    assert!(
        h.get("strict-transport-security").is_none(),
        "no HSTS over plain http"
    );
    assert_eq!(h["access-control-allow-origin"], "https://a.example");
    let pre = Request::options("/api/echo")
        .header("host", "h")
        .header("origin", "https://a.example")
        .header("access-control-request-method", "PUT")
        .body(empty())
        .unwrap();
    let (s, h, _) = send(gw.addr, pre).await;
    assert!(s.is_success(), "{s}");
    assert_eq!(h["access-control-max-age"], "600");
    let (_, h, _) = send(
        gw.addr,
        get("/api/echo")
            .header("origin", "https://evil.example")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert!(h.get("access-control-allow-origin").is_none());
    let (_, h, _) = send(gw.addr, get("/echo").body(empty()).unwrap()).await;
    assert!(
        h.get("x-frame-options").is_none(),
        "Streamlit's responses are left alone"
    );
}

#[tokio::test]
async fn metrics_and_debug_endpoints() {
    let u = TestUpstream::start().await;
    let render: fluxlit_gateway::MetricsRender = Arc::new(|| "fluxlit_test_metric 1\n".to_owned());
    let gw = start(
        Gateway::builder()
            .root_path("/myapp")
            .ui(up(&u, "ui"))
            .metrics_endpoint("/__fluxlit/metrics", render)
            .debug(Arc::new(|| serde_json::json!({"settings": {"x": 1}}))),
    )
    .await;
    for path in ["/__fluxlit/metrics", "/myapp/__fluxlit/metrics"] {
        let (s, h, b) = send(gw.addr, get(path).body(empty()).unwrap()).await;
        assert_eq!(s, StatusCode::OK);
        assert!(
            h["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        assert_eq!(b, Bytes::from_static(b"fluxlit_test_metric 1\n"));
    }
    let _ = send(gw.addr, get("/echo?token=secret").body(empty()).unwrap()).await;
    let (s, _, b) = send(gw.addr, get("/__fluxlit/debug").body(empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["fluxlit_debug"], true);
    assert_eq!(v["settings"]["x"], 1);
    assert!(
        v["recent_dispatches"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["path"] == "/echo" && d["dispatch"] == "streamlit")
    );
    drop(gw);
    // Debug off: 404, not proxied.
    let gw = start(Gateway::builder().ui(up(&u, "ui"))).await;
    let (s, _, _) = send(gw.addr, get("/__fluxlit/debug").body(empty()).unwrap()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// A request head that arrives a byte at a time (each in its own segment) is still answered,
/// on the fast path and on the general one.
#[tokio::test]
async fn a_head_trickling_in_byte_by_byte_is_answered() {
    let u = TestUpstream::start().await;
    for fast in [true, false] {
        let gw = start(Gateway::builder().http1_fast_path(fast).ui(up(&u, "ui"))).await;
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        for b in b"GET /echo/trickle HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n" {
            s.write_all(&[*b]).await.unwrap();
            s.flush().await.unwrap();
        }
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .expect("answered in time")
            .unwrap();
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 200"), "fast path {fast}: {text}");
        assert!(text.contains("/echo/trickle"), "fast path {fast}: {text}");
    }
}

#[tokio::test]
async fn slow_clients_are_cut_by_the_header_read_timeout() {
    let u = TestUpstream::start().await;
    let gw = start(Gateway::builder().ui(up(&u, "ui")).limits(Limits {
        header_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    }))
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /echo HTTP/1.1\r\nhost: h\r\nx-slow: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(
        r.is_ok(),
        "the gateway closes a connection whose headers never finish"
    );
}

#[tokio::test]
async fn websocket_max_lifetime_closes_busy_tunnels_too() {
    let u = TestUpstream::start().await;
    let gw = start(Gateway::builder().ui(up(&u, "ui")).limits(Limits {
        ws_max_lifetime: Some(Duration::from_millis(400)),
        ..Limits::default()
    }))
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if ws.send(Message::Text("busy".into())).await.is_err() {
                return;
            }
            if let Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) =
                tokio::time::timeout(Duration::from_millis(100), ws.next()).await
            {
                return;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a tunnel past its maximum lifetime is closed even while busy"
    );
}

/// An upstream that answers the first request on each connection and then, on the second,
/// reads it and closes the connection without answering: a pooled connection dying under a
/// request.
async fn closing_upstream() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                let mut answered = false;
                loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                        let body_len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if seen.len() < end + 4 + body_len {
                            continue;
                        }
                        seen.drain(..end + 4 + body_len);
                        if answered {
                            return; // second request: close without answering
                        }
                        answered = true;
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                }
            });
        }
    });
    addr
}

/// One keep-alive client connection: requests are sent one after the other on it.
struct KeepAlive(hyper::client::conn::http1::SendRequest<ReqBody>);

impl KeepAlive {
    async fn open(addr: SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self(send)
    }

    async fn send(&mut self, req: Request<ReqBody>) -> (StatusCode, Bytes) {
        self.0.ready().await.unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), self.0.send_request(req))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        let status = resp.status();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }
}

#[tokio::test]
async fn idempotent_requests_are_retried_once_on_a_dead_kept_alive_connection() {
    let addr = closing_upstream().await;
    let ui = up_at(addr, "ui");
    let gw = start(Gateway::builder().ui(ui)).await;
    // One client connection: its requests share one upstream connection, which the upstream
    // closes under the second request without answering.
    let mut c = KeepAlive::open(gw.addr).await;
    let (s, b) = c.send(get("/a").body(empty()).unwrap()).await;
    assert_eq!((s, b.as_ref()), (StatusCode::OK, b"ok".as_ref()));
    let (s, b) = c.send(get("/b").body(empty()).unwrap()).await;
    assert_eq!(
        s,
        StatusCode::OK,
        "GET retried on a new connection: {}",
        String::from_utf8_lossy(&b)
    );
    // Now the kept connection is the retried one (answered once); a POST with a body on it
    // dies and is not retried.
    let (s, _) = c
        .send(
            Request::post("/c")
                .header("host", "h")
                .body(Full::new(Bytes::from_static(b"x")).boxed())
                .unwrap(),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_GATEWAY,
        "non-idempotent requests are never retried"
    );
}

#[tokio::test]
async fn a_client_connection_keeps_its_own_upstream_connection_and_hands_it_on() {
    let u = TestUpstream::start().await;
    let gw = start(Gateway::builder().ui(up(&u, "ui"))).await;
    let mut a = KeepAlive::open(gw.addr).await;
    let mut b = KeepAlive::open(gw.addr).await;
    for i in 0..5 {
        let (s, _) = a
            .send(get(&format!("/echo/a{i}")).body(empty()).unwrap())
            .await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = b
            .send(get(&format!("/echo/b{i}")).body(empty()).unwrap())
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    assert_eq!(
        u.connections(),
        2,
        "two client connections, ten requests: one upstream connection each"
    );
    // A POST with a body and a streamed response on the same connections.
    let (s, body) = a
        .send(
            Request::post("/echo/post")
                .header("host", "h")
                .body(Full::new(Bytes::from(vec![7u8; 100_000])).boxed())
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["body_len"],
        100_000
    );
    let (s, body) = b
        .send(get("/big?bytes=300000").body(empty()).unwrap())
        .await;
    assert_eq!((s, body.len()), (StatusCode::OK, 300_000));
    assert_eq!(u.connections(), 2);
    // When a client connection ends, its idle upstream connection is parked and adopted by a
    // later client connection instead of opening a new one.
    drop(a);
    drop(b);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let before = u.connections();
        let mut c = KeepAlive::open(gw.addr).await;
        let (s, _) = c.send(get("/echo/c").body(empty()).unwrap()).await;
        assert_eq!(s, StatusCode::OK);
        if u.connections() == before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no parked upstream connection was adopted within 5 s ({} upstream connections)",
            u.connections()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An upstream that answers keep-alive, then closes every connection 50 ms after its answer.
async fn idle_closing_upstream() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = closed.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(s);
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
    });
    (addr, closed)
}

#[tokio::test]
async fn an_upstream_connection_closed_while_idle_is_replaced_not_reported() {
    let (addr, closed) = idle_closing_upstream().await;
    let ui = up_at(addr, "ui");
    let gw = start(Gateway::builder().ui(ui)).await;
    let mut c = KeepAlive::open(gw.addr).await;
    for i in 1..=3 {
        let (s, b) = c
            .send(
                Request::post("/p")
                    .header("host", "h")
                    .body(Full::new(Bytes::from_static(b"body")).boxed())
                    .unwrap(),
            )
            .await;
        assert_eq!(
            (s, b.as_ref()),
            (StatusCode::OK, b"ok".as_ref()),
            "request {i}: a POST is not retried, so it must not be sent on the closed connection"
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while closed.load(std::sync::atomic::Ordering::SeqCst) < i {
            assert!(
                tokio::time::Instant::now() < deadline,
                "upstream never closed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A client (or a front proxy such as nginx) that writes its whole body before reading the
/// answer must get the 413, not a connection reset.
#[tokio::test]
async fn refused_bodies_are_drained_so_the_413_arrives() {
    let u = TestUpstream::start().await;
    let limits = Limits {
        max_ui_body: 64 * 1024,
        ..Limits::default()
    };
    let gw = start(Gateway::builder().ui(up(&u, "ui")).limits(limits)).await;
    for chunked in [false, true] {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        // More than the socket buffers hold, less than the drain bound.
        let body = vec![b'x'; 12 * 1024 * 1024];
        let head = if chunked {
            "POST /echo HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n".to_owned()
        } else {
            format!(
                "POST /echo HTTP/1.1\r\nhost: h\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
        };
        s.write_all(head.as_bytes()).await.unwrap();
        let write = async {
            if chunked {
                for c in body.chunks(64 * 1024) {
                    s.write_all(format!("{:x}\r\n", c.len()).as_bytes()).await?;
                    s.write_all(c).await?;
                    s.write_all(b"\r\n").await?;
                }
                s.write_all(b"0\r\n\r\n").await
            } else {
                s.write_all(&body).await
            }
        };
        tokio::time::timeout(Duration::from_secs(10), write)
            .await
            .unwrap()
            .expect("the whole body is accepted (drained), not reset");
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.starts_with("HTTP/1.1 413"),
            "chunked={chunked}: {text}"
        );
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{text}"
        );
    }
}
