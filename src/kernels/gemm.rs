//! The batch 2..64 dequant-GEMM family (kernels/gemm/): its registry rows, host-side shape
//! validation, the split-K choice, the launch plan (which symbols, grids and shared memory), the
//! load-time `prepare` step, and the launch itself.
//!
//! Launch contract (both versions): params.x fp16 [m, k], y fp16 [m, n]; split_k > 1 needs an fp32
//! workspace of m * n floats which `launch` zeroes, after which the K slices add into it with atomics
//! and `*_finish` writes y = fp16(workspace + bias). Nothing is padded in the caller's buffers.

use crate::cuda::{Gpu, SmLimits};
use crate::error::DriverCtx;
use crate::gptq::reorder::reorder_by_group;
use crate::gptq::QuantLinear;
use crate::kernels::abi::{self, lab_gemm_params};
use crate::kernels::gemm_layout;
use crate::kernels::launch::{tunable, LaunchPlan, LayerShape, Tunables};
use crate::kernels::layer::DeviceLayer;
use crate::kernels::registry::{ActOrder, Family, Layout, Tunable, Variant};
use crate::{LabError, Result};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, PushKernelArg};
use half::f16;

const V1_BN: u32 = abi::LAB_GEMM_V1_BN;
const V1_BK: u32 = abi::LAB_GEMM_V1_BK;
const V2_BN: u32 = abi::LAB_GEMM_V2_BN;
const V2_BK: u32 = abi::LAB_GEMM_V2_BK;
const V2_STAGES: u32 = abi::LAB_GEMM_V2_STAGES;

/// split_k values the tuner may try; 0 = the built-in heuristic (`auto_split`).
const SPLIT_K: Tunable = Tunable {
    name: "split_k",
    values: &[0, 1, 2, 4, 8, 16, 32],
    default: 0,
};

pub static VARIANTS: &[Variant] = &[
    Variant {
        name: "gemm_v1_simt",
        family: Family::Gemm,
        version: 1,
        description: "SIMT tiles: 64 columns x 16|64 rows per block, weights dequantized once per 32-row K step into smem, fp32 FMA, split-K atomics",
        symbols: &[
            "lab_gemm_v1_simt_m16",
            "lab_gemm_v1_simt_m64",
            "lab_gemm_v1_finish",
        ],
        layout: Layout::Canonical,
        group_sizes: &[32, 64, 128, -1],
        act_order: &[ActOrder::None, ActOrder::Reordered],
        batch: (2, 64),
        min_sm: 75,
        tunables: &[SPLIT_K],
        // ptxas (CUDA 13.0): 78 registers on sm_75 for the m64 tile, 54 on sm_80/90.
        reg_budget: 96,
        hot: true,
        wide_loads: false,
        tensor_cores: false,
    },
    Variant {
        name: "gemm_v2_mma",
        family: Family::Gemm,
        version: 2,
        description: "mma.sync m16n8k16 fp32-accumulate, weights prepared in B-fragment order, 4-stage cp.async (evict-first weights), lop3 magic dequant, split-K atomics",
        symbols: &[
            "lab_gemm_v2_mma_m16",
            "lab_gemm_v2_mma_m32",
            "lab_gemm_v2_mma_m48",
            "lab_gemm_v2_mma_m64",
            "lab_gemm_v2_finish",
        ],
        layout: Layout::Prepared,
        group_sizes: &[32, 64, 128, -1],
        act_order: &[ActOrder::None, ActOrder::Reordered],
        batch: (2, 64),
        min_sm: 80,
        tunables: &[SPLIT_K],
        // ptxas (CUDA 13.0): 124 registers for m64 on sm_80, 122 on sm_90; 128 keeps 2 blocks/SM.
        reg_budget: 128,
        hot: true,
        wide_loads: false,
        tensor_cores: true,
    },
];

fn is_v2(v: &Variant) -> bool {
    v.name == "gemm_v2_mma"
}

fn unsupported(v: &Variant, p: &lab_gemm_params, reason: impl Into<String>) -> LabError {
    LabError::UnsupportedShape {
        variant: v.name.to_string(),
        shape: format!(
            "m={} n={} k={} group_size={} split_k={} k_slice={}",
            p.m, p.n, p.k, p.group_size, p.split_k, p.k_slice
        ),
        reason: reason.into(),
    }
}

/// K rows per pipeline step; k_slice must be a multiple of it.
pub fn k_step(v: &Variant) -> u32 {
    if is_v2(v) {
        V2_BK
    } else {
        V1_BK
    }
}

/// Columns per block.
pub fn block_n(v: &Variant) -> u32 {
    if is_v2(v) {
        V2_BN
    } else {
        V1_BN
    }
}

