//! Small shared helpers: atomic file writes, paths in JSON.

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

/// Syncs every file directly in `dir` to disk, before a rename publishes the folder: a folder
/// renamed into place after a power loss could otherwise hold empty files.
pub fn sync_files_in(dir: &Path) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| LabError::io(dir, e))?;
    for e in rd {
        let p = e.map_err(|e| LabError::io(dir, e))?.path();
        if p.is_file() {
            std::fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| LabError::io(&p, e))?;
        }
    }
    Ok(())
}

/// Renames `from` to `to`, then syncs the folder holding `to`: the rename itself is durable only
/// once that folder is (Linux: fsync on a directory opened read-only; elsewhere best effort, so a
/// failed sync is no error). The error, if any, is the rename's, naming `to`.
pub fn rename_durably(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| LabError::io(to, e))?;
    let parent = match to.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(parent) {
        let _ = d.sync_all();
    }
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

/// Read and parse a JSON file; the error names the file (unreadable, or not the JSON expected,
/// or a key given twice in one object: `duplicate_json_key`).
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| LabError::io(path, e))?;
    let v = serde_json::from_str(&text).map_err(|e| LabError::Json {
        path: path.into(),
        source: e,
    })?;
    refuse_duplicate_keys(path, text.as_bytes())?;
    Ok(v)
}

/// The error for a JSON file with a key given twice in one object (`duplicate_json_key`).
pub fn refuse_duplicate_keys(path: &Path, json: &[u8]) -> Result<()> {
    match duplicate_json_key(json) {
        Some(key) => Err(LabError::invalid(
            path.display().to_string(),
            format!(
                "key '{key}' appears twice in one object; which one is meant is not written \
                 down (serde_json keeps the last, a struct refuses it, Python's json the last): \
                 expected each key once"
            ),
        )),
        None => Ok(()),
    }
}

/// The first key that appears twice in one object of the JSON `text`, as a path from the root
/// ("quantization_config.group_size", "a[2].b"); None when every key is unique, and for text that
/// is not JSON (the parse that reads it names that). Parsers disagree on duplicates (serde_json
/// and Python keep the last, a typed struct refuses), so a file holding one is ambiguous: a
/// quantize config saying group_size twice, a safetensors header naming a tensor twice.
pub fn duplicate_json_key(text: &[u8]) -> Option<String> {
    use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
    use std::cell::RefCell;
    struct Walk<'a> {
        found: &'a RefCell<Option<String>>,
        path: String,
    }
    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(
            self,
            d: D,
        ) -> std::result::Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                let path = if self.path.is_empty() {
                    key.clone()
                } else {
                    format!("{}.{key}", self.path)
                };
                if !seen.insert(key) && self.found.borrow().is_none() {
                    *self.found.borrow_mut() = Some(path.clone());
                }
                map.next_value_seed(Walk {
                    found: self.found,
                    path,
                })?;
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
            let mut i = 0;
            while seq
                .next_element_seed(Walk {
                    found: self.found,
                    path: format!("{}[{i}]", self.path),
                })?
                .is_some()
            {
                i += 1;
            }
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> std::result::Result<(), E> {
            Ok(())
        }
    }
    let found = RefCell::new(None);
    let mut d = serde_json::Deserializer::from_slice(text);
    Walk {
        found: &found,
        path: String::new(),
    }
    .deserialize(&mut d)
    .ok()?;
    found.into_inner()
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

/// A test that cannot run here says so: `SKIP <test>: <reason>` on stderr, and, where the
/// environment names a file in `LAB_SKIP_LOG` (scripts/test does), one line appended to it. libtest
/// swallows a passing test's stderr, so without the file a skip reads as a pass in the suite's
/// output; scripts/test prints the file's lines at the end.
pub fn note_skip(test: &str, reason: &str) {
    let line = format!("SKIP {test}: {reason}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("LAB_SKIP_LOG").filter(|p| !p.is_empty()) {
        // One short O_APPEND write per line: lines from parallel tests do not interleave.
        let r = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = r {
            eprintln!("(LAB_SKIP_LOG {}: {e})", Path::new(&path).display());
        }
    }
}

/// A path as JSON text. serde writes a `Path` only when it is valid UTF-8 and fails otherwise,
/// which inside `serde_json::json!` is a panic: a folder name with a Latin-1 byte (a user's own
/// checkpoint) must not stop `--json`, so such bytes become U+FFFD, as `Path::display` shows them.
pub fn path_json(p: &Path) -> serde_json::Value {
    serde_json::Value::String(p.to_string_lossy().into_owned())
}

