//! Finding and mapping the safetensors files of a checkpoint directory, and reading one tensor's
//! raw bytes with its dtype and shape checked. Pickles are refused, never opened.

use crate::{LabError, Result};
use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensorError, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// File names that hold pickled PyTorch state dicts.
const PICKLE_EXTS: [&str; 4] = ["pt", "pth", "bin", "ckpt"];

/// One memory-mapped safetensors file with its parsed header.
pub(crate) struct Shard {
    pub path: PathBuf,
    mmap: Mmap,
    /// Byte offset of the data section: 8 (header length) + header.
    data_start: usize,
    meta: Metadata,
}

impl Shard {
    fn open(path: &Path) -> Result<Shard> {
        let bad = |r: String| LabError::bad_checkpoint(path, r);
        let file = std::fs::File::open(path).map_err(|e| LabError::io(path, e))?;
        let len = file.metadata().map_err(|e| LabError::io(path, e))?.len();
        if len < 8 {
            return Err(bad(format!(
                "not a safetensors file: {len} bytes, expected at least the 8-byte header length (truncated?)"
            )));
        }
        // SAFETY: the map is read-only and lives as long as the Shard. If another process
        // truncates or rewrites the file while it is mapped, reads may fault or see new bytes;
        // that is the usual contract of every mmap-based checkpoint loader.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| LabError::io(path, e))?;
        if looks_pickled(&mmap) {
            return Err(bad(format!(
                "this is a pickled PyTorch file with a .safetensors name; refused. {}",
                convert_hint(path)
            )));
        }
        let (n, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| {
            // Some of the crate's validation errors do not say which tensor is at fault.
            let why = match &e {
                SafeTensorError::TensorInvalidInfo
                | SafeTensorError::ValidationOverflow
                | SafeTensorError::MisalignedSlice
                | SafeTensorError::MetadataIncompleteBuffer => {
                    bad_tensor_in_header(&mmap).unwrap_or_else(|| e.to_string())
                }
                _ => e.to_string(),
            };
            bad(format!(
                "not a valid safetensors file ({why}); expected an 8-byte little-endian header length, \
                 a JSON header and exactly the data it describes (truncated or corrupted download?)"
            ))
        })?;
        // The crate keeps the last of a tensor named twice; which entry the writer meant is not
        // known, so the file is refused naming the tensor.
        if let Some(name) = crate::util::duplicate_json_key(&mmap[8..8 + n]) {
            return Err(bad(format!(
                "the header gives key '{name}' twice; expected each tensor once (a corrupted \
                 or hand-made file)"
            )));
        }
        Ok(Shard {
            path: path.to_path_buf(),
            mmap,
            data_start: 8 + n,
            meta,
        })
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.meta.info(name)
    }

    fn bytes(&self, info: &TensorInfo) -> &[u8] {
        // read_metadata checked that every offset range lies inside the data section.
        let (a, b) = info.data_offsets;
        &self.mmap[self.data_start + a..self.data_start + b]
    }
}

/// The first tensor (in data order) whose header entry the data cannot back: offsets that do not
/// match its dtype and shape, or that run past the end of the file. Only called after the header
/// itself parsed, to name the tensor in the safetensors crate's anonymous validation errors.
fn bad_tensor_in_header(b: &[u8]) -> Option<String> {
    let n = usize::try_from(u64::from_le_bytes(b.get(..8)?.try_into().ok()?)).ok()?;
    let header = std::str::from_utf8(b.get(8..8usize.checked_add(n)?)?).ok()?;
    let data_len = b.len() - 8 - n;
    let raw: HashMap<String, serde_json::Value> = serde_json::from_str(header).ok()?;
    let mut tensors: Vec<(String, TensorInfo)> = raw
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .filter_map(|(k, v)| Some((k, serde_json::from_value(v).ok()?)))
        .collect();
    tensors.sort_by_key(|t| t.1.data_offsets);
    let mut end = 0;
    for (name, t) in &tensors {
        let (s, e) = t.data_offsets;
        end = e;
        let need = t
            .shape
            .iter()
            .try_fold(t.dtype.bitsize(), |a, &d| a.checked_mul(d))
            .map(|bits| bits.div_ceil(8));
        let mut why = Vec::new();
        if need != e.checked_sub(s) {
            why.push(format!(
                "data_offsets [{s}, {e}] do not hold the {} bytes of dtype {:?} shape {:?}",
                need.map_or("(overflowing)".into(), |b| b.to_string()),
                t.dtype,
                t.shape
            ));
        }
        if e > data_len {
            why.push(format!(
                "its data would end at byte {e} of a {data_len}-byte data section"
            ));
        }
        if !why.is_empty() {
            return Some(format!("tensor '{name}': {}", why.join("; ")));
        }
    }
    (end != data_len)
        .then(|| format!("the tensors' data ends at byte {end} of a {data_len}-byte data section"))
}

