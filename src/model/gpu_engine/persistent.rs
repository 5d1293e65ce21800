//! Persistent decode layers, host half (the kernel: kernels/llama/layers.cu, whose top comment has
//! the design and its numbers). With `EngineOptions::persistent_layers`, a decode step is
//! embed -> ONE cooperative launch of `lab_llama_layers` over every decoder layer -> final norm ->
//! lm_head -> argmax, instead of ~8 launches per layer.
//!
//! What the host decides here, once per engine: the grid (2 blocks of 256 threads per SM, or what
//! the occupancy query allows), each GEMV phase's split of K (`phase_split`), and the work items of
//! every phase (`plan_phase`): part p of a phase (q, k, v separately for act-order, or one fused
//! q|k|v) owns items item0 .. item0 + tiles x split, tickets tile0 .. tile0 + tiles and the
//! output / partial columns col0 .. col0 + n. `layers_item_emulated` is the kernel's item decode
//! in Rust, so the tests check on the CPU that every (part, tile, slice) runs exactly once.
//! Every linear must be int4 and plannable by gemv_v6_pipe (the persistent kernel runs its loop).

use super::GpuEngine;
use crate::error::DriverCtx;
use crate::kernels::abi;
use crate::kernels::gemv::{V6_CHUNK_WORDS, V6_TILE_N, V6_XS_ROWS};
use crate::kernels::launch::{plan as gemv_plan, Tunables};
use crate::model::gpu_weights::{GpuLayer, GpuLinear, Int4Dev, Slot};
use crate::{LabError, Result};
use cudarc::driver::{CudaFunction, CudaSlice};
use half::f16;

/// lab_llama_layers' static shared memory (ptxas, CUDA 13.0: 13488 B on every arch), rounded up:
/// what the 48 KB default leaves for the attention's dynamic part.
pub const STATIC_SMEM_BYTES: usize = 13_568;
/// Threads per block and the blocks per SM the kernel's launch bounds promise (abi.h).
pub const THREADS: u32 = abi::LAB_LAYERS_THREADS;
pub const MIN_BLOCKS: u32 = abi::LAB_LAYERS_MIN_BLOCKS;
/// Linears per phase the descriptor holds.
pub const MAX_PARTS: usize = abi::LAB_LAYERS_MAX_PARTS as usize;
/// Largest K split considered (gemv_v6's automatic split stops at 16 too).
pub const MAX_SPLIT: usize = 16;
/// The fixed cost of one work item (x staging, the k-lane sum, the split-K atomics and ticket) in
/// units of one whole-K tile's weight streaming. A design guess (staging 4096 rows from L2 is
/// ~1 us against ~20 us for a 128-column tile of K 4096 at the per-block share of the ceiling),
/// until a GPU run measures it.
pub const ITEM_OVERHEAD: f64 = 0.05;

/// How one GEMV phase divides K: `split` slices of `k_slice` rows (the last may be shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhaseSplit {
    pub split: usize,
    pub k_slice: usize,
}

/// The split of a phase of `tiles` 128-column tiles over `k` rows on `grid` blocks: item j runs on
/// block j mod grid, so a phase lasts about ceil(tiles x split / grid) items of (k_slice / k +
/// ITEM_OVERHEAD) tile-times; the split with the least of that (the smallest on ties). Slices are
/// whole 32-row chunks (v6's), none empty, none over the 4096-row x buffer.
pub fn phase_split(k: usize, tiles: usize, grid: usize) -> PhaseSplit {
    let kw = (k / 8).max(1);
    let min_split = k.div_ceil(V6_XS_ROWS).max(1);
    let mut best: Option<(f64, PhaseSplit)> = None;
    for want in min_split..=MAX_SPLIT.max(min_split) {
        let slice_words = kw.div_ceil(want).div_ceil(V6_CHUNK_WORDS) * V6_CHUNK_WORDS;
        let split = kw.div_ceil(slice_words);
        let k_slice = slice_words * 8;
        let per_block = (tiles * split).div_ceil(grid.max(1));
        let cost = per_block as f64 * (k_slice.min(k) as f64 / k.max(1) as f64 + ITEM_OVERHEAD);
        if best.is_none_or(|(c, _)| cost < c - 1e-12) {
            best = Some((cost, PhaseSplit { split, k_slice }));
        }
    }
    best.map(|(_, s)| s).unwrap_or(PhaseSplit {
        split: 1,
        k_slice: k,
    })
}

