//! Choosing the next token from logits: greedy (argmax) or nucleus (top-p) with temperature,
//! from a counter-based draw per position (seed, position) so a run can be repeated exactly and the
//! CPU and GPU engines (`lab_llama_sample_top_p`, the same algorithm in f32) choose alike.

use crate::{LabError, Result};

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

/// splitmix64's finaliser, the same as the kernels' `llama_mix` (kernels/llama/ops.cu).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The uniform draw in [0, 1) for the token chosen at position `pos` (the position of the last
/// token fed): 24 bits of splitmix64 of (seed, pos), exactly as `lab_llama_sample_top_p`
/// computes it. Counter-based, so a run repeats from its seed, the CPU and GPU engines draw the
/// same numbers, and the GPU draw needs no state beyond the position (graph replay).
pub fn draw(seed: u64, pos: u64) -> f64 {
    let r = mix(seed.wrapping_add(mix(pos.wrapping_mul(0x9E37_79B9_7F4A_7C15))));
    (r >> 40) as f64 / 16_777_216.0
}

/// One top-p choice and how close it came to going another way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopPDraw {
    pub token: u32,
    /// Tokens in the nucleus.
    pub kept: usize,
    /// The smallest distance, as a fraction of the total weight, between the draw and an edge of
    /// a token's interval, or between the nucleus mass and top_p on either side of the cut: an
    /// engine computing in f32 may choose differently only when this is tiny.
    pub margin: f64,
}

/// Nucleus sampling with the draw `u` in [0, 1) given: the algorithm of `lab_llama_sample_top_p`,
/// in f64. Weights w_i = exp((l_i - max) / T); the nucleus is every token whose logit is >= the
/// largest logit value t with sum_{l_i >= t} w_i >= top_p * sum w (ties at t all kept); the token
/// is the one whose interval, in index order over the nucleus, holds u x the nucleus mass.
/// Index order (not probability order) is what a GPU block can walk without a sort; the set and
/// each token's probability are those of the usual sorted definition.
pub fn top_p_pick(logits: &[f32], top_p: f64, temperature: f64, u: f64) -> Result<TopPDraw> {
    let best = argmax(logits)? as usize; // also rejects NaN and empty
    let max = f64::from(logits[best]);
    if max == f64::INFINITY {
        // exp(l - max) is undefined there: the first +inf logit (argmax's choice) is certain.
        return Ok(TopPDraw {
            token: best as u32,
            kept: 1,
            margin: f64::INFINITY,
        });
    }
    let w: Vec<f64> = logits
        .iter()
        .map(|&l| ((f64::from(l) - max) / temperature).exp())
        .collect();
    let z: f64 = w.iter().sum();
    let want = top_p * z;
    // Distinct logit values, descending, with the mass at or above each.
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let (mut cum, mut before, mut cut) = (0.0f64, 0.0f64, logits[best]);
    let mut i = 0;
    while i < order.len() {
        let v = logits[order[i]];
        before = cum;
        while i < order.len() && logits[order[i]] == v {
            cum += w[order[i]];
            i += 1;
        }
        cut = v;
        // 1e-12 of z absorbs the rounding of this running sum against z's (p = 1 keeps all).
        if cum >= want - 1e-12 * z {
            break;
        }
    }
    let nucleus: Vec<usize> = (0..logits.len()).filter(|&i| logits[i] >= cut).collect();
    let total: f64 = nucleus.iter().map(|&i| w[i]).sum();
    let target = u * total;
    // p = 1 keeps every token in any precision (the mass of all equals the normaliser).
    let mut margin = if top_p >= 1.0 {
        f64::INFINITY
    } else {
        ((cum - want).abs()).min((want - before).abs()) / z
    };
    let mut run = 0.0;
    let mut token = *nucleus.last().unwrap_or(&best) as u32;
    for &i in &nucleus {
        let next = run + w[i];
        if target < next {
            token = i as u32;
            margin = margin.min((target - run).min(next - target) / total);
            break;
        }
        run = next;
    }
    Ok(TopPDraw {
        token,
        kept: nucleus.len(),
        margin,
    })
}

/// Chooses each next token: greedy, or top-p with the draw for the position (`draw`).
pub struct Sampler {
    mode: Sampling,
    seed: u64,
}

impl Sampler {
    pub fn new(mode: Sampling, seed: u64) -> Self {
        Sampler { mode, seed }
    }

    /// The token to follow the one fed at position `pos`, from that step's logits.
    pub fn sample(&self, logits: &[f32], pos: usize) -> Result<u32> {
        Ok(self.sample_with_margin(logits, pos)?.0)
    }

