//! Prefill of the GPU engine: all prompt tokens of a chunk (up to `EngineOptions::prefill_chunk`
//! rows, 512 by default; longer prompts in chunks) through each layer at once, instead of the
//! decode step once per token. A child module of `gpu_engine` (it drives the engine's buffers).
//!
//! Per chunk of m rows at positions pos0 .. pos0+m-1 (kernels/llama/prefill.cu + the row-aware
//! decode ops of ops.cu):
//!   embed(m) -> L x [add_rmsnorm(m rows) -> qkv GEMM -> rope_kv(m rows, appends k, v at pos0..)
//!   -> causal attention(m queries over pos0 + m keys) -> o GEMM -> add_rmsnorm -> gate_up GEMM
//!   -> silu_mul(m rows) -> down GEMM] -> final add_rmsnorm -> lm_head (last row, or every row)
//! then state.pos = pos0 + m - 1 and the decode argmax picks the next token and advances the
//! position, so the decode step (eager or CUDA graph) continues exactly as after a token-by-token
//! prefill.
//!
//! Linear layers (`GpuEngine::prefill_linear`, linears.rs), per layout:
//! - int4, group sizes 32/64/128/per-channel, equal-size groups (every GPTQ act-order checkpoint
//!   after the upload's reorder: rows group-sorted + an activation permutation that the GEMM's
//!   A-tile gather reads): the GEMM family in tiles of <= 64 rows (its batch range 2..64):
//!   * gemm_v2_mma (tensor cores, sm_80+): its weights must be in fragment order, while the engine
//!     holds ONE canonical copy (what every decode GEMV reads). Each linear is repacked into a
//!     scratch buffer once per chunk (lab_llama_repack_v2, 1 B per weight of traffic: ~2 ms per
//!     7B chunk against ~25 ms of GEMM at 512 rows) rather than keeping a second 3.5 GB (7B) copy;
//!   * gemm_v1_simt (SIMT, canonical layout, sm_75+) where v2 cannot run (sm_75) or when asked.
//! - int4 that the GEMM family refuses (uneven act-order groups that kept a g_idx, group sizes
//!   outside 32/64/128/-1), and the 1-row tail a chunk may leave: per-row GEMV fallback, the decode
//!   path's own kernel once per row (correct, m times the weight traffic).
//! - fp16: cuBLAS GemmEx (m columns at once, ldc = the fused output width); without cuBLAS the lab
//!   fp16 GEMV once per row.
//! - int4 chunks of `dequant_min_rows` rows or more under `--prefill-int4 auto` (256; 128 for
//!   act-order), and every chunk of 2+ rows under `--prefill-int4 dequant` (1.66x gemm_v2 at 7B on
//!   the H100, run 10), every layout: the linear dequantized into an fp16 [k, n] scratch
//!   (lab_dequant_f16_v1, act-order rows written back to their checkpoint rows so x is used as it
//!   is), then one cuBLAS GemmEx over all m rows (ldc = the output width, so unfused slots need no
//!   copy). The scratch shares its bytes with the GEMM path's (sizes.rs). A 1-row chunk always
//!   takes the decode GEMV.
//!
//! The lm_head is fp16: the lab GEMV for the last row (as decode), once per row when every row's
//! logits are wanted (perplexity: 262 MB read per row for 7B; fine for checks, not a fast path).
//!
//! Files of this module (each readable on its own):
//! - mod.rs (this file): the options (`PrefillMode`, `PrefillInt4`, `PrefillLogits`), the prompt
//!   chunking, and the engine's public prefill methods (`GpuEngine::prefill`: the chunk loop and
//!   the final argmax; `time_prefill`, `prefill_chunk`, `prefill_int4_paths`).
//! - forward.rs: one chunk through every layer (the kernel sequence above).
//! - linears.rs: which kernel computes a linear over m rows (int4 GEMM v2 / v1, per-row GEMV,
//!   cuBLAS) and the launches: row tiles, the v2 repack, split-K workspace, unfused-slot copies.
//! - sizes.rs: `PrefillSizes`, the workspace arithmetic (pure, counted in the VRAM ledger),
//!   `PrefillPlan`, the GEMM path per linear that sizes the scratch (pure: `lab plan` calls it
//!   too), and the attention kernel's shared memory.
//! - workspace.rs: `Prefill`, what the engine holds: the buffers of `PrefillSizes` and the
//!   kernels, planned from the loaded weights at engine construction.
//! - emulate.rs (tests only): CPU mirrors of prefill.cu's index math; tests.rs: CPU tests.

use super::*;
use std::ops::Range;

mod forward;
mod linears;
mod sizes;
mod workspace;

#[cfg(test)]
pub(crate) mod emulate;
#[cfg(test)]
mod tests;

pub use linears::{
    dequant_min_rows, describe_paths, int4_path, paths_by_rows, row_tiles, Int4Path,
    DEQUANT_MIN_ROWS, DEQUANT_MIN_ROWS_ACT_ORDER, GEMM_ROWS,
};
pub use sizes::{
    attn_smem_bytes, check_attn_smem, checkpoint_int4_layer, dequant_slices, dequant_slices_within,
    DequantSlices, PrefillPlan, PrefillSizes, ScratchPart, DEQUANT_SLICE_ELEMS,
};
use workspace::int4_linears;
pub(super) use workspace::plan_for;
pub(super) use workspace::Prefill;