/// PyTorch zip archives start with "PK\x03\x04"; raw pickles with protocol opcode 0x80, 2..=5.
fn looks_pickled(b: &[u8]) -> bool {
    b.starts_with(b"PK\x03\x04") || (b.len() >= 2 && b[0] == 0x80 && (2..=5).contains(&b[1]))
}

/// How to turn a pickled checkpoint into safetensors, outside the lab.
pub(crate) fn convert_hint(path: &Path) -> String {
    let stem = path.with_extension("safetensors");
    format!(
        "Loading a pickle can run arbitrary code, so the lab never unpickles. Convert it once, in a \
         Python environment you trust:\n  python -c \"import torch; from safetensors.torch import \
         save_file; sd = torch.load('{}', map_location='cpu', weights_only=True); sd = \
         sd.get('state_dict', sd); save_file({{k: v.contiguous() for k, v in sd.items()}}, '{}', \
         metadata={{'format': 'pt'}})\"",
        path.display(),
        stem.display()
    )
}

/// All safetensors files of a checkpoint, and which one holds each tensor.
pub(crate) struct Files {
    pub shards: Vec<Shard>,
    where_: HashMap<String, usize>,
}

/// A tensor's bytes and where they came from, after the dtype/shape checks.
pub(crate) struct Raw<'a> {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: &'a [u8],
}

