//! The GPTQ solver for one linear layer (Frantar et al., "GPTQ: Accurate Post-Training
//! Quantization for Generative Pre-trained Transformers", 2022, Algorithm 1).
//!
//! Rows of W [K, N] (input channels) are quantized one at a time in processing order; the error of
//! each is spread over the rows not yet quantized through the inverse Hessian, so the layer's
//! output `x W` on the calibration inputs changes as little as possible. Following the paper:
//! - `Hinv` is the upper Cholesky factor U of (H + damp I)^-1, `damp = damp_percent * mean diag H`;
//! - rows are processed in blocks (128 by default): inside a block the update is applied row by
//!   row, the rows after the block get one GEMM per block ("lazy batch updates");
//! - act-order: processing order is decreasing diag(H); groups are consecutive in that order and
//!   `g_idx[k] = rank(k) / G`; with static groups the group parameters are fixed up front from
//!   the original rows `k / G` and g_idx stays trivial;
//! - a row whose input was always zero (diag H = 0) is zeroed ("dead") and H's diagonal set to 1.
//!
//! Choices that differ from the published reference code, and why:
//! - U is computed as J L'^-1 J where L' is the lower Cholesky factor of J H J (J = row reversal):
//!   one factorization and one triangular inverse in f64 instead of three factorizations in f32;
//!   it is the same unique factor (positive diagonal), with fewer flops and less rounding.
//! - A group's scale/zero is computed from its rows *after* the in-block updates of the rows
//!   before it (the reference reads rows not yet updated when a group starts mid-block).
//! - The error fed back is `w - dequant(q)` with the fp16 scale that is stored, so the
//!   compensation accounts for the scale's own rounding.
//! - `min_zero = 1` (v1 files, asymmetric) keeps every zero representable (see `rtn::scale_zero`).

use super::rtn::{code, scale_zero};
use super::{act_order_g_idx, group_rows, pack, zeros, HessianView, QuantLinear};
use crate::{LabError, Result};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::matmul::matmul;
use faer::linalg::triangular_solve::solve_lower_triangular_in_place;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use half::f16;
use rayon::prelude::*;

/// Rows per lazy-update block, as in the paper: large enough that the trailing GEMM dominates
/// (its cost K^2 N is independent of the block), small enough that the in-block row-by-row
/// updates (K * B * N / 2 multiply-adds) stay a few percent of it.
pub const BLOCK_ROWS: usize = 128;

/// AutoGPTQ's default dampening, 1% of the mean Hessian diagonal.
pub const DEFAULT_DAMP: f64 = 0.01;

#[derive(Debug, Clone, PartialEq)]
pub struct GptqParams {
    /// Rows per group; -1 = per-channel (one group over all of K).
    pub group_size: i32,
    pub sym: bool,
    /// Process rows in decreasing diag(H) order (`desc_act`).
    pub act_order: bool,
    /// Fix every group's scale/zero from the unmodified weights before quantizing.
    pub static_groups: bool,
    /// Fraction of the mean Hessian diagonal added to the diagonal.
    pub damp_percent: f64,
    /// Smallest true zero allowed: 1 for asymmetric v1 files (zero - 1 is stored), else 0.
    pub min_zero: u8,
}

