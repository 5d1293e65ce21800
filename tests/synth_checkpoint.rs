//! `lab synth-checkpoint`: random GPTQ checkpoints of exact shapes. What is written opens through
//! the checkpoint reader with the settings asked for, its codes centre on the zeros (a rank-one
//! offset would make every token's logits alike), act-order groups are full, a seed fixes every
//! byte, the CPU engine runs it, and bad flags fail before anything is written.

mod common;

use common::{lab, stderr};
use gptq_lab::gptq::ZeroFormat;
use gptq_lab::model::checkpoint::{Checkpoint, LinearWeights};
use gptq_lab::model::config::ModelConfig;
use gptq_lab::quantize::perplexity::cpu_engine;
use gptq_lab::quantize::{write_synthetic_checkpoint, SynthOptions};
use std::path::Path;

/// The tiny fixtures' shapes (grouped KV heads, so k/v are narrower than q).
fn tiny() -> ModelConfig {
    gptq_lab::model::gpu_check::tiny_config()
}

fn opts(out: &Path, group_size: i32, act_order: bool, sym: bool, seed: u64) -> SynthOptions {
    SynthOptions {
        model: tiny(),
        group_size,
        act_order,
        sym,
        format: ZeroFormat::V1,
        seed,
        out: out.to_path_buf(),
    }
}

#[test]
fn written_checkpoint_reads_back_with_the_settings_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, (g, act, sym)) in [(32, true, true), (64, false, false), (-1, true, false)]
        .into_iter()
        .enumerate()
    {
        let out = tmp.path().join(format!("c{i}"));
        let s = write_synthetic_checkpoint(&opts(&out, g, act, sym, 7)).unwrap();
        assert_eq!(s.layers, 2);
        assert!(s.bytes > 0);
        let ck = Checkpoint::open(&out).unwrap();
        assert_eq!(ck.config, {
            let mut c = tiny();
            c.name = ck.config.name.clone();
            c
        });
        let q = ck.quant.as_ref().expect("a GPTQ checkpoint");
        assert_eq!((q.group_size, q.desc_act, q.sym), (g, act, sym), "case {i}");
        assert_eq!(q.format, ZeroFormat::V1);
        assert!(gptq_lab::quantize::synth::is_synthetic(&out));
        let (mut sum, mut count) = (0i64, 0i64);
        for l in 0..2 {
            for (name, k, n) in tiny().layer_linears() {
                let prefix = format!("model.layers.{l}.{name}");
                let LinearWeights::Quant(ql) = ck.linear(&prefix).unwrap() else {
                    panic!("{prefix} is not quantized");
                };
                assert_eq!((ql.k, ql.n), (k, n), "{prefix}");
                let rows = if g < 0 { k } else { g as usize };
                assert_eq!(ql.group_size, rows, "{prefix}");
                assert_eq!(ql.symmetric, sym, "{prefix}");
                // Act-order: a real permutation, every group exactly `rows` rows; else none.
                match (&ql.g_idx, act && rows < k) {
                    (Some(gi), true) => {
                        let mut per = vec![0usize; k.div_ceil(rows)];
                        gi.iter().for_each(|&x| per[x as usize] += 1);
                        assert!(per.iter().all(|&c| c == rows), "{prefix}: {per:?}");
                        assert!(gi.windows(2).any(|w| w[0] > w[1]), "{prefix}: not permuted");
                    }
                    (None, false) => {}
                    (gi, want) => panic!("{prefix}: g_idx {:?} but act-order {want}", gi.is_some()),
                }
                for r in 0..k {
                    for c in 0..n {
                        let q = ql.code(r, c) as i64;
                        let z = ql.zero(ql.group_of(r), c) as i64;
                        assert!((1..=15).contains(&q), "{prefix}: code {q}");
                        assert!(if sym { z == 8 } else { (7..=9).contains(&z) });
                        sum += q - z;
                        count += 1;
                    }
                }
            }
        }
        // Codes have mean exactly 8 (std 4.18 over ~60k codes: 0.02 of sampling error); asymmetric
        // zeros add the error of a mean over a few thousand draws from 7..=9 (~0.02-0.03).
        let mean = sum as f64 / count as f64;
        let tol = if sym { 0.08 } else { 0.15 };
        assert!(mean.abs() < tol, "case {i}: mean code - zero {mean}");
    }
}

