//! The output side of `lab quantize`: a staging folder beside `--out` made before any work (so an
//! unwritable destination fails at once), the checkpoint written there complete (weights, configs
//! with the settings used, the source's tokenizer files), then renamed into place. An error drops
//! the staging folder with everything in it; nothing partial ever sits at `--out`.

use super::pipeline::{Method, QuantizeOptions, QuantizedModel};
use super::source::dense_tensors;
use crate::gptq::GptqParams;
use crate::model::checkpoint::{write_gptq_checkpoint, Checkpoint, QuantInfo};
use crate::{LabError, Result};
use std::path::{Path, PathBuf};

/// Files copied beside the weights when the source has them (tokenizer and generation settings).
const SIDE_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// Write `m` as a complete checkpoint folder `dir` (which must not exist): weights, configs with
/// the settings used, and the source's tokenizer files.
pub fn write_model(
    ckpt: &Checkpoint,
    m: &QuantizedModel,
    o: &QuantizeOptions,
    dir: &Path,
) -> Result<()> {
    let dense = dense_tensors(ckpt, &ckpt.config)?;
    let info = QuantInfo {
        bits: 4,
        group_size: m.params.group_size,
        desc_act: m.params.act_order,
        sym: m.params.sym,
        static_groups: m.params.static_groups,
        format: o.format,
        inferred: Vec::new(),
    };
    let cfg_path = ckpt.dir.join("config.json");
    let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| LabError::io(&cfg_path, e))?;
    let cfg_json: serde_json::Value =
        serde_json::from_str(&cfg_text).map_err(|e| LabError::Json {
            path: cfg_path.clone(),
            source: e,
        })?;
    write_gptq_checkpoint(dir, &cfg_json, &m.layers, &dense, o.format, &info)?;
    record_settings(dir, &m.params, o.method)?;
    for f in SIDE_FILES {
        let src = ckpt.dir.join(f);
        if src.is_file() {
            std::fs::copy(&src, dir.join(f)).map_err(|e| LabError::io(&src, e))?;
        }
    }
    Ok(())
}

/// `out` must not exist or be an empty folder; a staging folder is made beside it now, so an
/// unwritable destination fails before hours of work. Dropped on error, it takes the partial
/// output with it.
pub(crate) fn prepare_out(out: &Path) -> Result<tempfile::TempDir> {
    if out.exists() {
        if !out.is_dir() {
            return Err(LabError::invalid(
                "--out",
                format!("{} exists and is not a folder", out.display()),
            ));
        }
        let mut entries = std::fs::read_dir(out).map_err(|e| LabError::io(out, e))?;
        if entries.next().is_some() {
            return Err(LabError::invalid(
                "--out",
                format!(
                    "{} is not empty; lab quantize writes a whole new checkpoint into a new or empty folder",
                    out.display()
                ),
            ));
        }
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| {
        LabError::invalid("--out", format!("cannot create {}: {e}", parent.display()))
    })?;
    tempfile::Builder::new()
        .prefix(".lab-quantize-")
        .tempdir_in(&parent)
        .map_err(|e| {
            LabError::invalid(
                "--out",
                format!("{} is not writable: {e}", parent.display()),
            )
        })
}

/// Move the finished checkpoint to `out` (an empty `out` folder is replaced).
pub(crate) fn publish(built: &Path, out: &Path) -> Result<()> {
    if out.is_dir() {
        std::fs::remove_dir(out).map_err(|e| {
            LabError::invalid(
                "--out",
                format!(
                    "{} could not be replaced (no longer empty?): {e}",
                    out.display()
                ),
            )
        })?;
    }
    std::fs::rename(built, out).map_err(|e| LabError::io(out, e))
}

/// The writer's quantize config carries AutoGPTQ's default damp; record the one used.
fn record_settings(dir: &Path, p: &GptqParams, method: Method) -> Result<()> {
    let patch = |v: &mut serde_json::Value| {
        if let Some(m) = v.as_object_mut() {
            m.insert("damp_percent".into(), p.damp_percent.into());
            m.insert("true_sequential".into(), true.into());
            let name = match method {
                Method::Gptq => "gptq-lab gptq",
                Method::Rtn => "gptq-lab rtn",
            };
            m.insert("quantizer".into(), name.into());
        }
    };
    for (file, key) in [
        ("quantize_config.json", None),
        ("config.json", Some("quantization_config")),
    ] {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).map_err(|e| LabError::io(&path, e))?;
        let mut v: serde_json::Value = serde_json::from_str(&text).map_err(|e| LabError::Json {
            path: path.clone(),
            source: e,
        })?;
        match key {
            None => patch(&mut v),
            Some(k) => {
                if let Some(q) = v.get_mut(k) {
                    patch(q)
                }
            }
        }
        let mut s = serde_json::to_string_pretty(&v).map_err(|e| LabError::Json {
            path: path.clone(),
            source: e,
        })?;
        s.push('\n');
        // A plain write: the folder is private staging until `publish` renames it.
        std::fs::write(&path, s).map_err(|e| LabError::io(&path, e))?;
    }
    Ok(())
}
