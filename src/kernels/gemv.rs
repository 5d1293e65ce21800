//! The batch-1 int4 dequant-GEMV family (kernels/gemv/*.cu): its registry table and the host-side
//! launch plan of each variant (which instantiation, grid, block, split-K), with every shape check
//! done before a launch. Pure host code: the CPU tests exercise every refusal.

use super::launch::{tunable, LaunchPlan, LayerShape, Tunables};
use super::registry::{ActOrder, Family, Layout, Tunable, Variant};
use crate::cuda::SmLimits;
use crate::{LabError, Result};

/// Output columns per block of the tile kernels (v2-v5): 8 threads x 4 columns (gemv_tile.cuh).
pub const TILE_N: usize = 32;
/// Packed rows per chunk of v3/v4/v5 (fixed unroll of the 16-byte weight loads).
const FIXED_UNROLL: u32 = 4;

const GROUPS: &[i32] = &[32, 64, 128, -1];

/// The split-K tunable of gemv_v6_pipe and the variants built on its loop (v9, v10): 0 =
/// automatic (`v6_split`); any value is raised to ceil(K / 4096) so that the block's K slice fits
/// the 8 KB x buffer in shared memory.
const V6_SPLIT_K: Tunable = Tunable {
    name: "split_k",
    values: &[0, 1, 2, 4, 8],
    default: 0,
};

