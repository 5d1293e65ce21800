//! Weights of the GPU decode engine: the host description (`HostLlama`: fp16 tensors and canonical
//! `QuantLinear`s, as a test or `HostLlama::from_checkpoint` builds them), and their device form
//! (`GpuWeights`), either uploaded layer by layer from a `LayerSource` (a `HostLlama`, or a
//! checkpoint streamed from its memory mapping: `layer_source::CheckpointLayers`) or generated ON
//! THE GPU from a seed (`SyntheticSpec`: the exact Vicuna shapes without building gigabytes on the
//! host; the values are random, so the tokens mean nothing, only the bytes and the timing do).
//!
//! The upload is `layer_source::stream_model`: per layer, canonical form -> engine layout
//! (`gpu_layout`: q|k|v and gate|up fused where they share K, group size and act-order g_idx,
//! else separate slots at their column offsets; act-order rows sorted by group plus an activation
//! permutation) -> host-to-device copies -> host copies dropped. Host memory: about one layer.

use crate::error::DriverCtx;
use crate::gptq::QuantLinear;
use crate::kernels::abi;
use crate::model::config::ModelConfig;
use crate::model::gpu_layout::{Int4Linear, LaidOutLayer, LaidOutLinear, LaidOutSlot, Storage};
use crate::model::layer_source::{stream_model, CheckpointLayers, LayerSource};
use crate::model::load_progress::LoadStats;
use crate::{LabError, Result};
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg,
};
use half::f16;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;

/// One linear layer on the host: K = in_features, N = out_features.
#[derive(Debug, Clone, PartialEq)]
pub enum HostLinear {
    Quant(QuantLinear),
    /// fp16 W [n, k] row-major (the HF nn.Linear layout).
    F16 {
        k: usize,
        n: usize,
        w_nk: Vec<f16>,
    },
}

impl HostLinear {
    pub fn kn(&self) -> (usize, usize) {
        match self {
            HostLinear::Quant(q) => (q.k, q.n),
            HostLinear::F16 { k, n, .. } => (*k, *n),
        }
    }

