//! The one typed entry point that runs any variant on a prepared layer:
//! `launch(gpu, variant, &DeviceLayer, x, m, y, tunables)`. Host checks first (shape, batch,
//! buffer lengths, tunables), then the family's plan picks the instantiation and grid.

use super::abi::lab_gemm_params;
use super::layer::DeviceLayer;
use super::registry::{Family, Variant};
use super::{baseline, gemv};
use crate::cuda::{Gpu, SmLimits};
use crate::error::DriverCtx;
use crate::gptq::QuantLinear;
use crate::{LabError, Result};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use half::f16;
use serde::Serialize;
use std::collections::BTreeMap;

/// Tunable launch parameters by name; a missing one takes the variant's default.
pub type Tunables = BTreeMap<String, u32>;

/// What the host checks need to know about a prepared layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LayerShape {
    pub k: usize,
    pub n: usize,
    /// Rows per group (k for per-channel).
    pub group_size: usize,
    /// A non-trivial g_idx is present (gather variants).
    pub g_idx: bool,
    /// A row permutation is present (reordered act-order).
    pub perm: bool,
    pub bias: bool,
    pub symmetric: bool,
}

impl LayerShape {
    pub fn of(l: &QuantLinear, perm: bool) -> LayerShape {
        LayerShape {
            k: l.k,
            n: l.n,
            group_size: l.group_size,
            g_idx: l.g_idx.is_some(),
            perm,
            bias: l.bias.is_some(),
            symmetric: l.symmetric,
        }
    }
    /// "m=1 K=4096 N=11008 group=128 act-order=perm sym" — the shape in every error message.
    pub fn describe(&self, m: usize) -> String {
        let g = if self.group_size == self.k {
            "per-channel".to_string()
        } else {
            self.group_size.to_string()
        };
        let act = match (self.g_idx, self.perm) {
            (true, _) => " act-order=g_idx",
            (_, true) => " act-order=perm",
            _ => "",
        };
        format!(
            "m={m} K={} N={} group={g}{act}{}{}",
            self.k,
            self.n,
            if self.symmetric { " sym" } else { " asym" },
            if self.bias { " bias" } else { "" }
        )
    }
}

/// The host's decision for one launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LaunchPlan {
    /// Kernel instantiation ("" for pure cuBLAS).
    pub symbol: String,
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    /// K slices actually launched (grid.y of split-K), 1 otherwise.
    pub split_k: u32,
    /// Rows of K per slice (multiple of 8).
    pub k_slice: u32,
    /// Thread block cluster size along grid.y (gemv_v9_cluster: the tile's K slices; sm_90), 1 =
    /// no cluster: a launch with more sets CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION (1, this, 1).
    pub cluster_y: u32,
}

/// The value of tunable `name` for `v`: from `params`, else the default. Unknown names and values
/// outside the variant's list are errors (a typo must not silently time the default).
pub fn tunable(v: &Variant, params: &Tunables, name: &str) -> Result<u32> {
    if let Some(bad) = params
        .keys()
        .find(|k| !v.tunables.iter().any(|t| t.name == *k))
    {
        return Err(LabError::invalid(
            "tunable",
            format!(
                "variant {} has no tunable '{bad}' (it has: {:?})",
                v.name,
                v.tunables.iter().map(|t| t.name).collect::<Vec<_>>()
            ),
        ));
    }
    let t = v.tunables.iter().find(|t| t.name == name).ok_or_else(|| {
        LabError::invalid(
            "tunable",
            format!("variant {} declares no tunable '{name}'", v.name),
        )
    })?;
    match params.get(name) {
        None => Ok(t.default),
        Some(&x) if t.values.contains(&x) => Ok(x),
        Some(&x) => Err(LabError::invalid(
            "tunable",
            format!(
                "variant {}: {name} = {x} is not one of {:?}",
                v.name, t.values
            ),
        )),
    }
}

/// Every combination of a variant's tunables (the default first). The check runs all of them,
/// since each may be a different compiled instantiation.
pub fn tunable_combinations(v: &Variant) -> Vec<Tunables> {
    let mut combos: Vec<Tunables> = vec![BTreeMap::new()];
    for t in v.tunables {
        let mut values: Vec<u32> = vec![t.default];
        values.extend(t.values.iter().copied().filter(|&x| x != t.default));
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |&x| {
                    let mut c = c.clone();
                    c.insert(t.name.to_string(), x);
                    c
                })
            })
            .collect();
    }
    combos
}

