//! Checkpoint loading: safetensors (single, sharded, or one GPTQ-for-LLaMa era file), config.json,
//! the quantize config (or its inference), and each linear layer validated into the canonical
//! `QuantLinear` (true zeros). Writing GPTQ checkpoints AutoGPTQ/transformers can load: `writer`.

mod files;
pub(crate) mod quant_config;
mod streamed;
mod writer;

pub use crate::gptq::ZeroFormat;
pub use quant_config::QuantInfo;
pub use streamed::StreamedSafetensors;
pub use writer::write_gptq_checkpoint;
pub(crate) use writer::{config_files, encode_dense, encode_linear, linear_specs};

use crate::gptq::{gidx, group_rows, zeros, QuantLinear};
use crate::model::config::ModelConfig;
use crate::{LabError, Result};
use files::{finite_f16, le_u32, to_f32, to_i64, Files};
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The weights of one linear layer as the checkpoint holds them.
#[derive(Debug, Clone, PartialEq)]
pub enum LinearWeights {
    /// GPTQ 4-bit, canonical (true zeros, g_idx only when not k / G).
    Quant(QuantLinear),
    /// An unquantized layer (fp16 checkpoints, or a layer a GPTQ file left in fp16), transposed
    /// from the file's [N, K] to [k, n] row-major.
    Dense { k: usize, n: usize, w_kn: Vec<f32> },
}

/// A linear layer's shape and grouping as the tensor headers give them (`Checkpoint::linear_meta`).
#[derive(Debug, Clone, PartialEq)]
pub struct LinearMeta {
    pub k: usize,
    pub n: usize,
    /// Rows per group of a GPTQ linear; `None` for an unquantized one.
    pub group_size: Option<usize>,
    /// The act-order g_idx (`None` when absent or trivial, i.e. row r in group r / G).
    pub g_idx: Option<Vec<i32>>,
    /// A bias with a non-zero value (an all-zero one is dropped at load: the same outputs).
    pub bias: bool,
}

/// A linear's tensors found and checked, still borrowed from the mapping.
enum Located<'a> {
    Dense { name: String },
    Quant(QuantRaw<'a>),
}

struct QuantRaw<'a> {
    k: usize,
    n: usize,
    g: usize,
    format: ZeroFormat,
    qweight: &'a [u8],
    qzeros: &'a [u8],
    scales: &'a [u8],
    g_idx: Option<Vec<i32>>,
    bias: Option<&'a [u8]>,
}

