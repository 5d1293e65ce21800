//! `lab eval`: perplexity of a checkpoint (fp16 or GPTQ) on a text.
//!
//!   lab eval --checkpoint /tmp/tiny-g32 --reference tests/fixtures/tiny-fp16 --seqlen 128
//!   lab eval --checkpoint DIR --text wiki.test.txt --seqlen 2048 --max-windows 40 --json
//!   lab eval --backend gpu --checkpoint DIR --text wiki.test.txt --seqlen 2048
//!
//! `--backend cpu` (default): the CPU reference engine, every weight as f32, token by token: tiny
//! models and spot checks. `--backend gpu`: the GPU decode engine (checkpoint streamed onto the
//! GPU layer by layer), one decode step per token; a `--reference` then runs on the GPU too.
//! Both backends score through the same loop (`quantize::perplexity::perplexity`).

use anyhow::{bail, Context};
use clap::ValueEnum;
use gptq_lab::model::checkpoint::Checkpoint;
use gptq_lab::model::gpu_engine::{EngineOptions, GpuEngine, WeightSource};
use gptq_lab::model::layer_source::CheckpointLayers;
use gptq_lab::model::tokenizer::{TextTokenizer, NO_TOKENIZER};
use gptq_lab::quantize::calib::{DEFAULT_SEQLEN, EVAL_TEXT};
use gptq_lab::quantize::perplexity::{
    check_seqlen, check_text_length, cpu_engine_of, perplexity_scored, NextTokenModel, Perplexity,
    Scoring,
};
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Cpu,
    Gpu,
}

/// Which positions of each window are scored (the conventions published figures use).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoringArg {
    /// Every position but the first (GPTQ-for-LLaMa, the GPTQ paper).
    Gptq,
    /// The window's first token replaced by BOS, positions from seqlen/2 scored (llama.cpp's
    /// perplexity; it defaults to --seqlen 512).
    LlamaCpp,
    /// As llama-cpp, but scored from position min(512, seqlen/2) (AutoGPTQ's perplexity
    /// script; the same figure as llama-cpp up to --seqlen 1024).
    Autogptq,
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[arg(long, value_parser = crate::checkpoint_folder())]
    checkpoint: PathBuf,
    /// Text to score (default: the shipped data/calibration/eval.txt, held out from calibration:
    /// 2.1 KB, about 500 tokens for a LLaMA tokenizer, enough for the tiny test models only; a
    /// real model wants e.g. wikitext-2's test split at --seqlen 2048).
    #[arg(long)]
    text: Option<PathBuf>,
    /// Tokens per window (default min(2048, model context)).
    #[arg(long)]
    seqlen: Option<usize>,
    /// Score at most this many windows.
    #[arg(long)]
    max_windows: Option<usize>,
    /// A reference checkpoint (the fp16 original): adds KL divergence and top-1 agreement.
    #[arg(long, value_parser = crate::checkpoint_folder())]
    reference: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "cpu")]
    backend: Backend,
    /// Which positions are scored: gptq (all but each window's first), llama-cpp (the second
    /// half of each window, which starts with BOS) or autogptq (as llama-cpp, from position
    /// min(512, seqlen/2)). Compare a figure only with one of the same.
    #[arg(long, value_enum, default_value = "gptq")]
    scoring: ScoringArg,
    #[command(flatten)]
    gpu: EvalGpuArgs,
    #[arg(long)]
    json: bool,
}

/// The flags only `--backend gpu` reads (refused with the CPU backend when typed).
#[derive(clap::Args, Debug)]
pub struct EvalGpuArgs {
    /// GPU backend: the int4 GEMV (as `lab decode --backend gpu`): auto (this GPU's tuned config
    /// under --root, else the heuristic), engine, or a registry variant such as gemv_v6_pipe.
    #[arg(long, default_value = "auto", value_parser = crate::decode::gpu::int4_kernel_name)]
    int4_kernel: String,
    /// Folder that holds tuning/ (for --int4-kernel auto).
    #[arg(long, default_value = ".")]
    root: PathBuf,
}

