use super::report::{ablation_markdown, planned_prefill_int4};
use super::*;
use crate::bench::Ceilings;
use crate::model::step_profile;

#[test]
fn the_ablation_leaves_out_each_class_once_and_counts_its_bytes() {
    let a = ablations();
    for (i, (_, x)) in a.iter().enumerate() {
        assert!(x.any());
        for (_, y) in &a[i + 1..] {
            assert_ne!(x, y, "two settings leave out the same ops");
        }
    }
    let class = [26, 9, 46, 23];
    let bytes: Vec<u64> = a.iter().map(|(_, s)| skipped_bytes(s, &class)).collect();
    // norms, attention, silu read no weights; each GEMV class its own; all GEMVs the sum.
    assert_eq!(bytes, vec![0, 0, 0, 26, 9, 46, 23, 0, 104]);
}

/// A ctx-128 point of a 2.40 ms graph step on a 3000 GB/s card (one linear byte per token: the
/// ablation tables read only their rows' own bytes), for the ablation tables' tests.
fn ablation_point() -> ContextPoint {
    context_point(
        &BytesPerToken {
            linear_bytes: 1,
            lm_head_bytes: 0,
            embed_row_bytes: 0,
            norm_bytes: 0,
            kv_bytes_per_position: 0,
        },
        3000.0,
        128,
        16,
        2.40,
        2.6,
    )
}

#[test]
fn the_ablation_table_says_what_each_class_adds_and_how_fast_its_bytes_went() {
    let mut p = ablation_point();
    let rows = |pdl: bool| {
        vec![
            Ablation {
                left_out: "both RMSNorms of every layer".into(),
                graph_ms: 2.20,
                graph_pdl_ms: pdl.then_some(2.10),
                weight_bytes: 0,
            },
            Ablation {
                left_out: "gate|up".into(),
                graph_ms: 1.60,
                // 1.5e9 bytes over 0.75 ms = 2000 GB/s = 66.7% of 3000.
                graph_pdl_ms: pdl.then_some(1.50),
                weight_bytes: 1_500_000_000,
            },
        ]
    };
    // Graph only (no PDL on this card): the bytes over the graph's saved time (0.8 ms).
    p.ablation = rows(false);
    let md = ablation_markdown(&p, 3000.0);
    assert!(!md.contains("graph + PDL"), "{md}");
    assert!(
        md.contains("| both RMSNorms of every layer | 2.200 | 0.200 | 8.3% | - | - | - |"),
        "{md}"
    );
    assert!(
        md.contains("| gate|up | 1.600 | 0.800 | 33.3% | 1500.0 | 1875 | 62.5% |"),
        "{md}"
    );
    // With PDL: both columns, the GB/s from the graph + PDL's saved time.
    p.graph_pdl_ms_per_token = Some(2.25);
    p.ablation = rows(true);
    let md = ablation_markdown(&p, 3000.0);
    assert!(
        md.contains("| both RMSNorms of every layer | 2.200 | 0.200 | 8.3% | 2.100 | 0.150 | 6.7% | - | - | - |"),
        "{md}"
    );
    assert!(
        md.contains(
            "| gate|up | 1.600 | 0.800 | 33.3% | 1.500 | 0.750 | 33.3% | 1500.0 | 2000 | 66.7% |"
        ),
        "{md}"
    );
}

use crate::model::step_profile::Mark;

fn int4(act_order: bool) -> WeightKind {
    WeightKind::Int4 {
        group: 128,
        act_order,
        sym: false,
    }
}

