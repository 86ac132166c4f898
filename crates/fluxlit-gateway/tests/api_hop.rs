//! The API hop on both engines, against raw sockets and recording upstreams: what the API's HTTP
//! upstream receives (mount stripped, query byte for byte, `X-Forwarded-Prefix`, identity and
//! hop-by-hop fields dropped, `X-Request-ID`), the response's `Location` and `Set-Cookie` under
//! the public prefix, the API body cap, chunked requests, UI and API requests alternating or
//! pipelined on one client connection, and which engine serves them: the HTTP/1.1 fast path
//! with the defaults, hyper's path whenever a rule only it applies holds (CORS, security
//! headers, an in-process API, a WebSocket upgrade; `auth_mode = jwt` is in `jwt_auth.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use fluxlit_gateway::{
    ApiHeaders, ApiService, ApiTarget, Gateway, GatewayBuilder, Limits, TrustPolicy,
};
use fluxlit_testkit::raw::{RawClient, RawResponse, Recorded, RecordingUpstream, Reply, echo_line};

mod support;

use support::{ENGINES, engine, start_on, up_at, within};

/// A gateway with `ui` as the UI upstream and `api` as the API's HTTP upstream.
fn ui_and_api(ui: SocketAddr, api: SocketAddr) -> GatewayBuilder {
    Gateway::builder()
        .ui(up_at(ui, "ui"))
        .api(ApiTarget::Upstream(up_at(api, "api")))
}

/// One request on a new connection; its response.
async fn one(addr: SocketAddr, request: &str) -> RawResponse {
    let mut c = RawClient::connect(addr).await;
    c.send(request.as_bytes()).await;
    within(request, c.response(request.starts_with("HEAD")))
        .await
        .unwrap_or_else(|| panic!("no response to {request:?}"))
}

/// The fields the upstream received, sorted (the engines write them in different orders),
/// with the gateway's port (which differs between the two gateways) masked.
fn fields(r: &Recorded, port: u16) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|(n, v)| {
            let n = n.to_ascii_lowercase();
            let v = String::from_utf8_lossy(v).replace(&port.to_string(), "PORT");
            (n, v)
        })
        .collect();
    v.sort();
    v
}

/// What the API upstream receives: the mount stripped, the query byte for byte, the public
/// API prefix as `X-Forwarded-Prefix` (with and without a root path, and from a trusted proxy's
/// `X-Forwarded-Prefix`), identity, hop-by-hop and spoofed forwarded fields dropped, the
/// client's `X-Request-ID`, and every other field as sent; the same fields on both engines,
/// and with the defaults the fast path forwards every request.
#[tokio::test]
async fn the_api_upstream_receives_the_same_request_from_both_engines() {
    let loopback = fluxlit_config::parse_ip_net("127.0.0.1").unwrap();
    // (what, root path, trust, public path, the upstream's target, X-Forwarded-Prefix)
    let cases: [(&str, &str, TrustPolicy, &str, &str, &str); 5] = [
        (
            "no root path",
            "",
            TrustPolicy::none(),
            "/api/items/1?b=%2F&a=1&&x=%20y",
            "/items/1?b=%2F&a=1&&x=%20y",
            "/api",
        ),
        (
            "root path",
            "/myapp",
            TrustPolicy::none(),
            "/myapp/api/items?q=1",
            "/items?q=1",
            "/myapp/api",
        ),
        (
            "root path, stripped by a proxy",
            "/myapp",
            TrustPolicy::none(),
            "/api/items",
            "/items",
            "/myapp/api",
        ),
        (
            "a trusted proxy's prefix",
            "",
            TrustPolicy::trusting(vec![loopback]).forwarded_prefix(true),
            "/api/x",
            "/x",
            "/edge/api",
        ),
        (
            "an untrusted proxy's prefix",
            "/r",
            TrustPolicy::trusting(vec![loopback]),
            "/r/api/x",
            "/x",
            "/r/api",
        ),
    ];
    for (what, root, trust, public, target, prefix) in cases {
        let mut seen = Vec::new();
        for fast in ENGINES {
            let ctx = format!("{} / {what}", engine(fast));
            let (ui, api) = (
                RecordingUpstream::start().await,
                RecordingUpstream::start().await,
            );
            let gw = start_on(
                ui_and_api(ui.addr, api.addr)
                    .root_path(root)
                    .trust(trust.clone()),
                fast,
            )
            .await;
            let r = one(
                gw.addr,
                &format!(
                    "GET {public} HTTP/1.1\r\nHost: app.example\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic eDp5\r\nUpgrade: h2c\r\nX-Remote-User: admin\r\nX-Forwarded-User: admin\r\nX-Forwarded-For: 203.0.113.9\r\nX_Forwarded_For: 6.6.6.6\r\nX-Forwarded-Prefix: /edge\r\nX-Request-ID: api-rid-1\r\nAuthorization: Bearer t\r\nX-Custom: kept\r\nCookie: a=b\r\n\r\n"
                ),
            )
            .await;
            assert_eq!(r.status, 200, "{ctx}: {}", r.text());
            assert_eq!(r.text(), format!("GET {target}"), "{ctx}");
            assert_eq!(r.all("x-request-id"), ["api-rid-1"], "{ctx}");
            let got = api.wait_for(1).await.remove(0);
            assert_eq!(
                got.target, target,
                "{ctx}: the mount stripped, the query as sent"
            );
            assert_eq!(got.all("x-forwarded-prefix"), [prefix], "{ctx}");
            assert_eq!(got.all("x-request-id"), ["api-rid-1"], "{ctx}");
            assert_eq!(got.all("host"), ["app.example"], "{ctx}");
            for kept in ["authorization", "x-custom", "cookie"] {
                assert_eq!(got.all(kept).len(), 1, "{ctx}: {kept} goes on the API hop");
            }
            for gone in [
                "connection",
                "x-hop",
                "keep-alive",
                "te",
                "proxy-authorization",
                "upgrade",
                "x-remote-user",
                "x-forwarded-user",
                "x_forwarded_for",
            ] {
                assert!(
                    !got.has(gone),
                    "{ctx}: {gone} must not reach the API: {got:?}"
                );
            }
            assert!(ui.requests().is_empty(), "{ctx}: nothing for the UI");
            gw.assert_split(fast, 1, 0, &format!("{what}: one API request"));
            seen.push(fields(&got, gw.addr.port()));
        }
        assert_eq!(seen[0], seen[1], "{what}: fast path vs hyper");
    }
}

