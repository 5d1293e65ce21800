use super::reference::rope;
use super::*;
use crate::model::gpu_engine::TraceEntry;
use crate::model::gpu_weights::{HostLinear, WeightKind};

#[test]
fn every_linear_of_the_cluster_check_launches_v9_as_a_cluster() {
    // The layer as the engine holds it (q|k|v and gate|up fused; act-order as a permutation):
    // q|k|v, o, gate|up at K = 1024 split in 2, down at K = 2816 in 5.
    use crate::cuda::SmLimits;
    use crate::kernels::launch::{plan, Tunables};
    use crate::model::gpu_engine::checkpoint_int4_layer;
    let cfg = cluster_check_config();
    let v9 = crate::kernels::registry::by_name("gemv_v9_cluster").unwrap();
    for (group, act_order) in [(128, false), (128, true), (32, true)] {
        let layer = checkpoint_int4_layer(&cfg, group, act_order);
        for ((s, _), slices) in layer.iter().zip([2, 2, 2, 5]) {
            let p = plan(v9, s, 1, s.k, s.n, &Tunables::new(), SmLimits::H100).unwrap();
            assert_eq!(
                (p.cluster_y, p.grid.1),
                (slices, slices),
                "{}x{} g{group}",
                s.k,
                s.n
            );
        }
    }
}

#[test]
fn tiny_act_order_cases_expect_the_linears_their_weights_make_act_order() {
    // H100 run 16: tiny-check at g64 has K = 64 for q|k|v and gate|up, one group, so only
    // down (K = 192, 3 groups) is act-order; the old expectation (3 per layer) failed it.
    let cfg = tiny_config();
    let mut seen = Vec::new();
    for c in tiny_cases() {
        let host = HostLlama::random(&cfg, c.seed, c.kind).unwrap();
        let want = expected_act_order_plain(&c, &host);
        let WeightKind::Int4 {
            group,
            act_order: true,
            ..
        } = c.kind
        else {
            assert_eq!(want, 0, "{}", c.kind.label());
            continue;
        };
        if !c.auto {
            assert_eq!(want, 0, "{} not auto", c.kind.label());
            continue;
        }
        seen.push((group, want));
        // Every counted linear is one the engine's rule takes: a real permutation, and no
        // g_idx left after the reorder (even groups).
        for l in &host.layers {
            for i in [0, 4, 6] {
                let HostLinear::Quant(q) = &l.linears[i] else {
                    panic!("int4 case with an fp16 linear");
                };
                let r = crate::gptq::reorder::reorder_by_group(q).unwrap();
                let moved = r.perm.iter().enumerate().any(|(i, &p)| p as usize != i);
                assert_eq!(moved, q.is_act_order(), "g{group} linear {i}");
                if q.is_act_order() {
                    assert!(
                        r.layer.g_idx.is_none(),
                        "g{group} linear {i}: uneven groups"
                    );
                }
            }
        }
    }
    seen.sort();
    assert_eq!(seen, vec![(32, 6), (64, 2)]);
}

#[test]
fn tiny_cases_run_every_m1_kernel_the_tuner_may_pick() {
    use crate::tune::dispatch::{serves, VARIANTS};
    use crate::tune::schema::ProblemKey;
    let cases = tiny_cases();
    for act_order in [false, true] {
        // Which registry kernels the int4 cases of this act-order run.
        let ran: std::collections::BTreeSet<&str> = cases
            .iter()
            .filter(|c| matches!(c.kind, WeightKind::Int4 { act_order: a, .. } if a == act_order))
            .filter_map(|c| c.int4.map(|r| r.name))
            .collect();
        let key = ProblemKey {
            n: 4096,
            k: 4096,
            group_size: 128,
            act_order,
            batch_bucket: 1,
        };
        let candidates: Vec<&str> = VARIANTS
            .iter()
            .filter(|v| serves(v.name, &key, 90))
            .map(|v| v.name)
            .collect();
        // The candidates the tuner is known to pick on the H100 are among them (so the loop
        // below checks something).
        let known: &[&str] = if act_order {
            &["gemv_v6_pipe"]
        } else {
            &["gemv_v2_vec", "gemv_v6_pipe", "gemv_v10_l2x"]
        };
        for k in known {
            assert!(
                candidates.contains(k),
                "{k} not a candidate: {candidates:?}"
            );
        }
        for name in candidates {
            assert!(
                ran.contains(name),
                "{name} (act-order {act_order}) is a tuner candidate but no tiny case runs it"
            );
        }
    }
}

#[test]
fn worst_scales_by_tolerance_and_flags_nan() {
    let want = [1.0, -2.0, 0.0, 4.0];
    let (i, r) = worst(&[1.0, -2.0, 0.0, 4.0], &want, 1e-3, 1e-3).unwrap();
    assert_eq!(r, 0.0, "{i}");
    let (i, r) = worst(&[1.0, -2.1, 0.0, 4.0], &want, 1e-3, 1e-3).unwrap();
    assert_eq!(i, 1);
    assert!(r > 10.0);
    let (i, r) = worst(&[1.0, -2.0, f32::NAN, 4.0], &want, 1e-3, 1e-3).unwrap();
    assert_eq!((i, r), (2, f64::INFINITY));
    assert!(worst(&[1.0], &want, 1e-3, 1e-3).is_none());
}