#[test]
fn flagged_steps_are_noted_and_listed_as_invalid_and_clean_ones_are_not() {
    let (mut notes, mut invalid) = (Vec::new(), Vec::new());
    record_flags(0, "ctx 128 graph", &mut notes, &mut invalid);
    assert!(notes.is_empty() && invalid.is_empty());
    record_flags(4, "ctx 512 graph", &mut notes, &mut invalid);
    assert_eq!(invalid.len(), 1);
    assert_eq!(notes, invalid);
    assert!(invalid[0].starts_with("ctx 512 graph: step state flags 0x4"));
    assert!(invalid[0].contains("NaN") && invalid[0].contains("INVALID"));
    // Reports recorded before the field load with none, and a clean report writes none.
    let r = recorded(
        ModelConfig::vicuna_7b(),
        WeightKind::Fp16,
        &[(128, 10.0, 11.0)],
    );
    let json = serde_json::to_string(&r).unwrap();
    assert!(!json.contains("\"invalid\""));
    let back: DecodeReport = serde_json::from_str(&json).unwrap();
    assert!(back.invalid.is_empty());
    // decode.md says so under the run's heading.
    let dir = std::env::temp_dir().join(format!("lab-invalid-{}", std::process::id()));
    let mut bad = r.clone();
    bad.invalid = invalid.clone();
    write_decode_report(&dir, &[r, bad]).unwrap();
    let md = std::fs::read_to_string(dir.join("decode.md")).unwrap();
    assert_eq!(
        md.matches("**INVALID timings in this run**").count(),
        1,
        "{md}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bytes_per_token_matches_the_anchor_table() {
    // anchors.md: 7B int4 g128 (4.156 bits with zeros) 3.63 GB at ctx 0, 4.70 GB at 2048;
    // 13B 6.92 / 8.60 GB; 7B fp16 13.5 GB.
    let cases = [
        (ModelConfig::vicuna_7b(), int4(false), 0.0, 3.63e9),
        (ModelConfig::vicuna_7b(), int4(false), 2048.0, 4.70e9),
        (ModelConfig::vicuna_13b(), int4(false), 0.0, 6.92e9),
        (ModelConfig::vicuna_13b(), int4(false), 2048.0, 8.60e9),
        // The anchor's fp16 figure is the whole model (6.74 B params x 2 B) and so counts the
        // full embedding table (0.26 GB) that a decode step does not read: 13.5 - 0.26.
        (
            ModelConfig::vicuna_7b(),
            WeightKind::Fp16,
            0.0,
            13.5e9 - 32000.0 * 4096.0 * 2.0,
        ),
    ];
    for (cfg, kind, ctx, want) in cases {
        let b = BytesPerToken::new(&cfg, &expected_weights(&cfg, kind).unwrap());
        let got = b.at(ctx);
        assert!(
            (got / want - 1.0).abs() < 0.01,
            "{} {kind:?} ctx {ctx}: {got:.4e} vs {want:.4e}",
            cfg.name
        );
    }
    // KV: 7B reads 32 x 2 x 4096 x 2 B = 512 KiB per cached position.
    let b = BytesPerToken::new(
        &ModelConfig::vicuna_7b(),
        &expected_weights(&ModelConfig::vicuna_7b(), int4(false)).unwrap(),
    );
    assert_eq!(b.kv_bytes_per_position, 512 * 1024);
}

#[test]
fn act_order_adds_the_permutation_and_sym_drops_the_zeros() {
    let cfg = ModelConfig::vicuna_7b();
    let base = expected_weights(&cfg, int4(false)).unwrap().linear_bytes;
    let act = expected_weights(&cfg, int4(true)).unwrap().linear_bytes;
    // One i32 per input row for each of the 4 launches per layer: (3 x 4096 + 11008) x 4 B.
    assert_eq!(act - base, 32 * (3 * 4096 + 11008) * 4);
    let sym = expected_weights(
        &cfg,
        WeightKind::Int4 {
            group: 128,
            act_order: false,
            sym: true,
        },
    )
    .unwrap()
    .linear_bytes;
    let zeros: u64 = 32
        * [
            (4096u64, 12288u64),
            (4096, 4096),
            (4096, 22016),
            (11008, 4096),
        ]
        .iter()
        .map(|(k, n)| k / 128 * n / 2)
        .sum::<u64>();
    assert_eq!(base - sym, zeros);
    assert!(expected_weights(
        &cfg,
        WeightKind::Int4 {
            group: 96,
            act_order: false,
            sym: false
        }
    )
    .is_err());
    // Per-channel act-order is one group: no channel order, so no permutation to read.
    let per_channel = |act_order| {
        expected_weights(
            &cfg,
            WeightKind::Int4 {
                group: -1,
                act_order,
                sym: false,
            },
        )
        .unwrap()
        .linear_bytes
    };
    assert_eq!(per_channel(true), per_channel(false));
}

#[test]
fn prefill_point_counts_the_linear_flops() {
    let cfg = ModelConfig::vicuna_7b();
    // 7B linears: 32 x (4 x 4096^2 + 3 x 4096 x 11008) = 6.48e9 MACs per token.
    assert_eq!(
        linear_macs_per_token(&cfg),
        32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    );
    let p = prefill_point(&cfg, 512, 40.0);
    assert!((p.tokens_per_s - 12800.0).abs() < 1e-9);
    let want = 2.0 * 6_476_005_376.0 * 12800.0 / 1e12;
    assert!((p.linear_tflops - want).abs() < 1e-9, "{}", p.linear_tflops);
    assert_eq!(prefill_point(&cfg, 8, 0.0).tokens_per_s, 0.0);
}

#[test]
fn reports_recorded_before_prefill_still_load() {
    let r = recorded(ModelConfig::vicuna_7b(), int4(false), &[(128, 1.6, 2.9)]);
    let mut v = serde_json::to_value(&r).unwrap();
    let o = v.as_object_mut().unwrap();
    for k in ["prefill", "prefill_chunk", "prefill_paths"] {
        o.remove(k);
    }
    let back: DecodeReport = serde_json::from_value(v).unwrap();
    assert!(back.prefill.is_empty() && back.prefill_chunk == 0);
    let dir = tempfile::tempdir().unwrap();
    write_decode_views(dir.path(), std::slice::from_ref(&back)).unwrap();
    let md = std::fs::read_to_string(dir.path().join("decode.md")).unwrap();
    assert!(!md.contains("Prefill (chunks of"), "{md}");
    // The same report with a prefill point has the section (so the check above can fail).
    let mut with = back;
    with.prefill_chunk = 512;
    with.prefill = vec![prefill_point(&ModelConfig::vicuna_7b(), 512, 40.0)];
    write_decode_views(dir.path(), &[with]).unwrap();
    let md = std::fs::read_to_string(dir.path().join("decode.md")).unwrap();
    assert!(md.contains("Prefill (chunks of 512 rows"), "{md}");
}

#[test]
fn context_point_roofline_arithmetic() {
    let b = BytesPerToken {
        linear_bytes: 1_000_000_000,
        lm_head_bytes: 0,
        embed_row_bytes: 0,
        norm_bytes: 0,
        kv_bytes_per_position: 1_000_000,
    };
    // 31 steps from ctx 100: mean positions 116 -> 1.116 GB per token; 2000 GB/s -> 1792 tok/s.
    let p = context_point(&b, 2000.0, 100, 31, 1.0, 2.0);
    assert_eq!(p.mean_positions, 116.0);
    assert!((p.bytes_per_token - 1.116e9).abs() < 1.0);
    assert!((p.roofline_tokens_per_s - 2000e9 / 1.116e9).abs() < 1e-6);
    assert_eq!(
        (p.graph_tokens_per_s, p.eager_tokens_per_s),
        (1000.0, 500.0)
    );
    assert!((p.roofline_pct - 100.0 * 1000.0 / p.roofline_tokens_per_s).abs() < 1e-9);
    assert!((p.achieved_gbs - 1116.0).abs() < 1e-6);
}

#[test]
fn a_recorded_auto_without_a_dequant_path_is_planned_as_the_gemm_family() {
    let kind = WeightKind::Int4 {
        group: 128,
        act_order: false,
        sym: false,
    };
    let mut r = recorded(ModelConfig::vicuna_7b(), kind, &[(128, 2.0, 2.2)]);
    r.prefill_int4 = PrefillInt4::Auto;
    r.prefill_chunk = 512;
    // Run 10 recorded "auto" with GEMM paths only (auto had no dequant then).
    r.prefill_paths = vec!["4096 x 12288: GemmV2".into()];
    assert_eq!(planned_prefill_int4(&r), PrefillInt4::GemmV2);
    r.prefill_paths = vec!["4096 x 12288: GemmV2 (2-255 rows), Dequant (256-512 rows)".into()];
    assert_eq!(planned_prefill_int4(&r), PrefillInt4::Auto);
    r.prefill_int4 = PrefillInt4::Dequant;
    assert_eq!(planned_prefill_int4(&r), PrefillInt4::Dequant);
    r.prefill_int4 = PrefillInt4::GemmV1;
    r.prefill_paths.clear();
    assert_eq!(planned_prefill_int4(&r), PrefillInt4::GemmV1);
    // No prefill: nothing to plan differently, the command keeps auto (no flag).
    r.prefill_int4 = PrefillInt4::Auto;
    r.prefill_chunk = 0;
    assert_eq!(planned_prefill_int4(&r), PrefillInt4::Auto);
    // An fp16 run with a prefill keeps auto too: it has no int4 linears to plan a GEMM for.
    let mut f = recorded(
        ModelConfig::vicuna_7b(),
        WeightKind::Fp16,
        &[(128, 5.0, 6.0)],
    );
    f.prefill_int4 = PrefillInt4::Auto;
    f.prefill_chunk = 512;
    f.prefill_paths.clear();
    assert_eq!(planned_prefill_int4(&f), PrefillInt4::Auto);
}

pub(crate) fn recorded(
    model: ModelConfig,
    kind: WeightKind,
    ms: &[(usize, f64, f64)],
) -> DecodeReport {
    let device = crate::cuda::device::test_device("NVIDIA H100 80GB HBM3", (9, 0), 132);
    let ceil = Ceilings {
        copy_gbs: 3000.0,
        copy_kernel_gbs: 2950.0,
        memcpy_dtod_gbs: 3000.0,
        read_gbs: 3100.0,
        buffer_bytes: 1 << 30,
        read_by_size: Default::default(),
    };
    let weights = expected_weights(&model, kind).unwrap();
    let bytes = BytesPerToken::new(&model, &weights);
    DecodeReport {
        header: ReportHeader::new(&device, Some(ceil)),
        model: model.name.clone(),
        weights: weights.clone(),
        int4_kernel: "test".into(),
        fp16_backend: None,
        max_ctx: 2100,
        attn_chunk: 128,
        bytes,
        ceiling_gbs: ceil.read_gbs,
        points: ms
            .iter()
            .map(|&(c, g, e)| context_point(&bytes, ceil.read_gbs, c, 32, g, e))
            .collect(),
        vram: VramReport {
            total_bytes: 80 << 30,
            context_bytes: 600 << 20,
            weights_driver_bytes: weights.total_bytes() + (8 << 20),
            kv_driver_bytes: 1 << 30,
            workspace_driver_bytes: 40 << 20,
            weights_bytes: weights.total_bytes(),
            kv_bytes: 1 << 30,
            workspace_bytes: 35 << 20,
            prefill_driver_bytes: 118 << 20,
            prefill_bytes: 115 << 20,
            peak_used_bytes: 6 << 30,
        },
        prefill: [(128, 12.0), (512, 40.0)]
            .iter()
            .map(|&(n, ms)| prefill_point(&model, n, ms))
            .collect(),
        prefill_chunk: 512,
        prefill_paths: vec!["4096 x 12288: GemmV2".into()],
        prefill_int4: PrefillInt4::Auto,
        notes: vec!["recorded by hand for the report test".into()],
        profile: vec![step_profile::aggregate(
            128,
            20.0,
            false,
            &[vec![
                Mark {
                    op: "qkv_proj",
                    us: 600.0,
                    bytes: 900_000_000,
                },
                Mark {
                    op: "lm_head",
                    us: 100.0,
                    bytes: 262_144_000,
                },
            ]],
        )],
        persistent_barriers: None,
        invalid: Vec::new(),
        pdl_budget: None,
        pdl_budget_tuned: false,
        config: model,
    }
}

/// The plan `lab run` gives `lab decode` for one model and weights form.
fn lab_run_plan(cfg: ModelConfig, kind: WeightKind) -> BenchPlan {
    BenchPlan {
        cfg,
        kind,
        contexts: vec![128, 512, 1024, 2048],
        steps: 32,
        warmup: 4,
        seed: 1,
        fp16_backend: Fp16Backend::Cublas,
        int4: crate::model::gpu_engine::Int4Kernel::Engine,
        prefill_lens: vec![128, 512, 1024, 2048],
        prefill_chunk: 512,
        prefill_int4: PrefillInt4::Auto,
        dequant_slice_elems: crate::model::gpu_engine::DEQUANT_SLICE_ELEMS,
        profile_steps: 3,
        pdl: true,
        pdl_prefetch_own: None,
        pdl_prefetch_sweep: Vec::new(),
        persistent: false,
        persistent_prefetch: Vec::new(),
        v6_one_per_sm: Vec::new(),
        small_plain: Vec::new(),
        prefetch_variant: Vec::new(),
        ablate: true,
    }
}

#[test]
fn a_run_that_does_not_fit_the_card_is_named_with_what_it_needs() {
    // Run 17 on the H100 (decode.json): each run's driver peak less its CUDA context, against
    // what the fit check plans for the same run (2085 positions, 512-row prefill).
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("reports/nvidia-h100-80gb-hbm3/decode.json");
    let runs: Vec<DecodeReport> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut checked = 0;
    for r in runs.iter().filter(|r| !r.int4_kernel.contains("v6")) {
        let plan = lab_run_plan(r.config.clone(), r.weights.kind);
        assert_eq!(bench_max_ctx(&plan).unwrap(), r.max_ctx, "{}", r.label());
        let needs = bench_needs_bytes(&plan).unwrap() as f64;
        let measured = (r.vram.peak_used_bytes - r.vram.context_bytes) as f64;
        assert!(
            (needs / measured - 1.0).abs() < 0.03,
            "{}: planned {needs} vs measured {measured}",
            r.label()
        );
        checked += 1;
    }
    assert_eq!(checked, 6, "7B / 13B: int4, act-order, fp16");
    // A 24 GB card (~23 GiB free after the context): 13B int4 runs, 13B fp16 is skipped.
    let free = 23 << 30;
    let q4 = lab_run_plan(ModelConfig::vicuna_13b(), int4(false));
    assert!(does_not_fit(bench_needs_bytes(&q4).unwrap(), free).is_none());
    let fp16 = lab_run_plan(ModelConfig::vicuna_13b(), WeightKind::Fp16);
    let need = bench_needs_bytes(&fp16).unwrap();
    let why = does_not_fit(need, free).expect("26 GiB on 23");
    // What it needs (by hand: the need, then the need + 3% + 64 MiB) and what the card has.
    let margin = need + need / 33 + (64 << 20);
    for part in [
        format!("needs {:.2} GiB", need as f64 / (1u64 << 30) as f64),
        format!(
            "{:.2} GiB), this GPU has 23.00 GiB free",
            margin as f64 / (1u64 << 30) as f64
        ),
    ] {
        assert!(why.contains(&part), "{part:?} not in: {why}");
    }
    assert!(
        need > 26 << 30,
        "13B fp16 needs its 26 GB of weights and more: {need}"
    );
    // The margin: exactly the need is not enough.
    assert!(does_not_fit(10 << 30, 10 << 30).is_some());
    assert!(does_not_fit(10 << 30, 11 << 30).is_none());
    // Running out of memory anyway is the card's size only this close; else a failure.
    assert!(near_the_limit(10 << 30, 10_900 << 20));
    assert!(!near_the_limit(10 << 30, 12 << 30));
    // A skipped run is named as decode.md heads a run of the same kernel.
    let r = recorded(ModelConfig::vicuna_13b(), int4(false), &[(128, 3.6, 4.0)]);
    let auto = "auto (tuned config, 140 keys)";
    assert_eq!(
        run_label("vicuna-13b", int4(false), auto),
        DecodeReport {
            int4_kernel: auto.into(),
            ..r
        }
        .label()
    );
    assert_eq!(
        run_label("vicuna-13b", int4(false), auto),
        "vicuna-13b int4 g128 [auto]"
    );
}

#[test]
fn decode_md_has_an_ablation_table_for_each_context_that_has_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = recorded(
        ModelConfig::vicuna_7b(),
        int4(false),
        &[(128, 2.25, 2.5), (512, 2.3, 2.6), (2048, 2.6, 2.9)],
    );
    let row = |what: &str, ms: f64| Ablation {
        left_out: what.into(),
        graph_ms: ms,
        graph_pdl_ms: None,
        weight_bytes: 0,
    };
    r.points[0].ablation = vec![
        row("both RMSNorms of every layer", 2.1),
        row("the attention", 2.0),
    ];
    r.points[2].ablation = vec![row("the attention", 2.1)];
    write_decode_report(dir.path(), &[r]).unwrap();
    let md = std::fs::read_to_string(dir.path().join("decode.md")).unwrap();
    assert!(md.contains("Where the step goes (ctx 128:"), "{md}");
    assert!(md.contains("Where the step goes (ctx 2048:"), "{md}");
    assert!(!md.contains("Where the step goes (ctx 512:"), "{md}");
    assert!(
        md.contains("| the attention | 2.100 | 0.500 | 19.2% |"),
        "{md}"
    );
}

