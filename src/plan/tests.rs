use super::*;
use crate::kernels::gemm_layout::prepared_words;
use crate::model::gpu_engine::{EngineOptions, PrefillSizes, DEQUANT_HEADROOM, GEMM_ROWS};
use std::collections::BTreeMap;
use std::path::Path;

/// hidden 64, intermediate 128, 2 layers, 4 heads (head_dim 16), vocab 100.
fn small() -> ModelConfig {
    let mut c = ModelConfig::vicuna_7b();
    c.name = "small".into();
    c.hidden_size = 64;
    c.intermediate_size = 128;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 4;
    c.vocab_size = 100;
    c
}

#[test]
fn small_config_bytes_by_hand() {
    let mut s = PlanSpec::new(small(), WeightDtype::Int4, 32, 10);
    s.cuda_context_bytes = 1000;
    let p = s.plan().unwrap();
    let w = &p.weights.parts;
    // Per layer: q,k,v,o 64x64; gate,up 64x128; down 128x64. G = 32.
    // qweight K/8*N*4: 4*(8*64*4) + 2*(8*128*4) + 16*64*4 = 8192 + 8192 + 4096 = 20480; x2 layers.
    assert_eq!(w.qweight, 40960);
    // qzeros ceil(K/32)*N/8*4: 4*(2*8*4) + 2*(2*16*4) + 4*8*4 = 256 + 256 + 128 = 640; x2.
    assert_eq!(w.qzeros, 1280);
    // scales ceil(K/32)*N*2: 4*(2*64*2) + 2*(2*128*2) + 4*64*2 = 1024 + 1024 + 512 = 2560; x2.
    assert_eq!(w.scales, 5120);
    assert_eq!(w.g_idx, 0, "no act-order: g_idx not counted");
    assert_eq!(w.embeddings, 100 * 64 * 2);
    assert_eq!(w.lm_head, 100 * 64 * 2);
    // norms: (2 per layer + final) * 64 * 2 = 5 * 128.
    assert_eq!(w.norms, 640);
    assert_eq!(p.weights_bytes, 40960 + 1280 + 5120 + 12800 + 12800 + 640);
    // KV: 2 (K,V) * 2 layers * 10 positions * 64 * 2 bytes.
    assert_eq!(p.kv_cache_bytes, 5120);
    // workspace per sequence: 4*64*2 + (64+128)*2 (the permuted copies of xn and act) + (64+2*64)*2
    //   + 2*128*2 + 128*2 + 128*2 + 4*10*4 + 2*100*4
    //   = 512 + 384 + 384 + 512 + 256 + 256 + 160 + 800 = 3264; split-K 16 * 1 * max(192, 256) * 4
    //   = 16384.
    assert_eq!(p.workspace_bytes, 3264 + 16384);
    // Prefill: the 512-row default chunk clamped to the 10-row cache. The engine holds q|k|v as
    // one 64 x 192 linear, o 64 x 64, gate|up 64 x 256, down 128 x 64; all g32, so all take
    // gemm_v2 on sm_80+. Activations per row: token i32 4 + f32 residual 64*4
    //   + fp16 (x16 64 + qkv 192 + delta 64 + gate_up 256 + act 128) * 2 = 4 + 256 + 1408 = 1668;
    // split-K f32 [GEMM_ROWS = 64, widest N = 256]; repack of the largest linear, gate|up:
    // 64/32 k-chunks * 128 words * 256/32 n-chunks = 2048 u32.
    assert_eq!(GEMM_ROWS, 64);
    assert_eq!(prepared_words(64, 256), 2048);
    assert_eq!(p.prefill_chunk, 10);
    assert_eq!(p.prefill_bytes, 10 * 1668 + 64 * 256 * 4 + 2048 * 4);
    assert_eq!(p.total_bytes, 73600 + 5120 + 19648 + 90408 + 1000);
    assert!(!p.g_idx_counted && p.g_idx_note.contains("not counted"));

    // Act-order adds K*4 per linear: 4*64*4 + 2*64*4 + 128*4 = 2048 per layer.
    s.act_order = true;
    let a = s.plan().unwrap();
    assert_eq!(a.weights.parts.g_idx, 4096);
    assert_eq!(a.weights_bytes, p.weights_bytes + 4096);
    assert!(a.g_idx_counted);
    // The engine holds act-order layers reordered (a permutation, equal groups): same GEMM path,
    // same prefill workspace.
    assert_eq!(a.prefill_bytes, p.prefill_bytes);
    assert_eq!(a.total_bytes, p.total_bytes + 4096);
}

/// The engine's sizing (`PrefillSizes`) for `cfg` at `rows`, int4 linears fused as it holds a
/// checkpoint: every one on gemm_v2 at g128, the widest N and the largest repack both gate|up
/// [hidden, 2 inter]; fp16: no GEMM scratch.
fn engine_prefill(cfg: &ModelConfig, rows: usize, int4: bool) -> u64 {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let mut s = PrefillSizes::new(cfg, rows, 0, 0, 0);
    if int4 && rows >= 2 {
        // Chunks of 2.. rows: the GEMM family below the auto crossover (256 rows at g128)...
        s = PrefillSizes::new(cfg, rows, 2 * i, prepared_words(h, 2 * i), 0);
        // ...and from it the dequant's fp16 W, one column slice at a time, in the same scratch.
        if rows >= crate::model::gpu_engine::DEQUANT_MIN_ROWS {
            s.dequant = widest_dequant_slice(cfg);
        }
    }
    s.bytes()
}

/// Elements of the largest fp16 column slice the dequant path writes for one layer of `cfg`
/// (fused q|k|v, o, fused gate|up, down; MHA).
fn widest_dequant_slice(cfg: &ModelConfig) -> usize {
    use crate::model::gpu_engine::dequant_slices;
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    [(h, 3 * h), (h, h), (h, 2 * i), (i, h)]
        .into_iter()
        .map(|(k, n)| k * dequant_slices(k, n).width)
        .max()
        .unwrap()
}

#[test]
fn prefill_bytes_are_the_engines_for_vicuna_7b_and_13b() {
    for m in [ModelConfig::vicuna_7b(), ModelConfig::vicuna_13b()] {
        let (h, i) = (m.hidden_size as u64, m.intermediate_size as u64);
        // Per row: i32 token + f32 residual + fp16 x16, qkv (3h, MHA), delta, gate_up, act.
        let acts = 512 * (4 + 4 * h + 2 * (h + 3 * h + h + 2 * i + i));
        // gemm_v2's split-K rows + repack of gate|up (its int4 codes: h * 2i / 2 bytes), and the
        // dequant's largest fp16 column slice share one scratch: the larger one. 7B: the slice
        // (gate|up in 3 slices of 7344 columns, 60 MB) over the GEMM's 51 MB; 13B: the GEMM's 78
        // MB over gate|up's 5 slices of 5536 (57 MB). Whole, gate|up would be 180 / 283 MB.
        let gemm = 64 * 2 * i * 4 + h * 2 * i / 2;
        let slice = 2 * widest_dequant_slice(&m) as u64;
        let scratch = gemm.max(slice);
        assert_eq!(
            scratch,
            if m.hidden_size == 4096 { slice } else { gemm },
            "{}",
            m.name
        );
        let int4 = PlanSpec::new(m.clone(), WeightDtype::Int4, 128, 2048);
        let mut act = int4.clone();
        act.act_order = true;
        let fp16 = PlanSpec::new(m.clone(), WeightDtype::Fp16, 128, 2048);
        let (pi, pa, pf) = (
            int4.plan().unwrap(),
            act.plan().unwrap(),
            fp16.plan().unwrap(),
        );
        assert_eq!(pi.prefill_chunk, 512);
        assert_eq!(
            pi.prefill_bytes,
            engine_prefill(&m, 512, true),
            "{}",
            m.name
        );
        assert_eq!(pi.prefill_bytes, acts + scratch, "{}", m.name);
        assert_eq!(pa.prefill_bytes, pi.prefill_bytes, "{} act-order", m.name);
        assert_eq!(
            pf.prefill_bytes,
            engine_prefill(&m, 512, false),
            "{}",
            m.name
        );
        assert_eq!(pf.prefill_bytes, acts, "{} fp16", m.name);
        // 7B ~123 MB, 13B ~157 MB: the GEMM-only engine's 114 / 157 MB (run 10's record) + 9 / 0
        // MB for the dequant slice (whole fp16 W of gate|up: 244 / 362 MB).
        let want = if m.name == "vicuna-7b" {
            123.3e6
        } else {
            157.0e6
        };
        assert!(
            (pi.prefill_bytes as f64 - want).abs() < 1e6,
            "{}: {}",
            m.name,
            pi.prefill_bytes
        );
    }
}

