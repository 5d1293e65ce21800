//! The checkpoint's quantization settings: from quantize_config.json, or `quantization_config`
//! inside config.json, or (GPTQ-for-LLaMa era files with neither) inferred from the tensors.
//! Every default taken and every inference made is recorded in `QuantInfo::inferred`.

use super::files::{le_u32, to_i64, Files};
use crate::gptq::{gidx, group_rows, zeros, ZeroFormat};
use crate::{LabError, Result};
use safetensors::Dtype;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// AutoGPTQ's defaults (`BaseQuantizeConfig`: bits 4, group_size -1, desc_act true, sym true)
/// for fields a quantize config leaves out. A missing group_size or desc_act is then read from
/// the tensors where the checkpoint has them (`Checkpoint::open`): the scales' rows give the group
/// size exactly and a g_idx gives the row order, where the default would misread any file that
/// is not per-channel (and 128 / false, transformers' GPTQConfig defaults, any file that is).
const DEFAULT_BITS: u32 = 4;
const DEFAULT_GROUP_SIZE: i32 = -1;
const DEFAULT_DESC_ACT: bool = true;

#[derive(Debug, Clone, PartialEq)]
pub struct QuantInfo {
    pub bits: u32,
    /// -1 = per-channel.
    pub group_size: i32,
    pub desc_act: bool,
    pub sym: bool,
    pub static_groups: bool,
    pub format: ZeroFormat,
    /// Where the config names a writer that exports v1 by subtracting 0x11111111 from whole int32
    /// words (see `gptq::zeros`), that entry as "meta.quantizer 'gptqmodel:1.2.0'": its v1 zeros
    /// are read back by whole-word addition. `None`: no such writer named, v1 read nibble by
    /// nibble.
    pub whole_word_v1: Option<String>,
    /// Each default taken or value inferred, one line each, for the user to see.
    pub inferred: Vec<String>,
}

impl QuantInfo {
    /// Drop the note that `field` took AutoGPTQ's default (`parse`'s "'field' missing, ..."
    /// line): the value was read from the tensors or from the other config file instead.
    pub(crate) fn forget_default(&mut self, field: &str) {
        let note = format!("'{field}' missing, AutoGPTQ default");
        self.inferred.retain(|l| !l.contains(&note));
    }

    /// The JSON AutoGPTQ writes as quantize_config.json and transformers reads as
    /// `quantization_config` in config.json.
    pub fn to_json(&self, format: ZeroFormat) -> serde_json::Value {
        serde_json::json!({
            "bits": self.bits,
            "group_size": self.group_size,
            "damp_percent": 0.01,
            "desc_act": self.desc_act,
            "static_groups": self.static_groups,
            "sym": self.sym,
            "true_sequential": true,
            "quant_method": "gptq",
            "checkpoint_format": format.config_name(),
            "format": format.config_name(),
            "model_file_base_name": "model",
        })
    }
}

#[derive(Deserialize)]
struct RawQuant {
    bits: Option<u32>,
    group_size: Option<i32>,
    desc_act: Option<bool>,
    sym: Option<bool>,
    static_groups: Option<bool>,
    checkpoint_format: Option<String>,
    /// transformers >= 4.5x and GPTQModel name it `format` (`checkpoint_format` is the legacy
    /// name and wins when both are present, as in transformers' GPTQConfig).
    format: Option<String>,
    quant_method: Option<String>,
    /// GPTQModel's per-module overrides (bits, group size, skipped modules by regex).
    dynamic: Option<serde_json::Value>,
    /// AutoGPTQ's marlin repacking (tensors `B` / `s` instead of qweight / scales).
    is_marlin_format: Option<bool>,
    /// GPTQModel's word type for qweight / qzeros ("int32", as every other writer packs; int8,
    /// int16 and int64 pack 2, 4 or 16 codes per word). Any JSON shape: checked in `parse`.
    pack_dtype: Option<serde_json::Value>,
    /// Who wrote the file: `quantizer` (and AutoGPTQ's `packer`), "name:version" or a list of
    /// them. Any shape is accepted; only what `whole_word_writer` recognises is used.
    meta: Option<serde_json::Value>,
}

/// The writers whose v1 files are whole-word differences (`true - 0x11111111` per int32 word), by
/// the first version with their v2 code (`MIN_VERSION_WITH_V2` in each tool's source: GPTQModel
/// 0.9.0; "autogptq" 0.8.0-dev1, the name AutoGPTQ's unreleased v2-format development code
/// wrote, which no released AutoGPTQ (up to 0.7.1) did).
const WHOLE_WORD_WRITERS: [(&str, (u32, u32, u32)); 2] =
    [("gptqmodel", (0, 9, 0)), ("autogptq", (0, 8, 0))];

