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
//! Linear layers (`PrefillEngine::prefill_linear`), per layout:
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
//!
//! The lm_head is fp16: the lab GEMV for the last row (as decode), once per row when every row's
//! logits are wanted (perplexity: 262 MB read per row for 7B; fine for checks, not a fast path).

use super::*;
use crate::kernels::gemm;
use crate::kernels::gemm_layout;
use crate::model::gpu_weights::{GpuLayer, Slot};
use std::ops::Range;

/// Default rows per prefill chunk: 512 rows of 7B activations are ~63 MB; 512 rows per GEMM
/// launch group amortise the weight read (int4 7B: 3.5 GB per chunk, ~1.3 ms at 2.7 TB/s).
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

/// Rows per GEMM launch: the GEMM family's largest batch.
pub const GEMM_ROWS: usize = gemm::MAX_M;

/// How `generate` fills the KV cache with the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrefillMode {
    /// m rows per layer through the GEMM family (this module).
    Gemm,
    /// The decode step once per prompt token (the reference the GEMM prefill is compared with).
    TokenByToken,
}

/// Which kernel computes the int4 linears of a prefill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrefillInt4 {
    /// gemm_v2_mma on sm_80+, else gemm_v1_simt on sm_75+, else per-row GEMV.
    Auto,
    GemmV2,
    GemmV1,
    /// The decode GEMV once per row (comparison / fallback).
    RowGemv,
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

/// What computes one int4 linear in a prefill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int4Path {
    GemmV2,
    GemmV1,
    /// Per-row GEMV; the reason is for logs and reports.
    Rows(&'static str),
}

fn gemm_variant(name: &str) -> &'static Variant {
    gemm::VARIANTS
        .iter()
        .find(|v| v.name == name)
        .expect("gemm variants are static")
}

/// The int4 path of a linear of shape `s` on an sm_`sm` device under `choice`: the GEMM family
/// when it serves the layout (`gemm::check_layer`: group sizes, equal-size groups), else per row.
pub fn int4_path(choice: PrefillInt4, s: &LayerShape, sm: u32) -> Int4Path {
    let serves = |name: &str| {
        let v = gemm_variant(name);
        sm >= v.min_sm && gemm::check_layer(v, s).is_ok()
    };
    let v2 = serves("gemm_v2_mma");
    let v1 = serves("gemm_v1_simt");
    let why = if s.g_idx {
        "act-order groups of unequal size (g_idx kept): the GEMM family needs group_size rows per group"
    } else {
        "group size or device outside the GEMM family's range"
    };
    match choice {
        PrefillInt4::RowGemv => Int4Path::Rows("asked for (--prefill-int4 rows)"),
        PrefillInt4::Auto | PrefillInt4::GemmV2 if v2 => Int4Path::GemmV2,
        PrefillInt4::Auto | PrefillInt4::GemmV1 if v1 => Int4Path::GemmV1,
        PrefillInt4::GemmV2 if v1 => Int4Path::GemmV1,
        _ => Int4Path::Rows(why),
    }
}

/// Chunks of a prompt of `len` tokens starting at position `start`: (pos0, token range).
pub fn chunks(start: usize, len: usize, chunk: usize) -> Vec<(usize, Range<usize>)> {
    let chunk = chunk.max(1);
    (0..len)
        .step_by(chunk)
        .map(|a| (start + a, a..(a + chunk).min(len)))
        .collect()
}

/// Row tiles of an m-row GEMM: <= GEMM_ROWS rows each, and never a 1-row tile after a full one
/// (the family's batch range starts at 2): 65 rows -> 63 + 2. A lone 1-row chunk stays 1 row
/// (the per-row GEMV serves it).
pub fn row_tiles(m: usize, rows: usize) -> Vec<Range<usize>> {
    let rows = rows.max(2);
    let mut t: Vec<Range<usize>> = (0..m).step_by(rows).map(|a| a..(a + rows).min(m)).collect();
    let n = t.len();
    if n >= 2 && t[n - 1].len() == 1 {
        t[n - 2].end -= 1;
        t[n - 1].start -= 1;
    }
    t
}

/// Bytes of the prefill workspace for `chunk` rows (exact: the engine allocates these sizes and
/// counts this sum in the VRAM ledger).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefillSizes {
    pub chunk: usize,
    /// i32 [chunk] tokens.
    pub tokens: usize,
    /// f32 [chunk, hidden] residual rows.
    pub resid: usize,
    /// fp16 [chunk, hidden]: the normed input, then the attention output (the normed input is
    /// dead once the qkv GEMM has read it; the next norm writes it after o has read the attention).
    pub x16: usize,
    /// fp16 [chunk, heads*hd + 2 kv_dim].
    pub qkv: usize,
    /// fp16 [chunk, hidden]: o's output, then down's (the norm consumes o before down runs).
    pub delta: usize,
    /// fp16 [chunk, 2 inter].
    pub gate_up: usize,
    /// fp16 [chunk, inter].
    pub act: usize,
    /// f32 [GEMM_ROWS, widest GEMM N]: split-K partials (0 without a GEMM path).
    pub gemm_ws: usize,
    /// u32 fragment-order words of the largest v2 linear (0 without a v2 path).
    pub repack: usize,
    /// fp16 [GEMM_ROWS, widest unfused slot N]: a GEMM writes y with row stride n, so an unfused
    /// q/k/v or gate/up part lands here and is copied (2D) into its columns (0 when all fused).
    pub slot_y: usize,
}

