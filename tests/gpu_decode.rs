//! The GPU decode engine on a real GPU (skips with the reason elsewhere; REQUIRE_GPU=1 makes a
//! skip a failure): op-by-op and end-to-end against the f64 reference on random tiny models of
//! every weight form, against the CPU engine on the tiny fixture checkpoints, CUDA graph vs eager,
//! synthetic weights' byte counts, and bad inputs refused. The GEMM prefill is in every check
//! (all rows' and the last row's logits vs the reference and the CPU engine, greedy tokens after
//! it) and has its own tests below: long prompts in several chunks against the token-by-token
//! prefill and the f64 reference, and its bad inputs.

use gptq_lab::cuda::gpu_or_skip;
use gptq_lab::model::decode_bench::expected_weights;
use gptq_lab::model::gpu_check::{
    check_checkpoint, check_long_context, check_tiny_case, check_v9_cluster, fixture_opts,
    reference_last_logits, tiny_cases, tiny_config, worst, CHECK_NEW, CHECK_PROMPT, FIXTURES,
    LOGIT_ATOL_RMS, LOGIT_RTOL,
};
use gptq_lab::model::gpu_engine::{
    EngineOptions, GpuEngine, PrefillInt4, PrefillLogits, PrefillMode, SkipOps, WeightSource,
    DEQUANT_SLICE_ELEMS,
};
use gptq_lab::model::gpu_weights::{SyntheticSpec, WeightKind};
use std::path::Path;