#[test]
fn skipped_runs_are_listed_in_decode_md_and_a_clean_run_removes_the_old_list() {
    let dir = tempfile::tempdir().unwrap();
    let runs = vec![recorded(
        ModelConfig::vicuna_7b(),
        int4(false),
        &[(128, 1.61, 2.9)],
    )];
    let skipped = vec![SkippedRun {
        run: "vicuna-13b fp16".into(),
        reason: "needs 25.6 GiB, this GPU has 23.0 GiB free".into(),
    }];
    write_skipped_runs(dir.path(), &skipped).unwrap();
    write_decode_report(dir.path(), &runs).unwrap();
    let md = std::fs::read_to_string(dir.path().join("decode.md")).unwrap();
    assert!(
        md.contains("## Not run on this GPU")
            && md.contains("- vicuna-13b fp16: needs 25.6 GiB, this GPU has 23.0 GiB free"),
        "{md}"
    );
    assert_eq!(read_skipped_runs(dir.path()).unwrap(), skipped);
    // The next bench skipped nothing: the list goes, and so does the section.
    write_skipped_runs(dir.path(), &[]).unwrap();
    write_decode_report(dir.path(), &runs).unwrap();
    let md = std::fs::read_to_string(dir.path().join("decode.md")).unwrap();
    assert!(!md.contains("Not run on this GPU"), "{md}");
    write_skipped_runs(dir.path(), &[]).unwrap();
    // A damaged list is an error naming the file, not an empty list.
    std::fs::write(dir.path().join(SKIPPED_FILE), "[{").unwrap();
    let e = read_skipped_runs(dir.path()).unwrap_err().to_string();
    assert!(e.contains(SKIPPED_FILE), "{e}");
}

