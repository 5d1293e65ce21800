//! The linear layers of a prefill: which kernel computes an m-row linear (`int4_path`, listed in
//! the module comment of mod.rs) and its launches. int4: the GEMM family (kernels::gemm) in row
//! tiles of <= GEMM_ROWS, gemm_v2 reading a once-per-chunk repack into fragment order, an unfused
//! slot's rows copied into its columns of the fused output; dequant to an fp16 scratch + cuBLAS for
//! chunks from `dequant_min_rows` under auto, every chunk under `--prefill-int4 dequant` (mod.rs);
//! else the decode GEMV once per row (and always for a 1-row chunk).
//! fp16: cuBLAS GemmEx over all m rows, or the lab fp16 GEMV once per row without cuBLAS.

use super::*;
use crate::kernels::gemm;
use crate::kernels::gemm_layout;
use std::ops::{Range, RangeInclusive};

/// Rows per GEMM launch: the GEMM family's largest batch.
pub const GEMM_ROWS: usize = gemm::MAX_M;

/// What computes one int4 linear in a prefill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int4Path {
    GemmV2,
    GemmV1,
    /// Dequantize to an fp16 scratch, then cuBLAS over all m rows.
    Dequant,
    /// Per-row GEMV; the reason is for logs and reports.
    Rows(&'static str),
}

pub(super) fn gemm_variant(name: &str) -> &'static Variant {
    gemm::VARIANTS
        .iter()
        .find(|v| v.name == name)
        .expect("gemm variants are static")
}

/// Rows of a chunk from which `--prefill-int4 auto` dequantizes a linear to fp16 and runs cuBLAS
/// instead of the GEMM family (ExLlama's choice too, at its own threshold). The dequant costs a
/// fixed ~0.4 ms per 7B layer whatever the rows (it writes 2 B and reads ~2.5 B per weight), the
/// int4 GEMM grows with the rows at about half cuBLAS fp16's rate. Run 10 (H100, decode.md and the
/// prefill-dequant log): a 512-row chunk 7B 108.1 ms gemm_v2 vs 65.2 dequant (fp16 52.6, so the
/// dequant adds 12.6 ms per chunk), 13B 175.6 vs 110.2 (+25.7); at 128 rows 13B gemm_v2 46.6 ms
/// against ~44.6 estimated for the dequant (fp16 18.9 + 25.7): even, so plain layers switch at
/// 256 rows (estimated ~25% faster there). Act-order layers through the GEMM gather x and ran at
/// 57% of the plain GEMM's speed (7B 189.9 ms per 512 rows, 48.6 at 128) while the dequant writes
/// them back in checkpoint order at the plain cost: they switch at 128 (estimated ~45% faster).
/// Both crossovers are estimates until a bench times 128 and 256 rows both ways.
pub const DEQUANT_MIN_ROWS: usize = 256;
/// `DEQUANT_MIN_ROWS` for act-order layers (a permutation or an uneven g_idx).
pub const DEQUANT_MIN_ROWS_ACT_ORDER: usize = 128;

/// Rows from which `Auto` takes the dequant path for a linear of shape `s`.
pub fn dequant_min_rows(s: &LayerShape) -> usize {
    if s.perm || s.g_idx {
        DEQUANT_MIN_ROWS_ACT_ORDER
    } else {
        DEQUANT_MIN_ROWS
    }
}

/// The int4 path of an m = `rows` linear of shape `s` on an sm_`sm` device under `choice`: one
/// row always through the decode GEMV (0.5 B per weight, where a dequant moves 4.5); dequant +
/// cuBLAS when asked for, or under `Auto` from `dequant_min_rows`; else the GEMM family where
/// it serves the layout (`gemm::check_layer`: group sizes, equal-size groups), else per row.
pub fn int4_path(choice: PrefillInt4, s: &LayerShape, sm: u32, rows: usize) -> Int4Path {
    if rows <= 1 {
        return Int4Path::Rows("one row: the decode GEMV");
    }
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
        // The dequant writes rows back in checkpoint order (perm), so x needs no permutation,
        // and reads any g_idx: it serves every layout.
        PrefillInt4::Dequant => Int4Path::Dequant,
        PrefillInt4::Auto if rows >= dequant_min_rows(s) => Int4Path::Dequant,
        PrefillInt4::Auto | PrefillInt4::GemmV2 if v2 => Int4Path::GemmV2,
        PrefillInt4::Auto | PrefillInt4::GemmV1 if v1 => Int4Path::GemmV1,
        PrefillInt4::GemmV2 if v1 => Int4Path::GemmV1,
        _ => Int4Path::Rows(why),
    }
}