/// The host checks of a launch without touching the device (CPU-testable): shape, batch, buffer
/// lengths, tunables. Returns the plan `launch` would use on a device of `dev`'s SMs
/// (`gpu.info.limits()`; `SmLimits::H100` where there is no device).
pub fn plan(
    v: &Variant,
    layer: &LayerShape,
    m: usize,
    x_len: usize,
    y_len: usize,
    params: &Tunables,
    dev: SmLimits,
) -> Result<LaunchPlan> {
    let p = match v.family {
        Family::Gemv => gemv::plan(v, layer, m, params, dev)?,
        Family::Gemm => super::gemm::launch_plan(v, layer, m, params, dev)?,
        other => {
            return Err(LabError::invalid(
                "variant",
                format!("{}: no launcher for family {other:?}", v.name),
            ))
        }
    };
    let (need_x, need_y) = (m * layer.k, m * layer.n);
    if x_len < need_x || y_len < need_y {
        return Err(LabError::UnsupportedShape {
            variant: v.name.to_string(),
            shape: layer.describe(m),
            reason: format!(
                "buffers too small: x has {x_len} elements (need m*K = {need_x}), y has {y_len} (need m*N = {need_y})"
            ),
        });
    }
    Ok(p)
}

/// The layer was prepared for `v` and this GPU runs `v`'s code (shared by both launchers).
fn check_launchable(gpu: &Gpu, v: &Variant, layer: &DeviceLayer, m: usize) -> Result<()> {
    if layer.variant.name != v.name {
        return Err(LabError::invalid(
            "layer",
            format!(
                "prepared for {} but launched as {}: prepare/upload the layer for each variant",
                layer.variant.name, v.name
            ),
        ));
    }
    if gpu.sm() < v.min_sm {
        return Err(LabError::UnsupportedShape {
            variant: v.name.to_string(),
            shape: layer.shape.describe(m),
            reason: format!(
                "needs sm_{} or newer; this GPU is sm_{}",
                v.min_sm,
                gpu.sm()
            ),
        });
    }
    Ok(())
}

/// y [m, n] = x [m, k] . W (+ bias), fp16 in and out, on the GPU's stream (asynchronous: call
/// `gpu.sync()` before reading y). `layer` must have been prepared for `v`.
pub fn launch(
    gpu: &Gpu,
    v: &'static Variant,
    layer: &DeviceLayer,
    x: &CudaSlice<f16>,
    m: usize,
    y: &mut CudaSlice<f16>,
    params: &Tunables,
) -> Result<()> {
    check_launchable(gpu, v, layer, m)?;
    let plan = plan(
        v,
        &layer.shape,
        m,
        x.len(),
        y.len(),
        params,
        gpu.info.limits(),
    )?;
    if v.family == Family::Gemm {
        return super::gemm::launch_layer(gpu, v, layer, x, m, y, &plan);
    }
    let kind = gemv::kind(v)?;
    match kind {
        gemv::GemvKind::CublasF16 => baseline::gemm_f16(gpu, layer, x, m, y),
        gemv::GemvKind::DequantCublas => {
            let w = layer.w_f16.as_ref().ok_or_else(|| {
                LabError::invalid(
                    "layer",
                    "dequant baseline uploaded without its fp16 W buffer",
                )
            })?;
            // The dequant kernel writes W into the layer's own buffer: stream order makes the
            // GEMM below see it.
            let (wp, _gw) = w.device_ptr(&gpu.stream);
            launch_kernel(gpu, v, layer, x, XRows { m, gated: false }, wp, &plan)?;
            baseline::gemm_f16(gpu, layer, x, m, y)
        }
        _ => {
            let (yp, _gy) = y.device_ptr_mut(&gpu.stream);
            launch_kernel(gpu, v, layer, x, XRows { m, gated: false }, yp, &plan)
        }
    }
}