/// The API's `Location` and `Set-Cookie` come back under the public prefix, as hyper's path
/// rewrites them (`rewrite.rs`): a path, a URL to the client's own host or to the upstream
/// itself, every `Set-Cookie` with a `Path` outside the prefix; a second `Location` goes with
/// the first when that one is rewritten. The same on both engines, the fast path's when on.
#[tokio::test]
async fn api_locations_and_cookies_come_back_under_the_public_prefix() {
    // (upstream target, its Location fields, the client's Location fields)
    let cases: [(&str, &[&str], &[&str]); 5] = [
        ("/path", &["/items/1"], &["/myapp/api/items/1"]),
        (
            "/own-host",
            &["http://app.example/x?y=1"],
            &["http://app.example/myapp/api/x?y=1"],
        ),
        (
            "/upstream",
            &["http://UPSTREAM/a/"],
            &["http://app.example/myapp/api/a/"],
        ),
        (
            "/elsewhere",
            &["https://other.example/a", "/b"],
            &["https://other.example/a", "/b"],
        ),
        ("/two", &["/first", "/second"], &["/myapp/api/first"]),
    ];
    for fast in ENGINES {
        let ui = RecordingUpstream::start().await;
        let api = RecordingUpstream::with(move |r: &Recorded| {
            let Some((_, locations, _)) = cases.iter().find(|c| c.0 == r.target) else {
                return echo_line(r);
            };
            let mut head = String::from("HTTP/1.1 302 Found\r\n");
            for l in *locations {
                head.push_str(&format!("Location: {}\r\n", l.replace("UPSTREAM", &r.get("x-upstream").unwrap_or_default())));
            }
            head.push_str("Set-Cookie: sid=1; Path=/; HttpOnly\r\nset-cookie: theme=dark\r\nSet-Cookie: deep=1; path=/myapp/api/x\r\nSet-Cookie: sub=1; Path=/sub\r\ncontent-length: 0\r\n\r\n");
            Reply::raw(head)
        })
        .await;
        let gw = start_on(ui_and_api(ui.addr, api.addr).root_path("/myapp"), fast).await;
        let mut c = RawClient::connect(gw.addr).await;
        for (target, _, want) in cases {
            let ctx = format!("{} {target}", engine(fast));
            // The upstream learns its own authority from the test (the gateway sends the
            // client's Host on).
            c.send(
                format!(
                    "GET /myapp/api{target} HTTP/1.1\r\nHost: app.example\r\nX-Upstream: {}\r\n\r\n",
                    api.addr
                )
                .as_bytes(),
            )
            .await;
            let r = within(&ctx, c.response(false)).await.expect("a response");
            assert_eq!(r.status, 302, "{ctx}");
            assert_eq!(r.all("location"), want, "{ctx}");
            assert_eq!(
                r.all("set-cookie"),
                [
                    "sid=1; Path=/myapp/api/; HttpOnly",
                    "theme=dark",
                    "deep=1; path=/myapp/api/x",
                    "sub=1; Path=/myapp/api/sub"
                ],
                "{ctx}"
            );
        }
        gw.assert_split(
            fast,
            cases.len() as u64,
            0,
            "API redirects on one connection",
        );
    }
}