impl PrefillSizes {
    /// Element counts for `cfg` at `chunk` rows; `gemm_n` = widest N of a GEMM-path linear (0:
    /// none), `repack_words` = largest prepared size of a v2 linear, `slot_n` = widest unfused
    /// GEMM slot.
    pub fn new(
        cfg: &ModelConfig,
        chunk: usize,
        gemm_n: usize,
        repack_words: usize,
        slot_n: usize,
    ) -> Self {
        let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
        let qkv_w = h + 2 * cfg.num_key_value_heads * cfg.head_dim();
        PrefillSizes {
            chunk,
            tokens: chunk,
            resid: chunk * h,
            x16: chunk * h,
            qkv: chunk * qkv_w,
            delta: chunk * h,
            gate_up: chunk * 2 * inter,
            act: chunk * inter,
            gemm_ws: GEMM_ROWS * gemm_n,
            repack: repack_words,
            slot_y: GEMM_ROWS * slot_n,
        }
    }

    pub fn bytes(&self) -> u64 {
        (4 * (self.tokens + self.resid + self.gemm_ws + self.repack)
            + 2 * (self.x16 + self.qkv + self.delta + self.gate_up + self.act + self.slot_y))
            as u64
    }
}

/// Dynamic shared memory of lab_llama_prefill_attn for `hd` (layout in kernels/llama/prefill.cu).
pub fn attn_smem_bytes(hd: usize) -> usize {
    let (qt, kt) = (
        abi::LAB_LLAMA_PREFILL_ATTN_QT as usize,
        abi::LAB_LLAMA_PREFILL_ATTN_KT as usize,
    );
    2 * (qt * hd + kt * (hd + 2) + kt * hd) + 4 * (qt * kt + 3 * qt)
}

pub(super) struct PrefillBufs {
    pub(super) sizes: PrefillSizes,
    tokens: CudaSlice<i32>,
    resid: CudaSlice<f32>,
    x16: CudaSlice<f16>,
    qkv: CudaSlice<f16>,
    delta: CudaSlice<f16>,
    gate_up: CudaSlice<f16>,
    act: CudaSlice<f16>,
    gemm_ws: Option<CudaSlice<f32>>,
    repack: Option<CudaSlice<u32>>,
    slot_y: Option<CudaSlice<f16>>,
}

pub(super) struct PrefillKernels {
    embed: CudaFunction,
    attn: CudaFunction,
    repack: CudaFunction,
    /// GEMM instantiations by symbol (only of the variants some linear uses).
    gemm: HashMap<&'static str, CudaFunction>,
}

/// The engine's prefill state: kernels, buffers, the device's sm and the int4 choice.
pub(super) struct Prefill {
    pub(super) bufs: PrefillBufs,
    k: PrefillKernels,
    sm: u32,
    choice: PrefillInt4,
}

fn int4_linears(l: &GpuLayer) -> impl Iterator<Item = (&GpuLinear, bool)> {
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

impl Prefill {
    /// Plan and allocate the prefill for `weights` on `gpu` (nothing when `chunk` is 0).
    pub(super) fn new(
        gpu: &Gpu,
        stream: &Arc<CudaStream>,
        cfg: &ModelConfig,
        weights: &GpuWeights,
        chunk: usize,
        choice: PrefillInt4,
    ) -> Result<Option<Self>> {
        if chunk == 0 {
            return Ok(None);
        }
        let sm = gpu.sm();
        let smem = attn_smem_bytes(cfg.head_dim());
        if smem > 48 * 1024 {
            return Err(LabError::invalid(
                "model config",
                format!(
                    "head_dim {}: the prefill attention needs {smem} B of shared memory (> 48 KB)",
                    cfg.head_dim()
                ),
            ));
        }
        let (mut gemm_n, mut repack_words, mut slot_n) = (0usize, 0usize, 0usize);
        let (mut v1, mut v2) = (false, false);
        for l in &weights.layers {
            for (lin, unfused) in int4_linears(l) {
                let GpuLinear::Int4(q) = lin else { continue };
                let path = int4_path(choice, &layer_shape(q), sm);
                match path {
                    Int4Path::Rows(_) => continue,
                    Int4Path::GemmV2 => {
                        v2 = true;
                        repack_words = repack_words.max(gemm_layout::prepared_words(q.k, q.n));
                    }
                    Int4Path::GemmV1 => v1 = true,
                }
                gemm_n = gemm_n.max(q.n);
                if unfused {
                    slot_n = slot_n.max(q.n);
                }
            }
        }
        let sizes = PrefillSizes::new(cfg, chunk, gemm_n, repack_words, slot_n);
        let a16 = |n: usize, what: &str| stream.alloc_zeros::<f16>(n).ctx(what);
        let opt16 = |n: usize, what: &str| (n > 0).then(|| a16(n, what)).transpose();
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
            gemm_ws: (sizes.gemm_ws > 0)
                .then(|| {
                    stream
                        .alloc_zeros::<f32>(sizes.gemm_ws)
                        .ctx("prefill GEMM split-K workspace")
                })
                .transpose()?,
            repack: (sizes.repack > 0)
                .then(|| {
                    stream
                        .alloc_zeros::<u32>(sizes.repack)
                        .ctx("prefill gemm_v2 repack scratch")
                })
                .transpose()?,
            slot_y: opt16(sizes.slot_y, "prefill unfused-slot rows")?,
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
                gemm: fns,
            },
            sm,
            choice,
        }))
    }
}