/// `#[serde(serialize_with = "crate::util::ser_path")]`: `path_json` for a struct field.
pub fn ser_path<S: serde::Serializer>(p: &Path, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_given_twice_in_one_object_is_found_with_its_path() {
        assert_eq!(duplicate_json_key(br#"{"a": 1, "b": 2}"#), None);
        assert_eq!(
            duplicate_json_key(br#"{"group_size": 64, "group_size": 32}"#).as_deref(),
            Some("group_size")
        );
        assert_eq!(
            duplicate_json_key(br#"{"q": {"x": [1, {"y": 1, "y": null}]}, "z": 0}"#).as_deref(),
            Some("q.x[1].y")
        );
        // The same key in two different objects is not a duplicate.
        assert_eq!(duplicate_json_key(br#"[{"a": 1}, {"a": 2}]"#), None);
        // Escapes are compared as the text they stand for.
        assert_eq!(
            duplicate_json_key(br#"{"\u0061": 1, "a": 2}"#).as_deref(),
            Some("a")
        );
        assert_eq!(duplicate_json_key(b"{not json"), None);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("quantize_config.json");
        std::fs::write(&p, r#"{"bits": 4, "group_size": 64, "group_size": 32}"#).unwrap();
        let e = read_json::<serde_json::Value>(&p).unwrap_err().to_string();
        assert!(
            e.contains("quantize_config.json") && e.contains("key 'group_size' appears twice"),
            "{e}"
        );
    }

    #[test]
    #[cfg(unix)]
    fn a_path_that_is_not_utf8_goes_into_json_lossily() {
        use std::os::unix::ffi::OsStrExt;
        let p = Path::new(std::ffi::OsStr::from_bytes(b"ckpt/bad\xffname"));
        // What serde itself does with it: an error (a panic inside json!).
        assert!(serde_json::to_value(p).is_err());
        assert_eq!(path_json(p), serde_json::json!("ckpt/bad\u{fffd}name"));
        #[derive(serde::Serialize)]
        struct S {
            #[serde(serialize_with = "ser_path")]
            out: std::path::PathBuf,
        }
        let v = serde_json::to_value(S { out: p.into() }).unwrap();
        assert_eq!(v["out"], "ckpt/bad\u{fffd}name");
    }

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

    /// The first key given twice, in document order, is the one named (not the last).
    #[test]
    fn the_first_duplicate_key_is_named() {
        assert_eq!(
            duplicate_json_key(br#"{"a": 1, "a": 2, "b": {"c": 1, "c": 2}}"#).as_deref(),
            Some("a")
        );
        assert_eq!(
            duplicate_json_key(br#"{"x": {"c": 1, "c": 2}, "a": 1, "a": 2}"#).as_deref(),
            Some("x.c")
        );
    }

    #[test]
    fn json_is_written_pretty_with_a_final_newline_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        let v = serde_json::json!({"a": [1, 2], "b": "x"});
        write_json_atomic(&p, &v).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.ends_with("}\n") && text.contains("\n  \"a\""),
            "{text:?}"
        );
        assert_eq!(read_json::<serde_json::Value>(&p).unwrap(), v);
    }

    /// The temp file is made in the target's own folder: a rename cannot cross filesystems, so a
    /// temp file in the system's temp folder could not be renamed onto a file elsewhere. Needs a
    /// folder on another filesystem than the temp folder (/dev/shm, where it is a tmpfs apart).
    #[cfg(target_os = "linux")]
    #[test]
    fn atomic_write_works_on_another_filesystem_than_the_temp_folder() {
        use std::os::unix::fs::MetadataExt;
        let shm = Path::new("/dev/shm");
        let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
        let (Some(a), Some(b)) = (dev(shm), dev(&std::env::temp_dir())) else {
            return note_skip("atomic_write_works_on_another_filesystem", "no /dev/shm");
        };
        if a == b {
            return note_skip(
                "atomic_write_works_on_another_filesystem",
                "/dev/shm is on the temp folder's filesystem",
            );
        }
        let dir = tempfile::tempdir_in(shm).unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"x").unwrap();
        write_atomic(&p, b"yz").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"yz");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// Absent is false, a file (or a link to one) true; anything else at the path is an error
    /// naming it, not "absent": a directory, a link that loops.
    #[cfg(unix)]
    #[test]
    fn optional_file_is_false_only_when_nothing_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(!optional_file(&d.join("none.json")).unwrap());
        std::fs::write(d.join("f.json"), b"{}").unwrap();
        assert!(optional_file(&d.join("f.json")).unwrap());
        std::os::unix::fs::symlink(d.join("f.json"), d.join("link.json")).unwrap();
        assert!(optional_file(&d.join("link.json")).unwrap());
        std::fs::create_dir(d.join("dir.json")).unwrap();
        std::os::unix::fs::symlink(d.join("loop.json"), d.join("loop.json")).unwrap();
        for name in ["dir.json", "loop.json"] {
            let e = optional_file(&d.join(name)).unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
        }
    }
}
