//! Timing a `BenchPlan` on the GPU: the graph / eager / graph + PDL stretches at each context,
//! the persistent layers' columns, the per-op profile and the ablation (`run_decode_bench`).

use super::{
    ablations, bench_max_ctx, context_point, prefill_point, record_flags, skipped_bytes, Ablation,
    BenchPlan, BytesPerToken, ContextPoint, DecodeReport,
};
use crate::bench::Ceilings;
use crate::cuda::Gpu;
use crate::model::config::ModelConfig;
use crate::model::gpu_engine::{
    EngineOptions, GpuEngine, SkipOps, WeightSource, DEFAULT_ATTN_CHUNK,
};
use crate::model::gpu_weights::{SyntheticSpec, WeightKind};
use crate::model::sampler::Sampling;
use crate::model::step_profile::{self, StepProfile};
use crate::report::ReportHeader;
use crate::tune::BudgetSetting;
use crate::Result;

/// The first hold of a profiled step, and the longest: the host queues ~12 launches and events
/// per layer (~500 for 7B) while the GPU spins; ~20 ms covers that at ~20 us each, and the hold
/// doubles up to 160 ms when the GPU still got there first.
const PROFILE_HOLD_MS: (f64, f64) = (20.0, 160.0);

/// The persistent decode layers of a run (`BenchPlan::persistent`): each context's column and
/// prefetch sweep, with PDL on the kernels around them where the run's PDL column ran, then the
/// grid barriers alone. Graph replay, or eager steps (5 launches per step, so nearly the same)
/// where the driver refuses to capture the cooperative launch (the engine falls back by itself).
/// A failure to time is a note and ends the pass (the points measured before it stand); a
/// stretch that ends with a state flag is recorded in `invalid` like any other (lab decode then
/// fails after writing the report).
fn time_persistent(
    eng: &mut GpuEngine,
    plan: &BenchPlan,
    pdl: bool,
    points: &mut [ContextPoint],
    notes: &mut Vec<String>,
    invalid: &mut Vec<String>,
) -> Option<(f64, usize)> {
    if let Err(e) = eng.set_persistent_layers(true) {
        notes.push(format!("persistent layers not timed: {e}"));
        return None;
    }
    eng.set_pdl(pdl);
    notes.push(format!(
        "persistent layers: one cooperative launch (kernels/llama/layers.cu) for every decoder layer, {}; PDL on the other kernels: {}; L2 prefetch {} KB per block before each grid barrier",
        eng.persistent_summary().unwrap_or_default(),
        if pdl { "yes" } else { "no" },
        eng.persistent_prefetch() / 1024
    ));
    let own = eng.persistent_prefetch();
    let mut budgets: Vec<u32> = Vec::new();
    for &b in plan.persistent_prefetch.iter().skip(1) {
        if b != own && !budgets.contains(&b) {
            budgets.push(b);
        }
    }
    'contexts: for p in points.iter_mut() {
        // "graph" steps run eager where the driver refused to capture the cooperative launch
        // (GpuEngine::persistent_graph_refused): marked in the column.
        match timed_from(eng, p.ctx, plan, true) {
            Ok((ms, f)) => {
                p.graph_persistent_ms = Some(ms);
                p.persistent_eager = eng.persistent_graph_refused().is_some();
                record_flags(
                    f,
                    &format!("ctx {} persistent layers", p.ctx),
                    notes,
                    invalid,
                );
            }
            Err(e) => {
                notes.push(format!(
                    "persistent layers not timed from ctx {} on: {e}",
                    p.ctx
                ));
                break;
            }
        }
        for &b in &budgets {
            eng.set_persistent_prefetch(b);
            match timed_from(eng, p.ctx, plan, true) {
                Ok((ms, f)) => {
                    p.graph_persistent_prefetch.push((b, ms));
                    let what = format!("ctx {} persistent layers at prefetch {b} B", p.ctx);
                    record_flags(f, &what, notes, invalid);
                }
                Err(e) => {
                    notes.push(format!(
                        "persistent layers at prefetch {b} B not timed from ctx {} on: {e}",
                        p.ctx
                    ));
                    eng.set_persistent_prefetch(own);
                    break 'contexts;
                }
            }
        }
        eng.set_persistent_prefetch(own);
    }
    if let Some(why) = eng.persistent_graph_refused() {
        notes.push(format!("persistent layers: the driver refused to capture the cooperative launch into a CUDA graph ({why}): their steps ran eager (5 launches each)"));
    }
    let barriers = match eng.time_persistent_barriers(20) {
        Ok((us, n)) => {
            notes.push(format!(
                "persistent layers, grid barriers alone (every phase's work skipped; 20 launches back to back, each launch's start included): {us:.1} us per step for {n} barriers, {:.2} us each at most",
                us / n.max(1) as f64
            ));
            Some((us, n))
        }
        Err(e) => {
            notes.push(format!("persistent layers' barriers not timed: {e}"));
            None
        }
    };
    if let Ok(f) = eng.flags() {
        if f != 0 {
            // Expected: these steps skip every phase's work, so the logits are not computed.
            notes.push(format!(
                "persistent barriers alone: step state flags {f:#x} (expected: no work is done)"
            ));
        }
    }
    let _ = eng.set_persistent_layers(false);
    eng.set_pdl(false);
    barriers
}

