//! VRAM planner: exact bytes of a GPTQ (or fp16) LLaMA/Vicuna decode run on a GPU, which cards it
//! fits, the longest context each card allows, and a bandwidth-roofline tokens/s estimate.
//!
//! total = weights (linears + fp16 embeddings, norms, lm_head) + fp16 KV cache + decode workspace
//!       + prefill workspace (the engine's own plan: `bytes::prefill_plan`)
//!       + CUDA context allowance (`cards::CUDA_CONTEXT_BYTES`).
//! `bytes.rs` counts, `cards.rs` holds the card table and the memory convention, `fit.rs` solves
//! for context and computes the roofline, `checkpoint.rs` reads a checkpoint folder's configs and
//! summarises a loaded checkpoint's tensors for comparison.

pub mod bytes;
pub mod cards;
pub mod checkpoint;
pub mod fit;
pub mod measured;

pub use bytes::{
    cublas_bytes, kv_cache_bytes, prefill_plan, runs_act_order, workspace_bytes, LinearBytes,
    PartBytes, WeightBytes, WeightDtype, CUBLAS_BYTES, PREFILL_PLAN_SM,
};
pub use cards::{Card, CARDS, CUDA_CONTEXT_BYTES, GENERIC_SIZES_GIB};
pub use checkpoint::{plan_from_tensor_bytes, read_checkpoint_dir, CheckpointQuant};
pub use fit::{Fit, Roofline, SpeedModel};

use crate::model::config::ModelConfig;
use crate::model::gpu_engine::{
    check_attn_smem, PrefillInt4, PrefillPlan, DEFAULT_PREFILL_CHUNK, DEQUANT_HEADROOM, MAX_CTX,
};
use crate::model::gpu_weights::WeightKind;
use crate::{LabError, Result};
use serde::Serialize;

/// Group sizes of the default table; -1 = per-channel.
pub const DEFAULT_GROUPS: &[i32] = &[32, 64, 128, -1];
/// Contexts of the default table: Vicuna v0/v1.1 train at 2048, v1.5 at 4096; 512 is a short chat.
pub const DEFAULT_CTXS: &[u64] = &[512, 2048, 4096];

/// What to plan for.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanSpec {
    pub model: ModelConfig,
    pub dtype: WeightDtype,
    /// Rows per group; -1 = per-channel. Ignored for fp16.
    pub group_size: i32,
    /// Act-order checkpoint: kernels need a K x 4 index per linear (g_idx or the reorder permutation).
    pub act_order: bool,
    /// Positions per sequence the KV cache holds.
    pub ctx: u64,
    /// Sequences decoded together.
    pub batch: u64,
    /// Rows per GEMM-prefill chunk the engine is built with (`EngineOptions::prefill_chunk`,
    /// clamped to `ctx` as the engine clamps it); 0 = no prefill workspace.
    pub prefill_chunk: u64,
    /// How the engine's prefill computes int4 linears (`--prefill-int4`): `Dequant` adds its
    /// fp16 scratch to the prefill workspace.
    pub prefill_int4: PrefillInt4,
    pub cuda_context_bytes: u64,
    /// fp16 linears through cuBLAS (the engine's default backend; false: the lab fp16 GEMV, no
    /// cuBLAS handle for them).
    pub fp16_cublas: bool,
}

impl PlanSpec {
    /// A batch-1 plan with the default CUDA context allowance, the engine's default prefill
    /// chunk and no act-order.
    pub fn new(model: ModelConfig, dtype: WeightDtype, group_size: i32, ctx: u64) -> Self {
        PlanSpec {
            model,
            dtype,
            group_size,
            act_order: false,
            ctx,
            batch: 1,
            prefill_chunk: DEFAULT_PREFILL_CHUNK as u64,
            prefill_int4: PrefillInt4::Auto,
            cuda_context_bytes: CUDA_CONTEXT_BYTES,
            fp16_cublas: true,
        }
    }

    /// The plan of a GPU-engine run: its model and weights, a KV cache of `max_ctx` positions and
    /// the prefill chunk the engine allocated (0: none, e.g. a run recorded before the GEMM
    /// prefill). What a decode report sets beside its measured VRAM.
    pub fn of_engine_run(
        model: ModelConfig,
        kind: WeightKind,
        max_ctx: u64,
        prefill_chunk: u64,
    ) -> Self {
        let (dtype, group, act_order) = match kind {
            WeightKind::Fp16 => (WeightDtype::Fp16, -1, false),
            WeightKind::Int4 {
                group, act_order, ..
            } => (WeightDtype::Int4, group, act_order),
        };
        let mut s = PlanSpec::new(model, dtype, group, max_ctx);
        s.act_order = act_order;
        s.prefill_chunk = prefill_chunk;
        s
    }