pub static VARIANTS: &[Variant] = &[
    Variant {
        name: "gemv_v1_naive",
        family: Family::Gemv,
        version: 1,
        description:
            "naive: one output column per thread, g_idx per row, fp32 math (obviously right)",
        symbols: &["lab_gemv_v1_naive"],
        layout: Layout::Canonical,
        group_sizes: GROUPS,
        act_order: &[ActOrder::None, ActOrder::Gather],
        batch: (1, 64),
        min_sm: 75,
        tunables: &[Tunable {
            name: "threads",
            values: &[64, 128, 256],
            default: 128,
        }],
        // Not hot; sm_75 takes 51 (64-bit index math).
        reg_budget: 64,
        hot: false,
        wide_loads: false,
        tensor_cores: false,
    },
    Variant {
        name: "gemv_v2_vec",
        family: Family::Gemv,
        version: 2,
        description:
            "16-byte weight loads, lop3 magic-number dequant to half2, warp+smem K reduction",
        symbols: &[
            "lab_gemv_v2_t128_u2",
            "lab_gemv_v2_t128_u4",
            "lab_gemv_v2_t256_u2",
            "lab_gemv_v2_t256_u4",
            "lab_gemv_v2_t512_u2",
            "lab_gemv_v2_t512_u4",
        ],
        layout: Layout::Canonical,
        group_sizes: GROUPS,
        act_order: &[ActOrder::None],
        batch: (1, 1),
        min_sm: 75,
        tunables: &[
            Tunable {
                name: "threads",
                values: &[128, 256, 512],
                default: 256,
            },
            Tunable {
                name: "unroll",
                values: &[2, 4],
                default: 4,
            },
        ],
        // __launch_bounds__(T, 768/T) caps at 85; observed 60-80 on sm_75..90 (notes/kernels.md).
        reg_budget: 85,
        hot: true,
        wide_loads: true,
        tensor_cores: false,
    },
    Variant {
        name: "gemv_v3_gather",
        family: Family::Gemv,
        version: 3,
        description:
            "act-order by g_idx gather: v2 loads, scale/zero looked up per row (the slow way)",
        symbols: &["lab_gemv_v3_gather_t128", "lab_gemv_v3_gather_t256"],
        layout: Layout::Canonical,
        group_sizes: GROUPS,
        act_order: &[ActOrder::None, ActOrder::Gather],
        batch: (1, 1),
        min_sm: 75,
        tunables: &[Tunable {
            name: "threads",
            values: &[128, 256],
            default: 256,
        }],
        reg_budget: 96,
        hot: true,
        wide_loads: true,
        tensor_cores: false,
    },
    Variant {
        name: "gemv_v4_perm",
        family: Family::Gemv,
        version: 4,
        description: "act-order by load-time reorder: v2 tile reading x[perm[r]] (null perm = v2)",
        symbols: &[
            "lab_gemv_v4_perm_t128",
            "lab_gemv_v4_perm_t256",
            "lab_gemv_v4_perm_t512",
        ],
        layout: Layout::Canonical,
        group_sizes: GROUPS,
        act_order: &[ActOrder::None, ActOrder::Reordered],
        batch: (1, 1),
        min_sm: 75,
        tunables: &[Tunable {
            name: "threads",
            values: &[128, 256, 512],
            default: 256,
        }],
        // 512 threads at 2 blocks per SM would need <= 64; 96 still allows 1 block of 512 + 1 of 256.
        reg_budget: 96,
        hot: true,
        wide_loads: true,
        tensor_cores: false,
    },
    Variant {
        name: "gemv_v5_splitk",
        family: Family::Gemv,
        version: 5,
        description:
            "split-K: v4 tile over K slices (grid.y), fp32 atomics, last block per tile writes y",
        symbols: &["lab_gemv_v5_splitk_t128", "lab_gemv_v5_splitk_t256"],
        layout: Layout::Canonical,
        group_sizes: GROUPS,
        act_order: &[ActOrder::None, ActOrder::Reordered],
        batch: (1, 1),
        min_sm: 75,
        tunables: &[
            Tunable {
                name: "threads",
                values: &[128, 256],
                default: 256,
            },
            Tunable {
                name: "split_k",
                values: &[2, 3, 4, 6, 8],
                default: 4,
            },
        ],
        reg_budget: 96,
        hot: true,
        wide_loads: true,
        tensor_cores: false,
    },
    Variant {
        name: "gemv_v6_pipe",
        family: Family::Gemv,
        version: 6,
        description: "128-column tiles, next chunk's 16-byte loads in flight while one is dequantized, x (permuted for act-order) staged once per block in smem, auto split-K",
        symbols: &[
            "lab_gemv_v6_pipe_t128",
            "lab_gemv_v6_pipe_t256",
            "lab_gemv_v6_pipe_t512",
        ],
        layout: Layout::Canonical,
        group_sizes: GROUPS,
        act_order: &[ActOrder::None, ActOrder::Reordered],
        batch: (1, 1),
        min_sm: 75,
        tunables: &[
            Tunable {
                name: "threads",
                values: &[128, 256, 512],
                default: 256,
            },
            V6_SPLIT_K,
        ],
        // __launch_bounds__(T, 512/T) caps at 128; ptxas (CUDA 13.0): 107 sm_75, 96 sm_80-90.
        reg_budget: 128,
        hot: true,
        wide_loads: true,
        tensor_cores: false,
    },
    Variant {
        name: "gemv_v9_cluster",
        family: Family::Gemv,
        version: 9,
        description: "v6 whose split-K slices of a tile form a thread block cluster and sum through distributed shared memory (sm_90): no atomics or ticket",
        symbols: &["lab_gemv_v9_cluster_t256"],
        layout: Layout::Canonical,
        group_sizes: GROUPS,
        act_order: &[ActOrder::None, ActOrder::Reordered],
        batch: (1, 1),
        min_sm: 90,
        tunables: &[
            Tunable {
                name: "threads",
                values: &[256],
                default: 256,
            },
            // As v6's (v6_split), capped at V9_MAX_CLUSTER (the portable cluster size).
            V6_SPLIT_K,
        ],
        // v6's registers (ptxas, CUDA 13.0): 107 sm_75, 96 sm_80-90.
        reg_budget: 128,
        hot: true,
        wide_loads: true,
        tensor_cores: false,
    },
    Variant {
        name: "gemv_v10_l2x",
        family: Family::Gemv,
        version: 10,
        description: "v6 without the x staging: each chunk's x loaded from L2 with its weights, no block barrier before the weight loop (experiment after run 12; no act-order)",
        symbols: &["lab_gemv_v10_l2x_t128", "lab_gemv_v10_l2x_t256"],
        layout: Layout::Canonical,
        group_sizes: GROUPS,
        act_order: &[ActOrder::None],
        batch: (1, 1),
        min_sm: 75,
        tunables: &[
            Tunable {
                name: "threads",
                values: &[128, 256],
                default: 256,
            },
            // v6's split (v6_split), so the two differ only in how x reaches the loop.
            V6_SPLIT_K,
        ],
        // __launch_bounds__(T, 512/T) caps at 128: v6's 96 + two chunks of raw x.
        reg_budget: 128,
        hot: true,
        wide_loads: true,
        tensor_cores: false,
    },
    Variant {
        name: "gemv_cublas_f16",
        family: Family::Gemv,
        version: 0,
        description: "baseline: cuBLAS fp16 GEMM on the dequantized fp16 weights (4x the bytes)",
        symbols: &[],
        layout: Layout::Prepared,
        group_sizes: GROUPS,
        act_order: &[ActOrder::None, ActOrder::Gather],
        batch: (1, 64),
        min_sm: 75,
        tunables: &[],
        reg_budget: 0,
        hot: false,
        wide_loads: false,
        tensor_cores: false,
    },
    Variant {
        name: "gemv_dequant_cublas",
        family: Family::Gemv,
        version: 0,
        description: "baseline: dequantize int4 to an fp16 W on the GPU, then cuBLAS fp16 GEMM",
        symbols: &["lab_dequant_f16_v1"],
        layout: Layout::Canonical,
        group_sizes: GROUPS,
        // Reordered as the engine holds act-order (rows sorted by group + perm): the kernel
        // writes each row back to its checkpoint row, so `lab check` proves the prefill's path.
        act_order: &[ActOrder::None, ActOrder::Reordered],
        batch: (1, 64),
        min_sm: 75,
        tunables: &[],
        reg_budget: 40,
        hot: false,
        wide_loads: false,
        tensor_cores: false,
    },
];

/// How each gemv variant runs: which kernel body, and what it needs from the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemvKind {
    Naive,
    Vec,
    Gather,
    Perm,
    SplitK,
    /// v6: pipelined 128-column tiles, x staged in shared memory, automatic split-K.
    Pipe,
    /// v9: v6 whose split-K slices are one thread block cluster (sm_90), summed through
    /// distributed shared memory; launched with cluster dims (1, split, 1).
    PipeCluster,
    /// v10: v6 without the x staging: each chunk's x loaded from L2 with its weights (no
    /// act-order, no gated input).
    PipeL2x,
    CublasF16,
    DequantCublas,
}

/// Whether the kernel honours `lab_gemm_params.x_glu` (a fused [gate | up] x whose
/// silu(gate) * up it computes while loading; kernels/common/glu.cuh): v6, which stages x once per
/// block, and the naive v1. v2/v4/v5 load x per chunk, where the branch alone cost 6-30% with
/// x_glu = 0 (H100 run 9a5481c), so they do not (nor v3 or the cuBLAS baselines).
pub fn takes_gated_input(kind: GemvKind) -> bool {
    matches!(
        kind,
        GemvKind::Naive | GemvKind::Pipe | GemvKind::PipeCluster
    )
}

