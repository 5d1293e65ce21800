//! Correctness of the GPU engine against an f64 CPU reference of the same weights, made to say
//! WHERE it breaks (../shared/gpu-validation.md):
//! - op by op: every op's GPU output is compared with the CPU op applied to the GPU's own input to
//!   that op (so one wrong kernel is named, not the drift it causes downstream), layer by layer,
//!   step by step; the first op out of tolerance is reported with its worst element;
//! - end to end: GPU logits vs an independent f64 forward pass (teacher-forced tokens);
//! - greedy tokens: GPU generation (eager and CUDA graph) vs the reference's greedy tokens.
//! - GEMM prefill: every prompt row's logits (and the last row's alone) after one prefill vs the
//!   reference's teacher-forced logits, within the end-to-end logit tolerance; the greedy tokens
//!   of the decode graph continuing from a GEMM prefill vs the reference's.
//! - per-op profile: profiled steps give the reference's greedy tokens, one mark per op and the
//!   exact bytes a step streams (`check_profile`);
//! - top-p on the GPU: each token vs the CPU mirror on the GPU's logits, graph vs eager
//!   (`check_top_p`).
//!
//! The reference math is HF LLaMA's (RMSNorm, rotate-half RoPE, GQA softmax attention, SwiGLU);
//! `reference::RefModel` is written independently of the kernels.
//!
//! Files: this one runs the checks (`check_engine` and the passes it is made of); `reference.rs`
//! is the f64 model and the op-local references; `report.rs` what a check found (`OpError`,
//! `CheckReport`); `cases.rs` what is checked (the tiny random models of every weight form, the
//! committed fixtures, the long-context and cluster models).

use crate::cuda::Gpu;
use crate::model::config::ModelConfig;
use crate::model::gpu_engine::{
    EngineOptions, GpuEngine, Int4Kernel, PrefillLogits, PrefillMode, WeightSource,
};
use crate::model::gpu_weights::HostLlama;
use crate::model::sampler::{draw, top_p_pick, Sampling};
use crate::{LabError, Result};
use serde::Serialize;

mod cases;
mod reference;
mod report;
#[cfg(test)]
mod tests;

pub use cases::*;
use reference::{argmax, exceeds, get, op_refs, RefModel, RefWeights};
pub use report::*;

/// Op-local tolerance: |gpu - ref| <= OP_RTOL |ref| + OP_ATOL_RMS rms(ref). Each op rounds its
/// output to fp16 once (2^-11 relative) after fp32 math on exactly the GPU's fp16 inputs; 4e-3 is
/// 8 such roundings of headroom, while an indexing or layout bug errs by O(1) relative.
pub const OP_RTOL: f64 = 4e-3;
pub const OP_ATOL_RMS: f64 = 4e-3;
/// End-to-end logits: fp16 activations round at about 10 points per layer, each up to 2^-11
/// relative, and the errors add through the residual stream: 2e-2 of the logits' rms covers a few
/// layers of that; a wrong op moves logits by O(rms).
pub const LOGIT_ATOL_RMS: f64 = 2e-2;
pub const LOGIT_RTOL: f64 = 1e-2;
// The GEMM prefill is held to the same logit tolerance: it rounds activations to fp16 at the same
// points as the decode step (the GEMMs and cuBLAS accumulate in fp32 like the GEMVs), only the
// summation order differs, which moves logits by rounding, not by O(rms).

/// One traced eager pass: the engine fed `seq` token by token from position 0, every op against its
/// op-local f64 reference and the logits against `ref_logits`.
struct TracedPass {
    ops: usize,
    worst_op: Option<OpError>,
    first_bad: Option<OpError>,
    logits_ratio: f64,
    logits_worst_step: usize,
}

