//! The dispatcher: which variant and parameters serve a (shape, batch). From the GPU's tuned
//! config when it covers the key, else from a built-in heuristic.

use super::schema::{
    Choice, DecodeBudget, DecodeModel, LinearChoice, ProblemKey, StepOptions, TunedConfig,
};
use crate::cuda::DeviceInfo;
use crate::kernels::registry::{self, ActOrder};
use crate::{LabError, Result};
use std::collections::HashMap;

/// What the dispatcher knows about a variant it may pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownVariant {
    pub name: &'static str,
    /// Inclusive batch (m) range.
    pub batch: (u32, u32),
    /// Can serve act-order keys (reordered rows + permutation, or g_idx gather).
    pub act_order: bool,
    pub min_sm: u32,
}

/// The GEMV/GEMM variants the heuristic and the tuner choose from, in order of preference within a
/// family. The names must match registry entries (a test checks that every registered int4
/// kernel is listed here or excused); the registry's facts (batch range, act-order modes, min SM,
/// group sizes) override the ones written here; see `facts`.
pub const VARIANTS: &[KnownVariant] = &[
    // m = 1
    KnownVariant {
        name: "gemv_v2_vec",
        batch: (1, 1),
        act_order: false,
        min_sm: 75,
    },
    KnownVariant {
        name: "gemv_v4_perm",
        batch: (1, 1),
        act_order: true,
        min_sm: 75,
    },
    KnownVariant {
        name: "gemv_v5_splitk",
        batch: (1, 1),
        act_order: false,
        min_sm: 75,
    },
    // The tuner measures v6 beside v2/v4/v5 (it wins most act-order and several plain decode
    // shapes on the H100); the heuristic does not pick it.
    KnownVariant {
        name: "gemv_v6_pipe",
        batch: (1, 1),
        act_order: true,
        min_sm: 75,
    },
    // v6 without the x staging (runs 12d/12e: the fastest GEMV at 3 of 4 decode shapes), no
    // act-order. Listed since run 13, whose tuning never measured it (it was missing here).
    KnownVariant {
        name: "gemv_v10_l2x",
        batch: (1, 1),
        act_order: false,
        min_sm: 75,
    },
    // m = 2..64
    KnownVariant {
        name: "gemm_v1_simt",
        batch: (2, 64),
        act_order: true,
        min_sm: 75,
    },
    // mma.sync m16n8k16 needs sm_80.
    KnownVariant {
        name: "gemm_v2_mma",
        batch: (2, 64),
        act_order: true,
        min_sm: 80,
    },
];

/// Batch buckets the tuner measures; a batch is served by the next bucket up.
pub const BATCH_BUCKETS: &[u32] = &[1, 2, 4, 8, 16, 32, 64];

/// Round a batch up to its bucket; None for 0 or above 64 (no variant serves it).
pub fn batch_bucket(batch: u32) -> Option<u32> {
    BATCH_BUCKETS
        .iter()
        .copied()
        .find(|&b| b >= batch.max(1))
        .filter(|_| batch > 0)
}

/// Columns one GEMV CTA produces in the heuristic's model (a 256-thread CTA of 8 warps, each warp
/// owning 16 columns). Used only to judge whether a grid is too narrow to fill the SMs.
pub const GEMV_COLS_PER_CTA: u32 = 128;
/// Split-K only pays when each slice still streams a long run of K: 512 rows = 256 bytes of
/// codes per column, several 16-byte loads per thread.
pub const SPLITK_MIN_SLICE_K: u32 = 512;
/// Same cap as the planner's split-K workspace (plan::bytes::SPLITK_MAX_SLICES).
pub const SPLITK_MAX: u32 = 16;

/// (batch range, serves act-order, min SM, serves this group size) for a variant name: the
/// registry's facts when the variant is registered, else `VARIANTS`.
pub fn facts(name: &str, group_size: i32) -> Option<((u32, u32), bool, u32, bool)> {
    if let Some(v) = registry::by_name(name) {
        let ao = v.act_order.iter().any(|a| *a != ActOrder::None);
        let g = v.group_sizes.is_empty() || v.group_sizes.contains(&group_size);
        return Some((v.batch, ao, v.min_sm, g));
    }
    VARIANTS
        .iter()
        .find(|v| v.name == name)
        .map(|v| (v.batch, v.act_order, v.min_sm, true))
}

/// Whether `name` can serve `key` on a card of compute capability `sm` (e.g. 86).
pub fn serves(name: &str, key: &ProblemKey, sm: u32) -> bool {
    facts(name, key.group_size).is_some_and(|((lo, hi), ao, min_sm, g)| {
        (lo..=hi).contains(&key.batch_bucket) && (ao || !key.act_order) && sm >= min_sm && g
    })
}

