//! `lab plan`: what fits on which card, at which context, and the roofline tokens/s estimate.
//! With no flags: the full table for Vicuna 7B, 13B and 33B x g32/64/128/per-channel x ctx
//! 512/2048/4096.

use anyhow::{bail, Context};
use gptq_lab::model::config::ModelConfig;
use gptq_lab::model::gpu_engine::{
    PrefillInt4, DEFAULT_PREFILL_CHUNK, DEQUANT_MIN_ROWS, DEQUANT_MIN_ROWS_ACT_ORDER,
};
use gptq_lab::plan::{
    cards, fit, gb, Plan, PlanSpec, SpeedModel, WeightDtype, CUBLAS_BYTES, CUDA_CONTEXT_BYTES,
    DEFAULT_CTXS, DEFAULT_GROUPS, GENERIC_SIZES_GIB, PREFILL_PLAN_SM,
};
use std::path::PathBuf;

/// The models a plan without --model or --checkpoint covers: the two sizes this lab targets and
/// the 33B a 24 GB card owner asks about.
const DEFAULT_MODELS: [&str; 3] = ["vicuna-7b", "vicuna-13b", "vicuna-33b"];

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// Model preset(s), comma separated: vicuna-7b, vicuna-13b, vicuna-33b (2048 positions),
    /// vicuna-7b-v1.5, vicuna-13b-v1.5 (4096), vicuna-7b-16k, vicuna-13b-16k (linear RoPE x4,
    /// 16384). Default: vicuna-7b, vicuna-13b and vicuna-33b.
    #[arg(long, value_delimiter = ',', conflicts_with = "checkpoint")]
    model: Vec<String>,
    /// A checkpoint folder: shapes from DIR/config.json, group size and act-order from
    /// DIR/quantize_config.json (or config.json's quantization_config), else --group.
    #[arg(long, value_name = "DIR", value_parser = crate::checkpoint_folder())]
    checkpoint: Option<PathBuf>,
    /// Group size(s), comma separated: 32, 64, 128, -1 (per-channel). Default: all four.
    #[arg(long, value_delimiter = ',')]
    group: Vec<i32>,
    /// Context length(s) the KV cache holds, comma separated. Default: 512,2048,4096.
    #[arg(long, value_delimiter = ',')]
    ctx: Vec<u64>,
    /// Sequences decoded together (KV cache and workspace scale with it). The tokens/s estimate
    /// (--card) is for batch 1 only: the engine decodes one sequence, and nothing measured says
    /// how a bigger batch's step grows.
    #[arg(long, default_value_t = 1)]
    batch: u64,
    /// int4 (GPTQ) or fp16 weights, for the int4-vs-fp16 comparison.
    #[arg(long, value_enum, default_value_t = WeightDtype::Int4)]
    dtype: WeightDtype,
    /// Act-order checkpoint: count the K x 4 byte g_idx / permutation per linear.
    #[arg(long)]
    act_order: bool,
    /// Also plan for this card and print its roofline tokens/s estimate (see --cards; "rtx4090",
    /// "GeForce RTX 4090", "4090" all name rtx-4090). "this": GPU 0 of this machine as its driver
    /// describes it (allocatable memory, memory clock x bus width, compute capability), for any
    /// card, in the table or not (a MIG instance: its memory, and its memory's share of the GPU's
    /// bandwidth).
    #[arg(long)]
    card: Option<String>,
    /// A flat fraction of the card's spec bandwidth for the tokens/s estimate (1.0 = the pure
    /// roofline). Default with --card: step time = bytes / (spec x stream efficiency) + layers x a
    /// fixed cost, both fitted to a committed decode report's 7B and 13B steps (reports/*/decode.json
    /// under --root; of several, the one measured on the card of the nearest spec bandwidth); a
    /// report with one model gives its flat efficiency; none, 1.0.
    /// Needs --card: without one there is no estimate for it to scale.
    #[arg(long, requires = "card")]
    efficiency: Option<f64>,
    /// Folder holding reports/ (for the measured efficiency). Default: the current folder if it
    /// has reports/, else the source tree this binary was built from (so the estimate does not
    /// change with the folder `lab plan` runs in).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Rows per GEMM-prefill chunk the engine is built with (as `lab decode --backend gpu
    /// --prefill-chunk`): its prefill workspace (activations of the chunk, GEMM split-K, repack
    /// scratch) counts in the total. Clamped to the context as the engine clamps it. 0: an
    /// engine without GEMM prefill (prompts token by token), no prefill workspace.
    #[arg(long, default_value_t = DEFAULT_PREFILL_CHUNK as u64)]
    prefill_chunk: u64,
    /// How the engine's prefill computes int4 linears (as `lab decode --prefill-int4`): auto,
    /// v2, v1, rows or dequant. auto (chunks from 256 rows, 128 with act-order) and dequant
    /// hold the widest fp16 column slice of W (at most 64 MB: 7B 60 MB, 13B 57 MB) in the prefill
    /// workspace, shared with the GEMM's scratch (7B ~51 MB, 13B ~78 MB); v2 only the latter.
    #[arg(long, default_value = "auto", value_parser = PrefillInt4::parse)]
    prefill_int4: PrefillInt4,
    /// CUDA context allowance in MiB (default: the library's CUDA_CONTEXT_BYTES, 544 MiB).
    #[arg(long)]
    context_mib: Option<u64>,
    /// List the known cards and exit.
    #[arg(long)]
    cards: bool,
    /// JSON instead of tables: one object for one configuration, an array for several.
    #[arg(long)]
    json: bool,
}

