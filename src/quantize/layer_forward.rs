//! One LLaMA decoder layer over a whole calibration sequence at once (the CPU engine goes token by
//! token through a KV cache; quantization needs every position's linear inputs, so here each
//! linear is one GEMM over the sequence). Same math as `model::cpu_engine` (its RMSNorm, RoPE and
//! SiLU are reused); `tests` check the two agree on the tiny fixture.
//!
//! `Stage` names the four groups of linears GPTQ quantizes in turn ("true sequential", as in
//! GPTQ-for-LLaMa): q/k/v, then o, then gate/up, then down; each group's inputs are computed with
//! the groups before it already quantized.

use crate::model::config::ModelConfig;
use crate::model::cpu_engine::{apply_rope, rms_norm, silu};
use crate::model::weights::{Dense, LayerWeights};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Qkv,
    O,
    GateUp,
    Down,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::Qkv, Stage::O, Stage::GateUp, Stage::Down];

    /// The linears (state-dict names under `model.layers.{i}.`) that read this stage's input.
    pub fn linears(self) -> &'static [&'static str] {
        match self {
            Stage::Qkv => &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            Stage::O => &["self_attn.o_proj"],
            Stage::GateUp => &["mlp.gate_proj", "mlp.up_proj"],
            Stage::Down => &["mlp.down_proj"],
        }
    }
}

/// The dense matrix of linear `name` (one of `Stage::linears`) in `l`.
pub fn linear_mut<'a>(l: &'a mut LayerWeights, name: &str) -> Option<&'a mut Dense> {
    Some(match name {
        "self_attn.q_proj" => &mut l.wq,
        "self_attn.k_proj" => &mut l.wk,
        "self_attn.v_proj" => &mut l.wv,
        "self_attn.o_proj" => &mut l.wo,
        "mlp.gate_proj" => &mut l.w_gate,
        "mlp.up_proj" => &mut l.w_up,
        "mlp.down_proj" => &mut l.w_down,
        _ => return None,
    })
}

/// y [t, n] = x [t, k] W (f32 GEMM, multi-threaded).
pub fn linear(x: &[f32], t: usize, w: &Dense) -> Vec<f32> {
    let mut y = vec![0f32; t * w.n];
    matmul(
        MatMut::from_row_major_slice_mut(&mut y, t, w.n),
        Accum::Replace,
        MatRef::from_row_major_slice(x, t, w.k),
        MatRef::from_row_major_slice(&w.w, w.k, w.n),
        1.0f32,
        Par::rayon(0),
    );
    y
}

fn norm_rows(x: &[f32], h: usize, w: &[f32], eps: f64) -> Vec<f32> {
    x.chunks_exact(h)
        .flat_map(|row| rms_norm(row, w, eps))
        .collect()
}

/// Run layer `l` on `x` [t, hidden] (positions 0..t). With `capture = Some(stage)` the input of
/// that stage's linears ([t, K]) is returned and the rest of the layer is skipped; with `None`
/// the layer's output [t, hidden].
pub fn layer_pass(
    cfg: &ModelConfig,
    inv_freq: &[f64],
    l: &LayerWeights,
    x: &[f32],
    t: usize,
    capture: Option<Stage>,
) -> Vec<f32> {
    let h = cfg.hidden_size;
    let (heads, kv_heads, hd) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim(),
    );
    let eps = cfg.rms_norm_eps;
    let xn = norm_rows(x, h, &l.attn_norm, eps);
    if capture == Some(Stage::Qkv) {
        return xn;
    }
    let mut q = linear(&xn, t, &l.wq);
    let mut k = linear(&xn, t, &l.wk);
    let v = linear(&xn, t, &l.wv);
    // Intermediates are dropped as soon as they are used: the peak of one sequence's pass is
    // what `memory::ram_bound_bytes` counts (at most 2 [t, hidden] + 2 [t, intermediate]).
    drop(xn);
    for (pos, (qr, kr)) in q
        .chunks_exact_mut(heads * hd)
        .zip(k.chunks_exact_mut(kv_heads * hd))
        .enumerate()
    {
        for head in qr.chunks_exact_mut(hd).chain(kr.chunks_exact_mut(hd)) {
            apply_rope(head, pos, inv_freq);
        }
    }
    let attn = causal_attention(&q, &k, &v, t, heads, kv_heads, hd);
    drop((q, k, v));
    if capture == Some(Stage::O) {
        return attn;
    }
    let mut x1 = x.to_vec();
    let o = linear(&attn, t, &l.wo);
    drop(attn);
    for (a, b) in x1.iter_mut().zip(o) {
        *a += b;
    }
    let xn2 = norm_rows(&x1, h, &l.ffn_norm, eps);
    if capture == Some(Stage::GateUp) {
        return xn2;
    }
    let mut act = linear(&xn2, t, &l.w_gate);
    let up = linear(&xn2, t, &l.w_up);
    drop(xn2);
    for (g, &u) in act.iter_mut().zip(&up) {
        *g = silu(*g) * u;
    }
    drop(up);
    if capture == Some(Stage::Down) {
        return act;
    }
    let down = linear(&act, t, &l.w_down);
    drop(act);
    for (a, b) in x1.iter_mut().zip(down) {
        *a += b;
    }
    x1
}

