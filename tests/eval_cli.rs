//! `lab eval --backend cpu|gpu`. Without a GPU, `--backend gpu` must fail cleanly (naming the
//! reason and the CPU alternative) before it loads any weights; with one, both backends must give
//! the same perplexity within `PPL_NLL_TOL` (the same bound scripts/eval-gpu-vs-cpu uses).

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
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
            gptq_lab::util::note_skip("gpu half of eval_backends_agree", &e.to_string());
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

/// A copy of the tiny fp16 fixture in `dir`: each tensor through `edit` (name, shape, fp16 bytes
/// -> shape, bytes), config.json and tokenizer.json through `cfg` and `tok`.
fn fp16_copy(
    dir: &Path,
    edit: impl Fn(&str, Vec<usize>, Vec<u8>) -> (Vec<usize>, Vec<u8>),
    cfg: impl FnOnce(&mut serde_json::Value),
    tok: impl FnOnce(&mut serde_json::Value),
) -> String {
    let src = Path::new(&fixture("tiny-fp16")).to_path_buf();
    std::fs::create_dir_all(dir).unwrap();
    for (f, change) in [
        (
            "config.json",
            Box::new(cfg) as Box<dyn FnOnce(&mut serde_json::Value)>,
        ),
        ("tokenizer.json", Box::new(tok)),
    ] {
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.join(f)).unwrap()).unwrap();
        change(&mut v);
        std::fs::write(dir.join(f), v.to_string()).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            assert_eq!(v.dtype(), Dtype::F16, "{name}");
            let (shape, data) = edit(&name, v.shape().to_vec(), v.data().to_vec());
            (name, shape, data)
        })
        .collect();
    let views: Vec<(String, TensorView)> = kept
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F16, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    dir.display().to_string()
}

fn eval_err(args: &[&str]) -> String {
    let o = lab(&[&["eval", "--seqlen", "16"], args].concat());
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{args:?} did not fail cleanly: {err}"
    );
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("perplexity"),
        "{args:?} still printed a result"
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn max_windows_zero_is_refused_by_its_flag() {
    let e = eval_err(&["--checkpoint", &fixture("tiny-fp16"), "--max-windows", "0"]);
    assert!(
        e.contains("--max-windows 0") && !e.contains("too short"),
        "{e}"
    );
}

#[test]
fn a_non_finite_result_is_an_error_not_nan_exit_0() {
    let tmp = tempfile::tempdir().unwrap();
    let nan = half::f16::NAN.to_le_bytes();
    let ck = fp16_copy(
        &tmp.path().join("nan-norm"),
        |name, shape, data| match name {
            "model.norm.weight" => (shape, nan.repeat(data.len() / 2)),
            _ => (shape, data),
        },
        |_| {},
        |_| {},
    );
    // Refused either as a non-finite evaluation or by a loader check on the NaN weights; either
    // way the copy is named and no "perplexity NaN" is printed (eval_err).
    let e = eval_err(&["--checkpoint", &ck, "--max-windows", "2"]);
    assert!(e.contains(&ck), "{e}");
}

#[test]
fn a_reference_with_another_vocabulary_or_tokenizer_is_refused_naming_both() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = fixture("tiny-fp16");
    // 80 more rows of embedding and lm_head, vocab_size 400: scoring used to zip the two
    // distributions, dropping the reference's tail, and printed a negative KL.
    let wide = fp16_copy(
        &tmp.path().join("vocab400"),
        |name, mut shape, mut data| {
            if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
                data.resize(data.len() / shape[0] * 400, 0);
                shape[0] = 400;
            }
            (shape, data)
        },
        |c| c["vocab_size"] = 400.into(),
        |_| {},
    );
    let e = eval_err(&[
        "--checkpoint",
        &ck,
        "--reference",
        &wide,
        "--max-windows",
        "2",
    ]);
    assert!(
        e.contains(&format!("--reference {wide}: vocab_size 400"))
            && e.contains(&format!("--checkpoint {ck} has vocab_size 320")),
        "{e}"
    );
    // Same sizes, but two tokens trade ids: the ids would mean other text in the reference.
    let swapped = fp16_copy(
        &tmp.path().join("swapped"),
        |_, shape, data| (shape, data),
        |_| {},
        |t| {
            let vocab = &mut t["model"]["vocab"];
            let (a, b) = (vocab["#"].clone(), vocab["$"].clone());
            vocab["#"] = b;
            vocab["$"] = a;
        },
    );
    let e = eval_err(&[
        "--checkpoint",
        &ck,
        "--reference",
        &swapped,
        "--max-windows",
        "2",
    ]);
    assert!(
        e.contains(&format!("--reference {swapped}"))
            && e.contains("tokenizer.json")
            && e.contains(&ck),
        "{e}"
    );
}

