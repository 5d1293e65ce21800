//! `lab tune`: `--show` prints a tuned config; `--gpu N [--quick]` measures this GPU's keys and
//! writes tuning/<gpu-slug>.json after every key (a rerun resumes where it stopped).

use anyhow::{bail, Context};
use gptq_lab::build_info::{GIT_REV, KERNEL_HASH};
use gptq_lab::cuda::Gpu;
use gptq_lab::model::config::ModelConfig;
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
    #[arg(long, value_name = "DIR", value_parser = crate::checkpoint_folder())]
    checkpoint: Option<PathBuf>,
    /// Skip the decode pass: after the keys, `lab tune` times each model's whole decode step
    /// (int4 g128, act-order off and on; sm_90+) at a few PDL prefetch budgets and keeps the
    /// fastest for that model (tune.md, "Decode step").
    #[arg(long)]
    no_decode: bool,
}

/// The model configs whose keys are tuned (the decode pass times their steps).
fn models_for(a: &TuneArgs) -> anyhow::Result<Vec<ModelConfig>> {
    if let Some(dir) = &a.checkpoint {
        return Ok(vec![ModelConfig::from_json_file(&dir.join("config.json"))?]);
    }
    if a.model.is_empty() {
        return Ok(tune::keys::vicuna_models());
    }
    Ok(a.model
        .iter()
        .map(|m| ModelConfig::preset(m.trim()))
        .collect::<Result<Vec<_>, _>>()?)
}

