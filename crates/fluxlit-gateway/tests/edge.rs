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
use fluxlit_testkit::raw::{RecordingUpstream, Reply};
use fluxlit_testkit::upstream::TestUpstream;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

mod support;

use support::{
    ENGINES, IdleClosingUpstream, KeepAlive, ReqBody, closing_upstream, empty, engine, full, send,
    send_from, start_on, up_at, within,
};

fn up(u: &TestUpstream, name: &str) -> Upstream {
    up_at(u.addr, name)
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

/// `/__fluxlit/client` answers what the gateway resolved for the request: the forwarded
/// scheme, host, port and prefix from a trusted peer only, the connection's otherwise; under
/// the root path; never forwarded; 405 for other methods; on both engines.
#[tokio::test]
async fn client_view_reports_the_resolved_request() {
    let u = TestUpstream::start().await;
    let allowed = fluxlit_config::parse_ip_net("127.0.0.2").unwrap();
    for fast in ENGINES {
        for (peer, root, want) in [
            (
                "127.0.0.2",
                "",
                serde_json::json!({"scheme": "https", "host": "public.example", "port": 443, "prefix": "/edge", "client_ip": "198.51.100.7", "forwarded_trusted": true}),
            ),
            (
                "127.0.0.3",
                "/myapp",
                serde_json::json!({"scheme": "http", "host": "app.example", "port": null, "prefix": "/myapp", "client_ip": "127.0.0.3", "forwarded_trusted": false}),
            ),
        ] {
            let gw = start_on(
                Gateway::builder()
                    .root_path(root)
                    .ui(up(&u, "ui"))
                    .trust(TrustPolicy::trusting(vec![allowed]).forwarded_prefix(true)),
                fast,
            )
            .await;
            let ctx = format!("{} peer {peer} root {root:?}", engine(fast));
            let path = format!("{root}/__fluxlit/client");
            let (status, headers, body) = send_from(Some(peer), gw.addr, spoofed(&path)).await;
            assert_eq!(status, StatusCode::OK, "{ctx}");
            assert_eq!(headers["cache-control"], "no-store", "{ctx}");
            let mut got: Value = serde_json::from_slice(&body).unwrap();
            if want["port"].is_null() {
                // The connection's own port: the gateway's.
                assert_eq!(got["port"], gw.addr.port(), "{ctx}");
                got["port"] = Value::Null;
            }
            assert_eq!(got, want, "{ctx}");
            let post = Request::post(path.as_str())
                .header("host", "app.example")
                .body(empty())
                .unwrap();
            let (status, _, _) = send_from(Some(peer), gw.addr, post).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{ctx}");
        }
    }
}

/// Trust off; trust on from an allowed peer (with and without `trust_forwarded_prefix`); trust
/// on from a disallowed peer — on the API and UI hops (the WebSocket hop is covered below), on
/// both engines (the UI and API hops are the fast path's when it is on).
#[tokio::test]
async fn spoofing_matrix_http_hops() {
    let u = TestUpstream::start().await;
    let allowed = fluxlit_config::parse_ip_net("127.0.0.2").unwrap();
    for fast in ENGINES {
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
            let gw = start_on(
                Gateway::builder()
                    .ui(up(&u, "ui"))
                    .api(ApiTarget::Upstream(up(&u, "api")))
                    .trust(trust),
                fast,
            )
            .await;
            for (path, api) in [("/echo", false), ("/api/echo", true)] {
                let (status, headers, body) = send_from(Some(peer), gw.addr, spoofed(path)).await;
                assert_eq!(status, StatusCode::OK);
                let ctx = format!("{} peer {peer} path {path}", engine(fast));
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
                    // The request id is not a forwarded field: by default (`request_id_trust
                    // = any`, as FluxLit for Python) a well-formed one is kept from any peer.
                    // `request_id_ids_from_clients_on_both_engines` covers the restriction.
                    assert_eq!(seen(&body, "x-request-id"), ["edge-id-1"], "{ctx}");
                    assert_eq!(
                        headers["x-request-id"], "edge-id-1",
                        "{ctx}: the same id goes back to the client"
                    );
                    if api {
                        assert_eq!(seen(&body, "x-forwarded-prefix"), ["/api"], "{ctx}");
                    }
                }
            }
            gw.assert_split(fast, 2, 0, &format!("peer {peer}: one UI, one API request"));
        }
    }
}

/// A new id minted by the gateway: a hyphenated UUIDv7.
fn is_minted(id: &str) -> bool {
    id.len() == 36 && id.as_bytes()[14] == b'7' && uuid_shape(id)
}

fn uuid_shape(id: &str) -> bool {
    id.bytes().enumerate().all(|(i, b)| {
        if matches!(i, 8 | 13 | 18 | 23) {
            b == b'-'
        } else {
            b.is_ascii_hexdigit() && !b.is_ascii_uppercase()
        }
    })
}

