//! `lab eval --backend cpu|gpu`. Without a GPU, `--backend gpu` must fail cleanly (naming the
//! reason and the CPU alternative) before it loads any weights; with one, both backends must give
//! the same perplexity within `PPL_NLL_TOL` (the same bound scripts/eval-gpu-vs-cpu uses).

use std::path::Path;
use std::process::Output;

mod common;
use common::lab;

/// |mean NLL gpu - mean NLL cpu| in nats: perplexities within ~2%. The GPU engine keeps fp16
/// activations where the CPU engine keeps f32 (and f64 dequantization); its logits stay within
/// 2e-2 x rms(logits) of the CPU's (gpu_check::LOGIT_ATOL_RMS), so each position's NLL moves by
/// a few hundredths of a nat at most, and the mean over 100+ positions by far less.
const PPL_NLL_TOL: f64 = 0.02;

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

fn mean_nll(o: &Output, what: &str) -> f64 {
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{what} failed: {stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("--json prints JSON");
    v["mean_nll"].as_f64().expect("mean_nll")
}

#[test]
fn eval_backends_agree_or_gpu_is_refused_cleanly() {
    let ck = fixture("tiny-asym-act-g32");
    let common = [
        "eval",
        "--checkpoint",
        &ck,
        "--seqlen",
        "64",
        "--max-windows",
        "2",
        "--json",
    ];
    let cpu = mean_nll(&lab(&[&common[..], &["--backend", "cpu"]].concat()), "cpu");
    assert!(cpu.is_finite() && cpu > 0.0, "{cpu}");
    let o = lab(&[&common[..], &["--backend", "gpu"]].concat());
    match gptq_lab::cuda::open(0) {
        Err(e) => {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success(), "--backend gpu without a GPU succeeded");
            assert_eq!(
                o.status.code(),
                Some(1),
                "an error exit, not a crash: {err}"
            );
            assert!(
                err.contains("--backend gpu") && err.contains("--backend cpu"),
                "the refusal names the flag and the alternative: {err}"
            );
            assert!(!err.contains("panicked"), "{err}");
            // Refused before any weights were streamed (no progress output).
            assert!(!err.contains("loaded ") && !err.contains("[1/"), "{err}");
            eprintln!("SKIP gpu half of eval_backends_agree: {e}");
        }
        Ok(_) => {
            let gpu = mean_nll(&o, "gpu");
            assert!(
                (gpu - cpu).abs() <= PPL_NLL_TOL,
                "mean NLL gpu {gpu} vs cpu {cpu}: more than {PPL_NLL_TOL} nats apart"
            );
        }
    }
}

#[test]
fn a_bad_seqlen_is_refused_before_the_backend_is_opened() {
    let ck = fixture("tiny-fp16");
    for backend in ["cpu", "gpu"] {
        let o = lab(&[
            "eval",
            "--checkpoint",
            &ck,
            "--seqlen",
            "1",
            "--backend",
            backend,
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(err.contains("--seqlen"), "{backend}: {err}");
    }
}

#[test]
fn an_unknown_int4_kernel_is_refused_before_the_gpu_is_opened() {
    let ck = fixture("tiny-sym-g32");
    let o = lab(&[
        "eval",
        "--checkpoint",
        &ck,
        "--backend",
        "gpu",
        "--int4-kernel",
        "gemv_v9",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("--int4-kernel") && err.contains("gemv_v9"),
        "{err}"
    );
}
