//! The development loop's file watcher (`fluxlit dev --reload`): which edits restart what.
//!
//! [`watch`] watches a project directory with the `notify` crate (inotify on Linux, kqueue on
//! macOS) and reports debounced batches of [`Changes`]:
//! - a Python source (`*.py`) was created, written, renamed or removed: the API sidecar is
//!   restarted ([`crate::AppBuilder::reload_api`]); Streamlit reruns its own pages
//!   (`server.runOnSave`);
//! - a configuration file (`fluxlit.toml`, `pyproject.toml`, `.env` in the project directory, or
//!   the explicit config file) changed: the configuration is loaded again and the app restarted
//!   on the same listening socket.
//!
//! Ignored: anything under a directory whose name starts with `.` (`.venv`, `.git`, caches) or
//! is `__pycache__`, `venv`, `node_modules`, `target`, `build` or `dist`; those directories are
//! not even watched (a `.venv` holds thousands of directories, and inotify watches are a
//! per-user budget, `fs.inotify.max_user_watches`). Directories created at the top level after
//! the start are not watched.
//!
//! Debounce: a batch ends once no event arrived for [`QUIET`] (250 ms), or [`MAX_BATCH`] (2 s)
//! after its first event, so an editor's write-rename-chmod burst or a `git checkout` is one
//! restart. Events are passed through a bounded queue; when it overflows, the batch counts as
//! touching both kinds (never a lost restart, never unbounded memory).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Quiet time that ends a batch.
pub const QUIET: Duration = Duration::from_millis(250);
/// Longest batch, from its first event.
pub const MAX_BATCH: Duration = Duration::from_secs(2);
/// Events queued between the watcher thread and the debouncer.
const QUEUE: usize = 1024;

/// Directory names never watched (besides every name starting with `.`).
const IGNORED_DIRS: &[&str] = &[
    "__pycache__",
    "venv",
    "node_modules",
    "target",
    "build",
    "dist",
];

/// Configuration file names in the project directory.
const CONFIG_NAMES: &[&str] = &["fluxlit.toml", "pyproject.toml", ".env"];

/// One debounced batch: the changed paths of each kind (sorted, without duplicates).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Python sources.
    pub python: Vec<PathBuf>,
    /// Configuration files.
    pub config: Vec<PathBuf>,
}

/// A running watcher; dropping it stops watching and ends [`Watch::next`].
pub struct Watch {
    _watcher: notify::RecommendedWatcher,
    batches: mpsc::Receiver<Changes>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl Watch {
    /// The next batch; `None` once the watcher has stopped.
    pub async fn next(&mut self) -> Option<Changes> {
        self.batches.recv().await
    }
}

/// Starts watching `root` (see the module documentation); `config_file` is an explicit
/// configuration file (`--config`) that counts as configuration wherever it is (its directory
/// is watched too, without recursion, when it is outside `root`). Must be called inside a
/// tokio runtime.
///
/// # Errors
/// The watcher could not be created or `root` could not be watched (the `notify` error, e.g.
/// the inotify watch limit).
pub fn watch(root: &Path, config_file: Option<&Path>) -> Result<Watch, notify::Error> {
    let (tx, rx) = mpsc::channel::<notify::Event>(QUEUE);
    let overflow = Arc::new(AtomicBool::new(false));
    let flag = overflow.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res
            && tx.try_send(event).is_err()
        {
            flag.store(true, Ordering::Relaxed);
        }
    })?;
    watcher.watch(root, RecursiveMode::NonRecursive)?;
    for entry in std::fs::read_dir(root)?.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) && !ignored_dir(&entry.file_name()) {
            watcher.watch(&path, RecursiveMode::Recursive)?;
        }
    }
    let config_file = config_file.map(|c| root.join(c));
    if let Some(dir) = config_file.as_deref().and_then(Path::parent)
        && !dir.starts_with(root)
    {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    let (out, batches) = mpsc::channel(4);
    tokio::spawn(debounce(rx, out, overflow, root.to_path_buf(), config_file));
    Ok(Watch {
        _watcher: watcher,
        batches,
    })
}

