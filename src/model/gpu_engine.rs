//! The GPU decode engine: LLaMA/Vicuna batch-1 decode, one token per step, every op a kernel of
//! kernels/llama (embedding, add+RMSNorm, RoPE + KV append, split attention, SiLU*up, fp16 lm_head,
//! argmax) plus the linear layers. The step reads its token and position from device memory and
//! the argmax writes the next token and position back, so the step is captured once as a CUDA
//! graph and replayed with no host work between tokens.
//!
//! Per step (L layers):
//!   embed -> L x [add_rmsnorm(+down of the previous layer) -> qkv -> attn_split (RoPE, KV append,
//!   split attention; its last block per head combines) -> o -> add_rmsnorm(+o) -> gate_up ->
//!   silu_mul -> down] -> add_rmsnorm(+down) -> lm_head -> argmax (or top-p)
//! Prefill (`gpu_prefill/`) runs all prompt tokens of a chunk through each layer at once (GEMM
//! family / cuBLAS, causal prefill attention); `PrefillMode::TokenByToken` keeps the old path, this
//! step once per prompt token, as the reference.
//! Linear layers go through `GpuEngine::linear` only: int4 via the engine's own split-K GEMV
//! (lab_llama_q4_gemv) until the registry's GEMV variants serve it, fp16 via cuBLAS (or the lab
//! fp16 GEMV where cuBLAS cannot be loaded).

use crate::cuda::{Gpu, SmLimits};
use crate::error::DriverCtx;
use crate::kernels::abi;
use crate::kernels::gemv::{kind as gemv_kind, v6_one_block_per_sm, GemvKind, TILE_N};
use crate::kernels::launch::{plan as gemv_plan, LayerShape, Tunables};
use crate::kernels::registry::Variant;
use crate::model::config::ModelConfig;
use crate::model::gpu_layout::{Int4Linear, Storage};
use crate::model::gpu_weights::{
    raw, F16Dev, GpuLayer, GpuLinear, GpuWeights, Int4Dev, Slot, SyntheticSpec,
};
use crate::model::sampler::Sampling;
use crate::model::step_profile::Mark;
use crate::model::vram::{Phase, VramLedger, VramReport};
use crate::{LabError, Result};
use cudarc::driver::sys::{CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{
    CudaEvent, CudaFunction, CudaGraph, CudaSlice, CudaStream, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use half::f16;
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;

#[path = "gpu_persistent.rs"]
pub mod persistent;
#[path = "gpu_prefill/mod.rs"]
mod prefill;
use persistent::{LaunchKind, Persistent};
pub use prefill::{
    attn_smem_bytes, check_attn_smem, checkpoint_int4_layer, chunks, dequant_min_rows,
    dequant_slices, describe_paths, int4_path, paths_by_rows, prefill_choice_for_memory, row_tiles,
    DequantSlices, Int4Path, PrefillInt4, PrefillLogits, PrefillMode, PrefillPlan, PrefillSizes,
    ScratchPart, DEFAULT_PREFILL_CHUNK, DEQUANT_HEADROOM, DEQUANT_MIN_ROWS,
    DEQUANT_MIN_ROWS_ACT_ORDER, DEQUANT_SLICE_ELEMS, GEMM_ROWS,
};

/// Positions per attention split block. 256 (was 128 until attention v4): a 7B / 13B grid at
/// max_ctx 2100 is 9 splits x 32 / 40 heads = 288 / 360 blocks, one round of the 528 that v4
/// keeps resident on an H100 (4 per SM; 128 gave 544 / 680, past it); each block reads 2 x 128
/// positions of K and of V (two round trips each), and a context under 256 is one block per
/// head with no combine. Numbers: kernels/llama/attention.cu at LLAMA_ATTN_UNROLL.
pub const DEFAULT_ATTN_CHUNK: usize = 256;
/// Positions a KV cache may hold: the kernels index positions (and offsets derived from them) in i32.
pub const MAX_CTX: usize = i32::MAX as usize / 2;
/// Largest hidden size lab_llama_add_rmsnorm serves (LLAMA_NORM_UNITS x 8 x LLAMA_NORM_THREADS, ops.cu).
pub const MAX_NORM_HIDDEN: usize = 16384;

/// Whether an int4 linear served by `choice` (None: the engine's own q4 GEMV) can take the fused
/// [gate | up] and compute silu(gate) * up while loading x: the engine's q4 and the registry
/// kernels `gemv::takes_gated_input` names. The others (and fp16) get lab_llama_silu_mul first.
fn int4_takes_gated_input(choice: Option<&'static Variant>) -> bool {
    choice.is_none_or(crate::kernels::gemv::variant_takes_gated_input)
}

/// The input of one linear: a plain fp16 vector x [k], or the fused MLP [gate | up] (2k values)
/// whose silu(gate) * up is the input (lab_gemm_params.x_glu, kernels/common/glu.cuh).
#[derive(Debug, Clone, Copy)]
enum XInput {
    Plain(u64),
    Gated(u64),
}

/// cuBLAS workspace given to the handle up front, so nothing is allocated during graph capture
/// (32 MiB: NVIDIA's recommendation for Hopper).
const CUBLAS_WORKSPACE: usize = 32 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fp16Backend {
    /// cuBLAS GemmEx (fp16 in/out, fp32 compute), m = N, n = 1.
    Cublas,
    /// lab_llama_gemv_f16 (one warp per output row).
    Lab,
}

#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// KV cache rows; also the most positions a step may reach.
    pub max_ctx: usize,
    pub attn_chunk: usize,
    /// Preferred backend for fp16 linears; falls back to Lab when libcublas is missing.
    pub fp16_backend: Fp16Backend,
    /// Which kernel computes the int4 linears.
    pub int4: Int4Kernel,
    /// How each step chooses its next token, on the GPU and inside the step's graph: greedy
    /// argmax, or top-p from the draw for (sample_seed, position) (module sampler).
    pub sampling: Sampling,
    pub sample_seed: u64,
    /// Launch the decode step's kernels with programmatic dependent launch (sm_90+; ignored
    /// below): each grid is scheduled while its predecessor drains and waits for it inside
    /// (kernels/common/pdl.cuh). Off in the options; `lab decode` turns it on unless --pdl off.
    pub pdl: bool,
    /// With PDL, the bytes of its weight tile each int4 GEMV block prefetches into L2 before
    /// waiting for its predecessor (lab_gemm_params.prefetch_bytes; 0: none): `bytes` for every
    /// int4 GEMV, except the registry variants named in `per_variant`. Runs 12-15 found 7B
    /// fastest at 16 KB per block and 13B at 32 KB; run 16b put the best budget in the model's
    /// step, not in the kernel, so `lab tune` times it per model (`pdl_prefetch_tuned`), and
    /// "one variant at its own budget" is one of the settings it times.
    pub pdl_budget: crate::tune::BudgetSetting,
    /// Under `auto`, replace `pdl_budget` with the tuned config's for this model where `lab tune`
    /// timed a step with exactly this engine's kernels and step options (tune::decode). On by
    /// default; off where the caller chose a budget (`lab decode --pdl-prefetch`) or times them
    /// itself.
    pub pdl_prefetch_tuned: bool,
    /// Let int4 down projections whose kernel can (`int4_takes_gated_input`) compute
    /// silu(gate) * up while loading x, instead of a lab_llama_silu_mul launch per layer. Off by
    /// default since run 14's in-process A/B (decode.md): with the fusion the act-order steps
    /// (gemv_v6_pipe's down projection) were 0.5-1.4% SLOWER at every context of 7B and 13B,
    /// plain v6 steps within 0.4% either way; the tiny check still runs the fused path.
    pub fused_glu: bool,
    /// The decode attention prefetches its K and V rows into L2 as soon as the position is known
    /// (lab_llama_attn_params.prefetch_kv, attention v5). Off by default: H100 run 13 timed it on
    /// against off in one process (decode.md's A/B column) and off was faster at every context
    /// of 512 and more (7B 1-3%, 13B 1-4%) and within 1% at 128 (notes/kernels.md).
    pub attn_prefetch_kv: bool,
    /// Act-order int4 linears whose input comes from a kernel the step can make write it in the
    /// linear's sorted row order (q|k|v and gate|up fed by one RMSNorm, and down fed by the silu
    /// kernel: `layer_px`) run as PLAIN GEMVs on that permuted x (the tuned choice of
    /// the plain shape, e.g. gemv_v2_vec / gemv_v10_l2x) instead of a kernel that gathers x
    /// through the permutation itself (v4/v6). The producer writes the permuted copy beside its
    /// usual output (lab_llama_norm_params / lab_llama_silu_params .perm). On by default; the o
    /// projection (fed by the attention) and uneven groups keep the act-order kernels. Only under
    /// `--int4-kernel auto` (`plain_kernels_serve`). H100 run 17: 7.7% (7B) / 3.6% (13B) faster
    /// than off, in the same process.
    pub act_order_plain: bool,
    /// Run every decoder layer of a step as ONE cooperative launch (kernels/llama/layers.cu,
    /// module `persistent`) instead of ~8 launches per layer. Int4 linears only (gemv_v6_pipe's
    /// loop; `int4` does not apply to the layers then). Off by default: the H100 runs 9-10
    /// measured it correct but 13-15% slower than graph + PDL; `lab decode --persistent-layers`
    /// and the decode bench's column turn it on.
    pub persistent_layers: bool,
    /// Bytes of its next phase's weight tiles each persistent block prefetches into L2 before
    /// every grid barrier (0: none).
    pub persistent_prefetch: u32,
    /// At most this many persistent blocks (0: what the device keeps resident). A test hook: a
    /// small grid gives each block many work items and the attention larger splits than
    /// `attn_chunk`, paths a full H100 grid never takes on the tiny models.
    pub persistent_max_grid: usize,
    /// Rows per prefill chunk (the m of the prefill GEMMs; longer prompts go in chunks). 0: no
    /// prefill workspace, prompts run token by token.
    pub prefill_chunk: usize,
    /// Which kernel computes the int4 linears of a prefill.
    pub prefill_int4: PrefillInt4,
    /// Most fp16 elements of W the dequant path writes at once (`dequant_slices`): the
    /// default, DEQUANT_SLICE_ELEMS, is what `lab plan` sizes; tests lower it to run several
    /// slices on tiny models.
    pub dequant_slice_elems: usize,
    /// How `generate` fills the cache with the prompt.
    pub prefill: PrefillMode,
}

/// Which kernel computes the int4 linears.
#[derive(Debug, Clone)]
pub enum Int4Kernel {
    /// The engine's own lab_llama_q4_gemv.
    Engine,
    /// One registry GEMV variant (gemv_v4_perm, gemv_v5_splitk, ...) with its default tunables,
    /// for every int4 linear.
    Variant(&'static Variant),
    /// Per linear shape, what the dispatcher chooses: the GPU's tuned config when it was measured
    /// on this GPU with these kernels, else the built-in heuristic.
    Auto(Arc<crate::tune::Dispatcher>),
}

impl Int4Kernel {
    /// `engine`/`auto`/a variant name, for reports.
    pub fn name(&self) -> String {
        match self {
            Int4Kernel::Engine => "engine (lab_llama_q4_gemv v1)".to_string(),
            Int4Kernel::Variant(v) => format!("{} (registry)", v.name),
            Int4Kernel::Auto(d) if d.tuned_len() > 0 => {
                format!("auto (tuned config, {} keys)", d.tuned_len())
            }
            Int4Kernel::Auto(_) => "auto (heuristic)".to_string(),
        }
    }

    /// The registry variant and tunables that serve an int4 linear of this shape; None = the
    /// engine's own kernel. A choice the engine cannot run (a cuBLAS baseline, a GEMM) is an error.
    pub fn choose(&self, s: &LayerShape) -> Result<Option<(&'static Variant, Tunables)>> {
        match self {
            Int4Kernel::Engine => Ok(None),
            Int4Kernel::Variant(v) => Ok(Some((v, Tunables::new()))),
            Int4Kernel::Auto(d) => {
                let key = problem_key(shape_key(s));
                let c = d.choose(key.n, key.k, key.group_size, key.act_order, 1)?;
                let v = int4_kernel_by_name(&c.variant)?.ok_or_else(|| {
                    LabError::invalid(
                        "int4 kernel",
                        format!("the dispatcher chose '{}'", c.variant),
                    )
                })?;
                Ok(Some((v, c.params.clone())))
            }
        }
    }
}

/// Weight bytes per GEMV block prefetched before the PDL wait (kernels/common/pdl.cuh: 32 KB x
/// 264-396 resident blocks = 8.5-12.7 MB, about what the DRAM moves while the small kernel before
/// each GEMV runs). H100, 2026-11-27, one process: 1-3% faster than PDL without it for v6/auto,
/// 64-128 KB slower (notes/kernels.md, "Weight prefetch before the wait").
pub const DEFAULT_PDL_PREFETCH: u32 = 32768;

impl EngineOptions {
    pub fn new(max_ctx: usize) -> Self {
        EngineOptions {
            max_ctx,
            attn_chunk: DEFAULT_ATTN_CHUNK,
            fp16_backend: Fp16Backend::Cublas,
            int4: Int4Kernel::Engine,
            sampling: Sampling::Greedy,
            sample_seed: 0,
            pdl: false,
            pdl_budget: crate::tune::BudgetSetting::uniform(DEFAULT_PDL_PREFETCH),
            pdl_prefetch_tuned: true,
            fused_glu: false,
            attn_prefetch_kv: false,
            act_order_plain: true,
            persistent_layers: false,
            persistent_prefetch: DEFAULT_PDL_PREFETCH,
            persistent_max_grid: 0,
            prefill_chunk: DEFAULT_PREFILL_CHUNK.min(max_ctx),
            prefill_int4: PrefillInt4::Auto,
            dequant_slice_elems: DEQUANT_SLICE_ELEMS,
            prefill: PrefillMode::Gemm,
        }
    }

    /// The options a tuned decode budget is keyed on (tune::StepOptions), as they are now.
    pub fn step_options(&self) -> crate::tune::StepOptions {
        crate::tune::StepOptions {
            act_order_plain: self.act_order_plain,
            fused_glu: self.fused_glu,
            attn_prefetch_kv: self.attn_prefetch_kv,
        }
    }
}

/// Whether `e` is the device running out of memory (an engine too big for the card).
pub fn is_out_of_memory(e: &LabError) -> bool {
    e.driver_code() == Some(cudarc::driver::sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY)
}

/// Whether `e` is the driver refusing to capture a launch into a CUDA graph (a cooperative launch
/// on a driver that cannot put one in a graph, say), as opposed to a failed kernel or step.
pub fn is_capture_refusal(e: &LabError) -> bool {
    use cudarc::driver::sys::cudaError_enum as E;
    matches!(
        e.driver_code(),
        Some(
            E::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
                | E::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
                | E::CUDA_ERROR_NOT_SUPPORTED
        )
    )
}

/// `engine` (None) or a registry GEMV variant that runs on the engine's raw buffers: a kernel
/// variant of the gemv family (the cuBLAS baselines need their own fp16 weights and are refused).
pub fn int4_kernel_by_name(name: &str) -> Result<Option<&'static Variant>> {
    if name == "engine" {
        return Ok(None);
    }
    let v = crate::kernels::registry::by_name(name).ok_or_else(|| {
        LabError::invalid(
            "--int4-kernel",
            format!("no variant '{name}'; expected engine, auto or a gemv variant name"),
        )
    })?;
    match crate::kernels::gemv::kind(v)? {
        GemvKind::CublasF16 | GemvKind::DequantCublas => Err(LabError::invalid("--int4-kernel", format!("{name} is a cuBLAS baseline (fp16 weights); the engine runs int4 kernels: engine, gemv_v2_vec, gemv_v4_perm, gemv_v5_splitk, ..."))),
        // gemv_v9_cluster: the engine launches it as clusters (GpuEngine::launch_ex; sm_90, which
        // GpuEngine::new checks against the variant's min_sm).
        _ => Ok(Some(v)),
    }
}

/// `--int4-kernel NAME`: `engine`, a registry GEMV variant, or `auto` (the dispatcher that
/// `make_dispatcher` builds: this GPU's tuned config if it matches, else the heuristic).
pub fn parse_int4_kernel(
    name: &str,
    make_dispatcher: impl FnOnce() -> Result<crate::tune::Dispatcher>,
) -> Result<Int4Kernel> {
    if name == "auto" {
        return Ok(Int4Kernel::Auto(Arc::new(make_dispatcher()?)));
    }
    Ok(match int4_kernel_by_name(name)? {
        None => Int4Kernel::Engine,
        Some(v) => Int4Kernel::Variant(v),
    })
}

pub enum WeightSource<'a> {
    Host {
        weights: &'a dyn crate::model::layer_source::LayerSource,
        label: &'a str,
    },
    Synthetic(SyntheticSpec),
}

