//! Correctness of the GPU engine against an f64 CPU reference of the same weights, made to say
//! WHERE it breaks (../shared/gpu-validation.md):
//! - op by op: every op's GPU output is compared with the CPU op applied to the GPU's own input to
//!   that op (so one wrong kernel is named, not the drift it causes downstream), layer by layer,
//!   step by step; the first op out of tolerance is reported with its worst element;
//! - end to end: GPU logits vs an independent f64 forward pass (teacher-forced tokens);
//! - greedy tokens: GPU generation (eager and CUDA graph) vs the reference's greedy tokens.
//! - GEMM prefill: every prompt row's logits (and the last row's alone) after one prefill vs the
//!   reference's teacher-forced logits, within the end-to-end logit tolerance; the greedy tokens
//!   of the decode graph continuing from a GEMM prefill vs the reference's.
//! - per-op profile: profiled steps give the reference's greedy tokens, one mark per op and the
//!   exact bytes a step streams (`check_profile`);
//! - top-p on the GPU: each token vs the CPU mirror on the GPU's logits, graph vs eager
//!   (`check_top_p`).
//!
//! The reference math is HF LLaMA's (RMSNorm, rotate-half RoPE, GQA softmax attention, SwiGLU);
//! `ref_forward_step` is written independently of the kernels.

use crate::cuda::Gpu;
use crate::model::config::ModelConfig;
use crate::model::gpu_engine::{
    EngineOptions, Fp16Backend, GpuEngine, Int4Kernel, PrefillLogits, PrefillMode, TraceEntry,
    WeightSource,
};
use crate::model::gpu_weights::{HostLinear, HostLlama, WeightKind};
use crate::model::sampler::{draw, top_p_pick, Sampling};
use crate::{LabError, Result};
use serde::Serialize;

/// Op-local tolerance: |gpu - ref| <= OP_RTOL |ref| + OP_ATOL_RMS rms(ref). Each op rounds its
/// output to fp16 once (2^-11 relative) after fp32 math on exactly the GPU's fp16 inputs; 4e-3 is
/// 8 such roundings of headroom, while an indexing or layout bug errs by O(1) relative.
pub const OP_RTOL: f64 = 4e-3;
pub const OP_ATOL_RMS: f64 = 4e-3;
/// End-to-end logits: fp16 activations round at about 10 points per layer, each up to 2^-11
/// relative, and the errors add through the residual stream: 2e-2 of the logits' rms covers a few
/// layers of that; a wrong op moves logits by O(rms).
pub const LOGIT_ATOL_RMS: f64 = 2e-2;
pub const LOGIT_RTOL: f64 = 1e-2;
// The GEMM prefill is held to the same logit tolerance: it rounds activations to fp16 at the same
// points as the decode step (the GEMMs and cuBLAS accumulate in fp32 like the GEMVs), only the
// summation order differs, which moves logits by rounding, not by O(rms).

/// f64 dense weights for the reference.
struct RefWeights {
    embed: Vec<f64>,
    lm_head: Vec<f64>,
    final_norm: Vec<f64>,
    layers: Vec<RefLayer>,
}

struct RefLayer {
    attn_norm: Vec<f64>,
    ffn_norm: Vec<f64>,
    /// W [k, n] row-major: q|k|v fused along n, o, gate|up fused, down.
    qkv: (usize, Vec<f64>),
    o: (usize, Vec<f64>),
    gate_up: (usize, Vec<f64>),
    down: (usize, Vec<f64>),
}

fn cat_cols(parts: &[(usize, usize, Vec<f64>)]) -> (usize, Vec<f64>) {
    let k = parts[0].0;
    let n: usize = parts.iter().map(|p| p.1).sum();
    let mut w = vec![0f64; k * n];
    let mut c0 = 0;
    for (_, pn, pw) in parts {
        for r in 0..k {
            w[r * n + c0..r * n + c0 + pn].copy_from_slice(&pw[r * pn..(r + 1) * pn]);
        }
        c0 += pn;
    }
    (n, w)
}

impl RefWeights {
    fn new(w: &HostLlama) -> Self {
        let f = |v: &[half::f16]| v.iter().map(|x| x.to_f64()).collect::<Vec<f64>>();
        let layers = w
            .layers
            .iter()
            .map(|l| {
                let d: Vec<(usize, usize, Vec<f64>)> = l
                    .linears
                    .iter()
                    .map(|lin| {
                        let (k, n) = lin.kn();
                        (k, n, lin.dense_kn())
                    })
                    .collect();
                RefLayer {
                    attn_norm: f(&l.attn_norm),
                    ffn_norm: f(&l.ffn_norm),
                    qkv: cat_cols(&d[0..3]),
                    o: (d[3].1, d[3].2.clone()),
                    gate_up: cat_cols(&d[4..6]),
                    down: (d[6].1, d[6].2.clone()),
                }
            })
            .collect();
        RefWeights {
            embed: f(&w.embed),
            lm_head: f(&w.lm_head),
            final_norm: f(&w.final_norm),
            layers,
        }
    }
}

fn matvec(x: &[f64], (n, w): &(usize, Vec<f64>)) -> Vec<f64> {
    let mut y = vec![0f64; *n];
    for (r, &xv) in x.iter().enumerate() {
        for (yc, &wv) in y.iter_mut().zip(&w[r * n..(r + 1) * n]) {
            *yc += xv * wv;
        }
    }
    y
}

fn rms_norm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, g)| v * inv * g).collect()
}

/// HF rotate-half RoPE on every head of `x` (heads of `hd`), in place.
fn rope(x: &mut [f64], hd: usize, pos: usize, theta: f64) {
    for head in x.chunks_exact_mut(hd) {
        for i in 0..hd / 2 {
            let a = pos as f64 * theta.powf(-((2 * i) as f64) / hd as f64);
            let (s, c) = a.sin_cos();
            let (x0, x1) = (head[i], head[i + hd / 2]);
            head[i] = x0 * c - x1 * s;
            head[i + hd / 2] = x1 * c + x0 * s;
        }
    }
}

/// Softmax attention of q [heads*hd] over cached k, v rows [len][kv_dim].
fn attention(cfg: &ModelConfig, q: &[f64], ks: &[Vec<f64>], vs: &[Vec<f64>]) -> Vec<f64> {
    let (heads, kvh, hd) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim(),
    );
    let mut out = vec![0f64; heads * hd];
    for h in 0..heads {
        let kh = h / (heads / kvh);
        let qh = &q[h * hd..(h + 1) * hd];
        let s: Vec<f64> = ks
            .iter()
            .map(|k| {
                qh.iter()
                    .zip(&k[kh * hd..(kh + 1) * hd])
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
                    / (hd as f64).sqrt()
            })
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
        let z: f64 = e.iter().sum();
        for (p, v) in vs.iter().enumerate() {
            for d in 0..hd {
                out[h * hd + d] += e[p] / z * v[kh * hd + d];
            }
        }
    }
    out
}

fn silu_mul(gu: &[f64]) -> Vec<f64> {
    let i = gu.len() / 2;
    (0..i)
        .map(|j| gu[j] / (1.0 + (-gu[j]).exp()) * gu[i + j])
        .collect()
}

fn lm_head(w: &RefWeights, x: &[f64]) -> Vec<f64> {
    // Rows of hidden = final_norm.len() (x may be a missing trace entry: then all zeros).
    w.lm_head
        .chunks_exact(w.final_norm.len())
        .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

/// An independent f64 forward pass with a KV cache.
struct RefModel<'a> {
    cfg: &'a ModelConfig,
    w: &'a RefWeights,
    cache: KvHist,
}