/// An opened checkpoint. Tensors stay memory-mapped; `linear` and `tensor_f32` copy out.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: ModelConfig,
    /// `None` for fp16 ("normal") checkpoints.
    pub quant: Option<QuantInfo>,
    /// The file the quant settings came from (for messages), or the weights file if inferred.
    quant_source: PathBuf,
    /// What the quant config states rather than defaults (quant_config::Stated). `sym: true`
    /// stated: every true zero must then be 2^(bits-1), or the zero format was mislabelled;
    /// `desc_act: true` stated: every linear needs its g_idx.
    stated: quant_config::Stated,
    /// `group_and_order_known`.
    known: (bool, bool),
    files: Files,
    /// Other *.safetensors files in the folder that the weights are not read from (a stale
    /// export beside model.safetensors, say): left alone, as transformers leaves them, but named
    /// in `notes`, since which file is the model cannot be seen from the results.
    unread: Vec<PathBuf>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .field("quant", &self.quant)
            .field(
                "shards",
                &self
                    .files
                    .shards
                    .iter()
                    .map(|s| &s.path)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Checkpoint {
    /// Open a checkpoint folder (or one .safetensors file inside it; config.json sits beside it).
    pub fn open(path: &Path) -> Result<Checkpoint> {
        let (dir, files) = Files::open(path)?;
        let unread = if path.is_dir() {
            unread_weight_files(&dir, &files)?
        } else {
            Vec::new() // one file named: the others are left out on purpose.
        };
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| {
            LabError::bad_checkpoint(
                &cfg_path,
                format!("cannot read config.json ({e}); it gives the model shapes"),
            )
        })?;
        let config = ModelConfig::from_json_str(&text, &cfg_path)?;
        let cfg_value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| LabError::Json {
                path: cfg_path.clone(),
                source: e,
            })?;
        check_layer_count(&config, &files, &cfg_path)?;
        check_tied_head(&config, &files, &cfg_path)?;
        // Whether the group size and desc_act were read from the tensors (where not stated).
        let mut read_from_tensors = false;
        let (mut quant, stated, mut quant_source) =
            match quant_config::from_files(&dir, &cfg_value)? {
                Some(f) => (Some(f.info), f.stated, f.source),
                None => (None, quant_config::Stated::default(), cfg_path.clone()),
            };
        // After the quant config: a file refused there (another format) is named by its field.
        check_tensor_names(&config, &files)?;
        // Any quantized tensor without a quantize config: a GPTQ-for-LLaMa era file.
        let first_q = files
            .names()
            .into_iter()
            .find_map(|n| n.strip_suffix(".qweight").map(str::to_string));
        if quant.is_none() {
            if let Some(prefix) = first_q {
                let k = match expected_kn(&config, &prefix) {
                    Some((k, _)) => k,
                    None => {
                        return Err(LabError::bad_checkpoint(
                            files.path_of(&format!("{prefix}.qweight")),
                            format!(
                                "no quantize config, and '{prefix}' is not a LLaMA linear whose K the \
                                 config gives; add a quantize_config.json (bits, group_size, desc_act, sym)"
                            ),
                        ))
                    }
                };
                quant = Some(quant_config::infer(&files, &prefix, k)?);
                quant_source = files.path_of(&format!("{prefix}.qweight")).to_path_buf();
                read_from_tensors = true;
            }
        } else if let (Some(q), Some(prefix)) = (quant.as_mut(), first_q.as_deref()) {
            // A group size or desc_act the config leaves out: what the tensors say (AutoGPTQ's
            // defaults, -1 and true, stand only where the model config gives no K to read by).
            if let Some((k, _)) = expected_kn(&config, prefix) {
                let from = file_label(&quant_source);
                let note = |field: &str, default: &str, line: String| {
                    format!(
                        "{from}: '{field}' missing; read from the tensors, not AutoGPTQ's default \
                         ({default}): {line}"
                    )
                };
                read_from_tensors = true;
                if !stated.group_size {
                    let (g, line) = quant_config::group_size_from_scales(&files, prefix, k)?;
                    q.group_size = g;
                    q.forget_default("group_size");
                    q.inferred.push(note("group_size", "-1, per-channel", line));
                }
                if !stated.desc_act {
                    let (act, line) =
                        quant_config::desc_act_from_g_idx(&files, prefix, k, q.group_size)?;
                    q.desc_act = act;
                    q.forget_default("desc_act");
                    q.inferred.push(note("desc_act", "true", line));
                }
            }
        }
        if let Some(q) = quant.as_mut().filter(|q| !q.desc_act || q.static_groups) {
            // desc_act false (stated, or read from the first linear) or static groups say g_idx
            // is k / group_size; an act-order g_idx is still applied as stored (each row's group
            // is its g_idx entry, as AutoGPTQ's kernels read it), but the disagreement is said,
            // for every linear, not only for the first one the settings were read from.
            let names = files.names();
            let g_idx: Vec<&str> = names
                .iter()
                .filter_map(|n| n.strip_suffix(".g_idx"))
                .collect();
            let act = act_order_linears(&files, &config, &g_idx, q.group_size);
            if let Some(first) = act.first() {
                let claim = match (q.desc_act, stated.desc_act) {
                    (true, _) => "static_groups = true",
                    (false, true) => "desc_act = false",
                    (false, false) => "desc_act = false (read from the first linear's g_idx)",
                };
                q.inferred.push(format!(
                    "{}: {claim}, but the g_idx of {} of {} linears is act-order (not k / \
                     group_size; first: {first}.g_idx): each row's group is read from g_idx as stored",
                    file_label(&quant_source),
                    act.len(),
                    g_idx.len()
                ));
            }
        }
        let known = match quant {
            Some(_) => (
                read_from_tensors || stated.group_size,
                read_from_tensors || stated.desc_act,
            ),
            None => (false, false),
        };
        Ok(Checkpoint {
            dir,
            config,
            quant,
            quant_source,
            stated,
            known,
            files,
            unread,
        })
    }

    /// Whether the quant settings' group size and desc_act are the checkpoint's own (stated in
    /// its config, or read from its tensors) rather than AutoGPTQ's defaults: false only where a
    /// config leaves them out and no quantized linear of a known K was there to read them from.
    pub fn group_and_order_known(&self) -> (bool, bool) {
        self.known
    }

    /// The file the quant settings came from: quantize_config.json or config.json, or the
    /// weights file whose tensors they were inferred from.
    pub fn quant_source(&self) -> &Path {
        &self.quant_source
    }

    /// What the loader took without a file stating it, one line each: AutoGPTQ's default for a
    /// missing quant field (checkpoint_format: v1 zeros), a value read from the tensors, and
    /// the folder's *.safetensors files the weights are not read from. Printed by the commands
    /// that load weights: a wrong default (a gptq_v2 file without its label reads as v1) or the
    /// wrong file cannot be detected from the tensors alone, only said.
    pub fn notes(&self) -> Vec<String> {
        let source = self.quant_source.display();
        let mut notes: Vec<String> = self
            .quant
            .iter()
            .flat_map(|q| q.inferred.iter())
            .map(|l| format!("{source}: {l}"))
            .collect();
        if !self.unread.is_empty() {
            let read: Vec<String> = self
                .files
                .shards
                .iter()
                .map(|s| file_label(&s.path))
                .collect();
            let unread: Vec<String> = self.unread.iter().map(|p| file_label(p)).collect();
            notes.push(format!(
                "{}: weights read from {}; {} here too, not read (as transformers loads the \
                 folder); remove {} or pass the file to load as --checkpoint FILE",
                self.dir.display(),
                read.join(", "),
                unread.join(", "),
                if unread.len() == 1 { "it" } else { "them" },
            ));
        }
        notes
    }

    /// Whether v1 zeros are read by whole-word addition: the config names a writer that exports
    /// v1 that way (`QuantInfo::whole_word_v1`).
    fn whole_word_v1(&self) -> bool {
        self.quant
            .as_ref()
            .is_some_and(|q| q.whole_word_v1.is_some())
    }

    /// One linear layer, e.g. prefix "model.layers.0.self_attn.q_proj": validated against the
    /// config's shapes and the quant settings, zeros converted to true zeros.
    pub fn linear(&self, prefix: &str) -> Result<LinearWeights> {
        match self.locate_linear(prefix)? {
            Located::Dense { name } => self.dense(prefix, &name),
            Located::Quant(l) => self.convert_quant(prefix, l),
        }
    }

    /// What `linear` would load, from the tensor headers (and the small g_idx) only: every
    /// tensor present with the right dtype and shape, g_idx in range. Nothing large is copied,
    /// so a loader can check a whole model before it allocates anything.
    pub fn linear_meta(&self, prefix: &str) -> Result<LinearMeta> {
        Ok(match self.locate_linear(prefix)? {
            Located::Dense { name } => {
                let shape = expected_kn(&self.config, prefix).map(|(k, n)| vec![n, k]);
                let raw = self.files.get(
                    &name,
                    &[Dtype::F16, Dtype::BF16, Dtype::F32],
                    shape.as_deref(),
                )?;
                let [n, k] = raw.shape[..] else {
                    return Err(LabError::bad_checkpoint(
                        self.files.path_of(&name),
                        format!(
                            "tensor '{name}': shape {:?}, expected 2-D [N, K]",
                            raw.shape
                        ),
                    ));
                };
                LinearMeta {
                    k,
                    n,
                    group_size: None,
                    g_idx: None,
                    bias: false,
                }
            }
            Located::Quant(l) => LinearMeta {
                k: l.k,
                n: l.n,
                group_size: Some(l.g),
                g_idx: l.g_idx,
                bias: l.bias.is_some_and(f16_nonzero),
            },
        })
    }

    /// Find a linear's tensors and check their dtypes and shapes (header reads, plus g_idx).
    fn locate_linear(&self, prefix: &str) -> Result<Located<'_>> {
        let qw = format!("{prefix}.qweight");
        let w = format!("{prefix}.weight");
        if self.files.contains(&qw) && self.files.contains(&w) {
            // Which one a reader would use is a guess: refuse rather than pick.
            return Err(LabError::bad_checkpoint(
                self.files.path_of(&w),
                format!(
                    "linear '{prefix}' has both '{qw}' (quantized) and '{w}' (dense); expected one of them"
                ),
            ));
        }
        if !self.files.contains(&qw) {
            if self.files.contains(&w) {
                return Ok(Located::Dense { name: w });
            }
            let what = if self.quant.is_some() { qw } else { w };
            return Err(LabError::bad_checkpoint(
                self.files.path_of(&what),
                format!("missing tensor '{what}' (linear layer '{prefix}')"),
            ));
        }
        let q = self.quant.as_ref().ok_or_else(|| {
            LabError::bad_checkpoint(
                self.files.path_of(&qw),
                "quantized tensor without quant settings",
            )
        })?;
        let file = self.files.path_of(&qw).to_path_buf();
        let (k, n) = match expected_kn(&self.config, prefix) {
            Some(kn) => kn,
            None => {
                let s = &self
                    .files
                    .info(&qw)
                    .map(|i| i.shape.clone())
                    .unwrap_or_default();
                match s[..] {
                    [rows, n] => (rows * 8, n),
                    _ => {
                        return Err(LabError::bad_checkpoint(
                            &file,
                            format!("tensor '{qw}': shape {s:?}, expected 2-D [K/8, N]"),
                        ))
                    }
                }
            }
        };
        if k % 8 != 0 || n % 8 != 0 {
            return Err(LabError::bad_checkpoint(
                &file,
                format!("linear '{prefix}': K = {k}, N = {n}; both must be multiples of 8 for 4-bit packing"),
            ));
        }
        let g = group_rows(q.group_size, k).map_err(|r| {
            LabError::bad_checkpoint(
                &self.quant_source,
                format!("{r} (tensor '{prefix}.scales')"),
            )
        })?;
        let groups = k / g;
        let qweight = self
            .files
            .get(&qw, &[Dtype::I32, Dtype::U32], Some(&[k / 8, n]))?
            .bytes;
        let qz = format!("{prefix}.qzeros");
        let qzeros = self
            .files
            .get(&qz, &[Dtype::I32, Dtype::U32], Some(&[groups, n / 8]))?
            .bytes;
        let sc = format!("{prefix}.scales");
        let scales = self
            .files
            .get(&sc, &[Dtype::F16], Some(&[groups, n]))?
            .bytes;

        let gi = format!("{prefix}.g_idx");
        let g_idx = if self.files.contains(&gi) {
            let raw = self.files.get(&gi, &[Dtype::I32, Dtype::I64], Some(&[k]))?;
            let wide = to_i64(&raw);
            if let Some((row, v)) = wide
                .iter()
                .enumerate()
                .find(|(_, &v)| v < 0 || v >= groups as i64)
            {
                return Err(LabError::bad_checkpoint(
                    self.files.path_of(&gi),
                    format!("tensor '{gi}': g_idx[{row}] = {v}, expected 0 <= g < {groups} (rows of '{sc}')"),
                ));
            }
            let v: Vec<i32> = wide.into_iter().map(|x| x as i32).collect();
            // Every GPTQ writer gives each group exactly G rows (act-order permutes which rows,
            // not how many): other counts are no GPTQ file, and the kernels' row order (sorted by
            // group, G rows each) could not hold them.
            if let Some((j, &c)) = gidx::group_counts(&v, groups)
                .iter()
                .enumerate()
                .find(|&(_, &c)| c != g)
            {
                return Err(LabError::bad_checkpoint(
                    self.files.path_of(&gi),
                    format!("tensor '{gi}': assigns {c} rows to group {j}, expected group_size = {g} rows in each of the {groups} groups"),
                ));
            }
            gidx::is_act_order(&v, g).then_some(v)
        } else if q.desc_act && self.stated.desc_act && !q.static_groups {
            // Act-order declared: the trivial k / G would silently misgroup every row. (Read from
            // another linear's g_idx instead, it says nothing of this one: plain order.)
            return Err(LabError::bad_checkpoint(
                self.files.path_of(&qw),
                format!(
                    "missing tensor '{gi}': {} declares desc_act (act-order) without static_groups, \
                     so each linear needs its g_idx",
                    self.quant_source.display()
                ),
            ));
        } else {
            None
        };
        let b = format!("{prefix}.bias");
        let bias = if self.files.contains(&b) {
            Some(self.files.get(&b, &[Dtype::F16], Some(&[n]))?.bytes)
        } else {
            None
        };
        Ok(Located::Quant(QuantRaw {
            k,
            n,
            g,
            format: q.format,
            qweight,
            qzeros,
            scales,
            g_idx,
            bias,
        }))
    }

    /// Copy a located GPTQ linear out of the mapping into the canonical form (true zeros).
    fn convert_quant(&self, prefix: &str, l: QuantRaw<'_>) -> Result<LinearWeights> {
        let qz = format!("{prefix}.qzeros");
        let stored = le_u32(l.qzeros);
        let qzeros = match l.format {
            ZeroFormat::V2 => stored,
            ZeroFormat::V1 if self.whole_word_v1() => zeros::v1_whole_word_to_v2(&stored),
            ZeroFormat::V1 => {
                if let Some(u) = zeros::v1_underflow(&stored, l.n) {
                    // Where a writer would be named: the config the settings came from, or (an
                    // era file's settings read from its tensors) none at all.
                    let named_in = if self.quant_source.extension().is_some_and(|e| e == "json") {
                        format!(
                            "{} names no such writer in meta.quantizer",
                            self.quant_source.display()
                        )
                    } else {
                        "this checkpoint has no quantize config to name one".to_string()
                    };
                    return Err(LabError::bad_checkpoint(
                        self.files.path_of(&qz),
                        format!(
                            "tensor '{qz}': {}. (A v1 file GPTQModel >= 0.9 exported subtracts \
                             0x11111111 from whole words, borrowing across nibbles, and is exact \
                             when read back whole; {named_in})",
                            u.describe()
                        ),
                    ));
                }
                zeros::v1_to_v2(&stored)
            }
        };
        let symmetric = zeros::is_symmetric_true(&qzeros);
        if self.stated.sym == Some(true) && !symmetric {
            return Err(self.not_symmetric(prefix, &qzeros, l.n, l.format));
        }
        if self.stated.sym.is_none() {
            if let Some(e) = self.symmetric_off_by_one(prefix, &qzeros, l.format) {
                return Err(e);
            }
        }
        let sc = format!("{prefix}.scales");
        let scales = finite_f16(l.scales, self.files.path_of(&sc), &sc)?;
        let b = format!("{prefix}.bias");
        // An all-zero bias (some writers store one for every linear) is dropped: the outputs are
        // the same, and the engines, which add none, need not refuse the file for it.
        let bias = match l.bias {
            Some(bytes) if f16_nonzero(bytes) => {
                Some(finite_f16(bytes, self.files.path_of(&b), &b)?)
            }
            _ => None,
        };
        let layer = QuantLinear {
            k: l.k,
            n: l.n,
            group_size: l.g,
            qweight: le_u32(l.qweight),
            symmetric,
            qzeros,
            scales,
            g_idx: l.g_idx,
            bias,
        };
        layer.validate().map_err(|r| {
            LabError::bad_checkpoint(
                self.files.path_of(&format!("{prefix}.qweight")),
                format!("linear '{prefix}': {r}"),
            )
        })?;
        Ok(LinearWeights::Quant(layer))
    }

    /// The error for a linear whose true zeros are not all 8 although the config states sym.
    fn not_symmetric(
        &self,
        prefix: &str,
        qzeros: &[u32],
        n: usize,
        format: ZeroFormat,
    ) -> LabError {
        let qz = format!("{prefix}.qzeros");
        let per_row = n / 8;
        let (g, col, z) = qzeros
            .iter()
            .enumerate()
            .flat_map(|(i, &w)| {
                (0..8).map(move |j| (i / per_row, (i % per_row) * 8 + j, (w >> (4 * j)) & 0xF))
            })
            .find(|&(_, _, z)| z != 8)
            .unwrap_or((0, 0, 0));
        let (this, other) = format_labels(format);
        LabError::bad_checkpoint(
            self.files.path_of(&qz),
            format!(
                "tensor '{qz}': {} states sym: true, but (group, column) ({g}, {col}) has true zero \
                 {z} under checkpoint_format {this}; symmetric 4-bit zeros are all 8. A zero off by \
                 one everywhere means the checkpoint_format is wrong (try {other})",
                self.quant_source.display()
            ),
        )
    }

    /// Where the config does not state `sym`: a linear whose true zeros are ALL one step off the
    /// symmetric 8 (9 under v1, 7 under v2) is a symmetric file with the other zero format's
    /// label, and loading it would shift every weight by one scale step. An asymmetric
    /// quantizer leaves no zero the same in every group and column of a real layer; a tensor of
    /// fewer than 64 zeros (a tiny test layer) is too small to say.
    fn symmetric_off_by_one(
        &self,
        prefix: &str,
        qzeros: &[u32],
        format: ZeroFormat,
    ) -> Option<LabError> {
        let z = match format {
            ZeroFormat::V1 => 9,
            ZeroFormat::V2 => 7,
        };
        let (this, other) = format_labels(format);
        let word = (0..8).fold(0u32, |w, j| w | (z << (4 * j)));
        if qzeros.len() < 8 || qzeros.iter().any(|&w| w != word) {
            return None;
        }
        let qz = format!("{prefix}.qzeros");
        // Where to say the right label: the config the format came from, or (settings inferred
        // from an era file's tensors) a config to add.
        let fix = if self.quant_source.extension().is_some_and(|e| e == "json") {
            format!(
                "set checkpoint_format {other} in {}, or state \"sym\": false there if these \
                 zeros are meant",
                self.quant_source.display()
            )
        } else {
            format!("add a quantize_config.json saying checkpoint_format {other}")
        };
        Some(LabError::bad_checkpoint(
            self.files.path_of(&qz),
            format!(
                "tensor '{qz}': every true zero is {z} under checkpoint_format {this}, one step off \
                 the symmetric 8 in every group and column: a symmetric file with the other \
                 format's label reads this way, every weight one scale step off ({fix})"
            ),
        ))
    }

    fn dense(&self, prefix: &str, w: &str) -> Result<LinearWeights> {
        let shape = expected_kn(&self.config, prefix).map(|(k, n)| vec![n, k]);
        let raw = self
            .files
            .get(w, &[Dtype::F16, Dtype::BF16, Dtype::F32], shape.as_deref())?;
        let [n, k] = raw.shape[..] else {
            return Err(LabError::bad_checkpoint(
                self.files.path_of(w),
                format!("tensor '{w}': shape {:?}, expected 2-D [N, K]", raw.shape),
            ));
        };
        let w_nk = to_f32(&raw, self.files.path_of(w), w)?;
        // A dense linear's bias is not carried (LLaMA has none): a non-zero one would be ignored.
        let b = format!("{prefix}.bias");
        if self.files.contains(&b) {
            let (bias, _) = self.tensor_f32(&b)?;
            if bias.iter().any(|&v| v != 0.0) {
                return Err(bias_refused(self.files.path_of(&b), &b));
            }
        }
        let mut w_kn = vec![0f32; k * n];
        for (o, row) in w_nk.chunks_exact(k).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                w_kn[i * n + o] = v;
            }
        }
        Ok(LinearWeights::Dense { k, n, w_kn })
    }

    /// A float tensor (F16, BF16 or F32) as f32, row-major, with its shape.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let raw = self
            .files
            .get(name, &[Dtype::F16, Dtype::BF16, Dtype::F32], None)?;
        Ok((
            to_f32(&raw, self.files.path_of(name), name)?,
            raw.shape.clone(),
        ))
    }

    /// A float tensor as fp16 with exactly `shape`: F16 copied as stored, BF16 / F32 rounded once
    /// (the same values as rounding `tensor_f32`'s, without the f32 copy of an embedding table).
    pub fn tensor_f16(&self, name: &str, shape: &[usize]) -> Result<Vec<half::f16>> {
        let raw = self
            .files
            .get(name, &[Dtype::F16, Dtype::BF16, Dtype::F32], Some(shape))?;
        let path = self.files.path_of(name);
        match raw.dtype {
            Dtype::F16 => finite_f16(raw.bytes, path, name),
            _ => {
                // A finite BF16/F32 value beyond fp16's range (65504) would become infinite.
                let mut overflow = false;
                let v: Vec<half::f16> = to_f32(&raw, path, name)?
                    .into_iter()
                    .map(|x| {
                        let h = half::f16::from_f32(x);
                        overflow |= !h.is_finite();
                        h
                    })
                    .collect();
                if overflow {
                    return Err(LabError::bad_checkpoint(
                        path,
                        format!(
                            "tensor '{name}': {:?} values beyond fp16's range (|x| > 65504); the \
                             engine keeps this tensor in fp16",
                            raw.dtype
                        ),
                    ));
                }
                Ok(v)
            }
        }
    }

    /// dtype and shape of tensor `name`, `None` if the checkpoint has no such tensor.
    pub fn tensor_meta(&self, name: &str) -> Option<(Dtype, Vec<usize>)> {
        self.files.info(name).map(|i| (i.dtype, i.shape.clone()))
    }

    /// The file that holds `name` (the first weights file if none does), for messages.
    pub fn tensor_file(&self, name: &str) -> &Path {
        self.files.path_of(name)
    }

    /// Every tensor name, sorted.
    pub fn tensor_names(&self) -> Vec<String> {
        self.files.names()
    }

    /// On-disk bytes of every tensor.
    pub fn tensor_bytes(&self) -> BTreeMap<String, u64> {
        self.files
            .names()
            .into_iter()
            .filter_map(|n| {
                let (a, b) = self.files.info(&n)?.data_offsets;
                Some((n, (b - a) as u64))
            })
            .collect()
    }
}

