//! Where the GPU engine's weights come from, one decoder layer at a time (`LayerSource`): a
//! `HostLlama` already in memory (tests, random models) or a checkpoint read layer by layer from
//! its memory mapping (`CheckpointLayers`). The uploader (`GpuWeights::upload`) asks for layer i,
//! lays it out (`gpu_layout`), uploads it and drops the host copies before asking for layer i + 1,
//! so a checkpoint load holds one layer plus one fp16 [vocab, hidden] table on the host
//! (Vicuna-7B int4 g128: ~110 MB canonical + ~110 MB laid out, and 262 MB for the embedding),
//! not the whole model (3.9 GB).
//!
//! `preflight` checks what can be checked from the tensor headers (and the small g_idx tensors)
//! for the whole model, so a broken checkpoint is refused before any GPU memory is allocated.

use crate::model::checkpoint::{Checkpoint, LinearMeta, LinearWeights};
use crate::model::config::ModelConfig;
use crate::model::gpu_layout::{fusion_for, layout_layer, DeviceBytes, GroupPart, LaidOutLayer};
use crate::model::gpu_weights::{kind_of, HostLayer, HostLinear, HostLlama, WeightKind};
use crate::model::load_progress::{LoadBar, LoadStats};
use crate::{LabError, Result};
use half::f16;
use std::borrow::Cow;
use std::time::Instant;

/// A model's weights in the canonical host form (`HostLayer`: `QuantLinear` / fp16), one decoder
/// layer at a time. Borrowed when already in memory, built on demand when streamed.
pub trait LayerSource {
    /// Decoder layers this source has (the uploader checks it against the config).
    fn num_layers(&self) -> usize;
    /// Every check possible without converting the bulk of the data; run before any GPU memory
    /// is allocated. Errors name the tensor.
    fn preflight(&self, cfg: &ModelConfig) -> Result<()>;
    /// Layer `i` in canonical form.
    fn layer(&self, i: usize) -> Result<Cow<'_, HostLayer>>;
    /// fp16 [vocab, hidden].
    fn embed(&self) -> Result<Cow<'_, [f16]>>;
    /// fp16 [hidden] `model.norm`.
    fn final_norm(&self) -> Result<Cow<'_, [f16]>>;
    /// fp16 [vocab, hidden] (a tied head: the embedding again).
    fn lm_head(&self) -> Result<Cow<'_, [f16]>>;
    /// Whether the uploader draws a per-layer progress bar on stderr (CLI checkpoint loads).
    fn progress(&self) -> bool {
        false
    }
}

impl LayerSource for HostLlama {
    fn num_layers(&self) -> usize {
        self.layers.len()
    }
    fn preflight(&self, cfg: &ModelConfig) -> Result<()> {
        self.validate(cfg)?;
        let names = linear_names(cfg);
        for (i, l) in self.layers.iter().enumerate() {
            let parts: Vec<GroupPart> = l
                .linears
                .iter()
                .zip(&names)
                .map(|(lin, name)| GroupPart::of_host(format!("model.layers.{i}.{name}"), lin))
                .collect();
            check_fusion_groups(&parts)?;
        }
        Ok(())
    }
    fn layer(&self, i: usize) -> Result<Cow<'_, HostLayer>> {
        self.layers
            .get(i)
            .map(Cow::Borrowed)
            .ok_or_else(|| LabError::invalid("layers", format!("no layer {i}")))
    }
    fn embed(&self) -> Result<Cow<'_, [f16]>> {
        Ok(Cow::Borrowed(&self.embed))
    }
    fn final_norm(&self) -> Result<Cow<'_, [f16]>> {
        Ok(Cow::Borrowed(&self.final_norm))
    }
    fn lm_head(&self) -> Result<Cow<'_, [f16]>> {
        Ok(Cow::Borrowed(&self.lm_head))
    }
}

/// The 7 linear names of a decoder layer, in `ModelConfig::layer_linears` order.
pub fn linear_names(cfg: &ModelConfig) -> Vec<&'static str> {
    cfg.layer_linears().into_iter().map(|(n, _, _)| n).collect()
}

/// q|k|v (parts 0..3) and gate|up (4..6) must be able to share an output (same K).
fn check_fusion_groups(parts: &[GroupPart]) -> Result<()> {
    fusion_for(&parts[0..3])?;
    fusion_for(&parts[4..6])?;
    Ok(())
}

/// A checkpoint read one layer at a time: the tensors stay memory-mapped and each `layer(i)`
/// copies out and converts only layer i (GPTQ linears to canonical `QuantLinear`s with true
/// zeros, dense linears and norms to fp16).
pub struct CheckpointLayers<'a> {
    ckpt: &'a Checkpoint,
    progress: bool,
}