pub fn run(a: TuneArgs) -> anyhow::Result<()> {
    if a.show {
        return show(&a.root, a.file.as_deref());
    }
    // Flags first, so a typo is reported without a GPU.
    let models = models_for(&a)?;
    let keys = tune::keys::keys_of(&models);
    let gpu = gptq_lab::cuda::open(a.gpu)?;
    let path = a
        .file
        .clone()
        .unwrap_or_else(|| a.root.join(tune::default_path(&gpu.info.slug)));
    let (mut cfg, note) = tune::resume_or_new(&path, &gpu.info, GIT_REV, KERNEL_HASH)?;
    if let Some(n) = note {
        eprintln!("note: {n}");
    }
    let (sm, sms) = (gpu.sm(), gpu.info.sms.max(1) as u32);
    let candidates = |k: &tune::ProblemKey| tune::candidates_for(k, sm, sms, a.quick);
    let pending = tune::pending_keys(&keys, &cfg, candidates)?.len();
    eprintln!(
        "tuning {} on {}: {pending} of {} keys pending",
        path.display(),
        gpu.info.name,
        keys.len()
    );
    let mut measurer = gpu_measurer(&gpu, a.quick)?;
    let bar = indicatif::ProgressBar::new(pending as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} keys, {elapsed} (eta {eta}) {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    tune::tune(
        &mut cfg,
        &keys,
        candidates,
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
    let decode = if a.no_decode {
        Ok(())
    } else {
        tune_decode(&gpu, &models, &mut cfg, &path)
    };
    // The report of what was kept, whatever the decode pass's outcome (its failure is said last).
    // reports/<gpu>/tune.md describes tuning/<gpu>.json (`lab report` regenerates it from that
    // file): a config tuned into another file would be overwritten there by the next `lab report`.
    let default = a.root.join(tune::default_path(&gpu.info.slug));
    if same_file(&path, &default) {
        let dir = gptq_lab::report::report_dir(&a.root, &gpu.info.slug);
        gptq_lab::report::tune::write_tune_report(&dir, &cfg)?;
    } else {
        eprintln!(
            "note: {} not written: it describes {}, not {}",
            gptq_lab::report::report_dir(&a.root, &gpu.info.slug)
                .join("tune.md")
                .display(),
            default.display(),
            path.display()
        );
    }
    show(&a.root, Some(&path))?;
    decode
}

/// Whether two paths name one file (both resolved where they exist, compared as given otherwise).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The decode pass: each model's int4 g128 step, act-order off and on, with the dispatcher of the
/// config just tuned; the config is saved after each model. A model whose step cannot be timed
/// (no PDL below sm_90, a model too big for the card) is reported and skipped; a timed step that
/// ended with a state flag fails the tune after the others.
fn tune_decode(
    gpu: &Gpu,
    models: &[ModelConfig],
    cfg: &mut TunedConfig,
    path: &Path,
) -> anyhow::Result<()> {
    use gptq_lab::model::decode_tune::{tune_decode_budget, DecodeTuneOutcome, DecodeTunePlan};
    use gptq_lab::model::gpu_weights::WeightKind;
    if let Some(why) = gpu.pdl_refusal() {
        eprintln!(
            "decode pass skipped: the PDL prefetch budget applies only where PDL runs: {why}"
        );
        return Ok(());
    }
    let mut failed = Vec::new();
    for m in models {
        for act_order in [false, true] {
            let kind = WeightKind::Int4 {
                group: 128,
                act_order,
                sym: false,
            };
            let plan = DecodeTunePlan::new(m.clone(), kind);
            let d = std::sync::Arc::new(tune::Dispatcher::from_config(
                Some(cfg.clone()),
                &gpu.info,
                KERNEL_HASH,
            ));
            let t = std::time::Instant::now();
            match tune_decode_budget(gpu, &plan, d, &cfg.decode) {
                Ok(DecodeTuneOutcome::Known(b)) => {
                    eprintln!(
                        "decode budget {}: {} (already in {}, {})",
                        plan.label(),
                        b.winner,
                        path.display(),
                        b.note
                    );
                }
                Ok(DecodeTuneOutcome::Tuned(b)) => {
                    eprintln!(
                        "decode budget {}: {} ({}; {:.1} s)",
                        plan.label(),
                        b.winner,
                        b.note,
                        t.elapsed().as_secs_f64()
                    );
                    cfg.upsert_decode(b);
                    cfg.save(path)?;
                }
                Ok(DecodeTuneOutcome::InvalidStep(why)) => {
                    eprintln!("decode budget {} INVALID: {why}", plan.label());
                    failed.push(format!("{}: {why}", plan.label()));
                }
                Err(e) => eprintln!("decode budget {} not tuned: {e}", plan.label()),
            }
            gpu.ctx.synchronize().ok();
        }
    }
    if !failed.is_empty() {
        bail!("decode pass: {}", failed.join("; "));
    }
    Ok(())
}

/// The GPU `Measurer`: checks each candidate against the reference kernel, then times it cold.
fn gpu_measurer(gpu: &Gpu, quick: bool) -> anyhow::Result<Box<dyn Measurer + '_>> {
    if !gptq_lab::build_info::KERNELS_BUILT {
        bail!(gptq_lab::LabError::KernelsNotBuilt);
    }
    Ok(Box::new(gptq_lab::tune::gpu::GpuMeasurer::new(gpu, quick)))
}

/// `--file`, else this GPU's tuned config under `root`, else (no GPU) every one under `root`.
fn show(root: &Path, file: Option<&Path>) -> anyhow::Result<()> {
    if let Some(f) = file {
        return show_file(f);
    }
    if let Ok(gpu) = gptq_lab::cuda::open(0) {
        return show_file(&root.join(tune::default_path(&gpu.info.slug)));
    }
    // A mistyped --root must not read as "no tuned configs".
    if !root.is_dir() {
        bail!(
            "--root {}: no such folder (it should be the folder that holds tuning/)",
            root.display()
        );
    }
    let dir = root.join("tuning");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect(),
        Err(_) => Vec::new(),
    };
    if files.is_empty() {
        println!(
            "no tuned configs in {} (and no GPU to name one); run `lab tune --gpu 0` on a GPU",
            dir.display()
        );
        return Ok(());
    }
    files.sort();
    // One bad file does not hide the others: each is shown or its error printed, and the
    // command fails after the last if any was refused.
    let mut refused = Vec::new();
    for f in &files {
        match show_file(f) {
            Ok(()) => println!(),
            Err(e) => {
                eprintln!("error: {e:#}\n");
                refused.push(f.display().to_string());
            }
        }
    }
    if !refused.is_empty() {
        bail!(
            "{} of {} tuned configs in {} refused: {}",
            refused.len(),
            files.len(),
            dir.display(),
            refused.join(", ")
        );
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
    for b in &c.decode {
        println!(
            "decode budget {}: {} (default {}; {})",
            b.label, b.winner, b.default, b.note
        );
    }
    Ok(())
}
