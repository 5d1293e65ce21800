//! `lab quantize` end to end on the tiny fp16 fixture: what is written reloads bit-exactly and is
//! byte-identical to the in-memory writer's file, the file-backed hidden states give the codes the
//! in-memory ones do, GPTQ beats RTN on every linear of a real forward pass, and bad input (or a
//! failure in a late layer) leaves nothing behind.

use gptq_lab::gptq::{GptqParams, ZeroFormat};
use gptq_lab::model::checkpoint::{Checkpoint, LinearWeights};
use gptq_lab::model::tokenizer::TextTokenizer;
use gptq_lab::quantize::calib::EVAL_TEXT;
use gptq_lab::quantize::perplexity::{cpu_engine, perplexity};
use gptq_lab::quantize::{
    quantize_checkpoint, quantize_model, quantize_model_in, write_model, CalibSource, Method,
    QuantizeOptions,
};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-fp16");
const TINY_GPTQ: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-sym-g32");

fn opts(
    out: &Path,
    group_size: i32,
    sym: bool,
    act_order: bool,
    format: ZeroFormat,
) -> QuantizeOptions {
    QuantizeOptions {
        checkpoint: PathBuf::from(TINY),
        calib: CalibSource::Default,
        out: out.to_path_buf(),
        method: Method::Gptq,
        params: GptqParams {
            group_size,
            sym,
            act_order,
            ..GptqParams::default()
        },
        format,
        // 4 x 128 tokens keeps the test fast; the model's inputs are still correlated.
        seqlen: Some(128),
        nsamples: Some(4),
        progress: false,
        hessian: gptq_lab::gptq::HessianBackend::auto(),
    }
}

/// Nothing but `keep` in `dir`: no staging folder, no partial output.
fn assert_only(dir: &Path, keep: &[&str]) {
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for n in &names {
        assert!(
            keep.contains(&n.as_str()),
            "left behind: {n} (all: {names:?})"
        );
    }
}

#[test]
fn written_checkpoint_reloads_bit_exactly_and_beats_rtn() {
    for (gs, sym, act, fmt) in [
        (32, false, true, ZeroFormat::V1),
        (64, true, false, ZeroFormat::V2),
        (-1, false, false, ZeroFormat::V2),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("q");
        let o = opts(&out, gs, sym, act, fmt);
        let summary = quantize_checkpoint(&o).unwrap();
        // The pass is deterministic, so a second in-memory run gives the layers that were written.
        let mem = quantize_model(&o, &Checkpoint::open(Path::new(TINY)).unwrap()).unwrap();
        let ck = Checkpoint::open(&out).unwrap();
        let q = ck.quant.as_ref().expect("a quantize config");
        assert_eq!(
            (q.group_size, q.sym, q.desc_act, q.format),
            (gs, sym, act, fmt)
        );
        assert_eq!(mem.layers.len(), 14);
        for (prefix, layer) in &mem.layers {
            match ck.linear(prefix).unwrap() {
                LinearWeights::Quant(l) => assert_eq!(&l, layer, "{prefix} g{gs}"),
                LinearWeights::Dense { .. } => panic!("{prefix} was written unquantized"),
            }
            if act && gs != -1 {
                assert!(layer.is_act_order(), "{prefix}: act-order g_idx expected");
            }
        }
        // Unquantized tensors are copied exactly.
        let src = Checkpoint::open(Path::new(TINY)).unwrap();
        for name in [
            "model.embed_tokens.weight",
            "lm_head.weight",
            "model.norm.weight",
        ] {
            assert_eq!(
                ck.tensor_f32(name).unwrap(),
                src.tensor_f32(name).unwrap(),
                "{name}"
            );
        }
        assert!(out.join("tokenizer.json").is_file());
        assert_only(tmp.path(), &["q"]);
        // Published as a folder the user made, not the private (0700) staging folder.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o755, "{}", out.display());
        }
        assert!(summary.peak_rss_bytes.is_some_and(|b| b > 0));
        // 4 sequences of 128 tokens (opts).
        assert_eq!(
            (summary.seqlen, summary.nsamples, summary.calib_tokens),
            (128, 4, 512)
        );
        // GPTQ's whole point: lower output error than RTN on the real layer inputs, every linear
        // (7 per layer of the tiny model's 2: q, k, v, o, gate, up, down).
        assert_eq!(summary.linears.len(), 14);
        for l in &summary.linears {
            assert!(
                l.error < l.rtn_error,
                "{} g{gs}: GPTQ {:.5} vs RTN {:.5}",
                l.name,
                l.error,
                l.rtn_error
            );
        }
    }
}