/// Per layer: cached k rows and v rows.
type KvHist = Vec<(Vec<Vec<f64>>, Vec<Vec<f64>>)>;
/// (layer, op, reference output) in execution order.
type OpRef = (Option<usize>, &'static str, Vec<f64>);

/// `r > limit`, with NaN counted as exceeding (a NaN ratio is a failure, never a pass).
fn exceeds(r: f64, limit: f64) -> bool {
    r.is_nan() || r > limit
}

impl RefModel<'_> {
    fn step(&mut self, token: u32) -> Vec<f64> {
        let cfg = self.cfg;
        let (h, hd, heads, kv) = (
            cfg.hidden_size,
            cfg.head_dim(),
            cfg.num_attention_heads,
            cfg.num_key_value_heads * cfg.head_dim(),
        );
        let pos = self.cache[0].0.len();
        let mut x: Vec<f64> = self.w.embed[token as usize * h..(token as usize + 1) * h].to_vec();
        for (l, (kc, vc)) in self.w.layers.iter().zip(self.cache.iter_mut()) {
            let mut qkv = matvec(&rms_norm(&x, &l.attn_norm, cfg.rms_norm_eps), &l.qkv);
            rope(&mut qkv[..heads * hd + kv], hd, pos, cfg.rope_theta);
            kc.push(qkv[heads * hd..heads * hd + kv].to_vec());
            vc.push(qkv[heads * hd + kv..].to_vec());
            let a = attention(cfg, &qkv[..heads * hd], kc, vc);
            for (xi, oi) in x.iter_mut().zip(matvec(&a, &l.o)) {
                *xi += oi;
            }
            let act = silu_mul(&matvec(
                &rms_norm(&x, &l.ffn_norm, cfg.rms_norm_eps),
                &l.gate_up,
            ));
            for (xi, di) in x.iter_mut().zip(matvec(&act, &l.down)) {
                *xi += di;
            }
        }
        lm_head(self.w, &rms_norm(&x, &self.w.final_norm, cfg.rms_norm_eps))
    }
}

/// The worst element of one comparison.
#[derive(Debug, Clone, Serialize)]
pub struct OpError {
    pub step: usize,
    pub layer: Option<usize>,
    pub op: String,
    pub index: usize,
    pub got: f64,
    pub want: f64,
    /// |got - want| / (tolerance at that element): > 1 fails.
    pub ratio: f64,
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let layer = self.layer.map_or("-".to_string(), |l| l.to_string());
        write!(
            f,
            "step {} layer {} op {}: element {} got {:.6} want {:.6} ({:.2}x tolerance)",
            self.step, layer, self.op, self.index, self.got, self.want, self.ratio
        )
    }
}

/// Worst |g - r| / (rtol |r| + atol_rms rms(r)) over the vector; None if lengths differ.
pub fn worst(got: &[f32], want: &[f64], rtol: f64, atol_rms: f64) -> Option<(usize, f64)> {
    if got.len() != want.len() {
        return None;
    }
    let rms = (want.iter().map(|v| v * v).sum::<f64>() / want.len().max(1) as f64).sqrt();
    let mut best = (0usize, 0f64);
    for (i, (&g, &r)) in got.iter().zip(want).enumerate() {
        let tol = rtol * r.abs() + atol_rms * rms + 1e-30;
        let ratio = if g.is_finite() {
            (f64::from(g) - r).abs() / tol
        } else {
            f64::INFINITY
        };
        if ratio > best.1 || (i == 0 && ratio.is_nan()) {
            best = (i, ratio);
        }
    }
    Some(best)
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub model: String,
    pub weights: String,
    pub fp16_backend: Option<Fp16Backend>,
    pub int4_kernel: String,
    pub attn_chunk: usize,
    pub steps: usize,
    pub ops_checked: usize,
    /// The worst op-local comparison of all (whether or not it failed).
    pub worst_op: Option<OpError>,
    /// The first op (in execution order) out of tolerance.
    pub first_bad_op: Option<OpError>,
    /// Worst end-to-end logit error, in tolerances.
    pub logits_ratio: f64,
    pub logits_worst_step: usize,
    pub ref_tokens: Vec<u32>,
    pub eager_tokens: Vec<u32>,
    pub graph_tokens: Vec<u32>,
    /// Greedy tokens of the graph launched with programmatic dependent launch (empty below sm_90).
    pub pdl_tokens: Vec<u32>,
    /// Greedy eager tokens with every SM's shared memory filled with NaN before each launch
    /// (`GpuEngine::set_poison_smem`): a kernel reading shared memory it did not write shows here.
    pub poisoned_tokens: Vec<u32>,
    /// Rows per prefill chunk of this check's engine (a 12-token prompt at chunk 5 runs 5 + 5 + 2).
    pub prefill_chunk: usize,
    /// Int4 prefill path per linear shape ("K x N: GemmV2" ...).
    pub prefill_paths: Vec<String>,
    /// GEMM prefill, every prompt row's logits vs the reference, in tolerances (worst row).
    pub prefill_logits_ratio: f64,
    pub prefill_worst_row: usize,
    /// GEMM prefill, the last row's logits alone (PrefillLogits::Last), in tolerances.
    pub prefill_last_ratio: f64,
    /// Greedy tokens of the decode graph continuing from a GEMM prefill.
    pub prefill_tokens: Vec<u32>,
    /// GPU logits vs the CPU reference engine (`CpuEngine`, f32 weights) over the prompt, in
    /// tolerances (fixtures only).
    pub cpu_engine_logits_ratio: Option<f64>,
    /// GEMM prefill logits (every row) vs the CPU reference engine, in tolerances (fixtures only).
    pub cpu_engine_prefill_ratio: Option<f64>,
    /// Why differing greedy tokens are accepted (a near-tie in the reference), if they differ.
    pub token_note: Option<String>,
    /// What the per-op profile got wrong (marks, bytes or times), if anything.
    pub profile_error: Option<String>,
    /// Top-p tokens chosen on the GPU (eager) and what disagreed with the CPU mirror, if anything.
    pub top_p_tokens: Vec<u32>,
    pub top_p_error: Option<String>,
    /// The persistent decode layers on the same check: the device's grid, then a grid capped at
    /// `PERSISTENT_SMALL_GRID` blocks (empty: not run here, see `persistent_not_run`).
    pub persistent: Vec<PersistentCheck>,
    pub persistent_not_run: Option<String>,
    /// The traced pass again with the fused GLU toggled from the engine's default, where some
    /// down projection can take it: its first op out of tolerance and worst logits (None: not
    /// run here).
    #[serde(default)]
    pub fused_glu_first_bad_op: Option<OpError>,
    #[serde(default)]
    pub fused_glu_logits_ratio: Option<f64>,
    /// Linears that ran as plain GEMVs on permuted x (EngineOptions::act_order_plain: q|k|v,
    /// gate|up and down of each layer where eligible).
    #[serde(default)]
    pub act_order_plain_linears: usize,
    pub pass: bool,
}

impl CheckReport {
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} [{}, int4 kernel {}, fp16 {:?}] chunk {}: {} ({} steps, {} op outputs; logits {:.2}x tol; tokens ref {:?} eager {:?} graph {:?})",
            self.model,
            self.weights,
            self.int4_kernel,
            self.fp16_backend,
            self.attn_chunk,
            if self.pass { "PASS" } else { "FAIL" },
            self.steps,
            self.ops_checked,
            self.logits_ratio,
            self.ref_tokens,
            self.eager_tokens,
            self.graph_tokens
        );
        if let Some(r) = self.fused_glu_logits_ratio {
            s.push_str(&format!(
                "\n  fused GLU toggled, traced: logits {r:.2}x tol"
            ));
            if let Some(e) = &self.fused_glu_first_bad_op {
                s.push_str(&format!("; first op out of tolerance: {e}"));
            }
        }
        if self.act_order_plain_linears > 0 {
            s.push_str(&format!(
                "\n  act-order on plain kernels: {} linears on permuted x",
                self.act_order_plain_linears
            ));
        }
        if let Some(e) = &self.first_bad_op {
            s.push_str(&format!("\n  first op out of tolerance: {e}"));
        } else if let Some(e) = &self.worst_op {
            s.push_str(&format!("\n  worst op: {e}"));
        }
        s.push_str(&format!(
            "\n  GEMM prefill (chunk {}): all rows {:.2}x tol (worst row {}), last row {:.2}x tol; tokens after it {:?}",
            self.prefill_chunk,
            self.prefill_logits_ratio,
            self.prefill_worst_row,
            self.prefill_last_ratio,
            self.prefill_tokens
        ));
        if let Some(r) = self.cpu_engine_logits_ratio {
            s.push_str(&format!("\n  logits vs the CPU engine: {r:.2}x tolerance"));
        }
        if let Some(r) = self.cpu_engine_prefill_ratio {
            s.push_str(&format!(
                "\n  GEMM prefill logits vs the CPU engine: {r:.2}x tolerance"
            ));
        }
        if let Some(n) = &self.token_note {
            s.push_str(&format!("\n  {n}"));
        }
        if let Some(e) = &self.profile_error {
            s.push_str(&format!("\n  per-op profile: {e}"));
        }
        if !self.pdl_tokens.is_empty() {
            s.push_str(&format!("\n  graph + PDL tokens {:?}", self.pdl_tokens));
        }
        match &self.top_p_error {
            Some(e) => s.push_str(&format!("\n  top-p on the GPU: {e}")),
            None => s.push_str(&format!(
                "\n  top-p on the GPU = CPU mirror: {:?}",
                self.top_p_tokens
            )),
        }
        for p in &self.persistent {
            s.push_str(&format!(
                "\n  persistent layers [{}]: {} op outputs, logits {:.2}x tol; tokens eager {:?} graph {:?} graph + PDL {:?}",
                p.plan, p.ops_checked, p.logits_ratio, p.eager_tokens, p.graph_tokens, p.pdl_tokens
            ));
            if let Some(e) = &p.graph_refused {
                s.push_str(&format!(
                    "\n    graph capture refused by the driver (its \"graph\" steps ran eager): {e}"
                ));
            }
            if let Some(e) = &p.first_bad_op {
                s.push_str(&format!("\n    first op out of tolerance: {e}"));
            } else if let Some(e) = &p.worst_op {
                s.push_str(&format!("\n    worst op: {e}"));
            }
        }
        if let Some(why) = &self.persistent_not_run {
            s.push_str(&format!("\n  persistent layers not run: {why}"));
        }
        s
    }
}