impl Files {
    /// `path` is a checkpoint folder or one .safetensors file in it. Order: the index or file the
    /// quant config's `model_file_base_name` names (as AutoGPTQ looks them up; refused beside a
    /// model.safetensors[.index.json], which transformers would load instead), then the shard
    /// index `model.safetensors.index.json` or `model.safetensors` (both: only when the index
    /// names that file alone), then the folder's only *.safetensors.index.json, then its only
    /// *.safetensors file (GPTQ-for-LLaMa names like vicuna-13b-4bit-128g.safetensors).
    pub fn open(path: &Path) -> Result<(PathBuf, Files)> {
        if path.is_file() {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf();
            if has_ext(path, &PICKLE_EXTS) {
                return Err(refuse_pickles(path, &[path.to_path_buf()]));
            }
            return Ok((dir, Self::from_shards(vec![path.to_path_buf()])?));
        }
        if !path.is_dir() {
            return Err(LabError::bad_checkpoint(
                path,
                "no such checkpoint folder or .safetensors file",
            ));
        }
        let index = path.join("model.safetensors.index.json");
        let single = path.join("model.safetensors");
        // What the quant config's model_file_base_name names, when it is not "model" and exists:
        // AutoGPTQ loads that (its index first) and looks at nothing else.
        let named = model_file_base_name(path)
            .filter(|b| b != "model")
            .and_then(|b| {
                [
                    path.join(format!("{b}.safetensors.index.json")),
                    path.join(format!("{b}.safetensors")),
                ]
                .into_iter()
                .find(|p| p.is_file())
            });
        if let Some(named) = &named {
            let model = [&index, &single].into_iter().find(|p| p.is_file());
            if let Some(model) = model {
                return Err(LabError::bad_checkpoint(
                    path,
                    format!(
                        "the quant config's model_file_base_name names {} but {} is here too: two \
                         sets of weights (AutoGPTQ would load the named one, transformers \
                         model.safetensors); remove the stale one",
                        named.file_name().unwrap_or_default().to_string_lossy(),
                        model.file_name().unwrap_or_default().to_string_lossy()
                    ),
                ));
            }
            return Ok((
                path.to_path_buf(),
                if named.to_string_lossy().ends_with(".index.json") {
                    Self::from_index(named)?
                } else {
                    Self::from_shards(vec![named.clone()])?
                },
            ));
        }
        match (index.is_file(), single.is_file()) {
            (true, true) => {
                // transformers loads model.safetensors and ignores the index; tools that look for
                // the index load its shards. Where the index names other files, which set is
                // meant cannot be told: refused rather than picked.
                let others: Vec<String> = read_index(&index)?
                    .weight_map
                    .into_values()
                    .filter(|f| f != "model.safetensors")
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                if !others.is_empty() {
                    return Err(LabError::bad_checkpoint(
                        path,
                        format!(
                            "holds both model.safetensors and model.safetensors.index.json, which \
                             names other shards {others:?}: two sets of weights (transformers \
                             would load model.safetensors, sharded loaders the index); remove \
                             the stale one"
                        ),
                    ));
                }
                return Ok((path.to_path_buf(), Self::from_index(&index)?));
            }
            (true, false) => return Ok((path.to_path_buf(), Self::from_index(&index)?)),
            (false, true) => return Ok((path.to_path_buf(), Self::from_shards(vec![single])?)),
            (false, false) => {}
        }
        let mut st = Vec::new();
        let mut pickles = Vec::new();
        // Other index names: AutoGPTQ / GPTQModel write `{model_file_base_name}.safetensors
        // .index.json` (gptq_model-4bit-128g-0000N-of-0000M shards).
        let mut indexes = Vec::new();
        for e in std::fs::read_dir(path).map_err(|e| LabError::io(path, e))? {
            let p = e.map_err(|e| LabError::io(path, e))?.path();
            if p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".safetensors.index.json"))
                && p.is_file()
            {
                indexes.push(p);
            } else if has_ext(&p, &["safetensors"]) {
                // Mapping a directory fails with a bare ENODEV; say what is wrong instead (and
                // for a link that leads nowhere, what following it said).
                match std::fs::metadata(&p) {
                    Ok(m) if m.is_file() => {}
                    Ok(_) => {
                        return Err(LabError::bad_checkpoint(
                            &p,
                            "is a directory (or not a regular file) where a safetensors weights file was expected",
                        ))
                    }
                    Err(e) => return Err(LabError::io(&p, e)),
                }
                st.push(p);
            } else if has_ext(&p, &PICKLE_EXTS) && p.is_file() {
                pickles.push(p);
            }
        }
        st.sort();
        indexes.sort();
        match indexes.len() {
            0 => {}
            1 => return Ok((path.to_path_buf(), Self::from_index(&indexes[0])?)),
            _ => {
                return Err(LabError::bad_checkpoint(
                    path,
                    format!(
                        "{} shard indexes, none of them model.safetensors.index.json or named by \
                         the quant config's model_file_base_name: {:?}; remove the stale ones",
                        indexes.len(),
                        indexes
                            .iter()
                            .filter_map(|p| p.file_name())
                            .collect::<Vec<_>>()
                    ),
                ))
            }
        }
        match st.len() {
            1 => Ok((path.to_path_buf(), Self::from_shards(st)?)),
            0 if !pickles.is_empty() => Err(refuse_pickles(path, &pickles)),
            0 => Err(LabError::bad_checkpoint(
                path,
                "no model.safetensors, model.safetensors.index.json or other *.safetensors file here",
            )),
            _ => Err(LabError::bad_checkpoint(
                path,
                format!(
                    "{} .safetensors files and no *.safetensors.index.json naming the shards: {:?}; \
                     pass the one to load as --checkpoint FILE, name it (without .safetensors) \
                     as model_file_base_name in quantize_config.json, or add the shard index",
                    st.len(),
                    st.iter().filter_map(|p| p.file_name()).collect::<Vec<_>>()
                ),
            )),
        }
    }

    fn from_index(index: &Path) -> Result<Files> {
        let idx = read_index(index)?;
        let dir = index.parent().unwrap_or(Path::new("."));
        if idx.weight_map.is_empty() {
            return Err(LabError::bad_checkpoint(
                index,
                "weight_map is empty; expected every tensor name mapped to the shard file holding it",
            ));
        }
        // Shards live in the checkpoint folder: a name with a path in it could open any file.
        if let Some((t, f)) = idx.weight_map.iter().find(|(_, f)| !plain_file_name(f)) {
            return Err(LabError::bad_checkpoint(
                index,
                format!(
                    "weight_map entry '{t}': shard '{f}' is not a plain file name; expected a file \
                     in the checkpoint folder (no path separators, '..' or absolute paths)"
                ),
            ));
        }
        let mut names: Vec<&String> = idx.weight_map.values().collect();
        names.sort();
        names.dedup();
        let shards: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
        for s in &shards {
            if !s.is_file() {
                let what = if s.is_dir() {
                    "which is a directory, not a safetensors file"
                } else {
                    "which does not exist"
                };
                return Err(LabError::bad_checkpoint(
                    index,
                    format!("weight_map names shard {} {what}", s.display()),
                ));
            }
        }
        let files = Self::from_shards(shards)?;
        for (t, f) in &idx.weight_map {
            match files.where_.get(t) {
                Some(&i) if files.shards[i].path == dir.join(f) => {}
                _ => {
                    return Err(LabError::bad_checkpoint(
                        dir.join(f),
                        format!(
                            "tensor '{t}' is listed in {} for this shard but is not in it",
                            index.display()
                        ),
                    ))
                }
            }
        }
        Ok(files)
    }

    fn from_shards(paths: Vec<PathBuf>) -> Result<Files> {
        let mut shards = Vec::new();
        let mut where_ = HashMap::new();
        for p in paths {
            let s = Shard::open(&p)?;
            for name in s.meta.tensors().keys() {
                if let Some(prev) = where_.insert(name.clone(), shards.len()) {
                    let prev: &Shard = &shards[prev];
                    return Err(LabError::bad_checkpoint(
                        &p,
                        format!("tensor '{name}' is also in {}", prev.path.display()),
                    ));
                }
            }
            shards.push(s);
        }
        Ok(Files { shards, where_ })
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.where_.keys().cloned().collect();
        v.sort();
        v
    }

    pub fn contains(&self, name: &str) -> bool {
        self.where_.contains_key(name)
    }

    /// The file a tensor lives in, or the first shard (for messages about missing tensors).
    pub fn path_of(&self, name: &str) -> &Path {
        let i = self.where_.get(name).copied().unwrap_or(0);
        &self.shards[i].path
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.where_
            .get(name)
            .and_then(|&i| self.shards[i].info(name))
    }

    /// A tensor that must exist, with its dtype one of `dtypes` and, if given, its shape.
    pub fn get(&self, name: &str, dtypes: &[Dtype], shape: Option<&[usize]>) -> Result<Raw<'_>> {
        let Some(&i) = self.where_.get(name) else {
            return Err(LabError::bad_checkpoint(
                self.path_of(name),
                format!("missing tensor '{name}'"),
            ));
        };
        let shard = &self.shards[i];
        let info = shard.info(name).ok_or_else(|| {
            LabError::bad_checkpoint(&shard.path, format!("missing tensor '{name}'"))
        })?;
        if !dtypes.contains(&info.dtype) {
            return Err(LabError::bad_checkpoint(
                &shard.path,
                format!(
                    "tensor '{name}': dtype {:?}, expected {}",
                    info.dtype,
                    dtypes
                        .iter()
                        .map(|d| format!("{d:?}"))
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            ));
        }
        if let Some(s) = shape {
            if info.shape != s {
                return Err(LabError::bad_checkpoint(
                    &shard.path,
                    format!("tensor '{name}': shape {:?}, expected {s:?}", info.shape),
                ));
            }
        }
        Ok(Raw {
            dtype: info.dtype,
            shape: info.shape.clone(),
            bytes: shard.bytes(info),
        })
    }
}

