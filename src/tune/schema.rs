//! The tuned config file (tuning/<gpu-slug>.json): which variant and parameters won each problem
//! key on one GPU, with every candidate's timings. Written atomically after every key.
//!
//! Compatibility: unknown fields are ignored (serde's default) and optional fields default, so an
//! older or newer lab can read the file; a candidate status this build does not know reads as
//! `Unknown` and never wins. A file from another GPU or another kernel hash is refused by name.

use crate::cuda::DeviceInfo;
use crate::{LabError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Bumped when a field changes meaning; additions that old readers may ignore do not bump it.
pub const SCHEMA_VERSION: u32 = 1;

/// What is being tuned: one linear shape at one batch bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProblemKey {
    /// out_features
    pub n: u32,
    /// in_features
    pub k: u32,
    /// Rows per group; -1 = per-channel.
    pub group_size: i32,
    pub act_order: bool,
    /// Batch rounded up to 1/2/4/8/16/32/64 (`dispatch::batch_bucket`).
    pub batch_bucket: u32,
}

impl std::fmt::Display for ProblemKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n={} k={} g={} act_order={} m<={}",
            self.n, self.k, self.group_size, self.act_order, self.batch_bucket
        )
    }
}

/// A variant (registry name) and its launch parameters; params left out take the variant's defaults.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Choice {
    pub variant: String,
    #[serde(default)]
    pub params: BTreeMap<String, u32>,
}

impl Choice {
    pub fn new(variant: &str) -> Self {
        Choice {
            variant: variant.to_string(),
            params: BTreeMap::new(),
        }
    }
    pub fn with(mut self, param: &str, value: u32) -> Self {
        self.params.insert(param.to_string(), value);
        self
    }
}

impl std::fmt::Display for Choice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.variant)?;
        if !self.params.is_empty() {
            let p: Vec<String> = self
                .params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            write!(f, "({})", p.join(","))?;
        }
        Ok(())
    }
}

/// One candidate's outcome. Times are per launch, microseconds, over the timing harness's runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CandidateStatus {
    Ok {
        median_us: f64,
        /// Interquartile mean: the comparison statistic (robust to a few slow outliers).
        iqm_us: f64,
        p25_us: f64,
        p75_us: f64,
    },
    /// Not usable: failed the correctness check, unsupported shape, launch error...
    Rejected { reason: String },
    /// A status written by a newer lab; treated as rejected.
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateResult {
    pub choice: Choice,
    pub status: CandidateStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunedEntry {
    pub key: ProblemKey,
    pub winner: Choice,
    /// What the heuristic would have served: the baseline a winner must beat.
    pub default: Choice,
    #[serde(default)]
    pub candidates: Vec<CandidateResult>,
    /// Why the winner won, e.g. "kept default: gain 1.2% within noise 2.0%".
    #[serde(default)]
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunedConfig {
    pub schema_version: u32,
    pub device: DeviceInfo,
    #[serde(default)]
    pub git_rev: String,
    /// `build_info::KERNEL_HASH` of the binary that measured: timings of other kernels mean nothing.
    pub kernel_hash: String,
    /// UTC, RFC 3339.
    #[serde(default)]
    pub created: String,
    #[serde(default)]
    pub entries: Vec<TunedEntry>,
    /// The decode step's PDL prefetch budget per model shape (`lab tune` after the keys; empty in
    /// files written before it existed).
    #[serde(default)]
    pub decode: Vec<DecodeBudget>,
}

/// The model dimensions a decode budget was timed for. Any checkpoint of these dimensions
/// (Vicuna-7B and LLaMA-7B alike) runs the same step, so it takes the same budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DecodeModel {
    pub hidden_size: u32,
    pub intermediate_size: u32,
    pub num_hidden_layers: u32,
    pub num_attention_heads: u32,
    pub num_key_value_heads: u32,
}

impl DecodeModel {
    pub fn of(cfg: &crate::model::config::ModelConfig) -> Self {
        let u = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        DecodeModel {
            hidden_size: u(cfg.hidden_size),
            intermediate_size: u(cfg.intermediate_size),
            num_hidden_layers: u(cfg.num_hidden_layers),
            num_attention_heads: u(cfg.num_attention_heads),
            num_key_value_heads: u(cfg.num_key_value_heads),
        }
    }
}

/// The engine options that change a decode step beyond its int4 kernels (EngineOptions'
/// act_order_plain, fused_glu, attn_prefetch_kv): a tuned budget serves only a step with the
/// options it was timed with. Left out: the sampling (one small launch per step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StepOptions {
    pub act_order_plain: bool,
    pub fused_glu: bool,
    pub attn_prefetch_kv: bool,
}

