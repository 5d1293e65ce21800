//! The Hessian's `sum_t x_t x_t^T` on Intel AMX tiles (bf16 inputs, f32 accumulation).
//!
//! Why: the sum is 2 K^2 flops per calibration token (half of them with the lower triangle only):
//! 128 x 2048 tokens at K = 4096 is 4.4e12 flops. On this lab's 2-core Xeon (Sapphire Rapids
//! class) faer's f32 GEMM runs at 140-148 GFLOP/s (~90% of the AVX2/AVX-512 f32 FMA peak, measured
//! 2026-11-26), i.e. 30 s for that sum alone, over the 30 s budget for the whole layer.
//! One TDPBF16PS does 16 x 16 x 32 bf16 multiply-adds (16 cycles): 1024 flops/cycle/core,
//! 8x the f32 FMA peak. Measured (`examples/gptq_layer_time`, 2 cores shared with other builds,
//! load ~1.5): the 262144-token sum in 8.9 s (~500 GFLOP/s) against ~30 s for f32. Pass size and
//! job size were swept at 65536 tokens: TB 256-512 x RANGE 512-1024 all ~2.3 s; TB 1024 2.9 s,
//! TB 2048 4.1 s (the panels leave L2).
//!
//! Precision: each input is rounded once to bf16 (8 significant bits, relative error <= 2^-9);
//! products and sums are f32 inside the tile unit. The Hessian is a mean over many tokens, so the
//! rounding errors (zero-mean, independent per element) shrink in it: measured on correlated
//! synthetic inputs, H differs from the f64 sum by ~1e-4 relative (Frobenius), far below the
//! solver's 1% damping, and GPTQ's output error moves by < 0.1% (tests in `hessian`).
//! `HessianBackend::F32` keeps faer's f32 product for anyone who wants the published tools' exact
//! arithmetic.
//!
//! Layout per sub-batch of `TB` tokens (zero-padded to a multiple of 32 tokens and K to a multiple
//! of 32 features; zeros add nothing):
//!   q [Kp][TB]   bf16, features major: a 16 x 32 A tile = 16 features x 32 consecutive tokens;
//!   p [TB/2][Kp][2] bf16, token pairs major: a 16 x 32 B tile in the VNNI layout TDPBF16PS wants
//!                (row = a token pair, 16 features x (token 2r, token 2r+1)).
//! A tile step: C(32 x 32 f32, 4 tiles) += A(2 tiles: 32 features) * B(2 tiles: 32 features) over
//! 32 tokens: 4 KB of loads for 65536 flops. The C tiles are loaded from the running sum itself,
//! accumulate over the whole pass and are stored back: the sum is column-major, and H is
//! symmetric, so a tile whose rows are sum columns j and whose 16 f32 columns are sum rows i is
//! the block (i, j) in place, no scalar adds. (Storing C to a scratch block and adding it into the
//! sum element by element took 2/3 of the time: 15 of 21 ms per 512-token pass at K = 4096.)
//! The sum is allocated padded to a multiple of 32 (`padded`) so edge tiles stay inside it.
//!
//! Traffic (K = 4096, 262144 tokens): the sum is read and written once per pass,
//! K^2/2 x 8 B x passes = 34 GB at TB = 512 tokens per pass; the panels are read once per job,
//! 2 K^2 x tokens / RANGE = 17 GB at RANGE = 512 features per job side. A job's two panels
//! (2 x RANGE x TB x 2 B = 1 MB) stay in L2 (2 MB per core) across its 16 x 16 blocks.
//!
//! Unsafe: AMX is reached by inline assembly (Rust has no stable AMX intrinsics). The invariants
//! are stated at each `unsafe` block; the tile configuration is loaded at the start of every job
//! and released at its end on the same thread (tile state is per thread, rayon does not move a
//! running closure).

use crate::{LabError, Result};
use faer::Mat;
use rayon::prelude::*;
use std::sync::OnceLock;

/// Tokens packed per pass (see the module docs for the L2 arithmetic).
const TB: usize = 512;
/// Features per job side (a panel is RANGE x TB x 2 B = 512 KB; a job's two fit L2).
const RANGE: usize = 512;
/// Tile edge used everywhere: 16 rows of 64 bytes (16 f32 or 32 bf16).
const T: usize = 16;

