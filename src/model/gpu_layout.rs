//! The GPU engine's weight layout, built on the host: everything the uploader does before it
//! copies bytes, so all of it runs (and is tested) without a GPU.
//!
//! * Fusion: q|k|v become one [K, 3h] int4 layer and gate|up one [K, 2I] layer (one launch, one
//!   wide grid) when they share K, group size and g_idx; fp16 parts fuse when they share K.
//!   Parts of different kinds, group sizes or act-order g_idx stay separate slots, each writing
//!   at its column offset (one launch each). GPTQ quantizes q, k, v (and gate, up) from the same
//!   inputs, so a real act-order checkpoint gives them one channel order and fuses; the tiny
//!   fixtures draw one order per linear (scripts/make-tiny-fixtures.py) and take the separate
//!   path. `Fusion::Separate` says which tensors differ and where, for the load report.
//! * Act-order: each int4 linear's rows are sorted by group once (`gptq::reorder_by_group`) and
//!   the kernel reads x through the permutation; uneven groups keep a sorted g_idx.
//! * Bytes: `DeviceBytes` counts exactly what is uploaded (the lengths of the buffers below),
//!   so the GPU's byte counts equal these by construction.

use crate::gptq::{reorder_by_group, QuantLinear};
use crate::model::checkpoint::LinearMeta;
use crate::model::gpu_weights::{HostLayer, HostLinear};
use crate::{LabError, Result};
use half::f16;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Where the arrays of an `Int4Linear` live: `Host` (`Vec`, this module: built and tested without
/// a GPU) or `gpu_weights::Device` (`CudaSlice`, what the engine's kernels read). One field list
/// serves both, so the host form is the device form by construction.
pub trait Storage {
    type Buf<T>;
}

/// Arrays in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Host;

impl Storage for Host {
    type Buf<T> = Vec<T>;
}

/// An int4 linear in the engine's layout (canonical GPTQ packing, act-order rows sorted by group).
/// The derives hold where the storage's buffers allow them: `Int4Host` is Debug + Clone +
/// PartialEq; `Int4Dev` is none of these (a device buffer is neither printed nor copied
/// implicitly).
#[derive(Debug, Clone, PartialEq)]
pub struct Int4Linear<S: Storage> {
    pub k: usize,
    pub n: usize,
    pub group_size: usize,
    pub groups: usize,
    /// zeros are all 8: `qzeros` is not read (and not stored).
    pub symmetric: bool,
    /// u32 [k/8, n], rows sorted by group for act-order layers.
    pub qweight: S::Buf<u32>,
    /// u32 [groups, n/8] true zeros; `None` when symmetric (the kernel assumes 8).
    pub qzeros: Option<S::Buf<u32>>,
    /// fp16 [groups, n].
    pub scales: S::Buf<f16>,
    /// Sorted g_idx when the groups are uneven after the reorder (rare); `None`: group = row / G.
    pub g_idx: Option<S::Buf<i32>>,
    /// Act-order: x column read for sorted row r.
    pub perm: Option<S::Buf<i32>>,
}

/// An int4 linear exactly as the engine uploads it (the host twin of `gpu_weights::Int4Dev`).
pub type Int4Host = Int4Linear<Host>;

/// A linear as the engine stores it.
#[derive(Debug, Clone, PartialEq)]
pub enum LaidOutLinear {
    Int4(Int4Host),
    /// fp16 W [n, k] row-major.
    F16 {
        k: usize,
        n: usize,
        w_nk: Vec<f16>,
    },
}

/// A linear writing its N outputs at column `col` of a wider output.
#[derive(Debug, Clone, PartialEq)]
pub struct LaidOutSlot {
    pub lin: LaidOutLinear,
    pub col: usize,
}

/// One decoder layer as the engine stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct LaidOutLayer {
    pub attn_norm: Vec<f16>,
    pub ffn_norm: Vec<f16>,
    /// Output [heads*hd | kv_dim | kv_dim]: one slot when fused.
    pub qkv: Vec<LaidOutSlot>,
    pub o: LaidOutLinear,
    /// Output [inter | inter]: one slot when fused.
    pub gate_up: Vec<LaidOutSlot>,
    pub down: LaidOutLinear,
    /// Why q|k|v or gate|up stayed separate slots (empty when both fused).
    pub unfused: Vec<String>,
}

