//! The engine's prefill state (`Prefill`): which int4 paths each linear of the loaded weights takes
//! (by chunk size) decide which GEMM kernels are loaded and how large the shared scratch must be
//! (split-K, repack and unfused-slot rows, or the dequant W); the buffers are allocated once, at
//! engine construction, at `PrefillSizes`.

use super::linears::gemm_variant;
use super::*;
use crate::kernels::gemm;
use crate::model::gpu_weights::{GpuLayer, Slot};

// Visibility: `pub(in crate::model::gpu_engine)` for what the engine itself reads (construction,
// the ledger's byte count); `pub(super)` for what the other files of the prefill read.

pub(in crate::model::gpu_engine) struct PrefillBufs {
    pub(in crate::model::gpu_engine) sizes: PrefillSizes,
    pub(super) tokens: CudaSlice<i32>,
    pub(super) resid: CudaSlice<f32>,
    pub(super) x16: CudaSlice<f16>,
    pub(super) qkv: CudaSlice<f16>,
    pub(super) delta: CudaSlice<f16>,
    pub(super) gate_up: CudaSlice<f16>,
    pub(super) act: CudaSlice<f16>,
    /// The GEMM path's split-K partials, repack and slot rows, or the dequant path's fp16 W
    /// (`PrefillSizes::offset`); None when no linear needs any.
    pub(super) scratch: Option<CudaSlice<u8>>,
}

pub(super) struct PrefillKernels {
    pub(super) embed: CudaFunction,
    pub(super) attn: CudaFunction,
    pub(super) repack: CudaFunction,
    /// lab_dequant_f16_v1 (gemv family), when some linear takes the dequant path.
    pub(super) dequant: Option<CudaFunction>,
    /// GEMM instantiations by symbol (only of the variants some linear uses).
    pub(super) gemm: HashMap<&'static str, CudaFunction>,
}

/// The engine's prefill state: kernels, buffers, the device's sm and the int4 choice.
pub(in crate::model::gpu_engine) struct Prefill {
    pub(in crate::model::gpu_engine) bufs: PrefillBufs,
    pub(super) k: PrefillKernels,
    pub(super) sm: u32,
    pub(super) choice: PrefillInt4,
}

pub(super) fn int4_linears(l: &GpuLayer) -> impl Iterator<Item = (&GpuLinear, bool)> {
    // (linear, is an unfused slot of a wider output)
    let part = |s: &[Slot]| s.len() > 1;
    let (q, g) = (part(&l.qkv), part(&l.gate_up));
    l.qkv
        .iter()
        .map(move |s| (&s.lin, q))
        .chain([(&l.o, false)])
        .chain(l.gate_up.iter().map(move |s| (&s.lin, g)))
        .chain([(&l.down, false)])
}

/// The prefill plan of `weights` (its int4 linears) at `chunk` rows under `choice` on sm_`sm`.
pub(in crate::model::gpu_engine) fn plan_for(
    cfg: &ModelConfig,
    weights: &GpuWeights,
    chunk: usize,
    choice: PrefillInt4,
    sm: u32,
    dequant_slice_elems: usize,
) -> Option<PrefillPlan> {
    let int4 =
        weights
            .layers
            .iter()
            .flat_map(int4_linears)
            .filter_map(|(lin, unfused)| match lin {
                GpuLinear::Int4(q) => Some((layer_shape(q), unfused)),
                GpuLinear::F16(_) => None,
            });
    PrefillPlan::with_slices(cfg, chunk, choice, sm, int4, dequant_slice_elems)
}

impl Prefill {
    /// Plan and allocate the prefill for `weights` on `gpu` (nothing when `chunk` is 0).
    pub(in crate::model::gpu_engine) fn new(
        gpu: &Gpu,
        stream: &Arc<CudaStream>,
        cfg: &ModelConfig,
        weights: &GpuWeights,
        chunk: usize,
        choice: PrefillInt4,
        dequant_slice_elems: usize,
    ) -> Result<Option<Self>> {
        if chunk == 0 {
            return Ok(None);
        }
        let sm = gpu.sm();
        check_attn_smem(cfg, "model config")?;
        let Some(PrefillPlan {
            sizes,
            gemm_v1: v1,
            gemm_v2: v2,
            dequant,
        }) = plan_for(cfg, weights, chunk, choice, sm, dequant_slice_elems)
        else {
            return Ok(None);
        };
        let a16 = |n: usize, what: &str| stream.alloc_zeros::<f16>(n).ctx(what);
        let bufs = PrefillBufs {
            sizes,
            tokens: stream
                .alloc_zeros::<i32>(sizes.tokens)
                .ctx("prefill tokens")?,
            resid: stream
                .alloc_zeros::<f32>(sizes.resid)
                .ctx("prefill residual rows")?,
            x16: a16(sizes.x16, "prefill normed/attention rows")?,
            qkv: a16(sizes.qkv, "prefill qkv rows")?,
            delta: a16(sizes.delta, "prefill o/down rows")?,
            gate_up: a16(sizes.gate_up, "prefill gate_up rows")?,
            act: a16(sizes.act, "prefill silu rows")?,
            scratch: (sizes.scratch_bytes() > 0)
                .then(|| {
                    stream
                        .alloc_zeros::<u8>(sizes.scratch_bytes())
                        .ctx("prefill scratch (GEMM split-K / repack / slot rows, or dequant W)")
                })
                .transpose()?,
        };
        let mut fns = HashMap::new();
        for (used, name) in [(v1, "gemm_v1_simt"), (v2, "gemm_v2_mma")] {
            if !used {
                continue;
            }
            let v = gemm_variant(name);
            for &sym in v.symbols {
                let f = gpu.function(sym)?;
                if name == "gemm_v2_mma" && !sym.ends_with("finish") {
                    // Every v2 tile asks for more than the 48 KB default (gemm::v2_smem_bytes).
                    f.set_attribute(
                        cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        gemm::v2_smem_bytes(4) as i32,
                    )
                    .ctx(&format!("{sym}: raising the dynamic shared-memory limit"))?;
                }
                fns.insert(sym, f);
            }
        }
        Ok(Some(Prefill {
            bufs,
            k: PrefillKernels {
                embed: gpu.function("lab_llama_prefill_embed")?,
                attn: gpu.function("lab_llama_prefill_attn")?,
                repack: gpu.function("lab_llama_repack_v2")?,
                dequant: dequant
                    .then(|| gpu.function("lab_dequant_f16_v1"))
                    .transpose()?,
                gemm: fns,
            },
            sm,
            choice,
        }))
    }
}
