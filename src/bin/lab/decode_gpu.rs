//! `lab decode --backend gpu`: the GPU engine. Three modes:
//!
//!   lab decode --backend gpu --model vicuna-7b,vicuna-13b --weights int4,int4-act,fp16 \
//!              --ctx-list 128,512,1024,2048 [--root DIR] [--json]
//!       synthetic weights of the exact shapes, generated on the GPU: tokens/s (graph and eager),
//!       % of the bandwidth roofline, VRAM by part, GEMM prefill tokens/s at --prefill-list
//!       lengths -> <root>/reports/<gpu>/decode.{json,md,svg}
//!       (--act-order / --fp16 add int4-act / fp16 to --weights)
//!   lab decode --backend gpu --model tiny-check [--fixtures DIR]
//!       correctness: GPU vs f64 reference op by op, layer by layer, on random tiny models and the
//!       tiny fixture checkpoints (also vs the CPU engine); exits non-zero naming the first bad op
//!   lab decode --backend gpu --checkpoint DIR --prompt-ids 1,2,3 [--max-new-tokens N]
//!       greedy (or top-p over copied logits) generation from real weights; the prompt through the
//!       GEMM prefill (--prefill tokens: the decode step once per prompt token, for comparison)

use super::DecodeArgs;
use anyhow::{bail, Context};
use gptq_lab::bench::measure_ceilings;
use gptq_lab::cuda::Gpu;
use gptq_lab::model::config::ModelConfig;
use gptq_lab::model::decode_bench::{
    bench_needs_bytes, does_not_fit, engine_needs_bytes, gib, near_the_limit, run_decode_bench,
    run_label, write_decode_report, write_skipped_runs, BenchPlan, DecodeReport, SkippedRun,
};
use gptq_lab::model::gpu_check::{
    check_checkpoint, check_long_context, check_tiny_case, fixture_opts, tiny_cases, CheckReport,
    CHECK_NEW, CHECK_PROMPT, FIXTURES,
};
use gptq_lab::model::gpu_engine::{
    is_out_of_memory, parse_int4_kernel, EngineOptions, Fp16Backend, GpuEngine, Int4Kernel,
    PrefillInt4, PrefillMode, WeightSource, DEFAULT_PREFILL_CHUNK,
};
use gptq_lab::model::gpu_weights::WeightKind;
use gptq_lab::model::layer_source::CheckpointLayers;
use gptq_lab::report::{report_dir, utc_now};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct GpuArgs {
    /// GPU weights to measure: int4 (GPTQ g128, asymmetric zeros), int4-act (act-order), fp16.
    #[arg(long, default_value = "int4", value_delimiter = ',')]
    weights: Vec<String>,
    /// Add int4-act to --weights.
    #[arg(long)]
    act_order: bool,
    /// Add fp16 to --weights.
    #[arg(long)]
    fp16: bool,
    /// Int4 group size (-1: per-channel).
    #[arg(long, default_value_t = 128, allow_hyphen_values = true)]
    group: i32,
    /// Symmetric int4 (zeros not stored or read).
    #[arg(long)]
    sym: bool,
    /// Context lengths to measure at.
    #[arg(long, default_value = "128,512,1024,2048", value_delimiter = ',')]
    ctx_list: Vec<usize>,
    /// Timed steps per context and mode.
    #[arg(long, default_value_t = 32)]
    steps: usize,
    #[arg(long, default_value_t = 4)]
    warmup: usize,
    /// Eager steps profiled op by op at each context (where a step's time goes; 0: none).
    #[arg(long, default_value_t = 3)]
    profile_steps: usize,
    /// Programmatic dependent launch for the decode step (sm_90+): off, on, or both (the bench
    /// times the graph both ways when on or both; generation uses it unless off: the H100 tiny
    /// check of 2026-11-27 gave the same tokens with and without it).
    #[arg(long, default_value = "both", value_parser = pdl_mode)]
    pdl: PdlMode,
    /// Weight bytes each int4 GEMV block prefetches into L2 before its PDL wait, per block: the
    /// first is what generation and the bench's "graph + PDL" column use; the bench also times
    /// the graph + PDL at the others (0 = no prefetch). Not given: the budget `lab tune` kept for
    /// this model and these kernels (tuning/<gpu>.json, `auto` only), else 32768; the bench then
    /// also times 0, 16384, 32768, 65536 and 131072 for every GEMV (the one equal to the engine's
    /// own only where that has per-variant budgets: otherwise it is the column itself).
    #[arg(long, value_delimiter = ',')]
    pdl_prefetch: Vec<u32>,
    /// With PDL, the bench also times graph + PDL with every gemv_v6_pipe linear at one block per
    /// SM (so the next kernel's blocks fit beside it) at these prefetch budgets, bytes per block
    /// ('' = not timed). An experiment (notes/kernels.md "v6 at one block per SM"); generation
    /// never runs it.
    /// Off by default (run 12's device check passed 32768,131072,262144; measured slower, the
    /// step is retired).
    #[arg(long, default_value = "", value_delimiter = ',')]
    v6_one_per_sm: Vec<String>,
    /// With PDL, the bench also times graph + PDL with the kernels that are not GEMVs (embedding,
    /// norms, attention, silu, argmax) launched plain, at these GEMV prefetch budgets, bytes per
    /// block ('' = not timed): a GEMV's prefetch then overlaps only the small kernel before it,
    /// never the GEMV before that. An experiment (notes/kernels.md, run 13); generation never
    /// runs it. Off by default (run 13's device check passed 16384,32768,131072; mixed, the
    /// step is retired).
    #[arg(long, default_value = "", value_delimiter = ',')]
    pdl_small_plain: Vec<String>,
    /// With PDL, the bench also times graph + PDL with one registry GEMV variant at its own
    /// prefetch budget per block and the others at the first --pdl-prefetch: each VARIANT=BYTES
    /// entry (e.g. gemv_v2_vec=16384) is one setting ('' = not timed). An experiment
    /// (notes/kernels.md, after run 15); generation never runs it.
    #[arg(long, default_value = "", value_delimiter = ',')]
    pdl_prefetch_variant: Vec<String>,
    /// The bench also times the step at the first context with each op class left out in turn
    /// (both norms, the attention, silu, each GEMV class, all small ops, all GEMVs), in the graph
    /// and, with PDL, the graph + PDL: what each adds to the step's critical path, which the eager
    /// profile cannot show. Outputs of those steps are meaningless; generation never runs it.
    #[arg(long)]
    ablation: bool,
    /// Int4 GEMV kernels to run (each a separate run): auto (the default: per linear shape, the
    /// dispatcher's choice from --root's tuning/<gpu>.json when it matches this GPU and these
    /// kernels, else the heuristic), engine (lab_llama_q4_gemv, the engine's first kernel),
    /// and/or registry variants such as gemv_v5_splitk, gemv_v6_pipe.
    #[arg(long, default_value = "auto", value_delimiter = ',', value_parser = int4_kernel_name)]
    int4_kernel: Vec<String>,
    /// fp16 linears through cuBLAS (default) or the lab's fp16 GEMV.
    #[arg(long, default_value = "cublas")]
    fp16_backend: String,
    /// Folder that holds reports/ (default: current folder).
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Do not write report files.
    #[arg(long)]
    no_report: bool,
    /// Replace reports/<gpu>/decode.json even where it holds runs (a model and weights form) this
    /// bench does not measure again; without it such a bench is refused before it starts
    /// (`lab run`, which measures the whole set, passes it).
    #[arg(long, conflicts_with = "no_report")]
    replace_report: bool,
    /// Tiny fixture checkpoints for --model tiny-check (default: tests/fixtures here, else the
    /// source tree this binary was built from).
    #[arg(long)]
    fixtures: Option<PathBuf>,
    /// Skip the fixture checkpoints in tiny-check (random tiny models only).
    #[arg(long)]
    no_fixtures: bool,
    /// Prompt lengths to time a GEMM prefill at (from position 0; once per model and weights).
    /// Empty (--prefill-list '') times none.
    #[arg(long, default_value = "128,512,1024,2048", value_delimiter = ',')]
    prefill_list: Vec<String>,
    /// Rows per prefill chunk (the GEMMs' m; longer prompts go in chunks).
    #[arg(long, default_value_t = DEFAULT_PREFILL_CHUNK)]
    prefill_chunk: usize,
    /// Int4 prefill kernel: auto (per chunk: dequant from 256 rows, 128 with act-order, the GEMM
    /// family below; `lab plan` sizes its scratch), v2 (gemm_v2_mma on sm_80+, else gemm_v1_simt,
    /// for every chunk: the smallest scratch), v1, rows (the decode GEMV once per row), dequant
    /// (each linear to an fp16 scratch, then one cuBLAS GEMM, for every chunk; 1.46-1.53x gemm_v2
    /// at 512 rows on an H100, run 13).
    #[arg(long, default_value = "auto", value_parser = PrefillInt4::parse)]
    prefill_int4: PrefillInt4,
    /// MiB of fp16 W the dequant path writes at once: a wider linear is dequantized and
    /// multiplied in column slices (default 64: `lab plan` sizes that; larger slices make wider
    /// cuBLAS GEMMs and a larger prefill scratch).
    #[arg(long, default_value_t = (gptq_lab::model::gpu_engine::DEQUANT_SLICE_ELEMS * 2 >> 20) as u64)]
    dequant_slice_mib: u64,
    /// Persistent decode layers (kernels/llama/layers.cu): every decoder layer of a step in ONE
    /// cooperative launch (int4 models; gemv_v6_pipe's weight loop for every linear, so
    /// --int4-kernel applies to the prefill only). Generation runs with them; the bench adds a
    /// column timing them beside the launch-per-op step. Off by default: correct on the H100 but
    /// 14-16% slower than the launch-per-op graph + PDL step (run 17, notes/kernels.md).
    #[arg(long)]
    persistent_layers: bool,
    /// Weight bytes each persistent-layers block prefetches into L2 before every grid barrier:
    /// the first is what generation and the bench's column use; the bench also times the others.
    #[arg(long, default_value = "32768,0,131072", value_delimiter = ',')]
    persistent_prefetch: Vec<u32>,
    /// How generation fills the cache with the prompt: gemm (the prefill GEMMs) or tokens (the
    /// decode step once per prompt token, the reference).
    #[arg(long, default_value = "gemm", value_parser = prefill_mode)]
    prefill: PrefillMode,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PdlMode {
    Off,
    On,
    Both,
}

fn pdl_mode(s: &str) -> Result<PdlMode, String> {
    Ok(match s {
        "off" => PdlMode::Off,
        "on" => PdlMode::On,
        "both" => PdlMode::Both,
        o => return Err(format!("'{o}': expected off, on or both")),
    })
}

/// `--int4-kernel` (decode and eval): auto, engine or an int4 GEMV of the kernel registry. The
/// names are known without a GPU, so a misspelt one is refused as the flag is read, on any
/// backend; the name is resolved to a kernel (auto: this GPU's tuning) only once a GPU is open.
pub(crate) fn int4_kernel_name(s: &str) -> Result<String, String> {
    let name = s.trim();
    if name != "auto" {
        gptq_lab::model::gpu_engine::int4_kernel_by_name(name).map_err(|e| match e {
            gptq_lab::LabError::Invalid { reason, .. } => reason,
            e => e.to_string(),
        })?;
    }
    Ok(name.to_string())
}

fn prefill_mode(s: &str) -> Result<PrefillMode, String> {
    Ok(match s {
        "gemm" => PrefillMode::Gemm,
        "tokens" => PrefillMode::TokenByToken,
        o => return Err(format!("'{o}': expected gemm or tokens")),
    })
}

fn prefill_lens(list: &[String]) -> anyhow::Result<Vec<usize>> {
    list.iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| match s.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!(
                "--prefill-list {s}: expected positive prompt lengths, e.g. 128,512,1024,2048"
            ),
        })
        .collect()
}

