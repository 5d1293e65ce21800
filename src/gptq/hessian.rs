//! The GPTQ Hessian of one linear layer's inputs: `H = 2/n * sum_t x_t x_t^T` over the `n`
//! calibration tokens (K x K, K = in_features). It is the curvature of the layer's squared output
//! error in its weights, the same for every output column, so one Hessian serves q, k and v (and
//! gate and up), which read the same input.
//!
//! Cost: 2 K^2 flops per token, of which half are skipped (only the lower triangle is formed):
//! 128 x 2048 tokens at K = 4096 is 4.4e12 flops, the largest single cost of quantizing a layer.
//! The sum is kept in f32. Two backends form it (`HessianBackend`): faer's multi-threaded f32
//! GEMM (the published quantizers' arithmetic; ~145 GFLOP/s on 2 cores, 30 s for the sum above),
//! and Intel AMX tiles with bf16 inputs (`amx`; ~5x faster, precision argued and measured there
//! and in the tests below), chosen automatically when the CPU has them. The factorization that
//! follows is done in f64 (`solver`).

use crate::{LabError, Result};
use faer::linalg::matmul::triangular::{matmul, BlockStructure};
use faer::{Accum, Mat, MatRef, Par};

/// How the products are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HessianBackend {
    /// faer's f32 GEMM (lower triangle).
    F32,
    /// bf16 inputs, f32 accumulation on AMX tiles (`amx`).
    Bf16Amx,
}

impl HessianBackend {
    /// The fastest this machine offers: AMX when present, else f32.
    pub fn auto() -> Self {
        if amx_available() {
            HessianBackend::Bf16Amx
        } else {
            HessianBackend::F32
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            HessianBackend::F32 => "f32",
            HessianBackend::Bf16Amx => "bf16-amx",
        }
    }

    /// Parse a `--hessian` value: auto | f32 | bf16-amx (refused where AMX is missing).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::auto()),
            "f32" => Ok(HessianBackend::F32),
            "bf16-amx" if amx_available() => Ok(HessianBackend::Bf16Amx),
            "bf16-amx" => Err(LabError::invalid(
                "--hessian",
                "bf16-amx needs a CPU with AMX-BF16 tiles (and a Linux kernel that grants them); \
                 this one has none: use f32 or auto",
            )),
            other => Err(LabError::invalid(
                "--hessian",
                format!("'{other}' is not a backend; expected auto, f32 or bf16-amx"),
            )),
        }
    }
}

/// AMX tiles usable here (x86_64 Linux with AMX-BF16 only).
pub fn amx_available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        super::amx::available()
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}

/// Side of the running sum for a backend (see `Hessian::sum`).
fn padded_side(k: usize, backend: HessianBackend) -> usize {
    match backend {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        HessianBackend::Bf16Amx => super::amx::padded(k),
        _ => k,
    }
}

/// Running sum of `x x^T` over calibration tokens.
pub struct Hessian {
    k: usize,
    backend: HessianBackend,
    /// Lower triangle (diagonal included) of sum_t x_t x_t^T; the upper part is not kept current.
    /// K x K, or padded to a multiple of 32 for the AMX backend (`amx::padded`; rows and columns
    /// past K are never read).
    sum: Mat<f32>,
    tokens: usize,
}

impl Hessian {
    /// With the fastest backend this machine has (`HessianBackend::auto`).
    pub fn new(k: usize) -> Self {
        Self::with_backend(k, HessianBackend::auto())
    }

