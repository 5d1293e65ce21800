//! `lab check`: every kernel variant against the CPU f64 reference (needs a GPU), the must-refuse
//! shapes, `--list` (no GPU) and `--static` (ptxas resources and SASS rules, no GPU).

use anyhow::{bail, Context};
use gptq_lab::check::{self, CheckOptions};
use gptq_lab::kernels::launch::tunable_combinations;
use gptq_lab::kernels::registry::{self, Family};
use gptq_lab::kernels::static_check as sc;

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Only this family (gemv, gemm).
    #[arg(long, value_parser = parse_family)]
    family: Option<Family>,
    /// Only this variant (see --list).
    #[arg(long)]
    variant: Option<String>,
    /// A small matrix that runs in seconds (e.g. under compute-sanitizer).
    #[arg(long)]
    quick: bool,
    /// Machine-readable output: the whole report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// List the variants and the case matrix; needs no GPU.
    #[arg(long)]
    list: bool,
    /// Static checks of the compiled kernels (ptxas registers/spills, SASS); needs no GPU.
    #[arg(long = "static")]
    static_checks: bool,
    /// Base seed of the case inputs (each case mixes in its coordinates).
    #[arg(long, value_parser = parse_u64)]
    seed: Option<u64>,
    /// Host worker threads for quantization and references (0 = auto).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn parse_family(s: &str) -> Result<Family, String> {
    match s {
        "gemv" => Ok(Family::Gemv),
        "gemm" => Ok(Family::Gemm),
        other => Err(format!("unknown family '{other}': expected gemv or gemm")),
    }
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("'{s}' is not a u64 (decimal or 0x hex): {e}"))
}

pub fn run(a: CheckArgs) -> anyhow::Result<()> {
    let mut opts = CheckOptions {
        family: a.family,
        variant: a.variant.clone(),
        quick: a.quick,
        threads: a.threads,
        progress: !a.json,
        ..CheckOptions::default()
    };
    if let Some(s) = a.seed {
        opts.seed = s;
    }
    if a.list {
        return list(&opts, a.json);
    }
    if a.static_checks {
        return static_report(&opts, a.json);
    }
    let gpu = match gptq_lab::cuda::open(0) {
        Ok(g) => g,
        Err(e) => bail!("{e}: `lab check` runs kernels and needs a GPU (`lab check --list` and `lab check --static` do not)"),
    };
    if !gptq_lab::build_info::KERNELS_BUILT {
        bail!(gptq_lab::LabError::KernelsNotBuilt);
    }
    let report = check::run_check(Some(&gpu), &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", check::render(&report));
    }
    if report.failures > 0 {
        bail!("{} check failures (details above)", report.failures);
    }
    Ok(())
}

fn list(opts: &CheckOptions, json: bool) -> anyhow::Result<()> {
    let variants = check::selected_variants(opts)?;
    let mut families: Vec<Family> = variants.iter().map(|v| v.family).collect();
    families.dedup();
    let cases: Vec<check::cases::Case> = families
        .iter()
        .flat_map(|&f| check::cases::matrix(f, opts.quick, opts.seed))
        .collect();
    if json {
        let vs: Vec<serde_json::Value> = variants
            .iter()
            .map(|v| {
                serde_json::json!({
                    "variant": v,
                    "tunable_combinations": tunable_combinations(v),
                    "error_model": check::tolerance::error_model(v),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "variants": vs, "cases": cases }))?
        );
    } else {
        for v in &variants {
            println!(
                "{:<22} v{} {:?} {} instantiations: {}",
                v.name,
                v.version,
                v.family,
                tunable_combinations(v).len(),
                v.description
            );
        }
        println!(
            "{} cases{}",
            cases.len(),
            if opts.quick { " (quick)" } else { "" }
        );
        for c in &cases {
            println!("  #{:<3} {}", c.id, c.describe());
        }
    }
    Ok(())
}

fn static_report(opts: &CheckOptions, json: bool) -> anyhow::Result<()> {
    if !gptq_lab::build_info::KERNELS_BUILT {
        bail!(gptq_lab::LabError::KernelsNotBuilt);
    }
    let variants = check::selected_variants(opts)?;
    let archs: Vec<u32> = gptq_lab::build_info::build_info().archs;
    let mut families: Vec<Family> = variants.iter().map(|v| v.family).collect();
    families.dedup();
    let mut res = Vec::new();
    let mut sass = Vec::new();
    let mut sass_note = None;
    for &f in &families {
        let fam = sc::family_dir(f);
        res.extend(sc::family_resources(fam).with_context(|| {
            format!(
                "the ptxas report is written by build.rs on the build machine ({})",
                gptq_lab::build_info::FATBIN_DIR
            )
        })?);
        match sc::fatbin_sass(&sc::fatbin_path(fam)) {
            Ok(s) => sass.extend(s),
            Err(e) => sass_note = Some(format!("SASS checks skipped: {e}")),
        }
    }
    let mut bad = sc::resource_violations(&variants, &res, &archs);
    if sass_note.is_none() {
        bad.extend(sc::sass_violations(&variants, &sass, &archs));
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "archs": archs, "resources": res, "sass": sass, "violations": bad, "note": sass_note
            }))?
        );
    } else {
        let table = sc::by_symbol(&res);
        print!("{:<28}", "symbol (regs/stack/spill)");
        for a in &archs {
            print!(" {:>12}", format!("sm_{a}"));
        }
        println!();
        for v in &variants {
            for sym in v.symbols {
                print!("{sym:<28}");
                for a in &archs {
                    let cell =
                        table
                            .get(*sym)
                            .and_then(|m| m.get(a))
                            .map_or("-".to_string(), |r| {
                                format!(
                                    "{}/{}/{}",
                                    r.registers,
                                    r.stack_bytes,
                                    r.spill_stores + r.spill_loads
                                )
                            });
                    print!(" {cell:>12}");
                }
                let loads: Vec<String> = sass
                    .iter()
                    .filter(|s| s.symbol == *sym && s.arch == 90)
                    .flat_map(|s| s.global_loads.iter().cloned())
                    .collect();
                if !loads.is_empty() {
                    print!("  sm_90 loads: {}", loads.join(" "));
                }
                println!();
            }
        }
        if let Some(n) = &sass_note {
            println!("{n}");
        }
        for b in &bad {
            println!("VIOLATION {b}");
        }
        println!("{} violations", bad.len());
    }
    let _ = registry::all;
    if !bad.is_empty() {
        bail!("{} static check violations", bad.len());
    }
    Ok(())
}