#[test]
fn the_total_grows_by_the_prefill_workspace_and_the_handle_it_needs() {
    for dtype in [WeightDtype::Int4, WeightDtype::Fp16] {
        let with = PlanSpec::new(ModelConfig::vicuna_13b(), dtype, 128, 2048);
        let mut without = with.clone();
        without.prefill_chunk = 0;
        let (a, b) = (with.plan().unwrap(), without.plan().unwrap());
        assert_eq!((b.prefill_bytes, b.prefill_chunk), (0, 0));
        assert!(a.prefill_bytes > 0);
        // The prefill adds its workspace and, for int4 (auto dequantizes 512-row chunks), the
        // cuBLAS handle an fp16 engine makes anyway.
        let handle = match dtype {
            WeightDtype::Int4 => CUBLAS_BYTES,
            WeightDtype::Fp16 => 0,
        };
        assert_eq!(a.workspace_bytes, b.workspace_bytes + handle);
        let grows = a.prefill_bytes + handle;
        assert_eq!(a.total_bytes, b.total_bytes + grows);
        assert_eq!(
            a.weights_bytes + a.kv_cache_bytes + a.workspace_bytes - handle,
            b.total_bytes - b.cuda_context_bytes
        );
        // The same engine with the GEMM family's prefill: what auto falls back to.
        let mut v2 = with.clone();
        v2.prefill_int4 = PrefillInt4::GemmV2;
        let v2 = v2.plan().unwrap();
        let (mut roomy, mut tight) = (0, 0);
        for (fa, fb) in a.fits.iter().zip(&b.fits) {
            // Where auto's dequant has room (it does on these cards from 12 GiB), the card's free
            // memory shrinks by exactly that growth; else the engine keeps v2's plan, and the
            // card's free memory is what v2's total leaves.
            let mem = fa.usable_bytes;
            let free = if a.total_bytes + DEQUANT_HEADROOM <= mem {
                roomy += 1;
                assert_eq!(fa.free_bytes, fb.free_bytes - grows as i64);
                mem as i64 - a.total_bytes as i64
            } else {
                tight += 1;
                mem as i64 - v2.total_bytes as i64
            };
            assert_eq!(fa.free_bytes, free, "{} GiB", mem >> 30);
            assert_eq!(fa.fits, free >= 0, "{} GiB", mem >> 30);
        }
        // int4 13B takes both branches over the cards (v2 on the small ones); fp16's total is
        // past every card's memory plus the headroom.
        match dtype {
            WeightDtype::Int4 => assert!(roomy > 0 && tight > 0, "{roomy} / {tight}"),
            WeightDtype::Fp16 => assert_eq!(roomy, 0),
        }
        assert_eq!(with.total_at(4096), without.total_at(4096) + grows);
    }
}

#[test]
fn the_prefill_chunk_is_clamped_to_the_cache_as_the_engine_clamps_it() {
    let m = ModelConfig::vicuna_7b();
    for ctx in [0u64, 1, 100, 511, 512, 513, 2048] {
        let p = PlanSpec::new(m.clone(), WeightDtype::Int4, 128, ctx)
            .plan()
            .unwrap();
        let rows = EngineOptions::new(ctx as usize).prefill_chunk;
        assert_eq!(p.prefill_chunk, rows as u64, "ctx {ctx}");
        // ctx 0: no rows, no workspace at all (the engine builds no prefill), not just no rows.
        let want = if rows == 0 {
            0
        } else {
            engine_prefill(&m, rows, true)
        };
        assert_eq!(p.prefill_bytes, want, "ctx {ctx}");
    }
    // A chunk beyond the cache is the cache's rows.
    let mut s = PlanSpec::new(m.clone(), WeightDtype::Int4, 128, 2048);
    s.prefill_chunk = 100_000;
    assert_eq!(s.plan().unwrap().prefill_chunk, 2048);
    assert_eq!(s.prefill_bytes_at(2048), engine_prefill(&m, 2048, true));
    assert_eq!(s.prefill_bytes_at(700), engine_prefill(&m, 700, true));
}

#[test]
fn prefill_paths_follow_the_gemm_familys_group_sizes() {
    // g16 is outside the GEMM family: under the dequant crossover every int4 linear runs per
    // row, so no split-K or repack scratch, the same bytes as fp16's activations; from it, the
    // dequant's W as for every group size. Per-channel is served (repack and all).
    let m = ModelConfig::vicuna_7b();
    let at = |g: i32, chunk: u64| {
        let mut s = PlanSpec::new(m.clone(), WeightDtype::Int4, g, 2048);
        s.prefill_chunk = chunk;
        s.plan().unwrap().prefill_bytes
    };
    assert_eq!(at(16, 200), engine_prefill(&m, 200, false));
    for g in [32, 64, -1] {
        assert_eq!(at(g, 200), engine_prefill(&m, 200, true), "g{g}");
        assert_eq!(at(g, 512), engine_prefill(&m, 512, true), "g{g}");
    }
    assert_eq!(at(16, 512), engine_prefill(&m, 512, true));
}

#[test]
fn a_plan_of_an_engine_run_reads_back_as_its_command() {
    use crate::model::gpu_weights::WeightKind;
    let kind = WeightKind::Int4 {
        group: 128,
        act_order: true,
        sym: false,
    };
    let s = PlanSpec::of_engine_run(ModelConfig::vicuna_7b(), kind, 2085, 512);
    assert_eq!(
        (s.group_size, s.act_order, s.ctx, s.prefill_chunk),
        (128, true, 2085, 512)
    );
    assert_eq!(
        s.command(),
        "lab plan --model vicuna-7b --group 128 --act-order --ctx 2085 --prefill-chunk 512"
    );
    let f = PlanSpec::of_engine_run(ModelConfig::vicuna_7b(), WeightKind::Fp16, 2085, 0);
    assert_eq!(f.dtype, WeightDtype::Fp16);
    assert_eq!(f.plan().unwrap().prefill_bytes, 0);
    assert_eq!(
        f.command(),
        "lab plan --model vicuna-7b --dtype fp16 --ctx 2085 --prefill-chunk 0"
    );
}

#[test]
fn a_head_dim_the_prefill_attention_cannot_hold_names_the_flag() {
    let mut m = small();
    m.num_attention_heads = 1;
    m.num_key_value_heads = 1;
    m.hidden_size = 1024; // head_dim 1024: far past 48 KB of shared memory
    let e = PlanSpec::new(m.clone(), WeightDtype::Fp16, -1, 10)
        .plan()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--prefill-chunk") && e.contains("head_dim 1024"),
        "{e}"
    );
    let mut s = PlanSpec::new(m, WeightDtype::Fp16, -1, 10);
    s.prefill_chunk = 0;
    assert_eq!(s.plan().unwrap().prefill_bytes, 0);
}