#[derive(serde::Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

fn read_index(index: &Path) -> Result<Index> {
    crate::util::read_json(index)
}

/// The weights' base name the quant config states (`model_file_base_name`: AutoGPTQ writes
/// "gptq_model-4bit-128g" and looks for that name's index, then its file), from
/// quantize_config.json, else config.json's quantization_config. Only a plain file name is taken;
/// an unreadable config gives none here (the quant config's own reading names the file).
fn model_file_base_name(dir: &Path) -> Option<String> {
    let read = |f: &str| -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(dir.join(f)).ok()?).ok()
    };
    let from_qc = read("quantize_config.json")
        .and_then(|v| v.get("model_file_base_name")?.as_str().map(String::from));
    let base = from_qc.or_else(|| {
        read("config.json").and_then(|v| {
            v.get("quantization_config")?
                .get("model_file_base_name")?
                .as_str()
                .map(String::from)
        })
    })?;
    plain_file_name(&base).then_some(base)
}

/// A name that stays in the checkpoint folder when joined to it: no path separators, not `.` or
/// `..`, not absolute (a shard or base name with a path in it could open any file).
fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(['/', '\\'])
        && name != "."
        && name != ".."
        && !Path::new(name).is_absolute()
}

fn has_ext(p: &Path, exts: &[&str]) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn refuse_pickles(at: &Path, pickles: &[PathBuf]) -> LabError {
    LabError::bad_checkpoint(
        at,
        format!(
            "only pickled PyTorch weights found ({:?}), no .safetensors; refused. {}",
            pickles
                .iter()
                .filter_map(|p| p.file_name())
                .collect::<Vec<_>>(),
            convert_hint(&pickles[0])
        ),
    )
}

