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
//! Prefill (`prefill/`) runs all prompt tokens of a chunk through each layer at once (GEMM
//! family / cuBLAS, causal prefill attention); `PrefillMode::TokenByToken` keeps the old path, this
//! step once per prompt token, as the reference.
//! Linear layers go through `GpuEngine::linear_px` only: int4 via the kernel `Int4Kernel` picks
//! per shape (a registry GEMV variant, the dispatcher's choice, or the engine's own split-K GEMV
//! lab_llama_q4_gemv), fp16 via cuBLAS (or the lab fp16 GEMV where cuBLAS cannot be loaded).
//!
//! Where to read what (every file but `options` adds methods to `GpuEngine`):
//! - this file: the engine's buffers and kernels, and `GpuEngine::new`, which checks the model,
//!   allocates (recording each part in the VRAM ledger), chooses and loads every linear's kernel;
//! - `options`: `EngineOptions`, what a caller chooses before construction;
//! - `linears`: which kernel computes each linear (act-order on permuted x included) and its launch;
//! - `step`: one decode step's launches in order (`enqueue_step_ops`), PDL, and the graph capture;
//! - `settings`: the switches benches and checks flip between steps (each drops the graph);
//! - `sequence`: positions, feeding tokens, generation, step timing, the per-op profile and trace;
//! - `persistent`: every decoder layer of a step as one cooperative launch;
//! - `prefill/`: a prompt chunk through each layer at once.

use crate::cuda::{Gpu, SmLimits};
use crate::error::DriverCtx;
use crate::kernels::abi;
use crate::kernels::gemv::{kind as gemv_kind, v6_one_block_per_sm, GemvKind, TILE_N};
use crate::kernels::launch::{plan as gemv_plan, LayerShape, Tunables};
use crate::kernels::registry::Variant;
use crate::model::config::ModelConfig;
use crate::model::gpu_weights::{
    raw, F16Dev, GpuLayer, GpuLinear, GpuWeights, Int4Dev, Slot, SyntheticSpec,
};
use crate::model::vram::{Phase, VramLedger, VramReport};
use crate::{LabError, Result};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{
    CudaFunction, CudaGraph, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg,
};
use half::f16;
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;

mod linears;
mod options;
pub mod persistent;
mod prefill;
mod sequence;
mod settings;
mod step;
#[cfg(test)]
mod tests;

// `XInput` and `attn_split_smem` also serve `persistent` and `prefill`.
use linears::{
    layer_px, layer_shape, plain_kernels_serve, plain_shape, px_facts, shape_key, step_linears,
    widest_linear_n, ShapeKey, XInput,
};
pub use linears::{q4_split, LayerPx, PxFacts};
pub use options::{
    int4_kernel_by_name, is_capture_refusal, is_out_of_memory, parse_int4_kernel, EngineOptions,
    Fp16Backend, Int4Kernel, DEFAULT_PDL_PREFETCH,
};
use persistent::Persistent;
pub use prefill::{
    attn_smem_bytes, check_attn_smem, checkpoint_int4_layer, chunks, dequant_min_rows,
    dequant_slices, describe_paths, int4_path, paths_by_rows, prefill_choice_for_memory, row_tiles,
    DequantSlices, Int4Path, PrefillInt4, PrefillLogits, PrefillMode, PrefillPlan, PrefillSizes,
    ScratchPart, DEFAULT_PREFILL_CHUNK, DEQUANT_HEADROOM, DEQUANT_MIN_ROWS,
    DEQUANT_MIN_ROWS_ACT_ORDER, DEQUANT_SLICE_ELEMS, GEMM_ROWS,
};
pub use settings::{poison_block_bytes, SkipOps};
use step::attn_split_smem;

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

/// cuBLAS workspace given to the handle up front, so nothing is allocated during graph capture
/// (32 MiB: NVIDIA's recommendation for Hopper).
const CUBLAS_WORKSPACE: usize = 32 << 20;

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
        let inv_freq: Vec<f32> = cfg.rope_inv_freq().iter().map(|&f| f as f32).collect();
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

    /// The int4 kernel choice's name; under `auto`, how many of the step's int4 shapes the tuned
    /// config answers (a checkpoint of another group size, or shapes no tune covered, runs the
    /// heuristic everywhere while the config itself has keys).
    pub fn int4_kernel(&self) -> String {
        match &self.opts.int4 {
            Int4Kernel::Auto(d) if d.tuned_len() > 0 && !self.linears.is_empty() => {
                let n = self.linears.len();
                match self.linears.iter().filter(|l| d.is_tuned(&l.key)).count() {
                    0 => format!(
                        "auto (heuristic: none of the step's {n} int4 shapes is in the tuned config)"
                    ),
                    t if t == n => format!("auto (tuned config: all {n} int4 shapes)"),
                    t => format!(
                        "auto (tuned config: {t} of {n} int4 shapes, the others by the heuristic)"
                    ),
                }
            }
            k => k.name(),
        }
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

    pub fn has_graph(&self) -> bool {
        self.graph.is_some()
    }

    fn r<T>(&self, s: &CudaSlice<T>) -> u64 {
        raw(s, &self.stream)
    }
}