/// The API's body cap (`gateway_max_api_request_body_bytes`), not the UI's: over it, 413 on
/// both engines (hyper's answer; the fast path hands such a request over); at it, forwarded by
/// the fast path when on. A chunked API request is hyper's on either engine and reaches the API
/// whole.
#[tokio::test]
async fn the_api_body_cap_and_chunked_requests() {
    for fast in ENGINES {
        let what = engine(fast);
        let (ui, api) = (
            RecordingUpstream::start().await,
            RecordingUpstream::start().await,
        );
        let gw = start_on(
            ui_and_api(ui.addr, api.addr).limits(Limits {
                max_api_body: 10,
                max_ui_body: 100,
                ..Limits::default()
            }),
            fast,
        )
        .await;
        let over = one(
            gw.addr,
            "POST /api/echo HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n0123456789A",
        )
        .await;
        assert_eq!(over.status, 413, "{what}");
        assert!(
            over.text().contains("gateway_max_api_request_body_bytes"),
            "{what}: {}",
            over.text()
        );
        let at = one(
            gw.addr,
            "POST /api/echo HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789",
        )
        .await;
        assert_eq!(
            (at.status, at.text().as_str()),
            (200, "POST /echo"),
            "{what}"
        );
        let ui_sized = one(
            gw.addr,
            "POST /page HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n0123456789A",
        )
        .await;
        assert_eq!(ui_sized.status, 200, "{what}: the UI's cap is its own");
        let chunked = one(
            gw.addr,
            "POST /api/chunked?z=1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(
            (chunked.status, chunked.text().as_str()),
            (200, "POST /chunked?z=1"),
            "{what}"
        );
        let got = api.wait_for(2).await;
        assert_eq!(
            got.len(),
            2,
            "{what}: the request over the cap never reached the API"
        );
        assert_eq!(got[0].body, b"0123456789", "{what}");
        assert_eq!(got[1].body, b"abcde", "{what}: the chunked body, whole");
        gw.assert_split(
            fast,
            2,
            2,
            "an API and a UI request within their caps; over the cap and chunked to hyper",
        );
    }
}

/// UI and API requests alternating on one kept-alive client connection, then pipelined in one
/// write, to two different upstreams: each answered in order by its own upstream, all by the
/// fast path when it is on, which parks the connection of the upstream not in use and takes it
/// back: each upstream sees one connection.
#[tokio::test]
async fn ui_and_api_requests_alternate_and_pipeline_on_one_connection() {
    let steps = ["/u1", "/api/a1", "/u2?x=1", "/api/a2?y=2", "/u3", "/api/a3"];
    for fast in ENGINES {
        let what = engine(fast);
        let (ui, api) = (
            RecordingUpstream::start().await,
            RecordingUpstream::start().await,
        );
        let gw = start_on(ui_and_api(ui.addr, api.addr), fast).await;
        let mut c = RawClient::connect(gw.addr).await;
        for p in steps {
            c.send(format!("GET {p} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
                .await;
            let r = within(p, c.response(false)).await.expect("a response");
            assert_eq!(
                r.text(),
                format!("GET {}", p.trim_start_matches("/api")),
                "{what}"
            );
        }
        let pipelined: String = steps
            .iter()
            .map(|p| format!("GET {p}?p HTTP/1.1\r\nHost: h\r\n\r\n"))
            .collect();
        c.send(pipelined.as_bytes()).await;
        for p in steps {
            let r = within(p, c.response(false))
                .await
                .expect("a pipelined response");
            assert_eq!(
                r.text(),
                format!("GET {}?p", p.trim_start_matches("/api")),
                "{what}: pipelined, in order"
            );
        }
        let targets = |u: &RecordingUpstream| -> Vec<String> {
            u.requests().into_iter().map(|r| r.target).collect()
        };
        assert_eq!(
            targets(&ui),
            ["/u1", "/u2?x=1", "/u3", "/u1?p", "/u2?x=1?p", "/u3?p"],
            "{what}"
        );
        assert_eq!(
            targets(&api),
            ["/a1", "/a2?y=2", "/a3", "/a1?p", "/a2?y=2?p", "/a3?p"],
            "{what}"
        );
        assert_eq!(
            (ui.connections(), api.connections()),
            (1, 1),
            "{what}: one upstream connection each, parked and taken back"
        );
        gw.assert_split(fast, 12, 0, "six UI and six API requests");
    }
}

/// An in-process API service answering `200 in-process`.
fn service() -> ApiService {
    ApiService::new(tower::service_fn(
        |_req: http::Request<fluxlit_gateway::Body>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                bytes::Bytes::from_static(b"in-process"),
            )))
        },
    ))
}

