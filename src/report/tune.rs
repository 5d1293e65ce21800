//! The tuning report (reports/<gpu>/tune.md + tune-speedup.svg) from a tuned config
//! (tuning/<gpu>.json): per key, the default's and the winner's interquartile mean, the keys
//! where the tuner beat the default, and a plot of the speedup per key. Written by `lab tune`
//! after tuning and by `lab report` from the recorded file; every number comes from the config.

use crate::report::markdown::table;
use crate::report::plot::{scatter_chart, Series};
use crate::report::{device_markdown, stale_note};
use crate::tune::{BudgetSetting, CandidateStatus, Choice, DecodeBudget, TunedConfig, TunedEntry};
use crate::util::write_atomic;
use crate::Result;
use std::path::Path;

/// Keys sorted as every table and the plot number them (#1 = first row).
fn sorted(c: &TunedConfig) -> Vec<&TunedEntry> {
    let mut e: Vec<&TunedEntry> = c.entries.iter().collect();
    e.sort_by_key(|e| e.key);
    e
}

/// The recorded interquartile mean of `choice` among `e`'s candidates, if it was timed.
pub fn candidate_iqm(e: &TunedEntry, choice: &Choice) -> Option<f64> {
    e.candidates
        .iter()
        .find(|r| &r.choice == choice)
        .and_then(|r| match r.status {
            CandidateStatus::Ok { iqm_us, .. } => Some(iqm_us),
            _ => None,
        })
}

/// default IQM / winner IQM: how much faster the tuned choice is than the heuristic's.
pub fn speedup(e: &TunedEntry) -> Option<f64> {
    match (candidate_iqm(e, &e.default), candidate_iqm(e, &e.winner)) {
        (Some(d), Some(w)) if w > 0.0 => Some(d / w),
        _ => None,
    }
}

fn us(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{x:.2}"))
}

fn row(i: usize, e: &TunedEntry, with_rejected: bool) -> Vec<String> {
    let mut r = vec![
        format!("{}", i + 1),
        e.key.to_string(),
        e.default.to_string(),
        us(candidate_iqm(e, &e.default)),
        e.winner.to_string(),
        us(candidate_iqm(e, &e.winner)),
        speedup(e).map_or("-".into(), |s| format!("{s:.2}x")),
    ];
    if with_rejected {
        let rejected = e
            .candidates
            .iter()
            .filter(|r| !matches!(r.status, CandidateStatus::Ok { .. }))
            .count();
        r.push(rejected.to_string());
    }
    r.push(e.note.clone());
    r
}

/// tune.md's text.
pub fn tune_markdown(c: &TunedConfig, plotted: bool) -> String {
    let entries = sorted(c);
    let mut md = format!(
        "# Tuning: tuned vs default\n\n{}- tuned config: {} keys, git `{}`, kernel hash `{}`, created {}\n",
        device_markdown(&c.device),
        entries.len(),
        if c.git_rev.is_empty() { "?" } else { &c.git_rev },
        c.kernel_hash,
        if c.created.is_empty() { "?" } else { &c.created },
    );
    if let Some(s) = stale_note(&c.kernel_hash) {
        md.push_str(&format!("\n{s}\n"));
    }
    md.push_str("\nSpeedup = the default's interquartile mean / the winner's, from the same tuning run. The tuner keeps the default unless a candidate beats it by more than the timing noise, so most keys read 1.00x.\n\n## Keys where the tuner beat the default\n\n");
    let mut beat: Vec<(usize, &TunedEntry)> = entries
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, e)| e.winner != e.default)
        .collect();
    // Biggest gain first; a default that was rejected (no speedup to compute) last.
    beat.sort_by(|a, b| {
        let (sa, sb) = (speedup(a.1), speedup(b.1));
        sb.unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&sa.unwrap_or(f64::NEG_INFINITY))
            .then(a.0.cmp(&b.0))
    });
    let head = [
        "#",
        "key",
        "default",
        "default us",
        "winner",
        "winner us",
        "speedup",
    ];
    if beat.is_empty() {
        md.push_str("None: the default won or was kept on every key.\n");
    } else {
        let rows: Vec<Vec<String>> = beat.iter().map(|&(i, e)| row(i, e, false)).collect();
        let mut h = head.to_vec();
        h.push("note");
        md.push_str(&table(&h, &rows));
    }
    if plotted {
        md.push_str(
            "\n![speedup of the tuned choice over the default, per key](tune-speedup.svg)\n",
        );
    }
    md.push_str("\n## Every key\n\n");
    let rows: Vec<Vec<String>> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| row(i, e, true))
        .collect();
    let mut h = head.to_vec();
    h.extend(["rejected", "note"]);
    md.push_str(&table(&h, &rows));
    md.push_str(&decode_markdown(c));
    md
}