#[test]
fn report_from_a_recorded_run_has_every_file_and_number() {
    let dir = tempfile::tempdir().unwrap();
    let runs = vec![
        recorded(
            ModelConfig::vicuna_7b(),
            int4(false),
            &[
                (128, 1.61, 2.9),
                (512, 1.75, 3.0),
                (1024, 1.9, 3.1),
                (2048, 2.2, 3.3),
            ],
        ),
        recorded(
            ModelConfig::vicuna_7b(),
            WeightKind::Fp16,
            &[
                (128, 5.2, 6.0),
                (512, 5.4, 6.2),
                (1024, 5.6, 6.3),
                (2048, 6.0, 6.5),
            ],
        ),
    ];
    let mut runs = runs;
    runs[0].points[0].graph_pdl_ms_per_token = Some(1.5);
    runs[0].points[0].graph_pdl_prefetch = vec![(0, 1.55), (65536, 1.45)];
    runs[0].points[0].graph_pdl_silu_kernel_ms = Some(1.525);
    runs[0].points[0].graph_pdl_top_p_ms = Some(1.52);
    runs[0].points[0].graph_pdl_attn_v4_ms = Some(1.51);
    runs[0].points[0].graph_pdl_v6_one_per_sm = vec![(32768, 1.48), (262144, 1.41)];
    runs[0].points[0].graph_pdl_small_plain = vec![(32768, 1.47), (131072, 1.43)];
    runs[0].points[0].graph_pdl_prefetch_variant = vec![("gemv_v2_vec".into(), 16384, 1.46)];
    runs[0].points[0].graph_persistent_ms = Some(1.2);
    runs[0].points[0].graph_persistent_prefetch = vec![(0, 1.3), (131072, 1.25)];
    // The fp16 run as recorded before the GEMM prefill: no prefill chunk, no prefill bytes.
    runs[1].prefill.clear();
    runs[1].prefill_chunk = 0;
    runs[1].vram.prefill_bytes = 0;
    runs[1].vram.prefill_driver_bytes = 0;
    write_decode_report(dir.path(), &runs).unwrap();
    let md = std::fs::read_to_string(dir.path().join("decode.md")).unwrap();
    // The planner beside the measurement, for the same model, weights, 2100 positions and
    // the prefill chunk the engine allocated: 512 rows for the int4 run (the hand-recorded
    // 115 MiB is not the engine's exact sizing, so the report says they differ), none for
    // the fp16 run, whose planned total then has no prefill in it.
    let gib = |b: u64| format!("{:.2}", b as f64 / GIB);
    // The recorded int4 run lists no dequant path, so it is planned as the GEMM family.
    let mut s0 = PlanSpec::of_engine_run(ModelConfig::vicuna_7b(), int4(false), 2100, 512);
    s0.prefill_int4 = PrefillInt4::GemmV2;
    let p0 = s0.plan().unwrap();
    assert!(
        md.contains(&format!(
            "| prefill workspace (512 rows) | {} | {} | {} |",
            gib(118 << 20),
            gib(115 << 20),
            gib(p0.prefill_bytes)
        )),
        "{md}"
    );
    assert!(md.contains(&format!(
        "Planner: `lab plan --model vicuna-7b --group 128 --ctx 2100 --prefill-chunk 512 --prefill-int4 v2`. Prefill workspace, exact bytes: engine {}, planner {} (DIFFER",
        115u64 << 20,
        p0.prefill_bytes
    )), "{md}");
    let p1 = PlanSpec::of_engine_run(ModelConfig::vicuna_7b(), WeightKind::Fp16, 2100, 0)
        .plan()
        .unwrap();
    assert_eq!(p1.prefill_bytes, 0);
    assert!(md.contains(
        "Planner: `lab plan --model vicuna-7b --dtype fp16 --ctx 2100 --prefill-chunk 0`. Prefill workspace, exact bytes: engine 0, planner 0 (equal)."
    ), "{md}");
    assert!(
        md.contains(&format!(
            "| peak used (all of the card's used memory) | {} | - | {} |",
            gib(6 << 30),
            gib(p1.total_bytes)
        )),
        "{md}"
    );
    // PDL column only where measured: 1.5 ms at ctx 128 against the same roofline.
    let roof = runs[0].points[0].roofline_tokens_per_s;
    assert!(
        md.contains(&format!("| 1.500 ({:.1}%) |", 100.0 * 1e3 / 1.5 / roof)),
        "{md}"
    );
    assert!(md.contains("| - |"), "{md}");
    // Other prefetch budgets in their own column, only in the run that timed them.
    assert!(
        md.contains("| 0 KB: 1.550, 64 KB: 1.450 |")
            && md.contains("graph + PDL ms/tok at other prefetch budgets"),
        "{md}"
    );
    assert_eq!(
        md.matches("graph + PDL ms/tok at other prefetch budgets")
            .count(),
        1,
        "{md}"
    );
    // The fused-GLU A/B: its own column, in the int4 run only, "-" where not timed.
    assert!(
        md.contains(
            "| 0 KB: 1.550, 64 KB: 1.450 | 1.525 | 1.520 | 1.510 | 32 KB: 1.480, 256 KB: 1.410 | 32 KB: 1.470, 128 KB: 1.430 | gemv_v2_vec 16 KB: 1.460 |"
        ) && md.contains("top-p 0.9 sampling")
            && md.matches("small kernels launched plain, by prefetch budget").count() == 1
            && md.matches("silu kernel instead of the fused GLU").count() == 1
            && md
                .matches("v6 at one block per SM, by prefetch budget")
                .count()
                == 1,
        "{md}"
    );
    // A recorded point round-trips through JSON with its sweep.
    let back: ContextPoint =
        serde_json::from_value(serde_json::to_value(&runs[0].points[0]).unwrap()).unwrap();
    assert_eq!(back.graph_pdl_prefetch, vec![(0, 1.55), (65536, 1.45)]);
    assert_eq!(back.graph_pdl_silu_kernel_ms, Some(1.525));
    assert_eq!(back.graph_pdl_top_p_ms, Some(1.52));
    assert_eq!(back.graph_pdl_attn_v4_ms, Some(1.51));
    assert_eq!(
        back.graph_pdl_v6_one_per_sm,
        vec![(32768, 1.48), (262144, 1.41)]
    );
    assert_eq!(
        back.graph_pdl_small_plain,
        vec![(32768, 1.47), (131072, 1.43)]
    );
    assert_eq!(
        back.graph_pdl_prefetch_variant,
        vec![("gemv_v2_vec".to_string(), 16384, 1.46)]
    );
    assert_eq!(back.graph_persistent_ms, Some(1.2));
    // The persistent layers' column beside the PDL one, with its share of the roofline, in
    // the int4 run only.
    assert!(
        md.contains(&format!(
            "| 1.500 ({:.1}%) | 1.200 ({:.1}%) |",
            100.0 * 1e3 / 1.5 / roof,
            100.0 * 1e3 / 1.2 / roof
        )) && md.matches("graph, persistent layers ms/tok").count() == 1,
        "{md}"
    );
    assert!(
        md.contains("| 0 KB: 1.300, 128 KB: 1.250 |")
            && md
                .matches("persistent layers ms/tok at other prefetch budgets")
                .count()
                == 1,
        "{md}"
    );
    assert_eq!(
        back.graph_persistent_prefetch,
        vec![(0, 1.3), (131072, 1.25)]
    );
    assert!(
        md.contains("## vicuna-7b int4 g128 [test]") && md.contains("## vicuna-7b fp16"),
        "{md}"
    );
    // 1000 / 1.61 ms = 621.1 tok/s must appear in the int4 table.
    assert!(md.contains("621.1"), "{md}");
    // Prefill: 512 tokens in 40 ms = 12800 tok/s, in its own table; the prefill workspace
    // has its VRAM line.
    assert!(md.contains("| 512 | 40.00 | 12800 |"), "{md}");
    // The profile table: 900 MB of q|k|v weights in 600 us = 1500 GB/s, 85.7% of the
    // 700 us step, beside the 1.61 ms graph step at ctx 128.
    assert!(
        md.contains("| q|k|v proj | 1 | 600.0 | 85.7% | 1500 |"),
        "{md}"
    );
    assert!(
        md.contains("| graph step (timed above) |  | 1610.0 |"),
        "{md}"
    );
    let json: Vec<DecodeReport> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("decode.json")).unwrap())
            .unwrap();
    assert_eq!(json.len(), 2);
    assert_eq!(json[0].points, runs[0].points);
    for f in [
        "decode-tokens-per-s.svg",
        "decode-roofline.svg",
        "decode-vram.svg",
    ] {
        let s = std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert!(s.starts_with("<svg") && s.contains("vicuna-7b fp16"), "{f}");
    }
    // Nothing to write is an error, and the report already there is left as it was.
    let before = std::fs::read(dir.path().join("decode.json")).unwrap();
    let e = write_decode_report(dir.path(), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("no runs to write"), "{e}");
    assert_eq!(
        std::fs::read(dir.path().join("decode.json")).unwrap(),
        before
    );
}

