//! `lab tune` flag handling that needs no GPU: bad --model / --checkpoint are refused before any
//! device is opened, naming the flag or file; without a GPU a valid request says there is none.

mod common;
use common::{lab, stderr};

#[test]
fn tune_refuses_unknown_models_and_missing_checkpoints_before_touching_a_gpu() {
    let o = lab(&["tune", "--gpu", "0", "--model", "vicuna-7b,llama-70b"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--model") && stderr(&o).contains("llama-70b"),
        "{}",
        stderr(&o)
    );

    let o = lab(&["tune", "--checkpoint", "/nonexistent-ckpt"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/nonexistent-ckpt/config.json"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn tune_on_a_checkpoint_without_a_gpu_says_so() {
    if gptq_lab::cuda::gpu_unavailable_reason(0).is_none() {
        eprintln!("SKIP tune_on_a_checkpoint_without_a_gpu_says_so: a GPU is present");
        return;
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-fp16");
    let o = lab(&["tune", "--checkpoint", dir, "--quick"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no CUDA device"), "{}", stderr(&o));
}
