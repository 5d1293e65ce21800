//! The f64 reference of a check case, computed in parallel over column blocks: the same math as
//! `crate::reference::gptq_matmul` (W = s (q - z) in f64, then x . W) without materialising W
//! (566 MB in f64 for 13824 x 5120), plus S = sum_k |x_k W_kn| + |bias_n| for the tolerance.
//! A test pins it to `gptq_matmul`.

use crate::gptq::QuantLinear;
use half::f16;

/// (y_ref [m, n], abs_sum [m, n]).
pub fn reference(x: &[f16], m: usize, l: &QuantLinear, threads: usize) -> (Vec<f64>, Vec<f64>) {
    let (k, n) = (l.k, l.n);
    let xf: Vec<f64> = x[..m * k].iter().map(|v| v.to_f64()).collect();
    let zeros = l.zeros(); // u8 [groups, n]
    let threads = threads.clamp(1, n.div_ceil(8));
    let width = n.div_ceil(threads).div_ceil(8) * 8;
    let blocks: Vec<(usize, Vec<f64>, Vec<f64>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(width)
            .map(|c0| {
                let (xf, zeros) = (&xf, &zeros);
                s.spawn(move || {
                    let c1 = (c0 + width).min(n);
                    let w = c1 - c0;
                    let (mut y, mut a) = (vec![0f64; m * w], vec![0f64; m * w]);
                    let mut wrow = vec![0f64; w];
                    for r in 0..k {
                        let g = l.group_of(r);
                        let words = &l.qweight[(r / 8) * n + c0..(r / 8) * n + c1];
                        let (sc, zs) = (
                            &l.scales[g * n + c0..g * n + c1],
                            &zeros[g * n + c0..g * n + c1],
                        );
                        let shift = 4 * (r % 8);
                        for (j, o) in wrow.iter_mut().enumerate() {
                            let q = (words[j] >> shift) & 0xF;
                            *o = sc[j].to_f64() * (f64::from(q) - f64::from(zs[j]));
                        }
                        for i in 0..m {
                            let xv = xf[i * k + r];
                            let (yi, ai) = (&mut y[i * w..(i + 1) * w], &mut a[i * w..(i + 1) * w]);
                            for j in 0..w {
                                let t = xv * wrow[j];
                                yi[j] += t;
                                ai[j] += t.abs();
                            }
                        }
                    }
                    (c0, y, a)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("reference worker panicked"))
            .collect()
    });
    let (mut y, mut a) = (vec![0f64; m * n], vec![0f64; m * n]);
    for (c0, yb, ab) in blocks {
        let w = yb.len() / m.max(1);
        for i in 0..m {
            y[i * n + c0..i * n + c0 + w].copy_from_slice(&yb[i * w..(i + 1) * w]);
            a[i * n + c0..i * n + c0 + w].copy_from_slice(&ab[i * w..(i + 1) * w]);
        }
    }
    if let Some(b) = &l.bias {
        for i in 0..m {
            for c in 0..n {
                let bv = b[c].to_f64();
                y[i * n + c] += bv;
                a[i * n + c] += bv.abs();
            }
        }
    }
    (y, a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::cases::{build_inputs, matrix};
    use crate::kernels::registry::Family;

    #[test]
    fn matches_the_crate_reference_on_every_quick_case() {
        for c in matrix(Family::Gemv, true, 3) {
            let (l, x) = build_inputs(&c).unwrap();
            let x = c.reference_x(&x);
            let want = crate::reference::gptq_matmul(&x, c.m, &l);
            for threads in [1, 3] {
                let (y, a) = reference(&x, c.m, &l, threads);
                for (i, (&g, &w)) in y.iter().zip(&want).enumerate() {
                    // Same f64 products, possibly another summation order.
                    assert!(
                        (g - w).abs() <= 1e-12 * a[i],
                        "{}: [{i}] {g} vs {w}",
                        c.describe()
                    );
                    assert!(a[i] >= g.abs() - 1e-12);
                }
            }
        }
    }
}