struct Kernels {
    fill: CudaFunction,
    embed: CudaFunction,
    norm: CudaFunction,
    rope: CudaFunction,
    attn_split: CudaFunction,
    silu: CudaFunction,
    argmax: CudaFunction,
    gemv_f16: CudaFunction,
    q4: CudaFunction,
    q4_finish: CudaFunction,
    hold: CudaFunction,
    sample: CudaFunction,
    layers: CudaFunction,
    poison: CudaFunction,
}

impl Kernels {
    fn load(gpu: &Gpu) -> Result<Self> {
        Ok(Kernels {
            fill: gpu.function("lab_llama_fill")?,
            embed: gpu.function("lab_llama_embed")?,
            norm: gpu.function("lab_llama_add_rmsnorm")?,
            rope: gpu.function("lab_llama_rope_kv")?,
            attn_split: gpu.function("lab_llama_attn_split")?,
            silu: gpu.function("lab_llama_silu_mul")?,
            argmax: gpu.function("lab_llama_argmax")?,
            gemv_f16: gpu.function("lab_llama_gemv_f16")?,
            q4: gpu.function("lab_llama_q4_gemv")?,
            q4_finish: gpu.function("lab_llama_q4_finish")?,
            hold: gpu.function("lab_llama_hold")?,
            sample: gpu.function("lab_llama_sample_top_p")?,
            layers: gpu.function("lab_llama_layers")?,
            poison: gpu.function("lab_llama_poison_smem")?,
        })
    }
}

/// Activation buffers of one step.
struct Bufs {
    resid: CudaSlice<f32>,
    xn: CudaSlice<f16>,
    qkv: CudaSlice<f16>,
    attn: CudaSlice<f16>,
    o: CudaSlice<f16>,
    gate_up: CudaSlice<f16>,
    act: CudaSlice<f16>,
    /// fp16 [hidden] / [inter]: the norm's and the silu's output in an act-order consumer's sorted
    /// row order (`EngineOptions::act_order_plain`); unused otherwise.
    xn_p: CudaSlice<f16>,
    act_p: CudaSlice<f16>,
    down: CudaSlice<f16>,
    logits: CudaSlice<f32>,
    partial: CudaSlice<f32>,
    /// fp16 [heads * hd]: the rotated q the attention kernel writes (read only by the trace).
    q_rot: CudaSlice<f16>,
    /// u32 [heads]: attention split blocks done per head (zero between steps).
    attn_tickets: CudaSlice<u32>,
    q4_ws: CudaSlice<f32>,
    /// Registry split-K GEMV workspace: f32 [max N] partials + u32 [max N / 32] tickets, zero
    /// between launches (kernels/gemv/gemv_v5_splitk.cu leaves it zero).
    gemv_ws: CudaSlice<f32>,
    state: CudaSlice<i32>,
    history: CudaSlice<i32>,
    inv_freq: CudaSlice<f32>,
}

struct Blas {
    handle: cudarc::cublas::CudaBlas,
    _workspace: CudaSlice<u8>,
}

/// One op's output in a debug trace.
#[derive(Debug, Clone)]
pub struct TraceEntry {
    /// None: before the first or after the last layer.
    pub layer: Option<usize>,
    pub op: &'static str,
    pub values: Vec<f32>,
}

/// Dynamic shared memory of one `lab_llama_poison_smem` block: all a block may opt into (whole
/// words), so that one block covers an SM (the rest is the per-block reservation); the ABI's
/// fixed 48 KB where the device did not say.
pub fn poison_block_bytes(dev: SmLimits) -> u32 {
    match dev.smem_per_block_optin / 4 * 4 {
        0 => abi::LAB_LLAMA_POISON_BYTES,
        b => b,
    }
}

/// How the int4 split-K GEMV divides K: (splits, rows per split). Aims for >= 4 blocks of 128
/// columns per SM (H100: 132 SMs -> 528 blocks), keeps >= 64 rows per split and <= 8192 rows so
/// the f32 x slice fits 32 KB of shared memory.
pub fn q4_split(n: usize, k: usize, sms: usize) -> (usize, usize) {
    let col_blocks = n.div_ceil(128).max(1);
    let want = (4 * sms.max(1)).div_ceil(col_blocks);
    let split = want.clamp(k.div_ceil(8192).max(1), (k / 64).max(1));
    let slice = k.div_ceil(split).div_ceil(8) * 8;
    (k.div_ceil(slice), slice)
}

/// Dynamic shared memory of lab_llama_attn_split's body (attention.cuh) for head dim `hd` and
/// `chunk` positions per split: q [hd] | scores [chunk] | V partials [256 / (hd / 8) groups][hd],
/// f32. The separate attention kernel and the persistent layers launch with it.
fn attn_split_smem(hd: usize, chunk: usize) -> u32 {
    let groups = 256 / (hd / 8);
    ((hd + chunk + groups * hd) * 4) as u32
}

/// The widest output of a linear of `cfg` (fused q|k|v, fused gate|up, o/down): what the
/// split-K workspaces hold columns for.
fn widest_linear_n(cfg: &ModelConfig) -> usize {
    let kv_dim = cfg.num_key_value_heads * cfg.head_dim();
    let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
    (h + 2 * kv_dim).max(2 * inter).max(h)
}

/// The kernel-facing shape of an int4 linear, host (`Int4Host`, tests) or device (`Int4Dev`).
fn layer_shape<S: Storage>(l: &Int4Linear<S>) -> LayerShape {
    LayerShape {
        k: l.k,
        n: l.n,
        group_size: l.group_size,
        g_idx: l.g_idx.is_some(),
        perm: l.perm.is_some(),
        bias: false,
        symmetric: l.symmetric,
    }
}

pub struct GpuEngine {
    cfg: ModelConfig,
    stream: Arc<CudaStream>,
    k: Kernels,
    pub weights: GpuWeights,
    kv: CudaSlice<f16>,
    b: Bufs,
    blas: Option<Blas>,
    graph: Option<CudaGraph>,
    opts: EngineOptions,
    n_splits: usize,
    pos: usize,
    /// The device's SM count and shared memory per SM: what launch plans size their grids by.
    dev: SmLimits,
    ctx: Arc<cudarc::driver::CudaContext>,
    vram: VramLedger,
    /// Which fp16 backend serves fp16 linears (None: there are none).
    pub fp16_backend: Option<Fp16Backend>,
    /// Registry GEMV instantiations by symbol, loaded before any capture.
    gemv_fns: HashMap<String, CudaFunction>,
    /// The registry variant and tunables of each int4 linear shape (empty: the engine's kernel).
    int4_choice: HashMap<ShapeKey, (&'static Variant, Tunables)>,
    /// `int4_choice` as the tuner records it (tune::DecodeBudget::linears).
    linears: Vec<crate::tune::LinearChoice>,
    /// The tuned decode budget applied at construction, if any.
    tuned_budget: Option<crate::tune::DecodeBudget>,
    /// Per layer: which linears may run as plain GEMVs on permuted x, and do while
    /// EngineOptions::act_order_plain is on (`px_active`); their plain choices sit in `int4_choice`
    /// under the plain shape's key, beside the act-order shape's.
    px: Vec<LayerPx>,
    /// GEMM prefill kernels and workspace (None: prefill_chunk 0).
    prefill: Option<prefill::Prefill>,
    /// Bytes the ops enqueued so far stream from memory (weights, KV rows): the per-op profile
    /// reads the difference between two marks.
    streamed: Cell<u64>,
    /// True while `enqueue_step` runs with PDL on (the prefill and the rest launch plainly).
    step_pdl: Cell<bool>,
    /// The GPU and the loaded kernels can do PDL (Gpu::pdl_ready).
    pdl_possible: bool,
    /// The persistent decode layers, once planned (`EngineOptions::persistent_layers`).
    persistent: Option<Persistent>,
    /// Fill every SM's shared memory with NaN before each plain launch (`set_poison_smem`):
    /// bytes per poison block (0 = off).
    poison_smem: u32,
    /// v6 (gemv_v6_pipe) linears launch at most one 256-thread block per SM
    /// (kernels::gemv::v6_one_block_per_sm): the decode bench's column; off otherwise.
    v6_one_per_sm: bool,
    /// In a PDL step, the kernels that are not GEMVs (embedding, norms, attention, silu, argmax,
    /// sampler) launch plain (`set_small_ops_plain`): the decode bench's column; off otherwise.
    small_ops_plain: bool,
    /// Op classes the step leaves out (`set_skip_ops`): the decode bench's ablation only.
    skip: SkipOps,
}

/// Op classes a launch-per-op decode step can leave out: a timing ablation, not a model. The
/// step time without a class, against the full step in the same process, is what that class adds
/// to the step's critical path, in the graph and in the graph + PDL (the eager per-op profile
/// cannot say: its events sit between the ops that the graph and PDL overlap). The step's output
/// is then meaningless: the buffers a skipped op writes keep an earlier step's (finite) values.
/// The embedding, the final norm, the lm_head and the token choice always run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SkipOps {
    /// Both add + RMSNorm launches of every layer.
    pub norms: bool,
    /// The attention (rope + KV append + split + combine).
    pub attention: bool,
    /// The silu * up launch, where the step has one.
    pub silu: bool,
    pub qkv: bool,
    pub o: bool,
    pub gate_up: bool,
    pub down: bool,
}

impl SkipOps {
    pub fn any(&self) -> bool {
        *self != SkipOps::default()
    }

    /// The attention alone.
    pub fn attention_only() -> Self {
        SkipOps {
            attention: true,
            ..SkipOps::default()
        }
    }

    /// Every GEMV class.
    pub fn linears() -> Self {
        SkipOps {
            qkv: true,
            o: true,
            gate_up: true,
            down: true,
            ..SkipOps::default()
        }
    }

    /// Every op of a layer that is not a GEMV.
    pub fn small_ops() -> Self {
        SkipOps {
            norms: true,
            attention: true,
            silu: true,
            ..SkipOps::default()
        }
    }
}

/// An event recorded after one op of a profiled step, with the bytes the engine had counted.
struct ProfileMark {
    op: &'static str,
    event: CudaEvent,
    streamed: u64,
}

/// (k, n, rows per group, act-order): what decides an int4 linear's kernel.
type ShapeKey = (usize, usize, usize, bool);

/// Which linears of one layer run as plain GEMVs on x in their sorted row order
/// (EngineOptions::act_order_plain); the producer of each such input writes that copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerPx {
    /// The one fused q|k|v linear: the input RMSNorm writes xn_p.
    pub qkv: bool,
    /// The one fused gate|up linear: the post-attention RMSNorm writes xn_p.
    pub gate_up: bool,
    /// The down projection: the silu kernel writes act_p.
    pub down: bool,
}

/// An int4 linear as the act-order-plain rule sees it: (has a permutation, keeps a g_idx).
/// Even groups after the reorder keep no g_idx, so a plain kernel's group = row / G holds for
/// the sorted rows; uneven ones keep the act-order kernels.
pub type PxFacts = (bool, bool);