/// Default rows per prefill chunk: 512 rows of 7B activations are ~63 MB; 512 rows per GEMM
/// launch group amortise the weight read (int4 7B: 3.5 GB per chunk, ~1.3 ms at 2.7 TB/s).
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

/// How `generate` fills the KV cache with the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrefillMode {
    /// m rows per layer through the GEMM family (this module).
    Gemm,
    /// The decode step once per prompt token (the reference the GEMM prefill is compared with).
    TokenByToken,
}

/// Which kernel computes the int4 linears of a prefill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PrefillInt4 {
    /// Per linear and chunk: dequant + cuBLAS from `dequant_min_rows` rows (256, act-order 128),
    /// below that gemm_v2_mma on sm_80+, else gemm_v1_simt on sm_75+, else per-row GEMV. Without
    /// libcublas, or without the free memory for the dequant's W and the cuBLAS handle
    /// (`prefill_choice_for_memory`), the engine runs it as the GEMM family (`gemm_family_on`:
    /// `GemmV2` on sm_80+, `GemmV1` on sm_75), and its reports say so.
    #[default]
    Auto,
    /// The GEMM family for every chunk: gemm_v2_mma, else gemm_v1_simt, else per row.
    GemmV2,
    GemmV1,
    /// The decode GEMV once per row (comparison / fallback).
    RowGemv,
    /// Each linear dequantized to an fp16 [k, n] scratch (lab_dequant_f16_v1; act-order rows
    /// written back to their checkpoint rows), then one cuBLAS GEMM over all m rows, for every
    /// chunk of 2 rows or more: 1.66x / 1.59x gemm_v2 at 512-row chunks on the H100 (run 10,
    /// notes/kernels.md "Next" 4).
    Dequant,
}

impl PrefillInt4 {
    /// The `--prefill-int4` value (`lab decode`, `lab plan`): auto, v2, v1, rows or dequant.
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => PrefillInt4::Auto,
            "v2" | "gemm_v2_mma" => PrefillInt4::GemmV2,
            "v1" | "gemm_v1_simt" => PrefillInt4::GemmV1,
            "rows" => PrefillInt4::RowGemv,
            "dequant" => PrefillInt4::Dequant,
            o => return Err(format!("'{o}': expected auto, v2, v1, rows or dequant")),
        })
    }

    /// The GEMM family's choice on an sm_`sm` device, as the engine names it when `auto` cannot
    /// dequantize: `GemmV2` where gemm_v2_mma runs, else `GemmV1` (sm_75), so that no report
    /// says v2 where v1 ran.
    pub fn gemm_family_on(sm: u32) -> Self {
        match crate::kernels::registry::by_name("gemm_v2_mma") {
            Some(v) if sm >= v.min_sm => PrefillInt4::GemmV2,
            _ => PrefillInt4::GemmV1,
        }
    }

    /// The flag value `parse` reads back.
    pub fn flag(self) -> &'static str {
        match self {
            PrefillInt4::Auto => "auto",
            PrefillInt4::GemmV2 => "v2",
            PrefillInt4::GemmV1 => "v1",
            PrefillInt4::RowGemv => "rows",
            PrefillInt4::Dequant => "dequant",
        }
    }
}

/// Free device memory auto's dequant path must leave besides its own bytes (the prefill
/// workspace and the cuBLAS handle): graph captures, module loads and the allocator's rounding.
pub const DEQUANT_HEADROOM: u64 = 256 << 20;

/// The `--prefill-int4` an engine runs with, given `free` device bytes when it plans the prefill:
/// `auto` whose plan dequantizes (`auto_bytes` = its prefill workspace + the cuBLAS handle it
/// would create) keeps the GEMM family's smaller plan (`v2`, `v1` on sm_75) where those bytes and
/// the headroom do not fit: a card that held the model before auto learned the dequant still
/// holds it. Any explicit choice stands (and fails as asked where memory is short).
pub fn prefill_choice_for_memory(
    choice: PrefillInt4,
    auto_bytes: u64,
    free: u64,
    sm: u32,
) -> PrefillInt4 {
    match choice {
        PrefillInt4::Auto if auto_bytes + DEQUANT_HEADROOM > free => {
            PrefillInt4::gemm_family_on(sm)
        }
        c => c,
    }
}

/// Which logits a prefill returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefillLogits {
    /// None copied back: the last row's logits stay in the engine (argmax already chose the next
    /// token on the device; `GpuEngine::logits` reads them).
    None,
    /// The last row's [vocab].
    Last,
    /// Every row's [vocab] (perplexity, checks).
    All,
}

/// Chunks of a prompt of `len` tokens starting at position `start`: (pos0, token range).
pub fn chunks(start: usize, len: usize, chunk: usize) -> Vec<(usize, Range<usize>)> {
    let chunk = chunk.max(1);
    (0..len)
        .step_by(chunk)
        .map(|a| (start + a, a..(a + chunk).min(len)))
        .collect()
}

