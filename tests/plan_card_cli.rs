//! `lab plan --card`: the tokens/s estimate says where its speed model comes from, and says so
//! too when it finds no measured report (then it is the pure roofline, an upper bound).

mod common;
use common::lab;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `lab plan` for Vicuna-7B g128 at ctx 128 on an RTX 4090, reports read under `root`.
fn plan_4090(root: &str, extra: &[&str]) -> std::process::Output {
    let mut a = vec![
        "plan",
        "--model",
        "vicuna-7b",
        "--group",
        "128",
        "--ctx",
        "128",
        "--card",
        "rtx-4090",
        "--root",
        root,
    ];
    a.extend_from_slice(extra);
    lab(&a)
}

#[test]
fn the_card_estimate_names_its_source_or_says_it_has_none() {
    let repo = env!("CARGO_MANIFEST_DIR");
    // The repo: the fit to the committed H100 decode report, with its provenance.
    let o = plan_4090(repo, &[]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("ESTIMATE on GeForce RTX 4090") && out.contains("MEASURED on NVIDIA H100"),
        "{out}"
    );
    // A folder without reports: the roofline, said to be one.
    let empty = tempfile::tempdir().unwrap();
    let o = plan_4090(empty.path().to_str().unwrap(), &[]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("no decode report under") && out.contains("pure roofline"),
        "{out}"
    );
}

/// Act-order is estimated from the report's act-order steps (slower than plain on the same card),
/// and the line says which form it was fitted to.
#[test]
fn act_order_estimates_come_from_act_order_steps() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let tokens_per_s = |extra: &[&str]| {
        let mut a = vec!["--json"];
        a.extend_from_slice(extra);
        let o = plan_4090(repo, &a);
        assert!(o.status.success(), "{}", stdout(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        v["roofline"]["tokens_per_s"].as_f64().unwrap()
    };
    let (plain, act) = (tokens_per_s(&[]), tokens_per_s(&["--act-order"]));
    assert!(
        act < plain && act > 0.8 * plain,
        "act-order {act} vs plain {plain}"
    );
    let out = stdout(&plan_4090(repo, &["--act-order"]));
    assert!(
        out.contains("Int4 act-order decode steps MEASURED"),
        "{out}"
    );
}

/// A report with one plain int4 run of the model and no act-order run: the act-order estimate
/// scales from that run and says it was measured without act-order (not "no report").
#[test]
fn act_order_without_act_order_runs_scales_from_the_plain_run_and_says_so() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let src = std::path::Path::new(repo).join("reports/nvidia-h100-80gb-hbm3/decode.json");
    let runs: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(src).unwrap()).unwrap();
    // 7B's plain auto run only: one model, so no two-model fit either.
    let keep: Vec<serde_json::Value> = runs
        .into_iter()
        .filter(|r| {
            r["model"] == "vicuna-7b"
                && r["weights"]["kind"]["Int4"]["act_order"] == false
                && r["int4_kernel"].as_str().unwrap_or("").starts_with("auto")
        })
        .collect();
    assert_eq!(keep.len(), 1);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("reports/nvidia-h100-80gb-hbm3");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("decode.json"),
        serde_json::to_string(&keep).unwrap(),
    )
    .unwrap();
    let o = plan_4090(root.path().to_str().unwrap(), &["--act-order"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("MEASURED for vicuna-7b") && out.contains("measured WITHOUT act-order"),
        "{out}"
    );
    assert!(!out.contains("no decode report"), "{out}");
}

