//! `auth_mode = forward` (issue 13): identity from a trusted front proxy, on both engines, in
//! front of a recording upstream, raw bytes on the wire. From the proxy (the client here is
//! 127.0.0.1), the configured identity headers reach the UI hop, the WebSocket upgrade and the
//! API hop, and every other identity header is stripped; without the user header the answer is
//! 401, from any other peer 403, and nothing reaches the upstream; the health checks stay
//! public. With forward auth on, the HTTP/1.1 fast path hands every UI request to the hyper
//! engine, which authenticates, so the check cannot be bypassed by the engine that serves it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use fluxlit_gateway::{ApiTarget, ForwardAuth, Gateway};
use fluxlit_testkit::raw::{RawClient, RecordingUpstream};
use http::HeaderName;
use serde_json::Value;
use support::{ENGINES, engine, start_on, up_at, within};

const UPGRADE: &str = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

fn forward_auth(trusted: &str) -> ForwardAuth {
    ForwardAuth::new(
        vec![fluxlit_config::parse_ip_net(trusted).unwrap()],
        HeaderName::from_static("x-forwarded-user"),
        vec![HeaderName::from_static("x-forwarded-email")],
        false,
    )
}

/// `GET path` with `fields` (an upgrade when `upgrade`), closing unless upgrading.
fn request(path: &str, upgrade: bool, fields: &str) -> Vec<u8> {
    let end = if upgrade {
        UPGRADE
    } else {
        "Connection: close\r\n"
    };
    format!("GET {path} HTTP/1.1\r\nHost: app.example\r\n{fields}{end}\r\n").into_bytes()
}

const HOPS: [(&str, bool, bool); 3] = [
    ("/page", false, false),
    ("/_stcore/stream", true, false),
    ("/api/items", false, true),
];

#[tokio::test]
async fn identity_from_the_trusted_proxy_only_on_both_engines() {
    let identity = "X-Forwarded-User: ada\r\nX-Forwarded-Email: ada@example.com\r\nX-Remote-User: mallory\r\nX-Auth-Request-User: mallory\r\n";
    for fast in ENGINES {
        let rec = RecordingUpstream::start().await;
        let builder = Gateway::builder()
            .ui(up_at(rec.addr, "ui"))
            .api(ApiTarget::Upstream(up_at(rec.addr, "api")))
            .forward_auth(forward_auth("127.0.0.1"));
        let gw = start_on(builder, fast).await;
        let mut n = 0;
        for (path, upgrade, _api) in HOPS {
            let ctx = format!("{} / trusted proxy / {path}", engine(fast));
            let before = gw.served();
            let mut c = RawClient::connect(gw.addr).await;
            c.send(&request(path, upgrade, identity)).await;
            let resp = within(&ctx, c.response(false)).await.unwrap();
            assert_eq!(resp.status, 200, "{ctx}: {}", resp.text());
            n += 1;
            let seen = rec.wait_for(n).await.pop().unwrap();
            assert_eq!(seen.all("x-forwarded-user"), ["ada"], "{ctx}");
            assert_eq!(seen.all("x-forwarded-email"), ["ada@example.com"], "{ctx}");
            assert!(!seen.has("x-remote-user"), "{ctx}: not a forward header");
            assert!(
                !seen.has("x-auth-request-user"),
                "{ctx}: not a forward header"
            );
            let after = gw.served();
            assert_eq!(
                (after.h1 - before.h1, after.hyper - before.hyper),
                (0, 1),
                "{ctx}: the hyper engine authenticates every request"
            );
        }

        // No user: 401, nothing upstream. Blank counts as none.
        for (path, upgrade, _) in HOPS {
            for fields in [
                "X-Forwarded-Email: ada@example.com\r\n",
                "X-Forwarded-User:  \r\n",
            ] {
                let ctx = format!("{} / no user / {path} / {fields:?}", engine(fast));
                let mut c = RawClient::connect(gw.addr).await;
                c.send(&request(path, upgrade, fields)).await;
                let resp = within(&ctx, c.response(false)).await.unwrap();
                assert_eq!(resp.status, 401, "{ctx}: {}", resp.text());
                let body: Value = serde_json::from_slice(&resp.body).unwrap();
                assert_eq!(body["detail"], "Missing trusted user header", "{ctx}");
            }
        }
        // Public: the health checks, with no identity at all.
        for path in ["/_stcore/health", "/api/healthz"] {
            let mut c = RawClient::connect(gw.addr).await;
            c.send(&request(path, false, "")).await;
            let resp = within(path, c.response(false)).await.unwrap();
            assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        }
        n += 1; // /_stcore/health reached the upstream
        assert_eq!(
            rec.wait_for(n).await.len(),
            n,
            "{}: only the health check went up",
            engine(fast)
        );
        assert!(!rec.requests()[n - 1].has("x-forwarded-user"));
        gw.stop().await;
    }
}