/// `tie_word_embeddings: true` means the output head IS the embedding (transformers drops a
/// stored lm_head.weight then). Every reader here uses a stored lm_head.weight when present, so
/// one that differs from the embedding would be read as a different model: refused, naming both.
/// An identical copy (some writers store the tied tensor twice) is the same model and loads.
fn check_tied_head(config: &ModelConfig, files: &Files, cfg_path: &Path) -> Result<()> {
    const HEAD: &str = "lm_head.weight";
    const EMBED: &str = "model.embed_tokens.weight";
    if !config.tie_word_embeddings || !files.contains(HEAD) || !files.contains(EMBED) {
        return Ok(());
    }
    let any = [Dtype::F16, Dtype::BF16, Dtype::F32];
    let (head, embed) = (files.get(HEAD, &any, None)?, files.get(EMBED, &any, None)?);
    if head.dtype == embed.dtype && head.shape == embed.shape && head.bytes == embed.bytes {
        return Ok(());
    }
    Err(LabError::bad_checkpoint(
        cfg_path,
        format!(
            "tie_word_embeddings is true, but '{HEAD}' (in {}) differs from '{EMBED}': a tied \
             model's head is its embedding; set tie_word_embeddings to false to use the stored \
             head, or remove '{HEAD}'",
            files.path_of(HEAD).display()
        ),
    ))
}

