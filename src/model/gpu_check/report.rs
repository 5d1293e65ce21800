//! What a check found: the worst element of a comparison and the report of a whole check.

use super::PersistentCheck;
use crate::model::gpu_engine::Fp16Backend;
use serde::Serialize;

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
