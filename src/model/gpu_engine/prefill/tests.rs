//! CPU tests of the prefill: chunking and row tiles, the int4 path choice, the workspace sizes,
//! and the CPU mirrors of the repack and attention kernels (emulate.rs) against references.
//! The GPU runs of the prefill are in tests/gpu_decode.rs and the tiny check (`lab decode --backend
//! gpu --model tiny-check`).

use super::*;
use crate::kernels::gemm_layout;
use rand::{rngs::StdRng, RngExt, SeedableRng};

fn shape(k: usize, n: usize, group: usize, g_idx: bool, perm: bool) -> LayerShape {
    LayerShape {
        k,
        n,
        group_size: group,
        g_idx,
        perm,
        bias: false,
        symmetric: false,
    }
}

#[test]
fn chunks_cover_the_prompt_in_order_from_the_start_position() {
    assert_eq!(chunks(0, 5, 512), vec![(0, 0..5)]);
    assert_eq!(
        chunks(7, 1100, 512),
        vec![(7, 0..512), (519, 512..1024), (1031, 1024..1100)]
    );
    for (start, len, chunk) in [(0, 2048, 512), (3, 1, 4), (0, 13, 5), (10, 64, 64)] {
        let c = chunks(start, len, chunk);
        assert_eq!(c.iter().map(|(_, r)| r.len()).sum::<usize>(), len);
        for w in c.windows(2) {
            assert_eq!(w[0].1.end, w[1].1.start);
            assert_eq!(w[1].0 - w[0].0, w[0].1.len(), "positions advance by rows");
        }
        assert!(c
            .iter()
            .all(|(p, r)| r.len() <= chunk && *p == start + r.start));
    }
}

#[test]
fn row_tiles_stay_in_the_gemm_batch_range() {
    assert_eq!(row_tiles(1, 64), vec![0..1]);
    assert_eq!(row_tiles(65, 64), vec![0..63, 63..65]);
    assert_eq!(row_tiles(129, 64), vec![0..64, 64..127, 127..129]);
    for m in 1..=600 {
        let t = row_tiles(m, GEMM_ROWS);
        assert_eq!(t.first().unwrap().start, 0);
        assert_eq!(t.last().unwrap().end, m);
        for w in t.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        for r in &t {
            assert!(r.len() <= 64, "m {m}: {r:?}");
            assert!(r.len() >= 2 || m == 1, "m {m}: a 1-row GEMM tile {r:?}");
        }
    }
}

#[test]
fn int4_paths_follow_the_gemm_familys_limits() {
    let s = shape(4096, 12288, 128, false, true);
    assert_eq!(int4_path(PrefillInt4::Auto, &s, 90, 64), Int4Path::GemmV2);
    assert_eq!(int4_path(PrefillInt4::Auto, &s, 75, 64), Int4Path::GemmV1);
    assert_eq!(int4_path(PrefillInt4::GemmV1, &s, 90, 64), Int4Path::GemmV1);
    assert_eq!(int4_path(PrefillInt4::GemmV2, &s, 75, 64), Int4Path::GemmV1);
    assert!(matches!(
        int4_path(PrefillInt4::Auto, &s, 70, 64),
        Int4Path::Rows(_)
    ));
    assert!(matches!(
        int4_path(PrefillInt4::RowGemv, &s, 90, 64),
        Int4Path::Rows(_)
    ));
    // Uneven act-order groups (a sorted g_idx kept) and unsupported group sizes: per row.
    match int4_path(
        PrefillInt4::Auto,
        &shape(4096, 4096, 128, true, true),
        90,
        64,
    ) {
        Int4Path::Rows(why) => assert!(why.contains("unequal"), "{why}"),
        p => panic!("{p:?}"),
    }
    assert!(matches!(
        int4_path(
            PrefillInt4::Auto,
            &shape(4096, 4096, 256, false, false),
            90,
            64
        ),
        Int4Path::Rows(_)
    ));
    // Per-channel (group = K) is served.
    assert_eq!(
        int4_path(
            PrefillInt4::Auto,
            &shape(11008, 4096, 11008, false, false),
            90,
            64
        ),
        Int4Path::GemmV2
    );
    // Every linear of the tiny check model goes through v2 on an H100, so the GPU check
    // exercises the GEMM path, not the per-row fallback.
    let cfg = crate::model::gpu_check::tiny_config();
    let (h, i, kv) = (cfg.hidden_size, cfg.intermediate_size, 32);
    for (k, n) in [(h, h + 2 * kv), (h, h), (h, 2 * i), (i, h)] {
        for g in [32, 64, k] {
            assert_eq!(
                int4_path(PrefillInt4::Auto, &shape(k, n, g, false, true), 90, 64),
                Int4Path::GemmV2,
                "{k} x {n} g{g}"
            );
        }
    }
}

