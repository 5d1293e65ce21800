//! Exact byte counts of everything a decode run keeps on the GPU: quantized (or fp16) linears,
//! fp16 embeddings / norms / lm_head, the fp16 KV cache, the decode workspace and the GEMM-prefill
//! workspace (the engine's own sizing, `gpu_engine::PrefillPlan`).
//!
//! Conventions: K = in_features, N = out_features, G = group size (`-1` = one group over all K),
//! tensor shapes as in ../shared/gptq-format.md. All counts are bytes (u64), never rounded.

use crate::model::config::ModelConfig;
use crate::model::gpu_engine::{checkpoint_int4_layer, PrefillInt4, PrefillPlan};
use serde::{Deserialize, Serialize};

/// How the linear layers are stored on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    /// GPTQ 4-bit: qweight + qzeros + scales (+ g_idx / perm with act-order).
    Int4,
    /// Unquantized fp16 weights, for the int4-vs-fp16 comparison.
    Fp16,
}

/// Rows per group: `-1` (per-channel) means one group spanning all of K.
pub fn rows_per_group(group_size: i32, k: u64) -> u64 {
    if group_size <= 0 {
        k
    } else {
        group_size as u64
    }
}

/// Whether act-order changes what the engine runs. With one group (per-channel, `group_size`
/// <= 0) it does not: GPTQ writes such a g_idx as all zeros (every row in group 0, whatever the
/// quantization order), the loader reads it as plain order, and no permutation or gather runs.
pub fn runs_act_order(act_order: bool, group_size: i32) -> bool {
    act_order && group_size > 0
}

/// Bytes of one linear layer, by tensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinearBytes {
    pub name: String,
    pub k: u64,
    pub n: u64,
    /// i32 [K/8, N]: K*N/2 bytes.
    pub qweight: u64,
    /// i32 [ceil(K/G), N/8].
    pub qzeros: u64,
    /// fp16 [ceil(K/G), N].
    pub scales: u64,
    /// i32 [K]: the checkpoint's g_idx (gather variants) or the act-order permutation that
    /// reorder variants use instead; same size. 0 unless act-order, because without act-order
    /// the group of row k is k / G and no kernel reads an index.
    pub g_idx: u64,
    /// fp16 [K, N] for `WeightDtype::Fp16`; 0 for int4.
    pub fp16_weight: u64,
}

impl LinearBytes {
    pub fn new(
        name: &str,
        k: u64,
        n: u64,
        dtype: WeightDtype,
        group_size: i32,
        act_order: bool,
    ) -> Self {
        let mut b = LinearBytes {
            name: name.to_string(),
            k,
            n,
            qweight: 0,
            qzeros: 0,
            scales: 0,
            g_idx: 0,
            fp16_weight: 0,
        };
        match dtype {
            WeightDtype::Fp16 => b.fp16_weight = k * n * 2,
            WeightDtype::Int4 => {
                let groups = k.div_ceil(rows_per_group(group_size, k));
                // div_ceil: a K or N that is not a multiple of 8 is stored padded to the next word.
                b.qweight = k.div_ceil(8) * n * 4;
                b.qzeros = groups * n.div_ceil(8) * 4;
                b.scales = groups * n * 2;
                b.g_idx = if act_order { k * 4 } else { 0 };
            }
        }
        b
    }

    pub fn total(&self) -> u64 {
        self.qweight + self.qzeros + self.scales + self.g_idx + self.fp16_weight
    }
}

/// Bytes by kind of tensor, summed over a whole model. The same struct summarises a real
/// checkpoint's tensors (`super::checkpoint::plan_from_tensor_bytes`) so the two compare field by field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartBytes {
    pub qweight: u64,
    pub qzeros: u64,
    pub scales: u64,
    pub g_idx: u64,
    /// fp16 linear weights (fp16 model only).
    pub fp16_linear: u64,
    /// fp16 [vocab, hidden].
    pub embeddings: u64,
    /// fp16 [hidden] x (2 per layer + the final norm).
    pub norms: u64,
    /// fp16 [vocab, hidden]; 0 when tied to the embeddings.
    pub lm_head: u64,
    /// Linear biases (LLaMA has none) and anything else not classified.
    pub other: u64,
}