#[test]
fn gptq_model_stays_closer_to_fp16_than_rtn() {
    let tmp = tempfile::tempdir().unwrap();
    let mut kl = Vec::new();
    for method in [Method::Rtn, Method::Gptq] {
        let out = tmp.path().join(format!("{method:?}"));
        let mut o = opts(&out, 32, true, false, ZeroFormat::V1);
        o.method = method;
        quantize_checkpoint(&o).unwrap();
        let mut model = cpu_engine(&out).unwrap();
        let mut fp16 = cpu_engine(Path::new(TINY)).unwrap();
        // Held-out text (not the calibration text): GPTQ fits the layers to inputs like its
        // calibration data, so the comparison must be on text, not on arbitrary token ids.
        let tok = TextTokenizer::from_file(&Path::new(TINY).join("tokenizer.json")).unwrap();
        let ids = tok.encode(EVAL_TEXT, true).unwrap();
        let p = perplexity(&mut model, Some(&mut fp16), &ids, 128, Some(4)).unwrap();
        kl.push(p.kl_to_reference.unwrap());
    }
    assert!(kl[1] < kl[0], "KL to fp16: GPTQ {} vs RTN {}", kl[1], kl[0]);
}

fn err_of(o: &QuantizeOptions) -> String {
    quantize_checkpoint(o).unwrap_err().to_string()
}