/// Device bytes by part. Activations are not weights and are left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceBytes {
    pub qweight: u64,
    pub qzeros: u64,
    pub scales: u64,
    /// Sorted g_idx of act-order layers with uneven groups (rare).
    pub g_idx: u64,
    /// Act-order permutations: one i32 per input row per launch.
    pub perm: u64,
    pub fp16_linear: u64,
    pub norms: u64,
}

impl DeviceBytes {
    pub fn linears(&self) -> u64 {
        self.qweight + self.qzeros + self.scales + self.g_idx + self.perm + self.fp16_linear
    }
    pub fn total(&self) -> u64 {
        self.linears() + self.norms
    }
    pub fn add(&mut self, o: &DeviceBytes) {
        self.qweight += o.qweight;
        self.qzeros += o.qzeros;
        self.scales += o.scales;
        self.g_idx += o.g_idx;
        self.perm += o.perm;
        self.fp16_linear += o.fp16_linear;
        self.norms += o.norms;
    }
}

impl LaidOutLinear {
    pub fn kn(&self) -> (usize, usize) {
        match self {
            LaidOutLinear::Int4(l) => (l.k, l.n),
            LaidOutLinear::F16 { k, n, .. } => (*k, *n),
        }
    }

    pub fn bytes(&self) -> DeviceBytes {
        let len4 = |v: &Option<Vec<_>>| v.as_ref().map_or(0, |v: &Vec<u32>| v.len() as u64 * 4);
        let leni = |v: &Option<Vec<i32>>| v.as_ref().map_or(0, |v| v.len() as u64 * 4);
        match self {
            LaidOutLinear::Int4(l) => DeviceBytes {
                qweight: l.qweight.len() as u64 * 4,
                qzeros: len4(&l.qzeros),
                scales: l.scales.len() as u64 * 2,
                g_idx: leni(&l.g_idx),
                perm: leni(&l.perm),
                ..Default::default()
            },
            LaidOutLinear::F16 { w_nk, .. } => DeviceBytes {
                fp16_linear: w_nk.len() as u64 * 2,
                ..Default::default()
            },
        }
    }

    /// W [k, n] in f64 with rows in the ORIGINAL input order (the reorder undone through
    /// `perm`): what this layout multiplies x by, comparable with the canonical layer's
    /// `reference::dequantize`.
    pub fn dense_kn(&self) -> Vec<f64> {
        match self {
            LaidOutLinear::F16 { k, n, w_nk } => {
                let mut w = vec![0f64; k * n];
                for r in 0..*n {
                    for c in 0..*k {
                        w[c * n + r] = w_nk[r * k + c].to_f64();
                    }
                }
                w
            }
            LaidOutLinear::Int4(l) => {
                let q = QuantLinear {
                    k: l.k,
                    n: l.n,
                    group_size: l.group_size,
                    qweight: l.qweight.clone(),
                    // Symmetric: the kernel assumes every zero is 8.
                    qzeros: l.qzeros.clone().unwrap_or_else(|| {
                        crate::gptq::pack::pack_zeros(&vec![8u8; l.groups * l.n], l.groups, l.n)
                    }),
                    scales: l.scales.clone(),
                    g_idx: l.g_idx.clone(),
                    bias: None,
                    symmetric: l.symmetric,
                };
                let sorted = crate::reference::dequantize(&q);
                let Some(perm) = &l.perm else { return sorted };
                let mut w = vec![0f64; l.k * l.n];
                for (r, &src) in perm.iter().enumerate() {
                    let src = src as usize;
                    w[src * l.n..(src + 1) * l.n].copy_from_slice(&sorted[r * l.n..(r + 1) * l.n]);
                }
                w
            }
        }
    }

    /// The int4 device form of a canonical layer: act-order rows sorted by group.
    pub fn int4(q: &QuantLinear) -> Result<Self> {
        let r = reorder_by_group(q)?;
        let act = q.is_act_order();
        let l = r.layer;
        Ok(LaidOutLinear::Int4(Int4Host {
            k: l.k,
            n: l.n,
            group_size: l.group_size,
            groups: l.groups(),
            symmetric: l.symmetric,
            qzeros: (!l.symmetric).then_some(l.qzeros),
            qweight: l.qweight,
            scales: l.scales,
            g_idx: l.g_idx,
            perm: act.then_some(r.perm),
        }))
    }

