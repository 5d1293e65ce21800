//! Decode speed measured on a real card, read back from a committed decode report
//! (reports/<gpu>/decode.json), so `lab plan --card X` can estimate tokens/s on a card nobody here
//! owns. Two forms:
//! - `fit_from_reports`: a `SpeedModel` (step time = bytes / (spec x stream efficiency) + layers x
//!   fixed cost per layer) solved from two models of different depth measured with the same kernel
//!   on the same card (7B and 13B: two equations, two unknowns). What `lab plan --card` uses.
//! - `from_reports`: one model's flat efficiency (achieved GB/s / spec GB/s), the fallback where
//!   a report has only one model.
//!
//! Always labelled an estimate: another card runs the kernels at its own efficiency and launch cost.

use super::fit::SpeedModel;
use super::WeightDtype;
use crate::Result;
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MeasuredEfficiency {
    /// achieved GB/s / spec GB/s of the measuring card, CUDA graph, shortest context.
    pub efficiency: f64,
    pub device: String,
    pub date: String,
    pub git_rev: String,
    pub kernel_hash: String,
    pub int4_kernel: String,
    pub ctx: u64,
    pub tokens_per_s: f64,
    /// The measuring card's spec bandwidth, GB/s.
    pub spec_gbs: f64,
}

/// The decode report under `root/reports/*/decode.json` with a run of `model` in `dtype` (int4
/// with or without act-order as `act_order` says, or fp16, where it is ignored) measured on the
/// card whose spec bandwidth is nearest `near_gbs` (`nearest_in_reports`); of its runs, the
/// fastest (a report times several int4 kernels: the estimate should use the one a user would
/// run). `Ok(None)` when there is none.
pub fn from_reports(
    root: &Path,
    model: &str,
    dtype: WeightDtype,
    act_order: bool,
    near_gbs: Option<f64>,
) -> Result<Option<MeasuredEfficiency>> {
    nearest_in_reports(
        root,
        near_gbs,
        |m: &MeasuredEfficiency| m.spec_gbs,
        |runs| pick(runs, model, dtype, act_order),
    )
}

/// `find` over every `root/reports/*/decode.json`: of the reports it gives a value for, the one
/// measured on the card whose spec bandwidth (`spec`) is nearest `near_gbs` in ratio (the same
/// card, where it was measured, else the most alike: launch and ramp costs are a larger share of
/// a step on a slower card), the first in folder-name order among equals or without `near_gbs`.
fn nearest_in_reports<T>(
    root: &Path,
    near_gbs: Option<f64>,
    spec: impl Fn(&T) -> f64,
    find: impl Fn(&Value) -> Option<T>,
) -> Result<Option<T>> {
    let dir = root.join("reports");
    let mut folders: Vec<_> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => return Ok(None),
    };
    folders.sort();
    let mut best: Option<(f64, T)> = None;
    for f in folders {
        let path = f.join("decode.json");
        // A folder without one is a card never benchmarked; a directory by that name is an error.
        if !f.is_dir() || !crate::util::optional_file(&path)? {
            continue;
        }
        let runs: Value = crate::util::read_json(&path)?;
        check_decode_file(&path, &runs)?;
        let Some(v) = find(&runs) else { continue };
        let Some(near) = near_gbs.filter(|g| *g > 0.0) else {
            return Ok(Some(v));
        };
        let d = (spec(&v) / near).ln().abs();
        if best.as_ref().is_none_or(|(b, _)| d < *b) {
            best = Some((d, v));
        }
    }
    Ok(best.map(|(_, v)| v))
}

/// A decode.json must be what `lab report` reads (the runs as `DecodeReport`s, every time
/// positive and finite, each recorded on the card its folder is named for) before its fields are
/// picked out: a damaged file otherwise read as "no report" (the estimate silently became the
/// pure roofline) or fed an impossible time to the fit.
fn check_decode_file(path: &Path, runs: &Value) -> Result<()> {
    use serde::Deserialize;
    let typed =
        Vec::<crate::model::decode_bench::DecodeReport>::deserialize(runs).map_err(|e| {
            crate::LabError::Json {
                path: path.into(),
                source: e,
            }
        })?;
    // The folder names the card the estimate says it was measured on, and the nearest-card
    // choice reads the runs' own device: a record filed under another card's folder is refused,
    // as `lab report` refuses it.
    let folder = path
        .parent()
        .and_then(|d| d.file_name())
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    for r in &typed {
        crate::report::regenerate::check_slug(path, &r.header.device.slug, &folder)?;
        crate::report::regenerate::check_decode_timings(path, r)?;
    }
    Ok(())
}