/// The first "name:version" in `meta.quantizer` (or `meta.packer`, which AutoGPTQ's v2 code also
/// wrote) that names a whole-word v1 writer at or above its first v2 version, as "meta.FIELD
/// 'ENTRY'". A writer below it, or an unreadable version, is not taken: the per-nibble reading
/// stands and an underflow is refused. A pre-release of the first version counts as it
/// (GPTQModel's own check would not take "0.9.0.dev0"); the two readings differ only on words
/// with a 0xF nibble, which such a writer's export makes exactly by borrowing.
fn whole_word_writer(meta: Option<&serde_json::Value>) -> Option<String> {
    let meta = meta?;
    let entries = ["quantizer", "packer"]
        .iter()
        .filter_map(|k| meta.get(*k).map(|v| (*k, v)))
        .flat_map(|(k, v)| match v {
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str())
                .map(|s| (k, s))
                .collect(),
            serde_json::Value::String(s) => vec![(k, s.as_str())],
            _ => Vec::new(),
        });
    for (field, entry) in entries {
        let Some((name, version)) = entry.split_once(':') else {
            continue;
        };
        let Some(min) = WHOLE_WORD_WRITERS
            .iter()
            .find(|(w, _)| name.trim().eq_ignore_ascii_case(w))
            .map(|&(_, min)| min)
        else {
            continue;
        };
        if release_triple(version).is_some_and(|v| v >= min) {
            return Some(format!("meta.{field} '{entry}'"));
        }
    }
    None
}

/// "1.2.3", "0.8.0-dev1", "0.9" -> (major, minor, patch) from the leading digits of the first three
/// dot-separated parts (a pre-release suffix is ignored; missing parts are 0). `None` when the
/// major part has no digits ("test", "").
fn release_triple(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.trim().split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next().flatten()?;
    let minor = parts.next().flatten().unwrap_or(0);
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

fn parse(value: &serde_json::Value, path: &Path, what: &str) -> Result<QuantInfo> {
    let raw: RawQuant = serde_json::from_value(value.clone())
        .map_err(|e| LabError::bad_checkpoint(path, format!("{what}: {e}")))?;
    let bad = |r: String| LabError::bad_checkpoint(path, format!("{what}: {r}"));
    if let Some(m) = &raw.quant_method {
        if !m.eq_ignore_ascii_case("gptq") {
            return Err(bad(format!(
                "quant_method '{m}' is not supported; expected 'gptq'"
            )));
        }
    }
    // Settings the whole file does not hold for every linear, or tensors in another layout:
    // each linear would be read with the file-wide settings and misread (or refused by shape,
    // naming neither field).
    if let Some((pattern, _)) = raw
        .dynamic
        .as_ref()
        .and_then(serde_json::Value::as_object)
        .and_then(|m| m.iter().next())
    {
        return Err(bad(format!(
            "'dynamic' per-module overrides (GPTQModel; first: '{pattern}') are not supported: \
             every linear must have the file's bits and group_size"
        )));
    }
    if raw.is_marlin_format == Some(true) {
        return Err(bad(
            "is_marlin_format: true (AutoGPTQ's marlin repacking, tensors B / s) is not supported; \
             use the GPTQ checkpoint it was converted from"
                .into(),
        ));
    }
    // Codes in words other than int32 have other tensor shapes and another bit order per word:
    // refused by this field rather than by a qweight shape the user cannot trace back to it.
    if let Some(p) = raw.pack_dtype.as_ref().filter(|p| !p.is_null()) {
        let name = p.as_str().map(|s| s.trim().to_ascii_lowercase());
        if !matches!(name.as_deref(), Some("int32" | "torch.int32")) {
            return Err(bad(format!(
                "pack_dtype {p} is not supported; expected \"int32\" (8 four-bit codes per int32 \
                 word, as AutoGPTQ and GPTQModel's default pack them): re-save with pack_dtype int32"
            )));
        }
    }
    let mut inferred = Vec::new();
    let mut default = |field: &str, v: String| {
        inferred.push(format!("{what}: '{field}' missing, AutoGPTQ default {v}"));
    };
    let bits = raw.bits.unwrap_or_else(|| {
        default("bits", DEFAULT_BITS.to_string());
        DEFAULT_BITS
    });
    let group_size = raw.group_size.unwrap_or_else(|| {
        default("group_size", DEFAULT_GROUP_SIZE.to_string());
        DEFAULT_GROUP_SIZE
    });
    let desc_act = raw.desc_act.unwrap_or_else(|| {
        default("desc_act", DEFAULT_DESC_ACT.to_string());
        DEFAULT_DESC_ACT
    });
    let sym = raw.sym.unwrap_or_else(|| {
        default("sym", "true".into());
        true
    });
    let static_groups = raw.static_groups.unwrap_or(false);
    // Lower-cased as transformers' GPTQConfig and GPTQModel read it ("GPTQ" is "gptq").
    let format_name = raw
        .checkpoint_format
        .as_deref()
        .or(raw.format.as_deref())
        .map(str::to_ascii_lowercase);
    let format = match format_name.as_deref() {
        None => {
            default("checkpoint_format", "\"gptq\" (v1 zeros)".into());
            ZeroFormat::V1
        }
        Some("gptq") => ZeroFormat::V1,
        Some("gptq_v2") => ZeroFormat::V2,
        Some(other) => {
            return Err(bad(format!(
                "checkpoint_format '{other}' is not supported; expected \"gptq\" or \"gptq_v2\" \
                 (\"marlin\" files are repacked for one kernel; convert from the gptq original)"
            )))
        }
    };
    let whole_word_v1 = match format {
        ZeroFormat::V1 => whole_word_writer(raw.meta.as_ref()),
        ZeroFormat::V2 => None,
    };
    check_bits(bits, path, what)?;
    if group_size != -1 && group_size <= 0 {
        return Err(bad(format!(
            "group_size {group_size}; expected -1 (per-channel) or a positive size"
        )));
    }
    Ok(QuantInfo {
        bits,
        group_size,
        desc_act,
        sym,
        static_groups,
        format,
        whole_word_v1,
        inferred,
    })
}

fn check_bits(bits: u32, path: &Path, what: &str) -> Result<()> {
    if bits != 4 {
        return Err(LabError::bad_checkpoint(
            path,
            format!("{what}: bits = {bits}; only 4-bit GPTQ is supported (the kernels unpack 8 codes per int32)"),
        ));
    }
    Ok(())
}

/// Which settings a quant config states itself rather than leaving to a default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stated {
    /// `sym` as stated. `true` is a promise about the stored zeros that the loader holds the
    /// tensors to; either value turns off the guess at a mislabelled symmetric file.
    pub sym: Option<bool>,
    /// `group_size` stated; else the loader reads it from the scales' rows.
    pub group_size: bool,
    /// `desc_act` stated; else the loader reads it from the g_idx (and a linear without one is in
    /// plain row order rather than refused).
    pub desc_act: bool,
}