/// Positions per attention split inside the persistent kernel: the engine's `attn_chunk` at least
/// (its partial buffer holds max_ctx / attn_chunk splits per head), and enough that heads x splits
/// items fit the grid, so the attention phase is one round. The separate attention kernel keeps 4
/// blocks per SM (528 on an H100) and fits 7B's 32 x 9 = 288 blocks; here 2 per SM are resident
/// (264), so 7B at max_ctx 2100 takes 263 positions per split (8 splits, 256 items) instead of
/// 256 (9, 288: two rounds for 24 blocks), 13B 350 (6 splits, 240 items). Small contexts keep
/// the engine's chunk (the tiny check's 4-16 positions: many splits per head).
pub fn persistent_attn_chunk(
    max_ctx: usize,
    attn_chunk: usize,
    heads: usize,
    grid: usize,
) -> usize {
    let per_head = (grid / heads.max(1)).max(1);
    attn_chunk.max(max_ctx.div_ceil(per_head))
}

/// lab_llama_layers' dynamic shared memory for attention splits of `chunk` positions at head dim
/// `hd` (`attn_split_smem`), or why it does not fit: a launch gets 48 KB of shared memory without
/// opting in, and the kernel's static part (x slice, partials, the attention's k/v rows,
/// `STATIC_SMEM_BYTES`) takes ~13.5 KB of it.
pub fn layers_dynamic_smem(hd: usize, chunk: usize) -> std::result::Result<u32, String> {
    let smem = super::attn_split_smem(hd, chunk);
    if smem as usize + STATIC_SMEM_BYTES > 48 * 1024 {
        return Err(format!("an attention split of {chunk} positions needs {smem} B of dynamic shared memory beside lab_llama_layers' ~{STATIC_SMEM_BYTES} B static: over the 48 KB a launch gets"));
    }
    Ok(smem)
}

/// One linear of a phase as the planner sees it: `n` outputs at column `col` of the phase output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartShape {
    pub k: usize,
    pub n: usize,
    pub col: usize,
}

/// Where one part's items, tickets and columns start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartPlan {
    pub col0: usize,
    pub tiles: usize,
    pub tile0: usize,
    pub item0: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhasePlan {
    pub k: usize,
    pub split: PhaseSplit,
    pub items: usize,
    /// Tickets the phase uses (its parts' tiles).
    pub tickets: usize,
    /// One past the last output column.
    pub width: usize,
    pub parts: Vec<PartPlan>,
}

/// Items, tickets and columns of a phase's parts on `grid` blocks. The parts share k (one input).
pub fn plan_phase(parts: &[PartShape], grid: usize) -> std::result::Result<PhasePlan, String> {
    if parts.is_empty() || parts.len() > MAX_PARTS {
        return Err(format!(
            "{} linears in one phase; the descriptor holds 1 to {MAX_PARTS}",
            parts.len()
        ));
    }
    let k = parts[0].k;
    if let Some(p) = parts.iter().find(|p| p.k != k) {
        return Err(format!(
            "linears of one phase read different inputs (k {} and {})",
            k, p.k
        ));
    }
    if k % 8 != 0 || k == 0 {
        return Err(format!("k {k} must be a positive multiple of 8"));
    }
    let tiles: usize = parts.iter().map(|p| p.n.div_ceil(V6_TILE_N)).sum();
    let split = phase_split(k, tiles, grid);
    let (mut tile0, mut out) = (0, Vec::with_capacity(parts.len()));
    for p in parts {
        if p.n == 0 || p.n % 8 != 0 {
            return Err(format!("n {} must be a positive multiple of 8", p.n));
        }
        let t = p.n.div_ceil(V6_TILE_N);
        out.push(PartPlan {
            col0: p.col,
            tiles: t,
            tile0,
            item0: tile0 * split.split,
        });
        tile0 += t;
    }
    Ok(PhasePlan {
        k,
        split,
        items: tiles * split.split,
        tickets: tiles,
        width: parts.iter().map(|p| p.col + p.n).max().unwrap_or(0),
        parts: out,
    })
}

/// The kernel's `layers_item` in Rust: the (part, tile, slice) of phase item `item`.
pub fn layers_item_emulated(plan: &PhasePlan, item: usize) -> (usize, usize, usize) {
    let mut pi = 0;
    while pi + 1 < plan.parts.len() && item >= plan.parts[pi + 1].item0 {
        pi += 1;
    }
    let p = &plan.parts[pi];
    let local = item - p.item0;
    (pi, local % p.tiles, local / p.tiles)
}

