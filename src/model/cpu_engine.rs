//! The CPU reference engine for LLaMA/Vicuna: the same math as HF transformers' LlamaForCausalLM
//! (RMSNorm, rotate-half RoPE, causal attention with grouped KV heads, SwiGLU), one token at a time
//! through a KV cache. f32 storage, f64 accumulation in every sum. It is the ground truth the GPU
//! engine's tokens and logits are compared with, and it runs the tiny fixtures on any machine.

use crate::model::config::ModelConfig;
use crate::model::weights::LlamaWeights;
use crate::{LabError, Result};

/// RMSNorm as in HF LLaMA: `w * x / sqrt(mean(x^2) + eps)`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f64) -> Vec<f32> {
    let ms = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter()
        .zip(w)
        .map(|(&v, &g)| (f64::from(g) * f64::from(v) * inv) as f32)
        .collect()
}

/// RoPE inverse frequencies theta^(-2i/d), i < d/2.
pub fn rope_inv_freq(head_dim: usize, theta: f64) -> Vec<f64> {
    (0..head_dim / 2)
        .map(|i| theta.powf(-((2 * i) as f64) / head_dim as f64))
        .collect()
}

/// Rotate one head vector in place at position `pos`, HF's rotate-half convention: dimension i
/// pairs with i + d/2 (not 2i with 2i+1 as in the original Meta code; HF checkpoints have their
/// q/k rows permuted to match this), both rotated by angle pos * inv_freq[i].
pub fn apply_rope(x: &mut [f32], pos: usize, inv_freq: &[f64]) {
    let half = x.len() / 2;
    debug_assert_eq!(inv_freq.len(), half);
    for (i, &f) in inv_freq.iter().enumerate() {
        let (sin, cos) = (pos as f64 * f).sin_cos();
        let (a, b) = (f64::from(x[i]), f64::from(x[i + half]));
        x[i] = (a * cos - b * sin) as f32;
        x[i + half] = (b * cos + a * sin) as f32;
    }
}

/// SiLU(x) = x * sigmoid(x).
pub fn silu(x: f32) -> f32 {
    let x = f64::from(x);
    (x / (1.0 + (-x).exp())) as f32
}

/// Cached keys and values of one layer: [position, kv_heads * head_dim], appended per token.
#[derive(Debug, Clone, Default)]
struct LayerCache {
    k: Vec<f32>,
    v: Vec<f32>,
}

pub struct CpuEngine {
    cfg: ModelConfig,
    w: LlamaWeights,
    inv_freq: Vec<f64>,
    cache: Vec<LayerCache>,
    /// Tokens processed since the last reset = the next token's position.
    pos: usize,
}

