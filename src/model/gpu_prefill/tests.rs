//! CPU tests of the prefill: chunking and row tiles, the int4 path choice, the workspace sizes,
//! and the CPU mirrors of the repack and attention kernels (emulate.rs) against references.
//! The GPU runs of the prefill are in tests/gpu_decode.rs and `lab check-gpu`.

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
    assert_eq!(int4_path(PrefillInt4::Auto, &s, 90), Int4Path::GemmV2);
    assert_eq!(int4_path(PrefillInt4::Auto, &s, 75), Int4Path::GemmV1);
    assert_eq!(int4_path(PrefillInt4::GemmV1, &s, 90), Int4Path::GemmV1);
    assert_eq!(int4_path(PrefillInt4::GemmV2, &s, 75), Int4Path::GemmV1);
    assert!(matches!(
        int4_path(PrefillInt4::Auto, &s, 70),
        Int4Path::Rows(_)
    ));
    assert!(matches!(
        int4_path(PrefillInt4::RowGemv, &s, 90),
        Int4Path::Rows(_)
    ));
    // Uneven act-order groups (a sorted g_idx kept) and unsupported group sizes: per row.
    match int4_path(PrefillInt4::Auto, &shape(4096, 4096, 128, true, true), 90) {
        Int4Path::Rows(why) => assert!(why.contains("unequal"), "{why}"),
        p => panic!("{p:?}"),
    }
    assert!(matches!(
        int4_path(PrefillInt4::Auto, &shape(4096, 4096, 256, false, false), 90),
        Int4Path::Rows(_)
    ));
    // Per-channel (group = K) is served.
    assert_eq!(
        int4_path(
            PrefillInt4::Auto,
            &shape(11008, 4096, 11008, false, false),
            90
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
                int4_path(PrefillInt4::Auto, &shape(k, n, g, false, true), 90),
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
    assert_eq!(s.bytes(), want as u64);
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
                assert_eq!(p.gemm_v2, group != 16 && sm >= 80, "{kind:?} sm_{sm}");
                assert_eq!(p.gemm_v1, group != 16 && sm < 80, "{kind:?} sm_{sm}");
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
    for hd in [8, 16, 32, 64, 128, 256] {
        assert!(attn_smem_bytes(hd) <= 48 * 1024, "hd {hd}");
        // V tile and scores start 16-byte aligned (uint4 stores, then f32).
        assert_eq!((2 * (16 * hd + 32 * (hd + 2))) % 16, 0);
        assert_eq!((2 * (16 * hd + 32 * (hd + 2) + 32 * hd)) % 16, 0);
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
fn dequant_prefill_serves_plain_int4_and_leaves_act_order_to_the_gemm() {
    // Plain int4 (any group size, per-channel, even a kept g_idx: the dequant kernel reads it)
    // dequantizes; act-order (x would need the permutation) falls back as auto would.
    for s in [
        shape(4096, 12288, 128, false, false),
        shape(4096, 4096, 4096, false, false),
        shape(4096, 4096, 16, false, false),
    ] {
        assert_eq!(int4_path(PrefillInt4::Dequant, &s, 90), Int4Path::Dequant);
        assert_eq!(int4_path(PrefillInt4::Dequant, &s, 75), Int4Path::Dequant);
    }
    let act = shape(4096, 12288, 128, false, true);
    assert_eq!(int4_path(PrefillInt4::Dequant, &act, 90), Int4Path::GemmV2);
    assert_eq!(int4_path(PrefillInt4::Dequant, &act, 75), Int4Path::GemmV1);
    // 7B at 512 rows: the scratch holds the largest linear (gate|up, 4096 x 22016 fp16 =
    // 180 MB) and nothing of the GEMM family (no split-K, repack or slot rows).
    let cfg = ModelConfig::vicuna_7b();
    let plain = checkpoint_int4_layer(&cfg, 128, false);
    let p = PrefillPlan::new(&cfg, 512, PrefillInt4::Dequant, 90, plain.clone()).unwrap();
    assert!(p.dequant && !p.gemm_v1 && !p.gemm_v2);
    assert_eq!(p.sizes.dequant, 4096 * 22016);
    let base = PrefillSizes::new(&cfg, 512, 0, 0, 0);
    assert_eq!(p.sizes.bytes() - base.bytes(), 2 * 4096 * 22016);
    // Act-order layers: exactly auto's plan.
    let act = checkpoint_int4_layer(&cfg, 128, true);
    let d = PrefillPlan::new(&cfg, 512, PrefillInt4::Dequant, 90, act.clone()).unwrap();
    let a = PrefillPlan::new(&cfg, 512, PrefillInt4::Auto, 90, act).unwrap();
    assert_eq!((d.sizes, d.gemm_v2, d.dequant), (a.sizes, a.gemm_v2, false));
    // Auto never takes the dequant path.
    let auto = PrefillPlan::new(&cfg, 512, PrefillInt4::Auto, 90, plain).unwrap();
    assert!(!auto.dequant && auto.sizes.dequant == 0);
}
