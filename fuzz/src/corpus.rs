//! The checked-in corpus (`fuzz/corpus/<target>/`) and the known-panics list.

use crate::Target;
use std::path::{Path, PathBuf};

/// `fuzz/` in the source tree.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

pub fn dir(target: Target) -> PathBuf {
    root().join("corpus").join(target.name())
}

/// The corpus files of a target, sorted so a replay is always in the same order.
pub fn files(target: Target) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let d = dir(target);
    if !d.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(d)? {
        let path = entry?.path();
        if path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Corpus files (as `<target>/<file>`) that still panic because of a defect tracked
/// elsewhere, with the reason; from `fuzz/known-panics.txt` (`#` starts a comment).
pub fn known_panics() -> std::io::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(root().join("known-panics.txt"))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(char::is_whitespace) {
            Some((f, why)) => (f.to_string(), why.trim().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect())
}

/// `<target>/<file>` for a corpus path.
pub fn key(target: Target, path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    format!("{}/{}", target.name(), name.unwrap_or_default())
}
