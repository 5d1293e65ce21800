//! How much device memory a prefill needs: `PrefillSizes`, the element counts of every workspace
//! buffer for a chunk (pure arithmetic, so the VRAM ledger and its tests need no GPU),
//! `PrefillPlan`, the choice of GEMM path per int4 linear that decides the scratch sizes (the
//! engine feeds it the loaded weights, `lab plan` a checkpoint's shapes: one function, so the
//! planner predicts exactly what the engine allocates), and the dynamic shared memory of the
//! prefill attention kernel.

use super::*;
use crate::kernels::gemm_layout;

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
    // The four scratch parts below share one allocation (`scratch_bytes`): a linear takes either
    // the GEMM path (split-K partials + repack + slot rows, side by side) or the dequant path (its
    // fp16 W from offset 0), and the stream runs one linear at a time. Every part is written (or,
    // for the split-K partials, zeroed) before each linear reads it.
    /// f32 [GEMM_ROWS, widest GEMM N]: split-K partials (0 without a GEMM path).
    pub gemm_ws: usize,
    /// u32 fragment-order words of the largest v2 linear (0 without a v2 path).
    pub repack: usize,
    /// fp16 [GEMM_ROWS, widest unfused slot N]: a GEMM writes y with row stride n, so an unfused
    /// q/k/v or gate/up part lands here and is copied (2D) into its columns (0 when all fused).
    pub slot_y: usize,
    /// fp16 [k, slice width] of the largest dequant-path slice (`dequant_slices`; auto with chunks
    /// from its crossover, or --prefill-int4 dequant; 0 when no chunk size takes that path).
    #[serde(default)]
    pub dequant: usize,
    /// The slice budget `dequant` was sized with (the engine slices with the same one).
    #[serde(default = "default_slice_elems")]
    pub dequant_slice_elems: usize,
}

fn default_slice_elems() -> usize {
    DEQUANT_SLICE_ELEMS
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
            dequant: 0,
            dequant_slice_elems: DEQUANT_SLICE_ELEMS,
        }
    }

    /// Bytes of the whole prefill workspace: the activation rows plus the shared scratch.
    pub fn bytes(&self) -> u64 {
        (4 * (self.tokens + self.resid)
            + 2 * (self.x16 + self.qkv + self.delta + self.gate_up + self.act)
            + self.scratch_bytes()) as u64
    }

    /// Bytes of the scratch the GEMM parts and the dequant W share: the larger of the two uses.
    pub fn scratch_bytes(&self) -> usize {
        let gemm = self.offset(ScratchPart::SlotY) + align(2 * self.slot_y);
        gemm.max(align(2 * self.dequant))
    }

    /// Byte offset of `part` in the scratch (every part starts on a 256-byte boundary).
    pub fn offset(&self, part: ScratchPart) -> usize {
        match part {
            ScratchPart::GemmWs | ScratchPart::Dequant => 0,
            ScratchPart::Repack => align(4 * self.gemm_ws),
            ScratchPart::SlotY => align(4 * self.gemm_ws) + align(4 * self.repack),
        }
    }

    /// Elements of `part` (0: the plan has no linear that uses it).
    pub fn elems(&self, part: ScratchPart) -> usize {
        match part {
            ScratchPart::GemmWs => self.gemm_ws,
            ScratchPart::Repack => self.repack,
            ScratchPart::SlotY => self.slot_y,
            ScratchPart::Dequant => self.dequant,
        }
    }
}

/// The parts of the prefill scratch (`PrefillSizes::offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScratchPart {
    GemmWs,
    Repack,
    SlotY,
    Dequant,
}

/// Rounded up to 256 bytes, the alignment cudaMalloc gives and every kernel's widest load needs.
fn align(bytes: usize) -> usize {
    bytes.div_ceil(256) * 256
}