/// Issue 12 §2: a client's well-formed `X-Request-ID` (1–128 visible ASCII, the last of
/// several) reaches the UI hop (HTTP and upgrade) and the API hop and comes back, from any peer
/// by default; `request_id_trust = trusted_proxies` keeps it only from a trusted proxy;
/// malformed ids (spaces, tabs, non-ASCII, empty, too long) are replaced by a UUIDv7 in every
/// mode. Raw bytes on the wire, a recording upstream, both engines, and for each request the
/// engine that served it.
#[tokio::test]
async fn request_ids_from_clients_on_both_engines() {
    use fluxlit_gateway::RequestIdTrust;
    use fluxlit_testkit::raw::RawClient;

    let long_ok = "r".repeat(128);
    let too_long = "r".repeat(129);
    /// What a case is, the request's X-Request-ID fields as written, the id kept when ids are kept.
    type Case<'a> = (&'a str, Vec<&'a [u8]>, Option<&'a str>);
    let cases: Vec<Case> = vec![
        ("plain", vec![b"client-id-1"], Some("client-id-1")),
        (
            "visible punctuation",
            vec![b"a.b_c~d:e/f+g=h;i\"j'k"],
            Some("a.b_c~d:e/f+g=h;i\"j'k"),
        ),
        ("128 characters", vec![long_ok.as_bytes()], Some(&long_ok)),
        ("129 characters", vec![too_long.as_bytes()], None),
        ("a space", vec![b"has space"], None),
        ("a tab", vec![b"has\ttab"], None),
        ("non-ASCII", vec!["caf\u{e9}".as_bytes()], None),
        ("empty", vec![b""], None),
        (
            "two fields",
            vec![b"far-hop", b"near-hop"],
            Some("near-hop"),
        ),
        ("a bad last field", vec![b"good", b"bad id"], None),
    ];
    let loopback = fluxlit_config::parse_ip_net("127.0.0.1").unwrap();
    let elsewhere = fluxlit_config::parse_ip_net("127.0.0.2").unwrap();
    // (mode, trust, request_id_trust, whether the client's ids are kept); the client is 127.0.0.1.
    let modes = [
        ("default, no proxy trust", TrustPolicy::none(), None, true),
        (
            "trusted_proxies, client not a trusted proxy",
            TrustPolicy::trusting(vec![elsewhere]),
            Some(RequestIdTrust::TrustedProxies),
            false,
        ),
        (
            "trusted_proxies, client is a trusted proxy",
            TrustPolicy::trusting(vec![loopback]),
            Some(RequestIdTrust::TrustedProxies),
            true,
        ),
        (
            "any, client not a trusted proxy",
            TrustPolicy::trusting(vec![elsewhere]),
            Some(RequestIdTrust::Any),
            true,
        ),
    ];
    for fast in ENGINES {
        for (mode, trust, rid_trust, kept) in &modes {
            let rec = RecordingUpstream::start().await;
            let mut builder = Gateway::builder()
                .ui(up_at(rec.addr, "ui"))
                .api(ApiTarget::Upstream(up_at(rec.addr, "api")))
                .trust(trust.clone());
            if let Some(t) = rid_trust {
                builder = builder.request_id_trust(*t);
            }
            let gw = start_on(builder, fast).await;
            let mut n = 0;
            for (what, fields, id) in &cases {
                for (path, extra) in [
                    ("/page", ""),
                    (
                        "/_stcore/stream",
                        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
                    ),
                    ("/api/items", ""),
                ] {
                    let ctx = format!("{} / {mode} / {what} / {path}", engine(fast));
                    let mut req =
                        format!("GET {path} HTTP/1.1\r\nHost: app.example\r\n{extra}").into_bytes();
                    for f in fields {
                        req.extend_from_slice(b"X-Request-ID: ");
                        req.extend_from_slice(f);
                        req.extend_from_slice(b"\r\n");
                    }
                    req.extend_from_slice(b"Connection: close\r\n\r\n");
                    if !extra.is_empty() {
                        // An upgrade names `Upgrade` in its own Connection field.
                        req = String::from_utf8_lossy(&req)
                            .replace("Connection: close\r\n", "")
                            .into_bytes();
                    }
                    let before = gw.served();
                    let mut c = RawClient::connect(gw.addr).await;
                    c.send(&req).await;
                    let resp = within(&ctx, c.response(false))
                        .await
                        .unwrap_or_else(|| panic!("{ctx}: no response"));
                    assert_eq!(resp.status, 200, "{ctx}: {}", resp.text());
                    n += 1;
                    let seen = rec.wait_for(n).await.pop().unwrap();
                    let forwarded = seen.all("x-request-id");
                    assert_eq!(
                        forwarded.len(),
                        1,
                        "{ctx}: one X-Request-ID upstream: {forwarded:?}"
                    );
                    match id.filter(|_| *kept) {
                        Some(id) => assert_eq!(forwarded[0], id, "{ctx}: the client's id is kept"),
                        None => assert!(
                            is_minted(&forwarded[0]),
                            "{ctx}: a new UUIDv7, not {:?}",
                            forwarded[0]
                        ),
                    }
                    assert_eq!(
                        resp.all("x-request-id"),
                        [forwarded[0].as_str()],
                        "{ctx}: the same id comes back"
                    );
                    // Which engine served it: the fast path forwards plain UI and API requests
                    // and UI upgrades (`decide::fast_forward`).
                    let after = gw.served();
                    let by_fast_path = after.h1 - before.h1;
                    let by_hyper = after.hyper - before.hyper;
                    if fast {
                        assert_eq!(
                            (by_fast_path, by_hyper),
                            (1, 0),
                            "{ctx}: the fast path served it"
                        );
                    } else {
                        assert_eq!((by_fast_path, by_hyper), (0, 1), "{ctx}: hyper served it");
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn websocket_hop_gets_the_same_treatment() {
    let u = TestUpstream::start().await;
    for fast in ENGINES {
        // The test upstream's /ws echoes; to see the upgrade's headers, send the upgrade to
        // /echo: the upstream answers 200 with what it saw, which the gateway returns as a
        // normal response.
        let gw = start_on(Gateway::builder().ui(up(&u, "ui")), fast).await;
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
        let what = engine(fast);
        assert_eq!(
            status,
            StatusCode::OK,
            "{what}: a refused upgrade is a normal response"
        );
        assert_eq!(seen(&body, "x-forwarded-for"), ["127.0.0.1"], "{what}");
        assert!(seen(&body, "x-forwarded-user").is_empty(), "{what}");
        assert!(seen(&body, "authorization").is_empty(), "{what}");
        assert_eq!(seen(&body, "upgrade"), ["websocket"], "{what}");
        assert_eq!(seen(&body, "connection"), ["upgrade"], "{what}");
        assert_eq!(
            seen(&body, "sec-websocket-protocol"),
            ["streamlit"],
            "{what}"
        );
        assert_eq!(seen(&body, "x-request-id").len(), 1, "{what}");
        gw.assert_split(fast, 1, 0, "one upgrade request");
    }
}

#[tokio::test]
async fn body_caps_refuse_before_and_while_streaming() {
    let u = TestUpstream::start().await;
    let limits = Limits {
        max_ui_body: 1000,
        max_api_body: 10,
        ..Limits::default()
    };
    for fast in ENGINES {
        let what = engine(fast);
        let gw = start_on(
            Gateway::builder()
                .ui(up(&u, "ui"))
                .api(ApiTarget::Upstream(up(&u, "api")))
                .limits(limits.clone()),
            fast,
        )
        .await;
        // Content-Length over the cap: 413 without asking the upstream (hyper's on either
        // engine: the fast path hands such a request over).
        let (s, _, b) = send(
            gw.addr,
            Request::post("/echo")
                .header("host", "h")
                .body(full(vec![1u8; 1001]))
                .unwrap(),
        )
        .await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{what}");
        assert!(String::from_utf8_lossy(&b).contains("gateway_max_proxy_request_body_bytes"));
        let (s, _, b) = send(
            gw.addr,
            Request::post("/api/echo")
                .header("host", "h")
                .body(full(vec![1u8; 11]))
                .unwrap(),
        )
        .await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{what}");
        assert!(
            String::from_utf8_lossy(&b).contains("gateway_max_api_request_body_bytes"),
            "{what}: distinct body per route"
        );
        // At the cap: fine (the fast path's when it is on).
        let (s, _, _) = send(
            gw.addr,
            Request::post("/echo")
                .header("host", "h")
                .body(full(vec![1u8; 1000]))
                .unwrap(),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{what}");
        // Chunked (no Content-Length): cut mid-stream (hyper's: the fast path hands requests
        // with Transfer-Encoding over).
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
            "{what}: {}",
            String::from_utf8_lossy(&b)
        );
        // GET without a body is never refused.
        let (s, _, _) = send(gw.addr, get("/api/echo").body(empty()).unwrap()).await;
        assert_eq!(s, StatusCode::OK, "{what}");
        gw.assert_split(
            fast,
            2,
            3,
            "one UI and one API request within the cap, three others",
        );
    }
}

/// The upstream concurrency cap holds on both engines, with the same 503: the fast path
/// holds a slot for each exchange itself.
#[tokio::test]
async fn upstream_concurrency_cap_sheds_fast() {
    let u = TestUpstream::start().await;
    let limits = Limits {
        max_upstream_concurrency: 1,
        ..Limits::default()
    };
    for fast in ENGINES {
        let gw = start_on(
            Gateway::builder()
                .ui(up(&u, "ui"))
                .limits(limits.clone())
                .read_timeout(Duration::from_secs(5)),
            fast,
        )
        .await;
        let addr = gw.addr;
        // Occupy the only slot with a request the upstream never answers; if a probe raced it
        // for the slot (and so it was shed itself), send it again.
        let hang = std::sync::Mutex::new(tokio::spawn(async move {
            send(addr, get("/hang").body(empty()).unwrap()).await
        }));
        let shed =
            fluxlit_testkit::eventually(Duration::from_secs(10), "a request to be shed", || {
                let hang = &hang;
                async move {
                    if let Ok(mut h) = hang.lock()
                        && h.is_finished()
                    {
                        *h = tokio::spawn(async move {
                            send(addr, get("/hang").body(empty()).unwrap()).await
                        });
                        return None; // give it the slot before probing again
                    }
                    let (s, h, _) = send(addr, get("/echo").body(empty()).unwrap()).await;
                    (s == StatusCode::SERVICE_UNAVAILABLE).then_some(h)
                }
            })
            .await;
        assert_eq!(shed["retry-after"], "1", "{}", engine(fast));
        hang.lock().unwrap().abort();
        let s = gw.served();
        let (this, other) = if fast {
            (s.h1, s.hyper)
        } else {
            (s.hyper, s.h1)
        };
        assert!(
            this >= 2 && other == 0,
            "{}: it served the hanging and the shed request ({s:?})",
            engine(fast)
        );
    }
}

/// Refused at accept, before either engine: no request is served.
#[tokio::test]
async fn connection_limits_answer_503_and_close() {
    let u = TestUpstream::start().await;
    let limits = Limits {
        max_connections_per_ip: 1,
        ..Limits::default()
    };
    for fast in ENGINES {
        let gw = start_on(
            Gateway::builder().ui(up(&u, "ui")).limits(limits.clone()),
            fast,
        )
        .await;
        let _held = within("a held connection", tokio::net::TcpStream::connect(gw.addr))
            .await
            .unwrap();
        let addr = gw.addr;
        let text = fluxlit_testkit::eventually(
            Duration::from_secs(5),
            "a refused second connection",
            || async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
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
        assert!(
            text.contains("gateway_max_connections_per_ip"),
            "{}: {text}",
            engine(fast)
        );
        gw.assert_served(0, 0, &format!("{}: refused at accept", engine(fast)));
    }
}

/// A head over the limit: the fast path hands it over and hyper's server answers 431 itself.
#[tokio::test]
async fn oversized_headers_get_431() {
    let u = TestUpstream::start().await;
    for fast in ENGINES {
        let gw = start_on(
            Gateway::builder().ui(up(&u, "ui")).limits(Limits {
                max_header_bytes: 8192,
                ..Limits::default()
            }),
            fast,
        )
        .await;
        let mut s = within("connect", tokio::net::TcpStream::connect(gw.addr))
            .await
            .unwrap();
        let big = "x".repeat(20_000);
        s.write_all(format!("GET /echo HTTP/1.1\r\nhost: h\r\nx-big: {big}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 64];
        let n = within("the 431", s.read(&mut buf)).await.unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 431"),
            "{}: {}",
            engine(fast),
            String::from_utf8_lossy(&buf[..n])
        );
        gw.assert_served(
            0,
            0,
            &format!("{}: answered by hyper's parser", engine(fast)),
        );
    }
}

/// The API's rate limit is not a UI duty: the UI request is the fast path's when it is on.
#[tokio::test]
async fn rate_limits_give_429_with_retry_after_and_spare_health_probes() {
    let u = TestUpstream::start().await;
    let limits = Limits {
        rate_api: Some((1, 2)),
        ..Limits::default()
    };
    for fast in ENGINES {
        let what = engine(fast);
        let gw = start_on(
            Gateway::builder()
                .ui(up(&u, "ui"))
                .api(ApiTarget::Upstream(up(&u, "api")))
                .limits(limits.clone()),
            fast,
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
        assert_eq!(&statuses[..2], &[200, 200], "{what}");
        assert!(statuses[2..].contains(&429), "{what}: {statuses:?}");
        for _ in 0..5 {
            let (s, _, _) = send(gw.addr, get("/api/healthz").body(empty()).unwrap()).await;
            assert_eq!(s, StatusCode::OK, "{what}: health probes are exempt");
        }
        let (s, _, _) = send(gw.addr, get("/echo").body(empty()).unwrap()).await;
        assert_eq!(s, StatusCode::OK, "{what}: the UI has its own budget");
        gw.assert_split(
            fast,
            5,
            5,
            "one UI request, four API requests, five health probes",
        );
    }
}

/// A UI rate limit holds on both engines, with the same 429: the fast path applies it
/// itself (UI requests are its own, refused ones included).
#[tokio::test]
async fn a_ui_rate_limit_is_applied_on_both_engines() {
    let u = TestUpstream::start().await;
    for fast in ENGINES {
        let what = engine(fast);
        let gw = start_on(
            Gateway::builder().ui(up(&u, "ui")).limits(Limits {
                rate_ui: Some((1, 2)),
                ..Limits::default()
            }),
            fast,
        )
        .await;
        let mut statuses = Vec::new();
        for i in 0..4 {
            let (s, h, b) = send(gw.addr, get(&format!("/echo/{i}")).body(empty()).unwrap()).await;
            if s == StatusCode::TOO_MANY_REQUESTS {
                assert!(
                    h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1,
                    "{what}"
                );
                let text = String::from_utf8_lossy(&b);
                assert!(
                    text.starts_with("FluxLit: too many requests from 127.0.0.1; retry in "),
                    "{what}: {text}"
                );
                assert!(h.contains_key("x-request-id"), "{what}");
            }
            statuses.push(s.as_u16());
        }
        assert_eq!(&statuses[..2], &[200, 200], "{what}");
        assert!(statuses[2..].contains(&429), "{what}: {statuses:?}");
        gw.assert_split(fast, 4, 0, "UI requests under a UI rate limit");
    }
}

/// An Origin allow-list makes upgrades hyper's on both engines.
#[tokio::test]
async fn websocket_origin_allow_list_and_idle_timeout() {
    let u = TestUpstream::start().await;
    let limits = Limits {
        ws_allowed_origins: vec!["https://app.example".into()],
        ws_idle_timeout: Some(Duration::from_millis(300)),
        ..Limits::default()
    };
    for fast in ENGINES {
        let what = engine(fast);
        let gw = start_on(
            Gateway::builder().ui(up(&u, "ui")).limits(limits.clone()),
            fast,
        )
        .await;
        let mut bad = format!("ws://{}/ws", gw.addr)
            .into_client_request()
            .unwrap();
        bad.headers_mut()
            .insert("origin", "https://evil.example".parse().unwrap());
        match within(
            "the refused handshake",
            tokio_tungstenite::connect_async(bad),
        )
        .await
        {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), StatusCode::FORBIDDEN, "{what}")
            }
            other => panic!("{what}: expected 403, got {other:?}"),
        }
        let mut good = format!("ws://{}/ws", gw.addr)
            .into_client_request()
            .unwrap();
        good.headers_mut()
            .insert("origin", "https://app.example".parse().unwrap());
        let (mut ws, _) = within("the handshake", tokio_tungstenite::connect_async(good))
            .await
            .unwrap();
        ws.send(Message::Text("hi".into())).await.unwrap();
        let echo = within("the echo", ws.next()).await;
        assert!(
            matches!(echo, Some(Ok(Message::Text(_)))),
            "{what}: {echo:?}"
        );
        // Idle past the timeout: the tunnel is closed by the gateway, after the timeout.
        let idle_from = std::time::Instant::now();
        let end = within("the idle tunnel to be closed", ws.next()).await;
        assert!(
            matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
            "{what}: {end:?}"
        );
        let idle = idle_from.elapsed();
        assert!(
            idle >= Duration::from_millis(250),
            "{what}: closed after {idle:?} idle, before the 300 ms idle timeout"
        );
        gw.assert_served(0, 2, &format!("{what}: upgrades under an allow-list"));
    }
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
    // An upstream API answering with a uvicorn-style redirect to its own absolute URL.
    let own = Arc::new(std::sync::OnceLock::<SocketAddr>::new());
    let api = {
        let own = own.clone();
        RecordingUpstream::with(move |_| {
            Reply::raw(format!(
                "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://{}/items/\r\nset-cookie: sid=1; Path=/; HttpOnly\r\ncontent-length: 0\r\n\r\n",
                own.get().expect("address set")
            ))
        })
        .await
    };
    own.set(api.addr).unwrap();
    for fast in ENGINES {
        let what = engine(fast);
        // An in-process API sees the mount-stripped path too, and gets the same rewriting.
        let gw = start_on(
            Gateway::builder()
                .root_path("/myapp")
                .ui(up(&u, "ui"))
                .api_service(ApiService::new(svc)),
            fast,
        )
        .await;
        let (s, h, _) = send(gw.addr, get("/myapp/api/items").body(empty()).unwrap()).await;
        assert_eq!(s.as_u16(), 307, "{what}");
        assert_eq!(h["location"], "/myapp/api/items/", "{what}");
        assert_eq!(
            h["set-cookie"], "sid=1; Path=/myapp/api/; HttpOnly",
            "{what}"
        );
        gw.assert_served(0, 1, &format!("{what}: the in-process API"));
        drop(gw);

        let gw = start_on(
            Gateway::builder()
                .root_path("/myapp")
                .ui(up(&u, "ui"))
                .api(ApiTarget::Upstream(up_at(api.addr, "api"))),
            fast,
        )
        .await;
        for path in ["/myapp/api/items", "/api/items"] {
            let (s, h, _) = send(gw.addr, get(path).body(empty()).unwrap()).await;
            assert_eq!(s.as_u16(), 307, "{what}");
            assert_eq!(
                h["location"], "http://app.example/myapp/api/items/",
                "{what} {path}"
            );
            assert_eq!(
                h["set-cookie"], "sid=1; Path=/myapp/api/; HttpOnly",
                "{what}"
            );
        }
        gw.assert_split(fast, 2, 0, &format!("{what}: the upstream API"));
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
    for fast in ENGINES {
        let what = engine(fast);
        let gw = start_on(
            Gateway::builder()
                .ui(up(&u, "ui"))
                .api(ApiTarget::Upstream(up(&u, "api")))
                .api_headers(ApiHeaders::from_settings(&settings)),
            fast,
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
        assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
        assert_eq!(h["x-frame-options"], "SAMEORIGIN", "{what}");
        assert!(
            h.get("strict-transport-security").is_none(),
            "{what}: no HSTS over plain http"
        );
        assert_eq!(h["access-control-allow-origin"], "https://a.example");
        let pre = Request::options("/api/echo")
            .header("host", "h")
            .header("origin", "https://a.example")
            .header("access-control-request-method", "PUT")
            .body(empty())
            .unwrap();
        let (s, h, _) = send(gw.addr, pre).await;
        assert!(s.is_success(), "{what}: {s}");
        assert_eq!(h["access-control-max-age"], "600", "{what}");
        let (_, h, _) = send(
            gw.addr,
            get("/api/echo")
                .header("origin", "https://evil.example")
                .body(empty())
                .unwrap(),
        )
        .await;
        assert!(h.get("access-control-allow-origin").is_none(), "{what}");
        let (_, h, _) = send(gw.addr, get("/echo").body(empty()).unwrap()).await;
        assert!(
            h.get("x-frame-options").is_none(),
            "{what}: Streamlit's responses are left alone"
        );
        gw.assert_split(fast, 1, 3, "three API requests, one UI request");
    }
}

/// The metrics and debug endpoints are hyper's on both engines; the UI request they record is
/// the fast path's when it is on.
#[tokio::test]
async fn metrics_and_debug_endpoints() {
    let u = TestUpstream::start().await;
    let render: fluxlit_gateway::MetricsRender = Arc::new(|| "fluxlit_test_metric 1\n".to_owned());
    for fast in ENGINES {
        let what = engine(fast);
        let gw = start_on(
            Gateway::builder()
                .root_path("/myapp")
                .ui(up(&u, "ui"))
                .metrics_endpoint("/__fluxlit/metrics", render.clone())
                .debug(Arc::new(|| serde_json::json!({"settings": {"x": 1}}))),
            fast,
        )
        .await;
        for path in ["/__fluxlit/metrics", "/myapp/__fluxlit/metrics"] {
            let (s, h, b) = send(gw.addr, get(path).body(empty()).unwrap()).await;
            assert_eq!(s, StatusCode::OK, "{what}");
            assert!(
                h["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("text/plain")
            );
            assert_eq!(b, Bytes::from_static(b"fluxlit_test_metric 1\n"), "{what}");
        }
        // Forwarded under the root path (the upstream answers 404 for /myapp/echo): recorded.
        let _ = send(gw.addr, get("/echo?token=secret").body(empty()).unwrap()).await;
        let (s, _, b) = send(gw.addr, get("/__fluxlit/debug").body(empty()).unwrap()).await;
        assert_eq!(s, StatusCode::OK, "{what}");
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["fluxlit_debug"], true);
        assert_eq!(v["settings"]["x"], 1);
        assert!(
            v["recent_dispatches"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["path"] == "/echo" && d["dispatch"] == "streamlit"),
            "{what}: {v}"
        );
        gw.assert_split(fast, 1, 3, "metrics and debug on");
        drop(gw);
        // Debug off: 404, not proxied.
        let gw = start_on(Gateway::builder().ui(up(&u, "ui")), fast).await;
        let (s, _, _) = send(gw.addr, get("/__fluxlit/debug").body(empty()).unwrap()).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{what}");
        gw.assert_served(0, 1, &format!("{what}: the gateway's reserved path"));
    }
}

/// A request head that arrives a byte at a time (each in its own segment) is still answered,
/// on the fast path and on the general one.
#[tokio::test]
async fn a_head_trickling_in_byte_by_byte_is_answered() {
    let u = TestUpstream::start().await;
    for fast in ENGINES {
        let gw = start_on(Gateway::builder().ui(up(&u, "ui")), fast).await;
        let mut s = within("connect", tokio::net::TcpStream::connect(gw.addr))
            .await
            .unwrap();
        s.set_nodelay(true).unwrap();
        for b in b"GET /echo/trickle HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n" {
            s.write_all(&[*b]).await.unwrap();
            s.flush().await.unwrap();
        }
        let mut buf = Vec::new();
        within("the answer", s.read_to_end(&mut buf)).await.unwrap();
        let text = String::from_utf8_lossy(&buf);
        let what = engine(fast);
        assert!(text.starts_with("HTTP/1.1 200"), "{what}: {text}");
        assert!(text.contains("/echo/trickle"), "{what}: {text}");
        gw.assert_split(fast, 1, 0, "one trickled request");
    }
}

#[tokio::test]
async fn slow_clients_are_cut_by_the_header_read_timeout() {
    let u = TestUpstream::start().await;
    for fast in ENGINES {
        let gw = start_on(
            Gateway::builder().ui(up(&u, "ui")).limits(Limits {
                header_read_timeout: Duration::from_millis(300),
                ..Limits::default()
            }),
            fast,
        )
        .await;
        let mut s = within("connect", tokio::net::TcpStream::connect(gw.addr))
            .await
            .unwrap();
        let sent = std::time::Instant::now();
        s.write_all(b"GET /echo HTTP/1.1\r\nhost: h\r\nx-slow: ")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(
            r.is_ok(),
            "{}: the gateway closes a connection whose headers never finish",
            engine(fast)
        );
        // Cut by the timeout, not at once (the connection was opened just before `sent`).
        let after = sent.elapsed();
        assert!(
            after >= Duration::from_millis(250),
            "{}: cut after {after:?}, before the 300 ms header timeout",
            engine(fast)
        );
        gw.assert_served(0, 0, &format!("{}: no complete request", engine(fast)));
    }
}

#[tokio::test]
async fn websocket_max_lifetime_closes_busy_tunnels_too() {
    let u = TestUpstream::start().await;
    for fast in ENGINES {
        let gw = start_on(
            Gateway::builder().ui(up(&u, "ui")).limits(Limits {
                ws_max_lifetime: Some(Duration::from_millis(400)),
                ..Limits::default()
            }),
            fast,
        )
        .await;
        let (mut ws, _) = within(
            "the handshake",
            tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr)),
        )
        .await
        .unwrap();
        let opened = std::time::Instant::now();
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
            "{}: a tunnel past its maximum lifetime is closed even while busy",
            engine(fast)
        );
        let lived = opened.elapsed();
        assert!(
            lived >= Duration::from_millis(350),
            "{}: closed after {lived:?}, before its 400 ms lifetime",
            engine(fast)
        );
        gw.assert_split(fast, 1, 0, "one upgrade");
    }
}

/// Which upstream the reuse cases forward to: the UI or the API upstream (both the fast path's
/// when it is on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Ui,
    Api,
}

impl Route {
    /// A gateway with `addr` as this route's upstream (and the UI, for the API route).
    fn gateway(self, addr: SocketAddr) -> fluxlit_gateway::GatewayBuilder {
        let b = Gateway::builder().ui(up_at(addr, "ui"));
        match self {
            Route::Ui => b,
            Route::Api => b.api(ApiTarget::Upstream(up_at(addr, "api"))),
        }
    }

    /// The public path for the upstream path `p`.
    fn path(self, p: &str) -> String {
        match self {
            Route::Ui => p.to_owned(),
            Route::Api => format!("/api{p}"),
        }
    }

    /// Asserts that `n` requests of this route were served by the expected engine.
    fn assert_served(self, gw: &support::Running, fast: bool, n: u64, what: &str) {
        gw.assert_split(fast, n, 0, &format!("{what}, {self:?} route"));
    }
}

async fn retried_once_on_a_dead_kept_alive_connection(fast: bool, route: Route) {
    let what = format!("{}, {route:?} route", engine(fast));
    let up = closing_upstream().await;
    let gw = start_on(route.gateway(up.addr), fast).await;
    // One client connection: its requests share one upstream connection, which the upstream
    // closes under the second request without answering.
    let mut c = KeepAlive::open(gw.addr).await;
    let (s, b) = c.send(get(&route.path("/a")).body(empty()).unwrap()).await;
    assert_eq!((s, b.as_ref()), (StatusCode::OK, b"ok".as_ref()), "{what}");
    let (s, b) = c.send(get(&route.path("/b")).body(empty()).unwrap()).await;
    assert_eq!(
        s,
        StatusCode::OK,
        "{what}: GET retried on a new connection: {}",
        String::from_utf8_lossy(&b)
    );
    // The GET reached the upstream twice: on the dead connection and on a new one.
    let targets: Vec<(usize, String)> = up
        .requests()
        .iter()
        .map(|r| (r.conn, r.target.clone()))
        .collect();
    assert_eq!(
        targets,
        [
            (0, "/a".to_owned()),
            (0, "/b".to_owned()),
            (1, "/b".to_owned())
        ],
        "{what}"
    );
    // Now the kept connection is the retried one (answered once); a POST with a body on it
    // dies and is not retried.
    let (s, _) = c
        .send(
            Request::post(route.path("/c"))
                .header("host", "h")
                .body(full(Bytes::from_static(b"x")))
                .unwrap(),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_GATEWAY,
        "{what}: non-idempotent requests are never retried"
    );
    assert_eq!(
        up.wait_for(4).await.len(),
        4,
        "{what}: the POST was sent once"
    );
    assert_eq!(up.connections(), 2, "{what}");
    route.assert_served(&gw, fast, 3, "three requests on one connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_are_retried_once_on_a_dead_kept_alive_connection() {
    retried_once_on_a_dead_kept_alive_connection(true, Route::Ui).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_are_retried_once_on_a_dead_kept_alive_connection_hyper_ui() {
    retried_once_on_a_dead_kept_alive_connection(false, Route::Ui).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_are_retried_once_on_a_dead_kept_alive_connection_fast_api() {
    retried_once_on_a_dead_kept_alive_connection(true, Route::Api).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_are_retried_once_on_a_dead_kept_alive_connection_hyper_api() {
    retried_once_on_a_dead_kept_alive_connection(false, Route::Api).await;
}

async fn keeps_its_own_upstream_connection_and_hands_it_on(fast: bool, route: Route) {
    let what = format!("{}, {route:?} route", engine(fast));
    let u = TestUpstream::start().await;
    let gw = start_on(route.gateway(u.addr), fast).await;
    let mut a = KeepAlive::open(gw.addr).await;
    let mut b = KeepAlive::open(gw.addr).await;
    for i in 0..5 {
        let (s, _) = a
            .send(
                get(&route.path(&format!("/echo/a{i}")))
                    .body(empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{what}");
        let (s, _) = b
            .send(
                get(&route.path(&format!("/echo/b{i}")))
                    .body(empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{what}");
    }
    assert_eq!(
        u.connections(),
        2,
        "{what}: two client connections, ten requests: one upstream connection each"
    );
    // A POST with a body and a streamed response on the same connections.
    let (s, body) = a
        .send(
            Request::post(route.path("/echo/post"))
                .header("host", "h")
                .body(full(vec![7u8; 100_000]))
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{what}");
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["body_len"],
        100_000,
        "{what}"
    );
    let (s, body) = b
        .send(get(&route.path("/big?bytes=300000")).body(empty()).unwrap())
        .await;
    assert_eq!((s, body.len()), (StatusCode::OK, 300_000), "{what}");
    assert_eq!(u.connections(), 2, "{what}");
    route.assert_served(&gw, fast, 12, "twelve requests on two connections");
    // When a client connection ends, its idle upstream connection is parked and adopted by a
    // later client connection instead of opening a new one (bounded: 5 s of attempts).
    drop(a);
    drop(b);
    let mut sent = 12;
    let upstream = &u;
    fluxlit_testkit::eventually(
        Duration::from_secs(5),
        "a parked upstream connection adopted by a new client connection",
        || {
            let before = upstream.connections();
            sent += 1;
            let path = route.path("/echo/c");
            let addr = gw.addr;
            async move {
                let mut c = KeepAlive::open(addr).await;
                let (s, _) = c.send(get(&path).body(empty()).unwrap()).await;
                assert_eq!(s, StatusCode::OK);
                (upstream.connections() == before).then_some(())
            }
        },
    )
    .await;
    route.assert_served(&gw, fast, sent, "and one per new client connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connection_keeps_its_own_upstream_connection_and_hands_it_on() {
    keeps_its_own_upstream_connection_and_hands_it_on(true, Route::Ui).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connection_keeps_its_own_upstream_connection_and_hands_it_on_hyper_ui() {
    keeps_its_own_upstream_connection_and_hands_it_on(false, Route::Ui).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connection_keeps_its_own_upstream_connection_and_hands_it_on_fast_api() {
    keeps_its_own_upstream_connection_and_hands_it_on(true, Route::Api).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connection_keeps_its_own_upstream_connection_and_hands_it_on_hyper_api() {
    keeps_its_own_upstream_connection_and_hands_it_on(false, Route::Api).await;
}

async fn closed_while_idle_is_replaced_not_reported(fast: bool, route: Route) {
    let what = format!("{}, {route:?} route", engine(fast));
    let up = IdleClosingUpstream::start().await;
    let gw = start_on(route.gateway(up.addr), fast).await;
    let mut c = KeepAlive::open(gw.addr).await;
    for i in 1..=3 {
        let (s, b) = c
            .send(
                Request::post(route.path("/p"))
                    .header("host", "h")
                    .body(full(Bytes::from_static(b"body")))
                    .unwrap(),
            )
            .await;
        assert_eq!(
            (s, b.as_ref()),
            (StatusCode::OK, b"ok".as_ref()),
            "{what}: request {i}: a POST is not retried, so it must not be sent on the closed \
             connection"
        );
        // The upstream closes the connection while the gateway holds it idle.
        up.close_idle(i).await;
    }
    assert_eq!(up.connections(), 3, "{what}: one upstream connection each");
    route.assert_served(&gw, fast, 3, "three requests on one connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_connection_closed_while_idle_is_replaced_not_reported() {
    closed_while_idle_is_replaced_not_reported(true, Route::Ui).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_connection_closed_while_idle_is_replaced_not_reported_hyper_ui() {
    closed_while_idle_is_replaced_not_reported(false, Route::Ui).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_connection_closed_while_idle_is_replaced_not_reported_fast_api() {
    closed_while_idle_is_replaced_not_reported(true, Route::Api).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_connection_closed_while_idle_is_replaced_not_reported_hyper_api() {
    closed_while_idle_is_replaced_not_reported(false, Route::Api).await;
}

/// A client (or a front proxy such as nginx) that writes its whole body before reading the
/// answer must get the 413, not a connection reset (hyper's on both engines: the fast path
/// hands bodies over the cap and chunked requests over).
#[tokio::test]
async fn refused_bodies_are_drained_so_the_413_arrives() {
    let u = TestUpstream::start().await;
    let limits = Limits {
        max_ui_body: 64 * 1024,
        ..Limits::default()
    };
    for fast in ENGINES {
        let gw = start_on(
            Gateway::builder().ui(up(&u, "ui")).limits(limits.clone()),
            fast,
        )
        .await;
        for chunked in [false, true] {
            let what = format!("{} chunked={chunked}", engine(fast));
            let mut s = within("connect", tokio::net::TcpStream::connect(gw.addr))
                .await
                .unwrap();
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
            within("the whole body to be written", write)
                .await
                .unwrap_or_else(|e| {
                    panic!("{what}: the whole body is accepted (drained), not reset: {e}")
                });
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
            let text = String::from_utf8_lossy(&buf);
            assert!(text.starts_with("HTTP/1.1 413"), "{what}: {text}");
            assert!(
                text.to_ascii_lowercase().contains("connection: close"),
                "{what}: {text}"
            );
        }
        gw.assert_served(0, 2, &format!("{}: two refused bodies", engine(fast)));
    }
}

/// `gateway_fast_path` (env `FLUXLIT_GATEWAY_FAST_PATH`) picks the engine through
/// `GatewayBuilder::settings`: on by default (a plain HTTP/1.1 UI request is the fast path's),
/// `false` puts every request on the hyper engine, the access log on or not.
#[tokio::test]
async fn the_gateway_fast_path_setting_picks_the_engine() {
    let u = TestUpstream::start().await;
    for (value, access_log, want) in [
        (None, "false", (1, 0)),
        (None, "true", (1, 0)),
        (Some("false"), "false", (0, 1)),
        (Some("false"), "true", (0, 1)),
        (Some("true"), "true", (1, 0)),
    ] {
        let what = format!("FLUXLIT_GATEWAY_FAST_PATH={value:?}, access log {access_log}");
        let mut pairs = vec![("FLUXLIT_ENABLE_GATEWAY_ACCESS_LOG", access_log)];
        if let Some(v) = value {
            pairs.push(("FLUXLIT_GATEWAY_FAST_PATH", v));
        }
        let settings = fluxlit_config::load(&fluxlit_config::LoadOptions::new(
            &std::env::temp_dir(),
            fluxlit_config::Environment::from_pairs(pairs),
            Default::default(),
        ))
        .unwrap()
        .settings;
        let gw = support::start(Gateway::builder().settings(&settings).ui(up(&u, "ui"))).await;
        let (s, _, _) = send(gw.addr, get("/echo").body(empty()).unwrap()).await;
        assert_eq!(s, StatusCode::OK, "{what}");
        let served = gw.served();
        assert_eq!((served.h1, served.hyper), want, "{what}: {served:?}");
    }
}
