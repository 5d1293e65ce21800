//! Nothing panics on user input: seeded random damage to the files a checkpoint folder holds
//! (the safetensors header and data, config.json's and quantize_config.json's values, a
//! sentencepiece tokenizer.model, a tokenizer.json) either loads and runs or is refused with an
//! error. The hand-written cases in checkpoint_errors.rs say *which* error each known defect gets;
//! these say that the inputs nobody thought of still end in an error, not a panic or a hang.

use gptq_lab::model::checkpoint::Checkpoint;
use gptq_lab::model::cpu_engine::CpuEngine;
use gptq_lab::model::tokenizer::TextTokenizer;
use gptq_lab::model::weights::LlamaWeights;
use rand::{rngs::StdRng, RngExt, SeedableRng};
use serde_json::Value;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

mod common;
use common::lab;

fn fixture(name: &str) -> PathBuf {
    common::fixture_dir(name)
}

/// A fresh copy of a fixture folder.
fn copy_of(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    common::copy_fixture_into(name, tmp.path(), &[]);
    tmp
}

/// What a user's `lab decode --backend cpu --checkpoint DIR` does with the folder: open it, load
/// every tensor, and when that succeeds run a few tokens. Ok(()) or the error's text.
fn load_and_run(dir: &Path) -> Result<(), String> {
    let ck = Checkpoint::open(dir).map_err(|e| e.to_string())?;
    let w = LlamaWeights::from_checkpoint(&ck).map_err(|e| e.to_string())?;
    let mut engine = CpuEngine::new(w, ck.config.clone()).map_err(|e| e.to_string())?;
    engine.forward(&[1, 5, 7]).map_err(|e| e.to_string())?;
    Ok(())
}

/// Runs `f`, failing the test with `what` when it panics.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{what}: panicked: {msg}")
        }
    }
}

/// One random change to `bytes`: flipped bytes, a truncation, bytes inserted, or a run set to
/// 0x00 / 0xff. `hot` is the prefix most changes land in (a header, where the structure is;
/// usize::MAX: anywhere).
fn damage(bytes: &mut Vec<u8>, hot: usize, rng: &mut StdRng) -> String {
    let (len, hot) = (bytes.len(), hot.clamp(1, bytes.len()));
    let at = |rng: &mut StdRng| {
        if rng.random_range(0..4) == 0 {
            rng.random_range(0..len)
        } else {
            rng.random_range(0..hot)
        }
    };
    match rng.random_range(0..5) {
        0 | 1 => {
            let n = rng.random_range(1..=4);
            let mut at_list = Vec::new();
            for _ in 0..n {
                let i = at(rng);
                bytes[i] ^= 1 << rng.random_range(0..8);
                at_list.push(i);
            }
            format!("bits flipped at {at_list:?}")
        }
        2 => {
            let n = at(rng);
            bytes.truncate(n);
            format!("truncated to {n} bytes")
        }
        3 => {
            let i = at(rng);
            let n = rng.random_range(1..=16);
            let ins: Vec<u8> = (0..n).map(|_| rng.random_range(0..=255u8)).collect();
            bytes.splice(i..i, ins);
            format!("{n} bytes inserted at {i}")
        }
        _ => {
            let i = at(rng);
            let n = rng.random_range(1..=8).min(bytes.len() - i);
            let v = if rng.random_range(0..2) == 0 { 0 } else { 0xff };
            bytes[i..i + n].fill(v);
            format!("{n} bytes at {i} set to {v:#x}")
        }
    }
}

#[test]
fn a_damaged_safetensors_file_is_refused_or_loaded_never_a_panic() {
    let mut rng = StdRng::seed_from_u64(0x5afe);
    let mut refused = 0;
    for case in 0..600 {
        let fx = ["tiny-asym-act-g32", "tiny-sym-g32", "tiny-fp16"][case % 3];
        let tmp = copy_of(fx);
        let path = tmp.path().join("model.safetensors");
        let mut bytes = std::fs::read(&path).unwrap();
        let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let how = damage(&mut bytes, header, &mut rng);
        std::fs::write(&path, &bytes).unwrap();
        let what = format!("{fx}/model.safetensors {how}");
        if let Err(e) = no_panic(&what, || load_and_run(tmp.path())) {
            refused += 1;
            assert!(!e.trim().is_empty(), "{what}: an empty error");
        }
    }
    eprintln!("{refused} of 600 damaged safetensors files refused");
    // Most damage to the header or the data is caught (a flipped weight bit may still load).
    assert!(
        refused >= 300,
        "only {refused} of 600 damaged files refused"
    );
}

/// Values a hand-edited or mis-converted config may hold, of every JSON type.
fn odd_values() -> Vec<Value> {
    serde_json::from_str(
        r#"[0, -1, 1, 2, 3, 7, 63, 65, 4294967296, 18446744073709551615, -9223372036854775808,
            1.5, -0.0, 1e308, -1e308, 1e-320, "64", "", null, true, false, [], {}, [64]]"#,
    )
    .unwrap()
}

/// What a user's `lab decode --backend cpu --checkpoint DIR --prompt TEXT` does with the folder
/// (its config, generation_config.json and tokenizer included): it runs, or it stops with
/// `error: ...` and exit code 1. A panic (exit 101) or a message without "error:" fails the test.
fn decode_cli(dir: &Path, what: &str) -> Result<(), String> {
    let o = lab(&[
        "decode",
        "--backend",
        "cpu",
        "--checkpoint",
        dir.to_str().unwrap(),
        "--prompt",
        "Hi there",
        "--max-new-tokens",
        "2",
    ]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !err.contains("panicked"),
        "{what}: lab decode panicked:\n{err}"
    );
    match o.status.code() {
        Some(0) => Ok(()),
        Some(1) if err.contains("error:") => Err(err),
        c => panic!("{what}: lab decode exited with {c:?}:\n{err}"),
    }
}

