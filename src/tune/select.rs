//! The selection rule: which candidate serves a key, given its recorded timings.
//!
//! Rejected candidates never win. Candidates compare by interquartile mean. A challenger replaces
//! the default only if it beats it by more than the noise; otherwise the default stays, because a
//! "win" inside the noise is a coin flip that makes the dispatcher differ from run to run and
//! from machine to machine for nothing (ExLlamaV2's tuner keeps its default the same way).

use super::schema::{CandidateResult, CandidateStatus, Choice};

/// Smallest relative gain worth switching for. Event timing of a ~20-200 us kernel repeats to
/// about 1% run to run on an idle card; twice that keeps a switch meaningful.
pub const MIN_GAIN: f64 = 0.02;

/// Smallest relative gain worth switching a decode step's prefetch budget for. A graph + PDL
/// step timed over tens of steps repeats to a few tenths of a percent within one process (the
/// rounds are interleaved, so drift hits every setting alike); the H100 budget effects worth having
/// are 1.5-4% (notes/kernels.md).
pub const MIN_GAIN_DECODE: f64 = 0.01;

#[derive(Debug, Clone, PartialEq)]
pub struct Selection<T = Choice> {
    pub winner: T,
    pub note: String,
}

/// (iqm, spread) of a usable timing; spread = (p75 - p25) / median, the run-to-run noise
/// (select_by reads an unknown one as 100% and a negative one as 0%).
fn timing(s: &CandidateStatus) -> Option<(f64, f64)> {
    match *s {
        CandidateStatus::Ok {
            median_us,
            iqm_us,
            p25_us,
            p75_us,
        } if iqm_us.is_finite() && iqm_us > 0.0 && median_us > 0.0 => {
            Some((iqm_us, (p75_us - p25_us) / median_us))
        }
        _ => None,
    }
}

/// Pick the winner among `candidates` against `default` (see the module comment).
/// Ties on iqm are broken by the choice's order (variant name, then parameters), so the same
/// timings always give the same winner whatever order they were measured in.
pub fn select(default: &Choice, candidates: &[CandidateResult]) -> Selection {
    let timed: Vec<(Choice, Option<(f64, f64)>)> = candidates
        .iter()
        .map(|c| (c.choice.clone(), timing(&c.status)))
        .collect();
    select_by(default, &timed, MIN_GAIN)
}

/// The rule itself, for any kind of candidate: each with its (time, spread), None when rejected
/// or untimed; a challenger must beat the default by more than `min_gain` and both spreads (a
/// spread that is not finite, NaN included, counts as 100%; a negative one as 0%).
pub fn select_by<T: Clone + Ord + std::fmt::Display>(
    default: &T,
    timed: &[(T, Option<(f64, f64)>)],
    min_gain: f64,
) -> Selection<T> {
    let mut ok: Vec<(&T, f64, f64)> = timed
        .iter()
        .filter_map(|(c, t)| {
            t.map(|(iqm, spread)| {
                let spread = if spread.is_finite() {
                    spread.max(0.0)
                } else {
                    1.0
                };
                (c, iqm, spread)
            })
        })
        .collect();
    ok.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(b.0)));
    let Some(&(best, best_iqm, best_spread)) = ok.first() else {
        return Selection {
            winner: default.clone(),
            note: format!(
                "kept default: all {} candidates rejected or untimed",
                timed.len()
            ),
        };
    };
    let Some(&(_, def_iqm, def_spread)) = ok.iter().find(|c| c.0 == default) else {
        return Selection {
            winner: best.clone(),
            note: format!("default {default} rejected or untimed: fastest usable candidate"),
        };
    };
    if best == default {
        return Selection {
            winner: default.clone(),
            note: "default is fastest".into(),
        };
    }
    // A challenger wins by beating the default by more than its own noise and the default's;
    // the fastest of those that do. Testing only the fastest would let one noisy outlier keep
    // the default over a slower challenger whose gain is clear.
    let gain = |iqm: f64| (def_iqm - iqm) / def_iqm;
    let noise = |spread: f64| min_gain.max(def_spread).max(spread);
    let clear = ok
        .iter()
        .find(|&&(c, iqm, spread)| c != default && gain(iqm) > noise(spread));
    if let Some(&(winner, iqm, spread)) = clear {
        let passed_over = if winner == best {
            String::new()
        } else {
            format!(
                "; fastest {best} ({:.1}%) within its noise {:.1}%",
                gain(best_iqm) * 100.0,
                noise(best_spread) * 100.0
            )
        };
        return Selection {
            winner: winner.clone(),
            note: format!(
                "{:.1}% faster than default {default} (noise {:.1}%){passed_over}",
                gain(iqm) * 100.0,
                noise(spread) * 100.0
            ),
        };
    }
    Selection {
        winner: default.clone(),
        note: format!(
            "kept default: gain {:.1}% of {best} within noise {:.1}%",
            gain(best_iqm) * 100.0,
            noise(best_spread) * 100.0
        ),
    }
}