/// Where a linear's m output rows go: `y` + (r * width + col) fp16 values for row r.
#[derive(Clone, Copy)]
struct RowsOut {
    y: u64,
    width: usize,
    col: usize,
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

    /// add_rmsnorm over `rows` rows: resid[r] += delta[r] (delta 0: none), out[r] = norm(resid[r]).
    fn norm_rows(
        &self,
        delta: u64,
        weight: &CudaSlice<f16>,
        out: u64,
        rows: Range<usize>,
        what: &str,
    ) -> Result<()> {
        let pf = self.pf()?;
        let h = self.cfg.hidden_size;
        let off = rows.start * h;
        let p = abi::lab_llama_norm_params {
            resid: self.r(&pf.bufs.resid) + 4 * off as u64,
            delta: if delta == 0 {
                0
            } else {
                delta + 2 * off as u64
            },
            weight: self.r(weight),
            out: out + 2 * off as u64,
            hidden: h as i32,
            eps: self.cfg.rms_norm_eps as f32,
        };
        self.launch(&self.k.norm, (rows.len() as u32, 1), 512, 0, &p, what)
    }

    /// Rows per prefill chunk (0: no GEMM prefill).
    pub fn prefill_chunk(&self) -> usize {
        self.prefill.as_ref().map_or(0, |p| p.bufs.sizes.chunk)
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
                    let s = format!(
                        "{} x {}: {:?}",
                        q.k,
                        q.n,
                        int4_path(p.choice, &layer_shape(q), p.sm)
                    );
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
        // The decode argmax at position end - 1: next token into the state, position = end.
        let end = start + tokens.len();
        self.htod_raw(
            self.r(&self.b.state) + 4 * abi::LAB_LLAMA_STATE_POS as u64,
            &[(end - 1) as i32],
            "writing the prefill's last position",
        )?;
        let gp = abi::lab_llama_argmax_params {
            logits: self.r(&self.b.logits),
            state: self.r(&self.b.state),
            vocab: self.cfg.vocab_size as i32,
            max_ctx: self.opts.max_ctx as i32,
        };
        self.launch(&self.k.argmax, (1, 1), 1024, 0, &gp, "prefill argmax")?;
        self.pos = end;
        if want == PrefillLogits::Last {
            out.push(self.logits()?);
        }
        Ok(out)
    }

