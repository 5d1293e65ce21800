//! `lab run`: the main job.
//! With a GPU: ceilings -> check -> quick tune -> Vicuna 7B and 13B int4 and fp16 decode -> reports,
//! all under `--root` (reports/<gpu-slug>/, tuning/<gpu-slug>.json).
//! Without one: says why, prints the VRAM plan table, and runs the tiny model on the CPU engine,
//! so the whole checkpoint -> tokens path still runs.

use crate::run_words;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Folder that holds reports/ and tuning/ (default: the current folder).
    #[arg(long, default_value = ".")]
    pub root: PathBuf,
    /// Skip the correctness matrix (it already ran in this session).
    #[arg(long)]
    pub skip_check: bool,
    /// Skip the quick tune (use an existing tuned config or the heuristic).
    #[arg(long)]
    pub skip_tune: bool,
    /// GPU ordinal.
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
}

fn section(title: &str) {
    println!("\n=== {title} ===");
}

pub fn run(a: RunArgs) -> anyhow::Result<()> {
    let b = gptq_lab::build_info::build_info();
    println!(
        "gptq-lab {} (git {}, kernel hash {}, kernels {})",
        b.version,
        b.git_rev,
        b.kernel_hash,
        if b.kernels_built {
            "built"
        } else {
            "NOT built"
        }
    );
    let root = a.root.to_string_lossy().into_owned();
    let gpu = a.gpu.to_string();
    if let Some(reason) = gptq_lab::cuda::gpu_unavailable_reason(a.gpu) {
        // REQUIRE_GPU=1 (scripts/device-check): the CPU fallback below would pass for a GPU run.
        if std::env::var("REQUIRE_GPU").is_ok_and(|v| v == "1") {
            anyhow::bail!("lab run: no usable GPU {}: {reason} (REQUIRE_GPU=1)", a.gpu);
        }
        println!("\nNo GPU here ({reason}): running what needs none.");
        println!(
            "Kernel correctness and speed are proven only by a run on a real GPU (see README)."
        );
        section("VRAM plan: Vicuna 7B / 13B / 33B, int4 GPTQ");
        run_words(&["plan"])?;
        section("tiny LLaMA on the CPU reference engine (greedy, 16 tokens)");
        run_words(&[
            "decode",
            "--backend",
            "cpu",
            "--model",
            "tiny",
            "--prompt-ids",
            "1,5,9,42",
            "--max-new-tokens",
            "16",
            "--greedy",
            "--json",
        ])?;
        println!("(random tiny weights: the tokens prove the path, not the quality)");
        return Ok(());
    }
    if !b.kernels_built {
        anyhow::bail!(gptq_lab::LabError::KernelsNotBuilt);
    }
    section("bandwidth ceilings");
    run_words(&["bench", "--family", "probe", "--root", &root, "--gpu", &gpu])?;
    if !a.skip_check {
        section("correctness: every variant against the f64 reference");
        run_words(&["check"])?;
    }
    // A failed tune (a decode-pass step that ended with a state flag, say) does not stop the runs
    // below: they use whatever it saved, and lab run fails at the end.
    let tune = if a.skip_tune {
        Ok(())
    } else {
        section("quick autotune");
        run_words(&["tune", "--gpu", &gpu, "--quick", "--root", &root])
    };
    if let Err(e) = &tune {
        println!("quick tune FAILED ({e}): the runs below go on; lab run fails at the end");
    }
    section("GPU engine against the CPU engine on the tiny checkpoints");
    // A failed check does not stop the timings below (they are recorded and labelled either
    // way; every step is its own process, so a kernel fault in the check cannot reach them); lab
    // run fails at the end. The persistent decode layers are timed only when the check (which
    // runs them too) passed: a fault there would take the whole decode bench with it.
    let tiny = run_words(&[
        "decode",
        "--backend",
        "gpu",
        "--model",
        "tiny-check",
        "--root",
        &root,
    ]);
    if let Err(e) = &tiny {
        println!("tiny check FAILED ({e}): the decode runs go on without the persistent layers' column; lab run fails at the end");
    }
    section("Vicuna 7B / 13B decode, int4 and fp16");
    let mut decode = vec![
        "decode",
        "--backend",
        "gpu",
        "--model",
        "vicuna-7b,vicuna-13b",
        "--weights",
        "int4,int4-act,fp16",
        "--int4-kernel",
        "gemv_v6_pipe,auto",
        "--ctx-list",
        "128,512,1024,2048",
        "--ablation",
        "--replace-report",
        "--root",
        &root,
    ];
    if tiny.is_ok() {
        decode.push("--persistent-layers");
    }
    run_words(&decode)?;
    section("report index (markdown and plots from the recorded JSON)");
    run_words(&["report", "--root", &root])?;
    println!(
        "\nreports written under {}",
        a.root.join("reports").display()
    );
    tune.and(tiny)
}
