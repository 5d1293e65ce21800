//! `lab bench --family probe|gemv|gemm [--quick] [--root DIR] [--back-to-back N]`: times a kernel family on GPU 0 and
//! writes reports/<gpu-slug>/<family>.{json,md} (+ plots) under DIR (default: the current folder).

use anyhow::Context;
use gptq_lab::bench::measure_ceilings;
use gptq_lab::report::{ceilings_markdown, report_dir, write_report, ReportHeader};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Kernel family: probe (bandwidth ceilings), gemv (batch 1), gemm (batch 2..64).
    #[arg(long, default_value = "gemv")]
    pub family: String,
    /// Fewer shapes and iterations: the device check's budget.
    #[arg(long)]
    pub quick: bool,
    /// Folder that holds reports/ (default: current folder).
    #[arg(long, default_value = ".")]
    pub root: PathBuf,
    /// GPU ordinal.
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
    /// gemv/gemm sweeps: also time N back-to-back launches between one pair of events (the
    /// "us back-to-back" and "fixed us/launch" columns); 0 = skip.
    #[arg(long, default_value_t = 20)]
    pub back_to_back: usize,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let families = ["probe", "gemv", "gemm"];
    if !families.contains(&args.family.as_str()) {
        anyhow::bail!("--family {}: expected one of {:?}", args.family, families);
    }
    let gpu = match gptq_lab::cuda::open(args.gpu) {
        Ok(g) => g,
        // REQUIRE_GPU=1 (scripts/device-check, CI on a GPU machine): a missing GPU is a failure,
        // not a quiet success that would read as PASS.
        Err(e) if std::env::var("REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            anyhow::bail!("lab bench: {e} (REQUIRE_GPU=1)")
        }
        Err(e) => {
            println!("lab bench: {e}. Nothing to time on this machine; reports are written only from a real GPU run.");
            return Ok(());
        }
    };
    if !gptq_lab::build_info::KERNELS_BUILT {
        anyhow::bail!(gptq_lab::LabError::KernelsNotBuilt);
    }
    let dir = report_dir(&args.root, &gpu.info.slug);
    let ceilings = measure_ceilings(&gpu).context("measuring bandwidth ceilings")?;
    let header = ReportHeader::new(&gpu.info, Some(ceilings));
    match args.family.as_str() {
        "probe" => {
            write_report(&dir, "ceilings", &header, &ceilings_markdown(&header))?;
            println!("{}", header.markdown());
        }
        fam => gptq_lab::bench::sweep::run_family_with(
            &gpu,
            &header,
            fam,
            args.quick,
            &dir,
            &gptq_lab::bench::sweep::SweepOptions {
                back_to_back: args.back_to_back,
            },
        )?,
    }
    println!("wrote {}", dir.display());
    Ok(())
}
