//! `lab report [--root DIR] [--gpu-slug SLUG]`: regenerates every report's markdown and plots,
//! and each GPU folder's index (README.md, stale reports marked), from the recorded JSON under
//! DIR/reports/<gpu>/ and DIR/tuning/<gpu>.json. No GPU needed; the JSON is only read.

use gptq_lab::report::regenerate::{recorded_slugs, regenerate_slug};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Folder that holds reports/ and tuning/ (default: the current folder).
    #[arg(long, default_value = ".")]
    pub root: PathBuf,
    /// Only this GPU's folder (reports/<SLUG>/, tuning/<SLUG>.json); default: every recorded GPU.
    #[arg(long, value_name = "SLUG")]
    pub gpu_slug: Option<String>,
}

pub fn run(a: ReportArgs) -> anyhow::Result<()> {
    // A mistyped --root must not read as "nothing recorded yet".
    if !a.root.is_dir() {
        anyhow::bail!(
            "--root {}: no such folder (it should be the folder that holds reports/ and tuning/)",
            a.root.display()
        );
    }
    let (recorded, other_tuning) = recorded_slugs(&a.root)?;
    for f in other_tuning {
        eprintln!(
            "note: {} is a tuned config of another name than its GPU's (lab tune --file): \
             reports are made from tuning/<gpu>.json only (`lab tune --show --file` prints it)",
            f.display()
        );
    }
    let slugs = match &a.gpu_slug {
        Some(s) if recorded.contains(s) => vec![s.clone()],
        Some(s) => anyhow::bail!(
            "--gpu-slug {s}: nothing recorded under {} (no reports/{s}/ folder, no tuning/{s}.json); recorded GPUs: {}",
            a.root.display(),
            if recorded.is_empty() { "none".to_string() } else { recorded.join(", ") }
        ),
        None => recorded,
    };
    if slugs.is_empty() {
        println!(
            "lab report: nothing to report under {}: no reports/<gpu>/ folders and no tuning/<gpu>.json (they are written by GPU runs: lab bench, tune, decode, run)",
            a.root.display()
        );
        return Ok(());
    }
    let mut errors = Vec::new();
    for slug in slugs {
        let out = regenerate_slug(&a.root, &slug)?;
        println!("{slug}: wrote {} files", out.written.len());
        for w in &out.written {
            println!("  {}", w.display());
        }
        for e in out.errors {
            eprintln!("  error: {e}");
            errors.push(e);
        }
    }
    if !errors.is_empty() {
        anyhow::bail!(
            "{} recorded file(s) could not be used: {}",
            errors.len(),
            errors.join("; ")
        );
    }
    Ok(())
}