/// What the prefill of a set of int4 linears needs: its workspace sizes and which GEMM kernels
/// some linear uses (the engine loads only those).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefillPlan {
    pub sizes: PrefillSizes,
    pub gemm_v1: bool,
    pub gemm_v2: bool,
    /// Some linear takes the dequant + cuBLAS path (the dequant kernel and cuBLAS are needed).
    pub dequant: bool,
}

impl PrefillPlan {
    /// The prefill of `chunk` rows on an sm_`sm` device under `choice`, for the engine's int4
    /// linears `int4` as (shape, is an unfused slot of a wider output). `None` when `chunk` is 0:
    /// the engine then allocates no prefill at all. fp16 linears are not passed: cuBLAS takes all
    /// m rows at once in the fused output with the handle's own workspace (counted in the decode
    /// workspace), so they add no prefill scratch; an fp16 model's prefill is its activations.
    /// Per-row (GEMV) linears need no scratch either; a GEMM linear sets the split-K width, a v2
    /// one the repack size, an unfused GEMM slot the slot rows.
    pub fn new(
        cfg: &ModelConfig,
        chunk: usize,
        choice: PrefillInt4,
        sm: u32,
        int4: impl IntoIterator<Item = (LayerShape, bool)>,
    ) -> Option<Self> {
        Self::with_slices(cfg, chunk, choice, sm, int4, DEQUANT_SLICE_ELEMS)
    }

    /// `new` with the dequant path's slice budget `slice_elems` (EngineOptions::dequant_slice_elems).
    pub fn with_slices(
        cfg: &ModelConfig,
        chunk: usize,
        choice: PrefillInt4,
        sm: u32,
        int4: impl IntoIterator<Item = (LayerShape, bool)>,
        slice_elems: usize,
    ) -> Option<Self> {
        if chunk == 0 {
            return None;
        }
        let (mut gemm_n, mut repack_words, mut slot_n) = (0usize, 0usize, 0usize);
        let (mut gemm_v1, mut gemm_v2, mut dequant) = (false, false, 0usize);
        for (s, unfused) in int4 {
            // A chunk has 1..=chunk rows (the last one of a prompt is shorter): every path some
            // chunk size takes gets its scratch.
            for (_, path) in paths_by_rows(choice, &s, sm, chunk) {
                match path {
                    Int4Path::Rows(_) => continue,
                    // cuBLAS writes any column range of the output itself: no split-K or slots.
                    Int4Path::Dequant => {
                        dequant =
                            dequant.max(s.k * dequant_slices_within(s.k, s.n, slice_elems).width);
                        continue;
                    }
                    Int4Path::GemmV2 => {
                        gemm_v2 = true;
                        repack_words = repack_words.max(gemm_layout::prepared_words(s.k, s.n));
                    }
                    Int4Path::GemmV1 => gemm_v1 = true,
                }
                gemm_n = gemm_n.max(s.n);
                if unfused {
                    slot_n = slot_n.max(s.n);
                }
            }
        }
        let mut sizes = PrefillSizes::new(cfg, chunk, gemm_n, repack_words, slot_n);
        sizes.dequant = dequant;
        sizes.dequant_slice_elems = slice_elems;
        Some(PrefillPlan {
            sizes,
            gemm_v1,
            gemm_v2,
            dequant: dequant > 0,
        })
    }

    /// The prefill workspace bytes the engine allocates (and its VRAM ledger counts): 0 for no
    /// prefill.
    pub fn bytes_or_zero(plan: Option<Self>) -> u64 {
        plan.map_or(0, |p| p.sizes.bytes())
    }
}

/// Most fp16 elements of W the dequant path writes at once (64 MiB). A wide linear is dequantized
/// and multiplied in column slices of at most this many elements, so the scratch is 64 MiB instead
/// of the whole W (13B's fused gate|up: 5120 x 27648 = 283 MB; 7B's 180 MB). Cost, measured on the
/// H100 (run 12b, `lab decode --dequant-slice-mib 64/128/288`): 3-4% of prefill tok/s against the
/// whole W (7B 7281 vs 7502, 13B 4208 vs 4377 at 512 tokens), for ~130 / ~205 MB less VRAM: more
/// launches per linear (13B: 5 + 3 + 1 + 3 slices per layer) and narrower cuBLAS GEMMs.
pub const DEQUANT_SLICE_ELEMS: usize = 32 << 20;