fn traced_pass(
    eng: &mut GpuEngine,
    cfg: &ModelConfig,
    w: &RefWeights,
    seq: &[u32],
    ref_logits: &[Vec<f64>],
) -> Result<TracedPass> {
    eng.reset()?;
    let mut kv_hist = vec![(Vec::new(), Vec::new()); cfg.num_hidden_layers];
    let mut out = TracedPass {
        ops: 0,
        worst_op: None,
        first_bad: None,
        logits_ratio: 0.0,
        logits_worst_step: 0,
    };
    for (step, lg_ref) in ref_logits.iter().enumerate() {
        let t = eng.trace_step(seq[step])?;
        for (layer, op, want) in op_refs(cfg, w, &t, seq[step], step, &mut kv_hist) {
            let got = get(&t, layer, op);
            out.ops += 1;
            let (index, ratio) =
                worst(got, &want, OP_RTOL, OP_ATOL_RMS).unwrap_or((0, f64::INFINITY));
            let e = OpError {
                step,
                layer,
                op: op.to_string(),
                index,
                got: got.get(index).map_or(f64::NAN, |&g| g.into()),
                want: want.get(index).copied().unwrap_or(f64::NAN),
                ratio,
            };
            if exceeds(ratio, 1.0) && out.first_bad.is_none() {
                out.first_bad = Some(e.clone());
            }
            if out
                .worst_op
                .as_ref()
                .is_none_or(|w| exceeds(e.ratio, w.ratio))
            {
                out.worst_op = Some(e);
            }
        }
        let (_, r) = worst(get(&t, None, "lm_head"), lg_ref, LOGIT_RTOL, LOGIT_ATOL_RMS)
            .unwrap_or((0, f64::INFINITY));
        if exceeds(r, out.logits_ratio) {
            out.logits_ratio = r;
            out.logits_worst_step = step;
        }
    }
    Ok(out)
}

/// The persistent decode layers (one cooperative launch for every layer) on the same check: the
/// traced pass (each layer its own launch, every op read from the kernel's trace outputs), then
/// greedy tokens eager, through the graph, and through the graph with PDL on the other kernels.
#[derive(Debug, Clone, Serialize)]
pub struct PersistentCheck {
    /// Grid and phase splits (`GpuEngine::persistent_summary`).
    pub plan: String,
    pub ops_checked: usize,
    pub worst_op: Option<OpError>,
    pub first_bad_op: Option<OpError>,
    pub logits_ratio: f64,
    pub eager_tokens: Vec<u32>,
    pub graph_tokens: Vec<u32>,
    pub pdl_tokens: Vec<u32>,
    /// The driver refused to capture the cooperative launch into a CUDA graph: the "graph" tokens
    /// above then come from eager steps (the engine's fallback). Any other failure fails the check.
    pub graph_refused: Option<String>,
}

impl PersistentCheck {
    fn pass(&self) -> bool {
        self.first_bad_op.is_none() && self.logits_ratio <= 1.0
    }
}

/// The capped grid of the check's second persistent pass: several work items per block in every
/// GEMV phase, and attention splits larger than `attn_chunk` (the tiny models on a full grid
/// take neither path).
pub const PERSISTENT_SMALL_GRID: usize = 8;

fn check_persistent(
    eng: &mut GpuEngine,
    cfg: &ModelConfig,
    w: &RefWeights,
    seq: &[u32],
    ref_logits: &[Vec<f64>],
    prompt: &[u32],
    n_new: usize,
) -> Result<PersistentCheck> {
    let traced = traced_pass(eng, cfg, w, seq, ref_logits)?;
    let eager_tokens = eng.generate_with(prompt, n_new, false, PrefillMode::TokenByToken)?;
    // Where the driver refuses to capture the cooperative launch, the engine's "graph" steps run
    // eager (GpuEngine::persistent_graph_refused): reported, and the tokens must still match.
    let graph_tokens = eng.generate_with(prompt, n_new, true, PrefillMode::TokenByToken)?;
    let pdl_tokens = if eng.set_pdl(true) {
        eng.generate_with(prompt, n_new, true, PrefillMode::TokenByToken)
    } else {
        Ok(Vec::new())
    };
    let graph_refused = eng.persistent_graph_refused().map(str::to_string);
    eng.set_pdl(false);
    let pdl_tokens = pdl_tokens?;
    Ok(PersistentCheck {
        plan: eng.persistent_summary().unwrap_or_default(),
        ops_checked: traced.ops,
        worst_op: traced.worst_op,
        first_bad_op: traced.first_bad,
        logits_ratio: traced.logits_ratio,
        eager_tokens,
        graph_tokens,
        pdl_tokens,
        graph_refused,
    })
}

