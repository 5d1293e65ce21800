//! `lab run`: the main job.
//! With a GPU: ceilings -> check -> quick tune -> tiny check (GPU vs CPU engine) -> Vicuna 7B and
//! 13B int4 and fp16 decode -> reports,
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
    let no_gpu = gptq_lab::cuda::gpu_unavailable_reason(a.gpu);
    // REQUIRE_GPU=1 (scripts/device-check): the CPU fallback would pass for a GPU run.
    let require_gpu = std::env::var("REQUIRE_GPU").is_ok_and(|v| v == "1");
    steps(
        &a,
        no_gpu.as_deref(),
        require_gpu,
        b.kernels_built,
        &mut |w| run_words(w),
    )
}

/// The steps of `lab run`, each a `lab` command line handed to `step` (a child process in a
/// run; a recorder in the tests), and which failures stop the run at once and which fail it
/// at the end. `no_gpu`: why GPU `a.gpu` cannot be used, if it cannot.
fn steps(
    a: &RunArgs,
    no_gpu: Option<&str>,
    require_gpu: bool,
    kernels_built: bool,
    step: &mut dyn FnMut(&[&str]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let root = a.root.to_string_lossy().into_owned();
    let gpu = a.gpu.to_string();
    if let Some(reason) = no_gpu {
        if require_gpu {
            anyhow::bail!("lab run: no usable GPU {}: {reason} (REQUIRE_GPU=1)", a.gpu);
        }
        println!("\nNo GPU here ({reason}): running what needs none.");
        println!(
            "Kernel correctness and speed are proven only by a run on a real GPU (see README)."
        );
        section("VRAM plan: Vicuna 7B / 13B / 33B, int4 GPTQ");
        step(&["plan"])?;
        section("tiny LLaMA on the CPU reference engine (greedy, 16 tokens)");
        step(&[
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
    if !kernels_built {
        anyhow::bail!(gptq_lab::LabError::KernelsNotBuilt);
    }
    section("bandwidth ceilings");
    step(&["bench", "--family", "probe", "--root", &root, "--gpu", &gpu])?;
    if !a.skip_check {
        section("correctness: every variant against the f64 reference");
        step(&["check"])?;
    }
    // A failed tune (a decode-pass step that ended with a state flag, say) does not stop the runs
    // below: they use whatever it saved, and lab run fails at the end.
    let tune = if a.skip_tune {
        Ok(())
    } else {
        section("quick autotune");
        step(&["tune", "--gpu", &gpu, "--quick", "--root", &root])
    };
    if let Err(e) = &tune {
        println!("quick tune FAILED ({e}): the runs below go on; lab run fails at the end");
    }
    section("GPU engine against the CPU engine on the tiny checkpoints");
    // A failed check does not stop the timings below (they are recorded and labelled either
    // way; every step is its own process, so a kernel fault in the check cannot reach them); lab
    // run fails at the end. The persistent decode layers are timed only when the check (which
    // runs them too) passed: a fault there would take the whole decode bench with it.
    let tiny = step(&[
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
    step(&decode)?;
    section("report index (markdown and plots from the recorded JSON)");
    step(&["report", "--root", &root])?;
    println!(
        "\nreports written under {}",
        a.root.join("reports").display()
    );
    tune.and(tiny)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(skip_check: bool, skip_tune: bool) -> RunArgs {
        RunArgs {
            root: PathBuf::from("out"),
            skip_check,
            skip_tune,
            gpu: 0,
        }
    }

    /// The steps `lab run` takes, each checked to parse as `lab` would (a typo in a GPU-only
    /// step's flags would otherwise surface only on a GPU), with the steps whose first words
    /// start with one of `fail` failing; and the run's result.
    fn record(
        a: &RunArgs,
        no_gpu: Option<&str>,
        require_gpu: bool,
        kernels_built: bool,
        fail: &[&str],
    ) -> (Vec<String>, anyhow::Result<()>) {
        let mut seen = Vec::new();
        let r = steps(a, no_gpu, require_gpu, kernels_built, &mut |w| {
            let line = w.join(" ");
            crate::parse(std::iter::once("lab").chain(w.iter().copied()))
                .unwrap_or_else(|e| panic!("lab run's step 'lab {line}' does not parse: {e}"));
            seen.push(line.clone());
            if fail.iter().any(|f| line.starts_with(f)) {
                anyhow::bail!("lab {line} failed (exit status: 1)");
            }
            Ok(())
        });
        (seen, r)
    }

    fn firsts(seen: &[String]) -> Vec<String> {
        seen.iter()
            .map(|l| l.split(' ').take(5).collect::<Vec<_>>().join(" "))
            .collect()
    }

    const GPU_STEPS: [&str; 6] = [
        "bench --family probe --root out",
        "check",
        "tune --gpu 0 --quick --root",
        "decode --backend gpu --model tiny-check",
        "decode --backend gpu --model vicuna-7b,vicuna-13b",
        "report --root out",
    ];

    #[test]
    fn with_a_gpu_every_step_runs_in_order_and_parses() {
        let (seen, r) = record(&args(false, false), None, true, true, &[]);
        r.unwrap();
        assert_eq!(firsts(&seen), GPU_STEPS);
        // The persistent layers' column only after a passing tiny check.
        assert!(seen[4].ends_with("--persistent-layers"), "{}", seen[4]);
        assert!(seen[4].contains("--int4-kernel gemv_v6_pipe,auto"));
        assert!(seen[4].contains("--replace-report"));
        let (seen, r) = record(&args(true, true), None, false, true, &[]);
        r.unwrap();
        assert_eq!(
            firsts(&seen),
            [GPU_STEPS[0], GPU_STEPS[3], GPU_STEPS[4], GPU_STEPS[5]]
        );
    }

    #[test]
    fn a_failed_tune_or_tiny_check_lets_the_runs_finish_and_fails_lab_run_at_the_end() {
        let (seen, r) = record(&args(false, false), None, true, true, &["tune"]);
        assert_eq!(
            firsts(&seen),
            GPU_STEPS,
            "every step after the tune still ran"
        );
        assert!(r.unwrap_err().to_string().contains("lab tune"));
        let (seen, r) = record(
            &args(false, false),
            None,
            true,
            true,
            &["decode --backend gpu --model tiny-check"],
        );
        assert_eq!(firsts(&seen), GPU_STEPS);
        assert!(!seen[4].contains("--persistent-layers"), "{}", seen[4]);
        assert!(r.unwrap_err().to_string().contains("tiny-check"));
        // Both failed: the run still fails (with the tune's error, the first).
        let (_, r) = record(
            &args(false, false),
            None,
            true,
            true,
            &["tune", "decode --backend gpu --model tiny-check"],
        );
        assert!(r.unwrap_err().to_string().contains("lab tune"));
    }

    #[test]
    fn a_failed_ceiling_check_or_decode_bench_stops_lab_run_there() {
        for (fail, ran) in [
            ("bench", 1),
            ("check", 2),
            ("decode --backend gpu --model vicuna", 5),
            ("report", 6),
        ] {
            let (seen, r) = record(&args(false, false), None, true, true, &[fail]);
            assert_eq!(firsts(&seen), GPU_STEPS[..ran], "failing {fail}");
            assert!(r.is_err(), "failing {fail}");
        }
    }

    #[test]
    fn without_a_gpu_the_plan_and_the_cpu_tiny_model_run_unless_a_gpu_is_required() {
        let (seen, r) = record(
            &args(false, false),
            Some("no CUDA driver"),
            false,
            true,
            &[],
        );
        r.unwrap();
        assert_eq!(firsts(&seen), ["plan", "decode --backend cpu --model tiny"]);
        // REQUIRE_GPU=1: nothing runs, the run fails naming why.
        let (seen, r) = record(&args(false, false), Some("no CUDA driver"), true, true, &[]);
        assert!(seen.is_empty());
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("no CUDA driver") && e.contains("REQUIRE_GPU=1"),
            "{e}"
        );
        // The CPU path's failure is lab run's.
        let (_, r) = record(
            &args(false, false),
            Some("no CUDA driver"),
            false,
            true,
            &["decode"],
        );
        assert!(r.is_err());
        // A GPU but a build without kernels: nothing runs.
        let (seen, r) = record(&args(false, false), None, false, false, &[]);
        assert!(seen.is_empty());
        assert!(r.is_err());
    }
}