/// `takes_gated_input` for any registry variant (false outside the gemv family).
pub fn variant_takes_gated_input(v: &Variant) -> bool {
    v.family == Family::Gemv && kind(v).is_ok_and(takes_gated_input)
}

pub fn kind(v: &Variant) -> Result<GemvKind> {
    Ok(match v.name {
        "gemv_v1_naive" => GemvKind::Naive,
        "gemv_v2_vec" => GemvKind::Vec,
        "gemv_v3_gather" => GemvKind::Gather,
        "gemv_v4_perm" => GemvKind::Perm,
        "gemv_v5_splitk" => GemvKind::SplitK,
        "gemv_v6_pipe" => GemvKind::Pipe,
        "gemv_v9_cluster" => GemvKind::PipeCluster,
        "gemv_v10_l2x" => GemvKind::PipeL2x,
        "gemv_cublas_f16" => GemvKind::CublasF16,
        "gemv_dequant_cublas" => GemvKind::DequantCublas,
        other => {
            return Err(LabError::invalid(
                "gemv variant",
                format!("'{other}' has no gemv launcher"),
            ))
        }
    })
}

fn unsupported(v: &Variant, s: &LayerShape, m: usize, reason: impl Into<String>) -> LabError {
    LabError::UnsupportedShape {
        variant: v.name.to_string(),
        shape: s.describe(m),
        reason: reason.into(),
    }
}

/// Layer-time checks (no batch, no tunables): what `prepare` refuses. `unroll` is the largest
/// chunk the variant may use (the group rule must hold for every instantiation it may pick).
pub fn check_layer(v: &Variant, s: &LayerShape) -> Result<()> {
    let kind = kind(v)?;
    let bad = |r: String| Err(unsupported(v, s, 1, r));
    if s.k == 0 || s.n == 0 || s.k % 8 != 0 || s.n % 8 != 0 {
        return bad("K and N must be positive multiples of 8 (8 codes per u32 along K, 8 zeros per u32 along N)".into());
    }
    if s.k > i32::MAX as usize || s.n > i32::MAX as usize {
        return bad("K and N must fit in i32 (kernel ABI)".into());
    }
    if s.group_size == 0 || s.k % s.group_size != 0 {
        return bad(format!(
            "group size {} must divide K (or be per-channel)",
            s.group_size
        ));
    }
    match kind {
        GemvKind::Vec
        | GemvKind::Perm
        | GemvKind::SplitK
        | GemvKind::Pipe
        | GemvKind::PipeCluster
        | GemvKind::PipeL2x => {
            let max_unroll = if kind == GemvKind::Vec {
                *v.tunables
                    .iter()
                    .find(|t| t.name == "unroll")
                    .map(|t| t.values.iter().max().unwrap_or(&FIXED_UNROLL))
                    .unwrap_or(&FIXED_UNROLL) as usize
            } else {
                FIXED_UNROLL as usize
            };
            let per_channel = s.group_size == s.k;
            if !per_channel && (!s.group_size.is_power_of_two() || s.group_size < 8 * max_unroll) {
                return bad(format!(
                    "group size {} must be per-channel or a power of two >= {} (chunks of {} rows never straddle a group)",
                    s.group_size,
                    8 * max_unroll,
                    8 * max_unroll
                ));
            }
            if s.g_idx {
                return bad(match kind {
                    GemvKind::Vec => "act-order g_idx: v2 assumes group = row / G; use gemv_v4_perm (reorder) or gemv_v3_gather".into(),
                    _ => "g_idx left after the reorder (groups of unequal size): rows are not row / G; use gemv_v3_gather".into(),
                });
            }
            if s.perm && matches!(kind, GemvKind::Vec | GemvKind::PipeL2x) {
                return bad(
                    "a row permutation needs gemv_v4_perm, gemv_v5_splitk or gemv_v6_pipe".into(),
                );
            }
        }
        // The dequant writes sorted rows back to their checkpoint rows (perm), so it takes both.
        GemvKind::DequantCublas => {}
        GemvKind::Naive | GemvKind::Gather | GemvKind::CublasF16 => {
            if s.perm {
                return bad("this variant reads rows in checkpoint order; it takes g_idx, not a permutation".into());
            }
        }
    }
    Ok(())
}

