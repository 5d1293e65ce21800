//! Writing a GPTQ checkpoint that AutoGPTQ and transformers load: model.safetensors with
//! qweight I32 [k/8, n], qzeros I32 [groups, n/8], scales F16 [groups, n], g_idx I32 [k] (always,
//! as AutoGPTQ writes it), bias F16 [n]; quantize_config.json; config.json with
//! `quantization_config`. Zeros are stored v1 (zero - 1) by default, v2 on request.

use super::QuantInfo;
use crate::gptq::{group_rows, zeros, QuantLinear, ZeroFormat};
use crate::util::write_atomic;
use crate::{LabError, Result};
use half::f16;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|w| w.to_le_bytes()).collect()
}
fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|w| w.to_le_bytes()).collect()
}
fn f16_bytes(v: &[f16]) -> Vec<u8> {
    v.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Write `layers` (canonical, true zeros) and `dense` fp16 tensors (name, data, shape) into `dir`.
/// A missing `dir` is built in a sibling temp folder and renamed into place; an existing one gets
/// each file replaced atomically (weights first, configs last), and is refused if it holds other
/// weight files that a loader might pick instead.
pub fn write_gptq_checkpoint(
    dir: &Path,
    config_json: &serde_json::Value,
    layers: &[(String, QuantLinear)],
    dense: &[(String, Vec<f16>, Vec<usize>)],
    format: ZeroFormat,
    info: &QuantInfo,
) -> Result<()> {
    let bad = |r: String| LabError::bad_checkpoint(dir, r);
    if info.bits != 4 {
        return Err(bad(format!(
            "bits = {}; only 4-bit GPTQ can be written",
            info.bits
        )));
    }
    let Some(cfg_obj) = config_json.as_object() else {
        return Err(bad(
            "config_json must be a JSON object (the model's config.json)".into(),
        ));
    };

    let mut tensors: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
    let mut put = |name: String, t: (Dtype, Vec<usize>, Vec<u8>)| {
        if tensors.insert(name.clone(), t).is_some() {
            return Err(bad(format!("tensor '{name}' given twice")));
        }
        Ok(())
    };
    for (prefix, l) in layers {
        for (name, dt, shape, bytes) in encode_linear(dir, prefix, l, format, info)? {
            put(name, (dt, shape, bytes))?;
        }
    }
    for (name, data, shape) in dense {
        put(name.clone(), encode_dense(dir, name, data, shape)?)?;
    }
    let views = tensors
        .iter()
        .map(|(name, (dt, shape, bytes))| {
            TensorView::new(*dt, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| bad(format!("tensor '{name}': {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    // transformers refuses safetensors files whose metadata lacks format = "pt".
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let weights = safetensors::serialize(views, Some(meta))
        .map_err(|e| bad(format!("serializing model.safetensors: {e}")))?;

    let [qc, cfg] = config_files(cfg_obj, format, info);
    let files: [(&str, Vec<u8>); 3] = [("model.safetensors", weights), qc, cfg];

    if dir.exists() {
        refuse_other_weights(dir)?;
        for (name, bytes) in &files {
            write_atomic(&dir.join(name), bytes)?;
        }
        return Ok(());
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(|e| LabError::io(parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".gptq-checkpoint-")
        .tempdir_in(parent)
        .map_err(|e| LabError::io(parent, e))?;
    // The folder keeps the temp folder's mode: tempfile sets none, so it is a mkdir's under the
    // user's umask, as a folder the user made.
    for (name, bytes) in &files {
        std::fs::write(tmp.path().join(name), bytes)
            .map_err(|e| LabError::io(tmp.path().join(name), e))?;
    }
    crate::util::sync_files_in(tmp.path())?;
    let tmp_path = tmp.keep();
    crate::util::rename_durably(&tmp_path, dir).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&tmp_path);
    })
}

/// A loader prefers an index or another weights file over ours; refuse to leave them beside it.
fn refuse_other_weights(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(|e| LabError::io(dir, e))? {
        let p = e.map_err(|e| LabError::io(dir, e))?.path();
        let name = p.file_name().and_then(|s| s.to_str()).unwrap_or("");
        let other_st = name.ends_with(".safetensors") && name != "model.safetensors";
        if other_st || name == "model.safetensors.index.json" {
            return Err(LabError::bad_checkpoint(
                &p,
                "already in the output folder and would shadow or mix with the new model.safetensors; \
                 write to an empty or new folder",
            ));
        }
    }
    Ok(())
}

/// One tensor as stored: name, dtype, shape, little-endian bytes.
pub(crate) type Encoded = (String, Dtype, Vec<usize>, Vec<u8>);

/// Names, dtypes and shapes of the tensors a quantized linear [k, n] with `groups` groups is
/// stored as (no bias: LLaMA's linears have none). `encode_linear` produces exactly these, so a
/// file's header can be laid out before any layer is quantized.
pub(crate) fn linear_specs(
    prefix: &str,
    k: usize,
    n: usize,
    groups: usize,
) -> [(String, Dtype, Vec<usize>); 4] {
    [
        (format!("{prefix}.qweight"), Dtype::I32, vec![k / 8, n]),
        (format!("{prefix}.qzeros"), Dtype::I32, vec![groups, n / 8]),
        (format!("{prefix}.scales"), Dtype::F16, vec![groups, n]),
        (format!("{prefix}.g_idx"), Dtype::I32, vec![k]),
    ]
}

/// The tensors of one quantized linear, validated against `info` (`dir` names the output in
/// errors); zeros stored in `format`.
pub(crate) fn encode_linear(
    dir: &Path,
    prefix: &str,
    l: &QuantLinear,
    format: ZeroFormat,
    info: &QuantInfo,
) -> Result<Vec<Encoded>> {
    let bad = |r: String| LabError::bad_checkpoint(dir, r);
    l.validate()
        .map_err(|r| bad(format!("layer '{prefix}': {r}")))?;
    let g = group_rows(info.group_size, l.k).map_err(|r| bad(format!("layer '{prefix}': {r}")))?;
    if g != l.group_size {
        return Err(bad(format!(
            "layer '{prefix}' has group size {} but the quant info says {}",
            l.group_size, info.group_size
        )));
    }
    let n = l.n;
    let qzeros = match format {
        ZeroFormat::V2 => l.qzeros.clone(),
        ZeroFormat::V1 => zeros::v2_to_v1(&l.qzeros, n).map_err(|at| {
            bad(format!(
                "tensor '{prefix}.qzeros': true zero 0 at (group, column) {at:?} cannot be stored \
                 in v1 (\"gptq\") format, which stores zero - 1; write gptq_v2 instead"
            ))
        })?,
    };
    let [qw, qz, sc, gi] = linear_specs(prefix, l.k, n, l.groups());
    let mut out = vec![
        (qw.0, qw.1, qw.2, u32_bytes(&l.qweight)),
        (qz.0, qz.1, qz.2, u32_bytes(&qzeros)),
        (sc.0, sc.1, sc.2, f16_bytes(&l.scales)),
        (gi.0, gi.1, gi.2, i32_bytes(&l.g_idx_full())),
    ];
    if let Some(b) = &l.bias {
        out.push((format!("{prefix}.bias"), Dtype::F16, vec![n], f16_bytes(b)));
    }
    Ok(out)
}

/// An fp16 tensor's bytes, its element count checked against `shape`.
pub(crate) fn encode_dense(
    dir: &Path,
    name: &str,
    data: &[f16],
    shape: &[usize],
) -> Result<(Dtype, Vec<usize>, Vec<u8>)> {
    if shape.iter().product::<usize>() != data.len() {
        return Err(LabError::bad_checkpoint(
            dir,
            format!("tensor '{name}': {} values for shape {shape:?}", data.len()),
        ));
    }
    Ok((Dtype::F16, shape.to_vec(), f16_bytes(data)))
}

/// quantize_config.json, and config.json with `quantization_config` added, as file bytes.
pub(crate) fn config_files(
    cfg_obj: &serde_json::Map<String, serde_json::Value>,
    format: ZeroFormat,
    info: &QuantInfo,
) -> [(&'static str, Vec<u8>); 2] {
    let qc = info.to_json(format);
    let mut cfg = cfg_obj.clone();
    cfg.insert("quantization_config".into(), qc.clone());
    let json = |v: &serde_json::Value| {
        let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
        s.push('\n');
        s.into_bytes()
    };
    [
        ("quantize_config.json", json(&qc)),
        ("config.json", json(&serde_json::Value::Object(cfg))),
    ]
}