    /// With a chosen backend; `Bf16Amx` where AMX is missing falls back to f32 (use
    /// `HessianBackend::parse` to refuse it up front instead).
    pub fn with_backend(k: usize, backend: HessianBackend) -> Self {
        let backend = if backend == HessianBackend::Bf16Amx && !amx_available() {
            HessianBackend::F32
        } else {
            backend
        };
        Hessian {
            k,
            backend,
            sum: Mat::zeros(padded_side(k, backend), padded_side(k, backend)),
            tokens: 0,
        }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn backend(&self) -> HessianBackend {
        self.backend
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
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        if self.backend == HessianBackend::Bf16Amx {
            super::amx::add_xtx_lower(&mut self.sum, x, rows, self.k)?;
            self.tokens += rows;
            return Ok(());
        }
        let xm = MatRef::from_row_major_slice(x, rows, self.k);
        matmul(
            self.sum.as_mut().submatrix_mut(0, 0, self.k, self.k),
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

    /// `H = 2/n * sum x x^T` read in place from the f32 sum, each entry scaled to f64 as it is
    /// read (the values `matrix` holds, without its 8 K^2 bytes). Err if no token was added.
    pub fn scaled(&self) -> Result<ScaledSum<'_>> {
        if self.tokens == 0 {
            return Err(LabError::invalid(
                "Hessian",
                "no calibration tokens were added",
            ));
        }
        Ok(ScaledSum {
            sum: self.sum.as_ref(),
            k: self.k,
            scale: 2.0 / self.tokens as f64,
        })
    }

    /// `H = 2/n * sum x x^T` as a full symmetric f64 matrix. Err if no token was added.
    pub fn matrix(&self) -> Result<Mat<f64>> {
        let h = self.scaled()?;
        Ok(Mat::from_fn(self.k, self.k, |i, j| h.at(i, j)))
    }
}

/// A symmetric K x K Hessian read in f64, one entry at a time. The solver and the error measure
/// read it through this, so `lab quantize` can hand them the f32 running sum (4 K^2 bytes,
/// `Hessian::scaled`) instead of an f64 copy (8 K^2: 0.97 GB at K = 11008); tests and examples
/// pass a full `Mat<f64>`.
pub trait HessianView: Sync {
    fn k(&self) -> usize;
    /// H[i][j] (= H[j][i]).
    fn at(&self, i: usize, j: usize) -> f64;
}

impl HessianView for Mat<f64> {
    fn k(&self) -> usize {
        self.nrows()
    }
    fn at(&self, i: usize, j: usize) -> f64 {
        self[(i, j)]
    }
}

/// `Hessian::scaled`: the lower triangle of the f32 sum times 2/n.
#[derive(Clone, Copy)]
pub struct ScaledSum<'a> {
    sum: MatRef<'a, f32>,
    k: usize,
    scale: f64,
}

impl HessianView for ScaledSum<'_> {
    fn k(&self) -> usize {
        self.k
    }
    fn at(&self, i: usize, j: usize) -> f64 {
        let (r, c) = if i >= j { (i, j) } else { (j, i) };
        f64::from(self.sum[(r, c)]) * self.scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hessian_is_twice_the_mean_outer_product_over_batches() {
        let (k, rows) = (5, 7);
        // Quarter steps: exact in bf16 too, so both backends must give the same numbers.
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.25)
            .collect();
        for backend in [HessianBackend::F32, HessianBackend::auto()] {
            let mut h = Hessian::with_backend(k, backend);
            // Two batches (3 + 4 rows) must equal one pass over all 7.
            h.add_batch(&x[..3 * k], 3).unwrap();
            h.add_batch(&x[3 * k..], 4).unwrap();
            assert_eq!(h.tokens(), rows);
            let m = h.matrix().unwrap();
            for i in 0..k {
                for j in 0..k {
                    let want = reference_entry(&x, rows, k, i, j);
                    assert!((m[(i, j)] - want).abs() < 1e-5, "{backend:?} H[{i}][{j}]");
                }
            }
        }
    }