/// What a card's tokens/s estimate is computed with.
struct Speed {
    model: SpeedModel,
    /// The same report's other kernels' fits (the estimate's range).
    others: Vec<(String, SpeedModel)>,
    /// The fewest and most layers of the models `model` was fitted to; None for a flat efficiency.
    fitted_layers: Option<(usize, usize)>,
}

impl Speed {
    fn flat(efficiency: f64) -> Self {
        Speed {
            model: SpeedModel::flat(efficiency),
            others: Vec::new(),
            fitted_layers: None,
        }
    }
}

/// The speed model behind a card's tokens/s estimate (printed once with its provenance):
/// --efficiency if given (flat); else the model fitted to a committed decode report's two model
/// sizes (bytes at a stream efficiency + a fixed cost per layer); else that report's flat
/// efficiency for this model; else the pure roofline (1.0).
fn speed_for(
    a: &PlanArgs,
    m: &ModelConfig,
    card: &cards::Card,
    act_order: bool,
) -> anyhow::Result<Speed> {
    use gptq_lab::plan::measured;
    if let Some(e) = a.efficiency {
        return Ok(Speed::flat(e));
    }
    // One provenance line per distinct source, not one per configuration.
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let say = |key: String, line: String| {
        if a.json {
            return;
        }
        let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
        if !said.contains(&key) {
            said.push(key);
            println!("{line}");
        }
    };
    // Act-order int4 is fitted to act-order runs where the report has them (its kernels and its
    // permuted-x path cost what they cost); else to the plain runs, and the line says so.
    let act = act_order && a.dtype == WeightDtype::Int4;
    let fit = act_or_plain(
        act,
        "; fitted WITHOUT act-order (the report has no act-order pair), which is slower per step on the measuring card",
        |act| {
            measured::fit_from_reports(
                &root(a),
                a.dtype,
                act,
                Some(card.bandwidth_gbs),
                card.sm >= 90,
            )
        },
    )?;
    if let Some((f, caveat)) = fit {
        let [p, q] = &f.points;
        let form = if act && caveat.is_empty() {
            " act-order"
        } else {
            ""
        };
        say(
            format!("fit{form}"),
            format!(
                "ESTIMATE on {}: step time = bytes / ({:.0} GB/s spec x {:.1}%) + layers x {:.1} us, both fitted to {:?}{form} decode steps MEASURED on {} ({}, git {}, kernel hash {}, {}): {} {:.3} ms, {} {:.3} ms ({}, shortest context; two points, so the split between the terms is not checked); another card has its own stream efficiency and launch cost{caveat}",
                card.name, card.bandwidth_gbs, f.speed.stream_efficiency * 100.0, f.speed.per_layer_s * 1e6,
                a.dtype, f.device, f.date, f.git_rev, f.kernel_hash, f.int4_kernel, p.model, p.ms, q.model, q.ms,
                if p.pdl { "CUDA graph + PDL, as the engine runs on sm_90" } else { "CUDA graph, no PDL, which cards below sm_90 lack" },
            ),
        );
        if !f.others.is_empty() {
            say(
                format!("others{form}"),
                format!(
                    "The same report's other kernels fit differently ({}); two points fit any kernel exactly, so the tok/s column gives their range in brackets: how much the estimate depends on which measured kernel it scales",
                    f.others
                        .iter()
                        .map(|(k, sp)| format!("{k}: {:.1}% + {:.1} us", sp.stream_efficiency * 100.0, sp.per_layer_s * 1e6))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            );
        }
        let (lo, hi) = (p.layers.min(q.layers), p.layers.max(q.layers));
        return Ok(Speed {
            model: f.speed,
            others: f.others,
            fitted_layers: Some((lo, hi)),
        });
    }
    // One model's own run: act-order where the report has it, else its plain run (said so).
    let one = act_or_plain(
        act,
        "; measured WITHOUT act-order (the report has no act-order run of this model), which is slower per step on the measuring card",
        |act| measured::from_reports(&root(a), &m.name, a.dtype, act, Some(card.bandwidth_gbs)),
    )?;
    match one {
        Some((me, caveat)) => {
            say(
                m.name.clone(),
                format!(
                    "ESTIMATE for {} on {}: efficiency {:.1}% of spec bandwidth, as MEASURED for {} {:?} on {} ({}, git {}, kernel hash {}, {}, ctx {}: {:.1} tok/s); another card runs at its own efficiency{caveat}",
                    m.name, card.name, me.efficiency * 100.0, m.name, a.dtype, me.device, me.date, me.git_rev, me.kernel_hash, me.int4_kernel, me.ctx, me.tokens_per_s
                ),
            );
            Ok(Speed::flat(me.efficiency))
        }
        None => {
            say(
                format!("none {} {}", card.slug, m.name),
                format!(
                    "ESTIMATE on {}: no decode report under {} has a {:?} run of {} to scale from (reports/*/decode.json: run from the repo root or pass --root), so tokens/s below is the pure roofline (100% of the spec bandwidth, no per-layer cost): an upper bound, not what a card reaches",
                    card.name,
                    root(a).display(),
                    a.dtype,
                    m.name
                ),
            );
            Ok(Speed::flat(1.0))
        }
    }
}

/// `--card this`: GPU 0 as a card, from its driver (name, allocatable memory, memory clock x bus
/// width, compute capability), whether the table knows it or not.
fn this_card() -> anyhow::Result<cards::Card> {
    if let Some(why) = gptq_lab::cuda::gpu_unavailable_reason(0) {
        bail!("--card this: no usable GPU 0 here ({why}); name a card instead (lab plan --cards)");
    }
    let gpu = gptq_lab::cuda::open(0)?;
    let c = cards::Card::from_device(&gpu.info);
    // Which device this is, and what others on it hold now (the plan counts the whole card).
    let count = cudarc::driver::CudaContext::device_count().unwrap_or(1);
    let free = gpu.ctx.mem_get_info().map_or(0, |(f, _)| f as u64);
    eprintln!(
        "note: --card this is CUDA device 0 of {count} ({}; CUDA_VISIBLE_DEVICES picks another): {} MiB allocatable, {} MiB free now with this process's context",
        c.name,
        c.usable_bytes() >> 20,
        free >> 20
    );
    if let Some(m) = cards::MigSlice::of(&c.name) {
        match m.bandwidth_share() {
            Some(share) => eprintln!(
                "note: {} is a MIG instance ({}): its bandwidth is taken as {:.0} GB/s, its memory's share ({}/{} GB) of the whole GPU's {:.0} (the driver reports the whole GPU's clock and bus)",
                c.name,
                m.profile,
                c.bandwidth_gbs,
                m.slice_gb,
                m.gpu_gb.unwrap_or(0),
                c.bandwidth_gbs / share
            ),
            None => eprintln!(
                "WARNING: {} is a MIG instance ({}) and its name does not give the whole GPU's memory: the bandwidth below ({:.0} GB/s) is the whole GPU's, an upper bound for this instance",
                c.name, m.profile, c.bandwidth_gbs
            ),
        }
    }
    if c.bandwidth_gbs.is_nan() || c.bandwidth_gbs <= 0.0 {
        bail!(
            "--card this: the driver reports no memory clock or bus width for {} (memory clock {} kHz, bus {} bits), so there is no spec bandwidth to estimate from; name the card (lab plan --cards)",
            c.name,
            gpu.info.mem_clock_khz,
            gpu.info.bus_width_bits
        );
    }
    Ok(c)
}

/// Where the reports are read from: --root, else "." when it has reports/, else the source tree
/// the binary was built from.
fn root(a: &PlanArgs) -> PathBuf {
    match &a.root {
        Some(r) => r.clone(),
        None if std::path::Path::new("reports").is_dir() => PathBuf::from("."),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")),
    }
}

/// `find(act)` with no caveat; for act-order, where that finds nothing, `find(false)` with
/// `caveat` (the estimate then says it came from plain runs).
fn act_or_plain<T>(
    act: bool,
    caveat: &'static str,
    find: impl Fn(bool) -> gptq_lab::Result<Option<T>>,
) -> gptq_lab::Result<Option<(T, &'static str)>> {
    Ok(match find(act)? {
        Some(x) => Some((x, "")),
        None if act => find(false)?.map(|x| (x, caveat)),
        None => None,
    })
}

pub fn run(a: PlanArgs) -> anyhow::Result<()> {
    if a.cards {
        print_cards();
        return Ok(());
    }
    let card = match a.card.as_deref() {
        None => None,
        Some(s) if s.eq_ignore_ascii_case("this") => Some(this_card()?),
        Some(s) => Some(cards::by_slug(s)?.clone()),
    };
    let card = card.as_ref();
    if let Some(c) = card {
        let other = cards::memory_variants(c);
        if !other.is_empty() && !a.json {
            eprintln!(
                "note: --card {} is the {}; sold under the same name with other memory: {} (nvidia-smi names them alike)",
                c.slug,
                c.name,
                other
                    .iter()
                    .map(|o| format!("{} (--card {})", o.name, o.slug))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if card.is_some() && a.batch != 1 {
        bail!(
            "--batch {} with --card: the tokens/s estimate is for batch 1 (the engine decodes one \
             sequence, and no measurement says how a bigger batch's step grows); leave out --card \
             to plan the VRAM of batch {}",
            a.batch,
            a.batch
        );
    }
    if a.ctx.contains(&0) {
        bail!("--ctx 0: expected >= 1 position (the engine's KV cache holds at least one)");
    }
    let (models, groups, act_order) = models_and_groups(&a)?;
    let ctxs = if a.ctx.is_empty() {
        DEFAULT_CTXS.to_vec()
    } else {
        a.ctx.clone()
    };
    let context_bytes = match a.context_mib {
        None => CUDA_CONTEXT_BYTES,
        // A CUDA context takes a few hundred MiB; 1 TiB bounds the flag far past any card
        // without letting the shift wrap.
        Some(m) if m <= 1 << 20 => m << 20,
        Some(m) => {
            return Err(gptq_lab::LabError::invalid(
                "--context-mib",
                format!("{m} MiB (expected at most 1048576, i.e. 1 TiB)"),
            )
            .into())
        }
    };

    // A plan's refusal names the model by its config's _name_or_path; from a folder, the file
    // that gave those dimensions is what the user can open.
    let config_file = a.checkpoint.as_ref().map(|d| d.join("config.json"));
    let from_file = |e: gptq_lab::LabError| -> anyhow::Error {
        match &config_file {
            Some(f) => anyhow::Error::new(e).context(format!("planning from {}", f.display())),
            None => e.into(),
        }
    };
    let mut plans = Vec::new();
    for m in &models {
        // The speed model depends on the model alone: fitted (reports read) once per model.
        // Act-order with one group (per-channel) runs as plain order (PlanSpec's plan says so):
        // its speed is the plain steps' fit. Each form's speed is fitted (and its source said)
        // only where a row uses it.
        let runs_act = |g: i32| gptq_lab::plan::runs_act_order(act_order, g);
        let speed_of = |act: bool| -> anyhow::Result<Option<Speed>> {
            match card {
                Some(c) if groups.iter().any(|&g| runs_act(g) == act) => {
                    Ok(Some(speed_for(&a, m, c, act)?))
                }
                _ => Ok(None),
            }
        };
        let (act_speed, plain_speed) = (speed_of(true)?, speed_of(false)?);
        if act_speed.is_some() && plain_speed.is_some() && !a.json {
            println!(
                "{}: the per-channel rows are estimated from the plain steps' fit (act-order at one group runs plain), the others from the act-order fit",
                m.name
            );
        }
        for &g in &groups {
            let speed = if runs_act(g) {
                act_speed.as_ref()
            } else {
                plain_speed.as_ref()
            };
            for &ctx in &ctxs {
                let mut s = PlanSpec::new(m.clone(), a.dtype, g, ctx);
                s.act_order = act_order;
                s.batch = a.batch;
                s.prefill_chunk = a.prefill_chunk;
                s.prefill_int4 = a.prefill_int4;
                s.cuda_context_bytes = context_bytes;
                plans.push(match (card, speed) {
                    (Some(c), Some(sp)) => {
                        let mut p = s.plan_on(c, &sp.model).map_err(from_file)?;
                        if let Some(r) = p.roofline.as_mut() {
                            r.add_other_fits(&sp.others);
                            r.set_fitted_layers(sp.fitted_layers);
                        }
                        p
                    }
                    _ => s.plan().map_err(from_file)?,
                });
            }
        }
    }
    if a.json {
        let text = match plans.as_slice() {
            [one] => serde_json::to_string_pretty(one)?,
            many => serde_json::to_string_pretty(many)?,
        };
        println!("{text}");
    } else {
        print_tables(&plans, context_bytes);
    }
    Ok(())
}

/// Models, group sizes and act-order from the flags or the checkpoint folder.
fn models_and_groups(a: &PlanArgs) -> anyhow::Result<(Vec<ModelConfig>, Vec<i32>, bool)> {
    let groups_or_default = |g: &Vec<i32>| {
        if a.dtype == WeightDtype::Fp16 {
            vec![-1] // group size means nothing for fp16: one row.
        } else if g.is_empty() {
            DEFAULT_GROUPS.to_vec()
        } else {
            g.clone()
        }
    };
    let Some(dir) = &a.checkpoint else {
        let names = if a.model.is_empty() {
            DEFAULT_MODELS.iter().map(|m| m.to_string()).collect()
        } else {
            a.model.clone()
        };
        let models = names
            .iter()
            .map(|n| ModelConfig::preset(n))
            .collect::<Result<_, _>>()?;
        return Ok((models, groups_or_default(&a.group), a.act_order));
    };
    let (model, q) = gptq_lab::plan::read_checkpoint_dir(dir)
        .with_context(|| format!("reading checkpoint folder {}", dir.display()))?;
    if let Some(why) = &q.loader_refusal {
        eprintln!(
            "WARNING: the engines would refuse this folder's weights ({why}); the plan below is from its config alone"
        );
    }
    for n in &q.notes {
        eprintln!("note: {n}");
    }
    let source = q.source.as_deref().unwrap_or(dir).display();
    if a.dtype == WeightDtype::Fp16 && !q.unquantized && q.source.is_some() {
        eprintln!(
            "note: {} is an int4 GPTQ checkpoint; --dtype fp16 plans the same model unquantized, not this folder's files",
            dir.display()
        );
    }
    let act_order = match q.act_order {
        Some(false) if a.act_order && a.dtype == WeightDtype::Int4 => {
            eprintln!("note: {source} says desc_act false; ignoring --act-order");
            false
        }
        Some(said) => said,
        None => a.act_order,
    };
    let groups = match (q.group_size, a.group.as_slice()) {
        (Some(g), flags) => {
            if !flags.is_empty() && flags != [g] {
                eprintln!("note: {source} says group_size {g}; ignoring --group {flags:?}");
            }
            vec![g]
        }
        (None, []) if a.dtype == WeightDtype::Int4 && q.unquantized => bail!(
            "{}: the weights are unquantized (no qweight tensors): pass --dtype fp16 to plan them \
             as they are, or --group to plan them quantized",
            dir.display()
        ),
        (None, []) if a.dtype == WeightDtype::Int4 => bail!(
            "{}: no group size in quantize_config.json or config.json's quantization_config; pass --group",
            dir.display()
        ),
        (None, _) => groups_or_default(&a.group),
    };
    let groups = if a.dtype == WeightDtype::Fp16 {
        vec![-1]
    } else {
        groups
    };
    Ok((vec![model], groups, act_order))
}

fn print_cards() {
    let ws = cards::CARDS.iter().map(|c| c.slug.len()).max().unwrap_or(4);
    let wn = cards::CARDS.iter().map(|c| c.name.len()).max().unwrap_or(4);
    println!(
        "{:<ws$} {:<wn$} {:>10} {:>10} {:>9} {:>7}",
        "slug", "card", "memory", "usable", "GB/s", "sm"
    );
    for c in cards::CARDS {
        println!(
            "{:<ws$} {:<wn$} {:>6} MiB {:>6} MiB {:>9.1} {:>7}",
            c.slug,
            c.name,
            c.memory_bytes >> 20,
            c.usable_bytes() >> 20,
            c.bandwidth_gbs,
            format!("sm_{}", c.sm)
        );
    }
    println!(
        "memory: nominal GiB (GDDR6 data-centre cards lose 1/16 to ECC); usable: what a program can \
         allocate, memory less the driver's reserve (200 MiB + 1/128, plan::cards::driver_reserve_bytes), \
         what the plans fit against; a desktop's own use of the card comes on top"
    );
    println!(
        "bandwidth: vendor spec, 1e9 bytes/s; not reachable in practice (measure with lab bench)"
    );
}

fn group_label(p: &Plan) -> String {
    match p.group_size {
        None => "fp16".into(),
        Some(g) if g <= 0 => "per-ch".into(),
        Some(g) => format!("g{g}"),
    }
}

fn print_tables(plans: &[Plan], context_bytes: u64) {
    let Some(first) = plans.first() else { return };
    println!(
        "VRAM plan: batch {}, {}, CUDA context allowance {} MiB. Sizes in GB = 1e9 bytes; \
         card columns are the \"N GB\" sold, which is N GiB, of which a program can allocate that \
         less the driver's reserve (200 MiB + 1/128: 7.74 GiB of 8, 23.62 of 24): \"fits\" is \
         against that, with nothing left for a desktop on the same card.",
        first.batch,
        if first.dtype == WeightDtype::Int4 {
            "int4 GPTQ weights"
        } else {
            "fp16 weights"
        },
        context_bytes >> 20
    );
    // The model column fits the longest name (vicuna-13b-16k, a checkpoint's _name_or_path).
    let w = plans
        .iter()
        .map(|p| p.model.len())
        .max()
        .unwrap_or(0)
        .max(12);
    let sizes: String = GENERIC_SIZES_GIB
        .iter()
        .map(|g| format!("{:>6}", format!("{g}G")))
        .collect();
    println!(
        "\n{:<w$} {:<6} {:>6} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8}{sizes}",
        "model", "group", "ctx", "weights", "KV", "workspace", "prefill", "context", "total"
    );
    for p in plans {
        let fits: String = p
            .fits
            .iter()
            .map(|f| format!("{:>6}", if f.fits { "fits" } else { "-" }))
            .collect();
        println!(
            "{:<w$} {:<6} {:>6} {:>8.3} {:>8.3} {:>9.4} {:>8.4} {:>8.3} {:>8.3}{fits}",
            p.model,
            group_label(p),
            format!("{}{}", p.ctx, past_mark(p)),
            gb(p.weights_bytes),
            gb(p.kv_cache_bytes),
            gb(p.workspace_bytes),
            gb(p.prefill_bytes),
            gb(p.cuda_context_bytes),
            gb(p.total_bytes)
        );
    }

    // Each model marked past its own trained context (presets differ: 2048 / 4096 / 16384).
    let past_trained = distinct(
        plans
            .iter()
            .filter(|p| p.ctx > p.model_max_ctx)
            .map(|p| format!("{} {}", p.model, p.model_max_ctx)),
    );
    if !past_trained.is_empty() {
        println!(
            "* past the model's trained context (positions: {}): the memory is planned, but a LLaMA model's output past it is not meaningful, and lab decode / lab eval refuse it",
            past_trained.join(", ")
        );
    }

    println!("\nLongest context each card's memory allows (positions; '-' = the weights alone do not fit):");
    let size_heads: String = GENERIC_SIZES_GIB
        .iter()
        .map(|g| format!(" {:>6}", format!("{g}G")))
        .collect();
    println!(
        "{:<w$} {:<6} {:>8}{size_heads}",
        "model", "group", "trained"
    );
    // One row per (model, group): max ctx does not depend on the row's ctx.
    let keys = distinct(plans.iter().map(|p| (&p.model, p.group_size)));
    for p in keys
        .iter()
        .filter_map(|k| plans.iter().find(|p| (&p.model, p.group_size) == *k))
    {
        let cols: String = p
            .fits
            .iter()
            .map(|f| format!(" {:>6}", longest_label(f.max_ctx)))
            .collect();
        println!(
            "{:<w$} {:<6} {:>8}{cols}",
            p.model,
            group_label(p),
            short_ctx(p.model_max_ctx)
        );
    }

    if let (Some(c), Some(r)) = (&first.card, &first.roofline) {
        println!(
            "\nOn {} ({} MiB, {} usable, {:.0} GB/s spec): tokens/s = 1 / step time, step time = bytes per step / (spec x stream efficiency) + layers x fixed cost (ESTIMATE, not a measurement; eff % = bytes per step / (step time x spec)):",
            c.card,
            c.memory_bytes >> 20,
            c.usable_bytes >> 20,
            r.bandwidth_gbs,
        );
        println!(
            "{:<w$} {:<6} {:>6} {:>6} {:>8} {:>8} {:>11} {:>6} {:>13}",
            "model",
            "group",
            "ctx",
            "fits",
            "free GB",
            "max ctx",
            "GB/step",
            "eff %",
            "tok/s (est.)"
        );
        for p in plans {
            let (Some(c), Some(r)) = (&p.card, &p.roofline) else {
                continue;
            };
            println!(
                "{:<w$} {:<6} {:>6} {:>6} {:>8.2} {:>8} {:>11.3} {:>6.1} {:>19}",
                p.model,
                group_label(p),
                format!("{}{}", p.ctx, past_mark(p)),
                if c.fits { "yes" } else { "no" },
                c.free_bytes as f64 / 1e9,
                c.max_ctx.map_or("-".into(), |x| x.to_string()),
                gb(r.bytes_per_step),
                r.efficiency * 100.0,
                // A configuration the card cannot hold has no speed.
                match (c.fits, r.range()) {
                    (false, _) => "-".into(),
                    (true, (lo, hi)) if hi > lo => {
                        format!(
                            "{:.1} ({:.0}-{:.0}){}",
                            r.tokens_per_s,
                            lo,
                            hi,
                            extrapolated_mark(r)
                        )
                    }
                    (true, _) => format!("{:.1}{}", r.tokens_per_s, extrapolated_mark(r)),
                }
            );
        }
        println!("bytes/step = weights read once (linears, norms, lm_head, one embedding row per sequence) + KV cache at ctx, i.e. the step at the LAST position of a ctx-long sequence (a whole generation averages about the step at ctx / 2)");
        println!("free GB = usable memory less the plan's total; a desktop, browser or second program on the same card takes from it. max ctx: what memory allows, not what the model was trained for");
        if let Some(note) = extrapolated_note(plans) {
            println!("{note}");
        }
    }
    // One line per distinct note (act-order rows beside per-channel ones, which run plain).
    let notes = distinct(plans.iter().map(|p| p.g_idx_note.as_str()));
    println!("\n{}", notes.join("\n"));
    println!(
        "workspace = activations + fp32 attention scores + logits/probs + split-K partials (plan::bytes::workspace_bytes), \
         + {} MiB for the cuBLAS handle and its workspace where the engine makes one (fp16 weights, or an int4 prefill that dequantizes; an allowance measured on the H100)",
        CUBLAS_BYTES >> 20
    );
    // Act-order rows and per-channel rows (which run plain) have different prefill cuts.
    match plans.iter().find(|p| p.act_order != first.act_order) {
        Some(other) => {
            for p in [first, other] {
                let rows = if p.act_order {
                    "act-order rows"
                } else {
                    "per-channel rows (plain)"
                };
                println!("{rows}: {}", prefill_note(p));
            }
        }
        None => println!("{}", prefill_note(first)),
    }
    print_answer(plans, w);
}

/// The items in their first order, each once.
fn distinct<T: PartialEq>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for x in items {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// "*" after a context past the row's model's trained one.
fn past_mark(p: &Plan) -> &'static str {
    if p.ctx > p.model_max_ctx {
        "*"
    } else {
        ""
    }
}

/// "^" after an estimate whose model is deeper or shallower than every model it was fitted to.
fn extrapolated_mark(r: &gptq_lab::plan::Roofline) -> &'static str {
    if r.extrapolated {
        "^"
    } else {
        ""
    }
}

/// What "^" means, naming each extrapolated model's depth against the fitted ones.
fn extrapolated_note(plans: &[Plan]) -> Option<String> {
    let marked: Vec<(&Plan, &gptq_lab::plan::Roofline)> = plans
        .iter()
        .filter_map(|p| Some((p, p.roofline.as_ref().filter(|r| r.extrapolated)?)))
        .collect();
    let (lo, hi) = marked.last()?.1.fitted_layers?;
    let models = distinct(
        marked
            .iter()
            .map(|(p, r)| format!("{} ({} layers)", p.model, r.layers)),
    );
    Some(format!(
        "^ EXTRAPOLATED: {} outside the {lo}-{hi} layers of the measured models the estimate is fitted to; both terms are carried past their evidence, so treat these as the form's guess, not a scaled measurement",
        models.join(", ")
    ))
}

/// The question `--card` is asked for, last where it is read first: which of the planned models
/// fit the card, in which group sizes, and how fast each would decode (the estimate above). Each
/// model at the largest planned context within its trained one (else its smallest planned one),
/// since a context the model was not trained for is no reason to pick it.
fn print_answer(plans: &[Plan], w: usize) {
    let Some(card) = plans.first().and_then(|p| p.card.as_ref()) else {
        return;
    };
    let first = &plans[0];
    let act = plans.iter().filter(|p| p.act_order).count();
    let form = match (first.dtype, act) {
        (WeightDtype::Fp16, _) => "fp16",
        (_, 0) => "int4",
        (_, n) if n == plans.len() => "int4 act-order",
        _ => "int4 act-order; per-channel rows run plain",
    };
    println!(
        "\nWhich fits on {} ({form}, batch 1; tok/s ESTIMATED as above, the step at the context's last position), at the largest planned context within each model's trained one:",
        card.card
    );
    let models = distinct(plans.iter().map(|p| p.model.as_str()));
    // The fitting row of the most weights: the largest model the card holds.
    let mut largest: Option<&Plan> = None;
    for m in &models {
        let rows: Vec<&Plan> = plans.iter().filter(|p| p.model == *m).collect();
        let trained = rows[0].model_max_ctx;
        let ctx = rows
            .iter()
            .map(|p| p.ctx)
            .filter(|&c| c <= trained)
            .max()
            .or_else(|| rows.iter().map(|p| p.ctx).min())
            .unwrap_or(0);
        let at: Vec<&Plan> = rows.into_iter().filter(|p| p.ctx == ctx).collect();
        let fits = |p: &Plan| p.card.as_ref().is_some_and(|c| c.fits);
        let yes: Vec<String> = at
            .iter()
            .filter(|p| fits(p))
            .enumerate()
            .map(|(i, p)| match p.roofline.as_ref() {
                Some(r) => {
                    let unit = if i == 0 { " tok/s" } else { "" };
                    let tps = r.tokens_per_s;
                    format!(
                        "{} ({tps:.1}{unit}{})",
                        group_label(p),
                        extrapolated_mark(r)
                    )
                }
                None => format!("{} (no estimate)", group_label(p)),
            })
            .collect();
        let no: Vec<String> = at
            .iter()
            .filter(|p| !fits(p))
            .map(|p| group_label(p))
            .collect();
        let line = match (yes.is_empty(), no.is_empty()) {
            (true, _) => {
                let need = at.iter().map(|p| p.total_bytes).min().unwrap_or(0);
                // Where the weights fit but not this context: the longest context that does.
                let longest = at
                    .iter()
                    .filter_map(|p| Some((p.card.as_ref()?.max_ctx?, group_label(p))))
                    .max();
                let shorter = match longest {
                    Some((c, g)) => format!("; at most {c} positions as {g}"),
                    None => String::new(),
                };
                format!(
                    "does not fit: needs at least {:.2} GB, the card has {:.2} usable{shorter}",
                    gb(need),
                    gb(card.usable_bytes)
                )
            }
            (false, true) => format!("fits as {}", yes.join(", ")),
            (false, false) => format!("fits as {}; not as {}", yes.join(", "), no.join(", ")),
        };
        println!("  {m:<w$} ctx {ctx}{}: {line}", past_mark(at[0]));
        for p in at.into_iter().filter(|p| fits(p)) {
            if largest.is_none_or(|l| p.weights_bytes > l.weights_bytes) {
                largest = Some(p);
            }
        }
    }
    if models.len() > 1 {
        match largest {
            // The row of the most weights is the model's smallest fitting group: the most
            // accurate form of the largest model, and every larger group fits too.
            Some(p) => println!(
                "Largest model that fits: {}; its most accurate form that fits, of the groups planned, is {} (ctx {}{}, {:.2} GB left for a desktop or other programs)",
                p.model,
                group_label(p),
                p.ctx,
                past_mark(p),
                p.card.as_ref().map_or(0, |c| c.free_bytes) as f64 / 1e9
            ),
            None => println!("None of these fits on {}.", card.card),
        }
    }
}

/// The parts of the prefill workspace under the plan's `--prefill-int4`.
fn prefill_parts(p: &Plan) -> String {
    let gemm = "GEMM split-K partials + the gemm_v2 repack of the largest linear";
    let dequant = "the widest fp16 column slice of W (dequantized for cuBLAS, at most 64 MB)";
    let cut = if p.act_order {
        DEQUANT_MIN_ROWS_ACT_ORDER
    } else {
        DEQUANT_MIN_ROWS
    } as u64;
    match (p.dtype, p.prefill_int4) {
        (WeightDtype::Fp16, _) => {
            "the chunk's activations only (fp16 linears go through cuBLAS: no GEMM scratch)".into()
        }
        (_, PrefillInt4::Dequant) => format!("the chunk's activations + {dequant} (--prefill-int4 dequant)"),
        (_, PrefillInt4::RowGemv) => {
            "the chunk's activations only (--prefill-int4 rows: the decode GEMV once per row, no GEMM scratch)".into()
        }
        (_, PrefillInt4::GemmV1) => {
            "the chunk's activations + GEMM split-K partials (--prefill-int4 v1: gemm_v1_simt, no repack)".into()
        }
        (_, PrefillInt4::Auto) if p.prefill_chunk >= cut => format!(
            "the chunk's activations + one scratch for the larger of {gemm} (chunks under {cut} rows) \
             and {dequant} (chunks from {cut} rows); on a card without room for the latter and the cuBLAS \
             handle the engine keeps the GEMM's plan, which the card columns count"
        ),
        _ => format!("the chunk's activations + {gemm}"),
    }
}

/// What the prefill column holds, with the chunk it was sized for.
fn prefill_note(p: &Plan) -> String {
    if p.prefill_chunk == 0 {
        return "prefill = 0: no prefill workspace (--prefill-chunk 0: the engine runs prompts token by token)".into();
    }
    format!(
        "prefill = the engine's prefill workspace for chunks of up to {} rows (--prefill-chunk, clamped to ctx): \
         {} (gpu_engine::PrefillPlan, sized as on an sm_{}+ card; \
         allocated once when the engine is built, so it counts even for decode-only runs)",
        p.prefill_chunk,
        prefill_parts(p),
        PREFILL_PLAN_SM
    )
}

/// A context in at most 6 characters (12345 -> "12.3k"), so the card columns never run together.
fn short_ctx(c: u64) -> String {
    let f = c as f64;
    match c {
        0..=9_999 => c.to_string(),
        10_000..=99_999 => format!("{:.1}k", f / 1e3),
        100_000..=999_999 => format!("{}k", c / 1000),
        1_000_000..=9_999_999 => format!("{:.1}M", f / 1e6),
        10_000_000..=999_999_999 => format!("{}M", c / 1_000_000),
        _ => format!("{f:.1e}"),
    }
}

/// A card's longest context: the search stops at MAX_CTX_SEARCH, so reaching it means "at least".
fn longest_label(c: Option<u64>) -> String {
    match c {
        None => "-".into(),
        Some(c) if c >= fit::MAX_CTX_SEARCH => format!(">{}", short_ctx(c)),
        Some(c) => short_ctx(c),
    }
}
