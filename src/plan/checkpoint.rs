//! The planner's view of a checkpoint folder: model shape from config.json, quantization from
//! quantize_config.json (or config.json's `quantization_config`), and a per-kind byte summary of a
//! loaded checkpoint's tensors to compare against the planner's counts.

use super::bytes::PartBytes;
use crate::model::config::ModelConfig;
use crate::{LabError, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Quantization settings found in a checkpoint folder; None where the folder does not say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckpointQuant {
    pub group_size: Option<i32>,
    pub act_order: Option<bool>,
    /// The file these came from, if any (2023 checkpoints often have none).
    pub source: Option<PathBuf>,
}

#[derive(Deserialize)]
struct RawQuant {
    bits: Option<u32>,
    group_size: Option<i32>,
    desc_act: Option<bool>,
}

#[derive(Deserialize)]
struct RawConfigQuant {
    quantization_config: Option<RawQuant>,
}

/// Read `dir/config.json` and, if present, `dir/quantize_config.json` (preferred) or config.json's
/// `quantization_config`. Bits other than 4 are refused: this lab only knows 4-bit layouts.
pub fn read_checkpoint_dir(dir: &Path) -> Result<(ModelConfig, CheckpointQuant)> {
    let config_path = dir.join("config.json");
    let model = ModelConfig::from_json_file(&config_path)?;
    let qc_path = dir.join("quantize_config.json");
    let (raw, source) = if qc_path.is_file() {
        (Some(crate::util::read_json::<RawQuant>(&qc_path)?), qc_path)
    } else {
        let c: RawConfigQuant = crate::util::read_json(&config_path)?;
        (c.quantization_config, config_path)
    };
    let Some(raw) = raw else {
        return Ok((model, CheckpointQuant::default()));
    };
    if let Some(bits) = raw.bits.filter(|&b| b != 4) {
        return Err(LabError::bad_checkpoint(
            &source,
            format!("bits = {bits}; only 4-bit GPTQ checkpoints are supported"),
        ));
    }
    Ok((
        model,
        CheckpointQuant {
            group_size: raw.group_size,
            act_order: raw.desc_act,
            source: Some(source),
        },
    ))
}

/// Bytes by kind from a loaded checkpoint's tensors (state-dict name -> byte size). The hook for
/// testing the planner against a real checkpoint: its fields compare one to one with
/// `Plan::weights.parts` (the file always stores g_idx when present, the plan counts it only with
/// act-order; tensors the planner does not model, like old `rotary_emb.inv_freq` buffers or biases,
/// land in `other`).
pub fn plan_from_tensor_bytes(tensors: &BTreeMap<String, u64>) -> PartBytes {
    let mut p = PartBytes::default();
    for (name, &bytes) in tensors {
        let slot = if name.ends_with(".qweight") {
            &mut p.qweight
        } else if name.ends_with(".qzeros") {
            &mut p.qzeros
        } else if name.ends_with(".scales") {
            &mut p.scales
        } else if name.ends_with(".g_idx") {
            &mut p.g_idx
        } else if name.ends_with("embed_tokens.weight") {
            &mut p.embeddings
        } else if name.ends_with("lm_head.weight") {
            &mut p.lm_head
        } else if name.ends_with("norm.weight") {
            &mut p.norms
        } else if name.ends_with("_proj.weight") {
            &mut p.fp16_linear
        } else {
            &mut p.other
        };
        *slot += bytes;
    }
    p
}
