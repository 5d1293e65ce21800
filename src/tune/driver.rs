//! The tuner's driver loop, independent of the GPU: for each pending key, measure every candidate
//! through a `Measurer`, select, record, save. The GPU harness plugs in as a `Measurer`.

use super::dispatch::{self, heuristic, serves};
use super::schema::{
    CandidateResult, CandidateStatus, Choice, ProblemKey, TunedConfig, TunedEntry,
};
use super::select::select;
use crate::cuda::DeviceInfo;
use crate::kernels::registry;
use crate::{LabError, Result};
use std::path::Path;

/// Times one candidate on one key. The GPU implementation runs the timing harness (cold weights,
/// warm-up, many runs) and the correctness check; a candidate that cannot be used comes back as
/// `Ok(Rejected)`. `Err` means nothing more can be measured (the GPU's context is lost after a
/// fault: every later candidate would fail too and be recorded as rejected): the tune stops.
pub trait Measurer {
    fn measure(&mut self, key: &ProblemKey, choice: &Choice) -> Result<CandidateStatus>;
}

/// Most candidates timed per key: 7 buckets x 26 shapes x 2 act-order = 364 keys for Vicuna 7B+13B,
/// and at ~50 ms per candidate (warm-up + 200 timed runs) 32 candidates keep a full run near 10 min.
pub const MAX_CANDIDATES_PER_KEY: usize = 32;

/// Split-K factors tried for a variant that is not yet in the registry (the registry's tunables
/// replace this once it is).
const SPLITK_TRY: &[u32] = &[2, 4, 8, 16];

/// The default (heuristic) choice and every candidate for `key`: each known variant that serves
/// it, with every combination of its registry tunables (`quick`: defaults only). The default is
/// always among the candidates, first. Past `MAX_CANDIDATES_PER_KEY` the variants take turns
/// (each one's defaults, then each one's second grid point, ...), so a variant with a large grid
/// (gemv_v6_pipe: 3 thread counts x 5 split-K values) cannot crowd the ones listed after it out
/// of the tune.
pub fn candidates_for(
    key: &ProblemKey,
    sm: u32,
    sms: u32,
    quick: bool,
) -> Result<(Choice, Vec<Choice>)> {
    let default = normalized(heuristic(key, sm, sms)?);
    let mut grids: Vec<Vec<Choice>> = Vec::new();
    for v in dispatch::VARIANTS
        .iter()
        .filter(|v| serves(v.name, key, sm))
    {
        let mut grid = vec![Choice::new(v.name)];
        if !quick {
            if let Some(r) = registry::by_name(v.name) {
                let mut full = vec![Choice::new(v.name)];
                for t in r.tunables {
                    full = full
                        .iter()
                        .flat_map(|c| t.values.iter().map(move |&x| c.clone().with(t.name, x)))
                        .collect();
                }
                // The all-defaults point is the plain choice again: one launch, timed once.
                grid.extend(full.into_iter().map(normalized));
            } else if v.name == "gemv_v5_splitk" {
                grid = SPLITK_TRY
                    .iter()
                    .filter(|&&s| key.k / s >= dispatch::SPLITK_MIN_SLICE_K)
                    .map(|&s| Choice::new(v.name).with("split_k", s))
                    .collect();
            }
        }
        grids.push(grid);
    }
    let out = take_turns(&default, &grids, MAX_CANDIDATES_PER_KEY);
    Ok((default, out))
}

/// `default` first, then the grids' entries in turns (every grid's first, then every grid's
/// second, ...), without repeats, at most `cap` in all.
fn take_turns(default: &Choice, grids: &[Vec<Choice>], cap: usize) -> Vec<Choice> {
    let mut out = vec![default.clone()];
    let longest = grids.iter().map(Vec::len).max().unwrap_or(0);
    for turn in 0..longest {
        for c in grids.iter().filter_map(|g| g.get(turn)) {
            if out.len() >= cap {
                return out;
            }
            if !out.contains(c) {
                out.push(c.clone());
            }
        }
    }
    out
}

/// `c` with every parameter that equals its variant's default left out: a parameter left out
/// takes the default (`launch::tunable`), so the two spell one launch and compare equal.
pub fn normalized(mut c: Choice) -> Choice {
    if let Some(r) = registry::by_name(&c.variant) {
        c.params.retain(|name, value| {
            r.tunables
                .iter()
                .find(|t| t.name == name.as_str())
                .is_none_or(|t| t.default != *value)
        });
    }
    c
}

/// Keys of `all` that `existing` cannot answer, in `all`'s order: no entry, or an entry whose
/// measured candidates do not include every one `candidates_for` lists now (a key tuned
/// `--quick`, asked for in full; a variant or grid point added since). `existing` must already
/// be known to match this GPU and kernel hash (`resume_or_new`), so its timings are reusable.
pub fn pending_keys(
    all: &[ProblemKey],
    existing: &TunedConfig,
    candidates_for: impl Fn(&ProblemKey) -> Result<(Choice, Vec<Choice>)>,
) -> Result<Vec<ProblemKey>> {
    let mut out = Vec::new();
    for k in all {
        let covered = match existing.entry(k) {
            None => false,
            Some(e) => {
                let measured: Vec<Choice> = e
                    .candidates
                    .iter()
                    .map(|c| normalized(c.choice.clone()))
                    .collect();
                candidates_for(k)?
                    .1
                    .into_iter()
                    .all(|c| measured.contains(&normalized(c)))
            }
        };
        if !covered {
            out.push(*k);
        }
    }
    Ok(out)
}

