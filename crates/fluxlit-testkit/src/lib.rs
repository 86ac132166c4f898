//! Test support for FluxLit (a dev-dependency only; depends on no workspace crate).
//!
//! - [`eventually`]: wait for a condition with a bounded timeout, never a fixed sleep.
//! - [`upstream`]: a real HTTP/WebSocket upstream with scripted behaviours, for transparency tests.
//! - [`raw`]: a recording raw-socket HTTP/1.1 upstream and a strict raw client, for edge cases.
//! - [`process`]: looking at processes (alive, children, process groups).
//! - [`redis`]: a real `redis-server` per test on a free port, stoppable and restartable.
//! - [`cdp`]: a minimal Chrome DevTools Protocol driver for Debian's headless `chromium`.
//! - [`repo_root`] / [`venv_python`]: where the workspace and its Python venv are.

pub mod cdp;
pub mod idp;
pub mod process;
pub mod raw;
pub mod redis;
pub mod streamlit;
pub mod upstream;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Polls `check` every 25 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|p| p.join("rust-toolchain.toml").exists())
        .map_or(here.clone(), PathBuf::from)
}

/// The Python interpreter of the project's venv (`<repo>/.venv/bin/python`), which
/// `cargo xtask setup` creates with the pinned Streamlit, FastAPI and uvicorn.
///
/// # Panics
/// When it does not exist, with the command that creates it: end-to-end tests must not pass
/// silently without their real parts.
pub fn venv_python() -> PathBuf {
    let p = repo_root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask setup` first (it creates the venv with Streamlit)",
        p.display()
    );
    p
}

/// A fresh, empty temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/fluxlit-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "fluxlit-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
