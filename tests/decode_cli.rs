//! `lab decode` flags that are refused before any weights load: the GPU bench's (before any device
//! is opened) and the CPU backend's. A bad value names its flag and what was expected, with or
//! without a GPU, and nothing panics. Also `lab tokenize`, the tokenizer a text prompt goes through.

mod common;
use common::{lab, stderr};

#[test]
fn bad_bench_lists_name_their_flag_before_touching_a_gpu() {
    let bench = ["decode", "--backend", "gpu", "--model", "vicuna-7b"];
    for (flag, value, expect) in [
        ("--v6-one-per-sm", "32768,lots", "bytes per block"),
        ("--pdl-small-plain", "16k", "bytes per block"),
        ("--pdl-prefetch-variant", "gemv_v2_vec=16k", "VARIANT=BYTES"),
        ("--pdl-prefetch-variant", "gemv_v99=16384", "VARIANT=BYTES"),
        (
            "--pdl-prefetch-variant",
            "gemm_v2_mma=16384",
            "VARIANT=BYTES",
        ),
        ("--prefill-list", "128,-5", "positive prompt lengths"),
    ] {
        let mut args = bench.to_vec();
        args.extend([flag, value]);
        let o = lab(&args);
        let e = stderr(&o);
        assert!(!o.status.success(), "{flag} {value}: {e}");
        assert!(
            e.contains(flag) && e.contains(expect),
            "{flag} {value}: {e}"
        );
        assert!(!e.contains("panicked"), "{e}");
    }
    // A bad --prefill-int4 is clap's: it names the flag and the accepted values.
    let mut args = bench.to_vec();
    args.extend(["--prefill-int4", "fast"]);
    let o = lab(&args);
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("--prefill-int4") && e.contains("dequant"),
        "{e}"
    );
}

#[test]
fn cpu_decode_refuses_an_overflowing_length_an_unknown_model_and_an_empty_id() {
    let ck = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-sym-g32");
    let run = |extra: &[&str]| {
        let mut a = vec!["decode", "--backend", "cpu"];
        a.extend(extra);
        let o = lab(&a);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {e}");
        assert!(!e.contains("panicked"), "{e}");
        e
    };
    // prompt + max_new_tokens wrapped to 0 and passed the context check; then the token buffer
    // was sized from the flag (capacity overflow).
    for (n, prompt, most) in [("18446744073709551615", "1", 255), ("255", "1,2", 254)] {
        let e = run(&[
            "--checkpoint",
            ck,
            "--prompt-ids",
            prompt,
            "--max-new-tokens",
            n,
        ]);
        assert!(
            e.contains(&format!("--max-new-tokens {n}"))
                && e.contains("context of 256")
                && e.contains(&format!("at most {most} new tokens")),
            "{e}"
        );
    }
    let e = run(&["--model", "nosuch", "--prompt-ids", "1"]);
    assert!(
        e.contains("--model nosuch: unknown model")
            && e.contains("tiny")
            && !e.contains("Synthetic"),
        "{e}"
    );
    let e = run(&["--checkpoint", ck, "--prompt-ids", "1,,2"]);
    assert!(
        e.contains("--prompt-ids") && e.contains("empty item"),
        "{e}"
    );
}

