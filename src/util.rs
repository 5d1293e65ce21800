//! Small shared helpers: atomic file writes.

use crate::{LabError, Result};
use std::io::Write;
use std::path::Path;

/// Write `bytes` to `path` atomically: a temp file in the same folder, fsync, rename.
/// A reader sees either the old file or the whole new one, never a torn write.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| LabError::io(dir, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| LabError::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| LabError::io(path, e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| LabError::io(path, e))?;
    tmp.persist(path).map_err(|e| LabError::io(path, e.error))?;
    Ok(())
}

/// Whether an optional input file is there: `false` when nothing exists at `path`, `true` for a
/// regular file (through links), and an error naming it for anything else (a directory, a
/// socket), which `is_file()` would have taken for "absent" and silently skipped.
pub fn optional_file(path: &Path) -> Result<bool> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(true),
        Ok(_) => Err(LabError::invalid(
            path.display().to_string(),
            "is not a regular file (a directory?); expected a file or nothing at this path",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(LabError::invalid(path.display().to_string(), e.to_string())),
    }
}

/// Read and parse a JSON file; the error names the file (unreadable, or not the JSON expected).
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| LabError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| LabError::Json {
        path: path.into(),
        source: e,
    })
}

/// Serialize `value` as pretty JSON and write it atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut s = serde_json::to_string_pretty(value).map_err(|e| LabError::Json {
        path: path.into(),
        source: e,
    })?;
    s.push('\n');
    write_atomic(path, s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/a.json");
        write_atomic(&p, b"first version, longer").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1, "a temp file was left behind");
    }
}