fn pick(
    runs: &Value,
    model: &str,
    dtype: WeightDtype,
    act_order: bool,
) -> Option<MeasuredEfficiency> {
    runs.as_array()?
        .iter()
        .filter_map(|r| measured(r, model, dtype, act_order))
        .max_by(|a, b| a.efficiency.total_cmp(&b.efficiency))
}

/// One recorded run as an efficiency, if it is `model` in `dtype` (and act-order form) and complete.
fn measured(
    r: &Value,
    model: &str,
    dtype: WeightDtype,
    act_order: bool,
) -> Option<MeasuredEfficiency> {
    if r["model"].as_str()? != model {
        return None;
    }
    measured_any(r, dtype, act_order, false).map(|(m, _)| m)
}

/// One recorded run of any model in `dtype` (int4: with act-order exactly when `act_order`): its
/// efficiency at its shortest valid context and that point as a fit input (`None` for a report
/// without the fields a fit needs).
fn measured_any(
    r: &Value,
    dtype: WeightDtype,
    act_order: bool,
    pdl: bool,
) -> Option<(MeasuredEfficiency, Option<FitPoint>)> {
    let kind = &r["weights"]["kind"];
    let matches = match dtype {
        WeightDtype::Fp16 => kind.as_str() == Some("Fp16") || kind.get("Fp16").is_some(),
        // Act-order at one group (per-channel) runs plain (`runs_act_order`): such a run is a
        // plain step. A record without its group keeps the act-order it states.
        WeightDtype::Int4 => {
            let group = kind["Int4"]["group"].as_i64().map_or(1, |g| g as i32);
            let ran_act = kind["Int4"]["act_order"]
                .as_bool()
                .map(|a| super::runs_act_order(a, group));
            ran_act == Some(act_order)
        }
    };
    if !matches {
        return None;
    }
    let h = &r["header"];
    let d = &h["device"];
    let spec_gbs =
        d["mem_clock_khz"].as_f64()? * 1e3 * 2.0 * d["bus_width_bits"].as_f64()? / 8.0 / 1e9;
    // A point whose graph stretch ended with a state flag (NaN logits, ...) timed no valid step:
    // the bench lists it under "invalid" as "ctx N graph: ...".
    let invalid: Vec<&str> = r["invalid"]
        .as_array()
        .map_or(Vec::new(), |v| v.iter().filter_map(Value::as_str).collect());
    let valid = |p: &&Value| {
        let label = format!("ctx {} graph:", p["ctx"].as_u64().unwrap_or(0));
        !invalid.iter().any(|i| i.starts_with(&label))
    };
    let p = r["points"]
        .as_array()?
        .iter()
        .filter(valid)
        .min_by_key(|p| p["ctx"].as_u64().unwrap_or(u64::MAX))?;
    let achieved = p["achieved_gbs"].as_f64()?;
    if !(spec_gbs > 0.0 && achieved > 0.0) {
        return None;
    }
    let pdl_ms = p["graph_pdl_ms_per_token"].as_f64().filter(|_| pdl);
    let point = (|| {
        Some(FitPoint {
            model: r["model"].as_str()?.to_string(),
            layers: r["config"]["num_hidden_layers"].as_u64()? as usize,
            bytes_per_step: p["bytes_per_token"].as_f64()?,
            ms: pdl_ms.unwrap_or(p["graph_ms_per_token"].as_f64()?),
            pdl: pdl_ms.is_some(),
            spec_gbs,
        })
    })();
    let m = MeasuredEfficiency {
        efficiency: (achieved / spec_gbs).min(1.0),
        device: d["name"].as_str()?.to_string(),
        date: h["date"].as_str().unwrap_or("").to_string(),
        git_rev: h["build"]["git_rev"].as_str().unwrap_or("").to_string(),
        kernel_hash: h["build"]["kernel_hash"].as_str().unwrap_or("").to_string(),
        int4_kernel: r["int4_kernel"].as_str().unwrap_or("").to_string(),
        ctx: p["ctx"].as_u64()?,
        tokens_per_s: p["graph_tokens_per_s"].as_f64()?,
        spec_gbs,
    };
    Some((m, point))
}

/// One measured decode step: a fit input.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FitPoint {
    pub model: String,
    pub layers: usize,
    pub bytes_per_step: f64,
    /// CUDA graph step; with PDL where the fit asked for it and the run timed it (`pdl`).
    pub ms: f64,
    /// `ms` is the graph + PDL step (what the engine runs on sm_90).
    pub pdl: bool,
    /// The measuring card's spec bandwidth (memory clock x 2 x bus width).
    pub spec_gbs: f64,
}