/// Everything the kernels assume, checked on the host: a bad launch is a typed error naming the
/// variant and the shape, never a wrong result. `sm` is the device's compute capability (e.g. 90).
pub fn validate(v: &Variant, p: &lab_gemm_params, sm: u32) -> Result<()> {
    if v.family != Family::Gemm {
        return Err(unsupported(v, p, "not a GEMM-family variant"));
    }
    if sm < v.min_sm {
        return Err(unsupported(
            v,
            p,
            format!("needs sm_{} or newer, device is sm_{sm}", v.min_sm),
        ));
    }
    let (lo, hi) = v.batch;
    if p.m < lo as i32 || p.m > hi as i32 {
        return Err(unsupported(v, p, format!("m must be in {lo}..={hi}")));
    }
    if p.k <= 0 || p.n <= 0 || p.k % 8 != 0 {
        return Err(unsupported(
            v,
            p,
            "k and n must be positive, k a multiple of 8",
        ));
    }
    if p.n % 8 != 0 {
        return Err(unsupported(v, p, "n must be a multiple of 8"));
    }
    let per_channel = p.group_size == p.k;
    if !per_channel && !v.group_sizes.contains(&p.group_size) {
        return Err(unsupported(
            v,
            p,
            format!(
                "group_size must be one of {:?} or k (per-channel)",
                v.group_sizes
            ),
        ));
    }
    if p.groups != (p.k + p.group_size - 1) / p.group_size {
        return Err(unsupported(
            v,
            p,
            format!("groups = {} is not ceil(k / group_size)", p.groups),
        ));
    }
    if p.g_idx != 0 {
        return Err(unsupported(
            v,
            p,
            "g_idx gather is not supported: prepare() sorts rows by group and passes perm",
        ));
    }
    match p.zero_mode as u32 {
        abi::LAB_ZEROS_SYMMETRIC => {}
        abi::LAB_ZEROS_TRUE if p.qzeros != 0 => {}
        abi::LAB_ZEROS_TRUE => return Err(unsupported(v, p, "zero_mode TRUE needs qzeros")),
        z => return Err(unsupported(v, p, format!("unknown zero_mode {z}"))),
    }
    let step = k_step(v) as i32;
    if p.split_k < 1 || p.k_slice <= 0 || p.k_slice % step != 0 {
        return Err(unsupported(
            v,
            p,
            format!("split_k >= 1 and k_slice a positive multiple of {step}"),
        ));
    }
    // Every slice non-empty, together covering k exactly.
    let covered = p.split_k as i64 * p.k_slice as i64;
    if covered < p.k as i64 || (p.split_k as i64 - 1) * p.k_slice as i64 >= p.k as i64 {
        return Err(unsupported(
            v,
            p,
            "split_k * k_slice must cover k with no empty slice",
        ));
    }
    if p.split_k > 1 && p.workspace == 0 {
        return Err(unsupported(
            v,
            p,
            "split_k > 1 needs an fp32 [m, n] workspace",
        ));
    }
    if p.x == 0 || p.qweight == 0 || p.scales == 0 || p.y == 0 {
        return Err(unsupported(v, p, "x, qweight, scales and y must be set"));
    }
    // cp.async moves 16 bytes; v1 reads 4-byte words. y is written as half2 by v2.
    let aligned = |ptr: u64| ptr % 16 == 0;
    if ![p.x, p.qweight, p.scales, p.qzeros, p.perm]
        .into_iter()
        .all(aligned)
        || p.y % 4 != 0
    {
        return Err(unsupported(
            v,
            p,
            "x, qweight, scales, qzeros, perm must be 16-byte aligned, y 4-byte aligned",
        ));
    }
    Ok(())
}

/// The split-K choice when untuned: enough blocks for the device's resident slots (two per SM,
/// or one where the block's shared memory leaves room for only one: v2's 55-73 KB tiles of m > 16
/// on the 100 KB SMs of sm_86/89, where a second "slot" would only be a second wave of split-K
/// atomics), limited so that the fp32 atomics (m * n * 4 bytes per slice, L2 traffic) stay under
/// half the weight bytes (k * n / 2): split <= k / (16 m). Returns (split_k, k_slice).
///
/// 7B q/k/v/o (k = n = 4096) on an H100 (132 SMs, 2 blocks each), v2 (256 columns per block -> 16
/// blocks): m = 2..16: split 16, k_slice 256, 256 blocks; m = 32: split 8, 128 blocks; m = 64:
/// split 4, 64. On an RTX 4090 (128 SMs of 100 KB): m = 32 -> 1 block per SM, split 8.
pub fn auto_split(v: &Variant, m: u32, n: u32, k: u32, dev: SmLimits) -> (i32, i32) {
    let step = k_step(v);
    let blocks_n = n.div_ceil(block_n(v)) * if is_v2(v) { 1 } else { m.div_ceil(64) };
    let per_sm = if is_v2(v) {
        dev.blocks_per_sm(v2_smem_bytes(v2_mtiles(m)), 2)
    } else {
        2 // v1: static shared memory only (m64: (32 x 68 + 32 x 64) floats = 16.9 KB), two fit anywhere
    };
    let want = (per_sm * dev.sms).div_ceil(blocks_n.max(1));
    let traffic_cap = (k / (16 * m.max(1))).max(1);
    let steps = k.div_ceil(step);
    let split = want.min(traffic_cap).min(steps).max(1);
    fit_split(k, step, split)
}

