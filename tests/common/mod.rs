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