#[test]
fn prefill_workspace_bytes_of_vicuna_7b_at_512_rows() {
    let cfg = ModelConfig::vicuna_7b();
    // GEMM N up to 22016 (gate_up), largest v2 linear gate_up: 4096/32 * 128 * 22016/32 words.
    let words = gemm_layout::prepared_words(4096, 22016);
    assert_eq!(words, 128 * 128 * 688);
    let s = PrefillSizes::new(&cfg, 512, 22016, words, 0);
    let want = 512 * 4 // tokens
        + 512 * 4096 * 4 // resid
        + 512 * 4096 * 2 // x16
        + 512 * 12288 * 2 // qkv
        + 512 * 4096 * 2 // delta
        + 512 * 22016 * 2 // gate_up
        + 512 * 11008 * 2 // act
        + 64 * 22016 * 4 // split-K
        + words * 4; // repack: 45 MB, = the int4 codes of gate_up
    assert_eq!(s.bytes(), want as u64); // both scratch parts are multiples of 256 B here
    assert_eq!(words * 4, 4096 * 22016 / 2);
    // ~115 MB in all, linear in the chunk apart from the split-K and repack scratch.
    assert!(
        (110e6..120e6).contains(&(s.bytes() as f64)),
        "{}",
        s.bytes()
    );
    let s2 = PrefillSizes::new(&cfg, 1024, 22016, words, 0);
    let per_row = (4 + 4096 * 4 + (4096 * 2 + 12288 + 22016 + 11008) * 2) as u64;
    assert_eq!(s2.bytes() - s.bytes(), 512 * per_row);
    // An unfused slot adds 64 rows of its width.
    assert_eq!(
        PrefillSizes::new(&cfg, 512, 22016, words, 11008).bytes() - s.bytes(),
        64 * 11008 * 2
    );
}