/// v2's m16 tiles for a batch of m rows (1..=4: the instantiation `plan` picks).
fn v2_mtiles(m: u32) -> u32 {
    m.div_ceil(16).clamp(1, 4)
}

/// (split_k, k_slice) for a requested split: k_slice rounded up to the K step, split recomputed so
/// that no slice is empty.
pub fn fit_split(k: u32, step: u32, split: u32) -> (i32, i32) {
    let slice = k.div_ceil(split.max(1)).div_ceil(step) * step;
    (k.div_ceil(slice) as i32, slice as i32)
}

/// One kernel launch of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchStep {
    pub symbol: &'static str,
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub smem_bytes: u32,
}

/// Dynamic shared memory of the v2 kernel for `mt` m16 tiles (4 stages).
pub fn v2_smem_bytes(mt: u32) -> u32 {
    V2_STAGES * (abi::LAB_GEMM_V2_STAGE_FIXED_BYTES + mt * abi::LAB_GEMM_V2_STAGE_BYTES_PER_MTILE)
}

/// What `launch` runs for these (validated) params: the main kernel, then the finish pass when
/// split_k > 1. Bytes of workspace needed: `workspace_bytes`.
pub fn plan(v: &Variant, p: &lab_gemm_params) -> Vec<LaunchStep> {
    let (m, n) = (p.m as u32, p.n as u32);
    let split = p.split_k.max(1) as u32;
    let mut steps = Vec::new();
    if is_v2(v) {
        let mt = v2_mtiles(m);
        steps.push(LaunchStep {
            symbol: v.symbols[mt as usize - 1],
            grid: (n.div_ceil(V2_BN), 1, split),
            block: (abi::LAB_GEMM_V2_THREADS, 1, 1),
            smem_bytes: v2_smem_bytes(mt),
        });
    } else {
        let (sym, mt) = if m <= 16 {
            (v.symbols[0], 16)
        } else {
            (v.symbols[1], 64)
        };
        steps.push(LaunchStep {
            symbol: sym,
            grid: (n.div_ceil(V1_BN), m.div_ceil(mt), split),
            block: (abi::LAB_GEMM_V1_THREADS, 1, 1),
            smem_bytes: 0, // static shared memory only
        });
    }
    if split > 1 {
        let total = m * n;
        steps.push(LaunchStep {
            symbol: v.symbols[v.symbols.len() - 1],
            grid: (total.div_ceil(256).min(1024), 1, 1),
            block: (256, 1, 1),
            smem_bytes: 0,
        });
    }
    steps
}

/// fp32 workspace bytes a launch needs (0 without split-K).
pub fn workspace_bytes(p: &lab_gemm_params) -> usize {
    if p.split_k > 1 {
        p.m as usize * p.n as usize * 4
    } else {
        0
    }
}

/// Host tensors in the layout a GEMM variant expects, ready to upload.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmWeights {
    pub k: usize,
    pub n: usize,
    /// Rows per group (k for per-channel).
    pub group_size: usize,
    pub groups: usize,
    /// v1: canonical u32 [k/8, n] (rows sorted by group under act-order); v2: fragment order
    /// (`gemm_layout`), `gemm_layout::prepared_words(k, n)` words.
    pub qweight: Vec<u32>,
    /// u32 [groups, n/8] true zeros (empty when symmetric).
    pub qzeros: Vec<u32>,
    /// fp16 [groups, n].
    pub scales: Vec<f16>,
    /// i32 [k]: x column of sorted row r, for act-order checkpoints; None otherwise.
    pub perm: Option<Vec<i32>>,
    pub bias: Option<Vec<f16>>,
    /// abi LAB_ZEROS_*.
    pub zero_mode: i32,
}