/// The longest-context table keeps one column per card however large the numbers: a tiny model
/// reaches the search's end (2^24 positions) on every card, shown as ">16M", and a config's
/// longest allowed trained context (2^30 - 1) is shortened, not run into the next column.
#[test]
fn the_longest_context_columns_never_run_together() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let d = tempfile::tempdir().unwrap();
    let src = std::path::Path::new(repo).join("tests/fixtures/tiny-sym-g32");
    for f in ["config.json", "quantize_config.json"] {
        std::fs::copy(src.join(f), d.path().join(f)).unwrap();
    }
    let cfg = std::fs::read_to_string(d.path().join("config.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    let mut v = v.as_object().unwrap().clone();
    v.insert(
        "max_position_embeddings".into(),
        serde_json::json!(1_073_741_823u64),
    );
    std::fs::write(
        d.path().join("config.json"),
        serde_json::to_string(&v).unwrap(),
    )
    .unwrap();
    let o = lab(&[
        "plan",
        "--checkpoint",
        d.path().to_str().unwrap(),
        "--ctx",
        "256",
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    let table = out
        .split("Longest context")
        .nth(1)
        .expect("the longest-context table");
    let row = table
        .lines()
        .find(|l| l.starts_with("tiny-sym-g32"))
        .unwrap_or_else(|| panic!("no model row in {table}"));
    // model, group, trained, then the six generic cards.
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols.len(), 3 + 6, "{row}");
    assert_eq!(cols[2], "1.1e9", "{row}");
    assert!(cols[3..].iter().all(|c| *c == ">16M"), "{row}");
}

#[test]
fn a_cuda_context_allowance_past_any_card_is_refused_by_flag() {
    let o = lab(&[
        "plan",
        "--model",
        "vicuna-7b",
        "--group",
        "128",
        "--context-mib",
        "18446744073709551615",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("--context-mib") && err.contains("18446744073709551615"),
        "{err}"
    );
}

#[test]
fn an_efficiency_without_a_card_is_refused_and_with_one_checked() {
    // Only --card's tokens/s estimate reads --efficiency: without a card any value was accepted
    // and ignored (0, NaN, inf, 5 printed the usual table).
    for v in ["0", "NaN", "inf", "5", "0.5"] {
        let o = lab(&["plan", "--model", "vicuna-7b", "--efficiency", v]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "--efficiency {v}: {err}");
        assert!(
            err.contains("--card") && err.contains("--efficiency"),
            "--efficiency {v}: {err}"
        );
        assert!(o.stdout.is_empty(), "--efficiency {v}: no table");
    }
    for v in ["0", "NaN", "inf", "5", "-1"] {
        let o = plan_4090(env!("CARGO_MANIFEST_DIR"), &["--efficiency", v]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "--efficiency {v}: {err}");
        assert!(
            err.contains(&format!("--efficiency: {v}")) && err.contains("(0, 1]"),
            "--efficiency {v}: {err}"
        );
    }
}

#[test]
fn a_negative_number_for_an_unsigned_flag_is_refused_by_that_flag() {
    // clap took "-5" for a short flag ("unexpected argument '-5' found"), naming no flag.
    for (flag, v) in [
        ("--ctx", "-5"),
        ("--context-mib", "-1"),
        ("--batch", "-2"),
        ("--prefill-chunk", "-512"),
    ] {
        let o = lab(&["plan", "--model", "vicuna-7b", flag, v]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flag} {v}: {err}");
        assert!(
            err.contains(&format!("invalid value '{v}' for '{flag} <")),
            "{flag} {v}: {err}"
        );
    }
    // Negative group sizes still mean per-channel.
    let o = lab(&[
        "plan",
        "--model",
        "vicuna-7b",
        "--group",
        "-1",
        "--ctx",
        "128",
    ]);
    assert!(o.status.success() && stdout(&o).contains("per-ch"), "{o:?}");
}

#[test]
fn without_root_the_reports_come_from_the_source_tree_wherever_it_runs() {
    // Run from a folder with no reports/: the estimate is still the committed report's fit,
    // not the pure roofline (it was, silently in --json, before 2026-11-28).
    let elsewhere = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["plan", "--model", "vicuna-7b", "--group", "128"])
        .args(["--ctx", "128", "--card", "rtx-4090"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("MEASURED on NVIDIA H100"), "{out}");
}

#[test]
fn what_the_estimate_cannot_say_is_refused_or_left_blank() {
    // Batch > 1 has no speed model (the engine decodes one sequence); --ctx 0 no KV cache.
    for (args, want) in [
        (
            vec!["--card", "rtx-4090", "--batch", "4"],
            "--batch 4 with --card",
        ),
        (vec!["--ctx", "0"], "--ctx 0"),
    ] {
        let mut a = vec!["plan", "--model", "vicuna-7b", "--group", "128"];
        a.extend_from_slice(&args);
        let o = lab(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // A model the card cannot hold gets no tokens/s; a context past the trained one is marked.
    let repo = env!("CARGO_MANIFEST_DIR");
    let o = lab(&[
        "plan",
        "--model",
        "vicuna-13b",
        "--dtype",
        "fp16",
        "--ctx",
        "512,4096",
        "--card",
        "rtx-3060",
        "--root",
        repo,
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    let rows: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("On GeForce RTX 3060"))
        .filter(|l| l.starts_with("vicuna-13b"))
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    for r in &rows {
        let cols: Vec<&str> = r.split_whitespace().collect();
        assert_eq!((cols[3], *cols.last().unwrap()), ("no", "-"), "{r}");
    }
    assert!(
        rows[1].contains("4096*") && out.contains("past the model's trained context"),
        "{out}"
    );
}

/// The answer `--card` is asked for: with no --model, 7B, 13B and 33B; each model's line at its
/// trained context lists the group sizes that fit with the table's own tokens/s, and the last
/// line names the largest model the card holds.
#[test]
fn the_card_answer_names_what_fits_with_the_tables_speed() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let plan = |card: &str, ctx: &str| {
        let o = lab(&[
            "plan", "--card", card, "--group", "32,128", "--ctx", ctx, "--root", repo,
        ]);
        let out = stdout(&o);
        assert!(o.status.success(), "{out}");
        let answer = out
            .split("\nWhich fits on ")
            .nth(1)
            .unwrap_or_else(|| panic!("no answer in {out}"))
            .to_string();
        (out, answer)
    };
    let line = |answer: &str, model: &str| {
        answer
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{model} ")))
            .unwrap_or_else(|| panic!("no {model} in {answer}"))
            .to_string()
    };
    // An RTX 4090 (24 GB) holds all three at 2048 positions; 33B is the largest.
    let (out, answer) = plan("rtx-4090", "2048");
    for m in ["vicuna-7b", "vicuna-13b", "vicuna-33b"] {
        let l = line(&answer, m);
        assert!(l.contains("ctx 2048: fits as g32 ("), "{l}");
        // The g128 speed is the estimate table's own figure for that row.
        let row = out
            .lines()
            .skip_while(|l| !l.starts_with("On GeForce RTX 4090"))
            .find(|r| {
                let c: Vec<&str> = r.split_whitespace().collect();
                c.len() > 3 && c[0] == m && c[1] == "g128" && c[2] == "2048"
            })
            .unwrap_or_else(|| panic!("no {m} g128 row in {out}"));
        let tps = row.split_whitespace().nth(8).unwrap();
        assert!(l.contains(&format!("g128 ({tps}")), "{l} vs {row}");
        // 33B's 60 layers lie outside the fitted 7B / 13B (32 / 40): its speeds are marked, in
        // the table and in the answer; 7B's and 13B's are not.
        let deeper = m == "vicuna-33b";
        assert_eq!(row.ends_with('^'), deeper, "{row}");
        assert_eq!(l.contains('^'), deeper, "{l}");
    }
    assert!(
        out.contains("^ EXTRAPOLATED: vicuna-33b (60 layers) outside the 32-40 layers"),
        "{out}"
    );
    let o = lab(&[
        "plan", "--card", "rtx-4090", "--group", "128", "--ctx", "2048", "--root", repo, "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for p in v.as_array().unwrap() {
        let r = &p["roofline"];
        assert_eq!(r["fitted_layers"], serde_json::json!([32, 40]), "{p}");
        let deeper = p["model"] == "vicuna-33b";
        assert_eq!(r["extrapolated"].as_bool(), Some(deeper), "{p}");
    }
    assert!(
        answer.contains(
            "Largest model that fits: vicuna-33b; its most accurate form that fits, of the groups planned, is g32"
        ),
        "{answer}"
    );
    // An RTX 3060 (12 GB): 33B's weights alone exceed it, 13B is the largest.
    let (_, answer) = plan("rtx-3060", "2048");
    let l = line(&answer, "vicuna-33b");
    assert!(
        l.contains("does not fit: needs at least") && !l.contains("at most"),
        "{l}"
    );
    assert!(
        answer.contains("Largest model that fits: vicuna-13b"),
        "{answer}"
    );
    // An 8 GB card at 2048 positions: 13B g32's weights (8.0 GB) do not fit, g128's do but
    // not with a 2048-position cache: the line says how long a context fits instead.
    let (_, answer) = plan("rtx-4060", "2048");
    let l = line(&answer, "vicuna-13b");
    assert!(
        l.contains("does not fit") && l.contains("positions as g128"),
        "{l}"
    );
    assert!(
        answer.contains("Largest model that fits: vicuna-7b"),
        "{answer}"
    );
    // Past the trained context, each model is named with its own: 2048 for v1.3, not v1.5's 4096.
    let o = lab(&[
        "plan",
        "--card",
        "rtx-4090",
        "--group",
        "128",
        "--ctx",
        "4096",
        "--model",
        "vicuna-7b-v1.5,vicuna-7b",
        "--root",
        repo,
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("past the model's trained context (positions: vicuna-7b 2048)"),
        "{out}"
    );
    assert!(out.contains("  vicuna-7b      ctx 4096*: fits"), "{out}");
    assert!(out.contains("  vicuna-7b-v1.5 ctx 4096: fits"), "{out}");
}

/// `--act-order` rows at per-channel groups run plain (one group: g_idx all zeros): their
/// estimate is the plain steps' fit, the same tok/s as without the flag; grouped rows keep the
/// act-order fit, which is slower per byte on the measuring card.
#[test]
fn per_channel_act_order_is_estimated_as_plain() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let roofline = |extra: &[&str]| {
        let mut a = vec![
            "plan",
            "--model",
            "vicuna-13b",
            "--ctx",
            "2048",
            "--card",
            "rtx-4090",
            "--root",
            repo,
            "--json",
        ];
        a.extend_from_slice(extra);
        let o = lab(&a);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["roofline"].clone()
    };
    let per_ch = roofline(&["--group", "-1"]);
    assert_eq!(roofline(&["--group", "-1", "--act-order"]), per_ch);
    // With groups, act-order is fitted to the report's act-order steps: another speed model.
    let (act, plain) = (
        roofline(&["--group", "128", "--act-order"]),
        roofline(&["--group", "128"]),
    );
    assert_ne!(act["stream_efficiency"], plain["stream_efficiency"]);
    assert_ne!(act["bytes_per_step"], plain["bytes_per_step"]);
    // A list that starts with a negative number reaches --group (joined to its flag).
    let o = lab(&[
        "plan",
        "--model",
        "vicuna-7b",
        "--group",
        "-1,128",
        "--ctx",
        "2048",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let groups: Vec<i64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["group_size"].as_i64().unwrap())
        .collect();
    assert_eq!(groups, [-1, 128]);
}

/// `--card this` plans for GPU 0 as its driver describes it; without a GPU it says so and names
/// the alternative, and exits 1.
#[test]
fn card_this_is_the_local_gpu_or_a_clear_refusal() {
    let o = lab(&[
        "plan",
        "--card",
        "this",
        "--model",
        "vicuna-7b",
        "--group",
        "128",
        "--ctx",
        "2048",
        "--json",
    ]);
    if o.status.success() {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let c = &v["card"];
        assert!(c["usable_bytes"].as_u64().unwrap() > 0, "{v}");
        assert!(
            v["roofline"]["bandwidth_gbs"].as_f64().unwrap() > 0.0,
            "{v}"
        );
    } else {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("--card this: no usable GPU 0 here") && err.contains("lab plan --cards"),
            "{err}"
        );
    }
}

#[test]
fn flags_a_checkpoint_contradicts_are_noted_and_the_checkpoint_wins() {
    // tiny-sym-g32 says desc_act false: --act-order must not add g_idx bytes silently (as
    // --group against its group_size is noted and ignored), and --dtype fp16 on its int4 files
    // plans the model unquantized, which the plan must say.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-sym-g32");
    let plan = |extra: &[&str]| {
        let mut a = vec!["plan", "--checkpoint", dir, "--ctx", "128", "--json"];
        a.extend_from_slice(extra);
        let o = lab(&a);
        assert!(
            o.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (v, String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (plain, err) = plan(&[]);
    assert!(!err.contains("ignoring"), "{err}");
    let (flagged, err) = plan(&["--act-order"]);
    assert!(
        err.contains("quantize_config.json says desc_act false; ignoring --act-order"),
        "{err}"
    );
    assert_eq!(flagged["weights"], plain["weights"], "no g_idx bytes added");
    assert_eq!(flagged["act_order"], false);
    let (_, err) = plan(&["--dtype", "fp16"]);
    assert!(
        err.contains("is an int4 GPTQ checkpoint; --dtype fp16 plans the same model unquantized"),
        "{err}"
    );
}

#[test]
fn a_context_past_the_trained_one_is_marked_without_a_card_too() {
    // The VRAM table is all a plan without --card prints: its rows past the model's trained
    // context read "fits" like any other, which decode and eval then refuse.
    let o = lab(&[
        "plan",
        "--model",
        "vicuna-7b",
        "--group",
        "128",
        "--ctx",
        "2048,4096",
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("vicuna-7b "))
        .collect();
    assert!(rows[0].split_whitespace().nth(2) == Some("2048"), "{out}");
    assert!(rows[1].split_whitespace().nth(2) == Some("4096*"), "{out}");
    assert!(
        out.contains("* past the model's trained context (positions: vicuna-7b 2048)")
            && out.contains("lab decode / lab eval refuse it"),
        "{out}"
    );
}

#[test]
fn a_checkpoint_too_big_to_count_is_refused_naming_its_config_file() {
    // The refusal named the model by _name_or_path ('tiny-fp16'), which is no file the user can
    // open; from a folder it names the config.json the dimensions came from.
    let t = tempfile::tempdir().unwrap();
    let src = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tiny-fp16/config.json"
    );
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src).unwrap()).unwrap();
    for (k, n) in [
        ("hidden_size", 1u64 << 27),
        ("intermediate_size", 1 << 30),
        ("num_hidden_layers", 100_000),
        ("num_attention_heads", 128),
        ("num_key_value_heads", 128),
        ("vocab_size", 1 << 30),
    ] {
        v[k] = n.into();
    }
    std::fs::write(t.path().join("config.json"), v.to_string()).unwrap();
    let dir = t.path().to_str().unwrap();
    let o = lab(&["plan", "--checkpoint", dir, "--dtype", "fp16"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    let file = t.path().join("config.json");
    assert!(
        err.contains(&format!("planning from {}", file.display()))
            && err.contains("not a model this planner can count"),
        "{err}"
    );
}

/// `--card this` is matched in any case, as card names are ("This" was looked up as a card
/// slug and refused as unknown): same outcome as "this", GPU or not.
#[test]
fn card_this_is_matched_in_any_case() {
    let plan = |card: &str| {
        lab(&[
            "plan",
            "--card",
            card,
            "--model",
            "vicuna-7b",
            "--group",
            "128",
            "--ctx",
            "512",
            "--json",
        ])
    };
    let lower = plan("this");
    for card in ["This", "THIS"] {
        let o = plan(card);
        assert_eq!(o.status.code(), lower.status.code(), "{card}");
        let err = String::from_utf8_lossy(&o.stderr);
        if !o.status.success() {
            assert!(
                err.contains("--card this: no usable GPU 0 here"),
                "{card}: {err}"
            );
        }
    }
}

/// The table header gives the CUDA context allowance in MiB: the library's 544 by default,
/// --context-mib's value when given.
#[test]
fn the_table_header_gives_the_context_allowance_in_mib() {
    let head = |extra: &[&str]| {
        let mut a = vec![
            "plan",
            "--model",
            "vicuna-7b",
            "--group",
            "128",
            "--ctx",
            "512",
        ];
        a.extend_from_slice(extra);
        let o = lab(&a);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        stdout(&o).lines().next().unwrap_or_default().to_string()
    };
    let h = head(&[]);
    assert!(h.contains("CUDA context allowance 544 MiB"), "{h}");
    let h = head(&["--context-mib", "1000"]);
    assert!(h.contains("CUDA context allowance 1000 MiB"), "{h}");
}

/// `lab plan --cards`: each card's nominal memory and what a program can allocate, in MiB, and
/// its spec bandwidth.
#[test]
fn the_cards_list_gives_memory_in_mib() {
    let o = lab(&["plan", "--cards"]);
    assert!(o.status.success());
    let out = stdout(&o);
    let row = out
        .lines()
        .find(|l| l.starts_with("rtx-4090 "))
        .unwrap_or_else(|| panic!("no rtx-4090 row: {out}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    // slug, name words..., memory MiB, usable MiB, GB/s, sm
    let n = cols.len();
    assert_eq!(
        (cols[n - 6], cols[n - 5], cols[n - 3], cols[n - 1]),
        ("24576", "MiB", "MiB", "sm_89"),
        "{row}"
    );
    let usable: u64 = cols[n - 4].parse().unwrap();
    assert!(usable < 24576 && usable > 23 * 1024, "{row}");
    assert_eq!(cols[n - 2], "1008.0", "{row}");
}