#[tokio::test]
async fn any_other_peer_gets_403_and_its_identity_never_passes_on_both_engines() {
    let identity = "X-Forwarded-User: mallory\r\nX-Forwarded-Email: mallory@example.com\r\n";
    for fast in ENGINES {
        let rec = RecordingUpstream::start().await;
        let builder = Gateway::builder()
            .ui(up_at(rec.addr, "ui"))
            .api(ApiTarget::Upstream(up_at(rec.addr, "api")))
            // The proxy is 127.0.0.2; this client is 127.0.0.1.
            .forward_auth(forward_auth("127.0.0.2"));
        let gw = start_on(builder, fast).await;
        for (path, upgrade, _) in HOPS {
            let ctx = format!("{} / untrusted peer / {path}", engine(fast));
            let mut c = RawClient::connect(gw.addr).await;
            c.send(&request(path, upgrade, identity)).await;
            let resp = within(&ctx, c.response(false)).await.unwrap();
            assert_eq!(resp.status, 403, "{ctx}: {}", resp.text());
            let body: Value = serde_json::from_slice(&resp.body).unwrap();
            assert_eq!(body["detail"], "Untrusted client for forward-auth", "{ctx}");
        }
        // Streamlit's health check passes, without the spoofed identity.
        let mut c = RawClient::connect(gw.addr).await;
        c.send(&request("/_stcore/health", false, identity)).await;
        let resp = within("health", c.response(false)).await.unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
        let seen = rec.wait_for(1).await;
        assert_eq!(
            seen.len(),
            1,
            "{}: only the health check went up",
            engine(fast)
        );
        assert!(!seen[0].has("x-forwarded-user"));
        assert!(!seen[0].has("x-forwarded-email"));
        gw.stop().await;
    }
}

/// Forward auth is a reason of the one "needs the hyper engine" decision
/// (`decide::fast_forward`), so it holds whatever else the fast path now does itself: with the
/// access log and metrics on (which the fast path serves since issue 15), a UI request that the
/// fast path takes without forward auth is, with it, handed to hyper and refused there (401
/// without the user header, 403 from an untrusted peer), and nothing reaches the upstream.
#[tokio::test]
async fn forward_auth_keeps_ui_requests_off_the_fast_path_with_observability_on() {
    let observed = || {
        Gateway::builder()
            .access_log(true, false)
            .record_metrics(true)
    };
    let page = request("/page", false, "");
    // The control: the same configuration without forward auth serves it on the fast path.
    let rec = RecordingUpstream::start().await;
    let gw = start_on(observed().ui(up_at(rec.addr, "ui")), true).await;
    let mut c = RawClient::connect(gw.addr).await;
    c.send(&page).await;
    let resp = within("control", c.response(false)).await.unwrap();
    assert_eq!(resp.status, 200, "control: {}", resp.text());
    let s = gw.served();
    assert_eq!((s.h1, s.hyper), (1, 0), "control: the fast path's ({s:?})");
    gw.stop().await;

    for (trusted, fields, status, detail) in [
        ("127.0.0.1", "", 401, "Missing trusted user header"),
        (
            "127.0.0.2",
            "X-Forwarded-User: mallory\r\n",
            403,
            "Untrusted client for forward-auth",
        ),
    ] {
        let ctx = format!("forward auth from {trusted}, fields {fields:?}");
        let rec = RecordingUpstream::start().await;
        let builder = observed()
            .ui(up_at(rec.addr, "ui"))
            .forward_auth(forward_auth(trusted));
        let gw = start_on(builder, true).await;
        let mut c = RawClient::connect(gw.addr).await;
        c.send(&request("/page", false, fields)).await;
        let resp = within(&ctx, c.response(false)).await.unwrap();
        assert_eq!(resp.status, status, "{ctx}: {}", resp.text());
        let body: Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(body["detail"], detail, "{ctx}");
        let s = gw.served();
        assert_eq!((s.h1, s.hyper), (0, 1), "{ctx}: hyper's ({s:?})");
        assert!(rec.requests().is_empty(), "{ctx}: nothing went up");
        gw.stop().await;
    }
}