/// The untuned choice for `key` on a card with `sms` SMs of compute capability `sm`.
pub fn heuristic(key: &ProblemKey, sm: u32, sms: u32) -> Result<Choice> {
    let preferred = if key.batch_bucket == 1 {
        let ctas = key.n.div_ceil(GEMV_COLS_PER_CTA);
        let split = splitk_factor(ctas, key.k, sms);
        if key.act_order {
            Choice::new("gemv_v4_perm")
        } else if split > 1 {
            // Too few CTAs to fill the SMs (4096 columns = 32 CTAs vs 132 SMs on an H100): split K.
            Choice::new("gemv_v5_splitk").with(
                "split_k",
                registry_value("gemv_v5_splitk", "split_k", split),
            )
        } else {
            Choice::new("gemv_v2_vec")
        }
    } else if sm >= 80 {
        Choice::new("gemm_v2_mma")
    } else {
        Choice::new("gemm_v1_simt")
    };
    if serves(&preferred.variant, key, sm) {
        return Ok(preferred);
    }
    // The preferred variant cannot serve this key (e.g. its registry entry lacks the group size):
    // the first variant in VARIANTS order that can, with its default parameters.
    VARIANTS
        .iter()
        .find(|v| serves(v.name, key, sm))
        .map(|v| Choice::new(v.name))
        .ok_or_else(|| LabError::UnsupportedShape {
            variant: "dispatcher".into(),
            shape: key.to_string(),
            reason: format!("no known variant serves it on sm_{sm}"),
        })
}

/// The smallest value of `variant`'s tunable `name` that is >= `want` (else its largest), so the
/// heuristic never asks for a value the kernel was not compiled for; `want` when not registered.
pub fn registry_value(variant: &str, name: &str, want: u32) -> u32 {
    let Some(t) =
        registry::by_name(variant).and_then(|v| v.tunables.iter().find(|t| t.name == name))
    else {
        return want;
    };
    let mut vals: Vec<u32> = t.values.to_vec();
    vals.sort_unstable();
    vals.iter()
        .copied()
        .find(|&x| x >= want)
        .or(vals.last().copied())
        .unwrap_or(want)
}

/// Smallest power-of-two split that gives at least one CTA per SM, capped by SPLITK_MAX and by
/// slices of at least SPLITK_MIN_SLICE_K rows. 1 = no split.
pub fn splitk_factor(ctas: u32, k: u32, sms: u32) -> u32 {
    let mut s = 1;
    while ctas * s < sms && s * 2 <= SPLITK_MAX && k / (s * 2) >= SPLITK_MIN_SLICE_K {
        s *= 2;
    }
    s
}

#[derive(Debug, Clone)]
pub struct Dispatcher {
    tuned: HashMap<ProblemKey, Choice>,
    /// The accepted config's decode budgets (`lab tune`, after the keys).
    decode: Vec<DecodeBudget>,
    sm: u32,
    sms: u32,
    /// Why a given tuned config was not used; None when it was used or none was given.
    pub refused: Option<String>,
}

impl Dispatcher {
    /// Use `config` if it was measured on this GPU with these kernels; otherwise fall back to the
    /// heuristic and keep the reason in `refused` for the caller to print.
    pub fn from_config(
        config: Option<TunedConfig>,
        device: &DeviceInfo,
        kernel_hash: &str,
    ) -> Self {
        let sm = device.sm();
        let mut d = Dispatcher {
            tuned: HashMap::new(),
            decode: Vec::new(),
            sm,
            sms: device.sms.max(1) as u32,
            refused: None,
        };
        if let Some(c) = config {
            match c.check_matches(device, kernel_hash) {
                Ok(()) => {
                    d.tuned = c.entries.into_iter().map(|e| (e.key, e.winner)).collect();
                    d.decode = c.decode;
                }
                Err(e) => d.refused = Some(e.to_string()),
            }
        }
        d
    }

    pub fn key(n: u32, k: u32, group_size: i32, act_order: bool, batch: u32) -> Result<ProblemKey> {
        let batch_bucket = batch_bucket(batch).ok_or_else(|| LabError::UnsupportedShape {
            variant: "dispatcher".into(),
            shape: format!("n={n} k={k} batch={batch}"),
            reason: format!(
                "batch must be 1..={}",
                BATCH_BUCKETS[BATCH_BUCKETS.len() - 1]
            ),
        })?;
        Ok(ProblemKey {
            n,
            k,
            group_size,
            act_order,
            batch_bucket,
        })
    }

    pub fn choose(
        &self,
        n: u32,
        k: u32,
        group_size: i32,
        act_order: bool,
        batch: u32,
    ) -> Result<Choice> {
        let key = Self::key(n, k, group_size, act_order, batch)?;
        match self.tuned.get(&key) {
            Some(c) => Ok(c.clone()),
            None => heuristic(&key, self.sm, self.sms),
        }
    }

    /// Whether `key` is served from the tuned config (else from the heuristic).
    pub fn is_tuned(&self, key: &ProblemKey) -> bool {
        self.tuned.contains_key(key)
    }

    /// The tuned decode budget for a step of `model` running exactly `linears` (sorted).
    pub fn decode_budget(
        &self,
        model: &DecodeModel,
        step: &StepOptions,
        linears: &[LinearChoice],
    ) -> Option<&DecodeBudget> {
        super::decode::lookup(&self.decode, model, step, linears)
    }

    /// How many keys the accepted tuned config covers (0: heuristic only).
    pub fn tuned_len(&self) -> usize {
        self.tuned.len()
    }
}
