//! `lab synth-checkpoint`: a GPTQ checkpoint of a model's exact shapes with seeded random
//! weights, written in the format real files use (one model.safetensors, qweight/qzeros/scales/
//! g_idx per linear, quantize_config.json, config.json with `quantization_config`).
//!
//! Why: the decode bench's synthetic weights are generated on the GPU in the engine's own layout,
//! so they never pass through the path a user's downloaded checkpoint takes (mmap -> canonical
//! form -> variant layout -> upload). A file of the real shapes lets that path be proven on a GPU
//! without a download: GPU engine vs CPU engine on the same file at 7B/13B widths (few layers,
//! so the f64 CPU engine stays fast), and a full 32/40-layer file for load time and VRAM.
//! The weights are random: the text such a model "generates" is noise, and config.json says so.
//!
//! Values (chosen so activations stay O(1) through the layers, as `HostLlama::random` does):
//! codes in 1..=15, so they centre on the zero (uniform 0..=15 codes have mean 7.5: against zero 8
//! every weight would share a -0.5 scale offset, a rank-one part that drives every token to the same
//! logits; here a random nibble with 0 replaced by 8, mean exactly 8); symmetric zeros 8,
//! asymmetric true zeros uniform in 7..=9; scales `U(0.75, 1.25) / (4.18 sqrt(k))` so a weight's
//! standard deviation is ~1/sqrt(k) (codes minus 8 have std 4.18); act-order: one random channel order
//! per input (q/k/v share one, gate/up one, o and down their own, as GPTQ's Hessian order would),
//! g_idx from it. Norm gains U(0.8, 1.2), embedding U(-1, 1), lm_head U(+-1.7 / sqrt(hidden)).
//! Host memory: one tensor at a time, the largest being the embedding and lm_head (13B: 328 MB of
//! fp16 each, plus their f16 values before encoding; a 1-layer 13B write peaked at ~650 MB, the full
//! 7B at ~520 MB).

use super::output::{prepare_out, publish, write_configs};
use crate::gptq::{act_order_g_idx, group_rows, QuantLinear, ZeroFormat};
use crate::model::checkpoint::{
    encode_dense, encode_linear, linear_specs, QuantInfo, StreamedSafetensors,
};
use crate::model::config::ModelConfig;
use crate::{LabError, Result};
use half::f16;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What `lab synth-checkpoint` writes.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    /// The shapes (a preset, its `num_hidden_layers` possibly lowered by the caller).
    pub model: ModelConfig,
    /// Rows per group, or -1 for per-channel.
    pub group_size: i32,
    pub act_order: bool,
    pub sym: bool,
    pub format: ZeroFormat,
    pub seed: u64,
    /// Must not exist, or be an empty folder.
    pub out: PathBuf,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SynthSummary {
    #[serde(serialize_with = "crate::util::ser_path")]
    pub out: PathBuf,
    pub model: String,
    pub layers: usize,
    pub group_size: i32,
    pub act_order: bool,
    pub sym: bool,
    /// Bytes of model.safetensors.
    pub bytes: u64,
    pub seconds: f64,
}

/// The unquantized tensors, in the order they are generated (so the seed fixes every value).
fn dense_specs(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, v) = (cfg.hidden_size, cfg.vocab_size);
    let mut d = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for i in 0..cfg.num_hidden_layers {
        d.push((format!("model.layers.{i}.input_layernorm.weight"), vec![h]));
        d.push((
            format!("model.layers.{i}.post_attention_layernorm.weight"),
            vec![h],
        ));
    }
    d.push(("model.norm.weight".into(), vec![h]));
    d.push(("lm_head.weight".into(), vec![v, h]));
    d
}

fn dense_values(name: &str, len: usize, hidden: usize, rng: &mut StdRng) -> Vec<f16> {
    let (lo, hi) = if name.ends_with("norm.weight") {
        (0.8f32, 1.2f32)
    } else if name == "lm_head.weight" {
        let a = 1.7 / (hidden as f32).sqrt();
        (-a, a)
    } else {
        (-1.0, 1.0)
    };
    (0..len)
        .map(|_| f16::from_f32(rng.random_range(lo..hi)))
        .collect()
}

/// Standard deviation of `code_word`'s codes minus 8: sqrt((sum over 1..=15 of (v - 8)^2) / 16).
const CODE_STD: f32 = 4.18;

/// One packed word of 8 codes in 1..=15 with mean exactly 8: a random nibble each, 0 replaced by
/// 8 (so 8 is twice as likely as any other code).
fn code_word(r: u32) -> u32 {
    (0..8).fold(0u32, |w, i| {
        let c = (r >> (4 * i)) & 0xF;
        w | (if c == 0 { 8 } else { c } << (4 * i))
    })
}

/// One random linear [k, n] in canonical form (true zeros). `order`: the act-order channel order
/// (sorted position -> input row), or `None` for g_idx = row / group.
fn random_linear(
    k: usize,
    n: usize,
    g: usize,
    sym: bool,
    order: Option<&[usize]>,
    rng: &mut StdRng,
) -> QuantLinear {
    let groups = k.div_ceil(g);
    let qweight: Vec<u32> = (0..k / 8 * n).map(|_| code_word(rng.random())).collect();
    let qzeros: Vec<u32> = if sym {
        vec![0x8888_8888; groups * (n / 8)]
    } else {
        (0..groups * (n / 8))
            .map(|_| {
                (0..8).fold(0u32, |w, i| {
                    w | ((7 + rng.random_range(0..3u32)) << (4 * i))
                })
            })
            .collect()
    };
    let base = 1.0 / (CODE_STD * (k as f32).sqrt());
    let scales = (0..groups * n)
        .map(|_| f16::from_f32(base * rng.random_range(0.75f32..1.25)))
        .collect();
    QuantLinear {
        k,
        n,
        group_size: g,
        qweight,
        qzeros,
        scales,
        g_idx: order.map(|o| act_order_g_idx(o, g)),
        bias: None,
        symmetric: sym,
    }
}

