//! Perplexity (`lab eval`), as the GPTQ papers measure it: the text is cut into non-overlapping
//! windows of `seqlen` tokens, each window runs from an empty cache, and every position but the
//! first predicts the next token: ppl = exp(mean negative log-likelihood).
//!
//! One scoring loop serves every engine: a `NextTokenModel` is fed a window token by token and
//! hands back each position's logits; `NllAccumulator` turns them into NLL (and KL / top-1
//! against a reference). The CPU reference engine and the GPU engine both implement the trait,
//! so the two backends' perplexities differ only by the engines' arithmetic.
//!
//! With a reference checkpoint (the fp16 original) it also measures how far the quantized model's
//! next-token distribution moved: mean KL(reference || model) and how often the argmax agrees.
//! On a model with random weights (the tiny fixtures) perplexity says little about quality, but
//! the distance to the reference still ranks the quantizers.

use crate::model::checkpoint::Checkpoint;
use crate::model::config::ModelConfig;
use crate::model::cpu_engine::CpuEngine;
use crate::model::gpu_engine::GpuEngine;
use crate::model::weights::LlamaWeights;
use crate::{LabError, Result};
use serde::Serialize;
use std::path::Path;

/// How `Scoring::AllPositions` scores, in words (printed by `lab eval` and kept in its JSON): a
/// figure is only comparable to one scored the same way.
pub const CONVENTION: &str = "non-overlapping windows of seqlen tokens, each from an empty \
    cache, every position but the first predicting the next token (as GPTQ-for-LLaMa and the \
    GPTQ paper; not AutoGPTQ's script or llama.cpp, which score the second half of each \
    window); BOS only where the tokenizer puts it, at the start of the text; the tail after the \
    last whole window is not scored; natural log; KL(reference || model) over the full \
    vocabulary, temperature 1";

/// How `Scoring::SecondHalf` scores, in words (llama.cpp's examples/perplexity: windows of
/// n_ctx from the text's tokens, BOS at the start of the text, each window's first token replaced
/// by BOS, the logits of positions n_ctx/2 .. n_ctx-2 scored).
pub const CONVENTION_SECOND_HALF: &str = "non-overlapping windows of seqlen tokens, each from \
    an empty cache with its first token replaced by BOS, only positions seqlen/2 .. seqlen-2 \
    predicting the next token, so each scored token has at least half a window of context (as \
    llama.cpp's perplexity, and AutoGPTQ's perplexity script up to seqlen 1024; on a language \
    model usually lower than GPTQ-for-LLaMa's on the same text); the tail after the last whole \
    window is not scored; natural log; KL(reference || model) over the full vocabulary, \
    temperature 1";

/// How `Scoring::AutoGptqScript` scores, in words (auto_gptq/utils/perplexity_utils.py: as
/// llama.cpp, but its loop starts at min(512, n_ctx // 2)).
pub const CONVENTION_AUTOGPTQ: &str = "non-overlapping windows of seqlen tokens, each from an \
    empty cache with its first token replaced by BOS, only positions min(512, seqlen/2) .. \
    seqlen-2 predicting the next token (as AutoGPTQ's perplexity script; the same as llama.cpp's \
    up to seqlen 1024, more positions above); the tail after the last whole window is not \
    scored; natural log; KL(reference || model) over the full vocabulary, temperature 1";

/// Which positions of a window are scored: the conventions published perplexities use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoring {
    /// Every position but the first (GPTQ-for-LLaMa, the GPTQ paper): `CONVENTION`.
    AllPositions,
    /// llama.cpp: the window starts with `bos`, positions from seqlen/2 scored:
    /// `CONVENTION_SECOND_HALF`.
    SecondHalf { bos: u32 },
    /// AutoGPTQ's script: the window starts with `bos`, positions from min(512, seqlen/2)
    /// scored: `CONVENTION_AUTOGPTQ`.
    AutoGptqScript { bos: u32 },
}