/// `timed_stretch` with the plan's warm-up and timed steps.
fn timed_from(
    eng: &mut GpuEngine,
    ctx: usize,
    plan: &BenchPlan,
    graph: bool,
) -> Result<(f64, i32)> {
    timed_stretch(eng, ctx, plan.warmup, plan.steps, graph)
}

/// ms per step of `steps` steps from position `ctx` after `warmup` untimed ones from the same
/// position (graph replays or eager launches), and the step state flags the warm-up and the timed
/// steps left (set_position clears them, so each stretch reports its own; the bench records them
/// with `record_flags` under the stretch's label).
pub fn timed_stretch(
    eng: &mut GpuEngine,
    ctx: usize,
    warmup: usize,
    steps: usize,
    graph: bool,
) -> Result<(f64, i32)> {
    eng.set_position(ctx)?;
    let mut flags = 0;
    if warmup > 0 {
        eng.time_steps(warmup, graph)?;
        flags |= eng.flags()?;
    }
    eng.set_position(ctx)?;
    let ms = eng.time_steps(steps, graph)?;
    Ok((ms, flags | eng.flags()?))
}

/// `steps` profiled steps from position `ctx` (module step_profile).
fn profile_at(eng: &mut GpuEngine, ctx: usize, steps: usize) -> Result<StepProfile> {
    let mut hold = PROFILE_HOLD_MS.0;
    loop {
        eng.set_position(ctx)?;
        let mut marks = Vec::with_capacity(steps);
        let mut host_bound = false;
        for _ in 0..steps {
            let (m, late) = eng.profile_step(hold)?;
            host_bound |= late;
            marks.push(m);
        }
        if !host_bound || hold >= PROFILE_HOLD_MS.1 {
            return Ok(step_profile::aggregate(ctx, hold, host_bound, &marks));
        }
        hold *= 2.0;
    }
}

/// An engine of synthetic weights generated on the GPU from `seed`, its KV cache filled with
/// random values (from `kv_seed(seed)`) so any context can be timed without a prefill.
pub fn synthetic_engine(
    gpu: &Gpu,
    cfg: &ModelConfig,
    kind: WeightKind,
    seed: u64,
    opts: EngineOptions,
) -> Result<GpuEngine> {
    let mut eng = GpuEngine::new(
        gpu,
        cfg,
        WeightSource::Synthetic(SyntheticSpec { kind, seed }),
        opts,
    )?;
    eng.fill_kv_random(kv_seed(seed))?;
    Ok(eng)
}

/// The KV cache's random fill for weights of `seed`.
fn kv_seed(seed: u64) -> u64 {
    seed ^ 0xC0FFEE
}