#[test]
fn seed_fixes_every_byte_and_the_cpu_engine_runs_it() {
    let tmp = tempfile::tempdir().unwrap();
    let path = |name: &str| tmp.path().join(name);
    write_synthetic_checkpoint(&opts(&path("a"), 32, true, true, 3)).unwrap();
    write_synthetic_checkpoint(&opts(&path("b"), 32, true, true, 3)).unwrap();
    write_synthetic_checkpoint(&opts(&path("c"), 32, true, true, 4)).unwrap();
    let bytes = |n: &str| std::fs::read(path(n).join("model.safetensors")).unwrap();
    assert_eq!(bytes("a"), bytes("b"));
    assert_ne!(bytes("a"), bytes("c"));
    // Random weights, but not degenerate: the greedy ids change from step to step.
    let mut e = cpu_engine(&path("a")).unwrap();
    let mut logits = e.forward(&[1, 55, 53]).unwrap();
    let mut ids = Vec::new();
    for _ in 0..8 {
        let t = (0..logits.len())
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap() as u32;
        ids.push(t);
        logits = e.forward(&[t]).unwrap();
    }
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() >= 4, "greedy ids {ids:?}");
}

#[test]
fn bad_options_fail_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x");
    // 48 does not divide K = 64.
    let e = write_synthetic_checkpoint(&opts(&out, 48, false, true, 1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--group"), "{e}");
    assert!(!out.exists());
    // A non-empty output folder is refused, and left as it was.
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep"), b"mine").unwrap();
    let e = write_synthetic_checkpoint(&opts(&out, 32, false, true, 1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--out") && e.contains("not empty"), "{e}");
    assert_eq!(std::fs::read(out.join("keep")).unwrap(), b"mine");
    // No staging folder left beside it.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("x")]);
}

#[test]
fn cli_writes_real_widths_and_refuses_bad_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("v7");
    let o = out.to_str().unwrap();
    for (args, want) in [
        (vec!["--model", "vicuna-7b", "--layers", "0"], "--layers 0"),
        (vec!["--model", "vicuna-7b", "--layers", "33"], "1..=32"),
        (vec!["--model", "vicuna-7b", "--group", "100"], "--group"),
        (vec!["--model", "gpt2"], "unknown model"),
    ] {
        let mut a = vec!["synth-checkpoint", "--out", o];
        a.extend(args);
        let r = lab(&a);
        assert!(!r.status.success(), "{a:?}");
        assert!(stderr(&r).contains(want), "{a:?}: {}", stderr(&r));
        assert!(!out.exists(), "{a:?} left {o}");
    }
    // The preset lookup's own message offers --checkpoint DIR, a flag this command lacks.
    let r = lab(&["synth-checkpoint", "--out", o, "--model", "nosuch"]);
    assert!(
        stderr(&r)
            .contains("--model: unknown model 'nosuch'; expected one of vicuna-7b, vicuna-13b")
            && !stderr(&r).contains("--checkpoint"),
        "{}",
        stderr(&r)
    );
    // One layer of Vicuna-7B's real widths (K up to 11008, N up to 11008, 32000-token vocab),
    // asymmetric v2 zeros, read back by the CPU engine from the command line; the v1.5-16K
    // preset, so its config.json carries the linear RoPE scaling it is read back with.
    let r = lab(&[
        "synth-checkpoint",
        "--model",
        "vicuna-7b-16k",
        "--layers",
        "1",
        "--asym",
        "--format",
        "v2",
        "--out",
        o,
        "--json",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let s: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(s["layers"], 1);
    let ck = Checkpoint::open(&out).unwrap();
    assert_eq!(ck.config.hidden_size, 4096);
    assert_eq!(
        (ck.config.rope_linear_factor, ck.config.context_len()),
        (4.0, 16384)
    );
    assert_eq!(ck.quant.as_ref().unwrap().format, ZeroFormat::V2);
    let r = lab(&[
        "decode",
        "--backend",
        "cpu",
        "--checkpoint",
        o,
        "--prompt-ids",
        "1,55",
        "--max-new-tokens",
        "2",
        "--greedy",
        "--json",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    // Nobody mistakes it for a model: the engine says where it came from.
    assert!(
        stderr(&r).contains("lab synth-checkpoint"),
        "{}",
        stderr(&r)
    );
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["tokens"].as_array().unwrap().len(), 2);
    assert!(v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t.as_u64().unwrap() < 32000));
}