    /// The `lab plan` command line that prints this plan (a preset's name stands for its config).
    pub fn command(&self) -> String {
        let mut c = format!("lab plan --model {}", self.model.name);
        match self.dtype {
            WeightDtype::Fp16 => c.push_str(" --dtype fp16"),
            WeightDtype::Int4 => {
                c.push_str(&format!(" --group {}", self.group_size));
                if self.act_order {
                    c.push_str(" --act-order");
                }
            }
        }
        c.push_str(&format!(
            " --ctx {} --prefill-chunk {}",
            self.ctx, self.prefill_chunk
        ));
        if self.prefill_int4 != PrefillInt4::Auto {
            c.push_str(&format!(" --prefill-int4 {}", self.prefill_int4.flag()));
        }
        if self.batch != 1 {
            c.push_str(&format!(" --batch {}", self.batch));
        }
        c
    }

    fn validate(&self) -> Result<()> {
        if self.dtype == WeightDtype::Int4 {
            check_group(&self.model, self.group_size)
                .map_err(|r| LabError::invalid("--group", r))?;
        }
        if self.batch == 0 {
            return Err(LabError::invalid("--batch", "batch 0 (expected >= 1)"));
        }
        if self.ctx > MAX_CTX as u64 {
            return Err(LabError::invalid(
                "--ctx",
                format!(
                    "{} positions; the engine's KV cache holds at most {MAX_CTX}",
                    self.ctx
                ),
            ));
        }
        self.check_size()?;
        if self.prefill_chunk.min(self.ctx) > 0 {
            // What the engine refuses at construction for a GEMM prefill of this model.
            check_attn_smem(&self.model, "--prefill-chunk")?;
        }
        Ok(())
    }

    /// Every byte count below is u64 arithmetic on the model's dimensions, the context (up to
    /// the longest-context search's MAX_CTX_SEARCH) and the batch. Bound them all in f64 first,
    /// with a wide margin over each formula, so that a config of absurd dimensions or a huge
    /// batch is refused by name instead of wrapping into a plan that "fits".
    fn check_size(&self) -> Result<()> {
        let m = &self.model;
        let f = |v: usize| v as f64;
        let (h, inter, vocab, layers) = (
            f(m.hidden_size),
            f(m.intermediate_size),
            f(m.vocab_size),
            f(m.num_hidden_layers),
        );
        let kv_dim = f(m.num_key_value_heads) * f(m.head_dim());
        let widest = h + inter + 2.0 * kv_dim + vocab;
        // Per layer: q, k, v, o, gate, up, down; 4 bytes a weight covers fp16 (2) and int4 with
        // its scales, zeros and g_idx at any group size.
        let weights = 4.0 * layers * (h * (2.0 * h + 2.0 * kv_dim) + 3.0 * h * inter)
            + 4.0 * vocab * h
            + 4.0 * (2.0 * layers + 1.0) * h;
        let model_limit = 2f64.powi(60);
        if weights > model_limit {
            return Err(LabError::invalid(
                format!("model config '{}'", m.name),
                format!(
                    "{} layers of hidden size {}, intermediate size {} and vocabulary {} would be \
                     ~{weights:.1e} bytes of weights: not a model this planner can count",
                    m.num_hidden_layers, m.hidden_size, m.intermediate_size, m.vocab_size
                ),
            ));
        }
        let ctx = self.ctx.max(fit::MAX_CTX_SEARCH) as f64;
        let batch = self.batch as f64;
        let kv = 4.0 * layers * ctx * kv_dim * batch;
        let workspace = batch * (64.0 * widest + 4.0 * f(m.num_attention_heads) * ctx)
            + 4.0 * (bytes::SPLITK_MAX_SLICES as f64) * batch * widest;
        let prefill = ctx.min(self.prefill_chunk as f64) * 64.0 * widest + weights;
        let total = weights + kv + workspace + prefill + self.cuda_context_bytes as f64;
        if total > 2f64.powi(62) {
            return Err(LabError::invalid(
                "--ctx / --batch",
                format!(
                    "ctx {} x batch {} of {} would be ~{total:.1e} bytes (counting contexts up to \
                     {}, the longest-context search's end): far past any card",
                    self.ctx,
                    self.batch,
                    m.name,
                    fit::MAX_CTX_SEARCH
                ),
            ));
        }
        Ok(())
    }