/// The ablation rows of one context point (`settings`, in order): each timed in the graph and,
/// where the point's PDL column ran and PDL still works, in the graph + PDL. The engine is left as
/// it was found: no ops skipped, PDL off, the cache refilled, the position at the point's context.
fn ablate_at(
    eng: &mut GpuEngine,
    plan: &BenchPlan,
    p: &mut ContextPoint,
    settings: &[(&str, SkipOps)],
    pdl_ok: bool,
    notes: &mut Vec<String>,
) -> Result<()> {
    let ctx = p.ctx;
    let class = eng.linear_class_bytes();
    // A PDL failure here costs the PDL column only.
    let mut with_pdl = pdl_ok && p.graph_pdl_ms_per_token.is_some();
    for &(what, skip) in settings {
        if let Err(e) = eng.set_skip_ops(skip) {
            notes.push(format!("ablation not timed: {e}"));
            break;
        }
        let time = |eng: &mut GpuEngine, pdl: bool| {
            eng.set_pdl(pdl);
            timed_from(eng, ctx, plan, true).map(|(ms, _flags)| ms)
        };
        let graph_ms = match time(eng, false) {
            Ok(ms) => ms,
            Err(e) => {
                notes.push(format!(
                    "ablation at ctx {ctx} without {what} not timed: {e}"
                ));
                break;
            }
        };
        let graph_pdl_ms = if with_pdl {
            match time(eng, true) {
                Ok(ms) => Some(ms),
                Err(e) => {
                    notes.push(format!("ablation at ctx {ctx}: graph + PDL without {what} not timed ({e}); the graph column goes on"));
                    with_pdl = false;
                    None
                }
            }
        } else {
            None
        };
        p.ablation.push(Ablation {
            left_out: what.to_string(),
            graph_ms,
            graph_pdl_ms,
            weight_bytes: skipped_bytes(&skip, &class),
        });
    }
    eng.set_skip_ops(SkipOps::default())?;
    eng.set_pdl(false);
    eng.fill_kv_random(kv_seed(plan.seed))?;
    eng.set_position(ctx)?;
    notes.push(format!("ablation (ctx {ctx}): the graph{} step with one op class left out at a time, the engine's budget; its outputs are meaningless (skipped ops leave an earlier step's values), so its state flags are not checked; the cache was refilled after it", if with_pdl { " and the graph + PDL" } else { "" }));
    Ok(())
}

