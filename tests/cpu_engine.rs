//! The CPU reference engine against transformers: every tiny fixture (tests/fixtures/tiny-*,
//! written by scripts/make-tiny-fixtures.py) goes through Checkpoint::open -> LlamaWeights ->
//! CpuEngine and must give the greedy tokens and logits transformers gave on the same
//! dequantized weights. Also the `lab decode` JSON shape, through the built binary.

mod common;
use common::lab;
use gptq_lab::model::checkpoint::{Checkpoint, LinearWeights};
use gptq_lab::model::cpu_engine::CpuEngine;
use gptq_lab::model::sampler::argmax;
use gptq_lab::model::weights::LlamaWeights;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Logit tolerance, |got - want| <= ATOL + RTOL * |want|. Both sides use the same f32 weights;
/// transformers sums in f32 (dots of K <= 192 terms: ~sqrt(192) * 2^-24 ≈ 1e-6 relative, grown
/// by ~10x through 2 layers of norms, softmax and residuals), this engine in f64, and the
/// fixture rounds to 6 significant digits (5e-7). Logits here are O(1) (|max| ≈ 4), so an
/// error near 1e-5 is expected and 1e-4 leaves 10x room while any real bug (a wrong RoPE pair,
/// a missed norm weight, an off-by-one zero) moves logits by 1e-2 or more.
const LOGIT_ATOL: f64 = 1e-4;
const LOGIT_RTOL: f64 = 1e-4;

const FIXTURES: [&str; 5] = [
    "tiny-fp16",
    "tiny-sym-g32",
    "tiny-asym-gall",
    "tiny-sym-act-g64",
    "tiny-asym-act-g32",
];

#[derive(Deserialize)]
struct Expected {
    prompts: Vec<PromptCase>,
}

#[derive(Deserialize)]
struct PromptCase {
    ids: Vec<u32>,
    prompt_logits: Vec<Vec<f64>>,
    greedy_tokens: Vec<u32>,
    greedy_logits: Vec<Vec<f64>>,
}

fn fixture(name: &str) -> PathBuf {
    common::fixture_dir(name)
}

/// A temp copy of the fixture folder `name`, without the files named in `leave_out`.
fn fixture_copy(name: &str, leave_out: &[&str]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    common::copy_fixture_into(name, tmp.path(), leave_out);
    tmp
}