#[test]
fn cpu_decode_refuses_the_gpu_engines_flags_instead_of_ignoring_them() {
    let ck = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-sym-g32");
    let base = [
        "decode",
        "--checkpoint",
        ck,
        "--prompt-ids",
        "1",
        "--max-new-tokens",
        "2",
    ];
    // Each ran the CPU engine as if the flag were not there (exit 0). `auto` runs the CPU
    // engine too.
    for backend in [&["--backend", "cpu"][..], &["--backend", "auto"], &[]] {
        for (flag, value) in [
            ("--prefill-chunk", "0"),
            ("--group", "48"),
            ("--ctx-list", "0"),
            ("--weights", "fp8"),
            ("--steps", "0"),
            ("--int4-kernel", "gemv_v6_pipe"),
            ("--root", "."),
        ] {
            let mut a = base.to_vec();
            a.extend(backend);
            a.extend([flag, value]);
            let o = lab(&a);
            let e = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{backend:?} {flag} {value}: {e}");
            assert!(
                e.contains(&format!("{flag}: a flag of the GPU engine"))
                    && e.contains("--backend gpu"),
                "{backend:?} {flag} {value}: {e}"
            );
            assert!(o.stdout.is_empty(), "{backend:?} {flag}: nothing generated");
        }
    }
    // The GPU flags' defaults (not typed) do not count.
    let mut a = base.to_vec();
    a.extend(["--backend", "cpu", "--json"]);
    let o = lab(&a);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn an_unknown_int4_kernel_or_a_negative_id_is_refused_by_its_flag_on_any_backend() {
    let ck = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-sym-g32");
    for backend in ["cpu", "gpu"] {
        let o = lab(&[
            "decode",
            "--backend",
            backend,
            "--checkpoint",
            ck,
            "--prompt-ids",
            "1",
            "--int4-kernel",
            "auto,nosuch",
        ]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{backend}: {e}");
        assert!(
            e.contains("invalid value 'nosuch' for '--int4-kernel")
                && e.contains("no variant 'nosuch'"),
            "{backend}: {e}"
        );
    }
    // "-1" was taken for a short flag (clap's "unexpected argument '-1' found").
    let o = lab(&[
        "decode",
        "--backend",
        "cpu",
        "--checkpoint",
        ck,
        "--prompt-ids",
        "-1",
    ]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("--prompt-ids") && e.contains("'-1'"), "{e}");
}

/// config.json's eos_token_id must be a token of the model (it was dropped silently, so the
/// generation never stopped where the model says), and a prompt longer than the whole context
/// says so instead of advising "at most 0 new tokens".
#[test]
fn a_bad_eos_id_and_a_prompt_past_the_context_are_named() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sym-g32");
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    let cfg_path = tmp.path().join("config.json");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let vocab = cfg["vocab_size"].as_u64().unwrap();
    let ck = tmp.path().to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut a = vec!["decode", "--backend", "cpu", "--checkpoint", ck];
        a.extend(extra);
        let o = lab(&a);
        (o.status.code(), stderr(&o))
    };
    for bad in [
        serde_json::json!(-5),
        serde_json::json!(vocab),
        serde_json::json!("2"),
    ] {
        let mut c = cfg.clone();
        c["eos_token_id"] = bad.clone();
        std::fs::write(&cfg_path, serde_json::to_string(&c).unwrap()).unwrap();
        let (code, e) = run(&["--prompt-ids", "1", "--max-new-tokens", "2"]);
        assert_eq!(code, Some(1), "{bad}: {e}");
        assert!(
            e.contains("config.json") && e.contains(&format!("eos_token_id {bad}")),
            "{bad}: {e}"
        );
        // --ignore-eos does not read it.
        let (code, e) = run(&["--prompt-ids", "1", "--max-new-tokens", "2", "--ignore-eos"]);
        assert_eq!(code, Some(0), "{bad}: {e}");
    }
    let mut c = cfg.clone();
    c["max_position_embeddings"] = serde_json::json!(2);
    std::fs::write(&cfg_path, serde_json::to_string(&c).unwrap()).unwrap();
    let (code, e) = run(&["--prompt-ids", "1,2,3", "--max-new-tokens", "0"]);
    assert_eq!(code, Some(1), "{e}");
    assert!(
        e.contains("prompt alone has 3 tokens") && e.contains("context is 2"),
        "{e}"
    );
    // Linear RoPE scaling (Vicuna v1.5-16K's kind) multiplies the context: 2 x 2 positions.
    c["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 2.0});
    std::fs::write(&cfg_path, serde_json::to_string(&c).unwrap()).unwrap();
    let (code, e) = run(&["--prompt-ids", "1,2,3", "--max-new-tokens", "1"]);
    assert_eq!(code, Some(0), "{e}");
    let (code, e) = run(&["--prompt-ids", "1,2,3", "--max-new-tokens", "2"]);
    assert_eq!(code, Some(1), "{e}");
    assert!(
        e.contains("context of 4") && e.contains("x linear RoPE factor 2"),
        "{e}"
    );
}

/// `lab tokenize`: the fixture's tokenizer.json gives the ids Python's `tokenizers` gave
/// (expected.json), a lone sentencepiece tokenizer.model round-trips text through ids, and a
/// folder without a tokenizer or an id past the vocabulary is named.
#[test]
fn tokenize_gives_the_reference_ids_and_round_trips_through_a_tokenizer_model() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let fixture = root.join("tiny-sym-g32");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("expected.json")).unwrap())
            .unwrap();
    let text = expected["tokenizer_check"]["text"].as_str().unwrap();
    let want = &expected["tokenizer_check"]["ids_with_bos"];
    let json = |args: &[&str]| -> serde_json::Value {
        let mut a = vec!["tokenize", "--json"];
        a.extend_from_slice(args);
        let o = lab(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let fx = fixture.to_str().unwrap();
    let v = json(&["--checkpoint", fx, "--text", text]);
    assert_eq!(&v["ids"], want);
    let no_bos = json(&["--checkpoint", fx, "--text", text, "--no-bos"]);
    assert_eq!(
        no_bos["ids"].as_array().unwrap()[..],
        want.as_array().unwrap()[1..]
    );

    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        root.join("tokenizer-sp/tokenizer.model"),
        tmp.path().join("tokenizer.model"),
    )
    .unwrap();
    let dir = tmp.path().to_str().unwrap();
    let v = json(&["--checkpoint", dir, "--text", "Tell me a story."]);
    let pieces: Vec<&str> = v["pieces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        pieces[..4],
        ["<s>", "\u{2581}Tell", "\u{2581}me", "\u{2581}a"]
    );
    let ids: Vec<String> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.to_string())
        .collect();
    let back = json(&["--checkpoint", dir, "--ids", &ids.join(",")]);
    assert_eq!(back["text"], "Tell me a story.");

    let o = lab(&["tokenize", "--checkpoint", dir, "--ids", "1,5000"]);
    assert!(
        !o.status.success() && stderr(&o).contains("tokenizer.model"),
        "{}",
        stderr(&o)
    );
    let empty = tempfile::tempdir().unwrap();
    let o = lab(&[
        "tokenize",
        "--checkpoint",
        empty.path().to_str().unwrap(),
        "--text",
        "x",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("no tokenizer"),
        "{}",
        stderr(&o)
    );
}

