//! `lab report` end to end, on a temporary copy of the committed H100 reports (reports/<gpu>/ and
//! tuning/<gpu>.json): every markdown file and plot is regenerated, the recorded numbers appear in
//! them, the JSON is not touched, stale reports are marked, a malformed JSON is named, and an
//! empty root has nothing to report. No GPU involved.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::lab;

const SLUG: &str = "nvidia-h100-80gb-hbm3";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dst = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dst);
        } else {
            std::fs::copy(&p, &dst).unwrap();
        }
    }
}

/// A temp root holding a copy of the committed reports/<SLUG>/ and tuning/<SLUG>.json.
fn committed_copy() -> (tempfile::TempDir, PathBuf) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(
        &repo.join("reports").join(SLUG),
        &tmp.path().join("reports").join(SLUG),
    );
    std::fs::create_dir_all(tmp.path().join("tuning")).unwrap();
    let tuned = format!("{SLUG}.json");
    std::fs::copy(
        repo.join("tuning").join(&tuned),
        tmp.path().join("tuning").join(&tuned),
    )
    .unwrap();
    let dir = tmp.path().join("reports").join(SLUG);
    (tmp, dir)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every *.json under `root`, with its bytes.
fn json_files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in ["reports", "tuning"] {
        let mut stack = vec![root.join(sub)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "json") {
                    let b = std::fs::read(&p).unwrap();
                    out.push((p, b));
                }
            }
        }
    }
    out.sort();
    out
}

