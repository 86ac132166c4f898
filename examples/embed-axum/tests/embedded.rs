//! The embedded example really serves: the axum API in-process, Streamlit through the proxy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fluxlit_testkit::{eventually, repo_root, venv_python};

async fn get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::<bytes::Bytes>::new())
        .ok()?;
    let resp = tx.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
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