impl CpuEngine {
    /// Fails if the weights' shapes do not match `config`.
    pub fn new(weights: LlamaWeights, config: ModelConfig) -> Result<Self> {
        weights.validate(&config)?;
        if config.head_dim() % 2 != 0 {
            return Err(LabError::invalid(
                "model config",
                format!("head_dim {} must be even for RoPE", config.head_dim()),
            ));
        }
        Ok(CpuEngine {
            inv_freq: config.rope_inv_freq(),
            cache: vec![LayerCache::default(); config.num_hidden_layers],
            pos: 0,
            w: weights,
            cfg: config,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Number of tokens in the KV cache.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Forget the KV cache: the next token is position 0.
    pub fn reset(&mut self) {
        self.pos = 0;
        for c in &mut self.cache {
            c.k.clear();
            c.v.clear();
        }
    }

    /// Feed `tokens` after whatever is cached; the logits [vocab] of the last one.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.check(tokens)?;
        let (last, rest) = tokens
            .split_last()
            .ok_or_else(|| LabError::invalid("tokens", "forward needs at least one token"))?;
        for &t in rest {
            self.step(t, false)?;
        }
        Ok(self.step(*last, true)?.unwrap_or_default())
    }

    /// Feed `tokens`; the logits of every one of them, [tokens.len()][vocab].
    pub fn forward_all(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.check(tokens)?;
        tokens
            .iter()
            .map(|&t| Ok(self.step(t, true)?.unwrap_or_default()))
            .collect()
    }

    /// Refuse bad ids and overflowing lengths before any token changes the cache.
    fn check(&self, tokens: &[u32]) -> Result<()> {
        let cfg = &self.cfg;
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(LabError::invalid(
                "token id",
                format!("{t} is out of range for vocab_size {}", cfg.vocab_size),
            ));
        }
        if self.pos + tokens.len() > cfg.context_len() {
            return Err(LabError::invalid(
                "sequence length",
                format!(
                    "context is full: {} cached + {} new tokens exceed the model's {} positions ({})",
                    self.pos,
                    tokens.len(),
                    cfg.context_len(),
                    cfg.context_origin()
                ),
            ));
        }
        Ok(())
    }

    /// One token at position `self.pos` (checked by `check`); logits only when asked (lm_head is the largest matrix
    /// of the tiny model, and prefill only needs the last position's).
    fn step(&mut self, token: u32, want_logits: bool) -> Result<Option<Vec<f32>>> {
        let cfg = &self.cfg;
        let h = cfg.hidden_size;
        let t = token as usize;
        let (heads, kv_heads, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim(),
        );
        let group = heads / kv_heads; // query heads sharing one KV head
        let kv_dim = kv_heads * hd;
        let eps = cfg.rms_norm_eps;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut x = self.w.embed[t * h..(t + 1) * h].to_vec();

        for (l, cache) in self.w.layers.iter().zip(self.cache.iter_mut()) {
            let xn = rms_norm(&x, &l.attn_norm, eps);
            let mut q = l.wq.matvec(&xn);
            let mut k = l.wk.matvec(&xn);
            let v = l.wv.matvec(&xn);
            for head in q.chunks_exact_mut(hd).chain(k.chunks_exact_mut(hd)) {
                apply_rope(head, self.pos, &self.inv_freq);
            }
            cache.k.extend_from_slice(&k);
            cache.v.extend_from_slice(&v);
            let len = self.pos + 1;

            let mut attn = vec![0f32; h];
            for qh in 0..heads {
                let kvh = qh / group;
                let qv = &q[qh * hd..(qh + 1) * hd];
                let scores: Vec<f64> = (0..len)
                    .map(|p| {
                        let kp = &cache.k[p * kv_dim + kvh * hd..p * kv_dim + (kvh + 1) * hd];
                        qv.iter()
                            .zip(kp)
                            .map(|(&a, &b)| f64::from(a) * f64::from(b))
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f64 = e.iter().sum();
                let mut out = vec![0f64; hd];
                for (p, &ep) in e.iter().enumerate() {
                    let vp = &cache.v[p * kv_dim + kvh * hd..p * kv_dim + (kvh + 1) * hd];
                    for (o, &vv) in out.iter_mut().zip(vp) {
                        *o += ep / z * f64::from(vv);
                    }
                }
                for (a, o) in attn[qh * hd..(qh + 1) * hd].iter_mut().zip(out) {
                    *a = o as f32;
                }
            }
            for (xi, oi) in x.iter_mut().zip(l.wo.matvec(&attn)) {
                *xi += oi;
            }

            let xn = rms_norm(&x, &l.ffn_norm, eps);
            let gate = l.w_gate.matvec(&xn);
            let up = l.w_up.matvec(&xn);
            let act: Vec<f32> = gate.iter().zip(&up).map(|(&g, &u)| silu(g) * u).collect();
            for (xi, di) in x.iter_mut().zip(l.w_down.matvec(&act)) {
                *xi += di;
            }
        }
        self.pos += 1;
        if !want_logits {
            return Ok(None);
        }
        let xn = rms_norm(&x, &self.w.final_norm, eps);
        Ok(Some(self.w.lm_head.matvec(&xn)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::Dense;

    fn close(a: f32, b: f64, tol: f64) -> bool {
        (f64::from(a) - b).abs() <= tol
    }

    #[test]
    fn rms_norm_matches_hand_values() {
        // x = [1, 2, 3, 4]: mean square 30/4 = 7.5, so x / sqrt(7.5) scaled by w.
        let y = rms_norm(&[1.0, 2.0, 3.0, 4.0], &[1.0, 2.0, 0.5, -1.0], 0.0);
        let r = 7.5f64.sqrt();
        let want = [1.0 / r, 4.0 / r, 1.5 / r, -4.0 / r];
        for (g, w) in y.iter().zip(want) {
            assert!(close(*g, w, 1e-6), "{y:?} vs {want:?}");
        }
        // eps enters under the root: x = [1, 1], eps 3 -> 1 / sqrt(1 + 3) = 1 / 2.
        let y = rms_norm(&[1.0, 1.0], &[1.0, 1.0], 3.0);
        assert!(close(y[0], 0.5, 1e-7) && close(y[1], 0.5, 1e-7), "{y:?}");
    }

    #[test]
    fn rope_inv_freq_follows_theta() {
        let f = rope_inv_freq(4, 10000.0);
        assert_eq!(f.len(), 2);
        assert!(
            (f[0] - 1.0).abs() < 1e-15 && (f[1] - 0.01).abs() < 1e-15,
            "{f:?}"
        );
        let f = rope_inv_freq(8, 500000.0);
        assert!((f[3] - 500000f64.powf(-0.75)).abs() < 1e-15, "{f:?}");
    }

    #[test]
    fn rope_rotates_pairs_i_and_i_plus_half() {
        let inv = rope_inv_freq(4, 10000.0); // angles pos * [1, 0.01]
                                             // Position 0 is the identity.
        let mut x = [0.3f32, -1.2, 2.0, 0.7];
        apply_rope(&mut x, 0, &inv);
        assert_eq!(x, [0.3, -1.2, 2.0, 0.7]);
        // e0 at position 3: (x0, x2) = (cos 3, sin 3); dimension 1 and 3 untouched.
        let mut x = [1.0f32, 0.0, 0.0, 0.0];
        apply_rope(&mut x, 3, &inv);
        assert!(
            close(x[0], 3f64.cos(), 1e-7) && close(x[2], 3f64.sin(), 1e-7),
            "{x:?}"
        );
        assert_eq!((x[1], x[3]), (0.0, 0.0));
        // e3 (the second half of pair 1) at position 5: angle 0.05, (x1, x3) = (-sin, cos).
        let mut x = [0.0f32, 0.0, 0.0, 1.0];
        apply_rope(&mut x, 5, &inv);
        assert!(
            close(x[1], -(0.05f64.sin()), 1e-7) && close(x[3], 0.05f64.cos(), 1e-7),
            "{x:?}"
        );
        // A rotation keeps the norm, and scores depend only on the position difference.
        let q = [0.5f32, -0.25, 1.5, 2.0];
        let k = [1.0f32, 0.75, -0.5, 0.25];
        let dot_at = |pq: usize, pk: usize| {
            let (mut a, mut b) = (q, k);
            apply_rope(&mut a, pq, &inv);
            apply_rope(&mut b, pk, &inv);
            a.iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum::<f64>()
        };
        assert!((dot_at(7, 4) - dot_at(13, 10)).abs() < 1e-5);
        assert!((dot_at(7, 4) - dot_at(3, 0)).abs() < 1e-5);
    }

    #[test]
    fn silu_matches_definition() {
        assert_eq!(silu(0.0), 0.0);
        assert!(close(silu(2.0), 2.0 / (1.0 + (-2f64).exp()), 1e-7));
        assert!(close(silu(-3.0), -3.0 / (1.0 + 3f64.exp()), 1e-7));
    }

    fn tiny_cfg(kv_heads: usize) -> ModelConfig {
        ModelConfig {
            name: "test".into(),
            hidden_size: 32,
            intermediate_size: 48,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: kv_heads,
            vocab_size: 40,
            max_position_embeddings: 16,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            rope_linear_factor: 1.0,
            tie_word_embeddings: false,
        }
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn linear_rope_scaling_divides_positions_and_widens_the_context() {
        let plain = tiny_cfg(2);
        let scaled = ModelConfig {
            rope_linear_factor: 2.0,
            ..plain.clone()
        };
        let w = LlamaWeights::random(&plain, 11, 0.2);
        let mut a = CpuEngine::new(w.clone(), plain.clone()).unwrap();
        let mut b = CpuEngine::new(w, scaled.clone()).unwrap();
        // Position 0 rotates by nothing either way; from position 1 on the angles differ.
        assert_eq!(a.forward(&[3]).unwrap(), b.forward(&[3]).unwrap());
        let (la, lb) = (a.forward(&[5]).unwrap(), b.forward(&[5]).unwrap());
        assert!(max_diff(&la, &lb) > 1e-4, "{}", max_diff(&la, &lb));
        // The scaled engine's rotation at position 2p is the plain one's at p, bit for bit.
        let (fa, fb) = (plain.rope_inv_freq(), scaled.rope_inv_freq());
        let mut x = [0.3f32, -1.2, 2.0, 0.7, 0.1, 0.9, -0.4, 1.1];
        let mut y = x;
        apply_rope(&mut x, 3, &fa[..4]);
        apply_rope(&mut y, 6, &fb[..4]);
        assert_eq!(x, y);
        // 16 positions times 2: 32 fit, the 33rd is refused naming where the bound comes from.
        b.reset();
        b.forward(&[1; 32]).unwrap();
        let e = b.forward(&[1]).unwrap_err().to_string();
        assert!(
            e.contains("32 positions") && e.contains("x linear RoPE factor 2"),
            "{e}"
        );
        a.reset();
        assert!(a.forward(&[1; 17]).is_err());
    }

    #[test]
    fn cached_prefill_equals_token_by_token_and_reset_repeats() {
        let cfg = tiny_cfg(2);
        let mut e = CpuEngine::new(LlamaWeights::random(&cfg, 7, 0.2), cfg).unwrap();
        let toks = [1u32, 5, 9, 33, 2, 17];
        let all = e.forward_all(&toks).unwrap();
        assert_eq!(e.position(), 6);
        e.reset();
        let last = e.forward(&toks).unwrap();
        assert_eq!(last, all[5]);
        // Split the prompt in two calls: the cache carries the first part.
        e.reset();
        e.forward(&toks[..3]).unwrap();
        assert_eq!(e.forward(&toks[3..]).unwrap(), all[5]);
        // Different histories give different logits for the same token at the same position.
        e.reset();
        let other = e.forward(&[1u32, 5, 9, 34, 2, 17]).unwrap();
        assert!(max_diff(&other, &all[5]) > 1e-4);
    }

    /// After a reset nothing of the previous sequence may remain: a different sequence then
    /// gives, token for token, the logits of a freshly built engine. (The same sequence again
    /// would not show stale cache entries: they would hold the very same values.)
    #[test]
    fn reset_forgets_the_previous_sequence_entirely() {
        let cfg = tiny_cfg(2);
        let w = LlamaWeights::random(&cfg, 5, 0.2);
        let mut used = CpuEngine::new(w.clone(), cfg.clone()).unwrap();
        used.forward(&[7u32, 21, 3, 30, 11]).unwrap();
        used.reset();
        let toks = [2u32, 19, 8, 25];
        let got = used.forward_all(&toks).unwrap();
        let want = CpuEngine::new(w, cfg).unwrap().forward_all(&toks).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn grouped_kv_heads_equal_duplicated_full_heads() {
        // 4 query heads over 2 KV heads must equal 4 KV heads where heads 2i and 2i+1 both
        // carry KV head i: query head h reads KV head h / 2.
        let gqa = tiny_cfg(2);
        let w = LlamaWeights::random(&gqa, 11, 0.2);
        let mut full_w = w.clone();
        let hd = gqa.head_dim();
        let dup = |m: &Dense| {
            let mut out = Vec::with_capacity(m.k * m.n * 2);
            for row in m.w.chunks_exact(m.n) {
                for head in row.chunks_exact(hd) {
                    out.extend_from_slice(head);
                    out.extend_from_slice(head);
                }
            }
            Dense {
                k: m.k,
                n: m.n * 2,
                w: out,
            }
        };
        for l in &mut full_w.layers {
            l.wk = dup(&l.wk);
            l.wv = dup(&l.wv);
        }
        let toks = [3u32, 14, 15, 9, 26];
        let a = CpuEngine::new(w, gqa).unwrap().forward_all(&toks).unwrap();
        let b = CpuEngine::new(full_w, tiny_cfg(4))
            .unwrap()
            .forward_all(&toks)
            .unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!(max_diff(x, y) < 1e-5, "{}", max_diff(x, y));
        }
    }

    #[test]
    fn single_token_attention_passes_v_through() {
        // With one cached position softmax is 1, so attention output = v, and logits equal a
        // hand-computed pass with attention replaced by v.
        let mut cfg = tiny_cfg(4);
        cfg.num_hidden_layers = 1;
        let w = LlamaWeights::random(&cfg, 3, 0.2);
        let l = &w.layers[0];
        let t = 7usize;
        let mut x = w.embed[t * 32..(t + 1) * 32].to_vec();
        let xn = rms_norm(&x, &l.attn_norm, cfg.rms_norm_eps);
        for (xi, o) in x.iter_mut().zip(l.wo.matvec(&l.wv.matvec(&xn))) {
            *xi += o;
        }
        let xn = rms_norm(&x, &l.ffn_norm, cfg.rms_norm_eps);
        let g = l.w_gate.matvec(&xn);
        let u = l.w_up.matvec(&xn);
        let act: Vec<f32> = g.iter().zip(&u).map(|(&a, &b)| silu(a) * b).collect();
        for (xi, d) in x.iter_mut().zip(l.w_down.matvec(&act)) {
            *xi += d;
        }
        let want = w
            .lm_head
            .matvec(&rms_norm(&x, &w.final_norm, cfg.rms_norm_eps));
        let got = CpuEngine::new(w, cfg)
            .unwrap()
            .forward(&[t as u32])
            .unwrap();
        assert!(max_diff(&got, &want) < 1e-6, "{}", max_diff(&got, &want));
    }

    #[test]
    fn bad_tokens_shapes_and_full_context_are_errors() {
        let cfg = tiny_cfg(2);
        let w = LlamaWeights::random(&cfg, 1, 0.2);
        let mut wrong = w.clone();
        wrong.layers[1].wq.n -= 1;
        let e = CpuEngine::new(wrong, cfg.clone())
            .err()
            .expect("shape mismatch accepted");
        assert!(e.to_string().contains("layer 1 self_attn.q_proj"), "{e}");
        let mut e = CpuEngine::new(w, cfg).unwrap();
        assert!(e.forward(&[]).is_err());
        assert!(e
            .forward(&[3, 40])
            .unwrap_err()
            .to_string()
            .contains("vocab_size 40"));
        assert_eq!(e.position(), 0, "a refused call must not touch the cache");
        assert!(e
            .forward(&[1; 17])
            .unwrap_err()
            .to_string()
            .contains("context is full"));
        e.forward(&[1; 16]).unwrap();
        assert!(e
            .forward(&[1])
            .unwrap_err()
            .to_string()
            .contains("context is full"));
    }
}
