//! `lab eval`: perplexity of a checkpoint (fp16 or GPTQ) on a text, on the CPU reference engine.
//!
//!   lab eval --checkpoint /tmp/tiny-g32 --reference tests/fixtures/tiny-fp16 --seqlen 128
//!   lab eval --checkpoint DIR --text wiki.test.txt --seqlen 2048 --max-windows 40 --json
//!
//! The CPU engine holds every weight as f32 and runs token by token: tiny models and spot checks.
//! The GPU engine does not exist yet; `--backend gpu` says so.

use anyhow::{bail, Context};
use gptq_lab::model::tokenizer::TextTokenizer;
use gptq_lab::quantize::calib::{DEFAULT_SEQLEN, EVAL_TEXT};
use gptq_lab::quantize::perplexity::{cpu_engine, perplexity};
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Cpu,
    Gpu,
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    /// Text to score (default: the shipped data/calibration/eval.txt, held out from calibration).
    #[arg(long)]
    text: Option<PathBuf>,
    /// Tokens per window (default min(2048, model context)).
    #[arg(long)]
    seqlen: Option<usize>,
    /// Score at most this many windows.
    #[arg(long)]
    max_windows: Option<usize>,
    /// A reference checkpoint (the fp16 original): adds KL divergence and top-1 agreement.
    #[arg(long)]
    reference: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "cpu")]
    backend: Backend,
    #[arg(long)]
    json: bool,
}

pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    if a.backend == Backend::Gpu {
        bail!("--backend gpu: the GPU engine is not built yet; use --backend cpu");
    }
    let mut model = cpu_engine(&a.checkpoint)?;
    let tok = TextTokenizer::from_checkpoint_dir(&a.checkpoint)?.with_context(|| {
        format!(
            "{}: no tokenizer.json to tokenize the evaluation text",
            a.checkpoint.display()
        )
    })?;
    let text = match &a.text {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => EVAL_TEXT.to_string(),
    };
    let ids = tok.encode(&text, true)?;
    let mut reference = match &a.reference {
        Some(r) => Some(cpu_engine(r)?),
        None => None,
    };
    let seqlen = a
        .seqlen
        .unwrap_or(DEFAULT_SEQLEN.min(model.config().max_position_embeddings));
    let p = perplexity(&mut model, reference.as_mut(), &ids, seqlen, a.max_windows)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
        return Ok(());
    }
    print!(
        "perplexity {:.4} (mean NLL {:.4} nats) over {} windows x {} tokens",
        p.perplexity, p.mean_nll, p.windows, p.seqlen
    );
    if let (Some(kl), Some(agree)) = (p.kl_to_reference, p.top1_agreement) {
        print!(
            "; KL to reference {kl:.5} nats, top-1 agreement {:.2}%",
            agree * 100.0
        );
    }
    println!();
    Ok(())
}
