//! The input side of `lab quantize`: refuse anything but a complete fp16 LLaMA checkpoint before
//! any work, load one decoder layer at a time, and copy the unquantized tensors.

use crate::model::checkpoint::{Checkpoint, LinearWeights};
use crate::model::config::ModelConfig;
use crate::model::weights::{Dense, LayerWeights};
use crate::{LabError, Result};
use half::f16;
use safetensors::Dtype;

/// (name, fp16 values, shape) of one tensor copied unquantized.
pub type DenseTensor = (String, Vec<f16>, Vec<usize>);

/// Refuse anything but an unquantized checkpoint whose every linear weight is fp16 with the
/// config's shape, before any work.
pub(crate) fn check_fp16_source(ckpt: &Checkpoint) -> Result<()> {
    if ckpt.quant.is_some() {
        return Err(LabError::bad_checkpoint(
            &ckpt.dir,
            "is already quantized (it has a quantize config or qweight tensors); lab quantize needs the fp16 original",
        ));
    }
    let cfg = &ckpt.config;
    let mut want: Vec<(String, Vec<usize>)> = vec![
        (
            "model.embed_tokens.weight".into(),
            vec![cfg.vocab_size, cfg.hidden_size],
        ),
        ("model.norm.weight".into(), vec![cfg.hidden_size]),
    ];
    let has_head = ckpt.tensor_meta("lm_head.weight").is_some();
    if has_head || !cfg.tie_word_embeddings {
        want.push((
            "lm_head.weight".into(),
            vec![cfg.vocab_size, cfg.hidden_size],
        ));
    }
    for i in 0..cfg.num_hidden_layers {
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            want.push((
                format!("model.layers.{i}.{norm}.weight"),
                vec![cfg.hidden_size],
            ));
        }
        for (name, k, n) in cfg.layer_linears() {
            want.push((format!("model.layers.{i}.{name}.weight"), vec![n, k]));
        }
    }
    for (name, shape) in want {
        let file = ckpt.tensor_file(&name).to_path_buf();
        match ckpt.tensor_meta(&name) {
            None => {
                return Err(LabError::bad_checkpoint(
                    file,
                    format!("missing tensor '{name}'"),
                ))
            }
            Some((dt, _)) if dt != Dtype::F16 => {
                return Err(LabError::bad_checkpoint(
                    file,
                    format!(
                        "tensor '{name}' is {dt:?}; lab quantize reads fp16 checkpoints only \
                         (GPTQ scales and the unquantized tensors are written as fp16)"
                    ),
                ))
            }
            Some((_, s)) if s != shape => {
                return Err(LabError::bad_checkpoint(
                    file,
                    format!("tensor '{name}' has shape {s:?}, expected {shape:?} from config.json"),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// One decoder layer's weights as f32 (the only layer held at a time).
pub(crate) fn load_layer(ckpt: &Checkpoint, i: usize) -> Result<LayerWeights> {
    let p = format!("model.layers.{i}");
    let dense = |name: &str| -> Result<Dense> {
        match ckpt.linear(&format!("{p}.{name}"))? {
            LinearWeights::Dense { k, n, w_kn } => Dense::new(k, n, w_kn, name),
            LinearWeights::Quant(_) => Err(LabError::bad_checkpoint(
                &ckpt.dir,
                format!("'{p}.{name}' is already quantized"),
            )),
        }
    };
    Ok(LayerWeights {
        attn_norm: ckpt.tensor_f32(&format!("{p}.input_layernorm.weight"))?.0,
        wq: dense("self_attn.q_proj")?,
        wk: dense("self_attn.k_proj")?,
        wv: dense("self_attn.v_proj")?,
        wo: dense("self_attn.o_proj")?,
        ffn_norm: ckpt
            .tensor_f32(&format!("{p}.post_attention_layernorm.weight"))?
            .0,
        w_gate: dense("mlp.gate_proj")?,
        w_up: dense("mlp.up_proj")?,
        w_down: dense("mlp.down_proj")?,
    })
}

/// Names of every tensor that is not a quantized linear, sorted. Rotary frequency buffers some
/// old checkpoints carry are dropped; loaders recompute them.
pub(crate) fn dense_names(ckpt: &Checkpoint, cfg: &ModelConfig) -> Vec<String> {
    let quantized: std::collections::HashSet<String> = (0..cfg.num_hidden_layers)
        .flat_map(|i| {
            cfg.layer_linears()
                .into_iter()
                .map(move |(name, _, _)| format!("model.layers.{i}.{name}.weight"))
        })
        .collect();
    ckpt.tensor_names()
        .into_iter()
        .filter(|n| !quantized.contains(n) && !n.ends_with("rotary_emb.inv_freq"))
        .collect()
}

/// One unquantized tensor as fp16 (exact: the source is fp16; anything else is refused).
pub(crate) fn dense_tensor(ckpt: &Checkpoint, name: &str) -> Result<DenseTensor> {
    if ckpt.tensor_meta(name).map(|m| m.0) != Some(Dtype::F16) {
        return Err(LabError::bad_checkpoint(
            ckpt.tensor_file(name),
            format!("tensor '{name}' is not fp16; lab quantize copies unquantized tensors as fp16 and will not convert them silently"),
        ));
    }
    let (v, shape) = ckpt.tensor_f32(name)?;
    Ok((
        name.to_string(),
        v.into_iter().map(f16::from_f32).collect(),
        shape,
    ))
}

/// Every tensor that is not a quantized linear, as fp16, all at once (the in-memory writer).
pub(crate) fn dense_tensors(ckpt: &Checkpoint, cfg: &ModelConfig) -> Result<Vec<DenseTensor>> {
    dense_names(ckpt, cfg)
        .iter()
        .map(|n| dense_tensor(ckpt, n))
        .collect()
}