fn expected(dir: &Path) -> Expected {
    let p = dir.join("expected.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Worst error of one logits row in units of its tolerance (<= 1 passes), and where.
fn worst(got: &[f32], want: &[f64]) -> (f64, usize, f64) {
    assert_eq!(got.len(), want.len(), "logits length");
    let mut w = (0.0, 0, 0.0);
    for (i, (&g, &x)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(g) - x).abs();
        let ratio = err / (LOGIT_ATOL + LOGIT_RTOL * x.abs());
        if ratio > w.0 {
            w = (ratio, i, err);
        }
    }
    w
}

fn engine_at(dir: &Path, name: &str) -> CpuEngine {
    let ckpt = Checkpoint::open(dir).unwrap_or_else(|e| panic!("{name}: {e}"));
    let w = LlamaWeights::from_checkpoint(&ckpt).unwrap_or_else(|e| panic!("{name}: {e}"));
    CpuEngine::new(w, ckpt.config.clone()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn check_fixture(name: &str) {
    check_fixture_at(&fixture(name), name)
}

/// The engine on the checkpoint in `dir` against its expected.json (transformers' logits).
fn check_fixture_at(dir: &Path, name: &str) {
    let exp = expected(dir);
    let mut e = engine_at(dir, name);
    let mut worst_all = (0.0f64, String::new());
    let mut note = |ratio: f64, err: f64, at: String| {
        assert!(
            ratio <= 1.0,
            "{name}: {at}: |error| {err:.3e} is {ratio:.2}x the tolerance (atol {LOGIT_ATOL}, rtol {LOGIT_RTOL})"
        );
        if ratio > worst_all.0 {
            worst_all = (ratio, format!("{at}, |error| {err:.2e}"));
        }
    };
    for case in &exp.prompts {
        e.reset();
        let all = e.forward_all(&case.ids).unwrap();
        assert_eq!(all.len(), case.prompt_logits.len());
        for (pos, (g, w)) in all.iter().zip(&case.prompt_logits).enumerate() {
            let (r, i, err) = worst(g, w);
            note(
                r,
                err,
                format!("prompt {:?} position {pos} logit {i}", case.ids),
            );
        }
        let mut logits = all.last().cloned().unwrap();
        for (step, (&want_tok, want_logits)) in case
            .greedy_tokens
            .iter()
            .zip(&case.greedy_logits)
            .enumerate()
        {
            let (r, i, err) = worst(&logits, want_logits);
            note(
                r,
                err,
                format!("prompt {:?} greedy step {step} logit {i}", case.ids),
            );
            let t = argmax(&logits).unwrap();
            assert_eq!(
                t, want_tok,
                "{name}: prompt {:?} greedy step {step}",
                case.ids
            );
            logits = e.forward(&[t]).unwrap();
        }
    }
    eprintln!(
        "{name}: worst logit error {:.3} of tolerance ({})",
        worst_all.0, worst_all.1
    );
}

#[test]
fn tiny_fp16_matches_transformers() {
    check_fixture("tiny-fp16");
}

/// Linear RoPE scaling (Vicuna v1.5-16K's kind; the fixture's factor is in its config.json) against
/// transformers' own linear-scaling code: tiny-fp16's weights under tiny-fp16-rope-linear's
/// config (scripts/make-rope-linear-fixture.py). Without the factor the logits from position 1 on
/// and the greedy tokens differ.
#[test]
fn linear_rope_scaling_matches_transformers() {
    let tmp = fixture_copy("tiny-fp16", &["config.json", "expected.json"]);
    for f in ["config.json", "expected.json"] {
        std::fs::copy(fixture("tiny-fp16-rope-linear").join(f), tmp.path().join(f)).unwrap();
    }
    let ckpt = Checkpoint::open(tmp.path()).unwrap();
    assert!(ckpt.config.rope_linear_factor > 1.0);
    check_fixture_at(tmp.path(), "tiny-fp16-rope-linear");
}

#[test]
fn tiny_sym_g32_matches_transformers() {
    check_fixture("tiny-sym-g32");
}

#[test]
fn tiny_asym_per_channel_matches_transformers() {
    check_fixture("tiny-asym-gall");
}

#[test]
fn tiny_sym_act_order_g64_matches_transformers() {
    check_fixture("tiny-sym-act-g64");
}

#[test]
fn tiny_asym_act_order_g32_matches_transformers() {
    check_fixture("tiny-asym-act-g32");
}

/// Every fixture folder the scripts wrote is one the tests above check (tiny-fp16-rope-linear,
/// a config and outputs over tiny-fp16's weights, by linear_rope_scaling_matches_transformers).
#[test]
fn every_fixture_folder_is_checked() {
    let mut found: Vec<String> = std::fs::read_dir(fixture(""))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tiny-"))
        .collect();
    found.sort();
    let mut listed: Vec<String> = FIXTURES.iter().map(|s| s.to_string()).collect();
    listed.push("tiny-fp16-rope-linear".into());
    listed.sort();
    assert_eq!(found, listed);
}

/// The fixtures are what their names say, as the loader reads them (so the matches above
/// cover act-order, asymmetric zeros and every group size, not five copies of one case).
#[test]
fn fixtures_cover_the_advertised_variants() {
    let layer = |name: &str, prefix: &str| {
        let ck = Checkpoint::open(&fixture(name)).unwrap();
        match ck.linear(prefix).unwrap() {
            LinearWeights::Quant(q) => Some(q),
            LinearWeights::Dense { .. } => None,
        }
    };
    assert!(layer("tiny-fp16", "model.layers.0.self_attn.q_proj").is_none());
    for (name, sym, act, group) in [
        ("tiny-sym-g32", true, false, 32),
        ("tiny-asym-gall", false, false, 192),
        ("tiny-sym-act-g64", true, true, 64),
        ("tiny-asym-act-g32", false, true, 32),
    ] {
        let q = layer(name, "model.layers.1.mlp.down_proj").expect("quantized");
        assert_eq!((q.k, q.n), (192, 64), "{name}");
        assert_eq!(q.symmetric, sym, "{name}");
        assert_eq!(q.is_act_order(), act, "{name}");
        assert_eq!(q.group_size, group, "{name}");
    }
    // The planted all-positive column of layer 0 (see the script) has true zero 1 in v1.
    let q = layer("tiny-asym-act-g32", "model.layers.0.mlp.up_proj").unwrap();
    assert!((0..q.groups()).all(|g| q.zero(g, 0) == 1));
}

/// A copy of tiny-fp16 without `lm_head.weight`, with `tie_word_embeddings` set as given.
fn fp16_without_lm_head(tie: bool) -> tempfile::TempDir {
    let src = fixture("tiny-fp16");
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != "lm_head.weight")
        .collect();
    let out = safetensors::serialize(kept, None).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), out).unwrap();
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    cfg["tie_word_embeddings"] = serde_json::Value::Bool(tie);
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    dir
}