pub fn run(a: EvalArgs, m: &clap::ArgMatches) -> anyhow::Result<()> {
    // Cheap checks first (flags, config, tokenizer, text), so a typo is reported before any
    // weights load.
    if a.backend == Backend::Cpu {
        crate::refuse_typed::<EvalGpuArgs>(
            m,
            "a flag of the GPU backend (--backend gpu); the CPU backend does not use it: leave \
             it out or pass --backend gpu",
        )?;
    }
    if a.max_windows == Some(0) {
        bail!("--max-windows 0: expected at least 1 window (leave it out to score every window the text fills)");
    }
    let ckpt = Checkpoint::open(&a.checkpoint)?;
    for n in ckpt.notes() {
        eprintln!("note: {n}");
    }
    if let Some(note) = gptq_lab::quantize::synth::synthetic_note(&ckpt.dir) {
        eprintln!("{note}");
    }
    let tok = TextTokenizer::from_checkpoint_dir(&a.checkpoint)?.with_context(|| {
        format!(
            "{}: {NO_TOKENIZER} to tokenize the evaluation text",
            a.checkpoint.display()
        )
    })?;
    let (text, text_name) = match &a.text {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            format!("--text {}", p.display()),
        ),
        None => (
            EVAL_TEXT.to_string(),
            "the shipped data/calibration/eval.txt (no --text)".to_string(),
        ),
    };
    // Opened once: checked here, then built into the reference engine.
    let reference = match &a.reference {
        Some(r) => {
            let r = Checkpoint::open(r)?;
            check_reference(&ckpt, &tok, &r)?;
            Some(r)
        }
        None => None,
    };
    let ids = tok.encode(&text, true)?;
    // The tokenizer may know more ids than the model has logits (a tokenizer of another
    // model): refused here, naming both files, not at the window that meets such a token.
    crate::decode::refuse_out_of_vocab(
        &ids,
        ckpt.config.vocab_size,
        &ckpt.dir.join("config.json"),
        &text_name,
        Some(&tok),
    )?;
    let seqlen = a
        .seqlen
        .unwrap_or(DEFAULT_SEQLEN.min(ckpt.config.context_len()));
    // Before any weights load: the window fits the model (and the reference), the text holds one.
    check_seqlen(seqlen, &ckpt.config)?;
    if let Some(r) = &reference {
        check_seqlen(seqlen, &r.config)
            .with_context(|| format!("--reference {}", r.dir.display()))?;
    }
    let available = check_text_length(ids.len(), seqlen)
        .with_context(|| format!("{text_name}: {} tokens", ids.len()))?;
    let scoring = match a.scoring {
        ScoringArg::Gptq => Scoring::AllPositions,
        ScoringArg::LlamaCpp | ScoringArg::Autogptq => {
            // The flag's value as typed (clap's name for the variant).
            let flag = a
                .scoring
                .to_possible_value()
                .map_or_else(String::new, |v| v.get_name().to_string());
            // The tokenizer's own BOS: what it puts before a text.
            let bos = tok.encode("", true)?.first().copied().with_context(|| {
                format!(
                    "--scoring {flag}: {}'s tokenizer adds no BOS token to start each window with",
                    a.checkpoint.display()
                )
            })?;
            if seqlen < 4 {
                bail!("--scoring {flag} with --seqlen {seqlen}: expected >= 4 (half a window of context, then at least one scored position)");
            }
            if a.scoring == ScoringArg::LlamaCpp {
                Scoring::SecondHalf { bos }
            } else {
                Scoring::AutoGptqScript { bos }
            }
        }
    };
    let p = match a.backend {
        Backend::Cpu => {
            let mut model = cpu_engine_of(&ckpt)?;
            let mut reference = reference.as_ref().map(cpu_engine_of).transpose()?;
            let r = reference.as_mut().map(|r| r as &mut dyn NextTokenModel);
            perplexity_scored(&mut model, r, &ids, seqlen, a.max_windows, scoring)
                .with_context(|| format!("scoring {}", a.checkpoint.display()))?
        }
        Backend::Gpu => gpu_perplexity(&a, &ckpt, reference.as_ref(), &ids, seqlen, scoring)?,
    };
    debug_assert_eq!(p.windows_available, available);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
        return Ok(());
    }
    print!(
        "perplexity {:.4} (mean NLL {:.4} nats) over {} of {} windows x {} tokens ({} positions \
         scored of the text's {} tokens)",
        p.perplexity,
        p.mean_nll,
        p.windows,
        p.windows_available,
        p.seqlen,
        p.tokens_scored,
        p.tokens_total
    );
    if let (Some(kl), Some(agree)) = (p.kl_to_reference, p.top1_agreement) {
        print!(
            "; KL(reference || model) {kl:.5} nats, top-1 agreement {:.2}%",
            agree * 100.0
        );
    }
    println!(" [{:?} backend]", a.backend);
    println!("scored as: {}", p.convention);
    Ok(())
}

