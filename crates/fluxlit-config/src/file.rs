//! Reading the project file: `fluxlit.toml` (top-level keys) or `[tool.fluxlit]` in
//! `pyproject.toml`, keeping each key's line for error messages and provenance.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::value::Raw;
use crate::{Origin, Problem};

/// A project file that was found and parsed.
pub(crate) struct ProjectFile {
    pub(crate) path: PathBuf,
    /// Another candidate that exists but lost (pyproject.toml when fluxlit.toml exists).
    pub(crate) shadowed: Option<PathBuf>,
    /// (key as written, value, 1-based line)
    pub(crate) entries: Vec<(String, Raw, Option<usize>)>,
}

type SpannedTable = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

#[derive(Deserialize)]
struct Pyproject {
    #[serde(default)]
    tool: Option<PyTool>,
}

#[derive(Deserialize)]
struct PyTool {
    #[serde(default)]
    fluxlit: Option<SpannedTable>,
}

fn line_of(src: &str, offset: usize) -> usize {
    src.as_bytes()
        .iter()
        .take(offset)
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn file_problem(path: &Path, line: Option<usize>, expected: String, fix: &str) -> Problem {
    Problem {
        key: "<file>".into(),
        value: None,
        origin: Origin::File {
            path: path.to_path_buf(),
            line,
        },
        expected,
        fix: fix.into(),
    }
}

/// Finds and reads the project file. `explicit` (from `--config` / `FLUXLIT_CONFIG`) must exist;
/// otherwise `fluxlit.toml` wins over `pyproject.toml`, and neither is fine.
pub(crate) fn read_project_file(
    cwd: &Path,
    explicit: Option<&Path>,
    problems: &mut Vec<Problem>,
) -> Option<ProjectFile> {
    let (path, shadowed) = match explicit {
        Some(p) => (cwd.join(p), None),
        None => {
            let flux = cwd.join("fluxlit.toml");
            let py = cwd.join("pyproject.toml");
            if flux.is_file() {
                let shadowed = py.is_file().then_some(py);
                (flux, shadowed)
            } else if py.is_file() {
                (py, None)
            } else {
                return None;
            }
        }
    };
    let src = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) => {
            problems.push(file_problem(
                &path,
                None,
                format!("a readable UTF-8 TOML file ({e})"),
                "check the path given by --config or FLUXLIT_CONFIG, and the file's permissions",
            ));
            return None;
        }
    };
    let is_pyproject = path.file_name().is_some_and(|n| n == "pyproject.toml");
    let table: Result<Option<SpannedTable>, toml::de::Error> = if is_pyproject {
        toml::from_str::<Pyproject>(&src).map(|p| p.tool.and_then(|t| t.fluxlit))
    } else {
        toml::from_str::<SpannedTable>(&src).map(Some)
    };
    let table = match table {
        Ok(Some(t)) => t,
        Ok(None) => return None,
        Err(e) => {
            let line = e.span().map(|s| line_of(&src, s.start));
            problems.push(file_problem(
                &path,
                line,
                format!("valid TOML: {}", e.message()),
                "fix the TOML syntax at the position shown",
            ));
            return None;
        }
    };
    let entries = table
        .into_iter()
        .map(|(k, v)| {
            let line = line_of(&src, k.span().start);
            (k.into_inner(), Raw::Toml(v.into_inner()), Some(line))
        })
        .collect();
    Some(ProjectFile {
        path,
        shadowed,
        entries,
    })
}
