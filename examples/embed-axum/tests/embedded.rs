//! The embedded example really serves: the axum API in-process, Streamlit through the proxy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fluxlit_testkit::{eventually, repo_root, venv_python};

/// `GET path`: `None` when nothing answers (yet), a panic when a response starts but its
/// body cannot be read, and every step bounded.
async fn get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use http_body_util::{BodyExt, Empty};
    const STEP: Duration = Duration::from_secs(20);
    let stream = tokio::time::timeout(STEP, tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let (mut tx, conn) = tokio::time::timeout(
        STEP,
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)),
    )
    .await
    .ok()?
    .ok()?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::<bytes::Bytes>::new())
        .ok()?;
    let resp = tokio::time::timeout(STEP, tx.send_request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(STEP, resp.into_body().collect())
        .await
        .unwrap_or_else(|_| panic!("GET {path}: {status} but no body within {STEP:?}"))
        .unwrap_or_else(|e| panic!("GET {path}: {status} but the body failed: {e}"))
        .to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test]
async fn axum_api_and_streamlit_share_one_port() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let python = venv_python();
    let script = repo_root().join("examples/hello/app.py");
    let server = tokio::spawn(async move {
        embed_axum::serve(listener, &python, &script, async {
            let _ = stopped.await;
        })
        .await
        .map_err(|e| e.to_string())
    });
    eventually(Duration::from_secs(90), "readyz 200", || async move {
        (get(addr, "/api/readyz").await?.0 == 200).then_some(())
    })
    .await;
    let (s, body) = get(addr, "/api/hello").await.unwrap();
    assert_eq!(s, 200);
    assert!(body.contains("Hello from the embedded axum API"), "{body}");
    let (s, body) = get(addr, "/_stcore/health").await.unwrap();
    assert_eq!((s, body.as_str()), (200, "ok"));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("stops in time")
        .unwrap()
        .unwrap();
}
