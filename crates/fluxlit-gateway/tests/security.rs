//! Security regressions, against raw sockets, on both engines (the HTTP/1.1 fast path and the
//! hyper path), in front of a recording upstream that logs every request it reads off the wire:
//! request smuggling through `Connection` (F1, both directions), stale upstream bytes, the
//! gateway's reserved paths, dot segments, identity headers, `Host` rules and upgrades.
//! `docs/security.md` lists which test proves which guarantee.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fluxlit_gateway::{ApiTarget, Gateway, GatewayBuilder};
use fluxlit_testkit::raw::{RawClient, Recorded, RecordingUpstream, Reply};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, TestRunner};

/// Both engines: the fast path (the default) and hyper's.
const ENGINES: [bool; 2] = [true, false];

mod support;

use support::{Running, up_at as upstream};

/// A gateway of one engine variant that, when the test is done with it (dropped without a
/// panic), asserts which engine served: with the fast path on, it forwarded at least one
/// request; with it off, it served none and hyper served at least one. A variant whose
/// requests are all hyper's by design (refusals, own endpoints, the API) says so with
/// [`Engined::hyper_only`]. So no engine variant passes because the other engine ran.
struct Engined {
    running: Running,
    fast: bool,
    hyper_only: bool,
}

impl Engined {
    /// Every request of this variant (if any) is hyper's, whatever the engine setting.
    fn hyper_only(&mut self) {
        self.hyper_only = true;
    }
}

impl std::ops::Deref for Engined {
    type Target = Running;

    fn deref(&self) -> &Running {
        &self.running
    }
}

impl Drop for Engined {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let s = self.running.served();
        let what = engine(self.fast);
        if self.hyper_only || !self.fast {
            assert_eq!(s.h1, 0, "{what}: no request on the fast path ({s:?})");
        } else {
            assert!(s.h1 > 0, "{what}: the fast path forwarded none ({s:?})");
        }
        if !self.fast && !self.hyper_only {
            assert!(s.hyper > 0, "{what}: hyper served none ({s:?})");
        }
    }
}

/// Serves `builder` on the fast path (`fast`) or on hyper's alone.
async fn start(builder: GatewayBuilder, fast: bool) -> Engined {
    Engined {
        running: support::start(builder.http1_fast_path(fast)).await,
        fast,
        hyper_only: false,
    }
}

/// Limits with a 300 ms header read (and idle) timeout.
fn short_header_deadline() -> fluxlit_gateway::Limits {
    fluxlit_gateway::Limits {
        header_read_timeout: Duration::from_millis(300),
        ..fluxlit_gateway::Limits::default()
    }
}

/// A gateway (default engine) in front of a recording UI upstream, with
/// [`short_header_deadline`].
async fn short_deadline_gateway() -> (RecordingUpstream, Engined) {
    let rec = RecordingUpstream::start().await;
    let gw = start(
        Gateway::builder()
            .ui(upstream(rec.addr, "ui"))
            .limits(short_header_deadline()),
        true,
    )
    .await;
    (rec, gw)
}

/// A loopback address with nothing listening: an upstream that refuses connections.
async fn dead_upstream() -> std::net::SocketAddr {
    let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = gone.local_addr().unwrap();
    drop(gone);
    dead
}

/// A gateway with the recording upstream as the UI and as the API upstream.
async fn gateway_for(rec: &RecordingUpstream, fast: bool) -> Engined {
    start(
        Gateway::builder()
            .ui(upstream(rec.addr, "ui"))
            .api(ApiTarget::Upstream(upstream(rec.addr, "api"))),
        fast,
    )
    .await
}

fn engine(fast: bool) -> &'static str {
    if fast { "fast path" } else { "hyper path" }
}

const SMUGGLED: &[u8] = b"GET /__echo/SMUGGLED HTTP/1.1\r\nHost: x\r\nX-Remote-User: admin\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n";