/// Run one plan on `gpu`: synthetic weights generated on the GPU, KV cache filled with random
/// values up to each context (no prefill: the bytes read are the same), timed with CUDA events.
pub fn run_decode_bench(gpu: &Gpu, plan: &BenchPlan, ceilings: &Ceilings) -> Result<DecodeReport> {
    let max_ctx = bench_max_ctx(plan)?;
    let mut opts = EngineOptions::new(max_ctx);
    opts.fp16_backend = plan.fp16_backend;
    opts.int4 = plan.int4.clone();
    opts.prefill_chunk = plan.prefill_chunk.min(max_ctx);
    opts.prefill_int4 = plan.prefill_int4;
    opts.dequant_slice_elems = plan.dequant_slice_elems;
    if let Some(b) = plan.pdl_prefetch_own {
        opts.pdl_budget = BudgetSetting::uniform(b);
        opts.pdl_prefetch_tuned = false;
    }
    if let Some(&b) = plan.persistent_prefetch.first() {
        opts.persistent_prefetch = b;
    }
    let mut eng = synthetic_engine(gpu, &plan.cfg, plan.kind, plan.seed, opts)?;
    eng.capture_graph()?;
    let bytes = BytesPerToken::new(&plan.cfg, &eng.weights.desc);
    let mut invalid = Vec::new();
    let mut notes = vec![
        "weights: synthetic, generated on the GPU (random values, exact shapes): tokens are meaningless, bytes and timings are real".into(),
        "KV cache: filled with random fp16 values up to each context for the decode timings (no prefill run before them)".into(),
        format!("timing: CUDA events around {} consecutive steps after {} warm-up steps, per mode; graph = the whole step replayed as one CUDA graph, eager = one launch per op from the host", plan.steps, plan.warmup),
    ];
    let mut points = Vec::new();
    // PDL columns only where the engine can launch with it (Gpu::pdl_ready); elsewhere the note
    // says why they are missing instead of describing columns that were never timed.
    let mut pdl_ok = plan.pdl && gpu.pdl_ready();
    if let (true, Some(why)) = (plan.pdl, gpu.pdl_refusal()) {
        notes.push(format!("graph + PDL: not timed: {why}"));
    }
    if pdl_ok {
        notes.push(format!(
            "graph + PDL: programmatic dependent launch (sm_90+); each int4 GEMV block prefetches part of its weight tile into L2 before waiting for the previous kernel (kernels/common/pdl.cuh): {}{}",
            eng.budget_summary(),
            if plan.pdl_prefetch_sweep.iter().any(|&b| b != eng.budget_setting().bytes) {
                "; the last column times other budgets"
            } else {
                ""
            }
        ));
    }
    for &ctx in &plan.contexts {
        let mut ms = [0f64; 2];
        for (i, graph) in [true, false].into_iter().enumerate() {
            let (t, f) = timed_from(&mut eng, ctx, plan, graph)?;
            ms[i] = t;
            let what = format!("ctx {ctx} {}", if graph { "graph" } else { "eager" });
            record_flags(f, &what, &mut notes, &mut invalid);
        }
        let mut point = context_point(&bytes, ceilings.read_gbs, ctx, plan.steps, ms[0], ms[1]);
        if pdl_ok && eng.set_pdl(true) {
            // The engine's own prefetch budget (the PDL column), then the other budgets asked
            // for (the sweep column); the engine's own restored after. A PDL failure (capture
            // refused by an older driver, say) costs the PDL columns, not the run.
            // The sweep's budgets are uniform (every GEMV at that budget), whatever per-variant
            // budgets the engine's own setting has.
            let own_setting = eng.budget_setting().clone();
            let own = own_setting.bytes;
            // A uniform budget equal to the engine's own is its column already.
            let others = plan
                .pdl_prefetch_sweep
                .iter()
                .copied()
                .filter(|&b| b != own || !own_setting.per_variant.is_empty());
            for sweep in std::iter::once(None).chain(others.map(Some)) {
                if !pdl_ok {
                    break;
                }
                let setting = sweep.map_or(own_setting.clone(), BudgetSetting::uniform);
                eng.set_budget_setting(&setting);
                match timed_from(&mut eng, ctx, plan, true) {
                    Ok((ms, f)) => {
                        match sweep {
                            None => point.graph_pdl_ms_per_token = Some(ms),
                            Some(b) => point.graph_pdl_prefetch.push((b, ms)),
                        }
                        let what = format!("ctx {ctx} graph + PDL, prefetch {setting}");
                        record_flags(f, &what, &mut notes, &mut invalid);
                    }
                    Err(e) => {
                        notes.push(format!(
                            "graph + PDL (prefetch {setting}) not timed from ctx {ctx} on: {e}"
                        ));
                        pdl_ok = false;
                    }
                }
            }
            eng.set_budget_setting(&own_setting);
            // One engine setting changed, the graph + PDL step timed, the setting restored: a
            // failure costs that column only.
            let mut variant =
                |eng: &mut GpuEngine, what: &str| match timed_from(eng, ctx, plan, true) {
                    Ok((ms, f)) => {
                        let label = format!("ctx {ctx} graph + PDL {what}");
                        record_flags(f, &label, &mut notes, &mut invalid);
                        Some(ms)
                    }
                    Err(e) => {
                        notes.push(format!("graph + PDL {what} not timed at ctx {ctx}: {e}"));
                        None
                    }
                };
            let own_glu = eng.fused_glu();
            if pdl_ok && own_glu && eng.set_fused_glu(false) {
                point.graph_pdl_silu_kernel_ms = variant(&mut eng, "with the silu kernel");
            }
            eng.set_fused_glu(own_glu);
            if pdl_ok {
                let (own_sampling, own_seed) = eng.sampling();
                eng.set_sampling(Sampling::new(false, 0.9, 0.8)?, 1);
                point.graph_pdl_top_p_ms = variant(&mut eng, "with top-p sampling");
                eng.set_sampling(own_sampling, own_seed);
            }
            if pdl_ok && eng.act_order_plain_linears() > 0 {
                let own = eng.act_order_plain();
                eng.set_act_order_plain(false);
                point.graph_pdl_act_order_own_ms =
                    variant(&mut eng, "with act-order on its own kernels");
                eng.set_act_order_plain(own);
            }
            if pdl_ok && eng.attn_prefetch_kv() {
                eng.set_attn_prefetch_kv(false);
                point.graph_pdl_attn_v4_ms =
                    variant(&mut eng, "with the attention's K/V prefetch off");
                eng.set_attn_prefetch_kv(true);
            }
            // An engine mode already set: the graph + PDL step at each of `budgets`, then the
            // engine's own budget back.
            let mut by_budget = |eng: &mut GpuEngine, budgets: &[u32], mode: &str| {
                let mut timed = Vec::new();
                for &b in budgets {
                    eng.set_budget_setting(&BudgetSetting::uniform(b));
                    if let Some(ms) = variant(eng, &format!("with {mode}, prefetch {b} B")) {
                        timed.push((b, ms));
                    }
                }
                eng.set_budget_setting(&own_setting);
                timed
            };
            if pdl_ok && !plan.v6_one_per_sm.is_empty() && eng.set_v6_one_block_per_sm(true) {
                point.graph_pdl_v6_one_per_sm =
                    by_budget(&mut eng, &plan.v6_one_per_sm, "v6 at one block per SM");
            }
            eng.set_v6_one_block_per_sm(false);
            if pdl_ok && !plan.small_plain.is_empty() {
                eng.set_small_ops_plain(true);
                point.graph_pdl_small_plain = by_budget(
                    &mut eng,
                    &plan.small_plain,
                    "the small kernels launched plain",
                );
                eng.set_small_ops_plain(false);
            }
            if pdl_ok && !plan.prefetch_variant.is_empty() {
                for (name, b) in &plan.prefetch_variant {
                    // The engine's own budgets, with this one variant's replaced.
                    let mut s = own_setting.clone();
                    s.per_variant.insert(name.clone(), *b);
                    eng.set_budget_setting(&s);
                    let what = format!("with {name} prefetching {b} B per block");
                    if let Some(ms) = variant(&mut eng, &what) {
                        point
                            .graph_pdl_prefetch_variant
                            .push((name.clone(), *b, ms));
                    }
                }
                eng.set_budget_setting(&own_setting);
            }
        }
        eng.set_pdl(false);
        points.push(point);
    }
    let mut profile = Vec::new();
    if plan.profile_steps > 0 {
        for &ctx in &plan.contexts {
            profile.push(profile_at(&mut eng, ctx, plan.profile_steps)?);
            let what = format!("ctx {ctx} profiled eager steps");
            record_flags(eng.flags()?, &what, &mut notes, &mut invalid);
        }
        notes.push(format!("profile: {} eager steps per context, each queued behind a kernel that holds the GPU (>= {} ms) with a CUDA event after every op, so ops run back to back on the GPU; the events themselves add a little per op", plan.profile_steps, PROFILE_HOLD_MS.0));
    }
    // The ablation after every other decode timing: its steps write meaningless rows into the
    // cache and the state, so the cache is refilled after it (the prefill below starts from 0).
    // Every class at the first context; at the last of the list (lab run's longest), the
    // attention alone (its share grows with the context, the rest of the step's does not).
    if plan.ablate {
        let all = ablations();
        if let Some((first, rest)) = points.split_first_mut() {
            ablate_at(&mut eng, plan, first, &all, pdl_ok, &mut notes)?;
            if let Some(last) = rest.last_mut() {
                let attention: Vec<_> = all
                    .into_iter()
                    .filter(|(_, s)| *s == SkipOps::attention_only())
                    .collect();
                ablate_at(&mut eng, plan, last, &attention, pdl_ok, &mut notes)?;
            }
        }
    }
    // Prefill last: it overwrites the cache rows it covers (the decode timings are done).
    let mut prefill = Vec::new();
    if !plan.prefill_lens.is_empty() {
        notes.push(format!("prefill: one prefill of N random token ids from position 0 after one untimed prefill of the same length, CUDA events around the whole call (chunks of {} rows; int4 paths, --prefill-int4 {}: {})", eng.prefill_chunk(), eng.prefill_int4().flag(), eng.prefill_int4_paths().join("; ")));
    }
    let vocab = plan.cfg.vocab_size as u64;
    for &n in &plan.prefill_lens {
        let toks: Vec<u32> = (0..n as u64)
            .map(|i| ((i * 2654435761 + plan.seed) % vocab) as u32)
            .collect();
        eng.time_prefill(&toks)?;
        let ms = eng.time_prefill(&toks)?;
        record_flags(
            eng.flags()?,
            &format!("prefill {n}"),
            &mut notes,
            &mut invalid,
        );
        prefill.push(prefill_point(&plan.cfg, n, ms));
    }
    // The persistent layers after everything else: a fault there would poison the context, and
    // must not cost the points measured above.
    let persistent_barriers = if plan.persistent {
        time_persistent(
            &mut eng,
            plan,
            pdl_ok,
            &mut points,
            &mut notes,
            &mut invalid,
        )
    } else {
        None
    };
    let pdl_timed = points.iter().any(|p| p.graph_pdl_ms_per_token.is_some());
    Ok(DecodeReport {
        prefill,
        prefill_chunk: eng.prefill_chunk(),
        prefill_paths: eng.prefill_int4_paths(),
        prefill_int4: eng.prefill_int4(),
        header: ReportHeader::new(&gpu.info, Some(*ceilings)),
        model: plan.cfg.name.clone(),
        config: plan.cfg.clone(),
        weights: eng.weights.desc.clone(),
        int4_kernel: if matches!(plan.kind, WeightKind::Fp16) {
            "-".into()
        } else {
            eng.int4_kernel()
        },
        fp16_backend: eng.fp16_backend,
        max_ctx,
        attn_chunk: DEFAULT_ATTN_CHUNK,
        bytes,
        ceiling_gbs: ceilings.read_gbs,
        points,
        vram: eng.vram()?,
        notes,
        profile,
        persistent_barriers,
        invalid,
        pdl_budget: pdl_timed.then(|| eng.budget_setting().clone()),
        pdl_budget_tuned: pdl_timed && eng.tuned_budget().is_some(),
    })
}