    /// Act-order as the engine runs it (`runs_act_order`: not at per-channel groups). Everything
    /// the plan counts reads this, not the `act_order` asked for.
    fn act_order_runs(&self) -> bool {
        runs_act_order(self.act_order, self.group_size)
    }

    fn weights(&self) -> WeightBytes {
        WeightBytes::of(
            &self.model,
            self.dtype,
            self.group_size,
            self.act_order_runs(),
        )
    }

    /// The engine's prefill plan at `ctx` (the chunk is clamped to the cache's rows).
    fn prefill_plan_at(&self, ctx: u64) -> Option<PrefillPlan> {
        prefill_plan(
            &self.model,
            self.dtype,
            self.group_size,
            self.act_order_runs(),
            self.prefill_chunk,
            ctx,
            self.prefill_int4,
        )
    }

    /// The prefill workspace at `ctx`.
    pub fn prefill_bytes_at(&self, ctx: u64) -> u64 {
        PrefillPlan::bytes_or_zero(self.prefill_plan_at(ctx))
    }

    /// The decode workspace at `ctx` and, where the engine makes one, its cuBLAS handle
    /// (`bytes::cublas_bytes`: fp16, or an int4 `prefill` that dequantizes).
    fn workspace_with(&self, ctx: u64, prefill: Option<&PrefillPlan>) -> u64 {
        workspace_bytes(&self.model, ctx, self.batch)
            + cublas_bytes(self.dtype, self.fp16_cublas, prefill)
    }

    /// Everything but the context-dependent parts, plus those at `ctx`.
    fn total_with(&self, weights: u64, ctx: u64) -> u64 {
        let prefill = self.prefill_plan_at(ctx);
        weights
            + kv_cache_bytes(&self.model, ctx, self.batch)
            + self.workspace_with(ctx, prefill.as_ref())
            + PrefillPlan::bytes_or_zero(prefill)
            + self.cuda_context_bytes
    }

    /// Total bytes at another context, all else equal.
    pub fn total_at(&self, ctx: u64) -> u64 {
        self.total_with(self.weights().total, ctx)
    }

    /// What the engine allocates at `ctx` on a card of `memory` bytes: `total_with`, except that
    /// `--prefill-int4 auto` whose dequant (its W and cuBLAS handle, plus the engine's headroom)
    /// does not fit keeps the GEMM family's plan, as GpuEngine::new decides
    /// (gpu_engine::prefill_choice_for_memory; free memory there = the card less everything
    /// allocated before the prefill, so "auto's total + headroom > memory" is the same test).
    fn total_on(&self, weights: u64, ctx: u64, memory: u64) -> u64 {
        let auto = self.total_with(weights, ctx);
        if self.prefill_int4 != PrefillInt4::Auto || auto + DEQUANT_HEADROOM <= memory {
            return auto;
        }
        let mut v2 = self.clone();
        v2.prefill_int4 = PrefillInt4::GemmV2;
        v2.total_with(weights, ctx).min(auto)
    }

    /// `total_on` at `ctx` for a card of `memory` bytes, from this spec's weights.
    pub fn total_on_card(&self, ctx: u64, memory: u64) -> u64 {
        self.total_on(self.weights().total, ctx, memory)
    }

    /// The fit on `card`, with the engine's memory-dependent choice of prefill plan.
    fn fit_on(&self, card: &Card, weights: u64) -> fit::Fit {
        let m = card.usable_bytes();
        fit::fit_on(card, self.total_on(weights, self.ctx, m), |c| {
            self.total_on(weights, c, m)
        })
    }