/// True when this CPU has AMX-TILE and AMX-BF16 and the kernel granted the process the tile
/// state (Linux `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`). Asked once.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // CPUID exists on every x86_64 CPU; leaf 7 is read only if the CPU reports it.
    let max_leaf = __cpuid(0).eax;
    if max_leaf < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    let (amx_bf16, amx_tile) = (edx & (1 << 22) != 0, edx & (1 << 24) != 0);
    if !(amx_bf16 && amx_tile) {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain syscall with integer arguments; it only changes which register state the
    // kernel saves for this process. Failure (old kernel, seccomp) just means "no AMX".
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// f32 -> bf16 bits, round to nearest even (inputs are finite: `Hessian::add_batch` checks).
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// Side of the sum matrix the AMX path needs for K features: K rounded up to 32.
pub fn padded(k: usize) -> usize {
    k.div_ceil(2 * T) * 2 * T
}

/// Add the lower triangle (diagonal included) of `x^T x` to `sum`, `x` [rows, k] row-major f32,
/// `sum` at least `padded(k)` square (entries past k and above the diagonal get values too and
/// are not meant to be read). Err if AMX is not available.
pub fn add_xtx_lower(sum: &mut Mat<f32>, x: &[f32], rows: usize, k: usize) -> Result<()> {
    if !available() {
        return Err(LabError::invalid(
            "Hessian backend",
            "bf16-amx was asked for but this CPU/kernel offers no AMX tiles",
        ));
    }
    let kp = padded(k);
    if x.len() != rows * k || sum.nrows() < kp || sum.ncols() < kp || sum.row_stride() != 1 {
        return Err(LabError::invalid(
            "Hessian (AMX)",
            format!(
                "internal: x has {} values for {rows} x {k}, sum is {} x {} (needs {kp} square, column-major)",
                x.len(),
                sum.nrows(),
                sum.ncols()
            ),
        ));
    }
    for start in (0..rows).step_by(TB) {
        let n = TB.min(rows - start);
        let tp = n.div_ceil(2 * T) * 2 * T;
        let (q, p) = pack(&x[start * k..(start + n) * k], n, k, kp, tp);
        accumulate(sum, &q, &p, kp, tp);
    }
    Ok(())
}

/// The two bf16 layouts of one sub-batch (module docs), zero-padded to `kp` features, `tp` tokens.
/// Jobs of 32 tokens x all features in parallel: each reads 32 rows of `x` (held in L1 while `f`
/// advances) and writes 64-byte runs of `q` and contiguous runs of `p`. A plain row-by-row
/// transpose (one cache line per element of `q`) took longer than the tile products it feeds.
fn pack(x: &[f32], n: usize, k: usize, kp: usize, tp: usize) -> (Vec<u16>, Vec<u16>) {
    let mut q = vec![0u16; kp * tp];
    let mut p = vec![0u16; tp * kp];
    let (qp, pp) = (SendPtr(q.as_mut_ptr()), SendPtr(p.as_mut_ptr()));
    (0..n.div_ceil(2 * T)).into_par_iter().for_each(|blk| {
        let (qp, pp) = (&qp, &pp);
        let t0 = blk * 2 * T;
        let t1 = n.min(t0 + 2 * T);
        for f in 0..k {
            for t in t0..t1 {
                let b = bf16_bits(x[t * k + f]);
                // SAFETY: f < k <= kp and t < n <= tp index inside q [kp][tp] and
                // p [tp/2][kp][2]; each job writes only its own tokens t0..t1.
                unsafe {
                    *qp.0.add(f * tp + t) = b;
                    *pp.0.add((t / 2) * kp * 2 + f * 2 + (t & 1)) = b;
                }
            }
        }
    });
    (q, p)
}

/// One job per (row range, column range) of RANGE features in the lower triangle; each job
/// accumulates into its own disjoint block of `sum`.
fn accumulate(sum: &mut Mat<f32>, q: &[u16], p: &[u16], kp: usize, tp: usize) {
    let nr = kp.div_ceil(RANGE);
    let jobs: Vec<(usize, usize)> = (0..nr).flat_map(|a| (0..=a).map(move |b| (a, b))).collect();
    let ld = sum.col_stride() as usize;
    let base = SendPtr(sum.as_ptr_mut());
    jobs.par_iter().for_each(|&(a, b)| {
        let base = &base;
        let _tiles = TileConfig::load();
        for j0 in (b * RANGE..kp.min((b + 1) * RANGE)).step_by(2 * T) {
            for i0 in (a * RANGE..kp.min((a + 1) * RANGE)).step_by(2 * T) {
                if i0 < j0 {
                    continue;
                }
                // SAFETY: i0 + 32 <= kp and j0 + 32 <= kp (ranges are multiples of 32 inside
                // kp); the sum is at least kp x kp, column-major with column stride `ld`; tp is a
                // multiple of 32, so every tile load stays inside q [kp][tp] and p [tp/2][kp][2];
                // jobs cover disjoint (row range, column range) blocks of the sum; the tile
                // configuration is loaded on this thread (`_tiles`).
                unsafe { block(q, p, kp, tp, i0, j0, base.0.add(i0 + j0 * ld), ld) };
            }
        }
    });
}

/// A buffer's data pointer, shared by jobs that write disjoint elements.
struct SendPtr<E>(*mut E);
unsafe impl<E> Sync for SendPtr<E> {}
unsafe impl<E> Send for SendPtr<E> {}

/// The tile configuration (palette 1, tiles 0-7 of 16 rows x 64 bytes), loaded on creation and
/// released on drop, on the creating thread.
struct TileConfig;

#[repr(C, align(64))]
struct TileCfgBytes {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    /// Bytes per row of each tile; entries of tiles the palette does not have must be 0.
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    fn load() -> Self {
        let mut cfg = TileCfgBytes {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for t in 0..8 {
            cfg.colsb[t] = 64;
            cfg.rows[t] = T as u8;
        }
        // SAFETY: only reached after `available()`; the 64-byte configuration is valid
        // (palette 1 has 8 tiles; 16 rows x 64 bytes is its maximum, unused entries are 0).
        unsafe {
            std::arch::asm!("ldtilecfg [{}]", in(reg) &cfg as *const TileCfgBytes, options(nostack, readonly));
        }
        TileConfig
    }
}

impl Drop for TileConfig {
    fn drop(&mut self) {
        // SAFETY: releases this thread's tile state, loaded by `load`.
        unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// The sum's block rows i0..i0+32, columns j0..j0+32 (at `c`, column stride `ld` floats)
/// += sum over the `tp` tokens of x_i x_j. Seen as tiles, the block is D[j][i] (a tile row is a
/// sum column: 16 consecutive rows i): tiles 0-3 are its four 16 x 16 quarters, 4-5 the A tiles
/// (features j from q), 6-7 the B tiles (features i from p, VNNI pairs).
///
/// # Safety
/// AMX available and configured on this thread; i0 + 32 <= kp, j0 + 32 <= kp, tp % 32 == 0,
/// q.len() >= kp * tp, p.len() >= tp * kp; `c` points at a writable block of 32 columns of
/// stride `ld` >= 32 floats, 32 floats each.
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    q: &[u16],
    p: &[u16],
    kp: usize,
    tp: usize,
    i0: usize,
    j0: usize,
    c: *mut f32,
    ld: usize,
) {
    debug_assert!(i0 + 2 * T <= kp && j0 + 2 * T <= kp && tp % (2 * T) == 0);
    debug_assert!(q.len() >= kp * tp && p.len() >= tp * kp);
    let ldq = tp * 2; // bytes between features in q
    let ldp = kp * 4; // bytes between token pairs in p
    let ldc = ld * 4; // bytes between sum columns
    let a0 = (q.as_ptr() as *const u8).add(j0 * ldq);
    let a1 = a0.add(T * ldq);
    let b0 = (p.as_ptr() as *const u8).add(i0 * 4);
    let b1 = b0.add(T * 4);
    // Quarter (jj, ii) of the block: columns j0 + 16 jj, rows i0 + 16 ii.
    let (c00, c01, c10, c11) = (c, c.add(T), c.add(T * ld), c.add(T * ld + T));
    std::arch::asm!(
        "tileloadd tmm0, [{c00} + {l}*1]",
        "tileloadd tmm1, [{c01} + {l}*1]",
        "tileloadd tmm2, [{c10} + {l}*1]",
        "tileloadd tmm3, [{c11} + {l}*1]",
        c00 = in(reg) c00, c01 = in(reg) c01, c10 = in(reg) c10, c11 = in(reg) c11, l = in(reg) ldc,
        options(nostack, readonly),
    );
    for s in (0..tp).step_by(2 * T) {
        let (ao, bo) = (s * 2, (s / 2) * ldp);
        std::arch::asm!(
            "tileloadd tmm4, [{a0} + {ldq}*1]",
            "tileloadd tmm5, [{a1} + {ldq}*1]",
            "tileloadd tmm6, [{b0} + {ldp}*1]",
            "tileloadd tmm7, [{b1} + {ldp}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a0.add(ao),
            a1 = in(reg) a1.add(ao),
            b0 = in(reg) b0.add(bo),
            b1 = in(reg) b1.add(bo),
            ldq = in(reg) ldq,
            ldp = in(reg) ldp,
            options(nostack, readonly),
        );
    }
    std::arch::asm!(
        "tilestored [{c00} + {l}*1], tmm0",
        "tilestored [{c01} + {l}*1], tmm1",
        "tilestored [{c10} + {l}*1], tmm2",
        "tilestored [{c11} + {l}*1], tmm3",
        c00 = in(reg) c00, c01 = in(reg) c01, c10 = in(reg) c10, c11 = in(reg) c11, l = in(reg) ldc,
        options(nostack),
    );
}