impl Default for StepOptions {
    /// EngineOptions::new's: what `lab tune` times, and what an entry written before this field
    /// was timed with.
    fn default() -> Self {
        crate::model::gpu_engine::EngineOptions::new(1).step_options()
    }
}

/// One int4 linear shape of a decode step and the kernel that served it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LinearChoice {
    pub key: ProblemKey,
    pub choice: Choice,
}

/// The GEMVs' per-block PDL prefetch budgets of a decode step (EngineOptions::pdl_budget): `bytes`
/// for every int4 GEMV, except the registry variants named in `per_variant`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BudgetSetting {
    pub bytes: u32,
    #[serde(default)]
    pub per_variant: BTreeMap<String, u32>,
}

impl BudgetSetting {
    pub fn uniform(bytes: u32) -> Self {
        BudgetSetting {
            bytes,
            per_variant: BTreeMap::new(),
        }
    }

    /// The budget per block of a launch of `variant` (a registry name).
    pub fn bytes_for(&self, variant: &str) -> u32 {
        self.per_variant.get(variant).copied().unwrap_or(self.bytes)
    }
}

impl std::fmt::Display for BudgetSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Whole KB as the tuner writes them; any other budget (lab decode --pdl-prefetch 1000)
        // in bytes, so it never reads as a rounded one.
        let size = |b: u32| {
            if b % 1024 == 0 {
                format!("{} KB", b / 1024)
            } else {
                format!("{b} B")
            }
        };
        write!(f, "{}", size(self.bytes))?;
        for (v, b) in &self.per_variant {
            write!(f, ", {v} {}", size(*b))?;
        }
        Ok(())
    }
}

/// One budget setting's graph + PDL steps, ms per token, one value per timing round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetCandidate {
    pub setting: BudgetSetting,
    pub ms_per_token: Vec<f64>,
}

impl BudgetCandidate {
    /// Statistics of the rounds (ms, in Timing's `_us` fields); None when there are none or one
    /// is not finite.
    pub fn rounds(&self) -> Option<crate::bench::stats::Timing> {
        crate::bench::stats::Timing::from_samples(&self.ms_per_token)
    }
}

/// Why a model's decode step has its own budget: the best per-block prefetch depends on the whole
/// step (H100 runs 12-17: Vicuna-7B fastest at 16 KB, 13B at 32 KB; neither a cap per launch nor a
/// budget per kernel variant served both, notes/kernels.md), so `lab tune` times the step itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecodeBudget {
    pub model: DecodeModel,
    /// For people: what was timed ("vicuna-7b int4 g128 act-order, ctx 128").
    #[serde(default)]
    pub label: String,
    /// Timed with act-order weights (one entry per model and form: a re-tune replaces it).
    #[serde(default)]
    pub act_order: bool,
    /// The int4 linear shapes the engine planned for the step and their kernels, sorted (an
    /// act-order step plans both its act-order and its plain-shape choices). The budget serves an
    /// engine only while its dispatcher plans exactly these: a budget timed with other kernels says
    /// nothing about that step. Not part of the match: the sampling, symmetric zeros, the lm_head.
    pub linears: Vec<LinearChoice>,
    /// The step options it was timed with (part of the match, like `linears`).
    #[serde(default)]
    pub step: StepOptions,
    pub winner: BudgetSetting,
    pub default: BudgetSetting,
    #[serde(default)]
    pub candidates: Vec<BudgetCandidate>,
    #[serde(default)]
    pub note: String,
}

/// Why a config measured on `was` does not describe `now` although both carry one name, or None.
/// One name can hide other hardware: the 12 GB and 8 GB RTX 3060 (192- vs 128-bit bus), a MIG
/// slice of an H100 (fewer SMs). The facts fixed in silicon must match; memory size, clocks and
/// driver are left out (the driver's figures for the same card can move).
pub fn other_hardware(was: &DeviceInfo, now: &DeviceInfo) -> Option<String> {
    let hw = |d: &DeviceInfo| (d.cc_major, d.cc_minor, d.sms, d.bus_width_bits);
    let say = |d: &DeviceInfo| {
        format!(
            "sm_{}{}, {} SMs, {}-bit memory bus",
            d.cc_major, d.cc_minor, d.sms, d.bus_width_bits
        )
    };
    (hw(was) != hw(now)).then(|| {
        format!(
            "it was measured on a '{}' with {}, this one has {}: other hardware under the same name",
            now.name,
            say(was),
            say(now)
        )
    })
}

