//! Round-to-nearest 4-bit quantizer, exactly the contract's formulas (../shared/gptq-format.md,
//! "Quantizer"): it writes test checkpoints and is the RTN baseline.
//!
//! Per (group, column): asymmetric `scale = (max - min) / 15`, `zero = round(-min / scale)`;
//! symmetric `max = max(|min|, max)`, `scale = 2 max / 15`, `zero = 8`;
//! `q = clamp(round(w / scale) + zero, 0, 15)`. As in GPTQ's quantizer the range always includes 0
//! (min <= 0 <= max) so the zero is a representable code, and an all-zero group gets [-1, 1].

use super::{gidx, group_rows, pack, zeros, QuantLinear};
use crate::{LabError, Result};
use half::f16;

const MAXQ: f32 = 15.0;

/// g_idx for act-order: `order[r]` is the row quantized r-th (decreasing Hessian diagonal), and
/// groups are consecutive in that order: `g_idx[order[r]] = r / G`.
pub fn act_order_g_idx(order: &[usize], group_size: usize) -> Vec<i32> {
    let mut g = vec![0i32; order.len()];
    for (r, &row) in order.iter().enumerate() {
        g[row] = (r / group_size) as i32;
    }
    g
}

/// The fp16 scale actually stored. Rounded *up* to the next f16 when nearest rounding would
/// shrink it: with the stored scale >= the real one, `w / scale + zero` stays within
/// [-0.5, 15.5], so clamping never costs more than scale/2 (nearest rounding could exceed it by
/// up to 15 * 2^-11 of a step at the top of the range).
fn stored_scale(s: f32) -> f16 {
    let h = f16::from_f32(s);
    if h.to_f32() >= s {
        h
    } else {
        f16::from_bits(h.to_bits() + 1) // s > 0, so the next bit pattern is the next larger f16
    }
}

/// Scale and true zero of one (group, column) whose weights span [`lo`, `hi`] (the caller
/// starts both at 0, so min <= 0 <= max). `min_zero` 1 keeps an asymmetric zero representable in
/// v1 files (which store zero - 1): a range that would get zero 0 (lo > -scale/2) is instead
/// spread over codes 1..15, `scale = hi / 14`, costing at most a fifteenth of the resolution
/// for that group. GPTQ reuses this for each group it opens.
pub fn scale_zero(lo: f32, hi: f32, sym: bool, min_zero: u8) -> (f16, u8) {
    let (mut mn, mut mx) = (lo.min(0.0), hi.max(0.0));
    if sym {
        mx = mx.max(-mn);
        mn = -mx;
    }
    if mx == mn {
        (mn, mx) = (-1.0, 1.0);
    }
    let s = stored_scale((mx - mn) / MAXQ);
    if sym {
        return (s, 8);
    }
    let z = (-mn / s.to_f32()).round().clamp(0.0, MAXQ) as u8;
    if z >= min_zero {
        return (s, z);
    }
    // Here z = 0 and min_zero = 1: -mn < s/2 and mx > 0, so codes 1..15 cover [-s, 14 s].
    (stored_scale(mx / (MAXQ - 1.0)), 1)
}

/// The code of weight `w` under (`scale`, the stored fp16 scale widened, true `zero`):
/// `clamp(round(w / scale) + zero, 0, 15)`. The scale comes in as f32 so hot loops widen it once.
#[inline]
pub fn code(w: f32, scale: f32, zero: u8) -> u8 {
    ((w / scale).round() + f32::from(zero)).clamp(0.0, MAXQ) as u8
}