#[test]
fn per_channel_group_has_one_row_of_zeros_and_scales() {
    let l = LinearBytes::new("x", 4096, 11008, WeightDtype::Int4, -1, false);
    assert_eq!(l.qzeros, 11008 / 8 * 4);
    assert_eq!(l.scales, 11008 * 2);
    assert_eq!(l.qweight, 4096 / 8 * 11008 * 4);
    assert_eq!(
        l,
        LinearBytes::new("x", 4096, 11008, WeightDtype::Int4, 4096, false)
    );
    // Smaller groups cost more: 32 > 64 > 128 > per-channel.
    let tot = |g| LinearBytes::new("x", 4096, 4096, WeightDtype::Int4, g, false).total();
    assert!(tot(32) > tot(64) && tot(64) > tot(128) && tot(128) > tot(-1));
}

#[test]
fn vicuna_7b_g128_weights_match_the_published_3_9_gb_files() {
    // Published 4-bit 128g Vicuna-7B safetensors are about 3.9 GB; files store g_idx, so count it.
    let mut s = PlanSpec::new(ModelConfig::vicuna_7b(), WeightDtype::Int4, 128, 2048);
    s.act_order = true;
    let w = s.plan().unwrap().weights_bytes;
    assert!((3.8e9..4.0e9).contains(&(w as f64)), "{w}");
}