/// An int4 linear, or the refusal naming it.
fn int4_of<'a>(lin: &'a GpuLinear, li: usize, what: &str) -> Result<&'a Int4Dev> {
    match lin {
        GpuLinear::Int4(q) => Ok(q),
        GpuLinear::F16(_) => Err(LabError::invalid(
            "--persistent-layers",
            format!(
                "layer {li} {what} is fp16: the persistent decode layers run int4 linears only"
            ),
        )),
    }
}

/// The linears of a layer's four GEMV phases, in kernel order (q|k|v, o, gate|up, down), each as
/// (int4 linear, output column); a clear refusal where one is not int4.
fn phase_linears(l: &GpuLayer, li: usize) -> Result<[Vec<(&Int4Dev, usize)>; 4]> {
    fn slots<'a>(s: &'a [Slot], li: usize, what: &str) -> Result<Vec<(&'a Int4Dev, usize)>> {
        s.iter()
            .map(|s| Ok((int4_of(&s.lin, li, what)?, s.col)))
            .collect()
    }
    Ok([
        slots(&l.qkv, li, "q|k|v")?,
        vec![(int4_of(&l.o, li, "o_proj")?, 0)],
        slots(&l.gate_up, li, "gate|up")?,
        vec![(int4_of(&l.down, li, "down_proj")?, 0)],
    ])
}

/// Names of the four GEMV phases (reports, errors).
pub const PHASE_NAMES: [&str; 4] = ["q|k|v", "o", "gate|up", "down"];

/// The persistent kernel, its grid and the device-side layer descriptors of one engine.
pub struct Persistent {
    pub func: CudaFunction,
    pub grid: u32,
    pub smem: u32,
    /// Attention positions per split and splits per head (`persistent_attn_chunk`).
    pub attn_chunk: usize,
    pub attn_splits: usize,
    /// lab_layers_layer [layers] as bytes.
    layers: CudaSlice<u8>,
    /// u64 grid-barrier arrivals (zeroed once).
    barrier: CudaSlice<u64>,
    /// Trace-only outputs the launch-per-op step keeps elsewhere: the post-attention norm's x and
    /// resid after the o residual add.
    trace_ffn_norm: CudaSlice<f16>,
    trace_resid_attn: CudaSlice<f32>,
    /// Layer 0's phase plans (every layer of a model has the same shapes), for notes.
    pub plans: Vec<PhasePlan>,
    /// The driver refused to capture the cooperative launch into a CUDA graph (why): the
    /// engine's graph steps run eager while the persistent layers are on.
    pub graph_refused: Option<String>,
}

impl Persistent {
    /// One line per phase: "q|k|v 96 tiles x 5 = 480 items" (notes, `lab decode`).
    pub fn summary(&self) -> String {
        let phases: Vec<String> = self
            .plans
            .iter()
            .zip(PHASE_NAMES)
            .map(|(p, name)| {
                format!(
                    "{name} {} tiles x {} = {} items",
                    p.tickets, p.split.split, p.items
                )
            })
            .collect();
        format!(
            "grid {} x {} threads; attention {} positions per split; {}",
            self.grid,
            THREADS,
            self.attn_chunk,
            phases.join(", ")
        )
    }
}