#[test]
fn prefill_plan_of_a_checkpoints_shapes_equals_the_plan_of_its_laid_out_weights() {
    // `lab plan` sizes the prefill from `checkpoint_int4_layer(cfg, ..)`; the engine from the
    // uploaded layers. For random checkpoints laid out by the upload's own code (q|k|v and
    // gate|up fused, act-order rows sorted with a permutation) both must give the same shapes
    // and so the same workspace, on every path (v2 on sm_90, v1 on sm_75, per row for g16).
    use crate::model::gpu_layout::{layout_layer, LaidOutLinear};
    use crate::model::gpu_weights::{HostLlama, WeightKind};
    use crate::model::layer_source::linear_names;
    let cfg = crate::model::gpu_check::tiny_config();
    let names = linear_names(&cfg);
    for (group, act_order, sym) in [
        (32, false, false),
        (32, true, false),
        (64, true, true),
        (-1, false, true),
        (16, true, false),
    ] {
        let kind = WeightKind::Int4 {
            group,
            act_order,
            sym,
        };
        let w = HostLlama::random(&cfg, 11, kind).unwrap();
        let laid = layout_layer(0, &w.layers[0], &names).unwrap();
        assert!(laid.fused(), "{kind:?}");
        let from_layout: Vec<(LayerShape, bool)> = laid
            .linears()
            .map(|l| match l {
                LaidOutLinear::Int4(q) => (layer_shape(q), false),
                LaidOutLinear::F16 { .. } => panic!("{kind:?}: an fp16 linear"),
            })
            .collect();
        let planned = checkpoint_int4_layer(&cfg, group, act_order);
        let key = |v: &[(LayerShape, bool)]| -> Vec<_> {
            v.iter()
                .map(|(s, u)| (s.k, s.n, s.group_size, s.g_idx, s.perm, *u))
                .collect()
        };
        assert_eq!(key(&planned), key(&from_layout), "{kind:?}");
        for sm in [75, 90] {
            for chunk in [1, 7, 512] {
                let a = PrefillPlan::new(&cfg, chunk, PrefillInt4::Auto, sm, planned.clone());
                let b = PrefillPlan::new(&cfg, chunk, PrefillInt4::Auto, sm, from_layout.clone());
                assert_eq!(a, b, "{kind:?} sm_{sm} chunk {chunk}");
                let p = a.unwrap();
                // A 1-row chunk is the decode GEMV: no GEMM kernel, no GEMM scratch.
                let gemm = group != 16 && chunk >= 2;
                assert_eq!(
                    p.gemm_v2,
                    gemm && sm >= 80,
                    "{kind:?} sm_{sm} chunk {chunk}"
                );
                assert_eq!(p.gemm_v1, gemm && sm < 80, "{kind:?} sm_{sm} chunk {chunk}");
                // Auto dequantizes from 128 (act-order) / 256 rows: only the 512-row chunk.
                assert_eq!(p.dequant, chunk == 512, "{kind:?} sm_{sm} chunk {chunk}");
            }
        }
    }
    // Chunk 0: no prefill at all (not a zero-row one with GEMM scratch).
    let shapes = checkpoint_int4_layer(&cfg, 32, false);
    assert_eq!(
        PrefillPlan::new(&cfg, 0, PrefillInt4::Auto, 90, shapes.clone()),
        None
    );
    assert_eq!(PrefillPlan::bytes_or_zero(None), 0);
    // gemm_v2 alone needs the repack; sm_75's gemm_v1 allocates the same minus it.
    let (v2, v1) = (
        PrefillPlan::new(&cfg, 64, PrefillInt4::Auto, 90, shapes.clone()).unwrap(),
        PrefillPlan::new(&cfg, 64, PrefillInt4::Auto, 75, shapes).unwrap(),
    );
    assert_eq!(v1.sizes.repack, 0);
    assert_eq!(
        v2.sizes.bytes() - v1.sizes.bytes(),
        4 * gemm_layout::prepared_words(64, 2 * 192) as u64
    );
}

#[test]
fn attention_shared_memory_fits_48_kb_for_every_head_dim() {
    assert_eq!(attn_smem_bytes(128), 22848);
    // prefill.cu's layout: q [QT][hd] | K [KT][hd + 2] | V [KT][hd] fp16, then scores [QT][KT]
    // and three [QT] rows f32, from the tile sizes the kernel and the host share (abi.h).
    let (qt, kt) = (
        abi::LAB_LLAMA_PREFILL_ATTN_QT as usize,
        abi::LAB_LLAMA_PREFILL_ATTN_KT as usize,
    );
    for hd in [8, 16, 32, 64, 128, 256] {
        assert!(attn_smem_bytes(hd) <= 48 * 1024, "hd {hd}");
        let v_at = 2 * (qt * hd + kt * (hd + 2));
        let scores_at = v_at + 2 * kt * hd;
        // V tile and scores start 16-byte aligned (uint4 stores, then f32), and the total is
        // what the host asks for.
        assert_eq!((v_at % 16, scores_at % 16), (0, 0), "hd {hd}");
        assert_eq!(
            scores_at + 4 * (qt * kt + 3 * qt),
            attn_smem_bytes(hd),
            "hd {hd}"
        );
    }
}

#[test]
fn repack_emulation_equals_the_fragment_layout() {
    let mut rng = StdRng::seed_from_u64(3);
    for (k, n) in [(64, 128), (192, 64), (72, 40), (256, 384), (8, 8)] {
        let canon: Vec<u32> = (0..k / 8 * n).map(|_| rng.random::<u32>()).collect();
        let code = |r: usize, c: usize| (canon[(r / 8) * n + c] >> (4 * (r % 8))) & 0xF;
        let want = gemm_layout::to_fragment_order(k, n, code).unwrap();
        assert_eq!(emulate::repack_v2(&canon, k, n), want, "{k} x {n}");
    }
}