    fn of_host(h: &HostLinear) -> Result<Self> {
        match h {
            HostLinear::Quant(q) => Self::int4(q),
            HostLinear::F16 { k, n, w_nk } => Ok(LaidOutLinear::F16 {
                k: *k,
                n: *n,
                w_nk: w_nk.clone(),
            }),
        }
    }
}

impl LaidOutLayer {
    pub fn fused(&self) -> bool {
        self.qkv.len() == 1 && self.gate_up.len() == 1
    }

    pub fn linears(&self) -> impl Iterator<Item = &LaidOutLinear> {
        self.qkv
            .iter()
            .map(|s| &s.lin)
            .chain([&self.o])
            .chain(self.gate_up.iter().map(|s| &s.lin))
            .chain([&self.down])
    }

    pub fn bytes(&self) -> DeviceBytes {
        let mut b = DeviceBytes {
            norms: (self.attn_norm.len() + self.ffn_norm.len()) as u64 * 2,
            ..Default::default()
        };
        for l in self.linears() {
            b.add(&l.bytes());
        }
        b
    }
}

/// What fusion needs to know of one part of q|k|v or gate|up.
#[derive(Debug, Clone)]
pub struct GroupPart<'a> {
    /// The state-dict prefix, e.g. "model.layers.3.self_attn.k_proj" (for messages).
    pub prefix: String,
    pub k: usize,
    /// Rows per group (int4) or `None` (fp16).
    pub group_size: Option<usize>,
    pub g_idx: Option<Cow<'a, [i32]>>,
}

impl<'a> GroupPart<'a> {
    pub fn of_host(prefix: String, l: &'a HostLinear) -> Self {
        match l {
            HostLinear::Quant(q) => GroupPart {
                prefix,
                k: q.k,
                group_size: Some(q.group_size),
                // A trivial g_idx (row / G) is no act-order: the same as none.
                g_idx: q
                    .g_idx
                    .as_deref()
                    .filter(|_| q.is_act_order())
                    .map(Cow::Borrowed),
            },
            HostLinear::F16 { k, .. } => GroupPart {
                prefix,
                k: *k,
                group_size: None,
                g_idx: None,
            },
        }
    }

    /// `Checkpoint::linear_meta` already drops trivial g_idx.
    pub fn of_meta(prefix: String, m: &LinearMeta) -> GroupPart<'static> {
        GroupPart {
            prefix,
            k: m.k,
            group_size: m.group_size,
            g_idx: m.g_idx.clone().map(Cow::Owned),
        }
    }
}

/// How a group of parts is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fusion {
    Fused,
    /// One slot per part, and why.
    Separate(String),
}

/// The fusion decision for q|k|v or gate|up. Parts that cannot share an output at all
/// (different K) are an error naming the tensor.
pub fn fusion_for(parts: &[GroupPart]) -> Result<Fusion> {
    let first = &parts[0];
    if let Some(p) = parts.iter().find(|p| p.k != first.k) {
        return Err(LabError::invalid(
            p.prefix.clone(),
            format!(
                "K = {} but '{}' has K = {}; parts sharing an input must have the same K",
                p.k, first.prefix, first.k
            ),
        ));
    }
    let int4 = parts.iter().filter(|p| p.group_size.is_some()).count();
    if int4 == 0 {
        return Ok(Fusion::Fused);
    }
    if int4 < parts.len() {
        return Ok(Fusion::Separate("int4 and fp16 parts".into()));
    }
    if let Some(p) = parts.iter().find(|p| p.group_size != first.group_size) {
        return Ok(Fusion::Separate(format!(
            "group sizes differ: '{}' {:?}, '{}' {:?}",
            first.prefix, first.group_size, p.prefix, p.group_size
        )));
    }
    for p in &parts[1..] {
        let why = match (first.g_idx.as_deref(), p.g_idx.as_deref()) {
            (None, None) => None,
            (Some(a), Some(b)) => a.iter().zip(b).position(|(x, y)| x != y).map(|r| {
                format!(
                    "'{}.g_idx'[{r}] = {} but '{}.g_idx'[{r}] = {}",
                    p.prefix, b[r], first.prefix, a[r]
                )
            }),
            (None, Some(_)) => Some(format!(
                "'{}.g_idx' is act-order but '{}' has none",
                p.prefix, first.prefix
            )),
            (Some(_), None) => Some(format!(
                "'{}' has no act-order g_idx but '{}.g_idx' has one",
                p.prefix, first.prefix
            )),
        };
        if let Some(why) = why {
            return Ok(Fusion::Separate(format!("act-order orders differ: {why}")));
        }
    }
    Ok(Fusion::Fused)
}

