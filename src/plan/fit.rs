//! Does a plan fit a card, the longest context a card allows, and the bandwidth roofline.

use super::cards::Card;
use serde::Serialize;

/// Upper end of the context search. 2^24 positions of 7B KV cache would be 8 TiB: no card reaches it.
pub const MAX_CTX_SEARCH: u64 = 1 << 24;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Fit {
    pub card: String,
    pub memory_bytes: u64,
    /// What a program can allocate of it (`Card::usable_bytes`): the plans fit here.
    pub usable_bytes: u64,
    /// total_bytes <= usable_bytes at the plan's context.
    pub fits: bool,
    /// usable_bytes - total_bytes (negative: short by that much).
    pub free_bytes: i64,
    /// Longest context (positions per sequence) whose total fits; None when even context 0 does not.
    /// This is what memory allows; the model's trained context (`Plan::model_max_ctx`) is separate.
    pub max_ctx: Option<u64>,
}

/// Largest ctx in [0, MAX_CTX_SEARCH] with `total_at(ctx) <= memory`, for a `total_at` that does not
/// decrease with ctx (KV cache and attention scores only grow). Binary search, so the answer stays
/// right if the workspace model ever stops being linear in ctx.
pub fn longest_ctx(memory: u64, total_at: impl Fn(u64) -> u64) -> Option<u64> {
    if total_at(0) > memory {
        return None;
    }
    let (mut lo, mut hi) = (0u64, MAX_CTX_SEARCH);
    if total_at(hi) <= memory {
        return Some(hi);
    }
    // Invariant: total_at(lo) fits, total_at(hi) does not.
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if total_at(mid) <= memory {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(lo)
}

pub fn fit_on(card: &Card, total_bytes: u64, total_at: impl Fn(u64) -> u64) -> Fit {
    let usable = card.usable_bytes();
    Fit {
        card: card.name.to_string(),
        memory_bytes: card.memory_bytes,
        usable_bytes: usable,
        fits: total_bytes <= usable,
        free_bytes: usable as i64 - total_bytes as i64,
        max_ctx: longest_ctx(usable, total_at),
    }
}

/// How long a decode step takes on a card, for the estimate: the step's bytes streamed at
/// `stream_efficiency` x the card's spec bandwidth, plus `per_layer_s` of fixed cost per decoder
/// layer that does not shrink with the bytes (kernel boundaries, each launch's DRAM ramp and tail,
/// the latency-bound small ops: ~7 launches per layer). A flat efficiency (`per_layer_s` 0) scales
/// that fixed cost with the bandwidth, which makes a slow card look worse than it is: on a card
/// with a third of the H100's bandwidth the bytes take 3x longer, the launches do not.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct SpeedModel {
    /// Fraction of spec bandwidth the bytes stream at.
    pub stream_efficiency: f64,
    /// Seconds of fixed cost per decoder layer per step.
    pub per_layer_s: f64,
}

impl SpeedModel {
    /// Every byte at `efficiency` x spec, no fixed cost (`--efficiency`, or one measured point).
    pub fn flat(efficiency: f64) -> Self {
        SpeedModel {
            stream_efficiency: efficiency,
            per_layer_s: 0.0,
        }
    }

    /// Seconds per decode step.
    pub fn step_s(&self, bandwidth_gbs: f64, layers: usize, bytes_per_step: u64) -> f64 {
        bytes_per_step as f64 / (bandwidth_gbs * 1e9 * self.stream_efficiency)
            + layers as f64 * self.per_layer_s
    }

    /// Why the model cannot be used, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if !(self.stream_efficiency > 0.0 && self.stream_efficiency <= 1.0) {
            return Err(format!(
                "{} (expected a fraction of spec bandwidth in (0, 1])",
                self.stream_efficiency
            ));
        }
        if !(self.per_layer_s >= 0.0 && self.per_layer_s.is_finite()) {
            return Err(format!(
                "fixed cost per layer {} s (expected >= 0)",
                self.per_layer_s
            ));
        }
        Ok(())
    }
}

/// Decode tokens/s estimated with a `SpeedModel`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Roofline {
    /// Always "estimate": spec bandwidth and a speed model, not a measurement.
    pub kind: &'static str,
    pub card: String,
    pub bandwidth_gbs: f64,
    /// Bytes per step / (step time x spec bandwidth): 1.0 = the pure roofline.
    pub efficiency: f64,
    /// The speed model's stream efficiency and fixed cost per layer (0 for a flat efficiency).
    pub stream_efficiency: f64,
    pub per_layer_us: f64,
    pub layers: usize,
    pub batch: u64,
    /// Bytes read per decode step: weights once + every sequence's KV cache at the plan's context.
    pub bytes_per_step: u64,
    /// Tokens per second over all sequences of the batch.
    pub tokens_per_s: f64,
    pub ms_per_step: f64,
    /// The same step under the other kernels' fits of the same report (`FittedSpeed::others`),
    /// kernel and tokens/s: how much the estimate depends on which measured kernel it scales.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_fits: Vec<(String, f64)>,
    /// The fewest and most decoder layers of the measured models the speed model was fitted to
    /// (7B's 32 and 13B's 40); None for a flat efficiency (`--efficiency`, a model's own run,
    /// the pure roofline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fitted_layers: Option<(usize, usize)>,
    /// `layers` lies outside `fitted_layers` (33B's 60): both terms are carried past the depths
    /// they were measured at, so this estimate rests on the model's form alone.
    pub extrapolated: bool,
}

impl Roofline {
    /// Fill `other_fits`: this roofline's step (card, layers, batch, bytes) under each of
    /// `others`' speed models, as `roofline` computes its own.
    pub fn add_other_fits(&mut self, others: &[(String, SpeedModel)]) {
        self.other_fits = others
            .iter()
            .map(|(k, o)| {
                let step = o.step_s(self.bandwidth_gbs, self.layers, self.bytes_per_step);
                (k.clone(), self.batch as f64 / step)
            })
            .collect();
    }

    /// Record the depths the speed model was fitted to, and whether this model's lies outside.
    pub fn set_fitted_layers(&mut self, fitted: Option<(usize, usize)>) {
        self.fitted_layers = fitted;
        self.extrapolated = fitted.is_some_and(|(lo, hi)| self.layers < lo || self.layers > hi);
    }

    /// Lowest and highest tokens/s over this estimate and `other_fits`.
    pub fn range(&self) -> (f64, f64) {
        self.other_fits
            .iter()
            .map(|(_, t)| *t)
            .fold((self.tokens_per_s, self.tokens_per_s), |(lo, hi), t| {
                (lo.min(t), hi.max(t))
            })
    }
}

pub fn roofline(
    card: &Card,
    speed: &SpeedModel,
    layers: usize,
    batch: u64,
    bytes_per_step: u64,
) -> Roofline {
    let step_s = speed.step_s(card.bandwidth_gbs, layers, bytes_per_step);
    Roofline {
        kind: "estimate",
        card: card.name.to_string(),
        bandwidth_gbs: card.bandwidth_gbs,
        efficiency: bytes_per_step as f64 / (step_s * card.bandwidth_gbs * 1e9),
        stream_efficiency: speed.stream_efficiency,
        per_layer_us: speed.per_layer_s * 1e6,
        layers,
        batch,
        bytes_per_step,
        tokens_per_s: batch as f64 / step_s,
        ms_per_step: step_s * 1e3,
        other_fits: Vec::new(),
        fitted_layers: None,
        extrapolated: false,
    }
}
