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
//!
//! Three parts: this file holds what a run measures (the report's types and their arithmetic) and
//! what it needs (the planner's bytes for an engine, the runs skipped for lack of memory);
//! `run` times a plan on the GPU; `report` writes decode.json / decode.md / the plots from
//! recorded runs, which needs no GPU.

use crate::model::config::ModelConfig;
use crate::model::gpu_engine::{Fp16Backend, PrefillInt4, SkipOps};
use crate::model::gpu_weights::{WeightKind, WeightsDesc};
use crate::model::step_profile::StepProfile;
use crate::model::vram::VramReport;
use crate::plan::PlanSpec;
use crate::report::ReportHeader;
use crate::tune::BudgetSetting;
use crate::{LabError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

mod report;
mod run;
#[cfg(test)]
mod tests;

pub use report::{write_decode_report, write_decode_views};
pub use run::{run_decode_bench, synthetic_engine, timed_stretch};

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

/// The runs of the decode.json at `path` (labels) that a bench of `models` x `kinds` x
/// `int4_kernels` (`--int4-kernel` names: auto, engine, a registry variant; fp16 runs have none)
/// would not measure again. The bench writes decode.json whole from its own runs, so these would
/// be dropped: a committed 7B + 13B report, a quick 7B run from the repo root, and the
/// gemv_v6_pipe runs of a report measured with `gemv_v6_pipe,auto` under a bench of `auto` alone.
/// Nothing at `path`, or a file that does not parse (it protects nothing), gives none.
pub fn runs_not_remeasured(
    path: &std::path::Path,
    models: &[&str],
    kinds: &[WeightKind],
    int4_kernels: &[&str],
) -> Result<Vec<String>> {
    if !crate::util::optional_file(path)? {
        return Ok(Vec::new());
    }
    let Ok(recorded) = crate::util::read_json::<Vec<DecodeReport>>(path) else {
        return Ok(Vec::new());
    };
    let mut dropped: Vec<String> = recorded
        .iter()
        .filter(|r| {
            !(models.contains(&r.model.as_str())
                && kinds.contains(&r.weights.kind)
                && remeasured_kernel(r, int4_kernels))
        })
        .map(DecodeReport::label)
        .collect();
    dropped.dedup();
    Ok(dropped)
}

/// Whether a bench of `int4_kernels` times `r`'s int4 kernel again (run_label's name: the
/// recorded kernel up to its first space); an fp16 run uses none.
fn remeasured_kernel(r: &DecodeReport, int4_kernels: &[&str]) -> bool {
    matches!(r.weights.kind, WeightKind::Fp16)
        || int4_kernels.contains(&r.int4_kernel.split(' ').next().unwrap_or(""))
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

/// Bytes per GiB, the unit of every VRAM figure in the report.
const GIB: f64 = (1u64 << 30) as f64;

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