/// A `SpeedModel` solved from two measured models, with where they came from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FittedSpeed {
    pub speed: SpeedModel,
    pub points: [FitPoint; 2],
    pub device: String,
    pub date: String,
    pub git_rev: String,
    pub kernel_hash: String,
    pub int4_kernel: String,
    /// The fits of the report's other kernels measured on both models (kernel, model): two
    /// points fit any kernel exactly, so the spread of their extrapolations is the estimate's
    /// own uncertainty (on the H100 report, auto's and gemv_v6_pipe's fits put a 4090 ~7% apart
    /// and a T4 ~15%).
    pub others: Vec<(String, SpeedModel)>,
}

/// Solve ms = bytes / (spec x e) + layers x c for (e, c) from two points of different depth on one
/// card. `None` where the points do not determine a physical model (same depth, e <= 0 or > 1,
/// c < 0: a measurement the model cannot describe).
pub fn fit_two(a: &FitPoint, b: &FitPoint) -> Option<SpeedModel> {
    // t = bytes * u + layers * c, u = 1 / (spec B/s x e).
    let (t1, t2) = (a.ms * 1e-3, b.ms * 1e-3);
    let (b1, b2) = (a.bytes_per_step, b.bytes_per_step);
    let (l1, l2) = (a.layers as f64, b.layers as f64);
    let det = b1 * l2 - b2 * l1;
    if det.abs() < 1e-9 * b1.max(b2) || a.spec_gbs != b.spec_gbs {
        return None;
    }
    let u = (t1 * l2 - t2 * l1) / det;
    let c = (b1 * t2 - b2 * t1) / det;
    let speed = SpeedModel {
        stream_efficiency: 1.0 / (u * a.spec_gbs * 1e9),
        per_layer_s: c,
    };
    (u > 0.0 && speed.check().is_ok()).then_some(speed)
}

/// The decode report with two models of `dtype` (int4 with or without act-order as `act_order`
/// says, or fp16) measured with the same kernel, fitted (`fit_two`), from the card whose spec
/// bandwidth is nearest `near_gbs` (`nearest_in_reports`). Of the kernels measured for both,
/// the one the smaller model streamed fastest with (what a user would run). `Ok(None)` when no
/// report has such a pair.
///
/// `pdl`: fit the graph + PDL steps where the runs timed them (for an sm_90 card, which the
/// engine decodes with PDL), else the plain graph steps.
pub fn fit_from_reports(
    root: &Path,
    dtype: WeightDtype,
    act_order: bool,
    near_gbs: Option<f64>,
    pdl: bool,
) -> Result<Option<FittedSpeed>> {
    nearest_in_reports(
        root,
        near_gbs,
        |f: &FittedSpeed| f.points[0].spec_gbs,
        |runs| fit_runs(runs, dtype, act_order, pdl),
    )
}

