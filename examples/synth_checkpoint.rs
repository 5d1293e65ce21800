//! Write a random fp16 LLaMA checkpoint (config.json, model.safetensors) and calibration token ids
//! (calib-ids.txt) of a chosen size, to measure `lab quantize` on something larger than the tiny
//! fixture (its peak RSS, notes/quantize.md):
//!
//!   cargo run --release --example synth_checkpoint -- DIR [HIDDEN LAYERS TOKENS]
//!   lab quantize --checkpoint DIR --calib-ids DIR/calib-ids.txt --seqlen 128 --group 128 --out Q
//!
//! Default: hidden 1024, intermediate 2816 (8/3 h rounded up to 256, as LLaMA: 11008 = 43 x 256,
//! so group 128 divides it), 8 heads, 4 layers,
//! vocab 4096, 512 calibration tokens.

use gptq_lab::model::config::ModelConfig;
use gptq_lab::model::weights::{Dense, LlamaWeights};
use half::f16;
use rand::{RngExt, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::PathBuf;

/// [k, n] row-major f32 -> the checkpoint's [n, k] fp16 bytes.
fn file_bytes(d: &Dense) -> Vec<u8> {
    let mut out = Vec::with_capacity(d.k * d.n * 2);
    for j in 0..d.n {
        for i in 0..d.k {
            out.extend(f16::from_f32(d.w[i * d.n + j]).to_le_bytes());
        }
    }
    out
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| f16::from_f32(*x).to_le_bytes())
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first().map(PathBuf::from) else {
        anyhow::bail!("usage: synth_checkpoint DIR [HIDDEN LAYERS TOKENS]");
    };
    let num = |i: usize, d: usize| -> anyhow::Result<usize> {
        Ok(match args.get(i) {
            Some(s) => s.parse()?,
            None => d,
        })
    };
    let (h, layers, tokens) = (num(1, 1024)?, num(2, 4)?, num(3, 512)?);
    let cfg = ModelConfig {
        name: format!("synthetic-h{h}-l{layers}"),
        hidden_size: h,
        intermediate_size: (h * 8 / 3).div_ceil(256) * 256,
        num_hidden_layers: layers,
        num_attention_heads: (h / 128).max(1),
        num_key_value_heads: (h / 128).max(1),
        vocab_size: 4096,
        max_position_embeddings: 2048,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_linear_factor: 1.0,
        tie_word_embeddings: false,
    };
    // std 0.02, as LLaMA's initialisation: activations stay O(1) through the layers.
    let w = LlamaWeights::random(&cfg, 7, 0.02);
    let mut t: Vec<(String, Vec<usize>, Vec<u8>)> = vec![
        (
            "model.embed_tokens.weight".into(),
            vec![cfg.vocab_size, h],
            f16_bytes(&w.embed),
        ),
        (
            "model.norm.weight".into(),
            vec![h],
            f16_bytes(&w.final_norm),
        ),
        (
            "lm_head.weight".into(),
            vec![cfg.vocab_size, h],
            file_bytes(&w.lm_head),
        ),
    ];
    for (i, l) in w.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        t.push((
            format!("{p}.input_layernorm.weight"),
            vec![h],
            f16_bytes(&l.attn_norm),
        ));
        t.push((
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            f16_bytes(&l.ffn_norm),
        ));
        let mats = [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down];
        for ((name, k, n), d) in cfg.layer_linears().into_iter().zip(mats) {
            anyhow::ensure!((d.k, d.n) == (k, n), "{name}: shape mismatch");
            t.push((format!("{p}.{name}.weight"), vec![n, k], file_bytes(d)));
        }
    }
    let views = t
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F16, s.clone(), b)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::create_dir_all(&dir)?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(views, Some(meta))?,
    )?;
    let config = serde_json::json!({
        "_name_or_path": cfg.name,
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": h,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "hidden_act": "silu",
        "tie_word_embeddings": false,
        "torch_dtype": "float16",
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)? + "\n",
    )?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let ids: Vec<String> = (0..tokens)
        .map(|_| rng.random_range(0..cfg.vocab_size as u32).to_string())
        .collect();
    std::fs::write(dir.join("calib-ids.txt"), ids.join(" ") + "\n")?;
    println!(
        "wrote {} ({}: hidden {h}, intermediate {}, {layers} layers) and {tokens} calibration ids",
        dir.display(),
        cfg.name,
        cfg.intermediate_size
    );
    Ok(())
}