/// y [n] = act . W with act = silu(gate) * up from the fused x = [gate | up] (2K values): the
/// kernel computes act while loading x (lab_gemm_params.x_glu). m = 1, and only the kernels
/// `gemv::takes_gated_input` names; the others read a plain x and are refused.
pub fn launch_gated(
    gpu: &Gpu,
    v: &'static Variant,
    layer: &DeviceLayer,
    gate_up: &CudaSlice<f16>,
    y: &mut CudaSlice<f16>,
    params: &Tunables,
) -> Result<()> {
    let refuse = |reason: &str| LabError::UnsupportedShape {
        variant: v.name.to_string(),
        shape: layer.shape.describe(1),
        reason: reason.to_string(),
    };
    if !gemv::variant_takes_gated_input(v) {
        return Err(refuse(
            "this kernel reads a plain x (gated input: gemv_v1_naive, gemv_v6_pipe)",
        ));
    }
    if gate_up.len() < 2 * layer.shape.k {
        return Err(refuse(&format!(
            "gated x has {} elements, needs 2K = {}",
            gate_up.len(),
            2 * layer.shape.k
        )));
    }
    check_launchable(gpu, v, layer, 1)?;
    let plan = plan(
        v,
        &layer.shape,
        1,
        gate_up.len(),
        y.len(),
        params,
        gpu.info.limits(),
    )?;
    let (yp, _gy) = y.device_ptr_mut(&gpu.stream);
    launch_kernel(
        gpu,
        v,
        layer,
        gate_up,
        XRows { m: 1, gated: true },
        yp,
        &plan,
    )
}

/// What x holds: m rows of K, or (gated, m = 1) the fused [gate | up] the kernel turns into
/// silu(gate) * up while loading it.
#[derive(Debug, Clone, Copy)]
struct XRows {
    m: usize,
    gated: bool,
}

/// Fills `lab_gemm_params` with device addresses and launches `plan.symbol`; `out` is the
/// address of y (or of the dequant kernel's fp16 W), borrowed by the caller across this call.
fn launch_kernel(
    gpu: &Gpu,
    v: &Variant,
    layer: &DeviceLayer,
    x: &CudaSlice<f16>,
    rows: XRows,
    out: u64,
    plan: &LaunchPlan,
) -> Result<()> {
    let XRows { m, gated } = rows;
    let s = &*gpu.stream;
    let f = gpu.function(&plan.symbol)?;
    let sh = &layer.shape;
    // The guards record the stream's use of each buffer when dropped, after the launch below.
    let (xp, _gx) = x.device_ptr(s);
    let (qw, _g1) = layer.qweight.device_ptr(s);
    let (qz, _g2) = layer.qzeros.device_ptr(s);
    let (sc, _g3) = layer.scales.device_ptr(s);
    let gi = layer.g_idx.as_ref().map(|b| b.device_ptr(s));
    let pm = layer.perm.as_ref().map(|b| b.device_ptr(s));
    let bs = layer.bias.as_ref().map(|b| b.device_ptr(s));
    let ws = layer.workspace.as_ref().map(|b| b.device_ptr(s));
    if plan.split_k > 1 || gemv::kind(v)? == gemv::GemvKind::SplitK {
        let need = sh.n + sh.n.div_ceil(gemv::TILE_N);
        if layer.workspace.as_ref().is_none_or(|w| w.len() < need) {
            return Err(LabError::invalid(
                "layer",
                format!(
                    "{}: split-K workspace missing or smaller than {need} words",
                    v.name
                ),
            ));
        }
    }
    let params = lab_gemm_params {
        x: xp,
        qweight: qw,
        qzeros: if sh.symmetric { 0 } else { qz },
        scales: sc,
        g_idx: gi.as_ref().map_or(0, |p| p.0),
        perm: pm.as_ref().map_or(0, |p| p.0),
        bias: bs.as_ref().map_or(0, |p| p.0),
        y: out,
        workspace: ws.as_ref().map_or(0, |p| p.0),
        m: m as i32,
        n: sh.n as i32,
        k: sh.k as i32,
        group_size: sh.group_size as i32,
        groups: (sh.k / sh.group_size) as i32,
        zero_mode: if sh.symmetric {
            super::abi::LAB_ZEROS_SYMMETRIC as i32
        } else {
            super::abi::LAB_ZEROS_TRUE as i32
        },
        split_k: plan.split_k as i32,
        k_slice: plan.k_slice as i32,
        prefetch_bytes: 0,
        x_glu: gated as i32,
        ld_w: 0,
    };
    let cfg = LaunchConfig {
        grid_dim: plan.grid,
        block_dim: plan.block,
        shared_mem_bytes: 0,
    };
    if plan.cluster_y > 1 {
        // SAFETY: as below; the cluster dims divide the grid (grid.y = cluster_y, gemv::plan).
        return unsafe { launch_cluster(gpu, &f, cfg, &params, plan.cluster_y) }.ctx(&format!(
            "launching {} ({}) for {} as clusters of {}",
            plan.symbol,
            v.name,
            sh.describe(m),
            plan.cluster_y
        ));
    }
    let mut b = s.launch_builder(&f);
    b.arg(&params);
    // SAFETY: `params` matches the kernel's single by-value `lab_gemm_params` argument (bindgen
    // layout of kernels/abi.h). Every address in it is a live allocation of this context, borrowed
    // for the duration of this call (guards above), with the lengths the plan checked: x >= m*K,
    // y >= m*N (or K*N for the dequant buffer, allocated by upload), qweight [K/8, N], qzeros
    // [K/G, N/8], scales [K/G, N], g_idx/perm [K], bias [N], workspace [N + N/32]; the kernels
    // index only inside those bounds for the grid the plan computed (n % 8 == 0, k % 8 == 0,
    // group rules checked in gemv::check_layer).
    unsafe { b.launch(cfg) }.ctx(&format!(
        "launching {} ({}) for {}",
        plan.symbol,
        v.name,
        sh.describe(m)
    ))?;
    Ok(())
}

