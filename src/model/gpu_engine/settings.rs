//! The switches the decode bench, the tuner and the tiny check flip on a built engine between
//! steps: sampling, PDL and its prefetch budgets, act-order on permuted x, the fused silu, the
//! persistent layers, the poisoned shared memory, the timing ablation (`SkipOps`). Each drops the
//! captured graph, so the next graph step is captured with the new setting.

use super::persistent::Persistent;
use super::{GpuEngine, LayerPx};
use crate::cuda::SmLimits;
use crate::error::DriverCtx;
use crate::kernels::abi;
use crate::kernels::gemv::{kind as gemv_kind, GemvKind};
use crate::model::sampler::Sampling;
use crate::{LabError, Result};

/// Dynamic shared memory of one `lab_llama_poison_smem` block: all a block may opt into (whole
/// words), so that one block covers an SM (the rest is the per-block reservation); the ABI's
/// fixed 48 KB where the device did not say.
pub fn poison_block_bytes(dev: SmLimits) -> u32 {
    match dev.smem_per_block_optin / 4 * 4 {
        0 => abi::LAB_LLAMA_POISON_BYTES,
        b => b,
    }
}

/// Op classes a launch-per-op decode step can leave out: a timing ablation, not a model. The
/// step time without a class, against the full step in the same process, is what that class adds
/// to the step's critical path, in the graph and in the graph + PDL (the eager per-op profile
/// cannot say: its events sit between the ops that the graph and PDL overlap). The step's output
/// is then meaningless: the buffers a skipped op writes keep an earlier step's (finite) values.
/// The embedding, the final norm, the lm_head and the token choice always run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SkipOps {
    /// Both add + RMSNorm launches of every layer.
    pub norms: bool,
    /// The attention (rope + KV append + split + combine).
    pub attention: bool,
    /// The silu * up launch, where the step has one.
    pub silu: bool,
    pub qkv: bool,
    pub o: bool,
    pub gate_up: bool,
    pub down: bool,
}

impl SkipOps {
    pub fn any(&self) -> bool {
        *self != SkipOps::default()
    }

    /// The attention alone.
    pub fn attention_only() -> Self {
        SkipOps {
            attention: true,
            ..SkipOps::default()
        }
    }

    /// Every GEMV class.
    pub fn linears() -> Self {
        SkipOps {
            qkv: true,
            o: true,
            gate_up: true,
            down: true,
            ..SkipOps::default()
        }
    }

    /// Every op of a layer that is not a GEMV.
    pub fn small_ops() -> Self {
        SkipOps {
            norms: true,
            attention: true,
            silu: true,
            ..SkipOps::default()
        }
    }
}

impl GpuEngine {
    /// Whether act-order linears run on plain kernels where eligible
    /// (EngineOptions::act_order_plain).
    pub fn act_order_plain(&self) -> bool {
        self.opts.act_order_plain
    }

    /// The step options now (EngineOptions::step_options; the set_* toggles change them).
    pub fn step_options(&self) -> crate::tune::StepOptions {
        self.opts.step_options()
    }

    /// Turn it on or off (both kernels of every eligible linear were loaded at construction); the
    /// graph is captured again at the next graph step. Returns whether any linear changes.
    pub fn set_act_order_plain(&mut self, on: bool) -> bool {
        self.opts.act_order_plain = on;
        self.graph = None;
        self.px.iter().any(|p| *p != LayerPx::default())
    }

    /// The persistent layers when the step runs them.
    pub(super) fn persistent_active(&self) -> Option<&Persistent> {
        self.persistent
            .as_ref()
            .filter(|_| self.opts.persistent_layers)
    }

    /// Why the driver refused to capture the persistent layers' step into a CUDA graph, when it did
    /// (their "graph" steps then run eager).
    pub fn persistent_graph_refused(&self) -> Option<&str> {
        self.persistent_active()
            .and_then(|p| p.graph_refused.as_deref())
    }

