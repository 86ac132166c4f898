//! The pidfile: written atomically once the sidecars are ready, removed on shutdown only if it
//! still names this process.

use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub(crate) struct Pidfile {
    path: PathBuf,
    pid: u32,
}

impl Pidfile {
    /// Writes `"<pid>\n"` to `path` (parent directories created) through a temporary file and
    /// a rename, so readers never see a partial file.
    pub(crate) fn write(path: &Path) -> std::io::Result<Self> {
        let pid = std::process::id();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension(format!("tmp.{pid}"));
        {
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{pid}")?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        tracing::debug!(path = %path.display(), pid, "pidfile written");
        Ok(Self {
            path: path.to_path_buf(),
            pid,
        })
    }

    /// Removes the file if it still holds this process's id (another instance may have taken
    /// it over).
    pub(crate) fn remove(self) {
        let ours =
            std::fs::read_to_string(&self.path).is_ok_and(|t| t.trim() == self.pid.to_string());
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove the pidfile");
        }
    }
}
