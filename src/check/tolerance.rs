//! How far a kernel's fp16 output may be from the f64 reference, per arithmetic model, and the
//! element-wise comparison. Rigorous worst-case bounds (a false failure costs a GPU run):
//!
//!   |y - ref| <= ATOL + (1 + U16) * (c16 * U16 + (K + 8) * U32) * S + U16 * |ref|
//!
//! S = sum_k |x_k W_kn| + |bias_n| (computed in f64 beside the reference). Derivation, one line each:
//!   * output rounding to fp16: |fl16(y32) - y32| <= U16 |y32| <= U16 (|ref| + E), hence U16|ref| and (1 + U16) E;
//!   * fp32 accumulation of K products (+ scale multiply, bias add) in any order: (K + 8) * U32 * S;
//!   * fp16 arithmetic before the fp32 sum: c16 * U16 * S (c16 = 4.01 for 4-term fp16 FMA chains:
//!     gamma_4 = 4u / (1 - 4u); 1 for one rounding of W to fp16), 0 when products are exact in fp32;
//!   * ATOL = 2^-24: one fp16 subnormal step, for results that round into the subnormal range.
//! Such bounds cannot see a single lost term at large K; the matrix has small-K shapes for that,
//! and every row reports its worst err/tol margin (a healthy kernel sits far below 1).

use crate::kernels::gemv::{self, GemvKind};
use crate::kernels::registry::{Family, Variant};
use half::f16;
use serde::Serialize;

/// fp16 unit roundoff: relative error of one rounding to fp16 (10 stored mantissa bits).
pub const U16: f64 = 1.0 / 2048.0;
/// fp32 unit roundoff.
pub const U32: f64 = 1.0 / 16_777_216.0;
/// One fp16 subnormal step (2^-24).
pub const ATOL: f64 = 1.0 / 16_777_216.0;
/// Mismatches printed per failing launch (llm.c stops after ten too).
pub const MAX_PRINTED_MISMATCHES: usize = 10;

/// The arithmetic a variant does before its fp32 accumulation.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ErrorModel {
    /// Multiples of U16 on S: fp16 roundings per term before the fp32 sum.
    pub c16: f64,
    pub why: &'static str,
}

pub fn error_model(v: &Variant) -> ErrorModel {
    const CHAIN4: ErrorModel = ErrorModel {
        c16: 4.01,
        why: "fp16 products of exact (q - z) in 4-term HFMA2 chains, then fp32",
    };
    match (v.family, gemv::kind(v)) {
        (Family::Gemv, Ok(GemvKind::Naive | GemvKind::Gather)) => ErrorModel {
            c16: 0.0,
            why: "x * s * (q - z) exact in fp32, fp32 accumulate",
        },
        (Family::Gemv, Ok(GemvKind::Vec | GemvKind::Perm | GemvKind::SplitK)) => CHAIN4,
        // W rounded once to fp16; one more rounding's worth for cuBLAS's internal choices
        // (tensor-core accumulation order, split-K) that we cannot see.
        (Family::Gemv, Ok(GemvKind::CublasF16 | GemvKind::DequantCublas)) => ErrorModel {
            c16: 2.0,
            why: "W rounded once to fp16, cuBLAS fp32 compute",
        },
        // Families that have not declared their model get the fp16-chain bound.
        _ => CHAIN4,
    }
}

/// Allowed |y - ref| for one output element.
pub fn tolerance(model: &ErrorModel, k: usize, reference: f64, abs_sum: f64) -> f64 {
    let e = (model.c16 * U16 + (k as f64 + 8.0) * U32) * abs_sum;
    ATOL + (1.0 + U16) * e + U16 * reference.abs()
}

#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    pub row: usize,
    pub col: usize,
    pub got: f64,
    pub want: f64,
    pub err: f64,
    pub tol: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Elements outside tolerance (NaN/inf count as outside).
    pub bad: usize,
    /// The element with the largest err/tol.
    pub worst: Option<Mismatch>,
    /// Largest err/tol over all elements (inf for a NaN).
    pub margin: f64,
    /// The first mismatches in row-major order.
    pub first: Vec<Mismatch>,
}

/// Compares fp16 `got` [m, n] with the f64 reference and its abs-sum, element by element.
pub fn compare(
    got: &[f16],
    want: &[f64],
    abs_sum: &[f64],
    n: usize,
    k: usize,
    model: &ErrorModel,
) -> Comparison {
    let mut c = Comparison {
        bad: 0,
        worst: None,
        margin: 0.0,
        first: Vec::new(),
    };
    for (i, ((g, &w), &a)) in got.iter().zip(want).zip(abs_sum).enumerate() {
        let g = g.to_f64();
        let tol = tolerance(model, k, w, a);
        let err = if g.is_finite() {
            (g - w).abs()
        } else {
            f64::INFINITY
        };
        let ratio = err / tol;
        let mm = || Mismatch {
            row: i / n,
            col: i % n,
            got: g,
            want: w,
            err,
            tol,
        };
        if ratio > c.margin || c.worst.is_none() {
            c.margin = c.margin.max(ratio);
            c.worst = Some(mm());
        }
        if !(err <= tol) {
            c.bad += 1;
            if c.first.len() < MAX_PRINTED_MISMATCHES {
                c.first.push(mm());
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_and_out_of_tolerance_elements_fail_and_are_located() {
        let m = ErrorModel { c16: 4.01, why: "" };
        let want = [1.0, 2.0, 3.0, 4.0];
        let abs = [10.0; 4];
        let got = [
            f16::from_f64(1.0),
            f16::NAN,
            f16::from_f64(3.0),
            f16::from_f64(4.5),
        ];
        let c = compare(&got, &want, &abs, 2, 64, &m);
        assert_eq!(c.bad, 2);
        assert_eq!((c.first[0].row, c.first[0].col), (0, 1));
        assert_eq!((c.first[1].row, c.first[1].col), (1, 1));
        assert!(c.margin.is_infinite());
        let w = c.worst.unwrap();
        assert_eq!((w.row, w.col), (0, 1));
    }

    #[test]
    fn an_exact_fp16_result_passes_with_a_small_margin() {
        let m = ErrorModel { c16: 0.0, why: "" };
        let want = [0.1f64, -7.3];
        let got: Vec<f16> = want.iter().map(|&w| f16::from_f64(w)).collect();
        let c = compare(&got, &want, &[0.2, 8.0], 2, 4096, &m);
        assert_eq!(c.bad, 0);
        // Rounding to fp16 costs at most half a U16-ulp: margin <= ~1.
        assert!(c.margin <= 1.0, "{}", c.margin);
    }

    #[test]
    fn tolerance_grows_with_k_and_the_fp16_chain() {
        let naive = ErrorModel { c16: 0.0, why: "" };
        let chain = ErrorModel { c16: 4.01, why: "" };
        assert!(tolerance(&chain, 4096, 0.0, 1.0) > 8.0 * tolerance(&naive, 4096, 0.0, 1.0));
        assert!(tolerance(&naive, 13824, 0.0, 1.0) > tolerance(&naive, 4096, 0.0, 1.0));
    }
}
