//! The f64 ground truth: dequantize a canonical layer and multiply in f64 on the CPU.
//! Kernel error is measured against this, apart from quantization error.

use crate::gptq::QuantLinear;
use half::f16;

/// W [k, n] row-major, `W[k][n] = scale[g][n] * (q[k][n] - zero[g][n])`, `g = group_of(k)`,
/// with true zeros (the canonical form).
pub fn dequantize(l: &QuantLinear) -> Vec<f64> {
    let (k, n) = (l.k, l.n);
    let codes = l.codes();
    let zeros = l.zeros();
    let mut w = vec![0f64; k * n];
    for r in 0..k {
        let g = l.group_of(r);
        for c in 0..n {
            let s = l.scales[g * n + c].to_f64();
            w[r * n + c] = s * (f64::from(codes[r * n + c]) - f64::from(zeros[g * n + c]));
        }
    }
    w
}

/// y [m, n] = x [m, k] * w [k, n], all f64 row-major.
pub fn matmul_f64(x: &[f64], m: usize, k: usize, w_kn: &[f64], n: usize) -> Vec<f64> {
    assert_eq!(x.len(), m * k, "matmul_f64: x is not [m, k]");
    assert_eq!(w_kn.len(), k * n, "matmul_f64: w is not [k, n]");
    let mut y = vec![0f64; m * n];
    for i in 0..m {
        let yi = &mut y[i * n..(i + 1) * n];
        for (kk, &xv) in x[i * k..(i + 1) * k].iter().enumerate() {
            for (o, &wv) in yi.iter_mut().zip(&w_kn[kk * n..(kk + 1) * n]) {
                *o += xv * wv;
            }
        }
    }
    y
}

/// y [m, n] = x [m, k] (fp16) * dequantize(l) (+ bias), in f64.
pub fn gptq_matmul(x: &[f16], m: usize, l: &QuantLinear) -> Vec<f64> {
    let xf: Vec<f64> = x.iter().map(|v| v.to_f64()).collect();
    let mut y = matmul_f64(&xf, m, l.k, &dequantize(l), l.n);
    if let Some(b) = &l.bias {
        for row in y.chunks_exact_mut(l.n) {
            for (o, bv) in row.iter_mut().zip(b) {
                *o += bv.to_f64();
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gptq::pack::{pack_codes_kn, pack_zeros};

    #[test]
    fn dequantize_and_matmul_match_hand_values() {
        // k = 8, n = 8, one group; column c has code r (row), zero c, scale 0.5 (exact in f16).
        let (k, n) = (8, 8);
        let codes: Vec<u8> = (0..k * n).map(|i| (i / n) as u8).collect();
        let zeros: Vec<u8> = (0..n as u8).collect();
        let l = QuantLinear {
            k,
            n,
            group_size: 8,
            qweight: pack_codes_kn(&codes, k, n),
            qzeros: pack_zeros(&zeros, 1, n),
            scales: vec![f16::from_f32(0.5); n],
            g_idx: None,
            bias: Some(vec![f16::from_f32(1.0); n]),
            symmetric: false,
        };
        let w = dequantize(&l);
        assert_eq!(w[3 * n + 5], 0.5 * (3.0 - 5.0));
        // x = all ones: y[c] = 0.5 * sum_r (r - c) + 1 = 0.5 * (28 - 8c) + 1.
        let y = gptq_matmul(&vec![f16::ONE; k], 1, &l);
        for (c, v) in y.iter().enumerate() {
            assert_eq!(*v, 0.5 * (28.0 - 8.0 * c as f64) + 1.0);
        }
    }
}