    /// One chunk: `toks` at positions pos0.. through every layer; the final norm + lm_head for
    /// `head_rows` (copied back into `out` when `copy`, else left in the logits buffer).
    fn prefill_chunk_rows(
        &self,
        toks: &[u32],
        pos0: usize,
        head_rows: Range<usize>,
        copy: bool,
        out: &mut Vec<Vec<f32>>,
    ) -> Result<()> {
        let pf = self.pf()?;
        let pb = &pf.bufs;
        let cfg = &self.cfg;
        let m = toks.len();
        let (h, hd, heads, kvh) = (
            cfg.hidden_size,
            cfg.head_dim(),
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
        );
        let kv_dim = kvh * hd;
        let qkv_w = h + 2 * kv_dim;
        let (inter, max_ctx) = (cfg.intermediate_size, self.opts.max_ctx);
        let ids: Vec<i32> = toks.iter().map(|&t| t as i32).collect();
        self.htod_raw(self.r(&pb.tokens), &ids, "uploading the prompt chunk")?;
        // rope_kv reads the chunk's first position from the state words (row y at pos + y).
        self.htod_raw(
            self.r(&self.b.state) + 4 * abi::LAB_LLAMA_STATE_POS as u64,
            &[pos0 as i32],
            "writing the chunk's position",
        )?;
        let state = self.r(&self.b.state);
        let e = abi::lab_llama_prefill_embed_params {
            table: self.r(&self.weights.embed),
            tokens: self.r(&pb.tokens),
            history: self.r(&self.b.history),
            resid: self.r(&pb.resid),
            state,
            m: m as i32,
            pos0: pos0 as i32,
            hidden: h as i32,
            vocab: cfg.vocab_size as i32,
            max_ctx: max_ctx as i32,
            _pad: 0,
        };
        self.launch(
            &pf.k.embed,
            (h.div_ceil(256) as u32, m as u32),
            256,
            0,
            &e,
            "prefill embedding",
        )?;
        let (x16, qkv, delta) = (self.r(&pb.x16), self.r(&pb.qkv), self.r(&pb.delta));
        let (gate_up, act) = (self.r(&pb.gate_up), self.r(&pb.act));
        let layer_stride = 2 * max_ctx * kv_dim;
        for (li, l) in self.weights.layers.iter().enumerate() {
            let d = if li == 0 { 0 } else { delta };
            self.norm_rows(
                d,
                &l.attn_norm,
                x16,
                0..m,
                &format!("layer {li} prefill input_layernorm"),
            )?;
            for s in &l.qkv {
                self.prefill_linear(
                    &s.lin,
                    x16,
                    m,
                    RowsOut {
                        y: qkv,
                        width: qkv_w,
                        col: s.col,
                    },
                )?;
            }
            let k_cache = self.r(&self.kv) + 2 * (li * layer_stride) as u64;
            let v_cache = k_cache + 2 * (max_ctx * kv_dim) as u64;
            let rp = abi::lab_llama_rope_params {
                qkv,
                k_cache,
                v_cache,
                inv_freq: self.r(&self.b.inv_freq),
                state,
                heads: heads as i32,
                kv_heads: kvh as i32,
                head_dim: hd as i32,
                max_ctx: max_ctx as i32,
            };
            self.launch(
                &self.k.rope,
                ((heads + kvh) as u32, m as u32),
                (hd / 2).max(32) as u32,
                0,
                &rp,
                &format!("layer {li} prefill rope_kv"),
            )?;
            let ap = abi::lab_llama_prefill_attn_params {
                qkv,
                k_cache,
                v_cache,
                out: x16,
                m: m as i32,
                pos0: pos0 as i32,
                heads: heads as i32,
                kv_heads: kvh as i32,
                head_dim: hd as i32,
                max_ctx: max_ctx as i32,
                scale: (1.0 / (hd as f64).sqrt()) as f32,
                _pad: 0,
            };
            let qt = abi::LAB_LLAMA_PREFILL_ATTN_QT as usize;
            self.launch(
                &pf.k.attn,
                (heads as u32, m.div_ceil(qt) as u32),
                abi::LAB_LLAMA_PREFILL_ATTN_THREADS,
                attn_smem_bytes(hd) as u32,
                &ap,
                &format!("layer {li} prefill attention"),
            )?;
            self.prefill_linear(
                &l.o,
                x16,
                m,
                RowsOut {
                    y: delta,
                    width: h,
                    col: 0,
                },
            )?;
            self.norm_rows(
                delta,
                &l.ffn_norm,
                x16,
                0..m,
                &format!("layer {li} prefill post_attention_layernorm"),
            )?;
            for s in &l.gate_up {
                self.prefill_linear(
                    &s.lin,
                    x16,
                    m,
                    RowsOut {
                        y: gate_up,
                        width: 2 * inter,
                        col: s.col,
                    },
                )?;
            }
            let sp = abi::lab_llama_silu_params {
                gate_up,
                out: act,
                inter: inter as i32,
                _pad: 0,
            };
            self.launch(
                &self.k.silu,
                (inter.div_ceil(256) as u32, m as u32),
                256,
                0,
                &sp,
                &format!("layer {li} prefill silu_mul"),
            )?;
            self.prefill_linear(
                &l.down,
                act,
                m,
                RowsOut {
                    y: delta,
                    width: h,
                    col: 0,
                },
            )?;
        }
        if head_rows.is_empty() {
            return Ok(());
        }
        self.norm_rows(
            delta,
            &self.weights.final_norm,
            x16,
            head_rows.clone(),
            "prefill final norm",
        )?;
        for r in head_rows {
            self.gemv_f16(
                self.r(&self.weights.lm_head),
                x16 + 2 * (r * h) as u64,
                0,
                self.r(&self.b.logits),
                cfg.vocab_size,
                h,
                "prefill lm_head",
            )?;
            if copy {
                out.push(self.logits()?);
            }
        }
        Ok(())
    }

    /// y rows = x rows . W over m rows (x fp16 [m, k] row-major at `x`), through the path the
    /// module comment lists for this layout.
    fn prefill_linear(&self, lin: &GpuLinear, x: u64, m: usize, out: RowsOut) -> Result<()> {
        let (k, n) = lin.kn();
        let row_x = |r: usize| x + 2 * (r * k) as u64;
        let row_y = |r: usize| out.y + 2 * (r * out.width + out.col) as u64;
        match lin {
            GpuLinear::F16(l) => match &self.blas {
                Some(b) => self.cublas_gemm(b, l, x, m, row_y(0), out.width),
                // No cuBLAS: the lab fp16 GEMV once per row (m times the weight traffic).
                None => (0..m).try_for_each(|r| {
                    self.gemv_f16(
                        self.r(&l.w),
                        row_x(r),
                        row_y(r),
                        0,
                        n,
                        k,
                        "prefill fp16 linear (lab GEMV per row)",
                    )
                }),
            },
            GpuLinear::Int4(q) => {
                let pf = self.pf()?;
                let path = int4_path(pf.choice, &layer_shape(q), pf.sm);
                let v = match path {
                    Int4Path::Rows(_) => {
                        return (0..m).try_for_each(|r| self.linear(lin, row_x(r), row_y(r)))
                    }
                    Int4Path::GemmV2 => gemm_variant("gemm_v2_mma"),
                    Int4Path::GemmV1 => gemm_variant("gemm_v1_simt"),
                };
                let missing = |what: &str| {
                    LabError::invalid(
                        "prefill workspace",
                        format!("{what} was not allocated for a {k} x {n} GEMM linear"),
                    )
                };
                let qweight = if path == Int4Path::GemmV2 {
                    let dst = pf
                        .bufs
                        .repack
                        .as_ref()
                        .ok_or_else(|| missing("the repack scratch"))?;
                    self.repack_v2(q, self.r(dst))?;
                    self.r(dst)
                } else {
                    self.r(&q.qweight)
                };
                let direct = out.col == 0 && out.width == n;
                for t in row_tiles(m, GEMM_ROWS) {
                    if t.len() == 1 {
                        // Only a 1-row chunk: the GEMM family starts at 2 rows.
                        self.linear(lin, row_x(t.start), row_y(t.start))?;
                    } else if direct {
                        self.gemm_int4(v, q, qweight, row_x(t.start), row_y(t.start), t.len())?;
                    } else {
                        let sy = pf
                            .bufs
                            .slot_y
                            .as_ref()
                            .ok_or_else(|| missing("the slot scratch"))?;
                        self.gemm_int4(v, q, qweight, row_x(t.start), self.r(sy), t.len())?;
                        self.copy_rows(self.r(sy), n, row_y(t.start), out.width, n, t.len())?;
                    }
                }
                Ok(())
            }
        }
    }