fn get<'a>(t: &'a [TraceEntry], layer: Option<usize>, op: &str) -> &'a [f32] {
    t.iter()
        .find(|e| e.layer == layer && e.op == op)
        .map_or(&[], |e| &e.values)
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// Op-local references for one traced step, in execution order: (layer, op, reference).
fn op_refs(
    cfg: &ModelConfig,
    w: &RefWeights,
    t: &[TraceEntry],
    token: u32,
    pos: usize,
    kv_hist: &mut KvHist,
) -> Vec<OpRef> {
    let (h, hd, heads, kv) = (
        cfg.hidden_size,
        cfg.head_dim(),
        cfg.num_attention_heads,
        cfg.num_key_value_heads * cfg.head_dim(),
    );
    let eps = cfg.rms_norm_eps;
    let mut out = Vec::new();
    out.push((
        None,
        "embedding",
        w.embed[token as usize * h..(token as usize + 1) * h].to_vec(),
    ));
    let mut resid = f64s(get(t, None, "embedding"));
    for (li, l) in w.layers.iter().enumerate() {
        let ly = Some(li);
        if li > 0 {
            let down = f64s(get(t, Some(li - 1), "down_proj"));
            resid = f64s(get(t, Some(li - 1), "residual_attn"))
                .iter()
                .zip(&down)
                .map(|(a, b)| a + b)
                .collect();
        }
        out.push((ly, "attn_norm", rms_norm(&resid, &l.attn_norm, eps)));
        out.push((
            ly,
            "qkv_proj",
            matvec(&f64s(get(t, ly, "attn_norm")), &l.qkv),
        ));
        let mut r = f64s(get(t, ly, "qkv_proj"));
        if r.len() == heads * hd + 2 * kv {
            rope(&mut r[..heads * hd + kv], hd, pos, cfg.rope_theta);
        }
        out.push((ly, "rope", r));
        let rot = f64s(get(t, ly, "rope"));
        if rot.len() == heads * hd + 2 * kv {
            kv_hist[li]
                .0
                .push(rot[heads * hd..heads * hd + kv].to_vec());
            kv_hist[li].1.push(rot[heads * hd + kv..].to_vec());
            out.push((
                ly,
                "attention",
                attention(cfg, &rot[..heads * hd], &kv_hist[li].0, &kv_hist[li].1),
            ));
        }
        out.push((ly, "o_proj", matvec(&f64s(get(t, ly, "attention")), &l.o)));
        let o = f64s(get(t, ly, "o_proj"));
        let ra: Vec<f64> = resid.iter().zip(&o).map(|(a, b)| a + b).collect();
        out.push((ly, "ffn_norm", rms_norm(&ra, &l.ffn_norm, eps)));
        out.push((ly, "residual_attn", ra));
        out.push((
            ly,
            "gate_up_proj",
            matvec(&f64s(get(t, ly, "ffn_norm")), &l.gate_up),
        ));
        out.push((ly, "silu_mul", silu_mul(&f64s(get(t, ly, "gate_up_proj")))));
        out.push((
            ly,
            "down_proj",
            matvec(&f64s(get(t, ly, "silu_mul")), &l.down),
        ));
    }
    let last = w.layers.len() - 1;
    let rf: Vec<f64> = f64s(get(t, Some(last), "residual_attn"))
        .iter()
        .zip(f64s(get(t, Some(last), "down_proj")))
        .map(|(a, b)| a + b)
        .collect();
    out.push((None, "final_norm", rms_norm(&rf, &w.final_norm, eps)));
    out.push((None, "residual_final", rf));
    out.push((
        None,
        "lm_head",
        lm_head(w, &f64s(get(t, None, "final_norm"))),
    ));
    out
}

fn argmax(v: &[f64]) -> (usize, f64) {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    let margin = if v.len() > 1 {
        v[order[0]] - v[order[1]]
    } else {
        f64::INFINITY
    };
    (order[0], margin)
}

/// One traced eager pass: the engine fed `seq` token by token from position 0, every op against its
/// op-local f64 reference and the logits against `ref_logits`.
struct TracedPass {
    ops: usize,
    worst_op: Option<OpError>,
    first_bad: Option<OpError>,
    logits_ratio: f64,
    logits_worst_step: usize,
}

fn traced_pass(
    eng: &mut GpuEngine,
    cfg: &ModelConfig,
    w: &RefWeights,
    seq: &[u32],
    ref_logits: &[Vec<f64>],
) -> Result<TracedPass> {
    eng.reset()?;
    let mut kv_hist = vec![(Vec::new(), Vec::new()); cfg.num_hidden_layers];
    let mut out = TracedPass {
        ops: 0,
        worst_op: None,
        first_bad: None,
        logits_ratio: 0.0,
        logits_worst_step: 0,
    };
    for (step, lg_ref) in ref_logits.iter().enumerate() {
        let t = eng.trace_step(seq[step])?;
        for (layer, op, want) in op_refs(cfg, w, &t, seq[step], step, &mut kv_hist) {
            let got = get(&t, layer, op);
            out.ops += 1;
            let (index, ratio) =
                worst(got, &want, OP_RTOL, OP_ATOL_RMS).unwrap_or((0, f64::INFINITY));
            let e = OpError {
                step,
                layer,
                op: op.to_string(),
                index,
                got: got.get(index).map_or(f64::NAN, |&g| g.into()),
                want: want.get(index).copied().unwrap_or(f64::NAN),
                ratio,
            };
            if exceeds(ratio, 1.0) && out.first_bad.is_none() {
                out.first_bad = Some(e.clone());
            }
            if out
                .worst_op
                .as_ref()
                .is_none_or(|w| exceeds(e.ratio, w.ratio))
            {
                out.worst_op = Some(e);
            }
        }
        let (_, r) = worst(get(&t, None, "lm_head"), lg_ref, LOGIT_RTOL, LOGIT_ATOL_RMS)
            .unwrap_or((0, f64::INFINITY));
        if exceeds(r, out.logits_ratio) {
            out.logits_ratio = r;
            out.logits_worst_step = step;
        }
    }
    Ok(out)
}

/// The persistent decode layers (one cooperative launch for every layer) on the same check: the
/// traced pass (each layer its own launch, every op read from the kernel's trace outputs), then
/// greedy tokens eager, through the graph, and through the graph with PDL on the other kernels.
#[derive(Debug, Clone, Serialize)]
pub struct PersistentCheck {
    /// Grid and phase splits (`GpuEngine::persistent_summary`).
    pub plan: String,
    pub ops_checked: usize,
    pub worst_op: Option<OpError>,
    pub first_bad_op: Option<OpError>,
    pub logits_ratio: f64,
    pub eager_tokens: Vec<u32>,
    pub graph_tokens: Vec<u32>,
    pub pdl_tokens: Vec<u32>,
    /// The driver refused to capture the cooperative launch into a CUDA graph: the "graph" tokens
    /// above then come from eager steps (the engine's fallback). Any other failure fails the check.
    pub graph_refused: Option<String>,
}

impl PersistentCheck {
    fn pass(&self) -> bool {
        self.first_bad_op.is_none() && self.logits_ratio <= 1.0
    }
}

/// The capped grid of the check's second persistent pass: several work items per block in every
/// GEMV phase, and attention splits larger than `attn_chunk` (the tiny models on a full grid
/// take neither path).
pub const PERSISTENT_SMALL_GRID: usize = 8;