#[test]
fn reference_rope_is_a_rotation_of_pairs_i_and_i_plus_half() {
    let mut x = vec![1.0, 0.0, 0.0, 0.0];
    rope(&mut x, 4, 3, 10000.0, 1.0);
    assert!(
        (x[0] - 3f64.cos()).abs() < 1e-12 && (x[2] - 3f64.sin()).abs() < 1e-12,
        "{x:?}"
    );
    assert_eq!((x[1], x[3]), (0.0, 0.0));
    // Linear scaling divides the position: factor 4 at position 12 is plain RoPE at 3.
    let mut y = vec![1.0, 0.0, 0.0, 0.0];
    rope(&mut y, 4, 12, 10000.0, 4.0);
    assert_eq!(x, y);
}

#[test]
fn op_refs_reproduce_an_exact_trace_op_by_op() {
    // Feed op_refs a "trace" made of the reference's own op outputs: every op must agree with
    // itself to rounding, which checks the wiring (inputs of each op taken from the right entry).
    let cfg = tiny_config();
    let host = HostLlama::random(
        &cfg,
        5,
        WeightKind::Int4 {
            group: 32,
            act_order: true,
            sym: false,
        },
    )
    .unwrap();
    let w = RefWeights::new(&host);
    let mut hist_a = vec![(Vec::new(), Vec::new()); cfg.num_hidden_layers];
    let mut hist_b = hist_a.clone();
    let mut rm = RefModel {
        cfg: &cfg,
        w: &w,
        cache: vec![(Vec::new(), Vec::new()); cfg.num_hidden_layers],
    };
    for (pos, tok) in [3u32, 17, 250].into_iter().enumerate() {
        // Build the trace iteratively: each op's reference uses earlier entries only.
        let mut trace: Vec<TraceEntry> = Vec::new();
        let mut prev_len = usize::MAX;
        let mut hist_tmp = hist_a.clone();
        loop {
            hist_tmp.clone_from(&hist_a);
            let refs = op_refs(&cfg, &w, &trace, tok, pos, &mut hist_tmp);
            for (layer, op, v) in &refs {
                if !trace.iter().any(|e| e.layer == *layer && e.op == *op) && !v.is_empty() {
                    trace.push(TraceEntry {
                        layer: *layer,
                        op,
                        values: v.iter().map(|&x| x as f32).collect(),
                    });
                    break;
                }
            }
            if trace.len() == prev_len {
                break;
            }
            prev_len = trace.len();
        }
        hist_a = hist_tmp;
        let refs = op_refs(&cfg, &w, &trace, tok, pos, &mut hist_b);
        assert_eq!(
            refs.len(),
            4 + cfg.num_hidden_layers * 10,
            "every op has a reference"
        );
        for (layer, op, want) in &refs {
            let (i, r) = worst(get(&trace, *layer, op), want, OP_RTOL, OP_ATOL_RMS).unwrap();
            assert!(r < 0.05, "step {pos} layer {layer:?} {op}: {r} at {i}");
        }
        let lg = rm.step(tok);
        let (_, r) = worst(get(&trace, None, "lm_head"), &lg, 1e-4, 1e-4).unwrap();
        assert!(
            r < 1.0,
            "op-by-op chain must equal the independent forward: {r}"
        );
    }
}