    /// One GEMM-family launch (m = 2..64 rows) on the engine's stream: the family's own split-K
    /// heuristic, validation and plan (kernels::gemm), with `qweight` in the variant's layout.
    fn gemm_int4(
        &self,
        v: &'static Variant,
        l: &Int4Dev,
        qweight: u64,
        x: u64,
        y: u64,
        m: usize,
    ) -> Result<()> {
        let pf = self.pf()?;
        let (split, slice) = gemm::auto_split(v, m as u32, l.n as u32, l.k as u32, self.sms as u32);
        let ws = pf.bufs.gemm_ws.as_ref().map_or(0, |w| self.r(w));
        let mut p = self.int4_params(l, x, y, ws, split as usize, slice as usize);
        p.qweight = qweight;
        p.m = m as i32;
        gemm::validate(v, &p, pf.sm)?;
        let what = format!("prefill {} m {m} K {} N {}", v.name, l.k, l.n);
        if split > 1 {
            // SAFETY: ws holds GEMM_ROWS * (widest GEMM N) f32 >= m * n (PrefillSizes::gemm_ws).
            unsafe {
                cudarc::driver::result::memset_d8_async(
                    ws,
                    0,
                    gemm::workspace_bytes(&p),
                    self.stream.cu_stream(),
                )
            }
            .ctx(&what)?;
        }
        for step in gemm::plan(v, &p) {
            let f = pf.k.gemm.get(step.symbol).ok_or_else(|| {
                LabError::invalid(
                    "prefill",
                    format!("{} was not loaded at engine construction", step.symbol),
                )
            })?;
            let cfg = LaunchConfig {
                grid_dim: step.grid,
                block_dim: step.block,
                shared_mem_bytes: step.smem_bytes,
            };
            // SAFETY: as gemm::launch: validate() checked shape, alignment and pointers; x holds
            // m rows of k, y m rows of n (direct rows of the chunk buffer, or the slot scratch).
            unsafe { self.stream.launch_builder(f).arg(&p).launch(cfg) }.ctx(&what)?;
        }
        Ok(())
    }

    /// The canonical codes of `l` into gemm_v2 fragment order at `dst`.
    fn repack_v2(&self, l: &Int4Dev, dst: u64) -> Result<()> {
        let pf = self.pf()?;
        let words = gemm_layout::prepared_words(l.k, l.n);
        let p = abi::lab_llama_repack_params {
            src: self.r(&l.qweight),
            dst,
            words: words as u64,
            k: l.k as i32,
            n: l.n as i32,
        };
        // Grid-stride: 8 blocks of 256 per SM is plenty for a copy-like kernel.
        let blocks = words.div_ceil(256).min(8 * self.sms).max(1);
        self.launch(
            &pf.k.repack,
            (blocks as u32, 1),
            256,
            0,
            &p,
            &format!("prefill repack to gemm_v2 order K {} N {}", l.k, l.n),
        )
    }

    /// `rows` rows of `n` fp16 from `src` (row stride src_w) to `dst` (row stride dst_w).
    fn copy_rows(
        &self,
        src: u64,
        src_w: usize,
        dst: u64,
        dst_w: usize,
        n: usize,
        rows: usize,
    ) -> Result<()> {
        use cudarc::driver::sys::{cuMemcpy2DAsync_v2, CUmemorytype, CUDA_MEMCPY2D};
        let c = CUDA_MEMCPY2D {
            srcXInBytes: 0,
            srcY: 0,
            srcMemoryType: CUmemorytype::CU_MEMORYTYPE_DEVICE,
            srcHost: std::ptr::null(),
            srcDevice: src,
            srcArray: std::ptr::null_mut(),
            srcPitch: src_w * 2,
            dstXInBytes: 0,
            dstY: 0,
            dstMemoryType: CUmemorytype::CU_MEMORYTYPE_DEVICE,
            dstHost: std::ptr::null_mut(),
            dstDevice: dst,
            dstArray: std::ptr::null_mut(),
            dstPitch: dst_w * 2,
            WidthInBytes: n * 2,
            Height: rows,
        };
        // SAFETY: src holds rows x src_w and dst rows x dst_w fp16 (the slot scratch and the
        // chunk's output rows); the copy is ordered on the engine's stream.
        unsafe { cuMemcpy2DAsync_v2(&c, self.stream.cu_stream()) }
            .result()
            .ctx("prefill: unfused slot rows into the fused output")
    }

