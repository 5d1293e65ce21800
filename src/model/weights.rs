//! Dense f32 LLaMA weights for the CPU reference engine: every linear dequantized once at load
//! (through the f64 reference dequantizer, so the engine sees exactly the ground-truth weights),
//! laid out as W [k, n] row-major (k = in_features), the same orientation as the GPTQ tensors.
//!
//! Memory: 4 bytes per weight, so this is for the tiny fixtures and spot checks (7B would take
//! 27 GB); the GPU engine keeps the packed 4-bit form instead.

use crate::model::checkpoint::{Checkpoint, LinearWeights};
use crate::model::config::ModelConfig;
use crate::{LabError, Result};
use rand::{RngExt, SeedableRng};

/// A dense matrix W [k, n] row-major: `w[r * n + c]` is input row r, output column c.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    pub k: usize,
    pub n: usize,
    pub w: Vec<f32>,
}

impl Dense {
    /// `what` names the tensor in the error when the length is not k * n.
    pub fn new(k: usize, n: usize, w: Vec<f32>, what: &str) -> Result<Self> {
        if w.len() != k * n {
            return Err(LabError::invalid(
                what,
                format!("expected {k} x {n} = {} values, got {}", k * n, w.len()),
            ));
        }
        Ok(Dense { k, n, w })
    }

    /// y [n] = x [k] · W, accumulated in f64 (cheap here, and it keeps the engine's own rounding
    /// well below the f32 rounding of the reference it is compared with).
    pub fn matvec(&self, x: &[f32]) -> Vec<f32> {
        debug_assert_eq!(x.len(), self.k);
        let mut acc = vec![0f64; self.n];
        for (row, &xv) in self.w.chunks_exact(self.n).zip(x) {
            let xv = f64::from(xv);
            for (a, &wv) in acc.iter_mut().zip(row) {
                *a += xv * f64::from(wv);
            }
        }
        acc.into_iter().map(|v| v as f32).collect()
    }
}

/// One decoder layer.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// [hidden]: `input_layernorm`.
    pub attn_norm: Vec<f32>,
    pub wq: Dense,
    pub wk: Dense,
    pub wv: Dense,
    pub wo: Dense,
    /// [hidden]: `post_attention_layernorm`.
    pub ffn_norm: Vec<f32>,
    pub w_gate: Dense,
    pub w_up: Dense,
    pub w_down: Dense,
}

#[derive(Debug, Clone)]
pub struct LlamaWeights {
    /// [vocab, hidden] row-major: row t is token t's embedding.
    pub embed: Vec<f32>,
    pub layers: Vec<LayerWeights>,
    /// [hidden]: `model.norm`.
    pub final_norm: Vec<f32>,
    /// [hidden, vocab] (transposed from the checkpoint's [vocab, hidden] at load).
    pub lm_head: Dense,
}

