//! The GPTQ Hessian of one linear layer's inputs: `H = 2/n * sum_t x_t x_t^T` over the `n`
//! calibration tokens (K x K, K = in_features). It is the curvature of the layer's squared output
//! error in its weights, the same for every output column, so one Hessian serves q, k and v (and
//! gate and up), which read the same input.
//!
//! Cost: 2 K^2 flops per token, of which half are skipped (only the lower triangle is formed):
//! 128 x 2048 tokens at K = 4096 is 4.4e12 flops, the largest single cost of quantizing a layer.
//! The sum is kept in f32 and formed by faer's multi-threaded GEMM, as the published quantizers
//! keep it in fp32; the factorization that follows is done in f64 (`solver`).

use crate::{LabError, Result};
use faer::linalg::matmul::triangular::{matmul, BlockStructure};
use faer::{Accum, Mat, MatRef, Par};

/// Running sum of `x x^T` over calibration tokens.
pub struct Hessian {
    k: usize,
    /// Lower triangle (diagonal included) of sum_t x_t x_t^T; the upper part is not kept current.
    sum: Mat<f32>,
    tokens: usize,
}

impl Hessian {
    pub fn new(k: usize) -> Self {
        Hessian {
            k,
            sum: Mat::zeros(k, k),
            tokens: 0,
        }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// Calibration tokens seen so far.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Add `rows` tokens, `x` [rows, k] row-major (one layer input per row).
    pub fn add_batch(&mut self, x: &[f32], rows: usize) -> Result<()> {
        if x.len() != rows * self.k {
            return Err(LabError::invalid(
                "Hessian batch",
                format!(
                    "{} values, expected rows * K = {rows} * {} (one layer input per row)",
                    x.len(),
                    self.k
                ),
            ));
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(LabError::invalid(
                "Hessian batch",
                format!(
                    "input [{}, {}] is not finite (the layer below overflowed?)",
                    i / self.k,
                    i % self.k
                ),
            ));
        }
        if rows == 0 {
            return Ok(());
        }
        let xm = MatRef::from_row_major_slice(x, rows, self.k);
        matmul(
            self.sum.as_mut(),
            BlockStructure::TriangularLower,
            Accum::Add,
            xm.transpose(),
            BlockStructure::Rectangular,
            xm,
            BlockStructure::Rectangular,
            1.0f32,
            Par::rayon(0),
        );
        self.tokens += rows;
        Ok(())
    }

    /// `H = 2/n * sum x x^T` as a full symmetric f64 matrix. Err if no token was added.
    pub fn matrix(&self) -> Result<Mat<f64>> {
        if self.tokens == 0 {
            return Err(LabError::invalid(
                "Hessian",
                "no calibration tokens were added",
            ));
        }
        let scale = 2.0 / self.tokens as f64;
        let k = self.k;
        Ok(Mat::from_fn(k, k, |i, j| {
            let (r, c) = if i >= j { (i, j) } else { (j, i) };
            f64::from(self.sum[(r, c)]) * scale
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hessian_is_twice_the_mean_outer_product_over_batches() {
        let (k, rows) = (5, 7);
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.25)
            .collect();
        let mut h = Hessian::new(k);
        // Two batches (3 + 4 rows) must equal one pass over all 7.
        h.add_batch(&x[..3 * k], 3).unwrap();
        h.add_batch(&x[3 * k..], 4).unwrap();
        assert_eq!(h.tokens(), rows);
        let m = h.matrix().unwrap();
        for i in 0..k {
            for j in 0..k {
                let want: f64 = (0..rows)
                    .map(|t| f64::from(x[t * k + i]) * f64::from(x[t * k + j]))
                    .sum::<f64>()
                    * 2.0
                    / rows as f64;
                assert!((m[(i, j)] - want).abs() < 1e-5, "H[{i}][{j}]");
            }
        }
    }

    #[test]
    fn bad_batches_are_refused() {
        let mut h = Hessian::new(4);
        assert!(h.matrix().is_err(), "an empty Hessian must not be used");
        assert!(h.add_batch(&[1.0; 7], 2).is_err());
        let e = h.add_batch(&[1.0, f32::NAN, 0.0, 0.0], 1).unwrap_err();
        assert!(e.to_string().contains("[0, 1]"), "{e}");
        assert_eq!(h.tokens(), 0);
    }
}