    /// fp16 linear over m rows through cuBLAS: Y[m, n] (row stride ldy) = X[m, k] W[n, k]^T.
    fn cublas_gemm(
        &self,
        b: &Blas,
        l: &F16Dev,
        x: u64,
        m: usize,
        y: u64,
        ldy: usize,
    ) -> Result<()> {
        use cudarc::cublas::sys::{
            cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
        };
        let (alpha, beta) = (1f32, 0f32);
        // Column-major views: W [n, k] row-major is A = k x n (lda k); X [m, k] row-major is
        // B = k x m (ldb k); Y rows of stride ldy are C = n x m (ldc ldy). C = A^T B.
        // SAFETY: w holds n*k fp16, x m*k, y m rows of ldy >= n (the chunk's output buffers).
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *b.handle.handle(),
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                l.n as i32,
                m as i32,
                l.k as i32,
                (&alpha) as *const f32 as *const _,
                self.r(&l.w) as *const _,
                cudaDataType_t::CUDA_R_16F,
                l.k as i32,
                x as *const _,
                cudaDataType_t::CUDA_R_16F,
                l.k as i32,
                (&beta) as *const f32 as *const _,
                y as *mut _,
                cudaDataType_t::CUDA_R_16F,
                ldy as i32,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .ctx(&format!(
            "cuBLAS fp16 prefill GEMM m {m} K {} N {}",
            l.k, l.n
        ))
    }
}

/// CPU mirrors of the prefill kernels' index math (kernels/llama/prefill.cu), loop for loop, so a
/// layout or masking mistake shows up in `cargo test` without a GPU.
#[cfg(test)]
pub(crate) mod emulate {
    /// lab_llama_repack_v2, one prepared word per iteration of the grid-stride loop.
    pub fn repack_v2(src: &[u32], k: usize, n: usize) -> Vec<u32> {
        let words = super::gemm_layout::prepared_words(k, n);
        let n_chunks = n.div_ceil(32);
        let mut dst = vec![0u32; words];
        for (w, d) in dst.iter_mut().enumerate() {
            let (j, lane, chunk) = (w & 3, (w >> 2) & 31, w >> 7);
            let (nc, kc) = (chunk % n_chunks, chunk / n_chunks);
            let (g, t) = (lane >> 2, lane & 3);
            let col = 32 * nc + 8 * j + g;
            let mut out = 0u32;
            if col < n {
                for pp in 0..4 {
                    let row = 32 * kc + 16 * (pp / 2) + 8 * (pp % 2) + 2 * t;
                    if row < k {
                        let word = src[(row / 8) * n + col];
                        let sh = 4 * (row % 8);
                        out |= ((word >> sh) & 0xF) << (4 * pp);
                        out |= ((word >> (sh + 4)) & 0xF) << (4 * (pp + 4));
                    }
                }
            }
            *d = out;
        }
        dst
    }

    /// Shapes of one prefill attention call.
    #[derive(Clone, Copy)]
    pub struct Attn {
        pub m: usize,
        pub pos0: usize,
        pub heads: usize,
        pub kv_heads: usize,
        pub hd: usize,
    }

