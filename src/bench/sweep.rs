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

/// The shapes a sweep runs: the goal's four first, then (full sweeps only) the other Vicuna shapes.
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

/// The (shape, act-order) points a family's sweep runs, in order: every shape act-order off then
/// on, except a quick GEMM sweep, which leaves act-order out.
fn sweep_points(fam: Family, quick: bool) -> Vec<(Shape, bool)> {
    shapes(quick)
        .into_iter()
        .flat_map(|shape| [(shape, false), (shape, true)])
        .filter(|&(_, act)| !(quick && fam == Family::Gemm && act))
        .collect()
}

/// The batch sizes a family's sweep times: 1 for GEMV, the GEMM list otherwise.
fn sweep_batches(fam: Family, quick: bool) -> &'static [usize] {
    match fam {
        Family::Gemv => &[1],
        _ if quick => GEMM_BATCHES_QUICK,
        _ => GEMM_BATCHES,
    }
}

/// One batch's timings of a variant on one (shape, act-order) point.
struct Measured {
    m: usize,
    timing: Timing,
    back_to_back: Option<BackToBack>,
    bytes: u64,
}

/// The rows of one variant on one (shape, act-order) point: GB/s at the IQM and that as a
/// percentage of the read ceiling. The speedups come later, once every cuBLAS row is in
/// (`set_speedups_vs_cublas`).
fn measured_rows(
    variant: &str,
    shape: Shape,
    act_order: bool,
    copies: usize,
    measured: Vec<Measured>,
    read_ceiling: f64,
) -> Vec<SweepRow> {
    measured
        .into_iter()
        .map(|x| {
            let gbps = x.timing.gbps(x.bytes);
            SweepRow {
                variant: variant.to_string(),
                k: shape.k,
                n: shape.n,
                m: x.m,
                group: 128,
                act_order,
                sym: true,
                bytes: x.bytes,
                timing: x.timing,
                gbps,
                pct_read_ceiling: 100.0 * gbps / read_ceiling,
                speedup_vs_cublas: None,
                copies_rotated: copies,
                back_to_back: x.back_to_back,
            }
        })
        .collect()
}

/// Each row's speedup against the cuBLAS fp16 row of the same shape and batch (None where there
/// is none). cuBLAS has no act-order: its dense fp16 W is the same either way, so the
/// act-order-off time serves both.
fn set_speedups_vs_cublas(rows: &mut [SweepRow]) {
    let base: std::collections::HashMap<(usize, usize, usize), f64> = rows
        .iter()
        .filter(|r| r.variant == CUBLAS && !r.act_order)
        .map(|r| ((r.k, r.n, r.m), r.timing.iqm_us))
        .collect();
    for r in rows {
        r.speedup_vs_cublas = base.get(&(r.k, r.n, r.m)).map(|b| b / r.timing.iqm_us);
    }
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
    let batches = sweep_batches(fam, quick);
    // Back-to-back: a few pairs are enough (each pair already averages many launches).
    let b2b_cfg = TimingConfig {
        warmup: 2,
        iters: if quick { 5 } else { 10 },
    };
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let max_m = batches.iter().copied().max().unwrap_or(1);
    for (shape, act) in sweep_points(fam, quick) {
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
                        Ok(Measured {
                            m,
                            timing: t,
                            back_to_back: b2b,
                            bytes: cold.bytes_moved(m),
                        })
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(|t| (t, cold.copies()))
            });
            match timed {
                Ok((measured, copies)) => rows.extend(measured_rows(
                    v.name,
                    shape,
                    act,
                    copies,
                    measured,
                    read_ceiling,
                )),
                Err(e) => skipped.push(format!(
                    "{} K={} N={} act={act}: {e}",
                    v.name, shape.k, shape.n
                )),
            }
        }
        eprintln!("  {} K={} N={} act={act}: done", family, shape.k, shape.n);
    }
    set_speedups_vs_cublas(&mut rows);
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

/// gemv: % of read ceiling per variant over the shapes (x = MB moved); gemm: speedup vs batch.
fn plot_sweep(dir: &Path, r: &SweepReport) -> Result<()> {
    if r.family == "gemv" {
        let series = gemv_series(r);
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
        let series = gemm_series(r);
        if series.is_empty() {
            return Ok(());
        }
        line_chart(
            &dir.join("gemm-speedup.svg"),
            "int4 GEMM speedup over cuBLAS fp16 (mean over Vicuna shapes)",
            "batch (m)",
            "speedup",
            &series,
        )
    }
}