impl TunedConfig {
    pub fn new(device: DeviceInfo, git_rev: &str, kernel_hash: &str) -> Self {
        TunedConfig {
            schema_version: SCHEMA_VERSION,
            device,
            git_rev: git_rev.to_string(),
            kernel_hash: kernel_hash.to_string(),
            created: now_utc_rfc3339(),
            entries: Vec::new(),
            decode: Vec::new(),
        }
    }

    /// Read a tuned config, refusing one of another schema version (its fields may mean other
    /// things: read as this one's, it would be misread) and one whose recorded timings are not
    /// positive finite numbers; the error names the file.
    pub fn load(path: &Path) -> Result<Self> {
        let v: serde_json::Value = crate::util::read_json(path)?;
        // Checked before the rest is parsed: another version's fields may not parse at all.
        let version = v.get("schema_version");
        if version.and_then(serde_json::Value::as_u64) != Some(u64::from(SCHEMA_VERSION)) {
            return Err(LabError::invalid(
                path.display().to_string(),
                format!(
                    "schema_version {}, expected {SCHEMA_VERSION} (the only version this lab reads); \
                     re-run `lab tune` to write a current file",
                    version.map_or("missing".into(), |v| v.to_string())
                ),
            ));
        }
        let c: TunedConfig = serde_json::from_value(v).map_err(|e| LabError::Json {
            path: path.into(),
            source: e,
        })?;
        c.check_recorded_timings()
            .and_then(|()| c.check_entries())
            .map_err(|why| LabError::invalid(path.display().to_string(), why))?;
        Ok(c)
    }