#[test]
fn tied_lm_head_reuses_the_embedding_and_a_missing_untied_one_is_named() {
    let dir = fp16_without_lm_head(true);
    let ck = Checkpoint::open(dir.path()).unwrap();
    let w = LlamaWeights::from_checkpoint(&ck).unwrap();
    let (h, v) = (ck.config.hidden_size, ck.config.vocab_size);
    // lm_head [hidden, vocab] is the embedding [vocab, hidden] transposed.
    for (t, j) in [(0, 0), (5, 17), (v - 1, h - 1)] {
        assert_eq!(w.lm_head.w[j * v + t], w.embed[t * h + j]);
    }
    CpuEngine::new(w, ck.config.clone())
        .unwrap()
        .forward(&[1, 2])
        .unwrap();

    let dir = fp16_without_lm_head(false);
    let ck = Checkpoint::open(dir.path()).unwrap();
    let e = LlamaWeights::from_checkpoint(&ck).unwrap_err().to_string();
    assert!(e.contains("lm_head.weight"), "{e}");
}

/// A text prompt, generation stopped at EOS: a copy of the fixture whose config names as
/// eos_token_id the 4th greedy id (the first not generated before it) stops there, with
/// stop = "eos" and the EOS id as the last token.
#[test]
fn cli_decode_stops_at_the_checkpoints_eos() {
    let args = |dir: &str, ignore: bool| {
        let mut a = vec![
            "decode",
            "--backend",
            "cpu",
            "--checkpoint",
            dir,
            "--prompt",
            "Tell me a story.",
            "--template",
            "v1.1",
            "--max-new-tokens",
            "16",
            "--greedy",
            "--json",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        if ignore {
            a.push("--ignore-eos".into());
        }
        a
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let o = lab(&a);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sym-g32");
    let ids_of = |v: &serde_json::Value| -> Vec<u64> {
        v["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap())
            .collect()
    };
    let free = run(args(src.to_str().unwrap(), true));
    let ids = ids_of(&free);
    assert_eq!(ids.len(), 16);
    let at = (3..ids.len())
        .find(|&i| !ids[..i].contains(&ids[i]))
        .expect("a new id after the third");
    let tmp = fixture_copy("tiny-sym-g32", &[]);
    let cfg_path = tmp.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["eos_token_id"] = ids[at].into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let stopped = run(args(tmp.path().to_str().unwrap(), false));
    assert_eq!(stopped["stop"], "eos", "{stopped}");
    assert_eq!(ids_of(&stopped), ids[..=at].to_vec());
    assert!(stopped["text"].is_string(), "{stopped}");
    // --ignore-eos on the same copy runs to the limit.
    let ignored = run(args(tmp.path().to_str().unwrap(), true));
    assert_eq!(ignored["stop"], "max_new_tokens");
    assert_eq!(ignored["tokens"], free["tokens"]);
    // Every entry of a list counts, and generation_config.json's (what transformers' generate
    // reads) counts beside config.json's: LLaMA files of March 2023 name another token there.
    let unused = (0..free["tokens"].as_array().unwrap().len() as u64 + 300)
        .find(|i| !ids.contains(i) && *i > 2)
        .unwrap();
    for (config_eos, generation_eos) in [
        (serde_json::json!([unused, ids[at]]), None),
        (
            serde_json::json!(unused),
            Some(serde_json::json!({ "eos_token_id": ids[at] })),
        ),
        (
            serde_json::Value::Null,
            Some(serde_json::json!({ "eos_token_id": [unused, ids[at]] })),
        ),
    ] {
        cfg["eos_token_id"] = config_eos.clone();
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let generation = tmp.path().join("generation_config.json");
        match &generation_eos {
            Some(g) => std::fs::write(&generation, g.to_string()).unwrap(),
            None => {
                let _ = std::fs::remove_file(&generation);
            }
        }
        let stopped = run(args(tmp.path().to_str().unwrap(), false));
        assert_eq!(
            ids_of(&stopped),
            ids[..=at].to_vec(),
            "config {config_eos}, generation_config {generation_eos:?}"
        );
    }
}

#[test]
fn cli_decode_json_gives_the_greedy_tokens() {
    let exp = expected(&fixture("tiny-sym-g32"));
    let case = &exp.prompts[1];
    let ids: Vec<String> = case.ids.iter().map(|i| i.to_string()).collect();
    let dir = fixture("tiny-sym-g32");
    let out = lab(&[
        "decode",
        "--backend",
        "cpu",
        "--checkpoint",
        dir.to_str().unwrap(),
        "--prompt-ids",
        &ids.join(","),
        "--max-new-tokens",
        "16",
        "--greedy",
        "--ignore-eos",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lab decode failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let tokens: Vec<u32> = serde_json::from_value(v["tokens"].clone()).unwrap();
    assert_eq!(tokens, case.greedy_tokens);
    let prompt: Vec<u32> = serde_json::from_value(v["prompt_tokens"].clone()).unwrap();
    assert_eq!(prompt, case.ids);
    assert!(v["text"].is_string(), "the fixture has a tokenizer: {v}");
    assert_eq!(v["stop"], "max_new_tokens");
    assert_eq!(v["quantization"]["group_size"], 32);
    for t in ["load_s", "prefill_s", "decode_s", "decode_tokens_per_s"] {
        assert!(
            v["timings"][t].as_f64().is_some_and(|x| x >= 0.0),
            "timings.{t}: {v}"
        );
    }
}

#[test]
fn cli_decode_text_prompt_and_top_p_are_repeatable() {
    let run = |seed: &str| {
        let out = lab(&[
            "decode",
            "--backend",
            "cpu",
            "--model",
            "tiny",
            "--prompt",
            "Tell me a story.",
            "--template",
            "v1.1",
            "--max-new-tokens",
            "8",
            "--top-p",
            "0.9",
            "--temperature",
            "0.8",
            "--seed",
            seed,
            "--ignore-eos",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let (a, b) = (run("3"), run("3"));
    assert_eq!(a["tokens"], b["tokens"]);
    assert_eq!(a["tokens"].as_array().unwrap().len(), 8);
    // The v1.1 template went through the tokenizer: BOS first, then the system line.
    let prompt = a["prompt_tokens"].as_array().unwrap();
    assert_eq!(prompt[0], 1);
    assert!(prompt.len() > 30, "{a}");
    assert_eq!(a["sampling"]["mode"], "top_p");
    // One margin per new token, each a fraction of the nucleus mass in [0, 0.5].
    let m = a["top_p_margins"].as_array().unwrap();
    assert_eq!(m.len(), 8, "{a}");
    assert!(
        m.iter().all(|v| (0.0..=0.5).contains(&v.as_f64().unwrap())),
        "{a}"
    );
}

#[test]
fn cli_decode_refuses_gpu_and_bad_flags_with_clear_messages() {
    let out = lab(&[
        "decode",
        "--backend",
        "gpu",
        "--model",
        "tiny",
        "--prompt-ids",
        "1",
    ]);
    // Without a GPU the GPU backend must refuse clearly and point at the CPU backend; with one it
    // runs (that path is covered by tests/gpu_decode.rs).
    if gptq_lab::cuda::gpu_unavailable_reason(0).is_some() {
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no CUDA device") && err.contains("--backend cpu"),
            "{err}"
        );
    }

    let out = lab(&[
        "decode",
        "--backend",
        "cpu",
        "--model",
        "tiny",
        "--prompt-ids",
        "1,x",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--prompt-ids") && err.contains("'x'"), "{err}");

    let out = lab(&[
        "decode",
        "--backend",
        "cpu",
        "--model",
        "tiny",
        "--prompt-ids",
        "1,999",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("vocab_size 320"));

    // The GPU backend dumps logits only when generating from a checkpoint (refused before any
    // GPU is opened, so the same answer with or without one).
    let out = lab(&[
        "decode",
        "--backend",
        "gpu",
        "--model",
        "vicuna-7b",
        "--dump-logits",
        "/nonexistent/x.json",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--dump-logits") && err.contains("--checkpoint"),
        "{err}"
    );
}

/// A checkpoint whose only tokenizer is a sentencepiece tokenizer.model (as the original LLaMA
/// and Vicuna folders ship it): `lab decode --prompt` tokenizes with it (BOS first, as
/// sentencepiece encodes the rendered template) and gives the same tokens as the same ids
/// passed with --prompt-ids; the printed text is the model's decode of the generated ids.
#[test]
fn cli_decode_reads_a_lone_sentencepiece_tokenizer_model() {
    use gptq_lab::model::template::Template;
    use gptq_lab::model::tokenizer::TextTokenizer;
    let tmp = fixture_copy("tiny-sym-g32", &["tokenizer.json"]);
    let model = fixture("tokenizer-sp").join("tokenizer.model");
    std::fs::copy(&model, tmp.path().join("tokenizer.model")).unwrap();
    let dir = tmp.path().to_str().unwrap();
    let run = |prompt: &[&str]| -> serde_json::Value {
        let mut a = vec!["decode", "--backend", "cpu", "--checkpoint", dir];
        a.extend_from_slice(prompt);
        a.extend([
            "--max-new-tokens",
            "6",
            "--greedy",
            "--ignore-eos",
            "--json",
        ]);
        let o = lab(&a);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let by_text = run(&["--prompt", "Tell me a story.", "--template", "v1.1"]);
    let tok = TextTokenizer::from_sentencepiece(&model, true).unwrap();
    let want = tok
        .encode(&Template::VicunaV11.render("Tell me a story."), true)
        .unwrap();
    assert_eq!(want[0], 1);
    assert!(want.contains(&tok.token_id("\u{2581}story").unwrap()));
    let prompt: Vec<u32> = serde_json::from_value(by_text["prompt_tokens"].clone()).unwrap();
    assert_eq!(prompt, want);
    let ids = want
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let by_ids = run(&["--prompt-ids", &ids]);
    assert_eq!(by_text["tokens"], by_ids["tokens"]);
    let generated: Vec<u32> = serde_json::from_value(by_text["tokens"].clone()).unwrap();
    assert_eq!(by_text["text"], tok.decode(&generated).unwrap());
}

/// generation_config.json's sampling, as transformers' generate reads it: do_sample false is
/// greedy, do_sample true samples at its top_p / temperature; a flag wins over the file; a file
/// without do_sample leaves the lab's defaults; a value generate would refuse is named.
#[test]
fn cli_decode_samples_as_generation_config_says_unless_a_flag_does() {
    let tmp = fixture_copy("tiny-sym-g32", &[]);
    let dir = tmp.path().to_str().unwrap();
    let gen = tmp.path().join("generation_config.json");
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut a = vec![
            "decode",
            "--backend",
            "cpu",
            "--checkpoint",
            dir,
            "--prompt-ids",
            "1,55,53",
            "--max-new-tokens",
            "12",
            "--ignore-eos",
            "--seed",
            "5",
            "--json",
        ];
        a.extend_from_slice(extra);
        let o = lab(&a);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let mode = |v: &serde_json::Value| v["sampling"]["mode"].as_str().unwrap().to_string();
    // The settings are f32: compared to their decimal within f32 rounding.
    let setting = |v: &serde_json::Value, key: &str, want: f64| {
        let got = v["sampling"][key].as_f64().unwrap();
        assert!((got - want).abs() < 1e-6, "{key}: {got} vs {want}: {v}");
    };
    // No file: the lab's defaults.
    let lab_default = run(&[]);
    setting(&lab_default, "top_p", 0.9);
    setting(&lab_default, "temperature", 0.7);
    let greedy = run(&["--greedy"]);
    // do_sample false: greedy, the same tokens as --greedy; a flag asks to sample anyway.
    std::fs::write(&gen, r#"{"do_sample": false, "eos_token_id": 2}"#).unwrap();
    let v = run(&[]);
    assert_eq!(mode(&v), "greedy");
    assert_eq!(v["tokens"], greedy["tokens"]);
    assert!(v["sampling"]["from"]
        .as_str()
        .unwrap()
        .contains("generation_config.json"));
    assert_eq!(mode(&run(&["--top-p", "0.8"])), "top_p");
    // do_sample true: its settings, the same draw as the same flags; a flag wins, 1.0 fills in.
    std::fs::write(
        &gen,
        r#"{"do_sample": true, "temperature": 0.5, "top_p": 0.6, "top_k": 40}"#,
    )
    .unwrap();
    let v = run(&[]);
    assert_eq!(mode(&v), "top_p");
    setting(&v, "top_p", 0.6);
    setting(&v, "temperature", 0.5);
    assert!(v["sampling"]["from"].as_str().unwrap().contains("top_k 40"));
    let by_flags = run(&["--top-p", "0.6", "--temperature", "0.5"]);
    assert_eq!(v["tokens"], by_flags["tokens"]);
    let v = run(&["--top-p", "0.95"]);
    setting(&v, "top_p", 0.95);
    setting(&v, "temperature", 0.5);
    std::fs::write(&gen, r#"{"do_sample": true}"#).unwrap();
    let v = run(&[]);
    setting(&v, "top_p", 1.0);
    setting(&v, "temperature", 1.0);
    // No top_k in the file: generate's default 50 is named as not applied.
    let from = |v: &serde_json::Value| v["sampling"]["from"].as_str().unwrap().to_string();
    assert!(from(&v).contains("default top_k 50"), "{v}");
    // A value a flag replaces is not read: a bad one in the file does not stop the run.
    std::fs::write(&gen, r#"{"do_sample": true, "temperature": 0, "top_p": 7}"#).unwrap();
    let v = run(&["--temperature", "0.5", "--top-p", "0.6"]);
    assert_eq!(v["tokens"], by_flags["tokens"]);
    // What else generate would apply is named; fields at generate's defaults are not.
    std::fs::write(
        &gen,
        r#"{"do_sample": false, "repetition_penalty": 1.1, "num_beams": 1, "min_length": 0}"#,
    )
    .unwrap();
    let v = run(&[]);
    assert_eq!(v["tokens"], greedy["tokens"]);
    assert!(from(&v).contains("repetition_penalty 1.1"), "{v}");
    assert!(
        !from(&v).contains("num_beams") && !from(&v).contains("min_length"),
        "{v}"
    );
    // generate's length (max_length: prompt included) is not the lab's: named with the flag's.
    std::fs::write(&gen, r#"{"do_sample": false, "max_length": 4096}"#).unwrap();
    let v = run(&[]);
    assert!(
        from(&v).contains("sets max_length 4096, not read: the run's length is --max-new-tokens"),
        "{v}"
    );
    // top_p 0 keeps one token (transformers' warper keeps at least one): greedy.
    std::fs::write(&gen, r#"{"do_sample": true, "top_p": 0.0}"#).unwrap();
    let v = run(&[]);
    assert_eq!(mode(&v), "greedy");
    assert_eq!(v["tokens"], greedy["tokens"]);
    // No do_sample: the lab's defaults, as with no file.
    std::fs::write(&gen, r#"{"temperature": 0.1, "eos_token_id": 2}"#).unwrap();
    assert_eq!(run(&[])["tokens"], lab_default["tokens"]);
    // Values generate would refuse are named with the file.
    for bad in [
        r#"{"do_sample": true, "top_p": 1.5}"#,
        r#"{"do_sample": "yes"}"#,
        r#"{"do_sample": true, "temperature": -1}"#,
        r#"{"do_sample": true, "temperature": 0.0}"#,
        // > 0 in the file, but not as the engines' f32: inf and 0.
        r#"{"do_sample": true, "temperature": 1e308}"#,
        r#"{"do_sample": true, "temperature": 1e-320}"#,
    ] {
        std::fs::write(&gen, bad).unwrap();
        let o = lab(&[
            "decode",
            "--backend",
            "cpu",
            "--checkpoint",
            dir,
            "--prompt-ids",
            "1,55",
        ]);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && e.contains("generation_config.json"),
            "{bad}: {e}"
        );
    }
}

/// `--template v0` ends the text at its "###" turn separator, end to end: a made-up
/// sentencepiece tokenizer whose pieces are unreachable from text (so the prompt is the same
/// bytes under both) spells, in its second version, the first generated piece as "###". The
/// same greedy tokens then stop there ("stop_str"), the text ends before it, streamed or not.
#[test]
fn cli_decode_v0_stops_at_its_turn_separator() {
    use gptq_lab::model::sentencepiece::test_model::{model_bytes, Spec};
    let tmp = fixture_copy("tiny-sym-g32", &["tokenizer.json"]);
    // The prompt is all byte tokens (~260): room for it and the new tokens.
    let cfg_path = tmp.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["max_position_embeddings"] = 512.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    // Ids 259..320 (the model's vocabulary): "p259", ... — no single character is a piece, so
    // no merge ever makes one, and a renamed piece is only ever generated, never encoded.
    let first = 3 + 256;
    let mut names: Vec<String> = (first..320).map(|i| format!("p{i}")).collect();
    let write = |names: &[String]| {
        let pieces: Vec<(&str, f32, u64)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), -(i as f32), 1))
            .collect();
        std::fs::write(
            tmp.path().join("tokenizer.model"),
            model_bytes(&pieces, &Spec::default()),
        )
        .unwrap();
    };
    write(&names);
    let dir = tmp.path().to_str().unwrap().to_string();
    let run = |json: bool| {
        let mut a = vec![
            "decode",
            "--backend",
            "cpu",
            "--checkpoint",
            &dir,
            "--prompt",
            "Hi",
            "--template",
            "v0",
            "--greedy",
            "--ignore-eos",
            "--max-new-tokens",
            "24",
        ];
        if json {
            a.push("--json");
        }
        let o = lab(&a);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    let parse = |b: Vec<u8>| serde_json::from_slice::<serde_json::Value>(&b).unwrap();
    let free = parse(run(true));
    let tokens: Vec<u64> = serde_json::from_value(free["tokens"].clone()).unwrap();
    assert_eq!(free["stop"], "max_new_tokens");
    let k = (1..tokens.len())
        .find(|&i| tokens[i] >= first as u64)
        .unwrap_or_else(|| {
            panic!("no generated piece (id >= {first}) after the first: {tokens:?}")
        });
    names[tokens[k] as usize - first] = "###".into();
    write(&names);
    let stopped = parse(run(true));
    assert_eq!(stopped["prompt_tokens"], free["prompt_tokens"]);
    assert_eq!(stopped["stop"], "stop_str", "{stopped}");
    let got: Vec<u64> = serde_json::from_value(stopped["tokens"].clone()).unwrap();
    assert_eq!(got, tokens[..=k].to_vec());
    let text = stopped["text"].as_str().unwrap();
    assert!(!text.contains('#'), "{text:?}");
    assert!(
        free["text"].as_str().unwrap().starts_with(text),
        "{text:?} / {free}"
    );
    // Streamed (no --json): the same text and nothing from the separator on.
    let streamed = String::from_utf8(run(false)).unwrap();
    assert_eq!(streamed.trim_end_matches('\n'), text, "{streamed:?}");
}
