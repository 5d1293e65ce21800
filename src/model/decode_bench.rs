//! Decode measurements of the GPU engine: tokens/s and ms/token at several context lengths (CUDA
//! graph replay and eager launches), % of the bandwidth roofline, VRAM by part; and the report
//! writer (`reports/<gpu>/decode.{json,md}` + SVG plots), testable on the CPU from a recorded run.
//!
//! Roofline (../shared/anchors.md): decode at batch 1 is memory-bound, so
//!   bytes/token(ctx) = linear weights (int4 codes + scales + zeros [+ act-order perm], or fp16)
//!                    + fp16 lm_head (vocab x hidden x 2) + one embedding row (hidden x 2)
//!                    + RMSNorm gains ((2 L + 1) x hidden x 2)
//!                    + KV cache read: L x 2 (k, v) x ctx x kv_heads x head_dim x 2
//!   roofline tok/s = measured read ceiling (bytes/s) / bytes/token(ctx)
//! where ctx is the mean number of cached positions a timed step attends (a step at position p
//! reads p + 1 rows). Activations (a few KB per op) stay in L2 and are left out.
//!
//! Prefill is reported separately (`PrefillPoint`): one prefill (GEMM family or dequant + cuBLAS per chunk) of N prompt tokens from
//! position 0 (128/512/1024/2048 by default), timed with CUDA events, tokens/s and the linear
//! layers' TFLOP/s (2 x linear parameters x tokens: prefill is compute-bound, not a bandwidth
//! roofline).

use crate::bench::Ceilings;
use crate::cuda::Gpu;
use crate::model::config::ModelConfig;
use crate::model::gpu_engine::{
    EngineOptions, Fp16Backend, GpuEngine, PrefillInt4, SkipOps, WeightSource, DEFAULT_ATTN_CHUNK,
};
use crate::model::gpu_weights::{SyntheticSpec, WeightKind, WeightsDesc};
use crate::model::sampler::Sampling;
use crate::model::step_profile::{self, StepProfile};
use crate::model::vram::VramReport;
use crate::plan::{Plan, PlanSpec};
use crate::report::markdown::table;
use crate::report::plot::{line_chart, Series};
use crate::report::ReportHeader;
use crate::tune::BudgetSetting;
use crate::{LabError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The roofline's byte counts of one model + weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BytesPerToken {
    pub linear_bytes: u64,
    pub lm_head_bytes: u64,
    pub embed_row_bytes: u64,
    pub norm_bytes: u64,
    /// KV bytes read per cached position per token: L x 2 x kv_dim x 2.
    pub kv_bytes_per_position: u64,
}

impl BytesPerToken {
    pub fn new(cfg: &ModelConfig, w: &WeightsDesc) -> Self {
        let kv_dim = (cfg.num_key_value_heads * cfg.head_dim()) as u64;
        BytesPerToken {
            linear_bytes: w.linear_bytes,
            lm_head_bytes: w.lm_head_bytes,
            embed_row_bytes: cfg.hidden_size as u64 * 2,
            norm_bytes: w.norm_bytes,
            kv_bytes_per_position: cfg.num_hidden_layers as u64 * 2 * kv_dim * 2,
        }
    }
    /// Bytes a step attending `positions` cached rows reads.
    pub fn at(&self, positions: f64) -> f64 {
        (self.linear_bytes + self.lm_head_bytes + self.embed_row_bytes + self.norm_bytes) as f64
            + self.kv_bytes_per_position as f64 * positions
    }
}

/// The weight bytes the engine's layout holds for `kind`, computed without a GPU (the same sums
/// `GpuWeights` takes from its buffers: fused q|k|v and gate|up, act-order as a permutation).
pub fn expected_weights(cfg: &ModelConfig, kind: WeightKind) -> Result<WeightsDesc> {
    let (h, inter, v) = (
        cfg.hidden_size as u64,
        cfg.intermediate_size as u64,
        cfg.vocab_size as u64,
    );
    let kv = (cfg.num_key_value_heads * cfg.head_dim()) as u64;
    let shapes = [(h, h + 2 * kv), (h, h), (h, 2 * inter), (inter, h)];
    let mut per_layer = 0u64;
    for (k, n) in shapes {
        per_layer += match kind {
            WeightKind::Fp16 => k * n * 2,
            WeightKind::Int4 {
                group,
                act_order,
                sym,
            } => {
                let g = if group < 0 { k } else { group as u64 };
                if g == 0 || k % g != 0 {
                    return Err(LabError::invalid(
                        "group size",
                        format!("{group} does not divide K = {k}"),
                    ));
                }
                let groups = k / g;
                k / 2 * n
                    + groups * n * 2
                    + if sym { 0 } else { groups * n / 2 }
                    // The permutation, where there is a channel order (more than one group).
                    + if act_order && g < k { k * 4 } else { 0 }
            }
        };
    }
    Ok(WeightsDesc {
        kind,
        source: "expected (computed)".into(),
        linear_bytes: per_layer * cfg.num_hidden_layers as u64,
        lm_head_bytes: v * h * 2,
        embed_bytes: v * h * 2,
        norm_bytes: (2 * cfg.num_hidden_layers as u64 + 1) * h * 2,
        fused: true,
    })
}

/// One context length of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextPoint {
    /// Cached positions when the timed steps start.
    pub ctx: usize,
    pub steps: usize,
    pub graph_ms_per_token: f64,
    pub eager_ms_per_token: f64,
    pub graph_tokens_per_s: f64,
    pub eager_tokens_per_s: f64,
    /// Mean rows attended per timed step: ctx + (steps + 1) / 2.
    pub mean_positions: f64,
    pub bytes_per_token: f64,
    pub roofline_tokens_per_s: f64,
    /// graph tokens/s as % of the roofline.
    pub roofline_pct: f64,
    /// GB/s the graph steps moved (bytes_per_token x tokens/s).
    pub achieved_gbs: f64,
    /// The graph with programmatic dependent launch (sm_90+, --pdl), ms per token, at the
    /// engine's PDL prefetch budgets (DecodeReport::pdl_budget: the run's --pdl-prefetch, or the
    /// tuned config's for this model, or the default).
    #[serde(default)]
    pub graph_pdl_ms_per_token: Option<f64>,
    /// The graph + PDL at other prefetch budgets (--pdl-prefetch): bytes per GEMV block, ms/token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub graph_pdl_prefetch: Vec<(u32, f64)>,
    /// The graph + PDL (engine's budget) with lab_llama_silu_mul launched per layer instead of
    /// silu(gate) * up computed in the down projection's x loads (EngineOptions::fused_glu off):
    /// the in-process A/B of that fusion (runs F-14). None where no layer fuses it (fp16, plain-x
    /// kernels), and in a run of this tree, whose engine has the fusion off by default since run
    /// 14's A/B.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_pdl_silu_kernel_ms: Option<f64>,
    /// The graph + PDL step choosing its token by top-p (p 0.9, T 0.8: lab_llama_sample_top_p)
    /// instead of argmax: what sampling costs per token (the other columns decode greedily).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_pdl_top_p_ms: Option<f64>,
    /// The graph + PDL step with the attention's K/V L2 prefetch off (v4's order), timed where
    /// the engine had it on: the in-process A/B of attention v5 (run 13). Off by default since
    /// (EngineOptions::attn_prefetch_kv), so a run of this tree leaves it None.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_pdl_attn_v4_ms: Option<f64>,
    /// The graph + PDL step with the act-order linears on their own permuting kernels
    /// (EngineOptions::act_order_plain off), where the engine runs some linear on permuted x:
    /// the in-process A/B of that path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_pdl_act_order_own_ms: Option<f64>,
    /// Graph + PDL with every gemv_v6_pipe linear at one block per SM
    /// (GpuEngine::set_v6_one_block_per_sm), at these prefetch budgets (bytes per block), ms/token:
    /// whether the next GEMV's blocks, now resident beside the running one, hide its ramp.
    #[serde(default)]
    pub graph_pdl_v6_one_per_sm: Vec<(u32, f64)>,
    /// Graph + PDL with the kernels that are not GEMVs launched plain
    /// (GpuEngine::set_small_ops_plain), at these GEMV prefetch budgets (bytes per block),
    /// ms/token: whether the prefetch helps once it can overlap only the small kernel before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub graph_pdl_small_plain: Vec<(u32, f64)>,
    /// Graph + PDL with one registry GEMV variant at its own per-block prefetch budget and every
    /// other at the engine's (EngineOptions::pdl_budget), one setting per entry:
    /// (variant, bytes per block, ms/token).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub graph_pdl_prefetch_variant: Vec<(String, u32, f64)>,
    /// The step with op classes left out (GpuEngine::set_skip_ops), graph and graph + PDL at the
    /// engine's budget, timed at the run's first context only (`--ablation`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ablation: Vec<Ablation>,
    /// The graph with the persistent decode layers (kernels/llama/layers.cu: one cooperative
    /// launch for every decoder layer; the other kernels with PDL where the run has the PDL
    /// column), ms per token. None where not asked for (--persistent-layers) or refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_persistent_ms: Option<f64>,
    /// The persistent layers at other L2 prefetch budgets (bytes per block before each grid
    /// barrier, --persistent-prefetch), ms/token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub graph_persistent_prefetch: Vec<(u32, f64)>,
    /// The persistent layers' figures are eager steps: the driver refused the graph capture.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub persistent_eager: bool,
}

/// One setting of the ablation: the step without `left_out`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ablation {
    pub left_out: String,
    /// The CUDA graph without PDL, ms per token.
    pub graph_ms: f64,
    /// The graph + PDL step (None where PDL is not available), ms per token.
    pub graph_pdl_ms: Option<f64>,
    /// Weight bytes per step the left-out GEMVs would have read (0 for the small ops).
    pub weight_bytes: u64,
}

/// The ablation's settings, in table order. Each says what one class adds to the step (graph,
/// and graph + PDL); "every GEMV" and "every small op" bracket how much the two kinds overlap.
pub fn ablations() -> Vec<(&'static str, SkipOps)> {
    let one = |f: fn(&mut SkipOps)| {
        let mut s = SkipOps::default();
        f(&mut s);
        s
    };
    vec![
        ("both RMSNorms of every layer", one(|s| s.norms = true)),
        ("the attention", SkipOps::attention_only()),
        ("silu * up", one(|s| s.silu = true)),
        ("q|k|v", one(|s| s.qkv = true)),
        ("o", one(|s| s.o = true)),
        ("gate|up", one(|s| s.gate_up = true)),
        ("down", one(|s| s.down = true)),
        (
            "every small op (norms, attention, silu)",
            SkipOps::small_ops(),
        ),
        ("every GEMV", SkipOps::linears()),
    ]
}

/// The weight bytes `skip` leaves unread, from the engine's [q|k|v, o, gate|up, down] bytes.
fn skipped_bytes(skip: &SkipOps, class: &[u64; 4]) -> u64 {
    [skip.qkv, skip.o, skip.gate_up, skip.down]
        .iter()
        .zip(class)
        .filter(|(on, _)| **on)
        .map(|(_, b)| b)
        .sum()
}

/// One timed prefill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefillPoint {
    /// Prompt tokens (from position 0).
    pub tokens: usize,
    pub ms: f64,
    pub tokens_per_s: f64,
    /// 2 x linear-layer parameters x tokens / time (the lm_head, attention and norms left out).
    pub linear_tflops: f64,
}

/// Multiply-accumulates of the linear layers per token: sum of K x N over q,k,v,o,gate,up,down.
pub fn linear_macs_per_token(cfg: &ModelConfig) -> u64 {
    cfg.layer_linears()
        .iter()
        .map(|(_, k, n)| (*k * *n) as u64)
        .sum::<u64>()
        * cfg.num_hidden_layers as u64
}

