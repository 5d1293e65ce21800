//! `lab decode`: generate tokens from a checkpoint.
//!
//!   lab decode --backend cpu --model tiny --prompt-ids 1,17,200 --max-new-tokens 16 --greedy --json
//!   lab decode --backend cpu --checkpoint DIR --prompt "Hello" --template v1.1 --top-p 0.9 --seed 1
//!
//! The CPU backend is the reference engine (dense f32 weights, one token at a time): meant for the
//! tiny fixtures and spot checks, not for speed. The GPU engine: decode_gpu.rs (--backend gpu).

#[path = "decode_gpu.rs"]
pub(crate) mod gpu;

use anyhow::{bail, Context};
use gptq_lab::model::checkpoint::Checkpoint;
use gptq_lab::model::cpu_engine::CpuEngine;
use gptq_lab::model::sampler::{Sampler, Sampling};
use gptq_lab::model::template::Template;
use gptq_lab::model::tokenizer::{parse_ids, TextTokenizer, NO_TOKENIZER};
use gptq_lab::model::weights::LlamaWeights;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The CPU engine, as --backend cpu (auto does not pick the GPU engine: pass --backend gpu).
    Auto,
    Cpu,
    Gpu,
}

#[derive(clap::Args, Debug)]
pub struct DecodeArgs {
    #[arg(long, value_enum, default_value = "auto")]
    backend: Backend,
    /// "tiny" (the committed fixture tests/fixtures/tiny-sym-g32), or vicuna-7b / vicuna-13b
    /// (GPU only, synthetic weights). --checkpoint takes precedence.
    #[arg(long)]
    model: Option<String>,
    /// A checkpoint folder (GPTQ or fp16, HF layout).
    #[arg(long, value_parser = crate::checkpoint_folder())]
    checkpoint: Option<PathBuf>,
    /// Prompt as raw token ids, e.g. "1,306,4966" (used as given: no BOS is added).
    #[arg(long, conflicts_with = "prompt")]
    prompt_ids: Option<String>,
    /// Prompt text, wrapped by --template and tokenized with the checkpoint's tokenizer
    /// (tokenizer.json, or a sentencepiece tokenizer.model).
    #[arg(long)]
    prompt: Option<String>,
    /// Prompt template for --prompt: v0, v1.1 or raw.
    #[arg(long, default_value = "v1.1")]
    template: String,
    /// New tokens to generate at most (fewer at an end-of-sequence id). generation_config.json's
    /// max_new_tokens / max_length are not read; the run names them when the file sets them.
    #[arg(long, default_value_t = 16)]
    max_new_tokens: usize,
    /// Always pick the most likely token (same as --temperature 0); not with --top-p or
    /// --temperature, which it would override.
    #[arg(long, conflicts_with_all = ["top_p", "temperature"])]
    greedy: bool,
    /// Nucleus mass kept when sampling. Default: the checkpoint's generation_config.json when it
    /// sets do_sample, as transformers' generate reads it (false: greedy; true: its top_p,
    /// 1.0 where it has none), else 0.9 (a file without do_sample leaves the lab's defaults,
    /// where transformers would decode greedily). A flag given wins over the file.
    #[arg(long)]
    top_p: Option<f32>,
    /// Softmax temperature when sampling, 0 = greedy. Default: as --top-p, from
    /// generation_config.json (1.0 where it has none), else 0.7.
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep generating after the end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    /// One JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// Also write the logits every generated token was drawn from to FILE as JSON (the CPU
    /// backend adds every prompt position's: scripts/gptq-interop.py compares them with other
    /// GPTQ loaders; scripts/decode-gpu-vs-cpu compares the two engines where top-p differs).
    #[arg(long, hide = true)]
    dump_logits: Option<PathBuf>,
    #[command(flatten)]
    gpu: gpu::GpuArgs,
}

/// Where `--model tiny` points: the committed fixture, found from the source tree this binary was
/// built from (the CPU engine is a development tool; installed binaries pass --checkpoint).
const TINY_FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-sym-g32");

