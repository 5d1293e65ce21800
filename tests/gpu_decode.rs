//! The GPU decode engine on a real GPU (skips with the reason elsewhere; REQUIRE_GPU=1 makes a
//! skip a failure): op-by-op and end-to-end against the f64 reference on random tiny models of
//! every weight form, against the CPU engine on the tiny fixture checkpoints, CUDA graph vs eager,
//! synthetic weights' byte counts, and bad inputs refused.

use gptq_lab::cuda::gpu_or_skip;
use gptq_lab::model::decode_bench::expected_weights;
use gptq_lab::model::gpu_check::{
    check_checkpoint, check_opts, check_tiny_case, tiny_cases, tiny_config, CHECK_NEW,
    CHECK_PROMPT, FIXTURES,
};
use gptq_lab::model::gpu_engine::{EngineOptions, Fp16Backend, GpuEngine, WeightSource};
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
            check_opts(16, Fp16Backend::Cublas),
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
    assert!(e.set_position(4).is_err());
}