/// Which engine serves an API request: the fast path with the defaults, hyper's path whenever
/// a rule only it applies holds (`decide::HyperOnly`: CORS, security headers, an in-process
/// API; and a WebSocket upgrade to the API), with the same answer on both engines.
#[tokio::test]
async fn api_requests_leave_the_fast_path_only_for_hyper_only_rules() {
    let cors = || ApiHeaders {
        cors: Some(
            tower_http::cors::CorsLayer::new()
                .allow_origin(http::HeaderValue::from_static("https://a.example")),
        ),
        ..ApiHeaders::default()
    };
    // (what, builder change, served by the fast path when on)
    type Change = fn(GatewayBuilder) -> GatewayBuilder;
    let rows: [(&str, Change, bool); 4] = [
        ("defaults", |b| b, true),
        (
            "CORS",
            |b| {
                b.api_headers(ApiHeaders {
                    cors: Some(tower_http::cors::CorsLayer::new()),
                    ..ApiHeaders::default()
                })
            },
            false,
        ),
        (
            "security headers",
            |b| {
                b.api_headers(ApiHeaders {
                    security_headers: true,
                    ..ApiHeaders::default()
                })
            },
            false,
        ),
        (
            "in-process API",
            |b| b.api(ApiTarget::Service(service())),
            false,
        ),
    ];
    for (what, change, by_fast_path) in rows {
        for fast in ENGINES {
            let ctx = format!("{} / {what}", engine(fast));
            let (ui, api) = (
                RecordingUpstream::start().await,
                RecordingUpstream::start().await,
            );
            let gw = start_on(change(ui_and_api(ui.addr, api.addr)), fast).await;
            let r = one(gw.addr, "GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n").await;
            assert_eq!(r.status, 200, "{ctx}: {}", r.text());
            if fast && by_fast_path {
                gw.assert_served(1, 0, &ctx);
            } else {
                gw.assert_served(0, 1, &ctx);
            }
        }
    }
    // CORS answers on both engines alike (a preflight is hyper's answer).
    for fast in ENGINES {
        let (ui, api) = (
            RecordingUpstream::start().await,
            RecordingUpstream::start().await,
        );
        let gw = start_on(ui_and_api(ui.addr, api.addr).api_headers(cors()), fast).await;
        let r = one(
            gw.addr,
            "GET /api/x HTTP/1.1\r\nHost: h\r\nOrigin: https://a.example\r\n\r\n",
        )
        .await;
        assert_eq!(
            r.all("access-control-allow-origin"),
            ["https://a.example"],
            "{}",
            engine(fast)
        );
        gw.assert_served(0, 1, engine(fast));
    }
    // A WebSocket upgrade to the API: hyper's tunnel on both engines.
    for fast in ENGINES {
        let ui = RecordingUpstream::start().await;
        let api = support::upgrading_upstream().await;
        let gw = start_on(ui_and_api(ui.addr, api.addr), fast).await;
        let mut c = RawClient::connect(gw.addr).await;
        c.send(b"GET /api/ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await;
        let r = within("the 101", c.response(false)).await.expect("a 101");
        assert_eq!(r.status, 101, "{}", engine(fast));
        assert_eq!(api.wait_for(1).await[0].target, "/ws");
        gw.assert_served(0, 1, &format!("{}: an API WebSocket", engine(fast)));
    }
}
