//! The pidfile: written atomically once the sidecars are ready, removed when the app stops
//! (also when its future is dropped) only if it still names this process.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A written pidfile; dropping it removes the file if it still holds this process's id
/// (another instance may have taken it over).
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
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        let ours =
            std::fs::read_to_string(&self.path).is_ok_and(|t| t.trim() == self.pid.to_string());
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove the pidfile");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("fluxlit-pidfile-{}-{name}", std::process::id()))
    }

    #[test]
    fn written_then_removed_on_drop() {
        let dir = scratch("own");
        let path = dir.join("run/app.pid");
        let p = Pidfile::write(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop(p);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_file_taken_over_by_another_process_is_left_alone() {
        let dir = scratch("taken");
        let path = dir.join("app.pid");
        let p = Pidfile::write(&path).unwrap();
        std::fs::write(&path, "1\n").unwrap();
        drop(p);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
        let _ = std::fs::remove_dir_all(dir);
    }
}