impl<'a> CheckpointLayers<'a> {
    pub fn new(ckpt: &'a Checkpoint) -> Self {
        CheckpointLayers {
            ckpt,
            progress: false,
        }
    }

    /// Draw the per-layer progress bar while uploading (one line per layer when stderr is not
    /// a terminal).
    pub fn with_progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    pub fn checkpoint(&self) -> &Checkpoint {
        self.ckpt
    }

    fn head_is_tied(&self) -> bool {
        self.ckpt.tensor_meta("lm_head.weight").is_none() && self.ckpt.config.tie_word_embeddings
    }

    /// fp16 tensor of exactly `shape`.
    fn f16(&self, name: &str, shape: &[usize]) -> Result<Vec<f16>> {
        self.ckpt.tensor_f16(name, shape)
    }

    /// The metadata check of a float tensor: present, float dtype, exactly `shape`.
    fn check_float(&self, name: &str, shape: &[usize]) -> Result<()> {
        use safetensors::Dtype;
        match self.ckpt.tensor_meta(name) {
            None => Err(LabError::bad_checkpoint(
                self.ckpt.tensor_file(name),
                format!("missing tensor '{name}'"),
            )),
            Some((d, _)) if !matches!(d, Dtype::F16 | Dtype::BF16 | Dtype::F32) => {
                Err(LabError::bad_checkpoint(
                    self.ckpt.tensor_file(name),
                    format!("tensor '{name}': dtype {d:?}, expected F16 or BF16 or F32"),
                ))
            }
            Some((_, s)) if s != shape => Err(LabError::bad_checkpoint(
                self.ckpt.tensor_file(name),
                format!("tensor '{name}': shape {s:?}, expected {shape:?}"),
            )),
            Some(_) => Ok(()),
        }
    }
}

impl LayerSource for CheckpointLayers<'_> {
    fn num_layers(&self) -> usize {
        self.ckpt.config.num_hidden_layers
    }

    fn preflight(&self, cfg: &ModelConfig) -> Result<()> {
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        self.check_float("model.embed_tokens.weight", &[v, h])?;
        self.check_float("model.norm.weight", &[h])?;
        if !self.head_is_tied() {
            self.check_float("lm_head.weight", &[v, h])?;
        }
        let want = cfg.layer_linears();
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            self.check_float(&format!("{p}.input_layernorm.weight"), &[h])?;
            self.check_float(&format!("{p}.post_attention_layernorm.weight"), &[h])?;
            let mut parts = Vec::with_capacity(want.len());
            for (name, k, n) in &want {
                let prefix = format!("{p}.{name}");
                let m: LinearMeta = self.ckpt.linear_meta(&prefix)?;
                if (m.k, m.n) != (*k, *n) {
                    return Err(LabError::bad_checkpoint(
                        self.ckpt.tensor_file(&format!("{prefix}.qweight")),
                        format!(
                            "linear '{prefix}': [K {}, N {}], the config gives [K {k}, N {n}]",
                            m.k, m.n
                        ),
                    ));
                }
                if m.bias {
                    let b = format!("{prefix}.bias");
                    return Err(crate::model::checkpoint::bias_refused(
                        self.ckpt.tensor_file(&b),
                        &b,
                    ));
                }
                parts.push(GroupPart::of_meta(prefix, &m));
            }
            check_fusion_groups(&parts)
                .map_err(|e| LabError::bad_checkpoint(&self.ckpt.dir, e.to_string()))?;
        }
        Ok(())
    }

    fn layer(&self, i: usize) -> Result<Cow<'_, HostLayer>> {
        let cfg = &self.ckpt.config;
        let h = cfg.hidden_size;
        let p = format!("model.layers.{i}");
        let mut linears = Vec::with_capacity(7);
        for (name, _, _) in cfg.layer_linears() {
            linears.push(match self.ckpt.linear(&format!("{p}.{name}"))? {
                LinearWeights::Quant(q) => HostLinear::Quant(q),
                LinearWeights::Dense { k, n, w_kn } => {
                    // The checkpoint hands dense layers over as [k, n]; the engine keeps HF's [n, k].
                    let mut w_nk = vec![f16::ZERO; k * n];
                    for r in 0..k {
                        for c in 0..n {
                            w_nk[c * k + r] = f16::from_f32(w_kn[r * n + c]);
                        }
                    }
                    HostLinear::F16 { k, n, w_nk }
                }
            });
        }
        let l = HostLayer {
            attn_norm: self.f16(&format!("{p}.input_layernorm.weight"), &[h])?,
            ffn_norm: self.f16(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
            linears,
        };
        l.validate(i, cfg)
            .map_err(|e| LabError::bad_checkpoint(&self.ckpt.dir, e.to_string()))?;
        Ok(Cow::Owned(l))
    }

    fn embed(&self) -> Result<Cow<'_, [f16]>> {
        let c = &self.ckpt.config;
        Ok(Cow::Owned(self.f16(
            "model.embed_tokens.weight",
            &[c.vocab_size, c.hidden_size],
        )?))
    }

    fn final_norm(&self) -> Result<Cow<'_, [f16]>> {
        Ok(Cow::Owned(self.f16(
            "model.norm.weight",
            &[self.ckpt.config.hidden_size],
        )?))
    }

    fn lm_head(&self) -> Result<Cow<'_, [f16]>> {
        if self.head_is_tied() {
            return self.embed();
        }
        let c = &self.ckpt.config;
        Ok(Cow::Owned(
            self.f16("lm_head.weight", &[c.vocab_size, c.hidden_size])?,
        ))
    }

    fn progress(&self) -> bool {
        self.progress
    }
}