pub fn run(a: DecodeArgs, m: &clap::ArgMatches) -> anyhow::Result<()> {
    if a.backend != Backend::Gpu {
        // The CPU engine reads none of the GPU engine's flags (auto runs it too).
        crate::refuse_typed::<gpu::GpuArgs>(
            m,
            "a flag of the GPU engine (--backend gpu); the CPU backend does not use it: \
             leave it out or pass --backend gpu",
        )?;
    }
    if a.backend == Backend::Gpu {
        if a.dump_logits.is_some() && a.checkpoint.is_none() {
            bail!("--dump-logits: the GPU backend writes logits only when generating from --checkpoint DIR");
        }
        return gpu::run(&a);
    }
    let dir = checkpoint_dir(&a)?;
    let (sampling, sampling_from) = sampling(&a, &dir)?;
    let template = Template::parse(&a.template)?;

    let t0 = Instant::now();
    let ckpt = Checkpoint::open(&dir)?;
    for n in ckpt.notes() {
        eprintln!("note: {n}");
    }
    if let Some(note) = gptq_lab::quantize::synth::synthetic_note(&ckpt.dir) {
        eprintln!("{note}");
    }
    if let Some(note) = sampling_from.note(sampling) {
        eprintln!("{note}");
    }
    let tokenizer = TextTokenizer::from_checkpoint_dir(&ckpt.dir)?;
    let prompt: Vec<u32> = match (&a.prompt_ids, &a.prompt) {
        (Some(ids), _) => parse_ids(ids)?,
        (None, Some(text)) => {
            let tok = tokenizer.as_ref().with_context(|| {
                format!(
                    "{}: {NO_TOKENIZER}, so --prompt cannot be tokenized; pass --prompt-ids",
                    ckpt.dir.display()
                )
            })?;
            tok.encode(&template.render(text), true)?
        }
        (None, None) => bail!("give a prompt: --prompt TEXT or --prompt-ids 1,2,3"),
    };
    if prompt.is_empty() {
        bail!("the prompt has no tokens: give at least one (--prompt TEXT or --prompt-ids 1,2,3)");
    }
    check_vocab(
        &a,
        &prompt,
        &ckpt.dir,
        ckpt.config.vocab_size,
        tokenizer.as_ref(),
    )?;
    check_context(prompt.len(), a.max_new_tokens, &ckpt.config)?;
    let eos = stop_tokens(&a, &ckpt.dir, ckpt.config.vocab_size, tokenizer.as_ref())?;
    let weights = LlamaWeights::from_checkpoint(&ckpt)?;
    let mut engine = CpuEngine::new(weights, ckpt.config.clone())?;
    let load_s = t0.elapsed().as_secs_f64();

    let sampler = Sampler::new(sampling, a.seed);
    let t1 = Instant::now();
    // With --dump-logits every prompt position's logits are kept (same cache, same last logits).
    let mut prompt_logits = Vec::new();
    let mut logits = if a.dump_logits.is_some() {
        prompt_logits = engine.forward_all(&prompt)?;
        prompt_logits.last().cloned().unwrap_or_default()
    } else {
        engine.forward(&prompt)?
    };
    let prefill_s = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    // Grown as tokens come (--max-new-tokens is the user's number: never sized from it).
    let mut tokens = Vec::new();
    // Top-p: each draw's margin (sampler::TopPDraw), in the JSON beside the tokens.
    let mut margins = Vec::new();
    let mut stop = "max_new_tokens";
    // The logits each new token was sampled from (only kept for --dump-logits).
    let mut step_logits = Vec::new();
    let mut stream = text_stream(&a, tokenizer.as_ref());
    for i in 0..a.max_new_tokens {
        // The draw belongs to the position of the token just fed (as in the GPU engine).
        let (t, margin) = sampler.sample_with_margin(&logits, prompt.len() - 1 + i)?;
        margins.extend(margin);
        if let Some(st) = stream.as_mut() {
            if !eos.contains(&t) {
                let piece = st.push(t)?;
                if !a.json {
                    print_piece(&piece);
                }
            }
        }
        if a.dump_logits.is_some() {
            step_logits.push(logits.clone());
        }
        tokens.push(t);
        if eos.contains(&t) {
            stop = "eos";
            break;
        }
        if stream.as_ref().is_some_and(|s| s.stopped()) {
            stop = "stop_str";
            break;
        }
        if i + 1 < a.max_new_tokens {
            logits = engine.forward(&[t])?;
        }
    }
    // Steps that ran the model: every new token but the last one fed nothing back.
    let decode_steps = tokens.len().saturating_sub(1);
    let decode_s = t2.elapsed().as_secs_f64();
    let text = match &tokenizer {
        Some(t) => Some(generated_text(&a, t, &tokens)?),
        None => None,
    };
    let per_s = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    if let Some(path) = &a.dump_logits {
        let dump = serde_json::json!({
            "checkpoint": gptq_lab::util::path_json(&ckpt.dir),
            "prompt_tokens": prompt,
            "prompt_logits": prompt_logits,
            "tokens": tokens,
            "step_logits": step_logits,
        });
        gptq_lab::util::write_json_atomic(path, &dump)?;
    }

    if a.json {
        let quant = ckpt.quant.as_ref().map(|q| {
            serde_json::json!({"bits": q.bits, "group_size": q.group_size, "desc_act": q.desc_act, "sym": q.sym})
        });
        let out = serde_json::json!({
            "backend": "cpu",
            "checkpoint": gptq_lab::util::path_json(&ckpt.dir),
            "model": ckpt.config.name,
            "quantization": quant,
            "sampling": sampling_json(sampling, &sampling_from, a.seed),
            "prompt_tokens": prompt,
            "tokens": tokens,
            // Per new token, top-p only: the fraction of the nucleus mass between the draw and the
            // nearest edge (a token interval's or the nucleus cut's): another engine whose logits
            // differ slightly may choose differently only where this is small.
            "top_p_margins": margins,
            "text": text,
            "stop": stop,
            "timings": {
                "load_s": load_s,
                "prefill_s": prefill_s,
                "decode_s": decode_s,
                "prefill_tokens_per_s": per_s(prompt.len(), prefill_s),
                "decode_tokens_per_s": per_s(decode_steps, decode_s),
            },
        });
        println!("{}", serde_json::to_string(&out)?);
    } else {
        match stream.as_mut() {
            Some(st) => println!("{}", st.finish()?),
            None => println!("{tokens:?}"),
        }
        eprintln!(
            "cpu: {} prompt tokens in {prefill_s:.3} s ({:.1} tok/s), {} new tokens ({stop}), decode {:.1} tok/s, load {load_s:.2} s",
            prompt.len(),
            per_s(prompt.len(), prefill_s),
            tokens.len(),
            per_s(decode_steps, decode_s),
        );
    }
    Ok(())
}