/// Quantize `w_kn` [k, n] (row k = input channel). `group_size` -1 = per-channel. `g_idx` gives
/// act-order grouping (see `act_order_g_idx`); `None` means `k / G`. A trivial g_idx is dropped
/// (canonical form keeps one only when it is not `k / G`).
pub fn quantize_rtn(
    w_kn: &[f32],
    k: usize,
    n: usize,
    group_size: i32,
    sym: bool,
    g_idx: Option<Vec<i32>>,
) -> Result<QuantLinear> {
    let bad = |r: String| LabError::invalid("quantize_rtn", r);
    super::check_weights("quantize_rtn", w_kn, k, n)?;
    let g = group_rows(group_size, k).map_err(bad)?;
    let groups = k / g;
    let g_idx = match g_idx {
        Some(v) => {
            gidx::validate_g_idx(&v, k, groups).map_err(bad)?;
            gidx::is_act_order(&v, g).then_some(v)
        }
        None => None,
    };
    let group_of = |r: usize| g_idx.as_ref().map_or(r / g, |v| v[r] as usize);

    // Range per (group, column), starting at 0 so that min <= 0 <= max.
    let mut lo = vec![0f32; groups * n];
    let mut hi = vec![0f32; groups * n];
    for r in 0..k {
        let gr = group_of(r);
        for c in 0..n {
            let w = w_kn[r * n + c];
            lo[gr * n + c] = lo[gr * n + c].min(w);
            hi[gr * n + c] = hi[gr * n + c].max(w);
        }
    }
    let mut scales = vec![f16::ZERO; groups * n];
    let mut zero_codes = vec![0u8; groups * n];
    for i in 0..groups * n {
        (scales[i], zero_codes[i]) = scale_zero(lo[i], hi[i], sym, 0);
    }
    let mut codes = vec![0u8; k * n];
    for r in 0..k {
        let gr = group_of(r);
        for c in 0..n {
            codes[r * n + c] = code(
                w_kn[r * n + c],
                scales[gr * n + c].to_f32(),
                zero_codes[gr * n + c],
            );
        }
    }
    let qzeros = pack::pack_zeros(&zero_codes, groups, n);
    Ok(QuantLinear {
        k,
        n,
        group_size: g,
        qweight: pack::pack_codes_kn(&codes, k, n),
        symmetric: zeros::is_symmetric_true(&qzeros),
        qzeros,
        scales,
        g_idx,
        bias: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::dequantize;
    use rand::{rngs::StdRng, seq::SliceRandom, RngExt, SeedableRng};

    fn weights(k: usize, n: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        // Skewed ranges per column so asymmetric zeros vary (some columns all positive).
        (0..k * n)
            .map(|i| rng.random_range(-1.0f32..1.0) * 0.05 + (i % n) as f32 * 0.01 - 0.1)
            .collect()
    }

    /// Every element's dequantization error is at most half its group's scale.
    fn assert_error_within_half_step(w: &[f32], l: &QuantLinear) {
        let d = dequantize(l);
        for r in 0..l.k {
            for c in 0..l.n {
                let s = l.scales[l.group_of(r) * l.n + c].to_f64();
                let e = (d[r * l.n + c] - f64::from(w[r * l.n + c])).abs();
                // 1e-5 of a step: w / s is an f32 (~16 * 2^-24 relative) rounded at the .5 boundary.
                assert!(
                    e <= s * (0.5 + 1e-5),
                    "row {r} col {c}: error {e} > scale/2 = {}",
                    s / 2.0
                );
            }
        }
    }

    #[test]
    fn rtn_error_is_bounded_by_half_a_step() {
        let (k, n) = (128, 32);
        let w = weights(k, n, 1);
        for &(gs, sym) in &[
            (32, false),
            (32, true),
            (64, false),
            (-1, false),
            (-1, true),
        ] {
            let l = quantize_rtn(&w, k, n, gs, sym, None).unwrap();
            l.validate().unwrap();
            assert_eq!(l.symmetric, sym, "gs {gs}");
            assert_error_within_half_step(&w, &l);
        }
    }

    #[test]
    fn rtn_with_act_order_groups_by_g_idx() {
        let (k, n, g) = (64, 16, 16);
        let w = weights(k, n, 2);
        let mut order: Vec<usize> = (0..k).collect();
        order.shuffle(&mut StdRng::seed_from_u64(3));
        let gi = act_order_g_idx(&order, g);
        assert_eq!(gi[order[17]], 1);
        let l = quantize_rtn(&w, k, n, g as i32, false, Some(gi.clone())).unwrap();
        assert!(l.is_act_order());
        assert_eq!(l.g_idx.as_deref(), Some(&gi[..]));
        assert_error_within_half_step(&w, &l);
        // A trivial g_idx is dropped from the canonical form.
        let t = quantize_rtn(&w, k, n, g as i32, false, Some(gidx::trivial_g_idx(k, g))).unwrap();
        assert_eq!(t.g_idx, None);
    }

    #[test]
    fn rtn_refuses_bad_shapes() {
        let w = vec![0.5f32; 96 * 8];
        assert!(quantize_rtn(&w, 96, 8, 64, false, None)
            .unwrap_err()
            .to_string()
            .contains("does not divide"));
        assert!(quantize_rtn(&w, 96, 8, 0, false, None).is_err());
        assert!(quantize_rtn(&w[1..], 96, 8, 32, false, None).is_err());
    }
}
