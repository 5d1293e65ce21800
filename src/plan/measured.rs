//! The decode efficiency measured on a real card, read back from a committed decode report
//! (reports/<gpu>/decode.json), so `lab plan --card X` can estimate tokens/s on a card nobody here
//! owns: estimate = X's spec bandwidth x (achieved GB/s / the measuring card's spec GB/s) / bytes per
//! step. It is always labelled an estimate: another card runs the kernels at its own efficiency.

use super::WeightDtype;
use crate::{LabError, Result};
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
}

/// The first decode report under `root/reports/*/decode.json` (folders in name order) with a run
/// of `model` in `dtype` (int4 without act-order, or fp16); of its runs, the fastest (a report
/// times several int4 kernels: the estimate should use the one a user would run). `Ok(None)` when
/// there is none.
pub fn from_reports(
    root: &Path,
    model: &str,
    dtype: WeightDtype,
) -> Result<Option<MeasuredEfficiency>> {
    let dir = root.join("reports");
    let mut folders: Vec<_> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => return Ok(None),
    };
    folders.sort();
    for f in folders {
        let path = f.join("decode.json");
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| LabError::io(&path, e))?;
        let runs: Value = serde_json::from_str(&text).map_err(|e| LabError::Json {
            path: path.clone(),
            source: e,
        })?;
        if let Some(m) = pick(&runs, model, dtype) {
            return Ok(Some(m));
        }
    }
    Ok(None)
}

fn pick(runs: &Value, model: &str, dtype: WeightDtype) -> Option<MeasuredEfficiency> {
    runs.as_array()?
        .iter()
        .filter_map(|r| measured(r, model, dtype))
        .max_by(|a, b| a.efficiency.total_cmp(&b.efficiency))
}

/// One recorded run as an efficiency, if it is `model` in `dtype` and complete.
fn measured(r: &Value, model: &str, dtype: WeightDtype) -> Option<MeasuredEfficiency> {
    if r["model"].as_str()? != model {
        return None;
    }
    let kind = &r["weights"]["kind"];
    let matches = match dtype {
        WeightDtype::Fp16 => kind.as_str() == Some("Fp16") || kind.get("Fp16").is_some(),
        WeightDtype::Int4 => kind["Int4"]["act_order"].as_bool() == Some(false),
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
    Some(MeasuredEfficiency {
        efficiency: (achieved / spec_gbs).min(1.0),
        device: d["name"].as_str()?.to_string(),
        date: h["date"].as_str().unwrap_or("").to_string(),
        git_rev: h["build"]["git_rev"].as_str().unwrap_or("").to_string(),
        kernel_hash: h["build"]["kernel_hash"].as_str().unwrap_or("").to_string(),
        int4_kernel: r["int4_kernel"].as_str().unwrap_or("").to_string(),
        ctx: p["ctx"].as_u64()?,
        tokens_per_s: p["graph_tokens_per_s"].as_f64()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_committed_h100_decode_report() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let m = from_reports(root, "vicuna-7b", WeightDtype::Int4)
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
        let f = from_reports(root, "vicuna-7b", WeightDtype::Fp16)
            .unwrap()
            .unwrap();
        assert!(
            f.efficiency > m.efficiency,
            "fp16 through cuBLAS streams closer to the roofline"
        );
        assert!(from_reports(root, "no-such-model", WeightDtype::Int4)
            .unwrap()
            .is_none());
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
        let ok = measured(&run(vec![]), "m", WeightDtype::Fp16).unwrap();
        assert_eq!((ok.ctx, ok.efficiency), (128, 0.4));
        // ctx 128's graph flagged: the next valid point (a flagged "ctx 1280" is not ctx 128's).
        let next = measured(
            &run(vec!["ctx 128 graph: step state flags 0x4"]),
            "m",
            WeightDtype::Fp16,
        );
        assert_eq!(next.unwrap().ctx, 512);
        let other = measured(
            &run(vec!["ctx 1280 graph: step state flags 0x4"]),
            "m",
            WeightDtype::Fp16,
        );
        assert_eq!(other.unwrap().ctx, 128);
        let eager_only = measured(&run(vec!["ctx 128 eager: flags"]), "m", WeightDtype::Fp16);
        assert_eq!(eager_only.unwrap().ctx, 128);
        let all = run(vec![
            "ctx 128 graph: x",
            "ctx 512 graph: x",
            "ctx 1280 graph: x",
        ]);
        assert!(measured(&all, "m", WeightDtype::Fp16).is_none());
    }

    #[test]
    fn a_malformed_report_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("reports/x")).unwrap();
        std::fs::write(dir.path().join("reports/x/decode.json"), "{not json").unwrap();
        let e = from_reports(dir.path(), "vicuna-7b", WeightDtype::Int4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("reports/x/decode.json"), "{e}");
        assert!(
            from_reports(&dir.path().join("none"), "vicuna-7b", WeightDtype::Int4)
                .unwrap()
                .is_none()
        );
    }
}