/// Launch-time plan for one batch size and tunables on a device of `dev`'s SMs: all checks, then
/// the instantiation and grid.
pub fn plan(
    v: &Variant,
    s: &LayerShape,
    m: usize,
    params: &Tunables,
    dev: SmLimits,
) -> Result<LaunchPlan> {
    check_layer(v, s)?;
    let kind = kind(v)?;
    if m < v.batch.0 as usize || m > v.batch.1 as usize {
        return Err(unsupported(
            v,
            s,
            m,
            format!("batch m = {m} outside {}..={}", v.batch.0, v.batch.1),
        ));
    }
    let tiles = s.n.div_ceil(TILE_N) as u32;
    let kw = s.k / 8;
    let mut p = LaunchPlan {
        symbol: String::new(),
        grid: (tiles, 1, 1),
        block: (1, 1, 1),
        split_k: 1,
        k_slice: s.k as u32,
        cluster_y: 1,
    };
    match kind {
        GemvKind::Naive => {
            let t = tunable(v, params, "threads")?;
            p.symbol = "lab_gemv_v1_naive".into();
            p.block = (t, 1, 1);
            p.grid = (s.n.div_ceil(t as usize) as u32, m as u32, 1);
        }
        GemvKind::Vec => {
            let t = tunable(v, params, "threads")?;
            let u = tunable(v, params, "unroll")?;
            p.symbol = format!("lab_gemv_v2_t{t}_u{u}");
            p.block = (t, 1, 1);
        }
        GemvKind::Gather => {
            let t = tunable(v, params, "threads")?;
            p.symbol = format!("lab_gemv_v3_gather_t{t}");
            p.block = (t, 1, 1);
        }
        GemvKind::Perm => {
            let t = tunable(v, params, "threads")?;
            p.symbol = format!("lab_gemv_v4_perm_t{t}");
            p.block = (t, 1, 1);
        }
        GemvKind::SplitK => {
            let t = tunable(v, params, "threads")?;
            let split = tunable(v, params, "split_k")? as usize;
            // Slices of whole chunks (8 * FIXED_UNROLL rows) so chunks stay group-aligned;
            // recount so that no slice is empty (k = 4224, split 8 -> 17 words... see tests).
            let chunk_words = FIXED_UNROLL as usize;
            let slice_words = kw.div_ceil(split).div_ceil(chunk_words) * chunk_words;
            let slices = kw.div_ceil(slice_words);
            p.symbol = format!("lab_gemv_v5_splitk_t{t}");
            p.block = (t, 1, 1);
            p.grid = (tiles, slices as u32, 1);
            p.split_k = slices as u32;
            p.k_slice = (slice_words * 8) as u32;
        }
        GemvKind::Pipe | GemvKind::PipeCluster | GemvKind::PipeL2x => {
            let t = tunable(v, params, "threads")?;
            let mut want = tunable(v, params, "split_k")?;
            if kind == GemvKind::PipeCluster {
                // v6's automatic split, capped at the portable cluster size.
                let auto = v6_split(s.k, s.n, t, 0, dev.sms).slices;
                want = if want == 0 { auto } else { want }.min(V9_MAX_CLUSTER);
            }
            let split = v6_split(s.k, s.n, t, want, dev.sms);
            if kind == GemvKind::PipeCluster && split.slices > V9_MAX_CLUSTER {
                // K over 8 x 4096 rows: more slices than a portable cluster holds.
                return Err(unsupported(
                    v,
                    s,
                    m,
                    format!(
                        "needs {} K slices of <= {V6_XS_ROWS} rows, more than a cluster of {V9_MAX_CLUSTER}",
                        split.slices
                    ),
                ));
            }
            p.symbol = format!("lab_{}_t{t}", v.name);
            p.block = (t, 1, 1);
            p.grid = (s.n.div_ceil(V6_TILE_N) as u32, split.slices, 1);
            p.split_k = split.slices;
            p.k_slice = split.k_slice;
            if kind == GemvKind::PipeCluster {
                p.cluster_y = split.slices;
            }
        }
        GemvKind::DequantCublas => {
            p.symbol = "lab_dequant_f16_v1".into();
            p.block = (128, 1, 1);
            p.grid = (s.n.div_ceil(128) as u32, kw as u32, 1);
        }
        GemvKind::CublasF16 => {}
    }
    if !p.symbol.is_empty() && !v.symbols.contains(&p.symbol.as_str()) {
        return Err(LabError::invalid(
            "tunables",
            format!(
                "variant {}: instantiation {} is not compiled (registry lists {:?})",
                v.name, p.symbol, v.symbols
            ),
        ));
    }
    if p.grid.1 > 65535 {
        return Err(unsupported(v, s, m, "grid.y over 65535".to_string()));
    }
    Ok(p)
}

/// v9: the most K slices (= blocks of a cluster) it launches: the portable cluster size.
pub const V9_MAX_CLUSTER: u32 = 8;

/// v6 (kernels/gemv/gemv_v6_pipe.cu): output columns per block (32 lanes x 4 columns).
pub const V6_TILE_N: usize = super::abi::LAB_GEMV_V6_TILE_N as usize;
/// v6: packed rows per warp chunk (32 k-rows: a chunk never straddles a group of >= 32 rows).
pub const V6_CHUNK_WORDS: usize = super::abi::LAB_GEMV_V6_CHUNK_WORDS as usize;
/// v6: x rows one block stages in shared memory, i.e. the largest K slice.
pub const V6_XS_ROWS: usize = super::abi::LAB_GEMV_V6_XS_ROWS as usize;
/// v6: resident threads per SM the launch bounds promise (blocks per SM = this / threads).
pub const V6_THREADS_PER_SM: usize = super::abi::LAB_GEMV_V6_THREADS_PER_SM as usize;
/// v6: largest automatic split (the dispatcher's split-K cap; tickets and partials are per
/// column, so the workspace does not grow with it).
pub const V6_MAX_AUTO_SPLIT: usize = 16;

/// How v6 cuts K: `slices` blocks along grid.y, each `k_slice` rows (the last may be shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V6Split {
    pub slices: u32,
    pub k_slice: u32,
}