    /// `sample`, and for top-p the draw's margin (`TopPDraw::margin`): how close this choice came
    /// to another token, so a difference from another engine can be told apart from a bug.
    pub fn sample_with_margin(&self, logits: &[f32], pos: usize) -> Result<(u32, Option<f64>)> {
        match self.mode {
            Sampling::Greedy => Ok((argmax(logits)?, None)),
            Sampling::TopP { top_p, temperature } => {
                let d = top_p_pick(
                    logits,
                    f64::from(top_p),
                    f64::from(temperature),
                    draw(self.seed, pos as u64),
                )?;
                Ok((d.token, Some(d.margin)))
            }
        }
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
    fn the_margin_is_top_p_picks_and_greedy_has_none() {
        let logits = [0.3f32, 1.1, -0.4, 0.9, 1.0];
        let g = Sampler::new(Sampling::Greedy, 5);
        assert_eq!(g.sample_with_margin(&logits, 3).unwrap(), (1, None));
        let s = Sampler::new(Sampling::new(false, 0.8, 0.7).unwrap(), 5);
        for pos in 0..50 {
            let want = top_p_pick(&logits, 0.8f32 as f64, 0.7f32 as f64, draw(5, pos)).unwrap();
            let (t, m) = s.sample_with_margin(&logits, pos as usize).unwrap();
            assert_eq!((t, m), (want.token, Some(want.margin)), "pos {pos}");
            assert_eq!(s.sample(&logits, pos as usize).unwrap(), t);
        }
    }

    #[test]
    fn tiny_p_is_argmax_for_every_draw() {
        let logits = [0.1f32, 1.9, 2.0, -5.0, 1.99];
        let s = Sampler::new(Sampling::new(false, 1e-6, 1.0).unwrap(), 7);
        for pos in 0..200 {
            assert_eq!(s.sample(&logits, pos).unwrap(), 2, "pos {pos}");
        }
    }

    /// Counts of `top_p_pick` over an even grid of N draws: the inverse CDF gives each token
    /// round(N p_i) +- 1 draws exactly (no sampling noise).
    fn grid_counts(logits: &[f32], top_p: f64, temp: f64, n: usize) -> Vec<usize> {
        let mut c = vec![0usize; logits.len()];
        for k in 0..n {
            let u = (k as f64 + 0.5) / n as f64;
            c[top_p_pick(logits, top_p, temp, u).unwrap().token as usize] += 1;
        }
        c
    }

    #[test]
    fn p_one_gives_softmax_probabilities_at_the_temperature() {
        // At temperature T, p_i ∝ exp(l_i / T): logits [0, 2 ln 4, 2 ln 2] at T = 2 give
        // weights [1, 4, 2], probabilities [1/7, 4/7, 2/7].
        let logits = [0.0f32, 2.0 * 4f32.ln(), 2.0 * 2f32.ln()];
        let n = 7000;
        let c = grid_counts(&logits, 1.0, 2.0, n);
        for (i, want) in [1000usize, 4000, 2000].into_iter().enumerate() {
            assert!(c[i].abs_diff(want) <= 1, "token {i}: {} of {n}", c[i]);
        }
    }

    #[test]
    fn nucleus_cuts_at_p_and_renormalises() {
        // Probabilities 0.3, 0.5, 0.2 (as logits ln p). p = 0.7 keeps {0, 1} (0.5 + 0.3 >= 0.7):
        // token 2 never, token 0 with 0.3 / 0.8 of the draws, in index order first.
        let logits: Vec<f32> = [0.3f32, 0.5, 0.2].iter().map(|p| p.ln()).collect();
        let c = grid_counts(&logits, 0.7, 1.0, 8000);
        assert_eq!(c[2], 0);
        assert!(
            c[0].abs_diff(3000) <= 1 && c[1].abs_diff(5000) <= 1,
            "{c:?}"
        );
        // p = 0.5 exactly reaches the top token alone; 0.51 needs the second too.
        assert_eq!(top_p_pick(&logits, 0.5, 1.0, 0.99).unwrap().kept, 1);
        assert_eq!(top_p_pick(&logits, 0.51, 1.0, 0.99).unwrap().kept, 2);
    }

    #[test]
    fn nucleus_is_the_sorted_cumulative_definition() {
        // Independent definition: sort descending, keep tokens until the running probability
        // reaches p. Random distinct logits, several p and T.
        let mut state = 12345u64;
        for case in 0..200 {
            let n = 5 + case % 40;
            let logits: Vec<f32> = (0..n)
                .map(|_| {
                    state = mix(state);
                    ((state >> 40) as f32 / 16_777_216.0) * 8.0 - 4.0
                })
                .collect();
            let (p, t) = ([0.1, 0.5, 0.9, 0.95][case % 4], [0.5, 1.0, 1.7][case % 3]);
            let m = logits.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let mut w: Vec<f64> = logits.iter().map(|&l| ((l as f64 - m) / t).exp()).collect();
            let z: f64 = w.iter().sum();
            w.sort_by(|a, b| b.total_cmp(a));
            let (mut cum, mut kept) = (0.0, 0);
            for x in &w {
                kept += 1;
                cum += x / z;
                if cum >= p - 1e-12 {
                    break;
                }
            }
            let d = top_p_pick(&logits, p, t, 0.5).unwrap();
            assert_eq!(d.kept, kept, "case {case}: p {p} T {t}");
        }
    }

    #[test]
    fn same_seed_same_tokens_and_the_draw_is_uniform() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let run = |seed| {
            let s = Sampler::new(Sampling::new(false, 0.9, 0.8).unwrap(), seed);
            (0..30)
                .map(|pos| s.sample(&logits, pos).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
        // 20000 draws in 10 bins: each within 5 binomial standard deviations (~42) of 2000.
        let mut bins = [0usize; 10];
        for pos in 0..20_000u64 {
            let u = draw(99, pos);
            assert!((0.0..1.0).contains(&u));
            bins[(u * 10.0) as usize] += 1;
        }
        assert!(bins.iter().all(|&b| b.abs_diff(2000) < 212), "{bins:?}");
    }

    #[test]
    fn infinite_logits_are_certain_and_minus_infinity_is_never_drawn() {
        let logits = [0.0f32, f32::INFINITY, 1.0, f32::INFINITY];
        for k in 0..10 {
            let d = top_p_pick(&logits, 0.9, 1.0, k as f64 / 10.0).unwrap();
            assert_eq!(d.token, 1);
        }
        let logits = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.0];
        let c = grid_counts(&logits, 1.0, 1.0, 1000);
        assert_eq!((c[0], c[2]), (0, 0));
        assert_eq!(c[1] + c[3], 1000);
    }

    #[test]
    fn margin_is_small_only_near_an_edge() {
        // Two equal tokens: u = 0.5 sits on the edge between them, u = 0.25 in the middle.
        let logits = [1.0f32, 1.0];
        assert!(top_p_pick(&logits, 1.0, 1.0, 0.5).unwrap().margin < 1e-12);
        let d = top_p_pick(&logits, 1.0, 1.0, 0.25).unwrap();
        assert_eq!(d.token, 0);
        assert!((d.margin - 0.25).abs() < 1e-12, "{d:?}");
    }

    #[test]
    fn margin_is_small_when_p_is_just_past_a_tokens_cumulative_mass() {
        // Probabilities 0.6 / 0.4: with p a hair above token 0's mass the nucleus takes both
        // tokens, but p 1e-9 lower would take one, so the margin is that 1e-9 (the distance to
        // the cumulative mass *before* the cut), not the 0.4 to the mass after it.
        let logits = [0.6f32.ln(), 0.4f32.ln()];
        let (e0, e1) = (f64::from(logits[0]).exp(), f64::from(logits[1]).exp());
        let p0 = e0 / (e0 + e1);
        let d = top_p_pick(&logits, p0 + 1e-9, 1.0, 0.3).unwrap();
        assert_eq!((d.token, d.kept), (0, 2));
        assert!(d.margin < 1e-8, "{d:?}");
    }

    #[test]
    fn flags_map_to_modes_and_bad_values_are_refused() {
        assert_eq!(Sampling::new(true, 0.9, 0.7).unwrap(), Sampling::Greedy);
        assert_eq!(Sampling::new(false, 0.9, 0.0).unwrap(), Sampling::Greedy);
        // p = 1 (the whole distribution) is the top of the allowed range (0, 1].
        assert_eq!(
            Sampling::new(false, 1.0, 0.7).unwrap(),
            Sampling::TopP {
                top_p: 1.0,
                temperature: 0.7
            }
        );
        for (top_p, temp, flag, value) in [
            (0.0, 1.0, "--top-p", "0"),
            (1.5, 1.0, "--top-p", "1.5"),
            (0.9, -1.0, "--temperature", "-1"),
            (0.9, f32::NAN, "--temperature", "NaN"),
        ] {
            let e = Sampling::new(false, top_p, temp).unwrap_err().to_string();
            assert!(
                e.contains(flag) && e.contains(&format!("{value}: expected")),
                "({top_p}, {temp}): {e}"
            );
        }
    }
}