    /// Every entry must be one the tuner could have written: a batch bucket the dispatcher has,
    /// a key once (the dispatcher served the last of two, a re-tune updated the first), and a
    /// winner that serves its key on the config's own GPU with parameters its kernel takes. A
    /// hand-edited winner otherwise failed only on a GPU, inside `lab decode`, naming neither
    /// this file nor the key.
    fn check_entries(&self) -> std::result::Result<(), String> {
        use super::dispatch::{serves, BATCH_BUCKETS, VARIANTS};
        let sm = self.device.sm();
        let mut seen = std::collections::HashSet::new();
        for e in &self.entries {
            let k = &e.key;
            if !BATCH_BUCKETS.contains(&k.batch_bucket) {
                return Err(format!(
                    "entry {k}: batch_bucket {} is not one of {BATCH_BUCKETS:?}",
                    k.batch_bucket
                ));
            }
            if !seen.insert(*k) {
                return Err(format!("entry {k} appears twice; a key has one winner"));
            }
            let w = &e.winner;
            if !VARIANTS.iter().any(|v| v.name == w.variant) {
                return Err(format!(
                    "entry {k}: winner '{}' is not a kernel the tuner chooses from ({})",
                    w.variant,
                    VARIANTS
                        .iter()
                        .map(|v| v.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if !serves(&w.variant, k, sm) {
                return Err(format!(
                    "entry {k}: winner '{}' does not serve this key on sm_{sm} (its batch range, \
                     act-order, group sizes or minimum sm)",
                    w.variant
                ));
            }
            match crate::kernels::registry::by_name(&w.variant) {
                Some(v) => {
                    for t in v.tunables {
                        crate::kernels::launch::tunable(v, &w.params, t.name)
                            .map_err(|why| format!("entry {k}: winner {w}: {why}"))?;
                    }
                    if v.tunables.is_empty() && !w.params.is_empty() {
                        return Err(format!(
                            "entry {k}: winner {w}: {} takes no parameters",
                            w.variant
                        ));
                    }
                }
                None => {
                    // The engine's own kernels outside the registry: split_k is their one knob.
                    if let Some(bad) = w.params.keys().find(|p| p.as_str() != "split_k") {
                        return Err(format!(
                            "entry {k}: winner {w}: {} has no parameter '{bad}'",
                            w.variant
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Every recorded time must be a positive finite number: a NaN, inf, zero or negative one
    /// (a damaged or hand-edited file) would win or skew the comparisons and the reports.
    fn check_recorded_timings(&self) -> std::result::Result<(), String> {
        let bad = |t: f64| !crate::bench::stats::is_recorded_time(t);
        for e in &self.entries {
            for c in &e.candidates {
                if let CandidateStatus::Ok {
                    median_us,
                    iqm_us,
                    p25_us,
                    p75_us,
                } = c.status
                {
                    for (field, t) in [
                        ("median_us", median_us),
                        ("iqm_us", iqm_us),
                        ("p25_us", p25_us),
                        ("p75_us", p75_us),
                    ] {
                        if bad(t) {
                            return Err(format!(
                                "entry {} candidate {}: {field} = {t}; expected a positive finite time",
                                e.key, c.choice
                            ));
                        }
                    }
                }
            }
        }
        for d in &self.decode {
            for c in &d.candidates {
                if let Some(t) = c.ms_per_token.iter().copied().find(|&t| bad(t)) {
                    return Err(format!(
                        "decode budget {} ({}): ms_per_token {t}; expected a positive finite time",
                        d.label, c.setting
                    ));
                }
            }
        }
        Ok(())
    }

    /// Refuse a config measured on another GPU or with other kernels; the error names both sides
    /// (`other_hardware` for one name over different silicon).
    pub fn check_matches(&self, device: &DeviceInfo, kernel_hash: &str) -> Result<()> {
        if self.device.slug != device.slug || self.device.name != device.name {
            return Err(LabError::invalid(
                "tuned config",
                format!(
                    "it was measured on '{}' ({}), this GPU is '{}' ({}): tune this GPU with `lab tune`",
                    self.device.name, self.device.slug, device.name, device.slug
                ),
            ));
        }
        if let Some(why) = other_hardware(&self.device, device) {
            return Err(LabError::invalid(
                "tuned config",
                format!("{why}; tune this GPU with `lab tune`"),
            ));
        }
        if self.kernel_hash != kernel_hash {
            return Err(LabError::invalid(
                "tuned config",
                format!(
                    "it was measured with kernel hash {}, this binary's kernels are {}: the timings are stale, rerun `lab tune`",
                    self.kernel_hash, kernel_hash
                ),
            ));
        }
        Ok(())
    }

    /// Load and check in one step; the error names the file.
    pub fn load_matching(path: &Path, device: &DeviceInfo, kernel_hash: &str) -> Result<Self> {
        let c = Self::load(path)?;
        c.check_matches(device, kernel_hash)
            .map_err(|e| LabError::invalid(path.display().to_string(), e.to_string()))?;
        Ok(c)
    }

    /// Atomic write (temp file + rename). The timings are checked first as `load` checks them
    /// (JSON has no NaN: serde_json would write `null`, and the file would no longer load); a
    /// failed measurement belongs in the file as Rejected, or as a round left out.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.check_recorded_timings()
            .map_err(|why| LabError::invalid(path.display().to_string(), why))?;
        crate::util::write_json_atomic(path, self)
    }

    pub fn entry(&self, key: &ProblemKey) -> Option<&TunedEntry> {
        self.entries.iter().find(|e| &e.key == key)
    }

    /// Insert or replace the decode budget of its model and weights form (a budget timed with
    /// kernels a re-tune has since replaced goes with it).
    pub fn upsert_decode(&mut self, budget: DecodeBudget) {
        match self
            .decode
            .iter_mut()
            .find(|d| d.model == budget.model && d.act_order == budget.act_order)
        {
            Some(old) => *old = budget,
            None => self.decode.push(budget),
        }
    }

    /// Insert or replace the entry for its key.
    pub fn upsert(&mut self, entry: TunedEntry) {
        match self.entries.iter_mut().find(|e| e.key == entry.key) {
            Some(old) => *old = entry,
            None => self.entries.push(entry),
        }
    }
}

/// Current UTC time as "YYYY-MM-DDTHH:MM:SSZ" (std has no calendar; no date crate for one field).
pub fn now_utc_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339_from_unix(secs)
}

/// Unix seconds -> RFC 3339 UTC, via the proleptic Gregorian day count (400-year eras of 146097 days).
pub fn rfc3339_from_unix(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Shift the epoch to 0000-03-01 so leap days fall at the end of the (March-based) year.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // day of era, 0..146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the March-based year
    let mp = (5 * doy + 2) / 153; // March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