/// The prompt and --max-new-tokens must fit the model's context (config's
/// max_position_embeddings, times a linear RoPE factor); returns the positions the run needs. The sum is checked, not
/// wrapped: a huge --max-new-tokens is refused, never mistaken for a small one. Shared by both
/// backends.
pub(super) fn check_context(
    prompt_len: usize,
    max_new_tokens: usize,
    cfg: &gptq_lab::model::config::ModelConfig,
) -> anyhow::Result<usize> {
    let ctx = cfg.context_len();
    let origin = cfg.context_origin();
    if prompt_len > ctx || (prompt_len == ctx && max_new_tokens > 0) {
        bail!(
            "the prompt alone has {prompt_len} tokens, the model's whole context is {ctx} \
             ({origin} in config.json): shorten the prompt"
        );
    }
    match prompt_len.checked_add(max_new_tokens) {
        Some(n) if n <= ctx => Ok(n),
        _ => bail!(
            "--max-new-tokens {max_new_tokens}: {prompt_len} prompt tokens + {max_new_tokens} new \
             exceed the model's context of {ctx} ({origin} in config.json); \
             give at most {} new tokens",
            ctx.saturating_sub(prompt_len)
        ),
    }
}

/// Where the sampling settings came from, for the JSON; `file`: generation_config.json decided
/// some of them or sets what the engines do not apply (worth a note on stderr: the same flags
/// sample differently on another folder).
pub(super) struct SamplingFrom {
    pub text: String,
    pub file: bool,
}