/// The variants' names in order, each once.
fn variant_names(r: &SweepReport) -> Vec<&str> {
    let mut names: Vec<&str> = r.rows.iter().map(|x| x.variant.as_str()).collect();
    names.sort();
    names.dedup();
    names
}

/// The GEMV plot's series: per variant, (MB moved, % of read ceiling) of its act-order-off rows,
/// in increasing MB.
fn gemv_series(r: &SweepReport) -> Vec<Series> {
    let mut series = Vec::new();
    for name in variant_names(r) {
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
    series
}

/// The GEMM plot's series: per variant, (batch, mean speedup over the shapes) of its act-order-off
/// rows with a speedup, then the ideal line as a reference (none without data).
fn gemm_series(r: &SweepReport) -> Vec<Series> {
    let mut series = Vec::new();
    let mut batches: Vec<usize> = r.rows.iter().map(|x| x.m).collect();
    batches.sort_unstable();
    batches.dedup();
    for name in variant_names(r) {
        let mut pts = Vec::new();
        for &m in &batches {
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
    if !series.is_empty() {
        series.push(Series {
            label: "ideal 3.87x (16 / 4.125 bits)".into(),
            points: vec![(1.0, 3.87), (64.0, 3.87)],
            reference: true,
        });
    }
    series
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

    fn report(family: &str, rows: Vec<SweepRow>) -> SweepReport {
        SweepReport {
            header: ReportHeader::new(&crate::cuda::device::test_device("X", (9, 0), 132), None),
            family: family.into(),
            quick: true,
            rows,
            skipped: vec![],
        }
    }

    /// A quick sweep is the goal's four shapes; a full one adds every other Vicuna shape after
    /// them; each shape act-order off and on, except quick GEMM (no act-order). GEMV times batch 1;
    /// GEMM from 1 (where GEMV is) up to the largest batch a GEMM variant serves.
    #[test]
    fn sweeps_cover_the_goal_shapes_first_and_every_batch_a_gemm_variant_serves() {
        let kn = |pts: &[(Shape, bool)]| -> Vec<(usize, usize, bool)> {
            pts.iter().map(|(s, a)| (s.k, s.n, *a)).collect()
        };
        let both = |shapes: &[(usize, usize)]| -> Vec<(usize, usize, bool)> {
            shapes
                .iter()
                .flat_map(|&(k, n)| [(k, n, false), (k, n, true)])
                .collect()
        };
        assert!(GOAL_SHAPES
            .iter()
            .all(|g| VICUNA.iter().any(|s| (s.k, s.n) == *g)));
        assert_eq!(kn(&sweep_points(Family::Gemv, true)), both(GOAL_SHAPES));
        let gemm_quick = kn(&sweep_points(Family::Gemm, true));
        assert_eq!(
            gemm_quick,
            GOAL_SHAPES
                .iter()
                .map(|&(k, n)| (k, n, false))
                .collect::<Vec<_>>()
        );
        for fam in [Family::Gemv, Family::Gemm] {
            let full = kn(&sweep_points(fam, false));
            // The goal shapes first, then every other Vicuna shape, each once per act-order mode.
            assert_eq!(full[..2 * GOAL_SHAPES.len()], both(GOAL_SHAPES)[..]);
            assert_eq!(full.len(), 2 * VICUNA.len());
            for s in VICUNA {
                for act in [false, true] {
                    assert_eq!(
                        full.iter().filter(|&&p| p == (s.k, s.n, act)).count(),
                        1,
                        "{} act={act}",
                        s.label
                    );
                }
            }
        }
        assert_eq!(sweep_batches(Family::Gemv, true), &[1]);
        assert_eq!(sweep_batches(Family::Gemv, false), &[1]);
        let widest = crate::bench::cold::family_variants(Family::Gemm)
            .iter()
            .filter(|v| v.family == Family::Gemm)
            .map(|v| v.batch.1 as usize)
            .max()
            .unwrap();
        for quick in [true, false] {
            let b = sweep_batches(Family::Gemm, quick);
            assert_eq!(b.first(), Some(&1), "quick={quick}");
            assert_eq!(b.last(), Some(&widest), "quick={quick}");
            assert!(b.windows(2).all(|w| w[0] < w[1]), "quick={quick}: {b:?}");
        }
    }

    /// 20 MB in 10 us is 2000 GB/s: 50% of a 4000 GB/s ceiling; the rest of the row is what was
    /// measured, where.
    #[test]
    fn a_measured_row_carries_its_gbs_and_percent_of_the_read_ceiling() {
        let t = Timing::from_samples(&[10.0; 4]).unwrap();
        let b2b = BackToBack {
            launches_per_pair: 20,
            timing: Timing::from_samples(&[8.0; 4]).unwrap(),
        };
        let rows = measured_rows(
            "gemv_v6_pipe",
            VICUNA[1],
            true,
            5,
            vec![
                Measured {
                    m: 1,
                    timing: t,
                    back_to_back: Some(b2b),
                    bytes: 20_000_000,
                },
                Measured {
                    m: 2,
                    timing: t,
                    back_to_back: None,
                    bytes: 10_000_000,
                },
            ],
            4000.0,
        );
        assert_eq!(rows.len(), 2);
        let r = &rows[0];
        assert!((r.gbps - 2000.0).abs() < 1e-9, "{}", r.gbps);
        assert!(
            (r.pct_read_ceiling - 50.0).abs() < 1e-9,
            "{}",
            r.pct_read_ceiling
        );
        assert!((rows[1].pct_read_ceiling - 25.0).abs() < 1e-9);
        assert_eq!(
            (
                r.variant.as_str(),
                r.k,
                r.n,
                r.m,
                r.act_order,
                r.copies_rotated
            ),
            ("gemv_v6_pipe", VICUNA[1].k, VICUNA[1].n, 1, true, 5)
        );
        assert_eq!((r.group, r.sym, r.bytes), (128, true, 20_000_000));
        assert_eq!(r.back_to_back.unwrap().launches_per_pair, 20);
        assert!(rows[1].back_to_back.is_none() && r.speedup_vs_cublas.is_none());
    }

    /// Speedup = cuBLAS time / this time, same shape and batch, against cuBLAS act-order off
    /// even for act-order rows (and even when an act-order cuBLAS row was timed too).
    #[test]
    fn speedups_are_against_the_act_order_off_cublas_row_of_the_same_shape_and_batch() {
        let act = |mut r: SweepRow, a: bool| {
            r.act_order = a;
            r.speedup_vs_cublas = None;
            r
        };
        let mut other_shape = act(row("gemv_v6_pipe", 1, 10.0), false);
        other_shape.k = 5120;
        let mut rows = vec![
            act(row(CUBLAS, 1, 30.0), false),
            act(row(CUBLAS, 1, 60.0), true),
            act(row("gemv_v6_pipe", 1, 10.0), false),
            act(row("gemv_v6_pipe", 1, 15.0), true),
            act(row("gemv_v6_pipe", 2, 10.0), false),
            other_shape,
        ];
        set_speedups_vs_cublas(&mut rows);
        let s: Vec<Option<f64>> = rows.iter().map(|r| r.speedup_vs_cublas).collect();
        let near = |x: Option<f64>, want: f64| x.is_some_and(|x| (x - want).abs() < 1e-9);
        assert!(near(s[0], 1.0), "{s:?}");
        assert!(near(s[1], 0.5), "{s:?}");
        assert!(near(s[2], 3.0), "{s:?}");
        assert!(near(s[3], 2.0), "{s:?}");
        // No cuBLAS row at that batch, or at that shape: no speedup, not a made-up one.
        assert_eq!(s[4], None);
        assert_eq!(s[5], None);
    }

    /// The plausibility check's limits are inclusive: a row of exactly 8 MB is evidence, and one
    /// at exactly 5% of the ceiling is plausible. The message names the best share.
    #[test]
    fn the_plausibility_limits_are_inclusive_and_the_best_row_is_named() {
        let mk = |pcts: &[(u64, f64)]| {
            report(
                "gemv",
                pcts.iter()
                    .map(|&(bytes, pct)| {
                        let mut x = row("v", 1, 10.0);
                        x.bytes = bytes;
                        x.pct_read_ceiling = pct;
                        x
                    })
                    .collect(),
            )
        };
        let why = implausible(&mk(&[(8_000_000, 0.2), (7_999_999, 0.1)])).unwrap();
        assert!(why.contains("the 1 rows"), "{why}");
        assert!(implausible(&mk(&[(23_000_000, 0.2), (23_000_000, 5.0)])).is_none());
        let why = implausible(&mk(&[(23_000_000, 0.2), (36_000_000, 0.3)])).unwrap();
        assert!(why.contains("(best 0.30%)"), "{why}");
    }

    /// A record of another family writes nothing (its name would be the file's).
    #[test]
    fn a_sweep_record_of_an_unknown_family_is_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let e = write_sweep_views(dir.path(), &report("gemv2", vec![row("v", 1, 10.0)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gemv2"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// Rows timed over different launch counts say so, as a range, in the markdown.
    #[test]
    fn differing_launch_counts_are_reported_as_ranges() {
        let mut a = row("gemv_v6_pipe", 1, 10.0);
        a.timing = Timing::from_samples(&[10.0; 10]).unwrap();
        a.back_to_back = Some(BackToBack {
            launches_per_pair: 10,
            timing: Timing::from_samples(&[8.0; 5]).unwrap(),
        });
        let mut b = row("gemv_v2_vec", 1, 12.0);
        b.timing = Timing::from_samples(&[12.0; 30]).unwrap();
        b.back_to_back = Some(BackToBack {
            launches_per_pair: 20,
            timing: Timing::from_samples(&[9.0; 5]).unwrap(),
        });
        let dir = tempfile::tempdir().unwrap();
        write_sweep_views(dir.path(), &report("gemv", vec![a, b])).unwrap();
        let md = std::fs::read_to_string(dir.path().join("gemv.md")).unwrap();
        assert!(md.contains("interquartile mean of 10-30 launches"), "{md}");
        assert!(md.contains("around 10-20 consecutive launches"), "{md}");
    }

    /// GEMV plot: one series per variant of (MB moved, % of the read ceiling), act-order off
    /// only, left to right whatever the rows' order.
    #[test]
    fn the_gemv_plot_is_percent_of_ceiling_over_mb_without_act_order() {
        let mk = |variant: &str, bytes: u64, pct: f64, act: bool| {
            let mut x = row(variant, 1, 10.0);
            x.bytes = bytes;
            x.pct_read_ceiling = pct;
            x.act_order = act;
            x
        };
        let r = report(
            "gemv",
            vec![
                mk("b", 36_000_000, 70.0, false),
                mk("b", 23_000_000, 60.0, false),
                mk("b", 23_000_000, 10.0, true),
                mk("a", 8_000_000, 40.0, false),
                mk("c", 8_000_000, 20.0, true),
            ],
        );
        let s = gemv_series(&r);
        let got: Vec<(&str, Vec<(f64, f64)>)> = s
            .iter()
            .map(|x| (x.label.as_str(), x.points.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", vec![(8.0, 40.0)]),
                ("b", vec![(23.0, 60.0), (36.0, 70.0)]),
            ]
        );
        assert!(s.iter().all(|x| !x.reference));
    }

    /// GEMM plot: per variant, the mean speedup over the shapes at each batch (act-order off),
    /// then the ideal 16 / 4.125 bits line as a reference.
    #[test]
    fn the_gemm_plot_is_the_mean_speedup_per_batch_and_the_ideal_line() {
        let mk = |m: usize, k: usize, speedup: Option<f64>, act: bool| {
            let mut x = row("gemm_v2_mma", m, 10.0);
            x.k = k;
            x.speedup_vs_cublas = speedup;
            x.act_order = act;
            x
        };
        let r = report(
            "gemm",
            vec![
                mk(2, 4096, Some(2.0), false),
                mk(2, 5120, Some(4.0), false),
                mk(2, 4096, Some(9.0), true),
                mk(16, 4096, Some(1.5), false),
                mk(16, 5120, None, false),
                mk(64, 4096, None, false),
            ],
        );
        let s = gemm_series(&r);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].label, "gemm_v2_mma");
        assert!(!s[0].reference);
        assert_eq!(s[0].points, vec![(2.0, 3.0), (16.0, 1.5)]);
        assert!(s[1].reference && s[1].label.starts_with("ideal 3.87x"));
        assert!(s[1]
            .points
            .iter()
            .all(|p| (p.1 - 16.0 / 4.125).abs() < 0.01));
        // Nothing to plot: no series, not a lone ideal line.
        let none = report("gemm", vec![mk(2, 4096, None, false)]);
        assert!(gemm_series(&none).is_empty());
    }
}