fn round16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// f64 causal attention: query row r at position pos0 + r sees keys 0 ..= pos0 + r.
fn naive(a: emulate::Attn, qkv: &[f32], kc: &[f32], vc: &[f32]) -> Vec<f64> {
    let (hd, kv_dim) = (a.hd, a.kv_heads * a.hd);
    let row_w = a.heads * hd + 2 * kv_dim;
    let mut out = vec![0f64; a.m * a.heads * hd];
    for r in 0..a.m {
        for h in 0..a.heads {
            let kh = h / (a.heads / a.kv_heads);
            let q = &qkv[r * row_w + h * hd..][..hd];
            let len = a.pos0 + r + 1;
            let s: Vec<f64> = (0..len)
                .map(|p| {
                    let k = &kc[p * kv_dim + kh * hd..][..hd];
                    q.iter()
                        .zip(k)
                        .map(|(x, y)| *x as f64 * *y as f64)
                        .sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|v| (v - mx).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..hd {
                out[r * a.heads * hd + h * hd + d] = (0..len)
                    .map(|p| e[p] / z * vc[p * kv_dim + kh * hd + d] as f64)
                    .sum();
            }
        }
    }
    out
}

#[test]
fn prefill_attention_emulation_is_causal_softmax_attention() {
    let mut rng = StdRng::seed_from_u64(11);
    for (m, pos0, heads, kvh, hd) in [
        (1, 0, 4, 2, 16),
        (12, 0, 4, 2, 16),
        (21, 37, 4, 2, 16),
        (40, 0, 2, 2, 128),
        (17, 100, 4, 1, 32),
    ] {
        let a = emulate::Attn {
            m,
            pos0,
            heads,
            kv_heads: kvh,
            hd,
        };
        let kv_dim = kvh * hd;
        let row_w = heads * hd + 2 * kv_dim;
        let len = pos0 + m;
        // Scores of a few units (3 / sqrt(hd) scaled dot products): a peaked softmax, like
        // real attention, so a wrong mask or a missed rescale is far outside rounding.
        let mut fill = |n: usize, s: f32| -> Vec<f32> {
            (0..n).map(|_| round16(rng.random_range(-s..s))).collect()
        };
        let qkv = fill(m * row_w, 3.0);
        let kc = fill(len * kv_dim, 3.0);
        let vc = fill(len * kv_dim, 1.0);
        let got = emulate::prefill_attn(a, &qkv, &kc, &vc);
        let want = naive(a, &qkv, &kc, &vc);
        assert!(got.iter().all(|x| x.is_finite()));
        let rms = (want.iter().map(|v| v * v).sum::<f64>() / want.len() as f64).sqrt();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= 1e-4 * rms + 1e-4 * w.abs(),
                "m {m} pos0 {pos0} hd {hd}: element {i} got {g} want {w}"
            );
        }
        // Causality: changing a key after the first query's position leaves row 0 alone.
        if m > 1 {
            let mut kc2 = kc.clone();
            for x in &mut kc2[(pos0 + 1) * kv_dim..] {
                *x = -*x;
            }
            let got2 = emulate::prefill_attn(a, &qkv, &kc2, &vc);
            assert_eq!(got[..heads * hd], got2[..heads * hd]);
            assert_ne!(got[heads * hd..], got2[heads * hd..]);
        }
    }
}

