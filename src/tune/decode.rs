//! The decode step's tuned PDL prefetch budget (CPU side): which settings `lab tune` times for a
//! model, and which one it keeps. The GPU side (building the engine, timing the steps) is
//! `model::decode_tune`; the engine applies a kept budget at construction (GpuEngine::new).

use super::schema::{
    BudgetCandidate, BudgetSetting, DecodeBudget, DecodeModel, LinearChoice, StepOptions,
};
use super::select::{select_by, Selection, MIN_GAIN_DECODE};

/// The settings timed for a step whose int4 GEMVs run `variants` (registry names, any order):
/// the default first; every GEMV at 16 KB and at 8 KB (runs 12-17: 7B's best was 16 KB every
/// time; 64 KB and more, and 0, were slower on both models, so they are not timed); and, where
/// the step runs more than one variant, each variant alone at 16 KB with the others at the
/// default (run 16b: 13B was fastest with only gemv_v10_l2x at 16 KB).
pub fn settings(variants: &[String]) -> (BudgetSetting, Vec<BudgetSetting>) {
    // What an engine uses without a tuned budget.
    let default = BudgetSetting::uniform(crate::model::gpu_engine::DEFAULT_PDL_PREFETCH);
    let mut out = vec![
        default.clone(),
        BudgetSetting::uniform(16 * 1024),
        BudgetSetting::uniform(8 * 1024),
    ];
    let mut names: Vec<&String> = variants.iter().collect();
    names.sort();
    names.dedup();
    if names.len() > 1 {
        for v in names {
            let mut s = default.clone();
            s.per_variant.insert(v.clone(), 16 * 1024);
            out.push(s);
        }
    }
    (default, out)
}

/// Keep the default unless a setting's interquartile mean over the rounds beats it by more than
/// MIN_GAIN_DECODE and both settings' spreads (the tuner's rule, `select_by`). A setting with no
/// rounds, or a non-finite one, is untimed.
pub fn select_budget(
    default: &BudgetSetting,
    candidates: &[BudgetCandidate],
) -> Selection<BudgetSetting> {
    let timed: Vec<(BudgetSetting, Option<(f64, f64)>)> = candidates
        .iter()
        .map(|c| {
            let t = c
                .rounds()
                .filter(|t| t.iqm_us > 0.0)
                .map(|t| (t.iqm_us, t.spread()));
            (c.setting.clone(), t)
        })
        .collect();
    select_by(default, &timed, MIN_GAIN_DECODE)
}

/// The tuned budget for a step of `model` with options `step` whose int4 linears are `linears`
/// (sorted, as `DecodeBudget::linears`): only an exact match serves.
pub fn lookup<'a>(
    budgets: &'a [DecodeBudget],
    model: &DecodeModel,
    step: &StepOptions,
    linears: &[LinearChoice],
) -> Option<&'a DecodeBudget> {
    budgets
        .iter()
        .find(|b| &b.model == model && &b.step == step && b.linears == linears)
}