/// Every tensor must be one the LLaMA layout gives a meaning to: the embedding, the norms, an
/// fp16 lm_head, and per decoder linear its weight or GPTQ tensors and bias (a non-zero bias is
/// refused where the linear is read). Anything else would be silently dropped: a norm's bias
/// (the math changes), a quantized lm_head (GPTQModel's lm_head option; with tied embeddings the
/// embedding would silently stand in for it), another format's tensors (AutoGPTQ's marlin `B`,
/// `s`). RoPE's stored inv_freq is the only extra allowed: the engines compute the same values.
fn check_tensor_names(config: &ModelConfig, files: &Files) -> Result<()> {
    const QUANT_PARTS: [&str; 4] = ["qweight", "qzeros", "scales", "g_idx"];
    let linear_part = |p: &str| QUANT_PARTS.contains(&p) || p == "weight" || p == "bias";
    let linears: Vec<&str> = config
        .layer_linears()
        .into_iter()
        .map(|(l, _, _)| l)
        .collect();
    let known = |name: &str| -> bool {
        if matches!(
            name,
            "model.embed_tokens.weight" | "model.norm.weight" | "lm_head.weight"
        ) {
            return true;
        }
        // A layer index other than canonical decimal ("00", "+0", "x") is no layer an engine
        // loads: such a tensor would be dropped silently.
        let Some((_, rest)) = layer_index(name) else {
            return false;
        };
        if matches!(
            rest,
            "input_layernorm.weight"
                | "post_attention_layernorm.weight"
                | "self_attn.rotary_emb.inv_freq"
        ) {
            return true;
        }
        rest.rsplit_once('.')
            .is_some_and(|(l, part)| linears.contains(&l) && linear_part(part))
    };
    let Some(bad) = files.names().into_iter().find(|n| !known(n)) else {
        return Ok(());
    };
    let head_quantized = bad
        .strip_prefix("lm_head.")
        .is_some_and(|p| QUANT_PARTS.contains(&p));
    let why = if head_quantized {
        "the output head is quantized (or stored in a form the engines do not read): they need \
         lm_head.weight in fp16 (GPTQModel: quantize without lm_head)"
    } else {
        "not part of the LLaMA layout the engines read (embedding, norms, lm_head.weight, and per \
         decoder linear its weight or qweight / qzeros / scales / g_idx); reading on would drop \
         it silently"
    };
    Err(LabError::bad_checkpoint(
        files.path_of(&bad),
        format!("tensor '{bad}': {why}"),
    ))
}