/// The f64 reference's logits after the last of `tokens` (fed one by one from position 0),
/// for tests that hold an engine path to the reference rather than to another engine path.
pub fn reference_last_logits(cfg: &ModelConfig, host: &HostLlama, tokens: &[u32]) -> Vec<f64> {
    let w = RefWeights::new(host);
    let mut rm = RefModel {
        cfg,
        w: &w,
        cache: vec![(Vec::new(), Vec::new()); cfg.num_hidden_layers],
    };
    let mut last = Vec::new();
    for &t in tokens {
        last = rm.step(t);
    }
    last
}

/// Run the whole check on `gpu`: `prompt` teacher-forced through traced eager steps, then `n_new`
/// greedy tokens eager and through the CUDA graph.
pub fn check_engine(
    gpu: &Gpu,
    cfg: &ModelConfig,
    host: &HostLlama,
    label: &str,
    prompt: &[u32],
    n_new: usize,
    opts: EngineOptions,
) -> Result<CheckReport> {
    let w = RefWeights::new(host);
    let chunk = opts.attn_chunk;
    let mut eng = GpuEngine::new(
        gpu,
        cfg,
        WeightSource::Host {
            weights: host,
            label,
        },
        opts,
    )?;
    let px_linears = eng.act_order_plain_linears();
    // Reference greedy continuation (also the teacher-forced sequence for the traced pass).
    let mut rm = RefModel {
        cfg,
        w: &w,
        cache: vec![(Vec::new(), Vec::new()); cfg.num_hidden_layers],
    };
    let mut seq: Vec<u32> = prompt.to_vec();
    let mut ref_logits = Vec::new();
    let mut margins = Vec::new();
    let mut ref_tokens = Vec::new();
    for i in 0..prompt.len() + n_new.saturating_sub(1) {
        let lg = rm.step(seq[i]);
        if i + 1 >= prompt.len() {
            let (t, m) = argmax(&lg);
            ref_tokens.push(t as u32);
            margins.push(m);
            if seq.len() == i + 1 {
                seq.push(t as u32);
            }
        }
        ref_logits.push(lg);
    }
    ref_tokens.truncate(n_new);

    // Traced eager pass over the same tokens.
    let traced = traced_pass(&mut eng, cfg, &w, &seq, &ref_logits)?;
    // The fused GLU (off by default since run 14's A/B) through the same op-by-op comparison,
    // where some down projection's kernel takes the gated input: its down_proj outputs against
    // the f64 reference with silu(gate) * up computed in the kernel's x loads.
    let own_glu = eng.fused_glu();
    let glu_traced = if eng.set_fused_glu(!own_glu) {
        let t = traced_pass(&mut eng, cfg, &w, &seq, &ref_logits);
        eng.set_fused_glu(own_glu);
        Some(t?)
    } else {
        eng.set_fused_glu(own_glu);
        None
    };
    let (ops, worst_op, first_bad, logits_ratio, logits_worst_step) = (
        traced.ops,
        traced.worst_op,
        traced.first_bad,
        traced.logits_ratio,
        traced.logits_worst_step,
    );

    let eager_tokens = eng.generate_with(prompt, n_new, false, PrefillMode::TokenByToken)?;
    // The same eager steps with NaN in every SM's shared memory before each launch: a kernel
    // that reads shared memory it never wrote then yields NaN logits every time, not by chance
    // (the attention's overrun select, H100 runs 9-10, passed this check on whatever earlier
    // kernels had left there).
    eng.set_poison_smem(true)?;
    let poisoned = eng.generate_with(prompt, n_new, false, PrefillMode::TokenByToken);
    eng.set_poison_smem(false)?;
    let poisoned_tokens = poisoned?;
    let graph_tokens = eng.generate_with(prompt, n_new, true, PrefillMode::TokenByToken)?;
    // One token at a time with a sync each (what `lab decode` streams as text).
    let mut stream_tokens = Vec::with_capacity(n_new);
    for i in 0..n_new {
        stream_tokens.push(if i == 0 {
            eng.begin(prompt, true, PrefillMode::TokenByToken)?
        } else {
            eng.next_token(true)?
        });
    }
    // The same graph with programmatic dependent launch (sm_90+ only; empty elsewhere).
    let pdl_tokens = if eng.set_pdl(true) {
        eng.generate_with(prompt, n_new, true, PrefillMode::TokenByToken)?
    } else {
        Vec::new()
    };
    // gemv_v6_pipe linears at one block per SM (the decode bench's experiment column), graph +
    // PDL where possible: another grid of the same kernel, the same tokens.
    let one_per_sm_tokens = if eng.set_v6_one_block_per_sm(true) {
        eng.generate_with(prompt, n_new, true, PrefillMode::TokenByToken)?
    } else {
        Vec::new()
    };
    eng.set_v6_one_block_per_sm(false);
    // Graph + PDL with the kernels that are not GEMVs launched plain (the decode bench's
    // experiment column): a different dependency edge per launch, the same tokens.
    let small_plain_tokens = if eng.set_pdl(true) {
        eng.set_small_ops_plain(true);
        let t = eng.generate_with(prompt, n_new, true, PrefillMode::TokenByToken);
        eng.set_small_ops_plain(false);
        t?
    } else {
        Vec::new()
    };
    eng.set_pdl(false);
    // The attention with its K/V L2 prefetch toggled from the engine's default (off since run 13's
    // A/B; the other setting stays selectable): graph, the same tokens.
    let own_prefetch = eng.attn_prefetch_kv();
    eng.set_attn_prefetch_kv(!own_prefetch);
    let attn_toggled_tokens = eng.generate_with(prompt, n_new, true, PrefillMode::TokenByToken);
    eng.set_attn_prefetch_kv(own_prefetch);
    let attn_toggled_tokens = attn_toggled_tokens?;
    // The fused GLU toggled from the default (off since run 14's A/B): graph, the same tokens;
    // empty where no down projection's kernel takes the gated input (nothing changes).
    let own_glu = eng.fused_glu();
    let glu_tokens = if eng.set_fused_glu(!own_glu) {
        eng.generate_with(prompt, n_new, true, PrefillMode::TokenByToken)
    } else {
        Ok(Vec::new())
    };
    eng.set_fused_glu(own_glu);
    let glu_tokens = glu_tokens?;
    // Act-order linears back on their own permuting kernels where the engine runs some on
    // permuted x (act_order_plain): graph, the same tokens.
    let own_kernel_tokens = if eng.act_order_plain_linears() > 0 {
        let on = eng.act_order_plain();
        eng.set_act_order_plain(false);
        let t = eng.generate_with(prompt, n_new, true, PrefillMode::TokenByToken);
        eng.set_act_order_plain(on);
        t?
    } else {
        Vec::new()
    };

    // The persistent decode layers where the engine can run them (int4 models); refused ones
    // (fp16 linears) say why. Restored to launch-per-op for the rest of the check. They run
    // gemv_v6_pipe's loop whatever --int4-kernel says, so the cases that differ only in the
    // registry kernel would repeat the same run: once per weights form (the engine's own kernel,
    // and the fixtures).
    let mut persistent = Vec::new();
    let mut persistent_not_run = None;
    // (An auto act-order case runs on permuted x, which the persistent layers ignore: they would
    // repeat its weights form's engine-kernel case.)
    if matches!(eng.int4_kernel_choice(), Int4Kernel::Variant(_)) || px_linears > 0 {
        persistent_not_run = Some(
            "covered by this weights form's engine-kernel case (the same kernel whatever --int4-kernel)"
                .to_string(),
        );
    } else {
        for cap in [0, PERSISTENT_SMALL_GRID] {
            eng.set_persistent_max_grid(cap);
            match eng.set_persistent_layers(true) {
                Ok(()) => {
                    let r = check_persistent(&mut eng, cfg, &w, &seq, &ref_logits, prompt, n_new);
                    eng.set_persistent_layers(false)?;
                    persistent.push(r?);
                }
                // A refusal (fp16 linears, a shape v6 cannot take) is reported; a driver error fails.
                Err(e @ LabError::Invalid { .. }) => {
                    persistent_not_run = Some(e.to_string());
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        eng.set_persistent_max_grid(0);
    }

    let (profile_tokens, profile_error) = check_profile(&mut eng, prompt, n_new)?;
    let (top_p_tokens, top_p_error) = check_top_p(&mut eng, prompt, n_new)?;

    // GEMM prefill: all rows, then the last row alone, then greedy decoding continuing from it.
    eng.reset()?;
    let rows = eng.prefill(prompt, PrefillLogits::All)?;
    eng.check_state()?;
    let (mut prefill_logits_ratio, mut prefill_worst_row) = (0f64, 0usize);
    if rows.len() != prompt.len() {
        prefill_logits_ratio = f64::INFINITY;
    }
    for (r, (got, want)) in rows.iter().zip(&ref_logits).enumerate() {
        let (_, x) = worst(got, want, LOGIT_RTOL, LOGIT_ATOL_RMS).unwrap_or((0, f64::INFINITY));
        if exceeds(x, prefill_logits_ratio) {
            prefill_logits_ratio = x;
            prefill_worst_row = r;
        }
    }
    eng.reset()?;
    let last = eng.prefill(prompt, PrefillLogits::Last)?;
    let prefill_last_ratio = match (last.first(), ref_logits.get(prompt.len() - 1)) {
        (Some(got), Some(want)) => {
            worst(got, want, LOGIT_RTOL, LOGIT_ATOL_RMS).map_or(f64::INFINITY, |(_, x)| x)
        }
        _ => f64::INFINITY,
    };
    let prefill_tokens = eng.generate_with(prompt, n_new, true, PrefillMode::Gemm)?;
    // Differing tokens are accepted only past a point where the reference's top-2 margin is within
    // the logits tolerance (a near-tie: either choice is right, and everything after diverges).
    let lg_rms = ref_logits.last().map_or(1.0, |l| {
        (l.iter().map(|v| v * v).sum::<f64>() / l.len() as f64).sqrt()
    });
    let tie = 2.0 * LOGIT_ATOL_RMS * lg_rms;
    let mut token_note = None;
    let mut tokens_ok = true;
    for (name, got) in [
        ("eager", &eager_tokens),
        ("eager, shared memory poisoned", &poisoned_tokens),
        ("graph", &graph_tokens),
        ("GEMM prefill + graph", &prefill_tokens),
        ("profiled eager", &profile_tokens),
        ("graph + PDL", &pdl_tokens),
        ("graph + PDL, small kernels plain", &small_plain_tokens),
        (
            "graph, attention K/V prefetch toggled",
            &attn_toggled_tokens,
        ),
        ("graph, fused GLU toggled", &glu_tokens),
        ("graph, act-order on its own kernels", &own_kernel_tokens),
        ("v6 at one block per SM", &one_per_sm_tokens),
        ("begin/next_token", &stream_tokens),
    ]
    .into_iter()
    .chain(persistent.iter().flat_map(|p| {
        [
            ("persistent layers eager", &p.eager_tokens),
            ("persistent layers graph", &p.graph_tokens),
            ("persistent layers graph + PDL", &p.pdl_tokens),
        ]
    })) {
        if got.is_empty()
            && (name.contains("PDL")
                || name.starts_with("persistent")
                || name.starts_with("v6")
                || name.contains("GLU")
                || name.contains("own kernels"))
        {
            continue; // not run (below sm_90, no persistent layers or no v6 linear here)
        }
        if let Some(i) = (0..n_new).find(|&i| got.get(i) != ref_tokens.get(i)) {
            if margins[i] <= tie {
                token_note = Some(format!("{name} tokens differ from step {i} on, where the reference's top-2 margin {:.4} is within the tolerance {tie:.4}: accepted", margins[i]));
            } else {
                tokens_ok = false;
                token_note = Some(format!(
                    "{name} token {i} differs, reference margin {:.4} > tolerance {tie:.4}",
                    margins[i]
                ));
            }
        }
    }
    Ok(CheckReport {
        model: cfg.name.clone(),
        weights: eng.weights.desc.kind.label(),
        fp16_backend: eng.fp16_backend,
        int4_kernel: eng.int4_kernel(),
        attn_chunk: chunk,
        steps: ref_logits.len(),
        ops_checked: ops,
        pass: first_bad.is_none()
            && logits_ratio <= 1.0
            && tokens_ok
            && prefill_logits_ratio <= 1.0
            && prefill_last_ratio <= 1.0
            && profile_error.is_none()
            && top_p_error.is_none()
            && persistent.iter().all(PersistentCheck::pass)
            && glu_traced
                .as_ref()
                .is_none_or(|t| t.first_bad.is_none() && t.logits_ratio <= 1.0),
        cpu_engine_logits_ratio: None,
        cpu_engine_prefill_ratio: None,
        prefill_chunk: eng.prefill_chunk(),
        prefill_paths: eng.prefill_int4_paths(),
        prefill_logits_ratio,
        prefill_worst_row,
        prefill_last_ratio,
        prefill_tokens,
        worst_op,
        first_bad_op: first_bad,
        logits_ratio,
        logits_worst_step,
        ref_tokens,
        eager_tokens,
        graph_tokens,
        pdl_tokens,
        poisoned_tokens,
        token_note,
        profile_error,
        top_p_tokens,
        top_p_error,
        persistent,
        persistent_not_run,
        fused_glu_logits_ratio: glu_traced.as_ref().map(|t| t.logits_ratio),
        fused_glu_first_bad_op: glu_traced.and_then(|t| t.first_bad),
        act_order_plain_linears: px_linears,
    })
}

/// Top-p sampling on the GPU (`lab_llama_sample_top_p`) against its CPU mirror
/// (`sampler::top_p_pick`, f64) on the GPU's own logits, step by step: the same token unless the
/// mirror's draw lies within `TOP_P_MARGIN` of an interval edge or of the nucleus cut (f32 vs
/// f64). Then the graph replay of the same sampling must give the same tokens up to the first
/// such near-edge step. Leaves the engine greedy.
fn check_top_p(
    eng: &mut GpuEngine,
    prompt: &[u32],
    n_new: usize,
) -> Result<(Vec<u32>, Option<String>)> {
    const TOP_P_MARGIN: f64 = 1e-4;
    let (top_p, temperature, seed) = (0.9f32, 0.8f32, 1234u64);
    eng.set_sampling(Sampling::TopP { top_p, temperature }, seed);
    let (mut tokens, mut err, mut first_near) = (Vec::new(), None, n_new);
    for i in 0..n_new {
        // Eager steps; each feeds the token the sampler chose before it.
        let got = if i == 0 {
            eng.begin(prompt, false, PrefillMode::TokenByToken)?
        } else {
            eng.next_token(false)?
        };
        let pos = eng.position() - 1;
        let logits = eng.logits()?;
        let want = top_p_pick(
            &logits,
            f64::from(top_p),
            f64::from(temperature),
            draw(seed, pos as u64),
        )?;
        if want.margin < TOP_P_MARGIN {
            first_near = first_near.min(i);
        }
        if got != want.token && want.margin >= TOP_P_MARGIN && err.is_none() {
            err = Some(format!(
                "top-p step {i} (pos {pos}): GPU token {got}, CPU mirror {} (nucleus {} tokens, margin {:.2e})",
                want.token, want.kept, want.margin
            ));
        }
        tokens.push(got);
    }
    let graph = eng.generate_with(prompt, n_new, true, PrefillMode::TokenByToken)?;
    if err.is_none() && graph[..first_near] != tokens[..first_near] {
        err = Some(format!(
            "top-p graph tokens {graph:?} differ from eager {tokens:?} before step {first_near}"
        ));
    }
    eng.set_sampling(Sampling::Greedy, 0);
    Ok((tokens, err))
}

/// The per-op profile (`GpuEngine::profile_step`) runs the real step: its greedy tokens (prompt
/// fed eagerly, then profiled steps) must be the eager ones (compared with the others above),
/// every step must leave one mark per op (`GpuEngine::profile_marks_per_step`: 9 or 10 per
/// layer + 5), and the bytes it attributes must
/// add up to what a step streams: every linear, the lm_head and K, V rows 0..=pos per layer.
fn check_profile(
    eng: &mut GpuEngine,
    prompt: &[u32],
    n_new: usize,
) -> Result<(Vec<u32>, Option<String>)> {
    let cfg = eng.config().clone();
    let kv_dim = (cfg.num_key_value_heads * cfg.head_dim()) as u64;
    let layers = cfg.num_hidden_layers as u64;
    let mut tokens = vec![eng.begin(prompt, false, PrefillMode::TokenByToken)?];
    let mut err = None;
    for _ in 1..n_new {
        let pos = eng.position() as u64;
        // A short hold: tiny models queue in well under a millisecond.
        let (marks, _) = eng.profile_step(2.0)?;
        tokens.push(eng.chosen_token()?);
        let want_marks = eng.profile_marks_per_step();
        let bytes: u64 = marks.iter().map(|m| m.bytes).sum();
        let d = &eng.weights.desc;
        let want_bytes = d.linear_bytes + d.lm_head_bytes + layers * 2 * (pos + 1) * kv_dim * 2;
        let bad_time = marks.iter().find(|m| !(m.us >= 0.0 && m.us.is_finite()));
        if err.is_none() {
            err = if marks.len() != want_marks {
                Some(format!(
                    "profile at pos {pos}: {} marks, expected {want_marks}",
                    marks.len()
                ))
            } else if bytes != want_bytes {
                Some(format!(
                    "profile at pos {pos}: {bytes} bytes attributed, the step streams {want_bytes}"
                ))
            } else {
                bad_time.map(|m| format!("profile at pos {pos}: op {} took {} us", m.op, m.us))
            };
        }
    }
    Ok((tokens, err))
}

/// The whole check on a checkpoint folder (the tiny fixtures), plus GPU logits over the prompt
/// against the CPU reference engine (`CpuEngine` on `LlamaWeights::from_checkpoint`).
pub fn check_checkpoint(
    gpu: &Gpu,
    dir: &std::path::Path,
    prompt: &[u32],
    n_new: usize,
    opts: EngineOptions,
) -> Result<CheckReport> {
    use crate::model::checkpoint::Checkpoint;
    use crate::model::cpu_engine::CpuEngine;
    use crate::model::weights::LlamaWeights;
    let ckpt = Checkpoint::open(dir)?;
    let host = HostLlama::from_checkpoint(&ckpt)?;
    let mut cfg = ckpt.config.clone();
    cfg.name = dir
        .file_name()
        .map_or("checkpoint".into(), |n| n.to_string_lossy().into_owned());
    let label = dir.display().to_string();
    let mut report = check_engine(gpu, &cfg, &host, &label, prompt, n_new, opts.clone())?;
    let cpu = CpuEngine::new(LlamaWeights::from_checkpoint(&ckpt)?, ckpt.config.clone())?
        .forward_all(prompt)?;
    let mut eng = GpuEngine::new(
        gpu,
        &cfg,
        WeightSource::Host {
            weights: &host,
            label: &label,
        },
        opts,
    )?;
    eng.reset()?;
    let mut ratio = 0f64;
    for (&t, want) in prompt.iter().zip(&cpu) {
        eng.feed(t, false, None)?;
        let got = eng.logits()?;
        let want: Vec<f64> = want.iter().map(|&x| f64::from(x)).collect();
        let (_, r) = worst(&got, &want, LOGIT_RTOL, LOGIT_ATOL_RMS).unwrap_or((0, f64::INFINITY));
        if exceeds(r, ratio) {
            ratio = r;
        }
    }
    eng.check_state()?;
    report.cpu_engine_logits_ratio = Some(ratio);
    report.pass &= ratio <= 1.0;
    // The GEMM prefill's every row against the CPU engine too.
    eng.reset()?;
    let rows = eng.prefill(prompt, PrefillLogits::All)?;
    eng.check_state()?;
    let mut pr = if rows.len() == cpu.len() {
        0f64
    } else {
        f64::INFINITY
    };
    for (got, want) in rows.iter().zip(&cpu) {
        let want: Vec<f64> = want.iter().map(|&x| f64::from(x)).collect();
        let (_, r) = worst(got, &want, LOGIT_RTOL, LOGIT_ATOL_RMS).unwrap_or((0, f64::INFINITY));
        if exceeds(r, pr) {
            pr = r;
        }
    }
    report.cpu_engine_prefill_ratio = Some(pr);
    report.pass &= pr <= 1.0;
    Ok(report)
}