/// The interquartile mean of a budget setting's rounds, ms per token.
fn budget_iqm(b: &DecodeBudget, s: &BudgetSetting) -> Option<f64> {
    b.candidates
        .iter()
        .find(|c| &c.setting == s)
        .and_then(|c| c.rounds())
        .map(|t| t.iqm_us)
}

/// tune.md's decode section: each model's budget settings as timed (empty when none were).
fn decode_markdown(c: &TunedConfig) -> String {
    if c.decode.is_empty() {
        return String::new();
    }
    let mut md = String::from("
## Decode step: the GEMVs' PDL prefetch budget per model

The whole graph + PDL step timed at each setting (ms per token, interquartile mean over interleaved rounds), since the best budget is a property of the model's step, not of one kernel (notes/kernels.md). The engine uses the winner for that model while its kernels are the ones listed in the tuned config; the default otherwise.

");
    let rows: Vec<Vec<String>> = c
        .decode
        .iter()
        .map(|b| {
            let ms = |s| budget_iqm(b, s).map_or("-".into(), |x| format!("{x:.3}"));
            let others: Vec<String> = b
                .candidates
                .iter()
                .filter(|x| x.setting != b.default && x.setting != b.winner)
                .map(|x| format!("{}: {}", x.setting, ms(&x.setting)))
                .collect();
            vec![
                b.label.clone(),
                b.default.to_string(),
                ms(&b.default),
                b.winner.to_string(),
                ms(&b.winner),
                others.join("; "),
                b.note.clone(),
            ]
        })
        .collect();
    md.push_str(&table(
        &[
            "model",
            "default",
            "default ms",
            "winner",
            "winner ms",
            "other settings, ms",
            "note",
        ],
        &rows,
    ));
    md
}

/// tune-speedup.svg: speedup per key (x = the key's # in the tables), one colour per batch bucket,
/// and the 1.0x line of the default. `Ok(false)` when no key has both timings (nothing to plot).
pub fn plot_tune_speedup(path: &Path, c: &TunedConfig) -> Result<bool> {
    let entries = sorted(c);
    let mut buckets: Vec<u32> = entries.iter().map(|e| e.key.batch_bucket).collect();
    buckets.sort_unstable();
    buckets.dedup();
    let mut series: Vec<Series> = buckets
        .iter()
        .map(|&b| Series {
            label: format!("m<={b}"),
            points: entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.key.batch_bucket == b)
                .filter_map(|(i, e)| speedup(e).map(|s| ((i + 1) as f64, s)))
                .collect(),
            reference: false,
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    if series.is_empty() {
        return Ok(false);
    }
    series.push(Series {
        label: "default (1.0x)".into(),
        points: vec![(1.0, 1.0), (entries.len().max(2) as f64, 1.0)],
        reference: true,
    });
    scatter_chart(
        path,
        &format!("Tuned vs default: speedup per key ({})", c.device.name),
        "key # (tune.md table order)",
        "default IQM / winner IQM",
        &series,
    )?;
    Ok(true)
}

/// tune.md and tune-speedup.svg in `dir`.
pub fn write_tune_report(dir: &Path, c: &TunedConfig) -> Result<()> {
    let plot = dir.join("tune-speedup.svg");
    let plotted = plot_tune_speedup(&plot, c)?;
    if !plotted && plot.is_file() {
        // A plot of an earlier config would sit beside a report that no longer shows it.
        std::fs::remove_file(&plot).map_err(|e| crate::LabError::io(&plot, e))?;
    }
    write_atomic(&dir.join("tune.md"), tune_markdown(c, plotted).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tune::{CandidateResult, ProblemKey};

    fn ok(iqm: f64) -> CandidateStatus {
        CandidateStatus::Ok {
            median_us: iqm,
            iqm_us: iqm,
            p25_us: iqm * 0.99,
            p75_us: iqm * 1.01,
        }
    }

    fn entry(
        bucket: u32,
        default: (&str, CandidateStatus),
        winner: Option<(&str, f64)>,
    ) -> TunedEntry {
        let d = Choice::new(default.0);
        let mut candidates = vec![CandidateResult {
            choice: d.clone(),
            status: default.1,
        }];
        let w = match winner {
            Some((name, iqm)) => {
                candidates.push(CandidateResult {
                    choice: Choice::new(name),
                    status: ok(iqm),
                });
                Choice::new(name)
            }
            None => d.clone(),
        };
        TunedEntry {
            key: ProblemKey {
                n: 4096,
                k: 4096,
                group_size: 128,
                act_order: false,
                batch_bucket: bucket,
            },
            winner: w,
            default: d,
            candidates,
            note: format!("note {bucket}"),
        }
    }

    fn config(entries: Vec<TunedEntry>) -> TunedConfig {
        let device = crate::cuda::device::test_device("Test GPU", (9, 0), 132);
        let mut c = TunedConfig::new(device, "abc123", "feedfacefeedface");
        c.entries = entries;
        c
    }

    #[test]
    fn the_decode_section_shows_each_models_settings_from_the_recorded_rounds() {
        use crate::tune::{BudgetCandidate, DecodeModel};
        let mut c = config(vec![entry(1, ("gemv_v2_vec", ok(10.0)), None)]);
        assert!(
            !tune_markdown(&c, false).contains("## Decode step"),
            "no budgets, no section"
        );
        let def = BudgetSetting::uniform(32768);
        let b16 = BudgetSetting::uniform(16384);
        let mut alone = def.clone();
        alone.per_variant.insert("gemv_v10_l2x".into(), 16384);
        let cand = |s: &BudgetSetting, ms: &[f64]| BudgetCandidate {
            setting: s.clone(),
            ms_per_token: ms.to_vec(),
        };
        c.decode.push(DecodeBudget {
            model: DecodeModel::of(&crate::model::config::ModelConfig::vicuna_7b()),
            label: "vicuna-7b int4 g128, ctx 128".into(),
            act_order: false,
            linears: Vec::new(),
            step: Default::default(),
            winner: b16.clone(),
            default: def.clone(),
            candidates: vec![
                cand(&def, &[2.25, 2.25, 2.26, 2.24]),
                cand(&b16, &[2.21, 2.22, 2.22, 2.21]),
                cand(&alone, &[2.23, 2.23, 2.23, 2.23]),
            ],
            note: "1.6% faster than default 32 KB (noise 1.0%)".into(),
        });
        let md = tune_markdown(&c, false);
        let row = "| vicuna-7b int4 g128, ctx 128 | 32 KB | 2.250 | 16 KB | 2.215 | 32 KB, gemv_v10_l2x 16 KB: 2.230 | 1.6% faster than default 32 KB (noise 1.0%) |";
        assert!(md.contains(row), "{md}");
    }

    #[test]
    fn beaten_defaults_are_listed_with_their_recorded_speedup() {
        // Stored out of order: the tables number keys in key order (bucket 1, 2, 4).
        let c = config(vec![
            entry(4, ("gemm_v2_mma", ok(30.0)), None),
            entry(2, ("gemm_v1_simt", ok(25.0)), Some(("gemm_v2_mma", 20.0))),
            entry(
                1,
                (
                    "gemv_v4_perm",
                    CandidateStatus::Rejected {
                        reason: "mismatch".into(),
                    },
                ),
                Some(("gemv_v2_vec", 11.0)),
            ),
        ]);
        let md = tune_markdown(&c, true);
        let beat = &md[md.find("## Keys where").unwrap()..md.find("## Every key").unwrap()];
        // 25 / 20 = 1.25x first; the rejected default has no speedup and comes last.
        let i_simt = beat.find("| 2 | n=4096 k=4096 g=128 act_order=false m<=2 | gemm_v1_simt | 25.00 | gemm_v2_mma | 20.00 | 1.25x | note 2 |").expect(beat);
        let i_rej = beat.find("| 1 | n=4096 k=4096 g=128 act_order=false m<=1 | gemv_v4_perm | - | gemv_v2_vec | 11.00 | - | note 1 |").expect(beat);
        assert!(i_simt < i_rej);
        assert!(
            !beat.contains("m<=4"),
            "a kept default is not a win: {beat}"
        );
        let all = &md[md.find("## Every key").unwrap()..];
        assert!(all.contains("| 3 | n=4096 k=4096 g=128 act_order=false m<=4 | gemm_v2_mma | 30.00 | gemm_v2_mma | 30.00 | 1.00x | 0 | note 4 |"), "{all}");
        assert!(
            all.contains("| 11.00 | - | 1 | note 1 |"),
            "rejected count: {all}"
        );
        assert!(md.contains("kernel hash `feedfacefeedface`") && md.contains("**Stale:**"));

        let dir = tempfile::tempdir().unwrap();
        write_tune_report(dir.path(), &c).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("tune-speedup.svg")).unwrap();
        // Two keys with both timings (1.25x and 1.00x) + legend markers of their two buckets.
        assert_eq!(svg.matches("<circle").count(), 4, "{svg}");
        assert!(std::fs::read_to_string(dir.path().join("tune.md"))
            .unwrap()
            .contains("tune-speedup.svg"));
    }

    #[test]
    fn nothing_to_plot_without_timed_pairs() {
        let c = config(vec![entry(
            1,
            (
                "gemv_v4_perm",
                CandidateStatus::Rejected { reason: "x".into() },
            ),
            None,
        )]);
        let dir = tempfile::tempdir().unwrap();
        // An earlier config's plot in the folder: the new report, with nothing to plot, removes it
        // rather than leave a plot beside a tune.md that no longer shows it.
        let earlier = config(vec![entry(
            2,
            ("gemm_v1_simt", ok(25.0)),
            Some(("gemm_v2_mma", 20.0)),
        )]);
        write_tune_report(dir.path(), &earlier).unwrap();
        assert!(dir.path().join("tune-speedup.svg").is_file());
        write_tune_report(dir.path(), &c).unwrap();
        assert!(!dir.path().join("tune-speedup.svg").exists());
        let md = std::fs::read_to_string(dir.path().join("tune.md")).unwrap();
        assert!(md.contains("None: the default won or was kept on every key."));
        assert!(!md.contains("tune-speedup.svg"));
    }

    #[test]
    fn beaten_keys_with_the_same_speedup_keep_table_order() {
        // Two keys each 1.25x: the beaten list keeps them in the tables' order (#1 before #2).
        let c = config(vec![
            entry(2, ("gemm_v1_simt", ok(25.0)), Some(("gemm_v2_mma", 20.0))),
            entry(1, ("gemv_v6_pipe", ok(12.5)), Some(("gemv_v2_vec", 10.0))),
        ]);
        let md = tune_markdown(&c, false);
        let beat = &md[md.find("## Keys where").unwrap()..md.find("## Every key").unwrap()];
        let first = beat.find("| 1 | n=4096 k=4096 g=128 act_order=false m<=1 | gemv_v6_pipe | 12.50 | gemv_v2_vec | 10.00 | 1.25x | note 1 |").expect(beat);
        let second = beat.find("| 2 | n=4096 k=4096 g=128 act_order=false m<=2 | gemm_v1_simt | 25.00 | gemm_v2_mma | 20.00 | 1.25x | note 2 |").expect(beat);
        assert!(first < second, "{beat}");
    }
}