/// A launch as clusters of (1, `cluster_y`, 1) blocks (CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION).
///
/// # Safety
/// As any kernel launch: `p` is the by-value params struct `f` expects, its addresses live; the
/// cluster dims divide the grid and the device supports clusters (sm_90: the variant's min_sm).
unsafe fn launch_cluster(
    gpu: &Gpu,
    f: &cudarc::driver::CudaFunction,
    cfg: LaunchConfig,
    p: &lab_gemm_params,
    cluster_y: u32,
) -> std::result::Result<(), cudarc::driver::DriverError> {
    let mut attrs = [crate::cuda::cluster_dim_attribute(cluster_y)];
    crate::cuda::launch_with_attributes(&gpu.ctx, &gpu.stream, f, cfg, p, &mut attrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::registry::by_name;

    #[test]
    fn combinations_put_the_default_first_and_cover_the_product() {
        let v = by_name("gemv_v5_splitk").unwrap();
        let c = tunable_combinations(v);
        assert_eq!(c.len(), 2 * 5);
        assert_eq!(c[0]["threads"], 256);
        assert_eq!(c[0]["split_k"], 4);
        // Exactly the product threads {128, 256} x split_k {2, 3, 4, 6, 8}, each once.
        let got: std::collections::BTreeSet<(u32, u32)> = c
            .iter()
            .map(|t| {
                assert_eq!(t.len(), 2, "{t:?}");
                (t["threads"], t["split_k"])
            })
            .collect();
        assert_eq!(got.len(), c.len(), "a combination repeats: {c:?}");
        let want: std::collections::BTreeSet<(u32, u32)> = [128, 256]
            .into_iter()
            .flat_map(|t| [2, 3, 4, 6, 8].map(|s| (t, s)))
            .collect();
        assert_eq!(got, want);
        assert_eq!(
            tunable_combinations(by_name("gemv_cublas_f16").unwrap()).len(),
            1
        );
    }

    #[test]
    fn short_buffers_are_refused_before_launch() {
        let v = by_name("gemv_v2_vec").unwrap();
        let s = LayerShape {
            k: 4096,
            n: 4096,
            group_size: 128,
            g_idx: false,
            perm: false,
            bias: false,
            symmetric: true,
        };
        assert!(plan(v, &s, 1, 4096, 4096, &Tunables::new(), SmLimits::H100).is_ok());
        let e = plan(v, &s, 1, 4095, 4096, &Tunables::new(), SmLimits::H100).unwrap_err();
        assert!(e.to_string().contains("x has 4095"), "{e}");
    }

    /// The kernel writes m*N outputs: a y one element short must be refused like a short x
    /// (N != K here, so a check of y against K, or of x alone, cannot pass for it).
    #[test]
    fn a_short_y_buffer_is_refused_before_launch() {
        let v = by_name("gemv_v2_vec").unwrap();
        let s = LayerShape {
            k: 4096,
            n: 1024,
            group_size: 128,
            g_idx: false,
            perm: false,
            bias: false,
            symmetric: true,
        };
        assert!(plan(v, &s, 1, 4096, 1024, &Tunables::new(), SmLimits::H100).is_ok());
        let e = plan(v, &s, 1, 4096, 1023, &Tunables::new(), SmLimits::H100).unwrap_err();
        assert!(
            e.to_string().contains("y has 1023") && e.to_string().contains("m*N = 1024"),
            "{e}"
        );
    }
}