fn check_persistent(
    eng: &mut GpuEngine,
    cfg: &ModelConfig,
    w: &RefWeights,
    seq: &[u32],
    ref_logits: &[Vec<f64>],
    prompt: &[u32],
    n_new: usize,
) -> Result<PersistentCheck> {
    let traced = traced_pass(eng, cfg, w, seq, ref_logits)?;
    let eager_tokens = eng.generate_with(prompt, n_new, false, PrefillMode::TokenByToken)?;
    // Where the driver refuses to capture the cooperative launch, the engine's "graph" steps run
    // eager (GpuEngine::persistent_graph_refused): reported, and the tokens must still match.
    let graph_tokens = eng.generate_with(prompt, n_new, true, PrefillMode::TokenByToken)?;
    let pdl_tokens = if eng.set_pdl(true) {
        eng.generate_with(prompt, n_new, true, PrefillMode::TokenByToken)
    } else {
        Ok(Vec::new())
    };
    let graph_refused = eng.persistent_graph_refused().map(str::to_string);
    eng.set_pdl(false);
    let pdl_tokens = pdl_tokens?;
    Ok(PersistentCheck {
        plan: eng.persistent_summary().unwrap_or_default(),
        ops_checked: traced.ops,
        worst_op: traced.worst_op,
        first_bad_op: traced.first_bad,
        logits_ratio: traced.logits_ratio,
        eager_tokens,
        graph_tokens,
        pdl_tokens,
        graph_refused,
    })
}