/// `model.layers.N.rest` -> (N, rest), N in canonical decimal (the only spelling the engines'
/// tensor names use).
fn layer_index(name: &str) -> Option<(usize, &str)> {
    let (idx, rest) = name.strip_prefix("model.layers.")?.split_once('.')?;
    let i = idx.parse::<usize>().ok()?;
    (i.to_string() == idx).then_some((i, rest))
}

/// config.json's `num_hidden_layers` against the `model.layers.N` tensors: every loader loops
/// over (and allocates for) the config's count, so a count the weights do not back would panic
/// or misread, and layers beyond it would be silently dropped.
fn check_layer_count(config: &ModelConfig, files: &Files, cfg_path: &Path) -> Result<()> {
    let layer_of = |n: &str| layer_index(n).map(|(i, _)| i);
    let names = files.names();
    let found = names
        .iter()
        .filter_map(|n| layer_of(n))
        .max()
        .map_or(0, |m| m.saturating_add(1));
    let want = config.num_hidden_layers;
    if found > want {
        // The first tensor (by name) of the lowest layer beyond the config's count.
        let (t, i) = names
            .iter()
            .filter_map(|n| Some((n, layer_of(n)?)))
            .filter(|&(_, i)| i >= want)
            .min_by_key(|&(_, i)| i)
            .expect("found > want means some layer index >= want");
        return Err(LabError::bad_checkpoint(
            files.path_of(t),
            format!(
                "tensor '{t}' is in layer {i}, but {} gives num_hidden_layers = {want}; the tensors \
                 hold {found} layers. Fix num_hidden_layers or remove the extra layers",
                cfg_path.display()
            ),
        ));
    }
    if found < want {
        return Err(LabError::bad_checkpoint(
            cfg_path,
            format!(
                "num_hidden_layers = {want}, but the tensors hold {found} layer(s) \
                 (highest model.layers.N: {})",
                found
                    .checked_sub(1)
                    .map_or("none".into(), |m| m.to_string())
            ),
        ));
    }
    Ok(())
}