async fn debounce(
    mut events: mpsc::Receiver<notify::Event>,
    out: mpsc::Sender<Changes>,
    overflow: Arc<AtomicBool>,
    root: PathBuf,
    config_file: Option<PathBuf>,
) {
    while let Some(first) = events.recv().await {
        let mut batch = Changes::default();
        classify(&first, &root, config_file.as_deref(), &mut batch);
        let end = tokio::time::Instant::now() + MAX_BATCH;
        loop {
            let quiet = tokio::time::Instant::now() + QUIET;
            match tokio::time::timeout_at(quiet.min(end), events.recv()).await {
                Ok(Some(e)) => classify(&e, &root, config_file.as_deref(), &mut batch),
                Ok(None) => return,
                Err(_) => break,
            }
        }
        if overflow.swap(false, Ordering::Relaxed) {
            batch.python.push(root.clone());
            batch.config.push(root.clone());
        }
        for list in [&mut batch.python, &mut batch.config] {
            list.sort();
            list.dedup();
        }
        if (!batch.python.is_empty() || !batch.config.is_empty()) && out.send(batch).await.is_err()
        {
            return;
        }
    }
}

fn ignored_dir(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with('.') || IGNORED_DIRS.contains(&name.as_ref())
}

/// Adds the event's relevant paths to `batch`.
fn classify(event: &notify::Event, root: &Path, config_file: Option<&Path>, batch: &mut Changes) {
    if !matches!(
        event.kind,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any
    ) {
        return;
    }
    for path in &event.paths {
        match kind_of(path, root, config_file) {
            Some(Kind::Python) => batch.python.push(path.clone()),
            Some(Kind::Config) => batch.config.push(path.clone()),
            None => {}
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Python,
    Config,
}

fn kind_of(path: &Path, root: &Path, config_file: Option<&Path>) -> Option<Kind> {
    if config_file == Some(path) {
        return Some(Kind::Config);
    }
    let rel = path.strip_prefix(root).ok()?;
    let mut parts: Vec<&std::ffi::OsStr> = rel.iter().collect();
    let name = parts.pop()?;
    if parts.iter().any(|d| ignored_dir(d)) {
        return None;
    }
    let name = name.to_string_lossy();
    if parts.is_empty() && CONFIG_NAMES.contains(&name.as_ref()) {
        return Some(Kind::Config);
    }
    (Path::new(name.as_ref()).extension() == Some("py".as_ref())).then_some(Kind::Python)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn what_counts_as_what() {
        let root = Path::new("/p");
        let k = |p: &str| kind_of(Path::new(p), root, Some(Path::new("/etc/app/fl.toml")));
        assert_eq!(k("/p/api.py"), Some(Kind::Python));
        assert_eq!(k("/p/pkg/models.py"), Some(Kind::Python));
        assert_eq!(k("/p/fluxlit.toml"), Some(Kind::Config));
        assert_eq!(k("/p/.env"), Some(Kind::Config));
        assert_eq!(k("/p/pyproject.toml"), Some(Kind::Config));
        assert_eq!(k("/etc/app/fl.toml"), Some(Kind::Config));
        assert_eq!(k("/p/sub/fluxlit.toml"), None, "only the project's own");
        assert_eq!(k("/p/.venv/lib/site.py"), None);
        assert_eq!(k("/p/pkg/__pycache__/m.py"), None);
        assert_eq!(k("/p/node_modules/x.py"), None);
        assert_eq!(k("/p/data.csv"), None);
        assert_eq!(k("/p/.fluxlit.pid"), None);
        assert_eq!(k("/elsewhere/a.py"), None);
    }

    #[tokio::test]
    async fn a_burst_of_edits_is_one_batch_and_ignored_dirs_are_silent() {
        let dir = std::env::temp_dir().join(format!("fluxlit-dev-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join(".venv/lib")).unwrap();
        std::fs::create_dir_all(dir.join("pkg")).unwrap();
        let dir = dir.canonicalize().unwrap();
        let mut w = watch(&dir, None).unwrap();
        for i in 0..5 {
            std::fs::write(dir.join("api.py"), format!("x = {i}\n")).unwrap();
            std::fs::write(dir.join("pkg/m.py"), format!("y = {i}\n")).unwrap();
        }
        std::fs::write(dir.join(".venv/lib/site.py"), "z = 1\n").unwrap();
        let batch = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("a batch")
            .expect("watching");
        assert_eq!(batch.python, vec![dir.join("api.py"), dir.join("pkg/m.py")]);
        assert!(batch.config.is_empty());
        std::fs::write(dir.join("fluxlit.toml"), "target = \"app.py\"\n").unwrap();
        let batch = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("a batch")
            .expect("watching");
        assert_eq!(batch.config, vec![dir.join("fluxlit.toml")]);
        // Nothing else arrives: the .venv write and the burst were not split into more batches.
        assert!(
            tokio::time::timeout(MAX_BATCH + QUIET, w.next())
                .await
                .is_err()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