impl Default for GptqParams {
    fn default() -> Self {
        GptqParams {
            group_size: 128,
            sym: true,
            act_order: false,
            static_groups: false,
            damp_percent: DEFAULT_DAMP,
            min_zero: 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GptqOutput {
    pub layer: QuantLinear,
    /// The paper's proxy loss: sum over rows of |w - q|^2 / (2 Hinv_ii^2).
    pub proxy_loss: f64,
    /// The absolute dampening added to H's diagonal.
    pub damp: f64,
    /// Rows whose input was always zero (quantized as 0).
    pub dead_rows: usize,
}

/// Quantize `w_kn` [k, n] (row = input channel) against its inputs' Hessian `h` [k, k]
/// (see `hessian::Hessian::matrix`).
pub fn quantize_gptq<H: HessianView + ?Sized>(
    w_kn: &[f32],
    k: usize,
    n: usize,
    h: &H,
    p: &GptqParams,
) -> Result<GptqOutput> {
    let bad = |r: String| LabError::invalid("quantize_gptq", r);
    super::check_weights("quantize_gptq", w_kn, k, n)?;
    if h.k() != k {
        return Err(bad(format!(
            "Hessian is {0} x {0}, expected K x K = {k} x {k}",
            h.k()
        )));
    }
    if !(p.damp_percent > 0.0 && p.damp_percent < 1.0) {
        return Err(LabError::invalid(
            "--damp",
            format!(
                "{}; expected a fraction in (0, 1), e.g. 0.01",
                p.damp_percent
            ),
        ));
    }
    let g = group_rows(p.group_size, k).map_err(bad)?;
    let groups = k / g;
    let per_channel = g == k;

    let mut w = w_kn.to_vec();
    let mut diag: Vec<f64> = (0..k).map(|i| h.at(i, i)).collect();
    if let Some(i) = diag.iter().position(|d| !d.is_finite() || *d < 0.0) {
        return Err(bad(format!(
            "Hessian diagonal [{i}] = {} (expected finite and >= 0)",
            diag[i]
        )));
    }
    let mut dead_rows = 0;
    for (i, d) in diag.iter_mut().enumerate() {
        if *d == 0.0 {
            *d = 1.0;
            w[i * n..(i + 1) * n].fill(0.0);
            dead_rows += 1;
        }
    }

    // Group parameters, column-major [n][groups] so each column's task owns one slice.
    let mut scales_cm = vec![f16::ZERO; n * groups];
    let mut zeros_cm = vec![0u8; n * groups];
    if p.static_groups || per_channel {
        for gi in 0..groups {
            let (s, z) = rows_params(&w, n, gi * g..(gi + 1) * g, p);
            for c in 0..n {
                scales_cm[c * groups + gi] = s[c];
                zeros_cm[c * groups + gi] = z[c];
            }
        }
    }

    // Processing order: perm[i] is the original row quantized i-th.
    let mut perm: Vec<usize> = (0..k).collect();
    if p.act_order {
        // Stable, so equal diagonals keep their original order (deterministic output).
        perm.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]));
    }
    let damp = p.damp_percent * diag.iter().sum::<f64>() / k as f64;
    let u = inverse_upper_cholesky(h, &diag, &perm, damp)?;

    let mut wp = vec![0f32; k * n];
    for (i, &r) in perm.iter().enumerate() {
        wp[i * n..(i + 1) * n].copy_from_slice(&w[r * n..(r + 1) * n]);
    }
    drop(w);