#[test]
fn gpu_engine_matches_the_f64_reference_op_by_op_on_random_tiny_models() {
    let Some(gpu) =
        gpu_or_skip("gpu_engine_matches_the_f64_reference_op_by_op_on_random_tiny_models")
    else {
        return;
    };
    let mut failed = Vec::new();
    for c in tiny_cases() {
        let r = check_tiny_case(&gpu, &c)
            .unwrap_or_else(|e| panic!("{} chunk {}: {e}", c.kind.label(), c.chunk));
        eprintln!("{}", r.summary());
        if !r.pass {
            failed.push(r.summary());
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// gemv_v9_cluster in the engine (cluster launches, sm_90 only) on a model whose every linear it
/// splits over K (clusters of 2 and 5 blocks; `cluster_check_config`), checked as the tiny cases
/// are (op by op, tokens in every mode incl. graph + PDL, whose launches then carry both the PDL
/// and the cluster attribute).
#[test]
fn gpu_engine_runs_gemv_v9_cluster_on_sm_90() {
    let Some(gpu) = gpu_or_skip("gpu_engine_runs_gemv_v9_cluster_on_sm_90") else {
        return;
    };
    if gpu.sm() < 90 {
        gptq_lab::util::note_skip(
            "gpu_engine_runs_gemv_v9_cluster_on_sm_90",
            &format!("sm_{} (clusters need sm_90)", gpu.sm()),
        );
        return;
    }
    let reports = check_v9_cluster(&gpu).unwrap();
    for r in &reports {
        eprintln!("{}", r.summary());
    }
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.pass)
        .map(|r| r.summary())
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// The 7B/13B engines' attention geometry (hd 128, 9 splits of a 2100-position cache) at a
/// 520-token context, where splits run past their end onto the new row (the NaN of H100 runs
/// 9-10): every op against the f64 reference, also with poisoned shared memory.
#[test]
fn gpu_engine_matches_the_f64_reference_at_a_long_context_with_head_dim_128() {
    let Some(gpu) =
        gpu_or_skip("gpu_engine_matches_the_f64_reference_at_a_long_context_with_head_dim_128")
    else {
        return;
    };
    let r = check_long_context(&gpu).unwrap();
    eprintln!("{}", r.summary());
    assert!(r.pass, "{}", r.summary());
}

#[test]
fn gpu_engine_matches_the_cpu_engine_on_the_tiny_fixtures() {
    let Some(gpu) = gpu_or_skip("gpu_engine_matches_the_cpu_engine_on_the_tiny_fixtures") else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for name in FIXTURES {
        let r = check_checkpoint(
            &gpu,
            &root.join(name),
            &CHECK_PROMPT,
            CHECK_NEW,
            fixture_opts(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!("{}", r.summary());
        assert!(r.pass, "{}", r.summary());
        assert!(
            r.cpu_engine_logits_ratio.is_some_and(|x| x <= 1.0),
            "{}",
            r.summary()
        );
    }
}

#[test]
fn synthetic_weights_hold_exactly_the_expected_bytes_and_decode_finitely() {
    let Some(gpu) =
        gpu_or_skip("synthetic_weights_hold_exactly_the_expected_bytes_and_decode_finitely")
    else {
        return;
    };
    let cfg = tiny_config();
    for kind in [
        WeightKind::Int4 {
            group: 32,
            act_order: true,
            sym: false,
        },
        WeightKind::Int4 {
            group: 64,
            act_order: false,
            sym: true,
        },
        WeightKind::Fp16,
    ] {
        let mut e = GpuEngine::new(
            &gpu,
            &cfg,
            WeightSource::Synthetic(SyntheticSpec { kind, seed: 9 }),
            EngineOptions::new(64),
        )
        .unwrap();
        let want = expected_weights(&cfg, kind).unwrap();
        let got = &e.weights.desc;
        assert_eq!(
            (
                got.linear_bytes,
                got.lm_head_bytes,
                got.embed_bytes,
                got.norm_bytes
            ),
            (
                want.linear_bytes,
                want.lm_head_bytes,
                want.embed_bytes,
                want.norm_bytes
            ),
            "{kind:?}"
        );
        // Greedy tokens through the graph equal the eager ones, and the logits are finite.
        let eager = e.generate(&[1, 2, 3], 6, false).unwrap();
        let lg = e.logits().unwrap();
        assert!(
            lg.iter().all(|x| x.is_finite()),
            "{kind:?}: non-finite logits"
        );
        let graph = e.generate(&[1, 2, 3], 6, true).unwrap();
        assert_eq!(eager, graph, "{kind:?}");
        let v = e.vram().unwrap();
        assert!(
            v.weights_bytes == want.total_bytes() && v.kv_bytes == e.kv_bytes(),
            "{v:?}"
        );
    }
}

#[test]
fn bad_tokens_and_a_full_cache_are_errors_not_wrong_results() {
    let Some(gpu) = gpu_or_skip("bad_tokens_and_a_full_cache_are_errors_not_wrong_results") else {
        return;
    };
    let cfg = tiny_config();
    let mut e = GpuEngine::new(
        &gpu,
        &cfg,
        WeightSource::Synthetic(SyntheticSpec {
            kind: WeightKind::Fp16,
            seed: 1,
        }),
        EngineOptions::new(4),
    )
    .unwrap();
    let err = e.feed(320, false, None).unwrap_err().to_string();
    assert!(err.contains("vocab_size 320"), "{err}");
    assert!(e.generate(&[1, 2, 3], 2, false).is_ok());
    assert!(e
        .generate(&[1, 2, 3], 3, false)
        .unwrap_err()
        .to_string()
        .contains("exceed the KV cache"));
    e.set_position(3).unwrap();
    e.feed(1, false, None).unwrap();
    assert!(e
        .feed(1, false, None)
        .unwrap_err()
        .to_string()
        .contains("KV cache is full"));
    let err = e.set_position(4).unwrap_err().to_string();
    assert!(err.contains("4 is past the KV cache"), "{err}");
    // The ablation's left-out ops make the step unfit to trace or profile: refused, not
    // reported with missing marks or stale outputs.
    e.set_position(0).unwrap();
    e.set_skip_ops(SkipOps {
        silu: true,
        ..SkipOps::default()
    })
    .unwrap();
    let err = e.profile_step(0.0).unwrap_err().to_string();
    assert!(err.contains("set_skip_ops"), "{err}");
    let err = e.trace_step(1).unwrap_err().to_string();
    assert!(err.contains("set_skip_ops"), "{err}");
    e.set_skip_ops(SkipOps::default()).unwrap();
    assert!(e.profile_step(0.0).is_ok());
}

/// A 100-token prompt on random tiny models (int4 with and without act-order, fp16): the GEMM
/// prefill in chunks of 32 (and 7, leaving odd GEMM tiles; and the dequant + cuBLAS path in
/// chunks of 33, act-order rows written back through the permutation) gives the same last-row
/// logits (within the end-to-end tolerance) and the same greedy continuation as the
/// token-by-token prefill. A 300-token prompt in chunks of 260 + 40 takes auto's dequant for the
/// first chunk (from 256 rows; act-order from 128) and the GEMM for the second. Two dequant cases
/// run with a small slice budget, so every linear goes through several column slices.
#[test]
fn gemm_prefill_of_a_long_prompt_matches_the_token_by_token_prefill() {
    let Some(gpu) = gpu_or_skip("gemm_prefill_of_a_long_prompt_matches_the_token_by_token_prefill")
    else {
        return;
    };
    let mut cfg = tiny_config();
    cfg.max_position_embeddings = 512; // the 300-token cases
    let i4 = |group, act_order, sym| WeightKind::Int4 {
        group,
        act_order,
        sym,
    };
    for (kind, chunk, int4, len, slices) in [
        (
            i4(32, true, false),
            32,
            PrefillInt4::Auto,
            100,
            DEQUANT_SLICE_ELEMS,
        ),
        (
            i4(64, false, true),
            7,
            PrefillInt4::GemmV1,
            100,
            DEQUANT_SLICE_ELEMS,
        ),
        // dequant + cuBLAS (--prefill-int4 dequant): 3 chunks of 33 and a 1-row tail (the
        // decode GEMV); act-order through the permutation.
        (
            i4(32, false, false),
            33,
            PrefillInt4::Dequant,
            100,
            DEQUANT_SLICE_ELEMS,
        ),
        (
            i4(64, true, true),
            32,
            PrefillInt4::Dequant,
            100,
            DEQUANT_SLICE_ELEMS,
        ),
        // auto: dequant for the 260-row chunk, the GEMM family for the 40-row one.
        (
            i4(32, false, false),
            260,
            PrefillInt4::Auto,
            300,
            DEQUANT_SLICE_ELEMS,
        ),
        (
            i4(32, true, false),
            260,
            PrefillInt4::Auto,
            300,
            DEQUANT_SLICE_ELEMS,
        ),
        // The dequant in column slices (a 64-wide tiny linear is one slice at the default budget):
        // gate|up (64 x 384) in 16 slices of 24 columns, down (192 x 64) in 8 of 8; and a budget
        // that is not a multiple of 8 columns (last slices narrower).
        (i4(64, true, true), 32, PrefillInt4::Dequant, 100, 64 * 24),
        (i4(32, false, false), 33, PrefillInt4::Dequant, 100, 2000),
        (
            WeightKind::Fp16,
            32,
            PrefillInt4::Auto,
            100,
            DEQUANT_SLICE_ELEMS,
        ),
    ] {
        let prompt: Vec<u32> = (0..len).map(|i| (i * 37 + 11) % 320).collect();
        let host = gptq_lab::model::gpu_weights::HostLlama::random(&cfg, 21, kind).unwrap();
        let mut o = EngineOptions::new(len as usize + 28);
        o.prefill_chunk = chunk;
        o.prefill_int4 = int4;
        o.dequant_slice_elems = slices;
        let mut e = GpuEngine::new(
            &gpu,
            &cfg,
            WeightSource::Host {
                weights: &host,
                label: "random 21",
            },
            o,
        )
        .unwrap();
        // The paths the case is meant to exercise are the ones the engine planned.
        let paths = e.prefill_int4_paths().join("; ");
        let dequant = int4 == PrefillInt4::Dequant || (int4 == PrefillInt4::Auto && len >= 256);
        assert_eq!(paths.contains("Dequant"), dequant, "{kind:?}: {paths}");
        let by_token = e
            .generate_with(&prompt, 8, true, PrefillMode::TokenByToken)
            .unwrap();
        e.reset().unwrap();
        for &t in &prompt {
            e.feed(t, false, None).unwrap();
        }
        let want_f32 = e.logits().unwrap();
        let want: Vec<f64> = want_f32.iter().map(|&x| x as f64).collect();
        e.reset().unwrap();
        let got = e.prefill(&prompt, PrefillLogits::Last).unwrap();
        assert_eq!(e.position(), prompt.len());
        let (i, r) = worst(&got[0], &want, LOGIT_RTOL, LOGIT_ATOL_RMS).unwrap();
        assert!(
            r <= 1.0,
            "{kind:?} chunk {chunk} slices of {slices}: logit {i} off by {r:.2}x tolerance"
        );
        // Both paths against the independent f64 reference too: agreeing with each other alone
        // would pass a mistake the two share (the attention over the cache, the norms).
        let reference = reference_last_logits(&cfg, &host, &prompt);
        for (path, logits) in [("GEMM prefill", &got[0]), ("token by token", &want_f32)] {
            let (i, r) = worst(logits, &reference, LOGIT_RTOL, LOGIT_ATOL_RMS).unwrap();
            assert!(
                r <= 1.0,
                "{kind:?} chunk {chunk} slices of {slices}, {path} vs the f64 reference: logit {i} off by {r:.2}x tolerance"
            );
        }
        let gemm = e
            .generate_with(&prompt, 8, true, PrefillMode::Gemm)
            .unwrap();
        assert_eq!(gemm, by_token, "{kind:?} chunk {chunk}");
        e.check_state().unwrap();
    }
}

#[test]
fn prefill_refuses_bad_tokens_overflow_and_a_missing_workspace() {
    let Some(gpu) = gpu_or_skip("prefill_refuses_bad_tokens_overflow_and_a_missing_workspace")
    else {
        return;
    };
    let cfg = tiny_config();
    let synth = || {
        WeightSource::Synthetic(SyntheticSpec {
            kind: WeightKind::Fp16,
            seed: 1,
        })
    };
    let mut e = GpuEngine::new(&gpu, &cfg, synth(), EngineOptions::new(8)).unwrap();
    let err = e
        .prefill(&[1, 320], PrefillLogits::None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("vocab_size 320"), "{err}");
    let err = e.prefill(&[], PrefillLogits::None).unwrap_err().to_string();
    assert!(err.contains("needs at least one token"), "{err}");
    e.prefill(&[1, 2, 3, 4, 5], PrefillLogits::None).unwrap();
    let err = e
        .prefill(&[1, 2, 3, 4], PrefillLogits::None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("exceed the KV cache"), "{err}");
    // Continuing a prefill from position 5 fits exactly.
    e.prefill(&[6, 7, 8], PrefillLogits::None).unwrap();
    assert_eq!(e.position(), 8);
    e.check_state().unwrap();
    let mut o = EngineOptions::new(8);
    o.prefill_chunk = 0;
    let mut e = GpuEngine::new(&gpu, &cfg, synth(), o).unwrap();
    let err = e
        .prefill(&[1], PrefillLogits::None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("prefill_chunk 0"), "{err}");
    // generate falls back to the token-by-token prefill.
    assert_eq!(e.generate(&[1, 2, 3], 2, false).unwrap().len(), 2);
    assert_eq!(e.vram().unwrap().prefill_bytes, 0);
}