impl SamplingFrom {
    fn new(text: impl Into<String>, file: bool) -> Self {
        SamplingFrom {
            text: text.into(),
            file,
        }
    }

    /// The note for stderr, when the file decided something.
    pub(super) fn note(&self, s: Sampling) -> Option<String> {
        self.file.then(|| match s {
            Sampling::Greedy => format!("note: sampling: greedy, from {}", self.text),
            Sampling::TopP { .. } => format!("note: sampling: top-p, from {}", self.text),
        })
    }
}

/// The sampling of a run from `dir`: --greedy; else --top-p / --temperature where given and the
/// rest from generation_config.json when it sets `do_sample`, as transformers' generate reads it
/// (false: greedy unless a flag asks to sample; true: its top_p and temperature, 1.0 where it
/// has none; top_p 0 keeps one token: greedy), else the lab's defaults (top-p 0.9, temperature
/// 0.7; transformers would decode greedily). A value the run takes from the file that generate
/// would refuse (a temperature that is not > 0, a non-boolean do_sample) or that makes no
/// nucleus (top_p outside [0, 1], which generate skips) is an error naming the file; a value a
/// flag replaces is not read. What the file sets that the engines do not do (top_k, transformers'
/// default 50 included; repetition_penalty, beams, ...) is named. Shared by both backends.
pub(super) fn sampling(a: &DecodeArgs, dir: &Path) -> anyhow::Result<(Sampling, SamplingFrom)> {
    if a.greedy {
        return Ok((Sampling::Greedy, SamplingFrom::new("--greedy", false)));
    }
    let path = dir.join("generation_config.json");
    let file: Option<serde_json::Value> = if gptq_lab::util::optional_file(&path)? {
        Some(gptq_lab::util::read_json(&path)?)
    } else {
        None
    };
    let (s, mut from) = sampling_from(a, &path, file.as_ref())?;
    let unapplied = file.as_ref().map(not_applied).unwrap_or_default();
    if !unapplied.is_empty() {
        from.text.push_str(&format!(
            "; {} sets {unapplied}, which the engines do not apply",
            path.display()
        ));
        from.file = true;
    }
    // generate stops at the file's max_new_tokens, else its max_length (prompt included); the
    // lab's length is its own flag, so a file's length is named beside the one the run uses.
    let lengths: Vec<String> = ["max_new_tokens", "max_length"]
        .iter()
        .filter_map(|k| file.as_ref().and_then(|f| f.get(*k)).map(|v| (k, v)))
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    if !lengths.is_empty() {
        from.text.push_str(&format!(
            "; {} sets {}, not read: the run's length is --max-new-tokens {}",
            path.display(),
            lengths.join(", "),
            a.max_new_tokens
        ));
        from.file = true;
    }
    Ok((s, from))
}