#[test]
fn a_bench_that_would_drop_recorded_runs_names_them() {
    // The committed H100 report: 7B and 13B, int4 (plain and act-order) and fp16.
    let committed = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("reports/nvidia-h100-80gb-hbm3/decode.json");
    let runs: Vec<DecodeReport> = crate::util::read_json(&committed).unwrap();
    let kinds: Vec<WeightKind> = runs.iter().map(|r| r.weights.kind).collect();
    // Its int4 runs were timed with these two kernels (`lab run`'s --int4-kernel).
    let both = ["gemv_v6_pipe", "auto"];
    // The whole set again: nothing dropped.
    assert!(
        runs_not_remeasured(&committed, &["vicuna-7b", "vicuna-13b"], &kinds, &both)
            .unwrap()
            .is_empty()
    );
    // 7B only: every 13B run would go, and is named.
    let dropped = runs_not_remeasured(&committed, &["vicuna-7b"], &kinds, &both).unwrap();
    assert!(
        !dropped.is_empty() && dropped.iter().all(|l| l.starts_with("vicuna-13b")),
        "{dropped:?}"
    );
    // fp16 only: the int4 runs would go.
    let fp16 = runs_not_remeasured(
        &committed,
        &["vicuna-7b", "vicuna-13b"],
        &[WeightKind::Fp16],
        &both,
    )
    .unwrap();
    assert!(
        fp16.iter().any(|l| l.contains("int4")) && !fp16.iter().any(|l| l.ends_with("fp16")),
        "{fp16:?}"
    );
    // Every model and weights form again, but the int4 runs with `auto` alone (the default
    // --int4-kernel): the four gemv_v6_pipe runs would go, and are named; fp16 has no kernel.
    let v6 =
        runs_not_remeasured(&committed, &["vicuna-7b", "vicuna-13b"], &kinds, &["auto"]).unwrap();
    assert_eq!(
        v6,
        [
            "vicuna-7b int4 g128 [gemv_v6_pipe]",
            "vicuna-7b int4 g128 act-order [gemv_v6_pipe]",
            "vicuna-13b int4 g128 [gemv_v6_pipe]",
            "vicuna-13b int4 g128 act-order [gemv_v6_pipe]",
        ],
        "{v6:?}"
    );
    // Nothing there, or a file that does not parse: nothing to keep.
    let dir = tempfile::tempdir().unwrap();
    assert!(
        runs_not_remeasured(&dir.path().join("decode.json"), &[], &[], &[])
            .unwrap()
            .is_empty()
    );
    std::fs::write(dir.path().join("bad.json"), "{").unwrap();
    assert!(
        runs_not_remeasured(&dir.path().join("bad.json"), &[], &[], &[])
            .unwrap()
            .is_empty()
    );
}