/// --pdl-prefetch-variant's VARIANT=BYTES entries: VARIANT a registry int4 GEMV.
fn variant_budgets(list: &[String]) -> anyhow::Result<Vec<(String, u32)>> {
    list.iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let bad = || {
                anyhow::anyhow!(
                    "--pdl-prefetch-variant {s}: expected VARIANT=BYTES with VARIANT an int4 GEMV of the registry (e.g. gemv_v2_vec=16384)"
                )
            };
            let (name, bytes) = s.trim().split_once('=').ok_or_else(bad)?;
            let v = gptq_lab::kernels::registry::by_name(name.trim()).ok_or_else(bad)?;
            if !v.name.starts_with("gemv_v") {
                return Err(bad());
            }
            let b = bytes.trim().parse::<u32>().map_err(|_| bad())?;
            Ok((v.name.to_string(), b))
        })
        .collect()
}

/// A comma list of byte budgets per block ('' entries skipped): "32768,131072".
fn byte_budgets(list: &[String], flag: &str) -> anyhow::Result<Vec<u32>> {
    list.iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim().parse::<u32>().map_err(|_| {
                anyhow::anyhow!("{flag} {s}: expected bytes per block, e.g. 32768,131072")
            })
        })
        .collect()
}

fn open_gpu() -> anyhow::Result<Gpu> {
    let gpu = gptq_lab::cuda::open(0).map_err(|e| {
        anyhow::anyhow!(
            "lab decode --backend gpu: {e}; the CPU backend runs without one (--backend cpu)"
        )
    })?;
    if !gptq_lab::build_info::KERNELS_BUILT {
        bail!(gptq_lab::LabError::KernelsNotBuilt);
    }
    Ok(gpu)
}