/// A copy of the tiny fp16 checkpoint with its tensors edited by `edit`.
fn edited(
    dir: &Path,
    edit: impl Fn(&str, Dtype, Vec<usize>, Vec<u8>) -> Option<(Dtype, Vec<usize>, Vec<u8>)>,
) {
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(Path::new(TINY).join(f), dir.join(f)).unwrap();
    }
    let bytes = std::fs::read(Path::new(TINY).join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut kept = Vec::new();
    for (name, v) in st.tensors() {
        if let Some(t) = edit(&name, v.dtype(), v.shape().to_vec(), v.data().to_vec()) {
            kept.push((name, t));
        }
    }
    let views: Vec<(String, TensorView)> = kept
        .iter()
        .map(|(n, (dt, s, b))| (n.clone(), TensorView::new(*dt, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
}

#[test]
fn bad_input_is_refused_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let out = root.join("out");
    let base = opts(&out, 32, true, false, ZeroFormat::V1);

    // Group size not dividing K = 64.
    let e = err_of(&QuantizeOptions {
        params: GptqParams {
            group_size: 48,
            ..base.params.clone()
        },
        ..base.clone()
    });
    assert!(
        e.contains("--group") && e.contains("does not divide"),
        "{e}"
    );

    // Calibration too short.
    let ids = root.join("ids.txt");
    std::fs::write(&ids, "1 2 3 4 5").unwrap();
    let e = err_of(&QuantizeOptions {
        calib: CalibSource::Ids(ids.clone()),
        ..base.clone()
    });
    assert!(e.contains("too short: 5 tokens"), "{e}");

    // Already quantized input.
    let e = err_of(&QuantizeOptions {
        checkpoint: PathBuf::from(TINY_GPTQ),
        ..base.clone()
    });
    assert!(e.contains("already quantized"), "{e}");

    // A non-fp16 tensor, and a missing one.
    let f32_dir = root.join("f32");
    edited(&f32_dir, |name, dt, shape, data| {
        if name == "model.layers.1.mlp.up_proj.weight" {
            let f: Vec<u8> = data
                .chunks_exact(2)
                .flat_map(|c| {
                    half::f16::from_le_bytes([c[0], c[1]])
                        .to_f32()
                        .to_le_bytes()
                })
                .collect();
            Some((Dtype::F32, shape, f))
        } else {
            Some((dt, shape, data))
        }
    });
    let e = err_of(&QuantizeOptions {
        checkpoint: f32_dir,
        ..base.clone()
    });
    assert!(
        e.contains("model.layers.1.mlp.up_proj.weight") && e.contains("F32"),
        "{e}"
    );
    let missing_dir = root.join("missing");
    edited(&missing_dir, |name, dt, shape, data| {
        (name != "model.layers.0.self_attn.k_proj.weight").then_some((dt, shape, data))
    });
    let e = err_of(&QuantizeOptions {
        checkpoint: missing_dir,
        ..base.clone()
    });
    assert!(
        e.contains("missing tensor 'model.layers.0.self_attn.k_proj.weight'"),
        "{e}"
    );

    // An unwritable destination (its parent is a file) fails before any work.
    let file = root.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let e = err_of(&QuantizeOptions {
        out: file.join("out"),
        ..base.clone()
    });
    assert!(e.contains("--out") && e.contains("a-file"), "{e}");

    assert_only(root, &["ids.txt", "f32", "missing", "a-file"]);

    // A non-empty output folder is refused and left untouched; an empty one is filled.
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let e = err_of(&base);
    assert!(e.contains("not empty"), "{e}");
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
    std::fs::remove_file(out.join("notes.txt")).unwrap();
    quantize_checkpoint(&base).unwrap();
    assert!(out.join("model.safetensors").is_file());
    assert_only(root, &["ids.txt", "f32", "missing", "a-file", "out"]);
}

#[test]
fn numeric_flags_are_refused_up_front_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let base = opts(&root.join("out"), 32, true, false, ZeroFormat::V1);
    // --damp was checked only when the first layer's solver ran (and never for RTN), its message
    // wrapped in "quantizing 'model.layers.0...'"; --nsamples 0 read as a too-short text.
    for method in [Method::Gptq, Method::Rtn] {
        for damp in [-1.0, 0.0, 1.0, f64::NAN, f64::INFINITY] {
            let e = err_of(&QuantizeOptions {
                method,
                params: GptqParams {
                    damp_percent: damp,
                    ..base.params.clone()
                },
                ..base.clone()
            });
            assert!(
                e.starts_with(&format!(
                    "invalid --damp: {damp}; expected a fraction in (0, 1)"
                )),
                "{method:?} {damp}: {e}"
            );
        }
    }
    let e = err_of(&QuantizeOptions {
        nsamples: Some(0),
        ..base.clone()
    });
    assert!(
        e.starts_with("invalid --nsamples: 0; expected >= 1") && !e.contains("too short"),
        "{e}"
    );
    let e = err_of(&QuantizeOptions {
        seqlen: Some(0),
        ..base.clone()
    });
    assert!(e.starts_with("invalid --seqlen: 0; expected >= 1"), "{e}");
    assert_only(root, &[]);
}

#[test]
fn a_layer_count_beyond_the_tensors_is_refused_naming_config_json() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let huge = root.join("huge");
    edited(&huge, |_, dt, shape, data| Some((dt, shape, data)));
    let cfg = huge.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    // The wanted-tensor list used to be built for every layer first: an allocation abort.
    v["num_hidden_layers"] = serde_json::json!(1_000_000_000_000_000_000u64);
    std::fs::write(&cfg, v.to_string()).unwrap();
    let e = err_of(&QuantizeOptions {
        checkpoint: huge,
        ..opts(&root.join("out"), 32, true, false, ZeroFormat::V1)
    });
    assert!(
        e.contains(&cfg.display().to_string()) && e.contains("num_hidden_layers"),
        "{e}"
    );
    // No staging folder left beside --out.
    assert_only(root, &["huge"]);
}

