//! What a caller chooses before building an engine (`EngineOptions`), which kernel computes the
//! int4 linears (`Int4Kernel`, `--int4-kernel`), and how the engine's driver errors are told apart.

use super::linears::{problem_key, shape_key};
use super::{
    PrefillInt4, PrefillMode, DEFAULT_ATTN_CHUNK, DEFAULT_PREFILL_CHUNK, DEQUANT_SLICE_ELEMS,
};
use crate::kernels::gemv::GemvKind;
use crate::kernels::launch::{LayerShape, Tunables};
use crate::kernels::registry::Variant;
use crate::model::sampler::Sampling;
use crate::{LabError, Result};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

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
