use super::*;
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
    // workspace per sequence: 4*64*2 + (64+2*64)*2 + 2*128*2 + 128*2 + 128*2 + 4*10*4 + 2*100*4
    //   = 512 + 384 + 512 + 256 + 256 + 160 + 800 = 2880; split-K 16 * 1 * max(192, 256) * 4 = 16384.
    assert_eq!(p.workspace_bytes, 2880 + 16384);
    assert_eq!(p.total_bytes, 73600 + 5120 + 19264 + 1000);
    assert!(!p.g_idx_counted && p.g_idx_note.contains("not counted"));

    // Act-order adds K*4 per linear: 4*64*4 + 2*64*4 + 128*4 = 2048 per layer.
    s.act_order = true;
    let a = s.plan().unwrap();
    assert_eq!(a.weights.parts.g_idx, 4096);
    assert_eq!(a.weights_bytes, p.weights_bytes + 4096);
    assert!(a.g_idx_counted);
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
        .plan_on(cards::by_slug("rtx-4090").unwrap(), 1.0)
        .unwrap()
        .roofline
        .unwrap();
    assert_eq!(r.kind, "estimate");
    assert!((r.tokens_per_s - 278.0).abs() < 1.0, "{}", r.tokens_per_s);
    let r8 = s
        .plan_on(cards::by_slug("rtx-4090").unwrap(), 0.8)
        .unwrap()
        .roofline
        .unwrap();
    assert!((r8.tokens_per_s / r.tokens_per_s - 0.8).abs() < 1e-9);
    assert!(s.plan_on(cards::by_slug("rtx-4090").unwrap(), 0.0).is_err());
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
    assert!(s.plan().is_err());
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
                assert_eq!(f.fits, p.total_bytes <= f.memory_bytes);
                match f.max_ctx {
                    Some(c) => {
                        assert!(
                            s.total_at(c) <= f.memory_bytes && s.total_at(c + 1) > f.memory_bytes
                        );
                        assert_eq!(f.fits, 2048 <= c);
                    }
                    None => assert!(s.total_at(0) > f.memory_bytes && !f.fits),
                }
            }
        }
    }
}

#[test]
fn thirteen_b_g128_at_2048_fits_10_gb_but_not_8() {
    // The anchors' VRAM target, and user question 4 (13B does not fit in 8 GB).
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
        "cuda_context_bytes",
        "total_bytes",
    ] {
        assert!(v[k].is_u64(), "{k} missing in {v}");
    }
    assert_eq!(v["total_bytes"].as_u64(), Some(p.total_bytes));
    assert_eq!(
        p.total_bytes,
        p.weights_bytes + p.kv_cache_bytes + p.workspace_bytes + p.cuda_context_bytes
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
    // A fake state dict with the exact tensor sizes the format spec gives, named as in checkpoints.
    let m = ModelConfig::vicuna_7b();
    let mut t = BTreeMap::new();
    for i in 0..m.num_hidden_layers {
        for (name, k, n) in m.layer_linears() {
            let l = LinearBytes::new(name, k as u64, n as u64, WeightDtype::Int4, 128, true);
            let p = format!("model.layers.{i}.{name}");
            t.insert(format!("{p}.qweight"), l.qweight);
            t.insert(format!("{p}.qzeros"), l.qzeros);
            t.insert(format!("{p}.scales"), l.scales);
            t.insert(format!("{p}.g_idx"), l.g_idx);
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

    // quantize_config.json wins over config.json, unknown fields are tolerated.
    std::fs::write(
        d.path().join("quantize_config.json"),
        r#"{"bits":4,"group_size":64,"desc_act":true,"sym":true,"future":1}"#,
    )
    .unwrap();
    let (_, q) = read_checkpoint_dir(d.path()).unwrap();
    assert_eq!((q.group_size, q.act_order), (Some(64), Some(true)));

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
    let e = cards::by_slug("gtx-1080").unwrap_err().to_string();
    assert!(e.contains("gtx-1080") && e.contains("rtx-3060"), "{e}");
    // GDDR6 ECC cards report 15/16 of their nominal size.
    assert_eq!(
        cards::by_slug("t4").unwrap().memory_bytes,
        (16u64 << 30) / 16 * 15
    );
}