#[test]
fn a_symlinked_out_is_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir(root.join("empty")).unwrap();
    let link = root.join("link");
    std::os::unix::fs::symlink("empty", &link).unwrap();
    let t = std::time::Instant::now();
    let e = err_of(&opts(&link, 32, true, false, ZeroFormat::V1));
    assert!(
        e.starts_with(&format!(
            "invalid --out: {} is a symbolic link",
            link.display()
        )),
        "{e}"
    );
    // Refused at once (it used to fail at publish, after the whole quantization).
    assert!(t.elapsed().as_secs_f64() < 5.0);
    assert_only(root, &["empty", "link"]);
    assert_eq!(std::fs::read_dir(root.join("empty")).unwrap().count(), 0);
}

#[test]
fn calib_ids_help_says_it_is_a_file() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["quantize", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    let line = help
        .lines()
        .skip_while(|l| !l.contains("--calib-ids"))
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        line.contains("--calib-ids <FILE>") && line.contains("A FILE of calibration token ids"),
        "{help}"
    );
}

#[test]
fn streamed_output_is_byte_identical_to_the_in_memory_writer() {
    for (gs, sym, act, fmt, method) in [
        (32, false, true, ZeroFormat::V1, Method::Gptq),
        (-1, true, false, ZeroFormat::V2, Method::Rtn),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let mut o = opts(&tmp.path().join("streamed"), gs, sym, act, fmt);
        o.method = method;
        quantize_checkpoint(&o).unwrap();
        // The whole-model path: every layer in RAM, one serialize at the end.
        let src = Checkpoint::open(Path::new(TINY)).unwrap();
        let m = quantize_model(&o, &src).unwrap();
        let whole = tmp.path().join("whole");
        write_model(&src, &m, &o, &whole).unwrap();
        let mut files: Vec<String> = std::fs::read_dir(&whole)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert!(
            files.contains(&"model.safetensors".to_string()),
            "{files:?}"
        );
        for f in &files {
            let a = std::fs::read(o.out.join(f)).unwrap();
            let b = std::fs::read(whole.join(f)).unwrap();
            assert!(a == b, "{f} differs (g{gs} {method:?})");
        }
        assert_only(
            &o.out,
            &files.iter().map(String::as_str).collect::<Vec<_>>(),
        );
    }
}

#[test]
fn file_backed_hidden_states_give_the_same_codes_as_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let o = opts(&tmp.path().join("unused"), 32, false, true, ZeroFormat::V2);
    let src = Checkpoint::open(Path::new(TINY)).unwrap();
    let mem = quantize_model(&o, &src).unwrap();
    let file = quantize_model_in(&o, &src, Some(tmp.path())).unwrap();
    assert!(tmp.path().join("activations.f32").is_file());
    assert_eq!(mem.layers.len(), 14);
    assert_eq!(mem.layers, file.layers);
    assert_eq!((mem.stats.len(), file.stats.len()), (14, 14));
    for (a, b) in mem.stats.iter().zip(&file.stats) {
        assert_eq!(
            (&a.name, a.error, a.rtn_error),
            (&b.name, b.error, b.rtn_error)
        );
    }
}