impl PartBytes {
    pub fn linears(&self) -> u64 {
        self.qweight + self.qzeros + self.scales + self.g_idx + self.fp16_linear
    }
    pub fn total(&self) -> u64 {
        self.linears() + self.embeddings + self.norms + self.lm_head + self.other
    }
    fn add_linear(&mut self, l: &LinearBytes, times: u64) {
        self.qweight += l.qweight * times;
        self.qzeros += l.qzeros * times;
        self.scales += l.scales * times;
        self.g_idx += l.g_idx * times;
        self.fp16_linear += l.fp16_weight * times;
    }
}

/// Every weight byte of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightBytes {
    /// The linears of one decoder layer (all layers are identical).
    pub per_layer: Vec<LinearBytes>,
    pub layers: u64,
    pub parts: PartBytes,
    pub total: u64,
}

impl WeightBytes {
    pub fn of(cfg: &ModelConfig, dtype: WeightDtype, group_size: i32, act_order: bool) -> Self {
        let per_layer: Vec<LinearBytes> = cfg
            .layer_linears()
            .iter()
            .map(|&(name, k, n)| {
                LinearBytes::new(name, k as u64, n as u64, dtype, group_size, act_order)
            })
            .collect();
        let layers = cfg.num_hidden_layers as u64;
        let (h, v) = (cfg.hidden_size as u64, cfg.vocab_size as u64);
        let mut parts = PartBytes::default();
        for l in &per_layer {
            parts.add_linear(l, layers);
        }
        parts.embeddings = v * h * 2;
        parts.norms = (2 * layers + 1) * h * 2;
        parts.lm_head = if cfg.tie_word_embeddings {
            0
        } else {
            v * h * 2
        };
        let total = parts.total();
        WeightBytes {
            per_layer,
            layers,
            parts,
            total,
        }
    }

    /// Bytes read from DRAM per decode step, batch `batch`, excluding the KV cache (anchors.md's
    /// definition): every linear once, every norm once, the lm_head once, and one embedding row per
    /// sequence. With tied embeddings the lm_head IS the embedding table, read whole once.
    pub fn streamed_per_step(&self, cfg: &ModelConfig, batch: u64) -> u64 {
        let head = if cfg.tie_word_embeddings {
            self.parts.embeddings
        } else {
            self.parts.lm_head + batch * cfg.hidden_size as u64 * 2
        };
        self.parts.linears() + self.parts.norms + head
    }
}

/// fp16 KV cache: K and V, per layer, per position, kv_heads * head_dim values of 2 bytes, per sequence.
pub fn kv_cache_bytes(cfg: &ModelConfig, ctx: u64, batch: u64) -> u64 {
    let kv_dim = (cfg.num_key_value_heads * cfg.head_dim()) as u64;
    2 * cfg.num_hidden_layers as u64 * ctx * kv_dim * 2 * batch
}

/// Most split-K slices a kernel may use on one linear. A batch-1 GEMV over N = 4096 with 128
/// columns per CTA has 32 CTAs; 16 slices make 512 CTAs, about 4 per SM on a 132-SM H100, which is
/// enough to fill the card. If a variant ever uses more slices, raise this.
pub const SPLITK_MAX_SLICES: u64 = 16;

/// Decode workspace (activation buffers reused by every layer), bytes. Model, per sequence:
/// fp16 hidden, residual, normed input and attention output (4 x hidden x 2), the fused qkv
/// output ((hidden + 2 kv_dim) x 2), fused gate_up output (2 x inter x 2), SiLU*mul output
/// (inter x 2), the act-order permuted input copy (max K x 2), fp32 attention scores
/// (heads x ctx x 4), fp32 logits and sampling probabilities (2 x vocab x 4); plus, shared,
/// fp32 split-K partials (SPLITK_MAX_SLICES x batch x max N x 4).
/// 7B, batch 1, ctx 2048: 32 KiB + 24 KiB + 43 KiB + 22 KiB + 22 KiB + 256 KiB + 250 KiB + 1.4 MB ~ 2 MB.
pub fn workspace_bytes(cfg: &ModelConfig, ctx: u64, batch: u64) -> u64 {
    let h = cfg.hidden_size as u64;
    let inter = cfg.intermediate_size as u64;
    let kv_dim = (cfg.num_key_value_heads * cfg.head_dim()) as u64;
    let heads = cfg.num_attention_heads as u64;
    let vocab = cfg.vocab_size as u64;
    let max_k = h.max(inter);
    let max_n = (h + 2 * kv_dim).max(2 * inter);
    // (h + inter) * 2: the norm's and the silu's output in an act-order consumer's sorted row
    // order (GpuEngine's act_order_plain), allocated whatever the weights.
    let per_seq = 4 * h * 2
        + (h + inter) * 2
        + (h + 2 * kv_dim) * 2
        + 2 * inter * 2
        + inter * 2
        + max_k * 2
        + heads * ctx * 4
        + 2 * vocab * 4;
    batch * per_seq + SPLITK_MAX_SLICES * batch * max_n * 4
}