fn fit_runs(runs: &Value, dtype: WeightDtype, act_order: bool, pdl: bool) -> Option<FittedSpeed> {
    let all: Vec<(MeasuredEfficiency, FitPoint)> = runs
        .as_array()?
        .iter()
        .filter_map(|r| measured_any(r, dtype, act_order, pdl))
        .filter_map(|(m, p)| Some((m, p?)))
        .collect();
    // Per kernel: its shallowest and deepest model; candidates ranked by the shallow one's efficiency.
    let mut fits: Vec<(f64, FittedSpeed)> = Vec::new();
    for (m, p) in &all {
        let same: Vec<&(MeasuredEfficiency, FitPoint)> = all
            .iter()
            .filter(|(o, q)| {
                o.int4_kernel == m.int4_kernel && q.layers > p.layers && q.pdl == p.pdl
            })
            .collect();
        let Some((_, deep)) = same.iter().max_by_key(|(_, q)| q.layers) else {
            continue;
        };
        let Some(speed) = fit_two(p, deep) else {
            continue;
        };
        // One fit per kernel, in the order the kernels first appear: from its most efficient
        // shallow run (the first of equals).
        let same_kernel = fits
            .iter()
            .position(|(_, f)| f.int4_kernel == m.int4_kernel);
        if same_kernel.is_some_and(|i| fits[i].0 >= m.efficiency) {
            continue;
        }
        let entry = (
            m.efficiency,
            FittedSpeed {
                speed,
                points: [p.clone(), deep.clone()],
                device: m.device.clone(),
                date: m.date.clone(),
                git_rev: m.git_rev.clone(),
                kernel_hash: m.kernel_hash.clone(),
                int4_kernel: m.int4_kernel.clone(),
                others: Vec::new(),
            },
        );
        match same_kernel {
            Some(i) => fits[i] = entry,
            None => fits.push(entry),
        }
    }
    // The first of the most efficient (a stable choice on ties, as before).
    let best = (0..fits.len()).reduce(|j, i| if fits[i].0 > fits[j].0 { i } else { j })?;
    let others = fits
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != best)
        .map(|(_, (_, f))| (f.int4_kernel.clone(), f.speed))
        .collect();
    let mut f = fits.swap_remove(best).1;
    f.others = others;
    Some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_committed_h100_decode_report() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let m = from_reports(root, "vicuna-7b", WeightDtype::Int4, false, None)
            .unwrap()
            .expect("committed H100 decode report");
        assert!(m.device.contains("H100"), "{m:?}");
        // The fastest recorded int4 (no act-order) 7B run, read here without the parser above:
        // the highest achieved GB/s at a run's shortest context, over the H100's 3352 GB/s spec.
        let text = std::fs::read_to_string(root.join("reports/nvidia-h100-80gb-hbm3/decode.json"))
            .unwrap();
        let runs: Value = serde_json::from_str(&text).unwrap();
        let best = runs
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["model"] == "vicuna-7b" && r["weights"]["kind"]["Int4"]["act_order"] == false
            })
            .map(|r| {
                let pts = r["points"].as_array().unwrap();
                let p = pts.iter().min_by_key(|p| p["ctx"].as_u64()).unwrap();
                (
                    p["achieved_gbs"].as_f64().unwrap(),
                    r["int4_kernel"].clone(),
                )
            })
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap();
        assert!(
            (m.efficiency - best.0 / 3352.0).abs() < 0.002,
            "{m:?} vs {best:?}"
        );
        assert_eq!(m.int4_kernel, best.1.as_str().unwrap(), "{m:?}");
        let f = from_reports(root, "vicuna-7b", WeightDtype::Fp16, false, None)
            .unwrap()
            .unwrap();
        assert!(
            f.efficiency > m.efficiency,
            "fp16 through cuBLAS streams closer to the roofline"
        );
        assert!(
            from_reports(root, "no-such-model", WeightDtype::Int4, false, None)
                .unwrap()
                .is_none()
        );
    }

    fn point(model: &str, layers: usize, gb: f64, ms: f64) -> FitPoint {
        FitPoint {
            model: model.into(),
            layers,
            bytes_per_step: gb * 1e9,
            ms,
            pdl: false,
            spec_gbs: 1000.0,
        }
    }

    #[test]
    fn fit_two_recovers_the_model_and_refuses_what_it_cannot_describe() {
        // ms = GB / (1000 GB/s x 0.8) + layers x 20 us.
        let ms = |gb: f64, l: usize| (gb / 800.0 + l as f64 * 20e-6) * 1e3;
        let (a, b) = (
            point("a", 32, 3.7, ms(3.7, 32)),
            point("b", 40, 7.0, ms(7.0, 40)),
        );
        let s = fit_two(&a, &b).unwrap();
        assert!((s.stream_efficiency - 0.8).abs() < 1e-9, "{s:?}");
        assert!((s.per_layer_s - 20e-6).abs() < 1e-12, "{s:?}");
        // Bytes proportional to depth: the two unknowns are not separable.
        assert!(fit_two(&point("a", 32, 3.2, 4.0), &point("b", 40, 4.0, 5.0)).is_none());
        // The deeper model faster than its bytes allow: a negative fixed cost.
        assert!(fit_two(&a, &point("b", 40, 7.0, ms(7.0, 40) * 0.5)).is_none());
        // Points from two cards.
        let mut c = b.clone();
        c.spec_gbs = 2000.0;
        assert!(fit_two(&a, &c).is_none());
    }

    #[test]
    fn the_other_kernels_fits_come_along_and_differ() {
        // Run 17's report times auto and gemv_v6_pipe on both models: the fit picks the kernel the
        // 7B streamed fastest with, and carries the other's, which extrapolates differently.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let f = fit_from_reports(root, WeightDtype::Int4, false, None, false)
            .unwrap()
            .unwrap();
        assert!(!f.others.is_empty(), "{f:?}");
        for (k, sp) in &f.others {
            assert_ne!(k, &f.int4_kernel);
            assert!(sp.check().is_ok(), "{k}: {sp:?}");
            assert!(
                (sp.stream_efficiency - f.speed.stream_efficiency).abs() > 0.01,
                "{k}: {sp:?} vs {:?}",
                f.speed
            );
        }
        // A roofline's range spans its own estimate and the others'.
        let card = crate::plan::cards::by_slug("t4").unwrap();
        let mut r = crate::plan::fit::roofline(card, &f.speed, 32, 1, 3_900_000_000);
        let own = r.tokens_per_s;
        r.add_other_fits(&f.others);
        assert_eq!(r.other_fits.len(), f.others.len());
        for ((k, t), (_, sp)) in r.other_fits.iter().zip(&f.others) {
            let want = 1.0 / sp.step_s(card.bandwidth_gbs, 32, 3_900_000_000);
            assert!((t - want).abs() < 1e-9 * want, "{k}: {t} vs {want}");
        }
        let (lo, hi) = r.range();
        assert!(lo <= own && own <= hi && hi > lo, "{lo} {own} {hi}");
    }

    #[test]
    fn act_order_fits_come_from_act_order_runs_only() {
        // The committed report (run 17) times 7B and 13B int4 g128 both with and without act-order.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let plain = fit_from_reports(root, WeightDtype::Int4, false, None, false)
            .unwrap()
            .expect("plain 7B and 13B runs");
        let act = fit_from_reports(root, WeightDtype::Int4, true, None, false)
            .unwrap()
            .expect("act-order 7B and 13B runs");
        let text = std::fs::read_to_string(root.join("reports/nvidia-h100-80gb-hbm3/decode.json"))
            .unwrap();
        let runs: Value = serde_json::from_str(&text).unwrap();
        // Each fitted point is the graph step of a run of its own form and kernel.
        for (f, want_act) in [(&plain, false), (&act, true)] {
            for p in &f.points {
                let found = runs.as_array().unwrap().iter().any(|r| {
                    r["model"].as_str() == Some(p.model.as_str())
                        && r["int4_kernel"].as_str() == Some(f.int4_kernel.as_str())
                        && r["weights"]["kind"]["Int4"]["act_order"].as_bool() == Some(want_act)
                        && r["points"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|q| q["graph_ms_per_token"].as_f64() == Some(p.ms))
                });
                assert!(found, "act_order {want_act}: {p:?} not a run of that form");
            }
        }
        // Act-order's steps are slower on the same card, so the same bytes estimate slower.
        for (pa, pp) in act.points.iter().zip(&plain.points) {
            assert_eq!(pa.model, pp.model);
            assert!(pa.ms > pp.ms, "{pa:?} vs {pp:?}");
        }
        let card = 1008.0; // an RTX 4090's spec GB/s
        let bytes = plain.points[0].bytes_per_step as u64;
        assert!(act.speed.step_s(card, 32, bytes) > plain.speed.step_s(card, 32, bytes));
        // fp16 ignores the flag.
        assert_eq!(
            fit_from_reports(root, WeightDtype::Fp16, true, None, false).unwrap(),
            fit_from_reports(root, WeightDtype::Fp16, false, None, false).unwrap()
        );
    }

    #[test]
    fn the_committed_h100_report_fits_and_predicts_its_other_contexts() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for dtype in [WeightDtype::Int4, WeightDtype::Fp16] {
            let f = fit_from_reports(root, dtype, false, None, false)
                .unwrap()
                .expect("7B and 13B runs");
            assert!(f.device.contains("H100"), "{f:?}");
            assert_eq!((f.points[0].layers, f.points[1].layers), (32, 40), "{f:?}");
            // Exactly determined: both measured points come back.
            for p in &f.points {
                let ms = f
                    .speed
                    .step_s(p.spec_gbs, p.layers, p.bytes_per_step as u64)
                    * 1e3;
                assert!((ms / p.ms - 1.0).abs() < 1e-6, "{p:?}: {ms}");
            }
            // Physically sensible: streams below the spec, a few us per launch (~7 per layer).
            assert!((0.4..=1.0).contains(&f.speed.stream_efficiency), "{f:?}");
            assert!((5e-6..=60e-6).contains(&f.speed.per_layer_s), "{f:?}");
        }
        // Out of sample: every other valid context of the fitted kernel's runs (the KV bytes
        // grow, the launches stay) against the model fitted at the shortest one, and against a
        // flat efficiency taken at that point (it scales the fixed cost with the bytes). Only
        // the bytes term is tested here: the depth split between the two terms rests on the two
        // fitted points alone.
        let text = std::fs::read_to_string(root.join("reports/nvidia-h100-80gb-hbm3/decode.json"))
            .unwrap();
        let runs: Value = serde_json::from_str(&text).unwrap();
        // fp16 within 1% (run 12: 0.3%, run 14: 0.4%, run 17: 0.8%); int4 within 6% (run 12: 5.5%,
        // runs 14 and 17: 3.9%, the model over-predicting long contexts: the attention streams its
        // KV bytes faster than the GEMVs their weights); both closer than the flat efficiency
        // (run 12: 1.7% / 9.9%, run 14: 1.7% / 10.2%, run 17: 1.4% / 10.2%).
        for (dtype, bound) in [(WeightDtype::Fp16, 0.01), (WeightDtype::Int4, 0.06)] {
            let f = fit_from_reports(root, dtype, false, None, false)
                .unwrap()
                .unwrap();
            let (mut checked, mut fit_err, mut flat_err) = (0, 0f64, 0f64);
            for r in runs.as_array().unwrap() {
                // The fitted kernel's runs only (int4: the same label as the fit).
                let Some((m, Some(fitted))) = measured_any(r, dtype, false, false) else {
                    continue;
                };
                if m.int4_kernel != f.int4_kernel {
                    continue;
                }
                for p in r["points"].as_array().unwrap() {
                    let ctx = p["ctx"].as_u64().unwrap();
                    let label = format!("ctx {ctx} graph:");
                    let flagged = r["invalid"].as_array().is_some_and(|v| {
                        v.iter()
                            .any(|i| i.as_str().is_some_and(|i| i.starts_with(&label)))
                    });
                    if ctx == m.ctx || flagged {
                        continue; // the fitted point, or no valid step
                    }
                    let bytes = p["bytes_per_token"].as_f64().unwrap();
                    let got = p["graph_ms_per_token"].as_f64().unwrap();
                    let ms = f.speed.step_s(fitted.spec_gbs, fitted.layers, bytes as u64) * 1e3;
                    let flat = bytes / (fitted.spec_gbs * 1e9 * m.efficiency) * 1e3;
                    fit_err = fit_err.max((ms / got - 1.0).abs());
                    flat_err = flat_err.max((flat / got - 1.0).abs());
                    checked += 1;
                }
            }
            eprintln!("{dtype:?}: {checked} points, fit within {fit_err:.4}, flat {flat_err:.4}");
            assert!(checked >= 6, "{dtype:?}: {checked} out-of-sample points");
            assert!(fit_err < bound, "{dtype:?}: fit off by {fit_err}");
            assert!(
                fit_err < flat_err,
                "{dtype:?}: fit {fit_err} vs flat {flat_err}"
            );
        }
    }

    #[test]
    fn a_point_the_bench_flagged_invalid_is_not_an_efficiency() {
        let dev = serde_json::json!({"name": "X", "mem_clock_khz": 1_000_000.0, "bus_width_bits": 1000.0});
        let run = |invalid: Vec<&str>| {
            serde_json::json!({
                "model": "m", "weights": {"kind": "Fp16"}, "int4_kernel": "",
                "header": {"device": dev, "date": "d", "build": {}},
                "points": [
                    {"ctx": 1280, "achieved_gbs": 200.0, "graph_tokens_per_s": 3.0},
                    {"ctx": 128, "achieved_gbs": 100.0, "graph_tokens_per_s": 1.0},
                    {"ctx": 512, "achieved_gbs": 50.0, "graph_tokens_per_s": 2.0},
                ],
                "invalid": invalid,
            })
        };
        // spec = 1e9 kHz-bits... = 250 GB/s: 100 / 250 at ctx 128.
        let ok = measured(&run(vec![]), "m", WeightDtype::Fp16, false).unwrap();
        assert_eq!((ok.ctx, ok.efficiency), (128, 0.4));
        // ctx 128's graph flagged: the next valid point (a flagged "ctx 1280" is not ctx 128's).
        let next = measured(
            &run(vec!["ctx 128 graph: step state flags 0x4"]),
            "m",
            WeightDtype::Fp16,
            false,
        );
        assert_eq!(next.unwrap().ctx, 512);
        let other = measured(
            &run(vec!["ctx 1280 graph: step state flags 0x4"]),
            "m",
            WeightDtype::Fp16,
            false,
        );
        assert_eq!(other.unwrap().ctx, 128);
        let eager_only = measured(
            &run(vec!["ctx 128 eager: flags"]),
            "m",
            WeightDtype::Fp16,
            false,
        );
        assert_eq!(eager_only.unwrap().ctx, 128);
        let all = run(vec![
            "ctx 128 graph: x",
            "ctx 512 graph: x",
            "ctx 1280 graph: x",
        ]);
        assert!(measured(&all, "m", WeightDtype::Fp16, false).is_none());
    }

    /// Efficiency is the share of the measuring card's spec bandwidth, so at most 1: a run that
    /// records more achieved GB/s than the spec (bytes served from L2, a clock under-reported)
    /// counts as the roofline, not as streaming faster than the memory can, which would make
    /// every estimate scaled from it faster than its card's roofline.
    #[test]
    fn an_achieved_bandwidth_above_the_spec_counts_as_efficiency_one() {
        // 1e6 kHz x 1e3 x 2 x 1000 bits / 8 / 1e9 = 250 GB/s spec; 300 GB/s achieved.
        let dev = serde_json::json!({"name": "X", "mem_clock_khz": 1_000_000.0, "bus_width_bits": 1000.0});
        let run = serde_json::json!({
            "model": "m", "weights": {"kind": "Fp16"}, "int4_kernel": "",
            "header": {"device": dev, "date": "d", "build": {}},
            "points": [{"ctx": 128, "achieved_gbs": 300.0, "graph_tokens_per_s": 1.0}],
        });
        let m = measured(&run, "m", WeightDtype::Fp16, false).unwrap();
        assert_eq!(m.spec_gbs, 250.0);
        assert_eq!(m.efficiency, 1.0);
    }

    /// A record whose Int4 kind has no group (older reports) keeps the act-order it states
    /// (measured_any's rule): it is an act-order run, and not a plain one.
    #[test]
    fn an_int4_record_without_its_group_keeps_its_stated_act_order() {
        let dev = serde_json::json!({"name": "X", "mem_clock_khz": 1_000_000.0, "bus_width_bits": 1000.0});
        let run = serde_json::json!({
            "model": "m", "weights": {"kind": {"Int4": {"act_order": true}}}, "int4_kernel": "k",
            "header": {"device": dev, "date": "d", "build": {}},
            "points": [{"ctx": 128, "achieved_gbs": 100.0, "graph_tokens_per_s": 1.0}],
        });
        let act = measured(&run, "m", WeightDtype::Int4, true).expect("an act-order run");
        assert_eq!(act.efficiency, 0.4);
        assert!(measured(&run, "m", WeightDtype::Int4, false).is_none());
    }

    #[test]
    fn a_malformed_report_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("reports/x")).unwrap();
        std::fs::write(dir.path().join("reports/x/decode.json"), "{not json").unwrap();
        let e = from_reports(dir.path(), "vicuna-7b", WeightDtype::Int4, false, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("reports/x/decode.json"), "{e}");
        assert!(from_reports(
            &dir.path().join("none"),
            "vicuna-7b",
            WeightDtype::Int4,
            false,
            None
        )
        .unwrap()
        .is_none());
    }

    #[test]
    fn an_sm_90_fit_scales_the_graph_and_pdl_steps() {
        // Run 17 timed every int4 run with and without PDL: the PDL fit takes the PDL steps
        // (what the engine runs on an H100 / H200), the other the plain graph steps.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let plain = fit_from_reports(root, WeightDtype::Int4, false, None, false)
            .unwrap()
            .unwrap();
        let pdl = fit_from_reports(root, WeightDtype::Int4, false, None, true)
            .unwrap()
            .unwrap();
        let text = std::fs::read_to_string(root.join("reports/nvidia-h100-80gb-hbm3/decode.json"))
            .unwrap();
        let runs: Value = serde_json::from_str(&text).unwrap();
        let has = |key: &str, ms: f64| {
            runs.as_array().unwrap().iter().any(|r| {
                r["points"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|q| q[key].as_f64() == Some(ms))
            })
        };
        for p in &pdl.points {
            assert!(p.pdl && has("graph_pdl_ms_per_token", p.ms), "{p:?}");
        }
        for p in &plain.points {
            assert!(!p.pdl && has("graph_ms_per_token", p.ms), "{p:?}");
        }
        assert_ne!(pdl.speed, plain.speed);
    }

    #[test]
    fn a_damaged_report_is_an_error_naming_it_not_no_report() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("reports/nvidia-h100-80gb-hbm3/decode.json"))
            .unwrap();
        let good: Value = serde_json::from_str(&text).unwrap();
        let wrapped = serde_json::json!({ "runs": good.clone() });
        let mut stringly = good.clone();
        stringly[0]["header"]["device"]["bus_width_bits"] = "5120".into();
        let mut negative = good.clone();
        for p in negative[0]["points"].as_array_mut().unwrap() {
            p["graph_ms_per_token"] = (-1.0).into();
        }
        for (what, v) in [
            ("wrapped", wrapped),
            ("a field of another type", stringly),
            ("negative times", negative),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("reports/nvidia-h100-80gb-hbm3/decode.json");
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, v.to_string()).unwrap();
            for e in [
                fit_from_reports(dir.path(), WeightDtype::Int4, false, None, false).map(|_| ()),
                from_reports(dir.path(), "vicuna-7b", WeightDtype::Int4, false, None).map(|_| ()),
            ] {
                let e = e.expect_err(what).to_string();
                assert!(
                    e.contains("reports/nvidia-h100-80gb-hbm3/decode.json"),
                    "{what}: {e}"
                );
                assert!(!e.contains("filed under"), "{what}: {e}");
            }
        }
    }

    #[test]
    fn a_report_filed_under_another_cards_folder_is_refused_as_lab_report_refuses_it() {
        // The estimate names the card its fit was measured on, and the nearest-card choice reads
        // the runs' own device: H100 runs in an RTX 4090's folder (a copy, a hand move) would
        // be fitted and labelled with one card's name and the other's data.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("reports/nvidia-h100-80gb-hbm3/decode.json"))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = dir
            .path()
            .join("reports/nvidia-geforce-rtx-4090/decode.json");
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, &text).unwrap();
        for e in [
            fit_from_reports(dir.path(), WeightDtype::Int4, false, None, true).map(|_| ()),
            from_reports(dir.path(), "vicuna-7b", WeightDtype::Int4, false, None).map(|_| ()),
        ] {
            let e = e.unwrap_err().to_string();
            assert!(
                e.contains("reports/nvidia-geforce-rtx-4090/decode.json")
                    && e.contains("recorded on GPU 'nvidia-h100-80gb-hbm3'")
                    && e.contains("filed under 'nvidia-geforce-rtx-4090'"),
                "{e}"
            );
        }
        // In its own folder the same file is read.
        let own = dir.path().join("reports/nvidia-h100-80gb-hbm3");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::remove_file(&f).unwrap();
        std::fs::write(own.join("decode.json"), &text).unwrap();
        assert!(
            fit_from_reports(dir.path(), WeightDtype::Int4, false, None, true)
                .unwrap()
                .is_some()
        );
    }

    /// A root whose reports/<name>/decode.json hold the given bodies.
    fn report_folders(folders: &[(&str, String)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in folders {
            let folder = dir.path().join("reports").join(name);
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::write(folder.join("decode.json"), body).unwrap();
        }
        dir
    }

    #[test]
    fn of_several_reports_the_card_of_the_nearest_bandwidth_is_used() {
        // Two reports: the committed H100 one, and the same runs as if measured on a card of
        // three times its memory clock (a slower one would make the H100's steps impossible: an
        // efficiency above 1 fits nothing), filed as its own card. Folder "a-..." sorts first.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("reports/nvidia-h100-80gb-hbm3/decode.json"))
            .unwrap();
        let mut fast: Value = serde_json::from_str(&text).unwrap();
        for r in fast.as_array_mut().unwrap() {
            let clk = &mut r["header"]["device"]["mem_clock_khz"];
            *clk = (clk.as_i64().unwrap() * 3).into();
            r["header"]["device"]["slug"] = "a-fast".into();
        }
        let dir = report_folders(&[
            ("a-fast", fast.to_string()),
            ("nvidia-h100-80gb-hbm3", text),
        ]);
        let spec = |near: Option<f64>| {
            let f = fit_from_reports(dir.path(), WeightDtype::Int4, false, near, false)
                .unwrap()
                .unwrap();
            let m = from_reports(dir.path(), "vicuna-7b", WeightDtype::Int4, false, near)
                .unwrap()
                .unwrap();
            assert_eq!(f.points[0].spec_gbs, m.spec_gbs);
            f.points[0].spec_gbs
        };
        let h100 = spec(Some(3350.0));
        assert!((3300.0..3400.0).contains(&h100), "{h100}");
        assert!(
            (spec(Some(1000.0)) - h100).abs() < 1e-9,
            "the nearer of the two"
        );
        assert!((spec(Some(9000.0)) - h100 * 3.0).abs() < 1.0);
        // Without a card: the first folder, as before.
        assert!((spec(None) - h100 * 3.0).abs() < 1.0);
    }

    /// Two folders whose cards have the same spec bandwidth are equally near any card: the
    /// documented choice among equals is the first in folder-name order ("a-twin" before
    /// "nvidia-..."), told apart here by the device name each report records.
    #[test]
    fn of_equally_near_reports_the_first_folder_is_used() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("reports/nvidia-h100-80gb-hbm3/decode.json"))
            .unwrap();
        let mut twin: Value = serde_json::from_str(&text).unwrap();
        for r in twin.as_array_mut().unwrap() {
            r["header"]["device"]["slug"] = "a-twin".into();
            r["header"]["device"]["name"] = "Twin card".into();
        }
        let dir = report_folders(&[
            ("a-twin", twin.to_string()),
            ("nvidia-h100-80gb-hbm3", text),
        ]);
        for near in [Some(3350.0), Some(1000.0), None] {
            let m = from_reports(dir.path(), "vicuna-7b", WeightDtype::Int4, false, near)
                .unwrap()
                .unwrap();
            assert_eq!(m.device, "Twin card", "near {near:?}");
            let f = fit_from_reports(dir.path(), WeightDtype::Int4, false, near, false)
                .unwrap()
                .unwrap();
            assert_eq!(f.device, "Twin card", "near {near:?}");
        }
    }
}