/// `lab tokenize ... | head`: a reader that stops early ends lab quietly (by SIGPIPE, as any Unix
/// tool), not with a panic on the broken pipe (exit 101 and a backtrace).
#[test]
fn a_reader_that_stops_early_ends_lab_without_a_panic() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sym-g32");
    // ~60k ids of JSON: more than a pipe holds, so the write meets the closed end.
    let text = "Tell me a story. ".repeat(3000);
    let mut child = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args([
            "tokenize",
            "--checkpoint",
            dir.to_str().unwrap(),
            "--text",
            &text,
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !e.contains("panicked") && o.status.code() != Some(101),
        "{:?}: {e}",
        o.status
    );
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            o.status.signal(),
            Some(libc::SIGPIPE),
            "{:?}: {e}",
            o.status
        );
    }
}

/// A checkpoint folder whose name is not UTF-8 (a Latin-1 byte from an old archive) works with
/// --json: the path goes into the JSON lossily (serde refuses such a path, which inside json!
/// was a panic), and a file passed where the folder is expected is refused by its flag.
#[test]
#[cfg(unix)]
fn json_output_takes_a_folder_name_that_is_not_utf8_and_a_file_is_not_a_folder() {
    use std::os::unix::ffi::OsStrExt;
    use std::process::Command;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp
        .path()
        .join(std::ffi::OsStr::from_bytes(b"tiny-\xe9t\xe9"));
    std::fs::create_dir(&dir).unwrap();
    common::copy_fixture_into("tiny-sym-g32", &dir, &[]);
    let run = |args: &[&str], path: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_lab"))
            .args(args)
            .arg("--checkpoint")
            .arg(path)
            .output()
            .unwrap()
    };
    for args in [
        &["tokenize", "--text", "hi", "--json"][..],
        &[
            "decode",
            "--backend",
            "cpu",
            "--prompt",
            "hi",
            "--max-new-tokens",
            "2",
            "--greedy",
            "--json",
        ][..],
    ] {
        let o = run(args, &dir);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let named = v
            .get("checkpoint")
            .or_else(|| v.get("tokenizer"))
            .and_then(|p| p.as_str())
            .unwrap();
        assert!(
            named.contains("tiny-\u{fffd}t\u{fffd}"),
            "{args:?}: {named}"
        );
    }
    let o = run(&["tokenize", "--text", "hi"], &dir.join("tokenizer.json"));
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("--checkpoint") && e.contains("is a file; expected the checkpoint's folder"),
        "{e}"
    );
}