    /// lab_llama_prefill_attn: blocks (head, 16-query tile), 32-key tiles, f32 online softmax.
    /// qkv [m][heads*hd + 2 kv_dim], caches [>= pos0 + m][kv_dim]; returns out [m][heads*hd].
    pub fn prefill_attn(a: Attn, qkv: &[f32], kc: &[f32], vc: &[f32]) -> Vec<f32> {
        const QT: usize = 16;
        const KT: usize = 32;
        let (hd, kv_dim) = (a.hd, a.kv_heads * a.hd);
        let row_w = a.heads * hd + 2 * kv_dim;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![0f32; a.m * a.heads * hd];
        for head in 0..a.heads {
            let kvh = head / (a.heads / a.kv_heads);
            for q0 in (0..a.m).step_by(QT) {
                let nq = QT.min(a.m - q0);
                let (mut mrow, mut lrow) = ([f32::NEG_INFINITY; QT], [0f32; QT]);
                let mut acc = vec![0f32; QT * hd];
                let n_keys = a.pos0 + q0 + nq;
                for k0 in (0..n_keys).step_by(KT) {
                    let mut s = [[f32::NEG_INFINITY; KT]; QT];
                    for (i, si) in s.iter_mut().enumerate() {
                        for (j, sij) in si.iter_mut().enumerate() {
                            let key = k0 + j;
                            if i < nq && key < n_keys && key <= a.pos0 + q0 + i {
                                let q = &qkv[(q0 + i) * row_w + head * hd..][..hd];
                                let kr = &kc[key * kv_dim + kvh * hd..][..hd];
                                let d: f32 = q.iter().zip(kr).map(|(x, y)| x * y).sum();
                                *sij = d * scale;
                            }
                        }
                    }
                    for i in 0..QT {
                        let mx = s[i].iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                        let m_new = mrow[i].max(mx);
                        let alpha = if mrow[i] == f32::NEG_INFINITY {
                            0.0
                        } else {
                            (mrow[i] - m_new).exp()
                        };
                        let mut sum = 0f32;
                        for sij in s[i].iter_mut() {
                            *sij = if m_new == f32::NEG_INFINITY {
                                0.0
                            } else {
                                (*sij - m_new).exp()
                            };
                            sum += *sij;
                        }
                        mrow[i] = m_new;
                        lrow[i] = lrow[i] * alpha + sum;
                        for d in 0..hd {
                            let mut o = acc[i * hd + d] * alpha;
                            for (j, p) in s[i].iter().enumerate() {
                                let key = k0 + j;
                                let v = if key < n_keys {
                                    vc[key * kv_dim + kvh * hd + d]
                                } else {
                                    0.0
                                };
                                o += p * v;
                            }
                            acc[i * hd + d] = o;
                        }
                    }
                }
                for i in 0..nq {
                    for d in 0..hd {
                        out[(q0 + i) * a.heads * hd + head * hd + d] = if lrow[i] > 0.0 {
                            acc[i * hd + d] / lrow[i]
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, RngExt, SeedableRng};

    fn shape(k: usize, n: usize, group: usize, g_idx: bool, perm: bool) -> LayerShape {
        LayerShape {
            k,
            n,
            group_size: group,
            g_idx,
            perm,
            bias: false,
            symmetric: false,
        }
    }

    #[test]
    fn chunks_cover_the_prompt_in_order_from_the_start_position() {
        assert_eq!(chunks(0, 5, 512), vec![(0, 0..5)]);
        assert_eq!(
            chunks(7, 1100, 512),
            vec![(7, 0..512), (519, 512..1024), (1031, 1024..1100)]
        );
        for (start, len, chunk) in [(0, 2048, 512), (3, 1, 4), (0, 13, 5), (10, 64, 64)] {
            let c = chunks(start, len, chunk);
            assert_eq!(c.iter().map(|(_, r)| r.len()).sum::<usize>(), len);
            for w in c.windows(2) {
                assert_eq!(w[0].1.end, w[1].1.start);
                assert_eq!(w[1].0 - w[0].0, w[0].1.len(), "positions advance by rows");
            }
            assert!(c
                .iter()
                .all(|(p, r)| r.len() <= chunk && *p == start + r.start));
        }
    }

    #[test]
    fn row_tiles_stay_in_the_gemm_batch_range() {
        assert_eq!(row_tiles(1, 64), vec![0..1]);
        assert_eq!(row_tiles(65, 64), vec![0..63, 63..65]);
        assert_eq!(row_tiles(129, 64), vec![0..64, 64..127, 127..129]);
        for m in 1..=600 {
            let t = row_tiles(m, GEMM_ROWS);
            assert_eq!(t.first().unwrap().start, 0);
            assert_eq!(t.last().unwrap().end, m);
            for w in t.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
            for r in &t {
                assert!(r.len() <= 64, "m {m}: {r:?}");
                assert!(r.len() >= 2 || m == 1, "m {m}: a 1-row GEMM tile {r:?}");
            }
        }
    }

    #[test]
    fn int4_paths_follow_the_gemm_familys_limits() {
        let s = shape(4096, 12288, 128, false, true);
        assert_eq!(int4_path(PrefillInt4::Auto, &s, 90), Int4Path::GemmV2);
        assert_eq!(int4_path(PrefillInt4::Auto, &s, 75), Int4Path::GemmV1);
        assert_eq!(int4_path(PrefillInt4::GemmV1, &s, 90), Int4Path::GemmV1);
        assert_eq!(int4_path(PrefillInt4::GemmV2, &s, 75), Int4Path::GemmV1);
        assert!(matches!(
            int4_path(PrefillInt4::Auto, &s, 70),
            Int4Path::Rows(_)
        ));
        assert!(matches!(
            int4_path(PrefillInt4::RowGemv, &s, 90),
            Int4Path::Rows(_)
        ));
        // Uneven act-order groups (a sorted g_idx kept) and unsupported group sizes: per row.
        match int4_path(PrefillInt4::Auto, &shape(4096, 4096, 128, true, true), 90) {
            Int4Path::Rows(why) => assert!(why.contains("unequal"), "{why}"),
            p => panic!("{p:?}"),
        }
        assert!(matches!(
            int4_path(PrefillInt4::Auto, &shape(4096, 4096, 256, false, false), 90),
            Int4Path::Rows(_)
        ));
        // Per-channel (group = K) is served.
        assert_eq!(
            int4_path(
                PrefillInt4::Auto,
                &shape(11008, 4096, 11008, false, false),
                90
            ),
            Int4Path::GemmV2
        );
        // Every linear of the tiny check model goes through v2 on an H100, so the GPU check
        // exercises the GEMM path, not the per-row fallback.
        let cfg = crate::model::gpu_check::tiny_config();
        let (h, i, kv) = (cfg.hidden_size, cfg.intermediate_size, 32);
        for (k, n) in [(h, h + 2 * kv), (h, h), (h, 2 * i), (i, h)] {
            for g in [32, 64, k] {
                assert_eq!(
                    int4_path(PrefillInt4::Auto, &shape(k, n, g, false, true), 90),
                    Int4Path::GemmV2,
                    "{k} x {n} g{g}"
                );
            }
        }
    }

    #[test]
    fn prefill_workspace_bytes_of_vicuna_7b_at_512_rows() {
        let cfg = ModelConfig::vicuna_7b();
        // GEMM N up to 22016 (gate_up), largest v2 linear gate_up: 4096/32 * 128 * 22016/32 words.
        let words = gemm_layout::prepared_words(4096, 22016);
        assert_eq!(words, 128 * 128 * 688);
        let s = PrefillSizes::new(&cfg, 512, 22016, words, 0);
        let want = 512 * 4 // tokens
            + 512 * 4096 * 4 // resid
            + 512 * 4096 * 2 // x16
            + 512 * 12288 * 2 // qkv
            + 512 * 4096 * 2 // delta
            + 512 * 22016 * 2 // gate_up
            + 512 * 11008 * 2 // act
            + 64 * 22016 * 4 // split-K
            + words * 4; // repack: 45 MB, = the int4 codes of gate_up
        assert_eq!(s.bytes(), want as u64);
        assert_eq!(words * 4, 4096 * 22016 / 2);
        // ~115 MB in all, linear in the chunk apart from the split-K and repack scratch.
        assert!(
            (110e6..120e6).contains(&(s.bytes() as f64)),
            "{}",
            s.bytes()
        );
        let s2 = PrefillSizes::new(&cfg, 1024, 22016, words, 0);
        let per_row = (4 + 4096 * 4 + (4096 * 2 + 12288 + 22016 + 11008) * 2) as u64;
        assert_eq!(s2.bytes() - s.bytes(), 512 * per_row);
        // An unfused slot adds 64 rows of its width.
        assert_eq!(
            PrefillSizes::new(&cfg, 512, 22016, words, 11008).bytes() - s.bytes(),
            64 * 11008 * 2
        );
    }

    #[test]
    fn attention_shared_memory_fits_48_kb_for_every_head_dim() {
        assert_eq!(attn_smem_bytes(128), 22848);
        for hd in [8, 16, 32, 64, 128, 256] {
            assert!(attn_smem_bytes(hd) <= 48 * 1024, "hd {hd}");
            // V tile and scores start 16-byte aligned (uint4 stores, then f32).
            assert_eq!((2 * (16 * hd + 32 * (hd + 2))) % 16, 0);
            assert_eq!((2 * (16 * hd + 32 * (hd + 2) + 32 * hd)) % 16, 0);
        }
    }

    #[test]
    fn repack_emulation_equals_the_fragment_layout() {
        let mut rng = StdRng::seed_from_u64(3);
        for (k, n) in [(64, 128), (192, 64), (72, 40), (256, 384), (8, 8)] {
            let canon: Vec<u32> = (0..k / 8 * n).map(|_| rng.random::<u32>()).collect();
            let code = |r: usize, c: usize| (canon[(r / 8) * n + c] >> (4 * (r % 8))) & 0xF;
            let want = gemm_layout::to_fragment_order(k, n, code).unwrap();
            assert_eq!(emulate::repack_v2(&canon, k, n), want, "{k} x {n}");
        }
    }

    fn round16(x: f32) -> f32 {
        f16::from_f32(x).to_f32()
    }

    /// f64 causal attention: query row r at position pos0 + r sees keys 0 ..= pos0 + r.
    fn naive(a: emulate::Attn, qkv: &[f32], kc: &[f32], vc: &[f32]) -> Vec<f64> {
        let (hd, kv_dim) = (a.hd, a.kv_heads * a.hd);
        let row_w = a.heads * hd + 2 * kv_dim;
        let mut out = vec![0f64; a.m * a.heads * hd];
        for r in 0..a.m {
            for h in 0..a.heads {
                let kh = h / (a.heads / a.kv_heads);
                let q = &qkv[r * row_w + h * hd..][..hd];
                let len = a.pos0 + r + 1;
                let s: Vec<f64> = (0..len)
                    .map(|p| {
                        let k = &kc[p * kv_dim + kh * hd..][..hd];
                        q.iter()
                            .zip(k)
                            .map(|(x, y)| *x as f64 * *y as f64)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    out[r * a.heads * hd + h * hd + d] = (0..len)
                        .map(|p| e[p] / z * vc[p * kv_dim + kh * hd + d] as f64)
                        .sum();
                }
            }
        }
        out
    }

    #[test]
    fn prefill_attention_emulation_is_causal_softmax_attention() {
        let mut rng = StdRng::seed_from_u64(11);
        for (m, pos0, heads, kvh, hd) in [
            (1, 0, 4, 2, 16),
            (12, 0, 4, 2, 16),
            (21, 37, 4, 2, 16),
            (40, 0, 2, 2, 128),
            (17, 100, 4, 1, 32),
        ] {
            let a = emulate::Attn {
                m,
                pos0,
                heads,
                kv_heads: kvh,
                hd,
            };
            let kv_dim = kvh * hd;
            let row_w = heads * hd + 2 * kv_dim;
            let len = pos0 + m;
            // Scores of a few units (3 / sqrt(hd) scaled dot products): a peaked softmax, like
            // real attention, so a wrong mask or a missed rescale is far outside rounding.
            let mut fill = |n: usize, s: f32| -> Vec<f32> {
                (0..n).map(|_| round16(rng.random_range(-s..s))).collect()
            };
            let qkv = fill(m * row_w, 3.0);
            let kc = fill(len * kv_dim, 3.0);
            let vc = fill(len * kv_dim, 1.0);
            let got = emulate::prefill_attn(a, &qkv, &kc, &vc);
            let want = naive(a, &qkv, &kc, &vc);
            assert!(got.iter().all(|x| x.is_finite()));
            let rms = (want.iter().map(|v| v * v).sum::<f64>() / want.len() as f64).sqrt();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (*g as f64 - w).abs() <= 1e-4 * rms + 1e-4 * w.abs(),
                    "m {m} pos0 {pos0} hd {hd}: element {i} got {g} want {w}"
                );
            }
            // Causality: changing a key after the first query's position leaves row 0 alone.
            if m > 1 {
                let mut kc2 = kc.clone();
                for x in &mut kc2[(pos0 + 1) * kv_dim..] {
                    *x = -*x;
                }
                let got2 = emulate::prefill_attn(a, &qkv, &kc2, &vc);
                assert_eq!(got[..heads * hd], got2[..heads * hd]);
                assert_ne!(got[heads * hd..], got2[heads * hd..]);
            }
        }
    }
}