/// KL and top-1 agreement compare the two models' next-token distributions id by id: the
/// reference must have the same vocabulary size and, where both have a tokenizer, the same
/// token for every id (the text is tokenized with --checkpoint's).
fn check_reference(
    ckpt: &Checkpoint,
    tok: &TextTokenizer,
    reference: &Checkpoint,
) -> anyhow::Result<()> {
    let (v, rv) = (ckpt.config.vocab_size, reference.config.vocab_size);
    if v != rv {
        bail!(
            "--reference {}: vocab_size {rv}, but --checkpoint {} has vocab_size {v}: a reference \
             must share the checkpoint's vocabulary (KL compares the distributions token by token)",
            reference.dir.display(),
            ckpt.dir.display()
        );
    }
    // Another architecture is allowed (KL still compares two distributions) but then it measures
    // more than quantization: say so.
    let (c, r) = (&ckpt.config, &reference.config);
    let differs: Vec<String> = [
        ("hidden_size", c.hidden_size as f64, r.hidden_size as f64),
        (
            "num_hidden_layers",
            c.num_hidden_layers as f64,
            r.num_hidden_layers as f64,
        ),
        (
            "num_attention_heads",
            c.num_attention_heads as f64,
            r.num_attention_heads as f64,
        ),
        ("rope_theta", c.rope_theta, r.rope_theta),
        (
            "linear RoPE factor",
            c.rope_linear_factor,
            r.rope_linear_factor,
        ),
        ("rms_norm_eps", c.rms_norm_eps, r.rms_norm_eps),
    ]
    .iter()
    .filter(|(_, a, b)| a != b)
    .map(|(n, a, b)| format!("{n} {a} vs {b}"))
    .collect();
    if !differs.is_empty() {
        eprintln!(
            "note: --reference {} is not the same architecture as --checkpoint {} ({}): the KL \
             then measures the difference between two models, not only the quantization",
            reference.dir.display(),
            ckpt.dir.display(),
            differs.join(", ")
        );
    }
    if let Some(rt) = TextTokenizer::from_checkpoint_dir(&reference.dir)? {
        if !rt.same_vocabulary(tok) {
            bail!(
                "--reference {}: its tokenizer ({}) maps tokens to other ids than --checkpoint \
                 {}'s ({}): a reference must share the checkpoint's tokenizer",
                reference.dir.display(),
                rt.path().display(),
                ckpt.dir.display(),
                tok.path().display()
            );
        }
    }
    Ok(())
}

/// The GPU engine on `ckpt` (and on `--reference`, also on the GPU), scored by the shared loop.
fn gpu_perplexity(
    a: &EvalArgs,
    ckpt: &Checkpoint,
    reference_ckpt: Option<&Checkpoint>,
    ids: &[u32],
    seqlen: usize,
    scoring: Scoring,
) -> anyhow::Result<Perplexity> {
    let gpu = gptq_lab::cuda::open(0).map_err(|e| {
        anyhow::anyhow!(
            "lab eval --backend gpu: {e}; the CPU backend runs without one (--backend cpu)"
        )
    })?;
    if !gptq_lab::build_info::KERNELS_BUILT {
        bail!(gptq_lab::LabError::KernelsNotBuilt);
    }
    // The last token of a window is never fed: seqlen - 1 positions (at least 1).
    let mut opts = EngineOptions::new(seqlen - 1);
    opts.int4 = gptq_lab::model::gpu_engine::parse_int4_kernel(&a.gpu.int4_kernel, || {
        crate::decode::gpu::dispatcher(&gpu, &a.gpu.root)
    })?;
    let engine = |ck: &Checkpoint| -> anyhow::Result<GpuEngine> {
        let label = ck.dir.display().to_string();
        let src = CheckpointLayers::new(ck).with_progress(true);
        Ok(GpuEngine::new(
            &gpu,
            &ck.config,
            WeightSource::Host {
                weights: &src,
                label: &label,
            },
            opts.clone(),
        )?)
    };
    let mut model = engine(ckpt)?;
    let mut reference = reference_ckpt.map(engine).transpose()?;
    let r = reference.as_mut().map(|r| r as &mut dyn NextTokenModel);
    // Each window's state flags are read before the next resets them (NextTokenModel::end_window).
    let p = perplexity_scored(&mut model, r, ids, seqlen, a.max_windows, scoring)
        .with_context(|| format!("scoring {}", a.checkpoint.display()))?;
    Ok(p)
}
