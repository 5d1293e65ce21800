//! The per-GPU autotuner (CPU side): the tuned-config schema (`schema`), the selection rule
//! (`select`), the dispatcher that serves a variant per (shape, batch) from a tuned config or a
//! heuristic (`dispatch`), the default problem keys (`keys`) and the driver loop with its
//! `Measurer` seam for the GPU timing harness (`driver`).

pub mod decode;
pub mod dispatch;
pub mod driver;
pub mod gpu;
pub mod keys;
pub mod schema;
pub mod select;

pub use dispatch::{batch_bucket, Dispatcher};
pub use driver::{candidates_for, pending_keys, resume_or_new, tune, Measurer};
pub use schema::{
    BudgetCandidate, BudgetSetting, CandidateResult, CandidateStatus, Choice, DecodeBudget,
    DecodeModel, LinearChoice, ProblemKey, StepOptions, TunedConfig, TunedEntry,
};
pub use select::{select, select_by, Selection, MIN_GAIN_DECODE};

/// tuning/<gpu-slug>.json
pub fn default_path(device_slug: &str) -> std::path::PathBuf {
    std::path::Path::new("tuning").join(format!("{device_slug}.json"))
}

#[cfg(test)]
mod tests;