/// Causal softmax attention, query head `qh` reading KV head `qh / (heads / kv_heads)`.
/// q [t, heads*hd], k and v [t, kv_heads*hd] (RoPE applied); out [t, heads*hd].
fn causal_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    t: usize,
    heads: usize,
    kv_heads: usize,
    hd: usize,
) -> Vec<f32> {
    let group = heads / kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let qm = MatRef::from_row_major_slice(q, t, heads * hd);
    let km = MatRef::from_row_major_slice(k, t, kv_heads * hd);
    let vm = MatRef::from_row_major_slice(v, t, kv_heads * hd);
    let mut out = vec![0f32; t * heads * hd];
    let mut scores = vec![0f32; t * t];
    for qh in 0..heads {
        let kvh = qh / group;
        matmul(
            MatMut::from_row_major_slice_mut(&mut scores, t, t),
            Accum::Replace,
            qm.subcols(qh * hd, hd),
            km.subcols(kvh * hd, hd).transpose(),
            scale,
            Par::rayon(0),
        );
        for (i, row) in scores.chunks_exact_mut(t).enumerate() {
            let max = row[..=i].iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let mut z = 0f64;
            for s in row[..=i].iter_mut() {
                *s = (*s - max).exp();
                z += f64::from(*s);
            }
            let inv = (1.0 / z) as f32;
            row[..=i].iter_mut().for_each(|s| *s *= inv);
            row[i + 1..].fill(0.0);
        }
        matmul(
            MatMut::from_row_major_slice_mut(&mut out, t, heads * hd).subcols_mut(qh * hd, hd),
            Accum::Replace,
            MatRef::from_row_major_slice(&scores, t, t),
            vm.subcols(kvh * hd, hd),
            1.0f32,
            Par::rayon(0),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cpu_engine::CpuEngine;
    use crate::model::weights::LlamaWeights;

    fn cfg() -> ModelConfig {
        ModelConfig {
            name: "test".into(),
            hidden_size: 32,
            intermediate_size: 48,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            vocab_size: 40,
            max_position_embeddings: 32,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            rope_linear_factor: 1.0,
            tie_word_embeddings: false,
        }
    }

    #[test]
    fn whole_sequence_pass_matches_the_token_by_token_engine() {
        let cfg = cfg();
        let w = LlamaWeights::random(&cfg, 21, 0.2);
        let toks = [3u32, 9, 27, 1, 14, 39, 5, 5, 20];
        let t = toks.len();
        let h = cfg.hidden_size;
        let inv = cfg.rope_inv_freq();
        let mut x: Vec<f32> = toks
            .iter()
            .flat_map(|&tk| w.embed[tk as usize * h..(tk as usize + 1) * h].to_vec())
            .collect();
        for l in &w.layers {
            x = layer_pass(&cfg, &inv, l, &x, t, None);
        }
        let xn = norm_rows(&x, h, &w.final_norm, cfg.rms_norm_eps);
        let logits = linear(&xn, t, &w.lm_head);
        let want = CpuEngine::new(w, cfg.clone())
            .unwrap()
            .forward_all(&toks)
            .unwrap();
        for (p, row) in want.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let got = logits[p * cfg.vocab_size + j];
                // f32 GEMMs here vs f64 sums there, over K <= 48 terms of size ~1: ~1e-5.
                assert!((got - v).abs() < 1e-4, "pos {p} logit {j}: {got} vs {v}");
            }
        }
    }

    #[test]
    fn captures_are_the_inputs_of_each_stage() {
        let cfg = cfg();
        let w = LlamaWeights::random(&cfg, 22, 0.2);
        let l = &w.layers[0];
        let t = 5;
        let x: Vec<f32> = w.embed[..t * cfg.hidden_size].to_vec();
        let inv = cfg.rope_inv_freq();
        let xn = layer_pass(&cfg, &inv, l, &x, t, Some(Stage::Qkv));
        assert_eq!(xn.len(), t * 32);
        assert_eq!(
            xn[..32],
            rms_norm(&x[..32], &l.attn_norm, cfg.rms_norm_eps)[..]
        );
        let act = layer_pass(&cfg, &inv, l, &x, t, Some(Stage::Down));
        assert_eq!(act.len(), t * cfg.intermediate_size);
        // The layer output is x + o(attn) + down(act): subtracting down(act) leaves x1, whose
        // norm is the gate/up input.
        let out = layer_pass(&cfg, &inv, l, &x, t, None);
        let down = linear(&act, t, &l.w_down);
        let x1: Vec<f32> = out.iter().zip(&down).map(|(a, b)| a - b).collect();
        let xn2 = layer_pass(&cfg, &inv, l, &x, t, Some(Stage::GateUp));
        let want = norm_rows(&x1, 32, &l.ffn_norm, cfg.rms_norm_eps);
        assert_eq!(xn2.len(), want.len());
        for (a, b) in xn2.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5);
        }
        // o_proj's input: the attention output, which o maps onto x1 - x (the residual).
        let attn = layer_pass(&cfg, &inv, l, &x, t, Some(Stage::O));
        assert_eq!(attn.len(), t * cfg.num_attention_heads * cfg.head_dim());
        let o = linear(&attn, t, &l.wo);
        assert_eq!(o.len(), x1.len());
        for (i, ((xi, oi), x1i)) in x.iter().zip(&o).zip(&x1).enumerate() {
            assert!(
                (xi + oi - x1i).abs() < 1e-5,
                "row element {i}: {} vs {x1i}",
                xi + oi
            );
        }
        // ... and not the normed input q|k|v read (a capture of the wrong stage would pass the
        // length check alone).
        assert_ne!(attn[..32], xn[..32]);
    }
}