    /// W [k, n] row-major in f64: the exact weights the GPU multiplies by (ground truth).
    pub fn dense_kn(&self) -> Vec<f64> {
        match self {
            HostLinear::Quant(q) => crate::reference::dequantize(q),
            HostLinear::F16 { k, n, w_nk } => {
                let mut w = vec![0f64; k * n];
                for r in 0..*n {
                    for c in 0..*k {
                        w[c * n + r] = w_nk[r * k + c].to_f64();
                    }
                }
                w
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostLayer {
    /// fp16 [hidden] input_layernorm.
    pub attn_norm: Vec<f16>,
    /// fp16 [hidden] post_attention_layernorm.
    pub ffn_norm: Vec<f16>,
    /// q, k, v, o, gate, up, down: the order of `ModelConfig::layer_linears`.
    pub linears: Vec<HostLinear>,
}

impl HostLayer {
    /// Host bytes of this layer's buffers (what a streamed load holds for it).
    pub fn host_bytes(&self) -> u64 {
        let lin: usize = self
            .linears
            .iter()
            .map(|l| match l {
                HostLinear::Quant(q) => {
                    q.qweight.len() * 4
                        + q.qzeros.len() * 4
                        + q.scales.len() * 2
                        + q.g_idx.as_ref().map_or(0, |g| g.len() * 4)
                        + q.bias.as_ref().map_or(0, |b| b.len() * 2)
                }
                HostLinear::F16 { w_nk, .. } => w_nk.len() * 2,
            })
            .sum();
        (lin + (self.attn_norm.len() + self.ffn_norm.len()) * 2) as u64
    }

    /// Check layer `i`'s shapes against `cfg` (names the tensor on failure).
    pub fn validate(&self, i: usize, cfg: &ModelConfig) -> Result<()> {
        let h = cfg.hidden_size;
        let bad = |what: String, reason: String| Err(LabError::invalid(what, reason));
        if self.attn_norm.len() != h || self.ffn_norm.len() != h {
            return bad(format!("layer {i} norms"), format!("expected [{h}]"));
        }
        let want = cfg.layer_linears();
        if self.linears.len() != want.len() {
            return bad(
                format!("layer {i}"),
                format!(
                    "expected {} linears, got {}",
                    want.len(),
                    self.linears.len()
                ),
            );
        }
        for ((name, k, n), lin) in want.iter().zip(&self.linears) {
            if lin.kn() != (*k, *n) {
                return bad(
                    format!("layer {i} {name}"),
                    format!("expected [K {k}, N {n}], got {:?}", lin.kn()),
                );
            }
            match lin {
                HostLinear::Quant(q) => {
                    q.validate()
                        .map_err(|r| LabError::invalid(format!("layer {i} {name}"), r))?;
                    if q.bias.is_some() {
                        return bad(format!("layer {i} {name}"), "has a bias; LLaMA linears have none and the GPU engine does not add one".into());
                    }
                }
                HostLinear::F16 { k, n, w_nk } => {
                    if w_nk.len() != k * n {
                        return bad(
                            format!("layer {i} {name}"),
                            format!("expected {} fp16 values, got {}", k * n, w_nk.len()),
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostLlama {
    /// fp16 [vocab, hidden].
    pub embed: Vec<f16>,
    pub layers: Vec<HostLayer>,
    /// fp16 [hidden] model.norm.
    pub final_norm: Vec<f16>,
    /// fp16 [vocab, hidden] (the checkpoint's layout: one row per token).
    pub lm_head: Vec<f16>,
}

/// What kind of linear weights a test model or a synthetic run gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WeightKind {
    Fp16,
    /// GPTQ int4; `group` -1 = per-channel.
    Int4 {
        group: i32,
        act_order: bool,
        sym: bool,
    },
}

impl WeightKind {
    /// GPTQ int4 with act-order (desc_act): rows permuted, a g_idx per row.
    pub fn is_act_order(&self) -> bool {
        matches!(
            self,
            WeightKind::Int4 {
                act_order: true,
                ..
            }
        )
    }

    pub fn label(&self) -> String {
        match self {
            WeightKind::Fp16 => "fp16".into(),
            WeightKind::Int4 {
                group,
                act_order,
                sym,
            } => format!(
                "int4 g{}{}{}",
                if *group < 0 {
                    "all".to_string()
                } else {
                    group.to_string()
                },
                if *act_order { " act-order" } else { "" },
                if *sym { " sym" } else { "" }
            ),
        }
    }
}

impl HostLlama {
    /// Check every shape against `cfg` (names the tensor on failure).
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let bad = |what: String, reason: String| Err(LabError::invalid(what, reason));
        if self.embed.len() != v * h {
            return bad(
                "embed_tokens".into(),
                format!("expected [{v}, {h}], got {} values", self.embed.len()),
            );
        }
        if self.lm_head.len() != v * h {
            return bad(
                "lm_head".into(),
                format!("expected [{v}, {h}], got {} values", self.lm_head.len()),
            );
        }
        if self.final_norm.len() != h {
            return bad(
                "model.norm".into(),
                format!("expected [{h}], got {}", self.final_norm.len()),
            );
        }
        if self.layers.len() != cfg.num_hidden_layers {
            return bad(
                "layers".into(),
                format!(
                    "config has {}, weights {}",
                    cfg.num_hidden_layers,
                    self.layers.len()
                ),
            );
        }
        for (i, l) in self.layers.iter().enumerate() {
            l.validate(i, cfg)?;
        }
        Ok(())
    }

    /// Seeded random weights of `cfg`'s shapes, quantized with RTN when `kind` is int4 (act-order:
    /// a random channel order per layer group, shared by q/k/v and by gate/up as GPTQ's would be).
    /// Host-side: for tiny test models only.
    pub fn random(cfg: &ModelConfig, seed: u64, kind: WeightKind) -> Result<Self> {
        use rand::{rngs::StdRng, seq::SliceRandom, RngExt, SeedableRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let h = cfg.hidden_size;
        let vec16 = |n: usize, lo: f32, hi: f32, rng: &mut StdRng| -> Vec<f16> {
            (0..n)
                .map(|_| f16::from_f32(rng.random_range(lo..hi)))
                .collect()
        };
        let mut layers = Vec::new();
        for _ in 0..cfg.num_hidden_layers {
            let mut linears = Vec::new();
            let mut order: Vec<usize> = Vec::new();
            for (idx, (_, k, n)) in cfg.layer_linears().into_iter().enumerate() {
                // One channel order per input: q,k,v share x; gate,up share x; o and down their own.
                if matches!(idx, 0 | 3 | 4 | 6) {
                    order = (0..k).collect();
                    order.shuffle(&mut rng);
                }
                let std = 1.0 / (k as f32).sqrt();
                let w_kn: Vec<f32> = (0..k * n)
                    .map(|_| rng.random_range(-1.7f32..1.7) * std)
                    .collect();
                linears.push(match kind {
                    WeightKind::Fp16 => {
                        let mut w_nk = vec![f16::ZERO; k * n];
                        for r in 0..k {
                            for c in 0..n {
                                w_nk[c * k + r] = f16::from_f32(w_kn[r * n + c]);
                            }
                        }
                        HostLinear::F16 { k, n, w_nk }
                    }
                    WeightKind::Int4 {
                        group,
                        act_order,
                        sym,
                    } => {
                        let g = if group < 0 { k } else { group as usize };
                        let g_idx = act_order.then(|| crate::gptq::act_order_g_idx(&order, g));
                        HostLinear::Quant(crate::gptq::quantize_rtn(
                            &w_kn, k, n, group, sym, g_idx,
                        )?)
                    }
                });
            }
            layers.push(HostLayer {
                attn_norm: vec16(h, 0.8, 1.2, &mut rng),
                ffn_norm: vec16(h, 0.8, 1.2, &mut rng),
                linears,
            });
        }
        Ok(HostLlama {
            embed: vec16(cfg.vocab_size * h, -1.0, 1.0, &mut rng),
            layers,
            final_norm: vec16(h, 0.8, 1.2, &mut rng),
            lm_head: vec16(
                cfg.vocab_size * h,
                -1.7 / (h as f32).sqrt(),
                1.7 / (h as f32).sqrt(),
                &mut rng,
            ),
        })
    }
}

impl HostLlama {
    /// The whole model on the host, from an opened checkpoint: the same per-layer conversion the
    /// streaming upload uses (`CheckpointLayers`), every layer kept. GPTQ linears as canonical
    /// `QuantLinear`s (true zeros), fp16 tensors as they are (bf16/f32 files are rounded to fp16
    /// once), a tied lm_head from the embedding. Host memory: the packed checkpoint size (7B int4:
    /// ~3.9 GB); the GPU engine streams instead (`GpuWeights::upload` with a `CheckpointLayers`).
    pub fn from_checkpoint(ckpt: &crate::model::checkpoint::Checkpoint) -> Result<Self> {
        let src = CheckpointLayers::new(ckpt);
        src.preflight(&ckpt.config)?;
        let layers = (0..src.num_layers())
            .map(|i| src.layer(i).map(Cow::into_owned))
            .collect::<Result<Vec<_>>>()?;
        let w = HostLlama {
            embed: src.embed()?.into_owned(),
            layers,
            final_norm: src.final_norm()?.into_owned(),
            lm_head: src.lm_head()?.into_owned(),
        };
        w.validate(&ckpt.config)
            .map_err(|e| LabError::bad_checkpoint(&ckpt.dir, e.to_string()))?;
        Ok(w)
    }
}

/// Arrays in device memory (`gpu_layout::Storage`).
pub struct Device;

impl Storage for Device {
    type Buf<T> = CudaSlice<T>;
}

/// An int4 linear on the device: the fields and layout of `gpu_layout::Int4Linear`, each array
/// a device buffer (`upload_linear` copies an `Int4Host` field by field).
pub type Int4Dev = Int4Linear<Device>;

/// An fp16 linear, W [n, k] row-major.
pub struct F16Dev {
    pub k: usize,
    pub n: usize,
    pub w: CudaSlice<f16>,
}

// Int4Dev is ~10x the size of F16Dev (five buffer handles); a model holds a few hundred of these,
// so boxing would save nothing measurable.
#[allow(clippy::large_enum_variant)]
pub enum GpuLinear {
    Int4(Int4Dev),
    F16(F16Dev),
}

impl GpuLinear {
    pub fn kn(&self) -> (usize, usize) {
        match self {
            GpuLinear::Int4(l) => (l.k, l.n),
            GpuLinear::F16(l) => (l.k, l.n),
        }
    }
    /// Device bytes of this layer = bytes a batch-1 GEMV reads per token (weights, scales,
    /// zeros, g_idx, perm). The activations (K + N fp16 values) are left out: they sit in L2.
    pub fn bytes(&self) -> u64 {
        match self {
            GpuLinear::Int4(l) => {
                let opt = |s: &Option<CudaSlice<_>>| {
                    s.as_ref()
                        .map_or(0, |s: &CudaSlice<u32>| s.len() as u64 * 4)
                };
                let opt_i =
                    |s: &Option<CudaSlice<i32>>| s.as_ref().map_or(0, |s| s.len() as u64 * 4);
                l.qweight.len() as u64 * 4
                    + opt(&l.qzeros)
                    + l.scales.len() as u64 * 2
                    + opt_i(&l.g_idx)
                    + opt_i(&l.perm)
            }
            GpuLinear::F16(l) => l.w.len() as u64 * 2,
        }
    }
}

/// A linear writing its N outputs at column `col` of a wider output (unfused q/k/v, gate/up).
pub struct Slot {
    pub lin: GpuLinear,
    pub col: usize,
}

pub struct GpuLayer {
    pub attn_norm: CudaSlice<f16>,
    pub ffn_norm: CudaSlice<f16>,
    /// Output [heads*hd | kv_dim | kv_dim].
    pub qkv: Vec<Slot>,
    pub o: GpuLinear,
    /// Output [inter | inter].
    pub gate_up: Vec<Slot>,
    pub down: GpuLinear,
}

impl GpuLayer {
    /// Every linear of the layer in step order: q|k|v parts, o, gate|up parts, down (as
    /// `LaidOutLayer::linears` on the host).
    pub fn linears(&self) -> impl Iterator<Item = &GpuLinear> {
        self.qkv
            .iter()
            .map(|s| &s.lin)
            .chain([&self.o])
            .chain(self.gate_up.iter().map(|s| &s.lin))
            .chain([&self.down])
    }
}

/// What was loaded, for reports: every byte count is exact (from the device buffers).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WeightsDesc {
    pub kind: WeightKind,
    /// "synthetic (GPU, seed N): random values, exact shapes" or "host" / a checkpoint path.
    pub source: String,
    pub linear_bytes: u64,
    pub lm_head_bytes: u64,
    pub embed_bytes: u64,
    pub norm_bytes: u64,
    /// q|k|v and gate|up each one launch.
    pub fused: bool,
}

impl WeightsDesc {
    pub fn total_bytes(&self) -> u64 {
        self.linear_bytes + self.lm_head_bytes + self.embed_bytes + self.norm_bytes
    }
}

pub struct GpuWeights {
    pub embed: CudaSlice<f16>,
    pub layers: Vec<GpuLayer>,
    pub final_norm: CudaSlice<f16>,
    pub lm_head: CudaSlice<f16>,
    pub desc: WeightsDesc,
    /// How the upload went (`None` for synthetic weights, generated on the GPU).
    pub load: Option<LoadStats>,
}

/// Synthetic weights generated on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyntheticSpec {
    pub kind: WeightKind,
    pub seed: u64,
}

fn htod<T: DeviceRepr>(stream: &Arc<CudaStream>, v: &[T], what: &str) -> Result<CudaSlice<T>> {
    stream.clone_htod(v).ctx(&format!("uploading {what}"))
}

fn upload_linear(stream: &Arc<CudaStream>, lin: &LaidOutLinear, what: &str) -> Result<GpuLinear> {
    Ok(match lin {
        LaidOutLinear::F16 { k, n, w_nk } => GpuLinear::F16(F16Dev {
            k: *k,
            n: *n,
            w: htod(stream, w_nk, what)?,
        }),
        LaidOutLinear::Int4(l) => GpuLinear::Int4(Int4Dev {
            k: l.k,
            n: l.n,
            group_size: l.group_size,
            groups: l.groups,
            symmetric: l.symmetric,
            qweight: htod(stream, &l.qweight, what)?,
            qzeros: l
                .qzeros
                .as_ref()
                .map(|z| htod(stream, z, what))
                .transpose()?,
            scales: htod(stream, &l.scales, what)?,
            g_idx: l
                .g_idx
                .as_ref()
                .map(|g| htod(stream, g, what))
                .transpose()?,
            perm: l.perm.as_ref().map(|p| htod(stream, p, what)).transpose()?,
        }),
    })
}

fn upload_layer(stream: &Arc<CudaStream>, l: &LaidOutLayer, i: usize) -> Result<GpuLayer> {
    let slots = |s: &[LaidOutSlot], what: &str| -> Result<Vec<Slot>> {
        s.iter()
            .map(|s| {
                Ok(Slot {
                    lin: upload_linear(stream, &s.lin, what)?,
                    col: s.col,
                })
            })
            .collect()
    };
    Ok(GpuLayer {
        attn_norm: htod(stream, &l.attn_norm, &format!("layer {i} input_layernorm"))?,
        ffn_norm: htod(
            stream,
            &l.ffn_norm,
            &format!("layer {i} post_attention_layernorm"),
        )?,
        qkv: slots(&l.qkv, &format!("layer {i} q|k|v"))?,
        o: upload_linear(stream, &l.o, &format!("layer {i} o_proj"))?,
        gate_up: slots(&l.gate_up, &format!("layer {i} gate|up"))?,
        down: upload_linear(stream, &l.down, &format!("layer {i} down_proj"))?,
    })
}

/// The kind of a model's linears, from a layer (a checkpoint has one kind throughout). The
/// group size is read off down_proj, the largest K: on q_proj a group equal to K (hidden 64,
/// group 64) would look per-channel.
pub fn kind_of(l: &HostLayer) -> WeightKind {
    // A validated layer has 7 linears; an empty one has nothing to call int4.
    let Some(lin) = l.linears.iter().max_by_key(|x| x.kn().0) else {
        return WeightKind::Fp16;
    };
    match lin {
        HostLinear::F16 { .. } => WeightKind::Fp16,
        HostLinear::Quant(q) => WeightKind::Int4 {
            group: if q.group_size == q.k {
                -1
            } else {
                q.group_size as i32
            },
            act_order: q.is_act_order(),
            sym: q.symmetric,
        },
    }
}

impl GpuWeights {
    /// Upload a model layer by layer: `src.preflight` (everything checkable before any GPU
    /// allocation), then per layer read (canonical form) -> lay out (fusion, act-order reorder) ->
    /// upload -> drop the host copies, then the embedding, final norm and lm_head one at a time.
    /// Host memory peaks at about one layer (canonical + laid out) or one [vocab, hidden] table.
    pub fn upload(
        stream: &Arc<CudaStream>,
        cfg: &ModelConfig,
        src: &dyn LayerSource,
        source: &str,
    ) -> Result<GpuWeights> {
        let m = stream_model(
            src,
            cfg,
            source,
            |i, laid| {
                let dev = upload_layer(stream, laid, i)?;
                // Wait for the copies: the host buffers go next, and the times are the copies'.
                stream.synchronize().ctx(&format!("uploading layer {i}"))?;
                Ok(dev)
            },
            |what, v| {
                let d = htod(stream, v, what)?;
                stream.synchronize().ctx(&format!("uploading {what}"))?;
                Ok(d)
            },
        )?;
        let (embed, final_norm, lm_head, layers) = (m.embed, m.final_norm, m.lm_head, m.layers);
        let (kind, fused_all, stats) = (m.kind, m.fused, m.stats);
        let gw = GpuWeights {
            embed,
            final_norm,
            lm_head,
            layers,
            desc: WeightsDesc {
                kind,
                source: source.into(),
                linear_bytes: 0,
                lm_head_bytes: 0,
                embed_bytes: 0,
                norm_bytes: 0,
                fused: fused_all,
            },
            load: Some(stats),
        };
        Ok(gw.with_byte_counts())
    }

    fn with_byte_counts(mut self) -> Self {
        let mut lin = 0u64;
        let mut norms = self.final_norm.len() as u64 * 2;
        for l in &self.layers {
            lin += l
                .qkv
                .iter()
                .chain(&l.gate_up)
                .map(|s| s.lin.bytes())
                .sum::<u64>();
            lin += l.o.bytes() + l.down.bytes();
            norms += (l.attn_norm.len() + l.ffn_norm.len()) as u64 * 2;
        }
        self.desc.linear_bytes = lin;
        self.desc.norm_bytes = norms;
        self.desc.lm_head_bytes = self.lm_head.len() as u64 * 2;
        self.desc.embed_bytes = self.embed.len() as u64 * 2;
        self
    }

    /// Random weights of `cfg`'s exact shapes generated on the GPU by `fill` (lab_llama_fill):
    /// nothing of their size touches the host. Int4: random codes, asymmetric random zeros (or
    /// symmetric: zeros not stored), scales in [2e-3, 4e-3] so W has a std near 0.02 like a real
    /// LLaMA layer and activations stay finite through every layer. Act-order: the load-time
    /// reordered form (codes sorted by group, a random activation permutation per input), i.e. what
    /// a real act-order checkpoint becomes after `reorder_by_group`.
    pub fn synthetic(
        stream: &Arc<CudaStream>,
        fill: &CudaFunction,
        cfg: &ModelConfig,
        spec: SyntheticSpec,
    ) -> Result<GpuWeights> {
        let mut seq = 0u64;
        let mut next_seed = || {
            seq += 1;
            spec.seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(seq)
        };
        let (h, inter, kv) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_key_value_heads * cfg.head_dim(),
        );
        let mut rng_perm = {
            use rand::SeedableRng;
            rand::rngs::StdRng::seed_from_u64(spec.seed ^ 0x5EED)
        };
        let f16s = |n: usize, lo: f32, hi: f32, seed: u64| -> Result<CudaSlice<f16>> {
            let s = stream
                .alloc_zeros::<f16>(n)
                .ctx("allocating synthetic fp16 weights")?;
            fill_launch(
                stream,
                fill,
                raw(&s, stream),
                n,
                seed,
                lo,
                hi,
                abi::LAB_FILL_F16 as i32,
            )?;
            Ok(s)
        };
        let lin = |k: usize,
                   n: usize,
                   seq_seed: [u64; 3],
                   rng: &mut rand::rngs::StdRng|
         -> Result<GpuLinear> {
            match spec.kind {
                WeightKind::Fp16 => {
                    // uniform +-0.035: std 0.02
                    let w = stream
                        .alloc_zeros::<f16>(k * n)
                        .ctx("allocating synthetic fp16 linear")?;
                    fill_launch(
                        stream,
                        fill,
                        raw(&w, stream),
                        k * n,
                        seq_seed[0],
                        -0.035,
                        0.035,
                        abi::LAB_FILL_F16 as i32,
                    )?;
                    Ok(GpuLinear::F16(F16Dev { k, n, w }))
                }
                WeightKind::Int4 {
                    group,
                    act_order,
                    sym,
                } => {
                    let g = if group < 0 { k } else { group as usize };
                    if g == 0 || k % g != 0 || g % 8 != 0 || n % 8 != 0 {
                        return Err(LabError::invalid("synthetic weights", format!("group {group} must be a multiple of 8 dividing K = {k}; N = {n} a multiple of 8")));
                    }
                    let groups = k / g;
                    let qweight = stream
                        .alloc_zeros::<u32>(k / 8 * n)
                        .ctx("allocating synthetic qweight")?;
                    fill_launch(
                        stream,
                        fill,
                        raw(&qweight, stream),
                        k / 8 * n,
                        seq_seed[0],
                        0.0,
                        0.0,
                        abi::LAB_FILL_U32 as i32,
                    )?;
                    let scales = stream
                        .alloc_zeros::<f16>(groups * n)
                        .ctx("allocating synthetic scales")?;
                    fill_launch(
                        stream,
                        fill,
                        raw(&scales, stream),
                        groups * n,
                        seq_seed[1],
                        2e-3,
                        4e-3,
                        abi::LAB_FILL_F16 as i32,
                    )?;
                    let qzeros = if sym {
                        None
                    } else {
                        let z = stream
                            .alloc_zeros::<u32>(groups * n / 8)
                            .ctx("allocating synthetic qzeros")?;
                        fill_launch(
                            stream,
                            fill,
                            raw(&z, stream),
                            groups * n / 8,
                            seq_seed[2],
                            0.0,
                            0.0,
                            abi::LAB_FILL_U32 as i32,
                        )?;
                        Some(z)
                    };
                    // One group spanning K has no channel order to keep (a checkpoint's g_idx is
                    // then trivial and the upload drops it): no permutation, as the planner assumes
                    // (gpu_engine::checkpoint_int4_layer).
                    let perm = if act_order && g < k {
                        use rand::seq::SliceRandom;
                        let mut p: Vec<i32> = (0..k as i32).collect();
                        p.shuffle(rng);
                        Some(htod(stream, &p, "synthetic act-order permutation")?)
                    } else {
                        None
                    };
                    Ok(GpuLinear::Int4(Int4Dev {
                        k,
                        n,
                        group_size: g,
                        groups,
                        symmetric: sym,
                        qweight,
                        qzeros,
                        scales,
                        g_idx: None,
                        perm,
                    }))
                }
            }
        };
        let mut layers = Vec::new();
        for _ in 0..cfg.num_hidden_layers {
            let s = [next_seed(), next_seed(), next_seed()];
            let qkv = lin(h, h + 2 * kv, s, &mut rng_perm)?;
            let s = [next_seed(), next_seed(), next_seed()];
            let o = lin(h, h, s, &mut rng_perm)?;
            let s = [next_seed(), next_seed(), next_seed()];
            let gate_up = lin(h, 2 * inter, s, &mut rng_perm)?;
            let s = [next_seed(), next_seed(), next_seed()];
            let down = lin(inter, h, s, &mut rng_perm)?;
            layers.push(GpuLayer {
                attn_norm: f16s(h, 0.9, 1.1, next_seed())?,
                ffn_norm: f16s(h, 0.9, 1.1, next_seed())?,
                qkv: vec![Slot { lin: qkv, col: 0 }],
                o,
                gate_up: vec![Slot {
                    lin: gate_up,
                    col: 0,
                }],
                down,
            });
        }
        let v = cfg.vocab_size;
        let gw = GpuWeights {
            embed: f16s(v * h, -0.05, 0.05, next_seed())?,
            final_norm: f16s(h, 0.9, 1.1, next_seed())?,
            lm_head: f16s(v * h, -0.035, 0.035, next_seed())?,
            layers,
            desc: WeightsDesc {
                kind: spec.kind,
                source: format!(
                    "synthetic (generated on the GPU, seed {}): random values, exact shapes",
                    spec.seed
                ),
                linear_bytes: 0,
                lm_head_bytes: 0,
                embed_bytes: 0,
                norm_bytes: 0,
                fused: true,
            },
            load: None,
        };
        Ok(gw.with_byte_counts())
    }
}

/// Raw device address of a buffer (event tracking is off in this crate, so the guard is inert).
pub(crate) fn raw<T>(s: &CudaSlice<T>, stream: &Arc<CudaStream>) -> u64 {
    use cudarc::driver::DevicePtr;
    let (p, _guard) = s.device_ptr(stream);
    p
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn fill_launch(
    stream: &Arc<CudaStream>,
    fill: &CudaFunction,
    ptr: u64,
    n: usize,
    seed: u64,
    lo: f32,
    hi: f32,
    kind: i32,
) -> Result<()> {
    let p = abi::lab_llama_fill_params {
        ptr,
        n: n as u64,
        seed,
        lo,
        hi,
        kind,
        _pad: 0,
    };
    let cfg = LaunchConfig {
        grid_dim: (((n as u64).div_ceil(256)).clamp(1, 4096) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: `ptr` addresses a live allocation of at least `n` elements of the kind's type
    // (u32 or fp16); the kernel's grid-stride loop stays below n.
    unsafe { stream.launch_builder(fill).arg(&p).launch(cfg) }
        .map(|_| ())
        .ctx("lab_llama_fill")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::config::ModelConfig;

    /// Tiny shapes for the host-side weight and layout tests (also gpu_layout.rs's).
    pub(crate) fn tiny() -> ModelConfig {
        ModelConfig {
            name: "tiny-test".into(),
            hidden_size: 64,
            intermediate_size: 96,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            vocab_size: 40,
            max_position_embeddings: 64,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            rope_linear_factor: 1.0,
            tie_word_embeddings: false,
        }
    }

    #[test]
    fn validate_names_the_bad_tensor() {
        let cfg = tiny();
        let mut w = HostLlama::random(&cfg, 1, WeightKind::Fp16).unwrap();
        w.layers[1].linears[6] = HostLinear::F16 {
            k: 96,
            n: 63,
            w_nk: vec![f16::ZERO; 96 * 63],
        };
        let e = w.validate(&cfg).unwrap_err().to_string();
        assert!(e.contains("layer 1 mlp.down_proj"), "{e}");
    }

    #[test]
    fn dense_of_f16_transposes_to_kn() {
        let l = HostLinear::F16 {
            k: 2,
            n: 3,
            w_nk: [1., 2., 3., 4., 5., 6.].map(f16::from_f32).to_vec(),
        };
        // W_nk rows are outputs: W_kn[c][r] = W_nk[r][c].
        assert_eq!(l.dense_kn(), vec![1., 3., 5., 2., 4., 6.]);
    }
}