/// The g_idx that matters: `None` when absent or trivial (row r in group r / G).
fn act_g_idx(q: &QuantLinear) -> Option<&Vec<i32>> {
    q.g_idx.as_ref().filter(|_| q.is_act_order())
}

/// Concatenate int4 layers along N (same K, group size and act-order g_idx: `fusion_for`).
pub fn fuse_quant(parts: &[&QuantLinear]) -> Option<QuantLinear> {
    let first = parts[0];
    if parts.iter().any(|p| {
        p.k != first.k || p.group_size != first.group_size || act_g_idx(p) != act_g_idx(first)
    }) {
        return None;
    }
    let (k, groups) = (first.k, first.groups());
    let n: usize = parts.iter().map(|p| p.n).sum();
    let mut qweight = Vec::with_capacity(k / 8 * n);
    for r in 0..k / 8 {
        for p in parts {
            qweight.extend_from_slice(&p.qweight[r * p.n..(r + 1) * p.n]);
        }
    }
    let (mut qzeros, mut scales) = (
        Vec::with_capacity(groups * n / 8),
        Vec::with_capacity(groups * n),
    );
    for g in 0..groups {
        for p in parts {
            qzeros.extend_from_slice(&p.qzeros[g * p.n / 8..(g + 1) * p.n / 8]);
            scales.extend_from_slice(&p.scales[g * p.n..(g + 1) * p.n]);
        }
    }
    Some(QuantLinear {
        k,
        n,
        group_size: first.group_size,
        qweight,
        qzeros,
        scales,
        g_idx: act_g_idx(first).cloned(),
        bias: None,
        symmetric: parts.iter().all(|p| p.symmetric),
    })
}

/// q|k|v or gate|up laid out: one fused slot when `fusion_for` allows, else one slot per part.
fn group_layout(parts: &[(String, &HostLinear)]) -> Result<(Vec<LaidOutSlot>, Fusion)> {
    let gp: Vec<GroupPart> = parts
        .iter()
        .map(|(p, l)| GroupPart::of_host(p.clone(), l))
        .collect();
    let fusion = fusion_for(&gp)?;
    if fusion == Fusion::Fused {
        let fused = match parts[0].1 {
            HostLinear::Quant(_) => {
                let qs: Vec<&QuantLinear> = parts
                    .iter()
                    .filter_map(|(_, l)| match l {
                        HostLinear::Quant(q) => Some(q),
                        HostLinear::F16 { .. } => None,
                    })
                    .collect();
                let f = fuse_quant(&qs).ok_or_else(|| {
                    LabError::invalid(parts[0].0.clone(), "fusion refused after it was allowed")
                })?;
                LaidOutLinear::int4(&f).map_err(|e| named(&parts[0].0, e))?
            }
            HostLinear::F16 { k, .. } => {
                let mut w = Vec::new();
                let mut n = 0;
                for (_, p) in parts {
                    if let HostLinear::F16 { n: pn, w_nk, .. } = p {
                        w.extend_from_slice(w_nk);
                        n += pn;
                    }
                }
                LaidOutLinear::F16 { k: *k, n, w_nk: w }
            }
        };
        return Ok((vec![LaidOutSlot { lin: fused, col: 0 }], fusion));
    }
    let mut slots = Vec::new();
    let mut col = 0;
    for (name, p) in parts {
        slots.push(LaidOutSlot {
            lin: LaidOutLinear::of_host(p).map_err(|e| named(name, e))?,
            col,
        });
        col += p.kn().1;
    }
    Ok((slots, fusion))
}

