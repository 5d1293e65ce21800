//! `lab tune`'s decode pass (GPU side): for one model shape and weights form, build the engine
//! `lab decode --int4-kernel auto` would build (synthetic weights, the just-tuned dispatcher),
//! time the graph + PDL step at each budget setting of `tune::decode::settings`, and keep one by
//! `tune::decode::select_budget`. The engine applies the kept budget to any later engine of the
//! same model with the same kernels (GpuEngine::new).
//!
//! Cost: one 7B step is ~2.3 ms on an H100, so 5 settings x 5 rounds x (4 + 24) steps is ~1.6 s
//! plus one graph capture per timing; the engine's construction (synthetic weights generated on
//! the GPU) dominates.

use crate::cuda::Gpu;
use crate::model::config::ModelConfig;
use crate::model::decode_bench::{synthetic_engine, timed_stretch};
use crate::model::gpu_engine::{EngineOptions, Int4Kernel};
use crate::model::gpu_weights::WeightKind;
use crate::tune::decode::{select_budget, settings};
use crate::tune::{BudgetCandidate, DecodeBudget, DecodeModel, Dispatcher};
use crate::{LabError, Result};
use std::sync::Arc;

/// What to time: the step from position `ctx`, `warmup` untimed then `steps` timed graph + PDL
/// replays per setting, every setting once per round.
#[derive(Debug, Clone)]
pub struct DecodeTunePlan {
    pub cfg: ModelConfig,
    pub kind: WeightKind,
    pub ctx: usize,
    pub warmup: usize,
    pub steps: usize,
    pub rounds: usize,
    pub seed: u64,
}

impl DecodeTunePlan {
    /// The defaults `lab tune` uses: ctx 128 (the context the goals name), 4 + 24 steps,
    /// 5 rounds (the interquartile mean then drops the best and the worst round).
    pub fn new(cfg: ModelConfig, kind: WeightKind) -> Self {
        DecodeTunePlan {
            cfg,
            kind,
            ctx: 128,
            warmup: 4,
            steps: 24,
            rounds: 5,
            seed: 7,
        }
    }

    pub fn label(&self) -> String {
        format!("{} {}, ctx {}", self.cfg.name, self.kind.label(), self.ctx)
    }
}

/// What `tune_decode_budget` did.
#[derive(Debug, Clone)]
pub enum DecodeTuneOutcome {
    /// `known` already had a budget for this model and these kernels: nothing timed (as `lab
    /// tune` resumes keys; a new kernel hash starts a new config, so nothing stale survives).
    Known(DecodeBudget),
    Tuned(DecodeBudget),
    /// A timed stretch ended with a step state flag: its timings are not of a valid step (a bug
    /// in a kernel, not a budget question), so nothing is kept.
    InvalidStep(String),
}

/// Time every setting and pick one, unless `known` has this step's budget. Errors: no PDL on
/// this GPU (the budgets mean nothing then), fp16 weights (no int4 GEMV to budget), or any engine
/// error.
pub fn tune_decode_budget(
    gpu: &Gpu,
    plan: &DecodeTunePlan,
    dispatcher: Arc<Dispatcher>,
    known: &[DecodeBudget],
) -> Result<DecodeTuneOutcome> {
    if matches!(plan.kind, WeightKind::Fp16) {
        return Err(LabError::invalid(
            "decode budget",
            "fp16 weights run no int4 GEMV: nothing to budget",
        ));
    }
    if plan.steps == 0 || plan.rounds == 0 {
        return Err(LabError::invalid(
            "decode budget",
            "steps and rounds must be positive",
        ));
    }
    let mut opts = EngineOptions::new(plan.ctx + plan.warmup + plan.steps + 1);
    opts.int4 = Int4Kernel::Auto(dispatcher);
    // The tuner sets every budget itself; no prefill is timed, so no prefill workspace.
    opts.pdl_prefetch_tuned = false;
    opts.prefill_chunk = 0;
    let mut eng = synthetic_engine(gpu, &plan.cfg, plan.kind, plan.seed, opts)?;
    let model = DecodeModel::of(&plan.cfg);
    let step = eng.step_options();
    if let Some(b) = crate::tune::decode::lookup(known, &model, &step, eng.step_linears()) {
        return Ok(DecodeTuneOutcome::Known(b.clone()));
    }
    if !eng.set_pdl(true) {
        return Err(LabError::invalid(
            "decode budget",
            format!(
                "programmatic dependent launch needs sm_90 (this GPU is sm_{}): the prefetch budget applies only to PDL steps",
                gpu.sm()
            ),
        ));
    }
    let variants: Vec<String> = eng
        .step_linears()
        .iter()
        .map(|l| l.choice.variant.clone())
        .collect();
    let (default, list) = settings(&variants);
    let mut candidates: Vec<BudgetCandidate> = list
        .into_iter()
        .map(|setting| BudgetCandidate {
            setting,
            ms_per_token: Vec::new(),
        })
        .collect();
    let n = candidates.len();
    for round in 0..plan.rounds {
        // Each round starts one setting later, so no setting always follows the same one.
        for i in 0..n {
            let c = &mut candidates[(i + round) % n];
            eng.set_budget_setting(&c.setting);
            let (ms, flags) =
                timed_stretch(&mut eng, plan.ctx, plan.warmup.max(1), plan.steps, true)?;
            if flags != 0 {
                return Ok(DecodeTuneOutcome::InvalidStep(format!(
                    "{} at {}: the warm-up or timed steps ended with step state flags {flags:#x}",
                    plan.label(),
                    c.setting
                )));
            }
            c.ms_per_token.push(ms);
        }
    }
    let sel = select_budget(&default, &candidates);
    Ok(DecodeTuneOutcome::Tuned(DecodeBudget {
        model,
        label: plan.label(),
        act_order: plan.kind.is_act_order(),
        linears: eng.step_linears().to_vec(),
        step,
        winner: sel.winner,
        default,
        candidates,
        note: sel.note,
    }))
}