#[test]
fn cpu_eval_refuses_the_gpu_backends_flags_instead_of_ignoring_them() {
    let ck = fixture("tiny-sym-g32");
    let base = [
        "eval",
        "--checkpoint",
        &ck,
        "--seqlen",
        "16",
        "--max-windows",
        "1",
    ];
    // A misspelt kernel is refused by the flag itself, whatever the backend (it printed a
    // perplexity with the CPU backend).
    let mut a = base.to_vec();
    a.extend(["--int4-kernel", "bogus"]);
    let o = lab(&a);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("invalid value 'bogus' for '--int4-kernel") && o.stdout.is_empty(),
        "{err}"
    );
    // A valid GPU flag typed for the CPU backend (the default, or given) is refused by name.
    for (flag, value) in [("--int4-kernel", "engine"), ("--root", ".")] {
        for backend in [&[][..], &["--backend", "cpu"]] {
            let mut a = base.to_vec();
            a.extend(backend);
            a.extend([flag, value]);
            let o = lab(&a);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{flag}: {err}");
            assert!(
                err.contains(&format!("{flag}: a flag of the GPU backend"))
                    && err.contains("--backend gpu")
                    && o.stdout.is_empty(),
                "{flag}: {err}"
            );
        }
    }
    // Their defaults do not count.
    let o = lab(&base);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_model_against_itself_has_kl_zero_and_the_output_says_how_it_scored() {
    let ck = fixture("tiny-sym-g32");
    let o = lab(&[
        "eval",
        "--checkpoint",
        &ck,
        "--reference",
        &ck,
        "--seqlen",
        "16",
        "--max-windows",
        "3",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kl_to_reference"].as_f64(), Some(0.0));
    assert_eq!(v["top1_agreement"].as_f64(), Some(1.0));
    // 3 of the windows the text holds, 15 positions each, and the convention in words.
    let (total, avail) = (
        v["tokens_total"].as_u64().unwrap(),
        v["windows_available"].as_u64().unwrap(),
    );
    assert_eq!(avail, total / 16);
    assert!(avail > 3, "{v}");
    assert_eq!(v["tokens_scored"].as_u64(), Some(3 * 15));
    assert!(
        v["convention"]
            .as_str()
            .is_some_and(|c| c.contains("non-overlapping") && c.contains("KL(reference || model)")),
        "{v}"
    );
    // llama.cpp's convention: positions 8..14 of each window of 16 (7 of 15 scored).
    let o = lab(&[
        "eval",
        "--checkpoint",
        &ck,
        "--seqlen",
        "16",
        "--max-windows",
        "3",
        "--scoring",
        "llama-cpp",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let h: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(h["tokens_scored"].as_u64(), Some(3 * 7));
    assert!(
        h["convention"]
            .as_str()
            .is_some_and(|c| c.contains("replaced by BOS")),
        "{h}"
    );
    // AutoGPTQ's script: llama.cpp's figure at a window this short (it differs above 1024),
    // under its own name.
    let o = lab(&[
        "eval",
        "--checkpoint",
        &ck,
        "--seqlen",
        "16",
        "--max-windows",
        "3",
        "--scoring",
        "autogptq",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(a["tokens_scored"], h["tokens_scored"]);
    assert_eq!(a["perplexity"], h["perplexity"]);
    assert!(
        a["convention"]
            .as_str()
            .is_some_and(|c| c.contains("min(512, seqlen/2)")),
        "{a}"
    );
    // The text form says it too.
    let o = lab(&[
        "eval",
        "--checkpoint",
        &ck,
        "--seqlen",
        "16",
        "--max-windows",
        "3",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("over 3 of {avail} windows")) && out.contains("scored as: "),
        "{out}"
    );
}

#[test]
fn bad_text_or_tokenizer_is_refused_naming_the_file_before_scoring() {
    let tmp = tempfile::tempdir().unwrap();
    // A tokenizer.json with ids past config.json's vocab_size: named up front, not at the window
    // that happens to meet such a token (or never, if it falls in the unscored tail).
    let small = fp16_copy(
        &tmp.path().join("vocab-short"),
        |name, mut shape, mut data| {
            if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
                data.truncate(data.len() / shape[0] * 100);
                shape[0] = 100;
            }
            (shape, data)
        },
        |c| c["vocab_size"] = 100.into(),
        |_| {},
    );
    let e = eval_err(&["--checkpoint", &small]);
    assert!(
        e.contains("tokenizer.json") && e.contains("vocab_size 100") && e.contains("eval.txt"),
        "{e}"
    );
    // An empty text file, and one too short for a window: the file and the remedy are named.
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let short = tmp.path().join("short.txt");
    std::fs::write(&short, "a few words").unwrap();
    for f in [&empty, &short] {
        let e = eval_err(&[
            "--checkpoint",
            &fixture("tiny-fp16"),
            "--text",
            f.to_str().unwrap(),
        ]);
        assert!(
            e.contains(&format!("--text {}", f.display()))
                && e.contains("too short")
                && e.contains("shorter --seqlen"),
            "{e}"
        );
    }
    // A reference whose context cannot hold the window: named by its flag before loading.
    let short_ctx = fp16_copy(
        &tmp.path().join("ctx8"),
        |_, shape, data| (shape, data),
        |c| c["max_position_embeddings"] = 8.into(),
        |_| {},
    );
    let e = eval_err(&[
        "--checkpoint",
        &fixture("tiny-fp16"),
        "--reference",
        &short_ctx,
    ]);
    assert!(
        e.contains(&format!("--reference {short_ctx}")) && e.contains("max_position_embeddings 8"),
        "{e}"
    );
}

/// The half-window conventions need half a window of context and then a scored position: a
/// window under 4 tokens is refused naming both flags (it scored a single position, exit 0).
#[test]
fn a_half_window_scoring_with_a_window_under_4_tokens_is_refused() {
    for scoring in ["llama-cpp", "autogptq"] {
        let o = lab(&[
            "eval",
            "--checkpoint",
            &fixture("tiny-fp16"),
            "--scoring",
            scoring,
            "--seqlen",
            "3",
            "--max-windows",
            "1",
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{scoring}: {err}");
        assert!(
            err.contains(&format!("--scoring {scoring} with --seqlen 3")) && err.contains(">= 4"),
            "{scoring}: {err}"
        );
        assert!(o.stdout.is_empty(), "{scoring}: no result printed");
    }
}
