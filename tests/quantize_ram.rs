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

/// A model's shapes: the tiny fixture's config with these sizes.
#[derive(Clone, Copy)]
struct Shapes {
    hidden: usize,
    inter: usize,
    layers: usize,
    heads: usize,
    /// At least the tiny fixture's tokenizer's 320 ids.
    vocab: usize,
    max_positions: usize,
}

/// Many mid-sized layers: see the module's doc.
const MID: Shapes = Shapes {
    hidden: 768,
    inter: 2048,
    layers: 12,
    heads: 12,
    vocab: 320,
    max_positions: 256,
};

/// Two layers of Vicuna-7B's exact shapes and vocabulary: every buffer the bound counts is at
/// its 7B size except the chunk of hidden states (it scales with the calibration run).
const VICUNA_7B_TWO_LAYERS: Shapes = Shapes {
    hidden: 4096,
    inter: 11008,
    layers: 2,
    heads: 32,
    vocab: 32000,
    max_positions: 2048,
};

/// What the program itself may add to the bound: code, the Rust runtime, the calibration text,
/// the allocator's slack and rayon's threads (each keeps an allocator arena and faer's scratch,
/// ~1.3 MiB a thread: the same run peaked 23.5 MiB over the bound with 2 threads, 36 with 8,
/// 62.5 with 32). The run is held to 2 threads so the figure does not depend on the host.
const ALLOWANCE: u64 = 32 << 20;

/// The tiny fixture's config and tokenizer with the given shapes, and seeded fp16 weights of
/// standard deviation ~1/sqrt(fan-in) (activations stay O(1) through the layers).
fn write_fp16_model(dir: &Path, sh: Shapes) -> u64 {
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
    cfg["hidden_size"] = sh.hidden.into();
    cfg["intermediate_size"] = sh.inter.into();
    cfg["num_hidden_layers"] = sh.layers.into();
    cfg["num_attention_heads"] = sh.heads.into();
    cfg["num_key_value_heads"] = sh.heads.into();
    cfg["vocab_size"] = sh.vocab.into();
    cfg["max_position_embeddings"] = sh.max_positions.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();

    let mut shapes_cfg = gptq_lab::model::config::ModelConfig::vicuna_7b();
    shapes_cfg.hidden_size = sh.hidden;
    shapes_cfg.intermediate_size = sh.inter;
    shapes_cfg.num_attention_heads = sh.heads;
    shapes_cfg.num_key_value_heads = sh.heads;
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        (
            "model.embed_tokens.weight".into(),
            vec![sh.vocab, sh.hidden],
        ),
        ("model.norm.weight".into(), vec![sh.hidden]),
        ("lm_head.weight".into(), vec![sh.vocab, sh.hidden]),
    ];
    for l in 0..sh.layers {
        let p = format!("model.layers.{l}");
        // HF layout: [out_features, in_features].
        for (name, k, n) in shapes_cfg.layer_linears() {
            shapes.push((format!("{p}.{name}.weight"), vec![n, k]));
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            shapes.push((format!("{p}.{norm}.weight"), vec![sh.hidden]));
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

/// What one `lab quantize` run reported: its summary, and the source file's size.
struct Measured {
    peak: u64,
    bound: u64,
    file_bytes: u64,
    summary: serde_json::Value,
    out: std::path::PathBuf,
    _tmp: tempfile::TempDir,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

/// Writes the model, quantizes it in a fresh process (2 rayon threads, g128) and reads back the
/// peak and the bound it reports.
fn quantize_measured(sh: Shapes, seqlen: usize, nsamples: usize) -> Measured {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("fp16");
    let file_bytes = write_fp16_model(&src, sh);
    let out = tmp.path().join("q");
    let t = std::time::Instant::now();
    let run = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["quantize", "--checkpoint"])
        .arg(&src)
        .arg("--out")
        .arg(&out)
        .args(["--group", "128"])
        .args(["--seqlen", &seqlen.to_string()])
        .args(["--nsamples", &nsamples.to_string()])
        .args(["--json", "--quiet"])
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "lab quantize failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let peak = summary["peak_rss_bytes"].as_u64().expect("peak_rss_bytes");
    let bound = summary["ram_bound_bytes"]
        .as_u64()
        .expect("ram_bound_bytes");
    eprintln!(
        "peak RSS {:.1} MiB, bound {:.1} MiB, source file {:.1} MiB, {:.0} s",
        mib(peak),
        mib(bound),
        mib(file_bytes),
        t.elapsed().as_secs_f64()
    );
    Measured {
        peak,
        bound,
        file_bytes,
        summary,
        out,
        _tmp: tmp,
    }
}

/// The peak within the stated bound plus the program's allowance, and the whole job done: a
/// g128 checkpoint of every layer's seven linears.
fn assert_within_bound_and_complete(m: &Measured, sh: Shapes) {
    assert!(
        m.peak <= m.bound + ALLOWANCE,
        "peak RSS {:.1} MiB above the stated bound {:.1} MiB + {:.0} MiB for the program",
        mib(m.peak),
        mib(m.bound),
        mib(ALLOWANCE)
    );
    let q: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(m.out.join("quantize_config.json")).unwrap())
            .unwrap();
    assert_eq!(q["group_size"], 128);
    assert_eq!(
        m.summary["linears"].as_array().map(|l| l.len()),
        Some(7 * sh.layers)
    );
}

#[test]
fn quantize_peak_rss_stays_within_the_stated_bound() {
    if !cfg!(target_os = "linux") {
        gptq_lab::util::note_skip(
            "quantize_peak_rss_stays_within_the_stated_bound",
            "needs /proc (Linux)",
        );
        return;
    }
    let m = quantize_measured(MID, 128, 4);
    // The limit must be able to fail: the whole model in f32 (twice the fp16 file) is well above
    // it, and so is the mapped source (the file's size) kept beside one layer's work. Not caught
    // here: the hidden states kept in RAM (4 x 128 x 768 x 4 B = 1.5 MiB at these sizes; the
    // file-backed store has its own tests in quantize::memory and tests/quantize.rs).
    assert!(
        2 * 2 * m.file_bytes > 3 * (m.bound + ALLOWANCE),
        "shapes too small to tell: model f32 {:.1} MiB vs limit {:.1} MiB",
        mib(2 * m.file_bytes),
        mib(m.bound + ALLOWANCE)
    );
    assert_within_bound_and_complete(&m, MID);
}

/// The bound at Vicuna-7B's own shapes (down_proj's K = 11008 solve, the 32000 x 4096 embedding):
/// what the mid-sized test cannot reach. Minutes on two cores and a 1.3 GB source file, so not
/// in the default run: `cargo test --release --test quantize_ram -- --ignored`. The result is
/// kept in notes/quantize.md.
#[test]
#[ignore]
fn quantize_peak_rss_at_vicuna_7b_shapes_stays_within_the_stated_bound() {
    if !cfg!(target_os = "linux") {
        gptq_lab::util::note_skip(
            "quantize_peak_rss_at_vicuna_7b_shapes_stays_within_the_stated_bound",
            "needs /proc (Linux)",
        );
        return;
    }
    let sh = VICUNA_7B_TWO_LAYERS;
    let m = quantize_measured(sh, 512, 4);
    // Every layer-sized buffer is at its 7B size: the bound is within 0.1 GB of the full
    // calibration's 3.11 GB (only the chunk of hidden states is smaller).
    assert!(
        (2.95e9..3.12e9).contains(&(m.bound as f64)),
        "bound {:.2} GB",
        m.bound as f64 / 1e9
    );
    assert_within_bound_and_complete(&m, sh);
}