impl GpuEngine {
    fn pf(&self) -> Result<&Prefill> {
        self.prefill.as_ref().ok_or_else(|| {
            LabError::invalid(
                "prefill",
                "the engine was built with prefill_chunk 0 (no prefill workspace): use the token-by-token prefill",
            )
        })
    }

    /// Host -> device copy of a small host slice into a device address of this engine, on the
    /// engine's stream. From pageable memory the driver stages `src` before returning, so the
    /// slice may be dropped right after.
    fn htod_raw<T: DeviceRepr>(&self, dst: u64, src: &[T], what: &str) -> Result<()> {
        // SAFETY: every caller passes an address inside a live buffer of this engine with room
        // for src.len() elements of T (tokens [chunk] checked against the chunk, one state word).
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .ctx(what)
    }

    /// Rows per prefill chunk (0: no GEMM prefill).
    pub fn prefill_chunk(&self) -> usize {
        self.prefill.as_ref().map_or(0, |p| p.bufs.sizes.chunk)
    }

    /// The engine's `--prefill-int4` choice (Auto where it has no GEMM prefill).
    pub fn prefill_int4(&self) -> PrefillInt4 {
        self.prefill
            .as_ref()
            .map_or(PrefillInt4::Auto, |p| p.choice)
    }

    /// The int4 path of every distinct int4 linear shape, for reports: "K x N: path".
    pub fn prefill_int4_paths(&self) -> Vec<String> {
        let Some(p) = &self.prefill else {
            return Vec::new();
        };
        let mut out: Vec<String> = Vec::new();
        for l in &self.weights.layers {
            for (lin, _) in int4_linears(l) {
                if let GpuLinear::Int4(q) = lin {
                    let runs = paths_by_rows(p.choice, &layer_shape(q), p.sm, p.bufs.sizes.chunk);
                    let s = format!("{} x {}: {}", q.k, q.n, describe_paths(&runs));
                    if !out.contains(&s) {
                        out.push(s);
                    }
                }
            }
        }
        out
    }

    /// Milliseconds of one GEMM prefill of `tokens` from position 0 (CUDA events around the
    /// whole prefill: uploads, every chunk's launches, the final argmax; host launch gaps count).
    pub fn time_prefill(&mut self, tokens: &[u32]) -> Result<f64> {
        self.pf()?;
        self.reset()?;
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let a = self.stream.record_event(flags).ctx("start event")?;
        self.prefill(tokens, PrefillLogits::None)?;
        let b = self.stream.record_event(flags).ctx("stop event")?;
        self.stream.synchronize().ctx("timed prefill")?;
        let ms = a.elapsed_ms(&b).ctx("event time")? as f64;
        let f = free_now(&self.ctx)?;
        self.vram.observe(f);
        Ok(ms)
    }

    /// Prefill `tokens` at the current position (continuing the cache), chunk by chunk. After it,
    /// the position is `position() + tokens.len()` and the device state holds the greedy next
    /// token, exactly as after feeding the tokens one by one: `step_greedy` (eager or graph)
    /// continues. Returns the logits `want` asks for (row-major [rows][vocab]).
    pub fn prefill(&mut self, tokens: &[u32], want: PrefillLogits) -> Result<Vec<Vec<f32>>> {
        let chunk = self.pf()?.bufs.sizes.chunk;
        if tokens.is_empty() {
            return Err(LabError::invalid("prompt", "needs at least one token"));
        }
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(LabError::invalid(
                "token id",
                format!("{t} is out of range for vocab_size {}", self.cfg.vocab_size),
            ));
        }
        let start = self.pos;
        if start + tokens.len() > self.opts.max_ctx {
            return Err(LabError::invalid(
                "prompt length",
                format!(
                    "{start} cached + {} prompt tokens exceed the KV cache ({})",
                    tokens.len(),
                    self.opts.max_ctx
                ),
            ));
        }
        let parts = chunks(start, tokens.len(), chunk);
        let n_parts = parts.len();
        let mut out = Vec::new();
        for (ci, (pos0, range)) in parts.into_iter().enumerate() {
            let last = ci + 1 == n_parts;
            let rows = match want {
                PrefillLogits::All => 0..range.len(),
                _ if last => range.len() - 1..range.len(),
                _ => 0..0,
            };
            self.prefill_chunk_rows(
                &tokens[range],
                pos0,
                rows,
                want == PrefillLogits::All,
                &mut out,
            )?;
        }
        // The decode step's token choice at position end - 1: next token into the state,
        // position = end.
        let end = start + tokens.len();
        self.htod_raw(
            self.r(&self.b.state) + 4 * abi::LAB_LLAMA_STATE_POS as u64,
            &[(end - 1) as i32],
            "writing the prefill's last position",
        )?;
        self.choose_token("prefill: next token")?;
        self.pos = end;
        if want == PrefillLogits::Last {
            out.push(self.logits()?);
        }
        Ok(out)
    }
}
