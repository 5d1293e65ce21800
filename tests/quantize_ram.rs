//! `lab quantize`'s host memory, measured: a fresh `lab` process quantizes an fp16 model of many
//! mid-sized layers, and its peak resident set (VmHWM, which counts every page it touched: heap,
//! the mapped source, the output being written) must stay within `ram_bound_bytes` (the bound
//! the quantizer states for its large buffers) plus a fixed allowance for the program itself.
//!
//! Why a subprocess: VmHWM is per process, and the test harness runs other tests beside this one.
//! Why these shapes: 12 layers of hidden 768 / intermediate 2048 make the whole model (f32, as the
//! quantizer computes in) about 2.5x the bound, so a run that kept every layer, the whole mapped
//! source or every quantized layer until the end would be caught, while one layer's work stays a
//! few seconds on two cores.

use half::f16;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::path::Path;
use std::process::Command;

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-fp16");

const HIDDEN: usize = 768;
const INTER: usize = 2048;
const LAYERS: usize = 12;
const HEADS: usize = 12;
/// The tiny fixture's tokenizer (its vocabulary is 320 ids).
const VOCAB: usize = 320;

/// What the program itself may add to the bound: code, the Rust runtime, the calibration text,
/// the allocator's slack and rayon's threads (each keeps an allocator arena and faer's scratch,
/// ~1.3 MiB a thread: the same run peaked 23.5 MiB over the bound with 2 threads, 36 with 8,
/// 62.5 with 32). The run is held to 2 threads so the figure does not depend on the host.
const ALLOWANCE: u64 = 32 << 20;

/// The tiny fixture's config and tokenizer with the shapes above, and seeded fp16 weights of
/// standard deviation ~1/sqrt(fan-in) (activations stay O(1) through the layers).
fn write_fp16_model(dir: &Path) -> u64 {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(
        Path::new(TINY).join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(TINY).join("config.json")).unwrap(),
    )
    .unwrap();
    cfg["hidden_size"] = HIDDEN.into();
    cfg["intermediate_size"] = INTER.into();
    cfg["num_hidden_layers"] = LAYERS.into();
    cfg["num_attention_heads"] = HEADS.into();
    cfg["num_key_value_heads"] = HEADS.into();
    cfg["vocab_size"] = VOCAB.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();

    let mut shapes_cfg = gptq_lab::model::config::ModelConfig::vicuna_7b();
    shapes_cfg.hidden_size = HIDDEN;
    shapes_cfg.intermediate_size = INTER;
    shapes_cfg.num_attention_heads = HEADS;
    shapes_cfg.num_key_value_heads = HEADS;
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![VOCAB, HIDDEN]),
        ("model.norm.weight".into(), vec![HIDDEN]),
        ("lm_head.weight".into(), vec![VOCAB, HIDDEN]),
    ];
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        // HF layout: [out_features, in_features].
        for (name, k, n) in shapes_cfg.layer_linears() {
            shapes.push((format!("{p}.{name}.weight"), vec![n, k]));
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            shapes.push((format!("{p}.{norm}.weight"), vec![HIDDEN]));
        }
    }
    let mut rng = StdRng::seed_from_u64(7);
    let bytes: Vec<Vec<u8>> = shapes
        .iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let a = if shape.len() == 1 {
                0.0
            } else {
                (3.0 / shape[1] as f32).sqrt()
            };
            (0..n)
                .flat_map(|_| {
                    let v = if shape.len() == 1 || name.contains("embed") {
                        rng.random_range(0.8f32..1.2)
                    } else {
                        rng.random_range(-a..a)
                    };
                    f16::from_f32(v).to_le_bytes()
                })
                .collect()
        })
        .collect();
    let views: Vec<(&str, TensorView)> = shapes
        .iter()
        .zip(&bytes)
        .map(|((name, shape), b)| {
            (
                name.as_str(),
                TensorView::new(Dtype::F16, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    let path = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, None, &path).unwrap();
    std::fs::metadata(&path).unwrap().len()
}

#[test]
fn quantize_peak_rss_stays_within_the_stated_bound() {
    if !cfg!(target_os = "linux") {
        eprintln!("SKIP quantize_peak_rss_stays_within_the_stated_bound: needs /proc (Linux)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("fp16");
    let file_bytes = write_fp16_model(&src);
    let out = tmp.path().join("q");
    let run = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["quantize", "--checkpoint"])
        .arg(&src)
        .arg("--out")
        .arg(&out)
        .args(["--group", "128", "--seqlen", "128", "--nsamples", "4"])
        .args(["--json", "--quiet"])
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "lab quantize failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let peak = s["peak_rss_bytes"].as_u64().expect("peak_rss_bytes");
    let bound = s["ram_bound_bytes"].as_u64().expect("ram_bound_bytes");
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    eprintln!(
        "peak RSS {:.1} MiB, bound {:.1} MiB, source file {:.1} MiB",
        mib(peak),
        mib(bound),
        mib(file_bytes)
    );
    // The limit must be able to fail: the whole model in f32 (twice the fp16 file) is well above
    // it, and so is the mapped source (the file's size) kept beside one layer's work. Not caught
    // here: the hidden states kept in RAM (4 x 128 x 768 x 4 B = 1.5 MiB at these sizes; the
    // file-backed store has its own tests in quantize::memory and tests/quantize.rs).
    assert!(
        2 * 2 * file_bytes > 3 * (bound + ALLOWANCE),
        "shapes too small to tell: model f32 {:.1} MiB vs limit {:.1} MiB",
        mib(2 * file_bytes),
        mib(bound + ALLOWANCE)
    );
    assert!(
        peak <= bound + ALLOWANCE,
        "peak RSS {:.1} MiB above the stated bound {:.1} MiB + {:.0} MiB for the program",
        mib(peak),
        mib(bound),
        mib(ALLOWANCE)
    );
    // And the output is a checkpoint of every layer (the run did the whole job).
    let q: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("quantize_config.json")).unwrap())
            .unwrap();
    assert_eq!(q["group_size"], 128);
    assert_eq!(s["linears"].as_array().map(|l| l.len()), Some(7 * LAYERS));
}