/// The load-time step: reorder rows for act-order and lay the codes out as `v` expects.
pub fn prepare(v: &Variant, ql: &QuantLinear) -> Result<GemmWeights> {
    let (k, n) = (ql.k, ql.n);
    let shape = format!("k={k} n={n} group_size={}", ql.group_size);
    if k % 8 != 0 || n % 8 != 0 {
        return Err(LabError::UnsupportedShape {
            variant: v.name.into(),
            shape,
            reason: "k and n must be multiples of 8".into(),
        });
    }
    // Act-order: rows sorted by group once (gptq::reorder); the kernels then take the group of
    // sorted row r as r / group_size, which holds only when every group has group_size rows
    // (GPTQ's g_idx = rank / G does): anything else keeps a sorted g_idx and is refused.
    let sorted = reorder_by_group(ql)?;
    if sorted.layer.g_idx.is_some() {
        return Err(LabError::UnsupportedShape {
            variant: v.name.into(),
            shape,
            reason: "act-order groups of unequal size: the kernels need group_size rows per group"
                .into(),
        });
    }
    let l = &sorted.layer;
    let perm = ql.is_act_order().then_some(sorted.perm);
    let qweight = match v.layout {
        Layout::Prepared => gemm_layout::to_fragment_order(k, n, |r, c| l.code(r, c))?,
        Layout::Canonical => l.qweight.clone(),
    };
    Ok(GemmWeights {
        k,
        n,
        group_size: ql.group_size,
        groups: ql.groups(),
        qweight,
        qzeros: if ql.symmetric {
            Vec::new()
        } else {
            ql.qzeros.clone()
        },
        scales: ql.scales.clone(),
        perm,
        bias: ql.bias.clone(),
        zero_mode: if ql.symmetric {
            abi::LAB_ZEROS_SYMMETRIC as i32
        } else {
            abi::LAB_ZEROS_TRUE as i32
        },
    })
}

/// Validate, zero the workspace when split-K is on, and launch the plan on `gpu`'s stream.
/// The params' pointers must be live device buffers of the documented sizes.
pub fn launch(gpu: &Gpu, v: &Variant, p: &lab_gemm_params) -> Result<()> {
    validate(v, p, gpu.sm())?;
    if p.split_k > 1 {
        // SAFETY: validate() checked the workspace is set; the caller owns m*n f32 there.
        unsafe {
            cudarc::driver::result::memset_d8_async(
                p.workspace,
                0,
                workspace_bytes(p),
                gpu.stream.cu_stream(),
            )
        }
        .ctx("zeroing the split-K workspace")?;
    }
    for step in plan(v, p) {
        let f = gpu.function(step.symbol)?;
        if step.smem_bytes > 48 * 1024 {
            f.set_attribute(
                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                step.smem_bytes as i32,
            )
            .ctx(&format!("{}: raising the dynamic shared-memory limit", step.symbol))?;
        }
        let cfg = cudarc::driver::LaunchConfig {
            grid_dim: step.grid,
            block_dim: step.block,
            shared_mem_bytes: step.smem_bytes,
        };
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(p);
        // SAFETY: the kernel takes one lab_gemm_params by value (abi.h); validate() checked the
        // shape, alignment and pointers against what the kernel reads and writes.
        unsafe { b.launch(cfg) }.ctx(step.symbol)?;
    }
    Ok(())
}

// ---- Hooks for the family-generic launcher (kernels::layer, kernels::launch) ----

/// Largest batch the family runs: the split-K workspace of a DeviceLayer is sized for it.
pub const MAX_M: usize = 64;

/// Prepare-time checks of a layer for a GEMM variant (shape, group, act-order form).
pub fn check_layer(v: &Variant, sh: &LayerShape) -> Result<()> {
    let err = |reason: String| LabError::UnsupportedShape {
        variant: v.name.to_string(),
        shape: sh.describe(MAX_M),
        reason,
    };
    if sh.k % 8 != 0 || sh.n % 8 != 0 {
        return Err(err("K and N must be multiples of 8".into()));
    }
    let g = sh.group_size as i32;
    if sh.group_size != sh.k && !v.group_sizes.contains(&g) {
        return Err(err(format!(
            "group {g} not supported (groups {:?}, -1 = per-channel)",
            v.group_sizes
        )));
    }
    if sh.g_idx {
        return Err(err(
            "act-order groups of unequal size after the reorder: the kernels need group_size rows per group"
                .into(),
        ));
    }
    Ok(())
}

/// (split_k, k_slice) from the `split_k` tunable (0 = `auto_split` for `dev`).
fn split_for(
    v: &Variant,
    sh: &LayerShape,
    m: usize,
    params: &Tunables,
    dev: SmLimits,
) -> Result<(i32, i32)> {
    let req = tunable(v, params, "split_k")?;
    let (m, n, k) = (m as u32, sh.n as u32, sh.k as u32);
    Ok(if req == 0 {
        auto_split(v, m, n, k, dev)
    } else {
        fit_split(k, k_step(v), req)
    })
}

