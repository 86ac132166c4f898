//! Example: a Rust program that embeds FluxLit's gateway with an axum `Router` mounted as the
//! API, in-process, next to a supervised Streamlit (the same `examples/hello/app.py`).
//!
//! The Streamlit app calls `{FLUXLIT_INTERNAL_API_BASE}/hello`; here that is answered by the
//! axum handler below, in the same process as the gateway.
//!
//! Run it (after `cargo xtask setup`): `cargo run -p embed-axum -- 8000`, then open
//! http://127.0.0.1:8000/.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use axum::{Json, Router, routing::get};
use fluxlit_gateway::{ApiService, ComponentState, Endpoint, Gateway, ReadinessCheck, Upstream};
use fluxlit_sidecar::{HealthProbe, Sidecar, SidecarSpec, SidecarState};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The API: `GET /hello` (mounted publicly at `/api/hello`).
pub fn api() -> Router {
    Router::new().route(
        "/hello",
        get(|| async {
            Json(serde_json::json!({
                "message": "Hello from the embedded axum API",
                "items": [{"id": 1, "name": "gateway", "language": "Rust"}, {"id": 2, "name": "api", "language": "Rust (axum)"}],
            }))
        }),
    )
}

/// Serves `script` with Streamlit (run by `python`) and [`api`] under `/api` on `listener`,
/// until `shutdown` resolves; then stops in order (HTTP drain, Streamlit, tunnels).
///
/// # Errors
/// Streamlit could not be started or did not become ready within 60 s, or the listener failed.
pub async fn serve(
    listener: TcpListener,
    python: &Path,
    script: &Path,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error>> {
    let bound = listener.local_addr()?;
    let port = fluxlit_sidecar::free_loopback_port()?;
    let mut spec = SidecarSpec::new("streamlit", python);
    spec.args = ["-m", "streamlit", "run"]
        .into_iter()
        .map(Into::into)
        .chain(std::iter::once(script.as_os_str().to_owned()))
        .chain(
            [
                "--server.headless",
                "true",
                "--server.address",
                "127.0.0.1",
                "--browser.gatherUsageStats",
                "false",
                "--server.port",
            ]
            .into_iter()
            .map(Into::into),
        )
        .chain(std::iter::once(port.to_string().into()))
        .collect();
    spec.env = vec![(
        "FLUXLIT_INTERNAL_API_BASE".into(),
        format!("{}/api", fluxlit_gateway::loopback_base(bound)).into(),
    )];
    spec.health = Some(HealthProbe::status_200(
        SocketAddr::from(([127, 0, 0, 1], port)),
        "/_stcore/health",
    ));

    // The gateway serves (readiness 503) while Streamlit starts.
    let (ready_tx, ready_rx) =
        watch::channel(ComponentState::Starting("Streamlit is starting".into()));
    let gateway = Gateway::builder()
        .api_service(ApiService::new(api()))
        .ui(Upstream::fixed("streamlit", Endpoint::loopback(port)))
        .readiness(ReadinessCheck::new("streamlit", ready_rx))
        .build()?;
    let mut streamlit = Sidecar::spawn(spec)?;
    let mut states = streamlit.state();
    tokio::spawn(async move {
        loop {
            let s = match &*states.borrow_and_update() {
                SidecarState::Ready => ComponentState::Ready,
                other => ComponentState::NotReady(format!("{other:?}")),
            };
            ready_tx.send_replace(s);
            if states.changed().await.is_err() {
                return;
            }
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gw = gateway.clone();
    let server = tokio::spawn(async move {
        gw.serve(listener, async {
            let _ = stop_rx.await;
        })
        .await
    });
    streamlit.wait_ready(Duration::from_secs(60)).await?;
    tokio::select! {
        () = shutdown => {}
        exit = streamlit.exited() => eprintln!("streamlit exited: {exit}"),
    }
    let _ = stop_tx.send(());
    server.await??;
    streamlit.stop().await;
    gateway.drain_tunnels(Duration::from_secs(2)).await;
    Ok(())
}