/// Layer `i` in the engine's layout. `names` are the 7 linear names of
/// `ModelConfig::layer_linears` (q, k, v, o, gate, up, down), for messages.
pub fn layout_layer(i: usize, l: &HostLayer, names: &[&str]) -> Result<LaidOutLayer> {
    if l.linears.len() != 7 || names.len() != 7 {
        return Err(LabError::invalid(
            format!("layer {i}"),
            format!("expected 7 linears, got {}", l.linears.len()),
        ));
    }
    let part = |j: usize| (format!("model.layers.{i}.{}", names[j]), &l.linears[j]);
    let single = |j: usize| {
        let (name, lin) = part(j);
        LaidOutLinear::of_host(lin).map_err(|e| named(&name, e))
    };
    let (qkv, f_qkv) = group_layout(&[part(0), part(1), part(2)])?;
    let (gate_up, f_gu) = group_layout(&[part(4), part(5)])?;
    let mut unfused = Vec::new();
    for (what, f) in [("q|k|v", f_qkv), ("gate|up", f_gu)] {
        if let Fusion::Separate(why) = f {
            unfused.push(format!("layer {i} {what} not fused: {why}"));
        }
    }
    Ok(LaidOutLayer {
        attn_norm: l.attn_norm.clone(),
        ffn_norm: l.ffn_norm.clone(),
        qkv,
        o: single(3)?,
        gate_up,
        down: single(6)?,
        unfused,
    })
}

