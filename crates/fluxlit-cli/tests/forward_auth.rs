//! `auth_mode = forward` end to end (issue 13): the real binary, real Streamlit and the
//! example's FastAPI behind it, the test as the trusted front proxy (127.0.0.1). The proxy's
//! identity headers reach the API, and Streamlit (started with `--server.trustedUserHeaders`
//! mapped to them) shows them in `st.user` with no other app code; a request without the user
//! header gets 401.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use fluxlit_testkit::process;
use fluxlit_testkit::streamlit::RERUN_SCRIPT;
use futures_util::{SinkExt, StreamExt};
use support::{Fluxlit, request};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const APP: &str = "import streamlit as st\n\nst.markdown(\"USER=\" + str(st.user.get(\"email\")) + \";SUB=\" + str(st.user.get(\"sub\")))\n";

#[tokio::test]
async fn the_front_proxys_user_reaches_st_user_and_the_api() {
    let dir = support::example_copy();
    std::fs::write(dir.path().join("app.py"), APP).unwrap();
    let env = [
        ("FLUXLIT_AUTH_MODE", "forward"),
        ("FLUXLIT_AUTH_FORWARD_TRUSTED_CIDRS", "127.0.0.1"),
    ];
    let gw = Fluxlit::start_with_env(dir, &[], &env).await;
    gw.wait_ready("/api/readyz").await;
    let streamlit = gw.child_matching("streamlit");
    let cmdline = process::cmdline(streamlit);
    assert!(
        cmdline.contains("--server.trustedUserHeaders={")
            && cmdline.contains("\"x-forwarded-user\":\"sub\"")
            && cmdline.contains("\"x-forwarded-email\":\"email\""),
        "{cmdline}"
    );

    let (s, _, body) = request("GET", &gw.url("/api/request-info"), &[], vec![])
        .await
        .unwrap();
    assert_eq!(s, 401, "{body}");
    assert!(body.contains("Missing trusted user header"), "{body}");
    let (s, _, body) = request(
        "GET",
        &gw.url("/api/hello"),
        &[
            ("x-forwarded-user", "ada-sub"),
            ("x-forwarded-email", "ada@example.com"),
        ],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{body}");

    let mut req = format!("ws://{}/_stcore/stream", gw.addr)
        .into_client_request()
        .unwrap();
    for (k, v) in [
        ("sec-websocket-protocol", "streamlit"),
        ("x-forwarded-user", "ada-sub"),
        ("x-forwarded-email", "ada@example.com"),
    ] {
        req.headers_mut().insert(k, v.parse().unwrap());
    }
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("the handshake within 30 s")
    .expect("the handshake through the gateway");
    ws.send(Message::Binary(Bytes::from_static(&RERUN_SCRIPT)))
        .await
        .unwrap();
    let want = b"USER=ada@example.com;SUB=ada-sub";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("st.user on the page within 30 s")
            .expect("socket open")
            .unwrap();
        if let Message::Binary(b) = msg
            && b.windows(want.len()).any(|w| w == want)
        {
            break;
        }
    }
}

/// `fluxlit new --profile auth-ready` in forward mode, in headless Chromium that sends the
/// identity headers a front proxy would: the page shows the user from `st.user` and the data
/// its own call to the API got by passing the identity on (docs/auth.md, "Calls from
/// Streamlit to the API").
#[tokio::test]
async fn the_auth_ready_scaffold_works_behind_a_front_proxy_in_a_browser() {
    let dir = fluxlit_testkit::TempDir::new("auth-ready");
    std::fs::remove_dir(dir.path()).unwrap();
    let dest = dir.path().display().to_string();
    let parent = dir.path().parent().unwrap().to_path_buf();
    let out = support::command(&parent, &["new", &dest, "--profile", "auth-ready"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let env = [
        ("FLUXLIT_AUTH_MODE", "forward"),
        ("FLUXLIT_AUTH_FORWARD_TRUSTED_CIDRS", "127.0.0.1"),
    ];
    let gw = Fluxlit::start_with_env(dir, &[], &env).await;
    gw.wait_ready("/api/readyz").await;
    let mut browser = fluxlit_testkit::cdp::Browser::launch().await;
    let page = browser
        .open_with_headers(
            &gw.url("/"),
            serde_json::json!({"X-Forwarded-User": "ada-sub", "X-Forwarded-Email": "ada@example.com"}),
        )
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = browser.text(&page).await;
        if text.contains("ada@example.com") && text.contains("Grace") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page never showed the user and the API's data; it shows: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