impl LlamaWeights {
    /// Every weight of `ckpt` as dense f32: GPTQ linears through `reference::dequantize` (f64,
    /// true zeros, g_idx honoured) then rounded once to f32; fp16 tensors widened exactly.
    /// A tied lm_head (`tie_word_embeddings`, no `lm_head.weight`) reuses the embedding.
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<Self> {
        let cfg = &ckpt.config;
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let vector = |name: &str, len: usize| -> Result<Vec<f32>> {
            let (w, shape) = ckpt.tensor_f32(name)?;
            if shape != [len] {
                return Err(LabError::bad_checkpoint(
                    ckpt.tensor_file(name),
                    format!("tensor '{name}': shape {shape:?}, expected [{len}]"),
                ));
            }
            Ok(w)
        };
        let matrix_nk = |name: &str, rows: usize, cols: usize| -> Result<Vec<f32>> {
            let (w, shape) = ckpt.tensor_f32(name)?;
            if shape != [rows, cols] {
                return Err(LabError::bad_checkpoint(
                    ckpt.tensor_file(name),
                    format!("tensor '{name}': shape {shape:?}, expected [{rows}, {cols}]"),
                ));
            }
            Ok(w)
        };
        let linear = |prefix: &str| -> Result<Dense> {
            match ckpt.linear(prefix)? {
                LinearWeights::Quant(q) => {
                    // The loader drops an all-zero bias; a non-zero one would be silently ignored
                    // here (as the GPU engine refuses it: gpu_weights, layer_source).
                    if q.bias.is_some() {
                        let b = format!("{prefix}.bias");
                        return Err(crate::model::checkpoint::bias_refused(
                            ckpt.tensor_file(&b),
                            &b,
                        ));
                    }
                    let w = crate::reference::dequantize(&q)
                        .into_iter()
                        .map(|x| x as f32)
                        .collect();
                    Dense::new(q.k, q.n, w, prefix)
                }
                LinearWeights::Dense { k, n, w_kn } => Dense::new(k, n, w_kn, prefix),
            }
        };

        let embed = matrix_nk("model.embed_tokens.weight", v, h)?;
        // Grown, not pre-sized: the count is config.json's (checked against the tensors at open).
        let mut layers = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers.push(LayerWeights {
                attn_norm: vector(&format!("{p}.input_layernorm.weight"), h)?,
                wq: linear(&format!("{p}.self_attn.q_proj"))?,
                wk: linear(&format!("{p}.self_attn.k_proj"))?,
                wv: linear(&format!("{p}.self_attn.v_proj"))?,
                wo: linear(&format!("{p}.self_attn.o_proj"))?,
                ffn_norm: vector(&format!("{p}.post_attention_layernorm.weight"), h)?,
                w_gate: linear(&format!("{p}.mlp.gate_proj"))?,
                w_up: linear(&format!("{p}.mlp.up_proj"))?,
                w_down: linear(&format!("{p}.mlp.down_proj"))?,
            });
        }
        let final_norm = vector("model.norm.weight", h)?;
        let has_head = ckpt.tensor_names().iter().any(|n| n == "lm_head.weight");
        let head_vh = if has_head || !cfg.tie_word_embeddings {
            matrix_nk("lm_head.weight", v, h)?
        } else {
            embed.clone()
        };
        // [vocab, hidden] -> [hidden, vocab]: lm_head is a linear with k = hidden, n = vocab.
        let mut head = vec![0f32; h * v];
        for (t, row) in head_vh.chunks_exact(h).enumerate() {
            for (j, &x) in row.iter().enumerate() {
                head[j * v + t] = x;
            }
        }
        let w = LlamaWeights {
            embed,
            layers,
            final_norm,
            lm_head: Dense::new(h, v, head, "lm_head")?,
        };
        w.validate(cfg)
            .map_err(|e| LabError::bad_checkpoint(&ckpt.dir, e.to_string()))?;
        Ok(w)
    }

    /// Check every shape against `cfg`; the engine relies on them without further checks.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let bad = |what: &str, reason: String| Err(LabError::invalid(what, reason));
        if self.embed.len() != v * h {
            return bad(
                "embed_tokens",
                format!("expected [{v}, {h}], got {} values", self.embed.len()),
            );
        }
        if self.layers.len() != cfg.num_hidden_layers {
            return bad(
                "layers",
                format!(
                    "config has {} layers, weights have {}",
                    cfg.num_hidden_layers,
                    self.layers.len()
                ),
            );
        }
        let want: Vec<(&str, usize, usize)> = cfg.layer_linears();
        for (i, l) in self.layers.iter().enumerate() {
            let mats = [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down];
            for ((name, k, n), m) in want.iter().zip(mats) {
                if (m.k, m.n) != (*k, *n) || m.w.len() != k * n {
                    return bad(
                        &format!("layer {i} {name}"),
                        format!("expected [{k}, {n}], got [{}, {}]", m.k, m.n),
                    );
                }
            }
            for (name, norm) in [
                ("input_layernorm", &l.attn_norm),
                ("post_attention_layernorm", &l.ffn_norm),
            ] {
                if norm.len() != h {
                    return bad(
                        &format!("layer {i} {name}"),
                        format!("expected [{h}], got [{}]", norm.len()),
                    );
                }
            }
        }
        if self.final_norm.len() != h {
            return bad(
                "model.norm",
                format!("expected [{h}], got [{}]", self.final_norm.len()),
            );
        }
        if (self.lm_head.k, self.lm_head.n) != (h, v) || self.lm_head.w.len() != h * v {
            return bad(
                "lm_head",
                format!(
                    "expected [{h}, {v}] (k, n), got [{}, {}]",
                    self.lm_head.k, self.lm_head.n
                ),
            );
        }
        Ok(())
    }

    /// Seeded random weights of `cfg`'s shapes (normal-ish, std `std`; norms near 1), for tests
    /// and synthetic runs. Not a checkpoint: nothing here is quantized.
    pub fn random(cfg: &ModelConfig, seed: u64, std: f32) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // Sum of 4 uniforms on [-1, 1] has variance 4/3: close enough to normal for a test model.
        let mut gauss = move || -> f32 {
            let s: f32 = (0..4).map(|_| rng.random::<f32>() * 2.0 - 1.0).sum();
            s / (4.0f32 / 3.0).sqrt()
        };
        let mut mat = |k: usize, n: usize| Dense {
            k,
            n,
            w: (0..k * n).map(|_| std * gauss()).collect(),
        };
        let h = cfg.hidden_size;
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| {
                let m: Vec<Dense> = cfg
                    .layer_linears()
                    .iter()
                    .map(|&(_, k, n)| mat(k, n))
                    .collect();
                let mut it = m.into_iter();
                let mut next = || it.next().expect("layer_linears lists 7 matrices");
                LayerWeights {
                    wq: next(),
                    wk: next(),
                    wv: next(),
                    wo: next(),
                    w_gate: next(),
                    w_up: next(),
                    w_down: next(),
                    attn_norm: vec![1.0; h],
                    ffn_norm: vec![1.0; h],
                }
            })
            .collect();
        let embed = mat(cfg.vocab_size, h).w;
        let lm_head = mat(h, cfg.vocab_size);
        let mut w = LlamaWeights {
            embed,
            layers,
            final_norm: vec![1.0; h],
            lm_head,
        };
        // Norm weights away from exactly 1 so a test that dropped them would notice.
        let mut i = 0usize;
        let mut wiggle = |v: &mut Vec<f32>| {
            for x in v.iter_mut() {
                i += 1;
                *x = 1.0 + 0.1 * ((i as f32) * 0.7).sin();
            }
        };
        for l in &mut w.layers {
            wiggle(&mut l.attn_norm);
            wiggle(&mut l.ffn_norm);
        }
        wiggle(&mut w.final_norm);
        w
    }
}