/// The int4 path of every chunk size 2..=`chunk` of a linear of shape `s`, as (rows, path) runs:
/// the path changes only at `dequant_min_rows`, so at most two runs. What the planner sizes the
/// scratch for and the reports list (a 1-row chunk is always the decode GEMV).
pub fn paths_by_rows(
    choice: PrefillInt4,
    s: &LayerShape,
    sm: u32,
    chunk: usize,
) -> Vec<(RangeInclusive<usize>, Int4Path)> {
    let mut out: Vec<(RangeInclusive<usize>, Int4Path)> = Vec::new();
    if chunk < 2 {
        return out;
    }
    let cut = dequant_min_rows(s).clamp(2, chunk + 1);
    for rows in [2..=cut - 1, cut..=chunk] {
        if rows.is_empty() {
            continue;
        }
        let path = int4_path(choice, s, sm, *rows.start());
        match out.last_mut() {
            Some((r, p)) if *p == path => *r = *r.start()..=*rows.end(),
            _ => out.push((rows, path)),
        }
    }
    out
}

/// "GemmV2 (2-255 rows), Dequant (256-512 rows)": `paths_by_rows` for logs and reports.
pub fn describe_paths(runs: &[(RangeInclusive<usize>, Int4Path)]) -> String {
    let path = |p: &Int4Path| match p {
        Int4Path::Rows(_) => "per-row GEMV".to_string(),
        p => format!("{p:?}"),
    };
    runs.iter()
        .map(|(r, p)| format!("{} ({}-{} rows)", path(p), r.start(), r.end()))
        .collect::<Vec<_>>()
        .join(", ")
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

/// Where a linear's m output rows go: `y` + (r * width + col) fp16 values for row r.
#[derive(Clone, Copy)]
pub(super) struct RowsOut {
    pub(super) y: u64,
    pub(super) width: usize,
    pub(super) col: usize,
}

impl GpuEngine {
    /// y rows = x rows . W over m rows (x fp16 [m, k] row-major at `x`), through the path the
    /// module comment lists for this layout.
    pub(super) fn prefill_linear(
        &self,
        lin: &GpuLinear,
        x: u64,
        m: usize,
        out: RowsOut,
    ) -> Result<()> {
        let (k, n) = lin.kn();
        let row_x = |r: usize| x + 2 * (r * k) as u64;
        let row_y = |r: usize| out.y + 2 * (r * out.width + out.col) as u64;
        match lin {
            GpuLinear::F16(l) => match self.fp16_blas() {
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
                let path = int4_path(pf.choice, &layer_shape(q), pf.sm, m);
                let missing = |what: &str| {
                    LabError::invalid(
                        "prefill workspace",
                        format!("{what} was not allocated for a {k} x {n} linear ({path:?})"),
                    )
                };
                let v = match path {
                    Int4Path::Rows(_) => {
                        return (0..m).try_for_each(|r| self.linear(lin, row_x(r), row_y(r)))
                    }
                    Int4Path::Dequant => {
                        let blas = self.blas.as_ref().ok_or_else(|| {
                            LabError::invalid("--prefill-int4 dequant", "cuBLAS is not loaded")
                        })?;
                        let w = self
                            .scratch_part(ScratchPart::Dequant)?
                            .ok_or_else(|| missing("the dequant scratch"))?;
                        // Slice by slice (the plan's budget of fp16 W at a time, 64 MiB by default), all
                        // m rows at once, straight into the output's columns (ldc = width).
                        let budget = pf.bufs.sizes.dequant_slice_elems;
                        for cols in dequant_slices_within(k, n, budget).ranges(n) {
                            self.dequant_f16(q, cols.clone(), w)?;
                            self.cublas_f16(
                                blas,
                                WeightOrder::KN,
                                w,
                                (k, cols.len()),
                                x,
                                m,
                                row_y(0) + 2 * cols.start as u64,
                                out.width,
                            )?;
                        }
                        return Ok(());
                    }
                    Int4Path::GemmV2 => gemm_variant("gemm_v2_mma"),
                    Int4Path::GemmV1 => gemm_variant("gemm_v1_simt"),
                };
                let qweight = if path == Int4Path::GemmV2 {
                    let dst = self
                        .scratch_part(ScratchPart::Repack)?
                        .ok_or_else(|| missing("the repack scratch"))?;
                    self.repack_v2(q, dst)?;
                    dst
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
                        let sy = self
                            .scratch_part(ScratchPart::SlotY)?
                            .ok_or_else(|| missing("the slot scratch"))?;
                        self.gemm_int4(v, q, qweight, row_x(t.start), sy, t.len())?;
                        self.copy_rows(sy, n, row_y(t.start), out.width, n, t.len())?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Device address of `part` of the prefill scratch (None where the plan gave it no bytes).
    fn scratch_part(&self, part: ScratchPart) -> Result<Option<u64>> {
        let b = &self.pf()?.bufs;
        Ok(match &b.scratch {
            Some(s) if b.sizes.elems(part) > 0 => Some(self.r(s) + b.sizes.offset(part) as u64),
            _ => None,
        })
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
        let (split, slice) = gemm::auto_split(v, m as u32, l.n as u32, l.k as u32, self.dev);
        let ws = self.scratch_part(ScratchPart::GemmWs)?.unwrap_or(0);
        let mut p = self.int4_params(l, XInput::Plain(x), y, ws, split as usize, slice as usize);
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

    /// Columns `cols` of W of `l` as fp16 [k, cols.len()] at `dst` (lab_dequant_f16_v1: one
    /// rounding of scale x (q - zero)); `cols.start` is a multiple of 8 (dequant_slices).
    fn dequant_f16(&self, l: &Int4Dev, cols: std::ops::Range<usize>, dst: u64) -> Result<()> {
        let pf = self.pf()?;
        let f =
            pf.k.dequant
                .as_ref()
                .ok_or_else(|| LabError::invalid("prefill", "lab_dequant_f16_v1 was not loaded"))?;
        // The kernel reads qweight/qzeros/scales/g_idx, group_size, zero_mode, n, k, ld_w; y = dst.
        // A slice: the three weight pointers at its first column, row stride ld_w = the full n.
        debug_assert!(cols.start % 8 == 0 && cols.end <= l.n);
        let mut p = self.int4_params(l, XInput::Plain(0), dst, 0, 1, l.k);
        let c0 = cols.start as u64;
        p.qweight += 4 * c0;
        p.scales += 2 * c0;
        if p.qzeros != 0 {
            p.qzeros += 4 * (c0 / 8);
        }
        p.n = cols.len() as i32;
        p.ld_w = l.n as i32;
        self.launch(
            f,
            (cols.len().div_ceil(256) as u32, (l.k / 8) as u32),
            256,
            0,
            &p,
            &format!(
                "prefill dequant to fp16 K {} N {} (columns {}..{})",
                l.k, l.n, cols.start, cols.end
            ),
        )
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
        let blocks = words.div_ceil(256).min(8 * self.dev.sms as usize).max(1);
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

    /// fp16 linear over m rows through cuBLAS: Y[m, n] (row stride ldy) = X[m, k] W[n, k]^T. The
    /// decode step's fp16 linears are the m = 1 case (ldy = n).
    pub(in crate::model::gpu_engine) fn cublas_gemm(
        &self,
        b: &Blas,
        l: &F16Dev,
        x: u64,
        m: usize,
        y: u64,
        ldy: usize,
    ) -> Result<()> {
        self.cublas_f16(b, WeightOrder::NK, self.r(&l.w), (l.k, l.n), x, m, y, ldy)
    }

    /// Y[m, n] (row stride ldy) = X[m, k] W, fp16 in and out, fp32 accumulation; W is [n, k]
    /// row-major (an fp16 linear, HF layout) or [k, n] row-major (the dequant scratch).
    #[allow(clippy::too_many_arguments)]
    fn cublas_f16(
        &self,
        b: &Blas,
        order: WeightOrder,
        w: u64,
        (k, n): (usize, usize),
        x: u64,
        m: usize,
        y: u64,
        ldy: usize,
    ) -> Result<()> {
        use cudarc::cublas::sys::{
            cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
        };
        let (alpha, beta) = (1f32, 0f32);
        // Column-major views: X [m, k] row-major is B = k x m (ldb k); Y rows of stride ldy are
        // C = n x m (ldc ldy). W [n, k] row-major is k x n (lda k): C = A^T B; W [k, n] row-major
        // is n x k (lda n): C = A B.
        let (op, lda) = match order {
            WeightOrder::NK => (cublasOperation_t::CUBLAS_OP_T, k),
            WeightOrder::KN => (cublasOperation_t::CUBLAS_OP_N, n),
        };
        // SAFETY: w holds n*k fp16, x m*k, y m rows of ldy >= n (the caller's buffers).
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *b.handle.handle(),
                op,
                cublasOperation_t::CUBLAS_OP_N,
                n as i32,
                m as i32,
                k as i32,
                (&alpha) as *const f32 as *const _,
                w as *const _,
                cudaDataType_t::CUDA_R_16F,
                lda as i32,
                x as *const _,
                cudaDataType_t::CUDA_R_16F,
                k as i32,
                (&beta) as *const f32 as *const _,
                y as *mut _,
                cudaDataType_t::CUDA_R_16F,
                ldy as i32,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .ctx(&format!("cuBLAS fp16 GEMM m {m} K {k} N {n} ({order:?})"))
    }
}

/// How a weight matrix handed to cuBLAS is laid out (row-major).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WeightOrder {
    /// [n, k]: an fp16 linear (HF nn.Linear layout).
    NK,
    /// [k, n]: the GPTQ order, as lab_dequant_f16_v1 writes it.
    KN,
}