/// (K, N) of a LLaMA linear by its state-dict prefix, from the config; `None` if not one.
fn expected_kn(c: &ModelConfig, prefix: &str) -> Option<(usize, usize)> {
    if prefix == "lm_head" {
        return Some((c.hidden_size, c.vocab_size));
    }
    let rest = prefix.strip_prefix("model.layers.")?;
    let (i, name) = rest.split_once('.')?;
    if i.parse::<usize>().ok()? >= c.num_hidden_layers {
        return None;
    }
    c.layer_linears()
        .into_iter()
        .find(|(l, _, _)| *l == name)
        .map(|(_, k, n)| (k, n))
}

/// The file name alone, for notes that say which config a setting came from.
fn file_label(p: &Path) -> String {
    p.file_name()
        .map_or_else(String::new, |f| f.to_string_lossy().into_owned())
}

/// Of the linears with a g_idx (`prefixes`, in the files' name order), those whose g_idx is
/// act-order (rows not in k / group_size order). A g_idx that cannot be read or whose linear's K
/// the config does not give is left out here: the linear's own load refuses it, naming the tensor.
fn act_order_linears<'a>(
    files: &Files,
    config: &ModelConfig,
    prefixes: &[&'a str],
    group_size: i32,
) -> Vec<&'a str> {
    prefixes
        .iter()
        .copied()
        .filter(|prefix| {
            expected_kn(config, prefix).is_some_and(|(k, _)| {
                matches!(
                    quant_config::desc_act_from_g_idx(files, prefix, k, group_size),
                    Ok((true, _))
                )
            })
        })
        .collect()
}

