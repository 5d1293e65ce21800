//! Does a plan fit a card, the longest context a card allows, and the bandwidth roofline.

use super::cards::Card;
use serde::Serialize;

/// Upper end of the context search. 2^24 positions of 7B KV cache would be 8 TiB: no card reaches it.
pub const MAX_CTX_SEARCH: u64 = 1 << 24;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Fit {
    pub card: String,
    pub memory_bytes: u64,
    /// total_bytes <= memory_bytes at the plan's context.
    pub fits: bool,
    /// memory_bytes - total_bytes (negative: short by that much).
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
    Fit {
        card: card.name.to_string(),
        memory_bytes: card.memory_bytes,
        fits: total_bytes <= card.memory_bytes,
        free_bytes: card.memory_bytes as i64 - total_bytes as i64,
        max_ctx: longest_ctx(card.memory_bytes, total_at),
    }
}

/// Decode tokens/s if every step streamed its bytes at `bandwidth x efficiency`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Roofline {
    /// Always "estimate": spec bandwidth x an efficiency, not a measurement.
    pub kind: &'static str,
    pub card: String,
    pub bandwidth_gbs: f64,
    /// 1.0 = the pure roofline; a measured fraction of spec bandwidth otherwise.
    pub efficiency: f64,
    pub batch: u64,
    /// Bytes read per decode step: weights once + every sequence's KV cache at the plan's context.
    pub bytes_per_step: u64,
    /// Tokens per second over all sequences of the batch.
    pub tokens_per_s: f64,
    pub ms_per_step: f64,
}

pub fn roofline(card: &Card, efficiency: f64, batch: u64, bytes_per_step: u64) -> Roofline {
    let bytes_per_s = card.bandwidth_gbs * 1e9 * efficiency;
    let steps_per_s = bytes_per_s / bytes_per_step as f64;
    Roofline {
        kind: "estimate",
        card: card.name.to_string(),
        bandwidth_gbs: card.bandwidth_gbs,
        efficiency,
        batch,
        bytes_per_step,
        tokens_per_s: steps_per_s * batch as f64,
        ms_per_step: 1e3 / steps_per_s,
    }
}