    /// The persistent layers' grid and phase splits, once planned.
    pub fn persistent_summary(&self) -> Option<String> {
        self.persistent.as_ref().map(|p| p.summary())
    }

    /// Run the decode layers as one persistent launch, or as separate launches again (drops the
    /// captured graph). Plans and uploads the layers the first time; a refusal (an fp16 linear, a
    /// shape gemv_v6_pipe cannot take) leaves the engine as it was.
    pub fn set_persistent_layers(&mut self, on: bool) -> Result<()> {
        if on && self.persistent.is_none() {
            self.persistent = Some(self.build_persistent()?);
        }
        self.opts.persistent_layers = on;
        self.graph = None;
        Ok(())
    }

    /// Cap the persistent grid (EngineOptions::persistent_max_grid; 0: none): the layers are
    /// planned again at the next use.
    pub fn set_persistent_max_grid(&mut self, blocks: usize) {
        if blocks != self.opts.persistent_max_grid {
            self.opts.persistent_max_grid = blocks;
            self.persistent = None;
            self.opts.persistent_layers = false;
            self.graph = None;
        }
    }

    /// The step's sampling mode and seed (EngineOptions::sampling, sample_seed).
    pub fn sampling(&self) -> (Sampling, u64) {
        (self.opts.sampling, self.opts.sample_seed)
    }

    /// Change how steps choose their token; the captured graph (which holds the choice) is
    /// dropped and recaptured on the next graph step.
    pub fn set_sampling(&mut self, sampling: Sampling, seed: u64) {
        self.opts.sampling = sampling;
        self.opts.sample_seed = seed;
        self.graph = None;
    }

    /// The int4 linears of the step and their kernels, sorted (tune::DecodeBudget::linears).
    pub fn step_linears(&self) -> &[crate::tune::LinearChoice] {
        &self.linears
    }

    /// The tuned decode budget applied at construction (EngineOptions::pdl_prefetch_tuned).
    pub fn tuned_budget(&self) -> Option<&crate::tune::DecodeBudget> {
        self.tuned_budget.as_ref()
    }

    /// The GEMVs' PDL prefetch budgets now (EngineOptions::pdl_budget).
    pub fn budget_setting(&self) -> &crate::tune::BudgetSetting {
        &self.opts.pdl_budget
    }

    /// Set them; the graph is captured again at the next graph step.
    pub fn set_budget_setting(&mut self, s: &crate::tune::BudgetSetting) {
        self.opts.pdl_budget = s.clone();
        self.graph = None;
    }

    /// For reports: the budgets the PDL steps use and where they came from.
    pub fn budget_summary(&self) -> String {
        let s = &self.opts.pdl_budget;
        match &self.tuned_budget {
            Some(b) => format!(
                "{s} per block, tuned for this model by lab tune ({}: {})",
                b.label, b.note
            ),
            None => format!("{s} per block"),
        }
    }

    /// The persistent layers' L2 prefetch budget per block (EngineOptions::persistent_prefetch).
    pub fn persistent_prefetch(&self) -> u32 {
        self.opts.persistent_prefetch
    }

    /// Set it; the graph is captured again at the next graph step.
    pub fn set_persistent_prefetch(&mut self, bytes: u32) {
        self.opts.persistent_prefetch = bytes;
        self.graph = None;
    }

    /// Fuse silu(gate) * up into the down projection's x loads where its kernel can (see
    /// EngineOptions::fused_glu); the graph is captured again at the next graph step. Returns
    /// whether any layer's step changes with it (false for fp16 or plain-x int4 kernels).
    pub fn fused_glu(&self) -> bool {
        self.opts.fused_glu
    }

    pub fn set_fused_glu(&mut self, on: bool) -> bool {
        self.opts.fused_glu = on;
        self.graph = None;
        (0..self.weights.layers.len()).any(|li| self.can_take_gated_input(li))
    }