/// Every field of `file` (its content `original`) set, one at a time, to each odd value, and
/// removed; each variant through the library's load + run (config files) and through the CLI.
/// How many variants were refused.
fn each_field_odd(fx: &str, file: &str, original: &Value) -> usize {
    let keys: Vec<String> = original.as_object().unwrap().keys().cloned().collect();
    let mut refused = 0;
    for key in &keys {
        let mut variants: Vec<(String, Value)> = odd_values()
            .into_iter()
            .map(|v| {
                let mut o = original.clone();
                o[key] = v.clone();
                (format!("{key} = {v}"), o)
            })
            .collect();
        let mut gone = original.clone();
        gone.as_object_mut().unwrap().remove(key);
        variants.push((format!("{key} removed"), gone));
        for (how, v) in variants {
            let tmp = copy_of(fx);
            std::fs::write(tmp.path().join(file), v.to_string()).unwrap();
            let what = format!("{fx}/{file} {how}");
            let lib = no_panic(&what, || load_and_run(tmp.path()));
            let cli = decode_cli(tmp.path(), &what);
            // The CLI reads more than the library's load (EOS ids, sampling, the tokenizer), so
            // it refuses at least what the load refuses.
            assert!(
                lib.is_ok() || cli.is_err(),
                "{what}: refused by the load, run by lab decode"
            );
            if cli.is_err() {
                refused += 1;
            }
        }
    }
    refused
}

fn json_of(fx: &str, file: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(fx).join(file)).unwrap()).unwrap()
}

#[test]
fn odd_values_in_config_json_are_refused_or_run_never_a_panic() {
    for fx in ["tiny-asym-act-g32", "tiny-fp16"] {
        let refused = each_field_odd(fx, "config.json", &json_of(fx, "config.json"));
        eprintln!("{fx}: {refused} odd configs refused");
        // The shape fields alone give hundreds of refusals.
        assert!(refused >= 100, "{fx}: only {refused} odd configs refused");
    }
}

#[test]
fn odd_values_in_quantize_config_json_are_refused_or_run_never_a_panic() {
    let fx = "tiny-asym-act-g32";
    let refused = each_field_odd(
        fx,
        "quantize_config.json",
        &json_of(fx, "quantize_config.json"),
    );
    eprintln!("{refused} odd quantize configs refused");
    assert!(refused >= 40, "only {refused} odd quantize configs refused");
}

#[test]
fn odd_values_in_generation_config_json_are_refused_or_run_never_a_panic() {
    // The fixtures have none: the fields transformers writes for LLaMA / Vicuna, sampling on.
    let gen = serde_json::json!({
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "do_sample": true,
        "temperature": 0.6, "top_p": 0.9, "top_k": 40, "max_length": 4096,
    });
    let refused = each_field_odd("tiny-asym-act-g32", "generation_config.json", &gen);
    eprintln!("{refused} odd generation configs refused");
    assert!(
        refused >= 40,
        "only {refused} odd generation configs refused"
    );
}

/// `cases` copies of the tokenizer file `clean`, each damaged, written as `name` and opened by
/// `open`: each is refused with an error naming the file, or encodes and decodes (odd ids too)
/// without a panic. How many were refused and how many loaded.
fn damaged_tokenizers(
    clean: &[u8],
    name: &str,
    open: fn(&Path) -> gptq_lab::Result<TextTokenizer>,
    cases: usize,
    seed: u64,
) -> (usize, usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let texts = [
        "Hello world",
        "  two  spaces\n\ttab",
        "ünï©ødé ✓ 日本",
        "",
        "<s>x</s>",
    ];
    let (mut refused, mut loaded) = (0, 0);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(name);
    for _ in 0..cases {
        let mut bytes = clean.to_vec();
        let how = damage(&mut bytes, usize::MAX, &mut rng);
        std::fs::write(&path, &bytes).unwrap();
        let what = format!("{name} {how}");
        no_panic(&what, || match open(&path) {
            Err(e) => {
                refused += 1;
                assert!(
                    e.to_string().contains(name),
                    "{what}: error without the file: {e}"
                );
            }
            Ok(t) => {
                loaded += 1;
                for text in texts {
                    if let Ok(ids) = t.encode(text, true) {
                        let _ = t.decode(&ids);
                    }
                }
                let _ = t.decode(&[0, 1, 2, 3, 250, 9999, u32::MAX]);
            }
        });
    }
    eprintln!("{name}: {refused} of {cases} damaged copies refused, {loaded} loaded");
    (refused, loaded)
}

#[test]
fn a_damaged_sentencepiece_model_is_refused_or_encodes_never_a_panic() {
    let clean = std::fs::read(fixture("tokenizer-sp/tokenizer.model")).unwrap();
    let open = |p: &Path| TextTokenizer::from_sentencepiece(p, true);
    let (refused, loaded) = damaged_tokenizers(&clean, "tokenizer.model", open, 1500, 0x5e9);
    assert!(
        refused >= 100 && loaded >= 1,
        "{refused} refused, {loaded} loaded"
    );
}

#[test]
fn a_damaged_tokenizer_json_is_refused_or_encodes_never_a_panic() {
    let clean = std::fs::read(fixture("tiny-sym-g32/tokenizer.json")).unwrap();
    let (refused, _) = damaged_tokenizers(
        &clean,
        "tokenizer.json",
        TextTokenizer::from_file,
        400,
        0x70c,
    );
    assert!(refused >= 200, "only {refused} of 400 refused");
}
