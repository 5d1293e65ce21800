//! How much device memory a prefill needs: `PrefillSizes`, the element counts of every workspace
//! buffer for a chunk (pure arithmetic, so the VRAM ledger and its tests need no GPU), and the
//! dynamic shared memory of the prefill attention kernel.

use super::*;

/// Bytes of the prefill workspace for `chunk` rows (exact: the engine allocates these sizes and
/// counts this sum in the VRAM ledger).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefillSizes {
    pub chunk: usize,
    /// i32 [chunk] tokens.
    pub tokens: usize,
    /// f32 [chunk, hidden] residual rows.
    pub resid: usize,
    /// fp16 [chunk, hidden]: the normed input, then the attention output (the normed input is
    /// dead once the qkv GEMM has read it; the next norm writes it after o has read the attention).
    pub x16: usize,
    /// fp16 [chunk, heads*hd + 2 kv_dim].
    pub qkv: usize,
    /// fp16 [chunk, hidden]: o's output, then down's (the norm consumes o before down runs).
    pub delta: usize,
    /// fp16 [chunk, 2 inter].
    pub gate_up: usize,
    /// fp16 [chunk, inter].
    pub act: usize,
    /// f32 [GEMM_ROWS, widest GEMM N]: split-K partials (0 without a GEMM path).
    pub gemm_ws: usize,
    /// u32 fragment-order words of the largest v2 linear (0 without a v2 path).
    pub repack: usize,
    /// fp16 [GEMM_ROWS, widest unfused slot N]: a GEMM writes y with row stride n, so an unfused
    /// q/k/v or gate/up part lands here and is copied (2D) into its columns (0 when all fused).
    pub slot_y: usize,
}

impl PrefillSizes {
    /// Element counts for `cfg` at `chunk` rows; `gemm_n` = widest N of a GEMM-path linear (0:
    /// none), `repack_words` = largest prepared size of a v2 linear, `slot_n` = widest unfused
    /// GEMM slot.
    pub fn new(
        cfg: &ModelConfig,
        chunk: usize,
        gemm_n: usize,
        repack_words: usize,
        slot_n: usize,
    ) -> Self {
        let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
        let qkv_w = h + 2 * cfg.num_key_value_heads * cfg.head_dim();
        PrefillSizes {
            chunk,
            tokens: chunk,
            resid: chunk * h,
            x16: chunk * h,
            qkv: chunk * qkv_w,
            delta: chunk * h,
            gate_up: chunk * 2 * inter,
            act: chunk * inter,
            gemm_ws: GEMM_ROWS * gemm_n,
            repack: repack_words,
            slot_y: GEMM_ROWS * slot_n,
        }
    }

    pub fn bytes(&self) -> u64 {
        (4 * (self.tokens + self.resid + self.gemm_ws + self.repack)
            + 2 * (self.x16 + self.qkv + self.delta + self.gate_up + self.act + self.slot_y))
            as u64
    }
}

/// Dynamic shared memory of lab_llama_prefill_attn for `hd` (layout in kernels/llama/prefill.cu).
pub fn attn_smem_bytes(hd: usize) -> usize {
    let (qt, kt) = (
        abi::LAB_LLAMA_PREFILL_ATTN_QT as usize,
        abi::LAB_LLAMA_PREFILL_ATTN_KT as usize,
    );
    2 * (qt * hd + kt * (hd + 2) + kt * hd) + 4 * (qt * kt + 3 * qt)
}