pub fn prefill_point(cfg: &ModelConfig, tokens: usize, ms: f64) -> PrefillPoint {
    let tps = if ms > 0.0 {
        tokens as f64 * 1e3 / ms
    } else {
        0.0
    };
    PrefillPoint {
        tokens,
        ms,
        tokens_per_s: tps,
        linear_tflops: 2.0 * linear_macs_per_token(cfg) as f64 * tps / 1e12,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecodeReport {
    pub header: ReportHeader,
    pub model: String,
    pub config: ModelConfig,
    pub weights: WeightsDesc,
    /// How the int4 linears are computed (the engine's own GEMV until the tuned variants serve it).
    pub int4_kernel: String,
    pub fp16_backend: Option<Fp16Backend>,
    pub max_ctx: usize,
    pub attn_chunk: usize,
    pub bytes: BytesPerToken,
    /// The ceiling the roofline uses (the measured pure-read bandwidth), GB/s.
    pub ceiling_gbs: f64,
    pub points: Vec<ContextPoint>,
    /// GEMM prefill timings (empty in reports recorded before the GEMM prefill, or when this
    /// run's prefill was timed in a sibling run of the same weights).
    #[serde(default)]
    pub prefill: Vec<PrefillPoint>,
    /// Rows per prefill chunk and the int4 path per linear shape.
    #[serde(default)]
    pub prefill_chunk: usize,
    #[serde(default)]
    pub prefill_paths: Vec<String>,
    /// The engine's `--prefill-int4` (Auto in reports recorded before it was kept): the
    /// planner beside the VRAM readings sizes the same prefill scratch.
    #[serde(default)]
    pub prefill_int4: PrefillInt4,
    pub vram: VramReport,
    pub notes: Vec<String>,
    /// Where a step's time goes, per context (empty in reports recorded before the profile, or
    /// with --profile-steps 0).
    #[serde(default)]
    pub profile: Vec<StepProfile>,
    /// The persistent layers' grid barriers alone (every phase's work skipped): us per step and
    /// barriers per step. None where the persistent layers were not timed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_barriers: Option<(f64, usize)>,
    /// Timed steps that ended with a state flag (1 bad token, 2 context full, 4 all logits
    /// NaN/-inf, 8 barrier timeout): their timings are not of a valid step, and `lab decode`
    /// fails after writing the report. Empty in a clean run and in reports recorded before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid: Vec<String>,
    /// The GEMVs' PDL prefetch budgets the "graph + PDL" column ran at. None where no PDL step
    /// was timed, and in reports recorded before budgets were tuned per model (32 KB then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pdl_budget: Option<BudgetSetting>,
    /// Whether `pdl_budget` was the tuned config's for this model (`lab tune`'s decode pass).
    #[serde(default)]
    pub pdl_budget_tuned: bool,
}

/// Records a timed stretch's state flags: a note in decode.md and, when non-zero, an entry in
/// `DecodeReport::invalid` (the note says the same).
fn record_flags(flags: i32, what: &str, notes: &mut Vec<String>, invalid: &mut Vec<String>) {
    if flags != 0 {
        let s = format!(
            "{what}: step state flags {flags:#x} (1 bad token, 2 context full, 4 all logits NaN/-inf, 8 barrier timeout): INVALID timing"
        );
        notes.push(s.clone());
        invalid.push(s);
    }
}

impl DecodeReport {
    pub fn label(&self) -> String {
        run_label(&self.model, self.weights.kind, &self.int4_kernel)
    }
}

/// How decode.md heads a run: "vicuna-7b int4 g128 [auto]", "vicuna-13b fp16" (the int4
/// kernel's name up to its first space: `auto (tuned config, 140 keys)` reads `auto`).
pub fn run_label(model: &str, kind: WeightKind, int4_kernel: &str) -> String {
    match kind {
        WeightKind::Fp16 => format!("{model} fp16"),
        k => format!(
            "{model} {} [{}]",
            k.label(),
            int4_kernel.split(' ').next().unwrap_or("")
        ),
    }
}

pub fn context_point(
    bytes: &BytesPerToken,
    ceiling_gbs: f64,
    ctx: usize,
    steps: usize,
    graph_ms: f64,
    eager_ms: f64,
) -> ContextPoint {
    let mean_positions = ctx as f64 + (steps as f64 + 1.0) / 2.0;
    let b = bytes.at(mean_positions);
    let tps = |ms: f64| if ms > 0.0 { 1e3 / ms } else { 0.0 };
    let roof = ceiling_gbs * 1e9 / b;
    ContextPoint {
        ctx,
        steps,
        graph_ms_per_token: graph_ms,
        eager_ms_per_token: eager_ms,
        graph_tokens_per_s: tps(graph_ms),
        eager_tokens_per_s: tps(eager_ms),
        mean_positions,
        bytes_per_token: b,
        roofline_tokens_per_s: roof,
        roofline_pct: 100.0 * tps(graph_ms) / roof,
        achieved_gbs: b * tps(graph_ms) / 1e9,
        graph_pdl_ms_per_token: None,
        graph_pdl_prefetch: Vec::new(),
        graph_pdl_silu_kernel_ms: None,
        graph_pdl_top_p_ms: None,
        graph_pdl_attn_v4_ms: None,
        graph_pdl_act_order_own_ms: None,
        graph_pdl_v6_one_per_sm: Vec::new(),
        graph_pdl_small_plain: Vec::new(),
        graph_pdl_prefetch_variant: Vec::new(),
        ablation: Vec::new(),
        graph_persistent_ms: None,
        graph_persistent_prefetch: Vec::new(),
        persistent_eager: false,
    }
}

/// One measured configuration.
#[derive(Debug, Clone)]
pub struct BenchPlan {
    pub cfg: ModelConfig,
    pub kind: WeightKind,
    pub contexts: Vec<usize>,
    /// Timed steps per context and mode (each mode after `warmup` untimed steps).
    pub steps: usize,
    pub warmup: usize,
    pub seed: u64,
    pub fp16_backend: Fp16Backend,
    pub int4: crate::model::gpu_engine::Int4Kernel,
    /// Prompt lengths to time a GEMM prefill at (empty: none).
    pub prefill_lens: Vec<usize>,
    /// Rows per prefill chunk.
    pub prefill_chunk: usize,
    pub prefill_int4: PrefillInt4,
    /// The dequant path's slice budget in fp16 elements (EngineOptions::dequant_slice_elems).
    pub dequant_slice_elems: usize,
    /// Eager steps profiled op by op at each context (0: no profile).
    pub profile_steps: usize,
    /// Also time the graph with programmatic dependent launch at each context (sm_90+).
    pub pdl: bool,
    /// The GEMVs' PDL prefetch budget per block (the "graph + PDL" column's); None: the engine's
    /// own (the tuned config's for this model where `lab tune` kept one, else the default).
    pub pdl_prefetch_own: Option<u32>,
    /// With `pdl`, also time these GEMV prefetch budgets (bytes per block) besides the engine's.
    pub pdl_prefetch_sweep: Vec<u32>,
    /// Also time the graph with the persistent decode layers (`ContextPoint::graph_persistent_ms`).
    pub persistent: bool,
    /// Their L2 prefetch budgets per block: the first is the column's, the others are swept.
    pub persistent_prefetch: Vec<u32>,
    /// With `pdl`, also time gemv_v6_pipe at one block per SM at these prefetch budgets (bytes per
    /// block; empty: not timed). `ContextPoint::graph_pdl_v6_one_per_sm`.
    pub v6_one_per_sm: Vec<u32>,
    /// With `pdl`, also time the step with the small kernels launched plain at these prefetch
    /// budgets (empty: not timed). `ContextPoint::graph_pdl_small_plain`.
    pub small_plain: Vec<u32>,
    /// Also time the step at the first context with each op class left out, in the graph and
    /// (where the PDL column ran) the graph + PDL (`ablations`; `ContextPoint::ablation`).
    pub ablate: bool,
    /// With `pdl`, also time each (variant, bytes per block) as its own setting: that variant's
    /// launches at that budget, the others at the engine's (empty: not timed).
    /// `ContextPoint::graph_pdl_prefetch_variant`.
    pub prefetch_variant: Vec<(String, u32)>,
}

/// The first hold of a profiled step, and the longest: the host queues ~12 launches and events
/// per layer (~500 for 7B) while the GPU spins; ~20 ms covers that at ~20 us each, and the hold
/// doubles up to 160 ms when the GPU still got there first.
const PROFILE_HOLD_MS: (f64, f64) = (20.0, 160.0);

/// A decode.md column of one graph + PDL variant: its header and a point's ms/token.
type VariantColumn = (&'static str, fn(&ContextPoint) -> Option<f64>);

/// The graph + PDL variants timed beside the engine's own setting, in column order.
const PDL_VARIANT_COLUMNS: [VariantColumn; 4] = [
    (
        "graph + PDL ms/tok, silu kernel instead of the fused GLU",
        |p| p.graph_pdl_silu_kernel_ms,
    ),
    ("graph + PDL ms/tok, top-p 0.9 sampling", |p| {
        p.graph_pdl_top_p_ms
    }),
    (
        "graph + PDL ms/tok, attention without the K/V prefetch (v4 order)",
        |p| p.graph_pdl_attn_v4_ms,
    ),
    (
        "graph + PDL ms/tok, act-order on its own kernels (not on permuted x)",
        |p| p.graph_pdl_act_order_own_ms,
    ),
];

/// The persistent decode layers of a run (`BenchPlan::persistent`): each context's column and
/// prefetch sweep, with PDL on the kernels around them where the run's PDL column ran, then the
/// grid barriers alone. Graph replay, or eager steps (5 launches per step, so nearly the same)
/// where the driver refuses to capture the cooperative launch (the engine falls back by itself).
/// A failure to time is a note and ends the pass (the points measured before it stand); a
/// stretch that ends with a state flag is recorded in `invalid` like any other (lab decode then
/// fails after writing the report).
fn time_persistent(
    eng: &mut GpuEngine,
    plan: &BenchPlan,
    pdl: bool,
    points: &mut [ContextPoint],
    notes: &mut Vec<String>,
    invalid: &mut Vec<String>,
) -> Option<(f64, usize)> {
    if let Err(e) = eng.set_persistent_layers(true) {
        notes.push(format!("persistent layers not timed: {e}"));
        return None;
    }
    eng.set_pdl(pdl);
    notes.push(format!(
        "persistent layers: one cooperative launch (kernels/llama/layers.cu) for every decoder layer, {}; PDL on the other kernels: {}; L2 prefetch {} KB per block before each grid barrier",
        eng.persistent_summary().unwrap_or_default(),
        if pdl { "yes" } else { "no" },
        eng.persistent_prefetch() / 1024
    ));
    let own = eng.persistent_prefetch();
    let mut budgets: Vec<u32> = Vec::new();
    for &b in plan.persistent_prefetch.iter().skip(1) {
        if b != own && !budgets.contains(&b) {
            budgets.push(b);
        }
    }
    'contexts: for p in points.iter_mut() {
        // "graph" steps run eager where the driver refused to capture the cooperative launch
        // (GpuEngine::persistent_graph_refused): marked in the column.
        match timed_from(eng, p.ctx, plan, true) {
            Ok((ms, f)) => {
                p.graph_persistent_ms = Some(ms);
                p.persistent_eager = eng.persistent_graph_refused().is_some();
                record_flags(
                    f,
                    &format!("ctx {} persistent layers", p.ctx),
                    notes,
                    invalid,
                );
            }
            Err(e) => {
                notes.push(format!(
                    "persistent layers not timed from ctx {} on: {e}",
                    p.ctx
                ));
                break;
            }
        }
        for &b in &budgets {
            eng.set_persistent_prefetch(b);
            match timed_from(eng, p.ctx, plan, true) {
                Ok((ms, f)) => {
                    p.graph_persistent_prefetch.push((b, ms));
                    let what = format!("ctx {} persistent layers at prefetch {b} B", p.ctx);
                    record_flags(f, &what, notes, invalid);
                }
                Err(e) => {
                    notes.push(format!(
                        "persistent layers at prefetch {b} B not timed from ctx {} on: {e}",
                        p.ctx
                    ));
                    eng.set_persistent_prefetch(own);
                    break 'contexts;
                }
            }
        }
        eng.set_persistent_prefetch(own);
    }
    if let Some(why) = eng.persistent_graph_refused() {
        notes.push(format!("persistent layers: the driver refused to capture the cooperative launch into a CUDA graph ({why}): their steps ran eager (5 launches each)"));
    }
    let barriers = match eng.time_persistent_barriers(20) {
        Ok((us, n)) => {
            notes.push(format!(
                "persistent layers, grid barriers alone (every phase's work skipped; 20 launches back to back, each launch's start included): {us:.1} us per step for {n} barriers, {:.2} us each at most",
                us / n.max(1) as f64
            ));
            Some((us, n))
        }
        Err(e) => {
            notes.push(format!("persistent layers' barriers not timed: {e}"));
            None
        }
    };
    if let Ok(f) = eng.flags() {
        if f != 0 {
            // Expected: these steps skip every phase's work, so the logits are not computed.
            notes.push(format!(
                "persistent barriers alone: step state flags {f:#x} (expected: no work is done)"
            ));
        }
    }
    let _ = eng.set_persistent_layers(false);
    eng.set_pdl(false);
    barriers
}

/// The `--prefill-int4` to plan a recorded run with: its own, except that an int4 `auto` with a
/// prefill but no dequant path in `prefill_paths` planned only the GEMM family. Reports recorded
/// before auto learned the dequant crossover (2026-11-27's runs 9-10, which have no
/// `prefill_int4` field: serde reads auto) ran exactly that, and so does a run whose chunk never
/// reaches the crossover; `v2` plans it (no fp16 W, no cuBLAS). fp16 runs and runs without a
/// prefill keep theirs (nothing to plan differently).
fn planned_prefill_int4(r: &DecodeReport) -> PrefillInt4 {
    let int4 = matches!(r.weights.kind, WeightKind::Int4 { .. });
    let dequantized = r.prefill_paths.iter().any(|p| p.contains("Dequant"));
    match r.prefill_int4 {
        PrefillInt4::Auto if int4 && r.prefill_chunk > 0 && !dequantized => PrefillInt4::GemmV2,
        c => c,
    }
}

/// The ablation table of one context point: each op class's share of the step, in the graph and
/// in the graph + PDL. "saved" = full step - step without it; for GEMVs, the left-out bytes over
/// the saved time (graph + PDL where timed) as GB/s and as % of the read ceiling: how close the
/// class streams to the hardware inside the step.
fn ablation_markdown(p: &ContextPoint, ceiling_gbs: f64) -> String {
    let full_pdl = p.graph_pdl_ms_per_token;
    let full = p.graph_ms_per_token;
    let pdl = full_pdl.is_some() && p.ablation.iter().all(|a| a.graph_pdl_ms.is_some());
    let mut md = format!(
        "\nWhere the step goes (ctx {}: the step timed with one op class left out at a time, against the full step: graph {full:.3} ms{}; the left-out ops' outputs are stale, the timings are real):\n\n",
        p.ctx,
        full_pdl.map_or(String::new(), |f| format!(", graph + PDL {f:.3} ms"))
    );
    let saved_cells = |full: f64, ms: f64| {
        let saved = full - ms;
        (
            saved,
            vec![
                format!("{ms:.3}"),
                format!("{saved:.3}"),
                format!("{:.1}%", 100.0 * saved / full),
            ],
        )
    };
    let rows: Vec<Vec<String>> = p
        .ablation
        .iter()
        .map(|a| {
            let mut row = vec![a.left_out.clone()];
            let (mut saved, cells) = saved_cells(full, a.graph_ms);
            row.extend(cells);
            if let (true, Some(f), Some(ms)) = (pdl, full_pdl, a.graph_pdl_ms) {
                let (s, cells) = saved_cells(f, ms);
                saved = s;
                row.extend(cells);
            }
            row.push(if a.weight_bytes > 0 {
                format!("{:.1}", a.weight_bytes as f64 / 1e6)
            } else {
                "-".into()
            });
            if a.weight_bytes > 0 && saved > 0.0 {
                let gbs = a.weight_bytes as f64 / (saved * 1e-3) / 1e9;
                row.push(format!("{gbs:.0}"));
                row.push(format!("{:.1}%", 100.0 * gbs / ceiling_gbs));
            } else {
                row.extend(["-".to_string(), "-".to_string()]);
            }
            row
        })
        .collect();
    let mut head = vec!["left out", "graph ms/tok", "saved ms", "% of the step"];
    if pdl {
        head.extend(["graph + PDL ms/tok", "saved ms", "% of the step"]);
    }
    head.extend([
        "weight MB left out",
        if pdl {
            "GB/s of those bytes over the saved time (graph + PDL)"
        } else {
            "GB/s of those bytes over the saved time"
        },
        "% of read ceiling",
    ]);
    md.push_str(&table(&head, &rows));
    md
}

/// "gemv_v2_vec 16 KB: 2.105, ..." for the per-variant budget column, or "-".
fn variant_budget_cells(sweep: &[(String, u32, f64)]) -> String {
    if sweep.is_empty() {
        return "-".into();
    }
    let cells: Vec<String> = sweep
        .iter()
        .map(|(v, b, m)| format!("{v} {} KB: {m:.3}", b / 1024))
        .collect();
    cells.join(", ")
}

/// One table cell of a prefetch sweep: "0 KB: 1.550, 64 KB: 1.450", or "-".
fn budget_cells(sweep: &[(u32, f64)]) -> String {
    if sweep.is_empty() {
        return "-".into();
    }
    let cells: Vec<String> = sweep
        .iter()
        .map(|(b, m)| format!("{} KB: {m:.3}", b / 1024))
        .collect();
    cells.join(", ")
}

/// `timed_stretch` with the plan's warm-up and timed steps.
fn timed_from(
    eng: &mut GpuEngine,
    ctx: usize,
    plan: &BenchPlan,
    graph: bool,
) -> Result<(f64, i32)> {
    timed_stretch(eng, ctx, plan.warmup, plan.steps, graph)
}

/// ms per step of `steps` steps from position `ctx` after `warmup` untimed ones from the same
/// position (graph replays or eager launches), and the step state flags the warm-up and the timed
/// steps left (set_position clears them, so each stretch reports its own; the bench records them
/// with `record_flags` under the stretch's label).
pub fn timed_stretch(
    eng: &mut GpuEngine,
    ctx: usize,
    warmup: usize,
    steps: usize,
    graph: bool,
) -> Result<(f64, i32)> {
    eng.set_position(ctx)?;
    let mut flags = 0;
    if warmup > 0 {
        eng.time_steps(warmup, graph)?;
        flags |= eng.flags()?;
    }
    eng.set_position(ctx)?;
    let ms = eng.time_steps(steps, graph)?;
    Ok((ms, flags | eng.flags()?))
}

/// `steps` profiled steps from position `ctx` (module step_profile).
fn profile_at(eng: &mut GpuEngine, ctx: usize, steps: usize) -> Result<StepProfile> {
    let mut hold = PROFILE_HOLD_MS.0;
    loop {
        eng.set_position(ctx)?;
        let mut marks = Vec::with_capacity(steps);
        let mut host_bound = false;
        for _ in 0..steps {
            let (m, late) = eng.profile_step(hold)?;
            host_bound |= late;
            marks.push(m);
        }
        if !host_bound || hold >= PROFILE_HOLD_MS.1 {
            return Ok(step_profile::aggregate(ctx, hold, host_bound, &marks));
        }
        hold *= 2.0;
    }
}

/// The KV cache rows a plan's engine holds: the longest context, its warm-up and timed steps,
/// and the longest prefill.
fn bench_max_ctx(plan: &BenchPlan) -> Result<usize> {
    let max_pos = plan
        .contexts
        .iter()
        .copied()
        .max()
        .ok_or_else(|| LabError::invalid("--ctx-list", "no context lengths"))?;
    if plan.steps == 0 {
        return Err(LabError::invalid("--steps", "must be positive"));
    }
    let max_prefill = plan.prefill_lens.iter().copied().max().unwrap_or(0);
    if plan.prefill_lens.contains(&0) {
        return Err(LabError::invalid(
            "--prefill-list",
            "prompt lengths must be positive",
        ));
    }
    Ok((max_pos + plan.warmup + plan.steps + 1).max(max_prefill))
}

/// Device bytes the engine of `plan` needs beyond the CUDA context that is already resident, by
/// the planner (run 17's driver readings on the H100: 0.97-1.00 of them; int4 `auto` is the low
/// end, its measured peak includes the dequant prefill's slice). An int4
/// `auto` prefill is planned as the GEMM family's: the engine itself falls back to it when the
/// dequant path's slice does not fit (GpuEngine::new).
pub fn bench_needs_bytes(plan: &BenchPlan) -> Result<u64> {
    let max_ctx = bench_max_ctx(plan)?;
    engine_needs_bytes(
        &plan.cfg,
        plan.kind,
        max_ctx,
        plan.prefill_chunk.min(max_ctx),
        plan.prefill_int4,
        plan.fp16_backend,
    )
}

/// What `bench_needs_bytes` plans, for any engine: `max_ctx` cache rows, prefill chunks of
/// `chunk` rows (0: none), the prefill's int4 path and the fp16 backend as EngineOptions has them.
pub fn engine_needs_bytes(
    cfg: &ModelConfig,
    kind: WeightKind,
    max_ctx: usize,
    chunk: usize,
    prefill_int4: PrefillInt4,
    fp16_backend: Fp16Backend,
) -> Result<u64> {
    let mut spec = PlanSpec::of_engine_run(cfg.clone(), kind, max_ctx as u64, chunk as u64);
    spec.prefill_int4 = match prefill_int4 {
        PrefillInt4::Auto => PrefillInt4::GemmV2,
        c => c,
    };
    spec.fp16_cublas = fp16_backend != Fp16Backend::Lab;
    let p = spec.plan()?;
    Ok(p.total_bytes.saturating_sub(p.cuda_context_bytes))
}

/// Why an engine that needs `needs` bytes is not started with `free` bytes free (None: it fits).
/// The margin (3% + 64 MiB) covers the allocator's rounding and the planner's error; a run that
/// still runs out of memory is skipped the same way where it was this close (`near_the_limit`),
/// and fails where it was not (a leak or a planner error, not a small card).
pub fn does_not_fit(needs: u64, free: u64) -> Option<String> {
    let with_margin = needs + needs / 33 + (64 << 20);
    (with_margin > free).then(|| {
        format!(
            "needs {} of device memory beyond the CUDA context (the planner's figure, plus a 3% + 64 MiB margin: {}), this GPU has {} free",
            gib(needs),
            gib(with_margin),
            gib(free)
        )
    })
}

/// Bytes as "1.23 GiB", as the fit messages give them.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / GIB)
}

/// Whether `needs` came within 10% of `free`: an out-of-memory error there is the card's size.
pub fn near_the_limit(needs: u64, free: u64) -> bool {
    needs + needs / 10 > free
}

/// A run `lab decode` did not do on this GPU because its engine does not fit: decode.md lists
/// them ("Not run on this GPU"), so a report from a small card says why 13B fp16 is missing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedRun {
    /// "vicuna-13b fp16", as decode.md heads runs (`run_label`).
    pub run: String,
    pub reason: String,
}

