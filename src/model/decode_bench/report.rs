//! decode.json, decode.md and the SVG plots from recorded runs (`lab decode` writes them after
//! a run; `lab report` regenerates the views without a GPU).

use super::{read_skipped_runs, ContextPoint, DecodeReport, GIB};
use crate::model::gpu_engine::{Fp16Backend, PrefillInt4};
use crate::model::gpu_weights::WeightKind;
use crate::model::step_profile::{self};
use crate::plan::{Plan, PlanSpec};
use crate::report::markdown::table;
use crate::report::plot::{line_chart, Series};
use crate::{LabError, Result};
use std::path::Path;

/// A decode.md column of one graph + PDL variant: its header and a point's ms/token.
type VariantColumn = (&'static str, fn(&ContextPoint) -> Option<f64>);

/// The graph + PDL variants timed beside the engine's own setting, in column order.
const PDL_VARIANT_COLUMNS: [VariantColumn; 4] = [
    (
        "graph + PDL ms/tok, silu kernel instead of the fused GLU",
        |p| p.graph_pdl_silu_kernel_ms,
    ),
    ("graph + PDL ms/tok, top-p 0.9 sampling", |p| {
        p.graph_pdl_top_p_ms
    }),
    (
        "graph + PDL ms/tok, attention without the K/V prefetch (v4 order)",
        |p| p.graph_pdl_attn_v4_ms,
    ),
    (
        "graph + PDL ms/tok, act-order on its own kernels (not on permuted x)",
        |p| p.graph_pdl_act_order_own_ms,
    ),
];

/// The `--prefill-int4` to plan a recorded run with: its own, except that an int4 `auto` with a
/// prefill but no dequant path in `prefill_paths` planned only the GEMM family. Reports recorded
/// before auto learned the dequant crossover (2026-11-27's runs 9-10, which have no
/// `prefill_int4` field: serde reads auto) ran exactly that, and so does a run whose chunk never
/// reaches the crossover; `v2` plans it (no fp16 W, no cuBLAS). fp16 runs and runs without a
/// prefill keep theirs (nothing to plan differently).
pub(super) fn planned_prefill_int4(r: &DecodeReport) -> PrefillInt4 {
    let int4 = matches!(r.weights.kind, WeightKind::Int4 { .. });
    let dequantized = r.prefill_paths.iter().any(|p| p.contains("Dequant"));
    match r.prefill_int4 {
        PrefillInt4::Auto if int4 && r.prefill_chunk > 0 && !dequantized => PrefillInt4::GemmV2,
        c => c,
    }
}

/// The ablation table of one context point: each op class's share of the step, in the graph and
/// in the graph + PDL. "saved" = full step - step without it; for GEMVs, the left-out bytes over
/// the saved time (graph + PDL where timed) as GB/s and as % of the read ceiling: how close the
/// class streams to the hardware inside the step.
pub(super) fn ablation_markdown(p: &ContextPoint, ceiling_gbs: f64) -> String {
    let full_pdl = p.graph_pdl_ms_per_token;
    let full = p.graph_ms_per_token;
    let pdl = full_pdl.is_some() && p.ablation.iter().all(|a| a.graph_pdl_ms.is_some());
    let mut md = format!(
        "\nWhere the step goes (ctx {}: the step timed with one op class left out at a time, against the full step: graph {full:.3} ms{}; the left-out ops' outputs are stale, the timings are real):\n\n",
        p.ctx,
        full_pdl.map_or(String::new(), |f| format!(", graph + PDL {f:.3} ms"))
    );
    let saved_cells = |full: f64, ms: f64| {
        let saved = full - ms;
        (
            saved,
            vec![
                format!("{ms:.3}"),
                format!("{saved:.3}"),
                format!("{:.1}%", 100.0 * saved / full),
            ],
        )
    };
    let rows: Vec<Vec<String>> = p
        .ablation
        .iter()
        .map(|a| {
            let mut row = vec![a.left_out.clone()];
            let (mut saved, cells) = saved_cells(full, a.graph_ms);
            row.extend(cells);
            if let (true, Some(f), Some(ms)) = (pdl, full_pdl, a.graph_pdl_ms) {
                let (s, cells) = saved_cells(f, ms);
                saved = s;
                row.extend(cells);
            }
            row.push(if a.weight_bytes > 0 {
                format!("{:.1}", a.weight_bytes as f64 / 1e6)
            } else {
                "-".into()
            });
            if a.weight_bytes > 0 && saved > 0.0 {
                let gbs = a.weight_bytes as f64 / (saved * 1e-3) / 1e9;
                row.push(format!("{gbs:.0}"));
                row.push(format!("{:.1}%", 100.0 * gbs / ceiling_gbs));
            } else {
                row.extend(["-".to_string(), "-".to_string()]);
            }
            row
        })
        .collect();
    let mut head = vec!["left out", "graph ms/tok", "saved ms", "% of the step"];
    if pdl {
        head.extend(["graph + PDL ms/tok", "saved ms", "% of the step"]);
    }
    head.extend([
        "weight MB left out",
        if pdl {
            "GB/s of those bytes over the saved time (graph + PDL)"
        } else {
            "GB/s of those bytes over the saved time"
        },
        "% of read ceiling",
    ]);
    md.push_str(&table(&head, &rows));
    md
}

/// "gemv_v2_vec 16 KB: 2.105, ..." for the per-variant budget column, or "-".
fn variant_budget_cells(sweep: &[(String, u32, f64)]) -> String {
    if sweep.is_empty() {
        return "-".into();
    }
    let cells: Vec<String> = sweep
        .iter()
        .map(|(v, b, m)| format!("{v} {} KB: {m:.3}", b / 1024))
        .collect();
    cells.join(", ")
}

/// One table cell of a prefetch sweep: "0 KB: 1.550, 64 KB: 1.450", or "-".
fn budget_cells(sweep: &[(u32, f64)]) -> String {
    if sweep.is_empty() {
        return "-".into();
    }
    let cells: Vec<String> = sweep
        .iter()
        .map(|(b, m)| format!("{} KB: {m:.3}", b / 1024))
        .collect();
    cells.join(", ")
}

/// decode.json (all runs), decode.md (tables), and three SVG plots in `dir`.
pub fn write_decode_report(dir: &Path, runs: &[DecodeReport]) -> Result<()> {
    if runs.is_empty() {
        return Err(LabError::invalid("decode report", "no runs to write"));
    }
    crate::util::write_json_atomic(&dir.join("decode.json"), &runs)?;
    write_decode_views(dir, runs)
}

/// decode.md and the plots from recorded runs, leaving decode.json untouched (`lab report`
/// regenerates these without a GPU). Every number comes from `runs`.
pub fn write_decode_views(dir: &Path, runs: &[DecodeReport]) -> Result<()> {
    let first = runs
        .first()
        .ok_or_else(|| LabError::invalid("decode report", "no runs to write"))?;
    let mut md = format!("# Decode (GPU engine)\n\n{}\n", first.header.markdown());
    let mut stale: Vec<String> = runs.iter().filter_map(|r| r.header.stale_note()).collect();
    stale.dedup();
    for note in stale {
        md.push_str(&format!("\n{note}\n"));
    }
    md.push_str("\nRoofline: bytes/token = linear weights (int4 codes + scales + zeros [+ act-order permutation], or fp16) + fp16 lm_head + one embedding row + RMSNorm gains + KV cache read (L x 2 x ctx x kv_dim x 2 B); roofline tok/s = measured read ceiling / bytes/token, at the mean context of the timed steps.\n");
    for r in runs {
        md.push_str(&format!(
            "\n## {}\n\n- weights: {} ({:.2} GB linear, {:.2} GB lm_head), {}\n- int4 kernel: {}; fp16 linears: {}\n- KV cache: {} positions, attention chunk {}; read ceiling {:.0} GB/s\n\n",
            r.label(),
            r.weights.source,
            r.weights.linear_bytes as f64 / 1e9,
            r.weights.lm_head_bytes as f64 / 1e9,
            if r.weights.fused { "q|k|v and gate|up fused" } else { "unfused linears" },
            r.int4_kernel,
            r.fp16_backend.map_or("none".to_string(), |b| format!("{b:?}")),
            r.max_ctx,
            r.attn_chunk,
            r.ceiling_gbs
        ));
        if !r.invalid.is_empty() {
            md.push_str(&format!(
                "**INVALID timings in this run** (the steps ended with a state flag, so these are not timings of a valid step): {}\n\n",
                r.invalid.join("; ")
            ));
        }
        let pdl = r.points.iter().any(|p| p.graph_pdl_ms_per_token.is_some());
        let persistent = r.points.iter().any(|p| p.graph_persistent_ms.is_some());
        let persistent_sweep = r
            .points
            .iter()
            .any(|p| !p.graph_persistent_prefetch.is_empty());
        let sweep = r.points.iter().any(|p| !p.graph_pdl_prefetch.is_empty());
        let one_per_sm = r
            .points
            .iter()
            .any(|p| !p.graph_pdl_v6_one_per_sm.is_empty());
        let small_plain = r.points.iter().any(|p| !p.graph_pdl_small_plain.is_empty());
        let by_variant = r
            .points
            .iter()
            .any(|p| !p.graph_pdl_prefetch_variant.is_empty());
        // The single-value graph + PDL columns, where any point of the run has them.
        let variants: Vec<&VariantColumn> = PDL_VARIANT_COLUMNS
            .iter()
            .filter(|(_, value)| r.points.iter().any(|p| value(p).is_some()))
            .collect();
        let rows: Vec<Vec<String>> = r
            .points
            .iter()
            .map(|p| {
                let mut row = vec![
                    p.ctx.to_string(),
                    format!("{:.3}", p.graph_ms_per_token),
                    format!("{:.1}", p.graph_tokens_per_s),
                    format!("{:.3}", p.eager_ms_per_token),
                    format!("{:.1}", p.eager_tokens_per_s),
                    format!("{:.3}", p.bytes_per_token / 1e9),
                    format!("{:.0}", p.achieved_gbs),
                    format!("{:.1}", p.roofline_tokens_per_s),
                    format!("{:.1}%", p.roofline_pct),
                ];
                let with_pct = |ms: Option<f64>| {
                    ms.map_or("-".into(), |m| {
                        format!("{m:.3} ({:.1}%)", 100.0 * 1e3 / m / p.roofline_tokens_per_s)
                    })
                };
                if pdl {
                    row.push(with_pct(p.graph_pdl_ms_per_token));
                }
                if persistent {
                    let eager = if p.persistent_eager { " eager" } else { "" };
                    row.push(with_pct(p.graph_persistent_ms) + eager);
                }
                if persistent_sweep {
                    row.push(budget_cells(&p.graph_persistent_prefetch));
                }
                if sweep {
                    row.push(budget_cells(&p.graph_pdl_prefetch));
                }
                for (_, value) in &variants {
                    row.push(value(p).map_or("-".into(), |m| format!("{m:.3}")));
                }
                if one_per_sm {
                    row.push(budget_cells(&p.graph_pdl_v6_one_per_sm));
                }
                if small_plain {
                    row.push(budget_cells(&p.graph_pdl_small_plain));
                }
                if by_variant {
                    row.push(variant_budget_cells(&p.graph_pdl_prefetch_variant));
                }
                row
            })
            .collect();
        let mut head = vec![
            "ctx",
            "graph ms/tok",
            "graph tok/s",
            "eager ms/tok",
            "eager tok/s",
            "GB/token",
            "GB/s",
            "roofline tok/s",
            "% roofline",
        ];
        if pdl {
            head.push("graph + PDL ms/tok (% roofline)");
        }
        if persistent {
            head.push("graph, persistent layers ms/tok (% roofline)");
        }
        if persistent_sweep {
            head.push("persistent layers ms/tok at other prefetch budgets");
        }
        if sweep {
            head.push("graph + PDL ms/tok at other prefetch budgets");
        }
        head.extend(variants.iter().map(|(h, _)| *h));
        if one_per_sm {
            head.push("graph + PDL ms/tok, v6 at one block per SM, by prefetch budget");
        }
        if small_plain {
            head.push("graph + PDL ms/tok, small kernels launched plain, by prefetch budget");
        }
        if by_variant {
            head.push("graph + PDL ms/tok, one GEMV variant at another prefetch budget (the rest at the PDL column's)");
        }
        md.push_str(&table(&head, &rows));
        if !r.prefill.is_empty() {
            md.push_str(&format!(
                "\nPrefill (chunks of {} rows, int4 paths in the notes below; timed separately from decode):\n\n",
                r.prefill_chunk
            ));
            let rows: Vec<Vec<String>> = r
                .prefill
                .iter()
                .map(|p| {
                    vec![
                        p.tokens.to_string(),
                        format!("{:.2}", p.ms),
                        format!("{:.0}", p.tokens_per_s),
                        format!("{:.1}", p.linear_tflops),
                    ]
                })
                .collect();
            md.push_str(&table(
                &["prompt tokens", "ms", "prefill tok/s", "linear TFLOP/s"],
                &rows,
            ));
        }
        if !r.profile.is_empty() {
            md.push_str("\nWhere a step goes (eager step queued behind a GPU hold, CUDA event after every op; GB/s = bytes the op streams: weights, KV rows):\n\n");
            let graph: Vec<Option<f64>> = r
                .profile
                .iter()
                .map(|p| {
                    r.points
                        .iter()
                        .find(|c| c.ctx == p.ctx)
                        .map(|c| c.graph_ms_per_token)
                })
                .collect();
            md.push_str(&step_profile::markdown(&r.profile, &graph));
            if r.profile.iter().any(|p| p.host_bound) {
                md.push_str("\n(host-bound at the longest hold: the figures include host gaps)\n");
            }
        }
        for p in r.points.iter().filter(|p| !p.ablation.is_empty()) {
            md.push_str(&ablation_markdown(p, r.ceiling_gbs));
        }
        let v = &r.vram;
        let g = |b: u64| format!("{:.2}", b as f64 / GIB);
        // The planner beside the measurement: its prefill line only when this engine allocated
        // one (r.prefill_chunk is the engine's own chunk, 0 when it had none).
        let mut spec = PlanSpec::of_engine_run(
            r.config.clone(),
            r.weights.kind,
            r.max_ctx as u64,
            r.prefill_chunk as u64,
        );
        spec.prefill_int4 = planned_prefill_int4(r);
        // fp16 linears made a cuBLAS handle only on the cuBLAS backend (the engine records it).
        spec.fp16_cublas = r.fp16_backend != Some(Fp16Backend::Lab);
        let plan = spec.plan().ok();
        let pl = |f: fn(&Plan) -> u64| plan.as_ref().map_or("-".into(), |p| g(f(p)));
        md.push_str("\nVRAM (GiB): driver = drop in cuMemGetInfo free memory per phase; engine = bytes requested; planner = `lab plan`'s prediction for this run by the planner of the revision that wrote this file, not the run's (context: its allowance; peak: its total).\n\n");
        md.push_str(&table(
            &["part", "driver", "engine", "planner"],
            &[
                vec![
                    "CUDA context + modules (+ other residents)".into(),
                    g(v.context_bytes),
                    "-".into(),
                    pl(|p| p.cuda_context_bytes),
                ],
                vec![
                    "weights".into(),
                    g(v.weights_driver_bytes),
                    g(v.weights_bytes),
                    pl(|p| p.weights_bytes),
                ],
                vec![
                    format!("KV cache ({} positions)", r.max_ctx),
                    g(v.kv_driver_bytes),
                    g(v.kv_bytes),
                    pl(|p| p.kv_cache_bytes),
                ],
                vec![
                    "workspace".into(),
                    g(v.workspace_driver_bytes),
                    g(v.workspace_bytes),
                    pl(|p| p.workspace_bytes),
                ],
                vec![
                    format!("prefill workspace ({} rows)", r.prefill_chunk),
                    g(v.prefill_driver_bytes),
                    g(v.prefill_bytes),
                    pl(|p| p.prefill_bytes),
                ],
                vec![
                    "peak used (all of the card's used memory)".into(),
                    g(v.peak_used_bytes),
                    "-".into(),
                    pl(|p| p.total_bytes),
                ],
            ],
        ));
        match &plan {
            Some(p) => {
                md.push_str(&format!(
                    "\nPlanner: `{}`. Prefill workspace, exact bytes: engine {}, planner {}{}.\n",
                    spec.command(),
                    v.prefill_bytes,
                    p.prefill_bytes,
                    if p.prefill_bytes == v.prefill_bytes {
                        " (equal)"
                    } else {
                        " (DIFFER: the planner sizes an sm_80+ card and fused q|k|v, gate|up)"
                    }
                ));
            }
            None => md.push_str("\nPlanner: no prediction for these weights.\n"),
        }
        for n in &r.notes {
            md.push_str(&format!("\n- {n}"));
        }
        md.push('\n');
    }
    let skipped = read_skipped_runs(dir)?;
    if !skipped.is_empty() {
        md.push_str("\n## Not run on this GPU (the engine does not fit its memory)\n\n");
        for k in &skipped {
            md.push_str(&format!("- {}: {}\n", k.run, k.reason));
        }
    }
    crate::util::write_atomic(&dir.join("decode.md"), md.as_bytes())?;

    let series = |f: &dyn Fn(&ContextPoint) -> f64, suffix: &str| -> Vec<Series> {
        runs.iter()
            .map(|r| Series {
                label: format!("{}{suffix}", r.label()),
                points: r.points.iter().map(|p| (p.ctx as f64, f(p))).collect(),
                reference: false,
            })
            .collect()
    };
    let mut tps = series(&|p| p.graph_tokens_per_s, " graph");
    tps.extend(series(&|p| p.eager_tokens_per_s, " eager"));
    for r in runs {
        tps.push(Series {
            label: format!("{} roofline", r.label()),
            points: r
                .points
                .iter()
                .map(|p| (p.ctx as f64, p.roofline_tokens_per_s))
                .collect(),
            reference: true,
        });
    }
    line_chart(
        &dir.join("decode-tokens-per-s.svg"),
        "Decode tokens/s vs context (batch 1)",
        "context (cached positions)",
        "tokens/s",
        &tps,
    )?;
    line_chart(
        &dir.join("decode-roofline.svg"),
        "Decode: % of the bandwidth roofline (graph)",
        "context (cached positions)",
        "% of roofline",
        &series(&|p| p.roofline_pct, ""),
    )?;
    // VRAM vs context: context + weights + workspace fixed, KV growing per position; the
    // engine's own bytes for each part, the driver's context reading.
    let mut vram = Vec::new();
    for r in runs {
        let fixed = (r.vram.context_bytes
            + r.vram.weights_bytes
            + r.vram.workspace_bytes
            + r.vram.prefill_bytes) as f64;
        let kv_pos = r.vram.kv_bytes as f64 / r.max_ctx.max(1) as f64;
        let xs = [0usize, 512, 1024, 2048, 4096];
        vram.push(Series {
            label: format!("{} total", r.label()),
            points: xs
                .iter()
                .map(|&c| (c as f64, (fixed + kv_pos * c as f64) / GIB))
                .collect(),
            reference: false,
        });
        vram.push(Series {
            label: format!("{} weights", r.label()),
            points: xs
                .iter()
                .map(|&c| (c as f64, r.vram.weights_bytes as f64 / GIB))
                .collect(),
            reference: true,
        });
    }
    line_chart(
        &dir.join("decode-vram.svg"),
        "VRAM by part vs context (context + weights + workspace + KV)",
        "context (positions)",
        "GiB",
        &vram,
    )?;
    Ok(())
}
