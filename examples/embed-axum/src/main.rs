//! `cargo run -p embed-axum -- [PORT]`: the embedded-gateway example on 127.0.0.1:PORT
//! (default 8000). Python: `$FLUXLIT_STREAMLIT_PYTHON`, else the repository's `.venv`.

use std::path::PathBuf;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let port: u16 = std::env::args().nth(1).map_or(Ok(8000), |p| p.parse())?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = std::env::var_os("FLUXLIT_STREAMLIT_PYTHON")
        .map_or_else(|| root.join(".venv/bin/python"), PathBuf::from);
    let script = root.join("examples/hello/app.py");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("open http://127.0.0.1:{port}/ (Ctrl-C to stop)");
    embed_axum::serve(listener, &python, &script, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
