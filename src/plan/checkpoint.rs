//! The planner's view of a checkpoint folder: model shape from config.json, quantization from
//! quantize_config.json (or config.json's `quantization_config`), and a per-kind byte summary of a
//! loaded checkpoint's tensors to compare against the planner's counts.

use super::bytes::PartBytes;
use crate::model::config::ModelConfig;
use crate::{LabError, Result};
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

/// Read `dir/config.json` and the quantization settings the loader would read
/// (`model::checkpoint::quant_config::from_files`: quantize_config.json, else config.json's
/// `quantization_config`, with the loader's refusals: bits other than 4, other quant methods and
/// formats, the two files disagreeing). A group size that does not divide every linear's K is
/// refused here too, naming the file it came from, since no loader or kernel would take it.
pub fn read_checkpoint_dir(dir: &Path) -> Result<(ModelConfig, CheckpointQuant)> {
    let config_path = dir.join("config.json");
    let model = ModelConfig::from_json_file(&config_path)?;
    let config: serde_json::Value = crate::util::read_json(&config_path)?;
    let Some(found) = crate::model::checkpoint::quant_config::from_files(dir, &config)? else {
        return Ok((model, CheckpointQuant::default()));
    };
    let q = &found.info;
    super::check_group(&model, q.group_size)
        .map_err(|r| LabError::bad_checkpoint(&found.source, r))?;
    Ok((
        model,
        CheckpointQuant {
            group_size: Some(q.group_size),
            act_order: Some(q.desc_act),
            source: Some(found.source),
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
