//! Choosing the next token from logits: greedy (argmax) or nucleus (top-p) with temperature,
//! from a seeded rng so a run can be repeated exactly.

use crate::{LabError, Result};
use rand::{RngExt, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    Greedy,
    /// Keep the most likely tokens whose probabilities (at `temperature`) sum to at least
    /// `top_p`, renormalise, draw one.
    TopP {
        top_p: f32,
        temperature: f32,
    },
}

impl Sampling {
    /// From CLI-style values: temperature 0 means greedy (as in most front ends), p in (0, 1].
    pub fn new(greedy: bool, top_p: f32, temperature: f32) -> Result<Self> {
        if greedy || temperature == 0.0 {
            return Ok(Sampling::Greedy);
        }
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(LabError::invalid(
                "--temperature",
                format!("{temperature}: expected a finite value >= 0 (0 = greedy)"),
            ));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(LabError::invalid(
                "--top-p",
                format!("{top_p}: expected 0 < p <= 1"),
            ));
        }
        Ok(Sampling::TopP { top_p, temperature })
    }
}

/// Index of the largest logit; the lowest index wins a tie (as torch.argmax does).
/// NaN logits are an error: they mean the engine is broken, and must not become a token.
pub fn argmax(logits: &[f32]) -> Result<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        if v.is_nan() {
            return Err(LabError::CheckFailed(format!("logit {i} is NaN")));
        }
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i as u32)
        .ok_or_else(|| LabError::invalid("logits", "empty logits vector"))
}

pub struct Sampler {
    mode: Sampling,
    rng: rand::rngs::StdRng,
}

impl Sampler {
    pub fn new(mode: Sampling, seed: u64) -> Self {
        Sampler {
            mode,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }

    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        let (top_p, temperature) = match self.mode {
            Sampling::Greedy => return argmax(logits),
            Sampling::TopP { top_p, temperature } => (f64::from(top_p), f64::from(temperature)),
        };
        let best = argmax(logits)? as usize; // also rejects NaN and empty
        let max = f64::from(logits[best]);
        // Softmax in f64 after subtracting the max (exp never overflows; the max gets weight 1).
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((f64::from(l) - max) / temperature).exp()))
            .collect();
        let z: f64 = probs.iter().map(|p| p.1).sum();
        // Stable sort, descending: equal probabilities keep index order, so runs are repeatable.
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut kept = 0usize;
        let mut mass = 0.0;
        for &(_, p) in &probs {
            kept += 1;
            mass += p / z;
            // Keep at least one token; stop once the nucleus reaches p (1e-12 absorbs rounding
            // of the running sum so p = 1 keeps every token with non-zero probability).
            if mass >= top_p - 1e-12 {
                break;
            }
        }
        let nucleus = &probs[..kept];
        let total: f64 = nucleus.iter().map(|p| p.1).sum();
        let mut u = self.rng.random::<f64>() * total;
        for &(id, p) in nucleus {
            if u < p {
                return Ok(id);
            }
            u -= p;
        }
        Ok(nucleus[kept - 1].0) // u landed on the rounding remainder
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_prefers_first_of_ties_and_rejects_nan() {
        assert_eq!(argmax(&[0.5, 2.0, -1.0, 2.0]).unwrap(), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, -3.0]).unwrap(), 1);
        assert!(argmax(&[0.0, f32::NAN]).is_err());
        assert!(argmax(&[]).is_err());
    }

    #[test]
    fn tiny_p_is_argmax_for_every_seed() {
        let logits = [0.1f32, 1.9, 2.0, -5.0, 1.99];
        for seed in 0..200 {
            let mut s = Sampler::new(Sampling::new(false, 1e-6, 1.0).unwrap(), seed);
            assert_eq!(s.sample(&logits).unwrap(), 2, "seed {seed}");
        }
    }

    #[test]
    fn p_one_reaches_every_token_with_softmax_frequencies() {
        // At temperature T, p_i ∝ exp(l_i / T): logits [0, 2 ln 4, 2 ln 2] at T = 2 give
        // weights [1, 4, 2], probabilities [1/7, 4/7, 2/7].
        let logits = [0.0f32, 2.0 * 4f32.ln(), 2.0 * 2f32.ln()];
        let temp = 2.0f32;
        let w: Vec<f64> = logits
            .iter()
            .map(|&l| (f64::from(l) / f64::from(temp)).exp())
            .collect();
        let z: f64 = w.iter().sum();
        let mut s = Sampler::new(Sampling::new(false, 1.0, temp).unwrap(), 42);
        let n = 40_000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[s.sample(&logits).unwrap() as usize] += 1;
        }
        for i in 0..3 {
            let f = counts[i] as f64 / n as f64;
            let p = w[i] / z;
            // Binomial std at n = 40000 is <= 0.0025; 0.01 is four of them.
            assert!(
                (f - p).abs() < 0.01,
                "token {i}: frequency {f} vs probability {p}"
            );
        }
    }

    #[test]
    fn nucleus_cuts_at_p_and_renormalises() {
        // Probabilities 0.5, 0.3, 0.2 (as logits ln p). p = 0.7 keeps {0, 1}: token 2 never,
        // token 0 with 0.5 / 0.8.
        let logits: Vec<f32> = [0.5f32, 0.3, 0.2].iter().map(|p| p.ln()).collect();
        let mut s = Sampler::new(Sampling::new(false, 0.7, 1.0).unwrap(), 9);
        let n = 20_000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[s.sample(&logits).unwrap() as usize] += 1;
        }
        assert_eq!(counts[2], 0);
        let f0 = counts[0] as f64 / n as f64;
        assert!((f0 - 0.625).abs() < 0.015, "{f0}");
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let draw = |seed| {
            let mut s = Sampler::new(Sampling::new(false, 0.9, 0.8).unwrap(), seed);
            (0..30)
                .map(|_| s.sample(&logits).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
    }

    #[test]
    fn flags_map_to_modes_and_bad_values_are_refused() {
        assert_eq!(Sampling::new(true, 0.9, 0.7).unwrap(), Sampling::Greedy);
        assert_eq!(Sampling::new(false, 0.9, 0.0).unwrap(), Sampling::Greedy);
        assert!(Sampling::new(false, 0.0, 1.0).is_err());
        assert!(Sampling::new(false, 1.5, 1.0).is_err());
        assert!(Sampling::new(false, 0.9, -1.0).is_err());
        assert!(Sampling::new(false, 0.9, f32::NAN).is_err());
    }
}
