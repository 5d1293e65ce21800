//! Small shared helpers: atomic file writes.

use crate::{LabError, Result};
use std::io::Write;
use std::path::Path;

/// Write `bytes` to `path` atomically: a temp file in the same folder, fsync, rename.
/// A reader sees either the old file or the whole new one, never a torn write.
///
/// The file gets the permissions of the one it replaces, else 0644 (a temp file is created
/// 0600, and renaming it left every report and tuning file readable by its owner alone). `path`
/// being a symbolic link is refused: the rename would replace the link, not the file it names.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| LabError::io(dir, e))?;
    let old = std::fs::symlink_metadata(path).ok();
    if old.as_ref().is_some_and(|m| m.file_type().is_symlink()) {
        return Err(LabError::invalid(
            path.display().to_string(),
            "is a symbolic link; expected a regular file or nothing (writing would replace the \
             link, not its target): write to the target's own path",
        ));
    }
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| LabError::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| LabError::io(path, e))?;
    let perms = match &old {
        Some(m) => Some(m.permissions()),
        None => default_permissions(),
    };
    if let Some(p) = perms {
        tmp.as_file()
            .set_permissions(p)
            .map_err(|e| LabError::io(path, e))?;
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| LabError::io(path, e))?;
    tmp.persist(path).map_err(|e| LabError::io(path, e.error))?;
    Ok(())
}

/// What a new file written by `write_atomic` gets: rw-r--r-- (the usual umask's result); elsewhere
/// than Unix, what the temp file was created with.
fn default_permissions() -> Option<std::fs::Permissions> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        Some(std::fs::Permissions::from_mode(0o644))
    }
    #[cfg(not(unix))]
    {
        None
    }
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

    #[cfg(unix)]
    #[test]
    fn atomic_write_keeps_the_files_mode_and_refuses_a_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // New: world-readable like any file the user writes (a temp file alone is 0600).
        let p = dir.path().join("report.json");
        write_atomic(&p, b"1").unwrap();
        assert_eq!(mode(&p), 0o644);
        // Existing: its own mode survives the replacement.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o664)).unwrap();
        write_atomic(&p, b"2").unwrap();
        assert_eq!(
            (mode(&p), std::fs::read(&p).unwrap()),
            (0o664, b"2".to_vec())
        );
        // A link: refused by name, neither the link nor its target touched.
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        let e = write_atomic(&link, b"3").unwrap_err().to_string();
        assert!(
            e.contains("link.json") && e.contains("symbolic link"),
            "{e}"
        );
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&p).unwrap(), b"2");
    }
}