#[test]
fn a_failure_in_a_late_layer_leaves_no_output_and_no_staging() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // The last linear of the last layer gets a NaN: layers before it are quantized and streamed
    // into the staged file before the run fails.
    let bad = root.join("nan");
    edited(&bad, |name, dt, shape, mut data| {
        if name == "model.layers.1.mlp.down_proj.weight" {
            data[2..4].copy_from_slice(&half::f16::NAN.to_le_bytes());
        }
        Some((dt, shape, data))
    });
    let out = root.join("out");
    let e = err_of(&QuantizeOptions {
        checkpoint: bad,
        ..opts(&out, 32, true, false, ZeroFormat::V1)
    });
    assert!(
        e.contains("model.layers.1.mlp.down_proj") && e.contains("not finite"),
        "{e}"
    );
    assert_only(root, &["nan"]);
    // An empty --out folder given by the user stays (empty), nothing is put in it.
    std::fs::create_dir(&out).unwrap();
    let e = err_of(&QuantizeOptions {
        checkpoint: root.join("nan"),
        ..opts(&out, 32, true, false, ZeroFormat::V1)
    });
    assert!(e.contains("not finite"), "{e}");
    assert_only(root, &["nan", "out"]);
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}

/// An fp16 folder whose only tokenizer is a sentencepiece tokenizer.model (as lmsys' Vicuna
/// folders ship): the calibration text is tokenized with it, and the quantized folder carries it.
#[test]
fn a_folder_with_only_a_tokenizer_model_quantizes_and_keeps_it() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(Path::new(TINY).join(f), src.join(f)).unwrap();
    }
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer-sp/tokenizer.model");
    std::fs::copy(&model, src.join("tokenizer.model")).unwrap();
    let out = tmp.path().join("q");
    let mut o = opts(&out, 32, true, false, ZeroFormat::V1);
    o.checkpoint = src;
    quantize_checkpoint(&o).unwrap();
    assert_eq!(
        std::fs::read(out.join("tokenizer.model")).unwrap(),
        std::fs::read(&model).unwrap()
    );
    assert!(!out.join("tokenizer.json").exists());
    let tok = TextTokenizer::from_checkpoint_dir(&out).unwrap().unwrap();
    assert!(tok.path().ends_with("tokenizer.model"));
    assert!(matches!(
        Checkpoint::open(&out)
            .unwrap()
            .linear("model.layers.0.self_attn.q_proj")
            .unwrap(),
        LinearWeights::Quant(_)
    ));
}

#[test]
fn a_calibration_sequence_may_fill_the_whole_context_but_not_exceed_it() {
    // The tiny model's context is 256 positions.
    let tmp = tempfile::tempdir().unwrap();
    let src = Checkpoint::open(Path::new(TINY)).unwrap();
    let o = QuantizeOptions {
        seqlen: Some(256),
        nsamples: Some(2),
        method: Method::Rtn,
        ..opts(&tmp.path().join("unused"), 32, true, false, ZeroFormat::V2)
    };
    let m = quantize_model(&o, &src).unwrap();
    assert_eq!((m.seqlen, m.nsamples, m.layers.len()), (256, 2, 14));
    let e = quantize_model(
        &QuantizeOptions {
            seqlen: Some(257),
            ..o
        },
        &src,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("--seqlen") && e.contains("257 exceeds the model's context of 256"),
        "{e}"
    );
}

/// `lab quantize` refuses a bit width it cannot write and contradicting --sym/--asym by flag,
/// before any work: nothing is written.
#[test]
fn the_cli_refuses_other_bit_widths_and_sym_with_asym_by_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let out_s = out.to_str().unwrap();
    for (extra, code, want) in [
        (&["--bits", "3"][..], 1, "--bits 3: only 4-bit"),
        (&["--bits", "8"], 1, "--bits 8: only 4-bit"),
        (&["--sym", "--asym"], 2, "cannot be used with"),
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_lab"))
            .args(["quantize", "--checkpoint", TINY, "--out", out_s, "--quiet"])
            .args(extra)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{extra:?}: {e}");
        assert!(e.contains(want), "{extra:?}: {e}");
        if code == 2 {
            assert!(e.contains("--sym") && e.contains("--asym"), "{e}");
        }
        assert!(!out.exists(), "{extra:?}: nothing written");
    }
}
