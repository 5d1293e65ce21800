//! How much a quantized layer changes the layer's output on given inputs: the quantity GPTQ
//! minimizes, measured in f64 on the dequantized weights.

use super::{HessianView, QuantLinear};
use crate::reference::dequantize;
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OutputError {
    /// ||X (W - Wq)||_F / ||X W||_F.
    pub relative: f64,
    /// Mean squared error per output element.
    pub mse: f64,
}

/// Error of `q` against the original `w_kn` [k, n] on inputs `x` [m, k].
pub fn output_error(x: &[f32], m: usize, w_kn: &[f32], q: &QuantLinear) -> OutputError {
    let (k, n) = (q.k, q.n);
    assert_eq!(x.len(), m * k, "output_error: x is not [m, k]");
    assert_eq!(w_kn.len(), k * n, "output_error: w is not [k, n]");
    let dq = dequantize(q);
    let x64 = Mat::from_fn(m, k, |i, j| f64::from(x[i * k + j]));
    let w64 = MatRef::from_row_major_slice(w_kn, k, n);
    let dq64 = MatRef::from_row_major_slice(&dq, k, n);
    let w = Mat::from_fn(k, n, |i, j| f64::from(w64[(i, j)]));
    let diff = Mat::from_fn(k, n, |i, j| f64::from(w64[(i, j)]) - dq64[(i, j)]);
    let mut y = Mat::<f64>::zeros(m, n);
    let mut e = Mat::<f64>::zeros(m, n);
    matmul(
        y.as_mut(),
        Accum::Replace,
        x64.as_ref(),
        w.as_ref(),
        1.0,
        Par::rayon(0),
    );
    matmul(
        e.as_mut(),
        Accum::Replace,
        x64.as_ref(),
        diff.as_ref(),
        1.0,
        Par::rayon(0),
    );
    let (ny, ne) = (y.norm_l2(), e.norm_l2());
    OutputError {
        relative: if ny > 0.0 { ne / ny } else { ne },
        mse: ne * ne / (m * n) as f64,
    }
}

/// The relative output error over every input the Hessian `h` [k, k] summarizes
/// (H = 2/n sum x x^T, undamped): sqrt(tr(D^T H D) / tr(W^T H W)), D = W - dequant(q). It equals
/// `output_error(..).relative` on those inputs without keeping them.
///
/// Memory: W and D in f64 (16 K N bytes) and `ERROR_ROWS` rows of H and of H D at a time; H is
/// read through `HessianView`, never copied whole.
pub fn hessian_relative_error<H: HessianView + ?Sized>(
    h: &H,
    w_kn: &[f32],
    q: &QuantLinear,
) -> f64 {
    let (k, n) = (q.k, q.n);
    assert_eq!(w_kn.len(), k * n, "hessian_relative_error: w is not [k, n]");
    assert_eq!(h.k(), k, "hessian_relative_error: H is not [k, k]");
    let w = Mat::from_fn(k, n, |i, j| f64::from(w_kn[i * n + j]));
    let d = {
        let dq = dequantize(q);
        Mat::from_fn(k, n, |i, j| w[(i, j)] - dq[i * n + j])
    };
    // tr(M^T H M) = sum over row blocks R of <M[R, :], H[R, :] M>.
    let (mut num, mut den) = (0.0, 0.0);
    let mut r0 = 0;
    while r0 < k {
        let b = ERROR_ROWS.min(k - r0);
        let hb = Mat::from_fn(b, k, |i, j| h.at(r0 + i, j));
        let mut hm = Mat::<f64>::zeros(b, n);
        for (m, acc) in [(&d, &mut num), (&w, &mut den)] {
            matmul(
                hm.as_mut(),
                Accum::Replace,
                hb.as_ref(),
                m.as_ref(),
                1.0,
                Par::rayon(0),
            );
            for j in 0..n {
                for i in 0..b {
                    *acc += m[(r0 + i, j)] * hm[(i, j)];
                }
            }
        }
        r0 += b;
    }
    let (num, den) = (num.max(0.0), den.max(0.0));
    if den > 0.0 {
        (num / den).sqrt()
    } else {
        num.sqrt()
    }
}

/// Rows of H (and of H M) formed at once by `hessian_relative_error`: 8 x 256 x (K + N) bytes.
const ERROR_ROWS: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gptq::hessian::Hessian;
    use crate::gptq::quantize_rtn;
    use crate::gptq::synthetic::{inputs, weights, InputShape};

    #[test]
    fn hessian_error_equals_output_error_on_the_same_inputs() {
        let (m, k, n) = (200, 32, 16);
        let x = inputs(m, k, InputShape::OUTLIERS, 3);
        let w = weights(k, n, 4);
        let q = quantize_rtn(&w, k, n, 16, false, None).unwrap();
        let mut h = Hessian::new(k);
        h.add_batch(&x, m).unwrap();
        let a = hessian_relative_error(&h.matrix().unwrap(), &w, &q);
        let b = output_error(&x, m, &w, &q).relative;
        assert!(a > 0.0 && (a - b).abs() < 1e-4 * b, "{a} vs {b}");
    }

    #[test]
    fn hessian_error_over_several_row_blocks_and_from_the_f32_sum() {
        // K = 600: row blocks of 256, 256 and 88; H read from the f32 sum in place, as lab
        // quantize does, and from its f64 copy.
        let (m, k, n) = (700, 600, 24);
        let x = inputs(m, k, InputShape::OUTLIERS, 5);
        let w = weights(k, n, 6);
        let q = quantize_rtn(&w, k, n, 40, true, None).unwrap();
        let mut h = Hessian::new(k);
        h.add_batch(&x, m).unwrap();
        let a = hessian_relative_error(&h.scaled().unwrap(), &w, &q);
        let c = hessian_relative_error(&h.matrix().unwrap(), &w, &q);
        let b = output_error(&x, m, &w, &q).relative;
        assert_eq!(a, c, "the in-place view reads the f64 copy's values");
        assert!(a > 0.0 && (a - b).abs() < 1e-4 * b, "{a} vs {b}");
    }
}