impl GpuEngine {
    /// Plan and upload the persistent layers (once per engine); a refusal says which layer or
    /// limit stands in the way.
    pub(super) fn build_persistent(&self) -> Result<Persistent> {
        let v6 = crate::kernels::registry::by_name("gemv_v6_pipe").ok_or_else(|| {
            LabError::invalid("--persistent-layers", "gemv_v6_pipe is not in the registry")
        })?;
        let func = self.k.layers.clone();
        let hd = self.cfg.head_dim();
        // The attention chunk depends on the grid, the grid on the occupancy, the occupancy on
        // the chunk's shared memory: from 2 blocks per SM down until they agree.
        let (heads, max_ctx) = (self.cfg.num_attention_heads, self.opts.max_ctx);
        let mut per_sm = MIN_BLOCKS;
        let cap = match self.opts.persistent_max_grid {
            0 => usize::MAX,
            c => c,
        };
        let (grid, attn_chunk, smem) = loop {
            let grid = (per_sm as usize * self.dev.sms as usize).min(cap);
            let chunk = persistent_attn_chunk(max_ctx, self.opts.attn_chunk, heads, grid);
            let smem = layers_dynamic_smem(hd, chunk).map_err(|e| {
                LabError::invalid(
                    "--persistent-layers",
                    format!("{e} (max_ctx {max_ctx} on a grid of {grid}); lower max_ctx"),
                )
            })?;
            let fits = func
                .occupancy_max_active_blocks_per_multiprocessor(THREADS, smem as usize, None)
                .ctx("occupancy of lab_llama_layers")?;
            if fits >= per_sm {
                break (grid, chunk, smem);
            }
            if fits == 0 || per_sm == 1 {
                return Err(LabError::invalid(
                    "--persistent-layers",
                    format!("lab_llama_layers with {smem} B of dynamic shared memory for an attention chunk of {chunk} (beside its ~13.5 KB static) has no room on an SM: over the 48 KB a launch gets by default? lower max_ctx"),
                ));
            }
            per_sm = fits;
        };
        let (max_n, ticket_words) = self.gemv_ws_parts();
        let bufs = [
            self.r(&self.b.qkv),
            self.r(&self.b.o),
            self.r(&self.b.gate_up),
            self.r(&self.b.down),
        ];
        let mut descs: Vec<abi::lab_layers_layer> = Vec::with_capacity(self.weights.layers.len());
        let mut plans = Vec::new();
        for (li, l) in self.weights.layers.iter().enumerate() {
            let lins = phase_linears(l, li)?;
            let mut phases = [abi::lab_layers_phase::default(); 4];
            for (pi, (parts, y)) in lins.iter().zip(bufs).enumerate() {
                for (q, _) in parts {
                    let shape = super::layer_shape(q);
                    gemv_plan(v6, &shape, 1, q.k, q.n, &Tunables::default(), self.dev).map_err(
                        |e| {
                            LabError::invalid(
                                "--persistent-layers",
                                format!("layer {li} {}: {e}", PHASE_NAMES[pi]),
                            )
                        },
                    )?;
                }
                let shapes: Vec<PartShape> = parts
                    .iter()
                    .map(|(q, col)| PartShape {
                        k: q.k,
                        n: q.n,
                        col: *col,
                    })
                    .collect();
                let plan = plan_phase(&shapes, grid).map_err(|e| {
                    LabError::invalid(
                        "--persistent-layers",
                        format!("layer {li} {}: {e}", PHASE_NAMES[pi]),
                    )
                })?;
                if plan.width > max_n || plan.tickets > ticket_words {
                    return Err(LabError::invalid(
                        "--persistent-layers",
                        format!("layer {li} {}: {} columns / {} tickets exceed the split-K workspace ({max_n} / {ticket_words})", PHASE_NAMES[pi], plan.width, plan.tickets),
                    ));
                }
                let ph = &mut phases[pi];
                for (d, ((q, _), pp)) in ph.part.iter_mut().zip(parts.iter().zip(&plan.parts)) {
                    // The pointers and zero mode exactly as every int4 GEMV launch gets them.
                    let g = self.int4_params(q, super::XInput::Plain(0), 0, 0, 1, q.k);
                    *d = abi::lab_layers_part {
                        qweight: g.qweight,
                        qzeros: g.qzeros,
                        scales: g.scales,
                        perm: g.perm,
                        n: g.n,
                        col0: pp.col0 as i32,
                        tile0: pp.tile0 as i32,
                        item0: pp.item0 as i32,
                        group_size: g.group_size,
                        zero_mode: g.zero_mode,
                    };
                }
                ph.y = y;
                ph.n_parts = parts.len() as i32;
                ph.items = plan.items as i32;
                ph.k = plan.k as i32;
                ph.split = plan.split.split as i32;
                ph.k_slice = plan.split.k_slice as i32;
                if li == 0 {
                    plans.push(plan);
                }
            }
            // The layer's cache rows exactly as its separate attention launch gets them.
            let cache = self.attn_params(li);
            descs.push(abi::lab_layers_layer {
                qkv: phases[0],
                o: phases[1],
                gate_up: phases[2],
                down: phases[3],
                attn_norm: self.r(&l.attn_norm),
                ffn_norm: self.r(&l.ffn_norm),
                k_cache: cache.k_cache,
                v_cache: cache.v_cache,
            });
        }
        // SAFETY: lab_layers_layer is plain old data (u64 / i32 fields, bindgen layout-tested);
        // the bytes are copied to the device as the kernel's array of it.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                descs.as_ptr() as *const u8,
                std::mem::size_of_val(descs.as_slice()),
            )
        };
        let h = self.cfg.hidden_size;
        Ok(Persistent {
            func,
            grid: grid as u32,
            smem,
            attn_chunk,
            attn_splits: max_ctx.div_ceil(attn_chunk),
            layers: self
                .stream
                .clone_htod(bytes)
                .ctx("uploading the persistent layer descriptors")?,
            barrier: self
                .stream
                .alloc_zeros::<u64>(1)
                .ctx("persistent grid barrier")?,
            trace_ffn_norm: self.stream.alloc_zeros::<f16>(h).ctx("persistent trace")?,
            trace_resid_attn: self.stream.alloc_zeros::<f32>(h).ctx("persistent trace")?,
            plans,
            graph_refused: None,
        })
    }

    /// Launch layers [begin, end) as one cooperative grid. `trace`: also write the trace-only
    /// outputs (the norms' staged x, silu(gate) * up, resid after the o residual add).
    pub(super) fn launch_persistent(
        &self,
        p: &Persistent,
        begin: usize,
        end: usize,
        trace: bool,
    ) -> Result<()> {
        self.launch_persistent_as(p, begin, end, trace, false)
    }

    /// `launch_persistent`, or with `barriers_only` the grid barriers of those layers and nothing
    /// else (their cost alone; the step's state is left as it was, bar the barrier counter).
    fn launch_persistent_as(
        &self,
        p: &Persistent,
        begin: usize,
        end: usize,
        trace: bool,
        barriers_only: bool,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let hd = cfg.head_dim();
        let b = &self.b;
        let t = |v: u64| if trace { v } else { 0 };
        let params = abi::lab_llama_layers_params {
            layers: self.r(&p.layers),
            attn: abi::lab_llama_attn_params {
                chunk: p.attn_chunk as i32,
                n_splits: p.attn_splits as i32,
                ..self.attn_params(0)
            },
            resid: self.r(&b.resid),
            gate_up: self.r(&b.gate_up),
            workspace: self.r(&b.gemv_ws),
            tickets: self.r(&b.gemv_ws) + 4 * self.gemv_ws_parts().0 as u64,
            barrier: self.r(&p.barrier),
            trace_attn_norm: t(self.r(&b.xn)),
            trace_ffn_norm: t(self.r(&p.trace_ffn_norm)),
            trace_act: t(self.r(&b.act)),
            trace_resid_attn: t(self.r(&p.trace_resid_attn)),
            layer_begin: begin as i32,
            layer_end: end as i32,
            hidden: cfg.hidden_size as i32,
            eps: cfg.rms_norm_eps as f32,
            prefetch_bytes: self.opts.persistent_prefetch.min(i32::MAX as u32) as i32,
            barriers_only: barriers_only as i32,
        };
        // Bytes the layers stream: every linear, and K/V rows 0..=pos per layer.
        let kv_dim = cfg.num_key_value_heads * hd;
        let mut bytes = 0u64;
        let streamed = if barriers_only {
            begin..begin
        } else {
            begin..end
        };
        for l in &self.weights.layers[streamed] {
            bytes += l.linears().map(GpuLinear::bytes).sum::<u64>();
            bytes += 2 * (self.pos as u64 + 1) * kv_dim as u64 * 2;
        }
        self.streamed.set(self.streamed.get() + bytes);
        let cfg = cudarc::driver::LaunchConfig {
            grid_dim: (p.grid, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: p.smem,
        };
        // SAFETY: the params hold live buffers of this engine (the descriptors were built from
        // them and are kept with them); the grid is what the occupancy query allows resident, and
        // the cooperative launch refuses it otherwise.
        unsafe { self.launch_ex(&p.func, cfg, &params, LaunchKind::Cooperative, 1) }.ctx(&format!(
            "persistent decode layers {begin}..{end} (grid {})",
            p.grid
        ))
    }

    /// What the grid barriers of one whole-model launch cost alone: `launches` launches of the
    /// persistent kernel with every phase's work skipped, timed with events. Returns (us per
    /// launch, barriers per launch). Plans the persistent layers if needed; the step itself is
    /// left as it was.
    pub fn time_persistent_barriers(&mut self, launches: usize) -> Result<(f64, usize)> {
        if self.persistent.is_none() {
            self.persistent = Some(self.build_persistent()?);
        }
        let p = self.persistent.as_ref().expect("planned above");
        let layers = self.weights.layers.len();
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        self.launch_persistent_as(p, 0, layers, false, true)?; // warm-up
        let a = self.stream.record_event(flags).ctx("start event")?;
        for _ in 0..launches.max(1) {
            self.launch_persistent_as(p, 0, layers, false, true)?;
        }
        let b = self.stream.record_event(flags).ctx("stop event")?;
        self.stream.synchronize().ctx("persistent barriers")?;
        let ms = a.elapsed_ms(&b).ctx("event time")? as f64;
        Ok((1e3 * ms / launches.max(1) as f64, 5 * layers - 1))
    }

    /// The trace-only buffers (see `launch_persistent`): the post-attention norm's x and resid
    /// after the o residual add.
    pub(super) fn persistent_trace_bufs(p: &Persistent) -> (&CudaSlice<f16>, &CudaSlice<f32>) {
        (&p.trace_ffn_norm, &p.trace_resid_attn)
    }
}