/// What generation_config.json sets, other than top_k, that changes transformers' generate and
/// that the engines do not do, e.g. "repetition_penalty 1.1, num_beams 4" (empty: nothing).
fn not_applied(file: &serde_json::Value) -> String {
    use serde_json::{json, Value};
    // Each field with generate's default: a value other than it changes the tokens.
    let defaults = [
        ("repetition_penalty", json!(1.0)),
        ("num_beams", json!(1)),
        ("typical_p", json!(1.0)),
        ("min_p", Value::Null),
        ("epsilon_cutoff", json!(0.0)),
        ("eta_cutoff", json!(0.0)),
        ("no_repeat_ngram_size", json!(0)),
        ("min_length", json!(0)),
        ("min_new_tokens", Value::Null),
        ("bad_words_ids", Value::Null),
        ("suppress_tokens", Value::Null),
        ("begin_suppress_tokens", Value::Null),
        ("forced_bos_token_id", Value::Null),
        ("forced_eos_token_id", Value::Null),
    ];
    let same = |v: &Value, d: &Value| match (v.as_f64(), d.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => v == d,
    };
    defaults
        .iter()
        .filter_map(|(key, d)| match &file[*key] {
            Value::Null => None,
            v if same(v, d) => None,
            v => Some(format!("{key} {v}")),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `sampling`'s rules once the file is read (`file`: its content, None without one).
fn sampling_from(
    a: &DecodeArgs,
    path: &Path,
    file: Option<&serde_json::Value>,
) -> anyhow::Result<(Sampling, SamplingFrom)> {
    let flags = || {
        let mut f: Vec<&str> = Vec::new();
        if a.top_p.is_some() {
            f.push("--top-p");
        }
        if a.temperature.is_some() {
            f.push("--temperature");
        }
        f.join(" and ")
    };
    let field = |key: &str| file.map_or(&serde_json::Value::Null, |v| &v[key]);
    let do_sample = match field("do_sample") {
        serde_json::Value::Null => None,
        serde_json::Value::Bool(b) => Some(*b),
        other => bail!(
            "{}: do_sample {other}; expected true or false",
            path.display()
        ),
    };
    let number = |key: &str, ok: fn(f64) -> bool, want: &str| -> anyhow::Result<Option<f32>> {
        match field(key) {
            serde_json::Value::Null => Ok(None),
            // Checked as the f32 the engines use: 1e308 or 1e-320 are not what they look like.
            v => match v.as_f64().map(|x| (x, x as f32)) {
                Some((_, x)) if ok(x as f64) => Ok(Some(x)),
                Some((x, x32)) if ok(x) => bail!(
                    "{}: {key} {v} is {x32} as the 32-bit float the engines use; expected {want}",
                    path.display()
                ),
                _ => bail!("{}: {key} {v}; expected {want}", path.display()),
            },
        }
    };
    let (top_p, temperature, from) = match do_sample {
        Some(false) if a.top_p.is_none() && a.temperature.is_none() => {
            let from = format!(
                "{} (do_sample false: greedy, as transformers' generate)",
                path.display()
            );
            return Ok((Sampling::Greedy, SamplingFrom::new(from, true)));
        }
        Some(true) => {
            // What transformers' warpers accept: top_p in [0, 1] (0 keeps the one most likely
            // token), a temperature > 0 (0 raises there: greedy is do_sample false).
            // Only what the run takes from the file is read: a flag replaces the file's value.
            let p = match a.top_p {
                Some(_) => None,
                None => number("top_p", |x| (0.0..=1.0).contains(&x), "0 <= top_p <= 1")?,
            };
            let t = match a.temperature {
                Some(_) => None,
                None => number(
                    "temperature",
                    |x| x.is_finite() && x > 0.0,
                    "a finite temperature > 0 (transformers' generate refuses 0 with do_sample \
                     true; greedy is do_sample false)",
                )?,
            };
            let mut from = format!(
                "{} (do_sample true{}{})",
                path.display(),
                if a.top_p.is_none() {
                    format!(", top_p {}", p.unwrap_or(1.0))
                } else {
                    String::new()
                },
                if a.temperature.is_none() {
                    format!(", temperature {}", t.unwrap_or(1.0))
                } else {
                    String::new()
                },
            );
            if !flags().is_empty() {
                from = format!("{} over {from}", flags());
            }
            // generate's top_k is 50 where the file has none; 0 turns it off.
            match field("top_k") {
                serde_json::Value::Null => from.push_str(
                    "; transformers' default top_k 50 is not applied (the engines sample by \
                     top-p only)",
                ),
                k if k.as_u64() == Some(0) => {}
                k => from.push_str(&format!(
                    "; its top_k {k} is not applied (the engines sample by top-p only)"
                )),
            }
            if a.top_p.is_none() && p == Some(0.0) {
                from.push_str("; top_p 0 keeps only the most likely token: greedy");
                return Ok((Sampling::Greedy, SamplingFrom::new(from, true)));
            }
            (
                a.top_p.or(p).unwrap_or(1.0),
                a.temperature.or(t).unwrap_or(1.0),
                SamplingFrom::new(from, true),
            )
        }
        _ => {
            let from = match (flags().is_empty(), file.is_some()) {
                (true, true) => {
                    format!("the lab's defaults ({} sets no do_sample)", path.display())
                }
                (true, false) => "the lab's defaults (no generation_config.json)".to_string(),
                (false, _) => format!("{}, the lab's defaults for the rest", flags()),
            };
            (
                a.top_p.unwrap_or(0.9),
                a.temperature.unwrap_or(0.7),
                SamplingFrom::new(from, false),
            )
        }
    };
    Ok((Sampling::new(false, top_p, temperature)?, from))
}

/// The `sampling` object of `--json`.
pub(super) fn sampling_json(s: Sampling, from: &SamplingFrom, seed: u64) -> serde_json::Value {
    match s {
        Sampling::Greedy => serde_json::json!({"mode": "greedy", "from": from.text}),
        Sampling::TopP { top_p, temperature } => serde_json::json!({
            "mode": "top_p", "top_p": top_p, "temperature": temperature, "seed": seed, "from": from.text
        }),
    }
}

/// The tokens that end generation: none with --ignore-eos; else every id the checkpoint names as
/// its end of sequence: generation_config.json's eos_token_id (what transformers' `generate`
/// stops at), config.json's (each a number or a list, every entry counted) and the tokenizer's
/// `</s>`. All of them, because they disagree in real files: LLaMA conversions of March 2023 say
/// eos_token_id 1 in both JSON files while their tokenizer's `</s>`, which the model emits, is 2.
/// Shared by both backends.
pub(super) fn stop_tokens(
    a: &DecodeArgs,
    dir: &Path,
    vocab: usize,
    tokenizer: Option<&TextTokenizer>,
) -> anyhow::Result<Vec<u32>> {
    if a.ignore_eos {
        return Ok(Vec::new());
    }
    let mut ids = eos_ids(&dir.join("config.json"), vocab)?;
    let generation = dir.join("generation_config.json");
    if gptq_lab::util::optional_file(&generation)? {
        ids.extend(eos_ids(&generation, vocab)?);
    }
    ids.extend(tokenizer.and_then(|t| t.token_id("</s>")));
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// The generated text as it grows, when there is a tokenizer: printed as it comes (stdout)
/// unless --json asks for one document, and watched for the template's stop string (`stop_str`)
/// either way. Shared by both backends.
pub(super) fn text_stream<'a>(
    a: &DecodeArgs,
    tokenizer: Option<&'a TextTokenizer>,
) -> Option<gptq_lab::model::tokenizer::TextStream<'a>> {
    let stop = stop_str(a);
    match tokenizer {
        Some(t) if !a.json || stop.is_some() => {
            Some(gptq_lab::model::tokenizer::TextStream::new(t).with_stop(stop))
        }
        _ => None,
    }
}

/// The stop string of the template a text prompt was rendered with (Vicuna v0's "###"); none
/// for --prompt-ids or a bad --template (refused where the prompt is rendered).
pub(super) fn stop_str(a: &DecodeArgs) -> Option<&'static str> {
    if a.prompt_ids.is_some() || a.prompt.is_none() {
        return None;
    }
    Template::parse(&a.template).ok().and_then(|t| t.stop_str())
}

/// The prompt's ids against config.json's vocab_size, and the tokenizer's size against it, before
/// any weights load: an id past the model's logits is refused naming where it came from
/// (`refuse_out_of_vocab`), instead of the engine's bare "token id out of range"; a tokenizer
/// with fewer tokens than the model (a vocabulary padded for the GPU) is noted, since a
/// generated id past it has no text.
pub(super) fn check_vocab(
    a: &DecodeArgs,
    prompt: &[u32],
    dir: &Path,
    vocab: usize,
    tokenizer: Option<&TextTokenizer>,
) -> anyhow::Result<()> {
    let config = dir.join("config.json");
    match (a.prompt_ids.is_some(), tokenizer) {
        (false, Some(tok)) => refuse_out_of_vocab(prompt, vocab, &config, "--prompt", Some(tok))?,
        _ => refuse_out_of_vocab(prompt, vocab, &config, "--prompt-ids", None)?,
    }
    if let Some(tok) = tokenizer.filter(|t| t.vocab_size() < vocab) {
        eprintln!(
            "note: the tokenizer ({}) has {} tokens, {}'s vocab_size is {vocab}: a generated id \
             past the tokenizer's has no text",
            tok.path().display(),
            tok.vocab_size(),
            config.display()
        );
    }
    Ok(())
}

/// Token ids (`what`: the flag or text they came from; `tokenizer`: the one that made them, if
/// one did) against `config`'s vocab_size: the first id past the model's logits is an error naming
/// both files (a tokenizer of another model) or the flag, not an engine failure later. `lab
/// decode`'s prompt and `lab eval`'s text.
pub(crate) fn refuse_out_of_vocab(
    ids: &[u32],
    vocab: usize,
    config: &Path,
    what: &str,
    tokenizer: Option<&TextTokenizer>,
) -> anyhow::Result<()> {
    let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) else {
        return Ok(());
    };
    match tokenizer {
        Some(tok) => bail!(
            "{what}: the tokenizer ({}) gives token id {bad}, out of range for {}'s vocab_size \
             {vocab}: the tokenizer and config.json are of different models",
            tok.path().display(),
            config.display()
        ),
        None => bail!(
            "{what}: token id {bad} is out of range for {}'s vocab_size {vocab}",
            config.display()
        ),
    }
}