/// The rule behind `LayerPx`: with the option on and an int4 kernel choice that plain kernels
/// serve (auto: `plain_kernels_serve`), a norm-fed linear qualifies when
/// it is one segment (fused q|k|v or gate|up: one permutation for the norm to apply) with a
/// permutation and no g_idx; down likewise (the silu kernel feeds it). o never: the attention
/// writes its input. fp16 linears are `None`.
pub fn layer_px(
    on: bool,
    plain_kernels_serve: bool,
    qkv: &[Option<PxFacts>],
    gate_up: &[Option<PxFacts>],
    down: Option<PxFacts>,
) -> LayerPx {
    if !on || !plain_kernels_serve {
        return LayerPx::default();
    }
    let even = |f: Option<PxFacts>| f == Some((true, false));
    let one = |segs: &[Option<PxFacts>]| segs.len() == 1 && even(segs[0]);
    LayerPx {
        qkv: one(qkv),
        gate_up: one(gate_up),
        down: even(down),
    }
}

/// Whether `layer_px` may use plain kernels under this int4 kernel choice: auto only (it picks the
/// plain shape's tuned kernel for those linears and the act-order one for the rest, o included).
/// A named variant keeps its own path: v4/v5/v6 their in-kernel permutation (which the tiny
/// check's act-order cases exist to test), v2/v10 refuse act-order layers (o needs one anyway).
fn plain_kernels_serve(kernel: &Int4Kernel) -> bool {
    matches!(kernel, Int4Kernel::Auto(_))
}

fn px_facts(lin: &GpuLinear) -> Option<PxFacts> {
    match lin {
        GpuLinear::Int4(l) => Some((l.perm.is_some(), l.g_idx.is_some())),
        GpuLinear::F16(_) => None,
    }
}

/// The shape a linear on permuted x presents to a plain kernel: no permutation, no g_idx.
fn plain_shape(s: &LayerShape) -> LayerShape {
    LayerShape {
        perm: false,
        g_idx: false,
        ..*s
    }
}

fn shape_key(s: &LayerShape) -> ShapeKey {
    (s.k, s.n, s.group_size, s.perm || s.g_idx)
}

/// The dispatcher's key of a batch-1 linear (a group as wide as K is per-channel: -1).
fn problem_key((k, n, group, act_order): ShapeKey) -> crate::tune::ProblemKey {
    let u = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    crate::tune::ProblemKey {
        n: u(n),
        k: u(k),
        group_size: if group >= k { -1 } else { group as i32 },
        act_order,
        batch_bucket: 1,
    }
}