    /// Turn programmatic dependent launch on or off for the decode step (drops the captured
    /// graph, which holds the launches' attributes). Returns whether it is now in effect
    /// (false below sm_90).
    pub fn set_pdl(&mut self, on: bool) -> bool {
        self.opts.pdl = on;
        self.graph = None;
        self.pdl_in_effect()
    }

    /// Before every plain launch (eager steps without PDL), fill the shared memory of every SM
    /// with NaN, so a kernel that reads shared memory it did not write computes NaN every time
    /// instead of by chance: the tiny check's poisoned pass. The captured graph is dropped so a
    /// later graph step is captured without. Each `lab_llama_poison_smem` block takes all the
    /// dynamic shared memory a block may opt into (`poison_block_bytes`), 8 blocks per SM in
    /// turn, so one block fills a whole SM on every card (227 + 1 reserved = 228 KB on an H100,
    /// 99 + 1 on sm_86/89, 64 on sm_75): the fixed 48 KB blocks this replaces covered 192 of an
    /// H100's 228 KB (4 per SM) and 48 of a T4's 64.
    pub fn set_poison_smem(&mut self, on: bool) -> Result<()> {
        self.graph = None;
        self.poison_smem = 0;
        if on {
            let bytes = poison_block_bytes(self.dev);
            self.k
                .poison
                .set_attribute(
                    cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes as i32,
                )
                .ctx("opting lab_llama_poison_smem into the device's shared memory per block")?;
            self.poison_smem = bytes;
        }
        Ok(())
    }

    /// Launch every gemv_v6_pipe linear at one 256-thread block per SM (at most; the split the
    /// x buffer needs may add more) instead of its tuned / automatic grid of ~2 per SM, so the
    /// next kernel's blocks fit beside it under PDL (kernels::gemv::v6_one_block_per_sm). A
    /// decode-bench experiment: the captured graph is dropped. Returns whether some linear of
    /// this engine runs v6 (else nothing changes).
    pub fn set_v6_one_block_per_sm(&mut self, on: bool) -> bool {
        self.v6_one_per_sm = on;
        self.graph = None;
        self.int4_choice
            .values()
            .any(|(v, _)| gemv_kind(v).ok() == Some(GemvKind::Pipe))
    }

    /// Whether the decode attention prefetches its K/V rows into L2 (EngineOptions::attn_prefetch_kv).
    pub fn attn_prefetch_kv(&self) -> bool {
        self.opts.attn_prefetch_kv
    }

    /// Set it; the graph is captured again at the next graph step.
    pub fn set_attn_prefetch_kv(&mut self, on: bool) {
        self.opts.attn_prefetch_kv = on;
        self.graph = None;
    }

    /// In a PDL step, launch the kernels that are not GEMVs plain (no programmatic serialization):
    /// each then starts only when the GEMV before it has finished, and the GEMV after it may
    /// start beside it, so a GEMV's weight prefetch overlaps the small kernel just before it and
    /// never a GEMV still streaming (with every launch PDL, a chain GEMV -> norm -> GEMV lets
    /// the second GEMV's blocks, and their prefetch, in while the first still runs wherever
    /// registers allow). A decode-bench experiment (notes/kernels.md, run 13): the captured graph
    /// is dropped.
    pub fn set_small_ops_plain(&mut self, on: bool) {
        self.small_ops_plain = on;
        self.graph = None;
    }

    /// Leave these op classes out of every step until set back to the default (SkipOps: a
    /// timing ablation; the captured graph is dropped). Refused while the persistent layers are
    /// on (their one launch has no classes to leave out).
    pub fn set_skip_ops(&mut self, skip: SkipOps) -> Result<()> {
        if skip.any() && self.persistent_active().is_some() {
            return Err(LabError::invalid(
                "skip ops",
                "the persistent decode layers run every op in one launch",
            ));
        }
        self.skip = skip;
        self.graph = None;
        Ok(())
    }
}
