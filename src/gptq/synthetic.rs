//! Seeded synthetic layers for measuring quantizers where no model is needed: weights, and
//! calibration inputs with the two properties that make GPTQ matter in real LLMs, correlated
//! channels and a few outlier channels (LLaMA's hidden states have channels 20-100x larger than
//! the median; Dettmers et al., LLM.int8(), 2022).

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Standard normal samples by Box-Muller.
pub struct Gauss {
    rng: StdRng,
    spare: Option<f32>,
}

impl Gauss {
    pub fn new(seed: u64) -> Self {
        Gauss {
            rng: StdRng::seed_from_u64(seed),
            spare: None,
        }
    }
    pub fn sample(&mut self) -> f32 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        // u1 in (0, 1] so ln(u1) is finite.
        let u1 = 1.0 - self.rng.random::<f64>();
        let u2 = self.rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        self.spare = Some((r * s) as f32);
        (r * c) as f32
    }
    pub fn vec(&mut self, len: usize, std: f32) -> Vec<f32> {
        (0..len).map(|_| self.sample() * std).collect()
    }
}

/// Weights [k, n], normal with std 0.02 (the scale of LLaMA's linear weights).
pub fn weights(k: usize, n: usize, seed: u64) -> Vec<f32> {
    Gauss::new(seed).vec(k * n, 0.02)
}

/// How the synthetic inputs are shaped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputShape {
    /// Latent factors shared by all channels, as a fraction of K (smaller = more correlated).
    pub latent_fraction: f32,
    /// Independent noise per channel, relative to the shared part's scale.
    pub noise: f32,
    /// Every `outlier_every`-th channel (0 = none) is scaled by `outlier_scale`.
    pub outlier_every: usize,
    pub outlier_scale: f32,
}

impl InputShape {
    /// Correlated channels, no outliers.
    pub const CORRELATED: InputShape = InputShape {
        latent_fraction: 0.25,
        noise: 0.1,
        outlier_every: 0,
        outlier_scale: 1.0,
    };
    /// Correlated channels plus 1 in 64 channels 20x larger.
    pub const OUTLIERS: InputShape = InputShape {
        latent_fraction: 0.25,
        noise: 0.1,
        outlier_every: 64,
        outlier_scale: 20.0,
    };
    /// Independent unit channels (the Hessian is nearly diagonal: GPTQ has little to gain).
    pub const WHITE: InputShape = InputShape {
        latent_fraction: 0.0,
        noise: 1.0,
        outlier_every: 0,
        outlier_scale: 1.0,
    };
}

/// Inputs X [m, k]: `x = z A + noise`, z [latent] normal, A [latent, k] normal / sqrt(latent),
/// then each channel scaled by a log-normal factor (sigma 0.5) and outliers by `outlier_scale`.
/// Channel order is shuffled through the scaling so outliers do not sit at fixed group offsets.
pub fn inputs(m: usize, k: usize, shape: InputShape, seed: u64) -> Vec<f32> {
    let mut g = Gauss::new(seed);
    let latent = ((k as f32 * shape.latent_fraction) as usize).min(k);
    let a = g.vec(latent * k, 1.0 / (latent.max(1) as f32).sqrt());
    let chan_scale: Vec<f32> = (0..k)
        .map(|j| {
            let base = (0.5 * g.sample()).exp();
            // Outlier channels at a seed-dependent offset (j + seed) so each seed moves them.
            let outlier =
                shape.outlier_every > 0 && (j + seed as usize * 7) % shape.outlier_every == 0;
            if outlier {
                base * shape.outlier_scale
            } else {
                base
            }
        })
        .collect();
    let mut x = vec![0f32; m * k];
    let mut z = vec![0f32; latent];
    for row in x.chunks_exact_mut(k) {
        for v in z.iter_mut() {
            *v = g.sample();
        }
        for (l, &zl) in z.iter().enumerate() {
            for (xv, &av) in row.iter_mut().zip(&a[l * k..(l + 1) * k]) {
                *xv += zl * av;
            }
        }
        for (j, xv) in row.iter_mut().enumerate() {
            *xv = (*xv + shape.noise * g.sample()) * chan_scale[j];
        }
    }
    x
}