/// v6's K split for a K x N layer at `threads` per block on `sms` SMs. `requested` = 0 picks
/// automatically: as many slices as fill the resident slots of the device (V6_THREADS_PER_SM /
/// threads blocks per SM) with N/128 column tiles, but no slice shorter than two chunks per warp
/// (the pipeline needs a next chunk to overlap), at most V6_MAX_AUTO_SPLIT. Any request is raised
/// to ceil(K / V6_XS_ROWS) (the x buffer), then slices are whole chunks and none is empty.
/// H100 figures (132 SMs, threads 256, 264 slots): 4096x11008 -> 3, 11008x4096 -> 8, 5120x13824
/// -> 2, 13824x5120 -> 6 (kernels/gemv/gemv_v6_pipe.cu has the table). An RTX 3060 (28 SMs, 56
/// slots): 4096x4096 -> 1 (32 tiles already fill it; at 132 SMs' 8 slices it would run 4.6 waves
/// with 8x the x staging and split-K atomics), 11008x4096 -> 3 (the x buffer's minimum).
pub fn v6_split(k: usize, n: usize, threads: u32, requested: u32, sms: u32) -> V6Split {
    let kw = (k / 8).max(1);
    let warps = (threads as usize / 32).max(1);
    let min_split = k.div_ceil(V6_XS_ROWS).max(1);
    let want = if requested == 0 {
        let slots = sms.max(1) as usize * (V6_THREADS_PER_SM / threads as usize).max(1);
        let tiles = n.div_ceil(V6_TILE_N).max(1);
        let longest = (kw / (2 * V6_CHUNK_WORDS * warps)).max(1);
        (slots / tiles).clamp(1, V6_MAX_AUTO_SPLIT).min(longest)
    } else {
        requested as usize
    };
    let split = want.max(min_split);
    let slice_words = kw.div_ceil(split).div_ceil(V6_CHUNK_WORDS) * V6_CHUNK_WORDS;
    V6Split {
        slices: kw.div_ceil(slice_words) as u32,
        k_slice: (slice_words * 8) as u32,
    }
}

/// v6's tunables for a launch of at most one 256-thread block per SM on a `sms`-SM device (the
/// decode bench's "v6, one block per SM" column): the largest tunable split (1, 2, 4, 8) with
/// column tiles x split <= SMs (at least 1, raised by `v6_split` to what the x buffer needs). Why: at v6's usual ~2 blocks per SM (96 registers x 512
/// threads) the next kernel's blocks cannot be resident until this one's retire, so under PDL
/// their weight prefetch only starts in the tail; at one block per SM a whole v6 block (and the
/// 512-thread RMSNorm: 40960 registers, exactly the rest) fits beside it, so the next GEMV's
/// prefetch can run while this one streams (notes/kernels.md "v6 one block per SM").
pub fn v6_one_block_per_sm(base: &Tunables, n: usize, sms: usize) -> Tunables {
    let tiles = n.div_ceil(V6_TILE_N).max(1);
    // The largest of the tunable's split values (1, 2, 4, 8) that keeps tiles x split <= sms.
    let split = [8u32, 4, 2, 1]
        .into_iter()
        .find(|&s| tiles * s as usize <= sms)
        .unwrap_or(1);
    let mut t = base.clone();
    t.insert("threads".into(), 256);
    t.insert("split_k".into(), split);
    t
}