#[test]
fn bytes_per_token_and_roofline_match_the_anchor_table() {
    // anchors.md: 7B g128 3.63 GB (ctx 0), 4.70 (2048); 13B 6.92, 8.60; 4090 7B ctx 0: 278 tok/s.
    let cases = [
        (ModelConfig::vicuna_7b(), 0, 3.63),
        (ModelConfig::vicuna_7b(), 2048, 4.70),
        (ModelConfig::vicuna_13b(), 0, 6.92),
        (ModelConfig::vicuna_13b(), 2048, 8.60),
    ];
    for (m, ctx, want) in cases {
        let p = PlanSpec::new(m, WeightDtype::Int4, 128, ctx)
            .plan()
            .unwrap();
        assert!(
            (gb(p.bytes_per_step) - want).abs() < 0.006,
            "{} ctx {ctx}: {}",
            p.model,
            gb(p.bytes_per_step)
        );
    }
    let s = PlanSpec::new(ModelConfig::vicuna_7b(), WeightDtype::Int4, 128, 0);
    let r = s
        .plan_on(cards::by_slug("rtx-4090").unwrap(), &SpeedModel::flat(1.0))
        .unwrap()
        .roofline
        .unwrap();
    assert_eq!(r.kind, "estimate");
    assert!((r.tokens_per_s - 278.0).abs() < 1.0, "{}", r.tokens_per_s);
    let r8 = s
        .plan_on(cards::by_slug("rtx-4090").unwrap(), &SpeedModel::flat(0.8))
        .unwrap()
        .roofline
        .unwrap();
    assert!((r8.tokens_per_s / r.tokens_per_s - 0.8).abs() < 1e-9);
    let e = s
        .plan_on(cards::by_slug("rtx-4090").unwrap(), &SpeedModel::flat(0.0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--efficiency") && e.contains("in (0, 1]"), "{e}");
}

#[test]
fn a_fixed_cost_per_layer_weighs_more_on_a_faster_card() {
    // The same speed model on a card 3x faster: the bytes take a third of the time, the layers'
    // fixed cost does not, so the effective efficiency drops (a flat efficiency would keep it).
    let s = PlanSpec::new(ModelConfig::vicuna_7b(), WeightDtype::Int4, 128, 128);
    let speed = SpeedModel {
        stream_efficiency: 0.7,
        per_layer_s: 20e-6,
    };
    let card = |gbs: f64| cards::Card {
        slug: "t".into(),
        name: "t".into(),
        memory_bytes: 80 << 30,
        bandwidth_gbs: gbs,
        sm: 86,
        usable_measured_bytes: None,
    };
    let slow = s.plan_on(&card(1000.0), &speed).unwrap().roofline.unwrap();
    let fast = s.plan_on(&card(3000.0), &speed).unwrap().roofline.unwrap();
    let want = |r: &Roofline, gbs: f64| r.bytes_per_step as f64 / (gbs * 1e9 * 0.7) + 32.0 * 20e-6;
    assert!((slow.ms_per_step * 1e-3 - want(&slow, 1000.0)).abs() < 1e-12);
    assert!((fast.ms_per_step * 1e-3 - want(&fast, 3000.0)).abs() < 1e-12);
    assert_eq!((slow.layers, slow.per_layer_us), (32, 20.0));
    assert!(
        slow.efficiency < 0.7 && fast.efficiency < slow.efficiency,
        "{slow:?} {fast:?}"
    );
    let e = s
        .plan_on(
            &card(1000.0),
            &SpeedModel {
                stream_efficiency: 0.7,
                per_layer_s: -1e-6,
            },
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--efficiency") && e.contains("fixed cost per layer"),
        "{e}"
    );
}

#[test]
fn batch_multiplies_kv_and_tokens_but_not_weights() {
    let mut s = PlanSpec::new(ModelConfig::vicuna_7b(), WeightDtype::Int4, 128, 2048);
    let one = s.plan().unwrap();
    s.batch = 4;
    let four = s.plan().unwrap();
    assert_eq!(four.weights_bytes, one.weights_bytes);
    assert_eq!(four.kv_cache_bytes, 4 * one.kv_cache_bytes);
    s.batch = 0;
    let e = s.plan().unwrap_err().to_string();
    assert!(e.contains("--batch") && e.contains("batch 0"), "{e}");
}

#[test]
fn total_grows_with_context() {
    let s = PlanSpec::new(ModelConfig::vicuna_13b(), WeightDtype::Int4, 64, 0);
    let mut last = s.total_at(0);
    for ctx in [1, 512, 2048, 2049, 4096, 100_000] {
        let t = s.total_at(ctx);
        assert!(t > last, "ctx {ctx}: {t} <= {last}");
        last = t;
        let mut at = s.clone();
        at.ctx = ctx;
        assert_eq!(at.plan().unwrap().total_bytes, t);
    }
}

#[test]
fn longest_ctx_is_the_last_context_that_fits() {
    assert_eq!(fit::longest_ctx(800, |c| 100 + 7 * c), Some(100));
    assert_eq!(fit::longest_ctx(806, |c| 100 + 7 * c), Some(100));
    assert_eq!(fit::longest_ctx(807, |c| 100 + 7 * c), Some(101));
    assert_eq!(fit::longest_ctx(99, |c| 100 + 7 * c), None);
    assert_eq!(fit::longest_ctx(u64::MAX, |c| c), Some(fit::MAX_CTX_SEARCH));

    for m in [ModelConfig::vicuna_7b(), ModelConfig::vicuna_13b()] {
        for g in DEFAULT_GROUPS {
            let s = PlanSpec::new(m.clone(), WeightDtype::Int4, *g, 2048);
            let p = s.plan().unwrap();
            assert_eq!(p.fits.len(), GENERIC_SIZES_GIB.len());
            for f in &p.fits {
                // What the engine allocates on that card (auto keeps v2's plan without room).
                let on = |c: u64| s.total_on_card(c, f.usable_bytes);
                assert_eq!(f.fits, on(2048) <= f.usable_bytes);
                match f.max_ctx {
                    Some(c) => {
                        assert!(on(c) <= f.usable_bytes && on(c + 1) > f.usable_bytes);
                        assert_eq!(f.fits, 2048 <= c);
                    }
                    None => assert!(on(0) > f.usable_bytes && !f.fits),
                }
            }
        }
    }
}

#[test]
fn thirteen_b_g128_at_2048_fits_10_gb_but_not_8() {
    // The anchors' VRAM target, and user question 4 (13B does not fit in 8 GB). Still true with the
    // 157 MB prefill workspace counted: 8.815 -> 8.961 GiB.
    let p = PlanSpec::new(ModelConfig::vicuna_13b(), WeightDtype::Int4, 128, 2048)
        .plan()
        .unwrap();
    let on = |name: &str| p.fits.iter().find(|f| f.card == name).unwrap().fits;
    assert!(on("10 GB") && !on("8 GB"));
}

#[test]
fn fp16_linears_are_about_four_times_int4() {
    let i4 = PlanSpec::new(ModelConfig::vicuna_7b(), WeightDtype::Int4, 128, 0)
        .plan()
        .unwrap();
    let f16 = PlanSpec::new(ModelConfig::vicuna_7b(), WeightDtype::Fp16, 128, 0)
        .plan()
        .unwrap();
    let (a, b) = (i4.weights.parts.linears(), f16.weights.parts.linears());
    // 16 bits vs 4 + 16/128 (scales) + 4/128 (zeros) = 4.156 bits: ratio 3.85.
    assert!(
        (b as f64 / a as f64 - 16.0 / 4.15625).abs() < 1e-3,
        "{}",
        b as f64 / a as f64
    );
    assert_eq!(f16.weights.parts.fp16_linear, 2 * 202_375_168 * 32);
    assert_eq!(f16.group_size, None);
    assert_eq!(f16.weights.parts.embeddings, i4.weights.parts.embeddings);
}

#[test]
fn tied_embeddings_drop_the_lm_head() {
    let mut m = small();
    m.tie_word_embeddings = true;
    let p = PlanSpec::new(m, WeightDtype::Int4, 32, 10).plan().unwrap();
    assert_eq!(p.weights.parts.lm_head, 0);
    assert_eq!(p.weights.parts.embeddings, 100 * 64 * 2);
}

#[test]
fn json_has_the_documented_fields() {
    let s = PlanSpec::new(ModelConfig::vicuna_13b(), WeightDtype::Int4, 128, 2048);
    let p = s.plan().unwrap();
    let v = serde_json::to_value(&p).unwrap();
    for k in [
        "weights_bytes",
        "kv_cache_bytes",
        "workspace_bytes",
        "prefill_chunk",
        "prefill_bytes",
        "cuda_context_bytes",
        "total_bytes",
    ] {
        assert!(v[k].is_u64(), "{k} missing in {v}");
    }
    assert_eq!(v["total_bytes"].as_u64(), Some(p.total_bytes));
    assert_eq!(
        p.total_bytes,
        p.weights_bytes
            + p.kv_cache_bytes
            + p.workspace_bytes
            + p.prefill_bytes
            + p.cuda_context_bytes
    );
    assert_eq!(
        v["weights"]["parts"]["qweight"].as_u64(),
        Some(p.weights.parts.qweight)
    );
    assert_eq!(v["fits"].as_array().unwrap().len(), 6);
    assert!(v["fits"][0]["max_ctx"].is_u64() || v["fits"][0]["max_ctx"].is_null());
    assert_eq!(v["dtype"], "int4");
}

#[test]
fn tensor_bytes_summary_matches_the_plan_for_the_same_names() {
    // A fake state dict with the tensor sizes the format spec gives (AutoGPTQ's shapes and
    // dtypes, written out here: qweight i32 [K/8, N], qzeros i32 [K/128, N/8], scales f16
    // [K/128, N], g_idx i32 [K]), named as in checkpoints.
    let m = ModelConfig::vicuna_7b();
    let mut t = BTreeMap::new();
    for i in 0..m.num_hidden_layers {
        for (name, k, n) in m.layer_linears() {
            let (k, n) = (k as u64, n as u64);
            let p = format!("model.layers.{i}.{name}");
            t.insert(format!("{p}.qweight"), k / 8 * n * 4);
            t.insert(format!("{p}.qzeros"), k / 128 * (n / 8) * 4);
            t.insert(format!("{p}.scales"), k / 128 * n * 2);
            t.insert(format!("{p}.g_idx"), k * 4);
        }
        for n in ["input_layernorm", "post_attention_layernorm"] {
            t.insert(format!("model.layers.{i}.{n}.weight"), 4096 * 2);
        }
        t.insert(
            format!("model.layers.{i}.self_attn.rotary_emb.inv_freq"),
            64 * 4,
        );
    }
    t.insert("model.norm.weight".into(), 4096 * 2);
    t.insert("model.embed_tokens.weight".into(), 32000 * 4096 * 2);
    t.insert("lm_head.weight".into(), 32000 * 4096 * 2);
    let got = plan_from_tensor_bytes(&t);
    let mut s = PlanSpec::new(m, WeightDtype::Int4, 128, 0);
    s.act_order = true;
    let mut want = s.plan().unwrap().weights.parts;
    want.other = 32 * 64 * 4;
    assert_eq!(got, want);
}

#[test]
fn checkpoint_dir_reads_group_from_quantize_config_or_config() {
    let cfg = r#"{"hidden_size":64,"intermediate_size":128,"num_attention_heads":4,
        "num_hidden_layers":2,"vocab_size":100,"model_type":"llama"}"#;
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.json"), cfg).unwrap();
    let (m, q) = read_checkpoint_dir(d.path()).unwrap();
    assert_eq!((m.hidden_size, q.group_size, q.source), (64, None, None));

    let cfg_q = cfg.replace(
        "\"model_type\"",
        r#""quantization_config":{"bits":4,"group_size":32,"desc_act":false,"quant_method":"gptq"},"model_type""#,
    );
    std::fs::write(d.path().join("config.json"), &cfg_q).unwrap();
    let (_, q) = read_checkpoint_dir(d.path()).unwrap();
    assert_eq!((q.group_size, q.act_order), (Some(32), Some(false)));

    // The loader's rules (model::checkpoint::quant_config): the two files disagreeing on the
    // group is refused, naming quantize_config.json ...
    std::fs::write(
        d.path().join("quantize_config.json"),
        r#"{"bits":4,"group_size":64,"desc_act":true,"sym":true,"future":1}"#,
    )
    .unwrap();
    let e = read_checkpoint_dir(d.path()).unwrap_err().to_string();
    assert!(
        e.contains("quantize_config.json") && e.contains("disagrees"),
        "{e}"
    );
    // ... and quantize_config.json alone is read, unknown fields tolerated.
    std::fs::write(d.path().join("config.json"), cfg).unwrap();
    let (_, q) = read_checkpoint_dir(d.path()).unwrap();
    assert_eq!((q.group_size, q.act_order), (Some(64), Some(true)));
    assert_eq!(q.source, Some(d.path().join("quantize_config.json")));

    // What the loader refuses, the planner refuses too, naming the file the value came from:
    // a group not dividing K (intermediate 128 here), another method, a repacked format.
    for (qc, want) in [
        (
            r#"{"bits":4,"group_size":48}"#,
            "group_size 48 does not divide",
        ),
        (r#"{"bits":4,"group_size":0}"#, "group_size 0"),
        (
            r#"{"bits":4,"group_size":32,"quant_method":"awq"}"#,
            "quant_method 'awq'",
        ),
        (
            r#"{"bits":4,"group_size":32,"checkpoint_format":"marlin"}"#,
            "'marlin'",
        ),
    ] {
        std::fs::write(d.path().join("quantize_config.json"), qc).unwrap();
        let e = read_checkpoint_dir(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("quantize_config.json") && e.contains(want),
            "{qc}: {e}"
        );
    }

    std::fs::write(
        d.path().join("quantize_config.json"),
        r#"{"bits":8,"group_size":64}"#,
    )
    .unwrap();
    let e = read_checkpoint_dir(d.path()).unwrap_err().to_string();
    assert!(
        e.contains("quantize_config.json") && e.contains("bits = 8"),
        "{e}"
    );

    let e = read_checkpoint_dir(Path::new("/nonexistent/ckpt"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/ckpt/config.json"), "{e}");
}

#[test]
fn card_table_lookup() {
    let c = cards::by_slug("RTX_4090").unwrap();
    assert_eq!((c.memory_bytes, c.bandwidth_gbs), (24 << 30, 1008.0));
    // As people write them: one card each.
    for name in [
        "rtx4090",
        "GeForce RTX 4090",
        "NVIDIA GeForce RTX 4090",
        "4090",
    ] {
        assert_eq!(cards::by_slug(name).unwrap().slug, "rtx-4090", "{name}");
    }
    assert_eq!(cards::by_slug("H100").unwrap().slug, "h100-sxm");
    // As nvidia-smi names them, and a product's whole name over its variants.
    for (name, slug) in [
        ("NVIDIA GeForce RTX 3080 Ti", "rtx-3080-ti"),
        ("3080", "rtx-3080"),
        ("4070", "rtx-4070"),
        ("4070 Ti SUPER", "rtx-4070-ti-super"),
        ("NVIDIA RTX A6000", "rtx-a6000"),
        ("NVIDIA L40S", "l40s"),
        ("RTX 5090", "rtx-5090"),
        ("2080ti", "rtx-2080-ti"),
        ("RTX 3080 12GB", "rtx-3080-12"),
        ("A100 40GB", "a100-40"),
        ("NVIDIA A100-SXM4-40GB", "a100-40"),
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA RTX 6000 Ada Generation", "rtx-6000-ada"),
        ("Tesla T4", "t4"),
        ("h100", "h100-sxm"),
    ] {
        assert_eq!(cards::by_slug(name).unwrap().slug, slug, "{name}");
    }
    let e = cards::by_slug("a100").unwrap_err().to_string();
    assert!(e.contains("a100-40") && e.contains("a100-80"), "{e}");
    // A product the table lacks is not read as its variant: the RTX 5060 (8 GB) is not the
    // 5060 Ti 16GB, the RTX 2080 not the 2080 Ti, the 5060 Ti 8GB not the 16GB.
    for (name, variant) in [
        ("5060", "rtx-5060-ti-16"),
        ("NVIDIA GeForce RTX 5060", "rtx-5060-ti-16"),
        ("RTX 2080", "rtx-2080-ti"),
        ("5060 Ti", "rtx-5060-ti-16"),
    ] {
        let e = cards::by_slug(name).unwrap_err().to_string();
        assert!(
            e.contains("names no card in the table exactly") && e.contains(variant),
            "{name}: {e}"
        );
    }
    // Nor is a start inside a segment a card ("409" is no product).
    assert!(cards::by_slug("409").is_err());
    // nvidia-smi names the RTX 3080 10GB and 12GB alike: the plan says which it took.
    let v = cards::memory_variants(cards::by_slug("NVIDIA GeForce RTX 3080").unwrap());
    assert_eq!(
        v.iter().map(|c| c.slug.as_ref()).collect::<Vec<_>>(),
        ["rtx-3080-12"]
    );
    assert!(cards::memory_variants(cards::by_slug("rtx-4090").unwrap()).is_empty());
    assert_eq!(
        cards::by_slug("A10").unwrap().slug,
        "a10",
        "exact beats a prefix"
    );
    // Two cards start so: named, not guessed.
    let e = cards::by_slug("4060ti").unwrap_err().to_string();
    assert!(
        e.contains("rtx-4060-ti-8,") && e.contains("rtx-4060-ti-16"),
        "{e}"
    );
    assert_eq!(cards::by_slug("4060").unwrap().slug, "rtx-4060");
    for bad in ["gtx-1080", "", "-"] {
        let e = cards::by_slug(bad).unwrap_err().to_string();
        assert!(
            e.contains("unknown card") && e.contains("rtx-3060"),
            "{bad}: {e}"
        );
    }
    let e = cards::by_slug("gtx-1080").unwrap_err().to_string();
    assert!(e.contains("gtx-1080") && e.contains("rtx-3060"), "{e}");
    // GDDR6 ECC cards report 15/16 of their nominal size.
    assert_eq!(
        cards::by_slug("t4").unwrap().memory_bytes,
        (16u64 << 30) / 16 * 15
    );
}

#[test]
fn the_dequant_prefill_scratch_is_the_widest_fp16_slice_and_auto_plans_it() {
    use crate::model::gpu_engine::PrefillInt4;
    for (model, widest) in [
        // 7B: fused gate|up (4096 x 22016) in 3 column slices of 7344; 13B: gate|up (5120 x 27648)
        // in 5 of 5536, wider than down's 3 of 1712 at K = 13824.
        (ModelConfig::vicuna_7b(), 4096u64 * 7344),
        (ModelConfig::vicuna_13b(), 5120u64 * 5536),
    ] {
        assert_eq!(
            widest as usize,
            widest_dequant_slice(&model),
            "{}",
            model.name
        );
        for act_order in [false, true] {
            let mut s = PlanSpec::new(model.clone(), WeightDtype::Int4, 128, 2048);
            s.act_order = act_order;
            let auto = s.plan().unwrap();
            s.prefill_int4 = PrefillInt4::Dequant;
            let deq = s.plan().unwrap();
            s.prefill_int4 = PrefillInt4::GemmV2;
            let v2 = s.plan().unwrap();
            // Dequant: no GEMM linear, the scratch is the widest fp16 column slice (the engine's
            // own sizing, PrefillSizes), act-order or not.
            let mut z = PrefillSizes::new(
                &model,
                crate::model::gpu_engine::DEFAULT_PREFILL_CHUNK,
                0,
                0,
                0,
            );
            z.dequant = widest as usize;
            assert_eq!(deq.prefill_bytes, z.bytes(), "{}", model.name);
            // Auto at 512-row chunks dequantizes the large chunks and runs the GEMM below the
            // crossover: both in one scratch, the larger of the two (7B: the slice; 13B: the
            // GEMM's, so auto's prefill is v2's).
            assert_eq!(
                auto.prefill_bytes,
                deq.prefill_bytes.max(v2.prefill_bytes),
                "{}",
                model.name
            );
            assert!(v2.prefill_bytes <= auto.prefill_bytes, "{}", model.name);
            // ...plus the cuBLAS handle v2's engine does not make.
            assert_eq!(auto.workspace_bytes - v2.workspace_bytes, CUBLAS_BYTES);
            assert_eq!(
                auto.total_bytes - v2.total_bytes,
                auto.prefill_bytes - v2.prefill_bytes + CUBLAS_BYTES
            );
            assert!(
                s.command().ends_with(" --prefill-int4 v2"),
                "{}",
                s.command()
            );
            // Chunks under the crossover never dequantize: auto = v2.
            s.prefill_chunk = 64;
            let small_v2 = s.plan().unwrap().prefill_bytes;
            s.prefill_int4 = PrefillInt4::Auto;
            assert_eq!(s.plan().unwrap().prefill_bytes, small_v2);
        }
        // fp16 models have no int4 linears to dequantize.
        let mut f = PlanSpec::new(model, WeightDtype::Fp16, -1, 2048);
        let f_auto = f.plan().unwrap().prefill_bytes;
        f.prefill_int4 = PrefillInt4::Dequant;
        assert_eq!(f.plan().unwrap().prefill_bytes, f_auto);
    }
    for flag in ["auto", "v2", "v1", "rows", "dequant"] {
        assert_eq!(PrefillInt4::parse(flag).unwrap().flag(), flag);
    }
    assert!(PrefillInt4::parse("fast").unwrap_err().contains("dequant"));
}

#[test]
fn the_cublas_allowance_is_counted_exactly_where_the_engine_makes_a_handle() {
    use crate::model::gpu_engine::PrefillInt4;
    let m = ModelConfig::vicuna_7b();
    let at = |dtype, act: bool, chunk: u64, ctx: u64, choice| {
        let plan = prefill_plan(&m, dtype, 128, act, chunk, ctx, choice);
        cublas_bytes(dtype, true, plan.as_ref())
    };
    let int4 = WeightDtype::Int4;
    // auto: plain layers dequantize from 256 rows, act-order from 128.
    assert_eq!(at(int4, false, 200, 2048, PrefillInt4::Auto), 0);
    assert_eq!(at(int4, true, 200, 2048, PrefillInt4::Auto), CUBLAS_BYTES);
    assert_eq!(at(int4, false, 256, 2048, PrefillInt4::Auto), CUBLAS_BYTES);
    // The chunk is clamped to the cache: a 512-row chunk at ctx 200 is a 200-row one.
    assert_eq!(at(int4, false, 512, 200, PrefillInt4::Auto), 0);
    assert_eq!(at(int4, false, 512, 300, PrefillInt4::Auto), CUBLAS_BYTES);
    // dequant: every chunk of 2+ rows; a 1-row chunk (or none) is the decode GEMV.
    assert_eq!(at(int4, false, 2, 2048, PrefillInt4::Dequant), CUBLAS_BYTES);
    assert_eq!(at(int4, false, 1, 2048, PrefillInt4::Dequant), 0);
    assert_eq!(at(int4, false, 0, 2048, PrefillInt4::Dequant), 0);
    // The GEMM family and the per-row GEMV never need cuBLAS.
    for c in [
        PrefillInt4::GemmV2,
        PrefillInt4::GemmV1,
        PrefillInt4::RowGemv,
    ] {
        assert_eq!(at(int4, true, 512, 2048, c), 0, "{c:?}");
    }
    // fp16: on the cuBLAS backend only, whatever the prefill.
    assert_eq!(
        at(WeightDtype::Fp16, false, 0, 2048, PrefillInt4::Auto),
        CUBLAS_BYTES
    );
    let fp16_plan = prefill_plan(
        &m,
        WeightDtype::Fp16,
        -1,
        false,
        512,
        2048,
        PrefillInt4::Auto,
    );
    assert_eq!(
        cublas_bytes(WeightDtype::Fp16, false, fp16_plan.as_ref()),
        0
    );
    // And the plan's workspace carries it.
    let mut s = PlanSpec::new(m.clone(), WeightDtype::Fp16, -1, 2048);
    let with = s.plan().unwrap().workspace_bytes;
    s.fp16_cublas = false;
    assert_eq!(with - s.plan().unwrap().workspace_bytes, CUBLAS_BYTES);
}

#[test]
fn a_card_with_room_for_v2_but_not_for_autos_dequant_fits_as_the_engine_falls_back() {
    use crate::model::gpu_engine::PrefillInt4;
    let auto = PlanSpec::new(ModelConfig::vicuna_13b(), WeightDtype::Int4, 128, 2048);
    let mut v2 = auto.clone();
    v2.prefill_int4 = PrefillInt4::GemmV2;
    let (ta, tv) = (
        auto.plan().unwrap().total_bytes,
        v2.plan().unwrap().total_bytes,
    );
    assert!(tv < ta);
    // Between v2's total and auto's total + the engine's headroom: the engine keeps v2's plan.
    let mem = tv + (16 << 20);
    assert!(mem < ta + DEQUANT_HEADROOM);
    let card = cards::Card {
        slug: "test".into(),
        name: "test card".into(),
        memory_bytes: memory_for_usable(mem),
        bandwidth_gbs: 500.0,
        sm: 86,
        usable_measured_bytes: None,
    };
    let f = auto
        .plan_on(&card, &SpeedModel::flat(0.5))
        .unwrap()
        .card
        .unwrap();
    assert!(f.fits, "{f:?}");
    assert_eq!(f.free_bytes, 16 << 20);
    // With room for auto and its headroom, auto's own total counts.
    let big = cards::Card {
        memory_bytes: memory_for_usable(ta + DEQUANT_HEADROOM),
        ..card
    };
    let f = auto
        .plan_on(&big, &SpeedModel::flat(0.5))
        .unwrap()
        .card
        .unwrap();
    assert_eq!(f.free_bytes, DEQUANT_HEADROOM as i64);
    // An explicit dequant gets no fallback: it does not fit the small card.
    let mut deq = auto.clone();
    deq.prefill_int4 = PrefillInt4::Dequant;
    let small = cards::Card {
        memory_bytes: memory_for_usable(mem),
        ..big
    };
    assert!(
        !deq.plan_on(&small, &SpeedModel::flat(0.5))
            .unwrap()
            .card
            .unwrap()
            .fits
    );
}

#[test]
fn a_group_that_does_not_divide_every_k_is_refused_by_flag() {
    for g in [48, 7, 0, -2] {
        let e = PlanSpec::new(ModelConfig::vicuna_7b(), WeightDtype::Int4, g, 2048)
            .plan()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--group") && e.contains(&format!("group_size {g} ")),
            "{e}"
        );
    }
    // 13B's K are 5120 and 13824 (= 27 x 512): 1024 divides the first only.
    let e = PlanSpec::new(ModelConfig::vicuna_13b(), WeightDtype::Int4, 1024, 2048)
        .plan()
        .unwrap_err()
        .to_string();
    assert!(e.contains("13824"), "{e}");
    for g in [32, 64, 128, -1] {
        PlanSpec::new(ModelConfig::vicuna_13b(), WeightDtype::Int4, g, 2048)
            .plan()
            .unwrap();
    }
    // fp16 has no groups: the value is not looked at.
    PlanSpec::new(ModelConfig::vicuna_7b(), WeightDtype::Fp16, 48, 2048)
        .plan()
        .unwrap();
}

#[test]
fn sizes_past_u64_are_refused_by_name_instead_of_wrapping() {
    let base = || PlanSpec::new(ModelConfig::vicuna_7b(), WeightDtype::Int4, 128, 2048);
    // The longest-context search alone reaches 2^24 positions: a batch that overflows there is
    // refused even at a short --ctx (it used to wrap and "fit" a 6 GB card).
    let mut s = base();
    s.batch = u64::MAX;
    let e = s.plan().unwrap_err().to_string();
    assert!(
        e.contains("--batch") && e.contains(&u64::MAX.to_string()),
        "{e}"
    );
    let mut s = base();
    s.ctx = 1 << 45;
    let e = s.plan().unwrap_err().to_string();
    assert!(e.contains("--ctx") && e.contains("1073741823"), "{e}");
    // The engine's own limit is still planned: it just fits no card.
    let mut s = base();
    s.ctx = crate::model::gpu_engine::MAX_CTX as u64;
    let p = s.plan().unwrap();
    assert!(p.kv_cache_bytes > (1u64 << 48) && p.fits.iter().all(|f| !f.fits));
    // A config of absurd dimensions names the model config.
    let mut m = ModelConfig::vicuna_7b();
    m.num_hidden_layers = 1_000_000_000_000_000_000;
    let e = PlanSpec::new(m, WeightDtype::Int4, 128, 2048)
        .plan()
        .unwrap_err()
        .to_string();
    assert!(e.contains("model config 'vicuna-7b'"), "{e}");
    let mut m = ModelConfig::vicuna_7b();
    m.hidden_size = 1 << 62;
    m.num_attention_heads = 1 << 55;
    m.num_key_value_heads = 1 << 55;
    let e = PlanSpec::new(m, WeightDtype::Fp16, -1, 2048)
        .plan()
        .unwrap_err()
        .to_string();
    assert!(e.contains("model config"), "{e}");
}

/// A card size whose usable memory (`Card::usable_bytes`: less the driver's reserve) is exactly
/// `usable` bytes: the reserve grows by one byte per 128, so the usable size steps by 0 or 1.
fn memory_for_usable(usable: u64) -> u64 {
    let of = |m: u64| m - cards::driver_reserve_bytes(m);
    let mut m = (usable + (200 << 20)) / 127 * 128 - 512;
    assert!(of(m) < usable);
    while of(m) < usable {
        m += 1;
    }
    assert_eq!(of(m), usable);
    m
}

#[test]
fn fits_are_judged_against_what_a_program_can_allocate() {
    // The H100 80GB the lab measured on reports 81079 MiB to cuMemGetInfo: the rule's usable
    // size is within 1 MiB of it, and an 8 GiB card keeps 7928 MiB.
    let h100 = cards::by_slug("h100-sxm").unwrap();
    assert_eq!(h100.usable_bytes() >> 20, 81080);
    assert_eq!(cards::generic(8).usable_bytes() >> 20, 7928);
    // A plan whose total lies between the usable and the nominal size does not fit (with the
    // GEMM prefill, whose total does not depend on the card: auto's would fall back to it).
    let mut s = PlanSpec::new(ModelConfig::vicuna_7b(), WeightDtype::Int4, 128, 2048);
    s.prefill_int4 = crate::model::gpu_engine::PrefillInt4::GemmV2;
    let total = s.plan().unwrap().total_bytes;
    let card = cards::Card {
        slug: "t".into(),
        name: "t".into(),
        memory_bytes: total + (100 << 20),
        bandwidth_gbs: 500.0,
        sm: 86,
        usable_measured_bytes: None,
    };
    let f = s
        .plan_on(&card, &SpeedModel::flat(0.5))
        .unwrap()
        .card
        .unwrap();
    assert!(card.usable_bytes() < total && !f.fits, "{f:?}");
    assert_eq!(f.free_bytes, card.usable_bytes() as i64 - total as i64);
}

/// Vicuna-33B, counted by hand from its shapes (lmsys/vicuna-33b-v1.3: h 6656, i 17920, 60
/// layers, vocab 32000): at g128 each weight is half a byte of code plus 2 / 128 bytes of scale
/// and 0.5 / 128 of packed zero; norms, lm_head and one embedding row are fp16.
#[test]
fn vicuna_33b_bytes_are_its_shapes_counted_by_hand() {
    let (h, i, layers, vocab) = (6656u64, 17920u64, 60u64, 32000u64);
    let per_layer = 4 * h * h + 3 * h * i; // q, k, v, o; gate, up, down
    let linears = layers * per_layer * (128 + 4 + 1) / 256;
    let norms = (2 * layers + 1) * h * 2;
    let streamed = linears + norms + vocab * h * 2 + h * 2;
    for ctx in [0u64, 2048] {
        let kv = 2 * layers * ctx * h * 2;
        let p = PlanSpec::new(ModelConfig::vicuna_33b(), WeightDtype::Int4, 128, ctx)
            .plan()
            .unwrap();
        assert_eq!(p.bytes_per_step, streamed + kv, "ctx {ctx}");
        assert_eq!(p.kv_cache_bytes, kv, "ctx {ctx}");
        // Resident weights add the embedding table to what a step streams (less its one row).
        assert_eq!(
            p.weights_bytes,
            streamed - h * 2 + vocab * h * 2,
            "ctx {ctx}"
        );
    }
    // 16.7 GB of linears, 17.5 GB of weights: what makes 33B the 24 GB card's question.
    assert!((16.6e9..16.8e9).contains(&(linears as f64)), "{linears}");
}

/// Every card's slug and name are unique and the slug finds the card; memory and bandwidth are
/// positive; an sm the builds cannot run (below 75) never appears.
#[test]
fn the_card_table_is_consistent() {
    for (i, c) in cards::CARDS.iter().enumerate() {
        assert_eq!(cards::by_slug(&c.slug).unwrap(), c, "{}", c.slug);
        assert!(c.memory_bytes > 0 && c.bandwidth_gbs > 0.0, "{}", c.slug);
        assert!(c.sm >= 75, "{}: sm_{}", c.slug, c.sm);
        for d in &cards::CARDS[i + 1..] {
            assert!(
                c.slug != d.slug && c.name != d.name,
                "{} / {}",
                c.slug,
                d.slug
            );
        }
    }
}

/// The memory each card has is the size in its name, as the driver reports it: nominal GiB, or
/// 15/16 of it on the GDDR6 cards with ECC on by default; the H200 as its driver reports 141 GB.
/// A typo in the table (24 x 1000 MiB for "24GB") would move every fit the plans judge.
#[test]
fn every_cards_memory_is_the_size_in_its_name() {
    const ECC_ON: &[&str] = &["a10", "t4", "l4", "l40s"];
    let want_mib = |c: &cards::Card| -> Option<u64> {
        let gb: u64 = c
            .name
            .split(' ')
            .find_map(|t| t.strip_suffix("GB")?.parse().ok())?;
        Some(match c.slug.as_ref() {
            "h200" => 143_771,
            s if ECC_ON.contains(&s) => gb * 1024 / 16 * 15,
            _ => gb * 1024,
        })
    };
    for c in cards::CARDS {
        assert_eq!(
            want_mib(c),
            Some(c.memory_bytes >> 20),
            "{} ({})",
            c.slug,
            c.name
        );
        assert_eq!(c.memory_bytes % (1 << 20), 0, "{}", c.slug);
    }
    // The check itself sees a decimal typo.
    let mut typo = cards::by_slug("rtx-3090").unwrap().clone();
    typo.memory_bytes = (24 * 1000) << 20;
    assert_ne!(want_mib(&typo), Some(typo.memory_bytes >> 20));
}

/// An unknown card's error names every card of the table, and a word with no model number
/// ("rtx": every GeForce card's start) is unknown, not a list of continuations.
#[test]
fn an_unknown_card_is_refused_naming_every_known_one() {
    for bad in ["gtx-1080", "rtx", "RTX", "geforce rtx"] {
        let e = cards::by_slug(bad).unwrap_err().to_string();
        assert!(e.contains("unknown card"), "{bad}: {e}");
        for c in cards::CARDS {
            assert!(
                e.contains(c.slug.as_ref()),
                "{bad}: {} not named: {e}",
                c.slug
            );
        }
    }
}

/// A MIG profile that is the whole GPU's memory is a share of 1; one larger than the GPU is not
/// a share at all.
#[test]
fn a_mig_profile_of_the_whole_memory_is_the_whole_bandwidth() {
    use crate::plan::cards::MigSlice;
    let m = MigSlice::of("NVIDIA A100-SXM4-40GB MIG 7g.40gb").unwrap();
    assert_eq!(m.bandwidth_share(), Some(1.0));
    let m = MigSlice::of("NVIDIA A100-SXM4-40GB MIG 1g.80gb").unwrap();
    assert_eq!(m.bandwidth_share(), None);
}

/// Act-order with one group (per-channel) is planned as the engine runs it: GPTQ writes its
/// g_idx as all zeros, the loader reads plain order, so no g_idx bytes, the plain prefill and the
/// plain form in the plan; the note says why. With groups, act-order still counts its index.
#[test]
fn per_channel_act_order_is_planned_as_plain() {
    let spec = |group: i32, act: bool| {
        let mut s = PlanSpec::new(ModelConfig::vicuna_7b(), WeightDtype::Int4, group, 2048);
        s.act_order = act;
        s.plan().unwrap()
    };
    let (act, plain) = (spec(-1, true), spec(-1, false));
    assert_eq!(
        (
            act.weights_bytes,
            act.prefill_bytes,
            act.total_bytes,
            act.bytes_per_step
        ),
        (
            plain.weights_bytes,
            plain.prefill_bytes,
            plain.total_bytes,
            plain.bytes_per_step
        )
    );
    assert!(!act.act_order && !act.g_idx_counted);
    assert!(
        act.g_idx_note.contains("per-channel") && act.g_idx_note.contains("plain kernels"),
        "{}",
        act.g_idx_note
    );
    let (act, plain) = (spec(128, true), spec(128, false));
    assert!(act.act_order && act.g_idx_counted);
    assert!(act.weights_bytes > plain.weights_bytes);
    // On a card too: the fit is of the same (plain) bytes.
    let card = cards::by_slug("rtx-4090").unwrap();
    let mut s = PlanSpec::new(ModelConfig::vicuna_7b(), WeightDtype::Int4, -1, 2048);
    s.act_order = true;
    let on = s.plan_on(card, &SpeedModel::flat(0.7)).unwrap();
    s.act_order = false;
    let plain_on = s.plan_on(card, &SpeedModel::flat(0.7)).unwrap();
    assert_eq!(on.card, plain_on.card);
}

/// `--card this`: a device's own facts make the card; the plans fit against the memory its
/// driver reported allocatable, not the reserve rule, and the bandwidth is clock x bus width.
#[test]
fn a_device_is_a_card_with_its_measured_memory() {
    let d = crate::cuda::device::test_device("NVIDIA H100 80GB HBM3", (9, 0), 132);
    let c = Card::from_device(&d);
    assert_eq!((c.slug.as_ref(), c.sm), ("nvidia-h100-80gb-hbm3", 90));
    // 2619 MHz x 2 x 5120 bits / 8 = 3352 GB/s (the H100 SXM's 3350 spec).
    assert!(
        (c.bandwidth_gbs - 3352.32).abs() < 0.01,
        "{}",
        c.bandwidth_gbs
    );
    assert_eq!(c.usable_bytes(), 80 << 30);
    let table = cards::by_slug("h100-sxm").unwrap();
    assert!(table.usable_bytes() < c.usable_bytes());
    let p = PlanSpec::new(ModelConfig::vicuna_13b(), WeightDtype::Int4, 128, 2048)
        .plan_on(&c, &SpeedModel::flat(0.8))
        .unwrap();
    let fit = p.card.unwrap();
    assert_eq!(fit.free_bytes, (80i64 << 30) - p.total_bytes as i64);
}

#[test]
fn a_mig_slice_plans_with_its_share_of_the_gpus_bandwidth() {
    use crate::plan::cards::{Card, MigSlice};
    let m = MigSlice::of("NVIDIA A100-SXM4-40GB MIG 1g.5gb").unwrap();
    assert_eq!(
        (m.profile.as_str(), m.slice_gb, m.gpu_gb),
        ("1g.5gb", 5, Some(40))
    );
    assert_eq!(m.bandwidth_share(), Some(0.125));
    let m = MigSlice::of("NVIDIA H100 80GB HBM3 MIG 3g.40gb").unwrap();
    assert_eq!(
        (m.slice_gb, m.gpu_gb, m.bandwidth_share()),
        (40, Some(80), Some(0.5))
    );
    // The GPU's memory not in its name: a slice, with no share to scale by.
    let m = MigSlice::of("NVIDIA H200 MIG 1g.18gb").unwrap();
    assert_eq!((m.gpu_gb, m.bandwidth_share()), (None, None));
    for whole in [
        "NVIDIA H100 80GB HBM3",
        "NVIDIA A100-SXM4-40GB",
        "MIG",
        "NVIDIA X MIG 1g",
    ] {
        assert_eq!(MigSlice::of(whole), None, "{whole}");
    }
    // --card this on a slice: the slice's memory (the driver's) and 1/8 of the whole's bandwidth.
    let whole = crate::cuda::device::test_device("NVIDIA H100 80GB HBM3", (9, 0), 132);
    let mut slice =
        crate::cuda::device::test_device("NVIDIA H100 80GB HBM3 MIG 1g.10gb", (9, 0), 16);
    slice.memory_bytes = 10 << 30;
    let (w, s) = (Card::from_device(&whole), Card::from_device(&slice));
    assert!((s.bandwidth_gbs * 8.0 - w.bandwidth_gbs).abs() < 1e-9 * w.bandwidth_gbs);
    assert_eq!(s.usable_bytes(), 10 << 30);
}

#[test]
fn a_tied_model_streams_its_embedding_table_as_the_lm_head_every_step() {
    // Tied weights: the logits GEMV reads the whole embedding table (100 x 64 fp16) each step,
    // so it counts in what a step streams though there is no separate lm_head. Linears and
    // norms as counted by hand in small_config_bytes_by_hand: 40960 + 1280 + 5120 and 640.
    let mut m = small();
    m.tie_word_embeddings = true;
    let p = PlanSpec::new(m, WeightDtype::Int4, 32, 10).plan().unwrap();
    let (linears, norms, table, kv) = (40960 + 1280 + 5120, 640, 100 * 64 * 2, 5120);
    assert_eq!(p.kv_cache_bytes, kv);
    assert_eq!(p.bytes_per_step, linears + norms + table + kv);
    assert_eq!(p.weights_bytes, linears + norms + table);
}

#[test]
fn a_roofline_is_extrapolated_only_outside_the_fitted_layer_range() {
    // Fitted on 26..=40 layers: both ends are inside the fit, one layer past either is not.
    let card = cards::Card {
        slug: "t".into(),
        name: "t".into(),
        memory_bytes: 80 << 30,
        bandwidth_gbs: 1000.0,
        sm: 86,
        usable_measured_bytes: None,
    };
    for (layers, out) in [
        (25, true),
        (26, false),
        (32, false),
        (40, false),
        (41, true),
    ] {
        let mut r = fit::roofline(&card, &SpeedModel::flat(0.8), layers, 1, 1 << 30);
        r.set_fitted_layers(Some((26, 40)));
        assert_eq!(r.extrapolated, out, "{layers} layers");
    }
}

#[test]
fn a_plan_that_needs_exactly_the_usable_memory_fits() {
    // 1000 usable bytes, 1000 needed: fits with nothing to spare; one more byte does not.
    let card = cards::Card {
        slug: "t".into(),
        name: "t".into(),
        memory_bytes: 2000,
        bandwidth_gbs: 1000.0,
        sm: 86,
        usable_measured_bytes: Some(1000),
    };
    let f = fit::fit_on(&card, 1000, |c| 900 + c);
    assert!(f.fits && f.free_bytes == 0, "{f:?}");
    assert_eq!(f.max_ctx, Some(100));
    let f = fit::fit_on(&card, 1001, |c| 901 + c);
    assert!(!f.fits && f.free_bytes == -1, "{f:?}");
}

#[test]
fn each_sequence_of_a_batch_reads_its_own_embedding_row() {
    // Untied small config at ctx 10: linears 40960 + 1280 + 5120, norms 640, lm_head 100 x 64
    // fp16, and per sequence one embedding row (64 x 2) and its 2 x 2 x 10 x 64 x 2 of KV.
    let mut s = PlanSpec::new(small(), WeightDtype::Int4, 32, 10);
    let fixed = 40960 + 1280 + 5120 + 640 + 12800;
    for batch in [1u64, 4] {
        s.batch = batch;
        let p = s.plan().unwrap();
        assert_eq!(p.kv_cache_bytes, batch * 5120);
        assert_eq!(
            p.bytes_per_step,
            fixed + batch * (128 + 5120),
            "batch {batch}"
        );
    }
}