/// F1: a client naming `Content-Length` in `Connection` cannot make the upstream read its body
/// as a second request, and the next request on the connection gets its own response.
#[tokio::test]
async fn connection_content_length_cannot_smuggle_a_request() {
    for fast in ENGINES {
        let rec = RecordingUpstream::start().await;
        let gw = gateway_for(&rec, fast).await;
        let mut c = RawClient::connect(gw.addr).await;
        let mut req = format!(
            "POST /outer HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Content-Length\r\nContent-Length: {}\r\n\r\n",
            SMUGGLED.len()
        )
        .into_bytes();
        req.extend_from_slice(SMUGGLED);
        c.send(&req).await;
        let first = c.response(false).await.expect("response to /outer");
        assert_eq!(
            (first.status, first.text().as_str()),
            (200, "POST /outer"),
            "{}",
            engine(fast)
        );
        c.send(b"GET /victim HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let second = c.response(false).await.expect("response to /victim");
        assert_eq!(second.text(), "GET /victim", "{}", engine(fast));
        let seen = rec.wait_for(2).await;
        let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
        assert_eq!(targets, ["/outer", "/victim"], "{}", engine(fast));
        assert_eq!(seen[0].body, SMUGGLED, "{}", engine(fast));
        assert_eq!(
            seen[0].all("content-length"),
            [SMUGGLED.len().to_string()],
            "{}: the gateway writes the framing it relays",
            engine(fast)
        );
    }
}

/// F1, response side: an upstream naming `Content-Length` in `Connection` still gets its
/// response framed for the client, and the connection stays in step.
#[tokio::test]
async fn upstream_connection_content_length_keeps_the_response_framed() {
    for fast in ENGINES {
        let rec = RecordingUpstream::with(|r: &Recorded| {
            if r.target == "/conn-cl" {
                Reply::raw(
                    &b"HTTP/1.1 200 OK\r\nConnection: keep-alive, content-length\r\nContent-Length: 5\r\n\r\nhello"[..],
                )
            } else {
                fluxlit_testkit::raw::echo_line(r)
            }
        })
        .await;
        let gw = gateway_for(&rec, fast).await;
        let mut c = RawClient::connect(gw.addr).await;
        c.send(b"GET /conn-cl HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let first = c.response(false).await.expect("first response");
        assert_eq!(first.text(), "hello", "{}", engine(fast));
        assert_eq!(first.all("content-length"), ["5"], "{}", engine(fast));
        c.send(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let second = c.response(false).await.expect("second response");
        assert_eq!(second.text(), "GET /after", "{}", engine(fast));
    }
}

/// One generated request: method, body, and a `Connection` naming any of these fields.
#[derive(Debug, Clone)]
struct Case {
    method: &'static str,
    body: Vec<u8>,
    options: Vec<&'static str>,
}

const NAMEABLE: [&str; 12] = [
    "content-length",
    "Content-Length",
    "host",
    "transfer-encoding",
    "x-request-id",
    "x-forwarded-for",
    "keep-alive",
    "cookie",
    "x-custom",
    "te",
    "upgrade",
    "accept",
];

fn cases(n: u32) -> Vec<Case> {
    let strategy = (
        proptest::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
        proptest::prop_oneof![
            proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            // A body that is itself a request, with and without a trailing one.
            proptest::strategy::Just(SMUGGLED.to_vec()),
            proptest::strategy::Just([SMUGGLED, SMUGGLED].concat()),
        ],
        proptest::sample::subsequence(NAMEABLE.to_vec(), 0..=NAMEABLE.len()),
    );
    let mut runner = TestRunner::new_with_rng(
        Config::with_cases(n),
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    (0..n)
        .map(|_| {
            let (method, body, options) = strategy.new_tree(&mut runner).unwrap().current();
            Case {
                method,
                body,
                options,
            }
        })
        .collect()
}

/// Property: whatever `Connection` names, the upstream reads exactly one request per client
/// request, with the body and the length the gateway counted.
#[tokio::test]
async fn every_request_reaches_the_upstream_exactly_once_with_its_framing() {
    let cases = cases(48);
    for fast in ENGINES {
        let rec = RecordingUpstream::start().await;
        let gw = gateway_for(&rec, fast).await;
        let mut c = RawClient::connect(gw.addr).await;
        for (i, case) in cases.iter().enumerate() {
            let mut req = format!(
                "{} /case/{i} HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, {}\r\nContent-Length: {}\r\nX-Custom: 1\r\n\r\n",
                case.method,
                case.options.join(", "),
                case.body.len()
            )
            .into_bytes();
            req.extend_from_slice(&case.body);
            c.send(&req).await;
            let resp = c
                .response(false)
                .await
                .unwrap_or_else(|| panic!("{}: no response to case {i}: {case:?}", engine(fast)));
            assert_eq!(
                resp.text(),
                format!("{} /case/{i}", case.method),
                "{}: case {i} {case:?}",
                engine(fast)
            );
            let seen = rec.wait_for(i + 1).await;
            assert_eq!(seen.len(), i + 1, "{}: case {i} {case:?}", engine(fast));
            let got = &seen[i];
            assert_eq!(got.target, format!("/case/{i}"), "{}", engine(fast));
            assert_eq!(got.body, case.body, "{}: case {i}", engine(fast));
            assert_eq!(
                got.all("content-length"),
                [case.body.len().to_string()],
                "{}: case {i} {case:?}",
                engine(fast)
            );
            assert_eq!(got.all("host"), ["x"], "{}: case {i}", engine(fast));
        }
        // Nothing more arrived than was asked.
        assert_eq!(rec.requests().len(), cases.len(), "{}", engine(fast));
    }
}

/// Bytes an upstream sends after a complete response (a body after HEAD or 204, a second
/// response nobody asked for) never become another request's response.
#[tokio::test]
async fn stale_upstream_bytes_never_answer_the_next_request() {
    const POISON: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nPOISON";
    for fast in ENGINES {
        let rec = RecordingUpstream::with(|r: &Recorded| match r.target.as_str() {
            "/head" => Reply {
                writes: vec![
                    b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n".to_vec(),
                    POISON.to_vec(),
                ],
                close: false,
            },
            "/no-content" => Reply {
                writes: vec![b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(), POISON.to_vec()],
                close: false,
            },
            "/extra" => Reply {
                writes: vec![
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
                    POISON.to_vec(),
                ],
                close: false,
            },
            "/extra-same-write" => Reply::raw(
                [
                    &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
                    POISON,
                ]
                .concat(),
            ),
            _ => fluxlit_testkit::raw::echo_line(r),
        })
        .await;
        let gw = gateway_for(&rec, fast).await;
        for (method, path) in [
            ("HEAD", "/head"),
            ("GET", "/no-content"),
            ("GET", "/extra"),
            ("GET", "/extra-same-write"),
        ] {
            let mut c = RawClient::connect(gw.addr).await;
            c.send(format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await;
            let first = c.response(method == "HEAD").await.expect("first response");
            assert_ne!(first.text(), "POISON", "{} {path}", engine(fast));
            // The stray bytes are written (and on loopback, in the gateway's receive queue).
            rec.wait_replied(rec.requests().len()).await;
            // The next request, on this connection and on a new one (a parked connection).
            c.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n").await;
            let next = c.response(false).await.expect("next response");
            assert_eq!(next.text(), "GET /next", "{} after {path}", engine(fast));
            drop(c);
            let mut other = RawClient::connect(gw.addr).await;
            other.send(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n").await;
            let r = other.response(false).await.expect("other response");
            assert_eq!(r.text(), "GET /other", "{} after {path}", engine(fast));
            // Pipelined: the next request is already there when the answer is relayed.
            let mut c = RawClient::connect(gw.addr).await;
            c.send(
                format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\nGET /piped HTTP/1.1\r\nHost: x\r\n\r\n")
                    .as_bytes(),
            )
            .await;
            let first = c.response(method == "HEAD").await.expect("first response");
            assert_ne!(first.text(), "POISON", "{} {path} pipelined", engine(fast));
            let next = c.response(false).await.expect("pipelined response");
            assert_eq!(
                next.text(),
                "GET /piped",
                "{} after {path}, pipelined",
                engine(fast)
            );
        }
    }
}

/// Everything under `/__fluxlit` is the gateway's: 404 when the endpoint is off, never
/// forwarded to Streamlit; with a root path too.
#[tokio::test]
async fn reserved_paths_never_reach_the_upstream() {
    for fast in ENGINES {
        for root in ["", "/myapp"] {
            let rec = RecordingUpstream::start().await;
            let mut gw = start(
                Gateway::builder()
                    .root_path(root)
                    .ui(upstream(rec.addr, "ui")),
                fast,
            )
            .await;
            gw.hyper_only(); // own endpoints are hyper's, and so is the rest of the connection
            let mut c = RawClient::connect(gw.addr).await;
            for path in [
                "/__fluxlit/debug",
                "/__fluxlit/metrics",
                "/__fluxlit",
                "/__fluxlit/anything?x=1",
                "/myapp/__fluxlit/debug",
            ] {
                for method in ["GET", "POST"] {
                    c.send(
                        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                            .as_bytes(),
                    )
                    .await;
                    let r = c.response(false).await.expect("response");
                    let ctx = format!("{} root={root:?} {method} {path}", engine(fast));
                    if path.starts_with("/myapp") && root.is_empty() {
                        // Not under the root path: a UI path like any other.
                        assert_eq!(r.status, 200, "{ctx}");
                    } else {
                        assert_eq!(r.status, 404, "{ctx}");
                    }
                }
            }
            c.send(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").await;
            assert_eq!(c.response(false).await.expect("ok").status, 200);
            for r in rec.requests() {
                let fine = r.target == format!("{root}/ok")
                    || root.is_empty() && r.target == "/myapp/__fluxlit/debug";
                assert!(
                    fine,
                    "{} root={root:?}: {} reached the upstream",
                    engine(fast),
                    r.target
                );
            }
        }
    }
}

/// Dot segments, plain and percent-encoded, are refused with 400 before any routing.
#[tokio::test]
async fn dot_segments_are_refused() {
    for fast in ENGINES {
        let rec = RecordingUpstream::start().await;
        let mut gw = start(
            Gateway::builder()
                .root_path("/myapp")
                .ui(upstream(rec.addr, "ui"))
                .api(ApiTarget::Upstream(upstream(rec.addr, "api"))),
            fast,
        )
        .await;
        gw.hyper_only(); // refusals are hyper's
        for path in [
            "/myapp/%2e%2e/api/x",
            "/myapp/%2E%2E/api/x",
            "/myapp/../api/x",
            "/myapp/./x",
            "/myapp/.%2e/api/x",
            "/api/%2e%2e/x",
            "/%2e",
        ] {
            let mut c = RawClient::connect(gw.addr).await;
            c.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await;
            let r = c.response(false).await.expect("response");
            assert_eq!(r.status, 400, "{} {path}", engine(fast));
        }
        assert!(rec.requests().is_empty(), "{}", engine(fast));
    }
}

/// `Host` rules (RFC 9112 §3.2): duplicates, missing on HTTP/1.1, invalid values and an
/// absolute-form target naming another authority get 400 and reach no upstream.
#[tokio::test]
async fn host_rules_are_enforced() {
    for fast in ENGINES {
        let rec = RecordingUpstream::start().await;
        let gw = gateway_for(&rec, fast).await;
        for head in [
            "GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\nhost: x\r\n\r\n",
            "GET /a HTTP/1.1\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: \r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: a b\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: user@x\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x/y\r\n\r\n",
            "GET http://evil.example/a HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /api/a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        ] {
            let mut c = RawClient::connect(gw.addr).await;
            c.send(head.as_bytes()).await;
            let r = c.response(false).await.expect("response");
            assert_eq!(r.status, 400, "{} {head:?}", engine(fast));
        }
        // What is fine: HTTP/1.0 without Host, absolute-form naming the Host.
        for head in [
            "GET /a HTTP/1.0\r\n\r\n",
            "GET http://x/a HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: X:8000\r\n\r\n",
        ] {
            let mut c = RawClient::connect(gw.addr).await;
            c.send(head.as_bytes()).await;
            let r = c.response(false).await.expect("response");
            assert_eq!(r.status, 200, "{} {head:?}", engine(fast));
        }
        assert_eq!(rec.requests().len(), 3, "{}", engine(fast));
    }
}

/// Identity headers from clients never reach an upstream, whatever their spelling: letter case,
/// underscores (read as `-` by CGI/WSGI servers) and every authenticating proxy's family; nor
/// do underscore spellings of the forwarded headers and `X-Request-ID` the gateway owns.
#[tokio::test]
async fn identity_headers_are_stripped_in_every_spelling() {
    const SPELLINGS: [&str; 13] = [
        "X-Remote-User",
        "X_Remote_User",
        "x_forwarded_user",
        "Remote-User",
        "Remote-Name",
        "X-Authentik-Username",
        "Cf-Access-Authenticated-User-Email",
        "X-Pomerium-Claim-Email",
        "Tailscale-User-Login",
        "X-Webauth-User",
        // The gateway's own fields, spelled with underscores.
        "X_Forwarded_Host",
        "x_forwarded_for",
        "X_Request_Id",
    ];
    for fast in ENGINES {
        let rec = RecordingUpstream::start().await;
        let gw = gateway_for(&rec, fast).await;
        let mut c = RawClient::connect(gw.addr).await;
        for path in ["/ui", "/api/x"] {
            let mut head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
            for name in SPELLINGS {
                head.push_str(&format!("{name}: admin\r\n"));
            }
            head.push_str("\r\n");
            c.send(head.as_bytes()).await;
            assert_eq!(c.response(false).await.expect("response").status, 200);
        }
        let seen = rec.wait_for(2).await;
        for r in &seen {
            for name in SPELLINGS {
                assert!(
                    !r.has(name),
                    "{}: {name} reached {} ({:?})",
                    engine(fast),
                    r.target,
                    r.headers
                );
            }
        }
    }
}

const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Only WebSocket upgrades are forwarded as upgrades (`h2c` and others go on as plain requests
/// without `Upgrade`), and a 101 whose `Sec-WebSocket-Accept` is wrong is a 502, never a tunnel.
#[tokio::test]
async fn only_completed_websocket_handshakes_become_tunnels() {
    for fast in ENGINES {
        let rec = RecordingUpstream::with(|r: &Recorded| {
            let accept = match r.target.as_str() {
                "/ws-good" => WS_ACCEPT,
                "/ws-bad" => "d3JvbmcgYWNjZXB0IGtleQ==",
                // Switches to whatever was asked (a permissive upstream).
                _ if r.has("upgrade") => WS_ACCEPT,
                _ => return fluxlit_testkit::raw::echo_line(r),
            };
            Reply::raw(format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            ))
        })
        .await;
        let gw = gateway_for(&rec, fast).await;
        let upgrade = |path: &str, proto: &str| {
            format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: {proto}\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
        };
        let mut c = RawClient::connect(gw.addr).await;
        c.send(upgrade("/ws-good", "websocket").as_bytes()).await;
        let r = c.response(false).await.expect("101");
        assert_eq!(r.status, 101, "{}", engine(fast));
        assert_eq!(r.get("sec-websocket-accept"), Some(WS_ACCEPT));

        let mut c = RawClient::connect(gw.addr).await;
        c.send(upgrade("/ws-bad", "websocket").as_bytes()).await;
        let r = c.response(false).await.expect("502");
        assert_eq!(r.status, 502, "{}: wrong accept", engine(fast));

        let mut c = RawClient::connect(gw.addr).await;
        c.send(upgrade("/h2c", "h2c").as_bytes()).await;
        let r = c.response(false).await.expect("answer to h2c");
        assert_eq!(
            r.status,
            200,
            "{}: an h2c upgrade goes on as a plain request",
            engine(fast)
        );
        let seen = rec.requests();
        let h2c = seen
            .iter()
            .find(|r| r.target == "/h2c")
            .expect("h2c request");
        assert!(
            !h2c.has("upgrade") && !h2c.has("connection"),
            "{}: {:?}",
            engine(fast),
            h2c.headers
        );
    }
}

/// Every connection has a first-byte/header deadline on both engines, whatever else is on
/// (metrics too): a client that connects and sends nothing, or only the
/// start of the HTTP/2 preface, loses its connection within `header_read_timeout`.
#[tokio::test]
async fn silent_and_stalled_connections_are_closed() {
    for fast in ENGINES {
        for metrics in [false, true] {
            let rec = RecordingUpstream::start().await;
            let mut b = Gateway::builder()
                .ui(upstream(rec.addr, "ui"))
                .limits(short_header_deadline());
            if metrics {
                b = b.metrics_endpoint("/__fluxlit/metrics", std::sync::Arc::new(String::new));
            }
            let gw = start(b, fast).await;
            let ctx = format!("{} metrics={metrics}", engine(fast));
            for first in [&b""[..], b"P", b"PRI * HTTP/2.0\r\n", b"GET / HTTP/1.1\r\n"] {
                let mut c = RawClient::connect(gw.addr).await;
                c.send(first).await;
                assert!(c.closed().await, "{ctx}: {first:?} kept its connection");
            }
            // An idle keep-alive connection after a request is closed too.
            let mut c = RawClient::connect(gw.addr).await;
            c.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
            assert_eq!(c.response(false).await.expect("response").status, 200);
            assert!(c.closed().await, "{ctx}: idle keep-alive connection kept");
        }
    }
}

/// An idle HTTP/2 connection (no open stream) is closed after `header_read_timeout`.
#[tokio::test]
async fn idle_http2_connections_are_closed() {
    let (_rec, mut gw) = short_deadline_gateway().await;
    gw.hyper_only(); // HTTP/2 is hyper's
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/h2", gw.addr))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    // The server ends the idle connection (GOAWAY, then close): the client's driver finishes.
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("idle HTTP/2 connection closed by the gateway")
        .unwrap()
        .unwrap();
}

/// A client that stops reading cannot hold its connection (and its slot) forever: the write
/// timeout ends it, on both engines.
#[tokio::test]
async fn clients_that_stop_reading_are_cut_by_the_write_timeout() {
    let u = fluxlit_testkit::upstream::TestUpstream::start().await;
    for fast in ENGINES {
        let limits = fluxlit_gateway::Limits {
            write_timeout: Duration::from_millis(300),
            max_connections: 1,
            ..fluxlit_gateway::Limits::default()
        };
        let gw = start(
            Gateway::builder().ui(upstream(u.addr, "ui")).limits(limits),
            fast,
        )
        .await;
        // 64 MiB: far more than loopback socket buffers hold.
        let mut stuck = RawClient::connect(gw.addr).await;
        stuck
            .send(b"GET /big?bytes=67108864 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        // The only connection slot comes free once the stuck client is cut.
        fluxlit_testkit::eventually(
            Duration::from_secs(10),
            "a new connection is served",
            || async {
                let mut c = RawClient::connect(gw.addr).await;
                c.send(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await;
                c.response(false)
                    .await
                    .filter(|r| r.status == 200)
                    .map(|_| ())
            },
        )
        .await;
        drop(stuck);
    }
}

/// From a trusted proxy: the nearest hop's values (the last ones), one header family per
/// request (a client's `Forwarded` never fills a gap in `X-Forwarded-*`), and
/// `X-Forwarded-Prefix`/`-Port` only when opted in — on both hops and both engines.
#[tokio::test]
async fn trusted_forwarded_fields_take_the_nearest_hop_only() {
    for fast in ENGINES {
        for opt_in in [false, true] {
            let rec = RecordingUpstream::start().await;
            let trust = fluxlit_gateway::TrustPolicy::trusting(vec![])
                .forwarded_prefix(opt_in)
                .forwarded_port(opt_in);
            let gw = start(
                Gateway::builder()
                    .trust(trust)
                    .ui(upstream(rec.addr, "ui"))
                    .api(ApiTarget::Upstream(upstream(rec.addr, "api"))),
                fast,
            )
            .await;
            let mut c = RawClient::connect(gw.addr).await;
            let heads = [
                // An edge that appends: the client's values come first.
                "Host: app.example\r\nX-Forwarded-Proto: https, http\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Host: app.example\r\n",
                // X-Forwarded-* present: the client's Forwarded fills no gap.
                "Host: app.example\r\nX-Forwarded-For: 1.2.3.4\r\nForwarded: proto=https;host=evil.example\r\n",
                // Prefix and port: believed only when opted in.
                "Host: app.example\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Prefix: /attacker\r\nX-Forwarded-Port: 1\r\n",
            ];
            let mut n = 0;
            for (i, extra) in heads.iter().enumerate() {
                for path in ["/ui", "/api/x"] {
                    c.send(format!("GET {path} HTTP/1.1\r\n{extra}\r\n").as_bytes())
                        .await;
                    assert_eq!(c.response(false).await.expect("response").status, 200);
                    n += 1;
                    let seen = rec.wait_for(n).await;
                    let r = &seen[n - 1];
                    let ctx = format!("{} opt_in={opt_in} case {i} {path}", engine(fast));
                    assert_eq!(r.all("x-forwarded-proto"), ["http"], "{ctx}");
                    assert_eq!(r.all("x-forwarded-host"), ["app.example"], "{ctx}");
                    assert!(!r.has("forwarded"), "{ctx}");
                    let (port, prefix) = if i == 2 && opt_in {
                        ("1", "/attacker")
                    } else {
                        ("80", "")
                    };
                    assert_eq!(r.all("x-forwarded-port"), [port], "{ctx}");
                    if path.starts_with("/api") {
                        assert_eq!(
                            r.all("x-forwarded-prefix"),
                            [format!("{prefix}/api")],
                            "{ctx}"
                        );
                    }
                }
            }
        }
    }
}

/// An in-process API (a tower service) gets the same hop rules as an upstream: no hop-by-hop
/// fields, no identity headers; a WebSocket upgrade keeps exactly `Connection: upgrade` and
/// `Upgrade: websocket`.
#[tokio::test]
async fn the_in_process_api_gets_no_hop_by_hop_fields() {
    let svc = tower::service_fn(|req: http::Request<fluxlit_gateway::Body>| async move {
        let mut names: Vec<String> = req
            .headers()
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
            .collect();
        names.sort();
        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
            bytes::Bytes::from(names.join("\n")),
        )))
    });
    for fast in ENGINES {
        let rec = RecordingUpstream::start().await;
        let mut gw = start(
            Gateway::builder()
                .ui(upstream(rec.addr, "ui"))
                .api_service(fluxlit_gateway::ApiService::new(svc)),
            fast,
        )
        .await;
        gw.hyper_only(); // an in-process API is hyper's
        let mut c = RawClient::connect(gw.addr).await;
        c.send(b"GET /api/x HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Hop, X-Request-ID\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic eDp5\r\nUpgrade: h2c\r\nX-Remote-User: admin\r\nX-Kept: 1\r\n\r\n").await;
        let r = c.response(false).await.expect("response");
        let seen = r.text().to_ascii_lowercase();
        for gone in [
            "connection:",
            "x-hop:",
            "keep-alive:",
            "te:",
            "proxy-authorization:",
            "upgrade:",
            "x-remote-user:",
        ] {
            assert!(
                !seen.lines().any(|l| l.starts_with(gone)),
                "{}: {gone} reached the in-process API:\n{seen}",
                engine(fast)
            );
        }
        assert!(seen.contains("x-kept: 1"), "{seen}");
        assert!(
            seen.lines().any(|l| l.starts_with("x-request-id: ")),
            "{}: the gateway's request id is always there:\n{seen}",
            engine(fast)
        );
        let mut c = RawClient::connect(gw.addr).await;
        c.send(format!("GET /api/ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes()).await;
        let r = c.response(false).await.expect("response");
        let seen = r.text();
        assert!(
            seen.contains("connection: upgrade") && seen.contains("upgrade: websocket"),
            "{}: {seen}",
            engine(fast)
        );
    }
}

/// An idle client connection does not pin an upstream connection beyond its reuse window
/// (4 s): the upstream socket is closed while the client connection stays open.
#[tokio::test]
async fn idle_clients_let_their_upstream_connection_go() {
    for fast in ENGINES {
        let rec = RecordingUpstream::start().await;
        let gw = gateway_for(&rec, fast).await;
        let mut c = RawClient::connect(gw.addr).await;
        c.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(c.response(false).await.expect("response").status, 200);
        assert_eq!(rec.open_connections(), 1, "{}", engine(fast));
        fluxlit_testkit::eventually(
            Duration::from_secs(10),
            "the idle client's upstream connection is closed",
            || async { (rec.open_connections() == 0).then_some(()) },
        )
        .await;
        // The client connection itself is still served.
        c.send(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(c.response(false).await.expect("response").text(), "GET /b");
    }
}

/// A 502 written while the client's body is still unread arrives as an answer, not a reset:
/// the rest of the body is read and dropped (within the drain bounds) before the close.
#[tokio::test]
async fn an_error_answer_before_the_body_is_read_is_not_reset() {
    // A port with nothing listening: the upstream is refused.
    let dead = dead_upstream().await;
    for fast in ENGINES {
        let gw = start(Gateway::builder().ui(upstream(dead, "ui")), fast).await;
        for round in 0..3 {
            let mut c = RawClient::connect(gw.addr).await;
            // More than loopback socket buffers hold: the write is still going on when the
            // gateway has answered.
            const LEN: usize = 8 * 1024 * 1024;
            c.send(
                format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {LEN}\r\n\r\n")
                    .as_bytes(),
            )
            .await;
            // The body goes on being written while the answer comes back.
            let (mut rd, mut wr) = tokio::io::split(std::mem::replace(
                c.stream(),
                tokio::net::TcpStream::connect(gw.addr).await.unwrap(),
            ));
            let writer = tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let chunk = vec![b'a'; 64 * 1024];
                let mut all = true;
                for _ in 0..LEN / chunk.len() {
                    if wr.write_all(&chunk).await.is_err() {
                        all = false;
                        break;
                    }
                }
                (wr, all)
            });
            // Like a front proxy that writes the whole body first, read only afterwards.
            let (wr, all) = tokio::time::timeout(Duration::from_secs(10), writer)
                .await
                .expect("body written in time")
                .unwrap();
            assert!(
                all,
                "{} round {round}: the body's write was reset",
                engine(fast)
            );
            let mut got = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(10), async {
                use tokio::io::AsyncReadExt;
                let mut b = [0u8; 4096];
                // Until the answer's head is in (the gateway may close or keep the connection).
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match rd.read(&mut b).await {
                        Ok(0) => return Ok(()),
                        Ok(n) => got.extend_from_slice(&b[..n]),
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            })
            .await
            .expect("the gateway answers in time");
            let text = String::from_utf8_lossy(&got).into_owned();
            assert!(
                text.starts_with("HTTP/1.1 502"),
                "{} round {round}: {read:?} after {text:?}",
                engine(fast)
            );
            drop(wr);
        }
    }
}

/// A head with thousands of `Connection` options is answered, with the same rules, on both
/// engines (the options are parsed once into a bounded set: one lookup per field).
#[tokio::test]
async fn heads_with_thousands_of_connection_options_are_served() {
    for fast in ENGINES {
        let rec = RecordingUpstream::start().await;
        let gw = gateway_for(&rec, fast).await;
        let mut head = String::from("GET /many HTTP/1.1\r\nHost: x\r\nConnection: keep-alive");
        for i in 0..4000 {
            head.push_str(&format!(",o{i}"));
        }
        head.push_str(",,,,,,,,\r\n");
        // 90 fields: within the 100 a head may have.
        for i in 0..45 {
            head.push_str(&format!("O{}: v\r\nx-keep-{i}: v\r\n", i * 50));
        }
        head.push_str("\r\n");
        let mut c = RawClient::connect(gw.addr).await;
        c.send(head.as_bytes()).await;
        assert_eq!(c.response(false).await.expect("response").status, 200);
        let seen = rec.wait_for(1).await;
        assert!(
            seen[0].headers.iter().all(|(n, _)| !n.starts_with('O')),
            "{}: a nominated field went on",
            engine(fast)
        );
    }
}

/// One HTTP/2 connection cannot fan out to more upstream connections than its stream limit.
#[tokio::test]
async fn http2_fan_out_is_bounded_by_the_stream_limit() {
    let u = fluxlit_testkit::upstream::TestUpstream::start().await;
    let limits = fluxlit_gateway::Limits {
        http2_max_streams: 4,
        ..fluxlit_gateway::Limits::default()
    };
    let mut gw = start(
        Gateway::builder().ui(upstream(u.addr, "ui")).limits(limits),
        true,
    )
    .await;
    gw.hyper_only(); // HTTP/2 is hyper's
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut hanging = Vec::new();
    for _ in 0..10 {
        let mut s = sender.clone();
        let req = http::Request::get(format!("http://{}/hang", gw.addr))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        hanging.push(tokio::spawn(async move { s.send_request(req).await }));
    }
    fluxlit_testkit::eventually(Duration::from_secs(5), "4 upstream connections", || async {
        (u.connections() >= 4).then_some(())
    })
    .await;
    // No fifth one within a window in which the other six would have been opened.
    let more = tokio::time::timeout(Duration::from_millis(500), async {
        while u.connections() <= 4 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(more.is_err(), "{} upstream connections", u.connections());
    for h in hanging {
        h.abort();
    }
}

/// One client IP cannot hold more WebSocket tunnels than `ws_max_per_client_ip`, counted by
/// the IP trusted forwarded headers resolve (clients behind one trusted proxy apart); a closed
/// tunnel frees its slot.
#[tokio::test]
async fn websocket_tunnels_are_capped_per_client_ip() {
    let u = fluxlit_testkit::upstream::TestUpstream::start().await;
    for fast in ENGINES {
        let limits = fluxlit_gateway::Limits {
            ws_max_per_client_ip: 2,
            ..fluxlit_gateway::Limits::default()
        };
        let gw = start(
            Gateway::builder()
                .ui(upstream(u.addr, "ui"))
                .limits(limits)
                .trust(fluxlit_gateway::TrustPolicy::trusting(vec![])),
            fast,
        )
        .await;
        let addr = gw.addr;
        let open = |client: &'static str| async move {
            let mut c = RawClient::connect(addr).await;
            c.send(format!("GET /ws HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {client}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes()).await;
            let status = c.response(false).await.expect("answer").status;
            (status, c)
        };
        let (s1, t1) = open("203.0.113.1").await;
        let (s2, _t2) = open("203.0.113.1").await;
        assert_eq!((s1, s2), (101, 101), "{}", engine(fast));
        let (s3, _) = open("203.0.113.1").await;
        assert_eq!(s3, 429, "{}: a third tunnel of one client", engine(fast));
        let (s4, _t4) = open("203.0.113.2").await;
        assert_eq!(s4, 101, "{}: another client behind the proxy", engine(fast));
        drop(t1);
        fluxlit_testkit::eventually(
            Duration::from_secs(5),
            "the closed tunnel's slot is free",
            || async {
                let (s, c) = open("203.0.113.1").await;
                (s == 101).then_some(c)
            },
        )
        .await;
    }
}

/// The gateway's own answers to a HEAD have no body (the next response on the connection stays
/// in step), and a relayed 204 carries no `Content-Length` (RFC 9110 §8.6).
#[tokio::test]
async fn bodiless_answers_stay_bodiless() {
    let dead = dead_upstream().await;
    let rec = RecordingUpstream::with(|r: &Recorded| {
        if r.target == "/204" {
            Reply::raw(&b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"[..])
        } else {
            fluxlit_testkit::raw::echo_line(r)
        }
    })
    .await;
    for fast in ENGINES {
        // HEAD to an upstream that is not there: a 502 without a body, then a GET on the same
        // connection gets its own 502 with its body.
        let gw = start(Gateway::builder().ui(upstream(dead, "ui")), fast).await;
        let mut c = RawClient::connect(gw.addr).await;
        c.send(b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let head = c.response(true).await.expect("answer to HEAD");
        assert_eq!(head.status, 502, "{}", engine(fast));
        let get = c.response(false).await.expect("answer to GET");
        assert_eq!(get.status, 502, "{}", engine(fast));
        assert!(
            get.text().starts_with("FluxLit:"),
            "{}: {:?}",
            engine(fast),
            get.text()
        );
        drop(gw);
        let gw = gateway_for(&rec, fast).await;
        let mut c = RawClient::connect(gw.addr).await;
        c.send(b"GET /204 HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let r = c.response(false).await.expect("204");
        assert_eq!(r.status, 204, "{}", engine(fast));
        assert!(
            r.get("content-length").is_none(),
            "{}: {:?}",
            engine(fast),
            r.headers
        );
    }
}

/// An HTTP/2 client that opens a connection and then never answers (not even the PING of the
/// gateway's GOAWAY) loses it: a graceful close that does not finish ends one idle period later.
#[tokio::test]
async fn silent_http2_clients_cannot_hold_a_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_rec, mut gw) = short_deadline_gateway().await;
    gw.hyper_only(); // HTTP/2 is hyper's
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // The preface and an empty SETTINGS frame (RFC 9113 §3.4, §6.5); then nothing, ever.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        let mut b = [0u8; 4096];
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the silent HTTP/2 connection is still open");
}

/// RFC 9112 §6.3: a request whose body length is ambiguous gets the same refusal from both
/// engines (400, or 501 for a transfer coding the gateway does not implement), the connection
/// is closed after it, and nothing reaches the upstream; repeated identical lengths are one
/// length, forwarded as one field (by the fast path when it is on).
#[tokio::test]
async fn ambiguous_framing_is_refused_the_same_way_by_both_engines() {
    let refused: [(&str, &[u8], u16); 9] = [
        (
            "obs-fold",
            b"GET /x HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n",
            400,
        ),
        (
            "bare CR in a value",
            b"GET /x HTTP/1.1\r\nHost: x\r\nX-A: 1\r2\r\n\r\n",
            400,
        ),
        (
            "NUL in a value",
            b"GET /x HTTP/1.1\r\nHost: x\r\nX-A: 1\x002\r\n\r\n",
            400,
        ),
        (
            "a list of lengths",
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc",
            400,
        ),
        (
            "conflicting Content-Length",
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            400,
        ),
        (
            "signed Content-Length",
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",
            400,
        ),
        (
            "chunked not final",
            b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "chunked twice",
            b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "a coding before chunked",
            b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
    ];
    for fast in ENGINES {
        let rec = RecordingUpstream::start().await;
        let gw = gateway_for(&rec, fast).await;
        for (what, bytes, status) in refused {
            let mut c = RawClient::connect(gw.addr).await;
            c.send(bytes).await;
            let r = c.response(false).await.expect(what);
            assert_eq!(r.status, status, "{what}: {}", engine(fast));
            assert!(c.closed().await, "{what}: {}: closed after", engine(fast));
        }
        let mut c = RawClient::connect(gw.addr).await;
        c.send(
            b"POST /list HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc",
        )
        .await;
        let r = c.response(false).await.expect("identical lengths");
        assert_eq!(r.text(), "POST /list", "{}", engine(fast));
        let seen = rec.wait_for(1).await;
        assert_eq!(
            seen.len(),
            1,
            "{}: only /list reached the upstream",
            engine(fast)
        );
        assert_eq!(seen[0].all("content-length"), ["3"], "{}", engine(fast));
        assert_eq!(seen[0].body, b"abc", "{}", engine(fast));
        gw.assert_engine(fast, 1, engine(fast));
        // Both `Content-Length` and `Transfer-Encoding: chunked` (RFC 9112 §6.3 item 3): the
        // chunked coding decides, the length is removed before forwarding, and the client
        // connection closes after the response, so nothing after the body can be read as a
        // request by anyone.
        for (i, head) in [
            "Content-Length: 99\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: chunked\r\nContent-Length: 2",
        ]
        .into_iter()
        .enumerate()
        {
            let mut c = RawClient::connect(gw.addr).await;
            let req = format!(
                "POST /both{i} HTTP/1.1\r\nHost: x\r\n{head}\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
            );
            c.send(req.as_bytes()).await;
            let r = c.response(false).await.expect("CL and TE");
            assert_eq!(r.text(), format!("POST /both{i}"), "{}", engine(fast));
            assert!(c.closed().await, "{}: closed after CL+TE", engine(fast));
            let seen = rec.wait_for(2 + i).await;
            let last = &seen[1 + i];
            assert_eq!(last.target, format!("/both{i}"), "{}", engine(fast));
            assert!(!last.has("content-length"), "{}: {last:?}", engine(fast));
            assert_eq!(last.body, b"abc", "{}", engine(fast));
        }
        assert!(
            rec.requests().iter().all(|r| r.target != "/smuggled"),
            "{}",
            engine(fast)
        );
    }
}

/// Responses read the same on both engines: transfer codings beyond `chunked` stay with the
/// body they coded (`gzip, chunked` reaches the client as such, never re-framed without its
/// coding), an upstream response head is accepted up to 64 KiB and refused (502) above, and an
/// HTTP/1.0 response with `Transfer-Encoding` is refused (502) by both.
#[tokio::test]
async fn response_codings_and_head_limits_are_the_same_on_both_engines() {
    let filler = |n: usize| "a".repeat(n);
    let small = filler(60 * 1024);
    let big = filler(70 * 1024);
    let rec = RecordingUpstream::with(move |r: &Recorded| match r.target.as_str() {
        "/coded" => Reply::raw(
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nGZIPD\r\n0\r\n\r\n"
                [..],
        ),
        "/te-http10" => Reply::raw(
            &b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"[..],
        ),
        "/head-60k" => Reply::raw(format!(
            "HTTP/1.1 200 OK\r\nX-Big: {small}\r\nContent-Length: 2\r\n\r\nok"
        )),
        "/head-70k" => Reply::raw(format!(
            "HTTP/1.1 200 OK\r\nX-Big: {big}\r\nContent-Length: 2\r\n\r\nok"
        )),
        _ => fluxlit_testkit::raw::echo_line(r),
    })
    .await;
    for fast in ENGINES {
        let gw = gateway_for(&rec, fast).await;
        let mut c = RawClient::connect(gw.addr).await;
        c.send(b"GET /coded HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let r = c.response(false).await.expect("coded response");
        assert_eq!(r.text(), "GZIPD", "{}", engine(fast));
        let te = r.all("transfer-encoding").join(", ").to_ascii_lowercase();
        assert_eq!(te, "gzip, chunked", "{}: the coding stays", engine(fast));

        c.send(b"GET /head-60k HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let r = c.response(false).await.expect("60 KiB head");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "ok"),
            "{}",
            engine(fast)
        );

        let mut c = RawClient::connect(gw.addr).await;
        c.send(b"GET /head-70k HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let r = c.response(false).await.expect("70 KiB head");
        assert_eq!(r.status, 502, "{}", engine(fast));
        // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 response is faulty framing.
        let mut c = RawClient::connect(gw.addr).await;
        c.send(b"GET /te-http10 HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let r = c
            .response(false)
            .await
            .expect("HTTP/1.0 with Transfer-Encoding");
        assert_eq!(r.status, 502, "{}", engine(fast));
        // The cause is logged, not sent: the 502 is the same whichever engine read it.
        let expected = format!(
            "FluxLit: the ui upstream at {} failed before sending a response (request id ",
            rec.addr
        );
        assert!(
            r.text().starts_with(&expected),
            "{}: {}",
            engine(fast),
            r.text()
        );
        gw.assert_engine(fast, 4, engine(fast));
    }
}

/// The fast path serves exactly the requests whose decision is a UI or API forward, whatever
/// else the gateway must do for them (the access log, metrics, the debug ring, the UI and API
/// rate limits, the upstream concurrency cap: it does those too).
#[tokio::test]
async fn the_fast_path_serves_ui_forwards_with_every_duty() {
    let rec = RecordingUpstream::start().await;
    let no_duty = start(
        Gateway::builder()
            .ui(upstream(rec.addr, "ui"))
            .api(ApiTarget::Upstream(upstream(rec.addr, "api"))),
        true,
    )
    .await;
    let limits = fluxlit_gateway::Limits {
        max_upstream_concurrency: 8,
        ..fluxlit_gateway::Limits::default()
    };
    let duties = [
        Gateway::builder().access_log(true, false),
        Gateway::builder().record_metrics(true),
        Gateway::builder().debug(std::sync::Arc::new(|| serde_json::json!({}))),
        Gateway::builder().limits(limits),
        Gateway::builder().limits(fluxlit_gateway::Limits {
            rate_ui: Some((1000, 1000)),
            rate_api: Some((1000, 1000)),
            ..fluxlit_gateway::Limits::default()
        }),
    ];
    // One connection each: once hyper has a connection, it serves the rest of it.
    for target in ["/ui", "/api/x", "/ui"] {
        let mut c = RawClient::connect(no_duty.addr).await;
        c.send(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await;
        assert_eq!(c.response(false).await.expect(target).status, 200);
    }
    let s = no_duty.served();
    assert_eq!(
        (s.h1, s.hyper),
        (3, 0),
        "no duty: UI and API on the fast path"
    );
    for (i, b) in duties.into_iter().enumerate() {
        let gw = start(
            b.ui(upstream(rec.addr, "ui"))
                .api(ApiTarget::Upstream(upstream(rec.addr, "api"))),
            true,
        )
        .await;
        let mut c = RawClient::connect(gw.addr).await;
        c.send(b"GET /ui HTTP/1.1\r\nHost: x\r\n\r\nGET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        assert_eq!(c.response(false).await.expect("ui").status, 200);
        assert_eq!(c.response(false).await.expect("api").status, 200);
        let s = gw.served();
        assert_eq!(
            (s.h1, s.hyper),
            (2, 0),
            "duty {i}: the fast path serves them"
        );
    }
}

/// `Connection` options are read by one tokenizer on both engines: a `Connection` field with
/// bytes outside visible ASCII (obs-text) names nothing, not even `close` (as hyper's parser
/// reads it); the options of another field are removed however they are spaced or spelled.
#[tokio::test]
async fn connection_options_with_odd_bytes_are_read_the_same_way() {
    let allowed: Vec<String> = ["x-a", "x-b", "x-c", "x-d"].map(String::from).to_vec();
    for fast in ENGINES {
        let rec = RecordingUpstream::start().await;
        let gw = start(
            Gateway::builder()
                .ui(upstream(rec.addr, "ui"))
                .header_policy(fluxlit_auth::HeaderPolicy::new(&[], &allowed)),
            fast,
        )
        .await;
        let mut c = RawClient::connect(gw.addr).await;
        c.send(
            b"GET /odd HTTP/1.1\r\nHost: x\r\nConnection: close, x-a\x80, X-B\r\nConnection: ,\tx-c , X-D\r\nX-A: 1\r\nX-B: 2\r\nx-c: 3\r\nX-D: 4\r\n\r\n",
        )
        .await;
        let r = c.response(false).await.expect("odd Connection");
        assert_eq!(r.text(), "GET /odd", "{}", engine(fast));
        assert!(
            r.get("connection").is_none(),
            "{}: no close read",
            engine(fast)
        );
        let seen = rec.wait_for(1).await;
        let has = |n: &str| seen[0].has(n);
        assert_eq!(
            [has("x-a"), has("x-b"), has("x-c"), has("x-d")],
            [true, true, false, false],
            "{}: {:?}",
            engine(fast),
            seen[0]
        );
    }
}

/// CONNECT (a tunnel to another host, RFC 9110 §9.3.6) is not offered: 501 from both engines,
/// the connection closed, nothing forwarded, in origin and authority form.
#[tokio::test]
async fn connect_is_refused() {
    for fast in ENGINES {
        let rec = RecordingUpstream::start().await;
        let mut gw = gateway_for(&rec, fast).await;
        gw.hyper_only(); // refusals are hyper's
        for target in ["/36", "127.0.0.1:22"] {
            let mut c = RawClient::connect(gw.addr).await;
            c.send(format!("CONNECT {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await;
            let r = c.response(false).await.expect("CONNECT answer");
            let want = if target.starts_with('/') { 501 } else { 400 };
            assert_eq!(r.status, want, "{} {target}", engine(fast));
            assert!(c.closed().await, "{} {target}: closed", engine(fast));
        }
        assert!(rec.requests().is_empty(), "{}", engine(fast));
    }
}

/// One measure of a request head on both engines: just under the limit (64 KiB by default) is
/// forwarded, just over it is 431 and reaches nothing, wherever the reads happened to end (the
/// differential test found the fast path accepting a head that hyper refused).
#[tokio::test]
async fn request_head_limit_is_the_same_on_both_engines() {
    for fast in ENGINES {
        let rec = RecordingUpstream::start().await;
        let gw = gateway_for(&rec, fast).await;
        for (kib, status) in [(60, 200), (65, 431), (100, 431)] {
            let mut c = RawClient::connect(gw.addr).await;
            let bulk = "v".repeat(kib * 1024);
            c.send(format!("GET /h{kib} HTTP/1.1\r\nHost: x\r\nX-Bulk: {bulk}\r\n\r\n").as_bytes())
                .await;
            let r = c.response(false).await.expect("answer");
            assert_eq!(r.status, status, "{} {kib} KiB", engine(fast));
        }
        let seen: Vec<String> = rec.requests().iter().map(|r| r.target.clone()).collect();
        assert_eq!(seen, ["/h60"], "{}", engine(fast));
    }
}
