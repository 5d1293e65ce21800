//! Kernel sweeps for `lab bench --family gemv|gemm` (and the criterion benches): every variant of
//! the family plus the cuBLAS baselines, on the Vicuna shapes, group 128, act-order off and on,
//! each timed cold (weights rotated over copies that exceed twice the L2), reported as bytes,
//! time, GB/s, % of the measured read ceiling and speedup over cuBLAS fp16 on the same shape.

use crate::bench::cold::{family_variants, runnable_batches, ColdLayer, SweepInput, CUBLAS};
use crate::bench::timing::TimingConfig;
use crate::bench::Timing;
use crate::check::cases::{Shape, VICUNA};
use crate::cuda::Gpu;
use crate::kernels::registry::Family;
use crate::report::markdown::table;
use crate::report::plot::{line_chart, Series};
use crate::report::ReportHeader;
use crate::util::{write_atomic, write_json_atomic};
use crate::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The four shapes the GEMV goal names (anchors.md): 7B gate/up and down, 13B gate/up and down.
const GOAL_SHAPES: &[(usize, usize)] =
    &[(4096, 11008), (11008, 4096), (5120, 13824), (13824, 5120)];
/// Batch sizes of the GEMM sweep (1 included so the plot starts where the GEMV family is).
const GEMM_BATCHES: &[usize] = &[1, 2, 4, 8, 16, 32, 64];
const GEMM_BATCHES_QUICK: &[usize] = &[1, 2, 4, 8, 16, 32, 64];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepRow {
    pub variant: String,
    pub k: usize,
    pub n: usize,
    pub m: usize,
    pub group: i32,
    pub act_order: bool,
    pub sym: bool,
    /// Minimum bytes the launch moves (weights + scales [+ zeros] + x + y [+ perm/g_idx]).
    pub bytes: u64,
    pub timing: Timing,
    pub gbps: f64,
    /// gbps / measured read ceiling.
    pub pct_read_ceiling: f64,
    /// cuBLAS fp16 time / this time, same shape and batch (None for the baseline itself when absent).
    pub speedup_vs_cublas: Option<f64>,
    pub copies_rotated: usize,
    /// Per-launch statistics with one event pair around `SweepOptions::back_to_back` consecutive
    /// launches (copies still rotated): the kernel time without most of the per-launch fixed
    /// cost. Absent in reports recorded before it existed, or when turned off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_to_back: Option<BackToBack>,
}

/// Back-to-back timing of one sweep row.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct BackToBack {
    /// Launches between one pair of events.
    pub launches_per_pair: usize,
    /// Per-launch statistics over the pairs.
    pub timing: Timing,
}

impl SweepRow {
    /// Per-launch fixed cost estimate: one-pair-per-launch IQM minus the back-to-back IQM.
    pub fn fixed_cost_us(&self) -> Option<f64> {
        self.back_to_back
            .map(|b| self.timing.iqm_us - b.timing.iqm_us)
    }
}

/// What a sweep measures besides the one-event-pair-per-launch timing.
#[derive(Debug, Clone, Copy)]
pub struct SweepOptions {
    /// Launches per event pair of the extra back-to-back timing (0 = skip it).
    pub back_to_back: usize,
}

