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
        gptq_lab::util::note_skip(
            "tune_on_a_checkpoint_without_a_gpu_says_so",
            "a GPU is present",
        );
        return;
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-fp16");
    let o = lab(&["tune", "--checkpoint", dir, "--quick"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no CUDA device"), "{}", stderr(&o));
}

#[test]
fn tune_show_reads_the_tuned_configs_under_root() {
    if gptq_lab::cuda::gpu_unavailable_reason(0).is_none() {
        gptq_lab::util::note_skip(
            "tune_show_reads_the_tuned_configs_under_root",
            "a GPU is present (it picks its own file)",
        );
        return;
    }
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let tuning = tmp.path().join("tuning");
    std::fs::create_dir(&tuning).unwrap();
    let name = "nvidia-h100-80gb-hbm3.json";
    std::fs::copy(repo.join("tuning").join(name), tuning.join(name)).unwrap();
    // Run from elsewhere: only --root can lead it to the file.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["tune", "--show", "--root", tmp.path().to_str().unwrap()])
        .current_dir(tmp.path().parent().unwrap())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(
        out.contains(&format!("{}: NVIDIA H100", tuning.join(name).display())),
        "{out}"
    );
    // An empty root says which folder it looked in.
    let empty = tempfile::tempdir().unwrap();
    let o = lab(&["tune", "--show", "--root", empty.path().to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    let want = format!(
        "no tuned configs in {}",
        empty.path().join("tuning").display()
    );
    assert!(o.status.success() && out.contains(&want), "{out}");
    // A root that does not exist is a mistake, not an empty list.
    let gone = empty.path().join("typo");
    let o = lab(&["tune", "--show", "--root", gone.to_str().unwrap()]);
    assert!(
        !o.status.success() && stderr(&o).contains("--root") && stderr(&o).contains("typo"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn tune_show_shows_every_config_and_names_each_refused_one() {
    if gptq_lab::cuda::gpu_unavailable_reason(0).is_none() {
        gptq_lab::util::note_skip(
            "tune_show_shows_every_config_and_names_each_refused_one",
            "a GPU is present (it picks its own file)",
        );
        return;
    }
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let tuning = tmp.path().join("tuning");
    std::fs::create_dir(&tuning).unwrap();
    let good = "nvidia-h100-80gb-hbm3.json";
    std::fs::copy(repo.join("tuning").join(good), tuning.join(good)).unwrap();
    // Sorted before the good file: it used to end the listing there.
    let bad = tuning.join("a-broken-card.json");
    std::fs::write(&bad, "{ \"device\": ").unwrap();
    let o = lab(&["tune", "--show", "--root", tmp.path().to_str().unwrap()]);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(!o.status.success(), "{out}{err}");
    assert!(
        out.contains(&format!("{}: NVIDIA H100", tuning.join(good).display())),
        "the good file after the bad one is still shown: {out}{err}"
    );
    assert!(
        err.contains("1 of 2 tuned configs") && err.contains(&bad.display().to_string()),
        "{err}"
    );
}

/// --model and --checkpoint both say which shapes to tune: given together, refused naming both
/// (the checkpoint silently won).
#[test]
fn tune_refuses_model_with_checkpoint() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-fp16");
    let o = lab(&[
        "tune",
        "--model",
        "vicuna-7b",
        "--checkpoint",
        dir,
        "--quick",
    ]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("cannot be used with") && e.contains("--model") && e.contains("--checkpoint"),
        "{e}"
    );
}