#[test]
fn bytes_per_token_sums_every_part_and_counts_the_kv_heads_only() {
    // Each part its own decimal place, so a part left out of the sum shows.
    let b = BytesPerToken {
        linear_bytes: 1_000_000,
        lm_head_bytes: 20_000,
        embed_row_bytes: 300,
        norm_bytes: 4,
        kv_bytes_per_position: 50,
    };
    assert_eq!(b.at(0.0), 1_020_304.0);
    assert_eq!(b.at(10.5), 1_020_304.0 + 525.0);
    // GQA (tiny-check: 4 query heads over 2 KV heads, head dim 16, 2 layers, hidden 64): the
    // cache holds the KV heads only, 2 layers x (k, v) x 2 heads x 16 x 2 B = 256 B per
    // position (4 heads would be 512), and q|k|v is 64 + 2 x 32 wide.
    let cfg = crate::model::gpu_check::tiny_config();
    let w = expected_weights(&cfg, WeightKind::Fp16).unwrap();
    let b = BytesPerToken::new(&cfg, &w);
    assert_eq!(b.kv_bytes_per_position, 256);
    assert_eq!(b.embed_row_bytes, 64 * 2);
    assert_eq!(
        w.linear_bytes,
        2 * (64 * 128 + 64 * 64 + 64 * 384 + 192 * 64) * 2
    );
}

