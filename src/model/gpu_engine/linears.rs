//! The linear layers of a step: which kernel computes each int4 linear (the engine's own q4 GEMV,
//! a registry GEMV variant, the dispatcher's tuned choice), which act-order linears run as plain
//! GEMVs on x their producer wrote in sorted row order (`LayerPx`), and the launches themselves.
//! Every linear goes through `GpuEngine::linear_px`.

use super::{Blas, Fp16Backend, GpuEngine, Int4Kernel};
use crate::error::DriverCtx;
use crate::kernels::abi;
use crate::kernels::gemv::{kind as gemv_kind, v6_one_block_per_sm, GemvKind};
use crate::kernels::launch::{plan as gemv_plan, LayerShape, Tunables};
use crate::kernels::registry::Variant;
use crate::model::config::ModelConfig;
use crate::model::gpu_layout::{Int4Linear, Storage};
use crate::model::gpu_weights::{GpuLinear, Int4Dev, Slot};
use crate::{LabError, Result};
use cudarc::driver::LaunchConfig;
use std::collections::HashMap;

/// Whether an int4 linear served by `choice` (None: the engine's own q4 GEMV) can take the fused
/// [gate | up] and compute silu(gate) * up while loading x: the engine's q4 and the registry
/// kernels `gemv::takes_gated_input` names. The others (and fp16) get lab_llama_silu_mul first.
pub(super) fn int4_takes_gated_input(choice: Option<&'static Variant>) -> bool {
    choice.is_none_or(crate::kernels::gemv::variant_takes_gated_input)
}

/// The input of one linear: a plain fp16 vector x [k], or the fused MLP [gate | up] (2k values)
/// whose silu(gate) * up is the input (lab_gemm_params.x_glu, kernels/common/glu.cuh).
#[derive(Debug, Clone, Copy)]
pub(super) enum XInput {
    Plain(u64),
    Gated(u64),
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

/// The widest output of a linear of `cfg` (fused q|k|v, fused gate|up, o/down): what the
/// split-K workspaces hold columns for.
pub(super) fn widest_linear_n(cfg: &ModelConfig) -> usize {
    let kv_dim = cfg.num_key_value_heads * cfg.head_dim();
    let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
    (h + 2 * kv_dim).max(2 * inter).max(h)
}

/// The kernel-facing shape of an int4 linear, host (`Int4Host`, tests) or device (`Int4Dev`).
pub(super) fn layer_shape<S: Storage>(l: &Int4Linear<S>) -> LayerShape {
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

/// (k, n, rows per group, act-order): what decides an int4 linear's kernel.
pub(super) type ShapeKey = (usize, usize, usize, bool);

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
pub(super) fn plain_kernels_serve(kernel: &Int4Kernel) -> bool {
    matches!(kernel, Int4Kernel::Auto(_))
}

pub(super) fn px_facts(lin: &GpuLinear) -> Option<PxFacts> {
    match lin {
        GpuLinear::Int4(l) => Some((l.perm.is_some(), l.g_idx.is_some())),
        GpuLinear::F16(_) => None,
    }
}

/// The shape a linear on permuted x presents to a plain kernel: no permutation, no g_idx.
pub(super) fn plain_shape(s: &LayerShape) -> LayerShape {
    LayerShape {
        perm: false,
        g_idx: false,
        ..*s
    }
}

pub(super) fn shape_key(s: &LayerShape) -> ShapeKey {
    (s.k, s.n, s.group_size, s.perm || s.g_idx)
}

/// The dispatcher's key of a batch-1 linear (a group as wide as K is per-channel: -1).
pub(super) fn problem_key((k, n, group, act_order): ShapeKey) -> crate::tune::ProblemKey {
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
pub(super) fn step_linears(
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

impl GpuEngine {
    /// Whether the step feeds layer `li`'s down projection the fused [gate | up] (no silu launch).
    pub(super) fn takes_gated_input(&self, li: usize) -> bool {
        self.opts.fused_glu && self.can_take_gated_input(li)
    }

    /// Whether layer `li`'s down projection kernel can take the fused [gate | up] at all. Not on
    /// permuted x: the silu kernel writes that copy.
    pub(super) fn can_take_gated_input(&self, li: usize) -> bool {
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
    pub(super) fn px_active(&self, li: usize) -> LayerPx {
        if self.opts.act_order_plain {
            self.px[li]
        } else {
            LayerPx::default()
        }
    }

    /// For a norm whose consumer starts with `first`: the permutation the norm also applies (0:
    /// none) and the x the consumer reads, xn_p when it runs on permuted x (`px`), else xn.
    pub(super) fn norm_for(&self, px: bool, first: &GpuLinear) -> (u64, u64) {
        if px {
            (self.perm_of(first), self.r(&self.b.xn_p))
        } else {
            (0, self.r(&self.b.xn))
        }
    }

    /// The device address of an int4 linear's permutation (i32 [k]), 0 for none.
    pub(super) fn perm_of(&self, lin: &GpuLinear) -> u64 {
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

    /// The registry split-K workspace `gemv_ws` as (f32 partial columns, u32 ticket words): the
    /// largest N of the model, then ceil(N / 32) tickets (sized in `new`).
    pub(super) fn gemv_ws_parts(&self) -> (usize, usize) {
        let max_n = widest_linear_n(&self.cfg);
        (max_n, self.b.gemv_ws.len() - max_n)
    }

    /// A linear layer on a plain x: y[0..n] = x[0..k] . W (through `linear_px`, the one place a
    /// linear is computed).
    pub(super) fn linear(&self, lin: &GpuLinear, x: u64, y: u64) -> Result<()> {
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
    pub(super) fn linear_px(&self, lin: &GpuLinear, x: XInput, y: u64, px: bool) -> Result<()> {
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
    pub(super) fn fp16_blas(&self) -> Option<&Blas> {
        self.blas
            .as_ref()
            .filter(|_| self.fp16_backend == Some(Fp16Backend::Cublas))
    }

    /// The kernel parameters of one int4 linear (m = 1, no bias): shared by the engine's own GEMV
    /// and the registry variants. Symmetric layers pass no zeros (the kernels fold in 8).
    pub(super) fn int4_params(
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
    pub(super) fn gemv_f16(
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

    /// A fused linear (q|k|v or gate|up): each segment from x into its columns of `out` (fp16),
    /// on permuted x where `px` (one segment then: `layer_px`).
    pub(super) fn fused_linear(&self, segs: &[Slot], x: u64, out: u64, px: bool) -> Result<()> {
        for s in segs {
            self.linear_px(&s.lin, XInput::Plain(x), out + 2 * s.col as u64, px)?;
        }
        Ok(())
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
}
