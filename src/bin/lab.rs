//! `lab`: the command-line front end. Each subcommand lives in `gptq_lab::cli`-style functions;
//! this file only parses flags and maps errors to a non-zero exit.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "lab", version, about = "4-bit GPTQ kernel lab: check, bench, tune, decode, plan")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print what this binary was built from.
    Version {
        #[arg(long)]
        json: bool,
    },
    /// List CUDA devices (or say why there are none).
    Devices,
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Version { json } => version(json),
        Cmd::Devices => devices(),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn version(json: bool) -> anyhow::Result<()> {
    let b = gptq_lab::build_info::build_info();
    if json {
        println!("{}", serde_json::to_string(&b)?);
    } else {
        println!(
            "lab {} (git {}, kernels {} {}, archs {:?})",
            b.version,
            b.git_rev,
            b.kernel_hash,
            if b.kernels_built { "built" } else { "NOT built" },
            b.archs
        );
    }
    Ok(())
}

fn devices() -> anyhow::Result<()> {
    match gptq_lab::cuda::open(0) {
        Ok(gpu) => println!("{}", serde_json::to_string_pretty(&gpu.info)?),
        Err(e) => println!("{e}"),
    }
    Ok(())
}