/// Bytes a launch must move at least (weights + scales + zeros + x + y [+ g_idx/perm]): the floor
/// of the roofline for a memory-bound GEMV.
pub fn bytes_moved(v: &Variant, s: &LayerShape, m: usize) -> u64 {
    let (k, n, g) = (s.k as u64, s.n as u64, (s.k / s.group_size.max(1)) as u64);
    let xy = 2 * m as u64 * (k + n);
    match kind(v) {
        Ok(GemvKind::CublasF16) => 2 * k * n + xy,
        _ => {
            let zeros = if s.symmetric { 0 } else { g * n / 2 };
            let rows = if s.g_idx || s.perm { 4 * k } else { 0 };
            k * n / 2 + 2 * g * n + zeros + rows + xy + if s.bias { 2 * n } else { 0 }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::registry;
    use std::collections::BTreeMap;

    fn shape(k: usize, n: usize, g: usize) -> LayerShape {
        LayerShape {
            k,
            n,
            group_size: g,
            g_idx: false,
            perm: false,
            bias: false,
            symmetric: false,
        }
    }
    fn v(name: &str) -> &'static Variant {
        registry::by_name(name).expect(name)
    }
    fn params(kv: &[(&str, u32)]) -> Tunables {
        kv.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }
    /// `super::plan` on an H100 (the SM count only moves v6 / v9 / v10's automatic split, which
    /// `v6_split`'s own test covers at other counts).
    fn plan(v: &Variant, s: &LayerShape, m: usize, p: &Tunables) -> Result<LaunchPlan> {
        super::plan(v, s, m, p, SmLimits::H100)
    }

    fn is_unsupported(r: Result<LaunchPlan>) -> String {
        match r {
            Err(LabError::UnsupportedShape {
                variant,
                shape,
                reason,
            }) => {
                format!("{variant} {shape} {reason}")
            }
            other => panic!("expected UnsupportedShape, got {other:?}"),
        }
    }

    #[test]
    fn every_tunable_combination_names_a_registered_symbol() {
        for var in VARIANTS {
            let mut combos: Vec<Tunables> = vec![BTreeMap::new()];
            for t in var.tunables {
                combos = combos
                    .into_iter()
                    .flat_map(|c| {
                        t.values.iter().map(move |&x| {
                            let mut c = c.clone();
                            c.insert(t.name.to_string(), x);
                            c
                        })
                    })
                    .collect();
            }
            let mut used = std::collections::HashSet::new();
            for c in &combos {
                let p = plan(var, &shape(4096, 4096, 128), 1, c).unwrap();
                if !p.symbol.is_empty() {
                    used.insert(p.symbol.clone());
                }
            }
            // And every compiled symbol is reachable from some combination.
            for s in var.symbols {
                assert!(
                    used.contains(*s),
                    "{}: symbol {s} is never launched",
                    var.name
                );
            }
        }
    }

    #[test]
    fn split_k_slices_are_chunk_aligned_non_empty_and_cover_k() {
        for k in [256usize, 264, 288, 4096, 4224, 11008, 13824] {
            for split in [2u32, 3, 4, 6, 8] {
                let p = plan(
                    v("gemv_v5_splitk"),
                    &shape(k, 4096, k),
                    1,
                    &params(&[("split_k", split)]),
                )
                .unwrap();
                let (slices, ks) = (p.split_k as usize, p.k_slice as usize);
                assert_eq!(
                    ks % 32,
                    0,
                    "k={k} split={split}: slice {ks} not a chunk multiple"
                );
                assert!(slices >= 1 && slices <= split as usize);
                assert!(slices * ks >= k, "k={k}: slices do not cover K");
                assert!((slices - 1) * ks < k, "k={k}: last slice empty");
                assert_eq!(p.grid.1 as usize, slices);
            }
        }
    }

    #[test]
    fn shapes_that_must_be_refused_are_unsupported_shape_errors() {
        let v2 = v("gemv_v2_vec");
        // Group 16: chunks of 32 rows would straddle groups.
        assert!(
            is_unsupported(plan(v2, &shape(4096, 4096, 16), 1, &params(&[])))
                .contains("power of two")
        );
        // Group 96: not a power of two (and divides K = 4224 - 96*44).
        assert!(
            is_unsupported(plan(v2, &shape(4224, 4096, 96), 1, &params(&[])))
                .contains("power of two")
        );
        // Group that does not divide K.
        assert!(
            is_unsupported(plan(v2, &shape(4160, 4096, 128), 1, &params(&[]))).contains("divide")
        );
        // N not a multiple of 8.
        assert!(
            is_unsupported(plan(v2, &shape(4096, 4100, 128), 1, &params(&[])))
                .contains("multiples of 8")
        );
        // K not a multiple of 8.
        assert!(is_unsupported(plan(
            v("gemv_v1_naive"),
            &shape(4100, 4096, 4100),
            1,
            &params(&[])
        ))
        .contains("multiples of 8"));
        // Batch 2 on a batch-1 kernel, batch 65 on v1.
        assert!(
            is_unsupported(plan(v2, &shape(4096, 4096, 128), 2, &params(&[]))).contains("batch")
        );
        assert!(is_unsupported(plan(
            v("gemv_v1_naive"),
            &shape(4096, 4096, 128),
            65,
            &params(&[])
        ))
        .contains("batch"));
        // Act-order g_idx on v2 and a leftover g_idx on v4.
        let mut act = shape(4096, 4096, 128);
        act.g_idx = true;
        assert!(is_unsupported(plan(v2, &act, 1, &params(&[]))).contains("gemv_v4_perm"));
        assert!(
            is_unsupported(plan(v("gemv_v4_perm"), &act, 1, &params(&[])))
                .contains("gemv_v3_gather")
        );
        // v3 accepts any g_idx.
        assert!(plan(v("gemv_v3_gather"), &act, 1, &params(&[])).is_ok());
        // A permutation on a variant that reads checkpoint order.
        let mut perm = shape(4096, 4096, 128);
        perm.perm = true;
        assert!(
            is_unsupported(plan(v("gemv_v3_gather"), &perm, 1, &params(&[])))
                .contains("permutation")
        );
        // ...or on a variant whose kernel takes no perm pointer (v2, v10: x read unpermuted).
        for name in ["gemv_v2_vec", "gemv_v10_l2x"] {
            let msg = is_unsupported(plan(v(name), &perm, 1, &params(&[])));
            assert!(
                msg.contains(name)
                    && msg.contains(
                        "a row permutation needs gemv_v4_perm, gemv_v5_splitk or gemv_v6_pipe"
                    ),
                "{msg}"
            );
        }
        // The error names the variant and the shape.
        let msg = is_unsupported(plan(v2, &shape(4096, 4100, 128), 1, &params(&[])));
        assert!(
            msg.contains("gemv_v2_vec") && msg.contains("4096") && msg.contains("4100"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_or_out_of_list_tunables_are_refused() {
        let v2 = v("gemv_v2_vec");
        let s = shape(4096, 4096, 128);
        let e = plan(v2, &s, 1, &params(&[("threads", 384)]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("gemv_v2_vec") && e.contains("threads = 384 is not one of [128, 256, 512]"),
            "{e}"
        );
        let e = plan(v2, &s, 1, &params(&[("thread", 256)]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("gemv_v2_vec") && e.contains("no tunable 'thread'"),
            "{e}"
        );
        let p = plan(v2, &s, 1, &params(&[("threads", 512), ("unroll", 2)])).unwrap();
        assert_eq!(p.symbol, "lab_gemv_v2_t512_u2");
        assert_eq!(p.grid, (128, 1, 1));
        assert_eq!(p.block, (512, 1, 1));
    }

    #[test]
    fn v6_one_block_per_sm_launches_at_most_one_wave_of_one_block_per_sm() {
        // The 7B / 13B decode shapes on 132 SMs: tiles x slices <= 132 blocks of 256 threads,
        // unless the tiles alone (7B gate|up) or the x buffer's minimum split (K 5120 > 4096
        // rows: 2 slices, so 13B's q|k|v and gate|up stay at 2+ blocks per SM) need more.
        let v = registry::by_name("gemv_v6_pipe").unwrap();
        for (k, n, blocks) in [
            (4096, 12288, 96),
            (4096, 4096, 128),
            (4096, 22016, 172),
            (11008, 4096, 128),
            (5120, 15360, 240),
            (5120, 5120, 80),
            (5120, 27648, 432),
            (13824, 5120, 160),
        ] {
            let s = shape(k, n, 128);
            let t = v6_one_block_per_sm(&Tunables::new(), n, 132);
            let p = plan(v, &s, 1, &t).unwrap();
            assert_eq!(p.block.0, 256, "{k}x{n}");
            assert_eq!(p.grid.0 * p.grid.1, blocks, "{k}x{n}: {p:?}");
            let tiles = n.div_ceil(V6_TILE_N) as u32;
            let min_split = k.div_ceil(V6_XS_ROWS) as u32;
            assert!(blocks <= 132.max(tiles * min_split), "{k}x{n}");
        }
    }

    /// "tiles x split <= SMs" includes equality: on 128 SMs a 4096-wide layer (4096 / 128 = 32
    /// column tiles) takes split 4, exactly 128 blocks, one per SM; one SM fewer leaves room for
    /// split 2 only (64 blocks), and a 3-SM surplus does not reach split 8.
    #[test]
    fn v6_one_block_per_sm_uses_every_sm_when_tiles_times_split_equals_them() {
        assert_eq!(4096 / V6_TILE_N, 32);
        let split = |sms: usize| v6_one_block_per_sm(&Tunables::new(), 4096, sms)["split_k"];
        assert_eq!(split(128), 4);
        assert_eq!(split(127), 2);
        assert_eq!(split(131), 4);
        assert_eq!(split(256), 8);
        assert_eq!(split(32), 1);
    }

    #[test]
    fn v6_split_fills_the_sms_fits_the_x_buffer_and_covers_k() {
        // The design table of kernels/gemv/gemv_v6_pipe.cu (threads 256, 132 SMs x 2 blocks), then
        // an RTX 3060's 28 SMs (56 slots): the 32-tile square layer is not split at all, the
        // 11008-row down projection only as far as the 8 KB x buffer needs (3), where 132 SMs' plan
        // would split them 8 ways; an RTX 4090's 128 SMs are within one slice of the H100's.
        for (sms, k, n, slices, k_slice) in [
            (132, 4096, 11008, 3, 1376),
            (132, 11008, 4096, 8, 1376),
            (132, 5120, 13824, 2, 2560),
            (132, 13824, 5120, 6, 2304),
            (132, 4096, 4096, 8, 512),
            (28, 4096, 4096, 1, 4096),
            (28, 4096, 12288, 1, 4096),
            (28, 11008, 4096, 3, 3680),
            (28, 13824, 5120, 4, 3456),
            (128, 4096, 4096, 8, 512),
            (128, 11008, 4096, 8, 1376),
        ] {
            let s = v6_split(k, n, 256, 0, sms);
            assert_eq!(
                (s.slices, s.k_slice),
                (slices, k_slice),
                "{k}x{n} on {sms} SMs"
            );
        }
        for sms in [1u32, 28, 82, 132, 170] {
            for k in [8usize, 264, 4096, 4104, 8200, 11008, 13824, 28672] {
                for n in [8usize, 4096, 22016] {
                    for t in [128u32, 256, 512] {
                        for req in [0u32, 1, 2, 4, 8] {
                            let s = v6_split(k, n, t, req, sms);
                            let (sl, ks) = (s.slices as usize, s.k_slice as usize);
                            let what = format!("k={k} n={n} t={t} req={req} sms={sms}: {s:?}");
                            assert!(ks <= V6_XS_ROWS, "{what}: slice over the x buffer");
                            assert_eq!(ks % (8 * V6_CHUNK_WORDS), 0, "{what}: not whole chunks");
                            assert!(sl * ks >= k && (sl - 1) * ks < k, "{what}: empty or short");
                            let min_split = k.div_ceil(V6_XS_ROWS);
                            if req > 0 {
                                assert!(sl <= (req as usize).max(min_split), "{what}");
                            } else {
                                // Automatic: no more blocks than the device's slots, unless the
                                // x buffer alone asks for more slices.
                                let slots = sms as usize * (V6_THREADS_PER_SM / t as usize).max(1);
                                let tiles = n.div_ceil(V6_TILE_N);
                                assert!(
                                    sl <= min_split.max(slots / tiles).max(1),
                                    "{what}: over the device's slots"
                                );
                            }
                        }
                    }
                }
            }
        }
        // Automatic: never a slice shorter than two chunks per warp when K allows one.
        let s = v6_split(4096, 8, 512, 0, 132);
        assert!(s.k_slice as usize >= 2 * V6_CHUNK_WORDS * 16 * 8, "{s:?}");
    }

    #[test]
    fn a_launch_plan_splits_for_the_device_it_runs_on() {
        // The same layer and tunables: v6's grid follows the SM count, v2's does not.
        let s = shape(4096, 4096, 128);
        let rtx3060 = SmLimits {
            sms: 28,
            ..SmLimits::H100
        };
        let v6 = v("gemv_v6_pipe");
        let (h, c) = (
            super::plan(v6, &s, 1, &params(&[]), SmLimits::H100).unwrap(),
            super::plan(v6, &s, 1, &params(&[]), rtx3060).unwrap(),
        );
        assert_eq!((h.grid, h.split_k), ((32, 8, 1), 8));
        assert_eq!((c.grid, c.split_k, c.k_slice), ((32, 1, 1), 1, 4096));
        let v2 = v("gemv_v2_vec");
        assert_eq!(
            super::plan(v2, &s, 1, &params(&[]), SmLimits::H100).unwrap(),
            super::plan(v2, &s, 1, &params(&[]), rtx3060).unwrap()
        );
    }

    #[test]
    fn v9_plans_v6s_tiles_as_clusters_of_at_most_eight_slices() {
        let (v6, v9) = (v("gemv_v6_pipe"), v("gemv_v9_cluster"));
        for (k, n) in [(4096, 11008), (11008, 4096), (5120, 13824), (13824, 5120)] {
            let s = shape(k, n, 128);
            let p6 = plan(v6, &s, 1, &params(&[])).unwrap();
            let p9 = plan(v9, &s, 1, &params(&[])).unwrap();
            assert_eq!(p9.symbol, "lab_gemv_v9_cluster_t256");
            assert_eq!(p6.cluster_y, 1, "v6 launches no cluster");
            // v6's automatic split is <= 8 at the decode shapes: the same grid, one cluster per tile.
            assert_eq!((p9.grid, p9.k_slice), (p6.grid, p6.k_slice), "{k}x{n}");
            assert_eq!(p9.cluster_y, p9.grid.1, "{k}x{n}");
        }
        // A requested split above the cluster cap is capped; the x buffer's minimum still holds.
        let p = plan(v9, &shape(4096, 4096, 128), 1, &params(&[("split_k", 8)])).unwrap();
        assert!(p.cluster_y <= V9_MAX_CLUSTER && p.cluster_y == p.grid.1);
        // K needing more than 8 slices of 4096 rows cannot be one cluster: refused, named.
        let msg = is_unsupported(plan(v9, &shape(36864, 4096, 128), 1, &params(&[])));
        assert!(msg.contains("cluster"), "{msg}");
        assert!(plan(v6, &shape(36864, 4096, 128), 1, &params(&[])).is_ok());
    }

    #[test]
    fn v6_plan_names_the_instantiation_and_refuses_what_the_tile_cannot_do() {
        let v6 = v("gemv_v6_pipe");
        let p = plan(
            v6,
            &shape(13824, 5120, 128),
            1,
            &params(&[("threads", 512)]),
        )
        .unwrap();
        assert_eq!(p.symbol, "lab_gemv_v6_pipe_t512");
        assert_eq!(p.grid, (40, p.split_k, 1));
        assert!(p.split_k >= 4, "13824 rows need >= 4 slices of <= 4096");
        let mut act = shape(4096, 4096, 128);
        act.perm = true;
        assert!(plan(v6, &act, 1, &params(&[])).is_ok());
        act.g_idx = true;
        assert!(is_unsupported(plan(v6, &act, 1, &params(&[]))).contains("gemv_v3_gather"));
        assert!(
            is_unsupported(plan(v6, &shape(4096, 4096, 16), 1, &params(&[])))
                .contains("power of two")
        );
        assert!(
            is_unsupported(plan(v6, &shape(4096, 4096, 128), 2, &params(&[]))).contains("batch")
        );
    }

    #[test]
    fn bytes_moved_counts_each_tensor_once_at_its_packed_size() {
        // 4096 x 4096, group 128 (32 groups), m = 1, by hand:
        //   codes  K/8 * N * 4 B       = 512 * 4096 * 4 = 8_388_608
        //   scales groups * N * 2 B    =  32 * 4096 * 2 =   262_144
        //   zeros  groups * N/8 * 4 B  =  32 *  512 * 4 =    65_536 (asymmetric only)
        //   x      m * K * 2 B         =                      8_192
        //   y      m * N * 2 B         =                      8_192
        //   perm / g_idx  K * 4 B      =                     16_384
        //   bias   N * 2 B             =                      8_192
        let mut s = shape(4096, 4096, 128);
        s.symmetric = true;
        let v2 = v("gemv_v2_vec");
        assert_eq!(bytes_moved(v2, &s, 1), 8_667_136, "symmetric");
        s.symmetric = false;
        assert_eq!(bytes_moved(v2, &s, 1), 8_732_672, "asymmetric");
        let mut perm = s;
        perm.perm = true;
        assert_eq!(bytes_moved(v("gemv_v4_perm"), &perm, 1), 8_749_056, "perm");
        let mut g_idx = s;
        g_idx.g_idx = true;
        assert_eq!(
            bytes_moved(v("gemv_v3_gather"), &g_idx, 1),
            8_749_056,
            "g_idx"
        );
        let mut bias = s;
        bias.bias = true;
        assert_eq!(bytes_moved(v2, &bias, 1), 8_740_864, "bias");
        // x and y scale with m: m = 3 on v1 adds 2 * (8_192 + 8_192).
        assert_eq!(bytes_moved(v("gemv_v1_naive"), &s, 3), 8_765_440, "m = 3");
        // The fp16 baseline reads K * N * 2 B of weights (33_554_432) and nothing quantized.
        assert_eq!(
            bytes_moved(v("gemv_cublas_f16"), &s, 1),
            33_570_816,
            "cublas f16"
        );
        // Per-channel (group = K): one group.
        assert_eq!(
            bytes_moved(v2, &shape(4096, 4096, 4096), 1),
            8_388_608 + 8_192 + 2_048 + 16_384,
            "per-channel"
        );
    }

    #[test]
    fn tile_grid_covers_odd_n() {
        let p = plan(v("gemv_v2_vec"), &shape(4096, 200, 128), 1, &params(&[])).unwrap();
        assert_eq!(p.grid.0, 7); // 7 x 32 = 224 >= 200 > 192
        let p = plan(v("gemv_v1_naive"), &shape(4096, 200, 128), 3, &params(&[])).unwrap();
        assert_eq!(p.grid, (2, 3, 1));
    }
}