/// What `stream_model` produced: one `L` per layer, one `T` per table, and what was seen.
pub struct Streamed<L, T> {
    pub layers: Vec<L>,
    pub embed: T,
    pub final_norm: T,
    pub lm_head: T,
    pub kind: WeightKind,
    /// Every layer's q|k|v and gate|up fused.
    pub fused: bool,
    /// Why groups stayed separate (`LaidOutLayer::unfused`, every layer).
    pub unfused: Vec<String>,
    /// Summed `DeviceBytes` of the laid-out layers (norms included).
    pub layer_bytes: DeviceBytes,
    pub stats: LoadStats,
}

/// The one loading loop: `src.preflight`, then for each layer read (canonical form) -> check ->
/// lay out -> `layer_sink` (the uploader; tests collect) -> drop the host copies; then the
/// embedding, final norm and lm_head, one at a time, through `table_sink`. Nothing is read
/// before the preflight passes, and no layer's host copies outlive its sink call.
pub fn stream_model<L, T>(
    src: &dyn LayerSource,
    cfg: &ModelConfig,
    source: &str,
    mut layer_sink: impl FnMut(usize, &LaidOutLayer) -> Result<L>,
    mut table_sink: impl FnMut(&str, &[f16]) -> Result<T>,
) -> Result<Streamed<L, T>> {
    if src.num_layers() != cfg.num_hidden_layers {
        return Err(LabError::invalid(
            "layers",
            format!(
                "config has {}, weights {}",
                cfg.num_hidden_layers,
                src.num_layers()
            ),
        ));
    }
    src.preflight(cfg)?;
    let t0 = Instant::now();
    let names = linear_names(cfg);
    let n_layers = cfg.num_hidden_layers;
    let bar = LoadBar::new(src.progress(), n_layers, source);
    let mut stats = LoadStats {
        layers: n_layers,
        ..Default::default()
    };
    let mut layers = Vec::with_capacity(n_layers);
    let (mut fused, mut kind) = (true, WeightKind::Fp16);
    let mut unfused = Vec::new();
    let mut layer_bytes = DeviceBytes::default();
    for i in 0..n_layers {
        let t = Instant::now();
        let host = src.layer(i)?;
        host.validate(i, cfg)?;
        if i == 0 {
            kind = kind_of(&host);
        }
        let t_read = t.elapsed().as_secs_f64();
        let laid = layout_layer(i, &host, &names)?;
        let b = laid.bytes();
        let host_bytes = host.host_bytes() + b.total();
        drop(host);
        let t_layout = t.elapsed().as_secs_f64() - t_read;
        fused &= laid.fused();
        unfused.extend(laid.unfused.iter().cloned());
        layer_bytes.add(&b);
        layers.push(layer_sink(i, &laid)?);
        drop(laid);
        let t_total = t.elapsed().as_secs_f64();
        stats.read_s += t_read;
        stats.layout_s += t_layout;
        stats.upload_s += t_total - t_read - t_layout;
        stats.peak_layer_host_bytes = stats.peak_layer_host_bytes.max(host_bytes);
        bar.layer_done(i, host_bytes, t_total);
    }
    let mut table = |what: &str, v: Result<Cow<'_, [f16]>>| -> Result<T> {
        let t = Instant::now();
        let v = v?;
        stats.read_s += t.elapsed().as_secs_f64();
        stats.peak_table_host_bytes = stats.peak_table_host_bytes.max(v.len() as u64 * 2);
        let t = Instant::now();
        let out = table_sink(what, &v)?;
        stats.upload_s += t.elapsed().as_secs_f64();
        Ok(out)
    };
    let embed = table("embed_tokens", src.embed())?;
    let final_norm = table("model.norm", src.final_norm())?;
    let lm_head = table("lm_head", src.lm_head())?;
    stats.total_s = t0.elapsed().as_secs_f64();
    stats.unfused = unfused.clone();
    bar.finish(&stats);
    Ok(Streamed {
        layers,
        embed,
        final_norm,
        lm_head,
        kind,
        fused,
        unfused,
        layer_bytes,
        stats,
    })
}
