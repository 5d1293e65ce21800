//! Perplexity on the CPU reference engine (`lab eval`), as the GPTQ papers measure it: the text is
//! cut into non-overlapping windows of `seqlen` tokens, each window runs from an empty cache, and
//! every position but the first predicts the next token: ppl = exp(mean negative log-likelihood).
//!
//! With a reference checkpoint (the fp16 original) it also measures how far the quantized model's
//! next-token distribution moved: mean KL(reference || model) and how often the argmax agrees.
//! On a model with random weights (the tiny fixtures) perplexity says little about quality, but
//! the distance to the reference still ranks the quantizers.

use crate::model::checkpoint::Checkpoint;
use crate::model::cpu_engine::CpuEngine;
use crate::model::weights::LlamaWeights;
use crate::{LabError, Result};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct Perplexity {
    pub windows: usize,
    pub seqlen: usize,
    /// Positions scored: windows * (seqlen - 1).
    pub tokens_scored: usize,
    pub mean_nll: f64,
    pub perplexity: f64,
    /// Mean KL(reference || model) in nats per position, when a reference was given.
    pub kl_to_reference: Option<f64>,
    /// Fraction of positions where both models' most likely next token agree.
    pub top1_agreement: Option<f64>,
}

/// An engine for the checkpoint at `dir` (fp16 or GPTQ; GPTQ layers dequantized in f64).
pub fn cpu_engine(dir: &Path) -> Result<CpuEngine> {
    let ckpt = Checkpoint::open(dir)?;
    let w = LlamaWeights::from_checkpoint(&ckpt)?;
    CpuEngine::new(w, ckpt.config.clone())
}

/// log-softmax of `logits` in f64.
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = logits.iter().map(|&l| (f64::from(l) - max).exp()).sum();
    let lz = max + z.ln();
    logits.iter().map(|&l| f64::from(l) - lz).collect()
}

fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f64::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0
}

/// Perplexity of `model` on `tokens`; `reference` adds KL and top-1 agreement.
pub fn perplexity(
    model: &mut CpuEngine,
    mut reference: Option<&mut CpuEngine>,
    tokens: &[u32],
    seqlen: usize,
    max_windows: Option<usize>,
) -> Result<Perplexity> {
    if seqlen < 2 {
        return Err(LabError::invalid(
            "--seqlen",
            "must be at least 2 (one token predicts the next)",
        ));
    }
    let ctx = model.config().max_position_embeddings;
    if seqlen > ctx {
        return Err(LabError::invalid(
            "--seqlen",
            format!("{seqlen} exceeds the model's context max_position_embeddings = {ctx}"),
        ));
    }
    let fit = tokens.len() / seqlen;
    let windows = max_windows.map_or(fit, |m| m.min(fit));
    if windows == 0 {
        return Err(LabError::invalid(
            "evaluation text",
            format!(
                "too short: {} tokens, need at least one window of --seqlen {seqlen}",
                tokens.len()
            ),
        ));
    }
    let (mut nll, mut kl, mut agree, mut scored) = (0f64, 0f64, 0usize, 0usize);
    for w in tokens.chunks_exact(seqlen).take(windows) {
        model.reset();
        let logits = model.forward_all(w)?;
        let ref_logits = match reference.as_deref_mut() {
            Some(r) => {
                r.reset();
                Some(r.forward_all(w)?)
            }
            None => None,
        };
        for p in 0..seqlen - 1 {
            let lp = log_softmax(&logits[p]);
            nll -= lp[w[p + 1] as usize];
            if let Some(rl) = &ref_logits {
                let rp = log_softmax(&rl[p]);
                kl += rp
                    .iter()
                    .zip(&lp)
                    .map(|(&r, &m)| r.exp() * (r - m))
                    .sum::<f64>();
                agree += usize::from(argmax(&rp) == argmax(&lp));
            }
            scored += 1;
        }
    }
    let mean = nll / scored as f64;
    let has_ref = reference.is_some();
    Ok(Perplexity {
        windows,
        seqlen,
        tokens_scored: scored,
        mean_nll: mean,
        perplexity: mean.exp(),
        kl_to_reference: has_ref.then(|| kl / scored as f64),
        top1_agreement: has_ref.then(|| agree as f64 / scored as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_normalizes() {
        let lp = log_softmax(&[1.0, 2.0, 3.0]);
        let s: f64 = lp.iter().map(|v| v.exp()).sum();
        assert!((s - 1.0).abs() < 1e-12);
        assert!((lp[2] - lp[1] - 1.0).abs() < 1e-12);
        assert_eq!(argmax(&lp), 2);
    }
}