/// The launcher's plan for a GEMM variant: the main kernel (the finish pass follows when
/// split_k > 1). Refuses batches outside the variant's range.
pub fn launch_plan(
    v: &Variant,
    sh: &LayerShape,
    m: usize,
    params: &Tunables,
    dev: SmLimits,
) -> Result<LaunchPlan> {
    let (lo, hi) = v.batch;
    if m < lo as usize || m > hi as usize {
        return Err(LabError::UnsupportedShape {
            variant: v.name.to_string(),
            shape: sh.describe(m),
            reason: format!("batch m={m} outside {lo}..={hi}"),
        });
    }
    check_layer(v, sh)?;
    let (split_k, k_slice) = split_for(v, sh, m, params, dev)?;
    let p = lab_gemm_params {
        m: m as i32,
        n: sh.n as i32,
        split_k,
        k_slice,
        ..Default::default()
    };
    let main = &plan(v, &p)[0];
    Ok(LaunchPlan {
        symbol: main.symbol.to_string(),
        grid: main.grid,
        block: main.block,
        split_k: split_k as u32,
        k_slice: k_slice as u32,
        cluster_y: 1,
    })
}

/// `launch::launch` for the GEMM family, after `launch::plan` (which calls `launch_plan`) settled
/// the split and checked the buffers' sizes: the layer's device buffers into `lab_gemm_params`,
/// then `launch` (validation, workspace zeroing, main kernel, finish pass). Taking the plan keeps
/// one computation of the split per launch.
pub(super) fn launch_layer(
    gpu: &Gpu,
    v: &Variant,
    layer: &DeviceLayer,
    x: &CudaSlice<f16>,
    m: usize,
    y: &mut CudaSlice<f16>,
    plan: &LaunchPlan,
) -> Result<()> {
    let sh = &layer.shape;
    let (split_k, k_slice) = (plan.split_k as i32, plan.k_slice as i32);
    if split_k > 1 && layer.workspace.as_ref().is_none_or(|w| w.len() < m * sh.n) {
        return Err(LabError::invalid(
            "layer",
            format!(
                "{}: split-K workspace missing or smaller than m*N = {}",
                v.name,
                m * sh.n
            ),
        ));
    }
    let s = &*gpu.stream;
    // The guards record the stream's use of each buffer when dropped, after the launches.
    let (xp, _gx) = x.device_ptr(s);
    let (yp, _gy) = y.device_ptr_mut(s);
    let (qw, _g1) = layer.qweight.device_ptr(s);
    let (qz, _g2) = layer.qzeros.device_ptr(s);
    let (sc, _g3) = layer.scales.device_ptr(s);
    let pm = layer.perm.as_ref().map(|b| b.device_ptr(s));
    let bs = layer.bias.as_ref().map(|b| b.device_ptr(s));
    let ws = layer.workspace.as_ref().map(|b| b.device_ptr(s));
    let p = lab_gemm_params {
        x: xp,
        qweight: qw,
        qzeros: if sh.symmetric { 0 } else { qz },
        scales: sc,
        g_idx: 0,
        perm: pm.as_ref().map_or(0, |p| p.0),
        bias: bs.as_ref().map_or(0, |p| p.0),
        y: yp,
        workspace: ws.as_ref().map_or(0, |p| p.0),
        m: m as i32,
        n: sh.n as i32,
        k: sh.k as i32,
        group_size: sh.group_size as i32,
        groups: sh.k.div_ceil(sh.group_size) as i32,
        zero_mode: if sh.symmetric {
            abi::LAB_ZEROS_SYMMETRIC as i32
        } else {
            abi::LAB_ZEROS_TRUE as i32
        },
        split_k,
        k_slice,
        prefetch_bytes: 0,
        x_glu: 0,
        ld_w: 0,
    };
    launch(gpu, v, &p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemm_emulate::testdata;

    fn v1() -> &'static Variant {
        &VARIANTS[0]
    }
    fn v2() -> &'static Variant {
        &VARIANTS[1]
    }

    /// Plausible params for a k x n layer at batch m: every pointer set and 256-byte aligned.
    fn params(m: i32, n: i32, k: i32, group: i32, v: &Variant) -> lab_gemm_params {
        let (split_k, k_slice) = auto_split(v, m as u32, n as u32, k as u32, SmLimits::H100);
        lab_gemm_params {
            x: 0x1000,
            qweight: 0x2000,
            qzeros: 0x3000,
            scales: 0x4000,
            y: 0x5000,
            workspace: 0x6000,
            m,
            n,
            k,
            group_size: group,
            groups: (k + group - 1) / group,
            zero_mode: abi::LAB_ZEROS_TRUE as i32,
            split_k,
            k_slice,
            ..Default::default()
        }
    }

    /// `validate` refuses `p` as an UnsupportedShape naming the variant and the launch, for the
    /// reason containing `reason`.
    fn refused(v: &Variant, p: &lab_gemm_params, sm: u32, reason: &str) {
        match validate(v, p, sm) {
            Err(LabError::UnsupportedShape {
                variant,
                shape,
                reason: got,
            }) => {
                assert_eq!(variant, v.name);
                assert!(
                    shape.contains(&format!("m={} n={} k={}", p.m, p.n, p.k)),
                    "{reason}: shape {shape}"
                );
                assert!(
                    got.contains(reason),
                    "{}: expected a refusal for '{reason}', got '{got}'",
                    v.name
                );
            }
            other => panic!("{reason}: expected UnsupportedShape, got {other:?}"),
        }
    }

    #[test]
    fn vicuna_shapes_and_the_m_matrix_are_accepted() {
        for v in VARIANTS {
            for &(k, n) in &[
                (4096, 4096),
                (4096, 11008),
                (11008, 4096),
                (5120, 13824),
                (4096, 22016),
            ] {
                for &m in &[2, 3, 4, 8, 15, 16, 17, 32, 33, 64] {
                    for &g in &[32, 64, 128, k] {
                        let p = params(m, n, k, g, v);
                        validate(v, &p, 90).unwrap_or_else(|e| panic!("{}: {e}", v.name));
                    }
                }
            }
        }
    }

    #[test]
    fn bad_launches_are_refused_with_the_shape() {
        for v in VARIANTS {
            let ok = params(16, 4096, 4096, 128, v);
            validate(v, &ok, 90).unwrap();
            let with = |f: &dyn Fn(&mut lab_gemm_params)| {
                let mut p = ok;
                f(&mut p);
                p
            };
            // Each case breaks one rule and keeps the rest consistent (groups = ceil(k / group),
            // slices covering k), so it is refused for its own reason only.
            refused(v, &ok, v.min_sm - 5, &format!("needs sm_{}", v.min_sm));
            refused(v, &with(&|p| p.m = 1), 90, "m must be in 2..=64");
            refused(v, &with(&|p| p.m = 65), 90, "m must be in 2..=64");
            let step = k_step(v) as i32;
            let k4100 = with(&|p| {
                p.k = 4100;
                p.groups = 33; // ceil(4100 / 128)
                p.split_k = 1;
                p.k_slice = 4100 + step - 4100 % step;
                p.workspace = 0;
            });
            refused(v, &k4100, 90, "k a multiple of 8");
            refused(v, &with(&|p| p.n = 4100), 90, "n must be a multiple of 8");
            let g48 = with(&|p| {
                p.group_size = 48;
                p.groups = 86; // ceil(4096 / 48)
            });
            refused(v, &g48, 90, "group_size must be one of");
            refused(v, &with(&|p| p.groups = 3), 90, "groups = 3 is not ceil");
            refused(v, &with(&|p| p.g_idx = 0x7000), 90, "g_idx gather");
            refused(v, &with(&|p| p.zero_mode = 7), 90, "unknown zero_mode 7");
            refused(
                v,
                &with(&|p| p.qzeros = 0),
                90,
                "zero_mode TRUE needs qzeros",
            );
            refused(
                v,
                &with(&|p| p.k_slice += 8),
                90,
                &format!("k_slice a positive multiple of {step}"),
            );
            refused(v, &with(&|p| p.split_k += 1), 90, "no empty slice");
            refused(v, &with(&|p| p.split_k = 1), 90, "must cover k");
            refused(
                v,
                &with(&|p| p.workspace = 0),
                90,
                "needs an fp32 [m, n] workspace",
            );
            refused(v, &with(&|p| p.x += 8), 90, "must be 16-byte aligned");
            refused(v, &with(&|p| p.y += 2), 90, "y 4-byte aligned");
            refused(v, &with(&|p| p.y = 0), 90, "must be set");
        }
        // A GEMV variant is not launched through the GEMM path.
        let gemv = crate::kernels::registry::by_name("gemv_v2_vec").unwrap();
        refused(
            gemv,
            &params(16, 4096, 4096, 128, v2()),
            90,
            "not a GEMM-family variant",
        );
        // n % 32 != 0 is fine (v2 pads its layout, masks the last stripe).
        validate(v2(), &params(16, 4104, 4096, 128, v2()), 90).unwrap();
    }

    #[test]
    fn auto_split_fills_the_sms_within_the_traffic_cap() {
        // (m, split_k) for v2 on 4096 x 4096 and 132 SMs: see auto_split's doc.
        for &(m, want) in &[(2u32, 16), (16, 16), (32, 8), (64, 4)] {
            let (s, slice) = auto_split(v2(), m, 4096, 4096, SmLimits::H100);
            assert_eq!((s, slice), (want, 4096 / want), "m={m}");
        }
        // Wide layers already fill the GPU: 22016 / 256 = 86 blocks -> split 4 (344 blocks) at m=16.
        for v in VARIANTS {
            for &(k, n) in &[
                (4096u32, 4096u32),
                (11008, 4096),
                (4096, 22016),
                (13824, 5120),
            ] {
                for &m in &[2u32, 16, 64] {
                    let (s, slice) = auto_split(v, m, n, k, SmLimits::H100);
                    let (s, slice) = (s as u32, slice as u32);
                    assert_eq!(slice % k_step(v), 0);
                    assert!(
                        s * slice >= k && (s - 1) * slice < k,
                        "{} k={k} s={s} slice={slice}",
                        v.name
                    );
                    assert!(
                        s == 1 || m * n * 4 * s <= k * n / 2,
                        "partials over the cap"
                    );
                }
            }
        }
    }

    /// The doc's wide-layer figure, by hand: 22016 / 256 = 86 column blocks of v2; an H100 holds
    /// 132 x 2 = 264 blocks, so filling it takes ceil(264 / 86) = 4 slices (344 blocks; 3 slices
    /// would leave 6 of 264 slots idle). The traffic cap 4096 / (16 x 16) = 16 does not bind, and
    /// 4096 / 4 = 1024 is a whole number of K steps: (4, 1024).
    #[test]
    fn auto_split_rounds_the_slots_per_column_block_up() {
        assert_eq!(SmLimits::H100.blocks_per_sm(v2_smem_bytes(1), 2), 2);
        assert_eq!(1024 % V2_BK, 0);
        assert_eq!(auto_split(v2(), 16, 22016, 4096, SmLimits::H100), (4, 1024));
    }

    #[test]
    fn auto_split_counts_one_block_per_sm_where_the_tile_leaves_room_for_one() {
        // An RTX 4090: 128 SMs of 100 KB, 1 KB reserved per block. v2's m16 tile (46 KB) fits
        // twice, its m32..m64 tiles (55-73 KB) once: the split aims at 128 blocks there, not 256.
        let rtx4090 = SmLimits {
            sms: 128,
            smem_per_sm: 100 * 1024,
            smem_reserved_per_block: 1024,
            smem_per_block_optin: 99 * 1024,
        };
        let two = SmLimits {
            smem_per_sm: 0, // unknown: the kernel's own target of two per SM
            ..rtx4090
        };
        assert_eq!(rtx4090.blocks_per_sm(v2_smem_bytes(1), 2), 2);
        for mt in 2..=4 {
            assert_eq!(
                rtx4090.blocks_per_sm(v2_smem_bytes(mt), 2),
                1,
                "m{}",
                16 * mt
            );
            assert_eq!(SmLimits::H100.blocks_per_sm(v2_smem_bytes(mt), 2), 2);
        }
        // 4096 x 4096, 16 column blocks: m = 8 -> 256 / 16 = 16 either way; m = 24 -> 128 / 16 =
        // 8 slices where two per SM would ask for 16 (the traffic cap, 4096 / 384 = 10, then).
        assert_eq!(auto_split(v2(), 8, 4096, 4096, rtx4090), (16, 256));
        assert_eq!(auto_split(v2(), 8, 4096, 4096, two), (16, 256));
        assert_eq!(auto_split(v2(), 24, 4096, 4096, rtx4090), (8, 512));
        assert_eq!(
            auto_split(v2(), 24, 4096, 4096, two),
            fit_split(4096, V2_BK, 10)
        );
        // v1 (static shared memory only) keeps two per SM on any card.
        assert_eq!(
            auto_split(v1(), 24, 4096, 4096, rtx4090),
            auto_split(v1(), 24, 4096, 4096, two)
        );
    }

    #[test]
    fn plan_picks_the_tile_and_adds_the_finish_pass() {
        let p = params(33, 4096, 4096, 128, v2());
        let steps = plan(v2(), &p);
        assert_eq!(steps[0].symbol, "lab_gemm_v2_mma_m48");
        assert_eq!(steps[0].grid, (16, 1, p.split_k as u32));
        assert_eq!(steps[0].smem_bytes, 4 * (9472 + 3 * 2304));
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[1].symbol, "lab_gemm_v2_finish");
        let mut p1 = params(16, 4096, 4096, 128, v1());
        p1.split_k = 1;
        p1.k_slice = 4096;
        let steps = plan(v1(), &p1);
        assert_eq!((steps.len(), steps[0].symbol), (1, "lab_gemm_v1_simt_m16"));
        assert_eq!(steps[0].grid, (64, 1, 1));
        assert_eq!(workspace_bytes(&p1), 0);
        // The biggest v2 tile fits every sm_80+ part's per-block limit (sm_86/89: 99 KiB).
        assert!(v2_smem_bytes(4) <= 99 * 1024);
    }

    /// The m16 tile count per batch (v2: ceil(m / 16) tiles, v1: the m16 tile up to 16 rows, the
    /// m64 one above), the column blocks when n is not a multiple of the block width (4104 =
    /// 16 x 256 + 8: 17 v2 blocks; 64 x 64 + 8: 65 v1 blocks), and the fp32 workspace size.
    #[test]
    fn plan_covers_every_row_and_column_and_sizes_the_workspace() {
        for &(m, sym) in &[
            (2, "lab_gemm_v2_mma_m16"),
            (16, "lab_gemm_v2_mma_m16"),
            (17, "lab_gemm_v2_mma_m32"),
            (32, "lab_gemm_v2_mma_m32"),
            (33, "lab_gemm_v2_mma_m48"),
            (48, "lab_gemm_v2_mma_m48"),
            (49, "lab_gemm_v2_mma_m64"),
            (64, "lab_gemm_v2_mma_m64"),
        ] {
            let p = params(m, 4096, 4096, 128, v2());
            assert_eq!(plan(v2(), &p)[0].symbol, sym, "m={m}");
        }
        for &(m, sym) in &[(16, "lab_gemm_v1_simt_m16"), (17, "lab_gemm_v1_simt_m64")] {
            let p = params(m, 4096, 4096, 128, v1());
            assert_eq!(plan(v1(), &p)[0].symbol, sym, "m={m}");
        }
        for (v, blocks) in [(v2(), 17), (v1(), 65)] {
            let p = params(16, 4104, 4096, 128, v);
            assert!(p.split_k > 1);
            let steps = plan(v, &p);
            assert_eq!(steps[0].grid, (blocks, 1, p.split_k as u32), "{}", v.name);
            assert_eq!(workspace_bytes(&p), 16 * 4104 * 4, "{}", v.name);
        }
    }

    /// v1's blocks are its column blocks only: one m64 row block holds any batch up to 64, so at
    /// m = 32 a 4096 x 4096 layer has 4096 / 64 = 64 blocks (plan's grid) and filling 132 x 2
    /// slots takes ceil(264 / 64) = 5 slices (cap 4096 / (16 x 32) = 8): k_slice ceil(4096 / 5)
    /// = 820 -> 832 (26 K steps of 32). At m = 64 the traffic cap 4096 / 1024 = 4 binds.
    #[test]
    fn auto_split_counts_v1_blocks_as_plan_launches_them() {
        assert_eq!(auto_split(v1(), 32, 4096, 4096, SmLimits::H100), (5, 832));
        assert_eq!(auto_split(v1(), 64, 4096, 4096, SmLimits::H100), (4, 1024));
        let p = params(32, 4096, 4096, 128, v1());
        assert_eq!(plan(v1(), &p)[0].grid, (64, 1, 5));
    }

    #[test]
    fn prepare_reorders_act_order_and_lays_out_per_variant() {
        let ql = testdata::layer(256, 64, 32, false, true, false, 7);
        for v in VARIANTS {
            let w = prepare(v, &ql).unwrap();
            let perm = w.perm.as_ref().expect("act-order layer must get a perm");
            // Sorted row r is original row perm[r], and its group is r / group_size.
            let canon = match v.layout {
                Layout::Prepared => gemm_layout::from_fragment_order(&w.qweight, 256, 64).unwrap(),
                Layout::Canonical => w.qweight.clone(),
            };
            for r in 0..256 {
                let src = perm[r] as usize;
                assert_eq!(ql.g_idx.as_ref().unwrap()[src] as usize, r / 32);
                for c in 0..64 {
                    assert_eq!(
                        (canon[(r / 8) * 64 + c] >> (4 * (r % 8))) & 0xF,
                        ql.code(src, c)
                    );
                }
            }
        }
        let plain = testdata::layer(64, 32, 32, true, false, false, 8);
        let w = prepare(v1(), &plain).unwrap();
        assert!(w.perm.is_none() && w.qweight == plain.qweight && w.qzeros.is_empty());
        assert_eq!(w.zero_mode, abi::LAB_ZEROS_SYMMETRIC as i32);
        assert!(prepare(v2(), &testdata::layer(64, 40, 32, true, false, false, 9)).is_ok());
        let mut n12 = testdata::layer(64, 16, 32, true, false, false, 9);
        n12.n = 12;
        assert!(prepare(v2(), &n12).is_err());
    }
}
