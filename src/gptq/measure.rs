//! How much a quantized layer changes the layer's output on given inputs: the quantity GPTQ
//! minimizes, measured in f64 on the dequantized weights.

use super::QuantLinear;
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