    // Block size: a multiple of the group size near BLOCK_ROWS, so a group never straddles two
    // blocks and its parameters see all the updates before it.
    let block = if per_channel {
        BLOCK_ROWS
    } else {
        g * BLOCK_ROWS.div_ceil(g)
    };
    let mut codes = vec![0u8; k * n];
    let mut loss = vec![0f64; n];
    let mut wblk = vec![0f32; n * block];
    let mut eblk = vec![0f32; n * block];
    let mut qblk = vec![0u8; n * block];
    let mut i1 = 0;
    while i1 < k {
        let bs = block.min(k - i1);
        let i2 = i1 + bs;
        // Block rows into column-major [n][bs]: each column runs its own sequential recursion.
        for ii in 0..bs {
            let row = &wp[(i1 + ii) * n..(i1 + ii + 1) * n];
            for (c, &v) in row.iter().enumerate() {
                wblk[c * bs + ii] = v;
            }
        }
        let perm = &perm;
        let u = &u;
        wblk[..n * bs]
            .par_chunks_mut(bs)
            .zip(eblk[..n * bs].par_chunks_mut(bs))
            .zip(qblk[..n * bs].par_chunks_mut(bs))
            .zip(scales_cm.par_chunks_mut(groups))
            .zip(zeros_cm.par_chunks_mut(groups))
            .zip(loss.par_iter_mut())
            .with_min_len(32)
            .for_each(|(((((wcol, ecol), qcol), scol), zcol), lsum)| {
                // The current group's scale widened once: f16 -> f32 per element cost 12% of
                // the solver's time (measured with perf at N = 2048).
                let (mut cur, mut s, mut z) = (usize::MAX, 0f32, 0u8);
                for ii in 0..bs {
                    let i = i1 + ii;
                    let gi = if p.static_groups { perm[i] / g } else { i / g };
                    if !p.static_groups && !per_channel && i % g == 0 {
                        let (lo, hi) = wcol[ii..ii + g]
                            .iter()
                            .fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
                        (scol[gi], zcol[gi]) = scale_zero(lo, hi, p.sym, p.min_zero);
                        cur = usize::MAX;
                    }
                    if gi != cur {
                        (cur, s, z) = (gi, scol[gi].to_f32(), zcol[gi]);
                    }
                    let wv = wcol[ii];
                    let q = code(wv, s, z);
                    qcol[ii] = q;
                    let dq = s * (f32::from(q) - f32::from(z));
                    let d = u[i * k + i];
                    let err = (wv - dq) / d;
                    *lsum += f64::from(wv - dq).powi(2) / (2.0 * f64::from(d).powi(2));
                    ecol[ii] = err;
                    let urow = &u[i * k + i + 1..i * k + i2];
                    for (wj, &uj) in wcol[ii + 1..].iter_mut().zip(urow) {
                        *wj -= err * uj;
                    }
                }
            });
        for ii in 0..bs {
            let dst = &mut codes[perm[i1 + ii] * n..(perm[i1 + ii] + 1) * n];
            for (c, q) in dst.iter_mut().enumerate() {
                *q = qblk[c * bs + ii];
            }
        }
        // Lazy update of every later row: W[i2.., :] -= U[i1..i2, i2..]^T E, E [bs, n].
        if i2 < k {
            let dst = MatMut::from_row_major_slice_mut(&mut wp[i2 * n..], k - i2, n);
            let ut = MatRef::from_row_major_slice(u, k, k)
                .submatrix(i1, i2, bs, k - i2)
                .transpose();
            let e = MatRef::from_column_major_slice(&eblk[..n * bs], bs, n);
            matmul(dst, Accum::Add, ut, e, -1.0f32, Par::rayon(0));
        }
        i1 = i2;
    }

    let mut scales = vec![f16::ZERO; groups * n];
    let mut zero_codes = vec![0u8; groups * n];
    for c in 0..n {
        for gi in 0..groups {
            scales[gi * n + c] = scales_cm[c * groups + gi];
            zero_codes[gi * n + c] = zeros_cm[c * groups + gi];
        }
    }
    let g_idx = (p.act_order && !p.static_groups && !per_channel)
        .then(|| act_order_g_idx(&perm, g))
        .filter(|v| super::gidx::is_act_order(v, g));
    let qzeros = pack::pack_zeros(&zero_codes, groups, n);
    let layer = QuantLinear {
        k,
        n,
        group_size: g,
        qweight: pack::pack_codes_kn(&codes, k, n),
        symmetric: zeros::is_symmetric_true(&qzeros),
        qzeros,
        scales,
        g_idx,
        bias: None,
    };
    layer
        .validate()
        .map_err(|r| bad(format!("internal: produced an invalid layer: {r}")))?;
    Ok(GptqOutput {
        layer,
        proxy_loss: loss.iter().sum(),
        damp,
        dead_rows,
    })
}