/// decode-skipped.json beside decode.json: written by every `lab decode` bench (removed when
/// nothing was skipped, so a file from an earlier run on a smaller card never lingers).
pub fn write_skipped_runs(dir: &Path, skipped: &[SkippedRun]) -> Result<()> {
    let path = dir.join(SKIPPED_FILE);
    if skipped.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(LabError::io(&path, e)),
            _ => Ok(()),
        };
    }
    crate::util::write_json_atomic(&path, &skipped)
}

/// Where `write_skipped_runs` keeps them, beside decode.json.
pub const SKIPPED_FILE: &str = "decode-skipped.json";

/// The skipped runs recorded beside decode.json, if any (an unreadable file is an error naming it).
pub fn read_skipped_runs(dir: &Path) -> Result<Vec<SkippedRun>> {
    let path = dir.join(SKIPPED_FILE);
    if !path.is_file() {
        return Ok(Vec::new());
    }
    crate::util::read_json(&path)
}

/// An engine of synthetic weights generated on the GPU from `seed`, its KV cache filled with
/// random values (from `kv_seed(seed)`) so any context can be timed without a prefill.
pub fn synthetic_engine(
    gpu: &Gpu,
    cfg: &ModelConfig,
    kind: WeightKind,
    seed: u64,
    opts: EngineOptions,
) -> Result<GpuEngine> {
    let mut eng = GpuEngine::new(
        gpu,
        cfg,
        WeightSource::Synthetic(SyntheticSpec { kind, seed }),
        opts,
    )?;
    eng.fill_kv_random(kv_seed(seed))?;
    Ok(eng)
}