    pub fn plan(&self) -> Result<Plan> {
        self.validate()?;
        let weights = self.weights();
        let kv = kv_cache_bytes(&self.model, self.ctx, self.batch);
        let prefill_plan = self.prefill_plan_at(self.ctx);
        let ws = self.workspace_with(self.ctx, prefill_plan.as_ref());
        let prefill = PrefillPlan::bytes_or_zero(prefill_plan);
        let total = self.total_with(weights.total, self.ctx);
        let int4 = self.dtype == WeightDtype::Int4;
        let act = self.act_order_runs();
        let g_idx_note = match (int4, act) {
            (false, _) => "no g_idx: fp16 weights".to_string(),
            (true, false) if self.act_order => "act-order with per-channel groups: one group, so \
                GPTQ's g_idx is all zeros; the loader reads plain row order and the engine runs \
                the plain kernels (g_idx not counted, planned as without act-order)"
                .to_string(),
            (true, true) => "g_idx counted: act-order kernels read a K x 4 byte index per linear \
                             (g_idx to gather, or the reorder permutation: same size)"
                .to_string(),
            (true, false) => "g_idx not counted: without act-order the group of row k is k / G and \
                              no kernel reads it (the checkpoint file still stores K x 4 bytes per linear)"
                .to_string(),
        };
        let bytes_per_step = weights.streamed_per_step(&self.model, self.batch) + kv;
        let wt = weights.total;
        let fits = GENERIC_SIZES_GIB
            .iter()
            .map(|&g| self.fit_on(&cards::generic(g), wt))
            .collect();
        Ok(Plan {
            model: self.model.name.clone(),
            dtype: self.dtype,
            group_size: int4.then_some(self.group_size),
            act_order: int4 && act,
            ctx: self.ctx,
            batch: self.batch,
            model_max_ctx: self.model.context_len() as u64,
            weights_bytes: wt,
            kv_cache_bytes: kv,
            workspace_bytes: ws,
            prefill_chunk: self.prefill_chunk.min(self.ctx),
            prefill_bytes: prefill,
            prefill_int4: self.prefill_int4,
            cuda_context_bytes: self.cuda_context_bytes,
            total_bytes: total,
            g_idx_counted: int4 && act,
            g_idx_note,
            weights,
            bytes_per_step,
            fits,
            card: None,
            roofline: None,
        })
    }

    /// The plan plus its fit on one named card and that card's estimated decode speed.
    pub fn plan_on(&self, card: &Card, speed: &fit::SpeedModel) -> Result<Plan> {
        speed
            .check()
            .map_err(|r| LabError::invalid("--efficiency", r))?;
        let mut p = self.plan()?;
        let wt = p.weights_bytes;
        p.card = Some(self.fit_on(card, wt));
        p.roofline = Some(fit::roofline(
            card,
            speed,
            self.model.num_hidden_layers,
            self.batch,
            p.bytes_per_step,
        ));
        Ok(p)
    }
}

/// A group size every quantized linear of `model` can use: -1 (per-channel) or a positive size
/// dividing each linear's K (hidden size and intermediate size), as the loader and the kernels
/// require (`gptq::group_rows`).
pub fn check_group(model: &ModelConfig, group_size: i32) -> std::result::Result<(), String> {
    let mut ks: Vec<usize> = model.layer_linears().iter().map(|l| l.1).collect();
    ks.dedup();
    for k in ks {
        crate::gptq::group_rows(group_size, k).map_err(|r| {
            format!(
                "{r} of {}'s linears (expected -1 for per-channel or a size such as 32/64/128 that divides every K)",
                model.name
            )
        })?;
    }
    Ok(())
}

/// One planned configuration. `--json` prints this.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Plan {
    pub model: String,
    pub dtype: WeightDtype,
    /// None for fp16.
    pub group_size: Option<i32>,
    pub act_order: bool,
    pub ctx: u64,
    pub batch: u64,
    /// The model's trained context (config's max_position_embeddings, times a linear RoPE
    /// factor: `ModelConfig::context_len`).
    pub model_max_ctx: u64,
    pub weights_bytes: u64,
    pub kv_cache_bytes: u64,
    pub workspace_bytes: u64,
    /// Rows per prefill chunk the engine would use here (the requested chunk clamped to `ctx`;
    /// 0 = no GEMM prefill).
    pub prefill_chunk: u64,
    /// GEMM-prefill workspace the engine allocates for `prefill_chunk` rows.
    pub prefill_bytes: u64,
    /// The prefill's int4 path it was sized for (`--prefill-int4`).
    pub prefill_int4: PrefillInt4,
    pub cuda_context_bytes: u64,
    pub total_bytes: u64,
    pub g_idx_counted: bool,
    pub g_idx_note: String,
    /// Per-tensor breakdown (one layer's linears, and sums by kind).
    pub weights: WeightBytes,
    /// DRAM bytes per decode step: weights read once + KV cache (anchors.md's definition).
    pub bytes_per_step: u64,
    /// The generic 6/8/10/12/16/24 GB cards.
    pub fits: Vec<Fit>,
    /// The `--card` given, if any.
    pub card: Option<Fit>,
    pub roofline: Option<Roofline>,
}

/// Decimal gigabytes for display (1e9: what the anchors and bandwidth figures use).
pub fn gb(bytes: u64) -> f64 {
    bytes as f64 / 1e9
}

#[cfg(test)]
mod tests;