/// The f64 reference (RefModel) is the ground truth of every GPU check, and its math (RMSNorm,
/// RoPE, grouped-KV attention, SwiGLU) is written apart from the CPU engine's: here it meets
/// transformers' own logits on the committed fixtures (expected.json: LlamaForCausalLM in fp32,
/// 4 heads over 2 KV heads, act-order, asym and sym, fp16), prompt positions and greedy steps,
/// at the CPU engine's tolerance. A wrong scale or head mapping would fail a GPU run falsely, or
/// pass a kernel making the same mistake; this catches it without a GPU.
#[test]
fn the_f64_reference_matches_transformers_on_the_fixtures() {
    use crate::model::checkpoint::Checkpoint;
    use crate::model::gpu_weights::HostLlama;
    let (atol, rtol) = (1e-4, 1e-4);
    for name in [
        "tiny-fp16",
        "tiny-sym-g32",
        "tiny-asym-act-g32",
        "tiny-sym-act-g64",
        "tiny-asym-gall",
    ] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        let ckpt = Checkpoint::open(&dir).unwrap();
        assert!(ckpt.config.num_key_value_heads < ckpt.config.num_attention_heads);
        let host = HostLlama::from_checkpoint(&ckpt).unwrap();
        let w = RefWeights::new(&host);
        let exp: serde_json::Value = crate::util::read_json(&dir.join("expected.json")).unwrap();
        let rows =
            |v: &serde_json::Value| -> Vec<Vec<f64>> { serde_json::from_value(v.clone()).unwrap() };
        let mut worst = 0f64;
        let mut check = |got: &[f64], want: &[f64], at: String| {
            assert_eq!(got.len(), want.len(), "{name} {at}");
            for (g, x) in got.iter().zip(want) {
                let r = (g - x).abs() / (atol + rtol * x.abs());
                assert!(
                    r <= 1.0,
                    "{name} {at}: {g} vs transformers' {x} ({r:.2}x tolerance)"
                );
                worst = worst.max(r);
            }
        };
        for case in exp["prompts"].as_array().unwrap() {
            let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            let mut rm = RefModel {
                cfg: &ckpt.config,
                w: &w,
                cache: vec![(Vec::new(), Vec::new()); ckpt.config.num_hidden_layers],
            };
            let mut logits = Vec::new();
            for (pos, (&id, want)) in ids.iter().zip(rows(&case["prompt_logits"])).enumerate() {
                logits = rm.step(id);
                check(&logits, &want, format!("prompt position {pos}"));
            }
            // The entry point tests use (reference_last_logits) is this same pass.
            assert_eq!(
                super::reference_last_logits(&ckpt.config, &host, &ids),
                logits,
                "{name}"
            );
            let tokens: Vec<u32> = serde_json::from_value(case["greedy_tokens"].clone()).unwrap();
            for (step, (&t, want)) in tokens.iter().zip(rows(&case["greedy_logits"])).enumerate() {
                check(&logits, &want, format!("greedy step {step}"));
                let best = (0..logits.len())
                    .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
                    .unwrap();
                assert_eq!(best as u32, t, "{name} greedy step {step}");
                logits = rm.step(t);
            }
        }
        eprintln!("{name}: the f64 reference within {worst:.3} of transformers' tolerance");
    }
}

#[test]
fn worst_divides_by_the_tolerance_at_the_element_and_a_nan_reference_fails() {
    // tol = rtol |r| + atol rms(r): at r = 4 of [3, 4] (rms sqrt(12.5) = 3.54), 4e-3 + 3.54e-3.
    let (i, r) = worst(&[3.0, 4.125], &[3.0, 4.0], 1e-3, 1e-3).unwrap();
    assert_eq!(i, 1);
    let want = 0.125 / (1e-3 * 4.0 + 1e-3 * 12.5f64.sqrt());
    assert!((r - want).abs() < 1e-9 * want, "{r} vs {want}");
    // A NaN in the reference makes every tolerance NaN: the ratio is NaN (at index 0), never a
    // pass, and NaN exceeds any limit.
    let (i, r) = worst(&[3.0, 4.0], &[3.0, f64::NAN], 1e-3, 1e-3).unwrap();
    assert!(i == 0 && r.is_nan(), "{i} {r}");
    assert!(exceeds(r, 1.0));
}

#[test]
fn exceeds_counts_nan_as_failing_and_the_reference_argmax_takes_the_first_of_a_tie() {
    assert!(exceeds(f64::NAN, 1.0) && exceeds(1.5, 1.0) && exceeds(f64::INFINITY, 1.0));
    assert!(!exceeds(1.0, 1.0) && !exceeds(0.5, 1.0));
    // The margin is over the runner-up (not the last); a tie picks the lower id, as the
    // sampler's argmax does, with margin 0; one logit has no runner-up.
    assert_eq!(argmax(&[1.0, 5.0, 4.0, -2.0]), (1, 1.0));
    assert_eq!(argmax(&[1.0, 3.0, 3.0]), (1, 0.0));
    assert_eq!(argmax(&[7.0]), (0, f64::INFINITY));
}

#[test]
fn the_expected_permuted_x_count_takes_gate_up_not_o() {
    // The g32 act-order case with its gate and up made plain: per layer q|k|v and down only,
    // while o (same K as gate|up) stays act-order and is never counted.
    let cfg = tiny_config();
    let c = tiny_cases()
        .into_iter()
        .find(|c| {
            c.auto
                && matches!(
                    c.kind,
                    WeightKind::Int4 {
                        group: 32,
                        act_order: true,
                        ..
                    }
                )
        })
        .expect("an auto g32 act-order case");
    let mut host = HostLlama::random(&cfg, c.seed, c.kind).unwrap();
    assert_eq!(
        expected_act_order_plain(&c, &host),
        3 * cfg.num_hidden_layers
    );
    for l in &mut host.layers {
        for i in [4, 5] {
            let HostLinear::Quant(q) = &mut l.linears[i] else {
                panic!("int4 case with an fp16 linear");
            };
            q.g_idx = None;
        }
        let HostLinear::Quant(o) = &l.linears[3] else {
            panic!("int4 case with an fp16 linear");
        };
        assert!(o.is_act_order());
    }
    assert_eq!(
        expected_act_order_plain(&c, &host),
        2 * cfg.num_hidden_layers
    );
}