/// The KV cache's random fill for weights of `seed`.
fn kv_seed(seed: u64) -> u64 {
    seed ^ 0xC0FFEE
}

/// The ablation rows of one context point (`settings`, in order): each timed in the graph and,
/// where the point's PDL column ran and PDL still works, in the graph + PDL. The engine is left as
/// it was found: no ops skipped, PDL off, the cache refilled, the position at the point's context.
fn ablate_at(
    eng: &mut GpuEngine,
    plan: &BenchPlan,
    p: &mut ContextPoint,
    settings: &[(&str, SkipOps)],
    pdl_ok: bool,
    notes: &mut Vec<String>,
) -> Result<()> {
    let ctx = p.ctx;
    let class = eng.linear_class_bytes();
    // A PDL failure here costs the PDL column only.
    let mut with_pdl = pdl_ok && p.graph_pdl_ms_per_token.is_some();
    for &(what, skip) in settings {
        if let Err(e) = eng.set_skip_ops(skip) {
            notes.push(format!("ablation not timed: {e}"));
            break;
        }
        let time = |eng: &mut GpuEngine, pdl: bool| {
            eng.set_pdl(pdl);
            timed_from(eng, ctx, plan, true).map(|(ms, _flags)| ms)
        };
        let graph_ms = match time(eng, false) {
            Ok(ms) => ms,
            Err(e) => {
                notes.push(format!(
                    "ablation at ctx {ctx} without {what} not timed: {e}"
                ));
                break;
            }
        };
        let graph_pdl_ms = if with_pdl {
            match time(eng, true) {
                Ok(ms) => Some(ms),
                Err(e) => {
                    notes.push(format!("ablation at ctx {ctx}: graph + PDL without {what} not timed ({e}); the graph column goes on"));
                    with_pdl = false;
                    None
                }
            }
        } else {
            None
        };
        p.ablation.push(Ablation {
            left_out: what.to_string(),
            graph_ms,
            graph_pdl_ms,
            weight_bytes: skipped_bytes(&skip, &class),
        });
    }
    eng.set_skip_ops(SkipOps::default())?;
    eng.set_pdl(false);
    eng.fill_kv_random(kv_seed(plan.seed))?;
    eng.set_position(ctx)?;
    notes.push(format!("ablation (ctx {ctx}): the graph{} step with one op class left out at a time, the engine's budget; its outputs are meaningless (skipped ops leave an earlier step's values), so its state flags are not checked; the cache was refilled after it", if with_pdl { " and the graph + PDL" } else { "" }));
    Ok(())
}

/// Run one plan on `gpu`: synthetic weights generated on the GPU, KV cache filled with random
/// values up to each context (no prefill: the bytes read are the same), timed with CUDA events.
pub fn run_decode_bench(gpu: &Gpu, plan: &BenchPlan, ceilings: &Ceilings) -> Result<DecodeReport> {
    let max_ctx = bench_max_ctx(plan)?;
    let mut opts = EngineOptions::new(max_ctx);
    opts.fp16_backend = plan.fp16_backend;
    opts.int4 = plan.int4.clone();
    opts.prefill_chunk = plan.prefill_chunk.min(max_ctx);
    opts.prefill_int4 = plan.prefill_int4;
    opts.dequant_slice_elems = plan.dequant_slice_elems;
    if let Some(b) = plan.pdl_prefetch_own {
        opts.pdl_budget = BudgetSetting::uniform(b);
        opts.pdl_prefetch_tuned = false;
    }
    if let Some(&b) = plan.persistent_prefetch.first() {
        opts.persistent_prefetch = b;
    }
    let mut eng = synthetic_engine(gpu, &plan.cfg, plan.kind, plan.seed, opts)?;
    eng.capture_graph()?;
    let bytes = BytesPerToken::new(&plan.cfg, &eng.weights.desc);
    let mut invalid = Vec::new();
    let mut notes = vec![
        "weights: synthetic, generated on the GPU (random values, exact shapes): tokens are meaningless, bytes and timings are real".into(),
        "KV cache: filled with random fp16 values up to each context for the decode timings (no prefill run before them)".into(),
        format!("timing: CUDA events around {} consecutive steps after {} warm-up steps, per mode; graph = the whole step replayed as one CUDA graph, eager = one launch per op from the host", plan.steps, plan.warmup),
    ];
    let mut points = Vec::new();
    let mut pdl_ok = plan.pdl;
    if plan.pdl {
        notes.push(format!(
            "graph + PDL: programmatic dependent launch (sm_90+); each int4 GEMV block prefetches part of its weight tile into L2 before waiting for the previous kernel (kernels/common/pdl.cuh): {}{}",
            eng.budget_summary(),
            if plan.pdl_prefetch_sweep.iter().any(|&b| b != eng.budget_setting().bytes) {
                "; the last column times other budgets"
            } else {
                ""
            }
        ));
    }
    for &ctx in &plan.contexts {
        let mut ms = [0f64; 2];
        for (i, graph) in [true, false].into_iter().enumerate() {
            let (t, f) = timed_from(&mut eng, ctx, plan, graph)?;
            ms[i] = t;
            let what = format!("ctx {ctx} {}", if graph { "graph" } else { "eager" });
            record_flags(f, &what, &mut notes, &mut invalid);
        }
        let mut point = context_point(&bytes, ceilings.read_gbs, ctx, plan.steps, ms[0], ms[1]);
        if pdl_ok && eng.set_pdl(true) {
            // The engine's own prefetch budget (the PDL column), then the other budgets asked
            // for (the sweep column); the engine's own restored after. A PDL failure (capture
            // refused by an older driver, say) costs the PDL columns, not the run.
            // The sweep's budgets are uniform (every GEMV at that budget), whatever per-variant
            // budgets the engine's own setting has.
            let own_setting = eng.budget_setting().clone();
            let own = own_setting.bytes;
            // A uniform budget equal to the engine's own is its column already.
            let others = plan
                .pdl_prefetch_sweep
                .iter()
                .copied()
                .filter(|&b| b != own || !own_setting.per_variant.is_empty());
            for sweep in std::iter::once(None).chain(others.map(Some)) {
                if !pdl_ok {
                    break;
                }
                let setting = sweep.map_or(own_setting.clone(), BudgetSetting::uniform);
                eng.set_budget_setting(&setting);
                match timed_from(&mut eng, ctx, plan, true) {
                    Ok((ms, f)) => {
                        match sweep {
                            None => point.graph_pdl_ms_per_token = Some(ms),
                            Some(b) => point.graph_pdl_prefetch.push((b, ms)),
                        }
                        let what = format!("ctx {ctx} graph + PDL, prefetch {setting}");
                        record_flags(f, &what, &mut notes, &mut invalid);
                    }
                    Err(e) => {
                        notes.push(format!(
                            "graph + PDL (prefetch {setting}) not timed from ctx {ctx} on: {e}"
                        ));
                        pdl_ok = false;
                    }
                }
            }
            eng.set_budget_setting(&own_setting);
            // One engine setting changed, the graph + PDL step timed, the setting restored: a
            // failure costs that column only.
            let mut variant =
                |eng: &mut GpuEngine, what: &str| match timed_from(eng, ctx, plan, true) {
                    Ok((ms, f)) => {
                        let label = format!("ctx {ctx} graph + PDL {what}");
                        record_flags(f, &label, &mut notes, &mut invalid);
                        Some(ms)
                    }
                    Err(e) => {
                        notes.push(format!("graph + PDL {what} not timed at ctx {ctx}: {e}"));
                        None
                    }
                };
            let own_glu = eng.fused_glu();
            if pdl_ok && own_glu && eng.set_fused_glu(false) {
                point.graph_pdl_silu_kernel_ms = variant(&mut eng, "with the silu kernel");
            }
            eng.set_fused_glu(own_glu);
            if pdl_ok {
                let (own_sampling, own_seed) = eng.sampling();
                eng.set_sampling(Sampling::new(false, 0.9, 0.8)?, 1);
                point.graph_pdl_top_p_ms = variant(&mut eng, "with top-p sampling");
                eng.set_sampling(own_sampling, own_seed);
            }
            if pdl_ok && eng.act_order_plain_linears() > 0 {
                let own = eng.act_order_plain();
                eng.set_act_order_plain(false);
                point.graph_pdl_act_order_own_ms =
                    variant(&mut eng, "with act-order on its own kernels");
                eng.set_act_order_plain(own);
            }
            if pdl_ok && eng.attn_prefetch_kv() {
                eng.set_attn_prefetch_kv(false);
                point.graph_pdl_attn_v4_ms =
                    variant(&mut eng, "with the attention's K/V prefetch off");
                eng.set_attn_prefetch_kv(true);
            }
            // An engine mode already set: the graph + PDL step at each of `budgets`, then the
            // engine's own budget back.
            let mut by_budget = |eng: &mut GpuEngine, budgets: &[u32], mode: &str| {
                let mut timed = Vec::new();
                for &b in budgets {
                    eng.set_budget_setting(&BudgetSetting::uniform(b));
                    if let Some(ms) = variant(eng, &format!("with {mode}, prefetch {b} B")) {
                        timed.push((b, ms));
                    }
                }
                eng.set_budget_setting(&own_setting);
                timed
            };
            if pdl_ok && !plan.v6_one_per_sm.is_empty() && eng.set_v6_one_block_per_sm(true) {
                point.graph_pdl_v6_one_per_sm =
                    by_budget(&mut eng, &plan.v6_one_per_sm, "v6 at one block per SM");
            }
            eng.set_v6_one_block_per_sm(false);
            if pdl_ok && !plan.small_plain.is_empty() {
                eng.set_small_ops_plain(true);
                point.graph_pdl_small_plain = by_budget(
                    &mut eng,
                    &plan.small_plain,
                    "the small kernels launched plain",
                );
                eng.set_small_ops_plain(false);
            }
            if pdl_ok && !plan.prefetch_variant.is_empty() {
                for (name, b) in &plan.prefetch_variant {
                    // The engine's own budgets, with this one variant's replaced.
                    let mut s = own_setting.clone();
                    s.per_variant.insert(name.clone(), *b);
                    eng.set_budget_setting(&s);
                    let what = format!("with {name} prefetching {b} B per block");
                    if let Some(ms) = variant(&mut eng, &what) {
                        point
                            .graph_pdl_prefetch_variant
                            .push((name.clone(), *b, ms));
                    }
                }
                eng.set_budget_setting(&own_setting);
            }
        }
        eng.set_pdl(false);
        points.push(point);
    }
    let mut profile = Vec::new();
    if plan.profile_steps > 0 {
        for &ctx in &plan.contexts {
            profile.push(profile_at(&mut eng, ctx, plan.profile_steps)?);
            let what = format!("ctx {ctx} profiled eager steps");
            record_flags(eng.flags()?, &what, &mut notes, &mut invalid);
        }
        notes.push(format!("profile: {} eager steps per context, each queued behind a kernel that holds the GPU (>= {} ms) with a CUDA event after every op, so ops run back to back on the GPU; the events themselves add a little per op", plan.profile_steps, PROFILE_HOLD_MS.0));
    }
    // The ablation after every other decode timing: its steps write meaningless rows into the
    // cache and the state, so the cache is refilled after it (the prefill below starts from 0).
    // Every class at the first context; at the last of the list (lab run's longest), the
    // attention alone (its share grows with the context, the rest of the step's does not).
    if plan.ablate {
        let all = ablations();
        if let Some((first, rest)) = points.split_first_mut() {
            ablate_at(&mut eng, plan, first, &all, pdl_ok, &mut notes)?;
            if let Some(last) = rest.last_mut() {
                let attention: Vec<_> = all
                    .into_iter()
                    .filter(|(_, s)| *s == SkipOps::attention_only())
                    .collect();
                ablate_at(&mut eng, plan, last, &attention, pdl_ok, &mut notes)?;
            }
        }
    }
    // Prefill last: it overwrites the cache rows it covers (the decode timings are done).
    let mut prefill = Vec::new();
    if !plan.prefill_lens.is_empty() {
        notes.push(format!("prefill: one prefill of N random token ids from position 0 after one untimed prefill of the same length, CUDA events around the whole call (chunks of {} rows; int4 paths, --prefill-int4 {}: {})", eng.prefill_chunk(), eng.prefill_int4().flag(), eng.prefill_int4_paths().join("; ")));
    }
    let vocab = plan.cfg.vocab_size as u64;
    for &n in &plan.prefill_lens {
        let toks: Vec<u32> = (0..n as u64)
            .map(|i| ((i * 2654435761 + plan.seed) % vocab) as u32)
            .collect();
        eng.time_prefill(&toks)?;
        let ms = eng.time_prefill(&toks)?;
        record_flags(
            eng.flags()?,
            &format!("prefill {n}"),
            &mut notes,
            &mut invalid,
        );
        prefill.push(prefill_point(&plan.cfg, n, ms));
    }
    // The persistent layers after everything else: a fault there would poison the context, and
    // must not cost the points measured above.
    let persistent_barriers = if plan.persistent {
        time_persistent(
            &mut eng,
            plan,
            pdl_ok,
            &mut points,
            &mut notes,
            &mut invalid,
        )
    } else {
        None
    };
    let pdl_timed = points.iter().any(|p| p.graph_pdl_ms_per_token.is_some());
    Ok(DecodeReport {
        prefill,
        prefill_chunk: eng.prefill_chunk(),
        prefill_paths: eng.prefill_int4_paths(),
        prefill_int4: eng.prefill_int4(),
        header: ReportHeader::new(&gpu.info, Some(*ceilings)),
        model: plan.cfg.name.clone(),
        config: plan.cfg.clone(),
        weights: eng.weights.desc.clone(),
        int4_kernel: if matches!(plan.kind, WeightKind::Fp16) {
            "-".into()
        } else {
            eng.int4_kernel()
        },
        fp16_backend: eng.fp16_backend,
        max_ctx,
        attn_chunk: DEFAULT_ATTN_CHUNK,
        bytes,
        ceiling_gbs: ceilings.read_gbs,
        points,
        vram: eng.vram()?,
        notes,
        profile,
        persistent_barriers,
        invalid,
        pdl_budget: pdl_timed.then(|| eng.budget_setting().clone()),
        pdl_budget_tuned: pdl_timed && eng.tuned_budget().is_some(),
    })
}