/// The decoded text of the new tokens, ending before the template's stop string.
pub(super) fn generated_text(
    a: &DecodeArgs,
    tokenizer: &TextTokenizer,
    tokens: &[u32],
) -> anyhow::Result<String> {
    let mut text = tokenizer.decode(tokens)?;
    if let Some(i) = stop_str(a).and_then(|s| text.find(s)) {
        text.truncate(i);
    }
    Ok(text)
}

/// One piece of streamed text on stdout, flushed so it shows while the next token is computed.
pub(super) fn print_piece(piece: &str) {
    use std::io::Write;
    if !piece.is_empty() {
        let mut out = std::io::stdout().lock();
        // A closed pipe (`lab decode ... | head`) is not an error worth stopping generation for.
        let _ = out.write_all(piece.as_bytes()).and_then(|_| out.flush());
    }
}

fn checkpoint_dir(a: &DecodeArgs) -> anyhow::Result<PathBuf> {
    if let Some(dir) = &a.checkpoint {
        return Ok(dir.clone());
    }
    match a.model.as_deref() {
        Some("tiny") => {
            let dir = PathBuf::from(TINY_FIXTURE);
            if !dir.is_dir() {
                bail!(
                    "--model tiny: fixture {} is missing (it lives in the source tree); pass --checkpoint DIR",
                    dir.display()
                );
            }
            Ok(dir)
        }
        // A preset's synthetic weights exist only on the GPU engine; any other name is a typo.
        Some(m) if gptq_lab::model::config::ModelConfig::preset(m).is_ok() => bail!(
            "--model {m}: the CPU backend runs real weights only; pass --checkpoint DIR \
             (or --model tiny). Synthetic {m} weights are for the GPU engine (--backend gpu)"
        ),
        Some(m) => bail!(
            "--model {m}: unknown model; known: tiny (both backends), tiny-check and the presets \
             {} (--backend gpu only); or pass --checkpoint DIR",
            gptq_lab::model::config::ModelConfig::PRESETS
        ),
        None => bail!("say which weights: --checkpoint DIR or --model tiny"),
    }
}

/// `eos_token_id` of a JSON file (config.json, generation_config.json): a number or a list of
/// them; none when the field is absent or null. Any other value (negative, past the vocabulary,
/// not a number) is an error naming the file: generation would otherwise never stop where the
/// model says.
fn eos_ids(path: &Path, vocab: usize) -> anyhow::Result<Vec<u32>> {
    let v: serde_json::Value = gptq_lab::util::read_json(path)?;
    let field = &v["eos_token_id"];
    let values = match field {
        serde_json::Value::Null => return Ok(Vec::new()),
        serde_json::Value::Array(a) => a.iter().collect(),
        e => vec![e],
    };
    values
        .into_iter()
        .map(|e| match e.as_u64().filter(|&id| id < vocab as u64) {
            Some(id) => Ok(id as u32),
            None => bail!(
                "{}: eos_token_id {field}; expected a token id below vocab_size {vocab} (or a list of them)",
                path.display()
            ),
        })
        .collect()
}