/// The error for a linear's non-zero bias `name` (in `path`): LLaMA linears have none, so neither
/// engine adds one, and reading on would silently drop it. (An all-zero one is dropped at load.)
pub fn bias_refused(path: &Path, name: &str) -> LabError {
    LabError::bad_checkpoint(
        path,
        format!("tensor '{name}': a non-zero bias; LLaMA linears have none and the engines do not add one"),
    )
}

/// Whether little-endian fp16 `bytes` hold any value other than +0 / -0.
fn f16_nonzero(bytes: &[u8]) -> bool {
    bytes
        .chunks_exact(2)
        .any(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7FFF != 0)
}

/// How the zero-format errors name a format, and the other one to try.
fn format_labels(format: ZeroFormat) -> (&'static str, &'static str) {
    match format {
        ZeroFormat::V1 => ("\"gptq\" (v1: stored zero + 1)", "\"gptq_v2\""),
        ZeroFormat::V2 => ("\"gptq_v2\" (v2: stored as is)", "\"gptq\""),
    }
}

/// The *.safetensors files in `dir` that none of `files`' shards is (regular files only; a
/// shard named through a link counts as read).
fn unread_weight_files(dir: &Path, files: &Files) -> Result<Vec<PathBuf>> {
    let read: Vec<PathBuf> = files
        .shards
        .iter()
        .map(|s| std::fs::canonicalize(&s.path).unwrap_or_else(|_| s.path.clone()))
        .collect();
    let mut unread = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| LabError::io(dir, e))? {
        let p = e.map_err(|e| LabError::io(dir, e))?.path();
        let is_weights = p.extension().is_some_and(|x| x == "safetensors") && p.is_file();
        if is_weights && !read.contains(&std::fs::canonicalize(&p).unwrap_or_else(|_| p.clone())) {
            unread.push(p);
        }
    }
    unread.sort();
    Ok(unread)
}
