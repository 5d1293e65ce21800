//! What the CLI tests share: running the `lab` binary of this build, and its stderr as text.
// Each test binary uses its own subset.
#![allow(dead_code)]

use std::process::{Command, Output};

/// `lab ARGS...`, waited for, with its output captured.
pub fn lab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(args)
        .output()
        .expect("running the lab binary")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The committed fixture folder `name` (tests/fixtures/NAME).
pub fn fixture_dir(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Copies the fixture folder `name` into `to` (which must exist), leaving out the files named
/// in `leave_out`: a folder to damage or extend without touching the committed one.
pub fn copy_fixture_into(name: &str, to: &std::path::Path, leave_out: &[&str]) {
    for e in std::fs::read_dir(fixture_dir(name)).unwrap() {
        let e = e.unwrap();
        if !leave_out.iter().any(|f| e.file_name() == *f) {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
