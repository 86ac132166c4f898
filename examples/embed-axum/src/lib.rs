//! Example: a Rust program that embeds FluxLit with an axum `Router` mounted as the API,
//! in-process, next to a supervised Streamlit (the same `examples/hello/app.py`).
//!
//! The Streamlit app calls `{FLUXLIT_INTERNAL_API_BASE}/hello`; here that is answered by the
//! axum handler below, in the same process as the gateway. Everything else — readiness,
//! restarts, housekeeping, the ordered stop — is [`fluxlit::App`], exactly as `fluxlit run`.
//!
//! Run it (after `cargo xtask setup`): `cargo run -p embed-axum -- 8000`, then open
//! http://127.0.0.1:8000/.

use std::path::Path;

use axum::{Json, Router, routing::get};
use tokio::net::TcpListener;

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
/// until `shutdown` resolves; then stops in order (HTTP drain, Streamlit, tunnels). Settings
/// not given here come from the working directory and the environment, as for `fluxlit run`;
/// no pidfile is written.
///
/// # Errors
/// [`fluxlit::AppError`]: invalid settings, or Streamlit could not be started or was not ready
/// within `sidecar_start_timeout_s`. A Streamlit that exits on its own is an error too.
pub async fn serve(
    listener: TcpListener,
    python: &Path,
    script: &Path,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error>> {
    let app = fluxlit::App::builder()
        .python(python)
        .target(script)
        .api_service(fluxlit::ApiService::new(api()))
        .pidfile(None)
        .build()?;
    match app.run(listener, shutdown).await? {
        fluxlit::Exit::Shutdown => Ok(()),
        other => Err(other.to_string().into()),
    }
}