/// Run the whole check on `gpu`: `prompt` teacher-forced through traced eager steps, then `n_new`
/// greedy tokens eager and through the CUDA graph.
pub fn check_engine(
    gpu: &Gpu,
    cfg: &ModelConfig,
    host: &HostLlama,
    label: &str,
    prompt: &[u32],
    n_new: usize,
    opts: EngineOptions,
) -> Result<CheckReport> {
    let w = RefWeights::new(host);
    let chunk = opts.attn_chunk;
    let mut eng = GpuEngine::new(
        gpu,
        cfg,
        WeightSource::Host {
            weights: host,
            label,
        },
        opts,
    )?;
    let px_linears = eng.act_order_plain_linears();
    // Reference greedy continuation (also the teacher-forced sequence for the traced pass).
    let mut rm = RefModel {
        cfg,
        w: &w,
        cache: vec![(Vec::new(), Vec::new()); cfg.num_hidden_layers],
    };
    let mut seq: Vec<u32> = prompt.to_vec();
    let mut ref_logits = Vec::new();
    let mut margins = Vec::new();
    let mut ref_tokens = Vec::new();
    for i in 0..prompt.len() + n_new.saturating_sub(1) {
        let lg = rm.step(seq[i]);
        if i + 1 >= prompt.len() {
            let (t, m) = argmax(&lg);
            ref_tokens.push(t as u32);
            margins.push(m);
            if seq.len() == i + 1 {
                seq.push(t as u32);
            }
        }
        ref_logits.push(lg);
    }
    ref_tokens.truncate(n_new);

    // Traced eager pass over the same tokens.
    let traced = traced_pass(&mut eng, cfg, &w, &seq, &ref_logits)?;
    // The fused GLU (off by default since run 14's A/B) through the same op-by-op comparison,
    // where some down projection's kernel takes the gated input: its down_proj outputs against
    // the f64 reference with silu(gate) * up computed in the kernel's x loads.
    let own_glu = eng.fused_glu();
    let glu_traced = if eng.set_fused_glu(!own_glu) {
        let t = traced_pass(&mut eng, cfg, &w, &seq, &ref_logits);
        eng.set_fused_glu(own_glu);
        Some(t?)
    } else {
        eng.set_fused_glu(own_glu);
        None
    };
    let (ops, worst_op, first_bad, logits_ratio, logits_worst_step) = (
        traced.ops,
        traced.worst_op,
        traced.first_bad,
        traced.logits_ratio,
        traced.logits_worst_step,
    );

    let eager_tokens = eng.generate_with(prompt, n_new, false, PrefillMode::TokenByToken)?;
    // The same eager steps with NaN in every SM's shared memory before each launch: a kernel
    // that reads shared memory it never wrote then yields NaN logits every time, not by chance
    // (the attention's overrun select, H100 runs 9-10, passed this check on whatever earlier
    // kernels had left there).
    eng.set_poison_smem(true)?;
    let poisoned = eng.generate_with(prompt, n_new, false, PrefillMode::TokenByToken);
    eng.set_poison_smem(false)?;
    let poisoned_tokens = poisoned?;
    let graph_tokens = eng.generate_with(prompt, n_new, true, PrefillMode::TokenByToken)?;
    // One token at a time with a sync each (what `lab decode` streams as text).
    let mut stream_tokens = Vec::with_capacity(n_new);
    for i in 0..n_new {
        stream_tokens.push(if i == 0 {
            eng.begin(prompt, true, PrefillMode::TokenByToken)?
        } else {
            eng.next_token(true)?
        });
    }
    // The same graph with programmatic dependent launch (sm_90+ only; empty elsewhere).
    let pdl_tokens = if eng.set_pdl(true) {
        eng.generate_with(prompt, n_new, true, PrefillMode::TokenByToken)?
    } else {
        Vec::new()
    };
    // gemv_v6_pipe linears at one block per SM (the decode bench's experiment column), graph +
    // PDL where possible: another grid of the same kernel, the same tokens.
    let one_per_sm_tokens = if eng.set_v6_one_block_per_sm(true) {
        eng.generate_with(prompt, n_new, true, PrefillMode::TokenByToken)?
    } else {
        Vec::new()
    };
    eng.set_v6_one_block_per_sm(false);
    // Graph + PDL with the kernels that are not GEMVs launched plain (the decode bench's
    // experiment column): a different dependency edge per launch, the same tokens.
    let small_plain_tokens = if eng.set_pdl(true) {
        eng.set_small_ops_plain(true);
        let t = eng.generate_with(prompt, n_new, true, PrefillMode::TokenByToken);
        eng.set_small_ops_plain(false);
        t?
    } else {
        Vec::new()
    };
    eng.set_pdl(false);
    // The attention with its K/V L2 prefetch toggled from the engine's default (off since run 13's
    // A/B; the other setting stays selectable): graph, the same tokens.
    let own_prefetch = eng.attn_prefetch_kv();
    eng.set_attn_prefetch_kv(!own_prefetch);
    let attn_toggled_tokens = eng.generate_with(prompt, n_new, true, PrefillMode::TokenByToken);
    eng.set_attn_prefetch_kv(own_prefetch);
    let attn_toggled_tokens = attn_toggled_tokens?;
    // The fused GLU toggled from the default (off since run 14's A/B): graph, the same tokens;
    // empty where no down projection's kernel takes the gated input (nothing changes).
    let own_glu = eng.fused_glu();
    let glu_tokens = if eng.set_fused_glu(!own_glu) {
        eng.generate_with(prompt, n_new, true, PrefillMode::TokenByToken)
    } else {
        Ok(Vec::new())
    };
    eng.set_fused_glu(own_glu);
    let glu_tokens = glu_tokens?;
    // Act-order linears back on their own permuting kernels where the engine runs some on
    // permuted x (act_order_plain): graph, the same tokens.
    let own_kernel_tokens = if eng.act_order_plain_linears() > 0 {
        let on = eng.act_order_plain();
        eng.set_act_order_plain(false);
        let t = eng.generate_with(prompt, n_new, true, PrefillMode::TokenByToken);
        eng.set_act_order_plain(on);
        t?
    } else {
        Vec::new()
    };

    // The persistent decode layers where the engine can run them (int4 models); refused ones
    // (fp16 linears) say why. Restored to launch-per-op for the rest of the check. They run
    // gemv_v6_pipe's loop whatever --int4-kernel says, so the cases that differ only in the
    // registry kernel would repeat the same run: once per weights form (the engine's own kernel,
    // and the fixtures).
    let mut persistent = Vec::new();
    let mut persistent_not_run = None;
    // (An auto act-order case runs on permuted x, which the persistent layers ignore: they would
    // repeat its weights form's engine-kernel case.)
    if matches!(eng.int4_kernel_choice(), Int4Kernel::Variant(_)) || px_linears > 0 {
        persistent_not_run = Some(
            "covered by this weights form's engine-kernel case (the same kernel whatever --int4-kernel)"
                .to_string(),
        );
    } else {
        for cap in [0, PERSISTENT_SMALL_GRID] {
            eng.set_persistent_max_grid(cap);
            match eng.set_persistent_layers(true) {
                Ok(()) => {
                    let r = check_persistent(&mut eng, cfg, &w, &seq, &ref_logits, prompt, n_new);
                    eng.set_persistent_layers(false)?;
                    persistent.push(r?);
                }
                // A refusal (fp16 linears, a shape v6 cannot take) is reported; a driver error fails.
                Err(e @ LabError::Invalid { .. }) => {
                    persistent_not_run = Some(e.to_string());
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        eng.set_persistent_max_grid(0);
    }

    let (profile_tokens, profile_error) = check_profile(&mut eng, prompt, n_new)?;
    let (top_p_tokens, top_p_error) = check_top_p(&mut eng, prompt, n_new)?;

    // GEMM prefill: all rows, then the last row alone, then greedy decoding continuing from it.
    eng.reset()?;
    let rows = eng.prefill(prompt, PrefillLogits::All)?;
    eng.check_state()?;
    let (mut prefill_logits_ratio, mut prefill_worst_row) = (0f64, 0usize);
    if rows.len() != prompt.len() {
        prefill_logits_ratio = f64::INFINITY;
    }
    for (r, (got, want)) in rows.iter().zip(&ref_logits).enumerate() {
        let (_, x) = worst(got, want, LOGIT_RTOL, LOGIT_ATOL_RMS).unwrap_or((0, f64::INFINITY));
        if exceeds(x, prefill_logits_ratio) {
            prefill_logits_ratio = x;
            prefill_worst_row = r;
        }
    }
    eng.reset()?;
    let last = eng.prefill(prompt, PrefillLogits::Last)?;
    let prefill_last_ratio = match (last.first(), ref_logits.get(prompt.len() - 1)) {
        (Some(got), Some(want)) => {
            worst(got, want, LOGIT_RTOL, LOGIT_ATOL_RMS).map_or(f64::INFINITY, |(_, x)| x)
        }
        _ => f64::INFINITY,
    };
    let prefill_tokens = eng.generate_with(prompt, n_new, true, PrefillMode::Gemm)?;
    // Differing tokens are accepted only past a point where the reference's top-2 margin is within
    // the logits tolerance (a near-tie: either choice is right, and everything after diverges).
    let lg_rms = ref_logits.last().map_or(1.0, |l| {
        (l.iter().map(|v| v * v).sum::<f64>() / l.len() as f64).sqrt()
    });
    let tie = 2.0 * LOGIT_ATOL_RMS * lg_rms;
    let mut token_note = None;
    let mut tokens_ok = true;
    for (name, got) in [
        ("eager", &eager_tokens),
        ("eager, shared memory poisoned", &poisoned_tokens),
        ("graph", &graph_tokens),
        ("GEMM prefill + graph", &prefill_tokens),
        ("profiled eager", &profile_tokens),
        ("graph + PDL", &pdl_tokens),
        ("graph + PDL, small kernels plain", &small_plain_tokens),
        (
            "graph, attention K/V prefetch toggled",
            &attn_toggled_tokens,
        ),
        ("graph, fused GLU toggled", &glu_tokens),
        ("graph, act-order on its own kernels", &own_kernel_tokens),
        ("v6 at one block per SM", &one_per_sm_tokens),
        ("begin/next_token", &stream_tokens),
    ]
    .into_iter()
    .chain(persistent.iter().flat_map(|p| {
        [
            ("persistent layers eager", &p.eager_tokens),
            ("persistent layers graph", &p.graph_tokens),
            ("persistent layers graph + PDL", &p.pdl_tokens),
        ]
    })) {
        if got.is_empty()
            && (name.contains("PDL")
                || name.starts_with("persistent")
                || name.starts_with("v6")
                || name.contains("GLU")
                || name.contains("own kernels"))
        {
            continue; // not run (below sm_90, no persistent layers or no v6 linear here)
        }
        if let Some(i) = (0..n_new).find(|&i| got.get(i) != ref_tokens.get(i)) {
            if margins[i] <= tie {
                token_note = Some(format!("{name} tokens differ from step {i} on, where the reference's top-2 margin {:.4} is within the tolerance {tie:.4}: accepted", margins[i]));
            } else {
                tokens_ok = false;
                token_note = Some(format!(
                    "{name} token {i} differs, reference margin {:.4} > tolerance {tie:.4}",
                    margins[i]
                ));
            }
        }
    }
    Ok(CheckReport {
        model: cfg.name.clone(),
        weights: eng.weights.desc.kind.label(),
        fp16_backend: eng.fp16_backend,
        int4_kernel: eng.int4_kernel(),
        attn_chunk: chunk,
        steps: ref_logits.len(),
        ops_checked: ops,
        pass: first_bad.is_none()
            && logits_ratio <= 1.0
            && tokens_ok
            && prefill_logits_ratio <= 1.0
            && prefill_last_ratio <= 1.0
            && profile_error.is_none()
            && top_p_error.is_none()
            && persistent.iter().all(PersistentCheck::pass)
            && glu_traced
                .as_ref()
                .is_none_or(|t| t.first_bad.is_none() && t.logits_ratio <= 1.0),
        cpu_engine_logits_ratio: None,
        cpu_engine_prefill_ratio: None,
        prefill_chunk: eng.prefill_chunk(),
        prefill_paths: eng.prefill_int4_paths(),
        prefill_logits_ratio,
        prefill_worst_row,
        prefill_last_ratio,
        prefill_tokens,
        worst_op,
        first_bad_op: first_bad,
        logits_ratio,
        logits_worst_step,
        ref_tokens,
        eager_tokens,
        graph_tokens,
        pdl_tokens,
        poisoned_tokens,
        token_note,
        profile_error,
        top_p_tokens,
        top_p_error,
        persistent,
        persistent_not_run,
        fused_glu_logits_ratio: glu_traced.as_ref().map(|t| t.logits_ratio),
        fused_glu_first_bad_op: glu_traced.and_then(|t| t.first_bad),
        act_order_plain_linears: px_linears,
    })
}

/// Top-p sampling on the GPU (`lab_llama_sample_top_p`) against its CPU mirror
/// (`sampler::top_p_pick`, f64) on the GPU's own logits, step by step: the same token unless the
/// mirror's draw lies within `TOP_P_MARGIN` of an interval edge or of the nucleus cut (f32 vs
/// f64). Then the graph replay of the same sampling must give the same tokens up to the first
/// such near-edge step. Leaves the engine greedy.
fn check_top_p(
    eng: &mut GpuEngine,
    prompt: &[u32],
    n_new: usize,
) -> Result<(Vec<u32>, Option<String>)> {
    const TOP_P_MARGIN: f64 = 1e-4;
    let (top_p, temperature, seed) = (0.9f32, 0.8f32, 1234u64);
    eng.set_sampling(Sampling::TopP { top_p, temperature }, seed);
    let (mut tokens, mut err, mut first_near) = (Vec::new(), None, n_new);
    for i in 0..n_new {
        // Eager steps; each feeds the token the sampler chose before it.
        let got = if i == 0 {
            eng.begin(prompt, false, PrefillMode::TokenByToken)?
        } else {
            eng.next_token(false)?
        };
        let pos = eng.position() - 1;
        let logits = eng.logits()?;
        let want = top_p_pick(
            &logits,
            f64::from(top_p),
            f64::from(temperature),
            draw(seed, pos as u64),
        )?;
        if want.margin < TOP_P_MARGIN {
            first_near = first_near.min(i);
        }
        if got != want.token && want.margin >= TOP_P_MARGIN && err.is_none() {
            err = Some(format!(
                "top-p step {i} (pos {pos}): GPU token {got}, CPU mirror {} (nucleus {} tokens, margin {:.2e})",
                want.token, want.kept, want.margin
            ));
        }
        tokens.push(got);
    }
    let graph = eng.generate_with(prompt, n_new, true, PrefillMode::TokenByToken)?;
    if err.is_none() && graph[..first_near] != tokens[..first_near] {
        err = Some(format!(
            "top-p graph tokens {graph:?} differ from eager {tokens:?} before step {first_near}"
        ));
    }
    eng.set_sampling(Sampling::Greedy, 0);
    Ok((tokens, err))
}

/// The per-op profile (`GpuEngine::profile_step`) runs the real step: its greedy tokens (prompt
/// fed eagerly, then profiled steps) must be the eager ones (compared with the others above),
/// every step must leave one mark per op (`GpuEngine::profile_marks_per_step`: 9 or 10 per
/// layer + 5), and the bytes it attributes must
/// add up to what a step streams: every linear, the lm_head and K, V rows 0..=pos per layer.
fn check_profile(
    eng: &mut GpuEngine,
    prompt: &[u32],
    n_new: usize,
) -> Result<(Vec<u32>, Option<String>)> {
    let cfg = eng.config().clone();
    let kv_dim = (cfg.num_key_value_heads * cfg.head_dim()) as u64;
    let layers = cfg.num_hidden_layers as u64;
    let mut tokens = vec![eng.begin(prompt, false, PrefillMode::TokenByToken)?];
    let mut err = None;
    for _ in 1..n_new {
        let pos = eng.position() as u64;
        // A short hold: tiny models queue in well under a millisecond.
        let (marks, _) = eng.profile_step(2.0)?;
        tokens.push(eng.chosen_token()?);
        let want_marks = eng.profile_marks_per_step();
        let bytes: u64 = marks.iter().map(|m| m.bytes).sum();
        let d = &eng.weights.desc;
        let want_bytes = d.linear_bytes + d.lm_head_bytes + layers * 2 * (pos + 1) * kv_dim * 2;
        let bad_time = marks.iter().find(|m| !(m.us >= 0.0 && m.us.is_finite()));
        if err.is_none() {
            err = if marks.len() != want_marks {
                Some(format!(
                    "profile at pos {pos}: {} marks, expected {want_marks}",
                    marks.len()
                ))
            } else if bytes != want_bytes {
                Some(format!(
                    "profile at pos {pos}: {bytes} bytes attributed, the step streams {want_bytes}"
                ))
            } else {
                bad_time.map(|m| format!("profile at pos {pos}: op {} took {} us", m.op, m.us))
            };
        }
    }
    Ok((tokens, err))
}

/// The whole check on a checkpoint folder (the tiny fixtures), plus GPU logits over the prompt
/// against the CPU reference engine (`CpuEngine` on `LlamaWeights::from_checkpoint`).
pub fn check_checkpoint(
    gpu: &Gpu,
    dir: &std::path::Path,
    prompt: &[u32],
    n_new: usize,
    opts: EngineOptions,
) -> Result<CheckReport> {
    use crate::model::checkpoint::Checkpoint;
    use crate::model::cpu_engine::CpuEngine;
    use crate::model::weights::LlamaWeights;
    let ckpt = Checkpoint::open(dir)?;
    let host = HostLlama::from_checkpoint(&ckpt)?;
    let mut cfg = ckpt.config.clone();
    cfg.name = dir
        .file_name()
        .map_or("checkpoint".into(), |n| n.to_string_lossy().into_owned());
    let label = dir.display().to_string();
    let mut report = check_engine(gpu, &cfg, &host, &label, prompt, n_new, opts.clone())?;
    let cpu = CpuEngine::new(LlamaWeights::from_checkpoint(&ckpt)?, ckpt.config.clone())?
        .forward_all(prompt)?;
    let mut eng = GpuEngine::new(
        gpu,
        &cfg,
        WeightSource::Host {
            weights: &host,
            label: &label,
        },
        opts,
    )?;
    eng.reset()?;
    let mut ratio = 0f64;
    for (&t, want) in prompt.iter().zip(&cpu) {
        eng.feed(t, false, None)?;
        let got = eng.logits()?;
        let want: Vec<f64> = want.iter().map(|&x| f64::from(x)).collect();
        let (_, r) = worst(&got, &want, LOGIT_RTOL, LOGIT_ATOL_RMS).unwrap_or((0, f64::INFINITY));
        if exceeds(r, ratio) {
            ratio = r;
        }
    }
    eng.check_state()?;
    report.cpu_engine_logits_ratio = Some(ratio);
    report.pass &= ratio <= 1.0;
    // The GEMM prefill's every row against the CPU engine too.
    eng.reset()?;
    let rows = eng.prefill(prompt, PrefillLogits::All)?;
    eng.check_state()?;
    let mut pr = if rows.len() == cpu.len() {
        0f64
    } else {
        f64::INFINITY
    };
    for (got, want) in rows.iter().zip(&cpu) {
        let want: Vec<f64> = want.iter().map(|&x| f64::from(x)).collect();
        let (_, r) = worst(got, &want, LOGIT_RTOL, LOGIT_ATOL_RMS).unwrap_or((0, f64::INFINITY));
        if exceeds(r, pr) {
            pr = r;
        }
    }
    report.cpu_engine_prefill_ratio = Some(pr);
    report.pass &= pr <= 1.0;
    Ok(report)
}

/// Prompt of the tiny checks: 12 fixed ids below the tiny vocab (320), BOS first.
pub const CHECK_PROMPT: [u32; 12] = [1, 55, 53, 39, 52, 28, 223, 54, 288, 78, 223, 295];
pub const CHECK_NEW: usize = 8;
/// The committed tiny fixture checkpoints (tests/fixtures/<name>).
pub const FIXTURES: [&str; 5] = [
    "tiny-fp16",
    "tiny-sym-g32",
    "tiny-asym-gall",
    "tiny-sym-act-g64",
    "tiny-asym-act-g32",
];

/// One random tiny-model check.
#[derive(Debug, Clone, Copy)]
pub struct TinyCase {
    pub kind: WeightKind,
    /// Attention chunk: 4 and 8 split the 20 checked positions over 3-5 blocks (exercising the
    /// combine pass); 128 is a single block.
    pub chunk: usize,
    pub backend: Fp16Backend,
    pub seed: u64,
    /// Int4 kernel: None = the engine's own, else a registry GEMV variant (ignored with `auto`).
    pub int4: Option<&'static crate::kernels::registry::Variant>,
    /// `auto` with the heuristic dispatcher (no tuned config): for act-order forms the
    /// act_order_plain path, on which the check then requires exactly the linears the weights make
    /// act-order (`expected_act_order_plain`) to run on permuted x.
    pub auto: bool,
    /// Rows per prefill chunk: the 12-token prompt in one chunk (512), as 5 + 5 + 2 (chunks
    /// continuing the cache at positions 5 and 10), or as 11 + 1 (a 1-row chunk: per-row GEMV).
    pub prefill_chunk: usize,
    /// Int4 prefill kernel: gemm_v2 (Auto on sm_80+ at these 12-token prompts) for most cases,
    /// gemm_v1 for int4 g32 act-order, the per-row GEMV for per-channel int4, dequant + cuBLAS
    /// for the gemv_v6_pipe case of every int4 form (every path at least once).
    pub prefill_int4: crate::model::gpu_engine::PrefillInt4,
}

/// Prefill chunks the tiny cases cycle through (see `TinyCase::prefill_chunk`).
pub const PREFILL_CHUNKS: [usize; 3] = [512, 5, 11];

/// Every weight form the engine takes: int4 with/without act-order, sym/asym, g32/g64/per-channel,
/// fp16 through cuBLAS and through the lab GEMV.
pub fn tiny_cases() -> Vec<TinyCase> {
    let i4 = |group, act_order, sym| WeightKind::Int4 {
        group,
        act_order,
        sym,
    };
    [
        (i4(32, false, false), 128, Fp16Backend::Cublas),
        (i4(32, true, false), 4, Fp16Backend::Cublas),
        (i4(64, true, true), 8, Fp16Backend::Cublas),
        (i4(-1, false, true), 4, Fp16Backend::Cublas),
        (WeightKind::Fp16, 4, Fp16Backend::Cublas),
        (WeightKind::Fp16, 8, Fp16Backend::Lab),
    ]
    .into_iter()
    .enumerate()
    .flat_map(|(i, (kind, chunk, backend))| {
        // Int4 forms also through the registry's reorder-aware variants (v4: one block per column
        // tile; v5: split-K with the ticketed in-kernel reduction; v6: pipelined loads, x staged
        // in shared memory, auto split-K) — every int4 kernel the tuner may pick.
        // v2 (no act-order) is what the tuner picks for several plain shapes on the H100; v10 (no
        // act-order) is a tuner candidate since run 13. A unit test keeps these lists equal to
        // the tuner's m = 1 candidates.
        let registry: &[&str] = if matches!(
            kind,
            WeightKind::Int4 {
                act_order: false,
                ..
            }
        ) {
            &[
                "gemv_v2_vec",
                "gemv_v4_perm",
                "gemv_v5_splitk",
                "gemv_v6_pipe",
                "gemv_v10_l2x",
            ]
        } else if matches!(kind, WeightKind::Int4 { .. }) {
            &["gemv_v4_perm", "gemv_v5_splitk", "gemv_v6_pipe"]
        } else {
            &[]
        };
        let mut v = vec![TinyCase {
            kind,
            chunk,
            backend,
            seed: 100 + i as u64,
            int4: None,
            auto: false,
            prefill_chunk: PREFILL_CHUNKS[i % 3],
            prefill_int4: match i {
                1 => crate::model::gpu_engine::PrefillInt4::GemmV1,
                3 => crate::model::gpu_engine::PrefillInt4::RowGemv,
                _ => crate::model::gpu_engine::PrefillInt4::Auto,
            },
        }];
        v.extend(
            registry
                .iter()
                .filter_map(|n| crate::kernels::registry::by_name(n))
                .enumerate()
                .map(|(j, r)| TinyCase {
                    kind,
                    chunk,
                    backend,
                    seed: 100 + i as u64,
                    int4: Some(r),
                    auto: false,
                    prefill_chunk: PREFILL_CHUNKS[(i + j + 1) % 3],
                    // v6's case of every int4 form prefills through dequant + cuBLAS (act-order
                    // rows written back through the permutation), the others through auto.
                    prefill_int4: if r.name == "gemv_v6_pipe" {
                        crate::model::gpu_engine::PrefillInt4::Dequant
                    } else {
                        crate::model::gpu_engine::PrefillInt4::Auto
                    },
                }),
        );
        // Act-order forms also under auto (heuristic): q|k|v, gate|up and down as plain GEMVs on
        // x their producers wrote in sorted order (EngineOptions::act_order_plain).
        if kind.is_act_order() {
            v.push(TinyCase {
                kind,
                chunk,
                backend,
                seed: 100 + i as u64,
                int4: None,
                auto: true,
                prefill_chunk: PREFILL_CHUNKS[(i + 2) % 3],
                prefill_int4: crate::model::gpu_engine::PrefillInt4::Auto,
            });
        }
        v
    })
    .collect()
}

/// Engine options of the tiny checks.
pub fn check_opts(chunk: usize, backend: Fp16Backend) -> EngineOptions {
    let mut o = EngineOptions::new(CHECK_PROMPT.len() + CHECK_NEW + 4);
    o.attn_chunk = chunk;
    o.fp16_backend = backend;
    o
}

/// Engine options of the fixture checks: the prompt prefilled in chunks of 5 rows (5 + 5 + 2), so
/// the later chunks attend to cache rows an earlier chunk wrote.
pub fn fixture_opts() -> EngineOptions {
    let mut o = check_opts(16, Fp16Backend::Cublas);
    o.prefill_chunk = 5;
    o
}

/// Run one random tiny case.
pub fn check_tiny_case(gpu: &Gpu, c: &TinyCase) -> Result<CheckReport> {
    let cfg = tiny_config();
    let host = HostLlama::random(&cfg, c.seed, c.kind)?;
    let mut o = check_opts(c.chunk, c.backend);
    o.prefill_chunk = c.prefill_chunk;
    o.prefill_int4 = c.prefill_int4;
    o.int4 = if c.auto {
        crate::model::gpu_engine::Int4Kernel::Auto(std::sync::Arc::new(
            crate::tune::Dispatcher::from_config(None, &gpu.info, crate::build_info::KERNEL_HASH),
        ))
    } else {
        c.int4.map_or(
            crate::model::gpu_engine::Int4Kernel::Engine,
            crate::model::gpu_engine::Int4Kernel::Variant,
        )
    };
    let mut r = check_engine(
        gpu,
        &cfg,
        &host,
        &format!("random seed {}", c.seed),
        &CHECK_PROMPT,
        CHECK_NEW,
        o,
    )?;
    // An auto act-order case that did not take the permuted-x path would check nothing new.
    let want = expected_act_order_plain(c, &host);
    if r.act_order_plain_linears != want {
        r.pass = false;
        r.token_note = Some(format!(
            "{} linears ran on permuted x, expected {want}{}",
            r.act_order_plain_linears,
            r.token_note
                .as_ref()
                .map_or(String::new(), |n| format!("; {n}"))
        ));
    }
    Ok(r)
}

/// How many linears of a tiny case run on permuted x: for an auto act-order case, each of q|k|v,
/// gate|up and down of every layer whose weights are act-order with even groups (the random
/// models share one channel order per input, so q|k|v and gate|up fuse); none otherwise.
pub fn expected_act_order_plain(c: &TinyCase, host: &HostLlama) -> usize {
    if !c.kind.is_act_order() || !c.auto {
        return 0;
    }
    // Counted from the weights, not from the engine's rule: a linear whose K is a single group
    // (tiny-check's q|k|v and gate|up at g64, K = 64) has the trivial g_idx, so it is no
    // act-order linear at all and has nothing to gather (H100 run 16: the count 3 * layers
    // failed the g64 case, whose every linear matched the f64 reference).
    let act = |l: &HostLinear| match l {
        HostLinear::Quant(q) => q.is_act_order() && q.k % q.group_size == 0,
        HostLinear::F16 { .. } => false,
    };
    // q|k|v and gate|up share one channel order (HostLlama::random): q and gate stand for them.
    host.layers
        .iter()
        .map(|l| [0, 4, 6].iter().filter(|&&i| act(&l.linears[i])).count())
        .sum()
}

/// The long-context case: the 7B/13B engines' head dim (128) and attention split geometry
/// (chunk 256, 9 splits at max_ctx `LONG_MAX_CTX`) on a model small enough to check against the
/// f64 reference at every position. Its 520-token prompt puts the decode steps where each
/// split covers ~58 positions while one step of the kernel covers 128, so non-last splits run
/// past their end onto the new row's position: where H100 runs 9-10 read shared memory they never
/// wrote (NaN). The tiny cases' head dim 16 and 12-token prompts cannot reach that geometry
/// (attention_emulate.rs tests that this one does, and that the old select order fails on it).
pub fn long_context_config() -> ModelConfig {
    ModelConfig {
        name: "tiny-long-hd128".into(),
        hidden_size: 256,
        intermediate_size: 512,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        num_key_value_heads: 2,
        vocab_size: 320,
        max_position_embeddings: 4096,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        tie_word_embeddings: false,
    }
}

/// KV cache positions of the long-context case: the decode bench's engines' 2085 rounded up, the
/// same 9 attention splits.
pub const LONG_MAX_CTX: usize = 2100;
/// Prompt tokens of the long-context case (the decode steps follow at positions 520..).
pub const LONG_PROMPT_LEN: usize = 520;
/// Greedy tokens generated after it.
pub const LONG_NEW: usize = 6;

/// Run the long-context case (int4 g128, the engine's own kernel, default attention chunk and
/// prefill chunk: the 520 prompt rows prefill as 512 through auto's dequant + cuBLAS and 8
/// through the GEMM).
pub fn check_long_context(gpu: &Gpu) -> Result<CheckReport> {
    let cfg = long_context_config();
    let kind = WeightKind::Int4 {
        group: 128,
        act_order: false,
        sym: false,
    };
    let host = HostLlama::random(&cfg, 300, kind)?;
    let prompt: Vec<u32> = (0..LONG_PROMPT_LEN as u32)
        .map(|i| (i * 37 + 11) % 320)
        .collect();
    check_engine(
        gpu,
        &cfg,
        &host,
        "random seed 300, hd 128, 520-token prompt",
        &prompt,
        LONG_NEW,
        EngineOptions::new(LONG_MAX_CTX),
    )
}

/// A model whose every linear gemv_v9_cluster splits over K (v6's automatic split: 2 slices at
/// K = 1024, 5 at the down projection's K = 2816), so its engine launches are real clusters of 2
/// and 5 blocks; the tiny models' K of 64-192 give one slice, where v9 is v6 (no cluster).
pub fn cluster_check_config() -> ModelConfig {
    ModelConfig {
        name: "tiny-cluster".into(),
        hidden_size: 1024,
        intermediate_size: 2816,
        num_hidden_layers: 2,
        num_attention_heads: 8,
        num_key_value_heads: 8,
        vocab_size: 320,
        max_position_embeddings: 256,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        tie_word_embeddings: false,
    }
}

/// gemv_v9_cluster in the engine on `cluster_check_config` (plain g128, act-order g128 sym,
/// act-order g32), each checked as the tiny cases are: op by op against the f64 reference, tokens
/// eager / graph / graph + PDL (cluster launches with the PDL attribute on sm_90).
pub fn check_v9_cluster(gpu: &Gpu) -> Result<Vec<CheckReport>> {
    let v9 = crate::kernels::registry::by_name("gemv_v9_cluster").ok_or_else(|| {
        LabError::invalid("int4 kernel", "gemv_v9_cluster is not in the registry")
    })?;
    let cfg = cluster_check_config();
    let mut out = Vec::new();
    for (i, (group, act_order, sym)) in [(128, false, false), (128, true, true), (32, true, false)]
        .into_iter()
        .enumerate()
    {
        let kind = WeightKind::Int4 {
            group,
            act_order,
            sym,
        };
        let host = HostLlama::random(&cfg, 400 + i as u64, kind)?;
        let mut o = check_opts(8, Fp16Backend::Cublas);
        o.int4 = crate::model::gpu_engine::Int4Kernel::Variant(v9);
        out.push(check_engine(
            gpu,
            &cfg,
            &host,
            &format!("random seed {}, gemv_v9_cluster", 400 + i),
            &CHECK_PROMPT,
            CHECK_NEW,
            o,
        )?);
    }
    Ok(out)
}

/// A small LLaMA with the tiny fixtures' shapes (GQA 4 heads over 2, head_dim 16).
pub fn tiny_config() -> ModelConfig {
    ModelConfig {
        name: "tiny-check".into(),
        hidden_size: 64,
        intermediate_size: 192,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        vocab_size: 320,
        max_position_embeddings: 256,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        tie_word_embeddings: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_linear_of_the_cluster_check_launches_v9_as_a_cluster() {
        // The layer as the engine holds it (q|k|v and gate|up fused; act-order as a permutation):
        // q|k|v, o, gate|up at K = 1024 split in 2, down at K = 2816 in 5.
        use crate::cuda::SmLimits;
        use crate::kernels::launch::{plan, Tunables};
        use crate::model::gpu_engine::checkpoint_int4_layer;
        let cfg = cluster_check_config();
        let v9 = crate::kernels::registry::by_name("gemv_v9_cluster").unwrap();
        for (group, act_order) in [(128, false), (128, true), (32, true)] {
            let layer = checkpoint_int4_layer(&cfg, group, act_order);
            for ((s, _), slices) in layer.iter().zip([2, 2, 2, 5]) {
                let p = plan(v9, s, 1, s.k, s.n, &Tunables::new(), SmLimits::H100).unwrap();
                assert_eq!(
                    (p.cluster_y, p.grid.1),
                    (slices, slices),
                    "{}x{} g{group}",
                    s.k,
                    s.n
                );
            }
        }
    }

    #[test]
    fn tiny_act_order_cases_expect_the_linears_their_weights_make_act_order() {
        // H100 run 16: tiny-check at g64 has K = 64 for q|k|v and gate|up, one group, so only
        // down (K = 192, 3 groups) is act-order; the old expectation (3 per layer) failed it.
        let cfg = tiny_config();
        let mut seen = Vec::new();
        for c in tiny_cases() {
            let host = HostLlama::random(&cfg, c.seed, c.kind).unwrap();
            let want = expected_act_order_plain(&c, &host);
            let WeightKind::Int4 {
                group,
                act_order: true,
                ..
            } = c.kind
            else {
                assert_eq!(want, 0, "{}", c.kind.label());
                continue;
            };
            if !c.auto {
                assert_eq!(want, 0, "{} not auto", c.kind.label());
                continue;
            }
            seen.push((group, want));
            // Every counted linear is one the engine's rule takes: a real permutation, and no
            // g_idx left after the reorder (even groups).
            for l in &host.layers {
                for i in [0, 4, 6] {
                    let HostLinear::Quant(q) = &l.linears[i] else {
                        panic!("int4 case with an fp16 linear");
                    };
                    let r = crate::gptq::reorder::reorder_by_group(q).unwrap();
                    let moved = r.perm.iter().enumerate().any(|(i, &p)| p as usize != i);
                    assert_eq!(moved, q.is_act_order(), "g{group} linear {i}");
                    if q.is_act_order() {
                        assert!(
                            r.layer.g_idx.is_none(),
                            "g{group} linear {i}: uneven groups"
                        );
                    }
                }
            }
        }
        seen.sort();
        assert_eq!(seen, vec![(32, 6), (64, 2)]);
    }

    #[test]
    fn tiny_cases_run_every_m1_kernel_the_tuner_may_pick() {
        use crate::tune::dispatch::{serves, VARIANTS};
        use crate::tune::schema::ProblemKey;
        let cases = tiny_cases();
        for act_order in [false, true] {
            // Which registry kernels the int4 cases of this act-order run.
            let ran: std::collections::BTreeSet<&str> = cases
                .iter()
                .filter(
                    |c| matches!(c.kind, WeightKind::Int4 { act_order: a, .. } if a == act_order),
                )
                .filter_map(|c| c.int4.map(|r| r.name))
                .collect();
            let key = ProblemKey {
                n: 4096,
                k: 4096,
                group_size: 128,
                act_order,
                batch_bucket: 1,
            };
            for v in VARIANTS.iter().filter(|v| serves(v.name, &key, 90)) {
                assert!(
                    ran.contains(v.name),
                    "{} (act-order {act_order}) is a tuner candidate but no tiny case runs it",
                    v.name
                );
            }
        }
    }

    #[test]
    fn worst_scales_by_tolerance_and_flags_nan() {
        let want = [1.0, -2.0, 0.0, 4.0];
        let (i, r) = worst(&[1.0, -2.0, 0.0, 4.0], &want, 1e-3, 1e-3).unwrap();
        assert_eq!(r, 0.0, "{i}");
        let (i, r) = worst(&[1.0, -2.1, 0.0, 4.0], &want, 1e-3, 1e-3).unwrap();
        assert_eq!(i, 1);
        assert!(r > 10.0);
        let (i, r) = worst(&[1.0, -2.0, f32::NAN, 4.0], &want, 1e-3, 1e-3).unwrap();
        assert_eq!((i, r), (2, f64::INFINITY));
        assert!(worst(&[1.0], &want, 1e-3, 1e-3).is_none());
    }

    #[test]
    fn reference_rope_is_a_rotation_of_pairs_i_and_i_plus_half() {
        let mut x = vec![1.0, 0.0, 0.0, 0.0];
        rope(&mut x, 4, 3, 10000.0);
        assert!(
            (x[0] - 3f64.cos()).abs() < 1e-12 && (x[2] - 3f64.sin()).abs() < 1e-12,
            "{x:?}"
        );
        assert_eq!((x[1], x[3]), (0.0, 0.0));
    }

    #[test]
    fn op_refs_reproduce_an_exact_trace_op_by_op() {
        // Feed op_refs a "trace" made of the reference's own op outputs: every op must agree with
        // itself to rounding, which checks the wiring (inputs of each op taken from the right entry).
        let cfg = tiny_config();
        let host = HostLlama::random(
            &cfg,
            5,
            WeightKind::Int4 {
                group: 32,
                act_order: true,
                sym: false,
            },
        )
        .unwrap();
        let w = RefWeights::new(&host);
        let mut hist_a = vec![(Vec::new(), Vec::new()); cfg.num_hidden_layers];
        let mut hist_b = hist_a.clone();
        let mut rm = RefModel {
            cfg: &cfg,
            w: &w,
            cache: vec![(Vec::new(), Vec::new()); cfg.num_hidden_layers],
        };
        for (pos, tok) in [3u32, 17, 250].into_iter().enumerate() {
            // Build the trace iteratively: each op's reference uses earlier entries only.
            let mut trace: Vec<TraceEntry> = Vec::new();
            let mut prev_len = usize::MAX;
            let mut hist_tmp = hist_a.clone();
            loop {
                hist_tmp.clone_from(&hist_a);
                let refs = op_refs(&cfg, &w, &trace, tok, pos, &mut hist_tmp);
                for (layer, op, v) in &refs {
                    if !trace.iter().any(|e| e.layer == *layer && e.op == *op) && !v.is_empty() {
                        trace.push(TraceEntry {
                            layer: *layer,
                            op,
                            values: v.iter().map(|&x| x as f32).collect(),
                        });
                        break;
                    }
                }
                if trace.len() == prev_len {
                    break;
                }
                prev_len = trace.len();
            }
            hist_a = hist_tmp;
            let refs = op_refs(&cfg, &w, &trace, tok, pos, &mut hist_b);
            assert_eq!(
                refs.len(),
                4 + cfg.num_hidden_layers * 10,
                "every op has a reference"
            );
            for (layer, op, want) in &refs {
                let (i, r) = worst(get(&trace, *layer, op), want, OP_RTOL, OP_ATOL_RMS).unwrap();
                assert!(r < 0.05, "step {pos} layer {layer:?} {op}: {r} at {i}");
            }
            let lg = rm.step(tok);
            let (_, r) = worst(get(&trace, None, "lm_head"), &lg, 1e-4, 1e-4).unwrap();
            assert!(
                r < 1.0,
                "op-by-op chain must equal the independent forward: {r}"
            );
        }
    }
}