/// Every int4 linear shape planned for the step and its kernel, sorted: what a tuned decode
/// budget was timed with (tune::DecodeBudget::linears).
fn step_linears(
    choice: &HashMap<ShapeKey, (&'static Variant, Tunables)>,
) -> Vec<crate::tune::LinearChoice> {
    let mut v: Vec<crate::tune::LinearChoice> = choice
        .iter()
        .map(|(&key, (var, params))| crate::tune::LinearChoice {
            key: problem_key(key),
            choice: crate::tune::Choice {
                variant: var.name.to_string(),
                params: params.clone(),
            },
        })
        .collect();
    v.sort();
    v
}

fn free_now(ctx: &cudarc::driver::CudaContext) -> Result<u64> {
    Ok(ctx.mem_get_info().ctx("cuMemGetInfo")?.0 as u64)
}

impl GpuEngine {
    pub fn new(
        gpu: &Gpu,
        cfg: &ModelConfig,
        src: WeightSource,
        mut opts: EngineOptions,
    ) -> Result<Self> {
        let (hd, heads, kvh) = (
            cfg.head_dim(),
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
        );
        if !(8..=256).contains(&hd) || !hd.is_power_of_two() {
            return Err(LabError::invalid(
                "model config",
                format!("head_dim {hd}: the attention kernel needs a power of two in 8..=256"),
            ));
        }
        if kvh == 0 || heads % kvh != 0 {
            return Err(LabError::invalid(
                "model config",
                format!("{kvh} KV heads do not divide {heads} heads"),
            ));
        }
        if opts.max_ctx == 0 || opts.attn_chunk == 0 || opts.max_ctx > MAX_CTX {
            return Err(LabError::invalid(
                "engine options",
                format!(
                    "max_ctx {} and attn_chunk {} must be positive",
                    opts.max_ctx, opts.attn_chunk
                ),
            ));
        }
        let splits = opts.max_ctx.div_ceil(opts.attn_chunk);
        if splits > abi::LAB_LLAMA_ATTN_MAX_SPLITS as usize {
            return Err(LabError::invalid(
                "engine options",
                format!(
                    "max_ctx {} / attn_chunk {} = {splits} attention splits per head; the kernel combines at most {} (raise attn_chunk)",
                    opts.max_ctx,
                    opts.attn_chunk,
                    abi::LAB_LLAMA_ATTN_MAX_SPLITS
                ),
            ));
        }
        for (what, v) in [
            ("hidden_size", cfg.hidden_size),
            ("intermediate_size", cfg.intermediate_size),
        ] {
            if v % 8 != 0 {
                return Err(LabError::invalid(
                    "model config",
                    format!("{what} {v} must be a multiple of 8"),
                ));
            }
        }
        // lab_llama_add_rmsnorm keeps a row in registers: 8 values x 4 units x 512 threads.
        if cfg.hidden_size > MAX_NORM_HIDDEN {
            return Err(LabError::invalid(
                "model config",
                format!(
                    "hidden_size {} exceeds the {MAX_NORM_HIDDEN} the RMSNorm kernel holds per row",
                    cfg.hidden_size
                ),
            ));
        }
        let k = Kernels::load(gpu)?;
        let ctx = gpu.ctx.clone();
        let stream = ctx.new_stream().ctx("creating the engine's stream")?;
        // Buffers freed just before (a previous engine, the ceiling probes) return to the driver
        // only at a synchronization: the first H100 run counted ~2 GiB of freed probe buffers as
        // "CUDA context" without this.
        ctx.synchronize()
            .ctx("draining freed memory before the VRAM readings")?;
        let (free, total) = ctx.mem_get_info().ctx("cuMemGetInfo")?;
        let mut vram = VramLedger::start(free as u64, total as u64);

        let weights = match src {
            WeightSource::Host { weights, label } => {
                GpuWeights::upload(&stream, cfg, weights, label)?
            }
            WeightSource::Synthetic(spec) => GpuWeights::synthetic(&stream, &k.fill, cfg, spec)?,
        };
        stream.synchronize().ctx("weights upload / generation")?;
        vram.phase(Phase::Weights, free_now(&ctx)?, weights.desc.total_bytes());

        let kv_dim = kvh * hd;
        let kv_len = cfg.num_hidden_layers * 2 * opts.max_ctx * kv_dim;
        let kv = stream
            .alloc_zeros::<f16>(kv_len)
            .ctx("allocating the KV cache")?;
        stream.synchronize().ctx("KV cache allocation")?;
        vram.phase(Phase::KvCache, free_now(&ctx)?, kv_len as u64 * 2);

        let n_splits = opts.max_ctx.div_ceil(opts.attn_chunk);
        let (h, inter, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let max_n = widest_linear_n(cfg);
        let inv_freq: Vec<f32> = (0..hd / 2)
            .map(|i| cfg.rope_theta.powf(-((2 * i) as f64) / hd as f64) as f32)
            .collect();
        let a16 = |n: usize, what: &str| stream.alloc_zeros::<f16>(n).ctx(what);
        let a32 = |n: usize, what: &str| stream.alloc_zeros::<f32>(n).ctx(what);
        let b = Bufs {
            resid: a32(h, "resid")?,
            xn: a16(h, "xn")?,
            qkv: a16(h + 2 * kv_dim, "qkv")?,
            attn: a16(h, "attn")?,
            o: a16(h, "o")?,
            gate_up: a16(2 * inter, "gate_up")?,
            act: a16(inter, "act")?,
            xn_p: a16(h, "xn (permuted)")?,
            act_p: a16(inter, "act (permuted)")?,
            down: a16(h, "down")?,
            logits: a32(v, "logits")?,
            partial: a32(heads * n_splits * (hd + 2), "attention partials")?,
            q_rot: a16(heads * hd, "rotated q")?,
            attn_tickets: stream.alloc_zeros::<u32>(heads).ctx("attention tickets")?,
            q4_ws: a32(max_n, "int4 GEMV accumulator")?,
            gemv_ws: a32(max_n + max_n.div_ceil(TILE_N), "registry split-K workspace")?,
            state: stream
                .alloc_zeros::<i32>(abi::LAB_LLAMA_STATE_WORDS as usize)
                .ctx("state")?,
            history: stream.alloc_zeros::<i32>(opts.max_ctx).ctx("history")?,
            inv_freq: stream.clone_htod(&inv_freq).ctx("inv_freq")?,
        };
        let mut own = (h * 4
            + (h * 6 + heads * hd + 2 * kv_dim + 4 * inter) * 2
            + v * 4
            + (heads * n_splits * (hd + 2) + heads + 2 * max_n + max_n.div_ceil(TILE_N) + hd / 2)
                * 4) as u64;
        own += (abi::LAB_LLAMA_STATE_WORDS as usize + opts.max_ctx) as u64 * 4;

        // Every linear of the model (a checkpoint may leave some in fp16).
        let all_linears = || weights.layers.iter().flat_map(GpuLayer::linears);
        let has_f16 = all_linears().any(|l| matches!(l, GpuLinear::F16(_)));
        let mut blas = None;
        let mut fp16_backend = None;
        let chunk = opts.prefill_chunk.min(opts.max_ctx);
        // The int4 prefill through dequant + cuBLAS needs the handle too: where some chunk size
        // takes that path for some int4 linear (the prefill plan's `dequant`, as Prefill::new and
        // `lab plan` see it). Auto's dequant (an fp16 column slice of W + the handle) only where
        // the card has the room: else the GEMM family's smaller plan (prefill_choice_for_memory).
        let plan = |choice| {
            prefill::plan_for(
                cfg,
                &weights,
                chunk,
                choice,
                gpu.sm(),
                opts.dequant_slice_elems,
            )
        };
        let mut prefill_plan = plan(opts.prefill_int4);
        if opts.prefill_int4 == PrefillInt4::Auto {
            if let Some(p) = prefill_plan.filter(|p| p.dequant) {
                let need = p.sizes.bytes() + crate::plan::CUBLAS_BYTES;
                opts.prefill_int4 =
                    prefill_choice_for_memory(opts.prefill_int4, need, free_now(&ctx)?, gpu.sm());
                prefill_plan = plan(opts.prefill_int4);
            }
        }
        let dequant_prefill = prefill_plan.is_some_and(|p| p.dequant);
        let fp16_cublas = has_f16 && opts.fp16_backend == Fp16Backend::Cublas;
        if has_f16 || dequant_prefill {
            if has_f16 {
                fp16_backend = Some(Fp16Backend::Lab);
            }
            // SAFETY: only probes whether libcublas can be dlopen'ed; a missing library would
            // otherwise panic inside cudarc on the first cuBLAS call.
            if (fp16_cublas || dequant_prefill)
                && unsafe { cudarc::cublas::sys::is_culib_present() }
            {
                let handle = cudarc::cublas::CudaBlas::new(stream.clone())
                    .ctx("creating the cuBLAS handle")?;
                let ws = stream
                    .alloc_zeros::<u8>(CUBLAS_WORKSPACE)
                    .ctx("cuBLAS workspace")?;
                // SAFETY: the workspace outlives the handle (both live in `Blas`, dropped together).
                unsafe {
                    cudarc::cublas::sys::cublasSetWorkspace_v2(
                        *handle.handle(),
                        raw(&ws, &stream) as *mut _,
                        CUBLAS_WORKSPACE,
                    )
                }
                .result()
                .ctx("cublasSetWorkspace")?;
                own += CUBLAS_WORKSPACE as u64;
                blas = Some(Blas {
                    handle,
                    _workspace: ws,
                });
                if fp16_cublas {
                    fp16_backend = Some(Fp16Backend::Cublas);
                }
            }
            if dequant_prefill && blas.is_none() {
                if opts.prefill_int4 != PrefillInt4::Auto {
                    return Err(LabError::invalid(
                        "--prefill-int4 dequant",
                        "needs libcublas, which could not be loaded (or use --prefill-int4 v2)",
                    ));
                }
                // Auto without cuBLAS: the GEMM family for every chunk (the engine's reported
                // choice says v2, or v1 on sm_75, so no report claims a dequant it did not run).
                opts.prefill_int4 = PrefillInt4::gemm_family_on(gpu.sm());
            }
        }
        stream.synchronize().ctx("workspace allocation")?;
        vram.phase(Phase::Workspace, free_now(&ctx)?, own);

        // Every int4 layer's kernel is chosen and planned now (a refusal names the layer and the
        // reason), and the instantiations the plans use are loaded before any graph capture.
        // Planned for this device, as every later launch is (the engine keeps `dev`).
        let dev = gpu.info.limits();
        let mut gemv_fns = HashMap::new();
        let mut int4_choice = HashMap::new();
        let mut px = Vec::with_capacity(weights.layers.len());
        for (li, l) in weights.layers.iter().enumerate() {
            let segs = |s: &[Slot]| s.iter().map(|x| px_facts(&x.lin)).collect::<Vec<_>>();
            // Eligibility, whatever act_order_plain says now (set_act_order_plain toggles it, the
            // decode bench times both): such linears get both kernels planned and loaded.
            let lpx = layer_px(
                true,
                plain_kernels_serve(&opts.int4),
                &segs(&l.qkv),
                &segs(&l.gate_up),
                px_facts(&l.down),
            );
            px.push(lpx);
            // Each linear with whether it runs on permuted x, in step order.
            let roles = l
                .qkv
                .iter()
                .map(|s| (&s.lin, lpx.qkv))
                .chain(std::iter::once((&l.o, false)))
                .chain(l.gate_up.iter().map(|s| (&s.lin, lpx.gate_up)))
                .chain(std::iter::once((&l.down, lpx.down)));
            // The act-order shape's choice always (the prefill's per-row path and the option off use
            // it), the plain shape's too where the linear may run on permuted x.
            let shapes = roles.flat_map(|(lin, eligible)| match lin {
                GpuLinear::Int4(q) => {
                    let s = layer_shape(q);
                    let mut v = vec![(q, s)];
                    if eligible {
                        v.push((q, plain_shape(&s)));
                    }
                    v
                }
                GpuLinear::F16(_) => Vec::new(),
            });
            for (q, shape) in shapes {
                let Some((v, params)) = opts.int4.choose(&shape)? else {
                    continue;
                };
                if gpu.sm() < v.min_sm {
                    return Err(LabError::invalid(
                        "--int4-kernel",
                        format!(
                            "{} needs sm_{} or newer; this device is sm_{}",
                            v.name,
                            v.min_sm,
                            gpu.sm()
                        ),
                    ));
                }
                let p = gemv_plan(v, &shape, 1, q.k, q.n, &params, dev).map_err(|e| {
                    LabError::invalid(format!("layer {li} int4 kernel"), e.to_string())
                })?;
                // v6 linears may also run at one block per SM (set_v6_one_block_per_sm):
                // that plan's instantiation (t256) is loaded now too, before any capture.
                // Best effort: a shape that plan refuses keeps its own grid (registry_gemv
                // then names the missing instantiation if the experiment is switched on).
                let mut symbols = vec![p.symbol.clone()];
                if gemv_kind(v).ok() == Some(GemvKind::Pipe) {
                    let one = v6_one_block_per_sm(&params, q.n, dev.sms as usize);
                    if let Ok(p1) = gemv_plan(v, &shape, 1, q.k, q.n, &one, dev) {
                        symbols.push(p1.symbol);
                    }
                }
                for sym in symbols {
                    if let std::collections::hash_map::Entry::Vacant(e) = gemv_fns.entry(sym) {
                        let f = gpu.function(e.key())?;
                        e.insert(f);
                    }
                }
                int4_choice.insert(shape_key(&shape), (v, params));
            }
        }

        // The decode step's PDL prefetch budget: the tuned one for this model where `lab tune`
        // timed a step with exactly these kernels (tune::decode), unless the caller set one.
        let linears = step_linears(&int4_choice);
        let tuned_budget = match &opts.int4 {
            Int4Kernel::Auto(d) if opts.pdl_prefetch_tuned => d
                .decode_budget(
                    &crate::tune::DecodeModel::of(cfg),
                    &opts.step_options(),
                    &linears,
                )
                .cloned(),
            _ => None,
        };
        if let Some(b) = &tuned_budget {
            opts.pdl_budget = b.winner.clone();
        }

        // The prefill workspace last, as its own ledger line (it is the part a decode-only run
        // could do without).
        let prefill = prefill::Prefill::new(
            gpu,
            &stream,
            cfg,
            &weights,
            opts.prefill_chunk.min(opts.max_ctx),
            opts.prefill_int4,
            opts.dequant_slice_elems,
        )?;
        stream.synchronize().ctx("prefill workspace allocation")?;
        vram.phase(
            Phase::Prefill,
            free_now(&ctx)?,
            prefill.as_ref().map_or(0, |p| p.bufs.sizes.bytes()),
        );

        Ok(GpuEngine {
            cfg: cfg.clone(),
            dev,
            stream,
            k,
            weights,
            kv,
            b,
            blas,
            graph: None,
            opts,
            n_splits,
            pos: 0,
            ctx,
            vram,
            fp16_backend,
            gemv_fns,
            int4_choice,
            linears,
            tuned_budget,
            px,
            prefill,
            streamed: Cell::new(0),
            step_pdl: Cell::new(false),
            poison_smem: 0,
            v6_one_per_sm: false,
            small_ops_plain: false,
            skip: SkipOps::default(),
            pdl_possible: gpu.pdl_ready(),
            persistent: None,
        })
        .and_then(|mut e| {
            if e.opts.persistent_layers {
                e.persistent = Some(e.build_persistent()?);
            }
            Ok(e)
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    pub fn position(&self) -> usize {
        self.pos
    }
    pub fn max_ctx(&self) -> usize {
        self.opts.max_ctx
    }
    pub fn kv_bytes(&self) -> u64 {
        self.kv.len() as u64 * 2
    }
    pub fn vram(&mut self) -> Result<VramReport> {
        let f = free_now(&self.ctx)?;
        self.vram.observe(f);
        Ok(self.vram.report())
    }
    pub fn int4_kernel(&self) -> String {
        self.opts.int4.name()
    }
    /// The int4 kernel choice the engine was built with.
    pub fn int4_kernel_choice(&self) -> &Int4Kernel {
        &self.opts.int4
    }
    /// Ops one decode step marks in the per-op profile (`profile_step`): embedding, per layer
    /// attn_norm, qkv_proj, rope, attention, o_proj, residual_attn, ffn_norm, gate_up_proj,
    /// silu_mul (only where the down projection takes no gated input), down_proj, then
    /// residual_final, final_norm, lm_head, argmax.
    pub fn profile_marks_per_step(&self) -> usize {
        if self.persistent_active().is_some() {
            // embedding, decode_layers, then the four above.
            return 1 + 1 + 4;
        }
        let silu = (0..self.weights.layers.len())
            .filter(|&li| !self.takes_gated_input(li))
            .count();
        1 + 9 * self.weights.layers.len() + silu + 4
    }

    /// Whether the step feeds layer `li`'s down projection the fused [gate | up] (no silu launch).
    fn takes_gated_input(&self, li: usize) -> bool {
        self.opts.fused_glu && self.can_take_gated_input(li)
    }

    /// Whether layer `li`'s down projection kernel can take the fused [gate | up] at all. Not on
    /// permuted x: the silu kernel writes that copy.
    fn can_take_gated_input(&self, li: usize) -> bool {
        match &self.weights.layers[li].down {
            GpuLinear::Int4(l) if !self.px_active(li).down => {
                int4_takes_gated_input(self.int4_choice_of(l, false).map(|(v, _)| *v))
            }
            _ => false,
        }
    }

    /// The kernel chosen at construction for this int4 linear, on permuted x or not.
    fn int4_choice_of(&self, l: &Int4Dev, px: bool) -> Option<&(&'static Variant, Tunables)> {
        let s = layer_shape(l);
        let s = if px { plain_shape(&s) } else { s };
        self.int4_choice.get(&shape_key(&s))
    }

    /// Which linears of layer `li` run on permuted x now.
    fn px_active(&self, li: usize) -> LayerPx {
        if self.opts.act_order_plain {
            self.px[li]
        } else {
            LayerPx::default()
        }
    }

    /// For a norm whose consumer starts with `first`: the permutation the norm also applies (0:
    /// none) and the x the consumer reads, xn_p when it runs on permuted x (`px`), else xn.
    fn norm_for(&self, px: bool, first: &GpuLinear) -> (u64, u64) {
        if px {
            (self.perm_of(first), self.r(&self.b.xn_p))
        } else {
            (0, self.r(&self.b.xn))
        }
    }

    /// The device address of an int4 linear's permutation (i32 [k]), 0 for none.
    fn perm_of(&self, lin: &GpuLinear) -> u64 {
        match lin {
            GpuLinear::Int4(l) => l.perm.as_ref().map_or(0, |p| self.r(p)),
            GpuLinear::F16(_) => 0,
        }
    }

    /// How many linears run on permuted x now (EngineOptions::act_order_plain).
    pub fn act_order_plain_linears(&self) -> usize {
        (0..self.px.len())
            .map(|li| {
                let p = self.px_active(li);
                p.qkv as usize + p.gate_up as usize + p.down as usize
            })
            .sum()
    }

    /// Whether act-order linears run on plain kernels where eligible
    /// (EngineOptions::act_order_plain).
    pub fn act_order_plain(&self) -> bool {
        self.opts.act_order_plain
    }

    /// The step options now (EngineOptions::step_options; the set_* toggles change them).
    pub fn step_options(&self) -> crate::tune::StepOptions {
        self.opts.step_options()
    }

    /// Turn it on or off (both kernels of every eligible linear were loaded at construction); the
    /// graph is captured again at the next graph step. Returns whether any linear changes.
    pub fn set_act_order_plain(&mut self, on: bool) -> bool {
        self.opts.act_order_plain = on;
        self.graph = None;
        self.px.iter().any(|p| *p != LayerPx::default())
    }

    /// The persistent layers when the step runs them.
    fn persistent_active(&self) -> Option<&Persistent> {
        self.persistent
            .as_ref()
            .filter(|_| self.opts.persistent_layers)
    }

    /// Why the driver refused to capture the persistent layers' step into a CUDA graph, when it did
    /// (their "graph" steps then run eager).
    pub fn persistent_graph_refused(&self) -> Option<&str> {
        self.persistent_active()
            .and_then(|p| p.graph_refused.as_deref())
    }

    /// The persistent layers' grid and phase splits, once planned.
    pub fn persistent_summary(&self) -> Option<String> {
        self.persistent.as_ref().map(|p| p.summary())
    }

    /// Run the decode layers as one persistent launch, or as separate launches again (drops the
    /// captured graph). Plans and uploads the layers the first time; a refusal (an fp16 linear, a
    /// shape gemv_v6_pipe cannot take) leaves the engine as it was.
    pub fn set_persistent_layers(&mut self, on: bool) -> Result<()> {
        if on && self.persistent.is_none() {
            self.persistent = Some(self.build_persistent()?);
        }
        self.opts.persistent_layers = on;
        self.graph = None;
        Ok(())
    }

    /// Cap the persistent grid (EngineOptions::persistent_max_grid; 0: none): the layers are
    /// planned again at the next use.
    pub fn set_persistent_max_grid(&mut self, blocks: usize) {
        if blocks != self.opts.persistent_max_grid {
            self.opts.persistent_max_grid = blocks;
            self.persistent = None;
            self.opts.persistent_layers = false;
            self.graph = None;
        }
    }

    pub fn has_graph(&self) -> bool {
        self.graph.is_some()
    }

    /// One engine kernel launch of `grid` x `block` threads: plain, or inside a decode step with
    /// PDL on, with programmatic stream serialization allowed.
    fn launch<P: DeviceRepr>(
        &self,
        f: &CudaFunction,
        grid: (u32, u32),
        block: u32,
        smem: u32,
        p: &P,
        what: &str,
    ) -> Result<()> {
        self.launch_as(f, grid, block, smem, p, self.step_kind(), what)
    }

    /// A step's kernel that is not a GEMV (embedding, norms, attention, silu, argmax, sampler):
    /// as `launch`, but plain while `small_ops_plain` is set, even in a PDL step.
    fn launch_op<P: DeviceRepr>(
        &self,
        f: &CudaFunction,
        grid: (u32, u32),
        block: u32,
        smem: u32,
        p: &P,
        what: &str,
    ) -> Result<()> {
        let kind = if self.small_ops_plain {
            LaunchKind::Plain
        } else {
            self.step_kind()
        };
        self.launch_as(f, grid, block, smem, p, kind, what)
    }

    /// `launch` and `launch_op`'s one body: the config, then `launch_ex` as `kind`.
    #[allow(clippy::too_many_arguments)]
    fn launch_as<P: DeviceRepr>(
        &self,
        f: &CudaFunction,
        grid: (u32, u32),
        block: u32,
        smem: u32,
        p: &P,
        kind: LaunchKind,
        what: &str,
    ) -> Result<()> {
        let cfg = LaunchConfig {
            grid_dim: (grid.0, grid.1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: smem,
        };
        // SAFETY: every params struct carries device addresses of live buffers owned by `self`
        // with the sizes the kernel's top comment requires; shapes were checked at construction.
        unsafe { self.launch_ex(f, cfg, p, kind, 1) }.ctx(what)
    }

    /// Plain, or PDL inside a decode step with PDL on.
    fn step_kind(&self) -> LaunchKind {
        if self.step_pdl.get() {
            LaunchKind::Pdl
        } else {
            LaunchKind::Plain
        }
    }

    /// One launch of `kind`, as clusters of (1, `cluster_y`, 1) blocks when `cluster_y` > 1
    /// (gemv_v9_cluster's split-K slices of a tile): plain through the launch builder, anything
    /// else through cuLaunchKernelEx with its attributes (PDL or cooperative, and the cluster
    /// dimension).
    ///
    /// # Safety
    /// As any kernel launch: `p` must be the params struct `f` expects, pointing at live buffers;
    /// a cooperative grid must fit the device at once (the driver refuses it
    /// otherwise); cluster dims must divide the grid on an sm_90 device.
    unsafe fn launch_ex<P: DeviceRepr>(
        &self,
        f: &CudaFunction,
        cfg: LaunchConfig,
        p: &P,
        kind: LaunchKind,
        cluster_y: u32,
    ) -> std::result::Result<(), cudarc::driver::DriverError> {
        use cudarc::driver::sys;
        // At most two attributes (the kind's, a cluster's): on the stack, as every eager launch
        // of a PDL step comes here.
        let mut attrs: [sys::CUlaunchAttribute; 2] = std::mem::zeroed();
        let mut n = 0;
        match kind {
            LaunchKind::Plain => {
                if self.poison_smem > 0 {
                    let pp = abi::lab_llama_poison_params {
                        pattern: abi::LAB_LLAMA_POISON_PATTERN,
                        words: self.poison_smem / 4,
                    };
                    let poison = LaunchConfig {
                        grid_dim: (8 * self.dev.sms, 1, 1),
                        block_dim: (256, 1, 1),
                        shared_mem_bytes: self.poison_smem,
                    };
                    self.stream
                        .launch_builder(&self.k.poison)
                        .arg(&pp)
                        .launch(poison)?;
                }
                if cluster_y <= 1 {
                    return self.stream.launch_builder(f).arg(p).launch(cfg).map(|_| ());
                }
            }
            LaunchKind::Pdl => {
                let mut a: sys::CUlaunchAttribute = std::mem::zeroed();
                a.id =
                    sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
                a.value.programmaticStreamSerializationAllowed = 1;
                attrs[n] = a;
                n += 1;
            }
            LaunchKind::Cooperative => {
                let mut a: sys::CUlaunchAttribute = std::mem::zeroed();
                a.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
                a.value.cooperative = 1;
                attrs[n] = a;
                n += 1;
            }
        }
        if cluster_y > 1 {
            attrs[n] = crate::cuda::cluster_dim_attribute(cluster_y);
            n += 1;
        }
        crate::cuda::launch_with_attributes(&self.ctx, &self.stream, f, cfg, p, &mut attrs[..n])
    }

    fn r<T>(&self, s: &CudaSlice<T>) -> u64 {
        raw(s, &self.stream)
    }

    /// The attention of layer `li` (RoPE, KV append, split, combine): lab_llama_attn_split's
    /// params, also the persistent layers' (which take each layer's cache rows from its descriptor).
    fn attn_params(&self, li: usize) -> abi::lab_llama_attn_params {
        let cfg = &self.cfg;
        let (hd, heads, kvh) = (
            cfg.head_dim(),
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
        );
        let (kv_dim, max_ctx) = (kvh * hd, self.opts.max_ctx);
        let k_cache = self.r(&self.kv) + 2 * (li * 2 * max_ctx * kv_dim) as u64;
        let b = &self.b;
        abi::lab_llama_attn_params {
            qkv: self.r(&b.qkv),
            k_cache,
            v_cache: k_cache + 2 * (max_ctx * kv_dim) as u64,
            partial: self.r(&b.partial),
            out: self.r(&b.attn),
            state: self.r(&b.state),
            tickets: self.r(&b.attn_tickets),
            inv_freq: self.r(&b.inv_freq),
            q_rot: self.r(&b.q_rot),
            heads: heads as i32,
            kv_heads: kvh as i32,
            head_dim: hd as i32,
            max_ctx: max_ctx as i32,
            chunk: self.opts.attn_chunk as i32,
            n_splits: self.n_splits as i32,
            scale: (1.0 / (hd as f64).sqrt()) as f32,
            prefetch_kv: self.opts.attn_prefetch_kv as i32,
        }
    }

    /// The registry split-K workspace `gemv_ws` as (f32 partial columns, u32 ticket words): the
    /// largest N of the model, then ceil(N / 32) tickets (sized in `new`).
    fn gemv_ws_parts(&self) -> (usize, usize) {
        let max_n = widest_linear_n(&self.cfg);
        (max_n, self.b.gemv_ws.len() - max_n)
    }

    /// The one place a linear layer is computed: y[0..n] = x[0..k] . W.
    fn linear(&self, lin: &GpuLinear, x: u64, y: u64) -> Result<()> {
        self.linear_in(lin, XInput::Plain(x), y)
    }

    /// `linear` with the input either plain or gated (see XInput); only int4 linears take a gated
    /// input (their kernels compute it while loading x; cuBLAS cannot).
    fn linear_in(&self, lin: &GpuLinear, x: XInput, y: u64) -> Result<()> {
        self.linear_px(lin, x, y, false)
    }

    /// `linear_in`, with `px`: x is already in the int4 linear's sorted row order (its producer
    /// wrote the permuted copy), so the plain shape's kernel runs without the permutation
    /// (EngineOptions::act_order_plain).
    fn linear_px(&self, lin: &GpuLinear, x: XInput, y: u64, px: bool) -> Result<()> {
        self.streamed.set(self.streamed.get() + lin.bytes());
        match lin {
            GpuLinear::Int4(l) => match self.int4_choice_of(l, px) {
                None => self.q4_gemv(l, x, y),
                Some((v, params)) => self.registry_gemv(v, params, l, x, y, px),
            },
            GpuLinear::F16(l) => {
                let XInput::Plain(x) = x else {
                    return Err(LabError::invalid(
                        "fp16 linear",
                        "a gated input needs an int4 GEMV (the engine runs silu * up first for fp16)",
                    ));
                };
                match self.fp16_blas() {
                    Some(b) => self.cublas_gemm(b, l, x, 1, y, l.n),
                    None => {
                        self.gemv_f16(self.r(&l.w), x, y, 0, l.n, l.k, "fp16 linear (lab GEMV)")
                    }
                }
            }
        }
    }

    /// cuBLAS for the fp16 linears: only when that is their backend (the handle may exist for the
    /// int4 dequant prefill alone).
    fn fp16_blas(&self) -> Option<&Blas> {
        self.blas
            .as_ref()
            .filter(|_| self.fp16_backend == Some(Fp16Backend::Cublas))
    }

    /// The kernel parameters of one int4 linear (m = 1, no bias): shared by the engine's own GEMV
    /// and the registry variants. Symmetric layers pass no zeros (the kernels fold in 8).
    fn int4_params(
        &self,
        l: &Int4Dev,
        x: XInput,
        y: u64,
        workspace: u64,
        split: usize,
        slice: usize,
    ) -> abi::lab_gemm_params {
        let (x, x_glu) = match x {
            XInput::Plain(x) => (x, 0),
            XInput::Gated(gate_up) => (gate_up, 1),
        };
        abi::lab_gemm_params {
            x,
            qweight: self.r(&l.qweight),
            qzeros: if l.symmetric {
                0
            } else {
                l.qzeros.as_ref().map_or(0, |z| self.r(z))
            },
            scales: self.r(&l.scales),
            g_idx: l.g_idx.as_ref().map_or(0, |g| self.r(g)),
            perm: l.perm.as_ref().map_or(0, |g| self.r(g)),
            bias: 0,
            y,
            workspace,
            m: 1,
            n: l.n as i32,
            k: l.k as i32,
            group_size: l.group_size as i32,
            groups: l.groups as i32,
            zero_mode: if l.symmetric {
                abi::LAB_ZEROS_SYMMETRIC
            } else {
                abi::LAB_ZEROS_TRUE
            } as i32,
            split_k: split as i32,
            k_slice: slice as i32,
            // Only a PDL step overlaps the prefetch with the previous kernel.
            prefetch_bytes: if self.step_pdl.get() {
                self.opts.pdl_budget.bytes.min(i32::MAX as u32) as i32
            } else {
                0
            },
            x_glu,
            ld_w: 0,
        }
    }

    fn q4_gemv(&self, l: &Int4Dev, x: XInput, y: u64) -> Result<()> {
        let (split, slice) = q4_split(l.n, l.k, self.dev.sms as usize);
        let p = self.int4_params(l, x, y, self.r(&self.b.q4_ws), split, slice);
        let what = format!("int4 GEMV (engine v1) K {} N {}", l.k, l.n);
        self.launch(
            &self.k.q4,
            (l.n.div_ceil(128) as u32, split as u32),
            128,
            (slice * 4) as u32,
            &p,
            &what,
        )?;
        let f = abi::lab_llama_q4_finish_params {
            ws: p.workspace,
            y,
            n: l.n as i32,
            _pad: 0,
        };
        self.launch(
            &self.k.q4_finish,
            (l.n.div_ceil(256) as u32, 1),
            256,
            0,
            &f,
            &what,
        )
    }

    /// A registry GEMV variant on the engine's buffers and stream: the gemv launcher's plan
    /// (shape checks, instantiation, grid), parameters filled as kernels::launch fills them.
    fn registry_gemv(
        &self,
        v: &'static Variant,
        params: &Tunables,
        l: &Int4Dev,
        x: XInput,
        y: u64,
        px: bool,
    ) -> Result<()> {
        let shape = if px {
            plain_shape(&layer_shape(l))
        } else {
            layer_shape(l)
        };
        let one;
        let params = if self.v6_one_per_sm && gemv_kind(v).ok() == Some(GemvKind::Pipe) {
            one = v6_one_block_per_sm(params, l.n, self.dev.sms as usize);
            &one
        } else {
            params
        };
        let plan = gemv_plan(v, &shape, 1, l.k, l.n, params, self.dev)?;
        let f = self.gemv_fns.get(&plan.symbol).ok_or_else(|| {
            LabError::invalid(
                "int4 kernel",
                format!("{} was not loaded at engine construction", plan.symbol),
            )
        })?;
        let mut p = self.int4_params(
            l,
            x,
            y,
            self.r(&self.b.gemv_ws),
            plan.split_k as usize,
            plan.k_slice as usize,
        );
        if px {
            // x arrives in the sorted row order: the kernel reads it as it is.
            (p.perm, p.g_idx) = (0, 0);
        }
        // Only a PDL step prefetches (int4_params left 0 otherwise), whatever the budgets say.
        if self.step_pdl.get() {
            p.prefetch_bytes = self.opts.pdl_budget.bytes_for(v.name).min(i32::MAX as u32) as i32;
        }
        let cfg = LaunchConfig {
            grid_dim: plan.grid,
            block_dim: plan.block,
            shared_mem_bytes: 0,
        };
        // SAFETY: as kernels::launch: x [k], y [n] fp16; qweight [k/8, n], scales/qzeros [groups, n
        // (/8)], perm [k] live buffers of this engine; the workspace holds n + n/32 zeroed words
        // for every N of this model (sized for the widest linear); the plan checked the shape, and
        // a cluster plan (v9: cluster_y = grid.y <= 8) only on sm_90 (checked at construction).
        unsafe { self.launch_ex(f, cfg, &p, self.step_kind(), plan.cluster_y) }
            .ctx(&format!("{} ({}) K {} N {}", plan.symbol, v.name, l.k, l.n))
    }

    #[allow(clippy::too_many_arguments)]
    fn gemv_f16(
        &self,
        w: u64,
        x: u64,
        y16: u64,
        y32: u64,
        n: usize,
        k: usize,
        what: &str,
    ) -> Result<()> {
        let p = abi::lab_llama_gemv_f16_params {
            w,
            x,
            y_f16: y16,
            y_f32: y32,
            n: n as i32,
            k: k as i32,
        };
        self.launch(
            &self.k.gemv_f16,
            (n.div_ceil(8) as u32, 1),
            256,
            0,
            &p,
            what,
        )
    }

    /// add + RMSNorm into xn; with `perm` (a device i32 [hidden], or 0) also xn_p[j] =
    /// xn[perm[j]] for a consumer on permuted x.
    fn norm(&self, delta: u64, weight: &CudaSlice<f16>, perm: u64, what: &str) -> Result<()> {
        let p = abi::lab_llama_norm_params {
            resid: self.r(&self.b.resid),
            delta,
            weight: self.r(weight),
            out: self.r(&self.b.xn),
            perm,
            out_perm: if perm == 0 { 0 } else { self.r(&self.b.xn_p) },
            hidden: self.cfg.hidden_size as i32,
            eps: self.cfg.rms_norm_eps as f32,
        };
        self.launch_op(&self.k.norm, (1, 1), 512, 0, &p, what)
    }

    /// Enqueue one decode step. With `trace`, synchronize after every op and keep its output;
    /// with `marks`, record an event after every op (the per-op profile).
    fn enqueue_step(
        &self,
        trace: Option<&mut Vec<TraceEntry>>,
        marks: Option<&mut Vec<ProfileMark>>,
    ) -> Result<()> {
        // PDL only for the step's own launches, and not while tracing (the trace synchronizes
        // after every op anyway).
        self.step_pdl.set(self.pdl_in_effect() && trace.is_none());
        let r = self.enqueue_step_ops(trace, marks);
        self.step_pdl.set(false);
        r
    }

    fn enqueue_step_ops(
        &self,
        mut trace: Option<&mut Vec<TraceEntry>>,
        mut marks: Option<&mut Vec<ProfileMark>>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let (h, hd, heads, kvh) = (
            cfg.hidden_size,
            cfg.head_dim(),
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
        );
        let kv_dim = kvh * hd;
        let (inter, vocab, max_ctx) = (cfg.intermediate_size, cfg.vocab_size, self.opts.max_ctx);
        let b = &self.b;
        let state = self.r(&b.state);
        let tracing = trace.is_some();
        let mut keep = |layer: Option<usize>, op: &'static str, v: Vec<f32>| -> Result<()> {
            if let Some(t) = trace.as_deref_mut() {
                t.push(TraceEntry {
                    layer,
                    op,
                    values: v,
                });
            }
            if let Some(m) = marks.as_deref_mut() {
                self.mark(m, op)?;
            }
            Ok(())
        };
        let snap16 = |s: &CudaSlice<f16>| -> Result<Vec<f32>> {
            if !tracing {
                return Ok(Vec::new());
            }
            let v = self.stream.clone_dtoh(s).ctx("debug trace copy")?;
            Ok(v.into_iter().map(|x| x.to_f32()).collect())
        };
        let snap32 = |s: &CudaSlice<f32>| -> Result<Vec<f32>> {
            if !tracing {
                return Ok(Vec::new());
            }
            self.stream.clone_dtoh(s).ctx("debug trace copy")
        };

        let e = abi::lab_llama_embed_params {
            table: self.r(&self.weights.embed),
            state,
            history: self.r(&b.history),
            resid: self.r(&b.resid),
            hidden: h as i32,
            vocab: vocab as i32,
            max_ctx: max_ctx as i32,
            _pad: 0,
        };
        self.launch_op(
            &self.k.embed,
            (h.div_ceil(256) as u32, 1),
            256,
            0,
            &e,
            "embedding",
        )?;
        keep(None, "embedding", snap32(&b.resid)?)?;

        let layer_stride = 2 * max_ctx * kv_dim;
        // The rotated q and the cache row the attention kernel appended: what the standalone
        // rope kernel used to leave in qkv (the trace's "rope" op, checked against RoPE in f64).
        let rope_trace = |li: usize| -> Result<Vec<f32>> {
            if !tracing {
                return Ok(Vec::new());
            }
            let mut v = snap16(&b.q_rot)?;
            let row = li * layer_stride + self.pos.min(max_ctx - 1) * kv_dim;
            for off in [row, row + max_ctx * kv_dim] {
                let part = self
                    .stream
                    .clone_dtoh(&self.kv.slice(off..off + kv_dim))
                    .ctx("debug trace copy")?;
                v.extend(part.into_iter().map(|x| x.to_f32()));
            }
            Ok(v)
        };
        // Persistent layers: one launch for all of them; a trace runs them one layer per launch
        // and reads the same ops as the launch-per-op step from the kernel's trace outputs.
        let persistent = self.persistent_active();
        if let (Some(p), false) = (persistent, tracing) {
            self.launch_persistent(p, 0, self.weights.layers.len(), false)?;
            keep(None, "decode_layers", Vec::new())?;
        }
        for (li, l) in self.weights.layers.iter().enumerate() {
            if let Some(p) = persistent {
                if !tracing {
                    break;
                }
                self.launch_persistent(p, li, li + 1, true)?;
                let (ffn_norm, resid_attn) = Self::persistent_trace_bufs(p);
                keep(Some(li), "attn_norm", snap16(&b.xn)?)?;
                keep(Some(li), "qkv_proj", snap16(&b.qkv)?)?;
                keep(Some(li), "rope", rope_trace(li)?)?;
                keep(Some(li), "attention", snap16(&b.attn)?)?;
                keep(Some(li), "o_proj", snap16(&b.o)?)?;
                keep(Some(li), "residual_attn", snap32(resid_attn)?)?;
                keep(Some(li), "ffn_norm", snap16(ffn_norm)?)?;
                keep(Some(li), "gate_up_proj", snap16(&b.gate_up)?)?;
                keep(Some(li), "silu_mul", snap16(&b.act)?)?;
                keep(Some(li), "down_proj", snap16(&b.down)?)?;
                continue;
            }
            let delta = if li == 0 { 0 } else { self.r(&b.down) };
            let px = self.px_active(li);
            // Permuted-x consumers (act_order_plain): the producer also writes their sorted copy.
            let (qkv_perm, qkv_x) = self.norm_for(px.qkv, &l.qkv[0].lin);
            let skip = self.skip;
            if !skip.norms {
                self.norm(
                    delta,
                    &l.attn_norm,
                    qkv_perm,
                    &format!("layer {li} input_layernorm"),
                )?;
            }
            keep(Some(li), "attn_norm", snap16(&b.xn)?)?;
            if !skip.qkv {
                self.fused_linear(&l.qkv, qkv_x, self.r(&b.qkv), px.qkv)?;
            }
            keep(Some(li), "qkv_proj", snap16(&b.qkv)?)?;
            let ap = self.attn_params(li);
            let smem = attn_split_smem(hd, self.opts.attn_chunk);
            // K and V rows 0..=pos, fp16: what the attention streams per layer.
            self.streamed
                .set(self.streamed.get() + 2 * (self.pos as u64 + 1) * kv_dim as u64 * 2);
            if !skip.attention {
                self.launch_op(
                    &self.k.attn_split,
                    (heads as u32, self.n_splits as u32),
                    256,
                    smem,
                    &ap,
                    &format!("layer {li} attention (rope + kv append + split + combine)"),
                )?;
            }
            // The rotated q and the cache row the attention kernel appended: what the standalone
            // rope kernel used to leave in qkv (the trace's "rope" op, checked against RoPE in f64).
            keep(Some(li), "rope", rope_trace(li)?)?;
            keep(Some(li), "attention", snap16(&b.attn)?)?;
            if !skip.o {
                self.linear(&l.o, self.r(&b.attn), self.r(&b.o))?;
            }
            keep(Some(li), "o_proj", snap16(&b.o)?)?;
            let (gu_perm, gu_x) = self.norm_for(px.gate_up, &l.gate_up[0].lin);
            if !skip.norms {
                self.norm(
                    self.r(&b.o),
                    &l.ffn_norm,
                    gu_perm,
                    &format!("layer {li} post_attention_layernorm"),
                )?;
            }
            keep(Some(li), "residual_attn", snap32(&b.resid)?)?;
            keep(Some(li), "ffn_norm", snap16(&b.xn)?)?;
            if !skip.gate_up {
                self.fused_linear(&l.gate_up, gu_x, self.r(&b.gate_up), px.gate_up)?;
            }
            keep(Some(li), "gate_up_proj", snap16(&b.gate_up)?)?;
            // A down projection whose kernel stages x once (v6, v1, the engine's q4:
            // int4_takes_gated_input) computes silu(gate) * up itself while loading x, one launch
            // per layer less; the others (fp16 through cuBLAS, v2/v4/v5) need act in memory. A
            // trace still runs the kernel, for its op-by-op comparison; the down projection then
            // reads gate|up as in the step.
            let gated = self.takes_gated_input(li);
            if (!gated || tracing) && !skip.silu {
                let down_perm = if px.down { self.perm_of(&l.down) } else { 0 };
                let sp = abi::lab_llama_silu_params {
                    gate_up: self.r(&b.gate_up),
                    out: self.r(&b.act),
                    perm: down_perm,
                    out_perm: if px.down { self.r(&b.act_p) } else { 0 },
                    inter: inter as i32,
                    _pad: 0,
                };
                self.launch_op(
                    &self.k.silu,
                    (inter.div_ceil(256) as u32, 1),
                    256,
                    0,
                    &sp,
                    &format!("layer {li} silu_mul"),
                )?;
                keep(Some(li), "silu_mul", snap16(&b.act)?)?;
            }
            let x = if gated {
                XInput::Gated(self.r(&b.gate_up))
            } else if px.down {
                XInput::Plain(self.r(&b.act_p))
            } else {
                XInput::Plain(self.r(&b.act))
            };
            if !skip.down {
                self.linear_px(&l.down, x, self.r(&b.down), px.down)?;
            }
            keep(Some(li), "down_proj", snap16(&b.down)?)?;
        }
        // The persistent layers added the last down projection into resid already.
        let delta = if persistent.is_some() {
            0
        } else {
            self.r(&b.down)
        };
        self.norm(delta, &self.weights.final_norm, 0, "final norm")?;
        keep(None, "residual_final", snap32(&b.resid)?)?;
        keep(None, "final_norm", snap16(&b.xn)?)?;
        self.streamed
            .set(self.streamed.get() + (vocab * h * 2) as u64);
        self.gemv_f16(
            self.r(&self.weights.lm_head),
            self.r(&b.xn),
            0,
            self.r(&b.logits),
            vocab,
            h,
            "lm_head",
        )?;
        keep(None, "lm_head", snap32(&b.logits)?)?;
        self.choose_token("next token")?;
        // The argmax has no output to trace; the profile still needs its end.
        if let Some(m) = marks {
            self.mark(m, "argmax")?;
        }
        Ok(())
    }

    /// A fused linear (q|k|v or gate|up): each segment from x into its columns of `out` (fp16),
    /// on permuted x where `px` (one segment then: `layer_px`).
    fn fused_linear(&self, segs: &[Slot], x: u64, out: u64, px: bool) -> Result<()> {
        for s in segs {
            self.linear_px(&s.lin, XInput::Plain(x), out + 2 * s.col as u64, px)?;
        }
        Ok(())
    }

    /// A profile mark: an event after the ops enqueued so far, and the bytes they stream.
    fn mark(&self, marks: &mut Vec<ProfileMark>, op: &'static str) -> Result<()> {
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        marks.push(ProfileMark {
            op,
            event: self.stream.record_event(flags).ctx("profile event")?,
            streamed: self.streamed.get(),
        });
        Ok(())
    }

    /// The step's last op: the next token from the logits into the state (greedy argmax, or
    /// top-p with the draw for the current position), position += 1.
    fn choose_token(&self, what: &str) -> Result<()> {
        let (logits, state) = (self.r(&self.b.logits), self.r(&self.b.state));
        let (vocab, max_ctx) = (self.cfg.vocab_size as i32, self.opts.max_ctx as i32);
        match self.opts.sampling {
            Sampling::Greedy => {
                let p = abi::lab_llama_argmax_params {
                    logits,
                    state,
                    vocab,
                    max_ctx,
                };
                self.launch_op(&self.k.argmax, (1, 1), 1024, 0, &p, what)
            }
            Sampling::TopP { top_p, temperature } => {
                let p = abi::lab_llama_sample_params {
                    logits,
                    state,
                    seed: self.opts.sample_seed,
                    top_p,
                    inv_temp: 1.0 / temperature,
                    vocab,
                    max_ctx,
                };
                let threads = abi::LAB_LLAMA_TOP_P_THREADS;
                self.launch_op(&self.k.sample, (1, 1), threads, 0, &p, what)
            }
        }
    }

    /// Capture the step as a CUDA graph (once; later steps replay it).
    pub fn capture_graph(&mut self) -> Result<()> {
        if self.graph.is_some() || self.persistent_graph_refused().is_some() {
            return Ok(());
        }
        self.stream.synchronize().ctx("before graph capture")?;
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .ctx("begin graph capture")?;
        let r = self.enqueue_step(None, None);
        let g = self
            .stream
            .end_capture(CUgraphInstantiate_flags(0))
            .ctx("end graph capture / instantiate");
        // A driver that cannot put the persistent layers' cooperative launch in a graph: their
        // steps run eager from now on (`persistent_graph_refused` says so), not an error.
        let refused = [r.as_ref().err(), g.as_ref().err()]
            .into_iter()
            .flatten()
            .find(|e| is_capture_refusal(e))
            .map(|e| e.to_string());
        if let (Some(why), Some(p)) = (refused, self.persistent.as_mut()) {
            if self.opts.persistent_layers {
                p.graph_refused = Some(why);
                return Ok(());
            }
        }
        r?;
        let g =
            g?.ok_or_else(|| LabError::invalid("CUDA graph", "capture produced an empty graph"))?;
        g.upload().ctx("graph upload")?;
        self.graph = Some(g);
        let f = free_now(&self.ctx)?;
        self.vram.observe(f);
        Ok(())
    }

    /// Change how steps choose their token; the captured graph (which holds the choice) is
    /// dropped and recaptured on the next graph step.
    /// The step's sampling mode and seed (EngineOptions::sampling, sample_seed).
    pub fn sampling(&self) -> (Sampling, u64) {
        (self.opts.sampling, self.opts.sample_seed)
    }

    pub fn set_sampling(&mut self, sampling: Sampling, seed: u64) {
        self.opts.sampling = sampling;
        self.opts.sample_seed = seed;
        self.graph = None;
    }

    /// The int4 linears of the step and their kernels, sorted (tune::DecodeBudget::linears).
    pub fn step_linears(&self) -> &[crate::tune::LinearChoice] {
        &self.linears
    }

    /// The tuned decode budget applied at construction (EngineOptions::pdl_prefetch_tuned).
    pub fn tuned_budget(&self) -> Option<&crate::tune::DecodeBudget> {
        self.tuned_budget.as_ref()
    }

    /// The GEMVs' PDL prefetch budgets now (EngineOptions::pdl_budget).
    pub fn budget_setting(&self) -> &crate::tune::BudgetSetting {
        &self.opts.pdl_budget
    }

    /// Set them; the graph is captured again at the next graph step.
    pub fn set_budget_setting(&mut self, s: &crate::tune::BudgetSetting) {
        self.opts.pdl_budget = s.clone();
        self.graph = None;
    }

    /// For reports: the budgets the PDL steps use and where they came from.
    pub fn budget_summary(&self) -> String {
        let s = &self.opts.pdl_budget;
        match &self.tuned_budget {
            Some(b) => format!(
                "{s} per block, tuned for this model by lab tune ({}: {})",
                b.label, b.note
            ),
            None => format!("{s} per block"),
        }
    }

    /// The persistent layers' L2 prefetch budget per block (EngineOptions::persistent_prefetch).
    pub fn persistent_prefetch(&self) -> u32 {
        self.opts.persistent_prefetch
    }

    /// Set it; the graph is captured again at the next graph step.
    pub fn set_persistent_prefetch(&mut self, bytes: u32) {
        self.opts.persistent_prefetch = bytes;
        self.graph = None;
    }

    /// Fuse silu(gate) * up into the down projection's x loads where its kernel can (see
    /// EngineOptions::fused_glu); the graph is captured again at the next graph step. Returns
    /// whether any layer's step changes with it (false for fp16 or plain-x int4 kernels).
    pub fn fused_glu(&self) -> bool {
        self.opts.fused_glu
    }

    pub fn set_fused_glu(&mut self, on: bool) -> bool {
        self.opts.fused_glu = on;
        self.graph = None;
        (0..self.weights.layers.len()).any(|li| self.can_take_gated_input(li))
    }

    /// Turn programmatic dependent launch on or off for the decode step (drops the captured
    /// graph, which holds the launches' attributes). Returns whether it is now in effect
    /// (false below sm_90).
    pub fn set_pdl(&mut self, on: bool) -> bool {
        self.opts.pdl = on;
        self.graph = None;
        self.pdl_in_effect()
    }

    /// Before every plain launch (eager steps without PDL), fill the shared memory of every SM
    /// with NaN, so a kernel that reads shared memory it did not write computes NaN every time
    /// instead of by chance: the tiny check's poisoned pass. The captured graph is dropped so a
    /// later graph step is captured without. Each `lab_llama_poison_smem` block takes all the
    /// dynamic shared memory a block may opt into (`poison_block_bytes`), 8 blocks per SM in
    /// turn, so one block fills a whole SM on every card (227 + 1 reserved = 228 KB on an H100,
    /// 99 + 1 on sm_86/89, 64 on sm_75): the fixed 48 KB blocks this replaces covered 192 of an
    /// H100's 228 KB (4 per SM) and 48 of a T4's 64.
    pub fn set_poison_smem(&mut self, on: bool) -> Result<()> {
        self.graph = None;
        self.poison_smem = 0;
        if on {
            let bytes = poison_block_bytes(self.dev);
            self.k
                .poison
                .set_attribute(
                    cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes as i32,
                )
                .ctx("opting lab_llama_poison_smem into the device's shared memory per block")?;
            self.poison_smem = bytes;
        }
        Ok(())
    }

    /// Launch every gemv_v6_pipe linear at one 256-thread block per SM (at most; the split the
    /// x buffer needs may add more) instead of its tuned / automatic grid of ~2 per SM, so the
    /// next kernel's blocks fit beside it under PDL (kernels::gemv::v6_one_block_per_sm). A
    /// decode-bench experiment: the captured graph is dropped. Returns whether some linear of
    /// this engine runs v6 (else nothing changes).
    pub fn set_v6_one_block_per_sm(&mut self, on: bool) -> bool {
        self.v6_one_per_sm = on;
        self.graph = None;
        self.int4_choice
            .values()
            .any(|(v, _)| gemv_kind(v).ok() == Some(GemvKind::Pipe))
    }

    /// Whether the decode attention prefetches its K/V rows into L2 (EngineOptions::attn_prefetch_kv).
    pub fn attn_prefetch_kv(&self) -> bool {
        self.opts.attn_prefetch_kv
    }

    /// Set it; the graph is captured again at the next graph step.
    pub fn set_attn_prefetch_kv(&mut self, on: bool) {
        self.opts.attn_prefetch_kv = on;
        self.graph = None;
    }

    /// In a PDL step, launch the kernels that are not GEMVs plain (no programmatic serialization):
    /// each then starts only when the GEMV before it has finished, and the GEMV after it may
    /// start beside it, so a GEMV's weight prefetch overlaps the small kernel just before it and
    /// never a GEMV still streaming (with every launch PDL, a chain GEMV -> norm -> GEMV lets
    /// the second GEMV's blocks, and their prefetch, in while the first still runs wherever
    /// registers allow). A decode-bench experiment (notes/kernels.md, run 13): the captured graph
    /// is dropped.
    pub fn set_small_ops_plain(&mut self, on: bool) {
        self.small_ops_plain = on;
        self.graph = None;
    }

    /// Weight bytes per step of each GEMV class over all layers: q|k|v, o, gate|up, down (the
    /// ablation table's GB/s).
    pub fn linear_class_bytes(&self) -> [u64; 4] {
        let mut b = [0u64; 4];
        for l in &self.weights.layers {
            b[0] += l.qkv.iter().map(|s| s.lin.bytes()).sum::<u64>();
            b[1] += l.o.bytes();
            b[2] += l.gate_up.iter().map(|s| s.lin.bytes()).sum::<u64>();
            b[3] += l.down.bytes();
        }
        b
    }

    /// Leave these op classes out of every step until set back to the default (SkipOps: a
    /// timing ablation; the captured graph is dropped). Refused while the persistent layers are
    /// on (their one launch has no classes to leave out).
    pub fn set_skip_ops(&mut self, skip: SkipOps) -> Result<()> {
        if skip.any() && self.persistent_active().is_some() {
            return Err(LabError::invalid(
                "skip ops",
                "the persistent decode layers run every op in one launch",
            ));
        }
        self.skip = skip;
        self.graph = None;
        Ok(())
    }

    /// PDL asked for and possible (an sm_90+ GPU running sm_90+ kernels).
    fn pdl_in_effect(&self) -> bool {
        self.opts.pdl && self.pdl_possible
    }

    /// Forget the sequence: position 0, flags cleared.
    pub fn reset(&mut self) -> Result<()> {
        self.set_position(0)
    }

    /// Continue from `pos` (the cache rows below it are taken as they are: benchmarks fill them
    /// with random values instead of running a prefill).
    pub fn set_position(&mut self, pos: usize) -> Result<()> {
        if pos >= self.opts.max_ctx {
            return Err(LabError::invalid(
                "position",
                format!("{pos} is past the KV cache ({} rows)", self.opts.max_ctx),
            ));
        }
        let words = [0i32, pos as i32, 0, 0];
        self.stream
            .memcpy_htod(&words, &mut self.b.state)
            .ctx("writing the step state")?;
        // The split-K and attention tickets and partials are zero between launches; a step cut
        // short (a persistent-layers barrier that timed out, flag 8) may leave them dirty, so a
        // reset makes them zero again (~0.1 MB at 7B).
        let b = &mut self.b;
        for (buf, what) in [
            (&mut b.gemv_ws, "GEMV split-K workspace"),
            (&mut b.q4_ws, "int4 GEMV accumulator"),
        ] {
            self.stream.memset_zeros(buf).ctx(what)?;
        }
        self.stream
            .memset_zeros(&mut b.attn_tickets)
            .ctx("attention tickets")?;
        self.pos = pos;
        Ok(())
    }

    /// Fill the whole KV cache with random fp16 values in [-1, 1) (benchmarks).
    pub fn fill_kv_random(&mut self, seed: u64) -> Result<()> {
        let p = self.r(&self.kv);
        crate::model::gpu_weights::fill_launch(
            &self.stream,
            &self.k.fill,
            p,
            self.kv.len(),
            seed,
            -1.0,
            1.0,
            abi::LAB_FILL_F16 as i32,
        )
    }

    /// A step needs a free cache row at the current position.
    fn check_room(&self) -> Result<()> {
        if self.pos >= self.opts.max_ctx {
            return Err(LabError::invalid(
                "sequence length",
                format!("the KV cache is full ({} positions)", self.opts.max_ctx),
            ));
        }
        Ok(())
    }

    fn run_step(&mut self, graph: bool, trace: Option<&mut Vec<TraceEntry>>) -> Result<()> {
        self.check_room()?;
        match (&self.graph, graph && trace.is_none()) {
            (Some(g), true) => g.launch().ctx("graph launch")?,
            // The driver would not capture the persistent layers' cooperative launch: their step
            // is 5 launches, so eager costs little.
            (None, true) if self.persistent_graph_refused().is_some() => {
                self.enqueue_step(None, None)?
            }
            (None, true) => {
                return Err(LabError::invalid(
                    "decode step",
                    "graph replay asked for before capture_graph",
                ))
            }
            _ => self.enqueue_step(trace, None)?,
        }
        self.pos += 1;
        Ok(())
    }

    /// Feed `token` at the current position (prompt tokens, teacher forcing).
    pub fn feed(
        &mut self,
        token: u32,
        graph: bool,
        trace: Option<&mut Vec<TraceEntry>>,
    ) -> Result<()> {
        if token as usize >= self.cfg.vocab_size {
            return Err(LabError::invalid(
                "token id",
                format!(
                    "{token} is out of range for vocab_size {}",
                    self.cfg.vocab_size
                ),
            ));
        }
        let mut tok = self.b.state.slice_mut(0..1);
        self.stream
            .memcpy_htod(&[token as i32], &mut tok)
            .ctx("writing the token")?;
        self.run_step(graph, trace)
    }

    /// Feed the token the previous step's argmax chose (stays on the device).
    pub fn step_greedy(&mut self, graph: bool) -> Result<()> {
        self.run_step(graph, None)
    }

    /// Synchronize, then fail if a kernel raised a state flag.
    pub fn check_state(&self) -> Result<[i32; 4]> {
        self.stream.synchronize().ctx("decode step")?;
        let s = self
            .stream
            .clone_dtoh(&self.b.state)
            .ctx("reading the step state")?;
        let f = s[abi::LAB_LLAMA_STATE_FLAGS as usize];
        if f != 0 {
            let mut why = Vec::new();
            if f & abi::LAB_LLAMA_FLAG_BAD_TOKEN as i32 != 0 {
                why.push("a token id was out of range");
            }
            if f & abi::LAB_LLAMA_FLAG_CTX_FULL as i32 != 0 {
                why.push("a step ran past the KV cache");
            }
            if f & abi::LAB_LLAMA_FLAG_NAN_LOGITS as i32 != 0 {
                why.push("all logits were NaN or -inf");
            }
            if f & abi::LAB_LLAMA_FLAG_BARRIER_TIMEOUT as i32 != 0 {
                why.push("a grid barrier of the persistent layers timed out (blocks not all resident): the step's results are wrong");
            }
            return Err(LabError::CheckFailed(format!(
                "decode step flags {f:#x}: {}",
                why.join(", ")
            )));
        }
        Ok([s[0], s[1], s[2], s[3]])
    }

    /// Synchronize and read the sticky flag word (LAB_LLAMA_FLAG_*) without failing on it.
    pub fn flags(&self) -> Result<i32> {
        self.stream.synchronize().ctx("decode step")?;
        let s = self
            .stream
            .clone_dtoh(&self.b.state)
            .ctx("reading the step state")?;
        Ok(s[abi::LAB_LLAMA_STATE_FLAGS as usize])
    }

    /// The logits [vocab] of the last step.
    pub fn logits(&self) -> Result<Vec<f32>> {
        self.stream.synchronize().ctx("decode step")?;
        self.stream.clone_dtoh(&self.b.logits).ctx("reading logits")
    }

    /// Greedy generation: reset, prefill `prompt` (`EngineOptions::prefill`: the GEMM prefill, or
    /// token by token; token by token also when the engine has no prefill workspace), then
    /// `n_new` greedy steps with the token chained on the device. Returns the new tokens.
    pub fn generate(&mut self, prompt: &[u32], n_new: usize, graph: bool) -> Result<Vec<u32>> {
        let mode = self.opts.prefill;
        self.generate_with(prompt, n_new, graph, mode)
    }

    /// Interactive generation, one token at a time: reset, run the prompt (GEMM prefill or token
    /// by token), and return the first chosen token. `next_token` continues. Each call waits for
    /// its token (one sync per token: what printing text as it comes needs); `generate_with`
    /// is the no-sync path for checks and timings.
    pub fn begin(&mut self, prompt: &[u32], graph: bool, mode: PrefillMode) -> Result<u32> {
        if prompt.is_empty() {
            return Err(LabError::invalid("prompt", "needs at least one token"));
        }
        if prompt.len() > self.opts.max_ctx {
            return Err(LabError::invalid(
                "prompt",
                format!(
                    "{} tokens exceed the KV cache ({})",
                    prompt.len(),
                    self.opts.max_ctx
                ),
            ));
        }
        self.run_prompt(prompt, graph, mode)?;
        self.chosen_token()
    }

    /// From position 0: the prompt through the GEMM prefill (`mode` Gemm, when the engine has
    /// its workspace) or one step per token; the state then holds the first chosen token.
    fn run_prompt(&mut self, prompt: &[u32], graph: bool, mode: PrefillMode) -> Result<()> {
        if graph {
            self.capture_graph()?;
        }
        self.reset()?;
        if mode == PrefillMode::Gemm && self.prefill.is_some() {
            self.prefill(prompt, PrefillLogits::None)?;
        } else {
            for &t in prompt {
                self.feed(t, graph, None)?;
            }
        }
        Ok(())
    }

    /// The token the last step (or prompt) chose, after waiting for it.
    pub fn chosen_token(&self) -> Result<u32> {
        Ok(self.check_state()?[abi::LAB_LLAMA_STATE_TOKEN as usize] as u32)
    }

    /// Feed the last chosen token and return the next one (after `begin`).
    pub fn next_token(&mut self, graph: bool) -> Result<u32> {
        self.step_greedy(graph)?;
        self.chosen_token()
    }

    /// `generate` with the prefill mode given (comparisons of the two prefills).
    pub fn generate_with(
        &mut self,
        prompt: &[u32],
        n_new: usize,
        graph: bool,
        mode: PrefillMode,
    ) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(LabError::invalid("prompt", "needs at least one token"));
        }
        // The last new token is chosen but never fed: prompt + n_new - 1 positions are cached.
        if prompt.len() + n_new.saturating_sub(1) > self.opts.max_ctx {
            return Err(LabError::invalid(
                "generation length",
                format!(
                    "{} prompt + {n_new} new tokens exceed the KV cache ({})",
                    prompt.len(),
                    self.opts.max_ctx
                ),
            ));
        }
        self.run_prompt(prompt, graph, mode)?;
        for _ in 1..n_new {
            self.step_greedy(graph)?;
        }
        let st = self.check_state()?;
        let hist = self
            .stream
            .clone_dtoh(&self.b.history)
            .ctx("reading the token history")?;
        let mut out: Vec<u32> = hist[prompt.len()..self.pos]
            .iter()
            .map(|&t| t as u32)
            .collect();
        if n_new > 0 {
            out.push(st[abi::LAB_LLAMA_STATE_TOKEN as usize] as u32);
        }
        Ok(out)
    }

    /// Mean milliseconds per step over `n` steps from the current position, timed with CUDA events
    /// around the whole run (graph replay, or eager launches: the host's launch cost shows up in
    /// the eager figure whenever the GPU waits for it).
    pub fn time_steps(&mut self, n: usize, graph: bool) -> Result<f64> {
        if n == 0 {
            return Err(LabError::invalid("timed steps", "n must be positive"));
        }
        if graph {
            self.capture_graph()?;
        }
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let a = self.stream.record_event(flags).ctx("start event")?;
        for _ in 0..n {
            self.step_greedy(graph)?;
        }
        let b = self.stream.record_event(flags).ctx("stop event")?;
        self.stream.synchronize().ctx("timed decode steps")?;
        let ms = a.elapsed_ms(&b).ctx("event time")? as f64;
        let f = free_now(&self.ctx)?;
        self.vram.observe(f);
        Ok(ms / n as f64)
    }

    /// One eager step, timed op by op (`step_profile`): a spinning kernel holds the GPU for
    /// `hold_ms` while the host queues the step with an event after every op, so the events time
    /// the ops back to back on the GPU rather than at the host's launch rate. Returns the marks
    /// and whether the GPU had already left the hold before the host finished queueing (then
    /// host gaps are inside the figures: call again with a longer hold). Advances one position,
    /// feeding the previous step's argmax like `step_greedy`.
    pub fn profile_step(&mut self, hold_ms: f64) -> Result<(Vec<Mark>, bool)> {
        self.check_room()?;
        let hp = abi::lab_llama_hold_params {
            ns: (hold_ms.max(0.0) * 1e6) as u64,
        };
        self.launch(&self.k.hold, (1, 1), 32, 0, &hp, "profile hold")?;
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.stream.record_event(flags).ctx("profile event")?;
        let s0 = self.streamed.get();
        let mut marks = Vec::new();
        self.enqueue_step(None, Some(&mut marks))?;
        let host_bound = start.is_complete();
        self.stream.synchronize().ctx("profiled decode step")?;
        self.pos += 1;
        let mut out = Vec::with_capacity(marks.len());
        let (mut prev, mut prev_bytes) = (&start, s0);
        for m in &marks {
            let ms = prev.elapsed_ms(&m.event).ctx("profile event time")?;
            out.push(Mark {
                op: m.op,
                us: ms as f64 * 1e3,
                bytes: m.streamed - prev_bytes,
            });
            (prev, prev_bytes) = (&m.event, m.streamed);
        }
        Ok((out, host_bound))
    }

    /// One eager step feeding `token`, with every op's output copied back (debug mode).
    pub fn trace_step(&mut self, token: u32) -> Result<Vec<TraceEntry>> {
        if self.skip.any() {
            return Err(LabError::invalid(
                "trace",
                "op classes are left out (set_skip_ops): the step computes nothing to check",
            ));
        }
        let mut t = Vec::new();
        self.feed(token, false, Some(&mut t))?;
        self.check_state()?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn act_order_plain_takes_the_norm_and_silu_fed_linears_with_even_groups() {
        let (act, uneven, plain) = (
            Some((true, false)),
            Some((true, true)),
            Some((false, false)),
        );
        // A fused q|k|v and gate|up (one segment each) and down, all act-order with even groups.
        let all = LayerPx {
            qkv: true,
            gate_up: true,
            down: true,
        };
        assert_eq!(layer_px(true, true, &[act], &[act], act), all);
        // Off, or a kernel choice with its own act-order path: nothing.
        assert_eq!(
            layer_px(false, true, &[act], &[act], act),
            LayerPx::default()
        );
        assert_eq!(
            layer_px(true, false, &[act], &[act], act),
            LayerPx::default()
        );
        // Unfused q/k/v (three permutations for one norm), uneven groups, plain or fp16 linears:
        // the act-order kernels (or nothing to do).
        let got = layer_px(true, true, &[act, act, act], &[uneven], plain);
        assert_eq!(got, LayerPx::default());
        assert_eq!(
            layer_px(true, true, &[None], &[act], None),
            LayerPx {
                gate_up: true,
                ..LayerPx::default()
            }
        );
    }

    #[test]
    fn plain_kernels_serve_act_order_only_under_auto() {
        let v = |n: &str| Int4Kernel::Variant(crate::kernels::registry::by_name(n).unwrap());
        assert!(!plain_kernels_serve(&Int4Kernel::Engine));
        for n in [
            "gemv_v2_vec",
            "gemv_v4_perm",
            "gemv_v6_pipe",
            "gemv_v10_l2x",
        ] {
            assert!(!plain_kernels_serve(&v(n)), "{n}");
        }
    }

    /// The shapes of a Vicuna-7B/13B layer (fused like the engine).
    fn vicuna_shapes(act: bool) -> Vec<LayerShape> {
        let mut v = Vec::new();
        for &(k, n) in crate::check::cases::VICUNA_DECODE {
            v.push(LayerShape {
                k,
                n,
                group_size: 128,
                g_idx: false,
                perm: act,
                bias: false,
                symmetric: true,
            });
        }
        v
    }

    #[test]
    fn auto_int4_kernel_serves_every_vicuna_linear_with_a_plannable_gemv() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tuning/nvidia-h100-80gb-hbm3.json");
        let cfg = crate::tune::TunedConfig::load(&path).unwrap();
        let dev = cfg.device.clone();
        let tuned = crate::tune::Dispatcher::from_config(
            Some(cfg.clone()),
            &dev,
            crate::build_info::KERNEL_HASH,
        );
        let mut t4 = dev.clone();
        (t4.name, t4.slug, t4.cc_major, t4.cc_minor, t4.sms) =
            ("Tesla T4".into(), "tesla-t4".into(), 7, 5, 40);
        // Another GPU's config is refused: the heuristic serves, and says so in the name.
        let heuristic =
            crate::tune::Dispatcher::from_config(Some(cfg), &t4, crate::build_info::KERNEL_HASH);
        assert!(heuristic.refused.is_some());
        for d in [tuned, heuristic] {
            let k = Int4Kernel::Auto(Arc::new(d));
            for act in [false, true] {
                for s in vicuna_shapes(act) {
                    let (v, params) = k
                        .choose(&s)
                        .unwrap()
                        .expect("auto always picks a registry GEMV");
                    assert_eq!(
                        v.family,
                        crate::kernels::registry::Family::Gemv,
                        "{}",
                        v.name
                    );
                    let p = gemv_plan(v, &s, 1, s.k, s.n, &params, SmLimits::H100);
                    assert!(p.is_ok(), "{} {params:?} on {s:?}: {p:?}", v.name);
                }
            }
            let name = k.name();
            assert!(name.starts_with("auto ("), "{name}");
        }
        assert!(Int4Kernel::Engine
            .choose(&vicuna_shapes(false)[0])
            .unwrap()
            .is_none());
    }

    #[test]
    fn step_linears_name_each_planned_shape_by_the_dispatchers_key() {
        let v2 = crate::kernels::registry::by_name("gemv_v2_vec").unwrap();
        let v6 = crate::kernels::registry::by_name("gemv_v6_pipe").unwrap();
        let mut choice = HashMap::new();
        // (k, n, group, act-order): a g128 shape, a group as wide as K (per-channel), act-order.
        choice.insert((11008, 4096, 128, false), (v2, Tunables::new()));
        choice.insert((4096, 12288, 4096, false), (v2, Tunables::new()));
        let t = Tunables::from([("threads".to_string(), 256)]);
        choice.insert((4096, 4096, 128, true), (v6, t.clone()));
        let got = step_linears(&choice);
        let want = |n, k, g, a, c: crate::tune::Choice| crate::tune::LinearChoice {
            key: crate::tune::ProblemKey {
                n,
                k,
                group_size: g,
                act_order: a,
                batch_bucket: 1,
            },
            choice: c,
        };
        let mut expect = vec![
            want(
                4096,
                11008,
                128,
                false,
                crate::tune::Choice::new("gemv_v2_vec"),
            ),
            want(
                12288,
                4096,
                -1,
                false,
                crate::tune::Choice::new("gemv_v2_vec"),
            ),
            want(
                4096,
                4096,
                128,
                true,
                crate::tune::Choice::new("gemv_v6_pipe").with("threads", 256),
            ),
        ];
        expect.sort();
        assert_eq!(got, expect, "sorted, whatever the map's order");
        // The key is the one Int4Kernel::choose asks the dispatcher for.
        let s = LayerShape {
            k: 4096,
            n: 12288,
            group_size: 4096,
            g_idx: false,
            perm: false,
            bias: false,
            symmetric: false,
        };
        assert_eq!(problem_key(shape_key(&s)).group_size, -1);
    }

    #[test]
    fn out_of_memory_is_told_apart_from_other_driver_errors() {
        use cudarc::driver::sys::cudaError_enum as E;
        let err = |c| LabError::Driver {
            context: "allocating the KV cache".into(),
            source: cudarc::driver::DriverError(c),
        };
        assert!(is_out_of_memory(&err(E::CUDA_ERROR_OUT_OF_MEMORY)));
        assert!(!is_out_of_memory(&err(E::CUDA_ERROR_INVALID_VALUE)));
        assert!(!is_out_of_memory(&LabError::invalid("x", "y")));
    }

    #[test]
    fn gated_mlp_input_only_for_kernels_that_stage_x() {
        assert!(
            int4_takes_gated_input(None),
            "the engine's q4 GEMV stages x"
        );
        for (name, gated) in [
            ("gemv_v1_naive", true),
            ("gemv_v2_vec", false),
            ("gemv_v3_gather", false),
            ("gemv_v4_perm", false),
            ("gemv_v5_splitk", false),
            ("gemv_v6_pipe", true),
        ] {
            let v = crate::kernels::registry::by_name(name).unwrap();
            assert_eq!(int4_takes_gated_input(Some(v)), gated, "{name}");
        }
    }

    #[test]
    fn only_the_drivers_capture_refusals_count_as_refusals() {
        use cudarc::driver::{sys::cudaError_enum as E, DriverError};
        let driver = |code| LabError::Driver {
            context: "graph capture".into(),
            source: DriverError(code),
        };
        assert!(is_capture_refusal(&driver(
            E::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
        )));
        assert!(is_capture_refusal(&driver(
            E::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
        )));
        // A failed kernel, a cooperative grid too large, or any other error is not one.
        assert!(!is_capture_refusal(&driver(E::CUDA_ERROR_ILLEGAL_ADDRESS)));
        assert!(!is_capture_refusal(&driver(
            E::CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE
        )));
        assert!(!is_capture_refusal(&LabError::invalid("x", "y")));
    }

    #[test]
    fn parse_int4_kernel_names() {
        let no = || -> Result<crate::tune::Dispatcher> { panic!("only auto builds a dispatcher") };
        assert!(matches!(
            parse_int4_kernel("engine", no).unwrap(),
            Int4Kernel::Engine
        ));
        assert!(
            matches!(parse_int4_kernel("gemv_v5_splitk", no).unwrap(), Int4Kernel::Variant(v) if v.name == "gemv_v5_splitk")
        );
        assert!(parse_int4_kernel("gemv_cublas_f16", no).is_err());
        let e = parse_int4_kernel("gemv_v9", no).unwrap_err().to_string();
        assert!(e.contains("auto"), "{e}");
    }

    #[test]
    fn registry_variants_plan_every_vicuna_and_tiny_linear_and_baselines_are_refused() {
        let cfgs = [
            ModelConfig::vicuna_7b(),
            ModelConfig::vicuna_13b(),
            crate::model::gpu_check::tiny_config(),
        ];
        // Every (model, K, N, group that divides K) of the engine's fused linears.
        let linears: Vec<(String, usize, usize, usize)> = cfgs
            .iter()
            .flat_map(|cfg| {
                let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
                let kv = cfg.num_key_value_heads * cfg.head_dim();
                [(h, h + 2 * kv), (h, h), (h, 2 * i), (i, h)]
                    .map(|(k, n)| (cfg.name.clone(), k, n, if k % 128 == 0 { 128 } else { 64 }))
            })
            .collect();
        let shape = |k, n, group_size, perm, symmetric| LayerShape {
            k,
            n,
            group_size,
            g_idx: false,
            perm,
            bias: false,
            symmetric,
        };
        for name in ["gemv_v4_perm", "gemv_v5_splitk", "gemv_v6_pipe"] {
            let v = int4_kernel_by_name(name).unwrap().unwrap();
            for (model, k, n, g) in &linears {
                let (k, n, g) = (*k, *n, *g);
                for (group, perm, symmetric) in [
                    (g, false, false),
                    (g, true, false),
                    (k, false, true),
                    (32, true, true),
                ] {
                    let s = shape(k, n, group, perm, symmetric);
                    let p = gemv_plan(v, &s, 1, k, n, &Tunables::new(), SmLimits::H100)
                        .unwrap_or_else(|e| panic!("{name} {model} {k}x{n}: {e}"));
                    assert!(!p.symbol.is_empty() && v.symbols.contains(&p.symbol.as_str()));
                }
            }
        }
        // v2 has no act-order path: every plain linear, and a clear refusal of a permuted one.
        let v2 = int4_kernel_by_name("gemv_v2_vec").unwrap().unwrap();
        for (model, k, n, g) in &linears {
            let (k, n, g) = (*k, *n, *g);
            for (group, perm, symmetric) in [(g, false, false), (k, false, true), (g, true, false)]
            {
                let p = gemv_plan(
                    v2,
                    &shape(k, n, group, perm, symmetric),
                    1,
                    k,
                    n,
                    &Tunables::new(),
                    SmLimits::H100,
                );
                assert_eq!(p.is_ok(), !perm, "v2 {model} {k}x{n} perm {perm}: {p:?}");
            }
        }
        assert!(int4_kernel_by_name("engine").unwrap().is_none());
        assert!(int4_kernel_by_name("gemv_cublas_f16").is_err());
        // v9 runs in the engine (cluster launches, sm_90: GpuEngine::new checks min_sm); its
        // plans on the decode shapes are clusters of at most 8 slices.
        let v9 = int4_kernel_by_name("gemv_v9_cluster").unwrap().unwrap();
        assert_eq!(v9.min_sm, 90);
        for &(k, n) in crate::check::cases::VICUNA_DECODE {
            let p = gemv_plan(
                v9,
                &shape(k, n, 128, false, false),
                1,
                k,
                n,
                &Tunables::new(),
                SmLimits::H100,
            )
            .unwrap();
            assert!(
                p.cluster_y == p.grid.1 && (1..=8).contains(&p.cluster_y),
                "{k}x{n}: {p:?}"
            );
        }
        assert!(int4_kernel_by_name("gemv_v9").is_err());
    }

    #[test]
    fn a_poison_block_fills_an_sm_on_every_card() {
        // (per SM, reserved per block, per-block opt-in) as the driver reports them: H100,
        // A100, RTX 3090 / 4090, T4. One block of the opt-in size plus its reservation is the SM.
        for (per_sm, reserved, optin) in [(228, 1, 227), (164, 1, 163), (100, 1, 99), (64, 0, 64)] {
            let dev = SmLimits {
                sms: 80,
                smem_per_sm: per_sm * 1024,
                smem_reserved_per_block: reserved * 1024,
                smem_per_block_optin: optin * 1024,
            };
            let b = poison_block_bytes(dev);
            assert_eq!(b % 4, 0);
            assert_eq!(
                b + dev.smem_reserved_per_block,
                dev.smem_per_sm,
                "{per_sm} KB"
            );
            assert_eq!(dev.blocks_per_sm(b, 8), 1);
        }
        let unknown = SmLimits {
            smem_per_block_optin: 0,
            ..SmLimits::H100
        };
        assert_eq!(poison_block_bytes(unknown), abi::LAB_LLAMA_POISON_BYTES);
    }

    #[test]
    fn q4_split_covers_k_in_multiples_of_8_and_fills_the_machine() {
        for &(n, k) in &[
            (12288usize, 4096usize),
            (4096, 11008),
            (22016, 4096),
            (64, 64),
            (128, 192),
            (15360, 5120),
            (5120, 13824),
            (8, 8),
        ] {
            let (split, slice) = q4_split(n, k, 132);
            assert_eq!(slice % 8, 0, "{n}x{k}");
            assert!(
                split * slice >= k && (split - 1) * slice < k,
                "{n}x{k}: {split} x {slice}"
            );
            assert!(
                slice <= 8192,
                "{n}x{k}: x slice {slice} rows exceeds 32 KB of shared memory"
            );
            if k >= 64 * 16 {
                assert!(
                    n.div_ceil(128) * split >= 4 * 132 || slice <= 64 + 8,
                    "{n}x{k}: only {} blocks",
                    n.div_ceil(128) * split
                );
            }
        }
    }
}