/// Scale and zero per column over rows `rows` of `w` [.., n].
fn rows_params(
    w: &[f32],
    n: usize,
    rows: std::ops::Range<usize>,
    p: &GptqParams,
) -> (Vec<f16>, Vec<u8>) {
    let mut lo = vec![0f32; n];
    let mut hi = vec![0f32; n];
    for r in rows {
        for (c, &v) in w[r * n..(r + 1) * n].iter().enumerate() {
            lo[c] = lo[c].min(v);
            hi[c] = hi[c].max(v);
        }
    }
    lo.iter()
        .zip(&hi)
        .map(|(&l, &h)| scale_zero(l, h, p.sym, p.min_zero))
        .unzip()
}

/// Columns of L'^-1 solved at once in `inverse_upper_cholesky`: wide enough for faer's blocked
/// solve to run at GEMM speed, narrow enough to be small beside U (8 K x 256 bytes: 22 MB at
/// K = 11008).
const INVERSE_COLS: usize = 256;

/// U, upper triangular, f32 row-major [k, k], with U^T U = (Hp + damp I)^-1 where
/// `Hp[i][j] = H[perm[i]][perm[j]]` and `diag` replaces H's diagonal (dead rows set to 1).
///
/// Memory: the f64 factor (8 K^2) and U (4 K^2), plus one block of `INVERSE_COLS` columns of
/// L'^-1 at a time (8 K x 256): the whole f64 inverse beside the factor was 8 K^2 more
/// (0.97 GB at K = 11008), the largest buffer of a 7B run.
pub fn inverse_upper_cholesky<H: HessianView + ?Sized>(
    h: &H,
    diag: &[f64],
    perm: &[usize],
    damp: f64,
) -> Result<Vec<f32>> {
    let k = perm.len();
    // A = J Hp J (J reverses the order) in place of H; A = L' L'^T gives Hp = R R^T with
    // R = J L' J upper, so U = R^-1 = J L'^-1 J.
    let rev = |a: usize| perm[k - 1 - a];
    let mut a = Mat::from_fn(k, k, |i, j| {
        if i == j {
            diag[rev(i)] + damp
        } else {
            h.at(rev(i), rev(j))
        }
    });
    let par = Par::rayon(0);
    let mut buf = MemBuffer::new(cholesky_in_place_scratch::<f64>(k, par, Default::default()));
    cholesky_in_place(
        a.as_mut(),
        Default::default(),
        par,
        MemStack::new(&mut buf),
        Default::default(),
    )
    .map_err(|e| {
        LabError::invalid(
            "Hessian",
            format!(
                "not positive definite after adding damp {damp:.3e} to its diagonal ({e:?}); \
                 raise --damp (e.g. 0.1) or use more calibration tokens"
            ),
        )
    })?;
    // L'^-1 a block of columns at a time: columns c0..c1 are zero above row c0, and below it
    // they solve L'[c0.., c0..] Y = the identity's columns c0..c1 (rows c0..). U = J L'^-1 J.
    let mut u = vec![0f32; k * k];
    let mut c0 = 0;
    while c0 < k {
        let b = INVERSE_COLS.min(k - c0);
        let mut y = Mat::<f64>::from_fn(k - c0, b, |r, c| if r == c { 1.0 } else { 0.0 });
        solve_lower_triangular_in_place(
            a.as_ref().submatrix(c0, c0, k - c0, k - c0),
            y.as_mut(),
            par,
        );
        for c in 0..b {
            let j = k - 1 - (c0 + c);
            // Entries above the diagonal of column c0 + c are zero (triangular): rows c.. only.
            for r in c..k - c0 {
                u[(k - 1 - (c0 + r)) * k + j] = y[(r, c)] as f32;
            }
        }
        c0 += b;
    }
    drop(a);
    if let Some(i) = (0..k).find(|&i| !(u[i * k + i].is_finite() && u[i * k + i] > 0.0)) {
        return Err(LabError::invalid(
            "Hessian",
            format!(
                "inverse factor has diagonal [{i}] = {}; the Hessian is too ill-conditioned \
                 even with damp {damp:.3e}: raise --damp",
                u[i * k + i]
            ),
        ));
    }
    Ok(u)
}

#[cfg(test)]
#[path = "solver_tests.rs"]
mod tests;
