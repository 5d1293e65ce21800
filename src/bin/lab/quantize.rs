//! `lab quantize`: fp16 LLaMA/Vicuna checkpoint -> GPTQ checkpoint, with the per-linear output
//! error against RTN measured on the calibration inputs.
//!
//!   lab quantize --checkpoint tests/fixtures/tiny-fp16 --group 32 --act-order --out /tmp/tiny-g32
//!   lab quantize --checkpoint DIR --calib corpus.txt --group 128 --asym --format v2 --out OUT --json

use anyhow::bail;
use gptq_lab::gptq::solver::DEFAULT_DAMP;
use gptq_lab::gptq::{GptqParams, HessianBackend, ZeroFormat};
use gptq_lab::quantize::{quantize_checkpoint, CalibSource, Method, QuantizeOptions};
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatArg {
    /// "gptq": zero - 1 stored, what AutoGPTQ, transformers and most files use.
    V1,
    /// "gptq_v2": true zeros (GPTQModel, transformers 5). AutoGPTQ and transformers 4.x have no
    /// v2 reader and misread it as v1 (every zero one too high): see reports/cpu/gptq-interop.md.
    V2,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodArg {
    Gptq,
    /// Round-to-nearest baseline.
    Rtn,
}

#[derive(clap::Args, Debug)]
pub struct QuantizeArgs {
    /// The fp16 checkpoint folder (HF layout: config.json, *.safetensors, tokenizer.json or
    /// tokenizer.model).
    #[arg(long, value_parser = crate::checkpoint_folder())]
    checkpoint: PathBuf,
    /// Calibration text, tokenized with the checkpoint's tokenizer. Default: the shipped
    /// data/calibration/default.txt, 4.8 KB of prose: enough for the tiny test models, about 1.2k
    /// tokens for a LLaMA tokenizer, so a real 7B/13B needs this (or --seqlen 512 for a trial):
    /// the published recipe is 128 sequences of 2048 tokens (~1 MB of text, e.g. from C4).
    #[arg(long, conflicts_with = "calib_ids")]
    calib: Option<PathBuf>,
    /// A FILE of calibration token ids instead of text: a JSON array, or ids separated by
    /// commas and/or whitespace.
    #[arg(long, value_name = "FILE")]
    calib_ids: Option<PathBuf>,
    /// Output folder: must not exist, or be empty.
    #[arg(long)]
    out: PathBuf,
    /// Bits per weight; only 4 is supported.
    #[arg(long, default_value_t = 4)]
    bits: u32,
    /// Rows per group: 32, 64, 128, ... (must divide every K), or -1 for per-channel.
    #[arg(long, default_value_t = 128, allow_hyphen_values = true)]
    group: i32,
    /// Quantize rows in order of decreasing Hessian diagonal (desc_act).
    #[arg(long)]
    act_order: bool,
    /// Fix group scales/zeros from the unmodified weights (keeps g_idx trivial with act-order).
    #[arg(long)]
    static_groups: bool,
    /// Symmetric quantization (zero = 8), the default.
    #[arg(long, conflicts_with = "asym")]
    sym: bool,
    /// Asymmetric quantization (a zero per group and column).
    #[arg(long)]
    asym: bool,
    /// Dampening: this fraction of the mean Hessian diagonal is added to the diagonal.
    #[arg(long, default_value_t = DEFAULT_DAMP)]
    damp: f64,
    #[arg(long, value_enum, default_value = "v1")]
    format: FormatArg,
    #[arg(long, value_enum, default_value = "gptq")]
    method: MethodArg,
    /// Tokens per calibration sequence (default min(2048, model context)).
    #[arg(long)]
    seqlen: Option<usize>,
    /// Calibration sequences (default: as many as the text fills, at most 128).
    #[arg(long)]
    nsamples: Option<usize>,
    /// How the Hessians' sums x x^T are formed: auto (AMX bf16 tiles where this CPU has them,
    /// ~5x faster; else f32), f32 (the published tools' arithmetic), bf16-amx.
    #[arg(long, default_value = "auto")]
    hessian: String,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: QuantizeArgs) -> anyhow::Result<()> {
    if a.bits != 4 {
        bail!("--bits {}: only 4-bit GPTQ is supported", a.bits);
    }
    let calib = match (a.calib, a.calib_ids) {
        (Some(p), _) => CalibSource::Text(p),
        (None, Some(p)) => CalibSource::Ids(p),
        (None, None) => CalibSource::Default,
    };
    let opts = QuantizeOptions {
        checkpoint: a.checkpoint,
        calib,
        out: a.out,
        method: match a.method {
            MethodArg::Gptq => Method::Gptq,
            MethodArg::Rtn => Method::Rtn,
        },
        params: GptqParams {
            group_size: a.group,
            sym: !a.asym,
            act_order: a.act_order,
            static_groups: a.static_groups,
            damp_percent: a.damp,
            min_zero: 0,
        },
        format: match a.format {
            FormatArg::V1 => ZeroFormat::V1,
            FormatArg::V2 => ZeroFormat::V2,
        },
        seqlen: a.seqlen,
        nsamples: a.nsamples,
        progress: !a.quiet && !a.json,
        hessian: HessianBackend::parse(&a.hessian)?,
    };
    let s = quantize_checkpoint(&opts)?;
    // Fewer calibration tokens than a linear has inputs: its Hessian X^T X has rank at most the
    // token count, and only the damping keeps the solve defined. The GPTQ papers use 128 x 2048.
    if let Some(l) = s.linears.iter().max_by_key(|l| l.k) {
        if s.calib_tokens < l.k {
            eprintln!(
                "note: {} calibration tokens, fewer than the {} inputs of {}: its Hessian is \
                 rank-deficient and held up by --damp alone (GPTQ calibrates on ~128 x 2048 tokens)",
                s.calib_tokens, l.k, l.name
            );
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!(
        "{} g{} {}{}{} {}: {} calibration tokens ({} x {}) from {}",
        serde_json::to_string(&s.method)?.trim_matches('"'),
        s.group_size,
        if s.sym { "sym" } else { "asym" },
        if s.act_order { " act-order" } else { "" },
        if s.static_groups {
            " static-groups"
        } else {
            ""
        },
        s.format,
        s.calib_tokens,
        s.nsamples,
        s.seqlen,
        s.calib
    );
    println!(
        "{:<36} {:>12} {:>10} {:>10} {:>7}",
        "linear", "K x N", "RTN err", "err", "ratio"
    );
    for l in &s.linears {
        println!(
            "{:<36} {:>12} {:>10.5} {:>10.5} {:>7.3}",
            l.name,
            format!("{}x{}", l.k, l.n),
            l.rtn_error,
            l.error,
            l.error / l.rtn_error
        );
    }
    let geo = (s
        .linears
        .iter()
        .map(|l| (l.error / l.rtn_error).ln())
        .sum::<f64>()
        / s.linears.len().max(1) as f64)
        .exp();
    println!(
        "geometric mean error / RTN error: {geo:.3}; wrote {} in {:.1} s",
        s.out.display(),
        s.seconds
    );
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    match s.peak_rss_bytes {
        Some(p) => println!(
            "peak RSS {:.1} MiB (bound on the large buffers for this model: {:.1} MiB)",
            mib(p),
            mib(s.ram_bound_bytes)
        ),
        None => println!("peak RSS unknown (no /proc/self/status)"),
    }
    println!("Hessian sums: {}", s.hessian);
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// The shapes (and context): a preset of `lab plan --model`, e.g. vicuna-7b, vicuna-13b-16k.
    #[arg(long)]
    model: String,
    /// Decoder layers (default: the model's 32 / 40). Fewer keep the file small and the CPU
    /// engine fast while every linear keeps its real width.
    #[arg(long)]
    layers: Option<usize>,
    /// Rows per group: 32, 64, 128, ... (must divide every K), or -1 for per-channel.
    #[arg(long, default_value_t = 128, allow_hyphen_values = true)]
    group: i32,
    /// Act-order: a random channel order per layer input, written as g_idx (desc_act).
    #[arg(long)]
    act_order: bool,
    /// Asymmetric zeros (random per group and column; default symmetric, zero = 8).
    #[arg(long)]
    asym: bool,
    #[arg(long, value_enum, default_value = "v1")]
    format: FormatArg,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output folder: must not exist, or be empty.
    #[arg(long)]
    out: PathBuf,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run_synth(a: SynthArgs) -> anyhow::Result<()> {
    // preset's own message offers --checkpoint DIR, which this command does not have.
    let mut model = gptq_lab::model::config::ModelConfig::preset(&a.model).map_err(|_| {
        gptq_lab::LabError::invalid(
            "--model",
            format!(
                "unknown model '{}'; expected one of {}",
                a.model,
                gptq_lab::model::config::ModelConfig::PRESETS
            ),
        )
    })?;
    if let Some(n) = a.layers {
        if n == 0 || n > model.num_hidden_layers {
            bail!(
                "--layers {n}: expected 1..={} for {}",
                model.num_hidden_layers,
                model.name
            );
        }
        model.num_hidden_layers = n;
    }
    let s = gptq_lab::quantize::write_synthetic_checkpoint(&gptq_lab::quantize::SynthOptions {
        model,
        group_size: a.group,
        act_order: a.act_order,
        sym: !a.asym,
        format: match a.format {
            FormatArg::V1 => ZeroFormat::V1,
            FormatArg::V2 => ZeroFormat::V2,
        },
        seed: a.seed,
        out: a.out,
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!(
        "wrote {} ({} shapes, {} layers, g{}{}{}, random weights, seed {}): {:.2} GB in {:.1} s",
        s.out.display(),
        s.model,
        s.layers,
        s.group_size,
        if s.sym { " sym" } else { " asym" },
        if s.act_order { " act-order" } else { "" },
        a.seed,
        s.bytes as f64 / 1e9,
        s.seconds
    );
    Ok(())
}
