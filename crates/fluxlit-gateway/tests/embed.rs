//! The gateway mounted in a program of its own: `Gateway::handle` takes any body (`Full` here,
//! as a tower/axum server or a `oneshot` test would pass), applies the same decision as the
//! served engines, and forwards through the pool. Runs on a multi-thread runtime.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use fluxlit_gateway::{ApiTarget, ClientHop, Gateway};
use fluxlit_testkit::raw::RecordingUpstream;
use http::Request;
use http_body_util::{BodyExt, Full};

mod support;

fn hop() -> ClientHop {
    ClientHop {
        peer: "127.0.0.1:40000".parse().unwrap(),
        local: "127.0.0.1:8000".parse().unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_takes_any_body_and_applies_the_same_decision() {
    let rec = RecordingUpstream::start().await;
    let gw = Gateway::builder()
        .ui(support::up_at(rec.addr, "ui"))
        .api(ApiTarget::Upstream(support::up_at(rec.addr, "api")))
        .build()
        .unwrap();

    // A UI request with a body, identity and hop-by-hop fields.
    let req = Request::post("/page")
        .header("host", "app.example")
        .header("x-remote-user", "admin")
        .header("connection", "x-drop")
        .header("x-drop", "1")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let resp = gw.handle(req, &hop()).await;
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"POST /page");
    let seen = rec.wait_for(1).await;
    assert_eq!(seen[0].body, b"hello");
    assert_eq!(seen[0].all("content-length"), ["5"]);
    assert!(!seen[0].has("x-remote-user"), "{:?}", seen[0]);
    assert!(!seen[0].has("x-drop"), "{:?}", seen[0]);

    // The API, mount stripped.
    let req = Request::get("/api/items?x=1")
        .header("host", "app.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = gw.handle(req, &hop()).await;
    assert_eq!(resp.status(), 200);
    let seen = rec.wait_for(2).await;
    assert_eq!(seen[1].target, "/items?x=1");

    // Refusals: a dot segment, ambiguous framing, the gateway's own path.
    for (req, status) in [
        (Request::get("/a/../api/x"), 400),
        (
            Request::post("/x").header("transfer-encoding", "gzip, chunked"),
            501,
        ),
        (Request::get("/__fluxlit/debug"), 404),
    ] {
        let req = req
            .header("host", "app.example")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = gw.handle(req, &hop()).await;
        assert_eq!(resp.status(), status);
    }
    assert_eq!(
        rec.requests().len(),
        2,
        "no refused request reached the upstream"
    );
    let served = gw.served();
    assert_eq!((served.h1, served.hyper), (0, 5));
}