/// How `GpuEngine::launch_ex` launches: plainly, with programmatic stream serialization (PDL), or
/// cooperatively (every block resident at once, or the launch fails).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchKind {
    Plain,
    Pdl,
    Cooperative,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Every (part, tile, slice) of a plan runs exactly once, tickets and columns stay inside the
    /// phase, and the slices cover K exactly (the kernel's index math, emulated).
    fn check_cover(parts: &[PartShape], grid: usize) -> PhasePlan {
        let plan = plan_phase(parts, grid).unwrap();
        let mut seen = HashSet::new();
        for item in 0..plan.items {
            let (pi, tile, slice) = layers_item_emulated(&plan, item);
            assert!(seen.insert((pi, tile, slice)), "item {item} repeats");
            let pp = &plan.parts[pi];
            assert!(tile < pp.tiles && slice < plan.split.split);
            assert!(pp.tile0 + tile < plan.tickets);
            assert!(pp.col0 + (tile * V6_TILE_N).min(parts[pi].n) <= plan.width);
        }
        let want: usize = plan.parts.iter().map(|p| p.tiles).sum::<usize>() * plan.split.split;
        assert_eq!(seen.len(), want);
        // Slices: whole chunks, within the x buffer, the last one non-empty, together all of K.
        let (k, s) = (plan.k, plan.split);
        assert_eq!(s.k_slice % (8 * V6_CHUNK_WORDS), 0);
        assert!(s.k_slice <= V6_XS_ROWS);
        assert!((s.split - 1) * s.k_slice < k && s.split * s.k_slice >= k);
        plan
    }

    #[test]
    fn vicuna_phases_cover_every_item_once_and_balance_the_grid() {
        // 7B (hidden 4096, inter 11008) and 13B (5120, 13824) at grid 264 (H100: 2 x 132).
        for (h, inter) in [(4096usize, 11008usize), (5120, 13824)] {
            let grid = 264;
            let qkv = check_cover(
                &[PartShape {
                    k: h,
                    n: 3 * h,
                    col: 0,
                }],
                grid,
            );
            // act-order: q, k, v as three parts.
            let sep = check_cover(
                &[
                    PartShape { k: h, n: h, col: 0 },
                    PartShape { k: h, n: h, col: h },
                    PartShape {
                        k: h,
                        n: h,
                        col: 2 * h,
                    },
                ],
                grid,
            );
            assert_eq!(qkv.items, sep.items);
            let o = check_cover(&[PartShape { k: h, n: h, col: 0 }], grid);
            let gu = check_cover(
                &[
                    PartShape {
                        k: h,
                        n: inter,
                        col: 0,
                    },
                    PartShape {
                        k: h,
                        n: inter,
                        col: inter,
                    },
                ],
                grid,
            );
            let down = check_cover(
                &[PartShape {
                    k: inter,
                    n: h,
                    col: 0,
                }],
                grid,
            );
            for p in [&qkv, &o, &gu, &down] {
                // No block runs more than 2 items more than the average, and the grid is used.
                let avg = p.items as f64 / grid as f64;
                assert!((p.items.div_ceil(grid) as f64) < avg + 2.0, "{p:?}");
                assert!(p.items >= grid / 2, "{p:?} leaves most of the grid idle");
            }
            // The design table of layers.cu (7B): q|k|v 96 x 5, o 32 x 8, gate|up 172 x 3, down 32 x 8.
            if h == 4096 {
                assert_eq!((qkv.tickets, qkv.split.split), (96, 5));
                assert_eq!((o.tickets, o.split.split), (32, 8));
                assert_eq!((gu.tickets, gu.split.split), (172, 3));
                assert_eq!((down.tickets, down.split.split), (32, 8));
            }
        }
    }

    #[test]
    fn small_and_odd_phases_plan_and_bad_parts_are_refused() {
        // Tiny models: k 64, n 8 .. 200, a grid of 2 blocks (one SM) and of 264.
        for grid in [1usize, 2, 264] {
            for (k, n) in [
                (64usize, 8usize),
                (64, 200),
                (96, 136),
                (4104, 16),
                (11008, 4096),
            ] {
                check_cover(&[PartShape { k, n, col: 0 }], grid);
            }
        }
        assert!(plan_phase(&[], 264).is_err());
        let p = PartShape {
            k: 64,
            n: 8,
            col: 0,
        };
        assert!(plan_phase(&[p; 4], 264).unwrap_err().contains("1 to 3"));
        let q = PartShape {
            k: 128,
            n: 8,
            col: 8,
        };
        assert!(plan_phase(&[p, q], 264)
            .unwrap_err()
            .contains("different inputs"));
        let bad = PartShape {
            k: 64,
            n: 12,
            col: 0,
        };
        assert!(plan_phase(&[bad], 264)
            .unwrap_err()
            .contains("multiple of 8"));
    }

    #[test]
    fn attention_items_fit_the_grid_and_the_engines_partials() {
        // (max_ctx, attn_chunk, heads, grid) -> chunk; splits never above the engine's.
        for (ctx, chunk, heads, grid, want) in [
            (2100usize, 256usize, 32usize, 264usize, 263usize),
            (2100, 256, 40, 264, 350),
            (2100, 256, 32, 132, 525),
            (64, 4, 4, 264, 4),
            (20, 16, 4, 2, 20),
        ] {
            let c = persistent_attn_chunk(ctx, chunk, heads, grid);
            assert_eq!(c, want, "{ctx} {chunk} {heads} {grid}");
            assert!(ctx.div_ceil(c) <= ctx.div_ceil(chunk));
            assert!(heads * ctx.div_ceil(c) <= grid.max(heads), "{c}");
        }
    }

    #[test]
    fn the_split_minimises_items_per_block_and_respects_the_x_buffer() {
        // One tile, K 16384: at least 4 slices (4096-row buffer), at most MAX_SPLIT.
        let s = phase_split(16384, 1, 264);
        assert!(s.split >= 4 && s.split <= MAX_SPLIT && s.k_slice <= V6_XS_ROWS);
        // Many tiles on a small grid: no split (every extra slice only adds items).
        assert_eq!(phase_split(4096, 1000, 8).split, 1);
    }

    #[test]
    fn tied_splits_keep_the_smallest() {
        // K 512, 200 tiles on 132 blocks: whole K (200 items, 2 per block, 2 x 1.05) costs what
        // 4 slices of 128 rows do (800 items, 7 per block, 7 x 0.30); the fewer items win.
        assert_eq!(
            phase_split(512, 200, 132),
            PhaseSplit {
                split: 1,
                k_slice: 512
            }
        );
    }

    #[test]
    fn the_layers_dynamic_smem_fits_beside_the_static_part_in_48_kb() {
        // q [hd] + scores [chunk] + V partials (256 / (hd / 8) groups x hd = 2048), f32.
        assert_eq!(layers_dynamic_smem(128, 263), Ok((128 + 263 + 2048) * 4));
        // The largest chunk at hd 128: (128 + 6720 + 2048) x 4 + 13568 = 48 KB exactly.
        let limit = 48 * 1024 - STATIC_SMEM_BYTES;
        assert_eq!(layers_dynamic_smem(128, 6720), Ok(limit as u32));
        let e = layers_dynamic_smem(128, 6721).unwrap_err();
        assert!(e.contains("6721 positions") && e.contains("48 KB"), "{e}");
        // hd 16 (the tiny check): the same 2048 partials, so 112 more positions fit.
        assert!(layers_dynamic_smem(16, 6832).is_ok());
        assert!(layers_dynamic_smem(16, 6833).is_err());
    }
}