fn fp16_backend(s: &str) -> anyhow::Result<Fp16Backend> {
    match s {
        "cublas" => Ok(Fp16Backend::Cublas),
        "lab" => Ok(Fp16Backend::Lab),
        o => bail!("--fp16-backend {o}: expected cublas or lab"),
    }
}

pub fn run(a: &DecodeArgs) -> anyhow::Result<()> {
    let g = &a.gpu;
    if a.checkpoint.is_some() || a.model.as_deref() == Some("tiny") {
        return generate(a);
    }
    let models = a.model.as_deref().context("--backend gpu: say which weights: --model vicuna-7b[,vicuna-13b] | tiny-check, or --checkpoint DIR")?;
    if models == "tiny-check" {
        return tiny_check(a);
    }
    let mut kinds = Vec::new();
    let mut names: Vec<String> = g.weights.clone();
    if g.act_order {
        names.push("int4-act".into());
    }
    if g.fp16 {
        names.push("fp16".into());
    }
    for n in &names {
        let k = match n.as_str() {
            "int4" => WeightKind::Int4 {
                group: g.group,
                act_order: false,
                sym: g.sym,
            },
            "int4-act" => WeightKind::Int4 {
                group: g.group,
                act_order: true,
                sym: g.sym,
            },
            "fp16" => WeightKind::Fp16,
            o => bail!("--weights {o}: expected int4, int4-act or fp16"),
        };
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    if g.ctx_list.is_empty() || g.ctx_list.contains(&0) {
        bail!("--ctx-list: give positive context lengths, e.g. 128,512,1024,2048");
    }
    let cfgs = models
        .split(',')
        .map(|m| ModelConfig::preset(m.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let backend = fp16_backend(&g.fp16_backend)?;
    let lens = prefill_lens(&g.prefill_list)?;
    let one_per_sm = byte_budgets(&g.v6_one_per_sm, "--v6-one-per-sm")?;
    let small_plain = byte_budgets(&g.pdl_small_plain, "--pdl-small-plain")?;
    let prefetch_variant = variant_budgets(&g.pdl_prefetch_variant)?;
    let pf_int4 = g.prefill_int4;
    let slice_elems = slice_elems(g.dequant_slice_mib)?;
    if g.prefill_chunk == 0 && !lens.is_empty() {
        bail!("--prefill-chunk 0 leaves no prefill to time: give a chunk (e.g. 512) or --prefill-list ''");
    }
    let gpu = open_gpu()?;
    if !g.no_report && !g.replace_report {
        let path = report_dir(&g.root, &gpu.info.slug).join("decode.json");
        let models: Vec<&str> = cfgs.iter().map(|c| c.name.as_str()).collect();
        let kernels: Vec<&str> = g.int4_kernel.iter().map(|n| n.trim()).collect();
        let dropped =
            gptq_lab::model::decode_bench::runs_not_remeasured(&path, &models, &kinds, &kernels)?;
        if !dropped.is_empty() {
            bail!(
                "{} holds runs this bench does not measure again ({}): writing the report would \
                 drop them. Pass --no-report, --root DIR to write elsewhere, or --replace-report \
                 to replace it",
                path.display(),
                dropped.join(", ")
            );
        }
    }
    let t0 = Instant::now();
    let ceilings = measure_ceilings(&gpu).context("measuring bandwidth ceilings")?;
    eprintln!(
        "ceilings: read {:.0} GB/s, copy {:.0} GB/s ({:.1} s)",
        ceilings.read_gbs,
        ceilings.copy_gbs,
        t0.elapsed().as_secs_f64()
    );
    let mut runs: Vec<DecodeReport> = Vec::new();
    let mut failures = Vec::new();
    let mut skipped: Vec<SkippedRun> = Vec::new();
    let int4_kernels = g
        .int4_kernel
        .iter()
        .map(|n| parse_int4_kernel(n.trim(), || dispatcher(&gpu, &g.root)))
        .collect::<Result<Vec<_>, _>>()?;
    // fp16 runs do not use an int4 kernel: once each.
    let combos: Vec<(WeightKind, Int4Kernel)> = kinds
        .iter()
        .flat_map(|&k| match k {
            WeightKind::Fp16 => vec![(k, Int4Kernel::Engine)],
            _ => int4_kernels.iter().map(|v| (k, v.clone())).collect(),
        })
        .collect();
    for cfg in &cfgs {
        let mut prefill_timed: Vec<WeightKind> = Vec::new();
        for (kind, int4) in &combos {
            let (kind, int4) = (*kind, int4.clone());
            // The prefill and the persistent layers (gemv_v6's loop whatever --int4-kernel says)
            // do not use the decode's int4 GEMV: time them once per weights form.
            // Marked timed only once a run of the form succeeded (a skipped or failed first run
            // leaves the prefill to the next kernel's run).
            let time_prefill = !prefill_timed.contains(&kind);
            let t = Instant::now();
            let plan = BenchPlan {
                cfg: cfg.clone(),
                kind,
                contexts: g.ctx_list.clone(),
                steps: g.steps,
                warmup: g.warmup,
                seed: a.seed.wrapping_add(1),
                fp16_backend: backend,
                int4: int4.clone(),
                prefill_lens: if time_prefill {
                    lens.clone()
                } else {
                    Vec::new()
                },
                prefill_chunk: g.prefill_chunk,
                prefill_int4: pf_int4,
                dequant_slice_elems: slice_elems,
                profile_steps: g.profile_steps,
                pdl: g.pdl != PdlMode::Off,
                persistent: g.persistent_layers
                    && time_prefill
                    && !matches!(kind, WeightKind::Fp16),
                persistent_prefetch: g.persistent_prefetch.clone(),
                pdl_prefetch_own: g.pdl_prefetch.first().copied(),
                pdl_prefetch_sweep: pdl_sweep(&g.pdl_prefetch),
                v6_one_per_sm: one_per_sm.clone(),
                small_plain: small_plain.clone(),
                prefetch_variant: prefetch_variant.clone(),
                ablate: g.ablation,
            };
            // The report's short label (decode.md, skipped runs), and the kernel's full name
            // ("auto (tuned config, 140 keys)") where a failure is explained.
            let run_label = run_label(&cfg.name, kind, &int4.name());
            let what = format!("{} {} [{}]", cfg.name, kind.label(), int4.name());
            // A model the card cannot hold is skipped and said so, not failed: lab run on a
            // 24 GB card still reports everything that fits (13B fp16 needs ~26 GiB).
            // Freed buffers (the ceiling probes, the previous engine) return to the driver only
            // at a synchronization.
            gpu.ctx.synchronize().ok();
            let free = gpu
                .ctx
                .mem_get_info()
                .map_err(|e| anyhow::anyhow!("cuMemGetInfo: {e:?}"))?
                .0 as u64;
            let needs = bench_needs_bytes(&plan)?;
            if let Some(why) = does_not_fit(needs, free) {
                eprintln!("SKIP {run_label}: {why}");
                skipped.push(SkippedRun {
                    run: run_label,
                    reason: why,
                });
                continue;
            }
            // Each run's engine is dropped (and the memory pool drained) before the next.
            let r = run_decode_bench(&gpu, &plan, &ceilings);
            gpu.ctx.synchronize().ok();
            match r {
                Err(e) if is_out_of_memory(&e) && near_the_limit(needs, free) => {
                    let why = format!(
                        "ran out of device memory: the planner's {} is within 10% of the {} free ({e})",
                        gib(needs),
                        gib(free)
                    );
                    eprintln!("SKIP {run_label}: {why}");
                    skipped.push(SkippedRun {
                        run: run_label,
                        reason: why,
                    });
                }
                Ok(r) => {
                    prefill_timed.push(kind);
                    print_run(&r, t.elapsed().as_secs_f64());
                    if !r.invalid.is_empty() {
                        eprintln!("INVALID {what}: {}", r.invalid.join("; "));
                        failures.push(format!(
                            "{what}: {} timed stretch(es) ended with a step state flag, so their timings are not of a valid step (decode.md notes): {}",
                            r.invalid.len(),
                            r.invalid.join("; ")
                        ));
                    }
                    runs.push(r);
                }
                Err(e) => {
                    eprintln!("FAIL {what}: {e}");
                    failures.push(format!("{what}: {e}"));
                }
            }
        }
    }
    if a.json {
        println!("{}", serde_json::to_string(&runs)?);
    }
    if !g.no_report && !runs.is_empty() {
        let dir = report_dir(&g.root, &gpu.info.slug);
        write_skipped_runs(&dir, &skipped)?;
        write_decode_report(&dir, &runs)?;
        eprintln!("wrote {}/decode.{{json,md}} + decode-*.svg", dir.display());
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} decode runs failed or timed invalid steps: {}",
            failures.len(),
            cfgs.len() * combos.len(),
            failures.join("; ")
        );
    }
    Ok(())
}

fn print_run(r: &DecodeReport, secs: f64) {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    eprintln!(
        "{} ({:.1} s): weights {:.2} GiB, KV {:.2} GiB ({} pos), workspace {:.3} GiB, context {:.2} GiB, peak {:.2} GiB",
        r.label(),
        secs,
        gib(r.vram.weights_bytes),
        gib(r.vram.kv_bytes),
        r.max_ctx,
        gib(r.vram.workspace_bytes),
        gib(r.vram.context_bytes),
        gib(r.vram.peak_used_bytes)
    );
    for p in &r.points {
        eprintln!(
            "  ctx {:>5}: graph {:7.3} ms/tok {:7.1} tok/s | eager {:7.3} ms/tok {:7.1} tok/s | {:.3} GB/tok, {:.0} GB/s, {:.1}% of roofline {:.1} tok/s",
            p.ctx, p.graph_ms_per_token, p.graph_tokens_per_s, p.eager_ms_per_token, p.eager_tokens_per_s, p.bytes_per_token / 1e9, p.achieved_gbs, p.roofline_pct, p.roofline_tokens_per_s
        );
        if let Some(m) = p.graph_pdl_ms_per_token {
            eprintln!(
                "             graph + PDL {m:7.3} ms/tok {:7.1} tok/s",
                1e3 / m
            );
        }
        for (v, b, m) in &p.graph_pdl_prefetch_variant {
            eprintln!(
                "             graph + PDL, {v} prefetching {:>3} KB per block {m:7.3} ms/tok",
                b / 1024
            );
        }
        for (b, m) in &p.graph_pdl_small_plain {
            eprintln!(
                "             graph + PDL, small kernels launched plain, prefetch {:>3} KB {m:7.3} ms/tok",
                b / 1024
            );
        }
        for (b, m) in &p.graph_pdl_v6_one_per_sm {
            eprintln!(
                "             graph + PDL, v6 at one block per SM, prefetch {:>3} KB {m:7.3} ms/tok",
                b / 1024
            );
        }
    }
    for p in &r.prefill {
        eprintln!(
            "  prefill {:>5} tokens: {:8.2} ms, {:8.0} tok/s, {:.1} linear TFLOP/s",
            p.tokens, p.ms, p.tokens_per_s, p.linear_tflops
        );
    }
    // The shortest context's profile: the groups that hold the step, largest first.
    if let Some(p) = r.profile.first() {
        let mut g: Vec<_> = p.groups.iter().collect();
        g.sort_by(|a, b| b.us.total_cmp(&a.us));
        let parts: Vec<String> = g
            .iter()
            .take(6)
            .map(|g| {
                let bw = if g.gbs > 0.0 {
                    format!(" {:.0} GB/s", g.gbs)
                } else {
                    String::new()
                };
                format!("{} {:.0} us{bw}", g.group, g.us)
            })
            .collect();
        eprintln!(
            "  profile ctx {}: {:.0} us/step{}: {}",
            p.ctx,
            p.total_us,
            if p.host_bound { " (host-bound)" } else { "" },
            parts.join(", ")
        );
    }
    for n in r.notes.iter().filter(|n| n.contains("flags")) {
        eprintln!("  note: {n}");
    }
}

fn fixtures_dir(g: &GpuArgs) -> Option<PathBuf> {
    if let Some(d) = &g.fixtures {
        return Some(d.clone());
    }
    [
        PathBuf::from("tests/fixtures"),
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")),
    ]
    .into_iter()
    .find(|d| d.is_dir())
}

/// Every random tiny case, the long-context case, then the fixture checkpoints; one line each,
/// the first bad op named.
fn tiny_check(a: &DecodeArgs) -> anyhow::Result<()> {
    let g = &a.gpu;
    let gpu = open_gpu()?;
    let mut reports: Vec<CheckReport> = Vec::new();
    let mut errors = Vec::new();
    for c in tiny_cases() {
        match check_tiny_case(&gpu, &c) {
            Ok(r) => {
                println!("{}", r.summary());
                reports.push(r);
            }
            Err(e) => {
                let what = format!(
                    "tiny random {} chunk {} int4 kernel {}",
                    c.kind.label(),
                    c.chunk,
                    if c.auto {
                        "auto (heuristic)".to_string()
                    } else {
                        c.int4
                            .map_or(Int4Kernel::Engine, Int4Kernel::Variant)
                            .name()
                    }
                );
                println!("ERROR {what}: {e}");
                errors.push(format!("{what}: {e}"));
            }
        }
    }
    // The 7B/13B attention geometry (hd 128, 9 splits) at a 520-token context.
    match check_long_context(&gpu) {
        Ok(r) => {
            println!("{}", r.summary());
            reports.push(r);
        }
        Err(e) => {
            println!("ERROR tiny long-context hd 128: {e}");
            errors.push(format!("tiny long-context hd 128: {e}"));
        }
    }
    if !g.no_fixtures {
        match fixtures_dir(g) {
            None => println!("SKIP fixtures: no tests/fixtures here; pass --fixtures DIR"),
            Some(root) => {
                for name in FIXTURES {
                    let dir = root.join(name);
                    match check_checkpoint(&gpu, &dir, &CHECK_PROMPT, CHECK_NEW, fixture_opts()) {
                        Ok(r) => {
                            println!("{}", r.summary());
                            reports.push(r);
                        }
                        Err(e) => {
                            println!("ERROR fixture {}: {e}", dir.display());
                            errors.push(format!("fixture {name}: {e}"));
                        }
                    }
                }
            }
        }
    }
    if !g.no_report {
        let dir = report_dir(&g.root, &gpu.info.slug);
        let out = serde_json::json!({"date": utc_now(), "device": gpu.info, "build": gptq_lab::build_info::build_info(), "checks": reports, "errors": errors});
        gptq_lab::util::write_json_atomic(&dir.join("decode-check.json"), &out)?;
        eprintln!("wrote {}", dir.join("decode-check.json").display());
    }
    let failed = reports.iter().filter(|r| !r.pass).count();
    if failed > 0 || !errors.is_empty() {
        bail!(
            "GPU engine check: {failed} of {} configurations out of tolerance, {} errors",
            reports.len(),
            errors.len()
        );
    }
    println!(
        "GPU engine check: all {} configurations PASS",
        reports.len()
    );
    Ok(())
}

/// Generation from real weights on the GPU.
fn generate(a: &DecodeArgs) -> anyhow::Result<()> {
    let dir = super::checkpoint_dir(a)?;
    let gpu = open_gpu()?;
    let t0 = Instant::now();
    let ckpt = gptq_lab::model::checkpoint::Checkpoint::open(&dir)?;
    for n in ckpt.notes() {
        eprintln!("note: {n}");
    }
    if let Some(note) = gptq_lab::quantize::synth::synthetic_note(&ckpt.dir) {
        eprintln!("{note}");
    }
    let tokenizer = gptq_lab::model::tokenizer::TextTokenizer::from_checkpoint_dir(&ckpt.dir)?;
    let prompt: Vec<u32> = match &a.prompt_ids {
        Some(ids) => gptq_lab::model::tokenizer::parse_ids(ids)?,
        None => match (&a.prompt, tokenizer.as_ref()) {
            (Some(text), Some(tok)) => tok.encode(
                &gptq_lab::model::template::Template::parse(&a.template)?.render(text),
                true,
            )?,
            (Some(_), None) => bail!(
                "{}: {}, so --prompt cannot be tokenized; pass --prompt-ids",
                ckpt.dir.display(),
                gptq_lab::model::tokenizer::NO_TOKENIZER
            ),
            (None, _) => bail!("give a prompt: --prompt TEXT or --prompt-ids 1,2,3"),
        },
    };
    super::check_vocab(
        a,
        &prompt,
        &ckpt.dir,
        ckpt.config.vocab_size,
        tokenizer.as_ref(),
    )?;
    let max_ctx = super::check_context(prompt.len(), a.max_new_tokens, &ckpt.config)?.max(1);
    let mut opts = EngineOptions::new(max_ctx);
    opts.fp16_backend = fp16_backend(&a.gpu.fp16_backend)?;
    opts.prefill = a.gpu.prefill;
    opts.prefill_chunk = a.gpu.prefill_chunk.min(max_ctx);
    opts.prefill_int4 = a.gpu.prefill_int4;
    opts.dequant_slice_elems = slice_elems(a.gpu.dequant_slice_mib)?;
    let mode = opts.prefill;
    let (opts_sampling, sampling_from) = super::sampling(a, &ckpt.dir)?;
    if let Some(note) = sampling_from.note(opts_sampling) {
        eprintln!("{note}");
    }
    opts.sampling = opts_sampling;
    opts.sample_seed = a.seed;
    opts.pdl = a.gpu.pdl != PdlMode::Off;
    if let (PdlMode::On, Some(why)) = (a.gpu.pdl, gpu.pdl_refusal()) {
        eprintln!("note: --pdl on has no effect here: {why}");
    }
    if let Some(&b) = a.gpu.pdl_prefetch.first() {
        opts.pdl_budget = gptq_lab::tune::BudgetSetting::uniform(b);
        opts.pdl_prefetch_tuned = false;
    }
    opts.int4 = parse_int4_kernel(
        a.gpu.int4_kernel.first().map_or("auto", |s| s.as_str()),
        || dispatcher(&gpu, &a.gpu.root),
    )?;
    opts.persistent_layers = a.gpu.persistent_layers;
    if let Some(&b) = a.gpu.persistent_prefetch.first() {
        opts.persistent_prefetch = b;
    }
    let label = dir.display().to_string();
    // What the planner says this run needs, for the message if the card runs out of memory.
    let kind = match &ckpt.quant {
        None => WeightKind::Fp16,
        Some(q) => WeightKind::Int4 {
            group: q.group_size,
            act_order: q.desc_act,
            sym: q.sym,
        },
    };
    let planned = engine_needs_bytes(
        &ckpt.config,
        kind,
        max_ctx,
        opts.prefill_chunk,
        opts.prefill_int4,
        opts.fp16_backend,
    )
    .ok();
    gpu.ctx.synchronize().ok();
    let free = gpu.ctx.mem_get_info().map(|m| m.0 as u64).ok();
    // Streamed: one layer at a time from the memory-mapped checkpoint, a progress bar on stderr.
    let src = CheckpointLayers::new(&ckpt).with_progress(!a.json);
    let mut eng = match GpuEngine::new(
        &gpu,
        &ckpt.config,
        WeightSource::Host {
            weights: &src,
            label: &label,
        },
        opts,
    ) {
        Err(e) if is_out_of_memory(&e) => bail!(
            "{label}: the GPU ran out of memory building the engine ({e}); the planner puts this run at {} beyond the CUDA context, {} was free: `lab plan --checkpoint {label}` shows what fits, and a shorter prompt + --max-new-tokens needs less KV cache",
            planned.map_or("?".into(), gib),
            free.map_or("?".into(), gib),
        ),
        r => r?,
    };
    let load_s = t0.elapsed().as_secs_f64();
    let eos = super::stop_tokens(a, &ckpt.dir, ckpt.config.vocab_size, tokenizer.as_ref())?;
    let mut stream = super::text_stream(a, tokenizer.as_ref());
    let t1 = Instant::now();
    // Greedy or top-p, chosen on the GPU inside the step (EngineOptions::sampling); each step
    // replays the graph and waits only for its token id.
    // Grown as tokens come (--max-new-tokens is the user's number: never sized from it).
    let mut tokens = Vec::new();
    let mut stop = "max_new_tokens";
    let mut first_s = 0.0;
    // --dump-logits: after each step, the logits the GPU drew from, read back (a sync and a
    // vocab-sized copy per token: a checking mode, so its timings are not the engine's), and
    // with top-p the CPU mirror's margin of each draw on them (sampler.rs; the tiny check proves
    // the GPU's draw equals the mirror's), in --json beside `--backend cpu`'s own margins.
    let inspect = a.dump_logits.is_some();
    let mirror = gptq_lab::model::sampler::Sampler::new(opts_sampling, a.seed);
    let mut margins = Vec::new();
    let mut mirror_differs = Vec::new();
    let mut step_logits = Vec::new();
    for i in 0..a.max_new_tokens {
        let t = if i == 0 {
            let t = eng.begin(&prompt, true, mode)?;
            first_s = t1.elapsed().as_secs_f64();
            t
        } else {
            eng.next_token(true)?
        };
        if inspect {
            let logits = eng.logits()?;
            let (m, margin) = mirror.sample_with_margin(&logits, prompt.len() - 1 + i)?;
            margins.extend(margin);
            if m != t {
                mirror_differs.push(i);
            }
            if a.dump_logits.is_some() {
                step_logits.push(logits);
            }
        }
        tokens.push(t);
        if eos.contains(&t) {
            stop = "eos";
            break;
        }
        if let Some(st) = stream.as_mut() {
            let piece = st.push(t)?;
            if !a.json {
                super::print_piece(&piece);
            }
            if st.stopped() {
                stop = "stop_str";
                break;
            }
        }
    }
    let gen_s = t1.elapsed().as_secs_f64();
    let decode_steps = tokens.len().saturating_sub(1);
    let decode_tps = if gen_s > first_s {
        decode_steps as f64 / (gen_s - first_s)
    } else {
        0.0
    };
    let text = match &tokenizer {
        Some(t) => Some(super::generated_text(a, t, &tokens)?),
        None => None,
    };
    let vram = eng.vram()?;
    if let Some(path) = &a.dump_logits {
        let dump = serde_json::json!({
            "checkpoint": gptq_lab::util::path_json(&ckpt.dir),
            "backend": "gpu",
            "prompt_tokens": prompt,
            "tokens": tokens,
            "step_logits": step_logits,
        });
        gptq_lab::util::write_json_atomic(path, &dump)?;
    }
    if a.json {
        // With --dump-logits (else empty): top_p_margins, the CPU mirror's margin of each draw
        // on the GPU's logits;
        // mirror_differs: new-token indices where the mirror chose another id (expected: none).
        let out = serde_json::json!({"backend": "gpu", "checkpoint": gptq_lab::util::path_json(&ckpt.dir), "weights": eng.weights.desc, "prompt_tokens": prompt, "tokens": tokens, "text": text, "stop": stop,
            "sampling": super::sampling_json(opts_sampling, &sampling_from, a.seed),
            "top_p_margins": margins, "mirror_differs": mirror_differs,
            "timings": {"load_s": load_s, "first_token_s": first_s, "generate_s": gen_s, "decode_tokens_per_s": decode_tps, "prefill": format!("{mode:?}")}, "load": eng.weights.load, "vram": vram});
        println!("{}", serde_json::to_string(&out)?);
    } else {
        match stream.as_mut() {
            Some(st) => println!("{}", st.finish()?),
            None => println!("{tokens:?}"),
        }
        print_load(&eng.weights.desc, eng.weights.load.as_ref(), &vram, load_s);
        eprintln!("gpu: {} prompt tokens, first new token after {first_s:.3} s (prefill: {mode:?}), {} new tokens ({stop}), decode {decode_tps:.1} tok/s, load {load_s:.2} s", prompt.len(), tokens.len());
    }
    Ok(())
}

/// Load time and VRAM by part of a checkpoint run (stderr).
fn print_load(
    d: &gptq_lab::model::gpu_weights::WeightsDesc,
    load: Option<&gptq_lab::model::load_progress::LoadStats>,
    v: &gptq_lab::model::vram::VramReport,
    load_s: f64,
) {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    eprintln!(
        "weights ({}{}): linears {:.1} MiB, lm_head {:.1} MiB, embeddings {:.1} MiB, norms {:.2} MiB = {:.1} MiB",
        d.kind.label(),
        if d.fused { ", q|k|v and gate|up fused" } else { ", some groups unfused" },
        mib(d.linear_bytes),
        mib(d.lm_head_bytes),
        mib(d.embed_bytes),
        mib(d.norm_bytes),
        mib(d.total_bytes())
    );
    eprintln!(
        "VRAM: weights {:.1} MiB, KV cache {:.1} MiB, workspace {:.1} MiB, CUDA context {:.1} MiB, peak used {:.1} MiB of {:.1} MiB",
        mib(v.weights_bytes),
        mib(v.kv_bytes),
        mib(v.workspace_bytes),
        mib(v.context_bytes),
        mib(v.peak_used_bytes),
        mib(v.total_bytes)
    );
    match load {
        Some(s) => eprintln!(
            "load {load_s:.2} s (open + engine); weights {:.2} s: read {:.2} s, layout {:.2} s, upload {:.2} s; host peak {:.1} MiB per layer, {:.1} MiB per table",
            s.total_s,
            s.read_s,
            s.layout_s,
            s.upload_s,
            mib(s.peak_layer_host_bytes),
            mib(s.peak_table_host_bytes)
        ),
        None => eprintln!("load {load_s:.2} s"),
    }
}

/// The dispatcher for `--int4-kernel auto`: root/tuning/<gpu>.json when it exists (refused with
/// the reason printed when it was measured on another GPU or other kernels), else the heuristic.
pub(crate) fn dispatcher(
    gpu: &gptq_lab::cuda::Gpu,
    root: &std::path::Path,
) -> gptq_lab::Result<gptq_lab::tune::Dispatcher> {
    let path = root.join(gptq_lab::tune::default_path(&gpu.info.slug));
    // A folder or a dangling link there is an error naming it, not "no tuned config".
    let config = if gptq_lab::util::optional_file(&path)? {
        Some(gptq_lab::tune::TunedConfig::load(&path)?)
    } else {
        eprintln!(
            "note: no tuned config at {}: --int4-kernel auto uses the heuristic",
            path.display()
        );
        None
    };
    let d = gptq_lab::tune::Dispatcher::from_config(
        config,
        &gpu.info,
        gptq_lab::build_info::KERNEL_HASH,
    );
    if let Some(why) = &d.refused {
        eprintln!(
            "note: tuned config {} refused, using the heuristic: {why}",
            path.display()
        );
    }
    Ok(d)
}

/// The budgets the bench times besides the engine's own: the rest of --pdl-prefetch where given,
/// else a fixed list (the bench leaves out whichever is the engine's).
fn pdl_sweep(given: &[u32]) -> Vec<u32> {
    match given.split_first() {
        Some((_, rest)) => rest.to_vec(),
        None => vec![0, 16384, 32768, 65536, 131072],
    }
}

/// --dequant-slice-mib as fp16 elements (at least 1 MiB).
fn slice_elems(mib: u64) -> anyhow::Result<usize> {
    if mib == 0 || mib > 1 << 20 {
        bail!("--dequant-slice-mib {mib}: expected 1 to 1048576 MiB of fp16 W per slice");
    }
    Ok((mib << 20) as usize / 2)
}