#[test]
fn dequant_prefill_serves_every_layout_and_auto_switches_to_it_at_the_crossover() {
    // Every layout dequantizes (act-order rows go back to their checkpoint rows; a kept g_idx is
    // read by the kernel), on any device with cuBLAS, for every chunk of 2 rows or more.
    let plain = shape(4096, 12288, 128, false, false);
    let act = shape(4096, 12288, 128, false, true);
    let uneven = shape(4096, 4096, 128, true, true);
    for s in [
        plain,
        act,
        uneven,
        shape(4096, 4096, 4096, false, false),
        shape(4096, 4096, 16, false, false),
    ] {
        for sm in [75, 90] {
            assert_eq!(
                int4_path(PrefillInt4::Dequant, &s, sm, 2),
                Int4Path::Dequant
            );
            assert_eq!(
                int4_path(PrefillInt4::Dequant, &s, sm, 512),
                Int4Path::Dequant
            );
        }
        // One row is always the decode GEMV (0.5 B per weight, a dequant moves 4.5).
        for c in [PrefillInt4::Dequant, PrefillInt4::Auto, PrefillInt4::GemmV2] {
            assert!(matches!(int4_path(c, &s, 90, 1), Int4Path::Rows(_)));
        }
    }
    // Auto: the GEMM family below the crossover, the dequant from it (act-order earlier).
    assert_eq!(DEQUANT_MIN_ROWS, 256);
    assert_eq!(DEQUANT_MIN_ROWS_ACT_ORDER, 128);
    let auto = |s: &LayerShape, rows| int4_path(PrefillInt4::Auto, s, 90, rows);
    assert_eq!(auto(&plain, 255), Int4Path::GemmV2);
    assert_eq!(auto(&plain, 256), Int4Path::Dequant);
    assert_eq!(auto(&act, 127), Int4Path::GemmV2);
    assert_eq!(auto(&act, 128), Int4Path::Dequant);
    assert!(matches!(auto(&uneven, 127), Int4Path::Rows(_)));
    assert_eq!(auto(&uneven, 128), Int4Path::Dequant);
    // v2 / v1 never dequantize.
    assert_eq!(
        int4_path(PrefillInt4::GemmV2, &plain, 90, 512),
        Int4Path::GemmV2
    );
    assert_eq!(
        int4_path(PrefillInt4::GemmV1, &act, 90, 512),
        Int4Path::GemmV1
    );
    // The runs the planner and the reports see.
    assert_eq!(
        paths_by_rows(PrefillInt4::Auto, &plain, 90, 512),
        vec![(2..=255, Int4Path::GemmV2), (256..=512, Int4Path::Dequant)]
    );
    assert_eq!(
        describe_paths(&paths_by_rows(PrefillInt4::Auto, &act, 90, 512)),
        "GemmV2 (2-127 rows), Dequant (128-512 rows)"
    );
    assert_eq!(
        paths_by_rows(PrefillInt4::Auto, &plain, 90, 200),
        vec![(2..=200, Int4Path::GemmV2)]
    );
    assert_eq!(
        paths_by_rows(PrefillInt4::Auto, &plain, 90, 256),
        vec![(2..=255, Int4Path::GemmV2), (256..=256, Int4Path::Dequant)]
    );
    assert_eq!(
        paths_by_rows(PrefillInt4::Dequant, &act, 90, 512),
        vec![(2..=512, Int4Path::Dequant)]
    );
    assert!(paths_by_rows(PrefillInt4::Auto, &plain, 90, 1).is_empty());
    // Every (rows, path) run agrees with int4_path at every row count.
    for c in [PrefillInt4::Auto, PrefillInt4::Dequant, PrefillInt4::GemmV1] {
        for s in [plain, act, uneven] {
            for chunk in [2, 127, 128, 255, 256, 300] {
                let runs = paths_by_rows(c, &s, 90, chunk);
                let covered: usize = runs.iter().map(|(r, _)| r.clone().count()).sum();
                assert_eq!(covered, chunk - 1, "{c:?} chunk {chunk}");
                for (r, p) in runs {
                    assert!(
                        r.clone().all(|m| int4_path(c, &s, 90, m) == p),
                        "{c:?} {r:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_gemm_scratch_and_the_dequant_w_share_one_allocation() {
    let cfg = ModelConfig::vicuna_7b();
    let base = PrefillSizes::new(&cfg, 512, 0, 0, 0).bytes();
    for act_order in [false, true] {
        let layer = checkpoint_int4_layer(&cfg, 128, act_order);
        let plan = |c| PrefillPlan::new(&cfg, 512, c, 90, layer.clone()).unwrap();
        let (auto, v2, deq) = (
            plan(PrefillInt4::Auto),
            plan(PrefillInt4::GemmV2),
            plan(PrefillInt4::Dequant),
        );
        // Dequant alone: the widest fp16 column slice (gate|up, 4096 x 22016, in 3 slices of
        // 7344 columns: 60 MB instead of 180 MB whole).
        assert!(deq.dequant && !deq.gemm_v1 && !deq.gemm_v2);
        assert_eq!(deq.sizes.dequant, 4096 * 7344);
        assert_eq!(deq.sizes.bytes() - base, 2 * 4096 * 7344);
        // v2 alone: split-K + repack, no dequant.
        assert!(!v2.dequant && v2.gemm_v2 && v2.sizes.dequant == 0);
        // Auto holds both paths in the larger of the two, not their sum.
        assert!(auto.dequant && auto.gemm_v2);
        assert_eq!(auto.sizes.scratch_bytes(), deq.sizes.scratch_bytes());
        assert!(auto.sizes.scratch_bytes() > v2.sizes.scratch_bytes());
        assert_eq!(auto.sizes.bytes() - base, 2 * 4096 * 7344);
    }
    // Offsets: the GEMM parts side by side from 0, 256-byte aligned; the dequant W from 0.
    let mut s = PrefillSizes::new(&cfg, 64, 100, 37, 3);
    s.dequant = 5;
    assert_eq!(s.offset(ScratchPart::GemmWs), 0);
    assert_eq!(s.offset(ScratchPart::Dequant), 0);
    assert_eq!(s.offset(ScratchPart::Repack), 64 * 100 * 4); // 25600 = 100 x 256
    assert_eq!(s.offset(ScratchPart::SlotY), 25600 + 256);
    assert_eq!(s.scratch_bytes(), 25600 + 256 + 512);
    assert_eq!(s.elems(ScratchPart::SlotY), 64 * 3);
    s.dequant = 20000;
    assert_eq!(s.scratch_bytes(), 40192); // 40000 rounded up to 256
}

#[test]
fn dequant_emulation_writes_act_order_rows_back_to_their_checkpoint_rows() {
    // lab_dequant_f16_v1's index math on the layer as the engine holds it (rows sorted by
    // group, perm) gives exactly the fp16 rounding of the checkpoint's W: s x (q - z) is exact
    // in f32 (an fp16 scale times a 5-bit integer), so the only rounding is the store.
    use crate::gptq::{act_order_g_idx, quantize_rtn, reorder_by_group};
    use rand::seq::SliceRandom;
    let mut rng = StdRng::seed_from_u64(5);
    for (k, n, g, act, sym) in [
        (256, 64, 32, true, false),
        (256, 72, 64, true, true),
        (128, 16, 128, false, false),
        (96, 24, 32, true, false),
    ] {
        let w: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut order: Vec<usize> = (0..k).collect();
        order.shuffle(&mut rng);
        let g_idx = act.then(|| act_order_g_idx(&order, g));
        let l = quantize_rtn(&w, k, n, g as i32, sym, g_idx).unwrap();
        let want: Vec<f16> = crate::reference::dequantize(&l)
            .into_iter()
            .map(f16::from_f64)
            .collect();
        let r = reorder_by_group(&l).unwrap();
        let perm = act.then_some(r.perm.as_slice());
        assert_eq!(emulate::dequant_f16(&r.layer, perm), want, "{k}x{n} g{g}");
        // Groups of unequal size (an act-order checkpoint whose g_idx is not GPTQ's equal split):
        // the reorder keeps the sorted g_idx, which the kernel then reads per row.
        if act {
            let uneven: Vec<i32> = (0..k)
                .map(|i| ((i * 7 % k) % 5).min(k / g - 1) as i32)
                .collect();
            let lu = quantize_rtn(&w, k, n, g as i32, sym, Some(uneven)).unwrap();
            let ru = reorder_by_group(&lu).unwrap();
            assert!(
                ru.layer.g_idx.is_some(),
                "{k}x{n} g{g}: groups should stay uneven"
            );
            let want_u: Vec<f16> = crate::reference::dequantize(&lu)
                .into_iter()
                .map(f16::from_f64)
                .collect();
            assert_eq!(
                emulate::dequant_f16(&ru.layer, Some(&ru.perm)),
                want_u,
                "{k}x{n} g{g} uneven"
            );
        }
        if act {
            // Without the scatter the rows stay sorted: the bug the perm pointer fixes.
            assert_ne!(emulate::dequant_f16(&r.layer, None), want, "{k}x{n} g{g}");
        }
        // Column slices (the prefill's sliced dequant): each slice is those columns of W.
        for width in [8, 16, 24] {
            for cols in (DequantSlices {
                count: n.div_ceil(width),
                width,
            })
            .ranges(n)
            {
                let got = emulate::dequant_f16_cols(&r.layer, perm, cols.clone());
                for row in 0..k {
                    assert_eq!(
                        &got[row * cols.len()..(row + 1) * cols.len()],
                        &want[row * n + cols.start..row * n + cols.end],
                        "{k}x{n} g{g} columns {cols:?} row {row}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_smaller_slice_budget_is_what_the_plan_sizes_and_records() {
    // The GPU long-prompt test lowers the budget to run many slices on a tiny model: the plan
    // must size the scratch for those slices and carry the budget to the engine's loop.
    let cfg = ModelConfig::vicuna_7b();
    let layer = checkpoint_int4_layer(&cfg, 128, false);
    let budget = 1 << 20;
    let p = PrefillPlan::with_slices(&cfg, 512, PrefillInt4::Dequant, 90, layer.clone(), budget)
        .unwrap();
    let widest = layer
        .iter()
        .map(|(s, _)| s.k * dequant_slices_within(s.k, s.n, budget).width)
        .max()
        .unwrap();
    assert_eq!(p.sizes.dequant, widest);
    assert!(widest <= budget + 8 * 11008, "{widest}");
    assert_eq!(p.sizes.dequant_slice_elems, budget);
    // The default path records the default.
    let d = PrefillPlan::new(&cfg, 512, PrefillInt4::Dequant, 90, layer).unwrap();
    assert_eq!(d.sizes.dequant_slice_elems, DEQUANT_SLICE_ELEMS);
    assert!(d.sizes.dequant > p.sizes.dequant);
}

#[test]
fn dequant_slices_cover_every_column_once_within_the_budget() {
    // Every linear of a 7B / 13B / 33B layer as the engine holds it (fused q|k|v and gate|up),
    // and odd shapes.
    let decode = [
        ModelConfig::vicuna_7b(),
        ModelConfig::vicuna_13b(),
        ModelConfig::vicuna_33b(),
    ]
    .into_iter()
    .flat_map(|cfg| checkpoint_int4_layer(&cfg, 128, false))
    .map(|(s, _)| (s.k, s.n));
    for (k, n) in decode.chain([(64, 16), (8, 8), (1 << 16, 1024)]) {
        let s = dequant_slices(k, n);
        assert_eq!(s.width % 8, 0, "{k}x{n}: {s:?}");
        let ranges: Vec<_> = s.ranges(n).collect();
        assert_eq!(ranges.len(), s.count);
        assert_eq!(ranges[0].start, 0);
        assert_eq!(ranges.last().unwrap().end, n, "{k}x{n}: {s:?}");
        assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
        assert!(ranges.iter().all(|r| !r.is_empty()), "{k}x{n}: {s:?}");
        // Within the budget, but for rounding the width up to 8 columns.
        assert!(k * s.width <= DEQUANT_SLICE_ELEMS + 8 * k, "{k}x{n}: {s:?}");
        // No more slices than the budget needs.
        assert!(
            s.count <= (k * n).div_ceil(DEQUANT_SLICE_ELEMS).max(1),
            "{k}x{n}"
        );
    }
    // 13B: gate|up in 5 slices, down in 3; 7B: gate|up in 3, o in 1.
    assert_eq!(dequant_slices(5120, 27648).count, 5);
    assert_eq!(dequant_slices(13824, 5120).count, 3);
    assert_eq!(dequant_slices(4096, 22016).count, 3);
    assert_eq!(dequant_slices(4096, 4096).count, 1);
}

#[test]
fn auto_keeps_the_gemm_plan_where_the_dequant_does_not_fit() {
    let need = 400 << 20;
    // Room for the dequant plan and the headroom: auto stays auto.
    assert_eq!(
        prefill_choice_for_memory(PrefillInt4::Auto, need, need + DEQUANT_HEADROOM, 90),
        PrefillInt4::Auto
    );
    // One byte short: the GEMM family's smaller plan, named for what runs (v1 on sm_75).
    for (sm, family) in [
        (90, PrefillInt4::GemmV2),
        (80, PrefillInt4::GemmV2),
        (75, PrefillInt4::GemmV1),
    ] {
        assert_eq!(
            prefill_choice_for_memory(PrefillInt4::Auto, need, need + DEQUANT_HEADROOM - 1, sm),
            family,
            "sm_{sm}"
        );
    }
    // An explicit choice is the user's, whatever the memory.
    for c in [
        PrefillInt4::Dequant,
        PrefillInt4::GemmV1,
        PrefillInt4::RowGemv,
    ] {
        assert_eq!(prefill_choice_for_memory(c, need, 0, 90), c);
    }
}