/// A layout error (e.g. from the reorder) with the linear it came from.
fn named(prefix: &str, e: LabError) -> LabError {
    LabError::invalid(format!("linear '{prefix}'"), e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::decode_bench::expected_weights;
    use crate::model::gpu_weights::{HostLlama, WeightKind};
    use crate::model::layer_source::linear_names;

    use crate::model::gpu_weights::tests::tiny;

    fn int4(group: i32, act_order: bool, sym: bool) -> WeightKind {
        WeightKind::Int4 {
            group,
            act_order,
            sym,
        }
    }

    fn quant(l: &HostLinear) -> &QuantLinear {
        match l {
            HostLinear::Quant(q) => q,
            HostLinear::F16 { .. } => panic!("expected an int4 layer"),
        }
    }

    /// The laid-out group's weights, columns concatenated, vs each part's own weights.
    fn assert_group_equals_parts(slots: &[LaidOutSlot], parts: &[&HostLinear]) {
        let n: usize = parts.iter().map(|p| p.kn().1).sum();
        let k = parts[0].kn().0;
        let mut got = vec![0f64; k * n];
        for s in slots {
            let (sk, sn) = s.lin.kn();
            assert_eq!(sk, k);
            let d = s.lin.dense_kn();
            for r in 0..k {
                got[r * n + s.col..r * n + s.col + sn].copy_from_slice(&d[r * sn..(r + 1) * sn]);
            }
        }
        let mut col = 0;
        for p in parts {
            let (_, pn) = p.kn();
            let want = p.dense_kn();
            for r in 0..k {
                for c in 0..pn {
                    assert_eq!(
                        got[r * n + col + c],
                        want[r * pn + c],
                        "row {r} col {}",
                        col + c
                    );
                }
            }
            col += pn;
        }
        assert_eq!(col, n);
    }

    #[test]
    fn fused_quant_equals_its_parts_column_by_column() {
        let cfg = tiny();
        let w = HostLlama::random(&cfg, 3, int4(32, true, false)).unwrap();
        let l = &w.layers[0].linears;
        let parts: Vec<&QuantLinear> = l[..3].iter().map(quant).collect();
        let f = fuse_quant(&parts).expect("q, k, v share g_idx");
        f.validate().unwrap();
        let dense_f = crate::reference::dequantize(&f);
        let mut col = 0;
        for p in &parts {
            let d = crate::reference::dequantize(p);
            for r in 0..p.k {
                for c in 0..p.n {
                    assert_eq!(
                        d[r * p.n + c],
                        dense_f[r * f.n + col + c],
                        "row {r} col {c}"
                    );
                }
            }
            col += p.n;
        }
        // Group sizes differ (fuse_quant is public: it must not rely on fusion_for having
        // checked): plain k_proj at group 16 beside plain q_proj at 32 has twice the scale rows.
        let g32 = HostLlama::random(&cfg, 3, int4(32, false, false)).unwrap();
        let g16 = HostLlama::random(&cfg, 3, int4(16, false, false)).unwrap();
        let (q32, k16) = (
            quant(&g32.layers[0].linears[0]),
            quant(&g16.layers[0].linears[1]),
        );
        assert_eq!(k16.groups(), 2 * q32.groups());
        assert!(fuse_quant(&[q32, k16]).is_none());
        // o_proj has its own channel order: fusing it with q must be refused.
        assert!(fuse_quant(&[parts[0], quant(&l[3])]).is_none());
    }

    #[test]
    fn every_kind_lays_out_fused_and_computes_the_same_weights() {
        let cfg = tiny();
        let names = linear_names(&cfg);
        for kind in [
            WeightKind::Fp16,
            int4(32, false, false),
            int4(32, true, false),
            int4(-1, false, true),
            int4(16, true, true),
        ] {
            let w = HostLlama::random(&cfg, 5, kind).unwrap();
            for (i, l) in w.layers.iter().enumerate() {
                let laid = layout_layer(i, l, &names).unwrap();
                assert!(laid.fused(), "{kind:?} layer {i}");
                let p = &l.linears;
                assert_group_equals_parts(&laid.qkv, &[&p[0], &p[1], &p[2]]);
                assert_group_equals_parts(&laid.gate_up, &[&p[4], &p[5]]);
                assert_eq!(laid.o.dense_kn(), p[3].dense_kn());
                assert_eq!(laid.down.dense_kn(), p[6].dense_kn());
                let act = kind.is_act_order();
                for lin in laid.linears() {
                    if let LaidOutLinear::Int4(q) = lin {
                        assert_eq!(q.perm.is_some(), act, "{kind:?}: perm iff act-order");
                        // Rows sorted by group: even groups need no g_idx after the reorder.
                        assert!(q.g_idx.is_none());
                        assert_eq!(q.qzeros.is_none(), q.symmetric);
                    }
                }
            }
        }
    }

    #[test]
    fn bytes_equal_the_engine_prediction() {
        let cfg = tiny();
        let names = linear_names(&cfg);
        for kind in [
            WeightKind::Fp16,
            int4(32, false, false),
            int4(32, true, false),
            int4(-1, false, true),
            int4(16, true, true),
        ] {
            let w = HostLlama::random(&cfg, 7, kind).unwrap();
            let mut sum = DeviceBytes::default();
            for (i, l) in w.layers.iter().enumerate() {
                sum.add(&layout_layer(i, l, &names).unwrap().bytes());
            }
            let want = expected_weights(&cfg, kind).unwrap();
            assert_eq!(sum.linears(), want.linear_bytes, "{kind:?}");
            // expected_weights' norms include model.norm.
            assert_eq!(
                sum.norms + cfg.hidden_size as u64 * 2,
                want.norm_bytes,
                "{kind:?}"
            );
        }
    }

    /// A symmetric part fused with asymmetric ones (fusion_for does not look at zeros): the fused
    /// layer keeps every part's own zeros, so it must not be marked symmetric (which drops the
    /// zeros and reads 8 for all). Checked against each part's own dequantized weights.
    #[test]
    fn a_symmetric_part_fused_with_asymmetric_ones_keeps_their_zeros() {
        let cfg = tiny();
        let names = linear_names(&cfg);
        let asym = HostLlama::random(&cfg, 15, int4(32, false, false)).unwrap();
        let sym = HostLlama::random(&cfg, 15, int4(32, false, true)).unwrap();
        let mut l = asym.layers[0].clone();
        l.linears[0] = sym.layers[0].linears[0].clone(); // q_proj symmetric, k/v asymmetric
        assert!(quant(&l.linears[0]).symmetric && !quant(&l.linears[1]).symmetric);
        let laid = layout_layer(0, &l, &names).unwrap();
        assert_eq!(laid.qkv.len(), 1, "same K, group and order: fused");
        match &laid.qkv[0].lin {
            LaidOutLinear::Int4(q) => assert!(!q.symmetric && q.qzeros.is_some()),
            LaidOutLinear::F16 { .. } => panic!("expected int4"),
        }
        let p = &l.linears;
        assert_group_equals_parts(&laid.qkv, &[&p[0], &p[1], &p[2]]);
    }

    /// Writers store g_idx for every linear, plain ones included (row r in group r / G). Such a
    /// trivial g_idx is no act-order: the layer must lay out as plain, with no permutation
    /// (which would cost a gather, K more i32s, and bar the kernels that take no perm) and no
    /// g_idx, its packed words as stored.
    #[test]
    fn a_stored_trivial_g_idx_lays_out_as_plain_order() {
        let cfg = tiny();
        let w = HostLlama::random(&cfg, 17, int4(32, false, false)).unwrap();
        let mut q = quant(&w.layers[0].linears[3]).clone();
        assert!(q.g_idx.is_none());
        q.g_idx = Some((0..q.k).map(|r| (r / 32) as i32).collect());
        let laid = LaidOutLinear::int4(&q).unwrap();
        let LaidOutLinear::Int4(l) = &laid else {
            panic!("expected int4")
        };
        assert!(
            l.perm.is_none() && l.g_idx.is_none(),
            "{:?} {:?}",
            l.perm,
            l.g_idx
        );
        assert_eq!(l.qweight, q.qweight);
        assert_eq!(laid.bytes().perm + laid.bytes().g_idx, 0);
    }

    #[test]
    fn mixed_group_sizes_stay_separate_slots_at_their_columns() {
        let cfg = tiny();
        let names = linear_names(&cfg);
        let a = HostLlama::random(&cfg, 9, int4(32, false, false)).unwrap();
        let b = HostLlama::random(&cfg, 9, int4(16, false, false)).unwrap();
        let mut l = a.layers[0].clone();
        l.linears[1] = b.layers[0].linears[1].clone(); // k_proj with group 16
        let laid = layout_layer(0, &l, &names).unwrap();
        assert_eq!(laid.qkv.len(), 3);
        assert_eq!(
            laid.qkv.iter().map(|s| s.col).collect::<Vec<_>>(),
            vec![0, 64, 96]
        );
        assert!(!laid.fused());
        let p = &l.linears;
        assert_group_equals_parts(&laid.qkv, &[&p[0], &p[1], &p[2]]);
    }

    #[test]
    fn mismatched_act_order_g_idx_stays_separate_naming_the_tensors() {
        let cfg = tiny();
        let names = linear_names(&cfg);
        let a = HostLlama::random(&cfg, 11, int4(32, true, false)).unwrap();
        let b = HostLlama::random(&cfg, 12, int4(32, true, false)).unwrap();
        let mut l = a.layers[1].clone();
        l.linears[2] = b.layers[1].linears[2].clone(); // v_proj from another "run"
        let laid = layout_layer(1, &l, &names).unwrap();
        assert_eq!(laid.qkv.len(), 3);
        assert_eq!(laid.gate_up.len(), 1);
        assert_eq!(laid.unfused.len(), 1);
        let why = &laid.unfused[0];
        assert!(
            why.contains("layer 1 q|k|v")
                && why.contains("model.layers.1.self_attn.v_proj.g_idx")
                && why.contains("model.layers.1.self_attn.q_proj.g_idx"),
            "{why}"
        );
        let p = &l.linears;
        assert_group_equals_parts(&laid.qkv, &[&p[0], &p[1], &p[2]]);
        // Act-order on one part only: separate too, and said so.
        let plain = HostLlama::random(&cfg, 11, int4(32, false, false)).unwrap();
        let mut l = a.layers[0].clone();
        l.linears[5] = plain.layers[0].linears[5].clone(); // up_proj without act-order
        let laid = layout_layer(0, &l, &names).unwrap();
        assert_eq!(laid.gate_up.len(), 2);
        assert!(
            laid.unfused[0].contains("model.layers.0.mlp.up_proj")
                && laid.unfused[0].contains("has no act-order"),
            "{:?}",
            laid.unfused
        );
        let p = &l.linears;
        assert_group_equals_parts(&laid.gate_up, &[&p[4], &p[5]]);
    }

    #[test]
    fn parts_with_different_k_are_refused_naming_the_tensor() {
        let cfg = tiny();
        let names = linear_names(&cfg);
        let w = HostLlama::random(&cfg, 13, int4(32, false, false)).unwrap();
        let mut l = w.layers[0].clone();
        l.linears[5] = w.layers[0].linears[6].clone(); // down_proj (K = inter) as up_proj
        let e = layout_layer(0, &l, &names).unwrap_err().to_string();
        assert!(
            e.contains("model.layers.0.mlp.up_proj") && e.contains("K = 96"),
            "{e}"
        );
    }
}