/// Little-endian words (safetensors is little-endian; the data may be unaligned in the map).
pub(crate) fn le_u32(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// fp16 values, refusing NaN and infinities: the engines would only notice them as NaN logits,
/// with no tensor named. Checked in the decoding pass itself (an OR over the words, no second
/// pass over the mapped data), so a 13B checkpoint pays nothing measurable for it.
pub(crate) fn finite_f16(b: &[u8], path: &Path, name: &str) -> Result<Vec<half::f16>> {
    let mut bad = false;
    let v: Vec<half::f16> = b
        .chunks_exact(2)
        .map(|c| {
            let x = half::f16::from_le_bytes([c[0], c[1]]);
            bad |= !x.is_finite();
            x
        })
        .collect();
    if bad {
        return Err(non_finite(path, name, v.iter().map(|x| x.to_f32())));
    }
    Ok(v)
}

/// Any float tensor as f32, refusing NaN and infinities (as `finite_f16`, in the same pass).
pub(crate) fn to_f32(r: &Raw<'_>, path: &Path, name: &str) -> Result<Vec<f32>> {
    let mut bad = false;
    let mut check = |x: f32| {
        bad |= !x.is_finite();
        x
    };
    let v: Vec<f32> = match r.dtype {
        Dtype::F16 => r
            .bytes
            .chunks_exact(2)
            .map(|c| check(half::f16::from_le_bytes([c[0], c[1]]).to_f32()))
            .collect(),
        Dtype::BF16 => r
            .bytes
            .chunks_exact(2)
            .map(|c| check(half::bf16::from_le_bytes([c[0], c[1]]).to_f32()))
            .collect(),
        Dtype::F32 => r
            .bytes
            .chunks_exact(4)
            .map(|c| check(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        _ => Vec::new(), // callers only pass float dtypes through `get`
    };
    if bad {
        return Err(non_finite(path, name, v.iter().copied()));
    }
    Ok(v)
}

/// The error for a tensor holding NaN or infinite values (only built once one was seen).
pub(crate) fn non_finite(path: &Path, name: &str, v: impl Iterator<Item = f32>) -> LabError {
    let (mut count, mut first) = (0usize, None);
    for (i, x) in v.enumerate() {
        if !x.is_finite() {
            count += 1;
            first.get_or_insert((i, x));
        }
    }
    let (i, x) = first.unwrap_or((0, f32::NAN));
    LabError::bad_checkpoint(
        path,
        format!(
            "tensor '{name}': {count} value(s) are not finite (NaN or infinite), the first {x} at flat index {i}; \
             expected finite weights (corrupted file or a broken conversion?)"
        ),
    )
}

/// An int32 or int64 index tensor (g_idx) widened to i64, so a range check sees the real values.
pub(crate) fn to_i64(r: &Raw<'_>) -> Vec<i64> {
    match r.dtype {
        Dtype::I64 => r
            .bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect(),
        _ => le_u32(r.bytes)
            .into_iter()
            .map(|w| i64::from(w as i32))
            .collect(),
    }
}