/// The config to continue: the file at `path` if it was measured on this GPU with these kernels;
/// a fresh one if there is no file or the kernel hash changed (its timings are stale: the string
/// says so). A file from another GPU is an error, so it is never overwritten by mistake: one of
/// another name, and one of other hardware under this GPU's name (an RTX 3060 of 12 and one of
/// 8 GB, a MIG slice), whose tuning is valid for that card.
pub fn resume_or_new(
    path: &Path,
    device: &DeviceInfo,
    git_rev: &str,
    kernel_hash: &str,
) -> Result<(TunedConfig, Option<String>)> {
    if !path.exists() {
        return Ok((TunedConfig::new(device.clone(), git_rev, kernel_hash), None));
    }
    let old = TunedConfig::load(path)?;
    if old.device.slug != device.slug || old.device.name != device.name {
        // check_matches fails on the device and names both GPUs.
        old.check_matches(device, kernel_hash)
            .map_err(|e| LabError::invalid(path.display().to_string(), e.to_string()))?;
    }
    if let Some(why) = super::schema::other_hardware(&old.device, device) {
        return Err(LabError::invalid(
            path.display().to_string(),
            format!(
                "tuned on other hardware under this GPU's name ({why}); it stays valid for that \
                 card: tune into another file with --file, or remove this one to replace it"
            ),
        ));
    }
    let stale = (old.kernel_hash != kernel_hash).then(|| {
        format!(
            "kernel hash {} differs from this binary's {}",
            old.kernel_hash, kernel_hash
        )
    });
    match stale {
        Some(why) => Ok((
            TunedConfig::new(device.clone(), git_rev, kernel_hash),
            Some(format!(
                "{}: {why}; starting over (the file is replaced at the first key)",
                path.display()
            )),
        )),
        None => Ok((old, None)),
    }
}

/// Tune every key of `keys` that `config` does not have yet. After each key: the entry is added,
/// `save` is called (so an interrupted run loses at most one key), then `on_progress(done, total,
/// entry)`. Returns how many keys were measured. A key whose every candidate was rejected (the
/// default kernel among them: a kernel bug, not a tuning result) is not recorded, so a rerun
/// measures it again; the tune goes on with the other keys and fails at the end naming each.
pub fn tune<M: Measurer + ?Sized>(
    config: &mut TunedConfig,
    keys: &[ProblemKey],
    candidates_for: impl Fn(&ProblemKey) -> Result<(Choice, Vec<Choice>)>,
    measurer: &mut M,
    mut on_progress: impl FnMut(usize, usize, &TunedEntry),
    mut save: impl FnMut(&TunedConfig) -> Result<()>,
) -> Result<usize> {
    let todo = pending_keys(keys, config, &candidates_for)?;
    let mut failed = Vec::new();
    for (i, key) in todo.iter().enumerate() {
        let (default, choices) = candidates_for(key)?;
        let candidates: Vec<CandidateResult> = choices
            .into_iter()
            .map(|choice| {
                Ok(CandidateResult {
                    status: measurer.measure(key, &choice).map_err(|e| {
                        LabError::invalid(format!("tuning {key}, {choice}"), e.to_string())
                    })?,
                    choice,
                })
            })
            .collect::<Result<_>>()?;
        if let Some(why) = all_rejected(&candidates) {
            failed.push(format!("{key}: {why}"));
            continue;
        }
        let s = select(&default, &candidates);
        let entry = TunedEntry {
            key: *key,
            winner: s.winner,
            default,
            candidates,
            note: s.note,
        };
        config.upsert(entry.clone());
        save(config)?;
        on_progress(i + 1, todo.len(), &entry);
    }
    if !failed.is_empty() {
        return Err(LabError::invalid(
            "tune",
            format!(
                "{} of {} keys had every candidate rejected (not recorded; a rerun measures them \
                 again): {}",
                failed.len(),
                todo.len(),
                failed.join("; ")
            ),
        ));
    }
    Ok(todo.len())
}

/// The first rejection's reason when no candidate was timed.
fn all_rejected(candidates: &[CandidateResult]) -> Option<String> {
    if candidates
        .iter()
        .any(|c| matches!(c.status, CandidateStatus::Ok { .. }))
    {
        return None;
    }
    Some(match candidates.first().map(|c| &c.status) {
        Some(CandidateStatus::Rejected { reason }) => format!(
            "all {} rejected, {} first: {reason}",
            candidates.len(),
            candidates[0].choice
        ),
        _ => format!("all {} rejected", candidates.len()),
    })
}

#[cfg(test)]
mod turn_tests {
    use super::*;

    #[test]
    fn a_large_grid_cannot_crowd_the_others_out_of_the_cap() {
        // Grid a has 10 points, b and c 3 each; cap 8 = the default + 7. In turns: a0 b0 c0 a1
        // b1 c1 a2 (b and c complete but for their last point; a concatenated first would
        // have taken all 7 places).
        let g = |v: &str, n: u32| -> Vec<Choice> {
            (0..n)
                .map(|i| Choice::new(v).with("split_k", i + 1))
                .collect()
        };
        let grids = vec![g("a", 10), g("b", 3), g("c", 3)];
        let def = Choice::new("b").with("split_k", 1);
        let out = take_turns(&def, &grids, 8);
        assert_eq!(out.len(), 8);
        assert_eq!(out[0], def);
        let count = |v: &str| out.iter().filter(|c| c.variant == v).count();
        // b's first point is the default (not repeated), so b gets b0 b1 b2 via turns.
        assert_eq!((count("a"), count("b"), count("c")), (3, 3, 2));
        // No cap: everything once.
        assert_eq!(take_turns(&def, &grids, usize::MAX).len(), 16);
    }
}