impl Default for SweepOptions {
    fn default() -> Self {
        // 20 launches per pair: at >= 8 us per GEMV the queue stays ahead of the host's ~3-5 us
        // launch overhead, and one pair (> 160 us) dwarfs the event resolution (~0.5 us).
        SweepOptions { back_to_back: 20 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepReport {
    pub header: ReportHeader,
    pub family: String,
    pub quick: bool,
    pub rows: Vec<SweepRow>,
    /// (variant, shape, reason) of combinations the variant does not support, never silently dropped.
    pub skipped: Vec<String>,
}

fn shapes(quick: bool) -> Vec<Shape> {
    let mut v: Vec<Shape> = VICUNA
        .iter()
        .filter(|s| GOAL_SHAPES.contains(&(s.k, s.n)))
        .copied()
        .collect();
    if !quick {
        v.extend(
            VICUNA
                .iter()
                .filter(|s| !GOAL_SHAPES.contains(&(s.k, s.n)))
                .copied(),
        );
    }
    v
}

pub fn run_family(
    gpu: &Gpu,
    header: &ReportHeader,
    family: &str,
    quick: bool,
    dir: &Path,
) -> Result<()> {
    run_family_with(gpu, header, family, quick, dir, &SweepOptions::default())
}

/// `run_family` with explicit options (the back-to-back column's launches per event pair).
pub fn run_family_with(
    gpu: &Gpu,
    header: &ReportHeader,
    family: &str,
    quick: bool,
    dir: &Path,
    opts: &SweepOptions,
) -> Result<()> {
    let fam = match family {
        "gemv" => Family::Gemv,
        "gemm" => Family::Gemm,
        other => {
            return Err(crate::LabError::invalid(
                "--family",
                format!("{other}: expected gemv or gemm"),
            ))
        }
    };
    let read_ceiling = header.ceilings.map(|c| c.read_gbs).unwrap_or(f64::NAN);
    let cfg = if quick {
        TimingConfig::quick()
    } else {
        TimingConfig::default()
    };
    let batches: &[usize] = match fam {
        Family::Gemv => &[1],
        _ if quick => GEMM_BATCHES_QUICK,
        _ => GEMM_BATCHES,
    };
    // Back-to-back: a few pairs are enough (each pair already averages many launches).
    let b2b_cfg = TimingConfig {
        warmup: 2,
        iters: if quick { 5 } else { 10 },
    };
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let max_m = batches.iter().copied().max().unwrap_or(1);
    for shape in shapes(quick) {
        for act in [false, true] {
            if quick && fam == Family::Gemm && act {
                continue;
            }
            let input = SweepInput::new(shape, act, max_m)?;
            for v in family_variants(fam) {
                let ms = match runnable_batches(v, act, gpu.sm(), batches) {
                    Ok(ms) if ms.is_empty() => continue,
                    Ok(ms) => ms,
                    Err(reason) => {
                        skipped.push(format!(
                            "{} K={} N={} act={act}: {reason}",
                            v.name, shape.k, shape.n
                        ));
                        continue;
                    }
                };
                let timed = ColdLayer::new(gpu, v, &input).and_then(|mut cold| {
                    ms.iter()
                        .map(|&m| {
                            let t = cold.time(gpu, m, &cfg)?;
                            let b2b = match opts.back_to_back {
                                0 => None,
                                per_pair => Some(BackToBack {
                                    launches_per_pair: per_pair,
                                    timing: cold.time_back_to_back(gpu, m, &b2b_cfg, per_pair)?,
                                }),
                            };
                            Ok((m, t, b2b, cold.bytes_moved(m)))
                        })
                        .collect::<Result<Vec<_>>>()
                        .map(|t| (t, cold.copies()))
                });
                match timed {
                    Ok((results, copies)) => {
                        for (m, t, back_to_back, bytes) in results {
                            let gbps = t.gbps(bytes);
                            rows.push(SweepRow {
                                variant: v.name.to_string(),
                                k: shape.k,
                                n: shape.n,
                                m,
                                group: 128,
                                act_order: act,
                                sym: true,
                                bytes,
                                timing: t,
                                gbps,
                                pct_read_ceiling: 100.0 * gbps / read_ceiling,
                                speedup_vs_cublas: None,
                                copies_rotated: copies,
                                back_to_back,
                            });
                        }
                    }
                    Err(e) => skipped.push(format!(
                        "{} K={} N={} act={act}: {e}",
                        v.name, shape.k, shape.n
                    )),
                }
            }
            eprintln!("  {} K={} N={} act={act}: done", family, shape.k, shape.n);
        }
    }
    // Speedups against the cuBLAS fp16 row of the same shape and batch. cuBLAS has no act-order:
    // its dense fp16 W is the same either way, so the act-order-off time serves both.
    let base: std::collections::HashMap<(usize, usize, usize), f64> = rows
        .iter()
        .filter(|r| r.variant == CUBLAS && !r.act_order)
        .map(|r| ((r.k, r.n, r.m), r.timing.iqm_us))
        .collect();
    for r in &mut rows {
        r.speedup_vs_cublas = base.get(&(r.k, r.n, r.m)).map(|b| b / r.timing.iqm_us);
    }
    let report = SweepReport {
        header: header.clone(),
        family: family.to_string(),
        quick,
        rows,
        skipped,
    };
    write_sweep(dir, &report)?;
    // Written first (the rows are the evidence), then refused.
    match implausible(&report) {
        Some(why) => Err(crate::LabError::invalid("sweep timings", why)),
        None => Ok(()),
    }
}

/// Rows moving at least this many bytes are the plausibility check's evidence (a launch that
/// small could be fixed-cost bound even when timed right).
const PLAUSIBLE_MIN_BYTES: u64 = 8_000_000;
/// ... and if every one of them reaches less than this share of the read ceiling, the event pairs
/// timed something else. The 2026-11-26 17:05 H100 run: every row ~9.5 ms (a host symbol lookup
/// per launch inside the event window), 0.1-0.3% of the ceiling; the slowest valid m = 1 rows
/// since then are above 25%.
const PLAUSIBLE_MIN_PCT: f64 = 5.0;

/// Why a sweep's timings cannot be the kernels' (None when they can): every row of >= 8 MB
/// moved below 5% of the read ceiling. One slow variant is a finding; all of them at once is the
/// harness (host work inside the events).
pub fn implausible(r: &SweepReport) -> Option<String> {
    let big: Vec<&SweepRow> = r
        .rows
        .iter()
        .filter(|x| x.bytes >= PLAUSIBLE_MIN_BYTES)
        .collect();
    if big.is_empty() || big.iter().any(|x| x.pct_read_ceiling >= PLAUSIBLE_MIN_PCT) {
        return None;
    }
    let best = big
        .iter()
        .map(|x| x.pct_read_ceiling)
        .fold(0.0f64, f64::max);
    Some(format!(
        "every one of the {} rows of >= 8 MB moved its bytes at < {PLAUSIBLE_MIN_PCT}% of the read ceiling (best {best:.2}%): the event pairs are timing host work, not the kernels (the report is written, marked SUSPECT)",
        big.len()
    ))
}

/// `<family>.json` (the record), then its markdown and plot.
pub fn write_sweep(dir: &Path, r: &SweepReport) -> Result<()> {
    write_json_atomic(&dir.join(format!("{}.json", r.family)), r)?;
    write_sweep_views(dir, r)
}

/// `<family>.md` and the family's plot from a recorded sweep; the JSON is left untouched
/// (`lab report` regenerates these without a GPU). Every number comes from `r`.
pub fn write_sweep_views(dir: &Path, r: &SweepReport) -> Result<()> {
    if r.family != "gemv" && r.family != "gemm" {
        return Err(crate::LabError::invalid(
            "sweep report",
            format!("family '{}': expected gemv or gemm", r.family),
        ));
    }
    let suspect = implausible(r).map_or(String::new(), |why| {
        format!("\n**SUSPECT timings:** {why}.\n")
    });
    let mut md = format!(
        "# {} sweep{}\n\n{}{}{suspect}\nCold weights (rotated over copies exceeding 2x L2), CUDA events, interquartile mean of {} launches.\nGroup 128, symmetric, default tunables.\n{}\n",
        r.family,
        if r.quick { " (quick)" } else { "" },
        r.header.markdown(),
        r.header.stale_note().map_or(String::new(), |s| format!("\n{s}\n")),
        launches_per_row(r),
        back_to_back_note(r),
    );
    let rows: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|x| {
            vec![
                x.variant.clone(),
                format!("{}x{}", x.k, x.n),
                x.m.to_string(),
                if x.act_order {
                    "yes".into()
                } else {
                    "no".into()
                },
                format!("{:.2}", x.bytes as f64 / 1e6),
                format!("{:.1}", x.timing.iqm_us),
                format!("{:.0}", x.gbps),
                format!("{:.1}%", x.pct_read_ceiling),
                x.speedup_vs_cublas
                    .map_or("-".into(), |s| format!("{s:.2}x")),
                x.back_to_back
                    .map_or("-".into(), |b| format!("{:.1}", b.timing.iqm_us)),
                x.fixed_cost_us().map_or("-".into(), |f| format!("{f:.1}")),
            ]
        })
        .collect();
    md.push_str(&table(
        &[
            "variant",
            "KxN",
            "m",
            "act-order",
            "MB",
            "us (IQM)",
            "GB/s",
            "% read ceiling",
            "vs cuBLAS fp16",
            "us back-to-back",
            "fixed us/launch",
        ],
        &rows,
    ));
    if !r.skipped.is_empty() {
        md.push_str("\nNot run (declared unsupported or failed to prepare):\n\n");
        for s in &r.skipped {
            md.push_str(&format!("- {s}\n"));
        }
    }
    write_atomic(&dir.join(format!("{}.md", r.family)), md.as_bytes())?;
    plot_sweep(dir, r)
}

/// How the back-to-back column was measured, from the recorded rows ("" when no row has it).
fn back_to_back_note(r: &SweepReport) -> String {
    let mut per: Vec<usize> = r
        .rows
        .iter()
        .filter_map(|x| x.back_to_back.map(|b| b.launches_per_pair))
        .collect();
    per.sort_unstable();
    per.dedup();
    match (per.first(), per.last()) {
        (Some(a), Some(b)) => format!(
            "\"us back-to-back\": one event pair around {} consecutive launches (copies still rotated), per launch; \"fixed us/launch\" = us (IQM) minus it: the per-launch cost (launch gap, ramp, tail) the one-pair-per-launch column includes.\n",
            if a == b { a.to_string() } else { format!("{a}-{b}") }
        ),
        _ => String::new(),
    }
}

/// The recorded number of timed launches per row ("30", or "10-30" if rows differ).
fn launches_per_row(r: &SweepReport) -> String {
    let n = r.rows.iter().map(|x| x.timing.samples);
    match (n.clone().min(), n.max()) {
        (Some(a), Some(b)) if a == b => a.to_string(),
        (Some(a), Some(b)) => format!("{a}-{b}"),
        _ => "0 (no timed rows)".into(),
    }
}

/// gemv: % of read ceiling per variant over the shapes (x = weight MB); gemm: speedup vs batch.
fn plot_sweep(dir: &Path, r: &SweepReport) -> Result<()> {
    let mut names: Vec<&str> = r.rows.iter().map(|x| x.variant.as_str()).collect();
    names.sort();
    names.dedup();
    let mut series = Vec::new();
    if r.family == "gemv" {
        for name in names {
            let mut pts: Vec<(f64, f64)> = r
                .rows
                .iter()
                .filter(|x| x.variant == name && !x.act_order)
                .map(|x| (x.bytes as f64 / 1e6, x.pct_read_ceiling))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            if !pts.is_empty() {
                series.push(Series {
                    label: name.to_string(),
                    points: pts,
                    reference: false,
                });
            }
        }
        if series.is_empty() {
            return Ok(());
        }
        line_chart(
            &dir.join("gemv-roofline.svg"),
            "GEMV, group 128: % of measured read ceiling",
            "bytes moved per launch (MB)",
            "% of read ceiling",
            &series,
        )
    } else {
        // Mean speedup over shapes per batch (act-order off).
        for name in names {
            let mut pts = Vec::new();
            let mut batches: Vec<usize> = r.rows.iter().map(|x| x.m).collect();
            batches.sort_unstable();
            batches.dedup();
            for m in batches {
                let s: Vec<f64> = r
                    .rows
                    .iter()
                    .filter(|x| x.variant == name && x.m == m && !x.act_order)
                    .filter_map(|x| x.speedup_vs_cublas)
                    .collect();
                if !s.is_empty() {
                    pts.push((m as f64, s.iter().sum::<f64>() / s.len() as f64));
                }
            }
            if !pts.is_empty() {
                series.push(Series {
                    label: name.to_string(),
                    points: pts,
                    reference: false,
                });
            }
        }
        if series.is_empty() {
            return Ok(());
        }
        series.push(Series {
            label: "ideal 3.87x (16 / 4.125 bits)".into(),
            points: vec![(1.0, 3.87), (64.0, 3.87)],
            reference: true,
        });
        line_chart(
            &dir.join("gemm-speedup.svg"),
            "int4 GEMM speedup over cuBLAS fp16 (mean over Vicuna shapes)",
            "batch (m)",
            "speedup",
            &series,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(variant: &str, m: usize, us: f64) -> SweepRow {
        let t = Timing::from_samples(&[us, us, us, us]).unwrap();
        SweepRow {
            variant: variant.into(),
            k: 4096,
            n: 11008,
            m,
            group: 128,
            act_order: false,
            sym: true,
            bytes: 23_000_000,
            timing: t,
            gbps: t.gbps(23_000_000),
            pct_read_ceiling: 50.0,
            speedup_vs_cublas: Some(2.0),
            copies_rotated: 5,
            back_to_back: None,
        }
    }

    #[test]
    fn sweep_reports_write_json_markdown_and_plots_from_recorded_rows() {
        let dev = crate::cuda::device::test_device("Test GPU", (9, 0), 132);
        let dir = tempfile::tempdir().unwrap();
        for (fam, rows) in [
            ("gemv", vec![row("gemv_v2_vec", 1, 12.0)]),
            (
                "gemm",
                vec![row("gemm_v2_mma", 16, 20.0), row("gemm_v2_mma", 2, 15.0)],
            ),
        ] {
            let r = SweepReport {
                header: ReportHeader::new(&dev, None),
                family: fam.into(),
                quick: true,
                rows,
                skipped: vec!["x: y".into()],
            };
            write_sweep(dir.path(), &r).unwrap();
            let md = std::fs::read_to_string(dir.path().join(format!("{fam}.md"))).unwrap();
            assert!(
                md.contains("| gemv_v2_vec") || md.contains("| gemm_v2_mma"),
                "{md}"
            );
            assert!(md.contains("2.00x") && md.contains("- x: y"));
            let back: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(dir.path().join(format!("{fam}.json"))).unwrap(),
            )
            .unwrap();
            assert_eq!(back["rows"].as_array().unwrap().len(), r.rows.len());
        }
        assert!(dir.path().join("gemv-roofline.svg").is_file());
        assert!(dir.path().join("gemm-speedup.svg").is_file());
    }

    #[test]
    fn a_sweep_where_every_large_row_is_far_below_the_ceiling_is_refused() {
        let mk = |pcts: &[(u64, f64)]| SweepReport {
            header: ReportHeader::new(&crate::cuda::device::test_device("X", (9, 0), 132), None),
            family: "gemv".into(),
            quick: true,
            rows: pcts
                .iter()
                .map(|&(bytes, pct)| {
                    let mut x = row("v", 1, 10.0);
                    x.bytes = bytes;
                    x.pct_read_ceiling = pct;
                    x
                })
                .collect(),
            skipped: vec![],
        };
        // The 17:05 run: every row ~0.2% of the ceiling.
        let bad = mk(&[(23_000_000, 0.2), (36_000_000, 0.3), (1_000_000, 0.1)]);
        assert!(implausible(&bad).unwrap().contains("2 rows"));
        // One slow variant among plausible ones is a finding, not the harness.
        assert!(implausible(&mk(&[(23_000_000, 0.2), (23_000_000, 55.0)])).is_none());
        // Small launches alone prove nothing either way.
        assert!(implausible(&mk(&[(1_000_000, 0.1)])).is_none());
        // The markdown says so.
        let dir = tempfile::tempdir().unwrap();
        write_sweep_views(dir.path(), &bad).unwrap();
        let md = std::fs::read_to_string(dir.path().join("gemv.md")).unwrap();
        assert!(md.contains("**SUSPECT timings:**"), "{md}");
    }

    #[test]
    fn back_to_back_column_is_reported_and_old_records_still_load() {
        let dev = crate::cuda::device::test_device("Test GPU", (9, 0), 132);
        let dir = tempfile::tempdir().unwrap();
        let mut with = row("gemv_v6_pipe", 1, 12.0);
        with.back_to_back = Some(BackToBack {
            launches_per_pair: 20,
            timing: Timing::from_samples(&[8.5; 5]).unwrap(),
        });
        let r = SweepReport {
            header: ReportHeader::new(&dev, None),
            family: "gemv".into(),
            quick: true,
            rows: vec![with, row("gemv_v2_vec", 1, 13.0)],
            skipped: vec![],
        };
        write_sweep(dir.path(), &r).unwrap();
        let md = std::fs::read_to_string(dir.path().join("gemv.md")).unwrap();
        // v6: 8.5 us back-to-back, 12.0 - 8.5 = 3.5 us fixed; v2: not measured.
        assert!(md.contains("| 2.00x | 8.5 | 3.5 |"), "{md}");
        assert!(md.contains("| 2.00x | - | - |"), "{md}");
        assert!(md.contains("around 20 consecutive launches"), "{md}");
        // A record written before the field existed loads with it absent.
        let mut v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for row in v["rows"].as_array_mut().unwrap() {
            row.as_object_mut().unwrap().remove("back_to_back");
        }
        let old: SweepReport = serde_json::from_value(v).unwrap();
        assert!(old.rows.iter().all(|x| x.back_to_back.is_none()));
    }
}