/// A prompt id past config.json's vocab_size is refused before any weights load, naming where
/// it came from: the tokenizer's file (a tokenizer of another model) or --prompt-ids.
#[test]
fn a_prompt_id_past_the_vocabulary_names_the_tokenizer_or_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    common::copy_fixture_into("tiny-sym-g32", tmp.path(), &[]);
    // One more token than the model has logits for: id 320 of a 320-row model.
    let tj = tmp.path().join("tokenizer.json");
    let mut t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tj).unwrap()).unwrap();
    t["added_tokens"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "id": 320, "content": "<zz>", "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": false
        }));
    std::fs::write(&tj, t.to_string()).unwrap();
    let dir = tmp.path().to_str().unwrap();
    for backend in ["cpu", "gpu"] {
        let o = lab(&[
            "decode",
            "--backend",
            backend,
            "--checkpoint",
            dir,
            "--prompt",
            "<zz>",
        ]);
        let e = stderr(&o);
        // Without a GPU the gpu backend stops earlier, at the device: nothing to check there.
        if backend == "gpu" && !e.contains("token id") {
            continue;
        }
        assert!(!o.status.success(), "{e}");
        assert!(
            e.contains("--prompt: the tokenizer")
                && e.contains("tokenizer.json")
                && e.contains("gives token id 320")
                && e.contains("config.json's vocab_size 320"),
            "{backend}: {e}"
        );
    }
    let o = lab(&[
        "decode",
        "--backend",
        "cpu",
        "--checkpoint",
        dir,
        "--prompt-ids",
        "1,320",
    ]);
    let e = stderr(&o);
    assert!(
        !o.status.success()
            && e.contains("--prompt-ids: token id 320 is out of range for")
            && e.contains("config.json's vocab_size 320"),
        "{e}"
    );
}

/// Flags that contradict each other are refused by clap, naming both, before anything loads:
/// --greedy with a sampling knob it would override, and two prompts.
#[test]
fn contradicting_decode_flags_are_refused_naming_both() {
    let base = ["decode", "--backend", "cpu", "--model", "tiny"];
    for (extra, a, b) in [
        (
            &["--prompt-ids", "1", "--greedy", "--top-p", "0.5"][..],
            "--greedy",
            "--top-p",
        ),
        (
            &["--prompt-ids", "1", "--greedy", "--temperature", "0.5"],
            "--greedy",
            "--temperature",
        ),
        (
            &["--prompt-ids", "1", "--prompt", "hi"],
            "--prompt-ids",
            "--prompt",
        ),
    ] {
        let o = lab(&[&base[..], extra].concat());
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {e}");
        assert!(
            e.contains("cannot be used with") && e.contains(a) && e.contains(b),
            "{extra:?}: {e}"
        );
        assert!(o.stdout.is_empty(), "{extra:?}: nothing generated");
    }
}

/// The CPU JSON says why generation stopped: the tiny model's greedy run from `lab run`'s prompt
/// meets its EOS (id 2) before the default 16 new tokens; --ignore-eos then runs to exactly 16.
#[test]
fn cpu_json_says_why_it_stopped_and_the_default_length_is_16() {
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut a = vec![
            "decode",
            "--backend",
            "cpu",
            "--model",
            "tiny",
            "--prompt-ids",
            "1,5,9,42",
            "--greedy",
            "--json",
        ];
        a.extend_from_slice(extra);
        let o = lab(&a);
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let v = run(&[]);
    let tokens = v["tokens"].as_array().unwrap();
    assert_eq!(v["stop"], "eos", "{v}");
    assert_eq!(tokens.last().and_then(|t| t.as_u64()), Some(2), "{v}");
    assert!(tokens.len() < 16, "{v}");
    let v = run(&["--ignore-eos"]);
    assert_eq!(v["stop"], "max_new_tokens", "{v}");
    assert_eq!(v["tokens"].as_array().unwrap().len(), 16, "{v}");
}

/// `lab tokenize --ids` checks every id against a tokenizer.json's vocabulary too (not only a
/// sentencepiece model, whose decoder refuses it on its own): an id past it printed an empty
/// piece and exited 0.
#[test]
fn tokenize_ids_past_a_tokenizer_json_vocabulary_are_refused_by_flag() {
    let ck = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-sym-g32");
    let o = lab(&["tokenize", "--checkpoint", ck, "--ids", "1,5000"]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("--ids: 5000") && e.contains("tokenizer.json") && e.contains("320"),
        "{e}"
    );
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}