/// Column slices of a [k, n] linear for the dequant path: `count` slices of `width` columns (a
/// multiple of 8, so a slice starts on a packed-zeros word; the last one may be narrower).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DequantSlices {
    pub count: usize,
    pub width: usize,
}

pub fn dequant_slices(k: usize, n: usize) -> DequantSlices {
    dequant_slices_within(k, n, DEQUANT_SLICE_ELEMS)
}

/// `dequant_slices` under a budget of `elems` fp16 values per slice (at least 8 columns).
pub fn dequant_slices_within(k: usize, n: usize, elems: usize) -> DequantSlices {
    let count = (k * n).div_ceil(elems.max(1)).max(1);
    let width = n.div_ceil(count).div_ceil(8) * 8;
    // Rounding the width up can leave the last slice empty (n = 8 * 2, count 3): recount.
    DequantSlices {
        count: n.div_ceil(width),
        width: width.min(n),
    }
}

impl DequantSlices {
    /// Column range of each slice.
    pub fn ranges(self, n: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
        (0..self.count).map(move |i| i * self.width..((i + 1) * self.width).min(n))
    }
}

/// The int4 linears of one decoder layer of `cfg` as the engine holds a GPTQ checkpoint, for
/// `PrefillPlan::new` without loading one: q|k|v fused into one [h, h + 2 kv_dim] linear and
/// gate|up into one [h, 2 inter] (GPTQ quantizes each group from the same input, so the parts
/// share K, group size and act-order channel order and `gpu_layout::fusion_for` fuses them), then
/// o and down. Act-order layers are held rows-sorted-by-group with a permutation and no g_idx
/// (GPTQ's groups are equal-size, so the sorted g_idx is trivial); the path and the workspace do
/// not depend on the permutation. `group_size` -1 = per-channel.
/// Every layer is the same, so one layer decides the workspace.
pub fn checkpoint_int4_layer(
    cfg: &ModelConfig,
    group_size: i32,
    act_order: bool,
) -> Vec<(LayerShape, bool)> {
    let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
    let kv = cfg.num_key_value_heads * cfg.head_dim();
    [(h, h + 2 * kv), (h, h), (h, 2 * inter), (inter, h)]
        .into_iter()
        .map(|(k, n)| {
            let g = if group_size <= 0 {
                k
            } else {
                group_size as usize
            };
            let shape = LayerShape {
                k,
                n,
                group_size: g,
                g_idx: false,
                // One group spanning K has no channel order to keep: its g_idx is trivial.
                perm: act_order && g < k,
                bias: false,
                symmetric: false,
            };
            (shape, false)
        })
        .collect()
}

/// The prefill attention's shared memory must fit the 48 KB every device gives without opting in;
/// the engine refuses a GEMM prefill for a head_dim past that (none of the presets: hd 128 needs
/// 22848 B). `flag` names what the caller would change.
pub fn check_attn_smem(cfg: &ModelConfig, flag: &str) -> Result<()> {
    let smem = attn_smem_bytes(cfg.head_dim());
    if smem > 48 * 1024 {
        return Err(LabError::invalid(
            flag,
            format!(
                "head_dim {}: the prefill attention needs {smem} B of shared memory (> 48 KB)",
                cfg.head_dim()
            ),
        ));
    }
    Ok(())
}

/// Dynamic shared memory of lab_llama_prefill_attn for `hd` (layout in kernels/llama/prefill.cu).
pub fn attn_smem_bytes(hd: usize) -> usize {
    let (qt, kt) = (
        abi::LAB_LLAMA_PREFILL_ATTN_QT as usize,
        abi::LAB_LLAMA_PREFILL_ATTN_KT as usize,
    );
    2 * (qt * hd + kt * (hd + 2) + kt * hd) + 4 * (qt * kt + 3 * qt)
}