    #[test]
    fn the_scaled_sum_reads_what_the_f64_matrix_holds_and_solves_alike() {
        let (k, rows, n) = (40, 90, 8);
        let x = crate::gptq::synthetic::inputs(
            rows,
            k,
            crate::gptq::synthetic::InputShape::CORRELATED,
            3,
        );
        let mut h = Hessian::new(k);
        h.add_batch(&x, rows).unwrap();
        let (view, full) = (h.scaled().unwrap(), h.matrix().unwrap());
        assert_eq!(view.k(), k);
        for i in 0..k {
            for j in 0..k {
                assert_eq!(view.at(i, j), full[(i, j)], "H[{i}][{j}]");
                assert_eq!(view.at(i, j), view.at(j, i), "symmetric");
            }
        }
        let w = crate::gptq::synthetic::weights(k, n, 4);
        for act_order in [false, true] {
            let p = crate::gptq::GptqParams {
                group_size: 8,
                act_order,
                ..Default::default()
            };
            let a = crate::gptq::quantize_gptq(&w, k, n, &view, &p).unwrap();
            let b = crate::gptq::quantize_gptq(&w, k, n, &full, &p).unwrap();
            assert_eq!(a.layer, b.layer, "act_order {act_order}");
        }
        assert!(Hessian::new(3).scaled().is_err(), "no tokens, no H");
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

    /// H[i][j] = 2/n sum_t x_ti x_tj in f64, `x` [rows, k] row-major.
    fn reference_entry(x: &[f32], rows: usize, k: usize, i: usize, j: usize) -> f64 {
        (0..rows)
            .map(|t| f64::from(x[t * k + i]) * f64::from(x[t * k + j]))
            .sum::<f64>()
            * 2.0
            / rows as f64
    }

    /// H from a backend, as f64, over `rows` tokens of `x`, fed in batches of `batch` rows.
    fn h_of(backend: HessianBackend, x: &[f32], rows: usize, k: usize, batch: usize) -> Mat<f64> {
        let mut h = Hessian::with_backend(k, backend);
        assert_eq!(h.backend(), backend);
        for s in (0..rows).step_by(batch) {
            let n = batch.min(rows - s);
            h.add_batch(&x[s * k..(s + n) * k], n).unwrap();
        }
        h.matrix().unwrap()
    }

    /// Like the GPU tests' skip: `SKIP <test>: <reason>` on a CPU without AMX-BF16 tiles, and
    /// with `REQUIRE_AMX=1` (on a machine that should have them) a skip is a failure.
    fn amx_or_skip(test: &str) -> bool {
        if amx_available() {
            return true;
        }
        let reason = "this CPU has no AMX-BF16 tiles (the bf16-amx backend is not used here)";
        if std::env::var("REQUIRE_AMX").is_ok_and(|v| v == "1") {
            panic!("REQUIRE_AMX=1 but {test} cannot run: {reason}");
        }
        crate::util::note_skip(test, reason);
        false
    }

    #[test]
    fn amx_sum_is_exact_for_bf16_representable_inputs_at_ragged_sizes() {
        if !amx_or_skip("amx exact") {
            return;
        }
        // K = 70 (not a multiple of 32), 1100 tokens (three 512-token passes, not a
        // multiple of 32), batches of 700: small integers / 8 are exact in bf16 and their
        // products and sums (< 2^24 / 64) are exact in f32, so any indexing slip shows.
        let (k, rows) = (70, 1100);
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 7919 % 31) as f32 - 15.0) / 8.0)
            .collect();
        let got = h_of(HessianBackend::Bf16Amx, &x, rows, k, 700);
        for i in 0..k {
            for j in 0..k {
                let want = reference_entry(&x, rows, k, i, j);
                // Only the final scaling (2/n in f64) may round differently.
                assert!(
                    (got[(i, j)] - want).abs() <= 1e-12 * want.abs().max(1.0),
                    "H[{i}][{j}] = {} want {want}",
                    got[(i, j)]
                );
            }
        }
    }

    #[test]
    fn amx_hessian_matches_f32_and_gives_the_same_gptq_quality() {
        use crate::gptq::measure::output_error;
        use crate::gptq::synthetic::{inputs, weights, InputShape};
        use crate::gptq::{quantize_gptq, GptqParams};
        if !amx_or_skip("amx vs f32") {
            return;
        }
        // Correlated inputs with outlier channels, the case where H's precision could matter.
        let (k, n, rows) = (256, 128, 2048);
        let x = inputs(rows, k, InputShape::OUTLIERS, 5);
        let h32 = h_of(HessianBackend::F32, &x, rows, k, 512);
        let hbf = h_of(HessianBackend::Bf16Amx, &x, rows, k, 512);
        let (mut num, mut den) = (0f64, 0f64);
        for j in 0..k {
            for i in 0..k {
                num += (h32[(i, j)] - hbf[(i, j)]).powi(2);
                den += h32[(i, j)].powi(2);
            }
        }
        let rel = (num / den).sqrt();
        eprintln!("bf16-amx vs f32 Hessian: relative Frobenius difference {rel:.3e}");
        // bf16 rounding is <= 2^-9 per input; averaged over 2048 tokens it is far smaller.
        assert!(rel < 2e-3, "relative Frobenius difference {rel:e}");
        assert!(
            rel > 0.0,
            "the bf16 path must actually round (else it is not what ran)"
        );

        let w = weights(k, n, 9);
        let held_out = inputs(1024, k, InputShape::OUTLIERS, 6);
        for act_order in [false, true] {
            let p = GptqParams {
                group_size: 64,
                act_order,
                ..GptqParams::default()
            };
            let e32 = output_error(
                &held_out,
                1024,
                &w,
                &quantize_gptq(&w, k, n, &h32, &p).unwrap().layer,
            )
            .relative;
            let ebf = output_error(
                &held_out,
                1024,
                &w,
                &quantize_gptq(&w, k, n, &hbf, &p).unwrap().layer,
            )
            .relative;
            eprintln!("act_order {act_order}: output error f32-H {e32:.6} bf16-H {ebf:.6}");
            assert!(
                (ebf - e32).abs() <= 0.01 * e32,
                "act_order {act_order}: output error f32-H {e32:.5} vs bf16-H {ebf:.5}"
            );
        }
    }

    #[test]
    fn backend_names_parse_and_unknown_ones_are_refused() {
        assert_eq!(HessianBackend::parse("f32").unwrap(), HessianBackend::F32);
        assert_eq!(
            HessianBackend::parse("auto").unwrap(),
            HessianBackend::auto()
        );
        let e = HessianBackend::parse("fp8").unwrap_err().to_string();
        assert!(e.contains("--hessian") && e.contains("fp8"), "{e}");
        assert_eq!(HessianBackend::parse("bf16-amx").is_ok(), amx_available());
    }
}
