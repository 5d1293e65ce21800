//! `lab tune`: `--show` prints a tuned config; `--gpu N [--quick]` measures this GPU's keys and
//! writes tuning/<gpu-slug>.json after every key (a rerun resumes where it stopped).

use anyhow::{bail, Context};
use gptq_lab::build_info::{GIT_REV, KERNEL_HASH};
use gptq_lab::cuda::Gpu;
use gptq_lab::tune::keys::vicuna_default_keys;
use gptq_lab::tune::{self, CandidateStatus, Measurer, TunedConfig, TunedEntry};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct TuneArgs {
    /// Print a tuned config as a table instead of tuning.
    #[arg(long)]
    show: bool,
    /// Tuned config file. Default: tuning/<gpu-slug>.json; `--show` without a GPU shows every file in tuning/.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// CUDA device to tune.
    #[arg(long, default_value_t = 0)]
    gpu: usize,
    /// Each variant with its default parameters only (a quick pass).
    #[arg(long)]
    quick: bool,
    /// Folder that holds tuning/ and reports/ (default: the current folder).
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Tune the shapes of these presets (comma separated: vicuna-7b, vicuna-13b). Default: both.
    #[arg(long, value_delimiter = ',', conflicts_with = "checkpoint")]
    model: Vec<String>,
    /// Tune the shapes of this checkpoint (its config.json), group 128, act-order on and off.
    #[arg(long, value_name = "DIR")]
    checkpoint: Option<PathBuf>,
}

/// The problem keys to tune: the presets named by --model, the checkpoint's shapes, or both Vicunas.
fn keys_for(a: &TuneArgs) -> anyhow::Result<Vec<tune::ProblemKey>> {
    let mut keys = if let Some(dir) = &a.checkpoint {
        let cfg = gptq_lab::model::config::ModelConfig::from_json_file(&dir.join("config.json"))?;
        tune::keys::default_keys(&cfg)
    } else if a.model.is_empty() {
        vicuna_default_keys()
    } else {
        let mut k = Vec::new();
        for m in &a.model {
            k.extend(tune::keys::default_keys(
                &gptq_lab::model::config::ModelConfig::preset(m.trim())?,
            ));
        }
        k
    };
    keys.sort_unstable();
    keys.dedup();
    Ok(keys)
}

pub fn run(a: TuneArgs) -> anyhow::Result<()> {
    if a.show {
        return show(a.file.as_deref());
    }
    // Flags first, so a typo is reported without a GPU.
    let keys = keys_for(&a)?;
    let gpu = gptq_lab::cuda::open(a.gpu)?;
    let path = a
        .file
        .clone()
        .unwrap_or_else(|| a.root.join(tune::default_path(&gpu.info.slug)));
    let (mut cfg, note) = tune::resume_or_new(&path, &gpu.info, GIT_REV, KERNEL_HASH)?;
    if let Some(n) = note {
        eprintln!("note: {n}");
    }
    let pending = tune::pending_keys(&keys, &cfg).len();
    eprintln!(
        "tuning {} on {}: {pending} of {} keys pending",
        path.display(),
        gpu.info.name,
        keys.len()
    );
    let mut measurer = gpu_measurer(&gpu, a.quick)?;
    let (sm, sms) = (gpu.sm(), gpu.info.sms.max(1) as u32);
    let bar = indicatif::ProgressBar::new(pending as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} keys, {elapsed} (eta {eta}) {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    tune::tune(
        &mut cfg,
        &keys,
        |k| tune::candidates_for(k, sm, sms, a.quick),
        measurer.as_mut(),
        |done, _total, e| {
            bar.set_position(done as u64);
            // The bar hides itself when stderr is not a terminal (logs): keep one line per key there.
            if bar.is_hidden() {
                eprintln!("[{done}/{pending}] {}: {} ({})", e.key, e.winner, e.note);
            } else {
                bar.set_message(format!("{}: {}", e.key, e.winner));
            }
        },
        |c| c.save(&path),
    )?;
    bar.finish_and_clear();
    let dir = gptq_lab::report::report_dir(&a.root, &gpu.info.slug);
    gptq_lab::report::tune::write_tune_report(&dir, &cfg)?;
    show(Some(&path))
}

/// The GPU `Measurer`: checks each candidate against the reference kernel, then times it cold.
fn gpu_measurer(gpu: &Gpu, quick: bool) -> anyhow::Result<Box<dyn Measurer + '_>> {
    if !gptq_lab::build_info::KERNELS_BUILT {
        bail!(gptq_lab::LabError::KernelsNotBuilt);
    }
    Ok(Box::new(gptq_lab::tune::gpu::GpuMeasurer::new(gpu, quick)))
}

fn show(file: Option<&Path>) -> anyhow::Result<()> {
    if let Some(f) = file {
        return show_file(f);
    }
    if let Ok(gpu) = gptq_lab::cuda::open(0) {
        return show_file(&tune::default_path(&gpu.info.slug));
    }
    let dir = Path::new("tuning");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect(),
        Err(_) => Vec::new(),
    };
    if files.is_empty() {
        println!(
            "no tuned configs in tuning/ (and no GPU to name one); run `lab tune --gpu 0` on a GPU"
        );
        return Ok(());
    }
    files.sort();
    for f in files {
        show_file(&f)?;
        println!();
    }
    Ok(())
}

fn show_file(path: &Path) -> anyhow::Result<()> {
    let c =
        TunedConfig::load(path).with_context(|| "reading the tuned config (lab tune --show)")?;
    let d = &c.device;
    println!(
        "{}: {} (sm_{}{}, {} SMs), git {}, created {}, {} entries",
        path.display(),
        d.name,
        d.cc_major,
        d.cc_minor,
        d.sms,
        if c.git_rev.is_empty() {
            "?"
        } else {
            &c.git_rev
        },
        if c.created.is_empty() {
            "?"
        } else {
            &c.created
        },
        c.entries.len()
    );
    if c.kernel_hash == KERNEL_HASH {
        println!("kernel hash {} (matches this binary)", c.kernel_hash);
    } else {
        println!(
            "kernel hash {} differs from this binary's {}: the dispatcher would REFUSE this file",
            c.kernel_hash, KERNEL_HASH
        );
    }
    println!(
        "{:>6} {:>6} {:>5} {:>3} {:>4}  {:<28} {:<28} {:>5} {:>9}  note",
        "n", "k", "group", "ao", "m<=", "winner", "default", "cands", "iqm us"
    );
    let mut entries: Vec<&TunedEntry> = c.entries.iter().collect();
    entries.sort_by_key(|e| e.key);
    for e in entries {
        let iqm = e
            .candidates
            .iter()
            .find(|r| r.choice == e.winner)
            .and_then(|r| match r.status {
                CandidateStatus::Ok { iqm_us, .. } => Some(format!("{iqm_us:.2}")),
                _ => None,
            })
            .unwrap_or_else(|| "-".into());
        println!(
            "{:>6} {:>6} {:>5} {:>3} {:>4}  {:<28} {:<28} {:>5} {:>9}  {}",
            e.key.n,
            e.key.k,
            e.key.group_size,
            if e.key.act_order { "yes" } else { "no" },
            e.key.batch_bucket,
            e.winner.to_string(),
            e.default.to_string(),
            e.candidates.len(),
            iqm,
            e.note
        );
    }
    Ok(())
}
