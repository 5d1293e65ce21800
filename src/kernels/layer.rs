//! A quantized layer made ready for one variant: `prepare` (host: validation, act-order reorder,
//! variant-specific layout) then `upload` (device buffers, workspace, cuBLAS handle).
//!
//! Families plug in here: a family's arm of `prepare_with` may fill `qweight_prepared`
//! (Layout::Prepared, e.g. mma fragment order) and the launcher reads whatever buffers its variant
//! needs.

use super::launch::LayerShape;
use super::registry::{ActOrder, Family, Variant};
use super::{baseline, gemv};
use crate::cuda::Gpu;
use crate::error::DriverCtx;
use crate::gptq::{reorder_by_group, QuantLinear, Reordered};
use crate::{LabError, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::CudaSlice;
use half::f16;

/// Host side of a prepared layer.
#[derive(Debug, Clone)]
pub struct PreparedHost {
    pub variant: &'static Variant,
    /// The layer the kernel reads: canonical, or rows sorted by group (Reordered act-order).
    pub layer: QuantLinear,
    /// Sorted row r multiplies x[perm[r]] (Reordered act-order only).
    pub perm: Option<Vec<i32>>,
    /// A variant-specific re-layout of qweight (Layout::Prepared), uploaded instead of layer.qweight.
    pub qweight_prepared: Option<Vec<u32>>,
    /// fp16 W [k, n] (the cuBLAS fp16 baseline): the dequantized weights rounded once to fp16.
    pub w_f16: Option<Vec<f16>>,
}

impl PreparedHost {
    pub fn shape(&self) -> LayerShape {
        LayerShape::of(&self.layer, self.perm.is_some())
    }
}

/// Host validation and preparation of `l` for variant `v`. Act-order layers are reordered when the
/// variant reads reordered rows (`ActOrder::Reordered`), kept with g_idx when it gathers, refused
/// otherwise. Every refusal is `LabError::UnsupportedShape` naming the variant and the shape.
pub fn prepare(v: &'static Variant, l: &QuantLinear) -> Result<PreparedHost> {
    let reordered = if l.is_act_order() && v.act_order.contains(&ActOrder::Reordered) {
        Some(reorder_by_group(l)?)
    } else {
        None
    };
    prepare_with(v, l, reordered.as_ref())
}

/// `prepare` with the act-order reorder already done (the check harness reorders once per layer
/// and shares it between variants). `reordered` must come from `reorder_by_group(l)`.
pub fn prepare_with(
    v: &'static Variant,
    l: &QuantLinear,
    reordered: Option<&Reordered>,
) -> Result<PreparedHost> {
    let shape_err = |reason: String| LabError::UnsupportedShape {
        variant: v.name.to_string(),
        shape: format!("K={} N={} group={}", l.k, l.n, l.group_size),
        reason,
    };
    l.validate()
        .map_err(|r| shape_err(format!("invalid layer: {r}")))?;
    let act = l.is_act_order();
    let (layer, perm) = match (act, reordered) {
        (true, Some(r)) if v.act_order.contains(&ActOrder::Reordered) => {
            (r.layer.clone(), Some(r.perm.clone()))
        }
        (true, None) if v.act_order.contains(&ActOrder::Reordered) => {
            let r = reorder_by_group(l)?;
            (r.layer, Some(r.perm))
        }
        (true, _) if !v.act_order.contains(&ActOrder::Gather) => {
            return Err(shape_err(format!(
                "act-order layer (non-trivial g_idx) but the variant supports {:?}",
                v.act_order
            )))
        }
        _ => {
            let mut c = l.clone();
            if !act {
                c.g_idx = None; // a trivial g_idx is k / G: canonical form drops it
            }
            (c, None)
        }
    };
    let mut p = PreparedHost {
        variant: v,
        layer,
        perm,
        qweight_prepared: None,
        w_f16: None,
    };
    match v.family {
        Family::Gemv => {
            gemv::check_layer(v, &p.shape())?;
            if gemv::kind(v)? == gemv::GemvKind::CublasF16 {
                p.w_f16 = Some(
                    crate::reference::dequantize(&p.layer)
                        .into_iter()
                        .map(f16::from_f64)
                        .collect(),
                );
            }
        }
        Family::Gemm => {
            super::gemm::check_layer(v, &p.shape())?;
            if v.layout == super::registry::Layout::Prepared {
                let l = &p.layer;
                p.qweight_prepared =
                    Some(super::gemm_layout::to_fragment_order(l.k, l.n, |r, c| {
                        l.code(r, c)
                    })?);
            }
        }
        other => {
            return Err(LabError::invalid(
                "variant",
                format!("{}: no prepare step for family {other:?}", v.name),
            ))
        }
    }
    Ok(p)
}

/// A layer on the device, prepared for `variant`.
pub struct DeviceLayer {
    pub variant: &'static Variant,
    pub shape: LayerShape,
    /// u32 [k/8, n] (canonical or reordered rows), or the variant's prepared layout.
    pub qweight: CudaSlice<u32>,
    /// u32 [groups, n/8] true zeros (uploaded even when symmetric; kernels then never read them).
    pub qzeros: CudaSlice<u32>,
    /// fp16 [groups, n].
    pub scales: CudaSlice<f16>,
    /// i32 [k] group per row, only for gather variants on act-order layers.
    pub g_idx: Option<CudaSlice<i32>>,
    /// i32 [k] x index per sorted row, only for reordered act-order layers.
    pub perm: Option<CudaSlice<i32>>,
    /// fp16 [n].
    pub bias: Option<CudaSlice<f16>>,
    /// Split-K: f32 [n] partials + u32 [ceil(n/32)] tickets, zero before the first launch and
    /// left zero by every launch (kernels/gemv/gemv_v5_splitk.cu).
    pub workspace: Option<CudaSlice<f32>>,
    /// fp16 W [k, n] for the cuBLAS baselines (uploaded, or written by the dequant kernel).
    pub w_f16: Option<CudaSlice<f16>>,
    pub(crate) blas: Option<CudaBlas>,
}

impl DeviceLayer {
    /// Device bytes held by this layer (weights and every side buffer).
    pub fn device_bytes(&self) -> usize {
        self.qweight.num_bytes()
            + self.qzeros.num_bytes()
            + self.scales.num_bytes()
            + self.g_idx.as_ref().map_or(0, |b| b.num_bytes())
            + self.perm.as_ref().map_or(0, |b| b.num_bytes())
            + self.bias.as_ref().map_or(0, |b| b.num_bytes())
            + self.workspace.as_ref().map_or(0, |b| b.num_bytes())
            + self.w_f16.as_ref().map_or(0, |b| b.num_bytes())
    }
}

pub fn upload(gpu: &Gpu, p: &PreparedHost) -> Result<DeviceLayer> {
    let s = &gpu.stream;
    let l = &p.layer;
    let ctx = |what: &str| {
        format!(
            "uploading {what} of a {}x{} layer for {}",
            l.k, l.n, p.variant.name
        )
    };
    let qweight = s
        .clone_htod(p.qweight_prepared.as_deref().unwrap_or(&l.qweight))
        .ctx(&ctx("qweight"))?;
    let qzeros = s.clone_htod(&l.qzeros).ctx(&ctx("qzeros"))?;
    let scales = s.clone_htod(&l.scales).ctx(&ctx("scales"))?;
    let g_idx = match &l.g_idx {
        Some(g) => Some(s.clone_htod(g).ctx(&ctx("g_idx"))?),
        None => None,
    };
    let perm = match &p.perm {
        Some(v) => Some(s.clone_htod(v).ctx(&ctx("perm"))?),
        None => None,
    };
    let bias = match &l.bias {
        Some(b) => Some(s.clone_htod(b).ctx(&ctx("bias"))?),
        None => None,
    };
    let kind = gemv::kind(p.variant).ok();
    let workspace = match kind {
        Some(
            gemv::GemvKind::SplitK
            | gemv::GemvKind::Pipe
            | gemv::GemvKind::PipeCluster
            | gemv::GemvKind::PipeL2x,
        ) => Some(
            s.alloc_zeros::<f32>(l.n + l.n.div_ceil(gemv::TILE_N))
                .ctx(&ctx("split-K workspace"))?,
        ),
        // GEMM split-K: f32 [m, n] partials for the largest batch, zeroed by every launch.
        _ if p.variant.family == Family::Gemm => Some(
            s.alloc_zeros::<f32>(super::gemm::MAX_M * l.n)
                .ctx(&ctx("GEMM split-K workspace"))?,
        ),
        _ => None,
    };
    let w_f16 = match (kind, &p.w_f16) {
        (_, Some(w)) => Some(s.clone_htod(w).ctx(&ctx("fp16 W"))?),
        (Some(gemv::GemvKind::DequantCublas), None) => {
            Some(s.alloc_zeros::<f16>(l.k * l.n).ctx(&ctx("fp16 W buffer"))?)
        }
        _ => None,
    };
    let blas = match kind {
        Some(gemv::GemvKind::CublasF16 | gemv::GemvKind::DequantCublas) => {
            Some(baseline::new_blas(gpu)?)
        }
        _ => None,
    };
    gpu.sync()?;
    Ok(DeviceLayer {
        variant: p.variant,
        shape: p.shape(),
        qweight,
        qzeros,
        scales,
        g_idx,
        perm,
        bias,
        workspace,
        w_f16,
        blas,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gptq::{act_order_g_idx, quantize_rtn};
    use crate::kernels::registry::by_name;
    use rand::{rngs::StdRng, seq::SliceRandom, RngExt, SeedableRng};

    fn layer(k: usize, n: usize, g: i32, act: bool) -> QuantLinear {
        let mut rng = StdRng::seed_from_u64(11);
        let w: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let gi = act.then(|| {
            let mut order: Vec<usize> = (0..k).collect();
            order.shuffle(&mut rng);
            act_order_g_idx(&order, g as usize)
        });
        quantize_rtn(&w, k, n, g, false, gi).unwrap()
    }

    /// The engine, the tuner and `lab check` prepare GEMM layers through `prepare_with`;
    /// `gemm::prepare` (the GEMM GPU test's path) is the GEMM module's own. Both must hand the
    /// kernels the same words: codes in the variant's layout, scales, zeros, permutation.
    #[test]
    fn gemm_layers_prepare_the_same_on_both_paths() {
        for v in crate::kernels::registry::all()
            .into_iter()
            .filter(|v| v.family == Family::Gemm)
        {
            for act in [false, true] {
                let l = layer(256, 64, 32, act);
                let p = prepare(v, &l).unwrap();
                let g = super::super::gemm::prepare(v, &l).unwrap();
                let what = format!("{} act-order {act}", v.name);
                let codes = match v.layout {
                    super::super::registry::Layout::Prepared => p.qweight_prepared.clone(),
                    _ => Some(p.layer.qweight.clone()),
                };
                assert_eq!(codes.as_ref(), Some(&g.qweight), "{what}: codes");
                assert_eq!(p.perm, g.perm, "{what}: perm");
                assert_eq!(p.perm.is_some(), act, "{what}");
                assert_eq!(p.layer.scales, g.scales, "{what}: scales");
                assert_eq!(p.layer.qzeros, g.qzeros, "{what}: zeros (asymmetric layer)");
                assert_eq!(p.layer.g_idx, None, "{what}: even groups keep no g_idx");
            }
        }
    }

    #[test]
    fn act_order_is_reordered_gathered_or_refused_per_variant() {
        let l = layer(256, 64, 32, true);
        let v4 = prepare(by_name("gemv_v4_perm").unwrap(), &l).unwrap();
        assert!(v4.perm.is_some() && v4.layer.g_idx.is_none());
        let v5 = prepare(by_name("gemv_v5_splitk").unwrap(), &l).unwrap();
        assert_eq!(v5.perm, v4.perm);
        let v3 = prepare(by_name("gemv_v3_gather").unwrap(), &l).unwrap();
        assert!(v3.perm.is_none() && v3.layer.g_idx == l.g_idx);
        let e = prepare(by_name("gemv_v2_vec").unwrap(), &l).unwrap_err();
        assert!(matches!(e, LabError::UnsupportedShape { .. }), "{e}");
        // Plain layers: no perm anywhere.
        let p = layer(256, 64, 32, false);
        assert!(prepare(by_name("gemv_v4_perm").unwrap(), &p)
            .unwrap()
            .perm
            .is_none());
    }

    #[test]
    fn uneven_act_order_groups_are_refused_by_reorder_variants_and_gathered_by_v3() {
        let mut l = layer(256, 64, 32, true);
        let g = l.g_idx.as_mut().unwrap();
        let row = g.iter().position(|&x| x == 0).unwrap();
        g[row] = 7; // group 0 has 31 rows, group 7 has 33
        let e = prepare(by_name("gemv_v4_perm").unwrap(), &l).unwrap_err();
        assert!(e.to_string().contains("gemv_v3_gather"), "{e}");
        assert!(prepare(by_name("gemv_v3_gather").unwrap(), &l).is_ok());
    }

    #[test]
    fn cublas_f16_weights_are_the_dequantized_weights_rounded_once() {
        let (k, n, g) = (64usize, 16usize, 32usize);
        let l = layer(k, n, g as i32, false);
        assert!(!l.symmetric, "the fixture must exercise non-constant zeros");
        let p = prepare(by_name("gemv_cublas_f16").unwrap(), &l).unwrap();
        let w16 = p.w_f16.expect("gemv_cublas_f16 prepares f16 weights");
        assert_eq!(w16.len(), k * n, "w_f16 is [K, N]");
        // Decoded by hand from the packed GPTQ tensors, independent of
        // `reference::dequantize`: the code of row r, column c is nibble r%8
        // of qweight[r/8][c]; the zero of group gi, column c is nibble c%8 of
        // qzeros[gi][c/8]; w[r][c] = scale[gi][c] * (code - zero), stored
        // row-major at r*n + c and rounded to f16 once.
        let mut distinct_zeros = std::collections::BTreeSet::new();
        for r in 0..k {
            let gi = r / g;
            for c in 0..n {
                let code = (l.qweight[(r / 8) * n + c] >> (4 * (r % 8))) & 0xF;
                let zero = (l.qzeros[gi * (n / 8) + c / 8] >> (4 * (c % 8))) & 0xF;
                distinct_zeros.insert(zero);
                let want = l.scales[gi * n + c].to_f64() * (f64::from(code) - f64::from(zero));
                assert_eq!(
                    w16[r * n + c],
                    f16::from_f64(want),
                    "w_f16[{r}*{n}+{c}]: code {code} zero {zero}"
                );
            }
        }
        assert!(
            distinct_zeros.len() > 1,
            "zeros are all equal: layout untested"
        );
        // A transposed ([N, K]) layout would disagree somewhere.
        assert!(
            (0..k).any(|r| (0..n).any(|c| r < n && c < k && w16[r * n + c] != w16[c * n + r])),
            "the fixture is symmetric; transposition would go unnoticed"
        );
    }

    #[test]
    fn an_invalid_layer_is_an_unsupported_shape_naming_the_variant() {
        let mut l = layer(64, 16, 32, false);
        l.scales.pop();
        let e = prepare(by_name("gemv_v1_naive").unwrap(), &l).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("gemv_v1_naive") && msg.contains("scales"),
            "{msg}"
        );
    }
}