impl Stated {
    fn of(v: &serde_json::Value) -> Self {
        Stated {
            sym: v.get("sym").and_then(serde_json::Value::as_bool),
            group_size: v.get("group_size").is_some_and(|g| !g.is_null()),
            desc_act: v.get("desc_act").is_some_and(|d| !d.is_null()),
        }
    }
}

/// What a checkpoint folder's quantize config says, and where it said it.
#[derive(Debug, Clone)]
pub(crate) struct FoundQuant {
    pub info: QuantInfo,
    /// What either file states explicitly (not AutoGPTQ's defaults).
    pub stated: Stated,
    /// quantize_config.json when it exists (it wins), else config.json.
    pub source: PathBuf,
}

/// quantize_config.json if present, else config.json's `quantization_config`; both present and
/// disagreeing on what the tensors mean is an error. `None` when neither exists.
pub(crate) fn from_files(dir: &Path, config: &serde_json::Value) -> Result<Option<FoundQuant>> {
    let qc_path = dir.join("quantize_config.json");
    let cfg_path = dir.join("config.json");
    let (from_cfg, cfg_stated) = match config.get("quantization_config") {
        Some(v) if !v.is_null() => (
            Some(parse(v, &cfg_path, "config.json quantization_config")?),
            Stated::of(v),
        ),
        _ => (None, Stated::default()),
    };
    if !crate::util::optional_file(&qc_path)? {
        return Ok(from_cfg.map(|mut info| {
            note_whole_word(&mut info, "config.json quantization_config");
            FoundQuant {
                info,
                stated: cfg_stated,
                source: cfg_path,
            }
        }));
    }
    let v: serde_json::Value = crate::util::read_json(&qc_path)?;
    let mut qc = parse(&v, &qc_path, "quantize_config.json")?;
    let mut stated = Stated::of(&v);
    if let Some(c) = &from_cfg {
        // desc_act and static_groups change what the tensors mean where there is no g_idx to
        // say it (desc_act decides the row order; static groups keep g_idx trivial): two files
        // that state them differently cannot both be right.
        let cfg_v = &config["quantization_config"];
        for field in ["desc_act", "static_groups"] {
            let (a, b) = (v.get(field), cfg_v.get(field));
            if let (Some(a), Some(b)) = (a.filter(|x| !x.is_null()), b.filter(|x| !x.is_null())) {
                if a != b {
                    return Err(LabError::bad_checkpoint(
                        &qc_path,
                        format!(
                            "disagrees with config.json quantization_config on {field}: {a} here but {b} there; fix one of them"
                        ),
                    ));
                }
            }
        }
        // A field only config.json states is config.json's: quantize_config.json's default for
        // it neither wins nor disagrees. Fields both state must agree.
        if cfg_stated.group_size && !stated.group_size {
            qc.group_size = c.group_size;
            qc.forget_default("group_size");
            stated.group_size = true;
        }
        if cfg_stated.desc_act && !stated.desc_act {
            qc.desc_act = c.desc_act;
            qc.forget_default("desc_act");
            stated.desc_act = true;
        }
        // static_groups stated only there: config.json's (transformers reads it from there).
        let stated_bool = |x: &serde_json::Value, f: &str| x.get(f).and_then(|b| b.as_bool());
        if let (Some(sg), None) = (
            stated_bool(cfg_v, "static_groups"),
            stated_bool(&v, "static_groups"),
        ) {
            qc.static_groups = sg;
        }
        if let (Some(sym), None) = (cfg_stated.sym, stated.sym) {
            qc.sym = sym;
            qc.forget_default("sym");
            stated.sym = Some(sym);
        }
        // Compared where config.json states them (quantize_config.json's now hold its values
        // where only config.json did); bits and the format always.
        let cfg_key = (
            c.bits,
            if cfg_stated.group_size {
                c.group_size
            } else {
                qc.group_size
            },
            if cfg_stated.sym.is_some() {
                c.sym
            } else {
                qc.sym
            },
            c.format,
        );
        let qc_key = (qc.bits, qc.group_size, qc.sym, qc.format);
        let cfg_states_format = ["checkpoint_format", "format"]
            .iter()
            .any(|f| cfg_v.get(*f).is_some_and(|x| !x.is_null()));
        if qc.format != c.format && !cfg_states_format {
            return Err(LabError::bad_checkpoint(
                &qc_path,
                format!(
                    "says checkpoint_format {:?}, but config.json's quantization_config states \
                     none, which transformers (it reads config.json only) takes as \"gptq\" (v1 \
                     zeros): state the same checkpoint_format in config.json too",
                    qc.format.config_name()
                ),
            ));
        }
        if cfg_key != qc_key {
            return Err(LabError::bad_checkpoint(
                &qc_path,
                format!(
                    "disagrees with config.json quantization_config on (bits, group_size, sym, \
                     format): {qc_key:?} vs {cfg_key:?}; fix one of them"
                ),
            ));
        }
    }
    // The writer may be named in either file (GPTQModel writes both); the formats agree here.
    let mut meta_in = "quantize_config.json";
    if qc.whole_word_v1.is_none() {
        if let Some(w) = from_cfg.and_then(|c| c.whole_word_v1) {
            qc.whole_word_v1 = Some(w);
            meta_in = "config.json quantization_config";
        }
    }
    note_whole_word(&mut qc, meta_in);
    Ok(Some(FoundQuant {
        info: qc,
        stated,
        source: qc_path,
    }))
}

