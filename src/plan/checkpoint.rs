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
    /// Why the loader would refuse the folder's weights (`Checkpoint::open` and the header
    /// checks every engine runs before it allocates), if it would: the plan is then from the
    /// config alone, and says so.
    pub loader_refusal: Option<String>,
    /// The weights the folder holds are unquantized (fp16 / bf16 / f32 linears).
    pub unquantized: bool,
    /// What the loader says of the quant settings it took (`Checkpoint::notes`: defaults
    /// taken, values read from the tensors, a config that disagrees with a g_idx), for the plan to
    /// print as the engines would.
    pub notes: Vec<String>,
}

/// Read `dir/config.json` and the quantization settings the loader would read
/// (`model::checkpoint::quant_config::from_files`: quantize_config.json, else config.json's
/// `quantization_config`, with the loader's refusals: bits other than 4, other quant methods and
/// formats, the two files disagreeing). Where those leave the group size or act-order unsaid
/// (a GPTQ-for-LLaMa era folder, a config without `group_size`) and the folder holds weights,
/// the loader's reading of the tensors (`Checkpoint::open`: the scales' rows, the g_idx) gives
/// them, as it would at load. A group size that does not divide every linear's K is refused here
/// too, naming the file it came from, since no loader or kernel would take it.
pub fn read_checkpoint_dir(dir: &Path) -> Result<(ModelConfig, CheckpointQuant)> {
    let config_path = dir.join("config.json");
    let model = ModelConfig::from_json_file(&config_path)?;
    let config: serde_json::Value = crate::util::read_json(&config_path)?;
    let found = crate::model::checkpoint::quant_config::from_files(dir, &config)?;
    let all_stated = found
        .as_ref()
        .is_some_and(|f| f.stated.group_size && f.stated.desc_act);
    // What the config alone says: (settings, group size said, act-order said, the file).
    let from_config = |f: crate::model::checkpoint::quant_config::FoundQuant| {
        (f.info, f.stated.group_size, f.stated.desc_act, f.source)
    };
    let weights = holds_weights(dir);
    // The weights as the loader reads them: opened, and every tensor's header checked as the
    // engines do before they allocate. A folder the loader refuses (a partial download, 8-bit
    // tensors under a 4-bit config) is still planned from what its config says, and the refusal
    // goes with the plan.
    let opened = weights.then(|| crate::model::checkpoint::Checkpoint::open(dir));
    let loader_refusal = match &opened {
        Some(Err(e)) => Some(e.to_string()),
        Some(Ok(ck)) => {
            use crate::model::layer_source::{CheckpointLayers, LayerSource};
            CheckpointLayers::new(ck)
                .preflight(&ck.config)
                .err()
                .map(|e| e.to_string())
        }
        None => None,
    };
    // What the tensors say of group size and act-order is read even where a check above fails
    // (a non-zero bias, say): the plan is of the folder as its files describe it.
    let opened = opened.and_then(|r| r.ok());
    let unquantized = opened.as_ref().is_some_and(|ck| ck.quant.is_none());
    let notes = opened.as_ref().map_or_else(Vec::new, |ck| ck.notes());
    let unsaid = CheckpointQuant {
        loader_refusal: loader_refusal.clone(),
        unquantized,
        notes: notes.clone(),
        ..Default::default()
    };
    let (q, group_said, act_said, source) = match (found, opened) {
        (Some(f), _) if all_stated || !weights => from_config(f),
        // Unsaid fields read from the tensors, as the loader would.
        (found, Some(ck)) => match ck.quant.clone() {
            Some(q) => {
                let (g, a) = ck.group_and_order_known();
                (q, g, a, ck.quant_source().to_path_buf())
            }
            None => match found {
                Some(f) => from_config(f),
                None => return Ok((model, unsaid)),
            },
        },
        (Some(f), None) => from_config(f),
        (None, None) => return Ok((model, unsaid)),
    };
    if group_said {
        super::check_group(&model, q.group_size)
            .map_err(|r| LabError::bad_checkpoint(&source, r))?;
    }
    Ok((
        model,
        CheckpointQuant {
            // Unsaid and not read from tensors: the caller asks (AutoGPTQ's defaults would be a
            // guess about this folder).
            group_size: group_said.then_some(q.group_size),
            act_order: act_said.then_some(q.desc_act),
            source: Some(source),
            loader_refusal,
            unquantized,
            notes,
        },
    ))
}

/// Whether `dir` holds a .safetensors file (the planner reads folders with a config alone too).
fn holds_weights(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            e.path()
                .extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("safetensors"))
        })
    })
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