const GIB: f64 = (1u64 << 30) as f64;

/// decode.json (all runs), decode.md (tables), and three SVG plots in `dir`.
pub fn write_decode_report(dir: &Path, runs: &[DecodeReport]) -> Result<()> {
    if runs.is_empty() {
        return Err(LabError::invalid("decode report", "no runs to write"));
    }
    crate::util::write_json_atomic(&dir.join("decode.json"), &runs)?;
    write_decode_views(dir, runs)
}

/// decode.md and the plots from recorded runs, leaving decode.json untouched (`lab report`
/// regenerates these without a GPU). Every number comes from `runs`.
pub fn write_decode_views(dir: &Path, runs: &[DecodeReport]) -> Result<()> {
    let first = runs
        .first()
        .ok_or_else(|| LabError::invalid("decode report", "no runs to write"))?;
    let mut md = format!("# Decode (GPU engine)\n\n{}\n", first.header.markdown());
    let mut stale: Vec<String> = runs.iter().filter_map(|r| r.header.stale_note()).collect();
    stale.dedup();
    for note in stale {
        md.push_str(&format!("\n{note}\n"));
    }
    md.push_str("\nRoofline: bytes/token = linear weights (int4 codes + scales + zeros [+ act-order permutation], or fp16) + fp16 lm_head + one embedding row + RMSNorm gains + KV cache read (L x 2 x ctx x kv_dim x 2 B); roofline tok/s = measured read ceiling / bytes/token, at the mean context of the timed steps.\n");
    for r in runs {
        md.push_str(&format!(
            "\n## {}\n\n- weights: {} ({:.2} GB linear, {:.2} GB lm_head), {}\n- int4 kernel: {}; fp16 linears: {}\n- KV cache: {} positions, attention chunk {}; read ceiling {:.0} GB/s\n\n",
            r.label(),
            r.weights.source,
            r.weights.linear_bytes as f64 / 1e9,
            r.weights.lm_head_bytes as f64 / 1e9,
            if r.weights.fused { "q|k|v and gate|up fused" } else { "unfused linears" },
            r.int4_kernel,
            r.fp16_backend.map_or("none".to_string(), |b| format!("{b:?}")),
            r.max_ctx,
            r.attn_chunk,
            r.ceiling_gbs
        ));
        if !r.invalid.is_empty() {
            md.push_str(&format!(
                "**INVALID timings in this run** (the steps ended with a state flag, so these are not timings of a valid step): {}\n\n",
                r.invalid.join("; ")
            ));
        }
        let pdl = r.points.iter().any(|p| p.graph_pdl_ms_per_token.is_some());
        let persistent = r.points.iter().any(|p| p.graph_persistent_ms.is_some());
        let persistent_sweep = r
            .points
            .iter()
            .any(|p| !p.graph_persistent_prefetch.is_empty());
        let sweep = r.points.iter().any(|p| !p.graph_pdl_prefetch.is_empty());
        let one_per_sm = r
            .points
            .iter()
            .any(|p| !p.graph_pdl_v6_one_per_sm.is_empty());
        let small_plain = r.points.iter().any(|p| !p.graph_pdl_small_plain.is_empty());
        let by_variant = r
            .points
            .iter()
            .any(|p| !p.graph_pdl_prefetch_variant.is_empty());
        // The single-value graph + PDL columns, where any point of the run has them.
        let variants: Vec<&VariantColumn> = PDL_VARIANT_COLUMNS
            .iter()
            .filter(|(_, value)| r.points.iter().any(|p| value(p).is_some()))
            .collect();
        let rows: Vec<Vec<String>> = r
            .points
            .iter()
            .map(|p| {
                let mut row = vec![
                    p.ctx.to_string(),
                    format!("{:.3}", p.graph_ms_per_token),
                    format!("{:.1}", p.graph_tokens_per_s),
                    format!("{:.3}", p.eager_ms_per_token),
                    format!("{:.1}", p.eager_tokens_per_s),
                    format!("{:.3}", p.bytes_per_token / 1e9),
                    format!("{:.0}", p.achieved_gbs),
                    format!("{:.1}", p.roofline_tokens_per_s),
                    format!("{:.1}%", p.roofline_pct),
                ];
                let with_pct = |ms: Option<f64>| {
                    ms.map_or("-".into(), |m| {
                        format!("{m:.3} ({:.1}%)", 100.0 * 1e3 / m / p.roofline_tokens_per_s)
                    })
                };
                if pdl {
                    row.push(with_pct(p.graph_pdl_ms_per_token));
                }
                if persistent {
                    let eager = if p.persistent_eager { " eager" } else { "" };
                    row.push(with_pct(p.graph_persistent_ms) + eager);
                }
                if persistent_sweep {
                    row.push(budget_cells(&p.graph_persistent_prefetch));
                }
                if sweep {
                    row.push(budget_cells(&p.graph_pdl_prefetch));
                }
                for (_, value) in &variants {
                    row.push(value(p).map_or("-".into(), |m| format!("{m:.3}")));
                }
                if one_per_sm {
                    row.push(budget_cells(&p.graph_pdl_v6_one_per_sm));
                }
                if small_plain {
                    row.push(budget_cells(&p.graph_pdl_small_plain));
                }
                if by_variant {
                    row.push(variant_budget_cells(&p.graph_pdl_prefetch_variant));
                }
                row
            })
            .collect();
        let mut head = vec![
            "ctx",
            "graph ms/tok",
            "graph tok/s",
            "eager ms/tok",
            "eager tok/s",
            "GB/token",
            "GB/s",
            "roofline tok/s",
            "% roofline",
        ];
        if pdl {
            head.push("graph + PDL ms/tok (% roofline)");
        }
        if persistent {
            head.push("graph, persistent layers ms/tok (% roofline)");
        }
        if persistent_sweep {
            head.push("persistent layers ms/tok at other prefetch budgets");
        }
        if sweep {
            head.push("graph + PDL ms/tok at other prefetch budgets");
        }
        head.extend(variants.iter().map(|(h, _)| *h));
        if one_per_sm {
            head.push("graph + PDL ms/tok, v6 at one block per SM, by prefetch budget");
        }
        if small_plain {
            head.push("graph + PDL ms/tok, small kernels launched plain, by prefetch budget");
        }
        if by_variant {
            head.push("graph + PDL ms/tok, one GEMV variant at another prefetch budget (the rest at the PDL column's)");
        }
        md.push_str(&table(&head, &rows));
        if !r.prefill.is_empty() {
            md.push_str(&format!(
                "\nPrefill (chunks of {} rows, int4 paths in the notes below; timed separately from decode):\n\n",
                r.prefill_chunk
            ));
            let rows: Vec<Vec<String>> = r
                .prefill
                .iter()
                .map(|p| {
                    vec![
                        p.tokens.to_string(),
                        format!("{:.2}", p.ms),
                        format!("{:.0}", p.tokens_per_s),
                        format!("{:.1}", p.linear_tflops),
                    ]
                })
                .collect();
            md.push_str(&table(
                &["prompt tokens", "ms", "prefill tok/s", "linear TFLOP/s"],
                &rows,
            ));
        }
        if !r.profile.is_empty() {
            md.push_str("\nWhere a step goes (eager step queued behind a GPU hold, CUDA event after every op; GB/s = bytes the op streams: weights, KV rows):\n\n");
            let graph: Vec<Option<f64>> = r
                .profile
                .iter()
                .map(|p| {
                    r.points
                        .iter()
                        .find(|c| c.ctx == p.ctx)
                        .map(|c| c.graph_ms_per_token)
                })
                .collect();
            md.push_str(&step_profile::markdown(&r.profile, &graph));
            if r.profile.iter().any(|p| p.host_bound) {
                md.push_str("\n(host-bound at the longest hold: the figures include host gaps)\n");
            }
        }
        for p in r.points.iter().filter(|p| !p.ablation.is_empty()) {
            md.push_str(&ablation_markdown(p, r.ceiling_gbs));
        }
        let v = &r.vram;
        let g = |b: u64| format!("{:.2}", b as f64 / GIB);
        // The planner beside the measurement: its prefill line only when this engine allocated
        // one (r.prefill_chunk is the engine's own chunk, 0 when it had none).
        let mut spec = PlanSpec::of_engine_run(
            r.config.clone(),
            r.weights.kind,
            r.max_ctx as u64,
            r.prefill_chunk as u64,
        );
        spec.prefill_int4 = planned_prefill_int4(r);
        // fp16 linears made a cuBLAS handle only on the cuBLAS backend (the engine records it).
        spec.fp16_cublas = r.fp16_backend != Some(Fp16Backend::Lab);
        let plan = spec.plan().ok();
        let pl = |f: fn(&Plan) -> u64| plan.as_ref().map_or("-".into(), |p| g(f(p)));
        md.push_str("\nVRAM (GiB): driver = drop in cuMemGetInfo free memory per phase; engine = bytes requested; planner = `lab plan`'s prediction for this run (context: its allowance; peak: its total).\n\n");
        md.push_str(&table(
            &["part", "driver", "engine", "planner"],
            &[
                vec![
                    "CUDA context + modules (+ other residents)".into(),
                    g(v.context_bytes),
                    "-".into(),
                    pl(|p| p.cuda_context_bytes),
                ],
                vec![
                    "weights".into(),
                    g(v.weights_driver_bytes),
                    g(v.weights_bytes),
                    pl(|p| p.weights_bytes),
                ],
                vec![
                    format!("KV cache ({} positions)", r.max_ctx),
                    g(v.kv_driver_bytes),
                    g(v.kv_bytes),
                    pl(|p| p.kv_cache_bytes),
                ],
                vec![
                    "workspace".into(),
                    g(v.workspace_driver_bytes),
                    g(v.workspace_bytes),
                    pl(|p| p.workspace_bytes),
                ],
                vec![
                    format!("prefill workspace ({} rows)", r.prefill_chunk),
                    g(v.prefill_driver_bytes),
                    g(v.prefill_bytes),
                    pl(|p| p.prefill_bytes),
                ],
                vec![
                    "peak used (all of the card's used memory)".into(),
                    g(v.peak_used_bytes),
                    "-".into(),
                    pl(|p| p.total_bytes),
                ],
            ],
        ));
        match &plan {
            Some(p) => {
                md.push_str(&format!(
                    "\nPlanner: `{}`. Prefill workspace, exact bytes: engine {}, planner {}{}.\n",
                    spec.command(),
                    v.prefill_bytes,
                    p.prefill_bytes,
                    if p.prefill_bytes == v.prefill_bytes {
                        " (equal)"
                    } else {
                        " (DIFFER: the planner sizes an sm_80+ card and fused q|k|v, gate|up)"
                    }
                ));
            }
            None => md.push_str("\nPlanner: no prediction for these weights.\n"),
        }
        for n in &r.notes {
            md.push_str(&format!("\n- {n}"));
        }
        md.push('\n');
    }
    let skipped = read_skipped_runs(dir)?;
    if !skipped.is_empty() {
        md.push_str("\n## Not run on this GPU (the engine does not fit its memory)\n\n");
        for k in &skipped {
            md.push_str(&format!("- {}: {}\n", k.run, k.reason));
        }
    }
    crate::util::write_atomic(&dir.join("decode.md"), md.as_bytes())?;

    let series = |f: &dyn Fn(&ContextPoint) -> f64, suffix: &str| -> Vec<Series> {
        runs.iter()
            .map(|r| Series {
                label: format!("{}{suffix}", r.label()),
                points: r.points.iter().map(|p| (p.ctx as f64, f(p))).collect(),
                reference: false,
            })
            .collect()
    };
    let mut tps = series(&|p| p.graph_tokens_per_s, " graph");
    tps.extend(series(&|p| p.eager_tokens_per_s, " eager"));
    for r in runs {
        tps.push(Series {
            label: format!("{} roofline", r.label()),
            points: r
                .points
                .iter()
                .map(|p| (p.ctx as f64, p.roofline_tokens_per_s))
                .collect(),
            reference: true,
        });
    }
    line_chart(
        &dir.join("decode-tokens-per-s.svg"),
        "Decode tokens/s vs context (batch 1)",
        "context (cached positions)",
        "tokens/s",
        &tps,
    )?;
    line_chart(
        &dir.join("decode-roofline.svg"),
        "Decode: % of the bandwidth roofline (graph)",
        "context (cached positions)",
        "% of roofline",
        &series(&|p| p.roofline_pct, ""),
    )?;
    // VRAM vs context: context + weights + workspace fixed, KV growing per position; the
    // engine's own bytes for each part, the driver's context reading.
    let mut vram = Vec::new();
    for r in runs {
        let fixed = (r.vram.context_bytes
            + r.vram.weights_bytes
            + r.vram.workspace_bytes
            + r.vram.prefill_bytes) as f64;
        let kv_pos = r.vram.kv_bytes as f64 / r.max_ctx.max(1) as f64;
        let xs = [0usize, 512, 1024, 2048, 4096];
        vram.push(Series {
            label: format!("{} total", r.label()),
            points: xs
                .iter()
                .map(|&c| (c as f64, (fixed + kv_pos * c as f64) / GIB))
                .collect(),
            reference: false,
        });
        vram.push(Series {
            label: format!("{} weights", r.label()),
            points: xs
                .iter()
                .map(|&c| (c as f64, r.vram.weights_bytes as f64 / GIB))
                .collect(),
            reference: true,
        });
    }
    line_chart(
        &dir.join("decode-vram.svg"),
        "VRAM by part vs context (context + weights + workspace + KV)",
        "context (positions)",
        "GiB",
        &vram,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ablation_leaves_out_each_class_once_and_counts_its_bytes() {
        let a = ablations();
        for (i, (_, x)) in a.iter().enumerate() {
            assert!(x.any());
            for (_, y) in &a[i + 1..] {
                assert_ne!(x, y, "two settings leave out the same ops");
            }
        }
        let class = [26, 9, 46, 23];
        let bytes: Vec<u64> = a.iter().map(|(_, s)| skipped_bytes(s, &class)).collect();
        // norms, attention, silu read no weights; each GEMV class its own; all GEMVs the sum.
        assert_eq!(bytes, vec![0, 0, 0, 26, 9, 46, 23, 0, 104]);
    }

    #[test]
    fn the_ablation_table_says_what_each_class_adds_and_how_fast_its_bytes_went() {
        let mut p = context_point(
            &BytesPerToken {
                linear_bytes: 1,
                lm_head_bytes: 0,
                embed_row_bytes: 0,
                norm_bytes: 0,
                kv_bytes_per_position: 0,
            },
            3000.0,
            128,
            16,
            2.40,
            2.6,
        );
        let rows = |pdl: bool| {
            vec![
                Ablation {
                    left_out: "both RMSNorms of every layer".into(),
                    graph_ms: 2.20,
                    graph_pdl_ms: pdl.then_some(2.10),
                    weight_bytes: 0,
                },
                Ablation {
                    left_out: "gate|up".into(),
                    graph_ms: 1.60,
                    // 1.5e9 bytes over 0.75 ms = 2000 GB/s = 66.7% of 3000.
                    graph_pdl_ms: pdl.then_some(1.50),
                    weight_bytes: 1_500_000_000,
                },
            ]
        };
        // Graph only (no PDL on this card): the bytes over the graph's saved time (0.8 ms).
        p.ablation = rows(false);
        let md = ablation_markdown(&p, 3000.0);
        assert!(!md.contains("graph + PDL"), "{md}");
        assert!(
            md.contains("| both RMSNorms of every layer | 2.200 | 0.200 | 8.3% | - | - | - |"),
            "{md}"
        );
        assert!(
            md.contains("| gate|up | 1.600 | 0.800 | 33.3% | 1500.0 | 1875 | 62.5% |"),
            "{md}"
        );
        // With PDL: both columns, the GB/s from the graph + PDL's saved time.
        p.graph_pdl_ms_per_token = Some(2.25);
        p.ablation = rows(true);
        let md = ablation_markdown(&p, 3000.0);
        assert!(
            md.contains("| both RMSNorms of every layer | 2.200 | 0.200 | 8.3% | 2.100 | 0.150 | 6.7% | - | - | - |"),
            "{md}"
        );
        assert!(
            md.contains("| gate|up | 1.600 | 0.800 | 33.3% | 1.500 | 0.750 | 33.3% | 1500.0 | 2000 | 66.7% |"),
            "{md}"
        );
    }

    use crate::model::step_profile::Mark;

    fn int4(act_order: bool) -> WeightKind {
        WeightKind::Int4 {
            group: 128,
            act_order,
            sym: false,
        }
    }

    #[test]
    fn flagged_steps_are_noted_and_listed_as_invalid_and_clean_ones_are_not() {
        let (mut notes, mut invalid) = (Vec::new(), Vec::new());
        record_flags(0, "ctx 128 graph", &mut notes, &mut invalid);
        assert!(notes.is_empty() && invalid.is_empty());
        record_flags(4, "ctx 512 graph", &mut notes, &mut invalid);
        assert_eq!(invalid.len(), 1);
        assert_eq!(notes, invalid);
        assert!(invalid[0].starts_with("ctx 512 graph: step state flags 0x4"));
        assert!(invalid[0].contains("NaN") && invalid[0].contains("INVALID"));
        // Reports recorded before the field load with none, and a clean report writes none.
        let r = recorded(
            ModelConfig::vicuna_7b(),
            WeightKind::Fp16,
            &[(128, 10.0, 11.0)],
        );
        let json = serde_json::to_string(&r).unwrap();
        assert!(!json.contains("\"invalid\""));
        let back: DecodeReport = serde_json::from_str(&json).unwrap();
        assert!(back.invalid.is_empty());
        // decode.md says so under the run's heading.
        let dir = std::env::temp_dir().join(format!("lab-invalid-{}", std::process::id()));
        let mut bad = r.clone();
        bad.invalid = invalid.clone();
        write_decode_report(&dir, &[r, bad]).unwrap();
        let md = std::fs::read_to_string(dir.join("decode.md")).unwrap();
        assert_eq!(
            md.matches("**INVALID timings in this run**").count(),
            1,
            "{md}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bytes_per_token_matches_the_anchor_table() {
        // anchors.md: 7B int4 g128 (4.156 bits with zeros) 3.63 GB at ctx 0, 4.70 GB at 2048;
        // 13B 6.92 / 8.60 GB; 7B fp16 13.5 GB.
        let cases = [
            (ModelConfig::vicuna_7b(), int4(false), 0.0, 3.63e9),
            (ModelConfig::vicuna_7b(), int4(false), 2048.0, 4.70e9),
            (ModelConfig::vicuna_13b(), int4(false), 0.0, 6.92e9),
            (ModelConfig::vicuna_13b(), int4(false), 2048.0, 8.60e9),
            // The anchor's fp16 figure is the whole model (6.74 B params x 2 B) and so counts the
            // full embedding table (0.26 GB) that a decode step does not read: 13.5 - 0.26.
            (
                ModelConfig::vicuna_7b(),
                WeightKind::Fp16,
                0.0,
                13.5e9 - 32000.0 * 4096.0 * 2.0,
            ),
        ];
        for (cfg, kind, ctx, want) in cases {
            let b = BytesPerToken::new(&cfg, &expected_weights(&cfg, kind).unwrap());
            let got = b.at(ctx);
            assert!(
                (got / want - 1.0).abs() < 0.01,
                "{} {kind:?} ctx {ctx}: {got:.4e} vs {want:.4e}",
                cfg.name
            );
        }
        // KV: 7B reads 32 x 2 x 4096 x 2 B = 512 KiB per cached position.
        let b = BytesPerToken::new(
            &ModelConfig::vicuna_7b(),
            &expected_weights(&ModelConfig::vicuna_7b(), int4(false)).unwrap(),
        );
        assert_eq!(b.kv_bytes_per_position, 512 * 1024);
    }

    #[test]
    fn act_order_adds_the_permutation_and_sym_drops_the_zeros() {
        let cfg = ModelConfig::vicuna_7b();
        let base = expected_weights(&cfg, int4(false)).unwrap().linear_bytes;
        let act = expected_weights(&cfg, int4(true)).unwrap().linear_bytes;
        // One i32 per input row for each of the 4 launches per layer: (3 x 4096 + 11008) x 4 B.
        assert_eq!(act - base, 32 * (3 * 4096 + 11008) * 4);
        let sym = expected_weights(
            &cfg,
            WeightKind::Int4 {
                group: 128,
                act_order: false,
                sym: true,
            },
        )
        .unwrap()
        .linear_bytes;
        let zeros: u64 = 32
            * [
                (4096u64, 12288u64),
                (4096, 4096),
                (4096, 22016),
                (11008, 4096),
            ]
            .iter()
            .map(|(k, n)| k / 128 * n / 2)
            .sum::<u64>();
        assert_eq!(base - sym, zeros);
        assert!(expected_weights(
            &cfg,
            WeightKind::Int4 {
                group: 96,
                act_order: false,
                sym: false
            }
        )
        .is_err());
    }

    #[test]
    fn prefill_point_counts_the_linear_flops() {
        let cfg = ModelConfig::vicuna_7b();
        // 7B linears: 32 x (4 x 4096^2 + 3 x 4096 x 11008) = 6.48e9 MACs per token.
        assert_eq!(
            linear_macs_per_token(&cfg),
            32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
        );
        let p = prefill_point(&cfg, 512, 40.0);
        assert!((p.tokens_per_s - 12800.0).abs() < 1e-9);
        let want = 2.0 * 6_476_005_376.0 * 12800.0 / 1e12;
        assert!((p.linear_tflops - want).abs() < 1e-9, "{}", p.linear_tflops);
        assert_eq!(prefill_point(&cfg, 8, 0.0).tokens_per_s, 0.0);
    }

    #[test]
    fn reports_recorded_before_prefill_still_load() {
        let r = recorded(ModelConfig::vicuna_7b(), int4(false), &[(128, 1.6, 2.9)]);
        let mut v = serde_json::to_value(&r).unwrap();
        let o = v.as_object_mut().unwrap();
        for k in ["prefill", "prefill_chunk", "prefill_paths"] {
            o.remove(k);
        }
        let back: DecodeReport = serde_json::from_value(v).unwrap();
        assert!(back.prefill.is_empty() && back.prefill_chunk == 0);
        let dir = tempfile::tempdir().unwrap();
        write_decode_views(dir.path(), &[back]).unwrap();
        let md = std::fs::read_to_string(dir.path().join("decode.md")).unwrap();
        assert!(!md.contains("Prefill (GEMM"), "{md}");
    }

    #[test]
    fn context_point_roofline_arithmetic() {
        let b = BytesPerToken {
            linear_bytes: 1_000_000_000,
            lm_head_bytes: 0,
            embed_row_bytes: 0,
            norm_bytes: 0,
            kv_bytes_per_position: 1_000_000,
        };
        // 31 steps from ctx 100: mean positions 116 -> 1.116 GB per token; 2000 GB/s -> 1792 tok/s.
        let p = context_point(&b, 2000.0, 100, 31, 1.0, 2.0);
        assert_eq!(p.mean_positions, 116.0);
        assert!((p.bytes_per_token - 1.116e9).abs() < 1.0);
        assert!((p.roofline_tokens_per_s - 2000e9 / 1.116e9).abs() < 1e-6);
        assert_eq!(
            (p.graph_tokens_per_s, p.eager_tokens_per_s),
            (1000.0, 500.0)
        );
        assert!((p.roofline_pct - 100.0 * 1000.0 / p.roofline_tokens_per_s).abs() < 1e-9);
        assert!((p.achieved_gbs - 1116.0).abs() < 1e-6);
    }

    #[test]
    fn a_recorded_auto_without_a_dequant_path_is_planned_as_the_gemm_family() {
        let kind = WeightKind::Int4 {
            group: 128,
            act_order: false,
            sym: false,
        };
        let mut r = recorded(ModelConfig::vicuna_7b(), kind, &[(128, 2.0, 2.2)]);
        r.prefill_int4 = PrefillInt4::Auto;
        r.prefill_chunk = 512;
        // Run 10 recorded "auto" with GEMM paths only (auto had no dequant then).
        r.prefill_paths = vec!["4096 x 12288: GemmV2".into()];
        assert_eq!(planned_prefill_int4(&r), PrefillInt4::GemmV2);
        r.prefill_paths = vec!["4096 x 12288: GemmV2 (2-255 rows), Dequant (256-512 rows)".into()];
        assert_eq!(planned_prefill_int4(&r), PrefillInt4::Auto);
        r.prefill_int4 = PrefillInt4::Dequant;
        assert_eq!(planned_prefill_int4(&r), PrefillInt4::Dequant);
        r.prefill_int4 = PrefillInt4::GemmV1;
        r.prefill_paths.clear();
        assert_eq!(planned_prefill_int4(&r), PrefillInt4::GemmV1);
        // No prefill: nothing to plan differently, the command keeps auto (no flag).
        r.prefill_int4 = PrefillInt4::Auto;
        r.prefill_chunk = 0;
        assert_eq!(planned_prefill_int4(&r), PrefillInt4::Auto);
    }

    pub(crate) fn recorded(
        model: ModelConfig,
        kind: WeightKind,
        ms: &[(usize, f64, f64)],
    ) -> DecodeReport {
        let device = crate::cuda::device::test_device("NVIDIA H100 80GB HBM3", (9, 0), 132);
        let ceil = Ceilings {
            copy_gbs: 3000.0,
            copy_kernel_gbs: 2950.0,
            memcpy_dtod_gbs: 3000.0,
            read_gbs: 3100.0,
            buffer_bytes: 1 << 30,
            read_by_size: Default::default(),
        };
        let weights = expected_weights(&model, kind).unwrap();
        let bytes = BytesPerToken::new(&model, &weights);
        DecodeReport {
            header: ReportHeader::new(&device, Some(ceil)),
            model: model.name.clone(),
            weights: weights.clone(),
            int4_kernel: "test".into(),
            fp16_backend: None,
            max_ctx: 2100,
            attn_chunk: 128,
            bytes,
            ceiling_gbs: ceil.read_gbs,
            points: ms
                .iter()
                .map(|&(c, g, e)| context_point(&bytes, ceil.read_gbs, c, 32, g, e))
                .collect(),
            vram: VramReport {
                total_bytes: 80 << 30,
                context_bytes: 600 << 20,
                weights_driver_bytes: weights.total_bytes() + (8 << 20),
                kv_driver_bytes: 1 << 30,
                workspace_driver_bytes: 40 << 20,
                weights_bytes: weights.total_bytes(),
                kv_bytes: 1 << 30,
                workspace_bytes: 35 << 20,
                prefill_driver_bytes: 118 << 20,
                prefill_bytes: 115 << 20,
                peak_used_bytes: 6 << 30,
            },
            prefill: [(128, 12.0), (512, 40.0)]
                .iter()
                .map(|&(n, ms)| prefill_point(&model, n, ms))
                .collect(),
            prefill_chunk: 512,
            prefill_paths: vec!["4096 x 12288: GemmV2".into()],
            prefill_int4: PrefillInt4::Auto,
            notes: vec!["recorded by hand for the report test".into()],
            profile: vec![step_profile::aggregate(
                128,
                20.0,
                false,
                &[vec![
                    Mark {
                        op: "qkv_proj",
                        us: 600.0,
                        bytes: 900_000_000,
                    },
                    Mark {
                        op: "lm_head",
                        us: 100.0,
                        bytes: 262_144_000,
                    },
                ]],
            )],
            persistent_barriers: None,
            invalid: Vec::new(),
            pdl_budget: None,
            pdl_budget_tuned: false,
            config: model,
        }
    }

    /// The plan `lab run` gives `lab decode` for one model and weights form.
    fn lab_run_plan(cfg: ModelConfig, kind: WeightKind) -> BenchPlan {
        BenchPlan {
            cfg,
            kind,
            contexts: vec![128, 512, 1024, 2048],
            steps: 32,
            warmup: 4,
            seed: 1,
            fp16_backend: Fp16Backend::Cublas,
            int4: crate::model::gpu_engine::Int4Kernel::Engine,
            prefill_lens: vec![128, 512, 1024, 2048],
            prefill_chunk: 512,
            prefill_int4: PrefillInt4::Auto,
            dequant_slice_elems: crate::model::gpu_engine::DEQUANT_SLICE_ELEMS,
            profile_steps: 3,
            pdl: true,
            pdl_prefetch_own: None,
            pdl_prefetch_sweep: Vec::new(),
            persistent: false,
            persistent_prefetch: Vec::new(),
            v6_one_per_sm: Vec::new(),
            small_plain: Vec::new(),
            prefetch_variant: Vec::new(),
            ablate: true,
        }
    }

    #[test]
    fn a_run_that_does_not_fit_the_card_is_named_with_what_it_needs() {
        // Run 17 on the H100 (decode.json): each run's driver peak less its CUDA context, against
        // what the fit check plans for the same run (2085 positions, 512-row prefill).
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("reports/nvidia-h100-80gb-hbm3/decode.json");
        let runs: Vec<DecodeReport> =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut checked = 0;
        for r in runs.iter().filter(|r| !r.int4_kernel.contains("v6")) {
            let plan = lab_run_plan(r.config.clone(), r.weights.kind);
            assert_eq!(bench_max_ctx(&plan).unwrap(), r.max_ctx, "{}", r.label());
            let needs = bench_needs_bytes(&plan).unwrap() as f64;
            let measured = (r.vram.peak_used_bytes - r.vram.context_bytes) as f64;
            assert!(
                (needs / measured - 1.0).abs() < 0.03,
                "{}: planned {needs} vs measured {measured}",
                r.label()
            );
            checked += 1;
        }
        assert_eq!(checked, 6, "7B / 13B: int4, act-order, fp16");
        // A 24 GB card (~23 GiB free after the context): 13B int4 runs, 13B fp16 is skipped.
        let free = 23 << 30;
        let q4 = lab_run_plan(ModelConfig::vicuna_13b(), int4(false));
        assert!(does_not_fit(bench_needs_bytes(&q4).unwrap(), free).is_none());
        let fp16 = lab_run_plan(ModelConfig::vicuna_13b(), WeightKind::Fp16);
        let why = does_not_fit(bench_needs_bytes(&fp16).unwrap(), free).expect("26 GiB on 23");
        assert!(why.contains("GiB free") && why.contains("23.00"), "{why}");
        // The margin: exactly the need is not enough.
        assert!(does_not_fit(10 << 30, 10 << 30).is_some());
        assert!(does_not_fit(10 << 30, 11 << 30).is_none());
        // Running out of memory anyway is the card's size only this close; else a failure.
        assert!(near_the_limit(10 << 30, 10_900 << 20));
        assert!(!near_the_limit(10 << 30, 12 << 30));
        // A skipped run is named as decode.md heads a run of the same kernel.
        let r = recorded(ModelConfig::vicuna_13b(), int4(false), &[(128, 3.6, 4.0)]);
        let auto = "auto (tuned config, 140 keys)";
        assert_eq!(
            run_label("vicuna-13b", int4(false), auto),
            DecodeReport {
                int4_kernel: auto.into(),
                ..r
            }
            .label()
        );
        assert_eq!(
            run_label("vicuna-13b", int4(false), auto),
            "vicuna-13b int4 g128 [auto]"
        );
    }

    #[test]
    fn decode_md_has_an_ablation_table_for_each_context_that_has_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = recorded(
            ModelConfig::vicuna_7b(),
            int4(false),
            &[(128, 2.25, 2.5), (512, 2.3, 2.6), (2048, 2.6, 2.9)],
        );
        let row = |what: &str, ms: f64| Ablation {
            left_out: what.into(),
            graph_ms: ms,
            graph_pdl_ms: None,
            weight_bytes: 0,
        };
        r.points[0].ablation = vec![
            row("both RMSNorms of every layer", 2.1),
            row("the attention", 2.0),
        ];
        r.points[2].ablation = vec![row("the attention", 2.1)];
        write_decode_report(dir.path(), &[r]).unwrap();
        let md = std::fs::read_to_string(dir.path().join("decode.md")).unwrap();
        assert!(md.contains("Where the step goes (ctx 128:"), "{md}");
        assert!(md.contains("Where the step goes (ctx 2048:"), "{md}");
        assert!(!md.contains("Where the step goes (ctx 512:"), "{md}");
        assert!(
            md.contains("| the attention | 2.100 | 0.500 | 19.2% |"),
            "{md}"
        );
    }

    #[test]
    fn skipped_runs_are_listed_in_decode_md_and_a_clean_run_removes_the_old_list() {
        let dir = tempfile::tempdir().unwrap();
        let runs = vec![recorded(
            ModelConfig::vicuna_7b(),
            int4(false),
            &[(128, 1.61, 2.9)],
        )];
        let skipped = vec![SkippedRun {
            run: "vicuna-13b fp16".into(),
            reason: "needs 25.6 GiB, this GPU has 23.0 GiB free".into(),
        }];
        write_skipped_runs(dir.path(), &skipped).unwrap();
        write_decode_report(dir.path(), &runs).unwrap();
        let md = std::fs::read_to_string(dir.path().join("decode.md")).unwrap();
        assert!(
            md.contains("## Not run on this GPU")
                && md.contains("- vicuna-13b fp16: needs 25.6 GiB, this GPU has 23.0 GiB free"),
            "{md}"
        );
        assert_eq!(read_skipped_runs(dir.path()).unwrap(), skipped);
        // The next bench skipped nothing: the list goes, and so does the section.
        write_skipped_runs(dir.path(), &[]).unwrap();
        write_decode_report(dir.path(), &runs).unwrap();
        let md = std::fs::read_to_string(dir.path().join("decode.md")).unwrap();
        assert!(!md.contains("Not run on this GPU"), "{md}");
        write_skipped_runs(dir.path(), &[]).unwrap();
        // A damaged list is an error naming the file, not an empty list.
        std::fs::write(dir.path().join(SKIPPED_FILE), "[{").unwrap();
        let e = read_skipped_runs(dir.path()).unwrap_err().to_string();
        assert!(e.contains(SKIPPED_FILE), "{e}");
    }

    #[test]
    fn report_from_a_recorded_run_has_every_file_and_number() {
        let dir = tempfile::tempdir().unwrap();
        let runs = vec![
            recorded(
                ModelConfig::vicuna_7b(),
                int4(false),
                &[
                    (128, 1.61, 2.9),
                    (512, 1.75, 3.0),
                    (1024, 1.9, 3.1),
                    (2048, 2.2, 3.3),
                ],
            ),
            recorded(
                ModelConfig::vicuna_7b(),
                WeightKind::Fp16,
                &[
                    (128, 5.2, 6.0),
                    (512, 5.4, 6.2),
                    (1024, 5.6, 6.3),
                    (2048, 6.0, 6.5),
                ],
            ),
        ];
        let mut runs = runs;
        runs[0].points[0].graph_pdl_ms_per_token = Some(1.5);
        runs[0].points[0].graph_pdl_prefetch = vec![(0, 1.55), (65536, 1.45)];
        runs[0].points[0].graph_pdl_silu_kernel_ms = Some(1.525);
        runs[0].points[0].graph_pdl_top_p_ms = Some(1.52);
        runs[0].points[0].graph_pdl_attn_v4_ms = Some(1.51);
        runs[0].points[0].graph_pdl_v6_one_per_sm = vec![(32768, 1.48), (262144, 1.41)];
        runs[0].points[0].graph_pdl_small_plain = vec![(32768, 1.47), (131072, 1.43)];
        runs[0].points[0].graph_pdl_prefetch_variant = vec![("gemv_v2_vec".into(), 16384, 1.46)];
        runs[0].points[0].graph_persistent_ms = Some(1.2);
        runs[0].points[0].graph_persistent_prefetch = vec![(0, 1.3), (131072, 1.25)];
        // The fp16 run as recorded before the GEMM prefill: no prefill chunk, no prefill bytes.
        runs[1].prefill.clear();
        runs[1].prefill_chunk = 0;
        runs[1].vram.prefill_bytes = 0;
        runs[1].vram.prefill_driver_bytes = 0;
        write_decode_report(dir.path(), &runs).unwrap();
        let md = std::fs::read_to_string(dir.path().join("decode.md")).unwrap();
        // The planner beside the measurement, for the same model, weights, 2100 positions and
        // the prefill chunk the engine allocated: 512 rows for the int4 run (the hand-recorded
        // 115 MiB is not the engine's exact sizing, so the report says they differ), none for
        // the fp16 run, whose planned total then has no prefill in it.
        let gib = |b: u64| format!("{:.2}", b as f64 / GIB);
        // The recorded int4 run lists no dequant path, so it is planned as the GEMM family.
        let mut s0 = PlanSpec::of_engine_run(ModelConfig::vicuna_7b(), int4(false), 2100, 512);
        s0.prefill_int4 = PrefillInt4::GemmV2;
        let p0 = s0.plan().unwrap();
        assert!(
            md.contains(&format!(
                "| prefill workspace (512 rows) | {} | {} | {} |",
                gib(118 << 20),
                gib(115 << 20),
                gib(p0.prefill_bytes)
            )),
            "{md}"
        );
        assert!(md.contains(&format!(
            "Planner: `lab plan --model vicuna-7b --group 128 --ctx 2100 --prefill-chunk 512 --prefill-int4 v2`. Prefill workspace, exact bytes: engine {}, planner {} (DIFFER",
            115u64 << 20,
            p0.prefill_bytes
        )), "{md}");
        let p1 = PlanSpec::of_engine_run(ModelConfig::vicuna_7b(), WeightKind::Fp16, 2100, 0)
            .plan()
            .unwrap();
        assert_eq!(p1.prefill_bytes, 0);
        assert!(md.contains(
            "Planner: `lab plan --model vicuna-7b --dtype fp16 --ctx 2100 --prefill-chunk 0`. Prefill workspace, exact bytes: engine 0, planner 0 (equal)."
        ), "{md}");
        assert!(
            md.contains(&format!(
                "| peak used (all of the card's used memory) | {} | - | {} |",
                gib(6 << 30),
                gib(p1.total_bytes)
            )),
            "{md}"
        );
        // PDL column only where measured: 1.5 ms at ctx 128 against the same roofline.
        let roof = runs[0].points[0].roofline_tokens_per_s;
        assert!(
            md.contains(&format!("| 1.500 ({:.1}%) |", 100.0 * 1e3 / 1.5 / roof)),
            "{md}"
        );
        assert!(md.contains("| - |"), "{md}");
        // Other prefetch budgets in their own column, only in the run that timed them.
        assert!(
            md.contains("| 0 KB: 1.550, 64 KB: 1.450 |")
                && md.contains("graph + PDL ms/tok at other prefetch budgets"),
            "{md}"
        );
        assert_eq!(
            md.matches("graph + PDL ms/tok at other prefetch budgets")
                .count(),
            1,
            "{md}"
        );
        // The fused-GLU A/B: its own column, in the int4 run only, "-" where not timed.
        assert!(
            md.contains(
                "| 0 KB: 1.550, 64 KB: 1.450 | 1.525 | 1.520 | 1.510 | 32 KB: 1.480, 256 KB: 1.410 | 32 KB: 1.470, 128 KB: 1.430 | gemv_v2_vec 16 KB: 1.460 |"
            ) && md.contains("top-p 0.9 sampling")
                && md.matches("small kernels launched plain, by prefetch budget").count() == 1
                && md.matches("silu kernel instead of the fused GLU").count() == 1
                && md
                    .matches("v6 at one block per SM, by prefetch budget")
                    .count()
                    == 1,
            "{md}"
        );
        // A recorded point round-trips through JSON with its sweep.
        let back: ContextPoint =
            serde_json::from_value(serde_json::to_value(&runs[0].points[0]).unwrap()).unwrap();
        assert_eq!(back.graph_pdl_prefetch, vec![(0, 1.55), (65536, 1.45)]);
        assert_eq!(back.graph_pdl_silu_kernel_ms, Some(1.525));
        assert_eq!(back.graph_pdl_top_p_ms, Some(1.52));
        assert_eq!(back.graph_pdl_attn_v4_ms, Some(1.51));
        assert_eq!(
            back.graph_pdl_v6_one_per_sm,
            vec![(32768, 1.48), (262144, 1.41)]
        );
        assert_eq!(
            back.graph_pdl_small_plain,
            vec![(32768, 1.47), (131072, 1.43)]
        );
        assert_eq!(
            back.graph_pdl_prefetch_variant,
            vec![("gemv_v2_vec".to_string(), 16384, 1.46)]
        );
        assert_eq!(back.graph_persistent_ms, Some(1.2));
        // The persistent layers' column beside the PDL one, with its share of the roofline, in
        // the int4 run only.
        assert!(
            md.contains(&format!(
                "| 1.500 ({:.1}%) | 1.200 ({:.1}%) |",
                100.0 * 1e3 / 1.5 / roof,
                100.0 * 1e3 / 1.2 / roof
            )) && md.matches("graph, persistent layers ms/tok").count() == 1,
            "{md}"
        );
        assert!(
            md.contains("| 0 KB: 1.300, 128 KB: 1.250 |")
                && md
                    .matches("persistent layers ms/tok at other prefetch budgets")
                    .count()
                    == 1,
            "{md}"
        );
        assert_eq!(
            back.graph_persistent_prefetch,
            vec![(0, 1.3), (131072, 1.25)]
        );
        assert!(
            md.contains("## vicuna-7b int4 g128 [test]") && md.contains("## vicuna-7b fp16"),
            "{md}"
        );
        // 1000 / 1.61 ms = 621.1 tok/s must appear in the int4 table.
        assert!(md.contains("621.1"), "{md}");
        // Prefill: 512 tokens in 40 ms = 12800 tok/s, in its own table; the prefill workspace
        // has its VRAM line.
        assert!(md.contains("| 512 | 40.00 | 12800 |"), "{md}");
        // The profile table: 900 MB of q|k|v weights in 600 us = 1500 GB/s, 85.7% of the
        // 700 us step, beside the 1.61 ms graph step at ctx 128.
        assert!(
            md.contains("| q|k|v proj | 1 | 600.0 | 85.7% | 1500 |"),
            "{md}"
        );
        assert!(
            md.contains("| graph step (timed above) |  | 1610.0 |"),
            "{md}"
        );
        let json: Vec<DecodeReport> =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("decode.json")).unwrap())
                .unwrap();
        assert_eq!(json.len(), 2);
        assert_eq!(json[0].points, runs[0].points);
        for f in [
            "decode-tokens-per-s.svg",
            "decode-roofline.svg",
            "decode-vram.svg",
        ] {
            let s = std::fs::read_to_string(dir.path().join(f)).unwrap();
            assert!(s.starts_with("<svg") && s.contains("vicuna-7b fp16"), "{f}");
        }
        assert!(write_decode_report(dir.path(), &[]).is_err());
    }
}