/// Say that an asymmetric v1 file is read by whole-word addition, and which file's meta said so
/// (symmetric zeros are 8 everywhere, where both readings agree).
fn note_whole_word(q: &mut QuantInfo, meta_in: &str) {
    if let (Some(w), false) = (&q.whole_word_v1, q.sym) {
        q.inferred.push(format!(
            "{meta_in}: {w} exports v1 by subtracting 0x11111111 from whole int32 \
             words, so its zeros are read back by whole-word addition (a true zero of 0 borrows \
             from the nibble above)"
        ));
    }
}

/// Infer the settings of a GPTQ-for-LLaMa era checkpoint from one quantized linear `prefix`
/// whose in_features is `k` (from the model config).
pub(crate) fn infer(files: &Files, prefix: &str, k: usize) -> Result<QuantInfo> {
    let qw = format!("{prefix}.qweight");
    let path = files.path_of(&qw).to_path_buf();
    let bad = |r: String| LabError::bad_checkpoint(&path, r);
    let what = "no quantize config";
    let mut inferred = vec![format!(
        "{what}: settings inferred from the tensors of {prefix} (K = {k})"
    )];
    let info = |name: &str| {
        files.info(name).ok_or_else(|| {
            bad(format!(
                "missing tensor '{name}' (needed to infer the quantization)"
            ))
        })
    };
    let rows = *info(&qw)?.shape.first().unwrap_or(&0);
    // A header may claim any row count (a zero-sized tensor is still a valid file): checked, so
    // a huge one is refused by name rather than wrapping into a plausible bit width.
    let bits = rows
        .checked_mul(32)
        .filter(|r| r % k == 0)
        .and_then(|r| u32::try_from(r / k).ok())
        .ok_or_else(|| {
            bad(format!(
                "tensor '{qw}': {rows} rows do not match any bit width for K = {k} (rows = K * bits / 32)"
            ))
        })?;
    check_bits(
        bits,
        &path,
        &format!("tensor '{qw}' ({rows} rows for K = {k})"),
    )?;
    inferred.push(format!(
        "bits = {bits} from {qw} rows ({rows} = K * bits / 32)"
    ));

    let (group_size, line) = group_size_from_scales(files, prefix, k)?;
    inferred.push(line);
    let (desc_act, line) = desc_act_from_g_idx(files, prefix, k, group_size)?;
    inferred.push(line);

    let qz = format!("{prefix}.qzeros");
    let raw = files.get(&qz, &[Dtype::I32, Dtype::U32], None)?;
    let sym = zeros::is_symmetric_v1(&le_u32(raw.bytes));
    inferred.push(format!(
        "sym = {sym} from {qz} ({})",
        if sym {
            "every word 0x77777777"
        } else {
            "not every word 0x77777777"
        }
    ));
    inferred
        .push("checkpoint_format = \"gptq\" (v1 zeros, as every tool of that era wrote)".into());
    Ok(QuantInfo {
        bits,
        group_size,
        desc_act,
        sym,
        static_groups: false,
        format: ZeroFormat::V1,
        whole_word_v1: None,
        inferred,
    })
}