/// Device memory the engine's cuBLAS handle costs where it makes one (fp16 linears, or an int4
/// prefill that dequantizes for cuBLAS): the handle's own allocations plus the 32 MiB workspace the
/// engine gives it. Measured, H100 run 10 (driver 580, CUDA 13 cuBLAS): the decode workspace's
/// driver reading was 98.0 MiB for both fp16 engines, of which ~0.6 MiB are the decode buffers
/// `workspace_bytes` counts already, and 0.0 for the int4 engines that made no handle. Another
/// cuBLAS may differ by some MiB: an allowance, like the CUDA context's.
pub const CUBLAS_BYTES: u64 = 97 << 20;

/// `CUBLAS_BYTES` where the engine built for this plan makes a cuBLAS handle, else 0: fp16 weights
/// through cuBLAS (`fp16_cublas`, the engine's default backend), or int4 whose prefill plan
/// (`prefill_plan`) has a chunk size that dequantizes (PrefillPlan::dequant, as the engine decides).
pub fn cublas_bytes(dtype: WeightDtype, fp16_cublas: bool, prefill: Option<&PrefillPlan>) -> u64 {
    let uses = match dtype {
        WeightDtype::Fp16 => fp16_cublas,
        WeightDtype::Int4 => prefill.is_some_and(|p| p.dequant),
    };
    if uses {
        CUBLAS_BYTES
    } else {
        0
    }
}

/// The GPU generation the planner sizes the prefill for: sm_80 or newer (Ampere, Ada, Hopper:
/// every card in `cards::CARDS` but the T4) runs the int4 prefill GEMMs on gemm_v2_mma, which
/// needs the repack scratch. An sm_75 card (T4) takes gemm_v1_simt and the engine allocates the
/// repack less (7B: 45 MB, 13B: 71 MB), so there the plan is that much on the safe side.
pub const PREFILL_PLAN_SM: u32 = 80;

/// The prefill the GPU engine plans at construction (its VRAM ledger's prefill line is its
/// `sizes.bytes()`, `PrefillPlan::bytes_or_zero`): `chunk` rows of activations and the scratch
/// shared by the GEMM path (split-K partials, gemm_v2 repack) and the dequant path (fp16 W), from
/// the engine's own `PrefillPlan` over the layer as it holds a checkpoint
/// (`checkpoint_int4_layer`; none for fp16), sm_`PREFILL_PLAN_SM`. The chunk is clamped to the KV
/// cache's `ctx` rows as `EngineOptions` does (a prompt never exceeds the cache); 0 rows = no
/// prefill (token-by-token prompts): None. Independent of the batch: the engine prefills one
/// prompt at a time. `choice` is the engine's `--prefill-int4` (auto and dequant hold the widest fp16
/// column slice of W, `dequant_slices`, where some chunk size dequantizes).
pub fn prefill_plan(
    cfg: &ModelConfig,
    dtype: WeightDtype,
    group_size: i32,
    act_order: bool,
    chunk: u64,
    ctx: u64,
    choice: PrefillInt4,
) -> Option<PrefillPlan> {
    let rows = chunk.min(ctx) as usize;
    let int4 = match dtype {
        WeightDtype::Int4 => checkpoint_int4_layer(cfg, group_size, act_order),
        WeightDtype::Fp16 => Vec::new(),
    };
    PrefillPlan::new(cfg, rows, choice, PREFILL_PLAN_SM, int4)
}