fn this_kernel_hash() -> String {
    let o = lab(&["version", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    json_str(&serde_json::from_slice(&o.stdout).unwrap(), "/kernel_hash")
}

fn json_str(v: &Value, ptr: &str) -> String {
    v.pointer(ptr)
        .and_then(|x| x.as_str())
        .unwrap_or_else(|| panic!("{ptr} missing"))
        .to_string()
}

#[test]
fn regenerates_every_report_from_the_committed_json_with_the_recorded_numbers() {
    let (tmp, dir) = committed_copy();
    // Outputs are regenerated, not kept: remove them first.
    for f in [
        "gemv.md",
        "gemv-roofline.svg",
        "gemm.md",
        "gemm-speedup.svg",
        "decode.md",
        "decode-tokens-per-s.svg",
        "decode-roofline.svg",
        "decode-vram.svg",
        "tune.md",
        "tune-speedup.svg",
        "ceilings.md",
        "README.md",
    ] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let before = json_files(tmp.path());
    let o = lab(&["report", "--root", tmp.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(json_files(tmp.path()), before, "the JSON records changed");

    for f in [
        "gemv-roofline.svg",
        "gemm-speedup.svg",
        "decode-tokens-per-s.svg",
        "decode-roofline.svg",
        "decode-vram.svg",
        "tune-speedup.svg",
    ] {
        assert!(read(&dir.join(f)).starts_with("<svg"), "{f}");
    }

    // Sweeps: every recorded row is in the table with its time, GB/s and speedup.
    for fam in ["gemv", "gemm"] {
        let md = read(&dir.join(format!("{fam}.md")));
        let rec = json(&dir.join(format!("{fam}.json")));
        let rows = rec["rows"].as_array().unwrap();
        assert!(!rows.is_empty());
        for r in rows {
            let line = format!(
                "| {} | {}x{} | {} | {} | {:.2} | {:.1} | {:.0} | {:.1}% |",
                r["variant"].as_str().unwrap(),
                r["k"],
                r["n"],
                r["m"],
                if r["act_order"].as_bool().unwrap() {
                    "yes"
                } else {
                    "no"
                },
                r["bytes"].as_f64().unwrap() / 1e6,
                r["timing"]["iqm_us"].as_f64().unwrap(),
                r["gbps"].as_f64().unwrap(),
                r["pct_read_ceiling"].as_f64().unwrap(),
            );
            assert!(md.contains(&line), "{fam}.md lacks {line}");
            if let Some(s) = r["speedup_vs_cublas"].as_f64() {
                assert!(md.contains(&format!("{line} {s:.2}x |")), "{line}");
            }
        }
        let date = json_str(&rec, "/header/date");
        assert!(md.contains(&date));
        for s in rec["skipped"].as_array().unwrap() {
            assert!(md.contains(&format!("- {}", s.as_str().unwrap())));
        }
    }

    // Decode: every run's section and every point's graph and eager tokens/s.
    let md = read(&dir.join("decode.md"));
    let runs = json(&dir.join("decode.json"));
    assert_eq!(md.matches("\n## ").count(), runs.as_array().unwrap().len());
    for r in runs.as_array().unwrap() {
        for p in r["points"].as_array().unwrap() {
            let line = format!(
                "| {} | {:.3} | {:.1} | {:.3} | {:.1} |",
                p["ctx"],
                p["graph_ms_per_token"].as_f64().unwrap(),
                p["graph_tokens_per_s"].as_f64().unwrap(),
                p["eager_ms_per_token"].as_f64().unwrap(),
                p["eager_tokens_per_s"].as_f64().unwrap(),
            );
            assert!(md.contains(&line), "decode.md lacks {line}");
        }
    }

    // Tuning: each key's default and winner IQMs, and every beaten default in the short table.
    let md = read(&dir.join("tune.md"));
    let tuned = json(&tmp.path().join("tuning").join(format!("{SLUG}.json")));
    let entries = tuned["entries"].as_array().unwrap();
    let beat_table = &md[md.find("## Keys where").unwrap()..md.find("## Every key").unwrap()];
    let mut beaten = 0;
    for e in entries {
        let iqm = |choice: &Value| {
            e["candidates"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| &c["choice"] == choice)
                .and_then(|c| c["status"]["iqm_us"].as_f64())
        };
        let (d, w) = (iqm(&e["default"]), iqm(&e["winner"]));
        if let (Some(d), Some(w)) = (d, w) {
            assert!(
                md.contains(&format!("| {d:.2} |")) && md.contains(&format!("| {w:.2} |")),
                "tune.md lacks {d:.2} / {w:.2}"
            );
            if e["default"] != e["winner"] {
                beaten += 1;
                assert!(
                    beat_table.contains(&format!("| {:.2}x |", d / w)),
                    "{beat_table}"
                );
            }
        }
    }
    assert!(beaten > 0, "the H100 tuning beat its default somewhere");
    // The header and rule lines, then one row per beaten default.
    assert_eq!(beat_table.matches("\n| ").count() - 2, beaten);
    assert!(md.contains(&format!("{} keys", entries.len())));

    // Index: each report with its recorded date, git rev and kernel hash; current iff the hash is
    // this binary's.
    let index = read(&dir.join("README.md"));
    let ours = this_kernel_hash();
    for (file, rec) in [
        ("gemv.md", json(&dir.join("gemv.json"))["header"].clone()),
        ("gemm.md", json(&dir.join("gemm.json"))["header"].clone()),
        ("ceilings.md", json(&dir.join("ceilings.json"))),
        ("decode.md", runs[0]["header"].clone()),
    ] {
        let hash = json_str(&rec, "/build/kernel_hash");
        let row = index
            .lines()
            .find(|l| l.starts_with(&format!("| [{file}]")) && l.contains(&json_str(&rec, "/date")))
            .unwrap_or_else(|| panic!("no index row for {file}: {index}"));
        assert!(row.contains(&format!("`{}`", json_str(&rec, "/build/git_rev"))));
        assert!(row.contains(&format!("`{hash}`")));
        let want = if hash == ours {
            "| current |"
        } else {
            "| **stale** |"
        };
        assert!(row.ends_with(want), "{row}");
    }
    assert!(index.contains(&format!(
        "| [tune.md](tune.md) | autotuning: {} keys",
        entries.len()
    )));
    assert!(index.contains("memcheck.txt"), "other files are listed");
}

#[test]
fn a_report_from_other_kernels_is_marked_stale() {
    let (tmp, dir) = committed_copy();
    let path = dir.join("gemv.json");
    let mut v = json(&path);
    v["header"]["build"]["kernel_hash"] = Value::from("0123456789abcdef");
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let o = lab(&[
        "report",
        "--root",
        tmp.path().to_str().unwrap(),
        "--gpu-slug",
        SLUG,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let index = read(&dir.join("README.md"));
    let row = index
        .lines()
        .find(|l| l.starts_with("| [gemv.md]"))
        .unwrap();
    assert!(
        row.contains("`0123456789abcdef`") && row.ends_with("| **stale** |"),
        "{row}"
    );
    assert!(index.contains("reports are **stale**"));
    assert!(read(&dir.join("gemv.md")).contains("**Stale:** kernel hash `0123456789abcdef`"));
}

#[test]
fn a_malformed_json_is_named_and_the_rest_still_regenerates() {
    let (tmp, dir) = committed_copy();
    std::fs::write(dir.join("gemm.json"), "{ \"header\": ").unwrap();
    std::fs::remove_file(dir.join("gemv.md")).unwrap();
    let o = lab(&["report", "--root", tmp.path().to_str().unwrap()]);
    assert!(!o.status.success());
    let out = text(&o);
    assert!(
        out.contains(&dir.join("gemm.json").display().to_string()),
        "{out}"
    );
    assert!(
        dir.join("gemv.md").is_file(),
        "other reports still regenerate"
    );
    let index = read(&dir.join("README.md"));
    assert!(index.contains("| [gemm.json](gemm.json) |") && index.contains("**unreadable**"));

    // A record of the wrong family is refused by name too.
    std::fs::copy(dir.join("gemv.json"), dir.join("gemm.json")).unwrap();
    let o = lab(&["report", "--root", tmp.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("family field is 'gemv', expected 'gemm'"),
        "{}",
        text(&o)
    );
}

#[test]
fn an_empty_root_has_nothing_to_report_and_an_unknown_slug_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_str().unwrap();
    let o = lab(&["report", "--root", root]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("nothing to report"), "{}", text(&o));
    // An empty reports/ folder is still nothing.
    std::fs::create_dir_all(tmp.path().join("reports")).unwrap();
    let o = lab(&["report", "--root", root]);
    assert!(o.status.success() && text(&o).contains("nothing to report"));
    assert_eq!(
        std::fs::read_dir(tmp.path().join("reports"))
            .unwrap()
            .count(),
        0
    );

    let o = lab(&["report", "--root", root, "--gpu-slug", "no-such-gpu"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--gpu-slug no-such-gpu"), "{}", text(&o));
}

#[test]
fn a_missing_root_is_an_error_not_an_empty_report() {
    let tmp = tempfile::tempdir().unwrap();
    let gone = tmp.path().join("no-such-root");
    let o = lab(&["report", "--root", gone.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let want = format!("--root {}: no such folder", gone.display());
    assert!(text(&o).contains(&want), "{}", text(&o));
    assert!(!text(&o).contains("nothing to report"), "{}", text(&o));
}

#[test]
fn recorded_timings_that_are_not_positive_and_finite_are_refused_by_file_and_row() {
    let (tmp, dir) = committed_copy();
    let root = tmp.path().to_str().unwrap();
    let gemv = dir.join("gemv.json");
    let good = read(&gemv);
    for (field, v) in [("iqm_us", 0.0), ("median_us", -732.5)] {
        let mut r = json(&gemv);
        r["rows"][3]["timing"][field] = v.into();
        std::fs::write(&gemv, r.to_string()).unwrap();
        let o = lab(&["report", "--root", root]);
        assert!(!o.status.success(), "{field} = {v}: {}", text(&o));
        let row = &r["rows"][3];
        let want = format!(
            "{}: row 3 ({} k={} n={}",
            gemv.display(),
            row["variant"].as_str().unwrap(),
            row["k"],
            row["n"]
        );
        assert!(
            text(&o).contains(&want) && text(&o).contains(&format!("{field} = {v}")),
            "{field} = {v}: {}",
            text(&o)
        );
    }
    std::fs::write(&gemv, good).unwrap();

    // The tuned config's candidates, and the decode runs' per-token times, too.
    let tuned = tmp.path().join("tuning").join(format!("{SLUG}.json"));
    let mut c = json(&tuned);
    let cand = c["entries"][0]["candidates"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["status"]["kind"] == "ok")
        .unwrap();
    cand["status"]["p25_us"] = (-1.0).into();
    std::fs::write(&tuned, c.to_string()).unwrap();
    let decode = dir.join("decode.json");
    let mut d = json(&decode);
    d[0]["points"][0]["graph_ms_per_token"] = 0.0.into();
    std::fs::write(&decode, d.to_string()).unwrap();
    let o = lab(&["report", "--root", root]);
    assert!(!o.status.success());
    let out = text(&o);
    assert!(
        out.contains(&format!("{}: entry ", tuned.display())) && out.contains("p25_us = -1"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{}: run '", decode.display()))
            && out.contains("graph_ms_per_token = 0"),
        "{out}"
    );
}

#[test]
fn a_tuned_config_of_another_schema_version_is_not_rendered() {
    let (tmp, dir) = committed_copy();
    let tuned = tmp.path().join("tuning").join(format!("{SLUG}.json"));
    let mut c = json(&tuned);
    c["schema_version"] = 99.into();
    std::fs::write(&tuned, c.to_string()).unwrap();
    std::fs::remove_file(dir.join("tune.md")).unwrap();
    let o = lab(&["report", "--root", tmp.path().to_str().unwrap()]);
    assert!(!o.status.success());
    let want = format!("{}: schema_version 99, expected 1", tuned.display());
    assert!(text(&o).contains(&want), "{}", text(&o));
    assert!(!dir.join("tune.md").exists(), "rendered anyway");
}

#[test]
fn a_refused_record_leaves_its_old_report_listed_as_unreadable_not_gone() {
    // The record is there but refused (here a tuned config filed under another GPU's name): the
    // old tune.md beside it is neither regenerated nor "a report whose record is gone".
    let (tmp, dir) = committed_copy();
    let tuned = tmp.path().join("tuning").join(format!("{SLUG}.json"));
    let mut c = json(&tuned);
    c["device"]["slug"] = "nvidia-geforce-rtx-4090".into();
    std::fs::write(&tuned, c.to_string()).unwrap();
    let o = lab(&["report", "--root", tmp.path().to_str().unwrap()]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("recorded on GPU 'nvidia-geforce-rtx-4090'")
            && out.contains(&format!("filed under '{SLUG}'")),
        "{out}"
    );
    assert!(!out.contains("gone"), "{out}");
    let index = read(&dir.join("README.md"));
    let rows: Vec<&str> = index
        .lines()
        .filter(|l| l.starts_with("| [tune.md](tune.md)"))
        .collect();
    assert_eq!(rows.len(), 1, "{index}");
    assert!(!rows[0].contains("**no record**"), "{}", rows[0]);
}

/// Without a GPU, `lab bench` says there is nothing to time and succeeds, except under
/// REQUIRE_GPU=1 (scripts/device-check), where a missing GPU must fail the step instead of
/// reading as a PASS. (On a machine with a GPU this would run the bench: skipped there.)
#[test]
fn bench_without_a_gpu_succeeds_quietly_unless_a_gpu_is_required() {
    if gptq_lab::cuda::gpu_unavailable_reason(0).is_none() {
        gptq_lab::util::note_skip(
            "bench_without_a_gpu_succeeds_quietly_unless_a_gpu_is_required",
            "a GPU is present",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let run = |require: &str| {
        Command::new(env!("CARGO_BIN_EXE_lab"))
            .args(["bench", "--family", "probe", "--root", root])
            .env("REQUIRE_GPU", require)
            .output()
            .expect("running lab")
    };
    let quiet = run("0");
    assert!(quiet.status.success(), "{}", text(&quiet));
    assert!(text(&quiet).contains("Nothing to time"), "{}", text(&quiet));
    let strict = run("1");
    assert!(!strict.status.success(), "{}", text(&strict));
    assert!(text(&strict).contains("REQUIRE_GPU=1"), "{}", text(&strict));
    // Nothing was written either way.
    assert!(!dir.path().join("reports").exists());
}

/// `lab run` without a GPU runs the CPU path and succeeds, except under REQUIRE_GPU=1
/// (scripts/device-check's lab-run step), where the fallback must not read as a GPU PASS.
#[test]
fn run_without_a_gpu_falls_back_to_the_cpu_unless_a_gpu_is_required() {
    if gptq_lab::cuda::gpu_unavailable_reason(0).is_none() {
        gptq_lab::util::note_skip(
            "run_without_a_gpu_falls_back_to_the_cpu_unless_a_gpu_is_required",
            "a GPU is present",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let run = |require: &str| {
        Command::new(env!("CARGO_BIN_EXE_lab"))
            .args(["run", "--root", root])
            .env("REQUIRE_GPU", require)
            .output()
            .expect("running lab")
    };
    let strict = run("1");
    assert!(!strict.status.success(), "{}", text(&strict));
    assert!(text(&strict).contains("REQUIRE_GPU=1"), "{}", text(&strict));
    assert!(
        !text(&strict).contains("CPU reference engine"),
        "{}",
        text(&strict)
    );
    let quiet = run("0");
    assert!(quiet.status.success(), "{}", text(&quiet));
    assert!(text(&quiet).contains("No GPU here"), "{}", text(&quiet));
    // Both CPU steps ran, in their child processes: the VRAM plan table of the three models...
    let out = String::from_utf8_lossy(&quiet.stdout);
    assert!(
        out.contains("VRAM plan: batch 1, int4 GPTQ weights"),
        "{out}"
    );
    for m in ["vicuna-7b", "vicuna-13b", "vicuna-33b"] {
        assert!(out.lines().any(|l| l.starts_with(m)), "{m}: {out}");
    }
    // ...and the tiny model's greedy tokens, as one JSON line.
    let decode: Value = out
        .lines()
        .find_map(|l| {
            serde_json::from_str(l)
                .ok()
                .filter(|v: &Value| v.is_object())
        })
        .unwrap_or_else(|| panic!("no decode JSON: {out}"));
    assert_eq!(decode["backend"], "cpu", "{decode}");
    assert_eq!(decode["model"], "tiny-sym-g32", "{decode}");
    assert_eq!(
        decode["prompt_tokens"],
        serde_json::json!([1, 5, 9, 42]),
        "{decode}"
    );
    assert!(!decode["tokens"].as_array().unwrap().is_empty(), "{decode}");
}

#[test]
fn a_directory_under_a_reports_name_or_an_unreadable_record_fails_the_command() {
    // A folder where gemv.json should be: reported unreadable, not skipped (the stale gemv.md
    // would otherwise stay, looking current).
    let (tmp, dir) = committed_copy();
    std::fs::remove_file(dir.join("gemv.json")).unwrap();
    std::fs::create_dir(dir.join("gemv.json")).unwrap();
    let o = lab(&["report", "--root", tmp.path().to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&dir.join("gemv.json").display().to_string()),
        "{}",
        text(&o)
    );
    // A record of no known family (decode-check.json) that does not parse: named, listed as
    // unreadable, and the command fails like it does for a known report.
    let (tmp, dir) = committed_copy();
    std::fs::write(dir.join("decode-check.json"), "[").unwrap();
    let o = lab(&["report", "--root", tmp.path().to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("decode-check.json"), "{}", text(&o));
    let index = read(&dir.join("README.md"));
    assert!(index.contains("decode-check.json") && index.contains("**unreadable**"));
}

#[test]
fn a_tuned_config_under_its_own_name_is_noted_not_taken_for_a_gpu() {
    // `lab tune --file tuning/h100-full.json` keeps the H100's device in a file of another name:
    // lab report used to take the name for a GPU, fail on it and make reports/h100-full/.
    let (tmp, _dir) = committed_copy();
    let tuning = tmp.path().join("tuning");
    std::fs::copy(
        tuning.join(format!("{SLUG}.json")),
        tuning.join("h100-full.json"),
    )
    .unwrap();
    let o = lab(&["report", "--root", tmp.path().to_str().unwrap()]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("h100-full.json") && out.contains("another name than its GPU's"),
        "{out}"
    );
    assert!(!tmp.path().join("reports/h100-full").exists());
}

#[test]
fn a_report_whose_record_is_gone_is_marked_not_listed_as_current() {
    let (tmp, dir) = committed_copy();
    std::fs::remove_file(tmp.path().join("tuning").join(format!("{SLUG}.json"))).unwrap();
    std::fs::remove_file(dir.join("gemv.json")).unwrap();
    let o = lab(&["report", "--root", tmp.path().to_str().unwrap()]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("tune.md: its record tuning/") && out.contains("gone"),
        "{out}"
    );
    let index = read(&dir.join("README.md"));
    for (md, source) in [
        ("tune.md", format!("tuning/{SLUG}.json")),
        ("gemv.md", "gemv.json".into()),
    ] {
        let row = index
            .lines()
            .find(|l| l.starts_with(&format!("| [{md}]({md})")))
            .unwrap_or_else(|| panic!("no row for {md}: {index}"));
        assert!(
            row.contains("**no record**") && row.contains(&source),
            "{row}"
        );
    }
    assert!(!index.contains("- [tune.md](tune.md)"), "{index}");
}

/// The committed reports are what `lab report` writes from the committed JSON, byte for byte, in
/// every folder under reports/ (the H100's and the CPU's): a change to the report code must come
/// with the regenerated reports (`lab report`, then commit). What `lab report` writes is removed
/// from the copy first, so a file it stopped writing fails too. Every index names this binary's
/// kernel hash, so the markdown is compared only where that hash is the committed tuning file's
/// (main); a branch with other kernels says so and compares the plots.
#[test]
fn the_committed_reports_are_what_lab_report_writes() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&repo.join("reports"), &tmp.path().join("reports"));
    copy_dir(&repo.join("tuning"), &tmp.path().join("tuning"));
    let tuned = json(&repo.join("tuning").join(format!("{SLUG}.json")));
    let same_kernels = json_str(&tuned, "/kernel_hash") == this_kernel_hash();
    if !same_kernels {
        eprintln!("other kernels than the committed tuning's: only the plots are compared");
    }
    // What lab report writes: each folder's index, and the GPU folder's markdown and plots (the
    // CPU folder's other markdown is recorded tool output, kept as written).
    let written = |folder: &str, name: &str| {
        name == "README.md" || name.ends_with(".svg") || (folder != "cpu" && name.ends_with(".md"))
    };
    let mut folders: Vec<String> = std::fs::read_dir(repo.join("reports"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    assert!(folders.iter().any(|f| f == "cpu") && folders.iter().any(|f| f == SLUG));
    for folder in &folders {
        for e in std::fs::read_dir(tmp.path().join("reports").join(folder)).unwrap() {
            let p = e.unwrap().path();
            if written(folder, &p.file_name().unwrap().to_string_lossy()) {
                std::fs::remove_file(&p).unwrap();
            }
        }
    }
    let o = lab(&["report", "--root", tmp.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let mut compared = 0;
    for folder in &folders {
        for e in std::fs::read_dir(repo.join("reports").join(folder)).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if !written(folder, &name) || (name.ends_with(".md") && !same_kernels) {
                continue;
            }
            let regenerated = std::fs::read(tmp.path().join("reports").join(folder).join(&name))
                .unwrap_or_else(|e| {
                    panic!("reports/{folder}/{name} is committed but lab report no longer writes it: {e}")
                });
            assert!(
                regenerated
                    == std::fs::read(repo.join("reports").join(folder).join(&name)).unwrap(),
                "reports/{folder}/{name} differs from what `lab report` writes from the committed \
                 JSON: run `lab report` and commit the result"
            );
            compared += 1;
        }
        for e in std::fs::read_dir(tmp.path().join("reports").join(folder)).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                repo.join("reports").join(folder).join(&name).exists(),
                "reports/{folder}/{name} is written by lab report but not committed"
            );
        }
    }
    let least = if same_kernels { 13 } else { 6 };
    assert!(compared >= least, "only {compared} reports compared");
}

#[test]
fn a_sweep_from_another_gpu_and_a_bad_prefill_time_are_refused_by_file() {
    let (tmp, dir) = committed_copy();
    let root = tmp.path().to_str().unwrap();
    let gemm = dir.join("gemm.json");
    let mut r = json(&gemm);
    r["header"]["device"]["slug"] = "other-gpu".into();
    std::fs::write(&gemm, r.to_string()).unwrap();
    let decode = dir.join("decode.json");
    let mut d = json(&decode);
    let tokens = d[0]["prefill"][0]["tokens"].clone();
    d[0]["prefill"][0]["ms"] = (-3.0).into();
    std::fs::write(&decode, d.to_string()).unwrap();
    let o = lab(&["report", "--root", root]);
    assert!(!o.status.success(), "{}", text(&o));
    let out = text(&o);
    let want = format!(
        "{}: recorded on GPU 'other-gpu' but filed under '{SLUG}'",
        gemm.display()
    );
    assert!(out.contains(&want), "{out}");
    let want = format!("prefill {tokens} tokens: ms = -3; expected a positive finite time");
    assert!(
        out.contains(&format!("{}: run '", decode.display())) && out.contains(&want),
        "{out}"
    );
}

#[test]
fn a_temp_file_a_killed_write_left_is_not_listed_in_the_index() {
    let (tmp, dir) = committed_copy();
    std::fs::write(dir.join(".tmpAb12Cd"), "partial").unwrap();
    std::fs::write(dir.join("logs").join(".tmpEf34Gh"), "partial").unwrap();
    let o = lab(&["report", "--root", tmp.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let index = read(&dir.join("README.md"));
    assert!(
        !index.contains(".tmpAb12Cd") && !index.contains(".tmpEf34Gh"),
        "{index}"
    );
    assert!(index.contains("- [memcheck.txt](memcheck.txt)"), "{index}");
}