impl Scoring {
    pub fn convention(self) -> &'static str {
        match self {
            Scoring::AllPositions => CONVENTION,
            Scoring::SecondHalf { .. } => CONVENTION_SECOND_HALF,
            Scoring::AutoGptqScript { .. } => CONVENTION_AUTOGPTQ,
        }
    }

    /// The first position (0-based, within a window) whose prediction is scored.
    pub fn first_scored(self, seqlen: usize) -> usize {
        match self {
            Scoring::AllPositions => 0,
            Scoring::SecondHalf { .. } => seqlen / 2,
            Scoring::AutoGptqScript { .. } => (seqlen / 2).min(512),
        }
    }

    /// The token each window's first position is fed instead of the text's, if any.
    fn window_start(self) -> Option<u32> {
        match self {
            Scoring::AllPositions => None,
            Scoring::SecondHalf { bos } | Scoring::AutoGptqScript { bos } => Some(bos),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Perplexity {
    /// How the positions were scored, in words (`Scoring::convention`).
    pub convention: &'static str,
    pub windows: usize,
    /// Whole windows the text holds (`windows` is fewer under --max-windows).
    pub windows_available: usize,
    pub seqlen: usize,
    /// Tokens of the text (BOS included).
    pub tokens_total: usize,
    /// Positions scored: windows * (seqlen - 1 - `Scoring::first_scored`).
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
    cpu_engine_of(&Checkpoint::open(dir)?)
}

/// `cpu_engine` of a checkpoint already open.
pub fn cpu_engine_of(ckpt: &Checkpoint) -> Result<CpuEngine> {
    let w = LlamaWeights::from_checkpoint(ckpt)?;
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

/// An engine scored token by token: `start_window` empties the cache, `next_logits` feeds one
/// token at the next position and returns the logits [vocab] that predict the token after it.
pub trait NextTokenModel {
    fn config(&self) -> &ModelConfig;
    /// Most positions one window may use (KV cache rows).
    fn max_positions(&self) -> usize;
    fn start_window(&mut self) -> Result<()>;
    fn next_logits(&mut self, token: u32) -> Result<Vec<f32>>;
    /// After a window's last position, before the next `start_window` empties the cache: an
    /// engine that records errors outside the logits (the GPU engine's state flags: a token out
    /// of range, the KV cache overrun, a barrier timeout) reports them here, while they still
    /// belong to this window.
    fn end_window(&mut self) -> Result<()> {
        Ok(())
    }
}

impl NextTokenModel for CpuEngine {
    fn config(&self) -> &ModelConfig {
        CpuEngine::config(self)
    }
    fn max_positions(&self) -> usize {
        CpuEngine::config(self).context_len()
    }
    fn start_window(&mut self) -> Result<()> {
        self.reset();
        Ok(())
    }
    fn next_logits(&mut self, token: u32) -> Result<Vec<f32>> {
        self.forward(&[token])
    }
}

/// The GPU engine, one decode step per token (eager launches: each step's logits are copied to
/// the host anyway, and eager needs no captured graph).
impl NextTokenModel for GpuEngine {
    fn config(&self) -> &ModelConfig {
        GpuEngine::config(self)
    }
    fn max_positions(&self) -> usize {
        self.max_ctx()
    }
    fn start_window(&mut self) -> Result<()> {
        self.reset()
    }
    fn next_logits(&mut self, token: u32) -> Result<Vec<f32>> {
        self.feed(token, false, None)?;
        self.logits()
    }
    /// `reset` clears the state flags: read them before the next window does.
    fn end_window(&mut self) -> Result<()> {
        self.check_state().map(|_| ())
    }
}

/// Running sums of the scored positions.
#[derive(Debug, Clone, Default)]
pub struct NllAccumulator {
    nll: f64,
    kl: f64,
    agree: usize,
    scored: usize,
}

impl NllAccumulator {
    /// Score one position: `logits` predicted `next`; `reference` (same position) adds KL and
    /// top-1 agreement.
    pub fn add(&mut self, logits: &[f32], next: u32, reference: Option<&[f32]>) -> Result<()> {
        // KL pairs the two distributions token by token: different vocabularies cannot be
        // compared (zipping them would silently drop the longer one's tail).
        if let Some(rl) = reference.filter(|rl| rl.len() != logits.len()) {
            return Err(LabError::invalid(
                "--reference",
                format!(
                    "its logits cover {} tokens, the model's {}: a reference must have the same vocabulary",
                    rl.len(),
                    logits.len()
                ),
            ));
        }
        let lp = log_softmax(logits);
        let Some(&l) = lp.get(next as usize) else {
            return Err(LabError::invalid(
                "token id",
                format!("{next} is out of range for {} logits", lp.len()),
            ));
        };
        // A NaN or inf would poison every mean after it: refuse it where it first appears.
        if !l.is_finite() {
            return Err(non_finite("the model's", "negative log-likelihood", -l));
        }
        self.nll -= l;
        if let Some(rl) = reference {
            let rp = log_softmax(rl);
            // A token the reference gives no probability (logit -inf) adds 0 (0 log 0 = 0), not
            // 0 x -inf = NaN.
            let kl = rp
                .iter()
                .zip(&lp)
                .map(|(&r, &m)| {
                    if r == f64::NEG_INFINITY {
                        0.0
                    } else {
                        r.exp() * (r - m)
                    }
                })
                .sum::<f64>();
            if !kl.is_finite() {
                let who = if rp.iter().all(|v| v.is_finite()) {
                    "the model's"
                } else {
                    "the reference's"
                };
                return Err(non_finite(who, "KL divergence to the reference", kl));
            }
            self.kl += kl;
            self.agree += usize::from(argmax(&rp) == argmax(&lp));
        }
        self.scored += 1;
        Ok(())
    }

    pub fn scored(&self) -> usize {
        self.scored
    }

    pub fn mean_nll(&self) -> f64 {
        self.nll / self.scored.max(1) as f64
    }

    /// The result of `windows` of `windows_available` windows of `seqlen` over a text of
    /// `tokens_total` tokens, scored as `scoring` says.
    pub fn finish(
        &self,
        scoring: Scoring,
        windows: usize,
        windows_available: usize,
        seqlen: usize,
        tokens_total: usize,
        has_ref: bool,
    ) -> Perplexity {
        let n = self.scored.max(1) as f64;
        let mean = self.mean_nll();
        Perplexity {
            convention: scoring.convention(),
            windows,
            windows_available,
            seqlen,
            tokens_total,
            tokens_scored: self.scored,
            mean_nll: mean,
            perplexity: mean.exp(),
            kl_to_reference: has_ref.then(|| self.kl / n),
            top1_agreement: has_ref.then(|| self.agree as f64 / n),
        }
    }
}

/// A measure that came out NaN or infinite: no perplexity is reported from it.
fn non_finite(whose: &str, what: &str, v: f64) -> LabError {
    LabError::invalid(
        "evaluation",
        format!(
            "{whose} logits give a {what} of {v}: the checkpoint's weights or config.json produce \
             non-finite values (e.g. NaN/inf scales or norms, a non-positive rms_norm_eps), so no \
             perplexity is reported"
        ),
    )
}

/// A window length `cfg`'s model can score (checked before any engine is built, too).
pub fn check_seqlen(seqlen: usize, cfg: &ModelConfig) -> Result<()> {
    if seqlen < 2 {
        return Err(LabError::invalid(
            "--seqlen",
            "must be at least 2 (one token predicts the next)",
        ));
    }
    let ctx = cfg.context_len();
    if seqlen > ctx {
        return Err(LabError::invalid(
            "--seqlen",
            format!(
                "{seqlen} exceeds the model's context of {ctx} positions ({})",
                cfg.context_origin()
            ),
        ));
    }
    Ok(())
}

/// `e` with where in the text it happened (`at`) put before its reason.
fn located(e: LabError, at: &str) -> LabError {
    match e {
        LabError::Invalid { what, reason } => LabError::invalid(what, format!("{at}: {reason}")),
        LabError::CheckFailed(m) => LabError::CheckFailed(format!("{at}: {m}")),
        e => e,
    }
}

/// Whole windows of `seqlen` in a text of `tokens` tokens: at least one, else an error that says
/// what to change (checked before any engine is built, too).
pub fn check_text_length(tokens: usize, seqlen: usize) -> Result<usize> {
    let fit = tokens / seqlen.max(1);
    if fit == 0 {
        return Err(LabError::invalid(
            "evaluation text",
            format!(
                "too short: {tokens} tokens, need at least one window of --seqlen {seqlen} \
                 (the default is min(2048, the model's context); pass a longer --text, e.g. \
                 wikitext-2's test split, or a shorter --seqlen)"
            ),
        ));
    }
    Ok(fit)
}

/// Perplexity of `model` on `tokens`; `reference` adds KL and top-1 agreement. Each window's
/// last token predicts nothing inside the window, so it is never fed. `Scoring::AllPositions`.
pub fn perplexity<M: NextTokenModel + ?Sized>(
    model: &mut M,
    reference: Option<&mut dyn NextTokenModel>,
    tokens: &[u32],
    seqlen: usize,
    max_windows: Option<usize>,
) -> Result<Perplexity> {
    perplexity_scored(
        model,
        reference,
        tokens,
        seqlen,
        max_windows,
        Scoring::AllPositions,
    )
}

/// `perplexity` under either convention (`Scoring`). Every position is fed either way (the
/// scored ones need the context); only the scored ones add to the sums.
pub fn perplexity_scored<M: NextTokenModel + ?Sized>(
    model: &mut M,
    mut reference: Option<&mut dyn NextTokenModel>,
    tokens: &[u32],
    seqlen: usize,
    max_windows: Option<usize>,
    scoring: Scoring,
) -> Result<Perplexity> {
    check_seqlen(seqlen, model.config())?;
    let mut holds = vec![("model", model.max_positions())];
    if let Some(r) = reference.as_deref() {
        holds.push(("reference", r.max_positions()));
    }
    for (who, n) in holds {
        if seqlen - 1 > n {
            return Err(LabError::invalid(
                "--seqlen",
                format!(
                    "{seqlen} needs {} positions, the {who} engine holds {n}",
                    seqlen - 1
                ),
            ));
        }
    }
    let fit = check_text_length(tokens.len(), seqlen)?;
    let windows = max_windows.map_or(fit, |m| m.min(fit));
    let first_scored = scoring.first_scored(seqlen);
    let mut acc = NllAccumulator::default();
    for (wi, w) in tokens.chunks_exact(seqlen).take(windows).enumerate() {
        model.start_window()?;
        if let Some(r) = reference.as_deref_mut() {
            r.start_window()?;
        }
        for p in 0..seqlen - 1 {
            let fed = match scoring.window_start() {
                Some(bos) if p == 0 => bos,
                _ => w[p],
            };
            let logits = model.next_logits(fed)?;
            let ref_logits = match reference.as_deref_mut() {
                Some(r) => Some(r.next_logits(fed)?),
                None => None,
            };
            if p < first_scored {
                continue; // context only
            }
            acc.add(&logits, w[p + 1], ref_logits.as_deref())
                .map_err(|e| located(e, &format!("at window {wi}, position {p}")))?;
        }
        let in_window = |e| located(e, &format!("in window {wi}"));
        model.end_window().map_err(in_window)?;
        if let Some(r) = reference.as_deref_mut() {
            r.end_window().map_err(in_window)?;
        }
    }
    let p = acc.finish(
        scoring,
        windows,
        fit,
        seqlen,
        tokens.len(),
        reference.is_some(),
    );
    // Every term was finite; the exponential can still overflow.
    if !p.perplexity.is_finite() {
        return Err(LabError::invalid(
            "evaluation",
            format!(
                "perplexity exp({}) overflows: a mean NLL this large means the model predicts nothing",
                p.mean_nll
            ),
        ));
    }
    Ok(p)
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

    /// A model whose logits are a fixed function of the token it was fed and its position
    /// (`scripted()`: scale 1, bump 0; another scale and a bump on logit 0 make a second model).
    struct Scripted {
        cfg: ModelConfig,
        pos: usize,
        fed: Vec<u32>,
        scale: f32,
        bump: f32,
    }

    impl NextTokenModel for Scripted {
        fn config(&self) -> &ModelConfig {
            &self.cfg
        }
        fn max_positions(&self) -> usize {
            self.cfg.context_len()
        }
        fn start_window(&mut self) -> Result<()> {
            self.pos = 0;
            Ok(())
        }
        fn next_logits(&mut self, token: u32) -> Result<Vec<f32>> {
            self.fed.push(token);
            self.pos += 1;
            let v = self.cfg.vocab_size;
            Ok((0..v)
                .map(|i| {
                    ((i * 7 + token as usize * 3 + self.pos) % 11) as f32 * 0.3 * self.scale
                        + if i == 0 { self.bump } else { 0.0 }
                })
                .collect())
        }
    }

    /// A 17-token text of ids below 13: four windows of 4, two of 8, one token left over.
    fn text17() -> Vec<u32> {
        (0..17).map(|i| (i * 5 % 13) as u32).collect()
    }

    fn scripted() -> Scripted {
        let mut cfg = ModelConfig::vicuna_7b();
        cfg.vocab_size = 13;
        cfg.max_position_embeddings = 8;
        Scripted {
            cfg,
            pos: 0,
            fed: vec![],
            scale: 1.0,
            bump: 0.0,
        }
    }

    /// Scripted's logits in f64 for token `t` fed at 1-based position `pos`.
    fn scripted_logits(scale: f64, bump: f64, t: u32, pos: usize) -> Vec<f64> {
        (0..13)
            .map(|i| {
                ((i * 7 + t as usize * 3 + pos) % 11) as f64 * 0.3 * scale
                    + if i == 0 { bump } else { 0.0 }
            })
            .collect()
    }

    #[test]
    fn scoring_loop_feeds_windows_and_sums_the_true_tokens_nll() {
        let tokens = text17();
        let mut m = scripted();
        let p = perplexity(&mut m, None, &tokens, 4, None).unwrap();
        // 17 tokens: 4 windows of 4; 3 positions scored per window; the last token of each
        // window is never fed.
        assert_eq!((p.windows, p.tokens_scored), (4, 12));
        let fed: Vec<u32> = tokens[..16]
            .chunks(4)
            .flat_map(|w| w[..3].to_vec())
            .collect();
        assert_eq!(m.fed, fed);
        // Independent sum: position p (1-based within the window) after token t.
        let mut want = 0f64;
        for w in tokens[..16].chunks(4) {
            for p in 0..3 {
                let logits: Vec<f64> = (0..13)
                    .map(|i| ((i * 7 + w[p] as usize * 3 + p + 1) % 11) as f64 * 0.3)
                    .collect();
                let lz = logits.iter().map(|l| l.exp()).sum::<f64>().ln();
                want += lz - logits[w[p + 1] as usize];
            }
        }
        assert!(
            (p.mean_nll - want / 12.0).abs() < 1e-5,
            "{} vs {}",
            p.mean_nll,
            want / 12.0
        );
        assert!((p.perplexity - p.mean_nll.exp()).abs() < 1e-12);
        // Against itself as reference: KL 0, full agreement.
        let (mut a, mut b) = (scripted(), scripted());
        let p = perplexity(&mut a, Some(&mut b), &tokens, 4, Some(2)).unwrap();
        assert_eq!(p.windows, 2);
        assert!(p.kl_to_reference.unwrap().abs() < 1e-12);
        assert_eq!(p.top1_agreement, Some(1.0));
    }

    #[test]
    fn kl_is_the_references_divergence_from_the_model_and_agreement_its_argmax_share() {
        let tokens = text17();
        let (mut model, mut reference) = (scripted(), scripted());
        (reference.scale, reference.bump) = (1.5, 2.0);
        let p = perplexity(&mut model, Some(&mut reference), &tokens, 4, None).unwrap();
        // By hand: KL(ref || model) = sum_i p_ref(i) (log p_ref(i) - log p_model(i)) per scored
        // position, averaged; agreement = share of positions with the same argmax (first max).
        let lsm = |l: &[f64]| {
            let lz = l.iter().map(|v| v.exp()).sum::<f64>().ln();
            l.iter().map(|v| v - lz).collect::<Vec<f64>>()
        };
        let first_max = |l: &[f64]| (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b });
        // KL(p || q) of two log-softmaxes.
        let kl_of =
            |p: &[f64], q: &[f64]| -> f64 { p.iter().zip(q).map(|(p, q)| p.exp() * (p - q)).sum() };
        // (KL(ref || model), KL(model || ref), same argmax) summed over the scored positions.
        let (mut kl, mut back, mut agree, mut n) = (0f64, 0f64, 0usize, 0usize);
        for w in tokens[..16].chunks(4) {
            for (pos, &t) in w[..3].iter().enumerate() {
                let m = lsm(&scripted_logits(1.0, 0.0, t, pos + 1));
                let r = lsm(&scripted_logits(1.5, 2.0, t, pos + 1));
                kl += kl_of(&r, &m);
                back += kl_of(&m, &r);
                agree += usize::from(first_max(&r) == first_max(&m));
                n += 1;
            }
        }
        let (kl, back, agree) = (kl / n as f64, back / n as f64, agree as f64 / n as f64);
        assert!(kl > 0.05, "the two scripts should differ: KL {kl}");
        assert!(
            agree > 0.0 && agree < 1.0,
            "agreement {agree} should be partial"
        );
        let got = p.kl_to_reference.unwrap();
        assert!((got - kl).abs() < 1e-5, "KL {got} vs {kl} by hand");
        assert_eq!(p.top1_agreement, Some(agree));
        // The other direction is another number: the figure is not symmetric by accident.
        assert!(
            (back - got).abs() > 1e-3,
            "KL(model || ref) {back} = KL(ref || model) {got}?"
        );
    }

    /// `Scripted` whose logits turn to `bad` from the `at`-th fed token on.
    struct Poisoned {
        inner: Scripted,
        at: usize,
        bad: f32,
    }

    impl NextTokenModel for Poisoned {
        fn config(&self) -> &ModelConfig {
            &self.inner.cfg
        }
        fn max_positions(&self) -> usize {
            self.inner.max_positions()
        }
        fn start_window(&mut self) -> Result<()> {
            self.inner.start_window()
        }
        fn next_logits(&mut self, token: u32) -> Result<Vec<f32>> {
            let mut l = self.inner.next_logits(token)?;
            if self.inner.fed.len() > self.at {
                l[0] = self.bad;
            }
            Ok(l)
        }
    }

    #[test]
    fn non_finite_logits_are_an_error_not_a_nan_perplexity() {
        let tokens = text17();
        for bad in [f32::NAN, f32::INFINITY] {
            let mut m = Poisoned {
                inner: scripted(),
                at: 5,
                bad,
            };
            let e = perplexity(&mut m, None, &tokens, 4, None)
                .unwrap_err()
                .to_string();
            // The 6th fed token: window 1 (3 positions per window), position 2.
            assert!(
                e.starts_with("invalid evaluation: at window 1, position 2: the model's logits")
                    && e.contains("negative log-likelihood"),
                "{bad}: {e}"
            );
            // A poisoned reference: the KL is refused and blamed on the reference.
            let (mut a, mut r) = (
                scripted(),
                Poisoned {
                    inner: scripted(),
                    at: 0,
                    bad,
                },
            );
            let e = perplexity(&mut a, Some(&mut r), &tokens, 4, None)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("at window 0, position 0: the reference's logits give a KL"),
                "{bad}: {e}"
            );
        }
    }

    /// Scripted, with an error raised at the end of window `fail_at` (as the GPU engine's state
    /// flags, which the next window's reset would clear).
    struct Flagged {
        inner: Scripted,
        window: usize,
        fail_at: usize,
    }

    impl NextTokenModel for Flagged {
        fn config(&self) -> &ModelConfig {
            self.inner.config()
        }
        fn max_positions(&self) -> usize {
            self.inner.max_positions()
        }
        fn start_window(&mut self) -> Result<()> {
            self.inner.start_window()
        }
        fn next_logits(&mut self, token: u32) -> Result<Vec<f32>> {
            self.inner.next_logits(token)
        }
        fn end_window(&mut self) -> Result<()> {
            self.window += 1;
            if self.window - 1 == self.fail_at {
                return Err(LabError::CheckFailed("decode step flags 0x2".into()));
            }
            Ok(())
        }
    }

    #[test]
    fn an_error_an_engine_records_outside_the_logits_fails_its_window() {
        let tokens = text17();
        let flagged = || Flagged {
            inner: scripted(),
            window: 0,
            fail_at: 1,
        };
        // Window 1 of 4: the run stops there, for the model and for the reference alike.
        let e = perplexity(&mut flagged(), None, &tokens, 4, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("in window 1: decode step flags 0x2"), "{e}");
        let e = perplexity(&mut scripted(), Some(&mut flagged()), &tokens, 4, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("in window 1: decode step flags 0x2"), "{e}");
        // Raised after the last scored window: still an error, not a result.
        let mut late = flagged();
        late.fail_at = 3;
        assert!(perplexity(&mut late, None, &tokens, 4, None).is_err());
        // Without one: 4 of 4 windows, 12 positions, the text's 17 tokens.
        let p = perplexity(&mut scripted(), None, &tokens, 4, Some(9)).unwrap();
        assert_eq!(
            (
                p.windows,
                p.windows_available,
                p.tokens_scored,
                p.tokens_total
            ),
            (4, 4, 12, 17)
        );
        assert_eq!(p.convention, CONVENTION);
    }

    #[test]
    fn autogptq_scoring_starts_at_position_512_past_a_window_of_1024() {
        // Its loop is range(min(512, n_ctx // 2), n_ctx - 1): llama.cpp's below 1025.
        for (seqlen, llama, autogptq) in [
            (8, 4, 4),
            (512, 256, 256),
            (1024, 512, 512),
            (2048, 1024, 512),
        ] {
            assert_eq!(Scoring::SecondHalf { bos: 1 }.first_scored(seqlen), llama);
            assert_eq!(
                Scoring::AutoGptqScript { bos: 1 }.first_scored(seqlen),
                autogptq
            );
        }
        // Fed and scored as llama.cpp's at a short window: the same figure.
        let tokens = text17();
        let run = |s| {
            let mut m = scripted();
            let p = perplexity_scored(&mut m, None, &tokens, 8, None, s).unwrap();
            (m.fed, p.tokens_scored, p.mean_nll, p.convention)
        };
        let (fed_l, n_l, nll_l, c_l) = run(Scoring::SecondHalf { bos: 12 });
        let (fed_a, n_a, nll_a, c_a) = run(Scoring::AutoGptqScript { bos: 12 });
        assert_eq!((fed_l, n_l, nll_l), (fed_a, n_a, nll_a));
        assert_eq!((c_l, c_a), (CONVENTION_SECOND_HALF, CONVENTION_AUTOGPTQ));
    }

    #[test]
    fn the_second_half_convention_feeds_bos_first_and_scores_from_half_a_window() {
        // 17 tokens, windows of 8: 2 windows; positions 4, 5, 6 scored in each (seqlen/2 ..
        // seqlen-2), every position fed, the first as BOS (id 12).
        let tokens = text17();
        let mut m = scripted();
        let p = perplexity_scored(
            &mut m,
            None,
            &tokens,
            8,
            None,
            Scoring::SecondHalf { bos: 12 },
        )
        .unwrap();
        assert_eq!((p.windows, p.tokens_scored), (2, 6));
        assert_eq!(p.convention, CONVENTION_SECOND_HALF);
        let fed: Vec<u32> = tokens[..16]
            .chunks(8)
            .flat_map(|w| {
                let mut f = w[..7].to_vec();
                f[0] = 12;
                f
            })
            .collect();
        assert_eq!(m.fed, fed);
        let mut want = 0f64;
        for w in tokens[..16].chunks(8) {
            for p in 4..7 {
                let logits = scripted_logits(1.0, 0.0, w[p], p + 1);
                let lz = logits.iter().map(|l| l.exp()).sum::<f64>().ln();
                want += lz - logits[w[p + 1] as usize];
            }
        }
        assert!(
            (p.mean_nll - want / 6.0).abs() < 1e-5,
            "{} vs {}",
            p.mean_nll,
            want / 6.0
        );
        // The default convention on the same text scores 7 per window, from position 0.
        let all = perplexity(&mut scripted(), None, &tokens, 8, None).unwrap();
        assert_eq!((all.tokens_scored, all.convention), (14, CONVENTION));
    }

    #[test]
    fn a_token_the_reference_rules_out_adds_nothing_to_the_kl() {
        // Reference logits [0, 0, -inf]: p = (1/2, 1/2, 0); the model's [0, 0, 0]: q = 1/3 each.
        // KL = 2 x 1/2 ln((1/2) / (1/3)) = ln 1.5, and 0 ln 0 = 0 for the third token.
        let mut acc = NllAccumulator::default();
        acc.add(&[0.0, 0.0, 0.0], 1, Some(&[0.0, 0.0, f32::NEG_INFINITY]))
            .unwrap();
        let p = acc.finish(Scoring::AllPositions, 1, 1, 2, 2, true);
        let kl = p.kl_to_reference.unwrap();
        assert!((kl - 1.5f64.ln()).abs() < 1e-12, "{kl}");
    }

    #[test]
    fn a_reference_with_another_vocabulary_is_refused_not_truncated() {
        let tokens = text17();
        let mut r = scripted();
        r.cfg.vocab_size = 15;
        let e = perplexity(&mut scripted(), Some(&mut r), &tokens, 4, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--reference") && e.contains("cover 15 tokens, the model's 13"),
            "{e}"
        );
    }

    #[test]
    fn windows_longer_than_the_engine_are_refused() {
        let mut m = scripted();
        let tokens = vec![1u32; 40];
        let e = perplexity(&mut m, None, &tokens, 9, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--seqlen") && e.contains("max_position_embeddings 8"),
            "{e}"
        );
    }

    /// `Scripted` whose engine holds only `cap` positions (a GPU engine's KV cache can be smaller
    /// than the model's context).
    struct Capped {
        inner: Scripted,
        cap: usize,
    }

    impl NextTokenModel for Capped {
        fn config(&self) -> &ModelConfig {
            self.inner.config()
        }
        fn max_positions(&self) -> usize {
            self.cap
        }
        fn start_window(&mut self) -> Result<()> {
            self.inner.start_window()
        }
        fn next_logits(&mut self, token: u32) -> Result<Vec<f32>> {
            self.inner.next_logits(token)
        }
    }

    #[test]
    fn a_window_needs_seqlen_minus_one_positions_of_each_engine() {
        // A window's last token is never fed: seqlen 4 runs in 3 positions, in the model and in
        // the reference alike.
        let tokens = text17();
        let capped = |cap| Capped {
            inner: scripted(),
            cap,
        };
        let p = perplexity(&mut capped(3), None, &tokens, 4, None).unwrap();
        assert_eq!((p.windows, p.tokens_scored), (4, 12));
        let p = perplexity(&mut scripted(), Some(&mut capped(3)), &tokens, 4, None).unwrap();
        assert_eq!(p.tokens_scored, 12);
        let e = perplexity(&mut capped(2), None, &tokens, 4, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--seqlen") && e.contains("4 needs 3 positions, the model engine holds 2"),
            "{e}"
        );
        let e = perplexity(&mut scripted(), Some(&mut capped(2)), &tokens, 4, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the reference engine holds 2"), "{e}");
    }

    #[test]
    fn max_windows_scores_fewer_windows_but_reports_how_many_the_text_holds() {
        let tokens = text17();
        let p = perplexity(&mut scripted(), None, &tokens, 4, Some(2)).unwrap();
        assert_eq!(
            (
                p.windows,
                p.windows_available,
                p.tokens_scored,
                p.tokens_total
            ),
            (2, 4, 6, 17)
        );
    }

    #[test]
    fn a_window_of_one_token_or_a_text_shorter_than_a_window_is_refused() {
        let tokens = text17();
        // seqlen 1 would feed nothing and report perplexity exp(0) = 1.
        let e = perplexity(&mut scripted(), None, &tokens, 1, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--seqlen") && e.contains("at least 2"), "{e}");
        assert!(check_seqlen(2, scripted().config()).is_ok());
        // 3 tokens hold no window of 4: an error, not 0 windows and perplexity 1.
        let e = perplexity(&mut scripted(), None, &tokens[..3], 4, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("too short: 3 tokens"), "{e}");
        assert_eq!(check_text_length(8, 4).unwrap(), 2);
        assert_eq!(check_text_length(7, 4).unwrap(), 1);
    }

    #[test]
    fn top1_agreement_takes_the_first_of_tied_maxima() {
        // The model ties tokens 0 and 1; the reference prefers 0. The model's argmax is the first
        // maximum (0, as torch.argmax), so the two agree.
        let mut acc = NllAccumulator::default();
        acc.add(&[2.0, 2.0, 0.0], 0, Some(&[2.0, 1.0, 0.0]))
            .unwrap();
        let p = acc.finish(Scoring::AllPositions, 1, 1, 2, 2, true);
        assert_eq!(p.top1_agreement, Some(1.0));
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 0.0]), 1);
    }

    #[test]
    fn a_mean_nll_whose_exponential_overflows_is_an_error_not_an_infinite_perplexity() {
        // Logit 0 at 1000 from the first fed token on: each scored target other than 0 costs
        // ~1000 nats (finite), 11 of the 12 targets are not 0, so the mean is ~917 and
        // exp(917) overflows f64.
        let mut m = Poisoned {
            inner: scripted(),
            at: 0,
            bad: 1000.0,
        };
        let e = perplexity(&mut m, None, &text17(), 4, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("invalid evaluation: perplexity exp(9") && e.contains("overflows"),
            "{e}"
        );
    }
}