/// config.json of the synthetic model: the preset's shapes, LLaMA's usual fields, and a
/// `lab_synthetic` entry that says the weights are random.
fn config_json(o: &SynthOptions) -> serde_json::Value {
    let c = &o.model;
    let rope_scaling = (c.rope_linear_factor != 1.0)
        .then(|| json!({"type": "linear", "factor": c.rope_linear_factor}));
    json!({
        "_name_or_path": format!("lab-synthetic-{}", c.name),
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": rope_scaling,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": false,
        "torch_dtype": "float16",
        "lab_synthetic": {
            "seed": o.seed,
            "note": "random weights of the exact shapes, written by lab synth-checkpoint: \
                     for loader, VRAM and engine-vs-engine tests; not a language model",
        },
    })
}

/// Write the checkpoint (see the module comment). Nothing partial is ever left at `o.out`: the
/// folder is built beside it and renamed into place.
pub fn write_synthetic_checkpoint(o: &SynthOptions) -> Result<SynthSummary> {
    let t0 = std::time::Instant::now();
    let cfg = &o.model;
    if cfg.num_hidden_layers == 0 {
        return Err(LabError::invalid("--layers", "must be at least 1"));
    }
    // Every linear's group must be valid before anything is written.
    let mut plan = Vec::new();
    for (name, shape) in dense_specs(cfg) {
        plan.push((name, safetensors::Dtype::F16, shape));
    }
    let mut rows = Vec::new();
    for (name, k, n) in cfg.layer_linears() {
        let g = group_rows(o.group_size, k)
            .map_err(|r| LabError::invalid("--group", format!("{r} ({name}: K = {k})")))?;
        if k % 8 != 0 || n % 8 != 0 {
            return Err(LabError::invalid(
                "--model",
                format!("{name}: K = {k} and N = {n} must be multiples of 8 to pack int4"),
            ));
        }
        rows.push(g);
    }
    for i in 0..cfg.num_hidden_layers {
        for ((name, k, n), &g) in cfg.layer_linears().into_iter().zip(&rows) {
            plan.extend(linear_specs(
                &format!("model.layers.{i}.{name}"),
                k,
                n,
                k.div_ceil(g),
            ));
        }
    }

    let staging = prepare_out(&o.out)?;
    let built = staging.path().join("checkpoint");
    std::fs::create_dir(&built).map_err(|e| LabError::io(&built, e))?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let weights_path = built.join("model.safetensors");
    let mut weights = StreamedSafetensors::create(&weights_path, plan, meta)?;
    let info = QuantInfo {
        bits: 4,
        group_size: o.group_size,
        desc_act: o.act_order,
        sym: o.sym,
        static_groups: false,
        format: o.format,
        inferred: Vec::new(),
        whole_word_v1: None,
    };

    let mut rng = StdRng::seed_from_u64(o.seed);
    for (name, shape) in dense_specs(cfg) {
        let data = dense_values(&name, shape.iter().product(), cfg.hidden_size, &mut rng);
        let (dt, shape, bytes) = encode_dense(&built, &name, &data, &shape)?;
        weights.write(&name, dt, &shape, &bytes)?;
    }
    for i in 0..cfg.num_hidden_layers {
        let mut order: Vec<usize> = Vec::new();
        for (idx, ((name, k, n), &g)) in cfg.layer_linears().into_iter().zip(&rows).enumerate() {
            // One channel order per input: q,k,v share x; gate,up share x; o and down their own.
            if o.act_order && matches!(idx, 0 | 3 | 4 | 6) {
                order = (0..k).collect();
                order.shuffle(&mut rng);
            }
            let l = random_linear(k, n, g, o.sym, o.act_order.then_some(&order[..]), &mut rng);
            let prefix = format!("model.layers.{i}.{name}");
            for (t, dt, shape, bytes) in encode_linear(&built, &prefix, &l, o.format, &info)? {
                weights.write(&t, dt, &shape, &bytes)?;
            }
        }
    }
    weights.finish()?;
    write_configs(&built, &config_json(o), &info)?;
    let bytes = std::fs::metadata(&weights_path)
        .map_err(|e| LabError::io(&weights_path, e))?
        .len();
    publish(&built, &o.out)?;
    Ok(SynthSummary {
        out: o.out.clone(),
        model: cfg.name.clone(),
        layers: cfg.num_hidden_layers,
        group_size: o.group_size,
        act_order: o.act_order,
        sym: o.sym,
        bytes,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// True if `dir`'s config.json carries the `lab_synthetic` marker this writer puts there.
pub fn is_synthetic(dir: &Path) -> bool {
    synthetic_note(dir).is_some()
}

/// The warning `lab decode` and `lab eval` print for a `lab synth-checkpoint` folder, if `dir` is one.
pub fn synthetic_note(dir: &Path) -> Option<String> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).ok()?).ok()?;
    v.get("lab_synthetic")?;
    Some(format!(
        "note: {} was written by lab synth-checkpoint: random weights of the real shapes, not a \
         language model (its text and perplexity mean nothing; its speed and memory are real)",
        dir.display()
    ))
}