/// The group size of linear `prefix` (in_features `k`) from its scales' rows (K / group_size; one
/// row: per-channel, -1), with the line that says so.
pub(crate) fn group_size_from_scales(
    files: &Files,
    prefix: &str,
    k: usize,
) -> Result<(i32, String)> {
    let sc = format!("{prefix}.scales");
    let info = files.info(&sc).ok_or_else(|| {
        LabError::bad_checkpoint(
            files.path_of(&format!("{prefix}.qweight")),
            format!("missing tensor '{sc}' (needed to infer the group size)"),
        )
    })?;
    let bad = |r: String| LabError::bad_checkpoint(files.path_of(&sc), r);
    let groups = *info.shape.first().unwrap_or(&0);
    let group_size = match groups {
        0 => return Err(bad(format!("tensor '{sc}' has no rows"))),
        1 => -1,
        g if k % g == 0 => (k / g) as i32,
        g => {
            return Err(bad(format!(
                "tensor '{sc}': {g} rows imply a group size that does not divide K = {k}; \
                 expected K / group_size rows"
            )))
        }
    };
    Ok((
        group_size,
        format!("group_size = {group_size} from {sc} rows ({groups})"),
    ))
}

/// Whether linear `prefix` is act-order: its g_idx present, valid and not the plain k / G (which
/// is what a linear without one reads as), with the line that says so.
pub(crate) fn desc_act_from_g_idx(
    files: &Files,
    prefix: &str,
    k: usize,
    group_size: i32,
) -> Result<(bool, String)> {
    let gi = format!("{prefix}.g_idx");
    if !files.contains(&gi) {
        return Ok((
            false,
            format!("desc_act = false: {gi} absent, so g_idx = k / group_size"),
        ));
    }
    let g_rows =
        group_rows(group_size, k).map_err(|r| LabError::bad_checkpoint(files.path_of(&gi), r))?;
    let raw = files.get(&gi, &[Dtype::I32, Dtype::I64], Some(&[k]))?;
    let v: Vec<i32> = to_i64(&raw).into_iter().map(|x| x as i32).collect();
    let act = gidx::validate_g_idx(&v, k, k / g_rows).is_ok() && gidx::is_act_order(&v, g_rows);
    Ok((act, format!("desc_act = {act} from {gi}")))
}
