//! `fluxlit dev --reload` (issue 14): editing the API's source restarts the API sidecar while
//! the gateway and Streamlit keep running, and the new answer comes through the gateway within
//! a bound; editing fluxlit.toml restarts the app on the same port with the new settings; no
//! process is orphaned; Streamlit reruns pages on save (`--server.runOnSave true`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use fluxlit_testkit::{eventually, process};
use nix::sys::signal::Signal;
use support::{Fluxlit, get};

/// Generous for a loaded CI machine: a restart of uvicorn takes about a second.
const RELOAD_BOUND: Duration = Duration::from_secs(45);

/// Waits (bounded by [`RELOAD_BOUND`]) until `url` answers 200 with `text` in its body.
async fn wait_for_answer(url: String, text: &'static str, what: &str) {
    eventually(RELOAD_BOUND, what, || {
        let url = url.clone();
        async move {
            let (s, _, b) = get(&url).await.ok()?;
            (s == 200 && b.contains(text)).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn editing_the_api_restarts_it_and_editing_the_config_restarts_the_app() {
    let mut gw =
        Fluxlit::start_subcommand(support::example_copy(), "dev", &["--reload"], &[]).await;
    gw.wait_ready("/api/readyz").await;
    let (s, _, body) = get(&gw.url("/api/hello")).await.unwrap();
    assert_eq!(s, 200);
    assert!(
        body.contains("Hello from the FluxLit example API"),
        "{body}"
    );
    let streamlit = gw.child_matching("streamlit");
    let api = gw.child_matching("uvicorn");
    assert!(
        process::cmdline(streamlit).contains("--server.runOnSave true"),
        "{}",
        process::cmdline(streamlit)
    );

    // 1. The API's source.
    let api_py = gw.dir.path().join("api.py");
    let source = std::fs::read_to_string(&api_py).unwrap();
    std::fs::write(
        &api_py,
        source.replace("Hello from the FluxLit example API", "Hello after a reload"),
    )
    .unwrap();
    wait_for_answer(
        gw.url("/api/hello"),
        "Hello after a reload",
        "the new answer through the gateway",
    )
    .await;
    assert!(
        process::group_members(api).is_empty(),
        "the old API process group is gone: {:?}",
        process::group_members(api)
    );
    assert_eq!(
        gw.child_matching("streamlit"),
        streamlit,
        "Streamlit kept running"
    );
    assert_eq!(gw.children().len(), 2, "{:?}", gw.children());

    // 2. The configuration: the API moves to /backend on the same port.
    let toml = gw.dir.path().join("fluxlit.toml");
    let mut config = std::fs::read_to_string(&toml).unwrap();
    config.insert_str(0, "api_mount_path = \"/backend\"\n");
    std::fs::write(&toml, config).unwrap();
    wait_for_answer(
        gw.url("/backend/hello"),
        "Hello after a reload",
        "the API under /backend",
    )
    .await;
    assert!(
        process::group_members(streamlit).is_empty(),
        "the old Streamlit is gone"
    );
    eventually(Duration::from_secs(10), "two sidecars", || {
        let n = gw.children().len();
        async move { (n == 2).then_some(()) }
    })
    .await;
    let sidecars: Vec<u32> = gw.children().into_iter().map(|(p, _)| p).collect();

    gw.signal(Signal::SIGTERM);
    assert_eq!(gw.wait_exit(Duration::from_secs(30)).await.code(), Some(0));
    for s in sidecars {
        assert!(process::group_members(s).is_empty(), "sidecar {s} orphaned");
    }
}

#[tokio::test]
async fn an_invalid_reload_scope_is_a_usage_error() {
    let dir = support::example_copy();
    let out = support::command(dir.path(), &["dev", "--reload", "--reload-scope", "all"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "--reload-scope must be 'gateway' or 'full'."
    );
}