#[test]
fn the_fit_margin_and_the_near_limit_band_have_exact_edges() {
    // 33 MiB needs 1 MiB (3%) + 64 MiB of margin: 98 MiB free fits, one byte less does not.
    assert!(does_not_fit(33 << 20, 98 << 20).is_none());
    assert!(does_not_fit(33 << 20, (98 << 20) - 1).is_some());
    // Within 10%: a 10 GiB engine is near the limit below 11 GiB free, not at or above it.
    assert!(near_the_limit(10 << 30, (11 << 30) - 1));
    assert!(!near_the_limit(10 << 30, 11 << 30));
    assert!(!near_the_limit(10 << 30, 11_500 << 20));
}

#[test]
fn an_ablation_row_that_saved_no_time_has_no_bandwidth_and_a_partial_pdl_column_is_left_out() {
    let mut p = ablation_point();
    p.graph_pdl_ms_per_token = Some(2.25);
    p.ablation = vec![
        // Timed without PDL only (PDL stopped working mid-ablation).
        Ablation {
            left_out: "down".into(),
            graph_ms: 2.40,
            graph_pdl_ms: None,
            weight_bytes: 1_000_000_000,
        },
        Ablation {
            left_out: "o".into(),
            graph_ms: 2.30,
            graph_pdl_ms: Some(2.20),
            weight_bytes: 100_000_000,
        },
    ];
    let md = ablation_markdown(&p, 3000.0);
    // A row without its graph + PDL time: no PDL columns at all, so every row has the same cells.
    assert!(!md.contains("graph + PDL ms/tok"), "{md}");
    // Nothing saved: no GB/s (not an infinite one).
    assert!(
        md.contains("| down | 2.400 | 0.000 | 0.0% | 1000.0 | - | - |"),
        "{md}"
    );
    assert!(!md.contains("inf"), "{md}");
    // 0.1 GB over the 0.1 ms the graph saved: 1000 GB/s, 33.3% of 3000.
    assert!(
        md.contains("| o | 2.300 | 0.100 | 4.2% | 100.0 | 1000 | 33.3% |"),
        "{md}"
    );
}
